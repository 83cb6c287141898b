//! One mail transaction of a session: its chain, envelope counters and the
//! summary line logged when it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use koukan_chain::{
    BoxTxService, Mailbox, Response, TxContext, TxUpdate, UpdateResponse, call_caught,
};
use tracing::Instrument;

use crate::line_limit::LineLimit;
use crate::metrics::SmtpMetrics;
use crate::reply;

/// How a transaction ended (the `outcome` label and log field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Final data response 2xx.
    Delivered,
    /// Final data response 5xx.
    Rejected,
    /// Final data response 4xx.
    TempFail,
    /// The chain refused MAIL.
    MailRejected,
    /// RSET, EHLO, STARTTLS, QUIT or disconnect before the end of data.
    Aborted,
    /// The message exceeded the size limit.
    TooBig,
    /// A line of the message exceeded `max_data_line_length`.
    LineTooLong,
    /// The client or the chain did not answer in time.
    Timeout,
    /// A bug: the chain (or the session itself) panicked. The client got
    /// `451 4.3.0` (or `421 4.3.0` when the session had to close).
    InternalError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Rejected => "rejected",
            Outcome::TempFail => "tempfail",
            Outcome::MailRejected => "mail_rejected",
            Outcome::Aborted => "aborted",
            Outcome::TooBig => "too_big",
            Outcome::LineTooLong => "line_too_long",
            Outcome::Timeout => "timeout",
            Outcome::InternalError => "internal_error",
        }
    }

    pub fn of_final(resp: &Response) -> Self {
        if resp.is_ok() {
            Outcome::Delivered
        } else if resp.is_temp() {
            Outcome::TempFail
        } else {
            Outcome::Rejected
        }
    }
}

pub(crate) struct Transaction {
    pub ctx: Arc<TxContext>,
    /// `None` once the upstream transaction was dropped (message too big,
    /// chain timed out): dropping the service is what cancels upstream.
    svc: Option<BoxTxService>,
    pub mail_from: Mailbox,
    /// RCPTs forwarded to the chain (counted against `max_recipients`).
    pub rcpts_total: usize,
    /// RCPTs the chain answered 2xx.
    pub rcpts_accepted: usize,
    /// Message octets forwarded or (once failed) received.
    pub size: u64,
    pub started: Instant,
    /// BDAT was used; DATA is no longer allowed (RFC 3030 §2).
    pub bdat: bool,
    /// The transaction already has its final answer (early data response
    /// from the chain, size exceeded, chain timeout): the rest of the
    /// message is read and discarded, then this is the reply.
    pub failed: Option<(Response, Outcome)>,
    /// Line lengths of the message, counted across its DATA or BDAT
    /// chunks (a line may span them).
    pub lines: LineLimit,
    timeout: Duration,
    pub metrics: Arc<SmtpMetrics>,
    /// `tx{tx=<id>}`, a child of the session's span: entered around every
    /// chain call and the summary line. Its target is the summary line's
    /// (`koukan::tx`), so a filter that shows the summary shows its id.
    pub span: tracing::Span,
}

impl Transaction {
    pub fn new(
        ctx: Arc<TxContext>,
        svc: BoxTxService,
        mail_from: Mailbox,
        chain_timeout: Duration,
        max_data_line_length: usize,
        metrics: Arc<SmtpMetrics>,
    ) -> Self {
        let span = tracing::info_span!(target: "koukan::tx", "tx", tx = %ctx.id);
        Self {
            span,
            ctx,
            svc: Some(svc),
            mail_from,
            rcpts_total: 0,
            rcpts_accepted: 0,
            size: 0,
            started: Instant::now(),
            bdat: false,
            failed: None,
            lines: LineLimit::new(max_data_line_length),
            timeout: chain_timeout,
            metrics,
        }
    }

    /// Sends one update through the chain. The chain maps its own failures
    /// to responses; we only bound how long it may take and catch a panic
    /// inside it. After a timeout or a panic the chain's state is unknown,
    /// so it is dropped and the transaction is marked failed; every part of
    /// the update is answered (`451 4.4.1` or `451 4.3.0`) and the session
    /// goes on.
    pub async fn send(&mut self, update: TxUpdate) -> UpdateResponse {
        let Some(svc) = self.svc.as_mut() else {
            let resp = self
                .failed
                .as_ref()
                .map(|(r, _)| r.clone())
                .unwrap_or_else(|| reply::UNANSWERED.response());
            return UpdateResponse::fill(&update, &resp);
        };
        // Kept to answer every part of the update if the chain times out
        // (cheap: body bytes are reference counted).
        let shape = update.clone();
        let call = call_caught(svc, update).instrument(self.span.clone());
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(panicked)) => {
                self.span.in_scope(
                    || tracing::error!(error = %panicked, "transaction ended by an internal error"),
                );
                self.metrics.internal_errors.count("smtp_chain");
                let resp = Response::internal_error();
                self.fail(resp.clone(), Outcome::InternalError);
                UpdateResponse::fill(&shape, &resp)
            }
            Err(_) => {
                let resp = reply::UPSTREAM_TIMEOUT.response();
                self.fail(resp.clone(), Outcome::Timeout);
                UpdateResponse::fill(&shape, &resp)
            }
        }
    }

    /// Records the final answer and drops the upstream transaction (in
    /// the transaction's span: whatever the chain logs as it goes says
    /// which transaction it was).
    pub fn fail(&mut self, resp: Response, outcome: Outcome) {
        self.span.in_scope(|| self.svc = None);
        if self.failed.is_none() {
            self.failed = Some((resp, outcome));
        }
    }

    /// Logs the one summary line and counts the outcome.
    pub fn finish(
        mut self,
        outcome: Outcome,
        reply: Option<&Response>,
        listener: &str,
        peer: SocketAddr,
        metrics: &SmtpMetrics,
    ) {
        let reply = reply.map_or_else(|| "-".to_owned(), |r| r.to_string());
        let _in_tx = self.span.enter();
        // The id comes from the span; listener and peer are repeated so
        // the line stands alone under a filter that leaves the session's
        // span out (`RUST_LOG=koukan::tx=info`).
        tracing::info!(
            target: "koukan::tx",
            listener,
            peer = %peer,
            mail_from = %self.mail_from.address,
            rcpts = %format_args!("{}/{}", self.rcpts_accepted, self.rcpts_total),
            size = self.size,
            outcome = outcome.as_str(),
            reply = %reply,
            duration_ms = self.started.elapsed().as_millis() as u64,
            "transaction"
        );
        metrics.transaction(listener, outcome.as_str());
        if matches!(
            outcome,
            Outcome::Delivered | Outcome::Rejected | Outcome::TempFail
        ) {
            metrics
                .messages_bytes_total
                .get_or_create(&SmtpMetrics::listener(listener))
                .inc_by(self.size);
        }
        // Dropping the chain cancels whatever upstream still holds; done
        // here, inside the span, for the same reason as in `fail`.
        drop(self.svc.take());
    }
}
