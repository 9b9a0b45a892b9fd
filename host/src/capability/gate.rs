//! The one gate every capability call passes through.
//!
//! A call is allowed only when it is inside what the plugin *declared* (in
//! its component's `describe`) **and** what the operator *granted* (in the
//! instance's config). The gate resolves the program to an absolute path,
//! builds the child's environment from scratch, applies the operator's run-as
//! prefix, caps the timeout and output, and writes an audit record for every
//! decision. Capability modules never run anything the gate did not permit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::audit::{AuditLog, AuditRecord};
use super::env::{child_env, EnvRequest};
use crate::config::{EnvGrant, Identity, InstanceConfig, Limits, Phase, ProgramGrant, SshConfig};
use crate::model::{DeclaredCapabilities, ProgramUse};

/// Which capability a program call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Run,
    Detached,
    Ssh,
}

impl Kind {
    pub fn audit_name(self) -> &'static str {
        match self {
            Kind::Run => "process.run",
            Kind::Detached => "detached.start",
            Kind::Ssh => "ssh.run",
        }
    }
    fn grant_key(self) -> &'static str {
        match self {
            Kind::Run => "grants.programs",
            Kind::Detached => "grants.detached",
            Kind::Ssh => "grants.ssh",
        }
    }
    fn declared(self, d: &DeclaredCapabilities) -> &[ProgramUse] {
        match self {
            Kind::Run => &d.programs,
            Kind::Detached => &d.detached,
            Kind::Ssh => &d.ssh,
        }
    }
}

/// Who a plugin call is made for, in which phase, until when; set by the
/// host, never by the plugin.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The export being called; `None` while loading (`describe`), when
    /// nothing is allowed.
    pub phase: Option<Phase>,
    pub spawn_id: Option<String>,
    /// The hub user, for calls made for one user (form, validate, submit,
    /// cancel). A grant that runs as the user can run only then.
    pub user: Option<String>,
    /// The spawn's environment (hub token, callback token, …), injected only
    /// into commands declared and granted with `spawn_env`.
    pub spawn_env: Arc<Vec<(String, String)>>,
    /// The call's hard end: program timeouts are cut to the time left.
    pub deadline: Option<Instant>,
    /// Programs started in this call so far (shared by the call's clones).
    pub runs: Arc<std::sync::atomic::AtomicU32>,
}

impl CallContext {
    /// A call of `phase` for `user` (if the phase is made for one user).
    pub fn new(phase: Phase, user: Option<&str>) -> CallContext {
        CallContext {
            phase: Some(phase),
            user: user.map(str::to_string),
            ..Default::default()
        }
    }
}

/// A program call as the plugin asked for it.
#[derive(Debug, Clone)]
pub struct ProgramRequest<'a> {
    pub kind: Kind,
    pub program: &'a str,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub spawn_env: bool,
    pub timeout_ms: u32,
    /// For `ssh.run`: the host the plugin named.
    pub ssh_host: Option<&'a str>,
}

/// Why the gate said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    Denied(String),
    NotFound(String),
}

impl From<Denial> for crate::runtime::bindings::process::RunError {
    fn from(d: Denial) -> Self {
        match d {
            Denial::Denied(m) => Self::Denied(m),
            Denial::NotFound(m) => Self::NotFound(m),
        }
    }
}

/// A grant with its program and identity resolved at load time.
#[derive(Debug, Clone)]
pub struct ResolvedGrant {
    pub grant: ProgramGrant,
    /// Where it is in the config, e.g. `grants.programs[2]`.
    pub key: String,
    /// For SSH grants: the host globs.
    pub hosts: Vec<String>,
    /// The absolute path, or why it could not be found.
    pub path: Result<PathBuf, String>,
    /// As whom it runs.
    pub identity: Identity,
}

