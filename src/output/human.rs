//! Human output: what the on-call engineer reads on stderr.
//!
//! Colours only on a terminal and never with `NO_COLOR`; a spinner for a step that runs
//! longer than a second; command output prefixed with the host; a summary at the end.
//! Every string of an event is neutralised (control characters shown as escapes) before
//! it is styled, so only runbook's own colours reach the terminal.

use crate::num::ToF64;
use crate::sync::Locked;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console::Style;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Event, Kind, Level, Outcome, Sink, Stream, Verbosity};

pub(crate) struct Human {
    verbosity: Verbosity,
    /// `print()` goes to stdout unless stdout carries JSON.
    print_to_stdout: bool,
    spinners: bool,
    /// Not a terminal (CI logs, files): a host's output is kept together as one block,
    /// printed when its command ends, instead of interleaved line by line.
    fold: bool,
    styles: Styles,
    state: Mutex<State>,
}

struct Styles {
    bold: Style,
    dim: Style,
    green: Style,
    red: Style,
    yellow: Style,
    cyan: Style,
}

#[derive(Default)]
struct State {
    dry_run: bool,
    depth: usize,
    steps: Vec<(String, Outcome, u64)>,
    spinner: Option<Arc<ProgressBar>>,
    /// Folded output waiting for its command to end, per host.
    pending: std::collections::BTreeMap<String, Vec<String>>,
}

impl Human {
    pub(crate) fn new(verbosity: Verbosity, color: bool, print_to_stdout: bool) -> Human {
        let style = |s: Style| s.force_styling(color);
        Human {
            verbosity,
            print_to_stdout,
            spinners: color && std::io::stderr().is_terminal() && verbosity > Verbosity::Quiet,
            fold: !std::io::stderr().is_terminal(),
            styles: Styles {
                bold: style(Style::new().bold()),
                dim: style(Style::new().dim()),
                green: style(Style::new().green()),
                red: style(Style::new().red().bold()),
                yellow: style(Style::new().yellow()),
                cyan: style(Style::new().cyan()),
            },
            state: Mutex::new(State::default()),
        }
    }

