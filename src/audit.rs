//! The audit log: one JSON line per run (and per REPL action) — locally, and on every
//! host the run touched (`<deploy_path>/.runbook/audit.jsonl`). It answers "who did what,
//! where, why, and how did it end" after the fact; `runbook audit` queries it.

use crate::num::ToF64;
use crate::sync::Locked;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::output::{Event, Kind, Outcome, Sink};

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Step {
    pub name: String,
    pub result: String,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Switch {
    pub before: String,
    pub after: String,
}

/// What kind of change a run made: the input of the delivery metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Facts {
    /// A new release was prepared (the run is a deployment).
    #[serde(default)]
    pub deploy: bool,
    /// Hosts were switched back (rollback, undo, restore from a backup).
    #[serde(default)]
    pub rollback: bool,
    /// Commit time of the deployed ref (unix seconds), when it came from git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<i64>,
    /// Why the switch could not be verified (nothing to check it against), when so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified: Option<String>,
    /// The run first recovered the fleet from a run that had died holding the lock.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    pub ts: String,
    pub run: String,
    pub actor: String,
    /// The OS account the run had (the actor may be a CI user on a shared runner account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_run: Option<String>,
    pub env: String,
    pub script: String,
    pub script_sha256: String,
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// success, failed, aborted, refused or dry_run.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub releases: BTreeMap<String, Switch>,
    pub duration_ms: u64,
    #[serde(default, flatten)]
    pub facts: Facts,
}

/// Where the local audit log lives: `RUNBOOK_AUDIT_FILE`, else the XDG state directory.
pub(crate) fn local_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RUNBOOK_AUDIT_FILE") {
        return PathBuf::from(p);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("runbook/audit.jsonl")
}

/// The records kept on `env`'s hosts (`<deploy_path>/.runbook/audit.jsonl`), read over
/// their usual transport, and the hosts whose log could not be read.
pub(crate) fn read_hosts(
    effects: &crate::effects::Effects,
    env: &crate::inventory::Environment,
) -> (Vec<Record>, Vec<String>) {
    use crate::effects::{FanOut, HostOutcome, Target};
    let targets: Vec<Target> = env.hosts.iter().cloned().map(Target::Host).collect();
    let build = |t: &Target| {
        let root = match t {
            Target::Host(h) => h.deploy_path.clone(),
            Target::Local => String::new(),
        };
        let mut spec = crate::transport::CommandSpec::script(
            "audit: read the host's log",
            r#"cat "$1/.runbook/audit.jsonl" 2>/dev/null; true"#,
            &[&root],
        );
        spec.quiet = true;
        spec.read = true;
        spec
    };
    let fan = FanOut {
        fail_fast: false,
        ..FanOut::new()
    };
    let mut out = Vec::new();
    let mut unread = Vec::new();
    for (t, o) in targets
        .iter()
        .zip(effects.run_many_with(&targets, &build, &fan))
    {
        match o {
            HostOutcome::Done(Ok(r)) => out.extend(
                r.stdout
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Record>(l).ok()),
            ),
            _ => unread.push(t.name().to_owned()),
        }
    }
    (out, unread)
}

/// This machine's records and the hosts': one per run (a run is on this machine and on
/// each host it touched), oldest first.
pub(crate) fn merge(mut local: Vec<Record>, hosts: Vec<Record>) -> Vec<Record> {
    local.extend(hosts);
    let mut seen = std::collections::HashSet::new();
    local.retain(|r| seen.insert(r.run.clone()));
    local.sort_by(|a, b| a.ts.cmp(&b.ts));
    local
}

/// The mode of the audit log: it holds REPL input and reasons, readable by its owner only.
pub(crate) const FILE_MODE: u32 = 0o600;
/// The mode of the directory runbook keeps it in (with the REPL history).
pub(crate) const DIR_MODE: u32 = 0o700;

