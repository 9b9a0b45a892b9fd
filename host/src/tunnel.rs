//! SSH tunnels to single-user servers on compute nodes the hub cannot reach.
//!
//! For each ready server the host runs one `ssh -N -L 127.0.0.1:LOCAL:NODE:PORT`
//! through a gateway (the instance's submit host or a configured one) and
//! tells the hub `127.0.0.1:LOCAL`. A watcher re-opens a tunnel whose ssh
//! process died, on the same local port so the hub's route stays valid. Each
//! tunnel is its own connection (no ControlMaster), so one failing tunnel
//! never takes others down. Host-key checking is strict, as for every SSH
//! use of the host.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::config::SshConfig;

/// How often the watcher checks the tunnels.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long a new tunnel may take to accept connections.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

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

struct Tunnel {
    spec: TunnelSpec,
    ssh: SshConfig,
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
    pub local: String,
    pub via: String,
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
                        tracing::warn!(
                            spawn = %t.spec.key,
                            "tunnel 127.0.0.1:{} → {}:{} via {} ended ({status}); re-opening",
                            t.local.port(), t.spec.target_host, t.spec.target_port, t.spec.via
                        );
                        match start(&t.ssh, &t.spec, t.local.port()) {
                            Ok(mut child) => {
                                drain_stderr(&mut child, &t.spec.key);
                                t.child = child;
                                t.restarts += 1;
                            }
                            Err(e) => {
                                tracing::error!(spawn = %t.spec.key, "cannot re-open tunnel: {e:#}")
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
        crate::capability::ssh::check_host(&spec.via).map_err(anyhow::Error::msg)?;
        crate::capability::ssh::check_host(&spec.target_host).map_err(anyhow::Error::msg)?;
        {
            let tunnels = self.inner.lock().await;
            if let Some(t) = tunnels.get(&spec.key) {
                if t.spec == spec {
                    return Ok(t.local);
                }
            }
        }
        self.close(&spec.key).await;
        let port = match local_port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut child = start(ssh, &spec, port)?;
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
            spec.key.clone(),
            Tunnel {
                spec,
                ssh: ssh.clone(),
                local,
                child,
                restarts: 0,
            },
        );
        Ok(local)
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
            .map(|t| TunnelInfo {
                key: t.spec.key.clone(),
                local: t.local.to_string(),
                via: t.spec.via.clone(),
                target: format!("{}:{}", t.spec.target_host, t.spec.target_port),
                pid: t.child.id(),
                restarts: t.restarts,
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

fn start(ssh: &SshConfig, spec: &TunnelSpec, local_port: u16) -> Result<Child> {
    let mut argv = vec!["-N".to_string()];
    argv.extend(crate::capability::ssh::client_args(
        ssh,
        spec.user.as_deref(),
        &[
            "ControlMaster=no".into(),
            "ControlPath=none".into(),
            "ExitOnForwardFailure=yes".into(),
            "ServerAliveInterval=15".into(),
            "ServerAliveCountMax=3".into(),
        ],
    ));
    argv.push("-L".into());
    // An IPv6 target goes in brackets.
    let target = if spec.target_host.contains(':') {
        format!("[{}]", spec.target_host)
    } else {
        spec.target_host.clone()
    };
    argv.push(format!(
        "127.0.0.1:{local_port}:{target}:{}",
        spec.target_port
    ));
    argv.push("--".into());
    argv.push(spec.via.clone());
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
        let key = key.to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(e).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::warn!(spawn = %key, "tunnel ssh: {l}");
            }
        });
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(l.local_addr()?.port())
}
