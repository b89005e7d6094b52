//! Command-line arguments (clap derive) and the dispatch to one file per command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Verbosity;

#[derive(Debug, Parser)]
#[command(
    name = "runbook",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("RUNBOOK_COMMIT"), ")"),
    about = "Deployment runbooks as Rhai scripts: run, check, and operate a fleet",
    propagate_version = true
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Inventory file (default: runbook.toml in this directory or a parent)
    #[arg(short, long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More output (-v); `RUST_LOG` controls diagnostics further
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors, warnings and the final result
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Global {
    pub(crate) fn verbosity(&self) -> Verbosity {
        match (self.quiet, self.verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            _ => Verbosity::Verbose,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a script against an environment
    Run(RunArgs),
    /// Compile scripts and validate the inventory; touches no host
    Check(CheckArgs),
    /// Show the resolved hosts of an environment
    Hosts(HostsArgs),
    /// Every script of the project: its purpose and arguments, from its leading comment
    List(ListArgs),
    /// Print the script API: every module and function
    Doc(DocArgs),
    /// Interactive shell with the script API and the inventory at hand
    Repl(ReplArgs),
    /// Remove the deploy lock on every host of an environment
    Unlock(UnlockArgs),
    /// Take over a server another tool deployed: its releases become rollback targets
    Adopt(AdoptArgs),
    /// Bring the fleet back to one whole release after a run that died (lock, maintenance)
    Recover(RecoverArgs),
    /// End the ssh master connections kept open by `[ssh] persist` (all, or one environment's)
    Disconnect(DisconnectArgs),
    /// What is live where, who holds the lock, is anything half done (exit 1: not consistent)
    Status(StatusArgs),
    /// Every release: ref, commit, who, when, bad, and on which hosts it is present and live
    Releases(StatusArgs),
    /// The deploy lock: who holds it, and freezing deploys (`status`, `freeze`, `thaw`)
    Lock(LockArgs),
    /// A running canary: see it and steer it from here (`status`, `pause`, `resume`,
    /// `promote`, `abort`), also when the run that drives it is gone
    Rollout(RolloutArgs),
    /// Run an ad-hoc command on hosts (argv, audited; -i: one host with a terminal)
    Exec(ExecArgs),
    /// Query the audit log: who ran what, where, why, and how it ended
    Audit(AuditArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    Completions(CompletionsArgs),
    /// Print the man page (roff)
    Man,
    /// Write Rhai definition files (.d.rhai) of the script API for editors
    Definitions(DefinitionsArgs),
    /// Scaffold runbook.toml and the standard scripts into this project (never overwrites)
    Init,
    /// An alias from `[aliases]` in runbook.toml (`runbook tinker -e production`)
    #[command(external_subcommand)]
    Alias(Vec<String>),
}

#[derive(Debug, Args)]
pub(crate) struct DefinitionsArgs {
    /// Directory to write into
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Only this environment
    #[arg(short, long)]
    pub env: Option<String>,
    /// Only runs that touched this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only runs newer than this (e.g. 2d, 12h)
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Only runs by this actor
    #[arg(long)]
    pub actor: Option<String>,
    /// One JSON record per line
    #[arg(long)]
    pub json: bool,
    /// Delivery metrics (DORA) per environment: deployment frequency, lead time,
    /// change-failure rate, time to restore
    #[arg(long)]
    pub stats: bool,
    /// Also read the audit logs on the environment's hosts (needs --env) and merge them
    #[arg(long, requires = "env")]
    pub from_hosts: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// A script path, or a name resolved as scripts/<name>.rhai
    pub script: String,
    /// Script arguments as KEY=VALUE (reach the script as the map `args`)
    #[arg(value_name = "KEY=VALUE")]
    pub args: Vec<String>,
    /// Environment from the inventory
    #[arg(short, long, env = "RUNBOOK_ENV")]
    pub env: Option<String>,
    /// Show what would run; execute nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Confirm a protected environment without a prompt (CI)
    #[arg(long)]
    pub yes: bool,
    /// Why this run happens (required by emergency scripts; recorded)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// One JSON event per line on stdout
    #[arg(long)]
    pub json: bool,
    /// Only hosts whose name matches (`*` and `?` wildcards), e.g. 'web*'
    #[arg(long, value_name = "PATTERN")]
    pub hosts: Option<String>,
    /// Only shard I of N of the (sorted) hosts, e.g. 2/4 — for a CI matrix
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Act as this actor instead of $GITHUB_ACTOR/$USER (tests; refused on protected environments)
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
    /// With --dry-run: write the recorded plan (every effect, in order) as JSON
    #[arg(long, value_name = "FILE", requires = "dry_run")]
    pub plan_out: Option<PathBuf>,
    /// Wait this long for a deploy lock held by another run (e.g. 10m)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_wait: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Scripts to check (default: every script in scripts/ and the stdlib)
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct HostsArgs {
    /// Environment from the inventory
    #[arg(short, long, env = "RUNBOOK_ENV")]
    pub env: Option<String>,
    /// Only hosts of this role
    #[arg(long)]
    pub role: Option<String>,
    /// JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DocArgs {
    /// Markdown instead of plain text
    #[arg(long)]
    pub markdown: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReplArgs {
    /// Environment from the inventory
    #[arg(short, long, env = "RUNBOOK_ENV")]
    pub env: Option<String>,
    /// Start with dry-run on
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct UnlockArgs {
    /// Environment from the inventory
    #[arg(short, long, env = "RUNBOOK_ENV")]
    pub env: Option<String>,
    /// Only remove a lock whose heartbeat is older than a minute (its run is gone)
    #[arg(long)]
    pub stale: bool,
    /// Confirm removing a possibly live lock on a protected environment
    #[arg(long)]
    pub yes: bool,
    /// Why the lock is removed (required on a protected environment; recorded)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// Environment from the inventory
    #[arg(short, long, env = "RUNBOOK_ENV")]
    pub env: Option<String>,
    /// Only hosts of this role
    #[arg(long, conflicts_with = "hosts")]
    pub role: Option<String>,
    /// Only hosts whose name matches (wildcards `*`, `?`)
    #[arg(long, value_name = "PATTERN")]
    pub hosts: Option<String>,
    /// With a terminal, on one host (`php artisan tinker`, a shell)
    #[arg(short, long)]
    pub interactive: bool,
    /// Why (required on a protected environment; recorded)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Confirm on a protected environment
    #[arg(long)]
    pub yes: bool,
    /// Say what would run, run nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Kill the command after this long
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// The program and its arguments, after `--` (each one argument, never a shell line)
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Environment from the inventory
    #[arg(short, long, env = "RUNBOOK_ENV")]
    pub env: Option<String>,
    /// JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LockArgs {
    #[command(subcommand)]
    pub action: LockAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LockAction {
    /// Who holds the deploy lock on each host, and any freeze
    Status(StatusArgs),
    /// Stop deploys for a while (an emergency script run with --reason still passes)
    Freeze(FreezeArgs),
    /// Lift a freeze before its time
    Thaw(ThawArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FreezeArgs {
    /// Environment from the inventory
    #[arg(short, long, env = "RUNBOOK_ENV")]
    pub env: Option<String>,
    /// How long the freeze lasts (e.g. 2h, 30m; at most 30 days)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// Why deploys stop (required; shown to whoever is refused, recorded)
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Confirm on a protected environment
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RolloutArgs {
    #[command(subcommand)]
    pub action: RolloutAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutAction {
    /// Step, weight, time left in the window, the last judgements (both pools), the
    /// holder (exit 1: its runner is gone)
    Status(StatusArgs),
    /// Hold the current weight: the window's clock stops until `resume`
    Pause(RolloutControlArgs),
    /// Let a paused window run on
    Resume(RolloutControlArgs),
    /// Go to 100% and finish like a passed canary (also when its runner is gone)
    Promote(RolloutControlArgs),
    /// All traffic back on stable, the release marked bad (also when its runner is gone)
    Abort(RolloutControlArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RolloutControlArgs {
    #[command(flatten)]
    pub change: ThawArgs,
    /// How long to wait for a running canary to say it obeyed (e.g. 30s)
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub wait: std::time::Duration,
}

/// The environment of a change, why it is made, and the confirmation a protected one needs.
#[derive(Debug, Args)]
pub(crate) struct ThawArgs {
    /// Environment from the inventory
    #[arg(short, long, env = "RUNBOOK_ENV")]
    pub env: Option<String>,
    /// Why (required on a protected environment; recorded in the audit log)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Confirm on a protected environment
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AdoptArgs {
    /// Environment from the inventory
    #[arg(short, long, env = "RUNBOOK_ENV")]
    pub env: Option<String>,
    /// Confirm on a protected environment
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RecoverArgs {
    /// Environment from the inventory
    #[arg(short, long, env = "RUNBOOK_ENV")]
    pub env: Option<String>,
    /// Confirm on a protected environment
    #[arg(long)]
    pub yes: bool,
    /// How long to wait for the dead run's commands still running on the hosts
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    pub wait: std::time::Duration,
    /// End the dead run's commands still running after --wait (SIGTERM, then SIGKILL)
    /// instead of refusing to recover
    #[arg(long)]
    pub kill: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DisconnectArgs {
    /// Only this environment's hosts (default: every kept connection)
    #[arg(short, long)]
    pub env: Option<String>,
}
