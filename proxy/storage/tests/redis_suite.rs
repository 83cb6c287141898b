//! The Redis store against a real `redis-server`, one per test, on a free
//! loopback port with AOF and `appendfsync always` in a temporary
//! directory. The binary is required: without it these tests fail rather
//! than skip (set `KOUKAN_REDIS_SERVER` if it is not on the PATH).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use koukan_storage::redis_store::{Durability, RedisOptions, RedisStore};
use koukan_storage::{
    AttemptOutcome, AttemptResponses, BlobId, CancelOutcome, CreateOptions, Created, FinalReason,
    IdempotencyKey, NewTransaction, NextStep, ReplicaId, Store, StoreError, StoredIngress,
    StoredMailbox, StoredResponse, StoredSmtp, TxId, TxState,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

// ---------------------------------------------------------------------
// A redis-server child process.

fn redis_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KOUKAN_REDIS_SERVER") {
        return PathBuf::from(p);
    }
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("redis-server"));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "redis-server not found (looked in PATH, /usr/bin, /usr/local/bin): install it \
         (e.g. apt-get install redis-server) or set KOUKAN_REDIS_SERVER"
    );
}

struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// A durable server (AOF, fsync on every write).
    async fn start() -> RedisServer {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await
    }

    async fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A port found free can be taken before redis binds it; then redis
        // exits and we try another.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn().await {
                return server;
            }
        }
        panic!(
            "redis-server did not start; log:\n{}",
            server.log().unwrap_or_default()
        );
    }

    /// Starts redis on `self.port` with `self.dir`; false if it exited.
    async fn spawn(&mut self) -> bool {
        let dir = self.dir.path();
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                eprintln!("redis-server exited: {status}");
                self.child = None;
                return false;
            }
            if ping(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {} not ready after 10 s", self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn log(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("redis.log")).ok()
    }

    /// SIGKILL: no shutdown save, no goodbye to clients.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (STOP freezes it, CONT resumes it).
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {pid} failed");
    }

    /// Starts it again on the same port and directory (AOF reloaded).
    async fn restart(&mut self) {
        assert!(self.spawn().await, "redis-server did not restart");
    }

    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("raw redis connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// True once the server answers PING with PONG (not LOADING).
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"PING\r\n").await?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line.starts_with("+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}

// ---------------------------------------------------------------------
// Helpers.

fn opts() -> RedisOptions {
    RedisOptions {
        key_prefix: "t:".into(),
        op_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        reconnect_retries: 1,
        ..RedisOptions::default()
    }
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), opts())
        .await
        .expect("connect to redis")
}

fn new_tx(body: &BlobId, lease: Option<(ReplicaId, Duration)>) -> NewTransaction {
    NewTransaction {
        sender: "smtp-msa".into(),
        tag: "submission".into(),
        chain: "outbound".into(),
        mail_from: StoredMailbox {
            address: "alice@example.com".into(),
            params: vec![],
        },
        rcpt_to: vec![StoredMailbox {
            address: "bob@example.org".into(),
            params: vec![],
        }],
        ingress: StoredIngress::Smtp(StoredSmtp {
            listener: "msa".into(),
            peer: Some("192.0.2.1:4567".parse().unwrap()),
            local: None,
            ehlo_host: None,
            esmtp: true,
            tls: None,
            auth_user: None,
        }),
        body: body.clone(),
        retry: true,
        notification: false,
        lease,
        prior_attempt: None,
        signals: Default::default(),
    }
}

async fn body(s: &dyn Store, content: &[u8]) -> BlobId {
    let b = s.create_blob().await.unwrap();
    s.append_blob(&b, 0, Bytes::copy_from_slice(content), true)
        .await
        .unwrap();
    b
}

fn replica(name: &str) -> ReplicaId {
    ReplicaId(name.into())
}

fn retry_at(t: SystemTime) -> AttemptOutcome {
    AttemptOutcome {
        responses: AttemptResponses {
            mail: Some(StoredResponse {
                code: 250,
                text: "ok".into(),
            }),
            rcpt: vec![Some(StoredResponse {
                code: 451,
                text: "try later".into(),
            })],
            data: None,
        },
        next: NextStep::RetryAt(t),
        attempted: true,
    }
}

fn final_outcome(reason: FinalReason) -> AttemptOutcome {
    AttemptOutcome {
        responses: AttemptResponses::default(),
        next: NextStep::Final { reason },
        attempted: true,
    }
}

const DELIVERED: FinalReason = FinalReason::UpstreamSuccess;
const BOUNCED: FinalReason = FinalReason::UpstreamPermfail;
const CANCELLED: FinalReason = FinalReason::DownstreamCancelled;

/// Truncated to milliseconds, as the store keeps times.
fn ms(t: SystemTime) -> SystemTime {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_millis(d.as_millis() as u64)
}

async fn keys(server: &RedisServer, pattern: &str) -> Vec<String> {
    let mut raw = server.raw().await;
    let mut k: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut raw)
        .await
        .unwrap();
    k.sort();
    k
}

// ---------------------------------------------------------------------
// The conformance suite shared with the embedded store.

