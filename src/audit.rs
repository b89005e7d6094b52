//! The audit log: one JSON line per run (and per REPL action) — locally, and on every
//! host the run touched (`<deploy_path>/.runbook/audit.jsonl`). It answers "who did what,
//! where, why, and how did it end" after the fact; `runbook audit` queries it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::output::{Event, Kind, Outcome, Sink};

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub name: String,
    pub result: String,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Switch {
    pub before: String,
    pub after: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub ts: String,
    pub run: String,
    pub actor: String,
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
}

/// Where the local audit log lives: `RUNBOOK_AUDIT_FILE`, else the XDG state directory.
pub fn local_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RUNBOOK_AUDIT_FILE") {
        return PathBuf::from(p);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("runbook/audit.jsonl")
}

/// Appends one line (a single `write` of a whole line, so concurrent runs interleave by line).
pub fn append(path: &std::path::Path, record: &Record) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(&line)
}

/// Every record of a log, oldest first; unreadable lines are skipped.
pub fn read(path: &std::path::Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Collects what the audit record needs from the run's events.
#[derive(Default, Clone)]
pub struct Collector(Arc<Mutex<Collected>>);

#[derive(Default)]
pub struct Collected {
    pub steps: Vec<Step>,
    pub hosts: Vec<String>,
    /// In a dry run: every effect, in order (the recorded plan).
    pub plan: Vec<serde_json::Value>,
    dry_run: bool,
    depth: usize,
    step: Vec<String>,
}

impl Collector {
    pub fn take(&self) -> (Vec<Step>, Vec<String>) {
        let c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (c.steps.clone(), c.hosts.clone())
    }

    /// Starts a new record (the REPL audits each action on its own).
    pub fn reset(&self) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.steps.clear();
        c.hosts.clear();
    }

    /// The recorded plan of a dry run.
    pub fn plan(&self) -> Vec<serde_json::Value> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plan
            .clone()
    }
}

impl Sink for Collector {
    fn event(&self, e: &Event) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let step = c.step.last().cloned();
        if c.dry_run
            && matches!(
                e.event,
                Kind::CommandStarted | Kind::Notification | Kind::Lock
            )
        {
            let kind = match e.event {
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
                // it are synthetic.
                action["synthetic_result"] = serde_json::json!(true);
            }
            if let Some(m) = &e.message {
                action[if kind == "command" {
                    "label"
                } else {
                    "message"
                }] = serde_json::json!(m);
            }
            c.plan.push(action);
        }
        match e.event {
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
pub fn since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
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
