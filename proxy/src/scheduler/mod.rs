//! The output handler: claims stored transactions that are due, runs each
//! through its output chain, records the attempt, schedules the retry or
//! finishes it, and sends a bounce when it gives up.
//!
//! Delivery concurrency is bounded by a semaphore; the scheduler only
//! claims as many transactions as it has free slots, so the queue lives in
//! the store, never in memory. A transaction stored by this process wakes
//! the scheduler at once (no polling delay); other replicas find it on
//! their next poll or when its lease expires.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use koukan_chain::{
    BoxTxService, ChainPanicked, Recipient, ReplyClass, Response, TxContext, TxUpdate,
    UpdateResponse, call_caught,
};
use koukan_smtp_server::InternalErrors;
use koukan_storage::{
    AttemptOutcome, AttemptResponses, FinalReason, NextStep, ReplicaId, Store, StoreError,
    StoredResponse, TxRecord,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::config::NotificationSpec;
use crate::config::retry::RetryPolicy;
use crate::delivery::{ChainPolicy, NewChain};
use crate::queue::convert::{mailbox, null_mailbox, replayed_ingress, stored_response};
use crate::queue::{Origin, Queue, Submission};

/// The chains a delivery attempt runs on: the running snapshot's at the
/// moment the attempt starts (a reload applies to the next attempt).
pub type ChainSource = Arc<dyn Fn() -> Arc<dyn NewChain> + Send + Sync>;

/// Body chunk size when streaming a stored message into the chain.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub max_concurrency: usize,
    pub lease_ttl: Duration,
    /// How often to look for due work when nothing woke us.
    pub poll_interval: Duration,
    /// Messages being received into storage at once; beyond it MAIL gets
    /// 451 4.3.2.
    pub max_receiving: usize,
    pub gc_interval: Duration,
    pub gc_ttl: Duration,
    /// Our host name, for bounces.
    pub hostname: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 64,
            lease_ttl: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            max_receiving: 1000,
            gc_interval: Duration::from_secs(300),
            gc_ttl: Duration::from_secs(86400),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        }
    }
}

/// A delivery slot held for a transaction about to be created leased
/// to this replica (see [`Scheduler::reserve`]).
pub struct Reserved {
    scheduler: Arc<Scheduler>,
    permit: OwnedSemaphorePermit,
}

impl Reserved {
    /// The lease to create the transaction with.
    pub fn lease(&self) -> (ReplicaId, Duration) {
        (
            self.scheduler.replica.clone(),
            self.scheduler.config.lease_ttl,
        )
    }

    /// Runs the attempt of `record`, created with [`Reserved::lease`].
    pub fn run(self, record: TxRecord) {
        self.scheduler.spawn_attempt(record, self.permit);
    }
}

pub struct Scheduler {
    store: Arc<dyn Store>,
    chains: ChainSource,
    replica: ReplicaId,
    config: SchedulerConfig,
    slots: Arc<Semaphore>,
    queue: Arc<Queue>,
    internal_errors: InternalErrors,
}

