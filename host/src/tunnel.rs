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
//! Each tunnel has its own supervisor task, which re-opens a tunnel whose
//! ssh ended on the same ports (so the hub's route and the jobs' callback
//! URL stay valid), backing off ([`crate::ssh_cmd::Backoff`]) and logging
//! once per change between open and down. A tunnel counts as open only when
//! it is provably ours: a server tunnel when its 127.0.0.1 port is a
//! listening socket held by that very ssh process (`/proc/net/tcp` inode in
//! `/proc/PID/fd`; with `ExitOnForwardFailure` ssh exits when it cannot
//! bind), a callback tunnel when ssh reports `remote forward success`. A
//! port someone else holds is never claimed: the tunnel stays down (and its
//! spawn flagged by the service) until the port is free again.
//!
//! Each tunnel is its own connection (no ControlMaster), so one failing
//! tunnel never takes others down. Host-key checking is strict, as for every
//! SSH use of the host. Tunnels opened for a state directory carry a marker
//! in their argv (`-o LocalCommand=wasmspawner-tunnel-HASH`, inert under
//! `PermitLocalCommand=no`), by which [`Tunnels::for_state_dir`] finds and
//! ends the ssh processes a killed host left behind.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::config::SshConfig;
use crate::ssh_cmd::Backoff;

/// How often a starting tunnel is checked.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long a new tunnel may take to listen.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a callback tunnel may take to confirm its remote port.
pub const REVERSE_TIMEOUT: Duration = Duration::from_secs(15);
/// A tunnel that stayed open this long resets its backoff when it ends.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// At most this many ports a new server tunnel tries (each one found taken
/// only after ssh tried it).
const PORT_TRIES: usize = 8;

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
    /// The local ports a new tunnel may take (`tunnel.local_ports`);
    /// `None`: any free one.
    pub local_ports: Option<(u16, u16)>,
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
    /// This host's listener for job callbacks.
    pub to: SocketAddr,
}

/// Either direction.
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
    fn via(&self) -> &str {
        match self {
            Direction::ToServer(s) => &s.via,
            Direction::ToHost(r) => &r.via,
        }
    }
}

/// Why one attempt to open a tunnel failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the local port (or took it first).
    #[error("local port {0} is held by another process")]
    PortTaken(u16),
    /// The short cause; ssh's own words went to the log.
    #[error("{0}")]
    Failed(String),
}

/// What the supervisor knows of a tunnel right now.
#[derive(Debug, Clone, Default)]
struct Status {
    open: bool,
    /// Why it is not open (after a failure).
    cause: Option<String>,
    pid: Option<u32>,
    /// Times it was re-opened after it had been open.
    restarts: u32,
    /// ssh processes started for it, in all.
    attempts: u32,
}

