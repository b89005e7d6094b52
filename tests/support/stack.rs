//! The shared-disk strategies topology on loopback: two web hosts and a worker host (a
//! real sshd each, sharing this machine's disk under their own deploy paths), nginx +
//! php-fpm serving each web host's `current` (its `url`) and `next` (its `preview_url`),
//! and an nginx load balancer in front — run as the deploy user, so that runbook steers it
//! over SSH like a real one (`vars.traffic`); and the load generator that sends requests
//! through a balancer during a deploy and counts what failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, USER};
use crate::harness::{Output, Test};
use crate::laravel::Repo;
use crate::support::balancer::Balancer;
use crate::web::{self, WebStack};

/// One answer seen by the load generator.
#[derive(Debug)]
pub(crate) struct Hit {
    pub at: Instant,
    pub status: u16,
    pub release: Option<String>,
}

/// Requests through the balancer, back to back on `threads` threads, until stopped
/// (or five minutes at most).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Hit>>>,
}

#[derive(Default)]
pub(crate) struct Tally {
    pub total: usize,
    /// Non-2xx answers and requests that got no answer at all (status 0).
    pub failed: usize,
    pub by_status: BTreeMap<u16, usize>,
    pub by_release: BTreeMap<String, usize>,
    pub hits: Vec<Hit>,
}

impl Load {
    pub(crate) fn start(port: u16, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_mins(5);
                    let mut hits = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        let (status, body) = web::get(port, "/api/health");
                        let json: serde_json::Value =
                            serde_json::from_str(&body).unwrap_or_default();
                        hits.push(Hit {
                            at: Instant::now(),
                            status,
                            release: json["release"].as_str().map(str::to_owned),
                        });
                    }
                    hits
                })
            })
            .collect();
        Load { stop, threads }
    }

    pub(crate) fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut t = Tally::default();
        for h in self.threads {
            t.hits.extend(h.join().unwrap_or_default());
        }
        for h in &t.hits {
            t.total += 1;
            if !(200..300).contains(&h.status) {
                t.failed += 1;
            }
            *t.by_status.entry(h.status).or_default() += 1;
            if let Some(r) = &h.release {
                *t.by_release.entry(r.clone()).or_default() += 1;
            }
        }
        t
    }
}

pub(crate) struct Stack {
    pub fleet: Fleet,
    pub web: WebStack,
    pub lb: Balancer,
    pub repo: Repo,
    pub _repo_dir: tempfile::TempDir,
    /// (host name, deploy_path): web, web, worker.
    pub roots: Vec<(String, String)>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, root) in &self.roots {
            let _ = std::fs::remove_dir_all(root);
        }
        if let Some(base) = Path::new(&self.roots[0].1).parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

pub(crate) fn stack() -> Option<Stack> {
    let fleet = Fleet::start(3)?;
    let roots = fleet.deploy_roots("rbs");
    let mut sites = Vec::new();
    for (name, root) in &roots[..2] {
        sites.push((name.clone(), format!("{root}/current")));
        sites.push((format!("{name}-next"), format!("{root}/next")));
    }
    let web = WebStack::start(&sites)?;
    let stable: Vec<String> = roots[..2]
        .iter()
        .map(|(n, _)| format!("127.0.0.1:{}", web.port(n)))
        .collect();
    let next: Vec<String> = roots[..2]
        .iter()
        .map(|(n, _)| format!("127.0.0.1:{}", web.port(&format!("{n}-next"))))
        .collect();
    let lb = match Balancer::start(&stable, &next) {
        Ok(lb) => lb,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return None;
        }
    };
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = Repo::create(repo_dir.path());
    Some(Stack {
        fleet,
        web,
        lb,
        repo,
        _repo_dir: repo_dir,
        roots,
    })
}

const SCRIPTS: &[&str] = &[
    "deploy",
    "zero-downtime-deploy",
    "canary",
    "rollback",
    "emergency-deploy",
    "emergency/stop-everything",
    "emergency/restart-everything",
    "emergency/clear-caches",
    "troubleshoot/fix-permissions",
    "troubleshoot/restart-queue",
    "troubleshoot/db-check",
    "maintenance/daily-check",
];

impl Stack {
    pub(crate) fn backups(&self) -> PathBuf {
        Path::new(&self.roots[0].1)
            .parent()
            .map(|p| p.join("backups"))
            .unwrap_or_default()
    }

