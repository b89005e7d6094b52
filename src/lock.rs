//! The deploy lock: one run at a time per host, and never a lock left behind.
//!
//! Acquisition is `mkdir <deploy_path>/.runbook/lock` (atomic on every POSIX
//! filesystem), followed by an `info` file naming the holder and a `heartbeat` file that
//! a background task touches while the run lives. A run only ever removes a lock whose
//! `info` carries its own run id; a lock whose heartbeat is older than the TTL is stale
//! and may be taken over explicitly (an audited decision, never a silent one).

use crate::sync::Locked;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::effects::{Effects, FanOut, HostError, HostOutcome, Target};
use crate::transport::CommandSpec;

/// How often a held lock's heartbeat is refreshed.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(10);
/// A lock whose heartbeat is older than this is stale (its run is gone).
pub(crate) const DEFAULT_TTL: Duration = Duration::from_mins(1);
/// Who holds a lock (written to `.runbook/lock/info`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
pub(crate) struct Holder {
    pub run: String,
    pub actor: String,
    pub machine: String,
    pub pid: u32,
    pub script: String,
    pub reason: Option<String>,
    pub ci_run: Option<String>,
    pub started_at: String,
}

/// Exit code of the acquire script when another run holds the lock (or something that is
/// not a runbook lock sits where the lock goes).
const HELD: i32 = 4;
/// Exit code when a takeover moved a lock it must not have and could not put it back.
const DISPLACED: i32 = 7;
/// Exit code of the acquire script when deploys to the host are frozen.
const FROZEN: i32 = 6;

/// A freeze of deploys (`runbook lock freeze`), kept on each host at
/// `.runbook/freeze`: no lock is taken while it lasts, except by an emergency script run
/// with a reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub(crate) struct Freeze {
    pub by: String,
    pub reason: String,
    /// When it was set (RFC 3339).
    pub at: String,
    /// When it ends by itself (unix seconds).
    pub until: i64,
    pub run: String,
}

impl Freeze {
    /// Whether it still holds at unix time `now`.
    pub(crate) fn holds(&self, now: i64) -> bool {
        self.until > now
    }

    /// "by ALICE until 14:05 UTC (in 1h 12m): REASON".
    pub(crate) fn describe(&self, now: i64) -> String {
        let until = chrono::DateTime::from_timestamp(self.until, 0).map_or_else(
            || self.until.to_string(),
            |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
        );
        let left = if self.holds(now) {
            let secs = u64::try_from(self.until - now).unwrap_or(0);
            format!(
                "in {}",
                humantime::format_duration(
                    std::time::Duration::from_secs(secs / 60 * 60)
                        .max(std::time::Duration::from_mins(1))
                )
            )
        } else {
            "expired".to_owned()
        };
        format!("by {} until {until} ({left}): {}", self.by, self.reason)
    }
}

/// Shell functions every lock script shares. The lock is only ever *published* by renaming
/// a complete directory into place and only ever *removed* by renaming it aside first, so
/// at `lock` there is either nothing, a whole lock, or something runbook did not make.
const COMMON: &str = r#"dir=$1/.runbook lock=$1/.runbook/lock
# The run id of a lock directory's holder (the first field runbook writes), or nothing.
holder_run() { sed -n '1s/^{"run":"\([^"\\]*\)".*/\1/p' "$1/info" 2>/dev/null; }
beat_of() { stat -c %Y "$1/heartbeat" 2>/dev/null; }
# What sits at the lock path when it is not a lock runbook can read.
describe() {
  if [ -L "$lock" ]; then echo "a symbolic link, not a lock directory"
  elif [ ! -e "$lock" ]; then echo "nothing (it was removed meanwhile)"
  elif [ ! -d "$lock" ]; then echo "a file, not a lock directory"
  elif [ -z "$(ls -A "$lock" 2>/dev/null)" ]; then echo "an empty directory (made by hand, e.g. to freeze deploys?)"
  elif [ ! -r "$lock/info" ]; then echo "a directory without a readable holder file (info)"
  elif [ -z "$(holder_run "$lock")" ]; then echo "a directory whose holder file (info) names no run"
  else echo "the lock of run $(holder_run "$lock") without a heartbeat file"
  fi
}
"#;

const ACQUIRE: &str = r#"root=$1 run=$2 info=$3 stale=$4 pass=$5
mkdir -p "$root/.runbook" || exit 5
if [ -f "$dir/freeze" ] && [ "$pass" != 1 ]; then
  until=$(sed -n 's/.*"until":\([0-9]*\).*/\1/p' "$dir/freeze")
  if [ -z "$until" ] || [ "$until" -gt "$(date +%s)" ]; then
    printf 'frozen\t%s\n' "$(tr -d '\n' < "$dir/freeze")"; exit 6
  fi
