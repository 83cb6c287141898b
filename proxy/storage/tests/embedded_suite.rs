//! The conformance suite against the embedded store, and what only the
//! embedded store promises: reopening keeps acknowledged writes, a full
//! disk is `StoreError::Full`, concurrent writers share commits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::join_all;
use koukan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
use koukan_storage::{
    AttemptOutcome, AttemptResponses, BlobId, CreateOptions, Created, FinalReason, IdempotencyKey,
    NewTransaction, NextStep, PriorAttempt, ReplicaId, Store, StoreError, StoredIngress,
    StoredMailbox, StoredResponse, TxId, TxRecord, suite,
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
        ingress: StoredIngress::Generated,
        body: body.clone(),
        retry: true,
        notification: false,
        lease: lease.map(|owner| (owner.clone(), Duration::from_secs(60))),
        prior_attempt: None,
        signals: Default::default(),
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
    // Before `done` is final, which would collect a body it alone used.
    let claimed = store
        .create_transaction(tx(&small_body, None))
        .await
        .unwrap();
    store
        .finish_attempt(
            &done,
            &a,
            outcome(NextStep::Final {
                reason: FinalReason::UpstreamSuccess,
            }),
        )
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
async fn appends_never_sync_the_referencing_create_does() {
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
    let finalized = store.stats();
    assert_eq!(finalized.durable_commits, mid.durable_commits);
    store.create_transaction(tx(&blob, None)).await.unwrap();
    let after = store.stats();
    assert_eq!(after.durable_commits - finalized.durable_commits, 1);
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

/// A row finalized by a cancellation before the reason was
/// `downstream cancelled` holds `cancelled`: it still reads, as
/// `DownstreamCancelled`. A reason no build wrote is a damaged record.
#[tokio::test]
async fn stored_final_reasons_of_earlier_builds_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = open(&path);
    let blob = body(&store, b"x").await;
    let old = store.create_transaction(tx(&blob, None)).await.unwrap();
    let bad = store.create_transaction(tx(&blob, None)).await.unwrap();
    store.cancel(&old).await.unwrap();
    store.cancel(&bad).await.unwrap();
    let raw = |id: &koukan_storage::TxId| -> String {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row(
            "SELECT final_reason FROM transactions WHERE id = ?1",
            [&id.0],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(raw(&old), "downstream cancelled", "what is written now");
    drop(store);

    let conn = rusqlite::Connection::open(&path).unwrap();
    for (id, reason) in [(&old, "cancelled"), (&bad, "delivered")] {
        conn.execute(
            "UPDATE transactions SET final_reason = ?2 WHERE id = ?1",
            [&id.0, reason],
        )
        .unwrap();
    }
    drop(conn);
    let store = open(&path);
    let rec = store.get_transaction(&old).await.unwrap();
    assert_eq!(
        rec.final_attempt_reason,
        Some(FinalReason::DownstreamCancelled)
    );
    assert!(rec.cancelled);
    match store.get_transaction(&bad).await {
        Err(StoreError::Internal(m)) => {
            assert!(m.contains("final reason") && m.contains("delivered"), "{m}")
        }
        other => panic!("expected Internal, got {other:?}"),
    }
}

// ---------------------------------------------------------------------
// Waiting for changes.

/// A write whose caller stopped waiting for it still commits; its waiters
/// hear of it all the same (the writer thread wakes them, not the caller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_gave_up_still_wakes_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("store.db")));
    let blob = body(&*store, b"x").await;
    let id = store.create_transaction(tx(&blob, None)).await.unwrap();
    let waiter = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move {
            store
                .wait_version(&id, 1, Instant::now() + Duration::from_secs(20))
                .await
        })
    };
    wait_until(|| store.watched_transactions() == 1).await;
    // Polled once: queued to the writer, then dropped before the answer.
    let cancel = store.cancel(&id);
    assert!(
        cancel.now_or_never().is_none(),
        "the cancel was answered within its first poll"
    );
    let rec = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was not woken")
        .unwrap()
        .unwrap()
        .expect("the wait timed out");
    assert_eq!(
        rec.final_attempt_reason,
        Some(FinalReason::DownstreamCancelled)
    );
    assert_eq!(store.watched_transactions(), 0);
}

