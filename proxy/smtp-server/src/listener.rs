//! The accept loop: connection limit, config reload, stop and drain.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::SessionConfig;
use crate::metrics::SmtpMetrics;
use crate::reply;
use crate::session::serve_connection;
use koukan_chain::TransactionFactory;

/// Extra time after `drain_timeout` before remaining sessions are aborted:
/// sessions enforce the drain timeout themselves and need a moment to send
/// their 421.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// An SMTP listener: accepts connections and runs a session for each.
pub struct Listener {
    tcp: TcpListener,
    cfg_source: watch::Receiver<Arc<SessionConfig>>,
    factory: Arc<dyn TransactionFactory>,
    metrics: Arc<SmtpMetrics>,
    shutdown: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

/// Stops one listener (e.g. removed on config reload) without a global
/// shutdown. Dropping every handle does NOT stop the listener.
#[derive(Clone, Debug)]
pub struct ListenerHandle {
    stop: Arc<watch::Sender<bool>>,
}

impl ListenerHandle {
    /// Stops accepting and drains this listener's sessions as on shutdown.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Listener {
    /// `cfg_source` holds the current config: each new connection takes
    /// the latest, connections in progress keep theirs. `shutdown` becoming
    /// true stops the listener (process shutdown); so does
    /// [`ListenerHandle::stop`].
    pub fn new(
        tcp: TcpListener,
        cfg_source: watch::Receiver<Arc<SessionConfig>>,
        factory: Arc<dyn TransactionFactory>,
        shutdown: watch::Receiver<bool>,
        metrics: Arc<SmtpMetrics>,
    ) -> (Self, ListenerHandle) {
        let (stop_tx, stop) = watch::channel(false);
        let listener = Self {
            tcp,
            cfg_source,
            factory,
            metrics,
            shutdown,
            stop,
        };
        (
            listener,
            ListenerHandle {
                stop: Arc::new(stop_tx),
            },
        )
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts until stopped, then closes the listening socket, tells every
    /// session to finish (idle ones get `421 4.3.2` at once, a transaction
    /// in flight may complete) and returns once all sessions ended or the
    /// drain timeout passed (remaining sessions are then aborted).
    pub async fn run(self) {
        let Listener {
            tcp,
            cfg_source,
            factory,
            metrics,
            mut shutdown,
            mut stop,
        } = self;
        let (sessions_shutdown, session_rx) = watch::channel(false);
        let active = Arc::new(AtomicUsize::new(0));
        let mut sessions = JoinSet::new();
        let name = cfg_source.borrow().listener_name.clone();
        info!(listener = %name, addr = ?tcp.local_addr().ok(), "SMTP listener started");
        loop {
            tokio::select! {
                _ = wait_true(&mut shutdown) => break,
                _ = wait_true(&mut stop) => break,
                // Reap finished sessions so the set does not grow.
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    if let Err(e) = done {
                        warn!(listener = %name, error = %e, "session task failed");
                    }
                }
                accepted = tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let cfg = cfg_source.borrow().clone();
                        if active.load(Ordering::SeqCst) >= cfg.limits.max_connections {
                            refuse(stream, peer, &cfg, &metrics, reply::TOO_MANY_CONNECTIONS);
                            continue;
                        }
                        active.fetch_add(1, Ordering::SeqCst);
                        let guard = ActiveGuard(active.clone());
                        let local = stream.local_addr().unwrap_or_else(|_| {
                            tcp.local_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
                        });
                        // Replies are small and written once per batch:
                        // Nagle would only add latency.
                        let _ = stream.set_nodelay(true);
                        let factory = factory.clone();
                        let metrics = metrics.clone();
                        let rx = session_rx.clone();
                        sessions.spawn(async move {
                            let _guard = guard;
                            serve_connection(stream, peer, local, cfg, factory, rx, metrics).await;
                        });
                    }
                    Err(e) => {
                        warn!(listener = %name, error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
        sessions_shutdown.send_replace(true);
        let cfg = cfg_source.borrow().clone();
        let drain = cfg.limits.drain_timeout + DRAIN_GRACE;
        info!(listener = %name, sessions = sessions.len(), "SMTP listener stopping");
        // While sessions drain, the socket stays open so new clients get a
        // clear 421 (and retry elsewhere) rather than a refused connection.
        let drained = tokio::time::timeout(drain, async {
            loop {
                tokio::select! {
                    done = sessions.join_next() => if done.is_none() { break },
                    accepted = tcp.accept() => if let Ok((stream, peer)) = accepted {
                        refuse(stream, peer, &cfg, &metrics, reply::SHUTTING_DOWN);
                    },
                }
            }
        })
        .await;
        drop(tcp);
        if drained.is_err() {
            warn!(listener = %name, sessions = sessions.len(), "drain timeout; aborting sessions");
            sessions.abort_all();
            while sessions.join_next().await.is_some() {}
        }
        info!(listener = %name, "SMTP listener stopped");
    }
}

/// Runs a listener until `shutdown` becomes true (see [`Listener::run`]).
/// `shutdown` may be process-wide or this listener's own stop signal
/// (argument order as in [`serve_connection`]).
pub async fn run_listener(
    tcp: TcpListener,
    cfg_source: watch::Receiver<Arc<SessionConfig>>,
    factory: Arc<dyn TransactionFactory>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<SmtpMetrics>,
) {
    let (listener, _handle) = Listener::new(tcp, cfg_source, factory, shutdown, metrics);
    listener.run().await;
}

/// Over the connection limit or draining: one non-blocking write of the 421
/// and close, so a flood of connections can never tie up the accept loop.
fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: &SessionConfig,
    metrics: &SmtpMetrics,
    why: reply::Reply,
) {
    debug!(listener = %cfg.listener_name, peer = %peer, reason = %why.response(), "connection refused");
    metrics
        .connections_refused_total
        .get_or_create(&SmtpMetrics::listener(&cfg.listener_name))
        .inc();
    // On an implicit-TLS port the client expects a handshake, not text.
    if !cfg.implicit_tls {
        let mut msg = Vec::new();
        why.response().write_wire(&mut msg);
        let _ = stream.try_write(&msg);
    }
}

/// Resolves once the flag is true; never, if its sender is gone.
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Keeps the active-connection count right however the session task ends
/// (including abort).
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
