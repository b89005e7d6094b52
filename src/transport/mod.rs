//! How a command reaches a host. A transport only executes; it knows nothing of dry-run,
//! events or policy, which live in the effect layer (`effects`).

pub mod local;
pub mod ssh;
pub mod transfer;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use std::time::Duration;

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// An argument vector: no shell is involved locally; remotely every argument is quoted.
    Argv(Vec<String>),
    /// An explicit shell script (`sh -c`), for pipelines. The caller chose the risk.
    Shell(String),
}

impl Program {
    /// The argument vector to execute, with `sudo -n [-u USER] --` in front when asked.
    /// `keep` names the environment variables the command is given: sudo resets the
    /// environment, so they are named in `--preserve-env=…` (sudoers decides whether
    /// that is allowed; see [`ExecError::SudoEnv`]).
    pub fn argv_with_sudo(&self, sudo: Option<&str>, keep: &[String]) -> Vec<String> {
        let base = match self {
            Program::Argv(argv) => argv.clone(),
            Program::Shell(script) => vec!["sh".into(), "-c".into(), script.clone()],
        };
        match sudo {
            None => base,
            Some(user) => {
                let mut v = vec!["sudo".to_owned(), "-n".to_owned()];
                if !keep.is_empty() {
                    v.push(format!("--preserve-env={}", keep.join(",")));
                }
                if !user.is_empty() {
                    v.push("-u".into());
                    v.push(user.to_owned());
                }
                v.push("--".into());
                v.extend(base);
                v
            }
        }
    }

    /// The words shown in events and error messages.
    pub fn display_argv(&self) -> Vec<String> {
        match self {
            Program::Argv(argv) => argv.clone(),
            Program::Shell(script) => vec!["sh".into(), "-c".into(), script.clone()],
        }
    }
}

/// The environment variable every command of a run carries, holding the run id: a
/// recovery finds a dead run's commands still running on a host by it.
pub const RUN_TAG: &str = "RUNBOOK_RUN";

#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: Program,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    /// Run through `sudo -n` (never prompts); `Some("")` means root.
    pub sudo: Option<String>,
    pub timeout: Option<Duration>,
    /// A non-zero exit is a result, not an error.
    pub tolerate: bool,
    /// Do not stream output lines as events (they are still captured).
    pub quiet: bool,
    /// Internal housekeeping (lock heartbeats): no events at all.
    pub silent: bool,
    /// End-of-run housekeeping (releasing locks, the host's audit line) that a first or
    /// second signal must not cut short — a lock left behind blocks the next deploy.
    /// Only the forced stop (third signal: connections closed) ends it.
    pub shielded: bool,
    /// What people read instead of the argument vector (for runbook's own scripts).
    pub label: Option<String>,
    /// Only reads (runbook's own probes, or a script command marked `read: true`): it
    /// runs for real in a dry run, so that the plan is built on what the hosts are.
    pub read: bool,
}

impl CommandSpec {
    /// One of runbook's own fixed shell scripts: values reach it only as positional
    /// arguments (`sh -c BODY sh "$1" "$2" …`), never spliced into the text; people read
    /// `label` instead of the script.
    pub fn script(label: impl Into<String>, body: &str, args: &[&str]) -> CommandSpec {
        let mut argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            body.to_owned(),
            "sh".to_owned(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut spec = CommandSpec::new(Program::Argv(argv));
        spec.label = Some(label.into());
        spec
    }

    pub fn new(program: Program) -> CommandSpec {
        CommandSpec {
            program,
            cwd: None,
            env: Vec::new(),
            stdin: None,
            sudo: None,
            timeout: None,
            tolerate: false,
            quiet: false,
            silent: false,
            shielded: false,
            label: None,
            read: false,
        }
    }
}

pub use crate::origin::random_hex;

/// What a finished process left behind.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// Exit code; `None` when the process was ended by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

/// Why a command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("timed out after {}", humantime::format_duration(*after))]
    Timeout { after: Duration, partial: Finished },
    #[error("interrupted")]
    Interrupted { partial: Finished },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("{message}")]
    Connect { message: String },
    #[error("the connection to the host was lost: {message}")]
    Disconnected { message: String, partial: Finished },
    #[error(
        "sudo refused to give the command its environment ({}): {detail}\n  hint: sudo resets the environment and passes variables on only where sudoers allows it: add the SETENV tag to the rule (e.g. `deploy ALL=(root) NOPASSWD:SETENV: /usr/bin/php`), or keep them with `Defaults env_keep += \"{}\"`",
        names.join(", "),
        names.join(" ")
    )]
    SudoEnv { names: Vec<String>, detail: String },
}

