//! Startup: every stored spawn is loaded again. Spawns with a job are polled
//! as before; spawns caught before their job was submitted end (see
//! [`recover_one`]).

use anyhow::Result;

use super::transitions::Event;
use super::{Entry, Service};
use crate::model::SpawnState;

impl Service {
    /// Loads every stored spawn. Spawns caught before their job was
    /// submitted fail (see `recover_one`); the rest are polled again.
    pub(super) fn recover(&self) -> Result<()> {
        let stored = self.store.load_all()?;
        let n = stored.len();
        let mut failed = 0;
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
            let change = recover_one(&mut e);
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
            if let Some((event, message)) = change {
                failed += 1;
                self.update(&id, |e| {
                    e.fire(event).ok()?;
                    e.spawn.reason = Some(message.clone());
                    e.callback_hash = None;
                    Some(message)
                })?;
            }
        }
        if n > 0 {
            tracing::info!(
                "recovered {n} spawns from {} ({failed} caught before submit were ended)",
                self.store.path().display()
            );
        }
        Ok(())
    }
}

/// What a spawn found at startup needs: spawns caught before their job was
/// submitted end, because the hub's environment (which the job needs) is
/// never stored, and because a spawn in `submitting` may or may not have a
/// job: submitting again could start a second one. It fails with a reason
/// that says so; if the scheduler did accept a job, that job's callback is
/// refused (the spawn is no longer queued or running).
fn recover_one(e: &mut Entry) -> Option<(Event, String)> {
    match (e.spawn.state, &e.spawn.job_id) {
        (SpawnState::Validating, _) => Some((
            Event::Restarted,
            "the host restarted while checking the options; nothing was submitted; start the server again".into(),
        )),
        (SpawnState::Submitting, _) => Some((
            Event::Restarted,
            format!(
                "the host restarted while submitting the job; it is not submitted again so that no second job can start. If the scheduler did accept it, the job (spawn {}) cannot report to the host; start the server again",
                e.spawn.id
            ),
        )),
        (SpawnState::Stopping, None) => Some((
            Event::StoppedBeforeSubmit,
            "stopped (the host restarted before the job was submitted)".into(),
        )),
        _ => None,
    }
}
