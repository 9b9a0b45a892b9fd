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
    let mut caps = m::DeclaredCapabilities::default();
    for c in d.capabilities {
        match c {
            w::Capability::Program(p) => caps.programs.push(program_use(p)),
            w::Capability::Ssh(p) => caps.ssh.push(program_use(p)),
            w::Capability::Detached(p) => caps.detached.push(program_use(p)),
        }
    }
    m::Descriptor {
        name: text(&d.name, 128),
        version: text(&d.version, 64),
        api_version: text(&d.api_version, 64),
        description: text(&d.description, 4096),
        capabilities: caps,
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

/// Most details kept per job, and their name and value budgets.
pub const MAX_DETAILS: usize = 16;

fn details(d: Vec<w::Detail>) -> Vec<(String, String)> {
    d.into_iter()
        .filter(|d| {
            d.name.len() <= 32
                && d.name
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase())
                && d.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        .take(MAX_DETAILS)
        .map(|d| (d.name, text(&d.value, 256)))
        .collect()
}

pub fn job_report(s: w::JobState) -> m::JobReport {
    let mut facts = m::JobFacts::default();
    let state = match s {
        w::JobState::Pending(p) => {
            facts.queue_position = p.queue_position;
            facts.time_limit_secs = p.time_limit.limit_secs;
            facts.ends_at = p.time_limit.ends_at;
            facts.details = details(p.details);
            m::JobState::Pending {
                reason: clean(&p.reason),
                expected_start: p.expected_start,
            }
        }
        w::JobState::Running(r) => {
            facts.started_at = r.started_at;
            facts.time_limit_secs = r.time_limit.limit_secs;
            facts.ends_at = r.time_limit.ends_at;
            facts.details = details(r.details);
            m::JobState::Running { host: r.host }
        }
        w::JobState::Done(d) => m::JobState::Done {
            exit_code: d.exit_code,
            reason: clean(&d.reason),
        },
        w::JobState::Unknown(r) => m::JobState::Unknown { reason: clean(&r) },
    };
    m::JobReport { state, facts }
}

pub fn spawn_ref(r: &m::SpawnRef) -> w::SpawnRef {
    w::SpawnRef {
        spawn_id: r.spawn_id.clone(),
        user: r.user.clone(),
    }
}

pub fn found_job(f: w::FoundJob) -> m::FoundJob {
    m::FoundJob {
        spawn_id: f.spawn_id,
        job_id: f.job_id,
        state: f.state,
    }
}

pub fn plugin_error(e: w::PluginError) -> m::PluginError {
    match e {
        w::PluginError::Config(s) => m::PluginError::Config(clean(&s)),
        w::PluginError::Capability(s) => m::PluginError::Capability(clean(&s)),
        w::PluginError::Scheduler(s) => m::PluginError::Scheduler(clean(&s)),
        w::PluginError::Other(s) => m::PluginError::Other(clean(&s)),
        w::PluginError::Unsupported(s) => {
            m::PluginError::Other(clean(&format!("unsupported: {s}")))
        }
    }
}
