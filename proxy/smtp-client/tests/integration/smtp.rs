//! SMTP behaviour: verbatim replies, pipelining, BDAT, DATA encoding,
//! capability checks, host fallback, TLS, failures.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use koukan_chain::transaction::{Mailbox, Recipient, TxUpdate};
use koukan_smtp_client::{TlsMode, tls_client_config};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::smtp_server::{Script, SmtpServer};
use crate::*;

fn body(data: &str, last: bool) -> TxUpdate {
    TxUpdate::body(Bytes::from(data.to_owned()), last)
}

fn server_tls(cert: CertificateDer<'static>, key: &KeyPair) -> Arc<rustls::ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap(),
    )
}

pub fn self_signed_tls() -> Arc<rustls::ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["mx.test".to_owned()]).unwrap();
    server_tls(ck.cert.der().clone(), &ck.signing_key)
}

#[tokio::test]
async fn delivers_with_data_and_passes_replies_through() {
    let srv = SmtpServer::start(Script::new()).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));

    let resp = send(&mut c, envelope("a@x.test", &["b@y.test", "c@y.test"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(
        resp.rcpts,
        vec![r(250, "2.1.5 recipient ok"), r(250, "2.1.5 recipient ok")]
    );
    assert_eq!(resp.data, None);

    let resp = send(&mut c, body("Subject: hi\r\n\r\nhello\r\n", true)).await;
    assert_eq!(resp.mail, None);
    assert_eq!(resp.data, Some(r(250, "2.0.0 queued as T1")));

    let log = srv.wait_quit(0).await;
    assert_eq!(
        log.commands,
        [
            "EHLO client.test",
            "MAIL FROM:<a@x.test>",
            "RCPT TO:<b@y.test>",
            "RCPT TO:<c@y.test>",
            "DATA",
            "QUIT"
        ]
    );
    assert_eq!(log.data, b"Subject: hi\r\n\r\nhello\r\n.\r\n");
    assert!(!log.tls);
}

#[tokio::test]
async fn failure_replies_are_verbatim_including_multiline() {
    let srv = SmtpServer::start(
        Script::new()
            .reply("MAIL", "250-2.1.0 first line\r\n250 2.1.0 second line")
            .reply(
                "RCPT",
                "550-5.1.1 no such user\r\n550 5.1.1 try again never",
            )
            .reply("RCPT", "451 4.3.0 busy, come back")
            .reply(
                ".",
                "552-5.3.4 too big\r\n552-5.3.4 really\r\n552 5.3.4 bye",
            ),
    )
    .await;
    let mut c = client(test_config(), hosts(&[srv.addr]));

    let resp = send(&mut c, envelope("a@x.test", &["b@y", "c@y", "d@y"])).await;
    assert_eq!(
        resp.mail,
        Some(r(250, "2.1.0 first line\n2.1.0 second line"))
    );
    assert_eq!(
        resp.rcpts,
        vec![
            r(550, "5.1.1 no such user\n5.1.1 try again never"),
            r(451, "4.3.0 busy, come back"),
            r(250, "2.1.5 recipient ok"),
        ]
    );
    let resp = send(&mut c, body("x\r\n", true)).await;
    assert_eq!(
        resp.data,
        Some(r(552, "5.3.4 too big\n5.3.4 really\n5.3.4 bye"))
    );
}

#[tokio::test]
async fn data_rejection_is_verbatim() {
    let srv = SmtpServer::start(Script::new().reply("DATA", "554 5.7.1 not today")).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["b@y"])).await;
    // Returned on the first (non-final) chunk so the caller can stop.
    let resp = send(&mut c, body("x\r\n", false)).await;
    assert_eq!(resp.data, Some(r(554, "5.7.1 not today")));
    let resp = send(&mut c, body("y\r\n", true)).await;
    assert_eq!(resp.data, Some(r(554, "5.7.1 not today")));
}

