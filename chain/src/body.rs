//! The whole message for filters that must see all of it before deciding
//! (header validation, a DKIM verifier, a content scanner), without
//! holding it in memory.
//!
//! A whole-message filter ([`MessageFilter`] under a [`WholeMessageLayer`])
//! holds the body back: it answers every non-last chunk with no data reply
//! and forwards nothing. The chunks go into a [`Spool`], an unnamed
//! temporary file (gone when the last handle closes, crash included). At
//! the last chunk the filter reads the complete [`Message`] (a bounded
//! header block, then the body in chunks), decides, and on acceptance
//! streams the spooled message inward in [`REPLAY_CHUNK`] pieces; the
//! inner data reply is its answer.
//!
//! Spooled once: the spools of a transaction are registered in its
//! [`BodySpools`] (in the [`crate::TxContext`]), and while a filter
//! streams a spool inward it marks the chunk in flight. A whole-message
//! filter further in that receives exactly that chunk (the same bytes at
//! the same offset: nothing between them changed the body) reads the
//! outer spool instead of writing its own. A chunk that differs (a filter
//! between them prepended a header, say) makes it spool for itself from
//! there, copying the prefix it had followed: correct whatever sits in
//! between, and free when nothing does.
//!
//! A terminal that needs the bytes again after they went by (an HTTP
//! upload that may have to resend from an offset) keeps them with a
//! [`BodyCollector`], which follows and spools by the same rules.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::Bytes;
use futures::future::BoxFuture;
use tower::{Layer, Service, ServiceExt};

use crate::chain::{Terminal, TerminalService};
use crate::transaction::{BodyChunk, Response, TxContext, TxUpdate, UpdateResponse};

/// Octets of each chunk a whole-message filter streams inward: the size
/// the SMTP server and the scheduler send too.
pub const REPLAY_CHUNK: usize = 64 * 1024;

/// Where spool files go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolOptions {
    /// None: the system temporary directory.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("creating a spool file in {dir}: {source}")]
    Create { dir: String, source: io::Error },
    #[error("writing the spool: {0}")]
    Write(io::Error),
    #[error("reading the spool: {0}")]
    Read(io::Error),
    /// The blocking task doing the I/O did not finish (the runtime is
    /// shutting down).
    #[error("spool I/O task: {0}")]
    Task(String),
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SpoolError::Task(e.to_string()))?
}

/// A message (or a prefix of one) in a temporary file. Appended by one
/// filter; read by any.
pub struct Spool {
    file: Arc<std::fs::File>,
    len: AtomicU64,
    complete: AtomicBool,
    /// The chunk being streamed inward from this spool, and its offset.
    replaying: Mutex<Option<(u64, Bytes)>>,
}

impl Spool {
    async fn create(opts: &SpoolOptions) -> Result<Self, SpoolError> {
        let dir = opts.dir.clone();
        let file = blocking(move || {
            // Unnamed: the file is gone when it is closed, or when the
            // process dies, and never needs cleaning up.
            match &dir {
                Some(d) => tempfile::tempfile_in(d),
                None => tempfile::tempfile(),
            }
            .map_err(|source| SpoolError::Create {
                dir: dir.unwrap_or_else(std::env::temp_dir).display().to_string(),
                source,
            })
        })
        .await?;
        Ok(Self {
            file: Arc::new(file),
            len: AtomicU64::new(0),
            complete: AtomicBool::new(false),
            replaying: Mutex::new(None),
        })
    }

    /// Octets spooled so far.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the whole message is in.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    async fn append(&self, data: Bytes) -> Result<(), SpoolError> {
        if data.is_empty() {
            return Ok(());
        }
        let offset = self.len();
        let n = data.len() as u64;
        let file = self.file.clone();
        blocking(move || file.write_all_at(&data, offset).map_err(SpoolError::Write)).await?;
        self.len.store(offset + n, Ordering::Release);
        Ok(())
    }

    fn finish(&self) {
        self.complete.store(true, Ordering::Release);
    }

    /// Up to `max` octets from `offset`, never past `end`.
    async fn read(&self, offset: u64, max: usize, end: u64) -> Result<Bytes, SpoolError> {
        let n = end.min(self.len()).saturating_sub(offset).min(max as u64) as usize;
        if n == 0 {
            return Ok(Bytes::new());
        }
        let file = self.file.clone();
        blocking(move || {
            let mut buf = vec![0; n];
            file.read_exact_at(&mut buf, offset)
                .map_err(SpoolError::Read)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    /// Marks `data` (at `offset`) as the chunk in flight until the guard
    /// drops, which puts back what was marked before (an outer filter
    /// replaying the same spool).
    fn mark_replay(self: &Arc<Self>, offset: u64, data: Bytes) -> ReplayMark {
        let previous = self
            .replaying
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace((offset, data));
        ReplayMark {
            spool: self.clone(),
            previous,
        }
    }

    /// Whether `data` at `offset` is the chunk in flight: the same bytes,
    /// not a copy, so a filter between that rebuilt the chunk is noticed
    /// even if it changed nothing (it then spools again, which is merely
    /// wasteful). Holding the marked `Bytes` keeps its buffer alive, so an
    /// equal pointer cannot be a reused allocation.
    fn is_replaying(&self, offset: u64, data: &Bytes) -> bool {
        self.is_complete()
            && self
                .replaying
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|(o, b)| {
                    *o == offset
                        && b.len() == data.len()
                        && (b.is_empty() || b.as_ptr() == data.as_ptr())
                })
    }
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("len", &self.len())
            .field("complete", &self.is_complete())
            .finish()
    }
}

