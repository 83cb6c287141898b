//! The SQL of each store operation, as plain functions on a connection.
//! Write functions run on the writer thread inside its batch transaction
//! (a savepoint of it); read functions run on a pooled reader.

use bytes::{Bytes, BytesMut};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Deserialize;

use super::convert::{expiry, from_ms, new_id, sql_error, to_i64, to_ms, to_u64, ttl_ms};
use super::schema::{CHUNK_MAX, CLAIMABLE_AT};
use crate::{
    AttemptRecord, AttemptResponses, BlobId, BlobInfo, CancelOutcome, Created, FinalReason,
    NewTransaction, QueueCounts, ReplicaId, StoreError, StoreResult, TxId, TxRecord,
};

/// Recorded when a cancellation finalizes a transaction. Rows finalized
/// before it was this hold `cancelled`, which reads as the same reason.
const CANCELLED: FinalReason = FinalReason::DownstreamCancelled;

const TX_COLUMNS: &str = "id, envelope, created_ms, last_update_ms, version, attempt_count, \
     next_attempt_ms, final_reason, lease_owner, lease_expires_ms, cancelled, last_responses, \
     history";

/// An attempt's end as stored: `RetryAt` already in milliseconds.
pub(super) enum Next {
    RetryAt(i64),
    Final(FinalReason),
}

fn blob_not_found(blob: &BlobId) -> StoreError {
    StoreError::NotFound(format!("blob {blob}"))
}

fn tx_not_found(id: &TxId) -> StoreError {
    StoreError::NotFound(format!("transaction {id}"))
}

/// (length, finalized, refcount) of a blob; `NotFound` for a collected one
/// as for an unknown one: its data is gone.
fn blob_row(conn: &Connection, blob: &BlobId) -> StoreResult<(u64, bool, u64)> {
    let row = conn
        .prepare_cached("SELECT length, finalized, refcount, collected FROM blobs WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([&blob.0], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })
            .optional()
        })
        .map_err(|e| sql_error("read blob", e))?
        .ok_or_else(|| blob_not_found(blob))?;
    if row.3 {
        return Err(StoreError::NotFound(format!(
            "blob {blob}: collected (every transaction using it is final)"
        )));
    }
    Ok((
        to_u64("blob length", row.0)?,
        row.1,
        to_u64("blob refcount", row.2)?,
    ))
}

pub(super) fn create_blob(conn: &Connection, blob: &BlobId, now: i64) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO blobs (id, length, finalized, refcount, created_ms, last_update_ms)
         VALUES (?1, 0, 0, 0, ?2, ?2)",
    )
    .and_then(|mut s| s.execute(params![blob.0, now]))
    .map_err(|e| sql_error("create blob", e))?;
    Ok(())
}

