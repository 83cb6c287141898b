//! The terminals a chain delivers through, and the capabilities they are
//! handed.
//!
//! [`Dispatcher`] is the relay terminal: it maps the one inbound
//! transaction onto one upstream transaction at the destination its first
//! recipient was routed to, built by an [`EndpointFactory`] (SMTP client,
//! maildir, a receiving application over HTTP). Recipients that route elsewhere get `451 4.5.3` so the client
//! sends them in a separate transaction (a chain that must take them all
//! at once uses the exploder); nothing is answered 250 unless the upstream
//! said so. The store writer and the exploder are the other terminals.

pub mod exploder;
pub mod maildir;
pub mod rest_output;
pub mod store_writer;

use std::sync::Arc;

use futures::future::BoxFuture;
use koukan_chain::chain::Split;
use koukan_chain::{
    BoxTxService, Destination, Mailbox, ReplyClass, Response, Terminal, TxContext, TxUpdate,
    UpdateResponse,
};
use tower::{Service, ServiceExt};

use crate::config::NotificationSpec;
use crate::config::retry::RetryPolicy;

/// Builds the upstream side of a transaction for a destination.
pub trait EndpointFactory: Send + Sync + 'static {
    /// Returns the terminal service for the transaction `ctx` (where it
    /// came from, its signals: what an HTTP endpoint sends along), or the
    /// response every recipient for this destination gets when it cannot
    /// be built (unknown endpoint).
    fn connect(
        &self,
        destination: &Destination,
        ctx: &Arc<TxContext>,
    ) -> Result<BoxTxService, Response>;

    /// An upstream transaction to `endpoint` ended with a reply of this
    /// class (its data reply, or its refused MAIL): for metrics.
    fn finished(&self, _endpoint: &str, _class: ReplyClass) {}
}

/// Runs another chain by name: what the exploder (one upstream
/// transaction per recipient) and the scheduler (stored transactions
/// through their output chain) are handed instead of the whole config
/// (linkerd's `NewService`, by name). Cheap and infallible but for an
/// unknown name.
pub trait NewChain: Send + Sync + 'static {
    /// The stack of chain `name` for one transaction.
    fn new_chain(&self, name: &str, ctx: &Arc<TxContext>) -> Option<BoxTxService>;

    /// How the stored transactions chain `name` delivers are retried and
    /// bounced; `None` for an unknown chain.
    fn policy(&self, name: &str) -> Option<ChainPolicy>;
}

/// A chain's retry and bounce settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChainPolicy {
    pub retry: Option<RetryPolicy>,
    pub notification: Option<NotificationSpec>,
}

#[derive(Default)]
struct State {
    /// MAIL held back until the first recipient tells where it goes.
    deferred_mail: Option<Mailbox>,
    destination: Option<Arc<Destination>>,
    upstream: Option<BoxTxService>,
    /// The upstream refused MAIL: every later recipient gets this.
    mail_failed: Option<Response>,
}

pub struct Dispatcher {
    factory: Arc<dyn EndpointFactory>,
    /// For recipients no router routed.
    default_destination: Option<Arc<Destination>>,
    ctx: Arc<TxContext>,
    state: State,
}

impl Dispatcher {
    pub fn new(
        factory: Arc<dyn EndpointFactory>,
        default_destination: Option<Arc<Destination>>,
        ctx: Arc<TxContext>,
    ) -> Self {
        Self {
            factory,
            default_destination,
            ctx,
            state: State::default(),
        }
    }
}

fn too_many_destinations() -> Response {
    Response::new(
        451,
        "4.5.3 recipient routes to another destination; send it in a separate transaction",
    )
}

fn no_route() -> Response {
    Response::new(550, "5.1.1 mailbox does not exist (no route)")
}

/// Calls the upstream and makes sure nothing the update carried goes
/// unanswered, whatever the upstream returned.
async fn call_upstream(upstream: &mut BoxTxService, update: TxUpdate) -> UpdateResponse {
    let fallback = UpdateResponse::fill(
        &update,
        &Response::new(451, "4.3.0 internal error: upstream gave no answer"),
    );
    let Ok(svc) = upstream.ready().await;
    let Ok(mut resp) = svc.call(update).await;
    if resp.mail.is_none() {
        resp.mail = fallback.mail;
    }
    let answered = resp.rcpts.len();
    resp.rcpts.extend(fallback.rcpts.into_iter().skip(answered));
    if resp.data.is_none() {
        resp.data = fallback.data;
    }
    resp
}

