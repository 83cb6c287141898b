//! A receiving application for tests of the `rest` endpoint: what the
//! reference's §1.9 says an application implements (the protocol the
//! original Koukan's router speaks to applications), on loopback.
//!
//! - `POST /senders/{s}/transactions`: 201 with `Location`, `ETag` and the
//!   transaction as read (placeholders, `remote_host`/`local_host`
//!   echoed), the MAIL and recipient replies in it or, with
//!   [`Behaviour::respond_after`], only later;
//! - `GET /transactions/{id}`: hanging with `If-None-Match` (up to
//!   `Request-Timeout`, at most 30 s), or at once when
//!   [`Behaviour::hanging_get`] is off;
//! - `PATCH`: more recipients (`rcpt_to_list_offset` checked, `If-Match`
//!   required), `filter_output`, or a heartbeat;
//! - `PUT .../body`: whole, or ranged (`Content-Range`,
//!   `X-Finalize-Blob-Length`; a range ahead of what is stored gets 416
//!   with the stored range);
//! - `POST .../message_builder`, `PUT .../blob/{id}`: the parsed message
//!   and its blobs;
//! - `POST .../cancel`.
//!
//! It records every request and every delivered message for assertions,
//! answers recipients by rules (`550` for addresses containing "reject"),
//! can fail the first creates with HTTP 500, serve behind redirects, lose a
//! range once (so that the client must resume after a 416), and be stopped
//! and restarted on its port with its state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use koukan_rest::{
    BlobStatus, BodyRead, ContentRange, Mailbox, MessageBuilderRead, Placeholder, TxCreate, TxRead,
};
use serde_json::{Value, json};

/// A reply the receiver gives: code and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, text: &str) -> Self {
        Self {
            code,
            text: text.to_owned(),
        }
    }

    fn rest(&self) -> koukan_rest::Response {
        koukan_rest::Response::new(self.code, self.text.clone())
    }
}

/// A create reply broken on purpose, for the client's checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mangle {
    #[default]
    None,
    /// No `ETag` header.
    NoEtag,
    /// The entity is not JSON.
    NotJson,
    /// `mail_from` echoed with its value instead of the `{}` placeholder.
    EchoMailFrom,
    /// `smtp_meta` echoed (not a field of a read).
    EchoSmtpMeta,
    /// `remote_host` changed.
    WrongRemoteHost,
    /// No `Location` header.
    NoLocation,
}

/// How the receiver answers. Changeable while it runs
/// ([`Receiver::set_behaviour`]).
#[derive(Clone, Debug)]
pub struct Behaviour {
    pub mail: Reply,
    /// The first rule whose needle the recipient address contains decides
    /// its reply; no match: `rcpt_ok`.
    pub rcpt_rules: Vec<(String, Reply)>,
    pub rcpt_ok: Reply,
    pub data: Reply,
    /// The first this many creates get HTTP 500.
    pub fail_creates: usize,
    /// The MAIL and recipient replies appear this long after the request
    /// (zero: in the reply itself).
    pub respond_after: Duration,
    /// The data reply appears this long after the message is complete.
    pub data_after: Duration,
    /// GETs with a current `If-None-Match` wait for a change.
    pub hanging_get: bool,
    /// Transaction URLs are handed out under `/moved/`, which answers 308
    /// to the real one (the create URL `/redirect/...` answers 307 to
    /// the real one too).
    pub redirect: bool,
    /// A ranged PUT starting at this offset is answered 200 once without
    /// being stored, so the next one is ahead of what is stored (416).
    pub forget_range_at: Option<u64>,
    /// Hand out `body.message_builder.uri` (for receive parsing).
    pub message_builder: bool,
    pub mangle: Mangle,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            mail: Reply::new(250, "2.1.0 sender ok (receiver)"),
            rcpt_rules: vec![
                ("reject".into(), Reply::new(550, "5.1.1 no such user")),
                (
                    "tempfail".into(),
                    Reply::new(451, "4.2.1 mailbox busy, try later"),
                ),
            ],
            rcpt_ok: Reply::new(250, "2.1.5 recipient ok (receiver)"),
            data: Reply::new(250, "2.0.0 delivered (receiver)"),
            fail_creates: 0,
            respond_after: Duration::ZERO,
            data_after: Duration::ZERO,
            hanging_get: true,
            redirect: false,
            forget_range_at: None,
            message_builder: false,
            mangle: Mangle::None,
        }
    }
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The protocol's headers that were present (lower-case names):
    /// content-range, content-length, content-type, if-match,
    /// if-none-match, request-timeout, x-finalize-blob-length.
    pub headers: BTreeMap<String, String>,
    pub entity_len: usize,
}

