//! Durable spawn state: an embedded SQLite database (`<state_dir>/spawns.sqlite`,
//! WAL mode) with one row per spawn and its events.
//!
//! The service writes a spawn's new state here *before* acting on it, so a
//! host killed at any point finds every spawn again. `synchronous = NORMAL`
//! in WAL mode keeps every committed transaction across a crash of the
//! process (SIGKILL); only a power loss may drop the last commits.
//!
//! Secrets are never stored: the callback token only as its sha256, the
//! hub's environment not at all (the job already has it once submitted).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{Spawn, SpawnEvent, SpawnState};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spawns (
    id            TEXT PRIMARY KEY,
    user          TEXT NOT NULL,
    server_name   TEXT NOT NULL,
    request_id    TEXT NOT NULL,
    instance      TEXT NOT NULL,
    state         TEXT NOT NULL,
    job_id        TEXT,
    fingerprint   TEXT NOT NULL,
    -- sha256 (hex) of the per-spawn callback token; NULL once used or void
    callback_hash TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    -- the whole record as JSON (options, plugin state, host, port, reason, ...)
    record        TEXT NOT NULL,
    UNIQUE (user, server_name, request_id)
);
CREATE INDEX IF NOT EXISTS spawns_user ON spawns (user);
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    spawn_id TEXT NOT NULL,
    time     TEXT NOT NULL,
    state    TEXT NOT NULL,
    progress INTEGER NOT NULL,
    message  TEXT NOT NULL,
    final    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_spawn ON events (spawn_id, seq);
";

/// Most events kept per spawn (final events come on top: at most two). See
/// [`Store::add_event`].
pub const MAX_EVENTS: usize = 200;

