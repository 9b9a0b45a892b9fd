//! The WebAssembly runtime: one wasmtime [`Engine`] and [`Linker`] for the
//! whole host, components compiled once (and cached on disk), and a fresh
//! [`Store`] for every plugin call so a trapped instance is never reused.
//!
//! Limits per call: linear memory ([`StoreLimits`]), a wall-clock deadline
//! (epoch interruption; a ticker thread advances the epoch every [`TICK`],
//! and at each tick a running guest either yields to the executor or, past
//! its deadline, traps), and the instance's concurrency cap (in
//! [`plugin`]). Guest code runs on the [`executor`], never on the runtime
//! that serves HTTP.
//!
//! The pooling allocator's slots are partitioned: the pool holds the sum of
//! every instance's `limits.concurrent_calls` plus [`LOAD_SLOTS`] for
//! loading, and each instance's semaphore keeps it within its share, so one
//! instance can never take another's slots ([`pool_slots_for`] checks the
//! sum against [`MAX_POOL`] at load, naming the keys to change).

pub mod bindings;
pub mod cache;
pub mod convert;
pub mod executor;
pub mod plugin;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
    UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::WasiCtx;

use crate::capability::audit::AuditLog;
use crate::capability::detached::DetachedRegistry;
use crate::capability::gate::{CallContext, Gate};
use crate::capability::CallState;

/// How often the epoch advances: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(1);

/// The largest linear memory any instance may configure; the pooling
/// allocator reserves slots of this size.
const MAX_MEMORY: usize = 4096 << 20;
/// Bytes of a linear memory slot kept resident between calls (see
/// `engine_config`).
const KEEP_RESIDENT: usize = 2 << 20;

/// Guest stderr kept per call (for trap messages).
const STDERR_CAP: usize = 16 * 1024;

/// Pool slots kept for loading components (describe), beside the calls.
pub const LOAD_SLOTS: u32 = 8;

/// The most component instances the pool may hold host-wide.
pub const MAX_POOL: u32 = 1024;

/// The pool size a config needs: the sum of its instances'
/// `concurrent_calls` plus [`LOAD_SLOTS`] (at least 128), or an error that
/// names the keys to lower.
pub fn pool_slots_for(config: &crate::config::Config) -> Result<u32> {
    let sum: usize = config
        .instances
        .values()
        .map(|i| i.limits.concurrent_calls)
        .sum();
    let need = sum as u64 + LOAD_SLOTS as u64;
    if need > MAX_POOL as u64 {
        let keys: Vec<String> = config
            .instances
            .values()
            .map(|i| {
                format!(
                    "instances.{}.limits.concurrent_calls = {}",
                    i.name, i.limits.concurrent_calls
                )
            })
            .collect();
        anyhow::bail!(
            "{}: the instances' limits.concurrent_calls add up to {sum}, but the host runs at most {} plugin calls at once; lower some of: {}",
            config.path.display(),
            MAX_POOL - LOAD_SLOTS,
            keys.join(", ")
        );
    }
    Ok((need as u32).max(128))
}
/// The engine, linker and host-wide capability state.
pub struct Runtime {
    pub engine: Engine,
    pub linker: Linker<CallState>,
    pub cache: cache::CompileCache,
    pub detached: Arc<DetachedRegistry>,
    pub audit: Arc<AuditLog>,
    pub state_dir: PathBuf,
    /// Whether the pooling allocator could be used (else on-demand).
    pub pooling: bool,
    /// Component instances the pool holds.
    pub pool_slots: u32,
    /// Where guest code runs.
    pub executor: executor::Executor,
    /// The ssh programs of the loaded instances, and whether this runtime
    /// owns the shared connections under `<state_dir>/ssh` (only `serve`
    /// does: `check`, `audit` and `plugin` never close a live host's).
    ssh: std::sync::Mutex<(std::collections::BTreeSet<PathBuf>, bool)>,
}

impl Runtime {
    /// Creates the runtime with its state (compile cache, audit log,
    /// detached-process key) under `state_dir`.
    pub fn new(state_dir: &Path) -> Result<Arc<Runtime>> {
        Self::with_cache_dir(state_dir, None)
    }

    /// The runtime for a config (its state and cache directories, its
    /// audit rotation, a pool sized for its instances).
    pub fn for_config(config: &crate::config::Config) -> Result<Arc<Runtime>> {
        let slots = pool_slots_for(config)?;
        Self::build(
            &config.state_dir,
            config.cache_dir.as_deref(),
            &config.audit,
            slots,
        )
    }

    /// Like [`Runtime::new`], with the compile cache in `cache_dir`.
    pub fn with_cache_dir(state_dir: &Path, cache_dir: Option<&Path>) -> Result<Arc<Runtime>> {
        Self::build(state_dir, cache_dir, &Default::default(), 128)
    }

