//! `local::*` and `ssh::*`: running commands. Both build a [`CommandSpec`] from an argument
//! list (or an explicitly named raw shell script) plus an options map, and hand it to the
//! effect layer. `ssh::run` reaches every host of a set at once; each host's transport
//! comes from the inventory (`transport = "local"` hosts run on this machine).

use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};

use super::context::{HostRef, HostSet, duration_arg};
use crate::effects::{CommandError, CommandResult, Target};
use crate::transport::{CommandSpec, Program};

const OPTION_KEYS: &[&str] = &[
    "cwd",
    "env",
    "timeout",
    "tolerate",
    "stdin",
    "quiet",
    "concurrency",
];

pub struct Call {
    pub spec: CommandSpec,
    pub concurrency: Option<usize>,
}

fn argv_of(argv: &Array) -> Result<Vec<String>, Box<EvalAltResult>> {
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

fn call(program: Program, opts: &Map) -> Result<Call, Box<EvalAltResult>> {
    let mut spec = CommandSpec::new(program);
    let mut concurrency = None;
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
                spec.stdin = Some(value.clone().into_string().map_err(|_| bad("a string"))?.into_bytes());
            }
            "sudo" => {
                spec.sudo = if let Ok(b) = value.as_bool() {
                    b.then(String::new)
                } else {
                    Some(value.clone().into_string().map_err(|_| bad("true or a user name"))?)
                };
            }
            "tolerate" => spec.tolerate = value.as_bool().map_err(|_| bad("true or false"))?,
            "quiet" => spec.quiet = value.as_bool().map_err(|_| bad("true or false"))?,
            "timeout" => spec.timeout = Some(duration_arg(value)?),
            "concurrency" => {
                let n = value.as_int().map_err(|_| bad("a number"))?;
                concurrency = Some(
                    usize::try_from(n)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("a positive number"))?,
                );
            }
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
    Ok(Call { spec, concurrency })
}

pub fn result_map(r: &CommandResult) -> Map {
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
    m
}

fn to_rhai(err: CommandError) -> Box<EvalAltResult> {
    if err.is_interrupt() {
        super::interrupted()
    } else {
        super::error(err.to_string())
    }
}

/// Resolves a `Host` or `HostSet` argument. `true` when a single host was given.
fn targets(target: &Dynamic) -> Result<(Vec<Target>, bool), Box<EvalAltResult>> {
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
pub fn run_on(
    ctx: &NativeCallContext,
    target: &Dynamic,
    program: Program,
    opts: &Map,
) -> Result<Dynamic, Box<EvalAltResult>> {
    super::located(ctx, run_on_targets(ctx, target, program, opts))
}

fn run_on_targets(
    ctx: &NativeCallContext,
    target: &Dynamic,
    program: Program,
    opts: &Map,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let (targets, single) = targets(target)?;
    let call = call(program, opts)?;
    let outcomes = session
        .effects
        .run_many(&targets, &call.spec, call.concurrency);
    let mut results = Array::new();
    let mut failures = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(r) => results.push(result_map(&r).into()),
            Err(e) if e.is_interrupt() => return Err(super::interrupted()),
            Err(e) => failures.push(e),
        }
    }
    match failures.len() {
        0 if single => Ok(results.pop().unwrap_or_default()),
        0 => Ok(results.into()),
        1 if targets.len() == 1 => Err(to_rhai(failures.remove(0))),
        n => {
            let mut msg = format!("{n} of {} hosts failed:", targets.len());
            for f in &failures {
                msg.push_str(&format!("\n- {}", f.to_string().replace('\n', "\n  ")));
            }
            Err(super::error(msg))
        }
    }
}

fn run_local(
    ctx: &NativeCallContext,
    program: Program,
    opts: &Map,
) -> Result<Map, Box<EvalAltResult>> {
    let result = super::session(ctx).and_then(|session| {
        let call = call(program, opts)?;
        session
            .effects
            .run(&Target::Local, &call.spec)
            .map(|r| result_map(&r))
            .map_err(to_rhai)
    });
    super::located(ctx, result)
}

#[export_module]
pub mod local_api {
    /// Runs a program on this machine from an argument list (no shell involved).
    /// Returns `#{ host, command, code, ok, stdout, stderr, duration_ms, dry_run }`;
    /// a non-zero exit throws unless `#{ tolerate: true }`.
    #[rhai_fn(name = "run", return_raw)]
    pub fn run(ctx: NativeCallContext, argv: Array) -> Result<Map, Box<EvalAltResult>> {
        super::run_local(&ctx, Program::Argv(super::argv_of(&argv)?), &Map::new())
    }

    /// `local::run` with options: `cwd`, `env` (map), `timeout` ("30s"), `tolerate`,
    /// `stdin`, `quiet` (do not stream output).
    #[rhai_fn(name = "run", return_raw)]
    pub fn run_opts(
        ctx: NativeCallContext,
        argv: Array,
        opts: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        super::run_local(&ctx, Program::Argv(super::argv_of(&argv)?), &opts)
    }

    /// Runs a raw shell script on this machine (`sh -c`). Values are NOT quoted for you:
    /// prefer `local::run` with an argument list.
    #[rhai_fn(name = "shell", return_raw)]
    pub fn shell(ctx: NativeCallContext, script: &str) -> Result<Map, Box<EvalAltResult>> {
        super::run_local(&ctx, Program::Shell(script.to_owned()), &Map::new())
    }

    /// `local::shell` with options (as for `local::run`).
    #[rhai_fn(name = "shell", return_raw)]
    pub fn shell_opts(
        ctx: NativeCallContext,
        script: &str,
        opts: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        super::run_local(&ctx, Program::Shell(script.to_owned()), &opts)
    }
}

#[export_module]
pub mod ssh_api {
    /// Runs a program from an argument list on a host or on every host of a set at once
    /// (each argument quoted for the remote shell). A host returns one result map, a set
    /// an array of them. Any failure throws, naming every failed host, unless
    /// `#{ tolerate: true }`.
    #[rhai_fn(name = "run", return_raw)]
    pub fn run(
        ctx: NativeCallContext,
        target: Dynamic,
        argv: Array,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        super::run_on(
            &ctx,
            &target,
            Program::Argv(super::argv_of(&argv)?),
            &Map::new(),
        )
    }

    /// `ssh::run` with options: `cwd`, `env`, `timeout`, `tolerate`, `stdin`, `quiet`,
    /// `concurrency` (hosts at once).
    #[rhai_fn(name = "run", return_raw)]
    pub fn run_opts(
        ctx: NativeCallContext,
        target: Dynamic,
        argv: Array,
        opts: Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        super::run_on(&ctx, &target, Program::Argv(super::argv_of(&argv)?), &opts)
    }

    /// Runs a raw shell script (for pipelines) on a host or host set. Values are NOT
    /// quoted for you: prefer `ssh::run` with an argument list.
    #[rhai_fn(name = "shell", return_raw)]
    pub fn shell(
        ctx: NativeCallContext,
        target: Dynamic,
        script: &str,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        super::run_on(
            &ctx,
            &target,
            Program::Shell(script.to_owned()),
            &Map::new(),
        )
    }

    /// `ssh::shell` with options (as for `ssh::run`).
    #[rhai_fn(name = "shell", return_raw)]
    pub fn shell_opts(
        ctx: NativeCallContext,
        target: Dynamic,
        script: &str,
        opts: Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        super::run_on(&ctx, &target, Program::Shell(script.to_owned()), &opts)
    }
}
