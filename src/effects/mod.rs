//! The effect layer: the ONE place every command passes through.
//!
//! It applies dry-run (record "would run", return a synthetic success), emits typed events,
//! enforces timeouts, observes cancellation, turns non-zero exits into errors that name the
//! host, command, exit code and the last lines of stderr, and fans out over hosts with a
//! concurrency limit. Modules call [`Effects::run`] / [`Effects::run_many`] and nothing else.

pub mod interrupt;
pub mod redact;

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::inventory::{Host, TransportKind};
use crate::output::{Event, Kind, Level, Outcome, Output};
use crate::transport::ssh::SshPool;
use crate::transport::{self, CommandSpec, ExecError, Finished};
use interrupt::Interrupt;

/// How many stderr lines a failure message carries.
const STDERR_TAIL_LINES: usize = 8;

/// Where a command runs: this machine, or a host of the inventory.
#[derive(Debug, Clone)]
pub enum Target {
    Local,
    Host(Arc<Host>),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Local => "local",
            Target::Host(h) => &h.name,
        }
    }

    fn transport(&self) -> TransportKind {
        match self {
            Target::Local => TransportKind::Local,
            Target::Host(h) => h.transport,
        }
    }
}

/// A command that ran (or, in dry-run, would have run).
#[derive(Debug, Clone)]
pub struct CommandResult {
    pub host: String,
    pub argv: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
    pub dry_run: bool,
}

impl CommandResult {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error(
        "command failed on `{host}`: `{command}` exited with code {code}{}",
        tail_block(stderr_tail)
    )]
    Failed {
        host: String,
        command: String,
        code: i32,
        stderr_tail: Vec<String>,
    },
    #[error(
        "command on `{host}` was killed by a signal: `{command}`{}",
        tail_block(stderr_tail)
    )]
    Killed {
        host: String,
        command: String,
        stderr_tail: Vec<String>,
    },
    #[error("command on `{host}` timed out after {}: `{command}` (it was killed)", humantime::format_duration(*after))]
    Timeout {
        host: String,
        command: String,
        after: Duration,
    },
    #[error("command on `{host}` was interrupted: `{command}`")]
    Interrupted { host: String, command: String },
    #[error("{message}\n  (while running `{command}` on `{host}`)")]
    Unavailable {
        host: String,
        command: String,
        message: String,
    },
}

impl CommandError {
    pub fn host(&self) -> &str {
        match self {
            CommandError::Failed { host, .. }
            | CommandError::Killed { host, .. }
            | CommandError::Timeout { host, .. }
            | CommandError::Interrupted { host, .. }
            | CommandError::Unavailable { host, .. } => host,
        }
    }

    pub fn is_interrupt(&self) -> bool {
        matches!(self, CommandError::Interrupted { .. })
    }
}

fn tail_block(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n  stderr (last lines):");
    for l in lines {
        s.push_str("\n  | ");
        s.push_str(l);
    }
    s
}

