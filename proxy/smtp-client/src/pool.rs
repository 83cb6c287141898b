//! [`ConnectionPool`]: idle upstream sessions kept for the next transaction
//! to the same destination (the connection cache of Postfix's smtp client).
//!
//! An entry is a [`Session`] that finished a transaction cleanly and may
//! take a new MAIL (RFC 5321 3.3: a session carries any number of
//! transactions). It is keyed by the [`Hosts`] it was opened for, so it is
//! only reused for mail going to the same place, and it keeps its peer,
//! EHLO extensions and TLS state, which the next transaction uses as if it
//! had just opened the session.
//!
//! Invariants:
//! - a session is either owned by one transaction or in the pool, never
//!   both: `take` removes it;
//! - at most `max_idle_per_destination` idle sessions per destination (the
//!   oldest beyond that are QUIT);
//! - a session idle longer than `idle_timeout` is never handed out (checked
//!   on `take`) and is QUIT by a sweeper task soon after it expires; the
//!   sweeper holds only a weak reference and exits when the pool is empty or
//!   dropped;
//! - dropping the last handle QUITs every idle session;
//! - every session the pool closes instead of keeping or handing out is
//!   counted once under its [`DiscardReason`], every push and removal moves
//!   the endpoint's idle gauge by one (see [`crate::PoolMetrics`]).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use koukan_chain::transaction::Hosts;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::ClientConfig;
use crate::connection::{Step, quit_in_background};
use crate::metrics::{DiscardReason, EndpointMetrics, PoolMetrics};
use crate::session::Session;

/// Shared cache of idle upstream sessions; cheap to clone (all clones are
/// the same pool). Create one per endpoint configuration with
/// [`ConnectionPool::new`] and hand it to every
/// [`crate::SmtpClient::pooled`] of that endpoint.
#[derive(Clone)]
pub struct ConnectionPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    max_idle: usize,
    idle_timeout: Duration,
    max_transactions: usize,
    state: Mutex<PoolState>,
    endpoint: String,
    /// Shared with the background RSET tasks, which may finish after the
    /// pool is gone.
    metrics: Arc<EndpointMetrics>,
}

#[derive(Default)]
struct PoolState {
    /// Per destination, oldest first (sessions are put at the back and
    /// taken from the back: the most recently used is the most likely to
    /// still be open).
    idle: HashMap<Hosts, VecDeque<IdleSession>>,
    /// Whether a sweeper task is running (it exits when `idle` is empty).
    sweeping: bool,
}

struct IdleSession {
    sess: Session,
    since: Instant,
}

