//! Test fixtures: a recording chain, a listener on 127.0.0.1 and a small
//! SMTP client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use koukan_chain::{
    BoxTxService, Ingress, Mailbox, Response, SessionInfo, TxContext, TxUpdate, UpdateResponse,
    boxed,
};
use koukan_smtp_server::{
    Listener, ListenerHandle, Secrets, SessionConfig, SmtpMetrics, TransactionFactory,
    hash_secret_with_params,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the chain saw of one update (body data kept only when asked, so
/// big-message tests stay small).
#[derive(Clone, Debug)]
pub struct Seen {
    pub tx: usize,
    pub mail_from: Option<Mailbox>,
    pub rcpts: Vec<String>,
    pub body: Option<(Bytes, usize, bool)>,
}

type Responder = dyn Fn(&TxUpdate) -> UpdateResponse + Send + Sync;

/// Answers 250 to MAIL and RCPT and `250 2.0.0 queued` at the end of data.
pub fn accept_all(u: &TxUpdate) -> UpdateResponse {
    UpdateResponse {
        mail: u
            .mail_from
            .as_ref()
            .map(|_| Response::new(250, "2.1.0 sender ok")),
        rcpts: u
            .rcpt_to
            .iter()
            .map(|_| Response::new(250, "2.1.5 recipient ok"))
            .collect(),
        data: u
            .body
            .as_ref()
            .filter(|b| b.last)
            .map(|_| Response::new(250, "2.0.0 queued")),
    }
}

#[derive(Default)]
pub struct Record {
    pub seen: Mutex<Vec<Seen>>,
    pub sessions: Mutex<Vec<Arc<SessionInfo>>>,
    pub dropped: AtomicUsize,
}

pub struct TestFactory {
    pub record: Arc<Record>,
    responder: Arc<Responder>,
    keep_bodies: bool,
    next_id: AtomicUsize,
}

impl TestFactory {
    pub fn new() -> Self {
        Self::with(accept_all)
    }

    pub fn with(f: impl Fn(&TxUpdate) -> UpdateResponse + Send + Sync + 'static) -> Self {
        Self {
            record: Arc::default(),
            responder: Arc::new(f),
            keep_bodies: true,
            next_id: AtomicUsize::new(0),
        }
    }

    pub fn without_bodies(mut self) -> Self {
        self.keep_bodies = false;
        self
    }
}

impl TransactionFactory for TestFactory {
    fn new_transaction(&self, ingress: Ingress) -> (Arc<TxContext>, BoxTxService) {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        let Ingress::Smtp(session) = &ingress else {
            panic!("the SMTP server opens SMTP transactions: {ingress:?}");
        };
        self.record.sessions.lock().unwrap().push(session.clone());
        let ctx = TxContext::new(format!("tx{n}"), ingress, "", "");
        let svc = TestService {
            tx: n,
            record: self.record.clone(),
            responder: self.responder.clone(),
            keep_bodies: self.keep_bodies,
        };
        (Arc::new(ctx), boxed(svc))
    }
}

struct TestService {
    tx: usize,
    record: Arc<Record>,
    responder: Arc<Responder>,
    keep_bodies: bool,
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.record.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl tower::Service<TxUpdate> for TestService {
    type Response = UpdateResponse;
    type Error = Infallible;
    type Future = Ready<Result<UpdateResponse, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, u: TxUpdate) -> Self::Future {
        let resp = (self.responder)(&u);
        self.record.seen.lock().unwrap().push(Seen {
            tx: self.tx,
            mail_from: u.mail_from.clone(),
            rcpts: u
                .rcpt_to
                .iter()
                .map(|r| r.mailbox.address.clone())
                .collect(),
            body: u.body.as_ref().map(|b| {
                let data = if self.keep_bodies {
                    b.data.clone()
                } else {
                    Bytes::new()
                };
                (data, b.data.len(), b.last)
            }),
        });
        ready(Ok(resp))
    }
}

impl Record {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Concatenated body of transaction `tx`.
    pub fn body(&self, tx: usize) -> Vec<u8> {
        self.seen()
            .iter()
            .filter(|s| s.tx == tx)
            .filter_map(|s| s.body.as_ref())
            .flat_map(|(d, _, _)| d.to_vec())
            .collect()
    }
}

pub fn config() -> SessionConfig {
    let mut cfg = SessionConfig::new("test", "mx.test.example");
    cfg.limits.command_timeout = Duration::from_secs(10);
    cfg.limits.data_block_timeout = Duration::from_secs(10);
    cfg.limits.drain_timeout = Duration::from_secs(5);
    cfg
}

/// Cheap Argon2 hashes: these tests check the protocol, not the cost.
pub fn secrets() -> Arc<Secrets> {
    let params = argon2::Params::new(64, 1, 1, None).unwrap();
    let users = HashMap::from([(
        "alice".to_owned(),
        hash_secret_with_params("wonderland", params),
    )]);
    Arc::new(Secrets::from_map(users).unwrap())
}

pub struct Tls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

pub fn tls() -> Tls {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let server = koukan_smtp_server::tls_config_from_pem(
        ck.cert.pem().as_bytes(),
        ck.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Tls {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub record: Arc<Record>,
    pub metrics: Arc<SmtpMetrics>,
    pub shutdown: watch::Sender<bool>,
    pub cfg: watch::Sender<Arc<SessionConfig>>,
    pub handle: ListenerHandle,
    pub task: JoinHandle<()>,
}

pub async fn start(cfg: SessionConfig, factory: TestFactory) -> Server {
    let record = factory.record.clone();
    start_with_factory(cfg, Arc::new(factory), record).await
}

/// Like [`start`] with any factory; `record` is what `Server::record`
/// shows.
pub async fn start_with_factory(
    cfg: SessionConfig,
    factory: Arc<dyn TransactionFactory>,
    record: Arc<Record>,
) -> Server {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let metrics = Arc::new(SmtpMetrics::new());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (cfg_tx, cfg_rx) = watch::channel(Arc::new(cfg));
    let (listener, handle) = Listener::new(tcp, cfg_rx, factory, shutdown_rx, metrics.clone());
    let task = tokio::spawn(listener.run());
    Server {
        addr,
        record,
        metrics,
        shutdown,
        cfg: cfg_tx,
        handle,
        task,
    }
}

impl Server {
    pub async fn connect(&self) -> Client<TcpStream> {
        Client::new(TcpStream::connect(self.addr).await.unwrap())
    }

    /// Connects from a loopback address of our choosing (127.0.0.0/8 is
    /// all loopback), e.g. to play distinct clients.
    pub async fn connect_from(&self, ip: &str) -> Client<TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(ip.parse().unwrap(), 0))
            .unwrap();
        Client::new(socket.connect(self.addr).await.unwrap())
    }

    /// Connects and reads the greeting.
    pub async fn session(&self) -> Client<TcpStream> {
        let mut c = self.connect().await;
        assert_eq!(c.reply().await, "220 mx.test.example ESMTP koukan");
        c
    }

    pub async fn tls_connect(
        &self,
        tls: &Tls,
    ) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Client::new(connector.connect(name, tcp).await.unwrap())
    }

    pub fn metrics_text(&self) -> String {
        let mut reg = prometheus_client::registry::Registry::default();
        self.metrics.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }
}

/// A line-level SMTP client. Replies are returned as their lines joined by
/// `\n` (without CRLF), e.g. `"250 2.0.0 OK"`.
pub struct Client<S> {
    pub io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, data: impl AsRef<[u8]>) {
        tokio::time::timeout(IO_TIMEOUT, self.io.write_all(data.as_ref()))
            .await
            .expect("write timed out")
            .unwrap();
    }

    /// Reads one line (without CRLF); `None` at end of stream.
    pub async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let s = String::from_utf8(line).unwrap();
                return Some(s.trim_end_matches(['\r', '\n']).to_owned());
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(IO_TIMEOUT, self.io.read(&mut chunk))
                .await
                .expect("read timed out")
                .unwrap_or(0);
            if n == 0 {
                assert!(self.buf.is_empty(), "partial line at EOF: {:?}", self.buf);
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let line = self
                .line()
                .await
                .expect("connection closed, expected a reply");
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n")).await;
        self.reply().await
    }

    /// The server closed the connection (after everything already read).
    pub async fn expect_eof(&mut self) {
        assert_eq!(self.line().await, None);
    }

    pub async fn ehlo(&mut self) -> String {
        self.cmd("EHLO client.example").await
    }

    pub fn into_inner(self) -> S {
        assert!(self.buf.is_empty(), "unread data: {:?}", self.buf);
        self.io
    }
}

