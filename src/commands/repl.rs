//! `runbook repl`: the outage shell. Lines are evaluated against the environment with a
//! persistent scope, accumulated `fn` definitions and `import`ed modules that stay loaded;
//! `last` is the last result (`_` is reserved in Rhai). Multi-line input continues while
//! the parser reports an unexpected end of input. Meta-commands: `:help [name]`, `:hosts`,
//! `:env NAME`, `:run SCRIPT [k=v …]`, `:dry on|off`, `:last`, `:audit`, `:quit`.
//! History lives in the XDG state directory; a line that contains a secret value is never
//! written to it. Every action is audited.

use rhai::{AST, Dynamic, EvalAltResult, Map, ParseErrorType, Scope};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor};

use super::repl_helper::ReplHelper;
use super::{SessionConfig, actor, parse_args, run_id, runtime, session};
use crate::cli::{Global, ReplArgs};
use crate::engine::{self, Diagnostic, Mode, RunInfo, Session};
use crate::error::Error;
use crate::inventory::Environment;
use crate::project::Project;

const META_HELP: &str = "meta-commands: :help [name]  :hosts  :env NAME  :run SCRIPT [k=v …]  :dry on|off  :last  :audit  :quit\nscript API: :help ssh, :help release, … (or `runbook doc`); Tab completes, Ctrl-C cancels, Ctrl-D exits";

/// What the line loop of one environment ends with.
enum Next {
    Quit,
    Switch(String),
}

pub fn run(global: &Global, args: &ReplArgs) -> Result<(), Error> {
    let project = Project::load(global.config.as_deref())?;
    let mut env_name = args.env.clone();
    let mut dry = args.dry_run;
    loop {
        let env = project.env(env_name.as_deref())?;
        match shell(global, &project, &env, &mut dry)? {
            Next::Quit => return Ok(()),
            Next::Switch(name) => env_name = Some(name),
        }
    }
}

/// The REPL on one environment.
fn shell(
    global: &Global,
    project: &Project,
    env: &std::sync::Arc<Environment>,
    dry: &mut bool,
) -> Result<Next, Error> {
    let rt = runtime()?;
    let session = session(
        &rt,
        SessionConfig {
            inventory: Some(project.inventory.clone()),
            env: Some(env.clone()),
            info: RunInfo {
                id: run_id(),
                script: "repl".into(),
                actor: actor(),
                dry_run: *dry,
                ..RunInfo::default()
            },
            verbosity: global.verbosity(),
            json: false,
        },
    );
    let effects = session.effects.clone();
    crate::signal::install(
        rt.handle(),
        session.effects.interrupt().clone(),
        session.effects.output().clone(),
        move || effects.kill_connections_now(),
    );
    let mut engine = engine::build(&session, Mode::Run, Some(project.root()));
    let mut scope = engine::scope(&session);
    let mut functions = AST::empty();
    let config = Config::builder()
        .auto_add_history(false)
        .completion_type(rustyline::CompletionType::List)
        .build();
    let Ok(mut editor) = Editor::<ReplHelper, DefaultHistory>::with_config(config) else {
        return Err(Error::Runtime(std::io::Error::other(
            "cannot open the line editor",
        )));
    };
    let doc = super::doc::render(false).unwrap_or_default();
    let helper = ReplHelper::new(&doc, env, crate::output::color_enabled());
    let variables = helper.variables.clone();
    editor.set_helper(Some(helper));
    // Protected environments announce themselves in red.
    let prompt = if env.protected && crate::output::color_enabled() {
        format!("\x1b[1;31m{}\x1b[0m> ", env.name)
    } else {
        format!("{}> ", env.name)
    };
    let history = crate::audit::local_path().with_file_name("history");
    let _ = editor.load_history(&history);
    eprintln!(
        "runbook repl on `{}`{}{} — :help, Ctrl-D to exit",
        env.name,
        if env.protected { " (protected)" } else { "" },
        if *dry { ", dry run" } else { "" }
    );
    let mut buffer = String::new();
    let next = loop {
        let line = match editor.readline(if buffer.is_empty() {
            prompt.as_str()
        } else {
            "...> "
        }) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(_) => break Next::Quit,
        };
        if buffer.is_empty() && line.trim_start().starts_with(':') {
            let _ = editor.add_history_entry(line.trim());
            match meta(
                &line,
                &session,
                env,
                &engine,
                &mut scope,
                &mut editor,
                dry,
                project,
            ) {
                Some(next) => break next,
                None => continue,
            }
        }
        buffer.push_str(&line);
        buffer.push('\n');
        let ast = match engine.compile_with_scope(&scope, &buffer) {
            Ok(ast) => ast,
            Err(e) if matches!(e.err_type(), ParseErrorType::UnexpectedEOF) => continue,
            Err(e) => {
                session.sources.insert("repl", &buffer);
                eprintln!("{}", Diagnostic::from_parse(&e, "repl", &session.sources));
                buffer.clear();
                continue;
            }
        };
        if !session.effects.output().redactor().contains_secret(&buffer) {
            let _ = editor.add_history_entry(buffer.trim_end());
        }
        let source = std::mem::take(&mut buffer);
        session.sources.insert("repl", &source);
        let combined = functions.merge(&ast);
        let outcome = evaluate(&session, &engine, &mut scope, &combined, "repl", &source);
        if outcome {
            keep_imports(&mut engine, &source);
        }
        functions += ast.clone_functions_only();
        if let Ok(mut names) = variables.lock() {
            *names = scope.iter().map(|(name, _, _)| name.to_owned()).collect();
        }
    };
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = editor.save_history(&history);
    session.effects.close();
    Ok(next)
}

