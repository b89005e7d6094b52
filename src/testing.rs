//! Helpers of the unit tests.

use std::io::Write;

/// What `sh -c body sh args…` did with `stdin` on its standard input, as a host's shell
/// would run a remote script: its exit code (-1 when killed), stdout and stderr.
pub(crate) fn sh(body: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(body)
        .arg("sh")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sh");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write sh's stdin");
    }
    let out = child.wait_with_output().expect("wait for sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A runtime with one worker, for tests of the effect layer.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}
