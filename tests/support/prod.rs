//! A production-shaped fleet: web hosts and worker hosts that are separate machines as
//! far as a deploy can tell (`host::NsHost`: own /var/www, /var/backups, /home, /tmp),
//! the same deploy path on every host (`/var/www/app`, backups in `/var/backups/app`),
//! ONE MariaDB and ONE Redis shared by all of them (the app's database, cache and queue),
//! php-fpm with production OPcache and nginx on each web host, supervisord keeping a
//! queue worker alive on each worker host, and an nginx balancer in front of the web
//! hosts on a host of its own (`lb1`, in no role; `vars.traffic` steers it). The test app's
//! repository is the fleet's git server, seen as `/srv/app.git`.
//!
//! `ProdFleet::start` starts the parts in parallel where they do not depend on each
//! other; dropping the fleet stops exactly what it started and removes its directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::fleet::{self, USER};
use crate::harness::{Output, Test};
use crate::laravel::Repo;
use crate::support::balancer::Balancer;
use crate::support::host::{self, NsHost};
use crate::support::mariadb::MariaDb;
use crate::support::redis::Redis;
use crate::support::web_host::{self, DocRoot, Ports};
use crate::support::{self as support, supervisor};

/// Where the app lives on every host, as in production.
pub(crate) const DEPLOY_PATH: &str = "/var/www/app";
/// The app's database and its user (password: [`DB_PASSWORD`], in `RB_DB_PASSWORD` for
/// runbook's backups).
pub(crate) const DB_NAME: &str = "app";
pub(crate) const DB_PASSWORD: &str = "app-test-Secret-7";

/// The shipped scripts every fleet project carries.
pub(crate) const SCRIPTS: &[&str] = &[
    "deploy",
    "zero-downtime-deploy",
    "canary",
    "rollback",
    "emergency-deploy",
    "troubleshoot/restart-queue",
    "troubleshoot/db-check",
];

#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub web: usize,
    pub workers: usize,
    pub docroot: DocRoot,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            web: 2,
            workers: 1,
            docroot: DocRoot::Realpath,
        }
    }
}

pub(crate) struct ProdHost {
    pub host: NsHost,
    /// nginx's ports, on a web host.
    pub web: Option<Ports>,
}

impl ProdHost {
    pub(crate) fn url(&self) -> Option<String> {
        self.web
            .map(|p| format!("http://{}:{}", self.host.addr, p.current))
    }
    pub(crate) fn preview_url(&self) -> Option<String> {
        self.web
            .map(|p| format!("http://{}:{}", self.host.addr, p.next))
    }
}

/// What a web host's `/api/health` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    pub status: u16,
    pub release: Option<String>,
    pub code: Option<String>,
    pub migrations: i64,
}

impl Health {
    fn parse(status: u16, body: &str) -> Health {
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        Health {
            status,
            release: json["release"].as_str().map(str::to_owned),
            code: json["code"].as_str().map(str::to_owned),
            migrations: json["migrations"].as_i64().unwrap_or(-1),
        }
    }
}

/// One row of `job_runs`: which code processed a queued job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobRun {
    pub release: String,
    pub code: String,
    pub host: String,
}

pub(crate) struct ProdFleet {
    /// Web hosts first (web1, web2, …), then worker hosts (worker1, …).
    pub hosts: Vec<ProdHost>,
    /// nginx in front of the web hosts, on a host of its own (`lb1`), steered by runbook
    /// over SSH (`vars.traffic`).
    pub lb: Balancer,
    pub lb_host: NsHost,
    pub db: MariaDb,
    /// The app's cache and queue.
    pub redis: Redis,
    /// The git server's repository (hosts see it as `/srv/app.git`).
    _repo: Repo,
    pub known_hosts: PathBuf,
    pub client_key: PathBuf,
    /// How long `start` took.
    pub started_in: Duration,
    _dir: tempfile::TempDir,
}

fn why_unavailable() -> Option<String> {
    host::why_unavailable()
        .or_else(web_host::why_unavailable)
        .or_else(|| support::missing(&[("/usr/bin/supervisord", "supervisor")]))
        .or_else(|| {
            let loaded = std::process::Command::new("php")
                .arg("-m")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_lowercase())
                .unwrap_or_default();
            ["pdo_mysql", "redis"]
                .iter()
                .find(|m| !loaded.lines().any(|l| l.trim() == **m))
                .map(|m| format!("php has no {m} (apt-get install -y php-mysql php-redis)"))
        })
}

