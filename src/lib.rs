//! runbook: deployment runbooks as Rhai scripts.
//!
//! The binary is a thin wrapper around [`run`]; everything lives in this library.

pub mod audit;
pub mod backup;
pub mod cli;
pub mod commands;
pub mod diagnostic;
pub mod effects;
pub mod engine;
pub mod envfile;
pub mod error;
pub mod gzip;
pub mod health;
pub mod interrupt;
pub mod inventory;
pub mod judge;
pub mod lock;
pub mod metrics;
pub mod modules;
pub mod notify;
pub mod origin;
pub mod output;
pub mod permissions;
pub mod project;
pub mod quote;
pub mod recovery;
pub mod redact;
pub mod release;
pub mod rollout;
pub mod schema_risk;
pub mod session;
pub mod signal;
pub mod sources;
pub mod status;
pub mod steps;
pub mod sync;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod traffic;
pub mod transport;

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
                Error::Script(d) => d.to_string(),
                Error::Interrupted {
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