#[tokio::test]
async fn mail_rejection_fails_everything_after_it() {
    let srv = SmtpServer::start(Script::new().reply("MAIL", "550 5.7.1 sender rejected")).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));

    let resp = send(&mut c, envelope("a@x", &["b@y", "c@y"])).await;
    let rejected = r(550, "5.7.1 sender rejected");
    assert_eq!(resp.mail, Some(rejected.clone()));
    assert_eq!(resp.rcpts, vec![rejected.clone(), rejected.clone()]);

    let resp = send(&mut c, TxUpdate::rcpts([Mailbox::new("d@y")])).await;
    assert_eq!(resp.rcpts, vec![rejected.clone()]);
    let resp = send(&mut c, body("x\r\n", true)).await;
    assert_eq!(resp.data, Some(rejected));

    let log = srv.wait_quit(0).await;
    assert_eq!(log.verbs(), ["EHLO", "MAIL", "QUIT"]);
}

#[tokio::test]
async fn pipelining_sends_mail_and_rcpts_in_one_write() {
    let srv = SmtpServer::start(
        Script::new()
            .ext("PIPELINING")
            .reply("RCPT", "250 2.1.5 first")
            .reply("RCPT", "550 5.1.1 second unknown")
            .reply("RCPT", "250 2.1.5 third")
            .reply("RCPT", "452 4.5.3 fourth: too many")
            .reply("RCPT", "250 2.1.5 fifth"),
    )
    .await;
    let mut c = client(test_config(), hosts(&[srv.addr]));

    let resp = send(&mut c, envelope("a@x", &["1@y", "2@y", "3@y"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(
        resp.rcpts,
        vec![
            r(250, "2.1.5 first"),
            r(550, "5.1.1 second unknown"),
            r(250, "2.1.5 third")
        ]
    );
    let resp = send(
        &mut c,
        TxUpdate::rcpts([Mailbox::new("4@y"), Mailbox::new("5@y")]),
    )
    .await;
    assert_eq!(
        resp.rcpts,
        vec![r(452, "4.5.3 fourth: too many"), r(250, "2.1.5 fifth")]
    );

    let log = &srv.conns()[0];
    assert_eq!(
        log.verbs(),
        ["EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "RCPT", "RCPT"]
    );
    // MAIL and the three RCPTs arrived in one read, the later two in another.
    let reads = &log.reads;
    assert!(reads[1..5].iter().all(|&n| n == reads[1]), "{reads:?}");
    assert_eq!(reads[5], reads[6], "{reads:?}");
    assert_ne!(reads[4], reads[5], "{reads:?}");
}

#[tokio::test]
async fn without_pipelining_commands_wait_for_replies() {
    let srv = SmtpServer::start(Script::new()).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["1@y", "2@y"])).await;
    let reads = srv.conns()[0].reads.clone();
    assert_eq!(reads.len(), 4);
    assert!(reads[1] < reads[2] && reads[2] < reads[3], "{reads:?}");
}

#[tokio::test]
async fn bdat_when_chunking_is_offered() {
    let srv = SmtpServer::start(Script::new().ext("CHUNKING")).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(send(&mut c, body("abc\r\n", false)).await.data, None);
    assert_eq!(send(&mut c, body("", false)).await.data, None);
    let resp = send(&mut c, body(".dot\r\n", true)).await;
    assert_eq!(resp.data, Some(r(250, "2.0.0 6 octets received")));

    let log = srv.wait_quit(0).await;
    assert_eq!(
        log.commands[2..],
        ["RCPT TO:<b@y>", "BDAT 5", "BDAT 6 LAST", "QUIT"]
    );
    // BDAT is not dot-stuffed.
    assert_eq!(log.bdat, [b"abc\r\n".to_vec(), b".dot\r\n".to_vec()]);
}

#[tokio::test]
async fn bdat_empty_last_chunk() {
    let srv = SmtpServer::start(Script::new().ext("CHUNKING")).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["b@y"])).await;
    send(&mut c, body("abc\r\n", false)).await;
    let resp = send(&mut c, body("", true)).await;
    assert_eq!(resp.data, Some(r(250, "2.0.0 0 octets received")));
    let log = srv.wait_quit(0).await;
    assert_eq!(log.commands[3..], ["BDAT 5", "BDAT 0 LAST", "QUIT"]);
}

