//! Notifications against real receivers that check what arrives; secrets (webhook path,
//! routing key, SMTP password) never appear in any output. Metrics (`metrics::push`,
//! `metrics::query`) are tested against a real Pushgateway and Prometheus in
//! tests/observability.rs.

use crate::harness::{INVENTORY, Output, Test};
use crate::receivers::{self, Http};

const HOOK_SECRET: &str = "T0SECRET/B0SECRET/xyzzy-hook-token";
const ROUTING_KEY: &str = "R0UTINGKEY0123456789abcdef";
const SMTP_PASSWORD: &str = "sm7p-pa55w0rd";

fn assert_no_secrets(out: &Output) {
    for secret in [HOOK_SECRET, ROUTING_KEY, SMTP_PASSWORD] {
        assert!(
            !out.stdout.contains(secret),
            "stdout leaks {secret}:\n{}",
            out.stdout
        );
        assert!(
            !out.stderr.contains(secret),
            "stderr leaks {secret}:\n{}",
            out.stderr
        );
    }
}

fn project(extra: &str, script: &str) -> Test {
    Test::bare()
        .file("runbook.toml", &format!("{INVENTORY}\n{extra}"))
        .file("scripts/n.rhai", script)
}

#[test]
fn slack_gets_the_seed_message_and_the_webhook_never_shows() {
    let s = Http::fixed(200, "ok");
    let out = project(
        "[notify.slack]\nwebhook = { env = \"RB_SLACK\" }\nchannel = \"#deployments\"\n",
        "notify::slack(#{ status: \"failure\", version: \"v1.2.3\", duration: 323000, reason: \"CVE fix\" });",
    )
    .args(&["run", "n", "-e", "dev", "--json", "--reason", "ignored: explicit reason wins"])
    .env("RB_SLACK", &s.url(&format!("/services/{HOOK_SECRET}")))
    .args(&["--actor", "alice"])
    .run();
    out.code(0);
    assert_no_secrets(&out);
    let got = s.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    let p: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(p["channel"], "#deployments");
    let a = &p["attachments"][0];
    assert_eq!(a["color"], "danger");
    assert_eq!(a["title"], "Dev Deployment");
    let fields: Vec<(String, String)> = a["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap().to_owned(),
                f["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("Version".to_owned(), "v1.2.3".to_owned()),
            ("Environment".into(), "dev".into()),
            ("Duration".into(), "5m 23s".into()),
            ("Deployed by".into(), "alice".into()),
            ("Reason".into(), "CVE fix".into()),
        ]
    );
    assert!(out.events().iter().any(|e| e["event"] == "notification"));
}

#[test]
fn a_failed_notification_warns_but_does_not_fail_the_run_unless_required() {
    let s = Http::fixed(500, "boom");
    let t = project(
        "[notify.slack]\nwebhook = { env = \"RB_SLACK\" }\n",
        "notify::slack(#{ status: \"success\" }); print(\"after\");",
    )
    .args(&["run", "n", "-e", "dev"])
    .env("RB_SLACK", &s.url(&format!("/{HOOK_SECRET}")));
    let out = t.run();
    out.code(0).stdout_has("after").stderr_has(
        "slack notification failed: the receiver answered 500 Internal Server Error (tried twice)",
    );
    assert_no_secrets(&out);
    assert_eq!(s.received().len(), 2, "one retry");
    let out = project(
        "[notify.slack]\nwebhook = { env = \"RB_SLACK\" }\n",
        "notify::slack(#{ required: true }); print(\"after\");",
    )
    .args(&["run", "n", "-e", "dev"])
    .env("RB_SLACK", &s.url(&format!("/{HOOK_SECRET}")))
    .run();
    out.code(1).stderr_has("slack notification failed");
    assert!(!out.stdout.contains("after"));
    assert_no_secrets(&out);
}

#[test]
fn an_unreachable_receiver_is_reported_without_its_url() {
    let port = receivers::closed_port();
    let out = project(
        "[notify.slack]\nwebhook = { env = \"RB_SLACK\" }\n",
        "notify::slack(#{});",
    )
    .args(&["run", "n", "-e", "dev"])
    .env(
        "RB_SLACK",
        &format!("http://127.0.0.1:{port}/{HOOK_SECRET}"),
    )
    .run();
    out.code(0).stderr_has("cannot reach the receiver");
    assert_no_secrets(&out);
}

