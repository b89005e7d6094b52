//! Ctrl-C, SIGTERM and SIGHUP (a dropped terminal or bastion) during a run.
//!
//! The first signal asks the run to stop: the running command's process group is killed,
//! the script stops at its next operation, and its `on_failure` path runs. A second signal
//! interrupts that cleanup. A third exits at once — the engineer is in charge.
//! Once the run's change is complete and verified everywhere (`release::verified()`), the
//! first signal is held back: the deploy stays, the run finishes its bookkeeping.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::signal::unix::{SignalKind, signal};

use crate::error::exit;
use crate::interrupt::Interrupt;
use crate::output::{Level, Output};

/// `on_force_exit` runs before a third signal ends the process (closes SSH masters).
pub(crate) fn install(
    runtime: &Handle,
    interrupt: Interrupt,
    output: Arc<Output>,
    on_force_exit: impl Fn() + Send + 'static,
) {
    // Register the handlers now, before the script starts: a signal that arrived before
    // a lazily spawned task registered them would kill the process the default way.
    let registered = {
        let _context = runtime.enter();
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        )
    };
    runtime.spawn(async move {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = registered else {
            output.log(
                Level::Warn,
                "cannot install signal handlers; Ctrl-C will end runbook abruptly",
            );
            return;
        };
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
            if interrupt.hold() {
                output.log(
                    Level::Warn,
                    format!("{name} received after the deploy was verified everywhere: it stays; finishing the run's bookkeeping (signal again to stop now — the deploy still stays)"),
                );
                continue;
            }
            interrupt.raise();
            match interrupt.count() {
                1 => output.log(
                    Level::Warn,
                    format!("{name} received: stopping the running command, then running the script's failure path (signal again to skip it)"),
                ),
                2 => output.log(Level::Warn, format!("{name} received again: interrupting the failure path (a third signal exits immediately)")),
                _ => {
                    on_force_exit();
                    std::process::exit(exit::INTERRUPTED)
                }
            }
        }
    });
}
