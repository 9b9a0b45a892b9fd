//! The append-only audit log: one JSON line per capability decision, and for
//! an allowed program a `start` line written (one `write`, O_APPEND) before
//! the program starts and an `end` line with how it ended — so a host
//! killed in between still leaves the record of what it started.
//!
//! Everything a plugin supplies is bounded before it is written: argv
//! elements are cut to [`MAX_ARG`] bytes and the record to [`MAX_ARGS`]
//! elements, each cut noted with the original length and a sha256 prefix of
//! what was cut; texts pass [`crate::sanitize`]. The file rotates at the
//! operator's size cap (`[audit] max_mib`, `keep`), so a flooding plugin can
//! never fill the disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::AuditConfig;
use crate::sanitize;

/// Longest argv element kept in a record.
pub const MAX_ARG: usize = 256;
/// Most argv elements kept in a record.
pub const MAX_ARGS: usize = 64;
/// Longest program name kept in a record.
const MAX_PROGRAM: usize = 256;

/// One capability decision or program outcome.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub instance: String,
    /// sha256 of the plugin component that asked.
    pub digest: String,
    /// The export that asked (`form`, `validate`, `submit`, `status`,
    /// `cancel`), `describe` while loading.
    pub phase: &'static str,
    pub spawn_id: Option<String>,
    pub user: Option<String>,
    /// `process.run`, `detached.start`, `detached.signal`, `ssh.run`, or a
    /// host decision such as `execution-host`.
    pub capability: &'static str,
    /// `decision` (a deny, or a signal), `start` (written before the program
    /// starts), `end` (how it ended).
    pub event: &'static str,
    /// The program as the plugin named it.
    pub program: String,
    /// The argv as executed (identity prefix and resolved path included),
    /// with spawn secrets redacted, cut as described above.
    pub argv: Vec<String>,
    /// Names (never values) of the environment variables the child got.
    pub env: Vec<String>,
    /// As whom the program runs: `host` or `user`.
    pub identity: Option<&'static str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Why it was denied, or how it failed.
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
}

/// Room for the cut marker after a cut element.
const MARK: usize = 96;

/// `argv` bounded for a record: long elements cut, the count capped, each
/// cut marked with the original length and a sha256 prefix; each element
/// first passes `redact`. Elements already bounded pass unchanged.
pub fn bounded_argv_with<S: AsRef<str>>(
    argv: &[S],
    redact: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let hash = |b: &[u8]| hex::encode(&Sha256::digest(b)[..8]);
    let mut out: Vec<String> = argv
        .iter()
        .take(MAX_ARGS)
        .map(|a| {
            let redacted = redact(a.as_ref());
            let a = redacted.as_deref().unwrap_or(a.as_ref());
            if a.len() <= MAX_ARG + MARK && sanitize::is_clean(a) {
                a.to_string()
            } else {
                let kept = sanitize::text(a, MAX_ARG.min(a.len()));
                if a.len() <= MAX_ARG {
                    kept
                } else {
                    format!(
                        "{kept}<cut: {} bytes, sha256 {}>",
                        a.len(),
                        hash(a.as_bytes())
                    )
                }
            }
        })
        .collect();
    if argv.len() > MAX_ARGS + 1
        || (argv.len() == MAX_ARGS + 1 && !argv[MAX_ARGS].as_ref().starts_with("<cut: "))
    {
        let mut h = Sha256::new();
        let mut bytes = 0usize;
        for a in &argv[MAX_ARGS..] {
            let a = a.as_ref();
            h.update((a.len() as u64).to_le_bytes());
            h.update(a.as_bytes());
            bytes += a.len();
        }
        out.push(format!(
            "<cut: {} more arguments, {bytes} bytes, sha256 {}>",
            argv.len() - MAX_ARGS,
            hex::encode(&h.finalize()[..8])
        ));
    } else if argv.len() == MAX_ARGS + 1 {
        out.push(argv[MAX_ARGS].as_ref().to_string());
    }
    out
}

/// [`bounded_argv_with`] without redaction.
pub fn bounded_argv<S: AsRef<str>>(argv: &[S]) -> Vec<String> {
    bounded_argv_with(argv, |_| None)
}

struct Sink {
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
}

/// Where audit records go.
pub struct AuditLog {
    path: Option<PathBuf>,
    rotation: AuditConfig,
    sink: Mutex<Sink>,
    /// Programs started, by instance.
    programs: Mutex<std::collections::HashMap<String, u64>>,
}

impl AuditLog {
    /// Appends to `path` (created 0600 if missing), rotating at the
    /// default size cap.
    pub fn open(path: &Path) -> Result<AuditLog> {
        Self::open_with(path, AuditConfig::default())
    }

