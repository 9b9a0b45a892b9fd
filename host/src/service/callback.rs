//! The job's callback: `POST /v1/spawns/{id}/ready` with the per-spawn
//! token. Only port and host, only once, only while queued or running; the
//! host must agree with the scheduler (see [`super::token::host_allowed`])
//! and pass the instance's execution-host rule ([`crate::exec_host`]).
//! A callback that comes before the scheduler said where the job runs
//! makes the poller ask now ([`Service::poll_for_host`]) and waits for the
//! answer, at most [`CALLBACK_HOST_WAIT`]; then it is answered, or refused
//! with 503 and `Retry-After` — never accepted on the caller's word unless
//! `lifecycle.callback_hosts` allows that host.

use serde::{Deserialize, Serialize};

use super::{token, Service, ServiceError};
use crate::model::{Spawn, SpawnState};

/// `POST /v1/spawns/{id}/ready`: all a job may say.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackBody {
    pub port: u32,
    #[serde(default)]
    pub host: Option<String>,
}

/// Longest a callback waits for the scheduler to say where its job runs
/// (one immediate `status` call, or more within this time).
pub const CALLBACK_HOST_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// The `Retry-After` of a callback answered 503 (seconds).
pub const CALLBACK_RETRY_AFTER: u64 = 2;

impl ServiceError {
    /// The callback's token is missing, wrong, used, or for another spawn.
    pub fn bad_callback_token() -> ServiceError {
        ServiceError::Callback {
            status: 401,
            code: "invalid_callback_token",
            message: "the callback token is missing, wrong, already used, or not for this spawn"
                .into(),
        }
    }
}

impl Service {
    /// Whether `presented` is spawn `id`'s callback token, still unused:
    /// checked before anything else of a callback is looked at.
    pub fn callback_token_ok(&self, id: &str, presented: &str) -> bool {
        self.lock()
            .spawns
            .get(id)
            .and_then(|e| e.callback_hash.as_deref())
            .is_some_and(|h| token::matches(h, presented))
    }

