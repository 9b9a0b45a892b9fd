//! # wasmspawner-sdk
//!
//! The crate a Wasmspawner plugin author depends on. A plugin is a type that
//! implements [`Plugin`]; [`export_plugin!`] turns it into a WebAssembly
//! component for the `wasmspawner:plugin` WIT world. Build it with
//! `cargo build --target wasm32-wasip2 --release`.
//!
//! What the SDK gives you:
//! - the WIT types ([`User`], [`FormSchema`], [`JobState`], …) and the [`Host`]
//!   capabilities (run a program, run over SSH, detached processes, logging);
//! - [`Options`], typed access to the validated form values;
//! - [`template`]: batch scripts rendered with minijinja (Jinja2 syntax, so a
//!   site can bring its batchspawner template);
//! - [`parse`]: helpers scheduler plugins share (job ids, host lists,
//!   `qstat -f` blocks);
//! - [`batch`]: everything batch-scheduler plugins share (site config, form,
//!   template context, submit/cancel, status mapping) and
//!   [`batch_plugin!`], so a scheduler plugin is its commands, its default
//!   template and its status parser;
//! - [`testing`]: a native test harness with a scripted [`testing::FakeHost`],
//!   so plugin logic runs under plain `cargo test`, no wasm needed, and
//!   [`testing::mangled`] for robustness tests of status parsers.
//!
//! ```ignore
//! use wasmspawner_sdk::prelude::*;
//!
//! struct Mine;
//! impl Plugin for Mine { /* … */ }
//! wasmspawner_sdk::export_plugin!(Mine);
//! ```

pub mod batch;
pub mod form;
pub mod host;
pub mod options;
pub mod parse;
pub mod template;
pub mod testing;
mod testing_suite;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit/since_v0.2.0",
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "::wasmspawner_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

pub use bindings::wasmspawner::plugin::detached::{Launch, ProcessState, Signal};
pub use bindings::wasmspawner::plugin::log::Level;
pub use bindings::wasmspawner::plugin::process::{Command, EnvVar, Output, RunError};
pub use bindings::wasmspawner::plugin::types::{
    Bound, Capability, Choice, Descriptor, Detail, DoneInfo, Field, FieldError, FieldKind,
    FieldValue, FormSchema, FoundJob, IntegerField, Job, JobSpec, JobState, NumberField,
    PendingInfo, PluginError, Profile, ProgramUse, RunningInfo, SpawnRef, Submitted, TextField,
    TimeLimit, User, Value,
};
pub use host::{Host, WasmHost};
pub use options::Options;

/// The WIT API version this SDK implements (the `wasmspawner:plugin` package version).
pub const API_VERSION: &str = "0.2.0";

/// What a plugin declares, by kind: the convenient shape to write, turned
/// into the WIT's list of [`Capability`] cases with `.into()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeclaredCapabilities {
    /// Programs run to completion (`process.run`).
    pub programs: Vec<ProgramUse>,
    /// Programs run on a remote host over SSH (`ssh.run`).
    pub ssh: Vec<ProgramUse>,
    /// Long-running local processes (`detached.start`).
    pub detached: Vec<ProgramUse>,
}

impl From<DeclaredCapabilities> for Vec<Capability> {
    fn from(c: DeclaredCapabilities) -> Self {
        (c.programs.into_iter().map(Capability::Program))
            .chain(c.ssh.into_iter().map(Capability::Ssh))
            .chain(c.detached.into_iter().map(Capability::Detached))
            .collect()
    }
}

impl From<Vec<Capability>> for DeclaredCapabilities {
    fn from(list: Vec<Capability>) -> Self {
        let mut c = DeclaredCapabilities::default();
        for cap in list {
            match cap {
                Capability::Program(p) => c.programs.push(p),
                Capability::Ssh(p) => c.ssh.push(p),
                Capability::Detached(p) => c.detached.push(p),
            }
        }
        c
    }
}

impl TimeLimit {
    /// No limit known.
    pub fn none() -> TimeLimit {
        TimeLimit {
            limit_secs: None,
            ends_at: None,
        }
    }
}

impl PendingInfo {
    /// Pending for `reason`, nothing else known.
    pub fn new(reason: impl Into<String>) -> PendingInfo {
        PendingInfo {
            reason: reason.into(),
            expected_start: None,
            queue_position: None,
            time_limit: TimeLimit::none(),
            details: Vec::new(),
        }
    }
}

