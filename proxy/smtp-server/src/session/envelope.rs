//! MAIL and RCPT, and PIPELINING batches of them.

use koukan_chain::{Ingress, Mailbox, Recipient, Response, TxUpdate};
use smtp_proto::{MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, MailFrom, RcptTo, Request};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Flow, Session, parse_command};
use crate::reply;
use crate::tx::{Outcome, Transaction};

/// A command turned into an envelope step of a (possibly pipelined) batch.
enum Planned {
    /// Answered here, not forwarded; the reason labels the rejection.
    Local(Response, &'static str),
    /// Refused at a limit (size, recipient count): answered here but not a
    /// client error, so not counted toward `max_bad_commands`.
    Limit(Response, &'static str),
    /// MAIL forwarded in the batch's update.
    Mail,
    /// RCPT forwarded in the batch's update.
    Rcpt,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    /// MAIL and RCPT. When the client pipelined, the RCPTs already
    /// buffered behind this command join it in ONE update to the chain
    /// (RFC 2920 lets the replies wait until the batch is answered); the
    /// replies are then queued in command order and written with the next
    /// flush.
    pub(super) async fn envelope(&mut self, first: Request<String>) -> Flow {
        let mut plan = Vec::new();
        let mut update = TxUpdate::default();
        // A transaction opened by this batch's MAIL: it becomes the
        // session's only if the chain accepts MAIL.
        let mut opened: Option<Transaction> = None;
        self.plan(first, &mut plan, &mut update, &mut opened);
        while self.tx.is_some() || opened.is_some() {
            let Some(raw) = self.conn.peek_line() else {
                break;
            };
            let len = raw.len();
            match parse_command(raw) {
                Ok(req @ Request::Rcpt { .. }) => {
                    self.conn.consume(len);
                    self.plan(req, &mut plan, &mut update, &mut opened);
                }
                _ => break,
            }
        }

        let forwarded = update.mail_from.is_some() || !update.rcpt_to.is_empty();
        let resp = match (forwarded, opened.as_mut(), self.tx.as_mut()) {
            (false, _, _) => Default::default(),
            (true, Some(tx), _) | (true, None, Some(tx)) => tx.send(update).await,
            (true, None, None) => unreachable!("updates are only built for a transaction"),
        };

        let mut mail = resp.mail;
        let mut rcpts = resp.rcpts.into_iter();
        let mail_ok = opened
            .as_ref()
            .map(|_| mail.as_ref().is_some_and(Response::is_ok));
        let mut accepted = 0;
        let mut forwarded_rcpts = 0;
        let mut mail_reply = None;
        let mut flow = Flow::Continue;
        for step in plan {
            let resp = match step {
                Planned::Local(resp, reason) => {
                    if self.reject(resp, reason) == Flow::Close {
                        flow = Flow::Close;
                        break;
                    }
                    continue;
                }
                Planned::Limit(resp, reason) => {
                    self.metrics.rejected(&self.cfg.listener_name, reason);
                    resp
                }
                Planned::Mail => {
                    let r = mail.take().unwrap_or_else(|| reply::UNANSWERED.response());
                    mail_reply = Some(r.clone());
                    r
                }
                Planned::Rcpt => {
                    let r = rcpts.next().unwrap_or_else(|| reply::UNANSWERED.response());
                    if mail_ok == Some(false) {
                        // MAIL travelled in the same update and failed: no
                        // RCPT of it can stand, whatever the chain said.
                        if r.is_ok() {
                            reply::SENDER_REJECTED.response()
                        } else {
                            r
                        }
                    } else {
                        forwarded_rcpts += 1;
                        if r.is_ok() {
                            accepted += 1;
                        }
                        r
                    }
                }
            };
            self.conn.queue(&resp);
        }

        match (opened, mail_ok) {
            (Some(mut tx), Some(true)) => {
                tx.rcpts_total += forwarded_rcpts;
                tx.rcpts_accepted += accepted;
                self.tx = Some(tx);
            }
            (Some(tx), _) => {
                let r = mail_reply.unwrap_or_else(|| reply::UNANSWERED.response());
                // A chain that timed out or panicked on MAIL failed the
                // transaction itself: say so rather than "rejected".
                let outcome = tx.failed.as_ref().map_or(Outcome::MailRejected, |f| f.1);
                self.finish_tx(tx, outcome, &r);
            }
            (None, _) => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.rcpts_total += forwarded_rcpts;
                    tx.rcpts_accepted += accepted;
                }
            }
        }
        // The chain timed out: its state is unknown, so the transaction
        // cannot continue.
        if let Some(tx) = self.tx.take_if(|tx| tx.failed.is_some()) {
            let (r, outcome) = tx.failed.clone().expect("checked");
            self.finish_tx(tx, outcome, &r);
        }
        flow
    }

