//! Backups: create, list, verify, prune, restore — trustworthy first, fast second.
//!
//! Plain Rust with no Rhai in it. An archive (`archive.rs`) holds the live release under
//! `release/`, chosen shared files under `shared/`, optionally `shared/storage/`, and a
//! database dump under `database/`, plus a manifest with every file's sha256. Next to each
//! archive a small `<name>.json` summary makes `list` cheap. Archives are written under a
//! temporary name and renamed only when complete, fsynced and read back.

pub(crate) mod agent;
pub(crate) mod archive;
pub(crate) mod host;
pub(crate) mod remote;
pub mod serve;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use archive::{ArchiveError, Manifest, Source};

/// Final names look like this; anything else in the directory (temporaries) is ignored.
pub const PREFIX: &str = "backup-";
pub const SUFFIX: &str = ".tar.gz";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "driver", rename_all = "lowercase")]
pub enum Database {
    /// A sqlite file, copied consistently with `sqlite3 .backup`.
    Sqlite { path: PathBuf },
    /// `mysqldump --single-transaction`; the password travels in `MYSQL_PWD`, never argv.
    Mysql {
        host: String,
        port: u16,
        /// A unix socket instead of host/port.
        socket: Option<String>,
        user: String,
        password: Option<String>,
        name: String,
    },
}

impl Database {
    /// The arguments that connect a mysql client (`mysql`, `mysqldump`) to this
    /// database: the socket, or the host and port, then the user; none for sqlite. The
    /// password is never among them (it travels in `MYSQL_PWD` or on stdin).
    pub fn client_args(&self) -> Vec<String> {
        let Database::Mysql {
            host,
            port,
            socket,
            user,
            ..
        } = self
        else {
            return Vec::new();
        };
        let mut args = match socket {
            Some(s) => vec![format!("--socket={s}")],
            None => vec![format!("--host={host}"), format!("--port={port}")],
        };
        args.push(format!("--user={user}"));
        args
    }
}

/// What goes into an archive. It is also the body of the agent's `create` request
/// (`serve::CreateRequest`), so both sides read one list of fields.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Options {
    pub shared_files: Vec<String>,
    pub include_storage: bool,
    pub exclude: Vec<String>,
    pub database: Option<Database>,
    pub level: u32,
    pub git_ref: String,
    /// A dump already made elsewhere (on an SSH host), archived as `database/`; a path on
    /// the runner, so it never crosses to an agent.
    #[serde(skip)]
    pub dumped: Option<PathBuf>,
    /// The archive's name (one name for the whole fleet's backups of one moment);
    /// `None`: `backup-YYYYmmdd-HHMMSS.tar.gz` for now.
    pub name: Option<String>,
}

/// Whether `name` is a backup archive's name runbook would make (no path in it).
pub fn valid_name(name: &str) -> bool {
    name.starts_with(PREFIX)
        && name.ends_with(SUFFIX)
        && name.len() > PREFIX.len() + SUFFIX.len()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.contains("..")
}

/// The summary kept next to an archive.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub name: String,
    pub size: u64,
    pub release: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub created_at: String,
    pub files: usize,
    pub database: bool,
    pub verified: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

fn other(s: impl Into<String>) -> BackupError {
    BackupError::Other(s.into())
}

/// The release `current` points at under `root`.
pub fn live_release(root: &Path) -> Result<String, BackupError> {
    let target = std::fs::read_link(root.join("current")).map_err(|e| {
        other(format!(
            "{}/current: {e} (nothing deployed yet?)",
            root.display()
        ))
    })?;
    target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| other("current points nowhere"))
}

