//! The host's TOML config file: where state lives, how the HTTP API listens,
//! and each plugin instance with its site config, grants and limits.
//!
//! Every error names the file, the key and what is expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The whole config, resolved: paths absolute, patterns checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub state_dir: PathBuf,
    /// Compiled plugins (default `<state_dir>/cache`); may be shared.
    pub cache_dir: Option<PathBuf>,
    pub http: HttpConfig,
    pub audit: AuditConfig,
    pub instances: BTreeMap<String, InstanceConfig>,
}

/// `[audit]`: the audit log's rotation. The log is `<state_dir>/audit.jsonl`;
/// when it reaches `max_mib` it is renamed to `audit.jsonl.1` (older ones
/// shift up) and at most `keep` old files stay, so the log never takes more
/// than `max_mib × (keep + 1)` of disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub max_bytes: u64,
    pub keep: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_bytes: 64 << 20,
            keep: 4,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: String,
    /// File holding the API bearer token (the hub's secret).
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token, when no file is set.
    pub token_env: String,
    /// The URL jobs use to reach the host (for the port callback).
    pub public_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub name: String,
    /// The component file (`.wasm`).
    pub plugin: PathBuf,
    /// When set, a component with another sha256 is refused.
    pub sha256: Option<String>,
    /// Where bare program names are looked up, in order.
    pub search_path: Vec<PathBuf>,
    /// The plugin's site config, handed to it as JSON.
    pub config: serde_json::Value,
    pub grants: Grants,
    pub limits: Limits,
    /// argv prefix for commands run on behalf of a user (submit and cancel),
    /// `{user}` replaced by the validated user name, e.g.
    /// `["/usr/sbin/runuser", "-u", "{user}", "--"]`.
    pub run_as: Vec<String>,
    /// How to reach remote hosts (`[instances.X.ssh]`), for a submit host and
    /// for the plugin's own `ssh` calls.
    pub ssh: Option<SshConfig>,
    /// When set, every program of `grants.programs` runs on this host over
    /// SSH (the site's login node), without any change to the plugin.
    pub submit_host: Option<String>,
    /// How the spawn service drives this instance's jobs.
    pub lifecycle: Lifecycle,
    /// Compute nodes are not routable from the hub: reach each server
    /// through an SSH tunnel via this gateway (`[instances.X.tunnel]`).
    pub tunnel: Option<TunnelConfig>,
}

/// `[instances.X.tunnel]`: forward each ready server to 127.0.0.1.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// The gateway host (default: `submit_host`), reached with `[ssh]`.
    pub via: String,
    /// Jobs cannot reach the host either: call back through a reverse
    /// tunnel on the gateway (`[instances.X.tunnel.callback]`).
    pub callback: Option<ReverseCallback>,
    /// The local ports server tunnels take (`local_ports = "41000-41999"`),
    /// inclusive; `None`: any free port. Reserve the range from the
    /// ephemeral ports (`net.ipv4.ip_local_reserved_ports`).
    pub local_ports: Option<(u16, u16)>,
}

/// `[instances.X.tunnel.callback]`: one `ssh -R` per instance, from the
/// gateway's `bind:port` to this host's HTTP listener, and the URL jobs are
/// told to call back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseCallback {
    /// The port the gateway listens on for jobs.
    pub port: u16,
    /// The gateway address to bind (`None`: the gateway's sshd decides,
    /// which is loopback unless its `GatewayPorts` says otherwise).
    pub bind: Option<String>,
    /// The base URL jobs use, e.g. `http://login1:9571`.
    pub url: String,
}

/// Connection settings for SSH.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// The remote account; `{user}` is replaced by the hub user. Default:
    /// the host's own user name.
    pub user: Option<String>,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    /// Host keys are checked strictly against this file only.
    pub known_hosts: PathBuf,
    /// Share one connection per host between calls (ControlMaster).
    pub reuse_connections: bool,
    /// How long an idle shared connection stays open (ControlPersist).
    pub control_persist: Duration,
    /// The longest a shared connection is used: after that new calls open a
    /// fresh one (and the keeper closes the old one).
    pub master_max_age: Duration,
    pub connect_timeout: Duration,
    /// The OpenSSH client.
    pub program: PathBuf,
    /// A submit host's jobs: their home directory there (`home`, `{user}`
    /// the hub user), e.g. `/home/{user}`; `None`: none is given and the
    /// job starts where the remote login does. The hub machine's accounts
    /// are never asked for a remote job.
    pub home: Option<String>,
}

/// A program the plugin may run on matching hosts over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshGrant {
    /// Host name globs, e.g. `["login*.cluster.example.org"]`.
    pub hosts: Vec<String>,
    pub program: String,
    #[serde(default = "any_args")]
    pub args: Vec<String>,
    #[serde(default)]
    pub spawn_env: bool,
    /// The exports that may use this grant (default: submit, status, cancel).
    #[serde(default = "default_phases")]
    pub phases: Vec<Phase>,
    /// As whom the program runs on the remote side (see [`GrantRunAs`]).
    #[serde(default)]
    pub run_as: Option<GrantRunAs>,
}