/// Evaluates one action, prints its value, audits it. `true` when it succeeded.
fn evaluate(
    session: &Session,
    engine: &rhai::Engine,
    scope: &mut Scope<'static>,
    ast: &AST,
    script: &str,
    source: &str,
) -> bool {
    session.effects.interrupt().acknowledge();
    session.audit.reset();
    let clock = std::time::Instant::now();
    let (result, error) = match engine.eval_ast_with_scope::<Dynamic>(scope, ast) {
        Ok(v) => {
            if !v.is_unit() {
                println!("{v:?}");
                scope.set_or_push("last", v);
            }
            ("success", None)
        }
        Err(e) if matches!(*e, EvalAltResult::ErrorTerminated(..)) => {
            eprintln!("interrupted");
            ("aborted", Some("interrupted".to_owned()))
        }
        Err(e) => {
            let d = Diagnostic::from_eval(&e, script, &session.sources);
            eprintln!("{}", d.redacted(session.effects.output().redactor()));
            ("failed", Some(d.message))
        }
    };
    // Every REPL action is audited like a run: the input (secrets masked) and outcome.
    let mut record = super::audit_record(session, script, source, result, clock.elapsed());
    record.args.insert(
        "input".into(),
        session
            .effects
            .output()
            .redactor()
            .redact(source.trim_end())
            .into_owned(),
    );
    record.error = error;
    let on_hosts = !record.hosts.is_empty() && !session.effects.dry_run();
    super::write_audit(session, &record, on_hosts);
    result == "success"
}

/// `import "path" as alias;` lines of a successful action stay loaded for later lines.
fn keep_imports(engine: &mut rhai::Engine, source: &str) {
    for line in source.lines() {
        let Some(rest) = line.trim().strip_prefix("import ") else {
            continue;
        };
        let Some((path, alias)) = rest.split_once(" as ") else {
            continue;
        };
        let path = path.trim().trim_matches('"');
        let alias = alias.trim().trim_end_matches(';').trim();
        if let Ok(module) =
            engine
                .module_resolver()
                .resolve(engine, None, path, rhai::Position::NONE)
        {
            engine.register_static_module(alias, module);
        }
    }
}

