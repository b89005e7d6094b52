//! What the fleet is right now, read from the hosts alone: per host the live release
//! (ref, commit, age), the previous good one, the deploy lock and any freeze, maintenance
//! mode, the release php-fpm actually executes (from the health answer), queue workers,
//! and room for one more release and one backup — and the judgement an on-call engineer
//! needs first: is the fleet consistent, and if not, what exactly to run.
//!
//! Plain Rust over the effect layer: three read-only round trips per host (the lock's
//! state, the release list, a probe of disk and workers), every host at once, plus one
//! health request per host with a `url`.

use crate::num::ToF64;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::effects::{Effects, FanOut, HostError, Target};
use crate::inventory::Environment;
use crate::lock::Freeze;
use crate::release::Listed;
use crate::transport::CommandSpec;

/// Free disk, the live release's size, the newest backup's size, queue workers.
const PROBE: &str = r#"root=$1 backups=$2 worker=$3
df -Pk "$root" 2>/dev/null | awk 'NR==2 {print "free\t" $4}'
[ -d "$root/current/" ] && du -sk "$root/current/" 2>/dev/null | awk '{print "release\t" $1}'
b=$(ls -1t "$backups"/*.tar.gz 2>/dev/null | head -n 1)
[ -z "$b" ] || du -k "$b" 2>/dev/null | awk '{print "backup\t" $1}'
if [ "$worker" = 1 ] && command -v pgrep >/dev/null 2>&1; then
  # None: a worker may be between a restart and its respawn; look once more.
  n=$(pgrep -fc '[q]ueue:work'); [ "$n" != 0 ] || { sleep 2; n=$(pgrep -fc '[q]ueue:work'); }
  echo "workers	$n"
fi
true
"#;

/// Roles of hosts that get no releases (a host with only these, or no role at all, or
/// the balancer of `vars.traffic`, is not judged for its release).
const INFRA_ROLES: [&str; 8] = [
    "lb",
    "balancer",
    "loadbalancer",
    "db",
    "database",
    "redis",
    "cache",
    "bastion",
];

/// The roles whose hosts run queue workers.
const WORKER_ROLES: [&str; 3] = ["worker", "workers", "queue"];

/// The deploy lock as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LockView {
    pub run: String,
    pub actor: String,
    pub machine: String,
    pub pid: u32,
    pub script: String,
    pub started_at: String,
    pub reason: Option<String>,
    /// Seconds since its last heartbeat.
    pub heartbeat_age: Option<u64>,
    /// No heartbeat for longer than the lock's TTL, or its process (on this machine) is
    /// gone: the run that holds it is dead.
    pub dead: bool,
}

/// One host, as it is.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct HostStatus {
    pub host: String,
    pub roles: Vec<String>,
    /// Whether releases are deployed to this host (a web or worker host, not the
    /// balancer): only these must all serve one release.
    pub gets_releases: bool,
    /// Why the host did not answer (then nothing else is known).
    pub unreachable: Option<String>,
    /// The release `current` points at ("" when none).
    pub live: String,
    pub live_ref: Option<String>,
    pub live_commit: Option<String>,
    pub live_by: Option<String>,
    pub live_created_at: Option<String>,
    /// Age of the live release in seconds.
    pub live_age_s: Option<i64>,
    pub live_bad: bool,
    /// The newest complete, good release older than the live one on this host.
    pub previous_good: Option<String>,
    pub releases: usize,
    pub lock: Option<LockView>,
    pub lock_temporaries: Vec<String>,
    pub freeze: Option<Freeze>,
    pub maintenance: bool,
    /// The release php-fpm executes, from the host's health answer (`release` field).
    pub serves: Option<String>,
    /// Why `serves` is unknown or doubtful (no url, a failed health answer).
    pub serves_note: Option<String>,
    /// Queue workers running (worker hosts only).
    pub workers: Option<u64>,
    pub free_bytes: Option<u64>,
    /// Room one more release and one backup take (the live release's and the newest
    /// backup's sizes).
    pub need_bytes: Option<u64>,
}

/// Something that keeps the fleet from being one whole, healthy release, with the
/// command that fixes it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Problem {
    pub what: String,
    pub fix: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FleetStatus {
    pub env: String,
    pub hosts: Vec<HostStatus>,
    /// The release every host serves, when they agree.
    pub live: Option<String>,
    /// Where a plain `rollback` would go (complete and good on every host).
    pub rollback_target: Option<String>,
    pub consistent: bool,
    pub problems: Vec<Problem>,
    /// Facts worth knowing that are not problems (a deploy in progress, a freeze).
    pub notes: Vec<String>,
    pub took_ms: u64,
}

/// Reads every host of `env` and judges the whole.
pub(crate) fn read(effects: &Effects, env: &Environment) -> FleetStatus {
    let clock = std::time::Instant::now();
    let targets: Vec<Target> = env.hosts.iter().cloned().map(Target::Host).collect();
    let (lock_states, lists, probes) = read_hosts(effects, env, &targets);
    let served = health(effects, env);
    let now = chrono::Utc::now();
    let mut hosts = Vec::new();
    let mut all_lists = Vec::new();
    let any_roles = env.hosts.iter().any(|h| !h.roles.is_empty());
    let balancer = env
        .vars
        .get("traffic")
        .and_then(|t| t.get("host"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned);
    for (i, t) in targets.iter().enumerate() {
        let Target::Host(h) = t else { continue };
        let gets_releases = balancer.as_deref() != Some(h.name.as_str())
            && (!any_roles || h.roles.iter().any(|r| !INFRA_ROLES.contains(&r.as_str())));
        let mut st = HostStatus {
            host: h.name.clone(),
            roles: h.roles.clone(),
            gets_releases,
            ..HostStatus::default()
        };
        match (&lock_states[i], &lists[i]) {
            (Err(e), _) | (_, Err(e)) => {
                st.unreachable = Some(e.to_string().trim().to_owned());
                hosts.push(st);
                continue;
            }
            (Ok(lock), Ok(list)) => {
                read_lock_and_list(&mut st, lock, list, now);
                let own = [(h.name.clone(), list.clone())];
                st.previous_good = crate::release::choose_target(&own, None).ok();
                if gets_releases {
                    all_lists.push((h.name.clone(), list.clone()));
                }
            }
        }
        if let Some(p) = probes.get(&h.name) {
            st.free_bytes = p.free_kb.map(|k| k * 1024);
            st.need_bytes = match (p.release_kb, p.backup_kb) {
                (None, None) => None,
                (r, b) => Some((r.unwrap_or(0) + b.unwrap_or(0)) * 1024),
            };
            st.workers = p.workers;
        }
        match served.get(&h.name) {
            Some(Ok(release)) => st.serves = Some(release.clone()),
            Some(Err(note)) => st.serves_note = Some(note.to_string()),
            None => st.serves_note = Some("no url in the inventory".to_owned()),
        }
        hosts.push(st);
    }
    let rollback_target = if all_lists.len() == hosts.iter().filter(|h| h.gets_releases).count() {
        crate::release::choose_target(&all_lists, None).ok()
    } else {
        None
    };
    let mut status = FleetStatus {
        env: env.name.clone(),
        live: None,
        rollback_target,
        consistent: true,
        problems: Vec::new(),
        notes: Vec::new(),
        took_ms: 0,
        hosts,
    };
    judge(&mut status, &all_lists, now.timestamp());
    status.took_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    status
}

/// What a reachable host's lock state and release list say about it.
fn read_lock_and_list(
    st: &mut HostStatus,
    lock: &crate::lock::HostState,
    list: &[Listed],
    now: chrono::DateTime<chrono::Utc>,
) {
    st.live.clone_from(&lock.current);
    st.maintenance = lock.down;
    st.freeze.clone_from(&lock.freeze);
    st.lock_temporaries.clone_from(&lock.temporaries);
    st.lock = lock.holder.as_ref().map(|holder| LockView {
        run: holder.run.clone(),
        actor: holder.actor.clone(),
        machine: holder.machine.clone(),
        pid: holder.pid,
        script: holder.script.clone(),
        started_at: holder.started_at.clone(),
        reason: holder.reason.clone(),
        heartbeat_age: lock.beat_age,
        dead: lock
            .beat_age
            .is_some_and(|a| a > crate::lock::DEFAULT_TTL.as_secs())
            || crate::lock::holder_is_gone(holder),
    });
    st.releases = list.iter().filter(|r| r.state == "complete").count();
    if let Some(r) = list.iter().find(|r| r.live) {
        st.live_bad = r.bad;
        if let Some(m) = &r.meta {
            st.live_ref = Some(m.git_ref.clone()).filter(|s| !s.is_empty());
            st.live_commit = Some(m.commit.clone()).filter(|s| !s.is_empty());
            st.live_by = Some(m.by.clone()).filter(|s| !s.is_empty());
            st.live_created_at = Some(m.created_at.clone());
            st.live_age_s = chrono::DateTime::parse_from_rfc3339(&m.created_at)
                .ok()
                .map(|at| (now - at.with_timezone(&chrono::Utc)).num_seconds());
        }
    }
}

#[derive(Debug, Default)]
struct Probe {
    free_kb: Option<u64>,
    release_kb: Option<u64>,
    backup_kb: Option<u64>,
    workers: Option<u64>,
}

type HostReads = (
    Vec<Result<crate::lock::HostState, HostError>>,
    Vec<Result<Vec<Listed>, HostError>>,
    BTreeMap<String, Probe>,
);

/// One round trip per host, all hosts at once: the lock's state, the release list and the
/// probe, each in its own subshell, their outputs apart by marker lines.
fn read_hosts(effects: &Effects, env: &Environment, targets: &[Target]) -> HostReads {
    let script = format!(
        "( {}\n)\necho '@@runbook-list'\n( {}\n)\necho '@@runbook-probe'\n( {}\n)\n",
        crate::lock::state_script(),
        crate::release::list_script(),
        PROBE
    );
    let fan = FanOut {
        fail_fast: false,
        ..FanOut::new()
    };
    let build = |t: &Target| {
        let (root, worker) = match t {
            Target::Host(h) => (
                h.deploy_path.clone(),
                h.roles.iter().any(|r| WORKER_ROLES.contains(&r.as_str())),
            ),
            Target::Local => (String::new(), false),
        };
        let mut spec = CommandSpec::script(
            "status: what the host is",
            &script,
            &[&root, &env.backup_dir, if worker { "1" } else { "0" }],
        );
        spec.quiet = true;
        spec.read = true;
        spec
    };
    let mut states = Vec::new();
    let mut lists = Vec::new();
    let mut probes = BTreeMap::new();
    for (t, o) in targets
        .iter()
        .zip(effects.run_many_with(targets, &build, &fan))
    {
        match o.result() {
            Ok(r) => {
                let (state, rest) = r
                    .stdout
                    .split_once("@@runbook-list\n")
                    .unwrap_or((&r.stdout, ""));
                let (list, probe) = rest.split_once("@@runbook-probe\n").unwrap_or((rest, ""));
                states.push(Ok(crate::lock::parse_state(t.name(), state)));
                lists.push(Ok(crate::release::parse_list(list)));
                probes.insert(t.name().to_owned(), parse_probe(probe));
            }
            Err(why) => {
                states.push(Err(why.clone()));
                lists.push(Err(why));
            }
        }
    }
    (states, lists, probes)
}

fn parse_probe(stdout: &str) -> Probe {
    let mut p = Probe::default();
    for line in stdout.lines() {
        let (k, v) = line.split_once('\t').unwrap_or((line, ""));
        let v = v.trim().parse().ok();
        match k {
            "free" => p.free_kb = v,
            "release" => p.release_kb = v,
            "backup" => p.backup_kb = v,
            "workers" => p.workers = v,
            _ => {}
        }
    }
    p
}

/// The health path whose JSON answer names the release (`vars.health_path`, else the
/// seed's `/api/health`).
fn health_path(env: &Environment) -> String {
    env.vars
        .get("health_path")
        .and_then(toml::Value::as_str)
        .unwrap_or("/api/health")
        .to_owned()
}

/// Why the release a host serves is unknown (a note in the status, not a failure).
#[derive(Debug, Clone, thiserror::Error)]
enum NotServed {
    #[error("cannot ask: {0}")]
    CannotAsk(Arc<crate::health::ClientError>),
    #[error(transparent)]
    Http(crate::effects::http::HttpError),
    #[error("{url} answers without a `release` field")]
    NoReleaseField { url: String },
    /// The health check failed; `line` is its report.
    #[error("{url}: {line}")]
    Failed { url: String, line: String },
}

/// Per host with a `url`: the release its health answer names, or why that is unknown.
fn health(effects: &Effects, env: &Environment) -> BTreeMap<String, Result<String, NotServed>> {
    let path = health_path(env);
    let with_url: Vec<(String, String)> = env
        .hosts
        .iter()
        .filter_map(|h| {
            h.url
                .as_ref()
                .map(|u| (h.name.clone(), format!("{}{path}", u.trim_end_matches('/'))))
        })
        .collect();
    if with_url.is_empty() {
        return BTreeMap::new();
    }
    let opts = crate::health::CheckOptions {
        timeout: Duration::from_secs(3),
        ..crate::health::CheckOptions::default()
    };
    let client = match crate::health::client(&opts) {
        Ok(c) => c,
        Err(e) => {
            let e = Arc::new(e);
            return with_url
                .into_iter()
                .map(|(h, _)| (h, Err(NotServed::CannotAsk(e.clone()))))
                .collect();
        }
    };
    let urls: Vec<String> = with_url.iter().map(|(_, u)| u.clone()).collect();
    let reports = match effects.http_read(
        "health",
        opts.bound(),
        crate::health::check_all(&client, &urls, &opts),
    ) {
        Ok(reports) => reports,
        Err(e) => {
            return with_url
                .into_iter()
                .map(|(h, _)| (h, Err(NotServed::Http(e.clone()))))
                .collect();
        }
    };
    with_url
        .into_iter()
        .zip(reports)
        .map(|((host, url), r)| {
            let release = serde_json::from_str::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|j| j.get("release").and_then(|v| v.as_str()).map(str::to_owned));
            let answer = match (r.ok, release) {
                (true, Some(rel)) => Ok(rel),
                (true, None) => Err(NotServed::NoReleaseField { url }),
                (false, _) => Err(NotServed::Failed {
                    url,
                    line: r.line(),
                }),
            };
            (host, answer)
        })
        .collect()
}

/// The judgement: every host one whole release, nothing half done — else each problem
/// with the command that fixes it.
fn judge(s: &mut FleetStatus, lists: &[(String, Vec<Listed>)], now: i64) {
    let env = s.env.clone();
    let mut found = Findings::default();
    let reachable: Vec<&HostStatus> = s
        .hosts
        .iter()
        .filter(|h| h.unreachable.is_none() && h.gets_releases)
        .collect();
    found.unreachable(&s.hosts, &env);
    let locks = found.locks(&reachable, &env);
    let live = found.one_release(&reachable, lists, &env, locks.busy);
    for h in &reachable {
        found.host(h, &env, &locks);
    }
    found.freezes(&reachable, now);
    if let Some(live) = live {
        s.live = Some(live);
    }
    s.consistent = found.problems.is_empty();
    s.problems = found.problems;
    s.notes = found.notes;
}

/// What the judgement found so far, in the order it looked.
#[derive(Default)]
struct Findings {
    problems: Vec<Problem>,
    notes: Vec<String>,
}

/// The deploy locks the reachable hosts hold.
struct Locks {
    /// A live run holds a lock: a deploy is in progress.
    busy: bool,
    /// A run that is gone left a lock behind.
    any_dead: bool,
}

impl Findings {
    fn unreachable(&mut self, hosts: &[HostStatus], env: &str) {
        for h in hosts.iter().filter(|h| h.unreachable.is_some()) {
            self.problems.push(Problem {
                what: format!(
                    "{} did not answer: {}",
                    h.host,
                    h.unreachable.as_deref().unwrap_or("")
                ),
                fix: format!(
                    "check the host and its SSH access (`runbook hosts -e {env}` lists the addresses), then `runbook status -e {env}` again"
                ),
            });
        }
    }

    /// A run in progress explains what it is doing; a dead one is recover's to fix.
    fn locks(&mut self, reachable: &[&HostStatus], env: &str) -> Locks {
        let live_locks: BTreeSet<String> = reachable
            .iter()
            .filter_map(|h| h.lock.as_ref().filter(|l| !l.dead))
            .map(|l| {
                format!(
                    "run {} by {} (`{}`) since {}",
                    l.run, l.actor, l.script, l.started_at
                )
            })
            .collect();
        for l in &live_locks {
            self.notes.push(format!("a run holds the deploy lock: {l}"));
        }
        // Grouped by the dead run: one problem, every host it left locked.
        let mut dead: BTreeMap<String, (String, u64, Vec<&str>)> = BTreeMap::new();
        for h in reachable {
            if let Some(l) = h.lock.as_ref().filter(|l| l.dead) {
                let entry = dead.entry(l.run.clone()).or_insert_with(|| {
                    (
                        format!(
                            "run {} by {} (`{}`, on {} pid {})",
                            l.run, l.actor, l.script, l.machine, l.pid
                        ),
                        0,
                        Vec::new(),
                    )
                });
                entry.1 = entry.1.max(l.heartbeat_age.unwrap_or(0));
                entry.2.push(&h.host);
            }
        }
        for (who, beat, hosts) in dead.values() {
            self.problems.push(Problem {
                what: format!(
                    "the deploy lock on {} is left by a run that is gone: {who}, last heartbeat {beat} s ago",
                    hosts.join(", ")
                ),
                fix: format!("runbook recover -e {env}"),
            });
        }
        Locks {
            busy: !live_locks.is_empty(),
            any_dead: !dead.is_empty(),
        }
    }

    /// One release everywhere: the release every host serves, if they agree on one.
    fn one_release(
        &mut self,
        reachable: &[&HostStatus],
        lists: &[(String, Vec<Listed>)],
        env: &str,
        busy: bool,
    ) -> Option<String> {
        let lives: BTreeSet<&str> = reachable.iter().map(|h| h.live.as_str()).collect();
        if lives.len() == 1 {
            let only = lives.iter().next().copied().unwrap_or("");
            if !only.is_empty() {
                return Some(only.to_owned());
            }
            if !reachable.is_empty() {
                self.notes.push(
                    "no release is live on any host yet (a first deploy makes one)".to_owned(),
                );
            }
        } else if lives.len() > 1 {
            let who: Vec<String> = reachable
                .iter()
                .map(|h| format!("{} {}", h.host, display(&h.live)))
                .collect();
            // The newest release that is live somewhere and complete on every host.
            let whole = lives
                .iter()
                .filter(|n| !n.is_empty())
                .filter(|n| {
                    lists
                        .iter()
                        .all(|(_, l)| l.iter().any(|r| &r.name == *n && r.state == "complete"))
                })
                .max()
                .copied();
            let fix = if busy {
                "a deploy is in progress (see the lock): wait for it to end, then look again"
                    .to_owned()
            } else if let Some(w) = whole {
                format!("runbook run rollback -e {env} to={w}   (or deploy again)")
            } else {
                format!(
                    "runbook run deploy -e {env} ref=…   (no live release is complete on every host)"
                )
            };
            self.problems.push(Problem {
                what: format!("the hosts serve different releases: {}", who.join(", ")),
                fix,
            });
        }
        None
    }

    /// One host's own problems: a bad release, maintenance left on, stale PHP code, no
    /// workers, a full disk; and its lock temporaries as notes.
    fn host(&mut self, h: &HostStatus, env: &str, locks: &Locks) {
        let busy = locks.busy;
        if !h.live.is_empty() && h.live_bad && !busy {
            self.problems.push(Problem {
                what: format!("{} serves {}, which is marked bad", h.host, h.live),
                fix: format!("runbook run rollback -e {env}   (or deploy a fixed release)"),
            });
        }
        if h.maintenance && h.lock.as_ref().is_none_or(|l| l.dead) && !locks.any_dead {
            self.problems.push(Problem {
                what: format!(
                    "{} is in maintenance mode and no run holds its lock",
                    h.host
                ),
                fix: format!("runbook exec -e {env} --hosts {} -- php artisan up", h.host),
            });
        }
        if let (Some(serves), false) = (&h.serves, h.live.is_empty())
            && serves != &h.live
            && !busy
        {
            self.problems.push(Problem {
                    what: format!(
                        "{}: php-fpm executes {serves} while current is {} (OPcache with nginx passing $document_root)",
                        h.host, h.live
                    ),
                    fix: format!(
                        "reload php-fpm there: runbook exec -e {env} --hosts {} -- sudo systemctl reload php-fpm   (set vars.php_fpm_reload so deploys do it)",
                        h.host
                    ),
                });
        }
        if h.workers == Some(0) && !h.live.is_empty() {
            self.problems.push(Problem {
                what: format!("{}: no queue worker is running", h.host),
                fix: format!("runbook run troubleshoot/restart-queue -e {env}"),
            });
        }
        if let (Some(free), Some(need)) = (h.free_bytes, h.need_bytes)
            && free < need
        {
            self.problems.push(Problem {
                    what: format!(
                        "{}: {} free, one more release and one backup need about {}",
                        h.host,
                        bytes(free),
                        bytes(need)
                    ),
                    fix: format!(
                        "free space on {}: prune backups (`runbook run backup -e {env} action=prune`) and logs (`runbook run maintenance/archive-logs -e {env}`)",
                        h.host
                    ),
                });
        }
        for t in &h.lock_temporaries {
            self.notes
                .push(format!("{}: a lock temporary is left: {t}", h.host));
        }
    }

    /// A freeze is a fact, not a fault.
    fn freezes(&mut self, reachable: &[&HostStatus], now: i64) {
        let freezes: BTreeSet<String> = reachable
            .iter()
            .filter_map(|h| h.freeze.as_ref())
            .map(|f| f.describe(now))
            .collect();
        for f in freezes {
            self.notes.push(format!("deploys are frozen {f}"));
        }
    }
}

fn display(release: &str) -> &str {
    if release.is_empty() {
        "(no release)"
    } else {
        release
    }
}

/// "1.4 GiB", "120 MiB", "900 KiB".
pub(crate) fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n.to_f64();
    if f >= K * K * K {
        format!("{:.1} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.0} MiB", f / (K * K))
    } else {
        format!("{:.0} KiB", f / K)
    }
}

/// "45 s", "12 min", "3 h", "2 d".
pub(crate) fn age(secs: i64) -> String {
    match secs {
        s if s < 90 => format!("{} s", s.max(0)),
        s if s < 90 * 60 => format!("{} min", s / 60),
        s if s < 48 * 3600 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, live: &str) -> HostStatus {
        HostStatus {
            host: name.to_owned(),
            live: live.to_owned(),
            gets_releases: true,
            ..HostStatus::default()
        }
    }

    fn fleet(hosts: Vec<HostStatus>) -> FleetStatus {
        FleetStatus {
            env: "prod".into(),
            hosts,
            live: None,
            rollback_target: None,
            consistent: true,
            problems: Vec::new(),
            notes: Vec::new(),
            took_ms: 0,
        }
    }

    fn listed(name: &str, live: bool) -> Listed {
        Listed {
            name: name.into(),
            state: "complete".into(),
            bad: false,
            live,
            meta: None,
        }
    }

    #[test]
    fn one_release_everywhere_is_consistent() {
        let mut s = fleet(vec![host("web1", "B"), host("web2", "B")]);
        judge(&mut s, &[], 0);
        assert!(s.consistent, "{:?}", s.problems);
        assert_eq!(s.live.as_deref(), Some("B"));
    }

    #[test]
    fn drift_is_named_with_the_rollback_that_makes_it_whole() {
        let mut s = fleet(vec![host("web1", "B"), host("web2", "A")]);
        let lists = vec![
            (
                "web1".to_owned(),
                vec![listed("A", false), listed("B", true)],
            ),
            ("web2".to_owned(), vec![listed("A", true)]),
        ];
        judge(&mut s, &lists, 0);
        assert!(!s.consistent);
        assert!(
            s.problems[0].what.contains("web1 B, web2 A"),
            "{:?}",
            s.problems
        );
        // B is not on web2: the way back to one release is A.
        assert_eq!(
            s.problems[0].fix,
            "runbook run rollback -e prod to=A   (or deploy again)"
        );
    }

    #[test]
    fn a_dead_lock_is_recovers_and_a_live_one_is_a_note() {
        let lock = |dead| LockView {
            run: "r1".into(),
            actor: "ann".into(),
            machine: "m".into(),
            pid: 1,
            script: "scripts/deploy.rhai".into(),
            started_at: "t".into(),
            reason: None,
            heartbeat_age: Some(if dead { 300 } else { 2 }),
            dead,
        };
        let mut h = host("web1", "B");
        h.lock = Some(lock(true));
        let mut s = fleet(vec![h.clone()]);
        judge(&mut s, &[], 0);
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert_eq!(s.problems[0].fix, "runbook recover -e prod");
        h.lock = Some(lock(false));
        let mut s = fleet(vec![h]);
        judge(&mut s, &[], 0);
        assert!(s.consistent);
        assert!(s.notes[0].contains("run r1 by ann"), "{:?}", s.notes);
    }

    #[test]
    fn stale_php_code_no_workers_and_a_full_disk_are_problems() {
        let mut h = host("web1", "B");
        h.serves = Some("A".into());
        h.workers = Some(0);
        h.free_bytes = Some(10 << 20);
        h.need_bytes = Some(300 << 20);
        let mut s = fleet(vec![h]);
        judge(&mut s, &[], 0);
        let what: Vec<&str> = s.problems.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(what.len(), 3, "{what:?}");
        assert!(what[0].contains("php-fpm executes A while current is B"));
        assert!(what[1].contains("no queue worker"));
        assert!(what[2].contains("10 MiB free"), "{what:?}");
    }

    #[test]
    fn a_freeze_is_a_note_not_a_fault() {
        let mut h = host("web1", "B");
        h.freeze = Some(Freeze {
            by: "ann".into(),
            reason: "black friday".into(),
            at: String::new(),
            until: 7200,
            run: String::new(),
        });
        let mut s = fleet(vec![h]);
        judge(&mut s, &[], 0);
        assert!(s.consistent);
        assert!(s.notes[0].contains("frozen by ann"), "{:?}", s.notes);
        assert!(s.notes[0].contains("black friday"));
    }
}