impl RunningInfo {
    /// Running on `host` (when known), nothing else known.
    pub fn on(host: Option<String>) -> RunningInfo {
        RunningInfo {
            host,
            started_at: None,
            time_limit: TimeLimit::none(),
            details: Vec::new(),
        }
    }
}

/// Everything a plugin usually needs, in one `use`.
pub mod prelude {
    pub use crate::form::*;
    pub use crate::host::Host;
    pub use crate::options::Options;
    pub use crate::{
        Command, DeclaredCapabilities, Descriptor, DoneInfo, EnvVar, Field, FieldError, FieldKind,
        FieldValue, FormSchema, FoundJob, Job, JobSpec, JobState, Launch, Level, Output,
        PendingInfo, Plugin, PluginError, ProcessState, ProgramUse, RunError, RunningInfo, Signal,
        SpawnRef, Submitted, TimeLimit, User, Value, API_VERSION,
    };
}

/// A spawner plugin: one site's or one scheduler's logic.
///
/// The host creates the plugin from the instance's site config for every
/// call (a fresh WebAssembly instance each time), so keep [`Plugin::new`]
/// cheap and hold no state between calls: what a job needs later goes into
/// [`Submitted::state`], which the host stores and hands back.
pub trait Plugin: Sized {
    /// The instance's site config (the TOML table in the host's config).
    /// Use `#[serde(deny_unknown_fields)]` so typos are reported.
    type Config: serde::de::DeserializeOwned;

    /// Name, version, API version and the capabilities the plugin needs.
    fn describe() -> Descriptor;

    /// Builds the plugin from its site config; reject bad values here with
    /// [`PluginError::Config`] naming the key.
    fn new(config: Self::Config) -> Result<Self, PluginError>;

    /// The options form for `user`.
    fn form(&self, host: &dyn Host, user: &User) -> Result<FormSchema, PluginError>;

    /// Site rules on top of the host's checks (types, ranges, choices and
    /// lengths are already checked against [`Plugin::form`]'s schema).
    fn validate(
        &self,
        _host: &dyn Host,
        _user: &User,
        options: Options,
    ) -> Result<Options, Vec<FieldError>> {
        Ok(options)
    }

    /// Submits the job; returns its id and the state to keep.
    fn submit(&self, host: &dyn Host, job: &JobSpec) -> Result<Submitted, PluginError>;

    /// The state of every job in `jobs`, in order, ideally from one
    /// scheduler command. Return [`JobState::Unknown`] whenever the
    /// scheduler's answer does not prove a state.
    fn status(&self, host: &dyn Host, jobs: &[Job]) -> Vec<JobState>;

    /// Cancels the job; a job that already ended is not an error.
    fn cancel(&self, host: &dyn Host, job: &Job) -> Result<(), PluginError>;

    /// The jobs that carry these spawns' tags, from as few scheduler
    /// commands as possible (API 0.2). `Ok` must be complete: a spawn left
    /// out provably has no job, and the host may submit it again; return an
    /// error whenever the scheduler's answer does not prove that. The host
    /// calls this after a crash during submit. The default says the plugin
    /// cannot, which the host treats as "cannot know".
    fn find_jobs(
        &self,
        _host: &dyn Host,
        _spawns: &[SpawnRef],
    ) -> Result<Vec<FoundJob>, PluginError> {
        Err(PluginError::Unsupported(
            "this plugin does not look jobs up by spawn".into(),
        ))
    }
}

/// Parses the site config a host passes (a JSON object) into `P`.
pub fn load<P: Plugin>(config: &str) -> Result<P, PluginError> {
    let config = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let parsed: P::Config = serde_json::from_str(config)
        .map_err(|e| PluginError::Config(format!("in the instance's [config] table: {e}")))?;
    P::new(parsed)
}

#[doc(hidden)]
pub mod __export {
    //! Glue used by [`export_plugin!`]; not public API.
    use super::*;

    /// [`API_VERSION`] as the bytes of the custom section.
    pub const fn api_version_bytes<const N: usize>() -> [u8; N] {
        let src = API_VERSION.as_bytes();
        let mut out = [0u8; N];
        let mut i = 0;
        while i < N {
            out[i] = src[i];
            i += 1;
        }
        out
    }

