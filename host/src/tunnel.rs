//! SSH tunnels between the host and compute nodes that cannot be reached
//! directly.
//!
//! - Server tunnels: for each ready server the host runs one
//!   `ssh -N -L 127.0.0.1:LOCAL:NODE:PORT` through a gateway (the instance's
//!   submit host or a configured one) and tells the hub `127.0.0.1:LOCAL`.
//! - Callback tunnels: for an instance whose jobs cannot reach the host, one
//!   `ssh -N -R [BIND:]PORT:127.0.0.1:HOSTPORT` on the gateway, so jobs call
//!   back to the gateway's `PORT`.
//!
//! A watcher re-opens a tunnel whose ssh process died, on the same ports so
//! the hub's route and the jobs' callback URL stay valid. Each tunnel is its
//! own connection (no ControlMaster), so one failing tunnel never takes
//! others down. Host-key checking is strict, as for every SSH use of the host.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::Mutex;

use crate::config::SshConfig;

/// How often the watcher checks the tunnels.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long a new tunnel may take to accept connections.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a callback tunnel may take to confirm its remote port.
pub const REVERSE_TIMEOUT: Duration = Duration::from_secs(15);

/// What to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// The spawn the tunnel serves.
    pub key: String,
    /// The gateway to connect to.
    pub via: String,
    /// The account on the gateway (`None`: the host's own).
    pub user: Option<String>,
    /// The server, as the gateway reaches it.
    pub target_host: String,
    pub target_port: u16,
}

/// A callback tunnel: the gateway's `[bind:]port` forwarded to this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseSpec {
    /// What the tunnel is for (`callback:INSTANCE`).
    pub key: String,
    pub via: String,
    pub user: Option<String>,
    /// The gateway address to listen on (`None`: sshd's default).
    pub bind: Option<String>,
    /// The port the gateway listens on.
    pub remote_port: u16,
    /// This host's HTTP listener.
    pub to: SocketAddr,
}

/// Either direction, as the watcher re-opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Direction {
    ToServer(TunnelSpec),
    ToHost(ReverseSpec),
}

impl Direction {
    fn key(&self) -> &str {
        match self {
            Direction::ToServer(s) => &s.key,
            Direction::ToHost(r) => &r.key,
        }
    }
}

struct Tunnel {
    spec: Direction,
    ssh: SshConfig,
    /// Server tunnels: the hub's end. Callback tunnels: this host's listener.
    local: SocketAddr,
    child: Child,
    restarts: u32,
}

/// The open tunnels and their watcher.
pub struct Tunnels {
    inner: Arc<Mutex<HashMap<String, Tunnel>>>,
    watcher: tokio::task::JoinHandle<()>,
}

/// What `list` reports of one tunnel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TunnelInfo {
    pub key: String,
    /// `false` for a server tunnel (`-L`), `true` for a callback one (`-R`).
    pub reverse: bool,
    pub local: String,
    pub via: String,
    /// Server tunnels: the node's server. Callback tunnels: the gateway's
    /// listening address.
    pub target: String,
    pub pid: Option<u32>,
    pub restarts: u32,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self::new()
    }
}

