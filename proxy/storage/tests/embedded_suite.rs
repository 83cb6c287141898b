//! The conformance suite against the embedded store, and what only the
//! embedded store promises: reopening keeps acknowledged writes, a full
//! disk is `StoreError::Full`, concurrent writers share commits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::join_all;
use koukan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
use koukan_storage::{
    AttemptOutcome, AttemptResponses, BlobId, NewTransaction, NextStep, PriorAttempt, ReplicaId,
    Store, StoreError, StoredMailbox, StoredResponse, StoredSession, TxRecord, suite,
};

fn open(path: &Path) -> EmbeddedStore {
    EmbeddedStore::open(path, EmbeddedOptions::default()).expect("open store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let next = AtomicUsize::new(0);
    suite::run_all(move || {
        let path = root.join(format!("store-{}.db", next.fetch_add(1, Ordering::Relaxed)));
        Box::pin(async move { Arc::new(open(&path)) as Arc<dyn Store> })
    })
    .await;
}

fn now_ms() -> SystemTime {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_millis(d.as_millis() as u64)
}

fn tx(body: &BlobId, lease: Option<&ReplicaId>) -> NewTransaction {
    NewTransaction {
        sender: "s".into(),
        tag: "t".into(),
        chain: "out".into(),
        mail_from: StoredMailbox {
            address: "a@example.com".into(),
            params: vec![],
        },
        rcpt_to: vec![StoredMailbox {
            address: "b@example.com".into(),
            params: vec![],
        }],
        session: StoredSession::default(),
        body: body.clone(),
        retry: true,
        notification: false,
        lease: lease.map(|owner| (owner.clone(), Duration::from_secs(60))),
        prior_attempt: None,
    }
}

fn outcome(next: NextStep) -> AttemptOutcome {
    AttemptOutcome {
        responses: AttemptResponses::default(),
        next,
        attempted: true,
    }
}

async fn body(store: &dyn Store, data: &[u8]) -> BlobId {
    let blob = store.create_blob().await.unwrap();
    store
        .append_blob(&blob, 0, Bytes::copy_from_slice(data), true)
        .await
        .unwrap();
    blob
}

async fn read_all(store: &dyn Store, blob: &BlobId) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let piece = store
            .read_blob(blob, out.len() as u64, 100_000)
            .await
            .unwrap();
        if piece.is_empty() {
            return out;
        }
        out.extend_from_slice(&piece);
    }
}

/// Acknowledged state of a store: some transactions in every state, a
/// large body, an unfinished upload.
struct Written {
    records: Vec<TxRecord>,
    bodies: Vec<(BlobId, Vec<u8>)>,
    counts: koukan_storage::QueueCounts,
}

async fn write_some(store: &dyn Store) -> Written {
    let (a, b) = (ReplicaId("a".into()), ReplicaId("b".into()));
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let big_body = body(store, &big).await;
    let small_body = body(store, b"small").await;
    let uploading = store.create_blob().await.unwrap();
    store
        .append_blob(&uploading, 0, Bytes::from_static(b"half"), false)
        .await
        .unwrap();

    let waiting = store.create_transaction(tx(&big_body, None)).await.unwrap();
    // With a prior attempt, so the history it keeps has two entries.
    let retrying = store
        .create_transaction(NewTransaction {
            prior_attempt: Some(PriorAttempt {
                responses: AttemptResponses {
                    mail: Some(StoredResponse {
                        code: 451,
                        text: "try later".into(),
                    }),
                    ..AttemptResponses::default()
                },
                finished: now_ms(),
                next_attempt: now_ms(),
            }),
            ..tx(&big_body, Some(&a))
        })
        .await
        .unwrap();
    store
        .finish_attempt(
            &retrying,
            &a,
            outcome(NextStep::RetryAt(now_ms() + Duration::from_secs(600))),
        )
        .await
        .unwrap();
    let done = store
        .create_transaction(tx(&small_body, Some(&a)))
        .await
        .unwrap();
    store
        .finish_attempt(
            &done,
            &a,
            outcome(NextStep::Final {
                reason: "delivered".into(),
            }),
        )
        .await
        .unwrap();
    let claimed = store
        .create_transaction(tx(&small_body, None))
        .await
        .unwrap();
    let got = store
        .claim_due(&b, now_ms(), Duration::from_secs(600), 10)
        .await
        .unwrap();
    // Both due ones: `waiting` and `claimed`.
    assert_eq!(got.len(), 2);

    let mut records = Vec::new();
    for id in [&waiting, &retrying, &done, &claimed] {
        records.push(store.get_transaction(id).await.unwrap());
    }
    assert_eq!(records[1].attempts.len(), 2);
    Written {
        records,
        bodies: vec![
            (big_body, big),
            (small_body, b"small".to_vec()),
            (uploading, b"half".to_vec()),
        ],
        counts: store.counts().await.unwrap(),
    }
}

