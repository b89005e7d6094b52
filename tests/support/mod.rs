//! The parts of a production-shaped test fleet (issue 15): hosts that are separate
//! machines as far as a deploy can tell (`host`), one MariaDB (`mariadb`) and one Redis
//! (`redis`) shared by the fleet, a supervised queue worker (`supervisor`), an nginx load
//! balancer (`balancer`), and the fleet that puts them together (`prod`).
//!
//! Every part stops exactly what it started when dropped. A part that cannot start here
//! skips its test with a message — under `CI=true` it fails the test instead
//! ([`available`]).

pub(crate) mod balancer;
pub(crate) mod fleet; // the old shared-disk fleet: sshd hosts under one disk, for argv, quoting and netns tests
pub(crate) mod harness; // the binary under test: Test (a temp project, its own state dir), Output assertions
pub(crate) mod host;
pub(crate) mod mariadb;
pub(crate) mod mtail; // mtail over the balancer's access log: the seed's askproai_http_* metrics
pub(crate) mod prod;
pub(crate) mod prometheus; // Prometheus + Pushgateway + mtail, one call: prometheus::Observability::start
pub(crate) mod pushgateway;
pub(crate) mod receivers; // real HTTP and SMTP receivers, and Slack/PagerDuty wire-format fakes
pub(crate) mod redis;
pub(crate) mod stack; // the shared-disk strategies topology and the load generator
pub(crate) mod supervisor;
pub(crate) mod web;
pub(crate) mod web_host;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `Some(part)` when it started; else `None` with a SKIPPED message, or a panic under
/// `CI=true` (a part that cannot start there must fail the tests, not hide them).
pub(crate) fn available<T>(what: &str, started: Result<T, String>) -> Option<T> {
    match started {
        Ok(t) => Some(t),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{what} cannot start under CI=true: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: {what} unavailable: {why}");
            None
        }
    }
}

/// The first of `paths` that is missing, as "missing PACKAGE" — `None` when all exist.
pub(crate) fn missing(paths: &[(&str, &str)]) -> Option<String> {
    let gone: Vec<&str> = paths
        .iter()
        .filter(|(p, _)| !std::path::Path::new(p).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    (!gone.is_empty()).then(|| {
        format!(
            "missing {} (apt-get install -y {})",
            gone.join(", "),
            gone.join(" ")
        )
    })
}

/// A port nobody listens on at `addr` right now.
pub(crate) fn free_port_on(addr: &str) -> u16 {
    std::net::TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// A plain HTTP/1.0 GET: (status, body); status 0 when nothing answered.
pub(crate) fn get(addr: &str, port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect((addr, port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits (bounded) until `ready` holds; `Err(what)` after `secs`.
pub(crate) fn wait_until(
    secs: u64,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !ready() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{what} within {secs} s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