struct Entry {
    spec: Direction,
    /// Server tunnels: the hub's end. Callback tunnels: this host's listener.
    local: SocketAddr,
    status: Arc<Mutex<Status>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // The ssh child is killed when the aborted task drops it.
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The open tunnels and their supervisors.
pub struct Tunnels {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    /// The argv marker of this state directory's tunnels.
    marker: Option<String>,
    /// Where the next port search in a range starts (spreads reuse).
    cursor: Mutex<u32>,
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
    /// Open and provably ours right now.
    pub open: bool,
    /// Why it is not open.
    pub cause: Option<String>,
    pub restarts: u32,
    /// ssh processes started for it so far.
    pub attempts: u32,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tunnels {
    /// Tunnels without a state directory: nothing marks them, nothing is
    /// cleaned up at start.
    pub fn new() -> Tunnels {
        Tunnels {
            inner: Arc::default(),
            marker: None,
            cursor: Mutex::new(rand::random::<u32>()),
        }
    }

    /// The tunnels of the host whose state lives in `state_dir`: first ends
    /// the tunnel ssh processes an earlier run of it left (a host that was
    /// killed), found by the marker in their argv.
    pub fn for_state_dir(state_dir: &Path) -> Tunnels {
        let marker = marker_for(state_dir);
        let ended = end_marked(&marker);
        if ended > 0 {
            tracing::info!(
                "ended {ended} tunnel ssh process(es) an earlier run of this host left behind"
            );
        }
        Tunnels {
            marker: Some(marker),
            ..Tunnels::new()
        }
    }

    /// The argv marker of this host's tunnels (`LocalCommand=…`), if any.
    pub fn marker(&self) -> Option<String> {
        self.marker.as_ref().map(|m| format!("LocalCommand={m}"))
    }

    /// Opens (or returns the already kept) tunnel for `spec.key` and returns
    /// its local address once it is open and ours. `local_port` reuses a
    /// port, else one is taken from `spec.local_ports` (or any free one),
    /// never one another tunnel of this host holds; a port found taken is
    /// skipped. A tunnel that does not open is not kept.
    pub async fn open(
        &self,
        ssh: &SshConfig,
        spec: TunnelSpec,
        local_port: Option<u16>,
    ) -> Result<SocketAddr> {
        crate::ssh_cmd::check_host(&spec.via).map_err(anyhow::Error::msg)?;
        crate::ssh_cmd::check_host(&spec.target_host).map_err(anyhow::Error::msg)?;
        let wanted = Direction::ToServer(spec.clone());
        if let Some(local) = self.keep_or_close(&wanted) {
            return Ok(local);
        }
        if let Some(p) = local_port {
            let local = SocketAddr::from(([127, 0, 0, 1], p));
            if !self.reserve(&wanted, local) {
                anyhow::bail!("local port {p} is held by another tunnel of this host");
            }
            let what = describe(&wanted, local);
            return self
                .start(ssh, wanted, local, false)
                .await
                .map(|()| local)
                .map_err(|e| anyhow::anyhow!("the tunnel {what}: {e}"));
        }
        let mut tried = 0;
        for port in self.candidates(spec.local_ports) {
            if tried == PORT_TRIES {
                break;
            }
            let local = SocketAddr::from(([127, 0, 0, 1], port));
            if !self.reserve(&wanted, local) {
                continue;
            }
            // Someone listens there: do not even try.
            if std::net::TcpListener::bind(local).is_err() {
                lock(&self.inner).remove(wanted.key());
                continue;
            }
            tried += 1;
            match self.start(ssh, wanted.clone(), local, false).await {
                Ok(()) => return Ok(local),
                Err(e @ OpenError::PortTaken(_)) => {
                    tracing::warn!(spawn = %spec.key, "{e}; trying another port");
                }
                Err(e) => {
                    anyhow::bail!("the tunnel {}: {e}", describe(&wanted, local))
                }
            }
        }
        match spec.local_ports {
            Some((a, b)) => anyhow::bail!(
                "no free local port for the tunnel in tunnel.local_ports {a}-{b} ({tried} tried); widen the range or free ports in it"
            ),
            None => anyhow::bail!("no free local port for the tunnel ({tried} tried)"),
        }
    }

    /// Keeps the server tunnel `spec` on `local_port` (after a host
    /// restart): returns at once; the tunnel opens in the background, with
    /// backoff while it cannot (see [`Tunnels::is_open`]).
    pub fn keep(&self, ssh: &SshConfig, spec: TunnelSpec, local_port: u16) {
        let wanted = Direction::ToServer(spec);
        if self.keep_or_close(&wanted).is_some() {
            return;
        }
        let local = SocketAddr::from(([127, 0, 0, 1], local_port));
        if self.reserve(&wanted, local) {
            self.supervise(ssh, wanted, local, None);
        }
    }

    /// Opens (or keeps) the callback tunnel `spec`: returns once the
    /// gateway confirmed its listening port, or the reason it refused (then
    /// nothing is kept).
    pub async fn open_reverse(&self, ssh: &SshConfig, spec: ReverseSpec) -> Result<()> {
        crate::ssh_cmd::check_host(&spec.via).map_err(anyhow::Error::msg)?;
        let wanted = Direction::ToHost(spec.clone());
        if self.keep_or_close(&wanted).is_some() {
            return Ok(());
        }
        self.reserve(&wanted, spec.to);
        let what = describe(&wanted, spec.to);
        self.start(ssh, wanted, spec.to, false)
            .await
            .map_err(|e| anyhow::anyhow!("the callback tunnel {what}: {e}"))
    }

    /// Whether the tunnel of `key` is open and ours right now.
    pub fn is_open(&self, key: &str) -> bool {
        lock(&self.inner)
            .get(key)
            .is_some_and(|e| lock(&e.status).open)
    }

    /// Why the tunnel of `key` is not open (`None`: it is open). A key with
    /// no tunnel at all says so.
    pub fn not_open_because(&self, key: &str) -> Option<String> {
        let inner = lock(&self.inner);
        let Some(e) = inner.get(key) else {
            return Some("the tunnel is not open".into());
        };
        let s = lock(&e.status);
        if s.open {
            None
        } else {
            Some(match &s.cause {
                Some(c) => format!("the tunnel {} is down: {c}", describe(&e.spec, e.local)),
                None => format!("the tunnel {} is opening", describe(&e.spec, e.local)),
            })
        }
    }

    /// Closes the tunnel of `key`, if any, and waits for its ssh to end.
    pub async fn close(&self, key: &str) {
        let entry = lock(&self.inner).remove(key);
        if let Some(mut e) = entry {
            if let Some(t) = e.task.take() {
                t.abort();
                let _ = t.await;
            }
        }
    }

    pub async fn list(&self) -> Vec<TunnelInfo> {
        lock(&self.inner)
            .values()
            .map(|e| {
                let (reverse, target) = match &e.spec {
                    Direction::ToServer(s) => {
                        (false, format!("{}:{}", s.target_host, s.target_port))
                    }
                    Direction::ToHost(r) => (
                        true,
                        format!("{}:{}", r.bind.as_deref().unwrap_or(""), r.remote_port),
                    ),
                };
                let s = lock(&e.status).clone();
                TunnelInfo {
                    key: e.spec.key().to_string(),
                    reverse,
                    local: e.local.to_string(),
                    via: e.spec.via().to_string(),
                    target,
                    pid: s.pid,
                    open: s.open,
                    cause: s.cause,
                    restarts: s.restarts,
                    attempts: s.attempts,
                }
            })
            .collect()
    }

    /// The local address of the tunnel already kept as `wanted`; a tunnel
    /// under the same key with other settings is closed (its task aborted).
    fn keep_or_close(&self, wanted: &Direction) -> Option<SocketAddr> {
        let mut inner = lock(&self.inner);
        match inner.get(wanted.key()) {
            Some(e) if &e.spec == wanted => Some(e.local),
            Some(_) => {
                inner.remove(wanted.key());
                None
            }
            None => None,
        }
    }

    /// Books `local` for `wanted` unless another tunnel of this host holds
    /// that local address (or `wanted`'s key is taken meanwhile).
    fn reserve(&self, wanted: &Direction, local: SocketAddr) -> bool {
        let mut inner = lock(&self.inner);
        let server = matches!(wanted, Direction::ToServer(_));
        if inner.contains_key(wanted.key())
            || (server
                && inner
                    .values()
                    .any(|e| matches!(e.spec, Direction::ToServer(_)) && e.local == local))
        {
            return false;
        }
        inner.insert(
            wanted.key().to_string(),
            Entry {
                spec: wanted.clone(),
                local,
                status: Arc::default(),
                task: None,
            },
        );
        true
    }

    /// Ports to try for a new server tunnel.
    fn candidates(&self, range: Option<(u16, u16)>) -> Vec<u16> {
        match range {
            Some((a, b)) => {
                let n = u32::from(b - a) + 1;
                let start = {
                    let mut c = lock(&self.cursor);
                    *c = c.wrapping_add(1);
                    *c % n
                };
                (0..n).map(|i| a + ((start + i) % n) as u16).collect()
            }
            None => (0..PORT_TRIES)
                .filter_map(|_| {
                    std::net::TcpListener::bind("127.0.0.1:0")
                        .ok()
                        .and_then(|l| l.local_addr().ok())
                        .map(|a| a.port())
                })
                .collect(),
        }
    }

    /// Starts the supervisor of the booked `wanted` and waits for its first
    /// attempt. On failure the booking is dropped unless `keep_failed`.
    async fn start(
        &self,
        ssh: &SshConfig,
        wanted: Direction,
        local: SocketAddr,
        keep_failed: bool,
    ) -> Result<(), OpenError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let key = wanted.key().to_string();
        self.supervise(ssh, wanted, local, Some((tx, keep_failed)));
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if !keep_failed {
                    self.forget(&key, local);
                }
                Err(e)
            }
            Err(_) => {
                self.forget(&key, local);
                Err(OpenError::Failed("closed while it opened".into()))
            }
        }
    }

    /// Drops the booking of `key` if it still is the one at `local`.
    fn forget(&self, key: &str, local: SocketAddr) {
        let mut inner = lock(&self.inner);
        if inner.get(key).is_some_and(|e| e.local == local) {
            inner.remove(key);
        }
    }

    fn supervise(
        &self,
        ssh: &SshConfig,
        wanted: Direction,
        local: SocketAddr,
        first: Option<FirstResult>,
    ) {
        let mut inner = lock(&self.inner);
        let Some(entry) = inner.get_mut(wanted.key()) else {
            return;
        };
        let status = entry.status.clone();
        entry.task = Some(tokio::spawn(supervise(
            ssh.clone(),
            wanted,
            local,
            self.marker.clone(),
            status,
            first,
        )));
    }
}

