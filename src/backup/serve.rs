//! The host side of a backup that stays on the host: what `runbook-agent` (the small
//! second binary, `src/bin/runbook-agent.rs`) does when the runner starts it over SSH.
//!
//! One request per process: the command is the first argument (`create`, `verify`,
//! `prune`, `restore`, `list`), the request a JSON object on stdin (so that no value is
//! ever spliced into a shell line and a database password never reaches an argv), the
//! answer one JSON object on stdout, an error one line on stderr and exit status 1.
//! `--version` prints `runbook-agent VERSION ARCH` and is how the runner checks that the
//! copy it placed starts at all.
//!
//! It calls exactly the code a local backup uses (`backup::create`, `archive::verify`,
//! `backup::prune`, `backup::restore`), so an archive made on a host is runbook's own
//! format, written, read back and checked by the same lines. It must never do more than
//! the request names: no network, no shell, nothing outside the paths it was given.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::archive::{ArchiveError, Manifest};
use super::{BackupError, Database, Options, RestoreOptions, Summary};

/// Why the agent (or a check of an archive on this machine) failed: one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The archive cannot be opened.
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Backup `name` is not whole (a checksum, the manifest, the gzip stream).
    #[error("{name}: {source}")]
    Damaged { name: String, source: ArchiveError },
    #[error("cannot read the request on stdin: {0}")]
    ReadRequest(std::io::Error),
    #[error(
        "the request on stdin is not what this agent understands ({0}): is the runner the same runbook version?"
    )]
    BadRequest(serde_json::Error),
    /// The answer could not be encoded.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// The answer could not be written.
    #[error(transparent)]
    Write(#[from] std::io::Error),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(
        "runbook-agent: unknown command {command:?} (create, verify, prune, restore, list, --version); it is started by runbook, not by hand"
    )]
    UnknownCommand { command: Option<String> },
}

/// `backup::create` on the host.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CreateRequest {
    pub root: PathBuf,
    pub backup_dir: PathBuf,
    /// What to archive, its fields beside `root` in the JSON.
    #[serde(flatten)]
    pub options: Options,
}

/// One archive to read through.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct VerifyRequest {
    pub archive: PathBuf,
}

/// What a verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    pub release: String,
    pub git_ref: String,
    pub entries: usize,
}

impl Verified {
    /// Reads the archive at `path` through, checking every checksum against its
    /// manifest; an error names the file, or the backup `name` when the archive is bad.
    pub fn check(path: &Path, name: &str) -> Result<Verified, ServeError> {
        let file = std::fs::File::open(path).map_err(|source| ServeError::Open {
            path: path.to_owned(),
            source,
        })?;
        let m = super::archive::verify(file).map_err(|source| ServeError::Damaged {
            name: name.to_owned(),
            source,
        })?;
        Ok(m.into())
    }
}

