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

/// Opens the writer's connection: creates the file if needed, sets WAL and
/// full sync, and brings the schema up to date.
pub(super) fn open_writer(path: &Path, opts: &EmbeddedOptions) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
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
    migrate(&conn)?;
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
/// either the old schema or the new one.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening a new file at once must not both
    // run the migrations.
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(|e| sql_error("begin migration", e))?;
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
}
