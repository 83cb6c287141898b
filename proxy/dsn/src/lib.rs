#![forbid(unsafe_code)]
//! Delivery status notifications ("bounces") for Koukan.
//!
//! [`build_dsn`] renders a complete RFC 5322 message: a `multipart/report`
//! (RFC 6522) with a human-readable explanation, a `message/delivery-status`
//! part (RFC 3464) and the original message's header block
//! (`text/rfc822-headers`). Addresses with non-ASCII characters (SMTPUTF8)
//! switch the report to the RFC 6533 forms (`utf-8` address type,
//! `message/global-delivery-status`).
//!
//! Differences from the original implementation (behaviour spec §4.6, §9
//! item 26), all deliberate fixes: the parameter is `report-type`, not
//! `report_type`; the Message-ID has its angle brackets; header names use
//! their conventional capitalisation; per-recipient status and diagnostic
//! come from the recipient's own reply; `Auto-Submitted: auto-replied`
//! (RFC 3834) keeps autoresponders from answering.
//!
//! The crate is pure: no I/O, the caller supplies clocks and the original
//! header block (see [`header_block`]). The only outside input is the OS
//! random source for the Message-ID and the MIME boundary.
//!
//! The MIME is written by hand rather than with `mail-builder`: the report
//! is three fixed parts, and we need exact control that a general builder
//! doesn't give — the `report-type` parameter, raw UTF-8 header fields
//! (RFC 6532) instead of RFC 2047 encoded-words for SMTPUTF8 addresses,
//! unencoded report bodies (RFC 3464 registers `message/delivery-status` as
//! 7bit: no base64/QP), and a boundary checked against the content we are
//! about to write.

mod fold;
mod reply;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

pub use reply::{diagnostic_from_reply, status_from_reply};

/// How much of the stored body the caller should read when looking for the
/// header block; [`header_block`] ignores anything past it.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// RFC 3464 §2.3.3 `Action` values we report. (`delivered`, `relayed` and
/// `expanded` are success notices, which Koukan doesn't send.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Gave up: permanent failure, or a temporary one at the last attempt.
    Failed,
    /// Still retrying.
    Delayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }

    /// The RFC 3463 status to use when nothing more specific is known.
    fn generic_status(self) -> &'static str {
        match self {
            Action::Failed => "5.0.0",
            Action::Delayed => "4.0.0",
        }
    }
}

/// What happened to one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientStatus {
    /// The envelope recipient (RCPT TO), without angle brackets.
    pub final_recipient: String,
    pub action: Action,
    /// RFC 3463 enhanced status code, e.g. `5.1.1`; see
    /// [`status_from_reply`]. An invalid value is replaced by `5.0.0` /
    /// `4.0.0` according to `action`.
    pub status: String,
    /// The upstream reply, code and text: `550 5.1.1 no such user`; see
    /// [`diagnostic_from_reply`]. Empty: no `Diagnostic-Code` field.
    pub diagnostic: String,
    /// The host that gave the reply, if we reached one.
    pub remote_mta: Option<String>,
    pub last_attempt: SystemTime,
}

impl RecipientStatus {
    /// The status for `final_recipient` derived from the upstream `reply`
    /// (wire form or `code text`, possibly multi-line).
    pub fn from_reply(
        final_recipient: impl Into<String>,
        action: Action,
        reply: &str,
        remote_mta: Option<String>,
        last_attempt: SystemTime,
    ) -> Self {
        Self {
            final_recipient: final_recipient.into(),
            action,
            status: status_from_reply(reply, action),
            diagnostic: diagnostic_from_reply(reply),
            remote_mta,
            last_attempt,
        }
    }
}

/// Everything a DSN says. Borrowed so the caller needn't copy the header
/// block.
#[derive(Clone, Debug)]
pub struct DsnInput<'a> {
    /// Our host name: `Reporting-MTA: dns; <name>` and the Message-ID domain.
    pub reporting_mta: &'a str,
    /// The `From` address, e.g. `mailer-daemon@relay.example.com`.
    pub mailer_daemon: &'a str,
    /// The failed message's envelope MAIL FROM, which receives the DSN.
    /// Null (`""` or `<>`): no DSN, never bounce a bounce (RFC 5321 §4.5.5).
    pub original_sender: &'a str,
    /// When we accepted the original message.
    pub arrival_date: SystemTime,
    pub recipients: Vec<RecipientStatus>,
    /// The original header block, from [`header_block`]; may be empty.
    pub original_headers: &'a [u8],
    /// The original `Message-ID`, with or without angle brackets.
    pub original_message_id: Option<&'a str>,
    pub now: SystemTime,
}

