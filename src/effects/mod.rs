//! The effect layer: the ONE place every command passes through.
//!
//! It applies dry-run (record "would run", return a synthetic success), emits typed events,
//! enforces timeouts, observes cancellation, turns non-zero exits into errors that name the
//! host, command, exit code and the last lines of stderr, and fans out over hosts with a
//! concurrency limit. Modules call [`Effects::run`] / [`Effects::run_many`] and nothing else.
//! HTTP requests and mail pass through it too ([`Effects::http_read`], [`Effects::http_send`]
//! in `http.rs`), and every wait for the runtime goes through the one bridge (`bridge.rs`).

pub(crate) mod bridge;
pub(crate) mod confirm;
mod failures;
mod host_error;
pub(crate) mod http;
mod transfer_error;
pub(crate) use crate::interrupt;

use crate::num::ToF64;
use crate::sync::Locked;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::inventory::{Host, TransportKind};
use crate::output::{Event, Kind, Level, Outcome, Output};
use crate::transport::ssh::{NoControlDir, SshPool};
use crate::transport::{self, CommandSpec, ErrorKind, ExecError, Finished, transfer};
pub(crate) use failures::Failures;
pub(crate) use host_error::HostError;
use interrupt::Interrupt;
pub(crate) use transfer_error::TransferError;

/// How many stderr lines a failure message carries.
const STDERR_TAIL_LINES: usize = 8;

/// Where a command runs: this machine, or a host of the inventory.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Local,
    Host(Arc<Host>),
}

