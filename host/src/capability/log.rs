//! `log.log`: plugin messages in the host's log, tagged with the instance
//! and the spawn, capped at 4 KiB and stripped of control characters (so a
//! plugin cannot forge log lines).

use super::CallState;
use crate::runtime::bindings::log::{self as wit, Level};

impl wit::Host for CallState {
    async fn log(&mut self, level: Level, message: String) {
        let message = self.gate.log_message(&message);
        let instance = self.gate.instance();
        let spawn = self.call.spawn_id.as_deref().unwrap_or("-");
        match level {
            Level::Trace => tracing::trace!(target: "plugin", instance, spawn, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", instance, spawn, "{message}"),
            Level::Info => tracing::info!(target: "plugin", instance, spawn, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", instance, spawn, "{message}"),
            Level::Error => tracing::error!(target: "plugin", instance, spawn, "{message}"),
        }
    }
}