#[test]
fn a_missing_secret_is_a_warning_like_any_failed_notification_unless_required() {
    let hook = "[notify.slack]\nwebhook = { env = \"RB_NOT_SET_HOOK\" }\n[notify.email]\nhost = \"127.0.0.1\"\nto = \"ops@example.org\"\npassword = { env = \"RB_NOT_SET_SMTP\" }\n";
    // The run goes on and says which variable is missing.
    project(
        hook,
        "let r = notify::slack(#{});\nprint(`ok=${r.ok} slack=${notify::configured(\"slack\")} email=${notify::configured(\"email\")}`);",
    )
    .args(&["run", "n", "-e", "dev"])
    .run()
    .code(0)
    .stderr_has("slack notification failed: not sent: RB_NOT_SET_HOOK is not set (runbook.toml `notify.slack.webhook` reads it)")
    .stdout_has("ok=false slack=false email=false");
    // Required: the run fails on it.
    project(hook, "notify::slack(#{ required: true });")
        .args(&["run", "n", "-e", "dev"])
        .run()
        .code(1)
        .stderr_has("RB_NOT_SET_HOOK is not set");
    // A dry run shows what it would send, and that the real run could not.
    project(hook, "notify::email(#{ subject: \"deployed\" });")
        .args(&["run", "n", "-e", "dev", "--dry-run"])
        .run()
        .code(0)
        .stderr_has("email: would send mail to ops@example.org — deployed")
        .stderr_has("email: the real run could not send it: RB_NOT_SET_SMTP is not set");
}

#[test]
fn dry_run_shows_the_payload_and_sends_nothing() {
    let s = Http::fixed(200, "ok");
    let out = project(
        "[notify.slack]\nwebhook = { env = \"RB_SLACK\" }\n",
        "notify::slack(#{ version: \"v9\" });",
    )
    .args(&["run", "n", "-e", "dev", "--dry-run"])
    .env("RB_SLACK", &s.url(&format!("/{HOOK_SECRET}")))
    .run();
    out.code(0)
        .stderr_has("slack: would send")
        .stderr_has("\"v9\"");
    assert!(s.received().is_empty());
    assert_no_secrets(&out);
}

