//! The `rest` endpoint: delivery to a receiving application over HTTP/JSON,
//! the protocol of the original Koukan's `rest_output` (its router towards
//! applications; the reference's §1.9 and §5.1).
//!
//! One [`RestOutput`] is one transaction at the application:
//!
//! 1. MAIL with the first recipients: `POST <url>` with the create JSON
//!    (envelope, where the message came from, `sender`, signals as
//!    `filter_output` if configured). The reply is `201` with `Location`
//!    (the transaction's URL), `ETag` and the transaction as read. MAIL
//!    alone (a chain that routes statically hands it over before any
//!    recipient) is answered `250` here and sent with the first recipient:
//!    an application's transaction always has one.
//! 2. Until the application's `mail_response` and `rcpt_response`s are in:
//!    `GET <tx>` with `If-None-Match` and `Request-Timeout` (a hanging GET
//!    where the application supports it; at least a second between polls
//!    that find nothing new).
//! 3. More recipients: `PATCH <tx>` (`If-Match`) with
//!    `{"rcpt_to": [...], "rcpt_to_list_offset": n}`, then poll as above.
//! 4. The body, once some recipient was accepted: kept in a spool file as
//!    it arrives (never the whole message in memory), and `PUT` to the
//!    `body.blob_status.uri` the application gave: in one PUT at the end
//!    (`chunk_size` 0), or in ranged PUTs of `chunk_size` octets as it
//!    arrives (the last with the total, or an empty one with
//!    `X-Finalize-Blob-Length`). A `416` reply's `Content-Range` says how
//!    much the application has; the upload resumes there from the spool.
//! 5. Poll for `data_response`.
//!
//! The application's replies reach the client verbatim (its 550 for a
//! recipient is the client's 550, in cut-through). Everything that goes
//! wrong at the HTTP level (connection refused, a timeout, an HTTP error
//! status, a reply that breaks the protocol) is a temporary failure
//! (`451`, text naming the request and the reason), so the client or the
//! scheduler tries again as with an SMTP upstream; the application's
//! transaction is then cancelled (`POST <tx>/cancel`, in the background),
//! as it is when the chain drops the transaction before the data response
//! (RSET, a lost client), so that a retry is not delivered twice.
//!
//! Redirects (`307`, `308`) are followed per request, up to
//! `max_redirects`, the request sent again with its body; `https` is never
//! redirected to `http`. Reply bodies are read up to [`MAX_REPLY_BYTES`].
//!
//! `receive_parsing` (the message parsed into message-builder JSON, its
//! parts as blobs) goes through a [`ReceiveParser`]: `koukan-message`'s
//! parser ([`default_parser`]), or a stub in tests.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use koukan_chain::body::{BodyCollector, Message, SpoolError, SpoolOptions};
use koukan_chain::{Mailbox, Recipient, Response, Terminal, TxContext, TxUpdate, UpdateResponse};
use koukan_rest::{ContentRange, SenderRef, TxCreate, TxRead};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

/// `rcpt_timeout` when the config leaves it out.
pub const DEFAULT_RCPT_TIMEOUT: Duration = Duration::from_secs(30);
/// `data_timeout` when the config leaves it out.
pub const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(300);
/// `max_redirects` when the config leaves it out.
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;
/// `receive_parsing.max_inline` when the config leaves it out.
pub const DEFAULT_MAX_INLINE: usize = 64 * 1024;

/// The largest reply entity read from an application: its replies are a
/// transaction's JSON, a few KiB; anything larger is refused unread
/// rather than buffered.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// The shortest time between two polls that find the transaction
/// unchanged (an application without hanging GETs answers at once).
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Polls of one wait, whatever the application answers: the wait is
/// bounded by its deadline too, this bounds the work an application that
/// changes its ETag on every read can cause.
const MAX_POLLS: usize = 1000;

/// Times the body upload resumes from what a reply says the application
/// has, per transaction, before it gives up.
const MAX_RESYNCS: usize = 8;

/// Times a PATCH is tried again after `412` (the transaction changed
/// under it: the application wrote a response meanwhile).
const MAX_PATCH_CONFLICTS: usize = 3;

/// How long a cancel may take: it runs in the background, after the
/// transaction is over for the chain.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Declares the final length of a blob whose octets are all uploaded
/// (an empty last PUT).
const FINALIZE_LENGTH: &str = "x-finalize-blob-length";
/// The length of a blob a reply describes when it is empty (no range can
/// say zero octets).
const BLOB_LENGTH: &str = "x-blob-length";
const REQUEST_TIMEOUT: &str = "request-timeout";

/// Octets read from the spool per piece of a streamed request body.
const STREAM_PIECE: usize = 64 * 1024;

/// `receive_parsing` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveParsing {
    pub max_inline: usize,
}

/// One `rest` endpoint's settings, as the config gives them.
#[derive(Clone, Debug, PartialEq)]
pub struct RestConfig {
    /// Where transactions are created (POST).
    pub url: Url,
    /// The create request's `sender`.
    pub sender: Option<SenderRef>,
    pub rcpt_timeout: Duration,
    pub data_timeout: Duration,
    /// 0: one PUT at the end.
    pub chunk_size: u64,
    pub verify_certificates: bool,
    pub ca_file: Option<PathBuf>,
    pub send_filter_output: bool,
    pub receive_parsing: Option<ReceiveParsing>,
    pub max_redirects: u32,
    /// Where the body is spooled.
    pub spool: SpoolOptions,
}

impl RestConfig {
    /// The defaults for an application at `url`.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            sender: None,
            rcpt_timeout: DEFAULT_RCPT_TIMEOUT,
            data_timeout: DEFAULT_DATA_TIMEOUT,
            chunk_size: 0,
            verify_certificates: true,
            ca_file: None,
            send_filter_output: false,
            receive_parsing: None,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            spool: SpoolOptions::default(),
        }
    }
}

/// The message parsed for `receive_parsing`: the message-builder JSON and
/// the blobs it refers to, by id.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub json: Value,
    pub blobs: Vec<(String, Bytes)>,
}

