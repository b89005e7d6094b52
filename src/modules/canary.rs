//! `canary::*` — the canary judge for scripts (plain core: `crate::judge`), and the
//! rollout's state and control requests on the hosts (plain core: `crate::rollout`).
//!
//! The judge is pure: the script reads the access log (over SSH) or asks Prometheus, and
//! hands the text or the numbers here. The `rollout_*` functions keep the running
//! canary's state next to the deploy lock and obey what `runbook rollout` asks; in a dry
//! run they write nothing.

use crate::num::ToF64;
use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};
use std::sync::{Arc, Mutex};

use super::context::duration_arg;
use crate::effects::Target;
use crate::judge::{self as core, Options, PoolStats, Reading, Report, Values};
use crate::output::Level;
use crate::rollout::{self, Action, Phase, Pool, State};

/// A running rollout (`canary::rollout`): its state, and the hosts that keep it. Clones
/// share one state.
#[derive(Clone)]
pub(super) struct Rollout(Arc<Mutex<Inner>>);

struct Inner {
    state: State,
    targets: Vec<Target>,
    dry_run: bool,
}

pub(super) fn register_types(engine: &mut rhai::Engine) {
    engine
        .register_type_with_name::<Rollout>("Rollout")
        .register_get("weight", |r: &mut Rollout| r.with(|i| i.state.weight))
        .register_get("phase", |r: &mut Rollout| {
            r.with(|i| i.state.phase.as_str().to_owned())
        })
        .register_get("request", |r: &mut Rollout| {
            r.with(|i| last_request(&i.state))
        });
}