/// Whether `mail_from` is the null reverse-path (`""` or `<>`), i.e. the
/// message is itself a notification and must not be answered with one.
pub fn is_bounce(mail_from: &str) -> bool {
    strip_angles(mail_from).is_empty()
}

/// The header block at the start of `body_prefix`: everything up to and
/// including the CRLF that ends the last header field, without the empty
/// line after it. Empty when the headers don't end (CRLFCRLF) within the
/// first [`MAX_HEADER_BLOCK`] bytes — a truncated block would be a
/// misleading half-copy — or when the message has no header fields.
///
/// Only CRLF is recognised: bodies are stored as received over SMTP, where
/// CRLF is the line ending (RFC 5321 §2.3.8).
pub fn header_block(body_prefix: &[u8]) -> &[u8] {
    let window = &body_prefix[..body_prefix.len().min(MAX_HEADER_BLOCK)];
    if window.starts_with(b"\r\n") {
        // The empty line comes first: no header fields at all.
        return &[];
    }
    match window.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(pos) => &window[..pos + 2],
        None => &[],
    }
}

/// Builds the DSN message (CRLF line endings), or `None` when there is
/// nothing to send: the original sender is null, or no recipients.
pub fn build_dsn(input: &DsnInput<'_>) -> Option<Vec<u8>> {
    build_dsn_with(input, &random_token(), &mut || {
        format!("koukan-dsn-{}", random_token())
    })
}

/// 128 random bits as 32 hex digits: unguessable and collision-free for
/// Message-IDs (RFC 5322 §3.6.4) and MIME boundaries.
fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Text for a header field or a delivery-status field: control characters
/// (CR/LF above all, which would end the field early and let the text add
/// fields of its own) become spaces.
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// `<addr>` → `addr`; the envelope may hand us either form.
fn strip_angles(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .map_or(s, str::trim)
}

fn address(s: &str) -> String {
    clean(strip_angles(s))
}

/// RFC 5322 §3.3 date-time, always in UTC. Times outside 1970..=9999 are
/// clamped: they can't be written in the four-digit-year form, and chrono's
/// conversion from `SystemTime` would panic on some of them.
fn rfc5322_date(t: SystemTime) -> String {
    const MAX_SECS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(MAX_SECS))
        .min(MAX_SECS);
    DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

