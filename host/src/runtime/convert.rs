//! Between the host's [`crate::model`] types and the WIT bindings.
//!
//! The boundary: every text a plugin returns (names, errors, reasons, form
//! labels) passes [`crate::sanitize`] here, cut to its budget, before the
//! host logs, stores, serves or renders it.

use super::bindings::wit as w;
use crate::model as m;
use crate::sanitize::{clean as tidy, reason as clean, text};

pub fn user(u: &m::User) -> w::User {
    w::User {
        name: u.name.clone(),
        groups: u.groups.clone(),
        admin: u.admin,
    }
}

fn program_use(p: w::ProgramUse) -> m::ProgramUse {
    m::ProgramUse {
        program: p.program,
        args: p.args,
        spawn_env: p.spawn_env,
    }
}

pub fn descriptor(d: w::Descriptor) -> m::Descriptor {
    let c = d.capabilities;
    m::Descriptor {
        name: text(&d.name, 128),
        version: text(&d.version, 64),
        api_version: text(&d.api_version, 64),
        description: text(&d.description, 4096),
        capabilities: m::DeclaredCapabilities {
            programs: c.programs.into_iter().map(program_use).collect(),
            ssh: c.ssh.into_iter().map(program_use).collect(),
            detached: c.detached.into_iter().map(program_use).collect(),
        },
    }
}

pub fn value_to_wit(v: &m::Value) -> w::Value {
    match v {
        m::Value::Boolean(b) => w::Value::Boolean(*b),
        m::Value::Integer(i) => w::Value::Integer(*i),
        m::Value::Number(n) => w::Value::Number(*n),
        m::Value::Text(s) => w::Value::Text(s.clone()),
    }
}

pub fn value_from_wit(v: w::Value) -> m::Value {
    match v {
        w::Value::Boolean(b) => m::Value::Boolean(b),
        w::Value::Integer(i) => m::Value::Integer(i),
        w::Value::Number(n) => m::Value::Number(n),
        w::Value::Text(s) => m::Value::Text(s),
    }
}

pub fn options_to_wit(o: &m::Options) -> Vec<w::FieldValue> {
    o.iter()
        .map(|(k, v)| w::FieldValue {
            field: k.clone(),
            value: value_to_wit(v),
        })
        .collect()
}

pub fn options_from_wit(o: Vec<w::FieldValue>) -> m::Options {
    o.into_iter()
        .map(|fv| (fv.field, value_from_wit(fv.value)))
        .collect()
}

pub fn form(f: w::FormSchema) -> m::FormSchema {
    m::FormSchema {
        fields: f.fields.into_iter().map(field).collect(),
        profiles: f
            .profiles
            .into_iter()
            .map(|p| m::Profile {
                id: p.id,
                label: tidy(&p.label),
                description: tidy(&p.description),
                fixed: options_from_wit(p.fixed),
                bounds: p
                    .bounds
                    .into_iter()
                    .map(|b| m::Bound {
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

fn field(f: w::Field) -> m::Field {
    m::Field {
        id: f.id,
        label: tidy(&f.label),
        help: tidy(&f.help),
        default: f.default,
        required: f.required,
        kind: match f.kind {
            w::FieldKind::Text(t) => m::FieldKind::Text {
                max_length: t.max_length,
                pattern: t.pattern,
                placeholder: t.placeholder.as_deref().map(tidy),
            },
            w::FieldKind::Integer(i) => m::FieldKind::Integer {
                min: i.min,
                max: i.max,
                step: i.step,
                unit: i.unit.as_deref().map(tidy),
            },
            w::FieldKind::Number(n) => m::FieldKind::Number {
                min: n.min,
                max: n.max,
                step: n.step,
                unit: n.unit.as_deref().map(tidy),
            },
            w::FieldKind::Choice(c) => m::FieldKind::Choice {
                choices: c
                    .into_iter()
                    .map(|c| m::Choice {
                        value: c.value,
                        label: tidy(&c.label),
                    })
                    .collect(),
            },
            w::FieldKind::Boolean => m::FieldKind::Boolean,
        },
    }
}

pub fn field_errors(e: Vec<w::FieldError>) -> Vec<m::FieldError> {
    e.into_iter()
        .take(crate::form::MAX_FIELDS)
        .map(|e| m::FieldError {
            field: text(&e.field, 64),
            message: clean(&e.message),
        })
        .collect()
}

pub fn job_spec(j: &m::JobSpec) -> w::JobSpec {
    w::JobSpec {
        spawn_id: j.spawn_id.clone(),
        user: user(&j.user),
        options: options_to_wit(&j.options),
        cmd: j.cmd.clone(),
        env_names: j.env_names.clone(),
        callback_url: j.callback_url.clone(),
        home: j.home.clone(),
    }
}

pub fn job(j: &m::Job) -> w::Job {
    w::Job {
        job_id: j.job_id.clone(),
        user: j.user.clone(),
        state: j.state.clone(),
    }
}

pub fn submitted(s: w::Submitted) -> m::Submitted {
    m::Submitted {
        job_id: s.job_id,
        state: s.state,
    }
}

pub fn job_state(s: w::JobState) -> m::JobState {
    match s {
        w::JobState::Pending(p) => m::JobState::Pending {
            reason: clean(&p.reason),
            expected_start: p.expected_start,
        },
        w::JobState::Running(r) => m::JobState::Running { host: r.host },
        w::JobState::Done(d) => m::JobState::Done {
            exit_code: d.exit_code,
            reason: clean(&d.reason),
        },
        w::JobState::Unknown(r) => m::JobState::Unknown { reason: clean(&r) },
    }
}

pub fn plugin_error(e: w::PluginError) -> m::PluginError {
    match e {
        w::PluginError::Config(s) => m::PluginError::Config(clean(&s)),
        w::PluginError::Capability(s) => m::PluginError::Capability(clean(&s)),
        w::PluginError::Scheduler(s) => m::PluginError::Scheduler(clean(&s)),
        w::PluginError::Other(s) => m::PluginError::Other(clean(&s)),
    }
}
