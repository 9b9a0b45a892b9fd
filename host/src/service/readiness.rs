//! Ready means listening: a spawn whose job reported its port becomes
//! `ready` only once a TCP connection to the server is accepted (through
//! the tunnel's local end where there is one), checked every
//! [`PROBE_FAST`] at first, then [`PROBE_EVERY`], for at most the instance's `lifecycle.start_timeout_secs`
//! from the callback; then it fails with a reason that says where nothing
//! listened. And no two live spawns are at one
//! host:port ([`Service::claim_endpoint`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::Service;
use crate::model::{Spawn, SpawnState};

/// Time between two connection attempts...
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// ...except during the first [`FAST_FOR`] after the callback, when a
/// server is usually still starting, and the hub waits for the moment it
/// listens: a direct connection (not through a tunnel, where each attempt
/// opens an SSH channel) is tried this often.
pub const PROBE_FAST: Duration = Duration::from_millis(20);
/// See [`PROBE_FAST`].
pub const FAST_FOR: Duration = Duration::from_secs(15);
/// Longest one attempt may take.
const ATTEMPT: Duration = Duration::from_secs(1);
/// Through a tunnel, ssh accepts the local connection whatever the far end
/// does, and closes it at once when the far end refuses: a connection
/// still open after this long reached a listening server.
const TUNNEL_SETTLE: Duration = Duration::from_millis(300);

/// Where the host checks a spawn's server: `host:port` as the hub reaches
/// it, and whether that is the local end of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub host: String,
    pub port: u16,
    pub tunneled: bool,
}

impl Probe {
    /// The probe of a spawn that reported its port and is not ready yet.
    pub fn of(s: &Spawn) -> Option<Probe> {
        if !matches!(s.state, SpawnState::Queued | SpawnState::Running) {
            return None;
        }
        Some(Probe {
            host: s.host.clone()?,
            port: s.port?,
            tunneled: s.tunnel_target.is_some(),
        })
    }

    /// Whether the server accepts a connection now.
    pub async fn accepts(&self) -> bool {
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let Ok(Ok(mut stream)) = tokio::time::timeout(ATTEMPT, connect).await else {
            return false;
        };
        if !self.tunneled {
            return true;
        }
        let mut buf = [0u8; 1];
        match tokio::time::timeout(TUNNEL_SETTLE, stream.read(&mut buf)).await {
            // Still open: the far end took the connection.
            Err(_) => true,
            // Something came: a server that speaks first.
            Ok(Ok(n)) => n > 0,
            Ok(Err(_)) => false,
        }
    }
}

/// Whether a spawn's server tunnel must be kept open: it is ready, or it
/// reported its port and the host checks (through that tunnel) that it
/// listens. The tunnel keeper must keep (and re-create) the tunnels of
/// exactly these spawns; closing the tunnel of a spawn still checked makes
/// it fail when its server is slower to listen than one keeper round.
pub fn wants_tunnel(s: &Spawn) -> bool {
    s.tunnel_target.is_some()
        && (s.state == SpawnState::Ready || Probe::of(s).is_some_and(|p| p.tunneled))
}

/// The key of a server's address among live spawns: the real server (the
/// far end of a tunnel), host name in lower case.
pub fn endpoint_key(host: &str, port: u16) -> String {
    format!(
        "{}:{port}",
        host.trim_matches(|c| c == '[' || c == ']')
            .to_ascii_lowercase()
    )
}

/// A spawn's server address key, once it reported one.
pub fn endpoint_of(s: &Spawn) -> Option<String> {
    match &s.tunnel_target {
        Some(t) => {
            let (h, p) = t.rsplit_once(':')?;
            Some(endpoint_key(h, p.parse().ok()?))
        }
        None => Some(endpoint_key(s.host.as_deref()?, s.port?)),
    }
}

impl Service {
    /// Claims `key` (a server address, [`endpoint_key`]) for spawn `id`.
    /// Refused with the other spawn's id while another live spawn holds it.
    pub(super) fn claim_endpoint(&self, id: &str, key: &str) -> Result<(), String> {
        let mut inner = self.lock();
        if let Some(other) = inner.endpoints.get(key) {
            let live = other != id
                && inner
                    .spawns
                    .get(other)
                    .is_some_and(|e| !e.spawn.state.is_terminal());
            if live {
                return Err(other.clone());
            }
        }
        inner.endpoints.insert(key.to_string(), id.to_string());
        Ok(())
    }

