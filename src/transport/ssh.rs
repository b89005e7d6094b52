//! The SSH transport: one multiplexed master connection per host (the `openssh` crate,
//! native mux), opened on first use, reused by every command of the run, and closed
//! explicitly at the end.
//!
//! Every remote command is a small POSIX script, `<inner>`, that first reports its
//! process-group id on stderr and then `exec`s the quoted argument vector. sshd puts each
//! session in its own session and process group, so that id is what a timeout or a
//! Ctrl-C kills on the remote side: nothing is left running there. The report carries a
//! random nonce of this command and is searched for in stderr, not assumed to come first:
//! a login shell that prints something (a `.bashrc`, a banner) must not disable killing,
//! and output that imitates the marker cannot name another group.
//!
//! The first commands on a connection are sent as `exec sh -c '<inner>'`, which works
//! whatever the login shell is (fish, tcsh). The report also names the login shell
//! (`$SHELL`); once it is a POSIX one (bash, dash, ksh, sh), later commands give
//! `<inner>` to it directly: one shell less to start per command.
//!
//! `env` values never appear in the command line (which any user of the host can read in
//! the process list, and which audit logs record): they travel on standard input, as a
//! small prelude the remote shell reads and evaluates before it runs the command.

use crate::sync::Locked;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{OnceCell, Semaphore};

use super::{
    Capture, CommandSpec, Ended, ExecError, Finished, LineSink, Program, feed, open_input,
    open_output, pump, race,
};
use crate::interrupt::Interrupt;
use crate::inventory::{Host, HostKeyCheck};
use crate::output::Stream;
use crate::quote;

mod served;

/// sshd's default `MaxSessions`: channels one connection may carry at once.
pub(crate) const MAX_CHANNELS: usize = 10;
/// Keep-alive probes missed before a host counts as dead (with `keepalive = "5s"`, a
/// dead host is noticed within about ten seconds).
const ALIVE_COUNT_MAX: u32 = 2;
const PGID_MARKER: &str = "__runbook_pgid ";
/// How much stderr may come before the marker (login-shell chatter) before giving up on it.
const MARKER_SCAN: usize = 64 * 1024;
/// How long a command may take to report its process group (a slow login shell).
const MARKER_WAIT: Duration = Duration::from_secs(30);
/// A master left behind by a killed runbook exits after this long without use; a live
/// run whose master timed out reconnects on the next command.
const MASTER_IDLE_SECS: usize = 600;

struct Conn {
    session: Arc<Session>,
    channels: Semaphore,
    /// The login shell reads POSIX sh: commands skip the `exec sh -c` hop.
    posix_login: std::sync::atomic::AtomicBool,
    /// Kept open for the next invocation (`[ssh] persist`) instead of closed at the end:
    /// the directory of persistent masters.
    persist: Option<PathBuf>,
    /// The shell that starts this connection's commands ([`served`]), once started;
    /// locked while it runs one.
    served: tokio::sync::Mutex<Option<ServedShell>>,
    /// The host cannot serve (no `setsid`, a shell that would not start it): every
    /// command gets a session of its own.
    served_off: std::sync::atomic::AtomicBool,
}

/// A running [`served::SERVER`] and its streams (they end when `child` is dropped).
struct ServedShell {
    stdin: openssh::ChildStdin,
    out: BufReader<openssh::ChildStdout>,
    err: BufReader<openssh::ChildStderr>,
    /// The word that opens its first request ([`served::SERVER`]); `None` once sent.
    opening: Option<String>,
    _child: openssh::Child<Arc<Session>>,
}

/// Why a command was not sent to the served shell.
enum NotSent {
    /// This shell is gone; nothing ran.
    Gone,
    /// This host cannot serve (no `setsid`, no `/proc`, no session); nothing ran.
    CannotServe,
    /// The shell's greeting did not come in time: the command may still run.
    Unclear,
}

/// What a request that never reached a serving shell becomes: `None` runs the command in a
/// session of its own, as nothing of it ran.
fn unsent(why: &NotSent, started: Instant) -> Option<Result<Finished, ExecError>> {
    match why {
        NotSent::Gone | NotSent::CannotServe => None,
        NotSent::Unclear => Some(Err(ExecError::Disconnected {
            message: format!(
                "the login shell on the host printed more than 64 KiB or did not start within \
                 {} s: the command was sent to it and may still run there",
                MARKER_WAIT.as_secs()
            ),
            partial: super::partial(Capture::new(), Capture::new(), started),
        })),
    }
}

/// Whether the served shell can carry `spec`: no streamed input or output file (a
/// transfer gets a channel of its own), no sudo (its group is killed through sudo).
fn served_eligible(spec: &CommandSpec) -> bool {
    spec.stdin_file.is_none() && spec.stdout_file.is_none() && spec.sudo.is_none()
}

impl Conn {
    /// Takes in what a command's wrapper reported: its process group is returned, and a
    /// POSIX login shell is remembered (for this run and, kept, for the next).
    fn learn(&self, host: &Host, report: &Report) -> i64 {
        if posix_login_shell(&report.shell)
            && !self
                .posix_login
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            && let Some(dir) = &self.persist
        {
            persist::note_posix_login(dir, host);
        }
        report.pgid
    }
}

type Slot = Arc<OnceCell<Result<Arc<Conn>, ConnectError>>>;

/// Which host a connection was for, as messages name it: `` `web1` (10.0.0.5:22) ``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub address: String,
    pub port: u16,
}

