//! Message data: DATA (dot-stuffed, RFC 5321 §4.5.2) and BDAT (RFC 3030),
//! streamed to the chain in bounded chunks.
//!
//! Memory per session is the read buffer plus one chunk, whatever the
//! message size or line lengths: data is never split into lines, only
//! unstuffed as it streams through smtp-proto's receivers. The line length
//! limit is checked by counting as it streams ([`LineLimit`]).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use koukan_chain::{Response, TxUpdate};
use smtp_proto::request::receiver::{BdatReceiver, DataReceiver, DummyDataReceiver};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Limits;
use crate::conn::Conn;
use crate::line_limit::LineTooLong;
use crate::reply;
use crate::tx::{Outcome, Transaction};

/// Largest body chunk sent to the chain in one update.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Why message data could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DataError {
    #[error("timed out waiting for message data")]
    Timeout,
    #[error("client closed the connection during message data")]
    Eof,
    #[error("reading message data: {0}")]
    Io(#[from] io::Error),
}

/// Makes sure some unconsumed input is buffered.
async fn want_input<IO: AsyncRead + AsyncWrite + Unpin + Send>(
    conn: &mut Conn<IO>,
    timeout: Duration,
) -> Result<(), DataError> {
    if !conn.buffered().is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(timeout, conn.fill()).await {
        Err(_) => Err(DataError::Timeout),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(0)) => Err(DataError::Eof),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Takes a full chunk out of `buf`. A trailing CR stays behind: it may be
/// the start of the `.CRLF` terminator, which the receiver removes from its
/// output buffer once it sees the LF.
fn take_chunk(buf: &mut Vec<u8>) -> Bytes {
    let mut next = Vec::with_capacity(CHUNK);
    if buf.last() == Some(&b'\r') {
        buf.pop();
        next.push(b'\r');
    }
    Bytes::from(std::mem::replace(buf, next))
}

/// Sends a non-final chunk; an early data response means the chain gave up
/// on the message.
async fn send_partial(tx: &mut Transaction, data: Bytes) {
    tx.size += data.len() as u64;
    let resp = tx.send(TxUpdate::body(data, false)).await;
    if let Some(early) = resp.data {
        let outcome = Outcome::of_final(&early);
        tx.fail(early, outcome);
    }
}

/// Sends the final chunk and returns the transaction's final response.
async fn send_last(tx: &mut Transaction, data: Bytes) -> Response {
    if let Some((resp, _)) = &tx.failed {
        return resp.clone();
    }
    tx.size += data.len() as u64;
    let resp = tx.send(TxUpdate::body(data, true)).await;
    if let Some((failed, _)) = &tx.failed {
        return failed.clone();
    }
    resp.data.unwrap_or_else(|| reply::UNANSWERED.response())
}

fn too_big(tx: &mut Transaction) {
    tx.fail(reply::SIZE_EXCEEDED.response(), Outcome::TooBig);
}

/// A content line over `max_data_line_length`: like the size limit, the
/// transaction fails (its upstream is dropped, so nothing half-sent is
/// delivered) and the rest of the message is only read and discarded, so
/// this happens once per message; it is counted as a rejection too.
fn line_too_long(tx: &mut Transaction, e: LineTooLong) {
    tx.metrics.rejected(
        tx.ctx.ingress.listener().unwrap_or_default(),
        "data_line_too_long",
    );
    tx.fail(reply::data_line_too_long(e.max), Outcome::LineTooLong);
}

/// Counts `data[from..]` (the octets a receiver just added; `from` may be
/// past the end when the DATA receiver took back a CR it had output).
fn check_lines(tx: &mut Transaction, data: &[u8], from: usize) -> Result<(), LineTooLong> {
    tx.lines.feed(data.get(from..).unwrap_or_default())
}

/// Reads a DATA message (after the 354 was queued) up to `CRLF.CRLF`,
/// forwarding it in chunks, and returns the reply for the client.
pub(crate) async fn receive_data<IO: AsyncRead + AsyncWrite + Unpin + Send>(
    conn: &mut Conn<IO>,
    tx: &mut Transaction,
    limits: &Limits,
) -> Result<Response, DataError> {
    let mut rx = DataReceiver::new();
    // The receiver only recognises a dot at the start of a line after it
    // has seen a CRLF, and the first line of the message starts right after
    // the DATA command's CRLF: feed it one so a leading dot is unstuffed
    // and an empty message (".CRLF" at once) ends.
    rx.ingest(&mut b"\r\n".iter(), &mut Vec::new());
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    // Once the message has its answer, the rest is only skipped.
    let mut discard: Option<DummyDataReceiver> = None;
    loop {
        want_input(conn, limits.data_block_timeout).await?;
        let avail = conn.buffered();
        if let Some(d) = discard.as_mut() {
            let mut it = avail.iter();
            let done = d.ingest(&mut it);
            let used = avail.len() - it.len();
            tx.size += used as u64;
            conn.consume(used);
            if done {
                return Ok(send_last(tx, Bytes::new()).await);
            }
            continue;
        }
        // Never more input than fits in the chunk: unstuffing only shrinks
        // data, so the chunk stays within CHUNK octets.
        let input = &avail[..avail.len().min(CHUNK - buf.len())];
        let mut it = input.iter();
        let before = buf.len();
        let done = rx.ingest(&mut it, &mut buf);
        let used = input.len() - it.len();
        conn.consume(used);

        let over_size = tx.size + buf.len() as u64 > limits.max_message_size;
        let long_line = check_lines(tx, &buf, before).err();
        if over_size || long_line.is_some() {
            match long_line {
                Some(e) if !over_size => line_too_long(tx, e),
                _ => too_big(tx),
            }
            tx.size += buf.len() as u64;
            buf = Vec::new();
            if done {
                return Ok(send_last(tx, Bytes::new()).await);
            }
            discard = Some(DummyDataReceiver::new_data(&rx));
            continue;
        }
        if done {
            let last = Bytes::from(std::mem::take(&mut buf));
            return Ok(send_last(tx, last).await);
        }
        if buf.len() >= CHUNK {
            send_partial(tx, take_chunk(&mut buf)).await;
            if tx.failed.is_some() {
                buf = Vec::new();
                discard = Some(DummyDataReceiver::new_data(&rx));
            }
        }
    }
}

/// Reads and forwards one BDAT chunk of `size` octets. Returns the reply:
/// for `last`, the final response; otherwise `250 <n> octets received` or
/// the failure already known. The line length count goes on from the
/// message's earlier chunks (`Transaction::lines`: a line may span them).
pub(crate) async fn receive_bdat<IO: AsyncRead + AsyncWrite + Unpin + Send>(
    conn: &mut Conn<IO>,
    tx: &mut Transaction,
    size: usize,
    last: bool,
    limits: &Limits,
) -> Result<Response, DataError> {
    tx.bdat = true;
    if tx.failed.is_none() && tx.size.saturating_add(size as u64) > limits.max_message_size {
        too_big(tx);
    }
    if let Some((resp, _)) = tx.failed.clone() {
        discard_bdat(conn, size, limits.data_block_timeout).await?;
        tx.size = tx.size.saturating_add(size as u64);
        return Ok(resp);
    }
    let mut rx = BdatReceiver::new(size, last);
    let mut buf: Vec<u8> = Vec::with_capacity(size.min(CHUNK));
    let mut remaining = size;
    while remaining > 0 {
        want_input(conn, limits.data_block_timeout).await?;
        let avail = conn.buffered();
        let input = &avail[..avail.len().min(CHUNK - buf.len())];
        let mut it = input.iter();
        let before = buf.len();
        rx.ingest(&mut it, &mut buf);
        let used = input.len() - it.len();
        conn.consume(used);
        remaining -= used;
        if let Err(e) = check_lines(tx, &buf, before) {
            line_too_long(tx, e);
            tx.size += buf.len() as u64;
            buf = Vec::new();
            discard_bdat(conn, remaining, limits.data_block_timeout).await?;
            tx.size += remaining as u64;
            break;
        }
        // The last piece of a LAST chunk goes out with `last = true` below.
        if buf.len() == CHUNK && (remaining > 0 || !last) {
            send_partial(tx, Bytes::from(std::mem::take(&mut buf))).await;
            if tx.failed.is_some() {
                discard_bdat(conn, remaining, limits.data_block_timeout).await?;
                tx.size += remaining as u64;
                break;
            }
        }
    }
    if last {
        return Ok(send_last(tx, Bytes::from(buf)).await);
    }
    if !buf.is_empty() && tx.failed.is_none() {
        // Each BDAT is forwarded before it is acknowledged, so the 250
        // means the chain has seen the octets.
        send_partial(tx, Bytes::from(buf)).await;
    }
    Ok(match &tx.failed {
        Some((resp, _)) => resp.clone(),
        None => reply::bdat_received(size as u64),
    })
}

/// Skips a BDAT chunk the session will not use (rejected BDAT commands must
/// still consume their octets, or they would be read as commands).
pub(crate) async fn discard_bdat<IO: AsyncRead + AsyncWrite + Unpin + Send>(
    conn: &mut Conn<IO>,
    size: usize,
    timeout: Duration,
) -> Result<(), DataError> {
    if size == 0 {
        return Ok(());
    }
    let mut d = DummyDataReceiver::new_bdat(size);
    loop {
        want_input(conn, timeout).await?;
        let avail = conn.buffered();
        let mut it = avail.iter();
        let done = d.ingest(&mut it);
        let used = avail.len() - it.len();
        conn.consume(used);
        if done {
            return Ok(());
        }
    }
}
