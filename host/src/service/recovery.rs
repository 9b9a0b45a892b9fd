//! Startup: every stored spawn is loaded again. Spawns with a job are polled
//! as before. A spawn caught before or during its submit is resolved
//! without an orphan or a duplicate ([`Service::recover_one`]):
//!
//! - submit never started (`submit_started_at` unset: it is stored before
//!   the plugin is called) → submitted now, with the hub's environment kept
//!   for it (`pending_env`) and a fresh callback token;
//! - submit started, no job id recorded → the host asks which job exists
//!   for the spawn (`find_jobs`): one found is adopted; provably none →
//!   submitted now; a plugin that cannot be asked (plugin API 0.1) → the
//!   spawn fails with a reason that says so and names the spawn id the job
//!   would carry;
//! - the hub's environment lost (a store from an older host) → failed, with
//!   the reason.
//!
//! A spawn still `validating` was never acknowledged (the 201 comes after
//! validation) and nothing was submitted: it is forgotten, and the hub's
//! retry with the same request id starts it anew. Only a spawn that cannot
//! be resolved fails.

use anyhow::Result;

use super::find_jobs::Found;
use super::transitions::Event;
use super::{pending_env, Entry, Service};
use crate::model::SpawnState;

/// What recovery does with one spawn.
enum Action {
    Keep,
    /// Never acknowledged (the 201 comes after validation): forgotten, so
    /// the hub's retry with the same request id starts it anew.
    Forget,
    End(Event, String),
    Resubmit,
    Adopt(crate::model::Job),
    /// Ask the plugin which job exists (API 0.2 `find-jobs`), once the
    /// runtime runs: [`Service::resume_finds`].
    Ask,
}

impl Service {
    /// Loads every stored spawn and resolves those caught before their job
    /// was known (see the module).
    pub(super) fn recover(&self) -> Result<()> {
        let stored = self.store.load_all()?;
        let n = stored.len();
        let (mut ended, mut resubmitted, mut adopted, mut forgotten) = (0, 0, 0, 0);
        // The environments kept on disk (usually none): looked at once, not
        // once per spawn.
        let mut kept = pending_env::list(&self.registry.config.state_dir);
        for st in stored {
            let stopping = st.spawn.state == SpawnState::Stopping;
            let mut e = Entry::new(st.spawn, st.callback_hash);
            e.cancel_due = stopping;
            // Stored before the bounds existed, or by hand: bounded now.
            super::bound_spawn(&mut e.spawn);
            let id = e.spawn.id.clone();
            let key = (
                e.spawn.user.name.clone(),
                e.spawn.server_name.clone(),
                e.spawn.request_id.clone(),
            );
            {
                let mut inner = self.lock();
                inner.by_request.insert(key, id.clone());
                if !e.spawn.state.is_terminal() {
                    if let Some(ep) = super::readiness::endpoint_of(&e.spawn) {
                        inner.endpoints.insert(ep, id.clone());
                    }
                }
                inner.spawns.insert(id.clone(), e.clone());
            }
            if kept.remove(&id) && e.spawn.state != SpawnState::Submitting {
                pending_env::remove(&self.registry.config.state_dir, &id);
            }
            match self.recover_one(&e) {
                Action::Keep => {}
                Action::Forget => {
                    forgotten += 1;
                    let mut inner = self.lock();
                    inner.spawns.remove(&id);
                    inner.by_request.retain(|_, v| *v != id);
                    self.store.delete(&id)?;
                }
                Action::End(event, message) => {
                    ended += 1;
                    self.update(&id, |e| {
                        e.fire(event).ok()?;
                        e.spawn.reason = Some(message.clone());
                        e.callback_hash = None;
                        Some(message)
                    })?;
                }
                Action::Resubmit => {
                    resubmitted += 1;
                    self.lock().resubmit.push(id);
                }
                Action::Ask => self.lock().ask.push(id),
                Action::Adopt(job) => {
                    adopted += 1;
                    pending_env::remove(&self.registry.config.state_dir, &id);
                    self.update(&id, |e| {
                        e.spawn.job_id = Some(job.job_id.clone());
                        e.spawn.plugin_state = job.state.clone();
                        e.fire(Event::Submitted).ok()?;
                        Some(format!(
                            "the host restarted during the submit; the scheduler has job {} for this spawn: adopted",
                            job.job_id
                        ))
                    })?;
                }
            }
        }
        // Kept for spawns the store does not have: nothing will submit them.
        for id in kept {
            pending_env::remove(&self.registry.config.state_dir, &id);
        }
        if n > 0 {
            tracing::info!(
                "recovered {n} spawns from {} ({resubmitted} to submit again, {adopted} jobs adopted, {ended} ended, {forgotten} never acknowledged forgotten)",
                self.store.path().display()
            );
        }
        Ok(())
    }

    fn recover_one(&self, e: &Entry) -> Action {
        let s = &e.spawn;
        let state_dir = &self.registry.config.state_dir;
        match (s.state, &s.job_id) {
            (SpawnState::Validating, _) => Action::Forget,
            (SpawnState::Submitting, _) => {
                let env_kept = pending_env::load(state_dir, &s.id).is_some();
                let lost = || {
                    Action::End(
                        Event::Restarted,
                        "the host restarted before the job was submitted, and the hub's environment for it is gone; nothing was submitted; start the server again".into(),
                    )
                };
                if s.submit_started_at.is_none() {
                    return if env_kept { Action::Resubmit } else { lost() };
                }
                match self.find_jobs(&s.instance, std::slice::from_ref(&s.id)) {
                    Ok(found) => match found.into_iter().next() {
                        Some(Found::Job(job)) => Action::Adopt(job),
                        _ if env_kept => Action::Resubmit,
                        _ => lost(),
                    },
                    Err(super::find_jobs::FindJobsError::AskPlugin) => Action::Ask,
                    Err(why) => Action::End(
                        Event::Restarted,
                        format!(
                            "the host restarted while the plugin was submitting the job, and it cannot tell whether the scheduler accepted it: {why}. If a job for spawn {} exists, cancel it by hand; start the server again",
                            s.id
                        ),
                    ),
                }
            }
            (SpawnState::Stopping, None) if s.submit_started_at.is_some() => {
                match self.find_jobs(&s.instance, std::slice::from_ref(&s.id)) {
                    Ok(found) => match found.into_iter().next() {
                        Some(Found::Job(job)) => Action::Adopt(job),
                        _ => Action::End(
                            Event::StoppedBeforeSubmit,
                            "stopped (the host restarted during the submit; no job was left)".into(),
                        ),
                    },
                    Err(super::find_jobs::FindJobsError::AskPlugin) => Action::Ask,
                    Err(why) => Action::End(
                        Event::StoppedBeforeSubmit,
                        format!(
                            "stopped; the host restarted while the plugin was submitting the job and cannot tell whether the scheduler accepted it: {why}. If a job for spawn {} exists, cancel it by hand",
                            s.id
                        ),
                    ),
                }
            }
            (SpawnState::Stopping, None) => Action::End(
                Event::StoppedBeforeSubmit,
                "stopped (the host restarted before the job was submitted)".into(),
            ),
            _ => Action::Keep,
        }
    }
}