/// Per-instance lifecycle settings of the spawn service
/// (`[instances.NAME.lifecycle]`).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Time between two batched `status` calls (a jitter of up to 10% is added).
    pub poll_interval: Duration,
    /// Interval used while a spawn is fresh (submitted, not yet ready) or stopping.
    pub fast_poll: Duration,
    /// How long after submit a pending spawn counts as fresh.
    pub fast_window: Duration,
    /// Longest wait in the queue before the job is cancelled and the spawn fails.
    pub queue_timeout: Duration,
    /// Longest time from "running" to the server's callback.
    pub start_timeout: Duration,
    /// Consecutive `unknown` answers after which a spawn is flagged.
    pub unknown_grace_polls: u32,
    /// Extra hosts a callback may name when the scheduler reports another
    /// execution host: an exact name, a suffix starting with `.`
    /// (e.g. `.cluster.example.org`), an address or a CIDR network. They
    /// still pass the execution-host rule ([`crate::exec_host`]), where they
    /// count as allowed besides `execution_hosts`.
    pub callback_hosts: Vec<String>,
    /// The hosts a spawn's server may be at (the scheduler's execution host
    /// and the callback's host): exact names, `.suffix` domains, CIDR
    /// networks. Empty: any name or address outside the classes
    /// [`crate::exec_host`] never allows.
    pub execution_hosts: Vec<crate::exec_host::Rule>,
    /// Loopback execution hosts (127.0.0.0/8, ::1, `localhost`) are allowed.
    /// Default: true only for a local instance (no `submit_host`, no
    /// `tunnel`), whose jobs run on this host.
    pub allow_loopback: bool,
    /// How long a stopped or failed spawn's record (and its events) is kept
    /// after it ended; then it is purged (`GET /v1/spawns` no longer lists
    /// it, its request id may be used again).
    pub retention: Duration,
}

/// The default of `lifecycle.retention_secs`: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            poll_interval: Duration::from_secs(10),
            fast_poll: Duration::from_secs(1),
            fast_window: Duration::from_secs(120),
            queue_timeout: Duration::from_secs(24 * 3600),
            start_timeout: Duration::from_secs(300),
            unknown_grace_polls: 5,
            callback_hosts: Vec::new(),
            execution_hosts: Vec::new(),
            // A local instance's (see `resolve_lifecycle`).
            allow_loopback: true,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// What the operator allows an instance to do.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub programs: Vec<ProgramGrant>,
    pub detached: Vec<ProgramGrant>,
    pub ssh: Vec<SshGrant>,
    pub env: Vec<EnvGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramGrant {
    /// A bare name resolved through `search_path`, or an absolute path.
    pub program: String,
    /// Argument patterns (`*`, `**`, globs, literals).
    #[serde(default = "any_args")]
    pub args: Vec<String>,
    /// The command may receive the spawn's environment (the hub's token).
    #[serde(default)]
    pub spawn_env: bool,
    /// The executable that runs when the plugin asks for `program`, for a
    /// site whose command has another name or place (e.g. a wrapper
    /// `/opt/site/bin/sbatch-jupyter` for `sbatch`). Absolute; default:
    /// `program` looked up in `search_path`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The exports that may use this grant (default: submit, status,
    /// cancel; `form` and `validate` only where written).
    #[serde(default = "default_phases")]
    pub phases: Vec<Phase>,
    /// As whom the program runs (see [`GrantRunAs`]); default: as the hub
    /// user when the instance has `run_as`, else as the host.
    #[serde(default)]
    pub run_as: Option<GrantRunAs>,
}

fn any_args() -> Vec<String> {
    vec!["**".into()]
}

