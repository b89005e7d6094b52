//! `runbook rollout status|pause|resume|promote|abort`: a running canary seen and steered
//! from another terminal, a CI job or the REPL. The state and the requests live on the
//! hosts next to the deploy lock (`crate::rollout`); a live runner obeys a request within
//! about a second (`POLL`) and this command waits to see it obeyed. When the runner is
//! gone (SIGKILL, a lost CI machine), `abort` and `promote` do its work here: the
//! strategy's `take_over` (stdlib/strategies/canary.rhai) under a lock of this command's
//! own, taken after the dead run's lock is recovered. Every request is audited.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::cli::{Global, RolloutAction, RolloutArgs, RolloutControlArgs, StatusArgs};
use crate::effects::Target;
use crate::engine::{self, Mode};
use crate::error::Error;
use crate::output::Level;
use crate::rollout::{self, Action, Phase, Seen, State};

/// Why `runbook rollout pause|resume|promote|abort` did not do what it was asked.
#[derive(Debug, thiserror::Error)]
enum ControlError {
    #[error(
        "the request could not be left on any host: {}",
        failed.iter().map(|(h, e)| format!("{h}: {e}")).collect::<Vec<_>>().join("; ")
    )]
    NotLeft {
        /// `(host, why)`, one a host.
        failed: Vec<(String, String)>,
    },
    #[error(
        "the runner of this rollout (run {run} by {actor}) is gone: nothing would obey a {word}; finish it with `runbook rollout abort -e {env}` or `runbook rollout promote -e {env}`"
    )]
    RunnerGone {
        run: String,
        actor: String,
        word: &'static str,
        env: String,
    },
    /// The strategy's `take_over` did not compile or failed (its diagnostic, redacted).
    #[error("{0}")]
    TakeOver(Box<crate::diagnostic::Diagnostic>),
}

pub(crate) fn run(global: &Global, args: &RolloutArgs) -> Result<(), Error> {
    match &args.action {
        RolloutAction::Status(a) => status(global, a),
        RolloutAction::Pause(a) => control(global, a, Action::Pause),
        RolloutAction::Resume(a) => control(global, a, Action::Resume),
        RolloutAction::Promote(a) => control(global, a, Action::Promote),
        RolloutAction::Abort(a) => control(global, a, Action::Abort),
    }
}

fn open(
    global: &Global,
    env: Option<&str>,
    name: &str,
    reason: Option<&str>,
) -> Result<super::Opened, Error> {
    super::open_env(global, env, name, reason, None)
}

fn all_targets(env: &crate::inventory::Environment) -> Vec<Target> {
    env.hosts.iter().cloned().map(Target::Host).collect()
}

fn targets_named(env: &crate::inventory::Environment, names: &[String]) -> Vec<Target> {
    names
        .iter()
        .filter_map(|n| env.host(n))
        .map(Target::Host)
        .collect()
}

/// Every host read at once: the rollout seen, and the hosts that did not answer.
fn look(
    session: &crate::session::Session,
    targets: &[Target],
) -> (Option<Seen>, Vec<(String, String)>) {
    let mut views = Vec::new();
    let mut unreachable = Vec::new();
    for (t, v) in targets.iter().zip(rollout::read(&session.effects, targets)) {
        match v {
            Ok(v) => views.push(v),
            Err(e) => unreachable.push((t.name().to_owned(), e.to_string().trim().to_owned())),
        }
    }
    (rollout::judge(&views), unreachable)
}

