//! Any text as runbook.toml: an error or an inventory, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ =
            runbook::inventory::Inventory::parse(std::path::Path::new("/fuzz/runbook.toml"), text);
    }
});