/// A plugin export, the phase of the spawn a capability call is made in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Form,
    Validate,
    Submit,
    Status,
    Cancel,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Form,
        Phase::Validate,
        Phase::Submit,
        Phase::Status,
        Phase::Cancel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Form => "form",
            Phase::Validate => "validate",
            Phase::Submit => "submit",
            Phase::Status => "status",
            Phase::Cancel => "cancel",
        }
    }

    /// Whether calls of this phase are made for one hub user (so a grant
    /// that runs as the user can run there). `status` asks about the jobs
    /// of many users at once.
    pub fn has_user(self) -> bool {
        !matches!(self, Phase::Status)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `form, submit`: phases for messages and tables.
pub fn phase_list(phases: &[Phase]) -> String {
    phases
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The phases a grant has when it names none: never `form` or `validate`.
pub fn default_phases() -> Vec<Phase> {
    vec![Phase::Submit, Phase::Status, Phase::Cancel]
}

/// A grant's `run_as`: `"host"` (the host's own identity), `"user"` (the
/// instance's `run_as` prefix), or its own argv prefix with `{user}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum GrantRunAs {
    Named(RunAsName),
    Prefix(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunAsName {
    Host,
    User,
}

/// Who a granted program runs as, resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "as", content = "prefix")]
pub enum Identity {
    /// The host's own user.
    Host,
    /// The hub user, through this argv prefix (`{user}` replaced).
    User(Vec<String>),
}

impl Identity {
    /// The identity of a grant in an instance with `instance_run_as`.
    pub fn of(grant: Option<&GrantRunAs>, instance_run_as: &[String]) -> Identity {
        match grant {
            Some(GrantRunAs::Named(RunAsName::Host)) => Identity::Host,
            Some(GrantRunAs::Named(RunAsName::User)) => Identity::User(instance_run_as.to_vec()),
            Some(GrantRunAs::Prefix(p)) => Identity::User(p.clone()),
            None if instance_run_as.is_empty() => Identity::Host,
            None => Identity::User(instance_run_as.to_vec()),
        }
    }

    /// For `check` and `audit`: "as the host" or "as the user via …".
    pub fn describe(&self) -> String {
        match self {
            Identity::Host => format!("as the host ({})", crate::users::current_user_name()),
            Identity::User(p) => format!("as the hub user via `{}`", p.join(" ")),
        }
    }
}

/// One environment variable a child may receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvGrant {
    /// `NAME`: passed through from the host's environment when set there;
    /// a plugin may also set it.
    Pass(String),
    /// `NAME=VALUE`: always set to this value; a plugin may not change it.
    Fixed(String, String),
}

impl EnvGrant {
    pub fn name(&self) -> &str {
        match self {
            EnvGrant::Pass(n) | EnvGrant::Fixed(n, _) => n,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory of one plugin call.
    pub memory_bytes: usize,
    /// Wall-clock deadline of one plugin call.
    pub call_timeout: Duration,
    /// Default timeout of one program a plugin runs.
    pub command_timeout: Duration,
    /// Cap on each of stdout and stderr of one program.
    pub output_bytes: usize,
    /// Plugin calls of this instance in flight at once.
    pub concurrent_calls: usize,
    /// Programs (process, detached, ssh) one plugin call may start.
    pub max_runs_per_call: u32,
    /// Programs the instance may start in any one minute.
    pub max_runs_per_minute: u32,
    /// Plugin log lines the instance may write in any 10 seconds; the rest
    /// are dropped and counted.
    pub log_lines_per_10s: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(30),
            output_bytes: 1 << 20,
            concurrent_calls: 16,
            max_runs_per_call: 32,
            max_runs_per_minute: 600,
            log_lines_per_10s: 200,
        }
    }
}

// ----- the file as written -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    instances: BTreeMap<String, RawInstance>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    max_mib: Option<u64>,
    keep: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    public_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    plugin: PathBuf,
    sha256: Option<String>,
    search_path: Option<Vec<PathBuf>>,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    grants: RawGrants,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    run_as: Vec<String>,
    ssh: Option<RawSsh>,
    submit_host: Option<String>,
    #[serde(default)]
    lifecycle: RawLifecycle,
    tunnel: Option<RawTunnel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    via: Option<String>,
    local_ports: Option<String>,
    callback: Option<RawReverseCallback>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReverseCallback {
    port: u16,
    bind: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    poll_interval_secs: Option<f64>,
    fast_poll_secs: Option<f64>,
    fast_window_secs: Option<f64>,
    queue_timeout_secs: Option<f64>,
    start_timeout_secs: Option<f64>,
    unknown_grace_polls: Option<u32>,
    retention_secs: Option<f64>,
    #[serde(default)]
    callback_hosts: Vec<String>,
    #[serde(default)]
    execution_hosts: Vec<String>,
    allow_loopback: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<PathBuf>,
    known_hosts: PathBuf,
    control_persist_secs: Option<u64>,
    master_max_age_secs: Option<u64>,
    reuse_connections: Option<bool>,
    connect_timeout_secs: Option<u64>,
    program: Option<PathBuf>,
    home: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    #[serde(default)]
    programs: Vec<ProgramGrant>,
    #[serde(default)]
    detached: Vec<ProgramGrant>,
    #[serde(default)]
    ssh: Vec<SshGrant>,
    #[serde(default)]
    env: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mib: Option<u64>,
    call_timeout_secs: Option<f64>,
    command_timeout_secs: Option<f64>,
    output_bytes: Option<usize>,
    concurrent_calls: Option<usize>,
    max_runs_per_call: Option<u32>,
    max_runs_per_minute: Option<u32>,
    log_lines_per_10s: Option<u32>,
}

pub const DEFAULT_SEARCH_PATH: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Parses config text as if read from `path` (relative paths in it are
    /// relative to the file's directory).
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let file = path.display().to_string();
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{file}: {}", e.to_string().trim()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).unwrap_or(base);
        let abs = |p: &Path| {
            if p.is_absolute() {
                normalize(p)
            } else {
                normalize(&base.join(p))
            }
        };

        let state_dir = abs(&raw
            .state_dir
            .ok_or_else(|| anyhow::anyhow!("{file}: `state_dir` is missing; set it to a directory the host may write, e.g. state_dir = \"/var/lib/wasmspawner\""))?);

        let http = HttpConfig {
            listen: raw.http.listen.unwrap_or_else(|| "127.0.0.1:8765".into()),
            token_file: raw.http.token_file.as_deref().map(abs),
            token_env: raw
                .http
                .token_env
                .unwrap_or_else(|| "WASMSPAWNER_TOKEN".into()),
            public_url: match raw.http.public_url {
                None => None,
                Some(u) if (u.starts_with("http://") || u.starts_with("https://")) && !u.contains(char::is_whitespace) => {
                    Some(u.trim_end_matches('/').to_string())
                }
                Some(u) => bail!("{file}: http.public_url: {u:?} is not an http:// or https:// URL; give the base URL jobs use to reach this host, e.g. \"http://hub-node:8765\""),
            },
        };

        let d = AuditConfig::default();
        let audit = AuditConfig {
            max_bytes: match raw.audit.max_mib {
                None => d.max_bytes,
                Some(m) if (1..=1 << 20).contains(&m) => m << 20,
                Some(m) => bail!("{file}: audit.max_mib: {m} is out of range; give 1 to 1048576"),
            },
            keep: match raw.audit.keep {
                None => d.keep,
                Some(k) if k <= 1000 => k,
                Some(k) => bail!("{file}: audit.keep: {k} is out of range; give 0 to 1000"),
            },
        };
        let mut instances = BTreeMap::new();
        for (name, ri) in raw.instances {
            let key = format!("instances.{name}");
            check_name(&name).map_err(|m| anyhow::anyhow!("{file}: [{key}]: {m}"))?;
            let inst = resolve_instance(&name, ri, &abs)
                .map_err(|e| anyhow::anyhow!("{file}: [{key}] {e}"))?;
            instances.insert(name, inst);
        }
        Ok(Config {
            path: path.to_path_buf(),
            cache_dir: raw.cache_dir.as_deref().map(abs),
            state_dir,
            http,
            audit,
            instances,
        })
    }

    pub fn instance(&self, name: &str) -> Result<&InstanceConfig> {
        self.instances.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.instances.keys().map(String::as_str).collect();
            anyhow::anyhow!(
                "{}: no plugin instance `{name}`; the file defines: {}",
                self.path.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}

/// Removes `.` and `..` components lexically (no symlinks resolved), so
/// paths in messages read as the operator expects.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "instance name `{name}` must be 1-64 characters of a-z, 0-9, - and _, starting with a letter"
        ))
    }
}