struct ReplayMark {
    spool: Arc<Spool>,
    previous: Option<(u64, Bytes)>,
}

impl Drop for ReplayMark {
    fn drop(&mut self) {
        *self
            .spool
            .replaying
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.previous.take();
    }
}

/// The spools of one transaction's whole-message filters (see the module
/// documentation). Holds them weakly: a spool lives as long as the filter
/// that made it.
#[derive(Default)]
pub struct BodySpools {
    live: Mutex<Vec<Weak<Spool>>>,
}

impl BodySpools {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Spool>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn create(&self, opts: &SpoolOptions) -> Result<Arc<Spool>, SpoolError> {
        let spool = Arc::new(Spool::create(opts).await?);
        let mut live = self.lock();
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&spool));
        Ok(spool)
    }

    /// The spool `data` at `offset` is being streamed from, if any.
    fn replayed(&self, offset: u64, data: &Bytes) -> Option<Arc<Spool>> {
        self.lock()
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.is_replaying(offset, data))
    }

    /// Spools alive now (each one a file).
    pub fn live(&self) -> usize {
        self.lock().iter().filter(|w| w.strong_count() > 0).count()
    }
}

impl fmt::Debug for BodySpools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySpools")
            .field("live", &self.live())
            .finish()
    }
}

/// The complete message as a whole-message filter sees it.
#[derive(Clone, Debug)]
pub struct Message {
    spool: Arc<Spool>,
    len: u64,
}

/// How the header block read by [`Message::header_block`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderEnd {
    /// At the blank line; the body starts at `body_offset`.
    Blank { body_offset: u64 },
    /// At the end of the message, which is all header (no blank line).
    EndOfMessage,
    /// No blank line within the limit: the block holds the first `limit`
    /// octets.
    TooLong,
}

/// The header lines of a message, each with its CRLF; the blank line that
/// ends them is not included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderBlock {
    pub bytes: Bytes,
    pub end: HeaderEnd,
}

impl HeaderBlock {
    /// Where the body starts, if the header block ended with a blank line.
    pub fn body_offset(&self) -> Option<u64> {
        match self.end {
            HeaderEnd::Blank { body_offset } => Some(body_offset),
            _ => None,
        }
    }
}

impl Message {
    /// Octets in the message.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Up to `max` octets from `offset` (fewer at the end; none past it).
    pub async fn read_at(&self, offset: u64, max: usize) -> Result<Bytes, SpoolError> {
        self.spool.read(offset, max, self.len).await
    }

    /// The header block, reading at most `limit` octets of header lines
    /// (and the blank line after them).
    pub async fn header_block(&self, limit: usize) -> Result<HeaderBlock, SpoolError> {
        let prefix = self.read_at(0, limit.saturating_add(2)).await?;
        if prefix.starts_with(b"\r\n") {
            return Ok(HeaderBlock {
                bytes: Bytes::new(),
                end: HeaderEnd::Blank { body_offset: 2 },
            });
        }
        if let Some(pos) = prefix.windows(4).position(|w| w == b"\r\n\r\n")
            && pos + 2 <= limit
        {
            return Ok(HeaderBlock {
                bytes: prefix.slice(..pos + 2),
                end: HeaderEnd::Blank {
                    body_offset: pos as u64 + 4,
                },
            });
        }
        if self.len <= limit as u64 {
            return Ok(HeaderBlock {
                bytes: prefix,
                end: HeaderEnd::EndOfMessage,
            });
        }
        let cut = prefix.len().min(limit);
        Ok(HeaderBlock {
            bytes: prefix.slice(..cut),
            end: HeaderEnd::TooLong,
        })
    }

    /// The message from `offset` on, in pieces of at most `chunk` octets.
    pub fn reader(&self, offset: u64, chunk: usize) -> MessageReader {
        MessageReader {
            message: self.clone(),
            offset,
            chunk: chunk.max(1),
        }
    }
}

