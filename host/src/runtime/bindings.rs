//! Host-side bindings of the `wasmspawner:plugin` WIT world.
//!
//! All imports are async on the host (a program run awaits the child without
//! blocking the runtime); to the guest they are ordinary blocking calls.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

pub use wasmspawner::plugin::types as wit;
pub use wasmspawner::plugin::{detached, log, process, ssh};
