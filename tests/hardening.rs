//! The small holes of issue 17: a secret that spans lines, terminal escapes from hosts,
//! SMTP without TLS to a remote host, health checks steered by redirects or drowned by a
//! huge body, a world-readable audit log, and `runbook init` writing through a link.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use crate::harness::{INVENTORY, Test};

const PEM_HEAD: &str = "-----BEGIN PLANTED KEY-----";
const PEM_BODY: &str = "cGxhbnRlZC1tdWx0aS1saW5lLWtleS1ib2R5";
const PEM_TAIL: &str = "-----END PLANTED KEY-----";

#[test]
fn every_line_of_a_multi_line_secret_is_masked_in_output_json_and_audit() {
    let key = format!("{PEM_HEAD}\n{PEM_BODY}\n{PEM_TAIL}");
    // Printed whole by one command (stdout, one line at a time), printed to stderr by a
    // failing one (its error carries the stderr tail), and short lines that are no secret.
    let script = r#"
let key = secret("RB_PEM");
local::run(["printf", "%s\n", key]);
local::run(["sh", "-c", "echo '{'; echo '-----'"]);
ssh::run(hosts("one"), ["sh", "-c", "printf 'key: %s\n' \"$1\" >&2; exit 3", "sh", key]);
"#;
    let t = Test::new()
        .file("scripts/s.rhai", script)
        .env("RB_PEM", &key);
    let mut problems = Vec::new();
    for args in [
        vec!["run", "s", "-e", "dev", "-vvv"],
        vec!["run", "s", "-e", "dev", "--json", "-vvv"],
    ] {
        let out = t.run_with(&args);
        out.code(1);
        out.stderr_has("exited with code 3");
        for (what, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            for line in [PEM_HEAD, PEM_BODY, PEM_TAIL] {
                if text.contains(line) {
                    problems.push(format!("{args:?} {what} contains {line}"));
                }
            }
        }
        // Lines too short to be a secret of their own are left alone.
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            all.contains('{') && all.contains("-----"),
            "short lines were masked too:\n{all}"
        );
    }
    let audit = std::fs::read_to_string(t.path().join("audit.jsonl")).expect("audit log");
    assert!(audit.contains("***"), "{audit}");
    for line in [PEM_HEAD, PEM_BODY, PEM_TAIL] {
        if audit.contains(line) {
            problems.push(format!("audit.jsonl contains {line}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// What a hostile host prints: OSC 52 (set the clipboard), OSC 0 (retitle the window), a
/// carriage return and erase-line to hide what came before, a C1 CSI, DEL.
const HOSTILE: &str =
    r"clip\033]52;c;aGVsbG8=\007 title\033]0;owned\007 ok\r\033[2Kerased \302\233 31m \177end\n";

/// Bytes a terminal would act on (C0 except tab and newline, DEL, C1 as UTF-8 C2 80–9F):
/// how many, and where the first is.
fn raw_controls(what: &str, bytes: &[u8]) -> Option<String> {
    let hits: Vec<usize> = (0..bytes.len())
        .filter(|&i| {
            let b = bytes[i];
            let c1 = b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n));
            (b < 0x20 && b != b'\t' && b != b'\n') || b == 0x7f || c1
        })
        .collect();
    let first = *hits.first()?;
    let context = &bytes[first.saturating_sub(20)..(first + 20).min(bytes.len())];
    Some(format!(
        "{what}: {} raw control bytes, the first {:#04x} at {first}: {:?}",
        hits.len(),
        bytes[first],
        String::from_utf8_lossy(context)
    ))
}

#[test]
fn escape_sequences_from_hosts_never_reach_the_terminal_raw() {
    let script = format!(
        r#"
local::run(["printf", "{HOSTILE}"]);
print(ssh::run(hosts("one")[0], ["printf", "{HOSTILE}"]).stdout);
ssh::run(hosts("one"), ["sh", "-c", "printf '{HOSTILE}' >&2; exit 4"]);
"#,
        HOSTILE = HOSTILE.replace('\\', "\\\\")
    );
    let t = Test::new().file("scripts/s.rhai", &script);
    let mut problems = Vec::new();
    for args in [
        vec!["run", "s", "-e", "dev"],
        vec!["run", "s", "-e", "dev", "-vvv"],
        vec!["run", "s", "-e", "dev", "--json", "-vvv"],
    ] {
        let out = t.command().args(&args).output().expect("runbook runs");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        // The failing command is the one that ended the run (its stderr tail is in the error).
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("exited with code 4"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        problems.extend(raw_controls(&format!("{args:?} stdout"), &out.stdout));
        problems.extend(raw_controls(&format!("{args:?} stderr"), &out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Shown visibly instead: the operator sees what the host tried.
        if !(stderr.contains(r"\x1b]52;c;aGVsbG8=\x07") && stderr.contains(r"ok\r\x1b[2Kerased")) {
            problems.push(format!(
                "{args:?}: the escapes are not shown visibly:\n{stderr}"
            ));
        }
        if args.contains(&"--json") {
            // JSON keeps the original characters, escaped by JSON.
            let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON"))
                .collect();
            assert!(
                events.iter().any(|e| e["event"] == "output"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("\x1b]52;c;") && m.contains("\u{9b}"))),
                "no output event keeps the original text"
            );
        }
    }
    // The REPL: a result, an error with a stderr tail, and `:last`.
    let input = format!(
        "ssh::run(hosts(\"one\"), [\"printf\", \"{h}\"])\n:last\nssh::run(hosts(\"one\"), [\"sh\", \"-c\", \"printf '{h}' >&2; exit 4\"])\n",
        h = HOSTILE.replace('\\', "\\\\")
    );
    let repl = t.repl("dev", &input);
    problems.extend(raw_controls("repl stdout", &repl.stdout));
    problems.extend(raw_controls("repl stderr", &repl.stderr));
    let shown = String::from_utf8_lossy(&repl.stdout);
    if shown.matches(r"\x1b]52;c;").count() < 2 {
        problems.push(format!(
            "the REPL result and :last do not show the escape visibly:\n{shown}"
        ));
    }
    eprintln!(
        "escapes: {} raw control bytes reached the terminal",
        problems.len()
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn smtp_without_tls_is_refused_for_a_host_that_is_not_loopback() {
    let email = |host: &str| {
        format!(
            "{INVENTORY}\n[notify.email]\nhost = {host}\nport = \"2525\"\ntls = \"none\"\nfrom = \"runbook@example.test\"\nto = \"oncall@example.test\"\n"
        )
    };
    let remote = Test::bare().file("runbook.toml", &email("\"192.0.2.10\""));
    let out = remote.run_with(&["check"]);
    assert_ne!(out.code, 0, "check accepted tls = none to 192.0.2.10");
    out.stderr_has("notify.email.tls").stderr_has("192.0.2.10");
    for host in ["\"127.0.0.9\"", "\"localhost\"", "\"::1\""] {
        Test::bare()
            .file("runbook.toml", &email(host))
            .run_with(&["check"])
            .code(0);
    }
    // A host named by an environment variable is judged when the mail is sent: refused
    // before any connection is made.
    let t = Test::bare()
        .file("runbook.toml", &email("{ env = \"RB_MAIL_HOST\" }"))
        .file(
            "scripts/mail.rhai",
            "notify::email(#{ subject: \"s\", body: \"b\", required: true });\n",
        )
        .env("RB_MAIL_HOST", "192.0.2.10");
    let started = std::time::Instant::now();
    let out = t.run_with(&["run", "mail", "-e", "dev"]);
    out.code(1).stderr_has("notify.email.tls");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the refusal comes before any attempt to connect"
    );
}

/// An HTTP server on a loopback address, answering with `respond`.
struct Server {
    port: u16,
    http: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Respond = dyn Fn(&str) -> tiny_http::ResponseBox + Send + Sync;

impl Server {
    fn start(addr: &str, respond: Box<Respond>) -> Server {
        let server = Arc::new(tiny_http::Server::http(format!("{addr}:0")).expect("bind"));
        let port = server.server_addr().to_ip().map_or(0, |a| a.port());
        let s = server.clone();
        let respond: Arc<Respond> = Arc::from(respond);
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let respond = respond.clone();
                std::thread::spawn(move || {
                    let response = respond(req.url());
                    let _ = req.respond(response);
                });
            }
        });
        Server {
            port,
            http: server,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k, v).expect("header")
}

#[test]
fn a_redirect_to_another_host_is_not_followed_unless_asked() {
    // The balancer on another loopback address answers healthy for everyone.
    let balancer = Server::start(
        "127.0.0.2",
        Box::new(|_| {
            tiny_http::Response::from_string(r#"{"who":"balancer"}"#)
                .with_header(header("Content-Type", "application/json"))
                .boxed()
        }),
    );
    let to = format!("http://127.0.0.2:{}/api/health", balancer.port);
    let backend = Server::start(
        "127.0.0.1",
        Box::new(move |url| match url {
            "/api/health" => tiny_http::Response::empty(302)
                .with_header(header("Location", &to))
                .boxed(),
            "/moved" => tiny_http::Response::empty(301)
                .with_header(header("Location", "/here"))
                .boxed(),
            _ => tiny_http::Response::from_string(r#"{"who":"backend"}"#).boxed(),
        }),
    );
    let a = format!("http://127.0.0.1:{}", backend.port);
    let script = r#"
let r = health::check(args.a + "/api/health");
print(`CROSS ok=${r.ok} status=${r.status} error=${r.error}`);
print(`CROSS final=${r.final_url}`);
let s = health::check(args.a + "/moved");
print(`SAME ok=${s.ok} who=${s.json.who} final=${s.final_url}`);
let f = health::check(args.a + "/api/health", #{ follow_redirects: true });
print(`FOLLOW ok=${f.ok} who=${f.json.who} final=${f.final_url}`);
"#;
    let t = Test::new().file("scripts/h.rhai", script);
    let out = t.run_with(&["run", "h", "-e", "dev", &format!("a={a}")]);
    out.stdout_has("CROSS ok=false status=302 error=status 302")
        .stdout_has(&format!("CROSS final={a}/api/health"));
    out.code(0)
        .stdout_has(&format!("to http://127.0.0.2:{}/api/health", balancer.port))
        .stdout_has("follow_redirects: true")
        .stdout_has(&format!("SAME ok=true who=backend final={a}/here"))
        .stdout_has(&format!(
            "FOLLOW ok=true who=balancer final=http://127.0.0.2:{}/api/health",
            balancer.port
        ));
    // The log line of a followed check says who answered.
    out.stderr_has(&format!("(answered by http://127.0.0.2:{}", balancer.port));
}

/// Runs `cmd` to its end and returns (exit code, peak resident memory in bytes).
// The child is reaped by `wait4` (which also reports its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn max_rss(mut cmd: std::process::Command) -> (i32, u64) {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runbook starts");
    let pid = i32::try_from(child.id()).expect("pid");
    let mut stdout = child.stdout.expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for the child we started.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not waited for elsewhere.
    let r = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let _ = reader.join();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    // Linux reports ru_maxrss in KiB.
    (code, u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024)
}

#[test]
fn a_400_mb_health_body_costs_less_than_16_mib() {
    const HUGE: u64 = 400 << 20;
    let server = Server::start(
        "127.0.0.1",
        Box::new(|_| {
            // Chunked (no length), like a runaway debug endpoint.
            tiny_http::Response::new(
                tiny_http::StatusCode(200),
                vec![header("Content-Type", "text/plain")],
                Box::new(std::io::repeat(b'x').take(HUGE)) as Box<dyn Read + Send>,
                None,
                None,
            )
        }),
    );
    let small = Server::start(
        "127.0.0.1",
        Box::new(|_| tiny_http::Response::from_string("ok").boxed()),
    );
    let script = r#"
let r = health::check(args.url, #{ timeout: "60s" });
print(`ok=${r.ok} body=${r.body.len()}`);
"#;
    let t = Test::new().file("scripts/h.rhai", script);
    let url = |port: u16| format!("url=http://127.0.0.1:{port}/");
    let mut cmd = t.command();
    cmd.args(["run", "h", "-e", "dev", &url(small.port)]);
    let (code, baseline) = max_rss(cmd);
    assert_eq!(code, 0, "the small check runs");
    let mut cmd = t.command();
    cmd.args(["run", "h", "-e", "dev", &url(server.port)]);
    let started = std::time::Instant::now();
    let (code, huge) = max_rss(cmd);
    assert_eq!(code, 0, "the huge check runs");
    let cost = huge.saturating_sub(baseline);
    eprintln!(
        "health body: a {} MiB answer: peak RSS {} KiB (a 2-byte answer: {} KiB), {} KiB more, in {:?}",
        HUGE >> 20,
        huge >> 10,
        baseline >> 10,
        cost >> 10,
        started.elapsed()
    );
    assert!(
        cost < 16 << 20,
        "a {} MiB body cost {} MiB of memory",
        HUGE >> 20,
        cost >> 20
    );
}

#[test]
fn the_audit_log_is_private_and_an_old_one_is_tightened() {
    let t = Test::new().file("scripts/s.rhai", "local::run([\"true\"]);\n");
    let state = t.path().join("state");
    let run = || {
        let out = t
            .command()
            .env_remove("RUNBOOK_AUDIT_FILE")
            .env("XDG_STATE_HOME", &state)
            .args(["run", "s", "-e", "dev"])
            .output()
            .expect("runbook runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let (dir, log) = (state.join("runbook"), state.join("runbook/audit.jsonl"));
    run();
    assert_eq!(
        (mode(&dir), mode(&log)),
        (0o700, 0o600),
        "a new log and its directory"
    );
    // A log an older version left world-readable is tightened when next written.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    run();
    assert_eq!(
        (mode(&dir), mode(&log)),
        (0o700, 0o600),
        "an existing log and its directory"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
}

#[test]
fn init_refuses_to_write_through_a_symlink() {
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("planted.rhai");
    // A dangling link at a path init writes.
    let t = Test::bare();
    std::fs::create_dir(t.path().join("scripts")).unwrap();
    std::os::unix::fs::symlink(&target, t.path().join("scripts/deploy.rhai")).unwrap();
    let out = t.run_with(&["init"]);
    assert_ne!(
        out.code, 0,
        "init wrote through a dangling link:\n{}",
        out.stderr
    );
    out.stderr_has("scripts/deploy.rhai")
        .stderr_has("symbolic link")
        .stderr_has("nothing was written");
    assert!(!target.exists(), "a file was created through the link");
    assert!(
        !t.path().join("runbook.toml").exists(),
        "nothing is written when one path is refused"
    );
    // A linked directory.
    let t = Test::bare();
    std::os::unix::fs::symlink(outside.path(), t.path().join("scripts")).unwrap();
    let out = t.run_with(&["init"]);
    assert_ne!(out.code, 0, "init wrote through a linked directory");
    out.stderr_has("symbolic link");
    let written: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(
        written.is_empty(),
        "files were written through the link: {written:?}"
    );
}
