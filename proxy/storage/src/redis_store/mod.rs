//! Redis store, shared by replicas.
//!
//! Every replica connects to the same Redis; claims, lease renewals and
//! all other multi-key changes are Lua scripts (`scripts.rs`), so they are
//! atomic and two replicas never hold the same transaction.
//!
//! # Data layout
//!
//! All keys start with [`RedisOptions::key_prefix`] (`P` below).
//!
//! | key | type | contents |
//! |---|---|---|
//! | `P tx:{id}` | hash | one transaction (fields below) |
//! | `P blob:{id}` | hash | `len`, `final` (0/1), `refs` (transactions referencing it), `open` (of those, not final yet), `collected` (present once its data was deleted), `cs` (chunk size), `created_ms`, `upd_ms` (last write) |
//! | `P blob:{id}:{n}` | string | bytes `[n*cs, (n+1)*cs)` of the blob |
//! | `P blobs` | set | every blob id still holding data (for counts) |
//! | `P orphans` | zset | blobs with `refs` 0, by last write (ms), for gc |
//! | `P schedule` | zset | waiting transactions, by next attempt (ms) |
//! | `P leases` | zset | leased transactions, by lease expiry (ms) |
//! | `P final` | zset | final transactions, by last update (ms), for gc |
//! | `P idem:{key}` | hash | an idempotency key of [`Store::create_with`]: `tx` (the transaction it created), `fp` (fingerprint), `expires` (ms); a Redis TTL deletes it at its expiry |
//! | `P replica:{id}` | string | the REST URI a replica registered ([`Store::register_replica`]); a Redis TTL deletes it |
//! | `P tx-version` | pub/sub channel | `"{id} {version}"` after every transaction write, `"{id} deleted"` when gc deletes it |
//!
//! Transaction hash fields: `id`; `tx` (the [`NewTransaction`] as JSON,
//! as given, `lease` included); `body` (its blob id, for refcounting);
//! `created`, `updated`; `version`; `attempts`; `next` (absent once
//! final); `final` (the [`FinalReason`](crate::FinalReason) as its
//! string, absent until final; `cancelled` in records of earlier builds); `owner`,
//! `expires` (absent when not leased); `cancelled` (present when
//! cancelled); `responses` (JSON of the latest [`AttemptResponses`]);
//! `history` (one JSON line per finished attempt: `attempt`,
//! `finished_ms`, `responses`); `nonce` (created by `create_with`: that
//! call's random token, which tells a repeat of the call from a conflict
//! with a transaction created otherwise) and `idem` (its idempotency key,
//! if any, which gc deletes with it).
//! Times are milliseconds since the epoch, truncated, as in the embedded
//! store; a lease lasts at least 1 ms.
//!
//! A transaction is in exactly one of `schedule`, `leases`, `final`:
//! - create: `schedule` at its creation time, or `leases` when created
//!   leased;
//! - claim: due `schedule` entries and expired `leases` entries (oldest
//!   first) move to `leases` under the new owner;
//! - finish: to `schedule` at the retry time, or to `final`;
//! - cancel: a transaction not under an unexpired lease goes to `final`
//!   at once; a leased one is only flagged. Its holder's renewals then fail
//!   with `LeaseLost` (changing nothing) and its finish makes it final
//!   whatever the outcome; if the holder vanishes, the first claim after
//!   the lease expires makes it final instead of handing it out.
//!
//! When a transaction becomes final (finish, cancel, or a claim finding
//! it cancelled) its body's `open` count drops, and at zero the chunks are
//! unlinked in the same script and the blob marked `collected`: delivered
//! mail frees Redis memory at once, not after `gc`.
//!
//! # Waiting for changes
//!
//! [`Store::wait_version`] rides on the version channel: every script
//! that writes a transaction bumps its version and PUBLISHes it in the
//! same atomic step, whichever replica ran it. Each store has one
//! subscriber connection (the `subscriber` module), started by the first
//! wait that has to wait, that wakes the waiters of the ids it hears
//! about. A waiter registers, makes sure the subscription is live, and
//! only then reads the record again, so a write made between its first
//! read and the subscription is seen by that read rather than lost; after
//! a reconnection every waiter reads again for the same reason. Pub/sub is
//! fire-and-forget (nothing is stored), so that re-read is what makes a
//! wait reliable, not the message.
//!
//! Bodies are split into chunk keys of at most [`MAX_CHUNK_SIZE`] so that
//! no single Redis value is huge and reads by offset touch only the
//! chunks they need; a read returns at most the `max` bytes asked for.
//!
//! # Durability
//!
//! A write is acknowledged once Redis has executed it; how durable it
//! then is depends on the server's persistence settings, which
//! [`RedisStore::connect`] reads (`CONFIG GET appendonly`,
//! `appendfsync`, `save`) and reports as a [`Durability`]:
//! - `appendfsync always`: fsynced before the reply, as durable as the
//!   embedded store.
//! - `everysec`: survives a Redis crash; an OS crash or power loss can
//!   lose up to about two seconds of acknowledged mail.
//! - `appendfsync no`: the OS decides when to flush (about 30 s on Linux).
//! - `appendonly no` (volatile): only RDB snapshots, if any; a restart
//!   loses everything since the last one. Refused unless
//!   [`RedisOptions::allow_volatile`].
//! - unknown: managed services often disable `CONFIG`; then the store
//!   cannot check and accepts the server with a warning. The operator is
//!   responsible for configuring AOF there.
//!
//! The check runs once at start-up; a later `CONFIG SET appendonly no`
//! goes unnoticed. Scripts reach Redis's AOF as one MULTI/EXEC each, so
//! a crash never leaves half a script applied.
//!
//! Only a standalone Redis is supported (a failover must keep its
//! address): scripts derive key names from ids, which Redis Cluster only
//! allows when every key hashes to one slot (a prefix with a hash tag,
//! such as `{koukan}:`, does that, at the price of one shard). Tested
//! with Redis 7.0.
//!
//! # Failures
//!
//! # Memory reserve
//!
//! With `maxmemory` set, [`Store::admit`] refuses new mail once
//! `used_memory > maxmemory - reserve` (`INFO memory`, read at most every
//! 200 ms), so that claims, finishes, bounces and gc, which never ask,
//! still have room below `maxmemory` (beyond it, with `noeviction`, Redis
//! refuses every write with `-OOM`). Without `maxmemory` (0) there is no
//! check; where `INFO` is not allowed the check is off and that is logged
//! once.
//!
//! The connection is a [`ConnectionManager`], which reconnects by itself
//! after Redis restarts. Every operation is bounded by
//! [`RedisOptions::op_timeout`]; an unreachable, loading or read-only
//! Redis gives [`StoreError::Unavailable`], `-OOM` gives
//! [`StoreError::Full`]. A timed-out write may still have been applied.
//! For the one write whose outcome the client is told, storing a
//! message's transactions, that is resolved: the script is idempotent
//! (ids are chosen before the call) and is repeated for
//! [`RedisOptions::ack_window`]; if it still has no answer, the caller
//! gets `Unavailable` and the ids are cancelled in the background once
//! Redis answers, so a refused message is not delivered. `create_with`
//! is repeated and withdrawn the same way; its withdrawal touches only a
//! transaction that carries the call's nonce (a chosen id may be someone
//! else's), and drops the idempotency key with it, so that the client's
//! retry is not answered with the withdrawn transaction.

