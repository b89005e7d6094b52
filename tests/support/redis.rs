//! One `redis-server` for a fleet (Laravel's cache and queue): a free port of 127.0.0.1,
//! no persistence, its own directory; stopped when dropped.

use std::process::{Child, Command, Stdio};

pub(crate) struct Redis {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Redis {
    pub(crate) fn start() -> Result<Redis, String> {
        if let Some(why) = crate::support::missing(&[
            ("/usr/bin/redis-server", "redis-server"),
            ("/usr/bin/redis-cli", "redis-tools"),
        ]) {
            return Err(why);
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = crate::support::free_port_on("127.0.0.1");
        let child = Command::new("/usr/bin/redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let redis = Redis { dir, port, child };
        crate::support::wait_until(10, "redis-server to answer PING", || {
            redis.cli(&["ping"]).is_ok_and(|o| o.trim() == "PONG")
        })
        .map_err(|e| {
            let log =
                std::fs::read_to_string(redis.dir.path().join("redis.log")).unwrap_or_default();
            format!("{e}: {log}")
        })?;
        Ok(redis)
    }

    /// `redis-cli` against this server.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("/usr/bin/redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        crate::web::terminate(std::slice::from_mut(&mut self.child));
    }
}
