//! The global functions of every script: `hosts()`, `host()`, `run_context()`, `step()`,
//! `secret()`, time helpers and `sleep()`.

use rhai::plugin::*;
use rhai::{Dynamic, EvalAltResult, Map};

use super::context::{HostRef, HostSet, context_map, duration_arg};

fn host_named(ctx: &NativeCallContext, name: &str) -> Result<HostRef, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let env = session
        .env
        .as_ref()
        .ok_or_else(|| super::error("no environment selected: pass --env NAME"))?;
    env.host(name).map(HostRef).ok_or_else(|| {
        let known: Vec<&str> = env.hosts.iter().map(|h| h.name.as_str()).collect();
        super::error(format!(
            "environment `{}` has no host `{name}` (hosts: {})",
            env.name,
            known.join(", ")
        ))
    })
}

fn hosts_of(ctx: &NativeCallContext, role: Option<&str>) -> Result<HostSet, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let env = session
        .env
        .as_ref()
        .ok_or_else(|| super::error("no environment selected: pass --env NAME"))?;
    env.select(role).map(HostSet).map_err(super::error)
}

fn sleep_for(ctx: &NativeCallContext, duration: &Dynamic) -> Result<(), Box<EvalAltResult>> {
    let d = duration_arg(duration)?;
    let session = super::session(ctx)?;
    if session.effects.dry_run() {
        return Ok(());
    }
    session.effects.sleep(d).map_err(|_| super::interrupted())
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod core_api {
    use crate::output::{Event, Kind, Outcome};
    use rhai::FnPtr;
    use std::time::Instant;

    /// Every host of the current environment.
    #[rhai_fn(name = "hosts", return_raw)]
    pub fn hosts_all(ctx: NativeCallContext) -> Result<HostSet, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::hosts_of(&ctx, None))
    }

    /// The hosts of a role of the current environment (`"all"` means every host).
    #[rhai_fn(name = "hosts", return_raw)]
    pub fn hosts_role(ctx: NativeCallContext, role: &str) -> Result<HostSet, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::hosts_of(&ctx, Some(role)))
    }

    /// The named hosts of the current environment, as a set (e.g. one batch of a
    /// rolling deploy: `hosts(hosts("web").names.extract(0, 2))`).
    #[rhai_fn(name = "hosts", return_raw)]
    pub fn hosts_named(
        ctx: NativeCallContext,
        names: rhai::Array,
    ) -> Result<HostSet, Box<EvalAltResult>> {
        let mut set = Vec::new();
        for n in names {
            let name = n.into_string().map_err(|t| {
                crate::modules::error(format!("hosts([…]) takes host names (strings), got {t}"))
            })?;
            set.push(crate::modules::located(&ctx, super::host_named(&ctx, &name))?.0);
        }
        Ok(HostSet(set))
    }

    /// One host of the current environment, by name.
    #[rhai_fn(return_raw)]
    pub fn host(ctx: NativeCallContext, name: &str) -> Result<HostRef, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::host_named(&ctx, name))
    }

    /// The run's context as one map: `#{ env, app, args, run }`. Scripts also see these
    /// as constants; stdlib modules (which cannot see the script's scope) call this.
    #[rhai_fn(name = "context", return_raw)]
    pub fn run_context(ctx: NativeCallContext) -> Result<Map, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        Ok(super::context_map(&session))
    }

    /// Runs `body` as a named step: shown with progress, timed, and reported in the
    /// summary and as `step_started`/`step_finished` events. Returns what `body` returns.
    #[rhai_fn(return_raw)]
    pub fn step(
        ctx: NativeCallContext,
        name: &str,
        body: FnPtr,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let output = session.effects.output().clone();
        output.emit(Event::new(Kind::StepStarted).step(name));
        let started = Instant::now();
        let result = body.call_within_context::<Dynamic>(&ctx, ());
        let outcome = match &result {
            Ok(_) if session.effects.dry_run() => Outcome::DryRun,
            Ok(_) => Outcome::Ok,
            Err(e) if matches!(e.unwrap_inner(), EvalAltResult::ErrorTerminated(..)) => {
                Outcome::Aborted
            }
            Err(_) => Outcome::Failed,
        };
        output.emit(
            Event::new(Kind::StepFinished)
                .step(name)
                .result(outcome)
                .duration(started.elapsed()),
        );
        result
    }

    /// Reads a secret from the process environment and registers its value for redaction
    /// in every output. Fails, naming the variable, when it is not set.
    #[rhai_fn(return_raw)]
    pub fn secret(ctx: NativeCallContext, name: &str) -> Result<String, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let value = match std::env::var(name) {
            Ok(v) if !v.is_empty() => {
                session.effects.output().redactor().add(&v);
                Ok(v)
            }
            _ => Err(crate::modules::error(format!(
                "secret `{name}` is not set: export {name}=… in the environment (in CI: add it to the job's secrets)"
            ))),
        };
        crate::modules::located(&ctx, value)
    }

    /// The current UTC time as a compact, sortable stamp: `20261127T013300Z`.
    pub fn timestamp() -> String {
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
    }

    /// Milliseconds since the Unix epoch (for measuring durations in scripts).
    pub fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// Waits, e.g. `sleep("5s")`; Ctrl-C ends the wait (Rhai's own `sleep` would not).
    #[rhai_fn(name = "sleep", return_raw)]
    pub fn sleep_text(ctx: NativeCallContext, duration: &str) -> Result<(), Box<EvalAltResult>> {
        super::sleep_for(&ctx, &Dynamic::from(duration.to_owned()))
    }

    /// Waits `seconds`; Ctrl-C ends the wait.
    #[rhai_fn(name = "sleep", return_raw)]
    pub fn sleep_int(ctx: NativeCallContext, seconds: i64) -> Result<(), Box<EvalAltResult>> {
        super::sleep_for(&ctx, &Dynamic::from(seconds))
    }

    /// Waits `seconds` (fractional); Ctrl-C ends the wait.
    #[rhai_fn(name = "sleep", return_raw)]
    pub fn sleep_float(ctx: NativeCallContext, seconds: f64) -> Result<(), Box<EvalAltResult>> {
        super::sleep_for(&ctx, &Dynamic::from(seconds))
    }
}