    /// The job reports where its server listens. `token` is the bearer
    /// token it presented; `peer` the address the request came from.
    /// Returns the spawn: `ready` when its server already accepts
    /// connections, else still queued or running with its port, checked
    /// until it listens ([`super::readiness`]).
    pub async fn callback(
        self: &std::sync::Arc<Self>,
        id: &str,
        presented: Option<&str>,
        body: &CallbackBody,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Spawn, ServiceError> {
        let refuse = |status: u16, code: &'static str, message: String| ServiceError::Callback {
            status,
            code,
            message,
        };
        let bad_token = ServiceError::bad_callback_token;
        if !(1..=65535).contains(&body.port) {
            return Err(refuse(
                422,
                "invalid_callback",
                format!("port {} is not in 1-65535", body.port),
            ));
        }
        if let Some(h) = &body.host {
            if !crate::model::valid_host(h) {
                return Err(refuse(
                    422,
                    "invalid_callback",
                    format!("host {h:?} is not a host name or an IP address"),
                ));
            }
        }
        let presented = presented.ok_or_else(bad_token)?;
        let (spawn, hash) = {
            let inner = self.lock();
            let e = inner.spawns.get(id).ok_or_else(bad_token)?;
            (e.spawn.clone(), e.callback_hash.clone())
        };
        match hash {
            Some(h) if token::matches(&h, presented) => {}
            _ => return Err(bad_token()),
        }
        if !matches!(spawn.state, SpawnState::Queued | SpawnState::Running) {
            return Err(refuse(
                409,
                "callback_not_accepted",
                format!(
                    "spawn {id} is {}; a server may report its port only while the spawn is queued or running",
                    spawn.state
                ),
            ));
        }
        let ic = self.registry.config.instances.get(&spawn.instance);
        let rules = ic
            .map(|i| i.lifecycle.callback_hosts.clone())
            .unwrap_or_default();
        let via_callback_tunnel = ic
            .and_then(|i| i.tunnel.as_ref())
            .is_some_and(|t| t.callback.is_some());
        // The host rule from the first moment: before the scheduler has said
        // where the job runs, only the operator's rule vouches for a host.
        // Otherwise the job's status is asked now and the callback waits
        // for the answer (bounded); still unknown: 503, retry.
        let mut spawn = spawn;
        let vouched = body
            .host
            .as_deref()
            .is_some_and(|h| token::host_allowed(h, None, &rules));
        if spawn.exec_host.is_none() && !vouched {
            self.poll_for_host(&spawn.instance, id, CALLBACK_HOST_WAIT)
                .await;
            spawn = self.get(id).map_err(|_| bad_token())?;
            if !matches!(spawn.state, SpawnState::Queued | SpawnState::Running) {
                return Err(refuse(
                    409,
                    "callback_not_accepted",
                    format!(
                        "spawn {id} is {}; a server may report its port only while the spawn is queued or running",
                        spawn.state
                    ),
                ));
            }
        }
        let unknown = || {
            ServiceError::Unavailable {
            code: "execution_host_unknown",
            message: format!(
                "the scheduler has not said yet where job {} runs, and the host accepts a callback only for that host (or one allowed by lifecycle.callback_hosts of instance `{}`); retry shortly (wasmspawner-singleuser does)",
                spawn.job_id.as_deref().unwrap_or("?"),
                spawn.instance
            ),
            retry_after: CALLBACK_RETRY_AFTER,
        }
        };
        let host = match &body.host {
            Some(given) => {
                if spawn.exec_host.is_none() && !vouched {
                    return Err(unknown());
                }
                if !token::host_allowed(given, spawn.exec_host.as_deref(), &rules) {
                    return Err(refuse(
                        403,
                        "callback_host_mismatch",
                        format!(
                            "the callback names host {given:?}, but {}; an operator may allow it in lifecycle.callback_hosts of instance `{}`",
                            match &spawn.exec_host {
                                Some(x) => format!("the scheduler runs the job on {x:?}"),
                                None => "it matches no lifecycle.callback_hosts rule".into(),
                            },
                            spawn.instance
                        ),
                    ));
                }
                given.clone()
            }
            None => match (&spawn.exec_host, peer) {
                (Some(x), _) => x.clone(),
                // The caller's address is no better than its word: only
                // the operator's rule may vouch for it. Through the
                // gateway's tunnel it is the gateway's anyway.
                (None, Some(ip))
                    if !via_callback_tunnel
                        && token::host_allowed(&ip.to_string(), None, &rules) =>
                {
                    ip.to_string()
                }
                (None, _) => return Err(unknown()),
            },
        };
        // The execution-host rule, with `callback_hosts` counting as allowed
        // names: a refusal is shown on the spawn and audited.
        let policy = match ic {
            Some(ic) => crate::exec_host::Policy::of(&spawn.instance, &ic.lifecycle),
            None => crate::exec_host::Policy {
                instance: &spawn.instance,
                rules: &[],
                allow_loopback: false,
            },
        };
        let also: Vec<crate::exec_host::Rule> = rules
            .iter()
            .filter_map(|r| crate::exec_host::Rule::parse(r).ok())
            .collect();
        if let Err(why) = policy.check_with(&host, &also) {
            let m = format!("the job's callback names a host the instance refuses: {why}");
            let _ = self.update(id, |e| {
                if !matches!(e.spawn.state, SpawnState::Queued | SpawnState::Running) {
                    return None;
                }
                e.spawn.reason = Some(m.clone());
                e.quiet = Some(super::Quiet::Host);
                Some(m.clone())
            });
            self.audit_refusal(id, &host, &why);
            return Err(refuse(403, "execution_host_refused", m));
        }
        let port = body.port as u16;
        // One live spawn per server address: the job picks another port.
        let key = super::readiness::endpoint_key(&host, port);
        if let Err(other) = self.claim_endpoint(id, &key) {
            return Err(refuse(
                409,
                "port_in_use",
                format!(
                    "another live spawn ({other}) has its server at {host}:{port}; pick another port and report again (the token stays valid)"
                ),
            ));
        }
        // A non-routable node: the hub reaches the server through a tunnel,
        // opened before the spawn is reported ready.
        let (host, port, tunnel_target) = match ic {
            Some(ic) if ic.tunnel.is_some() => {
                let mut probe = spawn.clone();
                probe.tunnel_target = Some(format!("{host}:{port}"));
                let opened = match (self.tunnel_spec(&probe), ic.ssh.clone()) {
                    (Some(spec), Some(ssh)) => {
                        self.tunnels.open(&ssh, spec, None).await.map_err(|e| {
                            refuse(
                                502,
                                "tunnel_failed",
                                format!("cannot open the tunnel to {host}:{port}: {e:#}"),
                            )
                        })
                    }
                    _ => Err(refuse(
                        500,
                        "tunnel_failed",
                        "the instance's tunnel settings are incomplete".into(),
                    )),
                };
                let local = match opened {
                    Ok(l) => l,
                    Err(e) => {
                        self.release_endpoint(id, &key);
                        return Err(e);
                    }
                };
                (
                    "127.0.0.1".to_string(),
                    local.port(),
                    Some(format!("{host}:{port}")),
                )
            }
            _ => (host, port, None),
        };
        let mut accepted = false;
        let out = self.update(id, |e| {
            // Checked again under the lock: once only.
            let same = e
                .callback_hash
                .as_deref()
                .is_some_and(|h| token::matches(h, presented));
            if !same || !matches!(e.spawn.state, SpawnState::Queued | SpawnState::Running) {
                return None;
            }
            accepted = true;
            e.callback_hash = None;
            e.spawn.host = Some(host.clone());
            e.spawn.port = Some(port);
            e.spawn.tunnel_target = tunnel_target.clone();
            let m = format!(
                "the server reported {}; waiting for it to accept connections",
                tunnel_target.as_deref().map_or_else(
                    || format!("{host}:{port}"),
                    |t| format!("{t} (tunneled to {host}:{port})")
                )
            );
            e.spawn.reason = Some(m.clone());
            Some(m)
        })?;
        if !accepted {
            self.release_endpoint(id, &key);
            return Err(bad_token());
        }
        let spawn = out.ok_or_else(|| ServiceError::NotFound(id.to_string()))?;
        // Ready means listening: at once if it already listens, else
        // checked in the background (the in-job wrapper reports before it
        // starts the server).
        let Some(probe) = super::readiness::Probe::of(&spawn) else {
            return Ok(spawn);
        };
        if let Some(ready) = self.ready_if_listening(id, &probe).await {
            return Ok(ready);
        }
        tokio::spawn(self.clone().wait_listening(id.to_string(), probe));
        Ok(self.get(id).unwrap_or(spawn))
    }
}