/// Parses a message for `receive_parsing`. Runs on the blocking pool.
pub trait ReceiveParser: Send + Sync + 'static {
    /// Parts up to `max_inline` octets stay inline in the JSON.
    fn parse(&self, raw: &[u8], max_inline: usize) -> Result<Parsed, String>;
}

/// The parser `receive_parsing` uses: `koukan-message`'s.
pub fn default_parser() -> Option<Arc<dyn ReceiveParser>> {
    Some(Arc::new(MessageParser))
}

/// `koukan_message::parse`: the original's parsed JSON (section 2.3 of its
/// docs) and the parts too large to inline as blobs `0`, `1`, ….
struct MessageParser;

impl ReceiveParser for MessageParser {
    fn parse(&self, raw: &[u8], max_inline: usize) -> Result<Parsed, String> {
        let p = koukan_message::parse(raw, max_inline).map_err(|e| e.to_string())?;
        Ok(Parsed {
            json: p.json,
            blobs: p.blobs,
        })
    }
}

/// Why an endpoint's client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("TLS settings: {0}")]
    Tls(#[from] koukan_smtp_client::TlsConfigError),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("receive_parsing is set and this build has no message parser")]
    NoParser,
}

/// One `rest` endpoint: its settings and its HTTP client (one connection
/// pool), built once and shared by every transaction to it, kept across
/// reloads that leave the endpoint as it is.
pub struct RestEndpoint {
    config: RestConfig,
    client: reqwest::Client,
    parser: Option<Arc<dyn ReceiveParser>>,
    spool: Arc<SpoolOptions>,
}

impl fmt::Debug for RestEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestEndpoint")
            .field("config", &self.config)
            .field("parser", &self.parser.is_some())
            .finish()
    }
}

impl RestEndpoint {
    /// Builds the client; `parser` is required with `receive_parsing`.
    pub fn new(
        config: RestConfig,
        parser: Option<Arc<dyn ReceiveParser>>,
    ) -> Result<Self, BuildError> {
        if config.receive_parsing.is_some() && parser.is_none() {
            return Err(BuildError::NoParser);
        }
        let tls = koukan_smtp_client::tls_client_config(
            config.verify_certificates,
            config.ca_file.as_deref(),
        )?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            // Redirects are followed by `send`, which re-sends bodies and
            // refuses a downgrade to http; reqwest's policy would turn a
            // 302 into a GET and cannot re-send a streamed body.
            .redirect(reqwest::redirect::Policy::none())
            // A mail server's egress is its config, not the environment's
            // HTTP_PROXY.
            .no_proxy()
            .user_agent(concat!("koukan/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            spool: Arc::new(config.spool.clone()),
            config,
            client,
            parser,
        })
    }

    pub fn config(&self) -> &RestConfig {
        &self.config
    }
}

/// Why a request to the application failed. Each is a temporary failure
/// for the transaction ([`RestError::response`]).
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// No connection (refused, unreachable, TLS handshake).
    #[error("{at}: {reason}")]
    Connect { at: String, reason: String },
    /// The request or its reply did not complete in time.
    #[error("{at}: timed out")]
    Timeout { at: String },
    /// The connection broke mid-request, or the reply could not be read.
    #[error("{at}: {reason}")]
    Io { at: String, reason: String },
    /// An HTTP status the protocol does not expect here.
    #[error("{at}: HTTP {status}")]
    Status { at: String, status: u16 },
    /// A reply that breaks the protocol: bad JSON, no ETag, an echo that
    /// is not a placeholder, a bad Content-Range, ...
    #[error("{at}: bad reply: {reason}")]
    BadReply { at: String, reason: String },
    #[error("{at}: more than {max} redirects")]
    TooManyRedirects { at: String, max: u32 },
    /// The application did not give the responses waited for in time.
    #[error("{at}: no {what} within {secs}s")]
    NoResponse {
        at: String,
        what: &'static str,
        secs: u64,
    },
    /// The body came without an application transaction to put it in
    /// (cannot happen: the body is only taken after an accepted recipient).
    #[error("no transaction at the application")]
    NoTransaction,
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("parsing the message for receive_parsing: {0}")]
    Parse(String),
}

/// A request as errors name it: `POST http://...`.
fn at(method: &Method, url: &Url) -> String {
    format!("{method} {url}")
}

impl RestError {
    /// The reply a client gets: always temporary, the enhanced code by
    /// kind (RFC 3463: 4.4.1 no answer, 4.4.2 bad connection, 4.4.7 time
    /// expired, 4.3.0 the receiving system failed, 4.5.0 protocol error).
    pub fn response(&self) -> Response {
        let code = match self {
            RestError::Connect { .. } => "4.4.1",
            RestError::Io { .. } => "4.4.2",
            RestError::Timeout { .. } | RestError::NoResponse { .. } => "4.4.7",
            RestError::Status { status, .. } if *status >= 500 => "4.3.0",
            RestError::Spool(_) | RestError::Parse(_) | RestError::NoTransaction => "4.3.0",
            RestError::Status { .. }
            | RestError::BadReply { .. }
            | RestError::TooManyRedirects { .. } => "4.5.0",
        };
        Response::new(451, format!("{code} rest_output: {self}"))
    }
}

/// What a request sends as its entity; rebuilt for every redirect hop.
#[derive(Clone)]
enum Entity {
    Empty,
    Json(Bytes),
    Bytes(Bytes),
    /// Octets `first..end` of the spooled message, streamed.
    Range {
        message: Message,
        first: u64,
        end: u64,
    },
}

impl Entity {
    fn len(&self) -> u64 {
        match self {
            Entity::Empty => 0,
            Entity::Json(b) | Entity::Bytes(b) => b.len() as u64,
            Entity::Range { first, end, .. } => end - first,
        }
    }

