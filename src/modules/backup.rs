//! `backup::*` — backups from scripts (plain core: `crate::backup`).

use crate::sync::Locked;
use std::path::PathBuf;

use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};

use super::context::{HostRef, duration_arg};
use crate::backup::{self as core, Database, Options, RestoreOptions, Summary};
use crate::effects::Target;
use crate::inventory::TransportKind;

fn backup_dir(
    session: &crate::session::Session,
    opts: &Map,
) -> Result<PathBuf, Box<EvalAltResult>> {
    if let Some(d) = opts.get("backup_dir") {
        return Ok(PathBuf::from(d.to_string()));
    }
    session
        .env
        .as_ref()
        .map(|e| PathBuf::from(&e.backup_dir))
        .ok_or_else(|| super::error("no environment selected"))
}

pub(crate) fn database(
    v: &Dynamic,
    session: &crate::session::Session,
) -> Result<Database, Box<EvalAltResult>> {
    let m = v
        .clone()
        .try_cast::<Map>()
        .ok_or_else(|| super::error("`database` must be a map like #{ driver: \"mysql\", name: \"app\", user: \"app\", password_env: \"DB_PASSWORD\" }"))?;
    let get = |k: &str| m.get(k).map(ToString::to_string);
    match get("driver").as_deref() {
        Some("sqlite") => Ok(Database::Sqlite {
            path: get("path")
                .ok_or_else(|| super::error("a sqlite database needs `path`"))?
                .into(),
        }),
        Some("mysql") | Some("mariadb") => {
            let password = match get("password_env") {
                Some(var) => {
                    let p = std::env::var(&var).map_err(|_| {
                        super::error(format!("{var} (the database password) is not set"))
                    })?;
                    session.effects.output().redactor().add(&p);
                    Some(p)
                }
                None => None,
            };
            Ok(Database::Mysql {
                host: get("host").unwrap_or_else(|| "127.0.0.1".into()),
                port: m
                    .get("port")
                    .and_then(|p| p.as_int().ok())
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(3306),
                socket: get("socket"),
                user: get("user").unwrap_or_else(|| "root".into()),
                password,
                name: get("name").ok_or_else(|| super::error("a mysql database needs `name`"))?,
            })
        }
        other => Err(super::error(format!(
            "database driver {other:?}: use \"mysql\" or \"sqlite\""
        ))),
    }
}

/// `[backup] on_host` of the inventory (`auto` without one).
fn on_host(session: &crate::session::Session) -> crate::inventory::model::OnHost {
    session
        .inventory
        .as_ref()
        .map(|i| i.backup.on_host)
        .unwrap_or_default()
}

fn summary_map(s: &Summary) -> Map {
    let mut m = Map::new();
    m.insert("name".into(), s.name.clone().into());
    m.insert(
        "size".into(),
        i64::try_from(s.size).unwrap_or(i64::MAX).into(),
    );
    m.insert("release".into(), s.release.clone().into());
    m.insert("ref".into(), s.git_ref.clone().into());
    m.insert("created_at".into(), s.created_at.clone().into());
    m.insert("files".into(), i64::try_from(s.files).unwrap_or(0).into());
    m.insert("database".into(), s.database.into());
    m.insert("verified".into(), s.verified.into());
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&s.created_at) {
        let age = chrono::Utc::now().signed_duration_since(t).num_seconds();
        m.insert("age_s".into(), age.into());
    }
    m
}