    pub fn form<P: Plugin>(config: String, user: User) -> Result<FormSchema, PluginError> {
        load::<P>(&config)?.form(&WasmHost, &user)
    }

    pub fn validate<P: Plugin>(
        config: String,
        user: User,
        options: Vec<FieldValue>,
    ) -> Result<Vec<FieldValue>, Vec<FieldError>> {
        let plugin = load::<P>(&config).map_err(|e| {
            vec![FieldError {
                field: String::new(),
                message: crate::host::error_message(&e),
            }]
        })?;
        plugin
            .validate(&WasmHost, &user, Options::from(options))
            .map(Options::into_inner)
    }

    pub fn submit<P: Plugin>(config: String, job: JobSpec) -> Result<Submitted, PluginError> {
        load::<P>(&config)?.submit(&WasmHost, &job)
    }

    pub fn status<P: Plugin>(config: String, jobs: Vec<Job>) -> Vec<JobState> {
        match load::<P>(&config) {
            Ok(plugin) => {
                let mut states = plugin.status(&WasmHost, &jobs);
                // The contract is one state per job, in order.
                states.resize_with(jobs.len(), || {
                    JobState::Unknown("the plugin returned no state for this job".into())
                });
                states
            }
            Err(e) => {
                let msg = crate::host::error_message(&e);
                jobs.iter()
                    .map(|_| JobState::Unknown(msg.clone()))
                    .collect()
            }
        }
    }

    pub fn cancel<P: Plugin>(config: String, job: Job) -> Result<(), PluginError> {
        load::<P>(&config)?.cancel(&WasmHost, &job)
    }

    pub fn find_jobs<P: Plugin>(
        config: String,
        spawns: Vec<SpawnRef>,
    ) -> Result<Vec<FoundJob>, PluginError> {
        load::<P>(&config)?.find_jobs(&WasmHost, &spawns)
    }
}

/// Exports a [`Plugin`] implementation as the component's `spawner` interface.
///
/// Use it once, at the root of the plugin crate: `export_plugin!(MyPlugin);`
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // Only a wasm build exports the component's functions; a native build
        // (the plugin's `cargo test`) uses the plugin type directly.
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        pub struct __WasmspawnerExport;

        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::wasmspawner::plugin::spawner::Guest for __WasmspawnerExport {
            fn describe() -> $crate::Descriptor {
                <$plugin as $crate::Plugin>::describe()
            }
            fn form(
                config: String,
                user: $crate::User,
            ) -> Result<$crate::FormSchema, $crate::PluginError> {
                $crate::__export::form::<$plugin>(config, user)
            }
            fn validate(
                config: String,
                user: $crate::User,
                options: Vec<$crate::FieldValue>,
            ) -> Result<Vec<$crate::FieldValue>, Vec<$crate::FieldError>> {
                $crate::__export::validate::<$plugin>(config, user, options)
            }
            fn submit(
                config: String,
                job: $crate::JobSpec,
            ) -> Result<$crate::Submitted, $crate::PluginError> {
                $crate::__export::submit::<$plugin>(config, job)
            }
            fn status(config: String, jobs: Vec<$crate::Job>) -> Vec<$crate::JobState> {
                $crate::__export::status::<$plugin>(config, jobs)
            }
            fn cancel(config: String, job: $crate::Job) -> Result<(), $crate::PluginError> {
                $crate::__export::cancel::<$plugin>(config, job)
            }
            fn find_jobs(
                config: String,
                spawns: Vec<$crate::SpawnRef>,
            ) -> Result<Vec<$crate::FoundJob>, $crate::PluginError> {
                $crate::__export::find_jobs::<$plugin>(config, spawns)
            }
        }

        // The API version, for the host to read before it links the
        // component (`wasmspawner:api-version`, kept by the linker).
        #[cfg(target_arch = "wasm32")]
        #[used]
        #[link_section = "wasmspawner:api-version"]
        static __WASMSPAWNER_API_VERSION: [u8; $crate::API_VERSION.len()] = $crate::__export::api_version_bytes();

        #[cfg(target_arch = "wasm32")]
        $crate::bindings::export_raw!(__WasmspawnerExport with_types_in $crate::bindings);
    };
}
