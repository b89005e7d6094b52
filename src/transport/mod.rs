//! How a command reaches a host. A transport only executes; it knows nothing of dry-run,
//! events or policy, which live in the effect layer (`effects`).

pub(crate) mod local;
pub(crate) mod ssh;
pub(crate) mod transfer;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::interrupt::Interrupt;

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Program {
    /// An argument vector: no shell is involved locally; remotely every argument is quoted.
    Argv(Vec<String>),
    /// An explicit shell script (`sh -c`), for pipelines. The caller chose the risk.
    Shell(String),
}

impl Program {
    /// The argument vector to execute, with `sudo -n [-u USER] --` in front when asked.
    /// `keep` names the environment variables the command is given: sudo resets the
    /// environment, so they are named in `--preserve-env=…` (sudoers decides whether
    /// that is allowed; see [`ExecError::SudoEnv`]).
    pub(crate) fn argv_with_sudo(&self, sudo: Option<&str>, keep: &[String]) -> Vec<String> {
        let base = match self {
            Program::Argv(argv) => argv.clone(),
            Program::Shell(script) => vec!["sh".into(), "-c".into(), script.clone()],
        };
        match sudo {
            None => base,
            Some(user) => {
                let mut v = vec!["sudo".to_owned(), "-n".to_owned()];
                if !keep.is_empty() {
                    v.push(format!("--preserve-env={}", keep.join(",")));
                }
                if !user.is_empty() {
                    v.push("-u".into());
                    v.push(user.to_owned());
                }
                v.push("--".into());
                v.extend(base);
                v
            }
        }
    }

    /// The words shown in events and error messages.
    pub(crate) fn display_argv(&self) -> Vec<String> {
        match self {
            Program::Argv(argv) => argv.clone(),
            Program::Shell(script) => vec!["sh".into(), "-c".into(), script.clone()],
        }
    }
}

/// The environment variable every command of a run carries, holding the run id: a
/// recovery finds a dead run's commands still running on a host by it.
pub(crate) const RUN_TAG: &str = "RUNBOOK_RUN";

#[derive(Debug, Clone)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent switches of one command (tolerate, quiet, silent, shielded, read), each set by its own caller"
)]
pub(crate) struct CommandSpec {
    pub program: Program,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    /// Standard input held in memory: small text (a rendered `.env`, a JSON record).
    pub stdin: Option<Vec<u8>>,
    /// Standard input streamed from this file after `stdin` (if both are set), through a
    /// buffer of [`CHUNK`] bytes: an upload is never held in memory, and any number of
    /// hosts can read the same file at once.
    pub stdin_file: Option<PathBuf>,
    /// Standard output written to this file (created or truncated) as it arrives,
    /// instead of captured or shown: a download is never held in memory.
    /// `Finished::stdout` is then empty.
    pub stdout_file: Option<PathBuf>,
    /// Run through `sudo -n` (never prompts); `Some("")` means root.
    pub sudo: Option<String>,
    pub timeout: Option<Duration>,
    /// A non-zero exit is a result, not an error.
    pub tolerate: bool,
    /// Do not stream output lines as events (they are still captured).
    pub quiet: bool,
    /// Internal housekeeping (lock heartbeats): no events at all.
    pub silent: bool,
    /// End-of-run housekeeping (releasing locks, the host's audit line) that a first or
    /// second signal must not cut short — a lock left behind blocks the next deploy.
    /// Only the forced stop (third signal: connections closed) ends it.
    pub shielded: bool,
    /// What people read instead of the argument vector (for runbook's own scripts).
    pub label: Option<String>,
    /// Only reads (runbook's own probes, or a script command marked `read: true`): it
    /// runs for real in a dry run, so that the plan is built on what the hosts are.
    pub read: bool,
    /// One of runbook's own [`CommandSpec::script`]s that an SSH host runs in the
    /// command's wrapper shell (`set -- ARGS; BODY`) instead of `exec sh -c BODY sh ARGS`:
    /// one process less. Only for short scripts that start nothing a recovery must find
    /// (the run id is then in the shell's variables, not in its `/proc` environment).
    pub inline: bool,
}

