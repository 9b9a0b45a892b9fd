//! Stopping a spawn: the cancel of its job, retried with a capped
//! backoff until the job is gone, and leftovers of the `local` plugin.

use std::sync::Arc;
use std::time::Duration;

use super::table::Quiet;
use super::transitions::Event;
use super::{Service, ServiceError};
use crate::capability::gate::CallContext;
use crate::model::{Job, Spawn, SpawnState};
use crate::sanitize;

/// The first wait after a failed cancel; it doubles with every failure...
pub const CANCEL_BACKOFF_FIRST: Duration = Duration::from_secs(1);

/// ...up to this (each wait ±10% jitter).
pub const CANCEL_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Longest piece of a failed cancel's error quoted in the spawn's reason.
pub(super) const MAX_CANCEL_ERROR: usize = 300;

/// Cancels of the job of a spawn that failed (by timeout, or a refused
/// host) are tried this often; a stopping spawn's until the job is gone.
pub(super) const MAX_CANCEL_ATTEMPTS: u32 = 5;

/// The wait after the `n`th failed cancel in a row (`n` ≥ 1): 1 s, doubling,
/// at most 5 min ([`CANCEL_BACKOFF_FIRST`], [`CANCEL_BACKOFF_MAX`]), ±10%.
pub fn cancel_backoff(n: u32) -> Duration {
    let doubled = CANCEL_BACKOFF_FIRST.saturating_mul(1 << n.saturating_sub(1).min(20));
    doubled
        .min(CANCEL_BACKOFF_MAX)
        .mul_f64(0.9 + 0.2 * rand::random::<f64>())
}

impl Service {
    /// A spawn has ended: whatever the plugin did, nothing this host
    /// started for it as a detached process survives (the process, and all
    /// it started, `setsid` or not; see `capability::contain`).
    pub(super) fn kill_leftovers(&self, spawn: &Spawn) {
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
    pub(super) async fn cancel_job(self: Arc<Self>, id: String) {
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
    pub(super) async fn cancel_once(&self, id: &str) -> Option<Duration> {
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
}
