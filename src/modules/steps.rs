//! `steps::*`: hooks on the strategies' named steps from a script —
//! `steps::before("switch", |ctx| …)`, `after`, `replace`, `skip` — and what the
//! strategies' runner (`common::run_steps`) asks: the hooks of its strategy, the
//! inventory's and the script's together, checked before its first step. The catalogue
//! of steps is `crate::steps`; this adapter only converts values.

use crate::sync::Locked;
use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, FnPtr, Map};

use super::RhaiResult;
use crate::inventory::hooks::{Hook, HookAction};
use crate::steps::{Attach, Hooked, Placement, Strategy};

/// Records a hook of the script, refusing a step no strategy has (or a skip it may not
/// make) at the line that asked.
fn attach(
    ctx: &NativeCallContext,
    placement: Placement,
    step: &str,
    action: Option<FnPtr>,
    reason: Option<&str>,
) -> RhaiResult<()> {
    let session = super::session(ctx)?;
    let attach = Attach {
        placement,
        step: step.to_owned(),
        strategy: None,
        reason: reason.map(ToOwned::to_owned),
    };
    let call = format!("steps::{}(\"{}\")", placement.as_str(), step.escape_debug());
    attach
        .validate()
        .map_err(|m| super::error(format!("{call}: {m}")))?;
    let pos = ctx.call_position();
    let source = ctx.call_source().unwrap_or_default().to_owned();
    let origin = match (ctx.call_source(), pos.line()) {
        (Some(src), Some(line)) => format!("{src}:{line}"),
        (None, Some(line)) => format!("line {line}"),
        _ => "the script".to_owned(),
    };
    session.hooks.locked().push(Hooked {
        attach,
        action,
        origin,
        source,
    });
    Ok(())
}

/// A hook as the runner reads it.
fn hook_map(kind: &str, what: String, origin: String, reason: Option<&str>) -> Map {
    let mut m = Map::new();
    m.insert("kind".into(), kind.into());
    m.insert("what".into(), what.into());
    m.insert("origin".into(), origin.into());
    m.insert(
        "reason".into(),
        reason.map_or(Dynamic::UNIT, |r| r.trim().to_owned().into()),
    );
    m
}

/// At most `max` characters of `text`, with an ellipsis when cut (a step label).
fn clip(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

fn inventory_hook(h: &Hook) -> Map {
    let origin = format!("runbook.toml {}", h.key);
    let mut m = match &h.action {
        HookAction::Run(argv) => {
            let mut m = hook_map("run", clip(h.describe(), 48), origin, None);
            m.insert("argv".into(), strings(argv).into());
            m
        }
        HookAction::Artisan(args) => {
            let mut m = hook_map("artisan", clip(h.describe(), 48), origin, None);
            m.insert("argv".into(), strings(args).into());
            m
        }
        HookAction::Call { module, function } => {
            let mut m = hook_map("call", h.describe(), origin, None);
            m.insert("path".into(), module.clone().into());
            m.insert("function".into(), function.clone().into());
            m
        }
        HookAction::Skip => hook_map("skip", "skip".into(), origin, h.attach.reason.as_deref()),
    };
    m.insert(
        "on".into(),
        h.on.clone().map_or(Dynamic::UNIT, Dynamic::from),
    );
    m
}

fn strings(list: &[String]) -> Array {
    list.iter().cloned().map(Dynamic::from).collect()
}

/// Why a hook cannot go on a strategy's step (said after where the hook was written).
#[derive(Debug, thiserror::Error)]
enum HookRefused {
    #[error("strategy `{strategy}` has no step `{step}`; its steps are:\n  {strategy}: {steps}")]
    NoStep {
        strategy: String,
        step: String,
        /// The strategy's step names, in order.
        steps: String,
    },
    #[error("step `{step}` is already replaced or skipped by {first}: keep one of them")]
    Taken { step: String, first: String },
    #[error("call = \"{module}::{function}\": the module `{module}` does not load: {source}")]
    NoModule {
        module: String,
        function: String,
        source: Box<EvalAltResult>,
    },
    #[error(
        "call = \"{module}::{function}\": the module `{module}` (stdlib/{module}.rhai) has no `fn {function}(ctx)`"
    )]
    NoFunction { module: String, function: String },
}

