//! Health checks against real local servers: healthy, slow, failing, closing, untrusted,
//! refused — each with a report an on-call engineer can act on.

use std::time::Duration;

use crate::harness::Test;
use crate::receivers::{self, Http};

fn inventory(url: &str, health: &[&str]) -> String {
    let list: Vec<String> = health.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "[app]\nname = \"t\"\ndeploy_path = \"d\"\n[env.dev]\ntransport = \"local\"\nurl = \"{url}\"\nhealth = [{}]\nhosts = {{ a = \"localhost\" }}\n",
        list.join(", ")
    )
}

/// Runs `check` on `url` with `opts` (Rhai map text) and returns the report.
fn check(url: &str, opts: &str) -> serde_json::Value {
    let out = Test::bare()
        .file("runbook.toml", &inventory("http://127.0.0.1:1", &[]))
        .file(
            "scripts/c.rhai",
            &format!("print(health::check(\"{url}\", {opts}).to_json());"),
        )
        .args(&["run", "c", "-e", "dev", "-q"])
        .run();
    out.code(0);
    serde_json::from_str(out.stdout.lines().last().unwrap_or("{}")).unwrap()
}

#[test]
fn a_healthy_endpoint_reports_status_latency_json_and_address() {
    let s = Http::fixed(200, r#"{"status":"ok","release":"r7"}"#);
    let r = check(
        &s.url("/api/health"),
        r#"#{ json: #{ status: "ok", release: "r7" } }"#,
    );
    assert_eq!(r["ok"], true);
    assert_eq!(r["status"], 200);
    assert_eq!(r["json"]["release"], "r7");
    assert_eq!(r["address"], format!("127.0.0.1:{}", s.port));
    assert_eq!(r["attempts"], 1);
}

#[test]
fn the_wrong_release_is_a_failure_that_says_which() {
    let s = Http::fixed(200, r#"{"status":"ok","release":"old"}"#);
    let r = check(&s.url("/"), r#"#{ json: #{ release: "new" } }"#);
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"], "release is \"old\", expected \"new\"");
}

#[test]
fn a_500_carries_the_start_of_the_body() {
    let s = Http::fixed(500, "SQLSTATE[HY000] [2002] Connection refused");
    let r = check(&s.url("/"), "#{}");
    assert_eq!(
        (r["ok"].as_bool(), r["status"].as_i64()),
        (Some(false), Some(500))
    );
    assert_eq!(r["error"], "status 500, expected 2xx");
    assert!(r["body"].as_str().unwrap().contains("SQLSTATE"));
}

#[test]
fn retries_wait_for_a_recovering_service() {
    let s = Http::start(Box::new(|n, _| {
        (if n < 2 { 503 } else { 200 }, "{}".into(), Duration::ZERO)
    }));
    let r = check(&s.url("/"), r#"#{ retries: 5, backoff: "50ms" }"#);
    assert_eq!(r["ok"], true);
    assert_eq!(r["attempts"], 3);
}

#[test]
fn consecutive_successes_are_required_when_asked() {
    let s = Http::start(Box::new(|n, _| {
        (if n == 1 { 500 } else { 200 }, "{}".into(), Duration::ZERO)
    }));
    let r = check(
        &s.url("/"),
        r#"#{ consecutive: 2, retries: 3, backoff: "20ms" }"#,
    );
    assert_eq!(r["ok"], true);
    assert_eq!(r["attempts"], 4, "ok, fail, ok, ok");
}

#[test]
fn a_slow_endpoint_times_out_and_a_latency_budget_is_enforced() {
    let s = Http::start(Box::new(|_, _| {
        (200, "{}".into(), Duration::from_millis(1500))
    }));
    let r = check(&s.url("/"), r#"#{ timeout: "300ms" }"#);
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"], "no answer within 300 ms");
    let r = check(&s.url("/"), r#"#{ timeout: "5s", max_latency: "1s" }"#);
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("over the 1000 ms budget"),
        "{r}"
    );
}

#[test]
fn a_refused_a_closed_and_an_untrusted_connection_each_say_so() {
    let r = check(
        &format!("http://127.0.0.1:{}/", receivers::closed_port()),
        "#{}",
    );
    assert!(
        r["error"].as_str().unwrap().starts_with("cannot connect"),
        "{r}"
    );
    let r = check(
        &format!("http://127.0.0.1:{}/", receivers::closing_server()),
        "#{}",
    );
    assert_eq!(r["ok"], false);
    assert!(r["status"].is_null(), "{r}");
    let certs = receivers::certs();
    let port = receivers::untrusted_tls_server(&certs);
    let r = check(&format!("https://127.0.0.1:{port}/"), "#{}");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{r}"
    );
    // Trusted through ca_file, the same server is fine.
    let r = check(
        &format!("https://127.0.0.1:{port}/"),
        &format!("#{{ ca_file: \"{}\" }}", certs.ca.display()),
    );
    assert_eq!(r["ok"], true, "{r}");
    // insecure only when asked for by name.
    let r = check(&format!("https://127.0.0.1:{port}/"), "#{ insecure: true }");
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn the_seed_health_check_prints_a_table_and_fails_when_one_endpoint_fails() {
    let s = Http::start(Box::new(|_, r| {
        let status = if r.path == "/api/health/retell" {
            500
        } else {
            200
        };
        (status, "{}".into(), Duration::ZERO)
    }));
    let endpoints = [
        "/api/health",
        "/api/health/database",
        "/api/health/redis",
        "/api/health/queue",
        "/api/health/calcom",
        "/api/health/retell",
    ];
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/health-check.rhai"
    ))
    .unwrap();
    let out = Test::bare()
        .file("runbook.toml", &inventory(&s.url(""), &endpoints))
        .file("scripts/health-check.rhai", &script)
        .args(&["run", "health-check", "-e", "dev", "-q"])
        .run();
    out.code(1).stderr_has("1 of 6 health endpoints failed");
    for e in endpoints {
        assert!(
            out.stdout.contains(&s.url(e)),
            "table lacks {e}:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("FAIL 500"), "{}", out.stdout);
    let paths: Vec<String> = s.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths.iter().filter(|p| *p == "/api/health/retell").count(),
        3,
        "one try and two retries"
    );
}

#[test]
fn a_sample_measures_the_success_rate_of_real_traffic() {
    // Every tenth request fails: 20 requests over a second → 18 good ones.
    let s = Http::start(Box::new(|n, _| {
        (
            if n % 10 == 9 { 502 } else { 200 },
            "{}".into(),
            Duration::ZERO,
        )
    }));
    let out = Test::bare()
        .file("runbook.toml", &inventory(&s.url(""), &[]))
        .file(
            "scripts/s.rhai",
            "print(health::sample(\"/x\", #{ rate: 20, window: \"1s\" }).to_json());",
        )
        .args(&["run", "s", "-e", "dev", "-q"])
        .run();
    out.code(0);
    let r: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(r["requests"], 20);
    assert_eq!(r["errors"], 2);
    assert_eq!(r["success_rate"], 90.0);
}

// Pins behaviour moved from `modules/health.rs` (its own `block`) into the effect layer's
// gate: Ctrl-C ends a health check in flight at once, not after its 60 s timeout.
#[test]
fn ctrl_c_ends_a_slow_health_check_at_once() {
    let s = Http::start(Box::new(|_, _| (200, "{}".into(), Duration::from_secs(30))));
    let t = Test::bare()
        .file("runbook.toml", &inventory("http://127.0.0.1:1", &[]))
        .file(
            "scripts/n.rhai",
            &format!(
                "health::check(\"{}\", #{{ timeout: \"60s\" }});\nlocal::run([\"touch\", \"after\"]);",
                s.url("/api/health")
            ),
        );
    let (status, took) = receivers::interrupt_once_received(&t, &s);
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(
        took < Duration::from_secs(5),
        "Ctrl-C took {took:?} to end a slow health check"
    );
    assert!(!t.path().join("after").exists(), "the script went on");
}

// Pins what the gate must not change when it bounds a check: each attempt that times out
// says its own timeout and reports the time it really waited (not 0, not the bound of
// the whole check), and the check as a whole ends when its attempts are spent.
#[test]
fn a_check_against_a_hanging_server_reports_the_time_it_really_waited() {
    let s = Http::start(Box::new(|_, _| (200, "{}".into(), Duration::from_secs(30))));
    let started = std::time::Instant::now();
    let r = check(
        &s.url("/"),
        r#"#{ timeout: "300ms", retries: 1, backoff: "100ms" }"#,
    );
    let took = started.elapsed();
    assert_eq!(r["ok"], false);
    assert_eq!(r["attempts"], 2);
    assert_eq!(r["error"], "no answer within 300 ms");
    let latency = r["latency_ms"].as_u64().expect("latency_ms");
    assert!((300..1500).contains(&latency), "latency_ms {latency}");
    // Two attempts of 300 ms and the 100 ms between them, plus the run's own start.
    assert!(took < Duration::from_secs(10), "the check took {took:?}");
    assert_eq!(s.received().len(), 2);
}
