//! `runbook unlock`: remove a deploy lock left behind by a run that died. With `--stale`
//! (the safe default for people) a live lock — heartbeat within the TTL — is refused.
//!
//! Removing a lock lets the next run in, so it is a decision someone answers for: every
//! unlock, refused or done, is an audit record (locally and on the hosts it touched), and
//! on a protected environment it needs `--reason`.

use super::{SessionConfig, runtime, session};
use crate::cli::{Global, UnlockArgs};
use crate::effects::Target;
use crate::error::Error;
use crate::output::{Event, Kind, Level};
use crate::project::Project;

pub(crate) fn run(global: &Global, args: &UnlockArgs) -> Result<(), Error> {
    let project = Project::load(global.config.as_deref())?;
    let env = project.env(args.env.as_deref())?;
    let rt = runtime()?;
    let mut config = SessionConfig::for_env(&project.inventory, &env, "unlock", global.verbosity());
    config.info.reason = args.reason.clone().filter(|r| !r.trim().is_empty());
    let session = session(&rt, config);
    let started = std::time::Instant::now();
    let record = |result: &str, error: Option<String>| {
        let mut r = super::audit_record(&session, "unlock", "", result, started.elapsed());
        r.args.insert("stale".into(), args.stale.to_string());
        r.error = error;
        r
    };

    let refusal = if env.protected && session.info.reason.is_none() {
        Some(Error::BadOption {
            option: "--reason".into(),
            message: format!(
                "`{}` is protected: removing its deploy lock needs a written reason, which goes into the audit log; pass --reason \"…\"",
                env.name
            ),
        })
    } else if !args.stale && env.protected && !args.yes {
        Some(Error::NotConfirmed {
            env: env.name.clone(),
        })
    } else {
        None
    };
    if let Some(refused) = refusal {
        super::write_audit(
            &session,
            &record("refused", Some(refused.to_string())),
            false,
        );
        return Err(refused);
    }

    let targets: Vec<Target> = env.hosts.iter().cloned().map(Target::Host).collect();
    let stale = args.stale.then_some(crate::lock::DEFAULT_TTL);
    let output = session.effects.output().clone();
    let mut refused = Vec::new();
    let results = crate::lock::unlock(
        &session.effects,
        &targets,
        stale,
        &session.info.id,
        &env.name,
    );
    let mut done = Vec::new();
    for (host, result) in results {
        match result.map_err(|e| e.to_string()) {
            Ok(what) => {
                output.emit(Event::new(Kind::Lock).host(&host).message(what.clone()));
                done.push((host, what));
            }
            Err(why) => {
                output.log(Level::Error, format!("{host}: {why}"));
                refused.push((host, why));
            }
        }
    }
    let mut rec = if refused.is_empty() {
        record("success", None)
    } else {
        let lines: Vec<String> = refused
            .iter()
            .map(|(h, why)| format!("{h}: {why}"))
            .collect();
        record("failed", Some(lines.join("\n")))
    };
    // What each host had: the record says whose lock was removed, and where not.
    for (host, what) in done.into_iter().chain(refused.iter().cloned()) {
        if !rec.hosts.contains(&host) {
            rec.hosts.push(host.clone());
        }
        rec.args.insert(format!("host.{host}"), what);
    }
    let dry_run = session.effects.dry_run();
    super::write_audit(&session, &rec, !dry_run);
    session.effects.close();
    if !refused.is_empty() {
        return Err(Error::NotUnlocked {
            env: env.name.clone(),
            count: refused.len(),
            total: targets.len(),
            stale: args.stale,
        });
    }
    Ok(())
}
