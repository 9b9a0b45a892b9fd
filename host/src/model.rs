//! The host's own types for what crosses the plugin boundary, with the JSON
//! shape the CLI and the HTTP API print. `runtime::convert` maps them to and
//! from the WIT bindings. And the service's [`Spawn`], which has no JSON of
//! its own: the API's and the store's are separate types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

impl User {
    /// Checks the name is a safe account name: it may end up as an argv
    /// element (`runuser -u NAME`) or in a batch script.
    pub fn check(&self) -> Result<(), String> {
        check_user_name(&self.name)?;
        if let Some(g) = self
            .groups
            .iter()
            .find(|g| g.len() > 256 || g.chars().any(char::is_control))
        {
            return Err(format!(
                "group {g:?} is longer than 256 bytes or has control characters"
            ));
        }
        Ok(())
    }
}

/// `[a-z_][a-z0-9_.-]*`, at most 64 bytes: what `useradd` accepts by default.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "user name {name:?} is not a valid account name (1-64 of a-z, 0-9, _, . and -, starting with a letter or _)"
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramUse {
    pub program: String,
    pub args: Vec<String>,
    pub spawn_env: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeclaredCapabilities {
    pub programs: Vec<ProgramUse>,
    pub ssh: Vec<ProgramUse>,
    pub detached: Vec<ProgramUse>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub description: String,
    pub capabilities: DeclaredCapabilities,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub value: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FieldKind {
    Text {
        max_length: Option<u32>,
        pattern: Option<String>,
        placeholder: Option<String>,
    },
    Integer {
        min: Option<i64>,
        max: Option<i64>,
        step: Option<i64>,
        unit: Option<String>,
    },
    Number {
        min: Option<f64>,
        max: Option<f64>,
        step: Option<f64>,
        unit: Option<String>,
    },
    Choice {
        choices: Vec<Choice>,
    },
    Boolean,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub id: String,
    pub label: String,
    pub help: String,
    pub default: Option<String>,
    pub required: bool,
    pub kind: FieldKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    pub field: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub choices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub id: String,
    pub label: String,
    pub description: String,
    pub fixed: Options,
    pub bounds: Vec<Bound>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormSchema {
    pub fields: Vec<Field>,
    pub profiles: Vec<Profile>,
}

/// One typed option value. In JSON: a string, an integer, a float or a bool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Boolean(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Number(n) => write!(f, "{n}"),
            Value::Text(s) => f.write_str(s),
        }
    }
}

/// Validated options: field id → value, in field order when printed.
pub type Options = BTreeMap<String, Value>;

/// What a form or REST call sent: field id → list of strings.
pub type RawOptions = BTreeMap<String, Vec<String>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub spawn_id: String,
    pub user: User,
    pub options: Options,
    pub cmd: Vec<String>,
    pub env_names: Vec<String>,
    pub callback_url: String,
    pub home: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub job_id: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub user: String,
    #[serde(default)]
    pub state: String,
}

/// A job's state as the plugin reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    Pending {
        reason: String,
        expected_start: Option<u64>,
    },
    Running {
        host: Option<String>,
    },
    Done {
        exit_code: Option<i32>,
        reason: String,
    },
    Unknown {
        reason: String,
    },
}

/// What a status answer says beside the state (API 0.2; an 0.1 plugin
/// says none of it): for the user's progress and the spawn's view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFacts {
    /// 1 = next to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// Seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// The job's wall-clock limit in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_secs: Option<u64>,
    /// When the scheduler ends the job, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<u64>,
    /// Further facts by name (`partition`, `qos`, …), short text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<(String, String)>,
}

/// One job's answer to a status call: its state and the facts beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    pub state: JobState,
    pub facts: JobFacts,
}

/// A spawn `find-jobs` is asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRef {
    pub spawn_id: String,
    pub user: String,
}

/// A scheduler job that carries a spawn's tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundJob {
    pub spawn_id: String,
    pub job_id: String,
    pub state: String,
}

/// An error a plugin returned (not a trap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum PluginError {
    #[error("site config error: {0}")]
    Config(String),
    #[error("capability error: {0}")]
    Capability(String),
    #[error("scheduler error: {0}")]
    Scheduler(String),
    #[error("{0}")]
    Other(String),
}

/// Host syntax accepted from job callbacks and config: a DNS name
/// (labels of a-z, A-Z, 0-9 and `-`, at most 253 bytes) or an IP address.
pub fn valid_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Where a spawn is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpawnState {
    Validating,
    Submitting,
    Queued,
    Running,
    Ready,
    Stopping,
    Stopped,
    Failed,
}

