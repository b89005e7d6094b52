//! Any argument list quoted for the remote shell must reach a real `sh` as exactly
//! itself: the quoted line is evaluated by `sh -c 'printf "%s\0" <line>'` and the words
//! printf received are compared with the list. (`shlex` splitting back is checked too,
//! first, because it is cheap.)
#![no_main]

use std::process::Command;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let argv: Vec<String> = text.split('\u{1f}').map(str::to_owned).collect();
    match runbook::quote::command_line(&argv) {
        Ok(line) => {
            let back = shlex::split(&line).expect("a quoted line splits");
            assert_eq!(back, argv, "quoted as {line:?}");
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf '%s\\0' {line}"))
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .output()
                .expect("run sh");
            assert!(
                out.status.success(),
                "sh failed on {line:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let words: Vec<&[u8]> = out
                .stdout
                .split_inclusive(|b| *b == 0)
                .map(|w| &w[..w.len() - 1])
                .collect();
            let want: Vec<&[u8]> = argv.iter().map(String::as_bytes).collect();
            assert_eq!(words, want, "sh split {line:?} differently");
        }
        Err(_) => assert!(argv.iter().any(|a| a.contains('\0'))),
    }
});
