//! What a remote command exposes and whether it can still be stopped, on real sshd hosts:
//! `env` values never in any process's argv on the host, kept through `sudo`, refused
//! clearly where sudoers will not keep them; and a login shell that prints to stderr no
//! longer hides the process group a timeout must kill.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, USER};
use crate::harness::Test;

fn project(fleet: &Fleet, script: &str) -> Test {
    Test::bare()
        .file("runbook.toml", &fleet.inventory(""))
        .file("scripts/s.rhai", script)
}

/// A sudoers drop-in for the test's deploy user, removed when dropped. `None` (with a
/// message) where sudo is missing — a failure under `CI=true`.
struct Sudoers(PathBuf);

impl Sudoers {
    fn install(name: &str, rules: &str) -> Option<Sudoers> {
        if !Path::new("/usr/bin/sudo").exists() {
            let why = "sudo is not installed (apt-get install -y sudo; tests/run.sh does)";
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "{why} under CI=true"
            );
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let path = PathBuf::from(format!(
            "/etc/sudoers.d/runbook-test-{name}-{}",
            std::process::id()
        ));
        std::fs::write(&path, rules).expect("write the sudoers drop-in");
        let guard = Sudoers(path);
        assert!(
            Command::new("chmod")
                .arg("0440")
                .arg(&guard.0)
                .status()
                .is_ok_and(|s| s.success())
        );
        let check = Command::new("visudo")
            .arg("-cf")
            .arg(&guard.0)
            .output()
            .expect("visudo runs");
        assert!(
            check.status.success(),
            "the test's sudoers rules do not parse: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        Some(guard)
    }
}

impl Drop for Sudoers {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every process's argv on this machine (the hosts share it), as (pid, argv text).
fn all_argv() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&raw).replace('\0', " ")))
        })
        .collect()
}

/// Watches every process's argv for `needle` until stopped; returns what it saw.
fn watch_argv(needle: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for (_, argv) in all_argv() {
                if argv.contains(&needle) && !seen.contains(&argv) {
                    seen.push(argv);
                }
            }
        }
        seen
    })
}

