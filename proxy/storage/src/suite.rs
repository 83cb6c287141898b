//! The conformance suite every [`crate::Store`] implementation runs.
//!
//! An implementation's test calls [`run_all`] with a factory of fresh,
//! empty stores (every test gets its own), from a multi-threaded runtime
//! (`#[tokio::test(flavor = "multi_thread")]`) so that
//! [`concurrent_claims`] really races. Each test is also public, to run one
//! alone while debugging. A failure panics with what differed.
//!
//! # What the suite pins down beyond the trait docs
//!
//! Both backends must agree on these; they are the contract callers rely
//! on.
//!
//! * Times are kept to the millisecond (truncated). The suite passes whole
//!   milliseconds wherever it passes a time and expects them back exactly.
//! * `read_blob` returns exactly `min(max, length - offset)` bytes; empty at
//!   `offset == length`. Unfinalized blobs can be read. Unknown blob:
//!   `NotFound` (also for `append_blob` and `blob_info`).
//! * An empty append is allowed and changes nothing (with `last`, it
//!   finalizes).
//! * `create_transaction`: unknown body → `NotFound`; unfinalized body →
//!   `BlobConflict`, and nothing is created. The new record has
//!   `version == 1`, `next_attempt == Some(created)`,
//!   `last_update == created`, `attempt_count` 0, or 1 when created with a
//!   lease (its first attempt starts at once), `lease_expires` =
//!   creation + TTL, and `tx` equal to what was given (the `lease` field
//!   included).
//! * A claim sets `lease_owner`, `lease_expires = now + ttl`, and counts the
//!   attempt (`attempt_count + 1`); it leaves `next_attempt` alone. A claim
//!   returns the records as stored after it. Due means `next_attempt <=
//!   now`; a lease is free when `lease_expires <= now`.
//! * `prior_attempt`: the record starts with `attempt_count` 1 (plus 1 if
//!   also leased), the prior responses as `last_responses` and as attempt 1
//!   of `attempts` (its `finished` as given), and `next_attempt` as given.
//! * `attempts` holds one entry per finished attempt, numbered from 1,
//!   `finished` = the record's `last_update` at that finish.
//! * `finish_attempt` with `attempted: false` takes back the claim's count
//!   and leaves `last_responses` and `attempts` alone.
//! * `finish_attempt` stores the responses, clears the lease, and sets
//!   `next_attempt` to the retry time (`RetryAt`) or `None` with the reason
//!   (`Final`); `attempt_count` is unchanged (it counted the attempt when it
//!   started). It returns the record as stored. Not holding the lease →
//!   `LeaseLost` and nothing changes; unknown id → `NotFound`.
//! * `renew_lease` by a replica that does not hold the lease (never did,
//!   taken over, already finished) → `LeaseLost`, nothing changes.
//! * Every [`FinalReason`] a finish gives is kept as given.
//! * `cancel` of a non-leased transaction finalizes it (`cancelled`, final
//!   reason [`FinalReason::DownstreamCancelled`], `next_attempt` `None`). Of a leased one: `cancelled` is
//!   set and the lease kept; the holder's `renew_lease` then fails with
//!   `LeaseLost` (stop working), its `finish_attempt` succeeds and leaves the
//!   transaction final even with `RetryAt` (reason `DownstreamCancelled`);
//!   once the lease expires no claim returns it (the first claim after the
//!   expiry finalizes it, `DownstreamCancelled`). Of a final one: `Ok`, the reason is kept. Unknown:
//!   `NotFound`.
//! * Every write (create, claim, renew, finish, cancel) increases
//!   `version`; a cancel that changes nothing (final already, or leased and
//!   flagged already) leaves it as it is.
//! * `wait_version(id, after, deadline)` returns `Some(record)`, the record
//!   as stored, once `version > after`: at once if it already is, and
//!   otherwise woken by each of those writes (a claim finalizing a
//!   cancelled transaction included), promptly (well within a second),
//!   however many wait on the same or other transactions. It returns
//!   `None` at the deadline (not before, and not much later; at once for a
//!   deadline already past) when nothing changed the record, and writes
//!   that change nothing do not end it. A write racing the start of a wait
//!   is not missed. Unknown id: `NotFound` at once; a transaction deleted
//!   by gc during the wait: `NotFound`, promptly.
//! * `gc(t)` deletes final transactions with `last_update < t`, then blobs
//!   that no transaction references and that were last written before `t`
//!   (a body still being uploaded is younger than any sane cutoff).
//! * `counts()` uses the store's clock: inflight = lease unexpired, waiting =
//!   not final and not inflight, due = waiting with `next_attempt <= now`,
//!   blobs = all blobs.
//! * Ids are unique and URL-safe (`[A-Za-z0-9_-]`).
//! * Prompt collection: once every transaction referencing a body is final
//!   (delivered, failed, or cancelled through `cancel`, a finish, or a
//!   claim finding it cancelled), the body reads as `NotFound` (`read_blob`,
//!   `blob_info`), no longer counts in `counts().blobs`, and cannot be the
//!   body of a new transaction (`NotFound`); the transaction records stay
//!   readable, unchanged, until gc. While any is open the body is kept.
//! * `delete_blob` deletes an unreferenced blob (finalized or not) and
//!   returns true; a referenced or unknown one: false, nothing changes.
//! * `admit` is `Ok` on a fresh store with room.
//! * `create_with` with a chosen id: the record has that id and is what
//!   `create_transaction` would have stored. An id taken (by any
//!   transaction, chosen or picked) → `Exists`, and nothing changes (no
//!   refcount, no key). Without an id the store picks one. An id outside
//!   `TxId::is_valid`, an empty key or one over 255 characters →
//!   `Invalid`.
//! * `create_with` with an idempotency key: the key (byte for byte,
//!   NUL included) is checked first. In use and unexpired → `Existing`
//!   with the first transaction and fingerprint, whatever the new
//!   request (other body, lease, chosen id, even one that is taken), the
//!   first transaction's state (final too), and nothing changes; neither
//!   expiry nor fingerprint is refreshed. Of any number of concurrent calls
//!   with one key, exactly one gets `New`. A failed create (`NotFound`,
//!   `BlobConflict`, `Exists`) records no key. An expired key is absent:
//!   lookup `None`, and a create makes a new transaction the key then
//!   points to; a key given already expired is not kept. gc deletes a key
//!   with its transaction (not one that expired and points to another
//!   transaction since), and never a live key of an open transaction.
//! * `register_replica` replaces the replica's URI and expiry;
//!   `replica_uri` is `None` once the TTL has passed (by the store's clock)
//!   and for a replica never registered. gc leaves live registrations.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::{BoxFuture, join_all};

use crate::{
    AttemptOutcome, AttemptRecord, AttemptResponses, BlobId, BlobInfo, CancelOutcome,
    CreateOptions, Created, FinalReason, IdempotencyKey, NewTransaction, NextStep, PriorAttempt,
    QueueCounts, ReplicaId, Store, StoreError, StoreResult, StoredIngress, StoredMailbox,
    StoredParam, StoredResponse, StoredSmtp, StoredTls, TxId, TxRecord, TxState,
};

// ---------------------------------------------------------------- helpers

/// `t` truncated to the millisecond, the precision stores keep.
fn ms(t: SystemTime) -> SystemTime {
    let d = t.duration_since(UNIX_EPOCH).expect("clock after 1970");
    UNIX_EPOCH + Duration::from_millis(d.as_millis() as u64)
}

