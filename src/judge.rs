//! The canary judge: is the canary pool as healthy as the stable pool, and healthy at all,
//! in one window of real traffic?
//!
//! Plain Rust (no Rhai, no I/O): it reads text it is handed — the balancer's access log —
//! or numbers — Prometheus' answers — and returns a [`Report`] with one of three outcomes.
//! It must never call a window a pass that it could not measure: `NaN`, `±Inf`, a missing
//! series, no canary traffic or fewer than [`Options::min_requests`] canary requests are
//! [`Outcome::Inconclusive`], whatever else the numbers say.
//!
//! # The access-log format
//!
//! The balancer (`examples/nginx/lb.conf`) writes one line per request:
//!
//! ```text
//! log_format runbook '$msec $runbook_pool $status $request_time';
//! access_log /var/log/nginx/runbook.log runbook;
//! ```
//!
//! e.g. `1767225600.123 next 200 0.042`: the time the request ended (epoch seconds with
//! milliseconds), the pool that served it (`next` is the canary, `stable` the current
//! release — the names `$runbook_pool` takes in the split the traffic module writes), the
//! status, and the request time in seconds. Fields are separated by spaces or tabs;
//! fields after the fourth are ignored (room to add some later). A line that does not
//! parse is counted ([`Lines::malformed`]) and skipped, a line of another pool is counted
//! and skipped, and lines outside `[since, until)` are not judged.
//!
//! # Gates
//!
//! *Success* is the share of requests that did not answer 5xx: a 4xx is the client's
//! mistake (and a 499 a client that gave up), so it counts as a success, as the seed's
//! success rate does. Absolute gates (the seed's): canary success ≥ 99.5 %, canary p95 and
//! p99 ≤ 1 s. Relative gates, against stable in the same window:
//! - errors: the canary's error rate must not exceed stable's by more than
//!   [`Options::error_margin`] percentage points (0.25) *with evidence*: a one-sided
//!   two-proportion z-test at [`Options::alpha`] (0.01), so three unlucky requests do not
//!   fail a step, but a canary failing 0.45 % of 20,000 requests against stable's 0.05 % does;
//! - latency: a one-sided Mann–Whitney U test (normal approximation, tie-corrected, on every
//!   request time of both pools) must find the canary slower at `alpha` *and* the effect
//!   must be large enough: the common-language effect size — the chance that a canary
//!   request is slower than a stable one, ties counted half — above
//!   [`Options::latency_effect`] (0.6; 0.5 is no difference, 0.6 is about a fifth slower
//!   for a typical latency spread). A significant but tiny difference does not fail.
//!
//! A canary as bad as stable during a global incident (both at 3 % errors) passes the
//! relative gates but fails the absolute one: the judge does not promote a release into an
//! incident; the operator decides (`rollout promote`).
//!
//! From numbers ([`judge_values`]) the latency comparison is a ratio of quantiles
//! ([`Options::latency_ratio`], 1.5×), since there is no distribution to rank.

use crate::num::ToF64;
use std::fmt;

/// The thresholds of a judgement. Percentages are in percent (99.5), times in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Options {
    /// Judge only lines at or after this time (epoch seconds, `$msec`).
    pub since: Option<f64>,
    /// Judge only lines before this time.
    pub until: Option<f64>,
    /// Fewer canary requests than this are inconclusive (and fewer stable requests leave
    /// the comparison unjudged: inconclusive unless an absolute gate already failed).
    pub min_requests: u64,
    /// The lowest canary success rate that passes, in percent.
    pub success_rate: f64,
    /// The highest canary p95 latency that passes, in seconds.
    pub p95: f64,
    /// The highest canary p99 latency that passes, in seconds.
    pub p99: f64,
    /// How many percentage points the canary's error rate may exceed stable's.
    pub error_margin: f64,
    /// The common-language effect size (P(canary slower)) above which a significantly
    /// slower canary fails.
    pub latency_effect: f64,
    /// The significance level of the relative tests.
    pub alpha: f64,
    /// From numbers: the canary's p95/p99 may be at most this many times stable's.
    pub latency_ratio: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            since: None,
            until: None,
            min_requests: 100,
            success_rate: 99.5,
            p95: 1.0,
            p99: 1.0,
            error_margin: 0.25,
            latency_effect: 0.6,
            alpha: 0.01,
            latency_ratio: 1.5,
        }
    }
}

/// An option outside its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("canary judge option `{name}` must be {expected}, got {value}")]
pub(crate) struct InvalidOption {
    pub name: &'static str,
    pub value: f64,
    pub expected: &'static str,
}

impl Options {
    /// Checks every threshold is a number in its range (a `NaN` threshold would pass all).
    pub(crate) fn validate(&self) -> Result<(), InvalidOption> {
        let checks: [(&'static str, f64, bool, &'static str); 9] = [
            (
                "success_rate",
                self.success_rate,
                self.success_rate > 0.0 && self.success_rate <= 100.0,
                "a percentage above 0 and at most 100",
            ),
            (
                "p95",
                self.p95,
                self.p95 > 0.0,
                "a positive number of seconds",
            ),
            (
                "p99",
                self.p99,
                self.p99 > 0.0,
                "a positive number of seconds",
            ),
            (
                "error_margin",
                self.error_margin,
                (0.0..=100.0).contains(&self.error_margin),
                "percentage points from 0 to 100",
            ),
            (
                "latency_effect",
                self.latency_effect,
                (0.5..1.0).contains(&self.latency_effect),
                "at least 0.5 and below 1 (0.5 is no difference)",
            ),
            (
                "alpha",
                self.alpha,
                self.alpha > 0.0 && self.alpha < 0.5,
                "above 0 and below 0.5",
            ),
            (
                "latency_ratio",
                self.latency_ratio,
                self.latency_ratio >= 1.0 && self.latency_ratio.is_finite(),
                "a finite ratio of at least 1",
            ),
            (
                "since",
                self.since.unwrap_or(0.0),
                self.since.is_none_or(f64::is_finite),
                "epoch seconds",
            ),
            (
                "until",
                self.until.unwrap_or(0.0),
                self.until.is_none_or(f64::is_finite),
                "epoch seconds",
            ),
        ];
        for (name, value, ok, expected) in checks {
            if !ok {
                return Err(InvalidOption {
                    name,
                    value,
                    expected,
                });
            }
        }
        Ok(())
    }
}

