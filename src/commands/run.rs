//! `runbook run`: compile, confirm, execute, and always finish with a result event.

use crate::sync::Locked;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

use rhai::{Dynamic, EvalAltResult, Map};

use super::{SessionConfig, actor, parse_args, run_id, runtime, session};
use crate::cli::{Global, RunArgs};
use crate::engine::{self, Diagnostic, Mode, RunInfo};
use crate::error::Error;
use crate::output::{Event, Kind, Outcome};
use crate::project::Project;

pub fn run(global: &Global, args: RunArgs) -> Result<(), Error> {
    let project = Project::load(global.config.as_deref())?;
    let env = project.env(args.env.as_deref())?;
    let env = narrow(&env, args.hosts.as_deref(), args.shard.as_deref())?;
    let path = project.resolve_script(&args.script)?;
    let script_args = parse_args(&args.args)?;
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let name = engine::source_name(&path, Some(project.root()));

    let rt = runtime()?;
    let session = session(
        &rt,
        SessionConfig {
            inventory: Some(project.inventory.clone()),
            env: Some(env.clone()),
            info: RunInfo {
                id: run_id(),
                script: name.clone(),
                reason: args.reason.clone().filter(|r| !r.trim().is_empty()),
                actor: args.actor.clone().unwrap_or_else(actor),
                dry_run: args.dry_run,
                args: script_args.clone(),
                lock_wait: args.lock_wait.unwrap_or_default(),
            },
            verbosity: global.verbosity(),
            json: args.json,
        },
    );
    let engine = engine::build(&session, Mode::Run, path.parent());
    let mut scope = engine::scope(&session);
    // A script that does not compile runs nothing, anywhere.
    let ast = engine::compile(&engine, &scope, &name, &text, &session.sources)
        .map_err(|d| Error::Script(Box::new(d)))?;

    // Who may change this environment: decided before any connection is made.
    let admitted = crate::permissions::admit(&crate::permissions::Request {
        env: &env,
        script: &name,
        text: &text,
        actor: &session.info.actor,
        actor_flag: args.actor.is_some(),
        reason: session.info.reason.as_deref(),
        dry_run: args.dry_run,
    })
    .and_then(|kind| {
        if crate::permissions::needs_confirmation(&env, args.dry_run, args.yes) {
            confirm(&env.name, &name)?;
        }
        Ok(kind)
    });
    let kind = match admitted {
        Ok(kind) => kind,
        Err(refused) => {
            super::audit_refusal(&session, &name, &text, &refused);
            return Err(refused);
        }
    };
    // An emergency with a written reason passes a freeze of deploys (audited with it).
    session.locks.pass_freeze(
        kind == crate::permissions::ScriptKind::Emergency && session.info.reason.is_some(),
    );
    // A read-only script is held to it: any change it attempts is refused and audited.
    if kind == crate::permissions::ScriptKind::ReadOnly {
        session
            .read_only
            .set(Some(crate::permissions::declared(&name)));
    }

    let output = session.effects.output().clone();
    super::install_signals(&rt, &session);
    let mut started = Event::new(Kind::RunStarted)
        .message(format!("runbook: {name} on {}", env.name))
        .data("script", name.clone())
        .data("env", env.name.clone())
        .data("dry_run", args.dry_run)
        .data("actor", session.info.actor.clone())
        .data(
            "args",
            serde_json::to_value(&script_args).unwrap_or_default(),
        );
    if let Some(reason) = &session.info.reason {
        started = started.data("reason", reason.clone());
    }
    output.emit(started);
    let clock = Instant::now();

    let result = engine.run_ast_with_scope(&mut scope, &ast);
    let interrupt = session.effects.interrupt();
    // A change refused by the read-only gate stops the script; it is a refusal, not an
    // interruption.
    let refusal = session.read_only.take_refusal();
    let failure = result.err().map(|err| {
        let interrupted = refusal.is_none()
            && (interrupt.ever()
                || matches!(err.unwrap_inner(), EvalAltResult::ErrorTerminated(..)));
        let mut diagnostic =
            Diagnostic::from_eval(&err, &name, &session.sources).redacted(output.redactor());
        if let Some(message) = &refusal {
            diagnostic.message.clone_from(message);
        }
        (diagnostic, interrupted)
    });
    // Once the change was verified everywhere (`release::verified()`), nothing undoes it:
    // a signal after that point ends the run as the success it is, and a later failure
    // (cleanup, a notification) is reported without the failure path switching back.
    let settled = interrupt.is_settled();
    let already_complete = settled && (interrupt.held() > 0 || matches!(&failure, Some((_, true))));
    let mut failure = if already_complete && matches!(&failure, Some((_, true))) {
        None
    } else {
        failure
    };
    if already_complete {
        output.log(
            crate::output::Level::Warn,
            "a signal arrived after the deploy was verified everywhere: the deploy was already complete and stays",
        );
    } else if settled && failure.is_some() {
        output.log(
            crate::output::Level::Warn,
            "the deploy was already verified everywhere: it stays (the failure path is not run); see the error for the step that failed after it",
        );
    }

    // The failure path and the clean-up below must be able to run commands (switch
    // back, release the lock) after a Ctrl-C; a further signal interrupts them again.
    interrupt.acknowledge();
    if let Some((diagnostic, interrupted)) = &failure
        && !settled
        && ast
            .iter_functions()
            .any(|f| f.name == "on_failure" && f.params.len() == 1)
    {
        let mut err = Map::new();
        err.insert("message".into(), diagnostic.message.clone().into());
        err.insert(
            "location".into(),
            diagnostic.location().map_or(Dynamic::UNIT, Dynamic::from),
        );
        err.insert("interrupted".into(), (*interrupted).into());
        if let Err(e) = crate::engine::call_on_failure(&engine, &mut scope, &ast, err) {
            let d = Diagnostic::from_eval(&e, &name, &session.sources).redacted(output.redactor());
            output.log(
                crate::output::Level::Warn,
                format!("on_failure itself failed:\n{d}"),
            );
        }
    }

    // Whatever happened, this run's locks go (only ever its own), then the connections.
    let (released, unreleased) = session.locks.release_all_report();
    for host in &released {
        output.emit(Event::new(Kind::Lock).host(host).message("lock released"));
    }
    let left = left_behind(&session, &env.name, &unreleased, failure.is_some());
    if !left.is_empty() {
        let lines: Vec<String> = left.iter().map(|l| format!("  - {l}")).collect();
        let text = format!(
            "this run could not clean up every host:\n{}",
            lines.join("\n")
        );
        match failure.as_mut() {
            // The last lines of the run: after the error, where people look.
            Some((d, _)) => {
                d.hint = Some(match d.hint.take() {
                    Some(h) => format!("{h}\n{text}"),
                    None => text,
                });
            }
            None => output.log(crate::output::Level::Warn, text),
        }
    }
    if args.dry_run {
        let plan = session.audit.plan();
        let (_, hosts) = session.audit.take();
        output.log(
            crate::output::Level::Info,
            format!(
                "plan: {} actions on {} — nothing was executed",
                plan.len(),
                if hosts.is_empty() {
                    "this machine".to_owned()
                } else {
                    hosts.join(", ")
                }
            ),
        );
        if let Some(path) = &args.plan_out {
            let doc = serde_json::json!({
                "format": 1,
                "run": session.info.id,
                "script": name,
                "env": env.name,
                "args": session.info.args,
                "hosts": hosts,
                "actions": plan,
            });
            let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
            let text = output.redactor().redact(&text).into_owned();
            if let Err(e) = std::fs::write(path, text) {
                output.log(
                    crate::output::Level::Error,
                    format!("cannot write the plan to {}: {e}", path.display()),
                );
            }
        }
    }
    let result_word = match &failure {
        Some(_) if refusal.is_some() => "refused",
        None if args.dry_run => "dry_run",
        None => "success",
        Some((_, true)) => "aborted",
        Some((_, false)) => "failed",
    };
    let mut record = super::audit_record(&session, &name, &text, result_word, clock.elapsed());
    record.error = failure.as_ref().map(|(d, _)| d.message.clone());
    super::write_audit(&session, &record, !args.dry_run);
    session.effects.close();
    let (outcome, message) = match &failure {
        None if args.dry_run => (
            Outcome::DryRun,
            format!("{name} dry run finished on {}", env.name),
        ),
        None => {
            let unverified = session.facts.locked().unverified.clone();
            let mut m = format!("{name} succeeded on {}", env.name);
            if already_complete {
                m.push_str(" — deploy was already complete when the signal arrived");
            }
            if let Some(why) = unverified {
                m.push_str(&format!(" — not verified: {why}"));
            }
            (Outcome::Ok, m)
        }
        Some((_, true)) => (
            Outcome::Aborted,
            format!("{name} was interrupted on {}", env.name),
        ),
        Some((_, false)) => (Outcome::Failed, format!("{name} failed on {}", env.name)),
    };
    let mut finished = Event::new(Kind::RunFinished)
        .result(outcome)
        .duration(clock.elapsed())
        .message(message);
    if !record.releases.is_empty() {
        let live: serde_json::Map<String, serde_json::Value> = record
            .releases
            .iter()
            .map(|(h, s)| (h.clone(), serde_json::Value::from(s.after.clone())))
            .collect();
        finished = finished.data("releases", serde_json::Value::Object(live));
    }
    if let Some((d, _)) = &failure {
        finished = finished.data("error", d.to_string());
        if let Some(at) = d.location() {
            finished = finished.data("location", at);
        }
    }
    output.emit(finished);

    match failure {
        None => Ok(()),
        Some((d, true)) => Err(Error::Interrupted {
            diagnostic: Some(Box::new(d)),
        }),
        Some((d, false)) => Err(Error::Script(Box::new(d))),
    }
}

