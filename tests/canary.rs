//! The shipped canary on the production-shaped fleet (`support::prod`), judged on real
//! traffic: the balancer's access log (`vars.traffic.access_log`, read over SSH from the
//! byte where each step began), load from real HTTP clients through the balancer, and
//! sticky cohorts (the `runbook_cohort` cookie the balancer sets) with an allowlist.

#![expect(
    clippy::float_cmp,
    reason = "known answers: request counts and rates that are exact by construction"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::Output;
use crate::receivers::Http;
use crate::support::prod::ProdFleet;
use crate::support::prometheus::Observability;
use crate::support::stack::Load;

/// The inventory with `canary` (a line of `[env.prod.vars]`) and the balancer's access log.
pub(crate) fn inventory(f: &ProdFleet, canary: &str) -> String {
    let file = format!("file = \"{}\"", f.lb.traffic_file());
    let inv = f.inventory_with(true, canary);
    assert!(inv.contains(&file), "the fleet's inventory changed:\n{inv}");
    inv.replace(
        &file,
        &format!("{file}, access_log = \"{}\"", f.lb.access_log()),
    )
}

/// The stable release: v1 deployed, then a new second (so the canary gets a new name).
pub(crate) fn stable(f: &ProdFleet, inv: &str) -> String {
    f.project_with(inv)
        .args(&["run", "deploy", "-e", "prod", "ref=v1", "-q"])
        .run()
        .code(0);
    std::thread::sleep(Duration::from_millis(1100));
    f.current("web1")
}