/// Where the first attempt's outcome goes, and whether a failure keeps the
/// supervisor retrying.
type FirstResult = (tokio::sync::oneshot::Sender<Result<(), OpenError>>, bool);

/// Opens the tunnel, waits for its ssh to end, re-opens it, for ever (until
/// the task is aborted), backing off between attempts. Logs once per change
/// between open and down (and when the cause of being down changes).
async fn supervise(
    ssh: SshConfig,
    spec: Direction,
    local: SocketAddr,
    marker: Option<String>,
    status: Arc<Mutex<Status>>,
    mut first: Option<FirstResult>,
) {
    let key = spec.key().to_string();
    let what = describe(&spec, local);
    let mut backoff = Backoff::default();
    let mut ever_open = false;
    // The cause of being down last logged (`None`: open or opening).
    let mut logged: Option<String> = None;
    loop {
        lock(&status).attempts += 1;
        match attempt(&ssh, &spec, local, marker.as_deref()).await {
            Ok(mut running) => {
                {
                    let mut s = lock(&status);
                    s.open = true;
                    s.cause = None;
                    s.pid = running.child.id();
                    if ever_open {
                        s.restarts += 1;
                    }
                }
                ever_open = true;
                // Always a change: from opening or from down.
                tracing::info!(spawn = %key, "tunnel {what} is open");
                if let Some((tx, _)) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                let since = Instant::now();
                let exit = running.child.wait().await;
                let (cause, detail) = running.cause(exit.ok(), spec.via());
                {
                    let mut s = lock(&status);
                    s.open = false;
                    s.cause = Some(cause.clone());
                    s.pid = None;
                }
                if since.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                tracing::warn!(spawn = %key, "tunnel {what} closed: {cause}; re-opening with backoff (ssh said: {detail})");
                logged = Some(cause);
            }
            Err((e, detail)) => {
                let cause = e.to_string();
                {
                    let mut s = lock(&status);
                    s.open = false;
                    s.cause = Some(cause.clone());
                }
                if let Some((tx, keep)) = first.take() {
                    let _ = tx.send(Err(e));
                    if !keep {
                        return;
                    }
                }
                if logged.as_ref() != Some(&cause) {
                    tracing::warn!(spawn = %key, "tunnel {what} cannot open: {cause}; retrying with backoff (ssh said: {detail})");
                    logged = Some(cause);
                } else {
                    tracing::debug!(spawn = %key, "tunnel {what} still cannot open: {cause}");
                }
            }
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// One tunnel ssh that opened.
struct Running {
    child: Child,
    said: Arc<Mutex<VecDeque<String>>>,
}

impl Running {
    /// The short cause of its end and ssh's last words.
    fn cause(&self, exit: Option<std::process::ExitStatus>, via: &str) -> (String, String) {
        let said: Vec<String> = lock(&self.said).iter().cloned().collect();
        let detail = said.join("; ");
        let cause = crate::ssh_cmd::short_cause(via, &said).unwrap_or_else(|| match exit {
            Some(s) => format!("ssh ended ({s})"),
            None => "ssh ended".into(),
        });
        (cause, detail)
    }
}

/// Starts one ssh for `spec` and waits until the tunnel is provably open,
/// or the reason it is not (with ssh's words for the log).
async fn attempt(
    ssh: &SshConfig,
    spec: &Direction,
    local: SocketAddr,
    marker: Option<&str>,
) -> Result<Running, (OpenError, String)> {
    let failed = |m: String| (OpenError::Failed(m.clone()), m);
    let mut child = start(ssh, spec, local.port(), marker).map_err(|e| failed(format!("{e:#}")))?;
    let said: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let confirmed = Arc::new(tokio::sync::Notify::new());
    if let Some(e) = child.stderr.take() {
        let (said, confirmed, key) = (said.clone(), confirmed.clone(), spec.key().to_string());
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(e).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("remote forward success") {
                    confirmed.notify_one();
                }
                if l.starts_with("debug") || l.starts_with("Authenticated to") {
                    tracing::trace!(spawn = %key, "tunnel ssh: {l}");
                    continue;
                }
                tracing::debug!(spawn = %key, "tunnel ssh: {l}");
                let mut s = lock(&said);
                if s.len() == 20 {
                    s.pop_front();
                }
                s.push_back(crate::sanitize::text(&l, 512));
            }
        });
    }
    let deadline = tokio::time::Instant::now()
        + match spec {
            Direction::ToServer(_) => OPEN_TIMEOUT,
            Direction::ToHost(_) => REVERSE_TIMEOUT,
        };
    let ended =
        |child: &mut Child, said: &Mutex<VecDeque<String>>| -> Option<(OpenError, String)> {
            let status = child.try_wait().ok()??;
            let words: Vec<String> = lock(said).iter().cloned().collect();
            let detail = words.join("; ");
            if let Direction::ToServer(_) = spec {
                let taken = words.iter().any(|w| {
                    w.contains("Address already in use") || w.contains("cannot listen to port")
                }) || listener_pids(local).is_some_and(|l| !l.is_empty());
                if taken {
                    return Some((OpenError::PortTaken(local.port()), detail));
                }
            }
            let cause = crate::ssh_cmd::short_cause(spec.via(), &words)
                .unwrap_or_else(|| format!("ssh exited ({status})"));
            Some((OpenError::Failed(cause), detail))
        };
    loop {
        // ssh's stderr may still be on its way: give it a moment.
        if child.try_wait().ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(e) = ended(&mut child, &said) {
                return Err(e);
            }
        }
        let open = match spec {
            Direction::ToServer(_) => {
                let pid = child.id().unwrap_or(0);
                match listener_owned_by(local, pid) {
                    Ownership::Ours => true,
                    Ownership::Theirs => {
                        // Not ours: never claimed, and our ssh goes.
                        let _ = child.kill().await;
                        let detail = lock(&said).iter().cloned().collect::<Vec<_>>().join("; ");
                        return Err((OpenError::PortTaken(local.port()), detail));
                    }
                    Ownership::Nobody => false,
                }
            }
            Direction::ToHost(_) => false,
        };
        if open {
            return Ok(Running { child, said });
        }
        let wait = tokio::time::sleep(Duration::from_millis(50));
        tokio::select! {
            _ = wait => {}
            _ = confirmed.notified(), if matches!(spec, Direction::ToHost(_)) => {
                return Ok(Running { child, said });
            }
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill().await;
            let words: Vec<String> = lock(&said).iter().cloned().collect();
            let cause = crate::ssh_cmd::short_cause(spec.via(), &words).unwrap_or_else(|| {
                format!(
                    "not confirmed within {:?}",
                    match spec {
                        Direction::ToServer(_) => OPEN_TIMEOUT,
                        Direction::ToHost(_) => REVERSE_TIMEOUT,
                    }
                )
            });
            return Err((OpenError::Failed(cause), words.join("; ")));
        }
    }
}

