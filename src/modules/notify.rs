//! `notify::*` — telling people what happened (plain core: `crate::notify`). `metrics.rs`
//! sends through the same [`deliver`].
//!
//! A failed notification is a warning event, never the reason a deploy fails — unless
//! the call says `required: true`. In dry-run the payload is shown (redacted), not sent.

use std::time::Duration;

use rhai::plugin::*;
use rhai::{Dynamic, EvalAltResult, Map};

use super::check_keys;
use crate::effects::http::HttpError;
use crate::inventory::NotSet;
use crate::notify::{self as core, Deployment, PagerEvent, Smtp};
use crate::output::{Event, Kind, Level};
use crate::session::Session;

pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn text(opts: &Map, key: &str) -> Option<String> {
    opts.get(key)
        .filter(|v| !v.is_unit())
        .map(ToString::to_string)
}

pub(super) fn flag(opts: &Map, key: &str) -> bool {
    opts.get(key)
        .and_then(|v| v.as_bool().ok())
        .unwrap_or(false)
}

/// Masks every secret value in a payload's strings (see `Redactor::redact_json`).
fn redact_json(session: &Session, value: &mut serde_json::Value, keep: &[&str]) {
    session.effects.output().redactor().redact_json(value, keep);
}

/// Why a notification was not delivered (said as `<channel> notification failed: …`).
#[derive(Debug, thiserror::Error)]
pub(super) enum Undelivered {
    /// A secret or setting of the channel is missing.
    #[error("not sent: {0}")]
    NotSent(NotSet),
    /// Past the send's bound, retries included.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The channel's own error (HTTP, SMTP, the gateway).
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// A setting a channel needs: its value, or "" with why it is missing noted (the first).
fn needed(missing: &mut Option<NotSet>, what: Result<String, NotSet>) -> String {
    match what {
        Ok(v) => v,
        Err(e) => {
            missing.get_or_insert(e);
            String::new()
        }
    }
}

/// Sends through the effect layer (which, in a dry run, shows it instead) and turns the
/// outcome into `#{ ok, sent, error }`. A channel whose secret or setting is `missing`
/// fails like a failed delivery: a warning (an error only when `required`), and in a dry
/// run the plan says it would fail. `bound`: the longest the send may take, retries
/// included.
pub(super) fn deliver(
    session: &Session,
    channel: &str,
    required: bool,
    preview: String,
    missing: Option<NotSet>,
    bound: Duration,
    send: impl std::future::Future<
        Output = Result<String, impl Into<Box<dyn std::error::Error + Send + Sync>>>,
    >,
) -> Result<Map, Box<EvalAltResult>> {
    let output = session.effects.output();
    let mut m = Map::new();
    let why_not = missing.clone();
    let exchange = async move {
        match why_not {
            Some(why) => Err(Undelivered::NotSent(why)),
            None => send.await.map_err(|e| Undelivered::Failed(e.into())),
        }
    };
    let outcome = match session
        .effects
        .http_send(channel, &preview, Some(bound), exchange)
    {
        Ok(Some(outcome)) => outcome,
        Ok(None) => {
            // A dry run: shown, not sent.
            if let Some(why) = &missing {
                output.log(
                    Level::Warn,
                    format!("{channel}: the real run could not send it: {why}"),
                );
            }
            m.insert("ok".into(), missing.is_none().into());
            m.insert("sent".into(), false.into());
            return Ok(m);
        }
        Err(HttpError::Interrupted { .. }) => return Err(super::interrupted()),
        // Past its bound: a delivery that failed.
        Err(HttpError::TimedOut { after, .. }) => Err(Undelivered::TimedOut(after)),
    };
    match outcome {
        Ok(what) => {
            output.emit(Event::new(Kind::Notification).message(format!("{channel}: {what}")));
            m.insert("ok".into(), true.into());
            m.insert("sent".into(), true.into());
            Ok(m)
        }
        Err(e) => {
            let message = format!("{channel} notification failed: {e}");
            if required {
                return Err(super::error(message));
            }
            output.log(Level::Warn, message.clone());
            m.insert("ok".into(), false.into());
            m.insert("sent".into(), false.into());
            m.insert("error".into(), message.into());
            Ok(m)
        }
    }
}

pub(super) fn resolve(what: Result<String, NotSet>) -> Result<String, Box<EvalAltResult>> {
    what.map_err(super::error)
}

fn slack(ctx: &NativeCallContext, opts: &Map) -> Result<Map, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    check_keys(
        opts,
        &[
            "status",
            "success",
            "title",
            "version",
            "environment",
            "duration",
            "deployed_by",
            "reason",
            "channel",
            "required",
            "text",
        ],
        "slack",
    )?;
    let config = session
        .inventory
        .as_ref()
        .and_then(|i| i.notify.slack.clone());
    let mut missing = None;
    let webhook = needed(
        &mut missing,
        match &config {
            Some(c) => c.webhook.resolve("notify.slack.webhook"),
            None => crate::inventory::SecretRef {
                env: "SLACK_WEBHOOK_URL".into(),
            }
            .resolve("notify.slack"),
        },
    );
    session.effects.output().redactor().add(&webhook);
    let env_name = session
        .env
        .as_ref()
        .map(|e| e.name.clone())
        .unwrap_or_default();
    let success = match (
        opts.get("success").and_then(|v| v.as_bool().ok()),
        text(opts, "status"),
    ) {
        (Some(b), _) => b,
        (None, Some(s)) => matches!(s.as_str(), "success" | "ok" | "good"),
        (None, None) => true,
    };
    let duration = match opts.get("duration") {
        Some(d) if d.is_int() => {
            let secs = d.as_int().unwrap_or(0) / 1000;
            format!("{}m {:02}s", secs / 60, secs % 60)
        }
        Some(d) => d.to_string(),
        // A deployment card without a duration says how long this run has taken.
        None if text(opts, "text").is_none() => {
            let secs = session.started.elapsed().as_secs();
            format!("{}m {:02}s", secs / 60, secs % 60)
        }
        None => String::new(),
    };
    let d = Deployment {
        success,
        title: text(opts, "title")
            .unwrap_or_else(|| format!("{} Deployment", capitalise(&env_name))),
        version: text(opts, "version")
            .or_else(|| session.info.args.get("ref").cloned())
            .unwrap_or_default(),
        environment: text(opts, "environment").unwrap_or(env_name),
        duration,
        deployed_by: text(opts, "deployed_by").unwrap_or_else(|| session.info.actor.clone()),
        reason: text(opts, "reason").or_else(|| session.info.reason.clone()),
        channel: text(opts, "channel").or_else(|| config.as_ref().and_then(|c| c.channel.clone())),
    };
    let mut payload = core::slack_payload(&d);
    if let Some(text) = text(opts, "text") {
        // A free-form message (reports) instead of the deployment card.
        payload = serde_json::json!({ "text": text });
        if let Some(c) = &d.channel {
            payload["channel"] = serde_json::json!(c);
        }
    }
    redact_json(&session, &mut payload, &[]);
    let preview = payload.to_string();
    deliver(
        &session,
        "slack",
        flag(opts, "required"),
        preview,
        missing,
        core::post_bound(TIMEOUT),
        async move {
            core::post_json(&webhook, &payload, TIMEOUT)
                .await
                .map(|s| format!("delivered ({s})"))
        },
    )
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn email(ctx: &NativeCallContext, opts: &Map) -> Result<Map, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    check_keys(opts, &["subject", "body", "to", "required"], "email")?;
    let cfg = session
        .inventory
        .as_ref()
        .and_then(|i| i.notify.email.clone())
        .ok_or_else(|| super::error("no [notify.email] in runbook.toml"))?;
    let mut missing = None;
    let host = needed(&mut missing, cfg.host.resolve("notify.email.host"));
    let port = match &cfg.port {
        Some(p) => match needed(&mut missing, p.resolve("notify.email.port")) {
            v if v.is_empty() => 587,
            v => v
                .parse::<u16>()
                .map_err(|_| super::error("notify.email.port is not a port number"))?,
        },
        None => 587,
    };
    let password = cfg
        .password
        .as_ref()
        .map(|p| needed(&mut missing, p.resolve("notify.email.password")));
    if let Some(p) = &password {
        session.effects.output().redactor().add(p);
    }
    let username = cfg
        .username
        .as_ref()
        .map(|u| needed(&mut missing, u.resolve("notify.email.username")));
    let to = match text(opts, "to") {
        Some(t) => t,
        None => needed(&mut missing, cfg.to.resolve("notify.email.to")),
    };
    let from = match &cfg.from {
        Some(f) => needed(&mut missing, f.resolve("notify.email.from")),
        None => format!("runbook@{host}"),
    };
    let smtp = Smtp {
        host,
        port,
        username,
        password,
        from,
        to: to
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        tls: cfg.tls.clone().unwrap_or_else(|| "starttls".into()),
        ca_file: cfg.ca_file.clone().map(Into::into),
        timeout: TIMEOUT,
    };
    let subject =
        text(opts, "subject").unwrap_or_else(|| format!("runbook: {}", session.info.script));
    let body = text(opts, "body").unwrap_or_default();
    let redactor = session.effects.output().redactor();
    let (subject, body) = (
        redactor.redact(&subject).into_owned(),
        redactor.redact(&body).into_owned(),
    );
    let preview = format!("mail to {} — {subject}", smtp.to.join(", "));
    deliver(
        &session,
        "email",
        flag(opts, "required"),
        preview,
        missing,
        core::mail_bound(&smtp),
        async move {
            core::send_mail(&smtp, &subject, &body)
                .await
                .map(|()| format!("mail sent to {}", smtp.to.join(", ")))
        },
    )
}

