//! `health::*` — HTTP checks, traffic samples and exec probes (plain core: `crate::health`).

use crate::sync::Locked;
use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};

use super::context::duration_arg;
use crate::effects::http::HttpError;
use crate::health::{self as core, CheckOptions, Report};
use crate::output::Level;

const KEYS: &[&str] = &[
    "expect",
    "timeout",
    "retries",
    "backoff",
    "deadline",
    "consecutive",
    "max_latency",
    "json",
    "headers",
    "ca_file",
    "client_cert",
    "insecure",
    "follow_redirects",
    "rate",
    "window",
];

pub(crate) fn options(opts: &Map) -> Result<CheckOptions, Box<EvalAltResult>> {
    let mut o = CheckOptions::default();
    for (k, v) in opts {
        let bad = |what: &str| {
            super::error(format!(
                "health option `{k}` must be {what}, got {}",
                v.type_name()
            ))
        };
        let count = |v: &Dynamic| v.as_int().ok().and_then(|n| u32::try_from(n).ok());
        match k.as_str() {
            "expect" => {
                let items = v
                    .clone()
                    .try_cast::<Array>()
                    .unwrap_or_else(|| vec![v.clone()]);
                o.expect = items
                    .iter()
                    .map(|s| {
                        s.as_int()
                            .ok()
                            .and_then(|n| u16::try_from(n).ok())
                            .ok_or_else(|| bad("a status or a list of statuses"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "timeout" => o.timeout = duration_arg(v)?,
            "backoff" => o.backoff = duration_arg(v)?,
            "deadline" => o.deadline = Some(duration_arg(v)?),
            "max_latency" => o.max_latency = Some(duration_arg(v)?),
            "retries" => o.retries = count(v).ok_or_else(|| bad("a number"))?,
            "consecutive" => {
                o.consecutive = count(v)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("a positive number"))?;
            }
            "json" => {
                let m = v
                    .clone()
                    .try_cast::<Map>()
                    .ok_or_else(|| bad("a map of path: expected value"))?;
                o.json = m
                    .into_iter()
                    .map(|(p, want)| {
                        rhai::serde::from_dynamic::<serde_json::Value>(&want)
                            .map(|w| (p.to_string(), w))
                            .map_err(|_| bad("a map of JSON values"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "headers" => {
                let m = v.clone().try_cast::<Map>().ok_or_else(|| bad("a map"))?;
                o.headers = m
                    .into_iter()
                    .map(|(h, v)| (h.to_string(), v.to_string()))
                    .collect();
            }
            "ca_file" => o.ca_file = Some(v.to_string().into()),
            "client_cert" => o.client_cert = Some(v.to_string().into()),
            "insecure" => o.insecure = v.as_bool().map_err(|_| bad("true or false"))?,
            "follow_redirects" => {
                o.follow_redirects = v.as_bool().map_err(|_| bad("true or false"))?;
            }
            "rate" | "window" => {}
            other => {
                return Err(super::error(format!(
                    "unknown health option `{other}` (options: {})",
                    KEYS.join(", ")
                )));
            }
        }
    }
    Ok(o)
}

/// `/api/health` becomes the environment's URL + path.
pub(crate) fn absolute(
    session: &crate::session::Session,
    url: &str,
) -> Result<String, Box<EvalAltResult>> {
    if url.starts_with('/') {
        let base = session
            .env
            .as_ref()
            .and_then(|e| e.url.clone())
            .ok_or_else(|| {
                super::error(format!(
                    "`{url}` is a path, but this environment has no `url` in runbook.toml"
                ))
            })?;
        Ok(format!("{}{url}", base.trim_end_matches('/')))
    } else {
        Ok(url.to_owned())
    }
}

pub(crate) fn report_map(r: &Report) -> Map {
    let mut m = Map::new();
    m.insert("url".into(), r.url.clone().into());
    m.insert("ok".into(), r.ok.into());
    m.insert(
        "status".into(),
        r.status.map_or(Dynamic::UNIT, |s| i64::from(s).into()),
    );
    m.insert(
        "latency_ms".into(),
        i64::try_from(r.latency_ms).unwrap_or(i64::MAX).into(),
    );
    m.insert("body".into(), r.body.clone().into());
    m.insert(
        "error".into(),
        r.error.clone().map_or(Dynamic::UNIT, Dynamic::from),
    );
    m.insert("attempts".into(), i64::from(r.attempts).into());
    m.insert(
        "address".into(),
        r.address.clone().map_or(Dynamic::UNIT, Dynamic::from),
    );
    m.insert(
        "final_url".into(),
        r.final_url.clone().map_or(Dynamic::UNIT, Dynamic::from),
    );
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&r.body)
        && let Ok(d) = rhai::serde::to_dynamic(json)
    {
        m.insert("json".into(), d);
    }
    m
}

/// Turns a stopped exchange into the script's error: Ctrl-C stops the script.
pub(crate) fn stopped(e: HttpError) -> Box<EvalAltResult> {
    if e.is_interrupt() {
        super::interrupted()
    } else {
        super::error(e.to_string())
    }
}

/// Checks the URLs through the effect layer (a read: it runs in a dry run too). A check
/// the layer had to end past its bound is a failed report, like any check that failed.
fn checks(
    session: &crate::session::Session,
    client: &reqwest::Client,
    urls: &[String],
    o: &CheckOptions,
) -> Result<Vec<Report>, Box<EvalAltResult>> {
    match session
        .effects
        .http_read("health", o.bound(), core::check_all(client, urls, o))
    {
        Ok(reports) => Ok(reports),
        Err(HttpError::Interrupted { .. }) => Err(super::interrupted()),
        Err(e @ HttpError::TimedOut { after, .. }) => Ok(urls
            .iter()
            .map(|url| Report {
                url: url.clone(),
                error: Some(e.to_string()),
                latency_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                ..Report::default()
            })
            .collect()),
    }
}

fn log_report(session: &crate::session::Session, r: &Report) {
    let level = if r.ok { Level::Info } else { Level::Warn };
    session
        .effects
        .output()
        .log(level, format!("health: {}", r.line()));
}

fn check_many(
    ctx: &NativeCallContext,
    urls: Vec<String>,
    opts: &Map,
) -> Result<Map, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let o = options(opts)?;
    let urls: Vec<String> = urls
        .iter()
        .map(|u| absolute(&session, u))
        .collect::<Result<_, _>>()?;
    let client = core::client(&o).map_err(|e| super::error(e.to_string()))?;
    let reports = checks(&session, &client, &urls, &o)?;
    let mut table = String::new();
    for r in &reports {
        log_report(&session, r);
        table.push_str(&r.line());
        table.push('\n');
    }
    let mut m = Map::new();
    m.insert("ok".into(), reports.iter().all(|r| r.ok).into());
    m.insert(
        "failures".into(),
        i64::try_from(reports.iter().filter(|r| !r.ok).count())
            .unwrap_or(0)
            .into(),
    );
    m.insert(
        "reports".into(),
        reports
            .iter()
            .map(|r| Dynamic::from(report_map(r)))
            .collect::<Array>()
            .into(),
    );
    m.insert("table".into(), table.into());
    Ok(m)
}

fn check_one(ctx: &NativeCallContext, url: &str, opts: &Map) -> Result<Map, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    let o = options(opts)?;
    let url = absolute(&session, url)?;
    let client = core::client(&o).map_err(|e| super::error(e.to_string()))?;
    let reports = checks(&session, &client, std::slice::from_ref(&url), &o)?;
    let r = reports.first().cloned().unwrap_or_default();
    log_report(&session, &r);
    Ok(report_map(&r))
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod health_api {
    /// Checks one URL (a path like "/api/health" is joined to the environment's `url`).
    /// Returns `#{ ok, status, latency_ms, body, json, error, attempts, address, url,
    /// final_url }` (`final_url`: where the answer came from, after redirects);
    /// never throws for an unhealthy answer — scripts branch on `ok`.
    #[rhai_fn(name = "check", return_raw)]
    pub fn check(ctx: NativeCallContext, url: &str) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::check_one(&ctx, url, &Map::new()))
    }

    /// `health::check` with options: `expect` (status or list; default 2xx), `timeout`
    /// ("5s"), `retries`, `backoff`, `deadline`, `consecutive` (successes in a row),
    /// `max_latency` ("1s"), `json` (#{ "status": "ok", "release": name }: dotted paths),
    /// `headers` (e.g. #{ Host: "api.example.com" }), `ca_file`, `client_cert`, `insecure`,
    /// `follow_redirects` (also to other hosts; same-host redirects are always followed).
    #[rhai_fn(name = "check", return_raw)]
    pub fn check_opts(
        ctx: NativeCallContext,
        url: &str,
        opts: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::check_one(&ctx, url, &opts))
    }

    /// Checks every URL at once: `#{ ok, failures, reports: [...], table }`.
    #[rhai_fn(name = "check_all", return_raw)]
    pub fn check_all(
        ctx: NativeCallContext,
        urls: Array,
        opts: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        let urls = urls.iter().map(ToString::to_string).collect();
        crate::modules::located(&ctx, super::check_many(&ctx, urls, &opts))
    }

    /// Checks `path` on every host's own `url` (runbook.toml `hosts.NAME.url`) at once —
    /// one backend at a time, before traffic moves.
    #[rhai_fn(name = "check_hosts", return_raw)]
    pub fn check_hosts(
        ctx: NativeCallContext,
        hosts: Dynamic,
        path: &str,
        opts: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        let result = crate::modules::exec::targets(&hosts).and_then(|(targets, _)| {
            let urls = targets
                .iter()
                .map(|t| match t {
                    crate::effects::Target::Host(h) => h
                        .url
                        .as_ref()
                        .map(|u| format!("{}{path}", u.trim_end_matches('/')))
                        .ok_or_else(|| {
                            crate::modules::error(format!(
                                "host `{}` has no `url` in runbook.toml",
                                h.name
                            ))
                        }),
                    crate::effects::Target::Local => Err(crate::modules::error("not a host")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            super::check_many(&ctx, urls, &opts)
        });
        crate::modules::located(&ctx, result)
    }

    /// Says out loud that a switch could not be verified and why (e.g. "no url"): a
    /// warning now, and the run's last line says "not verified: WHY" instead of a bare
    /// success. Strategies call it when the inventory gives nothing to check.
    #[rhai_fn(return_raw)]
    pub fn not_verified(ctx: NativeCallContext, why: &str) -> Result<(), Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        session
            .effects
            .output()
            .log(crate::output::Level::Warn, format!("not verified: {why}"));
        session.facts.locked().unverified = Some(why.to_owned());
        Ok(())
    }

    /// Waits until `url` is healthy, retrying with backoff for at most `deadline`.
    #[rhai_fn(name = "wait", return_raw)]
    pub fn wait(
        ctx: NativeCallContext,
        url: &str,
        deadline: Dynamic,
    ) -> Result<Map, Box<EvalAltResult>> {
        let mut opts = Map::new();
        opts.insert("deadline".into(), deadline);
        opts.insert("retries".into(), 1_000_000_i64.into());
        crate::modules::located(&ctx, super::check_one(&ctx, url, &opts))
    }

    /// Sends `rate` requests per second for `window` ("60s") and returns
    /// `#{ requests, errors, success_rate, p50_ms, p95_ms, p99_ms }` (check options apply).
    #[rhai_fn(name = "sample", return_raw)]
    pub fn sample(ctx: NativeCallContext, url: &str, opts: Map) -> Result<Map, Box<EvalAltResult>> {
        let result = (|| {
            let session = crate::modules::session(&ctx)?;
            let o = super::options(&opts)?;
            let rate = opts.get("rate").and_then(|r| r.as_int().ok()).unwrap_or(10);
            let window = opts
                .get("window")
                .map(super::duration_arg)
                .transpose()?
                .unwrap_or(std::time::Duration::from_secs(10));
            let url = super::absolute(&session, url)?;
            let client =
                crate::health::client(&o).map_err(|e| crate::modules::error(e.to_string()))?;
            let s = session
                .effects
                .http_read(
                    "health",
                    Some(crate::health::sample_bound(window, &o)),
                    crate::health::sample(
                        &client,
                        &url,
                        u32::try_from(rate).unwrap_or(10),
                        window,
                        &o,
                    ),
                )
                .map_err(super::stopped)?;
            let mut m = Map::new();
            m.insert(
                "requests".into(),
                i64::try_from(s.requests).unwrap_or(0).into(),
            );
            m.insert("errors".into(), i64::try_from(s.errors).unwrap_or(0).into());
            m.insert("success_rate".into(), s.success_rate.into());
            m.insert("p50_ms".into(), i64::try_from(s.p50_ms).unwrap_or(0).into());
            m.insert("p95_ms".into(), i64::try_from(s.p95_ms).unwrap_or(0).into());
            m.insert("p99_ms".into(), i64::try_from(s.p99_ms).unwrap_or(0).into());
            session.effects.output().log(
                crate::output::Level::Info,
                format!(
                    "health: sampled {url}: {} requests, {:.2}% ok, p95 {} ms",
                    s.requests, s.success_rate, s.p95_ms
                ),
            );
            Ok(m)
        })();
        crate::modules::located(&ctx, result)
    }

    /// An exec probe: runs `argv` on a host or set (exit 0 = healthy) and returns
    /// `#{ ok, results: [...] }` without throwing.
    #[rhai_fn(name = "command", return_raw)]
    pub fn command(
        ctx: NativeCallContext,
        hosts: Dynamic,
        argv: Array,
    ) -> Result<Map, Box<EvalAltResult>> {
        let mut opts = Map::new();
        opts.insert("tolerate".into(), true.into());
        opts.insert("fail".into(), "continue".into());
        opts.insert("max_fail".into(), 100_i64.into());
        let argv = argv.iter().map(ToString::to_string).collect();
        let result = crate::modules::exec::run_on(
            &ctx,
            &hosts,
            crate::transport::Program::Argv(argv),
            &opts,
        )
        .map(|r| {
            let results = r.clone().try_cast::<Array>().unwrap_or_else(|| vec![r]);
            let ok = results.iter().all(|x| {
                x.clone()
                    .try_cast::<Map>()
                    .and_then(|m| m.get("ok").and_then(|o| o.as_bool().ok()))
                    .unwrap_or(false)
            });
            let mut m = Map::new();
            m.insert("ok".into(), ok.into());
            m.insert("results".into(), results.into());
            m
        });
        crate::modules::located(&ctx, result)
    }
}
