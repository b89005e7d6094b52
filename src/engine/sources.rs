//! The text of every script and module the engine has compiled, by source name, so that
//! error snippets can show the line — for embedded stdlib files as well as files on disk.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct SourceMap {
    texts: RwLock<HashMap<String, Arc<str>>>,
}

impl SourceMap {
    pub fn insert(&self, name: &str, text: &str) {
        self.texts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), Arc::from(text));
    }

    /// The text for a source name; files not compiled through us are read from disk.
    pub fn get(&self, name: &str) -> Option<Arc<str>> {
        if let Some(t) = self
            .texts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Some(t.clone());
        }
        std::fs::read_to_string(name).ok().map(Arc::from)
    }
}
