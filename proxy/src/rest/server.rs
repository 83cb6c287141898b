//! The HTTP listener's accept loop: TLS, hyper's HTTP/1 connections with
//! the header limits, the concurrency limit in front of the router, a
//! panic answered 500 instead of a dropped connection, and draining when
//! the listener is removed.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Request;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use koukan_rest::ErrorKind;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use super::{Conn, Error, ListenerCtx, routes};

/// Time allowed for a request's head, and for a TLS handshake.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Open requests get this long to finish when the listener goes away.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `socket` until `stop` turns true, then drains.
pub async fn run(socket: TcpListener, ctx: Arc<ListenerCtx>, mut stop: watch::Receiver<bool>) {
    let router = routes(ctx.clone());
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            // The guard `wait_for` returns must not live across an await.
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = socket.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let local = tcp.local_addr().unwrap_or(peer);
                let ctx = ctx.clone();
                let router = router.clone();
                let drain = drain_rx.clone();
                conns.spawn(async move {
                    let spec = ctx.spec();
                    match &spec.tls {
                        Some(tls) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                            let Ok(Ok(stream)) =
                                tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(tcp)).await
                            else {
                                return;
                            };
                            let (_, session) = stream.get_ref();
                            let tls = Some((
                                session
                                    .protocol_version()
                                    .and_then(|v| v.as_str())
                                    .unwrap_or("TLS")
                                    .to_owned(),
                                session
                                    .negotiated_cipher_suite()
                                    .and_then(|c| c.suite().as_str())
                                    .unwrap_or_default()
                                    .to_owned(),
                            ));
                            let conn = Conn { peer, local, tls };
                            serve_conn(stream, conn, ctx, router, drain).await;
                        }
                        None => {
                            let conn = Conn { peer, local, tls: None };
                            serve_conn(tcp, conn, ctx, router, drain).await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(socket);
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "HTTP connections still open after the drain time; closing them"
        );
        conns.abort_all();
    }
}

async fn serve_conn<I>(
    io: I,
    conn: Conn,
    ctx: Arc<ListenerCtx>,
    router: axum::Router,
    mut drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ctx.spec().limits.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        let ctx = ctx.clone();
        let conn = conn.clone();
        async move {
            let started = std::time::Instant::now();
            let route = super::metrics::route_of(req.method(), req.uri().path());
            let resp = answer(req, conn, &ctx, router).await;
            ctx.rest
                .metrics
                .record(route, resp.status().as_u16(), started.elapsed());
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        }
        () = async { let _ = drain.wait_for(|d| *d).await; } => {
            served.as_mut().graceful_shutdown();
            let _ = served.await;
        }
    }
}

/// Answers one request: the concurrency limit, the router, a panic
/// answered 500, the unread rest of the entity drained.
async fn answer(
    mut req: Request<Incoming>,
    conn: Conn,
    ctx: &ListenerCtx,
    router: axum::Router,
) -> Response {
    let Ok(_permit) = ctx.requests.clone().try_acquire_owned() else {
        return Error::kind(
            ErrorKind::Unavailable,
            "too many requests in progress; try again shortly",
        )
        .into_response();
    };
    req.extensions_mut().insert(conn);
    let left = Arc::new(std::sync::Mutex::new(None));
    let req = req.map(|b| {
        axum::body::Body::new(Tracked {
            inner: Some(b),
            left: left.clone(),
        })
    });
    let handled = AssertUnwindSafe(router.oneshot(req)).catch_unwind().await;
    // A handler that answered without reading the whole entity (an error
    // found in the headers, a limit): read the rest, so that the
    // connection can take the client's next request.
    let unread = left.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(body) = unread {
        drain_unread(body).await;
    }
    match handled {
        Ok(Ok(resp)) => resp,
        Ok(Err(never)) => match never {},
        Err(panic) => {
            let what = koukan_chain::chain::ChainPanicked::from_payload(panic);
            tracing::error!(error = %what, "REST handler panicked");
            internal_error()
        }
    }
}

/// An entity left unread this large or larger is not read to its end:
/// the connection closes after the answer instead.
const DRAIN_MAX: u64 = 8 << 20;

/// The request entity, handed back when dropped before its end.
struct Tracked {
    inner: Option<Incoming>,
    left: Arc<std::sync::Mutex<Option<Incoming>>>,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(b) = self.inner.take()
            && !hyper::body::Body::is_end_stream(&b)
        {
            *self.left.lock().unwrap_or_else(|e| e.into_inner()) = Some(b);
        }
    }
}

async fn drain_unread(mut body: Incoming) {
    use http_body_util::BodyExt;
    if hyper::body::Body::size_hint(&body)
        .upper()
        .is_some_and(|n| n > DRAIN_MAX)
    {
        return;
    }
    let mut read = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        read += frame.data_ref().map_or(0, |d| d.len() as u64);
        if read > DRAIN_MAX {
            return;
        }
    }
}

fn internal_error() -> Response {
    Error::kind(
        ErrorKind::Internal,
        "internal error; the request may be retried",
    )
    .into_response()
}