/// The step names a `--json` run finished with `result`.
fn steps(out: &Output, result: &str) -> Vec<String> {
    out.events()
        .iter()
        .filter(|e| e["event"] == "step_finished" && e["result"] == result)
        .map(|e| e["step"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Every message of a `--json` run (logs, prints, errors), in order.
fn messages(out: &Output) -> Vec<String> {
    out.events()
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

/// The window reports the canary printed (`canary at N%, window …` and the judge's table).
fn reports(out: &Output) -> Vec<String> {
    messages(out)
        .into_iter()
        .filter(|m| m.starts_with("canary at ") && m.contains("pool "))
        .collect()
}

/// One pool's row of a report: (requests, success %, p95 s).
fn row(report: &str, pool: &str) -> Option<(u64, f64, f64)> {
    report.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&pool) {
            return None;
        }
        Some((
            f.get(1)?.parse().ok()?,
            f.get(2)?.trim_end_matches('%').parse().ok()?,
            f.get(3)?.trim_end_matches('s').parse().ok()?,
        ))
    })
}

/// The stopped-at-10% outcome every failing canary must have: the step failed, nothing
/// later ran, traffic on stable (and the load after runbook exited too), the release
/// marked bad on every web host, `current` untouched.
fn stopped_at_ten_percent(
    f: &ProdFleet,
    out: &Output,
    stable: &str,
    after_exit: &[Option<String>],
) {
    out.code(1);
    let failed = steps(out, "failed");
    assert_eq!(
        failed.first().map(String::as_str),
        Some("canary at 10%"),
        "{failed:?}"
    );
    let ok = steps(out, "ok");
    assert!(
        !ok.iter()
            .chain(&failed)
            .any(|s| s.starts_with("canary at 25%") || s == "promote"),
        "went past the first gate: {ok:?}"
    );
    assert!(
        f.lb.traffic().contains("{ * stable; }"),
        "{}",
        f.lb.traffic()
    );
    if !after_exit.is_empty() {
        assert!(
            after_exit.iter().all(|r| r.as_deref() == Some(stable)),
            "answers after runbook exited: {after_exit:?}"
        );
    }
    let canary = f.staged("web1");
    assert_ne!(canary, stable);
    for h in ["web1", "web2"] {
        assert_eq!(f.current(h), stable, "{h}");
        assert!(
            f.path(h, &format!("/var/www/app/.runbook/bad/{canary}"))
                .exists(),
            "the canary {canary} is not marked bad on {h}:\n{}\n{}",
            messages(out).join("\n"),
            out.stderr
        );
    }
}

/// Runs a canary of `tag` under load (4 client threads, no cookies: a new cohort per
/// request) and returns the run and the releases that answered after runbook exited.
fn under_load(f: &ProdFleet, inv: &str, tag: &str) -> (Output, Vec<Option<String>>) {
    let load = Load::start(f.lb.port, 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = f
        .project_with(inv)
        .args(&[
            "run",
            "canary",
            "-e",
            "prod",
            &format!("ref={tag}"),
            "--json",
        ])
        .run();
    let ended = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let t = load.finish();
    eprintln!(
        "canary of {tag}: {} requests through the balancer; by status {:?}; by release {:?}",
        t.total, t.by_status, t.by_release
    );
    for r in reports(&out) {
        eprintln!("{r}");
    }
    let after = t
        .hits
        .iter()
        .filter(|h| h.at > ended)
        .map(|h| h.release.clone())
        .collect();
    (out, after)
}

#[test]
fn a_release_failing_one_percent_is_stopped_at_ten_percent_judged_from_the_access_log() {
    let Some(f) = ProdFleet::start() else { return };
    let inv = inventory(
        &f,
        "canary = { window = \"6s\", checks = 2, min_requests = 40 }",
    );
    let stable = stable(&f, &inv);
    let (out, after) = under_load(&f, &inv, "v7-fail-1pct");
    stopped_at_ten_percent(&f, &out, &stable, &after);
    // Judged from the access log: the report's numbers are the canary's real requests.
    let all = messages(&out).join("\n");
    let report = reports(&out)
        .pop()
        .unwrap_or_else(|| panic!("no window report:\n{all}"));
    assert!(
        report.contains("the access log /run/lb/access.log on lb1"),
        "{report}"
    );
    let (requests, success, _) = row(&report, "canary").unwrap_or_else(|| panic!("{report}"));
    assert!(requests >= 40 && success < 99.5, "{report}");
    let (stable_requests, stable_success, _) =
        row(&report, "stable").unwrap_or_else(|| panic!("{report}"));
    assert!(
        stable_requests > requests && stable_success == 100.0,
        "{report}"
    );
    assert!(
        all.contains("canary gate failed at 10%: canary success") && all.contains("is below 99.5%"),
        "{all}"
    );
    // The balancer logged the canary's 500s that the judge counted.
    let logged = f.lb.access_lines();
    assert!(
        logged
            .iter()
            .any(|l| l.split(' ').nth(1) == Some("next") && l.split(' ').nth(2) == Some("500")),
        "no canary 500 in the access log ({} lines)",
        logged.len()
    );
    let back = all.find("all traffic is back on the stable release");
    assert!(back.is_some(), "{all}");
}

/// The same failing release judged from Prometheus: mtail tails the balancer's access
/// log (the seed's metrics), Prometheus scrapes it, and the canary's gate asks PromQL
/// (`vars.canary.queries`) — the real requests of the real clients, through the metrics
/// stack instead of the log read over SSH.
#[test]
fn a_release_failing_one_percent_is_stopped_at_ten_percent_judged_from_prometheus() {
    let Some(f) = ProdFleet::start() else { return };
    let Some(obs) = Observability::tailing(&f.lb.dir.join("access.log")) else {
        return;
    };
    // The next pool serves nothing but the canary (the staged checks go to each host's
    // preview_url, not through the balancer), so its counters since mtail started are
    // the canary's requests; production would use rate(…[window]) (README).
    let success = r#"100 * sum(askproai_http_requests_total{pool=\"next\",status!~\"5..\"}) / sum(askproai_http_requests_total{pool=\"next\"})"#;
    let requests = r#"sum(askproai_http_requests_total{pool=\"next\"})"#;
    let mut inv = f.inventory_with(
        true,
        &format!(
            "canary = {{ window = \"6s\", checks = 2, min_requests = 40, queries = {{ canary_success = \"{success}\", canary_requests = \"{requests}\" }} }}"
        ),
    );
    let _ = write!(inv, "\n{}", obs.inventory());
    let stable = stable(&f, &inv);
    let asked = obs.prometheus.queries_answered();
    let (out, after) = under_load(&f, &inv, "v7-fail-1pct");
    stopped_at_ten_percent(&f, &out, &stable, &after);
    let all = messages(&out).join("\n");
    assert!(
        all.contains("canary gate failed at 10%: canary success") && all.contains("(Prometheus:"),
        "not judged from Prometheus:\n{all}"
    );
    assert!(
        obs.prometheus.queries_answered() > asked,
        "the gate never asked Prometheus:\n{all}"
    );
    // What Prometheus had: the canary's 500s, counted by mtail from the balancer's log.
    let failed = obs
        .prometheus
        .wait_for_value(
            r#"sum(askproai_http_requests_total{pool="next",status=~"5.."})"#,
            10,
        )
        .unwrap_or_default();
    assert!(failed > 0.0, "Prometheus saw no canary 500: {failed}");
    eprintln!("judged from Prometheus: {failed} canary 500s counted by mtail");
}

#[test]
fn a_release_three_times_slower_fails_against_stable_while_its_success_rate_passes() {
    let Some(f) = ProdFleet::start() else { return };
    let inv = inventory(
        &f,
        "canary = { window = \"6s\", checks = 2, min_requests = 40 }",
    );
    let stable = stable(&f, &inv);
    let (out, after) = under_load(&f, &inv, "v8-slow");
    stopped_at_ten_percent(&f, &out, &stable, &after);
    let all = messages(&out).join("\n");
    let report = reports(&out)
        .pop()
        .unwrap_or_else(|| panic!("no window report:\n{all}"));
    let (_, success, p95) = row(&report, "canary").unwrap_or_else(|| panic!("{report}"));
    let (_, stable_success, stable_p95) =
        row(&report, "stable").unwrap_or_else(|| panic!("{report}"));
    eprintln!(
        "v8-slow: canary p95 {p95} s, stable p95 {stable_p95} s ({:.1}x)",
        p95 / stable_p95
    );
    // Every canary request succeeded and its latency is within the absolute gates: only
    // the comparison with stable fails it.
    assert_eq!((success, stable_success), (100.0, 100.0), "{report}");
    assert!(p95 > stable_p95 + 0.1 && p95 < 1.0, "{report}");
    assert!(report.contains("slower than stable's"), "{report}");
    assert!(
        !report.contains("is below") && !report.contains("is above"),
        "{report}"
    );
    assert!(
        all.contains("canary gate failed at 10%: canary requests are slower"),
        "{all}"
    );
}

#[test]
fn a_canary_step_with_no_traffic_is_held_inconclusive_then_failed_never_promoted() {
    let Some(f) = ProdFleet::start() else { return };
    let inv = inventory(&f, "canary = { window = \"2s\", checks = 1 }");
    let stable = stable(&f, &inv);
    let slack = Http::fixed(200, "ok");
    let out = f
        .project_with(&inv)
        .args(&["run", "canary", "-e", "prod", "ref=v2", "--json"])
        .env("SLACK_WEBHOOK_URL", &slack.url("/services/T0/B0/canary"))
        .run();
    stopped_at_ten_percent(&f, &out, &stable, &[]);
    let all = messages(&out).join("\n");
    // Three windows (the default max_inconclusive = 2 held, then failed), each reported.
    assert_eq!(reports(&out).len(), 3, "{all}");
    let holding: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("holding the step"))
        .collect();
    assert_eq!(holding.len(), 2, "{all}");
    assert!(
        holding[0].contains("the canary pool got no requests in the window (need 100)"),
        "{holding:?}"
    );
    assert!(
        all.contains("canary gate failed at 10%: inconclusive for 3 windows in a row, more than max_inconclusive = 2"),
        "{all}"
    );
    // The team was told why the step was held, each time, before the failure card.
    let got = slack.received();
    let warnings: Vec<&str> = got
        .iter()
        .map(|r| r.body.as_str())
        .filter(|b| b.contains("is inconclusive") && b.contains("no requests"))
        .collect();
    assert_eq!(warnings.len(), 2, "{got:?}");
    // Each says how to steer the held rollout, exactly.
    for w in &warnings {
        assert!(
            w.contains("runbook rollout promote -e prod")
                && w.contains("runbook rollout abort -e prod"),
            "{w}"
        );
    }
}

/// A browser-like client of the balancer: it keeps the `runbook_cohort` cookie the
/// balancer set, and sends `header` when given.
struct Client {
    cookie: Option<String>,
    header: Option<&'static str>,
}

impl Client {
    /// GET /api/health: (status, the release that answered).
    fn get(&mut self, port: u16) -> (u16, Option<String>) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return (0, None);
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut req = "GET /api/health HTTP/1.0\r\nHost: 127.0.0.1\r\n".to_owned();
        if let Some(c) = &self.cookie {
            let _ = writeln!(req, "Cookie: runbook_cohort={c}\r");
        }
        if let Some(h) = self.header {
            let _ = writeln!(req, "{h}\r");
        }
        req.push_str("\r\n");
        let _ = s.write_all(req.as_bytes());
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        for l in head.lines() {
            if let Some(v) = l.strip_prefix("Set-Cookie: runbook_cohort=") {
                let v = v.split(';').next().unwrap_or("").to_owned();
                assert!(
                    self.cookie.is_none(),
                    "the balancer set the cohort cookie again: {l}"
                );
                self.cookie = Some(v);
            }
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        (status, json["release"].as_str().map(str::to_owned))
    }
}

/// The canary percentage in a traffic file runbook wrote.
pub(crate) fn percent(traffic: &str) -> u32 {
    if traffic.contains("{ * stable; }") {
        return 0;
    }
    if traffic.contains("{ * next; }") {
        return 100;
    }
    traffic
        .split_once("% next;")
        .and_then(|(before, _)| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX)
}

/// What the clients saw at each percentage: client → percentage → releases.
type Seen = BTreeMap<usize, BTreeMap<u32, BTreeSet<String>>>;

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario end to end on one fleet, read top to bottom"
)]
fn a_cohort_stays_on_one_release_and_the_allowlist_sees_the_canary_from_the_first_step() {
    let Some(f) = ProdFleet::start() else { return };
    let address = "127.0.0.77";
    let inv = inventory(
        &f,
        &format!(
            "canary = {{ window = \"5s\", checks = 1, min_requests = 20, advisory = true, allow_header = \"X-Canary: staff\", allow_addresses = [\"{address}\"] }}"
        ),
    );
    let stable = stable(&f, &inv);
    // Advisory: this test is about who lands where, so a judgement on a busy machine
    // (a cold cache in a short window) must not end the rollout half-way.
    // 40 clients get their cookie now, before the rollout (everyone on stable).
    let mut clients: Vec<Client> = (0..40)
        .map(|_| Client {
            cookie: None,
            header: None,
        })
        .collect();
    for c in &mut clients {
        assert_eq!(c.get(f.lb.port), (200, Some(stable.clone())));
        assert!(
            c.cookie.is_some(),
            "the balancer set no runbook_cohort cookie"
        );
    }
    let staff = Arc::new(Mutex::new(BTreeMap::<u32, BTreeSet<String>>::new()));
    let by_address = Arc::new(Mutex::new(BTreeMap::<u32, BTreeSet<String>>::new()));
    let seen = Arc::new(Mutex::new(Seen::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let anonymous = Load::start(f.lb.port, 2); // volume for the judge
    let port = f.lb.port;
    let traffic = f.lb.traffic_file_here();
    // The promotion switches `current` (the stable pool) to the canary: answers from then
    // on say nothing about cohorts.
    let live_link = f.path("web1", "/var/www/app/current");
    let stable_name = stable.clone();
    let still_stable = move || {
        std::fs::read_link(&live_link)
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
            .is_some_and(|n| n == stable_name)
    };
    let watcher = {
        let (seen, staff, by_address, stop) = (
            seen.clone(),
            staff.clone(),
            by_address.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut staffer = Client {
                cookie: Some("staff-cohort".into()),
                header: Some("X-Canary: staff"),
            };
            let read = || std::fs::read_to_string(&traffic).map_or(u32::MAX, |t| percent(&t));
            let mut last = (read(), Instant::now());
            // 0 before the rollout, 1 while a step runs, 2 once it is back at 0 (promoted).
            let mut phase = 0;
            let until = Instant::now() + Duration::from_mins(2);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let p = read();
                if p != last.0 {
                    last = (p, Instant::now());
                }
                phase = match (phase, p) {
                    (0, 0) => 0,
                    (_, 0) => 2,
                    _ => 1,
                };
                if phase == 2 {
                    break;
                }
                // Skip the moment of a reload (the file is written before nginx reloads).
                if last.1.elapsed() < Duration::from_millis(700) || p == u32::MAX {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                // Each answer counts when the split did not change around it (a round of
                // 40 requests can outlast a window on a busy machine).
                let mut round = Vec::new();
                for (i, c) in clients.iter_mut().enumerate() {
                    if let (200, Some(r)) = c.get(port) {
                        if read() != p || !still_stable() {
                            break;
                        }
                        round.push((i, r));
                    }
                }
                if !round.is_empty() {
                    let mut s = seen.lock().unwrap();
                    for (i, r) in round {
                        s.entry(i).or_default().entry(p).or_default().insert(r);
                    }
                }
                let staff_saw = staffer.get(port).1;
                let curl = std::process::Command::new("curl")
                    .args([
                        "-s",
                        "--interface",
                        address,
                        &format!("http://127.0.0.1:{port}/api/health"),
                    ])
                    .output()
                    .ok()
                    .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                    .and_then(|j| j["release"].as_str().map(str::to_owned));
                if read() != p || !still_stable() {
                    continue; // the split changed during the round
                }
                if let Some(r) = staff_saw {
                    staff.lock().unwrap().entry(p).or_default().insert(r);
                }
                if let Some(r) = curl {
                    by_address.lock().unwrap().entry(p).or_default().insert(r);
                }
            }
        })
    };
    let out = f
        .project_with(&inv)
        .args(&[
            "run",
            "canary",
            "-e",
            "prod",
            "ref=v2",
            "steps=10,25,50",
            "--json",
        ])
        .run();
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("the watcher thread");
    let t = anonymous.finish();
    for r in reports(&out) {
        eprintln!("{r}");
    }
    let tail: Vec<String> = messages(&out).into_iter().rev().take(8).collect();
    assert_eq!(out.code, 0, "the rollout did not finish: {tail:#?}");
    let canary = f.current("web1");
    assert_ne!(canary, stable);
    let seen = seen.lock().unwrap().clone();
    // Within a step, each client saw one release; as the canary grew, a client only ever
    // moved from stable to the canary: the canary's cohorts at 10% are inside 25%'s,
    // which are inside 50%'s.
    // Only clients seen at every step can show the cohorts nest.
    let everywhere: BTreeSet<usize> = seen
        .iter()
        .filter(|(_, by)| [10, 25, 50].iter().all(|p| by.contains_key(p)))
        .map(|(i, _)| *i)
        .collect();
    let on_canary = |p: u32| -> BTreeSet<usize> {
        seen.iter()
            .filter(|(i, by)| {
                everywhere.contains(i) && by.get(&p).is_some_and(|r| r.contains(&canary))
            })
            .map(|(i, _)| *i)
            .collect()
    };
    for (i, by) in &seen {
        for (p, releases) in by {
            assert_eq!(releases.len(), 1, "client {i} saw {releases:?} at {p}%");
        }
    }
    let (c10, c25, c50) = (on_canary(10), on_canary(25), on_canary(50));
    eprintln!(
        "cohorts on the canary of the {} of 40 clients seen at every step: {} at 10%, {} at 25%, {} at 50%; {} anonymous requests {:?}",
        everywhere.len(),
        c10.len(),
        c25.len(),
        c50.len(),
        t.total,
        t.by_release
    );
    // Most clients were seen at every step (all of them on an idle machine).
    assert!(
        everywhere.len() >= 30,
        "only {} of 40 clients were seen at every step: {seen:?}",
        everywhere.len()
    );
    assert!(
        c10.is_subset(&c25) && c25.is_subset(&c50),
        "{c10:?} {c25:?} {c50:?}"
    );
    assert!(
        c50.len() < everywhere.len(),
        "every client on the canary at 50%: {c50:?}"
    );
    // With 40 clients, none at all in the 10% cohort (0.9^40, about 1.5%) proves nothing
    // about stickiness there; the 50% cohort (20 expected) always has some.
    assert!(!c50.is_empty(), "no client on the canary at 50%: {seen:?}");
    // The allowlisted clients saw the canary from the first step, and only the canary.
    for (who, by) in [("X-Canary: staff", &staff), (address, &by_address)] {
        let by = by.lock().unwrap().clone();
        for p in [10, 25, 50] {
            assert_eq!(
                by.get(&p).map(|r| r.iter().cloned().collect::<Vec<_>>()),
                Some(vec![canary.clone()]),
                "{who} at {p}%: {by:?}"
            );
        }
        assert!(
            by.get(&0).is_none_or(|r| !r.contains(&canary)),
            "{who} saw the canary before the rollout: {by:?}"
        );
    }
}

/// The traffic files `traffic::snippet` writes for `percent` and `allowlist` (a Rhai map),
/// printed by a script (nothing connects: the snippet only reads the inventory).
fn snippets(cases: &[(u32, &str)]) -> Vec<String> {
    let calls = cases.iter().fold(String::new(), |mut out, (p, allow)| {
        let _ = writeln!(out, "print(traffic::snippet({p}, {allow}) + \"=====\");");
        out
    });
    let out = crate::harness::Test::bare()
        .file(
            "runbook.toml",
            "[app]\nname = \"t\"\ndeploy_path = \"/var/www/app\"\n\n[env.prod]\nhosts = { lb1 = { address = \"127.0.0.1\" } }\n\n[env.prod.vars]\ntraffic = { host = \"lb1\", file = \"/etc/nginx/runbook/traffic.conf\" }\n",
        )
        .file("scripts/t.rhai", &format!("import \"traffic\" as traffic;\n{calls}"))
        .args(&["run", "t", "-e", "prod", "-q"])
        .run();
    out.code(0);
    out.stdout
        .split("=====")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_example_balancer_is_valid_nginx_with_every_traffic_file_runbook_writes() {
    let Some(()) = crate::support::available(
        "nginx",
        crate::support::missing(&[("/usr/sbin/nginx", "nginx")]).map_or(Ok(()), Err),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let lb = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/nginx/lb.conf"
    ))
    .unwrap()
    .replace(
        "/etc/nginx/runbook/traffic.conf",
        &format!("{d}/traffic.conf"),
    )
    .replace("/var/log/nginx/runbook.log", &format!("{d}/runbook.log"))
    .replace("listen 443 ssl http2;", "listen 127.0.0.1:9;");
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!("pid {d}/nginx.pid;\nevents {{}}\nhttp {{\n{lb}\n}}\n"),
    )
    .unwrap();
    let cases = [
        (0, "#{}"),
        (10, "#{}"),
        (25, "#{ allow_header: \"X-Canary: staff\" }"),
        (
            50,
            "#{ allow_addresses: [\"10.20.0.0/16\", \"192.0.2.7\"] }",
        ),
        (
            10,
            "#{ allow_header: \"X-Canary: staff\", allow_addresses: \"192.0.2.7\" }",
        ),
        (100, "#{ allow_header: \"X-Canary: staff\" }"),
    ];
    let files = snippets(&cases);
    assert_eq!(files.len(), cases.len(), "{files:?}");
    for (file, case) in files.iter().zip(&cases) {
        std::fs::write(dir.path().join("traffic.conf"), file).unwrap();
        let t = std::process::Command::new("/usr/sbin/nginx")
            .arg("-t")
            .arg("-q")
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .output()
            .unwrap();
        assert!(
            t.status.success(),
            "nginx -t refused lb.conf with the traffic file of {case:?}:\n{file}\n{}",
            String::from_utf8_lossy(&t.stderr)
        );
    }
    // The allowlist only exists while a canary takes traffic.
    assert!(
        files[0].contains("{ * stable; }") && !files[0].contains("allow"),
        "{}",
        files[0]
    );
    assert!(
        files[2].contains("map $http_x_canary $runbook_allow_header { default 0; \"staff\" 1; }"),
        "{}",
        files[2]
    );
    assert!(
        files[3].contains("geo $runbook_allow_address { default 0; 10.20.0.0/16 1; 192.0.2.7 1; }"),
        "{}",
        files[3]
    );
}

