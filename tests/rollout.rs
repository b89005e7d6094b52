//! `runbook rollout status|pause|resume|promote|abort` steering the shipped canary from a
//! second process, on the production-shaped fleet (`support::prod`) with load from real
//! clients through the balancer. Weights are read from the balancer's traffic file and
//! from the releases that answer through it, never from exit codes alone.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::canary::{inventory, percent, stable};
use crate::harness::{Output, Test};
use crate::support::prod::ProdFleet;
use crate::support::stack::Load;

/// The canary's traffic percentage now, from the balancer's own config.
fn weight(f: &ProdFleet) -> u32 {
    percent(&f.lb.traffic())
}

/// Waits until the balancer's traffic file sends `p` % to the canary.
#[track_caller]
fn wait_for_weight(f: &ProdFleet, p: u32, runner: &mut Child, secs: u64) -> Instant {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if weight(f) == p {
            return Instant::now();
        }
        if let Ok(Some(status)) = runner.try_wait() {
            panic!("the canary ended ({status}) before reaching {p}%");
        }
        assert!(
            Instant::now() < until,
            "the canary did not reach {p}% in {secs} s (traffic file: {})",
            f.lb.traffic()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A canary runner in the background, killed (and reaped) if it is still running when
/// dropped: a test that fails midway leaves no `runbook run canary` behind.
struct Runner(Child);

impl Drop for Runner {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Runner {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Runner {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// The canary of `tag`, started in the background with `--json` output to files.
fn start_canary(project: &Test, tag: &str, steps: &str) -> Runner {
    let dir = project.path();
    let child = project
        .command()
        .args([
            "run",
            "canary",
            "-e",
            "prod",
            &format!("ref={tag}"),
            &format!("steps={steps}"),
            "--json",
        ])
        .stdout(std::fs::File::create(dir.join("runner.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("runner.err")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("runbook starts");
    Runner(child)
}

/// How the background canary ended: its exit code and output.
fn finish(project: &Test, mut runner: Runner, secs: u64) -> Output {
    let until = Instant::now() + Duration::from_secs(secs);
    let code = loop {
        if let Ok(Some(s)) = runner.try_wait() {
            break s.code().unwrap_or(-1);
        }
        if Instant::now() > until {
            let _ = runner.kill();
            let _ = runner.wait();
            panic!(
                "the canary did not end in {secs} s:\n{}",
                std::fs::read_to_string(project.path().join("runner.err")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        code,
        stdout: std::fs::read_to_string(project.path().join("runner.out")).unwrap_or_default(),
        stderr: std::fs::read_to_string(project.path().join("runner.err")).unwrap_or_default(),
    }
}

/// `runbook rollout status -e prod --json`.
fn status_json(project: &Test) -> (i32, serde_json::Value) {
    let out = project.run_with(&["rollout", "status", "-e", "prod", "--json"]);
    let json = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("rollout status --json: {e}\n{}\n{}", out.stdout, out.stderr));
    (out.code, json)
}

/// Every message of a `--json` run, in order.
fn messages(out: &Output) -> String {
    out.events()
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Releases that answered `n` requests through the balancer (a failed answer counts as
/// "STATUS release").
fn answers(f: &ProdFleet, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut by = std::collections::BTreeMap::new();
    for (k, v) in f.through_balancer(n) {
        let k = k.strip_prefix("200 ").map_or(k.clone(), str::to_owned);
        *by.entry(k).or_default() += v;
    }
    by
}

#[test]
fn a_pause_from_another_process_holds_the_weight_and_the_window_until_resume() {
    let Some(f) = ProdFleet::start() else { return };
    let inv = inventory(
        &f,
        "canary = { window = \"4s\", checks = 1, min_requests = 20 }",
    );
    let stable = stable(&f, &inv);
    let project = f.project_with(&inv);
    let load = Load::start(f.lb.port, 4);
    let mut runner = start_canary(&project, "v2", "10,25");
    wait_for_weight(&f, 10, &mut runner, 120);
    let asked = Instant::now();
    let out = project.run_with(&[
        "rollout",
        "pause",
        "-e",
        "prod",
        "--reason",
        "a closer look",
    ]);
    out.code(0);
    assert!(
        out.stderr.contains("the runner obeyed in"),
        "{}",
        out.stderr
    );
    eprintln!("pause obeyed {:?} after it was asked", asked.elapsed());
    let (code, before) = status_json(&project);
    assert_eq!(code, 0, "{before}");
    let s = &before["rollout"]["state"];
    assert_eq!(s["phase"], "paused", "{before}");
    assert_eq!(s["weight"], 10, "{before}");
    let left = before["window_left_s"].as_u64().expect("a window");
    let judged = s["judgements"].as_array().map_or(0, Vec::len);
    // Twice the window: a running clock would have judged and moved to 25% by now.
    std::thread::sleep(Duration::from_secs(8));
    let (_, after) = status_json(&project);
    assert_eq!(after["rollout"]["state"]["phase"], "paused", "{after}");
    assert_eq!(after["window_left_s"].as_u64(), Some(left), "{after}");
    assert_eq!(
        after["rollout"]["state"]["judgements"]
            .as_array()
            .map_or(0, Vec::len),
        judged,
        "a window was judged while paused: {after}"
    );
    assert_eq!(weight(&f), 10, "the weight moved while paused");
    // Each request without a cookie is a cohort of its own, 10% of them on the canary:
    // 200 requests all miss it once in 10^9 runs (60 did once in about 550).
    let seen = answers(&f, 200);
    assert!(
        seen.contains_key(&stable) && seen.len() == 2,
        "at 10% both releases answer: {seen:?}"
    );
    let human = project.run_with(&["rollout", "status", "-e", "prod"]);
    human.code(0);
    assert!(
        human.stdout.contains("PAUSED") && human.stdout.contains("10% of cohorts"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("pause by") && human.stdout.contains("a closer look"),
        "{}",
        human.stdout
    );
    let out = project.run_with(&["rollout", "resume", "-e", "prod"]);
    out.code(0);
    assert!(out.stderr.contains("resumed at 10%"), "{}", out.stderr);
    let run = finish(&project, runner, 180);
    let t = load.finish();
    eprintln!(
        "paused canary: {} requests, by release {:?}",
        t.total, t.by_release
    );
    assert_eq!(run.code, 0, "{}\n{}", messages(&run), run.stderr);
    let canary = f.current("web1");
    assert_ne!(canary, stable);
    assert_eq!(f.current("web2"), canary);
    // The pause and the resume, by whom and why, in the audit log.
    let audit = std::fs::read_to_string(project.path().join("audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| {
            r["script"]
                .as_str()
                .is_some_and(|s| s.starts_with("rollout "))
        })
        .collect();
    let scripts: Vec<&str> = lines.iter().filter_map(|r| r["script"].as_str()).collect();
    assert_eq!(scripts, ["rollout pause", "rollout resume"], "{audit}");
    assert_eq!(lines[0]["reason"], "a closer look");
    assert_eq!(lines[0]["result"], "success");
}

#[test]
fn an_abort_from_another_process_puts_all_traffic_on_stable_within_five_seconds() {
    let Some(f) = ProdFleet::start() else { return };
    let inv = inventory(
        &f,
        "canary = { window = \"60s\", checks = 1, min_requests = 20 }",
    );
    let stable = stable(&f, &inv);
    let project = f.project_with(&inv);
    let load = Load::start(f.lb.port, 4);
    let mut runner = start_canary(&project, "v2", "10,25");
    wait_for_weight(&f, 10, &mut runner, 120);
    std::thread::sleep(Duration::from_secs(2)); // the window runs
    let asked = Instant::now();
    let out = project.run_with(&["rollout", "abort", "-e", "prod", "--reason", "bad vibes"]);
    let file_at = loop {
        if weight(&f) == 0 {
            break asked.elapsed();
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the traffic file never went back to stable: {}",
            f.lb.traffic()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = finish(&project, runner, 60);
    // Load for a while after the 5 s: every answer then must come from stable.
    std::thread::sleep((asked + Duration::from_secs(7)).saturating_duration_since(Instant::now()));
    let t = load.finish();
    out.code(0);
    // The moment after which every answer through the balancer came from stable.
    let last_canary = t
        .hits
        .iter()
        .filter(|h| h.at > asked && h.release.as_deref().is_some_and(|r| r != stable))
        .map(|h| h.at)
        .max();
    let stable_at = last_canary.map_or(Duration::ZERO, |at| at - asked);
    eprintln!(
        "abort: the traffic file on stable {:.2} s after `rollout abort` began, the last canary answer {:.2} s after; {} requests {:?}",
        file_at.as_secs_f64(),
        stable_at.as_secs_f64(),
        t.total,
        t.by_release
    );
    assert!(
        t.hits
            .iter()
            .any(|h| h.at < asked && h.release.as_deref().is_some_and(|r| r != stable)),
        "the canary never took traffic before the abort: {:?}",
        t.by_release
    );
    assert!(
        file_at <= Duration::from_secs(5) && stable_at <= Duration::from_secs(5),
        "stable got all traffic only after {file_at:?} (file) / {stable_at:?} (answers)"
    );
    let after: Vec<&Option<String>> = t
        .hits
        .iter()
        .filter(|h| h.at > asked + Duration::from_secs(5))
        .map(|h| &h.release)
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|r| r.as_deref() == Some(stable.as_str())),
        "answers more than 5 s after the abort: {after:?}"
    );
    // The run failed, said who aborted it, marked the canary bad, left `current` alone.
    assert_eq!(run.code, 1, "{}", run.stderr);
    let all = messages(&run);
    assert!(
        all.contains("rollout aborted at 10% by") && all.contains("bad vibes"),
        "{all}\n{}",
        run.stderr
    );
    let canary = f.staged("web1");
    for h in ["web1", "web2"] {
        assert_eq!(f.current(h), stable, "{h}");
        assert!(
            f.path(h, &format!("/var/www/app/.runbook/bad/{canary}"))
                .exists(),
            "{canary} is not marked bad on {h}"
        );
    }
    let (code, s) = status_json(&project);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["running"], false, "{s}");
    assert_eq!(s["rollout"]["state"]["phase"], "aborted", "{s}");
}

/// A canary of v2 with `steps` whose runner is SIGKILLed once the window at `weight`
/// began (its state is on the hosts): the stable release, the inventory and the project.
fn killed_in_its_window(f: &ProdFleet, steps: &str, weight: u32) -> (String, String, Test) {
    let inv = inventory(
        f,
        "canary = { window = \"60s\", checks = 1, min_requests = 20 }",
    );
    let stable = stable(f, &inv);
    let project = f.project_with(&inv);
    let mut runner = start_canary(&project, "v2", steps);
    wait_for_weight(f, weight, &mut runner, 120);
    let until = Instant::now() + Duration::from_secs(20);
    while status_json(&project).1["window_left_s"].is_null() {
        assert!(Instant::now() < until, "no window began");
        std::thread::sleep(Duration::from_millis(200));
    }
    runner.kill().unwrap(); // SIGKILL, without a word
    let _ = runner.wait();
    (stable, inv, project)
}

#[test]
fn a_runner_killed_at_25_percent_is_shown_dead_and_rollout_abort_restores_stable() {
    let Some(f) = ProdFleet::start() else { return };
    let (stable, inv, project) = killed_in_its_window(&f, "25,50", 25);
    let canary = f.staged("web1");
    assert_eq!(weight(&f), 25, "traffic stays split when the runner dies");
    let (code, s) = status_json(&project);
    assert_eq!(code, 1, "a dead runner is exit 1: {s}");
    assert_eq!(s["rollout"]["state"]["weight"], 25, "{s}");
    assert_eq!(s["holder_alive"], false, "{s}");
    assert_eq!(s["rollout"]["locked"], true, "{s}");
    let human = project.run_with(&["rollout", "status", "-e", "prod"]);
    eprintln!(
        "rollout status of the dead runner:\n{}{}",
        human.stdout, human.stderr
    );
    assert_eq!(human.code, 1);
    assert!(
        human.stdout.contains("25% of cohorts") && human.stdout.contains("DEAD"),
        "{}",
        human.stdout
    );
    assert!(
        human.stderr.contains("runbook rollout abort -e prod"),
        "{}",
        human.stderr
    );
    // A pause has nobody to obey it.
    let out = project.run_with(&["rollout", "pause", "-e", "prod"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("is gone"), "{}", out.stderr);
    let slack = crate::receivers::Http::fixed(200, "ok");
    let out = f
        .project_with(&inv)
        .env("SLACK_WEBHOOK_URL", &slack.url("/services/T0/B0/rollout"))
        .run_with(&["rollout", "abort", "-e", "prod", "--reason", "runner died"]);
    eprintln!("rollout abort of the dead runner:\n{}", out.stderr);
    out.code(0);
    assert_eq!(weight(&f), 0, "{}", f.lb.traffic());
    let seen = answers(&f, 40);
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        [stable.as_str()],
        "{seen:?}"
    );
    for h in ["web1", "web2", "worker1"] {
        assert!(
            !f.path(h, "/var/www/app/.runbook/lock").exists(),
            "a lock is left on {h}:\n{}",
            out.stderr
        );
    }
    for h in ["web1", "web2"] {
        assert_eq!(f.current(h), stable, "{h}");
        assert!(
            f.path(h, &format!("/var/www/app/.runbook/bad/{canary}"))
                .exists(),
            "{canary} is not marked bad on {h}\n{}",
            out.stderr
        );
    }
    let got = slack.received();
    assert!(
        got.iter().any(|r| r.body.contains("runner died")),
        "no Slack message about the abort: {got:?}"
    );
    let (code, s) = status_json(&project);
    assert_eq!((code, &s["running"]), (0, &serde_json::json!(false)), "{s}");
    assert_eq!(s["rollout"]["state"]["phase"], "aborted", "{s}");
}

#[test]
fn a_promote_from_another_process_finishes_with_every_host_on_the_new_release() {
    let Some(f) = ProdFleet::start() else { return };
    let inv = inventory(
        &f,
        "canary = { window = \"60s\", checks = 1, min_requests = 20 }",
    );
    let stable = stable(&f, &inv);
    let project = f.project_with(&inv);
    let mut runner = start_canary(&project, "v2", "10,25,50");
    wait_for_weight(&f, 10, &mut runner, 120);
    let canary = f.staged("web1");
    let asked = Instant::now();
    let out = project.run_with(&["rollout", "promote", "-e", "prod", "--reason", "ship it"]);
    out.code(0);
    let run = finish(&project, runner, 120);
    let took = asked.elapsed();
    eprintln!(
        "promote: the canary finished {:.1} s after `rollout promote`",
        took.as_secs_f64()
    );
    assert_eq!(run.code, 0, "{}\n{}", messages(&run), run.stderr);
    // Three 60 s windows were left: the promotion did not wait for them.
    assert!(took < Duration::from_secs(50), "{took:?}");
    for h in ["web1", "web2", "worker1"] {
        assert_eq!(f.current(h), canary, "{h}");
    }
    assert_ne!(canary, stable);
    assert_eq!(weight(&f), 0, "{}", f.lb.traffic());
    let seen = answers(&f, 40);
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        [canary.as_str()],
        "{seen:?}"
    );
    let all = messages(&run);
    assert!(all.contains("rollout promoted at 10% by"), "{all}");
    let (code, s) = status_json(&project);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["rollout"]["state"]["phase"], "promoted", "{s}");
}

#[test]
fn a_runner_killed_at_the_first_step_is_finished_by_rollout_promote() {
    let Some(f) = ProdFleet::start() else { return };
    let (stable, _, project) = killed_in_its_window(&f, "10,50", 10);
    let canary = f.staged("web1");
    assert_ne!(canary, stable);
    let out = project.run_with(&[
        "rollout",
        "promote",
        "-e",
        "prod",
        "--reason",
        "it was fine",
    ]);
    out.code(0);
    for h in ["web1", "web2", "worker1"] {
        assert_eq!(f.current(h), canary, "{h}:\n{}", out.stderr);
        assert!(
            !f.path(h, "/var/www/app/.runbook/lock").exists(),
            "a lock is left on {h}:\n{}",
            out.stderr
        );
    }
    // 0% on `next` is all on `current`, which is the canary now.
    assert_eq!(weight(&f), 0, "{}", f.lb.traffic());
    let seen = answers(&f, 40);
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        [canary.as_str()],
        "{seen:?}"
    );
    let (code, s) = status_json(&project);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["rollout"]["state"]["phase"], "promoted", "{s}");
    let requests = s["rollout"]["state"]["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        requests
            .last()
            .is_some_and(|r| r["action"] == "promote" && r["reason"] == "it was fine"),
        "{s}"
    );
    // The promoted release is good: the recovery of the dead run's lock had marked it
    // bad as unverified; a promote is the decision that it is not.
    for h in ["web1", "web2", "worker1"] {
        assert!(
            !f.path(h, &format!("/var/www/app/.runbook/bad/{canary}"))
                .exists(),
            "{h}: the promoted release {canary} is still marked bad"
        );
    }
    project.run_with(&["status", "-e", "prod"]).code(0);
}
