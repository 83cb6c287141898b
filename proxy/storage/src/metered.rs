//! Latency of store operations, as a Prometheus histogram.
//!
//! [`Metered`] wraps any [`Store`] and times every call it passes on:
//! `store_operation_duration_seconds{op, result}`, `op` the method's name,
//! `result` `ok` or `error` (any [`StoreError`](crate::StoreError), a lost
//! lease or an unknown id as much as an outage: the latency is what it is;
//! the reason is in the logs of whoever got it).
//!
//! [`Store::wait_version`] is passed on untimed: a hanging wait lasts as
//! long as the transaction stays unchanged, up to the caller's deadline,
//! which says nothing about the store and would swamp the buckets of the
//! operations that do.
//!
//! A call whose caller drops the future before it finishes is not
//! recorded: how long it would have taken is unknown, and a write may
//! still complete without it (see the backends).
//!
//! Wiring (in the proxy): wrap the store once, where it is opened, and
//! register the wrapper with the process's registry:
//!
//! ```ignore
//! let metered = Arc::new(Metered::new(store));
//! metered.register(&mut registry);
//! let store: Arc<dyn Store> = metered;
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::{
    AttemptOutcome, BlobId, BlobInfo, CancelOutcome, CreateOptions, Created, NewTransaction,
    QueueCounts, ReplicaId, Store, StoreResult, TxId, TxRecord,
};

/// Bucket bounds in seconds, 100 µs to 10 s in 1-2.5-5 steps: a read
/// from SQLite's cache takes well under a millisecond, an fsynced commit a
/// few, a Redis round trip about one, and an operation bounded by a
/// timeout (Redis's default is 5 s) must still land in a bucket of its
/// own rather than only in `+Inf`.
pub const BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
    result: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// A [`Store`] that passes every call to `inner` and records how long it
/// took (see the module docs).
pub struct Metered {
    inner: Arc<dyn Store>,
    durations: Family<OpLabels, Histogram, fn() -> Histogram>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Metered {
            inner,
            durations: Family::new_with_constructor(histogram),
        }
    }

    /// The store it wraps.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// Registers the histogram as `store_operation_duration_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "store_operation_duration",
            "Latency of storage operations, by operation and result (ok or error)",
            Unit::Seconds,
            self.durations.clone(),
        );
    }

    /// Runs `call`, then records its duration under `op`.
    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let started = Instant::now();
        let result = call.await;
        self.record(op, result.is_ok(), started.elapsed());
        result
    }

    fn record(&self, op: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.durations
            .get_or_create(&OpLabels { op, result })
            .observe(took.as_secs_f64());
    }
}

