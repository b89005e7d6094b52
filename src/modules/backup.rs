//! `backup::*` — backups from scripts: options in, maps out. Where a host's backups are
//! made and kept is decided by the core (`crate::backup::host`).

use crate::sync::Locked;
use std::path::PathBuf;

use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};

use super::check_keys;
use super::context::{HostRef, duration_arg};
use crate::backup::host::{DatabaseFields, Place};
use crate::backup::{Database, Options, RestoreOptions, Summary};
use crate::effects::Target;

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

/// The backups of `host` (`None`: the environment's backup_dir on this machine).
fn place<'a>(
    session: &'a crate::session::Session,
    host: Option<&HostRef>,
    opts: &Map,
) -> Result<Place<'a>, Box<EvalAltResult>> {
    let on_host = session
        .inventory
        .as_ref()
        .map(|i| i.backup.on_host)
        .unwrap_or_default();
    Ok(Place::new(
        &session.effects,
        backup_dir(session, opts)?,
        host.map(|h| h.0.clone()),
        on_host,
    ))
}

/// `#{ driver: "mysql", name, user, host, port or socket, password_env }` or
/// `#{ driver: "sqlite", path }`; the password is masked in every output from here on.
pub(crate) fn database(
    v: &Dynamic,
    session: &crate::session::Session,
) -> Result<Database, Box<EvalAltResult>> {
    let m = v
        .clone()
        .try_cast::<Map>()
        .ok_or_else(|| super::error("`database` must be a map like #{ driver: \"mysql\", name: \"app\", user: \"app\", password_env: \"DB_PASSWORD\" }"))?;
    let get = |k: &str| m.get(k).map(ToString::to_string);
    let db = Database::from_fields(&DatabaseFields {
        driver: get("driver"),
        path: get("path"),
        host: get("host"),
        port: m.get("port").and_then(|p| p.as_int().ok()),
        socket: get("socket"),
        user: get("user"),
        name: get("name"),
        password_env: get("password_env"),
    })
    .map_err(super::error)?;
    if let Some(p) = db.password() {
        session.effects.output().redactor().add(p);
    }
    Ok(db)
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
    check_keys(
        opts,
        &[
            "database",
            "storage",
            "exclude",
            "level",
            "backup_dir",
            "name",
        ],
        "backup",
    )?;
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
    let name = o.name.clone();
    if let Some(s) = place(&session, Some(host), opts)?
        .create(o)
        .map_err(super::error)?
    {
        Ok(summary_map(&s))
    } else {
        // A dry run: the name it would get, so that a plan built on it goes on.
        let name = name.unwrap_or_else(|| {
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
        Ok(m)
    }
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
    check_keys(
        opts,
        &["database", "shared", "backup_dir", "release", "activate"],
        "restore",
    )?;
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
    let backups = place(&session, Some(host), opts)?;
    backups.require(name).map_err(super::error)?;
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
    backups
        .restore(name, &release, ro, meta)
        .map_err(super::error)?;
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
    let (targets, _) = super::exec::targets(to)?;
    let copied = place(&session, Some(from), &Map::new())?
        .copy_to(targets, name)
        .map_err(super::error)?;
    Ok(copied.into_iter().map(Dynamic::from).collect())
}

fn list_of(ctx: &NativeCallContext, host: Option<&HostRef>) -> Result<Array, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let all = place(&session, host, &Map::new())?
        .list()
        .map_err(super::error)?;
    Ok(all.iter().map(|s| Dynamic::from(summary_map(s))).collect())
}

fn verify_of(
    ctx: &NativeCallContext,
    host: Option<&HostRef>,
    name: &str,
) -> Result<Map, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let v = place(&session, host, &Map::new())?
        .verify(name)
        .map_err(super::error)?;
    let mut out = Map::new();
    out.insert("ok".into(), true.into());
    out.insert("release".into(), v.release.into());
    out.insert(
        "entries".into(),
        i64::try_from(v.entries).unwrap_or(0).into(),
    );
    Ok(out)
}

fn prune_of(
    ctx: &NativeCallContext,
    host: Option<&HostRef>,
    opts: &Map,
) -> Result<Array, Box<EvalAltResult>> {
    crate::modules::guard(ctx, "backup::prune")?;
    let session = super::session(ctx)?;
    let keep = opts
        .get("keep")
        .and_then(|v| v.as_int().ok())
        .and_then(|k| usize::try_from(k).ok())
        .unwrap_or(10);
    let max_age = opts.get("max_age").map(duration_arg).transpose()?;
    let removed = place(&session, host, opts)?
        .prune(keep, max_age)
        .map_err(super::error)?;
    Ok(removed.into_iter().map(Dynamic::from).collect())
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
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
        crate::modules::located(&ctx, super::create(&ctx, &host, &opts))
    }

    /// The backups of the environment, newest first: `#{ name, size, age_s, release, ref, files, database, verified }`.
    #[rhai_fn(name = "list", return_raw)]
    pub fn list(ctx: NativeCallContext) -> Result<Array, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::list_of(&ctx, None))
    }

    /// The backups on a host (over SSH, or the local backup_dir), newest first.
    #[rhai_fn(name = "list", return_raw)]
    pub fn list_host(ctx: NativeCallContext, host: HostRef) -> Result<Array, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::list_of(&ctx, Some(&host)))
    }

    /// Verifies a backup stored on a host, every checksum checked: on the host by
    /// `runbook-agent`, or streamed to the runner where the agent cannot run.
    #[rhai_fn(name = "verify", return_raw)]
    pub fn verify_host(
        ctx: NativeCallContext,
        host: HostRef,
        name: &str,
    ) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::verify_of(&ctx, Some(&host), name))
    }

    /// Reads a whole backup and checks every checksum against its manifest; extracts
    /// nothing. Throws, saying what is wrong, when it does not verify.
    #[rhai_fn(name = "verify", return_raw)]
    pub fn verify(ctx: NativeCallContext, name: &str) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::verify_of(&ctx, None, name))
    }

    /// Removes old backups: beyond `keep` (default 10) or older than `max_age` ("30d");
    /// never the newest backup that verifies, never one being written.
    #[rhai_fn(name = "prune", return_raw)]
    pub fn prune(ctx: NativeCallContext, opts: Map) -> Result<Array, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::prune_of(&ctx, None, &opts))
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
        crate::modules::located(
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
        crate::modules::located(&ctx, super::prune_of(&ctx, Some(&host), &opts))
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
        crate::modules::located(&ctx, super::copy(&ctx, &from, &to, name))
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
        crate::modules::located(&ctx, super::restore(&ctx, &host, name, &opts))
    }
}
