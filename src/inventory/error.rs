//! What can be wrong with `runbook.toml`.

use std::path::PathBuf;

/// Problems with `runbook.toml`: always name the file, and the key when there is one.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },

    #[error("{}: `{key}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },

    #[error("{}: no environment `{name}` (environments: {})", path.display(), if known.is_empty() { "none defined".to_owned() } else { known.join(", ") })]
    UnknownEnv {
        path: PathBuf,
        name: String,
        known: Vec<String>,
    },
}
