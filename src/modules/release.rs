//! `release::*` — the release layout from scripts (plain core: `crate::release`).

use crate::sync::Locked;
use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};

use super::context::HostRef;
use super::exec::targets;
use crate::effects::Target;
use crate::release::{self as core, EnvFile, Metadata, ReleaseError, Settings, Source};

fn to_rhai(e: ReleaseError) -> Box<EvalAltResult> {
    if e.interrupted {
        super::interrupted()
    } else {
        super::error(e.message)
    }
}

/// The environment's `.env` plan: its template rendered now (every value registered as a
/// secret before anything can print it), or — for a Laravel app without one — a check
/// that refuses a host's first release while `shared/.env` is empty. A missing variable
/// is an error naming it and its template line; it touches no host.
fn env_file_plan(
    session: &crate::session::Session,
    env: &crate::inventory::Environment,
    shared_files: &[String],
) -> Result<EnvFile, Box<EvalAltResult>> {
    let linked = shared_files.iter().any(|f| f == core::ENV_FILE);
    let Some(template) = &env.env_template else {
        let laravel = env
            .vars
            .get("laravel")
            .and_then(toml::Value::as_bool)
            .unwrap_or(true);
        return Ok(if laravel && linked {
            EnvFile::Required {
                env: env.name.clone(),
            }
        } else {
            EnvFile::AsIs
        });
    };
    if !linked {
        return Err(super::error(format!(
            "env.{}.env_template is set, but `{}` is not in app.shared_files: add it there so that every release links shared/{}",
            env.name,
            core::ENV_FILE,
            core::ENV_FILE
        )));
    }
    let shadow = template
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".env."));
    render_template(session, template).map(|r| EnvFile::Rendered {
        text: r.text,
        shadow,
    })
}

/// Renders a template from the process environment; each value it fills in is a secret
/// of the run from this moment on.
fn render_template(
    session: &crate::session::Session,
    template: &std::path::Path,
) -> Result<crate::envfile::Rendered, Box<EvalAltResult>> {
    let rendered = crate::envfile::render_file(template, crate::envfile::from_process_env)
        .map_err(|e| super::error(e.to_string()))?;
    let redactor = session.effects.output().redactor();
    for value in &rendered.values {
        redactor.add(value);
    }
    Ok(rendered)
}

/// What a dry run says of one host's plan: the commit range, the commits,
/// composer.lock, the migrations added, the .env keys the template changes, the notes.
fn plan_lines(p: &core::HostPlan, template_keys: Option<&[String]>) -> Vec<String> {
    let mut lines = Vec::new();
    match (&p.old_commit, &p.new_commit) {
        (Some(o), Some(n)) => lines.push(format!(
            "{} commit{} {}..{} (live: {})",
            p.commit_count,
            if p.commit_count == 1 { "" } else { "s" },
            &o[..o.len().min(12)],
            &n[..n.len().min(12)],
            if p.live.is_empty() { "none" } else { &p.live }
        )),
        (None, Some(n)) => lines.push(format!("new code at {}", &n[..n.len().min(12)])),
        _ => {}
    }
    for c in &p.commits {
        lines.push(format!("  {c}"));
    }
    if p.new_commit.is_some() && p.old_commit.is_some() {
        lines.push(format!(
            "composer.lock: {}",
            if p.composer_lock_changed {
                "CHANGED (dependencies install anew)"
            } else {
                "unchanged"
            }
        ));
        lines.push(if p.new_migrations.is_empty() {
            "migrations: none added".to_owned()
        } else {
            format!("migrations added: {}", p.new_migrations.join(", "))
        });
    }
    if let Some(keys) = template_keys {
        let live: std::collections::BTreeSet<&str> =
            p.env_keys.iter().map(String::as_str).collect();
        let want: std::collections::BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        let added: Vec<&str> = want.difference(&live).copied().collect();
        let removed: Vec<&str> = live.difference(&want).copied().collect();
        lines.push(format!(
            ".env from the template: {}",
            match (added.is_empty(), removed.is_empty()) {
                (true, true) => "the same keys".to_owned(),
                _ => format!(
                    "adds {}, removes {}",
                    if added.is_empty() {
                        "none".to_owned()
                    } else {
                        added.join(", ")
                    },
                    if removed.is_empty() {
                        "none".to_owned()
                    } else {
                        removed.join(", ")
                    }
                ),
            }
        ));
    }
    lines.extend(p.notes.iter().cloned());
    lines
}

