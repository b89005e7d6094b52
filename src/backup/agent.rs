//! Backups that stay on the host: the runner places `runbook-agent` (a small second
//! binary of this package that links only the backup code, `serve.rs`) on an SSH host
//! and runs the backup there, over the host's existing connection.
//!
//! Why an agent rather than `tar` on the host: the archive must stay runbook's own format
//! (independent gzip members, a manifest with every sha256, read back before it gets its
//! name; restores that refuse unsafe entries and never write through a link). Rebuilding
//! that in shell would be a second implementation of the one thing a backup must get
//! right; the agent is the same code, so a host's archive is written and checked exactly
//! as a local one. What crosses the link is the request (a few hundred bytes of JSON on
//! stdin) and the answer, plus the agent itself once per host and version.
//!
//! The rules, each checked by `install_from`/`call`:
//! - the agent is found next to the runner's own executable (`runbook-agent`), or at
//!   `RUNBOOK_AGENT`;
//! - it is cached as `~/.cache/runbook/agent/<sha256>` of the deploy user (directory
//!   0700), uploaded under a temporary name whose hash is checked before it is renamed;
//! - its architecture (read from its ELF header) must be the host's (`uname -m`);
//! - it must start (`--version`) before it is used, and its hash is checked on the host
//!   by the same command that runs it, every time: a cached file that was changed is
//!   replaced, never executed;
//! - when any of that fails, the backup streams through the runner as before
//!   (`remote.rs`), with one warning line; `[backup] on_host = "always"` makes it an
//!   error instead, `"never"` skips the agent.
//!
//! It must never splice a value into a shell line (values are positional arguments or
//! JSON on stdin), never put a password in an argv, and never run a file whose hash it
//! has not just checked.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::remote::{run_quiet, sh};
use crate::effects::{CommandError, Effects, Target};
use crate::inventory::TransportKind;
use crate::inventory::model::OnHost;
use crate::transport::CommandSpec;
use crate::transport::transfer::NoName;

/// The agent's file name next to the runner.
pub(crate) const FILE_NAME: &str = "runbook-agent";
/// Where the agent is taken from instead, when set.
pub(crate) const ENV: &str = "RUNBOOK_AGENT";
/// The exit status of the launcher when the file on the host does not match its hash.
const TAMPERED: i32 = 97;

/// Why the agent cannot be used on a host (or on none: it is not beside the runner).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    #[error("cannot tell where runbook runs from: {0}")]
    NoExe(std::io::Error),
    #[error(
        "no {} at {} ({source}); it is built with runbook (`cargo build` builds both) and installed next to it",
        FILE_NAME,
        path.display()
    )]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not an executable for Linux", path.display())]
    NotLinux { path: PathBuf },
    #[error(
        "{} is built for {agent}, the host is {}",
        FILE_NAME,
        if host.is_empty() { "of unknown architecture" } else { host }
    )]
    WrongArch {
        agent: String,
        /// `uname -m` of the host (empty: it did not say).
        host: String,
    },
    /// A step of placing it (or of the backup around it) failed on the host.
    #[error(transparent)]
    Command(Box<CommandError>),
    #[error(transparent)]
    Path(#[from] NoName),
    #[error("{} did not start on the host (`--version` said {said:?})", FILE_NAME)]
    NoStart { said: String },
    #[error("the backup cannot run on `{host}` ([backup] on_host = \"always\"): {why}")]
    Required { host: String, why: Box<AgentError> },
    #[error(transparent)]
    Encode(serde_json::Error),
    #[error(
        "{source}\n  (the agent on the host changed after it was checked; run again to replace it)"
    )]
    Tampered { source: Box<CommandError> },
    #[error(
        "{} on `{host}` answered something that is not its JSON ({source}): {answer:?}",
        FILE_NAME
    )]
    BadAnswer {
        host: String,
        source: serde_json::Error,
        /// The first 200 characters of what it said.
        answer: String,
    },
}

impl From<CommandError> for AgentError {
    fn from(e: CommandError) -> AgentError {
        AgentError::Command(Box::new(e))
    }
}

/// The agent on this machine: where, its hash and what it was built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalAgent {
    pub path: PathBuf,
    pub sha256: String,
    /// `uname -m` spelling, normalised (`x86_64`, `aarch64`, …).
    pub arch: String,
    pub size: u64,
}

