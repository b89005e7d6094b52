//! One file per CLI command; shared set-up (runtime, output, session) lives here.

pub mod adopt;
pub mod audit;
pub mod check;
pub mod disconnect;
pub mod doc;
pub mod exec;
pub mod hosts;
pub mod init;
pub mod list;
pub mod lock;
pub mod recover;
pub mod repl;
mod repl_helper;
pub mod rollout;
pub mod run;
pub mod status;
pub mod unlock;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::effects::Effects;
use crate::effects::interrupt::Interrupt;
use crate::effects::redact::Redactor;
use crate::engine::{RunInfo, Session, sources::SourceMap};
use crate::error::Error;
use crate::inventory::{Environment, Inventory};
use crate::output::{Human, JsonLines, Output, Verbosity, color_enabled};

pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

pub use crate::origin::{actor, ci_run_url, os_user, run_id};

pub struct SessionConfig {
    pub inventory: Option<Arc<Inventory>>,
    pub env: Option<Arc<Environment>>,
    pub info: RunInfo,
    pub verbosity: Verbosity,
    pub json: bool,
}

impl SessionConfig {
    /// A session on `env` for `script` (a script name, or the command's own name), by
    /// the current actor, with a fresh run id and every other setting at its default.
    pub fn for_env(
        inventory: &Arc<Inventory>,
        env: &Arc<Environment>,
        script: &str,
        verbosity: Verbosity,
    ) -> SessionConfig {
        SessionConfig {
            inventory: Some(inventory.clone()),
            env: Some(env.clone()),
            info: RunInfo {
                id: run_id(),
                script: script.to_owned(),
                actor: actor(),
                ..RunInfo::default()
            },
            verbosity,
            json: false,
        }
    }
}

/// What a fleet-wide command (`adopt`, `recover`) starts with: its environment — on a
/// protected one only with `yes` — and a session on it, with the runtime it needs.
pub(crate) fn fleet_command(
    global: &crate::cli::Global,
    env: Option<&str>,
    yes: bool,
    name: &str,
) -> Result<(tokio::runtime::Runtime, Arc<Session>, Arc<Environment>), Error> {
    let project = crate::project::Project::load(global.config.as_deref())?;
    let env = project.env(env)?;
    if env.protected && !yes {
        return Err(Error::NotConfirmed {
            env: env.name.clone(),
        });
    }
    let rt = runtime()?;
    let session = session(
        &rt,
        SessionConfig::for_env(&project.inventory, &env, name, global.verbosity()),
    );
    Ok((rt, session, env))
}

/// A runtime, a session on environment `env` for command `name` (with `reason` recorded)
/// and the environment. With `confirm: Some(yes)`, a protected environment is confirmed
/// first (unless `yes`).
pub(crate) type Opened = (tokio::runtime::Runtime, Arc<Session>, Arc<Environment>);

pub(crate) fn open_env(
    global: &crate::cli::Global,
    env: Option<&str>,
    name: &str,
    reason: Option<&str>,
    confirm: Option<bool>,
) -> Result<Opened, Error> {
    let project = crate::project::Project::load(global.config.as_deref())?;
    let env = project.env(env)?;
    if let Some(yes) = confirm
        && crate::permissions::needs_confirmation(&env, false, yes)
    {
        run::confirm(&env.name, name)?;
    }
    let rt = runtime()?;
    let mut config = SessionConfig::for_env(&project.inventory, &env, name, global.verbosity());
    config.info.reason = reason.map(|r| r.trim().to_owned());
    let session = session(&rt, config);
    Ok((rt, session, env))
}

/// SIGINT, SIGTERM and SIGHUP for the session's run: the first stops the running
/// command, the third ends every connection at once.
pub(crate) fn install_signals(rt: &tokio::runtime::Runtime, session: &Session) {
    let effects = session.effects.clone();
    crate::signal::install(
        rt.handle(),
        session.effects.interrupt().clone(),
        session.effects.output().clone(),
        move || effects.kill_connections_now(),
    );
}

/// Writes `text` (and a final newline if it lacks one) to stdout through
/// [`crate::output::stdout`]: a reader that went away (`| head`) ends it quietly.
pub(crate) fn print(text: &str) {
    let _ = if text.ends_with('\n') {
        crate::output::stdout(text)
    } else {
        crate::output::stdout(&format!("{text}\n"))
    };
}

/// Output with its sinks, effects, and the session a script sees.
pub fn session(rt: &tokio::runtime::Runtime, config: SessionConfig) -> Arc<Session> {
    let redactor = Arc::new(Redactor::new());
    if let Some(inv) = &config.inventory {
        // Every secret the inventory names is masked from the start, even if a script
        // only ever prints it through a shell.
        for name in inv.secret_names() {
            if let Ok(value) = std::env::var(&name) {
                redactor.add(&value);
            }
        }
    }
    let github = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    if github {
        redactor.set_hook(crate::output::github::add_mask);
    }
    let mut output = Output::new(config.info.id.clone(), redactor).with_sink(Human::new(
        config.verbosity,
        color_enabled(),
        !config.json,
    ));
    if config.json {
        output = output.with_sink(JsonLines);
    }
    if github {
        output = output.with_sink(crate::output::github::GitHub::new());
    }
    let audit = crate::audit::Collector::default();
    output = output.with_sink(audit.clone());
    let output = Arc::new(output);
    let max = config.env.as_ref().map_or(32, |e| e.max_concurrency);
    let effects = Effects::new(
        rt.handle().clone(),
        output,
        Interrupt::new(),
        config.info.dry_run,
        max,
        config.info.id.clone(),
    );
    let effects = Arc::new(effects);
    Arc::new(Session {
        locks: crate::lock::Locks::new(effects.clone(), config.info.id.clone()),
        effects,
        inventory: config.inventory,
        env: config.env,
        info: config.info,
        sources: Arc::new(SourceMap::default()),
        activations: std::sync::Mutex::new(Vec::new()),
        maintenance: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        switches: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        facts: std::sync::Mutex::new(crate::audit::Facts::default()),
        started: std::time::Instant::now(),
        audit,
        read_only: crate::permissions::ReadOnly::default(),
        hooks: std::sync::Mutex::default(),
    })
}

