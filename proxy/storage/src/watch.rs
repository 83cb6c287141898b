//! Waiting for a transaction to change ([`Store::wait_version`]): the
//! in-process half both backends share.
//!
//! A waiter registers its interest in one id with [`Watchers::watch`]
//! *before* it reads the record, so a write committed after that read
//! always finds it registered and wakes it: nothing falls between the read
//! and the wait. The backend calls [`Watchers::notify`] after every write
//! that bumps a version (the embedded store from its writer thread, once
//! the commit is done; the Redis store from its subscriber, for writes of
//! any replica). A notification only says "read again": the waiter reads
//! the record and compares versions itself, so a spurious or duplicated
//! notification costs a read, never a wrong answer.
//!
//! An id is in the map only while somebody waits on it: the last waiter to
//! leave removes it, and notifications for ids nobody waits on are a map
//! lookup and nothing else.
//!
//! [`Store::wait_version`]: crate::Store::wait_version

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{StoreError, StoreResult, TxId, TxRecord};

/// The ids somebody waits on, each with the channel that wakes its
/// waiters.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    ids: Mutex<HashMap<TxId, watch::Sender<()>>>,
}

/// One waiter's registration; dropping it unregisters.
pub(crate) struct Watch<'a> {
    watchers: &'a Watchers,
    id: TxId,
    /// Always `Some` but in `drop`, which lets it go under the lock.
    rx: Option<watch::Receiver<()>>,
}

impl Watchers {
    fn ids(&self) -> std::sync::MutexGuard<'_, HashMap<TxId, watch::Sender<()>>> {
        // A panic while holding the lock leaves the map consistent (every
        // operation on it is a single insert, lookup or removal).
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in `id`: every [`notify`](Self::notify) of it
    /// from now on marks the returned watch changed.
    pub(crate) fn watch(&self, id: &TxId) -> Watch<'_> {
        let rx = self
            .ids()
            .entry(id.clone())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        Watch {
            watchers: self,
            id: id.clone(),
            rx: Some(rx),
        }
    }

    /// Wakes the waiters of `id`, if any.
    pub(crate) fn notify(&self, id: &TxId) {
        if let Some(tx) = self.ids().get(id) {
            tx.send_replace(());
        }
    }

    /// Wakes every waiter (notifications may have been lost: the Redis
    /// subscriber after it resubscribed).
    pub(crate) fn notify_all(&self) {
        for tx in self.ids().values() {
            tx.send_replace(());
        }
    }

    /// How many ids somebody waits on now.
    pub(crate) fn len(&self) -> usize {
        self.ids().len()
    }
}

impl Watch<'_> {
    /// Until the next notification since the last one seen (at once if
    /// one came since the registration or the last call).
    async fn changed(&mut self) {
        let rx = self.rx.as_mut().expect("taken only by drop");
        if rx.changed().await.is_err() {
            // The sender lives in the map as long as this receiver does, so
            // this cannot happen; were it to, waiting forever lets the
            // caller's deadline end the wait instead of spinning.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut ids = self.watchers.ids();
        // The receiver goes under the lock, so that of two waiters leaving
        // at once the second sees the first gone; and no other waiter can
        // register in between: if no receiver is left, the id goes.
        drop(self.rx.take());
        if ids.get(&self.id).is_some_and(|tx| tx.receiver_count() == 0) {
            ids.remove(&self.id);
        }
    }
}

/// The longest pause between reads of a waiter that cannot reach its
/// store.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Reads the record for a waiter that was woken: an `Unavailable` store
/// (a Redis that is restarting, a connection being re-established) is
/// asked again until the deadline, since the wait has not failed while the
/// deadline has not passed; at the deadline the last error stands. Other
/// errors (`NotFound` once gc has deleted it) end the wait.
async fn read_again<R, F>(read: &R, deadline: Instant) -> StoreResult<TxRecord>
where
    R: Fn() -> F,
    F: Future<Output = StoreResult<TxRecord>>,
{
    let mut pause = Duration::from_millis(50);
    loop {
        match read().await {
            Err(StoreError::Unavailable(msg)) if Instant::now() < deadline => {
                tracing::debug!(error = %msg, "waiting for a transaction: store unavailable, reading again");
                let wake = (Instant::now() + pause).min(deadline);
                tokio::time::sleep_until(wake.into()).await;
                pause = (pause * 2).min(MAX_RETRY);
            }
            other => return other,
        }
    }
}

