//! A spawn as the API shows it (the `Spawn` schema of `openapi.json`):
//! the JSON of `POST /v1/spawns`, `GET /v1/spawns[/{id}]`, `DELETE` and the
//! job's callback, converted from the service's [`Spawn`].
//!
//! Its field names, order and shape are the API's contract (the hub client
//! in `jupyterhub-spawner/` reads them): what the 0.1.0 host printed, byte
//! for byte (tested against `tests/fixtures/store-0.1.0/api-spawns.jsonl`).
//! The fingerprint is not shown.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{Options, RawOptions, Spawn, SpawnState, User};

/// The `Spawn` schema of the API. Every field is always present (`null`
/// when unset).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpawnView {
    pub id: String,
    pub user: User,
    pub server_name: String,
    pub request_id: String,
    pub instance: String,
    pub state: SpawnState,
    pub reason: Option<String>,
    pub progress: u8,
    pub raw_options: RawOptions,
    pub options: Option<Options>,
    pub cmd: Vec<String>,
    pub env_names: Vec<String>,
    pub job_id: Option<String>,
    pub plugin_state: String,
    pub exec_host: Option<String>,
    pub expected_start: Option<u64>,
    pub queue_position: Option<u32>,
    pub time_limit_secs: Option<u64>,
    pub end_time: Option<u64>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tunnel_target: Option<String>,
    pub exit_code: Option<i32>,
    pub unknown_polls: u32,
    pub flagged: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub state_since: DateTime<Utc>,
    pub submit_started_at: Option<DateTime<Utc>>,
}

impl From<Spawn> for SpawnView {
    fn from(s: Spawn) -> Self {
        // Destructured without `..`: a new field of `Spawn` does not compile
        // until it is either shown (and documented in openapi.json) or said
        // not to be.
        let Spawn {
            id,
            user,
            server_name,
            request_id,
            instance,
            state,
            reason,
            progress,
            raw_options,
            options,
            cmd,
            env_names,
            job_id,
            plugin_state,
            exec_host,
            expected_start,
            queue_position,
            time_limit_secs,
            end_time,
            host,
            port,
            tunnel_target,
            exit_code,
            unknown_polls,
            flagged,
            created_at,
            updated_at,
            state_since,
            submit_started_at,
            fingerprint: _,
        } = s;
        SpawnView {
            id,
            user,
            server_name,
            request_id,
            instance,
            state,
            reason,
            progress,
            raw_options,
            options,
            cmd,
            env_names,
            job_id,
            plugin_state,
            exec_host,
            expected_start,
            queue_position,
            time_limit_secs,
            end_time,
            host,
            port,
            tunnel_target,
            exit_code,
            unknown_polls,
            flagged,
            created_at,
            updated_at,
            state_since,
            submit_started_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The spawns of the 0.1.0 store fixture, read by this host's store.
    fn fixture_spawns() -> Vec<Spawn> {
        let dir = crate::store::tests::fixture_copy();
        let store = crate::store::Store::open(dir.path()).unwrap();
        store
            .load_all()
            .unwrap()
            .into_iter()
            .map(|s| s.spawn)
            .collect()
    }

    #[test]
    fn the_json_is_what_the_0_1_0_host_printed_byte_for_byte() {
        let printed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/store-0.1.0/api-spawns.jsonl"
        ))
        .unwrap();
        let spawns = fixture_spawns();
        assert_eq!(spawns.len(), printed.lines().count());
        for (s, line) in spawns.into_iter().zip(printed.lines()) {
            let id = s.id.clone();
            let json = serde_json::to_string(&SpawnView::from(s)).unwrap();
            assert_eq!(json, line, "spawn {id}");
        }
    }

    #[test]
    fn the_json_has_exactly_the_properties_of_the_openapi_schema() {
        let doc: serde_json::Value = serde_json::from_str(super::super::OPENAPI).unwrap();
        let schema = &doc["components"]["schemas"]["Spawn"];
        let documented: BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for s in fixture_spawns() {
            let v = serde_json::to_value(SpawnView::from(s)).unwrap();
            let shown: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                shown, documented,
                "the view and openapi.json's Spawn differ"
            );
            for r in schema["required"].as_array().unwrap() {
                let r = r.as_str().unwrap();
                assert!(!v[r].is_null(), "required {r} is null");
            }
        }
    }
}