    pub(crate) fn inventory(&self) -> String {
        let mut hosts = Vec::new();
        for (i, (h, (_, root))) in self.fleet.hosts.iter().zip(&self.roots).enumerate() {
            let urls = if i < 2 {
                format!(
                    ", url = \"http://127.0.0.1:{}\", preview_url = \"http://127.0.0.1:{}\"",
                    self.web.port(&h.name),
                    self.web.port(&format!("{}-next", h.name))
                )
            } else {
                String::new()
            };
            hosts.push(format!(
                "{} = {{ address = \"{}\", port = {}, deploy_path = \"{root}\"{urls} }}",
                h.name, h.addr, h.port
            ));
        }
        let n = |i: usize| format!("\"{}\"", self.roots[i].0);
        let d = self.lb.dir.display();
        format!(
            "[app]\nname = \"t\"\ndeploy_path = \"/srv/unused\"\nrepository = \"{repo}\"\nkeep_releases = 3\n\n\
             [ssh]\nuser = \"{USER}\"\nidentity_file = \"{key}\"\nknown_hosts = \"{kh}\"\n\n\
             [env.prod]\nurl = \"http://127.0.0.1:{lb}\"\nbackup_dir = \"{backups}\"\n\
             health = [\"/api/health\", \"/api/health/database\"]\n\
             hosts = {{ {hosts} }}\nroles = {{ web = [{w1}, {w2}], worker = [{w3}] }}\n\n\
             [env.prod.vars]\ndatabase_per_host = true\nmonitor = \"3s\"\nweb_user = \"{USER}\"\n\
             backup = {{ database = {{ driver = \"sqlite\", path = \"shared/storage/database.sqlite\" }} }}\n\
             canary = {{ window = \"4s\", checks = 2, rate = 50 }}\n\
             traffic = {{ host = {w1}, file = \"{d}/traffic.conf\", test = {test}, reload = {reload} }}\n",
            repo = self.repo.path.display(),
            key = self.fleet.client_key().display(),
            kh = self.fleet.known_hosts.display(),
            lb = self.lb.port,
            backups = self.backups().display(),
            hosts = hosts.join(", "),
            w1 = n(0),
            w2 = n(1),
            w3 = n(2),
            test = self.lb.nginx("\"-t\", \"-q\""),
            reload = self.lb.nginx("\"-s\", \"reload\""),
        )
    }

    pub(crate) fn project(&self) -> Test {
        let mut t = Test::bare().file("runbook.toml", &self.inventory());
        for s in SCRIPTS {
            let text =
                std::fs::read_to_string(format!("{}/scripts/{s}.rhai", env!("CARGO_MANIFEST_DIR")))
                    .unwrap();
            t = t.file(&format!("scripts/{s}.rhai"), &text);
        }
        t
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-e", "prod"]);
        self.project().args(&full).run()
    }

    pub(crate) fn link(&self, i: usize, name: &str) -> String {
        std::fs::read_link(Path::new(&self.roots[i].1).join(name))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub(crate) fn current(&self, i: usize) -> String {
        self.link(i, "current")
    }

    /// (status, release, migrations) as a web host's own nginx serves it.
    pub(crate) fn served(&self, i: usize) -> (u16, Option<String>, i64) {
        let (status, body) = self.web.get(&self.roots[i].0, "/api/health");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        (
            status,
            json["release"].as_str().map(str::to_owned),
            json["migrations"].as_i64().unwrap_or(-1),
        )
    }

    /// The releases `n` requests through the balancer were answered by.
    pub(crate) fn through_balancer(&self, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let (status, body) = web::get(self.lb.port, "/api/health");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let r = json["release"].as_str().unwrap_or("?").to_owned();
            *seen.entry(format!("{status} {r}")).or_default() += 1;
        }
        seen
    }

    pub(crate) fn is_bad(&self, i: usize, release: &str) -> bool {
        Path::new(&self.roots[i].1)
            .join(format!(".runbook/bad/{release}"))
            .exists()
    }

    pub(crate) fn locked(&self) -> bool {
        self.roots
            .iter()
            .any(|(_, r)| Path::new(r).join(".runbook/lock").exists())
    }

    pub(crate) fn sqlite(&self, i: usize, sql: &str) -> String {
        let db = format!("{}/shared/storage/database.sqlite", self.roots[i].1);
        let out = Command::new("sqlite3").arg(&db).arg(sql).output().unwrap();
        assert!(out.status.success(), "sqlite3 {sql}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The first release: v1 through the rolling deploy, then a new second so the next
    /// release gets a new name.
    pub(crate) fn first_release(&self) -> String {
        self.run(&["deploy", "ref=v1", "-q"]).code(0);
        let v1 = self.current(0);
        assert!(!v1.is_empty());
        std::thread::sleep(Duration::from_millis(1100));
        v1
    }
}
