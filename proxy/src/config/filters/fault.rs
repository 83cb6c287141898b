//! A filter with a bug on purpose, for the tests that show a panic inside
//! a chain costs one transaction (or one attempt) its answer and nothing
//! more. It panics on a recipient whose address starts with `panic` and on
//! a body chunk containing `PANIC`; everything else passes through.
use std::convert::Infallible;
use std::task::{Context, Poll};

use koukan_chain::{BoxTxService, TxUpdate, UpdateResponse};
use tower::Service;

pub struct Panics(pub BoxTxService);

impl Service<TxUpdate> for Panics {
    type Response = UpdateResponse;
    type Error = Infallible;
    type Future = <BoxTxService as Service<TxUpdate>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, u: TxUpdate) -> Self::Future {
        if u.rcpt_to
            .iter()
            .any(|r| r.mailbox.address.starts_with("panic"))
        {
            panic!("filter bug on RCPT (on purpose)");
        }
        if u.body
            .as_ref()
            .is_some_and(|b| b.data.windows(5).any(|w| w == b"PANIC"))
        {
            panic!("filter bug on the body (on purpose)");
        }
        self.0.call(u)
    }
}

/// The factory tests put first in a chain.
#[derive(Debug)]
pub struct PanicFilter;

impl super::FilterFactory for PanicFilter {
    fn wrap(
        &self,
        inner: BoxTxService,
        _ctx: &std::sync::Arc<koukan_chain::TxContext>,
    ) -> BoxTxService {
        koukan_chain::boxed(Panics(inner))
    }
}
