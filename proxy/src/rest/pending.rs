//! Transactions created over REST whose body is not complete yet: held in
//! memory by the replica that created them, their blobs already in the
//! store as they are uploaded. Once the last blob is finalized the
//! transaction is stored ([`commit`]) and from then on read from the
//! store; one that stalls longer than the listener's `pending_timeout` is
//! dropped with its blobs.
//!
//! Why not in the store from the start: a stored transaction is due for
//! delivery, and the store holds only complete bodies, so that any
//! replica can deliver what it claims. A pending one has nothing to
//! deliver yet; losing it in a crash loses nothing acknowledged (its
//! creation answered 201 with the body not finalized, and only a final
//! status means the mail is safe).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use koukan_storage::{BlobId, CreateOptions, Created, IdempotencyKey, NewTransaction, TxId};
use tokio::sync::watch;

use super::builder;
use super::{Error, Rest};
use crate::queue::Submission;

/// The replica registry's name for "the replica holding pending
/// transaction `id`": other replicas redirect its uploads there.
pub fn owner(id: &TxId) -> koukan_storage::ReplicaId {
    koukan_storage::ReplicaId(format!("pending/{id}"))
}

/// One blob being uploaded (the raw body, or a message-builder part).
#[derive(Clone, Debug)]
pub struct Slot {
    pub blob: BlobId,
    pub len: u64,
    /// The final length once a request declared it.
    pub total: Option<u64>,
    pub finalized: bool,
    /// Created for this transaction (deleted with it if it never
    /// commits), as opposed to reused from an earlier one.
    pub owned: bool,
}

impl Slot {
    pub fn new(blob: BlobId) -> Self {
        Self {
            blob,
            len: 0,
            total: None,
            finalized: false,
            owned: true,
        }
    }

    pub fn complete(blob: BlobId, len: u64, owned: bool) -> Self {
        Self {
            blob,
            len,
            total: Some(len),
            finalized: true,
            owned,
        }
    }
}

pub enum PendingBody {
    Raw(Slot),
    Builder {
        spec: builder::Spec,
        /// By the name the spec gives each blob.
        slots: BTreeMap<String, Slot>,
    },
}

impl PendingBody {
    pub fn is_complete(&self) -> bool {
        match self {
            PendingBody::Raw(s) => s.finalized,
            PendingBody::Builder { slots, .. } => slots.values().all(|s| s.finalized),
        }
    }

    fn owned_blobs(&self) -> Vec<BlobId> {
        let slots: Vec<&Slot> = match self {
            PendingBody::Raw(s) => vec![s],
            PendingBody::Builder { slots, .. } => slots.values().collect(),
        };
        slots
            .into_iter()
            .filter(|s| s.owned)
            .map(|s| s.blob.clone())
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for uploads.
    Open,
    /// Stored: read it from the store.
    Stored,
    /// Cancelled before it was complete: nothing was stored.
    Cancelled,
}

pub struct State {
    /// What will be stored; its `body` is set at commit.
    pub tx: NewTransaction,
    pub submission: Arc<Submission>,
    pub body: PendingBody,
    pub idempotency: Option<IdempotencyKey>,
    pub phase: Phase,
}

pub struct PendingTx {
    pub id: TxId,
    /// The sender of the path it was created under (API keys).
    pub sender: String,
    /// Uploads take it for their whole request: one blob is written by
    /// one request at a time.
    pub state: tokio::sync::Mutex<State>,
    /// Its version: bumped by every change, watched by hanging GETs.
    version: watch::Sender<u64>,
    timeout: Duration,
    last_update: Mutex<Instant>,
}

impl PendingTx {
    pub fn new(id: TxId, sender: String, state: State, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            id,
            sender,
            state: tokio::sync::Mutex::new(state),
            version: watch::channel(1).0,
            timeout,
            last_update: Mutex::new(Instant::now()),
        })
    }

    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Records a change: a new version, and the upload timeout restarts.
    pub fn touch(&self) {
        *self.last_update.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.version.send_modify(|v| *v += 1);
    }

    fn expired(&self, now: Instant) -> bool {
        let last = *self.last_update.lock().unwrap_or_else(|e| e.into_inner());
        now.duration_since(last) > self.timeout
    }
}

/// The pending transactions of this process, and the idempotency keys of
/// those not stored yet (stored ones' keys are in the store).
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<TxId, Arc<PendingTx>>>,
    keys: Mutex<HashMap<String, (TxId, String)>>,
}

