//! Opening an SMTP session on one upstream host: connect, greeting,
//! EHLO (HELO fallback), STARTTLS per [`TlsMode`] and EHLO again.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use koukan_chain::transaction::{Response, TlsInfo};
use rustls::pki_types::ServerName;
use smtp_proto::{EXT_START_TLS, EhloResponse};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::config::{ClientConfig, TlsMode};
use crate::connection::{ConnError, Connection, Reply, Step, quit_in_background};

/// One address to try, with the name it was found under (for TLS SNI and
/// certificate checks, and for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub name: String,
    pub addr: SocketAddr,
}

impl Target {
    /// `name[ip]:port`, or just `ip:port` when the name is the address.
    pub fn label(&self) -> String {
        if self.name.parse::<std::net::IpAddr>().ok() == Some(self.addr.ip()) {
            self.addr.to_string()
        } else {
            format!("{}[{}]:{}", self.name, self.addr.ip(), self.addr.port())
        }
    }
}

/// What the peer announced in its EHLO reply.
#[derive(Clone, Debug, Default)]
pub(crate) struct Extensions {
    /// smtp-proto `EXT_*` bits.
    caps: u32,
    /// SIZE limit; 0 when absent or unlimited.
    pub size: usize,
    /// Every EHLO keyword, upper-cased, including ones smtp-proto does not
    /// know (used to decide whether an unknown MAIL/RCPT parameter may be
    /// passed on).
    keywords: HashSet<String>,
}

impl Extensions {
    pub(crate) fn from_ehlo(reply: &Reply) -> Self {
        let (caps, size) = match EhloResponse::parse(&mut reply.raw.iter()) {
            Ok(e) => (e.capabilities, e.size),
            Err(e) => {
                // A malformed extension line should not make the host
                // unusable; we just assume no extensions we'd rely on.
                tracing::warn!("unparsable EHLO reply ({e:?}), assuming no extensions");
                (0, 0)
            }
        };
        let keywords = reply
            .text()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(|k| k.to_ascii_uppercase())
            .collect();
        Self {
            caps,
            size,
            keywords,
        }
    }

    pub fn has(&self, ext: u32) -> bool {
        self.caps & ext != 0
    }

    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.keywords.contains(&keyword.to_ascii_uppercase())
    }
}

/// An open session, ready for MAIL.
pub(crate) struct Session {
    pub conn: Connection,
    pub ext: Extensions,
    pub tls: Option<TlsInfo>,
    /// Transactions (MAIL commands) started on this session so far.
    pub transactions: usize,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect: timeout")]
    ConnectTimeout,
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("greeting: {0}")]
    Greeting(Response),
    #[error("EHLO: {0}")]
    Ehlo(Response),
    #[error("HELO: {0}")]
    Helo(Response),
    #[error("STARTTLS required but not offered")]
    TlsNotOffered,
    #[error("STARTTLS: {0}")]
    StartTlsRejected(Response),
    #[error("data received before the TLS handshake (possible STARTTLS injection)")]
    TlsInjection,
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    #[error("TLS handshake: timeout")]
    HandshakeTimeout,
}

impl SetupError {
    /// The reply for the client when this was the last host tried. Always
    /// temporary: another attempt later may reach a working host.
    pub fn response(&self, peer: &str) -> Response {
        let status = match self {
            // X.7.4: security features not supported.
            SetupError::TlsNotOffered => "4.7.4",
            // X.7.5: cryptographic failure.
            SetupError::StartTlsRejected(_)
            | SetupError::TlsInjection
            | SetupError::Handshake(_)
            | SetupError::HandshakeTimeout => "4.7.5",
            _ => "4.4.1",
        };
        Response::new(
            451,
            format!("{status} no upstream host reachable: {peer}: {self}"),
        )
    }
}

