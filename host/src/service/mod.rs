//! The spawn service: takes a spawn request, drives the job to a reachable
//! single-user server, answers polls from a cached view, stops it, and never
//! loses track of a job.
//!
//! | module | what it does |
//! |---|---|
//! | this one | the spawn records, start, stop, the callback, recovery |
//! | [`poller`] | one poller per plugin instance: batched `status` calls |
//! | [`callback`] | the job's callback (port and host, per-spawn token) |
//! | [`readiness`] | ready means listening; one live spawn per host:port |
//! | [`transitions`] | the one table of legal state changes |
//! | `recovery` | loading the stored spawns at startup |
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
mod pending_env;
pub mod poller;
pub mod readiness;
mod recovery;
pub mod token;
pub mod transitions;
mod tunnels;

pub use callback::CallbackBody;
pub use listing::{ListCursor, ListFilter, RETENTION_EVERY};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::capability::gate::CallContext;
use crate::config::valid_env_name;
use crate::model::{
    FieldError, Job, JobSpec, PluginError, RawOptions, Spawn, SpawnEvent, SpawnState, User,
};
use crate::registry::Registry;
use crate::runtime::plugin::{CallError, ValidateError};
use crate::sanitize;
use crate::store::Store;
use transitions::{Event, IllegalTransition};

/// Longest event message, reason or flag the host stores for a spawn: host
/// text around plugin text that is itself at most [`sanitize::MAX_REASON`].
pub const MAX_MESSAGE: usize = 2048;

/// Plugin-driven notes of one kind ([`Quiet`]: a changed queue reason, the
/// scheduler's silence, a failed cancel, a refused host) add at most one
/// event per spawn this often; the spawn's `reason` still shows the latest.
/// State changes always add their event.
pub const QUIET_EVERY: Duration = Duration::from_secs(60);

/// The first wait after a failed cancel; it doubles with every failure...
pub const CANCEL_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// ...up to this (each wait ±10% jitter).
pub const CANCEL_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Longest piece of a failed cancel's error quoted in the spawn's reason.
const MAX_CANCEL_ERROR: usize = 300;

/// Execution-host refusals written to the audit log per spawn (the same
/// host at most once per [`QUIET_EVERY`]): a job or plugin repeating itself
/// cannot flood the log.
pub const MAX_AUDITED_REFUSALS: u32 = 32;

/// The variables the host adds to every job's environment. The in-job
/// wrapper depends on these names.
pub const ENV_CALLBACK_URL: &str = "WASMSPAWNER_CALLBACK_URL";
pub const ENV_CALLBACK_TOKEN: &str = "WASMSPAWNER_CALLBACK_TOKEN";
pub const ENV_SPAWN_ID: &str = "WASMSPAWNER_SPAWN_ID";

/// `POST /v1/spawns`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub user: User,
    #[serde(default)]
    pub server_name: String,
    pub instance: String,
    /// The hub's id for this start; a retry with the same id never makes a
    /// second job.
    pub request_id: String,
    #[serde(default)]
    pub options: RawOptions,
    /// The job's environment from the hub (JUPYTERHUB_API_TOKEN, …). Never
    /// stored, logged or put in argv.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The single-user server command and its arguments.
    pub cmd: Vec<String>,
}

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

/// A spawn in memory: its record plus what is not part of the record.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    spawn: Spawn,
    callback_hash: Option<String>,
    /// A cancel must (still) be sent.
    cancel_due: bool,
    cancel_in_flight: bool,
    /// Cancels sent since the last one that went through.
    cancel_attempts: u32,
    /// After a failed cancel: not before this is the next one sent.
    cancel_next: Option<std::time::Instant>,
    /// Set by an [`Service::update`] closure: its message is a note of this
    /// kind, throttled to one per [`QUIET_EVERY`].
    quiet: Option<Quiet>,
    /// When a note of each [`Quiet`] kind was last recorded.
    quiet_at: [Option<std::time::Instant>; Quiet::KINDS],
    /// Execution-host refusals audited, and the last one (host, when).
    refusals_audited: u32,
    last_refusal: Option<(String, std::time::Instant)>,
}

