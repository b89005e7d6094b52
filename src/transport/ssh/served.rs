//! One shell per connection that starts the run's commands: no new session per command.
//!
//! Every command sent as its own session costs the host an sshd session set-up and a
//! login shell (with its dotfiles) before the command itself starts; at 200 hosts that is
//! nine tenths of the work of a short command. The first command on a connection opens
//! one more session that runs [`SERVER`], a POSIX `sh` loop reading requests on its
//! standard input. Later commands on that connection are requests to it, one at a time;
//! a command that comes while it is busy (or one it cannot carry: see
//! [`super::served_eligible`]) gets a session of its own as before.
//!
//! A request is the command's wrapper script ([`super::served_command`]: it reports its
//! process group and carries the run id) and, optionally, its standard input as a value.
//! The shell runs the wrapper in a subshell, which `exec`s the command through `setsid`:
//! in a session and process group of its own, as sshd would, so a timeout or Ctrl-C
//! still kills exactly that group, and a recovery still finds a dead run's commands
//! (their parent is a shell whose command line names [`SERVED_NAME`]). Values reach the
//! shell only inside its standard input, quoted: nothing of a request appears in any
//! process's command line.
//!
//! After the command, the shell writes a newline and `ID CODE` on standard output and a
//! newline and `ID` on standard error, `ID` being the request's random nonce. The reader
//! takes everything before that as the command's output, less the one newline the shell
//! added, so the output is exactly what the command wrote.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::output::Stream;
use crate::transport::{Capture, LineSink, MAX_LINE};

/// `$0` of the serving shell: what a recovery recognises as the parent of a command.
pub(crate) const SERVED_NAME: &str = "runbook-served";

/// The greeting the shell prints once it knows it can serve (`setsid` is there).
const READY: &str = "runbook-served ready";
/// What it prints instead when it cannot; it then exits without reading a request.
const UNABLE: &str = "runbook-served unable";

/// The longest wrapper sent as the shell's argument (see [`SERVER`]); a longer one is the
/// first request on its standard input.
pub(crate) const MAX_ARGUMENT: usize = 16 * 1024;

/// Standard input larger than this, or holding a NUL byte (a shell value cannot), is not
/// sent to the shell: the command gets a session of its own.
pub(crate) const MAX_INPUT: usize = 256 * 1024;

/// The serving loop, started as `sh -c SERVER runbook-served OPENING`. It reads nothing
/// as a request before a line that is exactly `OPENING` (a random word of this shell's):
/// the first request goes with that line at once, without waiting a round trip for the
/// greeting, and whatever a login dotfile may have read of it leaves the rest unrun.
/// A request: a line count, that many lines of shell text setting `__rb_s` (the wrapper)
/// and maybe `__rb_i` (standard input), then a line with the nonce.
///
/// The run's first command on the connection, when it has no standard input (and so no
/// environment values: those travel only there), rides in the arguments instead:
/// `sh -c SERVER runbook-served OPENING WRAPPER NONCE`, run right after the greeting.
/// sshd opens a session's input only once the shell is started, so a first request on
/// standard input would wait a round trip more. Such a command line is what a session of
/// its own would have shown in `ps` anyway.
pub(crate) const SERVER: &str = r#"{ command -v setsid && [ -r /proc/self/stat ]; } >/dev/null 2>&1 || { echo 'runbook-served unable'; exit 0; }
echo 'runbook-served ready'
if [ "$#" -ge 3 ]; then
  ( __rb_s=$2; set --; eval "$__rb_s" ) </dev/null
  __rb_c=$?
  printf '\n%s %s\n' "$3" "$__rb_c"
  printf '\n%s\n' "$3" >&2
fi
while :; do IFS= read -r __rb_l || exit 0; [ "$__rb_l" = "$1" ] && break; done
set --
while IFS= read -r __rb_n; do
  __rb_r=
  while [ "$__rb_n" -gt 0 ]; do IFS= read -r __rb_l || exit 0; __rb_r="$__rb_r$__rb_l
