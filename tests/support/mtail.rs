//! A real `mtail` (Debian's `mtail`) running the shipped program
//! `examples/mtail/runbook.mtail` over a balancer access log (`log_format runbook '$msec
//! $runbook_pool $status $request_time'`), serving `askproai_http_requests_total{pool,status}`
//! and `askproai_http_request_duration_seconds{pool,le}` on `/metrics` at a free port of
//! 127.0.0.1; killed when dropped.
//!
//! mtail tails a log from its end: lines written before it opened the file are not counted.
//! [`Mtail::wait_ready`] returns once it tails the log, so a test writes its lines after.
//!
//! Usually started with Prometheus and the Pushgateway by
//! [`Observability::start`](crate::support::prometheus::Observability::start).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub(crate) const BIN: &str = "/usr/bin/mtail";

/// The shipped program.
pub(crate) fn program() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mtail/runbook.mtail")
}

pub(crate) struct Mtail {
    pub port: u16,
    /// The access log it tails.
    pub access_log: PathBuf,
    log: PathBuf,
    child: Child,
}

/// `mtail --compile_only` over the programs in `progs` (a directory): `Ok(its log)` when
/// they compile, `Err(its log)` when not.
pub(crate) fn compile_only(progs: &Path) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(["--compile_only", "--logtostderr", "--address", "127.0.0.1"])
        .args(["--port", "0", "--progs"])
        .arg(progs)
        .current_dir(progs)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{BIN}: {e}"))?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(log)
    } else {
        Err(log)
    }
}

impl Mtail {
    /// Starts it over `access_log` (created empty when missing), the program copied into
    /// `dir`, without waiting; see [`Mtail::wait_ready`].
    pub(crate) fn spawn(dir: &Path, access_log: &Path) -> Result<Mtail, String> {
        let progs = dir.join("mtail-progs");
        std::fs::create_dir_all(&progs).map_err(|e| e.to_string())?;
        std::fs::copy(program(), progs.join("runbook.mtail"))
            .map_err(|e| format!("{}: {e}", program().display()))?;
        if !access_log.exists() {
            std::fs::write(access_log, "").map_err(|e| format!("{}: {e}", access_log.display()))?;
        }
        let port = crate::support::free_port_on("127.0.0.1");
        let log = dir.join("mtail.log");
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(BIN)
            .args(["--address", "127.0.0.1", "--port", &port.to_string()])
            .args(["--logtostderr", "--poll_interval", "100ms", "--progs"])
            .arg(&progs)
            .arg("--logs")
            .arg(access_log)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{BIN}: {e}"))?;
        Ok(Mtail {
            port,
            access_log: access_log.to_path_buf(),
            log,
            child,
        })
    }

    /// Waits (bounded) until it serves `/metrics` and tails the access log.
    pub(crate) fn wait_ready(&mut self, secs: u64) -> Result<(), String> {
        let tailing = format!("Tailing {}", self.access_log.display());
        let log = self.log.clone();
        let port = self.port;
        crate::support::prometheus::ready(&mut self.child, &self.log, secs, "mtail", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&tailing))
                && crate::support::get("127.0.0.1", port, "/metrics").0 == 200
        })
    }

    /// What it exports now, in the Prometheus text format.
    pub(crate) fn metrics(&self) -> String {
        crate::support::get("127.0.0.1", self.port, "/metrics").1
    }
}

impl Drop for Mtail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
