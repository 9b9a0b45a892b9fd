//! Process containment for detached processes: a detached process and
//! everything it starts die together, whether they double-fork, call
//! `setsid` or not —
//!
//! - on `kill`: every process of the tree gets SIGKILL;
//! - on `terminate`: every process gets SIGTERM, and if the main process
//!   still runs [`TERM_GRACE`] later, the whole tree is killed;
//! - when the main process exits (the registry's reaper task): whatever is
//!   left of its tree is killed ([`Contain::ended`]);
//! - when the service ends its spawn:
//!   [`super::detached::DetachedRegistry::kill_all_for`] kills everything
//!   that was started for that instance and spawn, also after a host
//!   restart.
//!
//! Two mechanisms; which one is picked when the registry is created and
//! written to the host log once (info):
//!
//! **cgroup v2** (preferred). The cgroup2 mount is read from
//! `/proc/self/mountinfo` and the host's own cgroup from the `0::` line of
//! `/proc/self/cgroup`. Every detached start gets its own cgroup
//! `<mount><own cgroup>/wasmspawner/<unit>`. The directory and an
//! `O_CLOEXEC` descriptor of its `cgroup.procs` are made before the fork; the
//! child writes `"0"` to that descriptor in `pre_exec` (one `write(2)`,
//! async-signal-safe), so it is inside its cgroup before it runs a single
//! instruction of the program, and nothing it forks afterwards can leave it
//! (`setsid` changes the session, not the cgroup). Killing is one write of
//! `"1"` to `cgroup.kill` (Linux 5.14; the kernel guards against concurrent
//! forks); on older kernels the cgroup is frozen (`cgroup.freeze`, 5.2) and
//! every PID in `cgroup.procs` gets SIGKILL until it is empty. The directory
//! is removed once empty. At creation the registry proves the whole chain
//! works: a forked probe child places itself in a probe cgroup and is killed
//! through it; anything short of that (no cgroup2 mount, a read-only or
//! non-delegated hierarchy, EACCES, EBUSY) selects the fallback, and never
//! fails a start. A start whose placement fails later (the kernel refused
//! the write) is retried at once under the fallback mechanism, with a
//! warning.
//!
//! **Process tree** (fallback). The host marks itself
//! `PR_SET_CHILD_SUBREAPER`, so orphaned descendants reparent to the host
//! instead of init, and the child's environment gets one fixed variable,
//! [`TAG_VAR`]` = <unit>.<MAC>` (the MAC is over the unit with the registry's
//! key, so no plugin can forge one). A process-wide tracker scans `/proc`
//! every [`SCAN_EVERY`] and before every kill, and attributes a process to a
//! unit, stickily (an attribution once made stays with that PID and start
//! time, whatever the process later does), by any of:
//! 1. the marker in `/proc/PID/environ` (inherited through any number of
//!    forks, `setsid` and `exec`: this is what makes the double-fork +
//!    `setsid` case sound, however fast the intermediate parent exits);
//! 2. its parent's attribution (the ppid chain, while the parent lives);
//! 3. its session or process group, when the leader of that session or group
//!    was attributed (session and group ids are not reused while in use).
//!
//! A kill scans, signals every attributed process (through a pidfd checked
//! against the start time, so a reused PID is never hit), and scans again
//! until no new one appears. The tracker also reaps orphans reparented to the
//! host, but only PIDs it knows are orphans — a process attributed to a unit
//! that is not a main process, or one seen earlier with another parent — with
//! `waitpid(pid, WNOHANG)`, so the exit statuses of tokio's own children are
//! never taken. Limits of the fallback: a process that clears its environment
//! (`env -i`) *and* loses its attributed parent before the next scan is not
//! found, and such an orphan's zombie stays a child of the host (it is
//! nobody's known orphan). Use cgroup v2 where processes are not trusted.
//!
//! The mechanism is chosen by [`MODE_VAR`] (`WASMSPAWNER_CONTAINMENT`), read
//! when the registry is created: `auto` (default: cgroup v2 when the probe
//! succeeds), `cgroup` (the same, with a warning when it falls back), or
//! `subreaper` (the process-tree mechanism even where cgroup v2 works; the
//! tests use it through [`Containment::ProcessTree`]).
//!
//! **Names and restarts.** A unit is `<host>.<instance>.<spawn>.<nonce>`:
//! `host` is a short hash of the registry key (two hosts, or two test
//! registries, never touch each other's units), instance and spawn id are
//! kept when they are short `[A-Za-z0-9_-]` words and hashed otherwise, the
//! spawn is empty for a start outside a spawn. Every start is recorded in
//! `<state_dir>/contain/<pid>.<start>.json` (instance, spawn, unit, cgroup
//! path), so after a host restart a handle `PID.START.MAC` still leads to
//! its tree, [`Contain::kill_all_for`] still finds a spawn's units (also by
//! cgroup name), and a housekeeping thread kills the remains of a unit
//! whose main process ended while no host watched it, removes empty
//! cgroups and drops the record.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The environment variable that marks a detached process and its
/// descendants under the process-tree mechanism.
pub const TAG_VAR: &str = "WASMSPAWNER_SPAWN_TAG";

