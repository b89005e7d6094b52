//! `runbook run`: compile, confirm, execute, and always finish with a result event.

use crate::sync::Locked;
use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

use rhai::{Dynamic, EvalAltResult, Map};

use super::{SessionConfig, actor, parse_args, run_id, runtime, session};
use crate::cli::{Global, RunArgs};
use crate::engine::{self, Diagnostic, Mode, RunInfo};
use crate::error::Error;
use crate::output::{Event, Kind, Outcome};
use crate::project::Project;

pub(crate) fn run(global: &Global, args: RunArgs) -> Result<(), Error> {
    let project = Project::load(global.config.as_deref())?;
    let env = project.env(args.env.as_deref())?;
    let env = narrow(&env, args.hosts.as_deref(), args.shard.as_deref())?;
    let script = Script::read(&project, &args)?;

    let rt = runtime()?;
    let session = open_session(&rt, global, &args, &project, &env, &script);
    let engine = engine::build(&session, Mode::Run, script.path.parent());
    let mut scope = engine::scope(&session);
    // A script that does not compile runs nothing, anywhere.
    let ast = engine::compile(
        &engine,
        &scope,
        &script.name,
        &script.text,
        &session.sources,
    )
    .map_err(|d| Error::Script(Box::new(d)))?;
    let kind = admit(&session, &env, &args, &script)?;
    hold_to_kind(&session, kind, &script.name);

    super::install_signals(&rt, &session);
    announce(&session, &env, &args, &script);
    let clock = Instant::now();
    let result = engine.run_ast_with_scope(&mut scope, &ast);
    let mut ending = Ending::judge(result, &session, &script.name);

    // The failure path and the clean-up below must be able to run commands (switch
    // back, release the lock) after a Ctrl-C; a further signal interrupts them again.
    session.effects.interrupt().acknowledge();
    if !ending.settled
        && let Some(failure) = &ending.failure
    {
        run_on_failure(&engine, &mut scope, &ast, failure, &session, &script.name);
    }
    clean_up(&session, &env.name, ending.failure.as_mut());
    if args.dry_run {
        report_plan(&session, &env.name, &script.name, args.plan_out.as_deref());
    }
    let record = audit(&session, &script, &ending, args.dry_run, clock.elapsed());
    session.effects.close();
    let took = clock.elapsed();
    let finished = finished_event(&session, &env.name, &script.name, &ending, &record, took);
    session.effects.output().emit(finished);
    ending.into_result()
}

/// The script a run executes: where it is, its name as shown, its text and arguments.
struct Script {
    path: std::path::PathBuf,
    name: String,
    text: String,
    args: std::collections::BTreeMap<String, String>,
}

impl Script {
    /// Finds the script `args` names in the project, reads it and parses its arguments.
    fn read(project: &Project, args: &RunArgs) -> Result<Script, Error> {
        let path = project.resolve_script(&args.script)?;
        let script_args = parse_args(&args.args)?;
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let name = engine::source_name(&path, Some(project.root()));
        Ok(Script {
            path,
            name,
            text,
            args: script_args,
        })
    }
}

/// The session the script runs in: a fresh run id, the actor and reason of the flags.
fn open_session(
    rt: &tokio::runtime::Runtime,
    global: &Global,
    args: &RunArgs,
    project: &Project,
    env: &std::sync::Arc<crate::inventory::Environment>,
    script: &Script,
) -> std::sync::Arc<crate::session::Session> {
    session(
        rt,
        SessionConfig {
            inventory: Some(project.inventory.clone()),
            env: Some(env.clone()),
            info: RunInfo {
                id: run_id(),
                script: script.name.clone(),
                reason: args.reason.clone().filter(|r| !r.trim().is_empty()),
                actor: args.actor.clone().unwrap_or_else(actor),
                dry_run: args.dry_run,
                args: script.args.clone(),
                lock_wait: args.lock_wait.unwrap_or_default(),
            },
            verbosity: global.verbosity(),
            json: args.json,
        },
    )
}

/// Who may run this script on this environment, confirmed on a protected one; a refusal
/// is audited.
fn admit(
    session: &crate::session::Session,
    env: &crate::inventory::Environment,
    args: &RunArgs,
    script: &Script,
) -> Result<crate::permissions::ScriptKind, Error> {
    super::admit(
        &crate::permissions::Request {
            env,
            script: &script.name,
            text: &script.text,
            actor: &session.info.actor,
            actor_flag: args.actor.is_some(),
            reason: session.info.reason.as_deref(),
            dry_run: args.dry_run,
        },
        args.yes,
        &script.name,
        || Ok(()),
        |refused| super::audit_refusal(session, &script.name, &script.text, refused),
    )
}