fn resolve_instance(
    name: &str,
    ri: RawInstance,
    abs: &dyn Fn(&Path) -> PathBuf,
) -> Result<InstanceConfig> {
    let abs = |p: &Path| abs(p);
    if let Some(pin) = &ri.sha256 {
        if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("sha256: expected 64 hex digits (the output of `sha256sum` on the .wasm), got {pin:?}");
        }
    }
    let search_path_set = ri.search_path.is_some();
    let search_path: Vec<PathBuf> = match ri.search_path {
        Some(p) => p,
        None => DEFAULT_SEARCH_PATH.iter().map(PathBuf::from).collect(),
    };
    if let Some(rel) = search_path.iter().find(|p| !p.is_absolute()) {
        bail!(
            "search_path: {} is not absolute; list absolute directories like \"/opt/slurm/bin\"",
            rel.display()
        );
    }
    for (kind, list) in [
        ("programs", &ri.grants.programs),
        ("detached", &ri.grants.detached),
    ] {
        for (i, g) in list.iter().enumerate() {
            let at = format!("grants.{kind}[{i}]");
            check_program_name(&g.program).map_err(|m| anyhow::anyhow!("{at}.program: {m}"))?;
            wasmspawner_argpattern::validate(&g.args)
                .map_err(|e| anyhow::anyhow!("{at}.args: {e}"))?;
            check_grant_identity(&at, &g.phases, g.run_as.as_ref(), &ri.run_as)?;
            if let Some(p) = g.path.as_ref().filter(|p| !p.is_absolute()) {
                bail!(
                    "{at}.path: {} is not absolute; give the executable's full path, e.g. \"/opt/site/bin/sbatch-jupyter\"",
                    p.display()
                );
            }
        }
    }
    let mut env = Vec::new();
    for (i, e) in ri.grants.env.iter().enumerate() {
        let g = match e.split_once('=') {
            Some((n, v)) => EnvGrant::Fixed(n.to_string(), v.to_string()),
            None => EnvGrant::Pass(e.clone()),
        };
        if !valid_env_name(g.name()) {
            bail!(
                "grants.env[{i}]: {e:?} is not NAME or NAME=VALUE with NAME of A-Z, a-z, 0-9 and _"
            );
        }
        env.push(g);
    }
    if !ri.run_as.is_empty() {
        check_run_as("run_as", &ri.run_as)?;
    }
    let d = Limits::default();
    let secs = |v: Option<f64>, key: &str, default: Duration| -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
            Some(s) => bail!("limits.{key}: {s} is out of range; give seconds between 0 and 86400"),
        }
    };
    let count = |v: Option<u32>, key: &str, min: u32, max: u32, default: u32| -> Result<u32> {
        match v {
            None => Ok(default),
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(n) => bail!("limits.{key}: {n} is out of range; give {min} to {max}"),
        }
    };
    let limits = Limits {
        memory_bytes: match ri.limits.memory_mib {
            None => d.memory_bytes,
            Some(m) if (1..=4096).contains(&m) => (m as usize) << 20,
            Some(m) => bail!("limits.memory_mib: {m} is out of range; give 1 to 4096"),
        },
        call_timeout: secs(
            ri.limits.call_timeout_secs,
            "call_timeout_secs",
            d.call_timeout,
        )?,
        command_timeout: secs(
            ri.limits.command_timeout_secs,
            "command_timeout_secs",
            d.command_timeout,
        )?,
        output_bytes: ri.limits.output_bytes.unwrap_or(d.output_bytes).max(1024),
        concurrent_calls: match ri.limits.concurrent_calls {
            None => d.concurrent_calls,
            Some(n) if (1..=1024).contains(&n) => n,
            Some(n) => bail!("limits.concurrent_calls: {n} is out of range; give 1 to 1024"),
        },
        max_runs_per_call: count(
            ri.limits.max_runs_per_call,
            "max_runs_per_call",
            1,
            10_000,
            d.max_runs_per_call,
        )?,
        max_runs_per_minute: count(
            ri.limits.max_runs_per_minute,
            "max_runs_per_minute",
            1,
            1_000_000,
            d.max_runs_per_minute,
        )?,
        log_lines_per_10s: count(
            ri.limits.log_lines_per_10s,
            "log_lines_per_10s",
            1,
            1_000_000,
            d.log_lines_per_10s,
        )?,
    };
    for (i, g) in ri.grants.ssh.iter().enumerate() {
        let at = format!("grants.ssh[{i}]");
        check_program_name(&g.program).map_err(|m| anyhow::anyhow!("{at}.program: {m}"))?;
        wasmspawner_argpattern::validate(&g.args).map_err(|e| anyhow::anyhow!("{at}.args: {e}"))?;
        check_grant_identity(&at, &g.phases, g.run_as.as_ref(), &ri.run_as)?;
        if g.hosts.is_empty() {
            bail!(
                "{at}.hosts: name at least one host (globs allowed, e.g. \"login*.example.org\")"
            );
        }
        for (j, h) in g.hosts.iter().enumerate() {
            // A glob is checked as the host names it can match: `*` and `?`
            // stand for letters, the rest is the submit_host rule.
            let probe = h.replace(['*', '?'], "x");
            crate::ssh_cmd::check_host(&probe).map_err(|_| {
                anyhow::anyhow!("{at}.hosts[{j}]: {h:?} is not a host name pattern; give DNS names or addresses, with * and ? as wildcards (e.g. \"login*.example.org\")")
            })?;
        }
    }
    let ssh = match ri.ssh {
        None => None,
        Some(rs) => {
            let known_hosts = abs(&rs.known_hosts);
            if !known_hosts.is_file() {
                bail!(
                    "ssh.known_hosts: {} does not exist; create it with the login node's host key (e.g. `ssh-keyscan -p PORT HOST > FILE`, then check the fingerprint with the site)",
                    known_hosts.display()
                );
            }
            let identity_file = rs.identity_file.as_deref().map(abs);
            if let Some(id) = &identity_file {
                if !id.is_file() {
                    bail!("ssh.identity_file: {} does not exist", id.display());
                }
            }
            if let Some(h) = &rs.home {
                let probe = h.replace("{user}", "user");
                if !probe.starts_with('/')
                    || probe.contains(['{', '}', '$', '`', '\\', '\n'])
                    || probe.split('/').any(|c| c == "..")
                {
                    bail!("instances.{name}.ssh.home: {h:?} is not an absolute path (with {{user}} for the hub user), e.g. \"/home/{{user}}\"");
                }
            }
            if let Some(u) = &rs.user {
                let probe = u.replace("{user}", "user");
                if crate::model::check_user_name(&probe).is_err() {
                    bail!("ssh.user: {u:?} is not an account name (or \"{{user}}\")");
                }
            }
            Some(SshConfig {
                user: rs.user,
                port: rs.port.unwrap_or(22),
                identity_file,
                known_hosts,
                reuse_connections: rs.reuse_connections.unwrap_or(true),
                control_persist: Duration::from_secs(rs.control_persist_secs.unwrap_or(600).max(1)),
                master_max_age: match rs.master_max_age_secs {
                    None => Duration::from_secs(3600),
                    Some(s) if (10..=7 * 86_400).contains(&s) => Duration::from_secs(s),
                    Some(s) => bail!("instances.{name}.ssh.master_max_age_secs: {s} is out of range; give 10 to 604800 seconds"),
                },
                connect_timeout: Duration::from_secs(rs.connect_timeout_secs.unwrap_or(10).max(1)),
                program: rs
                    .program
                    .map(|p| abs(&p))
                    .unwrap_or_else(|| PathBuf::from("/usr/bin/ssh")),
                home: rs.home,
            })
        }
    };
    if let Some(h) = &ri.submit_host {
        crate::ssh_cmd::check_host(h).map_err(|m| anyhow::anyhow!("submit_host: {m}"))?;
        if search_path_set {
            bail!("search_path: the programs of a submit_host instance run on {h} and are found there by the login PATH of ssh.user, not in search_path; remove search_path, and give a grant an absolute `path` where the login PATH does not find it (`wasmspawner check` shows where each program resolves on {h})");
        }
        if ssh.is_none() {
            bail!("submit_host is set but [instances.{name}.ssh] is missing; it needs at least known_hosts");
        }
        if !ri.grants.detached.is_empty() {
            bail!("grants.detached: detached processes run on this host, which a submit_host instance does not use");
        }
    }
    if !ri.grants.ssh.is_empty() && ssh.is_none() {
        bail!("grants.ssh needs [instances.{name}.ssh] with at least known_hosts");
    }
    let local = ri.submit_host.is_none() && ri.tunnel.is_none();
    let lifecycle = resolve_lifecycle(&ri.lifecycle, local)?;
    let tunnel = match &ri.tunnel {
        None => None,
        Some(t) => {
            let via = t
                .via
                .clone()
                .or_else(|| ri.submit_host.clone())
                .ok_or_else(|| {
                    anyhow::anyhow!("tunnel.via: name the gateway host (or set submit_host)")
                })?;
            crate::ssh_cmd::check_host(&via).map_err(|m| anyhow::anyhow!("tunnel.via: {m}"))?;
            let Some(ssh) = &ssh else {
                bail!("[instances.{name}.tunnel] needs [instances.{name}.ssh] with at least known_hosts");
            };
            let callback = match &t.callback {
                None => None,
                Some(c) => Some(resolve_reverse_callback(name, &via, ssh, c)?),
            };
            let local_ports = match &t.local_ports {
                None => None,
                Some(r) => Some(
                    parse_port_range(r)
                        .map_err(|m| anyhow::anyhow!("instances.{name}.tunnel.local_ports: {m}"))?,
                ),
            };
            Some(TunnelConfig {
                via,
                callback,
                local_ports,
            })
        }
    };
    let config = serde_json::to_value(&ri.config).context("config: cannot be expressed as JSON")?;
    Ok(InstanceConfig {
        name: name.to_string(),
        plugin: abs(&ri.plugin),
        sha256: ri.sha256.map(|s| s.to_ascii_lowercase()),
        search_path,
        config,
        grants: Grants {
            programs: ri.grants.programs,
            detached: ri.grants.detached,
            ssh: ri.grants.ssh,
            env,
        },
        limits,
        run_as: ri.run_as,
        ssh,
        submit_host: ri.submit_host,
        lifecycle,
        tunnel,
    })
}

