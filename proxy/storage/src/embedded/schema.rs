//! Connection set-up and the schema, with numbered migrations.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};

use super::EmbeddedOptions;
use super::convert::sql_error;
use crate::StoreError;

/// Migrations in order; `MIGRATIONS[i]` takes the schema from version `i`
/// to `i + 1`. Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    //
    // Times are milliseconds since the UNIX epoch. Booleans are 0/1.
    //
    // `blobs.refcount` counts the transactions whose body it is; it is kept
    // by create_transaction and gc (the FK below makes a dangling body
    // impossible, the count makes gc's "unreferenced" an index lookup).
    //
    // A body is stored as rows of `blob_chunks` (at most CHUNK_MAX bytes
    // each, keyed by their start offset), never as one growing value: an
    // append inserts rows, a read touches only the rows it covers.
    //
    // `transactions.envelope` is the `NewTransaction` as JSON, kept
    // verbatim; the columns next to it are what queries need.
    // `next_attempt_ms` is NULL once final. The claimable index keys each
    // open transaction by the time it becomes claimable: its next attempt,
    // or its lease expiry if that is later.
    r#"
    CREATE TABLE blobs (
        id TEXT PRIMARY KEY NOT NULL,
        length INTEGER NOT NULL,
        finalized INTEGER NOT NULL,
        refcount INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        last_update_ms INTEGER NOT NULL
    );
    CREATE INDEX blobs_unreferenced ON blobs (last_update_ms) WHERE refcount = 0;

    CREATE TABLE blob_chunks (
        blob_id TEXT NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
        start INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (blob_id, start)
    );

    CREATE TABLE transactions (
        id TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL REFERENCES blobs (id),
        envelope TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        last_update_ms INTEGER NOT NULL,
        version INTEGER NOT NULL,
        attempt_count INTEGER NOT NULL,
        next_attempt_ms INTEGER,
        final_reason TEXT,
        lease_owner TEXT,
        lease_expires_ms INTEGER,
        cancelled INTEGER NOT NULL,
        last_responses TEXT
    );
    CREATE INDEX transactions_claimable
        ON transactions (max(next_attempt_ms, coalesce(lease_expires_ms, next_attempt_ms)))
        WHERE final_reason IS NULL;
    CREATE INDEX transactions_final ON transactions (last_update_ms)
        WHERE final_reason IS NOT NULL;
    CREATE INDEX transactions_body ON transactions (body);
    "#,
    // Version 2.
    //
    // `transactions.history` is every finished attempt, one JSON object
    // per line, oldest first (NULL: none yet). Lines, not a JSON array: a
    // finish appends its line with `||` instead of parsing and rewriting
    // the whole history, which only grows with the retries.
    r#"
    ALTER TABLE transactions ADD COLUMN history TEXT;
    "#,
    // Version 3.
    //
    // Prompt collection of bodies. `blobs.open_refs` counts the
    // transactions referencing the blob that are not final yet (kept by
    // create_transaction and every write that makes a transaction final);
    // when it drops to zero the chunks are deleted at once and `collected`
    // set, while `refcount` (all referencing transactions, final ones
    // included) keeps the row until gc deletes those transactions. A file
    // migrated from version 2 collects, here, every body whose
    // transactions are all final already.
    r#"
    ALTER TABLE blobs ADD COLUMN open_refs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE blobs ADD COLUMN collected INTEGER NOT NULL DEFAULT 0;
    UPDATE blobs SET open_refs = (
        SELECT count(*) FROM transactions t
        WHERE t.body = blobs.id AND t.final_reason IS NULL);
    DELETE FROM blob_chunks WHERE blob_id IN (
        SELECT id FROM blobs WHERE refcount > 0 AND open_refs = 0);
    UPDATE blobs SET collected = 1 WHERE refcount > 0 AND open_refs = 0;
    "#,
    // Version 4.
    //
    // For the REST API. `idempotency`: one row per idempotency key (a
    // BLOB, compared byte for byte: keys may hold NUL, which SQLite's
    // text functions do not promise to keep), the transaction its first
    // use created and the request's fingerprint. Written in the same
    // write as that transaction, so a key never points to nothing; a key
    // goes with its transaction (the cascade: gc deletes the transaction),
    // or once expired (gc, by the expiry index). `replicas`: where each
    // replica serves its REST API, until its registration expires.
    r#"
    CREATE TABLE idempotency (
        key BLOB PRIMARY KEY NOT NULL,
        tx_id TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE INDEX idempotency_expires ON idempotency (expires_ms);
    CREATE INDEX idempotency_tx ON idempotency (tx_id);

    CREATE TABLE replicas (
        id TEXT PRIMARY KEY NOT NULL,
        uri TEXT NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    "#,
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Largest stored chunk; a bigger append is split. Bounds what one read
/// row costs (SQLite loads a whole value to take a substring of it).
pub(super) const CHUNK_MAX: usize = 256 * 1024;

/// The claimable-time expression, spelled exactly as in the index so the
/// planner uses it.
pub(super) const CLAIMABLE_AT: &str =
    "max(next_attempt_ms, coalesce(lease_expires_ms, next_attempt_ms))";

/// What is at a store's path, as [`inspect`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreFile {
    /// No file (nor a leftover write-ahead log): a new store may be
    /// created there.
    Missing,
    /// A Koukan store at this schema version.
    Valid { schema_version: i64 },
    /// Something else, described.
    Invalid { found: String },
}

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Looks at `path` without changing it: is it absent, a Koukan store, or
/// something else? `Err` only when it cannot be looked at (permissions,
/// I/O, a lock held too long).
pub fn inspect(path: &Path) -> Result<StoreFile, StoreError> {
    let unreadable = |e: std::io::Error| {
        StoreError::Unavailable(format!("{}: cannot read: {e}", path.display()))
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let wal = sidecar(path, "-wal");
            // The log of a database that is gone: creating a new store
            // beside it would hide that something deleted the old one.
            return Ok(match std::fs::metadata(&wal) {
                Ok(_) => StoreFile::Invalid {
                    found: format!(
                        "no database file, but its write-ahead log {} exists (was the \
                         database deleted or moved?)",
                        wal.display()
                    ),
                },
                Err(_) => StoreFile::Missing,
            });
        }
        Err(e) => return Err(unreadable(e)),
    };
    if !meta.is_file() {
        return Ok(StoreFile::Invalid {
            found: "not a regular file".into(),
        });
    }
    if meta.len() == 0 {
        return Ok(StoreFile::Invalid {
            found: "an empty file (0 bytes)".into(),
        });
    }
    let mut head = Vec::with_capacity(SQLITE_HEADER.len());
    {
        use std::io::Read;
        std::fs::File::open(path)
            .and_then(|f| f.take(SQLITE_HEADER.len() as u64).read_to_end(&mut head))
            .map_err(unreadable)?;
    }
    if head != SQLITE_HEADER {
        let shown: String = head
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        return Ok(StoreFile::Invalid {
            found: format!(
                "not an SQLite database ({} bytes, starting with \"{shown}\")",
                meta.len()
            ),
        });
    }
    // An SQLite file: whose? Opened without CREATE, so nothing is made.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    let found = |e: rusqlite::Error| -> Result<StoreFile, StoreError> {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(C::NotADatabase | C::DatabaseCorrupt) => Ok(StoreFile::Invalid {
                found: format!("an SQLite file that cannot be read: {e}"),
            }),
            _ => Err(sql_error(&format!("inspect {}", path.display()), e)),
        }
    };
    if let Err(e) = conn.busy_timeout(std::time::Duration::from_secs(5)) {
        return found(e);
    }
    let tables: Vec<String> = match conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
    {
        Ok(t) => t,
        Err(e) => return found(e),
    };
    if !tables.iter().any(|t| t == "schema_version") {
        let listed = if tables.is_empty() {
            "no tables".to_owned()
        } else {
            format!("tables: {}", tables.join(", "))
        };
        return Ok(StoreFile::Invalid {
            found: format!("an SQLite database without koukan's schema_version table ({listed})"),
        });
    }
    match conn.query_row("SELECT max(version) FROM schema_version", [], |r| {
        r.get::<_, Option<i64>>(0)
    }) {
        Ok(Some(v)) => Ok(StoreFile::Valid { schema_version: v }),
        Ok(None) => Ok(StoreFile::Invalid {
            found: "a koukan schema_version table without a version".into(),
        }),
        Err(e) => found(e),
    }
}

