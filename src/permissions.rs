//! Who may change an environment. Checked before any connection is made; the actor comes
//! from the process environment (the CI actor, else the login user) and a script cannot
//! change it.
//!
//! A script declares what it is in its first lines: `// runbook: read-only` (health,
//! status — open to everyone) or `// runbook: emergency` (checked against
//! `emergency_deployers`). Any other script changes the environment.

use crate::inventory::Environment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    ReadOnly,
    Change,
    Emergency,
}

/// What a script says about itself in its leading comment lines.
pub fn kind_of(text: &str) -> ScriptKind {
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
pub fn check(env: &Environment, kind: ScriptKind, actor: &str) -> Result<(), Vec<String>> {
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
}
