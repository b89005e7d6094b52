//! `lock::*` — the deploy lock from scripts (plain core: `crate::lock`).

use crate::sync::Locked;
use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult, Map};

use super::exec::targets;
use crate::lock::{Acquired, Holder, LockError};
use crate::output::{Event, Kind};

pub(super) fn holder(session: &crate::session::Session) -> Holder {
    Holder {
        run: session.info.id.clone(),
        actor: session.info.actor.clone(),
        machine: std::fs::read_to_string("/etc/hostname")
            .map_or_else(|_| "unknown".into(), |h| h.trim().to_owned()),
        pid: std::process::id(),
        script: session.info.script.clone(),
        reason: session.info.reason.clone(),
        ci_run: crate::origin::ci_run_url(),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

/// `lock::acquire`'s options: how long to wait (the run's `--lock-wait` unless given)
/// and from what heartbeat age a lock is taken over.
fn acquire_options(
    opts: &Map,
    default_wait: std::time::Duration,
) -> Result<(std::time::Duration, Option<std::time::Duration>), Box<EvalAltResult>> {
    let mut wait = default_wait;
    let mut take_stale = None;
    for (k, v) in opts {
        match k.as_str() {
            "wait" => wait = super::context::duration_arg(v)?,
            "take_stale" => {
                take_stale = match v.as_bool() {
                    Ok(true) => Some(crate::lock::DEFAULT_TTL),
                    Ok(false) => None,
                    Err(_) => Some(super::context::duration_arg(v)?),
                }
            }
            other => {
                return Err(super::error(format!(
                    "unknown option `{other}` (options: wait, take_stale)"
                )));
            }
        }
    }
    Ok((wait, take_stale))
}

fn acquire(
    ctx: &NativeCallContext,
    target: &Dynamic,
    opts: &Map,
) -> Result<Map, Box<EvalAltResult>> {
    crate::modules::guard(ctx, "lock::acquire")?;
    let session = super::session(ctx)?;
    let (targets, _) = targets(target)?;
    let (wait, take_stale) = acquire_options(opts, session.info.lock_wait)?;
    let holder = holder(&session);
    let output = session.effects.output().clone();
    let mut attempt = session.locks.acquire(&targets, &holder, wait, take_stale);
    // A lock left by a run that is gone — its process on this machine no longer exists,
    // or no heartbeat for longer than the TTL — with its progress record: this run
    // recovers first (as `runbook recover` would), then takes the lock.
    if let (Err(LockError::Held(blocked)), Some(env)) = (&attempt, session.env.as_ref())
        && !blocked.is_empty()
        && !session.effects.dry_run()
        && blocked.iter().all(|b| {
            matches!(&b.by, crate::lock::Blocker::Run { holder: Some(h), age }
                if crate::lock::holder_is_gone(h) || *age > crate::lock::DEFAULT_TTL.as_secs())
        })
    {
        output.log(
            crate::output::Level::Warn,
            format!(
                "the deploy lock on {} was left by a run that is gone: recovering first (as `runbook recover -e {}` would)",
                blocked
                    .iter()
                    .map(|b| b.host.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                env.name
            ),
        );
        match crate::recovery::recover(&session.effects, env, &session.info.id) {
            Ok(_) => {
                session.facts.locked().recovered = true;
                attempt = session.locks.acquire(&targets, &holder, wait, take_stale);
            }
            Err(e) => {
                return Err(super::error(format!(
                    "the deploy lock was left by a run that is gone, and recovering from it failed (nothing of this run was changed): {e}\n  hint: look at the hosts, then `runbook recover -e {}`",
                    env.name
                )));
            }
        }
    }
    match attempt {
        Ok(results) => {
            let mut out = Map::new();
            for (host, how) in results {
                let word = match &how {
                    Acquired::New if session.effects.dry_run() => {
                        "free: it would be taken".to_owned()
                    }
                    Acquired::New => "acquired".to_owned(),
                    Acquired::Reentrant => "already held by this run".to_owned(),
                    Acquired::TookOver { age, from } => {
                        let who = from.as_ref().map_or("unknown".to_owned(), |h| {
                            format!("{} (run {})", h.actor, h.run)
                        });
                        output.log(
                            crate::output::Level::Warn,
                            format!("{host}: took over a stale deploy lock of {who}, heartbeat {age} s old"),
                        );
                        format!("took over from {who}")
                    }
                };
                output.emit(
                    Event::new(Kind::Lock)
                        .host(&host)
                        .message(format!("lock {word}")),
                );
                out.insert(host.into(), word.into());
            }
            Ok(out)
        }
        Err(LockError::Interrupted) => Err(super::interrupted()),
        Err(LockError::Held(blocked))
            if !blocked.is_empty()
                && blocked.iter().all(|b| {
                    matches!(&b.by, crate::lock::Blocker::Run { holder: Some(h), .. }
                        if crate::lock::holder_is_gone(h))
                }) =>
        {
            // Its run is known to be gone (it ran here and its process no longer exists):
            // what it left — a half-switched fleet, maintenance mode — is recover's to fix.
            let env = session.env.as_ref().map_or("ENV", |e| e.name.as_str());
            let hosts: Vec<&str> = blocked.iter().map(|b| b.host.as_str()).collect();
            let who = match &blocked[0].by {
                crate::lock::Blocker::Run {
                    holder: Some(h), ..
                } => {
                    format!(
                        "run {} by {} (`{}`, pid {})",
                        h.run, h.actor, h.script, h.pid
                    )
                }
                _ => "a run".to_owned(),
            };
            Err(super::error(format!(
                "the deploy lock on {} is held by {who}, which died without cleaning up (its process is gone); nothing was changed\n  hint: run `runbook recover -e {env}` — it brings every host back to one whole release, lifts its maintenance mode and removes its lock",
                hosts.join(", ")
            )))
        }
        Err(e) => Err(super::error(
            e.message(session.env.as_ref().map(|e| e.name.as_str())),
        )),
    }
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod lock_api {
    /// Takes the deploy lock on every host (a complete lock renamed into place), with who/where/why recorded
    /// and a heartbeat while the run lives. Re-entrant within a run; released
    /// automatically when the run ends — on success, failure or Ctrl-C. A lock held by
    /// another run fails with its holder's details (see `--lock-wait`).
    #[rhai_fn(name = "acquire", return_raw)]
    pub fn acquire(ctx: NativeCallContext, hosts: Dynamic) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::acquire(&ctx, &hosts, &Map::new()))
    }

    /// `lock::acquire` with options: `wait` ("5m": poll for a held lock), `take_stale`
    /// (true, or a TTL like "2m": take over a lock whose heartbeat is older).
    #[rhai_fn(name = "acquire", return_raw)]
    pub fn acquire_opts(
        ctx: NativeCallContext,
        hosts: Dynamic,
        opts: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::acquire(&ctx, &hosts, &opts))
    }

    /// Releases every lock this run holds now (it would be released at the end anyway).
    #[rhai_fn(return_raw)]
    pub fn release(ctx: NativeCallContext) -> Result<Array, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let released = session.locks.release_all();
        for h in &released {
            session
                .effects
                .output()
                .emit(Event::new(Kind::Lock).host(h).message("lock released"));
        }
        Ok(released.into_iter().map(Dynamic::from).collect())
    }

    /// The hosts this run holds the lock on.
    #[rhai_fn(return_raw)]
    pub fn held(ctx: NativeCallContext) -> Result<Array, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        Ok(session
            .locks
            .held()
            .into_iter()
            .map(Dynamic::from)
            .collect())
    }
}
