//! The site config every batch plugin takes (`[instances.X.config]`).

use std::collections::BTreeMap;

use serde::Deserialize;

/// A form field's site settings (`[config.<field>]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldConfig {
    /// Whether the field appears (each field has its own default).
    pub enabled: Option<bool>,
    pub label: Option<String>,
    pub help: Option<String>,
    /// The default value (a string or a number).
    pub default: Option<toml_like::Scalar>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    /// For queue and account: the values offered (a free, pattern-checked
    /// text box when empty).
    pub choices: Vec<String>,
    /// For queue and account: choice → groups allowed to use it. A choice
    /// not listed here is open to everyone.
    pub groups: BTreeMap<String, Vec<String>>,
    pub required: Option<bool>,
}

/// Free-text extra submit options (`[config.extra_options]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtraOptionsConfig {
    /// Off unless the site turns it on.
    pub enabled: bool,
    /// Flags a user may pass, e.g. `["--qos", "--constraint"]`.
    pub allowed_flags: Vec<String>,
    pub label: Option<String>,
    pub help: Option<String>,
}

/// The site config every batch plugin takes (`[instances.X.config]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Fixed arguments added to every submit, status and cancel command
    /// (e.g. `["-M", "cluster2"]` for Slurm).
    pub extra_args: Vec<String>,
    /// Fixed arguments for one command only.
    pub submit_args: Vec<String>,
    pub status_args: Vec<String>,
    pub cancel_args: Vec<String>,
    /// A site batch-script template replacing the default (minijinja).
    pub template: Option<String>,
    /// Extra template variables (e.g. `pe = "smp"`).
    pub vars: BTreeMap<String, String>,
    /// Shell lines placed before and after the server command.
    pub prologue: String,
    pub epilogue: String,
    /// The job name (default `jupyterhub`).
    pub job_name: Option<String>,
    /// The execution host → the address the hub connects to:
    /// `host_suffix = ".ib.example.org"` appends to short names (names
    /// without a dot); `host_pattern = "{short}-ib.example.org"` rewrites
    /// every name (`{host}` the full name, `{short}` up to the first dot).
    pub host_suffix: Option<String>,
    pub host_pattern: Option<String>,
    /// Timeout of one scheduler command in milliseconds (0: the host's).
    pub timeout_ms: u32,
    /// Job ids one status command asks about (default: the scheduler's,
    /// sized so one answer stays inside the host's 1 MiB output cap). More
    /// jobs take more commands; an instance with more live jobs than
    /// `limits.max_runs_per_call` (32) times this needs that limit raised.
    pub status_ids_per_call: Option<usize>,
    #[serde(alias = "partition")]
    pub queue: FieldConfig,
    #[serde(alias = "cores")]
    pub nprocs: FieldConfig,
    /// GiB.
    pub memory: FieldConfig,
    /// Minutes.
    pub runtime: FieldConfig,
    #[serde(alias = "gpus")]
    pub ngpus: FieldConfig,
    pub account: FieldConfig,
    pub nodes: FieldConfig,
    pub extra_options: ExtraOptionsConfig,
}

/// A TOML/JSON scalar for defaults written either as `"4"` or `4`.
pub mod toml_like {
    use serde::Deserialize;

    #[derive(Debug, Clone, Deserialize, PartialEq)]
    #[serde(untagged)]
    pub enum Scalar {
        Int(i64),
        Float(f64),
        Bool(bool),
        Text(String),
    }

    impl std::fmt::Display for Scalar {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Scalar::Int(i) => write!(f, "{i}"),
                Scalar::Float(x) => write!(f, "{x}"),
                Scalar::Bool(b) => write!(f, "{b}"),
                Scalar::Text(s) => f.write_str(s),
            }
        }
    }
}