fi
tmp=$dir/lock.new.$run.$$ aside=$dir/lock.stale.$run.$$
# Puts the lock built in $tmp in place only where nothing is: rename(2) refuses to replace
# a non-empty directory, and the test before it refuses an empty one, a file or a link.
publish() {
  if [ -e "$lock" ] || [ -L "$lock" ]; then return 1; fi
  mv -T "$tmp" "$lock" 2>/dev/null
}
rm -rf "$tmp"
mkdir "$tmp" && printf '%s\n' "$info" > "$tmp/info" && touch "$tmp/heartbeat" || { rm -rf "$tmp"; exit 5; }
tries=0
while :; do
  tries=$((tries + 1))
  if publish; then echo acquired; exit 0; fi
  hrun=$(holder_run "$lock")
  beat=$(beat_of "$lock")
  if [ -z "$hrun" ] || [ -z "$beat" ]; then
    # Removed or replaced while it was being read (it changed hands): look again, a few
    # times; else say what is there.
    if [ "$tries" -lt 5 ]; then
      if [ ! -e "$lock" ] && [ ! -L "$lock" ]; then continue; fi
      if [ -n "$(holder_run "$lock")" ] && [ -n "$(beat_of "$lock")" ]; then continue; fi
    fi
    rm -rf "$tmp"; printf 'foreign\t%s\n' "$(describe)"; exit 4
  fi
  holder=$(tr -d '\n' < "$lock/info" 2>/dev/null)
  if [ "$hrun" = "$run" ]; then rm -rf "$tmp"; echo reentrant; exit 0; fi
  age=$(( $(date +%s) - beat ))
  if [ "$stale" -gt 0 ] && [ "$age" -gt "$stale" ] && [ "$tries" -lt 5 ]; then
    # The takeover is one rename: of all the runs that judged this lock stale, one moves
    # it to a name only it knows; the others find nothing to move.
    if mv -T "$lock" "$aside" 2>/dev/null; then
      if [ "$(holder_run "$aside")" = "$hrun" ] && [ "$(beat_of "$aside")" = "$beat" ]; then
        # It is the lock judged stale. It is gone now; publishing ours can still lose to
        # a run that found the place empty, which then holds the lock fairly.
        rm -rf "$aside"
        if publish; then printf 'took-over\t%s\t%s\n' "$age" "$holder"; exit 0; fi
        continue
      fi
      # Another run took it over first and this moved its fresh lock: put it back.
      if [ ! -e "$lock" ] && [ ! -L "$lock" ] && mv -T "$aside" "$lock" 2>/dev/null; then continue; fi
      rm -rf "$tmp"
      printf 'displaced\t%s\t%s\n' "$aside" "$(tr -d '\n' < "$aside/info" 2>/dev/null)"; exit 7
    fi
    # Someone else moved it first: look again.
    continue
  fi
  rm -rf "$tmp"
  printf 'held\t%s\t%s\n' "$age" "$holder"
  exit 4
done
"#;

const RELEASE: &str = r#"root=$1 run=$2
[ "$(holder_run "$lock")" = "$run" ] || exit 0
gone=$dir/lock.released.$run.$$
mv -T "$lock" "$gone" 2>/dev/null || exit 0
if [ "$(holder_run "$gone")" = "$run" ]; then rm -rf "$gone"; echo released; exit 0; fi
# Taken over between the look and the move (this run's heartbeat had stopped): not ours.
mv -T "$gone" "$lock" 2>/dev/null || printf 'displaced\t%s\n' "$gone"
true
"#;

const BEAT: &str = r#"root=$1 run=$2
[ "$(holder_run "$lock")" = "$run" ] && touch "$lock/heartbeat"
true
"#;

const UNLOCK: &str = r#"root=$1 stale=$2 run=$3
[ -e "$lock" ] || [ -L "$lock" ] || { echo none; exit 0; }
hrun=$(holder_run "$lock")
beat=$(beat_of "$lock")
holder=$(tr -d '\n' < "$lock/info" 2>/dev/null)
if [ -n "$hrun" ] && [ -n "$beat" ]; then age=$(( $(date +%s) - beat )); what=lock; else age=-1; what=$(describe); fi
if [ "$stale" -gt 0 ]; then
  if [ "$what" != lock ]; then printf 'foreign\t%s\n' "$what"; exit 4; fi
  if [ "$age" -le "$stale" ]; then printf 'live\t%s\t%s\n' "$age" "$holder"; exit 4; fi
fi
gone=$dir/lock.unlocked.$run.$$
if ! mv -T "$lock" "$gone" 2>/dev/null; then
  # Gone meanwhile (another unlock, or its run released it): nothing to remove.
  if [ ! -e "$lock" ] && [ ! -L "$lock" ]; then echo none; exit 0; fi
  printf 'failed\t%s\n' "cannot move $lock aside to $gone"; exit 5
fi
if [ "$what" = lock ] && [ "$stale" -gt 0 ] && [ "$(beat_of "$gone")" != "$beat" ]; then
  # Its run came back to life between the look and the move: leave it.
  mv -T "$gone" "$lock" 2>/dev/null
  printf 'live\t0\t%s\n' "$holder"; exit 4
fi
rm -rf "$gone"
if [ "$what" = lock ]; then printf 'removed\t%s\t%s\n' "$age" "$holder"; else printf 'removed-foreign\t%s\n' "$what"; fi
"#;

/// Freezes deploys on the host: the freeze record (`$2`) written whole, then renamed.
const FREEZE: &str = r#"root=$1 record=$2
mkdir -p "$dir" && printf '%s\n' "$record" > "$dir/freeze.new.$$" && mv -f "$dir/freeze.new.$$" "$dir/freeze"
"#;

/// Lifts a freeze; prints what it lifted (nothing when there was none).
const THAW: &str = r#"root=$1
[ -f "$dir/freeze" ] || exit 0
tr -d '\n' < "$dir/freeze"; echo
rm -f "$dir/freeze"
"#;

/// Appends a line to the run's progress record inside its lock (`lock/progress`): what a
/// run that dies leaves for `runbook recover` to read from the hosts alone.
const NOTE: &str = r#"root=$1 run=$2 line=$3
[ "$(holder_run "$lock")" = "$run" ] && printf '%s\n' "$line" >> "$lock/progress"
true
"#;

/// What a host says about the state a run left: the live release, maintenance mode, and
/// the lock with its holder, heartbeat age and progress record.
const STATE: &str = r#"root=$1
cur=$(readlink "$root/current" 2>/dev/null || true); echo "current	${cur##*/}"
if [ -e "$root/current/storage/framework/down" ]; then echo "down	yes"; else echo "down	no"; fi
if [ -d "$lock" ] && [ -n "$(holder_run "$lock")" ]; then
  echo "holder	$(tr -d '\n' < "$lock/info")"
  b=$(beat_of "$lock"); [ -z "$b" ] || echo "beat	$(( $(date +%s) - b ))"
  [ -f "$lock/progress" ] && sed 's/^/progress	/' "$lock/progress"