impl Registry {
    pub fn get(&self, id: &TxId) -> Option<Arc<PendingTx>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Adds `tx` unless `max` are pending already, or its idempotency key
    /// (`key`, with its fingerprint) names a pending transaction: then
    /// that one's id and fingerprint.
    pub fn insert(
        &self,
        tx: Arc<PendingTx>,
        key: Option<(&str, &str)>,
        max: usize,
    ) -> Result<(), InsertError> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((key, _)) = key
            && let Some((id, fp)) = keys.get(key)
            && map.contains_key(id)
        {
            return Err(InsertError::Existing {
                id: id.clone(),
                fingerprint: fp.clone(),
            });
        }
        if map.len() >= max {
            return Err(InsertError::Full);
        }
        if let Some((key, fp)) = key {
            keys.insert(key.to_owned(), (tx.id.clone(), fp.to_owned()));
        }
        map.insert(tx.id.clone(), tx);
        Ok(())
    }

    pub fn key(&self, key: &str) -> Option<(TxId, String)> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(key)
            .filter(|(id, _)| map.contains_key(id))
            .cloned()
    }

    pub fn remove(&self, id: &TxId) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
        keys.retain(|_, (k, _)| k != id);
    }

    fn expired(&self, now: Instant) -> Vec<Arc<PendingTx>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|p| p.expired(now)).cloned().collect()
    }
}

pub enum InsertError {
    Full,
    Existing { id: TxId, fingerprint: String },
}

/// Stores a complete pending transaction: renders a message-builder body
/// into its message first. On success the transaction is in the store
/// (and the scheduler woken); `Existing` if its idempotency key was
/// taken meanwhile (another replica stored the same request), in which
/// case nothing was stored.
pub async fn commit(rest: &Rest, id: &TxId, st: &mut State) -> Result<Created, Error> {
    let store = &rest.queue.store;
    let (body, rendered) = match &st.body {
        PendingBody::Raw(slot) => (slot.blob.clone(), false),
        PendingBody::Builder { spec, slots } => {
            let hostname = rest.snapshot.load().node_id.clone();
            let (blob, smtputf8) = builder::render(store, spec, slots, &hostname).await?;
            let params = &mut st.tx.mail_from.params;
            if smtputf8
                && !params
                    .iter()
                    .any(|p| p.keyword.eq_ignore_ascii_case("SMTPUTF8"))
            {
                params.push(koukan_storage::StoredParam {
                    keyword: "SMTPUTF8".into(),
                    value: None,
                });
            }
            if let koukan_storage::StoredIngress::Http(h) = &mut st.tx.ingress {
                h.blobs = slots
                    .iter()
                    .map(|(name, s)| (name.clone(), s.blob.clone()))
                    .collect();
            }
            (blob, true)
        }
    };
    let mut tx = st.tx.clone();
    tx.body = body.clone();
    // Leased to this replica and run at once when a delivery slot is
    // free: no claim, no wait for the scheduler's loop.
    let reserved = rest.scheduler.as_ref().and_then(|s| s.reserve());
    tx.lease = reserved.as_ref().map(|r| r.lease());
    // As stored: a read of version 1 shows its attempt as started.
    st.tx.lease = tx.lease.clone();
    let created = match store.admit().await {
        Ok(()) => {
            store
                .create_with(
                    tx,
                    CreateOptions {
                        id: Some(id.clone()),
                        idempotency: st.idempotency.clone(),
                        // A later request may reuse it (`reuse_uri`).
                        keep_body: true,
                    },
                )
                .await
        }
        Err(e) => Err(e),
    };
    match created {
        Ok(created) => {
            if matches!(created, Created::Existing { .. }) && rendered {
                let _ = store.delete_blob(&body).await;
            }
            if let Created::New(id) = &created {
                st.phase = Phase::Stored;
                match (reserved, store.get_transaction(id).await) {
                    (Some(r), Ok(rec)) => r.run(rec),
                    (Some(_), Err(e)) => tracing::warn!(
                        tx = %id, error = %e,
                        "reading a new transaction back failed; it is delivered when its lease expires"
                    ),
                    (None, _) => rest.queue.wake(),
                }
            }
            Ok(created)
        }
        Err(e) => {
            if rendered {
                let _ = store.delete_blob(&body).await;
            }
            Err(Error::store(e))
        }
    }
}

/// Drops a pending transaction that will never be stored, with the blobs
/// it created.
pub async fn discard(rest: &Rest, p: &PendingTx, st: &mut State, phase: Phase) {
    st.phase = phase;
    rest.pending.remove(&p.id);
    for blob in st.body.owned_blobs() {
        if let Err(e) = rest.queue.store.delete_blob(&blob).await {
            tracing::debug!(blob = %blob, error = %e, "deleting an abandoned upload failed; gc will");
        }
    }
    p.touch();
}

/// Drops pending transactions whose uploads stalled, until the REST
/// state goes away.
pub async fn expire(rest: Weak<Rest>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Some(rest) = rest.upgrade() else { return };
        for p in rest.pending.expired(Instant::now()) {
            let mut st = p.state.lock().await;
            if st.phase == Phase::Open {
                tracing::info!(tx = %p.id, "REST transaction dropped: its body was not completed in time");
                discard(&rest, &p, &mut st, Phase::Cancelled).await;
            }
        }
    }
}
