//! What batch-scheduler plugins share: the site config, the options form,
//! the batch-script context, submit/cancel command building and the mapping
//! of scheduler states to [`JobState`].
//!
//! A scheduler plugin describes itself with a [`Scheduler`] (program names,
//! default template, value formats) and writes only what differs: how to
//! ask for the state of many jobs and how to read the answer into an
//! [`Answer`]. Everything else is [`Batch`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;

use crate::form::*;
use crate::host::{run_error_message, Host};
use crate::options::{field_error, Options};
use crate::parse::first_host;
use crate::template::{self, Context};
use crate::{
    Command, DoneInfo, Field, FieldError, FormSchema, Job, JobSpec, JobState, Output, PendingInfo,
    PluginError, ProgramUse, RunningInfo, Submitted, User,
};

/// The static description of a scheduler, given by its plugin.
pub struct Scheduler {
    /// The plugin's name (`slurm`, `pbs`, …), used in messages.
    pub name: &'static str,
    /// Programs (bare names; the host resolves them through the instance's
    /// `search_path`, so `/opt/slurm/bin` is a site setting there).
    pub submit: &'static str,
    pub status: &'static str,
    pub cancel: &'static str,
    /// Arguments the plugin always passes to the submit command, before the
    /// site's `submit_args` (e.g. `--parsable`).
    pub submit_fixed: &'static [&'static str],
    /// Arguments the plugin always passes to the cancel command, before the
    /// site's `cancel_args` (e.g. Moab's `mjobctl -c`).
    pub cancel_fixed: &'static [&'static str],
    /// The default batch script (minijinja).
    pub template: &'static str,
    /// The form field id of the queue: `partition` (Slurm) or `queue`.
    pub queue_field: &'static str,
    /// Whether the queue field appears unless the site says otherwise
    /// (HTCondor has no queues).
    pub queue_enabled: bool,
    /// How a memory request in MiB is written for this scheduler.
    pub memory: fn(u64) -> String,
    /// How a wall time in minutes is written for this scheduler.
    pub runtime: fn(u64) -> String,
    /// Cancel output (stdout or stderr) that means "the job already ended or
    /// is unknown", so cancelling it is not an error.
    pub cancel_gone: &'static [&'static str],
    /// How two spellings of one job id compare (exact, apart from what the
    /// scheduler itself treats as the same job).
    pub ids: JobIds,
    /// How many job ids one status command asks about (the site's
    /// `status_ids_per_call` overrides it): chosen so one answer stays well
    /// inside the host's output cap (1 MiB by default).
    pub status_per_call: usize,
    /// Further programs the plugin runs with any arguments, declared beside
    /// the three (e.g. a program only finding jobs by name uses).
    pub extra_programs: &'static [&'static str],
}

/// How a scheduler spells one job's id, so an asked id finds the job in an
/// answer and never another job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobIds {
    /// Equal strings only (Slurm, Grid Engine, LSF).
    Exact,
    /// PBS and Torque `SEQ.SERVER`: the sequence number must be equal and
    /// the server the same name, short or fully qualified (`101.pbs01` is
    /// `101.pbs01.example.org`, never `101.pbs02`).
    PbsServer,
    /// HTCondor `CLUSTER.PROC`: a bare cluster is its process 0 (`301` is
    /// `301.0`, never `301.1`).
    CondorProc,
    /// Moab: `Moab.42` is `42`.
    MoabPrefix,
}

impl JobIds {
    /// The part of an id that must be equal for two ids to be one job (an
    /// index key; [`JobIds::same`] decides).
    pub fn key<'a>(&self, id: &'a str) -> std::borrow::Cow<'a, str> {
        let id = id.trim();
        match self {
            JobIds::Exact => id.into(),
            JobIds::PbsServer => id.split('.').next().unwrap_or(id).into(),
            JobIds::CondorProc => match id.split_once('.') {
                None => format!("{id}.0").into(),
                Some(_) => id.into(),
            },
            JobIds::MoabPrefix => id.strip_prefix("Moab.").unwrap_or(id).into(),
        }
    }

    /// Whether `a` and `b` name the same job.
    pub fn same(&self, a: &str, b: &str) -> bool {
        let (a, b) = (a.trim(), b.trim());
        if a == b {
            return true;
        }
        match self {
            JobIds::PbsServer => {
                let (Some((sa, ha)), Some((sb, hb))) = (a.split_once('.'), b.split_once('.'))
                else {
                    return false;
                };
                sa == sb && !ha.is_empty() && !hb.is_empty() && {
                    let (short, long) = if ha.len() <= hb.len() {
                        (ha, hb)
                    } else {
                        (hb, ha)
                    };
                    long.strip_prefix(short)
                        .is_some_and(|rest| rest.starts_with('.'))
                }
            }
            _ => self.key(a) == self.key(b),
        }
    }
}

impl Scheduler {
    /// The capabilities a batch plugin declares: the three programs with any
    /// arguments; only submit receives the spawn's environment.
    pub fn capabilities(&self) -> crate::DeclaredCapabilities {
        let use_ = |p: &str, spawn_env| ProgramUse {
            program: p.into(),
            args: vec!["**".into()],
            spawn_env,
        };
        crate::DeclaredCapabilities {
            programs: [
                use_(self.submit, true),
                use_(self.status, false),
                use_(self.cancel, false),
            ]
            .into_iter()
            .chain(self.extra_programs.iter().map(|p| use_(p, false)))
            .collect(),
            ssh: vec![],
            detached: vec![],
        }
    }
}

// ----- site config -----

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

/// A queue, account or extra-option word: no shell or directive syntax.
const SAFE_WORD: &str = "[A-Za-z0-9_][A-Za-z0-9_.@+-]*";

fn is_safe_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.@+-".contains(c))
}

fn is_safe_option_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.,:=@+/%-".contains(&c))
}

// ----- the plugin core -----

/// A batch plugin's shared logic, built from its [`Scheduler`] and the
/// site's [`BatchConfig`].
pub struct Batch {
    pub sched: &'static Scheduler,
    pub config: BatchConfig,
}

struct IntSpec {
    id: &'static str,
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    enabled: bool,
    min: i64,
    max: i64,
    default: Option<i64>,
}

