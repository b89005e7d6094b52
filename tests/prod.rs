//! On the production-shaped fleet (`support::prod`): separate hosts, one MariaDB, Redis
//! queues with a supervised worker, production OPcache — through the real binary and the
//! shipped scripts.

use std::time::{Duration, Instant};

use crate::support::prod::{DB_NAME, DB_PASSWORD, ProdFleet};

fn took(test: &str, t0: Instant) {
    eprintln!(
        "{test}: {} ms from the fleet's start to the end of the test",
        t0.elapsed().as_millis()
    );
}

/// A new second, so that the next release gets a new name.
fn next_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn the_fleet_is_production_shaped() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    // Separate disks: what web1 writes, no other host sees.
    for dir in ["/var/www/app", "/var/backups/app", "/tmp", "/home/deploy"] {
        let out = f
            .host("web1")
            .host
            .exec(&["sh", "-c", &format!("echo web1 > {dir}/mine")], true);
        assert!(out.status.success(), "{dir}: {out:?}");
        for other in ["web2", "worker1"] {
            let seen = f
                .host(other)
                .host
                .exec(&["test", "-e", &format!("{dir}/mine")], true);
            assert!(!seen.status.success(), "{other} sees web1's {dir}/mine");
        }
    }
    // ... and one database: every host writes its name into it.
    f.sql("create table reach (host varchar(64))");
    let port = f.db.port.unwrap_or(0);
    for h in &f.hosts {
        let php = format!(
            "$p = new PDO('mysql:host=127.0.0.1;port={port};dbname={DB_NAME}', '{DB_NAME}', '{DB_PASSWORD}'); $p->exec(\"insert into reach values ('\" . gethostname() . \"')\");"
        );
        let out = h.host.exec(&["php", "-r", &php], true);
        assert!(out.status.success(), "{}: {out:?}", h.host.name);
    }
    assert_eq!(
        f.sql("select host from reach order by host"),
        "web1\nweb2\nworker1"
    );
    // A job queued by a web host is processed by the supervised worker on worker1.
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    // The deploy's "restart workers" went through the shared cache, in Redis.
    let keys = f
        .redis
        .cli(&["-n", "1", "--scan", "--pattern", "*queue:restart*"])
        .unwrap();
    assert!(!keys.trim().is_empty(), "no queue:restart signal in Redis");
    let v1 = f.current("web1");
    let job = f.queued_job("web2", "shape").unwrap();
    assert_eq!(
        (job.host.as_str(), job.release.as_str(), job.code.as_str()),
        ("worker1", v1.as_str(), "v1")
    );
    took("the_fleet_is_production_shaped", t0);
}

#[test]
fn a_plain_deploy_puts_every_host_and_the_worker_on_the_new_release() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    assert!(!v1.is_empty());
    next_second();
    f.run("deploy", &["ref=v2", "-q"]).code(0);
    let v2 = f.current("web1");
    assert_ne!(v2, v1);
    for (host, live) in f.currents() {
        assert_eq!(live, v2, "{host}");
    }
    for h in ["web1", "web2"] {
        let got = f.served(h);
        assert_eq!(
            (got.status, got.release.as_deref(), got.code.as_deref()),
            (200, Some(v2.as_str()), Some("v2")),
            "{h}"
        );
    }
    let seen = f.through_balancer(6);
    assert_eq!(seen.get(&format!("200 {v2}")), Some(&6), "{seen:?}");
    // The worker runs the new code: a job queued after the deploy records v2.
    let job = f.queued_job("web1", "after-v2").unwrap();
    assert_eq!(
        (job.release.as_str(), job.code.as_str()),
        (v2.as_str(), "v2")
    );
    took(
        "a_plain_deploy_puts_every_host_and_the_worker_on_the_new_release",
        t0,
    );
}

/// Every host's `current`, and what each web host and the balancer serve, all on
/// `release`; maintenance off; no lock left.
#[track_caller]
fn all_on(f: &ProdFleet, release: &str) {
    for (host, live) in f.currents() {
        assert_eq!(live, release, "{host}'s current");
    }
    for h in ["web1", "web2"] {
        let got = f.served(h);
        assert_eq!(
            (got.status, got.release.as_deref()),
            (200, Some(release)),
            "{h} serves"
        );
    }
    let seen = f.through_balancer(4);
    assert_eq!(
        seen.get(&format!("200 {release}")),
        Some(&4),
        "through the balancer: {seen:?}"
    );
    for h in &f.hosts {
        assert!(
            !h.host.path("/var/www/app/.runbook/lock").exists(),
            "a lock was left on {}",
            h.host.name
        );
    }
}

/// What a host's `.runbook/` holds of locks: the lock itself and its temporaries.
fn lock_leftovers(h: &crate::support::prod::ProdHost) -> Vec<String> {
    std::fs::read_dir(h.host.path("/var/www/app/.runbook"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("lock"))
                .collect()
        })
        .unwrap_or_default()
}

/// The hosts an `artisan` verb ran on, from a `--json` run's events.
fn artisan_hosts(out: &crate::harness::Output, verb: &str) -> Vec<String> {
    let mut hosts: Vec<String> = out
        .events()
        .iter()
        .filter(|e| {
            e["event"] == "command_started"
                && e["argv"][1] == "artisan"
                && e["argv"][2] == verb
                // The migration gate's `migrate --pretend` reads the SQL; it migrates nothing.
                && !e["argv"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "--pretend"))
        })
        .filter_map(|e| e["host"].as_str().map(str::to_owned))
        .collect();
    hosts.sort();
    hosts
}