/// Benchmark (not a test): one window of 100,000 access-log lines (both pools) read over
/// SSH from the balancer's host with `traffic::read_log` and judged by `canary::judge`,
/// timed inside the script (so runbook's start and the SSH connection are not counted;
/// the connection is opened by `log_position` before the first timed read).
/// `cargo test --test integration bench_judging -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: cargo test --test integration bench_judging -- --ignored --nocapture"]
fn bench_judging_a_window_of_100k_access_log_lines_read_over_ssh() {
    let Some(f) = ProdFleet::start() else { return };
    let mut log = String::with_capacity(3_000_000);
    for i in 0..100_000u32 {
        let pool = if i % 10 == 0 { "next" } else { "stable" };
        let status = if i % 997 == 0 { 502 } else { 200 };
        let _ = writeln!(
            log,
            "1767225600.{:03} {pool} {status} 0.{:03}",
            i % 1000,
            20 + i % 61
        );
    }
    std::fs::write(f.lb.dir.join("access.log"), &log).unwrap();
    let script = "import \"traffic\" as traffic;\n\
        let end = traffic::log_position();\n\
        let from = #{ offset: 0, inode: end.inode };\n\
        for i in 0..4 {\n\
            let t = now_ms();\n\
            let got = traffic::read_log(from);\n\
            let read = now_ms() - t;\n\
            let v = canary::judge(got.text, #{});\n\
            print(`run ${i}: read ${read} ms, read + judge ${now_ms() - t} ms, ${v.lines.judged} lines, ${v.outcome}`);\n\
        }\n\
        let t = now_ms();\n\
        let raw = ssh::run(host(context().env.vars.traffic.host), [\"cat\", context().env.vars.traffic.access_log], #{ quiet: true });\n\
        print(`for comparison, a plain cat over ssh: ${now_ms() - t} ms, ${raw.stdout.len()} characters`);\n";
    let out = f
        .project_with(&inventory(&f, ""))
        .file("scripts/bench.rhai", script)
        .args(&["run", "bench", "-e", "prod", "-q"])
        .run();
    out.code(0);
    eprintln!(
        "100,000 access-log lines ({} bytes) over SSH:\n{}",
        log.len(),
        out.stdout
    );
}