/// A spawn as stored: the record and its callback-token hash.
#[derive(Debug, Clone)]
pub struct Stored {
    pub spawn: Spawn,
    pub callback_hash: Option<String>,
}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (or creates, 0600) `<state_dir>/spawns.sqlite`.
    pub fn open(state_dir: &Path) -> Result<Store> {
        let path = state_dir.join("spawns.sqlite");
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open the spawn database {}", path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("cannot create the tables in {}", path.display()))?;
        Ok(Store {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts or updates a spawn.
    pub fn save(&self, s: &Spawn, callback_hash: Option<&str>) -> Result<()> {
        let record = serde_json::to_string(s)?;
        self.conn()
            .prepare_cached(
                "INSERT INTO spawns (id, user, server_name, request_id, instance, state, job_id,
                    fingerprint, callback_hash, created_at, updated_at, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (id) DO UPDATE SET state = ?6, job_id = ?7, callback_hash = ?9,
                    updated_at = ?11, record = ?12",
            )?
            .execute(params![
                s.id,
                s.user.name,
                s.server_name,
                s.request_id,
                s.instance,
                s.state.as_str(),
                s.job_id,
                s.fingerprint,
                callback_hash,
                s.created_at.to_rfc3339(),
                s.updated_at.to_rfc3339(),
                record
            ])
            .with_context(|| format!("cannot save spawn {} in {}", s.id, self.path.display()))?;
        Ok(())
    }

    /// Removes a spawn and its events (a request refused by validation).
    pub fn delete(&self, id: &str) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute("DELETE FROM events WHERE spawn_id = ?1", [id])?;
        tx.execute("DELETE FROM spawns WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    /// Every spawn, oldest first.
    pub fn load_all(&self) -> Result<Vec<Stored>> {
        let c = self.conn();
        let mut stmt = c.prepare(
            "SELECT record, fingerprint, callback_hash, state FROM spawns ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (record, fingerprint, callback_hash, state) = row?;
            let mut spawn: Spawn = serde_json::from_str(&record).with_context(|| {
                format!("a spawn record in {} is unreadable", self.path.display())
            })?;
            spawn.fingerprint = fingerprint;
            if let Some(st) = SpawnState::parse(&state) {
                spawn.state = st;
            }
            out.push(Stored {
                spawn,
                callback_hash,
            });
        }
        Ok(out)
    }

    /// Appends an event; returns it with its sequence number, or `None` when
    /// it was not stored. A spawn's events stay bounded:
    ///
    /// - an event identical to the spawn's previous one (state, message,
    ///   final) is not stored again;
    /// - a spawn keeps at most [`MAX_EVENTS`] events: beyond that a new
    ///   non-final event takes the place of the newest non-final one (the
    ///   first ones, which tell how the spawn began, stay), and a final event
    ///   (ready, failed, stopped: at most two per spawn) is always stored.
    pub fn add_event(&self, mut e: SpawnEvent) -> Result<Option<SpawnEvent>> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let last = tx
            .prepare_cached(
                "SELECT state, message, final FROM events WHERE spawn_id = ?1
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([&e.spawn_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                ))
            })
            .optional()?;
        if last.is_some_and(|(state, message, fin)| {
            state == e.state.as_str() && message == e.message && fin == e.is_final
        }) {
            return Ok(None);
        }
        if !e.is_final {
            let n: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM events WHERE spawn_id = ?1")?
                .query_row([&e.spawn_id], |r| r.get(0))?;
            if n >= MAX_EVENTS as i64 {
                tx.prepare_cached(
                    "DELETE FROM events WHERE seq = (SELECT seq FROM events
                     WHERE spawn_id = ?1 AND final = 0 ORDER BY seq DESC LIMIT 1)",
                )?
                .execute([&e.spawn_id])?;
            }
        }
        tx.prepare_cached(
            "INSERT INTO events (spawn_id, time, state, progress, message, final)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            e.spawn_id,
            e.time.to_rfc3339(),
            e.state.as_str(),
            e.progress,
            e.message,
            e.is_final
        ])?;
        e.seq = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Some(e))
    }

    /// A spawn's events after `after` (0 for all), in order.
    pub fn events(&self, spawn_id: &str, after: i64) -> Result<Vec<SpawnEvent>> {
        let c = self.conn();
        let mut stmt = c.prepare_cached(
            "SELECT seq, time, state, progress, message, final FROM events
             WHERE spawn_id = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![spawn_id, after], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u8>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, time, state, progress, message, is_final) = row?;
            out.push(SpawnEvent {
                seq,
                spawn_id: spawn_id.to_string(),
                time: chrono::DateTime::parse_from_rfc3339(&time)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or_default(),
                state: SpawnState::parse(&state).unwrap_or(SpawnState::Failed),
                progress,
                message,
                is_final,
            });
        }
        Ok(out)
    }

    /// The stored callback-token hash of a spawn.
    pub fn callback_hash(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT callback_hash FROM spawns WHERE id = ?1",
                [id],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(state: SpawnState, message: &str, is_final: bool) -> SpawnEvent {
        SpawnEvent {
            seq: 0,
            spawn_id: "sp-1".into(),
            time: chrono::Utc::now(),
            state,
            progress: state.progress(),
            message: message.into(),
            is_final,
        }
    }

    #[test]
    fn repeats_are_coalesced_and_events_stay_bounded_with_the_finals_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let q = |m: &str| event(SpawnState::Queued, m, false);
        assert!(store.add_event(q("submitted")).unwrap().is_some());
        assert!(store.add_event(q("queued: Priority")).unwrap().is_some());
        // The same again: not stored.
        assert!(store.add_event(q("queued: Priority")).unwrap().is_none());
        assert_eq!(store.events("sp-1", 0).unwrap().len(), 2);
        for i in 0..1000 {
            store.add_event(q(&format!("queued: reason {i}"))).unwrap();
        }
        let ev = store.events("sp-1", 0).unwrap();
        assert_eq!(ev.len(), MAX_EVENTS);
        // The first stay, the newest is the last one sent.
        assert_eq!(ev[0].message, "submitted");
        assert_eq!(ev.last().unwrap().message, "queued: reason 999");
        let ready = event(SpawnState::Ready, "server ready at node1:1", true);
        assert!(store.add_event(ready).unwrap().is_some());
        store
            .add_event(event(SpawnState::Stopping, "stop requested", false))
            .unwrap();
        for i in 0..10 {
            store
                .add_event(event(
                    SpawnState::Stopping,
                    &format!("cancel failed {i}"),
                    false,
                ))
                .unwrap();
        }
        store
            .add_event(event(SpawnState::Stopped, "stopped", true))
            .unwrap();
        let ev = store.events("sp-1", 0).unwrap();
        assert!(ev.len() <= MAX_EVENTS + 2, "{}", ev.len());
        let finals: Vec<_> = ev.iter().filter(|e| e.is_final).map(|e| e.state).collect();
        assert_eq!(finals, [SpawnState::Ready, SpawnState::Stopped]);
        assert_eq!(ev.last().unwrap().message, "stopped");
        // Other spawns are not affected.
        let mut other = q("submitted");
        other.spawn_id = "sp-2".into();
        assert!(store.add_event(other).unwrap().is_some());
        assert_eq!(store.events("sp-2", 0).unwrap().len(), 1);
    }
}

#[cfg(test)]
mod write_fixture {
    use super::*;
    use crate::model::{User, Value};
    use chrono::TimeZone;

