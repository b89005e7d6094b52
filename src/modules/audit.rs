//! `audit::*` — the local audit log from scripts (reports, anomalies).

use rhai::plugin::*;
use rhai::{Array, Dynamic, EvalAltResult};

/// The records of the last `since`: this machine's log, and — in a run on an environment
/// — its hosts' logs (a fresh CI runner has no local log), one record per run.
fn recent(
    ctx: &NativeCallContext,
    since: &str,
) -> Result<Vec<crate::audit::Record>, Box<EvalAltResult>> {
    let from = crate::audit::since(since).map_err(super::error)?;
    let mut all = crate::audit::read(&crate::audit::local_path());
    let session = super::session(ctx)?;
    if let Some(env) = &session.env {
        let (hosts, unread) = crate::audit::read_hosts(&session.effects, env);
        for h in unread {
            session.effects.output().log(
                crate::output::Level::Warn,
                format!("could not read the audit log on `{h}`"),
            );
        }
        all = crate::audit::merge(all, hosts);
    }
    Ok(all
        .into_iter()
        .filter(|r| chrono::DateTime::parse_from_rfc3339(&r.ts).is_ok_and(|t| t >= from))
        .collect())
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod audit_api {
    /// The audit records of the last `since` ("7d"), oldest first, as maps: this
    /// machine's log and the environment's hosts' logs, one record per run.
    #[rhai_fn(return_raw)]
    pub fn records(ctx: NativeCallContext, since: &str) -> Result<Array, Box<EvalAltResult>> {
        let all = super::recent(&ctx, since)?;
        all.iter()
            .map(|r| rhai::serde::to_dynamic(r).map_err(|e| crate::modules::error(e.to_string())))
            .collect()
    }

    /// Delivery metrics (DORA) per environment over the last `since` ("7d"): `deploys`,
    /// `successful`, `failed`, `rolled_back`, `change_failure_rate`, `lead_time_median_s`,
    /// `time_to_restore_mean_s`, `per_week`, `weeks` — from the same records as
    /// `audit::records`.
    #[rhai_fn(return_raw)]
    pub fn stats(ctx: NativeCallContext, since: &str) -> Result<Array, Box<EvalAltResult>> {
        let window = humantime::parse_duration(since)
            .map(|d| d.as_secs_f64() / 86400.0)
            .ok();
        let all = super::recent(&ctx, since)?;
        crate::audit::stats(&all, window)
            .iter()
            .map(|s| rhai::serde::to_dynamic(s).map_err(|e| crate::modules::error(e.to_string())))
            .collect::<Result<Vec<Dynamic>, _>>()
    }
}