pub(super) fn append_blob(
    conn: &Connection,
    blob: &BlobId,
    offset: u64,
    data: &[u8],
    last: bool,
    now: i64,
) -> StoreResult<u64> {
    let (length, finalized, _) = blob_row(conn, blob)?;
    if finalized {
        return Err(StoreError::BlobConflict {
            blob: blob.clone(),
            reason: format!("finalized at {length} bytes; no more appends"),
        });
    }
    if offset != length {
        return Err(StoreError::BlobConflict {
            blob: blob.clone(),
            reason: format!("append at offset {offset}, but the blob has {length} bytes"),
        });
    }
    let new_length = length
        .checked_add(data.len() as u64)
        .ok_or_else(|| StoreError::Internal(format!("blob {blob}: length overflow")))?;
    let new_length_i = to_i64("blob length", new_length)?;
    let mut insert = conn
        .prepare_cached("INSERT INTO blob_chunks (blob_id, start, data) VALUES (?1, ?2, ?3)")
        .map_err(|e| sql_error("append blob", e))?;
    let mut start = length;
    for piece in data.chunks(CHUNK_MAX) {
        insert
            .execute(params![blob.0, to_i64("blob offset", start)?, piece])
            .map_err(|e| sql_error("append blob", e))?;
        start += piece.len() as u64;
    }
    conn.prepare_cached(
        "UPDATE blobs SET length = ?2, finalized = ?3, last_update_ms = ?4 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![blob.0, new_length_i, last, now]))
    .map_err(|e| sql_error("append blob", e))?;
    Ok(new_length)
}

pub(super) fn blob_info(conn: &Connection, blob: &BlobId) -> StoreResult<BlobInfo> {
    let (length, finalized, refcount) = blob_row(conn, blob)?;
    Ok(BlobInfo {
        length,
        finalized,
        refcount,
    })
}

/// Reads `[offset, min(offset + max, length))`, touching only the chunks
/// that range covers.
pub(super) fn read_blob(
    conn: &Connection,
    blob: &BlobId,
    offset: u64,
    max: usize,
) -> StoreResult<Bytes> {
    // One read transaction: the length and the chunks come from the same
    // snapshot even if gc or an append commits in between.
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| sql_error("begin read", e))?;
    let (length, _, _) = blob_row(&tx, blob)?;
    if offset > length {
        return Err(StoreError::BlobConflict {
            blob: blob.clone(),
            reason: format!("read at offset {offset}, but the blob has {length} bytes"),
        });
    }
    let end = length.min(offset.saturating_add(max as u64));
    if end == offset {
        return Ok(Bytes::new());
    }
    let (start_i, end_i) = (to_i64("offset", offset)?, to_i64("offset", end)?);
    // The chunk holding `offset`: the last one starting at or before it.
    let first: Option<i64> = tx
        .prepare_cached("SELECT max(start) FROM blob_chunks WHERE blob_id = ?1 AND start <= ?2")
        .and_then(|mut s| s.query_row(params![blob.0, start_i], |r| r.get(0)))
        .map_err(|e| sql_error("read blob", e))?;
    let first = first.ok_or_else(|| {
        StoreError::Internal(format!("blob {blob}: no chunk holds offset {offset}"))
    })?;
    let mut out = BytesMut::with_capacity((end - offset) as usize);
    {
        // substr() cuts each chunk to the requested range in SQLite, so
        // only the bytes asked for are copied out.
        let mut stmt = tx
            .prepare_cached(
                "SELECT substr(data, max(?2 - start, 0) + 1,
                               min(?3 - start, length(data)) - max(?2 - start, 0))
                 FROM blob_chunks
                 WHERE blob_id = ?1 AND start >= ?4 AND start < ?3
                 ORDER BY start",
            )
            .map_err(|e| sql_error("read blob", e))?;
        let mut rows = stmt
            .query(params![blob.0, start_i, end_i, first])
            .map_err(|e| sql_error("read blob", e))?;
        while let Some(row) = rows.next().map_err(|e| sql_error("read blob", e))? {
            let piece = row
                .get_ref(0)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(|e| sql_error("read blob", e))?;
            out.extend_from_slice(piece);
        }
    }
    if out.len() as u64 != end - offset {
        return Err(StoreError::Internal(format!(
            "blob {blob}: chunks hold {} of the {} bytes at offset {offset}",
            out.len(),
            end - offset
        )));
    }
    Ok(out.freeze())
}

/// One line of `transactions.history`; written by [`history_line`].
#[derive(Deserialize)]
struct HistoryLine {
    attempt: u32,
    finished_ms: i64,
    responses: AttemptResponses,
}

/// The history line, newline included, of a finished attempt whose
/// responses are already JSON. Spliced rather than serialized so the
/// writer thread does not encode the responses a second time; serde_json's
/// compact output has no raw newline to break the line.
fn history_line(attempt: i64, finished_ms: i64, responses: &str) -> String {
    format!("{{\"attempt\":{attempt},\"finished_ms\":{finished_ms},\"responses\":{responses}}}\n")
}

/// A transaction ready to insert, encoded off the writer thread: the
/// writer's time is everyone's commit latency.
pub(super) struct NewRow {
    pub(super) id: TxId,
    body: BlobId,
    envelope: String,
    /// Owner and TTL in milliseconds.
    lease: Option<(ReplicaId, i64)>,
    prior: Option<PriorRow>,
    /// See [`crate::CreateOptions::keep_body`].
    pub(super) keep_body: bool,
}

/// The columns an attempt made before storing starts the row with.
struct PriorRow {
    responses: String,
    history: String,
    next_attempt_ms: i64,
}