    fn t(s: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc.timestamp_opt(1_796_000_000 + s, 0).unwrap()
            + chrono::Duration::milliseconds(s * 7 % 1000)
    }

    fn base(id: &str, user: User, server: &str, req: &str, state: SpawnState, at: i64) -> Spawn {
        Spawn {
            id: id.into(),
            user,
            server_name: server.into(),
            request_id: req.into(),
            instance: "slurm".into(),
            state,
            reason: None,
            progress: state.progress(),
            raw_options: Default::default(),
            options: None,
            cmd: vec!["jupyterhub-singleuser".into(), "--debug".into()],
            env_names: vec![],
            job_id: None,
            plugin_state: String::new(),
            exec_host: None,
            expected_start: None,
            queue_position: None,
            time_limit_secs: None,
            end_time: None,
            host: None,
            port: None,
            tunnel_target: None,
            exit_code: None,
            unknown_polls: 0,
            flagged: None,
            created_at: t(at),
            updated_at: t(at + 30),
            state_since: t(at + 20),
            submit_started_at: None,
            fingerprint: format!("{:064x}", (at as u128 + 1) * 0x9e37_79b9_7f4a_7c15),
        }
    }

    /// Writes `tests/fixtures/store-0.1.0/` with the code of main as of da53f6c:
    /// `FIXTURE_DIR=... cargo test -p wasmspawner --lib write_fixture -- --ignored`.
    #[test]
    #[ignore]
    fn write() {
        let dir = std::path::PathBuf::from(std::env::var("FIXTURE_DIR").unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir).unwrap();
        let alice = User {
            name: "alice".into(),
            groups: vec![],
            admin: false,
        };
        let bob = User {
            name: "bob".into(),
            groups: vec!["staff".into(), "gpu-users".into()],
            admin: true,
        };
        let mut all = Vec::new();

        // Queued, with options (every kind of value), env names, 0.2 queue facts.
        let mut q = base(
            "sp-0a1b2c3d4e5f6071",
            alice.clone(),
            "",
            "req-queued",
            SpawnState::Queued,
            0,
        );
        q.raw_options = [
            ("partition".to_string(), vec!["debug".to_string()]),
            ("cores".to_string(), vec!["4".to_string()]),
            ("gpu".to_string(), vec!["false".to_string()]),
            ("mem_gb".to_string(), vec!["1.5".to_string()]),
            (
                "modules".to_string(),
                vec!["python".to_string(), "cuda/12".to_string()],
            ),
        ]
        .into_iter()
        .collect();
        q.options = Some(
            [
                ("partition".to_string(), Value::Text("debug".into())),
                ("cores".to_string(), Value::Integer(4)),
                ("gpu".to_string(), Value::Boolean(false)),
                ("mem_gb".to_string(), Value::Number(1.5)),
                ("walltime_h".to_string(), Value::Number(2.0)),
            ]
            .into_iter()
            .collect(),
        );
        q.env_names = vec![
            "JUPYTERHUB_API_TOKEN".into(),
            "JUPYTERHUB_API_URL".into(),
            "WASMSPAWNER_CALLBACK_TOKEN".into(),
        ];
        q.job_id = Some("4242".into());
        q.plugin_state = "{\"cluster\":\"main\"}".into();
        q.reason = Some("Priority".into());
        q.expected_start = Some(1_796_003_600);
        q.queue_position = Some(3);
        q.time_limit_secs = Some(3600);
        q.submit_started_at = Some(t(10));
        store.save(&q, Some(&"ab".repeat(32))).unwrap();
        all.push(q);

        // Running on a node, with host and port from its callback.
        let mut r = base(
            "sp-1122334455667788",
            bob.clone(),
            "gpu",
            "req-running",
            SpawnState::Running,
            100,
        );
        r.options = Some(Default::default());
        r.job_id = Some("4243".into());
        r.exec_host = Some("node17".into());
        r.host = Some("node17.cluster.example".into());
        r.port = Some(48123);
        r.time_limit_secs = Some(7200);
        r.end_time = Some(1_796_007_300);
        r.submit_started_at = Some(t(105));
        store.save(&r, Some(&"cd".repeat(32))).unwrap();
        all.push(r);

        // Ready behind a tunnel, callback token used.
        let mut y = base(
            "sp-99aabbccddeeff00",
            alice.clone(),
            "tunneled",
            "req-ready",
            SpawnState::Ready,
            200,
        );
        y.options = Some(
            [("interface".to_string(), Value::Text("lab".into()))]
                .into_iter()
                .collect(),
        );
        y.job_id = Some("4244".into());
        y.exec_host = Some("node3".into());
        y.host = Some("127.0.0.1".into());
        y.port = Some(40001);
        y.tunnel_target = Some("node3:8888".into());
        y.submit_started_at = Some(t(201));
        store.save(&y, None).unwrap();
        all.push(y);

        // Stopped, with its exit code.
        let mut s = base(
            "sp-0102030405060708",
            bob.clone(),
            "",
            "req-stopped",
            SpawnState::Stopped,
            300,
        );
        s.options = Some(Default::default());
        s.job_id = Some("4245".into());
        s.exit_code = Some(0);
        s.reason = Some("stopped by the hub".into());
        s.submit_started_at = Some(t(301));
        store.save(&s, None).unwrap();
        all.push(s);

        // Failed after the scheduler's silence: flagged, unknown polls, a reason.
        let mut f = base(
            "sp-f0e0d0c0b0a09080",
            alice.clone(),
            "big",
            "req-failed",
            SpawnState::Failed,
            400,
        );
        f.options = Some(
            [("cores".to_string(), Value::Integer(-1))]
                .into_iter()
                .collect(),
        );
        f.job_id = Some("4246".into());
        f.exit_code = Some(137);
        f.unknown_polls = 5;
        f.flagged = Some("the scheduler answered unknown 5 times in a row".into());
        f.reason = Some("job ended: OUT_OF_MEMORY (exit 137) — « mémoire »".into());
        f.submit_started_at = Some(t(401));
        store.save(&f, None).unwrap();
        all.push(f);

        // Submitting, the submit not yet started (no job id).
        let sub = base(
            "sp-5555666677778888",
            bob.clone(),
            "later",
            "req-submitting",
            SpawnState::Submitting,
            500,
        );
        store.save(&sub, Some(&"ef".repeat(32))).unwrap();
        all.push(sub);

        // Stopping, a cancel pending.
        let mut st = base(
            "sp-abcdefabcdef0123",
            alice.clone(),
            "old",
            "req-stopping",
            SpawnState::Stopping,
            600,
        );
        st.options = Some(Default::default());
        st.job_id = Some("4247".into());
        st.reason = Some(
            "cancel failed: scancel: error: Kill job error on job id 4247 (retry in 4 s)".into(),
        );
        st.submit_started_at = Some(t(601));
        store.save(&st, None).unwrap();
        all.push(st);

        let ev = |id: &str, state: SpawnState, msg: &str, fin: bool, at: i64| SpawnEvent {
            seq: 0,
            spawn_id: id.into(),
            time: t(at),
            state,
            progress: state.progress(),
            message: msg.into(),
            is_final: fin,
        };
        for e in [
            ev(
                "sp-0a1b2c3d4e5f6071",
                SpawnState::Submitting,
                "the spawn is submitting",
                false,
                1,
            ),
            ev(
                "sp-0a1b2c3d4e5f6071",
                SpawnState::Queued,
                "submitted as job 4242",
                false,
                11,
            ),
            ev(
                "sp-0a1b2c3d4e5f6071",
                SpawnState::Queued,
                "queued: Priority",
                false,
                21,
            ),
            ev(
                "sp-1122334455667788",
                SpawnState::Queued,
                "submitted as job 4243",
                false,
                106,
            ),
            ev(
                "sp-1122334455667788",
                SpawnState::Running,
                "running on node17",
                false,
                120,
            ),
            ev(
                "sp-99aabbccddeeff00",
                SpawnState::Running,
                "running on node3",
                false,
                210,
            ),
            ev(
                "sp-99aabbccddeeff00",
                SpawnState::Ready,
                "server ready at 127.0.0.1:40001 (tunnel to node3:8888)",
                true,
                220,
            ),
            ev(
                "sp-0102030405060708",
                SpawnState::Ready,
                "server ready at node5:8888",
                true,
                310,
            ),
            ev(
                "sp-0102030405060708",
                SpawnState::Stopping,
                "stop requested",
                false,
                320,
            ),
            ev(
                "sp-0102030405060708",
                SpawnState::Stopped,
                "stopped",
                true,
                330,
            ),
            ev(
                "sp-f0e0d0c0b0a09080",
                SpawnState::Failed,
                "job ended: OUT_OF_MEMORY (exit 137) — « mémoire »",
                true,
                420,
            ),
        ] {
            store.add_event(e).unwrap().unwrap();
        }
        drop(store);
        // What GET /v1/spawns/{id} returns for each (axum's Json: compact).
        let api: String = all
            .iter()
            .map(|s| serde_json::to_string(s).unwrap() + "\n")
            .collect();
        std::fs::write(dir.join("api-spawns.jsonl"), api).unwrap();
    }
}
