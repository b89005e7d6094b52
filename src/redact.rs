//! Secret redaction. Every string that leaves the process (events, human output, error
//! messages, the audit log) passes through [`Redactor::redact`] in the output layer.
//!
//! A secret can span lines (a PEM key, a JSON credential), while a command's output reaches
//! the output layer one line at a time: so a multi-line secret is registered whole *and*
//! line by line. A line shorter than [`MIN_LINE`] (`{`, `}`, `-----`) is not a secret of
//! its own: masking it would blank unrelated output and tell a reader nothing useful.

use crate::sync::ReadWrite;
use std::borrow::Cow;
use std::sync::RwLock;

/// What a secret is replaced with.
pub(crate) const MASK: &str = "***";

/// The shortest line of a multi-line secret that is masked on its own (after trimming
/// surrounding whitespace).
pub(crate) const MIN_LINE: usize = 8;

/// Called with each new secret value (GitHub Actions: `::add-mask::`).
type Hook = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
pub struct Redactor {
    secrets: RwLock<Vec<String>>,
    hook: std::sync::OnceLock<Hook>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Redactor({} secrets)",
            self.secrets.read().map_or(0, |s| s.len())
        )
    }
}

impl Redactor {
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// Registers a secret value; empty values are ignored (they would match everywhere).
    /// A value with several lines is registered whole and each line of at least
    /// [`MIN_LINE`] characters on its own.
    pub fn add(&self, value: &str) {
        if value.is_empty() {
            return;
        }
        if value.contains('\n') {
            for line in value.lines().map(str::trim) {
                if line.chars().count() >= MIN_LINE {
                    self.add_one(line);
                }
            }
        }
        self.add_one(value);
    }

    fn add_one(&self, value: &str) {
        let mut secrets = self.secrets.write_locked();
        if !secrets.iter().any(|s| s == value) {
            // Announced before anything can print it.
            if let Some(hook) = self.hook.get() {
                hook(value);
            }
            secrets.push(value.to_owned());
            // Longest first, so a secret that contains another is masked whole.
            secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Sets the callback for new secrets (once), and calls it for the ones known so far.
    pub fn set_hook(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let known: Vec<String> = self.secrets.read_locked().clone();
        for s in &known {
            hook(s);
        }
        let _ = self.hook.set(Box::new(hook));
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.read_locked().is_empty()
    }

    /// Does `text` contain any secret value?
    pub fn contains_secret(&self, text: &str) -> bool {
        let secrets = self.secrets.read_locked();
        secrets.iter().any(|s| text.contains(s.as_str()))
    }

    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let secrets = self.secrets.read_locked();
        let mut out = Cow::Borrowed(text);
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }

    /// Masks every secret in the strings of a JSON document (a payload about to be sent):
    /// a message never carries another channel's credential or a value read with
    /// `secret()`. Fields named in `keep` are left alone: the channel's own credential
    /// (PagerDuty's `routing_key`), which the receiver needs.
    pub fn redact_json(&self, value: &mut serde_json::Value, keep: &[&str]) {
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(masked) = self.redact(s) {
                    *s = masked;
                }
            }
            serde_json::Value::Array(items) => {
                for v in items {
                    self.redact_json(v, keep);
                }
            }
            serde_json::Value::Object(fields) => {
                for (k, v) in fields.iter_mut() {
                    if !keep.contains(&k.as_str()) {
                        self.redact_json(v, keep);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_and_the_longest_secret_first() {
        let r = Redactor::new();
        r.add("abc");
        r.add("abcdef");
        r.add("");
        assert_eq!(r.redact("x abcdef y abc z"), "x *** y *** z");
        assert!(r.contains_secret("..abc.."));
        assert!(!r.contains_secret("ab"));
    }

    #[test]
    fn a_multi_line_secret_is_masked_whole_and_line_by_line() {
        let r = Redactor::new();
        let key = "-----BEGIN KEY-----\n  cGxhbnRlZC1ib2R5LWxpbmU=\r\n}\n-----END KEY-----\n";
        r.add(key);
        // Whole, as one string (an error message, a JSON field).
        assert_eq!(r.redact(&format!("key: {key}")), "key: ***");
        // One line at a time, as a command's output arrives; indentation does not matter.
        assert_eq!(r.redact("cGxhbnRlZC1ib2R5LWxpbmU="), "***");
        assert_eq!(r.redact("-----BEGIN KEY-----"), "***");
        // Short lines are not secrets of their own.
        assert_eq!(r.redact("}"), "}");
        assert_eq!(r.redact("-----"), "-----");
        assert!(r.contains_secret("x cGxhbnRlZC1ib2R5LWxpbmU= y"));
    }

    #[test]
    fn a_payload_is_masked_deep_except_the_fields_it_keeps() {
        let r = Redactor::new();
        r.add("s3cret-key");
        let mut v = serde_json::json!({
            "routing_key": "s3cret-key",
            "payload": { "summary": "leaked s3cret-key", "list": ["s3cret-key", 1] },
        });
        r.redact_json(&mut v, &["routing_key"]);
        assert_eq!(
            v,
            serde_json::json!({
                "routing_key": "s3cret-key",
                "payload": { "summary": "leaked ***", "list": ["***", 1] },
            })
        );
    }

    #[test]
    fn leaves_text_without_secrets_borrowed() {
        let r = Redactor::new();
        r.add("s3cret");
        assert!(matches!(r.redact("plain"), Cow::Borrowed(_)));
    }
}
