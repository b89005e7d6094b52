//! The named steps of the shipped strategies, and the hooks a project attaches to them.
//!
//! A strategy (`stdlib/strategies/*.rhai`) is a list of named steps run by one runner
//! (`common::run_steps`). A project changes one step without copying the module: it adds
//! a hook before or after a step, replaces one, or skips one — from its inventory
//! (`[[hooks]]`) or from its script (`steps::before("switch", |ctx| …)`). This module is
//! the catalogue both sides validate against, so that a misspelt step name is refused
//! (naming the steps there are) before anything changes. It knows nothing of Rhai.

/// One step of a strategy, as hooks name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    /// What hooks call it (`switch`).
    pub name: &'static str,
    /// A step that keeps the fleet safe (the lock, a gate, verification, lifting
    /// maintenance mode): skipping it needs a written reason.
    pub safety: bool,
    /// Why the step cannot be replaced or skipped (later steps use what it makes), if so.
    pub fixed: Option<&'static str>,
}

/// A shipped strategy and its steps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Strategy {
    pub name: &'static str,
    pub steps: &'static [Step],
}

const fn step(name: &'static str) -> Step {
    Step {
        name,
        safety: false,
        fixed: None,
    }
}

const fn safety(name: &'static str) -> Step {
    Step {
        name,
        safety: true,
        fixed: None,
    }
}

const fn fixed(name: &'static str, why: &'static str) -> Step {
    Step {
        name,
        safety: false,
        fixed: Some(why),
    }
}

const PREPARE: Step = fixed(
    "prepare",
    "the later steps use the release it makes (hook before or after it instead)",
);

/// Every shipped strategy's steps. The runner checks its list against this one, so the
/// catalogue cannot drift from the modules.
pub(crate) const STRATEGIES: &[Strategy] = &[
    Strategy {
        name: "rolling",
        steps: &[
            safety("lock"),
            safety("backup"),
            step("maintenance-on"),
            PREPARE,
            safety("migration-gate"),
            step("migrate"),
            step("optimize"),
            step("switch"),
            step("switch-workers"),
            step("restart-workers"),
            safety("maintenance-off"),
            safety("verify"),
            step("cleanup"),
        ],
    },
    Strategy {
        name: "blue_green",
        steps: &[
            safety("lock"),
            safety("backup"),
            PREPARE,
            safety("migration-gate"),
            step("migrate"),
            step("optimize"),
            step("stage"),
            safety("check-staged"),
            step("switch-traffic"),
            step("switch"),
            safety("drain"),
            step("restart-workers"),
            safety("verify"),
            safety("monitor"),
            step("cleanup"),
        ],
    },
    Strategy {
        name: "canary",
        steps: &[
            safety("lock"),
            safety("backup"),
            PREPARE,
            safety("migration-gate"),
            step("migrate"),
            step("optimize"),
            step("stage"),
            safety("check-staged"),
            safety("canary-steps"),
            step("promote"),
            step("restart-workers"),
            safety("verify"),
            step("cleanup"),
        ],
    },
    Strategy {
        name: "rollback",
        steps: &[
            safety("lock"),
            safety("verify-backup"),
            step("maintenance-on"),
            step("stop-workers"),
            step("rollback-migrations"),
            fixed(
                "restore",
                "the later steps verify the release it restores (hook before or after it instead)",
            ),
            step("clear-caches"),
            step("restart-services"),
            safety("verify"),
            safety("maintenance-off"),
            safety("verify-live"),
        ],
    },
];

/// The strategy called `name`.
pub(crate) fn strategy(name: &str) -> Option<&'static Strategy> {
    STRATEGIES.iter().find(|s| s.name == name)
}

impl Strategy {
    pub(crate) fn step(&self, name: &str) -> Option<&'static Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// `lock → backup → …`: the names in order.
    pub(crate) fn names(&self) -> String {
        let names: Vec<&str> = self.steps.iter().map(|s| s.name).collect();
        names.join(" → ")
    }
}

/// Where a hook goes relative to its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    Before,
    After,
    Replace,
    Skip,
}

impl Placement {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Placement::Before => "before",
            Placement::After => "after",
            Placement::Replace => "replace",
            Placement::Skip => "skip",
        }
    }
}

/// Where a hook attaches: which step, how, and (for a skip) why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attach {
    pub placement: Placement,
    pub step: String,
    /// Only this strategy; `None`: every strategy that has the step.
    pub strategy: Option<String>,
    /// Why a step is skipped (required for a safety step).
    pub reason: Option<String>,
}

