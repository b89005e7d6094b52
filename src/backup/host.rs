//! Where one host's backups are made and kept, decided in one place. A host reached over
//! SSH keeps them on its own disk: built, verified and pruned there by runbook-agent, or
//! streamed through the runner where the agent cannot run (`[backup] on_host`, see
//! `remote.rs`). A `transport = "local"` host, and the environment's own `backup_dir` when
//! no host is named, keep them on this machine, built in-process. The script functions
//! (`backup::*`) and the commands call these and decide nothing themselves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::remote::RemoteError;
use super::serve::{ServeError, Verified};
use super::{BackupError, Database, Options, RestoreOptions, Summary, remote};
use crate::effects::{CommandError, Effects, Target};
use crate::inventory::model::OnHost;
use crate::inventory::{Host, TransportKind};
use crate::output::Level;
use crate::release::Metadata;

/// A database as a script or an inventory names it, before its password is looked up.
#[derive(Debug, Clone, Default)]
pub struct DatabaseFields {
    pub driver: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub socket: Option<String>,
    pub user: Option<String>,
    pub name: Option<String>,
    /// The environment variable holding the password (never the password itself).
    pub password_env: Option<String>,
}

/// Why a database named by a script or an inventory cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseError {
    #[error("a sqlite database needs `path`")]
    NoPath,
    #[error("a mysql database needs `name`")]
    NoName,
    #[error("{var} (the database password) is not set")]
    NoPassword { var: String },
    #[error("database driver {driver:?}: use \"mysql\" or \"sqlite\"")]
    Driver { driver: Option<String> },
}

/// Why the backups of a host (or of this machine) could not be made, read or moved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaceError {
    /// `what` (a script function) was called without a host.
    #[error("{what} needs a host")]
    NoHost { what: &'static str },
    #[error("no backup {} (see backup::list)", archive.display())]
    NoBackup { archive: PathBuf },
    #[error("`{name}` is not a backup name (see backup::list)")]
    NotAName { name: String },
    /// On an SSH host.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// On this machine.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// Checking an archive on this machine.
    #[error(transparent)]
    Check(#[from] ServeError),
    /// The in-process work, run as one command.
    #[error(transparent)]
    Task(Box<CommandError>),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The release's metadata could not be encoded.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl From<CommandError> for PlaceError {
    fn from(e: CommandError) -> PlaceError {
        PlaceError::Task(Box::new(e))
    }
}

impl Database {
    /// The database `f` names, its password read from the environment variable it names;
    /// an error says which field is missing or which variable is not set. MySQL defaults:
    /// 127.0.0.1:3306, user root.
    pub fn from_fields(f: &DatabaseFields) -> Result<Database, DatabaseError> {
        match f.driver.as_deref() {
            Some("sqlite") => Ok(Database::Sqlite {
                path: f.path.clone().ok_or(DatabaseError::NoPath)?.into(),
            }),
            Some("mysql" | "mariadb") => {
                let password = match &f.password_env {
                    Some(var) => Some(
                        std::env::var(var)
                            .map_err(|_| DatabaseError::NoPassword { var: var.clone() })?,
                    ),
                    None => None,
                };
                Ok(Database::Mysql {
                    host: f.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
                    port: f.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(3306),
                    socket: f.socket.clone(),
                    user: f.user.clone().unwrap_or_else(|| "root".into()),
                    password,
                    name: f.name.clone().ok_or(DatabaseError::NoName)?,
                })
            }
            other => Err(DatabaseError::Driver {
                driver: other.map(str::to_owned),
            }),
        }
    }

    /// The secret in it, to be masked in every output.
    pub fn password(&self) -> Option<&str> {
        match self {
            Database::Mysql {
                password: Some(p), ..
            } => Some(p),
            _ => None,
        }
    }
}

/// The backups of one host (or of the environment's own `backup_dir` on this machine).
pub(crate) struct Place<'a> {
    effects: &'a Effects,
    dir: PathBuf,
    host: Option<Arc<Host>>,
    on_host: OnHost,
}

impl<'a> Place<'a> {
    /// `host`: whose backups; `None`: the environment's `backup_dir` on this machine.
    pub(crate) fn new(
        effects: &'a Effects,
        dir: PathBuf,
        host: Option<Arc<Host>>,
        on_host: OnHost,
    ) -> Self {
        Place {
            effects,
            dir,
            host,
            on_host,
        }
    }

    /// The SSH host that keeps these backups; `None`: they are on this machine.
    fn remote(&self) -> Option<Target> {
        self.host
            .as_ref()
            .filter(|h| h.transport != TransportKind::Local)
            .map(|h| Target::Host(h.clone()))
    }

    fn dir_text(&self) -> String {
        self.dir.display().to_string()
    }

    fn host(&self, what: &'static str) -> Result<Arc<Host>, PlaceError> {
        self.host.clone().ok_or(PlaceError::NoHost { what })
    }

