//! Transaction, update and response types shared by every filter.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::body::BodySpools;
use crate::signals::Signals;

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

/// Facts about the HTTP request a transaction arrived on (the REST API).
#[derive(Clone, Debug)]
pub struct HttpInfo {
    pub listener: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<TlsInfo>,
    /// Who the request authenticated as, if it did.
    pub principal: Option<String>,
}

/// A transaction the scheduler replays from the store: the facts of the
/// ingress it was stored from, and which stored transaction and attempt
/// this is.
#[derive(Clone, Debug)]
pub struct StoredInfo {
    /// The stored transaction's id.
    pub id: String,
    /// 1-based: attempts started so far, this one included.
    pub attempt: u32,
    /// Where the message first arrived. `None` for a message the proxy
    /// generated itself (a bounce). Never itself `Stored`: a message stored
    /// again on its way out keeps its first ingress (see
    /// [`StoredInfo::new`]).
    pub original: Option<Ingress>,
    /// The signals recorded with the stored transaction, by name, as JSON:
    /// the typed values stayed with the process that received it.
    pub signals: BTreeMap<String, serde_json::Value>,
}

impl StoredInfo {
    /// Flattens a stored `original` to its own original, so that filters
    /// find the first ingress one step away however often the message was
    /// stored.
    pub fn new(
        id: String,
        attempt: u32,
        original: Option<Ingress>,
        signals: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        Self {
            id,
            attempt,
            original: original.and_then(|o| o.original().cloned()),
            signals,
        }
    }
}

/// Where a transaction came from: what policy filters and trace headers
/// need to know about the client, whichever way the message arrived.
#[derive(Clone, Debug)]
pub enum Ingress {
    /// An SMTP session, with its TLS and AUTH facts.
    Smtp(Arc<SessionInfo>),
    /// An HTTP request (the REST API).
    Http(Arc<HttpInfo>),
    /// Replayed from the store by the scheduler.
    Stored(Arc<StoredInfo>),
}

impl Ingress {
    /// The ingress the message first arrived on: this one, or for a stored
    /// transaction the one it was stored from (`None`: the proxy generated
    /// the message). The facts below are all read from it.
    pub fn original(&self) -> Option<&Ingress> {
        match self {
            Ingress::Stored(s) => s.original.as_ref().and_then(Ingress::original),
            other => Some(other),
        }
    }

    /// The stored transaction this is an attempt of, if it is one.
    pub fn stored(&self) -> Option<&StoredInfo> {
        match self {
            Ingress::Stored(s) => Some(s),
            _ => None,
        }
    }

    /// The SMTP session the message first arrived on, if it did over SMTP.
    pub fn smtp(&self) -> Option<&SessionInfo> {
        match self.original()? {
            Ingress::Smtp(s) => Some(s),
            _ => None,
        }
    }

    /// The HTTP request the message first arrived on, if it did over HTTP.
    pub fn http(&self) -> Option<&HttpInfo> {
        match self.original()? {
            Ingress::Http(h) => Some(h),
            _ => None,
        }
    }

    /// The listener the message first arrived on.
    pub fn listener(&self) -> Option<&str> {
        match self.original()? {
            Ingress::Smtp(s) => Some(&s.listener),
            Ingress::Http(h) => Some(&h.listener),
            Ingress::Stored(_) => None,
        }
    }

    /// The client's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self.original()? {
            Ingress::Smtp(s) => Some(s.peer),
            Ingress::Http(h) => Some(h.peer),
            Ingress::Stored(_) => None,
        }
    }

    /// Our address the client connected to.
    pub fn local(&self) -> Option<SocketAddr> {
        match self.original()? {
            Ingress::Smtp(s) => Some(s.local),
            Ingress::Http(h) => Some(h.local),
            Ingress::Stored(_) => None,
        }
    }

    /// The TLS the client used, if it did.
    pub fn tls(&self) -> Option<&TlsInfo> {
        match self.original()? {
            Ingress::Smtp(s) => s.tls.as_ref(),
            Ingress::Http(h) => h.tls.as_ref(),
            Ingress::Stored(_) => None,
        }
    }

    /// Who the client authenticated as: the SMTP AUTH identity or the HTTP
    /// principal.
    pub fn auth_user(&self) -> Option<&str> {
        match self.original()? {
            Ingress::Smtp(s) => s.auth_user.as_deref(),
            Ingress::Http(h) => h.principal.as_deref(),
            Ingress::Stored(_) => None,
        }
    }
}

