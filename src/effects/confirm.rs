//! A person's "yes" before the first change of a REPL line on a protected environment.
//!
//! The REPL cannot tell from a line's text what it will do (an alias, a user function, a
//! closure can hide any call), so it asks where changes happen: the effect layer asks
//! before a command that is not a read, and the read-only gate
//! (`modules::guard`) asks before a runbook-owned change. The question is
//! put once per line; a "no" refuses that change and every later one of the line.
//! Nothing asks unless a hook is installed: `run` confirms up front and never installs
//! one; the REPL installs one for the duration of each line it evaluates.

use crate::sync::Locked;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Puts the question (`"… changes `prod` (protected). Go ahead? [y/N] "`) to a person;
/// `true` only for a yes.
pub(crate) type Ask = Box<dyn FnMut(&str) -> bool + Send>;

#[derive(Default)]
pub(crate) struct Confirm {
    state: Mutex<State>,
    /// Set on a "no": the engine's progress hook stops the line at its next step.
    refused: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    ask: Option<Ask>,
    /// The environment named in the question.
    env: String,
    /// This line's answer, once given.
    answer: Option<bool>,
    /// What was refused (for the message the REPL shows).
    refusal: Option<String>,
}

impl Confirm {
    /// From now on (until [`Confirm::remove`]) the first change asks `ask` about `env`.
    pub(crate) fn install(&self, env: &str, ask: Ask) {
        let mut s = self.lock();
        *s = State {
            ask: Some(ask),
            env: env.to_owned(),
            answer: None,
            refusal: None,
        };
        self.refused.store(false, Ordering::SeqCst);
    }

    /// Removes the hook; returns what was refused, if anything was.
    pub(crate) fn remove(&self) -> Option<String> {
        let refusal = std::mem::take(&mut *self.lock()).refusal;
        self.refused.store(false, Ordering::SeqCst);
        refusal
    }

    #[cfg(test)]
    /// Whether a change was refused since the hook was installed.
    pub(crate) fn refused(&self) -> bool {
        self.refused.load(Ordering::SeqCst)
    }

    /// The flag [`Confirm::refused`] reads, for a hook that outlives a borrow.
    pub(crate) fn refused_flag(&self) -> Arc<AtomicBool> {
        self.refused.clone()
    }

    /// `Err` when `what` (a change about to happen) is not to happen: the person said no
    /// now or earlier in this line. `Ok` without a hook. The question is asked under the
    /// lock, so hosts of a fan-out wait for the one answer.
    pub(crate) fn check(&self, what: &str) -> Result<(), NotConfirmed> {
        let mut s = self.lock();
        let State {
            ask,
            env,
            answer,
            refusal,
        } = &mut *s;
        let Some(ask) = ask.as_mut() else {
            return Ok(());
        };
        let yes = *answer.get_or_insert_with(|| {
            ask(&format!(
                "{what} changes `{env}` (protected). Go ahead? [y/N] "
            ))
        });
        if yes {
            return Ok(());
        }
        let refused = NotConfirmed {
            what: what.to_owned(),
            env: env.clone(),
        };
        refusal.get_or_insert_with(|| refused.to_string());
        self.refused.store(true, Ordering::SeqCst);
        Err(refused)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }
}

/// A change the person did not confirm. One variant on purpose: callers only stop on it
/// and say it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not run: {what} changes `{env}` and was not confirmed")]
pub(crate) struct NotConfirmed {
    /// The change, as the question named it.
    pub what: String,
    /// The protected environment.
    pub env: String,
}

/// How a command is named in the question: its first line, at most 80 characters, with
/// control characters neutralised (the question goes to the terminal).
pub(crate) fn describe(command: &str, host: &str) -> String {
    let line = command.lines().next().unwrap_or("");
    let shown = crate::output::terminal::neutralise(line);
    let mut short: String = shown.chars().take(80).collect();
    if shown.chars().count() > 80 || command.lines().nth(1).is_some() {
        short.push('…');
    }
    format!("`{short}` on `{host}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_question_per_line_and_a_no_refuses_the_rest() {
        let c = Confirm::default();
        assert!(c.check("x").is_ok(), "no hook: nothing asks");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        c.install(
            "prod",
            Box::new(move |q| {
                log.lock().unwrap().push(q.to_owned());
                false
            }),
        );
        assert!(c.check("lock::acquire").is_err());
        assert!(c.check("`mkdir` on `p`").is_err());
        assert!(c.refused());
        assert_eq!(
            *asked.lock().unwrap(),
            ["lock::acquire changes `prod` (protected). Go ahead? [y/N] "]
        );
        let refusal = c.remove().unwrap();
        assert!(refusal.contains("lock::acquire"), "{refusal}");
        assert!(!c.refused() && c.check("x").is_ok());
        c.install("prod", Box::new(|_| true));
        assert!(c.check("a").is_ok() && c.check("b").is_ok());
        assert!(c.remove().is_none());
    }

    #[test]
    fn a_command_is_named_by_its_first_line_without_control_characters() {
        assert_eq!(describe("touch x", "p"), "`touch x` on `p`");
        let d = describe("echo \x1b[2Jhi\nrm -rf y", "p");
        assert!(!d.contains('\x1b') && d.ends_with("…` on `p`"), "{d}");
        assert_eq!(describe(&"a".repeat(100), "p").chars().count(), 81 + 9);
    }
}
