//! A spawn as the store writes it: the `record` column of the `spawns`
//! table, one frozen type per store schema version, and the conversions
//! between it and the service's [`Spawn`].
//!
//! A type here is the on-disk layout of its version and never changes:
//! a new field or meaning is a new `StoredSpawnV<N+1>`, a migration in
//! [`super::schema`] that rewrites the rows of version N, and new
//! conversions. Nothing is defaulted when read: a field missing from a row
//! is an error (see [`required`]), since the migration to the version must
//! already have filled it in.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::model::{Options, Spawn, SpawnState, User, Value};

/// `deserialize_with` for every `Option` field of a stored row: with serde's
/// derive an absent `Option` field would silently read as `None`, standing
/// in for a migration; with this it is a `missing field` error.
fn required<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d)
}

/// The `record` of a spawn at store schema version 1: the JSON the host of
/// 0.1.0 wrote (then without a version), every field present. The
/// fingerprint and the callback-token hash are columns beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSpawnV1 {
    pub id: String,
    pub user: StoredUserV1,
    pub server_name: String,
    pub request_id: String,
    pub instance: String,
    /// [`SpawnState::as_str`].
    pub state: String,
    #[serde(deserialize_with = "required")]
    pub reason: Option<String>,
    pub progress: u8,
    pub raw_options: BTreeMap<String, Vec<String>>,
    #[serde(deserialize_with = "required")]
    pub options: Option<BTreeMap<String, StoredValueV1>>,
    pub cmd: Vec<String>,
    pub env_names: Vec<String>,
    #[serde(deserialize_with = "required")]
    pub job_id: Option<String>,
    pub plugin_state: String,
    #[serde(deserialize_with = "required")]
    pub exec_host: Option<String>,
    #[serde(deserialize_with = "required")]
    pub expected_start: Option<u64>,
    #[serde(deserialize_with = "required")]
    pub queue_position: Option<u32>,
    #[serde(deserialize_with = "required")]
    pub time_limit_secs: Option<u64>,
    #[serde(deserialize_with = "required")]
    pub end_time: Option<u64>,
    #[serde(deserialize_with = "required")]
    pub host: Option<String>,
    #[serde(deserialize_with = "required")]
    pub port: Option<u16>,
    #[serde(deserialize_with = "required")]
    pub tunnel_target: Option<String>,
    #[serde(deserialize_with = "required")]
    pub exit_code: Option<i32>,
    pub unknown_polls: u32,
    #[serde(deserialize_with = "required")]
    pub flagged: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub state_since: DateTime<Utc>,
    #[serde(deserialize_with = "required")]
    pub submit_started_at: Option<DateTime<Utc>>,
}

/// The spawn's user in a version 1 record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredUserV1 {
    pub name: String,
    pub groups: Vec<String>,
    pub admin: bool,
}

/// A validated option value in a version 1 record: a JSON bool, integer,
/// float or string (tried in that order, so `2.0` stays a float).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StoredValueV1 {
    Boolean(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

/// A stored record the service cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("its state {0:?} is none of validating, submitting, queued, running, ready, stopping, stopped, failed")]
    UnknownState(String),
}

impl From<&Value> for StoredValueV1 {
    fn from(v: &Value) -> Self {
        match v {
            Value::Boolean(b) => StoredValueV1::Boolean(*b),
            Value::Integer(i) => StoredValueV1::Integer(*i),
            Value::Number(n) => StoredValueV1::Number(*n),
            Value::Text(s) => StoredValueV1::Text(s.clone()),
        }
    }
}

impl From<StoredValueV1> for Value {
    fn from(v: StoredValueV1) -> Self {
        match v {
            StoredValueV1::Boolean(b) => Value::Boolean(b),
            StoredValueV1::Integer(i) => Value::Integer(i),
            StoredValueV1::Number(n) => Value::Number(n),
            StoredValueV1::Text(s) => Value::Text(s),
        }
    }
}

impl From<&Spawn> for StoredSpawnV1 {
    /// Every field of the spawn but its fingerprint (a column of its own).
    fn from(s: &Spawn) -> Self {
        // Destructured without `..`: a new field of `Spawn` does not compile
        // until it is either stored (a new row version) or said not to be.
        let Spawn {
            id,
            user:
                User {
                    name,
                    groups,
                    admin,
                },
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
        StoredSpawnV1 {
            id: id.clone(),
            user: StoredUserV1 {
                name: name.clone(),
                groups: groups.clone(),
                admin: *admin,
            },
            server_name: server_name.clone(),
            request_id: request_id.clone(),
            instance: instance.clone(),
            state: state.as_str().to_string(),
            reason: reason.clone(),
            progress: *progress,
            raw_options: raw_options.clone(),
            options: options.as_ref().map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), StoredValueV1::from(v)))
                    .collect()
            }),
            cmd: cmd.clone(),
            env_names: env_names.clone(),
            job_id: job_id.clone(),
            plugin_state: plugin_state.clone(),
            exec_host: exec_host.clone(),
            expected_start: *expected_start,
            queue_position: *queue_position,
            time_limit_secs: *time_limit_secs,
            end_time: *end_time,
            host: host.clone(),
            port: *port,
            tunnel_target: tunnel_target.clone(),
            exit_code: *exit_code,
            unknown_polls: *unknown_polls,
            flagged: flagged.clone(),
            created_at: *created_at,
            updated_at: *updated_at,
            state_since: *state_since,
            submit_started_at: *submit_started_at,
        }
    }
}