/// [`Store::wait_version`](crate::Store::wait_version) on top of a
/// backend's `read` (its `get_transaction`) and its notifications.
///
/// `subscribe` is called once the first read shows no change: `None` when
/// every write notifies `watchers` (the embedded store); otherwise the
/// state of the subscription that feeds them (true while it is live). A
/// write only notifies once the subscription is live, so when it was not,
/// the record is read again once it is.
pub(crate) async fn wait_version<R, F, S>(
    watchers: &Watchers,
    id: &TxId,
    after: u64,
    deadline: Instant,
    read: R,
    subscribe: S,
) -> StoreResult<Option<TxRecord>>
where
    R: Fn() -> F,
    F: Future<Output = StoreResult<TxRecord>>,
    S: FnOnce() -> Option<watch::Receiver<bool>>,
{
    let mut watch = watchers.watch(id);
    // The first read fails fast: a store that is down or an unknown id is
    // the caller's to hear at once, not at the deadline.
    let rec = read().await?;
    if rec.version > after {
        return Ok(Some(rec));
    }
    if Instant::now() >= deadline {
        return Ok(None);
    }
    // Registered before the first read, so a live subscription hears of
    // any write after it. One that is not live yet (the first wait started
    // it, or it is reconnecting) heard of nothing since.
    if let Some(mut live) = subscribe()
        && !*live.borrow()
    {
        let subscribed = tokio::time::timeout_at(deadline.into(), live.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok());
        // A write between the first read and the subscription published to
        // nobody: this read sees it. (The subscriber also wakes every
        // waiter once subscribed; this wait does not rely on that.)
        // Without a subscription by the deadline it is the last look.
        let rec = read_again(&read, deadline).await?;
        if rec.version > after {
            return Ok(Some(rec));
        }
        if !subscribed {
            return Ok(None);
        }
    }
    loop {
        tokio::select! {
            biased;
            () = watch.changed() => {}
            () = tokio::time::sleep_until(deadline.into()) => return Ok(None),
        }
        let rec = read_again(&read, deadline).await?;
        if rec.version > after {
            return Ok(Some(rec));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TxId {
        TxId(s.into())
    }

    #[test]
    fn ids_are_kept_only_while_watched() {
        let w = Watchers::default();
        w.notify(&id("nobody"));
        assert_eq!(w.len(), 0, "a notification registers nothing");
        let a1 = w.watch(&id("a"));
        let a2 = w.watch(&id("a"));
        let b = w.watch(&id("b"));
        assert_eq!(w.len(), 2);
        drop(a1);
        assert_eq!(w.len(), 2, "a is still watched by a2");
        drop(a2);
        assert_eq!(w.len(), 1);
        drop(b);
        assert_eq!(w.len(), 0);
    }

    #[tokio::test]
    async fn a_notification_reaches_the_waiters_of_its_id_only() {
        let w = Watchers::default();
        let mut a = w.watch(&id("a"));
        let mut b = w.watch(&id("b"));
        // Before the wait starts: it is not lost.
        w.notify(&id("a"));
        tokio::time::timeout(Duration::from_secs(1), a.changed())
            .await
            .expect("a notified");
        let quiet = tokio::time::timeout(Duration::from_millis(50), b.changed()).await;
        assert!(quiet.is_err(), "b was not notified");
        // Seen once: the next wait waits for the next one.
        let quiet = tokio::time::timeout(Duration::from_millis(50), a.changed()).await;
        assert!(quiet.is_err(), "a's notification is consumed");
        w.notify_all();
        for watch in [&mut a, &mut b] {
            tokio::time::timeout(Duration::from_secs(1), watch.changed())
                .await
                .expect("notify_all reaches everyone");
        }
    }
}