fn status(global: &Global, args: &StatusArgs) -> Result<(), Error> {
    let clock = Instant::now();
    let (_rt, session, env) = open(global, args.env.as_deref(), "rollout status", None)?;
    let targets = all_targets(&env);
    let (seen, unreachable) = look(&session, &targets);
    session.effects.close();
    let took_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    let now = rollout::now_ms();
    let running = seen.as_ref().is_some_and(|s| !s.state.phase.ended());
    let dead = seen
        .as_ref()
        .is_some_and(|s| !s.state.phase.ended() && !s.alive);
    if args.json {
        let doc = serde_json::json!({
            "env": env.name,
            "running": running,
            "holder_alive": seen.as_ref().map(|s| s.alive),
            "window_left_s": seen.as_ref().and_then(|s| s.state.window_left_s(now)),
            "rollout": seen,
            "unreachable": unreachable
                .iter()
                .map(|(h, e)| serde_json::json!({ "host": h, "error": e }))
                .collect::<Vec<_>>(),
            "took_ms": took_ms,
        });
        super::print(&serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        super::print(&render(
            &env.name,
            seen.as_ref(),
            &unreachable,
            now,
            took_ms,
        ));
    }
    if dead {
        return Err(Error::Message(format!(
            "the rollout on {} has no live runner: nothing steers it; finish it with `runbook rollout abort -e {}` (all traffic to stable) or `runbook rollout promote -e {}`",
            env.name, env.name, env.name
        )));
    }
    if seen.is_none() && !unreachable.is_empty() && unreachable.len() == targets.len() {
        return Err(Error::Message(format!(
            "no host of {} answered: the rollout state cannot be read",
            env.name
        )));
    }
    Ok(())
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".to_owned(), |v| format!("{v:.2}%"))
}

fn secs(x: Option<f64>) -> String {
    x.map_or("-".to_owned(), |v| format!("{v:.3}s"))
}

/// The rollout's phase, step and weight, and (while it runs) its judging window.
fn phase_and_window(out: &mut String, env: &str, seen: &Seen, of: &str, now: i64) {
    let s = &seen.state;
    if s.phase.ended() {
        let _ = writeln!(
            out,
            "{env}: no rollout running; the last one, {} {} of {} (run {}), ended {} at {}% (step {}{of})",
            s.strategy,
            s.release,
            s.version,
            s.run,
            s.phase.as_str(),
            s.weight,
            s.step
        );
    } else {
        let _ = writeln!(
            out,
            "{env}: {} of {} ({}), {} — step {}{of}, {}% of cohorts on the canary",
            s.strategy,
            s.version,
            s.release,
            s.phase.as_str().to_uppercase(),
            s.step,
            s.weight
        );
        match s.window_left_s(now) {
            Some(_) if !seen.alive => {
                let _ = writeln!(
                    out,
                    "window: {} s of {} s were left when the runner last wrote (nobody counts them: it is gone)",
                    s.window_left_s(s.updated_ms).unwrap_or(0),
                    s.window_s
                );
            }
            Some(left) if s.paused_at_ms.is_some() => {
                let _ = writeln!(
                    out,
                    "window: paused with {left} s left of {} s (the clock is stopped until `runbook rollout resume -e {env}`)",
                    s.window_s
                );
            }
            Some(left) => {
                let _ = writeln!(out, "window: {left} s left of {} s", s.window_s);
            }
            None => out.push_str("window: none running (between windows)\n"),
        }
    }
}

/// The last five judgements as a table, canary and stable row by row.
fn judgements(out: &mut String, s: &State) {
    if s.judgements.is_empty() {
        out.push_str("judgements: none yet\n");
    } else {
        out.push_str("last judgements:\n");
        let rows: Vec<Vec<String>> = s
            .judgements
            .iter()
            .rev()
            .take(5)
            .rev()
            .flat_map(|j| {
                let head = format!("{}% (step {})", j.weight, j.step);
                let why = j.reasons.join("; ");
                [
                    vec![
                        head,
                        j.outcome.clone(),
                        "canary".to_owned(),
                        j.canary.requests.map_or("-".into(), |n| n.to_string()),
                        pct(j.canary.success),
                        secs(j.canary.p95),
                        why,
                    ],
                    vec![
                        String::new(),
                        String::new(),
                        "stable".to_owned(),
                        j.stable.requests.map_or("-".into(), |n| n.to_string()),
                        pct(j.stable.success),
                        secs(j.stable.p95),
                    ],
                ]
            })
            .collect();
        let table = crate::output::table(
            &[
                "  STEP", "VERDICT", "POOL", "REQUESTS", "SUCCESS", "P95", "WHY",
            ],
            &rows
                .into_iter()
                .map(|mut r| {
                    r[0] = format!("  {}", r[0]);
                    r
                })
                .collect::<Vec<_>>(),
        );
        out.push_str(&table);
    }
}

fn render(
    env: &str,
    seen: Option<&Seen>,
    unreachable: &[(String, String)],
    now: i64,
    took_ms: u64,
) -> String {
    let mut out = String::new();
    let Some(seen) = seen else {
        let _ = writeln!(out, "{env}: no rollout ({took_ms} ms)");
        for (h, e) in unreachable {
            let _ = writeln!(out, "✗ {h} did not answer: {e}");
        }
        return out;
    };
    let s = &seen.state;
    let of = if s.steps.is_empty() {
        String::new()
    } else {
        format!(
            " of {} ({})",
            s.steps.len(),
            s.steps
                .iter()
                .map(|p| format!("{p}%"))
                .collect::<Vec<_>>()
                .join(" → ")
        )
    };
    phase_and_window(&mut out, env, seen, &of, now);
    let beat = seen
        .heartbeat_age
        .map_or("no lock".to_owned(), |b| format!("heartbeat {b} s ago"));
    let life = if s.phase.ended() {
        "finished"
    } else if seen.alive {
        "alive"
    } else if seen.locked {
        "DEAD (its process is gone or its heartbeat stopped)"
    } else {
        "DEAD (it holds no lock any more)"
    };
    let _ = writeln!(
        out,
        "holder: run {} by {} on {} (pid {}), {beat} — {life}",
        s.run, s.actor, s.machine, s.pid
    );
    judgements(&mut out, s);
    for r in s.requests.iter().rev().take(5).rev() {
        let _ = writeln!(
            out,
            "request: {} by {}{} at {}: {}",
            r.action.as_str(),
            r.actor,
            r.reason
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default(),
            r.at,
            r.outcome.as_deref().unwrap_or("pending")
        );
    }
    if seen.pending > 0 {
        let _ = writeln!(
            out,
            "{} request(s) not taken yet by the runner",
            seen.pending
        );
    }
    for (h, e) in unreachable {
        let _ = writeln!(out, "✗ {h} did not answer: {e}");
    }
    if !s.phase.ended() {
        if seen.alive {
            let _ = writeln!(
                out,
                "steer: runbook rollout pause|resume|promote|abort -e {env} --reason \"…\""
            );
        } else {
            let _ = writeln!(
                out,
                "✗ nothing steers this rollout: `runbook rollout abort -e {env}` puts all traffic back on stable, `runbook rollout promote -e {env}` finishes it"
            );
        }
    }
    let _ = writeln!(out, "({took_ms} ms)");
    out
}

fn control(global: &Global, args: &RolloutControlArgs, action: Action) -> Result<(), Error> {
    let reason = args
        .change
        .reason
        .as_deref()
        .filter(|r| !r.trim().is_empty());
    let word = action.as_str();
    let name = format!("rollout {word}");
    let project = crate::project::Project::load(global.config.as_deref())?;
    let env_def = project.env(args.change.env.as_deref())?;
    if env_def.protected && reason.is_none() {
        return Err(Error::BadOption {
            option: "--reason".into(),
            message: format!(
                "`rollout {word}` on a protected environment needs a written reason (recorded): pass --reason \"…\""
            ),
        });
    }
    if crate::permissions::needs_confirmation(&env_def, false, args.change.yes) {
        super::run::confirm(&env_def.name, &name)?;
    }
    let (rt, session, env) = open(global, args.change.env.as_deref(), &name, reason)?;
    let targets = all_targets(&env);
    let (seen, unreachable) = look(&session, &targets);
    let out = session.effects.output().clone();
    for (h, e) in &unreachable {
        out.log(Level::Warn, format!("{h} did not answer: {e}"));
    }
    let Some(seen) = seen.filter(|s| !s.state.phase.ended()) else {
        session.effects.close();
        return Err(Error::Message(format!(
            "no rollout is running on {} (nothing was asked); `runbook rollout status -e {}` shows the last one",
            env.name, env.name
        )));
    };
    let request = rollout::Request {
        id: session.info.id.clone(),
        action,
        actor: session.info.actor.clone(),
        reason: reason.map(|r| r.trim().to_owned()),
        machine: std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
        pid: std::process::id(),
        at: rollout::now_rfc3339(),
        obeyed_at: None,
        outcome: None,
    };
    let clock = Instant::now();
    let result = if seen.alive {
        ask(&session, &env, &seen, &request, args.wait)
    } else {
        match action {
            Action::Pause | Action::Resume => Err(ControlError::RunnerGone {
                run: seen.state.run.clone(),
                actor: seen.state.actor.clone(),
                word,
                env: env.name.clone(),
            }),
            Action::Promote | Action::Abort => {
                take_over(&rt, &session, &env, &seen, &request).map(|()| {
                    if action == Action::Abort {
                        format!(
                            "the rollout of {} is aborted: all traffic is on the stable release, {} is marked bad, the dead run's lock is gone",
                            seen.state.version, seen.state.release
                        )
                    } else {
                        format!(
                            "the rollout of {} is promoted: every host is on {}, the lock is released",
                            seen.state.version, seen.state.release
                        )
                    }
                })
            }
        }
    };
    audit_control(&session, &name, &seen, &result, clock.elapsed());
    session.effects.close();
    match result {
        Ok(said) => {
            out.log(Level::Info, format!("{}: {said}", env.name));
            Ok(())
        }
        Err(e) => Err(Error::Message(e.to_string())),
    }
}

/// The audit record of a control request, locally and on the hosts that keep the state.
fn audit_control(
    session: &crate::session::Session,
    name: &str,
    seen: &Seen,
    result: &Result<String, ControlError>,
    took: std::time::Duration,
) {
    let mut record = super::audit_record(
        session,
        name,
        "",
        if result.is_ok() { "success" } else { "failed" },
        took,
    );
    record.hosts.clone_from(&seen.state.hosts);
    record
        .args
        .insert("rollout_run".into(), seen.state.run.clone());
    record
        .args
        .insert("release".into(), seen.state.release.clone());
    if let Err(e) = &result {
        record.error = Some(e.to_string());
    }
    super::write_audit(session, &record, true);
}

/// A live runner: the request left on the hosts that keep the state, then watched until
/// the runner says it obeyed it (or `wait` ends: the request stays, the runner takes it
/// at its next window).
fn ask(
    session: &crate::session::Session,
    env: &crate::inventory::Environment,
    seen: &Seen,
    request: &rollout::Request,
    wait: Duration,
) -> Result<String, ControlError> {
    let on = targets_named(env, &seen.on);
    let failed = rollout::post(&session.effects, &on, &request.clone());
    if failed.len() == on.len() {
        return Err(ControlError::NotLeft { failed });
    }
    let clock = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let (now, _) = look(session, &on);
        if let Some(s) = now.filter(|s| s.state.run == seen.state.run)
            && let Some(r) = s.state.requests.iter().find(|r| r.id == request.id)
        {
            return Ok(format!(
                "the runner obeyed in {:.1} s: {}",
                clock.elapsed().as_secs_f64(),
                r.outcome.as_deref().unwrap_or("done")
            ));
        }
        if clock.elapsed() >= wait {
            return Ok(format!(
                "asked; the runner has not taken the request within {} s (it reads requests while a window runs): `runbook rollout status -e {}` shows when it does",
                wait.as_secs(),
                env.name
            ));
        }
    }
}

