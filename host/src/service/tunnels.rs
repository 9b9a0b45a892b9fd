//! The service's tunnel keeper: every ready spawn of a tunneled instance
//! has its server tunnel, no other spawn has one, and each instance with a
//! callback tunnel keeps it open ([`crate::tunnel`] runs the ssh processes).

use std::sync::Arc;
use std::time::Duration;

use super::Service;
use crate::model::{Spawn, SpawnState};

impl Service {
    /// Keeps the tunnels in line with the spawns: every ready spawn of a
    /// tunneled instance has its tunnel (re-created on the same local port
    /// after a host restart), and no other spawn has one. Instances with a
    /// callback tunnel get it, forwarded to `listen` (this host's HTTP
    /// listener).
    pub fn start_tunnel_keeper(
        self: &Arc<Self>,
        listen: std::net::SocketAddr,
    ) -> tokio::task::JoinHandle<()> {
        // A listener on all addresses is reached on loopback.
        let listen = if listen.ip().is_unspecified() {
            std::net::SocketAddr::new(
                if listen.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                },
                listen.port(),
            )
        } else {
            listen
        };
        self.keep_callback_tunnels(listen);
        let weak = Arc::downgrade(self);
        let tunneled = self
            .registry
            .config
            .instances
            .values()
            .any(|i| i.tunnel.is_some());
        tokio::spawn(async move {
            // Nothing to keep: do not scan the spawns every second.
            if !tunneled {
                return;
            }
            loop {
                let Some(svc) = weak.upgrade() else { return };
                svc.reconcile_tunnels().await;
                drop(svc);
                tokio::time::sleep(crate::tunnel::WATCH_EVERY * 2).await;
            }
        })
    }

    async fn reconcile_tunnels(&self) {
        let wanted: Vec<(Spawn, crate::tunnel::TunnelSpec)> = self
            .list(None)
            .into_iter()
            .filter(|s| s.state == SpawnState::Ready)
            .filter_map(|s| {
                let spec = self.tunnel_spec(&s)?;
                Some((s, spec))
            })
            .collect();
        let open: Vec<String> = self
            .tunnels
            .list()
            .await
            .into_iter()
            .filter(|t| !t.reverse)
            .map(|t| t.key)
            .collect();
        for key in &open {
            if !wanted.iter().any(|(s, _)| &s.id == key) {
                self.tunnels.close(key).await;
                tracing::info!(spawn = %key, "tunnel closed");
            }
        }
        for (s, spec) in wanted {
            if open.contains(&s.id) {
                continue;
            }
            let Some(ssh) = self
                .registry
                .config
                .instances
                .get(&s.instance)
                .and_then(|i| i.ssh.clone())
            else {
                continue;
            };
            match self.tunnels.open(&ssh, spec, s.port).await {
                Ok(local) => tracing::info!(spawn = %s.id, "tunnel re-created at {local}"),
                Err(e) => tracing::warn!(spawn = %s.id, "cannot re-create the tunnel: {e:#}"),
            }
        }
    }

    /// Opens each instance's callback tunnel and retries a refused one, less
    /// often each time (1 s doubling up to 60 s). `Tunnels` itself re-opens
    /// one whose ssh dies.
    fn keep_callback_tunnels(self: &Arc<Self>, listen: std::net::SocketAddr) {
        let callbacks = self.callback_tunnel_specs(listen);
        if callbacks.is_empty() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut wait = Duration::from_secs(1);
            loop {
                let Some(svc) = weak.upgrade() else { return };
                let mut refused = Vec::new();
                for (name, ssh, spec) in &callbacks {
                    if let Err(e) = svc.tunnels.open_reverse(ssh, spec.clone()).await {
                        refused.push((name, e));
                    }
                }
                drop(svc);
                wait = if refused.is_empty() {
                    Duration::from_secs(1)
                } else {
                    (wait * 2).min(Duration::from_secs(60))
                };
                for (name, e) in refused {
                    tracing::error!(instance = %name, "cannot open the callback tunnel; jobs of this instance cannot report their servers until it opens (retrying in {wait:?}): {e:#}");
                }
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// The open tunnels (server and callback ones).
    pub async fn tunnel_list(&self) -> Vec<crate::tunnel::TunnelInfo> {
        self.tunnels.list().await
    }

    /// The callback tunnel of every instance that has one.
    fn callback_tunnel_specs(
        &self,
        listen: std::net::SocketAddr,
    ) -> Vec<(String, crate::config::SshConfig, crate::tunnel::ReverseSpec)> {
        let mut out = Vec::new();
        for (name, ic) in &self.registry.config.instances {
            let (Some(t), Some(ssh)) = (&ic.tunnel, &ic.ssh) else {
                continue;
            };
            let Some(c) = &t.callback else { continue };
            let spec = crate::tunnel::ReverseSpec {
                key: format!("callback:{name}"),
                via: t.via.clone(),
                // Checked with the config: no {user} in ssh.user.
                user: crate::ssh_cmd::remote_user(ssh, None).ok().flatten(),
                bind: c.bind.clone(),
                remote_port: c.port,
                to: listen,
            };
            out.push((name.clone(), ssh.clone(), spec));
        }
        out
    }

    /// The tunnel a ready spawn needs, if its instance tunnels.
    pub(super) fn tunnel_spec(&self, s: &Spawn) -> Option<crate::tunnel::TunnelSpec> {
        let ic = self.registry.config.instances.get(&s.instance)?;
        let t = ic.tunnel.as_ref()?;
        let (host, port) = s.tunnel_target.as_deref()?.rsplit_once(':')?;
        let user = crate::ssh_cmd::remote_user(ic.ssh.as_ref()?, Some(&s.user.name)).ok()?;
        Some(crate::tunnel::TunnelSpec {
            key: s.id.clone(),
            via: t.via.clone(),
            user,
            target_host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
            target_port: port.parse().ok()?,
        })
    }
}
