//! The raw shape of `runbook.toml`, exactly as users write it.
//!
//! These types are a user-facing contract: keys are added, never renamed without a
//! migration note in the README. Every struct denies unknown keys so that a typo
//! (`hots = …`) is an error that names the key instead of a setting silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInventory {
    pub app: RawApp,
    #[serde(default)]
    pub ssh: RawSsh,
    #[serde(default)]
    pub env: BTreeMap<String, RawEnvironment>,
    #[serde(default)]
    pub notify: RawNotify,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub backup: RawBackup,
    /// Short names for ad-hoc commands: `tinker = ["php", "artisan", "tinker"]` runs as
    /// `runbook tinker -e production` (see `runbook exec`).
    #[serde(default)]
    pub aliases: BTreeMap<String, RawAlias>,
    /// Hooks on the strategies' named steps (`[[hooks]] before = "switch" …`), in order.
    #[serde(default)]
    pub hooks: Vec<RawHook>,
}

/// One `[[hooks]]` entry: where it attaches (exactly one of `before`, `after`, `replace`,
/// `skip`, naming a step) and what it runs (exactly one of `run`, `artisan`, `call`;
/// nothing for `skip`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHook {
    pub before: Option<String>,
    pub after: Option<String>,
    pub replace: Option<String>,
    pub skip: Option<String>,
    /// Only this strategy (`rolling`, `blue_green`, `canary`, `rollback`).
    pub strategy: Option<String>,
    /// An argv run on the step's hosts, in the new release (else the deploy path).
    pub run: Option<Vec<String>>,
    /// `php artisan …` on the step's hosts, in the new release (else the live one).
    pub artisan: Option<Vec<String>>,
    /// `module::function` of the project's `stdlib/`, called with the step's context.
    pub call: Option<String>,
    /// Only on the hosts of this role (of the step's hosts' environment).
    pub on: Option<String>,
    /// Only in these environments.
    pub env: Option<Vec<String>>,
    /// Why a step is skipped (required for a safety step: the lock, gates, verification).
    pub reason: Option<String>,
}

/// An alias: the command alone, or with how it runs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub(crate) enum RawAlias {
    Argv(Vec<String>),
    Full(RawAliasFull),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAliasFull {
    pub command: Vec<String>,
    /// With a terminal, on one host (`php artisan tinker`, a shell).
    #[serde(default)]
    pub interactive: bool,
    /// Only hosts of this role.
    pub role: Option<String>,
}

impl RawAlias {
    pub(crate) fn command(&self) -> &[String] {
        match self {
            RawAlias::Argv(a) => a,
            RawAlias::Full(f) => &f.command,
        }
    }
}

/// `[backup]`: how backups of SSH hosts are made.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackup {
    /// Where a backup of an SSH host is built, checked, pruned and restored.
    #[serde(default)]
    pub on_host: OnHost,
}

/// `auto`: on the host by runbook's agent, streaming through the runner when the agent
/// cannot run there; `always`: on the host or fail; `never`: always streaming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnHost {
    #[default]
    Auto,
    Always,
    Never,
}

/// Where metrics go and come from.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    /// Pushgateway base URL (e.g. `{ env = "METRICS_ENDPOINT" }`).
    pub pushgateway: Option<Setting>,
    /// Prometheus HTTP API base URL, for `metrics::query`.
    pub prometheus: Option<Setting>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    pub name: String,
    pub deploy_path: String,
    pub repository: Option<String>,
    #[serde(default = "default_keep_releases")]
    pub keep_releases: u32,
    pub backup_dir: Option<String>,
    #[serde(default = "default_shared_dirs")]
    pub shared_dirs: Vec<String>,
    #[serde(default = "default_shared_files")]
    pub shared_files: Vec<String>,
    #[serde(default = "default_writable_dirs")]
    pub writable_dirs: Vec<String>,
    #[serde(default = "default_php")]
    pub php: String,
    #[serde(default = "default_composer")]
    pub composer: String,
}

fn default_keep_releases() -> u32 {
    5
}
fn default_shared_dirs() -> Vec<String> {
    vec!["storage".into()]
}
fn default_shared_files() -> Vec<String> {
    vec![".env".into()]
}
fn default_writable_dirs() -> Vec<String> {
    vec!["bootstrap/cache".into(), "storage".into()]
}
fn default_php() -> String {
    "php".into()
}
fn default_composer() -> String {
    "composer".into()
}

