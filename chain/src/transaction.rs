//! Transaction, update and response types shared by every filter.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

/// What a reply means for the transaction, by its first digit: the one
/// classification every terminal, the exploder, the scheduler and the
/// stored record use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyClass {
    /// 2xx.
    Ok,
    /// 4xx, and anything else that is not 2xx or 5xx (a 3xx where a final
    /// reply was due, a code out of range): try again later.
    Temp,
    /// 5xx: do not try again.
    Perm,
}

impl ReplyClass {
    pub fn of(code: u16) -> Self {
        match code {
            200..=299 => Self::Ok,
            500..=599 => Self::Perm,
            _ => Self::Temp,
        }
    }

    /// The label metrics and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Temp => "temp",
            Self::Perm => "perm",
        }
    }
}

/// An SMTP reply: a three-digit code and its text, kept verbatim so an
/// upstream's reply reaches the client unchanged. `text` holds the enhanced
/// status code (if any) as its first word and may span several lines
/// (separated by `\n`), written back as a multi-line reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub text: String,
}

impl Response {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }

    /// The answer to whatever a panicking (or otherwise broken) chain left
    /// unanswered: temporary, so the client tries again.
    pub fn internal_error() -> Self {
        Self::new(451, "4.3.0 internal error, try again later")
    }

    pub fn class(&self) -> ReplyClass {
        ReplyClass::of(self.code)
    }

    pub fn is_ok(&self) -> bool {
        self.class() == ReplyClass::Ok
    }

    pub fn is_temp(&self) -> bool {
        self.class() == ReplyClass::Temp
    }

    pub fn is_perm(&self) -> bool {
        self.class() == ReplyClass::Perm
    }

    /// The enhanced status code at the start of the text, if it has one
    /// (RFC 3463: class.subject.detail).
    pub fn enhanced_code(&self) -> Option<&str> {
        let first = self.text.split_whitespace().next()?;
        let mut parts = first.split('.');
        let class = parts.next()?;
        let ok = matches!(class, "2" | "4" | "5")
            && parts
                .by_ref()
                .take(2)
                .filter(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
                .count()
                == 2
            && parts.next().is_none();
        ok.then_some(first)
    }

    /// Writes the reply in SMTP wire form (CRLF line endings, `-` on every
    /// line but the last).
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        if lines.peek().is_none() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
            return;
        }
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            let line = line.trim_end_matches('\r');
            out.extend_from_slice(format!("{}{}{}\r\n", self.code, sep, line).as_bytes());
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text.replace('\n', " / "))
    }
}

/// One ESMTP parameter of MAIL or RCPT (`SIZE=1234`, `SMTPUTF8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EsmtpParam {
    pub keyword: String,
    pub value: Option<String>,
}

/// An envelope address with its ESMTP parameters. An empty `address` is the
/// null reverse-path `<>`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Mailbox {
    pub address: String,
    pub params: Vec<EsmtpParam>,
}

impl Mailbox {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            params: Vec::new(),
        }
    }

    pub fn with_param(mut self, keyword: &str, value: Option<&str>) -> Self {
        self.params.push(EsmtpParam {
            keyword: keyword.to_ascii_uppercase(),
            value: value.map(str::to_owned),
        });
        self
    }

    pub fn param(&self, keyword: &str) -> Option<&EsmtpParam> {
        self.params
            .iter()
            .find(|p| p.keyword.eq_ignore_ascii_case(keyword))
    }

    /// Domain part (after the last `@`), if any.
    pub fn domain(&self) -> Option<&str> {
        self.address.rsplit_once('@').map(|(_, d)| d)
    }

    pub fn local_part(&self) -> Option<&str> {
        self.address.rsplit_once('@').map(|(l, _)| l)
    }
}

/// A host (name or IP literal) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How the terminal finds the upstream servers of a destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Hosts {
    /// Try these in order (names are resolved with A/AAAA, no MX).
    Static(Vec<HostPort>),
    /// MX lookup of `domain` (implicit MX and null MX per RFC 5321/7505),
    /// connecting to `port` on each exchange.
    Mx { domain: String, port: u16 },
    /// The endpoint's own configured hosts (e.g. a maildir needs none).
    EndpointDefault,
}

/// Where a recipient goes: a named endpoint and the hosts to reach it.
/// Two recipients go to the same upstream transaction iff their
/// destinations are equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub endpoint: String,
    pub hosts: Hosts,
}

/// A recipient and, once a router has chosen it, its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub mailbox: Mailbox,
    pub route: Option<Arc<Destination>>,
}

impl Recipient {
    pub fn new(mailbox: Mailbox) -> Self {
        Self {
            mailbox,
            route: None,
        }
    }
}

/// A piece of the message (RFC 5322 bytes, CRLF line endings, no SMTP
/// dot-stuffing). `last` marks the end of the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyChunk {
    pub data: Bytes,
    pub last: bool,
}