fn now_ms() -> SystemTime {
    ms(SystemTime::now())
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const LONG_TTL: Duration = Duration::from_secs(60);
/// Shorter than `LONG_TTL`; tests pass it and then claim at its expiry
/// (the `now` a claim is given), never sleep through it. Long enough
/// that a loaded machine does not expire it between a create and the
/// cancel that expects it leased.
const SHORT_TTL: Duration = Duration::from_secs(5);

fn replica(name: &str) -> ReplicaId {
    ReplicaId(name.to_string())
}

/// A transaction with every field set to something other than its default.
fn sample_tx(body: &BlobId) -> NewTransaction {
    NewTransaction {
        sender: "submission".into(),
        tag: "outbound-eu".into(),
        chain: "smtp-out".into(),
        mail_from: StoredMailbox {
            address: "dörte@exämple.com".into(),
            params: vec![
                StoredParam {
                    keyword: "SIZE".into(),
                    value: Some("1234".into()),
                },
                StoredParam {
                    keyword: "SMTPUTF8".into(),
                    value: None,
                },
            ],
        },
        rcpt_to: vec![
            StoredMailbox {
                address: "bob@example.org".into(),
                params: vec![StoredParam {
                    keyword: "NOTIFY".into(),
                    value: Some("FAILURE,DELAY".into()),
                }],
            },
            StoredMailbox {
                address: "carol@example.net".into(),
                params: vec![],
            },
        ],
        ingress: StoredIngress::Smtp(StoredSmtp {
            listener: "msa".into(),
            peer: Some("192.0.2.7:53211".parse().unwrap()),
            local: Some("192.0.2.1:587".parse().unwrap()),
            ehlo_host: Some("client.example.com".into()),
            esmtp: true,
            tls: Some(StoredTls {
                version: "TLSv1.3".into(),
                cipher: "TLS_AES_128_GCM_SHA256".into(),
            }),
            auth_user: Some("alice".into()),
        }),
        body: body.clone(),
        retry: true,
        notification: true,
        lease: None,
        prior_attempt: None,
        // Kept as given, by both stores.
        signals: [(
            "message_parse".to_owned(),
            serde_json::json!({"defects": [{"kind": "missing_header", "header": "Date"}]}),
        )]
        .into(),
    }
}

fn leased_tx(body: &BlobId, owner: &ReplicaId, ttl: Duration) -> NewTransaction {
    NewTransaction {
        lease: Some((owner.clone(), ttl)),
        ..sample_tx(body)
    }
}

fn responses(tag: &str) -> AttemptResponses {
    AttemptResponses {
        mail: Some(StoredResponse {
            code: 250,
            text: "2.1.0 ok".into(),
        }),
        rcpt: vec![
            Some(StoredResponse {
                code: 250,
                text: format!("2.1.5 {tag}"),
            }),
            None,
        ],
        data: Some(StoredResponse {
            code: 451,
            text: format!("4.3.0 {tag}\r\nsecond line"),
        }),
    }
}

fn retry_at(at: SystemTime, tag: &str) -> AttemptOutcome {
    AttemptOutcome {
        responses: responses(tag),
        next: NextStep::RetryAt(at),
        attempted: true,
    }
}

fn final_outcome(reason: FinalReason) -> AttemptOutcome {
    AttemptOutcome {
        responses: responses(reason.as_str()),
        next: NextStep::Final { reason },
        attempted: true,
    }
}

const DELIVERED: FinalReason = FinalReason::UpstreamSuccess;
const BOUNCED: FinalReason = FinalReason::UpstreamPermfail;
const CANCELLED: FinalReason = FinalReason::DownstreamCancelled;

/// Deterministic pseudo-random bytes (xorshift), so a misplaced chunk
/// cannot go unnoticed the way it could in a repeating pattern.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

async fn finalized_blob(store: &dyn Store, data: &[u8]) -> BlobId {
    let blob = store.create_blob().await.expect("create_blob");
    let len = store
        .append_blob(&blob, 0, Bytes::copy_from_slice(data), true)
        .await
        .expect("append_blob");
    assert_eq!(len, data.len() as u64);
    blob
}

async fn create(store: &dyn Store, tx: NewTransaction) -> TxId {
    store
        .create_transaction(tx)
        .await
        .expect("create_transaction")
}

async fn get(store: &dyn Store, id: &TxId) -> TxRecord {
    store.get_transaction(id).await.expect("get_transaction")
}

async fn info(store: &dyn Store, blob: &BlobId) -> BlobInfo {
    store.blob_info(blob).await.expect("blob_info")
}

async fn claim(
    store: &dyn Store,
    owner: &ReplicaId,
    now: SystemTime,
    limit: usize,
) -> Vec<TxRecord> {
    store
        .claim_due(owner, now, LONG_TTL, limit)
        .await
        .expect("claim_due")
}

fn ids(recs: &[TxRecord]) -> Vec<TxId> {
    recs.iter().map(|r| r.id.clone()).collect()
}

#[track_caller]
fn assert_not_found<T: Debug>(r: StoreResult<T>) {
    assert!(
        matches!(r, Err(StoreError::NotFound(_))),
        "expected NotFound, got {r:?}"
    );
}

#[track_caller]
fn assert_lease_lost<T: Debug>(r: StoreResult<T>, id: &TxId) {
    assert!(
        matches!(&r, Err(StoreError::LeaseLost(lost)) if lost == id),
        "expected LeaseLost({id}), got {r:?}"
    );
}

#[track_caller]
fn assert_blob_conflict<T: Debug>(r: StoreResult<T>, blob: &BlobId) {
    assert!(
        matches!(&r, Err(StoreError::BlobConflict { blob: b, .. }) if b == blob),
        "expected BlobConflict({blob}), got {r:?}"
    );
}

#[track_caller]
fn assert_between(t: SystemTime, lo: SystemTime, hi: SystemTime, what: &str) {
    assert!(lo <= t && t <= hi, "{what}: {t:?} not in [{lo:?}, {hi:?}]");
}

// ------------------------------------------------------------------ blobs

/// `put_blob`: one finalized blob with the data, unreferenced; an empty
/// one too; each a new blob.
pub async fn blob_put(store: &dyn Store) {
    let a = store
        .put_blob(Bytes::from_static(b"whole body"))
        .await
        .unwrap();
    let b = store.put_blob(Bytes::new()).await.unwrap();
    assert_ne!(a, b);
    assert_eq!(
        info(store, &a).await,
        BlobInfo {
            length: 10,
            finalized: true,
            refcount: 0,
        }
    );
    assert_eq!(
        store.read_blob(&a, 0, 100).await.unwrap(),
        Bytes::from_static(b"whole body")
    );
    assert!(info(store, &b).await.finalized);
    assert_eq!(info(store, &b).await.length, 0);
    // Final: no more appends.
    assert!(matches!(
        store
            .append_blob(&a, 10, Bytes::from_static(b"x"), false)
            .await,
        Err(StoreError::BlobConflict { .. })
    ));
    // A transaction can reference it.
    let id = store.create_transaction(sample_tx(&a)).await.unwrap();
    assert_eq!(store.get_transaction(&id).await.unwrap().tx.body, a);
}

/// `keep_body`: the body of a transaction created with it stays readable
/// after the transaction is final (one created without it is collected
/// at once); gc takes it with the transaction.
pub async fn kept_body_outlives_the_final_transaction(store: &dyn Store) {
    let kept = store
        .put_blob(Bytes::from_static(b"kept body"))
        .await
        .unwrap();
    let plain = store
        .put_blob(Bytes::from_static(b"plain body"))
        .await
        .unwrap();
    let keep = CreateOptions {
        keep_body: true,
        ..CreateOptions::default()
    };
    let a = store.create_with(sample_tx(&kept), keep).await.unwrap();
    let b = store
        .create_with(sample_tx(&plain), CreateOptions::default())
        .await
        .unwrap();
    for id in [a.id(), b.id()] {
        store.cancel(id).await.unwrap();
    }
    assert_eq!(
        store.read_blob(&kept, 0, 100).await.unwrap(),
        Bytes::from_static(b"kept body"),
        "a kept body is readable after its transaction is final"
    );
    assert!(matches!(
        store.blob_info(&plain).await,
        Err(StoreError::NotFound(_))
    ));
    // gc takes the transaction, then the body.
    let later = SystemTime::now() + Duration::from_secs(3600);
    store.gc(later).await.unwrap();
    store.gc(later).await.unwrap();
    assert!(matches!(
        store.blob_info(&kept).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn blob_append_read_finalize(store: &dyn Store) {
    let blob = store.create_blob().await.unwrap();
    let empty = BlobInfo {
        length: 0,
        finalized: false,
        refcount: 0,
    };
    assert_eq!(info(store, &blob).await, empty);
    assert_eq!(store.read_blob(&blob, 0, 10).await.unwrap(), Bytes::new());

    let n = store
        .append_blob(&blob, 0, Bytes::from_static(b"hello "), false)
        .await
        .unwrap();
    assert_eq!(n, 6);
    assert_eq!(
        info(store, &blob).await,
        BlobInfo {
            length: 6,
            finalized: false,
            refcount: 0
        }
    );
    // Readable before it is final.
    assert_eq!(store.read_blob(&blob, 0, 100).await.unwrap(), "hello ");

    let n = store
        .append_blob(&blob, 6, Bytes::from_static(b"world"), true)
        .await
        .unwrap();
    assert_eq!(n, 11);
    assert_eq!(
        info(store, &blob).await,
        BlobInfo {
            length: 11,
            finalized: true,
            refcount: 0
        }
    );
    for (offset, max, want) in [
        (0, 100, "hello world"),
        (0, 11, "hello world"),
        (6, 3, "wor"),
        (5, 2, " w"),
        (10, 5, "d"),
        (11, 5, ""),
        (3, 0, ""),
    ] {
        assert_eq!(
            store.read_blob(&blob, offset, max).await.unwrap(),
            want,
            "read_blob({offset}, {max})"
        );
    }
}

pub async fn blob_append_conflicts(store: &dyn Store) {
    let blob = store.create_blob().await.unwrap();
    let abc = Bytes::from_static(b"abc");
    assert_eq!(
        store
            .append_blob(&blob, 0, abc.clone(), false)
            .await
            .unwrap(),
        3
    );
    for offset in [0, 2, 4, 100] {
        let r = store.append_blob(&blob, offset, abc.clone(), false).await;
        assert_blob_conflict(r, &blob);
        let r = store.append_blob(&blob, offset, abc.clone(), true).await;
        assert_blob_conflict(r, &blob);
    }
    // The failed appends changed nothing.
    assert_eq!(
        info(store, &blob).await,
        BlobInfo {
            length: 3,
            finalized: false,
            refcount: 0
        }
    );
    assert_eq!(store.read_blob(&blob, 0, 100).await.unwrap(), "abc");

    assert_eq!(
        store
            .append_blob(&blob, 3, Bytes::new(), false)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .append_blob(&blob, 3, Bytes::from_static(b"def"), true)
            .await
            .unwrap(),
        6
    );
    // Final: immutable, whatever the offset or flag.
    for (offset, data, last) in [
        (6, Bytes::from_static(b"g"), false),
        (6, Bytes::from_static(b"g"), true),
        (6, Bytes::new(), true),
        (6, Bytes::new(), false),
        (3, Bytes::from_static(b"x"), false),
    ] {
        let r = store.append_blob(&blob, offset, data, last).await;
        assert_blob_conflict(r, &blob);
    }
    assert_eq!(
        info(store, &blob).await,
        BlobInfo {
            length: 6,
            finalized: true,
            refcount: 0
        }
    );
    assert_eq!(store.read_blob(&blob, 0, 100).await.unwrap(), "abcdef");

    // An empty blob can be finalized by an empty last append.
    let empty = store.create_blob().await.unwrap();
    assert_eq!(
        store
            .append_blob(&empty, 0, Bytes::new(), true)
            .await
            .unwrap(),
        0
    );
    assert!(info(store, &empty).await.finalized);

    let unknown = BlobId("no-such-blob".into());
    assert_not_found(store.append_blob(&unknown, 0, abc, false).await);
    assert_not_found(store.read_blob(&unknown, 0, 10).await);
    assert_not_found(store.blob_info(&unknown).await);
}

/// A multi-megabyte body in uneven appends (one larger than any sane chunk
/// size), read back in 64 KiB reads and at offsets across chunk boundaries.
pub async fn blob_chunked_reads(store: &dyn Store) {
    let total = 5 * 1024 * 1024 + 12_345;
    let data = pattern(total);
    let blob = store.create_blob().await.unwrap();
    let sizes = [1, 4096, 65_537, 300_000, 1 << 20, 7, 3 * 1024 * 1024];
    let mut offset = 0;
    for size in sizes.iter().cycle() {
        let end = (offset + size).min(total);
        let last = end == total;
        let len = store
            .append_blob(
                &blob,
                offset as u64,
                Bytes::copy_from_slice(&data[offset..end]),
                last,
            )
            .await
            .unwrap();
        assert_eq!(len, end as u64);
        offset = end;
        if last {
            break;
        }
    }
    assert_eq!(
        info(store, &blob).await,
        BlobInfo {
            length: total as u64,
            finalized: true,
            refcount: 0
        }
    );

    const READ: usize = 64 * 1024;
    let mut back = Vec::with_capacity(total);
    loop {
        let piece = store
            .read_blob(&blob, back.len() as u64, READ)
            .await
            .unwrap();
        assert_eq!(
            piece.len(),
            READ.min(total - back.len()),
            "read at {}",
            back.len()
        );
        if piece.is_empty() {
            break;
        }
        back.extend_from_slice(&piece);
    }
    assert!(back == data, "64 KiB reads do not give the body back");

    for (offset, max) in [
        (0, 1),
        (1, 1),
        (4096, 2),
        (65_535, 10),
        (4097 + 65_537 - 3, 7),
        (300_000, 1_000_000),
        (1 << 20, 3 << 20),
        (total - 5, 100),
        (1, total),
        (0, total + 1),
    ] {
        let got = store.read_blob(&blob, offset as u64, max).await.unwrap();
        let end = (offset + max).min(total);
        assert!(
            got[..] == data[offset..end],
            "read_blob({offset}, {max}) returned {} bytes, not the {} stored there",
            got.len(),
            end - offset
        );
    }
}

// ----------------------------------------------------------- transactions

pub async fn create_requires_finalized_body(store: &dyn Store) {
    let blob = store.create_blob().await.unwrap();
    store
        .append_blob(&blob, 0, Bytes::from_static(b"partial"), false)
        .await
        .unwrap();
    let r = store.create_transaction(sample_tx(&blob)).await;
    assert_blob_conflict(r, &blob);
    assert_eq!(info(store, &blob).await.refcount, 0);

    let missing = BlobId("no-such-blob".into());
    assert_not_found(store.create_transaction(sample_tx(&missing)).await);

    assert_eq!(
        store.counts().await.unwrap(),
        QueueCounts {
            blobs: 1,
            ..QueueCounts::default()
        }
    );
}

/// One message's transactions: all created, or none deliverable.
pub async fn create_many_all_or_nothing(store: &dyn Store) {
    let body = finalized_blob(store, b"Subject: many\r\n\r\nx\r\n").await;
    let ids = store
        .create_transactions(vec![sample_tx(&body), sample_tx(&body), sample_tx(&body)])
        .await
        .expect("create_transactions");
    assert_eq!(ids.len(), 3);
    assert_eq!(info(store, &body).await.refcount, 3);
    let claimed = claim(store, &replica("a"), now_ms() + Duration::from_secs(1), 10).await;
    let mut got = self::ids(&claimed);
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);

    // The third refers to a body that is not complete: the batch fails and
    // the first two are never delivered.
    let partial = store.create_blob().await.unwrap();
    store
        .append_blob(&partial, 0, Bytes::from_static(b"partial"), false)
        .await
        .unwrap();
    let r = store
        .create_transactions(vec![
            sample_tx(&body),
            sample_tx(&body),
            sample_tx(&partial),
        ])
        .await;
    assert_blob_conflict(r, &partial);
    // Only the first batch (its leases expired by then) is ever claimable.
    let later = now_ms() + Duration::from_secs(86_400);
    let claimed = claim(store, &replica("b"), later, 10).await;
    let strays: Vec<TxId> = self::ids(&claimed)
        .into_iter()
        .filter(|id| !want.contains(id))
        .collect();
    assert!(
        strays.is_empty(),
        "deliverable from the failed batch: {strays:?}"
    );
}

/// An attempt made before storing is attempt 1: counted, in the history,
/// and the first claim waits for its `next_attempt`. Through both
/// creation calls.
pub async fn prior_attempt_recorded(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let finished = now_ms() - Duration::from_secs(2);
    let next = now_ms() + HOUR;
    let prior = PriorAttempt {
        responses: responses("cut-through"),
        finished,
        next_attempt: next,
    };
    let with_prior = NewTransaction {
        prior_attempt: Some(prior.clone()),
        ..sample_tx(&body)
    };
    let single = create(store, with_prior.clone()).await;
    let batch = store
        .create_transactions(vec![with_prior.clone(), sample_tx(&body)])
        .await
        .expect("create_transactions");
    for id in [&single, &batch[0]] {
        let rec = get(store, id).await;
        assert_eq!(rec.tx, with_prior, "{id}");
        assert_eq!(rec.attempt_count, 1, "{id}");
        assert_eq!(rec.next_attempt, Some(next), "{id}");
        assert_eq!(rec.last_responses, Some(responses("cut-through")), "{id}");
        assert_eq!(
            rec.attempts,
            vec![AttemptRecord {
                attempt: 1,
                finished,
                responses: responses("cut-through"),
            }],
            "{id}"
        );
        assert_eq!(rec.state(now_ms()), TxState::Waiting, "{id}");
    }
    // Only the one without a prior attempt is due now.
    let a = replica("a");
    assert_eq!(
        ids(&claim(store, &a, now_ms(), 10).await),
        vec![batch[1].clone()]
    );
    store
        .finish_attempt(&batch[1], &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    assert_eq!(claim(store, &a, next - MS, 10).await, vec![]);
    let mut due = ids(&claim(store, &a, next, 10).await);
    due.sort();
    let mut want = vec![single.clone(), batch[0].clone()];
    want.sort();
    assert_eq!(due, want);
    assert_eq!(get(store, &single).await.attempt_count, 2);
}

/// A holder may settle a transaction without delivering (its prior
/// attempt decided it): the claim's count is taken back, the history and
/// the last responses stay as they were.
pub async fn settle_without_attempt(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let a = replica("a");
    let now = now_ms();
    let id = create(
        store,
        NewTransaction {
            prior_attempt: Some(PriorAttempt {
                responses: responses("550 refused"),
                finished: now,
                next_attempt: now,
            }),
            ..sample_tx(&body)
        },
    )
    .await;
    let claimed = claim(store, &a, now, 10).await;
    assert_eq!(ids(&claimed), vec![id.clone()]);
    assert_eq!(claimed[0].attempt_count, 2);
    let rec = store
        .finish_attempt(
            &id,
            &a,
            AttemptOutcome {
                attempted: false,
                ..final_outcome(BOUNCED)
            },
        )
        .await
        .unwrap();
    assert_eq!(rec, get(store, &id).await);
    assert_eq!(rec.attempt_count, 1);
    assert_eq!(rec.final_attempt_reason, Some(BOUNCED));
    assert_eq!(rec.last_responses, Some(responses("550 refused")));
    assert_eq!(rec.attempts.len(), 1);
    assert_eq!(rec.attempts[0].responses, responses("550 refused"));
    assert_eq!(rec.lease_owner, None);
    assert_eq!(rec.state(now_ms()), TxState::Final);
}

pub async fn transaction_round_trip(store: &dyn Store) {
    let body = finalized_blob(store, b"Subject: hi\r\n\r\nbody\r\n").await;
    let tx = sample_tx(&body);
    let before = now_ms();
    let id = create(store, tx.clone()).await;
    let after = now_ms();

    let rec = get(store, &id).await;
    assert_between(rec.created, before, after, "created");
    let expected = TxRecord {
        id: id.clone(),
        tx,
        created: rec.created,
        last_update: rec.created,
        version: 1,
        attempt_count: 0,
        next_attempt: Some(rec.created),
        final_attempt_reason: None,
        lease_owner: None,
        lease_expires: None,
        cancelled: false,
        last_responses: None,
        attempts: vec![],
    };
    assert_eq!(rec, expected);
    assert_eq!(rec.state(now_ms()), TxState::Waiting);
    assert_eq!(info(store, &body).await.refcount, 1);

    assert_not_found(store.get_transaction(&TxId("no-such-tx".into())).await);
}

pub async fn leased_creation(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let (a, b) = (replica("a"), replica("b"));
    let tx = leased_tx(&body, &a, LONG_TTL);
    let before = now_ms();
    let id = create(store, tx.clone()).await;
    let after = now_ms();

    let rec = get(store, &id).await;
    assert_between(rec.created, before, after, "created");
    let expires = rec.lease_expires.expect("a lease");
    assert_between(
        expires,
        before + LONG_TTL,
        after + LONG_TTL,
        "lease_expires",
    );
    let expected = TxRecord {
        id: id.clone(),
        tx,
        created: rec.created,
        last_update: rec.created,
        version: 1,
        attempt_count: 1,
        next_attempt: Some(rec.created),
        final_attempt_reason: None,
        lease_owner: Some(a),
        lease_expires: Some(expires),
        cancelled: false,
        last_responses: None,
        attempts: vec![],
    };
    assert_eq!(rec, expected);
    assert_eq!(rec.state(rec.created), TxState::Inflight);
    // Due by its next_attempt, but leased: nobody else gets it.
    assert_eq!(claim(store, &b, rec.created, 10).await, vec![]);
    assert_eq!(claim(store, &b, expires - MS, 10).await, vec![]);
}

pub async fn claim_due_leases(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let b = replica("b");
    let mut created = HashSet::new();
    for _ in 0..3 {
        created.insert(create(store, sample_tx(&body)).await);
    }
    let now = now_ms();
    assert_eq!(claim(store, &b, now, 0).await, vec![]);
    let first = claim(store, &b, now, 2).await;
    assert_eq!(first.len(), 2);
    let second = claim(store, &b, now, 10).await;
    assert_eq!(second.len(), 1);
    assert_eq!(claim(store, &b, now, 10).await, vec![]);

    let mut seen = HashSet::new();
    for rec in first.iter().chain(&second) {
        assert!(seen.insert(rec.id.clone()), "{} claimed twice", rec.id);
        assert_eq!(rec.lease_owner, Some(b.clone()));
        assert_eq!(rec.lease_expires, Some(now + LONG_TTL));
        assert_eq!(rec.attempt_count, 1);
        assert_eq!(rec.version, 2);
        assert_eq!(rec.next_attempt, Some(rec.created));
        assert_eq!(rec.final_attempt_reason, None);
        assert_eq!(rec.state(now), TxState::Inflight);
        assert_eq!(
            rec,
            &get(store, &rec.id).await,
            "claim returns the stored record"
        );
    }
    assert_eq!(seen, created);

    // A new due transaction: limit 0 takes nothing, limit 1 takes it.
    let late = create(store, sample_tx(&body)).await;
    let now = now_ms();
    assert_eq!(claim(store, &b, now, 0).await, vec![]);
    assert_eq!(ids(&claim(store, &b, now, 1).await), vec![late]);
}

pub async fn claim_respects_next_attempt(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let (a, b) = (replica("a"), replica("b"));
    let id = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let at = now_ms() + HOUR;
    let rec = store
        .finish_attempt(&id, &a, retry_at(at, "later"))
        .await
        .unwrap();
    assert_eq!(rec.next_attempt, Some(at));
    assert_eq!(rec.state(now_ms()), TxState::Waiting);

    assert_eq!(claim(store, &b, now_ms(), 10).await, vec![]);
    assert_eq!(claim(store, &b, at - MS, 10).await, vec![]);
    let got = claim(store, &b, at, 10).await;
    assert_eq!(ids(&got), vec![id.clone()]);
    assert_eq!(got[0].attempt_count, 2);
    assert_eq!(got[0].next_attempt, Some(at));
    assert_eq!(got[0].lease_owner, Some(b));
    assert_eq!(got[0].lease_expires, Some(at + LONG_TTL));
}

pub async fn final_never_claimed(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let (a, b) = (replica("a"), replica("b"));
    let leased = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    // Created before the other is final: a body whose transactions are
    // all final is collected.
    let plain = create(store, sample_tx(&body)).await;
    store
        .finish_attempt(&leased, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    assert_eq!(
        ids(&claim(store, &b, now_ms(), 10).await),
        vec![plain.clone()]
    );
    store
        .finish_attempt(&plain, &b, final_outcome(BOUNCED))
        .await
        .unwrap();

    let far = now_ms() + Duration::from_secs(10 * 365 * 24 * 3600);
    assert_eq!(claim(store, &replica("c"), far, 10).await, vec![]);
    assert_eq!(get(store, &leased).await.state(far), TxState::Final);
    assert_eq!(get(store, &plain).await.state(far), TxState::Final);
}

/// A lease taken at creation keeps others out until it expires (judged by
/// the `now` given, not by sleeping); then another replica takes over and
/// the first one can neither renew nor finish.
pub async fn lease_takeover(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let (a, b) = (replica("a"), replica("b"));
    let id = create(store, leased_tx(&body, &a, SHORT_TTL)).await;
    let rec = get(store, &id).await;
    let expires = rec.lease_expires.unwrap();
    assert_eq!(claim(store, &b, rec.created, 10).await, vec![]);
    assert_eq!(claim(store, &b, expires - MS, 10).await, vec![]);

    let got = claim(store, &b, expires, 10).await;
    assert_eq!(ids(&got), vec![id.clone()]);
    let taken = &got[0];
    assert_eq!(taken.lease_owner, Some(b.clone()));
    assert_eq!(taken.lease_expires, Some(expires + LONG_TTL));
    assert_eq!(taken.attempt_count, 2);
    assert!(taken.version > rec.version);

    assert_lease_lost(store.renew_lease(&id, &a, LONG_TTL).await, &id);
    assert_lease_lost(
        store
            .finish_attempt(&id, &a, final_outcome(FinalReason::RetryDeadline))
            .await,
        &id,
    );
    assert_eq!(
        &get(store, &id).await,
        taken,
        "the old owner changed nothing"
    );

    // Nor can a third replica take it while b holds it.
    assert_eq!(claim(store, &replica("c"), expires, 10).await, vec![]);

    let done = store
        .finish_attempt(&id, &b, final_outcome(DELIVERED))
        .await
        .unwrap();
    assert_eq!(done.final_attempt_reason, Some(DELIVERED));
}

pub async fn renew_lease(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let (a, b) = (replica("a"), replica("b"));
    let id = create(store, leased_tx(&body, &a, LONG_TTL)).await;

    let before = now_ms();
    store.renew_lease(&id, &a, 2 * LONG_TTL).await.unwrap();
    let after = now_ms();
    let rec = get(store, &id).await;
    assert_eq!(rec.lease_owner, Some(a.clone()));
    assert_between(
        rec.lease_expires.unwrap(),
        before + 2 * LONG_TTL,
        after + 2 * LONG_TTL,
        "renewed lease_expires",
    );
    assert_eq!(rec.version, 2);

    assert_lease_lost(store.renew_lease(&id, &b, LONG_TTL).await, &id);
    assert_eq!(get(store, &id).await, rec, "a failed renew changes nothing");

    assert_not_found(
        store
            .renew_lease(&TxId("no-such-tx".into()), &a, LONG_TTL)
            .await,
    );

    store
        .finish_attempt(&id, &a, retry_at(now_ms() + HOUR, "later"))
        .await
        .unwrap();
    assert_lease_lost(store.renew_lease(&id, &a, LONG_TTL).await, &id);

    // Never leased at all.
    let plain = create(store, sample_tx(&body)).await;
    assert_lease_lost(store.renew_lease(&plain, &a, LONG_TTL).await, &plain);
}

pub async fn finish_wrong_owner(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let (a, b) = (replica("a"), replica("b"));
    let id = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let before = get(store, &id).await;
    assert_lease_lost(
        store
            .finish_attempt(&id, &b, final_outcome(FinalReason::RetryMaxAttempts))
            .await,
        &id,
    );
    assert_lease_lost(
        store
            .finish_attempt(&id, &b, retry_at(now_ms() + HOUR, "nope"))
            .await,
        &id,
    );
    assert_eq!(get(store, &id).await, before, "nothing recorded");

    let plain = create(store, sample_tx(&body)).await;
    let plain_before = get(store, &plain).await;
    assert_lease_lost(
        store
            .finish_attempt(&plain, &a, final_outcome(FinalReason::RetryMaxAttempts))
            .await,
        &plain,
    );
    assert_eq!(get(store, &plain).await, plain_before);

    assert_not_found(
        store
            .finish_attempt(&TxId("no-such-tx".into()), &a, final_outcome(DELIVERED))
            .await,
    );
}

pub async fn finish_retry(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let (a, b) = (replica("a"), replica("b"));
    let id = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let created = get(store, &id).await;

    let at = now_ms() + Duration::from_secs(600);
    let before = now_ms();
    let rec = store
        .finish_attempt(&id, &a, retry_at(at, "first"))
        .await
        .unwrap();
    let after = now_ms();
    assert_eq!(
        rec,
        get(store, &id).await,
        "finish returns the stored record"
    );
    assert_between(rec.last_update, before, after, "last_update");
    let expected = TxRecord {
        last_update: rec.last_update,
        version: 2,
        attempt_count: 1,
        next_attempt: Some(at),
        lease_owner: None,
        lease_expires: None,
        last_responses: Some(responses("first")),
        attempts: vec![AttemptRecord {
            attempt: 1,
            finished: rec.last_update,
            responses: responses("first"),
        }],
        ..created.clone()
    };
    assert_eq!(rec, expected);
    assert_eq!(rec.state(now_ms()), TxState::Waiting);

    // The next attempt replaces the responses.
    let got = claim(store, &b, at, 10).await;
    assert_eq!(ids(&got), vec![id.clone()]);
    assert_eq!(got[0].attempt_count, 2);
    assert_eq!(got[0].last_responses, Some(responses("first")));
    let rec = store
        .finish_attempt(&id, &b, retry_at(at + HOUR, "second"))
        .await
        .unwrap();
    assert_eq!(rec.attempt_count, 2);
    assert_eq!(rec.next_attempt, Some(at + HOUR));
    assert_eq!(rec.last_responses, Some(responses("second")));
    // Every attempt is kept, in order.
    let history: Vec<(u32, AttemptResponses)> = rec
        .attempts
        .iter()
        .map(|a| (a.attempt, a.responses.clone()))
        .collect();
    assert_eq!(
        history,
        vec![(1, responses("first")), (2, responses("second"))]
    );
    assert_eq!(rec.attempts[1].finished, rec.last_update);
    assert_eq!(rec.tx, created.tx, "the envelope is untouched");
}

pub async fn finish_final(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let a = replica("a");
    let id = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let created = get(store, &id).await;
    let rec = store
        .finish_attempt(&id, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    let expected = TxRecord {
        last_update: rec.last_update,
        version: 2,
        attempt_count: 1,
        next_attempt: None,
        final_attempt_reason: Some(DELIVERED),
        lease_owner: None,
        lease_expires: None,
        last_responses: Some(responses(DELIVERED.as_str())),
        attempts: vec![AttemptRecord {
            attempt: 1,
            finished: rec.last_update,
            responses: responses(DELIVERED.as_str()),
        }],
        ..created
    };
    assert_eq!(rec, expected);
    assert_eq!(rec, get(store, &id).await);
    assert_eq!(rec.state(now_ms()), TxState::Final);

    assert_lease_lost(
        store
            .finish_attempt(&id, &a, final_outcome(FinalReason::RetryDeadline))
            .await,
        &id,
    );
    assert_lease_lost(store.renew_lease(&id, &a, LONG_TTL).await, &id);
    assert_eq!(claim(store, &a, now_ms() + 1000 * HOUR, 10).await, vec![]);
    assert_eq!(get(store, &id).await, rec);
}

/// Every reason is kept as given, and reads back as itself.
pub async fn every_final_reason_is_kept(store: &dyn Store) {
    let a = replica("a");
    for reason in FinalReason::ALL {
        let body = finalized_blob(store, b"x").await;
        let id = create(store, leased_tx(&body, &a, LONG_TTL)).await;
        let rec = store
            .finish_attempt(&id, &a, final_outcome(reason))
            .await
            .unwrap();
        assert_eq!(rec.final_attempt_reason, Some(reason));
        assert_eq!(get(store, &id).await.final_attempt_reason, Some(reason));
    }
}

pub async fn cancel(store: &dyn Store) {
    let (a, b) = (replica("a"), replica("b"));
    // A body each: one whose transactions are all final is collected.
    let body = finalized_blob(store, b"x").await;

    // Not leased: final at once.
    let plain = create(store, sample_tx(&body)).await;
    assert_eq!(
        store.cancel(&plain).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let rec = get(store, &plain).await;
    assert!(rec.cancelled);
    assert_eq!(rec.final_attempt_reason, Some(CANCELLED));
    assert_eq!(rec.next_attempt, None);
    assert_eq!(rec.version, 2);
    assert_eq!(rec.state(now_ms()), TxState::Final);

    // Leased: flagged, the lease stays; the holder's renew says stop.
    let body = finalized_blob(store, b"x").await;
    let renewing = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    assert_eq!(
        store.cancel(&renewing).await.unwrap(),
        CancelOutcome::Requested
    );
    // Asking again changes nothing more.
    assert_eq!(
        store.cancel(&renewing).await.unwrap(),
        CancelOutcome::Requested
    );
    let rec = get(store, &renewing).await;
    assert!(rec.cancelled);
    assert_eq!(rec.final_attempt_reason, None);
    assert_eq!(rec.lease_owner, Some(a.clone()));
    assert_eq!(rec.version, 2);
    assert_eq!(rec.state(now_ms()), TxState::Inflight);
    assert_lease_lost(store.renew_lease(&renewing, &a, LONG_TTL).await, &renewing);

    // Leased: the holder's finish is recorded and ends it, retry or not.
    let body = finalized_blob(store, b"x").await;
    let finishing = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    assert_eq!(
        store.cancel(&finishing).await.unwrap(),
        CancelOutcome::Requested
    );
    let rec = store
        .finish_attempt(&finishing, &a, retry_at(now_ms() + HOUR, "cut short"))
        .await
        .unwrap();
    assert!(rec.cancelled);
    assert_eq!(rec.final_attempt_reason, Some(CANCELLED));
    assert_eq!(rec.next_attempt, None);
    assert_eq!(rec.last_responses, Some(responses("cut short")));
    assert_eq!(rec.state(now_ms()), TxState::Final);

    // Leased, and the holder vanished: no claim after expiry returns it.
    let body = finalized_blob(store, b"x").await;
    let abandoned = create(store, leased_tx(&body, &a, SHORT_TTL)).await;
    assert_eq!(
        store.cancel(&abandoned).await.unwrap(),
        CancelOutcome::Requested
    );
    let expires = get(store, &abandoned).await.lease_expires.unwrap();
    assert_eq!(claim(store, &b, expires, 10).await, vec![]);

    // Final already: the reason stands.
    let body = finalized_blob(store, b"x").await;
    let done = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    store
        .finish_attempt(&done, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    let before = get(store, &done).await;
    assert_eq!(
        store.cancel(&done).await.unwrap(),
        CancelOutcome::AlreadyFinal
    );
    let rec = get(store, &done).await;
    assert_eq!(rec.final_attempt_reason, Some(DELIVERED));
    assert!(
        !rec.cancelled,
        "a delivered transaction is not marked cancelled"
    );
    assert_eq!(rec, before, "nothing changed");
    // A cancelled one, cancelled again.
    assert_eq!(
        store.cancel(&plain).await.unwrap(),
        CancelOutcome::AlreadyFinal
    );
    assert_eq!(rec.state(now_ms()), TxState::Final);

    // None of them is ever claimed again, even the one whose lease runs out.
    assert_eq!(claim(store, &b, now_ms() + 1000 * HOUR, 10).await, vec![]);

    assert_not_found(store.cancel(&TxId("no-such-tx".into())).await);
}

pub async fn versions_increase(store: &dyn Store) {
    #[track_caller]
    fn step(version: &mut u64, v: u64, what: &str) {
        assert!(v > *version, "{what}: version {v} after {version}");
        *version = v;
    }
    let body = finalized_blob(store, b"x").await;
    let (a, b) = (replica("a"), replica("b"));
    let id = create(store, sample_tx(&body)).await;
    let mut version = get(store, &id).await.version;
    assert_eq!(version, 1);

    let now = now_ms();
    let got = claim(store, &a, now, 1).await;
    step(&mut version, got[0].version, "claim");
    assert_eq!(get(store, &id).await.version, version);
    store.renew_lease(&id, &a, LONG_TTL).await.unwrap();
    step(&mut version, get(store, &id).await.version, "renew");
    let rec = store
        .finish_attempt(&id, &a, retry_at(now, "retry"))
        .await
        .unwrap();
    step(&mut version, rec.version, "finish");
    let got = claim(store, &b, now, 1).await;
    assert_eq!(ids(&got), vec![id.clone()]);
    step(&mut version, got[0].version, "second claim");
    store.cancel(&id).await.unwrap();
    step(&mut version, get(store, &id).await.version, "cancel");
    let rec = store
        .finish_attempt(&id, &b, final_outcome(CANCELLED))
        .await
        .unwrap();
    step(&mut version, rec.version, "final finish");
}

pub async fn counts_by_state(store: &dyn Store) {
    assert_eq!(store.counts().await.unwrap(), QueueCounts::default());
    let a = replica("a");
    let body = finalized_blob(store, b"x").await;
    let _unreferenced = finalized_blob(store, b"y").await;

    create(store, sample_tx(&body)).await;
    create(store, sample_tx(&body)).await;
    create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let later = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    store
        .finish_attempt(&later, &a, retry_at(now_ms() + HOUR, "later"))
        .await
        .unwrap();
    let done = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    store
        .finish_attempt(&done, &a, final_outcome(DELIVERED))
        .await
        .unwrap();

    assert_eq!(
        store.counts().await.unwrap(),
        QueueCounts {
            waiting: 3,
            due: 2,
            inflight: 1,
            final_: 1,
            blobs: 2,
        }
    );
}

// --------------------------------------------------------------------- gc

/// Two transactions share a body: the body lives while either does, and
/// goes with the last. Unreferenced blobs go once older than the cutoff.
pub async fn refcounts_and_gc(store: &dyn Store) {
    let a = replica("a");
    let body = finalized_blob(store, b"shared body").await;
    let t1 = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let t2 = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    assert_eq!(info(store, &body).await.refcount, 2);

    store
        .finish_attempt(&t1, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    assert_eq!(store.gc(now_ms() + HOUR).await.unwrap(), 1);
    assert_not_found(store.get_transaction(&t1).await);
    assert_eq!(
        info(store, &body).await,
        BlobInfo {
            length: 11,
            finalized: true,
            refcount: 1
        }
    );
    assert_eq!(store.read_blob(&body, 0, 100).await.unwrap(), "shared body");

    store
        .finish_attempt(&t2, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    assert_eq!(store.gc(now_ms() + HOUR).await.unwrap(), 1);
    assert_not_found(store.get_transaction(&t2).await);
    assert_not_found(store.blob_info(&body).await);
    assert_not_found(store.read_blob(&body, 0, 100).await);

    // Unreferenced blobs, final or still being written.
    let before = now_ms();
    let done = finalized_blob(store, b"orphan").await;
    let open = store.create_blob().await.unwrap();
    store
        .append_blob(&open, 0, Bytes::from_static(b"uploading"), false)
        .await
        .unwrap();
    assert_eq!(store.gc(before).await.unwrap(), 0);
    assert_eq!(info(store, &done).await.length, 6);
    assert_eq!(info(store, &open).await.length, 9);
    assert_eq!(store.counts().await.unwrap().blobs, 2);

    assert_eq!(store.gc(now_ms() + HOUR).await.unwrap(), 0);
    assert_not_found(store.blob_info(&done).await);
    assert_not_found(store.blob_info(&open).await);
    assert_eq!(store.counts().await.unwrap(), QueueCounts::default());
}

/// GC deletes final transactions last updated before the cutoff, and
/// nothing else, however old.
pub async fn gc_only_old_final(store: &dyn Store) {
    let a = replica("a");
    let body = finalized_blob(store, b"x").await;
    let waiting = create(store, sample_tx(&body)).await;
    let inflight = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let retrying = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    store
        .finish_attempt(&retrying, &a, retry_at(now_ms() + HOUR, "later"))
        .await
        .unwrap();
    let done = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let cutoff = now_ms();
    store
        .finish_attempt(&done, &a, final_outcome(DELIVERED))
        .await
        .unwrap();

    let mut kept = HashMap::new();
    for id in [&waiting, &inflight, &retrying, &done] {
        kept.insert(id.clone(), get(store, id).await);
    }
    // `done` was updated at or after the cutoff: too young.
    assert_eq!(store.gc(cutoff).await.unwrap(), 0);
    for (id, rec) in &kept {
        assert_eq!(&get(store, id).await, rec);
    }

    assert_eq!(store.gc(now_ms() + 24 * HOUR).await.unwrap(), 1);
    assert_not_found(store.get_transaction(&done).await);
    kept.remove(&done);
    for (id, rec) in &kept {
        assert_eq!(&get(store, id).await, rec, "gc touched a live transaction");
    }
    assert_eq!(info(store, &body).await.refcount, 3);
}

// ------------------------------------------------------ prompt collection

/// Asserts the body is collected: reads and info are `NotFound`.
async fn assert_collected(store: &dyn Store, body: &BlobId, what: &str) {
    let r = store.read_blob(body, 0, 100).await;
    assert!(
        matches!(r, Err(StoreError::NotFound(_))),
        "{what}: read of a collected body: {r:?}"
    );
    let r = store.blob_info(body).await;
    assert!(
        matches!(r, Err(StoreError::NotFound(_))),
        "{what}: info of a collected body: {r:?}"
    );
}

/// Three transactions share a body: it is kept while any is open and
/// collected in the write that makes the last one final; the records stay.
pub async fn body_collected_when_last_open_is_final(store: &dyn Store) {
    let (a, b) = (replica("a"), replica("b"));
    let body = finalized_blob(store, b"shared body").await;
    let delivered = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let bounced = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let waiting = create(store, sample_tx(&body)).await;
    assert_eq!(store.counts().await.unwrap().blobs, 1);

    store
        .finish_attempt(&delivered, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    assert_eq!(store.read_blob(&body, 0, 100).await.unwrap(), "shared body");
    store
        .finish_attempt(&bounced, &a, final_outcome(BOUNCED))
        .await
        .unwrap();
    // One still open (waiting, then in flight after a claim): kept.
    assert_eq!(store.read_blob(&body, 0, 100).await.unwrap(), "shared body");
    let got = claim(store, &b, now_ms(), 10).await;
    assert_eq!(ids(&got), vec![waiting.clone()]);
    let rec = store
        .finish_attempt(&waiting, &b, retry_at(now_ms() + HOUR, "later"))
        .await
        .unwrap();
    assert_eq!(rec.final_attempt_reason, None);
    assert_eq!(info(store, &body).await.refcount, 3);
    assert_eq!(store.read_blob(&body, 0, 100).await.unwrap(), "shared body");

    let kept = [get(store, &delivered).await, get(store, &bounced).await];
    store.cancel(&waiting).await.unwrap();
    assert_collected(store, &body, "after the last open one was cancelled").await;
    assert_eq!(store.counts().await.unwrap().blobs, 0);
    // The records are all still there, as they were.
    assert_eq!(get(store, &delivered).await, kept[0]);
    assert_eq!(get(store, &bounced).await, kept[1]);
    let rec = get(store, &waiting).await;
    assert!(
        rec.cancelled && rec.final_attempt_reason == Some(CANCELLED),
        "{rec:?}"
    );
    assert_eq!(rec.attempts.len(), 1);
    // A collected body cannot carry a new transaction.
    assert_not_found(store.create_transaction(sample_tx(&body)).await);
    assert_eq!(store.counts().await.unwrap().final_, 3);

    // gc then takes the records, and with them what is left of the blob.
    assert_eq!(store.gc(now_ms() + HOUR).await.unwrap(), 3);
    assert_collected(store, &body, "after gc").await;
    assert_eq!(store.counts().await.unwrap(), QueueCounts::default());
}

/// Cancellation finalizes through a holder's finish and through a claim
/// after the holder vanished: both collect the body. Bodies of other
/// transactions are untouched.
pub async fn body_collected_on_cancel_paths(store: &dyn Store) {
    let (a, b) = (replica("a"), replica("b"));

    let finished = finalized_blob(store, b"finished").await;
    let t = create(store, leased_tx(&finished, &a, LONG_TTL)).await;
    store.cancel(&t).await.unwrap();
    // Flagged only: the holder is still at it and may read.
    assert_eq!(
        store.read_blob(&finished, 0, 100).await.unwrap(),
        "finished"
    );
    store
        .finish_attempt(&t, &a, retry_at(now_ms() + HOUR, "cut short"))
        .await
        .unwrap();
    assert_collected(store, &finished, "cancelled, then finished by its holder").await;

    let abandoned = finalized_blob(store, b"abandoned").await;
    let t = create(store, leased_tx(&abandoned, &a, SHORT_TTL)).await;
    store.cancel(&t).await.unwrap();
    let expires = get(store, &t).await.lease_expires.unwrap();
    assert_eq!(claim(store, &b, expires, 10).await, vec![]);
    let rec = get(store, &t).await;
    assert_eq!(rec.state(now_ms()), TxState::Final);
    assert_eq!(rec.final_attempt_reason, Some(CANCELLED));
    assert_collected(store, &abandoned, "cancelled, then finalized by a claim").await;

    let other = finalized_blob(store, b"other").await;
    let open = create(store, sample_tx(&other)).await;
    assert_eq!(store.read_blob(&other, 0, 100).await.unwrap(), "other");
    assert_eq!(store.counts().await.unwrap().blobs, 1);
    store.cancel(&open).await.unwrap();
    assert_collected(store, &other, "cancelled while waiting").await;
    assert_eq!(store.counts().await.unwrap().blobs, 0);
}

/// `delete_blob` takes unreferenced blobs at once and leaves referenced
/// ones alone.
pub async fn delete_unreferenced_blob(store: &dyn Store) {
    let uploading = store.create_blob().await.unwrap();
    store
        .append_blob(&uploading, 0, Bytes::from(pattern(300_000)), false)
        .await
        .unwrap();
    let finished = finalized_blob(store, b"finished, never used").await;
    let used = finalized_blob(store, b"used").await;
    let id = create(store, sample_tx(&used)).await;
    assert_eq!(store.counts().await.unwrap().blobs, 3);

    assert!(store.delete_blob(&uploading).await.unwrap());
    assert_not_found(store.blob_info(&uploading).await);
    assert_not_found(store.read_blob(&uploading, 0, 10).await);
    assert_not_found(
        store
            .append_blob(&uploading, 300_000, Bytes::from_static(b"x"), true)
            .await,
    );
    assert!(store.delete_blob(&finished).await.unwrap());
    assert_not_found(store.blob_info(&finished).await);
    assert!(!store.delete_blob(&used).await.unwrap());
    assert_eq!(store.read_blob(&used, 0, 10).await.unwrap(), "used");
    assert_eq!(info(store, &used).await.refcount, 1);
    assert!(!store.delete_blob(&uploading).await.unwrap());
    assert!(
        !store
            .delete_blob(&BlobId("no-such-blob".into()))
            .await
            .unwrap()
    );
    assert_eq!(store.counts().await.unwrap().blobs, 1);
    assert_eq!(get(store, &id).await.tx.body, used);
}

pub async fn fresh_store_admits(store: &dyn Store) {
    store.admit().await.expect("a fresh store admits new mail");
    let body = finalized_blob(store, b"x").await;
    create(store, sample_tx(&body)).await;
    store.admit().await.expect("still room");
}

// -------------------------------------------------------------------- ids

pub async fn ids_unique(store: &dyn Store) {
    fn url_safe(s: &str) -> bool {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
    let blobs = join_all((0..300).map(|_| store.create_blob())).await;
    let blobs: Vec<BlobId> = blobs.into_iter().map(|b| b.unwrap()).collect();
    let distinct: HashSet<&BlobId> = blobs.iter().collect();
    assert_eq!(distinct.len(), blobs.len(), "duplicate blob ids");
    assert!(
        blobs.iter().all(|b| url_safe(&b.0)),
        "blob ids not URL-safe"
    );

    let body = finalized_blob(store, b"x").await;
    let txs = join_all((0..100).map(|_| store.create_transaction(sample_tx(&body)))).await;
    let txs: Vec<TxId> = txs.into_iter().map(|t| t.unwrap()).collect();
    let distinct: HashSet<&TxId> = txs.iter().collect();
    assert_eq!(distinct.len(), txs.len(), "duplicate transaction ids");
    assert!(
        txs.iter().all(|t| url_safe(&t.0)),
        "transaction ids not URL-safe"
    );
}

// ------------------------------------------------- create_with (REST)

/// How long the short-lived keys and registrations of these tests live:
/// long enough for the calls made before they expire to finish on a
/// loaded machine, short enough to wait for.
const SHORT_LIFE: Duration = Duration::from_secs(2);

/// A key in the namespace of one REST client, as the API qualifies them.
fn key(name: &str, fingerprint: &str, expires: SystemTime) -> IdempotencyKey {
    IdempotencyKey {
        key: format!("rest-client\0{name}"),
        fingerprint: fingerprint.into(),
        expires,
    }
}

fn with_key(k: IdempotencyKey) -> CreateOptions {
    CreateOptions {
        id: None,
        idempotency: Some(k),
        keep_body: false,
    }
}

fn with_id(id: &str) -> CreateOptions {
    CreateOptions {
        id: Some(TxId(id.into())),
        idempotency: None,
        keep_body: false,
    }
}

async fn create_with(store: &dyn Store, tx: NewTransaction, opts: CreateOptions) -> Created {
    store.create_with(tx, opts).await.expect("create_with")
}

/// `create_with` that must create; its id.
async fn create_new(store: &dyn Store, tx: NewTransaction, opts: CreateOptions) -> TxId {
    match create_with(store, tx, opts).await {
        Created::New(id) => id,
        other => panic!("expected a new transaction, got {other:?}"),
    }
}

async fn lookup(store: &dyn Store, k: &IdempotencyKey) -> Option<(TxId, String)> {
    store
        .idempotency_lookup(&k.key)
        .await
        .expect("idempotency_lookup")
}

fn existing(id: &TxId, fingerprint: &str) -> Created {
    Created::Existing {
        id: id.clone(),
        fingerprint: fingerprint.into(),
    }
}

/// Sleeps until `t` (by the system clock) has passed, plus a little.
async fn sleep_past(t: SystemTime) {
    let left = t.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(50)).await;
}

#[track_caller]
fn assert_exists<T: Debug>(r: StoreResult<T>) {
    assert!(
        matches!(r, Err(StoreError::Exists(_))),
        "expected Exists, got {r:?}"
    );
}

#[track_caller]
fn assert_invalid<T: Debug>(r: StoreResult<T>) {
    assert!(
        matches!(r, Err(StoreError::Invalid(_))),
        "expected Invalid, got {r:?}"
    );
}

/// A chosen id is the record's; a taken one is refused and changes
/// nothing.
pub async fn create_with_chosen_id(store: &dyn Store) {
    let a = replica("a");
    let body = finalized_blob(store, b"x").await;
    let other = finalized_blob(store, b"other").await;
    let id = TxId("rest-Chosen_id-1".into());
    let tx = sample_tx(&body);
    let before = now_ms();
    assert_eq!(
        create_with(store, tx.clone(), with_id(&id.0)).await,
        Created::New(id.clone())
    );
    let after = now_ms();
    let rec = get(store, &id).await;
    assert_between(rec.created, before, after, "created");
    let expected = TxRecord {
        id: id.clone(),
        tx,
        created: rec.created,
        last_update: rec.created,
        version: 1,
        attempt_count: 0,
        next_attempt: Some(rec.created),
        final_attempt_reason: None,
        lease_owner: None,
        lease_expires: None,
        cancelled: false,
        last_responses: None,
        attempts: vec![],
    };
    assert_eq!(rec, expected);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.waiting, 1);

    // Taken: whatever the second request, nothing changes, and a key
    // that came with it is not recorded.
    for tx in [
        sample_tx(&other),
        leased_tx(&other, &a, LONG_TTL),
        sample_tx(&body),
    ] {
        assert_exists(store.create_with(tx, with_id(&id.0)).await);
    }
    let k = key("with-a-taken-id", "fp", now_ms() + HOUR);
    let r = store
        .create_with(
            sample_tx(&other),
            CreateOptions {
                id: Some(id.clone()),
                idempotency: Some(k.clone()),
                keep_body: false,
            },
        )
        .await;
    assert_exists(r);
    assert_eq!(lookup(store, &k).await, None);
    assert_eq!(get(store, &id).await, rec);
    assert_eq!(store.counts().await.unwrap(), counts);
    assert_eq!(info(store, &other).await.refcount, 0);
    assert_eq!(info(store, &body).await.refcount, 1);

    // An id the store picked is taken as much.
    let picked = create(store, sample_tx(&body)).await;
    assert_exists(
        store
            .create_with(sample_tx(&other), with_id(&picked.0))
            .await,
    );
    // No id: the store picks one.
    let fresh = create_new(store, sample_tx(&body), CreateOptions::default()).await;
    assert!(fresh != id && fresh != picked, "{fresh}");
    assert!(TxId::is_valid(&fresh.0), "{fresh}");
    assert_eq!(get(store, &fresh).await.tx, sample_tx(&body));

    // The rules of create_transaction hold: a lease, for one.
    let leased = TxId("rest-leased".into());
    let r = create_with(store, leased_tx(&body, &a, LONG_TTL), with_id(&leased.0)).await;
    assert_eq!(r, Created::New(leased.clone()));
    let rec = get(store, &leased).await;
    assert_eq!((rec.attempt_count, rec.lease_owner), (1, Some(a.clone())));

    // Ids outside the alphabet, or too long, are refused.
    let too_long = "x".repeat(TxId::MAX_LEN + 1);
    for bad in ["", "has space", "a/b", "a:b", "ümlaut", "a\0b", &too_long] {
        assert_invalid(store.create_with(sample_tx(&body), with_id(bad)).await);
    }
    let longest = "y".repeat(TxId::MAX_LEN);
    let r = create_with(store, sample_tx(&body), with_id(&longest)).await;
    assert_eq!(r, Created::New(TxId(longest)));
    assert_eq!(info(store, &body).await.refcount, 5);
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.waiting, counts.inflight), (4, 1), "{counts:?}");
}

/// A key in use answers with the first transaction and creates nothing;
/// another key creates.
pub async fn idempotent_create(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let other = finalized_blob(store, b"other").await;
    let first = key("k1", "fp-1", now_ms() + HOUR);
    let id = create_new(store, sample_tx(&body), with_key(first.clone())).await;
    assert_eq!(
        lookup(store, &first).await,
        Some((id.clone(), "fp-1".into()))
    );
    let rec = get(store, &id).await;
    let counts = store.counts().await.unwrap();

    // A retry (same fingerprint) or another request reusing the key
    // (another body, a lease, a chosen id, even a taken one): nothing is
    // created, checked or changed, and the first fingerprint stands.
    let a = replica("a");
    let unused = TxId("rest-unused".into());
    for (fp, tx, chosen) in [
        ("fp-1", sample_tx(&body), None),
        ("fp-2", sample_tx(&other), None),
        (
            "fp-3",
            leased_tx(&other, &a, LONG_TTL),
            Some(unused.clone()),
        ),
        ("fp-4", sample_tx(&other), Some(id.clone())),
        ("fp-5", sample_tx(&BlobId("no-such-blob".into())), None),
    ] {
        let opts = CreateOptions {
            id: chosen,
            idempotency: Some(key("k1", fp, now_ms() + 2 * HOUR)),
            keep_body: false,
        };
        assert_eq!(
            create_with(store, tx, opts).await,
            existing(&id, "fp-1"),
            "{fp}"
        );
    }
    assert_not_found(store.get_transaction(&unused).await);
    assert_eq!(store.counts().await.unwrap(), counts);
    assert_eq!(info(store, &other).await.refcount, 0);
    assert_eq!(info(store, &body).await.refcount, 1);
    assert_eq!(get(store, &id).await, rec);
    assert_eq!(
        lookup(store, &first).await,
        Some((id.clone(), "fp-1".into()))
    );

    // Other keys create: keys are compared whole, byte for byte.
    let mut seen = HashSet::from([id.clone()]);
    for name in [
        "rest-client\0k2",
        "rest-client\0k",
        "rest-client\0k1 ",
        "rest-client\0K1",
        "other-client\0k1",
        "rest-client",
    ] {
        let k = IdempotencyKey {
            key: name.into(),
            ..first.clone()
        };
        assert_eq!(lookup(store, &k).await, None, "{name:?}");
        let new = create_new(store, sample_tx(&body), with_key(k.clone())).await;
        assert!(seen.insert(new.clone()), "{name:?}: {new} again");
        assert_eq!(
            lookup(store, &k).await,
            Some((new, "fp-1".into())),
            "{name:?}"
        );
    }
    assert_eq!(store.counts().await.unwrap().waiting, 7);

    // The key outlives its transaction's delivery (until it expires, or
    // gc deletes the transaction).
    assert_eq!(store.cancel(&id).await.unwrap(), CancelOutcome::Cancelled);
    let again = create_with(store, sample_tx(&body), with_key(first.clone())).await;
    assert_eq!(again, existing(&id, "fp-1"));

    // Keys of 1 to 255 characters (not bytes).
    let longest = IdempotencyKey {
        key: "é".repeat(255),
        ..first.clone()
    };
    create_new(store, sample_tx(&body), with_key(longest.clone())).await;
    assert!(lookup(store, &longest).await.is_some());
    for bad in [String::new(), "é".repeat(256)] {
        let k = IdempotencyKey {
            key: bad,
            ..first.clone()
        };
        assert_invalid(store.idempotency_lookup(&k.key).await);
        assert_invalid(store.create_with(sample_tx(&body), with_key(k)).await);
    }
    assert_eq!(store.counts().await.unwrap().waiting, 7);
}

/// An expired key is absent: a create makes a new transaction, which the
/// key then points to.
pub async fn expired_idempotency_key(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let expires = now_ms() + SHORT_LIFE;
    let k = key("k", "fp-1", expires);
    let first = create_new(store, sample_tx(&body), with_key(k.clone())).await;
    assert_eq!(
        lookup(store, &k).await,
        Some((first.clone(), "fp-1".into()))
    );

    // Given expired already: not kept, every use creates.
    let stale = key("stale", "fp", now_ms() - MS);
    let s1 = create_new(store, sample_tx(&body), with_key(stale.clone())).await;
    let s2 = create_new(store, sample_tx(&body), with_key(stale.clone())).await;
    assert_ne!(s1, s2);
    assert_eq!(lookup(store, &stale).await, None);

    sleep_past(expires).await;
    assert_eq!(lookup(store, &k).await, None);
    let renewed = key("k", "fp-2", now_ms() + HOUR);
    let second = create_new(store, sample_tx(&body), with_key(renewed.clone())).await;
    assert_ne!(second, first);
    assert_eq!(
        lookup(store, &k).await,
        Some((second.clone(), "fp-2".into()))
    );
    let again = create_with(
        store,
        sample_tx(&body),
        with_key(key("k", "fp-3", now_ms() + HOUR)),
    );
    assert_eq!(again.await, existing(&second, "fp-2"));
    // The first transaction is untouched by it all.
    let rec = get(store, &first).await;
    assert_eq!((rec.version, rec.state(now_ms())), (1, TxState::Waiting));
    assert_eq!(store.counts().await.unwrap().waiting, 4);
}

/// gc deletes a key with its transaction and expired keys; it leaves a
/// live key of an open transaction, and a key reused after it expired.
pub async fn gc_removes_idempotency_keys(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let far = now_ms() + 24 * HOUR;
    let soon = now_ms() + SHORT_LIFE;
    let done_key = key("done", "fp", far);
    let live_key = key("live", "fp", far);
    let short_key = key("short", "fp", soon);
    let reused_key = key("reused", "fp-1", soon);
    let done = create_new(store, sample_tx(&body), with_key(done_key.clone())).await;
    let live = create_new(store, sample_tx(&body), with_key(live_key.clone())).await;
    let short = create_new(store, sample_tx(&body), with_key(short_key.clone())).await;
    let reused_first = create_new(store, sample_tx(&body), with_key(reused_key.clone())).await;
    for id in [&done, &reused_first] {
        assert_eq!(store.cancel(id).await.unwrap(), CancelOutcome::Cancelled);
    }
    sleep_past(soon).await;
    let reused_key = key("reused", "fp-2", far);
    let reused = create_new(store, sample_tx(&body), with_key(reused_key.clone())).await;

    assert_eq!(store.gc(now_ms() + HOUR).await.unwrap(), 2);
    assert_not_found(store.get_transaction(&done).await);
    assert_eq!(
        lookup(store, &done_key).await,
        None,
        "went with its transaction"
    );
    assert_eq!(
        lookup(store, &live_key).await,
        Some((live.clone(), "fp".into()))
    );
    assert_eq!(lookup(store, &short_key).await, None);
    // gc deletes the expired key, not its open transaction.
    assert_eq!(get(store, &short).await.version, 1);
    // Its old transaction gone, the reused key points to the new one.
    assert_eq!(
        lookup(store, &reused_key).await,
        Some((reused.clone(), "fp-2".into()))
    );
    assert_eq!(
        create_with(store, sample_tx(&body), with_key(reused_key)).await,
        existing(&reused, "fp-2")
    );
    // The keys gc deleted are free.
    for k in [done_key, short_key] {
        let k = IdempotencyKey { expires: far, ..k };
        let new = create_new(store, sample_tx(&body), with_key(k.clone())).await;
        assert!(new != done && new != short, "{new}");
        assert_eq!(lookup(store, &k).await, Some((new, "fp".into())));
    }
}

/// Many tasks create with one key at once: exactly one creates, the
/// others get its transaction. And with one chosen id: one creates, the
/// others find it taken.
pub async fn concurrent_idempotent_creates(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let body = finalized_blob(&*store, b"x").await;
    let expires = now_ms() + HOUR;
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let (store, start, body) = (store.clone(), start.clone(), body.clone());
            tokio::spawn(async move {
                let k = key("raced", &format!("fp-{i}"), expires);
                start.wait().await;
                store.create_with(sample_tx(&body), with_key(k)).await
            })
        })
        .collect();
    let results: Vec<Created> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("racer panicked").expect("create_with"))
        .collect();
    let new: Vec<(usize, TxId)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Created::New(id) => Some((i, id.clone())),
            Created::Existing { .. } => None,
        })
        .collect();
    let [(winner, id)] = &new[..] else {
        panic!("expected exactly one new transaction: {results:?}");
    };
    let fingerprint = format!("fp-{winner}");
    for (i, r) in results.iter().enumerate() {
        if i != *winner {
            assert_eq!(r, &existing(id, &fingerprint), "racer {i}");
        }
    }
    let k = key("raced", "", expires);
    assert_eq!(lookup(&*store, &k).await, Some((id.clone(), fingerprint)));
    assert_eq!(store.counts().await.unwrap().waiting, 1);
    assert_eq!(info(&*store, &body).await.refcount, 1);

    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, start, body) = (store.clone(), start.clone(), body.clone());
            tokio::spawn(async move {
                start.wait().await;
                store
                    .create_with(sample_tx(&body), with_id("rest-raced"))
                    .await
            })
        })
        .collect();
    let results: Vec<StoreResult<Created>> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("racer panicked"))
        .collect();
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 1, "{results:?}");
    for r in results {
        match r {
            Ok(c) => assert_eq!(c, Created::New(TxId("rest-raced".into()))),
            r => assert_exists(r),
        }
    }
    assert_eq!(store.counts().await.unwrap().waiting, 2);
    assert_eq!(info(&*store, &body).await.refcount, 2);
}