/// SSH settings; `[ssh]` holds the defaults, an environment or a host may override any.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSsh {
    /// Written inline, or `{ env = "PRODUCTION_SSH_USER" }`.
    pub user: Option<Setting>,
    pub port: Option<u16>,
    pub identity_file: Option<String>,
    /// The private key itself, from an environment variable only
    /// (`{ env = "PRODUCTION_SSH_KEY" }`): written for the run to a file only this user
    /// can read, removed when the run ends. Wins over `identity_file` at the same level.
    pub identity: Option<SecretRef>,
    pub known_hosts: Option<String>,
    pub host_key_check: Option<HostKeyCheck>,
    pub connect_timeout: Option<String>,
    pub keepalive: Option<String>,
    /// Keep each host's master connection open this long after a command (`"10m"`), for
    /// the next `runbook` invocation to reuse; `runbook disconnect` ends them.
    pub persist: Option<String>,
    pub config_file: Option<String>,
    pub jump_host: Option<String>,
    pub max_concurrency: Option<u32>,
}

/// How unknown host keys are treated. There is deliberately no "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum HostKeyCheck {
    Strict,
    AcceptNew,
}

/// How commands reach a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TransportKind {
    #[default]
    Ssh,
    Local,
}

impl TransportKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TransportKind::Ssh => "ssh",
            TransportKind::Local => "local",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnvironment {
    pub url: Option<String>,
    #[serde(default)]
    pub protected: bool,
    pub transport: Option<TransportKind>,
    pub user: Option<Setting>,
    pub deploy_path: Option<String>,
    pub backup_dir: Option<String>,
    /// A `.env` template (relative to runbook.toml, e.g. the app's `.env.production`):
    /// each deploy renders it into `shared/.env` on every host, `${NAME}` read from the
    /// environment runbook runs in.
    pub env_template: Option<String>,
    pub php: Option<String>,
    pub composer: Option<String>,
    #[serde(default)]
    pub health: Vec<String>,
    /// Which host runs the migrations of a deploy or rollback: a host name, or a role
    /// (its first host). Absent: the first web host. Ignored when `vars.database_per_host`.
    pub migrate_on: Option<String>,
    #[serde(default)]
    pub hosts: BTreeMap<String, RawHost>,
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub vars: toml::Table,
    #[serde(default)]
    pub ssh: RawSsh,
    /// Who may run scripts that change this environment (absent: anyone).
    pub deployers: Option<Vec<String>>,
    /// Who may run emergency scripts here (absent: the deployers).
    pub emergency_deployers: Option<Vec<String>>,
}

/// A host is either `"10.0.0.11"` / `"10.0.0.11:2222"` or a table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub(crate) enum RawHost {
    Address(String),
    Table(RawHostTable),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHostTable {
    /// Written inline, or `{ env = "PRODUCTION_SSH_HOST" }` (`host` or `host:port`).
    pub address: Option<Setting>,
    pub port: Option<u16>,
    pub user: Option<Setting>,
    pub identity_file: Option<String>,
    /// The private key itself, from an environment variable (see `[ssh] identity`).
    pub identity: Option<SecretRef>,
    pub transport: Option<TransportKind>,
    pub jump_host: Option<String>,
    /// Overrides the environment's `deploy_path` for this host.
    pub deploy_path: Option<String>,
    /// This host's own base URL (to check one backend before traffic moves).
    pub url: Option<String>,
    /// Where this host serves the staged release (`next`): a blue-green deploy checks
    /// the new release here before any traffic moves; a canary pool sends traffic here.
    pub preview_url: Option<String>,
}

/// A value that may be written inline or named by environment variable.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub(crate) enum Setting {
    Literal(String),
    Env(SecretRef),
}

/// A secret: only ever named by environment variable, never written in the file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretRef {
    pub env: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    pub slack: Option<RawSlack>,
    pub email: Option<RawEmail>,
    pub pagerduty: Option<RawPagerDuty>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSlack {
    pub webhook: SecretRef,
    pub channel: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEmail {
    pub host: Setting,
    pub port: Option<Setting>,
    pub username: Option<Setting>,
    pub password: Option<SecretRef>,
    pub from: Option<Setting>,
    pub to: Setting,
    /// `starttls` (default), `tls` (implicit TLS, port 465) or `none` (loopback only).
    pub tls: Option<String>,
    /// Extra CA certificate (PEM) to trust for the SMTP server.
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPagerDuty {
    pub routing_key: SecretRef,
    pub url: Option<String>,
}
