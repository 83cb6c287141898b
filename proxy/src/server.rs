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
use crate::config::{duration, nonzero};
use crate::delivery::NewChain;
use crate::listeners::ListenerSet;
use crate::process::Process;
use crate::queue::Queue;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::snapshot::Snapshot;
use koukan_smtp_server::AuthFailureTracker;
use koukan_storage::{ReplicaId, Store};

/// `check-config`: reads, validates and builds a snapshot, and looks at
/// the embedded store file (a file that is not a store is the same error
/// `--config` stops on); every problem is reported with the file name and
/// field path. Creates nothing.
pub fn check(path: &Path) -> anyhow::Result<()> {
    use koukan_storage::embedded::{StoreFile, inspect};
    let process = Process::new(None, Arc::default(), Arc::default());
    let (_, bootstrap) = load_with(path, &process)?;
    // A missing file is fine: it would be created.
    let Some(file) = embedded_file(path, &bootstrap) else {
        return Ok(());
    };
    match inspect(&file) {
        Ok(StoreFile::Invalid { found }) => Err(anyhow!(
            "{}: storage.embedded.path: {}",
            path.display(),
            koukan_storage::StoreError::NotAStore { path: file, found }
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(anyhow!("{}: storage.embedded.path: {e}", path.display())),
    }
}

/// The file of the bootstrap's embedded store, if it uses one.
fn embedded_file(config: &Path, b: &koukan_proto::config::v1::Bootstrap) -> Option<PathBuf> {
    use koukan_proto::config::v1::storage::Backend;
    match b.storage.as_ref()?.backend.as_ref()? {
        Backend::Embedded(e) => Some(koukan_proto::load::resolve_path(config, &e.path)),
        Backend::Redis(_) => None,
    }
}

/// Creates the directory an embedded store file goes in.
fn create_store_dir(file: &Path) -> anyhow::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("storage.embedded.path: creating {}", dir.display()))?;
    }
    Ok(())
}

/// Reads and validates the config, and builds its snapshot over the
/// process's state.
fn load_with(
    path: &Path,
    process: &Process,
) -> anyhow::Result<(Snapshot, koukan_proto::config::v1::Bootstrap)> {
    let bootstrap = koukan_proto::load::load_bootstrap_file(path).map_err(|e| anyhow!("{e}"))?;
    let snapshot = Snapshot::build(path, &bootstrap, process).map_err(|e| anyhow!("{e}"))?;
    Ok((snapshot, bootstrap))
}

fn scheduler_config(c: Option<&koukan_proto::config::v1::Scheduler>) -> SchedulerConfig {
    let d = SchedulerConfig::default();
    let Some(c) = c else { return d };
    SchedulerConfig {
        max_concurrency: nonzero(c.max_concurrency as usize, d.max_concurrency),
        lease_ttl: duration(&c.lease_ttl, d.lease_ttl),
        poll_interval: duration(&c.poll_interval, d.poll_interval),
        max_receiving: nonzero(c.max_receiving as usize, d.max_receiving),
        gc_ttl: duration(&c.gc_ttl, d.gc_ttl),
        gc_interval: duration(&c.gc_interval, d.gc_interval),
        ..d
    }
}

/// Opens the configured store (kept for the life of the process: a reload
/// does not reopen it).
async fn open_store(
    path: &Path,
    b: &koukan_proto::config::v1::Bootstrap,
) -> anyhow::Result<Option<Arc<dyn Store>>> {
    use koukan_proto::config::v1::storage::Backend;
    let Some(backend) = b.storage.as_ref().and_then(|s| s.backend.as_ref()) else {
        return Ok(None);
    };
    let store: Arc<dyn Store> = match backend {
        Backend::Embedded(e) => {
            let file = koukan_proto::load::resolve_path(path, &e.path);
            create_store_dir(&file)?;
            let store = koukan_storage::embedded::EmbeddedStore::open(
                &file,
                koukan_storage::embedded::EmbeddedOptions {
                    reserve_bytes: e.reserve_bytes,
                    ..Default::default()
                },
            )
            .with_context(|| format!("storage.embedded.path: opening {}", file.display()))?;
            tracing::info!(path = %file.display(), reserve_bytes = store.reserve_bytes(), "embedded store open");
            Arc::new(store)
        }
        Backend::Redis(r) => {
            let defaults = koukan_storage::redis_store::RedisOptions::default();
            let mut opts = koukan_storage::redis_store::RedisOptions {
                allow_volatile: r.allow_volatile,
                ack_window: duration(&r.ack_window, defaults.ack_window),
                memory_reserve_bytes: r.memory_reserve_bytes,
                ..defaults
            };
            if !r.key_prefix.is_empty() {
                opts.key_prefix = r.key_prefix.clone();
            }
            let store = koukan_storage::redis_store::RedisStore::connect(&r.url, opts)
                .await
                .with_context(|| format!("storage.redis.url: {}", r.url))?;
            tracing::info!(url = %r.url, durability = %store.durability(), "redis store connected");
            Arc::new(store)
        }
    };
    Ok(Some(store))
}

