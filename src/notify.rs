//! Notifications: Slack, e-mail, PagerDuty, and plain webhooks.
//!
//! Plain Rust. Every send is bounded (timeout, one retry) and returns what happened; the
//! caller decides whether a failure matters (by default it is a warning, never the
//! reason a deploy fails). Base URLs are configurable so tests talk to local receivers.

use std::time::Duration;

use serde_json::{Value, json};

/// The seed's deployment message.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deployment {
    pub success: bool,
    pub title: String,
    pub version: String,
    pub environment: String,
    pub duration: String,
    pub deployed_by: String,
    pub reason: Option<String>,
    pub channel: Option<String>,
}

/// The Slack incoming-webhook payload (legacy attachments, as in the seed's template).
pub(crate) fn slack_payload(d: &Deployment) -> Value {
    let mut fields = vec![
        json!({"title": "Version", "value": d.version, "short": true}),
        json!({"title": "Environment", "value": d.environment, "short": true}),
        json!({"title": "Duration", "value": d.duration, "short": true}),
        json!({"title": "Deployed by", "value": d.deployed_by, "short": true}),
    ];
    if let Some(r) = &d.reason {
        fields.push(json!({"title": "Reason", "value": r, "short": false}));
    }
    let mut payload = json!({
        "text": if d.success { "🚀 Deployment Status" } else { "🚨 Deployment Failed" },
        "attachments": [{
            "color": if d.success { "good" } else { "danger" },
            "title": d.title,
            "fields": fields,
        }]
    });
    if let Some(c) = &d.channel {
        payload["channel"] = json!(c);
    }
    payload
}

/// A PagerDuty Events API v2 event.
#[derive(Debug, Clone, Default)]
pub(crate) struct PagerEvent {
    pub routing_key: String,
    /// `trigger` or `resolve`.
    pub action: String,
    pub dedup_key: String,
    pub summary: String,
    pub source: String,
    /// critical, error, warning or info.
    pub severity: String,
    pub details: Value,
}

pub(crate) fn pagerduty_payload(e: &PagerEvent) -> Value {
    let mut p = json!({
        "routing_key": e.routing_key,
        "event_action": e.action,
        "dedup_key": e.dedup_key,
    });
    if e.action == "trigger" {
        p["payload"] = json!({
            "summary": e.summary,
            "source": e.source,
            "severity": e.severity,
            "custom_details": e.details,
        });
    }
    p
}

/// The real Events API endpoint; `[notify.pagerduty] url` overrides it (tests).
pub(crate) const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SendError(pub String);

/// The pause before the one retry of a send.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The longest [`post_json`] can take with `timeout`: two attempts and the pause between.
pub(crate) fn post_bound(timeout: Duration) -> Duration {
    timeout.saturating_mul(2).saturating_add(RETRY_PAUSE)
}

/// The longest [`send_mail`] can take: `smtp.timeout` bounds each step of the SMTP
/// conversation (connect, greeting, EHLO, STARTTLS, EHLO, AUTH, MAIL, one RCPT per
/// recipient, DATA, the message, QUIT), twice (one retry), and the pause between.
pub(crate) fn mail_bound(smtp: &Smtp) -> Duration {
    let steps = 10 + u32::try_from(smtp.to.len()).unwrap_or(u32::MAX);
    smtp.timeout
        .saturating_mul(steps.saturating_mul(2))
        .saturating_add(RETRY_PAUSE)
}

/// POSTs JSON with a timeout and one retry (after 1 s) on a connection error or a 5xx.
pub(crate) async fn post_json(
    url: &str,
    payload: &Value,
    timeout: Duration,
) -> Result<u16, SendError> {
    crate::tls::init();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("runbook/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SendError(format!("cannot build the HTTP client: {e}")))?;
    let mut last = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        match client.post(url).json(payload).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(resp.status().as_u16()),
            Ok(resp) if resp.status().is_server_error() => {
                last = format!("the receiver answered {}", resp.status());
            }
            Ok(resp) => {
                let status = resp.status();
                let body: String = resp
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                return Err(SendError(format!("the receiver answered {status}: {body}")));
            }
            // A receiver that does not answer is not asked again: the deploy waits for
            // a notification at most once its timeout.
            Err(e) if e.is_timeout() => {
                return Err(SendError(format!(
                    "no answer within {} s",
                    timeout.as_secs()
                )));
            }
            Err(e) => last = format!("cannot reach the receiver: {}", without_url(&e)),
        }
    }
    Err(SendError(format!("{last} (tried twice)")))
}

