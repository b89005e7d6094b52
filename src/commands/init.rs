//! `runbook init`: a starting `runbook.toml` and the standard scripts in an existing
//! project. It never overwrites a file: what exists is reported and left alone. It never
//! writes through a symbolic link either (a dangling link at a target path, a linked
//! directory): that is refused before anything is written.

use std::path::Path;

use crate::error::Error;

/// Every shipped runbook, and the seed team's inventory as a starting point.
const FILES: &[(&str, &str)] = &[
    (
        "runbook.toml",
        include_str!("../../examples/askproai/runbook.toml"),
    ),
    (
        "scripts/backup.rhai",
        include_str!("../../scripts/backup.rhai"),
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

pub(crate) fn run() -> Result<(), Error> {
    let dir = std::env::current_dir().map_err(|source| Error::Read {
        path: ".".into(),
        source,
    })?;
    // Every file is judged before any is written: a refusal leaves nothing behind.
    let mut create = Vec::new();
    for (rel, text) in FILES {
        if planned(&dir, rel)? {
            create.push((*rel, *text));
        } else {
            eprintln!("kept     {rel} (already exists)");
        }
    }
    for (rel, text) in create {
        if write_new(&dir, rel, text)? {
            eprintln!("created  {rel}");
        } else {
            eprintln!("kept     {rel} (already exists)");
        }
    }
    eprintln!(
        "next: edit runbook.toml (app, hosts, roles), then `runbook check` and `runbook run deploy -e staging --dry-run`"
    );
    Ok(())
}

fn refused(rel: &str, link: &Path, dir: &Path) -> Error {
    Error::BadOption {
        option: "runbook init".into(),
        message: format!(
            "refusing to write {rel}: {} is a symbolic link{}, and init never writes through one; nothing was written\n  hint: remove the link (or create {rel} yourself), then run `runbook init` again",
            link.strip_prefix(dir).unwrap_or(link).display(),
            std::fs::read_link(link)
                .map(|t| format!(" to {}", t.display()))
                .unwrap_or_default(),
        ),
    }
}

/// Whether `rel` is to be created: `false` when it exists (kept as it is), an error when
/// creating it would write through a symbolic link (a dangling one at the path itself, or
/// a link among its directories).
fn planned(dir: &Path, rel: &str) -> Result<bool, Error> {
    let path = dir.join(rel);
    if std::fs::metadata(&path).is_ok() {
        return Ok(false);
    }
    let mut at = dir.to_path_buf();
    for part in Path::new(rel).components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Err(refused(rel, &at, dir)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(source) => return Err(Error::Read { path: at, source }),
        }
    }
    Ok(true)
}

/// Creates `rel`'s missing directories one by one and the file itself, never following
/// a link that appeared since [`planned`] looked (`create_new` refuses any existing name,
/// a link included). `false` when a file of that name appeared meanwhile (kept).
fn write_new(dir: &Path, rel: &str, text: &str) -> Result<bool, Error> {
    use std::io::Write;
    let path = dir.join(rel);
    let mut at = dir.to_path_buf();
    if let Some(parent) = Path::new(rel).parent() {
        for part in parent.components() {
            at.push(part);
            match std::fs::create_dir(&at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let is_link =
                        std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink());
                    if is_link {
                        return Err(refused(rel, &at, dir));
                    }
                }
                Err(source) => return Err(Error::Read { path: at, source }),
            }
        }
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let is_link =
                std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                Err(refused(rel, &path, dir))
            } else {
                Ok(false)
            }
        }
        Err(source) => Err(Error::Read { path, source }),
    }
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
