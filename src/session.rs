//! The session a run works in: its run id, actor and reason, the output with its sinks,
//! the effects, the locks it holds and what it changed — and the audit record made of it.
//! Below the engine and the script modules (both reach it), above the cores it holds.

use crate::sync::Locked;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::effects::Effects;
use crate::error::Error;
use crate::interrupt::Interrupt;
use crate::inventory::{Environment, Inventory};
use crate::origin::{actor, ci_run_url, os_user, run_id};
use crate::output::{Human, JsonLines, Output, Verbosity, color_enabled};
use crate::redact::Redactor;
use crate::sources::SourceMap;

/// Facts about this run that scripts see as the `run` map.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunInfo {
    pub id: String,
    pub script: String,
    pub reason: Option<String>,
    pub actor: String,
    pub dry_run: bool,
    pub args: BTreeMap<String, String>,
    /// How long `lock::acquire` waits for a lock held by another run.
    pub lock_wait: std::time::Duration,
}

/// Everything a script's host functions can reach.
pub(crate) struct Session {
    pub effects: Arc<Effects>,
    pub inventory: Option<Arc<Inventory>>,
    pub env: Option<Arc<Environment>>,
    pub info: RunInfo,
    pub sources: Arc<SourceMap>,
    /// Deploy locks this run holds.
    pub locks: crate::lock::Locks,
    /// Hosts this run put into maintenance mode (`artisan down`) and has not lifted it
    /// from: the only ones its failure path may lift it on.
    pub maintenance: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Hosts this run switched to a new release, with the release they were on.
    pub activations: std::sync::Mutex<Vec<(Arc<crate::inventory::Host>, String)>>,
    /// Per host: the release before the run's first switch and after its last (audit).
    pub switches: std::sync::Mutex<BTreeMap<String, (String, String)>>,
    /// Steps and hosts of this run, for the audit record.
    pub audit: crate::audit::Collector,
    /// What kind of change this run made (for delivery metrics).
    pub facts: std::sync::Mutex<crate::audit::Facts>,
    /// When the session began (`run.elapsed_ms()`, deployment durations).
    pub started: std::time::Instant,
    /// On while a read-only script runs (or an actor may only read): changes are refused.
    pub read_only: crate::permissions::ReadOnly,
    /// Hooks the script attached to the strategies' steps (`steps::before(…)`).
    pub hooks: std::sync::Mutex<Vec<crate::steps::Hooked<Option<rhai::FnPtr>>>>,
}

impl Session {
    /// Records that `host` moved from `before` to `after` (for the audit log).
    pub(crate) fn record_switch(&self, host: &str, before: &str, after: &str) {
        // The host's own record, for `runbook recover` should this run die.
        self.locks
            .note(&[host], &format!("switched {before} {after}"));
        let mut s = self.switches.locked();
        let entry = s
            .entry(host.to_owned())
            .or_insert_with(|| (before.to_owned(), after.to_owned()));
        after.clone_into(&mut entry.1);
    }
}

/// The session, stored as the engine's tag so plugin functions can reach it.
#[derive(Clone)]
pub(crate) struct SessionRef(pub Arc<Session>);

pub(crate) struct SessionConfig {
    pub inventory: Option<Arc<Inventory>>,
    pub env: Option<Arc<Environment>>,
    pub info: RunInfo,
    pub verbosity: Verbosity,
    pub json: bool,
}