/// reqwest puts the URL in its messages; a webhook URL is a secret.
fn without_url(e: &reqwest::Error) -> String {
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    if chain.is_empty() {
        "request failed".to_owned()
    } else {
        chain.join(": ")
    }
}

pub(crate) use crate::tls::tls_problem;

/// SMTP settings, resolved from the inventory and the environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Smtp {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    /// `starttls` (default), `tls` (implicit, port 465) or `none` (loopback only).
    pub tls: String,
    pub ca_file: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

/// Sends a plain-text mail.
pub(crate) async fn send_mail(smtp: &Smtp, subject: &str, body: &str) -> Result<(), SendError> {
    use lettre::message::Mailbox;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    crate::tls::init();
    if let Some(problem) = tls_problem(&smtp.host, &smtp.tls) {
        return Err(SendError(format!("notify.email.tls: {problem}")));
    }

    let parse = |a: &str, what: &str| {
        a.parse::<Mailbox>()
            .map_err(|e| SendError(format!("{what} `{a}` is not an e-mail address: {e}")))
    };
    let mut msg = Message::builder()
        .from(parse(&smtp.from, "from")?)
        .subject(subject);
    for to in &smtp.to {
        msg = msg.to(parse(to, "to")?);
    }
    let msg = msg
        .body(body.to_owned())
        .map_err(|e| SendError(format!("cannot build the mail: {e}")))?;

    let mut params = TlsParameters::builder(smtp.host.clone());
    if let Some(ca) = &smtp.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| SendError(format!("cannot read ca_file {}: {e}", ca.display())))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| SendError(format!("ca_file {}: {e}", ca.display())))?;
        params = params.add_root_certificate(cert);
    }
    let params = params
        .build_rustls()
        .map_err(|e| SendError(format!("TLS set-up failed: {e}")))?;
    let tls = match smtp.tls.as_str() {
        "tls" => Tls::Wrapper(params),
        "none" => Tls::None,
        _ => Tls::Required(params),
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(smtp.timeout));
    if let (Some(u), Some(p)) = (&smtp.username, &smtp.password) {
        transport = transport.credentials(Credentials::new(u.clone(), p.clone()));
    }
    let transport = transport.build();
    let mut last = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        match transport.send(msg.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(SendError(format!(
        "SMTP {}:{}: {last} (tried twice)",
        smtp.host, smtp.port
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::is_loopback;

    #[test]
    fn only_loopback_hosts_may_go_without_tls() {
        for host in [
            "localhost",
            "LOCALHOST.",
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback(host), "{host}");
            assert_eq!(tls_problem(host, "none"), None, "{host}");
        }
        for host in [
            "192.0.2.10",
            "mail.example.com",
            "localhost.example.com",
            "::2",
            "0.0.0.0",
        ] {
            assert!(!is_loopback(host), "{host}");
            assert!(tls_problem(host, "none").is_some(), "{host}");
            assert_eq!(tls_problem(host, "starttls"), None, "{host}");
        }
        assert!(tls_problem("127.0.0.1", "STARTTLS").is_some());
    }

    #[test]
    fn the_slack_message_has_the_seed_fields() {
        let p = slack_payload(&Deployment {
            success: false,
            title: "Production Deployment".into(),
            version: "v1.2.3".into(),
            environment: "production".into(),
            duration: "5m 23s".into(),
            deployed_by: "@alice".into(),
            reason: Some("CVE fix".into()),
            channel: Some("#deployments".into()),
        });
        assert_eq!(p["attachments"][0]["color"], "danger");
        let titles: Vec<&str> = p["attachments"][0]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["title"].as_str().unwrap())
            .collect();
        assert_eq!(
            titles,
            [
                "Version",
                "Environment",
                "Duration",
                "Deployed by",
                "Reason"
            ]
        );
        assert_eq!(p["channel"], "#deployments");
    }

    #[test]
    fn a_resolve_event_carries_no_payload() {
        let p = pagerduty_payload(&PagerEvent {
            routing_key: "k".into(),
            action: "resolve".into(),
            dedup_key: "d".into(),
            ..PagerEvent::default()
        });
        assert!(p.get("payload").is_none());
        assert_eq!(p["event_action"], "resolve");
    }
}
