//! `received_header`: prepends a Received: trace header.

use std::sync::Arc;

use koukan_chain::{BoxTxService, TxContext};
use koukan_filters::received_header::{ReceivedHeaderConfig, ReceivedHeaderLayer};
use koukan_proto::config::v1 as pb;
use tower::Layer;

use super::{FilterFactory, FilterKind};

pub const KIND: FilterKind = FilterKind {
    name: "received_header",
    build: |f, _path, _config_file| match f {
        pb::filter::Filter::ReceivedHeader(r) => Some(Ok(Arc::new(ReceivedHeader(Arc::new(
            ReceivedHeaderConfig {
                received_hostname: r.received_hostname.clone(),
            },
        ))))),
        _ => None,
    },
};

#[derive(Debug)]
struct ReceivedHeader(Arc<ReceivedHeaderConfig>);

impl FilterFactory for ReceivedHeader {
    fn wrap(&self, inner: BoxTxService, ctx: &Arc<TxContext>) -> BoxTxService {
        koukan_chain::boxed(ReceivedHeaderLayer::new(self.0.clone(), ctx.clone()).layer(inner))
    }
}