fn create(ctx: &NativeCallContext, host: &HostRef, opts: &Map) -> Result<Map, Box<EvalAltResult>> {
    crate::modules::guard(ctx, "backup::create")?;
    let session = super::session(ctx)?;
    for k in opts.keys() {
        if ![
            "database",
            "storage",
            "exclude",
            "level",
            "backup_dir",
            "name",
        ]
        .contains(&k.as_str())
        {
            return Err(super::error(format!(
                "unknown backup option `{k}` (options: database, storage, exclude, level, backup_dir, name)"
            )));
        }
    }
    let dir = backup_dir(&session, opts)?;
    let root = PathBuf::from(&host.0.deploy_path);
    let o = Options {
        shared_files: session
            .inventory
            .as_ref()
            .map(|i| i.app.shared_files.clone())
            .unwrap_or_default(),
        include_storage: opts
            .get("storage")
            .and_then(|v| v.as_bool().ok())
            .unwrap_or(false),
        exclude: opts
            .get("exclude")
            .and_then(|v| v.clone().try_cast::<Array>())
            .map(|a| a.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        database: opts
            .get("database")
            .map(|d| database(d, &session))
            .transpose()?,
        level: opts
            .get("level")
            .and_then(|v| v.as_int().ok())
            .and_then(|l| u32::try_from(l).ok())
            .unwrap_or(6),
        git_ref: session.info.args.get("ref").cloned().unwrap_or_default(),
        dumped: None,
        name: opts.get("name").map(ToString::to_string),
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    if host.0.transport != TransportKind::Local {
        if session.effects.dry_run() {
            session.effects.output().log(
                crate::output::Level::Info,
                format!("would back up {} into {}", host.0.name, dir.display()),
            );
            // The name it would get, so that a plan built on it goes on (synthetic).
            let name = o.name.clone().unwrap_or_else(|| {
                format!(
                    "{}{}{}",
                    crate::backup::PREFIX,
                    chrono::Utc::now().format("%Y%m%d-%H%M%S"),
                    crate::backup::SUFFIX
                )
            });
            let mut m = Map::new();
            m.insert("dry_run".into(), true.into());
            m.insert("name".into(), name.into());
            return Ok(m);
        }
        let target = Target::Host(host.0.clone());
        let db = o.database.clone();
        let s = core::remote::create(
            &session.effects,
            &target,
            &dir.display().to_string(),
            &o,
            db.as_ref(),
            threads,
            on_host(&session),
        )
        .map_err(super::error)?;
        session.effects.output().log(
            crate::output::Level::Info,
            format!(
                "backup {} on {} ({} files, {} bytes, release {})",
                s.name, host.0.name, s.files, s.size, s.release
            ),
        );
        return Ok(summary_map(&s));
    }
    let argv = vec![
        "backup".into(),
        "create".into(),
        root.display().to_string(),
        dir.display().to_string(),
    ];
    // `None` in a dry run: nothing was archived.
    let summary = session
        .effects
        .task(&Target::Host(host.0.clone()), argv, move || {
            core::create(&root, &dir, &o, threads).map_err(|e| e.to_string())
        })
        .map_err(|e| super::error(e.to_string()))?;
    Ok(summary
        .map(|s| {
            session.effects.output().log(
                crate::output::Level::Info,
                format!(
                    "backup {} ({} files, {} bytes, release {})",
                    s.name, s.files, s.size, s.release
                ),
            );
            summary_map(&s)
        })
        .unwrap_or_else(|| {
            let mut m = Map::new();
            m.insert("dry_run".into(), true.into());
            m
        }))
}

fn restore(
    ctx: &NativeCallContext,
    host: &HostRef,
    name: &str,
    opts: &Map,
) -> Result<String, Box<EvalAltResult>> {
    restore_into(ctx, host, name, opts, None)
}

/// Restores into `scratch` (a DR test's own layout: releases/ and current under it)
/// instead of the live deploy path when given.
fn restore_into(
    ctx: &NativeCallContext,
    host: &HostRef,
    name: &str,
    opts: &Map,
    scratch: Option<String>,
) -> Result<String, Box<EvalAltResult>> {
    crate::modules::guard(ctx, "backup::restore")?;
    let session = super::session(ctx)?;
    // A scratch restore is the same operation on a layout of its own: the host with its
    // deploy path moved, so nothing can reach the live `current`.
    let scratch_host;
    let host = match &scratch {
        Some(dir) => {
            let mut h = (*host.0).clone();
            h.deploy_path.clone_from(dir);
            scratch_host = HostRef(std::sync::Arc::new(h));
            &scratch_host
        }
        None => host,
    };
    for k in opts.keys() {
        if !["database", "shared", "backup_dir", "release", "activate"].contains(&k.as_str()) {
            return Err(super::error(format!(
                "unknown restore option `{k}` (options: database, shared, backup_dir, release, activate)"
            )));
        }
    }
    let switch = opts
        .get("activate")
        .and_then(|v| v.as_bool().ok())
        .unwrap_or(true);
    let database = opts
        .get("database")
        .map(|d| database(d, &session))
        .transpose()?;
    if database.is_some()
        && session.env.as_ref().is_some_and(|e| e.protected)
        && session.info.reason.is_none()
    {
        return Err(super::error(
            "restoring a database on a protected environment needs a written reason: pass --reason \"…\"",
        ));
    }
    let dir = backup_dir(&session, opts)?;
    let archive = dir.join(name);
    let remote = host.0.transport != TransportKind::Local;
    if !remote && !archive.is_file() {
        return Err(super::error(format!(
            "no backup {} (see backup::list)",
            archive.display()
        )));
    }
    let targets = [Target::Host(host.0.clone())];
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    // `release`: the name another host's restore chose, so every host agrees.
    let release = match opts
        .get("release")
        .and_then(|r| r.clone().into_string().ok())
    {
        Some(r) if crate::release::valid_name(&r) => r,
        Some(r) => {
            return Err(super::error(format!(
                "`{r}` is not a release name (letters, digits, `-`, `_`, `.`)"
            )));
        }
        None => crate::release::choose_name(&session.effects, &targets, &now)
            .map_err(|e| super::error(e.message))?,
    };
    let root = PathBuf::from(&host.0.deploy_path);
    let ro = RestoreOptions {
        shared: opts
            .get("shared")
            .and_then(|v| v.as_bool().ok())
            .unwrap_or(false),
        database,
        keep_dump: None,
    };
    let meta = crate::release::Metadata {
        name: release.clone(),
        source: format!("backup {name}"),
        by: session.info.actor.clone(),
        run: session.info.id.clone(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        reason: session.info.reason.clone(),
        runbook: env!("CARGO_PKG_VERSION").to_owned(),
        ..crate::release::Metadata::default()
    };
    if remote {
        if !session.effects.dry_run() {
            let meta_json = serde_json::to_string(&meta).unwrap_or_default();
            core::remote::restore(
                &session.effects,
                &targets[0],
                &core::remote::Restore {
                    backup_dir: &dir.display().to_string(),
                    name,
                    release: &release,
                    shared: ro.shared,
                    db: ro.database.as_ref(),
                    meta_json: &meta_json,
                    mode: on_host(&session),
                },
            )
            .map_err(super::error)?;
        }
    } else {
        let (rel, root2) = (release.clone(), root.clone());
        let argv = vec![
            "backup".into(),
            "restore".into(),
            archive.display().to_string(),
            format!("releases/{release}"),
        ];
        session
            .effects
            .task(&targets[0], argv, move || {
                let manifest =
                    core::restore(&archive, &root2, &rel, &ro).map_err(|e| e.to_string())?;
                let mut meta = meta;
                meta.git_ref = manifest.git_ref.clone();
                meta.commit = format!("restored from release {}", manifest.release);
                let dir = root2.join(".runbook/releases");
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                std::fs::write(
                    dir.join(format!("{rel}.json")),
                    serde_json::to_vec(&meta).unwrap_or_default(),
                )
                .map_err(|e| e.to_string())
            })
            .map_err(|e| super::error(e.to_string()))?;
    }
    if scratch.is_some() {
        crate::release::activate(&session.effects, &targets, &release)
            .map_err(|e| super::error(e.message))?;
        return Ok(release);
    }
    if !switch {
        // The caller switches every host at once (all or nothing), e.g. `release::rollback`.
        return Ok(release);
    }
    // A switch that marks the release it leaves bad: a restore is a rollback.
    let moved = crate::release::rollback(&session.effects, &targets, Some(&release))
        .map_err(|e| super::error(e.message))?;
    session.facts.locked().rollback = true;
    for (h, (before, _)) in &moved {
        session.record_switch(h, before, &release);
        session
            .activations
            .locked()
            .push((host.0.clone(), before.clone()));
    }
    Ok(release)
}

fn copy(
    ctx: &NativeCallContext,
    from: &HostRef,
    to: &Dynamic,
    name: &str,
) -> Result<Array, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    if !core::valid_name(name) {
        return Err(super::error(format!(
            "`{name}` is not a backup name (see backup::list)"
        )));
    }
    let (targets, _) = super::exec::targets(to)?;
    let dir = backup_dir(&session, &Map::new())?;
    let source = Target::Host(from.0.clone());
    let lacking: Vec<Target> = targets
        .into_iter()
        .filter(|t| t.name() != from.0.name)
        .collect();
    if lacking.is_empty() || session.effects.dry_run() {
        return Ok(Array::new());
    }
    let copied = core::remote::copy(
        &session.effects,
        &source,
        &lacking,
        &dir.display().to_string(),
        name,
    )
    .map_err(super::error)?;
    Ok(copied.into_iter().map(Dynamic::from).collect())
}

/// Where a host's backups are handled: on the runner (`None`) or over SSH.
fn remote_target(host: Option<&HostRef>) -> Option<Target> {
    host.filter(|h| h.0.transport != TransportKind::Local)
        .map(|h| Target::Host(h.0.clone()))
}

fn list_of(ctx: &NativeCallContext, host: Option<&HostRef>) -> Result<Array, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let dir = backup_dir(&session, &Map::new())?;
    let all = match remote_target(host) {
        None => core::list(&dir).map_err(|e| super::error(e.to_string()))?,
        Some(t) => core::remote::list(&session.effects, &t, &dir.display().to_string())
            .map_err(super::error)?,
    };
    Ok(all.iter().map(|s| Dynamic::from(summary_map(s))).collect())
}

fn verify_of(
    ctx: &NativeCallContext,
    host: Option<&HostRef>,
    name: &str,
) -> Result<Map, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let dir = backup_dir(&session, &Map::new())?;
    let (release, entries) = match remote_target(host) {
        None => {
            let path = dir.join(name);
            let file = std::fs::File::open(&path)
                .map_err(|e| super::error(format!("{}: {e}", path.display())))?;
            let m =
                core::archive::verify(file).map_err(|e| super::error(format!("{name}: {e}")))?;
            (m.release, m.entries.len())
        }
        Some(t) => {
            let v = core::remote::verify(
                &session.effects,
                &t,
                &dir.display().to_string(),
                name,
                on_host(&session),
            )
            .map_err(super::error)?;
            (v.release, v.entries)
        }
    };
    let mut out = Map::new();
    out.insert("ok".into(), true.into());
    out.insert("release".into(), release.into());
    out.insert("entries".into(), i64::try_from(entries).unwrap_or(0).into());
    Ok(out)
}