/// The hooks on one step.
#[derive(Default)]
struct Slot {
    before: Array,
    after: Array,
    /// The replacement or the skip (one at most), with where it was written.
    instead: Option<(Placement, Map, String)>,
}

/// Files `hook` under its step, refusing a second replacement or skip of one step.
fn file(
    slots: &mut std::collections::BTreeMap<&'static str, Slot>,
    strategy: &Strategy,
    attach: &Attach,
    origin: &str,
    hook: Map,
) -> Result<(), HookRefused> {
    let Some(slot) = slots.get_mut(attach.step.as_str()) else {
        return Err(HookRefused::NoStep {
            strategy: strategy.name.to_owned(),
            step: attach.step.clone(),
            steps: strategy.names(),
        });
    };
    match attach.placement {
        Placement::Before => slot.before.push(hook.into()),
        Placement::After => slot.after.push(hook.into()),
        Placement::Replace | Placement::Skip => {
            if let Some((_, _, first)) = &slot.instead {
                return Err(HookRefused::Taken {
                    step: attach.step.clone(),
                    first: first.clone(),
                });
            }
            slot.instead = Some((attach.placement, hook, origin.to_owned()));
        }
    }
    Ok(())
}

/// Refuses a `call = "module::function"` hook whose module does not load or has no
/// public `fn function(ctx)`, before the first step rather than after the switch.
fn check_call(ctx: &NativeCallContext, module: &str, function: &str) -> Result<(), HookRefused> {
    let engine = ctx.engine();
    let found = engine
        .module_resolver()
        .resolve(engine, None, module, rhai::Position::NONE)
        .map_err(|source| HookRefused::NoModule {
            module: module.to_owned(),
            function: function.to_owned(),
            source,
        })?;
    let defined = found
        .iter_script_fn_info()
        .any(|(_, access, name, params, _)| {
            name == function && params == 1 && access == rhai::FnAccess::Public
        });
    if defined {
        Ok(())
    } else {
        Err(HookRefused::NoFunction {
            module: module.to_owned(),
            function: function.to_owned(),
        })
    }
}