/// A hook a script attached (`steps::before(…)`): where, what (`A`: the script's
/// function; nothing for a skip), and the line that attached it.
#[derive(Debug, Clone)]
pub(crate) struct Hooked<A> {
    pub attach: Attach,
    pub action: A,
    /// `scripts/deploy.rhai:4`.
    pub origin: String,
    /// The source it was attached in (`scripts/deploy.rhai`), for error snippets.
    pub source: String,
}

/// Every strategy's steps, one line each, for an error message.
pub(crate) fn catalogue() -> String {
    STRATEGIES
        .iter()
        .map(|s| format!("  {}: {}", s.name, s.names()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why a hook cannot be attached. The message names the steps there are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HookError {
    #[error("no strategy `{name}` (strategies: {})", strategy_names())]
    NoStrategy { name: String },
    #[error(
        "strategy `{}` has no step `{step}`; its steps are:\n  {}: {}",
        strategy.name,
        strategy.name,
        strategy.names()
    )]
    NotInStrategy {
        strategy: &'static Strategy,
        /// The step named (control characters removed).
        step: String,
    },
    #[error("no strategy has a step `{step}`; the steps are:\n{}", catalogue())]
    NoSuchStep { step: String },
    #[error(
        "step `{}` cannot be {}: {}",
        step.name,
        if *skip { "skipped" } else { "replaced" },
        step.fixed.unwrap_or_default()
    )]
    Fixed {
        step: Step,
        /// Skipped (else replaced).
        skip: bool,
    },
    #[error(
        "step `{}` keeps the fleet safe: skipping it needs a reason (`reason = \"…\"` in runbook.toml, `steps::skip(\"{}\", \"why\")` in a script); it is printed and audited with the run",
        step.name,
        step.name
    )]
    NeedsReason { step: Step },
}

fn strategy_names() -> String {
    STRATEGIES
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Attach {
    /// The strategies this hook applies to (`strategy`, or each that has the step).
    pub(crate) fn strategies(&self) -> Vec<&'static Strategy> {
        STRATEGIES
            .iter()
            .filter(|s| self.strategy.as_deref().is_none_or(|n| n == s.name))
            .filter(|s| s.step(&self.step).is_some())
            .collect()
    }

    /// Refuses a hook that names no step, a step its strategy lacks, a replacement or
    /// skip of a step that cannot go, or a skipped safety step without a reason. The
    /// message names the steps there are.
    pub(crate) fn validate(&self) -> Result<(), HookError> {
        if let Some(name) = &self.strategy
            && strategy(name).is_none()
        {
            return Err(HookError::NoStrategy { name: name.clone() });
        }
        let found = self.strategies();
        let Some(first) = found.first() else {
            let step: String = self.step.chars().filter(|c| !c.is_control()).collect();
            return Err(match self.strategy.as_deref().and_then(strategy) {
                Some(strategy) => HookError::NotInStrategy { strategy, step },
                None => HookError::NoSuchStep { step },
            });
        };
        let step = first.step(&self.step).copied().unwrap_or(PREPARE);
        let reason = self.reason.as_deref().map_or("", str::trim);
        match self.placement {
            Placement::Replace | Placement::Skip if step.fixed.is_some() => Err(HookError::Fixed {
                step,
                skip: self.placement == Placement::Skip,
            }),
            Placement::Skip if step.safety && reason.is_empty() => {
                Err(HookError::NeedsReason { step })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach(placement: Placement, step: &str, reason: Option<&str>) -> Attach {
        Attach {
            placement,
            step: step.into(),
            strategy: None,
            reason: reason.map(Into::into),
        }
    }

    #[test]
    fn an_unknown_step_is_refused_with_every_strategys_steps() {
        let e = attach(Placement::Before, "swtich", None)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("no strategy has a step `swtich`"), "{e}");
        assert!(e.contains("rolling: lock → backup → maintenance-on"), "{e}");
        assert!(e.contains("rollback: lock → verify-backup"), "{e}");
    }

    #[test]
    fn a_step_of_another_strategy_is_refused_for_the_named_one() {
        let mut a = attach(Placement::After, "monitor", None);
        a.strategy = Some("rolling".into());
        let e = a.validate().unwrap_err().to_string();
        assert!(
            e.contains("strategy `rolling` has no step `monitor`"),
            "{e}"
        );
        a.strategy = Some("blue_green".into());
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn a_safety_step_is_skipped_only_with_a_reason_and_prepare_never() {
        let e = attach(Placement::Skip, "verify", Some("  "))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("skipping it needs a reason"), "{e}");
        assert_eq!(
            attach(
                Placement::Skip,
                "verify",
                Some("health is checked by the LB")
            )
            .validate(),
            Ok(())
        );
        assert_eq!(attach(Placement::Skip, "optimize", None).validate(), Ok(()));
        let e = attach(Placement::Replace, "prepare", None)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be replaced"), "{e}");
    }
}