/// A create that fails records neither its key nor its id: the same
/// request succeeds once its body is complete.
pub async fn failed_create_records_no_key(store: &dyn Store) {
    let partial = store.create_blob().await.unwrap();
    store
        .append_blob(&partial, 0, Bytes::from_static(b"partial"), false)
        .await
        .unwrap();
    let k = key("k", "fp", now_ms() + HOUR);
    let id = TxId("rest-failed".into());
    let opts = CreateOptions {
        id: Some(id.clone()),
        idempotency: Some(k.clone()),
        keep_body: false,
    };
    let r = store.create_with(sample_tx(&partial), opts.clone()).await;
    assert_blob_conflict(r, &partial);
    assert_eq!(lookup(store, &k).await, None);
    assert_not_found(store.get_transaction(&id).await);
    assert_eq!(info(store, &partial).await.refcount, 0);
    let missing = BlobId("no-such-blob".into());
    assert_not_found(store.create_with(sample_tx(&missing), opts.clone()).await);
    assert_eq!(lookup(store, &k).await, None);
    assert_eq!(
        store.counts().await.unwrap(),
        QueueCounts {
            blobs: 1,
            ..QueueCounts::default()
        }
    );

    store
        .append_blob(&partial, 7, Bytes::from_static(b" now complete"), true)
        .await
        .unwrap();
    let r = create_with(store, sample_tx(&partial), opts).await;
    assert_eq!(r, Created::New(id.clone()));
    assert_eq!(lookup(store, &k).await, Some((id.clone(), "fp".into())));
    assert_eq!(get(store, &id).await.tx, sample_tx(&partial));
}