/// MAIL from `from` and one RCPT, both accepted (by [`accept_all`]).
pub async fn envelope<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>, from: &str) {
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{from}>")).await,
        "250 2.1.0 sender ok"
    );
    assert_eq!(
        c.cmd("RCPT TO:<b@example.net>").await,
        "250 2.1.5 recipient ok"
    );
}

/// The EHLO reply of a plain listener without AUTH.
pub fn ehlo_plain(size: u64) -> String {
    [
        "250-mx.test.example".to_owned(),
        "250-PIPELINING".to_owned(),
        "250-8BITMIME".to_owned(),
        "250-SMTPUTF8".to_owned(),
        format!("250-SIZE {size}"),
        "250-ENHANCEDSTATUSCODES".to_owned(),
        "250-CHUNKING".to_owned(),
        "250 HELP".to_owned(),
    ]
    .join("\n")
}

#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process-wide log capture. A scoped subscriber (`set_default`) is
/// not enough here: tests running in parallel threads without a subscriber
/// make tracing cache "no interest" for the summary's callsite, and the
/// event is then dropped everywhere. Tests sharing this capture tell their
/// lines apart by their own addresses.
///
/// Captures the `koukan::tx` summary lines, errors (caught panics), the
/// `session` and `tx` spans around them, and what test chains log under
/// the `koukan_test` target.
pub fn captured_logs() -> Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("koukan::tx=info,koukan::session=info,koukan_test=info,error")
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        logs
    })
    .clone()
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
