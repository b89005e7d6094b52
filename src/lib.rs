//! runbook: deployment runbooks as Rhai scripts.
//!
//! The binary is a thin wrapper around [`run`]; everything lives in this library.

pub(crate) mod audit;
pub mod backup;
pub(crate) mod cli;
pub(crate) mod commands;
pub(crate) mod diagnostic;
pub(crate) mod effects;
pub(crate) mod engine;
pub(crate) mod envfile;
pub(crate) mod error;
pub(crate) mod gzip;
pub(crate) mod health;
pub(crate) mod interrupt;
pub(crate) mod inventory;
pub(crate) mod judge;
pub(crate) mod lock;
pub(crate) mod metrics;
pub(crate) mod modules;
pub(crate) mod notify;
pub(crate) mod num;
pub(crate) mod origin;
pub(crate) mod output;
pub(crate) mod permissions;
pub(crate) mod project;
pub(crate) mod quote;
pub(crate) mod recovery;
pub(crate) mod redact;
pub(crate) mod release;
pub(crate) mod rollout;
pub(crate) mod schema_risk;
pub(crate) mod session;
pub(crate) mod signal;
pub(crate) mod sources;
pub(crate) mod status;
pub(crate) mod steps;
pub(crate) mod sync;
#[cfg(test)]
mod testing;
pub(crate) mod tls;
pub(crate) mod traffic;
pub(crate) mod transport;

use std::ffi::OsString;

use clap::Parser;

pub use error::Error;

/// Parses `args` (including the program name), runs the command, and returns the exit
/// status. Errors are rendered here, once.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                error::exit::USAGE
            } else {
                error::exit::SUCCESS
            };
        }
    };
    init_tracing(cli.global.verbose);
    match commands::dispatch(cli) {
        Ok(()) => error::exit::SUCCESS,
        Err(e) => {
            // An error can carry a host's stderr: shown, never obeyed by the terminal.
            let text = match &e {
                Error::Script(d)
                | Error::Interrupted {
                    diagnostic: Some(d),
                } => d.to_string(),
                other => format!("error: {other}"),
            };
            eprintln!("{}", output::terminal::neutralise(&text));
            e.code()
        }
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 | 1 => "warn",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
