//! One test host that is its own machine as far as a deploy can tell: a mount, UTS and
//! PID namespace (`unshare`) in which the host's own backing directories are mounted over
//! `/var/www`, `/var/backups`, `/home`, `/run`, `/var/log` and `/tmp`, with `sshd -D` as
//! its PID 1 on the host's own loopback address. `/usr`, `/etc` and the network are
//! shared with this machine, as the rest of a fleet shares a data centre.
//!
//! A file one host writes under `/var/www` is invisible to the others; the backing
//! directory of each host is mode 0700 root, so the deploy user of one host cannot reach
//! another's tree through it. Servers of a host (php-fpm, nginx, supervisord) are entered
//! into its namespaces with `nsenter` ([`NsHost::spawn`]). Dropping the host kills its
//! PID 1, which ends every process in the namespace, and reaps the wrappers.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::{self, USER};

/// (backing directory under the host's root, where the host sees it). `/tmp` comes last:
/// the backing directories themselves live under this machine's `/tmp`.
pub(crate) const MOUNTS: &[(&str, &str)] = &[
    ("www", "/var/www"),
    ("backups", "/var/backups"),
    ("home", "/home"),
    ("run", "/run"),
    ("log", "/var/log"),
    ("tmp", "/tmp"),
];

/// Mounts the host's own directories, then becomes its sshd.
const BOOT: &str = r#"set -e
root=$1 name=$2 srv=$3
hostname "$name"
mount --bind "$root/www" /var/www
mount --bind "$root/backups" /var/backups
mount --bind "$root/home" /home
mount --bind "$root/run" /run
mount --bind "$root/log" /var/log
if [ -n "$srv" ]; then mount -o bind,ro "$srv" /srv; fi
mount --bind "$root/tmp" /tmp
exec /usr/sbin/sshd -D -f /run/ssh/sshd_config -E /var/log/sshd.log
"#;

pub(crate) struct NsHost {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub host_key_pub: String,
    /// The host's own disk: `<root>/www` is what it sees as `/var/www`, and so on.
    pub root: PathBuf,
    /// The PID (in this machine's PID namespace) of the host's PID 1, its sshd.
    pub pid1: i32,
    wrapper: Option<Child>,
    inside: Vec<Child>,
}

/// The deploy user's uid and gid.
pub(crate) fn deploy_ids() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, USER])
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("id {flag} {USER}: no such user"))
    };
    Ok((id("-u")?, id("-g")?))
}

