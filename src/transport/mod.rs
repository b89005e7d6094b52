//! How a command reaches a host. A transport only executes; it knows nothing of dry-run,
//! events or policy, which live in the effect layer (`effects`).

pub mod local;

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
    /// The words shown in events and error messages.
    pub fn display_argv(&self) -> Vec<String> {
        match self {
            Program::Argv(argv) => argv.clone(),
            Program::Shell(script) => vec!["sh".into(), "-c".into(), script.clone()],
        }
    }
}

#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: Program,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    pub timeout: Option<Duration>,
    /// A non-zero exit is a result, not an error.
    pub tolerate: bool,
    /// Do not stream output lines as events (they are still captured).
    pub quiet: bool,
}

impl CommandSpec {
    pub fn new(program: Program) -> CommandSpec {
        CommandSpec {
            program,
            cwd: None,
            env: Vec::new(),
            stdin: None,
            timeout: None,
            tolerate: false,
            quiet: false,
        }
    }
}

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
}

/// Where each output line goes while a command runs.
pub type LineSink<'a> = &'a (dyn Fn(crate::output::Stream, &str) + Send + Sync);

/// The most output kept per stream; older output is dropped (the tail matters most).
pub const MAX_CAPTURE: usize = 8 * 1024 * 1024;
