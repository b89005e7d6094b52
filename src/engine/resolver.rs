//! Module resolution for `import "…"`: the project's own `stdlib/` first (so a project
//! can override a shipped module by giving a file the same name), then the stdlib embedded
//! in the binary, then (through Rhai's file resolver, chained after this one) paths
//! relative to the script.

use crate::sync::Locked;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope};

type SharedModule = Arc<Module>;

use super::sources::SourceMap;
use super::stdlib;

pub(crate) struct StdlibResolver {
    project_stdlib: Option<PathBuf>,
    sources: Arc<SourceMap>,
    cache: Mutex<HashMap<String, SharedModule>>,
}

impl StdlibResolver {
    pub(crate) fn new(project_stdlib: Option<PathBuf>, sources: Arc<SourceMap>) -> StdlibResolver {
        StdlibResolver {
            project_stdlib,
            sources,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The source name and text of a module, project override first.
    pub(crate) fn lookup(&self, path: &str) -> Option<(String, String)> {
        let key = path.trim_end_matches(".rhai");
        let name = format!("stdlib/{key}.rhai");
        if let Some(dir) = &self.project_stdlib {
            let file = dir.join(format!("{key}.rhai"));
            if let Ok(text) = std::fs::read_to_string(&file) {
                return Some((name, text));
            }
        }
        stdlib::get(key).map(|text| (name, text.to_owned()))
    }
}

impl ModuleResolver for StdlibResolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        // Modules come from stdlib/ (project or embedded) or from beside the script:
        // never from an absolute path or by climbing out with `..`.
        let p = std::path::Path::new(path);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            let why = EvalAltResult::ErrorRuntime(
                format!(
                    "import \"{path}\" reaches outside the project: modules are imported by a relative name from stdlib/ or beside the script (no absolute paths, no `..`)"
                )
                .into(),
                Position::NONE,
            );
            // Rhai accepts only "not found" or "error in module" from a resolver.
            return Err(EvalAltResult::ErrorInModule(path.to_owned(), why.into(), pos).into());
        }
        if let Some(m) = self.cache.locked().get(path) {
            return Ok(m.clone());
        }
        let Some((name, text)) = self.lookup(path) else {
            return Err(EvalAltResult::ErrorModuleNotFound(path.to_owned(), pos).into());
        };
        self.sources.insert(&name, &text);
        let in_module = |e: Box<EvalAltResult>| -> Box<EvalAltResult> {
            EvalAltResult::ErrorInModule(name.clone(), e, pos).into()
        };
        let mut ast = engine
            .compile(&text)
            .map_err(|e| in_module(EvalAltResult::ErrorParsing(*e.0, e.1).into()))?;
        ast.set_source(name.as_str());
        let mut module = Module::eval_ast_as_new(Scope::new(), &ast, engine).map_err(in_module)?;
        module.build_index();
        let module: SharedModule = module.into();
        self.cache.locked().insert(path.to_owned(), module.clone());
        Ok(module)
    }
}
