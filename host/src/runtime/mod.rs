//! The WebAssembly runtime: one wasmtime [`Engine`] and [`Linker`] for the
//! whole host, components compiled once (and cached on disk), and a fresh
//! [`Store`] for every plugin call so a trapped instance is never reused.
//!
//! Limits per call: linear memory ([`StoreLimits`]), a wall-clock deadline
//! (epoch interruption; a ticker thread advances the epoch every
//! [`TICK`]), and the instance's concurrency cap (in [`plugin`]).

pub mod bindings;
pub mod cache;
pub mod convert;
pub mod plugin;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::WasiCtx;

use crate::capability::audit::AuditLog;
use crate::capability::detached::DetachedRegistry;
use crate::capability::gate::{CallContext, Gate};
use crate::capability::CallState;

/// How often the epoch advances: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// The largest linear memory any instance may configure; the pooling
/// allocator reserves slots of this size.
const MAX_MEMORY: usize = 4096 << 20;

/// Guest stderr kept per call (for trap messages).
const STDERR_CAP: usize = 16 * 1024;

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
}

impl Runtime {
    /// Creates the runtime with its state (compile cache, audit log,
    /// detached-process key) under `state_dir`.
    pub fn new(state_dir: &Path) -> Result<Arc<Runtime>> {
        Self::with_cache_dir(state_dir, None)
    }

    /// The runtime for a config (its state and cache directories).
    pub fn for_config(config: &crate::config::Config) -> Result<Arc<Runtime>> {
        Self::with_cache_dir(&config.state_dir, config.cache_dir.as_deref())
    }

    /// Like [`Runtime::new`], with the compile cache in `cache_dir`.
    pub fn with_cache_dir(state_dir: &Path, cache_dir: Option<&Path>) -> Result<Arc<Runtime>> {
        std::fs::create_dir_all(state_dir).with_context(|| {
            format!("cannot create the state directory {}", state_dir.display())
        })?;
        restrict(state_dir)?;
        // SSH connection-sharing sockets.
        let ssh_dir = state_dir.join("ssh");
        std::fs::create_dir_all(&ssh_dir)?;
        restrict(&ssh_dir)?;
        let audit = Arc::new(AuditLog::open(&state_dir.join("audit.jsonl"))?);
        let cache_dir = cache_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| state_dir.join("cache"));
        Self::with_audit(state_dir, &cache_dir, audit)
    }

    pub fn with_audit(
        state_dir: &Path,
        cache_dir: &Path,
        audit: Arc<AuditLog>,
    ) -> Result<Arc<Runtime>> {
        let (engine, pooling) = match Engine::new(&engine_config(true)) {
            Ok(e) => (e, true),
            Err(e) => {
                tracing::warn!("pooling allocator unavailable ({e:#}); using on-demand allocation");
                (Engine::new(&engine_config(false))?, false)
            }
        };
        start_ticker(&engine);
        let mut linker: Linker<CallState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Plugin::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)?;
        let cache = cache::CompileCache::new(&engine, cache_dir)?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache,
            detached: DetachedRegistry::open(state_dir)?,
            audit,
            state_dir: state_dir.to_path_buf(),
            pooling,
        }))
    }

    /// Compiles (or loads from the cache) the component at `path`. Blocking:
    /// call it off the async runtime.
    pub fn compile(&self, path: &Path) -> Result<(Component, String)> {
        self.cache.load(&self.engine, path)
    }

    /// A fresh store for one call of a plugin version.
    pub fn store(&self, gate: Arc<Gate>, call: CallContext) -> Store<CallState> {
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
        let ticks = (limits.call_timeout.as_millis() / TICK.as_millis()).max(1) as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        crate::capability::ssh::close_masters(
            Path::new("/usr/bin/ssh"),
            &self.state_dir.join("ssh"),
        );
    }
}

fn engine_config(pooling: bool) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.wasm_component_model(true);
    if pooling {
        let mut p = PoolingAllocationConfig::default();
        // Room for 128 concurrent calls of components with a few core
        // instances each; memory slots are reserved (virtual), not committed.
        p.total_component_instances(128)
            .total_core_instances(1024)
            .total_memories(256)
            .total_tables(1024)
            .total_stacks(128)
            .max_memory_size(MAX_MEMORY);
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
