//! [`SmtpClient`]: one upstream SMTP transaction as a chain terminal.
//!
//! The client is a state machine driven by the chain's updates, which
//! arrive strictly one after another. Each update's future owns the state
//! while it runs (it is taken out of the shared slot and put back at the
//! end), so a future dropped halfway leaves `Busy` behind, and the next
//! update knows the upstream conversation is in an unknown state instead
//! of reading a stale reply as its own.
//!
//! Consistency rules:
//! - every part of an update gets an answer, and errors are answers;
//! - once MAIL has failed (or there was no upstream to send it to), every
//!   later RCPT and the data get that same failure, never a 2xx;
//! - a lost or timed-out connection answers `451 4.4.2`;
//! - when the transaction is doomed before the last body chunk (no
//!   accepted recipient, a failed BDAT, a lost connection, a DATA
//!   rejection), the data response is returned on that update so the caller
//!   can stop streaming the body.
//!
//! Connection reuse (with a [`ConnectionPool`]):
//! - the session comes from the pool when it has one for this destination;
//!   if MAIL on a reused session fails at the I/O level or gets 421 (the
//!   peer closed it while idle), nothing was accepted, so the session is
//!   discarded and the transaction starts again on a fresh connection;
//! - after the final reply to the message data (anything but 421) the
//!   session goes back to the pool as is; after a refused MAIL, no accepted
//!   recipient or a refused DATA/BDAT it goes back only once RSET succeeded
//!   (in the background); after anything else (I/O error, timeout, 421,
//!   unexpected reply, a drop mid-transaction) it is closed as without a
//!   pool.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::join_all;
use koukan_chain::transaction::{
    BodyChunk, HostPort, Hosts, Mailbox, Recipient, Response, TxUpdate, UpdateResponse,
};
use koukan_dns::Resolver;
use smtp_proto::EXT_PIPELINING;
use tokio::sync::Mutex;
use tower::Service;

use crate::config::ClientConfig;
use crate::connection::{ConnError, Connection, Reply, Step, quit_in_background};
use crate::dns_reply;
use crate::dotstuff::DotStuffer;
use crate::envelope::{MailNeeds, mail_command, rcpt_command, use_bdat};
use crate::pool::ConnectionPool;
use crate::session::{self, Session, Target};

/// Sends one transaction to one destination; see the module docs.
pub struct SmtpClient {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    ctx: Ctx,
    state: State,
}

/// The immutable part, shared by reference while an update runs (it must
/// be `Sync`; the connection inside `State` is only `Send`).
struct Ctx {
    cfg: Arc<ClientConfig>,
    resolver: Resolver,
    tls: Arc<rustls::ClientConfig>,
    hosts: Hosts,
    pool: Option<ConnectionPool>,
}

/// How a session that ended a transaction cleanly can take a new MAIL.
#[derive(Clone, Copy, Debug)]
enum Reuse {
    /// Right away (after the final reply to the message data).
    Now,
    /// After reading `pending` replies to commands already sent and a
    /// successful RSET.
    AfterRset { pending: usize },
}

enum State {
    /// No MAIL yet.
    Idle,
    /// MAIL accepted upstream; RCPTs may follow.
    Envelope {
        sess: Session,
        accepted: usize,
        needs: MailNeeds,
    },
    /// Inside DATA (after 354).
    Data { sess: Session, stuffer: DotStuffer },
    /// Between BDAT chunks.
    Bdat { sess: Session },
    /// The transaction failed before the body; everything gets this reply.
    Failed(Response),
    /// The data response has been given.
    Finished(Response),
    /// An update is running, or its future was dropped before finishing.
    Busy,
}

impl SmtpClient {
    /// A client that opens its own connection and QUITs it after the
    /// transaction.
    pub fn new(
        cfg: Arc<ClientConfig>,
        resolver: Resolver,
        tls: Arc<rustls::ClientConfig>,
        hosts: Hosts,
    ) -> Self {
        Self::build(cfg, resolver, tls, hosts, None)
    }