impl Batch {
    /// Checks the site config; errors name the key.
    pub fn new(sched: &'static Scheduler, config: BatchConfig) -> Result<Self, PluginError> {
        let b = Batch { sched, config };
        let cfg = |m: String| Err(PluginError::Config(m));
        for (key, f) in [
            (b.sched.queue_field, &b.config.queue),
            ("account", &b.config.account),
        ] {
            if let Some(bad) = f.choices.iter().find(|c| !is_safe_word(c)) {
                return cfg(format!(
                    "{key}.choices: {bad:?} is not a plain name ({SAFE_WORD})"
                ));
            }
            if let Some(bad) = f.groups.keys().find(|c| !f.choices.contains(c)) {
                return cfg(format!("{key}.groups: {bad:?} is not one of {key}.choices"));
            }
            if let Some(d) = &f.default {
                let d = d.to_string();
                if !f.choices.is_empty() && !f.choices.contains(&d) {
                    return cfg(format!("{key}.default: {d:?} is not one of {key}.choices"));
                }
                if f.choices.is_empty() && !is_safe_word(&d) {
                    return cfg(format!("{key}.default: {d:?} is not a plain name"));
                }
            }
        }
        for spec in b.int_specs() {
            let f = b.int_config(spec.id);
            if !f.choices.is_empty() || !f.groups.is_empty() {
                return cfg(format!(
                    "{}: choices and groups apply to queue and account only",
                    spec.key
                ));
            }
            if let Some(d) = &f.default {
                if !matches!(d, toml_like::Scalar::Int(_)) {
                    return cfg(format!(
                        "{}.default: expected an integer, got {d}",
                        spec.key
                    ));
                }
            }
            let (min, max) = (f.min.unwrap_or(spec.min), f.max.unwrap_or(spec.max));
            if min < 0 || min > max {
                return cfg(format!(
                    "{}: min {min} and max {max} are not a range of non-negative numbers",
                    spec.key
                ));
            }
        }
        if let Some(bad) = b
            .config
            .extra_options
            .allowed_flags
            .iter()
            .find(|f| !f.starts_with('-') || !is_safe_option_token(f) || f.contains('='))
        {
            return cfg(format!(
                "extra_options.allowed_flags: {bad:?} is not a flag like \"--qos\" or \"-q\""
            ));
        }
        if let Some(p) = &b.config.host_pattern {
            if !p.contains("{host}") && !p.contains("{short}") {
                return cfg("host_pattern: must contain {host} or {short}".into());
            }
        }
        if let Some(t) = &b.config.template {
            // Parse now so a broken site template is a config error at load.
            let mut env = minijinja::Environment::new();
            env.add_template("site", t)
                .map_err(|e| PluginError::Config(format!("template: {e}")))?;
        }
        if let Some(n) = b.config.status_ids_per_call {
            if !(1..=100_000).contains(&n) {
                return cfg(format!(
                    "status_ids_per_call: {n} is not between 1 and 100000"
                ));
            }
        }
        if let Some(n) = &b.config.job_name {
            if !is_safe_word(n) {
                return cfg(format!("job_name: {n:?} is not a plain name"));
            }
        }
        Ok(b)
    }

    fn int_specs(&self) -> Vec<IntSpec> {
        let s = |id, key, label, unit, enabled, min, max, default| IntSpec {
            id,
            key,
            label,
            unit,
            enabled,
            min,
            max,
            default,
        };
        vec![
            s("nprocs", "nprocs", "CPU cores", "", true, 1, 256, Some(1)),
            s("memory", "memory", "Memory", "GiB", true, 1, 4096, Some(4)),
            s(
                "runtime",
                "runtime",
                "Run time",
                "minutes",
                true,
                10,
                10080,
                Some(480),
            ),
            s("ngpus", "ngpus", "GPUs", "", false, 0, 16, Some(0)),
            s("nodes", "nodes", "Nodes", "", false, 1, 64, Some(1)),
        ]
    }

    fn int_config(&self, id: &str) -> &FieldConfig {
        match id {
            "nprocs" => &self.config.nprocs,
            "memory" => &self.config.memory,
            "runtime" => &self.config.runtime,
            "ngpus" => &self.config.ngpus,
            _ => &self.config.nodes,
        }
    }

