//! Recovery from a run that died (SIGKILL, OOM, the runner's network gone): what it left
//! is read from the hosts alone — its lock and the progress record inside it — and the
//! fleet brought back to one whole release: the release the dead run had verified
//! everywhere, else the one it started from; maintenance mode it turned on lifted; its
//! lock and lock temporaries removed. `runbook recover` and the first step of a deploy
//! that meets a dead run's lock both use it.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use crate::effects::{CommandError, Effects, FanOut, HostError, HostOutcome, Target};
use crate::lock::{self, Holder, HostState};
use crate::output::Level;
use crate::transport::CommandSpec;

/// Why a recovery stopped; every message says whether something was changed and what to
/// do next.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoveryError {
    #[error("{host}: cannot look for the dead run's commands: {source}")]
    Look {
        host: String,
        source: Box<CommandError>,
    },
    #[error(
        "commands of the dead run are still running after {} (nothing was changed):{}\nwait for them (`runbook recover -e {env} --wait 10m`), or end them: `runbook recover -e {env} --kill`",
        humantime::format_duration(*waited),
        bullets(running, "pid ")
    )]
    StillRunning {
        env: String,
        waited: Duration,
        /// `(host, "<pid> <command>")`, one a command.
        running: Vec<(String, String)>,
    },
    #[error(
        "cannot recover while hosts are unreachable (nothing was changed); run `runbook recover -e {env}` again when they are back:{}",
        bullets(unreachable, "")
    )]
    Unreachable {
        env: String,
        unreachable: Vec<(String, HostError)>,
    },
    #[error(
        "locks of {} different runs are on the hosts ({}): recover one environment's run at a time (`runbook unlock` the others)",
        runs.len(),
        runs.join(", ")
    )]
    SeveralRuns { runs: Vec<String> },
    #[error(
        "run {} by {} (`{}`, pid {} on {}) looks alive: its heartbeat on {host} is {age} s old; nothing was changed (wait, or stop that run)",
        holder.run, holder.actor, holder.script, holder.pid, holder.machine
    )]
    Alive {
        holder: Box<Holder>,
        host: String,
        age: u64,
    },
    #[error("{host}: cannot read the lock again (nothing was changed): {source}")]
    Reread {
        host: String,
        source: Box<HostError>,
    },
    /// Switching the hosts back failed.
    #[error(transparent)]
    Switch(#[from] crate::release::ReleaseError),
    #[error("{host}: could not lift maintenance mode: {source}")]
    Maintenance {
        host: String,
        source: Box<CommandError>,
    },
    /// Putting traffic back on stable failed (the traffic core's own message).
    #[error("{0}")]
    Traffic(String),
}

/// `\n- host: <what>` for each pair, in order.
fn bullets<T: std::fmt::Display>(items: &[(String, T)], what: &str) -> String {
    items.iter().fold(String::new(), |mut out, (host, x)| {
        let _ = write!(out, "\n- {host}: {what}{x}");
        out
    })
}

/// What the dead run's progress record says it did.
#[derive(Debug, Default, PartialEq)]
struct Progress {
    prepared: Option<String>,
    /// The release the hosts were on before the run's first switch.
    before: Option<String>,
    verified: bool,
    /// Hosts it put into maintenance mode and did not lift it from.
    down: BTreeSet<String>,
}

fn read_progress(states: &[HostState]) -> Progress {
    let mut p = Progress::default();
    for st in states {
        let mut down = false;
        for line in &st.progress {
            let mut words = line.split(' ');
            match (words.next(), words.next(), words.next()) {
                (Some("prepared"), Some(name), _) => p.prepared = Some(name.to_owned()),
                (Some("switched"), Some(from), Some(_)) if p.before.is_none() => {
                    p.before = Some(from.to_owned());
                }
                (Some("verified"), ..) => p.verified = true,
                (Some("maintenance"), Some("on"), _) => down = true,
                (Some("maintenance"), Some("off"), _) => down = false,
                _ => {}
            }
        }
        if down {
            p.down.insert(st.host.clone());
        }
    }
    p
}

/// How a recovery treats commands of the dead run that are still running on the hosts
/// (its ssh masters outlive it and finish what they carry: a switch landing after the
/// recovery switched the host back would split the fleet again).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// How long to wait for them to end.
    pub wait: Duration,
    /// End them (SIGTERM, 2 s, SIGKILL to their process groups) when the wait is over,
    /// instead of refusing to recover.
    pub kill: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            wait: Duration::from_secs(30),
            kill: false,
        }
    }
}