/// The audit record of this run (secrets redacted).
pub(crate) fn audit_record(
    session: &crate::engine::Session,
    script: &str,
    text: &str,
    result: &str,
    took: std::time::Duration,
) -> crate::audit::Record {
    use sha2::Digest;
    let redact = |s: &str| session.effects.output().redactor().redact(s).into_owned();
    let (steps, hosts) = session.audit.take();
    crate::audit::Record {
        ts: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        run: session.info.id.clone(),
        actor: session.info.actor.clone(),
        os_user: Some(os_user()),
        ci_run: ci_run_url(),
        env: session
            .env
            .as_ref()
            .map(|e| e.name.clone())
            .unwrap_or_default(),
        script: script.to_owned(),
        script_sha256: hex::encode(sha2::Sha256::digest(text.as_bytes())),
        args: session
            .info
            .args
            .iter()
            .map(|(k, v)| (k.clone(), redact(v)))
            .collect(),
        reason: session.info.reason.as_deref().map(redact),
        hosts,
        steps,
        result: result.to_owned(),
        error: None,
        releases: session
            .switches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(h, (b, a))| {
                (
                    h.clone(),
                    crate::audit::Switch {
                        before: b.clone(),
                        after: a.clone(),
                    },
                )
            })
            .collect(),
        duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        facts: session
            .facts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    }
}

/// Audits a run refused before it started (permissions, reason, confirmation): locally only,
/// since no host was touched.
pub(crate) fn audit_refusal(
    session: &crate::engine::Session,
    script: &str,
    text: &str,
    refused: &Error,
) {
    let mut record = audit_record(session, script, text, "refused", std::time::Duration::ZERO);
    record.error = Some(refused.to_string());
    write_audit(session, &record, false);
}

/// Appends the record locally and (unless `local_only`) on every host the run touched.
pub(crate) fn write_audit(
    session: &crate::engine::Session,
    record: &crate::audit::Record,
    on_hosts: bool,
) {
    let output = session.effects.output();
    let mut record = record.clone();
    if let Some(e) = &record.error {
        record.error = Some(output.redactor().redact(e).into_owned());
    }
    let path = crate::audit::local_path();
    if let Err(e) = crate::audit::append(&path, &record) {
        output.log(
            crate::output::Level::Warn,
            format!("cannot write the audit log {}: {e}", path.display()),
        );
    }
    let Some(env) = &session.env else { return };
    if !on_hosts {
        return;
    }
    let targets: Vec<crate::effects::Target> = record
        .hosts
        .iter()
        .filter_map(|h| env.host(h))
        .map(crate::effects::Target::Host)
        .collect();
    if targets.is_empty() {
        return;
    }
    let line = format!("{}\n", serde_json::to_string(&record).unwrap_or_default());
    let build = |t: &crate::effects::Target| {
        let root = match t {
            crate::effects::Target::Host(h) => h.deploy_path.clone(),
            crate::effects::Target::Local => String::new(),
        };
        let mut spec = crate::transport::CommandSpec::script(
            "audit: record this run on the host",
            r#"umask 077; mkdir -p "$1/.runbook" && cat >> "$1/.runbook/audit.jsonl" && chmod 600 "$1/.runbook/audit.jsonl""#,
            &[&root],
        );
        spec.stdin = Some(line.clone().into_bytes());
        spec.quiet = true;
        spec.tolerate = true;
        spec.shielded = true;
        spec
    };
    let fan = crate::effects::FanOut {
        fail_fast: false,
        shielded: true,
        ..crate::effects::FanOut::new()
    };
    for (t, o) in targets
        .iter()
        .zip(session.effects.run_many_with(&targets, &build, &fan))
    {
        if !matches!(o, crate::effects::HostOutcome::Done(Ok(ref r)) if r.ok()) {
            output.log(
                crate::output::Level::Warn,
                format!("{}: could not append to the host's audit log", t.name()),
            );
        }
    }
}

/// `KEY=VALUE` pairs into a map; keys must be identifiers.
pub fn parse_args(pairs: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::BadArg { arg: pair.clone() });
        };
        let valid = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::BadArg { arg: pair.clone() });
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_arguments_are_key_value_strings() {
        let args = parse_args(&["ref=v1.2.3".into(), "note=a=b".into()]).unwrap();
        assert_eq!(args["ref"], "v1.2.3");
        assert_eq!(args["note"], "a=b");
        assert!(parse_args(&["noequals".into()]).is_err());
        assert!(parse_args(&["1x=y".into()]).is_err());
        assert!(parse_args(&["=y".into()]).is_err());
    }
}
