//! `runbook lock status|freeze|thaw`: who holds the deploy lock on each host, and
//! stopping deploys for a while (a release freeze, an incident, a sale). A freeze lives on
//! every host next to the lock (`.runbook/freeze`), so a runner on another machine or a CI
//! job meets it too; it ends by itself at its TTL. While it lasts no deploy takes the
//! lock; an emergency script run with `--reason` passes. Freeze and thaw are audited
//! (locally and on every host).

use crate::cli::{FreezeArgs, Global, LockAction, LockArgs, StatusArgs, ThawArgs};
use crate::effects::{HostError, Target};
use crate::error::Error;
use crate::output::Level;

/// The longest freeze: one that outlives a month was forgotten, not decided.
const MAX_TTL: std::time::Duration = std::time::Duration::from_hours(720);

pub(crate) fn run(global: &Global, args: &LockArgs) -> Result<(), Error> {
    match &args.action {
        LockAction::Status(a) => status(global, a),
        LockAction::Freeze(a) => freeze(global, a),
        LockAction::Thaw(a) => thaw(global, a),
    }
}

fn status(global: &Global, args: &StatusArgs) -> Result<(), Error> {
    let project = crate::project::Project::load(global.config.as_deref())?;
    let env = project.env(args.env.as_deref())?;
    let rt = super::runtime()?;
    let session = super::session(
        &rt,
        super::SessionConfig::for_env(&project.inventory, &env, "lock status", global.verbosity()),
    );
    let targets: Vec<Target> = env.hosts.iter().cloned().map(Target::Host).collect();
    let states = crate::lock::states(&session.effects, &targets);
    session.effects.close();
    let now = chrono::Utc::now().timestamp();
    let mut rows = Vec::new();
    let mut json = Vec::new();
    let mut unreachable = 0;
    for (t, st) in targets.iter().zip(&states) {
        match st {
            Ok(st) => {
                let holder = st.holder.as_ref().map_or("-".to_owned(), |h| {
                    format!(
                        "{} on {} pid {}, `{}` since {} (run {})",
                        h.actor, h.machine, h.pid, h.script, h.started_at, h.run
                    )
                });
                let beat = st.beat_age.map_or("-".to_owned(), |a| {
                    if a > crate::lock::DEFAULT_TTL.as_secs() {
                        format!(
                            "{a} s ago (its run is gone: `runbook recover -e {}`)",
                            env.name
                        )
                    } else {
                        format!("{a} s ago")
                    }
                });
                let freeze = st
                    .freeze
                    .as_ref()
                    .map_or("-".to_owned(), |f| f.describe(now));
                rows.push(vec![t.name().to_owned(), holder, beat, freeze]);
                json.push(serde_json::json!({
                    "host": t.name(),
                    "holder": st.holder,
                    "heartbeat_age": st.beat_age,
                    "freeze": st.freeze,
                    "frozen": st.freeze.as_ref().is_some_and(|f| f.holds(now)),
                }));
            }
            Err(e) => {
                let e = e.to_string();
                unreachable += 1;
                rows.push(vec![
                    t.name().to_owned(),
                    format!("UNREACHABLE: {}", e.trim()),
                ]);
                json.push(serde_json::json!({ "host": t.name(), "unreachable": e.trim() }));
            }
        }
    }
    if args.json {
        let doc = serde_json::json!({ "env": env.name, "hosts": json });
        super::print(&serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        super::print(&crate::output::table(
            &["HOST", "LOCK HELD BY", "HEARTBEAT", "FREEZE"],
            &rows,
        ));
    }
    if unreachable == 0 {
        Ok(())
    } else {
        Err(Error::Message(format!(
            "{unreachable} of {} hosts did not answer",
            targets.len()
        )))
    }
}

fn freeze(global: &Global, args: &FreezeArgs) -> Result<(), Error> {
    if args.reason.trim().is_empty() {
        return Err(Error::BadOption {
            option: "--reason".into(),
            message: "a freeze needs a reason: whoever it stops reads it".into(),
        });
    }
    if args.ttl.is_zero() || args.ttl > MAX_TTL {
        return Err(Error::BadOption {
            option: "--ttl".into(),
            message: format!(
                "{} is not a freeze: give a duration between 1m and 30d, e.g. --ttl 2h",
                humantime::format_duration(args.ttl)
            ),
        });
    }
    let (_rt, session, env) = open(
        global,
        args.env.as_deref(),
        args.yes,
        "lock freeze",
        Some(&args.reason),
    )?;
    let now = chrono::Utc::now();
    let f = crate::lock::Freeze {
        by: session.info.actor.clone(),
        reason: args.reason.trim().to_owned(),
        at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        until: now.timestamp() + i64::try_from(args.ttl.as_secs()).unwrap_or(i64::MAX / 2),
        run: session.info.id.clone(),
    };
    let targets: Vec<Target> = env.hosts.iter().cloned().map(Target::Host).collect();
    let results = crate::lock::freeze(&session.effects, &targets, &f);
    finish(
        &session,
        &env,
        "lock freeze",
        &targets,
        &results
            .iter()
            .map(|r| r.clone().map(|()| true))
            .collect::<Vec<_>>(),
        &format!("deploys frozen {}", f.describe(now.timestamp())),
    )
}

fn thaw(global: &Global, args: &ThawArgs) -> Result<(), Error> {
    let reason = args.reason.as_deref().filter(|r| !r.trim().is_empty());
    let project = crate::project::Project::load(global.config.as_deref())?;
    if project.env(args.env.as_deref())?.protected && reason.is_none() {
        return Err(Error::BadOption {
            option: "--reason".into(),
            message: "lifting a freeze on a protected environment needs a written reason (recorded): pass --reason \"…\"".into(),
        });
    }
    let (_rt, session, env) = open(global, args.env.as_deref(), args.yes, "lock thaw", reason)?;
    let targets: Vec<Target> = env.hosts.iter().cloned().map(Target::Host).collect();
    let results = crate::lock::thaw(&session.effects, &targets);
    let now = chrono::Utc::now().timestamp();
    let lifted: Vec<Result<bool, HostError>> = results
        .iter()
        .map(|r| r.as_ref().map(Option::is_some).map_err(Clone::clone))
        .collect();
    let was = results
        .iter()
        .find_map(|r| r.as_ref().ok().and_then(Option::as_ref))
        .map(|f| f.describe(now));
    let said = match was {
        Some(w) => format!("freeze lifted (it was {w})"),
        None => "there was no freeze".to_owned(),
    };
    finish(&session, &env, "lock thaw", &targets, &lifted, &said)
}

fn open(
    global: &Global,
    env: Option<&str>,
    yes: bool,
    name: &str,
    reason: Option<&str>,
) -> Result<super::Opened, Error> {
    super::open_env(global, env, name, reason, Some(yes))
}

/// Reports each host, audits the whole (locally and on the hosts), and fails when any
/// host was not changed.
fn finish(
    session: &crate::session::Session,
    env: &crate::inventory::Environment,
    what: &str,
    targets: &[Target],
    results: &[Result<bool, HostError>],
    said: &str,
) -> Result<(), Error> {
    let out = session.effects.output().clone();
    let mut failed = Vec::new();
    for (t, r) in targets.iter().zip(results) {
        if let Err(e) = r {
            out.log(
                Level::Error,
                format!("{}: {what} failed: {}", t.name(), e.to_string().trim()),
            );
            failed.push(t.name().to_owned());
        }
    }
    let word = if failed.is_empty() {
        "success"
    } else {
        "failed"
    };
    let mut record = super::audit_record(session, what, "", word, std::time::Duration::ZERO);
    record.hosts = targets.iter().map(|t| t.name().to_owned()).collect();
    if !failed.is_empty() {
        record.error = Some(format!("not done on {}", failed.join(", ")));
    }
    super::write_audit(session, &record, true);
    session.effects.close();
    if failed.is_empty() {
        let n = targets.len();
        out.log(
            Level::Info,
            format!(
                "{} ({n} host{}): {said}",
                env.name,
                if n == 1 { "" } else { "s" }
            ),
        );
        Ok(())
    } else {
        Err(Error::Message(format!(
            "{what} was not done on {} of {} hosts ({}); run it again once they answer",
            failed.len(),
            targets.len(),
            failed.join(", ")
        )))
    }
}
