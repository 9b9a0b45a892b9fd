//! The spawn service: takes a spawn request, drives the job to a reachable
//! single-user server, answers polls from a cached view, stops it, and never
//! loses track of a job.
//!
//! | module | what it does |
//! |---|---|
//! | this one | the service (its parts and wiring), errors, the bounds on plugin text |
//! | `table` | the spawns in memory; [`Service::update`], the one way to change one |
//! | `start` | the start request and its bounds; the background submit |
//! | `stop` | stop; the job's cancel with its backoff |
//! | [`poller`] | one poller per plugin instance: batched `status` calls |
//! | [`callback`] | the job's callback (port and host, per-spawn token) |
//! | [`readiness`] | ready means listening; one live spawn per host:port |
//! | [`transitions`] | the one table of legal state changes |
//! | `recovery`, `find_jobs` | loading the stored spawns at startup; adopting jobs found by spawn |
//! | `tunnels` | the tunnel keeper of ready servers on non-routable nodes |
//! | `metrics` | counters for `/v1/metrics` and Prometheus |
//! | `listing` | pages of the spawn table, purge, retention |
//! | [`events`] | a spawn's event stream (for Server-Sent Events) |
//! | [`token`] | callback tokens (stored hashed) and the callback host rule |
//!
//! Every change is written to the [`Store`] before anything acts on it. The
//! records are also kept in memory: reads never touch the database or the
//! scheduler.
//!
//! What a plugin (or a job) says is bounded where it enters the service, so
//! a hostile plugin cannot flood the store or the API: its texts (reasons,
//! errors, event messages, job ids, hosts) pass [`crate::sanitize`]; the
//! validated options are at most
//! [`crate::runtime::plugin::MAX_OPTIONS_BYTES`]; a spawn keeps at
//! most [`crate::store::MAX_EVENTS`] events, repeats coalesced and
//! plugin-driven notes (a changing queue reason, a failing cancel, …) at
//! most one per [`QUIET_EVERY`] each; a failing cancel is retried with a
//! capped backoff ([`cancel_backoff`]); and the host a spawn's server is at
//! passes the instance's execution-host rule ([`crate::exec_host`]).

pub mod callback;
pub mod events;
mod find_jobs;
mod listing;
mod metrics;
mod pending_env;
pub mod poller;
pub mod readiness;
mod recovery;
mod start;
mod stop;
mod table;
pub mod token;
pub mod transitions;
mod tunnels;

pub use callback::CallbackBody;
pub use listing::{ListCursor, ListFilter, RETENTION_EVERY};
pub use start::{
    StartRequest, MAX_CMD_ARGS, MAX_CMD_TOTAL, MAX_ENV_TOTAL, MAX_ENV_VALUE, MAX_ENV_VARS,
};
pub use stop::{cancel_backoff, CANCEL_BACKOFF_FIRST, CANCEL_BACKOFF_MAX};
use table::{bound_spawn, Entry, Inner, Quiet};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::broadcast;

use crate::model::{FieldError, PluginError, SpawnEvent};
use crate::registry::Registry;
use crate::runtime::plugin::CallError;
use crate::sanitize;
use crate::store::Store;
use transitions::Event;

/// Longest event message, reason or flag the host stores for a spawn: host
/// text around plugin text that is itself at most [`sanitize::MAX_REASON`].
pub const MAX_MESSAGE: usize = 2048;

/// Plugin-driven notes of one kind ([`Quiet`]: a changed queue reason, the
/// scheduler's silence, a failed cancel, a refused host) add at most one
/// event per spawn this often; the spawn's `reason` still shows the latest.
/// State changes always add their event.
pub const QUIET_EVERY: Duration = Duration::from_secs(60);

/// Execution-host refusals written to the audit log per spawn (the same
/// host at most once per [`QUIET_EVERY`]): a job or plugin repeating itself
/// cannot flood the log.
pub const MAX_AUDITED_REFUSALS: u32 = 32;

/// The variables the host adds to every job's environment. The in-job
/// wrapper depends on these names.
pub const ENV_CALLBACK_URL: &str = "WASMSPAWNER_CALLBACK_URL";
pub const ENV_CALLBACK_TOKEN: &str = "WASMSPAWNER_CALLBACK_TOKEN";
pub const ENV_SPAWN_ID: &str = "WASMSPAWNER_SPAWN_ID";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no plugin instance {0:?} on this host")]
    UnknownInstance(String),
    #[error("no spawn {0:?}")]
    NotFound(String),
    #[error("invalid options: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    InvalidOptions(Vec<FieldError>),
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        spawn_id: String,
    },
    #[error(transparent)]
    Plugin(#[from] CallError),
    /// The job's callback was refused.
    #[error("{message}")]
    Callback {
        status: u16,
        code: &'static str,
        message: String,
    },
    /// Not now: retry after `retry_after` seconds (503).
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        retry_after: u64,
    },
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

pub struct Service {
    pub(crate) store: Store,
    registry: Arc<Registry>,
    inner: Mutex<Inner>,
    pub(crate) events: broadcast::Sender<SpawnEvent>,
    public_url: String,
    pollers: BTreeMap<String, Arc<poller::PollerState>>,
    /// SSH tunnels of ready servers on non-routable nodes.
    tunnels: crate::tunnel::Tunnels,
    /// Submits running in the background (see [`Service::drain`]).
    submits: std::sync::atomic::AtomicUsize,
    submits_done: tokio::sync::Notify,
}

