//! Who may deploy, and how well we deploy (DORA figures from the audit log).

use crate::harness::Test;
use std::fmt::Write as _;

const INVENTORY: &str = r#"
[app]
name = "t"
deploy_path = "deploy"

[env.prod]
transport = "local"
protected = true
deployers = ["alice", "carol"]
emergency_deployers = ["carol"]
hosts = { p = "localhost" }
"#;

fn project() -> Test {
    Test::bare()
        .file("runbook.toml", INVENTORY)
        .file("deploy/releases/r1/index.php", "r1")
        .file(
            "scripts/sneak.rhai",
            "// runbook: read-only\ntry {\n    release::activate(hosts(), \"r1\");\n} catch (e) {\n    print(\"caught\");\n}\nprint(\"switched\");\n",
        )

        .file(
            "scripts/change.rhai",
            "local::run([\"touch\", app.root + \"/changed\"]);",
        )
        .file(
            "scripts/look.rhai",
            "// runbook: read-only\nprint(\"looked\");",
        )
        .file(
            "scripts/fix.rhai",
            "// runbook: emergency\nlocal::run([\"touch\", app.root + \"/fixed\"]);",
        )
}

/// The project, run inside GitHub Actions by `actor` (the only place GITHUB_ACTOR counts).
fn as_github(actor: &str) -> Test {
    project()
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_ACTOR", actor)
}

fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name
}

fn audit(t: &Test) -> Vec<serde_json::Value> {
    std::fs::read_to_string(t.path().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_read_only_script_that_switches_a_release_or_locks_is_stopped_and_audited() {
    let t = as_github("bob");
    let out = t.run_with(&["run", "sneak", "-e", "prod", "--yes"]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    out.stderr_has("refused: release::activate changes the environment, but scripts/sneak.rhai declares `// runbook: read-only`");
    // Stopped where it was: not caught by `try`, nothing after it ran, nothing switched.
    assert!(
        !out.stdout.contains("caught") && !out.stdout.contains("switched"),
        "{}",
        out.stdout
    );
    assert!(
        std::fs::symlink_metadata(t.path().join("deploy/current")).is_err(),
        "a read-only script switched `current`"
    );
    let last = audit(&t).pop().unwrap();
    assert_eq!(last["result"], "refused", "{last}");
    assert_eq!(last["actor"], "bob");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("release::activate"),
        "{last}"
    );
    // Every other runbook-owned change is held to the same promise.
    for (call, op) in [
        ("lock::acquire(hosts())", "lock::acquire"),
        ("release::rollback(hosts())", "release::rollback"),
        ("release::cleanup(hosts(), 1)", "release::cleanup"),
        ("backup::prune(#{ keep: 0 })", "backup::prune"),
        ("artisan::run(hosts(), [\"down\"])", "artisan::run(down)"),
    ] {
        let t = as_github("bob").file(
            "scripts/sneak.rhai",
            &format!("// runbook: read-only\n{call};\nprint(\"done\");\n"),
        );
        let out = t.run_with(&["run", "sneak", "-e", "prod", "--yes"]);
        out.stderr_has(&format!("refused: {op} changes the environment"));
        assert!(!out.stdout.contains("done"), "{call}: {}", out.stdout);
        assert_eq!(audit(&t).pop().unwrap()["result"], "refused", "{call}");
    }
    assert!(!t.path().join("deploy/.runbook/lock").exists());
    // An artisan command that only reads is not a change (it fails here: no Laravel app).
    let t = as_github("bob").file(
        "scripts/sneak.rhai",
        "// runbook: read-only\nartisan::run(hosts(), [\"migrate:status\"]);\n",
    );
    let out = t.run_with(&["run", "sneak", "-e", "prod", "--yes"]);
    assert!(!out.stderr.contains("refused"), "{}", out.stderr);
}

#[test]
fn the_actor_is_the_github_actor_only_inside_actions_else_the_os_account() {
    let me = os_user();
    // Outside Actions, GITHUB_ACTOR and USER are anyone's to set: the OS account counts.
    let t = project()
        .env("GITHUB_ACTOR", "alice")
        .env("USER", "alice")
        .env("LOGNAME", "alice");
    t.run_with(&["run", "change", "-e", "prod", "--yes"])
        .code(3)
        .stderr_has(&format!("`{me}` may not run scripts/change.rhai on `prod`"));
    assert!(!t.path().join("changed").exists());
    let refused = audit(&t).pop().unwrap();
    assert_eq!(
        (refused["actor"].as_str(), refused["os_user"].as_str()),
        (Some(me.as_str()), Some(me.as_str())),
        "{refused}"
    );
    // Inside Actions the GitHub actor counts, and the OS account is recorded beside it.
    let t = as_github("alice");
    t.run_with(&["run", "change", "-e", "prod", "--yes"])
        .code(0);
    let ok = audit(&t).pop().unwrap();
    assert_eq!(
        (ok["actor"].as_str(), ok["os_user"].as_str()),
        (Some("alice"), Some(me.as_str())),
        "{ok}"
    );
}

#[test]
fn the_repl_refuses_a_non_deployer_run_and_direct_changes() {
    let t = as_github("bob");
    // `:run` of a change script, then direct calls (answering yes to any y/N).
    let out = t.repl(
        "prod",
        ":run change\nrelease::activate(hosts(), \"r1\")\ny\nlock::acquire(hosts())\ny\n:run look\nprod\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`bob` may not run scripts/change.rhai on `prod` (allowed: alice, carol)"),
        "{stderr}"
    );
    assert!(!t.path().join("changed").exists(), "`:run` ran a change");
    assert!(
        stderr.contains(
            "refused: release::activate changes the environment, but `bob` may only read `prod`"
        ),
        "{stderr}"
    );
    assert!(
        std::fs::symlink_metadata(t.path().join("deploy/current")).is_err(),
        "a direct release::activate switched `current`"
    );
    assert!(
        stderr.contains("refused: lock::acquire")
            && !t.path().join("deploy/.runbook/lock").exists(),
        "{stderr}"
    );
    // Reading stays open, as under `run`.
    assert!(stdout.contains("looked"), "{stdout}");
    let results: Vec<String> = audit(&t)
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["script"].as_str().unwrap_or(""),
                r["result"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            "scripts/change.rhai refused",
            "repl refused",
            "repl failed",
            "repl refused",
            "repl failed",
            "scripts/look.rhai success"
        ],
        "the `y` answers were never asked for, so they ran as (failing) lines"
    );
}

