//! Durable transaction storage: one trait, two implementations (embedded
//! SQLite for a single sidecar, Redis for replicas that share work), one
//! test suite both must pass (`suite`, with the `test-util` feature).
//!
//! What the store guarantees: when a write method returns `Ok`, the write
//! is durable to the degree the backend promises (embedded: fsynced; Redis:
//! whatever its `appendfsync` gives, checked at start-up). A transaction is
//! delivered by at most one replica at a time: the one holding its lease.
//! A change to a transaction can be waited for ([`Store::wait_version`]),
//! across replicas. [`Metered`] wraps any store with latency histograms.
//!
//! For the REST API: [`Store::create_with`] creates a transaction under an
//! id the caller chose and/or an idempotency key, atomically across
//! replicas, and a registry of replicas ([`Store::register_replica`],
//! [`Store::replica_uri`]) says where to redirect a request for a
//! transaction another replica holds.
#![forbid(unsafe_code)]

pub mod embedded;
pub mod metered;
pub mod model;
pub mod redis_store;
mod reserve;
/// Test support, not for production code: only with the `test-util`
/// feature (which the crate's own tests turn on) or in unit tests.
#[cfg(any(test, feature = "test-util"))]
pub mod suite;
mod watch;

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;

pub use metered::Metered;
pub use model::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller's lease was lost (expired and taken over): it must stop
    /// working on the transaction.
    #[error("lease lost on transaction {0}")]
    LeaseLost(TxId),
    /// An append at an offset other than the blob's current length, or to
    /// a finalized blob.
    #[error("blob {blob}: {reason}")]
    BlobConflict { blob: BlobId, reason: String },
    /// The backend cannot take writes now (unreachable, read-only, not
    /// durable). Maps to a 4xx for the client.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The disk (or Redis maxmemory) is full. Maps to 452 4.3.1.
    #[error("storage full: {0}")]
    Full(String),
    #[error("storage internal error: {0}")]
    Internal(String),
    /// [`Store::create_with`] with a chosen id that a transaction already
    /// has: nothing was created, and that transaction is unchanged.
    #[error("already exists: {0}")]
    Exists(String),
    /// An argument the store cannot take (a chosen id outside
    /// [`TxId::is_valid`], an idempotency key that is empty or too long).
    /// The caller's mistake: retrying it fails the same way.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// An embedded store file that exists but is not a Koukan store (empty,
    /// not SQLite, or someone else's database). Refused rather than
    /// overwritten: it may be a truncated store whose mail is lost.
    #[error(
        "{}: not a koukan store: {found}; refusing to start on it (to set it aside and \
         create a new store: koukan init-store --config FILE --force)",
        path.display()
    )]
    NotAStore {
        path: std::path::PathBuf,
        found: String,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The storage backend. Object-safe so the proxy holds `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// Whether new mail may be stored now: `Err(StoreError::Full)` while
    /// free space is below the store's reserve (see the crate docs). Only
    /// the receiving path asks; bounces, claims, renewals, finishes,
    /// cancels and gc never do and keep working below the reserve. Cheap:
    /// backends answer from a reading refreshed at most every few hundred
    /// milliseconds, so a burst may overshoot the reserve by that much.
    /// The default admits everything.
    fn admit(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }

    /// A new, empty, unfinalized blob with a refcount of zero; it is
    /// garbage-collected unless a transaction references it.
    fn create_blob(&self) -> BoxFuture<'_, StoreResult<BlobId>>;

    /// Appends `data` at `offset` (must equal the current length); with
    /// `last` the blob becomes final and immutable. Returns the new length.
    /// Not durable by itself, finalizing included: durability comes with
    /// the `create_transaction` that references the blob, which must sync
    /// every prior append.
    fn append_blob<'a>(
        &'a self,
        blob: &'a BlobId,
        offset: u64,
        data: Bytes,
        last: bool,
    ) -> BoxFuture<'a, StoreResult<u64>>;

    /// A new blob holding `data`, finalized: [`Store::create_blob`] and a
    /// finalizing [`Store::append_blob`] as one write where the backend
    /// can (a small body or an inline part costs one round trip, not two).
    /// Not durable by itself, like the append.
    fn put_blob(&self, data: Bytes) -> BoxFuture<'_, StoreResult<BlobId>> {
        Box::pin(async move {
            let blob = self.create_blob().await?;
            self.append_blob(&blob, 0, data, true).await?;
            Ok(blob)
        })
    }

    /// Reads up to `max` bytes at `offset` (empty at the end). Bodies are
    /// read in chunks; a whole message is never loaded at once.
    fn read_blob<'a>(
        &'a self,
        blob: &'a BlobId,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'a, StoreResult<Bytes>>;

    /// `NotFound` for an unknown blob, and for one whose data was
    /// collected (see the crate docs).
    fn blob_info<'a>(&'a self, blob: &'a BlobId) -> BoxFuture<'a, StoreResult<BlobInfo>>;

    /// Deletes a blob that no transaction references (an upload abandoned
    /// or no longer needed) at once, finalized or not; returns whether it
    /// did. A referenced blob is left alone (`Ok(false)`), and so is an
    /// unknown one. Not subject to the reserve: it frees space.
    fn delete_blob<'a>(&'a self, blob: &'a BlobId) -> BoxFuture<'a, StoreResult<bool>>;

    /// Creates a transaction referencing finalized `body` (refcount + 1).
    /// Durable when it returns: this is what lets the listener say 250.
    /// With `lease`, the new transaction is leased to that replica (it runs
    /// it at once); otherwise it is due immediately for any replica.
    fn create_transaction(&self, tx: NewTransaction) -> BoxFuture<'_, StoreResult<TxId>>;

    /// Creates several transactions (one message's recipients) as one
    /// write, so a message refused on a storage error reaches none of them.
    /// Both stores commit them together. This default, for a backend
    /// that cannot, makes one call each and, on an error, cancels those
    /// already created: best effort, as the cancel can fail for the same
    /// reason.
    fn create_transactions(
        &self,
        txs: Vec<NewTransaction>,
    ) -> BoxFuture<'_, StoreResult<Vec<TxId>>> {
        Box::pin(async move {
            let mut ids = Vec::with_capacity(txs.len());
            for tx in txs {
                match self.create_transaction(tx).await {
                    Ok(id) => ids.push(id),
                    Err(e) => {
                        for id in &ids {
                            if let Err(c) = self.cancel(id).await {
                                tracing::warn!(tx = %id, error = %c, "withdrawing a partly stored message failed");
                            }
                        }
                        return Err(e);
                    }
                }
            }
            Ok(ids)
        })
    }

    /// [`create_transaction`](Store::create_transaction) with options: a
    /// caller-chosen id, an idempotency key, or both. The same rules as
    /// there (body must exist and be finalized; `lease`, `prior_attempt`;
    /// durable when it returns), and these, checked in this order in the
    /// same atomic step as the creation, so that concurrent calls (from any
    /// replica of a shared store) agree:
    ///
    /// 1. With an idempotency key that is in use and unexpired: nothing is
    ///    created (nor checked further), [`Created::Existing`] with the
    ///    transaction the key's first use created (whatever its state now)
    ///    and the fingerprint stored then. Of N concurrent calls with one
    ///    key, exactly one creates.
    /// 2. With a chosen id that a transaction already has:
    ///    [`StoreError::Exists`], nothing created or changed.
    /// 3. The body checks of `create_transaction` (`NotFound`,
    ///    `BlobConflict`).
    ///
    /// Then the transaction is created and the key, if any, recorded with
    /// it: [`Created::New`]. A failed call records no key. An expired key
    /// counts as absent: the call creates, and the key then points to the
    /// new transaction. A key given already expired is not kept. An invalid
    /// id or key: [`StoreError::Invalid`]. Like `create_transaction` it
    /// does not ask [`admit`](Store::admit) itself: the receiving path does.
    fn create_with(
        &self,
        tx: NewTransaction,
        opts: CreateOptions,
    ) -> BoxFuture<'_, StoreResult<Created>>;

    /// The transaction an unexpired idempotency key created and the
    /// fingerprint stored with the key; `None` for an unknown or expired
    /// key. A cheap check before doing the work of a request; only
    /// [`create_with`](Store::create_with) settles a race.
    fn idempotency_lookup<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<(TxId, String)>>>;

    fn get_transaction<'a>(&'a self, id: &'a TxId) -> BoxFuture<'a, StoreResult<TxRecord>>;

    /// Waits until transaction `id` changes: returns its record as soon as
    /// its `version` is greater than `after` (at once if it already is),
    /// or `Ok(None)` at `deadline` if it did not change by then (also for
    /// a deadline already past). `NotFound` for an unknown id, and for one
    /// that gc deletes during the wait. For hanging GETs: a caller passes
    /// the version it last saw and gets the next state, or `None` to
    /// answer "not modified".
    ///
    /// `version` is bumped, and waiters woken, by every write that changes
    /// the record: its creation (version 1), a claim (including one that
    /// finalizes a cancelled transaction instead of leasing it), a lease
    /// renewal (the lease's expiry moves), a finish, and a cancel that
    /// changes something (finalizing, or flagging a leased transaction the
    /// first time; a cancel of a final or already flagged one changes
    /// nothing and bumps nothing). Writes to blobs (appends, finalizing,
    /// collection) are not writes of the transaction and wake nobody.
    ///
    /// Writes by any process on the same store wake the waiter (Redis:
    /// other replicas' too). A waiter costs no polling: it is woken by the
    /// write, reads the record once, and sleeps again if the change was not
    /// one it waits for. While the store is unreachable during the wait
    /// (Redis restarting) the wait goes on and catches up once it is back;
    /// the first read, though, fails at once. Dropping the future ends the
    /// wait and forgets the waiter.
    fn wait_version<'a>(
        &'a self,
        id: &'a TxId,
        after: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, StoreResult<Option<TxRecord>>>;

    /// Atomically leases up to `limit` transactions that are due
    /// (`next_attempt <= now`, not final, not leased or lease expired) to
    /// `owner` for `ttl`, and returns them. Two concurrent claims never
    /// return the same transaction.
    fn claim_due<'a>(
        &'a self,
        owner: &'a ReplicaId,
        now: SystemTime,
        ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<TxRecord>>>;

    /// Extends `owner`'s lease; `LeaseLost` if another replica holds it.
    fn renew_lease<'a>(
        &'a self,
        id: &'a TxId,
        owner: &'a ReplicaId,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>>;

    /// Records an attempt's outcome and releases the lease: either final
    /// (with a reason) or scheduled for `next_attempt`. `LeaseLost` if the
    /// caller no longer holds the lease (its outcome is not recorded).
    fn finish_attempt<'a>(
        &'a self,
        id: &'a TxId,
        owner: &'a ReplicaId,
        outcome: AttemptOutcome,
    ) -> BoxFuture<'a, StoreResult<TxRecord>>;

    /// Cancels a transaction: a non-leased one is finalized at once
    /// ([`CancelOutcome::Cancelled`]); a leased one is flagged and its
    /// holder sees it at its next renew/finish
    /// ([`CancelOutcome::Requested`]); a final one is left as it is
    /// ([`CancelOutcome::AlreadyFinal`]).
    fn cancel<'a>(&'a self, id: &'a TxId) -> BoxFuture<'a, StoreResult<CancelOutcome>>;

    /// Deletes final transactions whose last update is older than
    /// `older_than`, and blobs no transaction references that were last
    /// written before it (collected bodies included, once their last
    /// transaction is gone). Returns the number of transactions deleted.
    fn gc(&self, older_than: SystemTime) -> BoxFuture<'_, StoreResult<usize>>;

    /// Queue counts by state, for the admin endpoint.
    fn counts(&self) -> BoxFuture<'_, StoreResult<QueueCounts>>;

    /// Records (or refreshes) that `replica` serves its REST API at `uri`,
    /// for `ttl` (at least a millisecond) from now by the store's clock,
    /// replacing what it registered before. For redirecting a request to
    /// the replica holding a transaction's lease: replicas re-register well
    /// within their TTL, so an entry outlives its replica by at most that.
    /// Not subject to [`admit`](Store::admit), nor refused below the
    /// reserve: a replica must stay reachable while delivery drains a full
    /// store (Redis: beyond `maxmemory` too, from Redis 7.0 on, like
    /// delivery's writes). Not durable by itself (a power cut may lose the latest
    /// registration; the next refresh restores it).
    fn register_replica<'a>(
        &'a self,
        replica: &'a ReplicaId,
        uri: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>>;

    /// The URI `replica` last registered; `None` if it never did or its
    /// registration expired.
    fn replica_uri<'a>(
        &'a self,
        replica: &'a ReplicaId,
    ) -> BoxFuture<'a, StoreResult<Option<String>>>;
}

/// The checks both backends make of [`Store::create_with`]'s options
/// before touching the store.
pub(crate) fn check_create_options(opts: &CreateOptions) -> StoreResult<()> {
    if let Some(id) = &opts.id
        && !TxId::is_valid(&id.0)
    {
        return Err(StoreError::Invalid(format!(
            "transaction id {:?}: not 1 to {} characters of [A-Za-z0-9_-]",
            id.0,
            TxId::MAX_LEN
        )));
    }
    if let Some(k) = &opts.idempotency {
        check_idempotency_key(&k.key)?;
    }
    Ok(())
}

/// An idempotency key is 1 to [`IdempotencyKey::MAX_LEN`] characters.
pub(crate) fn check_idempotency_key(key: &str) -> StoreResult<()> {
    let len = key.chars().count();
    if len == 0 || len > IdempotencyKey::MAX_LEN {
        return Err(StoreError::Invalid(format!(
            "idempotency key of {len} characters: not 1 to {}",
            IdempotencyKey::MAX_LEN
        )));
    }
    Ok(())
}
