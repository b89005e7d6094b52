//! Script-facing modules. Each is a thin adapter: convert Rhai values, call the plain Rust
//! API (effects, inventory), convert the result back. Doc comments on the exported
//! functions are the API reference (`runbook doc`).

mod artisan;
mod audit;
mod backup;
mod canary;
pub(crate) mod context;
mod exec;
mod globals;
mod health;
pub(crate) mod host_error;
mod local;
mod lock;
mod log;
mod metrics;
mod notify;
mod release;
mod schema;
mod ssh;
mod steps;

use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, NativeCallContext, Position, exported_module};

use crate::session::{Session, SessionRef};

pub(crate) type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

pub(crate) fn register(engine: &mut Engine) {
    crate::diagnostic::register_sentence(|value| {
        value
            .read_lock::<host_error::HostError>()
            .map(|e| e.message().to_owned())
    });
    context::register_types(engine);
    canary::register_types(engine);
    host_error::register_type(engine);
    engine.register_global_module(exported_module!(globals::core_api).into());
    engine.register_static_module("local", exported_module!(local::local_api).into());
    engine.register_static_module("ssh", exported_module!(ssh::ssh_api).into());
    engine.register_static_module("log", exported_module!(log::log_api).into());
    engine.register_static_module("release", exported_module!(release::release_api).into());
    engine.register_static_module("lock", exported_module!(lock::lock_api).into());
    engine.register_static_module("artisan", exported_module!(artisan::artisan_api).into());
    engine.register_static_module("health", exported_module!(health::health_api).into());
    engine.register_static_module("backup", exported_module!(backup::backup_api).into());
    engine.register_static_module("audit", exported_module!(audit::audit_api).into());
    engine.register_static_module("notify", exported_module!(notify::notify_api).into());
    engine.register_static_module("metrics", exported_module!(metrics::metrics_api).into());
    engine.register_static_module("schema", exported_module!(schema::schema_api).into());
    engine.register_static_module("canary", exported_module!(canary::canary_api).into());
    engine.register_static_module("steps", exported_module!(steps::steps_api).into());
}

/// The session behind a native call.
pub(crate) fn session(ctx: &NativeCallContext) -> RhaiResult<Arc<Session>> {
    ctx.tag()
        .and_then(|t| t.clone().try_cast::<SessionRef>())
        .map(|s| s.0)
        .ok_or_else(|| error("internal: no session attached to the engine"))
}

/// A runtime error carrying a message; Rhai fills in the call position.
pub(crate) fn error(message: impl std::fmt::Display) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(Dynamic::from(message.to_string()), Position::NONE).into()
}

/// Refuses an options map with a key outside `allowed`, naming the ones there are.
pub(crate) fn check_keys(
    opts: &rhai::Map,
    allowed: &[&str],
    what: &str,
) -> Result<(), Box<EvalAltResult>> {
    match opts.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(error(format!(
            "unknown {what} option `{k}` (options: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The error that stops a script on Ctrl-C / SIGTERM.
pub(crate) fn interrupted() -> Box<EvalAltResult> {
    EvalAltResult::ErrorTerminated(Dynamic::from("interrupted"), Position::NONE).into()
}

/// Gives an error raised by a native function the position of the call, when Rhai did not
/// (it does not for namespaced calls such as `ssh::run`), so the error shows the line.
pub(crate) fn located<T>(ctx: &NativeCallContext, result: RhaiResult<T>) -> RhaiResult<T> {
    result.map_err(|mut e| {
        if e.position().is_none() {
            e.set_position(ctx.call_position());
        }
        e
    })
}

/// Called first by every runbook-owned operation that changes a host: stops the script
/// (an error `try` cannot catch) when the session is read-only, or when a person asked
/// first (the REPL on a protected environment, [`crate::effects::confirm`]) said no.
/// A dry run changes nothing, so it is not asked about.
pub(crate) fn guard(ctx: &NativeCallContext, op: &str) -> Result<(), Box<EvalAltResult>> {
    let session = session(ctx)?;
    let stop = |m: String| EvalAltResult::ErrorTerminated(m.into(), ctx.call_position()).into();
    session
        .read_only
        .check(op)
        .map_err(|e| stop(e.to_string()))?;
    if session.effects.dry_run() {
        return Ok(());
    }
    session
        .effects
        .confirm()
        .check(op)
        .map_err(|e| stop(e.to_string()))
}

/// Artisan commands that only read (`migrate:status`, `about`, …) pass a read-only gate;
/// any other artisan command is treated as a change.
pub(crate) fn guard_artisan(
    ctx: &NativeCallContext,
    args: &[String],
) -> Result<(), Box<EvalAltResult>> {
    let command = args.first().map_or("", String::as_str);
    if crate::permissions::artisan_reads(args) {
        return Ok(());
    }
    guard(ctx, &format!("artisan::run({command})"))
}