fi
for t in "$dir"/lock.new.* "$dir"/lock.stale.*; do [ -e "$t" ] && echo "temporary	${t##*/}"; done
[ -f "$dir/freeze" ] && echo "freeze	$(tr -d '\n' < "$dir/freeze")"
true
"#;

/// Removes the lock of dead run `$2` (only that run's) and its lock temporaries.
const REMOVE_DEAD: &str = r#"root=$1 dead=$2 run=$3
rm -rf "$dir/lock.new.$dead."* "$dir/lock.stale.$dead."*
[ "$(holder_run "$lock")" = "$dead" ] || { echo none; exit 0; }
gone=$dir/lock.recovered.$run.$$
mv -T "$lock" "$gone" 2>/dev/null || { echo none; exit 0; }
if [ "$(holder_run "$gone")" = "$dead" ]; then rm -rf "$gone"; echo removed; exit 0; fi
mv -T "$gone" "$lock" 2>/dev/null; echo none
"#;

/// runbook's own lock scripts; each runs as `sh -c COMMON+BODY sh ROOT …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Acquire,
    Release,
    Beat,
    Unlock,
    Note,
    State,
    RemoveDead,
    Freeze,
    Thaw,
}

impl Script {
    fn text(self) -> String {
        let body = match self {
            Script::Acquire => ACQUIRE,
            Script::Release => RELEASE,
            Script::Beat => BEAT,
            Script::Unlock => UNLOCK,
            Script::Note => NOTE,
            Script::State => STATE,
            Script::RemoveDead => REMOVE_DEAD,
            Script::Freeze => FREEZE,
            Script::Thaw => THAW,
        };
        format!("{COMMON}{body}")
    }

    fn label(self) -> &'static str {
        match self {
            Script::Acquire => "lock: acquire",
            Script::Release => "lock: release",
            Script::Beat => "lock: heartbeat",
            Script::Unlock => "lock: remove",
            Script::Note => "lock: record progress",
            Script::State => "recover: read the host's state",
            Script::RemoveDead => "recover: remove the dead run's lock",
            Script::Freeze => "lock: freeze deploys",
            Script::Thaw => "lock: lift the freeze",
        }
    }
}

fn spec(script: Script, args: &[&str]) -> CommandSpec {
    let mut s = CommandSpec::script(script.label(), &script.text(), args);
    s.quiet = true;
    s.tolerate = true;
    s
}

/// Runs lock script `script` on every target at once, shielded from signals (a lock's
/// release, a progress note, a dead run's removal must not be lost to Ctrl-C).
fn run_shielded(
    effects: &Effects,
    targets: &[Target],
    script: Script,
    args: &dyn Fn(&Target) -> Vec<String>,
) -> Vec<HostOutcome> {
    let fan = FanOut {
        fail_fast: false,
        shielded: true,
        ..FanOut::new()
    };
    effects.run_many_with(
        targets,
        &|t: &Target| {
            let a = args(t);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let mut s = spec(script, &a);
            s.shielded = true;
            s
        },
        &fan,
    )
}

fn root(t: &Target) -> String {
    match t {
        Target::Host(h) => h.deploy_path.clone(),
        Target::Local => String::new(),
    }
}

/// Where a target's lock lives (for messages).
fn lock_path(t: &Target) -> String {
    format!("{}/.runbook/lock", root(t))
}

/// Why one host's lock could not be taken.
#[derive(Debug, Clone)]
pub(crate) struct Blocked {
    pub host: String,
    /// The lock directory on that host.
    pub path: String,
    pub by: Blocker,
}

#[derive(Debug, Clone)]
pub(crate) enum Blocker {
    /// Another run's lock, its heartbeat `age` seconds old.
    Run { age: u64, holder: Option<Holder> },
    /// Something runbook did not write (an empty directory, a file, a lock without a
    /// readable holder): described in words, never replaced on its own.
    Foreign(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    #[error("{}", held_message(.0, None))]
    Held(Vec<Blocked>),
    #[error(
        "on `{host}` taking over a stale lock moved the live lock of {} aside to {aside} and could not put it back (something else is at {path} now)\n  hint: look at both; if the moved lock's run is still going, put it back with `mv -T {aside} {path}` once {path} is gone",
        holder.as_ref().map_or("an unknown run".to_owned(), |h| format!("{} (run {})", h.actor, h.run))
    )]
    Displaced {
        host: String,
        path: String,
        aside: String,
        holder: Option<Box<Holder>>,
    },
    #[error("cannot take the deploy lock: {0}")]
    Failed(String),
    #[error("{}", frozen_message(.0, None))]
    Frozen(Vec<(String, Option<Freeze>)>),
    #[error("interrupted while waiting for the deploy lock")]
    Interrupted,
}

/// Why `runbook unlock` left the lock on a host.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum NotUnlocked {
    #[error("the lock of {holder} is live (heartbeat {age} s ago): not removed")]
    Live {
        /// Whose lock, as people read it (`actor (run id, `script`)`).
        holder: String,
        /// The heartbeat's age in seconds, as the host reported it.
        age: String,
    },
    #[error(
        "{path} is {what}: not removed, --stale only removes the lock of a run that is known to be gone\n  hint: if nobody needs it any more, remove it with `runbook unlock -e {env}` (without --stale)"
    )]
    Foreign {
        path: String,
        /// What is there instead of a lock of runbook's, as the host described it.
        what: String,
        env: String,
    },
    /// The lock script's own words.
    #[error("{reason}")]
    Failed { reason: String },
    #[error(
        "unexpected answer from the lock script (exit {code:?}): {} {}",
        stdout.trim(),
        stderr.trim()
    )]
    Unexpected {
        code: i32,
        stdout: String,
        stderr: String,
    },
    #[error(transparent)]
    Host(#[from] HostError),
}