"; __rb_n=$((__rb_n - 1)); done
  IFS= read -r __rb_id || exit 0
  unset __rb_i
  eval "$__rb_r"
  if [ -n "${__rb_i+x}" ]; then
    printf '%s' "$__rb_i" | ( eval "$__rb_s" )
  else
    ( eval "$__rb_s" ) </dev/null
  fi
  __rb_c=$?
  printf '\n%s %s\n' "$__rb_id" "$__rb_c"
  printf '\n%s\n' "$__rb_id" >&2
done"#;

/// Whether `input` can travel as a shell value.
pub(crate) fn carries(input: &[u8]) -> bool {
    input.len() <= MAX_INPUT && !input.contains(&0)
}

/// The request for `wrapper` with `input`, and its nonce.
pub(crate) fn request(wrapper: &str, input: Option<&[u8]>, nonce: &str) -> Vec<u8> {
    let mut text = b"__rb_s=".to_vec();
    single_quoted(wrapper.as_bytes(), &mut text);
    text.push(b'\n');
    if let Some(input) = input {
        text.extend_from_slice(b"__rb_i=");
        single_quoted(input, &mut text);
        text.push(b'\n');
    }
    let lines = bytecount(&text);
    let mut out = format!("{lines}\n").into_bytes();
    out.extend_from_slice(&text);
    out.extend_from_slice(nonce.as_bytes());
    out.push(b'\n');
    out
}

/// How many lines `text` holds.
fn bytecount(text: &[u8]) -> usize {
    text.split(|b| *b == b'\n').count() - 1
}

/// `'…'` with every `'` written as `'\''`: any bytes but NUL, newlines included.
fn single_quoted(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'\'');
    for &b in bytes {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

/// The first request with the opening line before it (see [`SERVER`]).
pub(crate) fn opening(word: &str, request: &[u8]) -> Vec<u8> {
    let mut out = format!("{word}\n").into_bytes();
    out.extend_from_slice(request);
    out
}

/// What the shell said before its first request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Greeting {
    /// It serves.
    Ready,
    /// It cannot (no `setsid` or `/proc`) or ended first: it has run nothing.
    Unable,
    /// Too much came before the greeting: the shell may still read what was sent.
    Unclear,
}

/// Why a served command gave no whole answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The shell said it cannot serve, or ended before the command started: nothing ran.
    NotStarted,
    /// The shell ended while the command ran: it may have done part of its work.
    Midway,
}

/// Reads up to the greeting (a login shell's dotfiles may print first).
pub(crate) async fn greeted(out: &mut (impl AsyncBufRead + Unpin)) -> Greeting {
    let mut budget = tokio::io::AsyncReadExt::take(out, 64 * 1024);
    loop {
        let mut line = Vec::new();
        match budget.read_until(b'\n', &mut line).await {
            Ok(0) if budget.limit() == 0 => return Greeting::Unclear,
            // Its output ended before the greeting, which comes before any request.
            Ok(0) => return Greeting::Unable,
            Err(_) => return Greeting::Unclear,
            Ok(_) => {}
        }
        match String::from_utf8_lossy(&line).trim_end() {
            READY => return Greeting::Ready,
            UNABLE => return Greeting::Unable,
            _ => {}
        }
    }
}

/// Sends a request.
pub(crate) async fn send(
    stdin: &mut (impl AsyncWrite + Unpin),
    request: &[u8],
) -> std::io::Result<()> {
    stdin.write_all(request).await?;
    stdin.flush().await
}

/// What standard error held before the wrapper's report, and the text after the report's
/// marker; `Ok(None)` when the command ended without one (its stderr is then in `early`).
pub(crate) async fn find_report(
    err: &mut (impl AsyncBufRead + Unpin),
    marker: &str,
    nonce: &str,
    early: &mut Vec<u8>,
) -> Result<Option<String>, Lost> {
    let end = format!("{nonce}\n");
    loop {
        let mut line = Vec::new();
        match err.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return Err(Lost::NotStarted),
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(at) = text.find(marker) {
            early.extend_from_slice(&line[..at]);
            if at > 0 {
                early.push(b'\n');
            }
            return Ok(Some(text[at + marker.len()..].to_owned()));
        }
        if line == end.as_bytes() {
            // The shell's own newline before the end line is not the command's.
            if early.last() == Some(&b'\n') {
                early.pop();
            }
            return Ok(None);
        }
        early.extend_from_slice(&line);
        if early.len() > 64 * 1024 {
            return Ok(None);
        }
    }
}

