//! A scripted [`NewChain`]: every chain it knows is an upstream that
//! answers from a script (per recipient, or the chain's default) and
//! records what it received, so that the exploder and the scheduler are
//! tested as state machines, without SMTP or sockets. The store under
//! them is real ([`embedded_queue`]); only the upstream is scripted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use koukan_chain::{
    BoxTxService, Response, Terminal, TerminalService, TxContext, TxUpdate, UpdateResponse, boxed,
};
use koukan_smtp_server::InternalErrors;
use koukan_storage::ReplicaId;

use crate::config::NotificationSpec;
use crate::config::retry::RetryPolicy;
use crate::delivery::{ChainPolicy, NewChain};
use crate::queue::Queue;

/// How an upstream answers one part of a transaction.
#[derive(Clone, Debug)]
pub enum Step {
    Reply(Response),
    /// Answers after a delay (tokio time: instant under a paused clock).
    After(Duration, Response),
    /// Never answers (to hit the caller's timeouts).
    Never,
    /// Panics instead of answering.
    Panic,
}

impl Step {
    async fn run(&self) -> Response {
        match self {
            Step::Reply(r) => r.clone(),
            Step::After(d, r) => {
                tokio::time::sleep(*d).await;
                r.clone()
            }
            Step::Never => std::future::pending().await,
            Step::Panic => panic!("scripted upstream panic"),
        }
    }
}

pub fn reply(code: u16, text: &str) -> Step {
    Step::Reply(Response::new(code, text))
}

pub fn after(d: Duration, code: u16, text: &str) -> Step {
    Step::After(d, Response::new(code, text))
}

/// How one upstream transaction answers MAIL, RCPT and the data (the
/// last body chunk).
#[derive(Clone, Debug)]
pub struct Script {
    pub mail: Step,
    pub rcpt: Step,
    pub data: Step,
}

impl Default for Script {
    /// Everything accepted at once.
    fn default() -> Self {
        Self {
            mail: reply(250, "2.1.0 upstream sender ok"),
            rcpt: reply(250, "2.1.5 upstream rcpt ok"),
            data: reply(250, "2.0.0 upstream queued"),
        }
    }
}

impl Script {
    pub fn mail(mut self, step: Step) -> Self {
        self.mail = step;
        self
    }
    pub fn rcpt(mut self, step: Step) -> Self {
        self.rcpt = step;
        self
    }
    pub fn data(mut self, step: Step) -> Self {
        self.data = step;
        self
    }
}

/// What one upstream transaction received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub chain: String,
    /// The transaction's context id (the stored transaction's id when the
    /// scheduler runs it).
    pub ctx_id: String,
    /// When the chain was built (tokio time).
    pub opened_at: tokio::time::Instant,
    pub mail_from: Option<String>,
    pub rcpts: Vec<String>,
    pub chunks: Vec<Bytes>,
    /// The last body chunk arrived.
    pub last: bool,
    /// The upstream stack was dropped (its connection closed).
    pub closed: bool,
}

impl Seen {
    pub fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

#[derive(Clone, Default)]
struct ChainScript {
    policy: ChainPolicy,
    default: Script,
    by_rcpt: HashMap<String, Script>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn lock(log: &Log) -> MutexGuard<'_, Vec<Seen>> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// The scripted chains (built with [`Scripted::chain`] and friends, then
/// shared as `Arc<dyn NewChain>`); any other name is an unknown chain.
#[derive(Default)]
pub struct Scripted {
    chains: HashMap<String, ChainScript>,
    log: Log,
}

impl Scripted {
    pub fn new() -> Self {
        Self::default()
    }

    /// A chain whose upstream accepts everything, with `policy`.
    pub fn chain(mut self, name: &str, policy: ChainPolicy) -> Self {
        self.chains.insert(
            name.into(),
            ChainScript {
                policy,
                ..ChainScript::default()
            },
        );
        self
    }

    /// The script of chain `name` for recipients without their own.
    pub fn default_script(mut self, name: &str, script: Script) -> Self {
        self.chains.get_mut(name).expect("chain defined").default = script;
        self
    }

    /// The script of chain `name` for an upstream transaction whose (first)
    /// recipient is `rcpt`.
    pub fn rcpt(mut self, name: &str, rcpt: &str, script: Script) -> Self {
        self.chains
            .get_mut(name)
            .expect("chain defined")
            .by_rcpt
            .insert(rcpt.into(), script);
        self
    }