/// Waits that end any way (woken, timed out, dropped, unknown id) leave
/// nothing behind, and writes to transactions nobody waits on register
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("store.db")));
    let blob = body(&*store, b"x").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(store.create_transaction(tx(&blob, None)).await.unwrap());
    }
    let wait = |id: &koukan_storage::TxId, deadline: Instant| {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.wait_version(&id, 1, deadline).await })
    };
    let far = Instant::now() + Duration::from_secs(60);
    let woken: Vec<_> = (0..10).map(|_| wait(&ids[0], far)).collect();
    let timed_out = wait(&ids[1], Instant::now() + Duration::from_millis(300));
    let dropped = wait(&ids[2], far);
    wait_until(|| store.watched_transactions() == 3).await;
    store.cancel(&ids[0]).await.unwrap();
    for w in woken {
        assert!(w.await.unwrap().unwrap().is_some());
    }
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    assert_eq!(timed_out.await.unwrap().unwrap(), None);
    assert!(matches!(
        store
            .wait_version(&koukan_storage::TxId("nope".into()), 0, far)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.watched_transactions(), 0);
    store.cancel(&ids[1]).await.unwrap();
    store.cancel(&ids[2]).await.unwrap();
    assert_eq!(store.watched_transactions(), 0);
}

/// Polls (this is a test) until `cond` holds, for at most 5 s.
async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------
// The reserve.

/// Polls `admit` (the free-space reading is cached up to 200 ms) until it
/// gives the wanted answer, for at most 3 s; returns the last answer.
async fn admit_becomes(store: &EmbeddedStore, admitted: bool) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let r = store.admit().await;
        if r.is_ok() == admitted || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Mail stored until `admit` refuses (on a 4 MiB cap with a 1 MiB reserve)
/// is all still deliverable below the reserve: claims, finishes and a
/// bounce need no admission. Delivering it collects the bodies, whose
/// pages count as free again, and admission re-opens by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_refuses_new_mail_and_delivery_reopens_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        max_size_bytes: Some(4 << 20),
        reserve_bytes: Some(1 << 20),
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(&dir.path().join("small.db"), opts).unwrap();
    assert_eq!(store.reserve_bytes(), 1 << 20);
    let piece = Bytes::from(vec![b'm'; 128 * 1024]);
    let mut stored = Vec::new();
    let refusal = 'fill: loop {
        assert!(stored.len() < 64, "the reserve was never reached");
        // As the SMTP side does: ask before the blob, each append, commit.
        if let Err(e) = admit_becomes(&store, true).await {
            break 'fill e;
        }
        let blob = store.create_blob().await.unwrap();
        let mut len = 0;
        for i in 0..4 {
            if let Err(e) = store.admit().await {
                break 'fill e;
            }
            len = store
                .append_blob(&blob, len, piece.clone(), i == 3)
                .await
                .unwrap();
        }
        if let Err(e) = store.admit().await {
            break 'fill e;
        }
        stored.push(store.create_transaction(tx(&blob, None)).await.unwrap());
    };
    assert!(
        matches!(&refusal, StoreError::Full(m) if m.contains("reserve")),
        "{refusal:?}"
    );
    assert!(stored.len() >= 2, "only {} stored", stored.len());
    let free = store.free_bytes().await.unwrap();
    assert!(free < 1 << 20, "refused with {free} bytes free");
    eprintln!(
        "stored {} messages of 512 KiB, then refused with {free} bytes free",
        stored.len()
    );

    // Below the reserve, delivery goes on: every one is claimed, a bounce
    // is stored for the first, and all are finished.
    let owner = ReplicaId("r".into());
    let claimed = store
        .claim_due(&owner, now_ms(), Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), stored.len());
    let bounce = body(&store, b"Subject: failure notice\r\n\r\nx\r\n").await;
    store.create_transaction(tx(&bounce, None)).await.unwrap();
    for id in &stored {
        store
            .renew_lease(id, &owner, Duration::from_secs(60))
            .await
            .unwrap();
        store
            .finish_attempt(
                id,
                &owner,
                outcome(NextStep::Final {
                    reason: FinalReason::UpstreamSuccess,
                }),
            )
            .await
            .unwrap();
    }
    // The bodies are gone and their pages free: new mail again.
    admit_becomes(&store, true).await.unwrap();
    let after = store.free_bytes().await.unwrap();
    assert!(after > free + (1 << 20), "{free} -> {after} bytes free");
    for rec in &claimed {
        let r = store.read_blob(&rec.tx.body, 0, 10).await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
        assert!(store.get_transaction(&rec.id).await.is_ok());
    }
    // And a message of the same size fits again.
    let blob = body(&store, &vec![b'n'; 512 * 1024]).await;
    store.create_transaction(tx(&blob, None)).await.unwrap();
}

