//! A rollout that can be steered from another terminal: the running canary keeps its state
//! on the hosts next to the deploy lock, and reads control requests another process
//! (`runbook rollout pause|resume|promote|abort`, a CI job, the REPL) leaves there.
//!
//! On each host of the canary's web pool, under `<deploy_path>/.runbook/`:
//! - `rollout`: the state (JSON, written whole to a temporary file, then renamed): the
//!   step and weight, the current window (start, length, time left when paused), every
//!   judgement so far (both pools), the holder (run, actor, pid, machine) and the
//!   requests the runner obeyed. It stays after the rollout ends, with a final `phase`.
//! - `rollout.requests/<id>.json`: a control request, each in its own file (renamed into
//!   place), taken by the runner with one `mv` so it is obeyed once.
//!
//! Every host of the pool gets the same files, so the first one that answers is enough
//! to read or to steer. Plain Rust over the effect layer; knows nothing of Rhai, and never
//! changes traffic itself (the strategy does, and `runbook rollout` for a dead runner).

use serde::{Deserialize, Serialize};

use crate::effects::{Effects, FanOut, HostError, HostOutcome, Target};
use crate::transport::CommandSpec;

/// How often a running canary looks for control requests while a window runs.
pub(crate) const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Locked and preparing; no traffic on the canary yet.
    #[default]
    Starting,
    Running,
    Paused,
    /// Promotion asked for (or every step passed): going to 100%.
    Promoting,
    /// Abort asked for: traffic going back to stable.
    Aborting,
    Promoted,
    Aborted,
    /// A gate failed (or the run failed otherwise): traffic back on stable.
    Failed,
}

impl Phase {
    /// Whether the rollout is over (nothing to steer).
    pub(crate) fn ended(self) -> bool {
        matches!(self, Phase::Promoted | Phase::Aborted | Phase::Failed)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoting => "promoting",
            Phase::Aborting => "aborting",
            Phase::Promoted => "promoted",
            Phase::Aborted => "aborted",
            Phase::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Phase> {
        [
            Phase::Starting,
            Phase::Running,
            Phase::Paused,
            Phase::Promoting,
            Phase::Aborting,
            Phase::Promoted,
            Phase::Aborted,
            Phase::Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// One pool's numbers in a judgement (`None`: not measured, NaN or infinite).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Pool {
    pub requests: Option<u64>,
    /// Percent of non-5xx answers.
    pub success: Option<f64>,
    /// Seconds.
    pub p95: Option<f64>,
}

/// One window's verdict, as the canary judge gave it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Judgement {
    /// Step number (1-based) and its weight.
    pub step: usize,
    pub weight: i64,
    /// pass | fail | inconclusive
    pub outcome: String,
    pub reasons: Vec<String>,
    pub canary: Pool,
    pub stable: Pool,
    /// When (RFC 3339).
    pub at: String,
}

/// What another process asks of a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
        }
    }
}

/// A control request, and (once obeyed) when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    /// Unique and sorting by time (a run id of the requesting process).
    pub id: String,
    pub action: Action,
    pub actor: String,
    pub reason: Option<String>,
    pub machine: String,
    pub pid: u32,
    /// When it was asked (RFC 3339).
    pub at: String,
    /// When the runner obeyed it (RFC 3339); `None` while pending.
    #[serde(default)]
    pub obeyed_at: Option<String>,
    /// What came of it ("paused at 25%", "ignored: not paused").
    #[serde(default)]
    pub outcome: Option<String>,
}

/// The state of a rollout, as the runner keeps it on the hosts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    /// The holder: the run that drives the rollout.
    pub run: String,
    pub actor: String,
    pub machine: String,
    pub pid: u32,
    pub env: String,
    /// "canary"
    pub strategy: String,
    /// The canary release (staged as `next`).
    pub release: String,
    /// The ref or artifact it was built from.
    pub version: String,
    /// The hosts that keep this state (the web pool).
    pub hosts: Vec<String>,
    /// Every host the run locked (where a promotion switches `current`).
    pub locked: Vec<String>,
    pub steps: Vec<i64>,
    /// The current step, 1-based (0 before the first).
    pub step: usize,
    /// Percent of cohorts on the canary now.
    pub weight: i64,
    pub phase: Phase,
    /// The current window: its length and when it began (unix milliseconds; moved on by
    /// the time spent paused, so `left` stays what it was when the pause began).
    pub window_s: u64,
    pub window_started_ms: i64,
    /// Set while paused: when the pause began (unix milliseconds).
    pub paused_at_ms: Option<i64>,
    pub judgements: Vec<Judgement>,
    /// Requests seen, in the order they were obeyed (or ignored).
    pub requests: Vec<Request>,
    pub started_at: String,
    pub updated_ms: i64,
}

