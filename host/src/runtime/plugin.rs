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

use super::bindings::{latest, v0_1, wit as w, ApiVersion};
use super::{convert, Runtime};
use crate::capability::gate::{CallContext, Gate};
use crate::capability::CallState;
use crate::config::{InstanceConfig, Limits, Phase};
use crate::model::{
    Descriptor, FieldError, FormSchema, FoundJob, Job, JobReport, JobSpec, JobState, Options,
    PluginError, RawOptions, SpawnRef, Submitted, User,
};

/// The newest WIT API version this host implements (it runs every version
/// in [`ApiVersion::ALL`]).
pub const API_VERSION: &str = "0.2.0";

/// Consecutive failed calls after which an instance reports unhealthy.
pub const UNHEALTHY_AFTER: u32 = 3;

/// One compiled, checked version of a plugin component.
pub struct LoadedPlugin {
    pub pre: VersionedPre,
    /// The API version the component was built against.
    pub api: ApiVersion,
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

/// Why `find-jobs` gave no complete answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FindJobsError {
    /// The plugin cannot look jobs up by spawn (an API 0.1 plugin, or one
    /// that says so): whether a job exists cannot be known this way.
    #[error("cannot find jobs by spawn: {0}")]
    Unsupported(String),
    /// The call failed or the scheduler's answer proved nothing; ask later.
    #[error(transparent)]
    Call(CallError),
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
    /// The digest of the last file refused, so the same bytes are not
    /// compiled again at every touch.
    refused: Mutex<Option<(String, String)>>,
}