/// Which pool a number belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    Canary,
    Stable,
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pool::Canary => "canary",
            Pool::Stable => "stable",
        })
    }
}

/// The verdict on one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass,
    Fail,
    /// Not measurable (no data, too little, `NaN`/`Inf`): never a pass.
    Inconclusive,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a window is not a pass. [`Reason::fails`] says whether it fails the window or only
/// makes it inconclusive.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reason {
    /// A number the judgement needs has no series (a query answered nothing).
    Missing { what: &'static str },
    /// A number is `NaN` or `±Inf` (Prometheus' 0/0 or x/0).
    NotFinite { what: &'static str, value: f64 },
    /// Too little traffic in the window to judge.
    TooFewRequests { pool: Pool, requests: u64, min: u64 },
    /// Absolute: the canary's success rate is below the gate.
    SuccessBelow { success: f64, min: f64 },
    /// Absolute: a canary latency quantile is above the gate.
    LatencyAbove {
        quantile: u8,
        seconds: f64,
        max: f64,
    },
    /// Relative: the canary fails more often than stable, beyond the margin.
    ErrorsWorse {
        canary: f64,
        stable: f64,
        margin: f64,
        p_value: Option<f64>,
    },
    /// Relative: the canary's request times are slower than stable's (Mann–Whitney).
    SlowerThanStable {
        effect: f64,
        threshold: f64,
        p_value: f64,
    },
    /// Relative, from numbers: a canary quantile is more than `ratio` times stable's.
    QuantileRatio {
        quantile: u8,
        canary: f64,
        stable: f64,
        ratio: f64,
    },
}

impl Reason {
    /// True when the reason fails the window; false when it makes it inconclusive.
    pub(crate) fn fails(&self) -> bool {
        !matches!(
            self,
            Reason::Missing { .. } | Reason::NotFinite { .. } | Reason::TooFewRequests { .. }
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missing { what } => write!(f, "no answer for {what} (no series)"),
            Reason::NotFinite { what, value } => {
                write!(f, "{what} is {}: not a measurement", number(*value))
            }
            Reason::TooFewRequests {
                pool,
                requests,
                min,
            } if *requests == 0 => {
                write!(
                    f,
                    "the {pool} pool got no requests in the window (need {min})"
                )
            }
            Reason::TooFewRequests {
                pool,
                requests,
                min,
            } => write!(
                f,
                "the {pool} pool got {requests} requests in the window, fewer than {min}"
            ),
            Reason::SuccessBelow { success, min } => {
                write!(f, "canary success {success:.2}% is below {min}%")
            }
            Reason::LatencyAbove {
                quantile,
                seconds,
                max,
            } => write!(f, "canary p{quantile} {seconds:.3}s is above {max}s"),
            Reason::ErrorsWorse {
                canary,
                stable,
                margin,
                p_value,
            } => {
                write!(
                    f,
                    "canary errors {canary:.2}% exceed stable's {stable:.2}% by more than {margin} points"
                )?;
                match p_value {
                    Some(p) => write!(f, " (p = {p:.2e})"),
                    None => Ok(()),
                }
            }
            Reason::SlowerThanStable {
                effect,
                threshold,
                p_value,
            } => write!(
                f,
                "canary requests are slower than stable's: {:.1}% of pairs (limit {:.1}%, Mann-Whitney p = {p_value:.2e})",
                effect * 100.0,
                threshold * 100.0
            ),
            Reason::QuantileRatio {
                quantile,
                canary,
                stable,
                ratio,
            } => write!(
                f,
                "canary p{quantile} {canary:.3}s is more than {ratio}x stable's {stable:.3}s"
            ),
        }
    }
}

/// One pool's numbers in a window. `NaN` means "not known" (no requests, or not asked).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PoolStats {
    pub requests: Option<u64>,
    pub errors: Option<u64>,
    /// Percent of requests that did not answer 5xx.
    pub success: f64,
    /// Seconds.
    pub p95: f64,
    pub p99: f64,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            requests: None,
            errors: None,
            success: f64::NAN,
            p95: f64::NAN,
            p99: f64::NAN,
        }
    }
}

/// What the parser did with the access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Lines {
    /// Lines of either pool inside the window.
    pub judged: u64,
    /// Lines that do not have the format (skipped).
    pub malformed: u64,
    /// Well-formed lines before `since` or at/after `until`.
    pub outside: u64,
    /// Well-formed lines of a pool that is neither canary nor stable.
    pub other_pool: u64,
}

/// The Mann–Whitney U test of canary against stable request times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RankTest {
    /// U of the canary sample (pairs where the canary is slower, ties counted half).
    pub u: f64,
    /// Standardised U (tie- and continuity-corrected).
    pub z: f64,
    /// One-sided: the chance of a U this large if the canary were not slower.
    pub p_value: f64,
    /// U / (n_canary · n_stable): P(a canary request is slower than a stable one).
    pub effect: f64,
}

