//! The exploder: one inbound transaction with N recipients fans out to N
//! upstream transactions (one per recipient, through the output chain),
//! cut-through while the client waits, falling back to durable storage
//! when an upstream is slow or temporarily failing.
//!
//! The reply table follows the original Koukan:
//!
//! | upstream result | msa (submission) | ingress (mx) |
//! |---|---|---|
//! | rcpt: timeout | 250 (stored) | 451 4.4.7 upstream timeout |
//! | rcpt: 4xx | 250 (stored) | 4xx verbatim |
//! | rcpt: 5xx | verbatim | verbatim |
//! | data: timeout | 250 (stored) | 451 4.4.7 upstream timeout |
//! | data: 4xx | 250 (stored, retries and bounce) | 4xx verbatim |
//! | data: 5xx | verbatim | verbatim (mixed multi-rcpt: 250, stored, bounce) |
//!
//! With several recipients, the data reply is the upstreams' common reply
//! when they agree in class (the first, with "(exploder same response)"),
//! and otherwise 250 with the failed recipients stored for retry and
//! bounce. Every body is spooled into a blob as it streams, so storing
//! needs no second pass; a blob no transaction references is collected.
//!
//! The fan-out is bounded (`max_upstreams` upstream transactions per
//! inbound one). A recipient over the bound is answered like a timeout if
//! it waited for a slot in vain; if no slot could free before the end of
//! data it is over the bound at once: msa stores it, mx answers
//! `452 4.5.3` so the client sends it again in another transaction.

use std::sync::Arc;

use futures::future::BoxFuture;
use koukan_chain::{
    BoxTxService, Mailbox, Recipient, ReplyClass, Response, Terminal, TxContext, TxUpdate,
    UpdateResponse, call_caught,
};
use koukan_storage::{AttemptResponses, PriorAttempt};
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::{Instant, timeout_at};
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::NewChain;
use crate::config::ExploderSpec;
use crate::queue::convert::{storage_error_reply, stored_response};
use crate::queue::metrics::{DeliveryMetrics, RecipientOutcome};
use crate::queue::{Origin, ReceivingGuard, Spool, Submission};
use koukan_smtp_server::InternalErrors;

type Job = (TxUpdate, oneshot::Sender<UpdateResponse>);

/// One upstream transaction running the output chain in its own task, so
/// a slow upstream never blocks the others or the client beyond its
/// timeout.
///
/// The task belongs to the inbound transaction: dropping the runner (the
/// recipient refused or abandoned, the exploder dropped because the
/// transaction ended, or unwound by a panic) aborts it, which drops the
/// upstream stack and its connection. Its fan-out slot is given back at
/// once, so that a recipient waiting in the same batch can take it (the
/// aborted task's connection closes a moment later, as the task ends).
struct Runner {
    jobs: mpsc::Sender<Job>,
    _task: AbortOnDropHandle<()>,
    _slot: OwnedSemaphorePermit,
}

impl Runner {
    fn spawn(
        mut stack: BoxTxService,
        slot: OwnedSemaphorePermit,
        rcpt: &str,
        internal_errors: InternalErrors,
    ) -> Self {
        // Inside the inbound transaction's span (its tx id), with the
        // recipient this upstream transaction is for.
        let span = tracing::info_span!("upstream", rcpt = %rcpt);
        // Two updates in flight at most: body chunks are flow-controlled
        // by the slowest upstream within the data timeout.
        let (jobs, mut rx) = mpsc::channel::<Job>(2);
        let task = tokio::spawn(async move {
            while let Some((update, reply)) = rx.recv().await {
                let shape = update.clone();
                match call_caught(&mut stack, update).await {
                    Ok(resp) => {
                        let _ = reply.send(resp);
                    }
                    Err(panicked) => {
                        tracing::error!(error = %panicked, "exploder upstream transaction ended by an internal error");
                        internal_errors.count("exploder");
                        // The stack's state is unknown: answer this update
                        // (a body chunk's failure as its early data reply)
                        // and end the upstream transaction.
                        let _ =
                            reply.send(UpdateResponse::ended(&shape, &Response::internal_error()));
                        return;
                    }
                }
            }
        }.instrument(span));
        Self {
            jobs,
            _task: AbortOnDropHandle::new(task),
            _slot: slot,
        }
    }

