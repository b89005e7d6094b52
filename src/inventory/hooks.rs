//! `[[hooks]]`: a project's hooks on the strategies' named steps, read and checked when
//! the inventory loads — a misspelt step, a hook that says neither where nor what, or a
//! safety step skipped without a reason stops every command before any host is touched.

use super::model::RawHook;
use crate::steps::{Attach, Placement};

/// Why a `[[hooks]]` entry would not run, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadHook {
    #[error(
        "say where it goes: `before`, `after`, `replace` or `skip` = \"STEP\" (the steps: `runbook run SCRIPT --dry-run` lists them, README \"Hooking a strategy's steps\")"
    )]
    NoPlace,
    #[error(
        "give one of `before`, `after`, `replace`, `skip` per hook (write two hooks for two places)"
    )]
    TwoPlaces,
    /// The step or strategy it names.
    #[error(transparent)]
    Attach(#[from] crate::steps::HookError),
    #[error("env = [\"{env}\"] names no environment (environments: {})", known.join(", "))]
    UnknownEnv { env: String, known: Vec<String> },
    #[error(
        "`run` is empty: give the program and its arguments, e.g. [\"npm\", \"run\", \"build\"]"
    )]
    EmptyRun,
    #[error("`artisan` is empty: give the command and its arguments, e.g. [\"route:cache\"]")]
    EmptyArtisan,
    #[error(
        "call = \"{}\" is not `module::function` (a function of the project's stdlib/MODULE.rhai, e.g. \"deploy_hooks::warm_cache\")",
        text.escape_debug()
    )]
    BadCall { text: String },
    #[error(
        "a skipped step runs nothing: drop `run`/`artisan`/`call`, or write `replace` to run something instead"
    )]
    SkipRuns,
    #[error(
        "say what it runs: `run = [\"program\", \"arg\"]`, `artisan = [\"command\"]` or `call = \"module::function\"` (before/after/replace `{step}`)"
    )]
    NoAction { step: String },
    #[error("give one of `run`, `artisan`, `call` per hook")]
    TwoActions,
}

/// What a hook of the inventory runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookAction {
    /// An argv on the step's hosts.
    Run(Vec<String>),
    /// `php artisan …` on the step's hosts.
    Artisan(Vec<String>),
    /// A function of a module in the project's `stdlib/`.
    Call { module: String, function: String },
    /// Nothing: the step is skipped.
    Skip,
}

/// One checked `[[hooks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hook {
    pub attach: Attach,
    pub action: HookAction,
    /// Only on the hosts of this role.
    pub on: Option<String>,
    /// Only in these environments; `None`: all.
    pub envs: Option<Vec<String>>,
    /// Where it was written: `hooks[2]`.
    pub key: String,
}

impl Hook {
    /// Whether the hook applies to a run on environment `env`.
    pub(crate) fn applies_to(&self, env: &str) -> bool {
        self.envs
            .as_ref()
            .is_none_or(|e| e.iter().any(|n| n == env))
    }

    /// What it runs, for the step's label: `php artisan route:cache`.
    pub(crate) fn describe(&self) -> String {
        match &self.action {
            HookAction::Run(argv) => crate::quote::join(argv),
            HookAction::Artisan(args) => format!("php artisan {}", crate::quote::join(args)),
            HookAction::Call { module, function } => format!("{module}::{function}"),
            HookAction::Skip => "skip".to_owned(),
        }
    }
}

/// Reads `hooks`, refusing (with the key and what to write) anything that would not run.
/// `envs` are the inventory's environments.
pub(crate) fn resolve(raw: &[RawHook], envs: &[&String]) -> Result<Vec<Hook>, (String, BadHook)> {
    raw.iter()
        .enumerate()
        .map(|(i, h)| {
            let key = format!("hooks[{i}]");
            one(h, envs)
                .map_err(|m| (key.clone(), m))
                .map(|(attach, action)| Hook {
                    attach,
                    action,
                    on: h.on.clone(),
                    envs: h.env.clone(),
                    key,
                })
        })
        .collect()
}

