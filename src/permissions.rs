//! Who may change an environment, and the promise of a read-only script. Checked before
//! any connection is made; the actor is the GitHub actor inside GitHub Actions, else the
//! OS account (`commands::actor`), and a script cannot change it.
//!
//! A script declares what it is in its first lines: `// runbook: read-only` (health,
//! status — open to everyone) or `// runbook: emergency` (checked against
//! `emergency_deployers`). Any other script changes the environment.
//!
//! `read-only` is a claim the script makes about itself, so it is enforced: the session
//! carries a [`ReadOnly`] gate and every runbook-owned operation that changes a host
//! (release switches, locks, backups, artisan commands that are not known to only read)
//! passes [`guard`] first. A refused call stops the script (not catchable by `try`) and
//! the run is audited as `refused`. The REPL uses the same gate for an actor who may not
//! change the environment, and [`admit`] is the one decision `run` and `:run` share.
//! The same [`guard`] asks the REPL's question on a protected environment (one y/N per
//! line, before its first change, whatever called it); commands that are not reads ask
//! it in the effect layer.
//! Commands a script runs itself (`ssh::run`, `local::run`) are not judged here: a shell
//! line cannot be told apart as reading or writing.

use crate::sync::Locked;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Error;
use crate::inventory::Environment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScriptKind {
    ReadOnly,
    Change,
    Emergency,
}

/// What a script says about itself in its leading comment lines.
pub(crate) fn kind_of(text: &str) -> ScriptKind {
    for line in text
        .lines()
        .take_while(|l| l.trim_start().starts_with("//") || l.trim().is_empty())
    {
        let l = line.trim_start_matches(['/', '!', ' ']).trim();
        match l {
            "runbook: read-only" => return ScriptKind::ReadOnly,
            "runbook: emergency" => return ScriptKind::Emergency,
            _ => {}
        }
    }
    ScriptKind::Change
}

/// `Err(allowed)` when `actor` may not run a script of `kind` on `env`.
pub(crate) fn check(env: &Environment, kind: ScriptKind, actor: &str) -> Result<(), Vec<String>> {
    let list = match kind {
        ScriptKind::ReadOnly => return Ok(()),
        ScriptKind::Change => env.deployers.as_ref(),
        ScriptKind::Emergency => env.emergency_deployers.as_ref().or(env.deployers.as_ref()),
    };
    match list {
        None => Ok(()),
        Some(allowed) if allowed.iter().any(|a| a == actor) => Ok(()),
        Some(allowed) => Err(allowed.clone()),
    }
}

/// What `run` and the REPL's `:run` ask before a script may start.
pub(crate) struct Request<'a> {
    pub env: &'a Environment,
    /// The script's name as shown (`scripts/deploy.rhai`).
    pub script: &'a str,
    /// Its text (the leading comments say what kind it is).
    pub text: &'a str,
    pub actor: &'a str,
    /// The actor was given with `--actor` (refused on protected environments).
    pub actor_flag: bool,
    pub reason: Option<&'a str>,
    pub dry_run: bool,
}

/// The one permission decision: who may run this script here, and whether an emergency
/// has its written reason. Returns the script's kind; confirmation is asked afterwards.
pub(crate) fn admit(r: &Request) -> Result<ScriptKind, Error> {
    if r.actor_flag && r.env.protected {
        return Err(Error::BadOption {
            option: "--actor".into(),
            message: format!(
                "`{}` is protected: the actor comes from the CI or the login, not a flag",
                r.env.name
            ),
        });
    }
    let kind = kind_of(r.text);
    let emergency = kind == ScriptKind::Emergency;
    check(r.env, kind, r.actor).map_err(|allowed| Error::NotAllowed {
        actor: r.actor.to_owned(),
        env: r.env.name.clone(),
        what: if emergency {
            format!("the emergency script {}", r.script)
        } else {
            r.script.to_owned()
        },
        key: if emergency && r.env.emergency_deployers.is_some() {
            "emergency_deployers".into()
        } else {
            "deployers".into()
        },
        allowed,
    })?;
    // An emergency skips the usual care: the reason is what the team reads later.
    if emergency && r.reason.is_none_or(|t| t.trim().is_empty()) && !r.dry_run {
        return Err(Error::BadOption {
            option: "--reason".into(),
            message: format!(
                "{} is an emergency script: it needs a written reason, which goes into the audit log and every notification; pass --reason \"…\"",
                r.script
            ),
        });
    }
    Ok(kind)
}

/// Whether a run must be confirmed by a person first (protected, not a dry run, no `--yes`).
pub(crate) fn needs_confirmation(env: &Environment, dry_run: bool, yes: bool) -> bool {
    env.protected && !dry_run && !yes
}

/// The session's read-only gate: off, or on with the reason it is on (the script's
/// declaration, or an actor who may only read). The first refusal is kept for the audit.
#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    on: AtomicBool,
    state: Mutex<Gate>,
}