impl Entry {
    /// Changes the spawn's state by `event`, as the transition table says;
    /// an illegal event is logged and changes nothing.
    fn fire(&mut self, event: Event) -> Result<transitions::Row, IllegalTransition> {
        match transitions::next(self.spawn.state, event) {
            Ok(r) => {
                self.spawn.state = r.to;
                if r.cancel {
                    self.cancel_due = true;
                }
                Ok(r)
            }
            Err(e) => {
                tracing::error!(spawn_id = %self.spawn.id, "{e}");
                Err(e)
            }
        }
    }

    fn new(spawn: Spawn, callback_hash: Option<String>) -> Entry {
        Entry {
            spawn,
            callback_hash,
            cancel_due: false,
            cancel_in_flight: false,
            cancel_attempts: 0,
            cancel_next: None,
            quiet: None,
            quiet_at: [None; Quiet::KINDS],
            refusals_audited: 0,
            last_refusal: None,
        }
    }
}

/// Kinds of plugin-driven notes (events that are not state changes), each
/// throttled to one event per [`QUIET_EVERY`] per spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quiet {
    /// The queue reason or expected start changed.
    Reason = 0,
    /// The scheduler stopped or started answering (`unknown`).
    Health = 1,
    /// A cancel failed.
    Cancel = 2,
    /// An execution host was refused.
    Host = 3,
}

impl Quiet {
    const KINDS: usize = 4;
}

#[derive(Default)]
struct Inner {
    spawns: HashMap<String, Entry>,
    by_request: HashMap<(String, String, String), String>,
    /// Server address (see [`readiness::endpoint_key`]) → the spawn that
    /// reported it; a terminal spawn's entry is free again.
    endpoints: HashMap<String, String>,
    /// Spawns recovery found provably without a job, to submit again once
    /// the runtime runs ([`Service::resume_submits`]).
    resubmit: Vec<String>,
    /// Spawns caught during their submit whose plugin can say which job
    /// exists (API 0.2 `find-jobs`), asked once the runtime runs
    /// ([`Service::resume_finds`]).
    ask: Vec<String>,
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

/// Counts a background submit until it is dropped.
struct InFlight(Arc<Service>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .submits
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.submits_done.notify_waiters();
    }
}

/// Cancels of the job of a spawn that failed (by timeout, or a refused
/// host) are tried this often; a stopping spawn's until the job is gone.
const MAX_CANCEL_ATTEMPTS: u32 = 5;

/// The wait after the `n`th failed cancel in a row (`n` ≥ 1): 1 s, doubling,
/// at most 5 min ([`CANCEL_BACKOFF_FIRST`], [`CANCEL_BACKOFF_MAX`]), ±10%.
pub fn cancel_backoff(n: u32) -> Duration {
    let doubled = CANCEL_BACKOFF_FIRST.saturating_mul(1 << n.saturating_sub(1).min(20));
    doubled
        .min(CANCEL_BACKOFF_MAX)
        .mul_f64(0.9 + 0.2 * rand::random::<f64>())
}

/// `s` without unsafe characters, at most `max` bytes; unchanged (no copy)
/// when it already is.
fn bounded(s: &mut String, max: usize) {
    if s.len() > max || !sanitize::is_clean(s) {
        *s = sanitize::text(s, max);
    }
}

