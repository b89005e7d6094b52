//! `runbook repl`: the outage shell. Lines are evaluated against the environment with a
//! persistent scope, accumulated `fn` definitions and `import`ed modules that stay loaded;
//! `last` is the last result (`_` is reserved in Rhai). Multi-line input continues while
//! the parser reports an unexpected end of input. Meta-commands: `:help [name]`, `:hosts`,
//! `:env NAME`, `:run SCRIPT [k=v …]`, `:dry on|off`, `:last`, `:audit`, `:save FILE`,
//! `:quit`. Results render as one row per host, collapsed when all hosts agree.
//! On a protected environment a line's first change asks `y/N` (once per line) where it
//! happens, in the effect layer ([`crate::effects::confirm`]), not from the line's text:
//! an alias, a user function or a closure asks like a direct call; a "no" stops the line
//! before that change, and the line stays out of the history.
//! The rules of `runbook run` hold here too (`permissions::admit`): an actor not in the
//! environment's `deployers` gets a read-only session (every runbook-owned change is
//! refused and audited); `:run` checks the deployers lists, asks an emergency script's
//! reason and, on a protected environment, its name typed to confirm; `:env` starts the
//! other environment's session under the same rules.
//! Results, errors and `:last` are shown with control characters neutralised (a host's
//! output never drives the terminal). History lives in the XDG state directory; a line
//! that contains a secret value is never written to it. Every action is audited.

use crate::sync::Locked;
use rhai::{AST, Dynamic, EvalAltResult, Map, ParseErrorType, Scope};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor};
use std::fmt::Write as _;

use super::repl_helper::ReplHelper;
use super::{SessionConfig, parse_args, runtime, session};
use crate::cli::{Global, ReplArgs};
use crate::engine::{self, Diagnostic, Mode, Session};
use crate::error::Error;
use crate::inventory::Environment;
use crate::output::terminal::neutralise;
use crate::project::Project;

const META_HELP: &str = "meta-commands: :help [name]  :hosts  :env NAME  :run SCRIPT [k=v …]  :dry on|off  :last  :audit  :save FILE  :quit\nscript API: :help ssh, :help release, … (or `runbook doc`); Tab completes, Ctrl-C cancels, Ctrl-D exits";

/// What the line loop of one environment ends with.
enum Next {
    Quit,
    Switch(String),
}

