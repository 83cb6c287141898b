//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive), `/ready` (listeners are bound and the proxy is
//! not draining), and the queue: `/queue`, `/transactions/{id}` and
//! `POST /transactions/{id}/cancel`.
//!
//! It is unauthenticated (keep it on loopback or a private network), so it
//! must not be drivable from a web page the operator happens to open:
//!
//! - every request's `Host` must name this server (its configured address,
//!   `localhost` when that is a loopback address, any IP literal when it
//!   listens on all addresses, or a name in `admin.allowed_hosts`), which
//!   defeats DNS rebinding (a hostile name resolved to 127.0.0.1 arrives
//!   with that name as its `Host`);
//! - a mutation (POST) must be `Content-Type: application/json`, which a
//!   page can only send after a CORS preflight this server never grants,
//!   and is refused when the browser says it comes from another origin
//!   (`Origin` not this server, or `Sec-Fetch-Site: cross-site`/`same-site`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use koukan_storage::{CancelOutcome, Store, StoreError, TxId, TxState};
use prometheus_client::registry::Registry;

pub struct AdminState {
    pub registry: Registry,
    ready: AtomicBool,
    store: OnceLock<Arc<dyn Store>>,
    /// Its queue gauges are set from the store at each scrape.
    delivery: OnceLock<crate::queue::metrics::DeliveryMetrics>,
}

impl AdminState {
    pub fn new(registry: Registry) -> Arc<Self> {
        Arc::new(Self {
            registry,
            ready: AtomicBool::new(false),
            store: OnceLock::new(),
            delivery: OnceLock::new(),
        })
    }

    pub fn set_store(&self, store: Arc<dyn Store>) {
        let _ = self.store.set(store);
    }

    pub fn set_delivery_metrics(&self, m: crate::queue::metrics::DeliveryMetrics) {
        let _ = self.delivery.set(m);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    // The queue depth is the store's, read now (a failed reading leaves
    // the last one).
    if let (Some(store), Some(m)) = (state.store.get(), state.delivery.get()) {
        match store.counts().await {
            Ok(c) => m.queue_depth(&c),
            Err(e) => tracing::debug!(error = %e, "reading queue counts for metrics failed"),
        }
    }
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

/// Cancels a stored transaction: it is not attempted again. `200` with
/// `{"cancelled": true, "state": "final"}` when it ended at once, or
/// `"state": "inflight"` when an attempt is running (it finishes, may
/// still deliver, and is then final); `409` with its final state when it
/// was already final (delivered, bounced or cancelled): nothing changed.
async fn cancel(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> axum::response::Response {
    let Some(store) = state.store.get() else {
        return json_error(StatusCode::NOT_FOUND, "no storage configured".into());
    };
    let id = TxId(id);
    match store.cancel(&id).await {
        Ok(CancelOutcome::Cancelled) => {
            Json(serde_json::json!({ "cancelled": true, "state": TxState::Final })).into_response()
        }
        Ok(CancelOutcome::Requested) => {
            Json(serde_json::json!({ "cancelled": true, "state": TxState::Inflight }))
                .into_response()
        }
        Ok(CancelOutcome::AlreadyFinal) => {
            let reason = store
                .get_transaction(&id)
                .await
                .ok()
                .and_then(|r| r.final_attempt_reason);
            (
                StatusCode::CONFLICT,
                Json(serde_json::json!({
                    "error": "the transaction is already final; nothing was cancelled",
                    "state": TxState::Final,
                    "final_attempt_reason": reason,
                })),
            )
                .into_response()
        }
        Err(e) => store_error(e),
    }
}

/// The `Host` values (lower-case, with the port) a request to the admin
/// server may carry.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    addr: SocketAddr,
    names: Vec<String>,
}

impl AllowedHosts {
    /// `names` are extra host names (`name:port`, or a bare name meaning
    /// the admin port), e.g. a Kubernetes service's DNS name.
    pub fn new(addr: SocketAddr, names: &[String]) -> Self {
        let port = addr.port();
        let names = names
            .iter()
            .map(|n| {
                let n = n.trim().to_ascii_lowercase();
                if split_host_port(&n).1.is_some() {
                    n
                } else {
                    format!("{n}:{port}")
                }
            })
            .collect();
        Self { addr, names }
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let (name, port) = split_host_port(&host);
        // No port means the scheme's default (80): only if that is ours.
        let port = port.unwrap_or(80);
        if port != self.addr.port() {
            return false;
        }
        if self.names.contains(&format!("{name}:{port}")) {
            return true;
        }
        let ip = self.addr.ip();
        match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
        {
            Ok(literal) => ip.is_unspecified() || literal == ip,
            Err(_) => name == "localhost" && (ip.is_loopback() || ip.is_unspecified()),
        }
    }

    /// The origins a browser would send for this server.
    fn origin_allowed(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|host| !host.contains('/') && self.allows(host))
    }
}

/// `host[:port]`, with IPv6 literals in brackets.
fn split_host_port(s: &str) -> (&str, Option<u16>) {
    let (host, port) = match s.rfind(':') {
        // "[::1]:9901" or "name:9901"; a bare IPv6 literal has no port.
        Some(i) if !s[i..].contains(']') && (s.starts_with('[') || s[..i].find(':').is_none()) => {
            (&s[..i], s[i + 1..].parse().ok())
        }
        _ => (s, None),
    };
    (host, port)
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Refuses requests that do not name this server, and mutations that are
/// not JSON or come from another origin (see the module docs).
async fn guard(
    State(allowed): State<Arc<AllowedHosts>>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    let h = req.headers();
    // HTTP/1.1 requires Host; an HTTP/1.0 request without one is not from
    // a browser and is judged by the rest.
    if let Some(host) = h.get(header::HOST) {
        let ok = host.to_str().is_ok_and(|v| allowed.allows(v));
        if !ok {
            return json_error(
                StatusCode::FORBIDDEN,
                "the Host header does not name this admin server (admin.allowed_hosts adds names)"
                    .into(),
            );
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if let Some(origin) = header_str(h, header::ORIGIN)
            && !allowed.origin_allowed(origin)
        {
            return json_error(
                StatusCode::FORBIDDEN,
                format!("cross-origin request refused (Origin {origin})"),
            );
        }
        if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok())
            && !matches!(site, "same-origin" | "none")
        {
            return json_error(
                StatusCode::FORBIDDEN,
                format!("cross-site request refused (Sec-Fetch-Site {site})"),
            );
        }
        let json = header_str(h, header::CONTENT_TYPE).is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a request that changes state must be Content-Type: application/json".into(),
            );
        }
    }
    next.run(req).await
}

