//! Typed events: the one record of everything a run does.
//!
//! The JSON form of [`Event`] is a machine-facing contract (README "JSON events"):
//! fields are added, never renamed. Optional fields are omitted when they do not apply.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    RunStarted,
    StepStarted,
    CommandStarted,
    Output,
    CommandFinished,
    StepFinished,
    Log,
    Warning,
    Notification,
    Lock,
    RunFinished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Ok,
    Failed,
    Skipped,
    DryRun,
    Aborted,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::DryRun => "dry_run",
            Outcome::Aborted => "aborted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Level {
    /// `print()` from a script: the script's own output.
    Print,
    Debug,
    Info,
    Warn,
    Error,
}

/// One event. Built with [`Event::new`] and the `with_*` setters; `ts` and `run` are
/// filled in by the output layer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    pub ts: String,
    pub run: String,
    /// What happened; the JSON line's `event` key.
    #[serde(rename = "event")]
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Extra facts for `run_started` / `run_finished` (script, env, dry_run, release …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Event {
    pub(crate) fn new(kind: Kind) -> Event {
        Event {
            ts: String::new(),
            run: String::new(),
            kind,
            step: None,
            host: None,
            argv: None,
            stream: None,
            level: None,
            code: None,
            duration_ms: None,
            result: None,
            message: None,
            data: None,
        }
    }

    pub(crate) fn step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into());
        self
    }
    pub(crate) fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
    pub(crate) fn argv(mut self, argv: Vec<String>) -> Self {
        self.argv = Some(argv);
        self
    }
    pub(crate) fn stream(mut self, stream: Stream) -> Self {
        self.stream = Some(stream);
        self
    }
    pub(crate) fn level(mut self, level: Level) -> Self {
        self.level = Some(level);
        self
    }
    pub(crate) fn code(mut self, code: i32) -> Self {
        self.code = Some(code);
        self
    }
    pub(crate) fn duration(mut self, d: std::time::Duration) -> Self {
        self.duration_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self
    }
    pub(crate) fn result(mut self, r: Outcome) -> Self {
        self.result = Some(r);
        self
    }
    pub(crate) fn message(mut self, m: impl Into<String>) -> Self {
        self.message = Some(m.into());
        self
    }
    pub(crate) fn data(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.data
            .get_or_insert_with(serde_json::Map::new)
            .insert(key.to_owned(), value.into());
        self
    }

    /// Applies `f` to every string the event carries (used for redaction).
    pub(crate) fn map_strings(&mut self, f: &dyn Fn(&str) -> Option<String>) {
        let apply = |s: &mut String| {
            if let Some(new) = f(s) {
                *s = new;
            }
        };
        for s in [&mut self.step, &mut self.host, &mut self.message]
            .into_iter()
            .flatten()
        {
            apply(s);
        }
        for s in self.argv.iter_mut().flatten() {
            apply(s);
        }
        if let Some(data) = &mut self.data {
            for v in data.values_mut() {
                map_json_strings(v, f);
            }
        }
    }
}

fn map_json_strings(v: &mut serde_json::Value, f: &dyn Fn(&str) -> Option<String>) {
    match v {
        serde_json::Value::String(s) => {
            if let Some(new) = f(s) {
                *s = new;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| map_json_strings(i, f)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|i| map_json_strings(i, f)),
        _ => {}
    }
}