/// Every app host's `shared/.env`: MariaDB on `db_port`, Redis on `redis_port`.
fn write_shared_env(
    hosts: &[ProdHost],
    db_port: impl std::fmt::Display,
    redis_port: impl std::fmt::Display,
) -> Result<(), String> {
    let deploy = host::deploy_ids()?;
    for h in hosts {
        let shared = h.host.path(&format!("{DEPLOY_PATH}/shared"));
        std::fs::create_dir_all(&shared).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&shared, Some(deploy.0), Some(deploy.1))
            .map_err(|e| e.to_string())?;
        host::write(
            &shared.join(".env"),
            &format!(
                "APP_NAME=runbook-test-app\nAPP_ENV=production\nAPP_DEBUG=false\nLOG_CHANNEL=single\n\
                 DB_CONNECTION=mysql\nDB_HOST=127.0.0.1\nDB_PORT={db_port}\nDB_DATABASE={DB_NAME}\nDB_USERNAME={DB_NAME}\nDB_PASSWORD={DB_PASSWORD}\n\
                 QUEUE_CONNECTION=redis\nCACHE_DRIVER=redis\nREDIS_CLIENT=phpredis\nREDIS_HOST=127.0.0.1\nREDIS_PORT={redis_port}\n"
            ),
            0o640,
            Some(deploy),
        )?;
    }
    Ok(())
}

/// `known_hosts` with every host's key and the balancer's.
fn write_known_hosts(path: &Path, hosts: &[ProdHost], lb_host: &NsHost) -> Result<(), String> {
    let known: String = hosts
        .iter()
        .map(|h| &h.host)
        .chain([lb_host])
        .map(|h| fleet::known_hosts_line(&h.addr, h.port, &h.host_key_pub))
        .collect();
    std::fs::write(path, known).map_err(|e| e.to_string())?;
    Ok(())
}

impl ProdFleet {
    /// The default fleet: 2 web hosts, 1 worker host, `$realpath_root`.
    pub(crate) fn start() -> Option<ProdFleet> {
        ProdFleet::start_with(Options::default())
    }

    pub(crate) fn start_with(options: Options) -> Option<ProdFleet> {
        let started = why_unavailable().map_or_else(|| ProdFleet::try_start(options), Err);
        support::available("the production-shaped fleet", started)
    }

    fn try_start(options: Options) -> Result<ProdFleet, String> {
        static BLOCK: AtomicU32 = AtomicU32::new(0);
        let t0 = Instant::now();
        let (client_key, client_pub) = fleet::client_key_files()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let git = dir.path().join("git");
        std::fs::create_dir_all(&git).map_err(|e| e.to_string())?;
        let block = BLOCK.fetch_add(1, Ordering::SeqCst);
        let names: Vec<String> = (1..=options.web)
            .map(|i| format!("web{i}"))
            .chain((1..=options.workers).map(|i| format!("worker{i}")))
            .chain(["lb1".to_owned()])
            .collect();
        // The database (5 s to initialise), Redis and the repository start while the
        // hosts boot.
        let (db, redis, repo, hosts) = std::thread::scope(|s| {
            let db = s.spawn(|| {
                let db = MariaDb::start_tcp()?;
                db.create_app_database(DB_NAME, DB_PASSWORD)?;
                Ok::<_, String>(db)
            });
            let redis = s.spawn(Redis::start);
            let repo = s.spawn(|| Repo::create(&git));
            let mut hosts = Vec::new();
            let mut booted = Ok(());
            for (i, name) in names.iter().enumerate() {
                // 127.0.0.0/8 is all loopback: every host has an address of its own.
                let addr = format!(
                    "127.{}.{}.{}",
                    200 + block % 50,
                    std::process::id() % 250 + 1,
                    i + 1
                );
                let h = NsHost::start(
                    dir.path().join(name),
                    name,
                    &addr,
                    &client_pub,
                    Some(&git),
                    "/srv/app.git",
                )
                .and_then(|mut h| {
                    let web = if i < options.web {
                        Some(web_host::start(&mut h, options.docroot)?)
                    } else if i < options.web + options.workers {
                        supervisor::start(&mut h)?;
                        None
                    } else {
                        None // the balancer's host: nginx starts once the web hosts are known
                    };
                    Ok(ProdHost { host: h, web })
                });
                match h {
                    Ok(h) => hosts.push(h),
                    Err(e) => {
                        booted = Err(e);
                        break;
                    }
                }
            }
            let panicked = |_| "a part panicked while starting".to_owned();
            (
                db.join().map_err(panicked).and_then(|r| r),
                redis.join().map_err(panicked).and_then(|r| r),
                repo.join().map_err(panicked),
                booted.map(|()| hosts),
            )
        });
        let (db, redis, repo, mut hosts) = (db?, redis?, repo?, hosts?);
        let mut lb_host = hosts.pop().ok_or("no balancer host")?.host;
        let port = db.port.unwrap_or(3306);
        write_shared_env(&hosts, port, redis.port)?;
        let upstreams = |next: bool| -> Vec<String> {
            hosts
                .iter()
                .filter_map(|h| {
                    h.web.map(|p| {
                        format!("{}:{}", h.host.addr, if next { p.next } else { p.current })
                    })
                })
                .collect()
        };
        let lb = Balancer::start_on(&mut lb_host, &upstreams(false), &upstreams(true))?;
        let known_hosts = dir.path().join("known_hosts");
        write_known_hosts(&known_hosts, &hosts, &lb_host)?;
        let fleet = ProdFleet {
            hosts,
            lb,
            lb_host,
            db,
            redis,
            _repo: repo,
            known_hosts,
            client_key,
            started_in: t0.elapsed(),
            _dir: dir,
        };
        eprintln!(
            "production-shaped fleet ({} web + {} worker hosts, MariaDB, Redis, balancer) started in {} ms",
            options.web,
            options.workers,
            fleet.started_in.as_millis()
        );
        Ok(fleet)
    }

