//! One poller per plugin instance. Every interval (plus up to 10% jitter) it
//! makes **one** `status` call with all live jobs of the instance and applies
//! the answers; hub polls read the result from memory. While a spawn is
//! fresh (submitted, not yet ready, within `fast_window`) or stopping, the
//! poller uses the shorter `fast_poll` interval — still one call for all.
//! A submit or a stop wakes it early, but never sooner than `fast_poll`
//! after the previous call, so a burst of spawns is still one call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::transitions::{self, Event};
use super::{Quiet, Service};
use crate::config::Lifecycle;
use crate::exec_host::Policy;
use crate::model::{Job, JobState, SpawnState};
use crate::sanitize;

pub struct PollerState {
    pub lifecycle: Lifecycle,
    pub wake: Notify,
    /// `status` calls made.
    pub status_calls: AtomicU64,
    /// Jobs asked about, summed over all calls.
    pub jobs_polled: AtomicU64,
    pub last_poll: Mutex<Option<chrono::DateTime<Utc>>>,
    /// Set with a wake: poll now (at most one per [`URGENT_GAP`]), not at
    /// the fast pace: a callback is waiting for the job's execution host.
    pub urgent: AtomicBool,
    /// Polls finished, and their signal ([`Service::poll_for_host`]).
    pub polls_done: AtomicU64,
    pub polled: Notify,
}

/// The shortest time between two urgent polls: callbacks arriving together
/// share one `status` call.
pub const URGENT_GAP: Duration = Duration::from_millis(50);

impl PollerState {
    pub fn new(lifecycle: Lifecycle) -> PollerState {
        PollerState {
            lifecycle,
            wake: Notify::new(),
            status_calls: AtomicU64::new(0),
            jobs_polled: AtomicU64::new(0),
            last_poll: Mutex::new(None),
            urgent: AtomicBool::new(false),
            polls_done: AtomicU64::new(0),
            polled: Notify::new(),
        }
    }
}

fn jitter(d: Duration) -> Duration {
    d + d.mul_f64(rand::random::<f64>() * 0.1)
}

/// The poller task of `instance`; ends when the service is gone.
pub async fn run(svc: Weak<Service>, instance: String) {
    let Some(state) = svc
        .upgrade()
        .and_then(|s| s.pollers.get(&instance).cloned())
    else {
        return;
    };
    let lc = state.lifecycle.clone();
    let mut last = Instant::now();
    // The first poll comes soon after start: recovered jobs are looked at
    // again at once.
    let mut due = last + lc.fast_poll;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = state.wake.notified() => {
                // Something new: poll at the fast pace, not before; a
                // callback waiting for its job's host: now.
                let floor = if state.urgent.swap(false, Ordering::SeqCst) {
                    URGENT_GAP
                } else {
                    lc.fast_poll
                };
                due = due.min(last + floor);
                if Instant::now() < due {
                    continue;
                }
            }
        }
        let Some(s) = svc.upgrade() else { return };
        last = Instant::now();
        s.poll_once(&instance, &state).await;
        state.polls_done.fetch_add(1, Ordering::SeqCst);
        state.polled.notify_waiters();
        let fast = s.needs_fast_poll(&instance, &lc);
        drop(s);
        due = last + jitter(if fast { lc.fast_poll } else { lc.poll_interval });
    }
}