impl NewRow {
    /// Under a fresh id.
    pub(super) fn encode(tx: NewTransaction) -> StoreResult<Self> {
        Self::encode_as(tx, TxId(new_id()))
    }

    /// Under the id given.
    pub(super) fn encode_as(tx: NewTransaction, id: TxId) -> StoreResult<Self> {
        let encode_err =
            |e: serde_json::Error| StoreError::Internal(format!("encode transaction: {e}"));
        let envelope = serde_json::to_string(&tx).map_err(encode_err)?;
        let prior = match &tx.prior_attempt {
            Some(p) => {
                let responses = serde_json::to_string(&p.responses).map_err(encode_err)?;
                Some(PriorRow {
                    history: history_line(1, to_ms(p.finished), &responses),
                    responses,
                    next_attempt_ms: to_ms(p.next_attempt),
                })
            }
            None => None,
        };
        Ok(NewRow {
            id,
            body: tx.body,
            envelope,
            lease: tx.lease.map(|(owner, ttl)| (owner, ttl_ms(ttl))),
            prior,
            keep_body: false,
        })
    }
}

pub(super) fn create_transaction(conn: &Connection, row: &NewRow, now: i64) -> StoreResult<()> {
    let (_, finalized, _) = blob_row(conn, &row.body)?;
    if !finalized {
        return Err(StoreError::BlobConflict {
            blob: row.body.clone(),
            reason: "not finalized: a transaction needs a complete body".into(),
        });
    }
    // Leased at creation: its next attempt starts now, and counts.
    let (owner, expires) = match &row.lease {
        Some((owner, ttl)) => (Some(owner.0.as_str()), Some(expiry(now, *ttl))),
        None => (None, None),
    };
    let attempts = i64::from(row.lease.is_some()) + i64::from(row.prior.is_some());
    let prior = row.prior.as_ref();
    conn.prepare_cached(
        "INSERT INTO transactions (id, body, envelope, created_ms, last_update_ms, version,
             attempt_count, next_attempt_ms, final_reason, lease_owner, lease_expires_ms,
             cancelled, last_responses, history)
         VALUES (?1, ?2, ?3, ?4, ?4, 1, ?5, coalesce(?8, ?4), NULL, ?6, ?7, 0, ?9, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            row.id.0,
            row.body.0,
            row.envelope,
            now,
            attempts,
            owner,
            expires,
            prior.map(|p| p.next_attempt_ms),
            prior.map(|p| &p.responses),
            prior.map(|p| &p.history),
        ])
    })
    .map_err(|e| sql_error("create transaction", e))?;
    // A kept body counts one open reference more, which no finish
    // releases: it stays until gc deletes its transactions.
    conn.prepare_cached(
        "UPDATE blobs SET refcount = refcount + 1, open_refs = open_refs + ?2 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![&row.body.0, 1 + i64::from(row.keep_body)]))
    .map_err(|e| sql_error("create transaction", e))?;
    Ok(())
}

/// An idempotency key to record with a new transaction.
pub(super) struct KeyRow {
    pub(super) key: String,
    pub(super) fingerprint: String,
    pub(super) expires_ms: i64,
}

/// The transaction and fingerprint of `key` if it is unexpired at `now`.
pub(super) fn idempotency_lookup(
    conn: &Connection,
    key: &str,
    now: i64,
) -> StoreResult<Option<(TxId, String)>> {
    conn.prepare_cached(
        "SELECT tx_id, fingerprint FROM idempotency WHERE key = ?1 AND expires_ms > ?2",
    )
    .and_then(|mut s| {
        s.query_row(params![key.as_bytes(), now], |r| {
            Ok((TxId(r.get(0)?), r.get(1)?))
        })
        .optional()
    })
    .map_err(|e| sql_error("look up idempotency key", e))
}

