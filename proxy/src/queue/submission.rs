//! The one builder of new stored transactions: the store writer, the
//! exploder and bounces (and the REST API next) all go through it, so
//! what a stored transaction carries is decided in one place.

use std::sync::Arc;
use std::time::SystemTime;

use koukan_chain::{ReplyClass, TxContext};
use std::collections::BTreeMap;

use koukan_storage::{
    AttemptResponses, BlobId, NewTransaction, NextStep, PriorAttempt, StoredIngress, StoredMailbox,
};

use super::Queue;
use super::convert::{stored_ingress, stored_signals};
use crate::config::retry::RetryPolicy;

/// Where new transactions go: the queue, and the output chain that
/// delivers them with that chain's retry and bounce settings.
pub struct Submission {
    pub queue: Arc<Queue>,
    pub output_chain: String,
    /// The output chain's retry policy; none means one attempt.
    pub retry: Option<RetryPolicy>,
    /// The output chain sends bounces.
    pub notification: bool,
}

/// Where a new transaction came from, as it is stored with it: its
/// sender and tag, the first ingress, and the signals its filters
/// attached.
#[derive(Clone, Debug)]
pub struct Origin {
    pub sender: String,
    pub tag: String,
    pub ingress: StoredIngress,
    pub signals: BTreeMap<String, serde_json::Value>,
}

impl Origin {
    pub fn of(ctx: &TxContext) -> Self {
        Self {
            sender: ctx.sender.clone(),
            tag: ctx.tag.clone(),
            ingress: stored_ingress(&ctx.ingress),
            signals: stored_signals(ctx),
        }
    }
}

impl Submission {
    /// A transaction for one recipient on the finalized `body`, with the
    /// attempt already made for it, if any.
    pub fn transaction(
        &self,
        origin: &Origin,
        mail_from: &StoredMailbox,
        rcpt: StoredMailbox,
        body: &BlobId,
        prior_attempt: Option<PriorAttempt>,
    ) -> NewTransaction {
        NewTransaction {
            sender: origin.sender.clone(),
            tag: origin.tag.clone(),
            chain: self.output_chain.clone(),
            mail_from: mail_from.clone(),
            rcpt_to: vec![rcpt],
            ingress: origin.ingress.clone(),
            body: body.clone(),
            retry: self.retry.is_some(),
            // Never bounce a bounce.
            notification: self.notification && !mail_from.address.is_empty(),
            lease: None,
            prior_attempt,
            signals: origin.signals.clone(),
        }
    }

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
            .all(|r| ReplyClass::of(r.code) != ReplyClass::Perm);
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
