//! The one bridge from the script thread (Rhai is synchronous) to the async runtime.
//!
//! Everything that waits for the runtime from plain code goes through [`block_on`], and
//! everything that must end early on Ctrl-C or a deadline goes through [`race`]: so a
//! wait that ignores a signal, or a second hand-written `select!` with its own idea of
//! what a signal means, has nowhere to hide. It never decides dry-run or emits events:
//! that is [`super::Effects`]' job, above it.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::interrupt::Interrupt;

/// Why a [`race`] ended before its future did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// Ctrl-C / SIGTERM that the script has not handled yet.
    Interrupted,
    /// The bound passed; `after` is how long it really waited (measured, not the bound).
    TimedOut { after: Duration },
}

/// Blocks the calling (script) thread until `fut` is done. Must not be called from a
/// runtime worker thread (the script runs on its own thread). A timer or a socket must be
/// made *inside* `fut` (an `async` block or fn): made by the caller, outside the runtime,
/// it panics for want of a reactor.
pub(crate) fn block_on<F: Future>(runtime: &Handle, fut: F) -> F::Output {
    runtime.block_on(fut)
}

/// Runs `fut` until it ends, a signal arrives on `interrupt` (one already pending ends it
/// at once: a signal between two checks is never lost), or `timeout` passes.
pub(crate) async fn race<F: Future>(
    fut: F,
    interrupt: Option<&Interrupt>,
    timeout: Option<Duration>,
) -> Result<F::Output, Stopped> {
    let started = Instant::now();
    let signal = async {
        match interrupt {
            Some(i) => i.signalled().await,
            None => std::future::pending().await,
        }
    };
    let deadline = async {
        match timeout {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        // A pending signal wins over a future that happens to be ready too.
        biased;
        () = signal => Err(Stopped::Interrupted),
        v = fut => Ok(v),
        () = deadline => Err(Stopped::TimedOut { after: started.elapsed() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::runtime;

    #[test]
    fn a_signal_ends_a_wait_at_once_even_one_that_came_first() {
        let rt = runtime();
        let i = Interrupt::new();
        let raiser = i.clone();
        let started = Instant::now();
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            raiser.raise();
        });
        let r = block_on(
            rt.handle(),
            race(std::future::pending::<()>(), Some(&i), None),
        );
        assert_eq!(r, Err(Stopped::Interrupted));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Already pending: a ready future does not win over it.
        let r = block_on(rt.handle(), race(async { 1 }, Some(&i), None));
        assert_eq!(r, Err(Stopped::Interrupted));
        i.acknowledge();
        assert_eq!(
            block_on(rt.handle(), race(async { 1 }, Some(&i), None)),
            Ok(1)
        );
    }

    #[test]
    fn a_timeout_reports_how_long_it_really_waited() {
        let rt = runtime();
        let r = block_on(
            rt.handle(),
            race(
                std::future::pending::<()>(),
                None,
                Some(Duration::from_millis(200)),
            ),
        );
        let Err(Stopped::TimedOut { after }) = r else {
            panic!("expected a timeout, got {r:?}");
        };
        assert!(after >= Duration::from_millis(200), "{after:?}");
        assert!(after < Duration::from_secs(3), "{after:?}");
    }
}
