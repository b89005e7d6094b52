//! `runbook check`: compile every script and stdlib module with strict variables, resolve
//! their imports, and validate the inventory. Touches no host. CI runs it on every push.

use std::path::PathBuf;

use rhai::Scope;

use super::{SessionConfig, runtime, session};
use crate::cli::{CheckArgs, Global};
use crate::engine::{self, Diagnostic, Mode, RunInfo, StdlibResolver};
use crate::error::Error;
use crate::output::Verbosity;
use crate::project::{Project, rhai_files};

pub(crate) fn run(global: &Global, args: &CheckArgs) -> Result<(), Error> {
    // With explicit paths an inventory is optional; without, it names the scripts.
    let project = match Project::load(global.config.as_deref()) {
        Ok(p) => Some(p),
        Err(Error::NoConfig { .. }) if !args.paths.is_empty() => None,
        Err(e) => return Err(e),
    };
    let rt = runtime()?;
    let inventory = project.as_ref().map(|p| p.inventory.clone());
    let env = inventory
        .as_ref()
        .and_then(|i| i.envs.values().next().cloned());
    let session = session(
        &rt,
        SessionConfig {
            inventory: inventory.clone(),
            env,
            info: RunInfo {
                dry_run: true,
                ..RunInfo::default()
            },
            verbosity: Verbosity::Quiet,
            json: false,
        },
    );
    let root = project.as_ref().map(|p| p.root().to_path_buf());

    let scripts: Vec<PathBuf> = if args.paths.is_empty() {
        project
            .as_ref()
            .map(|p| rhai_files(&p.scripts_dir()))
            .unwrap_or_default()
    } else {
        args.paths.clone()
    };
    let mut failed = 0;
    let mut checked = 0;
    let mut report = |name: &str, result: Result<(), Diagnostic>| {
        checked += 1;
        match result {
            Ok(()) => {
                if global.verbosity() > Verbosity::Quiet {
                    eprintln!("ok     {name}");
                }
            }
            Err(d) => {
                failed += 1;
                eprintln!("{d}\n");
            }
        }
    };

    for path in &scripts {
        let name = engine::source_name(path, root.as_deref());
        let engine = engine::build(&session, Mode::Check, path.parent());
        let scope = engine::scope(&session);
        let result = std::fs::read_to_string(path)
            .map_err(|e| Diagnostic::plain(format!("cannot read {}: {e}", path.display())))
            .and_then(|text| check_script(&engine, &scope, &name, &text, &session.sources));
        report(&name, result);
    }

    if args.paths.is_empty() {
        let engine = engine::build(&session, Mode::Check, None);
        let resolver = StdlibResolver::new(
            root.as_ref().map(|r| r.join("stdlib")),
            session.sources.clone(),
        );
        for module in stdlib_modules(root.as_deref()) {
            let Some((name, text)) = resolver.lookup(&module) else {
                continue;
            };
            report(
                &name,
                check_script(&engine, &Scope::new(), &name, &text, &session.sources),
            );
        }
    }

    if let Some(p) = &project {
        failed += check_environments(&p.inventory);
    }
    if let Some(p) = &project
        && global.verbosity() > Verbosity::Quiet
    {
        eprintln!(
            "ok     {} ({} environments)",
            engine::source_name(&p.inventory.path, root.as_deref()),
            p.inventory.envs.len()
        );
    }
    if failed > 0 {
        return Err(Error::CheckFailed { count: failed });
    }
    if global.verbosity() > Verbosity::Quiet {
        eprintln!("checked {checked} files: all ok");
    }
    Ok(())
}

/// The stdlib modules to check: the shipped ones and the project's own `stdlib/`.
fn stdlib_modules(root: Option<&std::path::Path>) -> Vec<String> {
    let mut modules: Vec<String> = engine::stdlib::FILES
        .iter()
        .map(|(p, _)| (*p).to_owned())
        .collect();
    if let Some(root) = root {
        let dir = root.join("stdlib");
        for file in rhai_files(&dir) {
            if let Ok(rel) = file.strip_prefix(&dir) {
                modules.push(rel.with_extension("").to_string_lossy().into_owned());
            }
        }
    }
    modules.sort();
    modules.dedup();
    modules
}

/// What a run on each environment will need from the environment runbook runs in:
/// settings read from variables that are not set here, and `env_template` variables.
/// A missing variable is a warning (a lint job may not hold production's secrets); a
/// template that cannot be read, or that could never render, is a failure (counted).
fn check_environments(inventory: &crate::inventory::Inventory) -> usize {
    let mut failed = 0;
    for env in inventory.envs.values() {
        for (key, var) in &env.unresolved {
            eprintln!(
                "warning: runbook.toml `{key}` reads {var}, which is not set here: a run on `{}` stops until it is (export it, or add it to the CI job's secrets)",
                env.name
            );
        }
        let Some(template) = &env.env_template else {
            continue;
        };
        match crate::envfile::render_file(template, crate::envfile::from_process_env) {
            Ok(_) => {}
            Err(crate::envfile::TemplateError::Missing { missing, .. }) => {
                for m in missing {
                    eprintln!(
                        "warning: env.{}.env_template {}:{} reads {}, which is not set here: a deploy to `{}` stops until it is",
                        env.name,
                        template.display(),
                        m.line,
                        m.name,
                        env.name
                    );
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: env.{}.env_template: {e}\n", env.name);
            }
        }
    }
    failed
}

/// Compiles with strict variables, then resolves every import (evaluating only module
/// definitions, never the script itself).
fn check_script(
    engine: &rhai::Engine,
    scope: &Scope,
    name: &str,
    text: &str,
    sources: &crate::sources::SourceMap,
) -> Result<(), Diagnostic> {
    engine::compile(engine, scope, name, text, sources)?;
    engine
        .compile_into_self_contained(scope, text)
        .map(|_| ())
        .map_err(|e| Diagnostic::from_eval(&e, name, sources))
}
