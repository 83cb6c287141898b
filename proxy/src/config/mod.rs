//! The config, parsed into the domain types the proxy runs on: each
//! conversion from the proto schema next to the component's spec. Pure
//! functions of the validated bootstrap, except the few that read files
//! the config names (certificates, secrets), which report failures with
//! the field path.
//!
//! What is here is immutable and shared by `Arc` across the transactions
//! of one snapshot ([`crate::snapshot`]); nothing here lives for the
//! process.

pub mod endpoint;
pub mod filters;
pub mod listener;
pub mod retry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use koukan_chain::{Destination, HostPort, Hosts};
use koukan_proto::config::v1 as pb;
use koukan_proto::load::ConfigError;

use filters::FilterFactory;
use retry::RetryPolicy;

/// One chain: its filters, outermost first, and how it delivers.
#[derive(Clone, Debug)]
pub struct ChainSpec {
    pub name: String,
    pub filters: Vec<Arc<dyn FilterFactory>>,
    pub delivery: Delivery,
    /// Retries of transactions this chain delivers from storage.
    pub retry: Option<RetryPolicy>,
    pub notification: Option<NotificationSpec>,
}

/// How a chain delivers: the one terminal of its stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Cut-through to the upstream the recipients are routed to;
    /// `default` for those no router routed (none: they are refused).
    Relay { default: Option<Arc<Destination>> },
    /// Into the store, delivered later through `output_chain`.
    StoreAndForward { output_chain: String },
    /// One upstream transaction per recipient, falling back to storage.
    Explode(Arc<ExploderSpec>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExploderSpec {
    pub output_chain: String,
    /// Submission semantics: anything not permanently refused is accepted
    /// and stored.
    pub msa: bool,
    pub rcpt_timeout: Duration,
    pub data_timeout: Duration,
    /// Upstream transactions one inbound transaction runs at once (one
    /// per recipient); see the exploder for who waits and who is over the
    /// bound at once.
    pub max_upstreams: usize,
}

/// Upstream transactions one exploded transaction runs at once, unless
/// configured (`exploder.max_concurrent_upstreams`).
pub const DEFAULT_MAX_UPSTREAMS: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationSpec {
    /// The chain that delivers bounces (the notification chain's own
    /// output chain when it stores and forwards).
    pub output_chain: String,
    pub mailer_daemon: Option<String>,
}

/// A sender: its default chain and the chains of its tags.
#[derive(Debug)]
pub struct SenderSpec {
    pub chain: String,
    pub tags: HashMap<String, String>,
}

impl SenderSpec {
    pub fn from_pb(s: &pb::Sender) -> Self {
        Self {
            chain: s.chain.clone(),
            tags: s
                .tags
                .iter()
                .filter(|t| !t.chain.is_empty())
                .map(|t| (t.name.clone(), t.chain.clone()))
                .collect(),
        }
    }

    /// The tag's chain if it names one, else the sender's.
    pub fn chain_for(&self, tag: &str) -> &str {
        self.tags.get(tag).unwrap_or(&self.chain)
    }
}

impl ChainSpec {
    /// `all` is every chain of the snapshot (a notification names a chain
    /// whose own output chain delivers the bounces). `path` is the chain's
    /// field path, for errors; `config_file` anchors relative paths.
    pub fn from_pb(
        c: &pb::Chain,
        all: &[pb::Chain],
        path: &str,
        config_file: &std::path::Path,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut filters = Vec::new();
        let mut errors = Vec::new();
        for (i, f) in c.filters.iter().enumerate() {
            match filters::build(f, &format!("{path}.filters[{i}]"), config_file) {
                Ok(f) => filters.push(f),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let relay = |endpoint: &str| Delivery::Relay {
            default: (!endpoint.is_empty()).then(|| {
                Arc::new(Destination {
                    endpoint: endpoint.to_owned(),
                    hosts: Hosts::EndpointDefault,
                })
            }),
        };
        use pb::chain::Delivery as D;
        let delivery = match &c.delivery {
            None => relay(&c.endpoint),
            Some(D::Relay(r)) => relay(&r.endpoint),
            Some(D::StoreAndForward(sf)) => Delivery::StoreAndForward {
                output_chain: sf.output_chain.clone(),
            },
            Some(D::Exploder(x)) => Delivery::Explode(Arc::new(exploder(x))),
        };
        let notification = c.notification.as_ref().map(|n| NotificationSpec {
            output_chain: all
                .iter()
                .find(|x| x.name == n.chain)
                .and_then(|x| match &x.delivery {
                    Some(D::StoreAndForward(sf)) => Some(sf.output_chain.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| n.chain.clone()),
            mailer_daemon: (!n.mailer_daemon.is_empty()).then(|| n.mailer_daemon.clone()),
        });
        Ok(Self {
            name: c.name.clone(),
            filters,
            delivery,
            retry: c.retry.as_ref().map(RetryPolicy::from_pb),
            notification,
        })
    }
}

fn exploder(x: &pb::Exploder) -> ExploderSpec {
    let (rcpt, data) = if x.msa { (5, 30) } else { (30, 300) };
    ExploderSpec {
        output_chain: x.output_chain.clone(),
        msa: x.msa,
        rcpt_timeout: duration(&x.rcpt_timeout, Duration::from_secs(rcpt)),
        data_timeout: duration(&x.data_timeout, Duration::from_secs(data)),
        max_upstreams: nonzero(x.max_concurrent_upstreams as usize, DEFAULT_MAX_UPSTREAMS),
    }
}

/// A proto duration, or `default` when unset or zero (the schema's "0
/// means the default" convention).
pub fn duration(d: &Option<pbjson_types::Duration>, default: Duration) -> Duration {
    match d {
        Some(d) if d.seconds > 0 || d.nanos > 0 => {
            Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
        }
        _ => default,
    }
}

/// `v`, or `default` when it is zero (unset in proto3).
pub fn nonzero<T: Default + PartialEq>(v: T, default: T) -> T {
    if v == T::default() { default } else { v }
}

/// A path written in the config: relative to the config file's directory.
pub fn resolve(config_file: &std::path::Path, p: &str) -> std::path::PathBuf {
    koukan_proto::load::resolve_path(config_file, p)
}

pub fn host_ports(list: &[pb::HostPort]) -> Vec<HostPort> {
    list.iter()
        .map(|h| HostPort {
            host: h.host.clone(),
            port: nonzero(h.port, 25) as u16,
        })
        .collect()
}

pub fn destination(d: &pb::Destination) -> Arc<Destination> {
    Arc::new(Destination {
        endpoint: d.endpoint.clone(),
        hosts: if d.host_list.is_empty() {
            Hosts::EndpointDefault
        } else {
            Hosts::Static(host_ports(&d.host_list))
        },
    })
}
