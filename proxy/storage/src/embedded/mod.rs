//! Embedded store on one SQLite file.
//!
//! # Layout
//!
//! One database file (plus SQLite's `-wal` and `-shm` beside it) in WAL
//! mode with `foreign_keys` on. Tables: `blobs` (one row per body: length,
//! finalized, refcount), `blob_chunks` (the body's bytes, one row per append
//! piece of at most 256 KiB, keyed by start offset), `transactions` (the
//! envelope as JSON plus the columns the queue needs), `idempotency` (the
//! keys of [`Store::create_with`], each with its transaction), `replicas`
//! (the registry of [`Store::register_replica`]), `schema_version`
//! (for migrations; a file from a newer build is refused). Times are stored
//! as milliseconds since the UNIX epoch, so every time a record returns is
//! truncated to the millisecond.
//!
//! # Threads
//!
//! No SQLite call runs on a tokio worker. Writes go to one dedicated writer
//! thread (the `writer` module explains it) that batches whatever
//! is queued into one transaction and one fsync: group commit. Reads run on
//! a small pool of read connections in tokio's blocking threads; in WAL
//! mode they see the last commit and never wait for the writer.
//!
//! # Durability
//!
//! * `create_transaction`, `finish_attempt`, `claim_due`, `renew_lease`
//!   and `cancel` return `Ok` only after their commit was fsynced
//!   (`synchronous = FULL`). `create_transaction` syncs every earlier
//!   append of its body with it (one log, one fsync covers all frames
//!   before).
//! * `create_blob` and `append_blob`, the finalizing one included, commit
//!   without fsync: they are visible to readers at once and survive a
//!   process crash, but a power loss may drop them until the next durable
//!   commit. The contract allows it: a body counts only once referenced
//!   by a transaction, whose creation syncs it. (Finalizing used to sync
//!   too; it bought nothing, as nothing is acknowledged on a finalized
//!   blob alone, and cost every message one more fsync.)
//! * `create_with` is `create_transaction` with its key recorded in the
//!   same commit. `register_replica` commits without fsync: a
//!   registration is refreshed long before it matters.
//! * `gc` commits without fsync: a power loss may undo its last steps,
//!   which the next `gc` redoes (tx deletion and refcount are atomic).
//! * Every write's effects commit atomically: a crash never leaves half an
//!   operation (a claim without its attempt count, a refcount without its
//!   transaction).
//!
//! Limits: durability is what fsync gives on this file system; a disk or
//! controller that acknowledges a flush it did not do loses acknowledged
//! writes, and a network file system may not honour SQLite's locks (keep
//! the file local). A write whose caller stops waiting (its future
//! dropped) still takes effect if it was queued. One machine only: this is
//! the single-sidecar store; replicas that share work use Redis.
//!
//! # Waiting for changes
//!
//! [`Store::wait_version`] needs no polling: every write runs on the
//! writer thread, which, once a commit is done, wakes the waiters of each
//! transaction the commit changed (the shared `watch` module keeps them,
//! per id, only while someone waits). One process owns the file, so no
//! write can come from elsewhere.
//!
//! # The file
//!
//! A new store is created only where no file exists (built under a
//! temporary name and linked into place when complete, so a crash during
//! creation leaves no file). A file that exists but is not a Koukan store
//! (0 bytes, not SQLite, an SQLite database without `schema_version`) is
//! refused with [`StoreError::NotAStore`]: it may be a truncated store,
//! and starting empty on it would silently forget what was queued.
//! [`init`] is the explicit way past that.
//!
//! # Space
//!
//! [`Store::admit`] refuses new mail once the free space (the file
//! system's available bytes plus the database's free pages, see the
//! `space` module) is below [`EmbeddedOptions::reserve_bytes`]; every other
//! write may use the reserve. Bodies are collected as soon as their last
//! open transaction is final, which is what gives the space back.
//!
//! # Errors
//!
//! SQLITE_FULL (disk full, or the `max_size_bytes` cap) is
//! [`StoreError::Full`](crate::StoreError::Full); busy/locked, I/O errors,
//! read-only or unopenable files are `Unavailable`; anything else
//! (corruption, a bug) is `Internal`. Messages name the operation.

mod convert;
mod ops;
mod readers;
mod schema;
mod space;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;

