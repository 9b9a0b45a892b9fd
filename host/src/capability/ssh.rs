//! `ssh.run`: the plugin runs a program on a host over SSH. The gate checks
//! it (declared ∩ granted, the host against the grant's host patterns) and
//! shapes the ssh command line with [`crate::ssh_cmd`]; it then runs like
//! any other program ([`super::process::run_checked`]).

use super::gate::Kind;
use super::CallState;
use crate::runtime::bindings::process::{Command, Output, RunError};
use crate::runtime::bindings::ssh as wit;

/// `ssh` in the capability list.
pub const CAPABILITY: super::Capability = super::Capability {
    interface: "ssh",
    add_to_linker: |l| {
        wit::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(l, |s| s)
    },
};

impl wit::Host for CallState {
    async fn run(&mut self, host: String, cmd: Command) -> Result<Output, RunError> {
        super::process::run_checked(&self.gate, &self.call, Kind::Ssh, Some(&host), cmd).await
    }
}