/// Appends one line (a single `write` of a whole line, so concurrent runs interleave by line).
///
/// The file is created 0600 and an existing one is set to 0600; directories that have to
/// be created are 0700, and runbook's own directory (the default location) is set to 0700
/// even when it exists. A directory named by `RUNBOOK_AUDIT_FILE` that already exists is
/// the user's (it may be a project directory) and keeps its mode.
pub(crate) fn append(path: &std::path::Path, record: &Record) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        if std::env::var_os("RUNBOOK_AUDIT_FILE").is_none() && path == local_path() {
            // Not ours to change (another owner): the line is still written.
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE));
        }
    }
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    // A log written by an older version (0644) is tightened the next time it is opened.
    // (A shared log owned by someone else cannot be changed: the line is still written.)
    if f.metadata()?.permissions().mode() & 0o777 != FILE_MODE {
        let _ = f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE));
    }
    f.write_all(&line)
}

/// Every record of a log, oldest first; unreadable lines are skipped.
pub(crate) fn read(path: &std::path::Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Collects what the audit record needs from the run's events.
#[derive(Default, Clone)]
pub(crate) struct Collector(Arc<Mutex<Collected>>);

#[derive(Default)]
pub(crate) struct Collected {
    pub steps: Vec<Step>,
    pub hosts: Vec<String>,
    /// In a dry run: every effect, in order (the recorded plan).
    pub plan: Vec<serde_json::Value>,
    /// The output of the latest commands, per host (the REPL's `:last`).
    pub last_output: BTreeMap<String, Vec<String>>,
    dry_run: bool,
    depth: usize,
    step: Vec<String>,
}

impl Collector {
    pub(crate) fn take(&self) -> (Vec<Step>, Vec<String>) {
        let c = self.0.locked();
        (c.steps.clone(), c.hosts.clone())
    }

    /// Starts a new record (the REPL audits each action on its own).
    pub(crate) fn reset(&self) {
        let mut c = self.0.locked();
        c.steps.clear();
        c.hosts.clear();
        c.last_output.clear();
    }

    /// Output lines of the latest action's commands, per host.
    pub(crate) fn last_output(&self) -> BTreeMap<String, Vec<String>> {
        self.0.locked().last_output.clone()
    }

    /// The recorded plan of a dry run.
    pub(crate) fn plan(&self) -> Vec<serde_json::Value> {
        self.0.locked().plan.clone()
    }
}

impl Sink for Collector {
    fn event(&self, e: &Event) {
        let mut c = self.0.locked();
        let step = c.step.last().cloned();
        if c.dry_run
            && matches!(
                e.kind,
                Kind::CommandStarted | Kind::Notification | Kind::Lock
            )
        {
            let read = e
                .data
                .as_ref()
                .and_then(|d| d.get("read"))
                .is_some_and(|v| v == &serde_json::Value::Bool(true));
            let kind = match e.kind {
                Kind::CommandStarted if read => "read",
                Kind::CommandStarted => "command",
                Kind::Notification => "notification",
                _ => "lock",
            };
            let mut action = serde_json::json!({
                "n": c.plan.len() + 1,
                "kind": kind,
                "step": step,
                "host": e.host,
            });
            if let Some(argv) = &e.argv {
                action["argv"] = serde_json::json!(argv);
                // A dry-run command "succeeds" with empty output: later values built on
                // it are synthetic. A read ran for real.
                action["synthetic_result"] = serde_json::json!(!read);
            }
            if let Some(m) = &e.message {
                action[if kind == "command" || kind == "read" {
                    "label"
                } else {
                    "message"
                }] = serde_json::json!(m);
            }
            c.plan.push(action);
        }
        if e.kind == Kind::Output
            && let (Some(h), Some(m)) = (&e.host, &e.message)
        {
            let lines = c.last_output.entry(h.clone()).or_default();
            if lines.len() < 10_000 {
                lines.push(m.clone());
            }
        }
        match e.kind {
            Kind::RunStarted => {
                c.dry_run = e
                    .data
                    .as_ref()
                    .and_then(|d| d.get("dry_run"))
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false);
            }
            Kind::StepStarted => {
                c.depth += 1;
                c.step.push(e.step.clone().unwrap_or_default());
            }
            Kind::StepFinished => {
                c.step.pop();
                c.depth = c.depth.saturating_sub(1);
                if c.depth == 0 {
                    c.steps.push(Step {
                        name: e.step.clone().unwrap_or_default(),
                        result: e.result.unwrap_or(Outcome::Ok).as_str().to_owned(),
                        duration_ms: e.duration_ms.unwrap_or(0),
                    });
                }
            }
            Kind::CommandStarted | Kind::Lock => {
                if let Some(h) = &e.host
                    && h != "local"
                    && !c.hosts.contains(h)
                {
                    c.hosts.push(h.clone());
                }
            }
            _ => {}
        }
    }
}