impl Endpoint {
    fn of(host: &Host) -> Endpoint {
        Endpoint {
            host: host.name.clone(),
            address: host.address.clone(),
            port: host.port,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` ({}:{})", self.host, self.address, self.port)
    }
}

/// Why no master connection to a host could be opened. Cloned: a failure is remembered
/// for the run and given to every later command on that host.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("cannot write the ssh configuration for `{host}`: {source}")]
    Config {
        host: String,
        source: Arc<std::io::Error>,
    },
    #[error(
        "cannot connect to {at}: no answer within {}",
        humantime::format_duration(*after)
    )]
    NoAnswer { at: Endpoint, after: Duration },
    #[error(
        "cannot connect to {at}: its host key CHANGED ({detail})\n  hint: the server was reinstalled or someone is intercepting the connection; find out which before you remove the old key from {known} (ssh-keygen -f {known} -R {})",
        at.address
    )]
    HostKeyChanged {
        at: Endpoint,
        known: String,
        detail: String,
    },
    #[error(
        "cannot connect to {at}: its host key is not in {known} ({detail})\n  hint: verify the host's key and add it (ssh-keyscan -p {} {} >> {known}), or set host_key_check = \"accept-new\" for this environment",
        at.port,
        at.address
    )]
    HostKeyUnknown {
        at: Endpoint,
        known: String,
        detail: String,
    },
    #[error(
        "cannot connect to {at}: connection refused — is sshd running and listening on port {}?",
        at.port
    )]
    Refused { at: Endpoint },
    #[error(
        "cannot connect to {at}: authentication failed as `{}` ({detail})\n  hint: check identity_file and that its public key is in the user's authorized_keys",
        user.as_deref().unwrap_or("(ssh default user)")
    )]
    Auth {
        at: Endpoint,
        user: Option<String>,
        detail: String,
    },
    #[error(
        "cannot connect to {at}: no answer within {} ({detail})",
        humantime::format_duration(*after)
    )]
    TimedOut {
        at: Endpoint,
        after: Duration,
        detail: String,
    },
    #[error("cannot connect to {at}: {detail}")]
    Other { at: Endpoint, detail: String },
}

/// The pool's private directory for control sockets could not be made. One variant on
/// purpose: no caller branches on it, it tells the person why ssh cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot create the ssh control directory: {source}")]
pub(crate) struct NoControlDir {
    source: Arc<std::io::Error>,
}

pub(crate) struct SshPool {
    dir: tempfile::TempDir,
    /// Masters of an earlier invocation this pool reused (`[ssh] persist`).
    reused: std::sync::atomic::AtomicUsize,
    /// `RUNBOOK_RUN=<run id>; export RUNBOOK_RUN; `: what every remote command does first.
    tag: String,
    conns: Mutex<HashMap<String, Slot>>,
    opened: std::sync::atomic::AtomicUsize,
}

/// What a command's wrapper reports before it runs the command.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    /// Its process group: what a timeout or Ctrl-C ends.
    pgid: i64,
    /// The login shell's name (`$SHELL` without its directory), empty when unset.
    shell: String,
}

impl Report {
    /// The text after the marker: `<pgid> <shell>`.
    fn parse(rest: &str) -> Option<Report> {
        let mut words = rest.split_whitespace();
        let pgid = words.next()?.parse().ok()?;
        Some(Report {
            pgid,
            shell: words.next().unwrap_or_default().to_owned(),
        })
    }
}

/// Login shells that run the wrapper's POSIX script as `sh` would. Others (fish, csh,
/// zsh, a shell not known here) keep the `exec sh -c` hop.
fn posix_login_shell(name: &str) -> bool {
    matches!(
        name,
        "sh" | "bash" | "dash" | "ksh" | "mksh" | "ksh93" | "ash"
    )
}

/// Reads stderr up to the wrapper's report of its process-group id and returns it; what
/// came before it goes to `early`. Standard input is fed meanwhile (`fed` says whether
/// that finished), so a login shell that reads it first does not stall.
async fn find_report<F: std::future::Future<Output = ()>>(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    marker: &str,
    early: &mut Vec<String>,
    mut feeding: std::pin::Pin<&mut F>,
    fed: &mut bool,
) -> Option<Report> {
    let search = async {
        let mut seen = 0;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => seen += n,
            }
            if let Some(at) = line.find(marker) {
                // A dotfile that printed without a newline shares the line.
                if at > 0 {
                    early.push(format!("{}\n", &line[..at]));
                }
                return Report::parse(&line[at + marker.len()..]);
            }
            early.push(line);
            if seen > MARKER_SCAN {
                return None;
            }
        }
    };
    tokio::pin!(search);
    loop {
        tokio::select! {
            found = &mut search => return found,
            () = &mut feeding, if !*fed => *fed = true,
        }
    }
}

impl SshPool {
    pub(crate) fn new(run: &str) -> Result<SshPool, NoControlDir> {
        // Control sockets need a short path (sun_path is ~108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("rb-ssh-")
            .tempdir_in("/tmp")
            .map_err(|e| NoControlDir {
                source: Arc::new(e),
            })?;
        Ok(SshPool {
            dir,
            reused: std::sync::atomic::AtomicUsize::new(0),
            tag: tag_prefix(run),
            conns: Mutex::new(HashMap::new()),
            opened: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn slot(&self, host: &Host) -> Slot {
        self.conns
            .locked()
            .entry(host.name.clone())
            .or_default()
            .clone()
    }

    /// Forgets a host's connection so that the next command connects again.
    fn forget(&self, host: &Host) {
        self.conns.locked().remove(&host.name);
    }

    /// Spawns `line` on the host, reconnecting once if the master went away (idle
    /// timeout, network blip) since the last command.
    async fn spawn(
        &self,
        host: &Host,
        line: &str,
        stdin: &Input,
    ) -> Result<(Arc<Conn>, openssh::Child<Arc<Session>>), ExecError> {
        let mut attempt = 0;
        loop {
            let conn = self.conn(host).await?;
            let mut cmd = Session::to_raw_command(conn.session.clone(), line);
            let input = match stdin {
                Input::Null => Stdio::null(),
                Input::Piped => Stdio::piped(),
                // ssh (its master, through the control socket) reads the file itself:
                // no copy through this process and a pipe.
                Input::File(f) => Stdio::from(f.try_clone().map_err(|e| {
                    ExecError::Unsupported(format!("cannot pass the input file to ssh: {e}"))
                })?),
            };
            cmd.stdin(input)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            match cmd.spawn().await {
                Ok(child) => return Ok((conn, child)),
                Err(e) if attempt == 0 && conn.session.check().await.is_err() => {
                    tracing::debug!(host = %host.name, error = %e, "master gone; reconnecting");
                    attempt += 1;
                    self.forget(host);
                }
                Err(e) => return Err(disconnected(&e, Finished::default())),
            }
        }
    }

    /// Ends every master at once, without the runtime (a forced exit on a third Ctrl-C).
    pub(crate) fn kill_masters_now(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            use std::os::unix::fs::FileTypeExt;
            if entry.file_type().is_ok_and(|t| t.is_socket()) {
                let _ = std::process::Command::new("ssh")
                    .arg("-S")
                    .arg(entry.path())
                    .args(["-O", "exit", "runbook-master"])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }

    async fn conn(&self, host: &Host) -> Result<Arc<Conn>, ExecError> {
        let slot = self.slot(host);
        let tried = std::sync::atomic::AtomicBool::new(false);
        let result = slot
            .get_or_init(|| async {
                tried.store(true, std::sync::atomic::Ordering::SeqCst);
                let conn = self.connect(host).await?;
                self.opened
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Arc::new(conn))
            })
            .await;
        // A failure is remembered for the run: a later command on the host fails at once,
        // and says so rather than seem to have waited again.
        let earlier = !tried.load(std::sync::atomic::Ordering::SeqCst);
        result
            .clone()
            .map_err(|source| ExecError::Connect { source, earlier })
    }

    async fn connect(&self, host: &Host) -> Result<Conn, ConnectError> {
        let persisted = match host.ssh.persist {
            Some(idle) => match persist::dir() {
                Ok(dir) => Some((dir, idle)),
                Err(e) => {
                    tracing::debug!(error = %e, "no directory for persistent masters");
                    None
                }
            },
            None => None,
        };
        if let Some((dir, _)) = &persisted
            && let Some((session, posix)) = persist::resume(dir, host).await
        {
            self.reused
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Ok(Conn {
                session: Arc::new(session),
                channels: Semaphore::new(MAX_CHANNELS - 1),
                posix_login: std::sync::atomic::AtomicBool::new(posix),
                persist: Some(dir.clone()),
                served: tokio::sync::Mutex::new(None),
                served_off: std::sync::atomic::AtomicBool::new(false),
            });
        }
        let config = self.write_config(host).map_err(|e| ConnectError::Config {
            host: host.name.clone(),
            source: Arc::new(e),
        })?;
        let mut b = SessionBuilder::default();
        b.port(host.port)
            .known_hosts_check(match host.ssh.host_key_check {
                HostKeyCheck::Strict => KnownHosts::Strict,
                HostKeyCheck::AcceptNew => KnownHosts::Add,
            })
            .connect_timeout(host.ssh.connect_timeout)
            .server_alive_interval(host.ssh.keepalive)
            .config_file(&config);
        match &persisted {
            Some((dir, idle)) => b.control_directory(dir).control_persist(
                std::num::NonZeroUsize::new(usize::try_from(idle.as_secs()).unwrap_or(1).max(1))
                    .map_or(ControlPersist::Forever, ControlPersist::IdleFor),
            ),
            None => b.control_directory(self.dir.path()).control_persist(
                std::num::NonZeroUsize::new(MASTER_IDLE_SECS)
                    .map_or(ControlPersist::Forever, ControlPersist::IdleFor),
            ),
        };
        if let Some(user) = &host.user {
            b.user(user.clone());
        }
        if let Some(key) = &host.identity_file {
            b.keyfile(expand_home(key));
        }
        if let Some(kh) = &host.ssh.known_hosts {
            b.user_known_hosts_file(expand_home(kh));
        }
        if let Some(jump) = &host.jump_host {
            b.jump_hosts([jump.as_str()]);
        }
        let deadline = host.ssh.connect_timeout + Duration::from_secs(5);
        let session = match tokio::time::timeout(deadline, b.connect_mux(&host.address)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(explain_connect_error(host, &e)),
            Err(_) => {
                return Err(ConnectError::NoAnswer {
                    at: Endpoint::of(host),
                    after: deadline,
                });
            }
        };
        if let Some((dir, _)) = &persisted {
            persist::record(dir, host, session.control_socket());
        }
        Ok(Conn {
            session: Arc::new(session),
            // One channel is the served shell's.
            channels: Semaphore::new(MAX_CHANNELS - 1),
            posix_login: std::sync::atomic::AtomicBool::new(false),
            persist: persisted.map(|(dir, _)| dir),
            served: tokio::sync::Mutex::new(None),
            served_off: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// An ssh_config for this host: the user's own configuration first (it still applies),
    /// then the keep-alive policy.
    fn write_config(&self, host: &Host) -> std::io::Result<PathBuf> {
        let mut text = String::new();
        if let Some(home) = std::env::var_os("HOME") {
            let user = Path::new(&home).join(".ssh/config");
            if user.is_file() {
                let _ = writeln!(text, "Include \"{}\"", user.display());
            }
        }
        if let Some(extra) = &host.ssh.config_file {
            let _ = writeln!(text, "Include \"{}\"", expand_home(extra).display());
        }
        let _ = writeln!(text, "ServerAliveCountMax {ALIVE_COUNT_MAX}");
        let path = self.dir.path().join(format!("config-{}", host.name));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Runs `line` on the host with a terminal (`ssh -t` through this run's master, so
    /// the same host key check and credentials apply), the user's terminal attached.
    /// Returns the remote exit status.
    pub(crate) async fn interactive(&self, host: &Host, line: &str) -> Result<i32, ExecError> {
        let conn = self.conn(host).await?;
        let socket = conn.session.control_socket().to_owned();
        let status = tokio::process::Command::new("ssh")
            .arg("-S")
            .arg(&socket)
            .args(["-o", "ControlMaster=no", "-o", "LogLevel=ERROR", "-t"])
            .arg("runbook-master")
            .arg(line)
            .status()
            .await
            .map_err(|e| ExecError::Unsupported(format!("cannot start ssh: {e}")))?;
        Ok(status.code().unwrap_or(255))
    }

    pub(crate) async fn exec(
        &self,
        host: &Host,
        spec: &CommandSpec,
        interrupt: &Interrupt,
        on_line: LineSink<'_>,
    ) -> Result<Finished, ExecError> {
        let input = open_input(spec.stdin_file.as_deref()).await?;
        let output = open_output(spec.stdout_file.as_deref()).await?;
        let gate = self.conn(host).await?;
        if input.is_none()
            && output.is_none()
            && let Some(done) = self.try_served(host, &gate, spec, interrupt, on_line).await
        {
            return done;
        }
        let _channel = gate.channels.acquire().await;
        let direct = gate.posix_login.load(std::sync::atomic::Ordering::Relaxed);
        let remote = remote_command(spec, &super::random_hex(8), &self.tag, direct)?;
        let started = Instant::now();
        // A file alone is given to ssh as its standard input; a prelude before it is fed.
        let (stdin_kind, input) = match (remote.stdin.is_some(), input) {
            (false, Some(file)) => (Input::File(file.into_std().await), None),
            (true, input) => (Input::Piped, input),
            (false, None) => (Input::Null, None),
        };
        let (conn, mut child) = self.spawn(host, &remote.line, &stdin_kind).await?;
        let stdin = child.stdin().take();
        let stdout = child.stdout().take();
        // The wrapper reports its process-group id on stderr: find that line before
        // anything else, so that a Ctrl-C or timeout a moment later can still kill it.
        // What the login shell printed before it is passed on as the command's stderr.
        // Standard input is fed meanwhile (a shell that reads it first must not stall).
        let mut err_reader = child.stderr().take().map(BufReader::new);
        let mut pgid: Option<i64> = None;
        let mut early: Vec<String> = Vec::new();
        let feeding = feed(stdin, remote.stdin.as_deref(), input);
        tokio::pin!(feeding);
        let mut fed = false;
        if let Some(reader) = err_reader.as_mut() {
            let wait = spec.timeout.unwrap_or(MARKER_WAIT).min(MARKER_WAIT);
            let search = find_report(
                reader,
                &remote.marker,
                &mut early,
                feeding.as_mut(),
                &mut fed,
            );
            let report = tokio::time::timeout(wait, search).await.ok().flatten();
            pgid = report.map(|r| conn.learn(host, &r));
            if pgid.is_none() {
                tracing::debug!(host = %host.name, "no process-group report: the command cannot be killed on the host");
            }
        }
        let mut out_buf = Capture::new();
        let mut err_buf = Capture::new();
        let quiet = spec.quiet;
        let reading = async {
            let err_pump = async {
                for line in &early {
                    if !quiet {
                        on_line(Stream::Stderr, line.trim_end_matches(['\n', '\r']));
                    }
                    err_buf.push(line.as_bytes());
                }
                pump(err_reader, Stream::Stderr, &mut err_buf, on_line, quiet).await;
            };
            let out = super::stdout(stdout, output, &mut out_buf, on_line, quiet);
            let feeding = async {
                if !fed {
                    feeding.await;
                }
            };
            let ((), written, ()) = tokio::join!(feeding, out, err_pump);
            (child.wait().await, written)
        };
        // Counted from the start: the time spent looking for the marker is part of it.
        let end = race(reading, spec.timeout.map(|t| started + t), interrupt).await;
        let partial = |out, err| super::partial(out, err, started);
        match end {
            Ended::Done((Ok(status), written)) => {
                let f = Finished {
                    code: status.code(),
                    ..partial(out_buf, err_buf)
                };
                super::completed(spec, f, written)
            }
            // The mux protocol cannot tell "killed by a signal" from "connection lost":
            // ask the master whether it is still alive.
            Ended::Done((Err(openssh::Error::RemoteProcessTerminated), _)) => {
                match conn.session.check().await {
                    Ok(()) => Ok(partial(out_buf, err_buf)),
                    Err(e) => Err(disconnected(&e, partial(out_buf, err_buf))),
                }
            }
            Ended::Done((Err(e), _)) => Err(disconnected(&e, partial(out_buf, err_buf))),
            Ended::Timeout | Ended::Interrupted => {
                tracing::debug!(?pgid, "ending the remote process group");
                if let Some(id) = pgid {
                    self.kill_group(&conn, id, spec.sudo.as_deref()).await;
                }
                let partial = partial(out_buf, err_buf);
                if matches!(end, Ended::Timeout) {
                    Err(ExecError::Timeout {
                        after: spec.timeout.unwrap_or_default(),
                        partial,
                    })
                } else {
                    Err(ExecError::Interrupted { partial })
                }
            }
        }
    }

    /// Starts the connection's served shell, with `first` (a wrapper and its nonce) as
    /// its arguments when given; `None` when even its session cannot start.
    async fn start_served(&self, conn: &Conn, first: Option<(&str, &str)>) -> Option<ServedShell> {
        let opening = super::random_hex(16);
        let mut line = format!(
            "exec sh -c {} {} {opening}",
            quote::join(&[served::SERVER.to_owned()]),
            served::SERVED_NAME
        );
        if let Some((wrapper, nonce)) = first {
            line.push(' ');
            line.push_str(&quote::join(&[wrapper.to_owned(), nonce.to_owned()]));
        }
        let mut child = Session::to_raw_command(conn.session.clone(), &line)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .ok()?;
        Some(ServedShell {
            stdin: child.stdin().take()?,
            out: BufReader::new(child.stdout().take()?),
            err: BufReader::new(child.stderr().take()?),
            opening: Some(opening),
            _child: child,
        })
    }

    /// Runs `spec` through the connection's served shell when it can carry it and is
    /// free; `None`: it did not run.
    async fn try_served(
        &self,
        host: &Host,
        conn: &Conn,
        spec: &CommandSpec,
        interrupt: &Interrupt,
        on_line: LineSink<'_>,
    ) -> Option<Result<Finished, ExecError>> {
        if !served_eligible(spec) || conn.served_off.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let mut shell = conn.served.try_lock().ok()?;
        self.exec_served(host, conn, &mut shell, spec, interrupt, on_line)
            .await
    }

    /// Sends `request` to the connection's served shell, starting it first if need be.
    /// The first request goes at once, behind the shell's opening word, and then its
    /// greeting is awaited: no round trip waits for it.
    async fn served_send(
        &self,
        host: &Host,
        conn: &Conn,
        slot: &mut Option<ServedShell>,
        request: &[u8],
        first: Option<(&str, &str)>,
    ) -> Result<(), NotSent> {
        let mut in_arguments = false;
        if slot.is_none() {
            *slot = Some(
                self.start_served(conn, first)
                    .await
                    .ok_or(NotSent::CannotServe)?,
            );
            in_arguments = first.is_some();
        }
        let shell = slot.as_mut().ok_or(NotSent::Gone)?;
        let Some(word) = shell.opening.take() else {
            return served::send(&mut shell.stdin, request)
                .await
                .map_err(|_| NotSent::Gone);
        };
        if in_arguments {
            // The first command runs after the greeting whether or not the word arrives:
            // the greeting alone says whether it ran.
            let _ = served::send(&mut shell.stdin, format!("{word}\n").as_bytes()).await;
        } else if served::send(&mut shell.stdin, &served::opening(&word, request))
            .await
            .is_err()
        {
            // A shell that cannot serve exits without reading it; one whose output ends
            // before the greeting never came to read it either.
            return Err(NotSent::CannotServe);
        }
        match tokio::time::timeout(MARKER_WAIT, served::greeted(&mut shell.out)).await {
            Ok(served::Greeting::Ready) => Ok(()),
            Ok(served::Greeting::Unable) => {
                tracing::debug!(host = %host.name, "no served shell here: a session per command");
                Err(NotSent::CannotServe)
            }
            Ok(served::Greeting::Unclear) | Err(_) => Err(NotSent::Unclear),
        }
    }

    /// Runs `spec` through the connection's served shell (starting it first if need be).
    /// `None`: it did not run there — the caller gives it a session of its own.
    async fn exec_served(
        &self,
        host: &Host,
        conn: &Conn,
        slot: &mut Option<ServedShell>,
        spec: &CommandSpec,
        interrupt: &Interrupt,
        on_line: LineSink<'_>,
    ) -> Option<Result<Finished, ExecError>> {
        let remote = match served_command(spec, &super::random_hex(8), &self.tag) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        if remote.stdin.as_deref().is_some_and(|i| !served::carries(i)) {
            return None;
        }
        let give_up = |slot: &mut Option<ServedShell>, off: bool| {
            *slot = None;
            if off {
                conn.served_off
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        };
        let nonce = super::random_hex(16);
        let started = Instant::now();
        let request = served::request(&remote.line, remote.stdin.as_deref(), &nonce);
        // Used only if this request starts the shell.
        let first = (remote.stdin.is_none() && remote.line.len() <= served::MAX_ARGUMENT)
            .then_some((remote.line.as_str(), nonce.as_str()));
        if let Err(why) = self.served_send(host, conn, slot, &request, first).await {
            give_up(slot, !matches!(why, NotSent::Gone));
            return unsent(&why, started);
        }
        let shell = slot.as_mut()?;
        let mut early = Vec::new();
        let report = match served_report(shell, spec, &remote.marker, &nonce, &mut early).await {
            Ok(report) => report,
            Err(None) => {
                // The shell ended before the command started: nothing ran.
                give_up(slot, false);
                return None;
            }
            Err(Some(e)) => {
                give_up(slot, false);
                return Some(Err(e(super::partial(
                    Capture::new(),
                    Capture::new(),
                    started,
                ))));
            }
        };
        let pgid = report
            .as_deref()
            .and_then(Report::parse)
            .map(|r| conn.learn(host, &r));
        let mut out_buf = Capture::new();
        let mut err_buf = Capture::new();
        let quiet = spec.quiet;
        let reading = served::read_to_end(
            &mut shell.out,
            report.is_some().then_some(&mut shell.err),
            &early,
            &nonce,
            (&mut out_buf, &mut err_buf),
            on_line,
            quiet,
        );
        let end = race(reading, spec.timeout.map(|t| started + t), interrupt).await;
        let partial = |out, err| super::partial(out, err, started);
        Some(match end {
            Ended::Done(Ok(code)) => {
                let f = Finished {
                    code: code.parse().ok(),
                    ..partial(out_buf, err_buf)
                };
                super::completed(spec, f, Ok(()))
            }
            Ended::Done(Err(served::Lost::NotStarted)) => {
                give_up(slot, false);
                return None;
            }
            Ended::Done(Err(served::Lost::Midway)) => {
                give_up(slot, false);
                let partial = partial(out_buf, err_buf);
                match conn.session.check().await {
                    Err(e) => Err(disconnected(&e, partial)),
                    Ok(()) => Err(ExecError::Disconnected {
                        message: "the shell that ran the command on the host ended before it did"
                            .into(),
                        partial,
                    }),
                }
            }
            Ended::Timeout | Ended::Interrupted => {
                // The shell is still inside this command: it is not used again.
                give_up(slot, false);
                if let Some(id) = pgid {
                    self.kill(conn, id, None, true).await;
                }
                let partial = partial(out_buf, err_buf);
                if matches!(end, Ended::Timeout) {
                    Err(ExecError::Timeout {
                        after: spec.timeout.unwrap_or_default(),
                        partial,
                    })
                } else {
                    Err(ExecError::Interrupted { partial })
                }
            }
        })
    }

    /// Ends a remote process group: SIGTERM, a grace second, then SIGKILL.
    async fn kill_group(&self, conn: &Conn, pgid: i64, sudo: Option<&str>) {
        self.kill(conn, pgid, sudo, false).await;
    }

    /// [`Self::kill_group`]; `or_pid`: a served command, whose group may not be made yet
    /// (the report comes just before `setsid`): then the process itself is ended.
    async fn kill(&self, conn: &Conn, pgid: i64, sudo: Option<&str>, or_pid: bool) {
        if pgid <= 1 {
            return;
        }
        let prefix = if sudo.is_some() { "sudo -n " } else { "" };
        let target = |signal: &str| {
            if or_pid {
                format!(
                    "{{ {prefix}kill -{signal} -{pgid} || {prefix}kill -{signal} {pgid}; }} 2>/dev/null"
                )
            } else {
                format!("{prefix}kill -{signal} -{pgid} 2>/dev/null")
            }
        };
        let script = format!(
            "{}; i=0; while [ $i -lt 20 ] && {}; do sleep 0.1; i=$((i+1)); done; {}; true",
            target("TERM"),
            target("0"),
            target("KILL")
        );
        let line = format!("{}sh -c {}", self.tag, quote::join(&[script]));
        let run = async {
            let _ = Session::to_raw_command(conn.session.clone(), &line)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
    }

    /// Closes every master connection (also called on failure and after Ctrl-C).
    pub(crate) async fn close(&self) {
        let slots: Vec<Slot> = self.conns.locked().drain().map(|(_, s)| s).collect();
        for slot in slots {
            let Ok(slot) = Arc::try_unwrap(slot) else {
                continue;
            };
            let Some(Ok(conn)) = slot.into_inner() else {
                continue;
            };
            let Ok(mut conn) = Arc::try_unwrap(conn) else {
                continue;
            };
            // The served shell holds the session too; ending its input ends it.
            drop(conn.served.get_mut().take());
            if let Ok(session) = Arc::try_unwrap(conn.session) {
                if conn.persist.is_some() {
                    // Left running for the next invocation (its idle timeout ends it).
                    let _ = session.detach();
                } else {
                    let _ = session.close().await;
                }
            }
        }
    }
}

/// A served command's report (the text after its marker; `None` when it ended without
/// one), read before the wait can be cut short, as for a session: a Ctrl-C a moment after
/// the start must still find the group to kill. `Err(None)`: the shell ended before the
/// command started; `Err(Some(_))`: no report in time (the error, given the output).
async fn served_report(
    shell: &mut ServedShell,
    spec: &CommandSpec,
    marker: &str,
    nonce: &str,
    early: &mut Vec<u8>,
) -> Result<Option<String>, Option<Box<dyn FnOnce(Finished) -> ExecError + Send>>> {
    let wait = spec.timeout.unwrap_or(MARKER_WAIT).min(MARKER_WAIT);
    match tokio::time::timeout(
        wait,
        served::find_report(&mut shell.err, marker, nonce, early),
    )
    .await
    {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(_)) => Err(None),
        Err(_) => {
            let timeout = spec.timeout.filter(|after| *after <= wait);
            Err(Some(Box::new(move |partial| match timeout {
                Some(after) => ExecError::Timeout { after, partial },
                None => ExecError::Disconnected {
                    message: format!(
                        "the command did not start on the host within {}s",
                        wait.as_secs()
                    ),
                    partial,
                },
            })))
        }
    }
}

fn disconnected(e: &openssh::Error, partial: Finished) -> ExecError {
    ExecError::Disconnected {
        message: error_chain(e),
        partial,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !text.is_empty() && !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// Turns ssh's connect failure into a sentence that says what to do.
fn explain_connect_error(host: &Host, e: &openssh::Error) -> ConnectError {
    let full = error_chain(e);
    let lower = full.to_lowercase();
    // ssh's banners are long; the last meaningful line says what happened.
    let detail = full
        .lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty() && !l.starts_with('@') && !l.contains("Host key verification failed")
        })
        .unwrap_or("")
        .trim_end_matches(')')
        .trim_start_matches("failed to connect to the remote host: ")
        .to_owned();
    let at = Endpoint::of(host);
    let known = || {
        host.ssh
            .known_hosts
            .clone()
            .unwrap_or_else(|| "~/.ssh/known_hosts".into())
    };
    if lower.contains("identification has changed") {
        ConnectError::HostKeyChanged {
            at,
            known: known(),
            detail,
        }
    } else if lower.contains("host key verification failed") || lower.contains("host key for") {
        ConnectError::HostKeyUnknown {
            at,
            known: known(),
            detail,
        }
    } else if lower.contains("connection refused") {
        ConnectError::Refused { at }
    } else if lower.contains("permission denied") {
        ConnectError::Auth {
            at,
            user: host.user.clone(),
            detail,
        }
    } else if lower.contains("timed out") {
        ConnectError::TimedOut {
            at,
            after: host.ssh.connect_timeout,
            detail,
        }
    } else {
        ConnectError::Other { at, detail }
    }
}

/// A command's standard input as ssh gets it.
enum Input {
    Null,
    /// Fed by runbook: a prelude, then the command's own input.
    Piped,
    /// The command's input file, read by ssh itself.
    File(std::fs::File),
}

/// What is sent for one command.
#[derive(Debug)]
pub(crate) struct Remote {
    /// The line for the remote login shell: every value quoted, no `env` value in it.
    pub line: String,
    /// Standard input: the environment prelude (if any), then the command's own input.
    pub stdin: Option<Vec<u8>>,
    /// The text just before the process-group id in the wrapper's stderr report.
    pub marker: String,
}

/// Reads the prelude — a line count, then that many lines of `export NAME='value'` — and
/// evaluates it. `read` takes one line at a time from a pipe, so the command's own input
/// after the prelude is left for the command.
const PRELUDE_READER: &str = "IFS= read -r __rb_n || exit 125; __rb_p=; while [ \"$__rb_n\" -gt 0 ]; do IFS= read -r __rb_l || exit 125; __rb_p=\"$__rb_p$__rb_l\n\"; __rb_n=$((__rb_n - 1)); done; eval \"$__rb_p\"; unset __rb_n __rb_p __rb_l; ";

/// `RUNBOOK_RUN=<run id>; export RUNBOOK_RUN; `: what the inner `sh` of every remote
/// command does first, so that the command it `exec`s (and all that command starts)
/// carries the run's id in its environment. Set by `sh` itself rather than by an `env`
/// in front of it: one program less to start per command.
fn tag_prefix(run: &str) -> String {
    format!(
        "{tag}={}; export {tag}; ",
        quote::join(&[run.to_owned()]),
        tag = super::RUN_TAG,
    )
}

/// The command for the remote login shell, with `nonce` in its process-group report and
/// `tag` ([`tag_prefix`]) in front. `direct`: the login shell is a POSIX one
/// ([`posix_login_shell`]) and runs the script itself, without `exec sh -c`.
pub(crate) fn remote_command(
    spec: &CommandSpec,
    nonce: &str,
    tag: &str,
    direct: bool,
) -> Result<Remote, ExecError> {
    wrapper(
        spec,
        nonce,
        tag,
        if direct { Shape::Direct } else { Shape::Hop },
    )
}

/// The wrapper for the connection's served shell ([`served`]), which runs it in a
/// subshell of its own: the subshell reads its pid from `/proc/self/stat` (`$$` would
/// be the served shell's) and `exec`s the command through `setsid`, which makes that pid
/// the leader of a new session and group, as sshd would. An inline script runs in the
/// subshell itself.
pub(crate) fn served_command(
    spec: &CommandSpec,
    nonce: &str,
    tag: &str,
) -> Result<Remote, ExecError> {
    wrapper(spec, nonce, tag, Shape::Served)
}

/// Who runs a command's wrapper.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A login shell that may not be POSIX: `exec sh -c WRAPPER`.
    Hop,
    /// A POSIX login shell, given the wrapper itself.
    Direct,
    /// The connection's served shell, in a subshell.
    Served,
}

fn wrapper(spec: &CommandSpec, nonce: &str, tag: &str, shape: Shape) -> Result<Remote, ExecError> {
    let quote_one = |s: &str| quote::command_line(&[s.to_owned()]);
    let marker = format!("{PGID_MARKER}{nonce} ");
    let (own_pid, pid) = match shape {
        Shape::Served => (
            "read -r __rb_p __rb_x < /proc/self/stat || exit 125; ",
            "$__rb_p",
        ),
        Shape::Hop | Shape::Direct => ("", "$$"),
    };
    let mut inner = format!(
        "{tag}{own_pid}printf '%s%s %s\\n' {} \"{pid}\" \"${{SHELL##*/}}\" >&2; ",
        quote_one(&marker)?
    );
    let names = spec.env_names()?;
    let stdin = if spec.env.is_empty() {
        spec.stdin.clone()
    } else {
        let mut prelude = String::new();
        for (k, v) in &spec.env {
            let _ = writeln!(prelude, "export {k}={}", quote_one(v)?);
        }
        let mut bytes = format!("{}\n{prelude}", prelude.matches('\n').count()).into_bytes();
        if let Some(input) = &spec.stdin {
            bytes.extend_from_slice(input);
        }
        inner.push_str(PRELUDE_READER);
        Some(bytes)
    };
    if let Some(cwd) = &spec.cwd {
        let _ = write!(inner, "cd -- {} || exit 1; ", quote_one(cwd)?);
    }
    let argv = spec.program.argv_with_sudo(spec.sudo.as_deref(), &names);
    if argv.is_empty() || matches!(&spec.program, Program::Argv(a) if a.is_empty()) {
        return Err(ExecError::Unsupported(
            "empty command: argv has no program".into(),
        ));
    }
    if let Some((body, values)) = inline_script(spec) {
        inner.push_str("set --");
        if !values.is_empty() {
            inner.push(' ');
            inner.push_str(&quote::command_line(values)?);
        }
        inner.push_str("; ");
        inner.push_str(body);
    } else {
        inner.push_str(if shape == Shape::Served {
            "exec setsid "
        } else {
            "exec "
        });
        inner.push_str(&quote::command_line(&argv)?);
    }
    let line = if shape == Shape::Hop {
        format!("exec sh -c {}", quote_one(&inner)?)
    } else {
        inner
    };
    Ok(Remote {
        line,
        stdin,
        marker,
    })
}

/// The body and arguments of a [`CommandSpec::inline`] script (`sh -c BODY sh ARGS…`)
/// the wrapper runs itself; `None` for everything else, and under sudo.
fn inline_script(spec: &CommandSpec) -> Option<(&str, &[String])> {
    if !spec.inline || spec.sudo.is_some() {
        return None;
    }
    match &spec.program {
        Program::Argv(words)
            if words.len() >= 4 && words[0] == "sh" && words[1] == "-c" && words[3] == "sh" =>
        {
            Some((&words[2], &words[4..]))
        }
        _ => None,
    }
}

/// Masters kept between invocations (`[ssh] persist`): a private directory of this
/// user (`$XDG_RUNTIME_DIR/runbook-ssh`, else `/tmp/runbook-ssh-<uid>`: socket paths must
/// be short) holding each master's control socket and, per host, a record naming it.
/// A record is keyed by everything that decides who is connected to what — address,
/// port, user, key, known_hosts, host key policy, jump host, ssh config — so a changed
/// inventory never reuses a master made under other terms.
pub(crate) mod persist {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use openssh::Session;

    use crate::inventory::Host;

    /// Why persistent masters are not used this time (only logged: runbook then opens
    /// masters of its own).
    #[derive(Debug, thiserror::Error)]
    pub(crate) enum DirError {
        #[error("{}: {source}", dir.display())]
        Unreadable {
            dir: PathBuf,
            source: std::io::Error,
        },
        #[error(
            "{} is not a private directory of this user: persistent ssh masters are not used",
            dir.display()
        )]
        NotPrivate { dir: PathBuf },
    }

    /// The directory, created 0700; refused when it is not a real directory of this user.
    pub(crate) fn dir() -> Result<PathBuf, DirError> {
        let uid = nix::unistd::getuid().as_raw();
        let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("runbook-ssh"),
            _ => PathBuf::from(format!("/tmp/runbook-ssh-{uid}")),
        };
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        let meta = match std::fs::symlink_metadata(&dir) {
            Ok(meta) => meta,
            Err(source) => return Err(DirError::Unreadable { dir, source }),
        };
        if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
            return Err(DirError::NotPrivate { dir });
        }
        Ok(dir)
    }

    fn key(host: &Host) -> String {
        use sha2::Digest;
        // The known_hosts file's contents, not only its name: a host key changed there
        // (a rebuilt server) must not be met by a master made under the old one.
        let known = host
            .ssh
            .known_hosts
            .clone()
            .unwrap_or_else(|| "~/.ssh/known_hosts".to_owned());
        let known = std::fs::read(super::expand_home(&known)).unwrap_or_default();
        let terms = format!(
            "{}\0{}\0{:?}\0{:?}\0{:?}\0{:?}\0{:?}\0{:?}\0{}",
            host.address,
            host.port,
            host.user,
            host.identity_file,
            host.ssh.known_hosts,
            host.ssh.host_key_check,
            host.jump_host,
            host.ssh.config_file,
            hex::encode(sha2::Sha256::digest(&known))
        );
        hex::encode(&sha2::Sha256::digest(terms.as_bytes())[..12])
    }

    /// Notes where `host`'s new master listens. What was learnt over an older master
    /// (its login shell) is forgotten.
    pub(crate) fn record(dir: &Path, host: &Host, socket: &Path) {
        let key = key(host);
        let _ = std::fs::remove_file(dir.join(format!("{key}.posix")));
        let _ = std::fs::write(
            dir.join(format!("{key}.master")),
            socket.as_os_str().as_encoded_bytes(),
        );
    }

    /// Notes that `host`'s login shell is a POSIX one, for the invocations that reuse
    /// its master: their commands skip the `exec sh -c` hop from the first.
    pub(crate) fn note_posix_login(dir: &Path, host: &Host) {
        let _ = std::fs::write(dir.join(format!("{}.posix", key(host))), b"");
    }

    /// A live master of an earlier invocation for `host`, if one is recorded and
    /// answers, and whether its login shell is known to be a POSIX one.
    pub(crate) async fn resume(dir: &Path, host: &Host) -> Option<(Session, bool)> {
        let key = key(host);
        let record = dir.join(format!("{key}.master"));
        let posix = dir.join(format!("{key}.posix"));
        let forget = || {
            let _ = std::fs::remove_file(&record);
            let _ = std::fs::remove_file(&posix);
        };
        let Ok(socket) = std::fs::read_to_string(&record).map(PathBuf::from) else {
            forget();
            return None;
        };
        if !socket.starts_with(dir) || !socket.exists() {
            forget();
            return None;
        }
        let session = Session::resume_mux(socket.into_boxed_path(), None);
        if session.check().await.is_ok() {
            Some((session, posix.exists()))
        } else {
            forget();
            None
        }
    }

    /// Ends every recorded master (`runbook disconnect`); with `hosts`, only theirs.
    /// Returns how many were ended.
    pub(crate) fn disconnect(hosts: Option<&[std::sync::Arc<Host>]>) -> usize {
        let Ok(dir) = dir() else { return 0 };
        let wanted: Option<Vec<String>> =
            hosts.map(|hs| hs.iter().map(|h| format!("{}.master", key(h))).collect());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return 0;
        };
        let mut ended = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".master") || wanted.as_ref().is_some_and(|w| !w.contains(&name)) {
                continue;
            }
            if let Ok(socket) = std::fs::read_to_string(e.path())
                && Path::new(&socket).starts_with(&dir)
            {
                let ok = std::process::Command::new("ssh")
                    .arg("-S")
                    .arg(&socket)
                    .args(["-O", "exit", "runbook-master"])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    ended += 1;
                }
                if let Some(parent) = Path::new(&socket).parent()
                    && parent != dir
                {
                    let _ = std::fs::remove_dir_all(parent);
                }
            }
            let _ = std::fs::remove_file(e.path());
            let _ = std::fs::remove_file(e.path().with_extension("posix"));
        }
        ended
    }
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The login shells a line is tried in, by mode: the wrapped line in shells that are
    /// not POSIX too (as far as they are installed here); the direct one in POSIX ones.
    fn shells(direct: bool) -> Vec<&'static str> {
        let all: &[&str] = if direct {
            &["sh", "bash", "dash"]
        } else {
            &["sh", "bash", "dash", "zsh", "fish"]
        };
        all.iter()
            .copied()
            .filter(|s| {
                std::process::Command::new("sh")
                    .args(["-c", &format!("command -v {s}")])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|st| st.success())
            })
            .collect()
    }

    /// Runs a remote command's line in a local `shell` (as the login shell would, with
    /// `$SHELL` naming it), feeding its stdin: (exit code, stdout, stderr).
    fn run_in(remote: &Remote, shell: &str) -> (Option<i32>, String, String) {
        use std::io::Write;
        let mut child = std::process::Command::new(shell)
            .env("SHELL", format!("/bin/{shell}"))
            .arg("-c")
            .arg(&remote.line)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(remote.stdin.as_deref().unwrap_or_default())
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn the_remote_line_quotes_every_value_and_reports_the_group() {
        for direct in [false, true] {
            for shell in shells(direct) {
                let mut spec =
                    CommandSpec::new(Program::Argv(vec!["echo".into(), "a b; $(x)".into()]));
                spec.cwd = Some("/srv/my app".into());
                spec.env = vec![("APP_ENV".into(), "prod'uction".into())];
                let remote = remote_command(&spec, "0123abcd", &tag_prefix("r1"), direct).unwrap();
                assert_eq!(remote.marker, "__runbook_pgid 0123abcd ");
                assert_eq!(remote.line.starts_with("exec sh -c "), !direct);
                // `cd` fails: the marker came first, with the nonce, the group and the login
                // shell's name, then the refusal.
                let (code, _, stderr) = run_in(&remote, shell);
                let report = stderr
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("__runbook_pgid 0123abcd "))
                    .and_then(Report::parse)
                    .unwrap_or_else(|| panic!("{shell}, direct {direct}: {stderr}"));
                assert!(report.pgid > 1, "{report:?}");
                assert_eq!(report.shell, shell);
                assert_eq!(code, Some(1), "{shell}, direct {direct}");

                spec.cwd = None;
                let remote = remote_command(&spec, "n", &tag_prefix("r1"), direct).unwrap();
                let (code, stdout, stderr) = run_in(&remote, shell);
                assert_eq!(
                    (code, stdout.as_str()),
                    (Some(0), "a b; $(x)\n"),
                    "{shell}, direct {direct}: {stderr}"
                );
            }
        }
    }

    /// An inline script runs in the wrapper itself, its values still only positional
    /// arguments; under sudo (or not marked inline) it is `exec`ed as before.
    #[test]
    fn an_inline_script_runs_in_the_wrapper_with_its_arguments() {
        let body = r#"printf '[%s]' "$#" "$1" "$2" "$RUNBOOK_RUN"; exit 3"#;
        let mut spec = CommandSpec::script("probe", body, &["/srv/my app", "it's $(x)"]);
        spec.inline = true;
        for direct in [false, true] {
            for shell in shells(direct) {
                let remote = remote_command(&spec, "n", &tag_prefix("r1"), direct).unwrap();
                assert!(
                    !remote.line.contains("exec sh -c 'printf"),
                    "{}",
                    remote.line
                );
                let (code, stdout, stderr) = run_in(&remote, shell);
                assert_eq!(code, Some(3), "{shell}, direct {direct}: {stderr}");
                assert_eq!(stdout, "[2][/srv/my app][it's $(x)][r1]", "{shell}");
            }
        }
        // No arguments: `$#` is 0, not the wrapper's own.
        let mut bare = CommandSpec::script("probe", r#"printf '%s' "$#""#, &[]);
        bare.inline = true;
        let (_, stdout, _) = run_in(&remote_command(&bare, "n", "", true).unwrap(), "sh");
        assert_eq!(stdout, "0");
        spec.sudo = Some(String::new());
        let line = remote_command(&spec, "n", &tag_prefix("r1"), true)
            .unwrap()
            .line;
        assert!(line.contains("exec sudo -n"), "{line}");
    }

    /// Only a POSIX login shell is given the script directly; a report without a shell
    /// (an unset `$SHELL`) keeps the hop.
    #[test]
    fn the_hop_is_skipped_only_for_posix_login_shells() {
        for name in ["bash", "dash", "sh", "ksh"] {
            assert!(posix_login_shell(name), "{name}");
        }
        for name in ["fish", "tcsh", "csh", "zsh", "nologin", "", "bash;x"] {
            assert!(!posix_login_shell(name), "{name}");
        }
        assert_eq!(
            Report::parse("4242 bash\n"),
            Some(Report {
                pgid: 4242,
                shell: "bash".into()
            })
        );
        assert_eq!(
            Report::parse("4242 \n").map(|r| r.shell),
            Some(String::new())
        );
        assert_eq!(Report::parse("x bash"), None);
    }

    /// Every command carries its run's id, which is how a recovery finds the commands of
    /// a dead run still running on a host.
    #[test]
    fn every_remote_command_carries_its_run_id() {
        // In the environment the command was started with (what a recovery reads in
        // /proc/PID/environ), not only in a shell variable.
        let spec = CommandSpec::new(Program::Argv(vec![
            "sh".into(),
            "-c".into(),
            "tr '\\0' '\\n' < /proc/$$/environ | grep '^RUNBOOK_RUN='".into(),
        ]));
        for direct in [false, true] {
            for shell in shells(direct) {
                let remote =
                    remote_command(&spec, "n", &tag_prefix("20261201T1-2a-3b"), direct).unwrap();
                let (code, stdout, stderr) = run_in(&remote, shell);
                assert_eq!(code, Some(0), "{shell}, direct {direct}: {stderr}");
                assert_eq!(stdout, "RUNBOOK_RUN=20261201T1-2a-3b\n", "{shell}");
            }
        }
    }

    /// `env` values reach the command through stdin, never through the command line;
    /// a multi-line value arrives whole, and the command's own stdin follows untouched.
    #[test]
    fn env_values_travel_on_stdin_not_in_the_command_line() {
        let secret = "s3cr3t-'quoted' $(id)\nsecond line\n";
        let mut spec = CommandSpec::new(Program::Shell(
            "printf '[%s]' \"$TOKEN\" \"$OTHER\"; cat".into(),
        ));
        spec.env = vec![
            ("TOKEN".into(), secret.into()),
            ("OTHER".into(), "plain".into()),
        ];
        spec.stdin = Some(b"the command's own input\n".to_vec());
        for direct in [false, true] {
            for shell in shells(direct) {
                let remote = remote_command(&spec, "n", &tag_prefix("r1"), direct).unwrap();
                assert!(
                    !remote.line.contains("s3cr3t") && !remote.line.contains("plain"),
                    "an env value is in the command line: {}",
                    remote.line
                );
                let (code, stdout, stderr) = run_in(&remote, shell);
                assert_eq!(code, Some(0), "{shell}, direct {direct}: {stderr}");
                assert_eq!(
                    stdout,
                    format!("[{secret}][plain]the command's own input\n"),
                    "{shell}, direct {direct}"
                );
            }
        }
    }

    #[test]
    fn with_sudo_the_variables_are_named_for_sudo_to_keep() {
        let mut spec = CommandSpec::new(Program::Argv(vec!["true".into()]));
        spec.sudo = Some(String::new());
        spec.env = vec![("FOO".into(), "bar".into()), ("BAZ".into(), "q".into())];
        assert_eq!(
            spec.program
                .argv_with_sudo(Some(""), &spec.env_names().unwrap()),
            ["sudo", "-n", "--preserve-env=FOO,BAZ", "--", "true"]
        );
        let line = remote_command(&spec, "n", &tag_prefix("r1"), false)
            .unwrap()
            .line;
        assert!(line.contains("--preserve-env=FOO,BAZ"), "{line}");
        assert!(!line.contains("bar"), "{line}");
        let refused = Finished {
            code: Some(1),
            stderr:
                "sudo: sorry, you are not allowed to set the following environment variables: FOO\n"
                    .into(),
            ..Finished::default()
        };
        let err = spec.sudo_env_refusal(&refused).expect("recognised");
        assert!(err.to_string().contains("SETENV"), "{err}");
    }

    #[test]
    fn bad_environment_names_are_refused() {
        let mut spec = CommandSpec::new(Program::Argv(vec!["true".into()]));
        spec.env = vec![("A;rm".into(), "x".into())];
        assert!(remote_command(&spec, "n", &tag_prefix("r1"), true).is_err());
    }
}