/// Per host, what this run leaves that it should not have: its lock (`locked`: the
/// release got no answer), maintenance mode it turned on and did not lift, a switch it did
/// not undo after failing — each with the command that fixes it. A lock left behind is
/// also recorded on this machine ([`crate::lock::record_ended`]), so the next run here
/// knows its holder ended and recovers at once instead of waiting out the heartbeat.
fn left_behind(
    session: &crate::session::Session,
    env: &str,
    locked: &[String],
    failed: bool,
) -> Vec<String> {
    let down = session.maintenance.locked().clone();
    let switched: std::collections::BTreeMap<String, String> = if failed {
        session
            .switches
            .locked()
            .iter()
            .filter(|(_, (before, after))| before != after && !after.is_empty())
            .map(|(h, (_, after))| (h.clone(), after.clone()))
            .collect()
    } else {
        std::collections::BTreeMap::new()
    };
    let lost = session.effects.lost_hosts();
    let mut hosts: std::collections::BTreeSet<&str> = locked.iter().map(|h| h.as_str()).collect();
    hosts.extend(down.iter().map(String::as_str));
    hosts.extend(switched.keys().map(String::as_str));
    if !locked.is_empty() {
        let names: Vec<&str> = locked.iter().map(|h| h.as_str()).collect();
        crate::lock::record_ended(&session.info.id, env, &names);
    }
    hosts
        .into_iter()
        .map(|h| {
            let mut what = Vec::new();
            if down.contains(h) {
                what.push("left in maintenance mode".to_owned());
            }
            if let Some(r) = switched.get(h) {
                what.push(format!("on this run's release {r}, not switched back"));
            }
            if locked.iter().any(|l| l.as_str() == h) {
                what.push("lock held".to_owned());
            }
            if lost.contains(h) {
                format!(
                    "{h}: unreachable — {}; run `runbook recover -e {env}` when it is back",
                    what.join(", ")
                )
            } else {
                format!("{h}: {}; run `runbook recover -e {env}`", what.join(", "))
            }
        })
        .collect()
}