#[test]
fn the_repl_asks_confirmation_and_an_emergency_reason_like_run() {
    let alice = as_github("alice");
    let out = alice.repl("prod", ":run change\nnope\n:run fix\n:run change\nprod\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("confirmation declined"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("may not run the emergency script scripts/fix.rhai")
            && stderr.contains("env.prod.emergency_deployers"),
        "{stderr}"
    );
    assert!(
        alice.path().join("changed").exists(),
        "confirmed with the name: {stderr}"
    );
    let carol = as_github("carol");
    let out = carol.repl("prod", ":run fix\n\n:run fix\nCVE fix\nprod\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs a written reason"), "{stderr}");
    assert!(carol.path().join("fixed").exists(), "{stderr}");
    let records = audit(&carol);
    let fixed = records.iter().find(|r| r["result"] == "success").unwrap();
    assert_eq!(fixed["reason"], "CVE fix", "{fixed}");
    assert_eq!(records[0]["result"], "refused", "{:?}", records[0]);
}

#[test]
fn a_refused_actor_touches_nothing_and_is_told_who_may() {
    let t = as_github("bob");
    let out = t.run_with(&["run", "change", "-e", "prod", "--yes"]);
    out.code(3)
        .stderr_has("`bob` may not run scripts/change.rhai on `prod` (allowed: alice, carol)")
        .stderr_has("env.prod.deployers");
    assert!(!t.path().join("changed").exists());
    let audit = std::fs::read_to_string(t.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"result\":\"refused\"") && audit.contains("\"actor\":\"bob\""),
        "{audit}"
    );
    // Read-only scripts stay open.
    t.run_with(&["run", "look", "-e", "prod", "--yes"])
        .code(0)
        .stdout_has("looked");
}

#[test]
fn an_allowed_actor_deploys_and_emergencies_have_their_own_list() {
    let t = as_github("alice");
    t.run_with(&["run", "change", "-e", "prod", "--yes"])
        .code(0);
    assert!(t.path().join("changed").exists());
    t.run_with(&["run", "fix", "-e", "prod", "--yes"])
        .code(3)
        .stderr_has("may not run the emergency script scripts/fix.rhai")
        .stderr_has("env.prod.emergency_deployers");
    let carol = as_github("carol");
    // Allowed, but an emergency always needs its reason.
    carol
        .run_with(&["run", "fix", "-e", "prod", "--yes"])
        .code(2)
        .stderr_has("needs a written reason");
    assert!(!carol.path().join("fixed").exists());
    carol
        .run_with(&["run", "fix", "-e", "prod", "--yes", "--reason", "CVE fix"])
        .code(0);
    assert!(carol.path().join("fixed").exists());
}

