//! The REST API: applications send mail as transactions over HTTP/JSON.
//!
//! Wire-compatible with the original Koukan's router (routes, JSON,
//! ETags, hanging GETs, ranged uploads; see the README's REST section),
//! with its client errors answered 4xx with a JSON body naming the field
//! instead of 500, 304s without a body, and idempotent POSTs.
//!
//! A transaction is created by a POST. Once its body is complete (at
//! once for an inline body or a message-builder spec with inline parts,
//! otherwise when the last PUT finalizes it) it is stored, through the
//! same [`Submission`](crate::queue::Submission) the SMTP side's store
//! writer uses, and the scheduler delivers it: every REST transaction is
//! durable before the client hears of its outcome, and its reads come
//! from the store, so any replica can serve them and hanging GETs wait on
//! [`Store::wait_version`](koukan_storage::Store::wait_version). Until
//! then it is *pending*: held by the replica that created it
//! ([`pending`]), which the others redirect uploads to.
//!
//! One module per route: [`create`] (POST), [`read`] (GET, PATCH),
//! [`upload`] (PUT body and blobs), [`cancel`]; [`view`] renders what a
//! read shows; [`server`] is the accept loop and the limits around the
//! router.

mod builder;
mod cancel;
mod create;
mod error;
pub mod metrics;
pub mod pending;
mod read;
pub mod server;
mod upload;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use koukan_storage::{ReplicaId, TxId};
use tokio::sync::{Semaphore, watch};

use crate::config::listener::HttpListenerSpec;
use crate::queue::Queue;
use crate::scheduler::Scheduler;
use crate::snapshot::Snapshot;

pub use error::Error;

/// How long this replica's REST address stays registered without a
/// refresh: other replicas redirect to it only while it is alive.
const REPLICA_TTL: Duration = Duration::from_secs(30);

/// The REST API's process-lifetime state, shared by every HTTP listener
/// and kept across reloads: pending transactions must outlive a config
/// change.
pub struct Rest {
    pub queue: Arc<Queue>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub pending: pending::Registry,
    /// Runs a transaction stored here at once when it has a free slot.
    scheduler: Option<Arc<Scheduler>>,
    pub metrics: metrics::RestMetrics,
}

impl Rest {
    pub fn new(
        queue: Arc<Queue>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        scheduler: Option<Arc<Scheduler>>,
        metrics: metrics::RestMetrics,
    ) -> Arc<Self> {
        let rest = Arc::new(Self {
            queue,
            snapshot,
            pending: pending::Registry::default(),
            scheduler,
            metrics,
        });
        tokio::spawn(pending::expire(Arc::downgrade(&rest)));
        rest
    }

    fn replica(&self) -> &ReplicaId {
        &self.queue.replica
    }

    /// Keeps `uri` registered as this replica's (for redirects from the
    /// others) while the returned task runs.
    pub fn register(self: &Arc<Self>, uri: String) -> tokio::task::JoinHandle<()> {
        let rest = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(r) = rest.upgrade() else { return };
                if let Err(e) = r
                    .queue
                    .store
                    .register_replica(r.replica(), &uri, REPLICA_TTL)
                    .await
                {
                    tracing::warn!(error = %e, "registering this replica's REST address failed");
                }
                drop(r);
                tokio::time::sleep(REPLICA_TTL / 3).await;
            }
        })
    }
}

/// What one HTTP listener's handlers share.
pub struct ListenerCtx {
    pub rest: Arc<Rest>,
    /// The listener's settings; a reload sends new ones.
    pub spec: watch::Receiver<Arc<HttpListenerSpec>>,
    requests: Arc<Semaphore>,
    hanging: Arc<Semaphore>,
}

impl ListenerCtx {
    pub fn new(rest: Arc<Rest>, spec: watch::Receiver<Arc<HttpListenerSpec>>) -> Arc<Self> {
        let limits = spec.borrow().limits.clone();
        let ctx = Arc::new(Self {
            rest,
            spec: spec.clone(),
            requests: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            hanging: Arc::new(Semaphore::new(limits.max_hanging_gets)),
        });
        tokio::spawn(resize_on_reload(Arc::downgrade(&ctx), spec, limits));
        ctx
    }

    fn spec(&self) -> Arc<HttpListenerSpec> {
        self.spec.borrow().clone()
    }
}

/// Keeps the concurrency limits in step with the listener's config: a
/// reload that raises one adds permits at once; one that lowers it takes
/// free permits away now and the rest as requests in flight finish.
async fn resize_on_reload(
    ctx: std::sync::Weak<ListenerCtx>,
    mut spec: watch::Receiver<Arc<HttpListenerSpec>>,
    mut current: crate::config::listener::HttpLimits,
) {
    while spec.changed().await.is_ok() {
        let Some(ctx) = ctx.upgrade() else { return };
        let next = spec.borrow_and_update().limits.clone();
        for (sem, old, new) in [
            (
                &ctx.requests,
                current.max_concurrent_requests,
                next.max_concurrent_requests,
            ),
            (
                &ctx.hanging,
                current.max_hanging_gets,
                next.max_hanging_gets,
            ),
        ] {
            if new > old {
                sem.add_permits(new - old);
            } else if old > new {
                let sem = sem.clone();
                let n = (old - new) as u32;
                // Permits taken back as they come free: the semaphore
                // shrinks without refusing a request already admitted.
                tokio::spawn(async move {
                    if let Ok(p) = sem.acquire_many_owned(n).await {
                        p.forget();
                    }
                });
            }
        }
        current = next;
    }
}

/// The connection a request came on.
#[derive(Clone, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// TLS version and cipher suite, on an HTTPS listener.
    pub tls: Option<(String, String)>,
}

/// The REST routes (section 1.1 of the original's API).
pub fn routes(ctx: Arc<ListenerCtx>) -> Router {
    Router::new()
        .route("/senders/{sender}/transactions", post(create::post))
        .route("/transactions/{tx}", get(read::get).patch(read::patch))
        .route("/transactions/{tx}/body", put(upload::body))
        .route("/transactions/{tx}/blob/{blob}", put(upload::blob))
        .route("/transactions/{tx}/cancel", post(cancel::post))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ctx)
}

/// The OpenAPI document of this API, kept in the repository.
pub const OPENAPI: &str = include_str!("../../../rest/openapi.json");

async fn openapi() -> axum::response::Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn not_found() -> Error {
    Error::not_found("no such resource")
}

async fn method_not_allowed() -> Error {
    Error::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        koukan_rest::ApiError::new(
            koukan_rest::ErrorKind::InvalidHeader,
            "method not allowed on this resource",
        ),
    )
}

/// A transaction id as the API hands them out: what a path may hold.
fn tx_id(s: &str) -> Result<TxId, Error> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(TxId(s.to_owned()))
    } else {
        Err(Error::not_found("unknown transaction"))
    }
}

/// A new transaction id: 128 random bits, URL-safe, as the original's
/// default `rest_id_entropy`.
fn new_tx_id() -> TxId {
    TxId(format!("{:032x}", rand::random::<u128>()))
}