/// `path` with `suffix` appended to its file name (`koukan.db-wal`).
pub(super) fn sidecar(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Creates a new, empty store at `path`, which must not exist. Built
/// under a temporary name and linked into place once complete, so a
/// crash during creation leaves no file (created again at the next start)
/// rather than a half-made one that the next start would have to refuse:
/// a file at the store's path is always a complete store, and a 0-byte or
/// headless one means something damaged it.
pub(super) fn create(path: &Path) -> Result<(), StoreError> {
    let io = |what: &str, e: std::io::Error| {
        StoreError::Unavailable(format!(
            "creating the store {}: {what}: {e}",
            path.display()
        ))
    };
    let tmp = sidecar(path, &format!(".creating-{}", std::process::id()));
    for leftover in [tmp.clone(), sidecar(&tmp, "-wal"), sidecar(&tmp, "-shm")] {
        match std::fs::remove_file(&leftover) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing a leftover", e));
            }
            _ => {}
        }
    }
    {
        let conn = Connection::open(&tmp).map_err(|e| open_error(&tmp, e))?;
        let _: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| sql_error("set journal_mode", e))?;
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(|e| sql_error("set pragmas", e))?;
        migrate(&conn, true)?;
        // Closing the only connection checkpoints the log into the file
        // and removes it: the file alone is the whole store.
        conn.close()
            .map_err(|(_, e)| sql_error("close new store", e))?;
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("syncing", e))?;
    // A hard link, unlike a rename, never replaces a file that appeared
    // meanwhile (another process creating the same store): that one wins.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("linking into place", e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory", e))?;
    }
    Ok(())
}