/// Runs the suite on one server; every store it asks for gets a key
/// prefix of its own, so it starts empty.
async fn run_suite(chunk_size: usize) {
    let server = RedisServer::start().await;
    let url = server.url();
    let next = Arc::new(AtomicUsize::new(0));
    koukan_storage::suite::run_all(move || {
        let url = url.clone();
        let n = next.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let s = RedisStore::connect(
                &url,
                RedisOptions {
                    key_prefix: format!("suite{n}:"),
                    chunk_size,
                    // Multi-megabyte appends on a shared, fsyncing server.
                    op_timeout: Duration::from_secs(10),
                    ..opts()
                },
            )
            .await
            .expect("connect to redis");
            Arc::new(s) as Arc<dyn Store>
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_suite() {
    run_suite(RedisOptions::default().chunk_size).await;
}

/// Small, odd-sized chunks: every read and append crosses boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_suite_small_chunks() {
    run_suite(1021).await;
}

// ---------------------------------------------------------------------
// Blobs.

#[tokio::test]
async fn blobs_are_chunked_and_read_by_offset() {
    let server = RedisServer::start().await;
    let s = RedisStore::connect(
        &server.url(),
        RedisOptions {
            chunk_size: 5,
            ..opts()
        },
    )
    .await
    .unwrap();
    let b = s.create_blob().await.unwrap();
    let info = s.blob_info(&b).await.unwrap();
    assert_eq!((info.length, info.finalized, info.refcount), (0, false, 0));

    let content: Vec<u8> = (0u8..22).collect();
    let mut off = 0u64;
    for (piece, last) in [(3, false), (7, false), (0, false), (12, true)] {
        let data = Bytes::copy_from_slice(&content[off as usize..off as usize + piece]);
        off = s.append_blob(&b, off, data, last).await.unwrap();
    }
    assert_eq!(off, 22);
    let info = s.blob_info(&b).await.unwrap();
    assert_eq!((info.length, info.finalized), (22, true));

    // Chunk keys of at most 5 bytes, 0..=4.
    let chunks = keys(&server, &format!("t:blob:{}:*", b.0)).await;
    assert_eq!(chunks.len(), 5, "{chunks:?}");
    let mut raw = server.raw().await;
    for k in &chunks {
        let len: usize = redis::cmd("STRLEN")
            .arg(k)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(len <= 5, "{k} holds {len} bytes");
    }

    // Reads at every offset and several sizes, across chunk boundaries.
    for start in 0..=23u64 {
        for max in [1usize, 4, 5, 6, 11, 100] {
            let got = s.read_blob(&b, start, max).await.unwrap();
            let from = (start as usize).min(22);
            let to = (from + max).min(22);
            assert_eq!(&got[..], &content[from..to], "read at {start} max {max}");
        }
    }
    assert!(s.read_blob(&b, 0, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn blob_conflicts_and_missing_blobs_are_typed() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let b = s.create_blob().await.unwrap();
    s.append_blob(&b, 0, Bytes::from_static(b"hello"), false)
        .await
        .unwrap();
    match s.append_blob(&b, 3, Bytes::from_static(b"x"), false).await {
        Err(StoreError::BlobConflict { blob, reason }) => {
            assert_eq!(blob, b);
            assert!(reason.contains("offset 3"), "{reason}");
        }
        other => panic!("expected BlobConflict, got {other:?}"),
    }
    // A refused append changed nothing.
    assert_eq!(s.blob_info(&b).await.unwrap().length, 5);
    s.append_blob(&b, 5, Bytes::new(), true).await.unwrap();
    assert!(matches!(
        s.append_blob(&b, 5, Bytes::from_static(b"late"), false)
            .await,
        Err(StoreError::BlobConflict { .. })
    ));

    let missing = BlobId("nope".into());
    assert!(matches!(
        s.blob_info(&missing).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.read_blob(&missing, 0, 10).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.read_blob(&missing, 0, 0).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.append_blob(&missing, 0, Bytes::new(), true).await,
        Err(StoreError::NotFound(_))
    ));

    // A transaction needs a finalized body.
    let open = s.create_blob().await.unwrap();
    assert!(matches!(
        s.create_transaction(new_tx(&open, None)).await,
        Err(StoreError::BlobConflict { .. })
    ));
    assert!(matches!(
        s.create_transaction(new_tx(&missing, None)).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.blob_info(&open).await.unwrap().refcount, 0);
}

// ---------------------------------------------------------------------
// Transactions.

#[tokio::test]
async fn lifecycle_bumps_versions_and_publishes_them() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(s.version_channel()).await.unwrap();

    let b = body(&s, b"Subject: hi\r\n\r\nhello\r\n").await;
    let before = ms(SystemTime::now());
    let tx = new_tx(&b, None);
    let id = s.create_transaction(tx.clone()).await.unwrap();
    let r = s.get_transaction(&id).await.unwrap();
    assert_eq!(r.id, id);
    assert_eq!(r.tx, tx);
    assert_eq!(r.version, 1);
    assert_eq!(r.attempt_count, 0);
    assert!(r.created >= before && r.created <= SystemTime::now());
    assert_eq!(r.next_attempt, Some(r.created));
    assert_eq!(r.state(SystemTime::now()), TxState::Waiting);
    assert_eq!(s.blob_info(&b).await.unwrap().refcount, 1);

    let a = replica("a");
    let now = SystemTime::now() + Duration::from_secs(1);
    let claimed = s
        .claim_due(&a, now, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!((c.version, c.attempt_count), (2, 1));
    assert_eq!(c.lease_owner, Some(a.clone()));
    assert_eq!(c.lease_expires, Some(ms(now + Duration::from_secs(30))));
    assert_eq!(c.state(now), TxState::Inflight);
    // Nothing else is due.
    assert!(
        s.claim_due(&a, now, Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty()
    );

    s.renew_lease(&id, &a, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(s.get_transaction(&id).await.unwrap().version, 3);

    let later = SystemTime::now() + Duration::from_secs(600);
    let r = s.finish_attempt(&id, &a, retry_at(later)).await.unwrap();
    assert_eq!(r.version, 4);
    assert_eq!(r.next_attempt, Some(ms(later)));
    assert_eq!((r.lease_owner.clone(), r.lease_expires), (None, None));
    assert_eq!(r.last_responses, Some(retry_at(later).responses));
    assert_eq!(r, s.get_transaction(&id).await.unwrap());
    // Not due before its time, due after.
    assert!(
        s.claim_due(&a, now, Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = s
        .claim_due(&a, later, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt_count, 2);
    let r = s
        .finish_attempt(&id, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    assert_eq!(r.version, 6);
    assert_eq!(r.final_attempt_reason, Some(DELIVERED));
    assert_eq!(r.next_attempt, None);
    assert_eq!(r.state(SystemTime::now()), TxState::Final);
    // The lease is gone with the attempt.
    assert!(matches!(
        s.renew_lease(&id, &a, Duration::from_secs(1)).await,
        Err(StoreError::LeaseLost(x)) if x == id
    ));

    let mut msgs = sub.on_message();
    for v in 1..=6 {
        let m = tokio::time::timeout(Duration::from_secs(2), msgs.next())
            .await
            .expect("version notification")
            .unwrap();
        assert_eq!(m.get_payload::<String>().unwrap(), format!("{} {v}", id.0));
    }
}

#[tokio::test]
async fn leased_at_creation_and_counts() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let b = body(&s, b"x").await;
    let a = replica("a");
    let leased = s
        .create_transaction(new_tx(&b, Some((a.clone(), Duration::from_secs(60)))))
        .await
        .unwrap();
    let r = s.get_transaction(&leased).await.unwrap();
    assert_eq!((r.attempt_count, r.version), (1, 1));
    assert_eq!(r.next_attempt, Some(r.created));
    assert_eq!(r.lease_owner, Some(a.clone()));
    assert_eq!(r.state(SystemTime::now()), TxState::Inflight);
    let waiting = s.create_transaction(new_tx(&b, None)).await.unwrap();
    let done = s.create_transaction(new_tx(&b, None)).await.unwrap();
    assert_eq!(s.blob_info(&b).await.unwrap().refcount, 3);
    let now = SystemTime::now() + Duration::from_secs(1);
    // Only the two unleased ones are due; take exactly one.
    let got = s
        .claim_due(&a, now, Duration::from_secs(60), 1)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let other = if got[0].id == waiting {
        &done
    } else {
        &waiting
    };
    s.claim_due(&a, now, Duration::from_secs(60), 1)
        .await
        .unwrap();
    s.finish_attempt(other, &a, final_outcome(BOUNCED))
        .await
        .unwrap();
    s.create_blob().await.unwrap();

    let c = s.counts().await.unwrap();
    assert_eq!(
        (c.waiting, c.due, c.inflight, c.final_, c.blobs),
        (0, 0, 2, 1, 2),
        "{c:?}"
    );
    assert!(matches!(
        s.get_transaction(&TxId("nope".into())).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn cancel_finalizes_waiting_and_stops_the_holder() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let b = body(&s, b"x").await;
    let a = replica("a");

    // Waiting: final at once, never claimed.
    let w = s.create_transaction(new_tx(&b, None)).await.unwrap();
    s.cancel(&w).await.unwrap();
    let r = s.get_transaction(&w).await.unwrap();
    assert!(r.cancelled);
    assert_eq!(r.final_attempt_reason, Some(CANCELLED));
    let far = SystemTime::now() + Duration::from_secs(3600);
    assert!(
        s.claim_due(&a, far, Duration::from_secs(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Idempotent.
    s.cancel(&w).await.unwrap();

    // Leased: flagged; the holder's renewal fails, and once its lease has
    // run out the transaction is final without ever being claimed.
    // A body of its own: the one before is collected (all final).
    let b = body(&s, b"x").await;
    let l = s
        .create_transaction(new_tx(&b, Some((a.clone(), Duration::from_secs(60)))))
        .await
        .unwrap();
    s.cancel(&l).await.unwrap();
    let r = s.get_transaction(&l).await.unwrap();
    assert!(r.cancelled);
    assert_eq!(r.state(SystemTime::now()), TxState::Inflight);
    assert!(matches!(
        s.renew_lease(&l, &a, Duration::from_secs(60)).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(
        s.get_transaction(&l).await.unwrap(),
        r,
        "renew changed nothing"
    );
    assert!(
        s.claim_due(&a, far, Duration::from_secs(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let r = s.get_transaction(&l).await.unwrap();
    assert_eq!(r.final_attempt_reason, Some(CANCELLED));
    assert_eq!((r.lease_owner, r.lease_expires), (None, None));
    assert_eq!(s.counts().await.unwrap().inflight, 0);

    // Leased, holder finishes asking for a retry: no retry.
    // A body of its own: the one before is collected (all final).
    let b = body(&s, b"x").await;
    let l2 = s
        .create_transaction(new_tx(&b, Some((a.clone(), Duration::from_secs(60)))))
        .await
        .unwrap();
    s.cancel(&l2).await.unwrap();
    let r = s.finish_attempt(&l2, &a, retry_at(far)).await.unwrap();
    assert_eq!(r.final_attempt_reason, Some(CANCELLED));
    assert!(
        s.claim_due(&a, far, Duration::from_secs(1), 10)
            .await
            .unwrap()
            .is_empty()
    );

    assert!(matches!(
        s.cancel(&TxId("nope".into())).await,
        Err(StoreError::NotFound(_))
    ));
}

/// A record finalized by a cancellation before the reason was
/// `downstream cancelled` holds `cancelled`: it still reads, as
/// `DownstreamCancelled`. A reason no build wrote is a damaged record.
#[tokio::test]
async fn stored_final_reasons_of_earlier_builds_still_read() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let b = body(&s, b"x").await;
    let old = s.create_transaction(new_tx(&b, None)).await.unwrap();
    let bad = s.create_transaction(new_tx(&b, None)).await.unwrap();
    s.cancel(&old).await.unwrap();
    s.cancel(&bad).await.unwrap();
    let mut raw = server.raw().await;
    let written: String = redis::cmd("HGET")
        .arg(format!("t:tx:{}", old.0))
        .arg("final")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(written, "downstream cancelled", "what is written now");
    for (id, reason) in [(&old, "cancelled"), (&bad, "delivered")] {
        let _: () = redis::cmd("HSET")
            .arg(format!("t:tx:{}", id.0))
            .arg("final")
            .arg(reason)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let rec = s.get_transaction(&old).await.unwrap();
    assert_eq!(rec.final_attempt_reason, Some(CANCELLED));
    assert!(rec.cancelled);
    match s.get_transaction(&bad).await {
        Err(StoreError::Internal(m)) => {
            assert!(m.contains("final") && m.contains("delivered"), "{m}")
        }
        other => panic!("expected Internal, got {other:?}"),
    }
}

#[tokio::test]
async fn gc_deletes_old_final_transactions_and_unreferenced_blobs() {
    let server = RedisServer::start().await;
    let s = RedisStore::connect(
        &server.url(),
        RedisOptions {
            chunk_size: 4,
            ..opts()
        },
    )
    .await
    .unwrap();
    let a = replica("a");
    let shared = body(&s, b"shared body").await;
    let done = s
        .create_transaction(new_tx(&shared, Some((a.clone(), Duration::from_secs(60)))))
        .await
        .unwrap();
    let alive = s.create_transaction(new_tx(&shared, None)).await.unwrap();
    s.finish_attempt(&done, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    let own = body(&s, b"own body").await;
    let gone = s
        .create_transaction(new_tx(&own, Some((a.clone(), Duration::from_secs(60)))))
        .await
        .unwrap();
    s.finish_attempt(&gone, &a, final_outcome(BOUNCED))
        .await
        .unwrap();
    let upload = s.create_blob().await.unwrap();

    // `own` went with `gone`, its only transaction: its chunks at once,
    // the hash (marked collected) once gc has deleted `gone`.
    assert!(matches!(
        s.blob_info(&own).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        keys(&server, &format!("t:blob:{}*", own.0)).await,
        vec![format!("t:blob:{}", own.0)]
    );
    let hour = Duration::from_secs(3600);
    assert_eq!(s.gc(SystemTime::now() - hour).await.unwrap(), 0);
    assert_eq!(s.counts().await.unwrap().blobs, 2);

    assert_eq!(s.gc(SystemTime::now() + hour).await.unwrap(), 2);
    for id in [&done, &gone] {
        assert!(matches!(
            s.get_transaction(id).await,
            Err(StoreError::NotFound(_))
        ));
    }
    assert!(s.get_transaction(&alive).await.is_ok());
    assert_eq!(s.blob_info(&shared).await.unwrap().refcount, 1);
    assert_eq!(
        &s.read_blob(&shared, 0, 100).await.unwrap()[..],
        b"shared body"
    );
    for b in [&own, &upload] {
        assert!(matches!(s.blob_info(b).await, Err(StoreError::NotFound(_))));
        assert!(keys(&server, &format!("t:blob:{}*", b.0)).await.is_empty());
    }
    assert_eq!(s.counts().await.unwrap().blobs, 1);
}

#[tokio::test]
async fn gc_spares_an_old_upload_still_being_written() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let b = s.create_blob().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Created before the cutoff, written after it: still in use.
    s.append_blob(&b, 0, Bytes::from_static(b"more"), false)
        .await
        .unwrap();
    assert_eq!(s.gc(cutoff).await.unwrap(), 0);
    assert_eq!(s.blob_info(&b).await.unwrap().length, 4);
}

// ---------------------------------------------------------------------
// Leases across replicas.

#[tokio::test]
async fn claims_take_the_longest_waiting_first() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let blob = body(&s, b"x").await;
    let (a, b) = (replica("a"), replica("b"));
    let t0 = ms(SystemTime::now()) + Duration::from_secs(10);
    let mut by_time = Vec::new();
    // Due at t0+3, t0+1, t0+2 (finished with RetryAt), and one whose lease
    // (taken at creation) expired at ~now+1 s, before all of them.
    for offset in [3, 1, 2] {
        let id = s
            .create_transaction(new_tx(&blob, Some((a.clone(), Duration::from_secs(60)))))
            .await
            .unwrap();
        let at = t0 + Duration::from_secs(offset);
        s.finish_attempt(&id, &a, retry_at(at)).await.unwrap();
        by_time.push((at, id));
    }
    let stale = s
        .create_transaction(new_tx(&blob, Some((a.clone(), Duration::from_secs(1)))))
        .await
        .unwrap();
    by_time.push((SystemTime::UNIX_EPOCH, stale));
    by_time.sort();
    let now = t0 + Duration::from_secs(5);
    for (_, want) in by_time {
        let got = s
            .claim_due(&b, now, Duration::from_secs(60), 1)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, want);
    }
}

/// Defence in depth: even with a transaction wrongly indexed as both due
/// and leased (not reachable through the API), a claim returns it once.
#[tokio::test]
async fn a_corrupt_index_cannot_make_a_claim_return_a_transaction_twice() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let blob = body(&s, b"x").await;
    let id = s.create_transaction(new_tx(&blob, None)).await.unwrap();
    let mut raw = server.raw().await;
    let _: () = redis::cmd("ZADD")
        .arg("t:leases")
        .arg(1)
        .arg(&id.0)
        .query_async(&mut raw)
        .await
        .unwrap();
    let got = s
        .claim_due(
            &replica("a"),
            SystemTime::now() + Duration::from_secs(1),
            Duration::from_secs(60),
            10,
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attempt_count, 1);
}

#[tokio::test]
async fn a_huge_claim_limit_is_capped() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let blob = body(&s, b"x").await;
    s.create_transaction(new_tx(&blob, None)).await.unwrap();
    let now = SystemTime::now() + Duration::from_secs(1);
    let got = s
        .claim_due(&replica("a"), now, Duration::from_secs(60), usize::MAX)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn expired_lease_is_taken_over() {
    let server = RedisServer::start().await;
    let (s1, s2) = (store(&server).await, store(&server).await);
    let (a, b) = (replica("a"), replica("b"));
    let blob = body(&s1, b"x").await;
    let id = s1.create_transaction(new_tx(&blob, None)).await.unwrap();
    let t0 = SystemTime::now() + Duration::from_secs(1);
    let ttl = Duration::from_secs(30);
    assert_eq!(s1.claim_due(&a, t0, ttl, 10).await.unwrap().len(), 1);
    let t1 = t0 + Duration::from_secs(29);
    assert!(s2.claim_due(&b, t1, ttl, 10).await.unwrap().is_empty());
    assert_eq!(s2.counts().await.unwrap().inflight, 1);

    let t2 = t0 + ttl;
    let taken = s2.claim_due(&b, t2, ttl, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].lease_owner, Some(b.clone()));
    assert_eq!(taken[0].attempt_count, 2);

    // The old holder must stop; its outcome is not recorded.
    assert!(matches!(
        s1.renew_lease(&id, &a, ttl).await,
        Err(StoreError::LeaseLost(x)) if x == id
    ));
    assert!(matches!(
        s1.finish_attempt(&id, &a, final_outcome(DELIVERED)).await,
        Err(StoreError::LeaseLost(_))
    ));
    let r = s1.get_transaction(&id).await.unwrap();
    assert_eq!(r.final_attempt_reason, None);
    assert_eq!(r.lease_owner, Some(b.clone()));
    s2.renew_lease(&id, &b, ttl).await.unwrap();
    let r = s2
        .finish_attempt(&id, &b, final_outcome(DELIVERED))
        .await
        .unwrap();
    assert_eq!(r.final_attempt_reason, Some(DELIVERED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_hand_out_a_transaction_twice() {
    let server = RedisServer::start().await;
    let (s1, s2) = (
        Arc::new(store(&server).await),
        Arc::new(store(&server).await),
    );
    let blob = body(&*s1, b"x").await;
    const N: usize = 200;
    let mut all = HashSet::new();
    for _ in 0..N {
        all.insert(s1.create_transaction(new_tx(&blob, None)).await.unwrap());
    }

    // Round 1: due transactions. Round 2: every lease has expired (1 ms
    // TTL, claimed an hour later), so all are taken over again.
    let t0 = SystemTime::now() + Duration::from_secs(1);
    for (round, now, ttl) in [
        (1, t0, Duration::from_millis(1)),
        (2, t0 + Duration::from_secs(3600), Duration::from_secs(60)),
    ] {
        let run = |s: Arc<RedisStore>, who: &'static str| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = s.claim_due(&replica(who), now, ttl, 3).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|r| r.id));
                    // A store that hands out the same transactions again
                    // would keep this loop going forever.
                    assert!(got.len() <= N, "{who} claimed more than {N} transactions");
                }
            })
        };
        let (h1, h2) = (run(s1.clone(), "a"), run(s2.clone(), "b"));
        let (got1, got2) = (h1.await.unwrap(), h2.await.unwrap());
        let mut seen = HashSet::new();
        for id in got1.iter().chain(&got2) {
            assert!(seen.insert(id.clone()), "round {round}: {id} claimed twice");
        }
        assert_eq!(seen, all, "round {round}: every transaction claimed once");
        // Both replicas took part (not a proof of interleaving, but a
        // sign the race was real).
        eprintln!("round {round}: a {} b {}", got1.len(), got2.len());
    }
}

// ---------------------------------------------------------------------
// Waiting for changes across replicas.

/// Polls (this is a test) until `s` has `n` parked waiters and a live
/// subscription, for at most 5 s.
async fn parked(s: &RedisStore, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(s.watched_transactions() == n && s.subscribed()) {
        assert!(
            Instant::now() < deadline,
            "waiters {} (want {n}), subscribed {}",
            s.watched_transactions(),
            s.subscribed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A waiter parked on one replica (subscribed, nothing left to read) is
/// woken by a write another replica makes: only the published version can
/// have reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_by_another_replica_wakes_a_waiter() {
    let server = RedisServer::start().await;
    let (waiter, writer) = (Arc::new(store(&server).await), store(&server).await);
    let b = body(&writer, b"x").await;
    let id = writer.create_transaction(new_tx(&b, None)).await.unwrap();
    for (round, write) in ["claim", "renew", "cancel"].into_iter().enumerate() {
        let after = writer.get_transaction(&id).await.unwrap().version;
        let task = {
            let (waiter, id) = (waiter.clone(), id.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let got = waiter
                    .wait_version(&id, after, started + Duration::from_secs(20))
                    .await;
                (got, started.elapsed())
            })
        };
        parked(&waiter, 1).await;
        let a = replica("a");
        match write {
            "claim" => {
                let got = writer
                    .claim_due(&a, SystemTime::now(), Duration::from_secs(60), 1)
                    .await
                    .unwrap();
                assert_eq!(got.len(), 1);
            }
            "renew" => writer
                .renew_lease(&id, &a, Duration::from_secs(60))
                .await
                .unwrap(),
            _ => {
                writer.cancel(&id).await.unwrap();
            }
        }
        let (got, took) = task.await.unwrap();
        let rec = got.unwrap().unwrap_or_else(|| panic!("{write}: not woken"));
        assert!(
            took < Duration::from_secs(5),
            "{write}: woken after {took:?}"
        );
        assert_eq!(rec.version, after + 1, "round {round}: {write}");
        assert_eq!(rec, writer.get_transaction(&id).await.unwrap());
        assert_eq!(waiter.watched_transactions(), 0, "the waiter is gone");
    }
}

/// A replica's first wait starts its subscription; a write made by
/// another replica while it does (between the waiter's first read and
/// the subscription) is seen, not lost with the message nobody heard.
/// Every round a new replica, so every round has that window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_the_subscription_is_not_missed() {
    let server = RedisServer::start().await;
    let writer = store(&server).await;
    for round in 0..10 {
        let waiter = store(&server).await;
        let b = body(&writer, b"x").await;
        let id = writer.create_transaction(new_tx(&b, None)).await.unwrap();
        let started = Instant::now();
        let (got, cancelled) = tokio::join!(
            waiter.wait_version(&id, 1, started + Duration::from_secs(20)),
            writer.cancel(&id)
        );
        cancelled.unwrap();
        let rec = got
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: missed the write"));
        assert_eq!(rec.final_attempt_reason, Some(CANCELLED), "round {round}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round}: {:?}",
            started.elapsed()
        );
    }
}

/// Redis restarts under a parked waiter: the subscription comes back by
/// itself and the waiter sees the first write made afterwards (made before
/// the waiter's replica has resubscribed, as likely as not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_survives_a_redis_restart() {
    let mut server = RedisServer::start().await;
    let (waiter, writer) = (Arc::new(store(&server).await), store(&server).await);
    let b = body(&writer, b"x").await;
    let id = writer.create_transaction(new_tx(&b, None)).await.unwrap();
    let task = {
        let (waiter, id) = (waiter.clone(), id.clone());
        tokio::spawn(async move {
            waiter
                .wait_version(&id, 1, Instant::now() + Duration::from_secs(30))
                .await
        })
    };
    parked(&waiter, 1).await;

    server.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while waiter.subscribed() {
        assert!(Instant::now() < deadline, "the subscriber did not notice");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.restart().await;
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(10);
    loop {
        match writer.cancel(&id).await {
            Ok(outcome) => break assert_eq!(outcome, CancelOutcome::Cancelled),
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("the writer did not recover: {e}"),
        }
    }
    let rec = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the waiter was not woken after the restart")
        .unwrap()
        .unwrap()
        .expect("the wait timed out");
    assert!(rec.cancelled, "{rec:?}");
    assert_eq!(rec.final_attempt_reason, Some(CANCELLED));
    assert!(waiter.subscribed(), "subscribed again");
    assert_eq!(waiter.watched_transactions(), 0);
    eprintln!("woken {:?} after the restart", restarted.elapsed());
}

/// Waits that end any way (woken, timed out, dropped) leave nothing
/// behind, and messages about transactions nobody waits on register
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_leave_nothing_behind() {
    let server = RedisServer::start().await;
    let s = Arc::new(store(&server).await);
    let b = body(&*s, b"x").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(s.create_transaction(new_tx(&b, None)).await.unwrap());
    }
    let soon = Instant::now() + Duration::from_millis(300);
    let timed_out = {
        let (s, id) = (s.clone(), ids[0].clone());
        tokio::spawn(async move { s.wait_version(&id, 1, soon).await })
    };
    let dropped = {
        let (s, id) = (s.clone(), ids[1].clone());
        tokio::spawn(async move {
            s.wait_version(&id, 1, Instant::now() + Duration::from_secs(60))
                .await
        })
    };
    parked(&s, 2).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    assert_eq!(timed_out.await.unwrap().unwrap(), None);
    assert_eq!(s.watched_transactions(), 0);
    // Writes to ids nobody waits on (published all the same).
    for id in &ids {
        s.cancel(id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.watched_transactions(), 0);
}

// ---------------------------------------------------------------------
// Durability check at connect.

#[tokio::test]
async fn durability_is_detected() {
    let server = RedisServer::start().await;
    assert_eq!(store(&server).await.durability(), &Durability::FsyncAlways);

    let everysec =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"]).await;
    assert_eq!(store(&everysec).await.durability(), &Durability::Everysec);
}

#[tokio::test]
async fn volatile_server_is_refused_unless_allowed() {
    let server = RedisServer::start_with(&["--appendonly", "no"]).await;
    match RedisStore::connect(&server.url(), opts()).await {
        Err(StoreError::Unavailable(msg)) => {
            assert!(msg.contains("volatile (appendonly no)"), "{msg}");
            assert!(msg.contains("allow_volatile: true"), "{msg}");
            assert!(msg.contains(&format!("127.0.0.1:{}", server.port)), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let s = RedisStore::connect(
        &server.url(),
        RedisOptions {
            allow_volatile: true,
            ..opts()
        },
    )
    .await
    .unwrap();
    assert_eq!(s.durability(), &Durability::Volatile { snapshots: None });
    // And it works.
    let b = body(&s, b"x").await;
    s.create_transaction(new_tx(&b, None)).await.unwrap();
}

#[tokio::test]
async fn disabled_config_command_means_unknown_durability() {
    let server =
        RedisServer::start_with(&["--appendonly", "yes", "--rename-command", "CONFIG", ""]).await;
    let s = store(&server).await;
    assert!(
        matches!(s.durability(), Durability::Unknown { .. }),
        "{:?}",
        s.durability()
    );
}

// ---------------------------------------------------------------------
// Outages.

#[tokio::test]
async fn unreachable_redis_is_unavailable_at_connect() {
    let port = free_port();
    let started = Instant::now();
    let r = RedisStore::connect(&format!("redis://127.0.0.1:{port}/"), opts()).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn restart_keeps_acknowledged_mail_and_the_store_recovers() {
    let mut server = RedisServer::start().await;
    let s = store(&server).await;
    let content = vec![b'm'; 700 * 1024];
    let b = body(&s, &content).await;
    let id = s.create_transaction(new_tx(&b, None)).await.unwrap();
    let before = s.get_transaction(&id).await.unwrap();

    server.kill();
    // Bounded failures, not hangs, while redis is down.
    for _ in 0..3 {
        let started = Instant::now();
        let r = s.get_transaction(&id).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        let w = s.create_blob().await;
        assert!(matches!(w, Err(StoreError::Unavailable(_))), "{w:?}");
    }

    server.restart().await;
    // The same store object reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        match s.get_transaction(&id).await {
            Ok(r) => break r,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    };
    assert_eq!(after, before);
    assert_eq!(s.read_blob(&b, 0, usize::MAX).await.unwrap(), content);
    // Scripts work again (Redis lost its script cache).
    let claimed = s
        .claim_due(
            &replica("a"),
            SystemTime::now() + Duration::from_secs(1),
            Duration::from_secs(30),
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
}

#[tokio::test]
async fn hung_redis_times_out_and_recovers() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let b = body(&s, b"x").await;
    let id = s.create_transaction(new_tx(&b, None)).await.unwrap();
    server.signal("STOP");
    let started = Instant::now();
    let r = s.get_transaction(&id).await;
    server.signal("CONT");
    // op_timeout is 1 s.
    match r {
        Err(StoreError::Unavailable(msg)) => {
            assert!(msg.contains("did not answer get_transaction"), "{msg}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.get_transaction(&id).await {
            Ok(r) => break assert_eq!(r.id, id),
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    }
}

#[tokio::test]
async fn out_of_memory_is_full_and_changes_nothing() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let b = s.create_blob().await.unwrap();
    let mut raw = server.raw().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut raw)
        .await
        .unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 2 * 1024 * 1024)
        .query_async(&mut raw)
        .await
        .unwrap();

    let piece = Bytes::from(vec![b'z'; 256 * 1024]);
    let mut len = 0;
    let err = loop {
        match s.append_blob(&b, len, piece.clone(), false).await {
            Ok(n) => len = n,
            Err(e) => break e,
        }
        assert!(len < 64 * 1024 * 1024, "maxmemory never hit");
    };
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
    assert_eq!(s.blob_info(&b).await.unwrap().length, len);

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut raw)
        .await
        .unwrap();
    s.append_blob(&b, len, piece, true).await.unwrap();
}

#[tokio::test]
async fn key_prefixes_keep_deployments_apart() {
    let server = RedisServer::start().await;
    let s1 = store(&server).await;
    let s2 = RedisStore::connect(
        &server.url(),
        RedisOptions {
            key_prefix: "other:".into(),
            ..opts()
        },
    )
    .await
    .unwrap();
    let b = body(&s1, b"x").await;
    let id = s1.create_transaction(new_tx(&b, None)).await.unwrap();
    assert!(matches!(
        s2.get_transaction(&id).await,
        Err(StoreError::NotFound(_))
    ));
    let now = SystemTime::now() + Duration::from_secs(1);
    assert!(
        s2.claim_due(&replica("b"), now, Duration::from_secs(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(keys(&server, "other:*").await.is_empty());
    assert!(!keys(&server, "t:*").await.is_empty());
}

// ---------------------------------------------------------------------
// Lost replies and body sizes.

/// A TCP relay between the store and Redis that can lose the reply to
/// the next request containing a marker (Redis runs the request, the
/// connection then breaks before any byte of the reply comes back), and
/// can refuse every connection for a while.
struct ReplyCutter {
    addr: std::net::SocketAddr,
    arm: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    fired: Arc<std::sync::atomic::AtomicBool>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl ReplyCutter {
    async fn start(redis_port: u16) -> ReplyCutter {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cutter = ReplyCutter {
            addr: l.local_addr().unwrap(),
            arm: Arc::default(),
            fired: Arc::default(),
            down: Arc::default(),
        };
        let (arm, fired, down) = (
            cutter.arm.clone(),
            cutter.fired.clone(),
            cutter.down.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = l.accept().await else {
                    return;
                };
                if down.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                let (mut c_in, mut c_out) = client.into_split();
                let (mut s_in, mut s_out) = server.into_split();
                let cut = Arc::new(tokio::sync::Notify::new());
                let cutting = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (arm, fired, cut2, cutting2) =
                    (arm.clone(), fired.clone(), cut.clone(), cutting.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match c_in.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let hit = {
                            let mut a = arm.lock().unwrap();
                            let hit = a
                                .as_ref()
                                .is_some_and(|m| buf[..n].windows(m.len()).any(|w| w == &m[..]));
                            if hit {
                                *a = None;
                            }
                            hit
                        };
                        if hit {
                            cutting2.store(true, Ordering::SeqCst);
                        }
                        if s_out.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if hit {
                            // Let Redis run it, then break the connection.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            fired.store(true, Ordering::SeqCst);
                            cut2.notify_one();
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        tokio::select! {
                            r = s_in.read(&mut buf) => {
                                let n = match r { Ok(0) | Err(_) => break, Ok(n) => n };
                                if cutting.load(Ordering::SeqCst) {
                                    continue;
                                }
                                if c_out.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            _ = cut.notified() => break,
                        }
                    }
                    // Dropping both halves closes the client's connection.
                });
            }
        });
        cutter
    }

    fn arm(&self, marker: &[u8]) {
        *self.arm.lock().unwrap() = Some(marker.to_vec());
    }
}

async fn store_via(addr: std::net::SocketAddr, ack_window: Duration) -> RedisStore {
    RedisStore::connect(
        &format!("redis://{addr}/"),
        RedisOptions {
            ack_window,
            ..opts()
        },
    )
    .await
    .expect("connect through the relay")
}

/// One store through the relay first, so that the script is loaded and
/// the next call runs it (a first call is answered NOSCRIPT).
async fn warm_up(s: &RedisStore, b: &BlobId) -> TxId {
    s.create_transaction(tx_to(b, "warm@example.net"))
        .await
        .expect("warm-up store")
}

fn tx_to(body: &BlobId, rcpt: &str) -> NewTransaction {
    let mut tx = new_tx(body, None);
    tx.rcpt_to[0].address = rcpt.into();
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_repeated_and_the_message_stored_once() {
    let server = RedisServer::start().await;
    let relay = ReplyCutter::start(server.port).await;
    let s = store_via(relay.addr, Duration::from_secs(10)).await;
    let b = body(&s, b"Subject: x\r\n\r\nx\r\n").await;
    warm_up(&s, &b).await;
    relay.arm(b"lost-reply@example.net");
    let ids = s
        .create_transactions(vec![
            tx_to(&b, "lost-reply@example.net"),
            tx_to(&b, "other@example.net"),
        ])
        .await
        .expect("stored despite the lost reply");
    assert!(
        relay.fired.load(Ordering::SeqCst),
        "the reply was never cut"
    );
    assert_eq!(ids.len(), 2);
    // Exactly the two (and the warm-up), each once, the body counted so.
    assert_eq!(keys(&server, "t:tx:*").await.len(), 3);
    assert_eq!(s.blob_info(&b).await.unwrap().refcount, 3);
    for id in &ids {
        let r = s.get_transaction(id).await.unwrap();
        assert_eq!(r.version, 1, "{id} written once");
    }
    let claimed = s
        .claim_due(
            &replica("a"),
            SystemTime::now(),
            Duration::from_secs(30),
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refused_after_the_ack_window_is_withdrawn_once_redis_is_back() {
    let server = RedisServer::start().await;
    let relay = ReplyCutter::start(server.port).await;
    let s = store_via(relay.addr, Duration::from_millis(400)).await;
    let b = body(&s, b"Subject: x\r\n\r\nx\r\n").await;
    let warm = warm_up(&s, &b).await;
    relay.arm(b"in-doubt@example.net");
    relay.down.store(true, Ordering::SeqCst);
    let r = s
        .create_transaction(tx_to(&b, "in-doubt@example.net"))
        .await;
    assert!(
        relay.fired.load(Ordering::SeqCst),
        "the reply was never cut"
    );
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    // Redis did store it, and nobody may deliver it.
    let stored: Vec<String> = keys(&server, "t:tx:*")
        .await
        .into_iter()
        .filter(|k| *k != format!("t:tx:{}", warm.0))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let id = TxId(stored[0].trim_start_matches("t:tx:").to_owned());

    relay.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let rec = loop {
        let rec = s.get_transaction(&id).await;
        match rec {
            Ok(r) if r.state(SystemTime::now()) == TxState::Final => break r,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("not withdrawn: {other:?}"),
        }
    };
    assert!(rec.cancelled, "{rec:?}");
    assert_eq!(rec.final_attempt_reason, Some(CANCELLED));
    s.cancel(&warm).await.unwrap();
    let claimed = s
        .claim_due(
            &replica("a"),
            SystemTime::now() + Duration::from_secs(3600),
            Duration::from_secs(30),
            10,
        )
        .await
        .unwrap();
    assert!(claimed.is_empty(), "{claimed:?}");
}

/// A body written in pieces takes about its own size in Redis memory.
#[tokio::test]
async fn bodies_are_kept_at_their_size() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let b = s.create_blob().await.unwrap();
    let piece = vec![b'x'; 64 * 1024];
    let total = 1600 * 1024;
    let mut len = 0u64;
    while (len as usize) < total {
        len = s
            .append_blob(&b, len, Bytes::copy_from_slice(&piece), false)
            .await
            .unwrap();
    }
    s.append_blob(&b, len, Bytes::new(), true).await.unwrap();
    let mut raw = server.raw().await;
    let mut used = 0u64;
    for k in keys(&server, &format!("t:blob:{}:*", b.0)).await {
        let n: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&k)
            .query_async(&mut raw)
            .await
            .unwrap();
        used += n;
    }
    let ratio = used as f64 / total as f64;
    eprintln!("{total} bytes kept in {used} bytes of redis memory ({ratio:.3})");
    assert!(ratio < 1.05, "{used} bytes for {total}: ratio {ratio:.3}");
}

// ---------------------------------------------------------------------
// The memory reserve.

async fn used_memory(server: &RedisServer) -> u64 {
    let mut raw = server.raw().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut raw)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

async fn set_maxmemory(server: &RedisServer, bytes: u64) {
    let mut raw = server.raw().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .query_async(&mut raw)
        .await
        .unwrap();
}

/// Polls `admit` (readings are cached up to 200 ms) until it gives the
/// wanted answer, for at most 3 s; returns the last answer.
async fn admit_becomes(s: &RedisStore, admitted: bool) -> Result<(), StoreError> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = s.admit().await;
        if r.is_ok() == admitted || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// New mail is refused once used memory is within the reserve of
/// maxmemory, while delivery's writes go on; delivering (which collects
/// the body) gives the memory back and admission re-opens by itself.
#[tokio::test]
async fn memory_reserve_refuses_new_mail_and_delivery_reopens_it() {
    let server = RedisServer::start().await;
    let s = RedisStore::connect(
        &server.url(),
        RedisOptions {
            memory_reserve_bytes: Some(4 << 20),
            ..opts()
        },
    )
    .await
    .unwrap();
    // No maxmemory: no check.
    s.admit().await.unwrap();
    let base = used_memory(&server).await;
    set_maxmemory(&server, base + (8 << 20)).await;
    admit_becomes(&s, true).await.unwrap();

    // A 5 MiB message, written as the SMTP side would, in pieces, takes
    // it below the reserve.
    let b = s.create_blob().await.unwrap();
    let piece = Bytes::from(vec![b'b'; 256 * 1024]);
    let mut len = 0;
    for i in 0..20 {
        len = s
            .append_blob(&b, len, piece.clone(), i == 19)
            .await
            .unwrap();
    }
    let a = replica("a");
    let id = s
        .create_transaction(new_tx(&b, Some((a.clone(), Duration::from_secs(60)))))
        .await
        .unwrap();
    let r = admit_becomes(&s, false).await;
    match &r {
        Err(StoreError::Full(m)) => assert!(m.contains("reserve"), "{m}"),
        other => panic!("expected Full below the reserve, got {other:?}"),
    }
    // Delivery's writes do not ask: renew, a bounce-like store, finish.
    s.renew_lease(&id, &a, Duration::from_secs(60))
        .await
        .unwrap();
    let bounce = body(&s, b"Subject: bounce\r\n\r\nx\r\n").await;
    let bounce_tx = s.create_transaction(new_tx(&bounce, None)).await.unwrap();
    s.finish_attempt(&id, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    // The body went with its only transaction: memory is back.
    assert!(matches!(
        s.blob_info(&b).await,
        Err(StoreError::NotFound(_))
    ));
    admit_becomes(&s, true).await.unwrap();
    assert!(used_memory(&server).await < base + (2 << 20));
    assert!(
        s.get_transaction(&id)
            .await
            .unwrap()
            .final_attempt_reason
            .is_some()
    );
    assert!(s.get_transaction(&bounce_tx).await.is_ok());
}

/// Without a configured reserve it is 10 % of maxmemory.
#[tokio::test]
async fn memory_reserve_defaults_to_a_tenth_of_maxmemory() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let used = used_memory(&server).await;
    // Used is 95 % of maxmemory: inside the default reserve.
    set_maxmemory(&server, used * 100 / 95).await;
    assert!(matches!(
        admit_becomes(&s, false).await,
        Err(StoreError::Full(_))
    ));
    // Used is about 50 %: well outside it.
    set_maxmemory(&server, used * 2).await;
    admit_becomes(&s, true).await.unwrap();
    set_maxmemory(&server, 0).await;
    admit_becomes(&s, true).await.unwrap();
}

/// How many INFO commands the server has answered.
async fn info_calls(server: &RedisServer) -> u64 {
    let mut raw = server.raw().await;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_info:calls="))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Admission is cheap: a burst of admissions (one per body chunk of every
/// message being received) reads INFO once, not once each, both without
/// maxmemory and with room to spare under it.
#[tokio::test]
async fn admission_reads_memory_once_for_a_burst() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    for maxmemory in [0, used_memory(&server).await * 4] {
        set_maxmemory(&server, maxmemory).await;
        // Let a reading from before expire.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = info_calls(&server).await;
        for _ in 0..200 {
            s.admit().await.unwrap();
        }
        // This test's own INFO calls count too: one before, one after.
        let calls = info_calls(&server).await - before - 1;
        assert!(
            calls <= 2,
            "maxmemory {maxmemory}: {calls} INFO calls for 200 admissions"
        );
    }
}

/// Over maxmemory (another replica's burst, a reserve too small), new mail
/// is refused by Redis itself, but delivery's scripts still run: a full
/// Redis can always drain.
#[tokio::test]
async fn delivery_runs_over_maxmemory_and_frees_it() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let a = replica("a");
    let b = body(&s, &vec![b'z'; 1 << 20]).await;
    let id = s
        .create_transaction(new_tx(&b, Some((a.clone(), Duration::from_secs(60)))))
        .await
        .unwrap();
    let queued = s.create_transaction(new_tx(&b, None)).await.unwrap();
    set_maxmemory(&server, used_memory(&server).await / 2).await;
    let r = s.create_blob().await;
    assert!(matches!(r, Err(StoreError::Full(_))), "{r:?}");
    s.renew_lease(&id, &a, Duration::from_secs(60))
        .await
        .unwrap();
    let claimed = s
        .claim_due(&a, SystemTime::now(), Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    s.finish_attempt(&id, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    s.finish_attempt(&queued, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    assert!(matches!(
        s.blob_info(&b).await,
        Err(StoreError::NotFound(_))
    ));
    s.gc(SystemTime::now() + Duration::from_secs(3600))
        .await
        .unwrap();
    set_maxmemory(&server, 0).await;
    s.create_blob().await.unwrap();
}

// ---------------------------------------------------------------------
// create_with and the replica registry.

fn keyed(id: Option<&str>, key: &str, fingerprint: &str, expires: SystemTime) -> CreateOptions {
    CreateOptions {
        keep_body: false,
        id: id.map(|i| TxId(i.into())),
        idempotency: Some(IdempotencyKey {
            key: key.into(),
            fingerprint: fingerprint.into(),
            expires,
        }),
    }
}

fn hour_from_now() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

async fn exists(server: &RedisServer, key: &str) -> bool {
    let mut raw = server.raw().await;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut raw)
        .await
        .unwrap()
        == 1
}

async fn pttl(server: &RedisServer, key: &str) -> i64 {
    let mut raw = server.raw().await;
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut raw)
        .await
        .unwrap()
}

/// Two replicas (two store handles, two connections) race on one key,
/// then on one chosen id: one creation each, the others told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_race_on_one_key() {
    const RACERS: usize = 32;
    let server = RedisServer::start().await;
    let stores: [Arc<dyn Store>; 2] = [
        Arc::new(store(&server).await),
        Arc::new(store(&server).await),
    ];
    let b = body(&*stores[0], b"x").await;
    let expires = hour_from_now();
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let race = |opts: fn(usize, SystemTime) -> CreateOptions| {
        futures::future::join_all((0..RACERS).map(|i| {
            let (s, start, b) = (stores[i % 2].clone(), start.clone(), b.clone());
            tokio::spawn(async move {
                start.wait().await;
                s.create_with(new_tx(&b, None), opts(i, expires)).await
            })
        }))
    };
    let results: Vec<Created> = race(|i, expires| keyed(None, "k", &format!("fp-{i}"), expires))
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("create_with"))
        .collect();
    let new: Vec<(usize, &TxId)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Created::New(id) => Some((i, id)),
            Created::Existing { .. } => None,
        })
        .collect();
    let [(winner, id)] = new[..] else {
        panic!("expected one new transaction: {results:?}");
    };
    for (i, r) in results.iter().enumerate() {
        if i != winner {
            let want = Created::Existing {
                id: id.clone(),
                fingerprint: format!("fp-{winner}"),
            };
            assert_eq!(r, &want, "racer {i}");
        }
    }
    let results: Vec<_> = race(|_, _| CreateOptions {
        keep_body: false,
        id: Some(TxId("chosen".into())),
        idempotency: None,
    })
    .await
    .into_iter()
    .map(|r| r.unwrap())
    .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(StoreError::Exists(_)))),
        "{results:?}"
    );
    assert_eq!(keys(&server, "t:tx:*").await.len(), 2);
    assert_eq!(stores[1].blob_info(&b).await.unwrap().refcount, 2);
}

/// Keys and registrations are Redis keys under the prefix with TTLs
/// ending at their expiry; Redis deletes expired ones by itself, and gc
/// deletes a key with its transaction.
#[tokio::test]
async fn keys_and_registrations_live_in_redis_with_ttls() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let b = body(&s, b"x").await;
    let created = s
        .create_with(new_tx(&b, None), keyed(None, "c\0k", "fp", hour_from_now()))
        .await
        .unwrap();
    let Created::New(id) = created else {
        panic!("{created:?}")
    };
    let ttl = pttl(&server, "t:idem:c\0k").await;
    assert!((3_500_000..=3_600_000).contains(&ttl), "{ttl}");
    let r = ReplicaId("r1".into());
    s.register_replica(&r, "https://r1.example/", Duration::from_secs(60))
        .await
        .unwrap();
    let ttl = pttl(&server, "t:replica:r1").await;
    assert!((55_000..=60_000).contains(&ttl), "{ttl}");

    let soon = SystemTime::now() + Duration::from_millis(500);
    s.create_with(new_tx(&b, None), keyed(None, "short", "fp", soon))
        .await
        .unwrap();
    assert!(exists(&server, "t:idem:short").await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!exists(&server, "t:idem:short").await, "Redis expires it");

    s.cancel(&id).await.unwrap();
    assert!(exists(&server, "t:idem:c\0k").await);
    assert_eq!(s.gc(hour_from_now()).await.unwrap(), 1);
    assert!(
        !exists(&server, "t:idem:c\0k").await,
        "went with its transaction"
    );
    assert_eq!(s.idempotency_lookup("c\0k").await.unwrap(), None);
}

/// Beyond maxmemory new mail is refused (`create_with` too, leaving no
/// key), while a replica still registers: that is no new mail.
#[tokio::test]
async fn replicas_register_beyond_maxmemory() {
    let server = RedisServer::start().await;
    let s = store(&server).await;
    let b = body(&s, b"x").await;
    set_maxmemory(&server, 1).await;
    let r = s
        .create_with(
            new_tx(&b, None),
            keyed(Some("full"), "k", "fp", hour_from_now()),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Full(_))), "{r:?}");
    let replica = ReplicaId("r".into());
    s.register_replica(&replica, "https://r.example/", Duration::from_secs(60))
        .await
        .expect("registering beyond maxmemory");
    assert_eq!(
        s.replica_uri(&replica).await.unwrap().as_deref(),
        Some("https://r.example/")
    );
    set_maxmemory(&server, 0).await;
    assert_eq!(s.idempotency_lookup("k").await.unwrap(), None);
    assert!(matches!(
        s.get_transaction(&TxId("full".into())).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.blob_info(&b).await.unwrap().refcount, 0);
}

/// A `create_with` whose reply is lost is repeated, and the repeat
/// recognizes the transaction its first run created (by the call's
/// nonce) instead of taking the chosen id for taken or the key for
/// another request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_create_with_is_repeated_not_taken_for_a_conflict() {
    let server = RedisServer::start().await;
    let relay = ReplyCutter::start(server.port).await;
    let s = store_via(relay.addr, Duration::from_secs(10)).await;
    let b = body(&s, b"Subject: x\r\n\r\nx\r\n").await;
    // Loads the script, so that the cut request is the one that runs it.
    s.create_with(tx_to(&b, "warm@example.net"), CreateOptions::default())
        .await
        .unwrap();
    relay.arm(b"lost-reply@example.net");
    let r = s
        .create_with(
            tx_to(&b, "lost-reply@example.net"),
            keyed(Some("chosen"), "k", "fp", hour_from_now()),
        )
        .await;
    assert!(
        relay.fired.load(Ordering::SeqCst),
        "the reply was never cut"
    );
    assert_eq!(r.unwrap(), Created::New(TxId("chosen".into())));
    assert_eq!(keys(&server, "t:tx:*").await.len(), 2);
    assert_eq!(s.blob_info(&b).await.unwrap().refcount, 2);
    assert_eq!(
        s.get_transaction(&TxId("chosen".into()))
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        s.idempotency_lookup("k").await.unwrap(),
        Some((TxId("chosen".into()), "fp".into()))
    );
}

/// Polls until `id` is final, for at most 10 s.
async fn final_soon(s: &RedisStore, id: &TxId) -> koukan_storage::TxRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.get_transaction(id).await {
            Ok(r) if r.state(SystemTime::now()) == TxState::Final => return r,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("{id} not withdrawn: {other:?}"),
        }
    }
}

/// A `create_with` still unanswered when the ack window ends is refused
/// and withdrawn once Redis is back, its key with it, so the client's
/// retry creates anew. A chosen id that belonged to another transaction
/// is left alone by the withdrawal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_with_refused_after_the_ack_window_is_withdrawn_with_its_key() {
    let server = RedisServer::start().await;
    let relay = ReplyCutter::start(server.port).await;
    let s = store_via(relay.addr, Duration::from_millis(400)).await;
    let b = body(&s, b"Subject: x\r\n\r\nx\r\n").await;
    let chosen = |id: &str| CreateOptions {
        keep_body: false,
        id: Some(TxId(id.into())),
        idempotency: None,
    };
    let theirs = TxId("theirs".into());
    let created = s
        .create_with(tx_to(&b, "theirs@example.net"), chosen("theirs"))
        .await
        .unwrap();
    assert_eq!(created, Created::New(theirs.clone()));
    let before = s.get_transaction(&theirs).await.unwrap();

    // The chosen id is taken: Redis answers EXISTS, but the answer is
    // lost and Redis stays out of reach past the window.
    relay.arm(b"taken@example.net");
    relay.down.store(true, Ordering::SeqCst);
    let r = s
        .create_with(tx_to(&b, "taken@example.net"), chosen("theirs"))
        .await;
    assert!(
        relay.fired.swap(false, Ordering::SeqCst),
        "the reply was never cut"
    );
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    relay.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.counts().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Created, but the answer is lost the same way.
    relay.arm(b"in-doubt@example.net");
    relay.down.store(true, Ordering::SeqCst);
    let in_doubt = TxId("in-doubt".into());
    let r = s
        .create_with(
            tx_to(&b, "in-doubt@example.net"),
            keyed(Some("in-doubt"), "k", "fp", hour_from_now()),
        )
        .await;
    assert!(
        relay.fired.load(Ordering::SeqCst),
        "the reply was never cut"
    );
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(exists(&server, "t:idem:k").await, "Redis did store it");
    relay.down.store(false, Ordering::SeqCst);
    let rec = final_soon(&s, &in_doubt).await;
    assert!(rec.cancelled, "{rec:?}");
    assert_eq!(rec.final_attempt_reason, Some(CANCELLED));
    assert!(!exists(&server, "t:idem:k").await, "the key went with it");
    // The client's retry creates.
    let r = s
        .create_with(
            tx_to(&b, "in-doubt@example.net"),
            keyed(Some("retried"), "k", "fp", hour_from_now()),
        )
        .await
        .unwrap();
    assert_eq!(r, Created::New(TxId("retried".into())));

    // The first withdrawal has run by now (it retries at most 1 s
    // apart): it found the id someone else's and left it alone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.get_transaction(&theirs).await.unwrap(), before);
}
