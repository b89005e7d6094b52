//! The on-call surface: `list`, the backup runbook, the API reference, the REPL's
//! display of hosts, honest errors, and output into a closed pipe.

use crate::harness::Test;

/// The repository's own project (runbook.toml and the shipped scripts/).
fn examples() -> Test {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("runbook.toml");
    Test::bare().args(&["-c", &config.to_string_lossy()])
}

/// The column where `header` starts in the first line, and that every row has a cell
/// starting there (aligned columns).
#[track_caller]
fn column(table: &str, header: &str) -> usize {
    let first = table.lines().next().unwrap_or("");
    let at = first
        .find(header)
        .unwrap_or_else(|| panic!("no {header} in {first:?}"));
    for line in table.lines().skip(1) {
        let before = line.get(..at).unwrap_or("");
        assert!(
            before.ends_with("  ") || line.len() <= at,
            "{header} column not aligned in {line:?}\n{table}"
        );
    }
    at
}

#[test]
fn list_shows_every_shipped_script_with_purpose_and_arguments() {
    let out = examples().args(&["list"]).run();
    out.code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("SCRIPT"), "{}", out.stdout);
    let names: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "not sorted:\n{}", out.stdout);
    for name in [
        "deploy",
        "rollback",
        "emergency/stop-everything",
        "troubleshoot/db-check",
    ] {
        assert!(names.contains(&name), "{name} missing:\n{}", out.stdout);
    }
    let purpose = column(&out.stdout, "PURPOSE");
    let arguments = column(&out.stdout, "ARGUMENTS");
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name}"))
    };
    let rollback = row("rollback");
    assert!(
        rollback[purpose..].starts_with("Rollback (the seed's eight steps)"),
        "{rollback}"
    );
    assert!(
        rollback[arguments..].contains("archive=BACKUP-NAME") && rollback.contains("to=RELEASE"),
        "{rollback}"
    );
    assert!(
        row("deploy").contains("ref=TAG|BRANCH|COMMIT"),
        "{}",
        row("deploy")
    );
    assert!(row("emergency/stop-everything").contains("emergency"));
    assert!(row("health-check").contains("read-only"));
    // Arguments only shown in a usage line still count.
    assert!(row("maintenance/archive-logs").contains("days=7 keep=30"));
}

#[test]
fn list_reads_any_project_and_says_when_a_script_has_no_description() {
    let t = Test::new()
        .file("scripts/plain.rhai", "let x = 1; // a trailing comment is no header\n")
        .file(
            "scripts/ops/flush.rhai",
            "//! Flush the cache: drops every key.\n//! Arguments: pattern=GLOB (default *).\n\nprint(1);\n",
        );
    let out = t.run_with(&["list"]);
    out.code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[1].starts_with("ops/flush "), "{}", out.stdout);
    assert!(
        lines[1].contains("Flush the cache") && lines[1].ends_with("pattern=GLOB"),
        "{}",
        out.stdout
    );
    assert!(
        lines[2].starts_with("plain ") && lines[2].contains("(no description)"),
        "{}",
        out.stdout
    );

    let json = t.run_with(&["list", "--json"]);
    json.code(0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(v[0]["name"], "ops/flush");
    assert_eq!(v[0]["purpose"], "Flush the cache");
    assert_eq!(v[0]["arguments"][0], "pattern=GLOB");
    assert_eq!(v[1]["name"], "plain");
    assert!(v[1]["purpose"].is_null(), "{v}");
}

