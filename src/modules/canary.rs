//! `canary::*` — the canary judge for scripts (plain core: `crate::judge`).
//!
//! Pure functions: the script reads the access log (over SSH) or asks Prometheus, and hands
//! the text or the numbers here. Nothing is sent, so dry-run needs no special case.

use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};

use super::context::duration_arg;
use crate::judge::{self as core, Options, PoolStats, Reading, Report, Values};

const OPTIONS: &[&str] = &[
    "since",
    "until",
    "min_requests",
    "success_rate",
    "p95",
    "p99",
    "error_margin",
    "latency_effect",
    "alpha",
    "latency_ratio",
];

const VALUES: &[&str] = &[
    "canary_success",
    "stable_success",
    "canary_p95",
    "canary_p99",
    "stable_p95",
    "stable_p99",
    "canary_requests",
    "stable_requests",
];

fn float(v: &Dynamic) -> Option<f64> {
    v.as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as f64))
}

fn options(opts: &Map) -> Result<Options, Box<EvalAltResult>> {
    let mut o = Options::default();
    for (k, v) in opts {
        let bad = |what: &str| {
            super::error(format!(
                "canary option `{k}` must be {what}, got {}",
                v.type_name()
            ))
        };
        let number = || float(v).ok_or_else(|| bad("a number"));
        match k.as_str() {
            "since" => o.since = Some(number()?),
            "until" => o.until = Some(number()?),
            "min_requests" => {
                o.min_requests = v
                    .as_int()
                    .ok()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| bad("a whole number of requests"))?;
            }
            "success_rate" => o.success_rate = number()?,
            "p95" => o.p95 = duration_arg(v)?.as_secs_f64(),
            "p99" => o.p99 = duration_arg(v)?.as_secs_f64(),
            "error_margin" => o.error_margin = number()?,
            "latency_effect" => o.latency_effect = number()?,
            "alpha" => o.alpha = number()?,
            "latency_ratio" => o.latency_ratio = number()?,
            other => {
                return Err(super::error(format!(
                    "unknown canary option `{other}` (options: {})",
                    OPTIONS.join(", ")
                )));
            }
        }
    }
    o.validate().map_err(|e| super::error(e.to_string()))?;
    Ok(o)
}

fn values(map: &Map) -> Result<Values, Box<EvalAltResult>> {
    let mut v = Values::default();
    for (k, x) in map {
        let reading = if x.is_unit() {
            Reading::NoSeries
        } else {
            Reading::Value(float(x).ok_or_else(|| {
                super::error(format!(
                    "canary value `{k}` must be a number or () for no series, got {}",
                    x.type_name()
                ))
            })?)
        };
        let slot = match k.as_str() {
            "canary_success" => &mut v.canary_success,
            "stable_success" => &mut v.stable_success,
            "canary_p95" => &mut v.canary_p95,
            "canary_p99" => &mut v.canary_p99,
            "stable_p95" => &mut v.stable_p95,
            "stable_p99" => &mut v.stable_p99,
            "canary_requests" => &mut v.canary_requests,
            "stable_requests" => &mut v.stable_requests,
            other => {
                return Err(super::error(format!(
                    "unknown canary value `{other}` (values: {})",
                    VALUES.join(", ")
                )));
            }
        };
        *slot = reading;
    }
    Ok(v)
}

fn pool(s: &PoolStats) -> Map {
    let count = |n: Option<u64>| {
        n.and_then(|n| i64::try_from(n).ok())
            .map_or(Dynamic::UNIT, Dynamic::from_int)
    };
    let mut m = Map::new();
    m.insert("requests".into(), count(s.requests));
    m.insert("errors".into(), count(s.errors));
    m.insert("success".into(), Dynamic::from_float(s.success));
    m.insert("p95".into(), Dynamic::from_float(s.p95));
    m.insert("p99".into(), Dynamic::from_float(s.p99));
    m
}

fn report(r: &Report) -> Map {
    let mut m = Map::new();
    m.insert("outcome".into(), r.outcome.as_str().into());
    let reasons: Array = r.reasons.iter().map(|x| x.to_string().into()).collect();
    m.insert("reasons".into(), reasons.into());
    m.insert("canary".into(), pool(&r.canary).into());
    m.insert("stable".into(), pool(&r.stable).into());
    let latency = r.latency.map_or(Dynamic::UNIT, |t| {
        let mut l = Map::new();
        l.insert("effect".into(), Dynamic::from_float(t.effect));
        l.insert("p_value".into(), Dynamic::from_float(t.p_value));
        l.insert("z".into(), Dynamic::from_float(t.z));
        l.insert("u".into(), Dynamic::from_float(t.u));
        l.into()
    });
    m.insert("latency".into(), latency);
    let lines = r.lines.map_or(Dynamic::UNIT, |l| {
        let n = |x: u64| Dynamic::from_int(i64::try_from(x).unwrap_or(i64::MAX));
        let mut c = Map::new();
        c.insert("judged".into(), n(l.judged));
        c.insert("malformed".into(), n(l.malformed));
        c.insert("outside".into(), n(l.outside));
        c.insert("other_pool".into(), n(l.other_pool));
        c.into()
    });
    m.insert("lines".into(), lines);
    m.insert("report".into(), r.to_string().into());
    m
}