/// The net under the sanitizing where each value enters: a spawn's texts
/// within their bounds before they are stored.
fn bound_spawn(s: &mut Spawn) {
    for t in [&mut s.reason, &mut s.flagged].into_iter().flatten() {
        bounded(t, MAX_MESSAGE);
    }
    if let Some(h) = &mut s.exec_host {
        bounded(h, 253);
    }
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

    /// Where a job of `instance` reports its server: through the instance's
    /// callback tunnel if it has one, else to `http.public_url`.
    fn callback_url(&self, instance: &str, id: &str) -> String {
        let base = self
            .registry
            .config
            .instances
            .get(instance)
            .and_then(|i| i.tunnel.as_ref()?.callback.as_ref())
            .map_or(self.public_url.as_str(), |c| c.url.as_str());
        format!("{base}/v1/spawns/{id}/ready")
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to a copy of spawn `id`; when it changed, persists it,
    /// then records the event `f` returned (or a state-change event), then
    /// publishes both. Returns the spawn after the change.
    ///
    /// The message and the spawn's texts are bounded ([`MAX_MESSAGE`],
    /// sanitized); a message `f` marked as a [`Quiet`] note is dropped when
    /// one of its kind was recorded less than [`QUIET_EVERY`] ago (unless
    /// the state changed); the store drops a repeat of the previous event.
    fn update<F>(&self, id: &str, f: F) -> Result<Option<Spawn>>
    where
        F: FnOnce(&mut Entry) -> Option<String>,
    {
        let mut inner = self.lock();
        let Some(current) = inner.spawns.get(id) else {
            return Ok(None);
        };
        let mut next = current.clone();
        let mut message = f(&mut next).map(|m| sanitize::text(&m, MAX_MESSAGE));
        bound_spawn(&mut next.spawn);
        let state_changed = next.spawn.state != current.spawn.state;
        // The net under `Entry::fire`: no change outside the table.
        if !transitions::is_legal(current.spawn.state, next.spawn.state) {
            let e = anyhow::anyhow!(
                "illegal transition of spawn {id}: {} to {} is in no row of the transition table",
                current.spawn.state,
                next.spawn.state
            );
            tracing::error!("{e}");
            return Err(e);
        }
        if let (Some(kind), Some(_), false) = (next.quiet.take(), &message, state_changed) {
            let at = &mut next.quiet_at[kind as usize];
            if at.is_some_and(|t| t.elapsed() < QUIET_EVERY) {
                message = None;
            } else {
                *at = Some(std::time::Instant::now());
            }
        }
        if next == *current && message.is_none() {
            return Ok(Some(next.spawn));
        }
        let now = Utc::now();
        // Flags kept only in memory (cancel bookkeeping) are not written.
        let persist = next.spawn != current.spawn || next.callback_hash != current.callback_hash;
        if persist {
            next.spawn.updated_at = now;
        }
        if state_changed {
            next.spawn.state_since = now;
            next.spawn.progress = next.spawn.state.progress();
        }
        if persist {
            self.store
                .save(&next.spawn, next.callback_hash.as_deref())?;
        }
        let mut event = None;
        if state_changed || message.is_some() {
            let st = next.spawn.state;
            event = self.store.add_event(SpawnEvent {
                seq: 0,
                spawn_id: id.to_string(),
                time: now,
                state: st,
                progress: next.spawn.progress,
                message: message.unwrap_or_else(|| format!("the spawn is {st}")),
                is_final: matches!(
                    st,
                    SpawnState::Ready | SpawnState::Failed | SpawnState::Stopped
                ) && state_changed,
            })?;
        }
        let out = next.spawn.clone();
        inner.spawns.insert(id.to_string(), next);
        drop(inner);
        if state_changed && out.state.is_terminal() {
            pending_env::remove(&self.registry.config.state_dir, id);
            self.kill_leftovers(&out);
        }
        if let Some(e) = event {
            tracing::info!(spawn_id = id, state = %e.state, "{}", e.message);
            let _ = self.events.send(e);
        }
        Ok(Some(out))
    }

    /// A spawn has ended: whatever the plugin did, nothing this host
    /// started for it as a detached process survives (the process, and all
    /// it started, `setsid` or not; see `capability::contain`).
    fn kill_leftovers(&self, spawn: &Spawn) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let detached = self.registry.runtime.detached.clone();
        let (instance, id) = (spawn.instance.clone(), spawn.id.clone());
        rt.spawn_blocking(move || {
            let n = detached.kill_all_for(&instance, &id);
            if n > 0 {
                tracing::info!(spawn_id = %id, "killed {n} process groups left behind by the ended spawn");
            }
        });
    }

    /// One spawn as last seen (no scheduler call).
    pub fn get(&self, id: &str) -> Result<Spawn, ServiceError> {
        let mut s = self
            .lock()
            .spawns
            .get(id)
            .map(|e| e.spawn.clone())
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))?;
        self.flag_tunnel(&mut s);
        Ok(s)
    }

    /// Spawns of a user (all when `None`), oldest first.
    pub fn list(&self, user: Option<&str>) -> Vec<Spawn> {
        let mut v: Vec<Spawn> = self
            .lock()
            .spawns
            .values()
            .filter(|e| user.is_none_or(|u| e.spawn.user.name == u))
            .map(|e| e.spawn.clone())
            .collect();
        v.iter_mut().for_each(|s| self.flag_tunnel(s));
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    /// Events of a spawn so far.
    pub fn events(&self, id: &str) -> Result<Vec<SpawnEvent>, ServiceError> {
        self.get(id)?;
        Ok(self.store.events(id, 0)?)
    }

    /// Starts a spawn. Returns it and whether it was created (`false`: the
    /// same request was made before; no second job). Validation runs before
    /// this returns; the job is submitted in the background.
    pub async fn start(self: &Arc<Self>, req: StartRequest) -> Result<(Spawn, bool), ServiceError> {
        check_request(&req)?;
        let inst = self
            .registry
            .get(&req.instance)
            .cloned()
            .ok_or_else(|| ServiceError::UnknownInstance(req.instance.clone()))?;
        let fingerprint = {
            let j = serde_json::json!([req.instance, req.options, req.cmd]);
            hex::encode(Sha256::digest(j.to_string().as_bytes()))
        };
        let key = (
            req.user.name.clone(),
            req.server_name.clone(),
            req.request_id.clone(),
        );
        let id = format!("sp-{}", hex::encode(rand::random::<[u8; 12]>()));
        let now = Utc::now();
        {
            let mut inner = self.lock();
            if let Some(existing) = inner.by_request.get(&key).and_then(|i| inner.spawns.get(i)) {
                if existing.spawn.fingerprint == fingerprint {
                    return Ok((existing.spawn.clone(), false));
                }
                return Err(ServiceError::Conflict {
                    code: "request_conflict",
                    message: format!(
                        "request id {:?} was already used for spawn {} with other options or command; use a new request id for a new start",
                        req.request_id, existing.spawn.id
                    ),
                    spawn_id: existing.spawn.id.clone(),
                });
            }
            if let Some(active) = inner.spawns.values().find(|e| {
                e.spawn.user.name == req.user.name
                    && e.spawn.server_name == req.server_name
                    && !e.spawn.state.is_terminal()
            }) {
                return Err(ServiceError::Conflict {
                    code: "server_active",
                    message: format!(
                        "server {:?} of {} is already {} as spawn {}; stop it first",
                        req.server_name, req.user.name, active.spawn.state, active.spawn.id
                    ),
                    spawn_id: active.spawn.id.clone(),
                });
            }
            let spawn = Spawn {
                id: id.clone(),
                user: req.user.clone(),
                server_name: req.server_name.clone(),
                request_id: req.request_id.clone(),
                instance: req.instance.clone(),
                state: SpawnState::Validating,
                reason: None,
                progress: SpawnState::Validating.progress(),
                raw_options: req.options.clone(),
                options: None,
                cmd: req.cmd.clone(),
                env_names: Vec::new(),
                job_id: None,
                plugin_state: String::new(),
                exec_host: None,
                expected_start: None,
                queue_position: None,
                time_limit_secs: None,
                end_time: None,
                host: None,
                port: None,
                tunnel_target: None,
                exit_code: None,
                unknown_polls: 0,
                flagged: None,
                created_at: now,
                updated_at: now,
                state_since: now,
                submit_started_at: None,
                fingerprint,
            };
            self.store.save(&spawn, None)?;
            inner.by_request.insert(key.clone(), id.clone());
            inner.spawns.insert(id.clone(), Entry::new(spawn, None));
        }
        self.update(&id, |_| Some("checking the options".into()))?;

        // What the plugin says reaches the API (errors) or the store
        // (options): sanitized and bounded here.
        let validated = match inst.validate(&req.user, &req.options).await {
            // Bounded by the runtime (`runtime::plugin::MAX_OPTIONS_BYTES`).
            Ok(o) => Ok(o),
            Err(ValidateError::Fields(f)) => Err(ServiceError::InvalidOptions(clean_fields(f))),
            Err(ValidateError::Call(c)) => Err(ServiceError::Plugin(clean_call_error(c))),
        };
        let options = match validated {
            Ok(o) => o,
            Err(e) => {
                // Nothing happened: forget the request, so a corrected
                // retry may use the same request id.
                {
                    let mut inner = self.lock();
                    inner.spawns.remove(&id);
                    inner.by_request.remove(&key);
                    self.store.delete(&id)?;
                }
                return Err(e);
            }
        };

        let hub_env: Vec<(String, String)> = req.env.into_iter().collect();
        // Kept until the submit returns, so that a restart in between can
        // submit it (see `pending_env`).
        pending_env::save(&self.registry.config.state_dir, &id, &hub_env)?;
        let (env, hash) = self.job_env(&req.instance, &id, hub_env);
        let names: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
        let mut submit = false;
        let spawn = self
            .update(&id, |e| {
                e.spawn.options = Some(options);
                e.spawn.env_names = names;
                if e.spawn.state == SpawnState::Stopping {
                    e.fire(Event::StoppedBeforeSubmit).ok()?;
                    e.spawn.reason = Some("stopped before the job was submitted".into());
                    return Some("stopped before the job was submitted".into());
                }
                e.fire(Event::Validated).ok()?;
                submit = true;
                e.callback_hash = Some(hash);
                Some("options accepted; submitting the job".into())
            })?
            .ok_or_else(|| ServiceError::NotFound(id.clone()))?;
        if submit {
            self.submits
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let guard = InFlight(self.clone());
            let me = self.clone();
            tokio::spawn(async move {
                let _guard = guard;
                me.submit_job(id, env).await
            });
        }
        Ok((spawn, true))
    }

    /// The job's environment: the hub's variables and the host's
    /// (callback URL, a fresh callback token, the spawn id); and the
    /// token's hash.
    fn job_env(
        &self,
        instance: &str,
        id: &str,
        mut env: Vec<(String, String)>,
    ) -> (Vec<(String, String)>, String) {
        let (tok, hash) = token::new_token();
        env.push((ENV_CALLBACK_URL.into(), self.callback_url(instance, id)));
        env.push((ENV_CALLBACK_TOKEN.into(), tok));
        env.push((ENV_SPAWN_ID.into(), id.to_string()));
        (env, hash)
    }

    /// Submits again, after a restart, the spawns recovery found provably
    /// without a job (`recovery`), with the hub's environment kept for them
    /// and a fresh callback token.
    fn resume_submits(self: &Arc<Self>) {
        let ids = std::mem::take(&mut self.lock().resubmit);
        for id in ids {
            let Ok(spawn) = self.get(&id) else { continue };
            let Some(hub_env) = pending_env::load(&self.registry.config.state_dir, &id) else {
                continue;
            };
            let (env, hash) = self.job_env(&spawn.instance, &id, hub_env);
            let r = self.update(&id, |e| {
                e.callback_hash = Some(hash);
                e.spawn.submit_started_at = None;
                Some("the host restarted before the job was submitted; submitting it now".into())
            });
            if let Err(e) = r {
                tracing::error!(spawn_id = %id, "cannot record the new submit: {e:#}");
                continue;
            }
            self.submits
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let guard = InFlight(self.clone());
            let me = self.clone();
            tokio::spawn(async move {
                let _guard = guard;
                me.submit_job(id, env).await
            });
        }
    }

    /// Submits the job of a spawn in `submitting` (its state was persisted
    /// before this runs). Audit before act: `submit_started_at` is stored
    /// before the plugin is called, so that recovery tells a submit that
    /// never started (submitted again) from one that may have made a job
    /// (asked through `find_jobs`).
    async fn submit_job(self: Arc<Self>, id: String, env: Vec<(String, String)>) {
        let Ok(spawn) = self.get(&id) else { return };
        if spawn.state == SpawnState::Stopping {
            let _ = self.update(&id, |e| {
                e.fire(Event::StoppedBeforeSubmit).ok()?;
                e.callback_hash = None;
                e.spawn.reason = Some("stopped before the job was submitted".into());
                Some("stopped before the job was submitted".into())
            });
            return;
        }
        let Some(inst) = self.registry.get(&spawn.instance).cloned() else {
            return;
        };
        let started = self.update(&id, |e| match e.spawn.state {
            SpawnState::Submitting => {
                e.spawn.submit_started_at = Some(Utc::now());
                None
            }
            SpawnState::Stopping => {
                e.fire(Event::StoppedBeforeSubmit).ok()?;
                e.callback_hash = None;
                e.spawn.reason = Some("stopped before the job was submitted".into());
                Some("stopped before the job was submitted".into())
            }
            _ => None,
        });
        match started {
            Ok(Some(s)) if s.state == SpawnState::Submitting && s.submit_started_at.is_some() => {}
            Ok(_) => return,
            Err(e) => {
                tracing::error!(spawn_id = %id, "cannot record the submit's start; not submitting: {e:#}");
                return;
            }
        }
        let user = spawn.user.name.clone();
        // A job on a submit host runs as ssh.user there: its home comes from
        // the config (ssh.home), never from this machine's accounts.
        let home = match crate::ssh_cmd::remote_home(&inst.config, &user) {
            crate::ssh_cmd::JobHome::Remote(h) => h,
            crate::ssh_cmd::JobHome::Local => {
                tokio::task::spawn_blocking(move || crate::users::home_of(&user))
                    .await
                    .ok()
                    .flatten()
            }
        };
        let job = JobSpec {
            spawn_id: id.clone(),
            user: spawn.user.clone(),
            options: spawn.options.clone().unwrap_or_default(),
            cmd: spawn.cmd.clone(),
            env_names: spawn.env_names.clone(),
            callback_url: self.callback_url(&spawn.instance, &id),
            home,
        };
        let ctx = CallContext {
            spawn_id: Some(id.clone()),
            user: Some(spawn.user.name.clone()),
            spawn_env: Arc::new(env),
            ..Default::default()
        };
        let result = inst
            .submit(ctx, &job)
            .await
            // Job id and state are checked by the runtime (`check_submitted`).
            .map_err(|e| sanitize::reason(&e.to_string()));
        let mut cancel = false;
        let r = self.update(&id, |e| match result {
            Ok(sub) => {
                e.spawn.job_id = Some(sub.job_id.clone());
                e.spawn.plugin_state = sub.state;
                if e.spawn.state == SpawnState::Stopping {
                    e.fire(Event::Submitted).ok()?;
                    e.cancel_due = true;
                    cancel = true;
                    Some(format!(
                        "job {} submitted while a stop was requested; cancelling it",
                        sub.job_id
                    ))
                } else {
                    e.fire(Event::Submitted).ok()?;
                    e.spawn.reason = Some("submitted".into());
                    Some(format!("job {} submitted", sub.job_id))
                }
            }
            Err(err) => {
                e.callback_hash = None;
                e.fire(Event::SubmitFailed).ok()?;
                let m = format!("the job could not be submitted: {err}");
                e.spawn.reason = Some(m.clone());
                Some(m)
            }
        });
        if let Err(e) = r {
            tracing::error!(spawn_id = %id, "cannot record the submitted job: {e:#}");
        }
        // Only once the job id is stored: a crash before that finds the
        // environment and can submit again (after `find_jobs`).
        pending_env::remove(&self.registry.config.state_dir, &id);
        if cancel {
            // Not awaited: a failing cancel backs off for minutes, and a
            // shutdown waits for this submit.
            tokio::spawn(self.clone().cancel_job(id.clone()));
        }
        self.wake(&spawn.instance);
    }

    /// Stops a spawn: cancels its job through the plugin; the poller
    /// confirms it through `status`. A spawn still validating or submitting
    /// stops before (or right after) its job is submitted.
    pub async fn stop(self: &Arc<Self>, id: &str) -> Result<Spawn, ServiceError> {
        let mut cancel = false;
        let spawn = self
            .update(id, |e| match e.spawn.state {
                SpawnState::Validating | SpawnState::Submitting => {
                    e.fire(Event::StopRequested).ok()?;
                    Some("stop requested before the job was submitted".into())
                }
                SpawnState::Queued | SpawnState::Running | SpawnState::Ready => {
                    e.fire(Event::StopRequested).ok()?;
                    e.callback_hash = None;
                    e.cancel_due = true;
                    e.cancel_next = None;
                    cancel = true;
                    Some("stop requested; cancelling the job".into())
                }
                SpawnState::Stopping | SpawnState::Stopped | SpawnState::Failed => None,
            })?
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))?;
        self.close_tunnel(id).await;
        if cancel {
            let me = self.clone();
            let id = id.to_string();
            tokio::spawn(async move { me.cancel_job(id).await });
        }
        // Ended: whatever process of it may still exist is ended too.
        if spawn.state.is_terminal() {
            self.kill_leftovers(&spawn);
        }
        Ok(spawn)
    }

    /// Sends the plugin's cancel for spawn `id` (unless one is in flight, or
    /// a failed one's backoff has not passed), and again after each failure:
    /// after [`cancel_backoff`] (1 s doubling to 5 min), for a stopping spawn
    /// until the cancel goes through, for a failed spawn's job at most
    /// [`MAX_CANCEL_ATTEMPTS`] times. A stopping spawn's `reason` says why it
    /// is still stopping; the failure's event is a [`Quiet::Cancel`] note.
    async fn cancel_job(self: Arc<Self>, id: String) {
        let weak = Arc::downgrade(&self);
        let mut svc = self;
        loop {
            let Some(wait) = svc.cancel_once(&id).await else {
                return;
            };
            // The service may go away while a cancel backs off.
            drop(svc);
            tokio::time::sleep(wait).await;
            let Some(s) = weak.upgrade() else { return };
            svc = s;
        }
    }

    /// One cancel; the wait before the next one when it failed and another
    /// is due.
    async fn cancel_once(&self, id: &str) -> Option<Duration> {
        let mut go = false;
        let now = std::time::Instant::now();
        let _ = self.update(id, |e| {
            if e.cancel_in_flight
                || !e.cancel_due
                || e.spawn.job_id.is_none()
                || e.cancel_next.is_some_and(|t| now < t)
            {
                return None;
            }
            e.cancel_in_flight = true;
            e.cancel_attempts += 1;
            go = true;
            None
        });
        if !go {
            return None;
        }
        let spawn = self.get(id).ok()?;
        let Some(inst) = self.registry.get(&spawn.instance).cloned() else {
            let _ = self.update(id, |e| {
                e.cancel_in_flight = false;
                None
            });
            return None;
        };
        let job = Job {
            job_id: spawn.job_id.clone().unwrap_or_default(),
            user: spawn.user.name.clone(),
            state: spawn.plugin_state.clone(),
        };
        let ctx = CallContext {
            spawn_id: Some(id.to_string()),
            user: Some(spawn.user.name.clone()),
            ..Default::default()
        };
        let r = inst
            .cancel(ctx, &job)
            .await
            .map_err(|e| sanitize::text(&e.to_string(), MAX_CANCEL_ERROR));
        let mut retry = None;
        let _ = self.update(id, |e| {
            e.cancel_in_flight = false;
            match &r {
                Ok(()) => {
                    e.cancel_due = false;
                    e.cancel_next = None;
                    e.cancel_attempts = 0;
                    Some(if e.spawn.state == SpawnState::Stopping {
                        e.spawn.reason =
                            Some("cancel sent; waiting for the scheduler to confirm".into());
                        "cancel sent; waiting for the scheduler to confirm".into()
                    } else {
                        format!("cancel of job {} sent", job.job_id)
                    })
                }
                Err(err) => {
                    let n = e.cancel_attempts;
                    if e.spawn.state != SpawnState::Stopping && n >= MAX_CANCEL_ATTEMPTS {
                        e.cancel_due = false;
                        e.cancel_next = None;
                        return Some(format!(
                            "cancelling job {} failed {n} times; the host stops trying: {err}",
                            job.job_id
                        ));
                    }
                    let wait = cancel_backoff(n);
                    e.cancel_next = Some(std::time::Instant::now() + wait);
                    retry = Some(wait);
                    if e.spawn.state == SpawnState::Stopping {
                        e.spawn.reason = Some(format!(
                            "cancelling job {} failed (attempt {n}): {err}; next try in {}s",
                            job.job_id,
                            wait.as_secs_f64().ceil()
                        ));
                    }
                    // The same words every attempt: the store coalesces
                    // repeats; a changing error is a throttled note.
                    e.quiet = Some(Quiet::Cancel);
                    Some(format!(
                        "cancelling job {} failed: {err}; retrying with a backoff (1 s doubling, at most {} s)",
                        job.job_id,
                        CANCEL_BACKOFF_MAX.as_secs()
                    ))
                }
            }
        });
        self.wake(&spawn.instance);
        retry
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

    fn wake(&self, instance: &str) {
        if let Some(p) = self.pollers.get(instance) {
            p.wake.notify_one();
        }
    }

    /// Counters for `GET /v1/metrics`.
    pub fn metrics(&self) -> serde_json::Value {
        let mut by_instance: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
        let mut totals: BTreeMap<&'static str, u64> =
            SpawnState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        {
            let inner = self.lock();
            for e in inner.spawns.values() {
                *totals.entry(e.spawn.state.as_str()).or_default() += 1;
                *by_instance
                    .entry(e.spawn.instance.clone())
                    .or_default()
                    .entry(e.spawn.state.as_str())
                    .or_default() += 1;
            }
        }
        let commands = self.registry.runtime.audit.programs_run();
        let instances: serde_json::Map<String, serde_json::Value> = self
            .pollers
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "status_calls": p.status_calls.load(std::sync::atomic::Ordering::Relaxed),
                        "jobs_polled": p.jobs_polled.load(std::sync::atomic::Ordering::Relaxed),
                        "last_poll": *p.last_poll.lock().unwrap(),
                        "scheduler_commands": commands.get(name).copied().unwrap_or(0),
                        "spawns": by_instance.get(name).cloned().unwrap_or_default(),
                    }),
                )
            })
            .collect();
        serde_json::json!({ "spawns": totals, "instances": instances })
    }
}