/// What the script's kind allows: an emergency with a written reason passes a freeze,
/// a read-only script has every change refused.
fn hold_to_kind(
    session: &crate::session::Session,
    kind: crate::permissions::ScriptKind,
    name: &str,
) {
    // An emergency with a written reason passes a freeze of deploys (audited with it).
    session.locks.pass_freeze(
        kind == crate::permissions::ScriptKind::Emergency && session.info.reason.is_some(),
    );
    // A read-only script is held to it: any change it attempts is refused and audited.
    if kind == crate::permissions::ScriptKind::ReadOnly {
        session
            .read_only
            .set(Some(crate::permissions::declared(name)));
    }
}

/// The run-started event: script, environment, actor, arguments and reason.
fn announce(
    session: &crate::session::Session,
    env: &crate::inventory::Environment,
    args: &RunArgs,
    script: &Script,
) {
    let name = &script.name;
    let mut started = Event::new(Kind::RunStarted)
        .message(format!("runbook: {name} on {}", env.name))
        .data("script", name.clone())
        .data("env", env.name.clone())
        .data("dry_run", args.dry_run)
        .data("actor", session.info.actor.clone())
        .data(
            "args",
            serde_json::to_value(&script.args).unwrap_or_default(),
        );
    if let Some(reason) = &session.info.reason {
        started = started.data("reason", reason.clone());
    }
    session.effects.output().emit(started);
}

/// A script's error as the run reports it, and whether a signal caused it.
struct Failure {
    diagnostic: Diagnostic,
    interrupted: bool,
}

/// How the script ended, as the rest of the run sees it.
struct Ending {
    failure: Option<Failure>,
    /// The read-only gate stopped the script: a refusal, not an interruption.
    refused: bool,
    /// The change was verified everywhere (`release::verified()`): nothing undoes it.
    settled: bool,
    /// A signal arrived after it was settled: the run ends as the success it is.
    already_complete: bool,
}

impl Ending {
    /// Judges the script's `result`: failed, refused or interrupted — and whether the
    /// deploy was already settled, so that the failure path does not switch back.
    fn judge(
        result: Result<(), Box<EvalAltResult>>,
        session: &crate::session::Session,
        name: &str,
    ) -> Ending {
        let output = session.effects.output();
        let interrupt = session.effects.interrupt();
        // A change refused by the read-only gate stops the script; it is a refusal, not an
        // interruption.
        let refusal = session.read_only.take_refusal();
        let failure = result.err().map(|err| {
            let interrupted = refusal.is_none()
                && (interrupt.ever()
                    || matches!(err.unwrap_inner(), EvalAltResult::ErrorTerminated(..)));
            let mut diagnostic =
                Diagnostic::from_eval(&err, name, &session.sources).redacted(output.redactor());
            if let Some(message) = &refusal {
                diagnostic.message.clone_from(message);
            }
            Failure {
                diagnostic,
                interrupted,
            }
        });
        let interrupted = failure.as_ref().is_some_and(|f| f.interrupted);
        // Once the change was verified everywhere (`release::verified()`), nothing undoes it:
        // a signal after that point ends the run as the success it is, and a later failure
        // (cleanup, a notification) is reported without the failure path switching back.
        let settled = interrupt.is_settled();
        let already_complete = settled && (interrupt.held() > 0 || interrupted);
        let failure = if already_complete && interrupted {
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
        Ending {
            failure,
            refused: refusal.is_some(),
            settled,
            already_complete,
        }
    }

    /// The audit log's word for this ending.
    fn result_word(&self, dry_run: bool) -> &'static str {
        if self.failure.is_some() && self.refused {
            return "refused";
        }
        super::audit_result(dry_run, self.failure.as_ref().map(|f| f.interrupted))
    }

    /// The command's result: a script error, an interruption, or success.
    fn into_result(self) -> Result<(), Error> {
        match self.failure {
            None => Ok(()),
            Some(Failure {
                diagnostic,
                interrupted: true,
            }) => Err(Error::Interrupted {
                diagnostic: Some(Box::new(diagnostic)),
            }),
            Some(Failure {
                diagnostic,
                interrupted: false,
            }) => Err(Error::Script(Box::new(diagnostic))),
        }
    }
}

