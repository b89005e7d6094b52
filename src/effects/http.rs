//! HTTP requests (and mail) through the effect layer, like commands.
//!
//! A health probe, a webhook, a Pushgateway push or an SMTP send is an effect just as a
//! command is: this is the one place that decides what a dry run does with it, bounds
//! how long it may take, ends it on Ctrl-C and says so in one shape. The cores
//! (`crate::health`, `crate::notify`, `crate::metrics`) only speak HTTP; the adapters
//! only convert values. Nothing here knows a URL or a payload format.
//!
//! - A *read* (a health check, a PromQL query) runs in a dry run too: the plan is built
//!   on what it reads, as with a command marked `read`.
//! - A *send* (a notification, a push) is shown in a dry run — one `notification`
//!   event, `CHANNEL: would send PREVIEW`, redacted by the output layer — and nothing
//!   leaves the machine.

use std::future::Future;
use std::time::Duration;

use super::Effects;
use super::bridge::{self, Stopped};
use crate::output::{Event, Kind};

/// How long past its stated bound an exchange may run before the gate ends it: a core's
/// own, finer timeout (per attempt) fires first and says more.
pub(crate) const GRACE: Duration = Duration::from_secs(1);

/// An exchange that did not end by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{channel}: interrupted")]
    Interrupted { channel: String },
    /// `after` is the time it really ran, measured here.
    #[error("{channel}: no answer within {}", humantime::format_duration(*after))]
    TimedOut { channel: String, after: Duration },
}

impl HttpError {
    pub(crate) fn is_interrupt(&self) -> bool {
        matches!(self, HttpError::Interrupted { .. })
    }
}

impl Effects {
    /// A request that only reads (a health check, a query): it runs in a dry run too.
    /// `bound` is the longest the exchange may take, retries included (`None`: as long as
    /// it takes; the core's own timeouts still apply).
    pub(crate) fn http_read<F: Future>(
        &self,
        channel: &str,
        bound: Option<Duration>,
        exchange: F,
    ) -> Result<F::Output, HttpError> {
        self.exchange(channel, bound, exchange)
    }

    /// A request that changes something elsewhere (a notification, a push). In a dry run
    /// it is shown — `preview`, redacted — and not sent: `Ok(None)`.
    pub(crate) fn http_send<F: Future>(
        &self,
        channel: &str,
        preview: &str,
        bound: Option<Duration>,
        exchange: F,
    ) -> Result<Option<F::Output>, HttpError> {
        if self.dry_run() {
            self.output.emit(
                Event::new(Kind::Notification).message(format!("{channel}: would send {preview}")),
            );
            return Ok(None);
        }
        self.exchange(channel, bound, exchange).map(Some)
    }

    /// Blocks on the exchange; ends it on Ctrl-C or once `bound` (plus [`GRACE`]) passes.
    fn exchange<F: Future>(
        &self,
        channel: &str,
        bound: Option<Duration>,
        exchange: F,
    ) -> Result<F::Output, HttpError> {
        let limit = bound.map(|b| b.saturating_add(GRACE));
        let raced = bridge::race(exchange, Some(&self.interrupt), limit);
        bridge::block_on(&self.runtime, raced).map_err(|stop| match stop {
            Stopped::Interrupted => HttpError::Interrupted {
                channel: channel.to_owned(),
            },
            Stopped::TimedOut { after } => HttpError::TimedOut {
                channel: channel.to_owned(),
                // Whole milliseconds: "1s 3ms", not nanoseconds.
                after: Duration::from_millis(u64::try_from(after.as_millis()).unwrap_or(u64::MAX)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::Interrupt;
    use crate::output::Output;
    use crate::sync::Locked;
    use std::sync::Arc;

    /// Keeps the messages of the events it sees.
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<String>>);
    impl crate::output::Sink for Arc<Seen> {
        fn event(&self, event: &Event) {
            if let Some(m) = &event.message {
                self.0.locked().push(m.clone());
            }
        }
    }

    fn effects(rt: &tokio::runtime::Runtime, dry_run: bool) -> (Effects, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let redactor = Arc::new(crate::redact::Redactor::new());
        redactor.add("s3cret");
        let output = Arc::new(Output::new("run".into(), redactor).with_sink(seen.clone()));
        let fx = Effects::new(
            rt.handle().clone(),
            output,
            Interrupt::new(),
            dry_run,
            4,
            "run".into(),
        );
        (fx, seen)
    }

    use crate::testing::runtime;

    #[test]
    fn a_dry_run_sends_nothing_but_still_reads() {
        let rt = runtime();
        let (fx, seen) = effects(&rt, true);
        let sent = std::sync::atomic::AtomicBool::new(false);
        let r = fx.http_send("slack", "{\"token\":\"s3cret\"}", None, async {
            sent.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        assert_eq!(r, Ok(None));
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
        let seen = seen.0.locked().clone();
        assert_eq!(seen, ["slack: would send {\"token\":\"***\"}"]);
        assert_eq!(fx.http_read("health", None, async { 7 }), Ok(7));
    }

    #[test]
    fn an_exchange_past_its_bound_is_ended_and_says_how_long_it_ran() {
        let rt = runtime();
        let (fx, _) = effects(&rt, false);
        let r = fx.http_send(
            "webhook",
            "{}",
            Some(Duration::from_millis(100)),
            std::future::pending::<()>(),
        );
        let Err(HttpError::TimedOut { after, .. }) = r else {
            panic!("expected a timeout, got {r:?}");
        };
        assert!(after >= Duration::from_millis(100) + GRACE, "{after:?}");
        assert!(after < Duration::from_secs(5), "{after:?}");
    }

    #[test]
    fn ctrl_c_ends_an_exchange() {
        let rt = runtime();
        let (fx, _) = effects(&rt, false);
        fx.interrupt().raise();
        let r = fx.http_read("health", None, std::future::pending::<()>());
        assert!(r.is_err_and(|e| e.is_interrupt()));
    }
}