// ------------------------------------------------------ replica registry

pub async fn replica_registry(store: &dyn Store) {
    let (a, b, c, d) = (replica("a"), replica("b"), replica("c"), replica("d"));
    let uri = async |r: &ReplicaId| store.replica_uri(r).await.expect("replica_uri");
    assert_eq!(uri(&a).await, None);
    store
        .register_replica(&a, "https://a.example:8443/", HOUR)
        .await
        .unwrap();
    store
        .register_replica(&b, "https://b.example/", HOUR)
        .await
        .unwrap();
    assert_eq!(uri(&a).await.as_deref(), Some("https://a.example:8443/"));
    assert_eq!(uri(&b).await.as_deref(), Some("https://b.example/"));
    // Registering again replaces the URI.
    store
        .register_replica(&a, "https://a2.example/", HOUR)
        .await
        .unwrap();
    assert_eq!(uri(&a).await.as_deref(), Some("https://a2.example/"));
    assert_eq!(uri(&b).await.as_deref(), Some("https://b.example/"));

    // Expiry, and a refresh that keeps one registered.
    store
        .register_replica(&c, "https://c.example/", SHORT_LIFE)
        .await
        .unwrap();
    store
        .register_replica(&d, "https://d.example/", SHORT_LIFE)
        .await
        .unwrap();
    let registered = Instant::now();
    assert_eq!(uri(&c).await.as_deref(), Some("https://c.example/"));
    assert_eq!(uri(&d).await.as_deref(), Some("https://d.example/"));
    tokio::time::sleep(SHORT_LIFE / 2).await;
    store
        .register_replica(&d, "https://d.example/", HOUR)
        .await
        .unwrap();
    tokio::time::sleep_until((registered + SHORT_LIFE + Duration::from_millis(50)).into()).await;
    assert_eq!(uri(&c).await, None, "expired");
    assert_eq!(uri(&d).await.as_deref(), Some("https://d.example/"));

    // gc leaves live registrations alone; an expired one may come back.
    store.gc(now_ms() + HOUR).await.unwrap();
    assert_eq!(uri(&a).await.as_deref(), Some("https://a2.example/"));
    assert_eq!(uri(&d).await.as_deref(), Some("https://d.example/"));
    store
        .register_replica(&c, "https://c2.example/", HOUR)
        .await
        .unwrap();
    assert_eq!(uri(&c).await.as_deref(), Some("https://c2.example/"));
    assert_eq!(uri(&replica("never")).await, None);
}