/// `"FIRST-LAST"`: an inclusive range of unprivileged ports.
fn parse_port_range(r: &str) -> Result<(u16, u16), String> {
    let fix = "give \"FIRST-LAST\" with 1024 <= FIRST <= LAST <= 65535, e.g. \"41000-41999\"";
    let (a, b) = r
        .split_once('-')
        .ok_or_else(|| format!("{r:?} is not a range; {fix}"))?;
    let (Ok(a), Ok(b)) = (a.trim().parse::<u16>(), b.trim().parse::<u16>()) else {
        return Err(format!("{r:?} is not a range of port numbers; {fix}"));
    };
    if a < 1024 || a > b {
        return Err(format!("{r:?} is out of order or privileged; {fix}"));
    }
    Ok((a, b))
}

fn resolve_reverse_callback(
    name: &str,
    via: &str,
    ssh: &SshConfig,
    c: &RawReverseCallback,
) -> Result<ReverseCallback> {
    let key = format!("instances.{name}.tunnel.callback");
    if c.port == 0 {
        bail!("{key}.port: give the port the gateway listens on for job callbacks (1-65535)");
    }
    if let Some(b) = &c.bind {
        if b != "*" && !crate::model::valid_host(b) {
            bail!("{key}.bind: {b:?} is not an address; give the gateway address to listen on, e.g. \"0.0.0.0\" (needs GatewayPorts clientspecified on the gateway) or \"*\"");
        }
    }
    if ssh.user.as_deref().is_some_and(|u| u.contains("{user}")) {
        bail!("{key}: the reverse tunnel is one connection for all users, but instances.{name}.ssh.user names {{user}}; give a fixed service account in ssh.user");
    }
    let url = match &c.url {
        Some(u) if (u.starts_with("http://") || u.starts_with("https://"))
            && !u.contains(char::is_whitespace) =>
        {
            u.trim_end_matches('/').to_string()
        }
        Some(u) => bail!("{key}.url: {u:?} is not an http:// or https:// URL; give the base URL jobs use to reach the gateway, e.g. \"http://login1:{}\"", c.port),
        None if via.contains(':') => format!("http://[{via}]:{}", c.port),
        None => format!("http://{via}:{}", c.port),
    };
    Ok(ReverseCallback {
        port: c.port,
        bind: c.bind.clone(),
        url,
    })
}