    fn body(&self) -> reqwest::Body {
        match self {
            Entity::Empty => reqwest::Body::from(Bytes::new()),
            Entity::Json(b) | Entity::Bytes(b) => reqwest::Body::from(b.clone()),
            Entity::Range {
                message,
                first,
                end,
            } => reqwest::Body::wrap_stream(spool_stream(message.clone(), *first, *end)),
        }
    }
}

/// Octets `first..end` of `message`, a piece at a time.
fn spool_stream(
    message: Message,
    first: u64,
    end: u64,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::unfold(first, move |pos| {
        let message = message.clone();
        async move {
            if pos >= end {
                return None;
            }
            let max = (end - pos).min(STREAM_PIECE as u64) as usize;
            let piece = match message.read_at(pos, max).await {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => {
                    // The spool is shorter than the range: cannot happen
                    // (ranges are within what was received); end the
                    // stream with an error rather than send too little.
                    let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "spool ended");
                    return Some((Err(e), end));
                }
                Err(e) => return Some((Err(std::io::Error::other(e)), end)),
            };
            let next = pos + piece.len() as u64;
            Some((Ok(piece), next))
        }
    })
}

/// A request to the application.
struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    entity: Entity,
}

impl Request {
    fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            headers: HeaderMap::new(),
            entity: Entity::Empty,
        }
    }

    fn header(mut self, name: impl header::IntoHeaderName, value: impl fmt::Display) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.insert(name, v);
        }
        self
    }

    fn json(self, value: &impl Serialize) -> Self {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        let mut r = self.header(header::CONTENT_TYPE, "application/json");
        r.entity = Entity::Json(Bytes::from(bytes));
        r
    }

    fn entity(mut self, entity: Entity) -> Self {
        self.entity = entity;
        self
    }
}

/// A reply, its entity read (bounded).
struct Reply {
    method: Method,
    /// The URL that answered (after redirects).
    url: Url,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn bad(&self, reason: impl Into<String>) -> RestError {
        RestError::BadReply {
            at: at(&self.method, &self.url),
            reason: reason.into(),
        }
    }