/// A dry run's plan of a deploy of `source` (see `release::plan`): read for real from
/// the hosts, logged grouped by what the hosts share, returned as `#{ host: #{…} }`.
fn plan(
    ctx: &NativeCallContext,
    target: &Dynamic,
    source: &Map,
    migrator: Option<&HostRef>,
) -> Result<Map, Box<EvalAltResult>> {
    use crate::output::Level;
    let session = super::session(ctx)?;
    let (targets, _) = targets(target)?;
    let (Some(inv), Some(env)) = (session.inventory.as_ref(), session.env.as_ref()) else {
        return Err(super::error(
            "release::plan needs runbook.toml and an environment",
        ));
    };
    let out = session.effects.output().clone();
    let get = |k: &str| source.get(k).and_then(|v| v.clone().into_string().ok());
    if get("artifact").is_some() {
        out.log(
            Level::Info,
            "plan: an artifact is deployed as a whole (no commit range)",
        );
        return Ok(Map::new());
    }
    let Some(repo) = get("repository").or_else(|| inv.app.repository.clone()) else {
        return Ok(Map::new());
    };
    let git_ref = get("ref").unwrap_or_else(|| "HEAD".into());
    let plans = core::plan(&session.effects, &targets, &repo, &git_ref);
    // The keys the template would write, against the live .env (names only).
    let template_keys: Option<Vec<String>> = match &env.env_template {
        Some(t) => Some(
            render_template(&session, t)?
                .text
                .lines()
                .filter_map(|l| {
                    let l = l.trim_start();
                    let l = l.strip_prefix("export ").unwrap_or(l);
                    let (k, _) = l.split_once('=')?;
                    let k = k.trim();
                    (!k.is_empty() && !k.starts_with('#')).then(|| k.to_owned())
                })
                .collect(),
        ),
        None => None,
    };
    // Hosts that would see the same change are reported once.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    let mut result = Map::new();
    let mut sql_commit = None;
    for (t, p) in targets.iter().zip(&plans) {
        let text = match p {
            Err(e) => format!("cannot read the plan: {e}"),
            Ok(p) => {
                let lines = plan_lines(p, template_keys.as_deref());
                if !p.new_migrations.is_empty() && sql_commit.is_none() {
                    sql_commit.clone_from(&p.new_commit);
                }
                result.insert(
                    t.name().into(),
                    rhai::serde::to_dynamic(p).unwrap_or(Dynamic::UNIT),
                );
                lines.join("\n")
            }
        };
        match groups.iter_mut().find(|(g, _)| *g == text) {
            Some((_, hosts)) => hosts.push(t.name().to_owned()),
            None => groups.push((text, vec![t.name().to_owned()])),
        }
    }
    for (text, hosts) in &groups {
        out.log(
            Level::Info,
            format!("plan for {}: {text}", hosts.join(", ")),
        );
    }
    if let Some(commit) = sql_commit {
        let on = migrator.map_or_else(|| targets[0].clone(), one);
        match core::pretend_sql(&session.effects, &on, &commit, &env.php, &repo) {
            Ok(sql) => {
                let sql = sql.trim();
                out.log(
                    Level::Info,
                    format!(
                        "plan: the SQL of the new migrations (migrate --pretend on {}):\n{sql}",
                        on.name()
                    ),
                );
                for r in crate::schema_risk::risks(sql) {
                    out.log(
                        Level::Warn,
                        format!(
                            "plan: the migration gate would refuse `{}`: {}",
                            r.statement,
                            r.kind.why()
                        ),
                    );
                }
                result.insert("sql".into(), sql.to_owned().into());
            }
            Err(e) => out.log(
                Level::Warn,
                format!("plan: cannot show the migration SQL: {e}"),
            ),
        }
    }
    Ok(result)
}