#[test]
fn a_slow_migration_runs_once_on_the_shared_database() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    // Even the first deploy onto the empty shared database migrates it once.
    let out = f.run("deploy", &["ref=v1", "--json"]);
    out.code(0);
    assert_eq!(artisan_hosts(&out, "migrate"), ["web1"], "v1: who migrated");
    next_second();
    let started = Instant::now();
    let out = f.run("deploy", &["ref=v5-slow-migration", "--json"]);
    let wall = started.elapsed();
    out.code(0);
    // No host ran into another's half-done migration ("Table … already exists").
    let clashes: Vec<&str> = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .filter(|l| l.contains("SQLSTATE") || l.contains("Base table or view already exists"))
        .collect();
    assert!(clashes.is_empty(), "{clashes:#?}");
    // On the designated host (the first web host by default), exactly once.
    assert_eq!(artisan_hosts(&out, "migrate"), ["web1"], "v5: who migrated");
    assert_eq!(
        f.sql("select count(*) from migrations where migration like '%create_feature_flags_table'"),
        "1"
    );
    assert_eq!(f.sql("select count(*) from feature_flags"), "0");
    let live = f.current("web1");
    all_on(&f, &live);
    assert_eq!(f.served("web2").code.as_deref(), Some("v5-slow-migration"));
    assert!(wall >= Duration::from_secs(3), "the migration sleeps 3 s");
    eprintln!("deploy with a 3 s migration: {} ms", wall.as_millis());
    took("a_slow_migration_runs_once_on_the_shared_database", t0);
}

#[test]
fn a_host_that_cannot_switch_leaves_every_host_on_the_previous_release() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    // web2's deploy root turns read-only: its release can be prepared (in releases/),
    // but `current` cannot be replaced.
    let root = f.path("web2", "/var/www/app");
    let mode = |m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode(0o555);
    next_second();
    let out = f.run("deploy", &["ref=v2"]);
    mode(0o755);
    out.code(1).stderr_has("web2");
    all_on(&f, &v1);
    assert_eq!(f.served("web1").code.as_deref(), Some("v1"));
    took(
        "a_host_that_cannot_switch_leaves_every_host_on_the_previous_release",
        t0,
    );
}

#[test]
fn hosts_with_different_release_lists_roll_back_to_one_release_or_not_at_all() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    let mut names = Vec::new();
    for tag in ["v1", "v2", "v2"] {
        f.run("deploy", &[&format!("ref={tag}"), "-q"]).code(0);
        names.push(f.current("web1"));
        next_second();
    }
    let (r1, r2, r3) = (&names[0], &names[1], &names[2]);
    // web2 lost the release before the live one (a disk replaced, a manual clean-up).
    for p in [
        format!("/var/www/app/releases/{r2}"),
        format!("/var/www/app/.runbook/releases/{r2}.json"),
    ] {
        let p = f.path("web2", &p);
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
    }
    let out = f.run("rollback", &["migrations=keep"]);
    let currents: Vec<String> = f.currents().into_iter().map(|(_, c)| c).collect();
    if out.code == 0 {
        // One target for the whole fleet, one every host has.
        assert!(currents.iter().all(|c| c == &currents[0]), "{currents:?}");
        assert_ne!(&currents[0], r2, "web2 has no {r2}");
        assert_ne!(&currents[0], r3);
        all_on(&f, &currents[0].clone());
    } else {
        // Or refused before any host changed, naming the host that lacks the target.
        out.code(1).stderr_has("web2");
        all_on(&f, r3);
    }
    eprintln!("rollback across different release lists: {currents:?} (r1 {r1})");
    took(
        "hosts_with_different_release_lists_roll_back_to_one_release_or_not_at_all",
        t0,
    );
}

#[test]
fn a_restore_from_an_archive_with_separate_backup_dirs_lands_every_host_and_the_database() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    f.sql("insert into deploy_marks (`release`) values ('before')");
    next_second();
    f.run("deploy", &["ref=v2", "-q"]).code(0);
    let v2 = f.current("web1");
    f.sql("insert into deploy_marks (`release`) values ('after')");
    // The pre-deploy backup was taken on one host's disk; find it wherever it is.
    let archive = f
        .hosts
        .iter()
        .flat_map(|h| {
            std::fs::read_dir(h.host.path("/var/backups/app"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("backup-") && n.ends_with(".tar.gz"))
        .expect("the v2 deploy made no pre-deploy backup");
    next_second();
    let out = f.run(
        "rollback",
        &[
            &format!("archive={archive}"),
            "database=true",
            "migrations=restore",
            "--json",
        ],
    );
    out.code(0);
    let restored = f.current("web1");
    assert!(
        restored != v1 && restored != v2,
        "a restore makes a new release"
    );
    all_on(&f, &restored);
    // v1's database: one migration, the row from before the v2 deploy only.
    assert_eq!(f.served("web2").migrations, 1);
    assert_eq!(
        f.sql("select `release` from deploy_marks order by id"),
        "before"
    );
    let loads = out
        .events()
        .iter()
        .filter(|e| {
            e["event"] == "command_started"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("load the mysql dump"))
        })
        .count();
    assert_eq!(
        loads, 1,
        "the one database is loaded once, not once per host"
    );
    // A later plain rollback does not return to the release the restore left.
    next_second();
    let out = f.run("rollback", &["migrations=keep", "-q"]);
    for (host, live) in f.currents() {
        assert_ne!(
            live,
            v2,
            "{host} went back to the release the restore left ({out:?})",
            out = out.stderr
        );
    }
    took(
        "a_restore_from_an_archive_with_separate_backup_dirs_lands_every_host_and_the_database",
        t0,
    );
}

#[test]
fn a_failing_health_check_with_only_the_environment_url_fails_the_deploy() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    // What `runbook check` accepts: an environment url, no health list, no host urls.
    let project = f.project_with(&f.inventory_with(false, ""));
    project
        .run_with(&["run", "deploy", "-e", "prod", "ref=v1", "-q"])
        .code(0);
    let v1 = f.current("web1");
    next_second();
    let out = project.run_with(&["run", "deploy", "-e", "prod", "ref=v4-broken"]);
    out.code(1);
    assert!(!out.stderr.contains("verified"), "{}", out.stderr);
    all_on(&f, &v1);
    took(
        "a_failing_health_check_with_only_the_environment_url_fails_the_deploy",
        t0,
    );
}

