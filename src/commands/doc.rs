//! `runbook doc`: the script API, generated from the engine itself and the embedded stdlib
//! — never maintained by hand, so it cannot drift from what scripts can actually call.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{SessionConfig, runtime, session};
use crate::cli::DocArgs;
use crate::engine::{self, Mode, RunInfo};
use crate::error::Error;
use crate::output::Verbosity;

struct Entry {
    signature: String,
    doc: Vec<String>,
}

pub(crate) fn run(args: &DocArgs) -> Result<(), Error> {
    crate::output::stdout(&render(args.markdown)?)
}

/// The engine with every module registered and no project: what the API is made of.
/// (The runtime is returned so that it outlives the engine's session.)
fn api_engine() -> Result<(tokio::runtime::Runtime, rhai::Engine), Error> {
    let rt = runtime()?;
    let session = session(
        &rt,
        SessionConfig {
            inventory: None,
            env: None,
            info: RunInfo::default(),
            verbosity: Verbosity::Quiet,
            json: false,
        },
    );
    let engine = engine::build(&session, Mode::Check, None);
    Ok((rt, engine))
}

/// `runbook definitions DIR`: Rhai's own `.d.rhai` files for every registered module.
pub(crate) fn definitions(dir: &std::path::Path) -> Result<(), Error> {
    let (_rt, engine) = api_engine()?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    // Rhai writes the Rust types of native functions (`Result<Map, Box<EvalAltResult>>`,
    // `HostRef`); an editor should show what a script sees (`Map`, `Host`).
    for (name, text) in engine.definitions().with_headers(true).iter_files() {
        let path = dir.join(name);
        std::fs::write(&path, script_definitions(&text)).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
    }
    eprintln!("wrote Rhai definitions to {}", dir.display());
    Ok(())
}

/// The script functions in Rhai's metadata `fns` of `module` ("" for the global ones),
/// each with its signature and doc lines, into `sections`.
fn collect(fns: &serde_json::Value, module: &str, sections: &mut BTreeMap<String, Vec<Entry>>) {
    for f in fns.as_array().into_iter().flatten() {
        let name = f["name"].as_str().unwrap_or("");
        // Operators and property accessors are listed with their types below.
        if name.contains('$') || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        // Methods of our own types (global `len(HostSet)`, `contains(HostSet, Host)`)
        // are described in the "Context" section; a module's functions that take a
        // host (`backup::create(host, opts)`) are listed like any other.
        let first_type = f["params"][0]["type"].as_str().unwrap_or("");
        if module.is_empty() && OWN_SCRIPT_TYPES.contains(&script_type(first_type).as_str()) {
            continue;
        }
        let params: Vec<String> = f["params"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let ty = script_type(p["type"].as_str().unwrap_or("?"));
                match p["name"].as_str() {
                    Some(n) if n != "_" => format!("{n}: {ty}"),
                    _ => ty,
                }
            })
            .collect();
        let ret = script_type(f["returnType"].as_str().unwrap_or("()"));
        let prefix = if module.is_empty() {
            String::new()
        } else {
            format!("{module}::")
        };
        let signature = format!("{prefix}{name}({}) -> {ret}", params.join(", "));
        let doc = f["docComments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .flat_map(|c| c.lines())
            .map(|l| l.trim_start_matches("///").trim().to_owned())
            .collect();
        sections
            .entry(module.to_owned())
            .or_default()
            .push(Entry { signature, doc });
    }
}

pub(crate) fn render(markdown: bool) -> Result<String, Error> {
    let (_rt, engine) = api_engine()?;
    let json = engine
        .gen_fn_metadata_to_json(false)
        .unwrap_or_else(|_| "{}".into());
    let meta: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();

    let mut sections: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    collect(&meta["functions"], "", &mut sections);
    if let Some(modules) = meta["modules"].as_object() {
        for (name, module) in modules {
            collect(&module["functions"], name, &mut sections);
        }
    }

    for (path, text) in engine::stdlib::FILES {
        let Ok(ast) = engine.compile(text) else {
            continue;
        };
        let entries = ast
            .iter_functions()
            .filter(|f| !f.name.starts_with('_') && !f.name.starts_with("anon$"))
            .map(|f| Entry {
                signature: format!("{}({})", f.name, f.params.join(", ")),
                doc: f
                    .comments
                    .iter()
                    .flat_map(|c| c.lines())
                    .map(|l| l.trim_start_matches("///").trim().to_owned())
                    .collect(),
            })
            .collect();
        sections.insert(format!("import \"{path}\""), entries);
    }

    let mut out = String::new();
    let title = |out: &mut String, s: &str| {
        if markdown {
            let _ = writeln!(out, "\n## {s}\n");
        } else {
            let _ = writeln!(out, "\n{s}\n{}", "=".repeat(s.len()));
        }
    };
    if markdown {
        out.push_str("# runbook script API\n");
    }
    title(&mut out, "Context");
    out.push_str(
        "Constants: `args` (KEY=VALUE from the command line), `env` (name, url, is_protected, deploy_path, backup_dir, php, composer, health, roles, vars), `app` (name, repository, keep_releases, shared_dirs, shared_files, writable_dirs, root), `run` (id, script, reason, actor, dry_run).\n\
         Types: `Host` (name, address, port, user, transport, roles, url, preview_url, deploy_path), `HostSet` (len, names, is_empty(), contains(host), indexing, `for h in set`, `a + b`) and `HostError`: what a failed command throws (`ssh::run`, `ssh::shell`, `local::run`, `artisan::run`, `ssh::upload`, `ssh::download`). In `catch (e)`: `e.host`, `e.command`, `e.code` (the exit code, `()` when it did not exit), `e.stderr` (its last lines), `e.kind` (\"exit\", \"timeout\", \"unreachable\", \"refused\", \"signal\", \"error\"), `e.message`; a fan-out that failed on several hosts gives each in `e.hosts` (`e.host` is the first) and the hosts it did not start in `e.skipped`. `\"\" + e`, `${e}` and `print(e)` give the message; secrets are masked in every field.\n\
         A script may define `fn on_failure(err)`: it runs after any failure or interrupt with `#{ message, location, interrupted }`.\n",
    );
    for (module, mut entries) in sections {
        entries.sort_by(|a, b| a.signature.cmp(&b.signature));
        let heading = if module.is_empty() {
            "Global functions".to_owned()
        } else if module.starts_with("import") {
            format!("stdlib: {module}")
        } else {
            format!("module {module}")
        };
        title(&mut out, &heading);
        for e in entries {
            if markdown {
                let _ = writeln!(out, "### `{}`\n", e.signature);
                for l in &e.doc {
                    let _ = writeln!(out, "{l}");
                }
                out.push('\n');
            } else {
                let _ = writeln!(out, "{}", e.signature);
                for l in &e.doc {
                    let _ = writeln!(out, "    {l}");
                }
            }
        }
    }
    Ok(out)
}