mod record;
mod scripts;
mod subscriber;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};

use crate::{
    AttemptOutcome, AttemptResponses, BlobId, BlobInfo, CancelOutcome, CreateOptions, Created,
    NewTransaction, NextStep, QueueCounts, ReplicaId, Store, StoreError, StoreResult, TxId,
    TxRecord,
};
use scripts::Scripts;
use subscriber::Subscriber;

use crate::reserve::Gauge;
use crate::watch::{self, Watchers};

/// The largest chunk key a blob is split into.
pub const MAX_CHUNK_SIZE: usize = 1 << 20;

/// The most transactions one claim returns ("up to `limit`"): a script
/// blocks Redis while it runs, and Redis's `LIMIT` takes no larger count
/// than an i64 anyway.
pub const MAX_CLAIM: usize = 1000;

/// How many transactions or blobs one gc script call deletes: a script
/// blocks Redis while it runs, so gc proceeds in batches.
const GC_BATCH: usize = 256;

#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Prepended to every key and channel, so that several deployments
    /// can share one Redis.
    pub key_prefix: String,
    /// Accept a server that does not persist writes (`appendonly no`).
    pub allow_volatile: bool,
    /// Bound on every operation, reconnection waits included.
    pub op_timeout: Duration,
    /// Bound on [`RedisStore::connect`] and on each reconnection attempt.
    pub connect_timeout: Duration,
    /// Reconnection attempts (exponential backoff, at most 1 s apart)
    /// before the operations waiting on them fail; the next operation
    /// starts a new round.
    pub reconnect_retries: usize,
    /// Size of the chunk keys new blobs are split into, 1..=[`MAX_CHUNK_SIZE`].
    pub chunk_size: usize,
    /// How long storing a message's transactions is repeated when Redis's
    /// reply does not arrive (the script may have run). Within it a Redis
    /// restart or a broken connection costs the client a wait, not a
    /// refusal; SMTP clients wait minutes for the reply to the final dot.
    pub ack_window: Duration,
    /// Memory kept for delivery below `maxmemory`: new mail is refused
    /// once `used_memory` exceeds `maxmemory` minus this. `None`: 10 % of
    /// `maxmemory`; `Some(0)`: refused only at `maxmemory` itself.
    pub memory_reserve_bytes: Option<u64>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "koukan:".into(),
            allow_volatile: false,
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_retries: 3,
            // Just under 256 KiB, so that a full chunk with Redis's
            // string header fits jemalloc's 256 KiB size class instead of
            // taking the next one (320 KiB).
            chunk_size: 256 * 1024 - 64,
            ack_window: Duration::from_secs(10),
            memory_reserve_bytes: None,
        }
    }
}

/// What an acknowledged write survives, as detected at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durability {
    /// AOF with `appendfsync always`: fsynced before Redis replies.
    FsyncAlways,
    /// AOF with `appendfsync everysec`: an OS crash loses up to ~2 s.
    Everysec,
    /// AOF with `appendfsync no`: the OS flushes when it likes.
    OsFlush,
    /// No AOF; `snapshots` is the RDB `save` schedule, if any.
    Volatile { snapshots: Option<String> },
    /// `CONFIG GET` is not allowed (typical of managed Redis).
    Unknown { reason: String },
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::FsyncAlways => f.write_str("AOF, fsync on every write"),
            Durability::Everysec => f.write_str(
                "AOF, fsync every second (an OS crash may lose the last seconds of mail)",
            ),
            Durability::OsFlush => {
                f.write_str("AOF, fsync left to the OS (an OS crash may lose recent mail)")
            }
            Durability::Volatile { snapshots: Some(s) } => write!(
                f,
                "volatile: no AOF, RDB snapshots ({s}); a restart loses mail since the last one"
            ),
            Durability::Volatile { snapshots: None } => {
                f.write_str("volatile: no AOF and no snapshots; a restart loses all mail")
            }
            Durability::Unknown { reason } => write!(f, "unknown ({reason})"),
        }
    }
}