#[test]
fn with_document_root_and_no_timestamp_checks_every_host_runs_the_new_code() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start_with(crate::support::prod::Options {
        docroot: crate::support::web_host::DocRoot::Document,
        ..Default::default()
    }) else {
        return;
    };
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    // Warm every php-fpm worker's caches with v1's code.
    for _ in 0..12 {
        for h in ["web1", "web2"] {
            assert_eq!(f.served(h).code.as_deref(), Some("v1"));
        }
    }
    next_second();
    f.run("deploy", &["ref=v2", "-q"]).code(0);
    let v2 = f.current("web1");
    for _ in 0..12 {
        for h in ["web1", "web2"] {
            let got = f.served(h);
            assert_eq!(
                (got.release.as_deref(), got.code.as_deref()),
                (Some(v2.as_str()), Some("v2")),
                "{h} still executes old code after the switch"
            );
        }
    }
    // The control: a switch without runbook (no reload) keeps the old code running here,
    // so the check above could fail — this fleet reproduces production's stale OPcache.
    let link = f.path("web1", "/var/www/app/current");
    let tmp = f.path("web1", "/var/www/app/.current.control");
    std::os::unix::fs::symlink(format!("releases/{v1}"), &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    let stale = (0..6).any(|_| f.served("web1").code.as_deref() == Some("v2"));
    assert!(
        stale,
        "with $document_root and validate_timestamps=0 a bare switch took effect at once: the fleet does not reproduce stale code"
    );
    took(
        "with_document_root_and_no_timestamp_checks_every_host_runs_the_new_code",
        t0,
    );
}

#[test]
fn a_queued_job_runs_the_live_release_after_a_deploy_and_after_a_rollback() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    next_second();
    f.run("deploy", &["ref=v2", "-q"]).code(0);
    let v2 = f.current("worker1");
    let job = f.queued_job("web1", "after-deploy").unwrap();
    assert_eq!(
        (job.release.as_str(), job.code.as_str()),
        (v2.as_str(), "v2")
    );
    f.run("rollback", &["migrations=keep", "-q"]).code(0);
    all_on(&f, &v1);
    let job = f.queued_job("web2", "after-rollback").unwrap();
    assert_eq!(
        (job.release.as_str(), job.code.as_str(), job.host.as_str()),
        (v1.as_str(), "v1", "worker1")
    );
    took(
        "a_queued_job_runs_the_live_release_after_a_deploy_and_after_a_rollback",
        t0,
    );
}

#[test]
fn a_zero_downtime_deploy_under_load_fails_no_request_on_separate_hosts() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    next_second();
    // The balancer is on lb1: runbook steers it there over SSH (vars.traffic).
    let load = crate::support::stack::Load::start(f.lb.port, 2);
    std::thread::sleep(Duration::from_millis(300));
    let out = f.run("zero-downtime-deploy", &["ref=v2"]);
    let t = load.finish();
    eprintln!(
        "zero-downtime deploy on separate hosts: {} requests through the balancer, {} failed; by release {:?}",
        t.total, t.failed, t.by_release
    );
    out.code(0);
    let v2 = f.current("web1");
    assert_ne!(v2, v1);
    assert_eq!(t.failed, 0, "failed requests: {:?}", t.by_status);
    assert!(
        t.total > 50,
        "too little load to prove anything: {}",
        t.total
    );
    assert!(
        t.by_release.contains_key(&v1) && t.by_release.contains_key(&v2),
        "{:?}",
        t.by_release
    );
    assert!(
        f.lb.traffic().contains("{ * stable; }"),
        "{}",
        f.lb.traffic()
    );
    all_on(&f, &v2);
    let job = f.queued_job("web2", "after-zero-downtime").unwrap();
    assert_eq!(job.release, v2);
    took(
        "a_zero_downtime_deploy_under_load_fails_no_request_on_separate_hosts",
        t0,
    );
}

/// A server another tool deployed (Deployer-style `releases/1`, `current -> releases/1`,
/// no runbook metadata): refused before anything changes, adopted, deployed over, and a
/// rollback returns to the adopted release. Before, the first deploy's cleanup deleted
/// the release that had been live.
#[test]
fn another_tools_layout_is_refused_adopted_and_kept_as_a_rollback_target() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    let foreign = "set -e; cd /var/www/app; mkdir -p releases/1; \
        git --git-dir=/srv/app.git archive v1 | tar -x -C releases/1; \
        [ -d shared/storage ] || cp -a releases/1/storage shared/storage; \
        rm -rf releases/1/storage; ln -s /var/www/app/shared/storage releases/1/storage; \
        rm -f releases/1/.env; ln -s /var/www/app/shared/.env releases/1/.env; \
        ln -sfn releases/1 current";
    for h in &f.hosts {
        let out = h.host.exec(&["sh", "-c", foreign], true);
        assert!(out.status.success(), "{}: {out:?}", h.host.name);
    }
    let out = f.host("web1").host.exec(
        &[
            "sh",
            "-c",
            "cd /var/www/app/current && php artisan migrate --force",
        ],
        true,
    );
    assert!(out.status.success(), "{out:?}");
    all_on(&f, "1");

    let out = f.run("deploy", &["ref=v2"]);
    out.code(1)
        .stderr_has("runbook adopt -e ENV")
        .stderr_has("releases 1 were not made by runbook");
    all_on(&f, "1");
    assert!(
        !f.path("web1", "/var/www/app/.runbook/lock").exists()
            && std::fs::read_dir(f.path("web1", "/var/www/app/releases"))
                .unwrap()
                .count()
                == 1,
        "the refused deploy changed something"
    );

    f.project()
        .args(&["adopt", "-e", "prod", "--yes"])
        .run()
        .code(0)
        .stderr_has("adopted 1");
    f.run("deploy", &["ref=v2", "-q"]).code(0);
    let v2 = f.current("web1");
    assert_ne!(v2, "1");
    all_on(&f, &v2);
    for h in &f.hosts {
        assert!(
            h.host.path("/var/www/app/releases/1").is_dir(),
            "{}",
            h.host.name
        );
    }
    next_second();
    f.run("rollback", &["migrations=keep", "-q"]).code(0);
    all_on(&f, "1");
    took(
        "another_tools_layout_is_refused_adopted_and_kept_as_a_rollback_target",
        t0,
    );
}

