//! `local::*`: running a program on this machine, from an argument list (no shell) or an
//! explicitly named raw shell script, through the effect layer like every command.

use rhai::plugin::*;
use rhai::{Array, EvalAltResult, Map};

use super::exec::{argv_of, call, result_map, to_rhai};
use crate::effects::Target;
use crate::transport::Program;

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
            .map_err(|e| to_rhai(&session, &e))
    });
    super::located(ctx, result)
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod local_api {
    /// Runs a program on this machine from an argument list (no shell involved).
    /// Returns `#{ host, command, code, ok, stdout, stderr, duration_ms, dry_run }`;
    /// a non-zero exit throws a `HostError` (`e.code`, `e.stderr`, `e.kind` …) unless
    /// `#{ tolerate: true }`.
    #[rhai_fn(name = "run", return_raw)]
    pub fn run(ctx: NativeCallContext, argv: Array) -> Result<Map, Box<EvalAltResult>> {
        super::run_local(&ctx, Program::Argv(super::argv_of(&argv)?), &Map::new())
    }

    /// `local::run` with options: `cwd`, `env` (map), `timeout` ("30s"), `tolerate`,
    /// `stdin`, `quiet` (do not stream output), `read` (true: it only reads, so it runs
    /// for real in a dry run).
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
