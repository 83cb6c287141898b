//! The SMTP session state machine (RFC 5321 with PIPELINING, 8BITMIME,
//! SMTPUTF8, SIZE, ENHANCEDSTATUSCODES, CHUNKING, STARTTLS and AUTH).
//!
//! Parsing is smtp-proto's; this module decides what each command means in
//! the current state and turns MAIL/RCPT/data into [`TxUpdate`]s for the
//! transaction's chain. Replies from the chain reach the client verbatim.

use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use koukan_chain::{ChainPanicked, Response, SessionInfo, TlsInfo, TransactionFactory};
use smtp_proto::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug};

use crate::config::SessionConfig;
use crate::conn::{Conn, LineRead, Stream};
use crate::data::{self, DataError};
use crate::metrics::SmtpMetrics;
use crate::reply::{self, Reply};
use crate::tls::tls_info;
use crate::tx::{Outcome, Transaction};

mod envelope;
mod sasl;

/// Runs one SMTP session on an accepted connection until the client quits,
/// disconnects, times out or shutdown closes it. Never panics on client
/// input; errors end the session and are logged at debug level. A bug
/// does not take the connection down unanswered: a panic in a transaction's
/// chain ends that transaction with `451 4.3.0` and the session goes on; a
/// panic in the session's own command handling (its state then unknown)
/// ends it with `421 4.3.0`. Both are logged and counted
/// (`koukan_internal_errors_total`).
///
/// `shutdown` becoming true makes an idle session answer `421 4.3.2` and
/// close; a transaction in flight may finish first (up to
/// `limits.drain_timeout`).
///
/// Everything the session does runs in a `session` span (target
/// `koukan::session`: `listener`, `peer`), and everything a transaction
/// does, its chain included, in a `tx` span inside it (target
/// `koukan::tx`: `tx`, the transaction id). So every log line of a
/// transaction, whichever crate of the chain writes it, says which
/// transaction and connection it belongs to without being told.
pub async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    local: SocketAddr,
    cfg: Arc<SessionConfig>,
    factory: Arc<dyn TransactionFactory>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<SmtpMetrics>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let labels = SmtpMetrics::listener(&cfg.listener_name);
    metrics.connections_total.get_or_create(&labels).inc();
    let active = metrics.connections_active.get_or_create(&labels).clone();
    active.inc();
    // Decrements however the session ends, including task abort on drain.
    let _active = ActiveGauge(active);
    let conn = Conn::new(
        Stream::Plain(io),
        cfg.limits.max_line_length,
        cfg.limits.command_timeout,
    );
    let span = tracing::info_span!(
        target: "koukan::session",
        "session",
        listener = %cfg.listener_name,
        peer = %peer,
    );
    let session = Session {
        conn,
        cfg,
        factory,
        metrics: metrics.clone(),
        shutdown,
        shutdown_live: true,
        drain_deadline: None,
        peer,
        local,
        helo: None,
        esmtp: false,
        tls: None,
        auth_user: None,
        bad_commands: 0,
        tx: None,
        line: Vec::new(),
    };
    // Last resort: a panic outside command handling (TLS set-up, reading)
    // leaves nothing to answer with, but is still logged and counted
    // rather than lost in a failed task.
    async move {
        if let Err(payload) = AssertUnwindSafe(session.run()).catch_unwind().await {
            let panicked = ChainPanicked::from_payload(payload);
            tracing::error!(error = %panicked.message, "SMTP session panicked; connection closed");
            metrics.internal_errors.count("smtp_session");
        }
    }
    .instrument(span)
    .await
}

struct ActiveGauge(prometheus_client::metrics::gauge::Gauge);

impl Drop for ActiveGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the session does after a command.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// What waiting for the next command produced.
enum Next {
    Line,
    TooLong,
    Eof,
    Timeout,
    Shutdown,
    Failed(std::io::Error),
}