// ------------------------------------------------------------ waiting

/// How long the suite gives a waiter to be parked before it writes.
const PARK: Duration = Duration::from_millis(150);
/// A wait the suite expects to be woken gets this deadline; being woken
/// means returning well before it.
const LONG_WAIT: Duration = Duration::from_secs(30);
/// Within this of the write returning (or of being called, for one that
/// has nothing to wait for) a wait must have returned: far below
/// `LONG_WAIT`, far above a notification's latency, with room for a
/// loaded machine (whose fsyncs may take seconds: they are not counted).
const WAKE_WITHIN: Duration = Duration::from_secs(3);
/// How far past its deadline a timed-out wait may return, on a loaded
/// machine, and still count as returning at the deadline.
const DEADLINE_SLACK: Duration = Duration::from_millis(1500);

/// `fut`, and when it finished.
async fn stamped<T>(fut: impl Future<Output = T>) -> (T, Instant) {
    let out = fut.await;
    (out, Instant::now())
}

/// Waits on `id` for a version above the current one while `write` runs
/// once the wait is parked; asserts the wait was woken (promptly, with a
/// newer record, the one stored) and returns that record.
async fn woken_by(
    store: &dyn Store,
    id: &TxId,
    what: &str,
    write: impl Future<Output = ()>,
) -> TxRecord {
    let after = get(store, id).await.version;
    let start = Instant::now();
    let ((got, returned), ((), written)) = futures::join!(
        stamped(store.wait_version(id, after, start + LONG_WAIT)),
        stamped(async {
            tokio::time::sleep(PARK).await;
            write.await;
        })
    );
    let rec = got
        .unwrap_or_else(|e| panic!("{what}: wait failed: {e}"))
        .unwrap_or_else(|| panic!("{what}: the wait timed out: the write woke nobody"));
    let late = returned.saturating_duration_since(written);
    assert!(late < WAKE_WITHIN, "{what}: woken {late:?} after the write");
    assert!(
        rec.version > after,
        "{what}: version {} after {after}",
        rec.version
    );
    assert_eq!(rec, get(store, id).await, "{what}: the record as stored");
    rec
}

