//! `.env` from a template: the environment's `env_template` (e.g. the app's
//! `.env.production`) with every `${NAME}` reference filled in from the environment
//! runbook runs in (the CI job's secrets), rendered once on this machine.
//!
//! This is a plain core: it knows nothing of hosts, Rhai or output. It returns the text
//! and every value it filled in, so the caller can register each value as a secret
//! BEFORE anything can print it. It must never put a value where the dotenv parser would
//! read it differently (an unquoted space, a `#`, a quote): such values are quoted, or
//! refused with the line to fix. A reference to a key the file itself defines above
//! (`VITE_APP_NAME="${APP_NAME}"`) is left for Laravel's own dotenv expansion.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A rendered template: the text for `shared/.env` and the values filled in.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub text: String,
    /// Every value taken from the environment (secrets: mask them all).
    pub values: Vec<String>,
    /// The variables read, in order of first use.
    pub names: Vec<String>,
}

/// A `${NAME}` that cannot be filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Missing {
    /// 1-based line of the template.
    pub line: usize,
    pub name: String,
    /// The template line as written (it holds references, never values).
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TemplateError {
    #[error("cannot read the .env template {} (env_template in runbook.toml): {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}", missing_message(path, missing))]
    Missing {
        path: PathBuf,
        missing: Vec<Missing>,
    },

    #[error("{}:{line}: the value of {name} cannot be written here: {why}", path.display())]
    Unsafe {
        path: PathBuf,
        line: usize,
        name: String,
        why: String,
    },
}

fn missing_message(path: &Path, missing: &[Missing]) -> String {
    let names: BTreeSet<&str> = missing.iter().map(|m| m.name.as_str()).collect();
    let names: Vec<&str> = names.into_iter().collect();
    let mut s = format!(
        "the .env template {} needs {} not set here (or empty):",
        path.display(),
        if names.len() == 1 {
            format!("{}, which is", names[0])
        } else {
            format!("{}, which are", names.join(", "))
        }
    );
    for m in missing {
        let _ = write!(
            s,
            "\n  {}:{}: {}",
            path.display(),
            m.line,
            m.text.trim_end()
        );
    }
    let _ = write!(
        s,
        "\nexport {} where runbook runs (in GitHub Actions: `env:` from the repository's secrets); nothing was changed on any host",
        names.join(", ")
    );
    s
}

/// Reads and renders the template at `path`.
pub(crate) fn render_file(
    path: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Rendered, TemplateError> {
    let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
        path: path.to_owned(),
        source,
    })?;
    render(path, &text, lookup)
}

/// The process environment as a lookup: an unset or empty variable is missing (a
/// GitHub secret that does not exist expands to the empty string).
pub(crate) fn from_process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// How the part of a line around a reference is quoted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    None,
    Single,
    Double,
}

/// Renders `template` (read from `path`, named in messages); every missing variable is
/// reported at once, each with its line.
pub(crate) fn render(
    path: &Path,
    template: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Rendered, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut values = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut missing = Vec::new();
    let mut defined: BTreeSet<String> = BTreeSet::new();
    for (i, raw_line) in template.split_inclusive('\n').enumerate() {
        let number = i + 1;
        let (line, newline) = match raw_line.strip_suffix('\n') {
            Some(l) => (l, "\n"),
            None => (raw_line, ""),
        };
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || !line.contains("${") {
            out.push_str(raw_line);
            if let Some(key) = key_of(line) {
                defined.insert(key);
            }
            continue;
        }
        let key = key_of(line);
        let value_start = key
            .as_ref()
            .and_then(|_| line.find('=').map(|p| p + 1))
            .unwrap_or(0);
        let (head, value) = line.split_at(value_start);
        let quoting = match value.trim_start().chars().next() {
            Some('\'') => Quoting::Single,
            Some('"') => Quoting::Double,
            _ => Quoting::None,
        };
        // `KEY=${NAME}` alone: the value may be quoted as a whole.
        let whole = quoting == Quoting::None
            && reference_at(value.trim(), 0).is_some_and(|(_, end)| end == value.trim().len());
        let mut rendered = String::from(head);
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            let Some((name, end)) = reference_at(rest, start) else {
                rendered.push_str(&rest[..start + 2]);
                rest = &rest[start + 2..];
                continue;
            };
            rendered.push_str(&rest[..start]);
            let reference = &rest[start..end];
            rest = &rest[end..];
            if defined.contains(name) {
                rendered.push_str(reference); // the file's own key: dotenv expands it
                continue;
            }
            let Some(v) = lookup(name) else {
                missing.push(Missing {
                    line: number,
                    name: name.to_owned(),
                    text: line.to_owned(),
                });
                continue;
            };
            let piece = piece(&v, whole, quoting).map_err(|why| TemplateError::Unsafe {
                path: path.to_owned(),
                line: number,
                name: name.to_owned(),
                why: why.to_owned(),
            })?;
            rendered.push_str(&piece);
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
            values.push(v);
        }
        rendered.push_str(rest);
        out.push_str(&rendered);
        out.push_str(newline);
        if let Some(key) = key {
            defined.insert(key);
        }
    }
    if !missing.is_empty() {
        return Err(TemplateError::Missing {
            path: path.to_owned(),
            missing,
        });
    }
    Ok(Rendered {
        text: out,
        values,
        names,
    })
}

