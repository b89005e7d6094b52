//! The crate's layers point down only: every `crate::X` path in a module of `src/` names a
//! module of its own layer or one below, and the modules' import graph has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom first. A module may use modules of its own layer (without a cycle) and below.
const LAYERS: &[&[&str]] = &[
    &[
        "quote",
        "tls",
        "envfile",
        "interrupt",
        "redact",
        "sources",
        "diagnostic",
        "origin",
        "judge",
        "schema_risk",
        "testing",
        "steps",
        "sync",
        "gzip",
        "num",
    ],
    &["inventory"],
    &["error"],
    &["output"],
    &["transport"],
    &["effects"],
    &[
        "audit",
        "lock",
        "release",
        "backup",
        "traffic",
        "rollout",
        "recovery",
        "status",
        "health",
        "notify",
        "metrics",
        "permissions",
        "signal",
        "project",
    ],
    &["session"],
    &["modules"],
    &["engine"],
    &["cli"],
    &["commands"],
];

/// The top-level module a file of `src/` belongs to (`None` for the crate roots).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_owned();
    (name != "lib" && name != "main" && name != "bin").then_some(name)
}

/// The modules `text` names as `crate::X`, outside comments and `#[cfg(test)]` code.
fn uses(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.expect("walk src/");
        if entry.path().extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = entry.path().strip_prefix(&src).expect("inside src/");
        let Some(module) = module_of(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).expect("read a source file");
        let to = edges.entry(module.clone()).or_default();
        to.extend(uses(&text).into_iter().filter(|m| *m != module));
    }
    edges
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn every_module_imports_only_its_own_layer_or_below() {
    let edges = graph();
    assert!(edges.len() > 20, "the scan found the modules: {edges:?}");
    let mut upward = Vec::new();
    for (from, tos) in &edges {
        let Some(a) = layer_of(from) else {
            panic!("module `{from}` is in no layer: add it to LAYERS in tests/layers.rs");
        };
        for to in tos {
            let b = layer_of(to).unwrap_or_else(|| panic!("`{from}` uses `{to}`, in no layer"));
            if b > a {
                upward.push(format!("{from} (layer {a}) -> {to} (layer {b})"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports up the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    // Depth-first search with colours: a grey node met again closes a cycle.
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
        found: &mut Vec<String>,
    ) {
        colour.insert(n, 1);
        path.push(n);
        for m in edges.get(n).into_iter().flatten() {
            match colour.get(m.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| *p == m).unwrap_or(0);
                    found.push(format!("{} -> {m}", path[start..].join(" -> ")));
                }
                Some(_) => {}
                None => visit(m, edges, colour, path, found),
            }
        }
        path.pop();
        colour.insert(n, 2);
    }
    let edges = graph();
    let mut colour = BTreeMap::new();
    let mut found = Vec::new();
    for n in edges.keys() {
        if !colour.contains_key(n.as_str()) {
            visit(n, &edges, &mut colour, &mut Vec::new(), &mut found);
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn the_scan_sees_a_use_that_climbs() {
    // The checker itself: a path up the layers in a file's text is found.
    let found = uses(
        "use crate::commands::run;\n// crate::cli in a comment\nfn f() { crate::engine::build(); }",
    );
    assert_eq!(
        found,
        BTreeSet::from(["commands".to_owned(), "engine".to_owned()])
    );
}