    fn status_error(&self) -> RestError {
        RestError::Status {
            at: at(&self.method, &self.url),
            status: self.status.as_u16(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The version the reply carries, surrounding quotes stripped (as the
    /// original compares them). Required on every POST, GET and PATCH reply.
    fn etag(&self) -> Result<String, RestError> {
        let etag = self
            .header(header::ETAG.as_str())
            .map(|e| e.trim().trim_matches('"'))
            .filter(|e| !e.is_empty())
            .ok_or_else(|| self.bad("no ETag"))?;
        Ok(etag.to_owned())
    }

    /// The entity as a transaction read.
    fn tx(&self) -> Result<TxRead, RestError> {
        let v: Value =
            serde_json::from_slice(&self.body).map_err(|e| self.bad(format!("not JSON: {e}")))?;
        TxRead::parse(&v).map_err(|e| self.bad(format!("invalid transaction: {e}")))
    }

    /// How many octets of the blob the reply says the application has:
    /// from `Content-Range` (which must start at 0), else
    /// `X-Blob-Length`; `None` when it says neither.
    fn stored_length(&self) -> Result<Option<u64>, RestError> {
        if let Some(range) = self.header(header::CONTENT_RANGE.as_str()) {
            let r = ContentRange::parse(range)
                .map_err(|e| self.bad(format!("Content-Range {range:?}: {e}")))?;
            if r.first != 0 {
                return Err(self.bad(format!("Content-Range {range:?} does not start at 0")));
            }
            return Ok(Some(r.last + 1));
        }
        match self.header(BLOB_LENGTH) {
            Some(n) => n
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.bad(format!("X-Blob-Length {n:?}"))),
            None => Ok(None),
        }
    }
}

/// Whether a URL the application gives (a redirect, `Location`, a blob
/// URI) may be used after `base`: http(s) only, and never from https down
/// to http.
fn allowed_next(base: &Url, next: &Url) -> bool {
    matches!(
        (base.scheme(), next.scheme()),
        ("https", "https") | ("http", "http" | "https")
    )
}

/// Describes a transport error by its innermost cause ("connection
/// refused"), not reqwest's wrapper text.
fn reason(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    let mut io_kind = None;
    while let Some(next) = cause.source() {
        if let Some(io) = next.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        cause = next;
    }
    match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".into(),
        Some(std::io::ErrorKind::ConnectionReset) => "connection reset".into(),
        Some(std::io::ErrorKind::ConnectionAborted) => "connection aborted".into(),
        _ => cause.to_string(),
    }
}

impl RestEndpoint {
    /// Sends a request before `deadline`, following 307/308 redirects,
    /// and reads the reply's entity (at most [`MAX_REPLY_BYTES`]).
    async fn send(&self, req: Request, deadline: Instant) -> Result<Reply, RestError> {
        let Request {
            method,
            mut url,
            headers,
            entity,
        } = req;
        let timeout = |url: &Url| RestError::Timeout {
            at: at(&method, url),
        };
        let mut hops = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timeout(&url));
            }
            let mut builder = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .timeout(remaining);
            let has_entity = !matches!(entity, Entity::Empty);
            if has_entity || method == Method::PUT || method == Method::POST {
                // The length explicitly, so that a streamed entity is
                // sent with it rather than chunked.
                builder = builder
                    .header(header::CONTENT_LENGTH, entity.len())
                    .body(entity.body());
            }
            let sent = builder.send().await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) if e.is_timeout() => return Err(timeout(&url)),
                Err(e) if e.is_connect() => {
                    return Err(RestError::Connect {
                        at: at(&method, &url),
                        reason: reason(&e),
                    });
                }
                Err(e) => {
                    return Err(RestError::Io {
                        at: at(&method, &url),
                        reason: reason(&e),
                    });
                }
            };
            let status = resp.status();
            if matches!(
                status,
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
            ) {
                let bad = |reason: String| RestError::BadReply {
                    at: at(&method, &url),
                    reason,
                };
                if hops >= self.config.max_redirects {
                    return Err(RestError::TooManyRedirects {
                        at: at(&method, &url),
                        max: self.config.max_redirects,
                    });
                }
                let location = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| bad(format!("HTTP {} without Location", status.as_u16())))?;
                let next = url
                    .join(location)
                    .map_err(|e| bad(format!("redirect to {location:?}: {e}")))?;
                if !allowed_next(&url, &next) {
                    return Err(bad(format!("redirect to {next} refused")));
                }
                tracing::debug!(from = %url, to = %next, "rest_output: following redirect");
                hops += 1;
                url = next;
                continue;
            }
            let headers = resp.headers().clone();
            let body = read_limited(resp).await.map_err(|e| match e {
                ReadError::TooLarge => RestError::BadReply {
                    at: at(&method, &url),
                    reason: format!("reply entity over {MAX_REPLY_BYTES} octets"),
                },
                ReadError::Http(e) if e.is_timeout() => timeout(&url),
                ReadError::Http(e) => RestError::Io {
                    at: at(&method, &url),
                    reason: reason(&e),
                },
            })?;
            return Ok(Reply {
                method,
                url,
                status,
                headers,
                body,
            });
        }
    }
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Bytes, ReadError> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_REPLY_BYTES as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut out = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Http)? {
        if out.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// What the replies must be consistent with: what was sent so far.
#[derive(Clone, Debug, Default)]
struct Sent {
    remote_host: Option<(String, u16)>,
    local_host: Option<(String, u16)>,
    rcpts: usize,
}

/// Checks a read against what was sent (the original's delta check, §1.9):
/// `remote_host`/`local_host` unchanged if echoed (leaving them out is
/// fine: it says nothing wrong), one placeholder per recipient if
/// `rcpt_to` is there, no more responses than recipients, reply codes
/// that are SMTP replies. [`TxRead::parse`] checked the rest.
fn check_read(read: &TxRead, sent: &Sent) -> Result<(), String> {
    for (name, got, want) in [
        ("remote_host", &read.remote_host, &sent.remote_host),
        ("local_host", &read.local_host, &sent.local_host),
    ] {
        if let Some(got) = got
            && want.as_ref() != Some(got)
        {
            return Err(match want {
                Some(w) => format!("{name} {got:?} is not the {w:?} sent"),
                None => format!("{name} {got:?} was not sent"),
            });
        }
    }
    if !read.rcpt_to.is_empty() && read.rcpt_to.len() != sent.rcpts {
        return Err(format!(
            "rcpt_to has {} entries for the {} recipients sent",
            read.rcpt_to.len(),
            sent.rcpts
        ));
    }
    if read.rcpt_response.len() > sent.rcpts {
        return Err(format!(
            "rcpt_response has {} entries for the {} recipients sent",
            read.rcpt_response.len(),
            sent.rcpts
        ));
    }
    let responses = read
        .mail_response
        .iter()
        .chain(&read.rcpt_response)
        .chain(&read.data_response);
    for r in responses {
        if !(200..=599).contains(&r.code) {
            return Err(format!("reply code {} is not an SMTP reply", r.code));
        }
    }
    Ok(())
}

/// An application's reply as the client gets it: code and text verbatim,
/// but no control characters (a text must not break the SMTP reply it
/// becomes) and a bounded size (RFC 5321 §4.5.3.1.5: 512 octets a line).
fn smtp_response(r: &koukan_rest::Response) -> Response {
    const MAX_LINES: usize = 10;
    const MAX_LINE: usize = 500;
    let lines: Vec<String> = r
        .text()
        .split('\n')
        .take(MAX_LINES)
        .map(|line| {
            let clean: String = line
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let mut end = clean.len().min(MAX_LINE);
            while !clean.is_char_boundary(end) {
                end -= 1;
            }
            clean[..end].trim_end().to_owned()
        })
        .collect();
    Response::new(r.code, lines.join("\n"))
}

/// The application's transaction.
struct Session {
    /// Its URL (`Location` of the create).
    url: Url,
    etag: String,
    /// As last read.
    read: TxRead,
    sent: Sent,
}

impl Session {
    /// Nothing more will happen there: the data response is in, or MAIL
    /// or every recipient failed.
    fn finished(&self) -> bool {
        let r = &self.read;
        r.data_response.is_some()
            || r.mail_response.as_ref().is_some_and(|m| !is_ok(m.code))
            || (self.sent.rcpts > 0
                && r.rcpt_response.len() == self.sent.rcpts
                && r.rcpt_response.iter().all(|x| !is_ok(x.code)))
    }

    /// A URL the application gave, resolved against the transaction's.
    fn resolve(&self, uri: &str) -> Result<Url, String> {
        let u = self
            .url
            .join(uri)
            .map_err(|e| format!("URI {uri:?}: {e}"))?;
        if allowed_next(&self.url, &u) {
            Ok(u)
        } else {
            Err(format!("URI {u} refused after {}", self.url.scheme()))
        }
    }
}

fn is_ok(code: u16) -> bool {
    (200..300).contains(&code)
}

/// The PATCH that adds recipients or updates the signals (REST_UPDATE).
#[derive(Serialize)]
struct TxPatch<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rcpt_to: Vec<koukan_rest::Mailbox>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rcpt_to_list_offset: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter_output: Option<&'a Map<String, Value>>,
}

fn rest_mailbox(m: &Mailbox) -> koukan_rest::Mailbox {
    koukan_rest::Mailbox {
        m: m.address.clone(),
        e: m.params
            .iter()
            .map(|p| koukan_rest::EsmtpParam {
                k: p.keyword.clone(),
                p: p.value.clone(),
            })
            .collect(),
    }
}

/// How far the raw body upload got.
#[derive(Default)]
struct Upload {
    /// Octets the application has (as far as its replies say).
    stored: u64,
    /// The total was declared and the blob is complete.
    finalized: bool,
    resyncs: usize,
}

