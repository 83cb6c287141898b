//! STARTTLS, implicit TLS and AUTH.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use koukan_smtp_server::{AuthFailureLimits, AuthFailurePolicy, AuthFailureTracker};
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

/// A plaintext loopback listener with AUTH and failure limits of small
/// numbers and short durations.
fn limited(policy: AuthFailurePolicy) -> koukan_smtp_server::SessionConfig {
    let mut cfg = config();
    cfg.auth = Some(secrets());
    cfg.auth_allow_plaintext_loopback = true;
    cfg.auth_failures = Some(AuthFailureLimits {
        policy,
        tracker: Arc::new(AuthFailureTracker::new()),
    });
    cfg
}

/// One AUTH PLAIN from `ip` on a fresh connection; returns the reply and
/// how long it took.
async fn auth_from(srv: &Server, ip: &str, user: &str, pass: &str) -> (String, Duration) {
    let mut c = srv.connect_from(ip).await;
    c.reply().await;
    c.ehlo().await;
    let start = Instant::now();
    let r = c.cmd(&format!("AUTH PLAIN {}", plain(user, pass))).await;
    (r, start.elapsed())
}

const LOCKED: &str = "454 4.7.0 too many authentication failures, try again later";
const WRONG: &str = "535 5.7.8 authentication credentials invalid";
const OK: &str = "235 2.7.0 authentication successful";

#[tokio::test]
async fn auth_failures_lock_the_address_out_across_connections() {
    let policy = AuthFailurePolicy {
        max_failures_per_address: 3,
        max_failures_per_user: 100,
        window: Duration::from_secs(60),
        lockout: Duration::from_secs(60),
        delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(150),
    };
    let srv = start(limited(policy), TestFactory::new()).await;
    // One wrong password per connection, each answered later than the
    // one before (lower bounds only: 50, 100, 150 ms).
    for (i, min_ms) in [50, 100, 150].into_iter().enumerate() {
        let (r, took) = auth_from(&srv, "127.0.0.2", "alice", &format!("guess{i}")).await;
        assert_eq!(r, WRONG);
        assert!(
            took >= Duration::from_millis(min_ms),
            "failure {i}: {took:?}"
        );
    }
    // Locked: refused whatever the password, as any user, without the
    // password being checked (the right one gets 454 too; without an
    // initial response the secret is not even asked for).
    assert_eq!(
        auth_from(&srv, "127.0.0.2", "alice", "guess3").await.0,
        LOCKED
    );
    assert_eq!(
        auth_from(&srv, "127.0.0.2", "alice", "wonderland").await.0,
        LOCKED
    );
    let mut c = srv.connect_from("127.0.0.2").await;
    c.reply().await;
    c.ehlo().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, LOCKED);
    assert_eq!(c.cmd("AUTH LOGIN").await, LOCKED);
    // The session itself goes on.
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    // Another address with the right password is not affected.
    assert_eq!(
        auth_from(&srv, "127.0.0.3", "alice", "wonderland").await.0,
        OK
    );

    let m = srv.metrics_text();
    for line in [
        r#"smtp_auth_failures_total{listener="test"} 3"#,
        r#"smtp_auth_lockouts_total{listener="test",scope="address"} 1"#,
        r#"smtp_auth_lockout_refusals_total{listener="test",scope="address"} 4"#,
        r#"smtp_commands_rejected_total{listener="test",reason="auth_locked"} 4"#,
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    assert!(!m.contains(r#"scope="user""#), "{m}");
}

#[tokio::test]
async fn user_lockout_spares_the_known_good_address() {
    let policy = AuthFailurePolicy {
        max_failures_per_address: 100,
        max_failures_per_user: 3,
        window: Duration::from_secs(60),
        lockout: Duration::from_secs(60),
        delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
    };
    let srv = start(limited(policy), TestFactory::new()).await;
    // The application authenticates from 127.0.0.4.
    assert_eq!(
        auth_from(&srv, "127.0.0.4", "alice", "wonderland").await.0,
        OK
    );
    // Guesses at its user name from three other addresses lock the user.
    for ip in ["127.0.0.5", "127.0.0.6", "127.0.0.7"] {
        assert_eq!(auth_from(&srv, ip, "alice", "guess").await.0, WRONG);
    }
    // A new address is refused even with the right password...
    assert_eq!(
        auth_from(&srv, "127.0.0.8", "alice", "wonderland").await.0,
        LOCKED
    );
    // ...also through LOGIN, once the user name is known.
    let mut c = srv.connect_from("127.0.0.8").await;
    c.reply().await;
    c.ehlo().await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("alice")).await, "334 UGFzc3dvcmQ6");
    assert_eq!(c.cmd(&b64("wonderland")).await, LOCKED);
    // Other users are not locked.
    assert_eq!(auth_from(&srv, "127.0.0.8", "mallory", "x").await.0, WRONG);
    // The known-good address keeps working.
    assert_eq!(
        auth_from(&srv, "127.0.0.4", "alice", "wonderland").await.0,
        OK
    );
    assert_eq!(
        auth_from(&srv, "127.0.0.4", "alice", "wonderland").await.0,
        OK
    );

    let m = srv.metrics_text();
    for line in [
        r#"smtp_auth_failures_total{listener="test"} 4"#,
        r#"smtp_auth_lockouts_total{listener="test",scope="user"} 1"#,
        r#"smtp_auth_lockout_refusals_total{listener="test",scope="user"} 2"#,
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
}

#[tokio::test]
async fn listeners_share_one_tracker() {
    let policy = AuthFailurePolicy {
        max_failures_per_address: 2,
        delay: Duration::from_millis(1),
        ..AuthFailurePolicy::default()
    };
    let tracker = Arc::new(AuthFailureTracker::new());
    let mut servers = Vec::new();
    for name in ["one", "two"] {
        let mut cfg = limited(policy.clone());
        cfg.listener_name = name.to_owned();
        cfg.auth_failures.as_mut().unwrap().tracker = tracker.clone();
        servers.push(start(cfg, TestFactory::new()).await);
    }
    assert_eq!(
        auth_from(&servers[0], "127.0.0.9", "alice", "x").await.0,
        WRONG
    );
    assert_eq!(
        auth_from(&servers[1], "127.0.0.9", "alice", "y").await.0,
        WRONG
    );
    // Locked on both, by failures split between them.
    assert_eq!(
        auth_from(&servers[0], "127.0.0.9", "alice", "z").await.0,
        LOCKED
    );
    assert_eq!(
        auth_from(&servers[1], "127.0.0.9", "alice", "z").await.0,
        LOCKED
    );
    assert!(
        servers[1]
            .metrics_text()
            .contains(r#"smtp_auth_lockouts_total{listener="two",scope="address"} 1"#)
    );
}