#[test]
fn the_access_log_is_read_from_where_the_step_began_and_again_from_the_start_after_a_rotation() {
    let Some(f) = ProdFleet::start() else { return };
    let log = f.lb.dir.join("access.log");
    let line = |i: u32| format!("1767225600.{i:03} next 200 0.010\n");
    std::fs::write(&log, (0..3).map(line).collect::<String>()).unwrap();
    let script = "import \"traffic\" as traffic;\n\
        let got = if \"offset\" in args {\n\
            traffic::read_log(#{ offset: parse_int(args.offset), inode: args.inode })\n\
        } else {\n\
            #{ text: \"\", position: traffic::log_position(), rotated: false }\n\
        };\n\
        print(`${got.position.offset} ${got.position.inode} ${got.rotated}`);\n\
        print(got.text);\n";
    let project = f
        .project_with(&inventory(&f, ""))
        .file("scripts/read.rhai", script);
    // (offset, inode, rotated, text) after reading from `from`, or the position now.
    let read = |from: Option<&(u64, String)>| -> (u64, String, bool, String) {
        let mut args = vec![
            "run".to_owned(),
            "read".into(),
            "-e".into(),
            "prod".into(),
            "-q".into(),
        ];
        if let Some((offset, inode)) = from {
            args.push(format!("offset={offset}"));
            args.push(format!("inode={inode}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = project.run_with(&args);
        out.code(0);
        let (head, text) = out.stdout.split_once('\n').unwrap_or((&out.stdout, ""));
        let h: Vec<&str> = head.split(' ').collect();
        assert_eq!(h.len(), 3, "{}", out.stdout);
        (
            h[0].parse().unwrap(),
            h[1].to_owned(),
            h[2] == "true",
            text.trim_end().to_owned(),
        )
    };
    let (size, inode, _, _) = read(None);
    assert_eq!(size, std::fs::metadata(&log).unwrap().len());
    // Two lines appended since the step began: exactly those are read.
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(format!("{}{}", line(3), line(4)).as_bytes())
        .unwrap();
    let (offset, same, rotated, text) = read(Some(&(size, inode.clone())));
    assert_eq!((same.as_str(), rotated), (inode.as_str(), false));
    assert_eq!(text, format!("{}{}", line(3), line(4)).trim_end());
    assert_eq!(offset, std::fs::metadata(&log).unwrap().len());
    // Nothing new: nothing read.
    let (_, _, _, text) = read(Some(&(offset, inode.clone())));
    assert_eq!(text, "");
    // Rotated (renamed, a new file): the whole new file, flagged.
    std::fs::rename(&log, f.lb.dir.join("access.log.1")).unwrap();
    std::fs::write(&log, line(5)).unwrap();
    let (after, new_inode, rotated, text) = read(Some(&(offset, inode.clone())));
    assert!(rotated && new_inode != inode, "{new_inode} {inode}");
    assert_eq!(
        (after, text),
        (line(5).len() as u64, line(5).trim_end().to_owned())
    );
    // Truncated in place (copytruncate) after the last read had seen it bigger: smaller
    // than the offset, read from the start.
    std::fs::write(&log, line(6)).unwrap();
    let (_, _, rotated, text) = read(Some(&(after + 100, new_inode)));
    assert!(rotated);
    assert_eq!(text, line(6).trim_end());
}