impl Store for Metered {
    fn admit(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.timed("admit", self.inner.admit()))
    }

    fn create_blob(&self) -> BoxFuture<'_, StoreResult<BlobId>> {
        Box::pin(self.timed("create_blob", self.inner.create_blob()))
    }

    fn put_blob(&self, data: Bytes) -> BoxFuture<'_, StoreResult<BlobId>> {
        Box::pin(self.timed("put_blob", self.inner.put_blob(data)))
    }

    fn append_blob<'a>(
        &'a self,
        blob: &'a BlobId,
        offset: u64,
        data: Bytes,
        last: bool,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(self.timed(
            "append_blob",
            self.inner.append_blob(blob, offset, data, last),
        ))
    }

    fn read_blob<'a>(
        &'a self,
        blob: &'a BlobId,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'a, StoreResult<Bytes>> {
        Box::pin(self.timed("read_blob", self.inner.read_blob(blob, offset, max)))
    }

    fn blob_info<'a>(&'a self, blob: &'a BlobId) -> BoxFuture<'a, StoreResult<BlobInfo>> {
        Box::pin(self.timed("blob_info", self.inner.blob_info(blob)))
    }

    fn delete_blob<'a>(&'a self, blob: &'a BlobId) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.timed("delete_blob", self.inner.delete_blob(blob)))
    }

    fn create_transaction(&self, tx: NewTransaction) -> BoxFuture<'_, StoreResult<TxId>> {
        Box::pin(self.timed("create_transaction", self.inner.create_transaction(tx)))
    }

    fn create_transactions(
        &self,
        txs: Vec<NewTransaction>,
    ) -> BoxFuture<'_, StoreResult<Vec<TxId>>> {
        // The inner store's own, atomic version, not the trait's default.
        Box::pin(self.timed("create_transactions", self.inner.create_transactions(txs)))
    }

    fn create_with(
        &self,
        tx: NewTransaction,
        opts: CreateOptions,
    ) -> BoxFuture<'_, StoreResult<Created>> {
        Box::pin(self.timed("create_with", self.inner.create_with(tx, opts)))
    }

    fn idempotency_lookup<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<(TxId, String)>>> {
        Box::pin(self.timed("idempotency_lookup", self.inner.idempotency_lookup(key)))
    }

    fn get_transaction<'a>(&'a self, id: &'a TxId) -> BoxFuture<'a, StoreResult<TxRecord>> {
        Box::pin(self.timed("get_transaction", self.inner.get_transaction(id)))
    }

    fn wait_version<'a>(
        &'a self,
        id: &'a TxId,
        after: u64,
        deadline: std::time::Instant,
    ) -> BoxFuture<'a, StoreResult<Option<TxRecord>>> {
        // Untimed: see the module docs.
        self.inner.wait_version(id, after, deadline)
    }

    fn claim_due<'a>(
        &'a self,
        owner: &'a ReplicaId,
        now: SystemTime,
        ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<TxRecord>>> {
        Box::pin(self.timed("claim_due", self.inner.claim_due(owner, now, ttl, limit)))
    }

    fn renew_lease<'a>(
        &'a self,
        id: &'a TxId,
        owner: &'a ReplicaId,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.timed("renew_lease", self.inner.renew_lease(id, owner, ttl)))
    }

    fn finish_attempt<'a>(
        &'a self,
        id: &'a TxId,
        owner: &'a ReplicaId,
        outcome: AttemptOutcome,
    ) -> BoxFuture<'a, StoreResult<TxRecord>> {
        Box::pin(self.timed(
            "finish_attempt",
            self.inner.finish_attempt(id, owner, outcome),
        ))
    }

    fn cancel<'a>(&'a self, id: &'a TxId) -> BoxFuture<'a, StoreResult<CancelOutcome>> {
        Box::pin(self.timed("cancel", self.inner.cancel(id)))
    }

    fn gc(&self, older_than: SystemTime) -> BoxFuture<'_, StoreResult<usize>> {
        Box::pin(self.timed("gc", self.inner.gc(older_than)))
    }

    fn counts(&self) -> BoxFuture<'_, StoreResult<QueueCounts>> {
        Box::pin(self.timed("counts", self.inner.counts()))
    }

    fn register_replica<'a>(
        &'a self,
        replica: &'a ReplicaId,
        uri: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.timed(
            "register_replica",
            self.inner.register_replica(replica, uri, ttl),
        ))
    }

    fn replica_uri<'a>(
        &'a self,
        replica: &'a ReplicaId,
    ) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(self.timed("replica_uri", self.inner.replica_uri(replica)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::embedded::{EmbeddedOptions, EmbeddedStore};

    fn embedded(dir: &tempfile::TempDir, name: &str) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(&dir.path().join(name), EmbeddedOptions::default()).unwrap())
    }

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    /// `(op, result)` → the histogram's `_count`, from the text exposition.
    fn counts(text: &str) -> HashMap<(String, String), u64> {
        let mut counts = HashMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("store_operation_duration_seconds_count{") else {
                continue;
            };
            let (labels, value) = rest.split_once("} ").unwrap();
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("no {name} in {line}"))
                    .to_owned()
            };
            counts.insert((label("op"), label("result")), value.parse().unwrap());
        }
        counts
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_call_is_counted_by_operation_and_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = Metered::new(embedded(&dir, "m.db"));
        let mut registry = Registry::default();
        store.register(&mut registry);

        let blob = store.create_blob().await.unwrap();
        store.create_blob().await.unwrap();
        store
            .append_blob(&blob, 0, Bytes::from_static(b"x"), true)
            .await
            .unwrap();
        // At the wrong offset, and of a finalized blob: errors.
        assert!(
            store
                .append_blob(&blob, 7, Bytes::from_static(b"y"), true)
                .await
                .is_err()
        );
        let unknown = TxId("no-such-tx".into());
        for _ in 0..3 {
            assert!(store.get_transaction(&unknown).await.is_err());
        }
        store.counts().await.unwrap();
        // The REST API's calls, timed like the rest.
        let opts = CreateOptions {
            id: Some(TxId("chosen".into())),
            keep_body: false,
            idempotency: Some(crate::IdempotencyKey {
                key: "k".into(),
                fingerprint: "fp".into(),
                expires: SystemTime::now() + Duration::from_secs(60),
            }),
        };
        let tx = NewTransaction {
            sender: "s".into(),
            tag: "t".into(),
            chain: "c".into(),
            mail_from: crate::StoredMailbox {
                address: String::new(),
                params: vec![],
            },
            rcpt_to: vec![],
            ingress: crate::StoredIngress::Generated,
            body: blob.clone(),
            retry: true,
            notification: false,
            lease: None,
            prior_attempt: None,
            signals: Default::default(),
        };
        store.create_with(tx.clone(), opts.clone()).await.unwrap();
        let no_key = CreateOptions {
            idempotency: None,
            ..opts
        };
        assert!(store.create_with(tx, no_key).await.is_err(), "taken");
        assert!(store.idempotency_lookup("k").await.unwrap().is_some());
        let replica = ReplicaId("r".into());
        store
            .register_replica(&replica, "https://r/", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(store.replica_uri(&replica).await.unwrap().is_some());
        // Untimed, whatever its outcome.
        assert!(
            store
                .wait_version(&unknown, 0, Instant::now())
                .await
                .is_err()
        );

        let text = encode(&registry);
        let want: HashMap<(String, String), u64> = [
            (("create_blob", "ok"), 2),
            (("append_blob", "ok"), 1),
            (("append_blob", "error"), 1),
            (("get_transaction", "error"), 3),
            (("counts", "ok"), 1),
            (("create_with", "ok"), 1),
            (("create_with", "error"), 1),
            (("idempotency_lookup", "ok"), 1),
            (("register_replica", "ok"), 1),
            (("replica_uri", "ok"), 1),
        ]
        .into_iter()
        .map(|((op, result), n)| ((op.to_owned(), result.to_owned()), n))
        .collect();
        assert_eq!(counts(&text), want, "{text}");
        assert!(
            text.contains("# UNIT store_operation_duration_seconds seconds"),
            "{text}"
        );
        // The buckets run from 100 µs to 10 s.
        assert!(
            text.contains(
                "store_operation_duration_seconds_bucket{le=\"0.0001\",op=\"counts\",result=\"ok\"}"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "store_operation_duration_seconds_bucket{le=\"10.0\",op=\"counts\",result=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("wait_version"), "{text}");
    }

    /// The wrapper is a store like any other: the whole conformance suite
    /// passes through it, waits and atomic batches included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wrapped_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let next = AtomicUsize::new(0);
        crate::suite::run_all(move || {
            let path = root.join(format!("s{}.db", next.fetch_add(1, Ordering::Relaxed)));
            Box::pin(async move {
                let inner: Arc<dyn Store> =
                    Arc::new(EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap());
                Arc::new(Metered::new(inner)) as Arc<dyn Store>
            })
        })
        .await;
    }
}