/// Who holds the listening socket on a local address.
#[derive(Debug, PartialEq, Eq)]
pub enum Ownership {
    Ours,
    Theirs,
    Nobody,
}

/// Whether the TCP socket listening on `addr` (IPv4) belongs to process
/// `pid`: its inode from `/proc/net/tcp` among `/proc/PID/fd`.
pub fn listener_owned_by(addr: SocketAddr, pid: u32) -> Ownership {
    let Some(inodes) = listener_pids(addr) else {
        return Ownership::Nobody;
    };
    if inodes.is_empty() {
        return Ownership::Nobody;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Ownership::Theirs;
    };
    for fd in fds.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if inodes.iter().any(|i| i == inode) {
                    return Ownership::Ours;
                }
            }
        }
    }
    Ownership::Theirs
}

/// The inodes of the sockets listening on `addr` (IPv4, or `0.0.0.0`
/// covering it) in `/proc/net/tcp`; `None` when it cannot be read.
fn listener_pids(addr: SocketAddr) -> Option<Vec<String>> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let ip = u32::from_le_bytes(v4.ip().octets());
    let want = [
        format!("{ip:08X}:{:04X}", v4.port()),
        format!("00000000:{:04X}", v4.port()),
    ];
    Some(
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
                (f.len() > 9 && f[3] == "0A" && want.iter().any(|w| w == f[1]))
                    .then(|| f[9].to_string())
            })
            .collect(),
    )
}