    /// Every upstream transaction so far, in the order they were opened.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.log).clone()
    }

    /// The upstream transactions of chain `name`.
    pub fn seen_on(&self, name: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.chain == name)
            .collect()
    }

    /// The upstream transactions that were sent recipient `rcpt`.
    pub fn seen_for(&self, rcpt: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.rcpts.iter().any(|r| r == rcpt))
            .collect()
    }
}

impl NewChain for Scripted {
    fn new_chain(&self, name: &str, ctx: &Arc<TxContext>) -> Option<BoxTxService> {
        let chain = self.chains.get(name)?.clone();
        let idx = {
            let mut log = lock(&self.log);
            log.push(Seen {
                chain: name.into(),
                ctx_id: ctx.id.clone(),
                opened_at: tokio::time::Instant::now(),
                mail_from: None,
                rcpts: Vec::new(),
                chunks: Vec::new(),
                last: false,
                closed: false,
            });
            log.len() - 1
        };
        Some(boxed(TerminalService::new(Upstream {
            chain,
            script: None,
            log: self.log.clone(),
            idx,
        })))
    }

    fn policy(&self, name: &str) -> Option<ChainPolicy> {
        self.chains.get(name).map(|c| c.policy.clone())
    }
}

struct Upstream {
    chain: ChainScript,
    /// Chosen at the first update, by its first recipient.
    script: Option<Script>,
    log: Log,
    idx: usize,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        lock(&self.log)[self.idx].closed = true;
    }
}

impl Terminal for Upstream {
    fn update(&mut self, u: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        Box::pin(async move {
            {
                let mut log = lock(&self.log);
                let seen = &mut log[self.idx];
                if let Some(m) = &u.mail_from {
                    seen.mail_from = Some(m.address.clone());
                }
                seen.rcpts
                    .extend(u.rcpt_to.iter().map(|r| r.mailbox.address.clone()));
                if let Some(b) = &u.body {
                    seen.chunks.push(b.data.clone());
                    seen.last |= b.last;
                }
            }
            let chain = &self.chain;
            let script = self
                .script
                .get_or_insert_with(|| {
                    u.rcpt_to
                        .first()
                        .and_then(|r| chain.by_rcpt.get(&r.mailbox.address))
                        .unwrap_or(&chain.default)
                        .clone()
                })
                .clone();
            let mut resp = UpdateResponse::default();
            if u.mail_from.is_some() {
                resp.mail = Some(script.mail.run().await);
            }
            for _ in &u.rcpt_to {
                resp.rcpts.push(script.rcpt.run().await);
            }
            if u.body.as_ref().is_some_and(|b| b.last) {
                resp.data = Some(script.data.run().await);
            }
            resp
        })
    }
}

/// A retry policy without jitter: every wait is `wait`.
pub fn retry(max_attempts: u32, wait: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        min_attempt_time: wait,
        max_attempt_time: wait,
        jitter: 0.0,
        ..RetryPolicy::default()
    }
}

/// Bounces go through chain `name`.
pub fn notify(name: &str) -> NotificationSpec {
    NotificationSpec {
        output_chain: name.into(),
        mailer_daemon: None,
    }
}

/// A queue over a real embedded store in a fresh temporary directory
/// (kept alive by the returned guard).
pub fn embedded_queue(max_receiving: usize) -> (tempfile::TempDir, Arc<Queue>) {
    let dir = super::temp_dir();
    let store = koukan_storage::embedded::EmbeddedStore::open(
        &dir.path().join("koukan.db"),
        koukan_storage::embedded::EmbeddedOptions::default(),
    )
    .unwrap();
    let queue = Queue::new(
        Arc::new(store),
        ReplicaId("test-replica".into()),
        max_receiving,
        InternalErrors::default(),
    );
    (dir, queue)
}

/// A context as a listener would make it.
pub fn context(id: &str) -> Arc<TxContext> {
    let unspecified = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    Arc::new(TxContext::new(
        id,
        koukan_chain::Ingress::Smtp(Arc::new(koukan_chain::SessionInfo {
            listener: "in".into(),
            peer: unspecified,
            local: unspecified,
            ehlo_host: Some("client.test".into()),
            esmtp: true,
            tls: None,
            auth_user: None,
        })),
        "in",
        "",
    ))
}