/// Picks the mechanism when a registry is created: `auto`, `cgroup` or
/// `subreaper`.
pub const MODE_VAR: &str = "WASMSPAWNER_CONTAINMENT";

/// How long a main process may take to exit after `terminate` before its
/// whole tree is killed.
pub const TERM_GRACE: Duration = Duration::from_secs(10);

/// How often the process-tree tracker scans `/proc` (it also scans before
/// every kill).
pub const SCAN_EVERY: Duration = Duration::from_secs(1);

/// How often a registry looks for units whose main process ended unwatched.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// The errno a placement failure in `pre_exec` is reported with (no exec or
/// chdir error uses it), so the start can be retried under the fallback.
const PLACEMENT_FAILED: i32 = libc::ENOTRECOVERABLE;

/// The mechanism asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containment {
    /// cgroup v2 where the probe succeeds, else the process tree.
    Auto,
    /// Like `Auto`, with a warning when cgroup v2 is not usable.
    Cgroup,
    /// The child-subreaper process-tree mechanism, even where cgroup v2 works.
    ProcessTree,
}

impl Containment {
    /// From [`MODE_VAR`]; unset or empty is `Auto`.
    pub fn from_env() -> Containment {
        match std::env::var(MODE_VAR).unwrap_or_default().trim() {
            "" | "auto" => Containment::Auto,
            "cgroup" | "cgroup2" => Containment::Cgroup,
            "subreaper" | "process-tree" => Containment::ProcessTree,
            other => {
                tracing::warn!(
                    "{MODE_VAR}={other:?} is none of auto, cgroup, subreaper: using auto"
                );
                Containment::Auto
            }
        }
    }
}

/// How a cgroup is killed on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillMethod {
    /// `cgroup.kill` (5.14).
    Kill,
    /// `cgroup.freeze`, then SIGKILL to every member (5.2).
    Freeze,
    /// SIGKILL to every member until none is left.
    Signal,
}

/// The directory all of this host's cgroups are made in.
#[derive(Debug, Clone)]
pub struct CgroupBase {
    pub dir: PathBuf,
    kill: KillMethod,
}

/// The mechanism in use.
#[derive(Debug, Clone)]
pub enum Mechanism {
    Cgroup(CgroupBase),
    ProcessTree,
}

/// What is made for a start before the fork.
pub struct Prepared {
    unit: String,
    /// The cgroup and an open descriptor of its `cgroup.procs`.
    cgroup: Option<(PathBuf, OwnedFd)>,
    /// `TAG_VAR`'s value (process-tree mechanism).
    marker: Option<String>,
}

/// One start, as recorded in `<state_dir>/contain/`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    instance: String,
    spawn_id: Option<String>,
    unit: String,
    cgroup: Option<PathBuf>,
}

/// A PID with its start time (clock ticks since boot).
pub type Pid = (u32, u64);

/// One registry's containment: its mechanism and its records.
pub struct Contain {
    hostid: String,
    key: [u8; 32],
    mech: Mechanism,
    records_dir: PathBuf,
    records: Mutex<HashMap<Pid, Record>>,
    /// Main processes this host started and whose end its reaper handles.
    live: Mutex<HashSet<Pid>>,
}