struct Session<IO> {
    conn: Conn<IO>,
    cfg: Arc<SessionConfig>,
    factory: Arc<dyn TransactionFactory>,
    metrics: Arc<SmtpMetrics>,
    shutdown: watch::Receiver<bool>,
    /// False once the shutdown sender is gone (then it can never fire).
    shutdown_live: bool,
    /// Set when shutdown was seen: the transaction in flight must end by
    /// then.
    drain_deadline: Option<Instant>,
    peer: SocketAddr,
    local: SocketAddr,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    auth_user: Option<String>,
    bad_commands: u32,
    tx: Option<Transaction>,
    /// The current command line (reused; bounded by `max_line_length`).
    line: Vec<u8>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    async fn run(mut self) {
        if self.cfg.implicit_tls {
            let Some(tls) = self.cfg.tls.clone() else {
                tracing::warn!("implicit TLS without a TLS config; closing");
                return;
            };
            if !self.handshake(tls).await {
                return;
            }
        }
        let greeting = format!("220 {} ESMTP koukan\r\n", self.cfg.hostname);
        self.conn.queue_raw(greeting.as_bytes());
        loop {
            if self.tx.is_none() && self.shutting_down() {
                self.conn.queue_reply(reply::SHUTTING_DOWN);
                break;
            }
            let flow = match self.next_line().await {
                Next::Line => self.handle_line_caught().await,
                Next::TooLong => self.reject(reply::LINE_TOO_LONG.response(), "line_too_long"),
                Next::Eof => {
                    debug!("client closed the connection");
                    Flow::Close
                }
                Next::Timeout => {
                    self.conn.queue_reply(reply::TIMEOUT);
                    self.abort_tx(Outcome::Timeout);
                    Flow::Close
                }
                Next::Shutdown => {
                    self.conn.queue_reply(reply::SHUTTING_DOWN);
                    Flow::Close
                }
                Next::Failed(e) => {
                    debug!(error = %e, "connection error");
                    Flow::Close
                }
            };
            if flow == Flow::Close {
                break;
            }
        }
        self.abort_tx(Outcome::Aborted);
        self.conn.close().await;
    }

    /// Whether shutdown was requested (starts the drain clock when first
    /// seen).
    fn shutting_down(&mut self) -> bool {
        if self.drain_deadline.is_none() && self.shutdown_live && *self.shutdown.borrow() {
            self.drain_deadline = Some(Instant::now() + self.cfg.limits.drain_timeout);
        }
        self.drain_deadline.is_some()
    }

    /// Waits for the next command line, bounded by the command timeout and
    /// (once shutting down) the drain deadline.
    async fn next_line(&mut self) -> Next {
        // Written here, outside the select below: a write interrupted
        // half-way could not be resumed.
        if let Err(e) = self.conn.flush().await {
            return Next::Failed(e);
        }
        let deadline = Instant::now() + self.cfg.limits.command_timeout;
        loop {
            let drain = self.drain_deadline;
            let watch_shutdown = self.shutdown_live && drain.is_none();
            tokio::select! {
                r = self.conn.read_line(&mut self.line) => {
                    return match r {
                        Ok(LineRead::Line) => Next::Line,
                        Ok(LineRead::TooLong) => Next::TooLong,
                        Ok(LineRead::Eof) => Next::Eof,
                        Err(e) => Next::Failed(e),
                    };
                }
                _ = tokio::time::sleep_until(deadline) => return Next::Timeout,
                _ = tokio::time::sleep_until(drain.unwrap_or(deadline)), if drain.is_some() => {
                    return Next::Shutdown;
                }
                changed = self.shutdown.changed(), if watch_shutdown => {
                    if changed.is_err() {
                        self.shutdown_live = false;
                        continue;
                    }
                    // Marks the value seen, so an unchanged `false` cannot
                    // wake this loop again.
                    let requested = *self.shutdown.borrow_and_update();
                    if requested && self.shutting_down() && self.tx.is_none() {
                        return Next::Shutdown;
                    }
                }
            }
        }
    }

    /// A locally rejected command: counts toward `max_bad_commands`; past
    /// the limit the client gets 421 instead and is disconnected.
    fn reject(&mut self, resp: Response, reason: &'static str) -> Flow {
        self.metrics.rejected(&self.cfg.listener_name, reason);
        self.bad_commands += 1;
        if self.bad_commands > self.cfg.limits.max_bad_commands {
            debug!("too many bad commands");
            self.conn.queue_reply(reply::TOO_MANY_ERRORS);
            return Flow::Close;
        }
        self.conn.queue(&resp);
        Flow::Continue
    }

    fn reply(&mut self, reply: Reply) -> Flow {
        self.conn.queue_reply(reply);
        Flow::Continue
    }

