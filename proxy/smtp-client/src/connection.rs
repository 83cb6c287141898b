//! One upstream socket: timed writes and reply framing.
//!
//! Replies are framed by smtp-proto's `ResponseReceiver`, which decides
//! where a (possibly multi-line) reply ends and validates its syntax. Its
//! parsed form strips the enhanced status code from every line, so the
//! reply text we hand back is rebuilt from the raw bytes the receiver
//! consumed: that keeps the upstream's text byte for byte (minus the
//! `NNN-` / `NNN ` prefixes), as the chain's `Response` expects.

use std::io;
use std::time::Duration;

use futures::FutureExt;
use koukan_chain::transaction::Response;
use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tracing::Instrument;

/// Anything we can speak SMTP over: a TCP stream before STARTTLS, a TLS
/// stream after it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("timeout {0}")]
    Timeout(&'static str),
    #[error("connection closed by peer while {0}")]
    Closed(&'static str),
    #[error("{0}: {1}")]
    Io(&'static str, #[source] io::Error),
    #[error("malformed reply while {0}: {1}")]
    Protocol(&'static str, String),
}

/// A complete reply: its code and the raw lines it was framed from.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub code: u16,
    pub raw: Vec<u8>,
}

impl Reply {
    /// The reply text: each line without its `NNN-`/`NNN ` prefix and line
    /// ending, lines joined with `\n`.
    pub fn text(&self) -> String {
        let raw = String::from_utf8_lossy(&self.raw);
        let lines: Vec<&str> = raw
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter(|l| !l.is_empty())
            .map(|l| l.get(4..).unwrap_or(""))
            .collect();
        lines.join("\n")
    }

    pub fn response(&self) -> Response {
        Response::new(self.code, self.text())
    }

    pub fn class(&self) -> u16 {
        self.code / 100
    }
}

/// How long reading or writing may take, and what it is for (in errors).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    pub what: &'static str,
    pub limit: Duration,
}

impl Step {
    pub fn new(what: &'static str, limit: Duration) -> Self {
        Self { what, limit }
    }
}

pub(crate) struct Connection {
    io: Box<dyn Io>,
    /// Received bytes not yet returned as part of a reply.
    rbuf: Vec<u8>,
    /// How much of `rbuf` the receiver has already consumed for the reply in
    /// progress (the bytes stay in `rbuf` so the raw reply can be cut out).
    fed: usize,
    receiver: ResponseReceiver,
    /// `name[ip]:port`, for messages.
    pub peer: String,
}

const READ_CHUNK: usize = 4096;

impl Connection {
    pub fn new(io: Box<dyn Io>, peer: String) -> Self {
        Self {
            io,
            rbuf: Vec::new(),
            fed: 0,
            receiver: ResponseReceiver::default(),
            peer,
        }
    }

    /// Whether the peer sent bytes we have not consumed as replies yet.
    pub fn has_buffered_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Whether an idle connection still looks usable: nothing unread and
    /// nothing arriving. A peer that closed it (EOF, reset) or said
    /// something unsolicited (typically a 421 before closing) fails. Never
    /// waits: the socket is polled once.
    pub fn idle_probe(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        // Pending means open and silent; any completion (data, EOF, error)
        // means the session is no longer in the state we left it in.
        self.io.read(&mut byte).now_or_never().is_none()
    }

    /// The raw stream, for the STARTTLS handshake. Callers must check
    /// [`Connection::has_buffered_input`] first: anything buffered was sent
    /// in plaintext and must not be read as if it came over TLS.
    pub fn into_io(self) -> Box<dyn Io> {
        self.io
    }

    pub async fn write(&mut self, data: &[u8], step: Step) -> Result<(), ConnError> {
        let io = &mut self.io;
        let fut = async {
            io.write_all(data).await?;
            io.flush().await
        };
        match timeout(step.limit, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConnError::Io(step.what, e)),
            Err(_) => Err(ConnError::Timeout(step.what)),
        }
    }

    /// Reads one complete reply; `step.limit` bounds the whole reply.
    pub async fn read_reply(&mut self, step: Step) -> Result<Reply, ConnError> {
        match timeout(step.limit, self.read_reply_inner(step.what)).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::Timeout(step.what)),
        }
    }

    async fn read_reply_inner(&mut self, what: &'static str) -> Result<Reply, ConnError> {
        loop {
            if self.fed < self.rbuf.len() {
                let pending = &self.rbuf[self.fed..];
                let mut iter = pending.iter();
                let parsed = self.receiver.parse(&mut iter);
                let consumed = pending.len() - iter.len();
                match parsed {
                    Ok(resp) => {
                        let end = self.fed + consumed;
                        let raw: Vec<u8> = self.rbuf.drain(..end).collect();
                        self.fed = 0;
                        self.receiver.reset();
                        return Ok(Reply {
                            code: resp.code,
                            raw,
                        });
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => self.fed += consumed,
                    Err(e) => {
                        return Err(ConnError::Protocol(what, format!("{e:?}")));
                    }
                }
            }
            let old = self.rbuf.len();
            self.rbuf.resize(old + READ_CHUNK, 0);
            let n = self.io.read(&mut self.rbuf[old..]).await;
            self.rbuf.truncate(old + *n.as_ref().unwrap_or(&0));
            match n {
                Ok(0) => return Err(ConnError::Closed(what)),
                Ok(_) => {}
                Err(e) => return Err(ConnError::Io(what, e)),
            }
        }
    }

    /// Writes `cmd` (without CRLF) and reads its reply.
    pub async fn command(&mut self, cmd: &str, step: Step) -> Result<Reply, ConnError> {
        let mut line = Vec::with_capacity(cmd.len() + 2);
        line.extend_from_slice(cmd.as_bytes());
        line.extend_from_slice(b"\r\n");
        self.write(&line, step).await?;
        self.read_reply(step).await
    }

    /// Best-effort QUIT: the transaction is already decided, so errors are
    /// ignored and the socket is closed when `self` is dropped.
    pub async fn quit(mut self) {
        let step = Step::new("waiting for reply to QUIT", Duration::from_secs(10));
        if let Err(e) = self.command("QUIT", step).await {
            tracing::debug!(peer = %self.peer, "QUIT: {e}");
        }
        let _ = timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }
}

