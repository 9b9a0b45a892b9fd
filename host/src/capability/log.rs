//! `log.log`: plugin messages in the host's log, tagged with the instance
//! and the spawn, passed through [`crate::sanitize`] (so a plugin cannot
//! forge log lines), cut at 4 KiB, and rate-limited per instance
//! (`limits.log_lines_per_10s`; dropped lines are counted in one warning
//! when logging resumes).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::CallState;
use crate::runtime::bindings::log::{self as wit, Level};

/// A fixed 10-second window of log lines.
#[derive(Debug)]
pub struct LogRate {
    max: u32,
    window: Mutex<(Instant, u32, u64)>,
}

impl LogRate {
    pub fn new(max: u32) -> LogRate {
        LogRate {
            max,
            window: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(lines dropped since the last admitted one)` if this line may
    /// be written, `None` if it is over the rate.
    pub fn admit(&self) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count, dropped) = &mut *w;
        if start.elapsed() >= Duration::from_secs(10) {
            *start = Instant::now();
            *count = 0;
        }
        if *count >= self.max {
            *dropped += 1;
            return None;
        }
        *count += 1;
        Some(std::mem::take(dropped))
    }
}

/// `log` in the capability list.
pub const CAPABILITY: super::Capability = super::Capability {
    interface: "log",
    add_to_linker: |l| {
        wit::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(l, |s| s)
    },
};

impl wit::Host for CallState {
    async fn log(&mut self, level: Level, message: String) {
        let Some(message) = self.gate.log_message(&message) else {
            return;
        };
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

#[cfg(test)]
mod tests {
    #[test]
    fn over_the_rate_lines_are_dropped_and_counted() {
        let r = super::LogRate::new(3);
        assert_eq!(r.admit(), Some(0));
        assert_eq!(r.admit(), Some(0));
        assert_eq!(r.admit(), Some(0));
        assert_eq!(r.admit(), None);
        assert_eq!(r.admit(), None);
    }
}
