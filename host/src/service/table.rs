//! The spawn table: the spawns in memory (each with what is not part of
//! its record), the one way to change one ([`Service::update`]: through
//! the transition table, stored before anything acts on it), and reads.

use std::collections::HashMap;

use anyhow::Result;
use chrono::Utc;

use super::transitions::{self, Event, IllegalTransition};
use super::{pending_env, Service, ServiceError, MAX_MESSAGE, QUIET_EVERY};
use crate::model::{Spawn, SpawnEvent, SpawnState};
use crate::sanitize;

/// A spawn in memory: its record plus what is not part of the record.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub(super) spawn: Spawn,
    pub(super) callback_hash: Option<String>,
    /// A cancel must (still) be sent.
    pub(super) cancel_due: bool,
    pub(super) cancel_in_flight: bool,
    /// Cancels sent since the last one that went through.
    pub(super) cancel_attempts: u32,
    /// After a failed cancel: not before this is the next one sent.
    pub(super) cancel_next: Option<std::time::Instant>,
    /// Set by an [`Service::update`] closure: its message is a note of this
    /// kind, throttled to one per [`QUIET_EVERY`].
    pub(super) quiet: Option<Quiet>,
    /// When a note of each [`Quiet`] kind was last recorded.
    pub(super) quiet_at: [Option<std::time::Instant>; Quiet::KINDS],
    /// Execution-host refusals audited, and the last one (host, when).
    pub(super) refusals_audited: u32,
    pub(super) last_refusal: Option<(String, std::time::Instant)>,
}

impl Entry {
    /// Changes the spawn's state by `event`, as the transition table says;
    /// an illegal event is logged and changes nothing.
    pub(super) fn fire(&mut self, event: Event) -> Result<transitions::Row, IllegalTransition> {
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

    pub(super) fn new(spawn: Spawn, callback_hash: Option<String>) -> Entry {
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
pub(super) enum Quiet {
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
pub(super) struct Inner {
    pub(super) spawns: HashMap<String, Entry>,
    pub(super) by_request: HashMap<(String, String, String), String>,
    /// Server address (see [`readiness::endpoint_key`]) → the spawn that
    /// reported it; a terminal spawn's entry is free again.
    pub(super) endpoints: HashMap<String, String>,
    /// Spawns recovery found provably without a job, to submit again once
    /// the runtime runs ([`Service::resume_submits`]).
    pub(super) resubmit: Vec<String>,
    /// Spawns caught during their submit whose plugin can say which job
    /// exists (API 0.2 `find-jobs`), asked once the runtime runs
    /// ([`Service::resume_finds`]).
    pub(super) ask: Vec<String>,
}

/// `s` without unsafe characters, at most `max` bytes; unchanged (no copy)
/// when it already is.
pub(super) fn bounded(s: &mut String, max: usize) {
    if s.len() > max || !sanitize::is_clean(s) {
        *s = sanitize::text(s, max);
    }
}

/// The net under the sanitizing where each value enters: a spawn's texts
/// within their bounds before they are stored.
pub(super) fn bound_spawn(s: &mut Spawn) {
    for t in [&mut s.reason, &mut s.flagged].into_iter().flatten() {
        bounded(t, MAX_MESSAGE);
    }
    if let Some(h) = &mut s.exec_host {
        bounded(h, 253);
    }
}

impl Service {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
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
    pub(super) fn update<F>(&self, id: &str, f: F) -> Result<Option<Spawn>>
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

    pub(super) fn wake(&self, instance: &str) {
        if let Some(p) = self.pollers.get(instance) {
            p.wake.notify_one();
        }
    }
}
