//! The host's integration tests, one module per area, in one test binary:
//! wasmtime and the host are linked once, not once per file (19 binaries
//! before). Run one area with `cargo test -p wasmspawner --test integration
//! AREA::` (e.g. `slurm_real::`).
//!
//! Tests of different areas run side by side in this one process: a test
//! never changes process-wide state another could read (the working
//! directory, umask, signal dispositions), sets only environment variables
//! of its own name, and finds its processes by its own spawn ids.

mod common;
mod service_common;

mod cli;
mod gate;
mod hostile_plugins;
mod hot_reload;
mod local_plugin;
mod option_properties;
mod plugin_runtime;
mod schedulers;
mod service_local;
mod service_openapi;
mod service_poller;
mod service_recovery;
mod service_reload;
mod service_slurm;
mod service_tunnel;
mod site_plugin;
mod slurm_real;
mod ssh_remote;
mod tunnels;