impl Tunnels {
    pub fn new() -> Tunnels {
        let inner: Arc<Mutex<HashMap<String, Tunnel>>> = Arc::default();
        let watched = inner.clone();
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                let mut tunnels = watched.lock().await;
                for t in tunnels.values_mut() {
                    if let Ok(Some(status)) = t.child.try_wait() {
                        let key = t.spec.key().to_string();
                        tracing::warn!(
                            spawn = %key,
                            "tunnel {} ended ({status}); re-opening",
                            describe(&t.spec, t.local)
                        );
                        match start(&t.ssh, &t.spec, t.local.port()) {
                            Ok(mut child) => {
                                drain_stderr(&mut child, &key);
                                t.child = child;
                                t.restarts += 1;
                            }
                            Err(e) => {
                                tracing::error!(spawn = %key, "cannot re-open tunnel: {e:#}")
                            }
                        }
                    }
                }
            }
        });
        Tunnels { inner, watcher }
    }

    /// Opens (or returns the already open) tunnel for `spec.key`; `local_port`
    /// reuses a port (after a host restart), else a free one is picked.
    /// Returns the local address once it accepts connections.
    pub async fn open(
        &self,
        ssh: &SshConfig,
        spec: TunnelSpec,
        local_port: Option<u16>,
    ) -> Result<SocketAddr> {
        crate::ssh_cmd::check_host(&spec.via).map_err(anyhow::Error::msg)?;
        crate::ssh_cmd::check_host(&spec.target_host).map_err(anyhow::Error::msg)?;
        let wanted = Direction::ToServer(spec.clone());
        if let Some(local) = self.keep_or_close(&wanted).await {
            return Ok(local);
        }
        let port = match local_port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut child = start(ssh, &wanted, port)?;
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = e.read_to_string(&mut stderr).await;
                }
                bail!("the tunnel's ssh exited ({status}): {}", stderr.trim());
            }
            if tokio::net::TcpStream::connect(local).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                bail!(
                    "the tunnel to {}:{} via {} did not open within {:?}",
                    spec.target_host,
                    spec.target_port,
                    spec.via,
                    OPEN_TIMEOUT
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drain_stderr(&mut child, &spec.key);
        self.inner.lock().await.insert(
            spec.key,
            Tunnel {
                spec: wanted,
                ssh: ssh.clone(),
                local,
                child,
                restarts: 0,
            },
        );
        Ok(local)
    }

    /// Opens (or keeps) the callback tunnel `spec`: returns once the
    /// gateway confirmed its listening port, or the reason it refused.
    pub async fn open_reverse(&self, ssh: &SshConfig, spec: ReverseSpec) -> Result<()> {
        crate::ssh_cmd::check_host(&spec.via).map_err(anyhow::Error::msg)?;
        let wanted = Direction::ToHost(spec.clone());
        if self.keep_or_close(&wanted).await.is_some() {
            return Ok(());
        }
        let mut child = start(ssh, &wanted, spec.to.port())?;
        let stderr = child.stderr.take().expect("piped");
        // At LogLevel DEBUG1 ssh says `remote forward success` once the
        // gateway listens (with ExitOnForwardFailure it exits if it refuses).
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let confirmed = tokio::time::timeout(REVERSE_TIMEOUT, async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("remote forward success") {
                    return true;
                }
                if !l.starts_with("debug") {
                    said.push(l);
                }
            }
            false
        })
        .await;
        match confirmed {
            Ok(true) => {}
            Ok(false) => {
                let status = child.wait().await?;
                bail!(
                    "the callback tunnel {} ended ({status}): {}",
                    describe(&wanted, spec.to),
                    said.join("; ")
                );
            }
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "the callback tunnel {} was not confirmed within {REVERSE_TIMEOUT:?}: {}",
                    describe(&wanted, spec.to),
                    said.join("; ")
                );
            }
        }
        log_lines(lines, spec.key.clone());
        self.inner.lock().await.insert(
            spec.key,
            Tunnel {
                local: spec.to,
                spec: wanted,
                ssh: ssh.clone(),
                child,
                restarts: 0,
            },
        );
        Ok(())
    }

    /// The local address of the tunnel already open as `wanted`; a tunnel
    /// under the same key with other settings is closed.
    async fn keep_or_close(&self, wanted: &Direction) -> Option<SocketAddr> {
        {
            let tunnels = self.inner.lock().await;
            if let Some(t) = tunnels.get(wanted.key()) {
                if &t.spec == wanted {
                    return Some(t.local);
                }
            }
        }
        self.close(wanted.key()).await;
        None
    }

    /// Closes the tunnel of `key`, if any.
    pub async fn close(&self, key: &str) {
        if let Some(mut t) = self.inner.lock().await.remove(key) {
            let _ = t.child.kill().await;
        }
    }

    pub async fn list(&self) -> Vec<TunnelInfo> {
        self.inner
            .lock()
            .await
            .values()
            .map(|t| {
                let (reverse, via, target) = match &t.spec {
                    Direction::ToServer(s) => (
                        false,
                        &s.via,
                        format!("{}:{}", s.target_host, s.target_port),
                    ),
                    Direction::ToHost(r) => (
                        true,
                        &r.via,
                        format!("{}:{}", r.bind.as_deref().unwrap_or(""), r.remote_port),
                    ),
                };
                TunnelInfo {
                    key: t.spec.key().to_string(),
                    reverse,
                    local: t.local.to_string(),
                    via: via.clone(),
                    target,
                    pid: t.child.id(),
                    restarts: t.restarts,
                }
            })
            .collect()
    }
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        self.watcher.abort();
        // kill_on_drop on every child closes the tunnels.
    }
}

