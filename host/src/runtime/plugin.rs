//! A plugin instance: one component with one site config and one set of
//! grants, and the calls into it.
//!
//! The instance holds its current [`LoadedPlugin`] behind an `ArcSwap`: a
//! call takes the version current when it starts and finishes on it, while a
//! reload swaps in the next version for the calls after it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::Semaphore;
use wasmtime::Store;

use super::bindings::PluginPre;
use super::{convert, Runtime};
use crate::capability::gate::{CallContext, Gate};
use crate::capability::CallState;
use crate::config::InstanceConfig;
use crate::model::{
    Descriptor, FieldError, FormSchema, Job, JobSpec, JobState, Options, PluginError, RawOptions,
    Submitted, User,
};

/// The WIT API version this host implements.
pub const API_VERSION: &str = "0.1.0";

/// Consecutive failed calls after which an instance reports unhealthy.
pub const UNHEALTHY_AFTER: u32 = 3;

/// One compiled, checked version of a plugin component.
pub struct LoadedPlugin {
    pub pre: PluginPre<CallState>,
    pub digest: String,
    pub descriptor: Descriptor,
    pub gate: Arc<Gate>,
    pub path: PathBuf,
    pub loaded_at: chrono::DateTime<chrono::Utc>,
}

/// Why a plugin call did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin returned an error.
    #[error("{0}")]
    Plugin(PluginError),
    /// The plugin trapped, ran out of time or memory, or could not be
    /// instantiated. The next call gets a fresh instance.
    #[error("plugin instance `{instance}` failed: {message}")]
    Failed { instance: String, message: String },
    /// Too many calls in flight for too long.
    #[error("plugin instance `{instance}` is busy: {limit} calls in flight for longer than the call deadline")]
    Busy { instance: String, limit: usize },
}