use self::convert::{expiry, new_id, to_ms, ttl_ms, wall_ms};
use self::ops::{KeyRow, NewRow, Next};
use self::readers::Readers;
use self::space::{Pages, Space};
use self::writer::Writer;
use crate::watch::{self, Watchers};
use crate::{
    AttemptOutcome, BlobId, BlobInfo, CancelOutcome, CreateOptions, Created, NewTransaction,
    NextStep, QueueCounts, ReplicaId, Store, StoreError, StoreResult, TxId, TxRecord,
};

pub use self::schema::{StoreFile, inspect};
pub use self::space::DEFAULT_RESERVE_MAX;

/// Tuning of the embedded store. `Default` suits a sidecar.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Most write requests one commit carries.
    pub max_batch: usize,
    /// Write requests that may wait for the writer; beyond that, writers
    /// wait to enqueue (backpressure instead of unbounded memory).
    pub queue_capacity: usize,
    /// Read connections (and blocking threads) reads may use at once.
    pub readers: usize,
    /// How long a statement waits for a lock another process holds.
    pub busy_timeout: Duration,
    /// Cap on the database size; writes beyond it fail with
    /// `StoreError::Full` (SQLite's `max_page_count`). `None`: the disk is
    /// the limit.
    pub max_size_bytes: Option<u64>,
    /// Free space kept for delivery: below it [`Store::admit`] refuses new
    /// mail. `None`: `min(64 MiB, 10 %)` of the file system (or of
    /// `max_size_bytes`, when smaller); `Some(0)`: no reserve.
    pub reserve_bytes: Option<u64>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            max_batch: 256,
            queue_capacity: 1024,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            max_size_bytes: None,
            reserve_bytes: None,
        }
    }
}

/// What the writer has done since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Transactions committed (one per batch).
    pub commits: u64,
    /// Of those, commits that were fsynced.
    pub durable_commits: u64,
    /// Write requests carried by those commits.
    pub writes: u64,
    /// The most write requests one commit carried.
    pub largest_batch: u64,
}

/// The embedded [`Store`]: one SQLite file, one writer thread, a few
/// readers. Dropping it waits for the writer to commit what is queued and
/// close its connection, and closes the idle readers: the last connection
/// to close checkpoints the WAL into the database and removes it.
pub struct EmbeddedStore {
    writer: Writer,
    readers: Readers,
    path: PathBuf,
    space: Space,
    /// Waiters of [`Store::wait_version`], woken by the writer thread.
    watchers: Arc<Watchers>,
}

/// What [`init`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitOutcome {
    /// No file was there; a new store is.
    Created,
    /// A valid store was there and is left untouched.
    Exists { schema_version: i64 },
    /// An invalid file was moved aside (never deleted) and a new store
    /// created in its place.
    Replaced { moved_to: PathBuf, found: String },
}

/// Creates a store at `path` where none exists. A valid store is left
/// alone. A file that is not a store is refused ([`StoreError::NotAStore`])
/// unless `force`, which renames it (and its `-wal`/`-shm`, if any) to
/// `<path>.invalid-<unix seconds>` and creates a new store.
pub fn init(path: &Path, force: bool) -> Result<InitOutcome, StoreError> {
    let outcome = match inspect(path)? {
        StoreFile::Valid { schema_version } => return Ok(InitOutcome::Exists { schema_version }),
        StoreFile::Missing => InitOutcome::Created,
        StoreFile::Invalid { found } if !force => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                found,
            });
        }
        StoreFile::Invalid { found } => {
            let secs = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let moved_to = schema::sidecar(path, &format!(".invalid-{secs}"));
            for suffix in ["", "-wal", "-shm"] {
                let from = schema::sidecar(path, suffix);
                let to = schema::sidecar(&moved_to, suffix);
                match std::fs::rename(&from, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError::Unavailable(format!(
                            "moving {} aside to {}: {e}",
                            from.display(),
                            to.display()
                        )));
                    }
                }
            }
            InitOutcome::Replaced { moved_to, found }
        }
    };
    schema::create(path)?;
    Ok(outcome)
}

