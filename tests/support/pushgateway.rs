//! A real Prometheus Pushgateway (Debian's `prometheus-pushgateway`) on a free port of
//! 127.0.0.1, metrics in memory only (no persistence file: the packaged default is under
//! /var/lib, outside the test's directory); killed when dropped.
//!
//! Usually started with Prometheus and mtail by
//! [`Observability::start`](crate::support::prometheus::Observability::start).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) const BIN: &str = "/usr/bin/prometheus-pushgateway";

pub(crate) struct Pushgateway {
    pub port: u16,
    log: PathBuf,
    child: Child,
}

impl Pushgateway {
    /// Starts it (its log in `dir`) without waiting; see [`Pushgateway::wait_ready`].
    pub(crate) fn spawn(dir: &Path) -> Result<Pushgateway, String> {
        let port = crate::support::free_port_on("127.0.0.1");
        let log = dir.join("pushgateway.log");
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(BIN)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--persistence.file=")
            .arg("--log.level=warn")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{BIN}: {e}"))?;
        Ok(Pushgateway { port, log, child })
    }

    /// Waits (bounded) until `/-/ready` answers 200.
    pub(crate) fn wait_ready(&mut self, secs: u64) -> Result<(), String> {
        crate::support::prometheus::ready(
            &mut self.child,
            &self.log,
            secs,
            "the Pushgateway",
            || crate::support::get("127.0.0.1", self.port, "/-/ready").0 == 200,
        )
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// PUTs `text` (the Prometheus text format) as the group `/metrics/job/<job>`,
    /// replacing it — how a test sets a metric Prometheus will scrape from here.
    pub(crate) fn put(&self, job: &str, text: &str) -> Result<(), String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        write!(
            s,
            "PUT /metrics/job/{job} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )
        .map_err(|e| e.to_string())?;
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        match raw.split_whitespace().nth(1) {
            Some(code) if code.starts_with('2') => Ok(()),
            _ => Err(format!("the Pushgateway refused the push: {raw}")),
        }
    }

    /// Everything it holds, in the text format (`GET /metrics`).
    pub(crate) fn metrics(&self) -> String {
        crate::support::get("127.0.0.1", self.port, "/metrics").1
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
