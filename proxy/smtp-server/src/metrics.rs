//! Prometheus metrics of the inbound SMTP side.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub listener: String,
    /// `delivered`, `rejected`, `tempfail`, `mail_rejected`, `aborted`,
    /// `too_big`, `line_too_long`, `timeout`, `internal_error`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub listener: String,
    /// `unknown`, `syntax`, `sequence`, `line_too_long`, `bad_bytes`,
    /// `param`, `not_implemented`, `auth`; `data_line_too_long` (a message
    /// refused for a line over `max_data_line_length`, once per message)
    /// and `bdat_size_out_of_range`; `auth_locked` (AUTH during a
    /// lockout).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    /// Where the bug was caught: `smtp_chain` (a filter or terminal of an
    /// SMTP transaction), `smtp_session` (the session itself), `exploder`
    /// (an upstream transaction of the fan-out), `scheduler` (a delivery
    /// attempt).
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthScopeLabels {
    pub listener: String,
    /// `address` (a client address or IPv6 /64) or `user`.
    pub scope: String,
}

/// `koukan_internal_errors_total{component}`: panics caught, each of which
/// ended one transaction or delivery attempt, never the process. Cheap to
/// clone (the clones count into the same family): the SMTP side owns it,
/// the delivery side (exploder upstreams, scheduler attempts) gets a clone.
#[derive(Clone, Debug, Default)]
pub struct InternalErrors(Family<ComponentLabels, Counter>);

impl InternalErrors {
    pub fn count(&self, component: &str) {
        self.labelled(component).inc();
    }

    /// Panics counted for `component` so far.
    pub fn get(&self, component: &str) -> u64 {
        self.labelled(component).get()
    }

    fn labelled(&self, component: &str) -> Counter {
        self.0
            .get_or_create(&ComponentLabels {
                component: component.to_owned(),
            })
            .clone()
    }
}

/// Counters and gauges shared by every listener (labelled by listener).
/// Cheap to share behind an `Arc`; all updates are atomic.
#[derive(Debug, Default)]
pub struct SmtpMetrics {
    pub connections_total: Family<ListenerLabels, Counter>,
    pub connections_active: Family<ListenerLabels, Gauge>,
    /// Connections turned away at the `max_connections` limit.
    pub connections_refused_total: Family<ListenerLabels, Counter>,
    pub transactions_total: Family<OutcomeLabels, Counter>,
    /// Message octets (after dot-unstuffing) received to the end of data.
    pub messages_bytes_total: Family<ListenerLabels, Counter>,
    pub commands_rejected_total: Family<RejectLabels, Counter>,
    /// Registered without the `smtp_` prefix: the delivery side counts
    /// into it too.
    pub internal_errors: InternalErrors,
    /// AUTH with wrong credentials (answered 535), per listener.
    pub auth_failures_total: Family<ListenerLabels, Counter>,
    /// Lockouts started, by the listener of the failure that reached the
    /// limit and by scope.
    pub auth_lockouts_total: Family<AuthScopeLabels, Counter>,
    /// AUTH refused with 454 during a lockout (no password checked).
    pub auth_lockout_refusals_total: Family<AuthScopeLabels, Counter>,
}

impl SmtpMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers every metric under the `smtp_` prefix. Counters get their
    /// `_total` suffix from the encoder.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "internal_errors",
            "Panics caught by component; each ended one transaction or delivery attempt",
            self.internal_errors.0.clone(),
        );
        let r = registry.sub_registry_with_prefix("smtp");
        r.register(
            "connections",
            "Inbound SMTP connections accepted",
            self.connections_total.clone(),
        );
        r.register(
            "connections_active",
            "Inbound SMTP connections open now",
            self.connections_active.clone(),
        );
        r.register(
            "connections_refused",
            "Inbound SMTP connections refused at the connection limit",
            self.connections_refused_total.clone(),
        );
        r.register(
            "transactions",
            "Inbound SMTP transactions by outcome",
            self.transactions_total.clone(),
        );
        r.register(
            "messages_bytes",
            "Message octets received",
            self.messages_bytes_total.clone(),
        );
        r.register(
            "commands_rejected",
            "Client commands rejected locally, by reason",
            self.commands_rejected_total.clone(),
        );
        r.register(
            "auth_failures",
            "AUTH attempts with wrong credentials",
            self.auth_failures_total.clone(),
        );
        r.register(
            "auth_lockouts",
            "AUTH lockouts started, by scope (address or user)",
            self.auth_lockouts_total.clone(),
        );
        r.register(
            "auth_lockout_refusals",
            "AUTH refused during a lockout, by scope",
            self.auth_lockout_refusals_total.clone(),
        );
    }

    pub(crate) fn listener(name: &str) -> ListenerLabels {
        ListenerLabels {
            listener: name.to_owned(),
        }
    }

    pub(crate) fn transaction(&self, listener: &str, outcome: &str) {
        self.transactions_total
            .get_or_create(&OutcomeLabels {
                listener: listener.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub(crate) fn auth_scope(listener: &str, scope: &str) -> AuthScopeLabels {
        AuthScopeLabels {
            listener: listener.to_owned(),
            scope: scope.to_owned(),
        }
    }

    pub(crate) fn rejected(&self, listener: &str, reason: &str) {
        self.commands_rejected_total
            .get_or_create(&RejectLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_encodes() {
        let m = SmtpMetrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.connections_total
            .get_or_create(&SmtpMetrics::listener("in"))
            .inc();
        m.transaction("in", "delivered");
        m.rejected("in", "unknown");
        m.internal_errors.count("scheduler");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("smtp_connections_total{listener=\"in\"} 1"),
            "{out}"
        );
        assert!(out.contains("smtp_transactions_total{listener=\"in\",outcome=\"delivered\"} 1"));
        assert!(out.contains("smtp_commands_rejected_total{listener=\"in\",reason=\"unknown\"} 1"));
        assert!(out.contains("internal_errors_total{component=\"scheduler\"} 1"));
    }
}