impl From<Manifest> for Verified {
    fn from(m: Manifest) -> Verified {
        Verified {
            release: m.release,
            git_ref: m.git_ref,
            entries: m.entries.len(),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PruneRequest {
    pub backup_dir: PathBuf,
    pub keep: usize,
    pub max_age_s: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Pruned {
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RestoreRequest {
    pub archive: PathBuf,
    pub root: PathBuf,
    pub release: String,
    pub shared: bool,
    pub database: Option<Database>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ListRequest {
    pub backup_dir: PathBuf,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    pub backups: Vec<Summary>,
}

/// The agent's `--version` line: its version and the architecture it was built for.
pub fn version_line() -> String {
    format!(
        "runbook-agent {} {}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

fn request<T: serde::de::DeserializeOwned>(input: &mut dyn Read) -> Result<T, ServeError> {
    let mut text = Vec::new();
    input
        .read_to_end(&mut text)
        .map_err(ServeError::ReadRequest)?;
    serde_json::from_slice(&text).map_err(ServeError::BadRequest)
}

fn answer<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> Result<(), ServeError> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Runs one agent command: `args` without the program name, the request on `input`,
/// the answer on `out`. Returns the exit status.
pub fn run(args: &[String], input: &mut dyn Read, out: &mut dyn Write) -> Result<(), ServeError> {
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    match args.first().map(String::as_str) {
        Some("--version") => Ok(writeln!(out, "{}", version_line())?),
        Some("create") => {
            let r: CreateRequest = request(input)?;
            let s = super::create(&r.root, &r.backup_dir, &r.options, threads)?;
            answer(out, &s)
        }
        Some("verify") => {
            let r: VerifyRequest = request(input)?;
            let file = std::fs::File::open(&r.archive).map_err(|source| ServeError::Open {
                path: r.archive.clone(),
                source,
            })?;
            let m = super::archive::verify(file)?;
            answer(out, &Verified::from(m))
        }
        Some("prune") => {
            let r: PruneRequest = request(input)?;
            let removed = super::prune(
                &r.backup_dir,
                r.keep,
                r.max_age_s.map(std::time::Duration::from_secs),
            )?;
            answer(out, &Pruned { removed })
        }
        Some("restore") => {
            let r: RestoreRequest = request(input)?;
            let ro = RestoreOptions {
                keep_dump: None,
                shared: r.shared,
                database: r.database,
            };
            let m = super::restore(&r.archive, &r.root, &r.release, &ro)?;
            answer(out, &Verified::from(m))
        }
        Some("list") => {
            let r: ListRequest = request(input)?;
            let backups = super::list(&r.backup_dir)?;
            answer(out, &Listed { backups })
        }
        other => Err(ServeError::UnknownCommand {
            command: other.map(str::to_owned),
        }),
    }
}

/// The agent's `main`: exit status 0 with the answer on stdout, 1 with the reason on
/// stderr.
pub fn main(args: impl Iterator<Item = String>) -> i32 {
    let args: Vec<String> = args.skip(1).collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(&args, &mut std::io::stdin().lock(), &mut out) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(args: &[&str], input: &str) -> Result<serde_json::Value, ServeError> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let mut out = Vec::new();
        run(&args, &mut input.as_bytes(), &mut out)?;
        Ok(serde_json::from_slice(&out)?)
    }

    #[test]
    fn the_agent_creates_verifies_lists_and_prunes_with_the_local_code() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("app");
        std::fs::create_dir_all(root.join("releases/r1")).unwrap();
        std::fs::write(root.join("releases/r1/index.php"), "<?php echo 1;\n").unwrap();
        std::os::unix::fs::symlink("releases/r1", root.join("current")).unwrap();
        let backups = dir.path().join("backups");
        let req = serde_json::json!({
            "root": root, "backup_dir": backups, "level": 1,
            "name": "backup-20250110-120000.tar.gz",
        });
        let s = call(&["create"], &req.to_string()).unwrap();
        assert_eq!(s["release"], "r1");
        assert_eq!(s["files"], 1);
        let archive = backups.join("backup-20250110-120000.tar.gz");
        let v = call(
            &["verify"],
            &serde_json::json!({ "archive": archive }).to_string(),
        )
        .unwrap();
        assert_eq!(v["release"], "r1");
        let l = call(
            &["list"],
            &serde_json::json!({ "backup_dir": backups }).to_string(),
        )
        .unwrap();
        assert_eq!(l["backups"][0]["name"], "backup-20250110-120000.tar.gz");
        // Damaged: verify says so and exits with the reason.
        let mut bytes = std::fs::read(&archive).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&archive, bytes).unwrap();
        assert!(
            call(
                &["verify"],
                &serde_json::json!({ "archive": archive }).to_string()
            )
            .is_err()
        );
        let p = call(
            &["prune"],
            &serde_json::json!({ "backup_dir": backups, "keep": 1 }).to_string(),
        )
        .unwrap();
        assert_eq!(p["removed"], serde_json::json!([]));
        assert!(
            call(&["rm"], "{}")
                .unwrap_err()
                .to_string()
                .contains("unknown command")
        );
        assert!(
            call(&["create"], "not json")
                .unwrap_err()
                .to_string()
                .contains("request")
        );
    }
}