/// The judgement of one window, both pools side by side.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    pub outcome: Outcome,
    /// Empty on a pass.
    pub reasons: Vec<Reason>,
    pub canary: PoolStats,
    pub stable: PoolStats,
    /// The latency comparison, when both pools had enough requests.
    pub latency: Option<RankTest>,
    /// How the access log was read (`None` when judging numbers).
    pub lines: Option<Lines>,
}

impl Report {
    fn new(reasons: Vec<Reason>, canary: PoolStats, stable: PoolStats) -> Report {
        let outcome = if reasons.iter().any(Reason::fails) {
            Outcome::Fail
        } else if reasons.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Inconclusive
        };
        Report {
            outcome,
            reasons,
            canary,
            stable,
            latency: None,
            lines: None,
        }
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn cell(v: f64, render: impl Fn(f64) -> String) -> String {
    if v.is_finite() { render(v) } else { number(v) }
}

impl fmt::Display for Report {
    /// ```text
    /// pool     requests   success       p95       p99
    /// canary       1000    99.90%    0.120s    0.300s
    /// stable       9000   100.00%    0.110s    0.250s
    /// latency: canary slower in 51.2% of pairs (Mann-Whitney p = 3.10e-1)
    /// pass
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<8} {:>9} {:>9} {:>9} {:>9}",
            "pool", "requests", "success", "p95", "p99"
        )?;
        for (pool, s) in [(Pool::Canary, &self.canary), (Pool::Stable, &self.stable)] {
            let requests = s.requests.map_or_else(|| "-".into(), |n| n.to_string());
            writeln!(
                f,
                "{:<8} {:>9} {:>9} {:>9} {:>9}",
                pool.to_string(),
                requests,
                cell(s.success, |v| format!("{v:.2}%")),
                cell(s.p95, |v| format!("{v:.3}s")),
                cell(s.p99, |v| format!("{v:.3}s")),
            )?;
        }
        if let Some(t) = &self.latency {
            writeln!(
                f,
                "latency: canary slower in {:.1}% of pairs (Mann-Whitney p = {:.2e})",
                t.effect * 100.0,
                t.p_value
            )?;
        }
        if let Some(l) = &self.lines
            && (l.malformed > 0 || l.other_pool > 0)
        {
            writeln!(
                f,
                "log: {} lines judged, {} malformed (skipped), {} of other pools",
                l.judged, l.malformed, l.other_pool
            )?;
        }
        write!(f, "{}", self.outcome)?;
        for r in &self.reasons {
            write!(f, "\n  - {r}")?;
        }
        Ok(())
    }
}

/// One pool's request times and 5xx count, as read from the log.
#[derive(Debug, Clone, Default)]
struct Sample {
    times: Vec<f64>,
    errors: u64,
}

impl Sample {
    /// Sorts the times (needed by the quantiles and the rank test) and summarises.
    fn stats(&mut self) -> PoolStats {
        self.times.sort_unstable_by(f64::total_cmp);
        let n = self.times.len() as u64;
        let mut s = PoolStats {
            requests: Some(n),
            errors: Some(self.errors),
            ..PoolStats::default()
        };
        if n > 0 {
            s.success = 100.0 * (n - self.errors).to_f64() / n.to_f64();
            s.p95 = quantile(&self.times, 0.95);
            s.p99 = quantile(&self.times, 0.99);
        }
        s
    }
}

/// Nearest-rank quantile of sorted, non-empty `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let rank = crate::num::saturating_usize((q * v.len().to_f64()).ceil());
    v[rank.clamp(1, v.len()) - 1]
}

/// One request of the access log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Line<'a> {
    pub msec: f64,
    pub pool: &'a [u8],
    pub status: u16,
    pub request_time: f64,
}

fn float(field: &[u8]) -> Option<f64> {
    // Only digits and one dot: no signs, exponents, `inf` or `NaN` from a log line.
    if field.is_empty() || !field.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Parses one line of the [module's format](self); `None` when it does not have it.
pub(crate) fn parse_line(line: &[u8]) -> Option<Line<'_>> {
    let mut fields = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|f| !f.is_empty());
    let msec = float(fields.next()?)?;
    let pool = fields.next()?;
    let status = match fields.next()? {
        [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return None,
    };
    let request_time = float(fields.next()?)?;
    (100..=599).contains(&status).then_some(Line {
        msec,
        pool,
        status,
        request_time,
    })
}

/// Both pools of one window, read from the access log.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    canary: Sample,
    stable: Sample,
    lines: Lines,
}

impl Window {
    /// Reads `text` (the access log, any bytes), keeping lines in `[since, until)`.
    pub(crate) fn parse(text: &[u8], since: Option<f64>, until: Option<f64>) -> Window {
        let mut w = Window::default();
        for line in text.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Some(l) = parse_line(line) else {
                w.lines.malformed += 1;
                continue;
            };
            if since.is_some_and(|s| l.msec < s) || until.is_some_and(|u| l.msec >= u) {
                w.lines.outside += 1;
                continue;
            }
            let sample = match l.pool {
                b"next" => &mut w.canary,
                b"stable" => &mut w.stable,
                _ => {
                    w.lines.other_pool += 1;
                    continue;
                }
            };
            w.lines.judged += 1;
            sample.times.push(l.request_time);
            sample.errors += u64::from(l.status >= 500);
        }
        w
    }
}

