//! Any bytes as a backup archive: refused or restored, never a panic, and never a write
//! anywhere in the sandbox outside the restore directory.
//!
//! The oracle watches a whole sandbox root, not only the restore directory's parent: every
//! path in it except `restore/` — with its kind, mode, size, mtime, ctime, contents and
//! link target — is recorded before and after each input, and any difference is a crash.
//! The sandbox has a fixed path (`RUNBOOK_FUZZ_SANDBOX`, default
//! `/tmp/runbook-fuzz-sandbox`) so that absolute link targets in the corpus can name what
//! is in it: `outside/victim` (a file), `outside/dir/` and `outside/link -> victim`.
//! One sandbox per process: give each job its own `RUNBOOK_FUZZ_SANDBOX` when fuzzing
//! with several.
#![no_main]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::var_os("RUNBOOK_FUZZ_SANDBOX")
            .map_or_else(|| PathBuf::from("/tmp/runbook-fuzz-sandbox"), PathBuf::from);
        let _ = std::fs::remove_dir_all(&root);
        let outside = root.join("outside");
        std::fs::create_dir_all(outside.join("dir")).expect("make the sandbox");
        std::fs::write(outside.join("victim"), "original").expect("make the sandbox");
        std::fs::set_permissions(
            outside.join("victim"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("make the sandbox");
        std::os::unix::fs::symlink("victim", outside.join("link")).expect("make the sandbox");
        root
    })
}

/// Every path under `dir` (not following links, skipping `skip`) and what it is.
fn snapshot(dir: &Path, skip: &Path, into: &mut BTreeMap<PathBuf, String>) {
    let Ok(items) = std::fs::read_dir(dir) else {
        return;
    };
    for item in items.flatten() {
        let path = item.path();
        if path == skip {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            into.insert(path, "unreadable".into());
            continue;
        };
        let detail = if m.is_file() {
            format!("{:?}", std::fs::read(&path).unwrap_or_default())
        } else if m.is_symlink() {
            format!("-> {:?}", std::fs::read_link(&path).unwrap_or_default())
        } else {
            String::new()
        };
        into.insert(
            path.clone(),
            format!(
                "{:?} mode {:o} size {} mtime {}.{} ctime {}.{} {detail}",
                m.file_type(),
                m.mode(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ),
        );
        if m.is_dir() {
            snapshot(&path, skip, into);
        }
    }
}

/// Makes every directory under `dir` writable (links untouched) so that a restored
/// read-only tree can be removed before the next input.
fn removable(dir: &Path) {
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for item in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        removable(&item.path());
    }
}

fn clear(dest: &Path) {
    removable(dest);
    let _ = std::fs::remove_dir_all(dest);
}

fn outside(root: &Path, dest: &Path) -> BTreeMap<PathBuf, String> {
    let mut all = BTreeMap::new();
    snapshot(root, dest, &mut all);
    all
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let root = root();
    let dest = root.join("restore");
    clear(&dest);
    let before = outside(root, &dest);
    let result = runbook::backup::archive::verify_into(data, &dest);
    let after = outside(root, &dest);
    if before != after {
        let changed: Vec<_> = after
            .iter()
            .filter(|(p, m)| before.get(*p) != Some(*m))
            .map(|(p, _)| p)
            .chain(before.keys().filter(|p| !after.contains_key(*p)))
            .collect();
        panic!("written outside the restore directory: {changed:?} (the restore said {result:?})");
    }
    if result.is_err() {
        assert!(
            std::fs::symlink_metadata(&dest).is_err(),
            "a refused restore left {} behind",
            dest.display()
        );
    }
    clear(&dest);
});
