//! `ssh::*`: running commands and copying files on a host or on every host of a set at
//! once. Each host's transport comes from the inventory (`transport = "local"` hosts run
//! on this machine).

use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};

use super::context::HostRef;
use super::exec::{argv_of, result_map, run_on, targets, to_rhai};
use super::host_error::HostError;
use crate::effects::Target;
use crate::transport::Program;

fn upload(
    ctx: &NativeCallContext,
    target: &Dynamic,
    local: &str,
    remote: &str,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let result = super::session(ctx).and_then(|session| {
        let (targets, single) = targets(target)?;
        let local = resolve_local(&session, local);
        let mut results = Array::new();
        let mut failures = Vec::new();
        for outcome in session.effects.upload(&targets, &local, remote) {
            match outcome {
                Ok(r) => results.push(result_map(&r).into()),
                Err(e) => failures.push(e),
            }
        }
        if !failures.is_empty() {
            let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
            let redactor = session.effects.output().redactor();
            return Err(HostError::listed(&lines.join("\n"), &failures, &[], redactor).into_rhai());
        }
        Ok(if single {
            results.pop().unwrap_or_default()
        } else {
            results.into()
        })
    });
    super::located(ctx, result)
}

fn download(
    ctx: &NativeCallContext,
    host: HostRef,
    remote: &str,
    local: &str,
) -> Result<Map, Box<EvalAltResult>> {
    let result = super::session(ctx).and_then(|session| {
        let local = resolve_local(&session, local);
        session
            .effects
            .download(&Target::Host(host.0), remote, &local)
            .map(|r| result_map(&r))
            .map_err(|e| to_rhai(&session, &e))
    });
    super::located(ctx, result)
}

/// Local paths in scripts are relative to the project root, like everything else.
fn resolve_local(session: &crate::session::Session, path: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(path);
    match &session.inventory {
        Some(inv) if p.is_relative() => inv.root.join(p),
        _ => p.to_path_buf(),
    }
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod ssh_api {
    /// Copies a local file or directory (relative paths: from the project root) to
    /// `remote` on a host or every host of a set, over the existing connection; modes
    /// and symlinks are kept. A directory's contents land in `remote`.
    #[rhai_fn(name = "upload", return_raw)]
    pub fn upload(
        ctx: NativeCallContext,
        target: Dynamic,
        local: &str,
        remote: &str,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        super::upload(&ctx, &target, local, remote)
    }

    /// Copies `remote` (a file or directory) from one host to `local`.
    #[rhai_fn(name = "download", return_raw)]
    pub fn download(
        ctx: NativeCallContext,
        host: HostRef,
        remote: &str,
        local: &str,
    ) -> Result<Map, Box<EvalAltResult>> {
        super::download(&ctx, host, remote, local)
    }

    /// Runs a program from an argument list on a host or on every host of a set at once
    /// (each argument quoted for the remote shell). A host returns one result map, a set
    /// an array of them. Any failure throws, naming every failed host, unless
    /// `#{ tolerate: true }`: a `HostError` whose `e.host`, `e.command`, `e.code`,
    /// `e.stderr` and `e.kind` ("exit", "timeout", "unreachable", "refused" …) are the
    /// first failed host's, with every failed host in `e.hosts`; it prints as the message.
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
    /// `read` (true: it only reads, so it runs for real in a dry run), `concurrency`
    /// (hosts at once).
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