impl ResolvedGrant {
    /// Whether a call of `phase` may use this grant: the phase is listed,
    /// and a grant that runs as the user is only usable where a call is
    /// made for one user.
    pub fn usable_in(&self, phase: Phase) -> bool {
        self.grant.phases.contains(&phase) && (phase.has_user() || self.identity == Identity::Host)
    }
}

/// The gate of one loaded plugin version in one instance.
pub struct Gate {
    instance: String,
    config_file: String,
    digest: String,
    plugin: String,
    declared: DeclaredCapabilities,
    programs: Vec<ResolvedGrant>,
    detached: Vec<ResolvedGrant>,
    ssh_grants: Vec<ResolvedGrant>,
    env: Vec<EnvGrant>,
    limits: Limits,
    run_rate: RunRate,
    log_rate: super::log::LogRate,
    audit: Arc<AuditLog>,
    ssh: Option<SshConfig>,
    submit_host: Option<String>,
    ssh_control_dir: PathBuf,
}

/// Permission to run one program, as the gate shaped it. Finish it with the
/// outcome; dropping it unfinished records the call as abandoned.
pub struct Permit {
    /// What is executed: `argv[0]` is an absolute path.
    pub argv: Vec<String>,
    /// The child's whole environment.
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub output_cap: usize,
    /// Written to the child's stdin before the plugin's (the environment
    /// block of an SSH call).
    pub stdin_prefix: Vec<u8>,
    /// The program runs on another host over SSH.
    pub remote: bool,
    record: Option<AuditRecord>,
    started: Instant,
    audit: Arc<AuditLog>,
}

impl Permit {
    /// Records how the call ended.
    pub fn finish(mut self, exit_code: Option<i32>, failure: Option<String>) {
        if let Some(mut r) = self.record.take() {
            r.event = "end";
            r.exit_code = exit_code;
            r.reason = failure;
            r.duration_ms = Some(self.started.elapsed().as_millis() as u64);
            self.audit.write(r);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.event = "end";
            r.reason = Some("abandoned: the plugin call ended before the program".into());
            r.duration_ms = Some(self.started.elapsed().as_millis() as u64);
            self.audit.write(r);
        }
    }
}