/// The upper tail of the standard normal distribution, P(Z > z).
fn upper_tail(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// One-sided Mann–Whitney U test that `canary` is slower than `stable` (both sorted
/// ascending, non-empty): ranks by merging the two sorted samples, average ranks for ties,
/// the normal approximation with the tie correction and a continuity correction.
pub(crate) fn mann_whitney(canary: &[f64], stable: &[f64]) -> RankTest {
    let (n1, n2) = (canary.len(), stable.len());
    let (mut i, mut j) = (0, 0);
    let (mut rank_sum, mut ties, mut done) = (0.0_f64, 0.0_f64, 0usize);
    while i < n1 || j < n2 {
        let low = match (canary.get(i), stable.get(j)) {
            (Some(a), Some(b)) => a.min(*b),
            (Some(a), None) => *a,
            (None, Some(b)) => *b,
            (None, None) => break,
        };
        // Both samples are sorted and `low` is the smaller head, so `<=` takes exactly the
        // values equal to it: the tie.
        let a0 = i;
        while i < n1 && canary[i] <= low {
            i += 1;
        }
        let b0 = j;
        while j < n2 && stable[j] <= low {
            j += 1;
        }
        let (in_canary, tie_size) = ((i - a0).to_f64(), (i - a0 + j - b0).to_f64());
        // Ranks done+1 ..= done+tie_size share their average.
        rank_sum += in_canary * (done.to_f64() + f64::midpoint(tie_size, 1.0));
        ties += tie_size * tie_size * tie_size - tie_size;
        done += i - a0 + j - b0;
    }
    let (n1f, n2f, total) = (n1.to_f64(), n2.to_f64(), (n1 + n2).to_f64());
    let u = rank_sum - n1f * (n1f + 1.0) / 2.0;
    let mean = n1f * n2f / 2.0;
    let variance = n1f * n2f / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    let effect = u / (n1f * n2f);
    if variance.is_nan() || variance <= 0.0 {
        // Every request took the same time: nothing to rank.
        return RankTest {
            u,
            z: 0.0,
            p_value: 1.0,
            effect,
        };
    }
    let z = ((u - mean).abs() - 0.5).max(0.0).copysign(u - mean) / variance.sqrt();
    RankTest {
        u,
        z,
        p_value: upper_tail(z),
        effect,
    }
}

/// One-sided two-proportion z-test that the canary's error share exceeds stable's by more
/// than `margin` (shares, not percent); the p-value.
fn errors_exceed(canary: (f64, f64), stable: (f64, f64), margin: f64) -> f64 {
    let (pc, ps) = (canary.0 / canary.1, stable.0 / stable.1);
    let se = (pc * (1.0 - pc) / canary.1 + ps * (1.0 - ps) / stable.1).sqrt();
    let excess = pc - ps - margin;
    if se > 0.0 {
        upper_tail(excess / se)
    } else if excess > 0.0 {
        0.0
    } else {
        1.0
    }
}

/// The absolute gates on the canary's numbers.
fn absolute(canary: &PoolStats, o: &Options, reasons: &mut Vec<Reason>) {
    if canary.success + 1e-9 < o.success_rate {
        reasons.push(Reason::SuccessBelow {
            success: canary.success,
            min: o.success_rate,
        });
    }
    for (q, v, max) in [(95, canary.p95, o.p95), (99, canary.p99, o.p99)] {
        if v > max {
            reasons.push(Reason::LatencyAbove {
                quantile: q,
                seconds: v,
                max,
            });
        }
    }
}

/// Judges one window of the access log (see the [module docs](self)).
pub(crate) fn judge_log(text: &[u8], o: &Options) -> Report {
    let mut w = Window::parse(text, o.since, o.until);
    judge_window(&mut w, o)
}

/// Judges a parsed window.
pub(crate) fn judge_window(w: &mut Window, o: &Options) -> Report {
    let (canary, stable) = (w.canary.stats(), w.stable.stats());
    let (nc, ns) = (w.canary.times.len() as u64, w.stable.times.len() as u64);
    let mut reasons = Vec::new();
    if nc < o.min_requests.max(1) {
        reasons.push(Reason::TooFewRequests {
            pool: Pool::Canary,
            requests: nc,
            min: o.min_requests.max(1),
        });
        let mut r = Report::new(reasons, canary, stable);
        r.lines = Some(w.lines);
        return r;
    }
    absolute(&canary, o, &mut reasons);
    let mut latency = None;
    if ns < o.min_requests.max(1) {
        reasons.push(Reason::TooFewRequests {
            pool: Pool::Stable,
            requests: ns,
            min: o.min_requests.max(1),
        });
    } else {
        let (ec, es) = (w.canary.errors.to_f64(), w.stable.errors.to_f64());
        let p = errors_exceed((ec, nc.to_f64()), (es, ns.to_f64()), o.error_margin / 100.0);
        if p < o.alpha {
            reasons.push(Reason::ErrorsWorse {
                canary: 100.0 - canary.success,
                stable: 100.0 - stable.success,
                margin: o.error_margin,
                p_value: Some(p),
            });
        }
        let t = mann_whitney(&w.canary.times, &w.stable.times);
        if t.p_value < o.alpha && t.effect > o.latency_effect {
            reasons.push(Reason::SlowerThanStable {
                effect: t.effect,
                threshold: o.latency_effect,
                p_value: t.p_value,
            });
        }
        latency = Some(t);
    }
    let mut r = Report::new(reasons, canary, stable);
    r.latency = latency;
    r.lines = Some(w.lines);
    r
}

/// One number from Prometheus.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) enum Reading {
    /// Not configured: its gate is not checked.
    #[default]
    NotAsked,
    /// Asked, and the answer had no series: inconclusive.
    NoSeries,
    /// Asked and answered (may be `NaN` or `±Inf`: inconclusive).
    Value(f64),
}

