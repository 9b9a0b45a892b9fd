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
    pub instances: BTreeMap<String, InstanceConfig>,
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
    pub connect_timeout: Duration,
    /// The OpenSSH client.
    pub program: PathBuf,
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
    /// execution host: an exact name, or a suffix starting with `.`
    /// (e.g. `.cluster.example.org`).
    pub callback_hosts: Vec<String>,
}

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
}

fn any_args() -> Vec<String> {
    vec!["**".into()]
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(30),
            output_bytes: 1 << 20,
            concurrent_calls: 16,
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
    instances: BTreeMap<String, RawInstance>,
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
    #[serde(default)]
    callback_hosts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<PathBuf>,
    known_hosts: PathBuf,
    control_persist_secs: Option<u64>,
    reuse_connections: Option<bool>,
    connect_timeout_secs: Option<u64>,
    program: Option<PathBuf>,
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
    for (i, a) in ri.run_as.iter().enumerate() {
        if i == 0 && !a.starts_with('/') {
            bail!("run_as[0]: {a:?} must be an absolute path (e.g. \"/usr/sbin/runuser\")");
        }
    }
    if !ri.run_as.is_empty() && !ri.run_as.iter().any(|a| a.contains("{user}")) {
        bail!("run_as: no element contains {{user}}; e.g. [\"/usr/sbin/runuser\", \"-u\", \"{{user}}\", \"--\"]");
    }
    let d = Limits::default();
    let secs = |v: Option<f64>, key: &str, default: Duration| -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
            Some(s) => bail!("limits.{key}: {s} is out of range; give seconds between 0 and 86400"),
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
    };
    for (i, g) in ri.grants.ssh.iter().enumerate() {
        let at = format!("grants.ssh[{i}]");
        check_program_name(&g.program).map_err(|m| anyhow::anyhow!("{at}.program: {m}"))?;
        wasmspawner_argpattern::validate(&g.args).map_err(|e| anyhow::anyhow!("{at}.args: {e}"))?;
        if g.hosts.is_empty() {
            bail!(
                "{at}.hosts: name at least one host (globs allowed, e.g. \"login*.example.org\")"
            );
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
                connect_timeout: Duration::from_secs(rs.connect_timeout_secs.unwrap_or(10).max(1)),
                program: rs
                    .program
                    .map(|p| abs(&p))
                    .unwrap_or_else(|| PathBuf::from("/usr/bin/ssh")),
            })
        }
    };
    if let Some(h) = &ri.submit_host {
        crate::capability::ssh::check_host(h).map_err(|m| anyhow::anyhow!("submit_host: {m}"))?;
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
    let lifecycle = resolve_lifecycle(&ri.lifecycle)?;
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
            crate::capability::ssh::check_host(&via)
                .map_err(|m| anyhow::anyhow!("tunnel.via: {m}"))?;
            let Some(ssh) = &ssh else {
                bail!("[instances.{name}.tunnel] needs [instances.{name}.ssh] with at least known_hosts");
            };
            let callback = match &t.callback {
                None => None,
                Some(c) => Some(resolve_reverse_callback(name, &via, ssh, c)?),
            };
            Some(TunnelConfig { via, callback })
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

fn resolve_lifecycle(r: &RawLifecycle) -> Result<Lifecycle> {
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
    let l = Lifecycle {
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
    };
    if l.fast_poll > l.poll_interval {
        bail!(
            "lifecycle.fast_poll_secs: {} is longer than poll_interval_secs ({}); the fast interval must not be slower",
            l.fast_poll.as_secs_f64(),
            l.poll_interval.as_secs_f64()
        );
    }
    for (i, h) in l.callback_hosts.iter().enumerate() {
        let name = h.strip_prefix('.').unwrap_or(h);
        if !crate::model::valid_host(name) {
            bail!("lifecycle.callback_hosts[{i}]: {h:?} is not a host name or a suffix like \".cluster.example.org\"");
        }
    }
    Ok(l)
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
