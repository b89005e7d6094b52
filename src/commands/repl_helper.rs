//! The REPL's line-editing help: tab completion (functions of every module, meta-commands,
//! host and role names inside `host("…")`/`hosts("…")`, variables in scope), a hint with a
//! function's signature as you type it, and light syntax highlighting (keywords, strings,
//! numbers) — colours only on a terminal and never with `NO_COLOR`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use rustyline::Context;
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::validate::Validator;

pub(super) struct ReplHelper {
    /// `name(params) -> type` per callable name (`ssh::run`, `hosts`, …).
    signatures: Vec<(String, String)>,
    hosts: Vec<String>,
    roles: Vec<String>,
    scripts: Vec<String>,
    /// Variables in scope, refreshed after every line.
    pub variables: Arc<Mutex<Vec<String>>>,
    color: bool,
}

const META: &[&str] = &[
    ":help", ":hosts", ":env", ":run", ":dry", ":last", ":audit", ":save", ":quit",
];
/// Fields of the values functions return (command results, health reports, hosts,
/// releases, backups), offered after a `.`.
const FIELDS: &[&str] = &[
    "host",
    "code",
    "ok",
    "stdout",
    "stderr",
    "duration_ms",
    "dry_run",
    "skipped",
    "error",
    "command",
    "status",
    "latency_ms",
    "body",
    "json",
    "attempts",
    "address",
    "url",
    "name",
    "port",
    "user",
    "transport",
    "roles",
    "deploy_path",
    "len",
    "names",
    "release",
    "size",
    "age_s",
    "state",
    "live",
    "bad",
    "commit",
];

const KEYWORDS: &[&str] = &[
    "let", "const", "fn", "if", "else", "for", "in", "while", "loop", "return", "throw", "try",
    "catch", "import", "as", "true", "false", "break", "continue", "switch",
];

impl ReplHelper {
    pub(super) fn new(
        doc: &str,
        env: &crate::inventory::Environment,
        scripts: Vec<String>,
        color: bool,
    ) -> ReplHelper {
        // The same metadata as `runbook doc`: lines that start with a signature.
        let signatures = doc
            .lines()
            .filter(|l| !l.starts_with(' ') && l.contains('(') && !l.starts_with('#'))
            .filter_map(|l| {
                l.split_once('(')
                    .map(|(name, _)| (name.trim().to_owned(), l.trim().to_owned()))
            })
            .filter(|(name, _)| !name.is_empty() && !name.contains(' '))
            .collect();
        ReplHelper {
            signatures,
            hosts: env.hosts.iter().map(|h| h.name.clone()).collect(),
            roles: env.roles.keys().cloned().collect(),
            scripts,
            variables: Arc::default(),
            color,
        }
    }

    fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let before = &line[..pos];
        // `:run ` takes a script name.
        if let Some(partial) = before.strip_prefix(":run ")
            && !partial.contains(' ')
        {
            return (
                5,
                self.scripts
                    .iter()
                    .filter(|s| s.starts_with(partial))
                    .cloned()
                    .collect(),
            );
        }
        // `value.` offers the fields of results (commands, health reports, releases).
        if let Some(dot) = before.rfind('.')
            && before[dot + 1..]
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_')
            && before[..dot]
                .ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ']' || c == ')')
        {
            let partial = &before[dot + 1..];
            let mut fields: Vec<String> = FIELDS
                .iter()
                .filter(|f| f.starts_with(partial))
                .map(|f| (*f).to_owned())
                .collect();
            fields.sort();
            fields.dedup();
            return (dot + 1, fields);
        }
        // Inside a string argument of host("…") / hosts("…"): host and role names.
        if let Some(q) = before.rfind('"')
            && before[..q].ends_with("host(")
        {
            let partial = &before[q + 1..];
            return (
                q + 1,
                self.hosts
                    .iter()
                    .filter(|h| h.starts_with(partial))
                    .cloned()
                    .collect(),
            );
        }
        if let Some(q) = before.rfind('"')
            && before[..q].ends_with("hosts(")
        {
            let partial = &before[q + 1..];
            let mut all: Vec<String> = self
                .roles
                .iter()
                .chain(["all".to_owned()].iter())
                .filter(|r| r.starts_with(partial))
                .cloned()
                .collect();
            all.sort();
            return (q + 1, all);
        }
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let word = &before[start..];
        if word.is_empty() {
            return (start, Vec::new());
        }
        let mut out: Vec<String> = if word.starts_with(':') && start == 0 {
            META.iter()
                .filter(|m| m.starts_with(word))
                .map(|m| (*m).to_owned())
                .collect()
        } else {
            let vars = self.variables.lock().map(|v| v.clone()).unwrap_or_default();
            self.signatures
                .iter()
                .map(|(n, _)| n.clone())
                .chain(vars)
                .chain(KEYWORDS.iter().map(|k| (*k).to_owned()))
                .filter(|n| n.starts_with(word))
                .collect()
        };
        out.sort();
        out.dedup();
        (start, out)
    }
}