/// Reads a [`Message`] in order, one bounded piece at a time.
pub struct MessageReader {
    message: Message,
    offset: u64,
    chunk: usize,
}

impl MessageReader {
    /// The next piece, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, SpoolError> {
        if self.offset >= self.message.len {
            return Ok(None);
        }
        let b = self.message.read_at(self.offset, self.chunk).await?;
        self.offset += b.len() as u64;
        Ok(Some(b))
    }
}

/// What a whole-message filter decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Stream the message inward; its data reply is the answer.
    Accept,
    /// Answer the data with this; nothing of the body goes inward.
    Reject(Response),
}

/// A filter that decides on the complete message. Put it in a chain with
/// [`WholeMessageLayer`], which does the holding back and the streaming.
pub trait MessageFilter: Send + Sync + 'static {
    /// Called once per transaction, at its last body chunk.
    fn check<'a>(&'a self, ctx: &'a TxContext, message: &'a Message) -> BoxFuture<'a, Verdict>;
}

/// Makes a [`MessageFilter`] a layer of the chain.
pub struct WholeMessageLayer<F> {
    filter: Arc<F>,
    ctx: Arc<TxContext>,
    opts: Arc<SpoolOptions>,
}

impl<F> WholeMessageLayer<F> {
    pub fn new(filter: Arc<F>, ctx: Arc<TxContext>, opts: Arc<SpoolOptions>) -> Self {
        Self { filter, ctx, opts }
    }
}

impl<F, S> Layer<S> for WholeMessageLayer<F>
where
    F: MessageFilter,
    S: Service<TxUpdate, Response = UpdateResponse, Error = Infallible> + Send + 'static,
    S::Future: Send,
{
    type Service = TerminalService<WholeMessage<F, S>>;

    fn layer(&self, inner: S) -> Self::Service {
        TerminalService::new(WholeMessage {
            filter: self.filter.clone(),
            ctx: self.ctx.clone(),
            inner,
            body: BodyState::Collecting(BodyCollector::new(self.ctx.clone(), self.opts.clone())),
        })
    }
}

/// What a [`WholeMessage`] does with the body chunks it receives.
enum BodyState {
    /// Collecting them (see [`BodyCollector`]).
    Collecting(BodyCollector),
    /// The data is answered; later chunks get the same answer.
    Over(Response),
}

/// Where a [`BodyCollector`] keeps what it received.
enum Collected {
    /// No body chunk yet.
    Start,
    /// Every chunk so far was the chunk in flight from an outer filter's
    /// `spool`; `received` octets of it so far.
    Following { spool: Arc<Spool>, received: u64 },
    /// Spooled into a file of its own.
    Spooling(Arc<Spool>),
}

/// Keeps a transaction's body as it arrives, in a spool file (never in
/// memory), readable at any offset: for whole-message filters, and for
/// terminals that may have to send part of it again (an upload resumed
/// after a lost range, a redirect). Spooled once: while the chunks are an
/// outer whole-message filter's replay of its spool, it reads that spool
/// instead of writing its own (see the module documentation).
pub struct BodyCollector {
    ctx: Arc<TxContext>,
    opts: Arc<SpoolOptions>,
    state: Collected,
}

impl BodyCollector {
    /// Spool files go where `opts` says; `ctx` is the transaction's (its
    /// [`BodySpools`] tell which chunks are an outer spool's replay).
    pub fn new(ctx: Arc<TxContext>, opts: Arc<SpoolOptions>) -> Self {
        Self {
            ctx,
            opts,
            state: Collected::Start,
        }
    }

