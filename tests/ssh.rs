//! The SSH transport against a real fleet of sshd processes on loopback.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::fleet::Fleet;
use crate::harness::Test;

/// Runs `script` against `fleet` and returns the output.
fn run(fleet: &Fleet, script: &str, extra_args: &[&str]) -> crate::harness::Output {
    let mut args = vec!["run", "s", "-e", "fleet"];
    args.extend_from_slice(extra_args);
    Test::bare()
        .file("runbook.toml", &fleet.inventory(""))
        .file("scripts/s.rhai", script)
        .args(&args)
        .run()
}

/// The `host -> server address` pairs a script printed as `host=addr` lines.
fn pairs(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(h, a)| (h.to_owned(), a.to_owned()))
        .collect()
}

const WHO: &str = r#"
for r in ssh::shell(hosts("web"), "echo $SSH_CONNECTION | cut -d' ' -f3") {
    print(`${r.host}=${r.stdout.split("\n")[0]}`);
}
"#;

fn who_script() -> String {
    WHO.to_owned()
}

fn each_host_answers_for_itself(n: usize) {
    let Some(fleet) = Fleet::start(n) else { return };
    let out = run(&fleet, &who_script(), &["-q"]);
    out.code(0);
    let got = pairs(&out.stdout);
    assert_eq!(got.len(), n, "{}", out.stdout);
    for h in &fleet.hosts {
        assert_eq!(
            got[&h.name], h.addr,
            "{} was served by the wrong sshd",
            h.name
        );
    }
}

#[test]
fn a_command_reaches_one_host() {
    each_host_answers_for_itself(1);
}

#[test]
fn a_command_reaches_five_hosts() {
    each_host_answers_for_itself(5);
}

#[test]
fn a_command_reaches_twenty_hosts() {
    each_host_answers_for_itself(20);
}

#[test]
fn one_connection_per_host_serves_every_command_of_the_run() {
    let Some(fleet) = Fleet::start(3) else { return };
    let script = "for i in 0..5 { ssh::run(hosts(\"web\"), [\"true\"]); }\nssh::run(hosts(\"web\"), [\"sleep\", \"0\"], #{ concurrency: 1 });\n";
    run(&fleet, script, &["-q"]).code(0);
    for i in 0..3 {
        assert_eq!(
            fleet.logins(i),
            1,
            "host {} logged in more than once",
            fleet.hosts[i].name
        );
    }
}

/// `[ssh] persist`: the masters outlive the run and the next invocation reuses them (no
/// new login); a changed inventory term (another known_hosts file) never reuses one;
/// `runbook disconnect` ends them, and the next run logs in again.
#[test]
fn persisted_masters_serve_the_next_invocation_until_disconnect() {
    let Some(fleet) = Fleet::start(2) else { return };
    let runtime = tempfile::Builder::new()
        .prefix("rb")
        .tempdir_in("/tmp")
        .unwrap();
    let t = Test::bare()
        .file("runbook.toml", &fleet.inventory("persist = \"1m\"\n"))
        .file("scripts/s.rhai", "ssh::run(hosts(\"web\"), [\"true\"]);\n")
        .env("XDG_RUNTIME_DIR", &runtime.path().display().to_string());
    let logins = || (0..2).map(|i| fleet.logins(i)).collect::<Vec<_>>();
    let timed = |args: &[&str]| {
        let t0 = std::time::Instant::now();
        let out = t.run_with(args);
        (out, t0.elapsed())
    };
    let (first, cold) = timed(&["run", "s", "-e", "fleet", "-q"]);
    first.code(0);
    assert_eq!(logins(), [1, 1]);
    let (second, warm) = timed(&["run", "s", "-e", "fleet", "-q"]);
    second.code(0);
    assert_eq!(logins(), [1, 1], "the second run logged in again");
    // Another known_hosts file is another term: no reuse.
    let kh = t.path().join("kh");
    std::fs::copy(&fleet.known_hosts, &kh).unwrap();
    let other = fleet.inventory("persist = \"1m\"\n").replace(
        &fleet.known_hosts.display().to_string(),
        &kh.display().to_string(),
    );
    std::fs::write(t.path().join("runbook.toml"), other).unwrap();
    t.run_with(&["run", "s", "-e", "fleet", "-q"]).code(0);
    assert_eq!(
        logins(),
        [2, 2],
        "a master made under other terms was reused"
    );
    // A changed known_hosts file (a host key replaced there): no reuse either.
    let mut text = std::fs::read_to_string(&kh).unwrap();
    text.push_str("# a host key was replaced here\n");
    std::fs::write(&kh, text).unwrap();
    t.run_with(&["run", "s", "-e", "fleet", "-q"]).code(0);
    assert_eq!(
        logins(),
        [3, 3],
        "a master made under the old known_hosts was reused"
    );
    t.run_with(&["disconnect"])
        .code(0)
        .stdout_has("6 kept ssh connections ended");
    t.run_with(&["run", "s", "-e", "fleet", "-q"]).code(0);
    assert_eq!(logins(), [4, 4], "disconnect left a master behind");
    t.run_with(&["disconnect", "-e", "fleet"])
        .code(0)
        .stdout_has("2 kept ssh connections ended");
    eprintln!("persist: a run on 2 hosts took {cold:?} cold, {warm:?} on the kept masters");
}

