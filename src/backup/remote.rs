//! Backups of hosts reached over SSH.
//!
//! First choice: the backup stays on the host. `agent.rs` places runbook's own backup
//! code there (`runbook-agent`) and create, verify, prune and restore run beside the data;
//! only a request and its answer cross the connection. When the agent cannot run there
//! (another architecture, no `sha256sum`, a failed start) or `[backup] on_host = "never"`,
//! the streaming path below is used, with a warning.
//!
//! The streaming path: runbook is the only thing that writes or reads the archive format. The
//! live release, the shared files and (when asked) a database dump made ON the host are
//! streamed to the runner as tar over the host's existing connection; the runner builds
//! the archive (manifest, checksums, parallel gzip), reads it back, and uploads it to the
//! host's `backup_dir` under a temporary name that is renamed only when complete. Verify
//! and restore stream the archive back and check every checksum on the runner; a restore
//! uploads the verified release into a NEW release directory and switches atomically.
//! The hosts need only `tar`, `mv` and (for databases) `mysqldump`/`mysql` or `sqlite3`.

use std::path::{Path, PathBuf};

use super::agent::AgentError;
use super::serve::{
    CreateRequest, PruneRequest, RestoreRequest, ServeError, Verified, VerifyRequest,
};
use super::{BackupError, Database, Options, Summary, agent};
use crate::effects::{CommandError, Effects, Target};
use crate::inventory::model::OnHost;
use crate::release::ReleaseError;
use crate::transport::CommandSpec;

/// Why a backup of an SSH host (made, checked, pruned, restored or copied there) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoteError {
    /// A command on the host, a download or an upload.
    #[error(transparent)]
    Command(Box<CommandError>),
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The host's releases could not be read.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("nothing is deployed on `{host}` (no current release)")]
    NothingDeployed { host: String },
    /// The work directory on the runner.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Building or restoring the archive on the runner.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// Checking the archive on the runner.
    #[error(transparent)]
    Check(#[from] ServeError),
    /// The agent's verify of backup `name` failed.
    #[error("{name}: {source}")]
    Verify { name: String, source: AgentError },
}

impl From<CommandError> for RemoteError {
    fn from(e: CommandError) -> RemoteError {
        RemoteError::Command(Box::new(e))
    }
}

/// Runs one of runbook's own scripts on the host without echoing its output; its stdout,
/// or the error's sentence.
pub(super) fn sh(
    effects: &Effects,
    target: &Target,
    label: &str,
    body: &str,
    args: &[&str],
) -> Result<String, CommandError> {
    run_quiet(effects, target, CommandSpec::script(label, body, args))
}

/// Runs `spec` on the host without echoing its output; its stdout, or the error's sentence.
pub(super) fn run_quiet(
    effects: &Effects,
    target: &Target,
    mut spec: CommandSpec,
) -> Result<String, CommandError> {
    spec.quiet = true;
    effects.run(target, &spec).map(|r| r.stdout)
}