/// A reserve of 0 never refuses; the default is 10 % of a small cap.
#[tokio::test]
async fn reserve_zero_disables_and_default_is_a_tenth() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(
        &dir.path().join("a.db"),
        EmbeddedOptions {
            max_size_bytes: Some(2 << 20),
            ..EmbeddedOptions::default()
        },
    )
    .unwrap();
    assert_eq!(store.reserve_bytes(), (2 << 20) / 10);
    let store = EmbeddedStore::open(
        &dir.path().join("b.db"),
        EmbeddedOptions {
            max_size_bytes: Some(256 * 1024),
            reserve_bytes: Some(0),
            ..EmbeddedOptions::default()
        },
    )
    .unwrap();
    let blob = store.create_blob().await.unwrap();
    let _ = store
        .append_blob(&blob, 0, Bytes::from(vec![0u8; 1 << 20]), false)
        .await;
    store.admit().await.unwrap();
}

// ---------------------------------------------------------------------
// Files that are not a store.

fn refused(path: &Path, what: &str) -> String {
    let err = match EmbeddedStore::open(path, EmbeddedOptions::default()) {
        Ok(_) => panic!("{what}: opened"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, StoreError::NotAStore { path: p, .. } if p == path),
        "{what}: {err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{what}: {msg}");
    assert!(msg.contains("init-store"), "{what}: {msg}");
    msg
}

#[test]
fn a_file_that_is_not_a_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let msg = refused(&empty, "0 bytes");
    assert!(msg.contains("empty file (0 bytes)"), "{msg}");
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, b"hello, this is not a database\n").unwrap();
    let msg = refused(&garbage, "garbage");
    assert!(msg.contains("not an SQLite database"), "{msg}");
    assert!(msg.contains("hello, this is"), "{msg}");
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        b"hello, this is not a database\n"
    );

    let foreign = dir.path().join("foreign.db");
    {
        let conn = rusqlite::Connection::open(&foreign).unwrap();
        conn.execute_batch("CREATE TABLE users (id INTEGER); INSERT INTO users VALUES (1);")
            .unwrap();
    }
    let msg = refused(&foreign, "someone else's database");
    assert!(
        msg.contains("without koukan's schema_version table (tables: users)"),
        "{msg}"
    );
    let conn = rusqlite::Connection::open(&foreign).unwrap();
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1, "the foreign database was changed");

    let orphan_wal = dir.path().join("gone.db");
    std::fs::write(suffixed(&orphan_wal, "-wal"), b"log").unwrap();
    let msg = refused(&orphan_wal, "a log without its database");
    assert!(msg.contains("write-ahead log"), "{msg}");
    assert!(!orphan_wal.exists());

    assert!(matches!(
        koukan_storage::embedded::inspect(&dir.path().join("new.db")),
        Ok(koukan_storage::embedded::StoreFile::Missing)
    ));
}

#[tokio::test]
async fn init_creates_keeps_and_with_force_sets_aside() {
    use koukan_storage::embedded::{InitOutcome, init};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    assert_eq!(init(&path, false).unwrap(), InitOutcome::Created);
    assert!(matches!(
        init(&path, true).unwrap(),
        InitOutcome::Exists { .. }
    ));
    // A valid store with mail in it is left untouched, even with force.
    let id = {
        let store = open(&path);
        let blob = body(&store, b"kept").await;
        store.create_transaction(tx(&blob, None)).await.unwrap()
    };
    assert!(matches!(
        init(&path, true).unwrap(),
        InitOutcome::Exists { .. }
    ));
    assert!(open(&path).get_transaction(&id).await.is_ok());

    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        init(&path, false),
        Err(StoreError::NotAStore { .. })
    ));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    let InitOutcome::Replaced { moved_to, found } = init(&path, true).unwrap() else {
        panic!("not replaced");
    };
    assert!(found.contains("0 bytes"), "{found}");
    let name = moved_to.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("store.db.invalid-"), "{name}");
    assert_eq!(std::fs::metadata(&moved_to).unwrap().len(), 0);
    let store = open(&path);
    assert_eq!(store.counts().await.unwrap(), Default::default());
}

// ---------------------------------------------------------------------
// create_with and the replica registry.

fn keyed(key: &str, fingerprint: &str, expires: SystemTime) -> CreateOptions {
    CreateOptions {
        keep_body: false,
        id: None,
        idempotency: Some(IdempotencyKey {
            key: key.into(),
            fingerprint: fingerprint.into(),
            expires,
        }),
    }
}

