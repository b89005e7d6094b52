//! A fleet of REAL ssh hosts for the tests: one `sshd -D` per host, each on its own
//! loopback address, with its own generated host key, a `deploy` user, a client key and a
//! pre-seeded known_hosts. Dropping the fleet stops exactly the processes it started.
//!
//! Needs root and openssh-server (`tests/run.sh` installs it). Without them the fleet
//! tests are skipped with a message — except under `CI=true`, where they fail.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
pub(crate) const USER: &str = "deploy";

pub(crate) struct FleetHost {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub log: PathBuf,
    pub host_key_pub: String,
}

pub(crate) struct Fleet {
    pub dir: tempfile::TempDir,
    pub hosts: Vec<FleetHost>,
    pub known_hosts: PathBuf,
    children: Vec<Option<Child>>,
}

struct ClientKey {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// One client key per test process, authorized for the deploy user.
fn client_key() -> Result<&'static ClientKey, String> {
    static KEY: OnceLock<Result<ClientKey, String>> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("id_ed25519");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "runbook-tests", "-f"])
            .arg(&path))?;
        if Command::new("id")
            .arg(USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            run(Command::new("useradd").args(["-m", "-s", "/bin/bash", USER]))?;
        }
        // useradd leaves the password locked ("!"); sshd with UsePAM no then refuses keys.
        run(Command::new("usermod").args(["-p", "*", USER]))?;
        let home = PathBuf::from(format!("/home/{USER}"));
        let ssh_dir = home.join(".ssh");
        std::fs::create_dir_all(&ssh_dir).map_err(|e| e.to_string())?;
        let pub_key =
            std::fs::read_to_string(path.with_extension("pub")).map_err(|e| e.to_string())?;
        let ak = ssh_dir.join("authorized_keys");
        let mut existing = std::fs::read_to_string(&ak).unwrap_or_default();
        existing.push_str(&pub_key);
        std::fs::write(&ak, existing).map_err(|e| e.to_string())?;
        run(Command::new("chown")
            .args(["-R", &format!("{USER}:{USER}")])
            .arg(&ssh_dir))?;
        run(Command::new("chmod").arg("700").arg(&ssh_dir))?;
        run(Command::new("chmod").arg("600").arg(&ak))?;
        Ok(ClientKey { _dir: dir, path })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The deploy user's client key (created once per test process, with the user), and its
/// public half for an `authorized_keys`.
pub(crate) fn client_key_files() -> Result<(PathBuf, String), String> {
    let key = client_key()?;
    let public =
        std::fs::read_to_string(key.path.with_extension("pub")).map_err(|e| e.to_string())?;
    Ok((key.path.clone(), public))
}

/// A new ed25519 host key in `dir`: (private key path, "ssh-ed25519 AAAA…").
pub(crate) fn host_key(dir: &Path, name: &str) -> Result<(PathBuf, String), String> {
    let hkey = dir.join("host_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&hkey))?;
    let public = std::fs::read_to_string(hkey.with_extension("pub")).map_err(|e| e.to_string())?;
    let public = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    Ok((hkey, public))
}

/// A test host's sshd configuration: keys only, the deploy user only, many sessions.
pub(crate) fn sshd_config(addr: &str, port: u16, host_key: &Path) -> String {
    format!(
        "ListenAddress {addr}:{port}\nHostKey {}\nPidFile none\nAllowUsers {USER}\nPubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nUseDNS no\nPrintMotd no\nPrintLastLog no\nX11Forwarding no\nMaxStartups 200:30:400\nLogLevel INFO\nSubsystem sftp internal-sftp\n",
        host_key.display()
    )
}

/// A known_hosts line for a host key served on `addr:port`.
pub(crate) fn known_hosts_line(addr: &str, port: u16, host_key_pub: &str) -> String {
    if port == 22 {
        format!("{addr} {host_key_pub}\n")
    } else {
        format!("[{addr}]:{port} {host_key_pub}\n")
    }
}

pub(crate) fn why_unavailable() -> Option<String> {
    if !Path::new(SSHD).exists() {
        return Some(format!(
            "{SSHD} is missing (apt-get install -y openssh-server)"
        ));
    }
    if nix::unistd::geteuid().as_raw() != 0 {
        return Some("the ssh fleet needs root (sshd privilege separation, a deploy user)".into());
    }
    None
}

pub(crate) fn listening(addr: &str, port: u16) -> bool {
    let Ok(ip) = addr.parse() else { return false };
    TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(200)).is_ok()
}