pub(crate) fn run(global: &Global, args: &ReplArgs) -> Result<(), Error> {
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

/// The line editor with its helper (completion, hints, colours) and history, the
/// variables the helper completes, the prompt, and where the history is kept.
fn open_editor(
    env: &Environment,
    project: &Project,
) -> Result<(Shared, Variables, String, std::path::PathBuf), Error> {
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
    let helper = ReplHelper::new(
        &doc,
        env,
        project.script_names(),
        crate::output::color_enabled(),
    );
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
    let editor: Shared = std::sync::Arc::new(std::sync::Mutex::new(editor));
    Ok((editor, variables, prompt, history))
}

/// The buffer compiled, or `None` to read on: it is incomplete (an open bracket, the
/// end of input too early), or it does not parse (shown, and the buffer emptied).
fn compile_buffer(
    engine: &rhai::Engine,
    scope: &Scope,
    buffer: &mut String,
    session: &Session,
) -> Option<AST> {
    match engine.compile_with_scope(scope, buffer.as_str()) {
        Ok(ast) => Some(ast),
        Err(e)
            if matches!(e.err_type(), ParseErrorType::UnexpectedEOF) || open_brackets(buffer) =>
        {
            None
        }
        Err(e) => {
            session.sources.insert("repl", buffer);
            eprintln!("{}", Diagnostic::from_parse(&e, "repl", &session.sources));
            buffer.clear();
            None
        }
    }
}

/// What the helper completes as variable names, kept up to date after each line.
type Variables = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The REPL on one environment.
fn shell(
    global: &Global,
    project: &Project,
    env: &std::sync::Arc<Environment>,
    dry: &mut bool,
) -> Result<Next, Error> {
    let rt = runtime()?;
    let mut config = SessionConfig::for_env(&project.inventory, env, "repl", global.verbosity());
    config.info.dry_run = *dry;
    let session = session(&rt, config);
    // The rules of `run`: an actor who may not change this environment may only read it.
    let reader = crate::permissions::reader_only(env, &session.info.actor);
    if let Some((because, hint)) = &reader {
        eprintln!("read-only: {because}\n  hint: {hint}");
    }
    session.read_only.set(reader);
    super::install_signals(&rt, &session);
    let mut engine = engine::build(&session, Mode::Run, Some(project.root()));
    let mut scope = engine::scope(&session);
    let mut functions = AST::empty();
    let (editor, variables, prompt, history) = open_editor(env, project)?;
    eprintln!(
        "runbook repl on `{}`{}{} — :help, Ctrl-D to exit",
        env.name,
        if env.protected { " (protected)" } else { "" },
        if *dry { ", dry run" } else { "" }
    );
    let mut buffer = String::new();
    // The successful statements, for `:save`.
    let mut saved: Vec<String> = Vec::new();
    let next = loop {
        let read = lock(&editor).readline(if buffer.is_empty() {
            prompt.as_str()
        } else {
            "...> "
        });
        let line = match read {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            // A Ctrl-C that reached the process as a signal (the terminal was not in raw
            // mode) can interrupt the read itself: that is not a request to leave.
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(ReadlineError::Errno(e)) if e as i32 == libc_eintr() => continue,
            // Ctrl-D (end of input), or a terminal that cannot be read any more.
            Err(_) => break Next::Quit,
        };
        if buffer.is_empty() && line.trim_start().starts_with(':') {
            // (`:run x token=…` with a secret value stays out of the history too.)
            if !session.effects.output().redactor().contains_secret(&line) {
                let _ = lock(&editor).add_history_entry(line.trim());
            }
            if let Some(file) = line.trim().strip_prefix(":save") {
                save(file.trim(), &saved, env, &engine, &mut lock(&editor));
                continue;
            }
            let context = Shell {
                session: &session,
                env,
                engine: &engine,
                project,
            };
            match meta(&line, &context, &mut scope, &mut lock(&editor), dry) {
                Some(next) => break next,
                None => continue,
            }
        }
        buffer.push_str(&line);
        buffer.push('\n');
        let Some(ast) = compile_buffer(&engine, &scope, &mut buffer, &session) else {
            continue;
        };
        let source = std::mem::take(&mut buffer);
        session.sources.insert("repl", &source);
        let combined = functions.merge(&ast);
        // On a protected environment the line's first change asks (in the effect layer,
        // whatever called it): the question goes through this editor.
        let ask = env.protected.then(|| ask_through(&editor));
        let outcome = evaluate(
            &session,
            &engine,
            &mut scope,
            &combined,
            ("repl", &source),
            Action {
                ask,
                ..Action::default()
            },
        );
        // A refused line is not offered again by the history (nor is a secret).
        if outcome != Outcome::Declined
            && !session.effects.output().redactor().contains_secret(&source)
        {
            let _ = lock(&editor).add_history_entry(source.trim_end());
        }
        if outcome == Outcome::Success {
            keep_imports(&mut engine, &source);
            saved.push(source.trim_end().to_owned());
        }
        functions += ast.clone_functions_only();
        if let Ok(mut names) = variables.lock() {
            *names = scope.iter().map(|(name, _, _)| name.to_owned()).collect();
        }
    };
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = lock(&editor).save_history(&history);
    // Leaving (or switching) releases this session's locks, then closes the connections.
    session.locks.release_all();
    session.effects.close();
    Ok(next)
}

/// EINTR (the same number in every errno enum).
fn libc_eintr() -> i32 {
    nix::errno::Errno::EINTR as i32
}

/// How an action ended, as far as the line loop cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    /// A change was refused at the y/N question: nothing changed.
    Declined,
    Failed,
}

