//! The seed's metrics stack, real: runbook's deploy metrics (`metrics::push`) land in a
//! Pushgateway and are read back through Prometheus (`metrics::query`); mtail running the
//! shipped `examples/mtail/runbook.mtail` over a balancer access log exports
//! `askproai_http_requests_total` and `askproai_http_request_duration_seconds`, which
//! Prometheus answers PromQL about — success rate and p95 per pool, and `NaN` for a canary
//! that got no requests, which the canary judge must call inconclusive.
//!
//! Each test starts its own stack ([`Observability::start`]); they run in parallel, each
//! about 6–8 s (Prometheus' first scrape comes at its scrape manager's first 5 s tick).

#![expect(
    clippy::float_cmp,
    reason = "known answers: request counts and rates that are exact by construction"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::harness::{INVENTORY, Output, Test};
use crate::support::mtail;
use crate::support::prometheus::Observability;

/// Bound of every wait for Prometheus to have scraped something.
const SCRAPED_SECS: u64 = 30;

fn run(obs: &Observability, script: &str) -> Output {
    Test::bare()
        .file("runbook.toml", &format!("{INVENTORY}\n{}", obs.inventory()))
        .file("scripts/m.rhai", script)
        .args(&["run", "m", "-e", "dev"])
        .run()
}