impl LockError {
    /// The message, with the environment named in the commands it suggests.
    pub(crate) fn message(&self, env: Option<&str>) -> String {
        match self {
            LockError::Held(held) => held_message(held, env),
            LockError::Frozen(frozen) => frozen_message(frozen, env),
            other => other.to_string(),
        }
    }
}

fn frozen_message(frozen: &[(String, Option<Freeze>)], env: Option<&str>) -> String {
    let env = env.unwrap_or("ENV");
    let now = chrono::Utc::now().timestamp();
    let mut s = String::from("deploys are frozen (nothing was changed):");
    for (host, f) in frozen {
        match f {
            Some(f) => {
                let _ = write!(s, "\n- {host}: frozen {}", f.describe(now));
            }
            None => {
                let _ = write!(s, "\n- {host}: frozen (the freeze record cannot be read)");
            }
        }
    }
    let _ = write!(
        s,
        "\n  hint: lift it with `runbook lock thaw -e {env} --reason \"…\"`; an emergency script passes a freeze when run with --reason"
    );
    s
}

fn held_message(held: &[Blocked], env: Option<&str>) -> String {
    let env = env.unwrap_or("ENV");
    let mut s = String::from(
        if held.iter().all(|b| matches!(b.by, Blocker::Run { .. })) {
            "the deploy lock is held by another run:"
        } else {
            "the deploy lock cannot be taken:"
        },
    );
    let mut foreign = false;
    for b in held {
        let host = &b.host;
        match &b.by {
            Blocker::Run {
                age,
                holder: Some(h),
            } => {
                let _ = write!(
                    s,
                    "\n- {host}: {} on {} (pid {}), running `{}` since {}{}{}; last heartbeat {age} s ago",
                    h.actor,
                    h.machine,
                    h.pid,
                    h.script,
                    h.started_at,
                    h.reason
                        .as_ref()
                        .map(|r| format!(", reason: {r}"))
                        .unwrap_or_default(),
                    h.ci_run
                        .as_ref()
                        .map(|r| format!(", CI run {r}"))
                        .unwrap_or_default(),
                );
            }
            Blocker::Run { age, holder: None } => {
                let _ = write!(s, "\n- {host}: holder unknown; last heartbeat {age} s ago");
            }
            Blocker::Foreign(what) => {
                foreign = true;
                let _ = write!(
                    s,
                    "\n- {host}: {} is {what}; runbook never replaces a lock it cannot read",
                    b.path
                );
            }
        }
    }
    if held.iter().any(|b| matches!(b.by, Blocker::Run { .. })) {
        let _ = write!(
            s,
            "\n  hint: wait for it with --lock-wait 10m; if that run is gone (no heartbeat for over a minute), remove its lock with `runbook unlock -e {env} --stale`"
        );
    }
    if foreign {
        let _ = write!(
            s,
            "\n  hint: if nobody needs it any more, remove it with `runbook unlock -e {env}` (with --reason \"…\" on a protected environment)"
        );
    }
    s
}

/// What one host said when asked for the lock.
#[derive(Debug, Clone)]
pub(crate) enum Acquired {
    New,
    Reentrant,
    TookOver { age: u64, from: Option<Holder> },
}

/// Locks held by this run, refreshed by a heartbeat and released at the end.
pub(crate) struct Locks {
    effects: Arc<Effects>,
    run: String,
    /// Shared with the heartbeat task, which beats for every lock held at each tick.
    held: Arc<Mutex<Vec<Target>>>,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set for an emergency script run with a reason: a freeze does not stop it.
    pass_freeze: std::sync::atomic::AtomicBool,
}

