//! Private keys that arrive as environment variables (`identity = { env = "PRODUCTION_SSH_KEY" }`,
//! the seed's GitHub secret): written for the run into a 0600 file inside a 0700
//! directory of its own, so that `ssh -i` can read them — never put in argv, never
//! readable by another user — and removed when the environment that holds them is
//! dropped (the run's session ends, on success, error or a handled signal).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use super::Environment;

/// Why a key from an environment variable could not be made a file for `ssh -i`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("cannot create a private directory for the SSH key: {0}")]
    Dir(std::io::Error),
    #[error(
        "{var} is not set here (or empty): export the private key there (GitHub Actions: `env:` from the repository's secrets)"
    )]
    NotSet { var: String },
    #[error("cannot write the key from {var}: {source}")]
    Write { var: String, source: std::io::Error },
}

/// The run's private key directory; removed (with every key in it) on drop.
#[derive(Debug)]
pub(crate) struct KeyDir {
    dir: tempfile::TempDir,
}

impl KeyDir {
    pub(crate) fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// `env` with every `identity` key written to a private file and set as the host's
/// `identity_file`. The error names the variable (its value never appears).
pub(crate) fn materialize(
    env: &Environment,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Environment, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    // 0700 from the moment it exists (tempfile's default follows the umask: 0755).
    let dir = tempfile::Builder::new()
        .prefix("rb-key-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(KeyError::Dir)?;
    let keys = Arc::new(KeyDir { dir });
    let mut written: Vec<(String, String)> = Vec::new();
    let mut out = env.clone();
    for host in &mut out.hosts {
        let Some(r) = host.identity.clone() else {
            continue;
        };
        let path = if let Some((_, p)) = written.iter().find(|(v, _)| *v == r.env) {
            p.clone()
        } else {
            let material = lookup(&r.env).ok_or_else(|| KeyError::NotSet { var: r.env.clone() })?;
            let path = keys.path().join(format!("key-{}", written.len() + 1));
            write_key(&path, &material).map_err(|source| KeyError::Write {
                var: r.env.clone(),
                source,
            })?;
            let p = path.to_string_lossy().into_owned();
            written.push((r.env.clone(), p.clone()));
            p
        };
        Arc::make_mut(host).identity_file = Some(path);
    }
    out.keys = Some(keys);
    Ok(out)
}

/// Writes key material as OpenSSH wants it: LF line ends and a final newline, mode 0600
/// from the moment the file exists.
fn write_key(path: &std::path::Path, material: &str) -> std::io::Result<()> {
    let mut text = material.replace("\r\n", "\n");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}
