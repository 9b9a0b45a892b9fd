//! Starting a spawn: the request and its bounds, the job's environment,
//! and the background submit (also resumed by recovery).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::table::Entry;
use super::transitions::Event;
use super::{
    clean_call_error, clean_fields, pending_env, token, Service, ServiceError, ENV_CALLBACK_TOKEN,
    ENV_CALLBACK_URL, ENV_SPAWN_ID,
};
use crate::capability::gate::CallContext;
use crate::config::valid_env_name;
use crate::model::{JobSpec, RawOptions, Spawn, SpawnState, User};
use crate::runtime::plugin::ValidateError;
use crate::sanitize;

/// `POST /v1/spawns`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub user: User,
    #[serde(default)]
    pub server_name: String,
    pub instance: String,
    /// The hub's id for this start; a retry with the same id never makes a
    /// second job.
    pub request_id: String,
    #[serde(default)]
    pub options: RawOptions,
    /// The job's environment from the hub (JUPYTERHUB_API_TOKEN, …). Never
    /// stored, logged or put in argv.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The single-user server command and its arguments.
    pub cmd: Vec<String>,
}

/// Counts a background submit until it is dropped.
pub(super) struct InFlight(Arc<Service>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .submits
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.submits_done.notify_waiters();
    }
}

/// Longest value of one variable of a start request's `env`.
pub const MAX_ENV_VALUE: usize = 32 * 1024;

/// Most bytes of all of a start request's `env` (names, values, `=` and NUL
/// each): the job's environment and argv share the kernel's ARG_MAX (2 MiB
/// on Linux, less with a batch system's own variables), so a request is
/// refused here rather than failing at exec.
pub const MAX_ENV_TOTAL: usize = 256 * 1024;

/// Most variables in a start request's `env`.
pub const MAX_ENV_VARS: usize = 512;

/// Most arguments of `cmd`, and most bytes of all of them.
pub const MAX_CMD_ARGS: usize = 1024;

pub const MAX_CMD_TOTAL: usize = 64 * 1024;

pub(super) fn check_request(req: &StartRequest) -> Result<(), ServiceError> {
    let bad = |m: String| Err(ServiceError::BadRequest(m));
    req.user.check().or_else(bad)?;
    if req.server_name.len() > 255 || req.server_name.chars().any(char::is_control) {
        return bad("server_name: at most 255 characters, no control characters".into());
    }
    if req.request_id.is_empty()
        || req.request_id.len() > 200
        || req.request_id.chars().any(char::is_control)
    {
        return bad(
            "request_id: give 1-200 characters without control characters (e.g. a UUID)".into(),
        );
    }
    if req.cmd.is_empty() || req.cmd[0].is_empty() {
        return bad(
            "cmd: give the single-user server command, e.g. [\"jupyterhub-singleuser\"]".into(),
        );
    }
    if req.cmd.iter().any(|a| a.contains('\0')) {
        return bad("cmd: an argument has a NUL byte".into());
    }
    let cmd_total: usize = req.cmd.iter().map(|a| a.len() + 1).sum();
    if req.cmd.len() > MAX_CMD_ARGS || cmd_total > MAX_CMD_TOTAL {
        return bad(format!(
            "cmd: {} arguments, {cmd_total} bytes; at most {MAX_CMD_ARGS} arguments and {} KiB in all",
            req.cmd.len(),
            MAX_CMD_TOTAL / 1024
        ));
    }
    if req.env.len() > MAX_ENV_VARS {
        return bad(format!(
            "env: {} variables; at most {MAX_ENV_VARS}",
            req.env.len()
        ));
    }
    let env_total: usize = req.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if env_total > MAX_ENV_TOTAL {
        return bad(format!(
            "env: {env_total} bytes in all; at most {} KiB (names and values)",
            MAX_ENV_TOTAL / 1024
        ));
    }
    for (k, v) in &req.env {
        if !valid_env_name(k) {
            return bad(format!(
                "env: {k:?} is not a variable name (A-Z, a-z, 0-9, _)"
            ));
        }
        if k.starts_with("WASMSPAWNER_") {
            return bad(format!(
                "env: {k} is set by the host; the hub may not set WASMSPAWNER_* variables"
            ));
        }
        if v.contains('\0') {
            return bad(format!("env: the value of {k} has a NUL byte"));
        }
        if v.len() > MAX_ENV_VALUE {
            return bad(format!(
                "env: the value of {k} is {} bytes; at most {} KiB per variable",
                v.len(),
                MAX_ENV_VALUE / 1024
            ));
        }
    }
    Ok(())
}