/// SIGKILL of the runner at a random moment of a rolling deploy (no failure path, no
/// cleanup): `runbook recover` reads what the dead run left from the hosts alone and
/// brings every host to one whole release, maintenance off, no lock or lock temporary;
/// the next deploy then needs no manual step.
#[test]
fn after_a_sigkill_at_any_moment_recover_brings_the_fleet_back() {
    sigkill_trials(
        "deploy",
        "after_a_sigkill_at_any_moment_recover_brings_the_fleet_back",
        20,
    );
}

/// The same for the zero-downtime (blue-green) deploy, whose switch also moves the
/// balancer: after each trial the balancer serves the release every host has.
#[test]
fn after_a_sigkill_of_a_zero_downtime_deploy_recover_brings_the_fleet_back() {
    sigkill_trials(
        "zero-downtime-deploy",
        "after_a_sigkill_of_a_zero_downtime_deploy_recover_brings_the_fleet_back",
        10,
    );
}

/// `FAULT_TRIALS` (else `default`) SIGKILLs of `script` at random moments (`FAULT_SEED`),
/// each followed on alternate trials by `runbook recover` or simply the next deploy.
#[expect(
    clippy::too_many_lines,
    reason = "one scenario end to end on one fleet, read top to bottom"
)]
fn sigkill_trials(script: &str, test: &str, default: usize) {
    use std::io::Read;
    use std::process::Stdio;
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    let n = crate::faults::trials(default);
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let mut rng = crate::faults::Lcg(seed);
    let project = f.project();
    project
        .command()
        .args(["run", script, "-e", "prod", "ref=v1", "-q"])
        .status()
        .unwrap();
    let took_ms = {
        next_second();
        let t = Instant::now();
        let ok = project
            .command()
            .args(["run", script, "-e", "prod", "ref=v2", "-q"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "the {script} before the trials failed");
        u64::try_from(t.elapsed().as_millis()).expect("a trial's milliseconds fit in u64")
    };
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for trial in 0..n {
        next_second();
        let r = if trial % 2 == 0 { "ref=v1" } else { "ref=v2" };
        let after = rng.next(took_ms);
        let mut child = project
            .command()
            .args(["run", script, "-e", "prod", r])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(after));
        let _ = child.kill();
        let _ = child.wait();
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        assert!(
            !err.contains("lock is held"),
            "trial {trial}: the {script} was refused by a lock left from before: {err}"
        );
        // No pause: the killed runner's ssh masters outlive it and finish its last remote
        // command; recovery (here or in the next deploy) waits for it.
        let locked = f.path("web1", "/var/www/app/.runbook/lock").exists();
        let (word, said) = if locked && trial % 2 == 1 {
            // The dead run's lock is not waited out: the next deploy recovers first, as
            // `runbook recover` would, then deploys.
            next_second();
            let again = project.run_with(&["run", script, "-e", "prod", r]);
            again.stderr_has("was left by a run that is gone: recovering first");
            if again.code == 0 {
                ("recovered by the next deploy", again.stderr.clone())
            } else {
                // Its own failure path leaves one whole release; nothing may be left.
                project
                    .run_with(&["recover", "-e", "prod", "--yes"])
                    .code(0);
                (
                    "recovered by the next deploy, which then failed",
                    again.stderr.clone(),
                )
            }
        } else {
            let rec = project.run_with(&["recover", "-e", "prod", "--yes"]);
            rec.code(0);
            if rec.stderr.contains("died without cleaning up") {
                ("recovered", rec.stderr.clone())
            } else {
                ("nothing left", rec.stderr.clone())
            }
        };
        *outcomes.entry(word.to_owned()).or_default() += 1;
        let live = f.current("web1");
        let whole = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| all_on(&f, &live)));
        assert!(
            whole.is_ok(),
            "trial {trial} (SIGKILL after {after} ms of {script}): not one release everywhere\nkilled run:\n{err}\nthen:\n{said}"
        );
        for h in &f.hosts {
            let left = lock_leftovers(h);
            assert!(
                left.is_empty(),
                "trial {trial} (SIGKILL after {after} ms): {} still has {left:?}\n{said}",
                h.host.name,
            );
            assert!(
                h.host
                    .path(&format!("/var/www/app/.runbook/releases/{live}.json"))
                    .exists(),
                "trial {trial}: {} serves an incomplete release {live}",
                h.host.name
            );
        }
    }
    // And the next deploy simply works.
    next_second();
    project
        .run_with(&["run", script, "-e", "prod", "ref=v2", "-q"])
        .code(0);
    let audit = std::fs::read_to_string(project.path().join("audit.jsonl")).unwrap_or_default();
    let recovered = audit.matches("\"result\":\"recovered\"").count();
    assert_eq!(recovered, outcomes.get("recovered").copied().unwrap_or(0));
    // A deploy that recovered first says so in its own record.
    let by_deploy = outcomes
        .iter()
        .filter(|(k, _)| k.starts_with("recovered by the next deploy"))
        .map(|(_, n)| n)
        .sum::<usize>();
    assert_eq!(
        audit.matches("\"recovered\":true").count(),
        by_deploy,
        "{audit}"
    );
    eprintln!(
        "sigkill of {script}: {n} trials (seed {seed}, deploy {took_ms} ms): {outcomes:?}; every host on one complete release, maintenance off, no lock left"
    );
    took(test, t0);
}