impl PluginInstance {
    /// Compiles, checks and describes the instance's component.
    pub async fn load(
        runtime: Arc<Runtime>,
        config_file: &Path,
        config: InstanceConfig,
    ) -> Result<Arc<PluginInstance>> {
        let loaded = load_version(&runtime, config_file, &config, None).await?;
        if let Some(ssh) = &config.ssh {
            runtime.note_ssh_program(&ssh.program);
        }
        Ok(Arc::new(PluginInstance {
            config_json: config.config.to_string(),
            permits: Semaphore::new(config.limits.concurrent_calls),
            config,
            config_file: config_file.to_path_buf(),
            runtime,
            current: ArcSwap::from_pointee(loaded),
            health: Health::default(),
            refused: Mutex::new(None),
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
    /// version keeps serving. The same bytes as the current version, or as
    /// the last refused file, are not compiled again.
    pub async fn reload(&self) -> Result<bool> {
        let old = self.current();
        let (bytes, digest) = read_file(&self.config).await?;
        if digest == old.digest {
            return Ok(false);
        }
        if let Some((d, why)) = self.refused.lock().unwrap().as_ref() {
            if *d == digest {
                bail!("{why} (the file is unchanged since it was refused)");
            }
        }
        let next = match load_version(
            &self.runtime,
            &self.config_file,
            &self.config,
            Some((bytes, digest.clone())),
        )
        .await
        {
            Ok(n) => n,
            Err(e) => {
                *self.refused.lock().unwrap() = Some((digest, format!("{e:#}")));
                return Err(e);
            }
        };
        let widened = widened(&old.descriptor.capabilities, &next.descriptor.capabilities);
        tracing::info!(
            instance = %self.config.name,
            "plugin reloaded: {} {} ({}…) → {} {} ({}…)",
            crate::sanitize::text(&old.descriptor.name, 64), crate::sanitize::text(&old.descriptor.version, 64), &old.digest[..12],
            crate::sanitize::text(&next.descriptor.name, 64), crate::sanitize::text(&next.descriptor.version, 64), &next.digest[..12]
        );
        if !widened.is_empty() {
            tracing::warn!(
                instance = %self.config.name,
                "the reloaded plugin declares more than the version before it: {}",
                widened.join("; ")
            );
        }
        self.runtime
            .audit
            .write(crate::capability::audit::AuditRecord {
                instance: self.config.name.clone(),
                digest: next.digest.clone(),
                phase: "describe",
                capability: "plugin.reload",
                event: "decision",
                program: self.config.plugin.display().to_string(),
                argv: widened,
                decision: "allow",
                reason: Some(format!("replaces {}", old.digest)),
                ..Default::default()
            });
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

    /// Runs one export on a fresh instance of the current version, on the
    /// plugin executor, bounded end to end by the call deadline.
    async fn call(
        &self,
        phase: Phase,
        mut ctx: CallContext,
        req: Request,
    ) -> Result<Answer, CallError> {
        let _permit = self.acquire().await?;
        let loaded = self.current();
        let deadline = std::time::Instant::now() + self.config.limits.call_timeout;
        ctx.phase = Some(phase);
        ctx.deadline = Some(deadline);
        let r = run_on_executor(
            &self.runtime,
            loaded.pre.clone(),
            loaded.gate.clone(),
            ctx,
            &self.config.limits,
            deadline,
            req,
        )
        .await;
        self.health.calls.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(v) => {
                self.health.consecutive_failures.store(0, Ordering::Relaxed);
                Ok(v)
            }
            Err(message) => Err(self.failed("plugin call failed", message)),
        }
    }
}

/// A component ready to instantiate, by the API version it was built
/// against: the one place that knows which bindings a call goes through.
#[derive(Clone)]
pub enum VersionedPre {
    V0_1(v0_1::PluginPre<CallState>),
    V0_2(latest::PluginPre<CallState>),
}

/// One export call with its arguments (latest types).
enum Request {
    Describe,
    Form(String, w::User),
    Validate(String, w::User, Vec<w::FieldValue>),
    Submit(String, w::JobSpec),
    Status(String, Vec<w::Job>),
    Cancel(String, w::Job),
    FindJobs(String, Vec<w::SpawnRef>),
}

/// What an export returned (latest types).
enum Answer {
    Describe(w::Descriptor),
    Form(Result<w::FormSchema, w::PluginError>),
    Validate(Result<Vec<w::FieldValue>, Vec<w::FieldError>>),
    Submit(Result<w::Submitted, w::PluginError>),
    Status(Vec<w::JobState>),
    Cancel(Result<(), w::PluginError>),
    FindJobs(Result<Vec<w::FoundJob>, w::PluginError>),
}

impl Request {
    /// Instantiates `pre` in `store` and makes the call through the
    /// bindings of the component's version.
    async fn call(
        self,
        pre: &VersionedPre,
        store: &mut Store<CallState>,
    ) -> wasmtime::Result<Answer> {
        match pre {
            VersionedPre::V0_2(pre) => {
                let p = pre.instantiate_async(&mut *store).await?;
                self.call_latest(&p, store).await
            }
            VersionedPre::V0_1(pre) => {
                if let Request::FindJobs(..) = self {
                    // Nothing to instantiate: 0.1 has no such export.
                    return Ok(Answer::FindJobs(Err(w::PluginError::Unsupported(
                        "an API 0.1 plugin cannot find jobs by spawn; rebuild it with the 0.2 SDK"
                            .into(),
                    ))));
                }
                let p = pre.instantiate_async(&mut *store).await?;
                self.call_v0_1(&p, store).await
            }
        }
    }

    async fn call_v0_1(
        self,
        p: &v0_1::Plugin,
        store: &mut Store<CallState>,
    ) -> wasmtime::Result<Answer> {
        use v0_1::{down, up};
        let s = p.wasmspawner_plugin_spawner();
        Ok(match self {
            Request::Describe => {
                Answer::Describe(up::descriptor(s.call_describe(&mut *store).await?))
            }
            Request::Form(c, u) => Answer::Form(
                s.call_form(&mut *store, &c, &down::user(&u))
                    .await?
                    .map(up::form)
                    .map_err(up::plugin_error),
            ),
            Request::Validate(c, u, o) => Answer::Validate(
                s.call_validate(&mut *store, &c, &down::user(&u), &down::options(&o))
                    .await?
                    .map(up::options)
                    .map_err(up::field_errors),
            ),
            Request::Submit(c, j) => Answer::Submit(
                s.call_submit(&mut *store, &c, &down::job_spec(&j))
                    .await?
                    .map(up::submitted)
                    .map_err(up::plugin_error),
            ),
            Request::Status(c, j) => {
                let jobs: Vec<_> = j.iter().map(down::job).collect();
                Answer::Status(
                    s.call_status(&mut *store, &c, &jobs)
                        .await?
                        .into_iter()
                        .map(up::job_state)
                        .collect(),
                )
            }
            Request::Cancel(c, j) => Answer::Cancel(
                s.call_cancel(&mut *store, &c, &down::job(&j))
                    .await?
                    .map_err(up::plugin_error),
            ),
            Request::FindJobs(..) => unreachable!("answered without a call"),
        })
    }

    async fn call_latest(
        self,
        p: &latest::Plugin,
        store: &mut Store<CallState>,
    ) -> wasmtime::Result<Answer> {
        let s = p.wasmspawner_plugin_spawner();
        Ok(match self {
            Request::Describe => Answer::Describe(s.call_describe(&mut *store).await?),
            Request::Form(c, u) => Answer::Form(s.call_form(&mut *store, &c, &u).await?),
            Request::Validate(c, u, o) => {
                Answer::Validate(s.call_validate(&mut *store, &c, &u, &o).await?)
            }
            Request::Submit(c, j) => Answer::Submit(s.call_submit(&mut *store, &c, &j).await?),
            Request::Status(c, j) => Answer::Status(s.call_status(&mut *store, &c, &j).await?),
            Request::Cancel(c, j) => Answer::Cancel(s.call_cancel(&mut *store, &c, &j).await?),
            Request::FindJobs(c, r) => {
                Answer::FindJobs(s.call_find_jobs(&mut *store, &c, &r).await?)
            }
        })
    }
}

/// Extra time past the deadline for a guest to notice its trap before the
/// host drops the call.
const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Instantiates `loaded` in a fresh store and makes the call on the plugin
/// executor; `Err` is a readable account of a trap, timeout or panic.
async fn run_on_executor(
    runtime: &Arc<Runtime>,
    pre: VersionedPre,
    gate: Arc<Gate>,
    mut ctx: CallContext,
    limits: &Limits,
    deadline: std::time::Instant,
    req: Request,
) -> Result<Answer, String> {
    let rt = runtime.clone();
    let lim = limits.clone();
    ctx.deadline = Some(deadline);
    let mut task = runtime.executor.spawn(async move {
        let mut store = rt.store(gate, ctx);
        let r = req.call(&pre, &mut store).await;
        r.map_err(|e| describe_failure(&e, &store, &lim))
    });
    let until = tokio::time::Instant::from_std(deadline + DEADLINE_GRACE);
    match tokio::time::timeout_at(until, &mut task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("the call ended abnormally: {e}")),
        Err(_) => {
            // Dropped where it waits (a program is killed with it).
            task.abort();
            Err(format!(
                "ran past its call deadline of {:.1} s (limits.call_timeout_secs) and was stopped",
                limits.call_timeout.as_secs_f64()
            ))
        }
    }
}

impl PluginInstance {
    pub async fn form(&self, user: &User) -> Result<FormSchema, CallError> {
        let req = Request::Form(self.config_json.clone(), convert::user(user));
        let ctx = CallContext::new(Phase::Form, Some(&user.name));
        let Answer::Form(r) = self.call(Phase::Form, ctx, req).await? else {
            unreachable!("a form request gets a form answer")
        };
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
        let req = Request::Validate(
            self.config_json.clone(),
            convert::user(user),
            convert::options_to_wit(&checked),
        );
        let ctx = CallContext::new(Phase::Validate, Some(&user.name));
        let Answer::Validate(r) = self.call(Phase::Validate, ctx, req).await? else {
            unreachable!("a validate request gets a validate answer")
        };
        match r {
            Ok(o) => {
                let o = convert::options_from_wit(o);
                check_options(&o).map_err(|m| ValidateError::Call(self.garbage(m)))?;
                Ok(o)
            }
            Err(e) => Err(ValidateError::Fields(convert::field_errors(e))),
        }
    }

    pub async fn submit(&self, ctx: CallContext, job: &JobSpec) -> Result<Submitted, CallError> {
        let req = Request::Submit(self.config_json.clone(), convert::job_spec(job));
        let Answer::Submit(r) = self.call(Phase::Submit, ctx, req).await? else {
            unreachable!("a submit request gets a submit answer")
        };
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
        let message = crate::sanitize::text(&message, 2048);
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
        Ok(self
            .status_reports(jobs)
            .await?
            .into_iter()
            .map(|r| r.state)
            .collect())
    }

    /// [`PluginInstance::status`] with the facts beside each state (queue
    /// position, time limit, details; none from an 0.1 plugin).
    pub async fn status_reports(&self, jobs: &[Job]) -> Result<Vec<JobReport>, CallError> {
        let req = Request::Status(
            self.config_json.clone(),
            jobs.iter().map(convert::job).collect(),
        );
        let Answer::Status(r) = self
            .call(Phase::Status, CallContext::new(Phase::Status, None), req)
            .await?
        else {
            unreachable!("a status request gets a status answer")
        };
        let mut reports: Vec<JobReport> = r
            .into_iter()
            .take(jobs.len())
            .map(convert::job_report)
            .map(|r| JobReport {
                state: tidy_state(r.state),
                facts: r.facts,
            })
            .collect();
        while reports.len() < jobs.len() {
            reports.push(JobReport {
                state: JobState::Unknown {
                    reason: "the plugin returned no state for this job".into(),
                },
                facts: Default::default(),
            });
        }
        Ok(reports)
    }

    /// The jobs that carry these spawns' tags (API 0.2). `Ok` is complete:
    /// a spawn without an entry provably has no job. Entries for spawns not
    /// asked about, or with an unusable job id, are dropped.
    pub async fn find_jobs(&self, spawns: &[SpawnRef]) -> Result<Vec<FoundJob>, FindJobsError> {
        let api = self.current().api;
        if api < ApiVersion::V0_2 {
            return Err(FindJobsError::Unsupported(format!(
                "the plugin is built against API {api}, which cannot find jobs by spawn"
            )));
        }
        let req = Request::FindJobs(
            self.config_json.clone(),
            spawns.iter().map(convert::spawn_ref).collect(),
        );
        let Answer::FindJobs(r) = self
            .call(Phase::Status, CallContext::new(Phase::Status, None), req)
            .await
            .map_err(FindJobsError::Call)?
        else {
            unreachable!("a find-jobs request gets a find-jobs answer")
        };
        match r {
            Ok(found) => {
                let asked: std::collections::HashSet<&str> =
                    spawns.iter().map(|s| s.spawn_id.as_str()).collect();
                let mut out = Vec::new();
                for f in found.into_iter().map(convert::found_job) {
                    if !asked.contains(f.spawn_id.as_str()) {
                        continue;
                    }
                    let sub = Submitted {
                        job_id: f.job_id.clone(),
                        state: f.state.clone(),
                    };
                    if let Err(m) = check_submitted(&sub) {
                        return Err(FindJobsError::Call(self.garbage(format!("find-jobs: {m}"))));
                    }
                    out.push(f);
                }
                Ok(out)
            }
            Err(w::PluginError::Unsupported(m)) => {
                Err(FindJobsError::Unsupported(crate::sanitize::reason(&m)))
            }
            Err(e) => Err(FindJobsError::Call(CallError::Plugin(
                convert::plugin_error(e),
            ))),
        }
    }

    pub async fn cancel(&self, ctx: CallContext, job: &Job) -> Result<(), CallError> {
        let req = Request::Cancel(self.config_json.clone(), convert::job(job));
        let Answer::Cancel(r) = self.call(Phase::Cancel, ctx, req).await? else {
            unreachable!("a cancel request gets a cancel answer")
        };
        r.map_err(|e| CallError::Plugin(convert::plugin_error(e)))
    }
}

/// Compiles and checks one version: the component links against this host's
/// world, its API version is compatible, its digest matches the pin, and its
/// declaration is well formed.
/// `read`: the file's bytes and digest when the caller has read them.
async fn load_version(
    runtime: &Arc<Runtime>,
    config_file: &Path,
    cfg: &InstanceConfig,
    read: Option<(Vec<u8>, String)>,
) -> Result<LoadedPlugin> {
    let (bytes, digest) = match read {
        Some(r) => r,
        None => read_file(cfg).await?,
    };
    let where_ = format!("instance `{}` ({})", cfg.name, cfg.plugin.display());
    // The pin before anything is compiled.
    if let Some(pin) = &cfg.sha256 {
        if *pin != digest {
            bail!(
                "{where_}: sha256 is {digest}, but the config pins {pin}; if this component is the one you want, set sha256 = \"{digest}\" in [instances.{}] of {}",
                cfg.name,
                config_file.display()
            );
        }
    }
    let rt = runtime.clone();
    let path = cfg.plugin.clone();
    let d = digest.clone();
    // The API version before anything is linked (or compiled).
    let (api, component) = tokio::task::spawn_blocking(move || {
        let api = ApiVersion::of_component(&bytes).map_err(|m| anyhow::anyhow!(m))?;
        rt.compile(&path, &bytes, &d).map(|c| (api, c))
    })
    .await
    .context("the compile task panicked")?
    .map_err(|e| anyhow::anyhow!("{where_}: {e:#}"))?;
    let instance_pre = runtime.linker.instantiate_pre(&component).map_err(|e| {
        anyhow::anyhow!("{where_}: the component (API {api}) does not fit this host's world wasmspawner:plugin@{api}: {e:#}")
    })?;
    let not_exported = |e: wasmtime::Error| {
        anyhow::anyhow!(
            "{where_}: the component does not export wasmspawner:plugin/spawner@{api}: {e:#}"
        )
    };
    let pre = match api {
        ApiVersion::V0_1 => {
            VersionedPre::V0_1(v0_1::PluginPre::new(instance_pre).map_err(not_exported)?)
        }
        ApiVersion::V0_2 => {
            VersionedPre::V0_2(latest::PluginPre::new(instance_pre).map_err(not_exported)?)
        }
    };

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
    let deadline = std::time::Instant::now() + cfg.limits.call_timeout;
    let answer = run_on_executor(
        runtime,
        pre.clone(),
        probe_gate,
        CallContext::default(),
        &cfg.limits,
        deadline,
        Request::Describe,
    )
    .await
    .map_err(|m| anyhow::anyhow!("{where_}: describe() failed: {m}"))?;
    let Answer::Describe(descriptor) = answer else {
        unreachable!("a describe request gets a descriptor")
    };
    let descriptor = convert::descriptor(descriptor);
    check_api_version(api, &descriptor.api_version)
        .map_err(|m| anyhow::anyhow!("{where_}: {m}"))?;
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
        api,
        digest,
        descriptor,
        gate,
        path: cfg.plugin.clone(),
        loaded_at: chrono::Utc::now(),
    })
}

/// [`super::cache::read_component`] off the async runtime.
async fn read_file(cfg: &InstanceConfig) -> Result<(Vec<u8>, String)> {
    let path = cfg.plugin.clone();
    tokio::task::spawn_blocking(move || super::cache::read_component(&path))
        .await
        .context("the read task panicked")?
}

/// What `next` declares that `old` did not, as `capability program [args]`.
fn widened(
    old: &crate::model::DeclaredCapabilities,
    next: &crate::model::DeclaredCapabilities,
) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, o, n) in [
        ("process.run", &old.programs, &next.programs),
        ("detached.start", &old.detached, &next.detached),
        ("ssh.run", &old.ssh, &next.ssh),
    ] {
        for u in n {
            if !o.contains(u) {
                out.push(format!(
                    "{kind} {} [{}]{}",
                    crate::sanitize::text(&u.program, 256),
                    crate::sanitize::text(&u.args.join(" "), 512),
                    if u.spawn_env { " with spawn_env" } else { "" }
                ));
            }
        }
    }
    out
}