#[test]
fn the_actor_flag_is_refused_on_a_protected_environment() {
    let t = as_github("bob");
    t.run_with(&["run", "change", "-e", "prod", "--yes", "--actor", "alice"])
        .code(2)
        .stderr_has("--actor: `prod` is protected");
    assert!(!t.path().join("changed").exists());
}

#[test]
fn audit_stats_report_the_delivery_metrics_of_the_log() {
    let line = |ts: &str, result: &str, deploy: bool, rollback: bool, commit: Option<i64>| {
        let mut v = serde_json::json!({
            "ts": ts, "run": ts, "actor": "a", "env": "prod", "script": "scripts/deploy.rhai",
            "script_sha256": "", "result": result, "duration_ms": 1, "deploy": deploy, "rollback": rollback
        });
        if let Some(c) = commit {
            v["commit_time"] = c.into();
        }
        v.to_string()
    };
    let base = chrono::Utc::now() - chrono::Duration::days(3);
    let at = |mins: i64| (base + chrono::Duration::minutes(mins)).to_rfc3339();
    let c = |mins: i64| (base + chrono::Duration::minutes(mins)).timestamp();
    let log = [
        line(&at(0), "success", true, false, Some(c(-60))),
        line(&at(60), "failed", true, false, None),
        line(&at(90), "success", true, false, Some(c(80))),
        line(&at(120), "success", false, true, None),
    ]
    .join("\n");
    let t = Test::bare().file("audit.jsonl", &format!("{log}\n"));
    let out = t.run_with(&["audit", "--stats", "--json", "--since", "7d"]);
    out.code(0);
    let stats: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let s = &stats[0];
    assert_eq!(s["env"], "prod");
    assert_eq!(
        (
            s["deploys"].as_u64(),
            s["successful"].as_u64(),
            s["failed"].as_u64(),
            s["rolled_back"].as_u64()
        ),
        (Some(3), Some(2), Some(1), Some(1))
    );
    assert_eq!(s["change_failure_rate"], 66.7);
    // Lead times: 60 min and 10 min → median (lower middle) 600 s.
    assert_eq!(s["lead_time_median_s"], 600);
    // Failure at 60 → fixed at 90 (1800 s); deploy at 90 rolled back at 120 (1800 s).
    assert_eq!(s["time_to_restore_mean_s"], 1800);
    assert_eq!(s["per_week"], 2.0);
    t.run_with(&["audit", "--stats"])
        .code(0)
        .stdout_has("prod")
        .stdout_has("66.7%");
}