    /// Appends to `path`, rotating as `rotation` says.
    pub fn open_with(path: &Path, rotation: AuditConfig) -> Result<AuditLog> {
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(AuditLog {
            path: Some(path.to_path_buf()),
            rotation,
            sink: Mutex::new(Sink {
                file: Some(file),
                size,
            }),
            programs: Default::default(),
        })
    }

    /// A log that only goes to `tracing` (for one-off CLI calls without a
    /// state directory).
    pub fn discard() -> AuditLog {
        AuditLog {
            path: None,
            rotation: AuditConfig::default(),
            sink: Mutex::new(Sink {
                file: None,
                size: 0,
            }),
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

    /// Writes one record; returns once it is in the file (one `write` on an
    /// O_APPEND descriptor: in the kernel, so a host killed right after
    /// still leaves it).
    pub fn write(&self, mut record: AuditRecord) {
        if record.event == "start" {
            *self
                .programs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(record.instance.clone())
                .or_default() += 1;
        }
        if record.event.is_empty() {
            record.event = "decision";
        }
        if record.time.is_empty() {
            record.time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
        record.program = sanitize::text(&record.program, MAX_PROGRAM);
        if record.argv.len() > MAX_ARGS + 1 || record.argv.iter().any(|a| a.len() > MAX_ARG + MARK)
        {
            record.argv = bounded_argv(&record.argv);
        }
        record.reason = record.reason.as_deref().map(sanitize::reason);
        record.user = record.user.as_deref().map(|u| sanitize::text(u, 256));
        if record.decision == "deny" {
            tracing::warn!(
                instance = %record.instance,
                capability = record.capability,
                phase = record.phase,
                program = %record.program,
                spawn_id = record.spawn_id.as_deref().unwrap_or("-"),
                "capability denied: {}",
                record.reason.as_deref().unwrap_or("")
            );
        }
        let mut line = serde_json::to_vec(&record).expect("audit records serialize");
        line.push(b'\n');
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if sink.file.is_some() && sink.size + line.len() as u64 > self.rotation.max_bytes {
            self.rotate(&mut sink);
        }
        if let Some(f) = sink.file.as_mut() {
            // One write per record: with O_APPEND, lines never interleave.
            match f.write_all(&line) {
                Ok(()) => sink.size += line.len() as u64,
                Err(e) => tracing::error!("cannot write the audit log: {e}"),
            }
        }
    }

    /// `audit.jsonl` → `.1` → `.2` …, at most `keep` old files.
    fn rotate(&self, sink: &mut Sink) {
        let Some(path) = &self.path else { return };
        let old = |n: u32| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.rotation.keep == 0 {
            let _ = std::fs::remove_file(path);
        } else {
            let _ = std::fs::remove_file(old(self.rotation.keep));
            for n in (1..self.rotation.keep).rev() {
                let _ = std::fs::rename(old(n), old(n + 1));
            }
            let _ = std::fs::rename(path, old(1));
        }
        match open_append(path) {
            Ok(f) => {
                sink.file = Some(f);
                sink.size = 0;
            }
            Err(e) => tracing::error!("cannot reopen the audit log after rotating it: {e:#}"),
        }
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open the audit log {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_many_arguments_are_cut_with_length_and_hash() {
        let big = "x".repeat(1 << 20);
        let argv: Vec<String> = std::iter::repeat_n(big.clone(), 120).collect();
        let cut = bounded_argv(&argv);
        assert_eq!(cut.len(), MAX_ARGS + 1);
        assert!(
            cut[0].contains("<cut: 1048576 bytes, sha256 "),
            "{}",
            cut[0]
        );
        assert!(cut[0].len() < MAX_ARG + 64);
        assert!(
            cut[MAX_ARGS].contains("56 more arguments"),
            "{}",
            cut[MAX_ARGS]
        );
        let total: usize = cut.iter().map(String::len).sum();
        assert!(total < 32 * 1024, "{total}");
        assert_eq!(bounded_argv(&["a\nb"]), vec!["a b".to_string()]);
    }

    #[test]
    fn the_log_rotates_at_its_cap_and_keeps_so_many() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_with(
            &path,
            AuditConfig {
                max_bytes: 64 * 1024,
                keep: 2,
            },
        )
        .unwrap();
        let big = "y".repeat(64 << 10);
        for _ in 0..80 {
            log.write(AuditRecord {
                instance: "a".into(),
                capability: "process.run",
                decision: "deny",
                program: big.clone(),
                argv: vec![big.clone(); 70],
                reason: Some(big.clone()),
                ..Default::default()
            });
        }
        let mut total = 0;
        for e in std::fs::read_dir(dir.path()).unwrap() {
            total += e.unwrap().metadata().unwrap().len();
        }
        // Each file stays under the cap (a record is at most ~25 KB).
        assert!(total <= 3 * 64 * 1024, "{total} bytes on disk");
        assert!(dir.path().join("audit.jsonl.2").exists());
        assert!(!dir.path().join("audit.jsonl.3").exists());
    }
}