/// Sends QUIT in the background (needs a tokio runtime, which every caller
/// of the client runs in), in the caller's span: a QUIT that fails is
/// logged with the transaction that ended the session.
pub(crate) fn quit_in_background(conn: Connection) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(conn.quit().in_current_span());
        }
        Err(_) => drop(conn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_with(input: &[u8]) -> Connection {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let input = input.to_vec();
        tokio::spawn(async move {
            // Dribble the input a few bytes at a time so replies straddle
            // reads.
            for piece in input.chunks(3) {
                server.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        Connection::new(Box::new(client), "test".into())
    }

    fn step() -> Step {
        Step::new("in test", Duration::from_secs(5))
    }

    #[tokio::test]
    async fn frames_consecutive_and_multiline_replies() {
        let mut c = conn_with(
            b"250 2.1.0 ok\r\n550-5.1.1 no such user\r\n550-5.1.1 really\r\n550 5.1.1 bye\r\n421 closing\r\n",
        );
        let r = c.read_reply(step()).await.unwrap();
        assert_eq!(r.response(), Response::new(250, "2.1.0 ok"));
        let r = c.read_reply(step()).await.unwrap();
        assert_eq!(
            r.response(),
            Response::new(550, "5.1.1 no such user\n5.1.1 really\n5.1.1 bye")
        );
        let r = c.read_reply(step()).await.unwrap();
        assert_eq!(r.response(), Response::new(421, "closing"));
        let e = c.read_reply(step()).await.unwrap_err();
        assert!(matches!(e, ConnError::Closed(_)), "{e}");
    }

    #[tokio::test]
    async fn rejects_garbage() {
        let mut c = conn_with(b"hello there\r\n");
        let e = c.read_reply(step()).await.unwrap_err();
        assert!(matches!(e, ConnError::Protocol(..)), "{e}");
    }

    #[tokio::test]
    async fn times_out() {
        let (client, _server) = tokio::io::duplex(1024);
        let mut c = Connection::new(Box::new(client), "test".into());
        let e = c
            .read_reply(Step::new("waiting", Duration::from_millis(20)))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "timeout waiting");
    }
}