/// `KEY` of a `KEY=…` or `export KEY=…` line.
fn key_of(line: &str) -> Option<String> {
    let t = line.trim_start();
    let t = t.strip_prefix("export ").unwrap_or(t).trim_start();
    let (key, _) = t.split_once('=')?;
    let key = key.trim_end();
    is_name(key).then(|| key.to_owned())
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A `${NAME}` starting at byte `start` of `s`: the name and the end of the reference.
fn reference_at(s: &str, start: usize) -> Option<(&str, usize)> {
    let inner = s.get(start..)?.strip_prefix("${")?;
    let close = inner.find('}')?;
    let name = &inner[..close];
    is_name(name).then_some((name, start + 2 + close + 1))
}

/// `v` as it is written into its line, quoted as the line quotes it; else why it cannot be
/// written there safely.
fn piece(v: &str, whole: bool, quoting: Quoting) -> Result<String, &'static str> {
    if v.contains(['\n', '\r']) {
        return Err("it spans several lines, which a .env line cannot hold");
    }
    if whole {
        return Ok(quote_whole(v));
    }
    match quoting {
        Quoting::Double => Ok(v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('$', "\\$")),
        Quoting::Single if v.contains('\'') => {
            Err("it contains a `'` inside a '…' value; write the value in \"…\" instead")
        }
        Quoting::None if needs_quoting(v) => Err(
            "it contains a space, `#`, a quote, `$` or `\\`, which an unquoted value cannot hold; put the value in \"…\"",
        ),
        _ => Ok(v.to_owned()),
    }
}

fn needs_quoting(v: &str) -> bool {
    v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || matches!(c, '#' | '"' | '\'' | '\\' | '$' | '`' | '='))
}