    /// A client that reuses an idle session to `hosts` from `pool` when
    /// there is one, and leaves its session there after a clean end of
    /// transaction instead of QUITting it. `pool` should be built from the
    /// same `cfg` (it takes its bounds from there).
    pub fn pooled(
        cfg: Arc<ClientConfig>,
        resolver: Resolver,
        tls: Arc<rustls::ClientConfig>,
        hosts: Hosts,
        pool: ConnectionPool,
    ) -> Self {
        Self::build(cfg, resolver, tls, hosts, Some(pool))
    }

    fn build(
        cfg: Arc<ClientConfig>,
        resolver: Resolver,
        tls: Arc<rustls::ClientConfig>,
        hosts: Hosts,
        pool: Option<ConnectionPool>,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                ctx: Ctx {
                    cfg,
                    resolver,
                    tls,
                    hosts,
                    pool,
                },
                state: State::Idle,
            })),
        }
    }
}

impl Service<TxUpdate> for SmtpClient {
    type Response = UpdateResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<UpdateResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, update: TxUpdate) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Updates are sequential, so this never actually waits.
            let mut inner = inner.lock().await;
            Ok(inner.handle(update).await)
        })
    }
}

impl Drop for SmtpClient {
    /// The client's transaction is over (RSET, QUIT, disconnect): close the
    /// upstream. If an update is still running, its future holds the
    /// connection and drops (closes) it when it finishes.
    fn drop(&mut self) {
        if let Ok(mut inner) = self.inner.try_lock() {
            match std::mem::replace(&mut inner.state, State::Busy) {
                // In command mode QUIT aborts the transaction politely.
                State::Envelope { sess, .. } | State::Bdat { sess } => {
                    quit_in_background(sess.conn)
                }
                // Inside DATA a QUIT would be message text; closing the
                // socket makes the server discard the partial message.
                State::Data { sess, .. } => drop(sess),
                _ => {}
            }
        }
    }
}

fn lost(conn: &Connection, e: &ConnError) -> Response {
    Response::new(
        451,
        format!("4.4.2 upstream connection lost: {}: {e}", conn.peer),
    )
}

/// An upstream reply as the client's reply: verbatim if it is a completion
/// reply (2xx/4xx/5xx), a temporary failure for anything else, so a broken
/// peer can never make us report success it did not give.
fn completion(reply: &Reply, what: &str) -> Response {
    match reply.class() {
        2 | 4 | 5 => reply.response(),
        _ => Response::new(
            451,
            format!(
                "4.5.0 unexpected upstream reply to {what}: {}",
                reply.response()
            ),
        ),
    }
}

/// A command the chain should not have sent in this state.
fn bad_sequence(text: &str) -> Response {
    Response::new(503, format!("5.5.1 {text}"))
}

/// Replies to one batch of MAIL/RCPT commands.
#[derive(Default)]
struct EnvelopeOutcome {
    mail: Option<Response>,
    rcpts: Vec<Response>,
    accepted: usize,
    /// Set when the transaction cannot continue (MAIL failed, or the
    /// connection broke); it is also the answer of everything unanswered.
    failure: Option<Response>,
    /// MAIL failed at the I/O level or got 421: on a reused session, the
    /// peer had closed it while idle, and nothing was accepted.
    stale: bool,
    /// MAIL got an ordinary refusal: the session is still usable once the
    /// replies to this many pipelined RCPTs are read and RSET succeeds.
    refused_pending: Option<usize>,
}

/// Whether a reply leaves the session in a known state: a completion reply
/// other than 421 (service closing).
fn settled(reply: &Reply) -> bool {
    matches!(reply.class(), 2 | 4 | 5) && reply.code != 421
}

impl Inner {
    async fn handle(&mut self, update: TxUpdate) -> UpdateResponse {
        let ctx = &self.ctx;
        let mut state = std::mem::replace(&mut self.state, State::Busy);
        if matches!(state, State::Busy) {
            state = State::Failed(Response::new(
                451,
                "4.4.2 upstream transaction aborted: a previous update was interrupted",
            ));
        }
        let mut out = UpdateResponse::default();
        if update.mail_from.is_some() || !update.rcpt_to.is_empty() {
            let (next, mail, rcpts) = ctx
                .envelope(state, update.mail_from.as_ref(), &update.rcpt_to)
                .await;
            state = next;
            out.mail = mail;
            out.rcpts = rcpts;
        }
        if let Some(chunk) = update.body {
            let (next, data) = ctx.body(state, chunk).await;
            state = next;
            out.data = data;
        }
        self.state = state;
        out
    }
}

