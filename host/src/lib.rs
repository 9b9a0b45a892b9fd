//! The Wasmspawner host: runs JupyterHub single-user servers as batch jobs
//! through WebAssembly scheduler plugins. See ARCHITECTURE.md for the map.

pub mod capability;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod daemon;
pub mod exec_host;
pub mod form;
pub mod http;
pub mod model;
pub mod registry;
pub mod runtime;
pub mod sanitize;
pub mod service;
pub mod ssh_cmd;
pub mod store;
pub mod tunnel;
pub mod users;