/// A message whose data the receiver answered 2xx.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub tx: String,
    /// The create request as sent.
    pub create: Value,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Only the recipients answered 2xx.
    pub accepted: Vec<String>,
    pub body: Vec<u8>,
    pub spec: Option<Value>,
    pub blobs: BTreeMap<String, Vec<u8>>,
    pub filter_output: Option<Value>,
}

#[derive(Clone, Debug, Default)]
struct Tx {
    version: u64,
    create: Value,
    remote_host: Option<(String, u16)>,
    local_host: Option<(String, u16)>,
    sender: bool,
    mail_from: String,
    rcpts: Vec<String>,
    mail_response: Option<Reply>,
    rcpt_responses: Vec<Reply>,
    body: Vec<u8>,
    body_total: Option<u64>,
    body_done: bool,
    spec: Option<Value>,
    expected_blobs: Vec<String>,
    blobs: BTreeMap<String, Vec<u8>>,
    data_response: Option<Reply>,
    data_scheduled: bool,
    cancelled: bool,
    filter_output: Option<Value>,
}

#[derive(Default)]
struct Inner {
    behaviour: Behaviour,
    creates: usize,
    next_id: u64,
    txs: BTreeMap<String, Tx>,
    log: Vec<LogEntry>,
    delivered: Vec<Delivered>,
    forgot_range: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Bumped on every change, for hanging GETs.
    changes: tokio::sync::watch::Sender<u64>,
    base: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

/// A running receiver on 127.0.0.1.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<Server>,
    /// Serves https with this.
    tls: Option<Arc<rustls::ServerConfig>>,
}

struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Receiver {
    /// Starts on a free port.
    pub fn start(behaviour: Behaviour) -> anyhow::Result<Self> {
        Self::start_with(behaviour, None)
    }

    /// Starts serving https with a self-signed certificate for 127.0.0.1
    /// written into `dir`; returns it with the path of the certificate
    /// (PEM), which a client trusts as its CA.
    pub fn start_tls(
        behaviour: Behaviour,
        dir: &std::path::Path,
    ) -> anyhow::Result<(Self, std::path::PathBuf)> {
        use rustls::pki_types::pem::PemObject;
        let (cert, key) = crate::write_test_cert(dir);
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)?
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key)?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        Ok((Self::start_with(behaviour, Some(Arc::new(config)))?, cert))
    }

    fn start_with(
        behaviour: Behaviour,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Self> {
        let addr = crate::loopback(crate::stable_port());
        let (changes, _) = tokio::sync::watch::channel(0);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                behaviour,
                ..Default::default()
            }),
            changes,
            base: format!("{scheme}://{addr}"),
        });
        let mut r = Self {
            addr,
            shared,
            server: None,
            tls,
        };
        r.restart()?;
        Ok(r)
    }

    /// The create URL (`/senders/{sender}/transactions`), or its
    /// redirecting alias with [`Behaviour::redirect`].
    pub fn url(&self, sender: &str) -> String {
        let prefix = if self.shared.lock().behaviour.redirect {
            "/redirect"
        } else {
            ""
        };
        format!("{}{prefix}/senders/{sender}/transactions", self.shared.base)
    }

    pub fn set_behaviour(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.lock().behaviour);
    }

    /// Stops serving (connections refused); the state stays.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop.send(());
            let _ = s.thread.join();
        }
    }

    /// (Re)starts serving on the same port, with the same state.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let std_listener = bind_retrying(self.addr)?;
        std_listener.set_nonblocking(true)?;
        let shared = self.shared.clone();
        let tls = self.tls.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("receiver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(std_listener).expect("receiver listener");
                    let app = router(shared);
                    let stopped = async move {
                        let _ = stopped.await;
                    };
                    let _ = match tls {
                        Some(config) => {
                            let listener = TlsListener {
                                tcp: listener,
                                acceptor: tokio_rustls::TlsAcceptor::from(config),
                            };
                            axum::serve(listener, app)
                                .with_graceful_shutdown(stopped)
                                .await
                        }
                        None => {
                            axum::serve(listener, app)
                                .with_graceful_shutdown(stopped)
                                .await
                        }
                    };
                });
                // Hanging GETs still open are dropped with the runtime.
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        self.server = Some(Server { stop, thread });
        crate::wait_for_port(self.addr, Duration::from_secs(10))
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<LogEntry> {
        self.shared.lock().log.clone()
    }

    /// Creates received (failed ones too).
    pub fn creates(&self) -> usize {
        self.shared.lock().creates
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.shared.lock().delivered.clone()
    }

    /// Waits until `n` messages are delivered (or `timeout`); returns them.
    pub fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.delivered();
            if d.len() >= n || Instant::now() > deadline {
                return d;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ids of the transactions cancelled so far.
    pub fn cancelled(&self) -> Vec<String> {
        self.shared
            .lock()
            .txs
            .iter()
            .filter(|(_, t)| t.cancelled)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The ids of every transaction created.
    pub fn transactions(&self) -> Vec<String> {
        self.shared.lock().txs.keys().cloned().collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts TLS connections: the handshake in `accept`, bounded, a failed
/// one (a client refusing the certificate) skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Binds `addr`, retrying briefly: a restart may find the old socket
/// still closing.
fn bind_retrying(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/senders/{sender}/transactions", post(create))
        .route("/transactions/{id}", get(read).patch(patch))
        .route("/transactions/{id}/body", put(put_body))
        .route("/transactions/{id}/message_builder", post(message_builder))
        .route("/transactions/{id}/blob/{blob}", put(put_blob))
        .route("/transactions/{id}/cancel", post(cancel))
        .route("/redirect/{*rest}", any(redirect_307))
        .route("/moved/{*rest}", any(redirect_308))
        // Messages of several MiB come in one PUT.
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(shared)
}

const LOGGED: [&str; 7] = [
    "content-range",
    "content-length",
    "content-type",
    "if-match",
    "if-none-match",
    "request-timeout",
    "x-finalize-blob-length",
];

fn record(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    len: usize,
    r: &Response,
) {
    let entry = LogEntry {
        method: method.to_string(),
        path: uri.path().to_owned(),
        status: r.status().as_u16(),
        headers: LOGGED
            .iter()
            .filter_map(|h| {
                headers
                    .get(*h)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| ((*h).to_owned(), v.to_owned()))
            })
            .collect(),
        entity_len: len,
    };
    shared.lock().log.push(entry);
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn etag_of(headers: &HeaderMap, name: &str) -> Option<u64> {
    header(headers, name).and_then(|v| v.trim_matches('"').parse().ok())
}

fn status(code: StatusCode, text: &str) -> Response {
    (code, text.to_owned()).into_response()
}

impl Shared {
    fn tx_url(&self, redirect: bool, id: &str) -> String {
        let moved = if redirect { "/moved" } else { "" };
        format!("{}{moved}/transactions/{id}", self.base)
    }

    /// The transaction as read, with its version.
    fn read_json(&self, inner: &Inner, id: &str) -> Option<(u64, TxRead)> {
        let tx = inner.txs.get(id)?;
        let b = &inner.behaviour;
        let url = self.tx_url(b.redirect, id);
        let read = TxRead {
            sender: tx.sender.then_some(Placeholder {}),
            remote_host: tx.remote_host.clone(),
            local_host: tx.local_host.clone(),
            mail_from: Some(Placeholder {}),
            rcpt_to: tx.rcpts.iter().map(|_| Placeholder {}).collect(),
            filter_output: tx.filter_output.as_ref().map(|_| Default::default()),
            body: Some(BodyRead {
                blob_status: Some(BlobStatus {
                    uri: format!("{url}/body"),
                    finalized: tx.body_done,
                }),
                message_builder: b.message_builder.then(|| MessageBuilderRead {
                    uri: Some(format!("{url}/message_builder")),
                    blob_status: tx.spec.as_ref().map(|_| {
                        tx.expected_blobs
                            .iter()
                            .map(|b| {
                                (
                                    b.clone(),
                                    BlobStatus {
                                        uri: format!("{url}/blob/{b}"),
                                        finalized: tx.blobs.contains_key(b),
                                    },
                                )
                            })
                            .collect()
                    }),
                }),
            }),
            mail_response: tx.mail_response.as_ref().map(Reply::rest),
            rcpt_response: tx.rcpt_responses.iter().map(Reply::rest).collect(),
            data_response: tx.data_response.as_ref().map(Reply::rest),
            cancelled: tx.cancelled,
            ..Default::default()
        };
        Some((tx.version, read))
    }

    fn tx_reply(&self, code: StatusCode, id: &str) -> Response {
        let inner = self.lock();
        match self.read_json(&inner, id) {
            Some((version, read)) => (
                code,
                [("etag", version.to_string())],
                axum::Json(serde_json::to_value(&read).unwrap_or_default()),
            )
                .into_response(),
            None => status(StatusCode::NOT_FOUND, "unknown transaction"),
        }
    }

    /// Answers recipients `from..` (and MAIL if unanswered) now or later.
    fn respond_envelope(self: &Arc<Self>, id: &str) {
        let after = self.lock().behaviour.respond_after;
        let apply = |shared: &Shared, id: &str| {
            let mut inner = shared.lock();
            let b = inner.behaviour.clone();
            if let Some(tx) = inner.txs.get_mut(id) {
                if tx.mail_response.is_none() {
                    tx.mail_response = Some(b.mail.clone());
                }
                while tx.rcpt_responses.len() < tx.rcpts.len() {
                    let addr = &tx.rcpts[tx.rcpt_responses.len()];
                    let r = b
                        .rcpt_rules
                        .iter()
                        .find(|(needle, _)| addr.contains(needle.as_str()))
                        .map_or_else(|| b.rcpt_ok.clone(), |(_, r)| r.clone());
                    tx.rcpt_responses.push(r);
                }
                tx.version += 1;
            }
            drop(inner);
            shared.changed();
        };
        if after.is_zero() {
            apply(self, id);
        } else {
            let shared = self.clone();
            let id = id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                apply(&shared, &id);
            });
        }
    }

    /// Once the body (and every blob) is in: the data reply, now or later.
    fn maybe_finish(self: &Arc<Self>, id: &str) {
        let after = {
            let mut inner = self.lock();
            let after = inner.behaviour.data_after;
            let Some(tx) = inner.txs.get_mut(id) else {
                return;
            };
            let blobs_in = tx.expected_blobs.iter().all(|b| tx.blobs.contains_key(b));
            if !tx.body_done || !blobs_in || tx.data_scheduled {
                return;
            }
            tx.data_scheduled = true;
            after
        };
        let finish = |shared: &Shared, id: &str| {
            let mut inner = shared.lock();
            let data = inner.behaviour.data.clone();
            let Some(tx) = inner.txs.get_mut(id) else {
                return;
            };
            if tx.cancelled {
                return;
            }
            tx.data_response = Some(data.clone());
            tx.version += 1;
            let delivered = (200..300).contains(&data.code).then(|| Delivered {
                tx: id.to_owned(),
                create: tx.create.clone(),
                mail_from: tx.mail_from.clone(),
                rcpt_to: tx.rcpts.clone(),
                accepted: tx
                    .rcpts
                    .iter()
                    .zip(&tx.rcpt_responses)
                    .filter(|(_, r)| (200..300).contains(&r.code))
                    .map(|(a, _)| a.clone())
                    .collect(),
                body: tx.body.clone(),
                spec: tx.spec.clone(),
                blobs: tx.blobs.clone(),
                filter_output: tx.filter_output.clone(),
            });
            if let Some(d) = delivered {
                inner.delivered.push(d);
            }
            drop(inner);
            shared.changed();
        };
        if after.is_zero() {
            finish(self, id);
        } else {
            let shared = self.clone();
            let id = id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                finish(&shared, &id);
            });
        }
    }
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(_sender): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = create_inner(&shared, &headers, &body);
    record(&shared, &method, &uri, &headers, body.len(), &r);
    r
}

