//! Health checks over HTTP(S): is the app answering, fast enough, with the right release?
//!
//! Plain Rust (no Rhai here). Every check is bounded: a per-request timeout, a number of
//! attempts, an overall deadline. A failed check says what an on-call engineer needs:
//! the status, the start of the body, the timing, the address that answered.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How much of a response body a report keeps.
const BODY_KEEP: usize = 2048;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Accepted statuses; empty means any 2xx.
    pub expect: Vec<u16>,
    pub timeout: Duration,
    /// Extra attempts after the first failure.
    pub retries: u32,
    /// Wait before the first retry; doubles each time, at most 10 s.
    pub backoff: Duration,
    /// Stop retrying after this long, whatever `retries` says.
    pub deadline: Option<Duration>,
    /// Successes in a row required.
    pub consecutive: u32,
    pub max_latency: Option<Duration>,
    /// `path` (dotted) → expected JSON value in the body.
    pub json: Vec<(String, Value)>,
    pub headers: Vec<(String, String)>,
    pub ca_file: Option<PathBuf>,
    /// A PEM file holding a client certificate and its key.
    pub client_cert: Option<PathBuf>,
    /// Accept any certificate — only when asked for by name.
    pub insecure: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            expect: Vec::new(),
            timeout: Duration::from_secs(5),
            retries: 0,
            backoff: Duration::from_secs(1),
            deadline: None,
            consecutive: 1,
            max_latency: None,
            json: Vec::new(),
            headers: Vec::new(),
            ca_file: None,
            client_cert: None,
            insecure: false,
        }
    }
}

/// The outcome of checking one URL.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub url: String,
    pub ok: bool,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub body: String,
    pub error: Option<String>,
    pub attempts: u32,
    pub address: Option<String>,
}

impl Report {
    /// One line for a status table.
    pub fn line(&self) -> String {
        let status = self
            .status
            .map_or_else(|| "---".to_owned(), |s| s.to_string());
        let verdict = if self.ok { "ok" } else { "FAIL" };
        let mut s = format!(
            "{verdict:<4} {status} {:>6} ms  {}",
            self.latency_ms, self.url
        );
        if let Some(e) = &self.error {
            s.push_str(&format!("  ({e})"));
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// Builds an HTTP client for these options (rustls; custom CA and client certificate).
pub fn client(opts: &CheckOptions) -> Result<reqwest::Client, ClientError> {
    crate::tls::init();
    let mut b = reqwest::Client::builder()
        .timeout(opts.timeout)
        .connect_timeout(opts.timeout)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("runbook/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &opts.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| ClientError(format!("cannot read ca_file {}: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ClientError(format!("ca_file {} is not PEM: {e}", ca.display())))?;
        b = b.tls_certs_merge(certs);
    }
    if let Some(cert) = &opts.client_cert {
        let pem = std::fs::read(cert)
            .map_err(|e| ClientError(format!("cannot read client_cert {}: {e}", cert.display())))?;
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            ClientError(format!(
                "client_cert {} needs a certificate and its key in PEM: {e}",
                cert.display()
            ))
        })?;
        b = b.identity(id);
    }
    if opts.insecure {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build()
        .map_err(|e| ClientError(format!("cannot build the HTTP client: {e}")))
}

/// One request, judged against the options.
async fn attempt(client: &reqwest::Client, url: &str, opts: &CheckOptions) -> Report {
    let started = Instant::now();
    let mut req = client.get(url);
    for (k, v) in &opts.headers {
        req = req.header(k, v);
    }
    let mut report = Report {
        url: url.to_owned(),
        ..Report::default()
    };
    match req.send().await {
        Err(e) => {
            report.error = Some(describe(&e, opts.timeout));
        }
        Ok(resp) => {
            report.address = resp.remote_addr().map(|a| a.to_string());
            let status = resp.status().as_u16();
            report.status = Some(status);
            let body = resp.text().await.unwrap_or_default();
            report.body = body.chars().take(BODY_KEEP).collect();
            let status_ok = if opts.expect.is_empty() {
                (200..300).contains(&status)
            } else {
                opts.expect.contains(&status)
            };
            if !status_ok {
                let expected = if opts.expect.is_empty() {
                    "2xx".to_owned()
                } else {
                    format!("{:?}", opts.expect)
                };
                report.error = Some(format!("status {status}, expected {expected}"));
            } else if let Some(problem) = json_problem(&body, &opts.json) {
                report.error = Some(problem);
            }
        }
    }
    report.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if report.error.is_none()
        && let Some(max) = opts.max_latency
        && started.elapsed() > max
    {
        report.error = Some(format!(
            "answered in {} ms, over the {} ms budget",
            report.latency_ms,
            max.as_millis()
        ));
    }
    report.ok = report.error.is_none();
    report
}

fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !chain.contains(&text) {
            if !chain.is_empty() {
                chain.push_str(": ");
            }
            chain.push_str(&text);
        }
        source = s.source();
    }
    if e.is_timeout() {
        format!("no answer within {} ms", timeout.as_millis())
    } else if e.is_connect() {
        format!("cannot connect: {chain}")
    } else {
        chain
    }
}