impl Contain {
    /// Picks the mechanism (logged once, at info), loads the records of
    /// earlier runs and starts the housekeeping thread.
    pub fn open(state_dir: &Path, key: &[u8; 32], mode: Containment) -> Arc<Contain> {
        let hostid =
            hex::encode(&Sha256::digest([b"wasmspawner-host\0".as_slice(), key].concat())[..4]);
        let mech = match mode {
            Containment::ProcessTree => {
                tracing::info!(
                    "detached processes: contained by the process tree (child subreaper, {TAG_VAR} marker, /proc scans), as {MODE_VAR} asks"
                );
                Mechanism::ProcessTree
            }
            Containment::Auto | Containment::Cgroup => match probe_cgroup(&hostid) {
                Ok(base) => {
                    tracing::info!(
                        "detached processes: contained in cgroup v2 under {} (kill by {})",
                        base.dir.display(),
                        match base.kill {
                            KillMethod::Kill => "cgroup.kill",
                            KillMethod::Freeze => "cgroup.freeze + SIGKILL",
                            KillMethod::Signal => "SIGKILL to cgroup.procs",
                        }
                    );
                    Mechanism::Cgroup(base)
                }
                Err(why) => {
                    let msg = format!(
                        "detached processes: cgroup v2 not usable ({why}); contained by the process tree (child subreaper, {TAG_VAR} marker, /proc scans)"
                    );
                    if mode == Containment::Cgroup {
                        tracing::warn!("{msg}");
                    } else {
                        tracing::info!("{msg}");
                    }
                    Mechanism::ProcessTree
                }
            },
        };
        let records_dir = state_dir.join("contain");
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&records_dir);
        let mut records = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&records_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".json") else {
                    continue;
                };
                let Some((pid, start)) = stem.split_once('.') else {
                    continue;
                };
                let (Ok(pid), Ok(start)) = (pid.parse(), start.parse()) else {
                    continue;
                };
                match std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                {
                    Some(r) => {
                        records.insert((pid, start), r);
                    }
                    None => tracing::warn!("ignoring unreadable {}", e.path().display()),
                }
            }
        }
        let me = Arc::new(Contain {
            hostid,
            key: *key,
            mech,
            records_dir,
            records: Mutex::new(records),
            live: Mutex::new(HashSet::new()),
        });
        let tree_units = me
            .records
            .lock()
            .unwrap()
            .values()
            .any(|r| r.cgroup.is_none());
        if matches!(me.mech, Mechanism::ProcessTree) || tree_units {
            tracker().add_key(&me.hostid, &me.key);
        }
        let weak = Arc::downgrade(&me);
        let _ = std::thread::Builder::new()
            .name("ws-contain".into())
            .spawn(move || housekeeping(weak));
        me
    }

    /// The mechanism in use.
    pub fn mechanism(&self) -> &Mechanism {
        &self.mech
    }

    fn unit_prefix(&self, instance: &str, spawn_id: Option<&str>) -> String {
        format!(
            "{}.{}.{}.",
            self.hostid,
            name_part(instance),
            spawn_id.map(name_part).unwrap_or_default()
        )
    }

    /// Makes what a start needs before the fork: its cgroup, or its marker.
    pub fn prepare(&self, instance: &str, spawn_id: Option<&str>) -> Prepared {
        let unit = format!(
            "{}{}",
            self.unit_prefix(instance, spawn_id),
            hex::encode(rand::random::<[u8; 6]>())
        );
        if let Mechanism::Cgroup(base) = &self.mech {
            match base.create(&unit) {
                Ok(cg) => {
                    return Prepared {
                        unit,
                        cgroup: Some(cg),
                        marker: None,
                    }
                }
                Err(e) => tracing::warn!(
                    "cannot make cgroup {}/{unit} ({e}); this process is contained by the process tree",
                    base.dir.display()
                ),
            }
        }
        self.tree_prepared(unit)
    }

    fn tree_prepared(&self, unit: String) -> Prepared {
        tracker().add_key(&self.hostid, &self.key);
        Prepared {
            marker: Some(format!("{unit}.{}", tag_mac(&self.key, &unit))),
            unit,
            cgroup: None,
        }
    }

    /// After a start failed because the child could not enter its cgroup:
    /// the same unit under the process-tree mechanism.
    pub fn fallback(&self, prep: Prepared) -> Prepared {
        let unit = prep.unit.clone();
        self.abandon(prep);
        tracing::warn!(
            "cannot place a detached process in its cgroup; it is contained by the process tree"
        );
        self.tree_prepared(unit)
    }

    /// A start that failed: removes its cgroup.
    pub fn abandon(&self, prep: Prepared) {
        if let Some((dir, fd)) = prep.cgroup {
            drop(fd);
            self.kill_cgroup(&dir);
            remove_cgroup(&dir, Duration::from_millis(500));
        }
    }

    /// Sets up `cmd` for `prep`: the marker in its environment, and a
    /// `pre_exec` that enters the cgroup and then starts a new session.
    pub fn configure(prep: &Prepared, cmd: &mut tokio::process::Command) {
        if let Some(m) = &prep.marker {
            cmd.env(TAG_VAR, m);
        }
        let fd = prep.cgroup.as_ref().map(|(_, fd)| fd.as_raw_fd());
        // SAFETY: only async-signal-safe syscalls (write, setsid) on a
        // descriptor opened before the fork; no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = fd {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::from_raw_os_error(PLACEMENT_FAILED));
                    }
                }
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Whether a spawn error is the child failing to enter its cgroup.
    pub fn placement_failed(e: &io::Error) -> bool {
        e.raw_os_error() == Some(PLACEMENT_FAILED)
    }

    /// Held across spawn and [`Contain::started`], so the tracker never
    /// takes a main process that is not registered yet for an orphan.
    pub fn spawn_guard() -> Option<RwLockReadGuard<'static, ()>> {
        TRACKER.get().map(|t| t.spawning.read().unwrap())
    }

    /// Records a started main process.
    pub fn started(&self, prep: Prepared, instance: &str, spawn_id: Option<&str>, main: Pid) {
        let record = Record {
            instance: instance.to_string(),
            spawn_id: spawn_id.map(str::to_string),
            unit: prep.unit.clone(),
            cgroup: prep.cgroup.as_ref().map(|(d, _)| d.clone()),
        };
        if prep.marker.is_some() {
            tracker().state.lock().unwrap().mains.insert(main);
        }
        let path = self.record_path(main);
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&record)
            .map_err(io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(
                "cannot write {} ({e}); after a host restart this process's tree is found by its cgroup name only",
                path.display()
            );
        }
        self.live.lock().unwrap().insert(main);
        self.records.lock().unwrap().insert(main, record);
    }

    fn record_path(&self, (pid, start): Pid) -> PathBuf {
        self.records_dir.join(format!("{pid}.{start}.json"))
    }

    /// Main processes of `instance` that still run.
    pub fn running(&self, instance: &str) -> usize {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, r)| r.instance == instance && is_running(**p))
            .count()
    }

    /// The main process `main` (reaped by this host) has exited: kills what
    /// is left of its tree, removes its cgroup, drops its record. Blocking.
    pub fn ended(&self, main: Pid) {
        self.live.lock().unwrap().remove(&main);
        if let Some(t) = TRACKER.get() {
            t.state.lock().unwrap().mains.remove(&main);
        }
        let record = self.records.lock().unwrap().get(&main).cloned();
        if let Some(r) = record {
            if self.kill_unit(&r, true) {
                self.forget(main);
            }
        }
    }

    fn forget(&self, main: Pid) {
        self.records.lock().unwrap().remove(&main);
        let _ = std::fs::remove_file(self.record_path(main));
    }

    /// Kills every process of a unit; with `cleanup`, waits for its cgroup
    /// to empty and removes it. Returns whether nothing of it is left.
    fn kill_unit(&self, r: &Record, cleanup: bool) -> bool {
        match &r.cgroup {
            Some(dir) => {
                self.kill_cgroup(dir);
                !cleanup || remove_cgroup(dir, Duration::from_secs(2))
            }
            None => {
                let t = tracker();
                t.signal_where(|u| u == r.unit, libc::SIGKILL, 20);
                !cleanup || t.members_where(|u| u == r.unit).is_empty()
            }
        }
    }

    /// Signals the tree of main process `main` of `instance`. `None` when
    /// this host has no record of it (a handle of an older host: the caller
    /// signals its process group). Interrupt goes to the main process's
    /// group (like Ctrl-C); terminate to every process of the tree, and the
    /// tree is killed if the main process still runs [`TERM_GRACE`] later;
    /// kill kills the whole tree, also when the main process is gone.
    pub fn signal(
        self: &Arc<Self>,
        instance: &str,
        main: Pid,
        signo: i32,
    ) -> Option<Result<(), String>> {
        let r = self.records.lock().unwrap().get(&main).cloned()?;
        if r.instance != instance {
            return None;
        }
        let running = is_running(main);
        Some(match signo {
            libc::SIGKILL => {
                self.kill_unit(&r, false);
                if !self.live.lock().unwrap().contains(&main)
                    && !running
                    && self.kill_unit(&r, true)
                {
                    self.forget(main);
                }
                Ok(())
            }
            libc::SIGTERM => {
                if running {
                    match &r.cgroup {
                        Some(dir) => {
                            for pid in cgroup_tree_procs(dir) {
                                // SAFETY: plain syscall; a member of our cgroup.
                                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                            }
                        }
                        None => {
                            tracker().signal_where(|u| u == r.unit, libc::SIGTERM, 1);
                        }
                    }
                    self.escalate_later(main);
                }
                Ok(())
            }
            _ => {
                if !running {
                    return Some(Ok(()));
                }
                // SAFETY: plain syscall to the process group the child leads.
                let rc = unsafe { libc::kill(-(main.0 as i32), signo) };
                if rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
                    Ok(())
                } else {
                    Err(format!("kill: {}", io::Error::last_os_error()))
                }
            }
        })
    }

    fn escalate_later(self: &Arc<Self>, main: Pid) {
        let weak = Arc::downgrade(self);
        let escalate = move || {
            let Some(me) = weak.upgrade() else { return };
            if is_running(main) {
                let r = me.records.lock().unwrap().get(&main).cloned();
                if let Some(r) = r {
                    tracing::info!(
                        "detached process {} still runs {}s after SIGTERM: killing its tree",
                        main.0,
                        TERM_GRACE.as_secs()
                    );
                    me.kill_unit(&r, false);
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    tokio::time::sleep(TERM_GRACE).await;
                    let _ = tokio::task::spawn_blocking(escalate).await;
                });
            }
            Err(_) => {
                let _ = std::thread::Builder::new()
                    .name("ws-escalate".into())
                    .spawn(move || {
                        std::thread::sleep(TERM_GRACE);
                        escalate();
                    });
            }
        }
    }

    /// Kills everything this host started for `instance` and `spawn_id`
    /// (every unit, its main process included), also units of an earlier
    /// run of the host; returns how many units still had processes.
    pub fn kill_all_for(&self, instance: &str, spawn_id: &str) -> usize {
        if spawn_id.is_empty() {
            return 0;
        }
        let prefix = self.unit_prefix(instance, Some(spawn_id));
        let mine = |r: &Record| r.instance == instance && r.spawn_id.as_deref() == Some(spawn_id);
        // Cgroups: the recorded ones, and any of this host with the prefix.
        let mut cgroups: HashSet<PathBuf> = self
            .records
            .lock()
            .unwrap()
            .values()
            .filter(|r| mine(r))
            .filter_map(|r| r.cgroup.clone())
            .collect();
        if let Mechanism::Cgroup(base) = &self.mech {
            if let Ok(entries) = std::fs::read_dir(&base.dir) {
                cgroups.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                        .map(|e| e.path()),
                );
            }
        }
        let mut hit = 0;
        for dir in &cgroups {
            if !cgroup_tree_procs(dir).is_empty() {
                hit += 1;
            }
            self.kill_cgroup(dir);
        }
        // Process-tree units: by marker.
        if let Some(t) = TRACKER.get() {
            let units: HashSet<String> = t
                .members_where(|u| u.starts_with(&prefix))
                .into_iter()
                .map(|(_, u)| u)
                .collect();
            if !units.is_empty() {
                hit += units.len();
                t.signal_where(|u| u.starts_with(&prefix), libc::SIGKILL, 20);
            }
        }
        // Records whose main process no reaper of this host waits for.
        let live = self.live.lock().unwrap().clone();
        let done: Vec<(Pid, Record)> = self
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, r)| mine(r) && !live.contains(p))
            .map(|(p, r)| (*p, r.clone()))
            .collect();
        for (main, r) in done {
            if !is_running(main) && self.kill_unit(&r, true) {
                self.forget(main);
            }
        }
        for dir in &cgroups {
            remove_cgroup(dir, Duration::from_millis(200));
        }
        hit
    }

    fn kill_cgroup(&self, dir: &Path) {
        match &self.mech {
            Mechanism::Cgroup(base) => base.kill(dir),
            // Recorded under cgroup by an earlier run, now run without.
            Mechanism::ProcessTree => kill_members(dir, KillMethod::Signal),
        }
    }

    /// One housekeeping round: units whose main process ended unwatched
    /// (before a restart) are killed and forgotten; empty cgroups older than
    /// a minute are removed ([`CgroupBase::sweep`]).
    fn housekeep(&self) {
        let live = self.live.lock().unwrap().clone();
        let orphaned: Vec<(Pid, Record)> = self
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| !live.contains(p) && !is_running(**p))
            .map(|(p, r)| (*p, r.clone()))
            .collect();
        for (main, r) in orphaned {
            if self.kill_unit(&r, true) {
                self.forget(main);
            }
        }
        if let Mechanism::Cgroup(base) = &self.mech {
            base.sweep();
        }
    }
}