/// Connects to `target` and runs the session up to the point where MAIL
/// can be sent.
pub(crate) async fn open(
    cfg: &ClientConfig,
    tls: &Arc<rustls::ClientConfig>,
    target: &Target,
) -> Result<Session, SetupError> {
    let tcp = match timeout(cfg.connect_timeout, TcpStream::connect(target.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SetupError::Connect(e)),
        Err(_) => return Err(SetupError::ConnectTimeout),
    };
    // Commands are small and latency-bound.
    let _ = tcp.set_nodelay(true);
    let mut conn = Connection::new(Box::new(tcp), target.label());

    let greeting = conn
        .read_reply(Step::new("waiting for greeting", cfg.greeting_timeout))
        .await?;
    if greeting.code != 220 {
        return Err(give_up(conn, SetupError::Greeting(greeting.response())));
    }
    let ext = match hello(cfg, &mut conn).await {
        Ok(ext) => ext,
        Err(e) => return Err(give_up(conn, e)),
    };

    let offered = ext.has(EXT_START_TLS);
    let want_tls = match cfg.tls {
        TlsMode::Disabled => false,
        TlsMode::Opportunistic => offered,
        TlsMode::Required if !offered => {
            return Err(give_up(conn, SetupError::TlsNotOffered));
        }
        TlsMode::Required => true,
    };
    if !want_tls {
        return Ok(Session {
            conn,
            ext,
            tls: None,
            transactions: 0,
        });
    }

    let (mut conn, info) = starttls(cfg, tls, conn, target).await?;
    // RFC 3207 4.2: forget everything learned before TLS and ask again.
    let ext = match hello(cfg, &mut conn).await {
        Ok(ext) => ext,
        Err(e) => return Err(give_up(conn, e)),
    };
    Ok(Session {
        conn,
        ext,
        tls: Some(info),
        transactions: 0,
    })
}

/// Ends a session we are abandoning politely, and passes the error on.
fn give_up(conn: Connection, err: SetupError) -> SetupError {
    quit_in_background(conn);
    err
}

/// EHLO, or HELO if the peer rejects EHLO permanently (RFC 5321 3.2).
async fn hello(cfg: &ClientConfig, conn: &mut Connection) -> Result<Extensions, SetupError> {
    let step = Step::new("waiting for reply to EHLO", cfg.command_timeout);
    let reply = conn
        .command(&format!("EHLO {}", cfg.ehlo_hostname), step)
        .await?;
    match reply.class() {
        2 => Ok(Extensions::from_ehlo(&reply)),
        5 => {
            let step = Step::new("waiting for reply to HELO", cfg.command_timeout);
            let reply = conn
                .command(&format!("HELO {}", cfg.ehlo_hostname), step)
                .await?;
            if reply.class() == 2 {
                Ok(Extensions::default())
            } else {
                Err(SetupError::Helo(reply.response()))
            }
        }
        _ => Err(SetupError::Ehlo(reply.response())),
    }
}

async fn starttls(
    cfg: &ClientConfig,
    tls: &Arc<rustls::ClientConfig>,
    mut conn: Connection,
    target: &Target,
) -> Result<(Connection, TlsInfo), SetupError> {
    let step = Step::new("waiting for reply to STARTTLS", cfg.command_timeout);
    let reply = conn.command("STARTTLS", step).await?;
    if reply.code != 220 {
        return Err(give_up(
            conn,
            SetupError::StartTlsRejected(reply.response()),
        ));
    }
    // Bytes already buffered were sent in plaintext by whoever is on the
    // wire; treating them as post-handshake replies is the classic STARTTLS
    // command injection (CVE-2011-0411 family).
    if conn.has_buffered_input() {
        return Err(SetupError::TlsInjection);
    }
    let peer = conn.peer.clone();
    let connector = TlsConnector::from(tls.clone());
    let handshake = connector.connect(server_name(target), conn.into_io());
    let stream = match timeout(cfg.connect_timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SetupError::Handshake(e)),
        Err(_) => return Err(SetupError::HandshakeTimeout),
    };
    let (_, session) = stream.get_ref();
    let info = TlsInfo {
        version: session
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        cipher: session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
    };
    tracing::debug!(%peer, version = %info.version, cipher = %info.cipher, "STARTTLS done");
    Ok((Connection::new(Box::new(stream), peer), info))
}

/// SNI and certificate name: the host name we looked up (MX exchange or
/// configured name), or the IP address when there is no usable name.
fn server_name(target: &Target) -> ServerName<'static> {
    ServerName::try_from(target.name.trim_end_matches('.').to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(target.addr.ip().into()))
}
