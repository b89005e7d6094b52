//! What a host prints must not drive the operator's terminal. A remote command (or a
//! compromised host) can print `\r\e[2K` to erase the error line above, OSC 52 to set the
//! clipboard, OSC 0 to retitle the window. Every text that reaches a terminal from a host —
//! run output, errors with their stderr tails, REPL results and `:last` — goes through
//! [`neutralise`] first: control characters are shown, visibly, as escapes (`\x1b[2K`,
//! `\r`) instead of being written raw. Only `\t` and `\n` pass through.
//!
//! JSON output keeps the original characters, escaped by JSON itself ([`json_safe`] adds
//! the ones serde leaves raw: DEL and the C1 range).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether a terminal could act on `c`: C0 except tab and newline, DEL, C1 (U+0080–U+009F).
/// NUL is left alone: terminals ignore it, and output split on it (`printf '%s\0'`,
/// `find -print0`) must stay data.
fn is_control(c: char) -> bool {
    (c.is_control() && c != '\t' && c != '\n' && c != '\0') || ('\u{80}'..='\u{9f}').contains(&c)
}

/// `text` with every control character a terminal could act on shown as a visible escape.
pub(crate) fn neutralise(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            c if is_control(c) && u32::from(c) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A copy of `event` with every string it carries neutralised (what a terminal sink shows).
pub(crate) fn neutralise_event(event: &super::Event) -> super::Event {
    let mut e = event.clone();
    e.map_strings(&|s| match neutralise(s) {
        Cow::Owned(new) => Some(new),
        Cow::Borrowed(_) => None,
    });
    e
}

/// A serialized JSON text with DEL and C1 characters written as `\u` escapes too (serde
/// escapes C0 itself). They can only occur inside strings, so the value is unchanged.
pub(crate) fn json_safe(json: &str) -> Cow<'_, str> {
    let needs = |c: char| c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c);
    if !json.chars().any(needs) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if needs(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_sent() {
        assert_eq!(
            neutralise("ok\r\x1b[2Kerased\x07"),
            "ok\\r\\x1b[2Kerased\\x07"
        );
        assert_eq!(
            neutralise("\x1b]52;c;aGk=\x07 \u{9b}31m \x7f"),
            "\\x1b]52;c;aGk=\\x07 \\x9b31m \\x7f"
        );
        assert!(matches!(
            neutralise("tab\tand\nnewline ✓"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn json_keeps_every_control_character_escaped() {
        let line = serde_json::to_string("a\x1b[2K\u{7f}\u{9b}b").unwrap();
        let safe = json_safe(&line);
        assert!(!safe.chars().any(is_control), "{safe}");
        let back: String = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, "a\x1b[2K\u{7f}\u{9b}b");
    }
}
