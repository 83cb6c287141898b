//! The REST API's metrics: requests by route and status, and how long
//! they took (hanging GETs included: their time is mostly waiting).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `create`, `read`, `patch`, `upload`, `cancel`, `openapi`, `other`.
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

fn histogram() -> Histogram {
    // 1 ms to 30 s (the longest hanging GET).
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// Shared by every HTTP listener of the process, kept across reloads.
#[derive(Clone)]
pub struct RestMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for RestMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(histogram),
        }
    }
}

impl RestMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rest_requests",
            "REST API requests answered, by route and HTTP status",
            self.requests.clone(),
        );
        registry.register(
            "rest_request_duration_seconds",
            "Time from a REST request's head to its answer, by route (hanging GETs wait)",
            self.durations.clone(),
        );
    }

    pub fn record(&self, route: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.durations
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }
}

/// The route a request is for, from its method and path (before routing,
/// so that refused requests count too).
pub fn route_of(method: &axum::http::Method, path: &str) -> &'static str {
    use axum::http::Method;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (&Method::POST, ["senders", _, "transactions"]) => "create",
        (&Method::GET, ["transactions", _]) => "read",
        (&Method::PATCH, ["transactions", _]) => "patch",
        (&Method::PUT, ["transactions", _, "body"])
        | (&Method::PUT, ["transactions", _, "blob", _]) => "upload",
        (&Method::POST, ["transactions", _, "cancel"]) => "cancel",
        (&Method::GET, ["openapi.json"]) => "openapi",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route_of(&Method::POST, "/senders/a/transactions"), "create");
        assert_eq!(route_of(&Method::GET, "/transactions/x"), "read");
        assert_eq!(route_of(&Method::PATCH, "/transactions/x"), "patch");
        assert_eq!(route_of(&Method::PUT, "/transactions/x/body"), "upload");
        assert_eq!(route_of(&Method::PUT, "/transactions/x/blob/b"), "upload");
        assert_eq!(route_of(&Method::POST, "/transactions/x/cancel"), "cancel");
        assert_eq!(route_of(&Method::GET, "/openapi.json"), "openapi");
        assert_eq!(route_of(&Method::DELETE, "/transactions/x"), "other");
        assert_eq!(route_of(&Method::GET, "/transactions/x/body"), "other");
    }
}
