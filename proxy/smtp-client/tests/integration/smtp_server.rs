//! A small scripted SMTP server for tests: replies are configurable per
//! command, everything received is recorded per connection, STARTTLS works
//! with a test certificate, and it can drop the connection in the middle of
//! DATA, instead of replying to a command, or while it waits for the next
//! command (an idle connection).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// A queued reply meaning "close the connection without replying".
pub const CLOSE: &str = "<close>";

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// What the server says. Replies are written as given plus CRLF, so a
/// multi-line reply is `"550-5.1.1 a\r\n550 5.1.1 b"`.
#[derive(Clone)]
pub struct Script {
    pub greeting: String,
    /// EHLO keywords after the greeting line.
    pub extensions: Vec<String>,
    /// Replaces the whole EHLO reply (e.g. to reject EHLO).
    pub ehlo_reply: Option<String>,
    /// Queued replies per verb (`MAIL`, `RCPT`, `DATA` for the 354, `.`
    /// for the end of data, `BDAT`, `STARTTLS`, `HELO`, `RSET`), used in
    /// order across connections; the default reply is used when the queue
    /// is empty. For `MAIL`, `RCPT`, `RSET` and `HELO`, [`CLOSE`] closes
    /// the connection instead of replying, and a `421` reply is followed by
    /// closing it.
    pub replies: HashMap<String, VecDeque<String>>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Close the connection once this many body bytes have arrived in DATA.
    pub drop_in_data_after: Option<usize>,
    /// Never answer this verb (the connection stays open).
    pub hang_on: Option<String>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            greeting: "220 mx.test ESMTP ready".into(),
            extensions: Vec::new(),
            ehlo_reply: None,
            replies: HashMap::new(),
            tls: None,
            drop_in_data_after: None,
            hang_on: None,
        }
    }
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ext(mut self, keyword: &str) -> Self {
        self.extensions.push(keyword.into());
        self
    }

    pub fn reply(mut self, verb: &str, reply: &str) -> Self {
        self.replies
            .entry(verb.to_ascii_uppercase())
            .or_default()
            .push_back(reply.into());
        self
    }

    pub fn greeting(mut self, g: &str) -> Self {
        self.greeting = g.into();
        self
    }

    pub fn ehlo_reply(mut self, r: &str) -> Self {
        self.ehlo_reply = Some(r.into());
        self
    }

    pub fn tls(mut self, cfg: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(cfg);
        self.extensions.push("STARTTLS".into());
        self
    }

    pub fn drop_in_data_after(mut self, n: usize) -> Self {
        self.drop_in_data_after = Some(n);
        self
    }

    pub fn hang_on(mut self, verb: &str) -> Self {
        self.hang_on = Some(verb.into());
        self
    }
}

/// What one connection received.
#[derive(Clone, Debug, Default)]
pub struct ConnLog {
    /// Command lines, without CRLF.
    pub commands: Vec<String>,
    /// For each command, the index of the socket read that delivered it:
    /// commands sharing an index arrived together (pipelined).
    pub reads: Vec<usize>,
    /// DATA payload exactly as on the wire, including the final `.\r\n`
    /// (the last message's, when the connection carried several).
    pub data: Vec<u8>,
    /// Every complete DATA payload, in order.
    pub messages: Vec<Vec<u8>>,
    /// BDAT payloads.
    pub bdat: Vec<Vec<u8>>,
    pub tls: bool,
    pub quit: bool,
    /// The connection is over (QUIT, client close, or server close).
    pub closed: bool,
    /// The server closed it while it waited for a command
    /// ([`SmtpServer::close_idle`]).
    pub closed_idle: bool,
}

impl ConnLog {
    /// How many commands with this verb arrived.
    pub fn count(&self, verb: &str) -> usize {
        self.verbs().iter().filter(|v| *v == verb).count()
    }

