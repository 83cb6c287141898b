//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/ready` (listeners are bound and the proxy is
//! not draining).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use koukan_storage::{Store, StoreError, TxId};
use prometheus_client::registry::Registry;

pub struct AdminState {
    pub registry: Registry,
    ready: AtomicBool,
    store: OnceLock<Arc<dyn Store>>,
}

impl AdminState {
    pub fn new(registry: Registry) -> Arc<Self> {
        Arc::new(Self {
            registry,
            ready: AtomicBool::new(false),
            store: OnceLock::new(),
        })
    }

    pub fn set_store(&self, store: Arc<dyn Store>) {
        let _ = self.store.set(store);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response(),
    }
}

async fn ready(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

fn json_error(status: StatusCode, message: String) -> axum::response::Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn store_error(e: StoreError) -> axum::response::Response {
    let status = match e {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_error(status, e.to_string())
}

/// Queue counts by state.
async fn queue(State(state): State<Arc<AdminState>>) -> axum::response::Response {
    let Some(store) = state.store.get() else {
        return json_error(StatusCode::NOT_FOUND, "no storage configured".into());
    };
    match store.counts().await {
        Ok(c) => Json(c).into_response(),
        Err(e) => store_error(e),
    }
}

/// One stored transaction's status.
async fn transaction(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> axum::response::Response {
    let Some(store) = state.store.get() else {
        return json_error(StatusCode::NOT_FOUND, "no storage configured".into());
    };
    match store.get_transaction(&TxId(id)).await {
        Ok(r) => {
            let state = r.state(std::time::SystemTime::now());
            Json(serde_json::json!({ "state": state, "transaction": r })).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// Cancels a stored transaction: it is not attempted again (an attempt in
/// flight finishes and is recorded as final).
async fn cancel(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> axum::response::Response {
    let Some(store) = state.store.get() else {
        return json_error(StatusCode::NOT_FOUND, "no storage configured".into());
    };
    match store.cancel(&TxId(id)).await {
        Ok(()) => Json(serde_json::json!({ "cancelled": true })).into_response(),
        Err(e) => store_error(e),
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/queue", get(queue))
        .route("/transactions/{id}", get(transaction))
        .route("/transactions/{id}/cancel", post(cancel))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(state)
}

/// Binds the admin address; the caller spawns the returned future.
pub async fn bind(
    addr: SocketAddr,
    state: Arc<AdminState>,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(async move { axum::serve(listener, router(state)).await })
}