impl Scheduler {
    pub fn new(queue: &Arc<Queue>, chains: ChainSource, config: SchedulerConfig) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            store: queue.store.clone(),
            chains,
            replica: queue.replica.clone(),
            config,
            queue: queue.clone(),
            internal_errors: queue.internal_errors.clone(),
        }
    }

    /// Runs until `shutdown` turns true; attempts in flight then finish
    /// (their leases would otherwise expire and hand them to a replica).
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut next_gc = tokio::time::Instant::now() + self.config.gc_interval;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let free = self.slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                match self
                    .store
                    .claim_due(
                        &self.replica,
                        SystemTime::now(),
                        self.config.lease_ttl,
                        free,
                    )
                    .await
                {
                    Ok(records) => {
                        claimed = records.len();
                        for record in records {
                            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                                return;
                            };
                            self.spawn_attempt(record, permit);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming due transactions failed"),
                }
            }
            if tokio::time::Instant::now() >= next_gc {
                next_gc = tokio::time::Instant::now() + self.config.gc_interval;
                let cutoff = SystemTime::now() - self.config.gc_ttl;
                match self.store.gc(cutoff).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(deleted = n, "garbage-collected finished transactions")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "gc failed"),
                }
            }
            // A full batch means there may be more due right now.
            if claimed > 0 && claimed == free {
                continue;
            }
            tokio::select! {
                _ = self.queue.woken() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
        // Wait for attempts in flight.
        let _ = self
            .slots
            .acquire_many(self.config.max_concurrency as u32)
            .await;
    }

    /// Runs one attempt of `record` (leased to this replica) in its own
    /// task, holding `permit` (a delivery slot) until it ends.
    fn spawn_attempt(self: &Arc<Self>, record: TxRecord, permit: OwnedSemaphorePermit) {
        let this = self.clone();
        // Every log line of the attempt, the SMTP client's included,
        // carries the tx id.
        let span = tracing::info_span!(
            "attempt",
            tx = %record.id,
            attempt = record.attempt_count
        );
        tokio::spawn(
            async move {
                let id = record.id.clone();
                // A chain's panic is an attempt's 451 (see `deliver`); one
                // anywhere else in the attempt leaves the transaction
                // leased, and its lease (no longer renewed: the heartbeat
                // ends with the attempt) hands it back after `lease_ttl`.
                match AssertUnwindSafe(this.attempt(record)).catch_unwind().await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(tx = %id, error = %e, "delivery attempt failed to record");
                    }
                    Err(payload) => {
                        let panicked = ChainPanicked::from_payload(payload);
                        tracing::error!(tx = %id, error = %panicked.message, "delivery attempt panicked; the transaction is retried when its lease expires");
                        this.internal_errors.count("scheduler");
                    }
                }
                drop(permit);
                this.queue.wake();
            }
            .instrument(span),
        );
    }

    /// A free delivery slot, for a transaction its creator leases to this
    /// replica and hands over at once ([`Reserved::run`]): no claim (one
    /// write fewer) and no wait for the scheduler's loop. None when every
    /// slot is busy: the creator then stores it unleased, due, and wakes
    /// the scheduler.
    pub fn reserve(self: &Arc<Self>) -> Option<Reserved> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Reserved {
            scheduler: self.clone(),
            permit,
        })
    }

    async fn attempt(&self, record: TxRecord) -> Result<(), StoreError> {
        let chains = (self.chains)();
        let started = std::time::Instant::now();
        // A chain that is gone (a reload removed it) may come back: its
        // transactions are retried on the default schedule rather than
        // made final, as they were stored to be retried.
        let ChainPolicy {
            retry,
            notification,
        } = chains.policy(&record.tx.chain).unwrap_or_else(|| {
            tracing::warn!(chain = %record.tx.chain, "no such output chain; retrying on the default schedule");
            ChainPolicy {
                retry: Some(RetryPolicy::default()),
                notification: None,
            }
        });
        let policy = retry.as_ref();
        // Renews the lease while the attempt runs, and stops with it
        // whichever way it ends (dropped on return and on unwinding).
        let heartbeat = self.spawn_heartbeat(&record);
        let (responses, attempted) = match settled_by_prior(&record, policy, SystemTime::now()) {
            Some(prior) => (prior, false),
            None => {
                let ctx = Arc::new(context(&record));
                let responses = match chains.new_chain(&record.tx.chain, &ctx) {
                    Some(stack) => self.deliver(stack, &record).await,
                    None => {
                        let r =
                            Response::new(451, format!("4.3.5 no chain named {}", record.tx.chain));
                        AttemptResponses {
                            mail: Some(stored_response(&r)),
                            rcpt: vec![],
                            data: None,
                        }
                    }
                };
                (responses, true)
            }
        };
        let now = SystemTime::now();
        // A settled transaction's claim is not an attempt.
        let attempt = record.attempt_count.saturating_sub(u32::from(!attempted));
        let next = decide(&record, attempt, &responses, policy, now);
        // The bounce is stored before the outcome: a crash in between
        // makes the transaction run (and bounce) again, never lose its
        // bounce. If the bounce cannot be stored, the outcome is not
        // recorded either, and the transaction comes back when its lease
        // expires.
        if let NextStep::Final { reason } = &next
            && !reason.is_success()
            && record.tx.notification
            && let Some(notification) = &notification
            && let Err(e) = self
                .bounce(&*chains, &record, &responses, notification, now)
                .await
        {
            drop(heartbeat);
            tracing::warn!(tx = %record.id, error = %e, "storing the bounce failed; the transaction runs again after its lease");
            return Err(e);
        }
        drop(heartbeat);
        let finished = self
            .record_outcome(
                &record,
                AttemptOutcome {
                    responses: responses.clone(),
                    next: next.clone(),
                    attempted,
                },
            )
            .await?;
        tracing::info!(
            target: "koukan::delivery",
            tx = %record.id,
            attempt = finished.attempt_count,
            attempted,
            rcpt = %record.tx.rcpt_to.first().map(|r| r.address.as_str()).unwrap_or(""),
            outcome = %Outcome(&next),
            reply = %summary(&responses),
            duration_ms = started.elapsed().as_millis() as u64,
            "delivery attempt"
        );
        Ok(())
    }

    /// Records an attempt's outcome, retrying a failing store with backoff
    /// while the lease lasts: giving up would let the lease expire and the
    /// (perhaps delivered) transaction run again.
    async fn record_outcome(
        &self,
        record: &TxRecord,
        outcome: AttemptOutcome,
    ) -> Result<TxRecord, StoreError> {
        let deadline = tokio::time::Instant::now() + self.config.lease_ttl;
        let mut wait = Duration::from_millis(100);
        loop {
            match self
                .store
                .finish_attempt(&record.id, &self.replica, outcome.clone())
                .await
            {
                Err(e @ (StoreError::Unavailable(_) | StoreError::Full(_)))
                    if tokio::time::Instant::now() + wait < deadline =>
                {
                    tracing::warn!(tx = %record.id, error = %e, "recording the attempt failed; retrying");
                    let _ = self
                        .store
                        .renew_lease(&record.id, &self.replica, self.config.lease_ttl)
                        .await;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                r => return r,
            }
        }
    }

    fn spawn_heartbeat(&self, record: &TxRecord) -> AbortOnDropHandle<()> {
        let store = self.store.clone();
        let id = record.id.clone();
        let replica = self.replica.clone();
        let ttl = self.config.lease_ttl;
        AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if let Err(e) = store.renew_lease(&id, &replica, ttl).await {
                    tracing::warn!(tx = %id, error = %e, "lease renewal failed");
                    if matches!(e, StoreError::LeaseLost(_)) {
                        return;
                    }
                }
            }
        }))
    }

    /// Feeds the stored transaction through the chain, body in chunks. A
    /// panic inside the chain ends the attempt as a temporary failure
    /// (`451 4.3.0` for what the update carried), retried with backoff.
    async fn deliver(&self, mut stack: BoxTxService, record: &TxRecord) -> AttemptResponses {
        let mut first = TxUpdate::mail(mailbox(&record.tx.mail_from));
        first.rcpt_to = record
            .tx
            .rcpt_to
            .iter()
            .map(|r| Recipient::new(mailbox(r)))
            .collect();
        let r = self.call(&mut stack, first, &record.id).await;
        let mut out = AttemptResponses {
            mail: r.mail.as_ref().map(stored_response),
            rcpt: r.rcpts.iter().map(|x| Some(stored_response(x))).collect(),
            data: None,
        };
        let any_ok =
            r.mail.as_ref().is_some_and(Response::is_ok) && r.rcpts.iter().any(Response::is_ok);
        if !any_ok {
            return out;
        }
        let mut offset = 0u64;
        loop {
            let chunk = match self
                .store
                .read_blob(&record.tx.body, offset, READ_CHUNK)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(tx = %record.id, error = %e, "reading the stored body failed");
                    out.data = Some(stored_response(&Response::new(
                        451,
                        "4.3.0 reading the stored message failed",
                    )));
                    return out;
                }
            };
            offset += chunk.len() as u64;
            let last = chunk.len() < READ_CHUNK;
            let r = self
                .call(&mut stack, TxUpdate::body(chunk, last), &record.id)
                .await;
            if let Some(d) = r.data {
                out.data = Some(stored_response(&d));
                return out;
            }
            if last {
                out.data = Some(stored_response(&Response::new(
                    451,
                    "4.3.0 no final reply from the output chain",
                )));
                return out;
            }
        }
    }

    async fn bounce(
        &self,
        chains: &dyn NewChain,
        record: &TxRecord,
        responses: &AttemptResponses,
        notification: &NotificationSpec,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let prefix = self
            .store
            .read_blob(&record.tx.body, 0, koukan_dsn::MAX_HEADER_BLOCK)
            .await
            .unwrap_or_default();
        let headers = koukan_dsn::header_block(&prefix);
        let failure = failure_reply(responses);
        let mailer_daemon = notification
            .mailer_daemon
            .clone()
            .unwrap_or_else(|| format!("MAILER-DAEMON@{}", self.config.hostname));
        let recipients = record
            .tx
            .rcpt_to
            .iter()
            .map(|r| {
                koukan_dsn::RecipientStatus::from_reply(
                    r.address.clone(),
                    koukan_dsn::Action::Failed,
                    &failure,
                    None,
                    now,
                )
            })
            .collect();
        let Some(dsn) = koukan_dsn::build_dsn(&koukan_dsn::DsnInput {
            reporting_mta: &self.config.hostname,
            mailer_daemon: &mailer_daemon,
            original_sender: &record.tx.mail_from.address,
            arrival_date: record.created,
            recipients,
            original_headers: headers,
            original_message_id: None,
            now,
        }) else {
            return Ok(());
        };
        let blob = self.store.create_blob().await?;
        self.store
            .append_blob(&blob, 0, Bytes::from(dsn), true)
            .await?;
        let submission = Submission {
            queue: self.queue.clone(),
            output_chain: notification.output_chain.clone(),
            retry: chains
                .policy(&notification.output_chain)
                .and_then(|p| p.retry),
            notification: false,
        };
        // A message of the proxy's own: no ingress, no signals.
        let origin = Origin {
            sender: record.tx.sender.clone(),
            tag: record.tx.tag.clone(),
            ingress: koukan_storage::StoredIngress::Generated,
            signals: Default::default(),
        };
        let rcpt = koukan_storage::StoredMailbox {
            address: record.tx.mail_from.address.clone(),
            params: vec![],
        };
        let id = self
            .store
            .create_transaction(submission.transaction(&origin, &null_mailbox(), rcpt, &blob, None))
            .await?;
        tracing::info!(tx = %record.id, bounce = %id, to = %record.tx.mail_from.address, "bounce queued");
        self.queue.metrics.bounced();
        self.queue.wake();
        Ok(())
    }
}

