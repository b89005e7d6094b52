//! The project a command works in: the inventory file, its directory, its scripts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Error;
use crate::inventory::{self, Environment, Inventory};

pub(crate) struct Project {
    pub inventory: Arc<Inventory>,
}

impl Project {
    /// Loads `--config`, or discovers `runbook.toml` from the current directory upwards.
    pub(crate) fn load(config: Option<&Path>) -> Result<Project, Error> {
        let path = if let Some(p) = config {
            p.to_path_buf()
        } else {
            let cwd = std::env::current_dir().map_err(|source| Error::Read {
                path: PathBuf::from("."),
                source,
            })?;
            inventory::discover(&cwd).ok_or(Error::NoConfig { dir: cwd })?
        };
        Ok(Project {
            inventory: Arc::new(Inventory::load(&path)?),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.inventory.root
    }

    pub(crate) fn scripts_dir(&self) -> PathBuf {
        self.root().join("scripts")
    }

    /// The environment named by `--env`/`RUNBOOK_ENV`; with none given, the only one when
    /// the inventory has exactly one and it is not protected.
    pub(crate) fn env(&self, name: Option<&str>) -> Result<Arc<Environment>, Error> {
        if let Some(name) = name {
            return Ok(self.inventory.env(name)?);
        }
        let envs = &self.inventory.envs;
        match envs.values().next() {
            Some(only) if envs.len() == 1 && !only.protected => {
                Ok(self.inventory.env(&only.name)?)
            }
            _ => Err(Error::NoEnv {
                known: envs.keys().cloned().collect(),
            }),
        }
    }

    /// A script path as given, or `scripts/<name>.rhai`.
    pub(crate) fn resolve_script(&self, script: &str) -> Result<PathBuf, Error> {
        let as_path = Path::new(script);
        if as_path.is_file() {
            return Ok(as_path.to_path_buf());
        }
        let named = self.scripts_dir().join(format!("{script}.rhai"));
        if named.is_file() {
            return Ok(named);
        }
        Err(Error::ScriptNotFound {
            name: script.to_owned(),
            searched: named,
            available: self.script_names(),
        })
    }

    /// Names of the scripts under `scripts/` (recursively), e.g. `deploy`, `ops/restart`.
    pub(crate) fn script_names(&self) -> Vec<String> {
        let dir = self.scripts_dir();
        let mut names: Vec<String> = rhai_files(&dir)
            .iter()
            .filter_map(|p| p.strip_prefix(&dir).ok())
            .map(|p| p.with_extension("").to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// Every `.rhai` file under `dir`, sorted.
pub(crate) fn rhai_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "rhai"))
        .map(walkdir::DirEntry::into_path)
        .collect()
}