fn stderr_tail(stderr: &str) -> Vec<String> {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

pub struct Effects {
    runtime: Handle,
    ssh: std::sync::OnceLock<Result<SshPool, String>>,
    output: Arc<Output>,
    interrupt: Interrupt,
    dry_run: bool,
    max_concurrency: usize,
}

impl Effects {
    pub fn new(
        runtime: Handle,
        output: Arc<Output>,
        interrupt: Interrupt,
        dry_run: bool,
        max_concurrency: usize,
    ) -> Effects {
        Effects {
            runtime,
            ssh: std::sync::OnceLock::new(),
            output,
            interrupt,
            dry_run,
            max_concurrency: max_concurrency.max(1),
        }
    }

    pub fn output(&self) -> &Arc<Output> {
        &self.output
    }
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// The SSH connection pool, created on first use.
    pub fn ssh_pool(&self) -> Result<&SshPool, String> {
        self.ssh
            .get_or_init(|| {
                SshPool::new().map_err(|e| format!("cannot create the ssh control directory: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Master connections opened so far (each host is connected to at most once).
    pub fn ssh_connections(&self) -> usize {
        self.ssh.get().and_then(|p| p.as_ref().ok()).map_or(0, SshPool::opened)
    }

    /// Closes every connection. Called once at the end of a run, whatever its outcome.
    pub fn close(&self) {
        if let Some(Ok(pool)) = self.ssh.get() {
            self.runtime.block_on(pool.close());
        }
    }

    /// Runs one command on one target, blocking the (script) thread until it ends.
    pub fn run(&self, target: &Target, spec: &CommandSpec) -> Result<CommandResult, CommandError> {
        self.runtime.block_on(self.run_async(target, spec))
    }

    /// Runs one command on every target at once (at most `limit` at a time, default from
    /// the inventory), and returns one outcome per target, in the order given.
    pub fn run_many(
        &self,
        targets: &[Target],
        spec: &CommandSpec,
        limit: Option<usize>,
    ) -> Vec<Result<CommandResult, CommandError>> {
        let limit = limit.unwrap_or(self.max_concurrency).max(1);
        self.runtime.block_on(async {
            let semaphore = tokio::sync::Semaphore::new(limit);
            let jobs = targets.iter().map(|t| async {
                let _permit = semaphore.acquire().await;
                self.run_async(t, spec).await
            });
            futures::future::join_all(jobs).await
        })
    }

    async fn run_async(
        &self,
        target: &Target,
        spec: &CommandSpec,
    ) -> Result<CommandResult, CommandError> {
        let argv = spec.program.display_argv();
        let command = crate::quote::join(&argv);
        let host = target.name().to_owned();
        let mut started = Event::new(Kind::CommandStarted)
            .host(&host)
            .argv(argv.clone());
        if spec.quiet {
            // Probes (`readlink current`, `test -e`) are detail: shown with -v only.
            started = started.level(Level::Debug);
        }
        self.output.emit(started);
        if self.dry_run {
            self.output.emit(
                Event::new(Kind::CommandFinished)
                    .host(&host)
                    .code(0)
                    .result(Outcome::DryRun),
            );
            return Ok(CommandResult {
                host,
                argv,
                code: 0,
                stdout: String::new(),
                stderr: String::new(),
                duration: Duration::ZERO,
                dry_run: true,
            });
        }
        if self.interrupt.pending() {
            return Err(CommandError::Interrupted { host, command });
        }
        let on_line = |stream, line: &str| {
            self.output.emit(
                Event::new(Kind::Output)
                    .host(target.name())
                    .stream(stream)
                    .message(line),
            );
        };
        let outcome = match target.transport() {
            TransportKind::Local => transport::local::exec(spec, &self.interrupt, &on_line).await,
            TransportKind::Ssh => match (self.ssh_pool(), target) {
                (Ok(pool), Target::Host(h)) => pool.exec(h, spec, &self.interrupt, &on_line).await,
                (Err(e), _) => Err(ExecError::Unsupported(e)),
                (Ok(_), Target::Local) => {
                    transport::local::exec(spec, &self.interrupt, &on_line).await
                }
            },
        };
        self.finish(host, argv, command, spec, outcome)
    }

    fn finish(
        &self,
        host: String,
        argv: Vec<String>,
        command: String,
        spec: &CommandSpec,
        outcome: Result<Finished, ExecError>,
    ) -> Result<CommandResult, CommandError> {
        let emit =
            |result: Outcome, code: Option<i32>, duration: Duration, message: Option<String>| {
                let mut e = Event::new(Kind::CommandFinished)
                    .host(&host)
                    .result(result)
                    .duration(duration);
                if let Some(c) = code {
                    e = e.code(c);
                }
                if let Some(m) = message {
                    e = e.message(m);
                }
                self.output.emit(e);
            };
        match outcome {
            Ok(f) => {
                let code = f.code.unwrap_or(-1);
                let failed = code != 0;
                emit(
                    if failed && !spec.tolerate {
                        Outcome::Failed
                    } else {
                        Outcome::Ok
                    },
                    Some(code),
                    f.duration,
                    f.code.is_none().then(|| "killed by a signal".to_owned()),
                );
                if failed && !spec.tolerate {
                    let stderr_tail = stderr_tail(&f.stderr);
                    return Err(match f.code {
                        Some(code) => CommandError::Failed {
                            host,
                            command,
                            code,
                            stderr_tail,
                        },
                        None => CommandError::Killed {
                            host,
                            command,
                            stderr_tail,
                        },
                    });
                }
                Ok(CommandResult {
                    host,
                    argv,
                    code,
                    stdout: f.stdout,
                    stderr: f.stderr,
                    duration: f.duration,
                    dry_run: false,
                })
            }
            Err(ExecError::Timeout { after, partial }) => {
                emit(
                    Outcome::Failed,
                    None,
                    partial.duration,
                    Some(format!(
                        "timed out after {}",
                        humantime::format_duration(after)
                    )),
                );
                Err(CommandError::Timeout {
                    host,
                    command,
                    after,
                })
            }
            Err(ExecError::Interrupted { partial }) => {
                emit(Outcome::Aborted, None, partial.duration, None);
                Err(CommandError::Interrupted { host, command })
            }
            Err(ExecError::Disconnected { message, partial }) => {
                emit(Outcome::Failed, None, partial.duration, Some(message.clone()));
                Err(CommandError::Unavailable {
                    host,
                    command,
                    message,
                })
            }
            Err(other) => {
                let message = other.to_string();
                emit(Outcome::Failed, None, Duration::ZERO, Some(message.clone()));
                Err(CommandError::Unavailable {
                    host,
                    command,
                    message,
                })
            }
        }
    }
}