    /// Octets received so far.
    pub fn len(&self) -> u64 {
        match &self.state {
            Collected::Start => 0,
            Collected::Following { received, .. } => *received,
            Collected::Spooling(own) => own.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the next chunk (or notes it is an outer spool's).
    pub async fn push(&mut self, data: &Bytes) -> Result<(), SpoolError> {
        let state = std::mem::replace(&mut self.state, Collected::Start);
        self.state = match state {
            Collected::Spooling(own) => {
                own.append(data.clone()).await?;
                Collected::Spooling(own)
            }
            state => {
                let received = match &state {
                    Collected::Following { received, .. } => *received,
                    _ => 0,
                };
                let next = received + data.len() as u64;
                match (state, self.ctx.body.replayed(received, data)) {
                    (Collected::Start, Some(spool)) => Collected::Following {
                        spool,
                        received: next,
                    },
                    (Collected::Following { spool, .. }, Some(s)) if Arc::ptr_eq(&spool, &s) => {
                        Collected::Following {
                            spool,
                            received: next,
                        }
                    }
                    (state, _) => {
                        let own = self.ctx.body.create(&self.opts).await?;
                        if let Collected::Following { spool, received } = state {
                            // Diverged after following: the prefix it had
                            // is what this collector received too.
                            let mut offset = 0;
                            while offset < received {
                                let piece = spool.read(offset, REPLAY_CHUNK, received).await?;
                                if piece.is_empty() {
                                    // The outer spool is shorter than
                                    // what it replayed: cannot happen
                                    // (spools only grow); never loop on it.
                                    return Err(SpoolError::Read(io::Error::new(
                                        io::ErrorKind::UnexpectedEof,
                                        "outer spool ended early",
                                    )));
                                }
                                offset += piece.len() as u64;
                                own.append(piece).await?;
                            }
                        }
                        own.append(data.clone()).await?;
                        Collected::Spooling(own)
                    }
                }
            }
        };
        Ok(())
    }

    /// What was received so far, as a [`Message`] of that length (the
    /// whole message once the last chunk is in); `None` before the first
    /// chunk (even an empty one). With `last`, a spool of its own is
    /// marked complete, so that a whole-message filter further in may
    /// follow it.
    pub fn message(&self, last: bool) -> Option<Message> {
        match &self.state {
            Collected::Following { spool, received } => Some(Message {
                spool: spool.clone(),
                len: *received,
            }),
            Collected::Spooling(own) => {
                if last {
                    own.finish();
                }
                Some(Message {
                    spool: own.clone(),
                    len: own.len(),
                })
            }
            Collected::Start => None,
        }
    }
}

impl fmt::Debug for BodyCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyCollector")
            .field("len", &self.len())
            .finish()
    }
}

/// The service of a [`WholeMessageLayer`].
pub struct WholeMessage<F, S> {
    filter: Arc<F>,
    ctx: Arc<TxContext>,
    inner: S,
    body: BodyState,
}

async fn call<S>(svc: &mut S, update: TxUpdate) -> UpdateResponse
where
    S: Service<TxUpdate, Response = UpdateResponse, Error = Infallible>,
{
    let Ok(svc) = svc.ready().await;
    let Ok(resp) = svc.call(update).await;
    resp
}

impl<F, S> WholeMessage<F, S>
where
    F: MessageFilter,
    S: Service<TxUpdate, Response = UpdateResponse, Error = Infallible> + Send + 'static,
    S::Future: Send,
{
    /// The answer to a body chunk: none before the last one.
    async fn body(&mut self, chunk: BodyChunk) -> Option<Response> {
        let collector = match &mut self.body {
            BodyState::Over(r) => return Some(r.clone()),
            BodyState::Collecting(c) => c,
        };
        if let Err(e) = collector.push(&chunk.data).await {
            tracing::warn!(tx = %self.ctx.id, error = %e, "spooling the message failed");
            let r = Response::new(451, "4.3.0 spooling the message failed, try again later");
            self.body = BodyState::Over(r.clone());
            return Some(r);
        }
        if !chunk.last {
            return None;
        }
        // `push` leaves a chunk behind it.
        let Some(message) = collector.message(true) else {
            return Some(Response::internal_error());
        };
        let reply = match self.filter.check(&self.ctx, &message).await {
            Verdict::Reject(r) => r,
            Verdict::Accept => self.replay(&message).await,
        };
        self.body = BodyState::Over(reply.clone());
        Some(reply)
    }

    /// Streams the message inward; returns the inner data reply.
    async fn replay(&mut self, message: &Message) -> Response {
        let mut offset = 0u64;
        loop {
            let data = match message.read_at(offset, REPLAY_CHUNK).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(tx = %self.ctx.id, error = %e, "reading the spooled message failed");
                    return Response::new(451, "4.3.0 reading the spooled message failed");
                }
            };
            let next = offset + data.len() as u64;
            // An empty message is one empty last chunk.
            let last = next >= message.len;
            let resp = {
                let _mark = message.spool.mark_replay(offset, data.clone());
                call(&mut self.inner, TxUpdate::body(data, last)).await
            };
            if let Some(reply) = resp.data {
                // The final reply, or an early one ending the transaction.
                return reply;
            }
            if last {
                return Response::new(451, "4.3.0 internal error: no reply to the message");
            }
            offset = next;
        }
    }
}

impl<F, S> Terminal for WholeMessage<F, S>
where
    F: MessageFilter,
    S: Service<TxUpdate, Response = UpdateResponse, Error = Infallible> + Send + 'static,
    S::Future: Send,
{
    fn update(&mut self, mut update: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        Box::pin(async move {
            let body = update.body.take();
            // The envelope goes on as it came; the body is held back.
            let mut resp = if update.is_empty() {
                UpdateResponse::default()
            } else {
                call(&mut self.inner, update).await
            };
            if let Some(chunk) = body {
                resp.data = self.body(chunk).await;
            }
            resp
        })
    }
}
