//! A real Prometheus (Debian's `prometheus`) for the tests, and the metrics stack the
//! seed runs: Prometheus scraping a Pushgateway (runbook's own deploy metrics,
//! `metrics::push`) and mtail (the balancer's access log as `askproai_http_*` metrics).
//!
//! One call starts all three, in parallel, on free ports of 127.0.0.1 with their data in
//! one temp dir, and stops them when dropped:
//!
//! ```ignore
//! use crate::support::prometheus::Observability;
//! // mtail tails a log of its own (`obs.mtail.access_log`) that the test writes …
//! let Some(obs) = Observability::start() else { return };
//! // … or a balancer's access log (`log_format runbook`, see examples/nginx/lb.conf),
//! // started first so that nginx (as the deploy user) creates the file it writes:
//! let Some(obs) = Observability::tailing(&lb.dir.join("access.log")) else { return };
//! let toml = format!("{inventory}\n{}", obs.inventory()); // the [metrics] section
//! let rate = obs.prometheus.wait_for_value("sum(up)", 20)?;  // bounded
//! ```
//!
//! Prometheus scrapes every second, but its scrape manager applies the first target list
//! only at its first 5 s tick: a metric is queryable about 6 s after the start (start
//! the stack before the rest of a test's parts, so the two overlap).
//! [`Prometheus::wait_for_value`] waits for it.
//!
//! Under `CI=true` a missing binary fails the test; elsewhere the test is skipped with a
//! message ([`crate::support::available`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::mtail::{self, Mtail};
use crate::support::pushgateway::{self, Pushgateway};

pub(crate) const BIN: &str = "/usr/bin/prometheus";

/// Seconds any daemon of the stack may take to answer its readiness check.
const READY_SECS: u64 = 20;

/// Why the stack cannot start here (a missing package), or `None`.
pub(crate) fn why_unavailable() -> Option<String> {
    crate::support::missing(&[
        (BIN, "prometheus"),
        (pushgateway::BIN, "prometheus-pushgateway"),
        (mtail::BIN, "mtail"),
    ])
}

/// Waits (bounded) until `is_ready`; fails early, with the daemon's log, when it exits.
pub(crate) fn ready(
    child: &mut Child,
    log: &Path,
    secs: u64,
    what: &str,
    mut is_ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before it was ready:\n{}",
                tail()
            ));
        }
        if is_ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} not ready within {secs} s:\n{}", tail()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scrape job: its name, the port on 127.0.0.1, and whether the target's own `job` and
/// `instance` labels win (a Pushgateway's, so pushed groups keep theirs).
pub(crate) struct Target<'a> {
    pub job: &'a str,
    pub port: u16,
    pub honor_labels: bool,
}

/// One sample of an instant vector: its labels and value.
pub(crate) type Sample = (BTreeMap<String, String>, f64);

pub(crate) struct Prometheus {
    pub port: u16,
    log: PathBuf,
    child: Child,
}

fn config(targets: &[Target]) -> String {
    let mut yml = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for t in targets {
        let _ = writeln!(
            yml,
            "  - job_name: {}\n    honor_labels: {}\n    static_configs:\n      - targets: ['127.0.0.1:{}']",
            t.job, t.honor_labels, t.port
        );
    }
    yml
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn number(v: &serde_json::Value) -> Result<f64, String> {
    v[1].as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| format!("not a sample value: {v}"))
}