fn prepare(
    ctx: &NativeCallContext,
    target: &Dynamic,
    opts: &Map,
) -> Result<String, Box<EvalAltResult>> {
    let (session, targets) = change(ctx, "release::prepare", target)?;
    let inv = session
        .inventory
        .as_ref()
        .ok_or_else(|| super::error("no inventory: release::prepare needs runbook.toml"))?;
    let env = session
        .env
        .as_ref()
        .ok_or_else(|| super::error("no environment selected"))?;
    for key in opts.keys() {
        if !["ref", "repository", "artifact"].contains(&key.as_str()) {
            return Err(super::error(format!(
                "unknown option `{key}` (options: ref, repository, artifact)"
            )));
        }
    }
    let get = |k: &str| opts.get(k).and_then(|v| v.clone().into_string().ok());
    let (source, described) = if let Some(artifact) = get("artifact") {
        let path = std::path::Path::new(&artifact);
        let path = if path.is_relative() {
            inv.root.join(path)
        } else {
            path.to_path_buf()
        };
        if !path.exists() {
            return Err(super::error(format!(
                "artifact {} does not exist",
                path.display()
            )));
        }
        let d = format!("artifact {}", path.display());
        (Source::Artifact { path }, d)
    } else {
        let repository = get("repository").or_else(|| inv.app.repository.clone()).ok_or_else(|| {
            super::error("no repository: set app.repository in runbook.toml, or pass #{ repository: … } or #{ artifact: … }")
        })?;
        let git_ref = get("ref").unwrap_or_else(|| "HEAD".into());
        let d = format!("{repository}@{git_ref}");
        (
            Source::Git {
                repository,
                git_ref,
            },
            d,
        )
    };
    let settings = Settings {
        shared_dirs: inv.app.shared_dirs.clone(),
        shared_files: inv.app.shared_files.clone(),
        writable_dirs: inv.app.writable_dirs.clone(),
        composer: env.composer.clone(),
        env_file: env_file_plan(&session, env, &inv.app.shared_files)?,
    };
    let meta = Metadata {
        git_ref: get("ref").unwrap_or_default(),
        source: described,
        by: session.info.actor.clone(),
        run: session.info.id.clone(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        reason: session.info.reason.clone(),
        runbook: env!("CARGO_PKG_VERSION").to_owned(),
        ..Metadata::default()
    };
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let name = core::choose_name(&session.effects, &targets, &now).map_err(to_rhai)?;
    {
        let mut facts = session.facts.locked();
        facts.deploy = true;
    }
    session.locks.note_all(&format!("prepared {name}"));
    let made = core::prepare(&session.effects, &targets, &name, &source, &settings, &meta)
        .map_err(to_rhai)?;
    session.facts.locked().commit_time = made.commit_time;
    Ok(made.name)
}

fn activate(
    ctx: &NativeCallContext,
    target: &Dynamic,
    name: &str,
) -> Result<Map, Box<EvalAltResult>> {
    let (session, targets) = change(ctx, "release::activate", target)?;
    let previous = match core::activate(&session.effects, &targets, name) {
        Ok(p) => p,
        Err(e) => {
            remember_stranded(&session, &targets, &e);
            return Err(to_rhai(e));
        }
    };
    for (host, before) in &previous {
        session.record_switch(host, before, name);
    }
    let mut record = session.activations.locked();
    for t in &targets {
        if let Target::Host(h) = t
            && !record.iter().any(|(r, _)| r.name == h.name)
        {
            record.push((
                h.clone(),
                previous.get(&h.name).cloned().unwrap_or_default(),
            ));
        }
    }
    Ok(previous
        .into_iter()
        .map(|(h, p)| (h.into(), p.into()))
        .collect())
}

/// Hosts a failed switch could not move back stay in the run's record, so that
/// `release::undo()` (the failure path) tries them again.
fn remember_stranded(session: &crate::session::Session, targets: &[Target], e: &ReleaseError) {
    let mut record = session.activations.locked();
    for (host, previous) in &e.stranded {
        if record.iter().any(|(r, _)| &r.name == host) {
            continue;
        }
        if let Some(Target::Host(h)) = targets.iter().find(|t| t.name() == host) {
            record.push((h.clone(), previous.clone()));
        }
    }
}

fn switched_map(
    session: &crate::session::Session,
    m: std::collections::BTreeMap<String, (String, String)>,
) -> Map {
    for (host, (from, to)) in &m {
        session.record_switch(host, from, to);
    }
    if !m.is_empty() {
        session.facts.locked().rollback = true;
    }
    m.into_iter()
        .map(|(h, (from, to))| {
            let mut e = Map::new();
            e.insert("from".into(), from.into());
            e.insert("to".into(), to.into());
            (h.into(), e.into())
        })
        .collect()
}

fn rollback(
    ctx: &NativeCallContext,
    target: &Dynamic,
    to: Option<&str>,
) -> Result<Map, Box<EvalAltResult>> {
    let (session, targets) = change(ctx, "release::rollback", target)?;
    match core::rollback(&session.effects, &targets, to) {
        Ok(m) => Ok(switched_map(&session, m)),
        Err(e) => {
            remember_stranded(&session, &targets, &e);
            Err(to_rhai(e))
        }
    }
}

fn undo(ctx: &NativeCallContext) -> Result<Map, Box<EvalAltResult>> {
    crate::modules::guard(ctx, "release::undo")?;
    let session = super::session(ctx)?;
    let record: Vec<_> = std::mem::take(&mut *session.activations.locked());
    // Every host is tried, even after one fails (a host that went away must not keep
    // the reachable ones on the new release); the failures are reported together.
    let mut out = Map::new();
    let mut failed = Vec::new();
    for (host, previous) in record {
        if previous.is_empty() {
            continue; // the first release on this host: nothing to go back to
        }
        let name = host.name.clone();
        match core::rollback(&session.effects, &[Target::Host(host)], Some(&previous)) {
            Ok(m) => out.extend(switched_map(&session, m)),
            Err(e) if e.interrupted => return Err(to_rhai(e)),
            Err(e) => failed.push(format!("{name}: {}", e.message)),
        }
    }
    if failed.is_empty() {
        Ok(out)
    } else {
        Err(super::error(format!(
            "could not switch back {} host(s) (the others were switched back):\n{}",
            failed.len(),
            failed.join("\n")
        )))
    }
}

/// How a change to the hosts starts: the guard (`op` as people read it), then the
/// session and the targets of `hosts` (a Host or a HostSet).
fn change(
    ctx: &NativeCallContext,
    op: &str,
    hosts: &Dynamic,
) -> Result<(std::sync::Arc<crate::session::Session>, Vec<Target>), Box<EvalAltResult>> {
    crate::modules::guard(ctx, op)?;
    let session = super::session(ctx)?;
    let (targets, _) = targets(hosts)?;
    Ok((session, targets))
}

/// Runs a release operation on every host of `hosts` (a Host or a HostSet); its error
/// located at the script's call.
fn on_hosts<T>(
    ctx: &NativeCallContext,
    hosts: &Dynamic,
    op: impl FnOnce(&crate::effects::Effects, &[Target]) -> Result<T, ReleaseError>,
) -> Result<T, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let r = targets(hosts).and_then(|(t, _)| op(&session.effects, &t).map_err(to_rhai));
    super::located(ctx, r)
}

