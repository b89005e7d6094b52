//! `runbook exec -e ENV [--role R|--hosts PAT] [-i] -- CMD…`: an ad-hoc command on hosts,
//! with the care of a script — an argument vector (never a shell line), the deployers
//! list, a reason and a confirmation on a protected environment, secrets masked, an audit
//! record locally and on every host — and `[aliases]` of runbook.toml on top
//! (`runbook tinker -e production`). The command runs in the live release
//! (`<deploy_path>/current`, else the deploy path). `-i` runs it on one host with the
//! user's terminal attached.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::cli::{ExecArgs, Global};
use crate::effects::{FanOut, HostOutcome, Target};
use crate::error::Error;
use crate::inventory::model::RawAlias;
use crate::inventory::{Environment, Host};
use crate::output::Level;
use crate::transport::CommandSpec;

/// Runs the command in the live release when there is one.
const IN_RELEASE: &str = r#"r=$1; shift
cd "$r/current" 2>/dev/null || cd "$r" 2>/dev/null || true
exec "$@""#;

/// How an alias's own flags are read (`runbook ALIAS -e ENV [--hosts …] [-- EXTRA…]`).
#[derive(Debug, Parser)]
#[command(name = "runbook ALIAS", no_binary_name = true)]
struct AliasCli {
    #[command(flatten)]
    args: ExecArgs,
}