/// The numbers of one window from PromQL answers. Success in percent, latency in seconds.
/// `canary_success` is required; the others are checked when asked.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Values {
    pub canary_success: Reading,
    pub stable_success: Reading,
    pub canary_p95: Reading,
    pub canary_p99: Reading,
    pub stable_p95: Reading,
    pub stable_p99: Reading,
    pub canary_requests: Reading,
    pub stable_requests: Reading,
}

/// The canary's error rate against stable's, from success percentages and (when known)
/// request counts: a one-sided test with counts, the plain margin without.
fn errors_worse(
    (cs, cn): (f64, Option<f64>),
    (ss, sn): (f64, Option<f64>),
    o: &Options,
) -> Option<Reason> {
    let (ec, es) = ((100.0 - cs) / 100.0, (100.0 - ss) / 100.0);
    let p_value = match (cn, sn) {
        (Some(cn), Some(sn)) if cn > 0.0 && sn > 0.0 => Some(errors_exceed(
            (ec * cn, cn),
            (es * sn, sn),
            o.error_margin / 100.0,
        )),
        _ => None,
    };
    let worse = match p_value {
        Some(p) => p < o.alpha,
        None => ec - es > o.error_margin / 100.0 + 1e-12,
    };
    worse.then_some(Reason::ErrorsWorse {
        canary: 100.0 - cs,
        stable: 100.0 - ss,
        margin: o.error_margin,
        p_value,
    })
}

/// Judges a window from numbers (see the [module docs](self)): any asked number that is
/// missing, `NaN` or `±Inf` makes the window inconclusive, never a pass.
pub(crate) fn judge_values(v: &Values, o: &Options) -> Report {
    let mut unmeasurable = Vec::new();
    let mut read = |what: &'static str, r: Reading, required: bool| -> Option<f64> {
        match r {
            Reading::NotAsked if required => {
                unmeasurable.push(Reason::Missing { what });
                None
            }
            Reading::NotAsked => None,
            Reading::NoSeries => {
                unmeasurable.push(Reason::Missing { what });
                None
            }
            Reading::Value(x) if !x.is_finite() => {
                unmeasurable.push(Reason::NotFinite { what, value: x });
                None
            }
            Reading::Value(x) => Some(x),
        }
    };
    let cs = read("canary_success", v.canary_success, true);
    let ss = read("stable_success", v.stable_success, false);
    let c95 = read("canary_p95", v.canary_p95, false);
    let c99 = read("canary_p99", v.canary_p99, false);
    let s95 = read("stable_p95", v.stable_p95, false);
    let s99 = read("stable_p99", v.stable_p99, false);
    let cn = read("canary_requests", v.canary_requests, false);
    let sn = read("stable_requests", v.stable_requests, false);
    let shown = |r: Reading| match r {
        Reading::Value(x) => x,
        _ => f64::NAN,
    };
    let count = |n: Option<f64>| n.map(|n| crate::num::saturating_u64(n.max(0.0).round()));
    let canary = PoolStats {
        requests: count(cn),
        errors: None,
        success: shown(v.canary_success),
        p95: shown(v.canary_p95),
        p99: shown(v.canary_p99),
    };
    let stable = PoolStats {
        requests: count(sn),
        errors: None,
        success: shown(v.stable_success),
        p95: shown(v.stable_p95),
        p99: shown(v.stable_p99),
    };
    let min = o.min_requests.max(1);
    let mut reasons = unmeasurable;
    if let Some(n) = count(cn).filter(|n| *n < min) {
        reasons.push(Reason::TooFewRequests {
            pool: Pool::Canary,
            requests: n,
            min,
        });
        return Report::new(reasons, canary, stable);
    }
    let known = PoolStats {
        success: cs.unwrap_or(f64::NAN),
        p95: c95.unwrap_or(f64::NAN),
        p99: c99.unwrap_or(f64::NAN),
        ..canary
    };
    absolute(&known, o, &mut reasons);
    let stable_few = count(sn).filter(|n| *n < min);
    if let Some(n) = stable_few {
        reasons.push(Reason::TooFewRequests {
            pool: Pool::Stable,
            requests: n,
            min,
        });
    }
    if stable_few.is_none() {
        if let (Some(cs), Some(ss)) = (cs, ss) {
            reasons.extend(errors_worse((cs, cn), (ss, sn), o));
        }
        for (q, c, s) in [(95, c95, s95), (99, c99, s99)] {
            if let (Some(c), Some(s)) = (c, s)
                && c > s * o.latency_ratio
            {
                reasons.push(Reason::QuantileRatio {
                    quantile: q,
                    canary: c,
                    stable: s,
                    ratio: o.latency_ratio,
                });
            }
        }
    }
    Report::new(reasons, canary, stable)
}

#[cfg(test)]
#[expect(
    clippy::float_cmp,
    reason = "known answers: the values are exact by construction"
)]
mod tests {
    use std::fmt::Write;

    use super::*;

    /// SplitMix64: deterministic pseudo-random numbers for the tests.
    struct Rng(u64);