/// Our own script types: their methods are described in the "Context" section.
const OWN_SCRIPT_TYPES: &[&str] = &["Host", "HostSet", "HostError"];

/// Rust type names from the engine's metadata, as a script author reads them: `Host`,
/// `HostSet`, `Map`, `Array`, `String`, `int`, `float`, `bool`, `()`, `any`, `Fn`.
fn script_type(rust: &str) -> String {
    script_type_as(rust, "any")
}

/// [`script_type`] with the name `any` is shown as (`?` in `.d.rhai` files).
fn script_type_as(rust: &str, any: &str) -> String {
    let t = rust.trim();
    if let Some(inner) = t
        .strip_prefix("Result<")
        .and_then(|r| r.strip_suffix('>'))
        .and_then(|r| r.rsplit_once(','))
        .filter(|(_, err)| err.contains("EvalAltResult"))
        .map(|(ok, _)| ok)
    {
        return script_type_as(inner, any);
    }
    let t = t.trim_start_matches("&mut ").trim_start_matches('&').trim();
    match t {
        "str" | "String" | "ImmutableString" | "string" => "String",
        "i64" | "INT" | "int" => "int",
        "f64" | "FLOAT" | "float" => "float",
        "bool" => "bool",
        "Map" | "map" => "Map",
        "Array" | "array" => "Array",
        "Dynamic" | "?" | "RhaiResult" => any,
        "FnPtr" | "Fn" => "Fn",
        "HostRef" | "Host" => "Host",
        "HostSet" => "HostSet",
        "()" | "" => "()",
        other => other,
    }
    .to_owned()
}

/// A `.d.rhai` file with every parameter and return type (after `: ` and `-> ` on a
/// declaration line) as a script type; comments are left as they are.
fn script_definitions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("//") {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = [": ", "-> "]
            .iter()
            .filter_map(|m| rest.find(m).map(|i| (i, m.len())))
            .min()
        {
            let (at, len) = at;
            out.push_str(&rest[..at + len]);
            rest = &rest[at + len..];
            let end = type_end(rest);
            out.push_str(&script_type_as(&rest[..end], "?"));
            rest = &rest[end..];
        }
        out.push_str(rest);
    }
    out
}

/// Where a type written at the start of `s` ends: a `,`, `)`, `;` or `{` outside `<…>`
/// and `(…)`, or the line's end.
fn type_end(s: &str) -> usize {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' => depth += 1,
            '>' => depth = (depth - 1).max(0),
            ')' if depth > 0 => depth -= 1,
            ',' | ')' | ';' | '{' | '\n' | '\r' if depth == 0 => return i,
            _ => {}
        }
    }
    s.len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rust_types_are_shown_as_script_types() {
        assert_eq!(super::script_type("Result<Map, Box<EvalAltResult>>"), "Map");
        assert_eq!(
            super::script_type("Result<HostRef, Box<EvalAltResult>>"),
            "Host"
        );
        assert_eq!(super::script_type("&str"), "String");
        assert_eq!(super::script_type("&mut HostSet"), "HostSet");
    }

    #[test]
    fn doc_lists_every_module_with_documented_functions() {
        let text = super::render(false).unwrap();
        for needle in [
            "module ssh",
            "ssh::run(target: any, argv: Array) -> any",
            "backup::create(host: Host, opts: Map) -> Map",
            "release::current(host: Host) -> String",
            "module local",
            "module log",
            "step(name: String, body: Fn)",
            "stdlib: import \"laravel\"",
            "down(hosts)",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        for rust in ["EvalAltResult", "HostRef", "Result<"] {
            assert!(!text.contains(rust), "{rust} in:\n{text}");
        }
        assert!(!text.contains("anon$"), "{text}");
    }
}