/// One step of a transaction. A filter that handles part of an update
/// itself (a rejected recipient) forwards the rest inward and merges the
/// responses back by position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxUpdate {
    pub mail_from: Option<Mailbox>,
    pub rcpt_to: Vec<Recipient>,
    pub body: Option<BodyChunk>,
    /// Set on a MAIL update by a filter that already knows where every
    /// recipient of this transaction will go (a static route), so the
    /// terminal can open the upstream transaction at MAIL time.
    pub route_hint: Option<Arc<Destination>>,
}

impl TxUpdate {
    pub fn mail(mailbox: Mailbox) -> Self {
        Self {
            mail_from: Some(mailbox),
            ..Default::default()
        }
    }

    pub fn rcpts(rcpts: impl IntoIterator<Item = Mailbox>) -> Self {
        Self {
            rcpt_to: rcpts.into_iter().map(Recipient::new).collect(),
            ..Default::default()
        }
    }

    pub fn body(data: impl Into<Bytes>, last: bool) -> Self {
        Self {
            body: Some(BodyChunk {
                data: data.into(),
                last,
            }),
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.mail_from.is_none() && self.rcpt_to.is_empty() && self.body.is_none()
    }
}

/// The responses to one [`TxUpdate`]: `mail` iff it carried MAIL, one entry
/// of `rcpts` per recipient it carried (same order), and `data` once the
/// body is final, or earlier if the transaction failed and the rest of the
/// body should be discarded (the client still gets `data` after its final
/// chunk).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateResponse {
    pub mail: Option<Response>,
    pub rcpts: Vec<Response>,
    pub data: Option<Response>,
}

impl UpdateResponse {
    /// Answers every part of `update` with `resp` (used on internal
    /// failures so no part of an update goes unanswered).
    pub fn fill(update: &TxUpdate, resp: &Response) -> Self {
        Self {
            mail: update.mail_from.as_ref().map(|_| resp.clone()),
            rcpts: update.rcpt_to.iter().map(|_| resp.clone()).collect(),
            data: update
                .body
                .as_ref()
                .filter(|b| b.last)
                .map(|_| resp.clone()),
        }
    }

    /// The answer of a chain that cannot go on (it broke, or panicked):
    /// like [`UpdateResponse::fill`], and a body chunk, last or not, gets
    /// `resp` as the early data reply that ends the transaction.
    pub fn ended(update: &TxUpdate, resp: &Response) -> Self {
        let mut r = Self::fill(update, resp);
        if update.body.is_some() {
            r.data = Some(resp.clone());
        }
        r
    }
}

/// TLS facts of a session, for trace headers and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

/// Facts about the SMTP session a transaction arrived on.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub listener: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub ehlo_host: Option<String>,
    pub esmtp: bool,
    pub tls: Option<TlsInfo>,
    pub auth_user: Option<String>,
}

/// Per-transaction facts fixed when the chain is built.
#[derive(Clone, Debug)]
pub struct TxContext {
    pub id: String,
    pub session: Arc<SessionInfo>,
    pub sender: String,
    pub tag: String,
    pub started: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_code_detection() {
        assert_eq!(
            Response::new(250, "2.1.0 ok").enhanced_code(),
            Some("2.1.0")
        );
        assert_eq!(
            Response::new(550, "5.1.10 null mx").enhanced_code(),
            Some("5.1.10")
        );
        assert_eq!(Response::new(250, "ok").enhanced_code(), None);
        assert_eq!(Response::new(250, "1.2.3 no").enhanced_code(), None);
        assert_eq!(Response::new(250, "2.1 no").enhanced_code(), None);
    }

    #[test]
    fn multiline_wire_form() {
        let mut out = Vec::new();
        Response::new(250, "first\nsecond").write_wire(&mut out);
        assert_eq!(out, b"250-first\r\n250 second\r\n");
        out.clear();
        Response::new(421, "4.3.2 bye").write_wire(&mut out);
        assert_eq!(out, b"421 4.3.2 bye\r\n");
    }

    #[test]
    fn fill_answers_everything_once() {
        let mut u = TxUpdate::mail(Mailbox::new("a@b"));
        u.rcpt_to = vec![Recipient::new(Mailbox::new("c@d")); 3];
        u.body = Some(BodyChunk {
            data: Bytes::new(),
            last: false,
        });
        let r = UpdateResponse::fill(&u, &Response::new(451, "x"));
        assert!(r.mail.is_some());
        assert_eq!(r.rcpts.len(), 3);
        assert!(r.data.is_none(), "non-final chunk gets no data response");
        let r = UpdateResponse::ended(&u, &Response::new(451, "x"));
        assert_eq!(
            r.data,
            Some(Response::new(451, "x")),
            "ended: an early data reply"
        );
        assert_eq!(r.rcpts.len(), 3);
    }
}
