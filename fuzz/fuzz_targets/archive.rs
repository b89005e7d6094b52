//! Any bytes as a backup archive: refused or restored, never a panic, and never a file
//! written outside the restore directory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let dest = dir.path().join("restore");
    let _ = runbook::backup::archive::verify_into(data, &dest);
    // Whatever happened, the only thing beside `restore` is nothing.
    let extra: Vec<_> = std::fs::read_dir(dir.path())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| n != "restore")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        extra.is_empty(),
        "written outside the restore directory: {extra:?}"
    );
});
