//! One file per CLI command; shared set-up (runtime, output, session) lives here.

pub(crate) mod adopt;
pub(crate) mod audit;
pub(crate) mod check;
pub(crate) mod disconnect;
pub(crate) mod doc;
pub(crate) mod exec;
pub(crate) mod hosts;
pub(crate) mod init;
pub(crate) mod list;
pub(crate) mod lock;
pub(crate) mod recover;
pub(crate) mod repl;
mod repl_helper;
pub(crate) mod rollout;
pub(crate) mod run;
pub(crate) mod status;
pub(crate) mod unlock;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::Error;
use crate::inventory::Environment;
use crate::session::Session;

/// Runs the command `cli` names.
pub(crate) fn dispatch(cli: crate::cli::Cli) -> Result<(), Error> {
    let global = &cli.global;
    match cli.command {
        crate::cli::Command::Run(args) => run::run(global, args),
        crate::cli::Command::Check(args) => check::run(global, &args),
        crate::cli::Command::Hosts(args) => hosts::run(global, &args),
        crate::cli::Command::List(args) => list::run(global, &args),
        crate::cli::Command::Doc(args) => doc::run(&args),
        crate::cli::Command::Repl(args) => repl::run(global, &args),
        crate::cli::Command::Unlock(args) => unlock::run(global, &args),
        crate::cli::Command::Adopt(args) => adopt::run(global, &args),
        crate::cli::Command::Recover(args) => recover::run(global, &args),
        crate::cli::Command::Disconnect(args) => disconnect::run(global, &args),
        crate::cli::Command::Status(args) => status::status(global, &args),
        crate::cli::Command::Releases(args) => status::releases(global, &args),
        crate::cli::Command::Lock(args) => lock::run(global, &args),
        crate::cli::Command::Rollout(args) => rollout::run(global, &args),
        crate::cli::Command::Exec(args) => exec::run(global, args, None),
        crate::cli::Command::Alias(words) => exec::alias(global, &words),
        crate::cli::Command::Audit(args) => audit::run(global, &args),
        crate::cli::Command::Completions(args) => {
            let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_complete::generate(args.shell, &mut cmd, "runbook", &mut text);
            crate::output::stdout(&String::from_utf8_lossy(&text))
        }
        crate::cli::Command::Definitions(args) => doc::definitions(&args.dir),
        crate::cli::Command::Init => init::run(),
        crate::cli::Command::Man => {
            let cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut text)
                .map_err(|e| Error::Read {
                    path: "stdout".into(),
                    source: e,
                })?;
            crate::output::stdout(&String::from_utf8_lossy(&text))
        }
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

pub(crate) use crate::origin::{actor, run_id};
pub(crate) use crate::session::{
    SessionConfig, audit_record, audit_refusal, open as session, write_audit,
};

/// What a fleet-wide command (`adopt`, `recover`) starts with: its environment — on a
/// protected one only with `yes` — and a session on it, with the runtime it needs.
pub(crate) fn fleet_command(
    global: &crate::cli::Global,
    env: Option<&str>,
    yes: bool,
    name: &str,
) -> Result<(tokio::runtime::Runtime, Arc<Session>, Arc<Environment>), Error> {
    let project = crate::project::Project::load(global.config.as_deref())?;
    let env = project.env(env)?;
    if env.protected && !yes {
        return Err(Error::NotConfirmed {
            env: env.name.clone(),
        });
    }
    let rt = runtime()?;
    let session = session(
        &rt,
        SessionConfig::for_env(&project.inventory, &env, name, global.verbosity()),
    );
    Ok((rt, session, env))
}

/// A runtime, a session on environment `env` for command `name` (with `reason` recorded)
/// and the environment. With `confirm: Some(yes)`, a protected environment is confirmed
/// first (unless `yes`).
pub(crate) type Opened = (tokio::runtime::Runtime, Arc<Session>, Arc<Environment>);

pub(crate) fn open_env(
    global: &crate::cli::Global,
    env: Option<&str>,
    name: &str,
    reason: Option<&str>,
    confirm: Option<bool>,
) -> Result<Opened, Error> {
    let project = crate::project::Project::load(global.config.as_deref())?;
    let env = project.env(env)?;
    if let Some(yes) = confirm
        && crate::permissions::needs_confirmation(&env, false, yes)
    {
        run::confirm(&env.name, name)?;
    }
    let rt = runtime()?;
    let mut config = SessionConfig::for_env(&project.inventory, &env, name, global.verbosity());
    config.info.reason = reason.map(|r| r.trim().to_owned());
    let session = session(&rt, config);
    Ok((rt, session, env))
}

/// SIGINT, SIGTERM and SIGHUP for the session's run: the first stops the running
/// command, the third ends every connection at once.
pub(crate) fn install_signals(rt: &tokio::runtime::Runtime, session: &Session) {
    let effects = session.effects.clone();
    crate::signal::install(
        rt.handle(),
        session.effects.interrupt().clone(),
        session.effects.output().clone(),
        move || effects.kill_connections_now(),
    );
}

/// Whether a run may start, decided before any connection is made: who may
/// ([`crate::permissions::admit`]), then the command's own `check`, then on a protected
/// environment the terminal's confirmation, asked to run `shown`. A refusal is handed to
/// `audit_refused` before it is returned.
pub(crate) fn admit(
    request: &crate::permissions::Request,
    yes: bool,
    shown: &str,
    check: impl FnOnce() -> Result<(), Error>,
    audit_refused: impl FnOnce(&Error),
) -> Result<crate::permissions::ScriptKind, Error> {
    let admitted = crate::permissions::admit(request).and_then(|kind| {
        check()?;
        if crate::permissions::needs_confirmation(request.env, request.dry_run, yes) {
            run::confirm(&request.env.name, shown)?;
        }
        Ok(kind)
    });
    if let Err(refused) = &admitted {
        audit_refused(refused);
    }
    admitted
}

/// The audit log's word for how a run that was let start ended: `failed` is `None` for a
/// success, else whether the failure was an interruption.
pub(crate) fn audit_result(dry_run: bool, failed: Option<bool>) -> &'static str {
    match failed {
        None if dry_run => "dry_run",
        None => "success",
        Some(true) => "aborted",
        Some(false) => "failed",
    }
}

/// Writes `text` (and a final newline if it lacks one) to stdout through
/// [`crate::output::stdout`]: a reader that went away (`| head`) ends it quietly.
pub(crate) fn print(text: &str) {
    let _ = if text.ends_with('\n') {
        crate::output::stdout(text)
    } else {
        crate::output::stdout(&format!("{text}\n"))
    };
}

/// `KEY=VALUE` pairs into a map; keys must be identifiers.
pub(crate) fn parse_args(pairs: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::BadArg { arg: pair.clone() });
        };
        let valid = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::BadArg { arg: pair.clone() });
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_arguments_are_key_value_strings() {
        let args = parse_args(&["ref=v1.2.3".into(), "note=a=b".into()]).unwrap();
        assert_eq!(args["ref"], "v1.2.3");
        assert_eq!(args["note"], "a=b");
        assert!(parse_args(&["noequals".into()]).is_err());
        assert!(parse_args(&["1x=y".into()]).is_err());
        assert!(parse_args(&["=y".into()]).is_err());
    }
}