/// `runbook NAME …` for a name that is not a command: an alias, or a clear error.
pub(crate) fn alias(global: &Global, words: &[String]) -> Result<(), Error> {
    let Some((name, rest)) = words.split_first() else {
        return Err(Error::BadOption {
            option: "COMMAND".into(),
            message: "no command given: see `runbook --help`".into(),
        });
    };
    let project = crate::project::Project::load(global.config.as_deref())?;
    let Some(alias) = project.inventory.aliases.get(name).cloned() else {
        let known: Vec<&str> = project
            .inventory
            .aliases
            .keys()
            .map(String::as_str)
            .collect();
        return Err(Error::BadOption {
            option: name.clone(),
            message: format!(
                "no such command or alias (aliases in {}: {}); see `runbook --help`",
                project.inventory.path.display(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        });
    };
    let mut args = AliasCli::try_parse_from(rest)
        .map_err(|e| Error::BadOption {
            option: format!("runbook {name}"),
            message: e.to_string().trim().to_owned(),
        })?
        .args;
    let mut command = alias.command().to_vec();
    command.append(&mut args.command);
    args.command = command;
    if let RawAlias::Full(f) = &alias {
        args.interactive |= f.interactive;
        if args.role.is_none() && args.hosts.is_none() {
            args.role.clone_from(&f.role);
        }
    }
    run(global, args, Some(name))
}

pub(crate) fn run(global: &Global, args: ExecArgs, alias: Option<&str>) -> Result<(), Error> {
    require_command(&args.command)?;
    let project = crate::project::Project::load(global.config.as_deref())?;
    let env = project.env(args.env.as_deref())?;
    let hosts = select_hosts(&project, &env, &args)?;
    let reason = args.reason.clone().filter(|r| !r.trim().is_empty());
    let label = crate::quote::join(&args.command);
    let what = alias.map_or_else(|| "exec".to_owned(), |a| format!("exec ({a})"));

    let rt = super::runtime()?;
    let mut config =
        super::SessionConfig::for_env(&project.inventory, &env, &what, global.verbosity());
    config.info.reason.clone_from(&reason);
    config.info.dry_run = args.dry_run;
    let session = super::session(&rt, config);
    let masked = session
        .effects
        .output()
        .redactor()
        .redact(&label)
        .into_owned();
    let audit = Audit::new(&session, &what, &masked, &args);

    // The checks of a script that changes the environment: who may, why, confirmed.
    super::admit(
        &crate::permissions::Request {
            env: &env,
            script: &what,
            text: "",
            actor: &session.info.actor,
            actor_flag: false,
            reason: reason.as_deref(),
            dry_run: args.dry_run,
        },
        args.yes,
        &format!("`{masked}`"),
        || require_reason(&env, reason.as_deref(), args.dry_run),
        |refused| {
            audit.write(
                "refused",
                Some(refused.to_string()),
                &[],
                std::time::Duration::ZERO,
            );
        },
    )?;

    let clock = Instant::now();
    if args.interactive {
        return run_interactive(&session, &hosts, &args, &masked, &audit, clock);
    }
    super::install_signals(&rt, &session);
    let targets: Vec<Target> = hosts.iter().cloned().map(Target::Host).collect();
    let failed = fan_out(&session, &targets, &args, &label);
    let on: Vec<String> = targets.iter().map(|t| t.name().to_owned()).collect();
    let took = clock.elapsed();
    session.effects.close();
    report(&session, &failed, &on, &masked, &audit, took)
}

/// Refuses an empty command, with an example of one.
fn require_command(command: &[String]) -> Result<(), Error> {
    if command.is_empty() || command[0].trim().is_empty() {
        return Err(Error::BadOption {
            option: "COMMAND".into(),
            message:
                "say what to run after `--`, e.g. `runbook exec -e staging -- php artisan about`"
                    .into(),
        });
    }
    Ok(())
}

/// The hosts `--role` or `--hosts` selects; none is an error that lists the hosts there are.
fn select_hosts(
    project: &crate::project::Project,
    env: &Environment,
    args: &ExecArgs,
) -> Result<Vec<Arc<Host>>, Error> {
    let hosts = match (&args.role, &args.hosts) {
        (Some(role), _) => env.select(Some(role)).map_err(|e| {
            Error::Inventory(crate::error::InventoryError::Invalid {
                path: project.inventory.path.clone(),
                key: format!("env.{}.roles", env.name),
                message: e.to_string(),
            })
        })?,
        (None, pattern) => env.subset(pattern.as_deref(), None).hosts,
    };
    if hosts.is_empty() {
        return Err(Error::BadOption {
            option: "--hosts".into(),
            message: format!(
                "no host of `{}` matches `{}` (hosts: {})",
                env.name,
                args.hosts.as_deref().unwrap_or("*"),
                host_names(&env.hosts)
            ),
        });
    }
    Ok(hosts)
}

/// The hosts' names, comma-separated.
fn host_names(hosts: &[Arc<Host>]) -> String {
    hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An ad-hoc command on a protected environment needs a written reason (unless a dry run).
fn require_reason(env: &Environment, reason: Option<&str>, dry_run: bool) -> Result<(), Error> {
    if env.protected && reason.is_none() && !dry_run {
        return Err(Error::BadOption {
            option: "--reason".into(),
            message: format!(
                "`{}` is protected: an ad-hoc command there needs a written reason, which goes into the audit log; pass --reason \"…\"",
                env.name
            ),
        });
    }
    Ok(())
}

/// How an ad-hoc command is audited: under its `exec` name, with the masked command (and
/// `-i`) as its arguments, on the hosts it ran on.
struct Audit<'a> {
    session: &'a crate::session::Session,
    what: &'a str,
    args: BTreeMap<String, String>,
    dry_run: bool,
}

impl<'a> Audit<'a> {
    /// The audit of `masked` run as `what` with `args`' flags.
    fn new(
        session: &'a crate::session::Session,
        what: &'a str,
        masked: &str,
        args: &ExecArgs,
    ) -> Audit<'a> {
        let mut record_args = BTreeMap::new();
        record_args.insert("command".to_owned(), masked.to_owned());
        if args.interactive {
            record_args.insert("interactive".to_owned(), "true".to_owned());
        }
        Audit {
            session,
            what,
            args: record_args,
            dry_run: args.dry_run,
        }
    }

    /// Writes the record: locally, and on the hosts `on` unless none or a dry run.
    fn write(&self, result: &str, error: Option<String>, on: &[String], took: Duration) {
        let mut r = super::audit_record(self.session, self.what, "", result, took);
        r.args.clone_from(&self.args);
        r.hosts = on.to_vec();
        r.error = error;
        super::write_audit(self.session, &r, !on.is_empty() && !self.dry_run);
    }

    /// The word for a run that was let start, `failed` telling whether it was interrupted.
    fn result(&self, failed: Option<bool>) -> &'static str {
        super::audit_result(self.dry_run, failed)
    }
}