/// Runs a release operation on one host; its error located at the script's call.
fn on_host<T>(
    ctx: &NativeCallContext,
    host: &HostRef,
    op: impl FnOnce(&crate::effects::Effects, &Target) -> Result<T, ReleaseError>,
) -> Result<T, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let r = op(&session.effects, &one(host)).map_err(to_rhai);
    super::located(ctx, r)
}

fn one(host: &HostRef) -> Target {
    Target::Host(host.0.clone())
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod release_api {
    /// Creates a new release from git `ref` of `app.repository` on every host (a bare
    /// mirror under `.runbook/repo.git`, then `git archive`; no clone per deploy), links
    /// the shared dirs and files, makes writable dirs writable, runs composer when
    /// composer.json exists. Returns the release name. On failure the half-made release
    /// is removed everywhere and `current` is untouched.
    #[rhai_fn(name = "prepare", return_raw)]
    pub fn prepare_ref(
        ctx: NativeCallContext,
        hosts: Dynamic,
        git_ref: &str,
    ) -> Result<String, Box<EvalAltResult>> {
        let mut opts = Map::new();
        opts.insert("ref".into(), git_ref.into());
        crate::modules::located(&ctx, super::prepare(&ctx, &hosts, &opts))
    }

    /// What a deploy of `source` (`#{ ref }` or `#{ artifact }`) would change, read for
    /// real even in a dry run and logged: per host the commit range `old..new` with its
    /// subjects, whether composer.lock changed, the migrations added, and the `.env` keys
    /// the template adds or removes (names only); the new migrations' SQL (`php artisan
    /// migrate --pretend` in a temporary checkout on the first host), with what the
    /// migration gate would refuse. Returns `#{ host: #{…}, sql }`.
    #[rhai_fn(name = "plan", return_raw)]
    pub fn plan(
        ctx: NativeCallContext,
        hosts: Dynamic,
        source: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::plan(&ctx, &hosts, &source, None))
    }

    /// `release::plan` with the migration SQL read on `migrator` (the host that migrates).
    #[rhai_fn(name = "plan", return_raw)]
    pub fn plan_on(
        ctx: NativeCallContext,
        hosts: Dynamic,
        source: Map,
        migrator: HostRef,
    ) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::plan(&ctx, &hosts, &source, Some(&migrator)))
    }

    /// `release::prepare` with options: `ref`, `repository`, or `artifact` (a directory
    /// or .tar.gz built here, uploaded over the existing connection).
    #[rhai_fn(name = "prepare", return_raw)]
    pub fn prepare_opts(
        ctx: NativeCallContext,
        hosts: Dynamic,
        opts: Map,
    ) -> Result<String, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::prepare(&ctx, &hosts, &opts))
    }

    /// Renders the environment's `env_template` here, touching no host: every value
    /// it fills in is masked in all output from now on, and a variable that is not set
    /// stops the script, naming it and its template line. Deploys call it before the
    /// lock; `release::prepare` writes the file into `shared/.env` (mode 0640, atomically).
    /// Returns the variables read, or () when the environment has no template.
    #[rhai_fn(return_raw)]
    pub fn env_file(ctx: NativeCallContext) -> Result<Dynamic, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let r = (|| {
            let env = session
                .env
                .as_ref()
                .ok_or_else(|| crate::modules::error("no environment selected"))?;
            let Some(template) = &env.env_template else {
                return Ok(Dynamic::UNIT);
            };
            let rendered = super::render_template(&session, template)?;
            Ok(rendered
                .names
                .into_iter()
                .map(Dynamic::from)
                .collect::<Array>()
                .into())
        })();
        crate::modules::located(&ctx, r)
    }

    /// Switches `current` to release `name` on every host, atomically (a temporary
    /// symlink renamed over `current`), all or nothing: when one host fails, every host
    /// that switched is switched back before the error, which says what each serves.
    /// Returns `#{ host: previous_release }`.
    #[rhai_fn(return_raw)]
    pub fn activate(
        ctx: NativeCallContext,
        hosts: Dynamic,
        name: &str,
    ) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::activate(&ctx, &hosts, name))
    }

    /// Switches every host back to ONE release — the newest older than the newest live
    /// one that is complete and good on every host — checked everywhere before any host
    /// changes, all or nothing; the release switched away from is marked bad and skipped
    /// by later rollbacks. Returns `#{ host: #{ from, to } }`.
    #[rhai_fn(name = "rollback", return_raw)]
    pub fn rollback(ctx: NativeCallContext, hosts: Dynamic) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::rollback(&ctx, &hosts, None))
    }

    /// Switches every host to the named release (marking the one it leaves bad); refused
    /// before any host changes when a host lacks it. All or nothing.
    #[rhai_fn(name = "rollback", return_raw)]
    pub fn rollback_to(
        ctx: NativeCallContext,
        hosts: Dynamic,
        target: &str,
    ) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::rollback(&ctx, &hosts, Some(target)))
    }

    /// The ONE release a rollback of every host would go to: the newest release older
    /// than the newest live one that is complete and not marked bad on every host.
    /// Throws, naming what each host has, when there is none.
    #[rhai_fn(return_raw)]
    pub fn rollback_target(
        ctx: NativeCallContext,
        hosts: Dynamic,
    ) -> Result<String, Box<EvalAltResult>> {
        super::on_hosts(&ctx, &hosts, |e, t| core::rollback_target(e, t, None))
    }

    /// Points `next` at release `name` on every host, atomically — what a preview vhost
    /// or a canary pool serves while `current` keeps the live traffic. Cleanup never
    /// removes the staged release.
    #[rhai_fn(return_raw)]
    pub fn stage(
        ctx: NativeCallContext,
        hosts: Dynamic,
        name: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        crate::modules::guard(&ctx, "release::stage")?;
        super::on_hosts(&ctx, &hosts, |e, t| core::stage(e, t, Some(name)))
    }

    /// Removes `next` on every host (after a promotion or an aborted canary).
    #[rhai_fn(return_raw)]
    pub fn unstage(ctx: NativeCallContext, hosts: Dynamic) -> Result<(), Box<EvalAltResult>> {
        crate::modules::guard(&ctx, "release::unstage")?;
        super::on_hosts(&ctx, &hosts, |e, t| core::stage(e, t, None))
    }

    /// Marks release `name` bad on every host so that no rollback picks it (refused for
    /// the live release: switch away from it first).
    #[rhai_fn(return_raw)]
    pub fn mark_bad(
        ctx: NativeCallContext,
        hosts: Dynamic,
        name: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        crate::modules::guard(&ctx, "release::mark_bad")?;
        super::on_hosts(&ctx, &hosts, |e, t| core::mark_bad(e, t, name))
    }

    /// Refuses, before anything changes, hosts holding a layout another tool made (a
    /// `current` that is a directory, releases without runbook's metadata), naming each
    /// and the command that adopts them (`runbook adopt -e ENV`). Strategies call it first.
    /// When the hosts do not serve one release before the change (different `current`s,
    /// or one pointing at a release that is gone), it says so as a warning naming each
    /// host, with the commands that show and fix the fleet.
    #[rhai_fn(return_raw)]
    pub fn check_layout(ctx: NativeCallContext, hosts: Dynamic) -> Result<(), Box<EvalAltResult>> {
        let fleet = super::on_hosts(&ctx, &hosts, core::check_fleet)?;
        if let Some(sentence) = fleet {
            let session = crate::modules::session(&ctx)?;
            let env = session.env.as_ref().map_or("ENV", |e| e.name.as_str());
            session.effects.output().log(
                crate::output::Level::Warn,
                format!(
                    "{sentence} (`runbook status -e {env}` shows the fleet; `runbook run rollback -e {env}` brings it to one release)"
                ),
            );
        }
        Ok(())
    }

    /// Says that this run's change is complete and verified on every host: from now on a
    /// signal (Ctrl-C, SIGTERM, SIGHUP) no longer undoes it — the run finishes its
    /// bookkeeping and says "deploy was already complete" — and a later failure does not
    /// run the failure path. Strategies call it right after their last verifying step.
    pub fn verified(ctx: NativeCallContext) {
        if let Ok(session) = crate::modules::session(&ctx) {
            session.effects.interrupt().settle();
            session.locks.note_all("verified");
        }
    }

    /// Switches back every host this run activated a release on (for `on_failure`).
    #[rhai_fn(return_raw)]
    pub fn undo(ctx: NativeCallContext) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::undo(&ctx))
    }

    /// The release `current` points at on a host ("" before the first deploy).
    #[rhai_fn(return_raw)]
    pub fn current(ctx: NativeCallContext, host: HostRef) -> Result<String, Box<EvalAltResult>> {
        let list = super::on_host(&ctx, &host, core::list)?;
        Ok(list
            .into_iter()
            .find(|r| r.live)
            .map(|r| r.name)
            .unwrap_or_default())
    }

    /// The releases on a host, oldest first: `#{ name, state, bad, live, ref, commit, by, created_at }`.
    #[rhai_fn(return_raw)]
    pub fn list(ctx: NativeCallContext, host: HostRef) -> Result<Array, Box<EvalAltResult>> {
        let list = super::on_host(&ctx, &host, core::list)?;
        Ok(list
            .into_iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("name".into(), r.name.into());
                m.insert("state".into(), r.state.into());
                m.insert("bad".into(), r.bad.into());
                m.insert("live".into(), r.live.into());
                let meta = r.meta.unwrap_or_default();
                m.insert("ref".into(), meta.git_ref.into());
                m.insert("commit".into(), meta.commit.into());
                m.insert("by".into(), meta.by.into());
                m.insert("created_at".into(), meta.created_at.into());
                Dynamic::from(m)
            })
            .collect())
    }

    /// Removes old releases, keeping `app.keep_releases` (the live one counts and is
    /// never removed; releases being prepared are left alone). Returns `#{ host: [removed] }`.
    #[rhai_fn(name = "cleanup", return_raw)]
    pub fn cleanup(ctx: NativeCallContext, hosts: Dynamic) -> Result<Map, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let keep = session
            .inventory
            .as_ref()
            .map_or(5, |i| i64::from(i.app.keep_releases));
        cleanup_keep(ctx, hosts, keep)
    }

    /// `release::cleanup` keeping `keep` releases.
    #[rhai_fn(name = "cleanup", return_raw)]
    pub fn cleanup_keep(
        ctx: NativeCallContext,
        hosts: Dynamic,
        keep: i64,
    ) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::guard(&ctx, "release::cleanup")?;
        let keep = usize::try_from(keep).unwrap_or(1);
        let removed = super::on_hosts(&ctx, &hosts, |e, t| core::cleanup(e, t, keep))?;
        Ok(removed
            .into_iter()
            .map(|(h, removed)| {
                let removed: Array = removed.into_iter().map(Dynamic::from).collect();
                (h.into(), removed.into())
            })
            .collect())
    }

    /// Migration files in release `to` that release `from` lacks, on one host — whether
    /// a rollback from `to` to `from` leaves the database ahead of the code.
    #[rhai_fn(return_raw)]
    pub fn new_migrations(
        ctx: NativeCallContext,
        host: HostRef,
        from: &str,
        to: &str,
    ) -> Result<Array, Box<EvalAltResult>> {
        let files = super::on_host(&ctx, &host, |e, t| core::new_migrations(e, t, from, to))?;
        Ok(files.into_iter().map(Dynamic::from).collect())
    }

    /// The directory of release `name` on a host.
    pub fn dir(host: HostRef, name: &str) -> String {
        format!("{}/releases/{name}", host.0.deploy_path)
    }
}
