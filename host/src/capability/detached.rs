//! `detached.*`: long-running local processes (the `local` plugin's servers).
//!
//! A process starts in its own session, with the gate's environment and its
//! output in a log file the host chooses (`<state>/logs/<instance>/`). The
//! plugin gets an opaque handle `PID.START.MAC`: START is the process's start
//! time in clock ticks since boot (from `/proc`), so a reused PID is never
//! mistaken for the server, and MAC is an HMAC over instance, PID and START
//! with a key kept in the state directory, so a plugin can only query or
//! signal processes this host started for that same instance — also after a
//! host restart.
//!
//! Every start is *contained* ([`super::contain`]): the process and
//! everything it starts — double-forked, `setsid` or not — are one unit, in
//! a cgroup v2 of its own or, where the host may not make one, tracked as a
//! process tree under the host as child subreaper. `terminate` sends SIGTERM
//! to the whole unit (and kills it if the main process still runs
//! [`super::contain::TERM_GRACE`] later), `kill` kills it, and when the main
//! process exits whatever is left of the unit is killed.
//! [`DetachedRegistry::kill_all_for`] kills everything of a spawn. At most
//! [`MAX_DETACHED_PER_INSTANCE`] main processes run per instance.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::contain::{Contain, Containment, Mechanism};
use super::gate::{Kind, ProgramRequest};
use super::CallState;
use crate::runtime::bindings::detached::{self as wit, Launch, ProcessState, Signal};
use crate::runtime::bindings::process::RunError;

/// The most detached main processes one instance may have running at once
/// (servers of the `local` plugin: one per running spawn). A start beyond it
/// fails with an error the plugin sees.
pub const MAX_DETACHED_PER_INSTANCE: usize = 256;

/// Processes started by this host, and the key their handles are signed with.
pub struct DetachedRegistry {
    key: [u8; 32],
    log_dir: PathBuf,
    /// Exit codes of children this host reaped, by PID and start time.
    exited: Mutex<HashMap<(u32, u64), Option<i32>>>,
    /// How their process trees are contained.
    contain: Arc<Contain>,
}

/// A verified handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle {
    pid: u32,
    start: u64,
}

impl DetachedRegistry {
    /// Loads (or creates, 0600) the handle key in `state_dir`; containment
    /// as [`super::contain::MODE_VAR`] asks (default: cgroup v2 where
    /// possible, else the process tree).
    pub fn open(state_dir: &Path) -> Result<Arc<DetachedRegistry>> {
        Self::open_with(state_dir, Containment::from_env())
    }

    /// Like [`Self::open`], with the containment mechanism given (tests
    /// force the process-tree fallback with [`Containment::ProcessTree`]).
    pub fn open_with(state_dir: &Path, mode: Containment) -> Result<Arc<DetachedRegistry>> {
        let key_path = state_dir.join("detached.key");
        let key = match std::fs::read(&key_path) {
            Ok(k) if k.len() == 32 => k,
            Ok(_) => anyhow::bail!(
                "{} is not a 32-byte key; delete it to have a new one made (handles of running local servers are then lost)",
                key_path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k: [u8; 32] = rand::random();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key_path)
                    .with_context(|| format!("cannot create {}", key_path.display()))?;
                std::io::Write::write_all(&mut f, &k)?;
                k.to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", key_path.display())),
        };
        let key: [u8; 32] = key.try_into().expect("32 bytes");
        Ok(Arc::new(DetachedRegistry {
            key,
            log_dir: state_dir.join("logs"),
            exited: Mutex::new(HashMap::new()),
            contain: Contain::open(state_dir, &key, mode),
        }))
    }

    /// The containment mechanism in use.
    pub fn containment(&self) -> &Mechanism {
        self.contain.mechanism()
    }

    /// Kills everything this host started as detached processes for
    /// `spawn_id` of `instance`: every main process and all they started
    /// (cgroups, or process trees by their marker), also those of an
    /// earlier run of the host, and removes their cgroups. For the service
    /// to call when a spawn ends (whatever the plugin did); idempotent and
    /// blocking for at most a few seconds (call it off the async runtime,
    /// e.g. in `spawn_blocking`). Returns how many units still had
    /// processes.
    pub fn kill_all_for(&self, instance: &str, spawn_id: &str) -> usize {
        self.contain.kill_all_for(instance, spawn_id)
    }

