//! API 0.1 (`wit/since_v0.1.0`, frozen): its imports forward to the latest
//! version's capability implementations, and its exports' arguments and
//! results convert to and from the latest types, so the rest of the host
//! never sees 0.1.
//!
//! What 0.1 cannot say reads as absent: no queue position, time limit or
//! details in a status, and `find-jobs` is unsupported (the host then treats
//! a crash during submit as "cannot know", as it always did for 0.1).

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit/since_v0.1.0",
    imports: { default: async },
    exports: { default: async },
});

use wasmspawner::plugin as old;

use super::latest::wasmspawner::plugin as new;
use crate::capability::CallState;

// ----- imports: forward to the latest -----

impl old::types::Host for CallState {}

impl old::process::Host for CallState {
    async fn run(
        &mut self,
        cmd: old::process::Command,
    ) -> Result<old::process::Output, old::process::RunError> {
        new::process::Host::run(self, command(cmd))
            .await
            .map(output)
            .map_err(run_error)
    }
}

impl old::ssh::Host for CallState {
    async fn run(
        &mut self,
        host: String,
        cmd: old::process::Command,
    ) -> Result<old::process::Output, old::process::RunError> {
        new::ssh::Host::run(self, host, command(cmd))
            .await
            .map(output)
            .map_err(run_error)
    }
}

impl old::detached::Host for CallState {
    async fn start(
        &mut self,
        req: old::detached::Launch,
    ) -> Result<String, old::process::RunError> {
        let req = new::detached::Launch {
            program: req.program,
            args: req.args,
            env: req.env.into_iter().map(env_var).collect(),
            spawn_env: req.spawn_env,
            workdir: req.workdir,
        };
        new::detached::Host::start(self, req)
            .await
            .map_err(run_error)
    }

    async fn status(&mut self, handles: Vec<String>) -> Vec<old::detached::ProcessState> {
        new::detached::Host::status(self, handles)
            .await
            .into_iter()
            .map(|s| match s {
                new::detached::ProcessState::Running => old::detached::ProcessState::Running,
                new::detached::ProcessState::Exited(c) => old::detached::ProcessState::Exited(c),
                new::detached::ProcessState::Unknown(m) => old::detached::ProcessState::Unknown(m),
            })
            .collect()
    }

    async fn send_signal(
        &mut self,
        handle: String,
        sig: old::detached::Signal,
    ) -> Result<(), old::process::RunError> {
        let sig = match sig {
            old::detached::Signal::Interrupt => new::detached::Signal::Interrupt,
            old::detached::Signal::Terminate => new::detached::Signal::Terminate,
            old::detached::Signal::Kill => new::detached::Signal::Kill,
        };
        new::detached::Host::send_signal(self, handle, sig)
            .await
            .map_err(run_error)
    }
}

impl old::log::Host for CallState {
    async fn log(&mut self, level: old::log::Level, message: String) {
        let level = match level {
            old::log::Level::Trace => new::log::Level::Trace,
            old::log::Level::Debug => new::log::Level::Debug,
            old::log::Level::Info => new::log::Level::Info,
            old::log::Level::Warn => new::log::Level::Warn,
            old::log::Level::Error => new::log::Level::Error,
        };
        new::log::Host::log(self, level, message).await
    }
}

fn env_var(e: old::process::EnvVar) -> new::process::EnvVar {
    new::process::EnvVar {
        name: e.name,
        value: e.value,
    }
}

fn command(c: old::process::Command) -> new::process::Command {
    new::process::Command {
        program: c.program,
        args: c.args,
        stdin: c.stdin,
        env: c.env.into_iter().map(env_var).collect(),
        spawn_env: c.spawn_env,
        timeout_ms: c.timeout_ms,
    }
}

fn output(o: new::process::Output) -> old::process::Output {
    old::process::Output {
        exit_code: o.exit_code,
        stdout: o.stdout,
        stderr: o.stderr,
        truncated: o.truncated,
    }
}

fn run_error(e: new::process::RunError) -> old::process::RunError {
    use new::process::RunError as N;
    use old::process::RunError as O;
    match e {
        N::Denied(m) => O::Denied(m),
        N::NotFound(m) => O::NotFound(m),
        N::TimedOut(m) => O::TimedOut(m),
        N::Failed(m) => O::Failed(m),
    }
}

/// Links the 0.1 imports (each forwarding to the latest).
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<CallState>) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    old::types::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    old::process::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    old::detached::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    old::ssh::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    old::log::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    Ok(())
}

// ----- exports: arguments down, results up -----

pub mod down {
    //! Latest → 0.1, for the arguments of an export call.
    use super::old::types as o;
    use crate::runtime::bindings::wit as n;

    pub fn user(u: &n::User) -> o::User {
        o::User {
            name: u.name.clone(),
            groups: u.groups.clone(),
            admin: u.admin,
        }
    }

    fn value(v: &n::Value) -> o::Value {
        match v {
            n::Value::Text(s) => o::Value::Text(s.clone()),
            n::Value::Integer(i) => o::Value::Integer(*i),
            n::Value::Number(x) => o::Value::Number(*x),
            n::Value::Boolean(b) => o::Value::Boolean(*b),
        }
    }

    pub fn options(o: &[n::FieldValue]) -> Vec<o::FieldValue> {
        o.iter()
            .map(|fv| o::FieldValue {
                field: fv.field.clone(),
                value: value(&fv.value),
            })
            .collect()
    }