/// Finds the commands a run started that are still running (their environment holds
/// `RUNBOOK_RUN=<id>`), waits for them, and ends them if told to. A command is the
/// leader of its process group — what sshd started for the session (its parent is
/// sshd), what the connection's served shell started (its parent's command line names
/// `runbook-served`), or what the local transport started (in its
/// own group, not its own session) — so a daemon a command started (which made its own
/// session) is left alone.
/// Prints `settled <polls>`, or `running <pid> <command>` lines and then `killed`
/// (or exits 3 when not told to kill).
const DEAD_COMMANDS: &str = r#"id="$1"; polls="$2"; kill="$3"
leaders() {
  for e in $(grep -l -a -F -e "RUNBOOK_RUN=$id" /proc/[0-9]*/environ 2>/dev/null); do
    p=${e#/proc/}; p=${p%/environ}
    s=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    set -- $s
    [ "$3" = "$p" ] || continue
    case "$(cat "/proc/$2/comm" 2>/dev/null)" in
      sshd*) ;;
      *) tr '\0' '\n' < "/proc/$2/cmdline" 2>/dev/null | grep -qx runbook-served ||
           [ "$4" != "$p" ] || continue ;;
    esac
    echo "$p"
  done
}
i=0
while l=$(leaders); [ -n "$l" ] && [ "$i" -lt "$polls" ]; do sleep 0.2; i=$((i+1)); done
if [ -z "$l" ]; then echo "settled $i"; exit 0; fi
for p in $l; do
  printf 'running %s %s\n' "$p" "$(tr '\0\n' '  ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-200)"
done
[ "$kill" = 1 ] || exit 3
for p in $l; do kill -TERM -"$p" 2>/dev/null; done
j=0
while [ "$j" -lt 20 ]; do
  alive=; for p in $l; do kill -0 -"$p" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1; j=$((j+1))
done
for p in $l; do kill -KILL -"$p" 2>/dev/null; done
echo killed"#;

/// Waits for (or ends) the dead run's commands still running on `targets`. Nothing is
/// changed otherwise; an error says which commands still run where and what to do.
fn settle(
    effects: &Effects,
    targets: &[Target],
    dead: &str,
    env: &str,
    opts: &Options,
) -> Result<(), RecoveryError> {
    let out = effects.output();
    let polls = (opts.wait.as_millis() / 200).to_string();
    let kill = if opts.kill { "1" } else { "0" };
    let fan = FanOut {
        fail_fast: false,
        ..FanOut::new()
    };
    let outcomes = effects.run_many_with(
        targets,
        &|_| {
            let mut spec = CommandSpec::script(
                "recover: the dead run's commands still running",
                DEAD_COMMANDS,
                &[dead, &polls, kill],
            );
            spec.tolerate = true;
            spec.quiet = true;
            // Only looking (and waiting) reads; ending commands does not.
            spec.read = !opts.kill;
            spec
        },
        &fan,
    );
    let mut running = Vec::new();
    for (t, o) in targets.iter().zip(outcomes) {
        let r = match o {
            HostOutcome::Done(Ok(r)) => r,
            HostOutcome::Done(Err(e)) => {
                return Err(RecoveryError::Look {
                    host: t.name().to_owned(),
                    source: Box::new(e),
                });
            }
            HostOutcome::Skipped => continue,
        };
        let commands: Vec<&str> = r
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("running "))
            .collect();
        let waited = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("settled "))
            .and_then(|n| n.trim().parse::<u64>().ok());
        match waited {
            Some(0) => {}
            Some(n) => out.log(
                Level::Info,
                format!(
                    "{}: waited {:.1} s for the dead run's last commands to end",
                    t.name(),
                    crate::num::ToF64::to_f64(n) * 0.2
                ),
            ),
            None if r.stdout.lines().any(|l| l == "killed") => {
                for c in &commands {
                    out.log(
                        Level::Warn,
                        format!(
                            "{}: ended the dead run's command still running after {}: pid {c}",
                            t.name(),
                            humantime::format_duration(opts.wait)
                        ),
                    );
                }
            }
            None => running.extend(
                commands
                    .iter()
                    .map(|c| (t.name().to_owned(), (*c).to_owned())),
            ),
        }
    }
    if running.is_empty() {
        return Ok(());
    }
    Err(RecoveryError::StillRunning {
        env: env.to_owned(),
        waited: opts.wait,
        running,
    })
}

