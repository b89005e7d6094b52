//! Why one host of a fan-out gave no result to read. The cores that read or change a set
//! of hosts return it per host, so a caller can tell a command that failed (with its
//! host, exit code and stderr) from a host the fan-out never reached.

use super::{CommandError, CommandResult, HostOutcome};

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum HostError {
    /// The command did not run to a success: see [`CommandError`].
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A command run with `tolerate` exited non-zero where the caller needs success.
    #[error("exit {code}: {}", stderr.trim())]
    Exit { code: i32, stderr: String },
    /// Not started: an earlier failure stopped the fan-out, or Ctrl-C.
    #[error("not reached")]
    NotReached,
}

impl HostOutcome {
    /// What the host answered, or why it did not.
    pub(crate) fn result(&self) -> Result<&CommandResult, HostError> {
        match self {
            HostOutcome::Done(Ok(r)) => Ok(r),
            HostOutcome::Done(Err(e)) => Err(HostError::Command(e.clone())),
            HostOutcome::Skipped => Err(HostError::NotReached),
        }
    }

    /// [`HostOutcome::result`], a non-zero exit counted as a failure too (a dry run's
    /// synthetic result is a success).
    pub(crate) fn success(&self) -> Result<&CommandResult, HostError> {
        let r = self.result()?;
        if r.ok() || r.dry_run {
            Ok(r)
        } else {
            Err(HostError::Exit {
                code: r.code,
                stderr: r.stderr.clone(),
            })
        }
    }
}