impl State {
    /// Seconds left in the current window at `now_ms` (held while paused).
    pub(crate) fn window_left_s(&self, now_ms: i64) -> Option<u64> {
        if self.window_s == 0 || self.window_started_ms == 0 || self.phase.ended() {
            return None;
        }
        let at = self.paused_at_ms.unwrap_or(now_ms);
        let gone = u64::try_from((at - self.window_started_ms).max(0)).unwrap_or(0) / 1000;
        Some(self.window_s.saturating_sub(gone))
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Writes the state whole (`$2` on stdin): a temporary file, then a rename.
const WRITE: &str = r#"d=$1/.runbook
mkdir -p "$d" && cat > "$d/rollout.new.$$" && mv -f "$d/rollout.new.$$" "$d/rollout"
"#;

/// Leaves a request (stdin) as `rollout.requests/$2.json`, renamed into place.
const POST: &str = r#"d=$1/.runbook/rollout.requests id=$2
mkdir -p "$d" && cat > "$d/.new.$id.$$" && mv -f "$d/.new.$id.$$" "$d/$id.json"
"#;

/// Takes every pending request: each moved to a name of this process's own first, so
/// of two takers only one gets it; prints one JSON request a line.
const TAKE: &str = r#"d=$1/.runbook/rollout.requests
[ -d "$d" ] || exit 0
for f in "$d"/*.json; do
  [ -e "$f" ] || continue
  t="$d/.taken.$$"
  mv "$f" "$t" 2>/dev/null || continue
  tr -d '\n' < "$t"; echo
  rm -f "$t"
done
true
"#;

/// Removes pending requests (the rollout is over: nothing will obey them).
const CLEAR: &str = r#"rm -rf "$1/.runbook/rollout.requests"
true
"#;

/// Marks the sections of what `READ` prints.
const MARK_STATE: &str = "@@runbook-rollout";
const MARK_PENDING: &str = "@@runbook-pending";

fn spec(label: &str, body: &str, args: &[&str]) -> CommandSpec {
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

fn fan() -> FanOut {
    FanOut {
        fail_fast: false,
        ..FanOut::new()
    }
}

fn outcome_ok(o: &HostOutcome) -> Result<String, HostError> {
    o.success().map(|r| r.stdout.clone())
}

/// Writes `state` on every target (shielded: a state must not be half-told to a signal).
/// Returns the hosts where it failed, with why.
pub(crate) fn write(effects: &Effects, targets: &[Target], state: &State) -> Vec<(String, String)> {
    let json = serde_json::to_string(state).unwrap_or_default();
    let fan = FanOut {
        shielded: true,
        ..fan()
    };
    let outcomes = effects.run_many_with(
        targets,
        &|t: &Target| {
            let mut s = spec("rollout: record the state", WRITE, &[&root(t)]);
            s.stdin = Some(json.clone().into_bytes());
            s.shielded = true;
            s.silent = true;
            s
        },
        &fan,
    );
    failures(targets, &outcomes)
}

fn failures(targets: &[Target], outcomes: &[HostOutcome]) -> Vec<(String, String)> {
    targets
        .iter()
        .zip(outcomes)
        .filter_map(|(t, o)| {
            outcome_ok(o)
                .err()
                .map(|e| (t.name().to_owned(), e.to_string()))
        })
        .collect()
}

/// Leaves `request` on every target. Returns the hosts where it failed, with why.
pub(crate) fn post(
    effects: &Effects,
    targets: &[Target],
    request: &Request,
) -> Vec<(String, String)> {
    let json = serde_json::to_string(request).unwrap_or_default();
    let outcomes = effects.run_many_with(
        targets,
        &|t: &Target| {
            let mut s = spec(
                &format!("rollout: ask for {}", request.action.as_str()),
                POST,
                &[&root(t), &request.id],
            );
            s.stdin = Some(json.clone().into_bytes());
            s
        },
        &fan(),
    );
    failures(targets, &outcomes)
}

/// Takes the pending requests from every target, oldest first, each once (the same
/// request left on several hosts counts once). Hosts that do not answer are skipped: the
/// next poll asks again.
pub(crate) fn take(effects: &Effects, targets: &[Target]) -> Vec<Request> {
    let outcomes = effects.run_many_with(
        targets,
        &|t: &Target| {
            let mut s = spec("rollout: look for control requests", TAKE, &[&root(t)]);
            s.silent = true;
            s
        },
        &fan(),
    );
    let mut got: Vec<Request> = Vec::new();
    for o in &outcomes {
        let Ok(text) = outcome_ok(o) else { continue };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Ok(r) = serde_json::from_str::<Request>(line)
                && !got.iter().any(|g| g.id == r.id)
            {
                got.push(r);
            }
        }
    }
    got.sort_by(|a, b| a.id.cmp(&b.id));
    got
}

/// Removes pending requests on every target (best effort).
pub(crate) fn clear(effects: &Effects, targets: &[Target]) {
    let _ = effects.run_many_with(
        targets,
        &|t: &Target| spec("rollout: drop pending requests", CLEAR, &[&root(t)]),
        &fan(),
    );
}

/// What one host says: its lock (holder, heartbeat) and the rollout state on it.
#[derive(Debug, Clone)]
pub(crate) struct HostView {
    pub host: String,
    pub lock: crate::lock::HostState,
    pub state: Option<State>,
    /// Requests left there that no runner took yet.
    pub pending: usize,
}

/// Reads every target in one round trip each, all at once: the lock's state and the
/// rollout state. `Err` for a host that did not answer.
pub(crate) fn read(effects: &Effects, targets: &[Target]) -> Vec<Result<HostView, HostError>> {
    let script = format!(
        "( {}\n)\necho '{MARK_STATE}'\ncat \"$1/.runbook/rollout\" 2>/dev/null; echo\necho '{MARK_PENDING}'\nls \"$1/.runbook/rollout.requests\" 2>/dev/null | grep -c '\\.json$'\ntrue\n",
        crate::lock::state_script()
    );
    let outcomes = effects.run_many_with(
        targets,
        &|t: &Target| {
            let mut s = spec("rollout: read the state", &script, &[&root(t)]);
            s.read = true;
            s
        },
        &fan(),
    );
    targets
        .iter()
        .zip(&outcomes)
        .map(|(t, o)| outcome_ok(o).map(|out| parse_view(t.name(), &out)))
        .collect()
}

fn parse_view(host: &str, out: &str) -> HostView {
    let (lock, rest) = out
        .split_once(&format!("{MARK_STATE}\n"))
        .unwrap_or((out, ""));
    let (state, pending) = rest
        .split_once(&format!("{MARK_PENDING}\n"))
        .unwrap_or((rest, ""));
    HostView {
        host: host.to_owned(),
        lock: crate::lock::parse_state(host, lock),
        state: serde_json::from_str(state.trim()).ok(),
        pending: pending.trim().parse().unwrap_or(0),
    }
}

/// The rollout as the fleet tells it: the newest state any host holds, and whether the
/// run that drives it is alive.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Seen {
    pub state: State,
    /// The hosts that answered with this state.
    pub on: Vec<String>,
    /// Seconds since the holder's lock heartbeat (on the first of `on` that has its lock).
    pub heartbeat_age: Option<u64>,
    /// Whether the holder still holds the lock somewhere.
    pub locked: bool,
    /// The run is alive: it holds the lock, its heartbeat is fresh, and (on this machine)
    /// its process exists.
    pub alive: bool,
    pub pending: usize,
}

/// The newest rollout state among `views` (by `updated_ms`), judged alive or dead.
pub(crate) fn judge(views: &[HostView]) -> Option<Seen> {
    let newest = views
        .iter()
        .filter_map(|v| v.state.as_ref())
        .max_by_key(|s| s.updated_ms)?
        .clone();
    let on: Vec<String> = views
        .iter()
        .filter(|v| v.state.as_ref().is_some_and(|s| s.run == newest.run))
        .map(|v| v.host.clone())
        .collect();
    let lock = views.iter().find_map(|v| {
        v.lock
            .holder
            .as_ref()
            .filter(|h| h.run == newest.run)
            .map(|h| (h.clone(), v.lock.beat_age))
    });
    let heartbeat_age = lock.as_ref().and_then(|(_, b)| *b);
    let alive = lock.as_ref().is_some_and(|(h, beat)| {
        beat.is_some_and(|b| b <= crate::lock::DEFAULT_TTL.as_secs())
            && !crate::lock::holder_is_gone(h)
    });
    let pending = views
        .iter()
        .filter(|v| on.contains(&v.host))
        .map(|v| v.pending)
        .max()
        .unwrap_or(0);
    Some(Seen {
        locked: lock.is_some(),
        state: newest,
        on,
        heartbeat_age,
        alive,
        pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(body: &str, args: &[&str], stdin: &str) -> (i32, String) {
        let (code, out, _) = crate::testing::sh(body, args, stdin);
        (code, out)
    }

    fn request(id: &str, action: Action) -> Request {
        Request {
            id: id.into(),
            action,
            actor: "ann".into(),
            reason: Some("looks bad".into()),
            machine: "m".into(),
            pid: 1,
            at: "t".into(),
            obeyed_at: None,
            outcome: None,
        }
    }

    #[test]
    fn a_request_is_taken_once_oldest_first_and_the_state_is_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        for (id, a) in [("r2", Action::Resume), ("r1", Action::Pause)] {
            let json = serde_json::to_string(&request(id, a)).unwrap();
            assert_eq!(sh(POST, &[root, id], &json).0, 0);
        }
        let (code, out) = sh(TAKE, &[root], "");
        assert_eq!(code, 0);
        let ids: Vec<String> = out
            .lines()
            .map(|l| serde_json::from_str::<Request>(l).unwrap().id)
            .collect();
        assert_eq!(ids, ["r1", "r2"], "{out}");
        assert_eq!(sh(TAKE, &[root], ""), (0, String::new()), "taken twice");
        let state = State {
            run: "run-a".into(),
            weight: 25,
            phase: Phase::Paused,
            updated_ms: 5,
            ..State::default()
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(sh(WRITE, &[root], &json).0, 0);
        let left: Vec<_> = std::fs::read_dir(dir.path().join(".runbook"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("rollout.new"))
            .collect();
        assert!(left.is_empty(), "temporaries left: {left:?}");
        let text = std::fs::read_to_string(dir.path().join(".runbook/rollout")).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn the_window_clock_stops_while_paused() {
        let mut s = State {
            window_s: 60,
            window_started_ms: 1_000,
            phase: Phase::Running,
            ..State::default()
        };
        assert_eq!(s.window_left_s(21_000), Some(40));
        s.paused_at_ms = Some(21_000);
        assert_eq!(s.window_left_s(500_000), Some(40));
        s.phase = Phase::Aborted;
        assert_eq!(s.window_left_s(21_000), None);
    }

    #[test]
    fn the_newest_state_wins_and_a_holder_without_its_lock_is_dead() {
        let view = |host: &str, updated: i64, locked: bool| HostView {
            host: host.into(),
            lock: crate::lock::HostState {
                holder: locked.then(|| crate::lock::Holder {
                    run: "run-a".into(),
                    machine: "elsewhere".into(),
                    ..crate::lock::Holder::default()
                }),
                beat_age: locked.then_some(3),
                ..crate::lock::HostState::default()
            },
            state: Some(State {
                run: "run-a".into(),
                weight: updated,
                updated_ms: updated,
                ..State::default()
            }),
            pending: 0,
        };
        let seen = judge(&[view("web1", 10, true), view("web2", 25, true)]).unwrap();
        assert_eq!(seen.state.weight, 25);
        assert!(seen.alive && seen.locked);
        assert_eq!(seen.on, ["web1", "web2"]);
        let seen = judge(&[view("web1", 10, false)]).unwrap();
        assert!(!seen.alive && !seen.locked);
        assert!(judge(&[]).is_none());
    }
}
