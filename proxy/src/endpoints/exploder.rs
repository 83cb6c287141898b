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

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use koukan_filters::{
    BoxTxService, Mailbox, Recipient, Response, Terminal, TxContext, TxUpdate, UpdateResponse,
};
use koukan_storage::{AttemptResponses, PriorAttempt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};
use tower::{Service, ServiceExt};

use super::store_writer::{Spool, StoreTarget, storage_error_reply, stored_response};
use crate::chains::build_stack;
use crate::runtime::Runtime;
use crate::scheduler::ReceivingGuard;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExploderSpec {
    pub output_chain: String,
    /// Submission semantics: anything not permanently refused is accepted
    /// and stored.
    pub msa: bool,
    pub rcpt_timeout: Duration,
    pub data_timeout: Duration,
}

type Job = (TxUpdate, oneshot::Sender<UpdateResponse>);

/// One upstream transaction running the output chain in its own task, so
/// a slow upstream never blocks the others or the client beyond its
/// timeout.
struct Runner {
    jobs: mpsc::Sender<Job>,
}

impl Runner {
    fn spawn(mut stack: BoxTxService) -> Self {
        // Two updates in flight at most: body chunks are flow-controlled
        // by the slowest upstream within the data timeout.
        let (jobs, mut rx) = mpsc::channel::<Job>(2);
        tokio::spawn(async move {
            while let Some((update, reply)) = rx.recv().await {
                let Ok(svc) = stack.ready().await;
                let Ok(resp) = svc.call(update).await;
                let _ = reply.send(resp);
            }
        });
        Self { jobs }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Ok,
    Temp,
    Perm,
}

fn class(r: &Response) -> Class {
    match r.code {
        200..=299 => Class::Ok,
        500..=599 => Class::Perm,
        _ => Class::Temp,
    }
}

fn upstream_timeout() -> Response {
    Response::new(451, "4.4.7 upstream timeout (exploder)")
}

struct Upstream {
    rcpt: Mailbox,
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
    runtime: Arc<Runtime>,
    target: Arc<StoreTarget>,
    spec: Arc<ExploderSpec>,
    ctx: Arc<TxContext>,
    mail_from: Option<Mailbox>,
    upstreams: Vec<Upstream>,
    spool: Spool,
    spool_failed: Option<Response>,
    _receiving: ReceivingGuard,
}

impl Exploder {
    pub fn new(
        runtime: Arc<Runtime>,
        target: Arc<StoreTarget>,
        spec: Arc<ExploderSpec>,
        ctx: Arc<TxContext>,
    ) -> Self {
        Self {
            _receiving: target.scheduler.receiving(),
            runtime,
            target,
            spec,
            ctx,
            mail_from: None,
            upstreams: Vec::new(),
            spool: Spool::default(),
            spool_failed: None,
        }
    }

    fn start_runner(&self) -> Option<Runner> {
        let chain = self.runtime.chain(&self.spec.output_chain)?;
        Some(Runner::spawn(build_stack(&self.runtime, chain, &self.ctx)))
    }

    /// Starts one upstream per recipient and waits (together) for their
    /// RCPT replies up to the rcpt timeout.
    async fn recipients(&mut self, rcpts: Vec<Recipient>) -> Vec<Response> {
        let deadline = Instant::now() + self.spec.rcpt_timeout;
        let mail = self.mail_from.clone().unwrap_or_default();
        let mut waits = Vec::new();
        for rcpt in rcpts {
            let runner = self.start_runner();
            let reply = match &runner {
                Some(r) => {
                    let mut first = TxUpdate::mail(mail.clone());
                    first.rcpt_to = vec![Recipient::new(rcpt.mailbox.clone())];
                    r.send(first, deadline).await
                }
                None => None,
            };
            waits.push((rcpt.mailbox, runner, reply));
        }
        let replies =
            futures::future::join_all(waits.into_iter().map(|(rcpt, runner, reply)| async move {
                let resp = match reply {
                    Some(rx) => timeout_at(deadline, rx).await.ok().and_then(Result::ok),
                    None => None,
                };
                (rcpt, runner, resp)
            }))
            .await;
        let mut out = Vec::new();
        for (rcpt, runner, resp) in replies {
            // The upstream's RCPT answer; a refused MAIL is the answer for
            // the recipient that travelled with it.
            let mail_reply = resp.as_ref().and_then(|r| r.mail.clone());
            let upstream = resp.and_then(|r| match r.mail {
                Some(m) if !m.is_ok() => Some(m),
                _ => r.rcpts.into_iter().next(),
            });
            let rcpt_reply = upstream.clone().unwrap_or_else(upstream_timeout);
            let (reply, accepted, store, keep) = match upstream {
                Some(r) if r.is_ok() => (r, true, false, true),
                Some(r) if class(&r) == Class::Perm => (r, false, false, false),
                Some(_) | None if self.spec.msa => (
                    Response::new(250, "2.1.5 RCPT ok (exploder store&forward)"),
                    true,
                    true,
                    false,
                ),
                Some(r) => (r, false, false, false),
                None => (upstream_timeout(), false, false, false),
            };
            self.upstreams.push(Upstream {
                rcpt,
                mail_reply,
                rcpt_reply,
                runner: runner.filter(|_| keep),
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
            && let Err(e) = self.spool.append(&self.target, data.clone(), false).await
        {
            tracing::warn!(tx = %self.ctx.id, error = %e, "spooling the body failed");
            self.spool_failed = Some(storage_error_reply(&e));
        }
        let deadline = Instant::now() + self.spec.data_timeout;
        for up in self.upstreams.iter_mut().filter(|u| u.runner.is_some()) {
            // An upstream that already failed mid-body is done.
            for rx in &mut up.pending {
                if let Ok(r) = rx.try_recv()
                    && let Some(d) = r.data
                {
                    up.data = Some(d);
                }
            }
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
                        up.data = Some(d);
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
                (Some(d), _) if class(d) == Class::Ok || class(d) == Class::Perm => Some(d.clone()),
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
            && answered.windows(2).all(|w| class(w[0]) == class(w[1]));
        if same_class {
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
            .filter(|(_, o)| o.as_ref().is_none_or(|r| class(r) != Class::Ok))
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
                (&up.rcpt, Some(self.target.prior_attempt(responses)))
            })
            .collect();
        if let Some(failed) = &self.spool_failed {
            return failed.clone();
        }
        let stored = async {
            self.spool
                .append(&self.target, bytes::Bytes::new(), true)
                .await?;
            self.spool
                .commit(&self.target, &self.ctx, self.mail_from.as_ref(), to_store)
                .await
        }
        .await;
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

impl Terminal for Exploder {
    fn update(&mut self, update: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        Box::pin(async move {
            let mut resp = UpdateResponse::default();
            if let Some(mail) = update.mail_from {
                resp.mail = Some(if self.target.scheduler.saturated() {
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