    /// Runs one command; a panic in it closes the session with a `421`
    /// (where the client stands in its data or exchange is unknown). A
    /// panic inside the chain never gets here: [`Transaction::send`]
    /// catches it and the session goes on.
    ///
    /// A command of an open transaction (RCPT, DATA, BDAT, RSET...) runs
    /// in its span, so what the session logs about it (a data error, say)
    /// carries the transaction id too. MAIL opens the transaction, whose
    /// chain calls then enter its span themselves.
    async fn handle_line_caught(&mut self) -> Flow {
        let span = self
            .tx
            .as_ref()
            .map_or_else(tracing::Span::none, |tx| tx.span.clone());
        match AssertUnwindSafe(self.handle_line())
            .catch_unwind()
            .instrument(span)
            .await
        {
            Ok(flow) => flow,
            Err(payload) => {
                let panicked = ChainPanicked::from_payload(payload);
                tracing::error!(error = %panicked.message, "SMTP session ended by an internal error");
                self.metrics.internal_errors.count("smtp_session");
                self.conn.queue_reply(reply::INTERNAL_ERROR_CLOSING);
                self.abort_tx(Outcome::InternalError);
                Flow::Close
            }
        }
    }

    async fn handle_line(&mut self) -> Flow {
        if bdat_size_out_of_range(&self.line) {
            // The chunk's length is unknowable, so is where the next
            // command starts: going on would run message octets as
            // commands. Answer, then close.
            debug!("BDAT chunk size out of range; closing");
            self.metrics
                .rejected(&self.cfg.listener_name, "bdat_size_out_of_range");
            self.conn.queue_reply(reply::BDAT_SIZE_OUT_OF_RANGE);
            self.abort_tx(Outcome::Aborted);
            return Flow::Close;
        }
        let req = match parse_command(&self.line) {
            Ok(req) => req,
            Err((resp, reason)) if is_bdat(&self.line) => {
                // A BDAT whose size cannot be read: as above, the chunk's
                // octets follow and nothing tells where they end.
                debug!("unparseable BDAT; closing");
                self.metrics.rejected(&self.cfg.listener_name, reason);
                self.conn.queue(&resp);
                self.abort_tx(Outcome::Aborted);
                return Flow::Close;
            }
            Err((resp, reason)) => return self.reject(resp, reason),
        };
        match req {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Mail { .. } | Request::Rcpt { .. } => self.envelope(req).await,
            Request::Data => self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.abort_tx(Outcome::Aborted);
                self.reply(reply::OK)
            }
            Request::Noop { .. } => self.reply(reply::OK),
            Request::Quit => {
                self.conn.queue_reply(reply::BYE);
                Flow::Close
            }
            Request::Vrfy { .. } => self.reply(reply::VRFY),
            Request::Help { .. } => self.reply(reply::HELP),
            Request::StartTls => self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            // We are not an LMTP server.
            Request::Lhlo { .. } => self.reject(reply::UNKNOWN_COMMAND.response(), "unknown"),
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                self.reject(reply::NOT_IMPLEMENTED.response(), "not_implemented")
            }
        }
    }

    fn hello(&mut self, host: String, esmtp: bool) -> Flow {
        // RFC 5321 §4.1.4: EHLO/HELO in a session resets any transaction.
        self.abort_tx(Outcome::Aborted);
        self.helo = Some(host);
        self.esmtp = esmtp;
        if !esmtp {
            let text = self.cfg.hostname.clone();
            self.conn.queue(&Response::new(250, text));
            return Flow::Continue;
        }
        let mut lines = vec![
            self.cfg.hostname.clone(),
            "PIPELINING".to_owned(),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            format!("SIZE {}", self.cfg.limits.max_message_size),
            "ENHANCEDSTATUSCODES".to_owned(),
            "CHUNKING".to_owned(),
        ];
        if self.starttls_available() {
            lines.push("STARTTLS".to_owned());
        }
        if self.auth_allowed() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        lines.push("HELP".to_owned());
        self.conn.queue(&Response::new(250, lines.join("\n")));
        Flow::Continue
    }

    fn starttls_available(&self) -> bool {
        self.cfg.tls.is_some() && !self.cfg.implicit_tls && self.tls.is_none()
    }

    /// AUTH needs TLS, unless the loopback opt-out applies.
    fn auth_allowed(&self) -> bool {
        self.cfg.auth.is_some()
            && (self.tls.is_some()
                || (self.cfg.auth_allow_plaintext_loopback && is_loopback(self.peer.ip())))
    }

    fn session_info(&self) -> Arc<SessionInfo> {
        Arc::new(SessionInfo {
            listener: self.cfg.listener_name.clone(),
            peer: self.peer,
            local: self.local,
            ehlo_host: self.helo.clone(),
            esmtp: self.esmtp,
            tls: self.tls.clone(),
            auth_user: self.auth_user.clone(),
        })
    }

    /// Ends the current transaction early (RSET, EHLO, STARTTLS, close).
    fn abort_tx(&mut self, outcome: Outcome) {
        if let Some(tx) = self.tx.take() {
            tx.finish(
                outcome,
                None,
                &self.cfg.listener_name,
                self.peer,
                &self.metrics,
            );
        }
    }

    fn finish_tx(&mut self, tx: Transaction, outcome: Outcome, reply: &Response) {
        tx.finish(
            outcome,
            Some(reply),
            &self.cfg.listener_name,
            self.peer,
            &self.metrics,
        );
    }

    /// The checks every message-data command shares. `Err` carries the
    /// rejection.
    fn data_allowed(&self) -> Result<(), (Reply, &'static str)> {
        let Some(tx) = self.tx.as_ref() else {
            return Err((reply::NEED_MAIL, "sequence"));
        };
        if tx.rcpts_total == 0 {
            return Err((reply::NEED_RCPT, "sequence"));
        }
        if tx.rcpts_accepted == 0 {
            return Err((reply::NO_VALID_RCPTS, "sequence"));
        }
        Ok(())
    }

    async fn data(&mut self) -> Flow {
        if let Err((r, reason)) = self.data_allowed() {
            return self.reject(r.response(), reason);
        }
        let Some(tx) = self.tx.as_mut() else {
            unreachable!("checked by data_allowed")
        };
        if tx.bdat {
            return self.reject(reply::DATA_AFTER_BDAT.response(), "sequence");
        }
        self.conn.queue_reply(reply::START_DATA);
        let result = data::receive_data(&mut self.conn, tx, &self.cfg.limits).await;
        self.end_of_data(result, true)
    }

    async fn bdat(&mut self, size: usize, last: bool) -> Flow {
        if let Err((r, reason)) = self.data_allowed() {
            // The chunk's octets follow the command whatever we answer:
            // skip them so they are not taken for commands.
            let timeout = self.cfg.limits.data_block_timeout;
            if let Err(e) = data::discard_bdat(&mut self.conn, size, timeout).await {
                return self.data_failed(e);
            }
            return self.reject(r.response(), reason);
        }
        let Some(tx) = self.tx.as_mut() else {
            unreachable!("checked by data_allowed")
        };
        let result = data::receive_bdat(&mut self.conn, tx, size, last, &self.cfg.limits).await;
        self.end_of_data(result, last)
    }

    /// Replies to a DATA message or a BDAT chunk; a final one ends the
    /// transaction.
    fn end_of_data(&mut self, result: Result<Response, DataError>, last: bool) -> Flow {
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => return self.data_failed(e),
        };
        self.conn.queue(&resp);
        if last && let Some(tx) = self.tx.take() {
            let outcome = match &tx.failed {
                Some((_, outcome)) => *outcome,
                None => Outcome::of_final(&resp),
            };
            self.finish_tx(tx, outcome, &resp);
        }
        Flow::Continue
    }

    fn data_failed(&mut self, e: DataError) -> Flow {
        debug!(error = %e, "message data not received");
        if matches!(e, DataError::Timeout) {
            self.conn.queue_reply(reply::TIMEOUT);
            self.abort_tx(Outcome::Timeout);
        } else {
            self.abort_tx(Outcome::Aborted);
        }
        Flow::Close
    }

    async fn starttls(&mut self) -> Flow {
        let Some(tls) = self.cfg.tls.clone().filter(|_| !self.cfg.implicit_tls) else {
            return self.reject(reply::NOT_IMPLEMENTED.response(), "not_implemented");
        };
        if self.tls.is_some() {
            return self.reject(reply::ALREADY_TLS.response(), "sequence");
        }
        self.conn.queue_reply(reply::START_TLS);
        if let Err(e) = self.conn.flush().await {
            debug!(error = %e, "writing STARTTLS reply");
            return Flow::Close;
        }
        // RFC 3207 §5: anything the client sent after STARTTLS in clear
        // could have been injected by an attacker; it must not be run as
        // commands of the protected session.
        let dropped = self.conn.discard_buffered();
        if dropped > 0 {
            debug!(
                bytes = dropped,
                "discarded plaintext pipelined after STARTTLS"
            );
        }
        if !self.handshake(tls).await {
            return Flow::Close;
        }
        // RFC 3207 §4.2: forget everything learned from the client before
        // TLS; it must say EHLO again.
        self.abort_tx(Outcome::Aborted);
        self.helo = None;
        self.esmtp = false;
        self.auth_user = None;
        Flow::Continue
    }

    async fn handshake(&mut self, tls: Arc<rustls::ServerConfig>) -> bool {
        match self
            .conn
            .start_tls(tls, self.cfg.limits.command_timeout)
            .await
        {
            Ok(conn) => {
                self.tls = Some(tls_info(conn));
                true
            }
            Err(e) => {
                debug!(error = %e, "TLS handshake failed");
                false
            }
        }
    }
}