#[tokio::test]
async fn failed_bdat_is_returned_immediately() {
    let srv = SmtpServer::start(
        Script::new()
            .ext("CHUNKING")
            .reply("BDAT", "552-5.3.4 chunk too big\r\n552 5.3.4 sorry"),
    )
    .await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["b@y"])).await;
    let resp = send(&mut c, body("abc\r\n", false)).await;
    assert_eq!(resp.data, Some(r(552, "5.3.4 chunk too big\n5.3.4 sorry")));
    let log = srv.wait_quit(0).await;
    assert_eq!(log.verbs()[3..], ["BDAT", "QUIT"]);
}

#[tokio::test]
async fn chunking_can_be_turned_off() {
    let srv = SmtpServer::start(Script::new().ext("CHUNKING")).await;
    let cfg = koukan_smtp_client::ClientConfig {
        use_chunking: false,
        ..test_config()
    };
    let mut c = client(cfg, hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["b@y"])).await;
    let resp = send(&mut c, body("abc\r\n", true)).await;
    assert_eq!(resp.data, Some(r(250, "2.0.0 queued as T1")));
    assert_eq!(srv.wait_quit(0).await.verbs()[3], "DATA");
}

#[tokio::test]
async fn data_is_dot_stuffed_across_chunk_boundaries() {
    let srv = SmtpServer::start(Script::new()).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["b@y"])).await;
    for piece in ["a\r\n", ".foo\r\n", "bar\r", "\n.baz\r\n.", "\r\nlast line"] {
        assert_eq!(send(&mut c, body(piece, false)).await.data, None);
    }
    let resp = send(&mut c, body("", true)).await;
    assert_eq!(resp.data, Some(r(250, "2.0.0 queued as T1")));
    let log = srv.wait_quit(0).await;
    assert_eq!(
        String::from_utf8(log.data).unwrap(),
        "a\r\n..foo\r\nbar\r\n..baz\r\n..\r\nlast line\r\n.\r\n"
    );
}

#[tokio::test]
async fn body_streams_in_pieces() {
    let srv = SmtpServer::start(Script::new()).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["b@y"])).await;
    let line = format!("{}\r\n", "x".repeat(998));
    let piece = line.repeat(64);
    for _ in 0..63 {
        assert_eq!(send(&mut c, body(&piece, false)).await.data, None);
    }
    let resp = send(&mut c, body(&piece, true)).await;
    assert_eq!(resp.data, Some(r(250, "2.0.0 queued as T1")));
    let log = srv.wait_quit(0).await;
    assert_eq!(log.data.len(), piece.len() * 64 + 3);
}

#[tokio::test]
async fn smtputf8_is_never_downgraded() {
    let srv = SmtpServer::start(Script::new().ext("8BITMIME")).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    let mut u = TxUpdate::mail(Mailbox::new("ü@x.test").with_param("SMTPUTF8", None));
    u.rcpt_to = vec![Recipient::new(Mailbox::new("b@y"))];
    let resp = send(&mut c, u).await;
    let expected = r(550, "5.6.7 upstream does not support SMTPUTF8");
    assert_eq!(resp.mail, Some(expected.clone()));
    assert_eq!(resp.rcpts, vec![expected.clone()]);
    assert_eq!(send(&mut c, body("x\r\n", true)).await.data, Some(expected));
    let log = srv.wait_quit(0).await;
    assert_eq!(
        log.verbs(),
        ["EHLO", "QUIT"],
        "nothing of the transaction sent"
    );
}

#[tokio::test]
async fn smtputf8_passes_when_offered() {
    let srv = SmtpServer::start(Script::new().ext("SMTPUTF8").ext("8BITMIME")).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    let mut u = TxUpdate::mail(
        Mailbox::new("ü@x.test")
            .with_param("SMTPUTF8", None)
            .with_param("BODY", Some("8BITMIME")),
    );
    u.rcpt_to = vec![Recipient::new(Mailbox::new("ö@y.test"))];
    let resp = send(&mut c, u).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(
        srv.conns()[0].commands[1..],
        [
            "MAIL FROM:<ü@x.test> SMTPUTF8 BODY=8BITMIME",
            "RCPT TO:<ö@y.test>"
        ]
    );
}

