//! Process lifecycle: load the config, serve, reload on SIGHUP, drain on
//! SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, AdminState};
use crate::listeners::ListenerSet;
use crate::runtime::Runtime;

/// Reads, validates and builds a snapshot; every problem is reported with
/// the file name and field path.
pub fn load(path: &Path) -> anyhow::Result<Runtime> {
    let bootstrap = koukan_proto::load::load_bootstrap_file(path).map_err(|e| anyhow!("{e}"))?;
    Runtime::build(path, &bootstrap).with_context(|| path.display().to_string())
}

#[derive(Clone, Default)]
struct ReloadMetrics {
    reloads: Family<Vec<(String, String)>, Counter>,
    generation: Gauge,
}

impl ReloadMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "config_reloads",
            "Config reloads by result",
            self.reloads.clone(),
        );
        registry.register(
            "config_generation",
            "Number of config snapshots applied since start",
            self.generation.clone(),
        );
    }

    fn record(&self, ok: bool) {
        let result = if ok { "applied" } else { "rejected" };
        self.reloads
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
        if ok {
            self.generation.inc();
        }
    }
}

async fn reload(
    path: &Path,
    shared: &Arc<ArcSwap<Runtime>>,
    listeners: &mut ListenerSet,
) -> anyhow::Result<()> {
    let next = load(path)?;
    if next.admin != shared.load().admin {
        tracing::warn!(admin = %next.admin, "admin address changes take effect at restart");
    }
    let bound = listeners.bind_new(&next).await?;
    let next = Arc::new(next);
    shared.store(next.clone());
    listeners.apply(&next, bound);
    Ok(())
}

pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let runtime = load(&config_path)?;

    let mut registry = Registry::with_prefix("koukan");
    let smtp_metrics = Arc::new(koukan_smtp_server::SmtpMetrics::new());
    smtp_metrics.register(&mut registry);
    let reload_metrics = ReloadMetrics::default();
    reload_metrics.register(&mut registry);
    reload_metrics.generation.set(1);

    let admin_state = AdminState::new(registry);
    let admin_addr = runtime.admin;
    let admin_server = admin::bind(admin_addr, admin_state.clone())
        .await
        .with_context(|| format!("admin.address: binding {admin_addr}"))?;
    tokio::spawn(async move {
        if let Err(e) = admin_server.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });

    let shared = Arc::new(ArcSwap::from_pointee(runtime));
    let mut listeners = ListenerSet::new(shared.clone(), smtp_metrics);
    let first = shared.load_full();
    let bound = listeners.bind_new(&first).await?;
    listeners.apply(&first, bound);
    drop(first);
    admin_state.set_ready(true);
    tracing::info!(node = %shared.load().node_id, admin = %admin_addr, config = %config_path.display(), "koukan ready");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match reload(&config_path, &shared, &mut listeners).await {
                    Ok(()) => {
                        reload_metrics.record(true);
                        tracing::info!(config = %config_path.display(), "config reloaded");
                    }
                    Err(e) => {
                        reload_metrics.record(false);
                        tracing::error!(config = %config_path.display(), "config reload refused, keeping the running config:\n{e:#}");
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: draining sessions");
    admin_state.set_ready(false);
    listeners.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}