fn one(h: &RawHook, envs: &[&String]) -> Result<(Attach, HookAction), BadHook> {
    let places = [
        (Placement::Before, &h.before),
        (Placement::After, &h.after),
        (Placement::Replace, &h.replace),
        (Placement::Skip, &h.skip),
    ];
    let mut set = places
        .iter()
        .filter_map(|(p, s)| s.as_ref().map(|s| (*p, s)));
    let Some((placement, step)) = set.next() else {
        return Err(BadHook::NoPlace);
    };
    if set.next().is_some() {
        return Err(BadHook::TwoPlaces);
    }
    let attach = Attach {
        placement,
        step: step.clone(),
        strategy: h.strategy.clone(),
        reason: h.reason.clone(),
    };
    attach.validate()?;
    if let Some(list) = &h.env {
        for e in list {
            if !envs.contains(&e) {
                return Err(BadHook::UnknownEnv {
                    env: e.clone(),
                    known: envs.iter().map(|s| (*s).clone()).collect(),
                });
            }
        }
    }
    let mut actions = Vec::new();
    if let Some(argv) = &h.run {
        if argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(BadHook::EmptyRun);
        }
        actions.push(HookAction::Run(argv.clone()));
    }
    if let Some(args) = &h.artisan {
        if args.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(BadHook::EmptyArtisan);
        }
        actions.push(HookAction::Artisan(args.clone()));
    }
    if let Some(call) = &h.call {
        actions.push(call_of(call)?);
    }
    match (placement, actions.len()) {
        (Placement::Skip, 0) => Ok((attach, HookAction::Skip)),
        (Placement::Skip, _) => Err(BadHook::SkipRuns),
        (_, 0) => Err(BadHook::NoAction { step: step.clone() }),
        (_, 1) => Ok((attach, actions.remove(0))),
        _ => Err(BadHook::TwoActions),
    }
}

/// `module::function`, or `dir/module::function`, of the project's `stdlib/`.
fn call_of(text: &str) -> Result<HookAction, BadHook> {
    let bad = || BadHook::BadCall {
        text: text.to_owned(),
    };
    let (module, function) = text.rsplit_once("::").ok_or_else(bad)?;
    let ident = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let module_ok = !module.is_empty()
        && module.split('/').all(|part| {
            !part.is_empty()
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if !module_ok || !ident(function) {
        return Err(bad());
    }
    Ok(HookAction::Call {
        module: module.to_owned(),
        function: function.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(f: impl FnOnce(&mut RawHook)) -> Result<Vec<Hook>, (String, String)> {
        let mut h = RawHook::default();
        f(&mut h);
        let prod = "production".to_owned();
        resolve(&[h], &[&prod]).map_err(|(key, e)| (key, e.to_string()))
    }

    #[test]
    fn a_hook_says_where_and_what_once_each() {
        let e = hook(|h| h.run = Some(vec!["true".into()])).unwrap_err();
        assert!(e.1.starts_with("say where it goes"), "{e:?}");
        let e = hook(|h| {
            h.before = Some("switch".into());
            h.after = Some("switch".into());
            h.run = Some(vec!["true".into()]);
        })
        .unwrap_err();
        assert!(e.1.contains("one of `before`, `after`"), "{e:?}");
        let e = hook(|h| h.before = Some("switch".into())).unwrap_err();
        assert!(e.1.starts_with("say what it runs"), "{e:?}");
        let e = hook(|h| {
            h.skip = Some("optimize".into());
            h.run = Some(vec!["true".into()]);
        })
        .unwrap_err();
        assert!(e.1.contains("a skipped step runs nothing"), "{e:?}");
        let ok = hook(|h| {
            h.before = Some("switch".into());
            h.artisan = Some(vec!["route:cache".into()]);
            h.env = Some(vec!["production".into()]);
        })
        .unwrap();
        assert_eq!(ok[0].describe(), "php artisan route:cache");
        assert!(ok[0].applies_to("production") && !ok[0].applies_to("staging"));
    }

    #[test]
    fn a_call_names_a_module_function_and_env_an_environment() {
        let e = hook(|h| {
            h.after = Some("verify".into());
            h.call = Some("warm(\"x\")".into());
        })
        .unwrap_err();
        assert!(e.1.contains("is not `module::function`"), "{e:?}");
        let ok = hook(|h| {
            h.after = Some("verify".into());
            h.call = Some("hooks/deploy::warm_cache".into());
        })
        .unwrap();
        assert_eq!(
            ok[0].action,
            HookAction::Call {
                module: "hooks/deploy".into(),
                function: "warm_cache".into()
            }
        );
        let e = hook(|h| {
            h.after = Some("verify".into());
            h.run = Some(vec!["true".into()]);
            h.env = Some(vec!["prod".into()]);
        })
        .unwrap_err();
        assert!(
            e.1.contains("names no environment (environments: production)"),
            "{e:?}"
        );
    }
}