/// `-i`: the command on the first host with the user's terminal attached; its exit code
/// decides the result.
fn run_interactive(
    session: &crate::session::Session,
    hosts: &[Arc<Host>],
    args: &ExecArgs,
    masked: &str,
    audit: &Audit,
    clock: Instant,
) -> Result<(), Error> {
    let output = session.effects.output();
    let host = &hosts[0];
    if hosts.len() > 1 {
        output.log(
            Level::Info,
            format!(
                "with a terminal on {} (the first of {})",
                host.name,
                host_names(hosts)
            ),
        );
    }
    let target = Target::Host(host.clone());
    let result = session
        .effects
        .interactive(&target, &args.command, &host.deploy_path);
    let on = vec![host.name.clone()];
    session.effects.close();
    match result {
        Ok(0) => {
            audit.write(audit.result(None), None, &on, clock.elapsed());
            Ok(())
        }
        Ok(code) => {
            let e = format!("`{masked}` on {} exited with code {code}", host.name);
            audit.write("failed", Some(e.clone()), &on, clock.elapsed());
            Err(Error::Message(e))
        }
        Err(e) => {
            audit.write("failed", Some(e.to_string()), &on, clock.elapsed());
            Err(Error::Message(
                output.redactor().redact(&e.to_string()).into_owned(),
            ))
        }
    }
}

/// What an ad-hoc command left undone across the hosts.
struct Failed {
    /// One line per host that failed or was not run.
    lines: Vec<String>,
    /// A signal stopped it somewhere.
    interrupted: bool,
}

/// Runs the command on every target (in the live release, with `--timeout`), all of them
/// even when one fails, and collects which failed.
fn fan_out(
    session: &crate::session::Session,
    targets: &[Target],
    args: &ExecArgs,
    label: &str,
) -> Failed {
    let build = |t: &Target| {
        let root = match t {
            Target::Host(h) => h.deploy_path.clone(),
            Target::Local => String::new(),
        };
        let mut a: Vec<&str> = vec![&root];
        a.extend(args.command.iter().map(String::as_str));
        let mut spec = CommandSpec::script(label.to_owned(), IN_RELEASE, &a);
        spec.timeout = args.timeout;
        spec
    };
    let fan = FanOut {
        fail_fast: false,
        ..FanOut::new()
    };
    let outcomes = session.effects.run_many_with(targets, &build, &fan);
    let mut failed = Failed {
        lines: Vec::new(),
        interrupted: false,
    };
    for (t, o) in targets.iter().zip(outcomes) {
        match o {
            HostOutcome::Done(Ok(_)) => {}
            HostOutcome::Done(Err(e)) => {
                failed.interrupted |= e.is_interrupt();
                failed
                    .lines
                    .push(format!("- {}", e.to_string().replace('\n', "\n  ")));
            }
            HostOutcome::Skipped => {
                failed.interrupted = true;
                failed
                    .lines
                    .push(format!("- {}: not run (interrupted)", t.name()));
            }
        }
    }
    failed
}

/// Audits the fan-out and says how it went: a one-line success, or which hosts failed.
fn report(
    session: &crate::session::Session,
    failed: &Failed,
    on: &[String],
    masked: &str,
    audit: &Audit,
    took: Duration,
) -> Result<(), Error> {
    let output = session.effects.output();
    if failed.lines.is_empty() {
        audit.write(audit.result(None), None, on, took);
        output.log(
            Level::Info,
            format!(
                "✓ `{masked}` {} on {} host{} ({} ms)",
                if audit.dry_run {
                    "would run"
                } else {
                    "succeeded"
                },
                on.len(),
                if on.len() == 1 { "" } else { "s" },
                took.as_millis()
            ),
        );
        return Ok(());
    }
    let message = output
        .redactor()
        .redact(&format!(
            "`{masked}` failed on {} of {} hosts:\n{}",
            failed.lines.len(),
            on.len(),
            failed.lines.join("\n")
        ))
        .into_owned();
    audit.write(
        audit.result(Some(failed.interrupted)),
        Some(message.clone()),
        on,
        took,
    );
    if failed.interrupted {
        Err(Error::Interrupted { diagnostic: None })
    } else {
        Err(Error::Message(message))
    }
}