fn strategy_named(name: &str) -> RhaiResult<&'static Strategy> {
    crate::steps::strategy(name).ok_or_else(|| {
        super::error(format!(
            "no strategy `{name}`; the strategies and their steps:\n{}",
            crate::steps::catalogue()
        ))
    })
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod steps_api {
    use rhai::{Array, Map};

    /// Runs `f` before step `step` of the strategy this script runs (`runbook run SCRIPT
    /// --dry-run` and the README list the steps): `steps::before("switch", |ctx| …)`.
    /// `f` gets the step's context `#{ strategy, step, hosts, release, source }`; what it
    /// throws fails the run like any step. A step no strategy has is refused here.
    #[rhai_fn(return_raw)]
    pub fn before(ctx: NativeCallContext, step: &str, f: FnPtr) -> Result<(), Box<EvalAltResult>> {
        crate::modules::located(
            &ctx,
            super::attach(&ctx, Placement::Before, step, Some(f), None),
        )
    }

    /// Runs `f` right after step `step` (see `steps::before`).
    #[rhai_fn(return_raw)]
    pub fn after(ctx: NativeCallContext, step: &str, f: FnPtr) -> Result<(), Box<EvalAltResult>> {
        crate::modules::located(
            &ctx,
            super::attach(&ctx, Placement::After, step, Some(f), None),
        )
    }

    /// Runs `f` instead of step `step` (see `steps::before`); the step that makes the
    /// release (`prepare`, `restore`) cannot be replaced.
    #[rhai_fn(return_raw)]
    pub fn replace(ctx: NativeCallContext, step: &str, f: FnPtr) -> Result<(), Box<EvalAltResult>> {
        crate::modules::located(
            &ctx,
            super::attach(&ctx, Placement::Replace, step, Some(f), None),
        )
    }

    /// Skips step `step`. A step that keeps the fleet safe (the lock, a gate,
    /// verification, lifting maintenance mode) is refused without a reason: use
    /// `steps::skip(step, reason)`.
    #[rhai_fn(name = "skip", return_raw)]
    pub fn skip(ctx: NativeCallContext, step: &str) -> Result<(), Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::attach(&ctx, Placement::Skip, step, None, None))
    }

    /// Skips step `step`, saying why (printed as a warning and audited with the run).
    #[rhai_fn(name = "skip", return_raw)]
    pub fn skip_why(
        ctx: NativeCallContext,
        step: &str,
        reason: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        crate::modules::located(
            &ctx,
            super::attach(&ctx, Placement::Skip, step, None, Some(reason)),
        )
    }

    /// The names of `strategy`'s steps, in order (`"rolling"`, `"blue_green"`,
    /// `"canary"`, `"rollback"`).
    #[rhai_fn(return_raw)]
    pub fn list(strategy: &str) -> Result<Array, Box<EvalAltResult>> {
        let s = super::strategy_named(strategy)?;
        Ok(s.steps.iter().map(|st| Dynamic::from(st.name)).collect())
    }

    /// For the strategies' runner: the hooks on `strategy`'s steps, from the inventory
    /// (`[[hooks]]` of this environment) and the script, checked together before the
    /// first step — `#{ STEP: #{ before: [hook], after: [hook], replace, skip } }`.
    #[rhai_fn(return_raw)]
    pub fn hooks(ctx: NativeCallContext, strategy: &str) -> Result<Map, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let s = super::strategy_named(strategy)?;
        let mut slots: std::collections::BTreeMap<&'static str, super::Slot> = s
            .steps
            .iter()
            .map(|st| (st.name, super::Slot::default()))
            .collect();
        let env = session
            .env
            .as_ref()
            .map(|e| e.name.clone())
            .unwrap_or_default();
        let mut refused = Vec::new();
        if let Some(inv) = &session.inventory {
            for h in &inv.hooks {
                if !h.applies_to(&env) || !h.attach.strategies().iter().any(|x| x.name == s.name) {
                    continue;
                }
                let origin = format!("runbook.toml {}", h.key);
                if let HookAction::Call { module, function } = &h.action
                    && let Err(m) = super::check_call(&ctx, module, function)
                {
                    refused.push(format!("{origin}: {m}"));
                    continue;
                }
                if let Err(m) =
                    super::file(&mut slots, s, &h.attach, &origin, super::inventory_hook(h))
                {
                    refused.push(format!("runbook.toml {}: {m}", h.key));
                }
            }
        }
        let script = session.hooks.locked().clone();
        for h in &script {
            // A closure shows where it was attached; a named function by its name.
            let what = match &h.action {
                Some(f) if !f.fn_name().starts_with("anon$") => format!("{}()", f.fn_name()),
                Some(_) => format!("hook of {}", h.origin),
                None => "skip".to_owned(),
            };
            let kind = if h.action.is_some() { "script" } else { "skip" };
            let mut m = super::hook_map(kind, what, h.origin.clone(), h.attach.reason.as_deref());
            if let Some(f) = &h.action {
                m.insert("run".into(), Dynamic::from(f.clone()));
                m.insert("source".into(), h.source.clone().into());
            }
            m.insert("on".into(), Dynamic::UNIT);
            if let Err(e) = super::file(&mut slots, s, &h.attach, &h.origin, m) {
                refused.push(format!(
                    "steps::{}(\"{}\") at {}: {e}",
                    h.attach.placement.as_str(),
                    h.attach.step,
                    h.origin
                ));
            }
        }
        if !refused.is_empty() {
            return Err(crate::modules::error(format!(
                "the hooks on the {} strategy's steps cannot run (nothing was changed):\n{}",
                s.name,
                refused.join("\n")
            )));
        }
        let mut out = Map::new();
        for (name, slot) in slots {
            let mut m = Map::new();
            m.insert("before".into(), slot.before.into());
            m.insert("after".into(), slot.after.into());
            let (replace, skip) = match slot.instead {
                Some((Placement::Skip, h, _)) => (Dynamic::UNIT, Dynamic::from(h)),
                Some((_, h, _)) => (Dynamic::from(h), Dynamic::UNIT),
                None => (Dynamic::UNIT, Dynamic::UNIT),
            };
            m.insert("replace".into(), replace);
            m.insert("skip".into(), skip);
            out.insert(name.into(), m.into());
        }
        Ok(out)
    }

    /// For the strategies' runner: refuses a step list that differs from the catalogue
    /// (`src/steps.rs`) — a project's own copy of a strategy module must keep the names.
    #[rhai_fn(return_raw)]
    pub fn check(strategy: &str, names: Array) -> Result<(), Box<EvalAltResult>> {
        let s = super::strategy_named(strategy)?;
        let got: Vec<String> = names.iter().map(ToString::to_string).collect();
        let want: Vec<&str> = s.steps.iter().map(|st| st.name).collect();
        if got != want {
            return Err(crate::modules::error(format!(
                "the {} strategy runs the steps {} but the catalogue (src/steps.rs) lists {}: keep them the same, so that hooks name real steps",
                s.name,
                got.join(" → "),
                want.join(" → ")
            )));
        }
        Ok(())
    }

    /// For the strategies' runner: calls `function(context)` of the project's module
    /// `module` (`stdlib/MODULE.rhai`), a `call = "module::function"` hook.
    #[rhai_fn(return_raw)]
    pub fn call_hook(
        ctx: NativeCallContext,
        module: &str,
        function: &str,
        context: Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        // Both names were checked when the inventory loaded (a path, an identifier).
        let text =
            format!("import \"{module}\" as hook_module;\nhook_module::{function}(hook_context)");
        let mut scope = rhai::Scope::new();
        scope.push("hook_context", context);
        crate::modules::located(
            &ctx,
            ctx.engine().eval_with_scope::<Dynamic>(&mut scope, &text),
        )
    }

    /// For the strategies' runner: calls a script's hook `f` with the step's context; an
    /// error points into the script that attached it (`source`), not into the runner.
    #[rhai_fn(return_raw)]
    pub fn run_hook(
        ctx: NativeCallContext,
        f: FnPtr,
        context: Map,
        source: &str,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        // Rhai names the caller's source for the hook's frame: the hook's own is right.
        f.call_within_context::<Dynamic>(&ctx, (context,))
            .map_err(|e| match *e {
                EvalAltResult::ErrorInFunctionCall(name, _, inner, pos)
                    if name == f.fn_name() && !source.is_empty() =>
                {
                    EvalAltResult::ErrorInFunctionCall(name, source.to_owned(), inner, pos).into()
                }
                other => other.into(),
            })
    }

    /// For the strategies' runner: shows step `label` as skipped, saying why.
    #[rhai_fn(return_raw)]
    pub fn skipped(
        ctx: NativeCallContext,
        label: &str,
        why: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        use crate::output::{Event, Kind, Outcome};
        let session = crate::modules::session(&ctx)?;
        let output = session.effects.output();
        output.log(
            crate::output::Level::Warn,
            format!("step `{label}` skipped: {why}"),
        );
        output.emit(Event::new(Kind::StepStarted).step(label));
        output.emit(
            Event::new(Kind::StepFinished)
                .step(label)
                .result(Outcome::Skipped)
                .message(why.to_owned()),
        );
        Ok(())
    }
}