/// A plugin error with its texts sanitized (it reaches the API).
fn clean_call_error(e: CallError) -> CallError {
    let p = |e: PluginError| match e {
        PluginError::Config(m) => PluginError::Config(sanitize::reason(&m)),
        PluginError::Capability(m) => PluginError::Capability(sanitize::reason(&m)),
        PluginError::Scheduler(m) => PluginError::Scheduler(sanitize::reason(&m)),
        PluginError::Other(m) => PluginError::Other(sanitize::reason(&m)),
    };
    match e {
        CallError::Plugin(e) => CallError::Plugin(p(e)),
        CallError::Failed { instance, message } => CallError::Failed {
            instance,
            message: sanitize::reason(&message),
        },
        other => other,
    }
}

/// Field errors as the API shows them: sanitized, at most 64.
fn clean_fields(f: Vec<FieldError>) -> Vec<FieldError> {
    f.into_iter()
        .take(64)
        .map(|e| FieldError {
            field: sanitize::text(&e.field, 128),
            message: sanitize::reason(&e.message),
        })
        .collect()
}

impl Service {
    /// Opens the store in the registry's state directory and recovers every
    /// spawn in it. `public_url` is the base of the callback URL jobs get.
    pub fn open(registry: Arc<Registry>, public_url: &str) -> Result<Arc<Service>> {
        let store = Store::open(&registry.config.state_dir)?;
        let pollers = registry
            .config
            .instances
            .iter()
            .map(|(name, ic)| {
                (
                    name.clone(),
                    Arc::new(poller::PollerState::new(ic.lifecycle.clone())),
                )
            })
            .collect();
        let (events, _) = broadcast::channel(8192);
        let tunnels = crate::tunnel::Tunnels::for_state_dir(&registry.config.state_dir);
        let svc = Service {
            store,
            registry,
            inner: Mutex::new(Inner::default()),
            events,
            public_url: public_url.trim_end_matches('/').to_string(),
            pollers,
            tunnels,
            submits: Default::default(),
            submits_done: tokio::sync::Notify::new(),
        };
        svc.recover()?;
        Ok(Arc::new(svc))
    }

    /// Starts one poller task per plugin instance, and the retention sweep
    /// ([`Service::start_retention`]). They stop when the service is
    /// dropped.
    pub fn start_pollers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<_> = self
            .pollers
            .keys()
            .map(|name| tokio::spawn(poller::run(Arc::downgrade(self), name.clone())))
            .collect();
        tasks.push(self.start_retention());
        self.resume_ready_checks();
        self.resume_finds();
        self.resume_submits();
        tasks
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Writes an execution-host refusal to the audit log (capability
    /// `execution-host`, decision `deny`): the same host at most once per
    /// [`QUIET_EVERY`] and at most [`MAX_AUDITED_REFUSALS`] records per
    /// spawn.
    fn audit_refusal(&self, id: &str, host: &str, reason: &str) {
        let host = sanitize::text(host, 256);
        let (instance, user) = {
            let mut inner = self.lock();
            let Some(e) = inner.spawns.get_mut(id) else {
                return;
            };
            let repeat = e
                .last_refusal
                .as_ref()
                .is_some_and(|(h, t)| *h == host && t.elapsed() < QUIET_EVERY);
            if repeat || e.refusals_audited >= MAX_AUDITED_REFUSALS {
                return;
            }
            e.refusals_audited += 1;
            e.last_refusal = Some((host.clone(), std::time::Instant::now()));
            (e.spawn.instance.clone(), e.spawn.user.name.clone())
        };
        let digest = self
            .registry
            .get(&instance)
            .map(|i| i.current().digest.clone())
            .unwrap_or_default();
        self.registry
            .runtime
            .audit
            .write(crate::capability::audit::AuditRecord {
                instance,
                digest,
                spawn_id: Some(id.to_string()),
                user: Some(user),
                capability: "execution-host",
                event: "decision",
                program: host,
                decision: "deny",
                reason: Some(sanitize::text(reason, MAX_MESSAGE)),
                ..Default::default()
            });
    }

    /// Waits (at most `limit`) for the submits in flight to finish, so a
    /// planned shutdown does not leave spawns in `submitting` (which fail
    /// at the next start). Returns how many are still running.
    pub async fn drain(&self, limit: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done = self.submits_done.notified();
            let n = self.submits.load(std::sync::atomic::Ordering::SeqCst);
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return self.submits.load(std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_backoff_doubles_from_1_s_to_5_min_with_jitter() {
        for (n, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (9, 256.0),
            (10, 300.0),
            (1000, 300.0),
        ] {
            let d = cancel_backoff(n).as_secs_f64();
            assert!(d >= base * 0.9 && d <= base * 1.1, "attempt {n}: {d}");
        }
        // Attempts in an hour of failures: a few dozen, not one per poll.
        let mut t = 0.0;
        let mut n = 0;
        while t < 3600.0 {
            n += 1;
            t += cancel_backoff(n).as_secs_f64();
        }
        assert!(n < 25, "{n} attempts in an hour");
    }

    #[test]
    fn plugin_texts_reaching_the_api_are_sanitized() {
        let e = clean_call_error(CallError::Plugin(PluginError::Scheduler(
            "x\n\u{202e}".repeat(1 << 20),
        )));
        let m = e.to_string();
        assert!(m.len() < 1100 && sanitize::is_clean(&m), "{}", m.len());
        let f = clean_fields(vec![
            FieldError {
                field: "a\nb".into(),
                message: "m".repeat(1 << 20),
            };
            1000
        ]);
        assert_eq!(f.len(), 64);
        assert!(sanitize::is_clean(&f[0].field) && f[0].message.len() < 1100);
    }
}