/// Runs a meta-command; `Some` ends this environment's loop.
#[allow(clippy::too_many_arguments)]
fn meta(
    line: &str,
    session: &Session,
    env: &Environment,
    engine: &rhai::Engine,
    scope: &mut Scope<'static>,
    editor: &mut Editor<ReplHelper, DefaultHistory>,
    dry: &mut bool,
    project: &Project,
) -> Option<Next> {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or("");
    let rest: Vec<&str> = words.collect();
    match command {
        ":quit" | ":q" | ":exit" => return Some(Next::Quit),
        ":hosts" => {
            for h in &env.hosts {
                println!(
                    "{:<16} {:<24} {:<6} {:<10} {}",
                    h.name,
                    format!("{}:{}", h.address, h.port),
                    h.transport.as_str(),
                    h.user.as_deref().unwrap_or("-"),
                    h.roles.join(",")
                );
            }
        }
        ":audit" => {
            let all = crate::audit::read(&crate::audit::local_path());
            for r in all.iter().rev().take(10).rev() {
                println!("{} {} {} {} {}", r.ts, r.env, r.actor, r.script, r.result);
            }
        }
        ":last" => {
            let last = session.audit.last_output();
            if last.is_empty() {
                println!("the last action ran no command with output");
            }
            for (host, lines) in last {
                for l in lines {
                    println!("[{host}] {l}");
                }
            }
        }
        ":dry" => match rest.first().copied() {
            Some("on" | "off") => {
                *dry = rest[0] == "on";
                session.effects.set_dry_run(*dry);
                // Scripts read `run.dry_run`: shadow the constant with the new value.
                if let Some(run) = crate::modules::context::context_map(session).get("run") {
                    scope.push_constant("run", run.clone());
                }
                println!(
                    "dry run {}",
                    if *dry {
                        "on: nothing will be executed"
                    } else {
                        "off"
                    }
                );
            }
            _ => println!(
                "dry run is {}; `:dry on` or `:dry off`",
                if *dry { "on" } else { "off" }
            ),
        },
        ":env" => match rest.first() {
            None => println!(
                "environments: {}",
                project
                    .inventory
                    .envs
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(name) => match project.inventory.env(name) {
                Err(e) => eprintln!("{e}"),
                Ok(target) if target.protected => {
                    let answer = editor
                        .readline(&format!("`{name}` is protected. Type its name to switch: "))
                        .unwrap_or_default();
                    if answer.trim() == *name {
                        return Some(Next::Switch((*name).to_owned()));
                    }
                    println!("not switched");
                }
                Ok(_) => return Some(Next::Switch((*name).to_owned())),
            },
        },
        ":run" => match rest.split_first() {
            None => println!(
                "usage: :run SCRIPT [KEY=VALUE …] (scripts: {})",
                project.script_names().join(", ")
            ),
            Some((script, pairs)) => {
                let pairs: Vec<String> = pairs.iter().map(|p| (*p).to_owned()).collect();
                let prepared = project.resolve_script(script).and_then(|path| {
                    let args = parse_args(&pairs)?;
                    let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                        path: path.clone(),
                        source,
                    })?;
                    Ok((path, args, text))
                });
                match prepared {
                    Err(e) => eprintln!("error: {e}"),
                    Ok((path, args, text)) => {
                        let name = engine::source_name(&path, Some(project.root()));
                        // A fresh scope, like `runbook run`, with these arguments.
                        let mut run_scope = engine::scope(session);
                        let map: Map = args
                            .into_iter()
                            .map(|(k, v)| (k.into(), Dynamic::from(v)))
                            .collect();
                        run_scope.push_constant("args", map);
                        match engine::compile(engine, &run_scope, &name, &text, &session.sources) {
                            Err(d) => eprintln!("{d}"),
                            Ok(ast) => {
                                evaluate(session, engine, &mut run_scope, &ast, &name, &text);
                            }
                        }
                    }
                }
            }
        },
        ":help" => match super::doc::render(false) {
            Ok(text) => match rest.first() {
                None => println!("{META_HELP}"),
                Some(t) => {
                    let mut shown = false;
                    let mut lines = text.lines().peekable();
                    while let Some(l) = lines.next() {
                        if !l.starts_with(' ') && l.contains(t) {
                            println!("{l}");
                            while let Some(d) = lines.peek().filter(|d| d.starts_with("    ")) {
                                println!("{d}");
                                lines.next();
                            }
                            shown = true;
                        }
                    }
                    if !shown {
                        println!("nothing matches `{t}`");
                    }
                }
            },
            Err(e) => eprintln!("{e}"),
        },
        other => eprintln!("unknown meta-command `{other}`\n{META_HELP}"),
    }
    None
}
