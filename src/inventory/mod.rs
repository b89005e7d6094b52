//! The inventory: `runbook.toml` parsed, validated and resolved.
//!
//! Everything a script may touch (hosts, roles, paths) comes from here, so a mistake in
//! the file must stop the run before any connection is made, with an error that names the
//! file and the key. Secrets are only *named* here (`{ env = "NAME" }`); their values are
//! read from the process environment when used, and never stored in this structure.

mod error;
pub(crate) mod hooks;
pub(crate) mod identity;
pub(crate) mod model;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use model::{HostKeyCheck, SecretRef, Setting, TransportKind};
use model::{RawEnvironment, RawHost, RawInventory, RawSsh};

pub(crate) use error::InventoryError;

/// The file name looked for in the current directory and its parents.
pub(crate) const FILE_NAME: &str = "runbook.toml";

#[derive(Debug)]
pub(crate) struct Inventory {
    /// The file this was read from.
    pub path: PathBuf,
    /// The directory holding the file: the project root.
    pub root: PathBuf,
    pub app: model::RawApp,
    pub notify: model::RawNotify,
    pub metrics: model::RawMetrics,
    pub backup: model::RawBackup,
    pub aliases: BTreeMap<String, model::RawAlias>,
    pub envs: BTreeMap<String, Arc<Environment>>,
    /// `[[hooks]]` on the strategies' named steps, checked, in file order.
    pub hooks: Vec<hooks::Hook>,
}

/// runbook's own commands: an alias may not take their names.
pub(crate) const COMMANDS: &[&str] = &[
    "run",
    "check",
    "hosts",
    "doc",
    "repl",
    "unlock",
    "adopt",
    "recover",
    "status",
    "releases",
    "lock",
    "exec",
    "list",
    "audit",
    "completions",
    "man",
    "definitions",
    "init",
    "help",
];

/// One environment with every host fully resolved.
#[derive(Debug, Clone)]
pub(crate) struct Environment {
    pub name: String,
    pub url: Option<String>,
    pub protected: bool,
    pub deploy_path: String,
    pub backup_dir: String,
    pub php: String,
    pub composer: String,
    pub health: Vec<String>,
    /// The host that migrates the one shared database (`migrate_on`, a role resolved to
    /// its first host); `None`: the first host of the release's set.
    pub migrate_on: Option<String>,
    pub vars: toml::Table,
    /// Hosts in file order of their names (sorted), so every listing is deterministic.
    pub hosts: Vec<Arc<Host>>,
    pub roles: BTreeMap<String, Vec<String>>,
    pub max_concurrency: usize,
    pub deployers: Option<Vec<String>>,
    pub emergency_deployers: Option<Vec<String>>,
    /// The `.env` template (`env_template`, resolved against the project root).
    pub env_template: Option<PathBuf>,
    /// Settings read from environment variables that are not set here:
    /// `(inventory key, variable)`. A run on this environment is refused while any is.
    pub unresolved: Vec<(String, String)>,
    /// The run's private key files (`identity = { env = … }`), removed when the last
    /// holder of this environment (the run's session) goes.
    pub keys: Option<Arc<identity::KeyDir>>,
}

/// A host as the runtime uses it: every setting resolved from host → env → `[ssh]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Host {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: Option<String>,
    pub identity_file: Option<String>,
    /// Key material named by environment variable; written to `identity_file` (a
    /// private temporary file) when the environment is opened for a run.
    pub identity: Option<SecretRef>,
    #[expect(
        clippy::struct_field_names,
        reason = "the inventory's own key, `jump_host` (ssh's ProxyJump)"
    )]
    pub jump_host: Option<String>,
    pub transport: TransportKind,
    pub roles: Vec<String>,
    /// Where releases/, shared/ and current live on this host.
    pub deploy_path: String,
    /// This host's own base URL, if the inventory gives one.
    pub url: Option<String>,
    /// Where this host serves the staged release (`next`), if the inventory gives one.
    pub preview_url: Option<String>,
    pub ssh: SshOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SshOptions {
    pub known_hosts: Option<String>,
    pub host_key_check: HostKeyCheck,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    /// `[ssh] persist`: masters outlive the run by this long, reused by the next one.
    pub persist: Option<Duration>,
    pub config_file: Option<String>,
}

