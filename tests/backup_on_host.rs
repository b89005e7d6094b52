//! Backups that stay on the host (`runbook-agent`), on separate hosts (`NsHost`: own
//! /var/www, /var/backups, /home) with one shared MariaDB. Every host's sshd is reached
//! through a counting TCP proxy, so a test can say how many bytes a run moved over each
//! host's connection: an archive that crossed it would show up in full.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use sha2::Digest;

use crate::fleet::{self, USER};
use crate::harness::{Output, Test};
use crate::support::host::{self, NsHost};
use crate::support::mariadb::MariaDb;

const ROOT: &str = "/var/www/app";
const BACKUPS: &str = "/var/backups/app";
const RELEASE: &str = "20260101T000000Z";
const DB_PASSWORD: &str = "onhost-Secret-3";
/// The incompressible file in the release (the same on every host): an archive is at
/// least this big.
const BLOB: usize = 2 << 20;
/// What a run may move over a host's connection when no archive crosses it: the
/// handshake, the commands, their JSON. An archive is `BLOB` bytes.
const CONTROL: u64 = 512 << 10;

/// A TCP proxy in front of one sshd that counts the bytes it carries both ways.
struct Counter {
    port: u16,
    addr: String,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream, bytes: &AtomicU64) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Counter {
    fn start(addr: &str, target_port: u16) -> Result<Counter, String> {
        let listener = TcpListener::bind((addr, 0)).map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s, target) = (bytes.clone(), stop.clone(), addr.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect((target.as_str(), target_port)) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let (up, down) = (b.clone(), b.clone());
                std::thread::spawn(move || pipe(client, server, &up));
                std::thread::spawn(move || pipe(s2, c2, &down));
            }
        });
        Ok(Counter {
            port,
            addr: addr.to_owned(),
            bytes,
            stop,
        })
    }

    fn total(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect((self.addr.as_str(), self.port));
    }
}

struct OnHostFleet {
    hosts: Vec<NsHost>,
    proxies: Vec<Counter>,
    db: Option<MariaDb>,
    known_hosts: PathBuf,
    client_key: PathBuf,
    _dir: tempfile::TempDir,
}

/// `len` bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24).to_le_bytes()[0]
        })
        .collect()
}

impl OnHostFleet {
    fn start(n: usize, with_db: bool) -> Option<OnHostFleet> {
        let started = host::why_unavailable().map_or_else(|| Self::try_start(n, with_db), Err);
        crate::support::available("the on-host backup fleet", started)
    }

