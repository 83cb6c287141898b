//! STARTTLS, implicit TLS and AUTH.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::*;

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn plain(user: &str, pass: &str) -> String {
    b64(&format!("\0{user}\0{pass}"))
}

async fn starttls(
    srv: &Server,
    tls: &Tls,
    mut c: Client<TcpStream>,
) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 ready to start TLS");
    let _ = srv;
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    Client::new(connector.connect(name, c.into_inner()).await.unwrap())
}

fn tls_config(tls: &Tls) -> koukan_smtp_server::SessionConfig {
    let mut cfg = config();
    cfg.tls = Some(tls.server.clone());
    cfg.auth = Some(secrets());
    cfg
}

#[tokio::test]
async fn starttls_changes_capabilities_and_resets_the_session() {
    let tls = tls();
    let srv = start(tls_config(&tls), TestFactory::new()).await;
    let mut c = srv.session().await;
    let before = c.ehlo().await;
    assert!(before.contains("\n250-STARTTLS\n"), "{before}");
    assert!(!before.contains("AUTH"), "no AUTH in clear: {before}");
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await, "250 2.1.0 sender ok");

    let mut c = starttls(&srv, &tls, c).await;
    // RFC 3207: the client must say EHLO again; the old transaction is gone.
    assert_eq!(
        c.cmd("MAIL FROM:<a@b>").await,
        "503 5.5.1 send EHLO or HELO first"
    );
    assert_eq!(srv.record.dropped(), 1);
    let after = c.ehlo().await;
    assert!(!after.contains("STARTTLS"), "{after}");
    assert!(after.contains("\n250-AUTH PLAIN LOGIN\n"), "{after}");
    assert_eq!(c.cmd("STARTTLS").await, "503 5.5.1 TLS already active");
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await, "250 2.1.0 sender ok");
    let sessions = srv.record.sessions.lock().unwrap().clone();
    let info = sessions.last().unwrap().tls.clone().expect("TLS info");
    assert_eq!(info.version, "TLSv1.3");
    assert!(info.cipher.starts_with("TLS13_"), "{}", info.cipher);
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let tls = tls();
    let srv = start(tls_config(&tls), TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    // An injected command riding behind STARTTLS in the same packet.
    c.send("STARTTLS\r\nMAIL FROM:<attacker@evil.example>\r\n")
        .await;
    assert_eq!(c.reply().await, "220 2.0.0 ready to start TLS");
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = Client::new(connector.connect(name, c.into_inner()).await.unwrap());
    // The first reply inside TLS is to our NOOP, not to the injected MAIL.
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert!(srv.record.sessions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn implicit_tls_session() {
    let tls = tls();
    let mut cfg = tls_config(&tls);
    cfg.implicit_tls = true;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = srv.tls_connect(&tls).await;
    assert_eq!(c.reply().await, "220 mx.test.example ESMTP koukan");
    let ehlo = c.ehlo().await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(c.cmd("STARTTLS").await, "502 5.5.1 command not implemented");
    c.cmd("MAIL FROM:<a@b>").await;
    c.cmd("RCPT TO:<c@d>").await;
    c.cmd("DATA").await;
    c.send("hi\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    let info = srv.record.sessions.lock().unwrap()[0].clone();
    assert_eq!(info.tls.as_ref().unwrap().version, "TLSv1.3");
}

#[tokio::test]
async fn junk_handshakes_end_only_their_connection() {
    let tls = tls();
    let mut cfg = tls_config(&tls);
    cfg.implicit_tls = true;
    let srv = start(cfg, TestFactory::new()).await;
    let mut junk = srv.connect().await;
    junk.send("EHLO this is not TLS\r\n\r\n").await;
    junk.io.flush().await.unwrap();
    // The server drops it (it may send a TLS alert first, never SMTP).
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        IO_TIMEOUT,
        tokio::io::AsyncReadExt::read_to_end(&mut junk.io, &mut buf),
    )
    .await
    .expect("junk connection closed");
    assert!(!buf.starts_with(b"220"));

    let mut c = srv.tls_connect(&tls).await;
    assert_eq!(c.reply().await, "220 mx.test.example ESMTP koukan");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 bye");

    // Same after STARTTLS on a STARTTLS listener.
    let srv = start(tls_config(&tls), TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 ready to start TLS");
    c.send(b"\x16\x03\x01\x00\x05junkjunkjunk").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        IO_TIMEOUT,
        tokio::io::AsyncReadExt::read_to_end(&mut c.io, &mut buf),
    )
    .await
    .expect("closed after bad handshake");
    let mut c = srv.session().await;
    assert_eq!(c.ehlo().await.lines().next(), Some("250-mx.test.example"));
}

#[tokio::test]
async fn auth_plain_good_bad_and_repeated() {
    let tls = tls();
    let srv = start(tls_config(&tls), TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    let mut c = starttls(&srv, &tls, c).await;
    c.ehlo().await;
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", plain("alice", "wrong")))
            .await,
        "535 5.7.8 authentication credentials invalid"
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", plain("mallory", "wonderland")))
            .await,
        "535 5.7.8 authentication credentials invalid"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN !!notbase64").await,
        "501 5.5.2 invalid base64 data"
    );
    assert_eq!(
        c.cmd("AUTH CRAM-MD5").await,
        "504 5.5.4 unrecognized authentication mechanism"
    );
    // Without initial response: empty challenge, answer on its own line.
    assert_eq!(c.cmd("AUTH PLAIN").await, "334 ");
    assert_eq!(c.cmd("*").await, "501 5.7.0 authentication cancelled");
    assert_eq!(c.cmd("AUTH PLAIN").await, "334 ");
    assert_eq!(
        c.cmd(&plain("alice", "wonderland")).await,
        "235 2.7.0 authentication successful"
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", plain("alice", "wonderland")))
            .await,
        "503 5.5.1 already authenticated"
    );
    c.cmd("MAIL FROM:<alice@example.org>").await;
    let info = srv.record.sessions.lock().unwrap()[0].clone();
    assert_eq!(info.auth_user.as_deref(), Some("alice"));
}

#[tokio::test]
async fn auth_login_good_and_bad() {
    let tls = tls();
    let mut cfg = tls_config(&tls);
    cfg.implicit_tls = true;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = srv.tls_connect(&tls).await;
    c.reply().await;
    c.ehlo().await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("alice")).await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        c.cmd(&b64("nope")).await,
        "535 5.7.8 authentication credentials invalid"
    );
    // With the user name as initial response.
    assert_eq!(
        c.cmd(&format!("AUTH LOGIN {}", b64("alice"))).await,
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.cmd(&b64("wonderland")).await,
        "235 2.7.0 authentication successful"
    );
}

#[tokio::test]
async fn auth_needs_tls_unless_loopback_opt_out() {
    let tls = tls();
    let srv = start(tls_config(&tls), TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", plain("alice", "wonderland")))
            .await,
        "538 5.7.11 encryption required for requested authentication mechanism"
    );

    // The opt-out: plaintext AUTH from loopback (our test client is).
    let mut cfg = config();
    cfg.auth = Some(secrets());
    cfg.auth_allow_plaintext_loopback = true;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = srv.session().await;
    assert!(c.ehlo().await.contains("\n250-AUTH PLAIN LOGIN\n"));
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", plain("alice", "wonderland")))
            .await,
        "235 2.7.0 authentication successful"
    );
}

#[tokio::test]
async fn require_auth_refuses_mail_before_auth() {
    let mut cfg = config();
    cfg.auth = Some(secrets());
    cfg.auth_allow_plaintext_loopback = true;
    cfg.require_auth = true;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@b>").await,
        "530 5.7.0 authentication required"
    );
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "wonderland")))
        .await;
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await, "250 2.1.0 sender ok");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", plain("alice", "wonderland")))
            .await,
        "503 5.5.1 already authenticated"
    );
}