    /// Queues an update; the receiver yields its responses.
    async fn send(
        &self,
        update: TxUpdate,
        deadline: Instant,
    ) -> Option<oneshot::Receiver<UpdateResponse>> {
        let (tx, rx) = oneshot::channel();
        match timeout_at(deadline, self.jobs.send((update, tx))).await {
            Ok(Ok(())) => Some(rx),
            _ => None,
        }
    }
}

fn upstream_timeout() -> Response {
    Response::new(451, "4.4.7 upstream timeout (exploder)")
}

/// mx: a recipient over the fan-out bound is refused for now, as over a
/// recipient limit (RFC 5321 §4.5.3.1.10): the client sends it again in
/// another transaction.
fn over_bound() -> Response {
    Response::new(
        452,
        "4.5.3 too many recipients at once, send the rest in another transaction (exploder)",
    )
}

/// How opening one recipient's upstream transaction went.
enum Opened {
    /// The upstream answered MAIL+RCPT; its runner is kept iff it accepted
    /// the recipient.
    Replied(UpdateResponse, Option<Runner>),
    /// No reply from the upstream by the RCPT deadline.
    TimedOut,
    /// No fan-out slot by the RCPT deadline: answered like a timeout, but
    /// no upstream was tried, so there is no attempt to store.
    NoSlot,
    /// Over the fan-out bound with no slot that could free before the end
    /// of data: no upstream was tried.
    OverBound,
}

struct Upstream {
    rcpt: Mailbox,
    /// An upstream was asked (false: over the fan-out bound); only then is
    /// there an attempt to store with the transaction.
    attempted: bool,
    /// The upstream's MAIL and RCPT replies (a timeout as its 451), kept
    /// as the first attempt of a stored transaction.
    mail_reply: Option<Response>,
    rcpt_reply: Response,
    runner: Option<Runner>,
    /// Replies to body chunks not awaited yet.
    pending: Vec<oneshot::Receiver<UpdateResponse>>,
    /// Told the client 2xx for this recipient.
    accepted: bool,
    /// Accepted on the promise of storage (msa): stored whatever happens.
    store: bool,
    data: Option<Response>,
}

pub struct Exploder {
    /// The chains of the snapshot the transaction started on.
    chains: Arc<dyn NewChain>,
    target: Arc<Submission>,
    spec: Arc<ExploderSpec>,
    ctx: Arc<TxContext>,
    mail_from: Option<Mailbox>,
    upstreams: Vec<Upstream>,
    /// The fan-out bound (`ExploderSpec::max_upstreams`): one permit per
    /// upstream transaction of this inbound transaction.
    slots: Arc<Semaphore>,
    internal_errors: InternalErrors,
    spool: Spool,
    spool_failed: Option<Response>,
    _receiving: ReceivingGuard,
}

impl Exploder {
    pub fn new(
        chains: Arc<dyn NewChain>,
        target: Arc<Submission>,
        spec: Arc<ExploderSpec>,
        ctx: Arc<TxContext>,
    ) -> Self {
        Self {
            _receiving: target.queue.receiving(),
            internal_errors: target.queue.internal_errors.clone(),
            slots: Arc::new(Semaphore::new(spec.max_upstreams.max(1))),
            chains,
            target,
            spec,
            ctx,
            mail_from: None,
            upstreams: Vec::new(),
            spool: Spool::default(),
            spool_failed: None,
        }
    }