/// Returns whether there was anything to recover.
pub(crate) fn recover(
    effects: &Effects,
    env: &crate::inventory::Environment,
    run_id: &str,
) -> Result<bool, RecoveryError> {
    recover_with(effects, env, run_id, &Options::default())
}

/// [`recover`], with `opts` for the dead run's commands still running.
pub(crate) fn recover_with(
    effects: &Effects,
    env: &crate::inventory::Environment,
    run_id: &str,
    opts: &Options,
) -> Result<bool, RecoveryError> {
    let out = effects.output().clone();
    let targets: Vec<Target> = env.hosts.iter().cloned().map(Target::Host).collect();
    let states = states_of_all(effects, &targets, &env.name)?;
    let Some(dead) = dead_run(&states, run_id, &env.name, &out)? else {
        return Ok(false);
    };
    announce_dead(&states, &out);
    // What the dead run still has running lands before anything is judged: its last
    // switch, or its lock's progress record, may still be on the way.
    settle(effects, &targets, &dead, &env.name, opts)?;
    let (targets, states) = locked_by(effects, targets, &dead)?;
    let progress = read_progress(&states);
    for s in &states {
        out.log(Level::Warn, format!("  {}", state_line(s)));
    }
    let target = whole_release(&progress, &states);
    if let Some(target) = &target {
        bring_back(effects, &targets, &states, &progress, target)?;
    }
    lift_maintenance(effects, env, &targets, &progress.down)?;
    // Traffic the dead run moved to the staged pool (a blue-green switch cut between its
    // two balancer steps, a canary's share): every request back on stable.
    if let Some(left) = crate::traffic::reset_if_left_by(effects, env, &dead, run_id)
        .map_err(RecoveryError::Traffic)?
    {
        out.log(
            Level::Info,
            format!("the balancer had {left}% of requests on the staged release: every request is back on stable"),
        );
    }
    remove_lock(effects, env, &targets, &dead, run_id, target.as_deref());
    Ok(true)
}

/// The lock state of every host; one unreachable host stops the recovery before it
/// changes anything.
fn states_of_all(
    effects: &Effects,
    targets: &[Target],
    env: &str,
) -> Result<Vec<HostState>, RecoveryError> {
    let mut states = Vec::new();
    let mut unreachable = Vec::new();
    for (t, st) in targets.iter().zip(lock::states(effects, targets)) {
        match st {
            Ok(s) => states.push(s),
            Err(e) => unreachable.push((t.name().to_owned(), e)),
        }
    }
    if !unreachable.is_empty() {
        return Err(RecoveryError::Unreachable {
            env: env.to_owned(),
            unreachable,
        });
    }
    Ok(states)
}

/// The one dead run whose lock is on the hosts: `None` (said so) when there is none;
/// an error when several runs left locks or the run looks alive.
fn dead_run(
    states: &[HostState],
    run_id: &str,
    env: &str,
    out: &crate::output::Output,
) -> Result<Option<String>, RecoveryError> {
    // This run's own locks (a deploy that recovers first may have taken some hosts
    // already) are not the dead run's.
    let dead: BTreeSet<String> = states
        .iter()
        .filter_map(|s| s.holder.as_ref().map(|h| h.run.clone()))
        .filter(|r| r != run_id)
        .collect();
    if dead.is_empty() {
        nothing_to_recover(states, env, out);
        return Ok(None);
    }
    if dead.len() > 1 {
        return Err(RecoveryError::SeveralRuns {
            runs: dead.into_iter().collect(),
        });
    }
    let dead = dead.into_iter().next().unwrap_or_default();
    refuse_if_alive(states, &dead)?;
    Ok(Some(dead))
}

