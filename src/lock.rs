//! The deploy lock: one run at a time per host, and never a lock left behind.
//!
//! Acquisition is `mkdir <deploy_path>/.runbook/lock` (atomic on every POSIX
//! filesystem), followed by an `info` file naming the holder and a `heartbeat` file that
//! a background task touches while the run lives. A run only ever removes a lock whose
//! `info` carries its own run id; a lock whose heartbeat is older than the TTL is stale
//! and may be taken over explicitly (an audited decision, never a silent one).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::effects::{Effects, FanOut, HostOutcome, Target};
use crate::transport::CommandSpec;

/// How often a held lock's heartbeat is refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A lock whose heartbeat is older than this is stale (its run is gone).
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Exit code of the acquire script when another run holds the lock.
const HELD: i32 = 4;

/// Who holds a lock (written to `.runbook/lock/info`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
pub struct Holder {
    pub run: String,
    pub actor: String,
    pub machine: String,
    pub pid: u32,
    pub script: String,
    pub reason: Option<String>,
    pub ci_run: Option<String>,
    pub started_at: String,
}

const ACQUIRE: &str = r#"root=$1 run=$2 info=$3 stale=$4
lock=$root/.runbook/lock
mkdir -p "$root/.runbook" || exit 5
# The lock appears complete or not at all: built beside it, holder inside, then renamed
# into place (a rename onto an existing, non-empty lock fails).
tmp=$root/.runbook/lock.new.$$
rm -rf "$tmp"
mkdir "$tmp" && printf '%s\n' "$info" > "$tmp/info" && touch "$tmp/heartbeat" || { rm -rf "$tmp"; exit 5; }
if mv -T "$tmp" "$lock" 2>/dev/null; then echo acquired; exit 0; fi
rm -rf "$tmp"
holder=$(tr -d '\n' < "$lock/info" 2>/dev/null)
case $holder in *"\"run\":\"$run\""*) echo reentrant; exit 0;; esac
beat=$(stat -c %Y "$lock/heartbeat" 2>/dev/null || stat -c %Y "$lock" 2>/dev/null || date +%s)
age=$(( $(date +%s) - beat ))
if [ "$stale" -gt 0 ] && [ "$age" -gt "$stale" ]; then
  mkdir "$tmp" && printf '%s\n' "$info" > "$tmp/info" && touch "$tmp/heartbeat" || { rm -rf "$tmp"; exit 5; }
  if mv "$lock" "$lock.stale.$$" 2>/dev/null && mv -T "$tmp" "$lock" 2>/dev/null; then
    rm -rf "$lock.stale.$$"
    printf 'took-over\t%s\t%s\n' "$age" "$holder"; exit 0
  fi
fi
rm -rf "$tmp"
printf 'held\t%s\t%s\n' "$age" "$holder"
exit 4
"#;

const RELEASE: &str = r#"root=$1 run=$2
lock=$root/.runbook/lock
holder=$(tr -d '\n' < "$lock/info" 2>/dev/null) || exit 0
case $holder in *"\"run\":\"$run\""*) rm -rf "$lock"; echo released;; esac
true
"#;

const BEAT: &str = r#"root=$1 run=$2
lock=$root/.runbook/lock
case $(tr -d '\n' < "$lock/info" 2>/dev/null) in *"\"run\":\"$run\""*) touch "$lock/heartbeat";; esac
true
"#;

const UNLOCK: &str = r#"root=$1 stale=$2
lock=$root/.runbook/lock
[ -d "$lock" ] || { echo none; exit 0; }
holder=$(tr -d '\n' < "$lock/info" 2>/dev/null)
beat=$(stat -c %Y "$lock/heartbeat" 2>/dev/null || stat -c %Y "$lock")
age=$(( $(date +%s) - beat ))
if [ "$stale" -gt 0 ] && [ "$age" -le "$stale" ]; then
  printf 'live\t%s\t%s\n' "$age" "$holder"; exit 4
fi
rm -rf "$lock"
printf 'removed\t%s\t%s\n' "$age" "$holder"
"#;