fn housekeeping(weak: Weak<Contain>) {
    loop {
        std::thread::sleep(HOUSEKEEPING_EVERY);
        match weak.upgrade() {
            Some(c) => c.housekeep(),
            None => return,
        }
    }
}

/// A unit name part: a short `[A-Za-z0-9_-]` word as it is, anything else
/// as `+` and a hash.
fn name_part(s: &str) -> String {
    if !s.is_empty()
        && s.len() <= 48
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        s.to_string()
    } else if s.is_empty() {
        String::new()
    } else {
        format!("+{}", hex::encode(&Sha256::digest(s.as_bytes())[..8]))
    }
}

fn tag_mac(key: &[u8; 32], unit: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(b"wasmspawner-tag\0");
    m.update(unit.as_bytes());
    hex::encode(&m.finalize().into_bytes()[..16])
}

// ---------------------------------------------------------------- /proc

/// What the tracker reads of a process: `/proc/PID/stat`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub pid: u32,
    pub ppid: u32,
    pub pgrp: u32,
    pub sid: u32,
    pub start: u64,
    pub zombie: bool,
}

pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and ')': skip past the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        pid,
        zombie: f.first()?.starts_with('Z') || f.first()?.starts_with('X'),
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        sid: f.get(3)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// Whether `(pid, start)` is a live (not zombie) process.
pub(crate) fn is_running((pid, start): Pid) -> bool {
    stat(pid).is_some_and(|s| s.start == start && !s.zombie)
}

