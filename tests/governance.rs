//! Who may deploy, and how well we deploy (DORA figures from the audit log).

use crate::harness::Test;

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

#[test]
fn a_refused_actor_touches_nothing_and_is_told_who_may() {
    let t = project().env("GITHUB_ACTOR", "bob");
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
    let t = project().env("GITHUB_ACTOR", "alice");
    t.run_with(&["run", "change", "-e", "prod", "--yes"])
        .code(0);
    assert!(t.path().join("changed").exists());
    t.run_with(&["run", "fix", "-e", "prod", "--yes"])
        .code(3)
        .stderr_has("may not run the emergency script scripts/fix.rhai")
        .stderr_has("env.prod.emergency_deployers");
    let carol = project().env("GITHUB_ACTOR", "carol");
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
    let t = project().env("GITHUB_ACTOR", "bob");
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
}