#[test]
fn hostile_arguments_arrive_literally_on_the_remote_side() {
    let Some(fleet) = Fleet::start(1) else { return };
    let args = [
        "; touch /tmp/pwned-runbook",
        "it's \"quoted\"",
        "new\nline",
        "$(id) `id` $HOME",
        "ünïcødé ✓",
        "*",
        "-n",
    ];
    let list: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let script = format!(
        "let r = ssh::run(host(\"web1\"), [\"printf\", \"%s\\\\0\", {}]);\nprint(r.stdout);\n",
        list.join(", ")
    );
    let out = run(&fleet, &script, &["-q"]);
    out.code(0);
    let got: Vec<&str> = out
        .stdout
        .trim_end_matches('\n')
        .split_terminator('\0')
        .collect();
    assert_eq!(got, args);
    assert!(!std::path::Path::new("/tmp/pwned-runbook").exists());
}

#[test]
fn a_stopped_host_is_named_and_the_others_finish_when_asked_to_continue() {
    let Some(mut fleet) = Fleet::start(3) else {
        return;
    };
    fleet.stop(1);
    let script = "let rs = ssh::shell(hosts(\"web\"), \"echo $SSH_CONNECTION | cut -d' ' -f3\", #{ fail: \"continue\" });\n";
    let out = run(&fleet, script, &["--json"]);
    out.code(1)
        .stderr_has("1 of 3 hosts failed")
        .stderr_has(&format!(
            "cannot connect to `web2` ({}:{}): connection refused",
            fleet.hosts[1].addr, fleet.hosts[1].port
        ));
    let finished: std::collections::BTreeSet<String> = out
        .events()
        .iter()
        .filter(|e| e["event"] == "command_finished" && e["result"] == "ok")
        .map(|e| e["host"].as_str().unwrap().to_owned())
        .collect();
    let expected: std::collections::BTreeSet<String> =
        ["web1".to_owned(), "web3".to_owned()].into();
    assert_eq!(finished, expected, "web1 and web3 still ran");
}

#[test]
fn a_changed_host_key_is_refused_with_what_to_do() {
    let Some(fleet) = Fleet::start(1) else { return };
    // Another host's key in known_hosts for web1's address: a man in the middle.
    let other = tempfile::tempdir().unwrap();
    let key = other.path().join("k");
    std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .status()
        .unwrap();
    let fake = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let fake: Vec<&str> = fake.split_whitespace().take(2).collect();
    let h = &fleet.hosts[0];
    let entry = if h.port == 22 {
        h.addr.clone()
    } else {
        format!("[{}]:{}", h.addr, h.port)
    };
    std::fs::write(&fleet.known_hosts, format!("{entry} {}\n", fake.join(" "))).unwrap();
    let marker = fleet.dir.path().join("ran");
    let out = run(
        &fleet,
        &format!(
            "ssh::run(host(\"web1\"), [\"touch\", {:?}]);",
            marker.display().to_string()
        ),
        &["-q"],
    );
    out.code(1)
        .stderr_has("its host key CHANGED")
        .stderr_has("ssh-keygen -f");
    assert!(!marker.exists(), "a command ran on a host with a wrong key");
}