#[tokio::test]
async fn eightbitmime_required_but_not_offered() {
    let srv = SmtpServer::start(Script::new().ext("SMTPUTF8")).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    let u = TxUpdate::mail(Mailbox::new("a@x").with_param("BODY", Some("8BITMIME")));
    let resp = send(&mut c, u).await;
    assert_eq!(
        resp.mail,
        Some(r(550, "5.6.3 upstream does not support 8BITMIME"))
    );
    assert_eq!(srv.wait_quit(0).await.verbs(), ["EHLO", "QUIT"]);
}

#[tokio::test]
async fn size_is_checked_against_the_peer_limit() {
    let srv = SmtpServer::start(Script::new().ext("SIZE 1000")).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    let u = TxUpdate::mail(Mailbox::new("a@x").with_param("SIZE", Some("5000")));
    let resp = send(&mut c, u).await;
    assert_eq!(
        resp.mail,
        Some(r(
            552,
            "5.3.4 message size 5000 exceeds upstream limit 1000"
        ))
    );
    assert_eq!(srv.wait_quit(0).await.verbs(), ["EHLO", "QUIT"]);

    let mut c = client(test_config(), hosts(&[srv.addr]));
    let u = TxUpdate::mail(Mailbox::new("a@x").with_param("SIZE", Some("999")));
    assert_eq!(send(&mut c, u).await.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(srv.conns()[1].commands[1], "MAIL FROM:<a@x> SIZE=999");
}

#[tokio::test]
async fn size_is_dropped_when_the_peer_has_no_size() {
    let srv = SmtpServer::start(Script::new()).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    let u = TxUpdate::mail(Mailbox::new("a@x").with_param("SIZE", Some("5000")));
    assert_eq!(send(&mut c, u).await.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(srv.conns()[0].commands[1], "MAIL FROM:<a@x>");
}

#[tokio::test]
async fn next_host_when_connection_is_refused() {
    let dead = refused_addr().await;
    let srv = SmtpServer::start(Script::new()).await;
    let mut c = client(test_config(), hosts(&[dead, srv.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(srv.conns().len(), 1);
}

#[tokio::test]
async fn next_host_on_421_greeting() {
    let busy = SmtpServer::start(Script::new().greeting("421 4.3.2 too busy")).await;
    let srv = SmtpServer::start(Script::new()).await;
    let mut c = client(test_config(), hosts(&[busy.addr, srv.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(busy.conns().len(), 1);
    assert_eq!(srv.conns()[0].verbs(), ["EHLO", "MAIL", "RCPT"]);
}

#[tokio::test]
async fn next_host_on_4xx_ehlo() {
    let busy = SmtpServer::start(Script::new().ehlo_reply("421 4.3.2 shutting down")).await;
    let srv = SmtpServer::start(Script::new()).await;
    let mut c = client(test_config(), hosts(&[busy.addr, srv.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(busy.conns()[0].verbs()[..1], ["EHLO"]);
}

#[tokio::test]
async fn all_hosts_failing_is_temporary() {
    let dead = refused_addr().await;
    let busy = SmtpServer::start(Script::new().greeting("554 5.3.2 go away")).await;
    let mut c = client(test_config(), hosts(&[busy.addr, dead]));
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    let mail = resp.mail.unwrap();
    assert_eq!(mail.code, 451);
    let prefix = format!("4.4.1 no upstream host reachable: {dead}: connect: ");
    assert!(mail.text.starts_with(&prefix), "{mail}");
    assert_eq!(resp.rcpts, vec![mail.clone()]);
    assert_eq!(send(&mut c, body("x\r\n", true)).await.data, Some(mail));

    // The last host decides the message.
    let mut c = client(test_config(), hosts(&[dead, busy.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(
        resp.mail,
        Some(r(
            451,
            &format!(
                "4.4.1 no upstream host reachable: {}: greeting: 554 5.3.2 go away",
                busy.addr
            )
        ))
    );
}

#[tokio::test]
async fn max_hosts_limits_attempts() {
    let dead = refused_addr().await;
    let srv = SmtpServer::start(Script::new()).await;
    let cfg = koukan_smtp_client::ClientConfig {
        max_hosts: 1,
        ..test_config()
    };
    let mut c = client(cfg, hosts(&[dead, srv.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(resp.mail.unwrap().code, 451);
    assert!(srv.conns().is_empty());
}

#[tokio::test]
async fn helo_when_ehlo_is_rejected() {
    let srv = SmtpServer::start(Script::new().ehlo_reply("502 5.5.1 EHLO not implemented")).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(
        srv.conns()[0].commands[..3],
        ["EHLO client.test", "HELO client.test", "MAIL FROM:<a@x>"]
    );
}

#[tokio::test]
async fn opportunistic_starttls_with_self_signed_cert() {
    let srv = SmtpServer::start(Script::new().ext("PIPELINING").tls(self_signed_tls())).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(
        send(&mut c, body("hi\r\n", true)).await.data,
        Some(r(250, "2.0.0 queued as T1"))
    );
    let log = srv.wait_quit(0).await;
    assert!(log.tls);
    assert_eq!(
        log.verbs(),
        ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    );
}

#[tokio::test]
async fn opportunistic_does_not_fall_back_after_a_failed_starttls() {
    let srv = SmtpServer::start(
        Script::new()
            .tls(self_signed_tls())
            .reply("STARTTLS", "454 4.7.0 TLS not available"),
    )
    .await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(
        resp.mail,
        Some(r(
            451,
            &format!(
                "4.7.5 no upstream host reachable: {}: STARTTLS: 454 4.7.0 TLS not available",
                srv.addr
            )
        ))
    );
}

#[tokio::test]
async fn disabled_tls_ignores_starttls() {
    let srv = SmtpServer::start(Script::new().tls(self_signed_tls())).await;
    let cfg = koukan_smtp_client::ClientConfig {
        tls: TlsMode::Disabled,
        ..test_config()
    };
    let mut c = client(cfg, hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(srv.conns()[0].verbs(), ["EHLO", "MAIL", "RCPT"]);
}

#[tokio::test]
async fn required_tls_without_starttls_is_a_temporary_failure() {
    let srv = SmtpServer::start(Script::new()).await;
    let cfg = koukan_smtp_client::ClientConfig {
        tls: TlsMode::Required,
        ..test_config()
    };
    let mut c = client(cfg, hosts(&[srv.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    let expected = r(
        451,
        &format!(
            "4.7.4 no upstream host reachable: {}: STARTTLS required but not offered",
            srv.addr
        ),
    );
    assert_eq!(resp.mail, Some(expected.clone()));
    assert_eq!(resp.rcpts, vec![expected]);
    assert_eq!(srv.wait_quit(0).await.verbs(), ["EHLO", "QUIT"]);
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn ca_signed() -> (String, Arc<rustls::ServerConfig>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), server_tls(cert.der().clone(), &key))
}

#[tokio::test]
async fn required_tls_with_verified_certificate() {
    let (ca_pem, server_cfg) = ca_signed();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    let srv = SmtpServer::start(Script::new().tls(server_cfg)).await;
    let cfg = koukan_smtp_client::ClientConfig {
        tls: TlsMode::Required,
        ..test_config()
    };
    let verifying = tls_client_config(true, Some(&ca_file)).unwrap();
    let mut c = client_with(
        cfg.clone(),
        hosts(&[srv.addr]),
        verifying,
        koukan_smtp_client::Resolver::new(vec![]),
    );
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert!(srv.conns()[0].tls);

    // Without the CA the same certificate fails verification.
    let strict = tls_client_config(true, None).unwrap();
    let mut c = client_with(
        cfg,
        hosts(&[srv.addr]),
        strict,
        koukan_smtp_client::Resolver::new(vec![]),
    );
    let mail = send(&mut c, envelope("a@x", &["b@y"])).await.mail.unwrap();
    assert_eq!(mail.code, 451);
    let prefix = format!(
        "4.7.5 no upstream host reachable: {}: TLS handshake: ",
        srv.addr
    );
    assert!(mail.text.starts_with(&prefix), "{mail}");
}

#[tokio::test]
async fn connection_dropped_mid_data() {
    let srv = SmtpServer::start(Script::new().drop_in_data_after(10)).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["b@y"])).await;
    let piece = "0123456789abcdef\r\n".repeat(100);
    let mut data = None;
    for last in [false, false, false, true] {
        let resp = send(&mut c, body(&piece, last)).await;
        if resp.data.is_some() {
            data = resp.data;
            break;
        }
        // Give the server time to close, so a later write or read fails.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let data = data.expect("a data response by the last chunk");
    assert_eq!(data.code, 451, "{data}");
    let prefix = format!("4.4.2 upstream connection lost: {}: ", srv.addr);
    assert!(data.text.starts_with(&prefix), "{data}");
}

#[tokio::test]
async fn reply_timeout_is_a_lost_connection() {
    let srv = SmtpServer::start(Script::new().hang_on("RCPT")).await;
    let cfg = koukan_smtp_client::ClientConfig {
        command_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let mut c = client(cfg, hosts(&[srv.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y", "c@y"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    let lost = r(
        451,
        &format!(
            "4.4.2 upstream connection lost: {}: timeout waiting for reply to RCPT",
            srv.addr
        ),
    );
    assert_eq!(resp.rcpts, vec![lost.clone(), lost.clone()]);
    assert_eq!(send(&mut c, body("x\r\n", true)).await.data, Some(lost));
}

#[tokio::test]
async fn no_valid_recipients() {
    let srv = SmtpServer::start(
        Script::new()
            .reply("RCPT", "550 5.1.1 unknown")
            .reply("RCPT", "550 5.1.1 unknown too"),
    )
    .await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    let resp = send(&mut c, envelope("a@x", &["b@y", "c@y"])).await;
    assert_eq!(
        resp.rcpts,
        vec![r(550, "5.1.1 unknown"), r(550, "5.1.1 unknown too")]
    );
    let resp = send(&mut c, body("x\r\n", true)).await;
    assert_eq!(resp.data, Some(r(554, "5.5.1 no valid recipients")));
    assert_eq!(
        srv.wait_quit(0).await.verbs(),
        ["EHLO", "MAIL", "RCPT", "RCPT", "QUIT"]
    );
}

#[tokio::test]
async fn everything_in_one_update() {
    let srv = SmtpServer::start(Script::new().ext("PIPELINING").ext("CHUNKING")).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    let mut u = envelope("a@x", &["b@y"]);
    u.body = TxUpdate::body(Bytes::from_static(b"hi\r\n"), true).body;
    let resp = send(&mut c, u).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(resp.rcpts, vec![r(250, "2.1.5 recipient ok")]);
    assert_eq!(resp.data, Some(r(250, "2.0.0 4 octets received")));
}

#[tokio::test]
async fn rcpt_before_mail_is_a_sequence_error() {
    let mut c = client(test_config(), hosts(&[refused_addr().await]));
    let resp = send(&mut c, TxUpdate::rcpts([Mailbox::new("b@y")])).await;
    assert_eq!(resp.rcpts, vec![r(503, "5.5.1 failed precondition: MAIL")]);
}

#[tokio::test]
async fn dropping_the_client_closes_the_upstream() {
    let srv = SmtpServer::start(Script::new()).await;
    let mut c = client(test_config(), hosts(&[srv.addr]));
    send(&mut c, envelope("a@x", &["b@y"])).await;
    drop(c);
    let log = srv.wait_quit(0).await;
    assert_eq!(log.verbs(), ["EHLO", "MAIL", "RCPT", "QUIT"]);
}