fn all_procs() -> Vec<Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

/// `TAG_VAR` from the environment `pid` was exec'd with.
fn read_marker(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let want = format!("{TAG_VAR}=");
    env.split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(want.as_bytes()))
        .and_then(|v| String::from_utf8(v.to_vec()).ok())
}

/// Sends `sig` to `(pid, start)` only: through a pidfd opened and then
/// checked against the start time, so a PID reused in between is not hit.
fn send((pid, start): Pid, sig: i32) {
    // SAFETY: plain syscalls; the descriptor is closed below.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) as i32;
        if fd < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
                && stat(pid).is_some_and(|s| s.start == start)
            {
                libc::kill(pid as i32, sig);
            }
            return;
        }
        if stat(pid).is_some_and(|s| s.start == start) {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
        libc::close(fd);
    }
}

// ---------------------------------------------------------------- cgroup v2

/// The cgroup2 mount point and its root (the mountinfo "root" field).
fn cgroup2_mount() -> Option<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split(' ').next()? != "cgroup2" {
            return None;
        }
        let f: Vec<&str> = pre.split(' ').collect();
        Some((PathBuf::from(unescape(f.get(4)?)), unescape(f.get(3)?)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's own cgroup directory: the `0::` line of `/proc/self/cgroup`
/// under the cgroup2 mount.
fn own_cgroup_dir() -> Result<PathBuf, String> {
    let (mount, root) = cgroup2_mount().ok_or("no cgroup2 mount in /proc/self/mountinfo")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .ok_or("no cgroup v2 (0::) line in /proc/self/cgroup")?;
    let rel = if root == "/" {
        own.as_str()
    } else {
        own.strip_prefix(root.as_str())
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or_else(|| format!("own cgroup {own} is outside the mount's root {root}"))?
    };
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return Err(format!("odd own cgroup {own}"));
    }
    Ok(if rel.is_empty() {
        mount
    } else {
        mount.join(rel)
    })
}

/// Finds the host's cgroup, makes `wasmspawner/` in it and proves a child
/// can be placed in a cgroup there and killed through it.
fn probe_cgroup(hostid: &str) -> Result<CgroupBase, String> {
    let own = own_cgroup_dir()?;
    let dir = own.join("wasmspawner");
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    if !dir.join("cgroup.procs").exists() {
        return Err(format!("{} is not a cgroup", dir.display()));
    }
    let probe = dir.join(format!(
        "{hostid}.probe.{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    let mut base = CgroupBase {
        dir: dir.clone(),
        kill: KillMethod::Signal,
    };
    let (probe, fd) = base
        .create(probe.file_name().unwrap().to_str().unwrap())
        .map_err(|e| format!("cannot make a cgroup in {}: {e}", dir.display()))?;
    base.kill = if probe.join("cgroup.kill").exists() {
        KillMethod::Kill
    } else if probe.join("cgroup.freeze").exists() {
        KillMethod::Freeze
    } else {
        KillMethod::Signal
    };
    let outcome = probe_child(&base, &probe, &fd);
    drop(fd);
    remove_cgroup(&probe, Duration::from_secs(1));
    outcome.map(|()| base)
}

/// Forks a child that enters `probe` and waits; kills it through the
/// cgroup; checks it died of SIGKILL.
fn probe_child(base: &CgroupBase, probe: &Path, fd: &OwnedFd) -> Result<(), String> {
    let fd = fd.as_raw_fd();
    // SAFETY: the child runs only async-signal-safe syscalls (write, pause,
    // _exit) before it dies; the parent waits for that one PID only.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        unsafe {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(*libc::__errno_location() & 0x7f);
            }
            loop {
                libc::pause();
            }
        }
    }
    let wait = |flags| {
        let mut status = 0;
        // SAFETY: waits for our own probe child only.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        (r, status)
    };
    let mut placed = false;
    for _ in 0..200 {
        if cgroup_procs(probe).contains(&(pid as u32)) {
            placed = true;
            break;
        }
        let (r, status) = wait(libc::WNOHANG);
        if r == pid {
            let errno = libc::WEXITSTATUS(status);
            return Err(format!(
                "cannot move a process into {}: {}",
                probe.display(),
                io::Error::from_raw_os_error(errno)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if placed {
        base.kill(probe);
    }
    let mut killed = false;
    for _ in 0..200 {
        let (r, status) = wait(libc::WNOHANG);
        if r == pid {
            killed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !killed {
        // SAFETY: our own probe child, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    match (placed, killed) {
        (true, true) => Ok(()),
        (false, _) => Err(format!("a child did not appear in {}", probe.display())),
        (true, false) => Err(format!(
            "killing {} did not kill its process",
            probe.display()
        )),
    }
}

impl CgroupBase {
    /// Removes every empty cgroup in the base directory that is older than
    /// a minute, whichever host made it: a unit whose main process runs is
    /// never empty, a start places its child within moments of making the
    /// directory, and `rmdir` refuses a populated cgroup anyway. This
    /// collects what a host that ended without cleaning up (a killed host,
    /// `wasmspawner plugin submit`) left behind.
    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .ok()
                .filter(|m| m.is_dir())
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if old && cgroup_tree_procs(&e.path()).is_empty() {
                remove_cgroup(&e.path(), Duration::ZERO);
            }
        }
    }

    /// Makes cgroup `name` and opens its `cgroup.procs` for writing.
    fn create(&self, name: &str) -> io::Result<(PathBuf, OwnedFd)> {
        let dir = self.dir.join(name);
        std::fs::DirBuilder::new().mode(0o755).create(&dir)?;
        match std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
        {
            Ok(f) => Ok((dir, f.into())),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Kills every process in `dir` (and its sub-cgroups).
    fn kill(&self, dir: &Path) {
        if self.kill == KillMethod::Kill && std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        kill_members(dir, self.kill);
    }
}

/// SIGKILL to every member until none is left (frozen meanwhile if `Freeze`).
fn kill_members(dir: &Path, method: KillMethod) {
    for _ in 0..100 {
        let freeze =
            method == KillMethod::Freeze && std::fs::write(dir.join("cgroup.freeze"), "1").is_ok();
        let pids = cgroup_tree_procs(dir);
        for &pid in &pids {
            // SAFETY: plain syscall to a member of our cgroup.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if freeze {
            let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
        }
        if pids.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cgroup_procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Members of `dir` and of every cgroup below it.
fn cgroup_tree_procs(dir: &Path) -> Vec<u32> {
    let mut out = cgroup_procs(dir);
    for sub in subdirs(dir) {
        out.extend(cgroup_tree_procs(&sub));
    }
    out
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes `dir` (sub-cgroups first) once it is empty, waiting up to `wait`.
/// Returns whether it is gone.
fn remove_cgroup(dir: &Path, wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    loop {
        for sub in subdirs(dir) {
            remove_cgroup(&sub, Duration::ZERO);
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------- the tracker

/// The process-wide process-tree tracker (the host is one process; a
/// subreaper is a property of the process).
pub struct Tracker {
    me: u32,
    /// Starts hold it for reading across spawn and registration; the reaper
    /// step of a scan holds it for writing.
    spawning: RwLock<()>,
    state: Mutex<TrackState>,
}

#[derive(Default)]
struct TrackState {
    /// Registry keys by host id, to check markers.
    keys: HashMap<String, [u8; 32]>,
    /// Main processes started under the tracker: tokio reaps them.
    mains: HashSet<Pid>,
    /// Every process of the last scan, by PID.
    seen: HashMap<u32, Seen>,
    /// Session and process-group leaders' units, by leader PID.
    leaders: HashMap<u32, String>,
}

#[derive(Clone)]
struct Seen {
    start: u64,
    ppid: u32,
    unit: Option<String>,
    /// Known to be an orphan the host adopted (it may reap it).
    adopted: bool,
}

static TRACKER: OnceLock<Tracker> = OnceLock::new();

/// The tracker; the first call marks the host a child subreaper and starts
/// the scanning thread.
pub fn tracker() -> &'static Tracker {
    TRACKER.get_or_init(|| {
        // SAFETY: plain prctl on this process.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            tracing::warn!(
                "PR_SET_CHILD_SUBREAPER failed ({}): orphans of detached processes go to init",
                io::Error::last_os_error()
            );
        }
        let _ = std::thread::Builder::new()
            .name("ws-tracker".into())
            .spawn(|| loop {
                std::thread::sleep(SCAN_EVERY);
                if let Some(t) = TRACKER.get() {
                    t.scan();
                }
            });
        Tracker {
            me: std::process::id(),
            spawning: RwLock::new(()),
            state: Mutex::new(TrackState::default()),
        }
    })
}

impl Tracker {
    fn add_key(&self, hostid: &str, key: &[u8; 32]) {
        self.state
            .lock()
            .unwrap()
            .keys
            .insert(hostid.to_string(), *key);
    }

    /// Scans `/proc`: attributes processes to units, reaps known orphans.
    /// Returns the live attributed processes with their units.
    fn scan(&self) -> Vec<(Pid, String)> {
        // One scan at a time, and none while a start is between fork and
        // registration: the listing below is never older than the state.
        let _spawning = self.spawning.write().unwrap();
        let mut st = self.state.lock().unwrap();
        let mut procs = all_procs();
        procs.sort_by_key(|p| (p.start, p.pid));
        let old = std::mem::take(&mut st.seen);
        let mut seen: HashMap<u32, Seen> = HashMap::with_capacity(procs.len());
        for round in 0..2 {
            for p in &procs {
                if round == 1 && seen.get(&p.pid).is_some_and(|s| s.unit.is_some()) {
                    continue;
                }
                let prev = old.get(&p.pid).filter(|s| s.start == p.start);
                let mut unit = prev.and_then(|s| s.unit.clone());
                if unit.is_none() && prev.is_none() && round == 0 && !p.zombie {
                    unit = read_marker(p.pid).and_then(|m| valid_marker(&st.keys, &m));
                }
                if unit.is_none() {
                    unit = seen
                        .get(&p.ppid)
                        .filter(|s| s.start <= p.start)
                        .and_then(|s| s.unit.clone())
                        .or_else(|| st.leaders.get(&p.sid).cloned())
                        .or_else(|| st.leaders.get(&p.pgrp).cloned());
                }
                if let Some(u) = &unit {
                    if p.pid == p.sid || p.pid == p.pgrp {
                        st.leaders.insert(p.pid, u.clone());
                    }
                }
                let adopted = p.ppid == self.me
                    && (prev.is_some_and(|s| s.adopted || s.ppid != self.me)
                        || (unit.is_some() && !st.mains.contains(&(p.pid, p.start))));
                seen.insert(
                    p.pid,
                    Seen {
                        start: p.start,
                        ppid: p.ppid,
                        unit,
                        adopted,
                    },
                );
            }
        }
        let groups: HashSet<u32> = procs.iter().flat_map(|p| [p.sid, p.pgrp]).collect();
        st.leaders.retain(|id, _| groups.contains(id));
        let mut out = Vec::new();
        for p in &procs {
            let s = &seen[&p.pid];
            if p.zombie {
                if s.adopted
                    && stat(p.pid).is_some_and(|now| {
                        now.start == p.start && now.zombie && now.ppid == self.me
                    })
                {
                    // SAFETY: a zombie child of ours that is a known orphan:
                    // nobody else waits for it, and its PID cannot be reused
                    // before it is reaped.
                    unsafe { libc::waitpid(p.pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
                }
            } else if let Some(u) = &s.unit {
                out.push(((p.pid, p.start), u.clone()));
            }
        }
        st.seen = seen;
        out
    }

    /// Live processes whose unit satisfies `pred`.
    fn members_where(&self, pred: impl Fn(&str) -> bool) -> Vec<(Pid, String)> {
        self.scan().into_iter().filter(|(_, u)| pred(u)).collect()
    }

    /// Signals every live process whose unit satisfies `pred`, scanning
    /// again (up to `rounds` times) until no new one appears. Returns how
    /// many processes were signalled.
    fn signal_where(&self, pred: impl Fn(&str) -> bool, sig: i32, rounds: usize) -> usize {
        let mut done: HashSet<Pid> = HashSet::new();
        for _ in 0..rounds {
            let new: Vec<Pid> = self
                .members_where(&pred)
                .into_iter()
                .map(|(p, _)| p)
                .filter(|p| !done.contains(p))
                .collect();
            if new.is_empty() {
                break;
            }
            for p in new {
                send(p, sig);
                done.insert(p);
            }
        }
        if sig == libc::SIGKILL && !done.is_empty() {
            // Let the killed ones die, then reap the orphans among them.
            std::thread::sleep(Duration::from_millis(20));
            self.scan();
        }
        done.len()
    }
}

/// The unit of a well-formed marker whose MAC checks out with a known key.
fn valid_marker(keys: &HashMap<String, [u8; 32]>, marker: &str) -> Option<String> {
    let (unit, mac) = marker.rsplit_once('.')?;
    let key = keys.get(unit.split('.').next()?)?;
    let want = tag_mac(key, unit);
    let same: bool = subtle::ConstantTimeEq::ct_eq(want.as_bytes(), mac.as_bytes()).into();
    same.then(|| unit.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_name_parts_are_safe_words() {
        assert_eq!(name_part("local"), "local");
        assert_eq!(name_part(""), "");
        let odd = name_part("a.b/c\n");
        assert!(
            odd.starts_with('+') && !odd.contains(['.', '/', '\n']),
            "{odd}"
        );
        assert_eq!(name_part(&"x".repeat(49)).len(), 17);
    }

    #[test]
    fn markers_need_the_key() {
        let key = [7u8; 32];
        let mut keys = HashMap::new();
        keys.insert("abcd0123".to_string(), key);
        let unit = "abcd0123.local.s1.00aa";
        let marker = format!("{unit}.{}", tag_mac(&key, unit));
        assert_eq!(valid_marker(&keys, &marker).as_deref(), Some(unit));
        let forged = format!("{unit}.{}", tag_mac(&[8u8; 32], unit));
        assert_eq!(valid_marker(&keys, &forged), None);
        assert_eq!(valid_marker(&keys, "abcd0123.local.s2.00aa.00"), None);
        assert_eq!(valid_marker(&keys, ""), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/sys/fs/a\040b"), "/sys/fs/a b");
        assert_eq!(unescape(r"/x\\y"), r"/x\\y");
        assert_eq!(unescape(r"/x\134"), r"/x\");
    }

    /// The kill paths for kernels without `cgroup.kill` (freeze + SIGKILL,
    /// SIGKILL alone) empty a real cgroup with a forked grandchild in it.
    #[test]
    fn older_kernel_kill_paths_empty_a_cgroup() {
        use std::os::unix::process::CommandExt;
        let base = match probe_cgroup("0test000") {
            Ok(b) => b,
            Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI must test cgroup v2: {why}")
            }
            Err(why) => {
                eprintln!("\n*** SKIPPED (cgroup v2 not writable: {why}) ***\n");
                return;
            }
        };
        for method in [KillMethod::Freeze, KillMethod::Signal] {
            let b = CgroupBase {
                kill: method,
                ..base.clone()
            };
            let name = format!("0test000.unit.{}", hex::encode(rand::random::<[u8; 4]>()));
            let (dir, fd) = b.create(&name).unwrap();
            let raw = fd.as_raw_fd();
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.args(["-c", "setsid sleep 300 & exec sleep 300"]);
            // SAFETY: one write(2) to a descriptor opened before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::write(raw, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd.spawn().unwrap();
            drop(fd);
            for _ in 0..200 {
                if cgroup_procs(&dir).len() == 2 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(cgroup_procs(&dir).len(), 2, "{method:?}");
            b.kill(&dir);
            let status = child.wait().unwrap();
            assert!(!status.success(), "{method:?}: {status:?}");
            assert!(remove_cgroup(&dir, Duration::from_secs(2)), "{method:?}");
        }
    }

    #[test]
    fn own_stat_parses() {
        let me = stat(std::process::id()).unwrap();
        assert!(!me.zombie && me.start > 0);
        assert!(is_running((me.pid, me.start)));
        assert!(!is_running((me.pid, me.start + 1)));
    }
}