impl Service {
    /// Where a job of `instance` reports its server: through the instance's
    /// callback tunnel if it has one, else to `http.public_url`.
    pub(super) fn callback_url(&self, instance: &str, id: &str) -> String {
        let base = self
            .registry
            .config
            .instances
            .get(instance)
            .and_then(|i| i.tunnel.as_ref()?.callback.as_ref())
            .map_or(self.public_url.as_str(), |c| c.url.as_str());
        format!("{base}/v1/spawns/{id}/ready")
    }

    /// Starts a spawn. Returns it and whether it was created (`false`: the
    /// same request was made before; no second job). Validation runs before
    /// this returns; the job is submitted in the background.
    pub async fn start(self: &Arc<Self>, req: StartRequest) -> Result<(Spawn, bool), ServiceError> {
        check_request(&req)?;
        let inst = self
            .registry
            .get(&req.instance)
            .cloned()
            .ok_or_else(|| ServiceError::UnknownInstance(req.instance.clone()))?;
        let fingerprint = {
            let j = serde_json::json!([req.instance, req.options, req.cmd]);
            hex::encode(Sha256::digest(j.to_string().as_bytes()))
        };
        let key = (
            req.user.name.clone(),
            req.server_name.clone(),
            req.request_id.clone(),
        );
        let id = format!("sp-{}", hex::encode(rand::random::<[u8; 12]>()));
        let now = Utc::now();
        {
            let mut inner = self.lock();
            if let Some(existing) = inner.by_request.get(&key).and_then(|i| inner.spawns.get(i)) {
                if existing.spawn.fingerprint == fingerprint {
                    return Ok((existing.spawn.clone(), false));
                }
                return Err(ServiceError::Conflict {
                    code: "request_conflict",
                    message: format!(
                        "request id {:?} was already used for spawn {} with other options or command; use a new request id for a new start",
                        req.request_id, existing.spawn.id
                    ),
                    spawn_id: existing.spawn.id.clone(),
                });
            }
            if let Some(active) = inner.spawns.values().find(|e| {
                e.spawn.user.name == req.user.name
                    && e.spawn.server_name == req.server_name
                    && !e.spawn.state.is_terminal()
            }) {
                return Err(ServiceError::Conflict {
                    code: "server_active",
                    message: format!(
                        "server {:?} of {} is already {} as spawn {}; stop it first",
                        req.server_name, req.user.name, active.spawn.state, active.spawn.id
                    ),
                    spawn_id: active.spawn.id.clone(),
                });
            }
            let spawn = Spawn {
                id: id.clone(),
                user: req.user.clone(),
                server_name: req.server_name.clone(),
                request_id: req.request_id.clone(),
                instance: req.instance.clone(),
                state: SpawnState::Validating,
                reason: None,
                progress: SpawnState::Validating.progress(),
                raw_options: req.options.clone(),
                options: None,
                cmd: req.cmd.clone(),
                env_names: Vec::new(),
                job_id: None,
                plugin_state: String::new(),
                exec_host: None,
                expected_start: None,
                queue_position: None,
                time_limit_secs: None,
                end_time: None,
                host: None,
                port: None,
                tunnel_target: None,
                exit_code: None,
                unknown_polls: 0,
                flagged: None,
                created_at: now,
                updated_at: now,
                state_since: now,
                submit_started_at: None,
                fingerprint,
            };
            self.store.save(&spawn, None)?;
            inner.by_request.insert(key.clone(), id.clone());
            inner.spawns.insert(id.clone(), Entry::new(spawn, None));
        }
        self.update(&id, |_| Some("checking the options".into()))?;

        // What the plugin says reaches the API (errors) or the store
        // (options): sanitized and bounded here.
        let validated = match inst.validate(&req.user, &req.options).await {
            // Bounded by the runtime (`runtime::plugin::MAX_OPTIONS_BYTES`).
            Ok(o) => Ok(o),
            Err(ValidateError::Fields(f)) => Err(ServiceError::InvalidOptions(clean_fields(f))),
            Err(ValidateError::Call(c)) => Err(ServiceError::Plugin(clean_call_error(c))),
        };
        let options = match validated {
            Ok(o) => o,
            Err(e) => {
                // Nothing happened: forget the request, so a corrected
                // retry may use the same request id.
                {
                    let mut inner = self.lock();
                    inner.spawns.remove(&id);
                    inner.by_request.remove(&key);
                    self.store.delete(&id)?;
                }
                return Err(e);
            }
        };

        let hub_env: Vec<(String, String)> = req.env.into_iter().collect();
        // Kept until the submit returns, so that a restart in between can
        // submit it (see `pending_env`).
        pending_env::save(&self.registry.config.state_dir, &id, &hub_env)?;
        let (env, hash) = self.job_env(&req.instance, &id, hub_env);
        let names: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
        let mut submit = false;
        let spawn = self
            .update(&id, |e| {
                e.spawn.options = Some(options);
                e.spawn.env_names = names;
                if e.spawn.state == SpawnState::Stopping {
                    e.fire(Event::StoppedBeforeSubmit).ok()?;
                    e.spawn.reason = Some("stopped before the job was submitted".into());
                    return Some("stopped before the job was submitted".into());
                }
                e.fire(Event::Validated).ok()?;
                submit = true;
                e.callback_hash = Some(hash);
                Some("options accepted; submitting the job".into())
            })?
            .ok_or_else(|| ServiceError::NotFound(id.clone()))?;
        if submit {
            self.submits
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let guard = InFlight(self.clone());
            let me = self.clone();
            tokio::spawn(async move {
                let _guard = guard;
                me.submit_job(id, env).await
            });
        }
        Ok((spawn, true))
    }

