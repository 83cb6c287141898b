//! The client connection: a plain or TLS stream with a bounded read buffer
//! and a reply buffer.
//!
//! Reading is line-oriented for commands and raw for message data, both
//! from the same buffer so bytes a client pipelined behind a command (BDAT
//! chunks, further commands) are never lost. The read buffer has a fixed
//! size, so no client input can make it grow.
//!
//! Replies are queued and written only when the session is about to wait
//! for the client (`flush` before every socket read): a pipelined batch gets
//! all its replies in one write, and a client waiting for a reply always
//! gets it before we block.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use koukan_chain::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::reply::Reply;

/// Smallest read buffer; grown to fit `max_line_length` when that is larger.
const MIN_READ_BUF: usize = 16 * 1024;

/// A connection that is plain or (after STARTTLS / implicit TLS) encrypted.
pub(crate) enum Stream<IO> {
    Plain(IO),
    Tls(Box<TlsStream<IO>>),
    /// Transient state while the plain stream is handed to the TLS
    /// acceptor; also what is left if the handshake fails.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// What [`Conn::read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineRead {
    /// A complete line (with its LF) is in the caller's buffer.
    Line,
    /// A line longer than the limit was skipped up to and including its LF.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Eof,
}

/// Why the TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Io(#[from] io::Error),
}

pub(crate) struct Conn<IO> {
    stream: Stream<IO>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Inside a command line that already exceeded the limit: its bytes are
    /// dropped until the next LF.
    discarding: bool,
    max_line: usize,
    out: Vec<u8>,
    write_timeout: Duration,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Conn<IO> {
    pub fn new(stream: Stream<IO>, max_line: usize, write_timeout: Duration) -> Self {
        // Room for the longest allowed line plus CRLF, so a legal line never
        // looks over-long just because the buffer is too small.
        let cap = MIN_READ_BUF.max(max_line.saturating_add(2));
        Self {
            stream,
            buf: vec![0; cap].into_boxed_slice(),
            start: 0,
            end: 0,
            discarding: false,
            max_line,
            out: Vec::with_capacity(512),
            write_timeout,
        }
    }

    pub fn queue(&mut self, resp: &Response) {
        resp.write_wire(&mut self.out);
    }

    pub fn queue_reply(&mut self, reply: Reply) {
        self.queue(&reply.response());
    }

    /// Raw text (multi-line EHLO reply, SASL challenges).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Writes queued replies. A client that stops reading cannot hold the
    /// session forever: the write is bounded by the command timeout.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
        self.out.clear();
        Ok(())
    }

    /// Flushes and closes the write side (best effort: the session is
    /// ending anyway).
    pub async fn close(&mut self) {
        if self.flush().await.is_ok() {
            let _ = tokio::time::timeout(self.write_timeout, self.stream.shutdown()).await;
        }
    }

    /// Reads the next command line into `line` (including its line end).
    /// Cancel-safe: all progress lives in `self`, so a caller may race this
    /// against a timeout or a shutdown signal and call it again.
    pub async fn read_line(&mut self, line: &mut Vec<u8>) -> io::Result<LineRead> {
        loop {
            if let Some(r) = self.take_buffered_line(line) {
                return Ok(r);
            }
            if self.fill().await? == 0 {
                return Ok(LineRead::Eof);
            }
        }
    }

    fn take_buffered_line(&mut self, line: &mut Vec<u8>) -> Option<LineRead> {
        let avail = &self.buf[self.start..self.end];
        if let Some(i) = avail.iter().position(|&b| b == b'\n') {
            let raw = &avail[..=i];
            self.start += i + 1;
            if std::mem::take(&mut self.discarding) {
                return Some(LineRead::TooLong);
            }
            if content_len(raw) > self.max_line {
                return Some(LineRead::TooLong);
            }
            line.clear();
            line.extend_from_slice(raw);
            return Some(LineRead::Line);
        }
        // No LF yet. Once more than a maximal line (plus its CR) is
        // buffered, the line is too long whatever follows: drop what we
        // have and keep dropping until the LF.
        if self.discarding || avail.len() > self.max_line.saturating_add(1) {
            self.discarding = true;
            self.start = 0;
            self.end = 0;
        }
        None
    }