    pub fn job_spec(j: &n::JobSpec) -> o::JobSpec {
        o::JobSpec {
            spawn_id: j.spawn_id.clone(),
            user: user(&j.user),
            options: options(&j.options),
            cmd: j.cmd.clone(),
            env_names: j.env_names.clone(),
            callback_url: j.callback_url.clone(),
            home: j.home.clone(),
        }
    }

    pub fn job(j: &n::Job) -> o::Job {
        o::Job {
            job_id: j.job_id.clone(),
            user: j.user.clone(),
            state: j.state.clone(),
        }
    }
}

pub mod up {
    //! 0.1 → latest, for the results of an export call.
    use super::old::types as o;
    use crate::runtime::bindings::wit as n;

    fn program_use(p: o::ProgramUse) -> n::ProgramUse {
        n::ProgramUse {
            program: p.program,
            args: p.args,
            spawn_env: p.spawn_env,
        }
    }

    pub fn descriptor(d: o::Descriptor) -> n::Descriptor {
        let c = d.capabilities;
        let capabilities = (c.programs.into_iter())
            .map(|p| n::Capability::Program(program_use(p)))
            .chain(
                c.ssh
                    .into_iter()
                    .map(|p| n::Capability::Ssh(program_use(p))),
            )
            .chain(
                c.detached
                    .into_iter()
                    .map(|p| n::Capability::Detached(program_use(p))),
            )
            .collect();
        n::Descriptor {
            name: d.name,
            version: d.version,
            api_version: d.api_version,
            description: d.description,
            capabilities,
        }
    }

    fn value(v: o::Value) -> n::Value {
        match v {
            o::Value::Text(s) => n::Value::Text(s),
            o::Value::Integer(i) => n::Value::Integer(i),
            o::Value::Number(x) => n::Value::Number(x),
            o::Value::Boolean(b) => n::Value::Boolean(b),
        }
    }

    pub fn options(o: Vec<o::FieldValue>) -> Vec<n::FieldValue> {
        o.into_iter()
            .map(|fv| n::FieldValue {
                field: fv.field,
                value: value(fv.value),
            })
            .collect()
    }

    fn field_kind(k: o::FieldKind) -> n::FieldKind {
        match k {
            o::FieldKind::Text(t) => n::FieldKind::Text(n::TextField {
                max_length: t.max_length,
                pattern: t.pattern,
                placeholder: t.placeholder,
            }),
            o::FieldKind::Integer(i) => n::FieldKind::Integer(n::IntegerField {
                min: i.min,
                max: i.max,
                step: i.step,
                unit: i.unit,
            }),
            o::FieldKind::Number(x) => n::FieldKind::Number(n::NumberField {
                min: x.min,
                max: x.max,
                step: x.step,
                unit: x.unit,
            }),
            o::FieldKind::Choice(c) => n::FieldKind::Choice(
                c.into_iter()
                    .map(|c| n::Choice {
                        value: c.value,
                        label: c.label,
                    })
                    .collect(),
            ),
            o::FieldKind::Boolean => n::FieldKind::Boolean,
        }
    }

    pub fn form(f: o::FormSchema) -> n::FormSchema {
        n::FormSchema {
            fields: f
                .fields
                .into_iter()
                .map(|f| n::Field {
                    id: f.id,
                    label: f.label,
                    help: f.help,
                    default: f.default,
                    required: f.required,
                    kind: field_kind(f.kind),
                })
                .collect(),
            profiles: f
                .profiles
                .into_iter()
                .map(|p| n::Profile {
                    id: p.id,
                    label: p.label,
                    description: p.description,
                    fixed: options(p.fixed),
                    bounds: p
                        .bounds
                        .into_iter()
                        .map(|b| n::Bound {
                            field: b.field,
                            min: b.min,
                            max: b.max,
                            choices: b.choices,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    pub fn field_errors(e: Vec<o::FieldError>) -> Vec<n::FieldError> {
        e.into_iter()
            .map(|e| n::FieldError {
                field: e.field,
                message: e.message,
            })
            .collect()
    }

    pub fn submitted(s: o::Submitted) -> n::Submitted {
        n::Submitted {
            job_id: s.job_id,
            state: s.state,
        }
    }

    pub fn plugin_error(e: o::PluginError) -> n::PluginError {
        match e {
            o::PluginError::Config(m) => n::PluginError::Config(m),
            o::PluginError::Capability(m) => n::PluginError::Capability(m),
            o::PluginError::Scheduler(m) => n::PluginError::Scheduler(m),
            o::PluginError::Other(m) => n::PluginError::Other(m),
        }
    }

    pub fn job_state(s: o::JobState) -> n::JobState {
        let no_limit = || n::TimeLimit {
            limit_secs: None,
            ends_at: None,
        };
        match s {
            o::JobState::Pending(p) => n::JobState::Pending(n::PendingInfo {
                reason: p.reason,
                expected_start: p.expected_start,
                queue_position: None,
                time_limit: no_limit(),
                details: Vec::new(),
            }),
            o::JobState::Running(r) => n::JobState::Running(n::RunningInfo {
                host: r.host,
                started_at: None,
                time_limit: no_limit(),
                details: Vec::new(),
            }),
            o::JobState::Done(d) => n::JobState::Done(n::DoneInfo {
                exit_code: d.exit_code,
                reason: d.reason,
            }),
            o::JobState::Unknown(m) => n::JobState::Unknown(m),
        }
    }
}