impl Inventory {
    /// Reads and validates an inventory file.
    pub(crate) fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_owned(),
            source,
        })?;
        Inventory::parse(path, &text)
    }

    /// Parses inventory text; `path` is used for messages and to resolve relative paths.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse_with(path, text, &crate::envfile::from_process_env)
    }

    /// `parse` with `lookup` standing in for the process environment (settings written
    /// as `{ env = "NAME" }`; an empty value counts as not set).
    pub(crate) fn parse_with(
        path: &Path,
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Inventory, InventoryError> {
        let raw: RawInventory = toml::from_str(text).map_err(|e| InventoryError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let root = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let root = std::path::absolute(&root).unwrap_or(root);
        let invalid = |key: String, message: String| InventoryError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };

        if raw.app.name.trim().is_empty() {
            return Err(invalid("app.name".into(), "must not be empty".into()));
        }
        if raw.app.deploy_path.trim().is_empty() {
            return Err(invalid(
                "app.deploy_path".into(),
                "must not be empty: where releases/, shared/ and current live on the hosts".into(),
            ));
        }
        check_secrets(&raw, &invalid)?;
        let defaults = &raw.ssh;
        let mut envs = BTreeMap::new();
        for (name, env) in &raw.env {
            if !is_identifier(name) {
                return Err(invalid(
                    format!("env.{name}"),
                    "environment names may contain only letters, digits, `_` and `-`".into(),
                ));
            }
            let resolved = resolve_env(&root, &raw, defaults, name, env, lookup, &invalid)?;
            envs.insert(name.clone(), Arc::new(resolved));
        }
        for (name, alias) in &raw.aliases {
            let key = format!("aliases.{name}");
            if COMMANDS.contains(&name.as_str()) {
                return Err(invalid(
                    key,
                    format!(
                        "`{name}` is one of runbook's own commands: give the alias another name"
                    ),
                ));
            }
            if !is_identifier(name) {
                return Err(invalid(
                    key,
                    "alias names may contain only letters, digits, `_` and `-`".into(),
                ));
            }
            if alias.command().is_empty() || alias.command()[0].trim().is_empty() {
                return Err(invalid(
                    key,
                    "the command is empty: give the program and its arguments, e.g. [\"php\", \"artisan\", \"tinker\"]".into(),
                ));
            }
        }
        let env_names: Vec<&String> = raw.env.keys().collect();
        let hooks =
            hooks::resolve(&raw.hooks, &env_names).map_err(|(k, e)| invalid(k, e.to_string()))?;
        Ok(Inventory {
            path: path.to_owned(),
            root,
            app: raw.app,
            notify: raw.notify,
            metrics: raw.metrics,
            backup: raw.backup,
            aliases: raw.aliases,
            envs,
            hooks,
        })
    }

    /// Opens an environment for a run (an error lists the ones that exist): refused
    /// while a setting it reads from an environment variable is not set, and with every
    /// `identity = { env = … }` key written to a private file for as long as the
    /// returned environment lives.
    pub(crate) fn env(&self, name: &str) -> Result<Arc<Environment>, InventoryError> {
        let env = self
            .envs
            .get(name)
            .cloned()
            .ok_or_else(|| InventoryError::UnknownEnv {
                path: self.path.clone(),
                name: name.to_owned(),
                known: self.envs.keys().cloned().collect(),
            })?;
        if let Some((key, _)) = env.unresolved.first() {
            return Err(InventoryError::Invalid {
                path: self.path.clone(),
                key: key.clone(),
                message: unresolved_message(&env.unresolved),
            });
        }
        if !env.hosts.iter().any(|h| h.identity.is_some()) {
            return Ok(env);
        }
        identity::materialize(&env, &crate::envfile::from_process_env)
            .map(Arc::new)
            .map_err(|e| InventoryError::Invalid {
                path: self.path.clone(),
                key: format!("env.{name}.ssh.identity"),
                message: e.to_string(),
            })
    }

    /// Every environment-variable name the file refers to for a secret (credentials:
    /// masked in all output from the start of a run). Hosts and addresses are not secret.
    pub(crate) fn secret_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if let Some(slack) = &self.notify.slack {
            names.push(slack.webhook.env.clone());
        }
        if let Some(email) = &self.notify.email {
            if let Some(Setting::Env(r)) = &email.username {
                names.push(r.env.clone());
            }
            if let Some(p) = &email.password {
                names.push(p.env.clone());
            }
        }
        if let Some(pd) = &self.notify.pagerduty {
            names.push(pd.routing_key.env.clone());
        }
        // Private keys: masked should one ever be printed (it is never sent anywhere).
        for env in self.envs.values() {
            for h in &env.hosts {
                if let Some(r) = &h.identity
                    && !names.contains(&r.env)
                {
                    names.push(r.env.clone());
                }
            }
        }
        names
    }
}

/// A secret's environment variable is not set (or empty) where the run needs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{var} is not set (runbook.toml `{key}` reads it): export it, or add it to the CI job's secrets"
)]
pub(crate) struct NotSet {
    pub var: String,
    /// The inventory key that reads it.
    pub key: String,
}

impl Setting {
    /// The value: written inline, or read from the named environment variable now.
    pub(crate) fn resolve(&self, key: &str) -> Result<String, NotSet> {
        match self {
            Setting::Literal(v) => Ok(v.clone()),
            Setting::Env(r) => r.resolve(key),
        }
    }
}

impl SecretRef {
    /// Reads the variable; the error names it and the inventory key that wants it.
    pub(crate) fn resolve(&self, key: &str) -> Result<String, NotSet> {
        std::env::var(&self.env)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| NotSet {
                var: self.env.clone(),
                key: key.to_owned(),
            })
    }
}

/// A role the environment does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "environment `{env}` has no role `{role}` (roles: {})",
    if known.is_empty() { "none defined".to_owned() } else { known.join(", ") }
)]
pub(crate) struct NoRole {
    pub env: String,
    pub role: String,
    /// The roles it has.
    pub known: Vec<String>,
}

impl Environment {
    /// The hosts of a role (or all hosts for `None`), in a stable order.
    pub(crate) fn select(&self, role: Option<&str>) -> Result<Vec<Arc<Host>>, NoRole> {
        match role {
            None | Some("all") => Ok(self.hosts.clone()),
            Some(role) => {
                let Some(names) = self.roles.get(role) else {
                    return Err(NoRole {
                        env: self.name.clone(),
                        role: role.to_owned(),
                        known: self.roles.keys().cloned().collect(),
                    });
                };
                Ok(names
                    .iter()
                    .filter_map(|n| self.host(n))
                    .collect::<Vec<_>>())
            }
        }
    }

    pub(crate) fn host(&self, name: &str) -> Option<Arc<Host>> {
        self.hosts.iter().find(|h| h.name == name).cloned()
    }

