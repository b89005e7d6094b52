//! Real nginx + php-fpm on loopback, serving `<dir>/public` of each site (a host's `current` or `next`) of each test
//! host with `$realpath_root` (so a switch is visible on the next request). The pool runs
//! as the fleet's `deploy` user. Dropping the stack stops exactly what it started.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct WebStack {
    pub dir: tempfile::TempDir,
    /// host name -> port nginx serves its `current/public` on
    pub ports: Vec<(String, u16)>,
    children: Vec<Child>,
}

fn php_fpm() -> Option<PathBuf> {
    std::fs::read_dir("/usr/sbin")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("php-fpm"))
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

impl WebStack {
    /// `sites`: (site name, the link it serves, e.g. `<deploy_path>/current`). `None` (with a message) when nginx, php-fpm or
    /// Debian's Laravel are missing — a failure under `CI=true`.
    pub(crate) fn start(sites: &[(String, String)]) -> Option<WebStack> {
        let missing = [
            ("/usr/sbin/nginx", "nginx"),
            (
                "/usr/share/php/Illuminate/autoload.php",
                "php-laravel-framework",
            ),
            ("/usr/bin/php", "php-cli"),
        ]
        .iter()
        .filter(|(p, _)| !Path::new(p).exists())
        .map(|(_, pkg)| *pkg)
        .chain(php_fpm().is_none().then_some("php-fpm"))
        .collect::<Vec<_>>();
        let why = if missing.is_empty() {
            None
        } else {
            Some(format!("missing {}", missing.join(", ")))
        };
        let result = match why {
            Some(w) => Err(w),
            None => WebStack::try_start(sites),
        };
        match result {
            Ok(s) => Some(s),
            Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("nginx + php-fpm cannot start under CI=true: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED: nginx + php-fpm unavailable: {why}");
                None
            }
        }
    }

    fn try_start(sites: &[(String, String)]) -> Result<WebStack, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        // Workers run as `deploy`: they must reach the socket and temp dirs.
        Command::new("chmod")
            .arg("755")
            .arg(d)
            .status()
            .map_err(|e| e.to_string())?;
        let sock = d.join("php-fpm.sock");
        std::fs::write(
            d.join("php-fpm.conf"),
            format!(
                "[global]\npid = {d}/php-fpm.pid\nerror_log = {d}/php-fpm.log\ndaemonize = no\n\n[app]\nuser = {u}\ngroup = {u}\nlisten = {s}\nlisten.owner = {u}\nlisten.group = {u}\nlisten.mode = 0660\npm = static\npm.max_children = 4\nclear_env = no\ncatch_workers_output = yes\n",
                d = d.display(),
                u = crate::fleet::USER,
                s = sock.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut servers = String::new();
        let mut ports = Vec::new();
        for (name, root) in sites {
            let port = free_port();
            let _ = writeln!(
                servers,
                "  server {{\n    listen 127.0.0.1:{port};\n    root {root}/public;\n    index index.php;\n    location / {{ try_files $uri /index.php?$query_string; }}\n    location ~ \\.php$ {{\n      include /etc/nginx/fastcgi_params;\n      fastcgi_pass unix:{sock};\n      fastcgi_param SCRIPT_FILENAME $realpath_root$fastcgi_script_name;\n      fastcgi_param DOCUMENT_ROOT $realpath_root;\n    }}\n  }}",
                sock = sock.display()
            );
            ports.push((name.clone(), port));
        }
        let tmp = d.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        Command::new("chown")
            .arg(crate::fleet::USER)
            .arg(&tmp)
            .status()
            .map_err(|e| e.to_string())?;
        std::fs::write(
            d.join("nginx.conf"),
            format!(
                "user {u};\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  fastcgi_temp_path {t}/fastcgi;\n  proxy_temp_path {t}/proxy;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n{servers}}}\n",
                u = crate::fleet::USER,
                d = d.display(),
                t = tmp.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let fpm = php_fpm().ok_or("php-fpm missing")?;
        let mut children = Vec::new();
        children.push(
            Command::new(&fpm)
                .arg("--nodaemonize")
                .arg("--fpm-config")
                .arg(d.join("php-fpm.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", fpm.display()))?,
        );
        children.push(
            Command::new("/usr/sbin/nginx")
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("nginx: {e}"))?,
        );
        let stack = WebStack {
            dir,
            ports,
            children,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(sock.exists()
            && stack
                .ports
                .iter()
                .all(|(_, p)| TcpStream::connect(("127.0.0.1", *p)).is_ok()))
        {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(stack.dir.path().join("nginx-error.log"))
                    .unwrap_or_default();
                let fpm_log = std::fs::read_to_string(stack.dir.path().join("php-fpm.log"))
                    .unwrap_or_default();
                return Err(format!("nginx/php-fpm did not come up:\n{log}\n{fpm_log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(stack)
    }

    pub(crate) fn port(&self, host: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == host)
            .map_or(0, |(_, p)| *p)
    }

    /// `GET path` on a host's site: (status, body).
    pub(crate) fn get(&self, host: &str, path: &str) -> (u16, String) {
        get(self.port(host), path)
    }
}

/// A plain HTTP/1.0 GET on loopback.
pub(crate) fn get(port: u16, path: &str) -> (u16, String) {
    crate::support::get("127.0.0.1", port, path)
}

impl Drop for WebStack {
    fn drop(&mut self) {
        terminate(&mut self.children);
    }
}

/// Stops server processes: SIGTERM lets masters stop their workers too; SIGKILL only if
/// they hang for five seconds.
pub(crate) fn terminate(children: &mut [Child]) {
    for c in children.iter() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id().cast_signed()),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for c in children.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
