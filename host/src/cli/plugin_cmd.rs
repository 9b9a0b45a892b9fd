//! `wasmspawner plugin …`: one export, real capabilities, JSON out.
//!
//! Exit codes: 0 success; 1 the plugin or the host failed (message on
//! stderr); 2 the options were refused (`{"errors": [...]}` on stdout).

use std::sync::Arc;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{PluginCommand, Target, UserArgs};
use crate::capability::gate::CallContext;
use crate::config::Config;
use crate::model::{FieldError, Job, JobSpec, RawOptions, User};
use crate::registry::Registry;
use crate::runtime::plugin::{PluginInstance, ValidateError};
use crate::runtime::Runtime;

async fn open(target: &Target) -> Result<Arc<PluginInstance>> {
    let config = Config::load(&target.config)?;
    config.instance(&target.plugin)?;
    let runtime = Runtime::for_config(&config)?;
    let registry =
        Registry::load_only(runtime, config, Some(std::slice::from_ref(&target.plugin))).await?;
    Ok(registry.get(&target.plugin).expect("loaded").clone())
}

fn user(u: &UserArgs) -> Result<User> {
    let user = User {
        name: u.user.clone(),
        groups: u.groups.clone(),
        admin: u.admin,
    };
    user.check().map_err(anyhow::Error::msg)?;
    Ok(user)
}

fn raw_options(pairs: &[String]) -> Result<RawOptions> {
    let mut raw = RawOptions::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--option {p:?}: expected FIELD=VALUE");
        };
        raw.entry(k.to_string()).or_default().push(v.to_string());
    }
    Ok(raw)
}

fn print<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[derive(Serialize)]
struct Errors<'a> {
    errors: &'a [FieldError],
}

pub async fn run(cmd: PluginCommand) -> Result<i32> {
    match cmd {
        PluginCommand::Form { target, user: u } => {
            let inst = open(&target).await?;
            print(&inst.form(&user(&u)?).await?)?;
        }
        PluginCommand::Validate {
            target,
            user: u,
            options,
        } => {
            let inst = open(&target).await?;
            match inst.validate(&user(&u)?, &raw_options(&options)?).await {
                Ok(o) => print(&o)?,
                Err(ValidateError::Fields(errors)) => {
                    print(&Errors { errors: &errors })?;
                    return Ok(2);
                }
                Err(ValidateError::Call(e)) => return Err(e.into()),
            }
        }
        PluginCommand::Submit {
            target,
            user: u,
            options,
            spawn_id,
            callback_url,
            env,
            cmd,
        } => {
            let inst = open(&target).await?;
            let user = user(&u)?;
            let options = match inst.validate(&user, &raw_options(&options)?).await {
                Ok(o) => o,
                Err(ValidateError::Fields(errors)) => {
                    print(&Errors { errors: &errors })?;
                    return Ok(2);
                }
                Err(ValidateError::Call(e)) => return Err(e.into()),
            };
            let mut spawn_env = Vec::new();
            for name in &env {
                match std::env::var(name) {
                    Ok(v) => spawn_env.push((name.clone(), v)),
                    Err(_) => bail!("--env {name}: the variable is not set in this environment"),
                }
            }
            let job = JobSpec {
                spawn_id: spawn_id.clone(),
                home: crate::users::home_of(&user.name),
                user: user.clone(),
                options,
                cmd,
                env_names: env.clone(),
                callback_url,
            };
            let ctx = CallContext {
                spawn_id: Some(spawn_id),
                user: Some(user.name.clone()),
                spawn_env: Arc::new(spawn_env),
                ..Default::default()
            };
            print(&inst.submit(ctx, &job).await?)?;
        }
        PluginCommand::Status {
            target,
            user,
            job_states,
            job_ids,
        } => {
            crate::model::check_user_name(&user).map_err(anyhow::Error::msg)?;
            let inst = open(&target).await?;
            let mut states = std::collections::HashMap::new();
            for js in &job_states {
                let Some((id, st)) = js.split_once('=') else {
                    bail!("--job-state {js:?}: expected JOB_ID=STATE");
                };
                states.insert(id.to_string(), st.to_string());
            }
            let jobs: Vec<Job> = job_ids
                .iter()
                .map(|id| Job {
                    job_id: id.clone(),
                    user: user.clone(),
                    state: states.get(id).cloned().unwrap_or_default(),
                })
                .collect();
            let result = inst.status_reports(&jobs).await?;
            let out: Vec<serde_json::Value> = jobs
                .iter()
                .zip(result)
                .map(|(j, r)| {
                    // The state, and beside it what the plugin said more
                    // (queue position, time limit, end: API 0.2).
                    let mut v = serde_json::to_value(r.state).expect("serializable");
                    if let (Some(o), serde_json::Value::Object(f)) = (
                        v.as_object_mut(),
                        serde_json::to_value(r.facts).expect("serializable"),
                    ) {
                        o.extend(f);
                    }
                    v["job_id"] = j.job_id.clone().into();
                    v
                })
                .collect();
            print(&out)?;
        }
        PluginCommand::Cancel {
            target,
            user,
            job_state,
            job_id,
        } => {
            crate::model::check_user_name(&user).map_err(anyhow::Error::msg)?;
            let inst = open(&target).await?;
            let job = Job {
                job_id: job_id.clone(),
                user: user.clone(),
                state: job_state,
            };
            let ctx = CallContext {
                spawn_id: None,
                user: Some(user),
                ..Default::default()
            };
            inst.cancel(ctx, &job).await?;
            print(&serde_json::json!({ "job_id": job_id, "cancelled": true }))?;
        }
    }
    Ok(0)
}