/// Reads one command's stream up to its end line (`NONCE` then `tail`), into `buf` and, a
/// line at a time as each arrives, to `on_line`. Returns what followed the nonce on the
/// end line.
pub(crate) async fn pump_until(
    reader: &mut (impl AsyncBufRead + Unpin),
    nonce: &str,
    stream: Stream,
    buf: &mut Capture,
    on_line: LineSink<'_>,
    quiet: bool,
) -> Result<String, Lost> {
    let show = |line: &[u8]| {
        if !quiet {
            let text = String::from_utf8_lossy(line);
            on_line(stream, text.trim_end_matches(['\n', '\r']));
        }
    };
    // An empty line is shown only once another line follows: it may be the newline the
    // shell wrote before the end line. Bytes go to `buf` at once (a timeout keeps them),
    // and the shell's newline is taken off at the end.
    let mut empty_held = false;
    let mut line: Vec<u8> = Vec::new();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => {
                if !line.is_empty() {
                    show(&line);
                }
                return Err(Lost::Midway);
            }
            Ok(chunk) => chunk,
        };
        let (take, ends_line) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        line.extend_from_slice(&chunk[..take]);
        reader.consume(take);
        if ends_line {
            if let Some(rest) = end_line(&line, nonce) {
                buf.pop_newline();
                return Ok(rest);
            }
            if std::mem::take(&mut empty_held) {
                show(b"");
            }
            buf.push(&line);
            if line == b"\n" {
                empty_held = true;
            } else {
                show(&line);
            }
            line.clear();
        } else if line.len() > MAX_LINE {
            // A long line is passed on in pieces, cut where a character starts.
            if std::mem::take(&mut empty_held) {
                show(b"");
            }
            let mut cut = MAX_LINE;
            while cut > 0 && line[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            let cut = if cut == 0 { MAX_LINE } else { cut };
            buf.push(&line[..cut]);
            show(&line[..cut]);
            line.drain(..cut);
        }
    }
}

/// Reads one command's output after its report: `early` (stderr that came before the
/// report) first, then both streams up to their end lines; `err` is `None` when stderr
/// already ended (no report). Returns the exit code as the shell wrote it.
pub(crate) async fn read_to_end(
    out: &mut (impl AsyncBufRead + Unpin),
    err: Option<&mut (impl AsyncBufRead + Unpin)>,
    early: &[u8],
    nonce: &str,
    (out_buf, err_buf): (&mut Capture, &mut Capture),
    on_line: LineSink<'_>,
    quiet: bool,
) -> Result<String, Lost> {
    for line in early.split_inclusive(|b| *b == b'\n') {
        if !quiet {
            let text = String::from_utf8_lossy(line);
            on_line(Stream::Stderr, text.trim_end_matches(['\n', '\r']));
        }
        err_buf.push(line);
    }
    let code = pump_until(out, nonce, Stream::Stdout, out_buf, on_line, quiet);
    let ended = async {
        match err {
            Some(err) => pump_until(err, nonce, Stream::Stderr, err_buf, on_line, quiet)
                .await
                .map(drop),
            None => Ok(()),
        }
    };
    let (code, ended) = tokio::join!(code, ended);
    ended?;
    code
}