    /// The job's environment: the hub's variables and the host's
    /// (callback URL, a fresh callback token, the spawn id); and the
    /// token's hash.
    pub(super) fn job_env(
        &self,
        instance: &str,
        id: &str,
        mut env: Vec<(String, String)>,
    ) -> (Vec<(String, String)>, String) {
        let (tok, hash) = token::new_token();
        env.push((ENV_CALLBACK_URL.into(), self.callback_url(instance, id)));
        env.push((ENV_CALLBACK_TOKEN.into(), tok));
        env.push((ENV_SPAWN_ID.into(), id.to_string()));
        (env, hash)
    }

    /// Submits again, after a restart, the spawns recovery found provably
    /// without a job (`recovery`), with the hub's environment kept for them
    /// and a fresh callback token.
    pub(super) fn resume_submits(self: &Arc<Self>) {
        let ids = std::mem::take(&mut self.lock().resubmit);
        for id in ids {
            let Ok(spawn) = self.get(&id) else { continue };
            let Some(hub_env) = pending_env::load(&self.registry.config.state_dir, &id) else {
                continue;
            };
            let (env, hash) = self.job_env(&spawn.instance, &id, hub_env);
            let r = self.update(&id, |e| {
                e.callback_hash = Some(hash);
                e.spawn.submit_started_at = None;
                Some("the host restarted before the job was submitted; submitting it now".into())
            });
            if let Err(e) = r {
                tracing::error!(spawn_id = %id, "cannot record the new submit: {e:#}");
                continue;
            }
            self.submits
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let guard = InFlight(self.clone());
            let me = self.clone();
            tokio::spawn(async move {
                let _guard = guard;
                me.submit_job(id, env).await
            });
        }
    }