#[export_module]
pub mod canary_api {
    /// Judges one window of the balancer's access log (`log_format runbook '$msec
    /// $runbook_pool $status $request_time'`): the `next` pool (canary) against `stable`.
    /// Options: `since`/`until` (epoch seconds; lines outside are not judged),
    /// `min_requests` (100: fewer canary requests are inconclusive), `success_rate`
    /// (percent of non-5xx, 99.5), `p95`/`p99` (canary latency gates, "1s"),
    /// `error_margin` (percentage points the canary's errors may exceed stable's, 0.25),
    /// `latency_effect` (P(canary request slower) above which a significantly slower
    /// canary fails, 0.6), `alpha` (significance, 0.01). Returns `#{ outcome: "pass" |
    /// "fail" | "inconclusive", reasons: [..], canary: #{ requests, errors, success, p95,
    /// p99 }, stable: #{..}, latency: #{ effect, p_value, z, u } or (), lines: #{ judged,
    /// malformed, outside, other_pool }, report }` (`report` is a table of both pools).
    #[rhai_fn(return_raw)]
    pub fn judge(
        ctx: NativeCallContext,
        log_text: &str,
        opts: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        let o = super::super::located(&ctx, super::options(&opts))?;
        Ok(super::report(&core::judge_log(log_text.as_bytes(), &o)))
    }

    /// Judges one window from numbers (PromQL answers): `#{ canary_success, stable_success
    /// (percent), canary_p95, canary_p99, stable_p95, stable_p99 (seconds), canary_requests,
    /// stable_requests }`. `canary_success` is required; a value that is `()` (no series),
    /// `NaN` or infinite makes the window inconclusive, never a pass; an absent key's gate
    /// is not checked. Options as `canary::judge`, plus `latency_ratio` (1.5: the canary's
    /// p95/p99 may be at most that many times stable's). Returns the same map as
    /// `canary::judge` (`latency` and `lines` are `()`).
    #[rhai_fn(return_raw)]
    pub fn judge_values(
        ctx: NativeCallContext,
        values: Map,
        opts: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        let read = super::values(&values).and_then(|v| Ok((v, super::options(&opts)?)));
        let (v, o) = super::super::located(&ctx, read)?;
        Ok(super::report(&core::judge_values(&v, &o)))
    }
}

#[cfg(test)]
mod tests {
    use rhai::{Engine, Map, exported_module};

    fn engine() -> Engine {
        let mut e = Engine::new();
        e.register_static_module("canary", exported_module!(super::canary_api).into());
        e
    }

    #[test]
    fn a_script_judging_a_log_gets_the_map() {
        let mut script = String::from("let log = `");
        for i in 0..200 {
            script.push_str(&format!(
                "1000.{i:03} next 200 0.010\n1000.{i:03} stable 200 0.010\n"
            ));
        }
        script.push_str("1000.500 next 503 0.002\nnot a line\n`;\n");
        script.push_str("canary::judge(log, #{ since: 1000, p95: \"500ms\" })");
        let m: Map = engine().eval(&script).expect("the script runs");
        assert_eq!(m["outcome"].to_string(), "pass", "{m:?}");
        let canary = m["canary"].clone_cast::<Map>();
        assert_eq!(canary["requests"].as_int(), Ok(201));
        assert_eq!(canary["errors"].as_int(), Ok(1));
        let stable = m["stable"].clone_cast::<Map>();
        assert_eq!(stable["success"].as_float(), Ok(100.0));
        let lines = m["lines"].clone_cast::<Map>();
        assert_eq!(lines["malformed"].as_int(), Ok(1));
        assert!(m["report"].to_string().starts_with("pool"), "{m:?}");
        assert!(m["latency"].is_map());
    }

    #[test]
    fn a_script_judging_numbers_gets_inconclusive_for_nan_and_no_series() {
        let e = engine();
        let m: Map = e
            .eval("canary::judge_values(#{ canary_success: 0.0 / 0.0 }, #{})")
            .expect("runs");
        assert_eq!(m["outcome"].to_string(), "inconclusive", "{m:?}");
        let m: Map = e
            .eval("canary::judge_values(#{ canary_success: 99.9, canary_p95: () }, #{})")
            .expect("runs");
        assert_eq!(m["outcome"].to_string(), "inconclusive", "{m:?}");
        let reasons = m["reasons"].clone().into_array().expect("an array");
        assert!(reasons[0].to_string().contains("canary_p95"), "{reasons:?}");
        let m: Map = e
            .eval(
                "canary::judge_values(#{ canary_success: 99.0, stable_success: 99.9 }, \
                 #{ success_rate: 98.5 })",
            )
            .expect("runs");
        assert_eq!(m["outcome"].to_string(), "fail", "{m:?}");
        let m: Map = e
            .eval("canary::judge_values(#{ canary_success: 99.9, canary_requests: 500 }, #{})")
            .expect("runs");
        assert_eq!(m["outcome"].to_string(), "pass", "{m:?}");
    }

    #[test]
    fn bad_options_say_which_and_what_is_expected() {
        let e = engine();
        let err = e
            .eval::<Map>("canary::judge(``, #{ succes_rate: 99 })")
            .expect_err("a typo");
        assert!(
            err.to_string()
                .contains("unknown canary option `succes_rate`"),
            "{err}"
        );
        let err = e
            .eval::<Map>("canary::judge(``, #{ success_rate: 150 })")
            .expect_err("out of range");
        assert!(err.to_string().contains("success_rate"), "{err}");
        let err = e
            .eval::<Map>("canary::judge_values(#{ canary_success: \"high\" }, #{})")
            .expect_err("not a number");
        assert!(err.to_string().contains("canary_success"), "{err}");
    }
}
