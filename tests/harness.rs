//! A small builder that runs the real `runbook` binary in a temporary project and
//! captures what it did (in the style of just's `Test`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const INVENTORY: &str = r#"
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

pub struct Test {
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runbook"))
}

impl Test {
    /// A project with the default inventory.
    pub fn new() -> Test {
        Test::bare().file("runbook.toml", INVENTORY)
    }

    /// An empty directory.
    pub fn bare() -> Test {
        Test {
            dir: tempfile::tempdir().expect("tempdir"),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(self, rel: &str, content: &str) -> Test {
        let path = self.dir.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
        self
    }

    pub fn args(mut self, args: &[&str]) -> Test {
        self.args.extend(args.iter().map(|s| (*s).to_owned()));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Test {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.dir.path())
            .args(&self.args)
            .env("NO_COLOR", "1")
            .env_remove("RUNBOOK_ENV")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("RUST_LOG")
            .env_remove("GITHUB_STEP_SUMMARY")
            .env("RUNBOOK_AUDIT_FILE", self.dir.path().join("audit.jsonl"))
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs with extra arguments, keeping the builder for more runs.
    pub fn run_with(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        let out = cmd.output().expect("runbook runs");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn run(&self) -> Output {
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
    pub fn code(&self, expected: i32) -> &Output {
        assert_eq!(
            self.code, expected,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Output {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n--- stderr\n{}",
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Output {
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
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}
