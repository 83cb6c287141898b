//! In-process fixtures for the proxy's own tests: a runtime built from a
//! YAML bootstrap over an embedded store in a temporary directory, with
//! test-only faults (see [`crate::chains::fault`]) injected into chains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use koukan_chain::{
    BoxTxService, Ingress, Mailbox, Recipient, SessionInfo, TxContext, TxUpdate, UpdateResponse,
    call_caught,
};
use koukan_smtp_server::{InternalErrors, TransactionFactory};
use koukan_storage::ReplicaId;

use crate::chains::ListenerTransactions;
use crate::runtime::{FilterSpec, Runtime};
use crate::scheduler::{SchedulerHandle, StorageCtx};

/// The address the fixture's one listener is configured on (never bound:
/// transactions are opened through its factory directly).
pub const LISTENER: &str = "127.0.0.1:1";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub storage: Arc<StorageCtx>,
    pub errors: InternalErrors,
}

/// Builds the runtime of `yaml` (paths relative to a fresh directory),
/// with a panicking filter put first in each chain named in `faulty`.
pub fn fixture(yaml: &str, faulty: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("koukan.yaml");
    std::fs::write(&path, yaml).unwrap();
    let bootstrap = koukan_proto::load::load_bootstrap_file(&path).unwrap();
    let store = koukan_storage::embedded::EmbeddedStore::open(
        &dir.path().join("koukan.db"),
        koukan_storage::embedded::EmbeddedOptions::default(),
    )
    .unwrap();
    let errors = InternalErrors::default();
    let storage = Arc::new(StorageCtx {
        store: Arc::new(store),
        scheduler: SchedulerHandle::new(1000),
        replica: ReplicaId("test-replica".into()),
        internal_errors: errors.clone(),
    });
    let mut runtime = Runtime::build(
        &path,
        &bootstrap,
        Some(storage.clone()),
        Arc::new(koukan_smtp_server::AuthFailureTracker::new()),
    )
    .unwrap();
    for name in faulty {
        let chain = runtime
            .chains
            .get_mut(*name)
            .unwrap_or_else(|| panic!("no chain {name}"));
        Arc::get_mut(chain)
            .expect("chain not shared yet")
            .filters
            .insert(0, FilterSpec::Panic);
    }
    Fixture {
        dir,
        runtime: Arc::new(ArcSwap::from_pointee(runtime)),
        storage,
        errors,
    }
}

impl Fixture {
    /// A transaction opened on the fixture's listener, as an SMTP session
    /// would open it at MAIL.
    pub fn transaction(&self) -> (Arc<TxContext>, BoxTxService) {
        let unspecified = SocketAddr::from(([127, 0, 0, 1], 0));
        self.transaction_from(SessionInfo {
            listener: "in".into(),
            peer: unspecified,
            local: unspecified,
            ehlo_host: Some("client.test".into()),
            esmtp: true,
            tls: None,
            auth_user: None,
        })
    }

    /// A transaction opened on the fixture's listener by `session`.
    pub fn transaction_from(&self, session: SessionInfo) -> (Arc<TxContext>, BoxTxService) {
        let factory = ListenerTransactions {
            address: LISTENER.parse().unwrap(),
            runtime: self.runtime.clone(),
        };
        factory.new_transaction(Ingress::Smtp(Arc::new(session)))
    }

    /// Panics counted for `component`.
    pub fn internal_errors(&self, component: &str) -> u64 {
        self.errors.get(component)
    }

    /// Files delivered into the maildir at `rel` (its `new/`).
    pub fn maildir(&self, rel: &str) -> Vec<Vec<u8>> {
        std::fs::read_dir(self.dir.path().join(rel).join("new"))
            .map(|rd| {
                rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Runs one update through a stack; the stack must not panic.
pub async fn call(stack: &mut BoxTxService, update: TxUpdate) -> UpdateResponse {
    call_caught(stack, update)
        .await
        .expect("the stack under test does not panic to its caller")
}

/// MAIL and RCPTs as one update.
pub fn envelope(from: &str, rcpts: &[&str]) -> TxUpdate {
    let mut u = TxUpdate::mail(Mailbox::new(from));
    u.rcpt_to = rcpts
        .iter()
        .map(|r| Recipient::new(Mailbox::new(*r)))
        .collect();
    u
}

/// Polls `f` every 20 ms until it yields a value or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = SystemTime::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if SystemTime::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