    /// Backs up the host's live release (and what `o` asks for) into the backup dir.
    /// `None` in a dry run: nothing was archived.
    pub(crate) fn create(&self, o: Options) -> Result<Option<Summary>, PlaceError> {
        let host = self.host("backup::create")?;
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        if let Some(target) = self.remote() {
            if self.effects.dry_run() {
                self.effects.output().log(
                    Level::Info,
                    format!("would back up {} into {}", host.name, self.dir_text()),
                );
                return Ok(None);
            }
            let db = o.database.clone();
            let s = remote::create(
                self.effects,
                &target,
                &self.dir_text(),
                &o,
                db.as_ref(),
                threads,
                self.on_host,
            )?;
            self.effects.output().log(
                Level::Info,
                format!(
                    "backup {} on {} ({} files, {} bytes, release {})",
                    s.name, host.name, s.files, s.size, s.release
                ),
            );
            return Ok(Some(s));
        }
        let root = PathBuf::from(&host.deploy_path);
        let dir = self.dir.clone();
        let argv = vec![
            "backup".into(),
            "create".into(),
            root.display().to_string(),
            self.dir_text(),
        ];
        let summary = self.effects.task(&Target::Host(host), argv, move || {
            super::create(&root, &dir, &o, threads)
        })?;
        if let Some(s) = &summary {
            self.effects.output().log(
                Level::Info,
                format!(
                    "backup {} ({} files, {} bytes, release {})",
                    s.name, s.files, s.size, s.release
                ),
            );
        }
        Ok(summary)
    }

    /// The backups, newest first.
    pub(crate) fn list(&self) -> Result<Vec<Summary>, PlaceError> {
        Ok(match self.remote() {
            None => super::list(&self.dir)?,
            Some(t) => remote::list(self.effects, &t, &self.dir_text())?,
        })
    }

    /// Reads a whole backup and checks every checksum against its manifest.
    pub(crate) fn verify(&self, name: &str) -> Result<Verified, PlaceError> {
        Ok(match self.remote() {
            None => Verified::check(&self.dir.join(name), name)?,
            Some(t) => remote::verify(self.effects, &t, &self.dir_text(), name, self.on_host)?,
        })
    }

    /// Removes backups beyond `keep` or older than `max_age`; never the newest one that
    /// verifies. Nothing in a dry run.
    pub(crate) fn prune(
        &self,
        keep: usize,
        max_age: Option<Duration>,
    ) -> Result<Vec<String>, PlaceError> {
        if self.effects.dry_run() {
            return Ok(Vec::new());
        }
        Ok(match self.remote() {
            None => super::prune(&self.dir, keep, max_age)?,
            Some(t) => remote::prune(
                self.effects,
                &t,
                &self.dir_text(),
                keep,
                max_age,
                self.on_host,
            )?,
        })
    }

    /// Fails, saying where to look, when a backup kept on this machine does not exist (an
    /// SSH host's archive is checked there, by the restore itself).
    pub(crate) fn require(&self, name: &str) -> Result<(), PlaceError> {
        let archive = self.dir.join(name);
        if self.remote().is_none() && !archive.is_file() {
            return Err(PlaceError::NoBackup { archive });
        }
        Ok(())
    }

    /// Restores backup `name` into the new release `release` (not switched to) and records
    /// `meta` for it. Nothing in a dry run.
    pub(crate) fn restore(
        &self,
        name: &str,
        release: &str,
        ro: RestoreOptions,
        meta: Metadata,
    ) -> Result<(), PlaceError> {
        let host = self.host("backup::restore")?;
        let target = Target::Host(host.clone());
        if self.remote().is_some() {
            if self.effects.dry_run() {
                return Ok(());
            }
            let meta_json = serde_json::to_string(&meta)?;
            remote::restore(
                self.effects,
                &target,
                &remote::Restore {
                    backup_dir: &self.dir_text(),
                    name,
                    release,
                    shared: ro.shared,
                    db: ro.database.as_ref(),
                    meta_json: &meta_json,
                    mode: self.on_host,
                },
            )?;
            return Ok(());
        }
        let archive = self.dir.join(name);
        let root = PathBuf::from(&host.deploy_path);
        let rel = release.to_owned();
        let argv = vec![
            "backup".into(),
            "restore".into(),
            archive.display().to_string(),
            format!("releases/{release}"),
        ];
        self.effects.task(&target, argv, move || {
            restore_here(&archive, &root, &rel, &ro, meta)
        })?;
        Ok(())
    }

    /// Brings backup `name` from this place's host to every one of `to` that lacks it;
    /// returns the names of the hosts it was copied to. Nothing in a dry run.
    pub(crate) fn copy_to(&self, to: Vec<Target>, name: &str) -> Result<Vec<String>, PlaceError> {
        let from = self.host("backup::copy")?;
        if !super::valid_name(name) {
            return Err(PlaceError::NotAName {
                name: name.to_owned(),
            });
        }
        let lacking: Vec<Target> = to.into_iter().filter(|t| t.name() != from.name).collect();
        if lacking.is_empty() || self.effects.dry_run() {
            return Ok(Vec::new());
        }
        Ok(remote::copy(
            self.effects,
            &Target::Host(from),
            &lacking,
            &self.dir_text(),
            name,
        )?)
    }
}

/// A restore on this machine: verify and extract, then record the release's metadata
/// (its ref, and which release the backup was of).
fn restore_here(
    archive: &Path,
    root: &Path,
    release: &str,
    ro: &RestoreOptions,
    mut meta: Metadata,
) -> Result<(), PlaceError> {
    let manifest = super::restore(archive, root, release, ro)?;
    meta.git_ref.clone_from(&manifest.git_ref);
    meta.commit = format!("restored from release {}", manifest.release);
    let dir = root.join(".runbook/releases");
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::to_vec(&meta)?;
    std::fs::write(dir.join(format!("{release}.json")), json)?;
    Ok(())
}