fn prune_of(
    ctx: &NativeCallContext,
    host: Option<&HostRef>,
    opts: &Map,
) -> Result<Array, Box<EvalAltResult>> {
    crate::modules::guard(ctx, "backup::prune")?;
    let session = super::session(ctx)?;
    let dir = backup_dir(&session, opts)?;
    let keep = opts
        .get("keep")
        .and_then(|v| v.as_int().ok())
        .and_then(|k| usize::try_from(k).ok())
        .unwrap_or(10);
    let max_age = opts.get("max_age").map(duration_arg).transpose()?;
    if session.effects.dry_run() {
        return Ok(Array::new());
    }
    let removed = match remote_target(host) {
        None => core::prune(&dir, keep, max_age).map_err(|e| super::error(e.to_string()))?,
        Some(t) => core::remote::prune(
            &session.effects,
            &t,
            &dir.display().to_string(),
            keep,
            max_age,
            on_host(&session),
        )
        .map_err(super::error)?,
    };
    Ok(removed.into_iter().map(Dynamic::from).collect())
}

#[export_module]
pub mod backup_api {
    /// Backs up the live release (resolved), the shared files and, when asked, the
    /// database into `backup_dir` as `backup-YYYYmmdd-HHMMSS.tar.gz` with a sha256
    /// manifest; written under a temporary name, fsynced, read back and verified.
    /// Options: `database` (#{ driver: "mysql", name, user, host, port or socket, password_env } or
    /// #{ driver: "sqlite", path }), `storage` (include shared/storage), `exclude`
    /// (paths), `level` (gzip 1-9, default 6), `backup_dir`. For a host reached over SSH
    /// the archive is built and verified on the host by `runbook-agent` (nothing of it
    /// crosses the network); where the agent cannot run, the files stream to runbook,
    /// which builds the archive and stores it in the host's `backup_dir`
    /// (`[backup] on_host`).
    #[rhai_fn(name = "create", return_raw)]
    pub fn create(
        ctx: NativeCallContext,
        host: HostRef,
        opts: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        super::super::located(&ctx, super::create(&ctx, &host, &opts))
    }

