//! A small builder that runs the real `runbook` binary in a temporary project and
//! captures what it did (in the style of just's `Test`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub(crate) const INVENTORY: &str = r#"
[app]
name = "t"
deploy_path = "deploy"

[env.dev]
transport = "local"
hosts = { a = "localhost", b = "localhost" }
roles = { web = ["a", "b"], one = ["a"] }
vars = { greeting = "hello" }

[env.prod]
transport = "local"
protected = true
hosts = { p = "localhost" }
"#;

/// Where this test process keeps runbook's state (the audit log, REPL history) for
/// anything that does not get a directory of its own: in-process `runbook::run` calls,
/// and children spawned without [`Test::command`].
pub(crate) fn process_state_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("state")
}

/// Before `main` (no thread exists yet, so changing the environment is sound): the
/// whole test process — and every child it starts — keeps its state in
/// [`process_state_dir`], never in the user's `~/.local/state/runbook`. A developer's own
/// `RUNBOOK_AUDIT_FILE` is dropped for the same reason.
#[ctor::ctor(unsafe)]
fn isolate_state() {
    // SAFETY: runs before main, single-threaded; nothing reads the environment yet.
    unsafe {
        std::env::set_var("XDG_STATE_HOME", process_state_dir());
        std::env::remove_var("RUNBOOK_AUDIT_FILE");
    }
}

pub(crate) struct Test {
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

pub(crate) struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The runbook binary the tests run: this build's, or `RUNBOOK_BIN` (benchmarks run the
/// release build through the same harness: `RUNBOOK_BIN=target/release/runbook`).
pub(crate) fn bin() -> PathBuf {
    std::env::var_os("RUNBOOK_BIN")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_runbook")),
            PathBuf::from,
        )
}

impl Test {
    /// A project with the default inventory.
    pub(crate) fn new() -> Test {
        Test::bare().file("runbook.toml", INVENTORY)
    }

    /// An empty directory.
    pub(crate) fn bare() -> Test {
        Test {
            dir: tempfile::tempdir().expect("tempdir"),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn file(self, rel: &str, content: &str) -> Test {
        let path = self.dir.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
        self
    }

    pub(crate) fn args(mut self, args: &[&str]) -> Test {
        self.args.extend(args.iter().map(|s| (*s).to_owned()));
        self
    }

    pub(crate) fn env(mut self, k: &str, v: &str) -> Test {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.dir.path())
            .args(&self.args)
            .env("NO_COLOR", "1")
            .env_remove("RUNBOOK_ENV")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("RUST_LOG")
            .env_remove("GITHUB_STEP_SUMMARY")
            .env("RUNBOOK_AUDIT_FILE", self.dir.path().join("audit.jsonl"))
            // Any other state runbook keeps goes into this test's own directory too.
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs with extra arguments, keeping the builder for more runs.
    pub(crate) fn run_with(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        let out = cmd.output().expect("runbook runs");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) fn run(&self) -> Output {
        let out = self.command().output().expect("runbook runs");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Output {
    #[track_caller]
    pub(crate) fn code(&self, expected: i32) -> &Output {
        assert_eq!(
            self.code, expected,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub(crate) fn stderr_has(&self, needle: &str) -> &Output {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n--- stderr\n{}",
            self.stderr
        );
        self
    }

    #[track_caller]
    pub(crate) fn stdout_has(&self, needle: &str) -> &Output {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The JSON events of a `--json` run, each line parsed.
    #[track_caller]
    pub(crate) fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Test {
    /// Runs `runbook repl -e ENV` with `input` on stdin (no terminal) to its end.
    pub(crate) fn repl(&self, env: &str, input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .command()
            .args(["repl", "-e", env])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("repl starts");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("input");
        }
        child.wait_with_output().expect("repl ends")
    }

    /// `runbook repl -e ENV` in a real terminal (tmux), or `None` when tmux is missing
    /// (a failure under `CI=true`).
    pub(crate) fn repl_in_terminal(&self, env: &str) -> Option<Tmux> {
        self.in_terminal(&format!("repl -e {env}"))
    }

    /// `runbook ARGS` (a shell-quoted line) in a real terminal (tmux), or `None` when
    /// tmux is missing (a failure under `CI=true`). The test's own variables apply.
    pub(crate) fn in_terminal(&self, args: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "tmux is missing under CI"
            );
            eprintln!("SKIPPED: tmux not installed");
            return None;
        }
        let vars = self.env.iter().fold(String::new(), |mut out, (k, v)| {
            let _ = write!(out, "{k}='{}' ", v.replace('\'', "'\\''"));
            out
        });
        let cmd = format!(
            "cd {} && NO_COLOR=1 RUNBOOK_AUDIT_FILE={} XDG_STATE_HOME={} {vars}{} {args}",
            self.path().display(),
            self.path().join("audit.jsonl").display(),
            self.path().join("state").display(),
            bin().display()
        );
        let tmux = Tmux {
            socket: self.path().join("tmux.sock"),
            session: format!("rb-repl-{}", std::process::id()),
        };
        let started = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            &tmux.session,
            "-x",
            "150",
            "-y",
            "40",
            &cmd,
        ]);
        assert!(started.status.success(), "tmux new-session");
        Some(tmux)
    }
}

/// A program in a tmux pane: keys in, screen out.
pub(crate) struct Tmux {
    socket: PathBuf,
    session: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }

    /// Types text literally (no key names, `;` is not a tmux separator).
    pub(crate) fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-l", "-t", &self.session, text]);
    }

    /// Presses keys by name: `Enter`, `Tab`, `C-c`, `C-d`.
    pub(crate) fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", &self.session, key]);
    }

    pub(crate) fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["capture-pane", "-p", "-t", &self.session])
                .stdout,
        )
        .into_owned()
    }

    /// Waits (bounded) until `needle` is on the screen.
    #[track_caller]
    pub(crate) fn wait_for(&self, needle: &str, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never saw {needle:?} on screen:\n{s}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until the program in the pane has exited.
    #[track_caller]
    pub(crate) fn wait_exit(&self, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while self
            .run(&["has-session", "-t", &self.session])
            .status
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the program did not exit:\n{}",
                self.screen()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