    fn build(
        state_dir: &Path,
        cache_dir: Option<&Path>,
        rotation: &crate::config::AuditConfig,
        slots: u32,
    ) -> Result<Arc<Runtime>> {
        std::fs::create_dir_all(state_dir).with_context(|| {
            format!("cannot create the state directory {}", state_dir.display())
        })?;
        restrict(state_dir)?;
        // SSH connection-sharing sockets.
        let ssh_dir = state_dir.join("ssh");
        std::fs::create_dir_all(&ssh_dir)?;
        restrict(&ssh_dir)?;
        let audit = Arc::new(AuditLog::open_with(
            &state_dir.join("audit.jsonl"),
            rotation.clone(),
        )?);
        let shared = cache_dir.is_some();
        let cache_dir = cache_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| state_dir.join("cache"));
        let mut rt = Self::with_audit_slots(state_dir, &cache_dir, audit, slots)?;
        if shared {
            // Another host may use those artefacts: never evict them.
            Arc::get_mut(&mut rt).expect("not shared yet").cache.shared = true;
        }
        Ok(rt)
    }

    pub fn with_audit(
        state_dir: &Path,
        cache_dir: &Path,
        audit: Arc<AuditLog>,
    ) -> Result<Arc<Runtime>> {
        Self::with_audit_slots(state_dir, cache_dir, audit, 128)
    }

    fn with_audit_slots(
        state_dir: &Path,
        cache_dir: &Path,
        audit: Arc<AuditLog>,
        slots: u32,
    ) -> Result<Arc<Runtime>> {
        let (engine, pooling) = match Engine::new(&engine_config(Some(slots))) {
            Ok(e) => (e, true),
            Err(e) => {
                tracing::warn!("pooling allocator unavailable ({e:#}); using on-demand allocation");
                (Engine::new(&engine_config(None))?, false)
            }
        };
        start_ticker(&engine);
        let mut linker: Linker<CallState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        crate::capability::add_to_linker(&mut linker)?;
        // Older API versions' imports, forwarding to the latest.
        bindings::v0_1::add_to_linker(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking the API 0.1 imports: {e:#}"))?;
        let cache = cache::CompileCache::new(&engine, cache_dir)?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache,
            detached: DetachedRegistry::open(state_dir)?,
            audit,
            state_dir: state_dir.to_path_buf(),
            pooling,
            pool_slots: slots,
            executor: executor::Executor::new()?,
            ssh: Default::default(),
        }))
    }

    /// Compiles (or loads from the cache) a component read by
    /// [`cache::read_component`]. Blocking: call it off the async runtime.
    pub fn compile(&self, path: &Path, bytes: &[u8], digest: &str) -> Result<Component> {
        self.cache.compile(&self.engine, path, bytes, digest)
    }

    /// A fresh store for one call of a plugin version; it traps at the
    /// call's deadline (`call.deadline`, default: `limits.call_timeout`
    /// from now) and yields to the executor at every tick before it.
    pub fn store(&self, gate: Arc<Gate>, mut call: CallContext) -> Store<CallState> {
        let deadline = *call
            .deadline
            .get_or_insert_with(|| Instant::now() + gate.limits().call_timeout);
        let limits = gate.limits().clone();
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        let mut wasi = WasiCtx::builder();
        // No preopens, no environment, no arguments, no network: the builder
        // starts empty; sockets are closed explicitly too.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stderr(stderr.clone());
        let state = CallState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .trap_on_grow_failure(true)
                .instances(64)
                .tables(64)
                .memories(16)
                .build(),
            gate,
            call,
            detached: self.detached.clone(),
            state_dir: self.state_dir.clone(),
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        store
    }
}

impl Runtime {
    /// Remembers an instance's ssh program, to close shared connections
    /// with it.
    pub fn note_ssh_program(&self, program: &Path) {
        let mut g = self.ssh.lock().unwrap_or_else(|p| p.into_inner());
        g.0.insert(program.to_path_buf());
    }

    /// This runtime serves: it closes the shared SSH connections when it
    /// ends.
    pub fn own_ssh_connections(&self) {
        self.ssh.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let (programs, owned) = &*self.ssh.lock().unwrap_or_else(|p| p.into_inner());
        if *owned {
            for program in programs {
                crate::ssh_cmd::close_masters(program, &self.state_dir.join("ssh"));
            }
        }
    }
}

fn engine_config(pool_slots: Option<u32>) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.wasm_component_model(true);
    if let Some(slots) = pool_slots {
        let mut p = PoolingAllocationConfig::default();
        // `slots` concurrent calls of components with a few core instances
        // each; memory slots are reserved (virtual), not committed.
        p.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 8)
            .total_stacks(slots)
            .max_memory_size(MAX_MEMORY)
            // A slot given back is zeroed with memset up to these sizes
            // instead of madvise: the next call on it takes no page faults
            // and no TLB shootdown on the other cores (about a third of a
            // small call's cost). Resident memory: at most this much per
            // slot ever used at once.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}

/// Advances the engine's epoch every [`TICK`] until the engine is dropped.
fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            match weak.upgrade() {
                Some(e) => e.increment_epoch(),
                None => return,
            }
        })
        .expect("spawn the epoch thread");
}

/// Makes a directory private to the host's user (0700).
pub fn restrict(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set 0700 on {}", dir.display()))
}