impl Ctx {
    async fn envelope(
        &self,
        state: State,
        mail: Option<&Mailbox>,
        rcpts: &[Recipient],
    ) -> (State, Option<Response>, Vec<Response>) {
        match (mail, state) {
            (Some(mb), State::Idle) => self.open_transaction(mb, rcpts).await,
            (Some(_), state) => {
                let (state, rcpts) = self.add_rcpts(state, rcpts).await;
                (state, Some(bad_sequence("nested MAIL command")), rcpts)
            }
            (None, state) => {
                let (state, rcpts) = self.add_rcpts(state, rcpts).await;
                (state, None, rcpts)
            }
        }
    }

    /// Connects, then sends MAIL and the update's RCPTs.
    async fn open_transaction(
        &self,
        mb: &Mailbox,
        rcpts: &[Recipient],
    ) -> (State, Option<Response>, Vec<Response>) {
        let fail = |resp: Response| {
            let all = vec![resp.clone(); rcpts.len()];
            (State::Failed(resp.clone()), Some(resp), all)
        };
        let mut allow_reuse = true;
        loop {
            let pooled = match &self.pool {
                Some(pool) if allow_reuse => pool.take(&self.hosts),
                _ => None,
            };
            let reused = pooled.is_some();
            let mut sess = match pooled {
                Some(sess) => sess,
                None => match self.connect().await {
                    Ok(s) => {
                        if let Some(pool) = &self.pool {
                            pool.note_opened();
                        }
                        s
                    }
                    Err(resp) => return fail(resp),
                },
            };
            let chunking = use_bdat(&sess.ext, self.cfg.use_chunking);
            let (mail_cmd, needs) = match mail_command(mb, &sess.ext, sess.tls.is_some(), chunking)
            {
                Ok(x) => x,
                Err(resp) => {
                    // Nothing was sent: the session is as we got it.
                    self.release(sess, Reuse::Now);
                    return fail(resp);
                }
            };
            let cmds = rcpts
                .iter()
                .map(|r| rcpt_command(&r.mailbox, &sess.ext))
                .collect();
            sess.transactions += 1;
            let outcome = self.send_envelope(&mut sess, Some(&mail_cmd), cmds).await;
            if reused && outcome.stale {
                // Closed while idle; MAIL was not accepted, so starting
                // over is safe. Not from the pool again: its other
                // sessions to this peer are likely gone too.
                tracing::debug!(peer = %sess.conn.peer, "reused upstream session is gone, reconnecting");
                if let Some(pool) = &self.pool {
                    pool.note_broken();
                }
                allow_reuse = false;
                continue;
            }
            let state = match outcome.failure {
                Some(failure) => {
                    match outcome.refused_pending {
                        Some(pending) => self.release(sess, Reuse::AfterRset { pending }),
                        None => quit_in_background(sess.conn),
                    }
                    State::Failed(failure)
                }
                None => State::Envelope {
                    sess,
                    accepted: outcome.accepted,
                    needs,
                },
            };
            return (state, outcome.mail, outcome.rcpts);
        }
    }

    /// The transaction is over and the session can take a new MAIL as
    /// `how` says: back to the pool, or QUIT when there is none.
    fn release(&self, sess: Session, how: Reuse) {
        match (&self.pool, how) {
            (Some(pool), Reuse::Now) => pool.put(self.hosts.clone(), sess),
            (Some(pool), Reuse::AfterRset { pending }) => {
                pool.reset_and_put(self.hosts.clone(), sess, pending, self.cfg.command_timeout)
            }
            (None, _) => quit_in_background(sess.conn),
        }
    }

    /// Ends the session after `reply` closed the transaction: reusable as
    /// `how` says if the reply left it in a known state, else QUIT.
    fn release_after(&self, sess: Session, reply: &Reply, how: Reuse) {
        if settled(reply) {
            self.release(sess, how);
        } else {
            quit_in_background(sess.conn);
        }
    }

