//! What lives for the whole process, apart from the config snapshots: the
//! queue (store, replica id, scheduler wake-up), the AUTH failure counts,
//! the metrics, and the state of endpoints (connection pools) and of the
//! DNS resolver (its cache), kept across reloads for as long as their
//! config is unchanged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use koukan_proto::config::v1 as pb;
use koukan_smtp_client::{PoolMetrics, Resolver};
use koukan_smtp_server::{AuthFailureTracker, SmtpMetrics};

use crate::queue::Queue;
use crate::queue::metrics::DeliveryMetrics;
use crate::snapshot::{EndpointState, Snapshot};

pub struct Process {
    /// None when the bootstrap configures no storage (relay only).
    pub queue: Option<Arc<Queue>>,
    /// Shared by every SMTP listener and kept across reloads (a reload
    /// must not hand a guesser fresh attempts).
    pub auth_tracker: Arc<AuthFailureTracker>,
    pub smtp_metrics: Arc<SmtpMetrics>,
    /// The queue's when there is one (so both count into one family).
    pub delivery_metrics: DeliveryMetrics,
    /// Every endpoint's connection pool counts into it, across reloads.
    pub pool_metrics: PoolMetrics,
    /// The state the running snapshot uses, for the next one to take.
    /// Never held across an await.
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    endpoints: HashMap<String, Arc<EndpointState>>,
    resolver: Option<(Option<pb::Dns>, Resolver)>,
}

impl Process {
    pub fn new(
        queue: Option<Arc<Queue>>,
        auth_tracker: Arc<AuthFailureTracker>,
        smtp_metrics: Arc<SmtpMetrics>,
    ) -> Self {
        Self {
            delivery_metrics: queue
                .as_ref()
                .map_or_else(DeliveryMetrics::default, |q| q.metrics.clone()),
            queue,
            auth_tracker,
            smtp_metrics,
            pool_metrics: PoolMetrics::new(),
            kept: Mutex::default(),
        }
    }

    /// The running state of endpoint `name`, if it was built from this
    /// very config.
    pub fn endpoint(
        &self,
        name: &str,
        config: &pb::Endpoint,
        config_file: &Path,
    ) -> Option<Arc<EndpointState>> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.endpoints
            .get(name)
            .filter(|s| s.built_from(config, config_file))
            .cloned()
    }

    /// The running resolver, if it was built from this `dns` config.
    pub fn resolver(&self, dns: &Option<pb::Dns>) -> Option<Resolver> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.resolver
            .as_ref()
            .filter(|(built_from, _)| built_from == dns)
            .map(|(_, r)| r.clone())
    }

    /// Keeps the state of the snapshot just applied for the next build.
    /// What it no longer uses is let go here: an endpoint that changed or
    /// went away keeps its pool only while transactions of an older
    /// snapshot still hold it, then closes its idle connections.
    pub fn keep(&self, snapshot: &Snapshot) {
        let endpoints = snapshot.chains.endpoints();
        let (dns, resolver) = endpoints.resolver();
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.endpoints = endpoints
            .states()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        kept.resolver = Some((dns.clone(), resolver.clone()));
    }
}