/// `127.0.0.1:LOCAL → NODE:PORT via GW` or `GW:[BIND:]PORT → 127.0.0.1:HOSTPORT`.
fn describe(spec: &Direction, local: SocketAddr) -> String {
    match spec {
        Direction::ToServer(s) => format!(
            "{local} → {}:{} via {}",
            s.target_host, s.target_port, s.via
        ),
        Direction::ToHost(r) => format!(
            "{}:{}{} → {}",
            r.via,
            r.bind
                .as_deref()
                .map(|b| format!("{b}:"))
                .unwrap_or_default(),
            r.remote_port,
            r.to
        ),
    }
}

/// An IPv6 address goes in brackets in a forward.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn start(ssh: &SshConfig, spec: &Direction, local_port: u16) -> Result<Child> {
    let (via, user) = match spec {
        Direction::ToServer(s) => (&s.via, &s.user),
        Direction::ToHost(r) => (&r.via, &r.user),
    };
    let mut extra: Vec<String> = vec![
        "ControlMaster=no".into(),
        "ControlPath=none".into(),
        "ExitOnForwardFailure=yes".into(),
        "ServerAliveInterval=15".into(),
        "ServerAliveCountMax=3".into(),
    ];
    if matches!(spec, Direction::ToHost(_)) {
        // Debug output is how ssh confirms a remote forward.
        extra.push("LogLevel=DEBUG1".into());
    }
    let mut argv = vec!["-N".to_string()];
    argv.extend(crate::ssh_cmd::client_args(ssh, user.as_deref(), &extra));
    match spec {
        Direction::ToServer(s) => {
            argv.push("-L".into());
            argv.push(format!(
                "127.0.0.1:{local_port}:{}:{}",
                bracket(&s.target_host),
                s.target_port
            ));
        }
        Direction::ToHost(r) => {
            argv.push("-R".into());
            let bind = r
                .bind
                .as_deref()
                .map(|b| format!("{}:", bracket(b)))
                .unwrap_or_default();
            argv.push(format!(
                "{bind}{}:{}:{}",
                r.remote_port,
                bracket(&r.to.ip().to_string()),
                r.to.port()
            ));
        }
    }
    argv.push("--".into());
    argv.push(via.clone());
    let program: PathBuf = ssh.program.clone();
    Command::new(&program)
        .args(&argv)
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))
}

/// Sends what ssh says on stderr to the log, so the pipe never fills.
fn drain_stderr(child: &mut Child, key: &str) {
    if let Some(e) = child.stderr.take() {
        log_lines(tokio::io::BufReader::new(e).lines(), key.to_string());
    }
}

/// Logs ssh's stderr lines: its own debug output at debug level, the rest
/// (errors, warnings) at warn.
fn log_lines(mut lines: Lines<BufReader<ChildStderr>>, key: String) {
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.starts_with("debug") {
                tracing::debug!(spawn = %key, "tunnel ssh: {l}");
            } else {
                tracing::warn!(spawn = %key, "tunnel ssh: {l}");
            }
        }
    });
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(l.local_addr()?.port())
}