    fn mac(&self, instance: &str, h: Handle) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        m.update(format!("{instance}\0{}\0{}", h.pid, h.start).as_bytes());
        hex::encode(&m.finalize().into_bytes()[..16])
    }

    fn encode(&self, instance: &str, h: Handle) -> String {
        format!("{}.{}.{}", h.pid, h.start, self.mac(instance, h))
    }

    fn decode(&self, instance: &str, handle: &str) -> Option<Handle> {
        let mut parts = handle.split('.');
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let mac = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let h = Handle { pid, start };
        // Constant-time comparison of the MAC.
        let want = self.mac(instance, h);
        let same: bool = subtle::ConstantTimeEq::ct_eq(want.as_bytes(), mac.as_bytes()).into();
        same.then_some(h)
    }

    /// Starts the permitted process, contained; returns its handle.
    async fn start(
        self: &Arc<Self>,
        instance: &str,
        spawn_id: Option<&str>,
        argv: &[String],
        env: &[(String, String)],
        workdir: &Path,
    ) -> Result<String, String> {
        if self.contain.running(instance) >= MAX_DETACHED_PER_INSTANCE {
            return Err(format!(
                "instance `{instance}` already runs {MAX_DETACHED_PER_INSTANCE} detached processes, the most this host allows"
            ));
        }
        let dir = self.log_dir.join(instance);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let name = spawn_id.unwrap_or("process");
        let log_path = dir.join(format!("{name}.log"));
        let command = |prep: &super::contain::Prepared| -> Result<tokio::process::Command, String> {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&log_path)
                .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
            let log2 = log.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .env_clear()
                .envs(
                    env.iter()
                        .filter(|(k, _)| k != super::contain::TAG_VAR)
                        .map(|(k, v)| (k, v)),
                )
                .current_dir(workdir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            // Enters its cgroup (if any), then setsid: the leader of a new
            // session and process group, detached from the host's.
            Contain::configure(prep, &mut cmd);
            Ok(cmd)
        };
        let mut prep = self.contain.prepare(instance, spawn_id);
        // Held until the main process is registered, so the process-tree
        // tracker never takes it for an orphan of its own (no await inside).
        let mut guard = Contain::spawn_guard();
        let mut spawned = command(&prep).map(|mut c| c.spawn());
        if matches!(&spawned, Ok(Err(e)) if Contain::placement_failed(e)) {
            prep = self.contain.fallback(prep);
            drop(guard);
            guard = Contain::spawn_guard();
            spawned = command(&prep).map(|mut c| c.spawn());
        }
        let mut child = match spawned {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.contain.abandon(prep);
                return Err(format!("cannot start {}: {e}", argv[0]));
            }
            Err(m) => {
                self.contain.abandon(prep);
                return Err(m);
            }
        };
        let Some((pid, start)) = child
            .id()
            .and_then(|pid| Some((pid, proc_start_time(pid)?)))
        else {
            self.contain.abandon(prep);
            return Err("the process exited at once".into());
        };
        let h = Handle { pid, start };
        self.contain.started(prep, instance, spawn_id, (pid, start));
        drop(guard);
        // Reap it when it ends, remember its exit code, then kill what is
        // left of its tree.
        let me = self.clone();
        tokio::spawn(async move {
            let code = child.wait().await.ok().map(super::process::exit_code);
            me.exited.lock().unwrap().insert((h.pid, h.start), code);
            let contain = me.contain.clone();
            let _ = tokio::task::spawn_blocking(move || contain.ended((h.pid, h.start))).await;
        });
        Ok(self.encode(instance, h))
    }

    fn state(&self, instance: &str, handle: &str) -> ProcessState {
        let Some(h) = self.decode(instance, handle) else {
            return ProcessState::Unknown(format!(
                "{handle:?} is not a process handle this host issued to instance `{instance}`"
            ));
        };
        if let Some(code) = self.exited.lock().unwrap().get(&(h.pid, h.start)) {
            return ProcessState::Exited(*code);
        }
        match proc_start_time(h.pid) {
            Some(s) if s == h.start && !is_zombie(h.pid) => ProcessState::Running,
            _ => ProcessState::Exited(None),
        }
    }

    /// Like [`Self::state`], but a child of ours that has just ended (a
    /// zombie not yet reaped) gets a moment for its exit code to be recorded.
    async fn settled_state(&self, instance: &str, handle: &str) -> ProcessState {
        for _ in 0..10 {
            let s = self.state(instance, handle);
            let just_ended = matches!(s, ProcessState::Exited(None))
                && self
                    .decode(instance, handle)
                    .is_some_and(|h| is_zombie(h.pid) && proc_start_time(h.pid) == Some(h.start));
            if !just_ended {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.state(instance, handle)
    }

    /// Signals a detached process: interrupt its process group; terminate
    /// every process of its tree (killed if the main process still runs
    /// after the grace period); kill the whole tree, also what is left
    /// after the main process ended.
    fn signal(&self, instance: &str, handle: &str, sig: Signal) -> Result<(), String> {
        let h = self.decode(instance, handle).ok_or_else(|| {
            format!("{handle:?} is not a process handle this host issued to instance `{instance}`")
        })?;
        let signo = match sig {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        if let Some(outcome) = self.contain.signal(instance, (h.pid, h.start), signo) {
            return outcome;
        }
        // No containment record (a process of an older host): its group.
        if !matches!(self.state(instance, handle), ProcessState::Running) {
            return Ok(()); // already gone: nothing to signal
        }
        // SAFETY: plain syscall to the process group the child leads.
        let rc = unsafe { libc::kill(-(h.pid as i32), signo) };
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(format!("kill: {}", std::io::Error::last_os_error()))
        }
    }
}

/// Field 22 of /proc/PID/stat: start time in clock ticks after boot.
fn proc_start_time(pid: u32) -> Option<u64> {
    super::contain::stat(pid).map(|s| s.start)
}

fn is_zombie(pid: u32) -> bool {
    super::contain::stat(pid).is_some_and(|s| s.zombie)
}

/// `detached` in the capability list.
pub const CAPABILITY: super::Capability = super::Capability {
    interface: "detached",
    add_to_linker: |l| {
        wit::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(l, |s| s)
    },
};

impl wit::Host for CallState {
    async fn start(&mut self, req: Launch) -> Result<String, RunError> {
        let env: Vec<(String, String)> = req.env.into_iter().map(|e| (e.name, e.value)).collect();
        let permit = self.gate.authorize(
            &self.call,
            &ProgramRequest {
                kind: Kind::Detached,
                program: &req.program,
                args: &req.args,
                env: &env,
                spawn_env: req.spawn_env,
                timeout_ms: 0,
                ssh_host: None,
            },
        )?;
        let workdir = match req.workdir.as_deref() {
            Some(w) if w.starts_with('/') && Path::new(w).is_dir() => PathBuf::from(w),
            Some(w) => {
                let m = format!("working directory {w:?} is not an existing absolute directory");
                permit.finish(None, Some(m.clone()));
                return Err(RunError::Failed(m));
            }
            None => PathBuf::from("/"),
        };
        let started = self
            .detached
            .start(
                self.gate.instance(),
                self.call.spawn_id.as_deref(),
                &permit.argv,
                &permit.env,
                &workdir,
            )
            .await;
        match started {
            Ok(handle) => {
                permit.finish(None, None);
                Ok(handle)
            }
            Err(m) => {
                permit.finish(None, Some(m.clone()));
                Err(RunError::Failed(m))
            }
        }
    }

    async fn status(&mut self, handles: Vec<String>) -> Vec<ProcessState> {
        if let Err(m) = self.gate.check_detached_declared() {
            return handles
                .iter()
                .map(|_| ProcessState::Unknown(m.clone()))
                .collect();
        }
        let instance = self.gate.instance();
        let mut states = Vec::with_capacity(handles.len());
        for h in &handles {
            states.push(self.detached.settled_state(instance, h).await);
        }
        states
    }

    async fn send_signal(&mut self, handle: String, sig: Signal) -> Result<(), RunError> {
        let outcome = self
            .gate
            .check_detached_declared()
            .and_then(|()| self.gate.check_signal_phase(&self.call))
            .and_then(|()| self.detached.signal(self.gate.instance(), &handle, sig));
        self.gate.audit_signal(&self.call, &handle, outcome.clone());
        outcome.map_err(RunError::Denied)
    }
}
