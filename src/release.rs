//! Releases: the layout under `deploy_path`, and the operations on it.
//!
//! ```text
//! <deploy_path>/releases/<name>/     one directory per release (names sort by time)
//! <deploy_path>/shared/              storage/, .env … linked into every release
//! <deploy_path>/current              -> releases/<name>   (switched by rename(2) only)
//! <deploy_path>/.runbook/            repo.git (bare mirror), releases/<name>.json
//!                                    (metadata), preparing/<name>, bad/<name>, lock/
//! ```
//!
//! Every operation is a fixed POSIX shell script run through the effect layer; values
//! reach it only as positional arguments (`sh -c SCRIPT sh "$1" "$2" …`), never spliced
//! into the script text. The switch is always a temporary symlink renamed over `current`
//! (`mv -T`), never `rm` + `ln`, so a request sees either the old or the new release.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::effects::{
    CommandError, CommandResult, Effects, FanOut, HostError, HostOutcome, Target,
};
use crate::transport::CommandSpec;

/// Facts recorded with each release (`.runbook/releases/<name>.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
pub(crate) struct Metadata {
    pub name: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: String,
    pub source: String,
    pub by: String,
    pub run: String,
    pub created_at: String,
    pub reason: Option<String>,
    pub runbook: String,
    /// When the deployed commit was made (unix seconds), for lead time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<i64>,
}

/// Where a release's code comes from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A ref of the repository, fetched into a bare mirror on each host.
    Git { repository: String, git_ref: String },
    /// A directory or `.tar.gz` built where runbook runs, uploaded to each host.
    Artifact { path: std::path::PathBuf },
}

/// What `prepare` needs besides the source.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub shared_dirs: Vec<String>,
    pub shared_files: Vec<String>,
    pub writable_dirs: Vec<String>,
    /// e.g. `composer` — run as `<composer> install --no-dev …` when composer.json exists.
    pub composer: String,
    /// What happens to `shared/.env` before the shared files are linked.
    pub env_file: EnvFile,
}

/// What `prepare` does about `shared/.env` (see [`write_env_spec`], [`refused_for_env`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) enum EnvFile {
    /// Leave it as the shared files make it.
    #[default]
    AsIs,
    /// Write this text (a rendered `env_template`) on every host, atomically, mode 0640.
    /// `shadow`: the template's own file name when it is a `.env.*` at the release's root
    /// — Laravel reads `.env.<APP_ENV>` instead of `.env` once APP_ENV is set (its
    /// `config:cache` does), so that file in the release becomes a link to `shared/.env`.
    Rendered {
        text: String,
        shadow: Option<String>,
    },
    /// Refuse a host's FIRST release while `shared/.env` is missing or empty and the
    /// release brings none (a Laravel app would fail at the migrations without saying why).
    Required { env: String },
}

impl std::fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvFile::AsIs => f.write_str("AsIs"),
            // The text holds secrets: never in a debug line.
            EnvFile::Rendered { text, shadow } => {
                write!(f, "Rendered({} bytes, shadow {shadow:?})", text.len())
            }
            EnvFile::Required { env } => write!(f, "Required({env})"),
        }
    }
}

/// A failure on some hosts of a set.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ReleaseError {
    pub message: String,
    pub interrupted: bool,
    /// Hosts a failed switch moved and could not move back: `(host, the release it was
    /// on before)`, so that a later undo tries them again.
    pub stranded: Vec<(String, String)>,
}

/// Why a host that had switched was not switched back (said in the switch's error).
#[derive(Debug, thiserror::Error)]
enum NotBack {
    #[error(transparent)]
    Failed(CommandError),
    #[error("not attempted")]
    NotAttempted,
}

/// Why no release can be rolled back to: the decision of [`choose_target`] on the hosts'
/// release lists, naming what each host lacks or has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NoRollbackTarget {
    #[error(
        "release {name} is not complete on every host: missing on {}; nothing was changed (see `release::list`, or pick a release every host has)",
        missing.join(", ")
    )]
    Incomplete { name: String, missing: Vec<String> },
    #[error("nothing is live on any host: there is no release to roll back from")]
    NothingLive,
    #[error(
        "no release older than {live} is complete and good on every host; nothing was changed. What each host has:{}\nPick one with to=NAME after copying it where it is missing, or restore a backup (archive=NAME).",
        has_lines(good)
    )]
    NoneInCommon {
        /// The newest live release.
        live: String,
        /// Per host, its complete good releases older than `live`.
        good: Vec<(String, Vec<String>)>,
    },
}

fn has_lines(good: &[(String, Vec<String>)]) -> String {
    good.iter().fold(String::new(), |mut out, (host, names)| {
        let names = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        };
        let _ = write!(out, "\n  {host}: {names}");
        out
    })
}

/// Why the SQL of the pending migrations cannot be shown.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PretendError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("migrate --pretend exited {code}: {}", output.trim())]
    Exit { code: i32, output: String },
}

impl ReleaseError {
    fn new(message: impl Into<String>) -> ReleaseError {
        ReleaseError {
            message: message.into(),
            interrupted: false,
            stranded: Vec::new(),
        }
    }
}

const GIT_FETCH: &str = r#"set -eu
root=$1 name=$2 repo=$3 ref=$4
meta=$root/.runbook rel=$root/releases/$name
mkdir -p "$root/releases" "$root/shared" "$meta/preparing" "$meta/bad" "$meta/releases"
touch "$meta/preparing/$name"
if [ -d "$meta/repo.git" ]; then
  # config is rewritten only when the URL changed: a run stopped while git writes it
  # leaves config.lock behind, and every later fetch on the host would fail on it.
  [ "$(git -C "$meta/repo.git" config --get remote.origin.url || true)" = "$repo" ] ||
    git -C "$meta/repo.git" remote set-url origin "$repo"
  git -C "$meta/repo.git" fetch --quiet --prune --tags origin '+refs/heads/*:refs/heads/*'
else
  git clone --quiet --mirror "$repo" "$meta/repo.git"
fi
commit=$(git -C "$meta/repo.git" rev-parse --verify --quiet "$ref^{commit}") || {
  echo "ref '$ref' does not exist in $repo" >&2; exit 3; }
mkdir "$rel"
git -C "$meta/repo.git" archive --format=tar "$commit" | tar -x -C "$rel"
echo "$commit $(git -C "$meta/repo.git" show -s --format=%ct "$commit")"
"#;

const ARTIFACT_START: &str = r#"set -eu
root=$1 name=$2
meta=$root/.runbook
[ -d "$root/releases" ] && [ -d "$root/shared" ] && [ -d "$meta/preparing" ] && [ -d "$meta/bad" ] && [ -d "$meta/releases" ] ||
  mkdir -p "$root/releases" "$root/shared" "$meta/preparing" "$meta/bad" "$meta/releases"
: > "$meta/preparing/$name"
mkdir "$root/releases/$name"
"#;

const ARTIFACT_UNPACK: &str = r#"set -eu
root=$1 name=$2 archive=$3
tar -xzf "$archive" -C "$root/releases/$name"
rm -f "$archive"
"#;

/// Links shared paths, makes dirs writable, runs composer, records metadata; the release
/// is complete (a rollback target) only once its metadata exists. With `$9` (a shared
/// file's name, `.env`), it first refuses a host's first release when that file is
/// missing or empty both in `shared/` and in the release: [`ENV_MISSING`] on standard
/// error, exit 3, nothing changed. The shell's builtins wherever a program is not needed
/// (`${p%/*}` for `dirname`, here-documents for pipes, a test before `mkdir` and `rm`):
/// each program costs the host a fork and an exec, per host, per deploy.
const FINISH: &str = r#"set -eu
root=$1 name=$2 dirs=$3 files=$4 writable=$5 composer=$6 meta_json=$7 commit=$8 required=${9-}
rel=$root/releases/$name shared=$root/shared
if [ -n "$required" ] && [ ! -L "$root/current" ] && [ ! -e "$root/current" ] &&
  [ ! -s "$shared/$required" ] && [ ! -s "$rel/$required" ]; then
  echo "runbook: shared/$required is missing or empty before the first release" >&2
  exit 3