impl Scheduler {
    /// One update through the attempt's stack; a panic answers every part
    /// of it (a body chunk's with an early data reply) with the internal
    /// error, which ends the attempt.
    async fn call(
        &self,
        stack: &mut BoxTxService,
        update: TxUpdate,
        id: &koukan_storage::TxId,
    ) -> UpdateResponse {
        let shape = update.clone();
        match call_caught(stack, update).await {
            Ok(r) => r,
            Err(panicked) => {
                tracing::error!(tx = %id, error = %panicked, "delivery attempt ended by an internal error");
                self.internal_errors.count("scheduler");
                UpdateResponse::ended(&shape, &Response::internal_error())
            }
        }
    }
}

fn context(record: &TxRecord) -> TxContext {
    TxContext::new(
        record.id.0.clone(),
        replayed_ingress(record),
        record.tx.sender.clone(),
        record.tx.tag.clone(),
    )
}

/// An attempt's outcome as its log line shows it: the final reason (the
/// original's strings, as stored and shown by the admin API) or when the
/// next attempt is due.
struct Outcome<'a>(&'a NextStep);

impl std::fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            NextStep::Final { reason } => write!(f, "final: {reason}"),
            NextStep::RetryAt(t) => {
                let secs = t
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .as_secs();
                write!(f, "retry in {secs}s")
            }
        }
    }
}