impl Locks {
    pub(crate) fn new(effects: Arc<Effects>, run: String) -> Locks {
        Locks {
            effects,
            run,
            held: Arc::new(Mutex::new(Vec::new())),
            heartbeat: Mutex::new(None),
            pass_freeze: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Lets this run's locks be taken while deploys are frozen (an emergency with a
    /// reason; the caller decides and audits).
    pub(crate) fn pass_freeze(&self, pass: bool) {
        self.pass_freeze
            .store(pass, std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes the lock on every target (re-entrant within this run). Waits up to `wait`
    /// for another run to finish; takes over a lock older than `take_stale` if given.
    pub(crate) fn acquire(
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
        if self.effects.dry_run() {
            return self.acquire_dry(&targets);
        }
        let mut pending = targets;
        let mut done = Vec::new();
        loop {
            // Counted as held before the attempt: if a signal cuts it short, the release
            // at the end of the run still removes whatever lock this run created (the
            // release only ever removes a lock whose holder is this run).
            {
                let mut mine = self.held.locked();
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
            let pass = if self.pass_freeze.load(std::sync::atomic::Ordering::SeqCst) {
                "1"
            } else {
                "0"
            };
            let outcomes = self.effects.run_many_with(
                &pending,
                &|t: &Target| spec(Script::Acquire, &[&root(t), &self.run, info, stale, pass]),
                &fan,
            );
            let mut held = Vec::new();
            let mut frozen = Vec::new();
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
                let second = fields.next().unwrap_or("");
                let third = fields.next();
                let age = second.parse().unwrap_or(0);
                let who: Option<Holder> = third.and_then(|j| serde_json::from_str(j).ok());
                let name = t.name().to_owned();
                match (r.code, word) {
                    (_, _) if r.dry_run => done.push((name, Acquired::New)),
                    (0, "acquired") => done.push((name, Acquired::New)),
                    (0, "reentrant") => done.push((name, Acquired::Reentrant)),
                    (0, "took-over") => done.push((name, Acquired::TookOver { age, from: who })),
                    (FROZEN, "frozen") => frozen.push((name, serde_json::from_str(second).ok())),
                    (HELD, "foreign") => {
                        held.push(Blocked {
                            host: name,
                            path: lock_path(t),
                            by: Blocker::Foreign(second.to_owned()),
                        });
                        still.push(t.clone());
                    }
                    (HELD, _) => {
                        held.push(Blocked {
                            host: name,
                            path: lock_path(t),
                            by: Blocker::Run { age, holder: who },
                        });
                        still.push(t.clone());
                    }
                    (DISPLACED, _) => {
                        return Err(LockError::Displaced {
                            host: name,
                            path: lock_path(t),
                            aside: second.to_owned(),
                            holder: who.map(Box::new),
                        });
                    }
                    (code, _) => {
                        return Err(LockError::Failed(format!(
                            "on `{name}` the lock script exited with {code}: {}",
                            r.stderr.trim()
                        )));
                    }
                }
            }
            if !frozen.is_empty() {
                // Locks this attempt took elsewhere are released by the run's end.
                return Err(LockError::Frozen(frozen));
            }
            self.start_heartbeat();
            if held.is_empty() {
                return Ok(done);
            }
            if std::time::Instant::now() >= deadline {
                return Err(LockError::Held(held));
            }
            pending = still;
            if self.effects.sleep(Duration::from_secs(2)).is_err() {
                return Err(LockError::Interrupted);
            }
        }
    }

    /// A dry run takes no lock: it reads each host's lock and freeze for real and says
    /// what the run would meet — a free lock, another run's, or a freeze.
    fn acquire_dry(&self, targets: &[Target]) -> Result<Vec<(String, Acquired)>, LockError> {
        let now = chrono::Utc::now().timestamp();
        let pass = self.pass_freeze.load(std::sync::atomic::Ordering::SeqCst);
        let mut held = Vec::new();
        let mut frozen = Vec::new();
        for (t, st) in targets.iter().zip(states(&self.effects, targets)) {
            let Ok(st) = st else { continue };
            if let Some(f) = st.freeze.filter(|f| f.holds(now) && !pass) {
                frozen.push((t.name().to_owned(), Some(f)));
            }
            if let Some(h) = st.holder.filter(|h| h.run != self.run) {
                held.push(Blocked {
                    host: t.name().to_owned(),
                    path: lock_path(t),
                    by: Blocker::Run {
                        age: st.beat_age.unwrap_or(0),
                        holder: Some(h),
                    },
                });
            }
        }
        if !frozen.is_empty() {
            return Err(LockError::Frozen(frozen));
        }
        if !held.is_empty() {
            return Err(LockError::Held(held));
        }
        Ok(targets
            .iter()
            .map(|t| (t.name().to_owned(), Acquired::New))
            .collect())
    }

    fn start_heartbeat(&self) {
        let mut slot = self.heartbeat.locked();
        if slot.is_some() || self.effects.dry_run() {
            return;
        }
        let effects = self.effects.clone();
        let run = self.run.clone();
        let held = self.held.clone();
        *slot = Some(self.effects.runtime().spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let targets = held.locked().clone();
                for t in &targets {
                    let mut s = spec(Script::Beat, &[&root(t), &run]);
                    s.silent = true;
                    let _ = effects.run_async(t, &s).await;
                }
            }
        }));
    }

    /// Releases every lock this run holds (only ever its own). Safe to call twice.
    /// Returns the hosts whose lock was released.
    pub(crate) fn release_all(&self) -> Vec<String> {
        self.release_all_report().0
    }

    /// [`Locks::release_all`], also returning the hosts where releasing failed (they did
    /// not answer): this run's lock may still be there.
    pub(crate) fn release_all_report(&self) -> (Vec<String>, Vec<String>) {
        if let Some(task) = self.heartbeat.locked().take() {
            task.abort();
        }
        let targets: Vec<Target> = std::mem::take(&mut *self.held.locked());
        if targets.is_empty() {
            return (Vec::new(), Vec::new());
        }
        // Shielded: a signal arriving while the run ends must not leave a lock behind.
        let outcomes = run_shielded(&self.effects, &targets, Script::Release, &|t| {
            vec![root(t), self.run.clone()]
        });
        let (mut released, mut failed) = (Vec::new(), Vec::new());
        for (t, o) in targets.iter().zip(outcomes) {
            match o {
                HostOutcome::Done(Ok(r)) if r.stdout.contains("released") || r.dry_run => {
                    released.push(t.name().to_owned());
                }
                HostOutcome::Done(Ok(_)) => {}
                HostOutcome::Done(Err(_)) | HostOutcome::Skipped => {
                    failed.push(t.name().to_owned());
                }
            }
        }
        (released, failed)
    }

    /// Appends `line` to this run's progress record on each of `hosts` whose lock it
    /// holds (best effort, shielded: a record must not be lost to a signal).
    pub(crate) fn note(&self, hosts: &[&str], line: &str) {
        if self.effects.dry_run() {
            return;
        }
        let targets: Vec<Target> = self
            .held
            .locked()
            .iter()
            .filter(|t| hosts.contains(&t.name()))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let fan = FanOut {
            fail_fast: false,
            shielded: true,
            ..FanOut::new()
        };
        let _ = self.effects.run_many_with(
            &targets,
            &|t: &Target| {
                let mut s = spec(Script::Note, &[&root(t), &self.run, line]);
                s.shielded = true;
                s.silent = true;
                s
            },
            &fan,
        );
    }

    /// `note` on every host this run holds the lock on.
    pub(crate) fn note_all(&self, line: &str) {
        let names = self.held();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.note(&names, line);
    }

    /// Names of the hosts this run holds the lock on.
    pub(crate) fn held(&self) -> Vec<String> {
        self.held
            .locked()
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    }
}

/// What one host says about the state runs left on it (see `STATE`).
#[derive(Debug, Clone, Default)]
pub(crate) struct HostState {
    pub host: String,
    pub current: String,
    pub down: bool,
    pub holder: Option<Holder>,
    /// Seconds since the holder's last heartbeat.
    pub beat_age: Option<u64>,
    pub progress: Vec<String>,
    pub temporaries: Vec<String>,
    /// A freeze of deploys on the host (it may have expired: see [`Freeze::holds`]).
    pub freeze: Option<Freeze>,
}

/// Reads every target's state (`None` for a host that did not answer, with why).
pub(crate) fn states(effects: &Effects, targets: &[Target]) -> Vec<Result<HostState, HostError>> {
    let fan = FanOut {
        fail_fast: false,
        ..FanOut::new()
    };
    let outcomes = effects.run_many_with(
        targets,
        &|t: &Target| {
            let mut s = spec(Script::State, &[&root(t)]);
            s.read = true;
            s
        },
        &fan,
    );
    targets
        .iter()
        .zip(outcomes)
        .map(|(t, o)| o.result().map(|r| parse_state(t.name(), &r.stdout)))
        .collect()
}

/// The state script (`sh -c TEXT sh ROOT`), for a caller that reads more in one trip.
pub(crate) fn state_script() -> String {
    Script::State.text()
}

/// A host's state from what the state script printed.
pub(crate) fn parse_state(host: &str, stdout: &str) -> HostState {
    let mut st = HostState {
        host: host.to_owned(),
        ..HostState::default()
    };
    for line in stdout.lines() {
        let (k, v) = line.split_once('\t').unwrap_or((line, ""));
        match k {
            "current" => v.clone_into(&mut st.current),
            "down" => st.down = v == "yes",
            "holder" => st.holder = serde_json::from_str(v).ok(),
            "beat" => st.beat_age = v.parse().ok(),
            "progress" => st.progress.push(v.to_owned()),
            "temporary" => st.temporaries.push(v.to_owned()),
            "freeze" => st.freeze = serde_json::from_str(v).ok(),
            _ => {}
        }
    }
    st
}

/// Removes dead run `dead`'s lock and lock temporaries on every target (never another
/// run's). Returns the hosts whose lock was removed.
pub(crate) fn remove_dead(
    effects: &Effects,
    targets: &[Target],
    dead: &str,
    run: &str,
) -> Vec<String> {
    let outcomes = run_shielded(effects, targets, Script::RemoveDead, &|t| {
        vec![root(t), dead.to_owned(), run.to_owned()]
    });
    targets
        .iter()
        .zip(outcomes)
        .filter_map(|(t, o)| match o {
            HostOutcome::Done(Ok(r)) if r.stdout.contains("removed") => Some(t.name().to_owned()),
            _ => None,
        })
        .collect()
}

/// Where this machine keeps the runs that ended with a lock left on a host.
fn ended_dir() -> std::path::PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("."))
        .join("runbook/ended")
}