fn spec(body: &str, args: &[&str]) -> CommandSpec {
    let label = match body {
        ACQUIRE => "lock: acquire",
        RELEASE => "lock: release",
        BEAT => "lock: heartbeat",
        _ => "lock: remove",
    };
    let mut s = CommandSpec::script(label, body, args);
    s.quiet = true;
    s.tolerate = true;
    s
}

fn root(t: &Target) -> String {
    match t {
        Target::Host(h) => h.deploy_path.clone(),
        Target::Local => String::new(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}", held_message(.0))]
    Held(Vec<(String, u64, Option<Holder>)>),
    #[error("cannot take the deploy lock: {0}")]
    Failed(String),
    #[error("interrupted while waiting for the deploy lock")]
    Interrupted,
}

fn held_message(held: &[(String, u64, Option<Holder>)]) -> String {
    let mut s = String::from("the deploy lock is held by another run:");
    for (host, age, holder) in held {
        match holder {
            Some(h) => s.push_str(&format!(
                "\n- {host}: {} on {} (pid {}), running `{}` since {}{}{}; last heartbeat {age} s ago",
                h.actor,
                h.machine,
                h.pid,
                h.script,
                h.started_at,
                h.reason.as_ref().map(|r| format!(", reason: {r}")).unwrap_or_default(),
                h.ci_run.as_ref().map(|r| format!(", CI run {r}")).unwrap_or_default(),
            )),
            None => s.push_str(&format!("\n- {host}: holder unknown; last heartbeat {age} s ago")),
        }
    }
    s.push_str("\n  hint: wait for it with --lock-wait 10m; if that run is gone (no heartbeat for over a minute), take the lock over with `runbook unlock --stale`");
    s
}

/// What one host said when asked for the lock.
#[derive(Debug, Clone)]
pub enum Acquired {
    New,
    Reentrant,
    TookOver { age: u64, from: Option<Holder> },
}

/// Locks held by this run, refreshed by a heartbeat and released at the end.
pub struct Locks {
    effects: Arc<Effects>,
    run: String,
    /// Shared with the heartbeat task, which beats for every lock held at each tick.
    held: Arc<Mutex<Vec<Target>>>,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Locks {
    pub fn new(effects: Arc<Effects>, run: String) -> Locks {
        Locks {
            effects,
            run,
            held: Arc::new(Mutex::new(Vec::new())),
            heartbeat: Mutex::new(None),
        }
    }

    /// Takes the lock on every target (re-entrant within this run). Waits up to `wait`
    /// for another run to finish; takes over a lock older than `take_stale` if given.
    pub fn acquire(
        &self,
        targets: &[Target],
        holder: &Holder,
        wait: Duration,
        take_stale: Option<Duration>,
    ) -> Result<Vec<(String, Acquired)>, LockError> {
        let info = serde_json::to_string(holder).unwrap_or_default();
        let stale = take_stale.map_or(0, |d| d.as_secs().max(1)).to_string();
        let deadline = std::time::Instant::now() + wait;
        // Two runs starting at once must not each win some hosts and both give up: the
        // host first by name decides who proceeds, then the rest are taken.
        let mut ordered: Vec<Target> = targets.to_vec();
        ordered.sort_by(|a, b| a.name().cmp(b.name()));
        let rest = ordered.split_off(ordered.len().min(1));
        let mut done = self.acquire_set(ordered, &info, &stale, deadline)?;
        if !rest.is_empty() {
            done.extend(self.acquire_set(rest, &info, &stale, deadline)?);
        }
        Ok(done)
    }

    fn acquire_set(
        &self,
        targets: Vec<Target>,
        info: &str,
        stale: &str,
        deadline: std::time::Instant,
    ) -> Result<Vec<(String, Acquired)>, LockError> {
        let mut pending = targets;
        let mut done = Vec::new();
        loop {
            // Counted as held before the attempt: if a signal cuts it short, the release
            // at the end of the run still removes whatever lock this run created (the
            // release only ever removes a lock whose holder is this run).
            {
                let mut mine = self.held.lock().unwrap_or_else(|e| e.into_inner());
                for t in &pending {
                    if !mine.iter().any(|m| m.name() == t.name()) {
                        mine.push(t.clone());
                    }
                }
            }
            let fan = FanOut {
                fail_fast: false,
                ..FanOut::new()
            };
            let outcomes = self.effects.run_many_with(
                &pending,
                &|t: &Target| spec(ACQUIRE, &[&root(t), &self.run, info, stale]),
                &fan,
            );
            let mut held = Vec::new();
            let mut still = Vec::new();
            for (t, o) in pending.iter().zip(outcomes) {
                let r = match o {
                    HostOutcome::Done(Ok(r)) => r,
                    HostOutcome::Done(Err(e)) if e.is_interrupt() => {
                        return Err(LockError::Interrupted);
                    }
                    HostOutcome::Done(Err(e)) => return Err(LockError::Failed(e.to_string())),
                    HostOutcome::Skipped => return Err(LockError::Interrupted),
                };
                let mut fields = r.stdout.trim_end().splitn(3, '\t');
                let word = fields.next().unwrap_or("");
                let age = fields.next().and_then(|a| a.parse().ok()).unwrap_or(0);
                let who: Option<Holder> = fields.next().and_then(|j| serde_json::from_str(j).ok());
                match (r.code, word) {
                    (_, _) if r.dry_run => done.push((t.name().to_owned(), Acquired::New)),
                    (0, "acquired") => done.push((t.name().to_owned(), Acquired::New)),
                    (0, "reentrant") => done.push((t.name().to_owned(), Acquired::Reentrant)),
                    (0, "took-over") => {
                        done.push((t.name().to_owned(), Acquired::TookOver { age, from: who }))
                    }
                    (HELD, _) => {
                        held.push((t.name().to_owned(), age, who));
                        still.push(t.clone());
                    }
                    (code, _) => {
                        return Err(LockError::Failed(format!(
                            "on `{}` the lock script exited with {code}: {}",
                            t.name(),
                            r.stderr.trim()
                        )));
                    }
                }
            }
            self.start_heartbeat();
            if held.is_empty() {
                return Ok(done);
            }
            if std::time::Instant::now() >= deadline {
                return Err(LockError::Held(held));
            }
            pending = still;
            let interrupt = self.effects.interrupt().clone();
            let interrupted = self.effects.runtime().block_on(async {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => false,
                    () = interrupt.signalled() => true,
                }
            });
            if interrupted {
                return Err(LockError::Interrupted);
            }
        }
    }

    fn start_heartbeat(&self) {
        let mut slot = self.heartbeat.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() || self.effects.dry_run() {
            return;
        }
        let effects = self.effects.clone();
        let run = self.run.clone();
        let held = self.held.clone();
        *slot = Some(self.effects.runtime().spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let targets = held.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for t in &targets {
                    let mut s = spec(BEAT, &[&root(t), &run]);
                    s.silent = true;
                    let _ = effects.run_async(t, &s).await;
                }
            }
        }));
    }

    /// Releases every lock this run holds (only ever its own). Safe to call twice.
    pub fn release_all(&self) -> Vec<String> {
        if let Some(task) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        let targets: Vec<Target> =
            std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        if targets.is_empty() {
            return Vec::new();
        }
        // Shielded: a signal arriving while the run ends must not leave a lock behind.
        let fan = FanOut {
            fail_fast: false,
            shielded: true,
            ..FanOut::new()
        };
        let outcomes = self.effects.run_many_with(
            &targets,
            &|t: &Target| {
                let mut s = spec(RELEASE, &[&root(t), &self.run]);
                s.shielded = true;
                s
            },
            &fan,
        );
        targets
            .iter()
            .zip(outcomes)
            .filter_map(|(t, o)| match o {
                HostOutcome::Done(Ok(r)) if r.stdout.contains("released") || r.dry_run => {
                    Some(t.name().to_owned())
                }
                _ => None,
            })
            .collect()
    }

    /// Names of the hosts this run holds the lock on.
    pub fn held(&self) -> Vec<String> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    }
}

