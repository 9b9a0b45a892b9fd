//! Durable spawn state: an embedded SQLite database (`<state_dir>/spawns.sqlite`,
//! WAL mode) with one row per spawn and its events.
//!
//! The service writes a spawn's new state here *before* acting on it, so a
//! host killed at any point finds every spawn again. `synchronous = NORMAL`
//! in WAL mode keeps every committed transaction across a crash of the
//! process (SIGKILL); only a power loss may drop the last commits.
//!
//! The database has a schema version that only moves forward, through the
//! ordered migrations of [`schema`]; a spawn's record is the row type of
//! that version ([`row`]), converted explicitly to and from the service's
//! [`Spawn`].
//!
//! Secrets are never stored: the callback token only as its sha256, the
//! hub's environment not at all (the job already has it once submitted).

mod row;
mod schema;

pub use row::{RowError, StoredSpawnV1, StoredUserV1, StoredValueV1};
pub use schema::{backup_path, OpenError, CURRENT, MIGRATION};

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{Spawn, SpawnEvent, SpawnState};

/// Most events kept per spawn (final events come on top: at most two). See
/// [`Store::add_event`].
pub const MAX_EVENTS: usize = 200;

/// A stored spawn, read back: the service's spawn and its callback-token
/// hash.
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
    /// Opens (or creates, 0600) `<state_dir>/spawns.sqlite` and migrates it
    /// to the current schema version ([`schema`]); a database of a newer
    /// version is refused before anything is written to it.
    pub fn open(state_dir: &Path) -> Result<Store, OpenError> {
        let path = state_dir.join("spawns.sqlite");
        let sqlite = |action| {
            let path = path.clone();
            move |source| OpenError::Sqlite {
                path,
                action,
                source,
            }
        };
        let mut conn = Connection::open(&path).map_err(sqlite("open the spawn database"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite("set the busy timeout of"))?;
        // Refused before the first write (the journal mode is one).
        schema::check(schema::version(&conn, &path)?, &path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite("set WAL mode on"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite("set synchronous = NORMAL on"))?;
        schema::migrate(&mut conn, &path)?;
        Ok(Store {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the database (after [`Store::open`]: [`CURRENT`]).
    pub fn schema_version(&self) -> Result<i64> {
        Ok(schema::version(&self.conn(), &self.path)?)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts or updates a spawn.
    pub fn save(&self, s: &Spawn, callback_hash: Option<&str>) -> Result<()> {
        let record = serde_json::to_string(&StoredSpawnV1::from(s))?;
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
            "SELECT id, record, fingerprint, callback_hash, state FROM spawns ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, record, fingerprint, callback_hash, state) = row?;
            let unreadable = || {
                format!(
                    "the record of spawn {id} in {path} (store schema version {CURRENT}) is unreadable; \
                     fix or delete its row (sqlite3 {path} \"DELETE FROM spawns WHERE id = '{id}'\")",
                    path = self.path.display()
                )
            };
            let stored: StoredSpawnV1 = serde_json::from_str(&record).with_context(unreadable)?;
            let mut spawn = stored.into_spawn(fingerprint).with_context(unreadable)?;
            // The `state` column, when it names a state, wins over the
            // record's, as it did before the store had versions.
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
pub(crate) mod tests {
    use super::*;
    use crate::model::{User, Value};
    use std::collections::BTreeSet;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/store-0.1.0/spawns.sqlite"
    );

    /// A temporary state directory holding a copy of the 0.1.0 store
    /// fixture (`tests/fixtures/store-0.1.0/`).
    pub(crate) fn fixture_copy() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(FIXTURE, dir.path().join("spawns.sqlite")).unwrap();
        dir
    }

    fn at(t: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn alice() -> User {
        User {
            name: "alice".into(),
            groups: vec![],
            admin: false,
        }
    }

    fn bob() -> User {
        User {
            name: "bob".into(),
            groups: strings(&["staff", "gpu-users"]),
            admin: true,
        }
    }

    /// A spawn of the fixture with what most share; each test value below
    /// sets the rest.
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        id: &str,
        user: User,
        server_name: &str,
        request_id: &str,
        state: SpawnState,
        progress: u8,
        [created, updated, since]: [&str; 3],
        fingerprint: &str,
    ) -> Spawn {
        Spawn {
            id: id.into(),
            user,
            server_name: server_name.into(),
            request_id: request_id.into(),
            instance: "slurm".into(),
            state,
            reason: None,
            progress,
            raw_options: Default::default(),
            options: Some(Default::default()),
            cmd: strings(&["jupyterhub-singleuser", "--debug"]),
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
            created_at: at(created),
            updated_at: at(updated),
            state_since: at(since),
            submit_started_at: None,
            fingerprint: format!("{fingerprint:0>64}"),
        }
    }

    /// What the 0.1.0 host wrote into the fixture, field by field (see
    /// `write_fixture` in the history of `host/src/store.rs`), with each
    /// spawn's callback-token hash.
    fn fixture_expected() -> Vec<(Spawn, Option<String>)> {
        use SpawnState::*;
        let mut queued = spawn(
            "sp-0a1b2c3d4e5f6071",
            alice(),
            "",
            "req-queued",
            Queued,
            30,
            [
                "2026-11-30T00:53:20Z",
                "2026-11-30T00:53:50.210Z",
                "2026-11-30T00:53:40.140Z",
            ],
            "9e3779b97f4a7c15",
        );
        queued.reason = Some("Priority".into());
        queued.raw_options = [
            ("cores", vec!["4"]),
            ("gpu", vec!["false"]),
            ("mem_gb", vec!["1.5"]),
            ("modules", vec!["python", "cuda/12"]),
            ("partition", vec!["debug"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), strings(&v)))
        .collect();
        queued.options = Some(
            [
                ("cores", Value::Integer(4)),
                ("gpu", Value::Boolean(false)),
                ("mem_gb", Value::Number(1.5)),
                ("partition", Value::Text("debug".into())),
                ("walltime_h", Value::Number(2.0)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        );
        queued.env_names = strings(&[
            "JUPYTERHUB_API_TOKEN",
            "JUPYTERHUB_API_URL",
            "WASMSPAWNER_CALLBACK_TOKEN",
        ]);
        queued.job_id = Some("4242".into());
        queued.plugin_state = r#"{"cluster":"main"}"#.into();
        queued.expected_start = Some(1_796_003_600);
        queued.queue_position = Some(3);
        queued.time_limit_secs = Some(3600);
        queued.submit_started_at = Some(at("2026-11-30T00:53:30.070Z"));

        let mut running = spawn(
            "sp-1122334455667788",
            bob(),
            "gpu",
            "req-running",
            Running,
            70,
            [
                "2026-11-30T00:55:00.700Z",
                "2026-11-30T00:55:30.910Z",
                "2026-11-30T00:55:20.840Z",
            ],
            "3e6be3062f3862f449",
        );
        running.job_id = Some("4243".into());
        running.exec_host = Some("node17".into());
        running.host = Some("node17.cluster.example".into());
        running.port = Some(48123);
        running.time_limit_secs = Some(7200);
        running.end_time = Some(1_796_007_300);
        running.submit_started_at = Some(at("2026-11-30T00:55:05.735Z"));

        let mut ready = spawn(
            "sp-99aabbccddeeff00",
            alice(),
            "tunneled",
            "req-ready",
            Ready,
            100,
            [
                "2026-11-30T00:56:40.400Z",
                "2026-11-30T00:57:10.610Z",
                "2026-11-30T00:57:00.540Z",
            ],
            "7c398e92a4f17b6c7d",
        );
        ready.options = Some([("interface".to_string(), Value::Text("lab".into()))].into());
        ready.job_id = Some("4244".into());
        ready.exec_host = Some("node3".into());
        ready.host = Some("127.0.0.1".into());
        ready.port = Some(40001);
        ready.tunnel_target = Some("node3:8888".into());
        ready.submit_started_at = Some(at("2026-11-30T00:56:41.407Z"));

        let mut stopped = spawn(
            "sp-0102030405060708",
            bob(),
            "",
            "req-stopped",
            Stopped,
            100,
            [
                "2026-11-30T00:58:20.100Z",
                "2026-11-30T00:58:50.310Z",
                "2026-11-30T00:58:40.240Z",
            ],
            "ba073a1f1aaa93e4b1",
        );
        stopped.job_id = Some("4245".into());
        stopped.exit_code = Some(0);
        stopped.reason = Some("stopped by the hub".into());
        stopped.submit_started_at = Some(at("2026-11-30T00:58:21.107Z"));

        let mut failed = spawn(
            "sp-f0e0d0c0b0a09080",
            alice(),
            "big",
            "req-failed",
            Failed,
            100,
            [
                "2026-11-30T01:00:00.800Z",
                "2026-11-30T01:00:30.010Z",
                "2026-11-30T01:00:20.940Z",
            ],
            "f7d4e5ab9063ac5ce5",
        );
        failed.options = Some([("cores".to_string(), Value::Integer(-1))].into());
        failed.job_id = Some("4246".into());
        failed.exit_code = Some(137);
        failed.unknown_polls = 5;
        failed.flagged = Some("the scheduler answered unknown 5 times in a row".into());
        failed.reason = Some("job ended: OUT_OF_MEMORY (exit 137) — « mémoire »".into());
        failed.submit_started_at = Some(at("2026-11-30T01:00:01.807Z"));

        let mut submitting = spawn(
            "sp-5555666677778888",
            bob(),
            "later",
            "req-submitting",
            Submitting,
            10,
            [
                "2026-11-30T01:01:40.500Z",
                "2026-11-30T01:02:10.710Z",
                "2026-11-30T01:02:00.640Z",
            ],
            "135a29138061cc4d519",
        );
        submitting.options = None;

        let mut stopping = spawn(
            "sp-abcdefabcdef0123",
            alice(),
            "old",
            "req-stopping",
            Stopping,
            100,
            [
                "2026-11-30T01:03:20.200Z",
                "2026-11-30T01:03:50.410Z",
                "2026-11-30T01:03:40.340Z",
            ],
            "173703cc47bd5dd4d4d",
        );
        stopping.job_id = Some("4247".into());
        stopping.reason = Some(
            "cancel failed: scancel: error: Kill job error on job id 4247 (retry in 4 s)".into(),
        );
        stopping.submit_started_at = Some(at("2026-11-30T01:03:21.207Z"));

        let hash = |h: &str| Some(h.repeat(32));
        vec![
            (queued, hash("ab")),
            (running, hash("cd")),
            (ready, None),
            (stopped, None),
            (failed, None),
            (submitting, hash("ef")),
            (stopping, None),
        ]
    }

    /// The fixture's events: (seq, spawn, time, state, progress, message, final).
    const FIXTURE_EVENTS: [(i64, &str, &str, &str, u8, &str, bool); 11] = [
        (
            1,
            "sp-0a1b2c3d4e5f6071",
            "2026-11-30T00:53:21.007Z",
            "submitting",
            10,
            "the spawn is submitting",
            false,
        ),
        (
            2,
            "sp-0a1b2c3d4e5f6071",
            "2026-11-30T00:53:31.077Z",
            "queued",
            30,
            "submitted as job 4242",
            false,
        ),
        (
            3,
            "sp-0a1b2c3d4e5f6071",
            "2026-11-30T00:53:41.147Z",
            "queued",
            30,
            "queued: Priority",
            false,
        ),
        (
            4,
            "sp-1122334455667788",
            "2026-11-30T00:55:06.742Z",
            "queued",
            30,
            "submitted as job 4243",
            false,
        ),
        (
            5,
            "sp-1122334455667788",
            "2026-11-30T00:55:20.840Z",
            "running",
            70,
            "running on node17",
            false,
        ),
        (
            6,
            "sp-99aabbccddeeff00",
            "2026-11-30T00:56:50.470Z",
            "running",
            70,
            "running on node3",
            false,
        ),
        (
            7,
            "sp-99aabbccddeeff00",
            "2026-11-30T00:57:00.540Z",
            "ready",
            100,
            "server ready at 127.0.0.1:40001 (tunnel to node3:8888)",
            true,
        ),
        (
            8,
            "sp-0102030405060708",
            "2026-11-30T00:58:30.170Z",
            "ready",
            100,
            "server ready at node5:8888",
            true,
        ),
        (
            9,
            "sp-0102030405060708",
            "2026-11-30T00:58:40.240Z",
            "stopping",
            100,
            "stop requested",
            false,
        ),
        (
            10,
            "sp-0102030405060708",
            "2026-11-30T00:58:50.310Z",
            "stopped",
            100,
            "stopped",
            true,
        ),
        (
            11,
            "sp-f0e0d0c0b0a09080",
            "2026-11-30T01:00:20.940Z",
            "failed",
            100,
            "job ended: OUT_OF_MEMORY (exit 137) — « mémoire »",
            true,
        ),
    ];

    fn assert_is_the_fixture(store: &Store) {
        let loaded: Vec<(Spawn, Option<String>)> = store
            .load_all()
            .unwrap()
            .into_iter()
            .map(|s| (s.spawn, s.callback_hash))
            .collect();
        let expected = fixture_expected();
        assert_eq!(loaded.len(), expected.len());
        for (got, want) in loaded.iter().zip(&expected) {
            assert_eq!(got, want, "spawn {}", want.0.id);
        }
        let mut events = Vec::new();
        for (s, _) in &expected {
            events.extend(store.events(&s.id, 0).unwrap());
        }
        events.sort_by_key(|e| e.seq);
        let want: Vec<SpawnEvent> = FIXTURE_EVENTS
            .iter()
            .map(
                |&(seq, id, time, state, progress, message, is_final)| SpawnEvent {
                    seq,
                    spawn_id: id.into(),
                    time: at(time),
                    state: SpawnState::parse(state).unwrap(),
                    progress,
                    message: message.into(),
                    is_final,
                },
            )
            .collect();
        assert_eq!(events, want);
        // Events after a sequence number, as a replay asks.
        assert_eq!(store.events("sp-0102030405060708", 8).unwrap().len(), 2);
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn the_0_1_0_store_is_migrated_with_every_field_and_reopening_changes_nothing() {
        assert_eq!(
            user_version(Path::new(FIXTURE)),
            0,
            "the fixture is unversioned"
        );
        let dir = fixture_copy();
        let db = dir.path().join("spawns.sqlite");
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), i64::from(CURRENT));
        assert_is_the_fixture(&store);
        drop(store);
        // The copy a 0.1.0 host can run on again: the fixture's content.
        let bak = backup_path(&db, 0);
        assert_eq!(bak, dir.path().join("spawns.sqlite.v0.bak"));
        assert_eq!(user_version(&bak), 0);
        let records = |p: &Path| -> Vec<(String, String, Option<String>)> {
            let c = Connection::open(p).unwrap();
            let mut st = c
                .prepare("SELECT id, record, callback_hash FROM spawns ORDER BY id")
                .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(records(&bak), records(Path::new(FIXTURE)));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&bak).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        // Again: nothing to migrate, not a byte written, nothing copied.
        let before = std::fs::read(&db).unwrap();
        let bak_before = std::fs::metadata(&bak).unwrap().modified().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), i64::from(CURRENT));
        assert_is_the_fixture(&store);
        drop(store);
        assert!(
            std::fs::read(&db).unwrap() == before,
            "reopening changed the file"
        );
        assert_eq!(
            std::fs::metadata(&bak).unwrap().modified().unwrap(),
            bak_before
        );
        let files: BTreeSet<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
            .collect();
        assert_eq!(
            files,
            BTreeSet::from(["spawns.sqlite".into(), "spawns.sqlite.v0.bak".into()])
        );
        // What this host writes reads back the same.
        let store = Store::open(dir.path()).unwrap();
        for (s, hash) in fixture_expected() {
            store.save(&s, hash.as_deref()).unwrap();
        }
        assert_is_the_fixture(&store);
    }

    #[test]
    fn records_of_hosts_before_the_0_1_0_fields_are_completed_by_the_migration() {
        let dir = fixture_copy();
        let db = dir.path().join("spawns.sqlite");
        let id = "sp-0a1b2c3d4e5f6071";
        {
            // As a host before the queue facts, tunnels and submit start
            // wrote it: those keys absent.
            let c = Connection::open(&db).unwrap();
            let n = c
                .execute(
                    "UPDATE spawns SET record = json_remove(record, '$.queue_position',
                        '$.time_limit_secs', '$.end_time', '$.tunnel_target', '$.submit_started_at')
                     WHERE id = ?1",
                    [id],
                )
                .unwrap();
            assert_eq!(n, 1);
        }
        let store = Store::open(dir.path()).unwrap();
        let got = store
            .load_all()
            .unwrap()
            .into_iter()
            .find(|s| s.spawn.id == id)
            .unwrap()
            .spawn;
        let mut want = fixture_expected().remove(0).0;
        want.queue_position = None;
        want.time_limit_secs = None;
        want.submit_started_at = None;
        assert_eq!(got, want);
        // The row itself is complete now: a strict version 1 record.
        let record: String = store
            .conn()
            .query_row("SELECT record FROM spawns WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&record).unwrap();
        for k in [
            "queue_position",
            "time_limit_secs",
            "end_time",
            "tunnel_target",
            "submit_started_at",
        ] {
            assert_eq!(v.get(k), Some(&serde_json::Value::Null), "{k}");
        }
        serde_json::from_value::<StoredSpawnV1>(v).unwrap();
    }

    #[test]
    fn a_record_missing_a_field_after_the_migration_is_an_error_naming_the_spawn_and_file() {
        let dir = fixture_copy();
        let store = Store::open(dir.path()).unwrap();
        store
            .conn()
            .execute(
                "UPDATE spawns SET record = json_remove(record, '$.exit_code') WHERE id = 'sp-0102030405060708'",
                [],
            )
            .unwrap();
        let e = format!("{:#}", store.load_all().unwrap_err());
        assert!(e.contains("sp-0102030405060708"), "{e}");
        assert!(e.contains(&store.path().display().to_string()), "{e}");
        assert!(e.contains("missing field `exit_code`"), "{e}");
    }

    #[test]
    fn a_store_of_a_newer_version_is_refused_untouched_with_the_file_and_versions() {
        let dir = fixture_copy();
        let db = dir.path().join("spawns.sqlite");
        let newer = CURRENT + 1;
        Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", newer)
            .unwrap();
        let before = std::fs::read(&db).unwrap();
        let e = Store::open(dir.path())
            .err()
            .expect("a newer store is refused");
        let msg = e.to_string();
        assert!(
            matches!(e, OpenError::TooNew { found, known, .. } if found == i64::from(newer) && known == CURRENT),
            "{msg}"
        );
        assert!(msg.contains(&db.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("schema version {newer}, newer than")),
            "{msg}"
        );
        assert!(msg.contains(&format!("versions up to {CURRENT}")), "{msg}");
        assert!(msg.contains("newer Wasmspawner"), "{msg}");
        assert!(
            std::fs::read(&db).unwrap() == before,
            "the refused file changed"
        );
        assert_eq!(user_version(&db), i64::from(newer));
        assert!(!backup_path(&db, CURRENT).exists());
    }

    #[test]
    fn a_new_store_starts_at_the_current_version_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), i64::from(CURRENT));
        assert!(store.load_all().unwrap().is_empty());
        assert!(!backup_path(store.path(), 0).exists());
    }

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