    pub(crate) fn host(&self, name: &str) -> &ProdHost {
        self.hosts
            .iter()
            .find(|h| h.host.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The inventory: environment `prod` with the balancer as its `url`; with
    /// `host_urls`, each web host's own `url` and `preview_url`; roles web and worker.
    /// `vars` are more lines for `[env.prod.vars]`.
    pub(crate) fn inventory_with(&self, host_urls: bool, vars: &str) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| {
                let urls = match (host_urls, h.url(), h.preview_url()) {
                    (true, Some(u), Some(p)) => format!(", url = \"{u}\", preview_url = \"{p}\""),
                    _ => String::new(),
                };
                format!(
                    "{} = {{ address = \"{}\", port = {}{urls} }}",
                    h.host.name, h.host.addr, h.host.port
                )
            })
            .chain([format!(
                "{} = {{ address = \"{}\", port = {} }}",
                self.lb_host.name, self.lb_host.addr, self.lb_host.port
            )])
            .collect();
        let role = |web: bool| -> String {
            self.hosts
                .iter()
                .filter(|h| h.web.is_some() == web)
                .map(|h| format!("\"{}\"", h.host.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "[app]\nname = \"t\"\ndeploy_path = \"{DEPLOY_PATH}\"\nrepository = \"/srv/app.git\"\nkeep_releases = 3\n\n\
             [ssh]\nuser = \"{USER}\"\nidentity_file = \"{key}\"\nknown_hosts = \"{kh}\"\nconnect_timeout = \"5s\"\n\n\
             [env.prod]\nurl = \"{lb}\"\nbackup_dir = \"/var/backups/app\"\n\
             hosts = {{ {hosts} }}\nroles = {{ web = [{web}], worker = [{workers}] }}\n\n\
             [env.prod.vars]\nweb_user = \"{USER}\"\nmonitor = \"2s\"\nphp_fpm_reload = {reload}\n\
             traffic = {{ host = \"{lb_host}\", file = \"{traffic}\", test = {test}, reload = {lb_reload} }}\n\
             backup = {{ database = {{ driver = \"mysql\", name = \"{DB_NAME}\", user = \"{DB_NAME}\", host = \"127.0.0.1\", port = {port}, password_env = \"RB_DB_PASSWORD\" }} }}\n\
             {vars}\n",
            key = self.client_key.display(),
            kh = self.known_hosts.display(),
            lb = self.lb.url(),
            hosts = hosts.join(", "),
            web = role(true),
            workers = role(false),
            reload = web_host::PHP_FPM_RELOAD,
            lb_host = self.lb_host.name,
            traffic = self.lb.traffic_file(),
            test = self.lb.nginx("\"-t\", \"-q\""),
            lb_reload = self.lb.nginx("\"-s\", \"reload\""),
            port = self.db.port.unwrap_or(3306),
        )
    }

    /// The inventory with each web host's urls.
    pub(crate) fn inventory(&self) -> String {
        self.inventory_with(true, "")
    }

    /// A project with `inventory` and the shipped scripts.
    #[expect(
        clippy::unused_self,
        reason = "a method beside `project` and `run`, which read the topology"
    )]
    pub(crate) fn project_with(&self, inventory: &str) -> Test {
        let mut t = Test::bare()
            .file("runbook.toml", inventory)
            .env("RB_DB_PASSWORD", DB_PASSWORD);
        for s in SCRIPTS {
            let text =
                std::fs::read_to_string(format!("{}/scripts/{s}.rhai", env!("CARGO_MANIFEST_DIR")))
                    .unwrap_or_else(|e| panic!("scripts/{s}.rhai: {e}"));
            t = t.file(&format!("scripts/{s}.rhai"), &text);
        }
        t
    }