/// `local`: the instance has no `submit_host` and no `tunnel` (the default
/// of `allow_loopback`).
fn resolve_lifecycle(r: &RawLifecycle, local: bool) -> Result<Lifecycle> {
    let d = Lifecycle::default();
    let secs =
        |v: Option<f64>, key: &str, min: f64, max: f64, default: Duration| -> Result<Duration> {
            match v {
                None => Ok(default),
                Some(s) if s >= min && s <= max => Ok(Duration::from_secs_f64(s)),
                Some(s) => bail!(
                    "lifecycle.{key}: {s} is out of range; give seconds between {min} and {max}"
                ),
            }
        };
    let mut l = Lifecycle {
        poll_interval: secs(
            r.poll_interval_secs,
            "poll_interval_secs",
            0.05,
            3600.0,
            d.poll_interval,
        )?,
        fast_poll: secs(
            r.fast_poll_secs,
            "fast_poll_secs",
            0.05,
            3600.0,
            d.fast_poll,
        )?,
        fast_window: secs(
            r.fast_window_secs,
            "fast_window_secs",
            0.0,
            86_400.0,
            d.fast_window,
        )?,
        queue_timeout: secs(
            r.queue_timeout_secs,
            "queue_timeout_secs",
            1.0,
            30.0 * 86_400.0,
            d.queue_timeout,
        )?,
        start_timeout: secs(
            r.start_timeout_secs,
            "start_timeout_secs",
            1.0,
            86_400.0,
            d.start_timeout,
        )?,
        unknown_grace_polls: match r.unknown_grace_polls {
            None => d.unknown_grace_polls,
            Some(n) if (1..=10_000).contains(&n) => n,
            Some(n) => bail!("lifecycle.unknown_grace_polls: {n} is out of range; give 1 to 10000"),
        },
        callback_hosts: r.callback_hosts.clone(),
        execution_hosts: Vec::new(),
        allow_loopback: r.allow_loopback.unwrap_or(local),
        retention: secs(
            r.retention_secs,
            "retention_secs",
            1.0,
            3650.0 * 86_400.0,
            d.retention,
        )?,
    };
    if l.fast_poll > l.poll_interval {
        bail!(
            "lifecycle.fast_poll_secs: {} is longer than poll_interval_secs ({}); the fast interval must not be slower",
            l.fast_poll.as_secs_f64(),
            l.poll_interval.as_secs_f64()
        );
    }
    for (key, list) in [
        ("callback_hosts", &r.callback_hosts),
        ("execution_hosts", &r.execution_hosts),
    ] {
        for (i, h) in list.iter().enumerate() {
            let rule = crate::exec_host::Rule::parse(h)
                .and_then(|rule| rule.check_config(l.allow_loopback).map(|_| rule))
                .map_err(|m| anyhow::anyhow!("lifecycle.{key}[{i}]: {m}"))?;
            if key == "execution_hosts" {
                l.execution_hosts.push(rule);
            }
        }
    }
    Ok(l)
}

/// A grant's phases and identity: at least one phase, none twice; `run_as =
/// "user"` needs the instance's `run_as`; a prefix is checked like it; a
/// grant that runs as the user cannot serve `status`, which is not made for
/// one user.
fn check_grant_identity(
    at: &str,
    phases: &[Phase],
    run_as: Option<&GrantRunAs>,
    instance_run_as: &[String],
) -> Result<()> {
    if phases.is_empty() {
        bail!("{at}.phases: name at least one of \"form\", \"validate\", \"submit\", \"status\", \"cancel\" (or remove the key for submit, status and cancel)");
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(p) = phases.iter().find(|p| !seen.insert(**p)) {
        bail!("{at}.phases: \"{p}\" appears twice");
    }
    match run_as {
        Some(GrantRunAs::Named(RunAsName::User)) if instance_run_as.is_empty() => bail!(
            "{at}.run_as: \"user\" means the instance's run_as prefix, but the instance has no run_as; set run_as = [\"/usr/sbin/runuser\", \"-u\", \"{{user}}\", \"--\"] on the instance or give the prefix here"
        ),
        Some(GrantRunAs::Prefix(p)) => check_run_as(&format!("{at}.run_as"), p)?,
        _ => {}
    }
    if let Identity::User(prefix) = Identity::of(run_as, instance_run_as) {
        if phases.contains(&Phase::Status) && run_as.is_some() {
            bail!(
                "{at}: runs as the hub user (`{}`) but lists phase \"status\", whose calls are made for many users at once; give status its own grant with run_as = \"host\"",
                prefix.join(" ")
            );
        }
    }
    Ok(())
}

/// An argv prefix that switches to the hub user.
fn check_run_as(key: &str, prefix: &[String]) -> Result<()> {
    match prefix.first() {
        None => bail!("{key}: is empty; give e.g. [\"/usr/sbin/runuser\", \"-u\", \"{{user}}\", \"--\"], or \"host\""),
        Some(a) if !a.starts_with('/') => {
            bail!("{key}[0]: {a:?} must be an absolute path (e.g. \"/usr/sbin/runuser\")")
        }
        _ => {}
    }
    if !prefix.iter().any(|a| a.contains("{user}")) {
        bail!("{key}: no element contains {{user}}; e.g. [\"/usr/sbin/runuser\", \"-u\", \"{{user}}\", \"--\"]");
    }
    Ok(())
}

fn check_program_name(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("is empty".into());
    }
    if p.contains('*') {
        return Err(format!(
            "{p:?}: a grant names one program; patterns are for arguments"
        ));
    }
    if p.contains('/') && !p.starts_with('/') {
        return Err(format!(
            "{p:?}: give a bare name (looked up in search_path) or an absolute path"
        ));
    }
    Ok(())
}