#[test]
fn archive_logs_compresses_old_logs_keeps_n_and_reports_the_space_freed() {
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/maintenance/archive-logs.rhai"
    ))
    .unwrap();
    let t = Test::bare()
        .file(
            "runbook.toml",
            "[app]\nname = \"t\"\ndeploy_path = \"deploy\"\n[env.dev]\ntransport = \"local\"\nhosts = { a = \"localhost\" }\n",
        )
        .file("scripts/maintenance/archive-logs.rhai", &script);
    let logs = t.path().join("deploy/shared/storage/logs");
    std::fs::create_dir_all(logs.join("archive")).unwrap();
    let line = "[2026-11-01] production.ERROR: something failed for id 42\n".repeat(20000);
    for (name, age) in [
        ("old-1.log", "10 days ago"),
        ("old-2.log", "9 days ago"),
        ("today.log", "1 hour ago"),
    ] {
        std::fs::write(logs.join(name), &line).unwrap();
        std::process::Command::new("touch")
            .args(["-d", age])
            .arg(logs.join(name))
            .status()
            .unwrap();
    }
    for i in 0..3 {
        std::fs::write(logs.join(format!("archive/ancient-{i}.log.gz")), "x").unwrap();
        std::process::Command::new("touch")
            .args(["-d", &format!("{} days ago", 30 + i)])
            .arg(logs.join(format!("archive/ancient-{i}.log.gz")))
            .status()
            .unwrap();
    }
    let out = t.run_with(&[
        "run",
        "maintenance/archive-logs",
        "-e",
        "dev",
        "days=7",
        "keep=3",
        "-q",
    ]);
    out.code(0).stdout_has("freed");
    assert!(logs.join("today.log").exists(), "a recent log was archived");
    assert!(!logs.join("old-1.log").exists() && logs.join("archive/old-1.log.gz").exists());
    let mut archive: Vec<String> = std::fs::read_dir(logs.join("archive"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    archive.sort();
    assert_eq!(
        archive,
        ["ancient-0.log.gz", "old-1.log.gz", "old-2.log.gz"],
        "keep = 3, the newest"
    );
    let freed: i64 = out
        .stdout
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(freed > 1000, "{}", out.stdout);
}

#[test]
fn the_weekly_report_sends_metrics_backups_and_anomalies() {
    let slack = crate::receivers::Http::fixed(200, "ok");
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/maintenance/weekly-report.rhai"
    ))
    .unwrap();
    let now = chrono::Utc::now();
    let rec = |mins: i64, result: &str, deploy: bool| {
        serde_json::json!({
            "ts": (now - chrono::Duration::minutes(mins)).to_rfc3339(), "run": format!("r{mins}"), "actor": "bob",
            "env": "dev", "script": "scripts/deploy.rhai", "script_sha256": "", "result": result,
            "duration_ms": 1, "deploy": deploy
        })
        .to_string()
    };
    let log = [
        rec(300, "success", true),
        rec(200, "failed", true),
        rec(100, "refused", false),
    ]
    .join("\n");
    let t = Test::bare()
        .file(
            "runbook.toml",
            "[app]\nname = \"shop\"\ndeploy_path = \"deploy\"\n[env.dev]\ntransport = \"local\"\nbackup_dir = \"backups\"\nhosts = { a = \"localhost\" }\n[notify.slack]\nwebhook = { env = \"RB_SLACK\" }\n",
        )
        .file("scripts/maintenance/weekly-report.rhai", &script)
        .file("audit.jsonl", &format!("{log}\n"))
        .env("RB_SLACK", &slack.url("/hook"));
    let out = t.run_with(&["run", "maintenance/weekly-report", "-e", "dev", "-q"]);
    out.code(0)
        .stdout_has("dev: 1 deploys (2 attempts), change failure rate 50.0%")
        .stdout_has("anomalies: 1 refused or aborted runs")
        .stdout_has("a: NO BACKUP");
    let got = slack.received();
    assert_eq!(got.len(), 1);
    let p: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert!(
        p["text"]
            .as_str()
            .unwrap()
            .contains("Weekly report for shop / dev"),
        "{p}"
    );
    // A fresh runner (no local log): the host's own log tells the same week, and each
    // run counts once though it is in both logs.
    std::fs::create_dir_all(t.path().join("deploy/.runbook")).unwrap();
    std::fs::write(
        t.path().join("deploy/.runbook/audit.jsonl"),
        format!("{log}\n"),
    )
    .unwrap();
    std::fs::remove_file(t.path().join("audit.jsonl")).unwrap();
    let out = t.run_with(&["run", "maintenance/weekly-report", "-e", "dev", "-q"]);
    out.code(0)
        .stdout_has("dev: 1 deploys (2 attempts), change failure rate 50.0%")
        .stdout_has("anomalies: 1 refused or aborted runs");
    // (That report's own run is in the local log now.)
    std::fs::remove_file(t.path().join("audit.jsonl")).unwrap();
    let stats = t.run_with(&["audit", "--stats", "-e", "dev"]);
    stats
        .code(0)
        .stderr_has("the local audit log has no run of `dev`: reading the hosts' logs");
    assert!(stats.stdout.contains("dev"), "{}", stats.stdout);
}

/// The default inventory's protected `prod` (host `p`, local) with two releases, `r1` live.
fn protected_fleet() -> Test {
    let t = Test::new()
        .file("deploy/releases/r1/index.php", "r1")
        .file("deploy/releases/r2/index.php", "r2");
    std::os::unix::fs::symlink("releases/r1", t.path().join("deploy/current")).unwrap();
    t
}

