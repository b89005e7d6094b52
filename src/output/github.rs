//! GitHub Actions: top-level steps as `::group::`s, script errors as `::error` annotations
//! with file/line/col, and a Markdown summary of the run in `$GITHUB_STEP_SUMMARY`.
//! (Secret values are announced with `::add-mask::` by the redactor's hook.)

use crate::sync::Locked;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;

use super::{Event, Kind, Outcome, Sink};

#[derive(Default)]
struct State {
    depth: usize,
    steps: Vec<(String, Outcome, u64)>,
    hosts: std::collections::BTreeMap<String, (u32, u32)>,
    started: Option<Event>,
}

pub(crate) struct GitHub {
    summary_file: Option<std::path::PathBuf>,
    state: Mutex<State>,
}

impl GitHub {
    pub(crate) fn new() -> GitHub {
        GitHub {
            summary_file: std::env::var_os("GITHUB_STEP_SUMMARY").map(Into::into),
            state: Mutex::new(State::default()),
        }
    }
}

impl Default for GitHub {
    fn default() -> Self {
        GitHub::new()
    }
}

/// A workflow command's data: `%`, CR and LF escaped as GitHub requires.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn command(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Announces a secret to the runner so it masks it in the whole log.
pub(crate) fn add_mask(value: &str) {
    command(&format!("::add-mask::{}", escape_data(value)));
}

fn word(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "✅ ok",
        Outcome::DryRun => "📝 dry run",
        Outcome::Skipped => "⏭ skipped",
        Outcome::Failed => "❌ failed",
        Outcome::Aborted => "🛑 aborted",
    }
}

impl Sink for GitHub {
    fn event(&self, e: &Event) {
        // Workflow commands and the summary show what hosts print, never obey it.
        let neutralised = super::terminal::neutralise_event(e);
        let e = &neutralised;
        let mut st = self.state.locked();
        match e.kind {
            Kind::RunStarted => st.started = Some(e.clone()),
            Kind::StepStarted => {
                if st.depth == 0 {
                    command(&format!(
                        "::group::{}",
                        escape_data(e.step.as_deref().unwrap_or(""))
                    ));
                }
                st.depth += 1;
            }
            Kind::StepFinished => {
                st.depth = st.depth.saturating_sub(1);
                if st.depth == 0 {
                    command("::endgroup::");
                    st.steps.push((
                        e.step.clone().unwrap_or_default(),
                        e.result.unwrap_or(Outcome::Ok),
                        e.duration_ms.unwrap_or(0),
                    ));
                }
            }
            Kind::CommandFinished => {
                if let Some(h) = &e.host {
                    let entry = st.hosts.entry(h.clone()).or_default();
                    if e.result == Some(Outcome::Failed) {
                        entry.1 += 1;
                    } else {
                        entry.0 += 1;
                    }
                }
            }
            Kind::Warning => {
                command(&format!(
                    "::warning::{}",
                    escape_data(e.message.as_deref().unwrap_or(""))
                ));
            }
            Kind::RunFinished => {
                if st.depth > 0 {
                    command("::endgroup::");
                    st.depth = 0;
                }
                let data = e.data.clone().unwrap_or_default();
                if let Some(err) = data.get("error").and_then(|v| v.as_str()) {
                    let first = err
                        .lines()
                        .next()
                        .unwrap_or(err)
                        .trim_start_matches("error: ");
                    let mut props = String::new();
                    if let Some(loc) = data.get("location").and_then(|v| v.as_str()) {
                        let mut parts = loc.rsplitn(3, ':');
                        let (col, line, file) = (parts.next(), parts.next(), parts.next());
                        if let (Some(file), Some(line), Some(col)) = (file, line, col) {
                            props =
                                format!(" file={},line={line},col={col}", escape_property(file));
                        }
                    }
                    command(&format!(
                        "::error{props}::{}",
                        escape_data(&format!("{first}\n{err}"))
                    ));
                }
                if let Some(path) = &self.summary_file {
                    let summary = summary(&st, e);
                    if let Ok(mut f) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                    {
                        let _ = f.write_all(summary.as_bytes());
                    }
                }
            }
            _ => {}
        }
    }
}

fn summary(st: &State, finished: &Event) -> String {
    let start = st
        .started
        .as_ref()
        .and_then(|s| s.data.clone())
        .unwrap_or_default();
    let get = |k: &str| {
        start
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let result = finished.result.unwrap_or(Outcome::Ok);
    let mut s = format!(
        "## runbook: {} on `{}` — {}\n\n| | |\n|---|---|\n| environment | `{}` |\n| script | `{}` |\n| actor | {} |\n| duration | {} ms |\n",
        get("script"),
        get("env"),
        word(result),
        get("env"),
        get("script"),
        get("actor"),
        finished.duration_ms.unwrap_or(0)
    );
    if let Some(args) = start
        .get("args")
        .and_then(|a| a.as_object())
        .filter(|a| !a.is_empty())
    {
        let list: Vec<String> = args
            .iter()
            .map(|(k, v)| format!("`{k}={}`", v.as_str().unwrap_or("")))
            .collect();
        let _ = writeln!(s, "| arguments | {} |", list.join(" "));
    }
    if !get("reason").is_empty() {
        let _ = writeln!(s, "| reason | {} |", get("reason"));
    }
    if let Some(live) = finished
        .data
        .as_ref()
        .and_then(|d| d.get("releases"))
        .and_then(|r| r.as_object())
    {
        let list: Vec<String> = live
            .iter()
            .map(|(h, r)| format!("{h}: `{}`", r.as_str().unwrap_or("")))
            .collect();
        let _ = writeln!(s, "| release now live | {} |", list.join(", "));
    }
    if !st.steps.is_empty() {
        s.push_str("\n| step | result | duration |\n|---|---|---:|\n");
        for (name, r, ms) in &st.steps {
            let _ = writeln!(s, "| {name} | {} | {ms} ms |", word(*r));
        }
    }
    if !st.hosts.is_empty() {
        s.push_str("\n| host | commands ok | failed |\n|---|---:|---:|\n");
        for (h, (ok, failed)) in &st.hosts {
            let _ = writeln!(s, "| {h} | {ok} | {failed} |");
        }
    }
    if let Some(err) = finished
        .data
        .as_ref()
        .and_then(|d| d.get("error"))
        .and_then(|v| v.as_str())
    {
        let _ = writeln!(s, "\n```text\n{err}\n```");
    }
    s.push('\n');
    s
}
