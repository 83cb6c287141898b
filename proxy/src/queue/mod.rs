//! Queue plumbing shared by everything that puts transactions into the
//! store or takes them out: the process's [`Queue`] handle (store, replica
//! id, the scheduler's wake-up and the receiving back-pressure), the
//! body [`Spool`], the one builder of new stored transactions
//! ([`Submission`]) and the conversions between the chain's model and the
//! store's ([`convert`]).
//!
//! It sits below both the delivery terminals (store writer, exploder) and
//! the scheduler, so neither imports the other.

pub mod convert;
pub mod metrics;
mod spool;
mod submission;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use koukan_smtp_server::InternalErrors;
use koukan_storage::{ReplicaId, Store};
use tokio::sync::Notify;

pub use spool::Spool;
pub use submission::{Origin, Submission};

/// The process's store as the receiving side and the scheduler share it.
/// Lives for the whole process: a reload never reopens the store.
pub struct Queue {
    pub store: Arc<dyn Store>,
    /// This process as a lease holder, unique per start.
    pub replica: ReplicaId,
    pub internal_errors: InternalErrors,
    /// Counted by the exploder and the scheduler; the relay terminal gets
    /// the process's clone through its endpoint factory.
    pub metrics: metrics::DeliveryMetrics,
    wake: Notify,
    receiving: AtomicUsize,
    /// Messages being received into storage at once; beyond it MAIL gets
    /// 451 4.3.2.
    max_receiving: usize,
}

impl Queue {
    pub fn new(
        store: Arc<dyn Store>,
        replica: ReplicaId,
        max_receiving: usize,
        internal_errors: InternalErrors,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            replica,
            internal_errors,
            metrics: metrics::DeliveryMetrics::default(),
            wake: Notify::new(),
            receiving: AtomicUsize::new(0),
            max_receiving,
        })
    }

    /// Wakes the scheduler: a transaction this process stored is due.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves at the next [`Queue::wake`] (or at once if one came since
    /// the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// More than `max_receiving` messages are being received. Asked by a
    /// receiver that already holds its own [`ReceivingGuard`], which is
    /// counted: `max_receiving` of them may receive at once.
    pub fn saturated(&self) -> bool {
        self.receiving.load(Ordering::Relaxed) > self.max_receiving
    }

    /// Counts a message being received until the guard drops.
    pub fn receiving(self: &Arc<Self>) -> ReceivingGuard {
        self.receiving.fetch_add(1, Ordering::Relaxed);
        ReceivingGuard(self.clone())
    }
}

pub struct ReceivingGuard(Arc<Queue>);

impl Drop for ReceivingGuard {
    fn drop(&mut self) {
        self.0.receiving.fetch_sub(1, Ordering::Relaxed);
    }
}
