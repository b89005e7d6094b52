//! The local transport: commands run on this machine as tokio child processes.
//!
//! Each child runs in its own process group so that cancelling it (Ctrl-C, timeout) ends
//! everything it started, not just the shell.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;

use super::{
    Capture, CommandSpec, Ended, ExecError, Finished, LineSink, feed, open_input, open_output,
    pump, race,
};
use crate::interrupt::Interrupt;
use crate::output::Stream;

/// How long a process group gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

pub(crate) async fn exec(
    spec: &CommandSpec,
    run: &str,
    interrupt: &Interrupt,
    on_line: LineSink<'_>,
) -> Result<Finished, ExecError> {
    // sudo resets the environment: the variables are named for it to keep.
    let keep = if spec.sudo.is_some() {
        spec.env_names()?
    } else {
        Vec::new()
    };
    let words = spec.program.argv_with_sudo(spec.sudo.as_deref(), &keep);
    let Some((program, args)) = words.split_first() else {
        return Err(ExecError::Unsupported(
            "empty command: argv has no program".into(),
        ));
    };
    let input = open_input(spec.stdin_file.as_deref()).await?;
    let output = open_output(spec.stdout_file.as_deref()).await?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd.env(super::RUN_TAG, run)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() || input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);

    let started = Instant::now();
    let program_name = spec
        .program
        .display_argv()
        .first()
        .cloned()
        .unwrap_or_default();
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: program_name,
        source,
    })?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);

    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut out_buf = Capture::new();
    let mut err_buf = Capture::new();
    let quiet = spec.quiet;
    let reading = async {
        let out = super::stdout(stdout, output, &mut out_buf, on_line, quiet);
        let ((), written, ()) = tokio::join!(
            feed(stdin, spec.stdin.as_deref(), input),
            out,
            pump(stderr, Stream::Stderr, &mut err_buf, on_line, quiet)
        );
        (child.wait().await, written)
    };
    let end = race(reading, spec.timeout.map(|t| started + t), interrupt).await;
    let finished = |out, err| super::partial(out, err, started);
    match end {
        Ended::Done((status, written)) => {
            let status = status?;
            let f = Finished {
                code: status.code(),
                ..finished(out_buf, err_buf)
            };
            super::completed(spec, f, written)
        }
        Ended::Timeout => {
            terminate(pgid).await;
            Err(ExecError::Timeout {
                after: spec.timeout.unwrap_or_default(),
                partial: finished(out_buf, err_buf),
            })
        }
        Ended::Interrupted => {
            terminate(pgid).await;
            Err(ExecError::Interrupted {
                partial: finished(out_buf, err_buf),
            })
        }
    }
}

/// SIGTERM to the whole group, then SIGKILL if anything is still there after [`GRACE`].
async fn terminate(pgid: Option<Pid>) {
    let Some(pgid) = pgid else { return };
    if killpg(pgid, Signal::SIGTERM).is_err() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < GRACE {
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Signal 0 probes whether any process of the group is left.
        if killpg(pgid, None).is_err() {
            return;
        }
    }
    let _ = killpg(pgid, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Program;

    fn spec(p: Program) -> CommandSpec {
        CommandSpec::new(p)
    }

    #[tokio::test]
    async fn captures_both_streams_and_the_exit_code() {
        let s = spec(Program::Shell("echo out; echo err >&2; exit 3".into()));
        let f = exec(&s, "r1", &Interrupt::new(), &|_, _| {}).await.unwrap();
        assert_eq!(
            (f.code, f.stdout.as_str(), f.stderr.as_str()),
            (Some(3), "out\n", "err\n")
        );
    }

    #[tokio::test]
    async fn argv_is_not_interpreted_by_a_shell() {
        let s = spec(Program::Argv(vec!["echo".into(), "$HOME;".into()]));
        let f = exec(&s, "r1", &Interrupt::new(), &|_, _| {}).await.unwrap();
        assert_eq!(f.stdout, "$HOME;\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let mut s = spec(Program::Shell(format!(
            "(sleep 2; touch {}) & sleep 30",
            marker.display()
        )));
        s.timeout = Some(Duration::from_millis(200));
        let err = exec(&s, "r1", &Interrupt::new(), &|_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn an_interrupt_ends_the_running_command() {
        let interrupt = Interrupt::new();
        let s = spec(Program::Argv(vec!["sleep".into(), "30".into()]));
        let trigger = interrupt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            trigger.raise();
        });
        let start = Instant::now();
        let err = exec(&s, "r1", &interrupt, &|_, _| {}).await.unwrap_err();
        assert!(matches!(err, ExecError::Interrupted { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    /// sudo resets the environment; `env` must still reach the command.
    #[tokio::test]
    async fn env_reaches_a_command_run_through_sudo() {
        if !std::path::Path::new("/usr/bin/sudo").exists() || !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root and sudo");
            return;
        }
        let mut s = spec(Program::Shell("echo \"[$RB_TEST]\"".into()));
        s.sudo = Some(String::new());
        s.env = vec![("RB_TEST".into(), "kept".into())];
        let f = exec(&s, "r1", &Interrupt::new(), &|_, _| {}).await.unwrap();
        assert_eq!(
            (f.code, f.stdout.as_str()),
            (Some(0), "[kept]\n"),
            "{}",
            f.stderr
        );
    }

    #[tokio::test]
    async fn stdin_cwd_and_env_reach_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(Program::Shell("cat; pwd; echo $RB_TEST".into()));
        s.stdin = Some(b"in\n".to_vec());
        s.cwd = Some(dir.path().to_string_lossy().into_owned());
        s.env = vec![("RB_TEST".into(), "v".into())];
        let f = exec(&s, "r1", &Interrupt::new(), &|_, _| {}).await.unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(f.stdout, format!("in\n{}\nv\n", canonical.display()));
    }
    /// A large input and output travel through files, not through memory: what `cat`
    /// read from `stdin_file` arrives whole in `stdout_file`, after the in-memory `stdin`.
    #[tokio::test]
    async fn stdin_and_stdout_files_stream_whole() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let output = dir.path().join("out");
        let body: Vec<u8> = (0..3 * 1024 * 1024u32)
            .map(|i| (i % 251).to_le_bytes()[0])
            .collect();
        std::fs::write(&input, &body).unwrap();
        let mut s = spec(Program::Argv(vec!["cat".into()]));
        s.stdin = Some(b"head:".to_vec());
        s.stdin_file = Some(input.clone());
        s.stdout_file = Some(output.clone());
        let f = exec(&s, "r1", &Interrupt::new(), &|_, _| {}).await.unwrap();
        assert_eq!((f.code, f.stdout.as_str()), (Some(0), ""));
        let got = std::fs::read(&output).unwrap();
        assert_eq!(&got[..5], b"head:");
        assert!(got[5..] == body[..], "the streamed copy differs");

        s.stdin_file = Some(dir.path().join("missing"));
        let err = exec(&s, "r1", &Interrupt::new(), &|_, _| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
