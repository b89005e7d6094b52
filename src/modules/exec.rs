//! What `local::*`, `ssh::*` and the modules built on them (`artisan::*`, `release::*` …)
//! share: a [`CommandSpec`] built from an argument list (or an explicitly named raw shell
//! script) plus an options map, a host or host set as targets, and result maps. The script
//! modules themselves are `local.rs` and `ssh.rs`.

use crate::num::ToF64;
use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};

use super::context::{HostRef, HostSet, duration_arg};
use super::host_error::HostError;
use crate::effects::{
    BatchSize, CommandError, CommandResult, Failures, FanOut, HostOutcome, Target,
};
use crate::transport::{CommandSpec, Program};

const OPTION_KEYS: &[&str] = &[
    "cwd",
    "env",
    "timeout",
    "tolerate",
    "stdin",
    "sudo",
    "quiet",
    "concurrency",
    "batch",
    "max_fail",
    "fail",
    "pause",
    "read",
];

pub(super) struct Call {
    pub spec: CommandSpec,
    pub fan: FanOut,
}

pub(super) fn argv_of(argv: &Array) -> Result<Vec<String>, Box<EvalAltResult>> {
    if argv.is_empty() {
        return Err(super::error(
            "the argument list is empty: give at least the program, e.g. [\"php\", \"artisan\", \"up\"]",
        ));
    }
    argv.iter()
        .enumerate()
        .map(|(i, a)| {
            if a.is_string() || a.is_int() || a.is_float() || a.is_bool() {
                Ok(a.to_string())
            } else {
                Err(super::error(format!(
                    "argument {i} is a {}: arguments must be strings or numbers",
                    a.type_name()
                )))
            }
        })
        .collect()
}