#[test]
fn the_repl_asks_before_the_first_change_of_a_line_whatever_calls_it() {
    let t = protected_fleet();
    let mark = |name: &str| t.path().join(name).display().to_string();
    // Each change, however it is spelled, followed by the answer "n"; then two reads
    // (no question: the next line is a line, not an answer).
    let refused = [
        ("lock:: acquire(hosts())", "lock::acquire"),
        (
            "import \"laravel\" as l; l::migrate(hosts())",
            "artisan::run(migrate)",
        ),
        (
            &format!("ssh::shell(hosts(), \"touch {}\")", mark("shelled")),
            "`sh -c 'touch ",
        ),
        (
            "artisan::run(hosts(), \"cache:clear\")",
            "artisan::run(cache:clear)",
        ),
        ("release::cleanup(hosts(), 1)", "release::cleanup"),
        ("backup::prune(#{keep: 0})", "backup::prune"),
        ("release::activate(hosts(), \"r2\")", "release::activate"),
        // A user function defined first (nothing asks), called later.
        ("grab()", "lock::acquire"),
        // `try` does not get past a refusal, nor does a later call of the line.
        (
            &format!(
                "try {{ ssh::run(hosts(), [\"touch\", \"{}\"]) }} catch (e) {{ print(\"caught\") }} ssh::run(hosts(), [\"touch\", \"{}\"]);",
                mark("tried"),
                mark("after")
            ),
            "`touch ",
        ),
    ];
    let mut input = String::from("fn grab() { lock::acquire(hosts()) }\n");
    for (line, _) in &refused {
        let _ = writeln!(input, "{line}\nn");
    }
    let _ = write!(
        input,
        "release::list(host(\"p\"))\nssh::run(hosts(), [\"true\"], #{{read: true}})\ntry {{ artisan::run(host(\"p\"), \"migrate:status\") }} catch {{}}\nprint(\"after the reads\")\n\
         local::run([\"touch\", \"{}\"]); local::run([\"touch\", \"{}\"]);\ny\nprint(\"one question\")\n",
        mark("yes1"),
        mark("yes2")
    );
    let out = t.repl("prod", &input);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (line, what) in &refused {
        assert!(
            stdout.contains(&format!("not run: {what}")),
            "`{line}` did not ask (or was not refused):\n{stdout}\n{stderr}"
        );
    }
    assert_eq!(
        stdout.matches("not run: ").count(),
        refused.len(),
        "one question per line:\n{stdout}"
    );
    assert!(
        !stderr.contains("not found") && !stdout.contains("caught"),
        "an answer was read as a line, or `try` caught the refusal:\n{stdout}\n{stderr}"
    );
    // Nothing changed on the host.
    assert!(
        !t.path().join("deploy/.runbook/lock").exists(),
        "a lock was taken"
    );
    assert_eq!(
        std::fs::read_link(t.path().join("deploy/current")).unwrap(),
        std::path::Path::new("releases/r1")
    );
    assert!(t.path().join("deploy/releases/r2").exists(), "cleanup ran");
    for m in ["shelled", "tried", "after"] {
        assert!(!t.path().join(m).exists(), "{m} was run");
    }
    // Reads did not ask; a yes lets the whole line run, asked once.
    assert!(stdout.contains("after the reads"), "{stdout}");
    assert!(stdout.contains("one question"), "{stdout}");
    assert!(
        t.path().join("yes1").exists() && t.path().join("yes2").exists(),
        "{stdout}\n{stderr}"
    );
    // Refused lines are not offered again by the history; the others are.
    let history = std::fs::read_to_string(t.path().join("history")).unwrap();
    for (line, _) in &refused {
        assert!(
            !history.lines().any(|h| h == *line),
            "refused `{line}` in the history:\n{history}"
        );
    }
    assert!(history.contains("release::list(host(\"p\"))"), "{history}");
    assert!(history.contains("fn grab()"), "{history}");
    let results: Vec<String> = audit(&t)
        .iter()
        .map(|r| r["result"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        results.iter().filter(|r| *r == "refused").count(),
        refused.len(),
        "{results:?}"
    );
}

#[test]
fn a_repl_run_records_its_arguments_in_the_audit_log_with_secrets_masked() {
    let t = Test::bare()
        .file(
            "runbook.toml",
            &format!(
                "{}\n[notify.slack]\nwebhook = {{ env = \"RB_SLACK\" }}\n",
                crate::harness::INVENTORY
            ),
        )
        .file("scripts/say.rhai", "print(`said ${args.word}`);\n")
        .env("RB_SLACK", "inventory-hook-secret-91")
        .env("RB_TOKEN", "read-token-secret-92");
    let out = t.repl(
        "dev",
        ":run say word=plain hook=inventory-hook-secret-91\nlet tok = secret(\"RB_TOKEN\");\n:run say word=read-token-secret-92\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("said plain") && stdout.contains("said ***"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<serde_json::Value> = audit(&t)
        .into_iter()
        .filter(|r| r["script"] == "scripts/say.rhai")
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    // The arguments as given, each value masked if it is a secret the session knows
    // (an inventory secret, or one read with secret() earlier in the session).
    assert_eq!(runs[0]["args"]["word"], "plain", "{}", runs[0]);
    assert_eq!(runs[0]["args"]["hook"], "***", "{}", runs[0]);
    assert_eq!(runs[1]["args"]["word"], "***", "{}", runs[1]);
    let log = std::fs::read_to_string(t.path().join("audit.jsonl")).unwrap();
    let history = std::fs::read_to_string(t.path().join("history")).unwrap();
    for secret in ["inventory-hook-secret-91", "read-token-secret-92"] {
        assert!(!log.contains(secret), "{secret} in the audit log:\n{log}");
        assert!(
            !history.contains(secret),
            "{secret} in the history:\n{history}"
        );
    }
}