/// The editor, shared with the question a change asks while a line runs.
type Shared = std::sync::Arc<std::sync::Mutex<Editor<ReplHelper, DefaultHistory>>>;

fn lock(editor: &Shared) -> std::sync::MutexGuard<'_, Editor<ReplHelper, DefaultHistory>> {
    editor.locked()
}

/// The y/N question, put through the REPL's editor; only a yes lets the change run
/// (no answer, end of input or Ctrl-C is a no).
fn ask_through(editor: &Shared) -> crate::effects::confirm::Ask {
    let editor = editor.clone();
    Box::new(move |question| {
        let answer = lock(&editor).readline(question).unwrap_or_default();
        matches!(answer.trim(), "y" | "Y" | "yes")
    })
}

/// What an action brings besides its code: a `:run`'s arguments and emergency reason
/// (audited, secrets masked), and the question its first change asks (a line on a
/// protected environment).
#[derive(Default)]
struct Action<'a> {
    reason: Option<&'a str>,
    args: std::collections::BTreeMap<String, String>,
    ask: Option<crate::effects::confirm::Ask>,
}

/// Evaluates one action, prints its value and audits it.
fn evaluate(
    session: &Session,
    engine: &rhai::Engine,
    scope: &mut Scope<'static>,
    ast: &AST,
    (script, source): (&str, &str),
    action: Action,
) -> Outcome {
    let Action { reason, args, ask } = action;
    session.effects.interrupt().acknowledge();
    session.audit.reset();
    session.read_only.take_refusal();
    let clock = std::time::Instant::now();
    let env_name = session.env.as_ref().map_or("", |e| e.name.as_str());
    if let Some(ask) = ask {
        session.effects.confirm().install(env_name, ask);
    }
    let evaluated = engine.eval_ast_with_scope::<Dynamic>(scope, ast);
    let declined = session.effects.confirm().remove();
    let was_declined = declined.is_some();
    let refusal = session.read_only.take_refusal();
    let (result, error) = match evaluated {
        // A change the person did not confirm: the line stopped before it.
        _ if declined.is_some() => {
            let message = declined.unwrap_or_default();
            println!("{message}; nothing was changed by it");
            ("refused", Some(message))
        }
        // A change refused by the read-only gate (it stops the action like an interrupt).
        Err(_) if refusal.is_some() => {
            let message = refusal.unwrap_or_default();
            eprintln!("error: {message}");
            ("refused", Some(message))
        }
        Ok(v) => {
            if !v.is_unit() {
                // A value read with secret() is shown masked, like in any other output.
                let shown = render(engine, &v);
                let shown = session.effects.output().redactor().redact(&shown);
                println!("{}", neutralise(&shown));
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
            let shown = d.redacted(session.effects.output().redactor()).to_string();
            eprintln!("{}", neutralise(&shown));
            ("failed", Some(d.message))
        }
    };
    // Every REPL action is audited like a run: the input, a `:run`'s arguments and reason
    // (secrets masked), and the outcome.
    let redactor = session.effects.output().redactor();
    let mut record = super::audit_record(session, script, source, result, clock.elapsed());
    for (key, value) in &args {
        record
            .args
            .insert(key.clone(), redactor.redact(value).into_owned());
    }
    record.args.insert(
        "input".into(),
        redactor.redact(source.trim_end()).into_owned(),
    );
    record.error = error;
    if let Some(reason) = reason {
        record.reason = Some(redactor.redact(reason).into_owned());
    }
    let on_hosts = !record.hosts.is_empty() && !session.effects.dry_run();
    super::write_audit(session, &record, on_hosts);
    match result {
        _ if was_declined => Outcome::Declined,
        "success" => Outcome::Success,
        _ => Outcome::Failed,
    }
}

/// Whether brackets are still open (outside strings and comments): keep reading lines.
fn open_brackets(text: &str) -> bool {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '`' | '\'') => quote = Some(c),
            (None, '/') if chars.peek() == Some(&'/') => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            // Inside a quote nothing counts but its closing mark; outside, other characters.
            _ => {}
        }
    }
    depth > 0 || quote.is_some()
}