    /// The backups of the environment, newest first: `#{ name, size, age_s, release, ref, files, database, verified }`.
    #[rhai_fn(name = "list", return_raw)]
    pub fn list(ctx: NativeCallContext) -> Result<Array, Box<EvalAltResult>> {
        super::super::located(&ctx, super::list_of(&ctx, None))
    }

    /// The backups on a host (over SSH, or the local backup_dir), newest first.
    #[rhai_fn(name = "list", return_raw)]
    pub fn list_host(ctx: NativeCallContext, host: HostRef) -> Result<Array, Box<EvalAltResult>> {
        super::super::located(&ctx, super::list_of(&ctx, Some(&host)))
    }

    /// Verifies a backup stored on a host, every checksum checked: on the host by
    /// `runbook-agent`, or streamed to the runner where the agent cannot run.
    #[rhai_fn(name = "verify", return_raw)]
    pub fn verify_host(
        ctx: NativeCallContext,
        host: HostRef,
        name: &str,
    ) -> Result<Map, Box<EvalAltResult>> {
        super::super::located(&ctx, super::verify_of(&ctx, Some(&host), name))
    }

    /// Reads a whole backup and checks every checksum against its manifest; extracts
    /// nothing. Throws, saying what is wrong, when it does not verify.
    #[rhai_fn(name = "verify", return_raw)]
    pub fn verify(ctx: NativeCallContext, name: &str) -> Result<Map, Box<EvalAltResult>> {
        super::super::located(&ctx, super::verify_of(&ctx, None, name))
    }

