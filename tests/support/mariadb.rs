//! A real MariaDB on its own data dir and unix socket (and, for a fleet, on a free port
//! of 127.0.0.1), started and stopped by the test. The test talks to it as root over the
//! socket; the app and runbook use a user with a password over TCP.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct MariaDb {
    pub dir: tempfile::TempDir,
    /// The TCP port on 127.0.0.1, when listening there.
    pub port: Option<u16>,
    child: Child,
}

fn why_unavailable() -> Option<String> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return Some("MariaDB runs as root in the tests".into());
    }
    crate::support::missing(&[
        ("/usr/sbin/mariadbd", "mariadb-server"),
        ("/usr/bin/mariadb-install-db", "mariadb-server"),
        ("/usr/bin/mysqldump", "mariadb-client"),
    ])
}

impl MariaDb {
    /// On a unix socket only (no networking); `None` (skipped) where it cannot run,
    /// a failure under `CI=true`.
    pub(crate) fn start() -> Option<MariaDb> {
        crate::support::available("MariaDB", MariaDb::try_start(None))
    }

    /// Also on a free port of 127.0.0.1.
    pub(crate) fn start_tcp() -> Result<MariaDb, String> {
        MariaDb::try_start(Some(crate::support::free_port_on("127.0.0.1")))
    }

    fn try_start(port: Option<u16>) -> Result<MariaDb, String> {
        if let Some(why) = why_unavailable() {
            return Err(why);
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).map_err(|e| e.to_string())?;
        let out = Command::new("/usr/bin/mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            // Its own temporary directory: two bootstraps at once (in hosts with their own
            // PID namespaces, the same pid) must not meet in /tmp (seen in CI).
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "mariadb-install-db: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let sock = dir.path().join("mysql.sock");
        let mut cmd = Command::new("/usr/sbin/mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!(
                "--log-error={}",
                dir.path().join("error.log").display()
            ))
            .args([
                "--user=root",
                "--skip-name-resolve",
                "--innodb-flush-log-at-trx-commit=0",
            ]);
        match port {
            Some(p) => cmd.args(["--bind-address=127.0.0.1", &format!("--port={p}")]),
            None => cmd.arg("--skip-networking"),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("mariadbd: {e}"))?;
        let db = MariaDb { dir, port, child };
        let deadline = Instant::now() + Duration::from_mins(1);
        while db.try_sql("select 1").is_none() {
            if Instant::now() > deadline {
                return Err(format!(
                    "MariaDB did not start: {}",
                    std::fs::read_to_string(db.dir.path().join("error.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(db)
    }

    pub(crate) fn socket(&self) -> String {
        self.dir.path().join("mysql.sock").display().to_string()
    }

    /// Creates database `name` and user `name`@127.0.0.1 identified by `password`, with
    /// every right on it.
    pub(crate) fn create_app_database(&self, name: &str, password: &str) -> Result<(), String> {
        self.run_sql(&format!(
            "create database `{name}` character set utf8mb4; create user '{name}'@'127.0.0.1' identified by '{password}'; grant all on `{name}`.* to '{name}'@'127.0.0.1';"
        ))
        .map(|_| ())
    }

    pub(crate) fn run_sql(&self, q: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args([
                "--batch",
                "--skip-column-names",
                "--user=root",
                "--default-character-set=utf8mb4",
            ])
            .arg(format!("--socket={}", self.socket()))
            .args(["-e", q])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub(crate) fn try_sql(&self, q: &str) -> Option<String> {
        self.run_sql(q).ok()
    }

    #[track_caller]
    pub(crate) fn sql(&self, q: &str) -> String {
        self.run_sql(q)
            .unwrap_or_else(|e| panic!("query failed: {q}\n{e}"))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        crate::web::terminate(std::slice::from_mut(&mut self.child));
    }
}
