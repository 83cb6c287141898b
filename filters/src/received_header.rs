//! `received_header` filter: prepends an RFC 5321 §4.4 trace line to the
//! message as its first chunk passes.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tower::{Layer, Service};

use koukan_chain::transaction::{Ingress, TxContext, TxUpdate, UpdateResponse};

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
    /// RFC 3848 protocol name, of the ingress the message first arrived
    /// on (for a stored transaction, the one it was stored from).
    fn protocol(&self) -> String {
        let ingress = &self.ctx.ingress;
        let mut proto = String::from(match ingress.original() {
            Some(Ingress::Http(_)) => "HTTP",
            _ if self.smtputf8 => "UTF8SMTP",
            Some(Ingress::Smtp(s)) if !s.esmtp => "SMTP",
            _ => "ESMTP",
        });
        if ingress.tls().is_some() {
            proto.push('S');
        }
        if ingress.auth_user().is_some() {
            proto.push('A');
        }
        proto
    }

    fn header(&self, now: chrono::DateTime<chrono::Local>) -> String {
        let ingress = &self.ctx.ingress;
        let mut clauses = Vec::new();
        // A message the proxy generated (a bounce) came from no client.
        if let Some(ip) = ingress.peer().map(|p| p.ip()) {
            let ip_literal = if ip.is_ipv6() {
                format!("[IPv6:{ip}]")
            } else {
                format!("[{ip}]")
            };
            let from = match ingress.smtp().and_then(|s| s.ehlo_host.as_ref()) {
                Some(ehlo) => format!("from {ehlo} ({ip_literal})"),
                None => format!("from {ip_literal}"),
            };
            clauses.push(from);
        }
        if !self.config.received_hostname.is_empty() {
            clauses.push(format!("by {}", self.config.received_hostname));
        }
        if ingress.original().is_some() {
            let mut with = format!("with {}", self.protocol());
            if let Some(tls) = ingress.tls() {
                with.push_str(&format!(
                    " (using {} with cipher {})",
                    tls.version, tls.cipher
                ));
            }
            clauses.push(with);
        }
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
    use koukan_chain::transaction::{HttpInfo, Mailbox, SessionInfo, StoredInfo, TlsInfo};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

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

    fn smtp(tls: bool, auth: bool) -> Ingress {
        Ingress::Smtp(Arc::new(SessionInfo {
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
        }))
    }

    fn ctx(tls: bool, auth: bool) -> Arc<TxContext> {
        Arc::new(TxContext::new("tx1", smtp(tls, auth), "s", "t"))
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

    /// Delivered from the store: the trace line describes the ingress it
    /// was stored from, TLS and AUTH included.
    #[tokio::test]
    async fn a_stored_transaction_keeps_its_original_facts() {
        let stored = Ingress::Stored(Arc::new(StoredInfo::new(
            "st1".into(),
            3,
            Some(smtp(true, true)),
            BTreeMap::new(),
        )));
        let msg = run(
            Arc::new(TxContext::new("st1", stored, "s", "t")),
            &["a@x"],
            false,
        )
        .await;
        assert!(
            msg.starts_with("Received: from mx1.example.org ([198.51.100.7])\r\n\tby relay1.example.net\r\n\twith ESMTPSA (using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\tid st1\r\n"),
            "{msg}"
        );
        // A bounce the proxy generated names no client and no protocol.
        let bounce = Ingress::Stored(Arc::new(StoredInfo::new(
            "b1".into(),
            1,
            None,
            BTreeMap::new(),
        )));
        let msg = run(
            Arc::new(TxContext::new("b1", bounce, "s", "t")),
            &["a@x"],
            false,
        )
        .await;
        assert!(
            msg.starts_with("Received: by relay1.example.net\r\n\tid b1\r\n\tfor <a@x>;\r\n"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn http_ingress_protocol() {
        let http = Ingress::Http(Arc::new(HttpInfo {
            listener: "api".into(),
            peer: "[2001:db8::1]:443".parse().unwrap(),
            local: "[2001:db8::2]:443".parse().unwrap(),
            tls: Some(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "X".into(),
            }),
            principal: Some("svc".into()),
        }));
        let msg = run(
            Arc::new(TxContext::new("h1", http, "s", "t")),
            &["a@x"],
            false,
        )
        .await;
        assert!(
            msg.starts_with("Received: from [IPv6:2001:db8::1]\r\n\tby relay1.example.net\r\n\twith HTTPSA (using TLSv1.3 with cipher X)\r\n"),
            "{msg}"
        );
    }
}