/// Removes a directory tree when dropped (deploy roots on the fleet's shared disk).
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario end to end on one fleet, read top to bottom"
)]
fn the_backup_runbook_creates_lists_verifies_and_prunes_on_a_fleet() {
    use crate::fleet::{Fleet, USER};
    let Some(fleet) = Fleet::start(2) else { return };
    let roots = fleet.deploy_roots("rboc");
    let base = std::path::Path::new(&roots[0].1)
        .parent()
        .expect("a root has a parent")
        .to_path_buf();
    let _cleanup = Cleanup(base.clone());
    let backups = base.join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    // The fleet serves one release (each host its own copy), like tests/backup.rs's layout.
    for (name, root) in &roots {
        let root = std::path::Path::new(root);
        let rel = root.join("releases/20260101T000000Z");
        std::fs::create_dir_all(rel.join("public")).unwrap();
        std::fs::create_dir_all(root.join("shared")).unwrap();
        std::fs::write(
            rel.join("public/index.php"),
            format!("<?php echo '{name}';\n"),
        )
        .unwrap();
        std::fs::write(root.join("shared/.env"), "APP_KEY=base64:abc\n").unwrap();
        std::os::unix::fs::symlink(rel.strip_prefix(root).unwrap(), root.join("current")).unwrap();
    }
    crate::fleet::run(
        std::process::Command::new("chown")
            .args(["-R", USER])
            .arg(&base),
    )
    .unwrap();
    let hosts: Vec<String> = fleet
        .hosts
        .iter()
        .zip(&roots)
        .map(|(h, (_, root))| {
            format!(
                "{} = {{ address = \"{}\", port = {}, deploy_path = \"{root}\" }}",
                h.name, h.addr, h.port
            )
        })
        .collect();
    let inventory = format!(
        "[app]\nname = \"t\"\ndeploy_path = \"/srv/unused\"\nshared_files = [\".env\"]\n\n[ssh]\nuser = \"{USER}\"\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\n\n[env.fleet]\nbackup_dir = \"{}\"\nhosts = {{ {} }}\nroles = {{ web = [\"web1\", \"web2\"] }}\n",
        fleet.client_key().display(),
        fleet.known_hosts.display(),
        backups.display(),
        hosts.join(", ")
    );
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/backup.rhai"),
    )
    .unwrap();
    let t = Test::bare()
        .file("runbook.toml", &inventory)
        .file("scripts/backup.rhai", &script);
    let archives = || {
        let mut v: Vec<String> = std::fs::read_dir(&backups)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tar.gz"))
            .collect();
        v.sort();
        v
    };

    let none = t.run_with(&["run", "backup", "-e", "fleet"]);
    none.code(0)
        .stdout_has("web1: no backup")
        .stdout_has("web2: no backup");

    let mut names = Vec::new();
    for _ in 0..3 {
        let out = t.run_with(&["run", "backup", "-e", "fleet", "action=create"]);
        out.code(0).stdout_has("on 2 host(s)");
        let name = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("created "))
            .and_then(|l| l.split_whitespace().next())
            .expect("the created name")
            .to_owned();
        let stamp = name
            .strip_prefix("backup-")
            .and_then(|s| s.strip_suffix(".tar.gz"))
            .unwrap_or("");
        assert!(
            stamp.len() == 15
                && stamp.as_bytes()[8] == b'-'
                && stamp.chars().filter(char::is_ascii_digit).count() == 14,
            "not the seed's backup-YYYYmmdd-HHMMSS.tar.gz: {name}"
        );
        // One name for the fleet; the test hosts share one disk, so web2 finds the archive
        // of its release already there (separate disks: each host writes its own).
        out.stdout_has(&format!("web1: {name}"))
            .stdout_has(&format!("web2: {name} (backup directory shared"));
        names.push(name);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(archives(), names, "one archive per create");

    let list = t.run_with(&["run", "backup", "-e", "fleet", "action=list"]);
    list.code(0);
    for n in &names {
        for h in ["web1", "web2"] {
            assert!(
                list.stdout
                    .lines()
                    .any(|l| l.starts_with(h) && l.contains(n.as_str())),
                "{h} does not list {n}:\n{}",
                list.stdout
            );
        }
    }

    let verify = t.run_with(&["run", "backup", "-e", "fleet", "action=verify"]);
    verify
        .code(0)
        .stdout_has(&format!("web1: {} verifies", names[2]))
        .stdout_has(&format!("web2: {} verifies", names[2]))
        .stdout_has("verified on 2 host(s)");

    let prune = t.run_with(&["run", "backup", "-e", "fleet", "action=prune", "keep=1"]);
    prune.code(0).stdout_has("pruned 2 backup(s)");
    assert_eq!(archives(), [names[2].clone()], "keep=1 keeps the newest");

    // A damaged archive fails verification, naming every host that sees it.
    let newest = backups.join(&names[2]);
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let bad = t.run_with(&["run", "backup", "-e", "fleet", "action=verify"]);
    assert_ne!(bad.code, 0, "a truncated archive verified:\n{}", bad.stdout);
    bad.stderr_has("2 host(s) failed verification")
        .stderr_has(&format!("web1: {}", names[2]))
        .stderr_has(&format!("web2: {}", names[2]));
}