    async fn add_rcpts(&self, state: State, rcpts: &[Recipient]) -> (State, Vec<Response>) {
        if rcpts.is_empty() {
            return (state, Vec::new());
        }
        match state {
            State::Envelope {
                mut sess,
                accepted,
                needs,
            } => {
                let cmds = rcpts
                    .iter()
                    .map(|r| rcpt_command(&r.mailbox, &sess.ext))
                    .collect();
                let outcome = self.send_envelope(&mut sess, None, cmds).await;
                let state = match outcome.failure {
                    // Only a broken connection fails here; nothing to QUIT.
                    Some(failure) => State::Failed(failure),
                    None => State::Envelope {
                        sess,
                        accepted: accepted + outcome.accepted,
                        needs,
                    },
                };
                (state, outcome.rcpts)
            }
            State::Failed(resp) => (State::Failed(resp.clone()), vec![resp; rcpts.len()]),
            State::Idle => (
                State::Idle,
                vec![bad_sequence("failed precondition: MAIL"); rcpts.len()],
            ),
            state => (
                state,
                vec![bad_sequence("RCPT after the message data"); rcpts.len()],
            ),
        }
    }

    /// Sends MAIL (if given) and the RCPTs that passed the local checks
    /// (`Err` entries are already answered), in one write when the peer
    /// supports PIPELINING (RFC 2920), else one at a time.
    async fn send_envelope(
        &self,
        sess: &mut Session,
        mail: Option<&str>,
        rcpts: Vec<Result<String, Response>>,
    ) -> EnvelopeOutcome {
        let conn = &mut sess.conn;
        let timeout = self.cfg.command_timeout;
        let mail_step = Step::new("waiting for reply to MAIL", timeout);
        let rcpt_step = Step::new("waiting for reply to RCPT", timeout);
        let pipelining = sess.ext.has(EXT_PIPELINING);
        let mut out = EnvelopeOutcome::default();
        let broken = |out: &mut EnvelopeOutcome, resp: Response, n_rcpts: usize| {
            if mail.is_some() && out.mail.is_none() {
                out.mail = Some(resp.clone());
            }
            out.rcpts.resize(n_rcpts, resp.clone());
            out.failure = Some(resp);
        };

        if pipelining {
            let mut batch = String::new();
            for cmd in mail
                .into_iter()
                .chain(rcpts.iter().flatten().map(String::as_str))
            {
                batch.push_str(cmd);
                batch.push_str("\r\n");
            }
            if !batch.is_empty()
                && let Err(e) = conn
                    .write(batch.as_bytes(), Step::new("sending MAIL/RCPT", timeout))
                    .await
            {
                out.stale = mail.is_some() && is_io(&e);
                broken(&mut out, lost(conn, &e), rcpts.len());
                return out;
            }
        }

        if let Some(cmd) = mail {
            let reply = if pipelining {
                conn.read_reply(mail_step).await
            } else {
                conn.command(cmd, mail_step).await
            };
            match reply {
                Ok(reply) => {
                    let resp = completion(&reply, "MAIL");
                    if !resp.is_ok() {
                        out.stale = reply.code == 421;
                        if settled(&reply) {
                            // The pipelined RCPTs' replies (503s) are still
                            // to be read before the session is reused.
                            let sent = if pipelining {
                                rcpts.iter().flatten().count()
                            } else {
                                0
                            };
                            out.refused_pending = Some(sent);
                        }
                        broken(&mut out, resp, rcpts.len());
                        return out;
                    }
                    out.mail = Some(resp);
                }
                Err(e) => {
                    out.stale = is_io(&e);
                    broken(&mut out, lost(conn, &e), rcpts.len());
                    return out;
                }
            }
        }

        let n = rcpts.len();
        for cmd in rcpts {
            let cmd = match cmd {
                Ok(cmd) => cmd,
                Err(local) => {
                    out.rcpts.push(local);
                    continue;
                }
            };
            let reply = if pipelining {
                conn.read_reply(rcpt_step).await
            } else {
                conn.command(&cmd, rcpt_step).await
            };
            match reply {
                Ok(reply) => {
                    let resp = completion(&reply, "RCPT");
                    if resp.is_ok() {
                        out.accepted += 1;
                    }
                    out.rcpts.push(resp);
                }
                Err(e) => {
                    broken(&mut out, lost(conn, &e), n);
                    return out;
                }
            }
        }
        out
    }