pub fn valid_env_name(n: &str) -> bool {
    !n.is_empty()
        && !n.as_bytes()[0].is_ascii_digit()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/etc/wasmspawner/host.toml"), text)
    }

    #[test]
    fn minimal_instance_gets_defaults_and_absolute_paths() {
        let c =
            parse("state_dir = \"state\"\n[instances.local]\nplugin = \"plugins/local.wasm\"\n")
                .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/wasmspawner/state"));
        let i = c.instance("local").unwrap();
        assert_eq!(
            i.plugin,
            PathBuf::from("/etc/wasmspawner/plugins/local.wasm")
        );
        assert_eq!(i.search_path[0], PathBuf::from("/usr/local/bin"));
        assert_eq!(i.limits.memory_bytes, 64 << 20);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\nplugins = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/wasmspawner/host.toml:"), "{e}");
        assert!(e.contains("plugins"), "{e}");

        let e = parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\n[[instances.a.grants.programs]]\nprogram = \"sbatch\"\nargs = [\"**\", \"x\"]\n").unwrap_err().to_string();
        assert!(e.contains("[instances.a] grants.programs[0].args"), "{e}");

        let e = parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\n[instances.a.limits]\nmemory_mib = 0\n").unwrap_err().to_string();
        assert!(e.contains("limits.memory_mib"), "{e}");

        let e = parse("[instances.a]\nplugin = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("state_dir"), "{e}");

        let e = parse("state_dir = \"s\"\n[instances.Bad]\nplugin = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("instance name"), "{e}");

        let e = parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\nrun_as = [\"runuser\", \"-u\", \"{user}\"]\n").unwrap_err().to_string();
        assert!(e.contains("run_as[0]"), "{e}");
    }

    #[test]
    fn lifecycle_defaults_and_errors_name_the_key() {
        let c = parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\n[instances.a.lifecycle]\npoll_interval_secs = 30\nunknown_grace_polls = 3\n").unwrap();
        let l = &c.instance("a").unwrap().lifecycle;
        assert_eq!(l.poll_interval, Duration::from_secs(30));
        assert_eq!(l.unknown_grace_polls, 3);
        assert_eq!(l.start_timeout, Duration::from_secs(300));
        let e = parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\n[instances.a.lifecycle]\nstart_timeout_secs = 0\n").unwrap_err().to_string();
        assert!(
            e.contains("host.toml") && e.contains("[instances.a] lifecycle.start_timeout_secs"),
            "{e}"
        );
        let e = parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\n[instances.a.lifecycle]\ncallback_hosts = [\"bad host\"]\n").unwrap_err().to_string();
        assert!(e.contains("lifecycle.callback_hosts[0]"), "{e}");
        let e = parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\n[instances.a.lifecycle]\npoll_secs = 1\n").unwrap_err().to_string();
        assert!(e.contains("poll_secs"), "{e}");
    }

    #[test]
    fn execution_hosts_and_allow_loopback() {
        let local = "state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\n[instances.a.lifecycle]\n";
        let l = parse(local)
            .unwrap()
            .instance("a")
            .unwrap()
            .lifecycle
            .clone();
        assert!(l.allow_loopback && l.execution_hosts.is_empty());
        let c = parse(&format!("{local}execution_hosts = [\"node1\", \".cluster.example.org\", \"10.1.0.0/16\"]\ncallback_hosts = [\"127.0.0.1\"]\n")).unwrap();
        let l = &c.instance("a").unwrap().lifecycle;
        let shown: Vec<String> = l.execution_hosts.iter().map(|r| r.to_string()).collect();
        assert_eq!(shown, ["node1", ".cluster.example.org", "10.1.0.0/16"]);
        // A remote instance (submit_host or tunnel): no loopback by default.
        let kh = tempfile::NamedTempFile::new().unwrap();
        let remote = format!("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\nsubmit_host = \"login1\"\n[instances.a.ssh]\nknown_hosts = \"{}\"\n[instances.a.lifecycle]\n", kh.path().display());
        let c = parse(&remote).unwrap();
        assert!(!c.instance("a").unwrap().lifecycle.allow_loopback);
        let e = parse(&format!(
            "{remote}execution_hosts = [\"node1\", \"10.0.0.0/8\", \"localhost\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("lifecycle.execution_hosts[2]") && e.contains("allow_loopback"),
            "{e}"
        );
        let c = parse(&format!(
            "{remote}allow_loopback = true\nexecution_hosts = [\"localhost\"]\n"
        ))
        .unwrap();
        assert!(c.instance("a").unwrap().lifecycle.allow_loopback);
        for (list, bad) in [
            (
                "execution_hosts = [\"169.254.169.254\"]",
                "execution_hosts[0]",
            ),
            (
                "execution_hosts = [\"a\", \"10.0.0.0/40\"]",
                "execution_hosts[1]",
            ),
            (
                "callback_hosts = [\"metadata.google.internal\"]",
                "callback_hosts[0]",
            ),
            ("execution_hosts = [\"fe80::/10\"]", "never allowed"),
        ] {
            let e = parse(&format!("{local}{list}\n")).unwrap_err().to_string();
            assert!(e.contains(bad), "{list}: {e}");
        }
    }

    #[test]
    fn env_grants_pass_and_fixed() {
        let c = parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\n[instances.a.grants]\nenv = [\"PATH\", \"SLURM_CONF=/etc/slurm.conf\"]\n").unwrap();
        let g = &c.instance("a").unwrap().grants.env;
        assert_eq!(g[0], EnvGrant::Pass("PATH".into()));
        assert_eq!(
            g[1],
            EnvGrant::Fixed("SLURM_CONF".into(), "/etc/slurm.conf".into())
        );
        assert!(parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\n[instances.a.grants]\nenv = [\"BAD-NAME\"]\n").is_err());
    }

    #[test]
    fn remote_jobs_get_their_home_from_the_config_only() {
        let kh = tempfile::NamedTempFile::new().unwrap();
        let base = format!("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\nsubmit_host = \"login1\"\n[instances.a.ssh]\nknown_hosts = \"{}\"\n", kh.path().display());
        let c = parse(&base).unwrap();
        // root has a home on this machine; a remote job never gets it.
        assert_eq!(
            crate::ssh_cmd::remote_home(c.instance("a").unwrap(), "root"),
            crate::ssh_cmd::JobHome::Remote(None)
        );
        let c = parse(&format!("{base}home = \"/home/{{user}}\"\n")).unwrap();
        assert_eq!(
            crate::ssh_cmd::remote_home(c.instance("a").unwrap(), "root"),
            crate::ssh_cmd::JobHome::Remote(Some("/home/root".into()))
        );
        let e = parse(&format!("{base}home = \"home/$x\"\n")).unwrap_err();
        assert!(format!("{e:#}").contains("ssh.home"), "{e:#}");
        let local = parse("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\n").unwrap();
        assert_eq!(
            crate::ssh_cmd::remote_home(local.instance("a").unwrap(), "root"),
            crate::ssh_cmd::JobHome::Local
        );
    }

    #[test]
    fn tunnel_ports_and_ssh_grant_hosts_are_checked() {
        let kh = tempfile::NamedTempFile::new().unwrap();
        let base = format!("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\nsubmit_host = \"login1\"\n[instances.a.ssh]\nknown_hosts = \"{}\"\n", kh.path().display());
        let c = parse(&format!(
            "{base}[instances.a.tunnel]\nlocal_ports = \"41000-41999\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.instance("a")
                .unwrap()
                .tunnel
                .as_ref()
                .unwrap()
                .local_ports,
            Some((41000, 41999))
        );
        for bad in ["41999-41000", "80-90", "x", "41000-70000"] {
            let e = parse(&format!(
                "{base}[instances.a.tunnel]\nlocal_ports = \"{bad}\"\n"
            ))
            .unwrap_err();
            assert!(
                format!("{e:#}").contains("instances.a.tunnel.local_ports"),
                "{bad}: {e:#}"
            );
        }
        let grant = |h: &str| {
            format!("{base}[[instances.a.grants.ssh]]\nhosts = [\"{h}\"]\nprogram = \"echo\"\n")
        };
        assert!(parse(&grant("login*.example.org")).is_ok());
        for bad in ["-oProxyCommand=id", "a b", "login;id"] {
            let e = parse(&grant(bad)).unwrap_err();
            assert!(
                format!("{e:#}").contains("grants.ssh[0].hosts[0]"),
                "{bad}: {e:#}"
            );
        }
    }

    #[test]
    fn callback_tunnel_defaults_and_errors() {
        let kh = tempfile::NamedTempFile::new().unwrap();
        let base = format!("state_dir = \"s\"\n[instances.a]\nplugin = \"x\"\nsubmit_host = \"login1\"\n[instances.a.ssh]\nknown_hosts = \"{}\"\n", kh.path().display());
        let c = parse(&format!(
            "{base}[instances.a.tunnel]\n[instances.a.tunnel.callback]\nport = 9571\n"
        ))
        .unwrap();
        let t = c.instance("a").unwrap().tunnel.as_ref().unwrap();
        assert_eq!(t.via, "login1");
        assert_eq!(
            t.callback,
            Some(ReverseCallback {
                port: 9571,
                bind: None,
                url: "http://login1:9571".into()
            })
        );
        let c = parse(&format!("{base}[instances.a.tunnel]\n[instances.a.tunnel.callback]\nport = 9571\nbind = \"0.0.0.0\"\nurl = \"http://login1.example.org:9571/\"\n")).unwrap();
        let cb = c
            .instance("a")
            .unwrap()
            .tunnel
            .as_ref()
            .unwrap()
            .callback
            .clone()
            .unwrap();
        assert_eq!(cb.url, "http://login1.example.org:9571");
        assert_eq!(cb.bind.as_deref(), Some("0.0.0.0"));

        for (extra, names) in [
            ("port = 0\n", "tunnel.callback.port"),
            ("port = 1\nbind = \"a b\"\n", "tunnel.callback.bind"),
            ("port = 1\nurl = \"login1:9571\"\n", "tunnel.callback.url"),
            ("prot = 1\n", "prot"),
        ] {
            let e = parse(&format!(
                "{base}[instances.a.tunnel]\n[instances.a.tunnel.callback]\n{extra}"
            ))
            .unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains(names), "{extra}: {e}");
        }
        let e = parse(&format!("{base}user = \"{{user}}\"\n[instances.a.tunnel]\n[instances.a.tunnel.callback]\nport = 9571\n")).unwrap_err();
        assert!(format!("{e:#}").contains("ssh.user"), "{e:#}");
    }
}