/// Records that run `run` has ended although its lock stayed on `hosts` (they did not
/// answer at its end): a later run on this machine takes that lock for what it is — the
/// lock of a run that is gone — without waiting for its heartbeat to age. Best effort;
/// records older than 30 days are pruned.
pub(crate) fn record_ended(run: &str, env: &str, hosts: &[&str]) {
    use std::os::unix::fs::DirBuilderExt;
    let dir = ended_dir();
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .is_err()
    {
        return;
    }
    let line = format!("env {env}\nhosts {}\n", hosts.join(" "));
    let _ = std::fs::write(dir.join(run), line);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > Duration::from_hours(720));
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Forgets run `run`'s record of its end (its lock is gone now).
pub(crate) fn forget_ended(run: &str) {
    if recorded_ended(run) {
        let _ = std::fs::remove_file(ended_dir().join(run));
    }
}

/// Whether run `run` recorded here that it ended ([`record_ended`]).
fn recorded_ended(run: &str) -> bool {
    !run.is_empty()
        && !run.contains('/')
        && run != "."
        && run != ".."
        && ended_dir().join(run).is_file()
}

/// Whether the holder's process is known to be gone: it recorded on this machine that it
/// ended with its lock left on a host, or it ran on this machine and its pid no longer
/// exists (or is another program). A holder on another machine is judged by its
/// heartbeat alone.
pub(crate) fn holder_is_gone(h: &Holder) -> bool {
    if recorded_ended(&h.run) {
        return true;
    }
    let here = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    if h.machine != here || h.pid == 0 {
        return false;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(h.pid).unwrap_or(i32::MAX));
    if nix::sys::signal::kill(pid, None).is_err() {
        return true;
    }
    // A live pid may have been reused by another program.
    std::fs::read_to_string(format!("/proc/{}/cmdline", h.pid))
        .map_or(true, |c| !c.contains("runbook"))
}