/// The marker of the tunnels of `state_dir`.
fn marker_for(state_dir: &Path) -> String {
    use sha2::Digest;
    let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let h = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    format!("wasmspawner-tunnel-{}", &hex::encode(h)[..16])
}

/// Ends (TERM, then KILL) this user's processes with `LocalCommand=marker`
/// in their argv; returns how many there were.
fn end_marked(marker: &str) -> usize {
    let needle = format!("LocalCommand={marker}");
    let me = unsafe { libc::geteuid() };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if !cmdline.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
            continue;
        }
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(p.path()).is_ok_and(|m| m.uid() == me) {
            found.push(pid);
        }
    }
    for pid in &found {
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    for _ in 0..20 {
        if found
            .iter()
            .all(|pid| unsafe { libc::kill(*pid, 0) } != 0 || is_zombie(*pid))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in &found {
        if unsafe { libc::kill(*pid, 0) } == 0 && !is_zombie(*pid) {
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
    found.len()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
        .unwrap_or(true)
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

fn start(
    ssh: &SshConfig,
    spec: &Direction,
    local_port: u16,
    marker: Option<&str>,
) -> Result<Child> {
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
        "PermitLocalCommand=no".into(),
    ];
    if let Some(m) = marker {
        // Never run (PermitLocalCommand=no): how a later start finds it.
        extra.push(format!("LocalCommand={m}"));
    }
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
    let program = &ssh.program;
    Command::new(program)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_ours_only_in_our_fds() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        assert_eq!(listener_owned_by(a, std::process::id()), Ownership::Ours);
        // PID 1 does not hold it.
        assert_eq!(listener_owned_by(a, 1), Ownership::Theirs);
        drop(l);
        assert_eq!(listener_owned_by(a, std::process::id()), Ownership::Nobody);
    }

    #[test]
    fn the_marker_depends_on_the_state_dir() {
        let a = marker_for(Path::new("/var/lib/a"));
        assert_ne!(a, marker_for(Path::new("/var/lib/b")));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