impl Fleet {
    /// Starts `n` hosts, or returns `None` (with a message) where sshd cannot run here.
    /// Under `CI=true` a fleet that cannot start fails the test instead.
    pub(crate) fn start(n: usize) -> Option<Fleet> {
        static SERIAL: Mutex<()> = Mutex::new(());
        let _guard = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = why_unavailable().map_or_else(|| Fleet::try_start(n), Err);
        match result {
            Ok(f) => Some(f),
            Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("the ssh test fleet cannot start under CI=true: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED: ssh fleet unavailable: {why}");
                None
            }
        }
    }

    fn try_start(n: usize) -> Result<Fleet, String> {
        static BLOCK: AtomicU32 = AtomicU32::new(0);
        let key = client_key()?;
        std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
        let block = BLOCK.fetch_add(1, Ordering::SeqCst);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut fleet = Fleet {
            known_hosts: dir.path().join("known_hosts"),
            dir,
            hosts: Vec::new(),
            children: Vec::new(),
        };
        for i in 1..=n {
            // 127.0.0.0/8 is all loopback: every host gets an address of its own.
            let addr = format!(
                "127.{}.{}.{}",
                100 + block % 100,
                (std::process::id() % 250) + 1,
                i
            );
            fleet.add_host(&format!("web{i}"), &addr, None)?;
        }
        let _ = key;
        Ok(fleet)
    }

    /// Starts one more host: its own host key and sshd on `addr` (port 22, else 2200+),
    /// inside network namespace `netns` when given, and adds it to known_hosts.
    pub(crate) fn add_host(
        &mut self,
        name: &str,
        addr: &str,
        netns: Option<&str>,
    ) -> Result<(), String> {
        let i = u16::try_from(self.hosts.len()).map_err(|e| e.to_string())? + 1;
        let hdir = self.dir.path().join(name);
        std::fs::create_dir_all(&hdir).map_err(|e| e.to_string())?;
        let (hkey, host_key_pub) = host_key(&hdir, name)?;
        let mut started = None;
        for port in [22, 2200 + i] {
            if listening(addr, port) {
                continue;
            }
            let config = hdir.join("sshd_config");
            let log = hdir.join("sshd.log");
            std::fs::write(&config, sshd_config(addr, port, &hkey)).map_err(|e| e.to_string())?;
            let mut cmd = match netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, SSHD]);
                    c
                }
                None => Command::new(SSHD),
            };
            let mut child = cmd
                .arg("-D")
                .arg("-f")
                .arg(&config)
                .arg("-E")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{SSHD}: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !listening(addr, port) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if listening(addr, port) {
                started = Some((port, log, child));
                break;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let Some((port, log, child)) = started else {
            return Err(format!(
                "sshd for {name} on {addr} did not start (see {})",
                hdir.display()
            ));
        };
        let line = known_hosts_line(addr, port, &host_key_pub);
        let mut known = std::fs::read_to_string(&self.known_hosts).unwrap_or_default();
        known.push_str(&line);
        std::fs::write(&self.known_hosts, known).map_err(|e| e.to_string())?;
        self.children.push(Some(child));
        self.hosts.push(FleetHost {
            name: name.to_owned(),
            addr: addr.to_owned(),
            port,
            log,
            host_key_pub,
        });
        Ok(())
    }

    /// A deploy path per host under the deploy user's home, unique to this fleet:
    /// `(host name, /home/deploy/<prefix>-<pid>-<address>/<host>)`.
    pub(crate) fn deploy_roots(&self, prefix: &str) -> Vec<(String, String)> {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            self.hosts[0].addr.replace('.', "-")
        );
        self.hosts
            .iter()
            .map(|h| {
                (
                    h.name.clone(),
                    format!("/home/{USER}/{prefix}-{tag}/{}", h.name),
                )
            })
            .collect()
    }

    #[expect(
        clippy::unused_self,
        reason = "the key is shared by every fleet; asked of the fleet that uses it"
    )]
    pub(crate) fn client_key(&self) -> PathBuf {
        client_key().map(|k| k.path.clone()).unwrap_or_default()
    }

    /// A `runbook.toml` for this fleet: environment `fleet`, role `web` = every host.
    pub(crate) fn inventory(&self, extra: &str) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("{} = \"{}:{}\"", h.name, h.addr, h.port))
            .collect();
        let names: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("\"{}\"", h.name))
            .collect();
        format!(
            "[app]\nname = \"t\"\ndeploy_path = \"/home/{USER}/app\"\n\n[ssh]\nuser = \"{USER}\"\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\nconnect_timeout = \"5s\"\n{extra}\n[env.fleet]\nhosts = {{ {} }}\nroles = {{ web = [{}] }}\n",
            self.client_key().display(),
            self.known_hosts.display(),
            hosts.join(", "),
            names.join(", ")
        )
    }

    /// Stops one host's sshd (a host that went away).
    pub(crate) fn stop(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// How many logins a host has accepted (each is one TCP connection).
    pub(crate) fn logins(&self, index: usize) -> usize {
        std::fs::read_to_string(&self.hosts[index].log)
            .unwrap_or_default()
            .matches("Accepted publickey")
            .count()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An inventory for `fleet` with a deploy path per host (`roots`: name and path) and role
/// `web` = every host; `app`, `ssh` and `env` are added to those tables.
pub(crate) fn per_host_inventory(
    fleet: &Fleet,
    roots: &[(String, String)],
    app: &str,
    ssh: &str,
    env: &str,
) -> String {
    let hosts: Vec<String> = fleet
        .hosts
        .iter()
        .zip(roots)
        .map(|(h, (_, root))| {
            format!(
                "{} = {{ address = \"{}\", port = {}, deploy_path = \"{root}\" }}",
                h.name, h.addr, h.port
            )
        })
        .collect();
    let names: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| format!("\"{}\"", h.name))
        .collect();
    format!(
        "[app]\nname = \"t\"\ndeploy_path = \"/srv/unused\"\n{app}\n[ssh]\nuser = \"{USER}\"\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\n{ssh}\n[env.fleet]\n{env}\nhosts = {{ {} }}\nroles = {{ web = [{}] }}\n",
        fleet.client_key().display(),
        fleet.known_hosts.display(),
        hosts.join(", "),
        names.join(", ")
    )
}