fn create_inner(shared: &Arc<Shared>, headers: &HeaderMap, body: &Bytes) -> Response {
    let (fail, mangle, redirect) = {
        let mut inner = shared.lock();
        inner.creates += 1;
        let fail = inner.behaviour.fail_creates > 0;
        if fail {
            inner.behaviour.fail_creates -= 1;
        }
        (fail, inner.behaviour.mangle, inner.behaviour.redirect)
    };
    if fail {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose");
    }
    if header(headers, "content-type") != Some("application/json") {
        return status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "json only");
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "invalid json");
    };
    let create = match TxCreate::parse(&value) {
        Ok(c) => c,
        Err(e) => return status(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Some(mail_from) = &create.mail_from else {
        return status(StatusCode::BAD_REQUEST, "mail_from required");
    };
    let id = {
        let mut inner = shared.lock();
        inner.next_id += 1;
        let id = format!("rx{}", inner.next_id);
        inner.txs.insert(
            id.clone(),
            Tx {
                version: 1,
                create: value.clone(),
                remote_host: create.remote_host.clone(),
                local_host: create.local_host.clone(),
                sender: create.sender.is_some(),
                mail_from: mail_from.m.clone(),
                rcpts: create
                    .rcpt_to
                    .iter()
                    .map(|m: &Mailbox| m.m.clone())
                    .collect(),
                filter_output: create.filter_output.clone().map(Value::Object),
                ..Default::default()
            },
        );
        id
    };
    shared.respond_envelope(&id);
    create_reply(shared, &id, redirect, mangle, &value)
}

/// The 201, broken as [`Behaviour::mangle`] says.
fn create_reply(
    shared: &Shared,
    id: &str,
    redirect: bool,
    mangle: Mangle,
    request: &Value,
) -> Response {
    let Some((version, read)) = shared.read_json(&shared.lock(), id) else {
        return status(StatusCode::NOT_FOUND, "unknown transaction");
    };
    let mut v = serde_json::to_value(&read).unwrap_or_default();
    match mangle {
        Mangle::EchoMailFrom => v["mail_from"] = request["mail_from"].clone(),
        Mangle::EchoSmtpMeta => v["smtp_meta"] = json!({"tls": false}),
        Mangle::WrongRemoteHost => v["remote_host"] = json!(["192.0.2.99", 1]),
        _ => {}
    }
    let mut r = if mangle == Mangle::NotJson {
        (StatusCode::CREATED, "this is not json").into_response()
    } else {
        (StatusCode::CREATED, axum::Json(v)).into_response()
    };
    let h = r.headers_mut();
    if mangle != Mangle::NoEtag
        && let Ok(e) = version.to_string().parse()
    {
        h.insert("etag", e);
    }
    if mangle != Mangle::NoLocation
        && let Ok(l) = shared.tx_url(redirect, id).parse()
    {
        h.insert("location", l);
    }
    r
}

async fn read(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let r = read_inner(&shared, &id, &headers).await;
    record(&shared, &method, &uri, &headers, 0, &r);
    r
}

async fn read_inner(shared: &Arc<Shared>, id: &str, headers: &HeaderMap) -> Response {
    let Some(asked) = etag_of(headers, "if-none-match") else {
        return shared.tx_reply(StatusCode::OK, id);
    };
    let timeout = header(headers, "request-timeout")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(30)
        .min(30);
    let mut changes = shared.changes.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let (version, hanging) = {
            let inner = shared.lock();
            let Some(tx) = inner.txs.get(id) else {
                return status(StatusCode::NOT_FOUND, "unknown transaction");
            };
            (tx.version, inner.behaviour.hanging_get)
        };
        if version != asked {
            return shared.tx_reply(StatusCode::OK, id);
        }
        if !hanging {
            break;
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => break,
        }
    }
    (StatusCode::NOT_MODIFIED, [("etag", asked.to_string())]).into_response()
}

