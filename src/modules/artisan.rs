//! `artisan::run` — Laravel's artisan on hosts, in the live release or a given one.

use crate::sync::Locked;
use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};

use super::exec::{call, targets};
use crate::effects::Target;
use crate::transport::Program;

fn artisan(
    ctx: &NativeCallContext,
    target: &Dynamic,
    command: &Dynamic,
    opts: &Map,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let (targets, single) = targets(target)?;
    let args: Vec<String> = if let Some(list) = command.clone().try_cast::<Array>() {
        list.iter().map(ToString::to_string).collect()
    } else {
        let text = command
            .clone()
            .into_string()
            .map_err(|_| super::error("the artisan command must be a string or an array"))?;
        shlex::split(&text).ok_or_else(|| {
            super::error(format!(
                "cannot split `{text}` into arguments (unbalanced quotes?)"
            ))
        })?
    };
    if args.is_empty() {
        return Err(super::error("empty artisan command"));
    }
    crate::modules::guard_artisan(ctx, &args)?;
    let reads = crate::permissions::artisan_reads(&args);
    let maintenance = match args[0].as_str() {
        "down" => Some(true),
        "up" => Some(false),
        _ => None,
    };
    if maintenance == Some(true) && !session.effects.dry_run() {
        // Counted before the attempt: a host where `down` half-ran must be lifted too.
        let mut m = session.maintenance.locked();
        m.extend(targets.iter().map(|t| t.name().to_owned()));
        drop(m);
        let names: Vec<&str> = targets.iter().map(Target::name).collect();
        session.locks.note(&names, "maintenance on");
    }
    let mut opts = opts.clone();
    let release = opts.remove("release").map(|v| v.to_string());
    let php = session
        .env
        .as_ref()
        .map_or_else(|| "php".to_owned(), |e| e.php.clone());
    let mut command_line = vec![php, "artisan".to_owned()];
    command_line.extend(args);
    let base = call(Program::Argv(command_line), &opts)?;
    let build = |t: &Target| {
        let mut spec = base.spec.clone();
        spec.read |= reads;
        if spec.cwd.is_none()
            && let Target::Host(h) = t
        {
            spec.cwd = Some(match &release {
                Some(r) => format!("{}/releases/{r}", h.deploy_path),
                None => format!("{}/current", h.deploy_path),
            });
        }
        spec
    };
    let (succeeded, result) =
        super::exec::fan_out_report(&session, &targets, single, &build, &base.fan);
    // Lifted where `up` succeeded, even when it failed elsewhere: those hosts serve.
    if maintenance == Some(false) && !session.effects.dry_run() && !succeeded.is_empty() {
        let mut m = session.maintenance.locked();
        for t in &succeeded {
            m.remove(t);
        }
        drop(m);
        let names: Vec<&str> = succeeded.iter().map(String::as_str).collect();
        session.locks.note(&names, "maintenance off");
    }
    result
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod artisan_api {
    /// Runs `php artisan <command>` on a host or host set, in the live release
    /// (`<deploy_path>/current`). `command` is a string split like a shell would
    /// (`"migrate --force"`) or an array of arguments; each is quoted on the host.
    /// A failure throws a `HostError`, as `ssh::run` does (`e.host`, `e.code` …).
    #[rhai_fn(name = "run", return_raw)]
    pub fn call(
        ctx: NativeCallContext,
        hosts: Dynamic,
        command: Dynamic,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::artisan(&ctx, &hosts, &command, &Map::new()))
    }

    /// `artisan::run` with options: `release` (run in that release instead of the live
    /// one) and every option of `ssh::run` (timeout, tolerate, batch …).
    #[rhai_fn(name = "run", return_raw)]
    pub fn call_opts(
        ctx: NativeCallContext,
        hosts: Dynamic,
        command: Dynamic,
        opts: Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::artisan(&ctx, &hosts, &command, &opts))
    }
}
