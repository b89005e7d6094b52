//! Why an upload, a download or an in-process task did not complete. The effect layer
//! turns it into a [`super::CommandError::Unavailable`] naming the host and the command,
//! so this type says only what went wrong with the bytes, never where.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinError;

use crate::quote::NulByte;
use crate::transport::ExecError;
use crate::transport::ssh::NoControlDir;
use crate::transport::transfer::NoName;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferError {
    /// The remote path has no last component to copy.
    #[error(transparent)]
    Path(#[from] NoName),
    #[error(transparent)]
    Quote(#[from] NulByte),
    #[error(transparent)]
    NoControlDir(#[from] NoControlDir),
    /// The command that carries the bytes on the host did not finish.
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("the transfer's remote side exited with code {code}: {}", stderr.trim())]
    RemoteExit { code: i32, stderr: String },
    #[error("the transfer's remote side was killed: {}", stderr.trim())]
    RemoteKilled { stderr: String },
    #[error("packing stopped: {0}")]
    PackingStopped(JoinError),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The one preparation of an upload failed; every host that needed it says why.
    #[error(transparent)]
    Prepared(Arc<TransferError>),
    #[error("the upload was not prepared")]
    NotPrepared,
    #[error("the copy stopped: {0}")]
    CopyStopped(JoinError),
    /// A file on the runner (the staging directory, the archive, the copy) failed.
    #[error(transparent)]
    Local(std::io::Error),
    #[error("cannot move the download to {}: {source}", path.display())]
    Move {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the task stopped: {0}")]
    TaskStopped(JoinError),
    /// The in-process work's own error, as its caller's core describes it.
    #[error("{0}")]
    Task(Box<dyn std::error::Error + Send + Sync>),
}