/// No run left a lock: says so, and what is still odd (hosts on different releases,
/// lock temporaries left).
fn nothing_to_recover(states: &[HostState], env: &str, out: &crate::output::Output) {
    let temporaries: Vec<String> = states
        .iter()
        .flat_map(|s| {
            s.temporaries
                .iter()
                .map(move |t| format!("{}: {t}", s.host))
        })
        .collect();
    let lives: BTreeSet<&str> = states.iter().map(|s| s.current.as_str()).collect();
    let mut msg = format!("nothing to recover on {env}: no run left a lock");
    if lives.len() > 1 {
        let _ = write!(
            msg,
            " — but the hosts serve different releases ({}): run `runbook run rollback -e {env}` or a deploy",
            states
                .iter()
                .map(|s| format!("{} {}", s.host, display(&s.current)))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    out.log(Level::Info, msg);
    for t in temporaries {
        out.log(Level::Warn, format!("lock temporary left: {t}"));
    }
}

/// Never a live run: its heartbeat is fresh and its process is not known to be gone.
fn refuse_if_alive(states: &[HostState], dead: &str) -> Result<(), RecoveryError> {
    for s in states {
        if let (Some(h), Some(age)) = (&s.holder, s.beat_age)
            && h.run == dead
            && age <= lock::DEFAULT_TTL.as_secs()
            && !lock::holder_is_gone(h)
        {
            return Err(RecoveryError::Alive {
                holder: Box::new(h.clone()),
                host: s.host.clone(),
                age,
            });
        }
    }
    Ok(())
}

/// Says which run died without cleaning up: who, what, when, and its CI run.
fn announce_dead(states: &[HostState], out: &crate::output::Output) {
    let holder = states
        .iter()
        .find_map(|s| s.holder.clone())
        .unwrap_or_default();
    out.log(
        Level::Warn,
        format!(
            "run {} by {} (`{}`, started {}{}) died without cleaning up:",
            holder.run,
            holder.actor,
            holder.script,
            holder.started_at,
            holder
                .ci_run
                .as_deref()
                .map(|u| format!(", {u}"))
                .unwrap_or_default()
        ),
    );
}

/// The hosts the dead run locked, with their state read again (after its commands
/// settled): it changed nothing anywhere else (the lock comes before every change), and
/// hosts outside its set (a balancer) have no releases.
fn locked_by(
    effects: &Effects,
    targets: Vec<Target>,
    dead: &str,
) -> Result<(Vec<Target>, Vec<HostState>), RecoveryError> {
    let mut states = Vec::new();
    for (t, st) in targets.iter().zip(lock::states(effects, &targets)) {
        states.push(st.map_err(|e| RecoveryError::Reread {
            host: t.name().to_owned(),
            source: Box::new(e),
        })?);
    }
    Ok(targets
        .into_iter()
        .zip(states)
        .filter(|(_, s)| s.holder.as_ref().is_some_and(|h| h.run == dead))
        .unzip())
}

/// One host as the dead run left it: its release, maintenance mode, lock.
fn state_line(s: &HostState) -> String {
    format!(
        "{}: on {}{}{}",
        s.host,
        display(&s.current),
        if s.down { ", maintenance mode on" } else { "" },
        if s.holder.is_some() {
            ", lock held"
        } else {
            ""
        }
    )
}

/// One whole release: the new one where the dead run verified it everywhere, else the
/// one it started from (none when it switched nothing).
fn whole_release(progress: &Progress, states: &[HostState]) -> Option<String> {
    if progress.verified {
        return progress.prepared.clone();
    }
    if let Some(before) = progress.before.clone().filter(|b| !b.is_empty()) {
        return Some(before);
    }
    // Killed inside the switch, after some hosts moved and before any switch was noted:
    // a host not on the new release was not switched by the run (a switch is one
    // rename), so it is on the release the run started from — when they all agree.
    let new = progress.prepared.as_ref()?;
    if !states.iter().any(|s| &s.current == new) {
        return None; // it switched nothing
    }
    let mut others = states
        .iter()
        .map(|s| &s.current)
        .filter(|c| *c != new && !c.is_empty());
    let first = others.next()?;
    others.all(|c| c == first).then(|| first.clone())
}

/// Switches the hosts not on `target` to it; a new release the dead run did not verify
/// is marked bad.
fn bring_back(
    effects: &Effects,
    targets: &[Target],
    states: &[HostState],
    progress: &Progress,
    target: &str,
) -> Result<(), RecoveryError> {
    let out = effects.output();
    let behind: Vec<Target> = targets
        .iter()
        .zip(states)
        .filter(|(_, s)| s.current != target)
        .map(|(t, _)| t.clone())
        .collect();
    if !behind.is_empty() {
        crate::release::activate(effects, &behind, target)?;
        for t in &behind {
            out.log(Level::Info, format!("{}: switched to {target}", t.name()));
        }
    }
    if !progress.verified
        && let Some(new) = &progress.prepared
        && new != target
    {
        let _ = crate::release::mark_bad(effects, targets, new);
        out.log(Level::Info, format!("{new} (unverified) marked bad"));
    }
    Ok(())
}

/// Lifts maintenance mode the dead run turned on (the hosts in `down`).
fn lift_maintenance(
    effects: &Effects,
    env: &crate::inventory::Environment,
    targets: &[Target],
    down: &BTreeSet<String>,
) -> Result<(), RecoveryError> {
    let out = effects.output();
    let lift: Vec<Target> = targets
        .iter()
        .filter(|t| down.contains(t.name()))
        .cloned()
        .collect();
    if lift.is_empty() {
        return Ok(());
    }
    let fan = FanOut {
        fail_fast: false,
        ..FanOut::new()
    };
    let outcomes = effects.run_many_with(
        &lift,
        &|t: &Target| {
            let root = match t {
                Target::Host(h) => h.deploy_path.clone(),
                Target::Local => String::new(),
            };
            CommandSpec::script(
                "recover: maintenance off",
                r#"cd "$1/current" && exec "$2" artisan up"#,
                &[&root, &env.php],
            )
        },
        &fan,
    );
    for (t, o) in lift.iter().zip(outcomes) {
        match o {
            HostOutcome::Done(Ok(_)) => {
                out.log(Level::Info, format!("{}: maintenance mode off", t.name()));
            }
            HostOutcome::Done(Err(e)) => {
                return Err(RecoveryError::Maintenance {
                    host: t.name().to_owned(),
                    source: Box::new(e),
                });
            }
            HostOutcome::Skipped => {}
        }
    }
    Ok(())
}

/// Removes the dead run's lock (and forgets it ended here once it is gone everywhere),
/// and says what the environment serves now.
fn remove_lock(
    effects: &Effects,
    env: &crate::inventory::Environment,
    targets: &[Target],
    dead: &str,
    run_id: &str,
    target: Option<&str>,
) {
    let removed = lock::remove_dead(effects, targets, dead, run_id);
    if removed.len() == targets.len() {
        lock::forget_ended(dead);
    }
    effects.output().log(
        Level::Info,
        format!(
            "the dead run's lock removed on {}; {} serves {}",
            if removed.is_empty() {
                "no host".to_owned()
            } else {
                removed.join(", ")
            },
            env.name,
            target.map_or("what it served", display)
        ),
    );
}

fn display(release: &str) -> &str {
    if release.is_empty() {
        "no release"
    } else {
        release
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(host: &str, progress: &[&str]) -> HostState {
        HostState {
            host: host.into(),
            progress: progress.iter().map(|s| (*s).to_owned()).collect(),
            ..HostState::default()
        }
    }

    #[test]
    fn the_progress_record_says_where_to_go_back_to() {
        let p = read_progress(&[
            state("web1", &["prepared r2", "maintenance on", "switched r1 r2"]),
            state(
                "web2",
                &["prepared r2", "maintenance on", "maintenance off"],
            ),
        ]);
        assert_eq!(p.prepared.as_deref(), Some("r2"));
        assert_eq!(p.before.as_deref(), Some("r1"));
        assert!(!p.verified);
        assert_eq!(p.down.iter().collect::<Vec<_>>(), ["web1"]);
        let p = read_progress(&[state(
            "web1",
            &["prepared r2", "switched r1 r2", "verified"],
        )]);
        assert!(p.verified);
    }

    #[test]
    fn killed_inside_the_switch_before_any_note_the_unswitched_hosts_say_where_to_go_back_to() {
        let on = |host: &str, current: &str| HostState {
            current: current.into(),
            ..state(host, &["prepared r2", "maintenance on"])
        };
        // web1 and web2 switched, worker1 not yet, no `switched` noted anywhere.
        let states = [on("web1", "r2"), on("web2", "r2"), on("worker1", "r1")];
        let p = read_progress(&states);
        assert_eq!(p.before, None);
        assert_eq!(whole_release(&p, &states).as_deref(), Some("r1"));
        // Hosts that were already split before the run: no guess.
        let split = [on("web1", "r2"), on("web2", "r0"), on("worker1", "r1")];
        assert_eq!(whole_release(&read_progress(&split), &split), None);
        // Nothing switched yet (a staged canary, say): nothing to bring back, nothing
        // marked bad.
        let none = [on("web1", "r1"), on("web2", "r1")];
        assert_eq!(whole_release(&read_progress(&none), &none), None);
    }
}