/// SIGTERM, SIGINT or SIGHUP (a dropped terminal or bastion) at a random moment of a
/// rolling deploy on separate hosts sharing one database: after each trial every host
/// serves one complete release, no web host answers 503, no lock is left, the audit says
/// `aborted` (or `success` when the signal came after the end), and no command of the
/// run is still running on any host (found by the run id every command carries).
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario end to end on one fleet, read top to bottom"
)]
fn signals_at_random_points_of_a_deploy_leave_every_host_on_one_release() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    let n = crate::faults::trials(20);
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let mut rng = crate::faults::Lcg(seed);
    let project = f.project();
    project
        .run_with(&["run", "deploy", "-e", "prod", "ref=v1", "-q"])
        .code(0);
    let took_ms = {
        next_second();
        let t = Instant::now();
        project
            .run_with(&["run", "deploy", "-e", "prod", "ref=v2", "-q"])
            .code(0);
        u64::try_from(t.elapsed().as_millis()).expect("a trial's milliseconds fit in u64")
    };
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for trial in 0..n {
        next_second();
        let signal = ["TERM", "INT", "HUP"][trial % 3];
        let after = rng.next(took_ms);
        let records = || {
            std::fs::read_to_string(project.path().join("audit.jsonl"))
                .unwrap_or_default()
                .lines()
                .count()
        };
        let before = records();
        let r = if trial % 2 == 0 { "ref=v1" } else { "ref=v2" };
        let mut child = project
            .command()
            .args(["run", "deploy", "-e", "prod", r])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(after));
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_mins(1);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "trial {trial}: runbook did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        let what = format!("trial {trial} (SIG{signal} after {after} ms)");
        let live = f.current("web1");
        let whole = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| all_on(&f, &live)));
        assert!(whole.is_ok(), "{what}: not one release everywhere\n{err}");
        for h in &f.hosts {
            assert!(
                h.host
                    .path(&format!("/var/www/app/.runbook/releases/{live}.json"))
                    .exists()
                    && !h
                        .host
                        .path(&format!("/var/www/app/.runbook/preparing/{live}"))
                        .exists(),
                "{what}: {} serves an incomplete release {live}\n{err}",
                h.host.name
            );
        }
        let audit = std::fs::read_to_string(project.path().join("audit.jsonl")).unwrap_or_default();
        let last: serde_json::Value = audit
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        let mut result = last["result"].as_str().unwrap_or("?").to_owned();
        match status.code() {
            Some(130) => assert_eq!(result, "aborted", "{what}: {last}"),
            Some(0) => assert_eq!(result, "success", "{what}: {last}"),
            // Before runbook installs its handlers (while it reads the project and
            // compiles the script) a signal ends it as it would any program: it had
            // changed nothing yet (checked above) and wrote no record.
            None if records() == before => result = "ended before it began".to_owned(),
            other => panic!("{what}: exit {other:?}\n{err}"),
        }
        *outcomes.entry(result.clone()).or_default() += 1;
        // No command of the run outlives it, on any host.
        let run = if result == "ended before it began" {
            String::new()
        } else {
            last["run"].as_str().unwrap_or_default().to_owned()
        };
        let tag = format!("RUNBOOK_RUN={run}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<String> = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("environ"))
                        .is_ok_and(|b| b.split(|c| *c == 0).any(|v| v == tag.as_bytes()))
                })
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .collect();
            if left.is_empty() || run.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: commands of the run left running: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "signals: {n} trials (seed {seed}, deploy {took_ms} ms): {outcomes:?}; every host on one complete release, no 503, no lock, no command of the run left"
    );
    took(
        "signals_at_random_points_of_a_deploy_leave_every_host_on_one_release",
        t0,
    );
}