/// Parses `2d`, `12h`, `30m` (or any humantime duration).
pub(crate) fn since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}), e.g. 2d, 12h"))?;
    let d = chrono::Duration::from_std(d).map_err(|e| e.to_string())?;
    Ok(chrono::Utc::now() - d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.jsonl");
        for run in ["r1", "r2"] {
            append(
                &path,
                &Record {
                    run: run.into(),
                    result: "success".into(),
                    ..Record::default()
                },
            )
            .unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"not json\n")
            .unwrap();
        let all = read(&path);
        assert_eq!(
            all.iter().map(|r| r.run.as_str()).collect::<Vec<_>>(),
            ["r1", "r2"]
        );
    }
}

/// Delivery metrics (DORA) of one environment over a window.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub(crate) struct EnvStats {
    pub env: String,
    /// Deployment attempts (a release was prepared), successful or not.
    pub deploys: usize,
    pub successful: usize,
    /// Attempts that failed or were interrupted.
    pub failed: usize,
    /// Successful deploys switched back before the next deploy.
    pub rolled_back: usize,
    /// (failed + rolled back) / deploys, in percent.
    pub change_failure_rate: f64,
    /// Median seconds from commit to live, over successful deploys of a git ref.
    pub lead_time_median_s: Option<i64>,
    /// Mean seconds from a failure to the next successful deploy or rollback.
    pub time_to_restore_mean_s: Option<i64>,
    /// Successful deploys per week over the window.
    pub per_week: f64,
    /// ISO week (`2026-W48`) → (successful deploys, failures).
    pub weeks: BTreeMap<String, (usize, usize)>,
}

fn epoch(ts: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.timestamp())
}

/// Computes the metrics per environment from audit records, over `window_days` (or the
/// span of the records).
pub(crate) fn stats(records: &[Record], window_days: Option<f64>) -> Vec<EnvStats> {
    use chrono::Datelike;
    let mut by_env: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.result != "dry_run" && r.result != "refused")
    {
        by_env.entry(r.env.as_str()).or_default().push(r);
    }
    let mut out = Vec::new();
    for (env, mut rs) in by_env {
        rs.sort_by(|a, b| a.ts.cmp(&b.ts));
        let mut s = EnvStats {
            env: env.to_owned(),
            ..EnvStats::default()
        };
        let mut lead_times = Vec::new();
        let mut failures_at: Vec<(usize, i64)> = Vec::new();
        for (i, r) in rs.iter().enumerate() {
            if !r.facts.deploy {
                continue;
            }
            let Some(t) = epoch(&r.ts) else { continue };
            s.deploys += 1;
            let week = chrono::DateTime::from_timestamp(t, 0)
                .map(|d| format!("{}-W{:02}", d.iso_week().year(), d.iso_week().week()))
                .unwrap_or_default();
            let entry = s.weeks.entry(week).or_default();
            if r.result == "success" {
                s.successful += 1;
                entry.0 += 1;
                if let Some(c) = r.facts.commit_time {
                    lead_times.push(t - c);
                }
                let next_deploy = rs[i + 1..]
                    .iter()
                    .position(|x| x.facts.deploy)
                    .map_or(rs.len(), |p| i + 1 + p);
                if rs[i + 1..next_deploy]
                    .iter()
                    .any(|x| x.facts.rollback && x.result == "success")
                {
                    s.rolled_back += 1;
                    entry.1 += 1;
                    failures_at.push((i, t));
                }
            } else {
                s.failed += 1;
                entry.1 += 1;
                failures_at.push((i, t));
            }
        }
        if s.deploys > 0 {
            s.change_failure_rate =
                ((s.failed + s.rolled_back).to_f64() * 1000.0 / s.deploys.to_f64()).round() / 10.0;
        }
        lead_times.sort_unstable();
        if !lead_times.is_empty() {
            s.lead_time_median_s = Some(lead_times[(lead_times.len() - 1) / 2]);
        }
        let restores: Vec<i64> = failures_at
            .iter()
            .filter_map(|(i, t)| {
                rs[i + 1..]
                    .iter()
                    .find(|x| x.result == "success" && (x.facts.rollback || x.facts.deploy))
                    .and_then(|x| epoch(&x.ts))
                    .map(|end| end - t)
            })
            .collect();
        if !restores.is_empty() {
            s.time_to_restore_mean_s = Some(
                restores.iter().sum::<i64>() / i64::try_from(restores.len()).unwrap_or(i64::MAX),
            );
        }
        let days = window_days.unwrap_or_else(|| {
            let first = rs.first().and_then(|r| epoch(&r.ts)).unwrap_or(0);
            let last = rs.last().and_then(|r| epoch(&r.ts)).unwrap_or(0);
            ((last - first).to_f64() / 86400.0).max(7.0)
        });
        s.per_week = (s.successful.to_f64() * 7.0 / days * 100.0).round() / 100.0;
        out.push(s);
    }
    out
}

