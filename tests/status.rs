//! The on-call surface on the production-shaped fleet: `runbook status`, `runbook
//! releases` and `runbook lock status|freeze|thaw`, through the real binary.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::prod::ProdFleet;

fn json(out: &crate::harness::Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn status_says_what_is_live_where_and_what_to_run_when_it_is_not_one_release() {
    let Some(f) = ProdFleet::start() else { return };
    let p = f.project();
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    std::thread::sleep(Duration::from_millis(1100));
    f.run("deploy", &["ref=v2", "-q"]).code(0);
    let v2 = f.current("web1");

    // Consistent: one release everywhere, php-fpm executes it, the worker runs.
    let t0 = Instant::now();
    let out = p.run_with(&["status", "-e", "prod"]);
    eprintln!(
        "status on 4 hosts: {} ms (wall, cold connections)",
        t0.elapsed().as_millis()
    );

    out.code(0)
        .stdout_has(&format!("all serving {v2} (ref v2"))
        .stdout_has(&format!("rollback target: {v1}"))
        .stdout_has("✓ consistent");
    let s = json(p.run_with(&["status", "-e", "prod", "--json"]).code(0));
    assert_eq!(s["consistent"], true);
    assert_eq!(s["live"], v2.as_str());
    for h in s["hosts"].as_array().unwrap() {
        if h["host"] == "lb1" {
            // The balancer gets no releases: it is shown, never judged for one.
            assert_eq!(h["gets_releases"], false, "{h}");
            continue;
        }
        assert_eq!(h["live"], v2.as_str(), "{h}");
        assert_eq!(h["previous_good"], v1.as_str(), "{h}");
        assert_eq!(h["maintenance"], false, "{h}");
        assert!(h["free_bytes"].as_u64().unwrap_or(0) > 0, "{h}");
        match h["host"].as_str() {
            // The release php-fpm actually executes, from each web host's own answer.
            Some("web1" | "web2") => assert_eq!(h["serves"], v2.as_str(), "{h}"),
            Some("worker1") => assert!(h["workers"].as_u64().unwrap_or(0) >= 1, "{h}"),
            other => panic!("unexpected host {other:?}"),
        }
    }

    // `releases`: one row per release, where it is live and present.
    let out = p.run_with(&["releases", "-e", "prod", "--json"]);
    let r = json(out.code(0));
    let rows = r["releases"].as_array().unwrap();
    assert_eq!(rows[0]["name"], v2.as_str(), "newest first: {r}");
    assert_eq!(rows[0]["git_ref"], "v2");
    assert_eq!(rows[0]["live_on"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(rows[1]["name"], v1.as_str());
    assert!(rows[1]["live_on"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(rows[1]["present_on"].as_array().unwrap().len(), 3, "{r}");
    p.run_with(&["releases", "-e", "prod"])
        .code(0)
        .stdout_has("RELEASE")
        .stdout_has(&format!("{v2}  v2"));

    // Drift: web2 alone goes back to v1 (by hand, as another tool would). Named, exit 1,
    // with the command that makes the fleet whole — and that command works.
    let web2 = f.path("web2", "/var/www/app");
    let tmp = web2.join("current.tmp");
    std::os::unix::fs::symlink(format!("releases/{v1}"), &tmp).unwrap();
    std::fs::rename(&tmp, web2.join("current")).unwrap();
    let out = p.run_with(&["status", "-e", "prod"]);
    out.code(1)
        .stdout_has(&format!(
            "the hosts serve different releases: web1 {v2}, web2 {v1}, worker1 {v2}"
        ))
        .stdout_has(&format!("→ runbook run rollback -e prod to={v2}"))
        .stderr_has("prod is not consistent: ");
    // php-fpm on web2 executes what web2's current says: no stale-code problem there.
    assert!(!out.stdout.contains("php-fpm executes"), "{}", out.stdout);
    f.run("rollback", &[&format!("to={v2}"), "-q"]).code(0);
    p.run_with(&["status", "-e", "prod"]).code(0);
    // Bringing web2 forward to what the others serve is no verdict on v1.
    let r = json(p.run_with(&["releases", "-e", "prod", "--json"]).code(0));
    assert_eq!(r["releases"][1]["name"], v1.as_str());
    assert!(
        r["releases"][1]["bad_on"].as_array().unwrap().is_empty(),
        "{r}"
    );

    // A run that holds the lock: a note with its holder, not a fault.
    let holder = f.project().file(
        "scripts/hold.rhai",
        "lock::acquire(hosts(\"web\"));\nlog::info(\"holding\");\nsleep(30);\n",
    );
    let mut child = holder
        .command()
        .args(["run", "hold", "-e", "prod"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = f.path("web1", "/var/www/app/.runbook/lock/info");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lock.exists() {
        assert!(Instant::now() < deadline, "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    p.run_with(&["status", "-e", "prod"])
        .code(0)
        .stdout_has("a run holds the deploy lock: run ")
        .stdout_has("(`scripts/hold.rhai`)");
    p.run_with(&["lock", "status", "-e", "prod"])
        .code(0)
        .stdout_has("`scripts/hold.rhai` since");
    // Its runner dies: the lock it left is named with the command that fixes it.
    child.kill().unwrap();
    child.wait().unwrap();
    p.run_with(&["status", "-e", "prod"])
        .code(1)
        .stdout_has("the deploy lock on web1, web2 is left by a run that is gone")
        .stdout_has("→ runbook recover -e prod");
    p.run_with(&["recover", "-e", "prod"]).code(0);
    p.run_with(&["status", "-e", "prod"]).code(0);
}

#[test]
fn a_freeze_stops_deploys_until_thawed_and_an_emergency_with_a_reason_passes() {
    let Some(f) = ProdFleet::start() else { return };
    let p = f.project();
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    // A reason is required; a freeze without a TTL is refused by clap.
    p.run_with(&[
        "lock", "freeze", "-e", "prod", "--ttl", "2h", "--reason", " ",
    ])
    .code(2)
    .stderr_has("a freeze needs a reason");
    p.run_with(&[
        "lock",
        "freeze",
        "-e",
        "prod",
        "--ttl",
        "2h",
        "--reason",
        "Black Friday sale",
    ])
    .code(0);
    for h in ["web1", "web2", "worker1"] {
        assert!(
            f.path(h, "/var/www/app/.runbook/freeze").exists(),
            "{h} has no freeze record"
        );
    }
    p.run_with(&["status", "-e", "prod"])
        .code(0)
        .stdout_has("deploys are frozen by ")
        .stdout_has("Black Friday sale");
    let s = json(
        p.run_with(&["lock", "status", "-e", "prod", "--json"])
            .code(0),
    );
    assert!(
        s["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["frozen"] == true),
        "{s}"
    );

    // A deploy is refused before any host changes, and told why and how to lift it.
    std::thread::sleep(Duration::from_millis(1100));
    f.run("deploy", &["ref=v2"])
        .code(1)
        .stderr_has("deploys are frozen (nothing was changed)")
        .stderr_has("Black Friday sale")
        .stderr_has("runbook lock thaw -e prod");
    for (host, live) in f.currents() {
        assert_eq!(live, v1, "{host}");
    }
    assert!(!f.path("web1", "/var/www/app/.runbook/lock").exists());

    // An emergency script with its reason passes the freeze.
    f.run(
        "emergency-deploy",
        &["ref=v2", "--reason", "payment outage hotfix", "-q"],
    )
    .code(0);
    let v2 = f.current("web1");
    assert_ne!(v2, v1);

    // Thawed: deploys go again; both decisions are in the audit log with their reasons.
    p.run_with(&["lock", "thaw", "-e", "prod", "--reason", "sale over"])
        .code(0);
    assert!(!f.path("web1", "/var/www/app/.runbook/freeze").exists());
    std::thread::sleep(Duration::from_millis(1100));
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let audit = p
        .run_with(&["audit", "--json", "--env", "prod"])
        .code(0)
        .stdout
        .clone();
    assert!(audit.contains("\"lock freeze\""), "{audit}");
    assert!(audit.contains("Black Friday sale"), "{audit}");
    assert!(audit.contains("\"lock thaw\""), "{audit}");
    assert!(audit.contains("sale over"), "{audit}");
}

#[test]
fn exec_runs_on_a_role_in_the_live_release_and_an_alias_opens_tinker_in_a_terminal() {
    let Some(f) = ProdFleet::start() else { return };
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    let p = f.project_with(&f.inventory_with(
        true,
        "\n[aliases]\ntinker = { command = [\"php\", \"artisan\", \"tinker\"], interactive = true, role = \"web\" }\nversion = [\"php\", \"artisan\", \"--version\"]\n",
    ));
    // On a role, in the live release, each host's output under its name; an argument
    // with spaces and quotes arrives as one argument.
    let out = p.run_with(&[
        "exec",
        "-e",
        "prod",
        "--role",
        "web",
        "--",
        "sh",
        "-c",
        "echo \"$(hostname) $(pwd -P) $1\"",
        "sh",
        "it's one 'argument'",
    ]);
    out.code(0);
    let all = format!("{}{}", out.stdout, out.stderr);
    for h in ["web1", "web2"] {
        assert!(
            all.contains(&format!(
                "[{h}] {h} /var/www/app/releases/{v1} it's one 'argument'"
            )),
            "{all}"
        );
    }
    assert!(!all.contains("[worker1]"), "{all}");
    // By name pattern; an alias with extra arguments after `--`.
    let out = p.run_with(&["version", "-e", "prod", "--hosts", "work*"]);
    out.code(0);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("[worker1] Laravel Framework"), "{all}");
    assert!(!all.contains("[web1]"), "{all}");
    // A failure on two hosts keeps each host's own stderr in the final error.
    p.run_with(&[
        "exec",
        "-e",
        "prod",
        "--role",
        "web",
        "--",
        "sh",
        "-c",
        "echo \"broken on $(hostname)\" >&2; exit 3",
    ])
    .code(1)
    .stderr_has("failed on 2 of 2 hosts")
    .stderr_has("| broken on web1")
    .stderr_has("| broken on web2");
    // Every exec is in the audit log, with its command.
    let audit = std::fs::read_to_string(p.path().join("audit.jsonl")).unwrap_or_default();
    assert_eq!(audit.matches("\"script\":\"exec\"").count(), 2, "{audit}");
    assert!(audit.contains("\"script\":\"exec (version)\""), "{audit}");

    // `runbook tinker -e prod`: with a terminal, on the first web host, in its release.
    let Some(t) = p.in_terminal("tinker -e prod") else {
        return;
    };
    t.wait_for(&format!("Tinker stand-in for release {v1} (v1)"), 30);
    t.wait_for(">>>", 10);
    t.type_text("6 * 7");
    t.press("Enter");
    t.wait_for("= 42", 10);
    t.type_text("exit");
    t.press("Enter");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let audit = std::fs::read_to_string(p.path().join("audit.jsonl")).unwrap_or_default();
        if audit.contains("exec (tinker)") {
            assert!(
                audit
                    .lines()
                    .last()
                    .unwrap_or("")
                    .contains("\"result\":\"success\""),
                "{audit}"
            );
            assert!(audit.contains("\"interactive\":\"true\""), "{audit}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tinker never ended:\n{}",
            t.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_destructive_migration_is_refused_by_the_gate_until_allowed_with_a_reason() {
    let Some(f) = ProdFleet::start() else { return };
    f.run("deploy", &["ref=v5-slow-migration", "-q"]).code(0);
    let v5 = f.current("web1");
    let has_name = || f.sql("show columns from feature_flags like 'name'");
    assert!(has_name().contains("name"));
    // Blue-green: the old release keeps serving against the new schema. Refused before
    // anything migrates, naming the statement and what to do.
    std::thread::sleep(Duration::from_millis(1100));
    f.run("zero-downtime-deploy", &["ref=v6-drop-column"])
        .code(1)
        .stderr_has("make 1 change(s) the old release cannot live with")
        .stderr_has(
            "2026_04_01_000000_drop_feature_flag_names: alter table `feature_flags` drop `name`",
        )
        .stderr_has("drops a column the old code may still read and write")
        .stderr_has("nothing was migrated or switched")
        .stderr_has("allow_destructive=true --reason");
    assert!(has_name().contains("name"), "the column went anyway");
    for (host, live) in f.currents() {
        assert_eq!(live, v5, "{host}");
    }
    assert!(!f.path("web1", "/var/www/app/.runbook/lock").exists());
    // Allowed by name, but only with a reason.
    f.run(
        "zero-downtime-deploy",
        &["ref=v6-drop-column", "allow_destructive=true"],
    )
    .code(1)
    .stderr_has("say why with --reason");
    assert!(has_name().contains("name"));
    let out = f.run(
        "zero-downtime-deploy",
        &[
            "ref=v6-drop-column",
            "allow_destructive=true",
            "--reason",
            "drop the legacy flag names",
        ],
    );
    out.code(0)
        .stderr_has("allowed by allow_destructive=true (drop the legacy flag names)");
    assert!(!has_name().contains("name"), "the column is still there");
    let v6 = f.current("web1");
    assert_ne!(v6, v5);
    for (host, live) in f.currents() {
        assert_eq!(live, v6, "{host}");
    }
}

/// Every path under `dir` with its type, size, mtime and link target.
fn snapshot(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let Ok(e) = e else { continue };
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        let link = std::fs::read_link(e.path())
            .map(|l| l.display().to_string())
            .unwrap_or_default();
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        out.push(format!(
            "{} {:?} {} {mtime} {link}",
            e.path().strip_prefix(dir).unwrap_or(e.path()).display(),
            m.file_type(),
            if m.is_dir() { 0 } else { m.len() }
        ));
    }
    out
}

#[test]
fn a_dry_run_of_a_second_deploy_reads_the_fleet_and_shows_what_would_change_touching_nothing() {
    let Some(f) = ProdFleet::start() else { return };
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    let hosts = ["web1", "web2", "worker1"];
    let every_host = || -> Vec<Vec<String>> {
        hosts
            .iter()
            .flat_map(|h| {
                [
                    snapshot(&f.path(h, "/var/www/app")),
                    snapshot(&f.path(h, "/var/backups/app")),
                ]
            })
            .collect()
    };
    let before = every_host();
    let tables = f.sql("show tables");
    std::thread::sleep(Duration::from_millis(1100));
    let out = f.run("deploy", &["ref=v5-slow-migration", "--dry-run"]);
    out.code(0);
    let all = format!("{}{}", out.stdout, out.stderr);
    // Reads were real: the fleet has a live release, so the plan holds the pre-deploy
    // backup and maintenance mode, and says what it is replacing.
    for needle in [
        "pre-deploy backup",
        "maintenance on",
        "lock free: it would be taken",
        "plan for web1, web2, worker1: ",
        &format!("(live: {v1})"),
        " v5-slow-migration",
        " v2",
        "composer.lock: unchanged",
        "migrations added: database/migrations/2026_02_01_000000_create_notes_table.php, database/migrations/2026_03_01_000000_create_feature_flags_table.php",
        "the SQL of the new migrations (migrate --pretend on web1)",
        "create table `feature_flags`",
        &format!("(previous: {v1})"),
    ] {
        assert!(all.contains(needle), "the plan lacks {needle:?}:\n{all}");
    }
    assert!(!all.contains("(first release)"), "{all}");
    // ... and nothing changed anywhere: files, links, the database.
    let after = every_host();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let gone: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
        let new: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
        assert!(
            gone.is_empty() && new.is_empty(),
            "{} changed in a dry run: before {gone:?}, after {new:?}",
            hosts[i / 2]
        );
    }
    assert_eq!(f.sql("show tables"), tables);

    // The repository unreachable: the plan says so and reads the host's mirror, which
    // stays whole.
    let gone = f.project_with(&f.inventory().replace("/srv/app.git", "/srv/gone.git"));
    let out = gone.run_with(&["run", "deploy", "-e", "prod", "ref=v2", "--dry-run"]);
    out.code(0)
        .stderr_has("could not fetch /srv/gone.git: what the host fetched last is shown")
        .stderr_has(" v2");
    let mirror = f.path("web1", "/var/www/app/.runbook/repo.git");
    assert!(mirror.join("objects").is_dir(), "the mirror went");
    assert_eq!(snapshot(&f.path("web1", "/var/www/app")), after[0]);
}
