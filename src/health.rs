//! Health checks over HTTP(S): is the app answering, fast enough, with the right release?
//!
//! Plain Rust (no Rhai here). Every check is bounded: a per-request timeout, a number of
//! attempts, an overall deadline. A failed check says what an on-call engineer needs:
//! the status, the start of the body, the timing, the address that answered.
//!
//! A check answers for the URL it was given: a redirect to another host (a balancer, a
//! login page) is not followed unless `follow_redirects` asks for it, and the report says
//! where the answer came from. A body is streamed and only its start is kept
//! ([`BODY_READ`]): a huge answer costs no memory.

use crate::num::ToF64;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How much of a response body a report keeps.
const BODY_KEEP: usize = 2048;
/// How much of a body is read at most (for the report and the `json` predicates); the
/// rest is never downloaded.
pub(crate) const BODY_READ: usize = 64 * 1024;
/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;
/// The longest wait between two attempts (the backoff doubles up to it).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(crate) struct CheckOptions {
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
    /// Follow redirects to other hosts (and from https to http). Redirects on the same
    /// host are always followed.
    pub follow_redirects: bool,
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
            follow_redirects: false,
        }
    }
}

impl CheckOptions {
    /// The longest [`check`] can take with these options — every attempt running to its
    /// timeout, every backoff waited, or the deadline plus the attempt in flight when it
    /// passes — or `None` when that is beyond any sensible wait. What the effect layer
    /// bounds the whole check by.
    pub(crate) fn bound(&self) -> Option<Duration> {
        let by_deadline = self.deadline.map(|d| d.saturating_add(self.timeout));
        let attempts = self.retries.saturating_add(self.consecutive.max(1));
        let mut total = Duration::ZERO;
        let mut wait = self.backoff;
        let cap = Duration::from_hours(24);
        let mut by_attempts = None;
        for n in 1..=attempts {
            total = total.saturating_add(self.timeout);
            if n < attempts {
                total = total.saturating_add(wait);
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            if total > cap {
                break;
            }
            if n == attempts {
                by_attempts = Some(total);
            }
        }
        match (by_deadline, by_attempts) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The outcome of checking one URL.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Report {
    pub url: String,
    pub ok: bool,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub body: String,
    pub error: Option<String>,
    pub attempts: u32,
    pub address: Option<String>,
    /// The URL that answered, after the redirects that were followed.
    pub final_url: Option<String>,
}

impl Report {
    /// One line for a status table.
    pub(crate) fn line(&self) -> String {
        let status = self
            .status
            .map_or_else(|| "---".to_owned(), |s| s.to_string());
        let verdict = if self.ok { "ok" } else { "FAIL" };
        let mut s = format!(
            "{verdict:<4} {status} {:>6} ms  {}",
            self.latency_ms, self.url
        );
        if let Some(end) = self.final_url.as_ref().filter(|u| **u != self.url) {
            let _ = write!(s, "  (answered by {end})");
        }
        if let Some(e) = &self.error {
            let _ = write!(s, "  ({e})");
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ClientError(String);

/// Builds an HTTP client for these options (rustls; custom CA and client certificate).
pub(crate) fn client(opts: &CheckOptions) -> Result<reqwest::Client, ClientError> {
    crate::tls::init();
    let mut b = reqwest::Client::builder()
        .timeout(opts.timeout)
        .connect_timeout(opts.timeout)
        .redirect(redirect_policy(opts.follow_redirects))
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

/// Whether a redirect from `from` to `to` stays with the same server: the same host and
/// port, or the same host moving from http to https.
fn same_host(from: &reqwest::Url, to: &reqwest::Url) -> bool {
    let host = |u: &reqwest::Url| u.host_str().map(str::to_ascii_lowercase);
    if host(from) != host(to) {
        return false;
    }
    match (from.scheme(), to.scheme()) {
        ("http", "https") => true,
        (a, b) if a == b => from.port_or_known_default() == to.port_or_known_default(),
        _ => false,
    }
}

/// Same-host redirects are followed; others only with `follow_redirects` (else the
/// redirect itself is the answer, judged and reported as such).
fn redirect_policy(follow_any: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let allowed = follow_any
            || attempt
                .previous()
                .first()
                .is_some_and(|first| same_host(first, attempt.url()));
        if allowed {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Reads at most `limit` bytes of the body; the rest is never downloaded.
async fn read_capped(resp: &mut reqwest::Response, limit: usize) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit.saturating_sub(body.len());
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, false);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) | Err(_) => return (body, true),
        }
    }
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
        Ok(mut resp) => {
            report.address = resp.remote_addr().map(|a| a.to_string());
            report.final_url = Some(resp.url().to_string());
            let status = resp.status().as_u16();
            report.status = Some(status);
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| {
                    resp.url()
                        .join(l)
                        .map_or_else(|_| l.to_owned(), |u| u.to_string())
                });
            let (bytes, complete) = read_capped(&mut resp, BODY_READ).await;
            drop(resp);
            let body = String::from_utf8_lossy(&bytes);
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
                report.error = Some(match location {
                    Some(to) if (300..400).contains(&status) => format!(
                        "status {status}, expected {expected}: a redirect to {to}, another host, not followed (pass follow_redirects: true to follow it)"
                    ),
                    _ => format!("status {status}, expected {expected}"),
                });
            } else if !complete && !opts.json.is_empty() {
                report.error = Some(format!(
                    "the body is larger than {} KiB: too large to judge as JSON",
                    BODY_READ / 1024
                ));
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
pub(crate) fn json_problem(body: &str, expected: &[(String, Value)]) -> Option<String> {
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
pub(crate) async fn check(client: &reqwest::Client, url: &str, opts: &CheckOptions) -> Report {
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
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }
}

/// Checks every URL at once.
pub(crate) async fn check_all(
    client: &reqwest::Client,
    urls: &[String],
    opts: &CheckOptions,
) -> Vec<Report> {
    futures::future::join_all(urls.iter().map(|u| check(client, u, opts))).await
}

/// Traffic measured over a window: what a canary gate looks at.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Sample {
    pub requests: u64,
    pub errors: u64,
    pub success_rate: f64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
}

/// The longest [`sample`] can take: the window, then the last request's timeout.
pub(crate) fn sample_bound(window: Duration, opts: &CheckOptions) -> Duration {
    window.saturating_add(opts.timeout)
}

/// Sends `rate` requests per second for `window`, each judged like a check without
/// retries, and summarises them.
pub(crate) async fn sample(
    client: &reqwest::Client,
    url: &str,
    rate: u32,
    window: Duration,
    opts: &CheckOptions,
) -> Sample {
    let rate = rate.clamp(1, 1000);
    let total =
        crate::num::saturating_u64((window.as_secs_f64() * f64::from(rate)).ceil().max(1.0));
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
        let idx =
            crate::num::saturating_usize(((p / 100.0) * (latencies.len().to_f64() - 1.0)).round());
        latencies[idx.min(latencies.len() - 1)]
    };
    Sample {
        requests: total,
        errors,
        success_rate: if total == 0 {
            0.0
        } else {
            (total - errors).to_f64() * 100.0 / total.to_f64()
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
    fn only_redirects_that_stay_on_the_host_are_the_same_host() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(same_host(&u("http://a:8080/x"), &u("http://A:8080/y")));
        assert!(same_host(&u("http://a/x"), &u("https://a/x")));
        assert!(!same_host(&u("http://a/x"), &u("http://b/x")));
        assert!(!same_host(&u("http://a:8080/x"), &u("http://a:9090/x")));
        assert!(!same_host(&u("https://a/x"), &u("http://a/x")));
    }

    #[test]
    fn a_check_is_bounded_by_its_attempts_or_its_deadline() {
        let s = Duration::from_secs;
        let o = CheckOptions {
            timeout: s(2),
            retries: 3,
            backoff: s(1),
            ..CheckOptions::default()
        };
        // Four attempts of 2 s, waits of 1 + 2 + 4 s between them.
        assert_eq!(o.bound(), Some(s(8 + 7)));
        let o = CheckOptions {
            deadline: Some(s(5)),
            ..o
        };
        assert_eq!(o.bound(), Some(s(5 + 2)));
        // `health::wait`: a million retries, bounded by the deadline only.
        let o = CheckOptions {
            retries: 1_000_000,
            deadline: None,
            ..o
        };
        assert_eq!(o.bound(), None);
        let o = CheckOptions {
            deadline: Some(s(30)),
            ..o
        };
        assert_eq!(o.bound(), Some(s(32)));
    }

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
