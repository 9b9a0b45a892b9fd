//! The store's schema version and the migrations that move a database to
//! it.
//!
//! The version is SQLite's `PRAGMA user_version` of `spawns.sqlite`. It only
//! moves forward, one [`MIGRATION`] at a time, each in the transaction that
//! records its version; a database of a version newer than [`CURRENT`] is
//! refused, untouched ([`OpenError::TooNew`]).
//!
//! | version | what the database holds |
//! |---|---|
//! | 0 | no version recorded: a new file, or the store of a host up to 0.1.0, whose records may lack the fields added after the store (queue position, time limit, end time, tunnel target, submit start) |
//! | 1 | the tables of [`SCHEMA_V1`]; every `record` a complete [`super::row::StoredSpawnV1`] |
//!
//! A new version is one more entry at the end of [`MIGRATION`] (never a
//! change to an entry that shipped), and, when the record changes, a new
//! row type in [`super::row`].

use std::path::{Path, PathBuf};

use rusqlite::{Connection, Transaction, TransactionBehavior};

/// One step: it takes a database of version `to - 1` to version `to`.
pub struct Migration {
    pub to: u32,
    /// What it changes, for the log.
    pub what: &'static str,
    pub apply: fn(&Transaction) -> rusqlite::Result<()>,
}

/// Every migration, in order: entry `i` takes version `i` to `i + 1`.
pub const MIGRATION: &[Migration] = &[Migration {
    to: 1,
    what: "tables of version 1; the record fields absent from stores of hosts up to 0.1.0 written as null",
    apply: v0_to_v1,
}];

/// The version this host writes: the last migration's.
pub const CURRENT: u32 = MIGRATION.len() as u32;

/// The tables of version 1 (as the unversioned host of 0.1.0 made them).
pub const SCHEMA_V1: &str = "
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

/// The record fields hosts before the store's versions added after its
/// first release, which their older records lack (they were read as null).
const ADDED_IN_0_1: [&str; 5] = [
    "queue_position",
    "time_limit_secs",
    "end_time",
    "tunnel_target",
    "submit_started_at",
];

/// 0 → 1: the tables (a new file has none), and every record complete.
fn v0_to_v1(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(SCHEMA_V1)?;
    for field in ADDED_IN_0_1 {
        let path = format!("$.{field}");
        tx.execute(
            "UPDATE spawns SET record = json_insert(record, ?1, NULL)
             WHERE json_type(record, ?1) IS NULL",
            [&path],
        )?;
    }
    Ok(())
}

/// Why the store cannot be opened. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "{path} has store schema version {found}, newer than this host knows (it reads versions up to {known}): \
         it was written by a newer Wasmspawner. Run that version or a newer one, or go back to the copy \
         the newer host kept before it migrated ({path}.v{known}.bak, if there is one: see \
         \"Durable state and recovery\" in docs/api.md); this host has not changed the file",
        path = .path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: u32,
    },
    #[error(
        "{path} has store schema version {found}, which no Wasmspawner writes: the file was changed by \
         something else. Restore it from a backup, or move it away to start with an empty store",
        path = .path.display()
    )]
    BadVersion { path: PathBuf, found: i64 },
    #[error(
        "cannot migrate {path} from store schema version {from} to {to} ({what}): {source}. \
         Nothing was changed (the migration is one transaction); fix what the error names, \
         or run the host that wrote the file",
        path = .path.display()
    )]
    Migration {
        path: PathBuf,
        from: u32,
        to: u32,
        what: &'static str,
        source: rusqlite::Error,
    },
    #[error(
        "cannot copy {path} to {to} before migrating it: {message}. Make room or fix the permissions \
         in the state directory and start again; the store was not changed",
        path = .path.display(),
        to = .to.display()
    )]
    Backup {
        path: PathBuf,
        to: PathBuf,
        message: String,
    },
    #[error("cannot {action} {path}: {source}", path = .path.display())]
    Sqlite {
        path: PathBuf,
        action: &'static str,
        source: rusqlite::Error,
    },
}

/// The version recorded in the database.
pub fn version(conn: &Connection, path: &Path) -> Result<i64, OpenError> {
    conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(|source| OpenError::Sqlite {
            path: path.to_path_buf(),
            action: "read the store schema version of",
            source,
        })
}

