//! Builds a transaction's stack from the snapshot current at MAIL time.

use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use koukan_chain::{
    BoxTxService, Ingress, Response, Terminal, TerminalService, TxContext, TxUpdate, UpdateResponse,
};
use koukan_filters::received_header::ReceivedHeaderLayer;
use koukan_filters::router::RouterLayer;
use koukan_smtp_server::TransactionFactory;
use tower::Layer;

use crate::endpoints::Dispatcher;
use crate::endpoints::exploder::Exploder;
use crate::endpoints::store_writer::{StoreTarget, StoreWriter};
use crate::runtime::{ChainSpec, FilterSpec, Runtime};
use crate::scheduler::StorageCtx;

pub fn new_tx_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Stacks the chain's filters over its terminal, first filter outermost.
pub fn build_stack(
    runtime: &Arc<Runtime>,
    chain: &ChainSpec,
    ctx: &Arc<TxContext>,
) -> BoxTxService {
    let mut svc = match (&chain.output_chain, &chain.exploder, &runtime.storage) {
        (Some(output), _, Some(storage)) => koukan_chain::boxed(TerminalService::new(
            StoreWriter::new(store_target(runtime, storage, output), ctx.clone()),
        )),
        (_, Some(spec), Some(storage)) => koukan_chain::boxed(TerminalService::new(Exploder::new(
            runtime.clone(),
            store_target(runtime, storage, &spec.output_chain),
            spec.clone(),
            ctx.clone(),
            storage.internal_errors.clone(),
        ))),
        // Validation refuses store-and-forward and the exploder without
        // storage.
        _ => koukan_chain::boxed(TerminalService::new(Dispatcher::new(
            runtime.endpoints.clone(),
            chain.default_destination.clone(),
        ))),
    };
    for f in chain.filters.iter().rev() {
        svc = match f {
            FilterSpec::Router(cfg) => {
                koukan_chain::boxed(RouterLayer::new(cfg.clone()).layer(svc))
            }
            FilterSpec::ReceivedHeader(cfg) => {
                koukan_chain::boxed(ReceivedHeaderLayer::new(cfg.clone(), ctx.clone()).layer(svc))
            }
            FilterSpec::MessageParse(cfg) => crate::message_parse::build(cfg, ctx, svc),
            #[cfg(test)]
            FilterSpec::Panic => koukan_chain::boxed(fault::Panics(svc)),
        };
    }
    svc
}

/// Where a chain that stores hands its transactions: the output chain's
/// retry and bounce settings decide what stored transactions carry.
fn store_target(runtime: &Runtime, storage: &StorageCtx, output: &str) -> Arc<StoreTarget> {
    let out = runtime.chain(output);
    Arc::new(StoreTarget {
        store: storage.store.clone(),
        scheduler: storage.scheduler.clone(),
        replica: storage.replica.clone(),
        output_chain: output.to_owned(),
        retry: out.and_then(|c| c.retry.clone()),
        notification: out.is_some_and(|c| c.notification.is_some()),
    })
}

/// The chain factory of one listener. It reads the running snapshot at
/// every MAIL, so a reload applies to the next transaction and never to
/// one in flight.
pub struct ListenerTransactions {
    pub address: std::net::SocketAddr,
    pub runtime: Arc<ArcSwap<Runtime>>,
}

/// Answers everything with a fixed reply: a listener whose sender or chain
/// vanished in a reload still gives clients a clear temporary error.
struct Refuse(Response);

impl Terminal for Refuse {
    fn update(&mut self, u: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        let r = UpdateResponse::fill(&u, &self.0);
        Box::pin(async move { r })
    }
}

impl TransactionFactory for ListenerTransactions {
    fn new_transaction(&self, ingress: Ingress) -> (Arc<TxContext>, BoxTxService) {
        let runtime = self.runtime.load_full();
        let spec = runtime.listeners.iter().find(|l| l.address == self.address);
        let (sender, tag) = spec
            .map(|l| (l.sender.clone(), l.tag.clone()))
            .unwrap_or_default();
        let ctx = Arc::new(TxContext::new(new_tx_id(), ingress, &sender, &tag));
        let svc = match runtime.chain_for(&sender, &tag) {
            Some(chain) => build_stack(&runtime, chain, &ctx),
            None => koukan_chain::boxed(TerminalService::new(Refuse(Response::new(
                451,
                "4.3.5 no chain configured for this listener",
            )))),
        };
        (ctx, svc)
    }
}

/// A filter with a bug on purpose, for the tests that show a panic inside
/// a chain costs one transaction (or one attempt) its answer and nothing
/// more. It panics on a recipient whose address starts with `panic` and on
/// a body chunk containing `PANIC`; everything else passes through.
#[cfg(test)]
pub(crate) mod fault {
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
}