/// Calls the script's `on_failure(err)`, when it has one, with the failure as a map; its
/// own failure is only a warning.
fn run_on_failure(
    engine: &rhai::Engine,
    scope: &mut rhai::Scope,
    ast: &rhai::AST,
    failure: &Failure,
    session: &crate::session::Session,
    name: &str,
) {
    if !ast
        .iter_functions()
        .any(|f| f.name == "on_failure" && f.params.len() == 1)
    {
        return;
    }
    let output = session.effects.output();
    let diagnostic = &failure.diagnostic;
    let mut err = Map::new();
    err.insert("message".into(), diagnostic.message.clone().into());
    err.insert(
        "location".into(),
        diagnostic.location().map_or(Dynamic::UNIT, Dynamic::from),
    );
    err.insert("interrupted".into(), failure.interrupted.into());
    if let Err(e) = crate::engine::call_on_failure(engine, scope, ast, err) {
        let d = Diagnostic::from_eval(&e, name, &session.sources).redacted(output.redactor());
        output.log(
            crate::output::Level::Warn,
            format!("on_failure itself failed:\n{d}"),
        );
    }
}

/// Releases this run's locks (only ever its own) and says what it could not clean up:
/// after the error when there is one (where people look), else as a warning.
fn clean_up(session: &crate::session::Session, env: &str, failure: Option<&mut Failure>) {
    let output = session.effects.output();
    let (released, unreleased) = session.locks.release_all_report();
    for host in &released {
        output.emit(Event::new(Kind::Lock).host(host).message("lock released"));
    }
    let left = left_behind(session, env, &unreleased, failure.is_some());
    if left.is_empty() {
        return;
    }
    let lines: Vec<String> = left.iter().map(|l| format!("  - {l}")).collect();
    let text = format!(
        "this run could not clean up every host:\n{}",
        lines.join("\n")
    );
    match failure {
        // The last lines of the run: after the error, where people look.
        Some(Failure { diagnostic: d, .. }) => {
            d.hint = Some(match d.hint.take() {
                Some(h) => format!("{h}\n{text}"),
                None => text,
            });
        }
        None => output.log(crate::output::Level::Warn, text),
    }
}

/// A dry run's plan: how many actions on which hosts, and with `--plan-out` the plan as
/// JSON (secrets masked).
fn report_plan(
    session: &crate::session::Session,
    env: &str,
    name: &str,
    plan_out: Option<&std::path::Path>,
) {
    let output = session.effects.output();
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
    let Some(path) = plan_out else { return };
    let doc = serde_json::json!({
        "format": 1,
        "run": session.info.id,
        "script": name,
        "env": env,
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

/// Writes the run's audit record (locally, and on its hosts unless a dry run) and returns it.
fn audit(
    session: &crate::session::Session,
    script: &Script,
    ending: &Ending,
    dry_run: bool,
    took: std::time::Duration,
) -> crate::audit::Record {
    let word = ending.result_word(dry_run);
    let mut record = super::audit_record(session, &script.name, &script.text, word, took);
    record.error = ending
        .failure
        .as_ref()
        .map(|f| f.diagnostic.message.clone());
    super::write_audit(session, &record, !dry_run);
    record
}

/// The run-finished event: the outcome, the live release per host, and the error with
/// where it happened.
fn finished_event(
    session: &crate::session::Session,
    env: &str,
    name: &str,
    ending: &Ending,
    record: &crate::audit::Record,
    took: std::time::Duration,
) -> Event {
    let (outcome, message) = match &ending.failure {
        None if session.info.dry_run => {
            (Outcome::DryRun, format!("{name} dry run finished on {env}"))
        }
        None => {
            let unverified = session.facts.locked().unverified.clone();
            let mut m = format!("{name} succeeded on {env}");
            if ending.already_complete {
                m.push_str(" — deploy was already complete when the signal arrived");
            }
            if let Some(why) = unverified {
                let _ = write!(m, " — not verified: {why}");
            }
            (Outcome::Ok, m)
        }
        Some(Failure {
            interrupted: true, ..
        }) => (Outcome::Aborted, format!("{name} was interrupted on {env}")),
        Some(Failure {
            interrupted: false, ..
        }) => (Outcome::Failed, format!("{name} failed on {env}")),
    };
    let mut finished = Event::new(Kind::RunFinished)
        .result(outcome)
        .duration(took)
        .message(message);
    if !record.releases.is_empty() {
        let live: serde_json::Map<String, serde_json::Value> = record
            .releases
            .iter()
            .map(|(h, s)| (h.clone(), serde_json::Value::from(s.after.clone())))
            .collect();
        finished = finished.data("releases", serde_json::Value::Object(live));
    }
    if let Some(f) = &ending.failure {
        finished = finished.data("error", f.diagnostic.to_string());
        if let Some(at) = f.diagnostic.location() {
            finished = finished.data("location", at);
        }
    }
    finished
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
    let mut hosts: std::collections::BTreeSet<&str> =
        locked.iter().map(std::string::String::as_str).collect();
    hosts.extend(down.iter().map(String::as_str));
    hosts.extend(switched.keys().map(String::as_str));
    if !locked.is_empty() {
        let names: Vec<&str> = locked.iter().map(std::string::String::as_str).collect();
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
