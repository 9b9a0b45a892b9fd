//! The append-only audit log: one JSON line per capability call, allowed or
//! denied, with what ran, for whom, and how it ended.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::Serialize;

/// One capability call.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub instance: String,
    /// sha256 of the plugin component that asked.
    pub digest: String,
    pub spawn_id: Option<String>,
    pub user: Option<String>,
    /// `process.run`, `detached.start`, `detached.signal`, `ssh.run`.
    pub capability: &'static str,
    /// The program as the plugin named it.
    pub program: String,
    /// The argv as executed (run-as prefix and resolved path included),
    /// with spawn secrets redacted.
    pub argv: Vec<String>,
    /// Names (never values) of the environment variables the child got.
    pub env: Vec<String>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Why it was denied, or how it failed.
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
}

/// Where audit records go.
pub struct AuditLog {
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
    /// Programs run (allowed and finished), by instance.
    programs: Mutex<std::collections::HashMap<String, u64>>,
}

impl AuditLog {
    /// Appends to `path` (created 0600 if missing).
    pub fn open(path: &Path) -> Result<AuditLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open the audit log {}", path.display()))?;
        Ok(AuditLog {
            path: Some(path.to_path_buf()),
            file: Mutex::new(Some(file)),
            programs: Default::default(),
        })
    }

    /// A log that only goes to `tracing` (for one-off CLI calls without a
    /// state directory).
    pub fn discard() -> AuditLog {
        AuditLog {
            path: None,
            file: Mutex::new(None),
            programs: Default::default(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// How many programs each instance has run (scheduler commands,
    /// detached starts, SSH commands) since the host started.
    pub fn programs_run(&self) -> std::collections::HashMap<String, u64> {
        self.programs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn write(&self, mut record: AuditRecord) {
        if record.decision == "allow" && record.capability != "detached.signal" {
            *self
                .programs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(record.instance.clone())
                .or_default() += 1;
        }
        if record.time.is_empty() {
            record.time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
        if record.decision == "deny" {
            tracing::warn!(
                instance = %record.instance,
                capability = record.capability,
                program = %record.program,
                spawn_id = record.spawn_id.as_deref().unwrap_or("-"),
                "capability denied: {}",
                record.reason.as_deref().unwrap_or("")
            );
        }
        let mut line = serde_json::to_vec(&record).expect("audit records serialize");
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = guard.as_mut() {
            // One write per record: with O_APPEND, lines never interleave.
            if let Err(e) = f.write_all(&line) {
                tracing::error!("cannot write the audit log: {e}");
            }
        }
    }
}