impl Prometheus {
    /// Starts it scraping `targets` every second, its TSDB (1 h retention) and log in
    /// `dir`, without waiting; see [`Prometheus::wait_ready`].
    pub(crate) fn spawn(dir: &Path, targets: &[Target]) -> Result<Prometheus, String> {
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config(targets)).map_err(|e| e.to_string())?;
        let port = crate::support::free_port_on("127.0.0.1");
        let log = dir.join("prometheus.log");
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(BIN)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg("--storage.tsdb.retention.time=1h")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{BIN}: {e}"))?;
        Ok(Prometheus { port, log, child })
    }

    /// Waits (bounded) until `/-/ready` answers 200 (its first scrape comes later).
    pub(crate) fn wait_ready(&mut self, secs: u64) -> Result<(), String> {
        let port = self.port;
        ready(&mut self.child, &self.log, secs, "Prometheus", || {
            crate::support::get("127.0.0.1", port, "/-/ready").0 == 200
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An instant query's answer, as Prometheus sent it.
    pub(crate) fn query(&self, promql: &str) -> Result<serde_json::Value, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = crate::support::get("127.0.0.1", self.port, &path);
        serde_json::from_str(&body).map_err(|e| {
            format!("Prometheus answered {status} to `{promql}` with no JSON ({e}): {body}")
        })
    }

    /// An instant query's samples: one per series (a scalar is one sample, no labels).
    pub(crate) fn samples(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let doc = self.query(promql)?;
        if doc["status"] != "success" {
            return Err(format!("`{promql}` failed: {doc}"));
        }
        let data = &doc["data"];
        match data["resultType"].as_str() {
            Some("scalar") => Ok(vec![(BTreeMap::new(), number(&data["result"])?)]),
            Some("vector") => data["result"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                                .collect()
                        })
                        .unwrap_or_default();
                    Ok((labels, number(&s["value"])?))
                })
                .collect(),
            other => Err(format!("`{promql}` answered a {other:?}: {doc}")),
        }
    }

    /// The samples by the value of label `by` (e.g. `pool`).
    pub(crate) fn by(&self, promql: &str, by: &str) -> Result<BTreeMap<String, f64>, String> {
        Ok(self
            .samples(promql)?
            .into_iter()
            .map(|(labels, v)| (labels.get(by).cloned().unwrap_or_default(), v))
            .collect())
    }

    /// Waits (bounded) until `promql` answers exactly one sample for which `accept` holds
    /// (`NaN` included, when `accept` takes it); returns it.
    pub(crate) fn wait_for(
        &self,
        promql: &str,
        secs: u64,
        accept: impl Fn(f64) -> bool,
    ) -> Result<f64, String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let last = self.samples(promql);
            if let Ok([(_, v)]) = last.as_deref()
                && accept(*v)
            {
                return Ok(*v);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`{promql}` gave no accepted value within {secs} s; last answer: {last:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) until `promql` answers exactly one sample, whatever its value.
    pub(crate) fn wait_for_value(&self, promql: &str, secs: u64) -> Result<f64, String> {
        self.wait_for(promql, secs, |_| true)
    }

    /// Prometheus' own count of instant queries answered (`/api/v1/query`), from its
    /// `/metrics`: proof that someone (runbook) asked.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "Prometheus writes its counters as floats: a whole, non-negative count"
    )]
    pub(crate) fn queries_answered(&self) -> u64 {
        let (_, text) = crate::support::get("127.0.0.1", self.port, "/metrics");
        text.lines()
            .filter(|l| {
                l.starts_with("prometheus_http_requests_total{")
                    && l.contains("handler=\"/api/v1/query\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus scraping a Pushgateway (job `pushgateway`, its labels honoured) and mtail
/// (job `mtail`), each on its own port of 127.0.0.1, their data in one temp dir.
pub(crate) struct Observability {
    pub prometheus: Prometheus,
    pub pushgateway: Pushgateway,
    pub mtail: Mtail,
    _dir: tempfile::TempDir,
}

impl Observability {
    /// The stack, mtail tailing `<dir>/access.log` (the test writes it); `None` (skipped)
    /// where a package is missing — a panic under `CI=true`.
    pub(crate) fn start() -> Option<Observability> {
        let started = why_unavailable().map_or_else(|| Observability::try_start(None), Err);
        crate::support::available("Prometheus, the Pushgateway and mtail", started)
    }

    /// The stack, mtail tailing `access_log` (a balancer's, `log_format runbook`).
    pub(crate) fn tailing(access_log: &Path) -> Option<Observability> {
        let started =
            why_unavailable().map_or_else(|| Observability::try_start(Some(access_log)), Err);
        crate::support::available("Prometheus, the Pushgateway and mtail", started)
    }

    pub(crate) fn try_start(access_log: Option<&Path>) -> Result<Observability, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = access_log.map_or_else(|| dir.path().join("access.log"), Path::to_path_buf);
        // All three start at once; the waits below overlap their start-up.
        let mut pushgateway = Pushgateway::spawn(dir.path())?;
        let mut mtail = Mtail::spawn(dir.path(), &log)?;
        let mut prometheus = Prometheus::spawn(
            dir.path(),
            &[
                Target {
                    job: "pushgateway",
                    port: pushgateway.port,
                    honor_labels: true,
                },
                Target {
                    job: "mtail",
                    port: mtail.port,
                    honor_labels: false,
                },
            ],
        )?;
        pushgateway.wait_ready(READY_SECS)?;
        mtail.wait_ready(READY_SECS)?;
        prometheus.wait_ready(READY_SECS)?;
        Ok(Observability {
            prometheus,
            pushgateway,
            mtail,
            _dir: dir,
        })
    }

    /// The `[metrics]` section of a runbook.toml that points runbook at this stack.
    pub(crate) fn inventory(&self) -> String {
        format!(
            "[metrics]\npushgateway = \"{}\"\nprometheus = \"{}\"\n",
            self.pushgateway.url(),
            self.prometheus.url()
        )
    }

    /// Appends `lines` to the access log mtail tails.
    pub(crate) fn log(&self, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.mtail.access_log)
            .expect("the access log mtail tails");
        f.write_all(lines.as_bytes())
            .expect("append to the access log");
    }
}