impl Gate {
    pub fn new(
        inst: &InstanceConfig,
        config_file: &Path,
        state_dir: &Path,
        digest: &str,
        plugin: &str,
        declared: DeclaredCapabilities,
        audit: Arc<AuditLog>,
    ) -> Gate {
        let resolve = |key: &str, i: usize, g: &ProgramGrant| {
            // The operator's executable for this program, if it names one.
            let target = match &g.path {
                Some(p) => p.display().to_string(),
                None => g.program.clone(),
            };
            ResolvedGrant {
                grant: g.clone(),
                key: format!("{key}[{i}]"),
                identity: Identity::of(g.run_as.as_ref(), &inst.run_as),
                hosts: vec![],
                // A submit host's programs are found by its own PATH.
                path: if inst.submit_host.is_some() {
                    Ok(PathBuf::from(target))
                } else {
                    resolve_program(&target, &inst.search_path)
                },
            }
        };
        let ssh_grants = inst
            .grants
            .ssh
            .iter()
            .enumerate()
            .map(|(i, g)| ResolvedGrant {
                grant: ProgramGrant {
                    program: g.program.clone(),
                    args: g.args.clone(),
                    spawn_env: g.spawn_env,
                    path: None,
                    phases: g.phases.clone(),
                    run_as: g.run_as.clone(),
                },
                key: format!("grants.ssh[{i}]"),
                identity: Identity::of(g.run_as.as_ref(), &inst.run_as),
                hosts: g.hosts.clone(),
                path: Ok(PathBuf::from(&g.program)),
            })
            .collect();
        Gate {
            instance: inst.name.clone(),
            config_file: config_file.display().to_string(),
            digest: digest.to_string(),
            plugin: plugin.to_string(),
            declared,
            programs: (inst.grants.programs.iter().enumerate())
                .map(|(i, g)| resolve("grants.programs", i, g))
                .collect(),
            detached: (inst.grants.detached.iter().enumerate())
                .map(|(i, g)| resolve("grants.detached", i, g))
                .collect(),
            ssh_grants,
            env: inst.grants.env.clone(),
            limits: inst.limits.clone(),
            run_rate: RunRate::new(inst.limits.max_runs_per_minute),
            log_rate: super::log::LogRate::new(inst.limits.log_lines_per_10s),
            audit,
            ssh: inst.ssh.clone(),
            submit_host: inst.submit_host.clone(),
            ssh_control_dir: state_dir.join("ssh"),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn declared(&self) -> &DeclaredCapabilities {
        &self.declared
    }

    /// The resolved grants of a kind (for `check` and `audit`).
    pub fn grants(&self, kind: Kind) -> &[ResolvedGrant] {
        match kind {
            Kind::Run => &self.programs,
            Kind::Detached => &self.detached,
            Kind::Ssh => &self.ssh_grants,
        }
    }

    fn record(&self, call: &CallContext, capability: &'static str, program: &str) -> AuditRecord {
        AuditRecord {
            instance: self.instance.clone(),
            digest: self.digest.clone(),
            phase: call.phase.map_or("describe", Phase::name),
            spawn_id: call.spawn_id.clone(),
            user: call.user.clone(),
            capability,
            program: program.to_string(),
            ..Default::default()
        }
    }

    fn deny(
        &self,
        mut record: AuditRecord,
        argv: &[&str],
        call: &CallContext,
        d: Denial,
    ) -> Denial {
        record.decision = "deny";
        record.argv = redact(argv, &call.spawn_env);
        record.reason = Some(match &d {
            Denial::Denied(m) | Denial::NotFound(m) => m.clone(),
        });
        self.audit.write(record);
        d
    }

    /// Checks a program call and shapes it into a [`Permit`].
    pub fn authorize(
        &self,
        call: &CallContext,
        req: &ProgramRequest<'_>,
    ) -> Result<Permit, Denial> {
        let record = self.record(call, req.kind.audit_name(), req.program);
        // Every request counts against the call's budget, allowed or not.
        let attempts = call.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let decided = if attempts >= self.limits.max_runs_per_call {
            Err(Denial::Denied(format!(
                "the {} call already asked for {attempts} programs, the limit of instance `{}` (limits.max_runs_per_call in {})",
                call.phase.map_or("describe", Phase::name),
                self.instance,
                self.config_file
            )))
        } else {
            self.decide(call, req)
        };
        match decided {
            Ok(shaped) => {
                let mut record = record;
                record.decision = "allow";
                record.event = "start";
                record.identity = Some(shaped.identity);
                record.argv = redact(&shaped.argv, &call.spawn_env);
                record.env = shaped.env_names;
                // Audit before act: the start is on file before the program runs.
                self.audit.write(record.clone());
                Ok(Permit {
                    argv: shaped.argv,
                    env: shaped.env,
                    timeout: shaped.timeout,
                    output_cap: self.limits.output_bytes,
                    stdin_prefix: shaped.stdin_prefix,
                    remote: shaped.remote,
                    record: Some(record),
                    started: Instant::now(),
                    audit: self.audit.clone(),
                })
            }
            Err(d) => {
                let asked: Vec<&str> = std::iter::once(req.program)
                    .chain(req.args.iter().map(String::as_str))
                    .collect();
                Err(self.deny(record, &asked, call, d))
            }
        }
    }

    fn decide(&self, call: &CallContext, req: &ProgramRequest<'_>) -> Result<Shaped, Denial> {
        let denied = |m: String| Err(Denial::Denied(m));
        let Some(phase) = call.phase else {
            return denied(format!(
                "plugin {} may not run programs while it is being loaded (describe)",
                self.plugin
            ));
        };
        let remaining = match call.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => self.limits.call_timeout,
        };
        if remaining < MIN_RUN_TIME {
            return denied(format!(
                "the {phase} call has {} ms left before its deadline (limits.call_timeout_secs = {}); no program is started",
                remaining.as_millis(),
                self.limits.call_timeout.as_secs_f64()
            ));
        }
        if !self.run_rate.admit() {
            return denied(format!(
                "instance `{}` started more than {} programs in the last minute (limits.max_runs_per_minute in {}); try again later",
                self.instance, self.limits.max_runs_per_minute, self.config_file
            ));
        }
        if req.program.is_empty() || req.program.contains('\0') {
            return denied("the program name is empty or has a NUL byte".into());
        }
        if req.program.contains('/') && !req.program.starts_with('/') {
            return denied(format!(
                "program {:?}: give a bare name or an absolute path",
                req.program
            ));
        }
        if let Some((i, _)) = req.args.iter().enumerate().find(|(_, a)| a.contains('\0')) {
            return denied(format!("argument {} has a NUL byte", i + 1));
        }
        // Secrets travel in the environment only, never in argv.
        for (name, value) in call.spawn_env.iter() {
            if value.len() >= 8 && req.args.iter().any(|a| a.contains(value.as_str())) {
                return denied(format!(
                    "an argument contains the value of the spawn variable {name}; secrets may only travel in the environment"
                ));
            }
        }

        let declared = req.kind.declared(&self.declared);
        let fits = |u: &ProgramUse| {
            (u.program == "*" || u.program == req.program)
                && wasmspawner_argpattern::matches(&u.args, req.args)
                && (u.spawn_env || !req.spawn_env)
        };
        if !declared.iter().any(fits) {
            let names: Vec<&str> = declared.iter().map(|u| u.program.as_str()).collect();
            return denied(format!(
                "`{}` is outside what plugin {} declared for {} (declared: {}); the plugin must declare it in describe()",
                display_argv(req.program, req.args),
                self.plugin,
                req.kind.audit_name(),
                if names.is_empty() { "nothing".into() } else { names.join(", ") }
            ));
        }

        let grants = self.grants(req.kind);
        let ssh_host = match (req.kind, req.ssh_host) {
            (Kind::Ssh, Some(h)) => {
                crate::ssh_cmd::check_host(h).map_err(Denial::Denied)?;
                Some(h)
            }
            (Kind::Ssh, None) => return denied("an SSH call names no host".into()),
            _ => None,
        };
        let same_program: Vec<&ResolvedGrant> = grants
            .iter()
            .filter(|g| g.grant.program == req.program)
            .filter(|g| {
                ssh_host.is_none_or(|h| g.hosts.iter().any(|p| wasmspawner_argpattern::glob(p, h)))
            })
            .collect();
        if let (Some(h), true) = (ssh_host, same_program.is_empty()) {
            return denied(format!(
                "`{}` on host {h:?} is not granted to instance `{}`; an operator may add it under [[instances.{}.grants.ssh]] (hosts, program, args) in {}",
                req.program, self.instance, self.instance, self.config_file
            ));
        }
        if same_program.is_empty() {
            return denied(format!(
                "program `{}` is not granted to instance `{}`; an operator may add it under [[instances.{}.{}]] in {}",
                req.program,
                self.instance,
                self.instance,
                req.kind.grant_key(),
                self.config_file
            ));
        }
        let fitting: Vec<&ResolvedGrant> = same_program
            .iter()
            .copied()
            .filter(|g| wasmspawner_argpattern::matches(&g.grant.args, req.args))
            .collect();
        if let (false, None) = (
            fitting.is_empty(),
            fitting.iter().find(|g| g.usable_in(phase)),
        ) {
            let g = fitting[0];
            return denied(if g.grant.phases.contains(&phase) {
                format!(
                    "`{}` runs {} by {} of instance `{}`, and a {phase} call is not made for one user; an operator may add a grant for {phase} with run_as = \"host\" in {}",
                    req.program,
                    g.identity.describe(),
                    g.key,
                    self.instance,
                    self.config_file
                )
            } else {
                format!(
                    "`{}` is granted to instance `{}` only for {} ({}.phases in {}); a {phase} call may not run it",
                    req.program,
                    self.instance,
                    crate::config::phase_list(&g.grant.phases),
                    g.key,
                    self.config_file
                )
            });
        }
        let Some(grant) = fitting.into_iter().find(|g| g.usable_in(phase)) else {
            return denied(format!(
                "`{}` does not match the granted argument patterns of `{}` ({}) in [instances.{}] of {}",
                display_argv(req.program, req.args),
                req.program,
                same_program
                    .iter()
                    .map(|g| format!("[{}]", g.grant.args.join(" ")))
                    .collect::<Vec<_>>()
                    .join(" or "),
                self.instance,
                self.config_file
            ));
        };
        if req.spawn_env && !grant.grant.spawn_env {
            return denied(format!(
                "`{}` may not receive the spawn's environment: its grant in [instances.{}] has no spawn_env = true",
                req.program, self.instance
            ));
        }
        let path = match &grant.path {
            Ok(p) => p.clone(),
            Err(why) => return Err(Denial::NotFound(why.clone())),
        };

        let env = child_env(&EnvRequest {
            grants: &self.env,
            requested: req.env,
            spawn_env: if req.spawn_env {
                Some(&call.spawn_env)
            } else {
                None
            },
            instance: &self.instance,
        })
        .map_err(Denial::Denied)?;

        let mut argv = Vec::with_capacity(8 + req.args.len());
        if let Identity::User(prefix) = &grant.identity {
            let Some(user) = call.user.as_deref() else {
                return denied(format!(
                    "`{}` runs as the hub user ({}), but this {phase} call is made for no user",
                    req.program, grant.key
                ));
            };
            argv.extend(prefix.iter().map(|a| a.replace("{user}", user)));
        }
        argv.push(path.display().to_string());
        argv.extend(req.args.iter().cloned());

        // Never past the call's own deadline.
        let timeout = match req.timeout_ms {
            0 => self.limits.command_timeout,
            ms => Duration::from_millis(ms as u64),
        }
        .min(self.limits.call_timeout)
        .min(remaining);
        let identity = match grant.identity {
            Identity::Host => "host",
            Identity::User(_) => "user",
        };
        let env_names = env.iter().map(|(k, _)| k.clone()).collect();

        // Over SSH: to the host the plugin named, or to the submit host.
        let remote_host = match req.kind {
            Kind::Ssh => ssh_host.map(str::to_string),
            Kind::Run => self.submit_host.clone(),
            Kind::Detached => None,
        };
        if let Some(host) = remote_host {
            let cfg = self.ssh.as_ref().ok_or_else(|| {
                Denial::Denied(format!(
                    "instance `{}` has no [instances.{}.ssh] settings",
                    self.instance, self.instance
                ))
            })?;
            let user =
                crate::ssh_cmd::remote_user(cfg, call.user.as_deref()).map_err(Denial::Denied)?;
            let (ssh_argv, prefix) = crate::ssh_cmd::wrap(
                cfg,
                &self.ssh_control_dir,
                &host,
                user.as_deref(),
                &argv,
                &env,
            );
            return Ok(Shaped {
                identity,
                argv: ssh_argv,
                env: vec![],
                env_names,
                timeout,
                stdin_prefix: prefix,
                remote: true,
            });
        }
        Ok(Shaped {
            identity,
            argv,
            env,
            env_names,
            timeout,
            stdin_prefix: vec![],
            remote: false,
        })
    }

    /// Records a signal sent to a detached process (the handle was checked
    /// by the detached registry).
    pub fn audit_signal(&self, call: &CallContext, handle: &str, outcome: Result<(), String>) {
        let mut r = self.record(call, "detached.signal", handle);
        match outcome {
            Ok(()) => r.decision = "allow",
            Err(e) => {
                r.decision = "deny";
                r.reason = Some(e);
            }
        }
        self.audit.write(r);
    }

    /// Signals to detached processes: only in the phases a detached grant
    /// lists, and in `cancel`.
    pub fn check_signal_phase(&self, call: &CallContext) -> Result<(), String> {
        match call.phase {
            Some(p) if p == Phase::Cancel || self.detached.iter().any(|g| g.grant.phases.contains(&p)) => Ok(()),
            p => Err(format!(
                "instance `{}` may not signal detached processes from {} (only from cancel and the phases of its grants.detached)",
                self.instance,
                p.map_or("describe", Phase::name)
            )),
        }
    }

    /// Detached-process queries need a detached declaration.
    pub fn check_detached_declared(&self) -> Result<(), String> {
        if self.declared.detached.is_empty() {
            Err(format!(
                "plugin {} did not declare detached processes",
                self.plugin
            ))
        } else {
            Ok(())
        }
    }

    /// Logging: sanitised and capped at 4 KiB; `None` when the instance
    /// is over its log rate (`limits.log_lines_per_10s`).
    pub fn log_message(&self, message: &str) -> Option<String> {
        if let Some(dropped) = self.log_rate.admit() {
            if dropped > 0 {
                tracing::warn!(instance = %self.instance, "{dropped} plugin log lines dropped (over limits.log_lines_per_10s = {})", self.limits.log_lines_per_10s);
            }
            Some(crate::sanitize::text(message, 4096))
        } else {
            None
        }
    }
}

/// A program is not started with less than this left of its call.
const MIN_RUN_TIME: Duration = Duration::from_millis(50);

/// A sliding one-minute count of program starts of one instance version.
#[derive(Debug)]
pub struct RunRate {
    max: u32,
    starts: std::sync::Mutex<std::collections::VecDeque<Instant>>,
}

impl RunRate {
    pub fn new(max: u32) -> RunRate {
        RunRate {
            max,
            starts: Default::default(),
        }
    }