#[test]
fn env_reaches_a_sudo_command_and_no_remote_argv_ever_holds_its_value() {
    let Some(fleet) = Fleet::start(1) else { return };
    let Some(_sudoers) = Sudoers::install(
        "env",
        &format!(
            "{USER} ALL=(root) NOPASSWD:SETENV: /bin/sh, /usr/bin/sh, /bin/kill, /usr/bin/kill\n"
        ),
    ) else {
        return;
    };
    let value = format!("bar-{}-argv-check", std::process::id());
    let tag = format!("7.{}", std::process::id());
    let script = format!(
        r#"for i in 0..10 {{
    ssh::run(host("web1"), ["sh", "-c", "test -n \"$FOO\""], #{{ env: #{{ FOO: "{value}" }} }});
}}
let r = ssh::run(host("web1"), ["sh", "-c", "echo [$FOO]"], #{{ env: #{{ FOO: "bar" }}, sudo: true }});
print(r.stdout);
for i in 0..10 {{
    ssh::run(host("web1"), ["sh", "-c", "printf %s \"$FOO\""], #{{ env: #{{ FOO: "{value}" }}, sudo: true }});
}}
let r = ssh::run(host("web1"), ["sh", "-c", "sleep {tag}; echo [$FOO] $(id -un)"], #{{ env: #{{ FOO: "{value}" }}, sudo: true }});
print(r.stdout);
"#
    );
    let t = project(&fleet, &script);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_argv(value.clone(), stop.clone());
    let mut child = t
        .command()
        .args(["run", "s", "-e", "fleet", "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the last command sleeps (as root, through sudo): is FOO in its environment?
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut environ = None;
    while environ.is_none() && Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if let Some((pid, _)) = all_argv()
            .into_iter()
            .find(|(_, a)| a.starts_with(&format!("sleep {tag}")))
        {
            let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ = Some(String::from_utf8_lossy(&raw).into_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.is_empty(),
        "the env value was in the argv of a process on the host: {seen:?}"
    );
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"[bar]"), "{stdout}");
    let environ = environ.expect("the sudo command was seen sleeping");
    assert!(
        environ.split('\0').any(|kv| kv == format!("FOO={value}")),
        "the sudo command's environment lacks FOO"
    );
    assert!(
        stdout.contains(&format!("[{value}] root")),
        "the sudo command did not get FOO: {stdout}"
    );
    eprintln!(
        "env over stdin: 22 commands (10 plain, 12 through sudo) while every argv on the machine was watched: the value in none; FOO kept through sudo -n --preserve-env"
    );
}

#[test]
fn sudo_that_will_not_keep_the_environment_is_a_clear_error() {
    let Some(fleet) = Fleet::start(1) else { return };
    // A rule without SETENV (and not ALL): sudo refuses --preserve-env.
    let Some(_sudoers) = Sudoers::install(
        "nosetenv",
        &format!("{USER} ALL=(nobody) NOPASSWD: /bin/sh, /usr/bin/sh\n"),
    ) else {
        return;
    };
    let out = project(
        &fleet,
        r#"let r = ssh::run(host("web1"), ["sh", "-c", "echo [$FOO]"], #{ env: #{ FOO: "bar" }, sudo: "nobody" });
print(`ran: ${r.stdout}`);
"#,
    )
    .args(&["run", "s", "-e", "fleet", "-q"])
    .run();
    out.code(1)
        .stderr_has("sudo refused to give the command its environment (FOO)")
        .stderr_has("SETENV");
    assert!(!out.stdout.contains("ran:"), "{}", out.stdout);
}

/// Adds a block at the top of the deploy user's `.bashrc` that writes to stderr — only
/// for ssh connections to `addr` (other tests on this machine use other addresses) —
/// and takes exactly that block out again when dropped.
struct NoisyBashrc {
    path: PathBuf,
    block: String,
}

impl NoisyBashrc {
    fn install(addr: &str) -> NoisyBashrc {
        let path = PathBuf::from(format!("/home/{USER}/.bashrc"));
        let tag = format!("runbook-test-noise-{}", std::process::id());
        let block = format!(
            "# {tag}\ncase \"$SSH_CONNECTION\" in *\" {addr} \"*) echo 'Welcome to {addr} (login chatter)' >&2; printf 'no newline: ' >&2;; esac\n# end {tag}\n"
        );
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, format!("{block}{old}")).expect("write .bashrc");
        let _ = Command::new("chown")
            .arg(format!("{USER}:{USER}"))
            .arg(&path)
            .status();
        NoisyBashrc { path, block }
    }
}

impl Drop for NoisyBashrc {
    fn drop(&mut self) {
        if let Ok(now) = std::fs::read_to_string(&self.path) {
            let _ = std::fs::write(&self.path, now.replacen(&self.block, "", 1));
        }
    }
}

fn remote_sleep_running(tag: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", &format!("^sleep {tag}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_login_shell_that_prints_to_stderr_does_not_stop_a_timeout_killing_the_command() {
    let Some(fleet) = Fleet::start(1) else { return };
    let noisy = NoisyBashrc::install(&fleet.hosts[0].addr);
    let tag = format!("60.{}7", std::process::id());
    let start = Instant::now();
    let out = project(
        &fleet,
        &format!("ssh::run(host(\"web1\"), [\"sleep\", \"{tag}\"], #{{ timeout: \"1s\" }});"),
    )
    .args(&["run", "s", "-e", "fleet"])
    .run();
    let took = start.elapsed();
    let still_running = remote_sleep_running(&tag);
    drop(noisy);
    out.code(1).stderr_has("timed out after 1s");
    let all = format!("{}{}", out.stdout, out.stderr);
    // The dotfile did run, else this test proves nothing.
    assert!(
        all.contains("Welcome to"),
        "the noisy .bashrc did not run:\n{all}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut running = still_running;
    while running {
        assert!(
            Instant::now() < deadline,
            "the remote sleep outlived the 1 s timeout (the login shell's stderr hid its process group)"
        );
        std::thread::sleep(Duration::from_millis(50));
        running = remote_sleep_running(&tag);
    }
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // Its chatter is shown as the command's stderr; the marker is not.
    assert!(
        !all.contains("__runbook_pgid"),
        "the marker was shown:\n{all}"
    );
    eprintln!(
        "noisy login shell: the remote sleep was killed by a 1 s timeout ({took:?} for the run)"
    );
}