/// Applies `--hosts` and `--shard` to the environment.
fn narrow(
    env: &std::sync::Arc<crate::inventory::Environment>,
    pattern: Option<&str>,
    shard: Option<&str>,
) -> Result<std::sync::Arc<crate::inventory::Environment>, Error> {
    if pattern.is_none() && shard.is_none() {
        return Ok(env.clone());
    }
    let shard = shard
        .map(|s| {
            let bad = || Error::BadOption {
                option: format!("--shard {s}"),
                message: "expected I/N with 1 <= I <= N, e.g. 2/4".into(),
            };
            let (i, n) = s.split_once('/').ok_or_else(bad)?;
            let (i, n) = (
                i.trim().parse::<usize>().map_err(|_| bad())?,
                n.trim().parse::<usize>().map_err(|_| bad())?,
            );
            if i == 0 || n == 0 || i > n {
                return Err(bad());
            }
            Ok((i, n))
        })
        .transpose()?;
    let narrowed = env.subset(pattern, shard);
    if narrowed.hosts.is_empty() {
        return Err(Error::BadOption {
            option: "--hosts/--shard".into(),
            message: format!("no host of `{}` is selected", env.name),
        });
    }
    Ok(std::sync::Arc::new(narrowed))
}

/// Asks on the terminal before touching a protected environment.
pub(crate) fn confirm(env: &str, script: &str) -> Result<(), Error> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty");
    let interactive = std::io::stdin().is_terminal();
    let (Ok(mut tty), true) = (tty, interactive) else {
        return Err(Error::NotConfirmed {
            env: env.to_owned(),
        });
    };
    let _ = write!(
        tty,
        "`{env}` is a protected environment. Type its name to run {script} on it: "
    );
    let _ = tty.flush();
    let mut answer = String::new();
    let mut reader = std::io::BufReader::new(&mut tty);
    if reader.read_line(&mut answer).is_err() || answer.trim() != env {
        return Err(Error::Declined {
            env: env.to_owned(),
        });
    }
    Ok(())
}