    /// The environment narrowed to hosts matching `pattern` (wildcards `*`, `?`) and to
    /// shard `index` of `count` (1-based) of the remaining hosts in name order — so a CI
    /// matrix of `count` jobs covers every host exactly once.
    pub(crate) fn subset(
        &self,
        pattern: Option<&str>,
        shard: Option<(usize, usize)>,
    ) -> Environment {
        let mut hosts: Vec<Arc<Host>> = self
            .hosts
            .iter()
            .filter(|h| pattern.is_none_or(|p| wildcard(p, &h.name)))
            .cloned()
            .collect();
        if let Some((index, count)) = shard {
            hosts = hosts
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % count == index - 1)
                .map(|(_, h)| h)
                .collect();
        }
        let keep: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
        let mut env = self.clone();
        env.roles = self
            .roles
            .iter()
            .map(|(r, m)| {
                (
                    r.clone(),
                    m.iter().filter(|n| keep.contains(n)).cloned().collect(),
                )
            })
            .collect();
        env.hosts = hosts;
        env
    }
}

/// Shell-style wildcard match: `*` any run, `?` one character.
pub(crate) fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_secrets(
    raw: &RawInventory,
    invalid: &impl Fn(String, String) -> InventoryError,
) -> Result<(), InventoryError> {
    let mut refs: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = &raw.notify.slack {
        refs.push(("notify.slack.webhook.env", &s.webhook.env));
    }
    if let Some(p) = &raw.notify.pagerduty {
        refs.push(("notify.pagerduty.routing_key.env", &p.routing_key.env));
    }
    if let Some(e) = &raw.notify.email {
        if let Some(p) = &e.password {
            refs.push(("notify.email.password.env", &p.env));
        }
        for (key, setting) in [
            ("notify.email.host.env", Some(&e.host)),
            ("notify.email.to.env", Some(&e.to)),
            ("notify.email.username.env", e.username.as_ref()),
            ("notify.email.port.env", e.port.as_ref()),
            ("notify.email.from.env", e.from.as_ref()),
        ] {
            if let Some(Setting::Env(r)) = setting {
                refs.push((key, &r.env));
            }
        }
    }
    for (key, name) in refs {
        if !is_env_var_name(name) {
            return Err(invalid(
                key.into(),
                format!("`{name}` is not an environment variable name (letters, digits, `_`)"),
            ));
        }
    }
    check_mail_tls(raw, invalid)
}

/// `notify.email.tls` is a known mode, and `none` only for a loopback host. A host read
/// from an environment variable is checked when the mail is sent.
fn check_mail_tls(
    raw: &RawInventory,
    invalid: &impl Fn(String, String) -> InventoryError,
) -> Result<(), InventoryError> {
    let Some(email) = &raw.notify.email else {
        return Ok(());
    };
    let tls = email.tls.as_deref().unwrap_or("starttls");
    let host = match &email.host {
        Setting::Literal(h) => h.as_str(),
        // Judged at send time; here only the mode itself.
        Setting::Env(_) => "localhost",
    };
    match crate::tls::tls_problem(host, tls) {
        Some(problem) => Err(invalid("notify.email.tls".into(), problem)),
        None => Ok(()),
    }
}

fn parse_duration(
    key: String,
    value: Option<&str>,
    default: Duration,
    invalid: &impl Fn(String, String) -> InventoryError,
) -> Result<Duration, InventoryError> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v).map_err(|e| {
            invalid(
                key,
                format!("`{v}` is not a duration ({e}); write e.g. \"10s\", \"500ms\", \"2m\""),
            )
        }),
    }
}

/// Why a host's address cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum AddressError {
    #[error("the address is empty")]
    Empty,
    #[error("`{address}`: missing `]` after an IPv6 address")]
    NoBracket { address: String },
    #[error("`{address}`: unexpected text after `]`")]
    AfterBracket { address: String },
    #[error("`{address}`: `{port}` is not a port number (1-65535)")]
    Port { address: String, port: String },
}

/// Splits `host`, `host:port`, `[v6]:port` into address and optional port.
fn split_address(s: &str) -> Result<(String, Option<u16>), AddressError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(AddressError::Empty);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, tail)) = rest.split_once(']') else {
            return Err(AddressError::NoBracket {
                address: s.to_owned(),
            });
        };
        return match tail.strip_prefix(':') {
            None if tail.is_empty() => Ok((addr.to_owned(), None)),
            Some(port) => parse_port(s, port).map(|p| (addr.to_owned(), Some(p))),
            None => Err(AddressError::AfterBracket {
                address: s.to_owned(),
            }),
        };
    }
    match s.matches(':').count() {
        1 => {
            let (addr, port) = s.split_once(':').unwrap_or((s, ""));
            parse_port(s, port).map(|p| (addr.to_owned(), Some(p)))
        }
        // No port, or a bare IPv6 address without one.
        _ => Ok((s.to_owned(), None)),
    }
}

fn parse_port(whole: &str, port: &str) -> Result<u16, AddressError> {
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| AddressError::Port {
            address: whole.to_owned(),
            port: port.to_owned(),
        })
}