/// `runbook unlock`: removes a lock; with `stale`, only one whose heartbeat is older.
/// Whatever sits at the lock path is moved aside under a name of this run's own before
/// it is deleted, so a run that takes the lock meanwhile is never removed with it. `env`
/// names the environment in the suggestions.
pub(crate) fn unlock(
    effects: &Effects,
    targets: &[Target],
    stale: Option<Duration>,
    run: &str,
    env: &str,
) -> Vec<(String, Result<String, NotUnlocked>)> {
    let stale = stale.map_or(0, |d| d.as_secs().max(1)).to_string();
    let fan = FanOut {
        fail_fast: false,
        ..FanOut::new()
    };
    let outcomes = effects.run_many_with(
        targets,
        &|t: &Target| spec(Script::Unlock, &[&root(t), &stale, run]),
        &fan,
    );
    targets
        .iter()
        .zip(outcomes)
        .map(|(t, o)| {
            let r = match o {
                HostOutcome::Done(Ok(r)) if r.dry_run => Ok("would remove the lock".to_owned()),
                HostOutcome::Done(Ok(r)) => {
                    let mut f = r.stdout.trim_end().splitn(3, '\t');
                    let word = f.next().unwrap_or("").to_owned();
                    let second = f.next().unwrap_or("?").to_owned();
                    let who = f
                        .next()
                        .and_then(|j| serde_json::from_str::<Holder>(j).ok())
                        .map_or_else(
                            || "unknown holder".into(),
                            |h| format!("{} (run {}, `{}`)", h.actor, h.run, h.script),
                        );
                    let path = lock_path(t);
                    match word.as_str() {
                        "none" => Ok("no lock".to_owned()),
                        "removed" => Ok(format!(
                            "removed the lock of {who}, heartbeat {second} s old"
                        )),
                        "removed-foreign" => Ok(format!("removed {second} at {path}")),
                        "live" => Err(NotUnlocked::Live {
                            holder: who,
                            age: second,
                        }),
                        "foreign" => Err(NotUnlocked::Foreign {
                            path,
                            what: second,
                            env: env.to_owned(),
                        }),
                        "failed" => Err(NotUnlocked::Failed { reason: second }),
                        _ => Err(NotUnlocked::Unexpected {
                            code: r.code,
                            stdout: r.stdout,
                            stderr: r.stderr,
                        }),
                    }
                }
                HostOutcome::Done(Err(e)) => Err(NotUnlocked::Host(e.into())),
                HostOutcome::Skipped => Err(NotUnlocked::Host(HostError::NotReached)),
            };
            (t.name().to_owned(), r)
        })
        .collect()
}

/// Freezes deploys on every target (`runbook lock freeze`); returns each host's outcome.
pub(crate) fn freeze(
    effects: &Effects,
    targets: &[Target],
    f: &Freeze,
) -> Vec<Result<(), HostError>> {
    let record = serde_json::to_string(f).unwrap_or_default();
    run_shielded(effects, targets, Script::Freeze, &|t| {
        vec![root(t), record.clone()]
    })
    .into_iter()
    .map(|o| o.success().map(drop))
    .collect()
}

