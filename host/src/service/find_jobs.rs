//! Recovery's question to a plugin: which jobs exist for these spawns?
//!
//! - The `local` plugin's processes the host finds itself, by their spawn
//!   tag (the containment units it started them in): at once, in
//!   [`Service::find_jobs`].
//! - A plugin of API 0.2 answers `find-jobs` (one scheduler command for
//!   many spawns): recovery marks those spawns [`FindJobsError::AskPlugin`]
//!   and [`Service::resume_finds`] asks once the runtime runs, per
//!   instance, again with backoff while the scheduler's answer proves
//!   nothing, for at most the instance's `lifecycle.start_timeout_secs`.
//! - A plugin of API 0.1 cannot be asked: [`FindJobsError::Unsupported`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::transitions::Event;
use super::{pending_env, Service};
use crate::model::{Job, SpawnRef, SpawnState};
use crate::runtime::plugin::FindJobsError as PluginFindError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindJobsError {
    #[error("plugin instance `{instance}` (plugin API {api_version}) cannot be asked which jobs exist for a spawn: that is plugin API 0.2's find-jobs")]
    Unsupported {
        instance: String,
        api_version: String,
    },
    #[error("no plugin instance `{0}`")]
    UnknownInstance(String),
    /// The plugin answers `find-jobs`: ask it (asynchronously).
    #[error("the plugin is to be asked (find-jobs)")]
    AskPlugin,
}

/// What the host found for one spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The scheduler has this job for the spawn: adopt it.
    #[allow(dead_code)] // Answered by plugin API 0.2's find-jobs.
    Job(Job),
    /// Provably none (any process found by its spawn tag was ended).
    None,
}

impl Service {
    /// The jobs that exist for `spawn_ids` of `instance`, one answer per id.
    /// Blocking for a few seconds at most (containment kills).
    pub(super) fn find_jobs(
        &self,
        instance: &str,
        spawn_ids: &[String],
    ) -> Result<Vec<Found>, FindJobsError> {
        let inst = self
            .registry
            .get(instance)
            .ok_or_else(|| FindJobsError::UnknownInstance(instance.to_string()))?;
        let current = inst.current();
        let d = &current.descriptor;
        if d.name == "local" {
            // A local job is a process this host started in a unit tagged
            // with the spawn: ending every such unit leaves provably none.
            let detached = &self.registry.runtime.detached;
            return Ok(spawn_ids
                .iter()
                .map(|id| {
                    let n = detached.kill_all_for(instance, id);
                    if n > 0 {
                        tracing::warn!(spawn_id = %id, "ended {n} processes started for the spawn by a submit the host did not see return");
                    }
                    Found::None
                })
                .collect());
        }
        if current.api >= crate::runtime::bindings::ApiVersion::V0_2 {
            return Err(FindJobsError::AskPlugin);
        }
        Err(FindJobsError::Unsupported {
            instance: instance.to_string(),
            api_version: d.api_version.clone(),
        })
    }

    /// Asks the plugins which jobs exist for the spawns recovery marked
    /// [`FindJobsError::AskPlugin`] (one `find-jobs` call per instance for
    /// all its spawns), then adopts the job found, submits again a spawn
    /// provably without one, or ends it with the reason.
    pub(super) fn resume_finds(self: &Arc<Self>) {
        let ids = std::mem::take(&mut self.lock().ask);
        let mut by_instance: BTreeMap<String, Vec<SpawnRef>> = BTreeMap::new();
        for id in ids {
            let Ok(s) = self.get(&id) else { continue };
            by_instance
                .entry(s.instance.clone())
                .or_default()
                .push(SpawnRef {
                    spawn_id: id,
                    user: s.user.name.clone(),
                });
        }
        for (instance, refs) in by_instance {
            let me = self.clone();
            tokio::spawn(async move { me.ask_plugin(&instance, refs).await });
        }
    }

    async fn ask_plugin(self: Arc<Self>, instance: &str, refs: Vec<SpawnRef>) {
        let Some(inst) = self.registry.get(instance).cloned() else {
            return;
        };
        let limit = self
            .registry
            .config
            .instances
            .get(instance)
            .map_or(Duration::from_secs(300), |i| i.lifecycle.start_timeout);
        let until = Instant::now() + limit;
        let mut wait = Duration::from_secs(1);
        let answer = loop {
            match inst.find_jobs(&refs).await {
                Ok(found) => break Ok(found),
                Err(PluginFindError::Unsupported(m)) => break Err(m),
                Err(PluginFindError::Call(e)) => {
                    if Instant::now() + wait >= until {
                        break Err(format!(
                            "the scheduler's answer proved nothing for {} s: {e}",
                            limit.as_secs()
                        ));
                    }
                    tracing::warn!(
                        instance,
                        "find-jobs after the restart: {e}; asking again in {wait:?}"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        };
        let state_dir = &self.registry.config.state_dir;
        let mut resubmit = false;
        for r in &refs {
            let Ok(s) = self.get(&r.spawn_id) else {
                continue;
            };
            let stopping = s.state == SpawnState::Stopping;
            let outcome: Option<(Event, String)> = match &answer {
                Ok(found) => match found.iter().find(|f| f.spawn_id == r.spawn_id) {
                    Some(f) => {
                        pending_env::remove(state_dir, &r.spawn_id);
                        let job_id = f.job_id.clone();
                        let state = f.state.clone();
                        let res = self.update(&r.spawn_id, |e| {
                            e.spawn.job_id = Some(job_id.clone());
                            e.spawn.plugin_state = state.clone();
                            e.fire(Event::Submitted).ok()?;
                            Some(format!(
                                "the host restarted during the submit; the scheduler has job {job_id} for this spawn: adopted"
                            ))
                        });
                        if let Err(e) = res {
                            tracing::error!(spawn_id = %r.spawn_id, "cannot record the adopted job: {e:#}");
                        }
                        None
                    }
                    None if stopping => Some((
                        Event::StoppedBeforeSubmit,
                        "stopped (the host restarted during the submit; the scheduler has no job for it)".into(),
                    )),
                    None if pending_env::load(state_dir, &r.spawn_id).is_some() => {
                        self.lock().resubmit.push(r.spawn_id.clone());
                        resubmit = true;
                        None
                    }
                    None => Some((
                        Event::Restarted,
                        "the host restarted during the submit; the scheduler has no job for this spawn, and the hub's environment for it is gone; start the server again".into(),
                    )),
                },
                Err(why) => Some(if stopping {
                    (
                        Event::StoppedBeforeSubmit,
                        format!(
                            "stopped; the host restarted while the plugin was submitting the job and cannot tell whether the scheduler accepted it: {why}. If a job named for spawn {} exists, cancel it by hand",
                            r.spawn_id
                        ),
                    )
                } else {
                    (
                        Event::Restarted,
                        format!(
                            "the host restarted while the plugin was submitting the job, and it cannot tell whether the scheduler accepted it: {why}. If a job named for spawn {} exists, cancel it by hand; start the server again",
                            r.spawn_id
                        ),
                    )
                }),
            };
            if let Some((event, message)) = outcome {
                let res = self.update(&r.spawn_id, |e| {
                    e.fire(event).ok()?;
                    e.spawn.reason = Some(message.clone());
                    e.callback_hash = None;
                    Some(message.clone())
                });
                if let Err(e) = res {
                    tracing::error!(spawn_id = %r.spawn_id, "cannot record the recovery: {e:#}");
                }
            }
        }
        if resubmit {
            self.resume_submits();
        }
    }
}