/// Opens the writer's connection: creates the store if no file exists,
/// refuses a file that is not a Koukan store, sets WAL and full sync, and
/// brings the schema up to date.
pub(super) fn open_writer(path: &Path, opts: &EmbeddedOptions) -> Result<Connection, StoreError> {
    match inspect(path)? {
        StoreFile::Missing => create(path)?,
        StoreFile::Valid { .. } => {}
        StoreFile::Invalid { found } => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                found,
            });
        }
    }
    // No CREATE flag: the file exists now, and if it vanished meanwhile
    // this fails instead of making an empty one.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(opts.busy_timeout)
        .map_err(|e| sql_error("set busy_timeout", e))?;
    // WAL: readers never block the writer nor each other; a commit is one
    // append to the log (plus its fsync) instead of a rollback journal.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| sql_error("set journal_mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "sqlite: {}: cannot use WAL (journal_mode is {mode})",
            path.display()
        )));
    }
    // FULL: every commit fsyncs the log. The writer drops to NORMAL only
    // for batches that need no durability (see the writer module).
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA journal_size_limit = 67108864;",
    )
    .map_err(|e| sql_error("set pragmas", e))?;
    if let Some(max) = opts.max_size_bytes {
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| sql_error("read page_size", e))?;
        let pages = i64::try_from(max).unwrap_or(i64::MAX) / page_size.max(1);
        // SQLite answers SQLITE_FULL once the file would exceed this.
        let _: i64 = conn
            .query_row(
                &format!("PRAGMA max_page_count = {}", pages.max(1)),
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql_error("set max_page_count", e))?;
    }
    migrate(&conn, false).map_err(|e| match e {
        StoreError::NotAStore { found, .. } => StoreError::NotAStore {
            path: path.to_owned(),
            found,
        },
        e => e,
    })?;
    Ok(conn)
}

/// Opens a reader's connection to an existing database (the writer made
/// it). `query_only` turns a bug that writes through a reader into an error
/// instead of a write that bypasses the writer's ordering.
pub(super) fn open_reader(path: &Path, opts: &EmbeddedOptions) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(opts.busy_timeout)
        .map_err(|e| sql_error("set busy_timeout", e))?;
    conn.execute_batch("PRAGMA query_only = ON;")
        .map_err(|e| sql_error("set query_only", e))?;
    Ok(conn)
}