#[test]
fn doc_and_definitions_list_functions_that_take_a_host_with_script_types() {
    let t = Test::bare();
    let doc = t.run_with(&["doc"]);
    doc.code(0);
    for needle in [
        "backup::create(host: Host, opts: Map) -> Map",
        "backup::restore(host: Host, name: String, opts: Map) -> String",
        "release::current(host: Host) -> String",
        "release::list(host: Host) -> Array",
        "release::new_migrations(",
        "ssh::download(host: Host,",
    ] {
        doc.stdout_has(needle);
    }
    let defs = t.path().join("defs");
    t.run_with(&["definitions", &defs.to_string_lossy()])
        .code(0);
    let mut all = doc.stdout.clone();
    for e in std::fs::read_dir(&defs).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        // Declarations only: Rhai's own doc comments may mention Rust types.
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            all.push_str(line);
            all.push('\n');
        }
    }
    for rust in ["Box<EvalAltResult>", "EvalAltResult", "HostRef", "Result<"] {
        let hit = all.lines().find(|l| l.contains(rust));
        assert!(hit.is_none(), "{rust} in the API reference: {hit:?}");
    }
    let backup = std::fs::read_to_string(defs.join("backup.d.rhai")).unwrap();
    assert!(
        backup.contains("fn create(host: Host, opts: Map) -> Map;"),
        "{backup}"
    );
}

