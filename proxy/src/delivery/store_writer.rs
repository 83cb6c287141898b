//! Store-and-forward terminal: the message goes to durable storage and the
//! client gets 250 only once it is there; the scheduler delivers it later
//! through the output chain.
//!
//! One stored transaction per recipient, all sharing the one body blob, so
//! each recipient is retried, bounced and reported on its own (the
//! exploder's fan-out).

use std::sync::Arc;

use futures::future::BoxFuture;
use koukan_chain::{Mailbox, Response, Terminal, TxContext, TxUpdate, UpdateResponse};
use koukan_storage::StoreError;

use crate::queue::convert::storage_error_reply;
use crate::queue::{Origin, ReceivingGuard, Spool, Submission};

#[derive(Default)]
struct State {
    mail_from: Option<Mailbox>,
    rcpts: Vec<Mailbox>,
    spool: Spool,
    failed: Option<Response>,
}

pub struct StoreWriter {
    target: Arc<Submission>,
    ctx: Arc<TxContext>,
    state: State,
    _receiving: ReceivingGuard,
}

impl StoreWriter {
    pub fn new(target: Arc<Submission>, ctx: Arc<TxContext>) -> Self {
        Self {
            _receiving: target.queue.receiving(),
            target,
            ctx,
            state: State::default(),
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
                resp.mail = Some(if target.queue.saturated() {
                    Response::new(451, "4.3.2 delivery queue full, try again later")
                } else if let Err(e @ StoreError::Full(_)) = target.queue.store.admit().await {
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
                } else if let Err(e) = state
                    .spool
                    .append(&target.queue, body.data, body.last)
                    .await
                {
                    tracing::warn!(tx = %ctx.id, error = %e, "storing the body failed");
                    let r = storage_error_reply(&e);
                    state.failed = Some(r.clone());
                    resp.data = Some(r);
                } else if body.last {
                    let rcpts = state.rcpts.iter().map(|r| (r, None)).collect();
                    let stored = state
                        .spool
                        .commit(target, &Origin::of(ctx), state.mail_from.as_ref(), rcpts)
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