    fn try_start(n: usize, with_db: bool) -> Result<OnHostFleet, String> {
        static BLOCK: AtomicU32 = AtomicU32::new(0);
        let block = BLOCK.fetch_add(1, Ordering::SeqCst);
        let (client_key, client_pub) = fleet::client_key_files()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let db = if with_db {
            let db = MariaDb::start_tcp()?;
            db.create_app_database("app", DB_PASSWORD)?;
            db.run_sql(
                "use app; create table marks (v varchar(20)); insert into marks values ('before')",
            )?;
            Some(db)
        } else {
            None
        };
        let deploy = host::deploy_ids()?;
        let (mut hosts, mut proxies, mut known) = (Vec::new(), Vec::new(), String::new());
        for i in 0..n {
            let name = format!("web{}", i + 1);
            let addr = format!(
                "127.{}.{}.{}",
                250 + block % 5,
                std::process::id() % 250 + 1,
                i + 1
            );
            let h = NsHost::start(
                dir.path().join(&name),
                &name,
                &addr,
                &client_pub,
                None,
                ROOT,
            )?;
            let rel = h.path(&format!("{ROOT}/releases/{RELEASE}"));
            std::fs::create_dir_all(rel.join("public")).map_err(|e| e.to_string())?;
            std::fs::write(rel.join("public/index.php"), "<?php echo 'v1';\n")
                .map_err(|e| e.to_string())?;
            std::fs::write(rel.join("blob"), noise(BLOB, 7)).map_err(|e| e.to_string())?;
            host::write(
                &h.path(&format!("{ROOT}/shared/.env")),
                "APP_KEY=base64:onhost\n",
                0o640,
                None,
            )?;
            std::os::unix::fs::symlink(
                format!("releases/{RELEASE}"),
                h.path(&format!("{ROOT}/current")),
            )
            .map_err(|e| e.to_string())?;
            fleet::run(
                std::process::Command::new("chown")
                    .args(["-R", "-h", &format!("{}:{}", deploy.0, deploy.1)])
                    .arg(h.path(ROOT)),
            )?;
            let p = Counter::start(&addr, h.port)?;
            known.push_str(&fleet::known_hosts_line(&addr, p.port, &h.host_key_pub));
            hosts.push(h);
            proxies.push(p);
        }
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, known).map_err(|e| e.to_string())?;
        Ok(OnHostFleet {
            hosts,
            proxies,
            db,
            known_hosts,
            client_key,
            _dir: dir,
        })
    }

    fn project(&self, backup_section: &str) -> Test {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .zip(&self.proxies)
            .map(|(h, p)| {
                format!(
                    "{} = {{ address = \"{}\", port = {} }}",
                    h.name, h.addr, p.port
                )
            })
            .collect();
        let names: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("\"{}\"", h.name))
            .collect();
        let port = self.db.as_ref().and_then(|d| d.port).unwrap_or(0);
        let db = format!(
            "#{{ driver: \"mysql\", name: \"app\", user: \"app\", host: \"127.0.0.1\", port: {port}, password_env: \"RB_DB_PASSWORD\" }}"
        );
        Test::bare()
            .file(
                "runbook.toml",
                &format!(
                    "[app]\nname = \"t\"\ndeploy_path = \"{ROOT}\"\nshared_files = [\".env\"]\n\n\
                     [ssh]\nuser = \"{USER}\"\nidentity_file = \"{key}\"\nknown_hosts = \"{kh}\"\nconnect_timeout = \"5s\"\n\n\
                     {backup_section}\n\
                     [env.prod]\nbackup_dir = \"{BACKUPS}\"\nhosts = {{ {hosts} }}\nroles = {{ web = [{names}] }}\n",
                    key = self.client_key.display(),
                    kh = self.known_hosts.display(),
                    hosts = hosts.join(", "),
                    names = names.join(", "),
                ),
            )
            .env("RB_DB_PASSWORD", DB_PASSWORD)
            .file(
                "scripts/create.rhai",
                &format!(
                    "let db = {db};\nfor h in hosts(\"web\") {{\n  let o = #{{ name: args.name }};\n  if args.db == \"yes\" {{ o.database = db; }}\n  print(backup::create(h, o).name);\n}}\n"
                ),
            )
            .file(
                "scripts/verify.rhai",
                "for h in hosts(\"web\") { print(backup::verify(h, args.name).release); }\n",
            )
            .file(
                "scripts/prune.rhai",
                "for h in hosts(\"web\") { print(backup::prune(h, #{ keep: 1 })); }\n",
            )
            .file(
                "scripts/restore.rhai",
                &format!(
                    "let db = {db};\nlet all = hosts(\"web\");\nprint(backup::restore(all[0], args.name, #{{ database: db, \"shared\": true }}));\nfor i in 1..all.len() {{ print(backup::restore(all[i], args.name, #{{}})); }}\n"
                ),
            )
    }

    /// Bytes each host's connection carried so far.
    fn counts(&self) -> Vec<u64> {
        self.proxies.iter().map(Counter::total).collect()
    }

    /// Runs `script` and returns the output and the bytes it moved per host.
    fn run(&self, t: &Test, script: &str, args: &[&str]) -> (Output, Vec<u64>) {
        let before = self.counts();
        let mut full = vec!["run", script, "-e", "prod"];
        full.extend_from_slice(args);
        let t0 = std::time::Instant::now();
        let out = t.run_with(&full);
        // The proxy's threads count what the dying connection still carried.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let moved: Vec<u64> = self
            .counts()
            .iter()
            .zip(before)
            .map(|(a, b)| a - b)
            .collect();
        eprintln!(
            "runbook run {script} {args:?}: {} ms, {moved:?} bytes over the hosts' connections",
            t0.elapsed().as_millis()
        );
        (out, moved)
    }

    fn agent_dir(&self, i: usize) -> PathBuf {
        self.hosts[i].path(&format!("/home/{USER}/.cache/runbook/agent"))
    }
}

fn local_agent() -> (PathBuf, String, u64) {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_runbook-agent"));
    let bytes = std::fs::read(&path).unwrap();
    (
        path,
        hex::encode(sha2::Sha256::digest(&bytes)),
        bytes.len() as u64,
    )
}

