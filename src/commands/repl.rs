//! `runbook repl` (minimal): evaluate lines against the environment with a persistent
//! scope and accumulated function definitions. Multi-line input continues while the
//! parser reports an unexpected end of input.

use rhai::{AST, EvalAltResult, ParseErrorType};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

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
    let Ok(mut editor) = DefaultEditor::new() else {
        return Err(Error::Runtime(std::io::Error::other(
            "cannot open the line editor",
        )));
    };
    let prompt = format!("{}> ", env.name);
    let mut buffer = String::new();
    eprintln!("runbook repl on `{}` — Ctrl-D to exit", env.name);
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
        let _ = editor.add_history_entry(buffer.trim_end());
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
    }
    session.effects.close();
    Ok(())
}