/// Longest job id the host stores.
pub const MAX_JOB_ID: usize = 256;
/// Largest plugin state the host stores per job.
pub const MAX_PLUGIN_STATE: usize = 64 * 1024;
/// Longest reason or host kept from a status answer.
pub const MAX_REASON: usize = crate::sanitize::MAX_REASON;
/// Most validated options (entries) the host stores for a spawn.
pub const MAX_OPTION_ENTRIES: usize = 256;
/// Most bytes of validated options (keys plus values, a number or boolean
/// counted as its text) a plugin's `validate` may return; more refuses the
/// spawn (`502 plugin_failed`, nothing stored).
pub const MAX_OPTIONS_BYTES: usize = 64 * 1024;

/// What `submit` returned, as the host will keep it: a job id it can use
/// (1-[`MAX_JOB_ID`] bytes, nothing [`crate::sanitize`] would change) and at
/// most [`MAX_PLUGIN_STATE`] of state.
fn check_submitted(s: &Submitted) -> Result<(), String> {
    if s.job_id.is_empty() || s.job_id.len() > MAX_JOB_ID || !crate::sanitize::is_clean(&s.job_id) {
        return Err(format!(
            "submit returned an unusable job id ({:?}, {} bytes: empty, over {MAX_JOB_ID} bytes, or with control or bidi characters); if a job was made, the host cannot follow it",
            crate::sanitize::text(&s.job_id, 64),
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

/// Validated options the host will store: ids like form ids, text without
/// control characters, at most [`MAX_OPTION_ENTRIES`] and
/// [`MAX_OPTIONS_BYTES`] of keys and values.
fn check_options(o: &Options) -> Result<(), String> {
    for (k, v) in o {
        if k.len() > 64 || !crate::sanitize::is_clean(k) {
            return Err(format!(
                "validate returned an option id of {} bytes or with control characters",
                k.len()
            ));
        }
        if let crate::model::Value::Text(t) = v {
            if !crate::sanitize::is_clean(t) {
                return Err(format!(
                    "validate returned option `{k}` with control, bidi or line-separator characters"
                ));
            }
        }
    }
    let bytes: usize = o
        .iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    crate::model::Value::Text(t) => t.len(),
                    other => other.to_string().len(),
                }
        })
        .sum();
    if o.len() > MAX_OPTION_ENTRIES || bytes > MAX_OPTIONS_BYTES {
        return Err(format!(
            "validate returned {} options with {bytes} bytes of keys and values; the host stores at most {MAX_OPTION_ENTRIES} options and {MAX_OPTIONS_BYTES} bytes (MAX_OPTIONS_BYTES), so the spawn is refused",
            o.len()
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
    crate::form::check_schema(f)
}

/// Cuts over-long text in a status answer and drops a host that is not a
/// host name or address ([`crate::model::valid_host`], the rule callbacks
/// and tunnels use too).
fn tidy_state(s: JobState) -> JobState {
    let cut = |t: String| crate::sanitize::text(&t, MAX_REASON);
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

/// The descriptor's `api-version` names the version the component was
/// linked as (same major and minor).
pub fn check_api_version(linked: ApiVersion, declared: &str) -> Result<(), String> {
    match ApiVersion::parse(declared) {
        Some(v) if v == linked => Ok(()),
        Some(v) => Err(format!(
            "the component implements API {linked}, but its describe() says api-version {v}; rebuild it with one SDK version"
        )),
        None => Err(format!(
            "describe() says api-version {declared:?}, which this host does not run (it runs {}); rebuild the plugin with a matching SDK",
            ApiVersion::supported()
        )),
    }
}

/// A user-readable account of a failed call.
fn describe_failure(e: &wasmtime::Error, store: &Store<CallState>, limits: &Limits) -> String {
    let stderr = String::from_utf8_lossy(&store.data().stderr.contents())
        .trim()
        .to_string();
    let mut msg = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => format!(
            "ran past its call deadline of {:.1} s (limits.call_timeout_secs) and was stopped",
            limits.call_timeout.as_secs_f64()
        ),
        _ => {
            // The cause without wasmtime's multi-line backtrace context.
            let text = e
                .chain()
                .map(|c| c.to_string())
                .filter(|c| !c.starts_with("error while executing at wasm backtrace"))
                .collect::<Vec<_>>()
                .join(": ");
            if text.contains("memory") && (text.contains("limit") || text.contains("grow")) {
                format!(
                    "exceeded its memory limit of {} MiB (limits.memory_mib): {}",
                    limits.memory_bytes >> 20,
                    crate::sanitize::text(&text, 1000)
                )
            } else {
                format!("trapped: {}", crate::sanitize::text(&text, 1000))
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
        msg.push_str(&format!(
            "; plugin stderr: {}",
            crate::sanitize::text(&tail, 4000)
        ));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;

    #[test]
    fn options_are_bounded_in_bytes_and_entries() {
        let mut o = Options::new();
        o.insert(
            "note".into(),
            Value::Text("x".repeat(MAX_OPTIONS_BYTES - 4)),
        );
        assert_eq!(check_options(&o), Ok(()));
        o.insert("n".into(), Value::Integer(1));
        let e = check_options(&o).unwrap_err();
        assert!(
            e.contains("MAX_OPTIONS_BYTES") && e.contains("65536"),
            "{e}"
        );
        let many: Options = (0..=MAX_OPTION_ENTRIES)
            .map(|i| (format!("f{i}"), Value::Boolean(true)))
            .collect();
        assert!(check_options(&many).unwrap_err().contains("257 options"));
    }

    #[test]
    fn unusable_job_ids_and_huge_states_are_refused() {
        let sub = |job_id: &str, state: usize| Submitted {
            job_id: job_id.into(),
            state: "s".repeat(state),
        };
        assert_eq!(check_submitted(&sub("123.sched", 10)), Ok(()));
        for bad in ["", "12\n3", "12\u{202e}3", &"9".repeat(MAX_JOB_ID + 1)] {
            let e = check_submitted(&sub(bad, 0)).unwrap_err();
            assert!(
                e.contains("unusable job id") && crate::sanitize::is_clean(&e),
                "{e:?}"
            );
        }
        assert!(check_submitted(&sub("1", MAX_PLUGIN_STATE + 1)).is_err());
    }
}
