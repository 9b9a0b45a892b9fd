//! `ssh.run`: a program on a remote host over SSH.
//!
//! The gate checks SSH calls like local ones (declared ∩ granted). This host
//! version has no `grants.ssh` table yet, so every SSH call is denied with a
//! message saying so; remote submission and tunnels come with SSH support.

use super::gate::{CallContext, Gate};
use super::CallState;
use crate::runtime::bindings::process::{Command, Output, RunError};
use crate::runtime::bindings::ssh as wit;

/// Denies, and records the denial, naming what is missing.
pub fn run_denied(gate: &Gate, call: &CallContext, host: &str, cmd: &Command) -> RunError {
    let why = format!(
        "SSH to {host:?} is not granted to instance `{}`: this host version has no SSH grants (grants.ssh)",
        gate.instance()
    );
    gate.audit_denied_ssh(call, host, &cmd.program, &cmd.args, &why);
    RunError::Denied(why)
}

impl wit::Host for CallState {
    async fn run(&mut self, host: String, cmd: Command) -> Result<Output, RunError> {
        Err(run_denied(&self.gate, &self.call, &host, &cmd))
    }
}
