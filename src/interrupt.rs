//! Ctrl-C / SIGTERM as a value the whole run can observe.
//!
//! A signal never kills the process outright: it increments a counter. Running commands
//! watch the counter and kill their child; the script watches it (through the engine's
//! progress hook) and stops; the script's `on_failure` path then runs with the current
//! count as its new baseline, so cleanup (releasing a lock, switching back) can still run
//! commands — and a second signal interrupts that cleanup too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub(crate) struct Interrupt {
    tx: Arc<watch::Sender<u32>>,
    /// Signals at or below this count have already been handled by the script.
    baseline: Arc<AtomicU32>,
    /// The run's change is complete and verified: a signal no longer undoes it.
    settled: Arc<AtomicBool>,
    /// Signals that arrived once settled and were held back (not raised).
    held: Arc<AtomicU32>,
}

impl Default for Interrupt {
    fn default() -> Self {
        Interrupt::new()
    }
}

impl Interrupt {
    pub(crate) fn new() -> Interrupt {
        let (tx, _rx) = watch::channel(0);
        Interrupt {
            tx: Arc::new(tx),
            baseline: Arc::new(AtomicU32::new(0)),
            settled: Arc::new(AtomicBool::new(false)),
            held: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The run's change is complete and verified everywhere: from now on the first
    /// signal is held back (the run finishes its bookkeeping), and even a raised one
    /// must not undo the change.
    pub(crate) fn settle(&self) {
        self.settled.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }

    /// Holds back a signal that arrived once settled, when it is the first: returns
    /// whether it was held (else it should be raised).
    pub(crate) fn hold(&self) -> bool {
        self.is_settled()
            && self
                .held
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// How many signals were held back.
    pub(crate) fn held(&self) -> u32 {
        self.held.load(Ordering::SeqCst)
    }

    /// Records one signal.
    pub(crate) fn raise(&self) {
        self.tx.send_modify(|n| *n += 1);
    }

    pub(crate) fn count(&self) -> u32 {
        *self.tx.borrow()
    }

    /// Has a signal arrived that the script has not yet handled?
    pub(crate) fn pending(&self) -> bool {
        self.count() > self.baseline.load(Ordering::SeqCst)
    }

    /// Was any signal received during this run?
    pub(crate) fn ever(&self) -> bool {
        self.count() > 0
    }

    /// Marks every signal so far as handled (the failure path is about to run).
    pub(crate) fn acknowledge(&self) {
        self.baseline.store(self.count(), Ordering::SeqCst);
    }

    /// Resolves as soon as there is a signal the script has not handled yet — at once if
    /// one already arrived (a signal between two checks is never lost).
    pub(crate) async fn signalled(&self) {
        self.after(self.baseline.load(Ordering::SeqCst)).await;
    }

    /// Resolves when a signal arrives after `since` (a value of [`Interrupt::count`]).
    pub(crate) async fn after(&self, since: u32) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so `wait_for` only ends on a new signal.
        let _ = rx.wait_for(|n| *n > since).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_signals_are_no_longer_pending() {
        let i = Interrupt::new();
        assert!(!i.pending());
        i.raise();
        assert!(i.pending() && i.ever());
        i.acknowledge();
        assert!(!i.pending());
        i.raise();
        assert!(i.pending());
    }

    #[tokio::test]
    async fn a_signal_that_came_before_the_wait_is_not_lost() {
        let i = Interrupt::new();
        i.raise();
        tokio::time::timeout(std::time::Duration::from_secs(5), i.signalled())
            .await
            .expect("an unhandled signal wakes the waiter at once");
        i.acknowledge();
        let waiter = {
            let i = i.clone();
            tokio::spawn(async move { i.signalled().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a handled signal must not wake it");
        i.raise();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }

    #[tokio::test]
    async fn after_wakes_on_a_new_signal_only() {
        let i = Interrupt::new();
        i.raise();
        let seen = i.count();
        let waiter = {
            let i = i.clone();
            tokio::spawn(async move { i.after(seen).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        i.raise();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }
}