/// The columns a record table shows first, in this order; other keys follow by name.
const RECORD_COLUMNS: &[&str] = &[
    "host",
    "name",
    "live",
    "state",
    "bad",
    "ref",
    "commit",
    "release",
    "by",
    "created_at",
];

/// An array of maps whose values are all plain (strings, numbers, booleans, `()`), as an
/// aligned table with one column per key — `release::list(h)` is one row per release.
fn records(v: &Dynamic) -> Option<String> {
    let items = v.clone().try_cast::<rhai::Array>()?;
    let maps: Vec<Map> = items
        .into_iter()
        .map(rhai::Dynamic::try_cast::<Map>)
        .collect::<Option<_>>()?;
    let plain = |d: &Dynamic| {
        d.is_string() || d.is_int() || d.is_bool() || d.is_float() || d.is_unit() || d.is_char()
    };
    if maps.is_empty() || !maps.iter().all(|m| !m.is_empty() && m.values().all(plain)) {
        return None;
    }
    let mut keys: Vec<String> = Vec::new();
    for m in &maps {
        for k in m.keys() {
            if !keys.iter().any(|x| x == k.as_str()) {
                keys.push(k.to_string());
            }
        }
    }
    let rank = |k: &str| {
        RECORD_COLUMNS
            .iter()
            .position(|c| *c == k)
            .unwrap_or(RECORD_COLUMNS.len())
    };
    keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    let cell = |d: Option<&Dynamic>| match d {
        None => String::new(),
        Some(d) if d.is_unit() => "-".to_owned(),
        Some(d) if d.is_bool() => {
            if d.as_bool().unwrap_or(false) {
                "yes".to_owned()
            } else {
                String::new()
            }
        }
        Some(d) => d.to_string().replace(['\n', '\r'], " "),
    };
    let mut rows: Vec<Vec<String>> = vec![keys.iter().map(|k| k.to_uppercase()).collect()];
    for m in &maps {
        rows.push(keys.iter().map(|k| cell(m.get(k.as_str()))).collect());
    }
    let mut widths = vec![0; keys.len()];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    Some(
        rows.iter()
            .map(|r| {
                r.iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// A command result map (`host`, `code`, `stdout` …), as the fields a table row needs.
fn row(v: &Dynamic) -> Option<(String, i64, i64, String)> {
    let m = v.clone().try_cast::<Map>()?;
    let host = m.get("host")?.to_string();
    let code = m.get("code")?.as_int().ok()?;
    let ms = m
        .get("duration_ms")
        .and_then(|d| d.as_int().ok())
        .unwrap_or(0);
    let out = m
        .get("stdout")
        .map(ToString::to_string)
        .filter(|s| !s.trim().is_empty())
        .or_else(|| m.get("stderr").map(ToString::to_string))
        .or_else(|| m.get("error").map(ToString::to_string))
        .unwrap_or_default();
    Some((host, code, ms, out.trim_end().to_owned()))
}

/// Results render for people: one row per host (host, exit code, duration, output),
/// collapsed when every host said the same thing; a list of records (`release::list`,
/// `backup::list`) as a table; anything else as Rhai's `to_debug` shows it (host sets by
/// their names).
fn render(engine: &rhai::Engine, v: &Dynamic) -> String {
    let rows: Option<Vec<_>> = match v.clone().try_cast::<rhai::Array>() {
        Some(items) if !items.is_empty() => items.iter().map(row).collect(),
        Some(_) => None,
        None => row(v).map(|r| vec![r]),
    };
    let Some(rows) = rows else {
        if let Some(table) = records(v) {
            return table;
        }
        // Rhai's own `to_debug`, which calls the one registered for each custom type
        // (also inside arrays and maps); Dynamic's Debug would show Rust type names.
        return rhai::FnPtr::new("to_debug")
            .ok()
            .and_then(|f| {
                f.call::<String>(engine, &rhai::AST::empty(), (v.clone(),))
                    .ok()
            })
            .unwrap_or_else(|| format!("{v:?}"));
    };
    let first = &rows[0];
    if rows.len() > 1 && rows.iter().all(|r| r.1 == first.1 && r.3 == first.3) {
        let verdict = if first.1 == 0 {
            "ok".to_owned()
        } else {
            format!("exit {}", first.1)
        };
        let line = first.3.lines().next().unwrap_or("");
        return format!(
            "{}..{}: {verdict}, same output: {line}",
            first.0,
            rows[rows.len() - 1].0
        );
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4);
    rows.iter()
        .map(|(host, code, ms, out)| {
            let mut lines = out.lines();
            let mut s = format!(
                "{host:<width$}  exit {code:<3} {ms:>6} ms  {}",
                lines.next().unwrap_or("")
            );
            for l in lines {
                let _ = write!(s, "\n{:<width$}  {:>21}{l}", "", "");
            }
            s
        })
        .collect::<Vec<_>>()
        .join("\n")
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

/// `:save FILE`: the session's successful statements as a script to review and commit
/// (one that `runbook check` accepts). An existing file is replaced only after a yes.
fn save(
    file: &str,
    saved: &[String],
    env: &Environment,
    engine: &rhai::Engine,
    editor: &mut Editor<ReplHelper, DefaultHistory>,
) {
    if file.is_empty() {
        println!("usage: :save FILE (e.g. scripts/fix-queue.rhai)");
        return;
    }
    let path = std::path::Path::new(file);
    if path.exists() {
        let answer = editor
            .readline(&format!("{file} exists. Replace it? [y/N] "))
            .unwrap_or_default();
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("not saved: {file} is kept as it was (`:save` another name)");
            return;
        }
    }
    let text = format!(
        "// Saved from `runbook repl` on `{}` at {}: review before committing.\n{}\n",
        env.name,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        saved
            .iter()
            .map(|stmt| terminated(engine, stmt))
            .collect::<Vec<_>>()
            .join("\n")
    );
    if let Err(e) = engine.compile(&text) {
        eprintln!("warning: the saved statements do not form a valid script ({e}): review {file}");
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(path, text) {
        Ok(()) => println!("saved {} statements to {file}", saved.len()),
        Err(e) => eprintln!("cannot write {file}: {e}"),
    }
}

/// A REPL statement as a script statement: a line may leave out the final `;` a script
/// needs before the next statement (`let m = #{…}` and closures end in `}` too). The parser
/// decides: as typed when a statement can follow it, else with a `;` — on a line of its
/// own when the last line ends in a comment, which would swallow it.
fn terminated(engine: &rhai::Engine, stmt: &str) -> String {
    let stmt = stmt.trim_end();
    let parses = |s: &str| engine.compile(format!("{s}\n0")).is_ok();
    if parses(stmt) {
        return stmt.to_owned();
    }
    if stmt.lines().last().is_some_and(|l| l.contains("//")) {
        format!("{stmt}\n;")
    } else {
        format!("{stmt};")
    }
}

/// `:run`'s admission, the same decision as `runbook run` ([`crate::permissions::admit`]):
/// the deployers lists first, then an emergency's written reason (asked here, as the REPL
/// has no `--reason`), then, on a protected environment, its name typed to confirm.
fn admit_run(
    session: &Session,
    env: &Environment,
    name: &str,
    text: &str,
    editor: &mut Editor<ReplHelper, DefaultHistory>,
    dry: bool,
) -> Result<(crate::permissions::ScriptKind, Option<String>), Error> {
    let request = |reason, dry_run| crate::permissions::Request {
        env,
        script: name,
        text,
        actor: &session.info.actor,
        actor_flag: false,
        reason,
        dry_run,
    };
    // Who may, before anyone is asked for anything.
    let kind = crate::permissions::admit(&request(None, true))?;
    let reason = if kind == crate::permissions::ScriptKind::Emergency && !dry {
        let answer = editor
            .readline(&format!(
                "{name} is an emergency script. Why (recorded in the audit log)? "
            ))
            .unwrap_or_default();
        Some(answer.trim().to_owned()).filter(|r| !r.is_empty())
    } else {
        None
    };
    let kind = crate::permissions::admit(&request(reason.as_deref(), dry))?;
    if crate::permissions::needs_confirmation(env, dry, false) {
        let answer = editor
            .readline(&format!(
                "`{}` is a protected environment. Type its name to run {name} on it: ",
                env.name
            ))
            .unwrap_or_default();
        if answer.trim() != env.name {
            return Err(Error::Declined {
                env: env.name.clone(),
            });
        }
    }
    Ok((kind, reason))
}

/// What a meta-command works on: the environment's session, its engine, the project.
struct Shell<'a> {
    session: &'a Session,
    env: &'a Environment,
    engine: &'a rhai::Engine,
    project: &'a Project,
}

/// Runs a meta-command; `Some` ends this environment's loop.
fn meta(
    line: &str,
    shell: &Shell,
    scope: &mut Scope<'static>,
    editor: &mut Editor<ReplHelper, DefaultHistory>,
    dry: &mut bool,
) -> Option<Next> {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or("");
    let rest: Vec<&str> = words.collect();
    match command {
        ":quit" | ":q" | ":exit" => return Some(Next::Quit),
        ":hosts" => show_hosts(shell.env),
        ":audit" => show_audit(),
        ":last" => show_last(shell.session),
        ":dry" => set_dry(shell.session, scope, dry, rest.first().copied()),
        ":env" => return switch_env(shell.project, editor, rest.first().copied()),
        ":run" => match rest.split_first() {
            None => println!(
                "usage: :run SCRIPT [KEY=VALUE …] (scripts: {})",
                shell.project.script_names().join(", ")
            ),
            Some((script, pairs)) => run_script(shell, editor, *dry, script, pairs),
        },
        ":help" => help(rest.first().copied()),
        other => eprintln!("unknown meta-command `{other}`\n{META_HELP}"),
    }
    None
}

/// `:hosts`: one line per host with its address, transport, user and roles.
fn show_hosts(env: &Environment) {
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

/// `:audit`: the last ten records of this machine's audit log.
fn show_audit() {
    let all = crate::audit::read(&crate::audit::local_path());
    for r in all.iter().rev().take(10).rev() {
        println!("{} {} {} {} {}", r.ts, r.env, r.actor, r.script, r.result);
    }
}

/// `:last`: the last action's output per host, secrets masked, control characters
/// neutralised.
fn show_last(session: &Session) {
    let last = session.audit.last_output();
    if last.is_empty() {
        println!("the last action ran no command with output");
    }
    for (host, lines) in last {
        for l in lines {
            let l = session.effects.output().redactor().redact(&l).into_owned();
            println!("[{host}] {}", neutralise(&l));
        }
    }
}

/// `:dry on|off` turns dry run on or off (and `run.dry_run` with it); else says which.
fn set_dry(session: &Session, scope: &mut Scope<'static>, dry: &mut bool, to: Option<&str>) {
    let Some(to @ ("on" | "off")) = to else {
        println!(
            "dry run is {}; `:dry on` or `:dry off`",
            if *dry { "on" } else { "off" }
        );
        return;
    };
    *dry = to == "on";
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

/// `:env NAME` switches to that environment (a protected one only with its name typed);
/// `:env` alone lists them.
fn switch_env(
    project: &Project,
    editor: &mut Editor<ReplHelper, DefaultHistory>,
    name: Option<&str>,
) -> Option<Next> {
    let Some(name) = name else {
        println!(
            "environments: {}",
            project
                .inventory
                .envs
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        return None;
    };
    match project.inventory.env(name) {
        Err(e) => eprintln!("{e}"),
        Ok(target) if target.protected => {
            let answer = editor
                .readline(&format!("`{name}` is protected. Type its name to switch: "))
                .unwrap_or_default();
            if answer.trim() == name {
                return Some(Next::Switch(name.to_owned()));
            }
            println!("not switched");
        }
        Ok(_) => return Some(Next::Switch(name.to_owned())),
    }
    None
}

/// `:run SCRIPT k=v …`: the script with the checks of `runbook run`, in a fresh scope
/// with these arguments; errors are printed, the REPL goes on.
fn run_script(
    shell: &Shell,
    editor: &mut Editor<ReplHelper, DefaultHistory>,
    dry: bool,
    script: &str,
    pairs: &[&str],
) {
    let Shell {
        session,
        env,
        engine,
        project,
    } = *shell;
    let (path, args, text) = match read_script(project, script, pairs) {
        Ok(read) => read,
        Err(e) => return eprintln!("error: {e}"),
    };
    let name = engine::source_name(&path, Some(project.root()));
    // The checks of `runbook run`: who may, an emergency's reason, and a protected
    // environment's confirmation.
    let (kind, reason) = match admit_run(session, env, &name, &text, editor, dry) {
        Ok(admitted) => admitted,
        Err(refused) => {
            eprintln!("error: {refused}");
            super::audit_refusal(session, &name, &text, &refused);
            return;
        }
    };
    let mut run_scope = script_scope(session, &args, reason.as_deref());
    // A read-only script is held to it for as long as it runs.
    let before = (kind == crate::permissions::ScriptKind::ReadOnly).then(|| {
        session
            .read_only
            .set(Some(crate::permissions::declared(&name)))
    });
    match engine::compile(engine, &run_scope, &name, &text, &session.sources) {
        Err(d) => eprintln!("{d}"),
        Ok(ast) => {
            evaluate(
                session,
                engine,
                &mut run_scope,
                &ast,
                (&name, &text),
                // Confirmed by its name typed above: nothing asks.
                Action {
                    reason: reason.as_deref(),
                    args,
                    ask: None,
                },
            );
        }
    }
    if let Some(before) = before {
        session.read_only.set(before);
    }
}

/// The script `:run` names, its `k=v` arguments and its text.
fn read_script(
    project: &Project,
    script: &str,
    pairs: &[&str],
) -> Result<
    (
        std::path::PathBuf,
        std::collections::BTreeMap<String, String>,
        String,
    ),
    Error,
> {
    let pairs: Vec<String> = pairs.iter().map(|p| (*p).to_owned()).collect();
    let path = project.resolve_script(script)?;
    let args = parse_args(&pairs)?;
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    Ok((path, args, text))
}

/// A fresh scope, like `runbook run`, with `args` and the emergency's `reason` in `run`.
fn script_scope(
    session: &Session,
    args: &std::collections::BTreeMap<String, String>,
    reason: Option<&str>,
) -> Scope<'static> {
    let mut run_scope = engine::scope(session);
    let map: Map = args
        .iter()
        .map(|(k, v)| (k.into(), Dynamic::from(v.clone())))
        .collect();
    run_scope.push_constant("args", map);
    if let Some(reason) = reason
        && let Some(run) = crate::modules::context::context_map(session).get("run")
        && let Some(mut run) = run.clone().try_cast::<Map>()
    {
        run.insert("reason".into(), reason.to_owned().into());
        run_scope.push_constant("run", run);
    }
    run_scope
}

/// `:help`: the meta-commands, or with a word the API entries whose line contains it.
fn help(word: Option<&str>) {
    let text = match super::doc::render(false) {
        Ok(text) => text,
        Err(e) => return eprintln!("{e}"),
    };
    let Some(t) = word else {
        return println!("{META_HELP}");
    };
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