/// `key=value` lines a script printed.
fn printed(out: &Output) -> BTreeMap<String, String> {
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn close(got: Option<&f64>, want: f64) -> bool {
    got.is_some_and(|g| (g - want).abs() < 1e-9)
}

#[test]
fn the_shipped_mtail_program_compiles_and_a_broken_one_does_not() {
    let why = crate::support::missing(&[(mtail::BIN, "mtail")]);
    if crate::support::available("mtail", why.map_or(Ok(()), Err)).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(mtail::program(), dir.path().join("runbook.mtail")).unwrap();
    let log = mtail::compile_only(dir.path())
        .unwrap_or_else(|log| panic!("examples/mtail/runbook.mtail does not compile:\n{log}"));
    assert!(log.contains("Loaded program runbook.mtail"), "{log}");
    // The check can fail: the same program with its action block cut short does not compile.
    let text = std::fs::read_to_string(mtail::program()).unwrap();
    let broken = text.trim_end().trim_end_matches('}');
    std::fs::write(dir.path().join("runbook.mtail"), broken).unwrap();
    let err = mtail::compile_only(dir.path()).expect_err("a program without its closing brace");
    assert!(err.contains("compile failed for runbook.mtail"), "{err}");
}

#[test]
fn deploy_metrics_pushed_by_runbook_are_read_back_through_prometheus() {
    let Some(obs) = Observability::start() else {
        return;
    };
    let pg = &obs.pushgateway;
    run(
        &obs,
        "metrics::push(#{ release: \"r1\", success: true, duration_ms: 1500, required: true });",
    )
    .code(0);
    // The Pushgateway holds the group runbook PUT, with runbook's labels.
    let held = pg.metrics();
    assert!(
        held.lines()
            .any(|l| l.starts_with("runbook_deploy_duration_seconds{")
                && l.contains("app=\"t\"")
                && l.contains("env=\"dev\"")
                && l.contains("job=\"runbook\"")
                && l.contains("release=\"r1\"")
                && l.ends_with(" 1.5")),
        "the Pushgateway does not hold the pushed duration:\n{held}"
    );
    obs.prometheus
        .wait_for_value("runbook_deploy_success{release=\"r1\"}", SCRAPED_SECS)
        .unwrap();

    // Read back through Prometheus by runbook itself; then a failed deploy replaces it.
    let out = run(
        &obs,
        "print(`duration=${metrics::query(\"runbook_deploy_duration_seconds{job=\\\"runbook\\\",app=\\\"t\\\",env=\\\"dev\\\",release=\\\"r1\\\"}\")}`);\n\
         print(`success=${metrics::query(\"runbook_deploy_success{release=\\\"r1\\\"}\")}`);\n\
         print(`timestamp=${metrics::query(\"runbook_deploy_timestamp_seconds{release=\\\"r1\\\"}\")}`);\n\
         metrics::push(#{ release: \"r2\", success: false, duration_ms: 250, required: true });",
    );
    out.code(0);
    let got = printed(&out);
    assert_eq!(
        got.get("duration").map(String::as_str),
        Some("1.5"),
        "{}",
        out.stdout
    );
    assert_eq!(
        got.get("success").map(String::as_str),
        Some("1.0"),
        "{}",
        out.stdout
    );
    let pushed_at: f64 = got
        .get("timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0.0);
    let now = f64::from(
        u32::try_from(chrono::Utc::now().timestamp())
            .expect("seconds since 1970 fit in u32 until 2106"),
    );
    assert!(
        (now - pushed_at).abs() < 120.0,
        "runbook_deploy_timestamp_seconds is {pushed_at}, now is {now}"
    );

    // The next push replaces the environment's series (same group, same names): r1's go
    // stale in Prometheus, so `runbook_deploy_success == 0` speaks of the last deploy.
    obs.prometheus
        .wait_for(
            "runbook_deploy_success{release=\"r2\"}",
            SCRAPED_SECS,
            |v| v == 0.0,
        )
        .unwrap();
    obs.prometheus
        .wait_for_value(
            "absent(runbook_deploy_success{release=\"r1\"})",
            SCRAPED_SECS,
        )
        .unwrap();
    let out = run(
        &obs,
        "print(`success=${metrics::query(\"runbook_deploy_success{env=\\\"dev\\\"}\")}`);\n\
         print(`duration=${metrics::query(\"runbook_deploy_duration_seconds{env=\\\"dev\\\"}\")}`);\n\
         try { metrics::query(\"up\"); } catch (e) { print(`up=${e}`); }\n\
         metrics::query(\"runbook_deploy_success{release=\\\"r1\\\"}\");",
    );
    out.code(1).stderr_has("returned no series");
    let got = printed(&out);
    assert_eq!(
        got.get("success").map(String::as_str),
        Some("0.0"),
        "{}",
        out.stdout
    );
    assert_eq!(
        got.get("duration").map(String::as_str),
        Some("0.25"),
        "{}",
        out.stdout
    );
    // `up` has a series per scrape target (the Pushgateway and mtail): not one number.
    assert!(
        got.get("up")
            .is_some_and(|e| e.contains("returned 2 series")),
        "{}",
        out.stdout
    );
}

/// An access log in the balancer's format: stable 202 requests (two 404s, a client's
/// mistake, still successes) all in 20 ms; the canary 100, of which two 503s and ten
/// slow (900 ms); plus a line with an extra field (counted) and two that do not parse.
fn access_log() -> String {
    let mut log = String::new();
    let mut line = |n: usize, rest: &str| {
        for i in 0..n {
            let _ = writeln!(log, "1767225600.{i:03} {rest}");
        }
    };
    line(200, "stable 200 0.020");
    line(2, "stable 404 0.020");
    line(89, "next 200 0.040");
    line(1, "next 200 0.040 upstream=127.0.0.1:8081");
    line(8, "next 200 0.900");
    line(2, "next 503 0.900");
    log.push_str("garbage\n1767225600.999 next\n");
    log
}

#[test]
fn mtail_turns_the_access_log_into_success_rate_and_p95_per_pool() {
    let Some(obs) = Observability::start() else {
        return;
    };
    obs.log(&access_log());
    obs.prometheus
        .wait_for("sum(askproai_http_requests_total)", SCRAPED_SECS, |v| {
            v == 302.0
        })
        .unwrap_or_else(|e| panic!("{e}\nmtail exports:\n{}", obs.mtail.metrics()));
    let exported = obs.mtail.metrics();
    assert!(
        exported.contains(
            "askproai_http_requests_total{pool=\"next\",prog=\"runbook.mtail\",status=\"503\"} 2"
        ),
        "{exported}"
    );
    assert!(
        exported.contains(
            "askproai_http_request_duration_seconds_bucket{pool=\"stable\",prog=\"runbook.mtail\",le=\"0.025\"} 202"
        ),
        "{exported}"
    );

    let p = &obs.prometheus;
    let success = p
        .by(
            "100 * sum by (pool) (askproai_http_requests_total{status!~\"5..\"}) / sum by (pool) (askproai_http_requests_total)",
            "pool",
        )
        .unwrap();
    assert!(close(success.get("next"), 98.0), "{success:?}");
    assert!(close(success.get("stable"), 100.0), "{success:?}");
    assert_eq!(success.len(), 2, "{success:?}");
    let p95 = p
        .by(
            "histogram_quantile(0.95, sum by (pool, le) (askproai_http_request_duration_seconds_bucket))",
            "pool",
        )
        .unwrap();
    // Linear inside the bucket: the canary's 95th of 100 lies in (0.75, 1] above 90 fast
    // ones; stable's 191.9th of 202 in (0.01, 0.025].
    assert!(close(p95.get("next"), 0.875), "{p95:?}");
    assert!(close(p95.get("stable"), 0.02425), "{p95:?}");

    // The same numbers through runbook, into the judge: the canary fails both gates.
    let out = run(
        &obs,
        "let s = |pool| metrics::query(`100 * sum(askproai_http_requests_total{pool=\"${pool}\",status!~\"5..\"}) / sum(askproai_http_requests_total{pool=\"${pool}\"})`);\n\
         let p95 = |pool| metrics::query(`histogram_quantile(0.95, sum by (le) (askproai_http_request_duration_seconds_bucket{pool=\"${pool}\"}))`);\n\
         let v = #{ canary_success: s.call(\"next\"), stable_success: s.call(\"stable\"), canary_p95: p95.call(\"next\"), stable_p95: p95.call(\"stable\") };\n\
         print(`canary_success=${v.canary_success}`);\n\
         let r = canary::judge_values(v, #{});\n\
         print(`outcome=${r.outcome}`);\n\
         print(`reasons=${r.reasons}`);",
    );
    out.code(0);
    let got = printed(&out);
    assert_eq!(
        got.get("canary_success").map(String::as_str),
        Some("98.0"),
        "{}",
        out.stdout
    );
    assert_eq!(
        got.get("outcome").map(String::as_str),
        Some("fail"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_success_rate_with_no_canary_requests_is_nan_and_never_a_pass_nor_is_inf() {
    let Some(obs) = Observability::start() else {
        return;
    };
    // One canary request, then none: over the last 3 s the canary's rate is 0/0.
    obs.log("1767225600.001 next 200 0.010\n1767225600.002 stable 200 0.010\n");
    let query = "100 * sum(rate(askproai_http_requests_total{pool=\"next\",status!~\"5..\"}[3s])) / sum(rate(askproai_http_requests_total{pool=\"next\"}[3s]))";
    obs.prometheus
        .wait_for(query, SCRAPED_SECS, f64::is_nan)
        .unwrap_or_else(|e| panic!("{e}\nmtail exports:\n{}", obs.mtail.metrics()));
    let out = run(
        &obs,
        &format!(
            "let v = metrics::query({query:?});\n\
             print(`value=${{v}}`);\n\
             let r = canary::judge_values(#{{ canary_success: v, stable_success: 100.0 }}, #{{}});\n\
             print(`outcome=${{r.outcome}}`);\n\
             print(`reasons=${{r.reasons}}`);\n\
             let inf = metrics::query(\"100 * sum(askproai_http_requests_total{{pool=\\\"next\\\"}}) / 0\");\n\
             print(`inf=${{inf}}`);\n\
             print(`inf_outcome=${{canary::judge_values(#{{ canary_success: inf }}, #{{}}).outcome}}`);"
        ),
    );
    out.code(0);
    let got = printed(&out);
    assert_eq!(
        got.get("value").map(String::as_str),
        Some("NaN"),
        "{}",
        out.stdout
    );
    assert_eq!(
        got.get("outcome").map(String::as_str),
        Some("inconclusive"),
        "{}",
        out.stdout
    );
    // x/0 answers +Inf: not a pass either.
    assert_eq!(
        got.get("inf").map(String::as_str),
        Some("inf"),
        "{}",
        out.stdout
    );
    assert_eq!(
        got.get("inf_outcome").map(String::as_str),
        Some("inconclusive"),
        "{}",
        out.stdout
    );
}

/// nginx answering 200 (503 under /fail), `$runbook_pool` from `?pool=`, logging in the
/// balancer's format (examples/nginx/lb.conf) to `<dir>/runbook.log`.
struct Nginx {
    port: u16,
    child: std::process::Child,
}

impl Nginx {
    fn start(dir: &std::path::Path) -> Result<Nginx, String> {
        if let Some(why) = crate::support::missing(&[("/usr/sbin/nginx", "nginx")]) {
            return Err(why);
        }
        let port = crate::support::free_port_on("127.0.0.1");
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\nhttp {{\n\
             client_body_temp_path {d}/t-body; proxy_temp_path {d}/t-proxy;\n\
             fastcgi_temp_path {d}/t-fcgi; uwsgi_temp_path {d}/t-uwsgi; scgi_temp_path {d}/t-scgi;\n\
             log_format runbook '$msec $runbook_pool $status $request_time';\n\
             map $arg_pool $runbook_pool {{ next next; default stable; }}\n\
             access_log {d}/runbook.log runbook;\n\
             server {{ listen 127.0.0.1:{port};\n\
             location /fail {{ return 503; }}\n location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
        let child = std::process::Command::new("/usr/sbin/nginx")
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("nginx: {e}"))?;
        let nginx = Nginx { port, child };
        crate::support::wait_until(10, "nginx to answer", || {
            crate::support::get("127.0.0.1", port, "/").0 == 200
        })?;
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        crate::web::terminate(std::slice::from_mut(&mut self.child));
    }
}

#[test]
fn mtail_reads_the_log_format_as_nginx_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nginx) = crate::support::available("nginx", Nginx::start(dir.path())) else {
        return;
    };
    // Truncate the readiness probe's line: mtail would skip it anyway (it tails from the end).
    std::fs::write(dir.path().join("runbook.log"), "").unwrap();
    let Some(obs) = Observability::tailing(&dir.path().join("runbook.log")) else {
        return;
    };
    for (path, n) in [("/", 20), ("/?pool=next", 5), ("/fail?pool=next", 1)] {
        for _ in 0..n {
            crate::support::get("127.0.0.1", nginx.port, path);
        }
    }
    let p = &obs.prometheus;
    p.wait_for("sum(askproai_http_requests_total)", SCRAPED_SECS, |v| {
        v == 26.0
    })
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.path().join("runbook.log")).unwrap_or_default();
        panic!(
            "{e}\nnginx wrote:\n{log}\nmtail exports:\n{}",
            obs.mtail.metrics()
        )
    });
    let by: BTreeMap<String, f64> = p
        .samples("sum by (pool, status) (askproai_http_requests_total)")
        .unwrap()
        .into_iter()
        .map(|(l, v)| (format!("{} {}", l["pool"], l["status"]), v))
        .collect();
    let want: BTreeMap<String, f64> = [("next 200", 5.0), ("next 503", 1.0), ("stable 200", 20.0)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(by, want);
    let timed = p
        .by(
            "sum by (pool) (askproai_http_request_duration_seconds_count)",
            "pool",
        )
        .unwrap();
    assert!(
        close(timed.get("next"), 6.0) && close(timed.get("stable"), 20.0),
        "{timed:?}"
    );
}