/// [`Store::create_with`](crate::Store::create_with): the key, then the
/// id, then the body (in `create_transaction`), all in this job's
/// savepoint, so a refusal anywhere leaves no key and no row. Atomic
/// against every other creation because writes are serialized: one
/// writer thread per store, and SQLite's write lock (`BEGIN IMMEDIATE`)
/// between two stores opened on one file.
pub(super) fn create_with(
    conn: &Connection,
    row: &NewRow,
    key: Option<&KeyRow>,
    now: i64,
) -> StoreResult<Created> {
    if let Some(k) = key
        && let Some((id, fingerprint)) = idempotency_lookup(conn, &k.key, now)?
    {
        return Ok(Created::Existing { id, fingerprint });
    }
    let taken: bool = conn
        .prepare_cached("SELECT count(*) FROM transactions WHERE id = ?1")
        .and_then(|mut s| s.query_row([&row.id.0], |r| r.get(0)))
        .map_err(|e| sql_error("create transaction", e))?;
    if taken {
        return Err(StoreError::Exists(format!("transaction {}", row.id)));
    }
    create_transaction(conn, row, now)?;
    // A key expired already would count as absent at once: not kept.
    if let Some(k) = key.filter(|k| k.expires_ms > now) {
        // Replaces an expired row of the same key (a live one returned
        // above).
        conn.prepare_cached(
            "INSERT INTO idempotency (key, tx_id, fingerprint, expires_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET
                 tx_id = excluded.tx_id, fingerprint = excluded.fingerprint,
                 expires_ms = excluded.expires_ms",
        )
        .and_then(|mut s| {
            s.execute(params![
                k.key.as_bytes(),
                row.id.0,
                k.fingerprint,
                k.expires_ms
            ])
        })
        .map_err(|e| sql_error("record idempotency key", e))?;
    }
    Ok(Created::New(row.id.clone()))
}

pub(super) fn register_replica(
    conn: &Connection,
    replica: &ReplicaId,
    uri: &str,
    expires_ms: i64,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO replicas (id, uri, expires_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET uri = excluded.uri, expires_ms = excluded.expires_ms",
    )
    .and_then(|mut s| s.execute(params![replica.0, uri, expires_ms]))
    .map_err(|e| sql_error("register replica", e))?;
    Ok(())
}

pub(super) fn replica_uri(
    conn: &Connection,
    replica: &ReplicaId,
    now: i64,
) -> StoreResult<Option<String>> {
    conn.prepare_cached("SELECT uri FROM replicas WHERE id = ?1 AND expires_ms > ?2")
        .and_then(|mut s| {
            s.query_row(params![replica.0, now], |r| r.get(0))
                .optional()
        })
        .map_err(|e| sql_error("read replica", e))
}

/// Deletes up to `limit` idempotency keys and up to `limit` replica
/// registrations expired at `now`; returns the larger of the two counts
/// (the caller repeats while it reaches `limit`).
pub(super) fn gc_expired(conn: &Connection, now: i64, limit: i64) -> StoreResult<usize> {
    let keys = conn
        .prepare_cached(
            "DELETE FROM idempotency WHERE rowid IN (
                 SELECT rowid FROM idempotency WHERE expires_ms <= ?1 LIMIT ?2)",
        )
        .and_then(|mut s| s.execute(params![now, limit]))
        .map_err(|e| sql_error("gc idempotency keys", e))?;
    let replicas = conn
        .prepare_cached(
            "DELETE FROM replicas WHERE rowid IN (
                 SELECT rowid FROM replicas WHERE expires_ms <= ?1 LIMIT ?2)",
        )
        .and_then(|mut s| s.execute(params![now, limit]))
        .map_err(|e| sql_error("gc replicas", e))?;
    Ok(keys.max(replicas))
}

