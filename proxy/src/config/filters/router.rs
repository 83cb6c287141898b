//! `router`: chooses each recipient's destination, or refuses it.

use std::sync::Arc;

use koukan_chain::{BoxTxService, TxContext};
use koukan_filters::router::{AddressList, RouterConfig, RouterLayer, RoutingPolicy};
use koukan_proto::config::v1 as pb;
use tower::Layer;

use super::{FilterFactory, FilterKind};
use crate::config::{destination, nonzero};

pub const KIND: FilterKind = FilterKind {
    name: "router",
    build: |f, _path, _config_file| match f {
        pb::filter::Filter::Router(r) => Some(Ok(Arc::new(Router(Arc::new(config(r)))))),
        _ => None,
    },
};

#[derive(Debug)]
struct Router(Arc<RouterConfig>);

impl FilterFactory for Router {
    fn wrap(&self, inner: BoxTxService, _ctx: &Arc<TxContext>) -> BoxTxService {
        koukan_chain::boxed(RouterLayer::new(self.0.clone()).layer(inner))
    }
}

fn config(r: &pb::RouterFilter) -> RouterConfig {
    use pb::routing_policy::Policy;
    let policy = r
        .policy
        .as_ref()
        .and_then(|p| p.policy.as_ref())
        .map(|p| match p {
            Policy::AddressList(a) => RoutingPolicy::AddressList(AddressList {
                domains: a.domains.iter().map(|d| d.to_lowercase()).collect(),
                prefixes: a.prefixes.iter().map(|d| d.to_lowercase()).collect(),
                delimiter: a.delimiter.chars().next(),
                destination: a.destination.as_ref().map(destination),
            }),
            Policy::DestDomain(d) => RoutingPolicy::DestDomain {
                endpoint: d.endpoint.clone(),
                port: nonzero(d.dest_port, 25) as u16,
            },
        });
    RouterConfig {
        policy,
        destination: r.destination.as_ref().map(destination),
    }
}