/// Removes a temporary path on the host, as well as it can: what is left there is not
/// worth failing the backup or restore for.
fn discard(effects: &Effects, target: &Target, label: &str, path: &str) {
    let _ = sh(effects, target, label, r#"rm -rf "$1""#, &[path]);
}

fn root(target: &Target) -> String {
    match target {
        Target::Host(h) => h.deploy_path.clone(),
        Target::Local => String::new(),
    }
}

/// A database step on the host, each way a label and a script. The sqlite script gets
/// the database file and the directory on the host (`$1`, `$2`); the mysql script gets
/// the directory and the database name, then (after `shift 2`) the connection
/// arguments in `"$@"`, with the password exported from stdin.
struct DbStep {
    sqlite: (&'static str, &'static str),
    mysql: (&'static str, &'static str),
}

/// Dumps the database into the directory.
const DUMP: DbStep = DbStep {
    sqlite: (
        "backup: sqlite3 .backup on the host",
        r#"mkdir -p "$2" && sqlite3 "$1" ".backup '$2/database.sqlite'""#,
    ),
    mysql: (
        "backup: mysqldump --single-transaction on the host",
        r#"dir=$1 name=$2; shift 2
mkdir -p "$dir" && mysqldump --single-transaction --routines --triggers --events "$@" --databases "$name" > "$dir/mysql.sql""#,
    ),
};

/// Loads the dump in the directory back into the database.
const LOAD: DbStep = DbStep {
    sqlite: (
        "restore: the sqlite database on the host",
        r#"cp "$2/database.sqlite" "$1.restoring" && mv -f "$1.restoring" "$1""#,
    ),
    mysql: (
        "restore: load the mysql dump on the host",
        r#"dir=$1; shift 2
mysql "$@" < "$dir/mysql.sql""#,
    ),
};

/// Runs `step` for `db` on the host with `dir` there. Passwords travel on stdin.
fn db_on_host(
    effects: &Effects,
    target: &Target,
    step: &DbStep,
    db: &Database,
    dir: &str,
) -> Result<(), CommandError> {
    match db {
        Database::Sqlite { path } => {
            let (label, body) = step.sqlite;
            sh(
                effects,
                target,
                label,
                body,
                &[&path.display().to_string(), dir],
            )
            .map(drop)
        }
        Database::Mysql { name, password, .. } => {
            let (label, script) = step.mysql;
            let body = format!(
                "IFS= read -r MYSQL_PWD || true; if [ -n \"$MYSQL_PWD\" ]; then export MYSQL_PWD; else unset MYSQL_PWD; fi\n{script}"
            );
            let mut args = vec![dir.to_owned(), name.clone()];
            args.extend(db.client_args());
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let spec = CommandSpec {
                stdin: Some(format!("{}\n", password.clone().unwrap_or_default()).into_bytes()),
                ..CommandSpec::script(label, &body, &refs)
            };
            run_quiet(effects, target, spec).map(drop)
        }
    }
}

fn live_release(effects: &Effects, target: &Target) -> Result<String, RemoteError> {
    let list = crate::release::list(effects, target)?;
    list.into_iter()
        .find(|r| r.live)
        .map(|r| r.name)
        .ok_or_else(|| RemoteError::NothingDeployed {
            host: target.name().to_owned(),
        })
}

/// What a database step is called in a label (people and tests look for it).
fn db_words(db: Option<&Database>, verb: &str) -> String {
    match db {
        Some(Database::Mysql { .. }) => format!(", {verb} the mysql dump"),
        Some(Database::Sqlite { .. }) => format!(", {verb} the sqlite database"),
        None => String::new(),
    }
}

/// Creates a backup of an SSH host; the archive ends up in the host's `backup_dir`.
/// On the host by its agent when `mode` allows and the agent can run there; otherwise
/// streamed through the runner.
pub(crate) fn create(
    effects: &Effects,
    target: &Target,
    backup_dir: &str,
    opts: &Options,
    db: Option<&Database>,
    threads: usize,
    mode: OnHost,
) -> Result<Summary, RemoteError> {
    let root = root(target);
    if let Some(a) = agent::prepare(effects, target, mode)? {
        let request = CreateRequest {
            root: root.clone().into(),
            backup_dir: backup_dir.into(),
            options: Options {
                database: db.cloned(),
                ..opts.clone()
            },
        };
        let label = format!(
            "backup: archive and verify on the host{} (runbook-agent)",
            db_words(db, "with")
        );
        if let Some(done) = agent::call(effects, target, &a, "create", &label, &request, false)? {
            return Ok(done);
        }
    }
    let release = live_release(effects, target)?;
    let work = tempfile::Builder::new()
        .prefix("runbook-backup-")
        .tempdir()?;
    let local_root = work.path().join("deploy");
    let dl = |remote: String, local: PathBuf| effects.download(target, &remote, &local).map(drop);
    std::fs::create_dir_all(local_root.join("releases"))?;
    std::fs::create_dir_all(local_root.join("shared"))?;
    dl(
        format!("{root}/releases/{release}"),
        local_root.join("releases").join(&release),
    )?;
    for f in &opts.shared_files {
        let present = sh(
            effects,
            target,
            "backup: look for a shared file",
            r#"[ -e "$1" ] && echo yes || true"#,
            &[&format!("{root}/shared/{f}")],
        )?;
        if present.trim() == "yes" {
            let local = local_root.join("shared").join(f);
            if let Some(p) = local.parent() {
                std::fs::create_dir_all(p)?;
            }
            dl(format!("{root}/shared/{f}"), local)?;
        }
    }
    if opts.include_storage {
        dl(
            format!("{root}/shared/storage"),
            local_root.join("shared/storage"),
        )?;
    }
    let mut local_opts = opts.clone();
    local_opts.database = None;
    if let Some(db) = db {
        let remote_dump = format!("{backup_dir}/.runbook-dump-{}", std::process::id());
        let dumped = db_on_host(effects, target, &DUMP, db, &remote_dump)
            .and_then(|()| dl(remote_dump.clone(), work.path().join("dump")));
        discard(
            effects,
            target,
            "backup: remove the temporary dump",
            &remote_dump,
        );
        dumped?;
        local_opts.dumped = Some(work.path().join("dump"));
    }
    std::os::unix::fs::symlink(format!("releases/{release}"), local_root.join("current"))?;
    let out = work.path().join("out");
    let summary = super::create(&local_root, &out, &local_opts, threads)?;
    // Upload under temporary names, then rename both into place on the host.
    let part = format!("{backup_dir}/.{}.part", summary.name);
    let part_json = format!("{backup_dir}/.{}.json.part", summary.name);
    for (local, remote) in [
        (out.join(&summary.name), &part),
        (out.join(format!("{}.json", summary.name)), &part_json),
    ] {
        for r in effects.upload(std::slice::from_ref(target), &local, remote) {
            r?;
        }
    }
    sh(
        effects,
        target,
        "backup: move the verified archive into place",
        PLACE,
        &[&part, backup_dir, &summary.name, &part_json],
    )?;
    Ok(summary)
}

/// Moves an uploaded archive and its summary into place; never over an existing backup.
const PLACE: &str = r#"if [ -e "$2/$3" ]; then rm -f "$1" "$4"; echo "a backup named $3 already exists in $2" >&2; exit 3; fi
mv -T "$1" "$2/$3" && mv -T "$4" "$2/$3.json" && sync"#;

/// Brings backup `name` from `from` (where it is) to every host of `to` that lacks it
/// (separate disks: a rollback needs the archive where it restores), through the
/// runner, under temporary names, moved into place only whole. Returns the hosts
/// it was copied to.
pub(crate) fn copy(
    effects: &Effects,
    from: &Target,
    to: &[Target],
    backup_dir: &str,
    name: &str,
) -> Result<Vec<String>, RemoteError> {
    let work = tempfile::Builder::new()
        .prefix("runbook-backup-copy-")
        .tempdir()?;
    let json = format!("{name}.json");
    for n in [name, json.as_str()] {
        effects.download(from, &format!("{backup_dir}/{n}"), &work.path().join(n))?;
    }
    let part = format!("{backup_dir}/.{name}.part");
    let part_json = format!("{backup_dir}/.{name}.json.part");
    for t in to {
        sh(
            effects,
            t,
            "backup: make the backup directory",
            r#"mkdir -p "$1""#,
            &[backup_dir],
        )?;
    }
    for (local, remote) in [
        (work.path().join(name), &part),
        (work.path().join(&json), &part_json),
    ] {
        for r in effects.upload(to, &local, remote) {
            r?;
        }
    }
    for t in to {
        sh(
            effects,
            t,
            "backup: move the copied archive into place",
            PLACE,
            &[&part, backup_dir, name, &part_json],
        )?;
    }
    Ok(to.iter().map(|t| t.name().to_owned()).collect())
}

/// The backups on a host, newest first.
pub(crate) fn list(
    effects: &Effects,
    target: &Target,
    backup_dir: &str,
) -> Result<Vec<Summary>, RemoteError> {
    let out = sh(
        effects,
        target,
        "backup: list",
        r#"for f in "$1"/backup-*.tar.gz.json; do [ -f "$f" ] && tr -d '\n' < "$f" && echo; done; true"#,
        &[backup_dir],
    )?;
    let mut all: Vec<Summary> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    all.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(all)
}

/// Reads a whole archive of the host and checks every checksum: on the host by its
/// agent, or streamed to the runner and checked there.
pub(crate) fn verify(
    effects: &Effects,
    target: &Target,
    backup_dir: &str,
    name: &str,
    mode: OnHost,
) -> Result<Verified, RemoteError> {
    if let Some(a) = agent::prepare(effects, target, mode)? {
        let request = VerifyRequest {
            archive: Path::new(backup_dir).join(name),
        };
        let verified = agent::call(
            effects,
            target,
            &a,
            "verify",
            "backup: verify on the host (runbook-agent)",
            &request,
            true,
        )
        .map_err(|source| RemoteError::Verify {
            name: name.to_owned(),
            source,
        })?;
        if let Some(v) = verified {
            return Ok(v);
        }
    }
    let work = tempfile::tempdir()?;
    let path = fetch(effects, target, backup_dir, name, work.path())?;
    Ok(Verified::check(&path, name)?)
}

/// Copies an archive from the host to `dir` on the runner; returns its local path.
pub(crate) fn fetch(
    effects: &Effects,
    target: &Target,
    backup_dir: &str,
    name: &str,
    dir: &Path,
) -> Result<PathBuf, CommandError> {
    let local = dir.join(name);
    effects.download(target, &format!("{backup_dir}/{name}"), &local)?;
    Ok(local)
}

/// What to restore from which archive of a host.
pub(crate) struct Restore<'a> {
    pub backup_dir: &'a str,
    /// The archive's file name.
    pub name: &'a str,
    /// The new release to create.
    pub release: &'a str,
    /// Put the archived shared files back too.
    pub shared: bool,
    pub db: Option<&'a Database>,
    /// The release metadata to record.
    pub meta_json: &'a str,
    /// On the host (its agent) or through the runner.
    pub mode: OnHost,
}

