//! Prometheus metrics of upstream connection reuse ([`PoolMetrics`]).
//!
//! One [`PoolMetrics`] per process, handed to every [`crate::ConnectionPool`]
//! with the name of the endpoint the pool serves; the pools count into it
//! by that label. Several pools may share a label (a config reload builds
//! new pools while the old snapshot's still drain), so the idle gauge is
//! moved by increments and decrements, never set: it is the sum over every
//! pool of the endpoint that is alive.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscardLabels {
    pub endpoint: String,
    /// [`DiscardReason::as_str`].
    pub reason: String,
}

/// Why the pool closed a connection instead of keeping it or handing it
/// out. Connections a transaction itself closes (an I/O error, a timeout,
/// a 421 mid-transaction) never reach the pool and are not counted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiscardReason {
    /// Idle longer than `idle_timeout` (or reuse is off by a zero
    /// `idle_timeout`).
    IdleTimeout,
    /// It had carried `max_transactions_per_connection` transactions.
    MaxTransactions,
    /// Unusable: closed by the peer while idle, a failed or refused RSET
    /// before reuse, or a reused session that failed its first MAIL.
    Broken,
    /// The destination already had `max_idle_per_destination` idle
    /// sessions (the oldest went), or reuse is off by a zero
    /// `max_idle_per_destination`.
    PoolFull,
    /// The pool itself went away (its config snapshot was replaced or
    /// the process is stopping) with the session idle in it.
    PoolDropped,
}

impl DiscardReason {
    pub const ALL: [DiscardReason; 5] = [
        DiscardReason::IdleTimeout,
        DiscardReason::MaxTransactions,
        DiscardReason::Broken,
        DiscardReason::PoolFull,
        DiscardReason::PoolDropped,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscardReason::IdleTimeout => "idle_timeout",
            DiscardReason::MaxTransactions => "max_transactions",
            DiscardReason::Broken => "broken",
            DiscardReason::PoolFull => "pool_full",
            DiscardReason::PoolDropped => "pool_dropped",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters and gauges of every connection pool, labelled by endpoint.
/// Cheap to clone: clones count into the same families.
#[derive(Clone, Debug, Default)]
pub struct PoolMetrics {
    opened: Family<EndpointLabels, Counter>,
    reused: Family<EndpointLabels, Counter>,
    discarded: Family<DiscardLabels, Counter>,
    idle: Family<EndpointLabels, Gauge>,
}

impl PoolMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the families under the `smtp_client` prefix (below the
    /// registry's own, `koukan`): `koukan_smtp_client_connections_opened_total`,
    /// `..._reused_total`, `..._discarded_total` and
    /// `koukan_smtp_client_connections_idle`. Counters get their `_total`
    /// suffix from the encoder.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("smtp_client");
        r.register(
            "connections_opened",
            "Upstream SMTP connections opened by pooled clients",
            self.opened.clone(),
        );
        r.register(
            "connections_reused",
            "Idle upstream SMTP connections taken from the pool for a transaction",
            self.reused.clone(),
        );
        r.register(
            "connections_discarded",
            "Upstream SMTP connections the pool closed instead of keeping or reusing, by reason",
            self.discarded.clone(),
        );
        r.register(
            "connections_idle",
            "Upstream SMTP connections idle in a pool now",
            self.idle.clone(),
        );
    }

    /// Connections opened for `endpoint` so far.
    pub fn opened(&self, endpoint: &str) -> u64 {
        self.opened.get_or_create(&labels(endpoint)).get()
    }

    /// Idle connections taken for a transaction to `endpoint` so far.
    pub fn reused(&self, endpoint: &str) -> u64 {
        self.reused.get_or_create(&labels(endpoint)).get()
    }

    /// Connections of `endpoint` discarded for `reason` so far.
    pub fn discarded(&self, endpoint: &str, reason: DiscardReason) -> u64 {
        self.discarded
            .get_or_create(&discard_labels(endpoint, reason))
            .get()
    }

    /// Connections of `endpoint` idle in its pools now.
    pub fn idle(&self, endpoint: &str) -> i64 {
        self.idle.get_or_create(&labels(endpoint)).get()
    }

    /// The handles one pool counts with. Creating every label up front
    /// also makes each series exist (at 0) from the start, so a rate over
    /// it is defined before the first event.
    pub(crate) fn endpoint(&self, endpoint: &str) -> Arc<EndpointMetrics> {
        let l = labels(endpoint);
        Arc::new(EndpointMetrics {
            opened: self.opened.get_or_create(&l).clone(),
            reused: self.reused.get_or_create(&l).clone(),
            discarded: DiscardReason::ALL.map(|r| {
                self.discarded
                    .get_or_create(&discard_labels(endpoint, r))
                    .clone()
            }),
            idle: self.idle.get_or_create(&l).clone(),
        })
    }
}

fn labels(endpoint: &str) -> EndpointLabels {
    EndpointLabels {
        endpoint: endpoint.to_owned(),
    }
}

fn discard_labels(endpoint: &str, reason: DiscardReason) -> DiscardLabels {
    DiscardLabels {
        endpoint: endpoint.to_owned(),
        reason: reason.as_str().to_owned(),
    }
}

/// One endpoint's series, shared by its pool and the background tasks the
/// pool spawns (which may outlive it).
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    pub opened: Counter,
    pub reused: Counter,
    discarded: [Counter; 5],
    pub idle: Gauge,
}

impl EndpointMetrics {
    pub fn discarded(&self, reason: DiscardReason, n: usize) {
        if n > 0 {
            self.discarded[reason.index()].inc_by(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn reasons_index_their_own_counter() {
        for (i, r) in DiscardReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    #[test]
    fn registers_and_encodes() {
        let m = PoolMetrics::new();
        let e = m.endpoint("mx");
        e.opened.inc();
        e.discarded(DiscardReason::IdleTimeout, 2);
        e.idle.inc();
        let mut reg = Registry::with_prefix("koukan");
        m.register(&mut reg);
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        for line in [
            r#"koukan_smtp_client_connections_opened_total{endpoint="mx"} 1"#,
            r#"koukan_smtp_client_connections_reused_total{endpoint="mx"} 0"#,
            r#"koukan_smtp_client_connections_discarded_total{endpoint="mx",reason="idle_timeout"} 2"#,
            r#"koukan_smtp_client_connections_discarded_total{endpoint="mx",reason="pool_dropped"} 0"#,
            r#"koukan_smtp_client_connections_idle{endpoint="mx"} 1"#,
            "# TYPE koukan_smtp_client_connections_idle gauge",
            "# TYPE koukan_smtp_client_connections_discarded counter",
        ] {
            assert!(out.contains(line), "{line} missing:\n{out}");
        }
        // A second pool of the same endpoint counts into the same series.
        m.endpoint("mx").opened.inc();
        assert_eq!(m.opened("mx"), 2);
    }
}