/// One transaction at a receiving application: a chain terminal.
pub struct RestOutput {
    endpoint: Arc<RestEndpoint>,
    ctx: Arc<TxContext>,
    /// MAIL that came alone, sent with the first recipient.
    deferred_mail: Option<Mailbox>,
    session: Option<Session>,
    /// Once MAIL failed or a request did, later recipients and the data
    /// get this.
    failed: Option<Response>,
    accepted: usize,
    body: Option<BodyCollector>,
    upload: Upload,
    /// The data reply, once given (final, or early on a failure).
    data: Option<Response>,
    /// The signals sent as `filter_output`, to PATCH them when they change.
    filter_output: Option<Map<String, Value>>,
}

impl RestOutput {
    pub fn new(endpoint: Arc<RestEndpoint>, ctx: Arc<TxContext>) -> Self {
        Self {
            endpoint,
            ctx,
            deferred_mail: None,
            session: None,
            failed: None,
            accepted: 0,
            body: None,
            upload: Upload::default(),
            data: None,
            filter_output: None,
        }
    }

    fn config(&self) -> &RestConfig {
        &self.endpoint.config
    }

    /// The signals as `filter_output`: those stored with the transaction
    /// (a delivery from the store), then those of this chain.
    fn signals(&self) -> Option<Map<String, Value>> {
        if !self.config().send_filter_output {
            return None;
        }
        let mut out = Map::new();
        if let Some(stored) = self.ctx.ingress.stored() {
            out.extend(stored.signals.clone());
        }
        out.extend(self.ctx.signals.to_json());
        Some(out)
    }

    fn create_json(&self, mail: &Mailbox, rcpts: &[Recipient]) -> (TxCreate, Sent) {
        let ingress = &self.ctx.ingress;
        let host = |a: std::net::SocketAddr| (a.ip().to_string(), a.port());
        let smtp_meta = ingress.smtp().map(|s| {
            let mut m = Map::new();
            if let Some(ehlo) = &s.ehlo_host {
                m.insert("ehlo_host".into(), Value::String(ehlo.clone()));
            }
            m.insert("esmtp".into(), Value::Bool(s.esmtp));
            m.insert("tls".into(), Value::Bool(s.tls.is_some()));
            m.insert("auth".into(), Value::Bool(s.auth_user.is_some()));
            m
        });
        let filter_output = self.signals().filter(|m| !m.is_empty());
        let create = TxCreate {
            remote_host: ingress.peer().map(host),
            local_host: ingress.local().map(host),
            mail_from: Some(rest_mailbox(mail)),
            rcpt_to: rcpts.iter().map(|r| rest_mailbox(&r.mailbox)).collect(),
            body: None,
            smtp_meta,
            sender: self.config().sender.clone(),
            filter_output,
        };
        let sent = Sent {
            remote_host: create.remote_host.clone(),
            local_host: create.local_host.clone(),
            rcpts: rcpts.len(),
        };
        (create, sent)
    }

    /// POSTs the transaction and waits for the MAIL and recipient replies.
    async fn create(&mut self, mail: Mailbox, rcpts: &[Recipient]) -> Result<(), RestError> {
        let deadline = Instant::now() + self.config().rcpt_timeout;
        let (create, sent) = self.create_json(&mail, rcpts);
        self.filter_output = create.filter_output.clone();
        let req = Request::new(Method::POST, self.config().url.clone()).json(&create);
        let reply = self.endpoint.send(req, deadline).await?;
        if reply.status != StatusCode::CREATED {
            return Err(reply.status_error());
        }
        let location = reply
            .header(header::LOCATION.as_str())
            .ok_or_else(|| reply.bad("201 without Location"))?;
        let url = reply
            .url
            .join(location)
            .map_err(|e| reply.bad(format!("Location {location:?}: {e}")))?;
        if !allowed_next(&reply.url, &url) {
            return Err(reply.bad(format!("Location {url} refused")));
        }
        let etag = reply.etag()?;
        let read = reply.tx()?;
        check_read(&read, &sent).map_err(|e| reply.bad(e))?;
        tracing::debug!(tx_url = %url, "rest_output: transaction created");
        let session = self.session.insert(Session {
            url,
            etag,
            read,
            sent,
        });
        let n = session.sent.rcpts;
        let budget = self.config().rcpt_timeout;
        self.wait(deadline, budget, "mail_response and rcpt_response", |r| {
            envelope_answered(r, n)
        })
        .await
    }

    /// PATCHes more recipients and waits for their replies.
    async fn add_rcpts(&mut self, rcpts: &[Recipient]) -> Result<(), RestError> {
        let deadline = Instant::now() + self.config().rcpt_timeout;
        let Some(session) = self.session.as_ref() else {
            return Ok(());
        };
        let offset = session.sent.rcpts;
        let patch = TxPatch {
            rcpt_to: rcpts.iter().map(|r| rest_mailbox(&r.mailbox)).collect(),
            rcpt_to_list_offset: Some(offset),
            filter_output: None,
        };
        self.patch(&patch, rcpts.len(), deadline).await?;
        let n = offset + rcpts.len();
        let budget = self.config().rcpt_timeout;
        self.wait(deadline, budget, "rcpt_response", |r| {
            envelope_answered(r, n)
        })
        .await
    }

    /// PATCHes the transaction (`If-Match`), adding `new_rcpts` to what
    /// the replies are checked against. A `412` (the application wrote
    /// meanwhile) reads the new version and tries again.
    async fn patch(
        &mut self,
        patch: &TxPatch<'_>,
        new_rcpts: usize,
        deadline: Instant,
    ) -> Result<(), RestError> {
        let endpoint = self.endpoint.clone();
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let mut sent = session.sent.clone();
        sent.rcpts += new_rcpts;
        for _ in 0..=MAX_PATCH_CONFLICTS {
            let req = Request::new(Method::PATCH, session.url.clone())
                .header(header::IF_MATCH, &session.etag)
                .json(patch);
            let reply = endpoint.send(req, deadline).await?;
            if reply.status == StatusCode::PRECONDITION_FAILED {
                let req = Request::new(Method::GET, session.url.clone());
                let current = endpoint.send(req, deadline).await?;
                if current.status != StatusCode::OK {
                    return Err(current.status_error());
                }
                let read = current.tx()?;
                check_read(&read, &session.sent).map_err(|e| current.bad(e))?;
                session.etag = current.etag()?;
                session.read = read;
                continue;
            }
            if reply.status != StatusCode::OK {
                return Err(reply.status_error());
            }
            let etag = reply.etag()?;
            let read = reply.tx()?;
            check_read(&read, &sent).map_err(|e| reply.bad(e))?;
            session.etag = etag;
            session.read = read;
            session.sent = sent;
            return Ok(());
        }
        Err(RestError::BadReply {
            at: at(&Method::PATCH, &session.url),
            reason: format!(
                "412 (version conflict) {} times in a row",
                MAX_PATCH_CONFLICTS + 1
            ),
        })
    }

