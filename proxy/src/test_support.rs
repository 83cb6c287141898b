//! In-process fixtures for the proxy's own tests: a snapshot built from a
//! YAML bootstrap over an embedded store in a temporary directory, with
//! test-only faults (see [`crate::config::filters::fault`]) injected into chains.

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

use crate::config::filters::fault::PanicFilter;
use crate::listeners::ListenerTransactions;
use crate::process::Process;
use crate::queue::Queue;
use crate::snapshot::{Chains, Snapshot};

pub mod scripted;

/// The address the fixture's one listener is configured on (never bound:
/// transactions are opened through its factory directly).
pub const LISTENER: &str = "127.0.0.1:1";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub queue: Arc<Queue>,
    pub errors: InternalErrors,
}

/// Builds the snapshot of `yaml` (paths relative to a fresh directory),
/// with a panicking filter put first in each chain named in `faulty`.
pub fn fixture(yaml: &str, faulty: &[&str]) -> Fixture {
    let dir = temp_dir();
    let path = dir.path().join("koukan.yaml");
    std::fs::write(&path, yaml).unwrap();
    let bootstrap = koukan_proto::load::load_bootstrap_file(&path).unwrap();
    let store = koukan_storage::embedded::EmbeddedStore::open(
        &dir.path().join("koukan.db"),
        koukan_storage::embedded::EmbeddedOptions::default(),
    )
    .unwrap();
    let errors = InternalErrors::default();
    let queue = Queue::new(
        Arc::new(store),
        ReplicaId("test-replica".into()),
        1000,
        errors.clone(),
    );
    let process = Process::new(Some(queue.clone()), Arc::default(), Arc::default());
    let mut snapshot = Snapshot::build(&path, &bootstrap, &process).unwrap();
    if !faulty.is_empty() {
        let mut specs = snapshot.chains.specs().clone();
        for name in faulty {
            let chain = specs
                .get_mut(*name)
                .unwrap_or_else(|| panic!("no chain {name}"));
            Arc::make_mut(chain)
                .filters
                .insert(0, Arc::new(PanicFilter));
        }
        snapshot.chains = Chains::new(
            specs,
            snapshot.chains.endpoints().clone(),
            Some(queue.clone()),
        );
    }
    Fixture {
        dir,
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        queue,
        errors,
    }
}

impl Fixture {
    /// The running snapshot's chains, as the scheduler takes them.
    pub fn chains(&self) -> crate::scheduler::ChainSource {
        let snapshot = self.snapshot.clone();
        Arc::new(move || -> Arc<dyn crate::delivery::NewChain> { snapshot.load().chains.clone() })
    }

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
            snapshot: self.snapshot.clone(),
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

/// A fresh temporary directory, in memory where there is a tmpfs: the
/// embedded store fsyncs every durable commit, which on a busy disk costs
/// seconds per test.
pub fn temp_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
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
