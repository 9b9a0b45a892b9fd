//! The host's own types for what crosses the plugin boundary, with the JSON
//! shape the CLI and the HTTP API print. `runtime::convert` maps them to and
//! from the WIT bindings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
