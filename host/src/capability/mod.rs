//! The host capabilities a plugin imports, one module each (its per-call
//! state and its WIT `Host` impl), and the one [`gate::Gate`] they all pass
//! through.
//!
//! | module | WIT interface | what it does |
//! |---|---|---|
//! | [`process`] | `process` | run a program to completion |
//! | [`detached`] | `detached` | start, query and signal long-running local processes |
//! | [`ssh`] | `ssh` | run a program over SSH |
//! | [`log`] | `log` | write to the host's log |
//!
//! Each capability module holds its WIT `Host` impl and its linker wiring
//! (a [`Capability`] entry); [`CAPABILITIES`] is the one registration list
//! the runtime links from. Adding a capability: its module, its WIT
//! interface, one line in that list, and its grant kind in the gate.
//!
//! [`CallState`] is the data of one call's store: WASI (no files, no
//! environment, no network), memory limits, and the gate with the call's
//! context (phase, user, deadline, run budget).

pub mod audit;
pub mod contain;
pub mod detached;
pub mod env;
pub mod gate;
pub mod log;
pub mod process;
pub mod review;
pub mod ssh;

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::StoreLimits;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use self::detached::DetachedRegistry;
use self::gate::{CallContext, Gate};

/// The data of one plugin call's store.
pub struct CallState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub gate: Arc<Gate>,
    pub call: CallContext,
    pub detached: Arc<DetachedRegistry>,
    pub state_dir: PathBuf,
    /// What the guest wrote to stderr (a Rust panic message, say), kept for
    /// the error when the call traps.
    pub stderr: MemoryOutputPipe,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl crate::runtime::bindings::wit::Host for CallState {}

/// One host capability: its WIT interface and how it is linked.
pub struct Capability {
    /// The WIT interface, e.g. `process`.
    pub interface: &'static str,
    pub add_to_linker: fn(&mut Linker<CallState>) -> wasmtime::Result<()>,
}

/// Every capability a plugin may import, in link order.
pub const CAPABILITIES: &[Capability] = &[
    Capability {
        interface: "types",
        add_to_linker: |l| {
            crate::runtime::bindings::latest::wasmspawner::plugin::types::add_to_linker::<
                CallState,
                HasSelf<CallState>,
            >(l, |s| s)
        },
    },
    process::CAPABILITY,
    detached::CAPABILITY,
    ssh::CAPABILITY,
    log::CAPABILITY,
];

/// Links every capability onto `linker`.
pub fn add_to_linker(linker: &mut Linker<CallState>) -> anyhow::Result<()> {
    for c in CAPABILITIES {
        (c.add_to_linker)(linker)
            .map_err(|e| anyhow::anyhow!("linking capability `{}`: {e:#}", c.interface))?;
    }
    Ok(())
}