pub(crate) fn call(program: Program, opts: &Map) -> Result<Call, Box<EvalAltResult>> {
    let mut spec = CommandSpec::new(program);
    let mut fan = FanOut::new();
    for (key, value) in opts {
        let bad = |what: &str| {
            super::error(format!(
                "option `{key}` must be {what}, got {}",
                value.type_name()
            ))
        };
        match key.as_str() {
            "cwd" => spec.cwd = Some(value.clone().into_string().map_err(|_| bad("a string"))?),
            "stdin" => {
                spec.stdin = Some(
                    value
                        .clone()
                        .into_string()
                        .map_err(|_| bad("a string"))?
                        .into_bytes(),
                );
            }
            "sudo" => {
                spec.sudo = if let Ok(b) = value.as_bool() {
                    b.then(String::new)
                } else {
                    Some(
                        value
                            .clone()
                            .into_string()
                            .map_err(|_| bad("true or a user name"))?,
                    )
                };
            }
            "tolerate" => spec.tolerate = value.as_bool().map_err(|_| bad("true or false"))?,
            "quiet" => spec.quiet = value.as_bool().map_err(|_| bad("true or false"))?,
            "read" => spec.read = value.as_bool().map_err(|_| bad("true or false"))?,
            "timeout" => spec.timeout = Some(duration_arg(value)?),
            "concurrency" => {
                let n = value.as_int().map_err(|_| bad("a number"))?;
                fan.concurrency = Some(
                    usize::try_from(n)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("a positive number"))?,
                );
            }
            "batch" => {
                let items = match value.clone().try_cast::<Array>() {
                    Some(list) => list,
                    None => vec![value.clone()],
                };
                fan.batches = items
                    .iter()
                    .map(|v| {
                        batch_size(v).ok_or_else(|| {
                            bad("a count, a percentage like \"25%\", or a list of them")
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "max_fail" => {
                fan.max_fail_percent = percent(value)
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| bad("a percentage like \"10%\""))?;
            }
            "fail" => {
                fan.fail_fast = match value.clone().into_string().as_deref() {
                    Ok("fast") => true,
                    Ok("continue") => false,
                    _ => return Err(bad("\"fast\" or \"continue\"")),
                };
            }
            "pause" => fan.pause = Some(duration_arg(value)?),
            "env" => {
                let map = value
                    .clone()
                    .try_cast::<Map>()
                    .ok_or_else(|| bad("a map"))?;
                spec.env = map
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
            other => {
                return Err(super::error(format!(
                    "unknown option `{other}` (options: {})",
                    OPTION_KEYS.join(", ")
                )));
            }
        }
    }
    Ok(Call { spec, fan })
}

fn batch_size(v: &Dynamic) -> Option<BatchSize> {
    if let Ok(n) = v.as_int() {
        return usize::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .map(BatchSize::Count);
    }
    percent(v)
        .filter(|p| *p > 0.0 && *p <= 100.0)
        .map(BatchSize::Percent)
}

/// `"25%"`, `25` or `2.5` as a percentage.
fn percent(v: &Dynamic) -> Option<f64> {
    if let Ok(n) = v.as_int() {
        return Some(n.to_f64());
    }
    if let Ok(f) = v.as_float() {
        return Some(f);
    }
    let s = v.clone().into_string().ok()?;
    s.trim().strip_suffix('%').unwrap_or(&s).trim().parse().ok()
}

pub(super) fn result_map(r: &CommandResult) -> Map {
    let mut m = Map::new();
    m.insert("host".into(), r.host.clone().into());
    m.insert("command".into(), crate::quote::join(&r.argv).into());
    m.insert("code".into(), i64::from(r.code).into());
    m.insert("ok".into(), r.ok().into());
    m.insert("stdout".into(), r.stdout.clone().into());
    m.insert("stderr".into(), r.stderr.clone().into());
    m.insert(
        "duration_ms".into(),
        i64::try_from(r.duration.as_millis())
            .unwrap_or(i64::MAX)
            .into(),
    );
    m.insert("dry_run".into(), r.dry_run.into());
    m.insert("skipped".into(), false.into());
    m
}

/// A command's failure as the script's error: a [`HostError`] it can read (or the stop
/// of an interrupt, which no `catch` sees).
pub(super) fn to_rhai(session: &crate::session::Session, err: &CommandError) -> Box<EvalAltResult> {
    if err.is_interrupt() {
        super::interrupted()
    } else {
        HostError::command(err, session.effects.output().redactor()).into_rhai()
    }
}

/// Resolves a `Host` or `HostSet` argument. `true` when a single host was given.
pub(crate) fn targets(target: &Dynamic) -> Result<(Vec<Target>, bool), Box<EvalAltResult>> {
    if let Some(h) = target.clone().try_cast::<HostRef>() {
        return Ok((vec![Target::Host(h.0)], true));
    }
    if let Some(set) = target.clone().try_cast::<HostSet>() {
        if set.0.is_empty() {
            return Err(super::error("the host set is empty: nothing to run on"));
        }
        return Ok((set.0.into_iter().map(Target::Host).collect(), false));
    }
    Err(super::error(format!(
        "expected a Host or HostSet (from host(\"name\") or hosts(\"role\")), got {}",
        target.type_name()
    )))
}

/// Runs on every target; a single host returns one result map, a set returns an array.
pub(crate) fn run_on(
    ctx: &NativeCallContext,
    target: &Dynamic,
    program: Program,
    opts: &Map,
) -> Result<Dynamic, Box<EvalAltResult>> {
    super::located(ctx, run_on_targets(ctx, target, program, opts))
}

pub(super) fn run_on_targets(
    ctx: &NativeCallContext,
    target: &Dynamic,
    program: Program,
    opts: &Map,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let (targets, single) = targets(target)?;
    let call = call(program, opts)?;
    let spec = call.spec;
    fan_out(
        &session,
        &targets,
        single,
        &|_: &Target| spec.clone(),
        &call.fan,
    )
}

/// Runs a per-host command over `targets` and turns the outcomes into the script's
/// result value, or an error naming every failed and every skipped host.
pub(crate) fn fan_out(
    session: &crate::session::Session,
    targets: &[Target],
    single: bool,
    build: &dyn Fn(&Target) -> CommandSpec,
    fan: &FanOut,
) -> Result<Dynamic, Box<EvalAltResult>> {
    fan_out_report(session, targets, single, build, fan).1
}

/// [`fan_out`], also returning the hosts where the command succeeded — also when the
/// whole call fails (what succeeded somewhere still happened there).
pub(crate) fn fan_out_report(
    session: &crate::session::Session,
    targets: &[Target],
    single: bool,
    build: &dyn Fn(&Target) -> CommandSpec,
    fan: &FanOut,
) -> (Vec<String>, Result<Dynamic, Box<EvalAltResult>>) {
    let mut succeeded = Vec::new();
    let result = fan_out_into(session, targets, single, build, fan, &mut succeeded);
    (succeeded, result)
}

fn fan_out_into(
    session: &crate::session::Session,
    targets: &[Target],
    single: bool,
    build: &dyn Fn(&Target) -> CommandSpec,
    fan: &FanOut,
    succeeded: &mut Vec<String>,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let n = targets.len();
    let threshold = fan.threshold(n);
    let outcomes = session.effects.run_many_with(targets, build, fan);
    let mut results = Array::new();
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for (target, outcome) in targets.iter().zip(outcomes) {
        match outcome {
            HostOutcome::Done(Ok(r)) => {
                if r.code == 0 {
                    succeeded.push(target.name().to_owned());
                }
                results.push(result_map(&r).into());
            }
            HostOutcome::Done(Err(e)) if e.is_interrupt() => return Err(super::interrupted()),
            HostOutcome::Done(Err(e)) => {
                results.push(failed_map(&e).into());
                failures.push(e);
            }
            HostOutcome::Skipped => {
                results.push(skipped_map(target.name()).into());
                skipped.push(target.name().to_owned());
            }
        }
    }
    if failures.len() > threshold || (!skipped.is_empty() && !failures.is_empty()) {
        let failures = Failures {
            total: n,
            failed: failures,
            skipped,
        };
        return Err(HostError::fan_out(&failures, session.effects.output().redactor()).into_rhai());
    }
    if single {
        return Ok(results.pop().unwrap_or_default());
    }
    Ok(results.into())
}

fn failed_map(e: &CommandError) -> Map {
    let mut m = Map::new();
    m.insert("host".into(), e.host().to_owned().into());
    m.insert("ok".into(), false.into());
    m.insert("code".into(), i64::from(e.code().unwrap_or(-1)).into());
    m.insert("error".into(), e.to_string().into());
    m.insert("stdout".into(), "".into());
    m.insert("stderr".into(), "".into());
    m.insert("skipped".into(), false.into());
    m
}

fn skipped_map(host: &str) -> Map {
    let mut m = Map::new();
    m.insert("host".into(), host.to_owned().into());
    m.insert("ok".into(), false.into());
    m.insert("code".into(), (-1_i64).into());
    m.insert("skipped".into(), true.into());
    m.insert("stdout".into(), "".into());
    m.insert("stderr".into(), "".into());
    m
}