/// What kind of failure ended a command, as scripts read it (`e.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// It ran and exited non-zero.
    Exit,
    /// It ran and was killed by a signal.
    Signal,
    /// It ran past its timeout and was killed.
    Timeout,
    /// The host could not be reached, or the connection to it was lost.
    Unreachable,
    /// It was not run: sudo refused it, or runbook's own gate did.
    Refused,
    /// Ctrl-C / SIGTERM stopped it.
    Interrupted,
    /// Anything else (the program could not start, a transfer failed).
    Error,
}

impl ErrorKind {
    /// The name scripts compare against: `"exit"`, `"timeout"`, `"unreachable"`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Exit => "exit",
            ErrorKind::Signal => "signal",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Refused => "refused",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Error => "error",
        }
    }
}

impl ExecError {
    /// Which kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExecError::Timeout { .. } => ErrorKind::Timeout,
            ExecError::Interrupted { .. } => ErrorKind::Interrupted,
            ExecError::Connect { .. } | ExecError::Disconnected { .. } => ErrorKind::Unreachable,
            ExecError::SudoEnv { .. } => ErrorKind::Refused,
            ExecError::Spawn { .. } | ExecError::Io(_) | ExecError::Unsupported(_) => {
                ErrorKind::Error
            }
        }
    }
}

impl CommandSpec {
    /// The names of the variables in `env`, checked: each must be a shell identifier
    /// (they are exported by name on the remote side).
    pub fn env_names(&self) -> Result<Vec<String>, ExecError> {
        self.env
            .iter()
            .map(|(k, _)| {
                let valid = !k.is_empty()
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !k.starts_with(|c: char| c.is_ascii_digit());
                if valid {
                    Ok(k.clone())
                } else {
                    Err(ExecError::Unsupported(format!(
                        "`{k}` is not a valid environment variable name"
                    )))
                }
            })
            .collect()
    }

    /// Whether a finished command's failure is sudo refusing to keep `env`: then the
    /// command never ran, and the error says what sudoers needs.
    pub fn sudo_env_refusal(&self, f: &Finished) -> Option<ExecError> {
        if self.sudo.is_none() || self.env.is_empty() || f.code != Some(1) {
            return None;
        }
        let line = f.stderr.lines().find(|l| {
            l.starts_with("sudo: ")
                && (l.contains("not allowed to set the following environment variables")
                    || l.contains("not allowed to preserve the environment"))
        })?;
        Some(ExecError::SudoEnv {
            names: self.env.iter().map(|(k, _)| k.clone()).collect(),
            detail: line.trim().to_owned(),
        })
    }
}

/// Where each output line goes while a command runs.
pub type LineSink<'a> = &'a (dyn Fn(crate::output::Stream, &str) + Send + Sync);

/// The most output kept per stream; older output is dropped (the tail matters most).
pub const MAX_CAPTURE: usize = 8 * 1024 * 1024;

/// Reads `reader` line by line into `buf` (keeping at most [`MAX_CAPTURE`] bytes, the
/// newest), handing each line to `on_line` unless `quiet`.
pub(crate) async fn pump(
    reader: Option<impl AsyncRead + Unpin>,
    stream: crate::output::Stream,
    buf: &mut String,
    on_line: LineSink<'_>,
    quiet: bool,
) {
    let Some(reader) = reader else { return };
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                if !quiet {
                    on_line(stream, text.trim_end_matches(['\n', '\r']));
                }
                buf.push_str(&text);
                if buf.len() > MAX_CAPTURE {
                    let cut = buf.len() - MAX_CAPTURE / 2;
                    let cut = (cut..buf.len())
                        .find(|i| buf.is_char_boundary(*i))
                        .unwrap_or(buf.len());
                    buf.drain(..cut);
                }
            }
        }
    }
}
