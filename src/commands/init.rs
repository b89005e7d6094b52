//! `runbook init`: a starting `runbook.toml` and the standard scripts in an existing
//! project. It never overwrites a file: what exists is reported and left alone.

use crate::error::Error;

const FILES: &[(&str, &str)] = &[
    (
        "runbook.toml",
        include_str!("../../examples/askproai/runbook.toml"),
    ),
    (
        "scripts/deploy.rhai",
        include_str!("../../scripts/deploy.rhai"),
    ),
    (
        "scripts/emergency-deploy.rhai",
        include_str!("../../scripts/emergency-deploy.rhai"),
    ),
    (
        "scripts/health-check.rhai",
        include_str!("../../scripts/health-check.rhai"),
    ),
];

pub fn run() -> Result<(), Error> {
    let dir = std::env::current_dir().map_err(|source| Error::Read {
        path: ".".into(),
        source,
    })?;
    for (rel, text) in FILES {
        let path = dir.join(rel);
        if path.exists() {
            eprintln!("kept     {rel} (already exists)");
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| Error::Read {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        eprintln!("created  {rel}");
    }
    eprintln!(
        "next: edit runbook.toml (app, hosts, roles), then `runbook check` and `runbook run deploy -e staging --dry-run`"
    );
    Ok(())
}