impl StoredSpawnV1 {
    /// The service's spawn of this record and the row's `fingerprint`
    /// column.
    pub fn into_spawn(self, fingerprint: String) -> Result<Spawn, RowError> {
        let state = SpawnState::parse(&self.state).ok_or(RowError::UnknownState(self.state))?;
        let options: Option<Options> = self
            .options
            .map(|o| o.into_iter().map(|(k, v)| (k, Value::from(v))).collect());
        Ok(Spawn {
            id: self.id,
            user: User {
                name: self.user.name,
                groups: self.user.groups,
                admin: self.user.admin,
            },
            server_name: self.server_name,
            request_id: self.request_id,
            instance: self.instance,
            state,
            reason: self.reason,
            progress: self.progress,
            raw_options: self.raw_options,
            options,
            cmd: self.cmd,
            env_names: self.env_names,
            job_id: self.job_id,
            plugin_state: self.plugin_state,
            exec_host: self.exec_host,
            expected_start: self.expected_start,
            queue_position: self.queue_position,
            time_limit_secs: self.time_limit_secs,
            end_time: self.end_time,
            host: self.host,
            port: self.port,
            tunnel_target: self.tunnel_target,
            exit_code: self.exit_code,
            unknown_polls: self.unknown_polls,
            flagged: self.flagged,
            created_at: self.created_at,
            updated_at: self.updated_at,
            state_since: self.state_since,
            submit_started_at: self.submit_started_at,
            fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 1 record as the 0.1.0 host wrote it (a line of
    /// `tests/fixtures/store-0.1.0`).
    const RECORD: &str = r#"{"id":"sp-1","user":{"name":"alice","groups":["g"],"admin":false},"server_name":"","request_id":"r","instance":"slurm","state":"queued","reason":"Priority","progress":30,"raw_options":{"cores":["4"]},"options":{"cores":4,"gpu":false,"mem":1.5,"wall":2.0,"p":"debug"},"cmd":["jupyterhub-singleuser"],"env_names":["JUPYTERHUB_API_TOKEN"],"job_id":"42","plugin_state":"","exec_host":null,"expected_start":1796003600,"queue_position":3,"time_limit_secs":3600,"end_time":null,"host":null,"port":null,"tunnel_target":null,"exit_code":null,"unknown_polls":0,"flagged":null,"created_at":"2026-11-30T00:53:20Z","updated_at":"2026-11-30T00:53:50.210Z","state_since":"2026-11-30T00:53:40.140Z","submit_started_at":"2026-11-30T00:53:30.070Z"}"#;

    #[test]
    fn a_record_goes_to_a_spawn_and_back_unchanged() {
        let row: StoredSpawnV1 = serde_json::from_str(RECORD).unwrap();
        let spawn = row.clone().into_spawn("fp".into()).unwrap();
        assert_eq!(spawn.fingerprint, "fp");
        assert_eq!(spawn.state, SpawnState::Queued);
        let o = spawn.options.as_ref().unwrap();
        assert_eq!(o["cores"], Value::Integer(4));
        assert_eq!(o["gpu"], Value::Boolean(false));
        assert_eq!(o["wall"], Value::Number(2.0));
        assert_eq!(o["p"], Value::Text("debug".into()));
        let back = StoredSpawnV1::from(&spawn);
        assert_eq!(back, row);
        // Written as read, `2.0` a float still.
        let written = serde_json::to_value(&back).unwrap();
        assert_eq!(
            written,
            serde_json::from_str::<serde_json::Value>(RECORD).unwrap()
        );
    }

    #[test]
    fn a_record_missing_any_field_or_with_an_unknown_one_is_refused() {
        let full: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(RECORD).unwrap();
        for key in full.keys() {
            let mut m = full.clone();
            m.remove(key);
            let e = serde_json::from_value::<StoredSpawnV1>(m.into()).unwrap_err();
            assert!(
                e.to_string().contains(&format!("missing field `{key}`")),
                "{key}: {e}"
            );
        }
        let mut m = full.clone();
        m.insert("fingerprint".into(), "x".into());
        let e = serde_json::from_value::<StoredSpawnV1>(m.into()).unwrap_err();
        assert!(e.to_string().contains("unknown field `fingerprint`"), "{e}");
        let mut m = full;
        m["user"].as_object_mut().unwrap().remove("admin");
        assert!(serde_json::from_value::<StoredSpawnV1>(m.into()).is_err());
    }

    #[test]
    fn an_unknown_state_is_a_typed_error() {
        let mut row: StoredSpawnV1 = serde_json::from_str(RECORD).unwrap();
        row.state = "paused".into();
        assert_eq!(
            row.into_spawn(String::new()).unwrap_err(),
            RowError::UnknownState("paused".into())
        );
    }
}