/// Two stores opened on one file in one process (two writer threads,
/// serialized by SQLite's write lock, not by one queue) race on one key
/// and on one chosen id: one creation each. What they wrote survives a
/// reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_race_on_one_key() {
    const RACERS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let stores: [Arc<dyn Store>; 2] = [Arc::new(open(&path)), Arc::new(open(&path))];
    let b = body(&*stores[0], b"x").await;
    let expires = now_ms() + Duration::from_secs(3600);
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let race = |opts: fn(usize, SystemTime) -> CreateOptions| {
        join_all((0..RACERS).map(|i| {
            let (store, start, b) = (stores[i % 2].clone(), start.clone(), b.clone());
            tokio::spawn(async move {
                start.wait().await;
                store.create_with(tx(&b, None), opts(i, expires)).await
            })
        }))
    };
    let results: Vec<_> = race(|i, expires| keyed("k", &format!("fp-{i}"), expires))
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("create_with"))
        .collect();
    let new: Vec<&TxId> = results
        .iter()
        .filter_map(|r| match r {
            Created::New(id) => Some(id),
            Created::Existing { .. } => None,
        })
        .collect();
    assert_eq!(new.len(), 1, "{results:?}");
    let id = new[0].clone();
    assert!(results.iter().all(|r| r.id() == &id), "{results:?}");

    let results: Vec<_> = race(|_, _| CreateOptions {
        keep_body: false,
        id: Some(TxId("chosen".into())),
        idempotency: None,
    })
    .await
    .into_iter()
    .map(|r| r.unwrap())
    .collect();
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(StoreError::Exists(_)))),
        "{results:?}"
    );
    for store in &stores {
        assert_eq!(store.counts().await.unwrap().waiting, 2);
        assert_eq!(store.blob_info(&b).await.unwrap().refcount, 2);
    }

    drop(stores);
    let store = open(&path);
    let (got, _) = store.idempotency_lookup("k").await.unwrap().unwrap();
    assert_eq!(got, id);
    assert!(store.get_transaction(&TxId("chosen".into())).await.is_ok());
}

fn rows(path: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// gc deletes the rows of expired keys and registrations, and the key of
/// a transaction it deletes; live ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_expired_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gc.db");
    let store = open(&path);
    let b = body(&store, b"x").await;
    let soon = now_ms() + Duration::from_secs(1);
    let far = now_ms() + Duration::from_secs(3600);
    for (key, expires) in [("expiring", soon), ("live", far)] {
        store
            .create_with(tx(&b, None), keyed(key, "fp", expires))
            .await
            .unwrap();
    }
    let done = store
        .create_with(tx(&b, None), keyed("done", "fp", far))
        .await
        .unwrap();
    store.cancel(done.id()).await.unwrap();
    let (r1, r2) = (ReplicaId("r1".into()), ReplicaId("r2".into()));
    store
        .register_replica(&r1, "https://r1/", Duration::from_secs(1))
        .await
        .unwrap();
    store
        .register_replica(&r2, "https://r2/", Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        (rows(&path, "idempotency"), rows(&path, "replicas")),
        (3, 2)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Expired, but only gc deletes the rows.
    assert_eq!(store.idempotency_lookup("expiring").await.unwrap(), None);
    assert_eq!(store.replica_uri(&r1).await.unwrap(), None);
    assert_eq!(
        (rows(&path, "idempotency"), rows(&path, "replicas")),
        (3, 2)
    );

    assert_eq!(store.gc(now_ms()).await.unwrap(), 1);
    assert_eq!(
        (rows(&path, "idempotency"), rows(&path, "replicas")),
        (1, 1)
    );
    assert!(store.idempotency_lookup("live").await.unwrap().is_some());
    assert_eq!(
        store.replica_uri(&r2).await.unwrap().as_deref(),
        Some("https://r2/")
    );
}

/// Registering a replica is no new mail: it works below the reserve,
/// where `admit` refuses.
#[tokio::test]
async fn replicas_register_below_the_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(
        &dir.path().join("r.db"),
        EmbeddedOptions {
            // More than any file system has free: always below it.
            reserve_bytes: Some(u64::MAX / 2),
            ..EmbeddedOptions::default()
        },
    )
    .unwrap();
    assert!(matches!(store.admit().await, Err(StoreError::Full(_))));
    let r = ReplicaId("r".into());
    store
        .register_replica(&r, "https://r/", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.replica_uri(&r).await.unwrap().as_deref(),
        Some("https://r/")
    );
}
