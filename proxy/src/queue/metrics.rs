//! Delivery metrics: what happened to each upstream transaction, each
//! exploded recipient, the bounces, and the queue's depth by state. Cheap
//! to clone (clones count into the same families); registered once by the
//! server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use koukan_chain::ReplyClass;
use koukan_storage::QueueCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub endpoint: String,
    /// `ok`, `temp` or `perm`: the class of the reply that ended the
    /// upstream transaction.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `delivered`, `stored`, `refused`, `timeout`, `over_bound`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `waiting`, `due`, `inflight`, `final`.
    pub state: &'static str,
}

/// What an exploded recipient came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// The upstream accepted it while the client waited.
    Delivered,
    /// Stored for a later attempt (msa, or mixed results).
    Stored,
    /// Refused with the upstream's reply (or the chain's).
    Refused,
    /// No upstream reply in time, passed back as 451 (mx).
    Timeout,
    /// Over the fan-out bound, refused for now (mx 452 4.5.3).
    OverBound,
}

impl RecipientOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Stored => "stored",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::OverBound => "over_bound",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DeliveryMetrics {
    attempts: Family<AttemptLabels, Counter>,
    exploder: Family<OutcomeLabels, Counter>,
    bounces: Counter,
    queue: Family<StateLabels, Gauge>,
}

impl DeliveryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "delivery_attempts",
            "Upstream transactions by endpoint and the class of the reply that ended them",
            self.attempts.clone(),
        );
        registry.register(
            "exploder_recipients",
            "Recipients of exploded transactions by outcome",
            self.exploder.clone(),
        );
        registry.register("bounces", "Bounces (DSNs) queued", self.bounces.clone());
        registry.register(
            "queue_transactions",
            "Stored transactions by state, read from the store at each scrape",
            self.queue.clone(),
        );
    }

    pub fn attempt(&self, endpoint: &str, class: ReplyClass) {
        self.attempts
            .get_or_create(&AttemptLabels {
                endpoint: endpoint.to_owned(),
                result: class.as_str(),
            })
            .inc();
    }

    pub fn exploded(&self, outcome: RecipientOutcome) {
        self.exploder
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn bounced(&self) {
        self.bounces.inc();
    }

    /// Sets the queue depth gauges from a reading of the store.
    pub fn queue_depth(&self, c: &QueueCounts) {
        for (state, n) in [
            ("waiting", c.waiting),
            ("due", c.due),
            ("inflight", c.inflight),
            ("final", c.final_),
        ] {
            self.queue
                .get_or_create(&StateLabels { state })
                .set(n as i64);
        }
    }
}