    /// A fan-out slot for one recipient of the current batch. A slot
    /// frees before the end of data only when an upstream of this batch
    /// refuses its recipient or times out (an accepted one keeps its slot
    /// until its transaction ends), so a recipient waits, up to
    /// `deadline`, only while some upstream of the batch is still
    /// unsettled; otherwise it is over the bound at once, rather than after
    /// a pointless wait (which a client sending RCPTs one by one would pay
    /// per recipient).
    async fn slot(
        &self,
        deadline: Instant,
        unsettled: &watch::Sender<usize>,
    ) -> Result<OwnedSemaphorePermit, Opened> {
        let mut changed = unsettled.subscribe();
        loop {
            // A slot freed at the deadline (another upstream timing out)
            // is too late to ask an upstream with.
            if Instant::now() >= deadline {
                return Err(Opened::NoSlot);
            }
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                unsettled.send_modify(|n| *n += 1);
                return Ok(slot);
            }
            if *changed.borrow_and_update() == 0 {
                return Err(Opened::OverBound);
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(Opened::NoSlot),
            }
        }
    }

    /// Opens one recipient's upstream transaction once it has a fan-out
    /// slot and returns how it answered MAIL+RCPT by `deadline`. The
    /// runner is kept only when the upstream accepted the recipient; any
    /// other is dropped here, at once, so its slot serves the recipients
    /// still waiting in the same batch.
    async fn open_upstream(
        &self,
        mail: Mailbox,
        rcpt: Mailbox,
        deadline: Instant,
        unsettled: &watch::Sender<usize>,
    ) -> Opened {
        let slot = match self.slot(deadline, unsettled).await {
            Ok(slot) => slot,
            Err(not) => return not,
        };
        let opened = match self.chains.new_chain(&self.spec.output_chain, &self.ctx) {
            Some(stack) => {
                let runner =
                    Runner::spawn(stack, slot, &rcpt.address, self.internal_errors.clone());
                let mut first = TxUpdate::mail(mail);
                first.rcpt_to = vec![Recipient::new(rcpt)];
                let resp = match runner.send(first, deadline).await {
                    Some(rx) => timeout_at(deadline, rx).await.ok().and_then(Result::ok),
                    None => None,
                };
                match resp {
                    Some(r) => {
                        let accepted = r.mail.as_ref().is_none_or(Response::is_ok)
                            && r.rcpts.first().is_some_and(Response::is_ok);
                        Opened::Replied(r, accepted.then_some(runner))
                    }
                    None => Opened::TimedOut,
                }
            }
            // Validation makes the output chain exist; a reload that drops
            // it leaves this transaction's recipients a clear 451.
            None => {
                drop(slot);
                let r = Response::new(
                    451,
                    format!("4.3.5 no chain named {}", self.spec.output_chain),
                );
                Opened::Replied(
                    UpdateResponse {
                        mail: None,
                        rcpts: vec![r],
                        data: None,
                    },
                    None,
                )
            }
        };
        // Settled: a refused or timed-out runner is gone by now, with its
        // slot.
        unsettled.send_modify(|n| *n -= 1);
        opened
    }

    /// Starts one upstream per recipient (as many at once as the fan-out
    /// bound allows) and waits, together, for their RCPT replies up to the
    /// rcpt timeout.
    async fn recipients(&mut self, rcpts: Vec<Recipient>) -> Vec<Response> {
        let deadline = Instant::now() + self.spec.rcpt_timeout;
        let mail = self.mail_from.clone().unwrap_or_default();
        let unsettled = watch::Sender::new(0usize);
        let this = &*self;
        let replies = futures::future::join_all(rcpts.into_iter().map(|rcpt| {
            let mail = mail.clone();
            let unsettled = &unsettled;
            async move {
                let opened = this
                    .open_upstream(mail, rcpt.mailbox.clone(), deadline, unsettled)
                    .await;
                (rcpt.mailbox, opened)
            }
        }))
        .await;
        let mut out = Vec::new();
        for (rcpt, opened) in replies {
            // `timed_out`: answered as an upstream timeout (mx 451 4.4.7);
            // `attempted`: an upstream was asked, so the reply is an
            // attempt to store with the transaction.
            let (resp, runner, attempted, timed_out) = match opened {
                Opened::Replied(r, runner) => (Some(r), runner, true, false),
                Opened::TimedOut => (None, None, true, true),
                Opened::NoSlot => (None, None, false, true),
                Opened::OverBound => (None, None, false, false),
            };
            // The upstream's RCPT answer; a refused MAIL is the answer for
            // the recipient that travelled with it.
            let mail_reply = resp.as_ref().and_then(|r| r.mail.clone());
            let upstream = resp.and_then(|r| match r.mail {
                Some(m) if !m.is_ok() => Some(m),
                _ => r.rcpts.into_iter().next(),
            });
            let rcpt_reply = upstream.clone().unwrap_or_else(upstream_timeout);
            let answered = upstream.is_some();
            let (reply, accepted, store) = match upstream {
                Some(r) if r.is_ok() => (r, true, false),
                Some(r) if r.class() == ReplyClass::Perm => (r, false, false),
                Some(_) | None if self.spec.msa => (
                    Response::new(250, "2.1.5 RCPT ok (exploder store&forward)"),
                    true,
                    true,
                ),
                Some(r) => (r, false, false),
                None if timed_out => (upstream_timeout(), false, false),
                None => (over_bound(), false, false),
            };
            // Accepted recipients are counted at the end of data.
            if !accepted {
                self.metrics().exploded(match (answered, timed_out) {
                    (true, _) => RecipientOutcome::Refused,
                    (false, true) => RecipientOutcome::Timeout,
                    (false, false) => RecipientOutcome::OverBound,
                });
            }
            self.upstreams.push(Upstream {
                rcpt,
                attempted,
                mail_reply,
                rcpt_reply,
                // Only an upstream that accepted the recipient kept its
                // runner (see `open_upstream`).
                runner,
                pending: Vec::new(),
                accepted,
                store,
                data: None,
            });
            out.push(reply);
        }
        out
    }

    async fn body(&mut self, data: bytes::Bytes, last: bool) -> Option<Response> {
        if self.spool_failed.is_none()
            && let Err(e) = self
                .spool
                .append(&self.target.queue, data.clone(), false)
                .await
        {
            tracing::warn!(tx = %self.ctx.id, error = %e, "spooling the body failed");
            self.spool_failed = Some(storage_error_reply(&e));
        }
        let deadline = Instant::now() + self.spec.data_timeout;
        for up in self.upstreams.iter_mut().filter(|u| u.runner.is_some()) {
            // Take the replies that arrived. A receiver is read once: a
            // oneshot must not be polled again after it yielded its value.
            // An upstream that already failed mid-body is done.
            let early = &mut up.data;
            up.pending.retain_mut(|rx| match rx.try_recv() {
                Ok(r) => {
                    if let Some(d) = r.data {
                        early.get_or_insert(d);
                    }
                    false
                }
                Err(TryRecvError::Empty) => true,
                // The runner ended without answering (aborted): the
                // wait below treats it as no reply.
                Err(TryRecvError::Closed) => false,
            });
            if up.data.is_some() {
                up.runner = None;
                continue;
            }
            let Some(runner) = &up.runner else { continue };
            match runner
                .send(TxUpdate::body(data.clone(), last), deadline)
                .await
            {
                Some(rx) => up.pending.push(rx),
                None => up.runner = None,
            }
        }
        if !last {
            return None;
        }
        // Wait for every upstream's final reply, together, up to the data
        // timeout.
        let finals = futures::future::join_all(self.upstreams.iter_mut().map(|up| async move {
            if up.data.is_none() && up.runner.is_some() {
                for rx in up.pending.drain(..) {
                    if let Ok(Ok(r)) = timeout_at(deadline, rx).await
                        && let Some(d) = r.data
                    {
                        up.data.get_or_insert(d);
                    }
                }
            }
            // Done or abandoned: dropping the runner closes the upstream.
            up.runner = None;
        }));
        finals.await;
        Some(self.final_reply().await)
    }

    async fn final_reply(&mut self) -> Response {
        let msa = self.spec.msa;
        // Each accepted recipient's outcome: Some(reply) if the client
        // can be told it, None if it has to be stored.
        let mut outcomes: Vec<(usize, Option<Response>)> = Vec::new();
        for (i, up) in self
            .upstreams
            .iter()
            .enumerate()
            .filter(|(_, u)| u.accepted)
        {
            let outcome = match (&up.data, up.store) {
                (_, true) => None,
                (Some(d), _) if d.class() == ReplyClass::Ok || d.class() == ReplyClass::Perm => {
                    Some(d.clone())
                }
                (Some(_), _) | (None, _) if msa => None,
                (Some(d), _) => Some(d.clone()),
                (None, _) => Some(upstream_timeout()),
            };
            outcomes.push((i, outcome));
        }
        if outcomes.is_empty() {
            return Response::new(554, "5.5.1 no valid recipients");
        }
        let answered: Vec<&Response> = outcomes.iter().filter_map(|(_, o)| o.as_ref()).collect();
        let same_class = outcomes.iter().all(|(_, o)| o.is_some())
            && answered.windows(2).all(|w| w[0].class() == w[1].class());
        if same_class {
            for (_, o) in &outcomes {
                self.metrics().exploded(final_outcome(o.as_ref()));
            }
            let first = answered[0].clone();
            return if answered.len() == 1 {
                first
            } else {
                Response::new(
                    first.code,
                    format!("{} (exploder same response)", first.text),
                )
            };
        }
        // Mixed, or some must be stored: store every recipient that was
        // not delivered, with the attempt just made, then the client can
        // be told 250.
        let to_store: Vec<(&Mailbox, Option<PriorAttempt>)> = outcomes
            .iter()
            .filter(|(_, o)| o.as_ref().is_none_or(|r| r.class() != ReplyClass::Ok))
            .map(|(i, _)| {
                let up = &self.upstreams[*i];
                let data = match (&up.data, up.rcpt_reply.is_ok()) {
                    (Some(d), _) => Some(stored_response(d)),
                    // Accepted by the upstream, no final reply in time.
                    (None, true) => Some(stored_response(&upstream_timeout())),
                    (None, false) => None,
                };
                let responses = AttemptResponses {
                    mail: up.mail_reply.as_ref().map(stored_response),
                    rcpt: vec![Some(stored_response(&up.rcpt_reply))],
                    data,
                };
                let prior = up.attempted.then(|| self.target.prior_attempt(responses));
                (&up.rcpt, prior)
            })
            .collect();
        if let Some(failed) = &self.spool_failed {
            return failed.clone();
        }
        let stored = async {
            self.spool
                .append(&self.target.queue, bytes::Bytes::new(), true)
                .await?;
            self.spool
                .commit(
                    &self.target,
                    &Origin::of(&self.ctx),
                    self.mail_from.as_ref(),
                    to_store,
                )
                .await
        }
        .await;
        for (_, o) in &outcomes {
            self.metrics().exploded(match o {
                Some(r) if r.is_ok() => RecipientOutcome::Delivered,
                _ if stored.is_ok() => RecipientOutcome::Stored,
                // Not stored after all: the client is told to try again.
                _ => RecipientOutcome::Refused,
            });
        }
        match stored {
            Ok(ids) => Response::new(
                250,
                format!(
                    "2.0.0 DATA ok (exploder store&forward) queued as {}",
                    ids.join(",")
                ),
            ),
            Err(e) => {
                tracing::warn!(tx = %self.ctx.id, error = %e, "storing for retry failed");
                storage_error_reply(&e)
            }
        }
    }
}