#[test]
fn the_repl_shows_host_sets_by_name_and_release_lists_as_a_table() {
    let t = Test::new();
    for r in ["20260101T000000Z", "20260102T000000Z"] {
        std::fs::create_dir_all(t.path().join("deploy/releases").join(r)).unwrap();
    }
    std::os::unix::fs::symlink("releases/20260102T000000Z", t.path().join("deploy/current"))
        .unwrap();
    let out = t.repl(
        "dev",
        "hosts(\"web\")\nhost(\"a\")\n[hosts(\"one\"), 1]\nrelease::list(host(\"a\"))\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("runbook::"),
        "a Rust type name in the REPL:\n{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "hosts([\"a\", \"b\"])", "{stdout}");
    assert_eq!(lines[1], "host(\"a\")", "{stdout}");
    assert_eq!(lines[2], "[hosts([\"a\"]), 1]", "{stdout}");
    // One header, one row per release (oldest first), the live one marked.
    assert!(
        lines[3].starts_with("NAME") && lines[3].contains("LIVE"),
        "{stdout}"
    );
    assert!(lines[4].starts_with("20260101T000000Z "), "{stdout}");
    let live_col = lines[3].find("LIVE").unwrap();
    assert!(lines[5].starts_with("20260102T000000Z "), "{stdout}");
    assert_eq!(
        lines[5].get(live_col..live_col + 3),
        Some("yes"),
        "{stdout}"
    );
    assert_eq!(
        lines[4].get(live_col..live_col + 3),
        Some("   "),
        "{stdout}"
    );
}

/// Runs the binary with stdout on a pipe whose reader is already gone (`| head` that
/// exited before the first write): it must end quietly, with status 0.
#[track_caller]
fn into_closed_pipe(t: &Test, args: &[&str]) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = t
        .command()
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("runbook runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "{args:?} panicked on a closed pipe:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?} on a closed pipe:\n{stderr}"
    );
    assert!(
        stderr.is_empty(),
        "{args:?} said something on a closed pipe:\n{stderr}"
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // More than a pipe holds (64 KiB), so `head -1` exits while runbook still writes.
    let hosts: Vec<String> = (0..3000)
        .map(|i| format!("h{i:04} = \"127.1.{}.{}\"", i / 250, i % 250 + 1))
        .collect();
    let t = Test::bare().file(
        "runbook.toml",
        &format!(
            "[app]\nname = \"t\"\ndeploy_path = \"deploy\"\n[env.big]\ntransport = \"local\"\nhosts = {{ {} }}\n",
            hosts.join(", ")
        ),
    );
    into_closed_pipe(&t, &["hosts", "-e", "big", "--json"]);
    into_closed_pipe(&t, &["hosts", "-e", "big"]);
    into_closed_pipe(&t, &["doc"]);
    into_closed_pipe(&t, &["list"]);

    // And through a real `| head -1`: runbook's status (pipefail) and no panic.
    for args in [
        &["hosts", "-e", "big", "--json"][..],
        &["doc", "--markdown"][..],
    ] {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg("set -o pipefail; \"$@\" | head -1")
            .arg("bash")
            .arg(crate::harness::bin())
            .args(args)
            .current_dir(t.path())
            .output()
            .expect("bash runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "{args:?} | head -1 panicked:\n{stderr}"
        );
        assert_eq!(out.status.code(), Some(0), "{args:?} | head -1:\n{stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
}

/// A TCP port that accepts and then never says a word (an SSH server that hangs).
fn silent_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

#[test]
fn a_connection_that_timed_out_reports_the_time_it_took() {
    let port = silent_port();
    let t = Test::bare()
        .file(
            "runbook.toml",
            &format!(
                "[app]\nname = \"t\"\ndeploy_path = \"/srv/t\"\n[ssh]\nuser = \"deploy\"\nconnect_timeout = \"1s\"\nknown_hosts = \"kh\"\n[env.x]\nhosts = {{ a = \"127.0.0.1:{port}\" }}\n"
            ),
        )
        .file("kh", "")
        .file(
            "scripts/s.rhai",
            "try { ssh::run(host(\"a\"), [\"true\"]); } catch {}\nssh::run(host(\"a\"), [\"true\"]);\n",
        );
    let out = t.run_with(&["run", "s", "-e", "x"]);
    out.code(1).stderr_has("no answer within 1s");
    let failures: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("✗ cannot connect"))
        .collect();
    assert!(failures.len() >= 2, "{}", out.stderr);
    // The first attempt waited for the timeout: its line says so (not "after 0 ms").
    let took = failures[0].rsplit_once(" after ").map_or("", |(_, d)| d);
    let secs: f64 = match took.split_once(' ') {
        Some((n, "s")) => n.parse().unwrap_or(0.0),
        Some((n, "ms")) => n.parse::<f64>().unwrap_or(0.0) / 1000.0,
        _ => 0.0,
    };
    assert!(
        secs >= 0.9,
        "the first attempt took {took:?}, it waited 1s:\n{}",
        out.stderr
    );
    // The second command fails at once, and says why it did not wait again.
    assert!(
        failures[1].contains("failed earlier in this run: not tried again"),
        "{}",
        out.stderr
    );
}

#[test]
fn unlock_refusing_a_live_lock_says_so_and_what_to_do() {
    let t = Test::new();
    let lock = t.path().join("deploy/.runbook/lock");
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(
        lock.join("info"),
        r#"{"run":"r1","actor":"bob","machine":"m","pid":1,"script":"scripts/deploy.rhai","reason":null,"ci_run":null,"started_at":"2026-11-27T00:00:00Z"}"#,
    )
    .unwrap();
    std::fs::write(lock.join("heartbeat"), "").unwrap();
    let out = t.run_with(&["unlock", "-e", "dev", "--stale"]);
    out.code(1)
        .stderr_has("is live")
        .stderr_has("unlock refused: the deploy lock stays on 2 of 2 hosts of `dev`")
        .stderr_has("wait for that run to end")
        .stderr_has("`runbook unlock -e dev` (without --stale)");
    assert!(!out.stderr.contains("failed the check"), "{}", out.stderr);
    assert!(lock.exists());
}

/// An inventory for `fleet` with a deploy path per host (`roots`), role `web` = all.
fn fleet_inventory(
    fleet: &crate::fleet::Fleet,
    roots: &[(String, String)],
    env_extra: &str,
) -> String {
    crate::fleet::per_host_inventory(fleet, roots, "shared_files = [\".env\"]\n", "", env_extra)
}

#[test]
fn a_failure_on_two_hosts_keeps_each_hosts_stderr_tail_in_the_final_error() {
    let Some(fleet) = crate::fleet::Fleet::start(2) else {
        return;
    };
    let roots = fleet.deploy_roots("rbst");
    // Each host says something else last: web1 exits 3, web2 hangs until the timeout.
    let script = r#"a=${SSH_CONNECTION#* * }; a=${a%% *}; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "noise $i" >&2; done; case $a in *.1) echo "SQLSTATE[HY000] only on $a" >&2; exit 3;; *) echo "No space left on device on $a" >&2; sleep 30;; esac"#;
    let t = Test::bare()
        .file("runbook.toml", &fleet_inventory(&fleet, &roots, ""))
        .file(
            "scripts/fail.rhai",
            &format!("ssh::shell(hosts(\"web\"), {script:?}, #{{ timeout: \"2s\" }});\n"),
        );
    let out = t.run_with(&["run", "fail", "-e", "fleet"]);
    out.code(1);
    // The final error (after the live output), host by host.
    let last = out.stderr.rfind("\nerror: ").expect("a final error");
    let error = &out.stderr[last..];
    let web1 = error
        .find("- command failed on `web1`")
        .unwrap_or_else(|| panic!("{error}"));
    let web2 = error
        .find("- command on `web2` timed out after 2s")
        .unwrap_or_else(|| panic!("{error}"));
    let (first, second) = if web1 < web2 {
        (&error[web1..web2], &error[web2..])
    } else {
        (&error[web1..], &error[web2..web1])
    };
    let (one, two) = if web1 < web2 {
        (first, second)
    } else {
        (second, first)
    };
    let addr = |i: usize| fleet.hosts[i].addr.clone();
    assert!(
        one.contains("stderr (last lines):")
            && one.contains(&format!("| SQLSTATE[HY000] only on {}", addr(0))),
        "web1's stderr tail is missing from the final error:\n{error}"
    );
    assert!(
        two.contains("stderr (last lines):")
            && two.contains(&format!("| No space left on device on {}", addr(1))),
        "web2's stderr tail is missing from the final error:\n{error}"
    );
    assert!(
        !one.contains("| No space left") && !two.contains("| SQLSTATE"),
        "{error}"
    );
}

#[test]
fn a_run_through_the_harness_writes_no_state_under_home() {
    let home = tempfile::tempdir().unwrap();
    let t = Test::new()
        .file("scripts/hello.rhai", "print(\"hello\");")
        .env("HOME", &home.path().to_string_lossy());
    t.run_with(&["run", "hello", "-e", "dev"])
        .code(0)
        .stdout_has("hello");
    let out = t.repl("dev", "1 + 1\n");
    assert!(out.status.success());
    assert!(
        !home.path().join(".local/state").exists(),
        "a test wrote into HOME/.local/state"
    );
    let audit = std::fs::read_to_string(t.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains("scripts/hello.rhai"), "{audit}");
}

#[test]
fn an_in_process_run_keeps_its_audit_record_in_the_test_state_dir() {
    let t = Test::new().file("scripts/in-process.rhai", "let a = 1;");
    let script = t.path().join("scripts/in-process.rhai");
    let log = crate::harness::process_state_dir().join("runbook/audit.jsonl");
    let records = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("\"script\":\"scripts/in-process.rhai\"")
            .count()
    };
    let before = records();
    let code = runbook::run(
        [
            "runbook",
            "-q",
            "-c",
            &t.path().join("runbook.toml").to_string_lossy(),
            "run",
            &script.to_string_lossy(),
            "-e",
            "dev",
        ]
        .map(std::ffi::OsString::from),
    );
    assert_eq!(code, 0);
    // Not the user's ~/.local/state: the test process' own state directory.
    assert_eq!(
        records(),
        before + 1,
        "this run's record is not in {}",
        log.display()
    );
}

#[test]
fn the_repl_saves_a_script_check_accepts_and_never_replaces_a_file_unasked() {
    let t = Test::new();
    // Comments, statements that end in `}` but need a `;` (a map, a closure), one that
    // ends in a comment, and blocks that need none (a function, an `if`).
    let session = "// look at the queue first\nlet m = #{ a: 1, b: [2, 3] }\nlet add = |x| { x + m.a }\nlet n = add.call(1) // two\nfn twice(x) {\n  // doubled\n  x * 2\n}\nif n > 1 {\n  print(twice(n))\n}\nlet done = true\n";
    let out = t.repl("dev", &format!("{session}:save scripts/saved.rhai\n"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("saved 7 statements"), "{stdout}");
    let saved = std::fs::read_to_string(t.path().join("scripts/saved.rhai")).unwrap();
    let check = t.run_with(&["check", "scripts/saved.rhai"]);
    assert_eq!(
        check.code, 0,
        "the saved script fails `runbook check`:\n{saved}\n--- check\n{}{}",
        check.stdout, check.stderr
    );
    assert!(
        saved.contains("// look at the queue first") && saved.contains("// doubled"),
        "{saved}"
    );
    // Saving over it asks; "n" keeps the file, "y" replaces it.
    let out = t.repl("dev", "let other = 1\n:save scripts/saved.rhai\nn\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("not saved: scripts/saved.rhai is kept"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(t.path().join("scripts/saved.rhai")).unwrap(),
        saved
    );
    let out = t.repl("dev", "let other = 1\n:save scripts/saved.rhai\ny\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("saved 1 statements"), "{stdout}");
    let replaced = std::fs::read_to_string(t.path().join("scripts/saved.rhai")).unwrap();
    assert!(
        replaced.contains("let other = 1;") && !replaced.contains("twice"),
        "{replaced}"
    );
}