impl CommandSpec {
    /// One of runbook's own fixed shell scripts: values reach it only as positional
    /// arguments (`sh -c BODY sh "$1" "$2" …`), never spliced into the text; people read
    /// `label` instead of the script.
    pub(crate) fn script(label: impl Into<String>, body: &str, args: &[&str]) -> CommandSpec {
        let mut words = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            body.to_owned(),
            "sh".to_owned(),
        ];
        words.extend(args.iter().map(|a| (*a).to_owned()));
        let mut spec = CommandSpec::new(Program::Argv(words));
        spec.label = Some(label.into());
        spec
    }

    pub(crate) fn new(program: Program) -> CommandSpec {
        CommandSpec {
            program,
            cwd: None,
            env: Vec::new(),
            stdin: None,
            stdin_file: None,
            stdout_file: None,
            sudo: None,
            timeout: None,
            tolerate: false,
            quiet: false,
            silent: false,
            shielded: false,
            label: None,
            read: false,
            inline: false,
        }
    }
}

pub(crate) use crate::origin::random_hex;

/// What a finished process left behind.
#[derive(Debug, Clone, Default)]
pub(crate) struct Finished {
    /// Exit code; `None` when the process was ended by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

/// Why a command did not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("timed out after {}", humantime::format_duration(*after))]
    Timeout { after: Duration, partial: Finished },
    #[error("interrupted")]
    Interrupted { partial: Finished },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "{source}{}",
        if *earlier { " (it failed earlier in this run: not tried again)" } else { "" }
    )]
    Connect {
        source: ssh::ConnectError,
        /// The connection failed earlier in this run and was not tried again.
        earlier: bool,
    },
    #[error(transparent)]
    NoControlDir(#[from] ssh::NoControlDir),
    #[error(transparent)]
    Quote(#[from] crate::quote::NulByte),
    #[error("the connection to the host was lost: {message}")]
    Disconnected { message: String, partial: Finished },
    #[error(
        "sudo refused to give the command its environment ({}): {detail}\n  hint: sudo resets the environment and passes variables on only where sudoers allows it: add the SETENV tag to the rule (e.g. `deploy ALL=(root) NOPASSWD:SETENV: /usr/bin/php`), or keep them with `Defaults env_keep += \"{}\"`",
        names.join(", "),
        names.join(" ")
    )]
    SudoEnv { names: Vec<String>, detail: String },
}

/// What kind of failure ended a command, as scripts read it (`e.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// It ran and exited non-zero.
    Exit,
    /// It ran and was killed by a signal.
    Signal,
    /// It ran past its timeout and was killed.
    Timeout,
    /// The host could not be reached, or the connection to it was lost.
    Unreachable,
    /// It was not run: sudo refused it, or runbook's own gate did.
    Refused,
    /// Ctrl-C / SIGTERM stopped it.
    Interrupted,
    /// Anything else (the program could not start, a transfer failed).
    Error,
}

impl ErrorKind {
    /// The name scripts compare against: `"exit"`, `"timeout"`, `"unreachable"`, ….
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Exit => "exit",
            ErrorKind::Signal => "signal",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Refused => "refused",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Error => "error",
        }
    }
}

impl ExecError {
    /// Which kind of failure this is.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            ExecError::Timeout { .. } => ErrorKind::Timeout,
            ExecError::Interrupted { .. } => ErrorKind::Interrupted,
            ExecError::Connect { .. } | ExecError::Disconnected { .. } => ErrorKind::Unreachable,
            ExecError::SudoEnv { .. } => ErrorKind::Refused,
            ExecError::Spawn { .. }
            | ExecError::Io(_)
            | ExecError::Unsupported(_)
            | ExecError::NoControlDir(_)
            | ExecError::Quote(_) => ErrorKind::Error,
        }
    }
}

