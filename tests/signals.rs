//! Ctrl-C / SIGTERM: the running command dies, the failure path runs, exit 130.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::Test;

fn interrupt_during_a_long_command(signal: Signal) {
    let t = Test::new().file(
        "scripts/long.rhai",
        r#"
fn on_failure(err) {
    local::run(["sh", "-c", "echo \"$1\" > cleaned", "sh", `${err.interrupted}`]);
}
local::shell("echo $$ > child.pid; exec sleep 60");
local::run(["touch", "after"]);
"#,
    );
    let mut child = t
        .command()
        .args(["run", "long", "-e", "dev", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the command has started (its event is on stdout).
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = lines
            .next()
            .expect("events until the command starts")
            .unwrap();
        if line.contains("command_started") {
            break;
        }
    }
    while !t.path().join("child.pid").exists() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(child.id()).unwrap();
    kill(Pid::from_raw(pid), signal).unwrap();
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();

    assert_eq!(status.code(), Some(130), "exit status after {signal:?}");
    assert_eq!(
        std::fs::read_to_string(t.path().join("cleaned")).unwrap(),
        "true\n"
    );
    assert!(
        !t.path().join("after").exists(),
        "the script went on after the signal"
    );
    let sleeper: i32 = std::fs::read_to_string(t.path().join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        kill(Pid::from_raw(sleeper), None).is_err(),
        "the remote command survived"
    );
    let last: serde_json::Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(last["event"], "run_finished");
    assert_eq!(last["result"], "aborted");
}

#[test]
fn sigint_kills_the_command_runs_on_failure_and_exits_130() {
    interrupt_during_a_long_command(Signal::SIGINT);
}

#[test]
fn sigterm_is_handled_like_ctrl_c() {
    interrupt_during_a_long_command(Signal::SIGTERM);
}

#[test]
fn ctrl_c_ends_a_sleep_at_once() {
    let t = Test::new().file("scripts/wait.rhai", "print(\"waiting\");\nsleep(300);\n");
    let mut child = t
        .command()
        .args(["run", "wait", "-e", "dev"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "waiting");
    kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGINT,
    )
    .unwrap();
    // Bounded wait: a sleep that ignored Ctrl-C would hold the run for five minutes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "Ctrl-C did not end sleep()");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
}