/// Transaction `id` has just become final: its body has one open
/// transaction less, and once none is left its data is deleted in this
/// same write (prompt collection; the row stays, `collected`, until gc has
/// deleted the transactions that reference it).
fn release_body(conn: &Connection, id: &TxId, wall: i64) -> StoreResult<()> {
    let left: Option<(String, i64)> = conn
        .prepare_cached(
            "UPDATE blobs SET open_refs = max(open_refs - 1, 0)
             WHERE id = (SELECT body FROM transactions WHERE id = ?1)
             RETURNING id, open_refs",
        )
        .and_then(|mut s| {
            s.query_row([&id.0], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(|e| sql_error("release body", e))?;
    let Some((blob, 0)) = left else {
        return Ok(());
    };
    conn.prepare_cached("DELETE FROM blob_chunks WHERE blob_id = ?1")
        .and_then(|mut s| s.execute([&blob]))
        .and_then(|_| {
            conn.prepare_cached(
                "UPDATE blobs SET collected = 1, last_update_ms = ?2 WHERE id = ?1",
            )?
            .execute(params![blob, wall])
        })
        .map_err(|e| sql_error("collect body", e))?;
    Ok(())
}

/// Deletes `blob` (its chunks by cascade) if no transaction references
/// it; returns whether it did.
pub(super) fn delete_blob(conn: &Connection, blob: &BlobId) -> StoreResult<bool> {
    conn.prepare_cached("DELETE FROM blobs WHERE id = ?1 AND refcount = 0")
        .and_then(|mut s| s.execute([&blob.0]))
        .map(|n| n > 0)
        .map_err(|e| sql_error("delete blob", e))
}

/// A transaction row as stored, decoded into a record afterwards (JSON
/// errors are not rusqlite errors).
struct TxRow {
    id: String,
    envelope: String,
    created_ms: i64,
    last_update_ms: i64,
    version: i64,
    attempt_count: i64,
    next_attempt_ms: Option<i64>,
    final_reason: Option<String>,
    lease_owner: Option<String>,
    lease_expires_ms: Option<i64>,
    cancelled: bool,
    last_responses: Option<String>,
    history: Option<String>,
}

fn tx_row(r: &Row<'_>) -> rusqlite::Result<TxRow> {
    Ok(TxRow {
        id: r.get(0)?,
        envelope: r.get(1)?,
        created_ms: r.get(2)?,
        last_update_ms: r.get(3)?,
        version: r.get(4)?,
        attempt_count: r.get(5)?,
        next_attempt_ms: r.get(6)?,
        final_reason: r.get(7)?,
        lease_owner: r.get(8)?,
        lease_expires_ms: r.get(9)?,
        cancelled: r.get(10)?,
        last_responses: r.get(11)?,
        history: r.get(12)?,
    })
}

impl TxRow {
    fn into_record(self) -> StoreResult<TxRecord> {
        let corrupt = |what: &str, e: serde_json::Error| {
            StoreError::Internal(format!(
                "transaction {}: stored {what} unreadable: {e}",
                self.id
            ))
        };
        let tx: NewTransaction =
            serde_json::from_str(&self.envelope).map_err(|e| corrupt("envelope", e))?;
        let last_responses: Option<AttemptResponses> = self
            .last_responses
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt("responses", e))?;
        let attempts = self
            .history
            .as_deref()
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let h: HistoryLine = serde_json::from_str(line)?;
                Ok(AttemptRecord {
                    attempt: h.attempt,
                    finished: from_ms(h.finished_ms),
                    responses: h.responses,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| corrupt("history", e))?;
        Ok(TxRecord {
            tx,
            created: from_ms(self.created_ms),
            last_update: from_ms(self.last_update_ms),
            version: to_u64("version", self.version)?,
            attempt_count: u32::try_from(self.attempt_count).map_err(|_| {
                StoreError::Internal(format!("attempt count {} out of range", self.attempt_count))
            })?,
            next_attempt: self.next_attempt_ms.map(from_ms),
            final_attempt_reason: self
                .final_reason
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| {
                    StoreError::Internal(format!(
                        "transaction {}: stored final reason unreadable: {e}",
                        self.id
                    ))
                })?,
            lease_owner: self.lease_owner.map(ReplicaId),
            lease_expires: self.lease_expires_ms.map(from_ms),
            cancelled: self.cancelled,
            last_responses,
            attempts,
            id: TxId(self.id),
        })
    }
}

pub(super) fn get_transaction(conn: &Connection, id: &TxId) -> StoreResult<TxRecord> {
    conn.prepare_cached(&format!(
        "SELECT {TX_COLUMNS} FROM transactions WHERE id = ?1"
    ))
    .and_then(|mut s| s.query_row([&id.0], tx_row).optional())
    .map_err(|e| sql_error("read transaction", e))?
    .ok_or_else(|| tx_not_found(id))?
    .into_record()
}

/// The lease-relevant columns: (lease_owner, final_reason, cancelled,
/// lease_expires_ms, attempt_count).
type LeaseState = (Option<String>, Option<String>, bool, Option<i64>, i64);

fn lease_state(conn: &Connection, id: &TxId) -> StoreResult<LeaseState> {
    conn.prepare_cached(
        "SELECT lease_owner, final_reason, cancelled, lease_expires_ms, attempt_count
         FROM transactions WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.query_row([&id.0], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()
    })
    .map_err(|e| sql_error("read transaction", e))?
    .ok_or_else(|| tx_not_found(id))
}

/// Claimable transactions, oldest first: `?1` is now, `?2` the limit.
fn claimable_sql() -> String {
    format!(
        "SELECT id, cancelled FROM transactions
         WHERE final_reason IS NULL AND {CLAIMABLE_AT} <= ?1
         ORDER BY {CLAIMABLE_AT}
         LIMIT ?2"
    )
}

/// Whether a claim at `now` would find anything (a read: claims that
/// would find nothing then cost no write and no fsync).
pub(super) fn any_claimable(conn: &Connection, now: i64) -> StoreResult<bool> {
    conn.prepare_cached(&claimable_sql())
        .and_then(|mut s| s.exists(params![now, 1]))
        .map_err(|e| sql_error("claim", e))
}

pub(super) fn claim_due(
    conn: &Connection,
    owner: &ReplicaId,
    now: i64,
    ttl: i64,
    limit: usize,
    wall: i64,
    changed: &mut Vec<TxId>,
) -> StoreResult<Vec<TxRecord>> {
    let mut claimed = Vec::new();
    let mut select = conn
        .prepare_cached(&claimable_sql())
        .map_err(|e| sql_error("claim", e))?;
    let mut lease = conn
        .prepare_cached(&format!(
            "UPDATE transactions
             SET lease_owner = ?2, lease_expires_ms = ?3, attempt_count = attempt_count + 1,
                 version = version + 1, last_update_ms = ?4
             WHERE id = ?1
             RETURNING {TX_COLUMNS}"
        ))
        .map_err(|e| sql_error("claim", e))?;
    // Each round leases or finalizes every candidate it saw, so none comes
    // back in the next round (the lease ends after `now`, since ttl >= 1).
    while claimed.len() < limit {
        let want = i64::try_from(limit - claimed.len()).unwrap_or(i64::MAX);
        let candidates: Vec<(String, bool)> = select
            .query_map(params![now, want], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| sql_error("claim", e))?;
        if candidates.is_empty() {
            break;
        }
        for (id, cancelled) in candidates {
            let id = TxId(id);
            if cancelled {
                // Cancelled while leased, and the lease ran out without a
                // finish: nobody will run it again, so it ends here.
                finalize_cancelled(conn, &id, wall)?;
                changed.push(id);
                continue;
            }
            let row = lease
                .query_row(params![id.0, owner.0, expiry(now, ttl), wall], tx_row)
                .map_err(|e| sql_error("claim", e))?;
            changed.push(id);
            claimed.push(row.into_record()?);
        }
    }
    Ok(claimed)
}

fn finalize_cancelled(conn: &Connection, id: &TxId, wall: i64) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE transactions
         SET cancelled = 1, final_reason = ?2, next_attempt_ms = NULL, lease_owner = NULL,
             lease_expires_ms = NULL, version = version + 1, last_update_ms = ?3
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id.0, CANCELLED.as_str(), wall]))
    .map_err(|e| sql_error("cancel", e))?;
    release_body(conn, id, wall)
}