/// Checks the body's JSON against `expected` (dotted paths); `None` when it matches.
pub fn json_problem(body: &str, expected: &[(String, Value)]) -> Option<String> {
    if expected.is_empty() {
        return None;
    }
    let Ok(doc) = serde_json::from_str::<Value>(body) else {
        return Some("the body is not JSON".into());
    };
    for (path, want) in expected {
        let got = path.split('.').try_fold(&doc, |v, key| v.get(key));
        match got {
            Some(v) if v == want => {}
            Some(v) => return Some(format!("{path} is {v}, expected {want}")),
            None => return Some(format!("{path} is missing from the body")),
        }
    }
    None
}

/// Retries with backoff until `consecutive` successes in a row, the attempts run out,
/// or the deadline passes. Returns the last report (with the attempt count).
pub async fn check(client: &reqwest::Client, url: &str, opts: &CheckOptions) -> Report {
    let started = Instant::now();
    let mut wait = opts.backoff;
    let mut attempts = 0;
    let mut streak = 0;
    let max_attempts = opts.retries.saturating_add(opts.consecutive.max(1));
    loop {
        attempts += 1;
        let mut report = attempt(client, url, opts).await;
        report.attempts = attempts;
        if report.ok {
            streak += 1;
            if streak >= opts.consecutive.max(1) {
                return report;
            }
        } else {
            streak = 0;
        }
        let out_of_time = opts.deadline.is_some_and(|d| started.elapsed() + wait > d);
        if attempts >= max_attempts || out_of_time {
            if report.ok {
                report.ok = false;
                report.error = Some(format!(
                    "only {streak} of {} consecutive successes",
                    opts.consecutive
                ));
            }
            return report;
        }
        let pause = if report.ok {
            Duration::from_millis(200).min(wait)
        } else {
            wait
        };
        tokio::time::sleep(pause).await;
        if !report.ok {
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }
}

/// Checks every URL at once.
pub async fn check_all(
    client: &reqwest::Client,
    urls: &[String],
    opts: &CheckOptions,
) -> Vec<Report> {
    futures::future::join_all(urls.iter().map(|u| check(client, u, opts))).await
}

/// Traffic measured over a window: what a canary gate looks at.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    pub success_rate: f64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
}

/// Sends `rate` requests per second for `window`, each judged like a check without
/// retries, and summarises them.
pub async fn sample(
    client: &reqwest::Client,
    url: &str,
    rate: u32,
    window: Duration,
    opts: &CheckOptions,
) -> Sample {
    let rate = rate.clamp(1, 1000);
    let total = (window.as_secs_f64() * f64::from(rate)).ceil().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut ticker = tokio::time::interval(interval);
    let mut inflight = Vec::new();
    for _ in 0..total {
        ticker.tick().await;
        let client = client.clone();
        let url = url.to_owned();
        let opts = opts.clone();
        inflight.push(tokio::spawn(
            async move { attempt(&client, &url, &opts).await },
        ));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for h in inflight {
        match h.await {
            Ok(r) => {
                if !r.ok {
                    errors += 1;
                }
                latencies.push(r.latency_ms);
            }
            Err(_) => errors += 1,
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let idx = ((p / 100.0) * (latencies.len() as f64 - 1.0)).round() as usize;
        latencies[idx.min(latencies.len() - 1)]
    };
    Sample {
        requests: total,
        errors,
        success_rate: if total == 0 {
            0.0
        } else {
            (total - errors) as f64 * 100.0 / total as f64
        },
        p50_ms: pct(50.0),
        p95_ms: pct(95.0),
        p99_ms: pct(99.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_predicates_follow_dotted_paths() {
        let body = r#"{"status":"ok","data":{"release":"r2","n":2}}"#;
        assert_eq!(json_problem(body, &[("status".into(), "ok".into())]), None);
        assert_eq!(json_problem(body, &[("data.n".into(), 2.into())]), None);
        assert_eq!(
            json_problem(body, &[("data.release".into(), "r1".into())]),
            Some("data.release is \"r2\", expected \"r1\"".into())
        );
        assert!(json_problem("<html>", &[("status".into(), "ok".into())]).is_some());
        assert!(
            json_problem(body, &[("nope".into(), "x".into())])
                .unwrap()
                .contains("missing")
        );
    }
}