/// Per-transaction facts fixed when the chain is built, and what filters
/// share while it runs (signals, the spooled message).
#[derive(Debug)]
pub struct TxContext {
    pub id: String,
    pub ingress: Ingress,
    pub sender: String,
    pub tag: String,
    pub started: SystemTime,
    /// Typed results filters attach for later filters and the stored
    /// record.
    pub signals: Signals,
    /// The spools of whole-message filters, so that two of them in one
    /// chain spool the message once.
    pub body: BodySpools,
}

impl TxContext {
    /// A context started now, with no signals yet.
    pub fn new(
        id: impl Into<String>,
        ingress: Ingress,
        sender: impl Into<String>,
        tag: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            ingress,
            sender: sender.into(),
            tag: tag.into(),
            started: SystemTime::now(),
            signals: Signals::default(),
            body: BodySpools::default(),
        }
    }
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

    fn smtp(tls: bool, auth: bool) -> Ingress {
        Ingress::Smtp(Arc::new(SessionInfo {
            listener: "submission".into(),
            peer: "198.51.100.7:50123".parse().unwrap(),
            local: "192.0.2.10:587".parse().unwrap(),
            ehlo_host: Some("client.example".into()),
            esmtp: true,
            tls: tls.then(|| TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
            }),
            auth_user: auth.then(|| "app".into()),
        }))
    }

    #[test]
    fn ingress_facts_of_each_kind() {
        let s = smtp(true, true);
        assert_eq!(s.peer(), Some("198.51.100.7:50123".parse().unwrap()));
        assert_eq!(s.local(), Some("192.0.2.10:587".parse().unwrap()));
        assert_eq!(s.listener(), Some("submission"));
        assert_eq!(s.tls().unwrap().version, "TLSv1.3");
        assert_eq!(s.auth_user(), Some("app"));
        assert!(s.smtp().is_some() && s.http().is_none() && s.stored().is_none());
        assert!(smtp(false, false).tls().is_none());
        assert!(smtp(false, false).auth_user().is_none());

        let h = Ingress::Http(Arc::new(HttpInfo {
            listener: "api".into(),
            peer: "203.0.113.5:40000".parse().unwrap(),
            local: "192.0.2.10:443".parse().unwrap(),
            tls: None,
            principal: Some("svc-billing".into()),
        }));
        assert_eq!(h.auth_user(), Some("svc-billing"));
        assert_eq!(h.listener(), Some("api"));
        assert!(h.http().is_some() && h.smtp().is_none());
    }

    #[test]
    fn a_stored_ingress_answers_with_its_original() {
        let stored = Ingress::Stored(Arc::new(StoredInfo::new(
            "t1".into(),
            2,
            Some(smtp(true, true)),
            BTreeMap::new(),
        )));
        assert_eq!(stored.stored().unwrap().attempt, 2);
        assert_eq!(stored.tls().unwrap().cipher, "TLS13_AES_128_GCM_SHA256");
        assert_eq!(stored.auth_user(), Some("app"));
        assert_eq!(
            stored.smtp().unwrap().ehlo_host.as_deref(),
            Some("client.example")
        );
        // Stored again: still one step from the first ingress.
        let again = StoredInfo::new("t2".into(), 1, Some(stored), BTreeMap::new());
        assert!(matches!(again.original, Some(Ingress::Smtp(_))));
        // Generated by the proxy: no facts.
        let bounce = Ingress::Stored(Arc::new(StoredInfo::new(
            "t3".into(),
            1,
            None,
            BTreeMap::new(),
        )));
        assert!(bounce.original().is_none());
        assert!(bounce.peer().is_none() && bounce.listener().is_none());
        assert!(bounce.stored().is_some());
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