/// One environment of the inventory, resolved: its hosts with every setting they inherit,
/// its roles, paths and variables — or the first setting that is wrong, with its key.
fn resolve_env(
    root: &Path,
    raw: &RawInventory,
    defaults: &RawSsh,
    name: &str,
    env: &RawEnvironment,
    lookup: &dyn Fn(&str) -> Option<String>,
    invalid: &impl Fn(String, String) -> InventoryError,
) -> Result<Environment, InventoryError> {
    let mut r = EnvResolver {
        root,
        raw,
        name,
        env,
        lookup,
        invalid,
        unresolved: Vec::new(),
    };
    let ssh = merge_ssh(defaults, &env.ssh);
    let inherited = Inherited {
        user: env
            .user
            .as_ref()
            .map(|u| (r.key("user"), u))
            .or_else(|| env.ssh.user.as_ref().map(|u| (r.key("ssh.user"), u)))
            .or_else(|| defaults.user.as_ref().map(|u| ("ssh.user".to_owned(), u))),
        key: key_source(&env.ssh, r.key("ssh")).or_else(|| key_source(defaults, "ssh".to_owned())),
        transport: env.transport.unwrap_or_default(),
        ssh_options: r.ssh_options(&ssh)?,
        ssh: &ssh,
    };
    if env.hosts.is_empty() {
        return Err(invalid(
            r.key("hosts"),
            "an environment needs at least one host, e.g. hosts = { web1 = \"10.0.0.11\" }".into(),
        ));
    }
    let mut hosts = Vec::new();
    for (host_name, spec) in &env.hosts {
        hosts.push(Arc::new(r.host(host_name, spec, &inherited)?));
    }
    r.check_no_twins(&hosts)?;
    r.check_roles()?;
    let migrate_on = r.migrate_on()?;
    let any_ssh = hosts.iter().any(|h| h.transport == TransportKind::Ssh);
    let deploy_path = r.deploy_path(any_ssh)?;
    r.place_hosts(&mut hosts, &deploy_path)?;
    let backup_dir = r.backup_dir(any_ssh);

    Ok(Environment {
        name: name.to_owned(),
        url: env.url.clone(),
        protected: env.protected,
        deploy_path,
        backup_dir,
        php: env.php.clone().unwrap_or_else(|| raw.app.php.clone()),
        composer: env
            .composer
            .clone()
            .unwrap_or_else(|| raw.app.composer.clone()),
        health: env.health.clone(),
        migrate_on,
        vars: env.vars.clone(),
        hosts,
        roles: env.roles.clone(),
        max_concurrency: ssh.max_concurrency.unwrap_or(32).max(1) as usize,
        deployers: env.deployers.clone(),
        emergency_deployers: env.emergency_deployers.clone(),
        env_template: env.env_template.as_ref().map(|t| root.join(t)),
        unresolved: r.unresolved,
        keys: None,
    })
}

/// What a host takes from its environment (and `[ssh]`) when its own entry is silent.
struct Inherited<'a> {
    /// The user at the most specific level that names one, with its key.
    user: Option<(String, &'a Setting)>,
    /// The key at the most specific level that names one, with its key.
    key: Option<(String, KeySource)>,
    transport: TransportKind,
    /// `[ssh]` with the environment's `ssh` over it.
    ssh: &'a RawSsh,
    ssh_options: SshOptions,
}

/// What a host's own entry says (a bare address says only where it is).
struct Written<'a> {
    address: String,
    port: Option<u16>,
    user: Option<(String, &'a Setting)>,
    identity: Option<(String, KeySource)>,
    transport: Option<TransportKind>,
    jump_host: Option<String>,
    deploy_path: Option<String>,
    url: Option<String>,
    preview_url: Option<String>,
}

/// Resolves one environment: its keys for errors, and the settings named by variables
/// that are not set (recorded, not refused: a run refuses them, `runbook check` reports them).
struct EnvResolver<'a, I> {
    root: &'a Path,
    raw: &'a RawInventory,
    name: &'a str,
    env: &'a RawEnvironment,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    invalid: &'a I,
    unresolved: Vec<(String, String)>,
}

impl<'a, I: Fn(String, String) -> InventoryError> EnvResolver<'a, I> {
    /// The inventory key of this environment's setting `k`.
    fn key(&self, k: &str) -> String {
        format!("env.{}.{k}", self.name)
    }

    /// A setting named by variable: its value, or `None` with the gap recorded.
    fn read(&mut self, setting_key: String, setting: &Setting) -> Option<String> {
        match setting {
            Setting::Literal(v) => Some(v.clone()),
            Setting::Env(r) => {
                let value = (self.lookup)(&r.env);
                if value.is_none() && !self.unresolved.iter().any(|(k, _)| *k == setting_key) {
                    self.unresolved.push((setting_key, r.env.clone()));
                }
                value
            }
        }
    }

    /// The SSH options every host of the environment shares, its durations parsed.
    fn ssh_options(&self, ssh: &RawSsh) -> Result<SshOptions, InventoryError> {
        Ok(SshOptions {
            known_hosts: ssh.known_hosts.clone(),
            host_key_check: ssh.host_key_check.unwrap_or(HostKeyCheck::Strict),
            connect_timeout: parse_duration(
                self.key("ssh.connect_timeout"),
                ssh.connect_timeout.as_deref(),
                Duration::from_secs(10),
                self.invalid,
            )?,
            keepalive: parse_duration(
                self.key("ssh.keepalive"),
                ssh.keepalive.as_deref(),
                Duration::from_secs(5),
                self.invalid,
            )?,
            persist: match ssh.persist.as_deref() {
                None => None,
                Some(v) => Some(parse_duration(
                    self.key("ssh.persist"),
                    Some(v),
                    Duration::ZERO,
                    self.invalid,
                )?)
                .filter(|d| !d.is_zero()),
            },
            config_file: ssh.config_file.clone(),
        })
    }

