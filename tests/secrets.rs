//! Secrets planted in every place one can enter — the Slack webhook, the SMTP password,
//! the PagerDuty routing key, an app's `.env`, a value read with `secret()` — must appear
//! in no byte runbook produces (stdout and stderr at every verbosity, JSON events, the
//! audit log, the plan file, the REPL history, error messages), and in no notification
//! payload except as the credential of the one that needs it.

use crate::harness::{INVENTORY, Test};
use crate::receivers::{self, Http};

const HOOK: &str = "T0HOOK/B0HOOK/planted-webhook-token-81";
const SMTP_PASSWORD: &str = "planted-smtp-pa55-82";
const ROUTING_KEY: &str = "plantedroutingkey0083";
const ENV_FILE: &str = "planted-app-key-84";
const DB_PASSWORD: &str = "planted-db-password-85";
const ALL: [&str; 5] = [HOOK, SMTP_PASSWORD, ROUTING_KEY, ENV_FILE, DB_PASSWORD];

fn leaks(what: &str, bytes: &str, allowed: &[&str]) -> Vec<String> {
    ALL.iter()
        .filter(|s| !allowed.contains(s) && bytes.contains(**s))
        .map(|s| format!("{what} contains {s}"))
        .collect()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario end to end on one fleet, read top to bottom"
)]
fn no_planted_secret_appears_in_anything_runbook_produces() {
    let slack = Http::fixed(200, "ok");
    let pagerduty = Http::fixed(202, "{\"status\":\"success\"}");
    let certs = receivers::certs();
    let smtp = receivers::smtp(&certs);
    let inventory = format!(
        "{INVENTORY}\n[notify.slack]\nwebhook = {{ env = \"RB_SLACK\" }}\n\
         [notify.pagerduty]\nrouting_key = {{ env = \"RB_PD\" }}\nurl = \"{pd}\"\n\
         [notify.email]\nhost = \"127.0.0.1\"\nport = \"{port}\"\nusername = \"bot\"\n\
         password = {{ env = \"RB_MAIL_PASSWORD\" }}\nfrom = \"runbook@example.com\"\n\
         to = \"oncall@example.com\"\nca_file = \"{ca}\"\n",
        pd = pagerduty.url("/v2/enqueue"),
        port = smtp.port,
        ca = certs.ca.display(),
    );
    // Every way a value can travel: a command's argv and output, a step's result, an
    // artifact's .env, a backup, each notification, and finally an error message.
    let script = r#"
let db = secret("RB_DB_PASSWORD");
step("connect", || local::run(["echo", "mysql -p" + db]));
let name = release::prepare(hosts("one"), #{ artifact: "build" });
release::activate(hosts("one"), name);
backup::create(hosts("one")[0], #{});
notify::slack(#{ status: "failure", version: "v1", reason: "db " + db });
notify::pagerduty(#{ summary: "deploy failed", severity: "critical", details: #{ db: db } });
notify::email(#{ subject: "deploy failed", body: "password was " + db });
throw "could not log in with " + db;
"#;
    let t = Test::bare()
        .file("runbook.toml", &inventory)
        .file("build/index.html", "ok\n")
        .file(
            "build/.env",
            &format!("APP_KEY=base64:{ENV_FILE}\nDB_PASSWORD={DB_PASSWORD}\n"),
        )
        .file("scripts/s.rhai", script)
        .env("RB_SLACK", &slack.url(&format!("/services/{HOOK}")))
        .env("RB_PD", ROUTING_KEY)
        .env("RB_MAIL_PASSWORD", SMTP_PASSWORD)
        .env("RB_DB_PASSWORD", DB_PASSWORD)
        .env("RUST_LOG", "trace");
    let mut problems = Vec::new();
    let mut scanned = 0usize;
    for args in [
        vec!["run", "s", "-e", "dev", "-vvv"],
        vec!["run", "s", "-e", "dev", "--json", "-vvv"],
        vec![
            "run",
            "s",
            "-e",
            "dev",
            "--dry-run",
            "--plan-out",
            "plan.json",
        ],
    ] {
        let out = t.run_with(&args);
        out.code(1);
        assert!(
            out.stderr.contains("could not log in with ***")
                || out.stdout.contains("could not log in with ***"),
            "the error itself is shown, masked ({args:?}):\n{}",
            out.stderr
        );
        scanned += out.stdout.len() + out.stderr.len();
        problems.extend(leaks(&format!("{args:?} stdout"), &out.stdout, &[]));
        problems.extend(leaks(&format!("{args:?} stderr"), &out.stderr, &[]));
    }
    for file in ["audit.jsonl", "plan.json"] {
        let text =
            std::fs::read_to_string(t.path().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        scanned += text.len();
        problems.extend(leaks(file, &text, &[]));
    }
    // The REPL: results, errors and history.
    let repl = t.repl(
        "dev",
        &format!(
            "let db = secret(\"RB_DB_PASSWORD\");\ndb\nlet typed = \"{DB_PASSWORD}\";\nthrow db;\n"
        ),
    );
    let (rout, rerr) = (
        String::from_utf8_lossy(&repl.stdout).into_owned(),
        String::from_utf8_lossy(&repl.stderr).into_owned(),
    );
    scanned += rout.len() + rerr.len();
    problems.extend(leaks("repl stdout", &rout, &[]));
    problems.extend(leaks("repl stderr", &rerr, &[]));
    let history = std::fs::read_to_string(t.path().join("history")).unwrap_or_default();
    assert!(history.contains("secret(\"RB_DB_PASSWORD\")"), "{history}");
    problems.extend(leaks("repl history", &history, &[]));
    // Payloads: each carries only its own credential (Slack's is the URL, not the body).
    let slack_got = slack.received();
    assert!(!slack_got.is_empty(), "Slack received nothing");
    for r in &slack_got {
        scanned += r.body.len();
        problems.extend(leaks("slack payload", &r.body, &[]));
    }
    let pd_got = pagerduty.received();
    assert!(!pd_got.is_empty(), "PagerDuty received nothing");
    for r in &pd_got {
        scanned += r.body.len();
        problems.extend(leaks("pagerduty payload", &r.body, &[ROUTING_KEY]));
        assert!(
            r.body.contains(ROUTING_KEY),
            "the routing key is PagerDuty's credential"
        );
    }
    let mails = smtp.mails.lock().unwrap().clone();
    assert!(!mails.is_empty(), "no mail arrived");
    for m in &mails {
        scanned += m.data.len();
        problems.extend(leaks("mail", &m.data, &[]));
    }
    eprintln!(
        "secrets: {} planted values, {scanned} bytes of output, files and payloads scanned, {} leaks",
        ALL.len(),
        problems.len()
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
