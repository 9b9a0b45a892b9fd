//! The service's counters for `/v1/metrics` and Prometheus.

use std::collections::BTreeMap;

use super::Service;
use crate::model::SpawnState;

impl Service {
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
