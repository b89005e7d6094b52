//! nginx as a load balancer in front of the web hosts: upstream `stable` (their
//! `current`) and `next` (their `next`), chosen per request by `$runbook_pool` from the
//! traffic file runbook writes (`vars.traffic`). It runs as the deploy user, so that
//! runbook can steer it over SSH like a real one.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::USER;

pub struct Balancer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Balancer {
    /// `stable` and `next`: the upstream servers, "ADDRESS:PORT" each.
    pub fn start(stable: &[String], next: &[String]) -> Result<Balancer, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let servers = |s: &[String]| -> String {
            s.iter()
                .map(|p| format!("server {p};"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let port = crate::support::free_port_on("127.0.0.1");
        std::fs::write(
            d.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 512; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/t-body;\n  proxy_temp_path {d}/t-proxy;\n  fastcgi_temp_path {d}/t-fcgi;\n  uwsgi_temp_path {d}/t-uwsgi;\n  scgi_temp_path {d}/t-scgi;\n  upstream stable {{ {s} }}\n  upstream next {{ {n} }}\n  include {d}/traffic.conf;\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://$runbook_pool; proxy_set_header Host $host; }}\n  }}\n}}\n",
                d = d.display(),
                s = servers(stable),
                n = servers(next),
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            d.join("traffic.conf"),
            "split_clients \"$request_id\" $runbook_pool { * stable; }\n",
        )
        .map_err(|e| e.to_string())?;
        Command::new("chown")
            .args(["-R", USER])
            .arg(d)
            .status()
            .map_err(|e| e.to_string())?;
        let (uid, gid) = crate::support::host::deploy_ids()?;
        let child = Command::new("/usr/sbin/nginx")
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nginx (balancer): {e}"))?;
        let lb = Balancer { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(lb.dir.path().join("error.log")).unwrap_or_default();
                return Err(format!("the balancer did not come up:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(lb)
    }

    /// The nginx command line (as an inventory list) with extra arguments `args`.
    pub fn nginx(&self, args: &str) -> String {
        let d = self.dir.path().display();
        format!(
            "[\"/usr/sbin/nginx\", \"-e\", \"{d}/error.log\", \"-c\", \"{d}/nginx.conf\", {args}]"
        )
    }

    pub fn traffic(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("traffic.conf")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        crate::web::terminate(std::slice::from_mut(&mut self.child));
    }
}