/// The agent a backup step will use on one host: this machine's copy, and whether the
/// step may fall back to streaming when it cannot run there.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    local: LocalAgent,
    mode: OnHost,
}

/// The architecture an ELF executable is for, in `uname -m` terms (normalised).
pub(crate) fn elf_arch(head: &[u8]) -> Option<&'static str> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return None;
    }
    let little = head[5] == 1;
    let machine = if little {
        u16::from_le_bytes([head[18], head[19]])
    } else {
        u16::from_be_bytes([head[18], head[19]])
    };
    Some(match (machine, little) {
        (0x3e, _) => "x86_64",
        (0xb7, _) => "aarch64",
        (0x28, _) => "arm",
        (0x03, _) => "x86",
        (0xf3, _) => "riscv64",
        (0x15, true) => "ppc64le",
        (0x15, false) => "ppc64",
        (0x16, _) => "s390x",
        _ => return None,
    })
}

/// `uname -m` in the spelling `elf_arch` uses (`arm64` is `aarch64`, `i686` is `x86`).
pub(crate) fn normalise_arch(uname: &str) -> &str {
    match uname.trim() {
        "arm64" | "aarch64" => "aarch64",
        "amd64" | "x86_64" => "x86_64",
        "i386" | "i486" | "i586" | "i686" => "x86",
        m if m.starts_with("armv") => "arm",
        m => m,
    }
}

/// Finds the agent (next to the running executable, or `RUNBOOK_AGENT`) and reads its
/// hash and architecture.
pub(crate) fn locate() -> Result<LocalAgent, AgentError> {
    let path = match std::env::var_os(ENV) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(AgentError::NoExe)?
            .with_file_name(FILE_NAME),
    };
    describe(&path)
}

/// Hash, size and architecture of the agent at `path`.
pub(crate) fn describe(path: &Path) -> Result<LocalAgent, AgentError> {
    let missing = |source| AgentError::Missing {
        path: path.to_owned(),
        source,
    };
    // A few MiB, read once per backup step: cheap next to the backup.
    let bytes = std::fs::read(path).map_err(missing)?;
    let arch = elf_arch(&bytes).ok_or_else(|| AgentError::NotLinux {
        path: path.to_owned(),
    })?;
    Ok(LocalAgent {
        path: path.to_owned(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        arch: arch.to_owned(),
        size: bytes.len() as u64,
    })
}

/// Reads the host: its architecture, where the agent goes, and whether a good copy is
/// there already (its hash, then its `--version`). Changes nothing.
const PROBE: &str = r#"echo "arch $(uname -m)"
[ -n "${HOME:-}" ] || { echo "the deploy user has no HOME" >&2; exit 1; }
d="$HOME/.cache/runbook/agent"; f="$d/$1"
echo "path $f"
if [ -f "$f" ]; then
  s=$(sha256sum < "$f") || exit 1
  s=${s%% *}
  echo "sha $s"
  if [ "$s" = "$1" ] && v=$("$f" --version 2>&1); then echo "version $v"; fi
fi
true"#;

/// The cache directory, private to the deploy user.
const MKDIR: &str = r#"umask 077; mkdir -p "$1" && chmod 0700 "$1""#;

/// Checks the uploaded copy, then renames it into place and starts it once.
const INSTALL: &str = r#"t=$1 f=$2 sha=$3
s=$(sha256sum < "$t") || exit 1
s=${s%% *}
if [ "$s" != "$sha" ]; then rm -f "$t"; echo "the uploaded agent's sha256 is $s, not $sha" >&2; exit 1; fi
chmod 0700 "$t" && mv -f "$t" "$f" && "$f" --version"#;

/// Checks the hash of the agent and only then runs it (stdin passes through). With an
/// empty path (the first try of a backup step, before anything was probed) it looks in
/// the cache, and a copy that is missing or changed there is not an error but [`ABSENT`]:
/// the runner then places the agent and calls again with the path it placed, where a
/// mismatch is [`TAMPERED`] (changed between placing and running).
const LAUNCH: &str = r#"sha=$1 f=$2 first=; shift 2
if [ -z "$f" ]; then
  first=1
  [ -n "${HOME:-}" ] || { echo __runbook_agent_absent; exit 0; }
  f=$HOME/.cache/runbook/agent/$sha
fi
s=$(sha256sum 2>/dev/null < "$f") || s=
s=${s%% *}
if [ "$s" != "$sha" ]; then
  [ -z "$first" ] || { echo __runbook_agent_absent; exit 0; }
  echo "runbook-agent at $f does not match its sha256 (${s:-unreadable}, expected $sha): not run" >&2; exit 97
fi
exec "$f" "$@""#;

/// What [`LAUNCH`] says when the cache has no good copy to run.
const ABSENT: &str = "__runbook_agent_absent";

/// What `PROBE` said.
#[derive(Debug, Default, PartialEq, Eq)]
struct Probe {
    arch: String,
    path: String,
    sha256: Option<String>,
    version: Option<String>,
}

fn parse_probe(out: &str) -> Probe {
    let mut p = Probe::default();
    for line in out.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "arch" => value.clone_into(&mut p.arch),
            "path" => value.clone_into(&mut p.path),
            "sha" => p.sha256 = Some(value.to_owned()),
            "version" => p.version = Some(value.to_owned()),
            _ => {}
        }
    }
    p
}

