//! `metrics::*` — telling dashboards what happened: a push to the Pushgateway and instant
//! PromQL queries (plain core: `crate::metrics`). A failed push is a warning, as for
//! `notify::*`, unless the call says `required: true`.

use crate::num::ToF64;
use rhai::plugin::*;
use rhai::{EvalAltResult, Map};

use super::check_keys;
use super::health::stopped;
use super::notify::{TIMEOUT, deliver, flag, resolve, text};
use crate::session::Session;

fn endpoint(session: &Session, which: &str) -> Result<String, Box<EvalAltResult>> {
    let m = session
        .inventory
        .as_ref()
        .map(|i| i.metrics.clone())
        .unwrap_or_default();
    let (setting, fallback) = match which {
        "pushgateway" => (m.pushgateway, "METRICS_ENDPOINT"),
        _ => (m.prometheus, "PROMETHEUS_URL"),
    };
    match setting {
        Some(s) => resolve(s.resolve(&format!("metrics.{which}"))),
        None => resolve(
            crate::inventory::SecretRef {
                env: fallback.into(),
            }
            .resolve(&format!("metrics.{which}")),
        ),
    }
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod metrics_api {
    /// Pushes deployment metrics (duration, success, timestamp; labels app, env, release)
    /// to the Pushgateway (`[metrics] pushgateway`, or `METRICS_ENDPOINT`). Options:
    /// `release`, `success`, `duration_ms`, `required`.
    #[rhai_fn(return_raw)]
    pub fn push(ctx: NativeCallContext, opts: Map) -> Result<Map, Box<EvalAltResult>> {
        let result = (|| {
            let session = crate::modules::session(&ctx)?;
            super::check_keys(
                &opts,
                &["release", "success", "duration_ms", "required"],
                "metrics",
            )?;
            let gateway = super::endpoint(&session, "pushgateway")?;
            let m = crate::metrics::DeployMetrics {
                app: session
                    .inventory
                    .as_ref()
                    .map(|i| i.app.name.clone())
                    .unwrap_or_default(),
                environment: session
                    .env
                    .as_ref()
                    .map(|e| e.name.clone())
                    .unwrap_or_default(),
                release: super::text(&opts, "release").unwrap_or_default(),
                success: opts
                    .get("success")
                    .and_then(|v| v.as_bool().ok())
                    .unwrap_or(true),
                duration_seconds: opts
                    .get("duration_ms")
                    .and_then(|v| v.as_int().ok())
                    .unwrap_or(0)
                    .to_f64()
                    / 1000.0,
                timestamp_seconds: chrono::Utc::now().timestamp(),
            };
            let preview = crate::metrics::exposition(&m);
            super::deliver(
                &session,
                "metrics",
                super::flag(&opts, "required"),
                preview,
                None,
                super::TIMEOUT,
                async move {
                    crate::metrics::push(&gateway, &m, super::TIMEOUT)
                        .await
                        .map(|()| "pushed".to_owned())
                        .map_err(|e| e.to_string())
                },
            )
        })();
        crate::modules::located(&ctx, result)
    }

    /// An instant PromQL query against `[metrics] prometheus` (or `PROMETHEUS_URL`):
    /// exactly one number, or an error saying why not (no series, several series).
    #[rhai_fn(return_raw)]
    pub fn query(ctx: NativeCallContext, promql: &str) -> Result<f64, Box<EvalAltResult>> {
        let result = (|| {
            let session = crate::modules::session(&ctx)?;
            let url = super::endpoint(&session, "prometheus")?;
            session
                .effects
                .http_read(
                    "metrics",
                    Some(super::TIMEOUT),
                    crate::metrics::query(&url, promql, super::TIMEOUT),
                )
                .map_err(super::stopped)?
                .map_err(crate::modules::error)
        })();
        crate::modules::located(&ctx, result)
    }
}