fn open_error(path: &Path, err: rusqlite::Error) -> StoreError {
    sql_error(&format!("open {}", path.display()), err)
}

/// Applies the missing migrations in one transaction, so a crash leaves
/// either the old schema or the new one. Only a `fresh` database (being
/// created) may lack the schema_version table; on any other it means the
/// file is not ours.
fn migrate(conn: &Connection, fresh: bool) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening a new file at once must not both
    // run the migrations.
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(|e| sql_error("begin migration", e))?;
    let ours: bool = tx
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| sql_error("read schema", e))?;
    if !ours && !fresh {
        return Err(StoreError::NotAStore {
            path: std::path::PathBuf::new(),
            found: "an SQLite database without koukan's schema_version table".into(),
        });
    }
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")
        .map_err(|e| sql_error("create schema_version", e))?;
    let current: i64 = tx
        .query_row("SELECT max(version) FROM schema_version", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()
        .map_err(|e| sql_error("read schema_version", e))?
        .flatten()
        .unwrap_or(0);
    if current > SCHEMA_VERSION {
        // A newer build migrated this file; running old code on it could
        // corrupt data it does not know about.
        return Err(StoreError::Unavailable(format!(
            "database schema version {current} is newer than this build supports ({SCHEMA_VERSION})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        tx.execute_batch(sql)
            .map_err(|e| sql_error(&format!("migrate to schema version {version}"), e))?;
    }
    if current < SCHEMA_VERSION {
        tx.execute("DELETE FROM schema_version", [])
            .and_then(|_| {
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )
            })
            .map_err(|e| sql_error("record schema_version", e))?;
    }
    tx.commit().map_err(|e| sql_error("commit migration", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TxId;
    use crate::embedded::ops;

    /// A file a version-1 build wrote (no history column, an envelope
    /// without `prior_attempt`) opens, migrates, and reads back.
    #[test]
    fn version_1_file_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let envelope = r#"{"sender":"s","tag":"t","chain":"out",
            "mail_from":{"address":"a@example.com"},"rcpt_to":[{"address":"b@example.com"}],
            "session":{"listener":"smtp","peer":null,"ehlo_host":null,"tls":null,"auth_user":null},
            "body":"b","retry":true,"notification":false,"lease":null}"#;
        let responses = r#"{"mail":{"code":250,"text":"ok"},"rcpt":[null],"data":null}"#;
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1);
                 INSERT INTO blobs VALUES ('b', 0, 1, 1, 5, 5);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO transactions VALUES
                     ('t', 'b', ?1, 5, 7, 3, 1, 9, NULL, NULL, NULL, 0, ?2)",
                [envelope, responses],
            )
            .unwrap();
        }
        let conn = open_writer(&path, &EmbeddedOptions::default()).unwrap();
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let id = TxId("t".into());
        let rec = ops::get_transaction(&conn, &id).unwrap();
        assert_eq!(rec.attempt_count, 1);
        assert_eq!(rec.tx.prior_attempt, None);
        assert_eq!(rec.last_responses.unwrap().mail.unwrap().code, 250);
        assert!(rec.attempts.is_empty(), "{:?}", rec.attempts);

        // A history line that does not parse is reported, not skipped.
        conn.execute(
            "UPDATE transactions SET history = '{\"attempt\":1}' || char(10) WHERE id = 't'",
            [],
        )
        .unwrap();
        let err = ops::get_transaction(&conn, &id).unwrap_err();
        assert!(
            matches!(&err, StoreError::Internal(m) if m.contains("history")),
            "{err:?}"
        );
    }

    /// A version-3 file migrates to 4: its transactions can take keys, and
    /// a key goes with its transaction when gc deletes that (the cascade
    /// needs the writer's `foreign_keys`).
    #[test]
    fn version_3_file_migrates_and_keys_follow_their_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let conn = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..3] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (3);
                 INSERT INTO blobs VALUES ('b', 0, 1, 0, 5, 5, 0, 0);",
            )
            .unwrap();
        }
        let conn = open_writer(&path, &EmbeddedOptions::default()).unwrap();
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let tx: crate::NewTransaction = serde_json::from_str(
            r#"{"sender":"s","tag":"t","chain":"out","mail_from":{"address":""},
                "rcpt_to":[],"ingress":"generated","body":"b","retry":true,
                "notification":false,"lease":null}"#,
        )
        .unwrap();
        let row = ops::NewRow::encode_as(tx, TxId("t".into())).unwrap();
        let key = ops::KeyRow {
            key: "k\0ey".into(),
            fingerprint: "fp".into(),
            expires_ms: i64::MAX,
        };
        let created = ops::create_with(&conn, &row, Some(&key), 10).unwrap();
        assert_eq!(created, crate::Created::New(TxId("t".into())));
        let found = ops::idempotency_lookup(&conn, "k\0ey", 10).unwrap();
        assert_eq!(found, Some((TxId("t".into()), "fp".into())));
        // Byte for byte: the NUL and what follows it count.
        assert_eq!(ops::idempotency_lookup(&conn, "k", 10).unwrap(), None);
        assert_eq!(
            ops::cancel(&conn, &TxId("t".into()), 20).unwrap(),
            crate::CancelOutcome::Cancelled
        );
        let mut deleted = Vec::new();
        assert_eq!(
            ops::gc_transactions(&conn, 100, 10, &mut deleted).unwrap(),
            1
        );
        let keys: i64 = conn
            .query_row("SELECT count(*) FROM idempotency", [], |r| r.get(0))
            .unwrap();
        assert_eq!(keys, 0);
    }

    /// A version-2 file migrates to 3 and collects, there, the bodies whose
    /// transactions are all final; a body with an open transaction stays.
    #[test]
    fn version_2_file_migrates_and_collects_finished_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        let envelope = |body: &str| {
            format!(
                r#"{{"sender":"s","tag":"t","chain":"out",
                "mail_from":{{"address":"a@example.com"}},"rcpt_to":[{{"address":"b@example.com"}}],
                "session":{{"listener":"smtp","peer":null,"ehlo_host":null,"tls":null,"auth_user":null}},
                "body":"{body}","retry":true,"notification":false,"lease":null}}"#
            )
        };
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (2);
                 INSERT INTO blobs VALUES ('done', 4, 1, 1, 5, 5);
                 INSERT INTO blob_chunks VALUES ('done', 0, X'64646464');
                 INSERT INTO blobs VALUES ('open', 4, 1, 2, 5, 5);
                 INSERT INTO blob_chunks VALUES ('open', 0, X'6f6f6f6f');",
            )
            .unwrap();
            for (id, body, reason) in [
                ("t1", "done", Some("upstream response success")),
                ("t2", "open", Some("upstream response success")),
                ("t3", "open", None),
            ] {
                conn.execute(
                    "INSERT INTO transactions VALUES
                         (?1, ?2, ?3, 5, 7, 3, 1, 9, ?4, NULL, NULL, 0, NULL, NULL)",
                    rusqlite::params![id, body, envelope(body), reason],
                )
                .unwrap();
            }
        }
        let conn = open_writer(&path, &EmbeddedOptions::default()).unwrap();
        let blob = |id: &str| crate::BlobId(id.into());
        let r = ops::read_blob(&conn, &blob("done"), 0, 10);
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
        assert_eq!(
            &ops::read_blob(&conn, &blob("open"), 0, 10).unwrap()[..],
            b"oooo"
        );
        let chunks: i64 = conn
            .query_row("SELECT count(*) FROM blob_chunks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(chunks, 1);
        assert!(ops::get_transaction(&conn, &TxId("t1".into())).is_ok());
        // The open one's finish collects the other body.
        let (owner, wall) = (crate::ReplicaId("r".into()), 10_000);
        conn.execute(
            "UPDATE transactions SET lease_owner = 'r' WHERE id = 't3'",
            [],
        )
        .unwrap();
        ops::finish_attempt(
            &conn,
            &TxId("t3".into()),
            &owner,
            r#"{"mail":null,"rcpt":[],"data":null}"#,
            true,
            &ops::Next::Final(crate::FinalReason::UpstreamSuccess),
            wall,
        )
        .unwrap();
        let r = ops::read_blob(&conn, &blob("open"), 0, 10);
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    }
}