impl SpawnState {
    pub const ALL: [SpawnState; 8] = [
        SpawnState::Validating,
        SpawnState::Submitting,
        SpawnState::Queued,
        SpawnState::Running,
        SpawnState::Ready,
        SpawnState::Stopping,
        SpawnState::Stopped,
        SpawnState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpawnState::Validating => "validating",
            SpawnState::Submitting => "submitting",
            SpawnState::Queued => "queued",
            SpawnState::Running => "running",
            SpawnState::Ready => "ready",
            SpawnState::Stopping => "stopping",
            SpawnState::Stopped => "stopped",
            SpawnState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<SpawnState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Stopped or failed: nothing more happens to the spawn.
    pub fn is_terminal(self) -> bool {
        matches!(self, SpawnState::Stopped | SpawnState::Failed)
    }

    /// A job exists (or may exist) that the poller follows.
    pub fn is_polled(self) -> bool {
        matches!(
            self,
            SpawnState::Queued | SpawnState::Running | SpawnState::Ready | SpawnState::Stopping
        )
    }

    /// The rough share of the way to a ready server, for progress bars.
    pub fn progress(self) -> u8 {
        match self {
            SpawnState::Validating => 5,
            SpawnState::Submitting => 10,
            SpawnState::Queued => 30,
            SpawnState::Running => 70,
            SpawnState::Ready | SpawnState::Stopping | SpawnState::Stopped | SpawnState::Failed => {
                100
            }
        }
    }
}

impl std::fmt::Display for SpawnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One spawn as the service keeps it. Neither the API's JSON nor the
/// store's: the API prints [`crate::http::spawn_view::SpawnView`], the
/// store writes [`crate::store::StoredSpawnV1`], each converted from this
/// explicitly. The callback token is never part of it; its hash is kept
/// apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Spawn {
    pub id: String,
    pub user: User,
    pub server_name: String,
    pub request_id: String,
    pub instance: String,
    pub state: SpawnState,
    /// The latest word on the spawn a person can read: the scheduler's queue
    /// reason, or why it failed or stopped.
    pub reason: Option<String>,
    /// 0-100.
    pub progress: u8,
    pub raw_options: RawOptions,
    /// The validated options (after validation).
    pub options: Option<Options>,
    pub cmd: Vec<String>,
    /// Names (never values) of the variables the job receives.
    pub env_names: Vec<String>,
    pub job_id: Option<String>,
    /// The plugin's opaque state for the job.
    pub plugin_state: String,
    /// Where the scheduler says the job runs.
    pub exec_host: Option<String>,
    /// When the scheduler expects the job to start (Unix seconds).
    pub expected_start: Option<u64>,
    /// The job's place in the queue, 1 = next (plugin API 0.2, where the
    /// scheduler says).
    pub queue_position: Option<u32>,
    /// The job's wall-clock limit in seconds (plugin API 0.2).
    pub time_limit_secs: Option<u64>,
    /// When the scheduler ends the job, Unix seconds (plugin API 0.2).
    pub end_time: Option<u64>,
    /// Where the hub reaches the single-user server (after the callback):
    /// the server itself, or the local end of its tunnel.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// For a tunneled server: where it really listens (`node:port`), the
    /// far end of the tunnel from 127.0.0.1:`port`.
    pub tunnel_target: Option<String>,
    pub exit_code: Option<i32>,
    /// Consecutive polls the scheduler answered `unknown` for this job.
    pub unknown_polls: u32,
    /// Set when `unknown_polls` reached the instance's grace: the job is kept
    /// and still polled, but someone should look.
    pub flagged: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// When the spawn entered its current state (timeouts count from it).
    pub state_since: chrono::DateTime<chrono::Utc>,
    /// When the host called the plugin's submit (recorded before the call:
    /// after a crash, a spawn without it provably has no job).
    pub submit_started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// sha256 of what made the request (instance, options, command): a
    /// repeated request id with another fingerprint is a conflict.
    pub fingerprint: String,
}

/// One entry of a spawn's event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnEvent {
    pub seq: i64,
    pub spawn_id: String,
    pub time: chrono::DateTime<chrono::Utc>,
    pub state: SpawnState,
    /// 0-100.
    pub progress: u8,
    pub message: String,
    /// The last event of the stream (ready, failed or stopped).
    #[serde(rename = "final")]
    pub is_final: bool,
}