fn run(cmd: &mut std::process::Command, what: &str) -> Result<(), BackupError> {
    let out = cmd
        .output()
        .map_err(|e| other(format!("{what}: cannot start: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Dumps the database into `dir` (one file per database kind).
pub fn dump(db: &Database, dir: &Path) -> Result<(), BackupError> {
    match db {
        Database::Sqlite { path } => run(
            std::process::Command::new("sqlite3").arg(path).arg(format!(
                ".backup '{}'",
                dir.join("database.sqlite").display()
            )),
            "sqlite3 .backup (is the sqlite3 package installed?)",
        ),
        Database::Mysql { name, .. } => {
            let file = std::fs::File::create(dir.join("mysql.sql"))?;
            let dump = [
                "--single-transaction",
                "--routines",
                "--triggers",
                "--events",
            ];
            let mut cmd = mysql_client("mysqldump", &dump, db);
            cmd.arg("--databases").arg(name).stdout(file);
            run(&mut cmd, "mysqldump")
        }
    }
}

/// `program` (`mysql`, `mysqldump`) with the arguments `first`, then those that connect
/// it to `db`; the password in `MYSQL_PWD`.
fn mysql_client(program: &str, first: &[&str], db: &Database) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.args(first).args(db.client_args());
    if let Database::Mysql {
        password: Some(p), ..
    } = db
    {
        cmd.env("MYSQL_PWD", p);
    }
    cmd
}

/// Loads a dump made by [`dump`] back into the database.
pub fn load(db: &Database, dir: &Path) -> Result<(), BackupError> {
    match db {
        Database::Sqlite { path } => {
            let src = dir.join("database.sqlite");
            let tmp = path.with_extension("restoring");
            std::fs::copy(&src, &tmp)?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        }
        Database::Mysql { .. } => {
            let file = std::fs::File::open(dir.join("mysql.sql"))?;
            let mut cmd = mysql_client("mysql", &[], db);
            run(cmd.stdin(file), "mysql (loading the dump)")
        }
    }
}

/// A new archive name in `dir` for `now`, never one that exists.
pub fn new_name(dir: &Path, now: chrono::DateTime<chrono::Utc>) -> String {
    let base = format!("{PREFIX}{}", now.format("%Y%m%d-%H%M%S"));
    let mut name = format!("{base}{SUFFIX}");
    let mut n = 2;
    while dir.join(&name).exists() {
        name = format!("{base}-{n}{SUFFIX}");
        n += 1;
    }
    name
}

/// Creates a backup of the deployment under `root` into `backup_dir`, reads it back to
/// verify it, and writes its summary. Returns the summary.
pub fn create(
    root: &Path,
    backup_dir: &Path,
    opts: &Options,
    threads: usize,
) -> Result<Summary, BackupError> {
    let release = live_release(root)?;
    std::fs::create_dir_all(backup_dir)?;
    let mut sources = vec![Source {
        name: "release".into(),
        path: root.join("releases").join(&release),
        exclude: opts.exclude.clone(),
    }];
    for f in &opts.shared_files {
        let p = root.join("shared").join(f);
        if p.exists() {
            sources.push(Source {
                name: format!("shared/{f}"),
                path: p,
                exclude: vec![],
            });
        }
    }
    if opts.include_storage {
        sources.push(Source {
            name: "shared/storage".into(),
            path: root.join("shared/storage"),
            exclude: opts.exclude.clone(),
        });
    }
    let dump_dir = tempfile::Builder::new()
        .prefix(".runbook-dump-")
        .tempdir_in(backup_dir)?;
    if let Some(db) = &opts.database {
        dump(db, dump_dir.path())?;
        sources.push(Source {
            name: "database".into(),
            path: dump_dir.path().to_path_buf(),
            exclude: vec![],
        });
    } else if let Some(dir) = &opts.dumped {
        sources.push(Source {
            name: "database".into(),
            path: dir.clone(),
            exclude: vec![],
        });
    }
    let now = chrono::Utc::now();
    let name = match &opts.name {
        None => new_name(backup_dir, now),
        Some(n) if !valid_name(n) => {
            return Err(other(format!(
                "`{n}` is not a backup name (backup-….tar.gz, letters, digits, `-`, `_`, `.`)"
            )));
        }
        Some(n) if backup_dir.join(n).exists() => {
            return Err(other(format!(
                "a backup named {n} already exists in {}",
                backup_dir.display()
            )));
        }
        Some(n) => n.clone(),
    };
    let dest = backup_dir.join(&name);
    let meta = Manifest {
        created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        release: release.clone(),
        git_ref: opts.git_ref.clone(),
        runbook: env!("CARGO_PKG_VERSION").to_owned(),
        ..Manifest::default()
    };
    let level = if opts.level == 0 {
        6
    } else {
        opts.level.min(9)
    };
    let manifest = archive::create(&dest, &sources, meta, level, threads)?;
    // Trust, then verify: read the whole archive back before calling it a backup.
    archive::verify(std::fs::File::open(&dest)?)?;
    let summary = Summary {
        name: name.clone(),
        size: std::fs::metadata(&dest)?.len(),
        release,
        git_ref: opts.git_ref.clone(),
        created_at: manifest.created_at.clone(),
        files: manifest
            .entries
            .iter()
            .filter(|e| e.kind == archive::Kind::File)
            .count(),
        database: opts.database.is_some() || opts.dumped.is_some(),
        verified: true,
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| other(e.to_string()))?;
    let sidecar = backup_dir.join(format!("{name}.json"));
    let tmp = backup_dir.join(format!(".{name}.json.tmp"));
    std::fs::write(&tmp, json)?;
    std::fs::rename(tmp, sidecar)?;
    Ok(summary)
}

/// Backups in `dir`, newest first (from their summaries; an archive without one is
/// listed with what its name and size say).
pub fn list(dir: &Path) -> Result<Vec<Summary>, BackupError> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(PREFIX) && name.ends_with(SUFFIX)) {
            continue;
        }
        let summary = std::fs::read(dir.join(format!("{name}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice::<Summary>(&b).ok())
            .unwrap_or_else(|| Summary {
                name: name.clone(),
                size: e.metadata().map_or(0, |m| m.len()),
                ..Summary::default()
            });
        out.push(summary);
    }
    out.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(out)
}

/// Removes backups beyond the newest `keep` and older than `max_age`, but never the newest
/// backup that verifies. Temporaries (archives being written) are never touched.
pub fn prune(
    dir: &Path,
    keep: usize,
    max_age: Option<Duration>,
) -> Result<Vec<String>, BackupError> {
    let all = list(dir)?;
    let protected = all
        .iter()
        .find(|s| {
            std::fs::File::open(dir.join(&s.name))
                .map_err(ArchiveError::from)
                .and_then(archive::verify)
                .is_ok()
        })
        .map(|s| s.name.clone());
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for (i, s) in all.iter().enumerate() {
        if Some(&s.name) == protected.as_ref() {
            continue;
        }
        let path = dir.join(&s.name);
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        let too_many = i >= keep.max(1);
        let too_old = max_age.is_some_and(|m| age > m);
        if too_many || too_old {
            std::fs::remove_file(&path)?;
            let _ = std::fs::remove_file(dir.join(format!("{}.json", s.name)));
            removed.push(s.name.clone());
        }
    }
    Ok(removed)
}

/// What a restore brings back besides the release.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Keep the archive's `database/` dump here (to load it on a remote host).
    pub keep_dump: Option<PathBuf>,
    /// Copy the archived shared files (.env) back over the live ones.
    pub shared: bool,
    pub database: Option<Database>,
}

/// Verifies `archive`, extracts it into a NEW release directory (never over a live one)
/// and returns that release's name. The caller switches `current` to it.
pub fn restore(
    archive_path: &Path,
    root: &Path,
    name: &str,
    opts: &RestoreOptions,
) -> Result<Manifest, BackupError> {
    let staging = root.join(format!(".runbook/restore-{name}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let result = (|| {
        // One pass: verified while extracted into a directory nobody serves.
        let manifest = archive::verify_into(std::fs::File::open(archive_path)?, &staging)?;
        let target = root.join("releases").join(name);
        if target.exists() {
            return Err(other(format!(
                "release {name} already exists: refusing to restore over it"
            )));
        }
        // The archive's top-level parts must be what they claim: a link there would make
        // the release (or the dump loaded) something outside the archive.
        for part in ["release", "database", "shared"] {
            if let Ok(m) = std::fs::symlink_metadata(staging.join(part))
                && !m.is_dir()
            {
                return Err(other(format!(
                    "the archive's `{part}` is not a directory: refusing to restore it"
                )));
            }
        }
        std::fs::create_dir_all(root.join("releases"))?;
        std::fs::rename(staging.join("release"), &target)?;
        if opts.shared && staging.join("shared").exists() {
            for e in manifest
                .entries
                .iter()
                .filter(|e| e.path.starts_with("shared/") && e.kind == archive::Kind::File)
            {
                let rel = &e.path["shared/".len()..];
                let dest = root.join("shared").join(rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                // Never written through a link at the destination: the live shared file
                // is replaced by a copy renamed into place.
                let tmp = dest.with_file_name(format!(
                    ".{}.restore",
                    dest.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                ));
                let _ = std::fs::remove_file(&tmp);
                std::fs::copy(staging.join(&e.path), &tmp)?;
                std::fs::rename(&tmp, &dest)?;
            }
        }
        if let Some(db) = &opts.database {
            if !staging.join("database").exists() {
                return Err(other("the archive holds no database dump"));
            }
            load(db, &staging.join("database"))?;
        }
        if let Some(keep) = &opts.keep_dump {
            if !staging.join("database").exists() {
                return Err(other("the archive holds no database dump"));
            }
            std::fs::rename(staging.join("database"), keep)?;
        }
        Ok(manifest)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}
