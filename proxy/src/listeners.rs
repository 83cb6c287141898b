//! The listeners of the running config, their reload, and the factory
//! that opens each transaction's chain on the snapshot current at MAIL.
//!
//! Listeners are keyed by address: one whose address is unchanged across a
//! reload keeps its socket (no refused connections) and takes the new
//! session config for new connections; a removed one stops accepting and
//! drains its sessions; a new one is bound before the new config is
//! committed, so a port that cannot be bound refuses the whole reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use koukan_smtp_server::{SessionConfig, SmtpMetrics};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use koukan_chain::{BoxTxService, Ingress, Response, TerminalService, TxContext};
use koukan_smtp_server::TransactionFactory;

use crate::config::listener::{HttpListenerSpec, ListenerKind};
use crate::rest::{ListenerCtx, Rest};
use crate::snapshot::{Refuse, Snapshot};

pub fn new_tx_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The chain factory of one listener. It reads the running snapshot at
/// every MAIL, so a reload applies to the next transaction and never to
/// one in flight.
pub struct ListenerTransactions {
    pub address: std::net::SocketAddr,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
}

impl TransactionFactory for ListenerTransactions {
    fn new_transaction(&self, ingress: Ingress) -> (Arc<TxContext>, BoxTxService) {
        let snapshot = self.snapshot.load_full();
        let spec = snapshot
            .listeners
            .iter()
            .find(|l| l.address == self.address);
        let (sender, tag) = spec
            .and_then(|l| l.sender_and_tag())
            .map(|(s, t)| (s.to_owned(), t.to_owned()))
            .unwrap_or_default();
        let ctx = Arc::new(TxContext::new(new_tx_id(), ingress, &sender, &tag));
        let svc = match snapshot.chain_for(&sender, &tag) {
            Some(chain) => snapshot.chains.stack(chain, &ctx),
            None => koukan_chain::boxed(TerminalService::new(Refuse(Response::new(
                451,
                "4.3.5 no chain configured for this listener",
            )))),
        };
        (ctx, svc)
    }
}

/// A running listener's config channel: new sessions or requests take
/// what was sent last.
enum Config {
    Smtp(watch::Sender<Arc<SessionConfig>>),
    Http(watch::Sender<Arc<HttpListenerSpec>>),
}

struct Running {
    name: String,
    config: Config,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct ListenerSet {
    running: HashMap<SocketAddr, Running>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<SmtpMetrics>,
    /// The REST API's state, for HTTP listeners (there is none without
    /// storage, and validation then refuses HTTP listeners).
    rest: Option<Arc<Rest>>,
}

/// Sockets bound for a snapshot that is not applied yet.
pub struct Bound(HashMap<SocketAddr, TcpListener>);

impl ListenerSet {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<SmtpMetrics>,
        rest: Option<Arc<Rest>>,
    ) -> Self {
        Self {
            running: HashMap::new(),
            snapshot,
            metrics,
            rest,
        }
    }

    /// Binds the addresses `next` adds; changes nothing else.
    pub async fn bind_new(&self, next: &Snapshot) -> anyhow::Result<Bound> {
        let mut bound = HashMap::new();
        for l in &next.listeners {
            if self.running.contains_key(&l.address) {
                continue;
            }
            let socket = TcpListener::bind(l.address)
                .await
                .with_context(|| format!("listener {}: binding {}", l.name, l.address))?;
            bound.insert(l.address, socket);
        }
        Ok(Bound(bound))
    }

    /// Makes the running listeners match `next` (already swapped into the
    /// shared runtime).
    pub fn apply(&mut self, next: &Snapshot, mut bound: Bound) {
        let wanted: HashMap<SocketAddr, _> =
            next.listeners.iter().map(|l| (l.address, l)).collect();
        let removed: Vec<SocketAddr> = self
            .running
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for addr in removed {
            if let Some(r) = self.running.remove(&addr) {
                tracing::info!(listener = %r.name, %addr, "listener removed; draining");
                let _ = r.stop.send(true);
            }
        }
        for (addr, spec) in wanted {
            if let Some(r) = self.running.get_mut(&addr) {
                let same_kind = match (&r.config, &spec.kind) {
                    (Config::Smtp(c), ListenerKind::Smtp(smtp)) => {
                        let _ = c.send(smtp.session.clone());
                        true
                    }
                    (Config::Http(c), ListenerKind::Http(http)) => {
                        let _ = c.send(http.clone());
                        true
                    }
                    _ => false,
                };
                if same_kind {
                    r.name = spec.name.clone();
                    continue;
                }
                // Same address, other protocol: bound again below is not
                // possible while the old socket lives, so the change takes
                // effect at restart.
                tracing::warn!(listener = %spec.name, %addr, "a listener's protocol changes at restart");
                continue;
            }
            let Some(socket) = bound.0.remove(&addr) else {
                tracing::error!(listener = %spec.name, %addr, "listener was not bound");
                continue;
            };
            let (stop_tx, stop_rx) = watch::channel(false);
            let name = spec.name.clone();
            let (config, task) = match &spec.kind {
                ListenerKind::Smtp(smtp) => {
                    let (config_tx, config_rx) = watch::channel(smtp.session.clone());
                    let factory = Arc::new(ListenerTransactions {
                        address: addr,
                        snapshot: self.snapshot.clone(),
                    });
                    let metrics = self.metrics.clone();
                    let task = tokio::spawn(async move {
                        koukan_smtp_server::run_listener(
                            socket, config_rx, factory, stop_rx, metrics,
                        )
                        .await;
                    });
                    (Config::Smtp(config_tx), task)
                }
                ListenerKind::Http(http) => {
                    let Some(rest) = &self.rest else {
                        tracing::error!(listener = %name, "an HTTP listener needs storage");
                        continue;
                    };
                    let (config_tx, config_rx) = watch::channel(http.clone());
                    let ctx = ListenerCtx::new(rest.clone(), config_rx);
                    let task = tokio::spawn(crate::rest::server::run(socket, ctx, stop_rx));
                    (Config::Http(config_tx), task)
                }
            };
            tracing::info!(listener = %name, %addr, "listening");
            self.running.insert(
                addr,
                Running {
                    name,
                    config,
                    stop: stop_tx,
                    task,
                },
            );
        }
    }

    /// Stops accepting everywhere and waits until every listener has
    /// drained (each bounded by its drain timeout).
    pub async fn shutdown(self) {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        for (_, r) in self.running {
            let _ = r.task.await;
        }
    }
}
