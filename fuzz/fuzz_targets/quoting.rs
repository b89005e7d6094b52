//! Any argument list quoted for the remote shell must split back into exactly itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let argv: Vec<String> = text.split('\u{1f}').map(str::to_owned).collect();
    match runbook::quote::command_line(&argv) {
        Ok(line) => {
            let back = shlex::split(&line).expect("a quoted line splits");
            assert_eq!(back, argv, "quoted as {line:?}");
        }
        Err(_) => assert!(argv.iter().any(|a| a.contains('\0'))),
    }
});
