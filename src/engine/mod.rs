//! The one engine factory, shared by `run`, `check`, `repl` and `doc`.
//!
//! It sets the safety limits, routes `print`/`debug` into the output layer, stops a script
//! on Ctrl-C through the progress hook, installs the module resolvers and registers every
//! script-facing module. Nothing here is global: two sessions never share state.

use crate::{diagnostic, sources};
mod resolver;
pub(crate) mod stdlib;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::module_resolvers::{FileModuleResolver, ModuleResolversCollection};
use rhai::{AST, Dynamic, Engine, Map, Scope};

use crate::output::Level;
pub(crate) use crate::session::{RunInfo, Session, SessionRef};
pub(crate) use diagnostic::Diagnostic;
pub(crate) use resolver::StdlibResolver;
use sources::SourceMap;

/// Operations a script may perform before it is stopped as a runaway; the environment
/// variable `RUNBOOK_MAX_OPERATIONS` overrides it (README "Limits").
pub(crate) const MAX_OPERATIONS: u64 = 50_000_000;

fn max_operations() -> u64 {
    std::env::var("RUNBOOK_MAX_OPERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(MAX_OPERATIONS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Run,
    /// Compile only, with strict variables.
    Check,
}

pub(crate) fn build(session: &Arc<Session>, mode: Mode, script_dir: Option<&Path>) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(max_operations())
        .set_max_call_levels(64)
        .set_max_expr_depths(128, 64)
        .set_max_string_size(64 * 1024 * 1024)
        // Rhai re-measures an array after every change, so a loop that pushes slows down
        // quadratically long before a large limit: 100k elements keep a runaway push
        // loop to seconds.
        .set_max_array_size(100_000)
        .set_max_map_size(100_000)
        .set_max_modules(256)
        .set_strict_variables(mode == Mode::Check)
        .set_fail_on_invalid_map_property(true);

    let output = session.effects.output().clone();
    engine.on_print(move |s| output.log(Level::Print, s));
    let output = session.effects.output().clone();
    engine.on_debug(move |s, src, pos| {
        let at = match (src, pos.line()) {
            (Some(src), Some(line)) => format!("{src}:{line}: "),
            _ => String::new(),
        };
        output.log(Level::Debug, format!("{at}{s}"));
    });
    let interrupt = session.effects.interrupt().clone();
    // A change refused at the REPL's question stops the line too (even inside `try`).
    let refused = session.effects.confirm().refused_flag();
    engine.on_progress(move |_| {
        if refused.load(std::sync::atomic::Ordering::SeqCst) {
            return Some(Dynamic::from("not confirmed"));
        }
        interrupt.pending().then(|| Dynamic::from("interrupted"))
    });

    let project_stdlib = session
        .inventory
        .as_ref()
        .map(|inv| inv.root.join("stdlib"));
    let mut resolvers = ModuleResolversCollection::new();
    resolvers.push(StdlibResolver::new(project_stdlib, session.sources.clone()));
    let mut files = FileModuleResolver::new();
    if let Some(dir) = script_dir {
        files.set_base_path(dir);
    }
    resolvers.push(files);
    engine.set_module_resolver(resolvers);

    engine.set_default_tag(Dynamic::from(SessionRef(session.clone())));
    crate::modules::register(&mut engine);
    engine
}

/// The constants every script sees: `args`, `env`, `app`, `run`.
pub(crate) fn scope(session: &Session) -> Scope<'static> {
    let mut scope = Scope::new();
    let context = crate::modules::context::context_map(session);
    for key in ["args", "env", "app", "run"] {
        let value = context
            .get(key)
            .cloned()
            .unwrap_or_else(|| Dynamic::from(Map::new()));
        scope.push_constant(key, value);
    }
    scope
}

/// Compiles a script file, recording its text for error snippets.
pub(crate) fn compile(
    engine: &Engine,
    scope: &Scope,
    name: &str,
    text: &str,
    sources: &SourceMap,
) -> Result<AST, Diagnostic> {
    sources.insert(name, text);
    let mut ast = engine
        .compile_with_scope(scope, text)
        .map_err(|e| Diagnostic::from_parse(&e, name, sources))?;
    ast.set_source(name);
    Ok(ast)
}

/// The name a script is shown under: relative to the project root when inside it.
pub(crate) fn source_name(path: &Path, root: Option<&Path>) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    root.and_then(|r| abs.strip_prefix(r).ok())
        .map_or_else(|| PathBuf::from(path), Path::to_path_buf)
        .to_string_lossy()
        .into_owned()
}

/// Calls the script's `fn on_failure(err)` after the script failed, with the modules the
/// script imports at its top level in reach — `on_failure` can call `rolling::recover`
/// without importing it again. Only those `import` statements run first (the rest of the
/// script does not run again); `scope` is the failed run's.
pub(crate) fn call_on_failure(
    engine: &Engine,
    scope: &mut Scope,
    ast: &AST,
    err: Map,
) -> Result<Dynamic, Box<rhai::EvalAltResult>> {
    let imports: Vec<rhai::Stmt> = ast
        .statements()
        .iter()
        .filter(|s| matches!(s, rhai::Stmt::Import(..)))
        .cloned()
        .collect();
    let mut prelude = AST::new(imports, ast.shared_lib().clone());
    if let Some(source) = ast.source() {
        prelude.set_source(source);
    }
    let options = rhai::CallFnOptions::new().eval_ast(true).rewind_scope(true);
    engine.call_fn_with_options::<Dynamic>(options, scope, &prelude, "on_failure", (err,))
}