impl SessionConfig {
    /// A session on `env` for `script` (a script name, or the command's own name), by
    /// the current actor, with a fresh run id and every other setting at its default.
    pub(crate) fn for_env(
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

/// Output with its sinks, effects, and the session a script sees.
pub(crate) fn open(rt: &tokio::runtime::Runtime, config: SessionConfig) -> Arc<Session> {
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
    session: &Session,
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
            .locked()
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
        facts: session.facts.locked().clone(),
    }
}

/// Audits a run refused before it started (permissions, reason, confirmation): locally only,
/// since no host was touched.
pub(crate) fn audit_refusal(session: &Session, script: &str, text: &str, refused: &Error) {
    let mut record = audit_record(session, script, text, "refused", std::time::Duration::ZERO);
    record.error = Some(refused.to_string());
    write_audit(session, &record, false);
}

/// Appends the run's record (one JSON line on standard input) to the host's audit log
/// with the shell's own `read` and `printf`: no process is started once the directory is
/// there. dash writes a line this short in one `write`, so with O_APPEND two runs'
/// records never interleave.
const APPEND_BUILTIN: &str = r#"umask 077; d=$1/.runbook; [ -d "$d" ] || mkdir -p "$d" || exit 1; IFS= read -r l || exit 1; printf '%s\n' "$l" >> "$d/audit.jsonl""#;
/// The longest record (with its newline) [`APPEND_BUILTIN`] takes: well within dash's
/// 8 KiB output buffer.
const APPEND_BUILTIN_MAX: usize = 4096;
/// A longer record: `cat` writes it whole in one `write`.
const APPEND_CAT: &str = r#"umask 077; d=$1/.runbook; [ -d "$d" ] || mkdir -p "$d" || exit 1; exec cat >> "$d/audit.jsonl""#;

/// Appends the record locally and (unless `local_only`) on every host the run touched.
pub(crate) fn write_audit(session: &Session, record: &crate::audit::Record, on_hosts: bool) {
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
            // The umask makes a new log 0600 and its directory 0700.
            if line.len() <= APPEND_BUILTIN_MAX {
                APPEND_BUILTIN
            } else {
                APPEND_CAT
            },
            &[&root],
        );
        spec.stdin = Some(line.clone().into_bytes());
        spec.quiet = true;
        spec.tolerate = true;
        spec.shielded = true;
        spec.inline = true;
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

#[cfg(test)]
mod audit_append_tests {
    use super::{APPEND_BUILTIN, APPEND_BUILTIN_MAX, APPEND_CAT};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn append(shell: &str, body: &str, root: &str, line: &str) -> i32 {
        let mut child = std::process::Command::new(shell)
            .args(["-c", body, "sh", root])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("start the shell");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(line.as_bytes()).expect("write the record");
        }
        child.wait().expect("wait").code().unwrap_or(-1)
    }

    /// Either script, in dash and in bash (the served shell and a login shell), appends
    /// the record byte for byte — backslashes, quotes, leading blanks, `%` kept — to a
    /// new 0600 log in a new 0700 directory, after what was there.
    #[test]
    fn a_record_is_appended_whole_whatever_it_holds() {
        let tricky = r#"  {"reason":"it's \"down\" \\ 100% \t $HOME `id`"}"#;
        let big = format!("{{\"hosts\":\"{}\"}}", "h".repeat(APPEND_BUILTIN_MAX));
        for shell in ["dash", "bash"] {
            for (body, record) in [(APPEND_BUILTIN, tricky), (APPEND_CAT, big.as_str())] {
                let dir = tempfile::tempdir().unwrap();
                let root = dir.path().to_str().unwrap();
                let first = format!("{record}\n");
                assert_eq!(append(shell, body, root, &first), 0, "{shell}");
                assert_eq!(append(shell, body, root, "{\"second\":1}\n"), 0, "{shell}");
                let log = dir.path().join(".runbook/audit.jsonl");
                assert_eq!(
                    std::fs::read_to_string(&log).unwrap(),
                    format!("{first}{{\"second\":1}}\n"),
                    "{shell}"
                );
                let mode = |p: &std::path::Path| {
                    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
                };
                assert_eq!(mode(&log), 0o600, "{shell}");
                assert_eq!(mode(&dir.path().join(".runbook")), 0o700, "{shell}");
            }
        }
    }

    /// No record at all (a cut input) appends nothing and fails, so the run warns.
    #[test]
    fn an_empty_input_appends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        assert_ne!(append("dash", APPEND_BUILTIN, root, ""), 0);
        let log = dir.path().join(".runbook/audit.jsonl");
        assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty());
    }
}
