//! Store-and-forward terminal: the message goes to durable storage and the
//! client gets 250 only once it is there; the scheduler delivers it later
//! through the output chain.
//!
//! One stored transaction per recipient, all sharing the one body blob, so
//! each recipient is retried, bounced and reported on its own (the
//! exploder's fan-out).

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use koukan_chain::{
    HttpInfo, Ingress, Mailbox, Response, SessionInfo, StoredInfo, Terminal, TlsInfo, TxContext,
    TxUpdate, UpdateResponse,
};
use koukan_storage::{
    AttemptResponses, BlobId, NewTransaction, NextStep, PriorAttempt, ReplicaId, Store, StoreError,
    StoredHttp, StoredIngress, StoredMailbox, StoredParam, StoredResponse, StoredSmtp, StoredTls,
    TxRecord,
};

use crate::scheduler::retry::RetryPolicy;
use crate::scheduler::{ReceivingGuard, SchedulerHandle};

/// What the writer needs from the running config.
#[derive(Clone)]
pub struct StoreTarget {
    pub store: Arc<dyn Store>,
    pub scheduler: SchedulerHandle,
    pub replica: ReplicaId,
    pub output_chain: String,
    /// The output chain's retry policy; none means one attempt.
    pub retry: Option<RetryPolicy>,
    pub notification: bool,
}

impl StoreTarget {
    /// An attempt made while the client waited, to be stored with the
    /// transaction: the next one waits the retry policy's backoff after a
    /// temporary failure; a permanent failure (or no retry left) is due at
    /// once, for the scheduler to settle with a bounce and no new attempt.
    pub fn prior_attempt(&self, responses: AttemptResponses) -> PriorAttempt {
        let now = SystemTime::now();
        let temporary = [responses.mail.as_ref(), responses.data.as_ref()]
            .into_iter()
            .chain(responses.rcpt.iter().map(Option::as_ref))
            .flatten()
            .all(|r| r.code < 500);
        let next_attempt = match &self.retry {
            Some(policy) if temporary => {
                match policy.after_temp_failure(1, now, now, rand::random()) {
                    NextStep::RetryAt(t) => t,
                    NextStep::Final { .. } => now,
                }
            }
            _ => now,
        };
        PriorAttempt {
            responses,
            finished: now,
            next_attempt,
        }
    }
}

pub fn stored_mailbox(m: &Mailbox) -> StoredMailbox {
    StoredMailbox {
        address: m.address.clone(),
        params: m
            .params
            .iter()
            .map(|p| StoredParam {
                keyword: p.keyword.clone(),
                value: p.value.clone(),
            })
            .collect(),
    }
}

/// Where a transaction came from, as the store keeps it: the first ingress
/// (a transaction the scheduler replays and an output chain stores again
/// keeps the one it was first stored from).
pub fn stored_ingress(ingress: &Ingress) -> StoredIngress {
    let tls = |t: &Option<TlsInfo>| {
        t.as_ref().map(|t| StoredTls {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
        })
    };
    match ingress.original() {
        Some(Ingress::Smtp(s)) => StoredIngress::Smtp(StoredSmtp {
            listener: s.listener.clone(),
            peer: Some(s.peer),
            local: Some(s.local),
            ehlo_host: s.ehlo_host.clone(),
            esmtp: s.esmtp,
            tls: tls(&s.tls),
            auth_user: s.auth_user.clone(),
        }),
        Some(Ingress::Http(h)) => StoredIngress::Http(StoredHttp {
            listener: h.listener.clone(),
            peer: Some(h.peer),
            local: Some(h.local),
            tls: tls(&h.tls),
            principal: h.principal.clone(),
        }),
        // `original` is never a stored one; none is the proxy's own.
        Some(Ingress::Stored(_)) | None => StoredIngress::Generated,
    }
}

