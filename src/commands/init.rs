//! `runbook init`: a starting `runbook.toml` and the standard scripts in an existing
//! project. It never overwrites a file: what exists is reported and left alone.

use crate::error::Error;

/// Every shipped runbook, and the seed team's inventory as a starting point.
const FILES: &[(&str, &str)] = &[
    (
        "runbook.toml",
        include_str!("../../examples/askproai/runbook.toml"),
    ),
    (
        "scripts/canary.rhai",
        include_str!("../../scripts/canary.rhai"),
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
        "scripts/emergency/clear-caches.rhai",
        include_str!("../../scripts/emergency/clear-caches.rhai"),
    ),
    (
        "scripts/emergency/restart-everything.rhai",
        include_str!("../../scripts/emergency/restart-everything.rhai"),
    ),
    (
        "scripts/emergency/stop-everything.rhai",
        include_str!("../../scripts/emergency/stop-everything.rhai"),
    ),
    (
        "scripts/health-check.rhai",
        include_str!("../../scripts/health-check.rhai"),
    ),
    (
        "scripts/maintenance/archive-logs.rhai",
        include_str!("../../scripts/maintenance/archive-logs.rhai"),
    ),
    (
        "scripts/maintenance/daily-check.rhai",
        include_str!("../../scripts/maintenance/daily-check.rhai"),
    ),
    (
        "scripts/maintenance/dr-test.rhai",
        include_str!("../../scripts/maintenance/dr-test.rhai"),
    ),
    (
        "scripts/maintenance/weekly-report.rhai",
        include_str!("../../scripts/maintenance/weekly-report.rhai"),
    ),
    (
        "scripts/rollback.rhai",
        include_str!("../../scripts/rollback.rhai"),
    ),
    (
        "scripts/troubleshoot/db-check.rhai",
        include_str!("../../scripts/troubleshoot/db-check.rhai"),
    ),
    (
        "scripts/troubleshoot/fix-permissions.rhai",
        include_str!("../../scripts/troubleshoot/fix-permissions.rhai"),
    ),
    (
        "scripts/troubleshoot/restart-queue.rhai",
        include_str!("../../scripts/troubleshoot/restart-queue.rhai"),
    ),
    (
        "scripts/zero-downtime-deploy.rhai",
        include_str!("../../scripts/zero-downtime-deploy.rhai"),
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

#[cfg(test)]
mod tests {
    /// Every shipped runbook is part of `runbook init`.
    #[test]
    fn every_shipped_script_is_installed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut on_disk: Vec<String> = crate::project::rhai_files(&root.join("scripts"))
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = super::FILES
            .iter()
            .map(|(p, _)| (*p).to_owned())
            .filter(|p| p.starts_with("scripts/"))
            .collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }
}