/// The reply that failed the attempt, as "code text".
fn failure_reply(r: &AttemptResponses) -> String {
    let first_bad = [r.mail.as_ref()]
        .into_iter()
        .chain(r.rcpt.iter().map(Option::as_ref))
        .chain([r.data.as_ref()])
        .flatten()
        .find(|x| x.class() != ReplyClass::Ok);
    match first_bad {
        Some(x) => format!("{} {}", x.code, x.text),
        None => "451 4.0.0 delivery failed".into(),
    }
}

fn summary(r: &AttemptResponses) -> String {
    let last = r
        .data
        .as_ref()
        .or_else(|| r.rcpt.iter().flatten().find(|x| x.code >= 300))
        .or(r.mail.as_ref());
    last.map(|x| format!("{} {}", x.code, x.text.replace('\n', " / ")))
        .unwrap_or_default()
}

/// The prior attempt's responses when they already settle the
/// transaction (a permanent failure after the client was told 250, or no
/// retry left), so that the upstream is not asked again. Only while no
/// attempt of ours has finished: afterwards the history has more than the
/// prior attempt.
fn settled_by_prior(
    record: &TxRecord,
    policy: Option<&RetryPolicy>,
    now: SystemTime,
) -> Option<AttemptResponses> {
    let prior = record.tx.prior_attempt.as_ref()?;
    if record.attempts.len() != 1 {
        return None;
    }
    let before_claim = record.attempt_count.saturating_sub(1);
    match decide(record, before_claim, &prior.responses, policy, now) {
        NextStep::Final { .. } => Some(prior.responses.clone()),
        NextStep::RetryAt(_) => None,
    }
}