    fn line(state: &State, text: &str) {
        let write = || {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
        };
        match &state.spinner {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    fn start_spinner(&self, state: &mut State, step: &str) {
        if !self.spinners || state.depth != 1 {
            return;
        }
        let bar = Arc::new(ProgressBar::with_draw_target(
            None,
            ProgressDrawTarget::hidden(),
        ));
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(step.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        // Only steps that last longer than a second get a visible progress line.
        let weak = Arc::downgrade(&bar);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            if let Some(bar) = weak.upgrade()
                && !bar.is_finished()
            {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
        });
        state.spinner = Some(bar);
    }

    fn stop_spinner(state: &mut State) {
        if state.depth == 0
            && let Some(bar) = state.spinner.take()
        {
            bar.finish_and_clear();
        }
    }
}

fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms.to_f64() / 1000.0)
    } else {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The command as a shell would show it, every argument quoted.
pub(crate) fn display_argv(argv: &[String]) -> String {
    crate::quote::join(argv)
}

impl Sink for Human {
    fn event(&self, e: &Event) {
        // What hosts print reaches the terminal shown, never obeyed (see `terminal`).
        let neutralised = super::terminal::neutralise_event(e);
        let e = &neutralised;
        let mut state = self.state.locked();
        match e.kind {
            Kind::RunStarted => self.run_started(&mut state, e),
            Kind::StepStarted => self.step_started(&mut state, e),
            Kind::StepFinished => self.step_finished(&mut state, e),
            Kind::CommandStarted => self.command_started(&mut state, e),
            Kind::Output => self.output(&mut state, e),
            Kind::CommandFinished => self.command_finished(&mut state, e),
            Kind::Log => self.log(&mut state, e),
            Kind::Warning => self.warning(&mut state, e),
            Kind::Notification | Kind::Lock => self.note(&mut state, e),
            Kind::RunFinished => self.run_finished(&mut state, e),
        }
    }
}

impl Human {
    /// `[host] `, in colour, for an event about one host.
    fn host(&self, e: &Event) -> String {
        e.host
            .as_deref()
            .map(|h| format!("{} ", self.styles.cyan.apply_to(format!("[{h}]"))))
            .unwrap_or_default()
    }

    fn run_started(&self, state: &mut State, e: &Event) {
        let s = &self.styles;
        let normal = self.verbosity >= Verbosity::Normal;
        state.dry_run = e
            .data
            .as_ref()
            .and_then(|d| d.get("dry_run"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        if normal {
            let msg = e.message.as_deref().unwrap_or("");
            let dry = if state.dry_run {
                format!(
                    " {}",
                    s.yellow.apply_to("(dry run: nothing will be executed)")
                )
            } else {
                String::new()
            };
            Self::line(state, &format!("{}{dry}", s.bold.apply_to(msg)));
        }
    }

    fn step_started(&self, state: &mut State, e: &Event) {
        let s = &self.styles;
        let normal = self.verbosity >= Verbosity::Normal;
        let name = e.step.as_deref().unwrap_or("");
        if normal {
            let text = format!(
                "{}{} {}",
                "  ".repeat(state.depth),
                s.bold.apply_to("▶"),
                s.bold.apply_to(name)
            );
            Self::line(state, &text);
        }
        state.depth += 1;
        self.start_spinner(state, name);
    }

    fn step_finished(&self, state: &mut State, e: &Event) {
        let s = &self.styles;
        let normal = self.verbosity >= Verbosity::Normal;
        state.depth = state.depth.saturating_sub(1);
        Self::stop_spinner(state);
        let name = e.step.clone().unwrap_or_default();
        let ms = e.duration_ms.unwrap_or(0);
        let result = e.result.unwrap_or(Outcome::Ok);
        if state.depth == 0 {
            state.steps.push((name.clone(), result, ms));
        }
        if normal || result == Outcome::Failed {
            let mark = match result {
                Outcome::Ok | Outcome::DryRun => s.green.apply_to("✓"),
                Outcome::Skipped => s.dim.apply_to("-"),
                Outcome::Failed | Outcome::Aborted => s.red.apply_to("✗"),
            };
            let text = format!(
                "{}{mark} {name} {}",
                "  ".repeat(state.depth),
                s.dim
                    .apply_to(format!("({}{})", result_word(result), fmt_ms(ms)))
            );
            Self::line(state, &text);
        }
    }

    fn command_started(&self, state: &mut State, e: &Event) {
        let s = &self.styles;
        let normal = self.verbosity >= Verbosity::Normal;
        let verbose = self.verbosity >= Verbosity::Verbose;
        let indent = "  ".repeat(state.depth.max(1));
        if normal && (verbose || e.level != Some(Level::Debug)) {
            let argv = match &e.message {
                Some(label) => label.clone(),
                None => e.argv.as_deref().map(display_argv).unwrap_or_default(),
            };
            let verb = if state.dry_run { "would run:" } else { "$" };
            let text = format!(
                "{indent}{}{} {}",
                self.host(e),
                s.dim.apply_to(verb),
                s.dim.apply_to(argv)
            );
            Self::line(state, &text);
        }
    }

    fn output(&self, state: &mut State, e: &Event) {
        let s = &self.styles;
        let normal = self.verbosity >= Verbosity::Normal;
        let indent = "  ".repeat(state.depth.max(1));
        if normal {
            let text = e.message.as_deref().unwrap_or("");
            let text = if e.stream == Some(Stream::Stderr) {
                s.yellow.apply_to(text).to_string()
            } else {
                text.to_owned()
            };
            let line = format!("{indent}{}{text}", self.host(e));
            match (&e.host, self.fold) {
                (Some(h), true) => state.pending.entry(h.clone()).or_default().push(line),
                _ => Self::line(state, &line),
            }
        }
    }

    fn command_finished(&self, state: &mut State, e: &Event) {
        let s = &self.styles;
        let verbose = self.verbosity >= Verbosity::Verbose;
        let indent = "  ".repeat(state.depth.max(1));
        if let Some(lines) = e.host.as_ref().and_then(|h| state.pending.remove(h)) {
            Self::line(state, &lines.join("\n"));
        }
        let ms = e.duration_ms.unwrap_or(0);
        match e.result {
            Some(Outcome::Failed) => {
                let what = e
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("exit code {}", e.code.unwrap_or(-1)));
                let text = format!(
                    "{indent}{}{} {what} after {}",
                    self.host(e),
                    s.red.apply_to("✗"),
                    fmt_ms(ms)
                );
                Self::line(state, &text);
            }
            Some(Outcome::Aborted) => {
                let text = format!(
                    "{indent}{}{} interrupted",
                    self.host(e),
                    s.red.apply_to("✗")
                );
                Self::line(state, &text);
            }
            _ if verbose => {
                let text = format!(
                    "{indent}{}{}",
                    self.host(e),
                    s.dim.apply_to(format!("exit 0 ({})", fmt_ms(ms)))
                );
                Self::line(state, &text);
            }
            _ => {}
        }
    }

    fn log(&self, state: &mut State, e: &Event) {
        let s = &self.styles;
        let normal = self.verbosity >= Verbosity::Normal;
        let verbose = self.verbosity >= Verbosity::Verbose;
        let indent = "  ".repeat(state.depth.max(1));
        let msg = e.message.as_deref().unwrap_or("");
        match e.level.unwrap_or(Level::Info) {
            Level::Print if self.print_to_stdout => {
                let write = || {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{msg}");
                };
                match &state.spinner {
                    Some(bar) => bar.suspend(write),
                    None => write(),
                }
            }
            Level::Print | Level::Info if normal => {
                Self::line(state, &format!("{indent}{msg}"));
            }
            Level::Debug if verbose => {
                Self::line(state, &format!("{indent}{}", s.dim.apply_to(msg)));
            }
            Level::Error => {
                Self::line(state, &format!("{}{msg}", s.red.apply_to("error: ")));
            }
            _ => {}
        }
    }

    fn warning(&self, state: &mut State, e: &Event) {
        let s = &self.styles;
        let msg = e.message.as_deref().unwrap_or("");
        Self::line(
            state,
            &format!("{}{}{msg}", self.host(e), s.yellow.apply_to("warning: ")),
        );
    }

    fn note(&self, state: &mut State, e: &Event) {
        let normal = self.verbosity >= Verbosity::Normal;
        let indent = "  ".repeat(state.depth.max(1));
        if normal {
            let msg = e.message.as_deref().unwrap_or("");
            Self::line(state, &format!("{indent}{}{msg}", self.host(e)));
        }
    }

    fn run_finished(&self, state: &mut State, e: &Event) {
        let s = &self.styles;
        let normal = self.verbosity >= Verbosity::Normal;
        let pending = std::mem::take(&mut state.pending);
        for lines in pending.values() {
            Self::line(state, &lines.join("\n"));
        }
        if let Some(bar) = state.spinner.take() {
            bar.finish_and_clear();
        }
        let result = e.result.unwrap_or(Outcome::Ok);
        if normal && !state.steps.is_empty() {
            let width = state.steps.iter().map(|(n, ..)| n.len()).max().unwrap_or(0);
            let mut text = String::from("\nsummary:");
            for (name, r, ms) in &state.steps {
                let _ = write!(
                    text,
                    "\n  {name:<width$}  {:<8} {:>8}",
                    r.as_str(),
                    fmt_ms(*ms)
                );
            }
            Self::line(state, &text);
        }
        let msg = e.message.as_deref().unwrap_or("");
        let ms = fmt_ms(e.duration_ms.unwrap_or(0));
        let text = match result {
            Outcome::Ok | Outcome::DryRun => {
                format!("{} {msg} ({ms})", s.green.apply_to("✓"))
            }
            _ => format!("{} {msg} ({ms})", s.red.apply_to("✗")),
        };
        Self::line(state, &text);
    }
}

fn result_word(r: Outcome) -> &'static str {
    match r {
        Outcome::Ok => "",
        Outcome::DryRun => "dry run, ",
        Outcome::Skipped => "skipped, ",
        Outcome::Failed => "failed, ",
        Outcome::Aborted => "aborted, ",
    }
}