/// A version this host can read (or migrate from), or the error that
/// refuses the file.
pub fn check(found: i64, path: &Path) -> Result<u32, OpenError> {
    match u32::try_from(found) {
        Err(_) => Err(OpenError::BadVersion {
            path: path.to_path_buf(),
            found,
        }),
        Ok(v) if v > CURRENT => Err(OpenError::TooNew {
            path: path.to_path_buf(),
            found,
            known: CURRENT,
        }),
        Ok(v) => Ok(v),
    }
}

/// Whether the database has a spawns table (a new file has none).
fn has_spawns(conn: &Connection, path: &Path) -> Result<bool, OpenError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spawns')",
        [],
        |r| r.get(0),
    )
    .map_err(|source| OpenError::Sqlite {
        path: path.to_path_buf(),
        action: "read the tables of",
        source,
    })
}

/// Where the copy of a store of version `v` is kept before it is migrated:
/// `spawns.sqlite.v<v>.bak` beside it.
pub fn backup_path(path: &Path, v: u32) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".v{v}.bak"));
    path.with_file_name(name)
}

/// Copies the database, as one consistent file (0600), to
/// [`backup_path`]: what a host of version `v` can run on again. A copy
/// left from an earlier migration is replaced.
fn back_up(conn: &Connection, path: &Path, v: u32) -> Result<(), OpenError> {
    use std::os::unix::fs::PermissionsExt;
    let to = backup_path(path, v);
    let mut tmp = to.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let failed = |message: String| OpenError::Backup {
        path: path.to_path_buf(),
        to: to.clone(),
        message,
    };
    let _ = std::fs::remove_file(&tmp);
    conn.execute("VACUUM INTO ?1", [tmp.to_string_lossy()])
        .map_err(|e| failed(e.to_string()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, &to))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            failed(e.to_string())
        })?;
    tracing::info!(
        "copied the spawn store {} (schema version {v}) to {} before migrating it",
        path.display(),
        to.display()
    );
    Ok(())
}

/// Runs the migrations from the database's version to [`CURRENT`], each in
/// its own transaction with its version. Returns the version found.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<u32, OpenError> {
    let found = check(version(conn, path)?, path)?;
    if found < CURRENT && has_spawns(conn, path)? {
        back_up(conn, path, found)?;
    }
    for m in &MIGRATION[found as usize..] {
        let err = |source| OpenError::Migration {
            path: path.to_path_buf(),
            from: m.to - 1,
            to: m.to,
            what: m.what,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        // Another host may have migrated between the look and the lock.
        let now = check(version(&tx, path)?, path)?;
        if now >= m.to {
            continue;
        }
        (m.apply)(&tx).map_err(err)?;
        tx.pragma_update(None, "user_version", m.to).map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(
            "migrated the spawn store {} from schema version {} to {}: {}",
            path.display(),
            m.to - 1,
            m.to,
            m.what
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_are_consecutive_from_zero() {
        for (i, m) in MIGRATION.iter().enumerate() {
            assert_eq!(m.to as usize, i + 1, "migration {i} ({})", m.what);
        }
        assert_eq!(CURRENT as usize, MIGRATION.len());
    }

    #[test]
    fn versions_beyond_the_known_or_below_zero_are_refused() {
        let p = Path::new("/var/lib/wasmspawner/spawns.sqlite");
        assert_eq!(check(0, p).unwrap(), 0);
        assert_eq!(check(CURRENT.into(), p).unwrap(), CURRENT);
        assert!(matches!(
            check(i64::from(CURRENT) + 1, p),
            Err(OpenError::TooNew { found, known, .. }) if found == i64::from(CURRENT) + 1 && known == CURRENT
        ));
        assert!(matches!(
            check(-1, p),
            Err(OpenError::BadVersion { found: -1, .. })
        ));
    }

    #[test]
    fn a_failed_migration_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spawns.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute(
            "INSERT INTO spawns VALUES ('sp-1', 'a', '', 'r', 'local', 'queued', NULL, 'f', NULL, 't', 't', '{not json')",
            [],
        )
        .unwrap();
        let e = migrate(&mut conn, &path).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, OpenError::Migration { from: 0, to: 1, .. }),
            "{msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("from store schema version 0 to 1"), "{msg}");
        assert_eq!(version(&conn, &path).unwrap(), 0);
        let record: String = conn
            .query_row("SELECT record FROM spawns", [], |r| r.get(0))
            .unwrap();
        assert_eq!(record, "{not json");
    }
}