impl Service {
    /// A callback came before the scheduler said where spawn `id`'s job
    /// runs: asks the instance's poller for a `status` call now (batched
    /// with any in flight and with other callbacks waiting) and waits,
    /// at most `limit`, until the spawn has an execution host or is no
    /// longer queued or running.
    pub(crate) async fn poll_for_host(&self, instance: &str, id: &str, limit: Duration) {
        let Some(ps) = self.pollers.get(instance) else {
            return;
        };
        let deadline = Instant::now() + limit;
        loop {
            let known = self.get(id).map_or(true, |s| {
                s.exec_host.is_some()
                    || !matches!(s.state, SpawnState::Queued | SpawnState::Running)
            });
            if known {
                return;
            }
            let done = ps.polled.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            ps.urgent.store(true, Ordering::SeqCst);
            ps.wake.notify_one();
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return;
            }
        }
    }

    fn needs_fast_poll(&self, instance: &str, lc: &Lifecycle) -> bool {
        let now = Utc::now();
        let window = chrono::Duration::from_std(lc.fast_window).unwrap_or_default();
        self.lock().spawns.values().any(|e| {
            e.spawn.instance == instance
                && match e.spawn.state {
                    SpawnState::Submitting | SpawnState::Queued | SpawnState::Running => {
                        now - e.spawn.state_since < window
                    }
                    SpawnState::Stopping => true,
                    _ => false,
                }
        })
    }

    /// One batched `status` call for every live job of `instance`.
    pub(crate) async fn poll_once(self: &Arc<Self>, instance: &str, ps: &PollerState) {
        let live: Vec<(String, Job)> = self
            .lock()
            .spawns
            .values()
            .filter(|e| e.spawn.instance == instance && e.spawn.state.is_polled())
            .filter_map(|e| {
                Some((
                    e.spawn.id.clone(),
                    Job {
                        job_id: e.spawn.job_id.clone()?,
                        user: e.spawn.user.name.clone(),
                        state: e.spawn.plugin_state.clone(),
                    },
                ))
            })
            .collect();
        if live.is_empty() {
            return;
        }
        let Some(inst) = self.registry.get(instance).cloned() else {
            return;
        };
        let jobs: Vec<Job> = live.iter().map(|(_, j)| j.clone()).collect();
        ps.status_calls.fetch_add(1, Ordering::Relaxed);
        ps.jobs_polled
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        let reports = match inst.status_reports(&jobs).await {
            Ok(r) => r,
            Err(e) => {
                let reason = format!(
                    "the status call failed: {}",
                    sanitize::reason(&e.to_string())
                );
                vec![
                    crate::model::JobReport {
                        state: JobState::Unknown { reason },
                        facts: Default::default(),
                    };
                    jobs.len()
                ]
            }
        };
        let (states, facts): (Vec<JobState>, Vec<crate::model::JobFacts>) =
            reports.into_iter().map(|r| (r.state, r.facts)).unzip();
        // The queue position, time limit and end beside the state (plugin
        // API 0.2): kept on the spawn, not events of their own.
        for ((id, _), f) in live.iter().zip(&facts) {
            self.note_facts(id, f);
        }
        *ps.last_poll.lock().unwrap() = Some(Utc::now());
        let mut cancels = Vec::new();
        for ((id, _), st) in live.into_iter().zip(states) {
            match self.apply(&id, clean_state(st), &ps.lifecycle, instance) {
                Ok(a) => {
                    if let Some((host, why)) = a.refused {
                        self.audit_refusal(&id, &host, &why);
                    }
                    if a.cancel {
                        cancels.push(id);
                    }
                }
                Err(e) => tracing::error!(spawn_id = %id, "cannot record the job's state: {e:#}"),
            }
        }
        for id in cancels {
            let me = self.clone();
            tokio::spawn(async move { me.cancel_job(id).await });
        }
    }

    /// Keeps what a status answer said beside the state (queue position,
    /// time limit, end) on the spawn. Silent (no event); an end that moved
    /// by less than a minute (a scheduler's "time left" read at another
    /// second) is not written again.
    fn note_facts(&self, id: &str, f: &crate::model::JobFacts) {
        let r = self.update(id, |e| {
            let s = &mut e.spawn;
            if f.queue_position.is_some() || s.state == SpawnState::Queued {
                s.queue_position = f.queue_position;
            } else {
                s.queue_position = None;
            }
            if f.time_limit_secs.is_some() {
                s.time_limit_secs = f.time_limit_secs;
            }
            if let Some(end) = f.ends_at {
                if s.end_time.is_none_or(|old| old.abs_diff(end) >= 60) {
                    s.end_time = Some(end);
                }
            }
            None
        });
        if let Err(e) = r {
            tracing::error!(spawn_id = %id, "cannot record the job's time limit: {e:#}");
        }
    }

    /// Applies one job state to its spawn: whether a cancel must be sent,
    /// and the execution host refused (for the audit log).
    fn apply(
        &self,
        id: &str,
        st: JobState,
        lc: &Lifecycle,
        instance: &str,
    ) -> anyhow::Result<Applied> {
        let now = Utc::now();
        let policy = Policy::of(instance, lc);
        let mut cancel = false;
        let mut refused = None;
        self.update(id, |e| {
            // A failed cancel of a stopping spawn is sent again once its
            // backoff has passed (and at the first poll after a restart).
            let cancel_ready = e.spawn.state == SpawnState::Stopping
                && e.cancel_due
                && !e.cancel_in_flight
                && e.cancel_next.is_none_or(|t| std::time::Instant::now() >= t);
            let s = &mut e.spawn;
            if let JobState::Unknown { reason } = &st {
                cancel = cancel_ready;
                s.unknown_polls += 1;
                if s.unknown_polls == lc.unknown_grace_polls {
                    let m = format!(
                        "the scheduler has not said how job {} is for {} polls in a row ({reason}); the job is kept and still polled",
                        s.job_id.as_deref().unwrap_or("?"),
                        s.unknown_polls
                    );
                    s.flagged = Some(m.clone());
                    e.quiet = Some(Quiet::Health);
                    return Some(m);
                }
                return None;
            }
            let mut message = None;
            s.unknown_polls = 0;
            if s.flagged.take().is_some() {
                e.quiet = Some(Quiet::Health);
                message = Some("the scheduler answers again".to_string());
            }
            // The host the scheduler names passes the instance's rule
            // before the spawn uses it.
            if let JobState::Running { host: Some(h) } = &st {
                let used = matches!(
                    s.state,
                    SpawnState::Queued | SpawnState::Running | SpawnState::Ready
                );
                if used && s.exec_host.as_deref() != Some(h.as_str()) {
                    if let Err(why) = policy.check(h) {
                        refused = Some((h.clone(), why.clone()));
                        let job = s.job_id.clone().unwrap_or_else(|| "?".into());
                        e.quiet = Some(Quiet::Host);
                        if s.state == SpawnState::Ready {
                            return Some(format!(
                                "the scheduler now reports job {job} on a host the instance refuses ({why}); the server stays where it reported"
                            ));
                        }
                        let m = format!(
                            "the scheduler reports job {job} running on a host the instance refuses: {why}; the job is cancelled"
                        );
                        s.state = transitions::next(s.state, Event::HostRefused).ok()?.to;
                        s.reason = Some(m.clone());
                        e.callback_hash = None;
                        e.cancel_due = true;
                        cancel = true;
                        return Some(m);
                    }
                }
            }
            let waited = (now - s.state_since).to_std().unwrap_or_default();
            match (s.state, st) {
                (SpawnState::Queued, JobState::Pending { reason, expected_start }) => {
                    if waited > lc.queue_timeout {
                        s.state = transitions::next(s.state, Event::Timeout).ok()?.to;
                        let m = format!(
                            "the job waited in the queue longer than {} s (lifecycle.queue_timeout_secs; last reason: {reason}); it is cancelled",
                            lc.queue_timeout.as_secs()
                        );
                        s.reason = Some(m.clone());
                        e.callback_hash = None;
                        e.cancel_due = true;
                        cancel = true;
                        return Some(m);
                    }
                    if s.reason.as_deref() != Some(&reason) || s.expected_start != expected_start {
                        // A reason that changes every poll is one event a minute.
                        e.quiet = Some(Quiet::Reason);
                        let m = match expected_start {
                            Some(t) => format!(
                                "queued: {reason} (expected start {})",
                                chrono::DateTime::from_timestamp(t as i64, 0)
                                    .map(|d| d.to_rfc3339())
                                    .unwrap_or_else(|| t.to_string())
                            ),
                            None => format!("queued: {reason}"),
                        };
                        s.reason = Some(reason);
                        s.expected_start = expected_start;
                        return Some(m);
                    }
                }
                (SpawnState::Queued, JobState::Running { host }) => {
                    s.state = transitions::next(s.state, Event::JobRunning).ok()?.to;
                    s.exec_host = host.clone();
                    s.reason = None;
                    return Some(match host {
                        Some(h) => format!("job running on {h}; waiting for the server to start"),
                        None => "job running; waiting for the server to start".into(),
                    });
                }
                (SpawnState::Running, JobState::Running { host }) => {
                    if host.is_some() {
                        s.exec_host = host;
                    }
                    // Once the port is reported, the listen check has
                    // its own bound (`readiness`, from the callback).
                    if waited > lc.start_timeout && s.port.is_none() {
                        s.state = transitions::next(s.state, Event::Timeout).ok()?.to;
                        let m = format!(
                            "the server did not report its port within {} s of the job starting (lifecycle.start_timeout_secs); the job is cancelled",
                            lc.start_timeout.as_secs()
                        );
                        s.reason = Some(m.clone());
                        e.callback_hash = None;
                        e.cancel_due = true;
                        cancel = true;
                        return Some(m);
                    }
                }
                (SpawnState::Running, JobState::Pending { reason, expected_start }) => {
                    s.state = transitions::next(s.state, Event::JobPending).ok()?.to;
                    s.expected_start = expected_start;
                    s.reason = Some(reason.clone());
                    return Some(format!("the job is pending again: {reason}"));
                }
                (SpawnState::Ready, JobState::Running { host: Some(h) }) => {
                    s.exec_host = Some(h);
                }
                (SpawnState::Queued | SpawnState::Running, JobState::Done { exit_code, reason }) => {
                    s.state = transitions::next(s.state, Event::JobEnded).ok()?.to;
                    s.exit_code = exit_code;
                    e.callback_hash = None;
                    let m = format!(
                        "the job ended before the server reported its port: {reason}{}",
                        exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default()
                    );
                    s.reason = Some(m.clone());
                    return Some(m);
                }
                (SpawnState::Ready, JobState::Done { exit_code, reason }) => {
                    s.state = transitions::next(s.state, Event::JobEnded).ok()?.to;
                    s.exit_code = exit_code;
                    let m = format!("the server's job ended: {reason}");
                    s.reason = Some(m.clone());
                    return Some(m);
                }
                (SpawnState::Stopping, JobState::Done { exit_code, .. }) => {
                    s.state = transitions::next(s.state, Event::JobEnded).ok()?.to;
                    s.exit_code = exit_code;
                    s.reason = Some("stopped".into());
                    e.cancel_due = false;
                    return Some("the job is gone: stopped".into());
                }
                // Not gone yet: a cancel that failed is sent again.
                (SpawnState::Stopping, _) if cancel_ready => {
                    cancel = true;
                }
                _ => {}
            }
            message
        })?;
        Ok(Applied { cancel, refused })
    }
}

/// What applying a job state asks for.
pub(crate) struct Applied {
    /// A cancel must be sent.
    pub cancel: bool,
    /// The execution host refused, and why.
    pub refused: Option<(String, String)>,
}

/// A job state with the plugin's texts sanitized and bounded (the runtime
/// tidies them too; this is where they enter the service).
fn clean_state(st: JobState) -> JobState {
    match st {
        JobState::Pending {
            reason,
            expected_start,
        } => JobState::Pending {
            reason: sanitize::reason(&reason),
            expected_start,
        },
        JobState::Running { host } => JobState::Running {
            host: host.map(|h| sanitize::text(&h, 253)),
        },
        JobState::Done { exit_code, reason } => JobState::Done {
            exit_code,
            reason: sanitize::reason(&reason),
        },
        JobState::Unknown { reason } => JobState::Unknown {
            reason: sanitize::reason(&reason),
        },
    }
}