#[track_caller]
fn small(moved: &[u64], what: &str) {
    for (i, m) in moved.iter().enumerate() {
        assert!(
            *m < CONTROL,
            "{what}: web{} moved {m} bytes over its connection (an archive is {BLOB}+; nothing of it may cross)",
            i + 1
        );
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario end to end on one fleet, read top to bottom"
)]
fn create_verify_prune_and_restore_on_two_hosts_move_nothing_of_the_archive() {
    let Some(f) = OnHostFleet::start(2, true) else {
        return;
    };
    let t = f.project("");
    let (_, sha, agent_size) = local_agent();
    let first = "backup-20260102-000000.tar.gz";
    let second = "backup-20260103-000000.tar.gz";

    // The first backup places the agent (once per host), then archives on the host.
    let (out, moved) = f.run(&t, "create", &[&format!("name={first}"), "db=yes"]);
    out.code(0);
    for (i, m) in moved.iter().enumerate() {
        assert!(
            *m < agent_size + CONTROL,
            "web{}: the first backup moved {m} bytes: more than the agent ({agent_size})",
            i + 1
        );
        let dir = f.agent_dir(i);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "web{}: the agent's directory", i + 1);
        assert_eq!(
            std::fs::read(dir.join(&sha)).unwrap(),
            std::fs::read(env!("CARGO_BIN_EXE_runbook-agent")).unwrap()
        );
        // The archive, its summary and the dump are on the host's own disk.
        let backups = f.hosts[i].path(BACKUPS);
        assert!(backups.join(first).is_file() && backups.join(format!("{first}.json")).is_file());
        assert!(std::fs::metadata(backups.join(first)).unwrap().len() > BLOB as u64);
    }
    assert!(
        !out.stderr.contains("streams through the runner"),
        "{}",
        out.stderr
    );
    // runbook's own format: the local verifier reads what the agent wrote.
    let archive = f.hosts[0].path(&format!("{BACKUPS}/{first}"));
    let listing = std::process::Command::new("tar")
        .args(["-tzf"])
        .arg(&archive)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(names.contains("database/mysql.sql") && names.contains(".runbook-manifest.json"));
    assert!(names.contains("release/blob") && names.contains("shared/.env"));

    // With the agent in place nothing of an archive crosses any more.
    let (out, moved) = f.run(&t, "create", &[&format!("name={second}"), "db=no"]);
    out.code(0);
    small(&moved, "a second backup");
    let (out, moved) = f.run(&t, "verify", &[&format!("name={first}")]);
    out.code(0);
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), [RELEASE, RELEASE]);
    small(&moved, "verify");

    // A damaged archive fails verification on the host, saying why.
    let damaged = f.hosts[1].path(&format!("{BACKUPS}/{second}"));
    let mut bytes = std::fs::read(&damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&damaged, &bytes).unwrap();
    let (out, moved) = f.run(&t, "verify", &[&format!("name={second}")]);
    out.code(1).stderr_has("damaged");
    small(&moved, "a failed verify");

    // Prune to one: web1 keeps the newest; web2 keeps its newest (damaged, within
    // `keep`) and the newest that verifies (the first), found by reading both on the host.
    let (out, moved) = f.run(&t, "prune", &[]);
    out.code(0);
    small(&moved, "prune");
    assert!(!f.hosts[0].path(&format!("{BACKUPS}/{first}")).exists());
    assert!(f.hosts[0].path(&format!("{BACKUPS}/{second}")).exists());
    assert!(f.hosts[1].path(&format!("{BACKUPS}/{first}")).exists());
    assert!(f.hosts[1].path(&format!("{BACKUPS}/{second}")).exists());
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        [format!("[\"{first}\"]"), "[]".to_owned()]
    );

    // Restore `first` (the one with the database): web2 kept it; web1 gets it by hand
    // (as `backup::copy` would). web1 restores code, database and .env, web2 code only:
    // a new release on each, switched to, the database as it was.
    let db = f.db.as_ref().unwrap();
    db.run_sql("use app; insert into marks values ('after')")
        .unwrap();
    std::fs::write(
        f.hosts[0].path(&format!("{ROOT}/shared/.env")),
        "APP_KEY=changed\n",
    )
    .unwrap();
    for n in [first.to_owned(), format!("{first}.json")] {
        let to = f.hosts[0].path(&format!("{BACKUPS}/{n}"));
        std::fs::copy(f.hosts[1].path(&format!("{BACKUPS}/{n}")), &to).unwrap();
        fleet::run(std::process::Command::new("chown").arg(USER).arg(&to)).unwrap();
    }
    let (out, moved) = f.run(&t, "restore", &[&format!("name={first}")]);
    out.code(0);
    small(&moved, "restore");
    let restored: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(restored.len(), 2, "{}", out.stdout);
    for (i, h) in f.hosts.iter().enumerate() {
        let live = std::fs::read_link(h.path(&format!("{ROOT}/current"))).unwrap();
        assert_eq!(live, PathBuf::from(format!("releases/{}", restored[i])));
        assert_ne!(restored[i], RELEASE, "a restore makes a new release");
        let blob =
            |rel: &str| std::fs::read(h.path(&format!("{ROOT}/releases/{rel}/blob"))).unwrap();
        assert!(
            blob(restored[i]) == blob(RELEASE),
            "{}: the restored blob differs",
            h.name
        );
        // Nothing is left of the staging beneath the deploy path.
        let left: Vec<String> = std::fs::read_dir(h.path(&format!("{ROOT}/.runbook")))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("restore-"))
            .collect();
        assert!(left.is_empty(), "{}: {left:?}", h.name);
    }
    assert_eq!(
        std::fs::read_to_string(f.hosts[0].path(&format!("{ROOT}/shared/.env"))).unwrap(),
        "APP_KEY=base64:onhost\n"
    );
    assert_eq!(
        db.run_sql("use app; select v from marks").unwrap().trim(),
        "before"
    );
}