    async fn body(&self, state: State, chunk: BodyChunk) -> (State, Option<Response>) {
        match state {
            State::Envelope {
                sess, accepted: 0, ..
            } => {
                self.release(sess, Reuse::AfterRset { pending: 0 });
                let resp = Response::new(554, "5.5.1 no valid recipients");
                (State::Finished(resp.clone()), Some(resp))
            }
            State::Envelope { sess, needs, .. } => {
                if needs.binary || use_bdat(&sess.ext, self.cfg.use_chunking) {
                    self.bdat(sess, chunk).await
                } else {
                    self.start_data(sess, chunk).await
                }
            }
            State::Data { sess, stuffer } => self.data(sess, stuffer, chunk).await,
            State::Bdat { sess } => self.bdat(sess, chunk).await,
            State::Failed(resp) => (State::Finished(resp.clone()), Some(resp)),
            State::Finished(resp) => {
                let data = chunk.last.then(|| resp.clone());
                (State::Finished(resp), data)
            }
            State::Idle | State::Busy => {
                let resp = bad_sequence("failed precondition: MAIL");
                (State::Finished(resp.clone()), Some(resp))
            }
        }
    }

    async fn start_data(&self, mut sess: Session, chunk: BodyChunk) -> (State, Option<Response>) {
        let step = Step::new("waiting for reply to DATA", self.cfg.data_init_timeout);
        match sess.conn.command("DATA", step).await {
            Ok(reply) if reply.code == 354 => self.data(sess, DotStuffer::new(), chunk).await,
            Ok(reply) => {
                let resp = match reply.class() {
                    4 | 5 => reply.response(),
                    _ => completion_never_ok(&reply, "DATA"),
                };
                if reply.class() == 2 {
                    // A 250 to DATA: whatever the peer thinks is going on,
                    // it is not a state we can reuse.
                    quit_in_background(sess.conn);
                } else {
                    self.release_after(sess, &reply, Reuse::AfterRset { pending: 0 });
                }
                (State::Finished(resp.clone()), Some(resp))
            }
            Err(e) => finished(lost(&sess.conn, &e)),
        }
    }

    async fn data(
        &self,
        mut sess: Session,
        mut stuffer: DotStuffer,
        chunk: BodyChunk,
    ) -> (State, Option<Response>) {
        let mut wire = Vec::new();
        stuffer.encode(&chunk.data, &mut wire);
        if chunk.last {
            stuffer.finish(&mut wire);
        }
        if !wire.is_empty() {
            let step = Step::new("sending message data", self.cfg.data_block_timeout);
            if let Err(e) = sess.conn.write(&wire, step).await {
                return finished(lost(&sess.conn, &e));
            }
        }
        if !chunk.last {
            return (State::Data { sess, stuffer }, None);
        }
        let step = Step::new(
            "waiting for reply to end of data",
            self.cfg.data_end_timeout,
        );
        match sess.conn.read_reply(step).await {
            Ok(reply) => {
                // RFC 5321 4.1.1.4: the reply ends the transaction whatever
                // it says; no RSET needed.
                self.release_after(sess, &reply, Reuse::Now);
                finished(completion(&reply, "end of data"))
            }
            Err(e) => finished(lost(&sess.conn, &e)),
        }
    }

    /// One BDAT command per chunk (RFC 3030); an empty chunk is skipped
    /// unless it is the last (`BDAT 0 LAST`).
    async fn bdat(&self, mut sess: Session, chunk: BodyChunk) -> (State, Option<Response>) {
        if chunk.data.is_empty() && !chunk.last {
            return (State::Bdat { sess }, None);
        }
        let header = format!(
            "BDAT {}{}\r\n",
            chunk.data.len(),
            if chunk.last { " LAST" } else { "" }
        );
        let step = Step::new("sending BDAT", self.cfg.data_block_timeout);
        let mut sent = sess.conn.write(header.as_bytes(), step).await;
        if sent.is_ok() && !chunk.data.is_empty() {
            sent = sess.conn.write(&chunk.data, step).await;
        }
        if let Err(e) = sent {
            return finished(lost(&sess.conn, &e));
        }
        let step = if chunk.last {
            Step::new("waiting for reply to BDAT LAST", self.cfg.data_end_timeout)
        } else {
            Step::new("waiting for reply to BDAT", self.cfg.data_block_timeout)
        };
        match sess.conn.read_reply(step).await {
            Ok(reply) => {
                let resp = completion(&reply, "BDAT");
                if resp.is_ok() && !chunk.last {
                    return (State::Bdat { sess }, None);
                }
                let how = if chunk.last {
                    Reuse::Now
                } else {
                    // A refused intermediate chunk leaves the transaction
                    // open (RFC 3030 2); RSET ends it.
                    Reuse::AfterRset { pending: 0 }
                };
                self.release_after(sess, &reply, how);
                finished(resp)
            }
            Err(e) => finished(lost(&sess.conn, &e)),
        }
    }

