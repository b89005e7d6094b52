//! Every way a run can fail, as data. Prose lives in the `Display` impls here and nowhere
//! else; `main` renders an error once and exits with [`Error::code`].

use std::path::PathBuf;

use crate::diagnostic::Diagnostic;
pub(crate) use crate::inventory::InventoryError;

/// Documented exit codes (see README "Exit codes").
pub(crate) mod exit {
    pub(crate) const SUCCESS: i32 = 0;
    pub(crate) const FAILURE: i32 = 1;
    pub(crate) const USAGE: i32 = 2;
    pub(crate) const NOT_ALLOWED: i32 = 3;
    pub(crate) const INTERRUPTED: i32 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Inventory(#[from] InventoryError),

    #[error(
        "no {} found in {} or any parent directory\n  hint: create one (see README \"Inventory\") or pass --config PATH",
        crate::inventory::FILE_NAME,
        dir.display()
    )]
    NoConfig { dir: PathBuf },

    #[error("no environment selected\n  hint: pass --env NAME or set RUNBOOK_ENV (environments: {})", known.join(", "))]
    NoEnv { known: Vec<String> },

    #[error("script `{name}` not found (looked for {})\n  available scripts: {}", searched.display(), if available.is_empty() { "none".to_owned() } else { available.join(", ") })]
    ScriptNotFound {
        name: String,
        searched: PathBuf,
        available: Vec<String>,
    },

    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{0}")]
    Script(Box<Diagnostic>),

    #[error("{count} script(s) failed the check")]
    CheckFailed { count: usize },

    #[error(
        "unlock refused: the deploy lock stays on {count} of {total} hosts of `{env}` (why, for each, is above)\n  hint: {}",
        if *stale {
            format!("--stale removes only a lock whose run is gone (no heartbeat for a minute): wait for that run to end; once you know it is dead, remove the lock with `runbook unlock -e {env}` (without --stale)")
        } else {
            format!("fix what each host says, then run `runbook unlock -e {env}` again")
        }
    )]
    NotUnlocked {
        env: String,
        count: usize,
        total: usize,
        /// `--stale` was given (a live lock is refused).
        stale: bool,
    },

    #[error(
        "environment `{env}` is protected and this run was not confirmed\n  hint: run it from a terminal to confirm, or pass --yes (CI)"
    )]
    NotConfirmed { env: String },

    #[error("confirmation declined: nothing was done on `{env}`")]
    Declined { env: String },

    #[error("invalid argument `{arg}`: expected KEY=VALUE (e.g. ref=v1.2.3)")]
    BadArg { arg: String },

    #[error("{option}: {message}")]
    BadOption { option: String, message: String },

    #[error(
        "`{actor}` may not run {what} on `{env}` (allowed: {})\n  hint: ask someone allowed to add you to env.{env}.{key} in runbook.toml (a reviewed change)",
        allowed.join(", ")
    )]
    NotAllowed {
        actor: String,
        env: String,
        what: String,
        key: String,
        allowed: Vec<String>,
    },

    #[error("interrupted")]
    Interrupted { diagnostic: Option<Box<Diagnostic>> },

    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),

    /// A command's own failure on hosts, already a full sentence.
    #[error("{0}")]
    Message(String),
}

impl Error {
    /// The process exit status for this error.
    pub fn code(&self) -> i32 {
        match self {
            Error::Script(_)
            | Error::CheckFailed { .. }
            | Error::NotUnlocked { .. }
            | Error::Declined { .. }
            | Error::Runtime(_)
            | Error::Message(_) => exit::FAILURE,
            Error::Interrupted { .. } => exit::INTERRUPTED,
            Error::NotAllowed { .. } => exit::NOT_ALLOWED,
            Error::Inventory(_)
            | Error::NoConfig { .. }
            | Error::NoEnv { .. }
            | Error::ScriptNotFound { .. }
            | Error::Read { .. }
            | Error::NotConfirmed { .. }
            | Error::BadArg { .. }
            | Error::BadOption { .. } => exit::USAGE,
        }
    }
}