/// Lifts the freeze on every target; returns what each host had (`None`: no freeze).
pub(crate) fn thaw(
    effects: &Effects,
    targets: &[Target],
) -> Vec<Result<Option<Freeze>, HostError>> {
    run_shielded(effects, targets, Script::Thaw, &|t| vec![root(t)])
        .into_iter()
        .map(|o| {
            o.success()
                .map(|r| serde_json::from_str(r.stdout.trim()).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sh(script: Script, args: &[&str]) -> (i32, String) {
        let (code, out, _) = crate::testing::sh(&script.text(), args, "");
        (code, out)
    }

    fn holder(run: &str, actor: &str) -> String {
        serde_json::to_string(&Holder {
            run: run.into(),
            actor: actor.into(),
            ..Holder::default()
        })
        .unwrap()
    }

    fn age_heartbeat(lock: &Path) {
        let old = std::process::Command::new("touch")
            .args(["-d", "2 minutes ago"])
            .arg(lock.join("heartbeat"))
            .status()
            .unwrap();
        assert!(old.success());
    }

    #[test]
    fn a_lock_is_exclusive_reentrant_and_released_only_by_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let (a, b) = (holder("run-a", "alice"), holder("run-b", ""));
        assert_eq!(
            sh(Script::Acquire, &[root, "run-a", &a, "0"]),
            (0, "acquired\n".into())
        );
        assert_eq!(
            sh(Script::Acquire, &[root, "run-a", &a, "0"]),
            (0, "reentrant\n".into())
        );
        let (code, out) = sh(Script::Acquire, &[root, "run-b", &b, "0"]);
        assert_eq!(code, HELD);
        assert!(out.starts_with("held\t") && out.contains("alice"), "{out}");
        // B cannot release A's lock.
        sh(Script::Release, &[root, "run-b"]);
        assert!(dir.path().join(".runbook/lock").exists());
        assert_eq!(
            sh(Script::Release, &[root, "run-a"]),
            (0, "released\n".into())
        );
        assert!(!dir.path().join(".runbook/lock").exists());
        // Nothing is left beside it either.
        let left: Vec<_> = std::fs::read_dir(dir.path().join(".runbook"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn only_a_stale_lock_can_be_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let (a, b) = (holder("run-a", ""), holder("run-b", ""));
        sh(Script::Acquire, &[root, "run-a", &a, "0"]);
        assert_eq!(
            sh(Script::Acquire, &[root, "run-b", &b, "60"]).0,
            HELD,
            "a fresh lock is not stale"
        );
        age_heartbeat(&dir.path().join(".runbook/lock"));
        let (code, out) = sh(Script::Acquire, &[root, "run-b", &b, "60"]);
        assert_eq!(code, 0);
        assert!(out.starts_with("took-over\t"), "{out}");
        let info = std::fs::read_to_string(dir.path().join(".runbook/lock/info")).unwrap();
        assert!(info.contains("run-b"));
    }

    /// An empty directory (a hand-made freeze), a file, a directory without a holder: each
    /// is refused with what it is, by a plain acquire and by a takeover, and left as it was.
    #[test]
    fn what_runbook_did_not_write_is_never_replaced() {
        type Make = fn(&Path);
        let b = holder("run-b", "");
        let cases: [(&str, Make, &str); 4] = [
            (
                "empty dir",
                |l| std::fs::create_dir(l).unwrap(),
                "an empty directory",
            ),
            (
                "a file",
                |l| std::fs::write(l, "frozen\n").unwrap(),
                "a file, not a lock directory",
            ),
            (
                "no info",
                |l| {
                    std::fs::create_dir(l).unwrap();
                    std::fs::write(l.join("heartbeat"), "").unwrap();
                },
                "without a readable holder file",
            ),
            (
                "garbage info",
                |l| {
                    std::fs::create_dir(l).unwrap();
                    std::fs::write(l.join("info"), "not json\n").unwrap();
                    std::fs::write(l.join("heartbeat"), "").unwrap();
                },
                "names no run",
            ),
        ];
        for (name, make, says) in cases {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_str().unwrap();
            let lock = dir.path().join(".runbook/lock");
            std::fs::create_dir_all(dir.path().join(".runbook")).unwrap();
            make(&lock);
            if lock.is_dir() && lock.join("heartbeat").exists() {
                age_heartbeat(&lock);
            }
            for stale in ["0", "60"] {
                let (code, out) = sh(Script::Acquire, &[root, "run-b", &b, stale]);
                assert_eq!(code, HELD, "{name} (stale {stale}): {out}");
                assert!(
                    out.starts_with("foreign\t") && out.contains(says),
                    "{name} (stale {stale}): {out}"
                );
            }
            let still_there = if lock.is_dir() {
                !lock.join("info").exists()
                    || std::fs::read_to_string(lock.join("info")).unwrap() == "not json\n"
            } else {
                std::fs::read_to_string(&lock).unwrap() == "frozen\n"
            };
            assert!(still_there, "{name}: the lock path was changed");
            // `unlock --stale` cannot judge it either; plain `unlock` removes it.
            let (code, out) = sh(Script::Unlock, &[root, "60", "run-u"]);
            assert_eq!(
                (code, out.starts_with("foreign\t")),
                (HELD, true),
                "{name}: {out}"
            );
            let (code, out) = sh(Script::Unlock, &[root, "0", "run-u"]);
            assert_eq!(code, 0, "{name}: {out}");
            assert!(
                out.starts_with("removed-foreign\t") && out.contains(says),
                "{name}: {out}"
            );
            assert!(!lock.exists() && !lock.is_symlink(), "{name}: not removed");
        }
    }

    /// Two runs take over the same stale lock at the same instant (both scripts wait on
    /// one FIFO, then race): exactly one wins, every trial, and the lock on
    /// disk is the winner's.
    #[test]
    fn of_two_runs_taking_over_one_stale_lock_exactly_one_wins() {
        let trials: usize = std::env::var("LOCK_RACE_TRIALS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(200);
        let (a, b) = (holder("run-a", "alice"), holder("run-b", "bob"));
        let dead = holder("run-dead", "carol");
        // Both scripts wait on a FIFO for their line: the starting gun. The test holds it
        // open for reading and writing, so a script that opens it late (a loaded machine)
        // still finds its line instead of waiting for a writer that is gone.
        let race = format!("read -r _ < \"$RB_GO\"\n{}", Script::Acquire.text());
        let mut tally = std::collections::BTreeMap::new();
        let mut first_bad = None;
        for trial in 0..trials {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_str().unwrap();
            let lock = dir.path().join(".runbook/lock");
            std::fs::create_dir_all(&lock).unwrap();
            std::fs::write(lock.join("info"), format!("{dead}\n")).unwrap();
            std::fs::write(lock.join("heartbeat"), "").unwrap();
            age_heartbeat(&lock);
            let go = dir.path().join("go");
            let made = std::process::Command::new("mkfifo")
                .arg(&go)
                .status()
                .unwrap();
            assert!(made.success());
            let spawn = |run: &str, info: &str| {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&race)
                    .arg("sh")
                    .args([root, run, info, "60"])
                    .env("RB_GO", &go)
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let mut gun = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&go)
                .unwrap();
            let (pa, pb) = (spawn("run-a", &a), spawn("run-b", &b));
            std::thread::sleep(std::time::Duration::from_millis(20));
            std::io::Write::write_all(&mut gun, b"go\ngo\n").unwrap();
            let outs = [
                pa.wait_with_output().unwrap(),
                pb.wait_with_output().unwrap(),
            ];
            let won: Vec<usize> = (0..2).filter(|i| outs[*i].status.success()).collect();
            let text = |i: usize| String::from_utf8_lossy(&outs[i].stdout).into_owned();
            let info = std::fs::read_to_string(lock.join("info")).unwrap_or_default();
            let verdict = match won.as_slice() {
                [_, _, ..] => "both won",
                [] => "nobody won",
                [w] if !info.contains(&format!("\"run\":\"{}\"", ["run-a", "run-b"][*w])) => {
                    "the lock on disk is not the winner's"
                }
                [w] if !(outs[1 - w].status.code() == Some(HELD)
                    && text(1 - w).starts_with("held\t")
                    && text(1 - w).contains(["alice", "bob"][*w])) =>
                {
                    "the loser does not name the winner"
                }
                [_] => "exactly one won",
            };
            if verdict != "exactly one won" && first_bad.is_none() {
                first_bad = Some(format!(
                    "trial {trial}: {verdict}: {} / {}",
                    text(0),
                    text(1)
                ));
            }
            *tally.entry(verdict).or_insert(0) += 1;
        }
        eprintln!("takeover race: {trials} trials: {tally:?}");
        assert_eq!(
            tally.get("exactly one won").copied().unwrap_or(0),
            trials,
            "{tally:?}; first: {}",
            first_bad.unwrap_or_default()
        );
    }
}
