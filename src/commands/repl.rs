//! `runbook repl`: evaluate lines against the environment with a persistent scope and
//! accumulated function definitions; `last` is the last result (`_` is reserved in Rhai). Multi-line input continues
//! while the parser reports an unexpected end of input. Meta-commands: `:help [name]`,
//! `:hosts`, `:audit`, `:quit`. History lives in the XDG state directory; a line that
//! contains a secret value is never written to it.

use rhai::{AST, EvalAltResult, ParseErrorType};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor};

use super::repl_helper::ReplHelper;

use super::{SessionConfig, actor, run_id, runtime, session};
use crate::cli::{Global, ReplArgs};
use crate::engine::{self, Diagnostic, Mode, RunInfo};
use crate::error::Error;
use crate::project::Project;

pub fn run(global: &Global, args: &ReplArgs) -> Result<(), Error> {
    let project = Project::load(global.config.as_deref())?;
    let env = project.env(args.env.as_deref())?;
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
                dry_run: args.dry_run,
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
    let engine = engine::build(&session, Mode::Run, Some(project.root()));
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
    let helper = ReplHelper::new(&doc, &env, crate::output::color_enabled());
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
    let mut buffer = String::new();
    eprintln!(
        "runbook repl on `{}`{} — :help, Ctrl-D to exit",
        env.name,
        if env.protected { " (protected)" } else { "" }
    );
    loop {
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
            Err(_) => break,
        };
        if buffer.is_empty() && line.trim_start().starts_with(':') {
            let _ = editor.add_history_entry(line.trim());
            if meta(&line, &env) {
                break;
            }
            continue;
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
        session.sources.insert("repl", &buffer);
        buffer.clear();
        let combined = functions.merge(&ast);
        session.effects.interrupt().acknowledge();
        session.audit.reset();
        let clock = std::time::Instant::now();
        let (result, error) =
            match engine.eval_ast_with_scope::<rhai::Dynamic>(&mut scope, &combined) {
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
                    let d = Diagnostic::from_eval(&e, "repl", &session.sources);
                    eprintln!("{d}");
                    ("failed", Some(d.message))
                }
            };
        // Every REPL action is audited like a run: the input (secrets masked) and outcome.
        let source = session
            .sources
            .get("repl")
            .map(|s| s.to_string())
            .unwrap_or_default();
        let mut record = super::audit_record(&session, "repl", &source, result, clock.elapsed());
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
        super::write_audit(&session, &record, !record.hosts.is_empty() && !args.dry_run);
        functions += ast.clone_functions_only();
        if let Ok(mut names) = variables.lock() {
            *names = scope.iter().map(|(name, _, _)| name.to_owned()).collect();
        }
    }
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = editor.save_history(&history);
    session.effects.close();
    Ok(())
}

/// Runs a meta-command; `true` means quit.
fn meta(line: &str, env: &crate::inventory::Environment) -> bool {
    let mut words = line.split_whitespace();
    match (words.next().unwrap_or(""), words.next()) {
        (":quit" | ":q" | ":exit", _) => return true,
        (":hosts", _) => {
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
        (":audit", _) => {
            let all = crate::audit::read(&crate::audit::local_path());
            for r in all.iter().rev().take(10).rev() {
                println!("{} {} {} {} {}", r.ts, r.env, r.actor, r.script, r.result);
            }
        }
        (":help", topic) => match super::doc::render(false) {
            Ok(text) => match topic {
                None => println!(
                    "meta-commands: :help [name]  :hosts  :audit  :quit\nscript API: :help ssh, :help release, … (or `runbook doc`)"
                ),
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
        (other, _) => {
            eprintln!("unknown meta-command `{other}` (:help, :hosts, :audit, :quit)");
        }
    }
    false
}