/// Success, permanent failure, or the retry policy's verdict on attempt
/// number `attempt` of `record`.
pub fn decide(
    record: &TxRecord,
    attempt: u32,
    r: &AttemptResponses,
    policy: Option<&RetryPolicy>,
    now: SystemTime,
) -> NextStep {
    let is_perm = |x: &StoredResponse| x.class() == ReplyClass::Perm;
    let is_ok = |x: &StoredResponse| x.class() == ReplyClass::Ok;
    let final_ = |reason| NextStep::Final { reason };
    match (&r.mail, r.rcpt.first().cloned().flatten(), &r.data) {
        (Some(m), _, _) if is_perm(m) => return final_(FinalReason::UpstreamMailPermfail),
        (Some(m), _, _) if !is_ok(m) => {}
        (_, Some(rc), _) if is_perm(&rc) => return final_(FinalReason::UpstreamRcptPermfail),
        (_, Some(rc), _) if !is_ok(&rc) => {}
        (_, _, Some(d)) if is_ok(d) => return final_(FinalReason::UpstreamSuccess),
        (_, _, Some(d)) if is_perm(d) => return final_(FinalReason::UpstreamPermfail),
        _ => {}
    }
    match (policy, record.tx.retry) {
        (Some(p), true) => p.after_temp_failure(attempt, record.created, now, rand::random()),
        _ => final_(FinalReason::UpstreamTempNoRetry),
    }
}

#[cfg(test)]
mod scripted_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

    const YAML: &str = r#"
node: {id: scheduler-unit}
admin: {address: "127.0.0.1:9"}
storage: {embedded: {path: koukan.db}}
static_resources:
  listeners:
  - name: in
    address: "127.0.0.1:1"
    smtp: {hostname: koukan.test, sender: in}
  senders: [{name: in, chain: in}]
  chains:
  - name: in
    store_and_forward: {output_chain: out}
  - name: out
    filters:
    - router: {destination: {endpoint: box}}
    retry: {max_attempts: 3, min_attempt_time: 30s, max_attempt_time: 30s}
  endpoints:
  - name: box
    maildir: {path: box}