/// `koukan init-store`: creates the embedded store the config names where
/// no file exists; leaves a valid store alone; refuses a file that is not
/// a store unless `force`, which moves it aside first. Returns what it did,
/// for the operator.
pub fn init_store(path: &Path, force: bool) -> anyhow::Result<String> {
    use koukan_storage::embedded::{InitOutcome, init};
    let bootstrap = koukan_proto::load::load_bootstrap_file(path).map_err(|e| anyhow!("{e}"))?;
    let Some(file) = embedded_file(path, &bootstrap) else {
        anyhow::bail!(
            "{}: storage.embedded: init-store needs an embedded store in the config",
            path.display()
        );
    };
    create_store_dir(&file)?;
    let outcome =
        init(&file, force).with_context(|| format!("{}: storage.embedded.path", path.display()))?;
    Ok(match outcome {
        InitOutcome::Created => format!("{}: created a new store", file.display()),
        InitOutcome::Exists { schema_version } => format!(
            "{}: already a koukan store (schema version {schema_version}); left untouched",
            file.display()
        ),
        InitOutcome::Replaced { moved_to, found } => format!(
            "{}: was not a koukan store ({found}); moved it to {} and created a new store",
            file.display(),
            moved_to.display()
        ),
    })
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

/// The `session_uri` of the first HTTP listener that has one.
fn first_session_uri(s: &Snapshot) -> Option<String> {
    s.listeners.iter().find_map(|l| match &l.kind {
        crate::config::listener::ListenerKind::Http(h) if !h.session_uri.is_empty() => {
            Some(h.session_uri.clone())
        }
        _ => None,
    })
}

async fn reload(
    path: &Path,
    process: &Process,
    shared: &Arc<ArcSwap<Snapshot>>,
    listeners: &mut ListenerSet,
) -> anyhow::Result<()> {
    let (next, _) = load_with(path, process)?;
    if next.admin != shared.load().admin {
        tracing::warn!(admin = %next.admin, "admin address changes take effect at restart");
    }
    let bound = listeners.bind_new(&next).await?;
    let next = Arc::new(next);
    shared.store(next.clone());
    process.keep(&next);
    listeners.apply(&next, bound);
    Ok(())
}

pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    // Read and validated once; the snapshot is built once, over the
    // process's state.
    let bootstrap =
        koukan_proto::load::load_bootstrap_file(&config_path).map_err(|e| anyhow!("{e}"))?;
    // Every store operation's latency is measured (the histogram is
    // registered below).
    let store = open_store(&config_path, &bootstrap)
        .await?
        .map(|s| Arc::new(koukan_storage::Metered::new(s)));
    let metered = store.clone();
    let scheduler_config = scheduler_config(bootstrap.scheduler.as_ref());
    let smtp_metrics = Arc::new(koukan_smtp_server::SmtpMetrics::new());
    let queue = store.map(|store| {
        let store: Arc<dyn Store> = store;
        let node = bootstrap
            .node
            .as_ref()
            .map(|n| n.id.as_str())
            .unwrap_or("koukan");
        Queue::new(
            store,
            // Unique per process start, so a restarted replica never
            // mistakes its predecessor's leases for its own.
            ReplicaId(format!("{node}-{:08x}", rand::random::<u32>())),
            scheduler_config.max_receiving,
            smtp_metrics.internal_errors.clone(),
        )
    });
    let process = Process::new(
        queue.clone(),
        Arc::new(AuthFailureTracker::new()),
        smtp_metrics.clone(),
    );
    let snapshot =
        Snapshot::build(&config_path, &bootstrap, &process).map_err(|e| anyhow!("{e}"))?;
    process.keep(&snapshot);

    let mut registry = Registry::with_prefix("koukan");
    smtp_metrics.register(&mut registry);
    process.delivery_metrics.register(&mut registry);
    process.pool_metrics.register(&mut registry);
    if let Some(m) = &metered {
        m.register(&mut registry);
    }
    let rest_metrics = crate::rest::metrics::RestMetrics::default();
    rest_metrics.register(&mut registry);
    let reload_metrics = ReloadMetrics::default();
    reload_metrics.register(&mut registry);
    reload_metrics.generation.set(1);

    let admin_state = AdminState::new(registry);
    let admin_addr = snapshot.admin;
    let admin_server = admin::bind(
        admin_addr,
        snapshot.admin_allowed_hosts.clone(),
        admin_state.clone(),
    )
    .await
    .with_context(|| format!("admin.address: binding {admin_addr}"))?;
    tokio::spawn(async move {
        if let Err(e) = admin_server.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });

    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    let (scheduler_stop, scheduler_stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = queue.as_ref().map(|q| {
        let running = shared.clone();
        let chains: crate::scheduler::ChainSource =
            Arc::new(move || -> Arc<dyn NewChain> { running.load().chains.clone() });
        Arc::new(Scheduler::new(q, chains, scheduler_config.clone()))
    });
    let scheduler_task = scheduler
        .clone()
        .map(|s| tokio::spawn(s.run(scheduler_stop_rx)));
    if let Some(q) = &queue {
        admin_state.set_store(q.store.clone());
    }
    admin_state.set_delivery_metrics(process.delivery_metrics.clone());
    let rest = queue.as_ref().map(|q| {
        crate::rest::Rest::new(
            q.clone(),
            shared.clone(),
            scheduler.clone(),
            rest_metrics.clone(),
        )
    });
    // This replica's REST address, for the others to redirect to.
    let _registration = rest.as_ref().and_then(|r| {
        let uri = first_session_uri(&shared.load())?;
        Some(r.register(uri))
    });
    let mut listeners = ListenerSet::new(shared.clone(), smtp_metrics, rest);
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
                match reload(&config_path, &process, &shared, &mut listeners).await {
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
    let _ = scheduler_stop.send(true);
    if let Some(task) = scheduler_task {
        let _ = task.await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}