/// Loopback, including IPv4-mapped loopback on a dual-stack socket.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// Whether `line` is a BDAT command whose chunk size smtp-proto would
/// misread: a number that does not fit in 64 bits (its parser saturates,
/// then starts over from the next digit, so `BDAT 184467440737095516165`
/// reads as 5), or exactly 2^64 - 1 (its "no number" marker). The command
/// word is read with smtp-proto's own tokenizer and the number the way its
/// `size()` reads it (leading spaces and any CR skipped), so this sees the
/// same token the parser would.
fn bdat_size_out_of_range(line: &[u8]) -> bool {
    let Some(rest) = bdat_arguments(line) else {
        return false;
    };
    let mut value: u64 = 0;
    let mut digits = 0;
    for &b in rest {
        match b {
            b'0'..=b'9' => {
                digits += 1;
                match value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                {
                    Some(v) => value = v,
                    None => return true,
                }
            }
            b'\r' => {}
            b' ' if digits == 0 => {}
            _ => break,
        }
    }
    digits > 0 && (value == u64::MAX || usize::try_from(value).is_err())
}

/// The bytes after the command word if `line` is a BDAT command with
/// arguments. The word is read with smtp-proto's own tokenizer (its tokens
/// are private; the tokenizer gives BDAT's), so this sees what the parser
/// would.
fn bdat_arguments(line: &[u8]) -> Option<std::slice::Iter<'_, u8>> {
    use smtp_proto::request::parser::Rfc5321Parser;
    fn command(bytes: &mut std::slice::Iter<'_, u8>) -> Option<(u64, u8)> {
        let mut p = Rfc5321Parser::new(bytes);
        let word = p.hashed_value().ok()?;
        Some((word, p.stop_char))
    }
    let bdat = command(&mut b"BDAT ".iter()).map(|(w, _)| w);
    let mut rest = line.iter();
    match command(&mut rest) {
        Some((word, stop)) if Some(word) == bdat && stop.is_ascii_whitespace() && stop != b'\n' => {
            Some(rest)
        }
        _ => None,
    }
}