/// The ingress the scheduler replays a stored transaction with: the facts
/// it was stored with, its id, the attempt, and its signals.
pub fn replayed_ingress(record: &TxRecord) -> Ingress {
    // A record written before addresses were kept may lack them.
    let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let tls = |t: &Option<StoredTls>| {
        t.as_ref().map(|t| TlsInfo {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
        })
    };
    let original = match &record.tx.ingress {
        StoredIngress::Smtp(s) => Some(Ingress::Smtp(Arc::new(SessionInfo {
            listener: s.listener.clone(),
            peer: s.peer.unwrap_or(unspecified),
            local: s.local.unwrap_or(unspecified),
            ehlo_host: s.ehlo_host.clone(),
            esmtp: s.esmtp,
            tls: tls(&s.tls),
            auth_user: s.auth_user.clone(),
        }))),
        StoredIngress::Http(h) => Some(Ingress::Http(Arc::new(HttpInfo {
            listener: h.listener.clone(),
            peer: h.peer.unwrap_or(unspecified),
            local: h.local.unwrap_or(unspecified),
            tls: tls(&h.tls),
            principal: h.principal.clone(),
        }))),
        StoredIngress::Generated => None,
    };
    Ingress::Stored(Arc::new(StoredInfo::new(
        record.id.0.clone(),
        record.attempt_count,
        original,
        record.tx.signals.clone(),
    )))
}

/// The signals a stored transaction keeps: those it was stored with, if
/// it is being stored again, and what this chain's filters attached (which
/// win over an older value of the same name).
pub fn stored_signals(ctx: &TxContext) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut signals = ctx
        .ingress
        .stored()
        .map(|s| s.signals.clone())
        .unwrap_or_default();
    signals.extend(ctx.signals.to_json());
    signals
}

/// A reply as the store keeps it.
pub fn stored_response(r: &Response) -> StoredResponse {
    StoredResponse {
        code: r.code,
        text: r.text.clone(),
    }
}

/// The client-facing reply for a storage failure.
pub fn storage_error_reply(e: &StoreError) -> Response {
    match e {
        StoreError::Full(_) => Response::new(452, "4.3.1 insufficient system storage"),
        _ => Response::new(451, "4.3.0 temporary storage failure, try again later"),
    }
}

#[derive(Default)]
struct State {
    mail_from: Option<Mailbox>,
    rcpts: Vec<Mailbox>,
    spool: Spool,
    failed: Option<Response>,
}

pub struct StoreWriter {
    target: Arc<StoreTarget>,
    ctx: Arc<TxContext>,
    state: State,
    _receiving: ReceivingGuard,
}

impl StoreWriter {
    pub fn new(target: Arc<StoreTarget>, ctx: Arc<TxContext>) -> Self {
        Self {
            _receiving: target.scheduler.receiving(),
            target,
            ctx,
            state: State::default(),
        }
    }
}

/// A message body being written into a blob. This is new mail: every
/// write asks the store to admit it first (refused below the storage
/// reserve, which is kept for delivery). A spool dropped without a
/// successful commit deletes its blob, so that an abandoned upload, or a
/// body the exploder delivered while the client waited, does not hold
/// space until gc.
#[derive(Default)]
pub struct Spool {
    blob: Option<(BlobId, u64)>,
    store: Option<Arc<dyn Store>>,
    committed: bool,
}

impl Spool {
    pub async fn append(
        &mut self,
        target: &StoreTarget,
        data: bytes::Bytes,
        last: bool,
    ) -> Result<(), StoreError> {
        target.store.admit().await?;
        let (blob, offset) = match self.blob.take() {
            Some(b) => b,
            None => {
                let blob = target.store.create_blob().await?;
                self.store = Some(target.store.clone());
                (blob, 0)
            }
        };
        let appended = target.store.append_blob(&blob, offset, data, last).await;
        // Kept even on failure: the drop deletes it.
        self.blob = Some((blob, offset));
        let len = appended?;
        self.blob = self.blob.take().map(|(b, _)| (b, len));
        Ok(())
    }