fn mkdir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| e.to_string())?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(path, Some(u), Some(g)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes `text` to `path`, owned by `owner` when given.
pub(crate) fn write(
    path: &Path,
    text: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| e.to_string())?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(path, Some(u), Some(g)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub(crate) fn why_unavailable() -> Option<String> {
    fleet::why_unavailable().or_else(|| {
        crate::support::missing(&[
            ("/usr/bin/unshare", "util-linux"),
            ("/usr/bin/nsenter", "util-linux"),
        ])
    })
}

/// The host's own disk under `root`: the mount points, the deploy and backup
/// directories, and the deploy user's home with `authorized_keys` and `~/.gitconfig`.
fn prepare_disk(root: &Path, client_pub: &str, safe_dir: &str) -> Result<(), String> {
    let deploy = deploy_ids()?;
    mkdir(root, 0o700, None)?;
    for (dir, _) in MOUNTS {
        mkdir(
            &root.join(dir),
            if *dir == "tmp" { 0o1777 } else { 0o755 },
            None,
        )?;
    }
    mkdir(&root.join("www/app"), 0o755, Some(deploy))?;
    mkdir(&root.join("backups/app"), 0o750, Some(deploy))?;
    mkdir(&root.join("run/sshd"), 0o755, None)?;
    let home = root.join("home").join(USER);
    mkdir(&home.join(".ssh"), 0o700, Some(deploy))?;
    std::os::unix::fs::chown(&home, Some(deploy.0), Some(deploy.1)).map_err(|e| e.to_string())?;
    write(
        &home.join(".ssh/authorized_keys"),
        client_pub,
        0o600,
        Some(deploy),
    )?;
    write(
        &home.join(".gitconfig"),
        &format!("[safe]\n\tdirectory = {safe_dir}\n"),
        0o644,
        Some(deploy),
    )?;
    Ok(())
}

impl NsHost {
    /// Starts host `name` on `addr` with its own disk under `root` (created here), the
    /// deploy user's `authorized_keys` holding `client_pub`, a `~/.gitconfig` that trusts
    /// `safe_dir`, and `srv` (read-only, e.g. the git server's repositories) as `/srv`.
    pub(crate) fn start(
        root: PathBuf,
        name: &str,
        addr: &str,
        client_pub: &str,
        srv: Option<&Path>,
        safe_dir: &str,
    ) -> Result<NsHost, String> {
        prepare_disk(&root, client_pub, safe_dir)?;
        let ssh_dir = root.join("run/ssh");
        mkdir(&ssh_dir, 0o700, None)?;
        let (_, host_key_pub) = fleet::host_key(&ssh_dir, name)?;
        let port = if fleet::listening(addr, 22) {
            crate::support::free_port_on(addr)
        } else {
            22
        };
        write(
            &ssh_dir.join("sshd_config"),
            &fleet::sshd_config(addr, port, Path::new("/run/ssh/host_key")),
            0o600,
            None,
        )?;
        let wrapper = Command::new("/usr/bin/unshare")
            .args([
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child=SIGKILL",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                BOOT,
                "sh",
            ])
            .arg(&root)
            .arg(name)
            .arg(srv.map(Path::as_os_str).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let mut host = NsHost {
            name: name.to_owned(),
            addr: addr.to_owned(),
            port,
            host_key_pub,
            root,
            pid1: 0,
            wrapper: Some(wrapper),
            inside: Vec::new(),
        };
        let upid = host.wrapper.as_ref().map_or(0, Child::id);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exited = host
                .wrapper
                .as_mut()
                .is_some_and(|w| w.try_wait().ok().flatten().is_some());
            if exited {
                let err = host
                    .wrapper
                    .take()
                    .and_then(|w| w.wait_with_output().ok())
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                let log =
                    std::fs::read_to_string(host.root.join("log/sshd.log")).unwrap_or_default();
                return Err(format!("host {name} did not boot: {err}{log}"));
            }
            if host.pid1 == 0 {
                host.pid1 = std::fs::read_to_string(format!("/proc/{upid}/task/{upid}/children"))
                    .ok()
                    .and_then(|c| c.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
            }
            if host.pid1 != 0 && fleet::listening(addr, port) {
                break;
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(host.root.join("log/sshd.log")).unwrap_or_default();
                return Err(format!(
                    "sshd of {name} did not listen on {addr}:{port}: {log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(host)
    }

    /// Where this machine sees what the host sees at `inside` (an absolute path under
    /// one of the host's own mounts).
    pub(crate) fn path(&self, inside: &str) -> PathBuf {
        for (dir, at) in MOUNTS {
            if let Some(rest) = inside.strip_prefix(at)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return self.root.join(dir).join(rest.trim_start_matches('/'));
            }
        }
        panic!("{inside} is not on one of the host's own disks ({MOUNTS:?})")
    }

    fn nsenter(&self, as_deploy: bool) -> Command {
        let mut cmd = Command::new("/usr/bin/nsenter");
        cmd.arg(format!("--target={}", self.pid1))
            .args(["--mount", "--uts", "--pid", "--wdns=/"]);
        if as_deploy && let Ok((u, g)) = deploy_ids() {
            cmd.arg(format!("--setuid={u}"))
                .arg(format!("--setgid={g}"))
                .env("HOME", format!("/home/{USER}"))
                .env("USER", USER)
                .env("LOGNAME", USER);
        }
        cmd.arg("--");
        cmd
    }

    /// Starts a server inside the host (as the deploy user or as root); it is stopped
    /// with the host.
    pub(crate) fn spawn(&mut self, argv: &[&str], as_deploy: bool) -> Result<(), String> {
        let child = self
            .nsenter(as_deploy)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("nsenter {argv:?} on {}: {e}", self.name))?;
        self.inside.push(child);
        Ok(())
    }

    /// Runs a command inside the host to its end.
    pub(crate) fn exec(&self, argv: &[&str], as_deploy: bool) -> Output {
        self.nsenter(as_deploy)
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter {argv:?} on {}: {e}", self.name))
    }

    /// Every process of the host (its PID namespace), as seen from this machine.
    fn processes(&self) -> Vec<i32> {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let Some(own) = ns(&self.pid1.to_string()) else {
            return Vec::new();
        };
        std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|p| ns(&p.to_string()).as_ref() == Some(&own))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn signal_all(&self, sig: nix::sys::signal::Signal) {
        // Twice: a process forked while the first pass ran is caught by the second.
        for _ in 0..2 {
            for p in self.processes() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
            }
        }
    }

    /// The host hangs: every process inside it is stopped (SIGSTOP). Its TCP connections
    /// stay up (the kernel still answers), but nothing answers on them: to a runner it is
    /// a hung machine, noticed only by ssh keep-alives.
    pub(crate) fn pause(&self) {
        self.signal_all(nix::sys::signal::Signal::SIGSTOP);
    }

    /// The hung host goes on where it stopped.
    pub(crate) fn resume(&self) {
        self.signal_all(nix::sys::signal::Signal::SIGCONT);
        // util-linux's wrappers stop themselves when their child was stopped.
        for c in self.wrapper.iter().chain(&self.inside) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id().cast_signed()),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }

    /// The host goes away: its PID 1 is killed, and with it every process inside.
    pub(crate) fn stop(&mut self) {
        if self.pid1 > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid1),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // util-linux's wrappers stop themselves when their child was stopped: resume
        // them, or they never notice the end of the namespace.
        let mut all: Vec<Child> = self.wrapper.take().into_iter().collect();
        all.append(&mut self.inside);
        for c in &all {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id().cast_signed()),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        for mut c in all {
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.pid1 = 0;
    }
}

impl Drop for NsHost {
    fn drop(&mut self) {
        self.stop();
    }
}
