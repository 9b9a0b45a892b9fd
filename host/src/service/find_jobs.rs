//! Recovery's question to a plugin: which jobs exist for these spawns?
//! Plugin API 0.2 answers it (`find-jobs`); until the runtime has that call,
//! [`Service::find_jobs`] is the one seam recovery uses, and answers
//! [`FindJobsError::Unsupported`] for 0.1 plugins — except the `local`
//! plugin, whose processes the host itself finds by their spawn tag (the
//! containment units it started them in).

use super::Service;
use crate::model::Job;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindJobsError {
    #[error("plugin instance `{instance}` (plugin API {api_version}) cannot be asked which jobs exist for a spawn: that is plugin API 0.2's find-jobs")]
    Unsupported {
        instance: String,
        api_version: String,
    },
    #[error("no plugin instance `{0}`")]
    UnknownInstance(String),
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
        let d = &inst.current().descriptor;
        // The seam for plugin API 0.2: call the plugin's find-jobs here.
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
        Err(FindJobsError::Unsupported {
            instance: instance.to_string(),
            api_version: d.api_version.clone(),
        })
    }
}