/// See the module documentation.
pub struct RedisStore {
    conn: ConnectionManager,
    /// `host:port` for messages (the URL may hold a password).
    addr: String,
    opts: RedisOptions,
    durability: Durability,
    scripts: Scripts,
    memory: MemoryGate,
    /// For the subscriber's own connection.
    client: redis::Client,
    /// Waiters of [`Store::wait_version`], woken by the subscriber.
    watchers: Arc<Watchers>,
    /// Started by the first wait that has to wait.
    subscriber: OnceLock<Subscriber>,
}

/// `(used_memory, maxmemory)`, or `None` when `INFO` is refused.
type MemoryReading = Option<(u64, u64)>;

/// The memory readings, and whether refused `INFO` was logged.
#[derive(Default)]
struct MemoryGate {
    gauge: Gauge<MemoryReading>,
    info_refused_logged: std::sync::atomic::AtomicBool,
}

/// `used_memory` and `maxmemory` from an `INFO memory` reply.
fn parse_memory_info(info: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("used_memory")?, field("maxmemory")?))
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.addr)
            .field("key_prefix", &self.opts.key_prefix)
            .field("durability", &self.durability)
            .finish()
    }
}

impl RedisStore {
    /// Connects, checks the server's persistence, and refuses a volatile
    /// server unless `opts.allow_volatile`.
    pub async fn connect(url: &str, opts: RedisOptions) -> StoreResult<Self> {
        if opts.chunk_size == 0 || opts.chunk_size > MAX_CHUNK_SIZE {
            return Err(StoreError::Internal(format!(
                "redis chunk_size {} is not in 1..={MAX_CHUNK_SIZE}",
                opts.chunk_size
            )));
        }
        // The URL is not echoed: it may carry a password.
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid redis url: {e}")))?;
        let addr = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            // A backstop only: `bounded` gives up first, with a message
            // naming the operation, and also bounds waits for reconnection.
            .set_response_timeout(Some(opts.op_timeout + Duration::from_secs(1)))
            .set_number_of_retries(opts.reconnect_retries)
            .set_max_delay(Duration::from_secs(1));
        let conn = match tokio::time::timeout(
            opts.connect_timeout,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to redis at {addr}: {e}"
                )));
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to redis at {addr} within {:?}",
                    opts.connect_timeout
                )));
            }
        };
        let mut store = RedisStore {
            conn,
            addr,
            opts,
            durability: Durability::Unknown {
                reason: "not checked yet".into(),
            },
            scripts: Scripts::new(false),
            memory: MemoryGate::default(),
            client,
            watchers: Arc::default(),
            subscriber: OnceLock::new(),
        };
        store.durability = store.detect_durability().await?;
        if store.script_flags_supported().await {
            store.scripts = Scripts::new(true);
        }
        match &store.durability {
            Durability::Volatile { .. } if !store.opts.allow_volatile => {
                return Err(StoreError::Unavailable(format!(
                    "redis at {} is volatile (appendonly no); set allow_volatile: true to \
                     accept losing acknowledged mail on a Redis restart",
                    store.addr
                )));
            }
            Durability::FsyncAlways => {
                tracing::info!(addr = %store.addr, durability = %store.durability, "redis store")
            }
            other => {
                tracing::warn!(addr = %store.addr, durability = %other, "redis store")
            }
        }
        Ok(store)
    }

    /// The server's persistence as read at [`RedisStore::connect`].
    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    /// The pub/sub channel carrying `"{id} {version}"` after every
    /// transaction write, and `"{id} deleted"` when gc deletes one.
    pub fn version_channel(&self) -> String {
        format!("{}tx-version", self.opts.key_prefix)
    }

    /// How many transactions somebody in this process waits on now
    /// ([`Store::wait_version`]); an id is forgotten when its last waiter
    /// leaves.
    pub fn watched_transactions(&self) -> usize {
        self.watchers.len()
    }

    /// Whether the version subscription is live: started (by a wait) and
    /// connected.
    pub fn subscribed(&self) -> bool {
        self.subscriber.get().is_some_and(|s| *s.live().borrow())
    }

    fn subscriber(&self) -> &Subscriber {
        self.subscriber.get_or_init(|| {
            Subscriber::start(
                subscriber::Config {
                    client: self.client.clone(),
                    channel: self.version_channel(),
                    addr: self.addr.clone(),
                    connect_timeout: self.opts.connect_timeout,
                    op_timeout: self.opts.op_timeout,
                },
                self.watchers.clone(),
            )
        })
    }

    /// Whether the server understands script flags (`#!lua flags=…`,
    /// Redis 7.0 and later), from `INFO server`; false when it cannot tell.
    async fn script_flags_supported(&self) -> bool {
        let mut conn = self.conn.clone();
        let info = self
            .bounded(
                "INFO server",
                redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut conn),
            )
            .await
            .unwrap_or_default();
        let major = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .and_then(|v| v.trim().split('.').next()?.parse::<u32>().ok());
        if major.is_none_or(|m| m < 7) {
            tracing::warn!(addr = %self.addr, version = ?major,
                "redis older than 7.0 (or version unknown): delivery cannot write beyond maxmemory");
        }
        major.is_some_and(|m| m >= 7)
    }

    async fn detect_durability(&self) -> StoreResult<Durability> {
        let get = async |name: &str| -> StoreResult<Result<Option<String>, String>> {
            let mut conn = self.conn.clone();
            let reply = self
                .bounded(
                    "CONFIG GET",
                    redis::cmd("CONFIG")
                        .arg("GET")
                        .arg(name)
                        .query_async::<Value>(&mut conn),
                )
                .await;
            match reply {
                Ok(v) => Ok(Ok(config_value(v, name))),
                // Not being allowed to look is not an outage: the store
                // works, we just cannot tell how durable it is.
                Err(StoreError::Internal(msg)) => Ok(Err(msg)),
                Err(e) => Err(e),
            }
        };
        let aof = match get("appendonly").await? {
            Ok(Some(v)) => v,
            Ok(None) => {
                return Ok(Durability::Unknown {
                    reason: "CONFIG GET appendonly returned nothing".into(),
                });
            }
            Err(reason) => return Ok(Durability::Unknown { reason }),
        };
        if !aof.eq_ignore_ascii_case("yes") {
            let snapshots = get("save").await?.ok().flatten().filter(|s| !s.is_empty());
            return Ok(Durability::Volatile { snapshots });
        }
        Ok(match get("appendfsync").await? {
            Ok(Some(v)) if v.eq_ignore_ascii_case("always") => Durability::FsyncAlways,
            Ok(Some(v)) if v.eq_ignore_ascii_case("everysec") => Durability::Everysec,
            Ok(Some(v)) if v.eq_ignore_ascii_case("no") => Durability::OsFlush,
            Ok(other) => Durability::Unknown {
                reason: format!("appendfsync is {other:?}"),
            },
            Err(reason) => Durability::Unknown { reason },
        })
    }

    /// Runs one Redis call within `op_timeout` and maps its errors.
    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.opts.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(&self.addr, what, e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis at {} did not answer {what} within {:?}",
                self.addr, self.opts.op_timeout
            ))),
        }
    }

    fn prefix(&self) -> &str {
        &self.opts.key_prefix
    }

    /// `(used_memory, maxmemory)`, from a reading at most
    /// [`reserve::FRESH_FOR`](crate::reserve::FRESH_FOR) old, with the body
    /// bytes appended since counted as used; `None` when `INFO` is not
    /// allowed. `fresh`: take a new reading whatever the age of the last.
    async fn memory(&self, fresh: bool) -> StoreResult<MemoryReading> {
        if !fresh && let Some((reading, written)) = self.memory.gauge.fresh() {
            return Ok(reading.map(|(used, max)| (used.saturating_add(written), max)));
        }
        let mut conn = self.conn.clone();
        self.memory.gauge.start_reading();
        let reply = self
            .bounded(
                "INFO memory",
                redis::cmd("INFO")
                    .arg("memory")
                    .query_async::<String>(&mut conn),
            )
            .await;
        let reading = match reply {
            Ok(info) => parse_memory_info(&info),
            // Refused (renamed or ACL'd away): not an outage.
            Err(StoreError::Internal(msg)) => {
                if !self
                    .memory
                    .info_refused_logged
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(addr = %self.addr, error = %msg,
                        "redis INFO memory not available: no memory reserve is kept for delivery");
                }
                None
            }
            // Unreachable: admission is about memory, and the write that
            // follows reports the outage itself (and rides out a restart
            // within the ack window). Not cached: the next call asks again.
            Err(StoreError::Unavailable(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        self.memory.gauge.record(reading);
        Ok(reading)
    }

    async fn admit_impl(&self) -> StoreResult<()> {
        let estimate = |reading: MemoryReading| {
            reading.map(|(used, max)| {
                let reserve = self.opts.memory_reserve_bytes.unwrap_or(max / 10);
                (used, max, reserve)
            })
        };
        let Some(mut reading) = estimate(self.memory(false).await?) else {
            return Ok(());
        };
        let (used, max, reserve) = reading;
        // No maxmemory: nothing to keep a reserve below (and nothing to
        // read again: the cached reading says so until it is renewed).
        if max == 0 {
            return Ok(());
        }
        // Near the limit a cached reading plus what was appended since is
        // not precise enough (bodies take more memory than their bytes):
        // within a reserve of it, every admission takes a new reading.
        if used.saturating_add(reserve) >= max.saturating_sub(reserve) {
            match estimate(self.memory(true).await?) {
                Some(r) => reading = r,
                None => return Ok(()),
            }
        }
        let (used, max, reserve) = reading;
        if max == 0 {
            return Ok(());
        }
        let limit = max.saturating_sub(reserve);
        let below = used > limit;
        if self.memory.gauge.set_below(below) {
            if below {
                tracing::warn!(addr = %self.addr, used, maxmemory = max, reserve,
                    "redis store below its memory reserve: refusing new mail (452 4.3.1) \
                     until delivery frees memory");
            } else {
                tracing::info!(addr = %self.addr, used, maxmemory = max, reserve,
                    "redis store above its memory reserve again: accepting new mail");
            }
        }
        if below {
            return Err(StoreError::Full(format!(
                "below the storage reserve: redis at {} uses {used} of maxmemory {max} \
                 bytes, reserve {reserve} bytes",
                self.addr
            )));
        }
        Ok(())
    }

    async fn delete_blob_impl(&self, blob: &BlobId) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .bounded(
                "delete_blob",
                self.scripts
                    .delete_blob
                    .arg(self.prefix())
                    .arg(&blob.0)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(n == 1)
    }

    async fn create_blob_impl(&self) -> StoreResult<BlobId> {
        let id = new_id();
        let now = record::ms(SystemTime::now());
        let mut conn = self.conn.clone();
        self.bounded(
            "create_blob",
            self.scripts
                .create_blob
                .arg(self.prefix())
                .arg(&id)
                .arg(self.opts.chunk_size)
                .arg(now)
                .invoke_async::<Value>(&mut conn),
        )
        .await?;
        Ok(BlobId(id))
    }

    async fn append_blob_impl(
        &self,
        blob: &BlobId,
        offset: u64,
        data: Bytes,
        last: bool,
    ) -> StoreResult<u64> {
        let now = record::ms(SystemTime::now());
        let size = data.len() as u64;
        let mut conn = self.conn.clone();
        let len = self
            .bounded(
                "append_blob",
                self.scripts
                    .append_blob
                    .arg(self.prefix())
                    .arg(&blob.0)
                    .arg(offset)
                    .arg(&data[..])
                    .arg(if last { "1" } else { "0" })
                    .arg(now)
                    .invoke_async::<u64>(&mut conn),
            )
            .await?;
        self.memory.gauge.wrote(size);
        Ok(len)
    }

    async fn read_blob_impl(&self, blob: &BlobId, offset: u64, max: usize) -> StoreResult<Bytes> {
        if max == 0 {
            // Still report a missing blob.
            self.blob_info_impl(blob).await?;
            return Ok(Bytes::new());
        }
        let mut conn = self.conn.clone();
        let data = self
            .bounded(
                "read_blob",
                self.scripts
                    .read_blob
                    .arg(self.prefix())
                    .arg(&blob.0)
                    .arg(offset)
                    .arg(max)
                    .invoke_async::<Vec<u8>>(&mut conn),
            )
            .await?;
        Ok(Bytes::from(data))
    }

    async fn blob_info_impl(&self, blob: &BlobId) -> StoreResult<BlobInfo> {
        let mut conn = self.conn.clone();
        type Info = (Option<u64>, Option<String>, Option<i64>, Option<String>);
        let (len, fin, refs, collected): Info = self
            .bounded(
                "blob_info",
                redis::cmd("HMGET")
                    .arg(format!("{}blob:{}", self.prefix(), blob.0))
                    .arg("len")
                    .arg("final")
                    .arg("refs")
                    .arg("collected")
                    .query_async(&mut conn),
            )
            .await?;
        let Some(length) = len else {
            return Err(StoreError::NotFound(format!("blob {blob}")));
        };
        if collected.is_some() {
            return Err(StoreError::NotFound(format!(
                "blob {blob}: collected (every transaction using it is final)"
            )));
        }
        Ok(BlobInfo {
            length,
            finalized: fin.as_deref() == Some("1"),
            refcount: u64::try_from(refs.unwrap_or(0)).unwrap_or(0),
        })
    }

    /// Stores a batch with one script call. The call is idempotent (the
    /// ids are chosen here, and the script finds an applied batch by its
    /// first id), so when the connection breaks before the reply arrives,
    /// it is repeated until Redis answers or the ack window ends. Only
    /// then is the outcome unknown: the caller refuses the message, and
    /// the batch is withdrawn in the background as soon as Redis is back,
    /// so that a refused message is not also delivered.
    async fn create_transactions_impl(&self, txs: Vec<NewTransaction>) -> StoreResult<Vec<TxId>> {
        if txs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<TxId> = txs.iter().map(|_| TxId(new_id())).collect();
        let now_t = SystemTime::now();
        let now = record::ms(now_t);
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(txs.len() * scripts::CREATE_TXS_STRIDE);
        for (id, tx) in ids.iter().zip(&txs) {
            push_tx_args(&mut args, id, tx, now_t)?;
        }
        let stored = self
            .until_answered("storing transactions", || {
                let mut conn = self.conn.clone();
                let mut call = self.scripts.create_txs.prepare_invoke();
                call.arg(self.prefix()).arg(now).arg(txs.len()).arg(&args);
                async move {
                    self.bounded("create_transactions", call.invoke_async::<Value>(&mut conn))
                        .await
                }
            })
            .await;
        match stored {
            Ok(_) => Ok(ids),
            Err(e @ StoreError::Unavailable(_)) => {
                self.withdraw_later(ids, None);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// One script call, repeated like `create_transactions_impl`'s (see
    /// there), with a nonce that makes it idempotent although the id may
    /// be the caller's (see the script).
    async fn create_with_impl(
        &self,
        tx: NewTransaction,
        opts: CreateOptions,
    ) -> StoreResult<Created> {
        crate::check_create_options(&opts)?;
        let keep_body = if opts.keep_body { "1" } else { "0" };
        let id = opts.id.unwrap_or_else(|| TxId(new_id()));
        let nonce = new_id();
        let now_t = SystemTime::now();
        let now = record::ms(now_t);
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(scripts::CREATE_TXS_STRIDE);
        push_tx_args(&mut args, &id, &tx, now_t)?;
        let (key, fingerprint, expires) = match &opts.idempotency {
            Some(k) => (
                k.key.as_str(),
                k.fingerprint.as_str(),
                record::ms(k.expires),
            ),
            None => ("", "", 0),
        };
        // Relative: the key lives as long as the caller meant, whatever
        // Redis's clock says (0 or less: expired already, not kept).
        let ttl = expires.saturating_sub(now);
        let reply = self
            .until_answered("creating a transaction", || {
                let mut conn = self.conn.clone();
                let mut call = self.scripts.create_with.prepare_invoke();
                call.arg(self.prefix())
                    .arg(now)
                    .arg(&nonce)
                    .arg(key)
                    .arg(fingerprint)
                    .arg(expires)
                    .arg(ttl)
                    .arg(&args)
                    .arg(keep_body);
                async move {
                    self.bounded("create_with", call.invoke_async::<Value>(&mut conn))
                        .await
                }
            })
            .await;
        match reply {
            Ok(v) => created(v),
            Err(e @ StoreError::Unavailable(_)) => {
                self.withdraw_later(vec![id], Some(nonce));
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `call` (an idempotent write) until Redis answers it, for up
    /// to [`RedisOptions::ack_window`]: a call that found Redis
    /// unreachable, or whose reply was lost, may or may not have been
    /// applied, and only an answer says which. `Unavailable` once the
    /// window is over.
    async fn until_answered<T, Fut>(
        &self,
        what: &str,
        mut call: impl FnMut() -> Fut,
    ) -> StoreResult<T>
    where
        Fut: Future<Output = StoreResult<T>>,
    {
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            match call().await {
                Err(StoreError::Unavailable(msg))
                    if started.elapsed() + wait < self.opts.ack_window =>
                {
                    tracing::warn!(error = %msg, "{what}: outcome unknown, repeating");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    async fn idempotency_lookup_impl(&self, key: &str) -> StoreResult<Option<(TxId, String)>> {
        crate::check_idempotency_key(key)?;
        let now = record::ms(SystemTime::now());
        let mut conn = self.conn.clone();
        let (tx, fingerprint, expires): (Option<String>, Option<String>, Option<i64>) = self
            .bounded(
                "idempotency_lookup",
                redis::cmd("HMGET")
                    .arg(format!("{}idem:{key}", self.prefix()))
                    .arg("tx")
                    .arg("fp")
                    .arg("expires")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(match (tx, fingerprint, expires) {
            // Redis may not have deleted it yet, or its clock may lag ours.
            (Some(tx), Some(fp), Some(expires)) if expires > now => Some((TxId(tx), fp)),
            _ => None,
        })
    }

    async fn register_replica_impl(
        &self,
        replica: &ReplicaId,
        uri: &str,
        ttl: Duration,
    ) -> StoreResult<()> {
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut conn = self.conn.clone();
        self.bounded(
            "register_replica",
            self.scripts
                .register_replica
                .arg(self.prefix())
                .arg(&replica.0)
                .arg(uri)
                .arg(ttl)
                .invoke_async::<Value>(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn replica_uri_impl(&self, replica: &ReplicaId) -> StoreResult<Option<String>> {
        let mut conn = self.conn.clone();
        self.bounded(
            "replica_uri",
            redis::cmd("GET")
                .arg(format!("{}replica:{}", self.prefix(), replica.0))
                .query_async(&mut conn),
        )
        .await
    }

    /// Cancels transactions whose creation may or may not have happened,
    /// retrying until Redis answers. A cancel of an id that was never
    /// stored is `NotFound`, which is as good as done.
    ///
    /// With `nonce` (a `create_with` call's), only a transaction that
    /// call created is withdrawn (see the `WITHDRAW` script).
    fn withdraw_later(&self, ids: Vec<TxId>, nonce: Option<String>) {
        let conn = self.conn.clone();
        let script = match nonce {
            Some(_) => self.scripts.withdraw.clone(),
            None => self.scripts.cancel.clone(),
        };
        let prefix = self.opts.key_prefix.clone();
        let addr = self.addr.clone();
        let op_timeout = self.opts.op_timeout;
        tracing::warn!(
            txs = ids.len(),
            "withdrawing transactions whose storing is in doubt"
        );
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(50);
            for id in ids {
                loop {
                    let mut c = conn.clone();
                    let now = record::ms(SystemTime::now());
                    let mut call = script.prepare_invoke();
                    call.arg(&prefix).arg(&id.0).arg(now);
                    if let Some(nonce) = &nonce {
                        call.arg(nonce);
                    }
                    let r =
                        tokio::time::timeout(op_timeout, call.invoke_async::<i64>(&mut c)).await;
                    match r.map(|r| r.map_err(|e| map_error(&addr, "cancel", e))) {
                        // Not created by the call withdrawn: as good as done.
                        Ok(Ok(-1)) => break,
                        Ok(Ok(_)) => {
                            tracing::info!(tx = %id, "withdrew a transaction stored without acknowledgement");
                            break;
                        }
                        Ok(Err(StoreError::NotFound(_))) => break,
                        Ok(Err(StoreError::Unavailable(_))) | Err(_) => {
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(1));
                        }
                        Ok(Err(e)) => {
                            tracing::error!(tx = %id, error = %e, "withdrawing a transaction failed");
                            break;
                        }
                    }
                }
            }
        });
    }

    async fn get_transaction_impl(&self, id: &TxId) -> StoreResult<TxRecord> {
        let mut conn = self.conn.clone();
        let v = self
            .bounded(
                "get_transaction",
                redis::cmd("HGETALL")
                    .arg(format!("{}tx:{}", self.prefix(), id.0))
                    .query_async::<Value>(&mut conn),
            )
            .await?;
        let fields = record::fields(v)?;
        if fields.is_empty() {
            return Err(StoreError::NotFound(format!("transaction {id}")));
        }
        record::decode(fields)
    }

    async fn claim_due_impl(
        &self,
        owner: &ReplicaId,
        now_t: SystemTime,
        ttl: Duration,
        limit: usize,
    ) -> StoreResult<Vec<TxRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let v = self
            .bounded(
                "claim_due",
                self.scripts
                    .claim_due
                    .arg(self.prefix())
                    .arg(record::ms(now_t))
                    .arg(&owner.0)
                    .arg(record::ms_after(now_t, ttl))
                    .arg(limit.min(MAX_CLAIM))
                    .invoke_async::<Value>(&mut conn),
            )
            .await?;
        match v {
            Value::Array(items) => items
                .into_iter()
                .map(|item| record::decode(record::fields(item)?))
                .collect(),
            other => Err(StoreError::Internal(format!(
                "claim_due script returned {other:?}"
            ))),
        }
    }

    async fn renew_lease_impl(
        &self,
        id: &TxId,
        owner: &ReplicaId,
        ttl: Duration,
    ) -> StoreResult<()> {
        // No time argument here: the lease runs from the local clock.
        let now = SystemTime::now();
        let mut conn = self.conn.clone();
        self.bounded(
            "renew_lease",
            self.scripts
                .renew_lease
                .arg(self.prefix())
                .arg(&id.0)
                .arg(&owner.0)
                .arg(record::ms(now))
                .arg(record::ms_after(now, ttl))
                .invoke_async::<Value>(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn finish_attempt_impl(
        &self,
        id: &TxId,
        owner: &ReplicaId,
        outcome: AttemptOutcome,
    ) -> StoreResult<TxRecord> {
        let now = record::ms(SystemTime::now());
        let responses = serde_json::to_string::<AttemptResponses>(&outcome.responses)
            .map_err(|e| StoreError::Internal(format!("encoding responses: {e}")))?;
        let (kind, what) = match outcome.next {
            NextStep::Final { reason } => ("final", reason.as_str().to_owned()),
            NextStep::RetryAt(t) => ("retry", record::ms(t).to_string()),
        };
        let mut conn = self.conn.clone();
        let v = self
            .bounded(
                "finish_attempt",
                self.scripts
                    .finish_attempt
                    .arg(self.prefix())
                    .arg(&id.0)
                    .arg(&owner.0)
                    .arg(now)
                    .arg(responses)
                    .arg(kind)
                    .arg(what)
                    .arg(if outcome.attempted { "1" } else { "0" })
                    .invoke_async::<Value>(&mut conn),
            )
            .await?;
        record::decode(record::fields(v)?)
    }

    async fn cancel_impl(&self, id: &TxId) -> StoreResult<CancelOutcome> {
        let now = record::ms(SystemTime::now());
        let mut conn = self.conn.clone();
        let code: i64 = self
            .bounded(
                "cancel",
                self.scripts
                    .cancel
                    .arg(self.prefix())
                    .arg(&id.0)
                    .arg(now)
                    .invoke_async::<i64>(&mut conn),
            )
            .await?;
        match code {
            0 => Ok(CancelOutcome::AlreadyFinal),
            1 => Ok(CancelOutcome::Cancelled),
            2 => Ok(CancelOutcome::Requested),
            other => Err(StoreError::Internal(format!(
                "cancel {id}: unexpected script result {other}"
            ))),
        }
    }

    /// Runs a gc script batch after batch until a batch comes back short;
    /// returns how many it deleted in all.
    async fn gc_batches(&self, script: &redis::Script, cutoff: i64) -> StoreResult<usize> {
        let mut deleted = 0;
        loop {
            let mut conn = self.conn.clone();
            let n: usize = self
                .bounded(
                    "gc",
                    script
                        .arg(self.prefix())
                        .arg(cutoff)
                        .arg(GC_BATCH)
                        .invoke_async(&mut conn),
                )
                .await?;
            deleted += n;
            if n < GC_BATCH {
                return Ok(deleted);
            }
        }
    }

    async fn gc_impl(&self, older_than: SystemTime) -> StoreResult<usize> {
        let cutoff = record::ms(older_than);
        // Transactions first: deleting them can orphan blobs that the
        // second phase then deletes in the same run.
        let deleted = self.gc_batches(&self.scripts.gc_txs, cutoff).await?;
        self.gc_batches(&self.scripts.gc_blobs, cutoff).await?;
        Ok(deleted)
    }

    async fn counts_impl(&self) -> StoreResult<QueueCounts> {
        let now = record::ms(SystemTime::now());
        let mut conn = self.conn.clone();
        let c: Vec<u64> = self
            .bounded(
                "counts",
                self.scripts
                    .counts
                    .arg(self.prefix())
                    .arg(now)
                    .invoke_async(&mut conn),
            )
            .await?;
        let [waiting, due, inflight, final_, blobs] = c[..] else {
            return Err(StoreError::Internal(format!(
                "counts script returned {} values",
                c.len()
            )));
        };
        Ok(QueueCounts {
            waiting,
            due,
            inflight,
            final_,
            blobs,
        })
    }
}

/// Appends a new transaction's [`scripts::CREATE_TXS_STRIDE`] script
/// values.
fn push_tx_args(
    args: &mut Vec<Vec<u8>>,
    id: &TxId,
    tx: &NewTransaction,
    now_t: SystemTime,
) -> StoreResult<()> {
    let now = record::ms(now_t);
    let json = serde_json::to_string(tx)
        .map_err(|e| StoreError::Internal(format!("encoding transaction: {e}")))?;
    let (leased, owner, expires) = match &tx.lease {
        Some((owner, ttl)) => ("1", owner.0.as_str(), record::ms_after(now_t, *ttl)),
        None => ("0", "", 0),
    };
    let (next, attempts, responses, history) = match &tx.prior_attempt {
        Some(p) => {
            let responses = serde_json::to_string(&p.responses)
                .map_err(|e| StoreError::Internal(format!("encoding responses: {e}")))?;
            let line = record::HistoryLine {
                attempt: 1,
                finished_ms: record::ms(p.finished),
                responses: p.responses.clone(),
            }
            .encode()?;
            (record::ms(p.next_attempt), 1, responses, line)
        }
        None => (now, 0, String::new(), String::new()),
    };
    for v in [
        id.0.clone(),
        tx.body.0.clone(),
        json,
        leased.to_owned(),
        owner.to_owned(),
        expires.to_string(),
        next.to_string(),
        attempts.to_string(),
        responses,
        history,
    ] {
        args.push(v.into_bytes());
    }
    Ok(())
}

/// The `create_with` script's reply: `{1, id}` or `{0, id, fingerprint}`.
fn created(v: Value) -> StoreResult<Created> {
    let bad = |v: &dyn fmt::Debug| StoreError::Internal(format!("create_with returned {v:?}"));
    let Value::Array(items) = v else {
        return Err(bad(&v));
    };
    let text = |v: &Value| {
        record::bytes(v.clone())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    match &items[..] {
        [Value::Int(1), id] => text(id).map(|id| Created::New(TxId(id))),
        [Value::Int(0), id, fp] => {
            text(id)
                .zip(text(fp))
                .map(|(id, fingerprint)| Created::Existing {
                    id: TxId(id),
                    fingerprint,
                })
        }
        _ => None,
    }
    .ok_or_else(|| bad(&items))
}

/// 128 random bits in hex: unique across replicas without coordination,
/// URL-safe, and unguessable (ids appear in REST paths).
fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The value of a `CONFIG GET name` reply (a flat array in RESP2, a map
/// in RESP3), or `None` if the server does not know the parameter.
fn config_value(v: Value, name: &str) -> Option<String> {
    let f = record::fields(v).ok()?;
    f.into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| String::from_utf8(v).ok())
}

/// Maps a Redis error: our scripts' refusal codes to the typed variants,
/// memory exhaustion to `Full`, anything that means "Redis cannot serve
/// now" to `Unavailable`, the rest (bugs, unexpected replies) to
/// `Internal`.
fn map_error(addr: &str, what: &str, e: RedisError) -> StoreError {
    let detail = e.detail().unwrap_or("").trim();
    match e.code() {
        Some("LEASELOST") => return StoreError::LeaseLost(TxId(detail.to_owned())),
        Some("NOTFOUND") => return StoreError::NotFound(detail.to_owned()),
        Some("EXISTS") => return StoreError::Exists(detail.to_owned()),
        Some("BLOBCONFLICT") => {
            let (blob, reason) = detail.split_once(' ').unwrap_or((detail, ""));
            return StoreError::BlobConflict {
                blob: BlobId(blob.to_owned()),
                reason: reason.to_owned(),
            };
        }
        Some("OOM") => {
            return StoreError::Full(format!("redis at {addr} is out of memory ({what}): {e}"));
        }
        // Not writable now: an RDB save failed (MISCONF), too few
        // replicas (NOREPLICAS), a long script (BUSY), credentials.
        Some("MISCONF" | "NOREPLICAS" | "BUSY" | "NOAUTH" | "WRONGPASS") => {
            return StoreError::Unavailable(format!("redis at {addr} ({what}): {e}"));
        }
        _ => {}
    }
    let unavailable = e.is_io_error()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Client
                | ErrorKind::AuthenticationFailed
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                )
        );
    if unavailable {
        StoreError::Unavailable(format!("redis at {addr} ({what}): {e}"))
    } else {
        StoreError::Internal(format!("redis at {addr} ({what}): {e}"))
    }
}

impl Store for RedisStore {
    fn admit(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.admit_impl())
    }

    fn delete_blob<'a>(&'a self, blob: &'a BlobId) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.delete_blob_impl(blob))
    }

    fn create_blob(&self) -> BoxFuture<'_, StoreResult<BlobId>> {
        Box::pin(self.create_blob_impl())
    }

    fn append_blob<'a>(
        &'a self,
        blob: &'a BlobId,
        offset: u64,
        data: Bytes,
        last: bool,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(self.append_blob_impl(blob, offset, data, last))
    }

    fn read_blob<'a>(
        &'a self,
        blob: &'a BlobId,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'a, StoreResult<Bytes>> {
        Box::pin(self.read_blob_impl(blob, offset, max))
    }

    fn blob_info<'a>(&'a self, blob: &'a BlobId) -> BoxFuture<'a, StoreResult<BlobInfo>> {
        Box::pin(self.blob_info_impl(blob))
    }

    fn create_transaction(&self, tx: NewTransaction) -> BoxFuture<'_, StoreResult<TxId>> {
        Box::pin(async move {
            let mut ids = self.create_transactions_impl(vec![tx]).await?;
            ids.pop()
                .ok_or_else(|| StoreError::Internal("no transaction id".into()))
        })
    }

    fn create_transactions(
        &self,
        txs: Vec<NewTransaction>,
    ) -> BoxFuture<'_, StoreResult<Vec<TxId>>> {
        Box::pin(self.create_transactions_impl(txs))
    }

    fn create_with(
        &self,
        tx: NewTransaction,
        opts: CreateOptions,
    ) -> BoxFuture<'_, StoreResult<Created>> {
        Box::pin(self.create_with_impl(tx, opts))
    }

    fn idempotency_lookup<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<(TxId, String)>>> {
        Box::pin(self.idempotency_lookup_impl(key))
    }

    fn get_transaction<'a>(&'a self, id: &'a TxId) -> BoxFuture<'a, StoreResult<TxRecord>> {
        Box::pin(self.get_transaction_impl(id))
    }

    fn wait_version<'a>(
        &'a self,
        id: &'a TxId,
        after: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, StoreResult<Option<TxRecord>>> {
        Box::pin(watch::wait_version(
            &self.watchers,
            id,
            after,
            deadline,
            || self.get_transaction_impl(id),
            // Only a wait that has to wait starts the subscriber.
            || Some(self.subscriber().live()),
        ))
    }

    fn claim_due<'a>(
        &'a self,
        owner: &'a ReplicaId,
        now: SystemTime,
        ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<TxRecord>>> {
        Box::pin(self.claim_due_impl(owner, now, ttl, limit))
    }

    fn renew_lease<'a>(
        &'a self,
        id: &'a TxId,
        owner: &'a ReplicaId,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.renew_lease_impl(id, owner, ttl))
    }

    fn finish_attempt<'a>(
        &'a self,
        id: &'a TxId,
        owner: &'a ReplicaId,
        outcome: AttemptOutcome,
    ) -> BoxFuture<'a, StoreResult<TxRecord>> {
        Box::pin(self.finish_attempt_impl(id, owner, outcome))
    }

    fn cancel<'a>(&'a self, id: &'a TxId) -> BoxFuture<'a, StoreResult<CancelOutcome>> {
        Box::pin(self.cancel_impl(id))
    }

    fn gc(&self, older_than: SystemTime) -> BoxFuture<'_, StoreResult<usize>> {
        Box::pin(self.gc_impl(older_than))
    }

    fn counts(&self) -> BoxFuture<'_, StoreResult<QueueCounts>> {
        Box::pin(self.counts_impl())
    }

    fn register_replica<'a>(
        &'a self,
        replica: &'a ReplicaId,
        uri: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.register_replica_impl(replica, uri, ttl))
    }

    fn replica_uri<'a>(
        &'a self,
        replica: &'a ReplicaId,
    ) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(self.replica_uri_impl(replica))
    }
}
