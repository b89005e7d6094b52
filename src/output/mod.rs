//! The output layer: the only place that writes to the terminal.
//!
//! Modules never print. They emit [`Event`]s through [`Output::emit`], which stamps the
//! time and run id, redacts every secret value, and hands the event to each sink (human
//! text on the terminal, JSON lines on stdout, later the audit log).

pub(crate) mod event;
pub(crate) mod github;
mod human;
mod table;
pub(crate) mod terminal;

#[cfg(test)]
use crate::sync::Locked;
use std::io::Write;
use std::sync::Arc;

pub(crate) use event::{Event, Kind, Level, Outcome, Stream};
pub(crate) use human::Human;
pub(crate) use table::table;

use crate::redact::Redactor;

/// How much the human sink says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

pub(crate) trait Sink: Send + Sync {
    fn event(&self, event: &Event);
}

pub(crate) struct Output {
    run_id: String,
    redactor: Arc<Redactor>,
    sinks: Vec<Box<dyn Sink>>,
}

impl Output {
    pub(crate) fn new(run_id: String, redactor: Arc<Redactor>) -> Output {
        Output {
            run_id,
            redactor,
            sinks: Vec::new(),
        }
    }

    pub(crate) fn with_sink(mut self, sink: impl Sink + 'static) -> Output {
        self.sinks.push(Box::new(sink));
        self
    }

    pub(crate) fn redactor(&self) -> &Arc<Redactor> {
        &self.redactor
    }

    pub(crate) fn emit(&self, mut event: Event) {
        event.ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        event.run.clone_from(&self.run_id);
        if !self.redactor.is_empty() {
            let redactor = &self.redactor;
            event.map_strings(&|s| match redactor.redact(s) {
                std::borrow::Cow::Owned(new) => Some(new),
                std::borrow::Cow::Borrowed(_) => None,
            });
        }
        for sink in &self.sinks {
            sink.event(&event);
        }
    }

    /// A script's `print`, a log line, a warning.
    pub(crate) fn log(&self, level: Level, message: impl Into<String>) {
        let kind = if level == Level::Warn {
            Kind::Warning
        } else {
            Kind::Log
        };
        self.emit(Event::new(kind).level(level).message(message));
    }
}

/// One JSON object per line on stdout.
pub(crate) struct JsonLines;

impl Sink for JsonLines {
    fn event(&self, event: &Event) {
        let Ok(line) = serde_json::to_string(event) else {
            return;
        };
        // Control characters stay in the value, escaped: none reaches a terminal raw.
        let line = terminal::json_safe(&line);
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) must not abort a deploy half-way.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

#[cfg(test)]
/// Keeps every event in memory (tests, summaries built after the fact).
#[derive(Default, Clone)]
pub(crate) struct Memory(pub Arc<std::sync::Mutex<Vec<Event>>>);

#[cfg(test)]
impl Sink for Memory {
    fn event(&self, event: &Event) {
        self.0.locked().push(event.clone());
    }
}

/// Writes a command's result (a table, a JSON document) to stdout. A reader that went
/// away (`runbook hosts --json | head -1`) ends the output quietly: the command still
/// succeeds, as `cat` would under an ignored SIGPIPE. SIGPIPE itself stays ignored
/// (Rust's default): a deploy writes into pipes of its own children (ssh, tar), and one
/// that exits early must not kill the runner half-way through a switch.
pub(crate) fn stdout(text: &str) -> Result<(), crate::error::Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(crate::error::Error::Read {
            path: "stdout".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Whether to colour stderr: only on a terminal, and never with `NO_COLOR` set.
pub(crate) fn color_enabled() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_redacts_every_field_before_any_sink_sees_it() {
        let redactor = Arc::new(Redactor::new());
        redactor.add("hunter2");
        let memory = Memory::default();
        let output = Output::new("r1".into(), redactor).with_sink(memory.clone());
        output.emit(
            Event::new(Kind::CommandStarted)
                .host("web1")
                .argv(vec!["echo".into(), "pw=hunter2".into()])
                .message("hunter2 here")
                .data("reason", "because hunter2"),
        );
        let events = memory.0.lock().unwrap();
        let json = serde_json::to_string(&events[0]).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(json.contains("pw=***"), "{json}");
        assert_eq!(events[0].run, "r1");
        assert!(!events[0].ts.is_empty());
    }
}