impl CommandSpec {
    /// The names of the variables in `env`, checked: each must be a shell identifier
    /// (they are exported by name on the remote side).
    pub(crate) fn env_names(&self) -> Result<Vec<String>, ExecError> {
        self.env
            .iter()
            .map(|(k, _)| {
                let valid = !k.is_empty()
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !k.starts_with(|c: char| c.is_ascii_digit());
                if valid {
                    Ok(k.clone())
                } else {
                    Err(ExecError::Unsupported(format!(
                        "`{k}` is not a valid environment variable name"
                    )))
                }
            })
            .collect()
    }

    /// Whether a finished command's failure is sudo refusing to keep `env`: then the
    /// command never ran, and the error says what sudoers needs.
    pub(crate) fn sudo_env_refusal(&self, f: &Finished) -> Option<ExecError> {
        if self.sudo.is_none() || self.env.is_empty() || f.code != Some(1) {
            return None;
        }
        let line = f.stderr.lines().find(|l| {
            l.starts_with("sudo: ")
                && (l.contains("not allowed to set the following environment variables")
                    || l.contains("not allowed to preserve the environment"))
        })?;
        Some(ExecError::SudoEnv {
            names: self.env.iter().map(|(k, _)| k.clone()).collect(),
            detail: line.trim().to_owned(),
        })
    }
}

/// Where each output line goes while a command runs.
pub(crate) type LineSink<'a> = &'a (dyn Fn(crate::output::Stream, &str) + Send + Sync);

/// The most output kept per stream (`r.stdout`, `r.stderr`): when a command prints more,
/// the oldest output is dropped and the newest (at least half of this) is kept — the tail
/// is what a failure message and a script's last-line parsing need. A command that prints
/// a gigabyte costs at most this much per stream.
pub(crate) const MAX_CAPTURE: usize = 8 * 1024 * 1024;

/// The longest line handed to the output events at once: a longer line (or output
/// without newlines) is shown in pieces of this size. The captured text is unaffected.
pub(crate) const MAX_LINE: usize = 8 * 1024;

/// The buffer each stream of a command reads or writes through (stdin from a file,
/// stdout to a file, output capture): a transfer costs this much per host in flight.
pub(crate) const CHUNK: usize = 64 * 1024;

/// The newest output of one stream, at most `limit` bytes (see [`MAX_CAPTURE`]).
#[derive(Debug)]
pub(crate) struct Capture {
    bytes: Vec<u8>,
    limit: usize,
}

impl Capture {
    pub(crate) fn new() -> Capture {
        Capture::with_limit(MAX_CAPTURE)
    }

    pub(crate) fn with_limit(limit: usize) -> Capture {
        Capture {
            bytes: Vec::new(),
            limit: limit.max(2),
        }
    }

    /// Takes off one trailing newline, if the kept text ends with one.
    pub(crate) fn pop_newline(&mut self) {
        if self.bytes.last() == Some(&b'\n') {
            self.bytes.pop();
        }
    }

