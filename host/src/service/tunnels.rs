//! The service's tunnel keeper: every ready spawn of a tunneled instance
//! has its server tunnel, no other spawn has one, and each instance with a
//! callback tunnel keeps it open ([`crate::tunnel`] runs the ssh processes).

use std::sync::Arc;

use super::Service;

/// How often old shared SSH connections are looked for.
const MASTER_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
use crate::model::{Spawn, SpawnState};

impl Service {
    /// Keeps the tunnels in line with the spawns: every ready spawn of a
    /// tunneled instance has its tunnel (re-created on the same local port
    /// after a host restart), and no other spawn has one. Instances with a
    /// callback tunnel get it, forwarded to `listen` (the callback-only
    /// listener, [`crate::http::callback_only`], in `serve`). Shared SSH
    /// connections of an older generation are asked to stop.
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
        self.rotate_ssh_masters();
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
        let spawns = self.list(None);
        // A tunnel being opened by a callback belongs to a spawn still
        // queued or running: only an ended (or ending) spawn loses its own.
        let ended = |key: &str| {
            spawns.iter().find(|s| s.id == key).is_none_or(|s| {
                matches!(
                    s.state,
                    SpawnState::Stopping | SpawnState::Stopped | SpawnState::Failed
                )
            })
        };
        let wanted: Vec<(Spawn, crate::tunnel::TunnelSpec)> = spawns
            .iter()
            .filter(|s| super::readiness::wants_tunnel(s))
            .cloned()
            .filter_map(|s| {
                let spec = self.tunnel_spec(&s)?;
                Some((s, spec))
            })
            .collect();
        let kept: Vec<String> = self
            .tunnels
            .list()
            .await
            .into_iter()
            .filter(|t| !t.reverse)
            .map(|t| t.key)
            .collect();
        for key in &kept {
            if !wanted.iter().any(|(s, _)| &s.id == key) && ended(key) {
                self.tunnels.close(key).await;
                tracing::info!(spawn = %key, "tunnel closed");
            }
        }
        for (s, spec) in wanted {
            if kept.contains(&s.id) {
                continue;
            }
            let (Some(ssh), Some(port)) = (
                self.registry
                    .config
                    .instances
                    .get(&s.instance)
                    .and_then(|i| i.ssh.clone()),
                s.port,
            ) else {
                continue;
            };
            // On the port the hub knows; the tunnel's supervisor opens it
            // (with backoff) and logs when it is open or why not.
            self.tunnels.keep(&ssh, spec, port);
        }
    }

    /// Why the hub's URL of a ready tunneled spawn does not reach its
    /// server right now (its tunnel is not open and ours); `None` when it
    /// does or the spawn has no tunnel.
    pub fn tunnel_flag(&self, s: &Spawn) -> Option<String> {
        if s.state != SpawnState::Ready || s.tunnel_target.is_none() {
            return None;
        }
        let ic = self.registry.config.instances.get(&s.instance)?;
        ic.tunnel.as_ref()?;
        self.tunnels.not_open_because(&s.id).map(|why| {
            format!("{why}; the hub's URL does not reach the server until the tunnel is open again")
        })
    }

    /// Puts [`Service::tunnel_flag`] into the spawn as the API shows it.
    pub(super) fn flag_tunnel(&self, s: &mut Spawn) {
        if let Some(f) = self.tunnel_flag(s) {
            s.flagged = Some(match s.flagged.take() {
                Some(other) => format!("{f}; {other}"),
                None => f,
            });
        }
    }

    /// Whether spawn `id`'s tunnel is open and ours (see [`Service::tunnel_flag`]).
    pub fn tunnel_is_open(&self, id: &str) -> bool {
        self.tunnels.is_open(id)
    }

    /// Closes spawn `id`'s tunnel, whatever its state.
    pub async fn close_tunnel(&self, id: &str) {
        self.tunnels.close(id).await;
    }

    /// Opens each instance's callback tunnel and retries a refused one with
    /// backoff ([`crate::ssh_cmd::Backoff`]: 0.5 s doubling to 60 s, with
    /// jitter; logged once per change of cause). Once open, the tunnel's
    /// supervisor re-opens it (with the same backoff) when its ssh ends.
    fn keep_callback_tunnels(self: &Arc<Self>, listen: std::net::SocketAddr) {
        let callbacks = self.callback_tunnel_specs(listen);
        for (name, ssh, spec) in callbacks {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut backoff = crate::ssh_cmd::Backoff::default();
                let mut logged: Option<String> = None;
                loop {
                    let Some(svc) = weak.upgrade() else { return };
                    let r = svc.tunnels.open_reverse(&ssh, spec.clone()).await;
                    drop(svc);
                    match r {
                        Ok(()) => return,
                        Err(e) => {
                            let wait = backoff.next_wait();
                            let why = format!("{e:#}");
                            if logged.as_ref() != Some(&why) {
                                tracing::error!(instance = %name, "cannot open the callback tunnel; jobs of this instance cannot report their servers until it opens (retrying with backoff): {why}");
                                logged = Some(why);
                            } else {
                                tracing::debug!(instance = %name, "the callback tunnel still cannot open (next try in {wait:?}): {why}");
                            }
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            });
        }
    }

    /// Every few seconds, asks shared SSH connections of an older
    /// generation ([`crate::ssh_cmd::master_generation`]: a changed
    /// `known_hosts` or identity file, or `master_max_age` passed) to stop,
    /// so a rotated host key or key file takes effect at the next call and
    /// no connection lives past its maximum age.
    fn rotate_ssh_masters(self: &Arc<Self>) {
        let configs: Vec<crate::config::SshConfig> = self
            .registry
            .config
            .instances
            .values()
            .filter_map(|i| i.ssh.clone())
            .filter(|s| s.reuse_connections)
            .collect();
        if configs.is_empty() {
            return;
        }
        let dir = self.registry.config.state_dir.join("ssh");
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MASTER_CHECK_EVERY).await;
                if weak.strong_count() == 0 {
                    return;
                }
                let (configs, dir) = (configs.clone(), dir.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    let current: Vec<String> = configs
                        .iter()
                        .map(crate::ssh_cmd::master_generation)
                        .collect();
                    let mut programs: Vec<&std::path::Path> =
                        configs.iter().map(|c| c.program.as_path()).collect();
                    programs.dedup();
                    for p in programs {
                        let n = crate::ssh_cmd::stop_other_masters(p, &dir, &current);
                        if n > 0 {
                            tracing::info!("asked {n} shared ssh connection(s) of an older key, known_hosts or age to stop");
                        }
                    }
                })
                .await;
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
            local_ports: t.local_ports,
        })
    }
}