async fn patch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = patch_inner(&shared, &id, &headers, &body);
    record(&shared, &method, &uri, &headers, body.len(), &r);
    r
}

fn patch_inner(shared: &Arc<Shared>, id: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    let Some(want) = etag_of(headers, "if-match") else {
        return status(StatusCode::BAD_REQUEST, "etags required for update");
    };
    let json = header(headers, "content-type") == Some("application/json");
    let patch: Value = if json {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return status(StatusCode::BAD_REQUEST, "invalid json"),
        }
    } else if body.is_empty() {
        json!({})
    } else {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "json or an empty heartbeat",
        );
    };
    let mut new_rcpts = false;
    {
        let mut inner = shared.lock();
        let Some(tx) = inner.txs.get_mut(id) else {
            return status(StatusCode::NOT_FOUND, "unknown transaction");
        };
        if tx.version != want {
            return status(StatusCode::PRECONDITION_FAILED, "update conflict");
        }
        let Some(obj) = patch.as_object() else {
            return status(StatusCode::BAD_REQUEST, "not an object");
        };
        for (k, v) in obj {
            match k.as_str() {
                "rcpt_to" => {
                    let offset = obj
                        .get("rcpt_to_list_offset")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if offset != tx.rcpts.len() as u64 {
                        return status(StatusCode::BAD_REQUEST, "rcpt_to_list_offset mismatch");
                    }
                    let Ok(list) = serde_json::from_value::<Vec<Mailbox>>(v.clone()) else {
                        return status(StatusCode::BAD_REQUEST, "rcpt_to");
                    };
                    tx.rcpts.extend(list.into_iter().map(|m| m.m));
                    new_rcpts = true;
                }
                "rcpt_to_list_offset" => {}
                "filter_output" => tx.filter_output = Some(v.clone()),
                _ => return status(StatusCode::BAD_REQUEST, "unexpected field"),
            }
        }
        tx.version += 1;
    }
    shared.changed();
    if new_rcpts {
        shared.respond_envelope(id);
    }
    shared.tx_reply(StatusCode::OK, id)
}

