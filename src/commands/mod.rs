//! One file per CLI command; shared set-up (runtime, output, session) lives here.

pub mod audit;
pub mod check;
pub mod doc;
pub mod hosts;
pub mod init;
pub mod repl;
pub mod run;
pub mod unlock;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::effects::Effects;
use crate::effects::interrupt::Interrupt;
use crate::effects::redact::Redactor;
use crate::engine::{RunInfo, Session, sources::SourceMap};
use crate::error::Error;
use crate::inventory::{Environment, Inventory};
use crate::output::{Human, JsonLines, Output, Verbosity, color_enabled};

pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

pub struct SessionConfig {
    pub inventory: Option<Arc<Inventory>>,
    pub env: Option<Arc<Environment>>,
    pub info: RunInfo,
    pub verbosity: Verbosity,
    pub json: bool,
}

/// Output with its sinks, effects, and the session a script sees.
pub fn session(rt: &tokio::runtime::Runtime, config: SessionConfig) -> Arc<Session> {
    let redactor = Arc::new(Redactor::new());
    if let Some(inv) = &config.inventory {
        // Every secret the inventory names is masked from the start, even if a script
        // only ever prints it through a shell.
        for name in inv.secret_names() {
            if let Ok(value) = std::env::var(&name) {
                redactor.add(&value);
            }
        }
    }
    let github = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    if github {
        redactor.set_hook(crate::output::github::add_mask);
    }
    let mut output = Output::new(config.info.id.clone(), redactor).with_sink(Human::new(
        config.verbosity,
        color_enabled(),
        !config.json,
    ));
    if config.json {
        output = output.with_sink(JsonLines);
    }
    if github {
        output = output.with_sink(crate::output::github::GitHub::new());
    }
    let audit = crate::audit::Collector::default();
    output = output.with_sink(audit.clone());
    let output = Arc::new(output);
    let max = config.env.as_ref().map_or(32, |e| e.max_concurrency);
    let effects = Effects::new(
        rt.handle().clone(),
        output,
        Interrupt::new(),
        config.info.dry_run,
        max,
    );
    let effects = Arc::new(effects);
    Arc::new(Session {
        locks: crate::lock::Locks::new(effects.clone(), config.info.id.clone()),
        effects,
        inventory: config.inventory,
        env: config.env,
        info: config.info,
        sources: Arc::new(SourceMap::default()),
        activations: std::sync::Mutex::new(Vec::new()),
        switches: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        audit,
    })
}

/// Who is running this: the CI actor, else the login user.
pub fn actor() -> String {
    ["GITHUB_ACTOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// A run id that sorts by time and is unique enough per machine.
pub fn run_id() -> String {
    format!(
        "{}-{:x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
        std::process::id()
    )
}

/// `KEY=VALUE` pairs into a map; keys must be identifiers.
pub fn parse_args(pairs: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::BadArg { arg: pair.clone() });
        };
        let valid = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::BadArg { arg: pair.clone() });
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_arguments_are_key_value_strings() {
        let args = parse_args(&["ref=v1.2.3".into(), "note=a=b".into()]).unwrap();
        assert_eq!(args["ref"], "v1.2.3");
        assert_eq!(args["note"], "a=b");
        assert!(parse_args(&["noequals".into()]).is_err());
        assert!(parse_args(&["1x=y".into()]).is_err());
        assert!(parse_args(&["=y".into()]).is_err());
    }
}