async fn dispatch(
    factory: Arc<dyn EndpointFactory>,
    default_destination: Option<Arc<Destination>>,
    ctx: Arc<TxContext>,
    state: &mut State,
    mut update: TxUpdate,
) -> UpdateResponse {
    let mut resp = UpdateResponse::default();
    let mut forward = TxUpdate::default();
    let mut forwarded_deferred_mail = false;

    if let Some(mail) = update.mail_from.take() {
        match update.route_hint.take() {
            Some(dest) => match factory.connect(&dest, &ctx) {
                Ok(upstream) => {
                    state.destination = Some(dest);
                    state.upstream = Some(upstream);
                    forward.mail_from = Some(mail);
                }
                Err(r) => {
                    state.mail_failed = Some(r.clone());
                    resp.mail = Some(r);
                }
            },
            None => {
                // The upstream's MAIL reply folds into the first
                // recipient's reply if it is a failure.
                state.deferred_mail = Some(mail);
                resp.mail = Some(Response::new(250, "2.1.0 sender ok"));
            }
        }
    }

    let mut split = Split::new();
    for mut rcpt in std::mem::take(&mut update.rcpt_to) {
        if let Some(failed) = &state.mail_failed {
            split.answer(failed.clone());
            continue;
        }
        let Some(route) = rcpt.route.clone().or_else(|| default_destination.clone()) else {
            split.answer(no_route());
            continue;
        };
        match &state.destination {
            Some(d) if **d == *route => {}
            Some(_) => {
                split.answer(too_many_destinations());
                continue;
            }
            None => match factory.connect(&route, &ctx) {
                Ok(upstream) => {
                    state.destination = Some(route.clone());
                    state.upstream = Some(upstream);
                    if let Some(mail) = state.deferred_mail.take() {
                        forward.mail_from = Some(mail);
                        forwarded_deferred_mail = true;
                    }
                }
                Err(r) => {
                    split.answer(r);
                    continue;
                }
            },
        }
        rcpt.route = Some(route);
        forward.rcpt_to.push(rcpt);
        split.forward();
    }

    if let Some(body) = update.body.take() {
        if state.upstream.is_none() || state.mail_failed.is_some() {
            resp.data = body
                .last
                .then(|| Response::new(554, "5.5.1 no valid recipients"));
        } else {
            forward.body = Some(body);
        }
    }

    let mut upstream_rcpts = Vec::new();
    if !forward.is_empty()
        && let Some(upstream) = state.upstream.as_mut()
    {
        let had_mail = forward.mail_from.is_some();
        let r = call_upstream(upstream, forward).await;
        let endpoint = state.destination.as_ref().map(|d| d.endpoint.as_str());
        if had_mail && let Some(mail) = &r.mail {
            if !mail.is_ok() {
                state.mail_failed = Some(mail.clone());
                if let Some(e) = endpoint {
                    factory.finished(e, mail.class());
                }
            }
            if !forwarded_deferred_mail {
                resp.mail = Some(mail.clone());
            }
        }
        upstream_rcpts = match (&state.mail_failed, forwarded_deferred_mail) {
            // A refused deferred MAIL is the upstream's answer for the
            // recipients that travelled with it.
            (Some(failed), true) => r.rcpts.iter().map(|_| failed.clone()).collect(),
            _ => r.rcpts,
        };
        if let (Some(d), Some(e)) = (&r.data, endpoint) {
            factory.finished(e, d.class());
        }
        if r.data.is_some() {
            resp.data = r.data;
        }
    }
    resp.rcpts = split.merge(upstream_rcpts);
    resp
}