    /// Removes old backups: beyond `keep` (default 10) or older than `max_age` ("30d");
    /// never the newest backup that verifies, never one being written.
    #[rhai_fn(name = "prune", return_raw)]
    pub fn prune(ctx: NativeCallContext, opts: Map) -> Result<Array, Box<EvalAltResult>> {
        super::super::located(&ctx, super::prune_of(&ctx, None, &opts))
    }

    /// Restores a backup into a scratch layout under `dir` on the host (its own
    /// `releases/` and `current`), for a disaster-recovery test: verified like any
    /// restore, never near the live `current`. Returns the scratch release's name.
    #[rhai_fn(name = "restore_scratch", return_raw)]
    pub fn restore_scratch(
        ctx: NativeCallContext,
        host: HostRef,
        name: &str,
        dir: &str,
    ) -> Result<String, Box<EvalAltResult>> {
        let scratch = Some(dir.to_owned());
        super::super::located(
            &ctx,
            super::restore_into(&ctx, &host, name, &Map::new(), scratch),
        )
    }

    /// `backup::prune` for a host's backup_dir (over SSH, or local).
    #[rhai_fn(name = "prune", return_raw)]
    pub fn prune_host(
        ctx: NativeCallContext,
        host: HostRef,
        opts: Map,
    ) -> Result<Array, Box<EvalAltResult>> {
        super::super::located(&ctx, super::prune_of(&ctx, Some(&host), &opts))
    }

    /// Brings backup `name` from host `from` to every host of `to` that lacks it (hosts
    /// with separate disks: a rollback restores where the archive is). Returns the names
    /// of the hosts it was copied to.
    #[rhai_fn(return_raw)]
    pub fn copy(
        ctx: NativeCallContext,
        from: HostRef,
        to: Dynamic,
        name: &str,
    ) -> Result<Array, Box<EvalAltResult>> {
        super::super::located(&ctx, super::copy(&ctx, &from, &to, name))
    }

    /// Restores a backup into a NEW release (verified first; never over a live one) and
    /// switches to it atomically, marking the release it leaves bad (like a rollback).
    /// Returns the new release's name. Options: `shared` (also put the archived .env
    /// back), `database` (load the dump — only when asked; on a protected environment
    /// only with --reason), `release` (the new release's name, e.g. the one the first
    /// host's restore returned, so that every host agrees), `activate` (false: restore
    /// only, and let `release::rollback(all, name)` switch every host at once).
    #[rhai_fn(name = "restore", return_raw)]
    pub fn restore(
        ctx: NativeCallContext,
        host: HostRef,
        name: &str,
        opts: Map,
    ) -> Result<String, Box<EvalAltResult>> {
        super::super::located(&ctx, super::restore(&ctx, &host, name, &opts))
    }
}