impl EmbeddedStore {
    /// Opens the database at `path` and migrates its schema, creating it
    /// if no file exists there; a file that is not a Koukan store is
    /// refused with [`StoreError::NotAStore`]. Blocks briefly on file I/O:
    /// call it at start-up.
    pub fn open(path: &Path, opts: EmbeddedOptions) -> Result<Self, StoreError> {
        let conn = schema::open_writer(path, &opts)?;
        let space = Space::new(path, opts.reserve_bytes, opts.max_size_bytes)?;
        let page_size = read_pages(&conn)?.size;
        let wal = space::wal_pages(space.reserve, space.size, page_size);
        // After a checkpoint the WAL file is also cut back to about this
        // size, so a burst does not keep its space taken.
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {wal}; PRAGMA journal_size_limit = {};",
            (wal * page_size * 2).min(64 << 20)
        ))
        .map_err(|e| convert::sql_error("size the WAL", e))?;
        let watchers = Arc::new(Watchers::default());
        let writer = Writer::start(conn, opts.queue_capacity, opts.max_batch, watchers.clone())?;
        Ok(EmbeddedStore {
            writer,
            readers: Readers::new(path.to_path_buf(), opts),
            path: path.to_path_buf(),
            space,
            watchers,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reserve in force, in bytes (0: none).
    pub fn reserve_bytes(&self) -> u64 {
        self.space.reserve
    }

    /// Bytes the store could still write now (file system plus free
    /// pages, under the size cap), freshly measured.
    pub async fn free_bytes(&self) -> StoreResult<u64> {
        self.space.start_measuring();
        let pages = self.readers.run(read_pages).await?;
        self.space.measure(pages)
    }

    /// How many transactions somebody waits on now
    /// ([`Store::wait_version`]); an id is forgotten when its last waiter
    /// leaves.
    pub fn watched_transactions(&self) -> usize {
        self.watchers.len()
    }

    pub fn stats(&self) -> EmbeddedStats {
        let c = &self.writer.counters;
        EmbeddedStats {
            commits: c.commits.load(Ordering::Relaxed),
            durable_commits: c.durable_commits.load(Ordering::Relaxed),
            writes: c.jobs.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
        }
    }
}

/// GC deletes in steps of this many rows, so one `gc` call never holds the
/// writer (and everyone's commits) for long.
const GC_TX_STEP: i64 = 500;
/// Blobs per GC step: fewer, since each may take hundreds of chunk rows.
const GC_BLOB_STEP: i64 = 32;

fn read_pages(conn: &rusqlite::Connection) -> StoreResult<Pages> {
    let get = |pragma: &str| -> StoreResult<u64> {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0))
            .map_err(|e| convert::sql_error(&format!("read {pragma}"), e))
            .map(|v| u64::try_from(v).unwrap_or(0))
    };
    Ok(Pages {
        size: get("page_size")?,
        count: get("page_count")?,
        free: get("freelist_count")?,
    })
}

