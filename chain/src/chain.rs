//! The chain's service type and helpers shared by filters.

use std::any::Any;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::lock::Mutex;
use tower::util::BoxService;
use tower::{Service, ServiceExt};

use crate::transaction::{Ingress, Response, TxContext, TxUpdate, UpdateResponse};

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

/// Builds the chain of each new transaction: what a listener is handed
/// (never the whole config), at MAIL time. It takes the [`Ingress`] rather
/// than an SMTP session so that every way in (SMTP, the REST API) shares
/// one factory type and the chain sees where the message came from.
pub trait TransactionFactory: Send + Sync + 'static {
    /// Returns the context and the per-transaction chain, already bound
    /// to the config current at that moment.
    fn new_transaction(&self, ingress: Ingress) -> (Arc<TxContext>, BoxTxService);
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

/// A filter or terminal panicked while handling an update. The stack's
/// state is unknown afterwards: the caller must drop it and answer what the
/// update carried with [`Response::internal_error`].
#[derive(Debug, thiserror::Error)]
#[error("the chain panicked: {message}")]
pub struct ChainPanicked {
    /// The panic's message, when it was a string (it usually is).
    pub message: String,
}

impl ChainPanicked {
    /// From what `catch_unwind` returned.
    pub fn from_payload(payload: Box<dyn Any + Send>) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Self { message }
    }
}

/// Sends one update through a stack, catching a panic anywhere inside it
/// (in `poll_ready`, in `call` or in the future it returns), so that a bug
/// in one filter costs one transaction its answer, never the task (and
/// with it the client's connection or a delivery's lease) that runs it.
///
/// Unwind safety: on `Err` the stack may be half-updated, which is why the
/// caller must not use it again; nothing else is shared with it mutably.
pub async fn call_caught<S>(
    stack: &mut S,
    update: TxUpdate,
) -> Result<UpdateResponse, ChainPanicked>
where
    S: Service<TxUpdate, Response = UpdateResponse, Error = Infallible>,
{
    let call = async {
        let Ok(svc) = stack.ready().await;
        let Ok(resp) = svc.call(update).await;
        resp
    };
    AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .map_err(ChainPanicked::from_payload)
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

    struct Panics;

    impl Terminal for Panics {
        fn update(&mut self, u: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
            Box::pin(async move {
                if u.body.is_some() {
                    panic!("body panics on purpose");
                }
                UpdateResponse::fill(&u, &Response::new(250, "ok"))
            })
        }
    }

    #[tokio::test]
    async fn a_panic_inside_the_stack_is_returned_not_propagated() {
        let mut svc = crate::boxed(TerminalService::new(Panics));
        let mail = call_caught(&mut svc, TxUpdate::mail(crate::Mailbox::new("a@b")))
            .await
            .unwrap();
        assert_eq!(mail.mail.unwrap().code, 250);
        let err = call_caught(&mut svc, TxUpdate::body("x", true))
            .await
            .unwrap_err();
        assert_eq!(err.message, "body panics on purpose");
        // A formatted panic message comes through too.
        struct Formats;
        impl Service<TxUpdate> for Formats {
            type Response = UpdateResponse;
            type Error = Infallible;
            type Future = BoxFuture<'static, Result<UpdateResponse, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                panic!("not ready: {}", 42)
            }
            fn call(&mut self, _: TxUpdate) -> Self::Future {
                unreachable!()
            }
        }
        let err = call_caught(&mut Formats, TxUpdate::default())
            .await
            .unwrap_err();
        assert_eq!(err.message, "not ready: 42");
    }

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