/// Whether `owner` may still act on the transaction. An expired lease that
/// nobody took over still counts as held: the holder's late renew or
/// finish is accepted, which avoids a needless second delivery.
fn holds(state: &LeaseState, owner: &ReplicaId) -> bool {
    state.1.is_none() && state.0.as_deref() == Some(owner.0.as_str())
}

pub(super) fn renew_lease(
    conn: &Connection,
    id: &TxId,
    owner: &ReplicaId,
    ttl: i64,
    wall: i64,
) -> StoreResult<()> {
    let state = lease_state(conn, id)?;
    // A cancelled transaction's holder must stop: renewing tells it so.
    if !holds(&state, owner) || state.2 {
        return Err(StoreError::LeaseLost(id.clone()));
    }
    conn.prepare_cached(
        "UPDATE transactions
         SET lease_expires_ms = ?2, version = version + 1, last_update_ms = ?3
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id.0, expiry(wall, ttl), wall]))
    .map_err(|e| sql_error("renew lease", e))?;
    Ok(())
}

pub(super) fn finish_attempt(
    conn: &Connection,
    id: &TxId,
    owner: &ReplicaId,
    responses: &str,
    attempted: bool,
    next: &Next,
    wall: i64,
) -> StoreResult<TxRecord> {
    let state = lease_state(conn, id)?;
    if !holds(&state, owner) {
        return Err(StoreError::LeaseLost(id.clone()));
    }
    let cancelled = state.2;
    let (final_reason, next_attempt) = match next {
        Next::Final(reason) => (Some(reason.as_str()), None),
        // Cancelled during the attempt: there is no next one.
        Next::RetryAt(_) if cancelled => (Some(CANCELLED.as_str()), None),
        Next::RetryAt(at) => (None, Some(*at)),
    };
    // The claim counted the attempt when it started, so that count is its
    // number. An attempt not made leaves no trace: NULL here keeps the
    // responses and history (the prior attempt's) and takes the count back.
    let line = attempted.then(|| history_line(state.4, wall, responses));
    let record = conn
        .prepare_cached(&format!(
            "UPDATE transactions
         SET last_responses = iif(?6 IS NULL, last_responses, ?2),
             history = iif(?6 IS NULL, history, coalesce(history, '') || ?6),
             attempt_count = attempt_count - (?6 IS NULL),
             final_reason = ?3, next_attempt_ms = ?4, lease_owner = NULL,
             lease_expires_ms = NULL, version = version + 1, last_update_ms = ?5
         WHERE id = ?1
         RETURNING {TX_COLUMNS}"
        ))
        .and_then(|mut s| {
            s.query_row(
                params![id.0, responses, final_reason, next_attempt, wall, line],
                tx_row,
            )
        })
        .map_err(|e| sql_error("finish attempt", e))?
        .into_record()?;
    if final_reason.is_some() {
        release_body(conn, id, wall)?;
    }
    Ok(record)
}