impl Store for EmbeddedStore {
    fn admit(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            if self.space.reserve == 0 {
                return Ok(());
            }
            // Within a reserve of the limit a cached reading less what was
            // written since is not precise enough (the WAL and pages take
            // more than the bytes): every admission takes a new reading.
            let room = match self.space.fresh_room() {
                Some(room) if room / 2 >= self.space.reserve => room,
                _ => self.free_bytes().await?,
            };
            self.space.verdict(room)
        })
    }

    fn delete_blob<'a>(&'a self, blob: &'a BlobId) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let blob = blob.clone();
            // Not durable: a deletion lost to a power cut is redone by gc.
            self.writer
                .run(false, move |conn| ops::delete_blob(conn, &blob))
                .await
        })
    }

    fn create_blob(&self) -> BoxFuture<'_, StoreResult<BlobId>> {
        Box::pin(async move {
            let blob = BlobId(new_id());
            let id = blob.clone();
            self.writer
                .run(false, move |conn| ops::create_blob(conn, &id, wall_ms()))
                .await?;
            Ok(blob)
        })
    }

    fn put_blob(&self, data: Bytes) -> BoxFuture<'_, StoreResult<BlobId>> {
        Box::pin(async move {
            let blob = BlobId(new_id());
            let id = blob.clone();
            let size = data.len() as u64;
            // One job: both writes commit together or not at all.
            self.writer
                .run(false, move |conn| {
                    let now = wall_ms();
                    ops::create_blob(conn, &id, now)?;
                    ops::append_blob(conn, &id, 0, &data, true, now)
                })
                .await?;
            self.space.wrote(size);
            Ok(blob)
        })
    }

    fn append_blob<'a>(
        &'a self,
        blob: &'a BlobId,
        offset: u64,
        data: Bytes,
        last: bool,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move {
            let blob = blob.clone();
            let size = data.len() as u64;
            // Never durable by itself: the transaction that references the
            // body syncs it (see the module docs).
            let len = self
                .writer
                .run(false, move |conn| {
                    ops::append_blob(conn, &blob, offset, &data, last, wall_ms())
                })
                .await?;
            self.space.wrote(size);
            Ok(len)
        })
    }

    fn read_blob<'a>(
        &'a self,
        blob: &'a BlobId,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'a, StoreResult<Bytes>> {
        Box::pin(async move {
            let blob = blob.clone();
            self.readers
                .run(move |conn| ops::read_blob(conn, &blob, offset, max))
                .await
        })
    }

    fn blob_info<'a>(&'a self, blob: &'a BlobId) -> BoxFuture<'a, StoreResult<BlobInfo>> {
        Box::pin(async move {
            let blob = blob.clone();
            self.readers
                .run(move |conn| ops::blob_info(conn, &blob))
                .await
        })
    }

    fn create_transaction(&self, tx: NewTransaction) -> BoxFuture<'_, StoreResult<TxId>> {
        Box::pin(async move {
            let row = NewRow::encode(tx)?;
            let id = row.id.clone();
            self.writer
                .run(true, move |conn| {
                    ops::create_transaction(conn, &row, wall_ms())
                })
                .await?;
            Ok(id)
        })
    }

    fn create_transactions(
        &self,
        txs: Vec<NewTransaction>,
    ) -> BoxFuture<'_, StoreResult<Vec<TxId>>> {
        Box::pin(async move {
            let rows = txs
                .into_iter()
                .map(NewRow::encode)
                .collect::<StoreResult<Vec<_>>>()?;
            let ids = rows.iter().map(|r| r.id.clone()).collect();
            // One writer job is one savepoint: all rows or none.
            self.writer
                .run(true, move |conn| {
                    let now = wall_ms();
                    for row in &rows {
                        ops::create_transaction(conn, row, now)?;
                    }
                    Ok(())
                })
                .await?;
            Ok(ids)
        })
    }

    fn create_with(
        &self,
        tx: NewTransaction,
        opts: CreateOptions,
    ) -> BoxFuture<'_, StoreResult<Created>> {
        Box::pin(async move {
            crate::check_create_options(&opts)?;
            let mut row = match opts.id {
                Some(id) => NewRow::encode_as(tx, id)?,
                None => NewRow::encode(tx)?,
            };
            row.keep_body = opts.keep_body;
            let key = opts.idempotency.map(|k| KeyRow {
                key: k.key,
                fingerprint: k.fingerprint,
                expires_ms: to_ms(k.expires),
            });
            // The key's expiry is judged by the clock when the job runs,
            // not when it was queued.
            self.writer
                .run(true, move |conn| {
                    ops::create_with(conn, &row, key.as_ref(), wall_ms())
                })
                .await
        })
    }

    fn idempotency_lookup<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<(TxId, String)>>> {
        Box::pin(async move {
            crate::check_idempotency_key(key)?;
            let key = key.to_owned();
            self.readers
                .run(move |conn| ops::idempotency_lookup(conn, &key, wall_ms()))
                .await
        })
    }

    fn get_transaction<'a>(&'a self, id: &'a TxId) -> BoxFuture<'a, StoreResult<TxRecord>> {
        Box::pin(async move {
            let id = id.clone();
            self.readers
                .run(move |conn| ops::get_transaction(conn, &id))
                .await
        })
    }

    fn wait_version<'a>(
        &'a self,
        id: &'a TxId,
        after: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, StoreResult<Option<TxRecord>>> {
        // Every write goes through this process's writer, which wakes the
        // waiters itself: no subscription to wait for.
        Box::pin(watch::wait_version(
            &self.watchers,
            id,
            after,
            deadline,
            || self.get_transaction(id),
            || None,
        ))
    }

    fn claim_due<'a>(
        &'a self,
        owner: &'a ReplicaId,
        now: SystemTime,
        ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<TxRecord>>> {
        Box::pin(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let owner = owner.clone();
            let (now, ttl) = (to_ms(now), ttl_ms(ttl));
            // The scheduler claims whenever it is woken, mostly to find
            // nothing: a read answers that without a durable write. (A
            // transaction due by the time the write would have run is
            // claimed at the next wake-up or poll.)
            if !self
                .readers
                .run(move |conn| ops::any_claimable(conn, now))
                .await?
            {
                return Ok(Vec::new());
            }
            // Atomic because the writer runs one job at a time: two claims
            // in one batch run one after the other, the second seeing the
            // first's leases.
            self.writer
                .run_changing(true, move |conn, changed| {
                    ops::claim_due(conn, &owner, now, ttl, limit, wall_ms(), changed)
                })
                .await
        })
    }

    fn renew_lease<'a>(
        &'a self,
        id: &'a TxId,
        owner: &'a ReplicaId,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let (id, owner, ttl) = (id.clone(), owner.clone(), ttl_ms(ttl));
            self.writer
                .run_changing(true, move |conn, changed| {
                    ops::renew_lease(conn, &id, &owner, ttl, wall_ms())?;
                    changed.push(id.clone());
                    Ok(())
                })
                .await
        })
    }

    fn finish_attempt<'a>(
        &'a self,
        id: &'a TxId,
        owner: &'a ReplicaId,
        outcome: AttemptOutcome,
    ) -> BoxFuture<'a, StoreResult<TxRecord>> {
        Box::pin(async move {
            let responses = serde_json::to_string(&outcome.responses)
                .map_err(|e| StoreError::Internal(format!("encode responses: {e}")))?;
            let next = match outcome.next {
                NextStep::RetryAt(at) => Next::RetryAt(to_ms(at)),
                NextStep::Final { reason } => Next::Final(reason),
            };
            let (id, owner, attempted) = (id.clone(), owner.clone(), outcome.attempted);
            self.writer
                .run_changing(true, move |conn, changed| {
                    let record = ops::finish_attempt(
                        conn,
                        &id,
                        &owner,
                        &responses,
                        attempted,
                        &next,
                        wall_ms(),
                    )?;
                    changed.push(id.clone());
                    Ok(record)
                })
                .await
        })
    }

    fn cancel<'a>(&'a self, id: &'a TxId) -> BoxFuture<'a, StoreResult<CancelOutcome>> {
        Box::pin(async move {
            let id = id.clone();
            self.writer
                .run_changing(true, move |conn, changed| {
                    let outcome = ops::cancel(conn, &id, wall_ms())?;
                    if outcome != CancelOutcome::AlreadyFinal {
                        changed.push(id.clone());
                    }
                    Ok(outcome)
                })
                .await
        })
    }

    fn gc(&self, older_than: SystemTime) -> BoxFuture<'_, StoreResult<usize>> {
        Box::pin(async move {
            let cutoff = to_ms(older_than);
            let mut deleted = 0;
            // Transactions first: they release the bodies the blob pass
            // then finds unreferenced.
            loop {
                // The deleted ones' waiters read again and find them gone.
                let n = self
                    .writer
                    .run_changing(false, move |conn, deleted| {
                        ops::gc_transactions(conn, cutoff, GC_TX_STEP, deleted)
                    })
                    .await?;
                deleted += n;
                if (n as i64) < GC_TX_STEP {
                    break;
                }
            }
            loop {
                let n = self
                    .writer
                    .run(false, move |conn| ops::gc_blobs(conn, cutoff, GC_BLOB_STEP))
                    .await?;
                if (n as i64) < GC_BLOB_STEP {
                    break;
                }
            }
            // Expired by their own time, not by the cutoff (keys whose
            // transactions went above went with them, by cascade).
            loop {
                let n = self
                    .writer
                    .run(false, move |conn| {
                        ops::gc_expired(conn, wall_ms(), GC_TX_STEP)
                    })
                    .await?;
                if (n as i64) < GC_TX_STEP {
                    break;
                }
            }
            Ok(deleted)
        })
    }

    fn counts(&self) -> BoxFuture<'_, StoreResult<QueueCounts>> {
        Box::pin(async move {
            let now = wall_ms();
            self.readers.run(move |conn| ops::counts(conn, now)).await
        })
    }

    fn register_replica<'a>(
        &'a self,
        replica: &'a ReplicaId,
        uri: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let (replica, uri, ttl) = (replica.clone(), uri.to_owned(), ttl_ms(ttl));
            // Not durable: see the module docs.
            self.writer
                .run(false, move |conn| {
                    ops::register_replica(conn, &replica, &uri, expiry(wall_ms(), ttl))
                })
                .await
        })
    }

    fn replica_uri<'a>(
        &'a self,
        replica: &'a ReplicaId,
    ) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(async move {
            let replica = replica.clone();
            self.readers
                .run(move |conn| ops::replica_uri(conn, &replica, wall_ms()))
                .await
        })
    }
}
