//! Debian's `supervisord` on a worker host, inside the host's namespaces with its own
//! configuration under the host's `/run/supervisor` and logs under
//! `/var/log/supervisor`: it keeps `php artisan queue:work` of the live release running
//! as the deploy user and restarts it whenever it exits — so `artisan queue:restart`
//! (workers finish their job and exit) is the real thing.

use crate::fleet::USER;
use crate::support::host::{self, NsHost};

/// The worker's command. Until the first release is live there is nothing to run: the
/// wrapper waits for it, then becomes the worker (supervisord watches the php process).
pub(crate) const WORKER: &str = "until [ -e /var/www/app/current/artisan ]; do sleep 0.2; done; exec php /var/www/app/current/artisan queue:work redis --sleep=1 --tries=1";

pub(crate) fn start(h: &mut NsHost) -> Result<(), String> {
    if let Some(why) = crate::support::missing(&[("/usr/bin/supervisord", "supervisor")]) {
        return Err(why);
    }
    std::fs::create_dir_all(h.path("/var/log/supervisor")).map_err(|e| e.to_string())?;
    host::write(
        &h.path("/run/supervisor/supervisord.conf"),
        &format!(
            "[supervisord]\nnodaemon=true\nuser=root\nlogfile=/var/log/supervisor/supervisord.log\npidfile=/run/supervisor/supervisord.pid\nchildlogdir=/var/log/supervisor\n\n\
             [unix_http_server]\nfile=/run/supervisor/supervisor.sock\nchmod=0700\n\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl=unix:///run/supervisor/supervisor.sock\n\n\
             [program:queue]\ncommand=/bin/sh -c '{WORKER}'\nuser={USER}\ndirectory=/var/www/app\nenvironment=HOME=\"/home/{USER}\",USER=\"{USER}\"\n\
             autostart=true\nautorestart=true\nstartsecs=0\nstartretries=1000\nstopwaitsecs=10\nstopasgroup=true\nkillasgroup=true\n\
             redirect_stderr=true\nstdout_logfile=/var/log/supervisor/queue.log\n"
        ),
        0o644,
        None,
    )?;
    h.spawn(
        &[
            "/usr/bin/supervisord",
            "-n",
            "-c",
            "/run/supervisor/supervisord.conf",
        ],
        false,
    )?;
    crate::support::wait_until(15, "supervisord to run the queue worker", || {
        status(h).contains("RUNNING")
    })
    .map_err(|e| {
        let log = std::fs::read_to_string(h.path("/var/log/supervisor/supervisord.log"))
            .unwrap_or_default();
        format!("{e} on {}: {log}", h.name)
    })
}

/// `supervisorctl status queue` on the host, e.g. "queue  RUNNING  pid 42, uptime 0:00:03".
pub(crate) fn status(h: &NsHost) -> String {
    let out = h.exec(
        &[
            "/usr/bin/supervisorctl",
            "-c",
            "/run/supervisor/supervisord.conf",
            "status",
            "queue",
        ],
        false,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