    pub(crate) fn push(&mut self, more: &[u8]) {
        if more.len() >= self.limit {
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&more[more.len() - self.limit / 2..]);
        } else {
            self.bytes.extend_from_slice(more);
        }
        if self.bytes.len() > self.limit {
            // Drop to half at once (amortised), then to the next line start if one is
            // near: the kept text begins with a whole line where it can.
            let mut cut = self.bytes.len() - self.limit / 2;
            if let Some(nl) = self.bytes[cut..]
                .iter()
                .take(MAX_LINE)
                .position(|b| *b == b'\n')
            {
                cut += nl + 1;
            }
            self.bytes.drain(..cut);
        }
    }

    pub(crate) fn into_string(self) -> String {
        match String::from_utf8(self.bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

/// Reads `reader` into `buf` (see [`Capture`]), handing each line (at most [`MAX_LINE`]
/// bytes at a time) to `on_line` unless `quiet`. Memory stays bounded whatever the
/// command prints, newlines or not.
pub(crate) async fn pump(
    reader: Option<impl AsyncRead + Unpin>,
    stream: crate::output::Stream,
    buf: &mut Capture,
    on_line: LineSink<'_>,
    quiet: bool,
) {
    let Some(reader) = reader else { return };
    let mut reader = BufReader::with_capacity(CHUNK, reader);
    let mut line: Vec<u8> = Vec::new();
    let show = |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        on_line(stream, text.trim_end_matches(['\n', '\r']));
    };
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (take, ends_line) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        buf.push(&chunk[..take]);
        if !quiet {
            line.extend_from_slice(&chunk[..take]);
            if ends_line {
                show(&line);
                line.clear();
            } else {
                while line.len() > MAX_LINE {
                    // Shown in pieces, cut where a character starts.
                    let mut cut = MAX_LINE;
                    while cut > 0 && line[cut] & 0xC0 == 0x80 {
                        cut -= 1;
                    }
                    let cut = if cut == 0 { MAX_LINE } else { cut };
                    show(&line[..cut]);
                    line.drain(..cut);
                }
            }
        }
        reader.consume(take);
    }
    if !line.is_empty() {
        show(&line);
    }
}

/// Writes `head`, then the contents of `file`, to a command's standard input through a
/// [`CHUNK`]-sized buffer, and closes it. A command that exits without reading it all
/// ends the feed (broken pipe): that is not an error here, the exit status says what
/// happened.
pub(crate) async fn feed(
    pipe: Option<impl AsyncWrite + Unpin>,
    head: Option<&[u8]>,
    file: Option<tokio::fs::File>,
) {
    let Some(mut pipe) = pipe else { return };
    let write = async {
        if let Some(head) = head {
            pipe.write_all(head).await?;
        }
        if let Some(file) = file {
            let mut reader = BufReader::with_capacity(CHUNK, file);
            tokio::io::copy_buf(&mut reader, &mut pipe).await?;
        }
        pipe.shutdown().await
    };
    let _: std::io::Result<()> = write.await;
}

/// Opens a command's `stdin_file` before it starts, so that a missing file is an error
/// that names it rather than a command that read an empty input.
pub(crate) async fn open_input(path: Option<&Path>) -> Result<Option<tokio::fs::File>, ExecError> {
    match path {
        None => Ok(None),
        Some(p) => tokio::fs::File::open(p).await.map(Some).map_err(|e| {
            ExecError::Unsupported(format!("cannot read the input file {}: {e}", p.display()))
        }),
    }
}

/// Creates a command's `stdout_file` before it starts.
pub(crate) async fn open_output(path: Option<&Path>) -> Result<Option<tokio::fs::File>, ExecError> {
    match path {
        None => Ok(None),
        Some(p) => tokio::fs::File::create(p).await.map(Some).map_err(|e| {
            ExecError::Unsupported(format!("cannot write the output file {}: {e}", p.display()))
        }),
    }
}

/// Copies a command's stdout into `file`; a write failure (disk full) is kept for the
/// caller and the rest of the output is drained so the command is not blocked.
pub(crate) async fn sink(
    reader: Option<impl AsyncRead + Unpin>,
    file: tokio::fs::File,
) -> std::io::Result<()> {
    let Some(reader) = reader else { return Ok(()) };
    let mut reader = BufReader::with_capacity(CHUNK, reader);
    let mut out = tokio::io::BufWriter::with_capacity(CHUNK, file);
    let copied = tokio::io::copy_buf(&mut reader, &mut out).await;
    let flushed = match copied {
        Ok(_) => out.flush().await,
        Err(e) => {
            let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
            Err(e)
        }
    };
    match flushed {
        Ok(()) => out.into_inner().sync_data().await,
        Err(e) => Err(e),
    }
}

