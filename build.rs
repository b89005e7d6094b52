// Puts the git commit into `runbook --version` ("unknown" outside a git checkout).
fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=RUNBOOK_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    // `runbook-agent` is uploaded to SSH hosts (src/backup/agent.rs): its debug
    // information (150 MB in a debug build) stays here. The runner keeps its own.
    println!("cargo:rustc-link-arg-bin=runbook-agent=-Wl,--strip-debug");
}