    pub(crate) fn project(&self) -> Test {
        self.project_with(&self.inventory())
    }

    /// `runbook run SCRIPT -e prod ARGS…` with the default inventory.
    pub(crate) fn run(&self, script: &str, args: &[&str]) -> Output {
        let mut full = vec!["run", script, "-e", "prod"];
        full.extend_from_slice(args);
        self.project().args(&full).run()
    }

    /// Where this machine sees a host's path (see `NsHost::path`).
    pub(crate) fn path(&self, host: &str, inside: &str) -> PathBuf {
        self.host(host).host.path(inside)
    }

    fn link(&self, host: &str, name: &str) -> String {
        std::fs::read_link(self.path(host, &format!("{DEPLOY_PATH}/{name}")))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default()
    }

    /// The release a host's `current` points at ("" when none).
    pub(crate) fn current(&self, host: &str) -> String {
        self.link(host, "current")
    }

    /// The release a host has staged as `next` ("" when none).
    pub(crate) fn staged(&self, host: &str) -> String {
        self.link(host, "next")
    }

    /// `current` of every host, by name.
    pub(crate) fn currents(&self) -> Vec<(String, String)> {
        self.hosts
            .iter()
            .map(|h| (h.host.name.clone(), self.current(&h.host.name)))
            .collect()
    }

    /// What a web host's own nginx answers on `/api/health`.
    pub(crate) fn served(&self, host: &str) -> Health {
        let h = self.host(host);
        let port = h.web.map_or(0, |p| p.current);
        let (status, body) = support::get(&h.host.addr, port, "/api/health");
        Health::parse(status, &body)
    }

    /// `n` answers through the balancer, counted by "STATUS RELEASE".
    pub(crate) fn through_balancer(&self, n: usize) -> std::collections::BTreeMap<String, usize> {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..n {
            let (status, body) = support::get(&self.lb.addr, self.lb.port, "/api/health");
            let r = Health::parse(status, &body)
                .release
                .unwrap_or_else(|| "?".into());
            *seen.entry(format!("{status} {r}")).or_default() += 1;
        }
        seen
    }

    /// A query on the app's database (as root, over the socket).
    #[track_caller]
    pub(crate) fn sql(&self, q: &str) -> String {
        self.db
            .sql(&format!("use `{DB_NAME}`; {q}"))
            .trim()
            .to_owned()
    }

    /// Queues `App\Jobs\RecordRelease` through web host `via` and waits (bounded) until
    /// a worker has processed it: which release's code did.
    pub(crate) fn queued_job(&self, via: &str, token: &str) -> Result<JobRun, String> {
        let h = self.host(via);
        let port = h.web.map_or(0, |p| p.current);
        let (status, body) = support::get(
            &h.host.addr,
            port,
            &format!("/api/queue/record?token={token}"),
        );
        if status != 200 {
            return Err(format!("queueing the job through {via}: {status} {body}"));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let row = self.sql(&format!(
                "select `release`, code, host from job_runs where token = '{token}'"
            ));
            if let Some(line) = row.lines().next() {
                let f: Vec<&str> = line.split('\t').collect();
                return Ok(JobRun {
                    release: f.first().copied().unwrap_or("").to_owned(),
                    code: f.get(1).copied().unwrap_or("").to_owned(),
                    host: f.get(2).copied().unwrap_or("").to_owned(),
                });
            }
            if Instant::now() > deadline {
                let workers: Vec<String> = self
                    .hosts
                    .iter()
                    .filter(|h| h.web.is_none())
                    .map(|h| {
                        format!(
                            "{}: {}{}",
                            h.host.name,
                            supervisor::status(&h.host),
                            std::fs::read_to_string(h.host.path("/var/log/supervisor/queue.log"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                return Err(format!(
                    "no worker processed job {token} within 20 s:\n{}",
                    workers.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ProdFleet {
    fn drop(&mut self) {
        // The hosts first (every process in their namespaces), then what they used; the
        // rest goes with the fields.
        let t0 = Instant::now();
        for h in &mut self.hosts {
            h.host.stop();
        }
        self.lb_host.stop();
        eprintln!(
            "production-shaped fleet: hosts stopped in {} ms",
            t0.elapsed().as_millis()
        );
    }
}