/// Places (when needed) and checks the agent on `target`: its path there, or the reason
/// it cannot be used.
fn install_from(
    effects: &Effects,
    target: &Target,
    local: &LocalAgent,
) -> Result<String, AgentError> {
    // Only reads the host.
    let look = CommandSpec {
        read: true,
        ..CommandSpec::script(
            "backup: look for runbook-agent on the host",
            PROBE,
            &[&local.sha256],
        )
    };
    let probe = parse_probe(&run_quiet(effects, target, look)?);
    let host_arch = normalise_arch(&probe.arch);
    if host_arch != local.arch {
        return Err(AgentError::WrongArch {
            agent: local.arch.clone(),
            host: probe.arch,
        });
    }
    let (dir, _) = crate::transport::transfer::split(&probe.path)?;
    if probe.sha256.as_deref() == Some(local.sha256.as_str())
        && probe
            .version
            .as_deref()
            .is_some_and(|v| v.starts_with("runbook-agent "))
    {
        return Ok(probe.path);
    }
    sh(
        effects,
        target,
        "backup: make the agent's cache directory (0700)",
        MKDIR,
        &[&dir],
    )?;
    let part = format!(
        "{dir}/.{}.part-{}",
        local.sha256,
        crate::transport::random_hex(4)
    );
    for r in effects.upload(std::slice::from_ref(target), &local.path, &part) {
        r?;
    }
    let version = sh(
        effects,
        target,
        "backup: check and place runbook-agent",
        INSTALL,
        &[&part, &probe.path, &local.sha256],
    )?;
    if !version.starts_with("runbook-agent ") {
        return Err(AgentError::NoStart {
            said: version.trim().to_owned(),
        });
    }
    Ok(probe.path)
}

/// The agent to use on `target` for a backup, or `None`: stream through the runner. A
/// host reached without SSH never gets one (its backups are made by runbook itself).
/// Touches no host: [`call`] finds out whether the host has it.
pub(crate) fn prepare(
    effects: &Effects,
    target: &Target,
    mode: OnHost,
) -> Result<Option<Planned>, AgentError> {
    let ssh = matches!(target, Target::Host(h) if h.transport == TransportKind::Ssh);
    if mode == OnHost::Never || !ssh || effects.dry_run() {
        return Ok(None);
    }
    match located() {
        Ok(local) => Ok(Some(Planned { local, mode })),
        Err(why) => cannot_run(effects, target, mode, why),
    }
}

/// [`locate`], once per process: a few MiB read and hashed, the same for every host.
fn located() -> Result<LocalAgent, AgentError> {
    static LOCAL: std::sync::OnceLock<LocalAgent> = std::sync::OnceLock::new();
    if let Some(local) = LOCAL.get() {
        return Ok(local.clone());
    }
    let local = locate()?;
    Ok(LOCAL.get_or_init(|| local).clone())
}