    /// `x` reduced to an index below `len`.
    fn below(x: u64, len: usize) -> usize {
        usize::try_from(x % len as u64).expect("less than a usize")
    }

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn unit(&mut self) -> f64 {
            ((self.next() >> 11).to_f64() + 0.5) / (1u64 << 53).to_f64()
        }
        /// A log-normal request time around `median` seconds, milliseconds like nginx.
        fn latency(&mut self, median: f64) -> f64 {
            let (u1, u2) = (self.unit(), self.unit());
            let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (median * (0.5 * normal).exp() * 1000.0).round() / 1000.0
        }
    }

    /// A log of `n` requests of `pool` from t = 1000 s on, `fail` of them (a share) 5xx,
    /// request times around `median`.
    fn log(out: &mut String, rng: &mut Rng, pool: &str, n: usize, fail: f64, median: f64) {
        for i in 0..n {
            let status = if rng.unit() < fail { 502 } else { 200 };
            let t = rng.latency(median);
            let _ = writeln!(
                out,
                "{}.{:03} {pool} {status} {t:.3}",
                1000 + i / 1000,
                i % 1000
            );
        }
    }

    fn traffic(seed: u64, canary: (usize, f64, f64), stable: (usize, f64, f64)) -> String {
        let mut rng = Rng(seed);
        let mut text = String::new();
        log(&mut text, &mut rng, "next", canary.0, canary.1, canary.2);
        log(&mut text, &mut rng, "stable", stable.0, stable.1, stable.2);
        text
    }

    fn values(pairs: &[(&str, f64)]) -> Values {
        let mut v = Values::default();
        for (k, x) in pairs {
            let r = Reading::Value(*x);
            match *k {
                "canary_success" => v.canary_success = r,
                "stable_success" => v.stable_success = r,
                "canary_p95" => v.canary_p95 = r,
                "canary_p99" => v.canary_p99 = r,
                "stable_p95" => v.stable_p95 = r,
                "stable_p99" => v.stable_p99 = r,
                "canary_requests" => v.canary_requests = r,
                "stable_requests" => v.stable_requests = r,
                other => panic!("no reading {other}"),
            }
        }
        v
    }

    #[test]
    fn nan_or_infinite_query_answers_are_inconclusive_never_a_pass() {
        let o = Options::default();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let r = judge_values(&values(&[("canary_success", bad)]), &o);
            assert_eq!(r.outcome, Outcome::Inconclusive, "{bad}: {r}");
            assert!(
                matches!(
                    r.reasons[..],
                    [Reason::NotFinite {
                        what: "canary_success",
                        ..
                    }]
                ),
                "{r:?}"
            );
            // A healthy success rate with a NaN latency is not a pass either.
            let r = judge_values(
                &values(&[("canary_success", 100.0), ("canary_p95", bad)]),
                &o,
            );
            assert_eq!(r.outcome, Outcome::Inconclusive, "{bad}: {r}");
        }
        let no_series = Values {
            canary_success: Reading::NoSeries,
            ..Values::default()
        };
        let r = judge_values(&no_series, &o);
        assert_eq!(r.outcome, Outcome::Inconclusive);
        assert!(r.to_string().contains("no series"), "{r}");
        // Not asked at all is no measurement either.
        let r = judge_values(&Values::default(), &o);
        assert_eq!(r.outcome, Outcome::Inconclusive);
        // …but an asked number that fails a gate still fails the window.
        let r = judge_values(
            &values(&[("canary_success", 97.0), ("canary_p95", f64::NAN)]),
            &o,
        );
        assert_eq!(r.outcome, Outcome::Fail, "{r}");
    }

    #[test]
    fn healthy_numbers_pass_and_bad_numbers_fail_each_gate() {
        let o = Options::default();
        let good = [
            ("canary_success", 99.9),
            ("stable_success", 99.95),
            ("canary_p95", 0.2),
            ("stable_p95", 0.18),
            ("canary_p99", 0.5),
            ("stable_p99", 0.45),
            ("canary_requests", 1000.0),
            ("stable_requests", 9000.0),
        ];
        let r = judge_values(&values(&good), &o);
        assert_eq!(r.outcome, Outcome::Pass, "{r}");
        let with = |k: &str, x: f64| {
            let mut v = good.to_vec();
            for p in &mut v {
                if p.0 == k {
                    p.1 = x;
                }
            }
            judge_values(&values(&v), &o)
        };
        assert_eq!(with("canary_success", 99.0).outcome, Outcome::Fail);
        assert_eq!(with("canary_p99", 1.2).outcome, Outcome::Fail);
        let slower = with("canary_p95", 0.6);
        assert!(
            matches!(
                slower.reasons[..],
                [Reason::QuantileRatio { quantile: 95, .. }]
            ),
            "{slower}"
        );
        assert_eq!(with("canary_requests", 10.0).outcome, Outcome::Inconclusive);
        assert_eq!(with("stable_requests", 0.0).outcome, Outcome::Inconclusive);
    }

    #[test]
    fn a_canary_without_traffic_is_inconclusive() {
        let text = traffic(1, (0, 0.0, 0.1), (5000, 0.0, 0.1));
        let r = judge_log(text.as_bytes(), &Options::default());
        assert_eq!(r.outcome, Outcome::Inconclusive, "{r}");
        assert!(r.to_string().contains("canary pool got no requests"), "{r}");
        let text = traffic(1, (50, 0.0, 0.1), (5000, 0.0, 0.1));
        let r = judge_log(text.as_bytes(), &Options::default());
        assert_eq!(r.outcome, Outcome::Inconclusive, "{r}");
        assert_eq!(r.canary.requests, Some(50));
        // An empty log, and a log whose lines all predate the window.
        let r = judge_log(b"", &Options::default());
        assert_eq!(r.outcome, Outcome::Inconclusive);
        let text = traffic(1, (5000, 0.0, 0.1), (5000, 0.0, 0.1));
        let late = Options {
            since: Some(5000.0),
            ..Options::default()
        };
        let r = judge_log(text.as_bytes(), &late);
        assert_eq!(r.outcome, Outcome::Inconclusive, "{r}");
        assert_eq!(r.lines.map(|l| l.outside), Some(10_000));
    }

    #[test]
    fn a_canary_failing_one_percent_fails_the_success_gate() {
        let text = traffic(2, (5000, 0.01, 0.1), (45_000, 0.0, 0.1));
        let r = judge_log(text.as_bytes(), &Options::default());
        assert_eq!(r.outcome, Outcome::Fail, "{r}");
        assert!(
            r.reasons
                .iter()
                .any(|x| matches!(x, Reason::SuccessBelow { min, .. } if *min == 99.5)),
            "{r}"
        );
        assert!(r.canary.success < 99.5 && r.canary.success > 98.5, "{r}");
        assert_eq!(r.stable.success, 100.0);
    }

    #[test]
    fn three_times_slower_at_p95_but_all_ok_fails_only_the_comparison() {
        // Stable around 50 ms (p95 ≈ 115 ms), canary 3× slower (p95 ≈ 345 ms): well under
        // the absolute 1 s gate, and 100% successful.
        let text = traffic(3, (2000, 0.0, 0.05), (18_000, 0.0, 0.15 / 3.0));
        let slow = traffic(3, (2000, 0.0, 0.15), (18_000, 0.0, 0.05));
        let same = judge_log(text.as_bytes(), &Options::default());
        assert_eq!(same.outcome, Outcome::Pass, "{same}");
        let r = judge_log(slow.as_bytes(), &Options::default());
        assert_eq!(r.outcome, Outcome::Fail, "{r}");
        assert!(
            matches!(r.reasons[..], [Reason::SlowerThanStable { .. }]),
            "only the comparison fails: {r}"
        );
        assert!(
            r.canary.p95 < 1.0 && r.canary.p95 > 2.5 * r.stable.p95,
            "{r}"
        );
        assert_eq!(r.canary.success, 100.0);
    }

    #[test]
    fn equal_distributions_pass_at_modest_sample_sizes() {
        let mut fails = Vec::new();
        for seed in 0..60 {
            let text = traffic(100 + seed, (300, 0.001, 0.08), (2700, 0.001, 0.08));
            let r = judge_log(text.as_bytes(), &Options::default());
            if r.outcome != Outcome::Pass && r.reasons.iter().any(Reason::fails) {
                let relative = r.reasons.iter().any(|x| {
                    matches!(
                        x,
                        Reason::SlowerThanStable { .. } | Reason::ErrorsWorse { .. }
                    )
                });
                if relative {
                    fails.push(format!("seed {seed}: {r}"));
                }
            }
        }
        assert!(fails.is_empty(), "false positives:\n{}", fails.join("\n"));
    }

    #[test]
    fn a_small_but_significant_slowdown_passes_the_effect_size_threshold() {
        // 5% slower on 100,000 requests per pool: significant, but far below the effect.
        let text = traffic(4, (100_000, 0.0, 0.105), (100_000, 0.0, 0.1));
        let r = judge_log(text.as_bytes(), &Options::default());
        let t = r.latency.expect("both pools are large");
        assert!(t.p_value < 0.01, "significant: {t:?}");
        assert!(t.effect < 0.6, "{t:?}");
        assert_eq!(r.outcome, Outcome::Pass, "{r}");
    }

    #[test]
    fn a_canary_as_bad_as_stable_in_a_global_incident_still_fails_the_absolute_gate() {
        let text = traffic(5, (5000, 0.03, 0.1), (45_000, 0.03, 0.1));
        let r = judge_log(text.as_bytes(), &Options::default());
        assert_eq!(r.outcome, Outcome::Fail, "{r}");
        assert!(
            matches!(r.reasons[..], [Reason::SuccessBelow { .. }]),
            "no relative gate fails, the absolute one does: {r}"
        );
    }

    #[test]
    fn a_canary_clearly_worse_than_a_clean_stable_fails_the_relative_error_gate() {
        // 0.45% errors pass the absolute 99.5% gate; stable's 0.05% makes them a regression.
        let text = traffic(6, (20_000, 0.0045, 0.1), (180_000, 0.0005, 0.1));
        let r = judge_log(text.as_bytes(), &Options::default());
        assert_eq!(r.outcome, Outcome::Fail, "{r}");
        assert!(r.canary.success >= 99.5, "{r}");
        assert!(matches!(r.reasons[..], [Reason::ErrorsWorse { .. }]), "{r}");
        // Three unlucky requests of a small canary are no evidence.
        let text = traffic(6, (1000, 0.003, 0.1), (9000, 0.0005, 0.1));
        let r = judge_log(text.as_bytes(), &Options::default());
        assert!(
            !r.reasons
                .iter()
                .any(|x| matches!(x, Reason::ErrorsWorse { .. })),
            "{r}"
        );
    }

    #[test]
    fn four_hundreds_are_successes_and_five_hundreds_are_errors() {
        let mut text = String::new();
        for i in 0..1000 {
            let status = [200, 404, 499, 301][i % 4];
            let _ = writeln!(text, "1000.{i:03} next {status} 0.010");
            let _ = writeln!(text, "1000.{i:03} stable 200 0.010");
        }
        let r = judge_log(text.as_bytes(), &Options::default());
        assert_eq!(r.canary.success, 100.0, "{r}");
        text.push_str(&"1001.000 next 500 0.010\n".repeat(10));
        let r = judge_log(text.as_bytes(), &Options::default());
        assert_eq!(r.canary.errors, Some(10));
        assert_eq!(r.outcome, Outcome::Fail, "{r}");
    }

    #[test]
    fn malformed_lines_are_skipped_and_counted() {
        let mut text = traffic(7, (1000, 0.0, 0.1), (1000, 0.0, 0.1));
        for bad in [
            "garbage",
            "1000.5 next",
            "1000.5 next 2OO 0.1",
            "1000.5 next 200 fast",
            "1000.5 next 200 -0.1",
            "1000.5 next 999 0.1",
            "1000.5 next 200 NaN",
            "1000.5 next 200 inf",
            "-1000.5 next 200 0.1",
            "1000.5 next 20 0.1",
            "\u{fffd}\u{0} next 200 0.1",
        ] {
            text.push_str(bad);
            text.push('\n');
        }
        text.push_str("1000.5 other 200 0.1\n\n   \r\n");
        text.push_str("1000.600\tnext\t200\t0.100\t- extra fields\r\n");
        let r = judge_log(text.as_bytes(), &Options::default());
        let lines = r.lines.expect("from a log");
        assert_eq!(lines.malformed, 11, "{r}");
        assert_eq!(lines.other_pool, 1);
        assert_eq!(
            r.canary.requests,
            Some(1001),
            "the tab-separated line counts"
        );
        assert_eq!(r.outcome, Outcome::Pass, "{r}");
        assert!(r.to_string().contains("11 malformed"), "{r}");
    }

    #[test]
    fn the_window_keeps_lines_from_since_up_to_until() {
        let text = "99.999 next 500 0.1\n100.000 next 200 0.1\n199.999 next 200 0.1\n200.000 next 500 0.1\n";
        let o = Options {
            since: Some(100.0),
            until: Some(200.0),
            min_requests: 1,
            ..Options::default()
        };
        let r = judge_log(text.as_bytes(), &o);
        assert_eq!(r.canary.requests, Some(2));
        assert_eq!(r.canary.errors, Some(0));
        assert_eq!(r.lines.map(|l| l.outside), Some(2));
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_bytes() {
        let mut rng = Rng(42);
        let alphabet = b"0123456789. \t\n\r-+eEnaifNxt5sb\xff\x00";
        let seed = traffic(8, (20, 0.1, 0.1), (20, 0.1, 0.1)).into_bytes();
        for round in 0..3000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                // Random bytes, biased towards the format's own characters.
                (0..rng.next() % 200)
                    .map(|_| {
                        let r = rng.next();
                        if r.is_multiple_of(3) {
                            r.to_le_bytes()[0]
                        } else {
                            alphabet[below(r >> 8, alphabet.len())]
                        }
                    })
                    .collect()
            } else {
                // A valid log with a few bytes flipped, cut or duplicated.
                let mut b = seed.clone();
                for _ in 0..=(rng.next() % 8) {
                    let at = below(rng.next(), b.len());
                    match rng.next() % 3 {
                        0 => b[at] = rng.next().to_le_bytes()[0],
                        1 => b.truncate(at.max(1)),
                        _ => b.insert(at, alphabet[below(rng.next(), alphabet.len())]),
                    }
                }
                b
            };
            let o = Options {
                min_requests: 1,
                ..Options::default()
            };
            let r = judge_log(&bytes, &o);
            let lines = r.lines.expect("from a log");
            let nonblank = bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .count() as u64;
            assert_eq!(
                lines.judged + lines.malformed + lines.outside + lines.other_pool,
                nonblank,
                "every line is accounted for"
            );
            let _ = r.to_string();
        }
    }

    #[test]
    fn mann_whitney_matches_a_hand_computed_example() {
        // canary [3, 4, 5], stable [1, 2, 3]: ranks 1 2 3.5 3.5 5 6; R_canary = 14.5,
        // U = 14.5 - 6 = 8.5 of 9 pairs.
        let t = mann_whitney(&[3.0, 4.0, 5.0], &[1.0, 2.0, 3.0]);
        assert!((t.u - 8.5).abs() < 1e-12, "{t:?}");
        assert!((t.effect - 8.5 / 9.0).abs() < 1e-12);
        // Variance 9/12 * (7 - 6/30) = 5.1; z = (8.5 - 4.5 - 0.5) / sqrt(5.1).
        assert!((t.z - 3.5 / 5.1_f64.sqrt()).abs() < 1e-12, "{t:?}");
        assert!((t.p_value - 0.060_591_6).abs() < 1e-6, "{t:?}");
        // Identical samples: no evidence at all.
        let t = mann_whitney(&[0.1; 50], &[0.1; 50]);
        assert_eq!((t.p_value, t.effect), (1.0, 0.5));
        // Faster canary: large p-value.
        let t = mann_whitney(&[1.0, 2.0], &[5.0, 6.0, 7.0]);
        assert!(t.p_value > 0.9 && t.effect == 0.0, "{t:?}");
    }

    #[test]
    fn the_report_shows_both_pools_side_by_side() {
        let text = traffic(9, (2000, 0.01, 0.1), (18_000, 0.0, 0.1));
        let r = judge_log(text.as_bytes(), &Options::default());
        let shown = r.to_string();
        let rows: Vec<&str> = shown.lines().collect();
        assert!(
            rows[0].starts_with("pool") && rows[0].contains("p99"),
            "{shown}"
        );
        assert!(
            rows[1].starts_with("canary") && rows[1].contains("2000"),
            "{shown}"
        );
        assert!(
            rows[2].starts_with("stable") && rows[2].contains("100.00%"),
            "{shown}"
        );
        assert!(
            shown.contains("\nfail\n  - canary success 98.70% is below 99.5%\n"),
            "{shown}"
        );
        let nan = judge_values(
            &values(&[("canary_success", f64::NAN)]),
            &Options::default(),
        );
        assert!(nan.to_string().contains("NaN"), "{nan}");
    }

    #[test]
    fn nonsense_thresholds_are_refused() {
        assert!(Options::default().validate().is_ok());
        let bad = Options {
            success_rate: f64::NAN,
            ..Options::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.name, "success_rate");
        let bad = Options {
            latency_effect: 0.2,
            ..Options::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("latency_effect")
        );
    }
}