fi
# Makes the directory above $1 (a path with a slash), the one dirname would print.
up() { u=$1; while [ "${u%/}" != "$u" ]; do u=${u%/}; done; u=${u%/*}; [ -d "$u" ] || mkdir -p "$u"; }
while IFS= read -r d; do
  [ -n "$d" ] || continue
  if [ ! -e "$shared/$d" ]; then
    up "$shared/$d"
    if [ -d "$rel/$d" ]; then cp -a "$rel/$d" "$shared/$d"; else mkdir -p "$shared/$d"; fi
  fi
  if [ -e "$rel/$d" ] || [ -L "$rel/$d" ]; then rm -rf "$rel/$d"; fi
  up "$rel/$d"
  ln -s "$shared/$d" "$rel/$d"
done <<__rb_end
$dirs
__rb_end
while IFS= read -r f; do
  [ -n "$f" ] || continue
  if [ ! -e "$shared/$f" ]; then
    up "$shared/$f"
    if [ -f "$rel/$f" ]; then cp -a "$rel/$f" "$shared/$f"; else : > "$shared/$f"; fi
  fi
  if [ -e "$rel/$f" ] || [ -L "$rel/$f" ]; then rm -f "$rel/$f"; fi
  up "$rel/$f"
  ln -s "$shared/$f" "$rel/$f"
done <<__rb_end
$files
__rb_end
while IFS= read -r w; do
  [ -n "$w" ] || continue
  [ -d "$rel/$w" ] || mkdir -p "$rel/$w"
  chmod -R u+rwX,g+rwX "$rel/$w/"
done <<__rb_end
$writable
__rb_end
if [ -f "$rel/composer.json" ] && [ -n "$composer" ]; then
  if command -v "${composer%% *}" >/dev/null 2>&1; then
    (cd "$rel" && $composer install --no-dev --optimize-autoloader --no-interaction --no-progress)
  else
    echo "skipped: composer.json is present but '${composer%% *}' is not installed" >&2
  fi
fi
printf '%s\n' "$commit" > "$rel/REVISION"
printf '%s\n' "$meta_json" > "$root/.runbook/releases/$name.json"
rm -f "$root/.runbook/preparing/$name"
"#;

/// What [`FINISH`] writes on standard error (with exit 3) when it refuses a first
/// release for want of the app's settings.
const ENV_MISSING: &str = "is missing or empty before the first release";

const ABANDON: &str = r#"root=$1 name=$2
rm -rf "$root/releases/$name" "$root/.runbook/releases/$name.json"
rm -f "$root/.runbook/preparing/$name"
"#;

const ACTIVATE: &str = r#"set -eu
root=$1 name=$2
[ -d "$root/releases/$name" ] || { echo "release $name does not exist on this host" >&2; exit 3; }
[ ! -e "$root/.runbook/preparing/$name" ] || { echo "release $name is incomplete (still being prepared)" >&2; exit 3; }
prev=$(readlink "$root/current" 2>/dev/null || true)
tmp=$root/.current.$name.$$
ln -s "releases/$name" "$tmp"
mv -T "$tmp" "$root/current"
echo "${prev##*/}"
"#;

/// Puts `current` back where a failed switch found it ("" — the host had none — removes
/// it). Marks are left alone: this undoes a move, it judges no release.
const SWITCH_BACK: &str = r#"set -eu
root=$1 name=$2
if [ -z "$name" ]; then rm -f "$root/current"; exit 0; fi
tmp=$root/.current.$name.$$
ln -s "releases/$name" "$tmp"
mv -T "$tmp" "$root/current"
"#;

/// The release `current` points at ("" when none).
const LIVE: &str = r#"cur=$(readlink "$1/current" 2>/dev/null || true); echo "${cur##*/}""#;

/// Points `next` (what a preview vhost or a canary pool serves) at a complete release,
/// atomically; an empty name removes `next`.
const STAGE: &str = r#"set -eu
root=$1 name=$2
if [ -z "$name" ]; then rm -f "$root/next"; exit 0; fi
[ -d "$root/releases/$name" ] || { echo "release $name does not exist on this host" >&2; exit 3; }
[ -e "$root/.runbook/releases/$name.json" ] || { echo "release $name is incomplete" >&2; exit 3; }
tmp=$root/.next.$name.$$
ln -s "releases/$name" "$tmp"
mv -T "$tmp" "$root/next"
"#;

/// Marks a release bad (skipped by later rollbacks); never the live one.
const MARK_BAD: &str = r#"set -eu
root=$1 name=$2
cur=$(readlink "$root/current" 2>/dev/null || true)
[ "${cur##*/}" != "$name" ] || { echo "release $name is live: switch away from it first" >&2; exit 3; }
[ -d "$root/releases/$name" ] || exit 0
mkdir -p "$root/.runbook/bad"
touch "$root/.runbook/bad/$name"
"#;

const ROLLBACK: &str = r#"set -eu
root=$1 target=$2
cur=$(readlink "$root/current" 2>/dev/null || true); cur=${cur##*/}
if [ -z "$target" ]; then
  seen=0
  [ -n "$cur" ] || seen=1
  for r in $(ls -1 "$root/releases" | sort -r); do
    if [ "$r" = "$cur" ]; then seen=1; continue; fi
    [ "$seen" = 1 ] || continue
    [ -e "$root/.runbook/bad/$r" ] && continue
    [ -e "$root/.runbook/preparing/$r" ] && continue
    [ -e "$root/.runbook/releases/$r.json" ] || continue
    target=$r; break
  done
  [ -n "$target" ] || { echo "no earlier good release to roll back to (current: ${cur:-none})" >&2; exit 3; }
fi
[ -d "$root/releases/$target" ] || { echo "release $target does not exist on this host" >&2; exit 3; }
[ -e "$root/.runbook/releases/$target.json" ] || { echo "release $target is incomplete" >&2; exit 3; }
mkdir -p "$root/.runbook/bad"
# The release left is judged bad — unless the target is newer (a host brought forward
# to what the others serve is not a verdict on the one it was on).
made() { sed -n 's/.*"created_at":"\([^"]*\)".*/\1/p' "$root/.runbook/releases/$1.json" 2>/dev/null || true; }
newer=no
if [ -n "$cur" ]; then
  a=$(made "$cur"); b=$(made "$target")
  if [ -n "$a" ] && [ -n "$b" ] && [ "$a" != "$b" ] && [ "$(printf '%s\n%s\n' "$a" "$b" | sort | tail -n 1)" = "$b" ]; then newer=yes; fi
fi
[ -z "$cur" ] || [ "$cur" = "$target" ] || [ "$newer" = yes ] || touch "$root/.runbook/bad/$cur"
rm -f "$root/.runbook/bad/$target"
tmp=$root/.current.$target.$$
ln -s "releases/$target" "$tmp"
mv -T "$tmp" "$root/current"
echo "$cur $target"
"#;

const LIST: &str = r#"root=$1
cur=$(readlink "$root/current" 2>/dev/null || true); cur=${cur##*/}
[ -d "$root/releases" ] || exit 0
for r in $(ls -1 "$root/releases" | sort); do
  state=complete
  [ -e "$root/.runbook/releases/$r.json" ] || state=incomplete
  [ -e "$root/.runbook/preparing/$r" ] && state=preparing
  bad=no; [ -e "$root/.runbook/bad/$r" ] && bad=yes
  live=no; [ "$r" = "$cur" ] && live=yes
  meta=$(cat "$root/.runbook/releases/$r.json" 2>/dev/null | tr -d '\n' || true)
  printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$state" "$bad" "$live" "$meta"
done
"#;

/// Keeps the newest `keep` complete releases (the live one counts, and is never
/// removed), and leaves releases being prepared alone unless their marker is a day old (a
/// killed run). A release without runbook's metadata (another tool made it) or adopted
/// from another tool (`runbook adopt`) is never removed: it may be the only way back.
const CLEANUP: &str = r#"set -eu
root=$1 keep=$2
cur=$(readlink "$root/current" 2>/dev/null || true); cur=${cur##*/}
next=$(readlink "$root/next" 2>/dev/null || true); next=${next##*/}
[ -d "$root/releases" ] || exit 0
n=0; [ -z "$cur" ] || n=1
for r in $(ls -1 "$root/releases" | sort -r); do
  [ "$r" = "$cur" ] && continue
  [ "$r" = "$next" ] && continue
  [ -e "$root/.runbook/adopted/$r" ] && continue
  if [ -e "$root/.runbook/preparing/$r" ]; then
    [ -n "$(find "$root/.runbook/preparing/$r" -mmin +1440 2>/dev/null)" ] || continue
  elif [ -e "$root/.runbook/releases/$r.json" ]; then
    n=$((n + 1))
    [ "$n" -gt "$keep" ] || continue
  else
    continue
  fi
  rm -rf "$root/releases/$r"
  rm -f "$root/.runbook/releases/$r.json" "$root/.runbook/bad/$r" "$root/.runbook/preparing/$r"
  echo "$r"
done
"#;

/// What another tool left that runbook must not touch before `runbook adopt`: a `current`
/// that is a real directory, and releases with no runbook metadata. One line each.
const LAYOUT: &str = r#"root=$1
if [ -d "$root/current" ] && [ ! -L "$root/current" ]; then echo "current-dir"; fi
if [ -L "$root/current" ]; then
  l=$(readlink "$root/current"); echo "live ${l##*/}"
  [ -e "$root/current/" ] || echo "dangling"
fi
[ -d "$root/releases" ] || exit 0
for r in $(ls -1 "$root/releases"); do
  [ -e "$root/.runbook/releases/$r.json" ] && continue
  [ -e "$root/.runbook/preparing/$r" ] && continue
  echo "foreign $r"
done
"#;

/// Adopts another tool's layout: a `current` directory is copied into `releases/` as a
/// release and replaced by a link to it (an atomic exchange where `mv --exchange` exists,
/// else two renames microseconds apart); every release without metadata gets metadata
/// (its mtime as its date) and an `adopted` mark (cleanup keeps it). Names that are not
/// plain (letters, digits, `-`, `_`, `.`) are left alone and reported.
const ADOPT: &str = r#"set -eu
root=$1 now=$2 by=$3
meta=$root/.runbook
mkdir -p "$meta/releases" "$meta/adopted" "$meta/bad" "$root/releases" "$root/shared"
if [ -d "$root/current" ] && [ ! -L "$root/current" ]; then
  name=adopted-$now
  [ ! -e "$root/releases/$name" ] || { echo "releases/$name already exists" >&2; exit 3; }
  cp -a "$root/current" "$root/releases/.$name.tmp"
  mv -T "$root/releases/.$name.tmp" "$root/releases/$name"
  tmp=$root/.current.adopt.$$
  ln -s "releases/$name" "$tmp"
  if mv --exchange "$tmp" "$root/current" 2>/dev/null; then
    rm -rf "$tmp"
  else
    mv -T "$root/current" "$root/.current.old.$$" && mv -T "$tmp" "$root/current"
    rm -rf "$root/.current.old.$$"
  fi
  echo "current $name"
fi
for r in $(ls -1 "$root/releases"); do
  [ -e "$meta/releases/$r.json" ] && continue
  [ -e "$meta/preparing/$r" ] && continue
  case $r in *[!A-Za-z0-9._-]*|.*) echo "skipped $r"; continue ;; esac
  at=$(date -u -d "@$(stat -c %Y "$root/releases/$r")" +%Y-%m-%dT%H:%M:%SZ)
  printf '{"name":"%s","ref":"","commit":"","source":"adopted","by":%s,"run":"","created_at":"%s","reason":null,"runbook":"adopt"}\n' "$r" "$by" "$at" > "$meta/releases/.$r.json.tmp"
  mv -T "$meta/releases/.$r.json.tmp" "$meta/releases/$r.json"
  : > "$meta/adopted/$r"
  echo "adopted $r"
done
"#;

fn script(label: String, body: &str, args: &[&str]) -> CommandSpec {
    CommandSpec::script(label, body, args)
}

/// A script that only reads the hosts: quiet, and run for real in a dry run.
fn probe(label: String, body: &str, args: &[&str]) -> CommandSpec {
    CommandSpec {
        quiet: true,
        read: true,
        ..script(label, body, args)
    }
}

fn root(t: &Target) -> String {
    match t {
        Target::Host(h) => h.deploy_path.clone(),
        Target::Local => String::new(),
    }
}

/// Runs a per-host script on every target; all must succeed.
fn on_all(
    effects: &Effects,
    targets: &[Target],
    build: impl Fn(&Target) -> CommandSpec,
) -> Result<Vec<CommandResult>, ReleaseError> {
    let mut fan = FanOut::new();
    fan.fail_fast = false;
    let outcomes = effects.run_many_with(targets, &|t: &Target| build(t), &fan);
    collect(targets, outcomes)
}

fn collect(
    targets: &[Target],
    outcomes: Vec<HostOutcome>,
) -> Result<Vec<CommandResult>, ReleaseError> {
    let mut ok = Vec::new();
    let mut failed: Vec<CommandError> = Vec::new();
    for outcome in outcomes {
        match outcome {
            HostOutcome::Done(Ok(r)) => ok.push(r),
            HostOutcome::Done(Err(e)) => failed.push(e),
            HostOutcome::Skipped => {}
        }
    }
    if failed.is_empty() && ok.len() == targets.len() {
        return Ok(ok);
    }
    let interrupted = failed.iter().any(CommandError::is_interrupt);
    let mut message = format!("{} of {} hosts failed:", failed.len().max(1), targets.len());
    for f in &failed {
        let _ = write!(message, "\n- {}", f.to_string().replace('\n', "\n  "));
    }
    Err(ReleaseError {
        message,
        interrupted,
        stranded: Vec::new(),
    })
}

/// Whether `name` can be a release directory: no path separators, no leading dot or dash.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A release name that sorts by time: `20261127T013300Z`, with `-2`, `-3` … when the
/// second is taken on any host.
pub(crate) fn choose_name(
    effects: &Effects,
    targets: &[Target],
    now: &str,
) -> Result<String, ReleaseError> {
    let probe =
        r#"root=$1; shift; for n in "$@"; do [ -e "$root/releases/$n" ] && echo "$n"; done; true"#;
    let candidates: Vec<String> = std::iter::once(now.to_owned())
        .chain((2..=20).map(|i| format!("{now}-{i}")))
        .collect();
    let probe_spec = |t: &Target| {
        let r = root(t);
        let mut args: Vec<&str> = vec![r.as_str()];
        args.extend(candidates.iter().map(String::as_str));
        let mut s = script("release: probe free release names".into(), probe, &args);
        s.quiet = true;
        s
    };
    let taken: Vec<String> = on_all(effects, targets, probe_spec)?
        .iter()
        .flat_map(|r| r.stdout.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    candidates
        .into_iter()
        .find(|c| !taken.contains(c))
        .ok_or_else(|| {
            ReleaseError::new(
                "20 releases were created within one second: refusing to make another",
            )
        })
}

/// Creates a new release on every target; on any failure, removes it everywhere and
/// leaves `current` untouched.
pub(crate) fn prepare(
    effects: &Effects,
    targets: &[Target],
    name: &str,
    source: &Source,
    settings: &Settings,
    meta: &Metadata,
) -> Result<Metadata, ReleaseError> {
    let result = prepare_inner(effects, targets, name, source, settings, meta);
    if result.is_err() && !effects.dry_run() {
        // Best effort: a half-created release must never become a rollback target.
        let _ = on_all(effects, targets, |t| {
            script(
                format!("release: remove the unfinished release {name}"),
                ABANDON,
                &[&root(t), name],
            )
        });
    }
    result
}

fn prepare_inner(
    effects: &Effects,
    targets: &[Target],
    name: &str,
    source: &Source,
    settings: &Settings,
    meta: &Metadata,
) -> Result<Metadata, ReleaseError> {
    let (commit, commit_time) = match source {
        Source::Git {
            repository,
            git_ref,
        } => {
            let results = on_all(effects, targets, |t| {
                script(
                    format!("release: fetch {git_ref} from {repository} into releases/{name}"),
                    GIT_FETCH,
                    &[&root(t), name, repository, git_ref],
                )
            })?;
            let lines: Vec<(String, Option<i64>)> = results
                .iter()
                .map(|r| {
                    let mut w = r.stdout.split_whitespace();
                    (
                        w.next().unwrap_or("").to_owned(),
                        w.next().and_then(|t| t.parse().ok()),
                    )
                })
                .collect();
            let commit_time = lines.first().and_then(|(_, t)| *t);
            let commits: Vec<String> = lines.into_iter().map(|(c, _)| c).collect();
            if let Some(first) = commits.first()
                && commits.iter().any(|c| c != first)
            {
                return Err(ReleaseError::new(format!(
                    "hosts resolved `{git_ref}` to different commits ({}): is the repository the same everywhere?",
                    commits.join(", ")
                )));
            }
            (commits.into_iter().next().unwrap_or_default(), commit_time)
        }
        Source::Artifact { path } => {
            return prepare_artifact(effects, targets, name, path, settings, meta);
        }
    };
    let meta = finished_meta(meta, name, &commit, commit_time);
    let meta_json = serde_json::to_string(&meta).unwrap_or_default();
    if let EnvFile::Rendered { text, shadow } = &settings.env_file {
        on_all(effects, targets, |t| {
            write_env_spec(t, name, text, shadow.as_deref())
        })?;
    }
    let mut fan = FanOut::new();
    fan.fail_fast = false;
    let outcomes = effects.run_many_with(
        targets,
        &|t: &Target| finish_spec(t, name, settings, &meta_json, &commit),
        &fan,
    );
    let results: Vec<Result<CommandResult, CommandError>> = outcomes
        .iter()
        .filter_map(|o| match o {
            HostOutcome::Done(r) => Some(r.clone()),
            HostOutcome::Skipped => None,
        })
        .collect();
    if let Some(refused) = refused_for_env(targets, &results, &settings.env_file) {
        return Err(refused);
    }
    collect(targets, outcomes)?;
    Ok(meta)
}

/// [`prepare_inner`] of an artifact (a directory or a `.tar.gz`).
fn prepare_artifact(
    effects: &Effects,
    targets: &[Target],
    name: &str,
    path: &std::path::Path,
    settings: &Settings,
    meta: &Metadata,
) -> Result<Metadata, ReleaseError> {
    // Prepared once (a directory packed into one file on the runner, while the
    // hosts make their release directories) and sent to every host at once; each
    // host goes from one step to the next on its own, the slowest holds up no other.
    let start = |t: &Target| {
        script(
            format!("release: create releases/{name}"),
            ARTIFACT_START,
            &[&root(t), name],
        )
    };
    // The release is finished on each host right after ITS upload (the metadata
    // of an artifact is known before any host is touched).
    let meta = finished_meta(meta, name, "artifact", None);
    let meta_json = serde_json::to_string(&meta).unwrap_or_default();
    let rendered = match &settings.env_file {
        EnvFile::Rendered { text, shadow } => Some((text.as_str(), shadow.as_deref())),
        EnvFile::AsIs | EnvFile::Required { .. } => None,
    };
    let write_env = |t: &Target| {
        let (text, shadow) = rendered.unwrap_or_default();
        write_env_spec(t, name, text, shadow)
    };
    let finish = |t: &Target| finish_spec(t, name, settings, &meta_json, "artifact");
    let mut then: Vec<&dyn Fn(&Target) -> CommandSpec> = Vec::new();
    let is_tarball = path.extension().is_some_and(|e| e == "gz" || e == "tgz");
    // The tarball itself travels; it is unpacked into the release on the host.
    let tarball = |t: &Target| format!("{}/.runbook/artifact-{name}.tar.gz", root(t));
    let unpack = |t: &Target| {
        script(
            format!("release: unpack the artifact into releases/{name}"),
            ARTIFACT_UNPACK,
            &[&root(t), name, &tarball(t)],
        )
    };
    if is_tarball {
        then.push(&unpack);
    }
    if rendered.is_some() {
        then.push(&write_env);
    }
    then.push(&finish);
    let directory = |t: &Target| format!("{}/releases/{name}", root(t));
    let remote: &dyn Fn(&Target) -> String = if is_tarball { &tarball } else { &directory };
    let results = effects.upload_each_between(targets, Some(&start), path, remote, &then);
    if let Some(refused) = refused_for_env(targets, &results, &settings.env_file) {
        return Err(refused);
    }
    collect(
        targets,
        results.into_iter().map(HostOutcome::Done).collect(),
    )?;
    Ok(meta)
}

/// `meta` for the release `name` made from `commit`.
fn finished_meta(meta: &Metadata, name: &str, commit: &str, commit_time: Option<i64>) -> Metadata {
    let mut meta = meta.clone();
    name.clone_into(&mut meta.name);
    commit.clone_into(&mut meta.commit);
    meta.commit_time = commit_time;
    meta
}

/// The last step of a release on `t`: [`FINISH`], which also refuses a first release
/// without the app's settings when `settings` require them.
fn finish_spec(
    t: &Target,
    name: &str,
    settings: &Settings,
    meta_json: &str,
    commit: &str,
) -> CommandSpec {
    let required = match settings.env_file {
        EnvFile::Required { .. } => ENV_FILE,
        EnvFile::AsIs | EnvFile::Rendered { .. } => "",
    };
    script(
        format!("release: link shared paths, dependencies, metadata of {name}"),
        FINISH,
        &[
            &root(t),
            name,
            &settings.shared_dirs.join("\n"),
            &settings.shared_files.join("\n"),
            &settings.writable_dirs.join("\n"),
            &settings.composer,
            meta_json,
            commit,
            required,
        ],
    )
}

/// The shared file a rendered template becomes.
pub(crate) const ENV_FILE: &str = ".env";

/// Replaces `shared/.env` atomically with the text on stdin: a private temporary next to
/// it (never readable by others, even for a moment), the old file's group kept, mode
/// 0640, then rename(2) — a reader sees the old file or the new one, never half of one.
const WRITE_ENV: &str = r#"set -eu
root=$1 f=$2 name=$3 shadow=$4
if [ -n "$shadow" ] && [ -f "$root/releases/$name/$shadow" ]; then
  ln -sfn "$root/shared/$f" "$root/releases/$name/$shadow"
fi
dst=$root/shared/$f dir=$(dirname "$root/shared/$f")
mkdir -p "$dir"
tmp=$dir/.runbook-env.$$
trap 'rm -f "$tmp"' EXIT
(umask 077 && cat > "$tmp")
if [ -e "$dst" ]; then chgrp "$(stat -c %g "$dst")" "$tmp" 2>/dev/null || true; fi
chmod 0640 "$tmp"
mv -f "$tmp" "$dst"
"#;

/// Writes a rendered `.env` template into `shared/.env` on `t` (content over stdin,
/// never in argv). The caller has registered every value in it as a secret.
fn write_env_spec(t: &Target, name: &str, text: &str, shadow: Option<&str>) -> CommandSpec {
    let mut spec = script(
        format!("release: write shared/{ENV_FILE} from the template (mode 0640)"),
        WRITE_ENV,
        &[&root(t), ENV_FILE, name, shadow.unwrap_or("")],
    );
    spec.stdin = Some(text.as_bytes().to_vec());
    spec
}

/// The refusal of a first release whose hosts have no `shared/.env` with content (nor
/// a release that brings one), saying what to put where, when [`FINISH`] refused so on
/// any host.
fn refused_for_env(
    targets: &[Target],
    results: &[Result<CommandResult, CommandError>],
    env_file: &EnvFile,
) -> Option<ReleaseError> {
    let EnvFile::Required { env } = env_file else {
        return None;
    };
    let empty: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Err(CommandError::Failed {
                host,
                code: 3,
                stderr_tail,
                ..
            }) if stderr_tail.iter().any(|l| l.contains(ENV_MISSING)) => Some(host),
            _ => None,
        })
        .filter_map(|host| targets.iter().find(|t| t.name() == host))
        .map(|t| format!("{}: {}/shared/{ENV_FILE}", t.name(), root(t)))
        .collect();
    if empty.is_empty() {
        return None;
    }
    Some(ReleaseError::new(format!(
        "the first deploy needs the app's settings, but shared/{ENV_FILE} is missing or empty ({}): \
         Laravel would fail at the migrations without them. Either put the app's .env there on \
         each host (APP_KEY, DB_*; mode 0640, owned by the deploy user), or name a template in \
         runbook.toml — `env_template = \".env.production\"` under [env.{env}] — whose ${{NAME}} \
         references runbook fills in from the environment it runs in. Nothing was switched; \
         the unfinished release is removed",
        empty.join(", ")
    )))
}

#[cfg(test)]
mod env_file_tests {
    use super::{ENV_MISSING, FINISH, WRITE_ENV};
    use std::os::unix::fs::PermissionsExt;

    fn sh(body: &str, args: &[&str], stdin: &str) -> i32 {
        crate::testing::sh(body, args, stdin).0
    }

    #[test]
    fn the_env_file_is_replaced_whole_with_mode_0640_and_no_temporary_left() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        std::fs::create_dir_all(dir.path().join("releases/r1")).unwrap();
        std::fs::write(dir.path().join("releases/r1/.env.production"), "A=${X}\n").unwrap();
        assert_eq!(
            sh(WRITE_ENV, &[root, ".env", "r1", ".env.production"], "A=1\n"),
            0
        );
        // The template in the release is what Laravel reads with APP_ENV=production: it
        // now leads to the rendered file.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("releases/r1/.env.production")).unwrap(),
            "A=1\n"
        );
        std::fs::set_permissions(
            dir.path().join("shared/.env"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        assert_eq!(
            sh(WRITE_ENV, &[root, ".env", "r1", ""], "A=2\nB='x y'\n"),
            0
        );
        let env = dir.path().join("shared/.env");
        assert_eq!(std::fs::read_to_string(&env).unwrap(), "A=2\nB='x y'\n");
        let mode = std::fs::metadata(&env).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<String> = std::fs::read_dir(dir.path().join("shared"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [".env"], "a temporary was left behind");
    }

    #[test]
    fn an_empty_env_file_stops_only_a_hosts_first_release() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        std::fs::create_dir_all(dir.path().join("shared")).unwrap();
        std::fs::create_dir_all(dir.path().join(".runbook/releases")).unwrap();
        std::fs::create_dir_all(dir.path().join("releases/r1")).unwrap();
        let finish = || {
            crate::testing::sh(
                FINISH,
                &[
                    root, "r1", "storage", ".env", "storage", "", "{}", "c", ".env",
                ],
                "",
            )
        };
        let refused = |what: &str| {
            let (code, _, err) = finish();
            assert_eq!(code, 3, "{what}: {err}");
            assert!(err.contains(ENV_MISSING), "{what}: {err}");
            // Refused before anything changed: nothing linked, no metadata.
            assert!(!dir.path().join("releases/r1/storage").exists(), "{what}");
            assert!(
                !dir.path().join(".runbook/releases/r1.json").exists(),
                "{what}"
            );
        };
        refused("missing");
        std::fs::write(dir.path().join("shared/.env"), "").unwrap();
        refused("empty");
        // The release brings its own .env: FINISH copies it into shared/.
        std::fs::remove_file(dir.path().join("shared/.env")).unwrap();
        std::fs::write(dir.path().join("releases/r1/.env"), "A=1\n").unwrap();
        let (code, _, err) = finish();
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("shared/.env")).unwrap(),
            "A=1\n"
        );
        // Not the first release: the live app runs with what it has.
        std::fs::create_dir_all(dir.path().join("releases/r2")).unwrap();
        std::fs::write(dir.path().join("shared/.env"), "").unwrap();
        std::os::unix::fs::symlink("releases/r1", dir.path().join("current")).unwrap();
        let (code, _, err) = crate::testing::sh(
            FINISH,
            &[
                root, "r2", "storage", ".env", "storage", "", "{}", "c", ".env",
            ],
            "",
        );
        assert_eq!(code, 0, "{err}");
    }
}

/// Points `current` at `name` on every target, all or nothing: when any host fails to
/// switch, every host that did is switched back before the error, which says what each
/// host serves now. Returns the release each host was on.
pub(crate) fn activate(
    effects: &Effects,
    targets: &[Target],
    name: &str,
) -> Result<BTreeMap<String, String>, ReleaseError> {
    let results = switch_all(effects, targets, name, |t| {
        script(
            format!("release: switch current to {name}"),
            ACTIVATE,
            &[&root(t), name],
        )
    })?;
    Ok(results
        .into_iter()
        .map(|r| (r.host, r.stdout.trim().to_owned()))
        .collect())
}

/// The release a switch script reports the host was on: ACTIVATE prints it alone,
/// ROLLBACK prints `from to`.
fn was_on(r: &CommandResult) -> String {
    r.stdout
        .trim_end()
        .split(' ')
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Switches every host in `moved` back to where it was; per host its name, that release
/// and whether it went back; and where each host was.
fn switch_back(
    effects: &Effects,
    moved: &[(&Target, CommandResult)],
) -> (Vec<SwitchedBack>, BTreeMap<String, String>) {
    let mut back: Vec<SwitchedBack> = Vec::new();
    let mut fan = FanOut::new();
    fan.fail_fast = false;
    fan.shielded = true;
    let movers: Vec<Target> = moved.iter().map(|(t, _)| (*t).clone()).collect();
    let previous: BTreeMap<String, String> = moved
        .iter()
        .map(|(t, r)| (t.name().to_owned(), was_on(r)))
        .collect();
    let outcomes = effects.run_many_with(
        &movers,
        &|t: &Target| {
            let prev = previous.get(t.name()).cloned().unwrap_or_default();
            let mut spec = script(
                format!("release: switch back to {}", display(&prev)),
                SWITCH_BACK,
                &[&root(t), &prev],
            );
            spec.shielded = true;
            spec
        },
        &fan,
    );
    for (t, outcome) in movers.iter().zip(outcomes) {
        let prev = previous.get(t.name()).cloned().unwrap_or_default();
        let result = match outcome {
            HostOutcome::Done(Ok(_)) => Ok(()),
            HostOutcome::Done(Err(e)) => Err(NotBack::Failed(e)),
            HostOutcome::Skipped => Err(NotBack::NotAttempted),
        };
        back.push((t.name().to_owned(), prev, result));
    }
    (back, previous)
}

/// A host that had switched: its name, the release it was on, whether it went back.
type SwitchedBack = (String, String, Result<(), NotBack>);

/// Runs a switch on every target; if any host fails, switches back (shielded from
/// signals, like a lock release) every host that moved, then reports each host's state.
fn switch_all(
    effects: &Effects,
    targets: &[Target],
    goal: &str,
    build: impl Fn(&Target) -> CommandSpec,
) -> Result<Vec<CommandResult>, ReleaseError> {
    // A switch is one rename per host: once it starts it runs to its end on every host
    // (a signal then takes effect at the next step, whose failure path undoes it); a
    // signal that arrives before it starts moves no host.
    let mut fan = FanOut::new();
    fan.fail_fast = false;
    let outcomes = effects.run_many_with(
        targets,
        &|t: &Target| {
            let mut spec = build(t);
            spec.shielded = true;
            spec
        },
        &fan,
    );
    let mut moved = Vec::new();
    let mut failed = Vec::new();
    for (t, outcome) in targets.iter().zip(outcomes) {
        match outcome {
            HostOutcome::Done(Ok(r)) => moved.push((t, r)),
            HostOutcome::Done(Err(e)) => failed.push((t.name().to_owned(), Some(e))),
            HostOutcome::Skipped => failed.push((t.name().to_owned(), None)),
        }
    }
    if failed.is_empty() {
        return Ok(moved.into_iter().map(|(_, r)| r).collect());
    }
    let interrupted = failed
        .iter()
        .any(|(_, e)| e.as_ref().is_some_and(CommandError::is_interrupt));
    // Back, host by host where they moved (each to where it was).
    let (back, previous) = switch_back(effects, &moved);
    let serving = serving(effects, targets);
    let mut message = format!(
        "switching to {goal} failed on {} of {} hosts; {}:",
        failed.len(),
        targets.len(),
        if back.iter().all(|(_, _, r)| r.is_ok()) {
            "every host that had switched was switched back"
        } else {
            "NOT every host could be switched back"
        }
    );
    for (host, e) in &failed {
        let why = e
            .as_ref()
            .map_or_else(|| "not attempted".to_owned(), ToString::to_string);
        let _ = write!(message, "\n- {host}: {}", why.replace('\n', "\n  "));
    }
    message.push_str("\nnow serving:");
    let mut stranded = Vec::new();
    for t in targets {
        let host = t.name();
        let now = serving
            .get(host)
            .map_or("unknown (unreachable)", String::as_str);
        let note = match back.iter().find(|(h, _, _)| h == host) {
            Some((_, prev, Ok(()))) => format!("switched back to {}", display(prev)),
            Some((_, prev, Err(e))) => {
                stranded.push((host.to_owned(), prev.clone()));
                format!(
                    "could NOT be switched back to {} ({e}): run `runbook run rollback -e ENV to={}` once it is reachable",
                    display(prev),
                    display(prev)
                )
            }
            None if now == goal => {
                // Its switch reported a failure, yet it serves the new release: a later
                // undo moves it to where the other hosts were, when they agree.
                let mut was = previous.values();
                if let Some(first) = was.next().filter(|f| !f.is_empty())
                    && was.all(|p| p == first)
                {
                    stranded.push((host.to_owned(), first.clone()));
                }
                format!(
                    "its switch failed, yet it serves {goal}: run `runbook run rollback -e ENV` once it is reachable"
                )
            }
            None => "unchanged".to_owned(),
        };
        let _ = write!(message, "\n  {host}: {} ({note})", display(now));
    }
    Err(ReleaseError {
        message,
        interrupted,
        stranded,
    })
}

fn display(release: &str) -> &str {
    if release.is_empty() {
        "no release"
    } else {
        release
    }
}

/// What `current` points at on each target that answers (a quiet, shielded probe).
fn serving(effects: &Effects, targets: &[Target]) -> BTreeMap<String, String> {
    let mut fan = FanOut::new();
    fan.fail_fast = false;
    fan.shielded = true;
    let outcomes = effects.run_many_with(
        targets,
        &|t: &Target| CommandSpec {
            shielded: true,
            ..probe("release: what is live".into(), LIVE, &[&root(t)])
        },
        &fan,
    );
    outcomes
        .into_iter()
        .filter_map(|o| match o {
            HostOutcome::Done(Ok(r)) => Some((r.host.clone(), r.stdout.trim().to_owned())),
            _ => None,
        })
        .collect()
}

/// Points `next` at `name` on every target (`None`: removes `next`).
pub(crate) fn stage(
    effects: &Effects,
    targets: &[Target],
    name: Option<&str>,
) -> Result<(), ReleaseError> {
    on_all(effects, targets, |t| {
        let label = match name {
            Some(n) => format!("release: stage {n} as next"),
            None => "release: remove next".to_owned(),
        };
        script(label, STAGE, &[&root(t), name.unwrap_or("")])
    })?;
    Ok(())
}

/// Marks release `name` bad on every target, so no rollback picks it.
pub(crate) fn mark_bad(
    effects: &Effects,
    targets: &[Target],
    name: &str,
) -> Result<(), ReleaseError> {
    on_all(effects, targets, |t| {
        script(
            format!("release: mark {name} bad"),
            MARK_BAD,
            &[&root(t), name],
        )
    })?;
    Ok(())
}

/// Switches every target to ONE release — `target`, or the newest release older than the
/// newest live one that is complete and good on every host — checked on every host
/// before any host changes, then all or nothing; the release each host leaves is marked
/// bad. Returns `host -> (from, to)`.
pub(crate) fn rollback(
    effects: &Effects,
    targets: &[Target],
    target: Option<&str>,
) -> Result<BTreeMap<String, (String, String)>, ReleaseError> {
    let chosen = if effects.dry_run() {
        // Reads are synthetic in a dry run: the decision is the hosts' own, as written.
        target.map(str::to_owned)
    } else {
        Some(rollback_target(effects, targets, target)?)
    };
    let results = switch_all(
        effects,
        targets,
        chosen.as_deref().unwrap_or("the previous good release"),
        |t| {
            script(
                format!(
                    "release: roll back to {}",
                    chosen.as_deref().unwrap_or("the previous good release")
                ),
                ROLLBACK,
                &[&root(t), chosen.as_deref().unwrap_or("")],
            )
        },
    )?;
    Ok(results
        .into_iter()
        .map(|r| {
            let mut parts = r.stdout.trim_end().split(' ');
            let from = parts.next().unwrap_or("").to_owned();
            let to = parts.next().unwrap_or("").to_owned();
            (r.host, (from, to))
        })
        .collect())
}

/// The one release every target can be rolled back to (see [`rollback`]), read from
/// every host's release list; refuses, naming the hosts that lack it.
pub(crate) fn rollback_target(
    effects: &Effects,
    targets: &[Target],
    target: Option<&str>,
) -> Result<String, ReleaseError> {
    let mut lists = Vec::new();
    let mut unreachable = Vec::new();
    for (t, listed) in targets.iter().zip(self::lists(effects, targets)) {
        match listed {
            Ok(l) => lists.push((t.name().to_owned(), l)),
            Err(_) if effects.interrupt().pending() => {
                return Err(ReleaseError {
                    message: "interrupted".to_owned(),
                    interrupted: true,
                    stranded: Vec::new(),
                });
            }
            Err(e) => unreachable.push(format!("{}: {e}", t.name())),
        }
    }
    if !unreachable.is_empty() {
        return Err(ReleaseError::new(format!(
            "cannot decide a rollback target: not every host answered (nothing was changed):\n- {}",
            unreachable.join("\n- ")
        )));
    }
    choose_target(&lists, target).map_err(|e| ReleaseError::new(e.to_string()))
}

/// The decision of [`rollback_target`] on the hosts' release lists.
pub(crate) fn choose_target(
    lists: &[(String, Vec<Listed>)],
    target: Option<&str>,
) -> Result<String, NoRollbackTarget> {
    let usable = |l: &[Listed], name: &str| {
        l.iter()
            .any(|r| r.name == name && r.state == "complete" && !r.bad)
    };
    let complete =
        |l: &[Listed], name: &str| l.iter().any(|r| r.name == name && r.state == "complete");
    if let Some(name) = target {
        let missing: Vec<String> = lists
            .iter()
            .filter(|(_, l)| !complete(l, name))
            .map(|(h, _)| h.clone())
            .collect();
        if missing.is_empty() {
            return Ok(name.to_owned());
        }
        return Err(NoRollbackTarget::Incomplete {
            name: name.to_owned(),
            missing,
        });
    }
    // Releases are ordered by when they were made (their metadata), then by name: an
    // adopted release named `3` is older than runbook's `20261201T…`.
    let key = |name: &str| -> (String, String) {
        let at = lists
            .iter()
            .flat_map(|(_, l)| l.iter())
            .find(|r| r.name == name)
            .and_then(|r| r.meta.as_ref())
            .map(|m| m.created_at.clone())
            .unwrap_or_default();
        (at, name.to_owned())
    };
    let newest_live = lists
        .iter()
        .filter_map(|(_, l)| l.iter().find(|r| r.live).map(|r| r.name.clone()))
        .max_by_key(|n| key(n))
        .ok_or(NoRollbackTarget::NothingLive)?;
    let live_key = key(&newest_live);
    let mut names: Vec<&str> = lists
        .iter()
        .flat_map(|(_, l)| l.iter().map(|r| r.name.as_str()))
        .filter(|n| key(n) < live_key)
        .collect();
    names.sort_by_key(|n| key(n));
    names.dedup();
    if let Some(name) = names
        .iter()
        .rev()
        .find(|n| lists.iter().all(|(_, l)| usable(l, n)))
    {
        return Ok((*name).to_owned());
    }
    let good = lists
        .iter()
        .map(|(host, l)| {
            let names = l
                .iter()
                .filter(|r| r.state == "complete" && !r.bad && key(&r.name) < live_key)
                .map(|r| r.name.clone())
                .collect();
            (host.clone(), names)
        })
        .collect();
    Err(NoRollbackTarget::NoneInCommon {
        live: newest_live,
        good,
    })
}

/// [`check_layout`], also saying — as a sentence naming each host — when the hosts do
/// not serve one release before the change (`current` on different releases, or on one
/// that is gone). The change may go on: it brings every host to one release; the
/// sentence says what its failure would leave.
pub(crate) fn check_fleet(
    effects: &Effects,
    targets: &[Target],
) -> Result<Option<String>, ReleaseError> {
    let results = on_all(effects, targets, |t| {
        probe("release: check the layout".into(), LAYOUT, &[&root(t)])
    })?;
    let mut problems = Vec::new();
    let mut live: Vec<(String, String)> = Vec::new();
    let mut dangling = Vec::new();
    for r in &results {
        let mut foreign = Vec::new();
        for line in r.stdout.lines() {
            if let Some(name) = line.strip_prefix("live ") {
                live.push((r.host.clone(), name.to_owned()));
            } else if line == "dangling" {
                dangling.push(r.host.clone());
            } else if line == "current-dir" {
                problems.push(format!(
                    "{}: `current` is a directory, not a link runbook can switch (another tool deployed here)",
                    r.host
                ));
            } else if let Some(name) = line.strip_prefix("foreign ") {
                foreign.push(name.to_owned());
            }
        }
        if !foreign.is_empty() {
            problems.push(format!(
                "{}: releases {} were not made by runbook (no metadata)",
                r.host,
                foreign.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        return Ok(drift(&live, &dangling, results.len()));
    }
    Err(ReleaseError::new(format!(
        "this fleet holds a layout another tool made; nothing was changed:\n- {}\nAdopt it first: `runbook adopt -e ENV` records those releases as rollback targets (cleanup keeps them) and turns a `current` directory into a release behind a link, while the site keeps serving.",
        problems.join("\n- ")
    )))
}

/// The sentence for a fleet that does not serve one release (see [`check_fleet`]).
fn drift(live: &[(String, String)], dangling: &[String], hosts: usize) -> Option<String> {
    let names: std::collections::BTreeSet<&str> = live.iter().map(|(_, r)| r.as_str()).collect();
    // Hosts without a release yet (a host being added) are not drift: they get this one.
    if dangling.is_empty() && names.len() <= 1 {
        return None;
    }
    let each: Vec<String> = live
        .iter()
        .map(|(h, r)| {
            if dangling.contains(h) {
                format!("{h} {r} (missing: it serves nothing)")
            } else {
                format!("{h} {r}")
            }
        })
        .collect();
    let without = hosts - live.len();
    Some(format!(
        "the hosts do not serve one release before this change: {}{}. It brings every host to one release; if it fails, each host goes back to what it serves now",
        each.join(", "),
        if without > 0 {
            format!(" ({without} without a release yet)")
        } else {
            String::new()
        }
    ))
}

/// Adopts another tool's layout on every target (see `ADOPT`); `by` is who adopts.
/// Returns `host -> what was done` (lines like `adopted 3`, `current adopted-…`).
pub(crate) fn adopt(
    effects: &Effects,
    targets: &[Target],
    by: &str,
) -> Result<BTreeMap<String, Vec<String>>, ReleaseError> {
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let by = serde_json::to_string(by).unwrap_or_else(|_| "\"\"".to_owned());
    let results = on_all(effects, targets, |t| {
        script(
            "release: adopt the existing layout".into(),
            ADOPT,
            &[&root(t), &now, &by],
        )
    })?;
    Ok(results
        .into_iter()
        .map(|r| (r.host, r.stdout.lines().map(str::to_owned).collect()))
        .collect())
}

/// One release as seen on one host.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub name: String,
    pub state: String,
    pub bad: bool,
    pub live: bool,
    pub meta: Option<Metadata>,
}

pub(crate) fn list(effects: &Effects, target: &Target) -> Result<Vec<Listed>, ReleaseError> {
    let r = effects
        .run(target, &list_spec(target))
        .map_err(|e| ReleaseError {
            interrupted: e.is_interrupt(),
            message: e.to_string(),
            stranded: Vec::new(),
        })?;
    Ok(parse_list(&r.stdout))
}

/// Every target's releases at once (one round trip per host, all hosts in parallel); a
/// host that did not answer gives why.
pub(crate) fn lists(effects: &Effects, targets: &[Target]) -> Vec<Result<Vec<Listed>, HostError>> {
    let fan = FanOut {
        fail_fast: false,
        ..FanOut::new()
    };
    effects
        .run_many_with(targets, &list_spec, &fan)
        .into_iter()
        .map(|o| o.result().map(|r| parse_list(&r.stdout)))
        .collect()
}

/// The release list script (`sh -c TEXT sh ROOT`), for a caller that reads more in one trip.
pub(crate) fn list_script() -> &'static str {
    LIST
}

fn list_spec(target: &Target) -> CommandSpec {
    probe("release: list".into(), LIST, &[&root(target)])
}

pub(crate) fn parse_list(stdout: &str) -> Vec<Listed> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut f = line.splitn(5, '\t');
            Some(Listed {
                name: f.next()?.to_owned(),
                state: f.next()?.to_owned(),
                bad: f.next()? == "yes",
                live: f.next()? == "yes",
                meta: f.next().and_then(|m| serde_json::from_str(m).ok()),
            })
        })
        .collect()
}