    /// Resolves the destination and opens a session on the first host that
    /// works, trying at most `max_hosts` addresses.
    async fn connect(&self) -> Result<Session, Response> {
        let targets = self.targets().await?;
        let mut last = None;
        for target in targets.iter().take(self.cfg.max_hosts.max(1)) {
            match session::open(&self.cfg, &self.tls, target).await {
                Ok(sess) => {
                    let tls = sess.tls.is_some();
                    tracing::debug!(peer = %target.label(), tls, "upstream session open");
                    return Ok(sess);
                }
                Err(e) => {
                    tracing::debug!(peer = %target.label(), "upstream host failed: {e}");
                    last = Some((target.label(), e));
                }
            }
        }
        Err(match last {
            Some((peer, e)) => e.response(&peer),
            None => Response::new(451, "4.4.1 no upstream host to try"),
        })
    }

    async fn targets(&self) -> Result<Vec<Target>, Response> {
        let mut targets = match &self.hosts {
            Hosts::Mx { domain, port } => {
                let hosts = self
                    .resolver
                    .resolve_mx(domain)
                    .await
                    .map_err(|e| dns_reply::reply(&e))?;
                hosts
                    .into_iter()
                    .flat_map(|h| {
                        h.addrs.into_iter().map(move |ip| Target {
                            name: h.name.clone(),
                            addr: SocketAddr::new(ip, *port),
                        })
                    })
                    .collect()
            }
            Hosts::Static(list) => self.static_targets(list).await?,
            Hosts::EndpointDefault => self.static_targets(&self.cfg.default_hosts).await?,
        };
        let mut seen = std::collections::HashSet::new();
        targets.retain(|t| seen.insert(t.addr));
        Ok(targets)
    }

    /// Configured hosts, in order. A name that does not resolve is skipped;
    /// if none resolves the failure is temporary whatever DNS said, since
    /// it is our configuration (or our DNS), not the recipient, that is
    /// wrong.
    async fn static_targets(&self, list: &[HostPort]) -> Result<Vec<Target>, Response> {
        if list.is_empty() {
            return Err(Response::new(
                451,
                "4.3.5 no upstream hosts configured for this destination",
            ));
        }
        let lookups = join_all(list.iter().map(|hp| self.resolver.resolve_host(&hp.host))).await;
        let mut targets = Vec::new();
        let mut last_err = None;
        for (hp, result) in list.iter().zip(lookups) {
            match result {
                Ok(addrs) => targets.extend(addrs.into_iter().map(|ip| Target {
                    name: hp.host.clone(),
                    addr: SocketAddr::new(ip, hp.port),
                })),
                Err(e) => last_err = Some(e),
            }
        }
        if targets.is_empty() {
            let detail = last_err.map(|e| e.to_string()).unwrap_or_default();
            return Err(Response::new(
                451,
                format!("4.4.3 cannot resolve upstream host: {detail}"),
            ));
        }
        Ok(targets)
    }
}

/// A failure showing the connection itself is gone (not a timeout: a peer
/// that stopped answering is not worth a second wait).
fn is_io(e: &ConnError) -> bool {
    matches!(e, ConnError::Closed(_) | ConnError::Io(..))
}

fn finished(resp: Response) -> (State, Option<Response>) {
    (State::Finished(resp.clone()), Some(resp))
}

/// For replies where even a 2xx means failure (a 250 to DATA skipped the
/// 354 we need before sending the body).
fn completion_never_ok(reply: &Reply, what: &str) -> Response {
    Response::new(
        451,
        format!(
            "4.5.0 unexpected upstream reply to {what}: {}",
            reply.response()
        ),
    )
}