/// A runner SIGKILLed while its command runs on the hosts: its ssh masters outlive it and
/// finish that command. `runbook recover` waits for it before it judges or changes
/// anything (so nothing the dead run sent lands after the recovery); one that runs past
/// `--wait` is refused with where it runs and how to end it, and `--kill` ends it.
#[test]
fn recover_waits_for_the_dead_runs_last_commands_or_ends_them_when_told() {
    use std::process::Stdio;
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    let script = |secs: u32, file: &str| {
        format!(
            r#"lock::acquire(hosts("web"));
ssh::run(hosts("web"), ["sh", "-c", "touch /var/www/app/started-{file}; sleep {secs}; echo late >> /var/www/app/{file}"]);
"#
        )
    };
    let project = f
        .project()
        .file("scripts/slow.rhai", &script(3, "late1"))
        .file("scripts/stuck.rhai", &script(41, "late2"));
    let killed_while_running = |name: &str, file: &str| {
        let mut child = project
            .command()
            .args(["run", name, "-e", "prod", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = |h: &str| f.path(h, &format!("/var/www/app/started-{file}")).exists();
        for _ in 0..200 {
            if started("web1") && started("web2") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            started("web1") && started("web2"),
            "{name} never started its command"
        );
        let _ = child.kill();
        let _ = child.wait();
    };

    killed_while_running("slow", "late1");
    let rec = project.run_with(&["recover", "-e", "prod"]);
    rec.code(0)
        .stderr_has("died without cleaning up")
        .stderr_has("waited");
    for h in ["web1", "web2"] {
        assert!(
            f.path(h, "/var/www/app/late1").exists(),
            "{h}: the dead run's command had not ended when recovery returned:\n{}",
            rec.stderr
        );
        assert!(
            !f.path(h, "/var/www/app/.runbook/lock").exists(),
            "{h}: lock left"
        );
    }

    killed_while_running("stuck", "late2");
    let refused = project.run_with(&["recover", "-e", "prod", "--wait", "1s"]);
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    refused
        .stderr_has("still running after 1s")
        .stderr_has("late2")
        .stderr_has("runbook recover -e prod --kill");
    assert!(
        f.path("web1", "/var/www/app/.runbook/lock").exists(),
        "a refused recovery removed the lock"
    );
    eprintln!(
        "recover after a SIGKILL mid-command:\n{}\nwith --wait 1s:\n{}",
        rec.stderr, refused.stderr
    );
    let ended = project.run_with(&["recover", "-e", "prod", "--wait", "1s", "--kill"]);
    ended.code(0).stderr_has("ended the dead run's command");
    let still: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("late2") && c.contains("sleep 41"))
        .collect();
    assert!(
        still.is_empty(),
        "the dead run's command outlived --kill: {still:?}"
    );
    for h in ["web1", "web2"] {
        assert!(
            !f.path(h, "/var/www/app/late2").exists(),
            "{h}: the killed command wrote"
        );
        assert!(
            !f.path(h, "/var/www/app/.runbook/lock").exists(),
            "{h}: lock left"
        );
    }
    took(
        "recover_waits_for_the_dead_runs_last_commands_or_ends_them_when_told",
        t0,
    );
}

/// A fleet that drifted (one host switched back by hand) is named host by host before a
/// deploy changes anything, with what to run; the deploy then brings every host to one
/// release.
#[test]
fn a_deploy_onto_a_drifted_fleet_says_which_host_serves_what_first() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    let project = f.project();
    project
        .run_with(&["run", "deploy", "-e", "prod", "ref=v1", "-q"])
        .code(0);
    let r1 = f.current("web1");
    next_second();
    project
        .run_with(&["run", "deploy", "-e", "prod", "ref=v2", "-q"])
        .code(0);
    let r2 = f.current("web1");
    // web2 switched back by hand, as someone might during an incident.
    let link = f.path("web2", "/var/www/app/current");
    let target = std::fs::read_link(&link).unwrap();
    let back = target.with_file_name(&r1);
    let tmp = f.path("web2", "/var/www/app/current.tmp");
    std::os::unix::fs::symlink(&back, &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    assert_eq!(f.current("web2"), r1);
    next_second();
    let out = project.run_with(&["run", "deploy", "-e", "prod", "ref=v1"]);
    out.code(0).stderr_has(&format!(
        "the hosts do not serve one release before this change: web1 {r2}, web2 {r1}, worker1 {r2}"
    ))
    .stderr_has("`runbook status -e prod` shows the fleet");
    let drift = out.stderr.find("do not serve one release").unwrap();
    let lock = out.stderr.find("▶ lock").unwrap_or(usize::MAX);
    assert!(
        drift < lock,
        "the sentence came after the deploy began changing things:\n{}",
        out.stderr
    );
    let live = f.current("web1");
    all_on(&f, &live);
    took(
        "a_deploy_onto_a_drifted_fleet_says_which_host_serves_what_first",
        t0,
    );
}

/// A run SIGKILLed while it had moved traffic to the staged release (a canary's share, a
/// blue-green switch cut between its two balancer steps): `runbook recover` puts every
/// request back on stable, and says so; a split another run set is left alone.
#[test]
fn recover_puts_traffic_a_dead_run_moved_back_on_stable() {
    use std::process::Stdio;
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    let project = f.project().file(
        "scripts/split.rhai",
        r#"import "traffic" as traffic;
lock::acquire(hosts("web"));
release::stage(hosts("web"), release::current(hosts("web")[0]));
traffic::set(40);
ssh::run(hosts("web"), ["sh", "-c", "touch /var/www/app/split-set; sleep 3"]);
"#,
    );
    project
        .run_with(&["run", "deploy", "-e", "prod", "ref=v1", "-q"])
        .code(0);
    let live = f.current("web1");
    let mut child = project
        .command()
        .args(["run", "split", "-e", "prod", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let set = || f.path("web1", "/var/www/app/split-set").exists();
    for _ in 0..300 {
        if set() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(set(), "the script never moved traffic");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        f.lb.traffic().contains("40% next"),
        "the dead run did not leave 40% on the staged pool: {}",
        f.lb.traffic()
    );
    let rec = project.run_with(&["recover", "-e", "prod"]);
    rec.code(0).stderr_has(
        "the balancer had 40% of requests on the staged release: every request is back on stable",
    );
    let now = f.lb.traffic();
    assert!(
        now.contains("{ * stable; }"),
        "traffic not back on stable: {now}"
    );
    assert!(!now.contains("next;"), "{now}");
    all_on(&f, &live);
    // A split this run did not leave is not touched by a later recovery.
    let rec = project.run_with(&["recover", "-e", "prod"]);
    rec.code(0);
    assert_eq!(f.lb.traffic(), now);
    took("recover_puts_traffic_a_dead_run_moved_back_on_stable", t0);
}

/// A web host that hangs mid-deploy (every process stopped) and comes back after the run
/// gave up on it: the run says what it left there and how to fix it; once the host is
/// back, the next deploy proceeds with no manual step and nothing of the dead run is left.
#[test]
fn a_host_that_hangs_mid_deploy_and_comes_back_needs_no_manual_step() {
    use std::io::Read;
    use std::process::Stdio;
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    let inventory = f.inventory().replace(
        "connect_timeout = \"5s\"\n",
        "connect_timeout = \"5s\"\nkeepalive = \"1s\"\n",
    );
    let project = f.project_with(&inventory);
    project
        .run_with(&["run", "deploy", "-e", "prod", "ref=v1", "-q"])
        .code(0);
    let v1 = f.current("web1");
    next_second();
    let mut child = project
        .command()
        .args(["run", "deploy", "-e", "prod", "ref=v2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Hung once web2 is in the middle of it: locked, in maintenance mode.
    let down = |h: &str| {
        f.path(h, "/var/www/app/shared/storage/framework/down")
            .exists()
    };
    for _ in 0..600 {
        if down("web2") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        down("web2"),
        "the deploy never put web2 into maintenance mode"
    );
    let web2 = &f.host("web2").host;
    web2.pause();
    let hung = Instant::now();
    let mut exited = None;
    for _ in 0..600 {
        if let Ok(Some(st)) = child.try_wait() {
            exited = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = exited else {
        web2.resume();
        let _ = child.kill();
        panic!("the deploy did not give up on a hung host within 60 s");
    };
    let gave_up = hung.elapsed();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    web2.resume();
    assert!(
        !status.success(),
        "the deploy succeeded with a hung host:\n{err}"
    );
    // Its last lines say what it left on the hung host, and the command that fixes it.
    let tail: String = err.lines().rev().take(12).collect::<Vec<_>>().join("\n");
    assert!(
        tail.contains("web2") && tail.contains("runbook recover -e prod"),
        "the failed run's last lines do not say what web2 was left with:\n{err}"
    );
    // The next deploy: no unlock, no recover by hand.
    next_second();
    let again = project.run_with(&["run", "deploy", "-e", "prod", "ref=v2"]);
    again.code(0);
    let live = f.current("web1");
    assert_ne!(live, v1, "the next deploy did not deploy");
    all_on(&f, &live);
    for h in &f.hosts {
        assert!(
            !down(&h.host.name),
            "{}: left in maintenance mode",
            h.host.name
        );
        let left = lock_leftovers(h);
        assert!(left.is_empty(), "{} still has {left:?}", h.host.name);
    }
    eprintln!(
        "hung host: the deploy gave up {gave_up:?} after web2 hung; its last lines:\n{tail}\nthe next deploy:\n{}",
        again.stderr
    );
    took(
        "a_host_that_hangs_mid_deploy_and_comes_back_needs_no_manual_step",
        t0,
    );
}

/// The load generator's clock (`Instant`) for the events' wall-clock timestamps (`ts`,
/// milliseconds): both are read once here, so an event's time is comparable with a `Hit`.
struct Clock {
    at: Instant,
    epoch_ms: i64,
}

impl Clock {
    fn now() -> Clock {
        let epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
        Clock {
            at: Instant::now(),
            epoch_ms,
        }
    }

    /// When event `e` happened, on the load generator's clock.
    #[track_caller]
    fn of(&self, e: &serde_json::Value) -> Instant {
        let ms = chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap_or(""))
            .unwrap_or_else(|err| panic!("an event without a readable ts ({err}): {e}"))
            .timestamp_millis();
        let d = Duration::from_millis((ms - self.epoch_ms).unsigned_abs());
        if ms >= self.epoch_ms {
            self.at + d
        } else {
            self.at.checked_sub(d).unwrap()
        }
    }
}

/// When each `php artisan VERB` of a `--json` run finished, on any host, in order: the
/// `command_finished` that follows its `command_started` on the same host.
fn artisan_finished(events: &[serde_json::Value], verb: &str, clock: &Clock) -> Vec<Instant> {
    let mut open: Vec<String> = Vec::new();
    let mut done = Vec::new();
    for e in events {
        let host = e["host"].as_str().unwrap_or("").to_owned();
        match e["event"].as_str() {
            Some("command_started") if e["argv"][1] == "artisan" && e["argv"][2] == verb => {
                open.push(host);
            }
            Some("command_finished") => {
                if let Some(i) = open.iter().position(|h| *h == host) {
                    open.remove(i);
                    done.push(clock.of(e));
                }
            }
            _ => {}
        }
    }
    done
}

/// How far a load generator's answer may lie outside the window the events show: the
/// request was answered before runbook saw its command finish (`down` took effect while
/// artisan was still exiting), or was in flight while `up` ran.
const MARGIN: Duration = Duration::from_millis(300);

#[test]
fn a_rolling_deploy_under_load_answers_503_only_inside_its_maintenance_window() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    f.run("deploy", &["ref=v1", "-q"]).code(0);
    let v1 = f.current("web1");
    next_second();
    let clock = Clock::now();
    let load = crate::support::stack::Load::start(f.lb.port, 2);
    std::thread::sleep(Duration::from_millis(300));
    let out = f.run("deploy", &["ref=v2", "--json"]);
    let t = load.finish();
    eprintln!(
        "rolling deploy on separate hosts: {} requests through the balancer; by status {:?}; by release {:?}",
        t.total, t.by_status, t.by_release
    );
    out.code(0);
    let v2 = f.current("web1");
    assert_ne!(v2, v1);
    all_on(&f, &v2);
    let events = out.events();
    let downs = artisan_finished(&events, "down", &clock);
    let ups = artisan_finished(&events, "up", &clock);
    let (Some(&on), Some(&off)) = (downs.iter().min(), ups.iter().max()) else {
        panic!(
            "no `artisan down` or `artisan up` in the events:\n{}",
            out.stdout
        )
    };
    assert!(on < off, "maintenance off before on");
    eprintln!(
        "maintenance window: {} ms ({} down, {} up)",
        (off - on).as_millis(),
        downs.len(),
        ups.len()
    );
    // Maintenance was seen, and every failed answer lies inside its window.
    assert!(
        t.by_status.get(&503).copied().unwrap_or(0) > 0,
        "no request saw maintenance mode: {:?}",
        t.by_status
    );
    let outside: Vec<String> = t
        .hits
        .iter()
        .filter(|h| h.status != 200 && (h.at + MARGIN < on || h.at > off + MARGIN))
        .map(|h| {
            let (when, ms) = if h.at < on {
                ("before maintenance on", (on - h.at).as_millis())
            } else {
                ("after maintenance off", (h.at - off).as_millis())
            };
            format!("{} {ms} ms {when}", h.status)
        })
        .collect();
    assert!(
        outside.is_empty(),
        "{} failed answers outside the maintenance window, e.g. {:?}",
        outside.len(),
        &outside[..outside.len().min(8)]
    );
    // Around the window the site served: the old release before it, the new one after.
    let served = |pick: &dyn Fn(&crate::support::stack::Hit) -> bool| -> Vec<Option<String>> {
        t.hits
            .iter()
            .filter(|h| pick(h))
            .map(|h| h.release.clone())
            .collect()
    };
    let before = served(&|h| h.at + MARGIN < on);
    let after = served(&|h| h.at > off + MARGIN);
    assert!(
        !before.is_empty() && before.iter().all(|r| r.as_deref() == Some(v1.as_str())),
        "before maintenance: {before:?}"
    );
    assert!(
        after.iter().all(|r| r.as_deref() == Some(v2.as_str())),
        "after maintenance: {after:?}"
    );
    let job = f.queued_job("web2", "after-rolling").unwrap();
    assert_eq!(
        (job.release.as_str(), job.code.as_str()),
        (v2.as_str(), "v2")
    );
    took(
        "a_rolling_deploy_under_load_answers_503_only_inside_its_maintenance_window",
        t0,
    );
}

/// Short canary windows (each step one measurement of 2 s, 50 probes a second of each
/// web host's `preview_url`), so that a canary test stays short.
const CANARY: &str = "canary = { window = \"2s\", checks = 1, rate = 50 }";

/// For a release failing 5%: up to two measurements of 2 s at the first gate, so that a
/// lucky first sample without a failure (0.95^100, about 0.6%) does not let it pass; the
/// gate stops at the first measurement with a failure, so the usual run is no longer.
const CANARY_FLAKY: &str = "canary = { window = \"4s\", checks = 2, rate = 50 }";

/// The step names a `--json` run finished with `result`.
fn steps(out: &crate::harness::Output, result: &str) -> Vec<String> {
    out.events()
        .iter()
        .filter(|e| e["event"] == "step_finished" && e["result"] == result)
        .map(|e| e["step"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_canary_under_load_that_passes_its_gates_is_promoted_on_every_host() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    let project = || f.project_with(&f.inventory_with(true, CANARY));
    project()
        .args(&["run", "deploy", "-e", "prod", "ref=v1", "-q"])
        .run()
        .code(0);
    let v1 = f.current("web1");
    next_second();
    let load = crate::support::stack::Load::start(f.lb.port, 2);
    std::thread::sleep(Duration::from_millis(300));
    let out = project()
        .args(&[
            "run",
            "canary",
            "-e",
            "prod",
            "ref=v2",
            "steps=10,50",
            "--json",
        ])
        .run();
    let t = load.finish();
    eprintln!(
        "canary on separate hosts: {} requests through the balancer; by status {:?}; by release {:?}",
        t.total, t.by_status, t.by_release
    );
    out.code(0);
    let v2 = f.current("web1");
    assert_ne!(v2, v1);
    let ok = steps(&out, "ok");
    for step in ["canary at 10%", "canary at 50%", "promote", "verify"] {
        assert!(ok.iter().any(|s| s == step), "no {step} in {ok:?}");
    }
    // The canary took a share of the real traffic, and no request failed.
    assert!(
        t.by_release.contains_key(&v1) && t.by_release.contains_key(&v2),
        "{:?}",
        t.by_release
    );
    assert_eq!(t.failed, 0, "failed requests: {:?}", t.by_status);
    assert!(
        f.lb.traffic().contains("{ * stable; }"),
        "{}",
        f.lb.traffic()
    );
    all_on(&f, &v2);
    let job = f.queued_job("web1", "after-canary").unwrap();
    assert_eq!(
        (job.release.as_str(), job.code.as_str(), job.host.as_str()),
        (v2.as_str(), "v2", "worker1")
    );
    took(
        "a_canary_under_load_that_passes_its_gates_is_promoted_on_every_host",
        t0,
    );
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario end to end on one fleet, read top to bottom"
)]
fn a_canary_under_load_failing_five_percent_is_stopped_at_the_first_gate() {
    let t0 = Instant::now();
    let Some(f) = ProdFleet::start() else { return };
    let project = || f.project_with(&f.inventory_with(true, CANARY_FLAKY));
    project()
        .args(&["run", "deploy", "-e", "prod", "ref=v1", "-q"])
        .run()
        .code(0);
    let stable = f.current("web1");
    next_second();
    let clock = Clock::now();
    let load = crate::support::stack::Load::start(f.lb.port, 2);
    std::thread::sleep(Duration::from_millis(300));
    let out = project()
        .args(&["run", "canary", "-e", "prod", "ref=v3-flaky", "--json"])
        .run();
    let ended = Instant::now();
    // A moment of load after runbook exited: it must all be on stable.
    std::thread::sleep(Duration::from_millis(500));
    let t = load.finish();
    eprintln!(
        "canary of a 5%-failing release on separate hosts: {} requests; by status {:?}; by release {:?}",
        t.total, t.by_status, t.by_release
    );
    for e in out.events() {
        if let Some(m) = e["message"]
            .as_str()
            .filter(|m| m.starts_with("canary 10%"))
        {
            eprintln!("{m}");
        }
    }
    out.code(1);
    let failed = steps(&out, "failed");
    assert_eq!(
        failed.first().map(String::as_str),
        Some("canary at 10%"),
        "{failed:?}"
    );
    let ok = steps(&out, "ok");
    assert!(
        !ok.iter()
            .chain(&failed)
            .any(|s| s.starts_with("canary at 25%") || s == "promote"),
        "went past the first gate: {ok:?}"
    );
    assert!(
        out.stderr.contains("canary gate failed at 10%")
            || out.stdout.contains("canary gate failed at 10%"),
        "{}",
        out.stderr
    );
    // When the gate put every request back on stable, before runbook exited.
    let events = out.events();
    let back = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("all traffic is back on the stable release"))
        })
        .map_or_else(
            || panic!("no 'all traffic is back on stable' event:\n{}", out.stdout),
            |e| clock.of(e),
        );
    assert!(
        back <= ended,
        "traffic went back to stable after runbook exited"
    );
    let canary = f.staged("web1");
    assert_ne!(canary, stable);
    let on_canary: Vec<&crate::support::stack::Hit> = t
        .hits
        .iter()
        .filter(|h| h.release.as_deref() == Some(canary.as_str()))
        .collect();
    assert!(
        !on_canary.is_empty(),
        "the canary took none of the load: nothing to prove ({:?})",
        t.by_release
    );
    let late: Vec<u128> = on_canary
        .iter()
        .filter(|h| h.at > back + MARGIN)
        .map(|h| (h.at - back).as_millis())
        .collect();
    assert!(
        late.is_empty(),
        "answers from the canary after traffic went back to stable (ms after): {late:?}"
    );
    let after_exit: Vec<&Option<String>> = t
        .hits
        .iter()
        .filter(|h| h.at > ended)
        .map(|h| &h.release)
        .collect();
    assert!(
        !after_exit.is_empty()
            && after_exit
                .iter()
                .all(|r| r.as_deref() == Some(stable.as_str())),
        "after runbook exited: {after_exit:?}"
    );
    // Nothing switched; the canary is marked bad on every web host.
    assert!(
        f.lb.traffic().contains("{ * stable; }"),
        "{}",
        f.lb.traffic()
    );
    all_on(&f, &stable);
    for h in ["web1", "web2"] {
        assert!(
            f.path(h, &format!("/var/www/app/.runbook/bad/{canary}"))
                .exists(),
            "the canary is not marked bad on {h}"
        );
    }
    took(
        "a_canary_under_load_failing_five_percent_is_stopped_at_the_first_gate",
        t0,
    );
}