/// A BDAT command (with arguments, parseable or not): its chunk follows
/// it on the wire.
fn is_bdat(line: &[u8]) -> bool {
    bdat_arguments(line).is_some()
}

/// Parses one command line (with its line end). `Err` is the local reply
/// and the rejection reason.
fn parse_command(line: &[u8]) -> Result<Request<String>, (Response, &'static str)> {
    // NUL and invalid UTF-8 never appear in a valid command (addresses are
    // UTF-8 under SMTPUTF8); refusing them up front keeps them out of
    // parsing, logs and the chain.
    if line.contains(&0) || std::str::from_utf8(line).is_err() {
        return Err((reply::BAD_CHARACTERS.response(), "bad_bytes"));
    }
    use smtp_proto::Error as E;
    match Request::parse(&mut line.iter()) {
        Ok(req) => Ok(req.into_owned()),
        Err(E::UnknownCommand) => Err((reply::UNKNOWN_COMMAND.response(), "unknown")),
        Err(E::InvalidSenderAddress) => Err((reply::BAD_SENDER.response(), "syntax")),
        Err(E::InvalidRecipientAddress) => Err((reply::BAD_RECIPIENT.response(), "syntax")),
        // smtp-proto reports an unknown SASL mechanism as AUTH syntax.
        Err(E::SyntaxError { syntax }) if syntax.starts_with("AUTH") => {
            Err((reply::AUTH_MECHANISM.response(), "auth"))
        }
        Err(E::SyntaxError { syntax }) => Err((reply::syntax(syntax), "syntax")),
        Err(E::InvalidParameter { param }) => Err((reply::invalid_param(param), "syntax")),
        Err(E::UnsupportedParameter { param }) => Err((reply::unsupported_param(&param), "param")),
        Err(_) => Err((reply::UNKNOWN_COMMAND.response(), "unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::envelope::unsupported_mail_param;
    use super::*;

    fn parse(s: &str) -> Result<Request<String>, u16> {
        parse_command(s.as_bytes()).map_err(|(r, _)| r.code)
    }

    #[test]
    fn command_parsing_maps_errors_to_codes() {
        assert!(matches!(parse("EHLO x\r\n"), Ok(Request::Ehlo { host }) if host == "x"));
        assert_eq!(parse("FOO\r\n").unwrap_err(), 500);
        assert_eq!(parse("\r\n").unwrap_err(), 500);
        assert_eq!(parse("NO\0OP\r\n").unwrap_err(), 500);
        assert_eq!(parse("MAIL FROM:<a@b> FOO=1\r\n").unwrap_err(), 555);
        assert_eq!(parse("MAIL FROM:a@b\r\n").unwrap_err(), 501);
        assert_eq!(parse("MAIL FROM:<a@b> BODY=9BIT\r\n").unwrap_err(), 501);
        assert_eq!(parse("AUTH CRAM-MD5\r\n").map(|_| ()), Ok(()));
        // Unknown mechanisms parse as 0 and get 504 from the session.
        assert!(matches!(
            parse("AUTH BOGUS\r\n"),
            Ok(Request::Auth { mechanism: 0, .. })
        ));
        assert!(parse_command(&[b'N', b'O', b'O', b'P', 0xff, b'\n']).is_err());
    }

    #[test]
    fn mail_params_beyond_the_advertised_ones_are_refused() {
        let Ok(Request::Mail { from }) =
            parse("MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n")
        else {
            panic!()
        };
        assert_eq!(unsupported_mail_param(&from), None);
        let Ok(Request::Mail { from }) = parse("MAIL FROM:<a@b> RET=FULL\r\n") else {
            panic!()
        };
        assert_eq!(unsupported_mail_param(&from), Some("MAIL"));
        let Ok(Request::Mail { from }) = parse("MAIL FROM:<a@b> ENVID=x\r\n") else {
            panic!()
        };
        assert_eq!(unsupported_mail_param(&from), Some("ENVID"));
    }

    #[test]
    fn bdat_sizes_beyond_64_bits_are_caught_before_parsing() {
        let out = |s: &str| bdat_size_out_of_range(s.as_bytes());
        // What smtp-proto makes of them: the reason for the check.
        assert!(matches!(
            parse("BDAT 184467440737095516165\r\n"),
            Ok(Request::Bdat { chunk_size: 5, .. })
        ));
        assert!(out("BDAT 184467440737095516165\r\n"));
        assert!(out("bdat 184467440737095516165 LAST\r\n"));
        assert!(out("BDAT 18446744073709551616\r\n")); // 2^64
        assert!(out("BDAT 18446744073709551615\r\n")); // smtp-proto's marker
        assert!(out(&format!("BDAT {}\r\n", "9".repeat(100))));
        assert!(out("  BDAT   99999999999999999999999 LAST\r\n"));
        // CRs inside the number are skipped by smtp-proto, so here too.
        assert!(out("BDAT 1844674407\r3709551616\r\n"));
        // In range, or not a BDAT size at all: left to the parser.
        assert!(!out("BDAT 18446744073709551614\r\n"));
        assert!(!out("BDAT 0 LAST\r\n"));
        assert!(!out(&format!("BDAT {}5\r\n", "0".repeat(30))));
        assert!(!out("BDAT\r\n"));
        assert!(!out("BDAT LAST\r\n"));
        assert!(!out("BDATX 99999999999999999999999\r\n"));
        // Any BDAT with arguments has a chunk behind it.
        assert!(is_bdat(b"BDAT 12x\r\n") && is_bdat(b"bdat 5 LAST\r\n"));
        assert!(!is_bdat(b"BDAT\r\n") && !is_bdat(b"BDATX 5\r\n") && !is_bdat(b"DATA\r\n"));
        assert!(!out("NOOP 99999999999999999999999\r\n"));
        assert!(!out("MAIL FROM:<a@b> SIZE=99999999999999999999999\r\n"));
        // Leading zeros are digits like any other, and parse right.
        assert!(matches!(
            parse(&format!("BDAT {}5\r\n", "0".repeat(30))),
            Ok(Request::Bdat { chunk_size: 5, .. })
        ));
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("192.0.2.1".parse().unwrap()));
    }
}