/// Restores an archive of the host into a new release there (not switched to): on the
/// host by its agent (verified while extracted beneath the deploy path, the database
/// loaded there), or through the runner.
pub(crate) fn restore(
    effects: &Effects,
    target: &Target,
    r: &Restore<'_>,
) -> Result<Verified, RemoteError> {
    let Restore {
        backup_dir,
        name,
        release,
        shared,
        db,
        meta_json,
        mode,
    } = *r;
    let root = root(target);
    if let Some(a) = agent::prepare(effects, target, mode)? {
        let request = RestoreRequest {
            archive: Path::new(backup_dir).join(name),
            root: root.clone().into(),
            release: release.to_owned(),
            shared,
            database: db.cloned(),
        };
        let label = format!(
            "restore: verify and extract into releases/{release} on the host{} (runbook-agent)",
            db_words(db, "load")
        );
        let done: Option<Verified> =
            agent::call(effects, target, &a, "restore", &label, &request, false)?;
        if let Some(done) = done {
            record(effects, target, &root, release, meta_json)?;
            return Ok(done);
        }
    }
    let work = tempfile::Builder::new()
        .prefix("runbook-restore-")
        .tempdir()?;
    let archive = fetch(effects, target, backup_dir, name, work.path())?;
    let local_root = work.path().join("deploy");
    let ro = super::RestoreOptions {
        shared,
        database: None,
        keep_dump: db.map(|_| work.path().join("dump")),
    };
    let manifest = super::restore(&archive, &local_root, release, &ro)?;
    let up = |local: &Path, remote: String| -> Result<(), CommandError> {
        for r in effects.upload(std::slice::from_ref(target), local, &remote) {
            r?;
        }
        Ok(())
    };
    up(
        &local_root.join("releases").join(release),
        format!("{root}/releases/{release}"),
    )?;
    record(effects, target, &root, release, meta_json)?;
    if shared {
        for e in manifest
            .entries
            .iter()
            .filter(|e| e.path.starts_with("shared/") && e.kind == super::archive::Kind::File)
        {
            let rel = &e.path["shared/".len()..];
            up(
                &local_root.join("shared").join(rel),
                format!("{root}/shared/{rel}"),
            )?;
        }
    }
    if let Some(db) = db {
        let remote_dump = format!("{backup_dir}/.runbook-restore-{}", std::process::id());
        let loaded = up(&work.path().join("dump"), remote_dump.clone())
            .and_then(|()| db_on_host(effects, target, &LOAD, db, &remote_dump));
        discard(
            effects,
            target,
            "restore: remove the temporary dump",
            &remote_dump,
        );
        loaded?;
    }
    Ok(manifest.into())
}