/// What a deploy of `git_ref` would change on one host, read for real (a dry run's plan).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct HostPlan {
    pub host: String,
    pub live: String,
    pub old_commit: Option<String>,
    pub new_commit: Option<String>,
    /// `abc1234 subject`, newest first (at most 50).
    pub commits: Vec<String>,
    pub commit_count: usize,
    pub composer_lock_changed: bool,
    /// Migration files the new commit adds.
    pub new_migrations: Vec<String>,
    /// Keys of the live `.env` (names only, never values).
    pub env_keys: Vec<String>,
    pub notes: Vec<String>,
}

/// Reads the commit range from the host's git mirror (fetched first: a cache, not what
/// is served), whether composer.lock changed, the migrations added, and the `.env` keys.
const PLAN: &str = r#"root=$1 repo=$2 ref=$3
meta=$root/.runbook
cur=$(readlink "$root/current" 2>/dev/null || true); cur=${cur##*/}
echo "live	$cur"
if [ -f "$root/shared/.env" ]; then
  sed -n 's/^[[:space:]]*\(export[[:space:]][[:space:]]*\)\{0,1\}\([A-Za-z_][A-Za-z0-9_]*\)=.*/\2/p' "$root/shared/.env" | sed 's/^/envkey	/'
fi
old=
[ -z "$cur" ] || old=$(sed -n 's/.*"commit":"\([0-9a-f]\{7,\}\)".*/\1/p' "$meta/releases/$cur.json" 2>/dev/null)
if [ ! -d "$meta/repo.git" ]; then echo "note	no git mirror on this host yet: everything is new"; exit 0; fi
$SCRATCH
new=$(git -C "$g" rev-parse --verify --quiet "$ref^{commit}") || { echo "note	ref '$ref' does not exist in $repo"; exit 0; }
echo "new	$new"
[ -n "$old" ] || { echo "note	the live release has no commit (an artifact or an adopted release)"; exit 0; }
echo "old	$old"
git -C "$g" cat-file -e "$old^{commit}" 2>/dev/null || { echo "note	the live commit $old is not in the repository"; exit 0; }
echo "count	$(git -C "$g" rev-list --count "$old..$new")"
git -C "$g" log --no-merges --format='commit	%h %s' "$old..$new" | head -n 50
git -C "$g" diff --quiet "$old" "$new" -- composer.lock || echo "composer	changed"
git -C "$g" diff --name-only --diff-filter=A "$old" "$new" -- database/migrations | sed 's/^/migration	/'
true
"#;

/// A scratch repository in a temporary directory that borrows the mirror's objects
/// (`alternates`) and fetches what is new into itself: the mirror — and everything under
/// the deploy path — stays untouched. `$g` is where to read; removed at exit.
const SCRATCH: &str = r#"g=$(mktemp -d "${TMPDIR:-/tmp}/runbook-plan.XXXXXX") || exit 5
trap 'rm -rf "$g"' EXIT
git init --quiet --bare "$g" && echo "$meta/repo.git/objects" > "$g/objects/info/alternates"
if ! git -C "$g" fetch --quiet --no-write-fetch-head --tags "$repo" '+refs/heads/*:refs/heads/*' 2>/dev/null; then
  echo "note	could not fetch $repo: what the host fetched last is shown"
  # Read the mirror itself from here on — and never remove it at exit.
  rm -rf "$g"; trap - EXIT; g=$meta/repo.git
fi"#;

/// The SQL of the pending migrations of commit `$2`, without preparing a release: the
/// code checked out into a temporary directory (removed after) beside the live release's
/// vendor/ and the shared .env, then `php artisan migrate --pretend`.
const PRETEND: &str = r#"root=$1 commit=$2 php=$3 repo=$4
meta=$root/.runbook
$SCRATCH
tmp=$(mktemp -d "${TMPDIR:-/tmp}/runbook-plan.XXXXXX") || exit 5
if [ "$g" = "$meta/repo.git" ]; then trap 'rm -rf "$tmp"' EXIT; else trap 'rm -rf "$tmp" "$g"' EXIT; fi
git -C "$g" archive --format=tar "$commit" | tar -x -C "$tmp" || exit 5
[ -e "$tmp/vendor" ] || [ ! -e "$root/current/vendor" ] || ln -s "$root/current/vendor" "$tmp/vendor"
[ ! -e "$root/shared/.env" ] || { rm -f "$tmp/.env"; ln -s "$root/shared/.env" "$tmp/.env"; }
mkdir -p "$tmp/storage/framework/cache" "$tmp/storage/framework/sessions" "$tmp/storage/framework/views" "$tmp/storage/logs" "$tmp/bootstrap/cache"
cd "$tmp" && "$php" artisan migrate --pretend --force --no-interaction 2>&1
"#;

/// Every target's plan for a deploy of `git_ref` from `repo` (read-only; runs for real in
/// a dry run).
pub(crate) fn plan(
    effects: &Effects,
    targets: &[Target],
    repo: &str,
    git_ref: &str,
) -> Vec<Result<HostPlan, HostError>> {
    let fan = FanOut {
        fail_fast: false,
        ..FanOut::new()
    };
    let build = |t: &Target| {
        let mut spec = probe(
            format!("release: what a deploy of {git_ref} would change"),
            &PLAN.replace("$SCRATCH", SCRATCH),
            &[&root(t), repo, git_ref],
        );
        spec.tolerate = true;
        spec
    };
    targets
        .iter()
        .zip(effects.run_many_with(targets, &build, &fan))
        .map(|(t, o)| {
            o.result().map(|r| {
                let mut p = HostPlan {
                    host: t.name().to_owned(),
                    ..HostPlan::default()
                };
                for line in r.stdout.lines() {
                    let (k, v) = line.split_once('\t').unwrap_or((line, ""));
                    match k {
                        "live" => v.clone_into(&mut p.live),
                        "old" => p.old_commit = Some(v.to_owned()),
                        "new" => p.new_commit = Some(v.to_owned()),
                        "count" => p.commit_count = v.parse().unwrap_or(0),
                        "commit" => p.commits.push(v.to_owned()),
                        "composer" => p.composer_lock_changed = true,
                        "migration" => p.new_migrations.push(v.to_owned()),
                        "envkey" => p.env_keys.push(v.to_owned()),
                        "note" => p.notes.push(v.to_owned()),
                        _ => {}
                    }
                }
                if r.code != 0 {
                    p.notes.push(format!(
                        "the plan script exited {}: {}",
                        r.code,
                        r.stderr.trim()
                    ));
                }
                p
            })
        })
        .collect()
}

/// The SQL `php artisan migrate --pretend` shows for `commit` on `target` (read-only: a
/// temporary checkout, removed after).
pub(crate) fn pretend_sql(
    effects: &Effects,
    target: &Target,
    commit: &str,
    php: &str,
    repo: &str,
) -> Result<String, PretendError> {
    let mut spec = probe(
        format!(
            "release: the SQL of the pending migrations of {}",
            &commit[..commit.len().min(12)]
        ),
        &PRETEND.replace("$SCRATCH", SCRATCH),
        &[&root(target), commit, php, repo],
    );
    spec.tolerate = true;
    let r = effects.run(target, &spec)?;
    if r.code == 0 {
        Ok(r.stdout)
    } else {
        Err(PretendError::Exit {
            code: r.code,
            output: r.stdout,
        })
    }
}

/// Prunes old releases on every target; returns `host -> removed names`.
pub(crate) fn cleanup(
    effects: &Effects,
    targets: &[Target],
    keep: usize,
) -> Result<BTreeMap<String, Vec<String>>, ReleaseError> {
    let keep = keep.max(1).to_string();
    let results = on_all(effects, targets, |t| {
        script(
            format!("release: clean up (keep {keep})"),
            CLEANUP,
            &[&root(t), &keep],
        )
    })?;
    Ok(results
        .into_iter()
        .map(|r| (r.host, r.stdout.lines().map(str::to_owned).collect()))
        .collect())
}

/// Migration files present in release `to` but not in `from` on one host.
pub(crate) fn new_migrations(
    effects: &Effects,
    target: &Target,
    from: &str,
    to: &str,
) -> Result<Vec<String>, ReleaseError> {
    let body = r#"root=$1 from=$2 to=$3
ls -1 "$root/releases/$to/database/migrations" 2>/dev/null | sort > "${TMPDIR:-/tmp}/rb-mig-to.$$" || true
ls -1 "$root/releases/$from/database/migrations" 2>/dev/null | sort > "${TMPDIR:-/tmp}/rb-mig-from.$$" || true
comm -23 "${TMPDIR:-/tmp}/rb-mig-to.$$" "${TMPDIR:-/tmp}/rb-mig-from.$$"
rm -f "${TMPDIR:-/tmp}/rb-mig-to.$$" "${TMPDIR:-/tmp}/rb-mig-from.$$"
"#;
    let spec = probe(
        format!("release: migrations in {to} but not in {from}"),
        body,
        &[&root(target), from, to],
    );
    let r = effects
        .run(target, &spec)
        .map_err(|e| ReleaseError::new(e.to_string()))?;
    Ok(r.stdout.lines().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(body: &str, args: &[&str]) -> (i32, String, String) {
        crate::testing::sh(body, args, "")
    }

    fn make_release(root: &str, name: &str) {
        assert_eq!(sh(ARTIFACT_START, &[root, name]).0, 0);
        let (code, _, err) = sh(
            FINISH,
            &[root, name, "storage", ".env", "storage", "", "{}", "abc"],
        );
        assert_eq!(code, 0, "{err}");
    }

    #[test]
    fn activate_rollback_and_cleanup_keep_current_on_a_complete_release() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        for n in ["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"] {
            make_release(root, n);
        }
        let live = |()| std::fs::read_link(dir.path().join("current")).unwrap();
        assert_eq!(sh(ACTIVATE, &[root, "20260103T000000Z"]).1, "\n");
        assert_eq!(live(()), std::path::Path::new("releases/20260103T000000Z"));
        // Shared paths are links into shared/.
        assert!(
            std::fs::symlink_metadata(dir.path().join("releases/20260103T000000Z/.env"))
                .unwrap()
                .file_type()
                .is_symlink()
        );

        let (code, out, _) = sh(ROLLBACK, &[root, ""]);
        assert_eq!(
            (code, out.as_str()),
            (0, "20260103T000000Z 20260102T000000Z\n")
        );
        assert!(dir.path().join(".runbook/bad/20260103T000000Z").exists());
        // The bad release is skipped by the next rollback.
        let (_, out, _) = sh(ROLLBACK, &[root, ""]);
        assert_eq!(out, "20260102T000000Z 20260101T000000Z\n");
        let (code, _, err) = sh(ROLLBACK, &[root, ""]);
        assert_eq!(code, 3);
        assert!(err.contains("no earlier good release"), "{err}");

        // A release without runbook's metadata (another tool's) is never a target and
        // never cleaned up.
        std::fs::create_dir_all(dir.path().join("releases/20260104T000000Z")).unwrap();
        let (_, removed, _) = sh(CLEANUP, &[root, "1"]);
        let removed: Vec<&str> = removed.lines().collect();
        assert_eq!(removed, ["20260103T000000Z", "20260102T000000Z"]);
        assert!(dir.path().join("releases/20260104T000000Z").is_dir());
        assert_eq!(live(()), std::path::Path::new("releases/20260101T000000Z"));
    }

    fn listed(spec: &str) -> Vec<Listed> {
        // "a b* c! d?": * live, ! bad, ? incomplete
        spec.split_whitespace()
            .map(|w| Listed {
                name: w.trim_end_matches(['*', '!', '?']).to_owned(),
                state: if w.ends_with('?') {
                    "incomplete"
                } else {
                    "complete"
                }
                .to_owned(),
                bad: w.ends_with('!'),
                live: w.ends_with('*'),
                meta: None,
            })
            .collect()
    }

    #[test]
    fn a_rollback_target_is_one_release_every_host_has_good() {
        let fleet = |a: &str, b: &str| {
            vec![
                ("web1".to_owned(), listed(a)),
                ("web2".to_owned(), listed(b)),
            ]
        };
        // (web1's releases, web2's, the target)
        for (web1, web2, expected) in [
            // Same lists: the previous release.
            ("r1 r2 r3*", "r1 r2 r3*", "r2"),
            // web2 never got r2: r1 is the newest both have.
            ("r1 r2 r3*", "r1 r3*", "r1"),
            // r2 is bad on one host: skipped for all.
            ("r1 r2! r3*", "r1 r2 r3*", "r1"),
            // A half-switched fleet: web2 still on r2 — both go to r2 (older than the
            // newest live).
            ("r1 r2 r3*", "r1 r2* r3", "r2"),
        ] {
            let target = choose_target(&fleet(web1, web2), None);
            assert_eq!(target.unwrap(), expected, "web1: {web1}, web2: {web2}");
        }
        // Nothing in common: refused, naming what each host has.
        let err = choose_target(&fleet("r1 r3*", "r2 r3*"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("web1: r1") && err.contains("web2: r2"),
            "{err}"
        );
        assert!(err.contains("nothing was changed"), "{err}");
        // A named target must be complete on every host.
        let err = choose_target(&fleet("r1 r2 r3*", "r1 r2? r3*"), Some("r2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing on web2"), "{err}");
        assert_eq!(
            choose_target(&fleet("r1 r2 r3*", "r1 r2 r3*"), Some("r1")).unwrap(),
            "r1"
        );
        assert!(
            choose_target(&fleet("r1", "r1"), None)
                .unwrap_err()
                .to_string()
                .contains("nothing is live")
        );
    }

    #[test]
    fn a_switch_back_restores_where_the_host_was() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        for n in ["r1", "r2"] {
            make_release(root, n);
        }
        assert_eq!(sh(ACTIVATE, &[root, "r1"]).0, 0);
        assert_eq!(sh(ACTIVATE, &[root, "r2"]).1, "r1\n");
        assert_eq!(sh(SWITCH_BACK, &[root, "r1"]).0, 0);
        assert_eq!(sh(LIVE, &[root]).1, "r1\n");
        // A host that had no release before goes back to having none.
        assert_eq!(sh(SWITCH_BACK, &[root, ""]).0, 0);
        assert!(std::fs::symlink_metadata(dir.path().join("current")).is_err());
        assert_eq!(sh(LIVE, &[root]).1, "\n");
    }

    #[test]
    fn another_tools_layout_is_refused_then_adopted_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let p = dir.path();
        // Deployer-style: releases/1..3, current -> releases/3, no runbook metadata.
        for r in ["1", "2", "3"] {
            std::fs::create_dir_all(p.join(format!("releases/{r}/public"))).unwrap();
        }
        std::os::unix::fs::symlink("releases/3", p.join("current")).unwrap();
        let (_, out, _) = sh(LAYOUT, &[root]);
        assert_eq!(out, "live 3\nforeign 1\nforeign 2\nforeign 3\n");
        let (code, out, err) = sh(ADOPT, &[root, "20260101T000000Z", "\"ann\""]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "adopted 1\nadopted 2\nadopted 3\n");
        assert_eq!(sh(LAYOUT, &[root]).1, "live 3\n");
        // A `current` pointing at a release that is gone says so.
        std::os::unix::fs::symlink("releases/9", p.join("gone")).unwrap();
        std::fs::rename(p.join("gone"), p.join("current")).unwrap();
        assert_eq!(sh(LAYOUT, &[root]).1, "live 9\ndangling\n");
        std::os::unix::fs::symlink("releases/3", p.join("back")).unwrap();
        std::fs::rename(p.join("back"), p.join("current")).unwrap();
        let meta: Metadata =
            serde_json::from_slice(&std::fs::read(p.join(".runbook/releases/3.json")).unwrap())
                .unwrap();
        assert_eq!((meta.name.as_str(), meta.by.as_str()), ("3", "ann"));
        // A runbook release on top; cleanup keeps every adopted one.
        make_release(root, "20260102T000000Z");
        assert_eq!(sh(ACTIVATE, &[root, "20260102T000000Z"]).0, 0);
        assert_eq!(sh(CLEANUP, &[root, "1"]).1, "");
        for r in ["1", "2", "3"] {
            assert!(p.join(format!("releases/{r}")).is_dir());
        }

        // A `current` that is a real directory becomes a release behind a link.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        std::fs::create_dir_all(dir.path().join("current/public")).unwrap();
        std::fs::write(dir.path().join("current/public/index.php"), "v0").unwrap();
        assert_eq!(sh(LAYOUT, &[root]).1, "current-dir\n");
        let (code, out, err) = sh(ADOPT, &[root, "20260101T000000Z", "\"ann\""]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with("current adopted-20260101T000000Z\n"),
            "{out}"
        );
        let link = std::fs::read_link(dir.path().join("current")).unwrap();
        assert_eq!(
            link,
            std::path::Path::new("releases/adopted-20260101T000000Z")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("current/public/index.php")).unwrap(),
            "v0"
        );
        assert!(
            sh(LAYOUT, &[root]).1.starts_with("live adopted-"),
            "nothing foreign is left"
        );
        assert_eq!(sh(LAYOUT, &[root]).1.lines().count(), 1);
    }

    #[test]
    fn rollback_targets_follow_creation_time_not_names() {
        let with_time = |name: &str, at: &str, live: bool| Listed {
            name: name.into(),
            state: "complete".into(),
            bad: false,
            live,
            meta: Some(Metadata {
                created_at: at.into(),
                ..Metadata::default()
            }),
        };
        // An adopted `3` (older) and runbook's `20261201T…` (live): back to `3`, not `2`.
        let l = vec![
            with_time("1", "2025-01-01T00:00:00Z", false),
            with_time("2", "2025-02-01T00:00:00Z", false),
            with_time("3", "2025-03-01T00:00:00Z", false),
            with_time("20261201T000000Z", "2026-12-01T00:00:00Z", true),
        ];
        assert_eq!(choose_target(&[("web1".into(), l)], None).unwrap(), "3");
    }

    #[test]
    fn an_incomplete_release_cannot_be_activated() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        assert_eq!(sh(ARTIFACT_START, &[root, "r1"]).0, 0);
        let (code, _, err) = sh(ACTIVATE, &[root, "r1"]);
        assert_eq!(code, 3);
        assert!(err.contains("incomplete"), "{err}");
        assert!(!dir.path().join("current").exists());
    }

    #[test]
    fn values_with_shell_syntax_stay_values() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a b; $(touch pwned)");
        let root = root.to_str().unwrap();
        make_release(root, "r1");
        assert!(
            std::path::Path::new(root)
                .join("releases/r1/REVISION")
                .exists()
        );
        assert!(!std::path::Path::new("pwned").exists());
    }
}
