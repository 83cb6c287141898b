//! The chain's service type and helpers shared by filters.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::lock::Mutex;
use tower::Service;
use tower::util::BoxService;

use crate::transaction::{Response, TxUpdate, UpdateResponse};

/// A per-transaction stack. Errors are answers, not `Err`: every filter and
/// terminal maps its failures to SMTP responses, so the error type is
/// uninhabited.
pub type BoxTxService = BoxService<TxUpdate, UpdateResponse, Infallible>;

/// What a filter or terminal implements.
pub trait TxService:
    Service<TxUpdate, Response = UpdateResponse, Error = Infallible> + Send + 'static
{
}

impl<S> TxService for S where
    S: Service<TxUpdate, Response = UpdateResponse, Error = Infallible> + Send + 'static
{
}

pub fn boxed<S>(s: S) -> BoxTxService
where
    S: TxService,
    S::Future: Send + 'static,
{
    BoxService::new(s)
}

/// A terminal (or stateful filter) that handles one update at a time with
/// `&mut self`: an upstream connection, a file being written.
pub trait Terminal: Send + 'static {
    fn update(&mut self, update: TxUpdate) -> BoxFuture<'_, UpdateResponse>;
}

/// Makes a [`Terminal`] a tower service. Tower futures must be `'static`,
/// so the terminal lives behind a lock that each call's future takes; the
/// updates of one transaction are sequential, so it is never contended.
pub struct TerminalService<T> {
    inner: Arc<Mutex<T>>,
}

impl<T: Terminal> TerminalService<T> {
    pub fn new(terminal: T) -> Self {
        Self {
            inner: Arc::new(Mutex::new(terminal)),
        }
    }
}

impl<T: Terminal> Service<TxUpdate> for TerminalService<T> {
    type Response = UpdateResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<UpdateResponse, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, update: TxUpdate) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.lock().await.update(update).await) })
    }
}

/// Recipients of one update split into those a filter answered itself and
/// those it forwards inward; [`Split::merge`] puts the inner responses back
/// in the client's order.
#[derive(Debug, Default)]
pub struct Split {
    /// For each recipient of the original update: its own answer, or `None`
    /// if it was forwarded.
    answered: Vec<Option<Response>>,
}

impl Split {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn answer(&mut self, resp: Response) {
        self.answered.push(Some(resp));
    }

    pub fn forward(&mut self) {
        self.answered.push(None);
    }

    /// Merges the responses of the forwarded recipients (in forwarding
    /// order) with the locally answered ones. Forwarded recipients the inner
    /// service left unanswered get a temporary failure rather than silence.
    pub fn merge(self, inner: Vec<Response>) -> Vec<Response> {
        let mut inner = inner.into_iter();
        self.answered
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    inner.next().unwrap_or_else(|| {
                        Response::new(451, "4.3.0 internal error: recipient not answered")
                    })
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_merges_in_client_order() {
        let mut s = Split::new();
        s.forward();
        s.answer(Response::new(550, "no"));
        s.forward();
        let merged = s.merge(vec![Response::new(250, "a"), Response::new(251, "b")]);
        let codes: Vec<u16> = merged.iter().map(|r| r.code).collect();
        assert_eq!(codes, [250, 550, 251]);
    }

    #[test]
    fn split_never_drops_a_recipient() {
        let mut s = Split::new();
        s.forward();
        s.forward();
        let merged = s.merge(vec![Response::new(250, "a")]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[1].code, 451);
    }
}
