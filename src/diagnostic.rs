//! Script errors as an on-call engineer needs them: the message first, then where it
//! happened (file:line:col, the source line, a caret), then each "called from" frame out
//! to the script that started it — including frames inside stdlib modules.

use std::fmt;

use rhai::{EvalAltResult, ParseError, Position};

use crate::sources::SourceMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    /// Innermost first: where the error happened, then its callers.
    pub frames: Vec<Frame>,
    /// What to do about it, shown after the source excerpts.
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub source: String,
    pub line: usize,
    pub col: usize,
    /// The source line, when the source is known.
    pub text: Option<String>,
    /// For caller frames: what was being called (`migrate`, a closure, a module).
    pub context: Option<String>,
}

impl Diagnostic {
    pub fn from_parse(err: &ParseError, source: &str, sources: &SourceMap) -> Diagnostic {
        Diagnostic {
            message: format!("syntax error: {}", err.err_type()),
            frames: frame(source, err.position(), sources, None)
                .into_iter()
                .collect(),
            hint: None,
        }
    }

    /// Unwinds Rhai's nested call/module errors into frames.
    pub fn from_eval(err: &EvalAltResult, main_source: &str, sources: &SourceMap) -> Diagnostic {
        let mut callers = Vec::new();
        let mut current = main_source.to_owned();
        let mut err = err;
        loop {
            match err {
                EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
                    let what = if name.starts_with("anon$") {
                        "in a closure".to_owned()
                    } else {
                        format!("in `{name}`")
                    };
                    callers.extend(frame(&current, *pos, sources, Some(what)));
                    if !src.is_empty() {
                        current.clone_from(src);
                    }
                    err = inner;
                }
                EvalAltResult::ErrorInModule(name, inner, pos) => {
                    callers.extend(frame(
                        &current,
                        *pos,
                        sources,
                        Some(format!("while importing `{name}`")),
                    ));
                    if !name.is_empty() {
                        current.clone_from(name);
                    }
                    err = inner;
                }
                leaf => {
                    let mut frames: Vec<Frame> = frame(&current, leaf.position(), sources, None)
                        .into_iter()
                        .collect();
                    callers.reverse();
                    frames.extend(callers);
                    let (message, hint) = leaf_message(leaf);
                    return Diagnostic {
                        message,
                        frames,
                        hint,
                    };
                }
            }
        }
    }

    /// A diagnostic with no location (errors raised outside any script).
    pub fn plain(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            frames: Vec::new(),
            hint: None,
        }
    }

    /// A copy with every secret value masked (messages and source lines alike).
    pub fn redacted(&self, redactor: &crate::redact::Redactor) -> Diagnostic {
        let mut d = self.clone();
        d.message = redactor.redact(&d.message).into_owned();
        for f in &mut d.frames {
            if let Some(t) = &f.text {
                f.text = Some(redactor.redact(t).into_owned());
            }
        }
        d.hint = d.hint.map(|h| redactor.redact(&h).into_owned());
        d
    }

    /// The innermost location as `file:line:col`.
    pub fn location(&self) -> Option<String> {
        self.frames
            .first()
            .map(|f| format!("{}:{}:{}", f.source, f.line, f.col))
    }
}

fn frame(
    source: &str,
    pos: Position,
    sources: &SourceMap,
    context: Option<String>,
) -> Option<Frame> {
    let (line, col) = (pos.line()?, pos.position().unwrap_or(1));
    let text = sources
        .get(source)
        .and_then(|t| t.lines().nth(line - 1).map(str::to_owned));
    Some(Frame {
        source: source.to_owned(),
        line,
        col,
        text,
        context,
    })
}

/// How a value the script modules throw reads as a sentence (their host error type),
/// registered by them: the diagnostics sit below the modules and cannot name their types.
static SENTENCE: std::sync::OnceLock<fn(&rhai::Dynamic) -> Option<String>> =
    std::sync::OnceLock::new();

/// Registers how thrown values of the script modules read (once per process).
pub(crate) fn register_sentence(f: fn(&rhai::Dynamic) -> Option<String>) {
    let _ = SENTENCE.set(f);
}

fn leaf_message(err: &EvalAltResult) -> (String, Option<String>) {
    let plain = |s: String| (s, None);
    match err {
        EvalAltResult::ErrorRuntime(value, _) => {
            // A command's failure (caught or not, rethrown with `throw e`) reads as the
            // sentence it carries.
            if let Some(sentence) = SENTENCE.get().and_then(|f| f(value)) {
                return plain(sentence);
            }
            if value.is_map() {
                let map = value.clone().cast::<rhai::Map>();
                if let Some(m) = map.get("message") {
                    return plain(m.to_string());
                }
            }
            plain(value.to_string())
        }
        EvalAltResult::ErrorTooManyOperations(_) => (
            "the script exceeded its operation limit and was stopped".into(),
            Some("look for a loop that never ends".into()),
        ),
        EvalAltResult::ErrorStackOverflow(_) => (
            "the script exceeded its call depth limit".into(),
            Some("look for unbounded recursion".into()),
        ),
        EvalAltResult::ErrorTerminated(..) => plain("interrupted".into()),
        EvalAltResult::ErrorFunctionNotFound(sig, _) => (
            format!("unknown function: {sig}"),
            Some("`runbook doc` lists every function scripts can call".into()),
        ),
        EvalAltResult::ErrorVariableNotFound(name, _) => plain(format!("unknown variable `{name}`")),
        EvalAltResult::ErrorModuleNotFound(name, _) => (
            format!("module `{name}` not found"),
            Some("modules are looked up in the project's stdlib/, the embedded stdlib, then next to the script".into()),
        ),
        EvalAltResult::ErrorParsing(p, _) => plain(format!("syntax error: {p}")),
        other => {
            let text = other.to_string();
            let suffix = format!(" ({})", other.position());
            plain(match text.strip_suffix(&suffix) {
                Some(t) if !other.position().is_none() => t.to_owned(),
                _ => text,
            })
        }
    }
}

/// The run of identifier characters at `col` (1-based), for the caret underline.
fn span_len(text: &str, col: usize) -> usize {
    let rest: String = text.chars().skip(col.saturating_sub(1)).collect();
    if let Some(inner) = rest.strip_prefix('"')
        && let Some(end) = inner.find('"')
    {
        return inner[..end].chars().count() + 2;
    }
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let n = text
        .chars()
        .skip(col.saturating_sub(1))
        .take_while(|c| word(*c))
        .count();
    n.max(1)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        let width = self
            .frames
            .iter()
            .map(|fr| fr.line.to_string().len())
            .max()
            .unwrap_or(1);
        let pad = " ".repeat(width);
        for (i, fr) in self.frames.iter().enumerate() {
            let at = format!("{}:{}:{}", fr.source, fr.line, fr.col);
            if i == 0 {
                write!(f, "\n{pad}--> {at}")?;
            } else {
                let ctx = fr
                    .context
                    .as_deref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default();
                write!(f, "\n{pad} = called from {at}{ctx}")?;
            }
            if let Some(text) = &fr.text {
                let caret_pad: String = text
                    .chars()
                    .take(fr.col.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                write!(
                    f,
                    "\n{pad} |\n{:>width$} | {text}\n{pad} | {caret_pad}{}",
                    fr.line,
                    "^".repeat(span_len(text, fr.col))
                )?;
            }
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n{pad} = hint: {hint}")?;
        }
        Ok(())
    }
}