"#;

    /// A panic in the output chain ends the attempt as a temporary
    /// failure: recorded with `451 4.3.0`, the lease released, a retry
    /// scheduled, the panic counted; the scheduler goes on delivering.
    #[tokio::test]
    async fn a_panicking_chain_is_an_attempt_that_failed_temporarily() {
        let f = fixture(YAML, &["out"]);
        let scheduler = Arc::new(Scheduler::new(
            &f.queue,
            f.chains(),
            SchedulerConfig {
                poll_interval: Duration::from_millis(50),
                lease_ttl: Duration::from_secs(3),
                ..SchedulerConfig::default()
            },
        ));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(scheduler.run(stop_rx));

        let mut ids = Vec::new();
        for body in [
            "Subject: bug\r\n\r\nPANIC\r\n",
            "Subject: fine\r\n\r\nok\r\n",
        ] {
            let (_ctx, mut svc) = f.transaction();
            let r = call(&mut svc, envelope("a@example.org", &["b@example.com"])).await;
            assert!(r.rcpts[0].is_ok());
            let d = call(&mut svc, TxUpdate::body(body, true))
                .await
                .data
                .unwrap();
            ids.push(koukan_storage::TxId(
                d.text.split_once("queued as ").unwrap().1.to_owned(),
            ));
        }
        let store = f.queue.store.clone();
        let failed = eventually(Duration::from_secs(10), || {
            let (store, id) = (store.clone(), ids[0].clone());
            async move {
                let r = store.get_transaction(&id).await.ok()?;
                (!r.attempts.is_empty()).then_some(r)
            }
        })
        .await
        .expect("the attempt was recorded");
        let data = failed.attempts[0].responses.data.clone().unwrap();
        assert_eq!(
            (data.code, data.text.as_str()),
            (451, "4.3.0 internal error, try again later")
        );
        assert_eq!(failed.final_attempt_reason, None);
        assert_eq!(failed.lease_owner, None, "the lease is released");
        assert!(failed.next_attempt.unwrap() > SystemTime::now() + Duration::from_secs(20));
        assert_eq!(f.internal_errors("scheduler"), 1);

        let delivered = eventually(Duration::from_secs(10), || {
            let (store, id) = (store.clone(), ids[1].clone());
            async move {
                let r = store.get_transaction(&id).await.ok()?;
                r.final_attempt_reason.is_some().then_some(r)
            }
        })
        .await
        .expect("the next transaction is delivered");
        assert_eq!(
            delivered.final_attempt_reason,
            Some(FinalReason::UpstreamSuccess)
        );
        assert_eq!(f.maildir("box").len(), 1);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    /// A message received over STARTTLS with AUTH and stored is delivered
    /// by the scheduler with those facts: the record keeps them typed, and
    /// the output chain's received_header (which runs at delivery, on the
    /// replayed ingress) writes them.
    #[tokio::test]
    async fn stored_and_forwarded_with_its_tls_and_auth_facts() {
        let yaml = YAML.replace(
            "  - name: out\n    filters:\n",
            "  - name: out\n    filters:\n    - received_header: {received_hostname: out.koukan.test}\n",
        );
        assert_ne!(yaml, YAML);
        let f = fixture(&yaml, &[]);
        let scheduler = Arc::new(Scheduler::new(
            &f.queue,
            f.chains(),
            SchedulerConfig {
                poll_interval: Duration::from_millis(50),
                ..SchedulerConfig::default()
            },
        ));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(scheduler.run(stop_rx));

        let (_ctx, mut svc) = f.transaction_from(koukan_chain::SessionInfo {
            listener: "in".into(),
            peer: "198.51.100.7:50123".parse().unwrap(),
            local: "192.0.2.10:587".parse().unwrap(),
            ehlo_host: Some("client.example".into()),
            esmtp: true,
            tls: Some(koukan_chain::TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
            }),
            auth_user: Some("app".into()),
        });
        assert!(
            call(&mut svc, envelope("a@example.org", &["b@example.com"]))
                .await
                .rcpts[0]
                .is_ok()
        );
        let d = call(&mut svc, TxUpdate::body("Subject: s\r\n\r\nhi\r\n", true))
            .await
            .data
            .unwrap();
        let id = koukan_storage::TxId(d.text.split_once("queued as ").unwrap().1.to_owned());
        let store = f.queue.store.clone();
        let record = eventually(Duration::from_secs(10), || {
            let (store, id) = (store.clone(), id.clone());
            async move {
                let r = store.get_transaction(&id).await.ok()?;
                r.final_attempt_reason.is_some().then_some(r)
            }
        })
        .await
        .expect("delivered");
        assert_eq!(
            record.final_attempt_reason,
            Some(FinalReason::UpstreamSuccess)
        );
        let koukan_storage::StoredIngress::Smtp(s) = &record.tx.ingress else {
            panic!("{:?}", record.tx.ingress);
        };
        assert_eq!(s.tls.as_ref().unwrap().cipher, "TLS13_AES_256_GCM_SHA384");
        assert_eq!(s.auth_user.as_deref(), Some("app"));
        assert_eq!(s.local, Some("192.0.2.10:587".parse().unwrap()));

        let delivered = f.maildir("box");
        assert_eq!(delivered.len(), 1);
        let msg = String::from_utf8_lossy(&delivered[0]);
        assert!(
            msg.starts_with(&format!(
                "Received: from client.example ([198.51.100.7])\r\n\tby out.koukan.test\r\n\twith ESMTPSA (using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tid {id}\r\n"
            )),
            "{msg}"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