/// Longest value of one variable of a start request's `env`.
pub const MAX_ENV_VALUE: usize = 32 * 1024;
/// Most bytes of all of a start request's `env` (names, values, `=` and NUL
/// each): the job's environment and argv share the kernel's ARG_MAX (2 MiB
/// on Linux, less with a batch system's own variables), so a request is
/// refused here rather than failing at exec.
pub const MAX_ENV_TOTAL: usize = 256 * 1024;
/// Most variables in a start request's `env`.
pub const MAX_ENV_VARS: usize = 512;
/// Most arguments of `cmd`, and most bytes of all of them.
pub const MAX_CMD_ARGS: usize = 1024;
pub const MAX_CMD_TOTAL: usize = 64 * 1024;

fn check_request(req: &StartRequest) -> Result<(), ServiceError> {
    let bad = |m: String| Err(ServiceError::BadRequest(m));
    req.user.check().or_else(bad)?;
    if req.server_name.len() > 255 || req.server_name.chars().any(char::is_control) {
        return bad("server_name: at most 255 characters, no control characters".into());
    }
    if req.request_id.is_empty()
        || req.request_id.len() > 200
        || req.request_id.chars().any(char::is_control)
    {
        return bad(
            "request_id: give 1-200 characters without control characters (e.g. a UUID)".into(),
        );
    }
    if req.cmd.is_empty() || req.cmd[0].is_empty() {
        return bad(
            "cmd: give the single-user server command, e.g. [\"jupyterhub-singleuser\"]".into(),
        );
    }
    if req.cmd.iter().any(|a| a.contains('\0')) {
        return bad("cmd: an argument has a NUL byte".into());
    }
    let cmd_total: usize = req.cmd.iter().map(|a| a.len() + 1).sum();
    if req.cmd.len() > MAX_CMD_ARGS || cmd_total > MAX_CMD_TOTAL {
        return bad(format!(
            "cmd: {} arguments, {cmd_total} bytes; at most {MAX_CMD_ARGS} arguments and {} KiB in all",
            req.cmd.len(),
            MAX_CMD_TOTAL / 1024
        ));
    }
    if req.env.len() > MAX_ENV_VARS {
        return bad(format!(
            "env: {} variables; at most {MAX_ENV_VARS}",
            req.env.len()
        ));
    }
    let env_total: usize = req.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if env_total > MAX_ENV_TOTAL {
        return bad(format!(
            "env: {env_total} bytes in all; at most {} KiB (names and values)",
            MAX_ENV_TOTAL / 1024
        ));
    }
    for (k, v) in &req.env {
        if !valid_env_name(k) {
            return bad(format!(
                "env: {k:?} is not a variable name (A-Z, a-z, 0-9, _)"
            ));
        }
        if k.starts_with("WASMSPAWNER_") {
            return bad(format!(
                "env: {k} is set by the host; the hub may not set WASMSPAWNER_* variables"
            ));
        }
        if v.contains('\0') {
            return bad(format!("env: the value of {k} has a NUL byte"));
        }
        if v.len() > MAX_ENV_VALUE {
            return bad(format!(
                "env: the value of {k} is {} bytes; at most {} KiB per variable",
                v.len(),
                MAX_ENV_VALUE / 1024
            ));
        }
    }
    Ok(())
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