#[test]
fn an_unknown_host_key_is_refused_by_default_and_accepted_with_accept_new() {
    let Some(fleet) = Fleet::start(1) else { return };
    std::fs::write(&fleet.known_hosts, "").unwrap();
    run(&fleet, "ssh::run(hosts(), [\"true\"]);", &["-q"])
        .code(1)
        .stderr_has("its host key is not in")
        .stderr_has("accept-new");
    let out = Test::bare()
        .file(
            "runbook.toml",
            &fleet.inventory("host_key_check = \"accept-new\"\n"),
        )
        .file("scripts/s.rhai", "ssh::run(hosts(), [\"true\"]);")
        .args(&["run", "s", "-e", "fleet", "-q"])
        .run();
    out.code(0);
    let known = std::fs::read_to_string(&fleet.known_hosts).unwrap();
    assert!(
        known.contains(&fleet.hosts[0].host_key_pub),
        "accept-new records the key: {known}"
    );
}

fn remote_sleep_running(tag: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", &format!("^sleep {tag}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_timeout_kills_the_remote_command() {
    let Some(fleet) = Fleet::start(1) else { return };
    let tag = format!("60.{}", std::process::id());
    let start = Instant::now();
    run(
        &fleet,
        &format!("ssh::run(host(\"web1\"), [\"sleep\", \"{tag}\"], #{{ timeout: \"1s\" }});"),
        &["-q"],
    )
    .code(1)
    .stderr_has("timed out after 1s");
    assert!(start.elapsed() < Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(5);
    while remote_sleep_running(&tag) {
        assert!(
            Instant::now() < deadline,
            "the remote sleep outlived the timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_kills_the_remote_command_and_exits_130() {
    let Some(fleet) = Fleet::start(2) else { return };
    let tag = format!("61.{}", std::process::id());
    let t = Test::bare()
        .file("runbook.toml", &fleet.inventory(""))
        .file(
            "scripts/s.rhai",
            &format!("ssh::run(hosts(\"web\"), [\"sleep\", \"{tag}\"]);"),
        );
    let mut child = t
        .command()
        .args(["run", "s", "-e", "fleet", "-q"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !remote_sleep_running(&tag) {
        assert!(
            Instant::now() < deadline,
            "the remote command never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let deadline = Instant::now() + Duration::from_secs(5);
    while remote_sleep_running(&tag) {
        assert!(Instant::now() < deadline, "a remote sleep outlived Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_directory_round_trips_through_upload_and_download_with_modes() {
    use std::os::unix::fs::PermissionsExt;
    let Some(fleet) = Fleet::start(2) else { return };
    let t = Test::bare()
        .file("runbook.toml", &fleet.inventory(""))
        .file("build/bin/tool", "#!/bin/sh\necho tool\n")
        .file("build/conf/app.ini", "x=1\n");
    std::fs::set_permissions(
        t.path().join("build/bin/tool"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::set_permissions(
        t.path().join("build/conf/app.ini"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let remote = format!("/tmp/rb-upload-{}", std::process::id());
    let t = t
        .file(
            "scripts/s.rhai",
            &format!(
                "ssh::upload(hosts(\"web\"), \"build\", \"{remote}\");\nlet r = ssh::run(host(\"web2\"), [\"{remote}/bin/tool\"]);\nprint(r.stdout);\nssh::download(host(\"web2\"), \"{remote}\", \"back\");\n"
            ),
        )
        .args(&["run", "s", "-e", "fleet", "-q"]);
    t.run().code(0).stdout_has("tool");
    let mode = |p: &str| {
        std::fs::metadata(t.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("back/bin/tool"), 0o750);
    assert_eq!(mode("back/conf/app.ini"), 0o600);
    assert_eq!(
        std::fs::read_to_string(t.path().join("back/conf/app.ini")).unwrap(),
        "x=1\n"
    );
    let _ = std::fs::remove_dir_all(&remote);
}

#[test]
fn rolling_batches_run_in_order_and_stop_at_a_failure() {
    let Some(fleet) = Fleet::start(5) else { return };
    let log = fleet.dir.path().join("order.log");
    std::fs::write(&log, "").unwrap();
    std::process::Command::new("chmod")
        .arg("666")
        .arg(&log)
        .status()
        .unwrap();
    let fail_addr = &fleet.hosts[2].addr;
    let script = format!(
        "ssh::shell(hosts(\"web\"), \"a=$(echo $SSH_CONNECTION | cut -d' ' -f3); echo $a >> {log}; [ $a != {fail_addr} ]\", #{{ batch: [1, 2] }});",
        log = log.display()
    );
    let out = run(&fleet, &script, &["-q"]);
    out.code(1)
        .stderr_has("1 of 5 hosts failed")
        .stderr_has("not started (stopped after the failure): web4, web5");
    let order: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        order.first(),
        Some(&fleet.hosts[0].addr),
        "batch 1 is web1 alone: {order:?}"
    );
    let mut second: Vec<&String> = order[1..].iter().collect();
    second.sort();
    assert_eq!(
        second,
        [&fleet.hosts[1].addr, &fleet.hosts[2].addr],
        "batch 2 is web2 + web3, then stop"
    );
}

#[test]
fn max_fail_tolerates_a_share_of_the_whole_set() {
    let Some(fleet) = Fleet::start(4) else { return };
    let fail_addr = &fleet.hosts[0].addr;
    let script = format!(
        "let rs = ssh::shell(hosts(\"web\"), \"[ $(echo $SSH_CONNECTION | cut -d' ' -f3) != {fail_addr} ]\", #{{ max_fail: \"25%\", fail: \"continue\" }});\nprint(`ok=${{rs.filter(|r| r.ok).len()}} failed=${{rs.filter(|r| !r.ok).map(|r| r.host)}}`);"
    );
    run(&fleet, &script, &["-q"])
        .code(0)
        .stdout_has("ok=3 failed=[\"web1\"]");
}

/// The outage REPL in a real terminal against the fleet: a host name completes, and
/// Ctrl-C during a remote `sleep` returns to the prompt with the remote process gone.
#[test]
fn in_the_repl_ctrl_c_stops_a_remote_command_and_host_names_complete() {
    let Some(fleet) = Fleet::start(2) else { return };
    let t = Test::bare().file("runbook.toml", &fleet.inventory(""));
    let Some(term) = t.repl_in_terminal("fleet") else {
        return;
    };
    let tag = format!("63.{}", std::process::id());
    term.wait_for("fleet>", 15);
    term.type_text("host(\"web");
    // Two candidates share the prefix: the second Tab lists them.
    term.press("Tab");
    std::thread::sleep(Duration::from_millis(200));
    term.press("Tab");
    term.wait_for("web2", 10);
    term.press("C-c");
    term.type_text(&format!("ssh::run(hosts(), [\"sleep\", \"{tag}\"]);"));
    term.press("Enter");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !remote_sleep_running(&tag) {
        assert!(
            Instant::now() < deadline,
            "the remote sleep never started:\n{}",
            term.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pressed = Instant::now();
    term.press("C-c");
    term.wait_for("interrupted", 10);
    let back = pressed.elapsed();
    assert!(
        back < Duration::from_secs(2),
        "Ctrl-C took {back:?} to return to the prompt"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while remote_sleep_running(&tag) {
        assert!(Instant::now() < deadline, "a remote sleep outlived Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Back at a working prompt: the session goes on after the interrupt.
    term.type_text("6 * 7");
    term.press("Enter");
    term.wait_for("42", 10);
    term.press("C-d");
    term.wait_exit(10);
}
