//! php-fpm and nginx of one web host, inside the host's namespaces: nginx serves
//! `/var/www/app/current/public` on the host's own address (its `url`) and
//! `/var/www/app/next/public` on a second port (its `preview_url`); php-fpm runs with
//! production OPcache (`opcache.enable=1`, `opcache.validate_timestamps=0`). Pid files,
//! the socket and temp paths are under the host's `/run`, logs under its `/var/log`.
//!
//! The php-fpm master runs as the deploy user, so the deploy user can reload it
//! gracefully over SSH: [`PHP_FPM_RELOAD`] is the command for `vars.php_fpm_reload`.

use crate::fleet::{self, USER};
use crate::support::host::{self, NsHost};

/// How nginx hands the script path to php-fpm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DocRoot {
    /// `$realpath_root`: the resolved release directory — each release has new paths.
    Realpath,
    /// `$document_root`: the `current` symlink path — the common setup in which
    /// OPcache (and PHP's realpath cache) keep the old release's code after a switch.
    Document,
}

/// A graceful php-fpm reload as the deploy user (USR2 to the master: new workers, empty
/// OPcache), as an inventory list for `vars.php_fpm_reload`.
pub(crate) const PHP_FPM_RELOAD: &str =
    r#"["sh", "-c", "kill -USR2 \"$(cat /run/php-fpm/php-fpm.pid)\""]"#;

/// The ports a web host's nginx serves `current` (url) and `next` (preview_url) on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ports {
    pub current: u16,
    pub next: u16,
}

fn php_fpm() -> Option<std::path::PathBuf> {
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

pub(crate) fn why_unavailable() -> Option<String> {
    crate::support::missing(&[
        ("/usr/sbin/nginx", "nginx"),
        (
            "/usr/share/php/Illuminate/autoload.php",
            "php-laravel-framework",
        ),
        ("/usr/bin/php", "php-cli"),
    ])
    .or_else(|| php_fpm().is_none().then(|| "missing php-fpm".to_owned()))
}

fn port(addr: &str, preferred: u16) -> u16 {
    if fleet::listening(addr, preferred) {
        crate::support::free_port_on(addr)
    } else {
        preferred
    }
}

fn server(addr: &str, port: u16, link: &str, docroot: DocRoot) -> String {
    let var = match docroot {
        DocRoot::Realpath => "$realpath_root",
        DocRoot::Document => "$document_root",
    };
    format!(
        "  server {{\n    listen {addr}:{port};\n    root /var/www/app/{link}/public;\n    index index.php;\n    location / {{ try_files $uri /index.php?$query_string; }}\n    location ~ \\.php$ {{\n      include /etc/nginx/fastcgi_params;\n      fastcgi_pass unix:/run/php-fpm/php-fpm.sock;\n      fastcgi_param SCRIPT_FILENAME {var}$fastcgi_script_name;\n      fastcgi_param DOCUMENT_ROOT {var};\n    }}\n  }}\n"
    )
}

pub(crate) fn start(h: &mut NsHost, docroot: DocRoot) -> Result<Ports, String> {
    let fpm = php_fpm().ok_or("missing php-fpm")?;
    let deploy = host::deploy_ids()?;
    for dir in ["/run/php-fpm", "/var/log/php-fpm", "/run/nginx"] {
        let p = h.path(dir);
        std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&p, Some(deploy.0), Some(deploy.1)).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(h.path("/var/log/nginx")).map_err(|e| e.to_string())?;
    host::write(
        &h.path("/run/php-fpm/php-fpm.conf"),
        "[global]\npid = /run/php-fpm/php-fpm.pid\nerror_log = /var/log/php-fpm/error.log\ndaemonize = no\n\n[app]\nlisten = /run/php-fpm/php-fpm.sock\nlisten.mode = 0660\npm = static\npm.max_children = 3\nclear_env = no\ncatch_workers_output = yes\n",
        0o644,
        None,
    )?;
    let ports = Ports {
        current: port(&h.addr, 80),
        next: port(&h.addr, 8080),
    };
    host::write(
        &h.path("/run/nginx/nginx.conf"),
        &format!(
            "user {USER};\nworker_processes 1;\npid /run/nginx/nginx.pid;\nerror_log /var/log/nginx/error.log warn;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path /run/nginx/body;\n  fastcgi_temp_path /run/nginx/fastcgi;\n  proxy_temp_path /run/nginx/proxy;\n  uwsgi_temp_path /run/nginx/uwsgi;\n  scgi_temp_path /run/nginx/scgi;\n{}{}}}\n",
            server(&h.addr, ports.current, "current", docroot),
            server(&h.addr, ports.next, "next", docroot),
        ),
        0o644,
        None,
    )?;
    let fpm = fpm.display().to_string();
    h.spawn(
        &[
            &fpm,
            "--nodaemonize",
            "--fpm-config",
            "/run/php-fpm/php-fpm.conf",
            "-d",
            "opcache.enable=1",
            "-d",
            "opcache.validate_timestamps=0",
        ],
        true,
    )?;
    h.spawn(
        &[
            "/usr/sbin/nginx",
            "-e",
            "/var/log/nginx/error.log",
            "-c",
            "/run/nginx/nginx.conf",
            "-g",
            "daemon off;",
        ],
        false,
    )?;
    let sock = h.path("/run/php-fpm/php-fpm.sock");
    let addr = h.addr.clone();
    crate::support::wait_until(10, "php-fpm and nginx to come up", || {
        sock.exists()
            && fleet::listening(&addr, ports.current)
            && fleet::listening(&addr, ports.next)
    })
    .map_err(|e| {
        let log = |p: &str| std::fs::read_to_string(h.path(p)).unwrap_or_default();
        format!(
            "{e} on {}:\n{}\n{}",
            h.name,
            log("/var/log/nginx/error.log"),
            log("/var/log/php-fpm/error.log")
        )
    })?;
    Ok(ports)
}