/// The agent cannot be used on `target`: an error with `on_host = "always"`, else one
/// warning and `None` (the step streams through the runner).
fn cannot_run<T>(
    effects: &Effects,
    target: &Target,
    mode: OnHost,
    why: AgentError,
) -> Result<Option<T>, AgentError> {
    if mode == OnHost::Always {
        return Err(AgentError::Required {
            host: target.name().to_owned(),
            why: Box::new(why),
        });
    }
    effects.output().log(
        crate::output::Level::Warn,
        format!(
            "backup of `{}` streams through the runner instead of staying on the host: {}",
            target.name(),
            why.to_string().lines().next().unwrap_or_default()
        ),
    );
    Ok(None)
}

/// Runs agent `command` on the host with `request` on stdin; its JSON answer, or `None`
/// when the agent cannot run there and the step is to stream instead (warned).
///
/// One session when the host has the agent already (the usual case): the launcher checks
/// the cached copy's hash and runs it. Only when it is missing or changed is the host
/// probed (architecture, cache directory), the agent placed, and the call made again.
pub(crate) fn call<T: serde::de::DeserializeOwned>(
    effects: &Effects,
    target: &Target,
    plan: &Planned,
    command: &str,
    label: &str,
    request: &impl serde::Serialize,
    read: bool,
) -> Result<Option<T>, AgentError> {
    let stdin = serde_json::to_vec(request).map_err(AgentError::Encode)?;
    let launch = |path: &str| {
        let mut spec = CommandSpec::script(label, LAUNCH, &[&plan.local.sha256, path, command]);
        spec.stdin = Some(stdin.clone());
        spec.quiet = true;
        spec.read = read;
        effects.run(target, &spec).map_err(|e| {
            if e.code() == Some(TAMPERED) {
                AgentError::Tampered {
                    source: Box::new(e),
                }
            } else {
                AgentError::from(e)
            }
        })
    };
    let mut out = launch("")?;
    if out.stdout.trim() == ABSENT {
        let placed = match install_from(effects, target, &plan.local) {
            Ok(placed) => placed,
            Err(why) => return cannot_run(effects, target, plan.mode, why),
        };
        out = launch(&placed)?;
    }
    serde_json::from_str(out.stdout.trim())
        .map(Some)
        .map_err(|source| AgentError::BadAnswer {
            host: target.name().to_owned(),
            source,
            answer: out.stdout.chars().take(200).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_are_read_from_the_elf_header_and_uname_spellings_agree() {
        let mut head = [0u8; 64];
        std::io::Read::read_exact(
            &mut std::fs::File::open(std::env::current_exe().unwrap()).unwrap(),
            &mut head,
        )
        .unwrap();
        assert_eq!(
            elf_arch(&head),
            Some(normalise_arch(std::env::consts::ARCH))
        );
        let mut arm = head[..64].to_vec();
        arm[18..20].copy_from_slice(&0xb7u16.to_le_bytes());
        assert_eq!(elf_arch(&arm), Some("aarch64"));
        assert_eq!(elf_arch(b"#!/bin/sh\necho runbook-agent\n"), None);
        assert_eq!(normalise_arch("arm64\n"), "aarch64");
        assert_eq!(normalise_arch("i686"), "x86");
        assert_eq!(normalise_arch("armv7l"), "arm");
        assert_eq!(normalise_arch("x86_64"), "x86_64");
    }

    #[test]
    fn the_probe_is_parsed_line_by_line() {
        let p = parse_probe(
            "arch x86_64\npath /home/d/.cache/runbook/agent/ab\nsha ab\nversion runbook-agent 0.1.0 x86_64\n",
        );
        assert_eq!(p.arch, "x86_64");
        assert_eq!(p.path, "/home/d/.cache/runbook/agent/ab");
        assert_eq!(p.sha256.as_deref(), Some("ab"));
        assert_eq!(p.version.as_deref(), Some("runbook-agent 0.1.0 x86_64"));
        assert_eq!(parse_probe("arch x86_64\npath /x\n").sha256, None);
    }

    #[test]
    fn a_script_is_described_as_no_agent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        assert!(
            describe(&p)
                .unwrap_err()
                .to_string()
                .contains("not an executable")
        );
        assert!(
            describe(&dir.path().join("none"))
                .unwrap_err()
                .to_string()
                .contains("no runbook-agent")
        );
    }
}