async fn assert_has(store: &dyn Store, written: &Written) {
    for rec in &written.records {
        assert_eq!(&store.get_transaction(&rec.id).await.unwrap(), rec);
    }
    for (blob, data) in &written.bodies {
        assert!(read_all(store, blob).await == *data, "body {blob} differs");
    }
    assert_eq!(&store.counts().await.unwrap(), &written.counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = open(&path);
    let written = write_some(&store).await;
    drop(store);

    let store = open(&path);
    assert_has(&store, &written).await;
    // And it keeps working.
    let blob = body(&store, b"more").await;
    store.create_transaction(tx(&blob, None)).await.unwrap();
}

/// As a `kill -9` would leave them: the database and its log copied while
/// the store is open, without the clean close that checkpoints the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclean_copy_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = open(&path);
    let written = write_some(&store).await;

    let crash = tempfile::tempdir().unwrap();
    let copy = crash.path().join("store.db");
    // The writer is idle: every write above was answered, and answers come
    // after the commit (and its checkpoint, if any) finished.
    std::fs::copy(&path, &copy).unwrap();
    let wal = suffixed(&path, "-wal");
    assert!(wal.exists(), "WAL mode keeps a log beside the database");
    std::fs::copy(&wal, suffixed(&copy, "-wal")).unwrap();

    let recovered = open(&copy);
    assert_has(&recovered, &written).await;
    drop(store);
}

/// Dropping the last reference (on a runtime worker, as the proxy does)
/// commits what is queued and closes every connection: the last close
/// checkpoints the log into the database and removes it, so the file is
/// whole on its own once `drop` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_closes_the_database_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let wal = suffixed(&path, "-wal");
    let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());

    // Writes only: the writer's connection is the last one open, so the
    // log is gone only if the drop waited for the writer thread.
    let store = open(&path);
    let blob = body(&store, b"x").await;
    let first = store.create_transaction(tx(&blob, None)).await.unwrap();
    assert!(wal_len() > 0, "WAL mode keeps a log while open");
    drop(store);
    assert_eq!(wal_len(), 0, "{} left behind", wal.display());

    // With reader connections open too (concurrent reads, so the pool
    // holds several).
    let store = Arc::new(open(&path));
    let second = store.create_transaction(tx(&blob, None)).await.unwrap();
    let reads =
        join_all([&first, &second, &first, &second].map(|id| store.get_transaction(id))).await;
    let records: Vec<TxRecord> = reads.into_iter().map(Result::unwrap).collect();
    assert!(wal_len() > 0);
    drop(store);
    assert_eq!(wal_len(), 0, "{} left behind", wal.display());

    let store = open(&path);
    for rec in &records {
        assert_eq!(&store.get_transaction(&rec.id).await.unwrap(), rec);
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[tokio::test]
async fn full_database_is_store_full() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        max_size_bytes: Some(512 * 1024),
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(&dir.path().join("small.db"), opts).unwrap();
    let blob = store.create_blob().await.unwrap();
    let r = store
        .append_blob(&blob, 0, Bytes::from(vec![7u8; 2 * 1024 * 1024]), false)
        .await;
    assert!(matches!(r, Err(StoreError::Full(_))), "got {r:?}");
    // Nothing of the failed append remains, and the store still works.
    assert_eq!(store.blob_info(&blob).await.unwrap().length, 0);
    let len = store
        .append_blob(&blob, 0, Bytes::from_static(b"fits"), true)
        .await
        .unwrap();
    assert_eq!(len, 4);
    store.create_transaction(tx(&blob, None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_share_commits() {
    const N: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store.db"));
    let blob = body(&store, b"x").await;

    let before = store.stats();
    let ids = join_all((0..N).map(|_| store.create_transaction(tx(&blob, None)))).await;
    let after = store.stats();
    assert!(ids.iter().all(|r| r.is_ok()), "{ids:?}");
    assert_eq!(after.writes - before.writes, N as u64);
    let commits = after.commits - before.commits;
    assert_eq!(after.durable_commits - before.durable_commits, commits);
    assert!(commits < N as u64, "{N} creates took {commits} commits");
    assert!(after.largest_batch > 1, "{after:?}");
}

#[tokio::test]
async fn only_finalizing_appends_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store.db"));
    let blob = store.create_blob().await.unwrap();
    let before = store.stats();
    let mut len = 0;
    for _ in 0..10 {
        len = store
            .append_blob(&blob, len, Bytes::from_static(b"chunk"), false)
            .await
            .unwrap();
    }
    let mid = store.stats();
    assert_eq!(mid.commits - before.commits, 10);
    assert_eq!(mid.durable_commits, before.durable_commits);
    store
        .append_blob(&blob, len, Bytes::new(), true)
        .await
        .unwrap();
    let after = store.stats();
    assert_eq!(after.durable_commits - mid.durable_commits, 1);
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(open(&path));
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(conn);
    let r = EmbeddedStore::open(&path, EmbeddedOptions::default());
    assert!(
        matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("99")),
        "got {:?}",
        r.err()
    );
}
