//! `runbook list`: every script of the project with its purpose and arguments, read from
//! its leading comment block — the script documents itself, so the list cannot drift from
//! it. It reads files only: it never compiles or runs a script.
//!
//! The comment convention of the shipped scripts: the first sentence says what the script
//! is for; an `Arguments:` paragraph names the `key=value` arguments (continuation lines
//! indented); usage lines start with `runbook run`; `// runbook: read-only|emergency`
//! declares the script's kind (see `permissions::kind_of`).

use std::path::Path;

use crate::cli::{Global, ListArgs};
use crate::error::Error;
use crate::permissions::{ScriptKind, kind_of};
use crate::project::{Project, rhai_files};

/// What a script says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ScriptDoc {
    /// As `runbook run` takes it: `deploy`, `emergency/stop-everything`.
    pub name: String,
    /// `change`, `read-only` or `emergency`.
    pub kind: &'static str,
    /// The first sentence of the leading comment, `None` without one.
    pub purpose: Option<String>,
    /// `key=VALUE` as documented (`ref=TAG|BRANCH|COMMIT`), in order, each once.
    pub arguments: Vec<String>,
    /// The whole leading comment, directive and usage lines left out.
    pub description: String,
    /// Its `runbook run …` examples.
    pub usage: Vec<String>,
}

pub(crate) fn run(global: &Global, args: &ListArgs) -> Result<(), Error> {
    let project = Project::load(global.config.as_deref())?;
    let dir = project.scripts_dir();
    let mut docs = Vec::new();
    for path in rhai_files(&dir) {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let name = path
            .strip_prefix(&dir)
            .unwrap_or(&path)
            .with_extension("")
            .to_string_lossy()
            .into_owned();
        docs.push(describe(&name, &text));
    }
    docs.sort_by(|a, b| a.name.cmp(&b.name));
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&docs).unwrap_or_default();
        s.push('\n');
        s
    } else {
        table(&docs, &dir)
    };
    crate::output::stdout(&out)
}

/// The aligned table (`SCRIPT KIND PURPOSE ARGUMENTS`), one script a line.
fn table(docs: &[ScriptDoc], dir: &Path) -> String {
    if docs.is_empty() {
        return format!("no scripts under {}\n", dir.display());
    }
    let rows: Vec<[String; 4]> = docs
        .iter()
        .map(|d| {
            [
                d.name.clone(),
                if d.kind == "change" { "" } else { d.kind }.to_owned(),
                d.purpose
                    .clone()
                    .unwrap_or_else(|| "(no description)".into()),
                d.arguments.join(" "),
            ]
        })
        .collect();
    let header = ["SCRIPT", "KIND", "PURPOSE", "ARGUMENTS"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 4]| {
        let mut l = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned();
        l.push('\n');
        l
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// Reads the leading `//` / `//!` comment block of a script.
pub(crate) fn describe(name: &str, text: &str) -> ScriptDoc {
    let block: Vec<&str> = text
        .lines()
        .map(str::trim_start)
        .take_while(|l| l.starts_with("//"))
        .map(|l| {
            let l = l.strip_prefix("//!").unwrap_or_else(|| &l[2..]);
            l.strip_prefix(' ').unwrap_or(l).trim_end()
        })
        .collect();
    let mut description = Vec::new();
    let mut usage = Vec::new();
    let mut arguments_text = String::new();
    let mut in_arguments = false;
    for line in &block {
        let trimmed = line.trim();
        if is_directive(trimmed) {
            continue;
        }
        if trimmed.starts_with("runbook run ") {
            usage.push(trimmed.to_owned());
            in_arguments = false;
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("Arguments:") {
            in_arguments = true;
            arguments_text.push_str(rest);
            arguments_text.push(' ');
            continue;
        }
        // An `Arguments:` paragraph goes on while its lines are indented.
        if in_arguments && line.starts_with(' ') && !trimmed.is_empty() {
            arguments_text.push_str(trimmed);
            arguments_text.push(' ');
            continue;
        }
        in_arguments = false;
        description.push(trimmed.to_owned());
    }
    let mut arguments = key_values(&arguments_text);
    if arguments_text.trim().is_empty() {
        // Undocumented arguments: those its usage lines pass.
        for u in &usage {
            arguments.extend(key_values(u));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    arguments.retain(|a| seen.insert(a.split('=').next().unwrap_or(a).to_owned()));
    let description = description.join("\n").trim().to_owned();
    ScriptDoc {
        name: name.to_owned(),
        kind: match kind_of(text) {
            ScriptKind::ReadOnly => "read-only",
            ScriptKind::Emergency => "emergency",
            ScriptKind::Change => "change",
        },
        purpose: purpose(&description),
        arguments,
        description,
        usage,
    }
}

fn is_directive(line: &str) -> bool {
    matches!(line, "runbook: read-only" | "runbook: emergency")
}

/// The first sentence: up to the first `.`, `:` or `;` that ends a clause outside
/// parentheses ("Rollback (the seed's eight steps): …" → "Rollback (the seed's eight steps)").
fn purpose(description: &str) -> Option<String> {
    let first: String = description
        .split("\n\n")
        .next()
        .unwrap_or("")
        .split('\n')
        .collect::<Vec<_>>()
        .join(" ");
    let chars: Vec<char> = first.chars().collect();
    let mut depth = 0i32;
    let mut end = chars.len();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '.' | ':' | ';' if depth <= 0 && chars.get(i + 1).is_none_or(|n| n.is_whitespace()) => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let s: String = chars[..end].iter().collect();
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Every `key=value` word of `text`, trailing punctuation dropped.
fn key_values(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter_map(|w| {
            let w = w.trim_end_matches([',', ';', '.', ')']);
            let (k, v) = w.split_once('=')?;
            let ident = !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit());
            (ident && !v.is_empty()).then(|| w.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purpose_is_the_first_clause_and_arguments_come_from_their_paragraph() {
        let d = describe(
            "rollback",
            "// Rollback (the seed's eight steps): maintenance on -> stop.\n\
             // Arguments: none (the previous good release), to=RELEASE, or archive=BACKUP-NAME\n\
             //            (from backup::list); database=true restores it.\n\
             //   runbook run rollback -e production to=x --reason \"…\"\n\
             import \"x\" as y;\n",
        );
        assert_eq!(
            d.purpose.as_deref(),
            Some("Rollback (the seed's eight steps)")
        );
        assert_eq!(
            d.arguments,
            ["to=RELEASE", "archive=BACKUP-NAME", "database=true"]
        );
        assert_eq!(d.usage.len(), 1);
        assert_eq!(d.kind, "change");
    }

    #[test]
    fn usage_lines_give_the_arguments_when_no_paragraph_does() {
        let d = describe(
            "x",
            "//! runbook: read-only\n//! Tidy logs.\n//!   runbook run x -e p days=7 keep=30\n",
        );
        assert_eq!(d.kind, "read-only");
        assert_eq!(d.purpose.as_deref(), Some("Tidy logs"));
        assert_eq!(d.arguments, ["days=7", "keep=30"]);
    }

    #[test]
    fn a_script_without_a_leading_comment_has_no_purpose() {
        let d = describe("x", "let a = 1; // not a header\n");
        assert_eq!(d.purpose, None);
        assert!(d.arguments.is_empty());
    }
}