/// The text after `nonce` when `line` is an end line (`NONCE\n` or `NONCE CODE\n`).
fn end_line(line: &[u8], nonce: &str) -> Option<String> {
    let rest = line.strip_prefix(nonce.as_bytes())?;
    let rest = rest.strip_suffix(b"\n")?;
    match rest {
        [] => Some(String::new()),
        [b' ', code @ ..] if code.iter().all(u8::is_ascii_digit) => {
            Some(String::from_utf8_lossy(code).into_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ssh::{PGID_MARKER, Report, served_command, tag_prefix};
    use crate::transport::{CommandSpec, Program};
    use std::process::Stdio;
    use tokio::io::BufReader;
    use tokio::process::{ChildStderr, ChildStdin, ChildStdout, Command};

    struct Shell {
        stdin: ChildStdin,
        out: BufReader<ChildStdout>,
        err: BufReader<ChildStderr>,
        child: tokio::process::Child,
    }

    const WORD: &str = "0pen1ng";

    /// The serving loop under `shell`, as sshd's login shell would start it, its opening
    /// word sent (as a connection sends it with the first request, before the greeting).
    async fn start(shell: &str) -> Shell {
        let mut s = spawn(shell);
        send(&mut s.stdin, format!("{WORD}\n").as_bytes())
            .await
            .expect("sent");
        s
    }

    fn spawn(shell: &str) -> Shell {
        spawn_with(shell, &[], None)
    }

    /// The serving loop under `shell` with `extra` after its opening word, `PATH` set to
    /// `path` when given.
    fn spawn_with(shell: &str, extra: &[&str], path: Option<&std::path::Path>) -> Shell {
        let mut cmd = Command::new(shell);
        cmd.args(["-c", SERVER, SERVED_NAME, WORD])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let mut child = cmd.spawn().expect("a shell starts");
        Shell {
            stdin: child.stdin.take().expect("stdin"),
            out: BufReader::new(child.stdout.take().expect("stdout")),
            err: BufReader::new(child.stderr.take().expect("stderr")),
            child,
        }
    }

    struct Ran {
        code: String,
        out: String,
        err: String,
        lines: Vec<(Stream, String)>,
        pgid: Option<i64>,
    }

    async fn run(shell: &mut Shell, spec: &CommandSpec) -> Ran {
        let remote = served_command(spec, "n0nce", &tag_prefix("run-1")).expect("a line");
        let nonce = crate::transport::random_hex(16);
        send(
            &mut shell.stdin,
            &request(&remote.line, remote.stdin.as_deref(), &nonce),
        )
        .await
        .expect("sent");
        let lines = std::sync::Mutex::new(Vec::new());
        let sink = |s: Stream, l: &str| lines.lock().expect("lines").push((s, l.to_owned()));
        let mut early = Vec::new();
        let report = find_report(&mut shell.err, &remote.marker, &nonce, &mut early)
            .await
            .expect("the command started");
        let mut out = Capture::new();
        let mut err = Capture::new();
        err.push(&early);
        let code = pump_until(
            &mut shell.out,
            &nonce,
            Stream::Stdout,
            &mut out,
            &sink,
            false,
        )
        .await
        .expect("stdout ends");
        if report.is_some() {
            pump_until(
                &mut shell.err,
                &nonce,
                Stream::Stderr,
                &mut err,
                &sink,
                false,
            )
            .await
            .expect("stderr ends");
        }
        Ran {
            code,
            out: out.into_string(),
            err: err.into_string(),
            lines: lines.into_inner().expect("lines"),
            pgid: report.as_deref().and_then(Report::parse).map(|r| r.pgid),
        }
    }

    fn script(body: &str) -> CommandSpec {
        CommandSpec::new(Program::Argv(vec!["sh".into(), "-c".into(), body.into()]))
    }

    fn shells() -> Vec<&'static str> {
        ["sh", "bash", "dash"]
            .into_iter()
            .filter(|s| {
                std::process::Command::new(s)
                    .args(["-c", "true"])
                    .status()
                    .is_ok_and(|st| st.success())
            })
            .collect()
    }

    #[tokio::test]
    async fn commands_in_a_row_get_exactly_their_own_output_and_exit_code() {
        for sh in shells() {
            let mut shell = start(sh).await;
            assert_eq!(
                greeted(&mut shell.out).await,
                Greeting::Ready,
                "{sh}: greets"
            );
            let cases: &[(&str, &str, &str, &str)] = &[
                ("printf 'a\\nb\\n'", "0", "a\nb\n", ""),
                ("printf 'no newline'", "0", "no newline", ""),
                ("true", "0", "", ""),
                ("printf '\\n\\n'; exit 3", "3", "\n\n", ""),
                ("echo out; echo err >&2; exit 7", "7", "out\n", "err\n"),
                ("printf 'e' >&2", "0", "", "e"),
                // What imitates the shell's end line is output like any other.
                ("echo 0123456789abcdef 0", "0", "0123456789abcdef 0\n", ""),
                // Nothing is left to read: a command that reads stdin sees its end.
                ("cat; echo done", "0", "done\n", ""),
            ];
            for (body, code, out, err) in cases {
                let ran = run(&mut shell, &script(body)).await;
                assert_eq!(
                    (ran.code.as_str(), ran.out.as_str(), ran.err.as_str()),
                    (*code, *out, *err),
                    "{sh}: {body}"
                );
            }
            drop(shell.stdin);
            let status = shell.child.wait().await.expect("exits");
            assert!(
                status.success(),
                "{sh}: the loop ends at the end of its input"
            );
        }
    }

    #[tokio::test]
    async fn lines_are_shown_as_they_were_written_without_the_shells_newline() {
        let mut shell = start("sh").await;
        assert_eq!(greeted(&mut shell.out).await, Greeting::Ready);
        let ran = run(&mut shell, &script("echo one; echo two >&2; printf three")).await;
        let shown: Vec<(Stream, &str)> = ran.lines.iter().map(|(s, l)| (*s, l.as_str())).collect();
        assert!(shown.contains(&(Stream::Stdout, "one")));
        assert!(shown.contains(&(Stream::Stdout, "three")));
        assert!(shown.contains(&(Stream::Stderr, "two")));
        assert_eq!(shown.len(), 3, "{shown:?}");
        // Empty lines of the command's own are shown; the shell's newline is not.
        let ran = run(&mut shell, &script("printf 'a\\n\\n'")).await;
        let shown: Vec<&str> = ran.lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(shown, ["a", ""]);
        assert_eq!(ran.out, "a\n\n");
    }

    #[tokio::test]
    async fn a_line_is_shown_and_kept_while_the_command_still_runs() {
        let mut shell = start("sh").await;
        assert_eq!(greeted(&mut shell.out).await, Greeting::Ready);
        let nonce = crate::transport::random_hex(16);
        let wrapper = "echo first; echo warn >&2; sleep 5";
        send(&mut shell.stdin, &request(wrapper, None, &nonce))
            .await
            .expect("sent");
        let lines = std::sync::Mutex::new(Vec::new());
        let sink = |_: Stream, l: &str| lines.lock().expect("lines").push(l.to_owned());
        let mut out = Capture::new();
        let mut err = Capture::new();
        let reading = read_to_end(
            &mut shell.out,
            Some(&mut shell.err),
            b"",
            &nonce,
            (&mut out, &mut err),
            &sink,
            false,
        );
        let cut = tokio::time::timeout(std::time::Duration::from_millis(700), reading).await;
        assert!(cut.is_err(), "the command still runs");
        let mut shown = lines.into_inner().expect("lines");
        shown.sort();
        assert_eq!(shown, ["first", "warn"]);
        assert_eq!(out.into_string(), "first\n");
        assert_eq!(err.into_string(), "warn\n");
    }

    #[tokio::test]
    async fn input_environment_and_directory_reach_the_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut shell = start("sh").await;
        assert_eq!(greeted(&mut shell.out).await, Greeting::Ready);
        let mut spec = script("printf '%s|%s|' \"$SECRET\" \"$(pwd)\"; cat");
        spec.env = vec![("SECRET".into(), "a 'quoted'\nmulti-line $value".into())];
        spec.stdin = Some(b"line 1\nit's \"here\"\n\ttab\x01\xff".to_vec());
        spec.cwd = Some(dir.path().display().to_string());
        let ran = run(&mut shell, &spec).await;
        let want = format!(
            "a 'quoted'\nmulti-line $value|{}|line 1\nit's \"here\"\n\ttab\u{1}\u{fffd}",
            dir.path().display()
        );
        assert_eq!(ran.out, want);
        assert_eq!(ran.code, "0");
        // Nothing of the command's environment stays in the shell for the next one.
        let ran = run(&mut shell, &script("printf '%s' \"${SECRET-unset}\"")).await;
        assert_eq!(ran.out, "unset");
    }

    #[tokio::test]
    async fn every_command_leads_a_group_of_its_own_with_the_run_id() {
        let mut shell = start("sh").await;
        assert_eq!(greeted(&mut shell.out).await, Greeting::Ready);
        let server = i64::from(shell.child.id().expect("pid"));
        let ran = run(
            &mut shell,
            &script("ps -o pgid= -o sid= -p $$; cat /proc/$$/environ | tr '\\0' '\\n' | grep RUNBOOK_RUN="),
        )
        .await;
        let pgid = ran.pgid.expect("a report");
        assert_ne!(pgid, server);
        let mut words = ran.out.split_whitespace();
        assert_eq!(words.next(), Some(pgid.to_string().as_str()), "{}", ran.out);
        assert_eq!(
            words.next(),
            Some(pgid.to_string().as_str()),
            "its own session"
        );
        assert_eq!(words.next(), Some("RUNBOOK_RUN=run-1"));
        // The shell's own command line is what a recovery recognises as the parent.
        let cmdline = std::fs::read(format!("/proc/{server}/cmdline")).expect("cmdline");
        assert!(
            cmdline
                .split(|b| *b == 0)
                .any(|w| w == SERVED_NAME.as_bytes())
        );
    }

    #[tokio::test]
    async fn a_wrapper_that_fails_before_its_report_still_ends_the_request() {
        let mut shell = start("sh").await;
        assert_eq!(greeted(&mut shell.out).await, Greeting::Ready);
        let nonce = crate::transport::random_hex(16);
        send(
            &mut shell.stdin,
            &request("echo broken >&2; exit 5", None, &nonce),
        )
        .await
        .expect("sent");
        let mut early = Vec::new();
        let marker = format!("{PGID_MARKER}x ");
        let report = find_report(&mut shell.err, &marker, &nonce, &mut early).await;
        assert_eq!(report, Ok(None));
        assert_eq!(early, b"broken\n");
        let mut out = Capture::new();
        let code = pump_until(
            &mut shell.out,
            &nonce,
            Stream::Stdout,
            &mut out,
            &|_, _| {},
            true,
        )
        .await;
        assert_eq!(code, Ok("5".to_owned()));
        // And the next request is served.
        let ran = run(&mut shell, &script("echo next")).await;
        assert_eq!(ran.out, "next\n");
    }

    #[tokio::test]
    async fn without_setsid_the_shell_says_so_and_runs_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let mut child = Command::new("/bin/sh")
            .args(["-c", SERVER, SERVED_NAME, WORD])
            .env("PATH", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        // Sent at once, as the first request is: the shell ends without reading it.
        let wrapper = format!("echo > {}", marker.display());
        let _ = send(&mut stdin, &opening(WORD, &request(&wrapper, None, "n"))).await;
        assert_eq!(greeted(&mut out).await, Greeting::Unable);
        let _ = child.wait().await;
        assert!(!marker.exists());
    }

    /// The serving loop under `shell` with `spec` as its first command in its arguments
    /// (no input): the shell, and that command's nonce and marker.
    fn spawn_with_first(
        shell: &str,
        spec: &CommandSpec,
        path: Option<&std::path::Path>,
    ) -> (Shell, String, String) {
        let remote = served_command(spec, "f1rst", &tag_prefix("run-1")).expect("a line");
        assert!(remote.stdin.is_none());
        let nonce = crate::transport::random_hex(16);
        let s = spawn_with(shell, &[&remote.line, &nonce], path);
        (s, nonce, remote.marker)
    }

    /// The first command rides in the shell's arguments: it runs after the greeting,
    /// before the opening word has even been sent, with no arguments of the loop's and
    /// an empty input (the loop's own is not its), and leads a group of its own; the
    /// next command then comes on standard input behind the word as usual.
    #[tokio::test]
    async fn the_first_command_can_ride_in_the_shells_arguments() {
        for sh in shells() {
            let first = script("echo \"args=$#\"; cat; echo err >&2; exit 4");
            let (mut shell, nonce, marker) = spawn_with_first(sh, &first, None);
            assert_eq!(greeted(&mut shell.out).await, Greeting::Ready, "{sh}");
            let mut early = Vec::new();
            let started = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                find_report(&mut shell.err, &marker, &nonce, &mut early),
            );
            let report = started
                .await
                .unwrap_or_else(|_| panic!("{sh}: the first command did not run"))
                .expect("the first command started");
            let pgid = report.as_deref().and_then(Report::parse).map(|r| r.pgid);
            assert!(pgid.is_some_and(|g| g > 0), "{sh}: no group reported");
            let mut out = Capture::new();
            let mut err = Capture::new();
            let sink = |_: Stream, _: &str| {};
            let code = pump_until(
                &mut shell.out,
                &nonce,
                Stream::Stdout,
                &mut out,
                &sink,
                true,
            )
            .await
            .expect("stdout ends");
            pump_until(
                &mut shell.err,
                &nonce,
                Stream::Stderr,
                &mut err,
                &sink,
                true,
            )
            .await
            .expect("stderr ends");
            assert_eq!(
                (
                    code.as_str(),
                    out.into_string().as_str(),
                    err.into_string().as_str()
                ),
                ("4", "args=0\n", "err\n"),
                "{sh}"
            );
            send(&mut shell.stdin, format!("{WORD}\n").as_bytes())
                .await
                .expect("sent");
            let ran = run(&mut shell, &script("echo second")).await;
            assert_eq!(
                (ran.code.as_str(), ran.out.as_str()),
                ("0", "second\n"),
                "{sh}"
            );
        }
    }

    /// A shell that cannot serve runs no first command from its arguments either.
    #[tokio::test]
    async fn without_setsid_the_first_command_in_the_arguments_is_not_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let first = script(&format!("echo > {}", marker.display()));
        let (mut shell, _, _) = spawn_with_first("/bin/sh", &first, Some(dir.path()));
        assert_eq!(greeted(&mut shell.out).await, Greeting::Unable);
        let _ = shell.child.wait().await;
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn nothing_before_the_opening_word_is_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let mut shell = spawn("sh");
        // What a login dotfile would leave of a request it read a line of: the rest is
        // text, not a request.
        let eaten = request(&format!("echo > {}", marker.display()), None, "n1");
        let cut = eaten.iter().position(|b| *b == b'\n').expect("a line") + 1;
        send(&mut shell.stdin, &eaten[cut..]).await.expect("sent");
        // And a whole request without the word before it.
        send(&mut shell.stdin, &eaten).await.expect("sent");
        send(&mut shell.stdin, b"0pen1ng-not-quite\n")
            .await
            .expect("sent");
        send(&mut shell.stdin, format!("{WORD}\n").as_bytes())
            .await
            .expect("sent");
        assert_eq!(greeted(&mut shell.out).await, Greeting::Ready);
        let ran = run(&mut shell, &script("echo served")).await;
        assert_eq!(ran.out, "served\n");
        assert!(!marker.exists(), "the text before the opening word ran");
    }

    #[tokio::test]
    async fn a_flood_before_the_greeting_is_unclear_not_unable() {
        let mut flood = b"x\n".to_vec();
        flood.resize(70 * 1024, b'y');
        let mut out = BufReader::new(&flood[..]);
        assert_eq!(greeted(&mut out).await, Greeting::Unclear);
        let mut out = BufReader::new(&b"motd\nrunbook-served ready\n"[..]);
        assert_eq!(greeted(&mut out).await, Greeting::Ready);
        let mut out = BufReader::new(&b"motd\n"[..]);
        assert_eq!(greeted(&mut out).await, Greeting::Unable);
    }

    #[test]
    fn what_cannot_be_a_shell_value_is_not_sent() {
        assert!(carries(b"text\n\xff"));
        assert!(!carries(b"a\0b"));
        assert!(!carries(&vec![b'a'; MAX_INPUT + 1]));
    }
}