impl Completer for ReplHelper {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, words) = self.candidates(line, pos);
        Ok((
            start,
            words
                .into_iter()
                .map(|w| Pair {
                    display: w.clone(),
                    replacement: w,
                })
                .collect(),
        ))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
    /// After `name(`, the rest of its signature(s).
    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<String> {
        let before = &line[..pos];
        let name_end = before.strip_suffix('(')?;
        let start = name_end
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let name = &name_end[start..];
        let sigs: Vec<&str> = self
            .signatures
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| s.split_once('(').map_or("", |(_, rest)| rest))
            .collect();
        (!sigs.is_empty()).then(|| sigs.join("  |  ("))
    }
}

impl Highlighter for ReplHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if !self.color {
            return Cow::Borrowed(line);
        }
        let mut out = String::with_capacity(line.len() + 16);
        let mut chars = line.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' || c == '`' {
                let mut end = line.len();
                for (j, d) in chars.by_ref() {
                    if d == c {
                        end = j + d.len_utf8();
                        break;
                    }
                }
                let _ = write!(out, "\x1b[32m{}\x1b[0m", &line[i..end]);
            } else if c.is_ascii_digit() {
                let mut end = i + 1;
                while let Some((j, d)) = chars.peek() {
                    if d.is_ascii_digit() || *d == '.' || *d == '_' {
                        end = j + 1;
                        chars.next();
                    } else {
                        break;
                    }
                }
                let _ = write!(out, "\x1b[36m{}\x1b[0m", &line[i..end]);
            } else if c.is_alphabetic() || c == '_' {
                let mut end = i + c.len_utf8();
                while let Some((j, d)) = chars.peek() {
                    if d.is_alphanumeric() || *d == '_' {
                        end = j + d.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &line[i..end];
                if KEYWORDS.contains(&word) {
                    let _ = write!(out, "\x1b[1;35m{word}\x1b[0m");
                } else {
                    out.push_str(word);
                }
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        if self.color {
            Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
        } else {
            Cow::Borrowed(hint)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        self.color
    }
}

impl Validator for ReplHelper {}

impl rustyline::Helper for ReplHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper() -> ReplHelper {
        let doc = "ssh::run(target: any, argv: array) -> any\nssh::shell(target: any, script: string) -> any\nhosts() -> HostSet\nhosts(role: string) -> HostSet\nhost(name: string) -> Host\n    docs\n";
        let inv = crate::inventory::Inventory::parse(
            std::path::Path::new("/p/runbook.toml"),
            "[app]\nname=\"t\"\ndeploy_path=\"/d\"\n[env.p]\nhosts = { web1 = \"h1\", web2 = \"h2\", db1 = \"h3\" }\nroles = { web = [\"web1\", \"web2\"] }\n",
        )
        .unwrap();
        ReplHelper::new(
            doc,
            &inv.env("p").unwrap(),
            vec!["deploy".into(), "maintenance/dr-test".into()],
            false,
        )
    }

    #[test]
    fn completes_functions_meta_commands_hosts_and_roles() {
        let h = helper();
        assert_eq!(
            h.candidates("ssh::s", 6),
            (0, vec!["ssh::shell".to_owned()])
        );
        assert_eq!(
            h.candidates("let r = ssh::", 13).1,
            ["ssh::run", "ssh::shell"]
        );
        assert_eq!(h.candidates(":h", 2).1, [":help", ":hosts"]);
        assert_eq!(h.candidates(":s", 2).1, [":save"]);
        assert_eq!(
            h.candidates(":run main", 9),
            (5, vec!["maintenance/dr-test".to_owned()])
        );
        assert_eq!(h.candidates("r.stdo", 6), (2, vec!["stdout".to_owned()]));
        assert_eq!(
            h.candidates("host(\"we", 8),
            (6, vec!["web1".to_owned(), "web2".to_owned()])
        );
        assert_eq!(h.candidates("hosts(\"", 7).1, ["all", "web"]);
        h.variables.lock().unwrap().push("release_name".into());
        assert_eq!(h.candidates("rel", 3).1, ["release_name"]);
    }

    #[test]
    fn hints_show_the_signature_after_the_parenthesis() {
        let h = helper();
        let ctx_history = rustyline::history::DefaultHistory::new();
        let ctx = Context::new(&ctx_history);
        assert_eq!(
            h.hint("ssh::run(", 9, &ctx).as_deref(),
            Some("target: any, argv: array) -> any")
        );
        assert_eq!(
            h.hint("hosts(", 6, &ctx).as_deref(),
            Some(") -> HostSet  |  (role: string) -> HostSet")
        );
        assert_eq!(h.hint("nothing(", 8, &ctx), None);
    }
}