/// The stored state of a blob as reply headers.
fn stored_headers(len: u64, total: Option<u64>) -> Vec<(&'static str, String)> {
    match ContentRange::stored(len, total) {
        Some(range) => vec![("content-range", range)],
        None => vec![("x-blob-length", "0".to_owned())],
    }
}

async fn put_body(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = put_body_inner(&shared, &id, &headers, &body);
    record(&shared, &method, &uri, &headers, body.len(), &r);
    r
}

fn put_body_inner(shared: &Arc<Shared>, id: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    let range = match header(headers, "content-range") {
        Some(r) => match ContentRange::parse(r) {
            Ok(r) if r.len() == body.len() as u64 => Some(r),
            _ => return status(StatusCode::BAD_REQUEST, "bad range"),
        },
        None => None,
    };
    let finalize = match header(headers, "x-finalize-blob-length") {
        Some(n) => match n.parse::<u64>() {
            Ok(n) if body.is_empty() => Some(n),
            Ok(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "x-finalize-blob-length with non-empty PUT",
                );
            }
            Err(_) => return status(StatusCode::BAD_REQUEST, "invalid x-finalize-blob-length"),
        },
        None => None,
    };
    let reply = {
        let mut inner = shared.lock();
        let forget = inner.behaviour.forget_range_at;
        let forgot = inner.forgot_range;
        let Some(tx) = inner.txs.get_mut(id) else {
            return status(StatusCode::NOT_FOUND, "unknown transaction");
        };
        if tx.body_done {
            return status(StatusCode::CONFLICT, "body already complete");
        }
        let len = tx.body.len() as u64;
        match (range, finalize) {
            (Some(r), _) => {
                if r.first > len {
                    let h = stored_headers(len, tx.body_total);
                    return (
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        [(h[0].0, h[0].1.clone())],
                        "invalid range",
                    )
                        .into_response();
                }
                if Some(r.first) == forget && !forgot && r.first > 0 {
                    inner.forgot_range = true;
                    return (StatusCode::OK, axum::Json(json!({}))).into_response();
                }
                // A resend of what is stored: only the new octets.
                let skip = (len - r.first) as usize;
                if skip < body.len() {
                    tx.body.extend_from_slice(&body[skip..]);
                }
                if r.total.is_some() {
                    tx.body_total = r.total;
                }
            }
            (None, Some(total)) => {
                if total != len {
                    let h = stored_headers(len, tx.body_total);
                    return (
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        [(h[0].0, h[0].1.clone())],
                        "invalid range",
                    )
                        .into_response();
                }
                tx.body_total = Some(total);
            }
            (None, None) => {
                tx.body = body.to_vec();
                tx.body_total = Some(body.len() as u64);
            }
        }
        let len = tx.body.len() as u64;
        tx.body_done = tx.body_total == Some(len);
        tx.version += 1;
        let h = stored_headers(len, tx.body_total);
        (
            StatusCode::OK,
            [(h[0].0, h[0].1.clone())],
            axum::Json(json!({})),
        )
            .into_response()
    };
    shared.changed();
    shared.maybe_finish(id);
    reply
}