/// A record already past `after` comes back at once, whatever the
/// deadline; a deadline already past gives `None` at once.
pub async fn wait_returns_at_once(store: &dyn Store) {
    let body = finalized_blob(store, b"x").await;
    let id = create(store, sample_tx(&body)).await;
    let start = Instant::now();
    let got = store.wait_version(&id, 0, start + LONG_WAIT).await.unwrap();
    assert_eq!(got, Some(get(store, &id).await));
    assert!(start.elapsed() < WAKE_WITHIN, "{:?}", start.elapsed());

    let got = store.wait_version(&id, 1, Instant::now()).await.unwrap();
    assert_eq!(got, None, "a deadline already past, no change");
    assert!(start.elapsed() < WAKE_WITHIN, "{:?}", start.elapsed());

    let claimed = claim(store, &replica("a"), now_ms(), 1).await;
    let start = Instant::now();
    let got = store.wait_version(&id, 1, start + LONG_WAIT).await.unwrap();
    assert_eq!(got.as_ref(), claimed.first(), "the claimed record");
    // A deadline already past still gives a changed record.
    let got = store.wait_version(&id, 1, Instant::now()).await.unwrap();
    assert_eq!(got.as_ref(), claimed.first());
    assert!(start.elapsed() < WAKE_WITHIN, "{:?}", start.elapsed());
}