    /// Checks one MAIL or RCPT against the session state and either answers
    /// it locally or adds it to the batch's update.
    fn plan(
        &mut self,
        req: Request<String>,
        plan: &mut Vec<Planned>,
        update: &mut TxUpdate,
        opened: &mut Option<Transaction>,
    ) {
        let step = match req {
            Request::Mail { from } => self.plan_mail(from, update, opened),
            Request::Rcpt { to } => self.plan_rcpt(to, update, opened),
            _ => unreachable!("only MAIL and RCPT are planned"),
        };
        plan.push(step);
    }

    fn plan_mail(
        &mut self,
        from: MailFrom<String>,
        update: &mut TxUpdate,
        opened: &mut Option<Transaction>,
    ) -> Planned {
        if self.helo.is_none() {
            return Planned::Local(reply::NEED_HELO.response(), "sequence");
        }
        if self.tx.is_some() || opened.is_some() {
            return Planned::Local(reply::NESTED_MAIL.response(), "sequence");
        }
        if self.cfg.require_auth && self.auth_user.is_none() {
            return Planned::Local(reply::AUTH_REQUIRED.response(), "auth");
        }
        if let Some(param) = unsupported_mail_param(&from) {
            return Planned::Local(reply::unsupported_param(param), "param");
        }
        if from.size as u64 > self.cfg.limits.max_message_size {
            return Planned::Limit(reply::SIZE_EXCEEDED.response(), "size");
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return Planned::Local(reply::NEED_SMTPUTF8.response(), "param");
        }
        let mut mailbox = Mailbox::new(from.address);
        if from.size > 0 {
            mailbox = mailbox.with_param("SIZE", Some(&from.size.to_string()));
        }
        if from.flags & MAIL_BODY_8BITMIME != 0 {
            mailbox = mailbox.with_param("BODY", Some("8BITMIME"));
        } else if from.flags & MAIL_BODY_7BIT != 0 {
            mailbox = mailbox.with_param("BODY", Some("7BIT"));
        }
        if smtputf8 {
            mailbox = mailbox.with_param("SMTPUTF8", None);
        }
        let (ctx, svc) = self
            .factory
            .new_transaction(Ingress::Smtp(self.session_info()));
        update.mail_from = Some(mailbox.clone());
        *opened = Some(Transaction::new(
            ctx,
            svc,
            mailbox,
            self.cfg.limits.data_end_timeout,
            self.cfg.limits.max_data_line_length,
            self.metrics.clone(),
        ));
        Planned::Mail
    }

    fn plan_rcpt(
        &mut self,
        to: RcptTo<String>,
        update: &mut TxUpdate,
        opened: &Option<Transaction>,
    ) -> Planned {
        let Some(tx) = opened.as_ref().or(self.tx.as_ref()) else {
            return Planned::Local(reply::NEED_MAIL.response(), "sequence");
        };
        // No DSN or other RCPT extension is advertised.
        if to.orcpt.is_some() || to.flags != 0 || to.rrvs != 0 {
            return Planned::Local(reply::unsupported_param("RCPT"), "param");
        }
        if tx.rcpts_total + update.rcpt_to.len() >= self.cfg.limits.max_recipients {
            return Planned::Limit(reply::TOO_MANY_RCPTS.response(), "too_many_recipients");
        }
        if !to.address.is_ascii() && tx.mail_from.param("SMTPUTF8").is_none() {
            return Planned::Local(reply::NEED_SMTPUTF8.response(), "param");
        }
        update
            .rcpt_to
            .push(Recipient::new(Mailbox::new(to.address)));
        Planned::Rcpt
    }
}

/// MAIL parameters beyond SIZE, BODY=7BIT/8BITMIME and SMTPUTF8 were parsed
/// by smtp-proto but are not advertised, so they are refused (RFC 5321
/// §4.1.1.11: 555).
pub(super) fn unsupported_mail_param(from: &MailFrom<String>) -> Option<&'static str> {
    let known = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;
    if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
        return Some("BODY=BINARYMIME");
    }
    if from.flags & !known != 0 {
        return Some("MAIL");
    }
    let extras = [
        (from.trans_id.is_some(), "TRANSID"),
        (from.env_id.is_some(), "ENVID"),
        (from.solicit.is_some(), "SOLICIT"),
        (from.mtrk.is_some(), "MTRK"),
        (from.auth.is_some(), "AUTH"),
        (from.by != 0, "BY"),
        (from.hold_for != 0, "HOLDFOR"),
        (from.hold_until != 0, "HOLDUNTIL"),
        (from.mt_priority != 0, "MT-PRIORITY"),
    ];
    extras
        .into_iter()
        .find(|(set, _)| *set)
        .map(|(_, name)| name)
}