impl Exploder {
    fn metrics(&self) -> &DeliveryMetrics {
        &self.target.queue.metrics
    }
}

/// What an accepted recipient whose upstream's final reply the client
/// gets came to.
fn final_outcome(reply: Option<&Response>) -> RecipientOutcome {
    match reply {
        Some(r) if r.is_ok() => RecipientOutcome::Delivered,
        Some(r) if *r == upstream_timeout() => RecipientOutcome::Timeout,
        _ => RecipientOutcome::Refused,
    }
}

impl Terminal for Exploder {
    fn update(&mut self, update: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        Box::pin(async move {
            let mut resp = UpdateResponse::default();
            if let Some(mail) = update.mail_from {
                resp.mail = Some(if self.target.queue.saturated() {
                    Response::new(451, "4.3.2 delivery queue full, try again later")
                } else {
                    self.mail_from = Some(mail);
                    Response::new(250, "2.1.0 MAIL ok (exploder)")
                });
            }
            if !update.rcpt_to.is_empty() {
                resp.rcpts = self.recipients(update.rcpt_to).await;
            }
            if let Some(body) = update.body {
                if !self.upstreams.iter().any(|u| u.accepted) {
                    resp.data = body
                        .last
                        .then(|| Response::new(554, "5.5.1 no valid recipients"));
                } else {
                    resp.data = self.body(body.data, body.last).await;
                }
            }
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

    fn yaml(msa: bool) -> String {
        format!(
            r#"
node: {{id: exploder-unit}}
admin: {{address: "127.0.0.1:9"}}
storage: {{embedded: {{path: koukan.db}}}}
static_resources:
  listeners:
  - name: in
    address: "{LISTENER}"
    smtp: {{hostname: koukan.test, sender: in}}
  senders: [{{name: in, chain: in}}]
  chains:
  - name: in
    exploder: {{output_chain: out, msa: {msa}, rcpt_timeout: 5s, data_timeout: 5s}}
  - name: out
    filters:
    - router: {{destination: {{endpoint: box}}}}
    retry: {{max_attempts: 3, min_attempt_time: 1s, max_attempt_time: 1s}}
  endpoints:
  - name: box
    maildir: {{path: box}}
"#
        )
    }

    /// A panic in one recipient's upstream transaction answers that
    /// recipient `451 4.3.0`; the other recipient is delivered, and the
    /// panic is counted.
    #[tokio::test]
    async fn a_panicking_upstream_fails_only_its_recipient() {
        let f = fixture(&yaml(false), &["out"]);
        let (_ctx, mut svc) = f.transaction();
        let r = call(
            &mut svc,
            envelope("a@example.org", &["ok@example.com", "panic@example.com"]),
        )
        .await;
        assert!(r.mail.unwrap().is_ok());
        assert!(r.rcpts[0].is_ok(), "{:?}", r.rcpts);
        assert_eq!(r.rcpts[1], Response::internal_error());
        let d = call(&mut svc, TxUpdate::body("Subject: t\r\n\r\nhi\r\n", true)).await;
        assert!(d.data.unwrap().is_ok());
        assert_eq!(f.maildir("box").len(), 1);
        assert_eq!(f.internal_errors("exploder"), 1);
    }

    /// msa: the recipient whose upstream panicked is accepted and stored,
    /// with the internal error as its first attempt.
    #[tokio::test]
    async fn msa_stores_the_recipient_whose_upstream_panicked() {
        let f = fixture(&yaml(true), &["out"]);
        let (_ctx, mut svc) = f.transaction();
        let r = call(
            &mut svc,
            envelope("a@example.org", &["ok@example.com", "panic@example.com"]),
        )
        .await;
        assert!(r.rcpts.iter().all(Response::is_ok), "{:?}", r.rcpts);
        let d = call(&mut svc, TxUpdate::body("Subject: t\r\n\r\nhi\r\n", true))
            .await
            .data
            .unwrap();
        let ids = d
            .text
            .split_once("queued as ")
            .unwrap_or_else(|| panic!("{d}"))
            .1
            .to_owned();
        let stored = f
            .queue
            .store
            .get_transaction(&koukan_storage::TxId(ids))
            .await
            .unwrap();
        assert_eq!(stored.tx.rcpt_to[0].address, "panic@example.com");
        let prior = &stored.attempts[0].responses;
        assert_eq!(prior.rcpt[0].as_ref().unwrap().code, 451);
        assert_eq!(f.maildir("box").len(), 1);
    }

    /// Every upstream panics on the body: mx passes the common 4xx back,
    /// and no task or upstream outlives the transaction.
    #[tokio::test]
    async fn upstreams_panicking_on_the_body_give_the_common_reply() {
        let f = fixture(&yaml(false), &["out"]);
        let (_ctx, mut svc) = f.transaction();
        let r = call(
            &mut svc,
            envelope("a@example.org", &["one@example.com", "two@example.com"]),
        )
        .await;
        assert!(r.rcpts.iter().all(Response::is_ok), "{:?}", r.rcpts);
        // Several chunks, the panic in the second: the third is never
        // sent to an upstream that already failed.
        assert_eq!(
            call(&mut svc, TxUpdate::body("Subject: t\r\n\r\n", false))
                .await
                .data,
            None
        );
        let _ = call(&mut svc, TxUpdate::body("PANIC\r\n", false)).await;
        let d = call(&mut svc, TxUpdate::body("tail\r\n", true))
            .await
            .data
            .unwrap();
        assert_eq!(d.code, 451, "{d}");
        assert!(
            d.text.starts_with("4.3.0 internal error")
                && d.text.ends_with("(exploder same response)"),
            "{d}"
        );
        assert!(f.maildir("box").is_empty());
        assert_eq!(f.internal_errors("exploder"), 2);
    }

    /// The exploder's stored transactions (they share the store writer's
    /// commit) keep the signals of the filters before it.
    #[tokio::test]
    async fn stored_recipients_keep_the_signals() {
        let yaml = yaml(true).replace(
            "  - name: in\n    exploder:",
            "  - name: in\n    filters:\n    - message_parse: {}\n    exploder:",
        );
        let f = fixture(&yaml, &["out"]);
        let (ctx, mut svc) = f.transaction();
        let r = call(&mut svc, envelope("a@example.org", &["panic@example.com"])).await;
        assert!(r.rcpts[0].is_ok(), "{:?}", r.rcpts);
        let d = call(&mut svc, TxUpdate::body("Subject: t\r\n\r\nhi\r\n", true))
            .await
            .data
            .unwrap();
        let id = d
            .text
            .split_once("queued as ")
            .unwrap_or_else(|| panic!("{d}"))
            .1;
        let stored = f
            .queue
            .store
            .get_transaction(&koukan_storage::TxId(id.to_owned()))
            .await
            .unwrap();
        let parse = &stored.tx.signals["message_parse"];
        assert_eq!(parse["count"], 3, "{parse}");
        assert_eq!(parse, &ctx.signals.to_json()["message_parse"]);
    }
}

#[cfg(test)]
mod scripted_tests;