/// `runbook unlock`: removes a lock; with `stale`, only one whose heartbeat is older.
pub fn unlock(
    effects: &Effects,
    targets: &[Target],
    stale: Option<Duration>,
) -> Vec<(String, Result<String, String>)> {
    let stale = stale.map_or(0, |d| d.as_secs().max(1)).to_string();
    let fan = FanOut {
        fail_fast: false,
        ..FanOut::new()
    };
    let outcomes = effects.run_many_with(
        targets,
        &|t: &Target| spec(UNLOCK, &[&root(t), &stale]),
        &fan,
    );
    targets
        .iter()
        .zip(outcomes)
        .map(|(t, o)| {
            let r = match o {
                HostOutcome::Done(Ok(r)) => {
                    let mut f = r.stdout.trim_end().splitn(3, '\t');
                    let word = f.next().unwrap_or("").to_owned();
                    let age = f.next().unwrap_or("?").to_owned();
                    let who = f
                        .next()
                        .and_then(|j| serde_json::from_str::<Holder>(j).ok())
                        .map(|h| format!("{} (run {}, `{}`)", h.actor, h.run, h.script))
                        .unwrap_or_else(|| "unknown holder".into());
                    match word.as_str() {
                        "none" => Ok("no lock".to_owned()),
                        "removed" => {
                            Ok(format!("removed the lock of {who}, heartbeat {age} s old"))
                        }
                        "live" => Err(format!(
                            "the lock of {who} is live (heartbeat {age} s ago): not removed"
                        )),
                        _ if r.dry_run => Ok("would remove the lock".to_owned()),
                        _ => Err(format!("unexpected answer: {}", r.stdout.trim())),
                    }
                }
                HostOutcome::Done(Err(e)) => Err(e.to_string()),
                HostOutcome::Skipped => Err("not reached".to_owned()),
            };
            (t.name().to_owned(), r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(body: &str, args: &[&str]) -> (i32, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(body)
            .arg("sh")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn a_lock_is_exclusive_reentrant_and_released_only_by_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let a = serde_json::to_string(&Holder {
            run: "run-a".into(),
            actor: "alice".into(),
            ..Holder::default()
        })
        .unwrap();
        let b = serde_json::to_string(&Holder {
            run: "run-b".into(),
            ..Holder::default()
        })
        .unwrap();
        assert_eq!(
            sh(ACQUIRE, &[root, "run-a", &a, "0"]),
            (0, "acquired\n".into())
        );
        assert_eq!(
            sh(ACQUIRE, &[root, "run-a", &a, "0"]),
            (0, "reentrant\n".into())
        );
        let (code, out) = sh(ACQUIRE, &[root, "run-b", &b, "0"]);
        assert_eq!(code, HELD);
        assert!(out.starts_with("held\t") && out.contains("alice"), "{out}");
        // B cannot release A's lock.
        sh(RELEASE, &[root, "run-b"]);
        assert!(dir.path().join(".runbook/lock").exists());
        assert_eq!(sh(RELEASE, &[root, "run-a"]), (0, "released\n".into()));
        assert!(!dir.path().join(".runbook/lock").exists());
    }

    #[test]
    fn only_a_stale_lock_can_be_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let a = serde_json::to_string(&Holder {
            run: "run-a".into(),
            ..Holder::default()
        })
        .unwrap();
        let b = serde_json::to_string(&Holder {
            run: "run-b".into(),
            ..Holder::default()
        })
        .unwrap();
        sh(ACQUIRE, &[root, "run-a", &a, "0"]);
        assert_eq!(
            sh(ACQUIRE, &[root, "run-b", &b, "60"]).0,
            HELD,
            "a fresh lock is not stale"
        );
        let old = std::process::Command::new("touch")
            .args(["-d", "2 minutes ago"])
            .arg(dir.path().join(".runbook/lock/heartbeat"))
            .status()
            .unwrap();
        assert!(old.success());
        let (code, out) = sh(ACQUIRE, &[root, "run-b", &b, "60"]);
        assert_eq!(code, 0);
        assert!(out.starts_with("took-over\t"), "{out}");
        let info = std::fs::read_to_string(dir.path().join(".runbook/lock/info")).unwrap();
        assert!(info.contains("run-b"));
    }
}