/// A command's standard output: written to `file` when the spec names one ([`sink`]),
/// otherwise captured into `buf` and shown line by line unless `quiet` ([`pump`]).
pub(crate) async fn stdout(
    reader: Option<impl AsyncRead + Unpin>,
    file: Option<tokio::fs::File>,
    buf: &mut Capture,
    on_line: LineSink<'_>,
    quiet: bool,
) -> std::io::Result<()> {
    if let Some(file) = file {
        sink(reader, file).await
    } else {
        pump(reader, crate::output::Stream::Stdout, buf, on_line, quiet).await;
        Ok(())
    }
}

/// What a command that was cut short (or whose exit code is filled in after) left:
/// its output so far and its time since `started`.
pub(crate) fn partial(out: Capture, err: Capture, started: std::time::Instant) -> Finished {
    Finished {
        code: None,
        stdout: out.into_string(),
        stderr: err.into_string(),
        duration: started.elapsed(),
    }
}

/// How a command's wait ended.
pub(crate) enum Ended<T> {
    Done(T),
    Timeout,
    Interrupted,
}

/// A command that ran to its end: refused when sudo dropped its environment, failed when
/// its output could not be written where it was sent (`stdout_file`), else `f`.
pub(crate) fn completed(
    spec: &CommandSpec,
    f: Finished,
    written: std::io::Result<()>,
) -> Result<Finished, ExecError> {
    if let Some(refused) = spec.sudo_env_refusal(&f) {
        return Err(refused);
    }
    written
        .map_err(|e| ExecError::Unsupported(format!("cannot write the command's output: {e}")))?;
    Ok(f)
}

/// The one race every transport runs a command under: its own end, the deadline
/// (`None`: none), or a signal. The caller kills what is left on a timeout or signal.
pub(crate) async fn race<T>(
    work: impl Future<Output = T>,
    deadline: Option<Instant>,
    interrupt: &Interrupt,
) -> Ended<T> {
    let deadline = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        done = work => Ended::Done(done),
        () = deadline => Ended::Timeout,
        () = interrupt.signalled() => Ended::Interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Stream;
    use std::sync::Mutex;

    /// A command that prints far more than the cap keeps a bounded capture that ends with
    /// its last line, and its lines reach the events in bounded pieces.
    #[tokio::test]
    async fn a_flood_of_output_keeps_a_bounded_tail() {
        let mut data = Vec::new();
        for i in 0..200_000 {
            data.extend_from_slice(format!("line {i:07} {}\n", "x".repeat(40)).as_bytes());
        }
        // And one line of a megabyte with no newline at all, at the end.
        data.extend(std::iter::repeat_n(b'y', 1 << 20));
        data.extend_from_slice("ünïcode tail".as_bytes());
        let mut cap = Capture::with_limit(64 * 1024);
        let longest = Mutex::new(0usize);
        let lines = Mutex::new(0usize);
        let on_line = |_: Stream, l: &str| {
            let mut m = longest.lock().unwrap();
            *m = (*m).max(l.len());
            *lines.lock().unwrap() += 1;
        };
        pump(Some(&data[..]), Stream::Stdout, &mut cap, &on_line, false).await;
        let text = cap.into_string();
        assert!(text.len() <= 64 * 1024, "kept {} bytes", text.len());
        assert!(text.ends_with("yyyyünïcode tail"), "the tail was lost");
        assert!(
            *longest.lock().unwrap() <= MAX_LINE,
            "a piece over MAX_LINE"
        );
        assert_eq!(*lines.lock().unwrap(), 200_000 + (1 << 20) / MAX_LINE + 1);
    }

    #[tokio::test]
    async fn short_output_is_kept_whole() {
        let mut cap = Capture::new();
        pump(
            Some(&b"a\nb"[..]),
            Stream::Stdout,
            &mut cap,
            &|_, _| {},
            true,
        )
        .await;
        assert_eq!(cap.into_string(), "a\nb");
    }
}