impl Target {
    pub(crate) fn name(&self) -> &str {
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

/// How a command fans out over a host set.
#[derive(Debug, Clone, Default)]
pub(crate) struct FanOut {
    /// Hosts in flight at once (default: the inventory's `max_concurrency`).
    pub concurrency: Option<usize>,
    /// Rolling batches; the last size repeats. Empty: one batch of every host.
    pub batches: Vec<BatchSize>,
    /// Failures tolerated, as a percentage of the whole set (not per batch).
    pub max_fail_percent: f64,
    /// Stop starting hosts once failures pass `max_fail_percent` (otherwise run all).
    pub fail_fast: bool,
    /// Wait between batches.
    pub pause: Option<Duration>,
    /// Start every batch even after a signal (shielded housekeeping only).
    pub shielded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BatchSize {
    Count(usize),
    Percent(f64),
}

impl FanOut {
    pub(crate) fn new() -> FanOut {
        FanOut {
            fail_fast: true,
            ..FanOut::default()
        }
    }

    /// How many failed hosts are tolerated out of `n`.
    pub(crate) fn threshold(&self, n: usize) -> usize {
        crate::num::saturating_usize(((self.max_fail_percent / 100.0) * n.to_f64()).floor())
    }

    /// The batch sizes for `n` hosts: each at least 1, the last size repeating.
    pub(crate) fn batch_sizes(&self, n: usize) -> Vec<usize> {
        if self.batches.is_empty() || n == 0 {
            return vec![n];
        }
        let size_of = |b: &BatchSize| match *b {
            BatchSize::Count(c) => c.max(1),
            BatchSize::Percent(p) => {
                crate::num::saturating_usize((p / 100.0 * n.to_f64()).ceil()).max(1)
            }
        };
        let mut sizes = Vec::new();
        let mut left = n;
        let mut spec = self.batches.iter();
        let mut last = 1;
        while left > 0 {
            if let Some(b) = spec.next() {
                last = size_of(b);
            }
            let take = last.min(left);
            sizes.push(take);
            left -= take;
        }
        sizes
    }
}

/// What happened on one host of a fan-out.
#[derive(Debug)]
pub(crate) enum HostOutcome {
    Done(Result<CommandResult, CommandError>),
    /// Not started: an earlier failure stopped the rollout, or Ctrl-C.
    Skipped,
}

/// A command that ran (or, in dry-run, would have run).
#[derive(Debug, Clone)]
pub(crate) struct CommandResult {
    pub host: String,
    pub argv: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
    pub dry_run: bool,
}

impl CommandResult {
    pub(crate) fn ok(&self) -> bool {
        self.code == 0
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CommandError {
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
    #[error("command on `{host}` timed out after {}: `{command}` (it was killed){}", humantime::format_duration(*after), tail_block(stderr_tail))]
    Timeout {
        host: String,
        command: String,
        after: Duration,
        /// What it had written to stderr until then.
        stderr_tail: Vec<String>,
    },
    #[error("command on `{host}` was interrupted: `{command}`")]
    Interrupted { host: String, command: String },
    #[error(
        "{message}\n  (while running `{command}` on `{host}`){}",
        tail_block(stderr_tail)
    )]
    Unavailable {
        host: String,
        command: String,
        message: String,
        /// What the command had written to stderr before the host went away (if it ran).
        stderr_tail: Vec<String>,
        /// Why: the host could not be reached, sudo refused, the program could not start….
        kind: ErrorKind,
    },
}

impl CommandError {
    pub(crate) fn host(&self) -> &str {
        match self {
            CommandError::Failed { host, .. }
            | CommandError::Killed { host, .. }
            | CommandError::Timeout { host, .. }
            | CommandError::Interrupted { host, .. }
            | CommandError::Unavailable { host, .. } => host,
        }
    }

    /// The exit code, when the command ran to an exit.
    pub(crate) fn code(&self) -> Option<i32> {
        match self {
            CommandError::Failed { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn is_interrupt(&self) -> bool {
        matches!(self, CommandError::Interrupted { .. })
    }

    /// Which kind of failure this is (what a script's `e.kind` says).
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            CommandError::Failed { .. } => ErrorKind::Exit,
            CommandError::Killed { .. } => ErrorKind::Signal,
            CommandError::Timeout { .. } => ErrorKind::Timeout,
            CommandError::Interrupted { .. } => ErrorKind::Interrupted,
            CommandError::Unavailable { kind, .. } => *kind,
        }
    }

    /// The command as people read it (its label for runbook's own scripts).
    pub(crate) fn command(&self) -> &str {
        match self {
            CommandError::Failed { command, .. }
            | CommandError::Killed { command, .. }
            | CommandError::Timeout { command, .. }
            | CommandError::Interrupted { command, .. }
            | CommandError::Unavailable { command, .. } => command,
        }
    }

    /// The last lines the command wrote to stderr (empty when it never ran).
    pub(crate) fn stderr_tail(&self) -> &[String] {
        match self {
            CommandError::Failed { stderr_tail, .. }
            | CommandError::Killed { stderr_tail, .. }
            | CommandError::Timeout { stderr_tail, .. }
            | CommandError::Unavailable { stderr_tail, .. } => stderr_tail,
            CommandError::Interrupted { .. } => &[],
        }
    }
}

fn check_code(f: Finished) -> Result<(), TransferError> {
    match f.code {
        Some(0) => Ok(()),
        Some(code) => Err(TransferError::RemoteExit {
            code,
            stderr: f.stderr,
        }),
        None => Err(TransferError::RemoteKilled { stderr: f.stderr }),
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

pub(crate) struct Effects {
    runtime: Handle,
    ssh: std::sync::OnceLock<Result<SshPool, NoControlDir>>,
    output: Arc<Output>,
    interrupt: Interrupt,
    /// Never raised: what shielded housekeeping commands watch instead of `interrupt`.
    calm: Interrupt,
    /// The one place dry-run is decided (the REPL's `:dry` switches it).
    dry_run: std::sync::atomic::AtomicBool,
    max_concurrency: usize,
    /// This run's id, which every command it starts carries in its environment
    /// (`RUNBOOK_RUN`): what a later recovery looks for on the hosts when this run died
    /// with commands still running there.
    run_id: String,
    /// Hosts whose connection failed or was lost during the run.
    lost: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The REPL's question before a change on a protected environment (no hook: none).
    confirm: confirm::Confirm,
}

impl Effects {
    pub(crate) fn new(
        runtime: Handle,
        output: Arc<Output>,
        interrupt: Interrupt,
        dry_run: bool,
        max_concurrency: usize,
        run_id: String,
    ) -> Effects {
        Effects {
            run_id,
            lost: std::sync::Mutex::default(),
            confirm: confirm::Confirm::default(),
            runtime,
            ssh: std::sync::OnceLock::new(),
            output,
            interrupt,
            calm: Interrupt::new(),
            dry_run: std::sync::atomic::AtomicBool::new(dry_run),
            max_concurrency: max_concurrency.max(1),
        }
    }

    pub(crate) fn output(&self) -> &Arc<Output> {
        &self.output
    }

    /// The hook that asks before a change (installed by the REPL for one line).
    pub(crate) fn confirm(&self) -> &confirm::Confirm {
        &self.confirm
    }
    /// Hosts that could not be reached, or whose connection was lost, during this run.
    pub(crate) fn lost_hosts(&self) -> std::collections::BTreeSet<String> {
        self.lost.locked().clone()
    }

    pub(crate) fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }
    pub(crate) fn dry_run(&self) -> bool {
        self.dry_run.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Turns dry-run on or off for everything that follows.
    pub(crate) fn set_dry_run(&self, on: bool) {
        self.dry_run.store(on, std::sync::atomic::Ordering::SeqCst);
    }
    pub(crate) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// The SSH connection pool, created on first use.
    pub(crate) fn ssh_pool(&self) -> Result<&SshPool, NoControlDir> {
        self.ssh
            .get_or_init(|| SshPool::new(&self.run_id))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Ends every SSH master immediately, without the async runtime (forced exit).
    pub(crate) fn kill_connections_now(&self) {
        if let Some(Ok(pool)) = self.ssh.get() {
            pool.kill_masters_now();
        }
    }

    /// Closes every connection. Called once at the end of a run, whatever its outcome.
    pub(crate) fn close(&self) {
        if let Some(Ok(pool)) = self.ssh.get() {
            let closed = bridge::block_on(
                &self.runtime,
                bridge::race(pool.close(), None, Some(Duration::from_secs(5))),
            );
            if closed.is_err() {
                // A master that does not answer is ended the hard way.
                pool.kill_masters_now();
            }
        }
    }

    /// Runs `argv` on one target in `cwd` with the user's terminal attached (`runbook
    /// exec -i`): `php artisan tinker`, a shell. Nothing runs in a dry run. Returns the
    /// exit status.
    pub(crate) fn interactive(
        &self,
        target: &Target,
        argv: &[String],
        cwd: &str,
    ) -> Result<i32, CommandError> {
        let host = target.name().to_owned();
        let command = crate::quote::join(argv);
        if self.dry_run() {
            self.output.log(
                Level::Info,
                format!("[{host}] would run with a terminal: {command}"),
            );
            return Ok(0);
        }
        let line = format!(
            "cd {} 2>/dev/null || cd {}; exec {}",
            crate::quote::join(&[format!("{cwd}/current")]),
            crate::quote::join(&[cwd.to_owned()]),
            command
        );
        let outcome = match (target.transport(), target) {
            (TransportKind::Ssh, Target::Host(h)) => match self.ssh_pool() {
                Ok(pool) => bridge::block_on(&self.runtime, pool.interactive(h, &line)),
                Err(e) => Err(e.into()),
            },
            _ => std::process::Command::new("sh")
                .args(["-c", &line])
                .status()
                .map(|s| s.code().unwrap_or(255))
                .map_err(|e| ExecError::Unsupported(format!("cannot start sh: {e}"))),
        };
        outcome.map_err(|e| CommandError::Unavailable {
            host,
            command,
            message: e.to_string(),
            stderr_tail: Vec::new(),
            kind: e.kind(),
        })
    }

    /// Runs one command on one target, blocking the (script) thread until it ends.
    pub(crate) fn run(
        &self,
        target: &Target,
        spec: &CommandSpec,
    ) -> Result<CommandResult, CommandError> {
        bridge::block_on(&self.runtime, self.run_async(target, spec))
    }

    /// Sleeps `d` on the runtime, ended early by Ctrl-C / SIGTERM (`Err`): also when a
    /// signal came just as the sleep ended.
    pub(crate) fn sleep(&self, d: Duration) -> Result<(), bridge::Stopped> {
        // The timer is made inside the future: made here, outside the runtime, it panics.
        let nap = async move { tokio::time::sleep(d).await };
        let slept = bridge::block_on(
            &self.runtime,
            bridge::race(nap, Some(&self.interrupt), None),
        );
        if slept.is_err() || self.interrupt.pending() {
            return Err(bridge::Stopped::Interrupted);
        }
        Ok(())
    }

    /// [`Effects::run_many`] with a command built per target (paths differ per host).
    pub(crate) fn run_many_with(
        &self,
        targets: &[Target],
        build: &dyn Fn(&Target) -> CommandSpec,
        fan: &FanOut,
    ) -> Vec<HostOutcome> {
        bridge::block_on(&self.runtime, self.run_many_async(targets, build, fan))
    }

    async fn run_many_async(
        &self,
        targets: &[Target],
        build: &dyn Fn(&Target) -> CommandSpec,
        fan: &FanOut,
    ) -> Vec<HostOutcome> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let n = targets.len();
        let threshold = fan.threshold(n);
        let limit = fan.concurrency.unwrap_or(self.max_concurrency).max(1);
        let failures = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let mut outcomes: Vec<HostOutcome> = Vec::with_capacity(n);
        let sizes = fan.batch_sizes(n);
        let mut start = 0;
        for (index, size) in sizes.iter().enumerate() {
            let end = (start + size).min(n);
            let batch = &targets[start..end];
            if stop.load(Ordering::SeqCst) || (self.interrupt.pending() && !fan.shielded) {
                outcomes.extend(batch.iter().map(|_| HostOutcome::Skipped));
                start = end;
                continue;
            }
            if sizes.len() > 1 {
                let names: Vec<&str> = batch.iter().map(Target::name).collect();
                self.output.log(
                    Level::Info,
                    format!("batch {}/{}: {}", index + 1, sizes.len(), names.join(", ")),
                );
            }
            let semaphore = tokio::sync::Semaphore::new(limit);
            let jobs = batch.iter().map(|t| async {
                // The first `limit` hosts start together whatever happens meanwhile (a
                // command can end before the next host's turn is even polled); a host
                // that waits for a slot is not started after a failure stopped the rest.
                let _permit = if let Ok(p) = semaphore.try_acquire() {
                    Some(p)
                } else {
                    let p = semaphore.acquire().await.ok();
                    if stop.load(Ordering::SeqCst) {
                        return HostOutcome::Skipped;
                    }
                    p
                };
                let result = self.run_async(t, &build(t)).await;
                if let Err(e) = &result {
                    let failed = failures.fetch_add(1, Ordering::SeqCst) + 1;
                    if e.is_interrupt() || (fan.fail_fast && failed > threshold) {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
                HostOutcome::Done(result)
            });
            outcomes.extend(futures::future::join_all(jobs).await);
            start = end;
            let more = start < n && !stop.load(Ordering::SeqCst);
            if let (Some(pause), true) = (fan.pause, more) {
                // A signal ends the pause; the next batch then is not started.
                let _ = bridge::race(tokio::time::sleep(pause), Some(&self.interrupt), None).await;
            }
        }
        outcomes
    }

    /// Copies a local file or directory to `remote` on every target (modes kept).
    pub(crate) fn upload(
        &self,
        targets: &[Target],
        local: &Path,
        remote: &str,
    ) -> Vec<Result<CommandResult, CommandError>> {
        self.upload_each(targets, local, &|_: &Target| remote.to_owned())
    }

    /// [`Effects::upload`] to a path per target. `local` is prepared ONCE (a directory
    /// packed into one temporary file, a file sent as it is) and sent to every target at
    /// once, at most `max_concurrency` in flight, each reading the same file through its
    /// own bounded buffer: the runner's memory does not grow with the size or the hosts.
    pub(crate) fn upload_each(
        &self,
        targets: &[Target],
        local: &Path,
        remote: &dyn Fn(&Target) -> String,
    ) -> Vec<Result<CommandResult, CommandError>> {
        self.upload_each_between(targets, None, local, remote, &[])
    }

    /// [`Effects::upload_each`], each host's upload between `first` and the steps of
    /// `then`, in order, on that host (a release directory made; the artifact unpacked,
    /// the release finished): every host goes on to its next step as soon as ITS previous
    /// one is done, not when the slowest host's is, and the packing runs while `first`
    /// does. A host whose step fails (or, tolerated, exits non-zero) goes no further; its
    /// result is that step's, else the last step's.
    pub(crate) fn upload_each_between(
        &self,
        targets: &[Target],
        first: Option<&dyn Fn(&Target) -> CommandSpec>,
        local: &Path,
        remote: &dyn Fn(&Target) -> String,
        then: &[&dyn Fn(&Target) -> CommandSpec],
    ) -> Vec<Result<CommandResult, CommandError>> {
        use futures::FutureExt;
        type Prepared = Result<Arc<transfer::Upload>, Arc<TransferError>>;
        bridge::block_on(&self.runtime, async {
            let paths: Vec<Result<(String, String), transfer::NoName>> = targets
                .iter()
                .map(|t| transfer::split(&remote(t)))
                .collect();
            // One preparation per distinct destination name (the top-level entry of the
            // packed tree); a deploy sends one name everywhere. Started now, awaited by
            // each host when it is ready for it.
            let mut prepared: std::collections::BTreeMap<
                String,
                futures::future::Shared<futures::future::BoxFuture<'_, Prepared>>,
            > = std::collections::BTreeMap::new();
            if !self.dry_run() {
                for (_, name) in paths.iter().flatten() {
                    if prepared.contains_key(name) {
                        continue;
                    }
                    let (from, entry) = (local.to_owned(), name.clone());
                    let packing = tokio::task::spawn_blocking(move || {
                        transfer::Upload::prepare(&from, &entry)
                    });
                    let hosts = targets.len();
                    let made = async move {
                        let made = packing
                            .await
                            .map_err(TransferError::PackingStopped)
                            .and_then(|r| {
                                r.map_err(|source| TransferError::Read {
                                    path: local.to_owned(),
                                    source,
                                })
                            });
                        if let Ok(up) = &made {
                            self.log_prepared(local, up, hosts);
                        }
                        made.map(Arc::new).map_err(Arc::new)
                    };
                    prepared.insert(name.clone(), made.boxed().shared());
                }
            }
            let limit = tokio::sync::Semaphore::new(self.max_concurrency);
            let jobs = targets.iter().zip(&paths).map(|(t, path)| {
                let argv = vec!["upload".to_owned(), local.display().to_string(), remote(t)];
                let (limit, prepared) = (&limit, &prepared);
                async move {
                    let _slot = limit.acquire().await;
                    if let Some(first) = first {
                        self.run_async(t, &first(t)).await?;
                    }
                    let sent = self
                        .transfer(t, argv, async move {
                            let (parent, name) = path.clone()?;
                            let up = match prepared.get(&name) {
                                Some(made) => {
                                    made.clone().await.map_err(TransferError::Prepared)?
                                }
                                None => return Err(TransferError::NotPrepared),
                            };
                            match t {
                                Target::Host(h) if h.transport == TransportKind::Ssh => {
                                    let f = self
                                        .ssh_pool()?
                                        .exec(
                                            h,
                                            &up.command(&parent, &name),
                                            &self.interrupt,
                                            &|_, _| {},
                                        )
                                        .await?;
                                    check_code(f)
                                }
                                _ => tokio::task::spawn_blocking(move || {
                                    up.receive_here(Path::new(&parent), &name)
                                })
                                .await
                                .map_err(TransferError::CopyStopped)?
                                .map_err(TransferError::Local),
                            }
                        })
                        .await
                        .map(|(done, _)| done)?;
                    let mut last = sent;
                    for step in then {
                        last = self.run_async(t, &step(t)).await?;
                        if !last.ok() {
                            break;
                        }
                    }
                    Ok(last)
                }
            });
            futures::future::join_all(jobs).await
        })
    }

    fn log_prepared(&self, local: &Path, up: &transfer::Upload, hosts: usize) {
        let how = if up.compressed() {
            "packed once, gzip'd"
        } else if up.packed() {
            "packed once, plain tar (compression saved under a tenth)"
        } else {
            "sent as it is"
        };
        self.output.log(
            Level::Debug,
            format!(
                "upload: {} {how} ({} bytes) for {hosts} host(s)",
                local.display(),
                up.len(),
            ),
        );
    }

    /// Copies `remote` (a file or directory) from one target to `local`, streamed
    /// through a temporary archive beside `local` (never held in memory).
    pub(crate) fn download(
        &self,
        target: &Target,
        remote: &str,
        local: &Path,
    ) -> Result<CommandResult, CommandError> {
        let argv = vec![
            "download".to_owned(),
            remote.to_owned(),
            local.display().to_string(),
        ];
        let work = async {
            let (parent, name) = transfer::split(remote)?;
            // Unpack beside the destination, then move into place.
            let local_parent = local
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::create_dir_all(local_parent).map_err(TransferError::Local)?;
            let staging = tempfile::Builder::new()
                .prefix(".runbook-download-")
                .tempdir_in(local_parent)
                .map_err(TransferError::Local)?;
            let archive = match target {
                Target::Host(h) if h.transport == TransportKind::Ssh => {
                    let archive = tempfile::Builder::new()
                        .prefix(".runbook-download-")
                        .suffix(".tar.gz")
                        .tempfile_in(local_parent)
                        .map_err(TransferError::Local)?;
                    let spec = transfer::download_command(&parent, &name, archive.path())?;
                    let f = self
                        .ssh_pool()?
                        .exec(h, &spec, &self.interrupt, &|_, _| {})
                        .await?;
                    check_code(f)?;
                    archive
                }
                // Unpacked right here: compressing it would be work undone at once.
                _ => transfer::tar_to_file(&Path::new(&parent).join(&name), &name).map_err(
                    |source| TransferError::Read {
                        path: remote.into(),
                        source,
                    },
                )?,
            };
            transfer::unpack_file(archive.path(), staging.path()).map_err(TransferError::Local)?;
            std::fs::rename(staging.path().join(&name), local).map_err(|source| {
                TransferError::Move {
                    path: local.to_owned(),
                    source,
                }
            })
        };
        bridge::block_on(&self.runtime, self.transfer(target, argv, work)).map(|(done, _)| done)
    }

    /// Runs in-process work (an archive, a transfer) as one command: the same events,
    /// dry-run ("would run", nothing done) and error shape as a process. Returns what the
    /// work returned, or `None` in a dry run (it did not run). The work's error is its
    /// core's own (a message will do): the failure says it as it is, after the host.
    pub(crate) fn task<T, E>(
        &self,
        target: &Target,
        argv: Vec<String>,
        work: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> Result<Option<T>, CommandError>
    where
        T: Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let work = async move {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(TransferError::TaskStopped)?
                .map_err(|e| TransferError::Task(e.into()))
        };
        bridge::block_on(&self.runtime, self.transfer(target, argv, work)).map(|(_, value)| value)
    }

    /// Events, dry-run and error shape shared by uploads, downloads and tasks. The work's
    /// value comes back beside the result (`None` in a dry run: the work did not run).
    async fn transfer<T>(
        &self,
        target: &Target,
        argv: Vec<String>,
        work: impl std::future::Future<Output = Result<T, TransferError>>,
    ) -> Result<(CommandResult, Option<T>), CommandError> {
        let host = target.name().to_owned();
        let command = crate::quote::join(&argv);
        // A download only reads the host; an upload or a task changes it.
        if !self.dry_run() && argv.first().is_none_or(|a| a != "download") {
            let what = confirm::describe(&self.output.redactor().redact(&command), &host);
            if self.confirm.check(&what).is_err() {
                return Err(CommandError::Interrupted { host, command });
            }
        }
        self.output.emit(
            Event::new(Kind::CommandStarted)
                .host(&host)
                .argv(argv.clone()),
        );
        let started = std::time::Instant::now();
        let dry = self.dry_run();
        let result = if dry { Ok(None) } else { work.await.map(Some) };
        let outcome = match (&result, dry) {
            (_, true) => Outcome::DryRun,
            (Ok(_), _) => Outcome::Ok,
            (Err(_), _) => Outcome::Failed,
        };
        let mut e = Event::new(Kind::CommandFinished)
            .host(&host)
            .result(outcome)
            .duration(started.elapsed());
        if let Err(m) = &result {
            e = e.message(m.to_string());
        }
        self.output.emit(e);
        match result {
            Ok(value) => Ok((
                CommandResult {
                    host,
                    argv,
                    code: 0,
                    stdout: String::new(),
                    stderr: String::new(),
                    duration: started.elapsed(),
                    dry_run: dry,
                },
                value,
            )),
            Err(failure) => Err(CommandError::Unavailable {
                host,
                command,
                message: failure.to_string(),
                stderr_tail: Vec::new(),
                kind: ErrorKind::Error,
            }),
        }
    }

    pub(crate) async fn run_async(
        &self,
        target: &Target,
        spec: &CommandSpec,
    ) -> Result<CommandResult, CommandError> {
        let argv = spec.program.display_argv();
        // runbook's own scripts are named by their label in errors: people read that.
        let command = spec
            .label
            .clone()
            .unwrap_or_else(|| crate::quote::join(&argv));
        let host = target.name().to_owned();
        // A change (not a read, not housekeeping, not a dry run) asks first where a hook
        // says so (the REPL on a protected environment).
        if !spec.read && !spec.silent && !spec.shielded && !self.dry_run() {
            let what = confirm::describe(&self.output.redactor().redact(&command), &host);
            if self.confirm.check(&what).is_err() {
                return Err(CommandError::Interrupted { host, command });
            }
        }
        let emit_events = !spec.silent;
        let mut started = Event::new(Kind::CommandStarted)
            .host(&host)
            .argv(argv.clone());
        if let Some(label) = &spec.label {
            started = started.message(label.clone());
        }
        if spec.read && self.dry_run() {
            // Runs for real: the plan is built on what it reads.
            started = started.data("read", true);
        }
        if spec.quiet {
            // Probes (`readlink current`, `test -e`) are detail: shown with -v only.
            started = started.level(Level::Debug);
        }
        if emit_events {
            self.output.emit(started);
        }
        if self.dry_run() && !spec.read {
            if emit_events {
                self.output.emit(
                    Event::new(Kind::CommandFinished)
                        .host(&host)
                        .code(0)
                        .result(Outcome::DryRun),
                );
            }
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
        if self.interrupt.pending() && !spec.shielded {
            return Err(CommandError::Interrupted { host, command });
        }
        let interrupt = if spec.shielded {
            &self.calm
        } else {
            &self.interrupt
        };
        let on_line = |stream, line: &str| {
            if !emit_events {
                return;
            }
            self.output.emit(
                Event::new(Kind::Output)
                    .host(target.name())
                    .stream(stream)
                    .message(line),
            );
        };
        let started = std::time::Instant::now();
        let outcome = match target.transport() {
            TransportKind::Local => {
                transport::local::exec(spec, &self.run_id, interrupt, &on_line).await
            }
            TransportKind::Ssh => match (self.ssh_pool(), target) {
                (Ok(pool), Target::Host(h)) => pool.exec(h, spec, interrupt, &on_line).await,
                (Err(e), _) => Err(e.into()),
                (Ok(_), Target::Local) => {
                    transport::local::exec(spec, &self.run_id, interrupt, &on_line).await
                }
            },
        };
        self.finish(host, argv, command, spec, outcome, started.elapsed())
    }

    fn finish(
        &self,
        host: String,
        argv: Vec<String>,
        command: String,
        spec: &CommandSpec,
        outcome: Result<Finished, ExecError>,
        // How long the attempt took, connecting included (a failed connection has no
        // `Finished` to tell).
        took: Duration,
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
                if !spec.silent {
                    self.output.emit(e);
                }
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
                    return Err(failure(host, command, &f));
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
                    stderr_tail: stderr_tail(&partial.stderr),
                })
            }
            Err(ExecError::Interrupted { partial }) => {
                emit(Outcome::Aborted, None, partial.duration, None);
                Err(CommandError::Interrupted { host, command })
            }
            Err(ExecError::Disconnected { message, partial }) => {
                self.lost.locked().insert(host.clone());
                emit(
                    Outcome::Failed,
                    None,
                    partial.duration,
                    Some(message.clone()),
                );
                Err(CommandError::Unavailable {
                    host,
                    command,
                    message,
                    stderr_tail: stderr_tail(&partial.stderr),
                    kind: ErrorKind::Unreachable,
                })
            }
            Err(other) => {
                if matches!(other, ExecError::Connect { .. }) {
                    self.lost.locked().insert(host.clone());
                }
                let message = other.to_string();
                emit(Outcome::Failed, None, took, Some(message.clone()));
                Err(CommandError::Unavailable {
                    host,
                    command,
                    message,
                    stderr_tail: Vec::new(),
                    kind: other.kind(),
                })
            }
        }
    }
}

/// The error of a command that exited non-zero, or was killed, where that is not tolerated.
fn failure(host: String, command: String, f: &Finished) -> CommandError {
    let stderr_tail = stderr_tail(&f.stderr);
    match f.code {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_repeat_the_last_size_and_percentages_round_up() {
        let mut f = FanOut::new();
        assert_eq!(f.batch_sizes(5), vec![5]);
        f.batches = vec![
            BatchSize::Count(1),
            BatchSize::Percent(10.0),
            BatchSize::Percent(50.0),
        ];
        assert_eq!(f.batch_sizes(20), vec![1, 2, 10, 7]);
        f.batches = vec![BatchSize::Percent(25.0)];
        assert_eq!(f.batch_sizes(5), vec![2, 2, 1]);
        f.batches = vec![BatchSize::Count(0)];
        assert_eq!(f.batch_sizes(2), vec![1, 1]);
    }

    #[test]
    fn sleep_runs_from_the_script_thread_and_ctrl_c_ends_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let output = Arc::new(Output::new("run".into(), Arc::default()));
        let fx = Effects::new(
            rt.handle().clone(),
            output,
            Interrupt::new(),
            false,
            1,
            "run".into(),
        );
        // Not on a runtime thread, as a script is: the timer must still find its runtime.
        assert_eq!(fx.sleep(Duration::from_millis(10)), Ok(()));
        let raiser = fx.interrupt().clone();
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            raiser.raise();
        });
        let started = std::time::Instant::now();
        assert_eq!(
            fx.sleep(Duration::from_mins(5)),
            Err(bridge::Stopped::Interrupted)
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn max_fail_is_a_share_of_the_whole_set() {
        let mut f = FanOut::new();
        assert_eq!(f.threshold(20), 0);
        f.max_fail_percent = 10.0;
        assert_eq!(f.threshold(20), 2);
        assert_eq!(f.threshold(5), 0);
    }
}