    /// Polls the transaction until `done` holds for it or `deadline`
    /// (`budget` after the step began: what the error says).
    async fn wait(
        &mut self,
        deadline: Instant,
        budget: Duration,
        what: &'static str,
        done: impl Fn(&TxRead) -> bool,
    ) -> Result<(), RestError> {
        let endpoint = self.endpoint.clone();
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        for _ in 0..MAX_POLLS {
            if done(&session.read) {
                return Ok(());
            }
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                break;
            }
            let mut req = Request::new(Method::GET, session.url.clone())
                .header(header::IF_NONE_MATCH, &session.etag);
            // The application may hold the GET until something changes,
            // answering a second before our own deadline (it may also
            // answer sooner: the original's listener holds at most 30 s).
            if remaining >= Duration::from_secs(2) {
                let secs = remaining.as_secs() - 1;
                req = req.header(HeaderName::from_static(REQUEST_TIMEOUT), secs);
            }
            let reply = match endpoint.send(req, deadline).await {
                // The GET was still hanging at the deadline: the
                // application had nothing new.
                Err(RestError::Timeout { .. }) if Instant::now() >= deadline => break,
                r => r?,
            };
            let changed = match reply.status {
                StatusCode::NOT_MODIFIED => {
                    let etag = reply.etag()?;
                    if etag != session.etag {
                        return Err(reply.bad(format!(
                            "304 with ETag {etag:?}, not the {:?} asked about",
                            session.etag
                        )));
                    }
                    false
                }
                StatusCode::OK => {
                    let etag = reply.etag()?;
                    let read = reply.tx()?;
                    check_read(&read, &session.sent).map_err(|e| reply.bad(e))?;
                    let changed = etag != session.etag;
                    session.etag = etag;
                    session.read = read;
                    changed
                }
                _ => return Err(reply.status_error()),
            };
            if !changed && !done(&session.read) {
                tokio::time::sleep_until((now + MIN_POLL_INTERVAL).min(deadline)).await;
            }
        }
        if done(&session.read) {
            return Ok(());
        }
        Err(RestError::NoResponse {
            at: at(&Method::GET, &session.url),
            what,
            secs: budget.as_secs(),
        })
    }

    /// The responses for recipients `from..to` (and MAIL if asked): the
    /// application's, MAIL's failure for those it did not answer once
    /// MAIL failed.
    fn envelope_responses(
        &mut self,
        from: usize,
        to: usize,
        mail: bool,
    ) -> (Option<Response>, Vec<Response>) {
        let Some(session) = &self.session else {
            return (None, Vec::new());
        };
        let read = &session.read;
        let mail_response = read.mail_response.as_ref().map(smtp_response);
        let mail_failed = mail_response.as_ref().filter(|m| !m.is_ok()).cloned();
        let rcpts: Vec<Response> = (from..to)
            .map(|i| match (&mail_failed, read.rcpt_response.get(i)) {
                // A recipient after a refused MAIL gets MAIL's refusal:
                // it is why the recipient failed (and for a deferred MAIL,
                // answered 250 here, the only place the client sees it).
                (Some(m), _) => m.clone(),
                (None, Some(r)) => smtp_response(r),
                (None, None) => Response::internal_error(),
            })
            .collect();
        if let Some(m) = &mail_failed {
            self.failed = Some(m.clone());
        }
        self.accepted += rcpts.iter().filter(|r| r.is_ok()).count();
        (if mail { mail_response } else { None }, rcpts)
    }

    /// A request failed: the transaction cannot go on. Returns the reply
    /// for what is pending and cancels the application's transaction.
    fn fail(&mut self, err: &RestError) -> Response {
        tracing::warn!(tx = %self.ctx.id, error = %err, "rest_output: delivery failed");
        let r = err.response();
        self.failed = Some(r.clone());
        self.cancel();
        r
    }

    /// Cancels the application's transaction in the background, unless it
    /// is over there anyway.
    fn cancel(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if session.finished() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // `<tx>/cancel`, whether or not the tx URL ends with a slash.
        let mut url = session.url.clone();
        let path = format!("{}/cancel", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let endpoint = self.endpoint.clone();
        let tx = self.ctx.id.clone();
        handle.spawn(async move {
            let deadline = Instant::now() + CANCEL_TIMEOUT;
            match endpoint
                .send(Request::new(Method::POST, url.clone()), deadline)
                .await
            {
                Ok(r) if r.status.is_success() => {
                    tracing::debug!(%tx, %url, "rest_output: transaction cancelled")
                }
                Ok(r) => {
                    tracing::info!(%tx, %url, status = r.status.as_u16(), "rest_output: cancel refused")
                }
                Err(e) => tracing::info!(%tx, error = %e, "rest_output: cancel failed"),
            }
        });
    }

    async fn envelope(&mut self, update: &mut TxUpdate, resp: &mut UpdateResponse) {
        let mut mail = update.mail_from.take();
        if mail.is_some() && update.rcpt_to.is_empty() {
            // Sent with the first recipient (see the module docs).
            self.deferred_mail = mail.take();
            resp.mail = Some(Response::new(250, "2.1.0 sender ok"));
        }
        let mail_in_update = mail.is_some();
        let rcpts = std::mem::take(&mut update.rcpt_to);
        if rcpts.is_empty() {
            return;
        }
        if let Some(f) = &self.failed {
            if mail_in_update {
                resp.mail = Some(f.clone());
            }
            resp.rcpts = rcpts.iter().map(|_| f.clone()).collect();
            return;
        }
        let from = self.session.as_ref().map_or(0, |s| s.sent.rcpts);
        let result = match (
            self.session.is_some(),
            mail.or_else(|| self.deferred_mail.take()),
        ) {
            (false, Some(m)) => self.create(m, &rcpts).await,
            (false, None) => {
                let r = Response::new(503, "5.5.1 RCPT before MAIL");
                resp.rcpts = rcpts.iter().map(|_| r.clone()).collect();
                return;
            }
            (true, _) => self.add_rcpts(&rcpts).await,
        };
        match result {
            Ok(()) => {
                let (m, r) = self.envelope_responses(from, from + rcpts.len(), mail_in_update);
                resp.mail = resp.mail.take().or(m);
                resp.rcpts = r;
            }
            Err(e) => {
                let r = self.fail(&e);
                if mail_in_update {
                    resp.mail = Some(r.clone());
                }
                resp.rcpts = rcpts.iter().map(|_| r.clone()).collect();
            }
        }
    }

    /// Takes a body chunk; the data reply once the message is complete
    /// (or at once when the transaction cannot go on).
    async fn body(&mut self, data: Bytes, last: bool) -> Option<Response> {
        if let Some(d) = &self.data {
            return Some(d.clone());
        }
        let doomed = match &self.failed {
            Some(f) => Some(f.clone()),
            None if self.accepted == 0 => Some(Response::new(554, "5.5.1 no valid recipients")),
            None => None,
        };
        if let Some(r) = doomed {
            self.data = Some(r.clone());
            return Some(r);
        }
        match self.take_body(data, last).await {
            Ok(None) => None,
            Ok(Some(r)) => {
                self.data = Some(r.clone());
                Some(r)
            }
            Err(e) => {
                let r = self.fail(&e);
                self.data = Some(r.clone());
                Some(r)
            }
        }
    }

    async fn take_body(&mut self, data: Bytes, last: bool) -> Result<Option<Response>, RestError> {
        let collector = self.body.get_or_insert_with(|| {
            BodyCollector::new(self.ctx.clone(), self.endpoint.spool.clone())
        });
        collector.push(&data).await?;
        let Some(message) = collector.message(last) else {
            return Ok(None);
        };
        let chunked = self.config().chunk_size > 0 && self.config().receive_parsing.is_none();
        if !last {
            if chunked {
                let deadline = Instant::now() + self.config().data_timeout;
                self.put_ranges(&message, false, deadline).await?;
            }
            return Ok(None);
        }
        // One deadline for the end of data: the last uploads and the wait
        // for the application's data response (the original bounded this
        // wait by rcpt_timeout, §9 item 23).
        let deadline = Instant::now() + self.config().data_timeout;
        self.update_signals(deadline).await?;
        if let (Some(parsing), Some(parser)) = (
            self.config().receive_parsing.clone(),
            self.endpoint.parser.clone(),
        ) {
            self.put_parsed(&message, &parsing, parser, deadline)
                .await?;
        }
        if chunked {
            self.put_ranges(&message, true, deadline).await?;
        } else {
            self.put_whole(&message, deadline).await?;
        }
        let budget = self.config().data_timeout;
        self.wait(deadline, budget, "data_response", |r| {
            r.data_response.is_some()
        })
        .await?;
        let data = self
            .session
            .as_ref()
            .and_then(|s| s.read.data_response.as_ref())
            .map(smtp_response);
        Ok(Some(data.unwrap_or_else(Response::internal_error)))
    }

    /// With `send_filter_output`: PATCHes the signals if filters recorded
    /// more since the create (a whole-message filter decides on the body).
    async fn update_signals(&mut self, deadline: Instant) -> Result<(), RestError> {
        let Some(now) = self.signals() else {
            return Ok(());
        };
        if now.is_empty() || self.filter_output.as_ref() == Some(&now) {
            return Ok(());
        }
        let patch = TxPatch {
            rcpt_to: Vec::new(),
            rcpt_to_list_offset: None,
            filter_output: Some(&now),
        };
        self.patch(&patch, 0, deadline).await?;
        self.filter_output = Some(now);
        Ok(())
    }

    /// Where the raw message goes, as the application said last.
    fn body_url(&self) -> Result<Url, RestError> {
        let Some(session) = &self.session else {
            return Err(RestError::NoTransaction);
        };
        let bad = |reason: String| RestError::BadReply {
            at: at(&Method::GET, &session.url),
            reason,
        };
        let uri = session
            .read
            .body
            .as_ref()
            .and_then(|b| b.blob_status.as_ref())
            .map(|b| b.uri.clone())
            .ok_or_else(|| bad("no body.blob_status.uri to upload the message to".into()))?;
        session.resolve(&uri).map_err(bad)
    }

    /// One unranged PUT of the whole message.
    async fn put_whole(&mut self, message: &Message, deadline: Instant) -> Result<(), RestError> {
        let url = self.body_url()?;
        let req = Request::new(Method::PUT, url).entity(Entity::Range {
            message: message.clone(),
            first: 0,
            end: message.len(),
        });
        let reply = self.endpoint.send(req, deadline).await?;
        if reply.status != StatusCode::OK {
            return Err(reply.status_error());
        }
        match reply.stored_length()? {
            Some(n) if n != message.len() => Err(reply.bad(format!(
                "the application has {n} of the {} octets sent",
                message.len()
            ))),
            _ => Ok(()),
        }
    }

    /// Ranged PUTs of `chunk_size` octets from what the application has;
    /// with `last`, the rest, the final one declaring the total.
    async fn put_ranges(
        &mut self,
        message: &Message,
        last: bool,
        deadline: Instant,
    ) -> Result<(), RestError> {
        let chunk = self.config().chunk_size;
        let total = message.len();
        if last && self.upload.stored == 0 && total <= chunk {
            // It fits one chunk: a plain PUT, as the original sends.
            return self.put_whole(message, deadline).await;
        }
        let url = self.body_url()?;
        // Every PUT moves `stored` forward or is a resync, which is
        // bounded: so is this loop.
        loop {
            let first = self.upload.stored;
            let available = total - first.min(total);
            if !last && available < chunk {
                return Ok(());
            }
            if last && available == 0 && (self.upload.finalized || total == 0) {
                return Ok(());
            }
            let end = first + available.min(chunk);
            let declared = (last && end == total).then_some(total);
            let req = if end > first {
                let range = ContentRange {
                    first,
                    last: end - 1,
                    total: declared,
                };
                Request::new(Method::PUT, url.clone())
                    .header(header::CONTENT_RANGE, range)
                    .entity(Entity::Range {
                        message: message.clone(),
                        first,
                        end,
                    })
            } else {
                // Everything was sent before the end was known.
                Request::new(Method::PUT, url.clone())
                    .header(HeaderName::from_static(FINALIZE_LENGTH), total)
            };
            let reply = self.endpoint.send(req, deadline).await?;
            let stored = match reply.status {
                StatusCode::OK => reply.stored_length()?.unwrap_or(end),
                StatusCode::RANGE_NOT_SATISFIABLE => reply
                    .stored_length()?
                    .ok_or_else(|| reply.bad("416 without Content-Range"))?,
                _ => return Err(reply.status_error()),
            };
            if stored > total.max(end) {
                return Err(reply.bad(format!(
                    "the application claims {stored} octets, {end} were sent"
                )));
            }
            if stored != end || reply.status != StatusCode::OK {
                self.upload.resyncs += 1;
                if self.upload.resyncs > MAX_RESYNCS {
                    return Err(reply.bad(format!("the upload had to resume {MAX_RESYNCS} times")));
                }
                tracing::debug!(tx = %self.ctx.id, stored, sent = end, "rest_output: upload resumes where the application is");
            }
            self.upload.stored = stored;
            self.upload.finalized = declared.is_some() && stored == total;
        }
    }

    /// `receive_parsing`: POSTs the parsed message to the application's
    /// `message_builder` URI, then PUTs each blob it lists.
    async fn put_parsed(
        &mut self,
        message: &Message,
        parsing: &ReceiveParsing,
        parser: Arc<dyn ReceiveParser>,
        deadline: Instant,
    ) -> Result<(), RestError> {
        // The parser's interface takes the message as one slice.
        let mut raw = Vec::with_capacity(message.len() as usize);
        let mut reader = message.reader(0, STREAM_PIECE);
        while let Some(piece) = reader.next().await? {
            raw.extend_from_slice(&piece);
        }
        let max_inline = parsing.max_inline;
        let parsed = tokio::task::spawn_blocking(move || parser.parse(&raw, max_inline))
            .await
            .map_err(|e| RestError::Parse(e.to_string()))?
            .map_err(RestError::Parse)?;
        let endpoint = self.endpoint.clone();
        let Some(session) = self.session.as_mut() else {
            return Err(RestError::NoTransaction);
        };
        let tx_url = session.url.clone();
        let bad = |reason: String| RestError::BadReply {
            at: at(&Method::GET, &tx_url),
            reason,
        };
        let uri = session
            .read
            .body
            .as_ref()
            .and_then(|b| b.message_builder.as_ref())
            .and_then(|m| m.uri.clone())
            .ok_or_else(|| {
                bad("no body.message_builder.uri to send the parsed message to".into())
            })?;
        let url = session.resolve(&uri).map_err(bad)?;
        let req = Request::new(Method::POST, url)
            .header(header::IF_MATCH, &session.etag)
            .json(&parsed.json);
        let reply = endpoint.send(req, deadline).await?;
        if reply.status != StatusCode::OK {
            return Err(reply.status_error());
        }
        let etag = reply.etag()?;
        let read = reply.tx()?;
        check_read(&read, &session.sent).map_err(|e| reply.bad(e))?;
        let blobs = read
            .body
            .as_ref()
            .and_then(|b| b.message_builder.as_ref())
            .and_then(|m| m.blob_status.clone())
            .unwrap_or_default();
        session.etag = etag;
        session.read = read;
        // Every blob the spec refers to must have somewhere to go before
        // any is sent.
        let mut urls = Vec::with_capacity(parsed.blobs.len());
        for (id, _) in &parsed.blobs {
            let status = blobs
                .get(id)
                .ok_or_else(|| reply.bad(format!("blob {id:?} missing from blob_status")))?;
            urls.push(session.resolve(&status.uri).map_err(|e| reply.bad(e))?);
        }
        for ((_, data), url) in parsed.blobs.into_iter().zip(urls) {
            let req = Request::new(Method::PUT, url).entity(Entity::Bytes(data));
            let r = endpoint.send(req, deadline).await?;
            if r.status != StatusCode::OK {
                return Err(r.status_error());
            }
        }
        Ok(())
    }
}

/// MAIL answered, and every recipient sent so far (or MAIL failed).
fn envelope_answered(r: &TxRead, rcpts: usize) -> bool {
    match &r.mail_response {
        None => false,
        Some(m) if !is_ok(m.code) => true,
        Some(_) => r.rcpt_response.len() >= rcpts,
    }
}

impl Terminal for RestOutput {
    fn update(&mut self, mut update: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        Box::pin(async move {
            let mut resp = UpdateResponse::default();
            if update.mail_from.is_some() || !update.rcpt_to.is_empty() {
                self.envelope(&mut update, &mut resp).await;
            }
            if let Some(chunk) = update.body.take() {
                resp.data = self.body(chunk.data, chunk.last).await;
            }
            resp
        })
    }
}

impl Drop for RestOutput {
    fn drop(&mut self) {
        // The chain is done with the transaction. If the application has
        // not answered the data, the client did not get its answer and
        // must not have the message delivered behind its back.
        self.cancel();
    }
}

#[cfg(test)]
#[path = "rest_output_tests.rs"]
mod tests;