/// A whole value, quoted so that dotenv reads it back exactly: as is when it is plain,
/// else in '…' (no expansion, no escapes), else in "…" with `\\`, `\"`, `\$`.
fn quote_whole(v: &str) -> String {
    if !needs_quoting(v) {
        v.to_owned()
    } else if !v.contains('\'') {
        format!("'{v}'")
    } else {
        format!(
            "\"{}\"",
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn path() -> &'static Path {
        Path::new(".env.production")
    }

    #[test]
    fn references_are_filled_in_and_every_value_is_reported() {
        let t = "APP_NAME=AskProAI\n# DB_HOST=${NOT_NEEDED}\nDB_PASSWORD=${DB_PASSWORD_PRODUCTION}\nURL=https://${HOST}/x\n";
        let r = render(
            path(),
            t,
            env(&[("DB_PASSWORD_PRODUCTION", "pw1"), ("HOST", "api.example")]),
        )
        .unwrap();
        assert_eq!(
            r.text,
            "APP_NAME=AskProAI\n# DB_HOST=${NOT_NEEDED}\nDB_PASSWORD=pw1\nURL=https://api.example/x\n"
        );
        assert_eq!(r.values, ["pw1", "api.example"]);
        assert_eq!(r.names, ["DB_PASSWORD_PRODUCTION", "HOST"]);
    }

    #[test]
    fn a_missing_variable_is_named_with_its_line_and_no_value_leaks() {
        let t = "A=${SET}\nDB_PASSWORD=${DB_PASSWORD_PRODUCTION}\nB=${ALSO_MISSING}\n";
        let err = render(path(), t, env(&[("SET", "visible-value")])).unwrap_err();
        let TemplateError::Missing { missing, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(
            missing
                .iter()
                .map(|m| (m.line, m.name.as_str()))
                .collect::<Vec<_>>(),
            [(2, "DB_PASSWORD_PRODUCTION"), (3, "ALSO_MISSING")]
        );
        let text = err.to_string();
        assert!(
            text.contains(".env.production:2: DB_PASSWORD=${DB_PASSWORD_PRODUCTION}"),
            "{text}"
        );
        assert!(text.contains("nothing was changed"), "{text}");
        assert!(!text.contains("visible-value"), "{text}");
    }

    #[test]
    fn values_dotenv_would_misread_are_quoted_or_refused() {
        let r = |t: &str, v: &str| render(path(), t, env(&[("V", v)]));
        assert_eq!(r("P=${V}\n", "a b#c$d").unwrap().text, "P='a b#c$d'\n");
        assert_eq!(
            r("P=${V}\n", "it's \"x\" $y").unwrap().text,
            "P=\"it's \\\"x\\\" \\$y\"\n"
        );
        assert_eq!(
            r("P=\"pre ${V}\"\n", "a\"$").unwrap().text,
            "P=\"pre a\\\"\\$\"\n"
        );
        assert!(matches!(
            r("P=pre${V}\n", "a b"),
            Err(TemplateError::Unsafe { line: 1, .. })
        ));
        assert!(matches!(
            r("P='${V}'\n", "it's"),
            Err(TemplateError::Unsafe { .. })
        ));
        assert!(matches!(
            r("P=${V}\n", "two\nlines"),
            Err(TemplateError::Unsafe { .. })
        ));
    }

    /// What Laravel reads back: Debian's phpdotenv (php-laravel-framework) parses each
    /// rendered value into exactly the variable's value.
    #[test]
    fn laravels_dotenv_reads_every_rendered_value_back_exactly() {
        let autoload = "/usr/share/php/Dotenv/autoload.php";
        if !Path::new(autoload).exists() || !Path::new("/usr/bin/php").exists() {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "phpdotenv is missing under CI=true (apt-get install php-laravel-framework php-cli)"
            );
            eprintln!("SKIPPED: phpdotenv unavailable");
            return;
        }
        let values = [
            "plain",
            "a b#c$d",
            // `${W0}` names a key of the rendered file: dotenv would expand it.
            "it's \"x\" ${W0} \\ z",
            "${W0}",
            "tab\there",
            "ünï©ode ✓",
        ];
        let mut template = String::new();
        let mut vars = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let _ = writeln!(template, "W{i}=${{V{i}}}\nD{i}=\"pre ${{V{i}}} post\"");
            vars.push((format!("V{i}"), (*v).to_owned()));
        }
        let lookup = |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let rendered = render(path(), &template, lookup).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(&file, &rendered.text).unwrap();
        let out = std::process::Command::new("/usr/bin/php")
            .arg("-r")
            .arg(format!(
                "require '{autoload}'; echo json_encode(Dotenv\\Dotenv::parse(file_get_contents($argv[1])));"
            ))
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(
                parsed[format!("W{i}")],
                *v,
                "whole value {v:?} in\n{}",
                rendered.text
            );
            assert_eq!(
                parsed[format!("D{i}")],
                format!("pre {v} post"),
                "quoted part {v:?} in\n{}",
                rendered.text
            );
        }
    }

    #[test]
    fn the_files_own_keys_are_left_for_dotenv() {
        let t = "APP_NAME=shop\nVITE_APP_NAME=\"${APP_NAME}\"\nX=${UNCLOSED\nY=${lower-case}\n";
        let r = render(path(), t, env(&[])).unwrap();
        assert_eq!(r.text, t);
        assert!(r.values.is_empty());
    }
}