    /// Gives up a claim of spawn `id` (its callback was refused after all).
    pub(super) fn release_endpoint(&self, id: &str, key: &str) {
        let mut inner = self.lock();
        if inner.endpoints.get(key).is_some_and(|o| o == id) {
            inner.endpoints.remove(key);
        }
    }

    /// Marks spawn `id` ready if it still waits for its server.
    fn mark_ready(&self, id: &str, p: &Probe) -> Option<Spawn> {
        self.update(id, |e| {
            if Probe::of(&e.spawn).as_ref() != Some(p) {
                return None;
            }
            e.fire(super::Event::Listening).ok()?;
            e.spawn.reason = None;
            Some(format!(
                "server ready at {}:{} (it accepts connections)",
                p.host, p.port
            ))
        })
        .ok()
        .flatten()
        .filter(|s| s.state == SpawnState::Ready)
    }

    /// One check now: the spawn, ready, if its server already listens.
    pub(super) async fn ready_if_listening(&self, id: &str, p: &Probe) -> Option<Spawn> {
        if p.accepts().await {
            self.mark_ready(id, p)
        } else {
            None
        }
    }

    /// Checks spawn `id`'s server until it listens (→ ready), the spawn
    /// moves on (stopped, failed, …), or the instance's start timeout
    /// passed (→ failed, the job cancelled).
    pub(super) async fn wait_listening(self: Arc<Self>, id: String, p: Probe) {
        let wait = self
            .get(&id)
            .ok()
            .and_then(|s| self.registry.config.instances.get(&s.instance))
            .map_or(crate::config::Lifecycle::default().start_timeout, |i| {
                i.lifecycle.start_timeout
            });
        let weak = Arc::downgrade(&self);
        drop(self);
        let start = tokio::time::Instant::now();
        let deadline = start + wait;
        loop {
            let Some(svc) = weak.upgrade() else { return };
            let still = svc
                .get(&id)
                .ok()
                .and_then(|s| Probe::of(&s))
                .is_some_and(|q| q == p);
            if !still {
                return;
            }
            if svc.ready_if_listening(&id, &p).await.is_some() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let mut cancel = false;
                let _ = svc.update(&id, |e| {
                    if Probe::of(&e.spawn).as_ref() != Some(&p) {
                        return None;
                    }
                    e.fire(super::Event::NeverListened).ok()?;
                    let m = format!(
                        "the job reported its server at {}:{}{}, but nothing accepted a TCP connection there within {} s (lifecycle.start_timeout_secs); the job is cancelled",
                        p.host,
                        p.port,
                        if p.tunneled { " (the local end of its tunnel)" } else { "" },
                        wait.as_secs_f64()
                    );
                    e.spawn.reason = Some(m.clone());
                    e.cancel_due = true;
                    cancel = true;
                    Some(m)
                });
                if cancel {
                    tokio::spawn(svc.clone().cancel_job(id.clone()));
                }
                return;
            }
            drop(svc);
            let fast = !p.tunneled && start.elapsed() < FAST_FOR;
            tokio::time::sleep(if fast { PROBE_FAST } else { PROBE_EVERY }).await;
        }
    }

    /// After a restart: the servers reported before it are checked again.
    pub(super) fn resume_ready_checks(self: &Arc<Self>) {
        let waiting: Vec<(String, Probe)> = self
            .lock()
            .spawns
            .values()
            .filter_map(|e| Some((e.spawn.id.clone(), Probe::of(&e.spawn)?)))
            .collect();
        for (id, p) in waiting {
            tokio::spawn(self.clone().wait_listening(id, p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_accepts_only_while_something_listens() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Probe {
            host: "127.0.0.1".into(),
            port,
            tunneled: false,
        };
        assert!(p.accepts().await);
        drop(l);
        assert!(!p.accepts().await);
    }

    #[tokio::test]
    async fn through_a_tunnel_a_connection_closed_at_once_is_no_server() {
        // A stand-in for ssh -L whose far end refuses: accept, then close.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        let p = Probe {
            host: "127.0.0.1".into(),
            port,
            tunneled: true,
        };
        assert!(!p.accepts().await);
        // One that keeps the connection: a server behind the tunnel.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                kept.push(s);
            }
        });
        let p = Probe { port, ..p };
        assert!(p.accepts().await);
    }

    #[test]
    fn endpoints_compare_by_real_server() {
        assert_eq!(endpoint_key("Node1", 8888), "node1:8888");
        assert_eq!(endpoint_key("[::1]", 80), "::1:80");
    }
}