#[cfg(test)]
#[expect(
    clippy::float_cmp,
    reason = "known answers: the values are exact by construction"
)]
mod stats_tests {
    use super::*;

    fn rec(
        ts: &str,
        result: &str,
        deploy: bool,
        rollback: bool,
        commit_time: Option<&str>,
    ) -> Record {
        Record {
            ts: ts.into(),
            env: "production".into(),
            result: result.into(),
            facts: Facts {
                deploy,
                rollback,
                commit_time: commit_time.and_then(epoch),
                ..Facts::default()
            },
            ..Record::default()
        }
    }

    #[test]
    fn dora_figures_of_a_known_history_are_exact() {
        let log = vec![
            // Monday: a good deploy, committed two hours earlier.
            rec(
                "2026-11-16T10:00:00Z",
                "success",
                true,
                false,
                Some("2026-11-16T08:00:00Z"),
            ),
            // Tuesday: a deploy that fails; fixed by a deploy 30 minutes later.
            rec("2026-11-17T10:00:00Z", "failed", true, false, None),
            rec(
                "2026-11-17T10:30:00Z",
                "success",
                true,
                false,
                Some("2026-11-17T10:20:00Z"),
            ),
            // Wednesday: a deploy rolled back 15 minutes later.
            rec(
                "2026-11-18T09:00:00Z",
                "success",
                true,
                false,
                Some("2026-11-18T06:00:00Z"),
            ),
            rec("2026-11-18T09:15:00Z", "success", false, true, None),
            // A health check and a dry run do not count.
            rec("2026-11-18T10:00:00Z", "success", false, false, None),
            rec("2026-11-18T11:00:00Z", "dry_run", true, false, None),
            // Next week: one more good deploy.
            rec(
                "2026-11-24T12:00:00Z",
                "success",
                true,
                false,
                Some("2026-11-24T11:00:00Z"),
            ),
        ];
        let s = &stats(&log, Some(14.0))[0];
        assert_eq!(
            (s.deploys, s.successful, s.failed, s.rolled_back),
            (5, 4, 1, 1)
        );
        assert_eq!(s.change_failure_rate, 40.0);
        // Lead times 2h, 10m, 3h, 1h → median of [600, 3600, 7200, 10800] = 3600.
        assert_eq!(s.lead_time_median_s, Some(3600));
        // Restores: 30 min (fix deploy) and 15 min (rollback) → mean 1350 s.
        assert_eq!(s.time_to_restore_mean_s, Some(1350));
        assert_eq!(s.per_week, 2.0);
        assert_eq!(s.weeks["2026-W47"], (3, 2));
        assert_eq!(s.weeks["2026-W48"], (1, 0));
    }
}