/// Validation failed: either the user's input (field errors) or the plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ValidateError {
    #[error("invalid options: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Fields(Vec<FieldError>),
    #[error(transparent)]
    Call(#[from] CallError),
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: AtomicU32,
    total_failures: AtomicU64,
    calls: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What `/v1/plugins` and `check` report about an instance's health.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub healthy: bool,
    pub calls: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

pub struct PluginInstance {
    pub config: InstanceConfig,
    config_file: PathBuf,
    config_json: String,
    runtime: Arc<Runtime>,
    current: ArcSwap<LoadedPlugin>,
    permits: Semaphore,
    health: Health,
}

impl PluginInstance {
    /// Compiles, checks and describes the instance's component.
    pub async fn load(
        runtime: Arc<Runtime>,
        config_file: &Path,
        config: InstanceConfig,
    ) -> Result<Arc<PluginInstance>> {
        let loaded = load_version(&runtime, config_file, &config).await?;
        Ok(Arc::new(PluginInstance {
            config_json: config.config.to_string(),
            permits: Semaphore::new(config.limits.concurrent_calls),
            config,
            config_file: config_file.to_path_buf(),
            runtime,
            current: ArcSwap::from_pointee(loaded),
            health: Health::default(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The version new calls use.
    pub fn current(&self) -> Arc<LoadedPlugin> {
        self.current.load_full()
    }

    /// Loads the component file again; swaps it in when it changed and
    /// passed every check. Returns whether it swapped. On error the current
    /// version keeps serving.
    pub async fn reload(&self) -> Result<bool> {
        let next = load_version(&self.runtime, &self.config_file, &self.config).await?;
        let old = self.current();
        if next.digest == old.digest {
            return Ok(false);
        }
        tracing::info!(
            instance = %self.config.name,
            "plugin reloaded: {} {} ({}…) → {} {} ({}…)",
            old.descriptor.name, old.descriptor.version, &old.digest[..12],
            next.descriptor.name, next.descriptor.version, &next.digest[..12]
        );
        self.current.store(Arc::new(next));
        self.health.consecutive_failures.store(0, Ordering::Relaxed);
        Ok(true)
    }

    pub fn health(&self) -> HealthReport {
        let consecutive = self.health.consecutive_failures.load(Ordering::Relaxed);
        HealthReport {
            healthy: consecutive < UNHEALTHY_AFTER,
            calls: self.health.calls.load(Ordering::Relaxed),
            failures: self.health.total_failures.load(Ordering::Relaxed),
            consecutive_failures: consecutive,
            last_error: self.health.last_error.lock().unwrap().clone(),
        }
    }

    async fn acquire(&self) -> Result<tokio::sync::SemaphorePermit<'_>, CallError> {
        match tokio::time::timeout(self.config.limits.call_timeout, self.permits.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(CallError::Busy {
                instance: self.config.name.clone(),
                limit: self.config.limits.concurrent_calls,
            }),
        }
    }

    fn settle<T>(&self, r: wasmtime::Result<T>, store: &Store<CallState>) -> Result<T, CallError> {
        self.health.calls.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(v) => {
                self.health.consecutive_failures.store(0, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => Err(self.failed(
                "plugin call failed",
                describe_failure(&e, store, &self.config),
            )),
        }
    }
}

/// Runs one export on a fresh instance of the current version.
macro_rules! plugin_call {
    ($self:ident, $ctx:expr, |$p:ident, $store:ident| $body:expr) => {{
        let _permit = $self.acquire().await?;
        let loaded = $self.current();
        let mut $store = $self.runtime.store(loaded.gate.clone(), $ctx);
        let result = async {
            let $p = loaded.pre.instantiate_async(&mut $store).await?;
            $body.await
        }
        .await;
        $self.settle(result, &$store)
    }};
}

impl PluginInstance {
    pub async fn form(&self, user: &User) -> Result<FormSchema, CallError> {
        let u = convert::user(user);
        let cfg = &self.config_json;
        let r = plugin_call!(self, CallContext::default(), |p, store| p
            .wasmspawner_plugin_spawner()
            .call_form(&mut store, cfg, &u))?;
        let form = r
            .map(convert::form)
            .map_err(|e| CallError::Plugin(convert::plugin_error(e)))?;
        check_form(&form).map_err(|m| self.garbage(m))?;
        Ok(form)
    }

    /// The host's checks against the form schema, then the plugin's rules.
    pub async fn validate(&self, user: &User, raw: &RawOptions) -> Result<Options, ValidateError> {
        let schema = self.form(user).await?;
        let checked = crate::form::check(&schema, raw).map_err(ValidateError::Fields)?;
        let u = convert::user(user);
        let opts = convert::options_to_wit(&checked);
        let cfg = &self.config_json;
        let r = plugin_call!(self, CallContext::default(), |p, store| p
            .wasmspawner_plugin_spawner()
            .call_validate(&mut store, cfg, &u, &opts))?;
        match r {
            Ok(o) => Ok(convert::options_from_wit(o)),
            Err(e) => Err(ValidateError::Fields(convert::field_errors(e))),
        }
    }

    pub async fn submit(&self, ctx: CallContext, job: &JobSpec) -> Result<Submitted, CallError> {
        let j = convert::job_spec(job);
        let cfg = &self.config_json;
        let r = plugin_call!(self, ctx, |p, store| p
            .wasmspawner_plugin_spawner()
            .call_submit(&mut store, cfg, &j))?;
        let sub = r
            .map(convert::submitted)
            .map_err(|e| CallError::Plugin(convert::plugin_error(e)))?;
        check_submitted(&sub).map_err(|m| self.garbage(m))?;
        Ok(sub)
    }

    /// A well-formed call whose result the host cannot accept.
    fn garbage(&self, message: String) -> CallError {
        self.failed("plugin returned garbage", message)
    }

    /// Counts a failed call against the instance's health.
    fn failed(&self, what: &str, message: String) -> CallError {
        self.health
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed);
        self.health.total_failures.fetch_add(1, Ordering::Relaxed);
        *self.health.last_error.lock().unwrap() = Some(message.clone());
        tracing::error!(instance = %self.config.name, "{what}: {message}");
        CallError::Failed {
            instance: self.config.name.clone(),
            message,
        }
    }

    /// One call for many jobs. The result has one state per job, in order;
    /// a plugin that returns fewer gets `unknown` for the rest.
    pub async fn status(&self, jobs: &[Job]) -> Result<Vec<JobState>, CallError> {
        let js: Vec<_> = jobs.iter().map(convert::job).collect();
        let cfg = &self.config_json;
        let r = plugin_call!(self, CallContext::default(), |p, store| p
            .wasmspawner_plugin_spawner()
            .call_status(&mut store, cfg, &js))?;
        let mut states: Vec<JobState> = r
            .into_iter()
            .map(convert::job_state)
            .map(tidy_state)
            .collect();
        states.truncate(jobs.len());
        while states.len() < jobs.len() {
            states.push(JobState::Unknown {
                reason: "the plugin returned no state for this job".into(),
            });
        }
        Ok(states)
    }

    pub async fn cancel(&self, ctx: CallContext, job: &Job) -> Result<(), CallError> {
        let j = convert::job(job);
        let cfg = &self.config_json;
        let r = plugin_call!(self, ctx, |p, store| p
            .wasmspawner_plugin_spawner()
            .call_cancel(&mut store, cfg, &j))?;
        r.map_err(|e| CallError::Plugin(convert::plugin_error(e)))
    }
}

/// Compiles and checks one version: the component links against this host's
/// world, its API version is compatible, its digest matches the pin, and its
/// declaration is well formed.
async fn load_version(
    runtime: &Arc<Runtime>,
    config_file: &Path,
    cfg: &InstanceConfig,
) -> Result<LoadedPlugin> {
    let rt = runtime.clone();
    let path = cfg.plugin.clone();
    let (component, digest) = tokio::task::spawn_blocking(move || rt.compile(&path))
        .await
        .context("the compile task panicked")??;
    let where_ = format!("instance `{}` ({})", cfg.name, cfg.plugin.display());
    if let Some(pin) = &cfg.sha256 {
        if *pin != digest {
            bail!(
                "{where_}: sha256 is {digest}, but the config pins {pin}; if this component is the one you want, set sha256 = \"{digest}\" in [instances.{}] of {}",
                cfg.name,
                config_file.display()
            );
        }
    }
    let instance_pre = runtime.linker.instantiate_pre(&component).map_err(|e| {
        anyhow::anyhow!("{where_}: the component does not fit this host's world wasmspawner:plugin@{API_VERSION}: {e:#}")
    })?;
    let pre = PluginPre::new(instance_pre).map_err(|e| {
        anyhow::anyhow!("{where_}: the component does not export wasmspawner:plugin/spawner@{API_VERSION}: {e:#}")
    })?;

    // describe() runs with a gate that allows nothing.
    let probe_gate = Arc::new(Gate::new(
        cfg,
        config_file,
        &runtime.state_dir,
        &digest,
        "(loading)",
        Default::default(),
        runtime.audit.clone(),
    ));
    let mut store = runtime.store(probe_gate, CallContext::default());
    let descriptor = async {
        let p = pre.instantiate_async(&mut store).await?;
        p.wasmspawner_plugin_spawner()
            .call_describe(&mut store)
            .await
    }
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{where_}: describe() failed: {}",
            describe_failure(&e, &store, cfg)
        )
    })?;
    let descriptor = convert::descriptor(descriptor);
    check_api_version(&descriptor.api_version).map_err(|m| anyhow::anyhow!("{where_}: {m}"))?;
    for (kind, uses) in [
        ("programs", &descriptor.capabilities.programs),
        ("ssh", &descriptor.capabilities.ssh),
        ("detached", &descriptor.capabilities.detached),
    ] {
        for u in uses {
            wasmspawner_argpattern::validate(&u.args).map_err(|e| {
                anyhow::anyhow!("{where_}: declared {kind} use of `{}`: {e}", u.program)
            })?;
        }
    }
    let label = format!("{} {}", descriptor.name, descriptor.version);
    let gate = Arc::new(Gate::new(
        cfg,
        config_file,
        &runtime.state_dir,
        &digest,
        &label,
        descriptor.capabilities.clone(),
        runtime.audit.clone(),
    ));
    Ok(LoadedPlugin {
        pre,
        digest,
        descriptor,
        gate,
        path: cfg.plugin.clone(),
        loaded_at: chrono::Utc::now(),
    })
}

/// Longest job id the host stores.
pub const MAX_JOB_ID: usize = 256;
/// Largest plugin state the host stores per job.
pub const MAX_PLUGIN_STATE: usize = 64 * 1024;
/// Longest reason or host kept from a status answer.
pub const MAX_REASON: usize = 1024;

fn check_submitted(s: &Submitted) -> Result<(), String> {
    if s.job_id.is_empty() || s.job_id.len() > MAX_JOB_ID || s.job_id.chars().any(char::is_control)
    {
        return Err(format!(
            "submit returned a job id that is empty, longer than {MAX_JOB_ID} bytes or has control characters ({} bytes)",
            s.job_id.len()
        ));
    }
    if s.state.len() > MAX_PLUGIN_STATE {
        return Err(format!(
            "submit returned {} bytes of plugin state; the host stores at most {MAX_PLUGIN_STATE}",
            s.state.len()
        ));
    }
    Ok(())
}

fn check_form(f: &FormSchema) -> Result<(), String> {
    if f.fields.len() > crate::form::MAX_FIELDS || f.profiles.len() > 64 {
        return Err(format!(
            "form returned {} fields and {} profiles; too many",
            f.fields.len(),
            f.profiles.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for field in &f.fields {
        let id_ok = field.id.len() <= 64
            && field
                .id
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase())
            && field
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !id_ok || field.id == crate::form::PROFILE_FIELD {
            return Err(format!("form field id {:?} is not [a-z][a-z0-9_]* (at most 64) or is the reserved \"profile\"", field.id));
        }
        if !seen.insert(field.id.as_str()) {
            return Err(format!("form field id {:?} appears twice", field.id));
        }
    }
    Ok(())
}

/// Cuts over-long text in a status answer and drops a host that is not a
/// host name or address ([`crate::model::valid_host`], the rule callbacks
/// and tunnels use too).
fn tidy_state(s: JobState) -> JobState {
    let cut = |mut t: String| {
        if t.len() > MAX_REASON {
            let mut i = MAX_REASON;
            while !t.is_char_boundary(i) {
                i -= 1;
            }
            t.truncate(i);
            t.push('…');
        }
        t.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
    };
    match s {
        JobState::Pending {
            reason,
            expected_start,
        } => JobState::Pending {
            reason: cut(reason),
            expected_start,
        },
        JobState::Running { host } => JobState::Running {
            host: host.filter(|h| crate::model::valid_host(h)),
        },
        JobState::Done { exit_code, reason } => JobState::Done {
            exit_code,
            reason: cut(reason),
        },
        JobState::Unknown { reason } => JobState::Unknown {
            reason: cut(reason),
        },
    }
}

/// Same major version; while the major is 0, the same minor.
pub fn check_api_version(v: &str) -> Result<(), String> {
    let parse = |s: &str| -> Option<(u64, u64)> {
        let mut it = s.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let (Some((hm, hn)), Some((pm, pn))) = (parse(API_VERSION), parse(v)) else {
        return Err(format!(
            "api-version {v:?} is not a version like \"{API_VERSION}\""
        ));
    };
    if hm == pm && (hm != 0 || hn == pn) {
        Ok(())
    } else {
        Err(format!(
            "the plugin targets API {v}, this host implements {API_VERSION}; rebuild the plugin with a matching SDK"
        ))
    }
}

/// A user-readable account of a failed call.
fn describe_failure(e: &wasmtime::Error, store: &Store<CallState>, cfg: &InstanceConfig) -> String {
    let stderr = String::from_utf8_lossy(&store.data().stderr.contents())
        .trim()
        .to_string();
    let mut msg = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => format!(
            "ran past its call deadline of {:.1} s (limits.call_timeout_secs) and was stopped",
            cfg.limits.call_timeout.as_secs_f64()
        ),
        _ => {
            let text = format!("{e:#}");
            if text.contains("memory") && (text.contains("limit") || text.contains("grow")) {
                format!(
                    "exceeded its memory limit of {} MiB (limits.memory_mib): {}",
                    cfg.limits.memory_bytes >> 20,
                    first_line(&text)
                )
            } else {
                format!("trapped: {}", first_line(&text))
            }
        }
    };
    if !stderr.is_empty() {
        let tail: String = stderr
            .chars()
            .rev()
            .take(1000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        msg.push_str(&format!("; plugin stderr: {tail}"));
    }
    msg
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