    /// The next complete, not over-long line already buffered, without
    /// consuming it (for PIPELINING batches). Returns its raw bytes.
    pub fn peek_line(&self) -> Option<&[u8]> {
        if self.discarding {
            return None;
        }
        let avail = &self.buf[self.start..self.end];
        let i = avail.iter().position(|&b| b == b'\n')?;
        let raw = &avail[..=i];
        (content_len(raw) <= self.max_line).then_some(raw)
    }

    /// Unconsumed input (message data, or what a STARTTLS must discard).
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
    }

    /// Drops all buffered input; returns how much there was.
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.end - self.start;
        self.start = 0;
        self.end = 0;
        self.discarding = false;
        n
    }

    /// Flushes queued replies (the client may be waiting for them), then
    /// reads more input. Returns 0 at end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.flush().await?;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // Callers consume before refilling, so this is a bug; reading
            // into an empty slice would look like end of stream.
            return Err(io::Error::other("read buffer full"));
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Runs the TLS handshake on the plain stream. Buffered plaintext must
    /// have been discarded by the caller (RFC 3207 §5 injection defence).
    pub async fn start_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
    ) -> Result<&rustls::ServerConnection, HandshakeError> {
        let Stream::Plain(io) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(HandshakeError::Io(closed()));
        };
        debug_assert_eq!(self.start, self.end, "plaintext must be discarded first");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
            Ok(r) => r?,
            Err(_) => return Err(HandshakeError::Timeout),
        };
        self.stream = Stream::Tls(Box::new(tls));
        match &self.stream {
            Stream::Tls(s) => Ok(s.get_ref().1),
            _ => unreachable!("just set"),
        }
    }
}

/// Length of a line without its LF and an optional CR before it.
fn content_len(raw: &[u8]) -> usize {
    let mut n = raw.len();
    if raw[..n].ends_with(b"\n") {
        n -= 1;
    }
    if raw[..n].ends_with(b"\r") {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<String, LineRead>> {
        let (mut client, server) = tokio::io::duplex(1024);
        let data = input.to_vec();
        let writer = tokio::spawn(async move {
            client.write_all(&data).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut conn = Conn::new(Stream::Plain(server), max, Duration::from_secs(5));
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            match conn.read_line(&mut line).await.unwrap() {
                LineRead::Line => out.push(Ok(String::from_utf8_lossy(&line).into_owned())),
                LineRead::Eof => break,
                other => out.push(Err(other)),
            }
            // The buffer never grows past its fixed size.
            assert_eq!(conn.buf.len(), MIN_READ_BUF.max(max + 2));
        }
        drop(writer.await.unwrap());
        out
    }

    #[tokio::test]
    async fn long_lines_are_skipped_without_storing_them() {
        let mut input = b"NOOP\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend_from_slice(b"\r\nQUIT\r\n");
        let got = lines(&input, 512).await;
        assert_eq!(
            got,
            vec![
                Ok("NOOP\r\n".into()),
                Err(LineRead::TooLong),
                Ok("QUIT\r\n".into())
            ]
        );
    }

    #[tokio::test]
    async fn line_at_the_limit_passes_and_one_more_is_too_long() {
        let mut input = vec![b'a'; 20_000];
        input.extend_from_slice(b"\r\n");
        input.extend(vec![b'b'; 20_001]);
        input.extend_from_slice(b"\n");
        let got = lines(&input, 20_000).await;
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], Ok(l) if l.len() == 20_002));
        assert_eq!(got[1], Err(LineRead::TooLong));
    }

    #[tokio::test]
    async fn partial_last_line_is_eof() {
        assert_eq!(lines(b"NOOP", 512).await, vec![]);
    }
}