fn pagerduty(ctx: &NativeCallContext, opts: &Map) -> Result<Map, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    check_keys(
        opts,
        &[
            "action",
            "summary",
            "severity",
            "source",
            "dedup_key",
            "details",
            "required",
        ],
        "pagerduty",
    )?;
    let cfg = session
        .inventory
        .as_ref()
        .and_then(|i| i.notify.pagerduty.clone());
    let mut missing = None;
    let key = needed(
        &mut missing,
        match &cfg {
            Some(c) => c.routing_key.resolve("notify.pagerduty.routing_key"),
            None => crate::inventory::SecretRef {
                env: "PAGERDUTY_ROUTING_KEY".into(),
            }
            .resolve("notify.pagerduty"),
        },
    );
    session.effects.output().redactor().add(&key);
    let url = cfg
        .as_ref()
        .and_then(|c| c.url.clone())
        .unwrap_or_else(|| core::PAGERDUTY_URL.to_owned());
    let app = session
        .inventory
        .as_ref()
        .map(|i| i.app.name.clone())
        .unwrap_or_default();
    let env = session
        .env
        .as_ref()
        .map(|e| e.name.clone())
        .unwrap_or_default();
    let action = text(opts, "action").unwrap_or_else(|| "trigger".into());
    if action != "trigger" && action != "resolve" {
        return Err(super::error(
            "pagerduty `action` must be \"trigger\" or \"resolve\"",
        ));
    }
    let severity = text(opts, "severity").unwrap_or_else(|| "critical".into());
    if !["critical", "error", "warning", "info"].contains(&severity.as_str()) {
        return Err(super::error(
            "pagerduty `severity` must be critical, error, warning or info",
        ));
    }
    let details = match opts.get("details") {
        Some(d) => rhai::serde::from_dynamic::<serde_json::Value>(d).unwrap_or_default(),
        None => {
            serde_json::json!({ "run": session.info.id, "script": session.info.script, "actor": session.info.actor })
        }
    };
    let event = PagerEvent {
        routing_key: key,
        action,
        dedup_key: text(opts, "dedup_key")
            .unwrap_or_else(|| format!("runbook-{app}-{env}-{}", session.info.id)),
        summary: text(opts, "summary")
            .unwrap_or_else(|| format!("{} failed on {env}", session.info.script)),
        source: text(opts, "source").unwrap_or_else(|| format!("runbook {app}/{env}")),
        severity,
        details,
    };
    let mut payload = core::pagerduty_payload(&event);
    redact_json(&session, &mut payload, &["routing_key"]);
    let preview = payload.to_string();
    deliver(
        &session,
        "pagerduty",
        flag(opts, "required"),
        preview,
        missing,
        core::post_bound(TIMEOUT),
        async move {
            core::post_json(&url, &payload, TIMEOUT)
                .await
                .map(|s| format!("event accepted ({s})"))
        },
    )
}

