//! The text of every script and module the engine has compiled, by source name, so that
//! error snippets can show the line — for embedded stdlib files as well as files on disk.

use crate::sync::ReadWrite;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct SourceMap {
    texts: RwLock<HashMap<String, Arc<str>>>,
}

impl SourceMap {
    pub fn insert(&self, name: &str, text: &str) {
        self.texts
            .write_locked()
            .insert(name.to_owned(), Arc::from(text));
    }

    /// The text for a source name; script files (`.rhai`) not compiled through us (the
    /// modules beside a script) are read from disk — never any other file, so an error
    /// naming an arbitrary path cannot print its content.
    pub fn get(&self, name: &str) -> Option<Arc<str>> {
        if let Some(t) = self.texts.read_locked().get(name) {
            return Some(t.clone());
        }
        if std::path::Path::new(name)
            .extension()
            .is_none_or(|e| e != "rhai")
        {
            return None;
        }
        std::fs::read_to_string(name).ok().map(Arc::from)
    }
}