#[test]
fn pagerduty_gets_an_events_v2_trigger_and_the_routing_key_never_shows() {
    let s = Http::fixed(202, r#"{"status":"success"}"#);
    let out = project(
        &format!("[notify.pagerduty]\nrouting_key = {{ env = \"RB_PD\" }}\nurl = \"{}\"\n", s.url("/v2/enqueue")),
        "notify::pagerduty(#{ summary: \"deploy failed on dev\", severity: \"critical\", details: #{ release: \"r1\" } });",
    )
    .args(&["run", "n", "-e", "dev", "--json"])
    .env("RB_PD", ROUTING_KEY)
    .run();
    out.code(0);
    assert_no_secrets(&out);
    let got = s.received();
    assert_eq!(got[0].path, "/v2/enqueue");
    let p: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(p["routing_key"], ROUTING_KEY);
    assert_eq!(p["event_action"], "trigger");
    assert!(
        p["dedup_key"]
            .as_str()
            .unwrap()
            .starts_with("runbook-t-dev-")
    );
    assert_eq!(p["payload"]["summary"], "deploy failed on dev");
    assert_eq!(p["payload"]["severity"], "critical");
    assert_eq!(p["payload"]["source"], "runbook t/dev");
    assert_eq!(p["payload"]["custom_details"]["release"], "r1");
}

#[test]
fn email_goes_out_over_starttls_with_auth_and_the_password_never_shows() {
    let certs = receivers::certs();
    let server = receivers::smtp(&certs);
    let extra = format!(
        "[notify.email]\nhost = {{ env = \"RB_MAIL_HOST\" }}\nport = {{ env = \"RB_MAIL_PORT\" }}\nusername = \"deploy-bot\"\npassword = {{ env = \"RB_MAIL_PASSWORD\" }}\nfrom = \"runbook@example.com\"\nto = {{ env = \"RB_MAIL_TO\" }}\nca_file = \"{}\"\n",
        certs.ca.display()
    );
    let out = project(&extra, "notify::email(#{ subject: \"Production deployment v1.2.3\", body: \"Deployed v1.2.3 in 5m 23s.\" });")
        .args(&["run", "n", "-e", "dev"])
        .env("RB_MAIL_HOST", "127.0.0.1")
        .env("RB_MAIL_PORT", &server.port.to_string())
        .env("RB_MAIL_PASSWORD", SMTP_PASSWORD)
        .env("RB_MAIL_TO", "oncall@example.com, devops@example.com")
        .run();
    out.code(0)
        .stderr_has("mail sent to oncall@example.com, devops@example.com");
    assert_no_secrets(&out);
    let mails = server.mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert!(m.tls, "the mail went out without STARTTLS");
    assert_eq!(m.from, "<runbook@example.com>");
    assert_eq!(m.to, ["<oncall@example.com>", "<devops@example.com>"]);
    assert!(
        m.data.contains("Subject: Production deployment v1.2.3"),
        "{}",
        m.data
    );
    assert!(m.data.contains("Deployed v1.2.3 in 5m 23s."), "{}", m.data);
    let auth = m.auth.clone().expect("AUTH PLAIN");
    assert!(!auth.is_empty());
}

#[test]
fn an_smtp_server_with_an_untrusted_certificate_is_refused_as_a_warning() {
    let certs = receivers::certs();
    let other = receivers::certs();
    let server = receivers::smtp(&certs);
    let extra = format!(
        "[notify.email]\nhost = \"127.0.0.1\"\nport = \"{}\"\nto = \"oncall@example.com\"\nca_file = \"{}\"\n",
        server.port,
        other.ca.display()
    );
    let out = project(&extra, "notify::email(#{ subject: \"x\" });")
        .args(&["run", "n", "-e", "dev"])
        .run();
    out.code(0).stderr_has("email notification failed");
    assert!(server.mails.lock().unwrap().is_empty());
}

#[test]
fn a_generic_webhook_receives_the_json_payload() {
    let s = Http::fixed(204, "");
    project("", &format!("notify::webhook(\"{}\", #{{ event: \"deployed\", release: \"r1\", hosts: [\"a\", \"b\"] }});", s.url("/hook")))
        .args(&["run", "n", "-e", "dev"])
        .run()
        .code(0);
    let p: serde_json::Value = serde_json::from_str(&s.received()[0].body).unwrap();
    assert_eq!(
        p,
        serde_json::json!({"event": "deployed", "release": "r1", "hosts": ["a", "b"]})
    );
}

// Pins behaviour moved from `modules/notify.rs` (its own `block`) into the effect layer's
// gate: Ctrl-C ends a notification that hangs, instead of waiting out its 10 s timeout
// (and the retry). It would fail if the gate raced the send without the interrupt.
#[test]
fn ctrl_c_ends_a_notification_to_a_receiver_that_hangs() {
    let s = Http::start(Box::new(|_, _| {
        (200, "ok".into(), std::time::Duration::from_secs(30))
    }));
    let t = project(
        "",
        &format!(
            "notify::webhook(\"{}\", #{{ event: \"deployed\" }}); local::run([\"touch\", \"after\"]);",
            s.url("/hook")
        ),
    );
    let (status, took) = receivers::interrupt_once_received(&t, &s);
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "Ctrl-C took {took:?} to end a hanging webhook"
    );
    assert!(
        !t.path().join("after").exists(),
        "the script went on after Ctrl-C"
    );
}

// Pins the dry-run rule moved from `deliver` (notify adapter) into `Effects::http_send`:
// a send (webhook, Slack, Pushgateway push) is shown, never sent; a read (a health check)
// still runs, as a command marked `read` does. It would fail if the gate sent in a dry
// run, or skipped reads.
#[test]
fn a_dry_run_sends_no_webhook_and_pushes_no_metrics_but_still_reads() {
    let hook = Http::fixed(200, "ok");
    let gateway = Http::fixed(200, "");
    let health = Http::fixed(200, r#"{"status":"ok"}"#);
    let out = project(
        &format!("[metrics]\npushgateway = \"{}\"\n", gateway.url("")),
        &format!(
            "notify::webhook(\"{}\", #{{ event: \"deployed\" }});\nmetrics::push(#{{ release: \"r9\", duration_ms: 1500 }});\nlet h = health::check(\"{}\");\nprint(`read=${{h.ok}}`);",
            hook.url("/hook"),
            health.url("/api/health")
        ),
    )
    .args(&["run", "n", "-e", "dev", "--dry-run"])
    .run();
    out.code(0)
        .stderr_has("webhook: would send {\"event\":\"deployed\"}")
        .stderr_has("metrics: would send # TYPE runbook_deploy_duration_seconds gauge")
        .stdout_has("read=true");
    assert!(hook.received().is_empty(), "a dry run posted the webhook");
    assert!(gateway.received().is_empty(), "a dry run pushed metrics");
    assert_eq!(health.received().len(), 1, "a dry run must still read");
}