    pub fn verbs(&self) -> Vec<String> {
        self.commands
            .iter()
            .map(|c| {
                c.split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase()
            })
            .collect()
    }
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<ConnLog>>>,
    task: tokio::task::JoinHandle<()>,
    /// Bumped to make connections waiting for a command close.
    close_idle: watch::Sender<u64>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    pub async fn start(script: Script) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), script).await
    }

    pub async fn start_on(addr: SocketAddr, script: Script) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind test SMTP server");
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<ConnLog>>> = Arc::default();
        let shared = Arc::new(Mutex::new(script));
        let log2 = log.clone();
        let (close_idle, close_rx) = watch::channel(0);
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let idx = {
                    let mut l = log2.lock().unwrap();
                    l.push(ConnLog::default());
                    l.len() - 1
                };
                // Only close signals sent from now on concern it.
                let mut close_idle = close_rx.clone();
                close_idle.borrow_and_update();
                let conn = Conn {
                    io: Box::new(sock),
                    buf: Vec::new(),
                    read_count: 0,
                    script: shared.clone(),
                    log: log2.clone(),
                    idx,
                    close_idle,
                };
                let log3 = log2.clone();
                tokio::spawn(async move {
                    // The socket is closed when `serve` returns.
                    conn.serve().await;
                    log3.lock().unwrap()[idx].closed = true;
                });
            }
        });
        Self {
            addr,
            log,
            task,
            close_idle,
        }
    }

    pub fn conns(&self) -> Vec<ConnLog> {
        self.log.lock().unwrap().clone()
    }

    /// Closes (without a word, as a peer's idle timeout would) every open
    /// connection that is waiting for a command, and waits until they are
    /// closed. Returns how many it closed.
    pub async fn close_idle(&self) -> usize {
        let open: Vec<usize> = self
            .conns()
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.closed)
            .map(|(i, _)| i)
            .collect();
        self.close_idle.send_modify(|g| *g += 1);
        for _ in 0..200 {
            let conns = self.conns();
            if open.iter().all(|&i| conns[i].closed) {
                return open.iter().filter(|&&i| conns[i].closed_idle).count();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("connections {open:?} did not close: {:?}", self.conns());
    }

    /// Waits until connection `conn` is over, however it ended.
    pub async fn wait_closed(&self, conn: usize) -> ConnLog {
        for _ in 0..300 {
            if let Some(c) = self.conns().get(conn)
                && c.closed
            {
                return c.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("connection {conn} never closed: {:?}", self.conns());
    }

    /// Waits until `n` connections have sent QUIT or gone (for checks made
    /// after the client's background QUIT).
    pub async fn wait_quit(&self, conn: usize) -> ConnLog {
        for _ in 0..200 {
            if let Some(c) = self.conns().get(conn)
                && c.quit
            {
                return c.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("connection {conn} never sent QUIT: {:?}", self.conns());
    }
}

struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    read_count: usize,
    script: Arc<Mutex<Script>>,
    log: Arc<Mutex<Vec<ConnLog>>>,
    idx: usize,
    close_idle: watch::Receiver<u64>,
}

enum Next {
    Continue,
    Close,
}

impl Conn {
    fn with_log(&self, f: impl FnOnce(&mut ConnLog)) {
        f(&mut self.log.lock().unwrap()[self.idx]);
    }

    fn reply_for(&self, verb: &str, default: &str) -> String {
        let mut s = self.script.lock().unwrap();
        s.replies
            .get_mut(verb)
            .and_then(|q| q.pop_front())
            .unwrap_or_else(|| default.to_owned())
    }

    async fn send(&mut self, reply: &str) -> std::io::Result<()> {
        self.io.write_all(format!("{reply}\r\n").as_bytes()).await?;
        self.io.flush().await
    }

    /// Reads more input; false on EOF or error.
    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 8192];
        match self.io.read(&mut tmp).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                self.read_count += 1;
                true
            }
        }
    }

    /// Like [`Conn::fill`] while waiting for a command: with nothing
    /// pending, [`SmtpServer::close_idle`] ends the connection.
    async fn fill_or_close_idle(&mut self) -> bool {
        if !self.buf.is_empty() {
            return self.fill().await;
        }
        let mut close = self.close_idle.clone();
        tokio::select! {
            more = self.fill() => more,
            _ = close.changed() => {
                self.with_log(|l| l.closed_idle = true);
                false
            }
        }
    }

    /// Replies to `verb` from the script; see [`Script::replies`].
    async fn answer(&mut self, verb: &str, default: &str) -> std::io::Result<Next> {
        let r = self.reply_for(verb, default);
        if r == CLOSE {
            return Ok(Next::Close);
        }
        self.send(&r).await?;
        Ok(if r.starts_with("421") {
            Next::Close
        } else {
            Next::Continue
        })
    }

    async fn serve(mut self) {
        let greeting = self.script.lock().unwrap().greeting.clone();
        if self.send(&greeting).await.is_err() {
            return;
        }
        loop {
            let line = loop {
                if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                    break String::from_utf8_lossy(&line[..pos]).into_owned();
                }
                if !self.fill_or_close_idle().await {
                    return;
                }
            };
            let read = self.read_count;
            self.with_log(|l| {
                l.commands.push(line.clone());
                l.reads.push(read);
            });
            match self.command(&line).await {
                Ok(Next::Continue) => {}
                Ok(Next::Close) | Err(_) => return,
            }
        }
    }

    async fn command(&mut self, line: &str) -> std::io::Result<Next> {
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let hang = self.script.lock().unwrap().hang_on.clone();
        if hang.as_deref() == Some(verb.as_str()) {
            // Swallow input until the client gives up.
            while self.fill().await {}
            return Ok(Next::Close);
        }
        match verb.as_str() {
            "EHLO" => {
                let (custom, exts) = {
                    let s = self.script.lock().unwrap();
                    (s.ehlo_reply.clone(), s.extensions.clone())
                };
                let reply = custom.unwrap_or_else(|| {
                    let mut lines = vec!["mx.test greets you".to_owned()];
                    lines.extend(exts);
                    let n = lines.len();
                    lines
                        .iter()
                        .enumerate()
                        .map(|(i, l)| format!("250{}{l}", if i + 1 == n { ' ' } else { '-' }))
                        .collect::<Vec<_>>()
                        .join("\r\n")
                });
                self.send(&reply).await?;
            }
            "HELO" => return self.answer("HELO", "250 mx.test").await,
            "STARTTLS" => {
                let r = self.reply_for("STARTTLS", "220 2.0.0 go ahead");
                self.send(&r).await?;
                if !r.starts_with("220") {
                    return Ok(Next::Continue);
                }
                let cfg = self.script.lock().unwrap().tls.clone().expect("TLS config");
                assert!(self.buf.is_empty(), "client pipelined after STARTTLS");
                let io = std::mem::replace(&mut self.io, Box::new(tokio::io::empty()));
                match TlsAcceptor::from(cfg).accept(io).await {
                    Ok(tls) => self.io = Box::new(tls),
                    Err(_) => return Ok(Next::Close),
                }
                self.with_log(|l| l.tls = true);
            }
            "DATA" => {
                let r = self.reply_for("DATA", "354 go ahead");
                self.send(&r).await?;
                if r.starts_with("354") {
                    return self.receive_data().await;
                }
            }
            "BDAT" => return self.receive_bdat(line).await,
            "QUIT" => {
                self.with_log(|l| l.quit = true);
                let _ = self.send("221 2.0.0 bye").await;
                return Ok(Next::Close);
            }
            "MAIL" => return self.answer("MAIL", "250 2.1.0 sender ok").await,
            "RCPT" => return self.answer("RCPT", "250 2.1.5 recipient ok").await,
            "RSET" => return self.answer("RSET", "250 2.0.0 ok").await,
            "NOOP" => self.send("250 2.0.0 ok").await?,
            _ => self.send("500 5.5.2 unknown command").await?,
        }
        Ok(Next::Continue)
    }

    async fn receive_data(&mut self) -> std::io::Result<Next> {
        let limit = self.script.lock().unwrap().drop_in_data_after;
        // The CRLF ending the DATA line counts as the line break before a
        // terminator at the very start.
        let mut data = b"\r\n".to_vec();
        let mut searched = 0;
        loop {
            data.append(&mut self.buf);
            if let Some(n) = limit
                && data.len() - 2 >= n
            {
                let got = data[2..].to_vec();
                self.with_log(|l| l.data = got);
                return Ok(Next::Close);
            }
            // Search only the new bytes (plus an overlap), so big bodies
            // stay linear.
            if let Some(pos) = data[searched..]
                .windows(5)
                .position(|w| w == b"\r\n.\r\n")
                .map(|p| p + searched)
            {
                self.buf = data.split_off(pos + 5);
                let got = data[2..].to_vec();
                self.with_log(|l| {
                    l.messages.push(got.clone());
                    l.data = got;
                });
                let r = self.reply_for(".", "250 2.0.0 queued as T1");
                self.send(&r).await?;
                return Ok(Next::Continue);
            }
            searched = data.len().saturating_sub(4);
            if !self.fill().await {
                let got = data[2..].to_vec();
                self.with_log(|l| l.data = got);
                return Ok(Next::Close);
            }
        }
    }

    async fn receive_bdat(&mut self, line: &str) -> std::io::Result<Next> {
        let mut words = line.split_whitespace().skip(1);
        let len: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        while self.buf.len() < len {
            if !self.fill().await {
                return Ok(Next::Close);
            }
        }
        let chunk: Vec<u8> = self.buf.drain(..len).collect();
        self.with_log(|l| l.bdat.push(chunk));
        let r = self.reply_for("BDAT", &format!("250 2.0.0 {len} octets received"));
        self.send(&r).await?;
        Ok(Next::Continue)
    }
}