    /// Durably stores one transaction per recipient on the (finalized)
    /// body, each with the attempt already made for it, if any; returns
    /// their ids.
    pub async fn commit(
        &mut self,
        target: &StoreTarget,
        ctx: &TxContext,
        mail_from: Option<&Mailbox>,
        rcpts: Vec<(&Mailbox, Option<PriorAttempt>)>,
    ) -> Result<Vec<String>, StoreError> {
        let Some((blob, _)) = &self.blob else {
            return Err(StoreError::Internal("no body".into()));
        };
        let ingress = stored_ingress(&ctx.ingress);
        let signals = stored_signals(ctx);
        let mail_from = mail_from.map(stored_mailbox).unwrap_or(StoredMailbox {
            address: String::new(),
            params: Vec::new(),
        });
        let txs = rcpts
            .into_iter()
            .map(|(rcpt, prior_attempt)| NewTransaction {
                sender: ctx.sender.clone(),
                tag: ctx.tag.clone(),
                chain: target.output_chain.clone(),
                mail_from: mail_from.clone(),
                rcpt_to: vec![stored_mailbox(rcpt)],
                ingress: ingress.clone(),
                body: blob.clone(),
                retry: target.retry.is_some(),
                // Never bounce a bounce.
                notification: target.notification && !mail_from.address.is_empty(),
                lease: None,
                prior_attempt,
                signals: signals.clone(),
            })
            .collect();
        target.store.admit().await?;
        let ids = target.store.create_transactions(txs).await?;
        self.committed = true;
        target.scheduler.wake();
        Ok(ids.into_iter().map(|id| id.0).collect())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let (Some((blob, _)), Some(store)) = (self.blob.take(), self.store.take()) else {
            return;
        };
        // A referenced blob (a commit whose outcome was unknown may still
        // have stored it) is left alone by the store; gc is the backstop
        // when there is no runtime to run this on.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.delete_blob(&blob).await {
                    tracing::debug!(blob = %blob, error = %e, "deleting an unused body failed; gc will");
                }
            });
        }
    }
}