impl fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("endpoint", &self.inner.endpoint)
            .field("max_idle_per_destination", &self.inner.max_idle)
            .field("idle_timeout", &self.inner.idle_timeout)
            .field("max_transactions", &self.inner.max_transactions)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl ConnectionPool {
    /// A pool with the reuse bounds of `cfg`
    /// ([`ClientConfig::max_idle_per_destination`],
    /// [`ClientConfig::idle_timeout`],
    /// [`ClientConfig::max_transactions_per_connection`]). With
    /// `max_idle_per_destination == 0` it never keeps anything.
    ///
    /// It counts into `metrics` under the label `endpoint` (the name of
    /// the endpoint it serves); every pool of the process should get the
    /// same `metrics`, registered once.
    pub fn new(cfg: &ClientConfig, metrics: &PoolMetrics, endpoint: &str) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                max_idle: cfg.max_idle_per_destination,
                idle_timeout: cfg.idle_timeout,
                max_transactions: cfg.max_transactions_per_connection,
                state: Mutex::default(),
                endpoint: endpoint.to_owned(),
                metrics: metrics.endpoint(endpoint),
            }),
        }
    }

    /// Whether sessions are kept at all.
    pub fn enabled(&self) -> bool {
        self.inner.max_idle > 0 && !self.inner.idle_timeout.is_zero()
    }

    /// How many idle sessions the pool holds (all destinations).
    pub fn idle_count(&self) -> usize {
        self.inner.lock().idle.values().map(VecDeque::len).sum()
    }

    /// An idle session for `key`, if one is fresh and still looks open.
    /// Expired or dead ones met on the way are closed.
    pub(crate) fn take(&self, key: &Hosts) -> Option<Session> {
        if !self.enabled() {
            return None;
        }
        let m = &self.inner.metrics;
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut dead = 0;
        let found = {
            let mut st = self.inner.lock();
            let list = st.idle.get_mut(key)?;
            let before = list.len();
            let mut found = None;
            while let Some(mut idle) = list.pop_back() {
                if now.duration_since(idle.since) >= self.inner.idle_timeout {
                    // Everything in front of it is older still.
                    expired.push(idle.sess);
                    expired.extend(list.drain(..).map(|i| i.sess));
                    break;
                }
                if idle.sess.conn.idle_probe() {
                    found = Some(idle.sess);
                    break;
                }
                dead += 1;
                tracing::debug!(peer = %idle.sess.conn.peer, "idle upstream session closed by peer");
            }
            m.idle.dec_by((before - list.len()) as i64);
            if list.is_empty() {
                st.idle.remove(key);
            }
            found
        };
        m.discarded(DiscardReason::Broken, dead);
        m.discarded(DiscardReason::IdleTimeout, expired.len());
        for sess in expired {
            quit_in_background(sess.conn);
        }
        if let Some(sess) = &found {
            m.reused.inc();
            tracing::debug!(peer = %sess.conn.peer, tls = sess.tls.is_some(), "reusing upstream session");
        }
        found
    }

    /// Counts a connection a client of this pool opened.
    pub(crate) fn note_opened(&self) {
        self.inner.metrics.opened.inc();
    }

    /// Counts a session from the pool that its client found unusable (it
    /// failed its first MAIL) and closed.
    pub(crate) fn note_broken(&self) {
        self.inner.metrics.discarded(DiscardReason::Broken, 1);
    }

    /// Keeps a session that can take a new MAIL right now, or QUITs it when
    /// reuse is off, it has carried `max_transactions_per_connection`
    /// transactions, or the destination already has enough idle sessions
    /// (then the oldest goes).
    pub(crate) fn put(&self, key: Hosts, sess: Session) {
        if let Some(reason) = self.refuses(&sess) {
            self.inner.metrics.discarded(reason, 1);
            quit_in_background(sess.conn);
            return;
        }
        let m = &self.inner.metrics;
        let mut evicted = Vec::new();
        let start_sweeper = {
            let mut st = self.inner.lock();
            let list = st.idle.entry(key).or_default();
            list.push_back(IdleSession {
                sess,
                since: Instant::now(),
            });
            m.idle.inc();
            while list.len() > self.inner.max_idle {
                evicted.extend(list.pop_front().map(|i| i.sess));
                m.idle.dec();
            }
            !std::mem::replace(&mut st.sweeping, true)
        };
        m.discarded(DiscardReason::PoolFull, evicted.len());
        for sess in evicted {
            quit_in_background(sess.conn);
        }
        if start_sweeper {
            self.start_sweeper();
        }
    }

    /// Returns `sess` to the pool after RSET (RFC 5321 4.1.1.5), first
    /// reading `pending` replies to commands already sent (pipelined RCPTs
    /// after a refused MAIL). Runs in the background: the transaction's
    /// answer does not wait for it. Any failure closes the session.
    pub(crate) fn reset_and_put(
        &self,
        key: Hosts,
        mut sess: Session,
        pending: usize,
        limit: Duration,
    ) {
        if let Some(reason) = self.refuses(&sess) {
            self.inner.metrics.discarded(reason, 1);
            quit_in_background(sess.conn);
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::downgrade(&self.inner);
        let m = self.inner.metrics.clone();
        // In the span of the transaction that released it, so its log
        // lines say which transaction left the session in this state.
        let task = async move {
            let step = Step::new("draining replies before RSET", limit);
            for _ in 0..pending {
                if let Err(e) = sess.conn.read_reply(step).await {
                    tracing::debug!(peer = %sess.conn.peer, "before RSET: {e}");
                    m.discarded(DiscardReason::Broken, 1);
                    return;
                }
            }
            let step = Step::new("waiting for reply to RSET", limit);
            match sess.conn.command("RSET", step).await {
                Ok(reply) if reply.class() == 2 => match pool.upgrade() {
                    Some(inner) => ConnectionPool { inner }.put(key, sess),
                    None => {
                        m.discarded(DiscardReason::PoolDropped, 1);
                        sess.conn.quit().await
                    }
                },
                Ok(reply) => {
                    tracing::debug!(peer = %sess.conn.peer, "RSET refused: {}", reply.response());
                    m.discarded(DiscardReason::Broken, 1);
                    sess.conn.quit().await;
                }
                Err(e) => {
                    tracing::debug!(peer = %sess.conn.peer, "RSET: {e}");
                    m.discarded(DiscardReason::Broken, 1);
                }
            }
        };
        rt.spawn(task.in_current_span());
    }

    /// Why `sess` may not be kept, if it may not: reuse off (by a zero
    /// bound, named after it) or the transaction limit reached.
    fn refuses(&self, sess: &Session) -> Option<DiscardReason> {
        let max_tx = self.inner.max_transactions;
        if self.inner.max_idle == 0 {
            Some(DiscardReason::PoolFull)
        } else if self.inner.idle_timeout.is_zero() {
            Some(DiscardReason::IdleTimeout)
        } else if max_tx != 0 && sess.transactions >= max_tx {
            Some(DiscardReason::MaxTransactions)
        } else {
            None
        }
    }

    fn start_sweeper(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime, no timer: expiry is still enforced on `take`.
            self.inner.lock().sweeping = false;
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let mut next = Instant::now() + self.inner.idle_timeout;
        rt.spawn(async move {
            loop {
                tokio::time::sleep_until(next).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                match inner.sweep() {
                    Some(t) => next = t,
                    None => return,
                }
            }
        });
    }
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state stays consistent across a panic (plain collection
        // edits), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// QUITs expired sessions. Returns when the next one expires, or `None`
    /// (and marks the sweeper stopped) when nothing is left.
    fn sweep(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let next = {
            let mut st = self.lock();
            let mut next: Option<Instant> = None;
            st.idle.retain(|_, list| {
                while let Some(front) = list.front() {
                    let deadline = front.since + self.idle_timeout;
                    if deadline > now {
                        next = Some(next.map_or(deadline, |n| n.min(deadline)));
                        break;
                    }
                    expired.extend(list.pop_front().map(|i| i.sess));
                    self.metrics.idle.dec();
                }
                !list.is_empty()
            });
            if next.is_none() {
                st.sweeping = false;
            }
            next
        };
        self.metrics
            .discarded(DiscardReason::IdleTimeout, expired.len());
        for sess in expired {
            tracing::debug!(peer = %sess.conn.peer, "idle upstream session expired");
            quit_in_background(sess.conn);
        }
        next
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, list) in st.idle.drain() {
            self.metrics.idle.dec_by(list.len() as i64);
            self.metrics
                .discarded(DiscardReason::PoolDropped, list.len());
            for idle in list {
                quit_in_background(idle.sess.conn);
            }
        }
    }
}
