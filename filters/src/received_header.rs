//! `received_header` filter: prepends an RFC 5321 §4.4 trace line to the
//! message as its first chunk passes.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tower::{Layer, Service};

use koukan_chain::transaction::{TxContext, TxUpdate, UpdateResponse};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceivedHeaderConfig {
    /// The `by` clause; omitted when empty.
    pub received_hostname: String,
}

#[derive(Clone, Debug)]
pub struct ReceivedHeaderLayer {
    config: Arc<ReceivedHeaderConfig>,
    ctx: Arc<TxContext>,
}

impl ReceivedHeaderLayer {
    pub fn new(config: Arc<ReceivedHeaderConfig>, ctx: Arc<TxContext>) -> Self {
        Self { config, ctx }
    }
}

impl<S> Layer<S> for ReceivedHeaderLayer {
    type Service = ReceivedHeader<S>;

    fn layer(&self, inner: S) -> ReceivedHeader<S> {
        ReceivedHeader {
            config: self.config.clone(),
            ctx: self.ctx.clone(),
            inner,
            smtputf8: false,
            rcpts: Vec::new(),
            prepended: false,
        }
    }
}

pub struct ReceivedHeader<S> {
    config: Arc<ReceivedHeaderConfig>,
    ctx: Arc<TxContext>,
    inner: S,
    smtputf8: bool,
    rcpts: Vec<String>,
    prepended: bool,
}

impl<S> ReceivedHeader<S> {
    /// RFC 3848 protocol name.
    fn protocol(&self) -> String {
        let s = &self.ctx.session;
        let mut proto = String::from(if self.smtputf8 {
            "UTF8SMTP"
        } else if s.esmtp {
            "ESMTP"
        } else {
            "SMTP"
        });
        if s.tls.is_some() {
            proto.push('S');
        }
        if s.auth_user.is_some() {
            proto.push('A');
        }
        proto
    }

    fn header(&self, now: chrono::DateTime<chrono::Local>) -> String {
        let s = &self.ctx.session;
        let mut clauses = Vec::new();
        let ip = s.peer.ip();
        let ip_literal = if ip.is_ipv6() {
            format!("[IPv6:{ip}]")
        } else {
            format!("[{ip}]")
        };
        let from = match &s.ehlo_host {
            Some(ehlo) => format!("from {ehlo} ({ip_literal})"),
            None => format!("from {ip_literal}"),
        };
        clauses.push(from);
        if !self.config.received_hostname.is_empty() {
            clauses.push(format!("by {}", self.config.received_hostname));
        }
        let mut with = format!("with {}", self.protocol());
        if let Some(tls) = &s.tls {
            with.push_str(&format!(
                " (using {} with cipher {})",
                tls.version, tls.cipher
            ));
        }
        clauses.push(with);
        clauses.push(format!("id {}", self.ctx.id));
        if let [rcpt] = self.rcpts.as_slice() {
            clauses.push(format!("for <{rcpt}>"));
        }
        format!(
            "Received: {};\r\n\t{}\r\n",
            clauses.join("\r\n\t"),
            now.to_rfc2822()
        )
    }
}

impl<S> Service<TxUpdate> for ReceivedHeader<S>
where
    S: Service<TxUpdate, Response = UpdateResponse, Error = Infallible>,
{
    type Response = UpdateResponse;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut update: TxUpdate) -> Self::Future {
        if let Some(mail) = &update.mail_from {
            self.smtputf8 = mail.param("SMTPUTF8").is_some();
        }
        self.rcpts
            .extend(update.rcpt_to.iter().map(|r| r.mailbox.address.clone()));
        if let Some(body) = update.body.as_mut().filter(|_| !self.prepended) {
            self.prepended = true;
            let header = self.header(chrono::Local::now());
            let mut data = BytesMut::with_capacity(header.len() + body.data.len());
            data.extend_from_slice(header.as_bytes());
            data.extend_from_slice(&body.data);
            body.data = Bytes::from(data);
        }
        self.inner.call(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koukan_chain::transaction::{Mailbox, SessionInfo, TlsInfo};
    use std::sync::Mutex;
    use std::time::SystemTime;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Service<TxUpdate> for Capture {
        type Response = UpdateResponse;
        type Error = Infallible;
        type Future = futures::future::Ready<Result<UpdateResponse, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, u: TxUpdate) -> Self::Future {
            if let Some(b) = &u.body {
                self.0.lock().unwrap().extend_from_slice(&b.data);
            }
            futures::future::ready(Ok(UpdateResponse::default()))
        }
    }

    fn ctx(tls: bool, auth: bool) -> Arc<TxContext> {
        Arc::new(TxContext {
            id: "tx1".into(),
            session: Arc::new(SessionInfo {
                listener: "mx".into(),
                peer: "198.51.100.7:50123".parse().unwrap(),
                local: "192.0.2.10:25".parse().unwrap(),
                ehlo_host: Some("mx1.example.org".into()),
                esmtp: true,
                tls: tls.then(|| TlsInfo {
                    version: "TLSv1.3".into(),
                    cipher: "TLS13_AES_128_GCM_SHA256".into(),
                }),
                auth_user: auth.then(|| "app".into()),
            }),
            sender: "s".into(),
            tag: "t".into(),
            started: SystemTime::now(),
        })
    }

    async fn run(ctx: Arc<TxContext>, rcpts: &[&str], smtputf8: bool) -> String {
        let cap = Capture::default();
        let cfg = Arc::new(ReceivedHeaderConfig {
            received_hostname: "relay1.example.net".into(),
        });
        let mut svc = ReceivedHeaderLayer::new(cfg, ctx).layer(cap.clone());
        let mut mail = Mailbox::new("a@example.org");
        if smtputf8 {
            mail = mail.with_param("SMTPUTF8", None);
        }
        svc.call(TxUpdate::mail(mail)).await.unwrap();
        svc.call(TxUpdate::rcpts(rcpts.iter().map(|r| Mailbox::new(*r))))
            .await
            .unwrap();
        svc.call(TxUpdate::body(&b"Subject: x\r\n\r\nhi\r\n"[..], false))
            .await
            .unwrap();
        svc.call(TxUpdate::body(&b"more\r\n"[..], true))
            .await
            .unwrap();
        String::from_utf8(cap.0.lock().unwrap().clone()).unwrap()
    }

    #[tokio::test]
    async fn trace_line_with_tls_auth_and_single_rcpt() {
        let msg = run(ctx(true, true), &["inbox@app.example.com"], false).await;
        let (header, rest) = msg.split_once("\r\n\t").unwrap();
        assert_eq!(header, "Received: from mx1.example.org ([198.51.100.7])");
        assert!(rest.starts_with("by relay1.example.net\r\n\twith ESMTPSA (using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\tid tx1\r\n\tfor <inbox@app.example.com>;\r\n\t"), "{rest}");
        assert!(msg.ends_with("\r\nSubject: x\r\n\r\nhi\r\nmore\r\n"));
        assert_eq!(msg.matches("Received:").count(), 1, "prepended once");
    }

    #[tokio::test]
    async fn protocol_names_and_for_clause() {
        let plain = run(ctx(false, false), &["a@x", "b@x"], false).await;
        assert!(plain.contains("with ESMTP\r\n"));
        assert!(!plain.contains("for <"), "no for clause with two rcpts");
        let utf8 = run(ctx(true, false), &["a@x"], true).await;
        assert!(utf8.contains("with UTF8SMTPS "));
    }
}
