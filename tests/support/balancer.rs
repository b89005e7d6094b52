//! nginx as a load balancer in front of the web hosts: upstream `stable` (their
//! `current`) and `next` (their `next`), chosen by `$runbook_pool` from the traffic file
//! runbook writes (`vars.traffic`), per sticky cohort (the `runbook_cohort` cookie it
//! sets), with an access log in the canary judge's format (`access.log`). It runs as the deploy user, so that
//! runbook can steer it over SSH like a real one: on this machine ([`Balancer::start`],
//! for fleets that share its disk) or on a host of its own ([`Balancer::start_on`], for
//! the production-shaped fleet, where each host has its own /run and PID namespace).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::host::{self, NsHost};

pub(crate) struct Balancer {
    pub addr: String,
    pub port: u16,
    /// Its files as this machine sees them.
    pub dir: PathBuf,
    /// The same directory as the machine nginx runs on sees it.
    inside: PathBuf,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

/// Sticky cohorts, as in examples/nginx/lb.conf: the `runbook_cohort` cookie, or for a
/// client without one this request's id — which the answer then sets as its cookie.
const COHORT: &str = "  map $cookie_runbook_cohort $runbook_cohort { \"\" $request_id; default $cookie_runbook_cohort; }\n  map $cookie_runbook_cohort $runbook_cohort_cookie { \"\" \"runbook_cohort=$request_id; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax\"; default \"\"; }\n";

fn config(inside: &Path, addr: &str, port: u16, stable: &[String], next: &[String]) -> String {
    let servers = |s: &[String]| -> String {
        s.iter()
            .map(|p| format!("server {p};"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 512; }}\nhttp {{\n  client_body_temp_path {d}/t-body;\n  proxy_temp_path {d}/t-proxy;\n  fastcgi_temp_path {d}/t-fcgi;\n  uwsgi_temp_path {d}/t-uwsgi;\n  scgi_temp_path {d}/t-scgi;\n  upstream stable {{ {s} }}\n  upstream next {{ {n} }}\n{COHORT}  include {d}/traffic.conf;\n  log_format runbook '$msec $runbook_pool $status $request_time';\n  access_log {d}/access.log runbook;\n  server {{\n    listen {addr}:{port};\n    location / {{ proxy_pass http://$runbook_pool; proxy_set_header Host $host; add_header Set-Cookie $runbook_cohort_cookie always; }}\n  }}\n}}\n",
        d = inside.display(),
        s = servers(stable),
        n = servers(next),
    )
}

fn write_files(dir: &Path, text: &str) -> Result<(), String> {
    let deploy = host::deploy_ids()?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(dir, Some(deploy.0), Some(deploy.1)).map_err(|e| e.to_string())?;
    host::write(&dir.join("nginx.conf"), text, 0o644, Some(deploy))?;
    host::write(
        &dir.join("traffic.conf"),
        "split_clients \"$runbook_cohort\" $runbook_pool { * stable; }\n",
        0o644,
        Some(deploy),
    )
}

impl Balancer {
    /// On this machine, on a free port of 127.0.0.1. `stable` and `next`: the upstream
    /// servers, "ADDRESS:PORT" each.
    pub(crate) fn start(stable: &[String], next: &[String]) -> Result<Balancer, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().to_path_buf();
        let port = crate::support::free_port_on("127.0.0.1");
        write_files(&dir, &config(&dir, "127.0.0.1", port, stable, next))?;
        let (uid, gid) = host::deploy_ids()?;
        let child = Command::new("/usr/sbin/nginx")
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nginx (balancer): {e}"))?;
        let lb = Balancer {
            addr: "127.0.0.1".into(),
            port,
            inside: dir.clone(),
            dir,
            child: Some(child),
            _tmp: Some(tmp),
        };
        lb.wait()?;
        Ok(lb)
    }

    /// On host `h` (its files under the host's `/run/lb`), on a free port of 127.0.0.1
    /// (the network is shared: load generators reach it as they reach [`Balancer::start`]'s).
    /// nginx stops with the host.
    pub(crate) fn start_on(
        h: &mut NsHost,
        stable: &[String],
        next: &[String],
    ) -> Result<Balancer, String> {
        let inside = PathBuf::from("/run/lb");
        let dir = h.path("/run/lb");
        let port = crate::support::free_port_on("127.0.0.1");
        // As the deploy user, who owns the files and signals the master (its pid file).
        write_files(&dir, &config(&inside, "127.0.0.1", port, stable, next))?;
        h.spawn(
            &[
                "/usr/sbin/nginx",
                "-e",
                "/run/lb/error.log",
                "-c",
                "/run/lb/nginx.conf",
                "-g",
                "daemon off;",
            ],
            true,
        )?;
        let lb = Balancer {
            addr: "127.0.0.1".into(),
            port,
            dir,
            inside,
            child: None,
            _tmp: None,
        };
        lb.wait()?;
        Ok(lb)
    }

    fn wait(&self) -> Result<(), String> {
        crate::support::wait_until(10, "the balancer to come up", || {
            crate::fleet::listening(&self.addr, self.port)
        })
        .map_err(|e| {
            let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
            format!("{e}:\n{log}")
        })
    }

    /// The nginx command line (as an inventory list) with extra arguments `args`.
    pub(crate) fn nginx(&self, args: &str) -> String {
        let d = self.inside.display();
        format!(
            "[\"/usr/sbin/nginx\", \"-e\", \"{d}/error.log\", \"-c\", \"{d}/nginx.conf\", {args}]"
        )
    }

    /// The traffic file, as the balancer's machine sees it (for `vars.traffic.file`).
    pub(crate) fn traffic_file(&self) -> String {
        self.inside.join("traffic.conf").display().to_string()
    }

    /// The access log in the judge's format (`log_format runbook`), as the balancer's
    /// machine sees it (for `vars.traffic.access_log`).
    pub(crate) fn access_log(&self) -> String {
        self.inside.join("access.log").display().to_string()
    }

    /// The access log's lines, as this machine reads them.
    pub(crate) fn access_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The traffic file, as this machine sees it.
    pub(crate) fn traffic_file_here(&self) -> PathBuf {
        self.dir.join("traffic.conf")
    }

    pub(crate) fn traffic(&self) -> String {
        std::fs::read_to_string(self.dir.join("traffic.conf")).unwrap_or_default()
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}:{}", self.addr, self.port)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            crate::web::terminate(std::slice::from_mut(c));
        }
    }
}