    fn choices_for<'a>(&self, f: &'a FieldConfig, user: &User) -> Vec<&'a str> {
        f.choices
            .iter()
            .filter(|c| match f.groups.get(*c) {
                None => true,
                Some(gs) => user.groups.iter().any(|g| gs.contains(g)),
            })
            .map(String::as_str)
            .collect()
    }

    fn word_field(&self, id: &str, label: &str, f: &FieldConfig, user: &User) -> Field {
        // A list without a default starts with an empty choice, "the site's
        // default", so what the help says is what the list offers.
        let site_default = f.default.is_none() && f.required != Some(true);
        let field = if f.choices.is_empty() {
            text_field(id, label).pattern(SAFE_WORD).max_length(64)
        } else {
            let cs = self.choices_for(f, user);
            let empty = site_default.then_some(("", "(the site's default)"));
            choice_field(
                id,
                label,
                empty.into_iter().chain(cs.iter().map(|c| (*c, *c))),
            )
        };
        let mut field = field
            .label_opt(f.label.as_deref())
            .help(f.help.as_deref().unwrap_or(""));
        if let Some(d) = &f.default {
            field = field.default_value(d.to_string());
        }
        if f.required == Some(true) {
            field = field.required();
        }
        field
    }

    /// The options form, from the site config.
    pub fn form(&self, user: &User) -> FormSchema {
        let mut fields = Vec::new();
        let q = &self.config.queue;
        if q.enabled.unwrap_or(self.sched.queue_enabled) {
            let label = if self.sched.queue_field == "partition" {
                "Partition"
            } else {
                "Queue"
            };
            let help = if q.default.is_some() || q.required == Some(true) {
                "Where the job runs."
            } else {
                "Where the job runs; empty for the site's default."
            };
            fields.push(
                self.word_field(self.sched.queue_field, label, q, user)
                    .help_default(help),
            );
        }
        for spec in self.int_specs() {
            let f = self.int_config(spec.id);
            if !f.enabled.unwrap_or(spec.enabled) {
                continue;
            }
            let default = match &f.default {
                Some(toml_like::Scalar::Int(i)) => Some(*i),
                _ => spec.default,
            };
            let min = f.min.unwrap_or(spec.min);
            let max = f.max.unwrap_or(spec.max);
            let mut field = integer_field(spec.id, spec.label, Some(min), Some(max))
                .label_opt(f.label.as_deref())
                .help(f.help.as_deref().unwrap_or(""));
            if !spec.unit.is_empty() {
                field = field.unit(spec.unit);
            }
            if let Some(d) = default {
                field = field.default_value(d.clamp(min, max).to_string());
            }
            if f.required.unwrap_or(true) {
                field = field.required();
            }
            fields.push(field);
        }
        let a = &self.config.account;
        if a.enabled.unwrap_or(false) {
            fields.push(
                self.word_field("account", "Account", a, user)
                    .help_default("The account or project charged for the job."),
            );
        }
        let x = &self.config.extra_options;
        if x.enabled {
            fields.push(
                text_field("options", x.label.as_deref().unwrap_or("Extra options"))
                    .max_length(512)
                    .help(x.help.as_deref().unwrap_or(&format!(
                        "Extra submit options; allowed flags: {}",
                        x.allowed_flags.join(" ")
                    ))),
            );
        }
        FormSchema {
            fields,
            profiles: vec![],
        }
    }

    /// Site rules: group-restricted choices, safe words, the extra-options
    /// allowlist. Run again at submit (options could come from anywhere).
    pub fn validate(&self, user: &User, options: &Options) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        for (id, f) in [
            (self.sched.queue_field, &self.config.queue),
            ("account", &self.config.account),
        ] {
            let Some(v) = options.text(id).filter(|v| !v.is_empty()) else {
                continue;
            };
            if !is_safe_word(v) {
                errors.push(field_error(id, format!("{v:?} is not a valid name")));
            } else if !f.choices.is_empty() && !self.choices_for(f, user).contains(&v) {
                errors.push(field_error(id, format!("{v:?} is not available to you")));
            }
        }
        for spec in self.int_specs() {
            let f = self.int_config(spec.id);
            if let Some(v) = options.integer(spec.id) {
                let (min, max) = (f.min.unwrap_or(spec.min), f.max.unwrap_or(spec.max));
                if v < min || v > max {
                    errors.push(field_error(
                        spec.id,
                        format!("must be between {min} and {max}"),
                    ));
                }
            }
        }
        if let Some(text) = options.text("options") {
            if let Err(e) = self.extra_options(text) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Splits and checks free-text extra options against the allowlist.
    pub fn extra_options(&self, text: &str) -> Result<Vec<String>, FieldError> {
        let x = &self.config.extra_options;
        if text.trim().is_empty() {
            return Ok(vec![]);
        }
        if !x.enabled {
            return Err(field_error("options", "extra options are not enabled here"));
        }
        let mut out = Vec::new();
        let mut may_take_value = false;
        for tok in text.split_whitespace() {
            if !is_safe_option_token(tok) {
                return Err(field_error(
                    "options",
                    format!("{tok:?}: only letters, digits and _.,:=@+/%- are allowed"),
                ));
            }
            if tok.starts_with('-') {
                let flag = tok.split('=').next().unwrap_or(tok);
                if !x.allowed_flags.iter().any(|a| a == flag) {
                    return Err(field_error(
                        "options",
                        format!(
                            "{flag} is not allowed; allowed: {}",
                            x.allowed_flags.join(" ")
                        ),
                    ));
                }
                may_take_value = !tok.contains('=');
            } else if may_take_value {
                may_take_value = false;
            } else {
                return Err(field_error(
                    "options",
                    format!("{tok:?} is not a flag or a flag's value"),
                ));
            }
            out.push(tok.to_string());
        }
        Ok(out)
    }

    /// The template context: batchspawner's names, in this scheduler's formats.
    pub fn context(&self, job: &JobSpec) -> Context {
        let mut ctx = Context::new();
        for (k, v) in &self.config.vars {
            ctx.insert(k.clone(), v.clone().into());
        }
        ctx.extend(template::job_context(job));
        let o = Options::from(job.options.clone());
        // Every batchspawner name is defined (empty when not chosen), so a
        // site's batchspawner template renders.
        for name in [
            "partition",
            "queue",
            "nprocs",
            "memory",
            "runtime",
            "ngpus",
            "account",
            "nodes",
            "options",
        ] {
            ctx.entry(name.into()).or_insert_with(|| "".into());
        }
        if let Some(q) = o.text(self.sched.queue_field).filter(|q| !q.is_empty()) {
            ctx.insert("partition".into(), q.into());
            ctx.insert("queue".into(), q.into());
        }
        if let Some(gib) = o.integer("memory").filter(|g| *g > 0) {
            let mib = gib as u64 * 1024;
            ctx.insert("memory".into(), (self.sched.memory)(mib).into());
            ctx.insert("memory_mib".into(), mib.into());
            ctx.insert("memory_gib".into(), gib.into());
        }
        if let Some(min) = o.integer("runtime").filter(|m| *m > 0) {
            let min = min as u64;
            ctx.insert("runtime".into(), (self.sched.runtime)(min).into());
            ctx.insert("runtime_minutes".into(), min.into());
            ctx.insert("runtime_hms".into(), hms(min).into());
        }
        for id in ["nprocs", "ngpus", "nodes"] {
            match o.integer(id) {
                Some(n) if n > 0 => ctx.insert(id.into(), n.to_string().into()),
                _ => ctx.insert(id.into(), "".into()),
            };
        }
        let opts = o
            .text("options")
            .map(|t| self.extra_options(t).unwrap_or_default().join(" "))
            .unwrap_or_default();
        ctx.insert("options".into(), opts.into());
        ctx.insert("prologue".into(), self.config.prologue.clone().into());
        ctx.insert("epilogue".into(), self.config.epilogue.clone().into());
        // The job is tagged with its spawn: `jupyterhub-sp-…` (the site's
        // job_name, then the spawn id), so the jobs of a spawn can be found
        // again by name (`find`), e.g. after the host died while submitting.
        let base = self.job_name_base();
        ctx.insert(
            "job_name".into(),
            find::job_name(base, &job.spawn_id).into(),
        );
        ctx.insert("job_name_base".into(), base.to_string().into());
        ctx.insert("spawn_id".into(), job.spawn_id.clone().into());
        ctx
    }

    /// The site's job name (`job_name`, default `jupyterhub`), before the
    /// spawn tag.
    pub fn job_name_base(&self) -> &str {
        self.config.job_name.as_deref().unwrap_or("jupyterhub")
    }

    /// The batch script for `job`.
    pub fn script(&self, job: &JobSpec) -> Result<String, PluginError> {
        let (name, source) = match &self.config.template {
            Some(t) => ("site template", t.as_str()),
            None => ("default template", self.sched.template),
        };
        template::render(name, source, &self.context(job))
    }

    fn command(&self, program: &str, specific: &[String]) -> Command {
        Command::new(program)
            .args(self.config.extra_args.iter().cloned())
            .args(specific.iter().cloned())
            .timeout_ms(self.config.timeout_ms)
    }

    /// The submit command (script on stdin, the spawn's environment).
    pub fn submit_command(&self, job: &JobSpec) -> Result<Command, PluginError> {
        let options = Options::from(job.options.clone());
        self.validate(&job.user, &options).map_err(|errs| {
            PluginError::Other(
                errs.iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let extra = match options.text("options") {
            Some(t) => self
                .extra_options(t)
                .map_err(|e| PluginError::Other(e.message))?,
            None => vec![],
        };
        Ok(Command::new(self.sched.submit)
            .args(self.sched.submit_fixed.iter().copied())
            .args(self.config.extra_args.iter().cloned())
            .args(self.config.submit_args.iter().cloned())
            .args(extra)
            .stdin(self.script(job)?.into_bytes())
            .with_spawn_env()
            .timeout_ms(self.config.timeout_ms))
    }

    /// Renders, submits, parses the job id.
    pub fn submit(&self, host: &dyn Host, job: &JobSpec) -> Result<Submitted, PluginError> {
        let cmd = self.submit_command(job)?;
        let out = crate::host::run_checked(host, &cmd)?;
        let stdout = out.stdout_str();
        let id = crate::parse::job_id(&stdout).ok_or_else(|| {
            PluginError::Scheduler(format!(
                "`{}` printed no job id: {}",
                self.sched.submit,
                excerpt(&stdout, &out.stderr_str())
            ))
        })?;
        host.log(
            crate::Level::Info,
            &format!(
                "submitted {} job {id} for {}",
                self.sched.name, job.user.name
            ),
        );
        Ok(Submitted {
            job_id: id,
            state: String::new(),
        })
    }

    /// A status command: `program`, the site's args, then `args`.
    pub fn status_command(&self, args: impl IntoIterator<Item = String>) -> Command {
        self.command(self.sched.status, &self.config.status_args)
            .args(args)
    }

    /// Cancels; "already finished / unknown job" answers are success.
    pub fn cancel(&self, host: &dyn Host, job: &Job) -> Result<(), PluginError> {
        let cmd = Command::new(self.sched.cancel)
            .args(self.sched.cancel_fixed.iter().copied())
            .args(self.config.extra_args.iter().cloned())
            .args(self.config.cancel_args.iter().cloned())
            .arg(job.job_id.clone())
            .timeout_ms(self.config.timeout_ms);
        let out = host.run(&cmd)?;
        if out.success() {
            return Ok(());
        }
        let text = format!("{}\n{}", out.stdout_str(), out.stderr_str());
        if self.sched.cancel_gone.iter().any(|p| text.contains(p)) {
            return Ok(());
        }
        Err(PluginError::Scheduler(format!(
            "`{}` exited with status {}: {}",
            self.sched.cancel,
            out.exit_code,
            excerpt(&out.stdout_str(), &out.stderr_str())
        )))
    }

    /// Runs one status command and maps its answer for every job.
    /// `parse` reads the output; an `Err` makes every job `unknown`.
    pub fn status(
        &self,
        host: &dyn Host,
        jobs: &[Job],
        cmd: Command,
        parse: impl FnOnce(&Output) -> Result<Answer, String>,
    ) -> Vec<JobState> {
        if jobs.is_empty() {
            return vec![];
        }
        let answer = match host.run(&cmd) {
            Err(e) => Err(format!(
                "`{}` could not run: {}",
                self.sched.status,
                run_error_message(&e)
            )),
            Ok(out) if out.truncated => Err(format!(
                "`{}` output was cut at the host's cap",
                self.sched.status
            )),
            Ok(out) if is_empty_listing(&out) => Ok(Answer::complete(vec![])),
            Ok(out) => parse(&out).map_err(|e| format!("`{}`: {e}", self.sched.status)),
        };
        match answer {
            Ok(a) => self.map_states(jobs, &a),
            Err(why) => {
                host.log(crate::Level::Warn, &why);
                jobs.iter()
                    .map(|_| JobState::Unknown(why.clone()))
                    .collect()
            }
        }
    }

    /// Job ids one status command asks about.
    pub fn status_per_call(&self) -> usize {
        self.config
            .status_ids_per_call
            .unwrap_or(self.sched.status_per_call)
            .max(1)
    }

    /// Status by job id, never "every job of the site": the jobs in chunks
    /// of [`Batch::status_per_call`] ids, one command per chunk (`cmd` builds
    /// it from the chunk's jobs). An answer cut at the host's output cap is
    /// asked again in halves; a command the host refuses or that cannot run
    /// ends the round (the remaining jobs are `unknown`, as the run budget
    /// is spent or the scheduler is down).
    pub fn status_by_id(
        &self,
        host: &dyn Host,
        jobs: &[Job],
        cmd: impl Fn(&[&Job]) -> Command,
        parse: impl Fn(&Output) -> Result<Answer, String>,
    ) -> Vec<JobState> {
        let per = self.status_per_call();
        let groups = (0..jobs.len())
            .collect::<Vec<_>>()
            .chunks(per)
            .map(<[usize]>::to_vec)
            .collect();
        let halves = |_: &[Job], g: &[usize]| {
            (g.len() > 1).then(|| {
                let (a, b) = g.split_at(g.len() / 2);
                (a.to_vec(), b.to_vec())
            })
        };
        self.status_in_groups(host, jobs, groups, halves, cmd, parse)
    }

    /// [`Batch::status_by_id`] with the caller's grouping: `groups` are
    /// indices into `jobs`, one command each; `split` divides a group whose
    /// answer was cut at the output cap (`None`: it cannot be divided, its
    /// jobs are `unknown`).
    pub fn status_in_groups(
        &self,
        host: &dyn Host,
        jobs: &[Job],
        groups: Vec<Vec<usize>>,
        split: impl Fn(&[Job], &[usize]) -> Option<(Vec<usize>, Vec<usize>)>,
        cmd: impl Fn(&[&Job]) -> Command,
        parse: impl Fn(&Output) -> Result<Answer, String>,
    ) -> Vec<JobState> {
        let program = self.sched.status;
        let mut states: Vec<Option<JobState>> = vec![None; jobs.len()];
        let mut todo: std::collections::VecDeque<Vec<usize>> = groups.into();
        let mut stopped: Option<String> = None;
        while let Some(group) = todo.pop_front() {
            if group.is_empty() {
                continue;
            }
            let asked: Vec<&Job> = group.iter().map(|&i| &jobs[i]).collect();
            let answer = match host.run(&cmd(&asked)) {
                Err(e) => {
                    let why = format!("`{program}` could not run: {}", run_error_message(&e));
                    for &i in &group {
                        states[i] = Some(JobState::Unknown(why.clone()));
                    }
                    stopped = Some(why);
                    break;
                }
                Ok(out) if out.truncated => {
                    if let Some((a, b)) = split(jobs, &group) {
                        todo.push_front(b);
                        todo.push_front(a);
                        continue;
                    }
                    Err(format!(
                        "`{program}` output for {} job(s) was cut at the host's output cap \
                         (limits.output_bytes; or lower status_ids_per_call)",
                        group.len()
                    ))
                }
                Ok(out) if is_empty_listing(&out) => Ok(Answer::complete(vec![])),
                Ok(out) => parse(&out).map_err(|e| format!("`{program}`: {e}")),
            };
            let owned: Vec<Job> = asked.into_iter().cloned().collect();
            let mapped = match answer {
                Ok(a) => self.map_states(&owned, &a),
                Err(why) => {
                    host.log(crate::Level::Warn, &why);
                    owned
                        .iter()
                        .map(|_| JobState::Unknown(why.clone()))
                        .collect()
                }
            };
            for (&i, st) in group.iter().zip(mapped) {
                states[i] = Some(st);
            }
        }
        if let Some(why) = &stopped {
            host.log(crate::Level::Warn, why);
        }
        let rest = stopped.unwrap_or_else(|| "not asked".into());
        states
            .into_iter()
            .map(|s| s.unwrap_or_else(|| JobState::Unknown(rest.clone())))
            .collect()
    }

    /// Maps a parsed answer to a state per job, in order. An asked id finds
    /// only the job the scheduler's own spelling rules make it
    /// ([`Scheduler::ids`]).
    pub fn map_states(&self, jobs: &[Job], a: &Answer) -> Vec<JobState> {
        let ids = self.sched.ids;
        let mut seen: HashMap<std::borrow::Cow<'_, str>, Vec<&Seen>> = HashMap::new();
        for s in &a.jobs {
            seen.entry(ids.key(&s.id)).or_default().push(s);
        }
        jobs.iter()
            .map(|j| {
                let key = ids.key(&j.job_id);
                let found = seen
                    .get(&key)
                    .and_then(|c| c.iter().find(|s| ids.same(&s.id, &j.job_id)));
                if let Some(s) = found {
                    return self.state_of(s);
                }
                if a.gone.iter().any(|g| ids.same(g, &j.job_id)) {
                    return JobState::Done(DoneInfo {
                        exit_code: None,
                        reason: "the scheduler no longer knows the job (finished)".into(),
                    });
                }
                match &a.absent_means_done {
                    Ok(()) => JobState::Done(DoneInfo {
                        exit_code: None,
                        reason: "the job has left the queue (finished)".into(),
                    }),
                    Err(why) => JobState::Unknown(why.clone()),
                }
            })
            .collect()
    }

    fn state_of(&self, s: &Seen) -> JobState {
        let pending = |what: &str| {
            let mut reason = join_reason(what, &s.reason);
            if let Some(t) = &s.expected_start_text {
                reason.push_str(&format!(", expected start {t}"));
            } else if let Some(e) = s.expected_start {
                reason.push_str(&format!(", expected start {}", utc(e)));
            }
            JobState::Pending(PendingInfo {
                reason,
                expected_start: s.expected_start,
            })
        };
        let done = |what: &str| {
            JobState::Done(DoneInfo {
                exit_code: s.exit_code,
                reason: join_reason(what, &s.reason),
            })
        };
        match s.phase {
            Phase::Pending => pending("pending"),
            Phase::Held => pending("held"),
            Phase::Waiting => pending("waiting"),
            Phase::Configuring => pending("configuring"),
            // A suspended job keeps its allocation but its server does not
            // answer; it is not done.
            Phase::Suspended => pending("suspended"),
            Phase::Running => JobState::Running(RunningInfo {
                host: s.host.as_deref().and_then(|h| self.address(h)),
            }),
            Phase::Completing => done("completing"),
            Phase::Exiting => done("exiting"),
            Phase::Completed => match s.exit_code {
                Some(c) if c != 0 => done(&format!("failed: exit code {c}")),
                _ => done("completed"),
            },
            Phase::Failed => done("failed"),
            Phase::Cancelled => done("cancelled"),
            Phase::Unknown => JobState::Unknown(format!(
                "the scheduler reports state {:?}, which does not say whether the job runs",
                s.raw
            )),
        }
    }

    /// The address the hub connects to for an execution-host field.
    pub fn address(&self, field: &str) -> Option<String> {
        let host = first_host(field)?;
        let short = host.split('.').next().unwrap_or(&host).to_string();
        if let Some(p) = &self.config.host_pattern {
            return Some(p.replace("{host}", &host).replace("{short}", &short));
        }
        match &self.config.host_suffix {
            Some(suffix) if !host.contains('.') => Some(format!("{host}{suffix}")),
            _ => Some(host),
        }
    }
}

fn join_reason(what: &str, reason: &str) -> String {
    if reason.is_empty() || reason == what {
        what.to_string()
    } else {
        format!("{what}: {reason}")
    }
}

/// `2026-12-01T23:10:00Z` for seconds since the epoch (civil from days,
/// proleptic Gregorian).
fn utc(epoch: u64) -> String {
    let (days, secs) = ((epoch / 86_400) as i64, epoch % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn hms(min: u64) -> String {
    format!("{:02}:{:02}:00", min / 60, min % 60)
}

/// Formats shared by the schedulers.
pub mod formats {
    /// `HH:MM:SS` (Slurm, PBS, Torque, Grid Engine, Moab).
    pub fn hms(min: u64) -> String {
        super::hms(min)
    }
    /// `H:MM` (LSF `-W`).
    pub fn hm(min: u64) -> String {
        format!("{}:{:02}", min / 60, min % 60)
    }
    /// Seconds (HTCondor).
    pub fn seconds(min: u64) -> String {
        (min * 60).to_string()
    }
    /// `4096M` (Slurm, Grid Engine).
    pub fn mega(mib: u64) -> String {
        format!("{mib}M")
    }
    /// `4096mb` (PBS, Torque, Moab).
    pub fn mb(mib: u64) -> String {
        format!("{mib}mb")
    }
    /// `4096` (MiB as a bare number: LSF with MB units, HTCondor).
    pub fn bare(mib: u64) -> String {
        mib.to_string()
    }
}

fn excerpt(stdout: &str, stderr: &str) -> String {
    let s = format!("{} {}", stdout.trim(), stderr.trim());
    let s = s.trim();
    if s.is_empty() {
        return "(no output)".into();
    }
    s.chars().take(400).collect()
}

// ----- status answers -----

/// A job's state, in the words every scheduler documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Held,
    Waiting,
    Suspended,
    Configuring,
    Running,
    Completing,
    Exiting,
    /// Ended; the exit code (if known) tells success from failure.
    Completed,
    Failed,
    Cancelled,
    /// A state word that says nothing certain (e.g. LSF `UNKWN`).
    Unknown,
}

/// One job in a scheduler's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub id: String,
    pub phase: Phase,
    /// The scheduler's own state word, for messages.
    pub raw: String,
    /// The execution host field, as the scheduler printed it.
    pub host: Option<String>,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub expected_start: Option<u64>,
    /// The expected start as the scheduler printed it, for the reason text
    /// (`2026-12-01T23:10:00`) when it gives no epoch.
    pub expected_start_text: Option<String>,
}

impl Seen {
    pub fn new(id: impl Into<String>, phase: Phase, raw: impl Into<String>) -> Self {
        Seen {
            id: id.into(),
            phase,
            raw: raw.into(),
            host: None,
            reason: String::new(),
            exit_code: None,
            expected_start: None,
            expected_start_text: None,
        }
    }
    /// The expected start, seconds since the epoch (a pending job only).
    pub fn expected_start(mut self, epoch: Option<u64>) -> Self {
        self.expected_start = epoch.filter(|&e| e > 0);
        self
    }
    /// The expected start as printed (`N/A`, `Unknown`, `-` and the like
    /// are nothing).
    pub fn expected_start_text(mut self, t: &str) -> Self {
        let t = t.trim();
        if t.bytes().next().is_some_and(|b| b.is_ascii_digit()) && t.len() <= 40 {
            self.expected_start_text = Some(t.to_string());
        }
        self
    }
    pub fn host(mut self, h: &str) -> Self {
        self.host = crate::parse::first_host(h).map(|_| h.trim().to_string());
        self
    }
    pub fn reason(mut self, r: &str) -> Self {
        let r = r.trim();
        if !matches!(r, "" | "None" | "(null)" | "-" | "undefined" | "n/a") {
            self.reason = r.to_string();
        }
        self
    }
    pub fn exit_code(mut self, c: Option<i32>) -> Self {
        self.exit_code = c;
        self
    }
}

/// What one status command said.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub jobs: Vec<Seen>,
    /// Ids the scheduler explicitly says it does not know (any more).
    pub gone: BTreeSet<String>,
    /// `Ok` when the command fully succeeded, so a job missing from the
    /// answer has left the queue; `Err(why)` makes missing jobs `unknown`.
    pub absent_means_done: Result<(), String>,
}

impl Answer {
    /// An answer from a command that fully succeeded.
    pub fn complete(jobs: Vec<Seen>) -> Self {
        Answer {
            jobs,
            gone: BTreeSet::new(),
            absent_means_done: Ok(()),
        }
    }

    /// An answer whose missing jobs are unknown, for `why`.
    pub fn partial(jobs: Vec<Seen>, why: impl Into<String>) -> Self {
        Answer {
            jobs,
            gone: BTreeSet::new(),
            absent_means_done: Err(why.into()),
        }
    }
}

/// A status command that succeeded and printed nothing at all: a job-less
/// listing, read the same way by every batch plugin (none of the asked jobs
/// is in the queue any more), whatever format the scheduler prints jobs in.
pub fn is_empty_listing(out: &Output) -> bool {
    out.success()
        && !out.truncated
        && out.stdout.iter().all(u8::is_ascii_whitespace)
        && out.stderr.iter().all(u8::is_ascii_whitespace)
}

/// For text answers: fails on a non-zero exit or unexpected stderr, except
/// stderr lines that `gone` recognises (returning the job id they name).
/// Returns the ids named "gone" and whether anything else went wrong.
pub fn check_exit(
    out: &Output,
    gone: impl Fn(&str) -> Option<String>,
) -> (BTreeSet<String>, Result<(), String>) {
    let mut ids = BTreeSet::new();
    let mut other = Vec::new();
    for line in out.stderr_str().lines() {
        match gone(line) {
            Some(id) => {
                ids.insert(id);
            }
            None if !line.trim().is_empty() => other.push(line.trim().to_string()),
            None => {}
        }
    }
    for line in out.stdout_str().lines() {
        if let Some(id) = gone(line) {
            ids.insert(id);
        }
    }
    let ok = if !other.is_empty() {
        Err(format!(
            "exit status {}, error output: {}",
            out.exit_code,
            other.join(" | ").chars().take(300).collect::<String>()
        ))
    } else if !out.success() && ids.is_empty() {
        Err(format!("exit status {} and no error output", out.exit_code))
    } else {
        Ok(())
    };
    (ids, ok)
}

pub mod find;

/// The descriptor of a batch plugin.
pub fn descriptor(sched: &Scheduler, version: &str, description: &str) -> crate::Descriptor {
    crate::Descriptor {
        name: sched.name.into(),
        version: version.into(),
        api_version: crate::API_VERSION.into(),
        description: description.into(),
        capabilities: sched.capabilities(),
    }
}

/// Defines a batch plugin type `$ty` from a [`Scheduler`] and a status
/// function `fn(&Batch, &dyn Host, &[Job]) -> Vec<JobState>`, implements
/// [`crate::Plugin`] for it and exports it.
#[macro_export]
macro_rules! batch_plugin {
    ($ty:ident, $sched:expr, $description:expr, $status:path) => {
        $crate::batch_plugin_type!($ty, $sched, $description, $status);
        $crate::export_plugin!($ty);
    };
}

/// [`batch_plugin!`] without the export: for a scheduler crate that other
/// plugins build on (a component has one set of exports, so only the final
/// plugin exports).
#[macro_export]
macro_rules! batch_plugin_type {
    ($ty:ident, $sched:expr, $description:expr, $status:path) => {
        pub struct $ty(pub $crate::batch::Batch);

        impl $crate::Plugin for $ty {
            type Config = $crate::batch::BatchConfig;
            fn describe() -> $crate::Descriptor {
                $crate::batch::descriptor(&$sched, env!("CARGO_PKG_VERSION"), $description)
            }
            fn new(config: Self::Config) -> Result<Self, $crate::PluginError> {
                $crate::batch::Batch::new(&$sched, config).map($ty)
            }
            fn form(
                &self,
                _host: &dyn $crate::Host,
                user: &$crate::User,
            ) -> Result<$crate::FormSchema, $crate::PluginError> {
                Ok(self.0.form(user))
            }
            fn validate(
                &self,
                _host: &dyn $crate::Host,
                user: &$crate::User,
                options: $crate::Options,
            ) -> Result<$crate::Options, Vec<$crate::FieldError>> {
                self.0.validate(user, &options).map(|()| options)
            }
            fn submit(
                &self,
                host: &dyn $crate::Host,
                job: &$crate::JobSpec,
            ) -> Result<$crate::Submitted, $crate::PluginError> {
                self.0.submit(host, job)
            }
            fn status(
                &self,
                host: &dyn $crate::Host,
                jobs: &[$crate::Job],
            ) -> Vec<$crate::JobState> {
                $status(&self.0, host, jobs)
            }
            fn cancel(
                &self,
                host: &dyn $crate::Host,
                job: &$crate::Job,
            ) -> Result<(), $crate::PluginError> {
                self.0.cancel(host, job)
            }
        }
    };
}

/// A user-facing list of options for docs and tests: the field ids in form order.
pub fn field_ids(form: &FormSchema) -> Vec<&str> {
    form.fields.iter().map(|f| f.id.as_str()).collect()
}

// Small Field helpers used above.
trait FieldExt {
    fn label_opt(self, label: Option<&str>) -> Self;
    fn help_default(self, help: &str) -> Self;
}

impl FieldExt for crate::Field {
    fn label_opt(mut self, label: Option<&str>) -> Self {
        if let Some(l) = label {
            self.label = l.to_string();
        }
        self
    }
    fn help_default(mut self, help: &str) -> Self {
        if self.help.is_empty() {
            self.help = help.to_string();
        }
        self
    }
}

/// What PBS Professional, OpenPBS, Torque and Moab's Torque mode share.
pub mod pbs {
    use super::Phase;

    /// `Unknown Job Id [Error] ID` and `ID Job has finished` (stderr of
    /// `qstat`): the job is gone. Returns the id.
    pub fn gone(line: &str) -> Option<String> {
        let line = line.trim();
        let rest = line.strip_prefix("qstat:").unwrap_or(line).trim();
        if rest.contains("Unknown Job Id") {
            return rest.split_whitespace().last().map(str::to_string);
        }
        if rest.contains("Job has finished") {
            return rest.split_whitespace().next().map(str::to_string);
        }
        None
    }

    /// PBS/Torque job states (qstat(1B)) and the meaning of `Exit_status`:
    /// 0..255 the script's status, 256+N killed by signal N, negative: the
    /// job could not be started. Returns the phase and a reason.
    pub fn phase(state: &str, exit: Option<i32>) -> (Phase, String) {
        let p = match state {
            "Q" => Phase::Pending,
            "H" => Phase::Held,
            "W" => Phase::Waiting,
            "T" | "M" => Phase::Configuring,
            "R" | "B" => Phase::Running,
            "S" | "U" => Phase::Suspended,
            "E" => Phase::Exiting,
            "F" | "C" | "X" => match exit {
                Some(c) if c < 0 => {
                    return (Phase::Failed, format!("could not start (exit status {c})"))
                }
                Some(c) if c > 256 => {
                    let sig = c - 256;
                    let phase = if matches!(sig, 9 | 15) {
                        Phase::Cancelled
                    } else {
                        Phase::Failed
                    };
                    return (phase, format!("killed by signal {sig}"));
                }
                _ => Phase::Completed,
            },
            _ => Phase::Unknown,
        };
        (p, String::new())
    }

    /// The exit code worth reporting (a script's status, not a signal code).
    pub fn exit_code(exit: Option<i32>) -> Option<i32> {
        exit.filter(|c| (0..256).contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{jobs, output, text, user};

    static TEST: Scheduler = TEST_FIELDS;
    const TEST_FIELDS: Scheduler = Scheduler {
        name: "test",
        submit: "tsub",
        status: "tstat",
        cancel: "tdel",
        submit_fixed: &[],
        cancel_fixed: &[],
        template: "{{ cmd }}\n",
        queue_field: "queue",
        queue_enabled: true,
        memory: formats::mb,
        runtime: formats::hms,
        cancel_gone: &[],
        ids: JobIds::Exact,
        status_per_call: 2,
        extra_programs: &[],
    };

    fn batch(config: &str) -> Batch {
        Batch::new(&TEST, serde_json::from_str(config).unwrap()).unwrap()
    }

    #[test]
    fn job_ids_match_exactly_or_by_the_schedulers_own_rule() {
        use JobIds::*;
        assert!(PbsServer.same("101.pbs01", "101.pbs01.example.org"));
        assert!(PbsServer.same("101.pbs01.example.org", "101.pbs01"));
        assert!(!PbsServer.same("101.serverA", "101.serverB"));
        assert!(!PbsServer.same("101.pbs01", "101.pbs011"));
        assert!(!PbsServer.same("101.a", "102.a"));
        assert!(!PbsServer.same("101", "101.a"));
        assert!(CondorProc.same("301", "301.0"));
        assert!(!CondorProc.same("301", "301.1"));
        assert!(!CondorProc.same("301", "3010"));
        assert!(MoabPrefix.same("Moab.42", "42"));
        assert!(!MoabPrefix.same("Moab.42", "420"));
        assert!(!Exact.same("101", "1010"));
        assert!(!Exact.same("101.serverA", "101.serverB"));
        assert!(Exact.same("123[1]", " 123[1]"));
        assert!(!Exact.same("123[1]", "123[2]"));
    }

    #[test]
    fn map_states_never_takes_another_servers_job() {
        let mut b = batch("{}");
        static PBSLIKE: Scheduler = Scheduler {
            ids: JobIds::PbsServer,
            ..TEST_FIELDS
        };
        b.sched = &PBSLIKE;
        let a = Answer::complete(vec![Seen::new("101.serverB", Phase::Running, "R")]);
        let s = b.map_states(&jobs(&["101.serverA", "101.serverB.example.org"]), &a);
        assert!(matches!(&s[0], JobState::Done(_)), "{s:?}");
        assert!(matches!(&s[1], JobState::Running(_)), "{s:?}");
    }

    fn parse_lines(out: &Output) -> Result<Answer, String> {
        Ok(Answer::complete(
            out.stdout_str()
                .lines()
                .map(|l| Seen::new(l.split(' ').next().unwrap(), Phase::Running, "R"))
                .collect(),
        ))
    }

    fn by_id(b: &Batch, host: &crate::testing::FakeHost, ids: &[&str]) -> Vec<JobState> {
        b.status_by_id(
            host,
            &jobs(ids),
            |chunk| Command::new("tstat").args(chunk.iter().map(|j| j.job_id.clone())),
            parse_lines,
        )
    }

    #[test]
    fn status_by_id_asks_in_chunks_and_halves_a_cut_answer() {
        let b = batch(r#"{"status_ids_per_call":4}"#);
        let host = crate::testing::FakeHost::new();
        host.output_cap(30);
        // Each job prints 10 bytes: 4 jobs (40) pass the cap, 2 do not.
        host.on("tstat", &["**"]).with(|c| {
            let out: String = c.args.iter().map(|id| format!("{id:<9}\n")).collect();
            crate::testing::output(0, &out, "")
        });
        let ids = ["1", "2", "3", "4", "5", "6"];
        let s = by_id(&b, &host, &ids);
        assert!(s.iter().all(|s| matches!(s, JobState::Running(_))), "{s:?}");
        let argvs: Vec<Vec<String>> = host
            .calls()
            .iter()
            .map(|c| c.command.args.clone())
            .collect();
        assert_eq!(
            argvs,
            vec![
                vec!["1", "2", "3", "4"],
                vec!["1", "2"],
                vec!["3", "4"],
                vec!["5", "6"]
            ]
        );
        // One job whose answer alone passes the cap: unknown, naming the cap.
        host.output_cap(5);
        let s = by_id(&b, &host, &["1"]);
        assert!(
            matches!(&s[0], JobState::Unknown(w) if w.contains("output cap")),
            "{s:?}"
        );
    }

    #[test]
    fn status_by_id_stops_at_the_first_refused_command() {
        let b = batch(r#"{"status_ids_per_call":1}"#);
        let host = crate::testing::FakeHost::new();
        host.on("tstat", &["1"]).stdout("1\n");
        host.on("tstat", &["2"])
            .fails(crate::RunError::Denied("run budget spent".into()));
        host.on("tstat", &["3"]).stdout("3\n");
        let s = by_id(&b, &host, &["1", "2", "3"]);
        assert!(matches!(&s[0], JobState::Running(_)));
        assert!(matches!(&s[1], JobState::Unknown(w) if w.contains("run budget")));
        assert!(matches!(&s[2], JobState::Unknown(w) if w.contains("run budget")));
        assert_eq!(host.calls().len(), 2);
    }

    #[test]
    fn an_empty_listing_is_a_joblless_answer() {
        let b = batch("{}");
        let host = crate::testing::FakeHost::new();
        host.on("tstat", &["**"]).stdout("\n");
        let s = b.status(&host, &jobs(&["1"]), Command::new("tstat"), |_| {
            Err("the parser is not asked".into())
        });
        assert!(matches!(&s[0], JobState::Done(_)), "{s:?}");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_764_630_600), "2025-12-01T23:10:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn queue_list_offers_what_its_help_says() {
        let form = batch(r#"{"queue":{"choices":["a","b"]}}"#).form(&user("alice"));
        let q = &form.fields[0];
        assert!(
            q.help.contains("empty for the site's default"),
            "{}",
            q.help
        );
        let crate::FieldKind::Choice(cs) = &q.kind else {
            panic!()
        };
        assert_eq!(cs[0].value, "");
        let form = batch(r#"{"queue":{"choices":["a","b"],"default":"a"}}"#).form(&user("alice"));
        let q = &form.fields[0];
        assert!(!q.help.contains("empty"), "{}", q.help);
        let crate::FieldKind::Choice(cs) = &q.kind else {
            panic!()
        };
        assert_eq!(
            cs.iter().map(|c| c.value.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn pending_reason_carries_the_expected_start() {
        let b = batch("{}");
        let a = Answer::complete(vec![
            Seen::new("1", Phase::Pending, "PD")
                .reason("Priority")
                .expected_start_text("2026-12-01T23:10:00"),
            Seen::new("2", Phase::Pending, "Idle").expected_start(Some(1_764_630_600)),
            Seen::new("3", Phase::Pending, "PD")
                .reason("Resources")
                .expected_start_text("N/A"),
        ]);
        let s: Vec<String> = b
            .map_states(&jobs(&["1", "2", "3"]), &a)
            .iter()
            .map(crate::testing::brief)
            .collect();
        assert_eq!(
            s,
            [
                "pending: pending: Priority, expected start 2026-12-01T23:10:00",
                "pending: pending, expected start 2025-12-01T23:10:00Z",
                "pending: pending: Resources",
            ]
        );
    }

    #[test]
    fn addresses_from_suffix_or_pattern() {
        let b = batch(r#"{"host_suffix":".ib"}"#);
        assert_eq!(b.address("n1/0*2").as_deref(), Some("n1.ib"));
        assert_eq!(
            b.address("n1.example.org").as_deref(),
            Some("n1.example.org")
        );
        let b = batch(r#"{"host_pattern":"{short}-ib.{host}"}"#);
        assert_eq!(b.address("n1.x").as_deref(), Some("n1-ib.n1.x"));
        assert_eq!(batch("{}").address("n/a"), None);
    }

    #[test]
    fn extra_options_allowlist() {
        let b = batch(r#"{"extra_options":{"enabled":true,"allowed_flags":["-l","--qos"]}}"#);
        assert_eq!(
            b.extra_options("-l walltime=1:00:00 --qos=hi").unwrap(),
            vec!["-l", "walltime=1:00:00", "--qos=hi"]
        );
        for bad in [
            "-l a b",
            "--qos=hi extra",
            "-x",
            "-l 'a'",
            "--qos=$(id)",
            "-l a\nb;",
        ] {
            assert!(b.extra_options(bad).is_err(), "{bad:?}");
        }
        assert!(batch("{}").extra_options("--qos=hi").is_err());
        assert!(batch("{}").extra_options("  ").unwrap().is_empty());
    }

    #[test]
    fn check_exit_separates_gone_ids_from_errors() {
        let gone = |l: &str| l.strip_prefix("gone ").map(str::to_string);
        let (ids, ok) = check_exit(&output(1, "", "gone 7\n"), gone);
        assert!(ids.contains("7") && ok.is_ok());
        let (_, ok) = check_exit(&output(1, "", ""), gone);
        assert!(ok.is_err());
        let (_, ok) = check_exit(&output(0, "", "warning: x\n"), gone);
        assert!(ok.is_err());
    }

    #[test]
    fn unknown_answers_never_say_done() {
        let b = batch("{}");
        let a = Answer::partial(vec![Seen::new("1", Phase::Running, "R")], "broken");
        let s = b.map_states(&jobs(&["1", "2"]), &a);
        assert!(matches!(s[0], JobState::Running(_)));
        assert!(matches!(&s[1], JobState::Unknown(w) if w == "broken"));
    }

    #[test]
    fn context_has_every_batchspawner_name() {
        let b = batch("{}");
        let mut job = crate::testing::job_spec("alice", vec![text("queue", "q1")]);
        job.user = user("alice");
        let ctx = b.context(&job);
        for name in [
            "partition",
            "queue",
            "nprocs",
            "memory",
            "runtime",
            "ngpus",
            "account",
            "options",
            "prologue",
            "epilogue",
            "username",
            "homedir",
            "cmd",
            "keepvars",
        ] {
            assert!(ctx.contains_key(name), "{name}");
        }
        assert_eq!(ctx["partition"].to_string(), "q1");
        assert_eq!(ctx["keepvars"].to_string(), "JUPYTERHUB_API_TOKEN");
    }
}