/// Every write that bumps the version wakes a parked waiter.
pub async fn wait_woken_by_every_write(store: &dyn Store) {
    let (a, b) = (replica("a"), replica("b"));
    let body = finalized_blob(store, b"x").await;
    let id = create(store, sample_tx(&body)).await;
    let rec = woken_by(store, &id, "claim", async {
        assert_eq!(claim(store, &a, now_ms(), 1).await.len(), 1);
    })
    .await;
    assert_eq!(rec.lease_owner, Some(a.clone()));
    woken_by(store, &id, "renew", async {
        store.renew_lease(&id, &a, 2 * LONG_TTL).await.unwrap();
    })
    .await;
    let rec = woken_by(store, &id, "finish with a retry", async {
        store
            .finish_attempt(&id, &a, retry_at(now_ms(), "again"))
            .await
            .unwrap();
    })
    .await;
    assert_eq!(rec.lease_owner, None);
    woken_by(store, &id, "second claim", async {
        assert_eq!(claim(store, &b, now_ms(), 1).await.len(), 1);
    })
    .await;
    let rec = woken_by(store, &id, "cancel of a leased one", async {
        assert_eq!(store.cancel(&id).await.unwrap(), CancelOutcome::Requested);
    })
    .await;
    assert!(rec.cancelled && rec.final_attempt_reason.is_none());
    let rec = woken_by(store, &id, "finish after a cancel", async {
        store
            .finish_attempt(&id, &b, retry_at(now_ms() + HOUR, "cut short"))
            .await
            .unwrap();
    })
    .await;
    assert_eq!(rec.final_attempt_reason, Some(CANCELLED));

    let body = finalized_blob(store, b"x").await;
    let waiting = create(store, sample_tx(&body)).await;
    let rec = woken_by(store, &waiting, "cancel of a waiting one", async {
        assert_eq!(
            store.cancel(&waiting).await.unwrap(),
            CancelOutcome::Cancelled
        );
    })
    .await;
    assert_eq!(rec.final_attempt_reason, Some(CANCELLED));

    let body = finalized_blob(store, b"x").await;
    let abandoned = create(store, leased_tx(&body, &a, SHORT_TTL)).await;
    assert_eq!(
        store.cancel(&abandoned).await.unwrap(),
        CancelOutcome::Requested
    );
    let expires = get(store, &abandoned).await.lease_expires.unwrap();
    let rec = woken_by(
        store,
        &abandoned,
        "claim finalizing a cancelled one",
        async {
            assert_eq!(claim(store, &b, expires, 10).await, vec![]);
        },
    )
    .await;
    assert_eq!(rec.final_attempt_reason, Some(CANCELLED));

    let body = finalized_blob(store, b"x").await;
    let done = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let rec = woken_by(store, &done, "final finish", async {
        store
            .finish_attempt(&done, &a, final_outcome(DELIVERED))
            .await
            .unwrap();
    })
    .await;
    assert_eq!(rec.final_attempt_reason, Some(DELIVERED));
}