fn webhook(
    ctx: &NativeCallContext,
    url: &str,
    payload: &Dynamic,
    opts: &Map,
) -> Result<Map, Box<EvalAltResult>> {
    let session = super::session(ctx)?;
    check_keys(opts, &["required"], "webhook")?;
    let mut body = rhai::serde::from_dynamic::<serde_json::Value>(payload)
        .map_err(|e| super::error(format!("the payload is not JSON-like: {e}")))?;
    redact_json(&session, &mut body, &[]);
    let url = url.to_owned();
    let preview = body.to_string();
    deliver(
        &session,
        "webhook",
        flag(opts, "required"),
        preview,
        None,
        core::post_bound(TIMEOUT),
        async move {
            core::post_json(&url, &body, TIMEOUT)
                .await
                .map(|s| format!("delivered ({s})"))
        },
    )
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod notify_api {
    /// Posts the seed's deployment message to Slack (webhook from `[notify.slack]`, or
    /// `SLACK_WEBHOOK_URL`). Options: `status` ("success"/"failure") or `success`,
    /// `title`, `version` (default: the `ref` argument), `environment`, `duration`
    /// (text, or milliseconds), `deployed_by` (default: the actor), `reason`, `channel`,
    /// `required` (throw on failure). Returns `#{ ok, sent, error }`.
    #[rhai_fn(return_raw)]
    pub fn slack(ctx: NativeCallContext, opts: Map) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::slack(&ctx, &opts))
    }

    /// Whether a channel ("slack", "email", "pagerduty") can send: configured in
    /// runbook.toml with every variable it reads present in the environment (email: host,
    /// port, user, password, from, to), or (Slack, PagerDuty) the default variable set.
    /// Strategies notify only where this is true.
    #[rhai_fn(return_raw)]
    pub fn configured(ctx: NativeCallContext, channel: &str) -> Result<bool, Box<EvalAltResult>> {
        let session = crate::modules::session(&ctx)?;
        let notify = session.inventory.as_ref().map(|i| &i.notify);
        let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty());
        match channel {
            "slack" => Ok(match notify.and_then(|n| n.slack.as_ref()) {
                Some(c) => set(&c.webhook.env),
                None => set("SLACK_WEBHOOK_URL"),
            }),
            "pagerduty" => Ok(match notify.and_then(|n| n.pagerduty.as_ref()) {
                Some(c) => set(&c.routing_key.env),
                None => set("PAGERDUTY_ROUTING_KEY"),
            }),
            "email" => Ok(notify.and_then(|n| n.email.as_ref()).is_some_and(|e| {
                e.host.resolve("notify.email.host").is_ok()
                    && e.to.resolve("notify.email.to").is_ok()
                    && e.port
                        .as_ref()
                        .is_none_or(|p| p.resolve("notify.email.port").is_ok())
                    && e.username
                        .as_ref()
                        .is_none_or(|u| u.resolve("notify.email.username").is_ok())
                    && e.password
                        .as_ref()
                        .is_none_or(|p| p.resolve("notify.email.password").is_ok())
                    && e.from
                        .as_ref()
                        .is_none_or(|f| f.resolve("notify.email.from").is_ok())
            })),
            other => Err(crate::modules::error(format!(
                "unknown channel `{other}` (channels: slack, email, pagerduty)"
            ))),
        }
    }

    /// Sends a plain-text mail through `[notify.email]` (STARTTLS by default). Options:
    /// `subject`, `body`, `to` (overrides), `required`.
    #[rhai_fn(return_raw)]
    pub fn email(ctx: NativeCallContext, opts: Map) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::email(&ctx, &opts))
    }

    /// Sends a PagerDuty Events v2 event. Options: `action` ("trigger"/"resolve"),
    /// `summary`, `severity` (critical, error, warning, info), `source`, `dedup_key`
    /// (default: one per run), `details` (map), `required`.
    #[rhai_fn(return_raw)]
    pub fn pagerduty(ctx: NativeCallContext, opts: Map) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::pagerduty(&ctx, &opts))
    }

    /// POSTs `payload` as JSON to `url`.
    #[rhai_fn(name = "webhook", return_raw)]
    pub fn webhook(
        ctx: NativeCallContext,
        url: &str,
        payload: Dynamic,
    ) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::webhook(&ctx, url, &payload, &Map::new()))
    }

    /// `notify::webhook` with options: `required`.
    #[rhai_fn(name = "webhook", return_raw)]
    pub fn webhook_opts(
        ctx: NativeCallContext,
        url: &str,
        payload: Dynamic,
        opts: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        crate::modules::located(&ctx, super::webhook(&ctx, url, &payload, &opts))
    }
}