    /// Submits the job of a spawn in `submitting` (its state was persisted
    /// before this runs). Audit before act: `submit_started_at` is stored
    /// before the plugin is called, so that recovery tells a submit that
    /// never started (submitted again) from one that may have made a job
    /// (asked through `find_jobs`).
    pub(super) async fn submit_job(self: Arc<Self>, id: String, env: Vec<(String, String)>) {
        let Ok(spawn) = self.get(&id) else { return };
        if spawn.state == SpawnState::Stopping {
            let _ = self.update(&id, |e| {
                e.fire(Event::StoppedBeforeSubmit).ok()?;
                e.callback_hash = None;
                e.spawn.reason = Some("stopped before the job was submitted".into());
                Some("stopped before the job was submitted".into())
            });
            return;
        }
        let Some(inst) = self.registry.get(&spawn.instance).cloned() else {
            return;
        };
        let started = self.update(&id, |e| match e.spawn.state {
            SpawnState::Submitting => {
                e.spawn.submit_started_at = Some(Utc::now());
                None
            }
            SpawnState::Stopping => {
                e.fire(Event::StoppedBeforeSubmit).ok()?;
                e.callback_hash = None;
                e.spawn.reason = Some("stopped before the job was submitted".into());
                Some("stopped before the job was submitted".into())
            }
            _ => None,
        });
        match started {
            Ok(Some(s)) if s.state == SpawnState::Submitting && s.submit_started_at.is_some() => {}
            Ok(_) => return,
            Err(e) => {
                tracing::error!(spawn_id = %id, "cannot record the submit's start; not submitting: {e:#}");
                return;
            }
        }
        let user = spawn.user.name.clone();
        // A job on a submit host runs as ssh.user there: its home comes from
        // the config (ssh.home), never from this machine's accounts.
        let home = match crate::ssh_cmd::remote_home(&inst.config, &user) {
            crate::ssh_cmd::JobHome::Remote(h) => h,
            crate::ssh_cmd::JobHome::Local => {
                tokio::task::spawn_blocking(move || crate::users::home_of(&user))
                    .await
                    .ok()
                    .flatten()
            }
        };
        let job = JobSpec {
            spawn_id: id.clone(),
            user: spawn.user.clone(),
            options: spawn.options.clone().unwrap_or_default(),
            cmd: spawn.cmd.clone(),
            env_names: spawn.env_names.clone(),
            callback_url: self.callback_url(&spawn.instance, &id),
            home,
        };
        let ctx = CallContext {
            spawn_id: Some(id.clone()),
            user: Some(spawn.user.name.clone()),
            spawn_env: Arc::new(env),
            ..Default::default()
        };
        let result = inst
            .submit(ctx, &job)
            .await
            // Job id and state are checked by the runtime (`check_submitted`).
            .map_err(|e| sanitize::reason(&e.to_string()));
        let mut cancel = false;
        let r = self.update(&id, |e| match result {
            Ok(sub) => {
                e.spawn.job_id = Some(sub.job_id.clone());
                e.spawn.plugin_state = sub.state;
                if e.spawn.state == SpawnState::Stopping {
                    e.fire(Event::Submitted).ok()?;
                    e.cancel_due = true;
                    cancel = true;
                    Some(format!(
                        "job {} submitted while a stop was requested; cancelling it",
                        sub.job_id
                    ))
                } else {
                    e.fire(Event::Submitted).ok()?;
                    e.spawn.reason = Some("submitted".into());
                    Some(format!("job {} submitted", sub.job_id))
                }
            }
            Err(err) => {
                e.callback_hash = None;
                e.fire(Event::SubmitFailed).ok()?;
                let m = format!("the job could not be submitted: {err}");
                e.spawn.reason = Some(m.clone());
                Some(m)
            }
        });
        if let Err(e) = r {
            tracing::error!(spawn_id = %id, "cannot record the submitted job: {e:#}");
        }
        // Only once the job id is stored: a crash before that finds the
        // environment and can submit again (after `find_jobs`).
        pending_env::remove(&self.registry.config.state_dir, &id);
        if cancel {
            // Not awaited: a failing cancel backs off for minutes, and a
            // shutdown waits for this submit.
            tokio::spawn(self.clone().cancel_job(id.clone()));
        }
        self.wake(&spawn.instance);
    }
}