    /// Counts a start if fewer than `max` happened in the last minute.
    pub fn admit(&self) -> bool {
        let now = Instant::now();
        let mut q = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            q.pop_front();
        }
        if q.len() as u32 >= self.max {
            return false;
        }
        q.push_back(now);
        true
    }
}

/// A permitted call, shaped for execution.
struct Shaped {
    identity: &'static str,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// The variables the program receives (locally or on the remote side).
    env_names: Vec<String>,
    timeout: Duration,
    stdin_prefix: Vec<u8>,
    remote: bool,
}

/// Finds a program: an absolute path as is (must exist), a bare name in the
/// search path.
pub fn resolve_program(program: &str, search_path: &[PathBuf]) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.starts_with('/') {
        let p = PathBuf::from(program);
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(format!("{program} does not exist or is not executable"))
        };
    }
    search_path
        .iter()
        .map(|d| d.join(program))
        .find(|p| is_exec(p))
        .ok_or_else(|| {
            format!(
                "`{program}` is not in the instance's search_path ({})",
                search_path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            )
        })
}

fn display_argv(program: &str, args: &[String]) -> String {
    let mut s = crate::sanitize::text(program, 300);
    for a in args {
        if s.len() > 300 {
            break;
        }
        let a = if a.len() > 300 {
            &a[..a.floor_char_boundary(300)]
        } else {
            a.as_str()
        };
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c.is_control()) {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(a);
        }
    }
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// argv for an audit record: spawn secrets replaced with
/// `<redacted:NAME>` (before anything is cut), then bounded.
fn redact<S: AsRef<str>>(argv: &[S], spawn_env: &[(String, String)]) -> Vec<String> {
    super::audit::bounded_argv_with(argv, |a| {
        let mut out: Option<String> = None;
        for (name, value) in spawn_env {
            let cur = out.as_deref().unwrap_or(a);
            if value.len() >= 8 && cur.contains(value.as_str()) {
                out = Some(cur.replace(value.as_str(), &format!("<redacted:{name}>")));
            }
        }
        out
    })
}