/// Writes a restored release's metadata on the host.
fn record(
    effects: &Effects,
    target: &Target,
    root: &str,
    release: &str,
    meta_json: &str,
) -> Result<(), CommandError> {
    let spec = CommandSpec {
        stdin: Some(meta_json.as_bytes().to_vec()),
        ..CommandSpec::script(
            "restore: record the release",
            r#"mkdir -p "$1/.runbook/releases" && cat > "$1/.runbook/releases/$2.json""#,
            &[root, release],
        )
    };
    run_quiet(effects, target, spec).map(drop)
}

/// Prunes a host's backups like [`super::prune`]: beyond `keep` or older than `max_age`,
/// never the newest backup that verifies (checked on the host by its agent, or streamed
/// to the runner and checked), never an archive being written.
pub(crate) fn prune(
    effects: &Effects,
    target: &Target,
    backup_dir: &str,
    keep: usize,
    max_age: Option<std::time::Duration>,
    mode: OnHost,
) -> Result<Vec<String>, RemoteError> {
    if let Some(a) = agent::prepare(effects, target, mode)? {
        let request = PruneRequest {
            backup_dir: backup_dir.into(),
            keep,
            max_age_s: max_age.map(|d| d.as_secs()),
        };
        let pruned: Option<super::serve::Pruned> = agent::call(
            effects,
            target,
            &a,
            "prune",
            "backup: prune on the host, keeping the newest that verifies (runbook-agent)",
            &request,
            false,
        )?;
        if let Some(pruned) = pruned {
            return Ok(pruned.removed);
        }
    }
    let all = list(effects, target, backup_dir)?;
    let work = tempfile::tempdir()?;
    let protected = all
        .iter()
        .find(|s| {
            fetch(effects, target, backup_dir, &s.name, work.path())
                .ok()
                .and_then(|p| std::fs::File::open(&p).ok())
                .is_some_and(|f| super::archive::verify(f).is_ok())
        })
        .map(|s| s.name.clone());
    let now = chrono::Utc::now();
    let mut removed = Vec::new();
    for (i, s) in all.iter().enumerate() {
        if Some(&s.name) == protected.as_ref() {
            continue;
        }
        let age = chrono::DateTime::parse_from_rfc3339(&s.created_at)
            .ok()
            .and_then(|t| now.signed_duration_since(t).to_std().ok())
            .unwrap_or_default();
        if i >= keep.max(1) || max_age.is_some_and(|m| age > m) {
            sh(
                effects,
                target,
                "backup: remove an old backup",
                r#"rm -f "$1/$2" "$1/$2.json""#,
                &[backup_dir, &s.name],
            )?;
            removed.push(s.name.clone());
        }
    }
    Ok(removed)
}