/// Every `{"create_id": id}` in a message-builder spec.
fn blob_ids(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![spec];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(id)) = o.get("create_id") {
                    out.push(id.clone());
                }
                stack.extend(o.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

async fn message_builder(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = message_builder_inner(&shared, &id, &headers, &body);
    record(&shared, &method, &uri, &headers, body.len(), &r);
    r
}

fn message_builder_inner(
    shared: &Arc<Shared>,
    id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let Ok(spec) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "invalid json");
    };
    {
        let mut inner = shared.lock();
        let Some(tx) = inner.txs.get_mut(id) else {
            return status(StatusCode::NOT_FOUND, "unknown transaction");
        };
        if etag_of(headers, "if-match") != Some(tx.version) {
            return status(StatusCode::PRECONDITION_FAILED, "update conflict");
        }
        tx.expected_blobs = blob_ids(&spec);
        tx.spec = Some(spec);
        tx.version += 1;
    }
    shared.changed();
    shared.tx_reply(StatusCode::OK, id)
}

async fn put_blob(
    State(shared): State<Arc<Shared>>,
    Path((id, blob)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = {
        let mut inner = shared.lock();
        match inner.txs.get_mut(&id) {
            Some(tx) if tx.expected_blobs.contains(&blob) => {
                tx.blobs.insert(blob, body.to_vec());
                tx.version += 1;
                (StatusCode::OK, axum::Json(json!({}))).into_response()
            }
            _ => status(StatusCode::NOT_FOUND, "unknown blob"),
        }
    };
    shared.changed();
    shared.maybe_finish(&id);
    record(&shared, &method, &uri, &headers, body.len(), &r);
    r
}

async fn cancel(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    {
        let mut inner = shared.lock();
        if let Some(tx) = inner.txs.get_mut(&id) {
            tx.cancelled = true;
            tx.version += 1;
        }
    }
    shared.changed();
    let r = StatusCode::OK.into_response();
    record(&shared, &method, &uri, &headers, 0, &r);
    r
}

fn redirect(shared: &Shared, code: StatusCode, rest: &str, uri: &Uri) -> Response {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let to = format!("{}/{rest}{query}", shared.base);
    (code, [("location", to)]).into_response()
}

async fn redirect_307(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = redirect(&shared, StatusCode::TEMPORARY_REDIRECT, &rest, &uri);
    record(&shared, &method, &uri, &headers, body.len(), &r);
    r
}

async fn redirect_308(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = redirect(&shared, StatusCode::PERMANENT_REDIRECT, &rest, &uri);
    record(&shared, &method, &uri, &headers, body.len(), &r);
    r
}