pub fn router(state: Arc<AdminState>, allowed: AllowedHosts) -> Router {
    Router::new()
        .route("/queue", get(queue))
        .route("/transactions/{id}", get(transaction))
        .route("/transactions/{id}/cancel", post(cancel))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(state)
        .layer(middleware::from_fn_with_state(Arc::new(allowed), guard))
}

/// Binds the admin address; the caller spawns the returned future.
pub async fn bind(
    addr: SocketAddr,
    allowed_hosts: Vec<String>,
    state: Arc<AdminState>,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let allowed = AllowedHosts::new(addr, &allowed_hosts);
    Ok(async move { axum::serve(listener, router(state, allowed)).await })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_checks() {
        let lo = AllowedHosts::new("127.0.0.1:9901".parse().unwrap(), &["admin.svc".into()]);
        for ok in [
            "127.0.0.1:9901",
            "localhost:9901",
            "LOCALHOST:9901",
            "admin.svc:9901",
        ] {
            assert!(lo.allows(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1:9902",
            "127.0.0.2:9901",
            "evil.example:9901",
            "127.0.0.1",
            "localhost",
            "[::1]:9901",
            "",
        ] {
            assert!(!lo.allows(bad), "{bad}");
        }
        let any = AllowedHosts::new("[::]:80".parse().unwrap(), &[]);
        for ok in [
            "10.1.2.3",
            "10.1.2.3:80",
            "[fd00::1]:80",
            "[fd00::1]",
            "localhost",
        ] {
            assert!(any.allows(ok), "{ok}");
        }
        assert!(!any.allows("rebound.example"));
        let v6 = AllowedHosts::new("[::1]:9901".parse().unwrap(), &[]);
        assert!(v6.allows("[::1]:9901") && v6.allows("localhost:9901"));
        assert!(!v6.allows("127.0.0.1:9901"));
        assert!(lo.origin_allowed("http://localhost:9901"));
        assert!(!lo.origin_allowed("http://evil.example:9901"));
        assert!(!lo.origin_allowed("null"));
        assert!(!lo.origin_allowed("https://localhost:9901"));
    }
}