pub(super) fn cancel(conn: &Connection, id: &TxId, wall: i64) -> StoreResult<CancelOutcome> {
    let (_, final_reason, cancelled, lease_expires, _) = lease_state(conn, id)?;
    if final_reason.is_some() {
        // Already over: nothing to change (a delivered transaction is not
        // marked cancelled after the fact).
        return Ok(CancelOutcome::AlreadyFinal);
    }
    if lease_expires.is_some_and(|e| e > wall) {
        // Running: the holder sees the flag at its next renew or finish.
        if !cancelled {
            conn.prepare_cached(
                "UPDATE transactions
                 SET cancelled = 1, version = version + 1, last_update_ms = ?2
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id.0, wall]))
            .map_err(|e| sql_error("cancel", e))?;
        }
        return Ok(CancelOutcome::Requested);
    }
    finalize_cancelled(conn, id, wall)?;
    Ok(CancelOutcome::Cancelled)
}

/// Deletes up to `limit` final transactions last updated before `cutoff`
/// and releases their bodies. Returns how many it deleted; lists them in
/// `deleted` (their waiters learn they are gone).
pub(super) fn gc_transactions(
    conn: &Connection,
    cutoff: i64,
    limit: i64,
    deleted: &mut Vec<TxId>,
) -> StoreResult<usize> {
    let rows: Vec<(String, String)> = conn
        .prepare_cached(
            "DELETE FROM transactions WHERE id IN (
                 SELECT id FROM transactions
                 WHERE final_reason IS NOT NULL AND last_update_ms < ?1
                 LIMIT ?2)
             RETURNING id, body",
        )
        .and_then(|mut s| {
            s.query_map(params![cutoff, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(|e| sql_error("gc transactions", e))?;
    let bodies: Vec<String> = rows
        .into_iter()
        .map(|(id, body)| {
            deleted.push(TxId(id));
            body
        })
        .collect();
    let mut release = conn
        .prepare_cached("UPDATE blobs SET refcount = refcount - 1 WHERE id = ?1")
        .map_err(|e| sql_error("gc transactions", e))?;
    for body in &bodies {
        release
            .execute([body])
            .map_err(|e| sql_error("gc transactions", e))?;
    }
    Ok(bodies.len())
}

/// Deletes up to `limit` unreferenced blobs last written before `cutoff`
/// (their chunks go by cascade). The cutoff spares a body still being
/// uploaded, whose refcount is zero until its transaction exists.
pub(super) fn gc_blobs(conn: &Connection, cutoff: i64, limit: i64) -> StoreResult<usize> {
    conn.prepare_cached(
        "DELETE FROM blobs WHERE id IN (
             SELECT id FROM blobs WHERE refcount = 0 AND last_update_ms < ?1 LIMIT ?2)",
    )
    .and_then(|mut s| s.execute(params![cutoff, limit]))
    .map_err(|e| sql_error("gc blobs", e))
}

pub(super) fn counts(conn: &Connection, now: i64) -> StoreResult<QueueCounts> {
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| sql_error("begin read", e))?;
    let (final_, inflight, waiting, due): (i64, i64, i64, i64) = tx
        .prepare_cached(
            "SELECT
                 coalesce(sum(final_reason IS NOT NULL), 0),
                 coalesce(sum(final_reason IS NULL AND lease_expires_ms > ?1), 0),
                 coalesce(sum(final_reason IS NULL
                              AND (lease_expires_ms IS NULL OR lease_expires_ms <= ?1)), 0),
                 coalesce(sum(final_reason IS NULL
                              AND (lease_expires_ms IS NULL OR lease_expires_ms <= ?1)
                              AND next_attempt_ms <= ?1), 0)
             FROM transactions",
        )
        .and_then(|mut s| s.query_row([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))))
        .map_err(|e| sql_error("count transactions", e))?;
    let blobs: i64 = tx
        .prepare_cached("SELECT count(*) FROM blobs WHERE collected = 0")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(|e| sql_error("count blobs", e))?;
    Ok(QueueCounts {
        waiting: to_u64("count", waiting)?,
        due: to_u64("count", due)?,
        inflight: to_u64("count", inflight)?,
        final_: to_u64("count", final_)?,
        blobs: to_u64("count", blobs)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{EmbeddedOptions, schema};

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.join("; ")
    }

    /// The queue's hot queries must be index searches: a table scan would
    /// make every claim cost as much as the whole queue.
    #[test]
    fn hot_queries_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            schema::open_writer(&dir.path().join("p.db"), &EmbeddedOptions::default()).unwrap();
        let claim = plan(
            &conn,
            &claimable_sql().replace("?1", "0").replace("?2", "10"),
        );
        assert!(
            claim.contains("USING INDEX transactions_claimable") && !claim.contains("TEMP B-TREE"),
            "{claim}"
        );
        let gc = plan(
            &conn,
            "SELECT id FROM transactions WHERE final_reason IS NOT NULL AND last_update_ms < 5",
        );
        assert!(gc.contains("USING INDEX transactions_final"), "{gc}");
        let blobs = plan(
            &conn,
            "SELECT id FROM blobs WHERE refcount = 0 AND last_update_ms < 5",
        );
        assert!(blobs.contains("USING INDEX blobs_unreferenced"), "{blobs}");
        let first = plan(
            &conn,
            "SELECT max(start) FROM blob_chunks WHERE blob_id = 'x' AND start <= 5",
        );
        assert!(first.contains("SEARCH blob_chunks USING"), "{first}");
        // gc of expired keys, and the cascade of a transaction's deletion.
        let expired = plan(
            &conn,
            "SELECT rowid FROM idempotency WHERE expires_ms <= 5 LIMIT 10",
        );
        assert!(
            expired.contains("USING INDEX idempotency_expires")
                || expired.contains("USING COVERING INDEX idempotency_expires"),
            "{expired}"
        );
        let cascade = plan(&conn, "SELECT rowid FROM idempotency WHERE tx_id = 'x'");
        assert!(cascade.contains("idempotency_tx"), "{cascade}");
    }
}