/// The runner is gone: this command finishes the rollout itself, with the strategy's
/// `take_over`, then records how it ended in the state on the hosts.
fn take_over(
    rt: &tokio::runtime::Runtime,
    session: &std::sync::Arc<crate::session::Session>,
    env: &crate::inventory::Environment,
    seen: &Seen,
    request: &rollout::Request,
) -> Result<(), ControlError> {
    let s = &seen.state;
    let word = request.action.as_str();
    let why = format!(
        "rollout {word} by {} after its runner (run {} by {}) died at {}%{}",
        request.actor,
        s.run,
        s.actor,
        s.weight,
        request
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    let output = session.effects.output().clone();
    output.log(
        Level::Warn,
        format!(
            "the run that drove this rollout ({} by {}, pid {} on {}) is gone: finishing the {word} here",
            s.run, s.actor, s.pid, s.machine
        ),
    );
    super::install_signals(rt, session);
    let names = |v: &[String]| -> rhai::Array { v.iter().cloned().map(Into::into).collect() };
    let mut take = rhai::Map::new();
    take.insert("web".into(), names(&s.hosts).into());
    let locked = if s.locked.is_empty() {
        &s.hosts
    } else {
        &s.locked
    };
    take.insert("all".into(), names(locked).into());
    take.insert("release".into(), s.release.clone().into());
    take.insert("version".into(), s.version.clone().into());
    take.insert("action".into(), word.into());
    take.insert("why".into(), why.into());
    // The values reach the script as a constant, never spliced into its text.
    let text = "import \"strategies/canary\" as strategy;\n\
        strategy::take_over(hosts(take.web), hosts(take.all), take.release, take.version, take.action, take.why);\n";
    let name = format!("<rollout {word}>");
    let engine = engine::build(session, Mode::Run, None);
    let mut scope = engine::scope(session);
    scope.push_constant("take", take);
    let result = engine::compile(&engine, &scope, &name, text, &session.sources)
        .and_then(|ast| {
            engine.run_ast_with_scope(&mut scope, &ast).map_err(|e| {
                crate::diagnostic::Diagnostic::from_eval(&e, &name, &session.sources)
                    .redacted(output.redactor())
            })
        })
        .map_err(|d| ControlError::TakeOver(Box::new(d)));
    let released = session.locks.release_all();
    if !released.is_empty() {
        output.log(
            Level::Info,
            format!("deploy lock released on {}", released.join(", ")),
        );
    }
    let mut done: State = s.clone();
    let mut r = request.clone();
    r.obeyed_at = Some(rollout::now_rfc3339());
    r.outcome = Some(match &result {
        Ok(()) => format!("{word} done by `runbook rollout {word}` (the runner was gone)"),
        Err(e) => format!(
            "{word} failed: {}",
            e.to_string().lines().next().unwrap_or("")
        ),
    });
    done.requests.push(r);
    if result.is_ok() {
        if request.action == Action::Abort {
            done.phase = Phase::Aborted;
            done.weight = 0;
        } else {
            done.phase = Phase::Promoted;
            done.weight = 100;
        }
        done.paused_at_ms = None;
    }
    done.updated_ms = rollout::now_ms();
    let on = targets_named(env, &s.hosts);
    for (h, e) in rollout::write(&session.effects, &on, &done) {
        output.log(
            Level::Warn,
            format!("{h}: could not record how the rollout ended: {e}"),
        );
    }
    if result.is_ok() {
        rollout::clear(&session.effects, &on);
    }
    result
}