impl Terminal for StoreWriter {
    fn update(&mut self, update: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        Box::pin(async move {
            let target = &*self.target;
            let ctx = &*self.ctx;
            let state = &mut self.state;
            let mut resp = UpdateResponse::default();
            if let Some(mail) = update.mail_from {
                // Back-pressure: when delivery is saturated, new mail waits
                // at the client rather than in our memory.
                resp.mail = Some(if target.scheduler.saturated() {
                    Response::new(451, "4.3.2 delivery queue full, try again later")
                } else if let Err(e @ StoreError::Full(_)) = target.store.admit().await {
                    // Below the storage reserve: refused before the body
                    // is sent rather than after. Other storage errors are
                    // left to the body's writes.
                    storage_error_reply(&e)
                } else {
                    state.mail_from = Some(mail);
                    Response::new(250, "2.1.0 sender ok")
                });
            }
            for rcpt in update.rcpt_to {
                state.rcpts.push(rcpt.mailbox);
                resp.rcpts.push(Response::new(250, "2.1.5 recipient ok"));
            }
            if let Some(body) = update.body {
                if state.rcpts.is_empty() {
                    resp.data = body
                        .last
                        .then(|| Response::new(554, "5.5.1 no valid recipients"));
                } else if let Some(failed) = &state.failed {
                    resp.data = Some(failed.clone());
                } else if let Err(e) = state.spool.append(target, body.data, body.last).await {
                    tracing::warn!(tx = %ctx.id, error = %e, "storing the body failed");
                    let r = storage_error_reply(&e);
                    state.failed = Some(r.clone());
                    resp.data = Some(r);
                } else if body.last {
                    let rcpts = state.rcpts.iter().map(|r| (r, None)).collect();
                    let stored = state
                        .spool
                        .commit(target, ctx, state.mail_from.as_ref(), rcpts)
                        .await;
                    resp.data = Some(match stored {
                        Ok(ids) => Response::new(250, format!("2.0.0 queued as {}", ids.join(","))),
                        Err(e) => {
                            tracing::warn!(tx = %ctx.id, error = %e, "storing the transaction failed");
                            storage_error_reply(&e)
                        }
                    });
                }
            }
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use koukan_chain::Signal;
    use koukan_storage::TxId;

    use super::*;

    fn record(tx_ingress: StoredIngress, signals: BTreeMap<String, serde_json::Value>) -> TxRecord {
        let now = SystemTime::now();
        TxRecord {
            id: TxId("t1".into()),
            tx: NewTransaction {
                sender: "s".into(),
                tag: "t".into(),
                chain: "out".into(),
                mail_from: StoredMailbox {
                    address: String::new(),
                    params: vec![],
                },
                rcpt_to: vec![],
                ingress: tx_ingress,
                body: BlobId("b".into()),
                retry: false,
                notification: false,
                lease: None,
                prior_attempt: None,
                signals,
            },
            created: now,
            last_update: now,
            version: 1,
            attempt_count: 2,
            next_attempt: None,
            final_attempt_reason: None,
            lease_owner: None,
            lease_expires: None,
            cancelled: false,
            last_responses: None,
            attempts: vec![],
        }
    }

    /// Stored and replayed, an ingress keeps every fact; stored again
    /// from the replay, it is the same record.
    #[test]
    fn ingress_round_trips_through_the_store() {
        let smtp = Ingress::Smtp(Arc::new(SessionInfo {
            listener: "submission".into(),
            peer: "198.51.100.7:50123".parse().unwrap(),
            local: "192.0.2.10:587".parse().unwrap(),
            ehlo_host: Some("client.example".into()),
            esmtp: false,
            tls: Some(TlsInfo {
                version: "TLSv1.2".into(),
                cipher: "ECDHE-RSA-AES128-GCM-SHA256".into(),
            }),
            auth_user: Some("app".into()),
        }));
        let http = Ingress::Http(Arc::new(HttpInfo {
            listener: "api".into(),
            peer: "[2001:db8::1]:4000".parse().unwrap(),
            local: "[2001:db8::2]:443".parse().unwrap(),
            tls: None,
            principal: Some("svc".into()),
        }));
        for ingress in [smtp, http] {
            let stored = stored_ingress(&ingress);
            let replayed = replayed_ingress(&record(stored.clone(), BTreeMap::new()));
            let info = replayed.stored().unwrap();
            assert_eq!((info.id.as_str(), info.attempt), ("t1", 2));
            assert_eq!(replayed.peer(), ingress.peer());
            assert_eq!(replayed.local(), ingress.local());
            assert_eq!(replayed.tls(), ingress.tls());
            assert_eq!(replayed.auth_user(), ingress.auth_user());
            assert_eq!(replayed.listener(), ingress.listener());
            assert_eq!(
                replayed.smtp().map(|s| (s.esmtp, s.ehlo_host.clone())),
                ingress.smtp().map(|s| (s.esmtp, s.ehlo_host.clone()))
            );
            assert_eq!(stored_ingress(&replayed), stored);
        }
        let bounce = replayed_ingress(&record(StoredIngress::Generated, BTreeMap::new()));
        assert!(bounce.original().is_none());
        assert_eq!(stored_ingress(&bounce), StoredIngress::Generated);
    }

    struct Verdict(&'static str);

    impl Signal for Verdict {
        const NAME: &'static str = "policy";
        fn to_json(&self) -> serde_json::Value {
            serde_json::json!(self.0)
        }
    }

    /// Stored again (an output chain that stores), a transaction keeps the
    /// signals it had, and this chain's filters' win by name.
    #[test]
    fn signals_of_a_replay_are_kept_and_the_new_ones_win() {
        let old: BTreeMap<String, serde_json::Value> = [
            ("policy".to_owned(), serde_json::json!("old")),
            ("spf".to_owned(), serde_json::json!({"result": "pass"})),
        ]
        .into();
        let ctx = TxContext::new(
            "t1",
            replayed_ingress(&record(StoredIngress::Generated, old)),
            "s",
            "t",
        );
        ctx.signals.insert(Verdict("new")).unwrap();
        let signals = stored_signals(&ctx);
        assert_eq!(signals["policy"], serde_json::json!("new"));
        assert_eq!(signals["spf"], serde_json::json!({"result": "pass"}));
        assert_eq!(signals.len(), 2);
    }
}