#[test]
fn a_foreign_or_tampered_agent_is_never_run_and_the_backup_streams_or_replaces_it() {
    let Some(f) = OnHostFleet::start(1, false) else {
        return;
    };
    let (agent, sha, _) = local_agent();
    let work = tempfile::tempdir().unwrap();

    // An agent built for another architecture (its ELF header says aarch64): refused
    // before anything is uploaded; the backup streams through the runner, said once.
    let foreign = work.path().join("runbook-agent");
    let mut bytes = std::fs::read(&agent).unwrap();
    bytes[18..20].copy_from_slice(&0xb7u16.to_le_bytes());
    std::fs::write(&foreign, &bytes).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = f
        .project("")
        .env("RUNBOOK_AGENT", foreign.to_str().unwrap());
    let (out, moved) = f.run(
        &t,
        "create",
        &["name=backup-20260102-000000.tar.gz", "db=no"],
    );
    out.code(0);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("streams through the runner"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(
        warnings[0].contains("built for aarch64, the host is x86_64"),
        "{}",
        warnings[0]
    );
    assert!(
        moved[0] > 3 * BLOB as u64 / 2,
        "streaming moved only {} bytes",
        moved[0]
    );
    assert!(!f.agent_dir(0).exists(), "a foreign agent was uploaded");
    assert!(
        f.hosts[0]
            .path(&format!("{BACKUPS}/backup-20260102-000000.tar.gz"))
            .is_file()
    );

    // `on_host = "always"` makes the same an error instead.
    let t = f
        .project("[backup]\non_host = \"always\"\n")
        .env("RUNBOOK_AGENT", foreign.to_str().unwrap());
    let (out, _) = f.run(&t, "verify", &["name=backup-20260102-000000.tar.gz"]);
    out.code(1).stderr_has("on_host = \"always\"");

    // The real agent is placed; then someone changes the cached file. The next use
    // sees the hash differ, replaces the file and never runs what was there.
    let t = f.project("");
    f.run(&t, "verify", &["name=backup-20260102-000000.tar.gz"])
        .0
        .code(0);
    let cached = f.agent_dir(0).join(&sha);
    assert!(cached.is_file());
    let marker = "/tmp/tampered-agent-ran";
    std::fs::write(
        &cached,
        format!("#!/bin/sh\ntouch {marker}\necho 'runbook-agent 0.1.0 x86_64'\necho '{{\"release\":\"x\",\"git_ref\":\"\",\"entries\":0}}'\n"),
    )
    .unwrap();
    let (out, _) = f.run(&t, "verify", &["name=backup-20260102-000000.tar.gz"]);
    out.code(0);
    assert_eq!(
        out.stdout.trim(),
        RELEASE,
        "the verify was not the real agent's"
    );
    assert!(
        !f.hosts[0].path(marker).exists(),
        "the tampered agent was executed"
    );
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(&agent).unwrap()
    );

    // `on_host = "never"`: the old path, the archive crosses the connection.
    let t = f.project("[backup]\non_host = \"never\"\n");
    let (out, moved) = f.run(&t, "verify", &["name=backup-20260102-000000.tar.gz"]);
    out.code(0);
    assert!(
        moved[0] > BLOB as u64,
        "never: only {} bytes moved",
        moved[0]
    );
}