#[derive(Debug, Default, Clone)]
struct Gate {
    /// Why changes are refused ("scripts/look.rhai declares `// runbook: read-only`").
    because: Option<String>,
    /// What to do instead.
    hint: String,
    refused: Option<String>,
}

/// A change refused by the read-only gate. One variant on purpose: callers only stop on
/// it and say it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refused: {op} changes the environment, but {because}; nothing was changed\n  hint: {hint}"
)]
pub(crate) struct Refused {
    /// The operation that would have changed something (`lock::acquire`).
    pub op: String,
    /// Why the session is read-only.
    pub because: String,
    /// What to do instead.
    pub hint: String,
}

impl ReadOnly {
    /// Turns the gate on (`Some((because, hint))`) or off; returns what it was, to restore.
    pub(crate) fn set(&self, to: Option<(String, String)>) -> Option<(String, String)> {
        let mut g = self.state.locked();
        let before = g.because.take().map(|b| (b, std::mem::take(&mut g.hint)));
        self.on.store(to.is_some(), Ordering::SeqCst);
        if let Some((because, hint)) = to {
            g.because = Some(because);
            g.hint = hint;
        }
        before
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// `Err` when `op` would change something while the gate is on.
    pub(crate) fn check(&self, op: &str) -> Result<(), Refused> {
        if !self.is_on() {
            return Ok(());
        }
        let mut g = self.state.locked();
        let refused = Refused {
            op: op.to_owned(),
            because: g
                .because
                .clone()
                .unwrap_or_else(|| "this session is read-only".to_owned()),
            hint: g.hint.clone(),
        };
        g.refused.get_or_insert_with(|| refused.to_string());
        Err(refused)
    }

    /// The first refusal since the last call (for the audit record and the error shown).
    pub(crate) fn take_refusal(&self) -> Option<String> {
        self.state.locked().refused.take()
    }
}

/// The gate for a script that declared itself read-only.
pub(crate) fn declared(script: &str) -> (String, String) {
    (
        format!("{script} declares `// runbook: read-only`"),
        "drop the call, or remove the `// runbook: read-only` line so the script is checked as a change (deployers, confirmation)".into(),
    )
}

/// The gate for an actor who may not change `env` (not in its `deployers`): they may still
/// look (read-only scripts, a read-only REPL), as under `run`. `None` when they may change it.
pub(crate) fn reader_only(env: &Environment, actor: &str) -> Option<(String, String)> {
    check(env, ScriptKind::Change, actor).err().map(|allowed| {
        (
            format!(
                "`{actor}` may only read `{}` (allowed to change it: {})",
                env.name,
                allowed.join(", ")
            ),
            format!(
                "ask someone allowed to add you to env.{}.deployers in runbook.toml (a reviewed change)",
                env.name
            ),
        )
    })
}

/// Whether an artisan command is one known only to read: it needs no confirmation, passes
/// a read-only gate, and runs for real in a dry run (the plan is built on what it says).
pub(crate) fn artisan_reads(args: &[String]) -> bool {
    const READS: &[&str] = &[
        "about",
        "env",
        "list",
        "help",
        "--version",
        "-V",
        "migrate:status",
        "route:list",
        "schedule:list",
        "event:list",
        "channel:list",
        "config:show",
        "db:show",
        "db:table",
        "db:monitor",
        "model:show",
        "queue:failed",
        "queue:monitor",
        "horizon:status",
        "horizon:list",
    ];
    READS.contains(&args.first().map_or("", String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_declare_what_they_are_in_their_leading_comments() {
        assert_eq!(
            kind_of("// runbook: read-only\nlet x = 1;"),
            ScriptKind::ReadOnly
        );
        assert_eq!(
            kind_of("// The seed's check.\n//\n// runbook: read-only\n"),
            ScriptKind::ReadOnly
        );
        assert_eq!(kind_of("// runbook: emergency\n"), ScriptKind::Emergency);
        // A marker after code does not count: it could be in a string or a later comment.
        assert_eq!(
            kind_of("let x = 1;\n// runbook: read-only\n"),
            ScriptKind::Change
        );
    }

    #[test]
    fn a_read_only_gate_refuses_changes_and_keeps_the_first_refusal() {
        let gate = ReadOnly::default();
        assert!(gate.check("release::activate").is_ok());
        assert!(gate.set(Some(declared("scripts/look.rhai"))).is_none());
        let err = gate.check("release::activate").unwrap_err().to_string();
        assert!(
            err.contains("release::activate changes the environment")
                && err.contains("scripts/look.rhai declares"),
            "{err}"
        );
        assert!(gate.check("lock::acquire").is_err());
        let first = gate.take_refusal().unwrap();
        assert!(first.contains("release::activate"), "{first}");
        assert!(gate.take_refusal().is_none());
        // Restoring turns it off again.
        let before = gate.set(None);
        assert!(before.is_some_and(|(b, _)| b.contains("look.rhai")));
        assert!(gate.check("lock::acquire").is_ok());
    }
}