impl Rollout {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Records the state on the hosts (a host that fails is warned about, not fatal: the
    /// rollout itself goes on, only steering it from there is lost).
    fn save(&self, session: &crate::session::Session) {
        let (state, targets, dry) = self.with(|i| {
            i.state.updated_ms = rollout::now_ms();
            (i.state.clone(), i.targets.clone(), i.dry_run)
        });
        if dry {
            return;
        }
        for (host, why) in rollout::write(&session.effects, &targets, &state) {
            session.effects.output().log(
                Level::Warn,
                format!("{host}: could not record the rollout's state ({why}): `runbook rollout` cannot read or steer it there"),
            );
        }
    }
}

/// The last promote or abort request obeyed: `#{ action, actor, reason }` or `()`.
fn last_request(s: &State) -> Dynamic {
    s.requests
        .iter()
        .rev()
        .find(|r| matches!(r.action, Action::Promote | Action::Abort))
        .map_or(Dynamic::UNIT, |r| {
            let mut m = Map::new();
            m.insert("action".into(), r.action.as_str().into());
            m.insert("actor".into(), r.actor.clone().into());
            m.insert(
                "reason".into(),
                r.reason.clone().map_or(Dynamic::UNIT, Dynamic::from),
            );
            m.into()
        })
}

fn names(targets: &[Target]) -> Vec<String> {
    targets.iter().map(|t| t.name().to_owned()).collect()
}

/// Sleeps `d`, ended early by Ctrl-C / SIGTERM.
fn nap(
    session: &crate::session::Session,
    d: std::time::Duration,
) -> Result<(), Box<EvalAltResult>> {
    session.effects.sleep(d).map_err(|_| super::interrupted())
}

/// Obeys the requests taken from the hosts; returns a promote or abort, if asked.
fn obey(session: &crate::session::Session, ro: &Rollout) -> Option<Action> {
    let targets = ro.with(|i| i.targets.clone());
    let taken = rollout::take(&session.effects, &targets);
    let mut decided = None;
    for mut r in taken {
        if ro.with(|i| i.state.requests.iter().any(|x| x.id == r.id)) {
            continue;
        }
        let now = rollout::now_ms();
        let (said, level) = ro.with(|i| {
            let s = &mut i.state;
            let left = s.window_left_s(now).unwrap_or(0);
            let said = match r.action {
                // Taken in the same look as a promote or abort: recorded, not obeyed.
                _ if decided.is_some() => format!("ignored: already {}", s.phase.as_str()),
                Action::Pause if s.paused_at_ms.is_some() => "ignored: already paused".to_owned(),
                Action::Pause => {
                    s.paused_at_ms = Some(now);
                    s.phase = Phase::Paused;
                    format!("paused at {}% with {left} s left in the window", s.weight)
                }
                Action::Resume => match s.paused_at_ms.take() {
                    None => "ignored: not paused".to_owned(),
                    Some(at) => {
                        s.window_started_ms += now - at;
                        s.phase = Phase::Running;
                        format!("resumed at {}% with {left} s left in the window", s.weight)
                    }
                },
                Action::Promote => {
                    s.paused_at_ms = None;
                    s.phase = Phase::Promoting;
                    decided = Some(Action::Promote);
                    format!("promoting from {}%", s.weight)
                }
                Action::Abort => {
                    s.paused_at_ms = None;
                    s.phase = Phase::Aborting;
                    decided = Some(Action::Abort);
                    format!("aborting at {}%", s.weight)
                }
            };
            r.obeyed_at = Some(rollout::now_rfc3339());
            r.outcome = Some(said.clone());
            s.requests.push(r.clone());
            let level = if said.starts_with("ignored") {
                Level::Info
            } else {
                Level::Warn
            };
            (said, level)
        });
        session.effects.output().log(
            level,
            format!(
                "rollout: {} asked by {}{}: {said}",
                r.action.as_str(),
                r.actor,
                r.reason
                    .as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            ),
        );
        ro.save(session);
    }
    decided
}

fn pool_of(v: Option<&Dynamic>) -> Pool {
    let Some(m) = v.and_then(|d| d.clone().try_cast::<Map>()) else {
        return Pool::default();
    };
    let num = |k: &str| m.get(k).and_then(float).filter(|x| x.is_finite());
    Pool {
        requests: m
            .get("requests")
            .and_then(|d| d.as_int().ok())
            .and_then(|n| u64::try_from(n).ok()),
        success: num("success"),
        p95: num("p95"),
    }
}

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
        .or_else(|| v.as_int().ok().map(ToF64::to_f64))
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
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod canary_api {
    use super::{Rollout, rollout};

    /// Begins recording a rollout on the hosts of `web` (the pool that keeps its state,
    /// next to the deploy lock: `<deploy_path>/.runbook/rollout`), for `runbook rollout
    /// status|pause|resume|promote|abort`. `all` are the hosts the run locked. Options:
    /// `release` (the staged release), `version`, `steps` (percentages), `strategy`
    /// ("canary"). Returns the `Rollout` the other `canary::rollout_*` functions take.
    #[rhai_fn(return_raw)]
    pub fn rollout(
        ctx: NativeCallContext,
        web: Dynamic,
        all: Dynamic,
        opts: Map,
    ) -> Result<Rollout, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let (targets, _) = crate::modules::exec::targets(&web)?;
        let (locked, _) = crate::modules::exec::targets(&all)?;
        let text = |k: &str| opts.get(k).map(ToString::to_string).unwrap_or_default();
        let steps = opts
            .get("steps")
            .and_then(|s| s.clone().try_cast::<Array>())
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d.as_int().ok())
            .collect();
        let holder = crate::modules::lock::holder(&session);
        let state = rollout::State {
            run: holder.run,
            actor: holder.actor,
            machine: holder.machine,
            pid: holder.pid,
            env: session
                .env
                .as_ref()
                .map(|e| e.name.clone())
                .unwrap_or_default(),
            strategy: opts
                .get("strategy")
                .map_or("canary".to_owned(), ToString::to_string),
            release: text("release"),
            version: text("version"),
            hosts: super::names(&targets),
            locked: super::names(&locked),
            steps,
            started_at: rollout::now_rfc3339(),
            ..rollout::State::default()
        };
        let ro = Rollout(std::sync::Arc::new(std::sync::Mutex::new(super::Inner {
            state,
            targets,
            dry_run: session.effects.dry_run(),
        })));
        ro.save(&session);
        Ok(ro)
    }

    /// Records that step `step` (1-based) now sends `weight` % of cohorts to the canary.
    #[rhai_fn(return_raw)]
    pub fn rollout_step(
        ctx: NativeCallContext,
        ro: Rollout,
        step: i64,
        weight: i64,
    ) -> Result<(), Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        ro.with(|i| {
            let s = &mut i.state;
            s.step = usize::try_from(step).unwrap_or(0);
            s.weight = weight;
            if matches!(s.phase, rollout::Phase::Starting) {
                s.phase = rollout::Phase::Running;
            }
            s.window_s = 0;
            s.window_started_ms = 0;
        });
        ro.save(&session);
        Ok(())
    }

    /// Records that a monitor window of `seconds` begins now (`runbook rollout status`
    /// shows the time left in it).
    #[rhai_fn(return_raw)]
    pub fn rollout_window(
        ctx: NativeCallContext,
        ro: Rollout,
        seconds: i64,
    ) -> Result<(), Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        ro.with(|i| {
            i.state.window_s = u64::try_from(seconds).unwrap_or(0);
            i.state.window_started_ms = rollout::now_ms();
            if let Some(p) = i.state.paused_at_ms.as_mut() {
                *p = i.state.window_started_ms;
            }
        });
        ro.save(&session);
        Ok(())
    }

    /// Waits `seconds` of the window, looking for control requests every second: a
    /// `pause` stops the clock (the wait lasts until `resume`), a `promote` or `abort`
    /// ends the wait at once. Returns "" (the time is up), "promote" or "abort" (who
    /// asked, and why: `ro.request`). Ctrl-C ends the wait. A dry run does not wait.
    #[rhai_fn(return_raw)]
    pub fn rollout_wait(
        ctx: NativeCallContext,
        ro: Rollout,
        seconds: Dynamic,
    ) -> Result<String, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let mut left = duration_arg(&seconds)?;
        if ro.with(|i| i.dry_run) {
            return Ok(String::new());
        }
        loop {
            let paused = ro.with(|i| i.state.paused_at_ms.is_some());
            let tick = if paused {
                rollout::POLL
            } else {
                left.min(rollout::POLL)
            };
            if !tick.is_zero() {
                super::nap(&session, tick)?;
            }
            if !paused {
                left = left.saturating_sub(tick);
            }
            if let Some(action) = super::obey(&session, &ro) {
                return Ok(action.as_str().to_owned());
            }
            if left.is_zero() && ro.with(|i| i.state.paused_at_ms.is_none()) {
                return Ok(String::new());
            }
        }
    }

    /// Records a window's verdict (the map `canary::judge` returns) with both pools.
    #[rhai_fn(return_raw)]
    pub fn rollout_judged(
        ctx: NativeCallContext,
        ro: Rollout,
        verdict: Map,
    ) -> Result<(), Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let reasons = verdict
            .get("reasons")
            .and_then(|r| r.clone().try_cast::<Array>())
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        let outcome = verdict
            .get("outcome")
            .map(ToString::to_string)
            .unwrap_or_default();
        ro.with(|i| {
            let j = rollout::Judgement {
                step: i.state.step,
                weight: i.state.weight,
                outcome,
                reasons,
                canary: super::pool_of(verdict.get("canary")),
                stable: super::pool_of(verdict.get("stable")),
                at: rollout::now_rfc3339(),
            };
            i.state.judgements.push(j);
        });
        ro.save(&session);
        Ok(())
    }

    /// Records how the rollout ended: "promoted", "aborted" or "failed" (requests still
    /// pending are dropped: nothing will obey them).
    #[rhai_fn(return_raw)]
    pub fn rollout_end(
        ctx: NativeCallContext,
        ro: Rollout,
        phase: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let p = rollout::Phase::parse(phase)
            .filter(|p| p.ended())
            .ok_or_else(|| {
                crate::modules::error(format!(
                    "a rollout ends \"promoted\", \"aborted\" or \"failed\", not \"{phase}\""
                ))
            })?;
        ro.with(|i| {
            i.state.phase = p;
            i.state.paused_at_ms = None;
        });
        ro.save(&session);
        if !ro.with(|i| i.dry_run) {
            rollout::clear(&session.effects, &ro.with(|i| i.targets.clone()));
        }
        Ok(())
    }

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
        let o = crate::modules::located(&ctx, super::options(&opts))?;
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
        let (v, o) = crate::modules::located(&ctx, read)?;
        Ok(super::report(&core::judge_values(&v, &o)))
    }
}

#[cfg(test)]
mod tests {
    use rhai::{Engine, Map, exported_module};
    use std::fmt::Write as _;

    fn engine() -> Engine {
        let mut e = Engine::new();
        e.register_static_module("canary", exported_module!(super::canary_api).into());
        e
    }

    #[test]
    fn a_script_judging_a_log_gets_the_map() {
        let mut script = String::from("let log = `");
        for i in 0..200 {
            let _ = writeln!(
                script,
                "1000.{i:03} next 200 0.010\n1000.{i:03} stable 200 0.010"
            );
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