/// A `Final-Recipient` value: `rfc822; addr` for ASCII, else the RFC 6533
/// `utf-8` address type. There the plain `utf-8-address` (Mailbox) form is
/// used, so `user+tag@…` stays readable; only an address that form can't
/// carry unambiguously (space, `\`) is written as `utf-8-addr-unitext`, with
/// those characters and `+`/`=` as `\x{HEX}`.
fn typed_address(addr: &str) -> String {
    if addr.is_ascii() {
        return format!("rfc822; {addr}");
    }
    if !addr.contains([' ', '\\']) {
        return format!("utf-8; {addr}");
    }
    let mut out = String::from("utf-8; ");
    for c in addr.chars() {
        match c {
            ' ' | '\\' | '+' | '=' => out.push_str(&format!("\\x{{{:02X}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// `Remote-MTA` name: a bare IP address is written as an address literal.
fn mta_name(host: &str) -> String {
    let host = clean(host);
    let host = host.trim_end_matches('.');
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => format!("[{ip}]"),
        Ok(IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
        Err(_) => host.to_owned(),
    }
}

/// A message id's `id-left@id-right`, or `None` if it isn't usable in
/// `In-Reply-To`: whitespace or brackets inside would break the field.
fn msg_id(raw: &str) -> Option<String> {
    let id = strip_angles(raw);
    let ok = !id.is_empty()
        && !id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    ok.then(|| id.to_owned())
}

/// One recipient, cleaned up for output.
struct Rcpt {
    address: String,
    action: Action,
    status: String,
    diagnostic: String,
    remote_mta: Option<String>,
    last_attempt: SystemTime,
}

impl Rcpt {
    fn new(r: &RecipientStatus) -> Self {
        let status = clean(&r.status);
        Rcpt {
            address: address(&r.final_recipient),
            action: r.action,
            // A delay is by definition transient: it needs a 4.x.x status. A
            // failure may carry either class (a temporary error at the last
            // attempt is reported as failed with its 4.x.x status).
            status: if reply::is_failure_status(&status)
                && (r.action == Action::Failed || status.starts_with('4'))
            {
                status
            } else {
                r.action.generic_status().to_owned()
            },
            diagnostic: clean(&r.diagnostic),
            remote_mta: r
                .remote_mta
                .as_deref()
                .map(mta_name)
                .filter(|h| !h.is_empty()),
            last_attempt: r.last_attempt,
        }
    }
}

/// The `message/delivery-status` body (RFC 3464 §2.1): per-message fields,
/// then one block per recipient, each block preceded by an empty line.
fn delivery_status(reporting_mta: &str, arrival: SystemTime, rcpts: &[Rcpt]) -> String {
    let mut out = String::new();
    fold::push_field(&mut out, "Reporting-MTA", &format!("dns; {reporting_mta}"));
    fold::push_field(&mut out, "Arrival-Date", &rfc5322_date(arrival));
    for r in rcpts {
        out.push_str("\r\n");
        fold::push_field(&mut out, "Final-Recipient", &typed_address(&r.address));
        fold::push_field(&mut out, "Action", r.action.as_str());
        fold::push_field(&mut out, "Status", &r.status);
        if let Some(mta) = &r.remote_mta {
            fold::push_field(&mut out, "Remote-MTA", &format!("dns; {mta}"));
        }
        if !r.diagnostic.is_empty() {
            fold::push_field(
                &mut out,
                "Diagnostic-Code",
                &format!("smtp; {}", r.diagnostic),
            );
        }
        fold::push_field(&mut out, "Last-Attempt-Date", &rfc5322_date(r.last_attempt));
    }
    out
}

/// The human-readable first part.
fn explanation(reporting_mta: &str, rcpts: &[Rcpt]) -> String {
    const WIDTH: usize = 76;
    let mut out = String::new();
    let para = |out: &mut String, text: &str| {
        for line in fold::wrap(text, "", "", WIDTH) {
            out.push_str(&line);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
    };
    para(
        &mut out,
        &format!("This is the mail system at {reporting_mta}."),
    );
    let failed: Vec<&Rcpt> = rcpts
        .iter()
        .filter(|r| r.action == Action::Failed)
        .collect();
    let delayed: Vec<&Rcpt> = rcpts
        .iter()
        .filter(|r| r.action == Action::Delayed)
        .collect();
    let sections = [
        (
            failed,
            "Your message could not be delivered to the following recipients. \
             The mail system has given up on them:",
        ),
        (
            delayed,
            "Your message has not yet been delivered to the following recipients. \
             The mail system will keep trying; you do not need to send it again:",
        ),
    ];
    for (list, intro) in sections {
        if list.is_empty() {
            continue;
        }
        para(&mut out, intro);
        for r in list {
            out.push_str(&format!("  <{}>\r\n", r.address));
            let said = match (&r.remote_mta, r.diagnostic.is_empty()) {
                (_, true) => format!("Status {}", r.status),
                (Some(mta), false) => format!("{mta} said: {}", r.diagnostic),
                (None, false) => format!("Reason: {}", r.diagnostic),
            };
            for line in fold::wrap(&said, "    ", "    ", WIDTH) {
                out.push_str(&line);
                out.push_str("\r\n");
            }
            out.push_str("\r\n");
        }
    }
    out.push_str("The headers of your message are attached below.\r\n");
    out
}

/// `bytes` with every line ending as CRLF: a lone CR or LF inside a MIME
/// part is not allowed (RFC 5322 §2.3) and would upset readers.
fn normalize_crlf(bytes: &[u8]) -> Cow<'_, [u8]> {
    let clean = bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    });
    if clean {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `build_dsn` with the random parts supplied, so tests can force a
/// boundary collision. `next_boundary` is asked until it offers a boundary
/// that occurs nowhere in the parts' content (RFC 2046 §5.1.1).
fn build_dsn_with(
    input: &DsnInput<'_>,
    message_id_token: &str,
    next_boundary: &mut dyn FnMut() -> String,
) -> Option<Vec<u8>> {
    if is_bounce(input.original_sender) || input.recipients.is_empty() {
        return None;
    }
    let sender = address(input.original_sender);
    let rcpts: Vec<Rcpt> = input.recipients.iter().map(Rcpt::new).collect();
    let reporting_mta = clean(input.reporting_mta);
    let reporting_mta = reporting_mta.trim_end_matches('.');
    let id_domain = if reporting_mta.is_empty() {
        "localhost"
    } else {
        reporting_mta
    };
    let mailer_daemon = match address(input.mailer_daemon) {
        a if a.is_empty() => format!("MAILER-DAEMON@{id_domain}"),
        a => a,
    };

    let text = explanation(id_domain, &rcpts);
    let status = delivery_status(id_domain, input.arrival_date, &rcpts);
    let headers = normalize_crlf(input.original_headers);

    // RFC 6533: non-ASCII in the machine-readable report (an SMTPUTF8
    // address, or UTF-8 in a reply) needs the global media types.
    let (status_type, report_type) = if status.is_ascii() {
        ("message/delivery-status", "delivery-status")
    } else {
        ("message/global-delivery-status", "global-delivery-status")
    };
    // message/global-headers (RFC 6533) is for UTF-8 header blocks. Other
    // 8-bit bytes (legacy charsets) aren't UTF-8 and we can't know their
    // charset, so those stay text/rfc822-headers with no charset, passed
    // through unchanged as 8bit: they are the sender's own headers.
    let headers_type = if headers.is_ascii() {
        "text/rfc822-headers; charset=us-ascii"
    } else if std::str::from_utf8(&headers).is_ok() {
        "message/global-headers"
    } else {
        "text/rfc822-headers"
    };
    let text_charset = if text.is_ascii() { "us-ascii" } else { "utf-8" };
    let eight_bit = !(text.is_ascii() && status.is_ascii() && headers.is_ascii());

    let boundary = loop {
        let b = next_boundary();
        let hit = |part: &[u8]| contains(part, b.as_bytes());
        if !b.is_empty() && !hit(text.as_bytes()) && !hit(status.as_bytes()) && !hit(&headers) {
            break b;
        }
    };

    let all_delayed = rcpts.iter().all(|r| r.action == Action::Delayed);
    let subject = if all_delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Undelivered Mail Returned to Sender"
    };

    let mut h = String::new();
    h.push_str(&format!("From: Mail Delivery System <{mailer_daemon}>\r\n"));
    h.push_str(&format!("To: <{sender}>\r\n"));
    h.push_str(&format!("Date: {}\r\n", rfc5322_date(input.now)));
    h.push_str(&format!("Message-ID: <{message_id_token}@{id_domain}>\r\n"));
    h.push_str(&format!("Subject: {subject}\r\n"));
    if let Some(id) = input.original_message_id.and_then(msg_id) {
        fold::push_field(&mut h, "In-Reply-To", &format!("<{id}>"));
        fold::push_field(&mut h, "References", &format!("<{id}>"));
    }
    h.push_str("Auto-Submitted: auto-replied\r\n");
    h.push_str("MIME-Version: 1.0\r\n");
    h.push_str(&format!(
        "Content-Type: multipart/report; report-type={report_type};\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    if eight_bit {
        h.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    h.push_str("\r\n");
    h.push_str("This is a MIME-encapsulated message.\r\n");

    // Each part's body is followed by CRLF--boundary; that CRLF belongs to
    // the delimiter (RFC 2046 §5.1.1), so a body comes back out exactly as
    // written, with or without its own final CRLF.
    let part_header = |ctype: &str, description: &str, body_ascii: bool| {
        let cte = if body_ascii { "7bit" } else { "8bit" };
        format!(
            "\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Description: {description}\r\n\
             Content-Transfer-Encoding: {cte}\r\n\r\n"
        )
    };
    let mut out = h.into_bytes();
    out.extend_from_slice(
        part_header(
            &format!("text/plain; charset={text_charset}"),
            "Notification",
            text.is_ascii(),
        )
        .as_bytes(),
    );
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(
        part_header(status_type, "Delivery report", status.is_ascii()).as_bytes(),
    );
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(
        part_header(
            headers_type,
            "Undelivered message headers",
            headers.is_ascii(),
        )
        .as_bytes(),
    );
    out.extend_from_slice(&headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some(out)
}