    /// Host `host_name` with what its entry says over what it inherits (its deploy path
    /// is placed later, once the environment's is known).
    fn host(
        &mut self,
        host_name: &str,
        spec: &'a RawHost,
        inherited: &Inherited<'a>,
    ) -> Result<Host, InventoryError> {
        let hkey = self.key(&format!("hosts.{host_name}"));
        if !is_identifier(host_name) {
            return Err((self.invalid)(
                hkey,
                "host names may contain only letters, digits, `_` and `-`".into(),
            ));
        }
        let written = self.written(host_name, spec, hkey)?;
        let roles = self
            .env
            .roles
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m == host_name))
            .map(|(r, _)| r.clone())
            .collect();
        let user = written
            .user
            .or_else(|| inherited.user.clone())
            .and_then(|(k, u)| self.read(k, u));
        let (identity_file, identity) = match written.identity.or_else(|| inherited.key.clone()) {
            None => (None, None),
            Some((_, KeySource::File(f))) => (Some(f), None),
            Some((k, KeySource::Material(r))) => {
                self.read(k, &Setting::Env(r.clone()));
                (None, Some(r))
            }
        };
        Ok(Host {
            name: host_name.to_owned(),
            address: written.address,
            port: written.port.or(inherited.ssh.port).unwrap_or(22),
            user,
            identity_file,
            identity,
            jump_host: written
                .jump_host
                .or_else(|| inherited.ssh.jump_host.clone()),
            transport: written.transport.unwrap_or(inherited.transport),
            roles,
            deploy_path: written.deploy_path.unwrap_or_default(),
            url: written.url,
            preview_url: written.preview_url,
            ssh: inherited.ssh_options.clone(),
        })
    }

    /// What the entry of host `host_name` (key `hkey`) says: an address, or a table that
    /// must name one.
    fn written(
        &mut self,
        host_name: &str,
        spec: &'a RawHost,
        hkey: String,
    ) -> Result<Written<'a>, InventoryError> {
        let t = match spec {
            RawHost::Address(a) => {
                let (address, port) =
                    split_address(a).map_err(|e| (self.invalid)(hkey, e.to_string()))?;
                return Ok(Written {
                    address,
                    port,
                    user: None,
                    identity: None,
                    transport: None,
                    jump_host: None,
                    deploy_path: None,
                    url: None,
                    preview_url: None,
                });
            }
            RawHost::Table(t) => t,
        };
        let (address, port) = match &t.address {
            Some(a) => match self.read(format!("{hkey}.address"), a) {
                Some(a) => split_address(&a)
                    .map_err(|e| (self.invalid)(format!("{hkey}.address"), e.to_string()))?,
                None => (String::new(), None),
            },
            // A host written as a table must say where it is; the name alone
            // is allowed only where the user wrote it as the address.
            None => {
                return Err((self.invalid)(
                    hkey,
                    format!(
                        "no address: add address = \"…\" (an IP, a DNS name, or an ~/.ssh/config alias such as \"{host_name}\")"
                    ),
                ));
            }
        };
        Ok(Written {
            address,
            port: t.port.or(port),
            user: t.user.as_ref().map(|u| (format!("{hkey}.user"), u)),
            identity: key_source(
                &RawSsh {
                    identity: t.identity.clone(),
                    identity_file: t.identity_file.clone(),
                    ..RawSsh::default()
                },
                hkey.clone(),
            ),
            transport: t.transport,
            jump_host: t.jump_host.clone(),
            deploy_path: t.deploy_path.clone(),
            url: t.url.clone(),
            preview_url: t.preview_url.clone(),
        })
    }

    /// Two names for one machine and one deploy path: every fan-out (a migration, a
    /// switch) would run twice on it, at the same time. (Local hosts are this machine by
    /// definition: a fan-out demo or test may name it twice.)
    fn check_no_twins(&self, hosts: &[Arc<Host>]) -> Result<(), InventoryError> {
        for (i, a) in hosts.iter().enumerate() {
            if a.transport != TransportKind::Ssh {
                continue;
            }
            if let Some(b) = hosts[..i].iter().find(|b| {
                b.address == a.address
                    && b.port == a.port
                    && b.deploy_path == a.deploy_path
                    && b.transport == a.transport
            }) {
                return Err((self.invalid)(
                    self.key(&format!("hosts.{}", a.name)),
                    format!(
                        "`{}` and `{}` are the same host ({}:{}) with the same deploy_path ({}): a migration or a switch would run twice on it; remove one, or give each its own deploy_path",
                        b.name, a.name, a.address, a.port, a.deploy_path
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Each role has a name other than `all` and lists defined hosts, each once.
    fn check_roles(&self) -> Result<(), InventoryError> {
        let env = self.env;
        for (role, members) in &env.roles {
            if role == "all" {
                return Err((self.invalid)(
                    self.key("roles.all"),
                    "`all` is reserved: hosts() and hosts(\"all\") already mean every host".into(),
                ));
            }
            if let Some(twice) = members
                .iter()
                .enumerate()
                .find(|(i, m)| members[..*i].contains(m))
                .map(|(_, m)| m)
            {
                return Err((self.invalid)(
                    self.key(&format!("roles.{role}")),
                    format!(
                        "lists host `{twice}` twice: a command for the role would run on it twice"
                    ),
                ));
            }
            for member in members {
                if !env.hosts.contains_key(member) {
                    let known: Vec<&str> = env.hosts.keys().map(String::as_str).collect();
                    return Err((self.invalid)(
                        self.key(&format!("roles.{role}")),
                        format!(
                            "host `{member}` is not defined in env.{}.hosts (defined: {})",
                            self.name,
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The host that runs the migrations: `migrate_on` names it, or a role whose first
    /// host it is.
    fn migrate_on(&self) -> Result<Option<String>, InventoryError> {
        let env = self.env;
        Ok(match &env.migrate_on {
            None => None,
            Some(m) if env.hosts.contains_key(m) => Some(m.clone()),
            Some(m) => {
                if let Some(first) = env.roles.get(m).and_then(|r| r.first()) {
                    Some(first.clone())
                } else {
                    let known: Vec<&str> = env
                        .hosts
                        .keys()
                        .chain(env.roles.keys())
                        .map(String::as_str)
                        .collect();
                    return Err((self.invalid)(
                        self.key("migrate_on"),
                        format!(
                            "`{m}` is neither a host nor a role with hosts (known: {}); name the host that runs the migrations",
                            known.join(", ")
                        ),
                    ));
                }
            }
        })
    }

    /// The environment's deploy path (else the app's): absolute for SSH hosts, relative
    /// to the project for local ones.
    fn deploy_path(&self, any_ssh: bool) -> Result<String, InventoryError> {
        let deploy_path = self
            .env
            .deploy_path
            .clone()
            .unwrap_or_else(|| self.raw.app.deploy_path.clone());
        if Path::new(&deploy_path).is_absolute() {
            Ok(deploy_path)
        } else if any_ssh {
            Err((self.invalid)(
                if self.env.deploy_path.is_some() {
                    self.key("deploy_path")
                } else {
                    "app.deploy_path".into()
                },
                format!("`{deploy_path}` must be an absolute path for SSH hosts"),
            ))
        } else {
            Ok(self.root.join(&deploy_path).to_string_lossy().into_owned())
        }
    }

    /// Each host's deploy path: its own (absolute over SSH, relative to the project for a
    /// local host), else the environment's `deploy_path`.
    fn place_hosts(
        &self,
        hosts: &mut [Arc<Host>],
        deploy_path: &str,
    ) -> Result<(), InventoryError> {
        for host in hosts {
            let h = Arc::make_mut(host);
            h.deploy_path = if h.deploy_path.is_empty() {
                deploy_path.to_owned()
            } else if Path::new(&h.deploy_path).is_absolute() {
                h.deploy_path.clone()
            } else if h.transport == TransportKind::Local {
                self.root
                    .join(&h.deploy_path)
                    .to_string_lossy()
                    .into_owned()
            } else {
                return Err((self.invalid)(
                    self.key(&format!("hosts.{}.deploy_path", h.name)),
                    format!("`{}` must be an absolute path for SSH hosts", h.deploy_path),
                ));
            };
        }
        Ok(())
    }

    /// Where backups go: the environment's, the app's, else `/var/backups/<app>`; relative
    /// to the project only when every host is local.
    fn backup_dir(&self, any_ssh: bool) -> String {
        let backup_dir = self
            .env
            .backup_dir
            .clone()
            .or_else(|| self.raw.app.backup_dir.clone())
            .unwrap_or_else(|| format!("/var/backups/{}", self.raw.app.name));
        if Path::new(&backup_dir).is_absolute() || any_ssh {
            backup_dir
        } else {
            self.root.join(&backup_dir).to_string_lossy().into_owned()
        }
    }
}

/// Where a level of the inventory takes the SSH key from.
#[derive(Debug, Clone)]
enum KeySource {
    File(String),
    Material(SecretRef),
}

/// The key a level names (`identity` wins over `identity_file`), with its inventory key.
fn key_source(ssh: &RawSsh, prefix: String) -> Option<(String, KeySource)> {
    match (&ssh.identity, &ssh.identity_file) {
        (Some(r), _) => Some((format!("{prefix}.identity"), KeySource::Material(r.clone()))),
        (None, Some(f)) => Some((
            format!("{prefix}.identity_file"),
            KeySource::File(f.clone()),
        )),
        (None, None) => None,
    }
}

/// Says which settings wait for which variables, and what to do.
fn unresolved_message(unresolved: &[(String, String)]) -> String {
    let vars: Vec<&str> = unresolved.iter().map(|(_, v)| v.as_str()).collect();
    let mut s = if unresolved.len() == 1 {
        format!("reads {}, which is not set here (or empty)", vars[0])
    } else {
        "reads variables that are not set here (or empty):".to_owned()
    };
    if unresolved.len() > 1 {
        for (k, v) in unresolved {
            let _ = write!(s, "\n  `{k}` reads {v}");
        }
    }
    let _ = write!(
        s,
        "\n  export {} where runbook runs (GitHub Actions: `env:` from the repository's secrets); nothing was changed on any host",
        vars.join(", ")
    );
    s
}

fn merge_ssh(base: &RawSsh, over: &RawSsh) -> RawSsh {
    RawSsh {
        user: over.user.clone().or_else(|| base.user.clone()),
        port: over.port.or(base.port),
        identity_file: over
            .identity_file
            .clone()
            .or_else(|| base.identity_file.clone()),
        identity: over.identity.clone().or_else(|| base.identity.clone()),
        known_hosts: over
            .known_hosts
            .clone()
            .or_else(|| base.known_hosts.clone()),
        host_key_check: over.host_key_check.or(base.host_key_check),
        connect_timeout: over
            .connect_timeout
            .clone()
            .or_else(|| base.connect_timeout.clone()),
        keepalive: over.keepalive.clone().or_else(|| base.keepalive.clone()),
        persist: over.persist.clone().or_else(|| base.persist.clone()),
        config_file: over
            .config_file
            .clone()
            .or_else(|| base.config_file.clone()),
        jump_host: over.jump_host.clone().or_else(|| base.jump_host.clone()),
        max_concurrency: over.max_concurrency.or(base.max_concurrency),
    }
}

/// Looks for `runbook.toml` in `start` and its parents.
pub(crate) fn discover(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(FILE_NAME))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse(Path::new("/project/runbook.toml"), text)
    }

    const BASE: &str = r#"
[app]
name = "shop"
deploy_path = "/var/www/shop"
"#;

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let err = parse(&format!(
            "{BASE}\n[env.prod]\nhots = {{ a = \"1.2.3.4\" }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `hots`"), "{err}");
        assert!(err.contains("/project/runbook.toml"), "{err}");
    }

    #[test]
    fn a_role_listing_a_host_twice_and_two_names_for_one_host_are_refused() {
        let err = parse(&format!(
            "{BASE}\n[env.prod]\nhosts = {{ web1 = \"10.0.0.1\" }}\nroles = {{ web = [\"web1\", \"web1\"] }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`env.prod.roles.web`: lists host `web1` twice"),
            "{err}"
        );
        let err = parse(&format!(
            "{BASE}\n[env.prod]\nhosts = {{ web1 = \"10.0.0.1\", web2 = \"10.0.0.1:22\" }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "`env.prod.hosts.web2`: `web1` and `web2` are the same host (10.0.0.1:22)"
            ),
            "{err}"
        );
        // The same machine with two deploy paths, or another port, is two hosts.
        parse(&format!(
            "{BASE}\n[env.prod]\nhosts = {{ a = {{ address = \"10.0.0.1\", deploy_path = \"/srv/a\" }}, b = {{ address = \"10.0.0.1\", deploy_path = \"/srv/b\" }}, c = \"10.0.0.1:2222\" }}\n"
        ))
        .unwrap();
    }

    #[test]
    fn role_naming_an_undefined_host_is_rejected() {
        let err = parse(&format!(
            "{BASE}\n[env.prod]\nhosts = {{ web1 = \"10.0.0.1\" }}\nroles = {{ web = [\"web1\", \"web3\"] }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("env.prod.roles.web"), "{err}");
        assert!(err.contains("`web3`"), "{err}");
        assert!(err.contains("defined: web1"), "{err}");
    }

    #[test]
    fn host_settings_resolve_from_host_then_env_then_defaults() {
        let inv = parse(&format!(
            "{BASE}\n[ssh]\nuser = \"deploy\"\nport = 2200\n[env.prod]\nuser = \"ops\"\nhosts = {{ a = \"10.0.0.1\", b = \"10.0.0.2:2222\", c = {{ address = \"10.0.0.3\", user = \"root\" }} }}\n"
        ))
        .unwrap();
        let env = inv.env("prod").unwrap();
        let a = env.host("a").unwrap();
        assert_eq!((a.port, a.user.as_deref()), (2200, Some("ops")));
        let b = env.host("b").unwrap();
        assert_eq!((b.address.as_str(), b.port), ("10.0.0.2", 2222));
        assert_eq!(env.host("c").unwrap().user.as_deref(), Some("root"));
        assert_eq!(a.ssh.host_key_check, HostKeyCheck::Strict);
    }

    #[test]
    fn host_key_check_off_is_not_accepted() {
        let err = parse(&format!(
            "{BASE}\n[ssh]\nhost_key_check = \"off\"\n[env.p]\nhosts = {{ a = \"h\" }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("host_key_check"), "{err}");
    }

    #[test]
    fn relative_deploy_path_is_refused_for_ssh_hosts() {
        let err =
            parse("[app]\nname = \"x\"\ndeploy_path = \"rel\"\n[env.p]\nhosts = { a = \"h\" }\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("app.deploy_path"), "{err}");
        assert!(err.contains("absolute"), "{err}");
    }

    #[test]
    fn relative_deploy_path_is_resolved_against_the_file_for_local_hosts() {
        let inv = parse(
            "[app]\nname = \"x\"\ndeploy_path = \"target/demo\"\n[env.demo]\ntransport = \"local\"\nhosts = { box = \"localhost\" }\n",
        )
        .unwrap();
        assert_eq!(inv.env("demo").unwrap().deploy_path, "/project/target/demo");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = parse(&format!(
            "{BASE}\n[ssh]\nconnect_timeout = \"ten\"\n[env.p]\nhosts = {{ a = \"h\" }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("env.p.ssh.connect_timeout"), "{err}");
    }

    #[test]
    fn secrets_must_be_named_by_environment_variable() {
        let err = parse(&format!(
            "{BASE}\n[notify.slack]\nwebhook = \"https://hooks.example/abc\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("webhook"), "{err}");
        let inv = parse(&format!(
            "{BASE}\n[notify.slack]\nwebhook = {{ env = \"SLACK_WEBHOOK_URL\" }}\n"
        ))
        .unwrap();
        assert_eq!(inv.secret_names(), vec!["SLACK_WEBHOOK_URL".to_owned()]);
    }

    #[test]
    fn unknown_env_lists_known_ones() {
        let inv = parse(&format!("{BASE}\n[env.staging]\nhosts = {{ a = \"h\" }}\n")).unwrap();
        let err = inv.env("prod").unwrap_err().to_string();
        assert!(err.contains("staging"), "{err}");
    }

    #[test]
    fn shards_cover_every_host_exactly_once_and_patterns_filter() {
        let hosts: Vec<String> = (1..=10)
            .map(|i| format!("h{i:02} = \"10.0.0.{i}\""))
            .collect();
        let inv = parse(&format!(
            "{BASE}\n[env.p]\nhosts = {{ {} }}\nroles = {{ web = [\"h01\", \"h02\"] }}\n",
            hosts.join(", ")
        ))
        .unwrap();
        let env = inv.env("p").unwrap();
        let mut seen = Vec::new();
        for i in 1..=3 {
            let shard = env.subset(None, Some((i, 3)));
            let again = env.subset(None, Some((i, 3)));
            assert_eq!(shard.hosts, again.hosts, "deterministic");
            seen.extend(shard.hosts.iter().map(|h| h.name.clone()));
        }
        seen.sort();
        assert_eq!(
            seen,
            env.hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>()
        );
        let some = env.subset(Some("h0?"), None);
        assert_eq!(some.hosts.len(), 9);
        assert_eq!(some.subset(None, Some((2, 2))).roles["web"], ["h02"]);
        assert!(wildcard("web*", "web12") && wildcard("*1", "web1") && !wildcard("web?", "web12"));
    }

    #[test]
    fn address_user_and_key_may_come_from_environment_variables() {
        use std::os::unix::fs::PermissionsExt;
        let text = format!(
            "{BASE}\n[ssh]\nuser = {{ env = \"RB_T_USER\" }}\nidentity = {{ env = \"RB_T_KEY\" }}\n[env.prod]\nhosts = {{ web1 = {{ address = {{ env = \"RB_T_HOST\" }} }}, web2 = {{ address = \"10.0.0.2\", identity_file = \"/k\" }} }}\n"
        );
        let set = |name: &str| match name {
            "RB_T_USER" => Some("deploy".to_owned()),
            "RB_T_HOST" => Some("10.9.8.7:2222".to_owned()),
            "RB_T_KEY" => Some("-----BEGIN KEY-----\r\nabc\r\n-----END KEY-----".to_owned()),
            _ => None,
        };
        let inv = Inventory::parse_with(Path::new("/p/runbook.toml"), &text, &set).unwrap();
        let env = inv.envs["prod"].clone();
        assert!(env.unresolved.is_empty(), "{:?}", env.unresolved);
        let web1 = env.host("web1").unwrap();
        assert_eq!(
            (web1.address.as_str(), web1.port, web1.user.as_deref()),
            ("10.9.8.7", 2222, Some("deploy"))
        );
        assert_eq!(
            web1.identity.as_ref().map(|r| r.env.as_str()),
            Some("RB_T_KEY")
        );
        // A host's own identity_file wins over the [ssh] key.
        let web2 = env.host("web2").unwrap();
        assert_eq!(
            (web2.identity_file.as_deref(), web2.identity.is_none()),
            (Some("/k"), true)
        );
        assert!(inv.secret_names().contains(&"RB_T_KEY".to_owned()));

        let opened = identity::materialize(&env, &set).unwrap();
        let key = opened.host("web1").unwrap().identity_file.clone().unwrap();
        let key = std::path::PathBuf::from(key);
        let dir = key.parent().unwrap().to_path_buf();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&key), mode(&dir)), (0o600, 0o700));
        assert_eq!(
            std::fs::read_to_string(&key).unwrap(),
            "-----BEGIN KEY-----\nabc\n-----END KEY-----\n"
        );
        assert_eq!(
            opened.host("web2").unwrap().identity_file.as_deref(),
            Some("/k")
        );
        let copy = opened.clone();
        drop(opened);
        assert!(
            key.exists(),
            "removed while a clone of the environment still lives"
        );
        drop(copy);
        assert!(!dir.exists(), "the key directory outlived the environment");
    }

    #[test]
    fn a_variable_that_is_not_set_refuses_the_environment_naming_the_key() {
        let text = format!(
            "{BASE}\n[env.prod]\nuser = {{ env = \"RB_T_NOUSER\" }}\nhosts = {{ web1 = {{ address = {{ env = \"RB_T_NOHOST\" }} }} }}\n[env.stage]\nhosts = {{ s = \"10.0.0.1\" }}\n"
        );
        let inv = Inventory::parse_with(Path::new("/p/runbook.toml"), &text, &|_| None).unwrap();
        assert_eq!(
            inv.envs["prod"].unresolved,
            [
                (
                    "env.prod.hosts.web1.address".to_owned(),
                    "RB_T_NOHOST".to_owned()
                ),
                ("env.prod.user".to_owned(), "RB_T_NOUSER".to_owned())
            ]
        );
        let err = inv.env("prod").unwrap_err().to_string();
        assert!(
            err.contains("`env.prod.hosts.web1.address` reads RB_T_NOHOST"),
            "{err}"
        );
        assert!(err.contains("`env.prod.user` reads RB_T_NOUSER"), "{err}");
        assert!(err.contains("export RB_T_NOHOST, RB_T_NOUSER"), "{err}");
        // Another environment is not held up by production's secrets.
        assert!(inv.env("stage").is_ok());
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(split_address("h:22").unwrap(), ("h".into(), Some(22)));
        assert_eq!(
            split_address("[::1]:2222").unwrap(),
            ("::1".into(), Some(2222))
        );
        assert_eq!(split_address("::1").unwrap(), ("::1".into(), None));
        assert!(split_address("h:http").is_err());
        assert!(split_address("h:0").is_err());
    }
}