impl Terminal for Dispatcher {
    fn update(&mut self, update: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        Box::pin(dispatch(
            self.factory.clone(),
            self.default_destination.clone(),
            self.ctx.clone(),
            &mut self.state,
            update,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koukan_chain::{Hosts, Recipient, TerminalService, boxed};
    use std::convert::Infallible;
    use std::sync::Mutex as StdMutex;
    use std::task::{Context, Poll};

    /// An upstream that answers from a script and records what it saw.
    struct Scripted {
        log: Arc<StdMutex<Vec<String>>>,
        mail: Response,
        dest: String,
    }

    impl Service<TxUpdate> for Scripted {
        type Response = UpdateResponse;
        type Error = Infallible;
        type Future = futures::future::Ready<Result<UpdateResponse, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, u: TxUpdate) -> Self::Future {
            let mut log = self.log.lock().unwrap();
            if let Some(m) = &u.mail_from {
                log.push(format!("{} MAIL {}", self.dest, m.address));
            }
            for r in &u.rcpt_to {
                log.push(format!("{} RCPT {}", self.dest, r.mailbox.address));
            }
            futures::future::ready(Ok(UpdateResponse {
                mail: u.mail_from.as_ref().map(|_| self.mail.clone()),
                rcpts: u
                    .rcpt_to
                    .iter()
                    .map(|_| Response::new(250, "2.1.5 upstream ok"))
                    .collect(),
                data: u
                    .body
                    .filter(|b| b.last)
                    .map(|_| Response::new(250, "2.0.0 upstream queued")),
            }))
        }
    }

    struct Factory {
        log: Arc<StdMutex<Vec<String>>>,
        mail: Response,
    }

    impl EndpointFactory for Factory {
        fn connect(&self, d: &Destination, _: &Arc<TxContext>) -> Result<BoxTxService, Response> {
            if d.endpoint == "unknown" {
                return Err(Response::new(451, "4.3.5 no such endpoint"));
            }
            Ok(boxed(Scripted {
                log: self.log.clone(),
                mail: self.mail.clone(),
                dest: d.endpoint.clone(),
            }))
        }
    }

    fn dest(name: &str) -> Arc<Destination> {
        Arc::new(Destination {
            endpoint: name.into(),
            hosts: Hosts::EndpointDefault,
        })
    }

    fn rcpt(addr: &str, d: Option<Arc<Destination>>) -> Recipient {
        Recipient {
            mailbox: Mailbox::new(addr),
            route: d,
        }
    }

    fn setup(mail: Response) -> (TerminalService<Dispatcher>, Arc<StdMutex<Vec<String>>>) {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let f = Arc::new(Factory {
            log: log.clone(),
            mail,
        });
        (
            TerminalService::new(Dispatcher::new(
                f,
                None,
                crate::test_support::scripted::context("t"),
            )),
            log,
        )
    }

    #[tokio::test]
    async fn deferred_mail_goes_with_first_rcpt_and_others_get_451() {
        let (mut d, log) = setup(Response::new(250, "2.1.0 upstream sender ok"));
        let r = d.call(TxUpdate::mail(Mailbox::new("s@x"))).await.unwrap();
        assert_eq!(r.mail.unwrap().code, 250);
        assert!(log.lock().unwrap().is_empty(), "nothing upstream yet");
        let u = TxUpdate {
            rcpt_to: vec![
                rcpt("a@x", Some(dest("one"))),
                rcpt("b@y", Some(dest("two"))),
                rcpt("c@x", Some(dest("one"))),
                rcpt("d@z", None),
            ],
            ..Default::default()
        };
        let r = d.call(u).await.unwrap();
        let codes: Vec<u16> = r.rcpts.iter().map(|r| r.code).collect();
        assert_eq!(codes, [250, 451, 250, 550]);
        assert_eq!(r.rcpts[1].text.split_whitespace().next(), Some("4.5.3"));
        assert_eq!(
            *log.lock().unwrap(),
            ["one MAIL s@x", "one RCPT a@x", "one RCPT c@x"]
        );
        let r = d.call(TxUpdate::body(&b"x"[..], true)).await.unwrap();
        assert_eq!(r.data.unwrap().text, "2.0.0 upstream queued");
    }

    #[tokio::test]
    async fn refused_deferred_mail_is_the_rcpt_reply() {
        let (mut d, _) = setup(Response::new(550, "5.7.1 sender refused upstream"));
        d.call(TxUpdate::mail(Mailbox::new("s@x"))).await.unwrap();
        let u = TxUpdate {
            rcpt_to: vec![rcpt("a@x", Some(dest("one")))],
            ..Default::default()
        };
        let r = d.call(u.clone()).await.unwrap();
        assert_eq!(r.rcpts[0].text, "5.7.1 sender refused upstream");
        let r = d.call(u).await.unwrap();
        assert_eq!(r.rcpts[0].code, 550, "later recipients too");
        let r = d.call(TxUpdate::body(&b"x"[..], true)).await.unwrap();
        assert_eq!(r.data.unwrap().code, 554);
    }

    #[tokio::test]
    async fn route_hint_opens_upstream_at_mail_time() {
        let (mut d, log) = setup(Response::new(451, "4.7.0 greylisted"));
        let mut u = TxUpdate::mail(Mailbox::new("s@x"));
        u.route_hint = Some(dest("smarthost"));
        let r = d.call(u).await.unwrap();
        assert_eq!(r.mail.unwrap().text, "4.7.0 greylisted");
        assert_eq!(*log.lock().unwrap(), ["smarthost MAIL s@x"]);
    }

    #[tokio::test]
    async fn body_without_recipients_is_refused() {
        let (mut d, _) = setup(Response::new(250, "ok"));
        d.call(TxUpdate::mail(Mailbox::new("s@x"))).await.unwrap();
        let r = d.call(TxUpdate::body(&b"x"[..], false)).await.unwrap();
        assert!(r.data.is_none());
        let r = d.call(TxUpdate::body(&b"x"[..], true)).await.unwrap();
        assert_eq!(r.data.unwrap().code, 554);
    }

    #[tokio::test]
    async fn unknown_endpoint_answers_each_rcpt() {
        let (mut d, _) = setup(Response::new(250, "ok"));
        d.call(TxUpdate::mail(Mailbox::new("s@x"))).await.unwrap();
        let u = TxUpdate {
            rcpt_to: vec![rcpt("a@x", Some(dest("unknown")))],
            ..Default::default()
        };
        let r = d.call(u).await.unwrap();
        assert_eq!(r.rcpts[0].text, "4.3.5 no such endpoint");
    }
}