/// A record nothing changes: `None` at the deadline, not before and not
/// much later, through writes that change nothing of it.
pub async fn wait_times_out(store: &dyn Store) {
    const WAIT: Duration = Duration::from_millis(400);
    let a = replica("a");
    let body = finalized_blob(store, b"x").await;
    let id = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    assert_eq!(store.cancel(&id).await.unwrap(), CancelOutcome::Requested);
    let other = create(store, sample_tx(&body)).await;
    let blob = store.create_blob().await.unwrap();
    let before = get(store, &id).await;

    let start = Instant::now();
    let deadline = start + WAIT;
    let ((got, returned), ()) = futures::join!(
        stamped(store.wait_version(&id, before.version, deadline)),
        async {
            tokio::time::sleep(PARK).await;
            // Asked again: changes nothing.
            assert_eq!(store.cancel(&id).await.unwrap(), CancelOutcome::Requested);
            store
                .append_blob(&blob, 0, Bytes::from_static(b"unrelated"), true)
                .await
                .unwrap();
            // Another transaction's write.
            assert_eq!(
                ids(&claim(store, &a, now_ms(), 10).await),
                vec![other.clone()]
            );
        }
    );
    assert_eq!(got.unwrap(), None);
    assert!(
        returned >= deadline,
        "returned {:?} before its deadline",
        deadline - returned
    );
    assert!(
        returned - start < WAIT + DEADLINE_SLACK,
        "returned {:?} after its deadline",
        returned - deadline
    );
    assert_eq!(get(store, &id).await, before, "nothing changed it");
}

/// Unknown id: `NotFound` at once, not at the deadline.
pub async fn wait_unknown_id(store: &dyn Store) {
    let start = Instant::now();
    let r = store
        .wait_version(&TxId("no-such-tx".into()), 0, start + LONG_WAIT)
        .await;
    assert_not_found(r);
    assert!(start.elapsed() < WAKE_WITHIN, "{:?}", start.elapsed());
}

/// gc deleting the transaction ends its wait with `NotFound`.
pub async fn wait_ends_when_gc_deletes(store: &dyn Store) {
    let a = replica("a");
    let body = finalized_blob(store, b"x").await;
    let id = create(store, leased_tx(&body, &a, LONG_TTL)).await;
    let rec = store
        .finish_attempt(&id, &a, final_outcome(DELIVERED))
        .await
        .unwrap();
    let start = Instant::now();
    let ((got, returned), ((), deleted)) = futures::join!(
        stamped(store.wait_version(&id, rec.version, start + LONG_WAIT)),
        stamped(async {
            tokio::time::sleep(PARK).await;
            assert_eq!(store.gc(now_ms() + HOUR).await.unwrap(), 1);
        })
    );
    assert_not_found(got);
    let late = returned.saturating_duration_since(deleted);
    assert!(late < WAKE_WITHIN, "{late:?} after gc");
}

/// Waits started together with a write (no pause between): each returns
/// the new record, none misses the write and sits out its deadline.
pub async fn wait_never_misses_a_racing_write(store: &dyn Store) {
    for round in 0..20 {
        // A body each: the cancel collects it.
        let body = finalized_blob(store, b"x").await;
        let id = create(store, sample_tx(&body)).await;
        let start = Instant::now();
        let ((got, returned), (cancelled, written)) = futures::join!(
            stamped(store.wait_version(&id, 1, start + LONG_WAIT)),
            stamped(store.cancel(&id))
        );
        assert_eq!(cancelled.unwrap(), CancelOutcome::Cancelled);
        let rec = got
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: missed"));
        assert_eq!(rec.final_attempt_reason, Some(CANCELLED), "round {round}");
        let late = returned.saturating_duration_since(written);
        assert!(
            late < WAKE_WITHIN,
            "round {round}: {late:?} after the write"
        );
    }
}

/// Many waiters at once, in tasks of their own, on three transactions: a
/// write wakes the waiters of its transaction and no other; those of the
/// transaction nobody writes time out together.
pub async fn many_concurrent_waiters(store: Arc<dyn Store>) {
    const PER_TX: usize = 25;
    const WAIT: Duration = Duration::from_secs(2);
    let body = finalized_blob(&*store, b"x").await;
    let mut txs = Vec::new();
    for _ in 0..3 {
        txs.push(create(&*store, sample_tx(&body)).await);
    }
    let start = Instant::now();
    let deadline = start + WAIT;
    let waiters: Vec<_> = (0..3 * PER_TX)
        .map(|i| {
            let (store, id) = (store.clone(), txs[i % 3].clone());
            // Those of the two written transactions wait long: a slow
            // write must not make them time out.
            let deadline = if i % 3 == 2 {
                deadline
            } else {
                start + LONG_WAIT
            };
            tokio::spawn(async move {
                let got = store.wait_version(&id, 1, deadline).await;
                (i % 3, got, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(PARK).await;
    let mut writes = Vec::new();
    for tx in &txs[..2] {
        let before = Instant::now();
        store.cancel(tx).await.unwrap();
        writes.push((before, Instant::now()));
        tokio::time::sleep(PARK).await;
    }
    let mut woken = [0; 3];
    for waiter in waiters {
        let (tx, got, at) = waiter.await.expect("waiter panicked");
        let got = got.expect("wait failed");
        match tx {
            0 | 1 => {
                let rec = got.unwrap_or_else(|| panic!("a waiter of tx {tx} timed out"));
                assert_eq!(rec.id, txs[tx]);
                assert_eq!(rec.final_attempt_reason, Some(CANCELLED));
                let (writing, written) = writes[tx];
                assert!(at >= writing, "tx {tx}: returned before the write");
                let late = at.saturating_duration_since(written);
                assert!(
                    late < WAKE_WITHIN,
                    "tx {tx}: woken {late:?} after the write"
                );
                woken[tx] += 1;
            }
            _ => {
                assert_eq!(got, None, "tx 2 was not written");
                assert!(at >= deadline, "tx 2: returned before its deadline");
                assert!(
                    at - start < WAIT + DEADLINE_SLACK,
                    "tx 2: {:?} late",
                    at - deadline
                );
            }
        }
    }
    assert_eq!(woken, [PER_TX, PER_TX, 0]);
}

// ------------------------------------------------------------ concurrency

/// Eight replicas race to claim 200 due transactions: every transaction is
/// handed out exactly once, to the replica the store says holds it.
pub async fn concurrent_claims(store: Arc<dyn Store>) {
    const TXS: usize = 200;
    const CLAIMERS: usize = 8;
    let body = finalized_blob(&*store, b"x").await;
    let created = join_all((0..TXS).map(|_| store.create_transaction(sample_tx(&body)))).await;
    let created: HashSet<TxId> = created.into_iter().map(|t| t.unwrap()).collect();
    assert_eq!(created.len(), TXS);

    let now = now_ms();
    let start = Arc::new(tokio::sync::Barrier::new(CLAIMERS));
    let tasks: Vec<_> = (0..CLAIMERS)
        .map(|i| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                let owner = replica(&format!("replica-{i}"));
                let mut got = Vec::new();
                start.wait().await;
                loop {
                    let batch = store
                        .claim_due(&owner, now, LONG_TTL, 7)
                        .await
                        .expect("claim_due");
                    if batch.is_empty() {
                        break;
                    }
                    for rec in batch {
                        assert_eq!(rec.lease_owner.as_ref(), Some(&owner));
                        got.push(rec.id);
                    }
                }
                (owner, got)
            })
        })
        .collect();

    let mut holder: HashMap<TxId, ReplicaId> = HashMap::new();
    for task in tasks {
        let (owner, got) = task.await.expect("claimer panicked");
        for id in got {
            if let Some(first) = holder.insert(id.clone(), owner.clone()) {
                panic!("{id} claimed by both {} and {}", first.0, owner.0);
            }
        }
    }
    assert_eq!(holder.len(), TXS);
    assert_eq!(holder.keys().cloned().collect::<HashSet<_>>(), created);
    for (id, owner) in &holder {
        let rec = get(&*store, id).await;
        assert_eq!(rec.lease_owner.as_ref(), Some(owner), "{id}");
        assert_eq!(rec.attempt_count, 1, "{id}");
    }
    assert_eq!(claim(&*store, &replica("late"), now, 10).await, vec![]);
}

// ----------------------------------------------------------------- runner

/// Runs every test, each on a fresh store from `make`. Call it from a
/// multi-threaded tokio runtime.
pub async fn run_all<F>(make: F)
where
    F: Fn() -> BoxFuture<'static, Arc<dyn Store>>,
{
    macro_rules! run {
        ($($test:ident),* $(,)?) => {$(
            eprintln!("store suite: {}", stringify!($test));
            let store = make().await;
            $test(&*store).await;
        )*};
    }
    run!(
        blob_append_read_finalize,
        blob_put,
        kept_body_outlives_the_final_transaction,
        blob_append_conflicts,
        blob_chunked_reads,
        create_requires_finalized_body,
        create_many_all_or_nothing,
        prior_attempt_recorded,
        settle_without_attempt,
        transaction_round_trip,
        leased_creation,
        claim_due_leases,
        claim_respects_next_attempt,
        final_never_claimed,
        lease_takeover,
        renew_lease,
        finish_wrong_owner,
        finish_retry,
        finish_final,
        every_final_reason_is_kept,
        cancel,
        versions_increase,
        counts_by_state,
        refcounts_and_gc,
        gc_only_old_final,
        body_collected_when_last_open_is_final,
        body_collected_on_cancel_paths,
        delete_unreferenced_blob,
        fresh_store_admits,
        ids_unique,
        wait_returns_at_once,
        wait_woken_by_every_write,
        wait_times_out,
        wait_unknown_id,
        wait_ends_when_gc_deletes,
        wait_never_misses_a_racing_write,
        create_with_chosen_id,
        idempotent_create,
        expired_idempotency_key,
        gc_removes_idempotency_keys,
        failed_create_records_no_key,
        replica_registry,
    );
    eprintln!("store suite: concurrent_claims");
    concurrent_claims(make().await).await;
    eprintln!("store suite: concurrent_idempotent_creates");
    concurrent_idempotent_creates(make().await).await;
    eprintln!("store suite: many_concurrent_waiters");
    many_concurrent_waiters(make().await).await;
}
