//! Store-and-forward end to end: 250 only once the message is durably
//! stored, delivery by the scheduler, retries with backoff, bounces (DSNs)
//! on final failure, and crash safety across kill -9, on the embedded store
//! and on a real redis-server.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use koukan_integration::*;

const MSG: &str = "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: stored\r\nMessage-ID: <orig-1@example.com>\r\n\r\nkept safe\r\n";

/// `storage` is the YAML of the bootstrap's `storage:` value.
fn config(listen: SocketAddr, upstream: SocketAddr, storage: &str, max_attempts: u32) -> String {
    StoreForward {
        max_attempts,
        bounces: true,
        ..StoreForward::new(listen, upstream, storage)
    }
    .yaml()
}

const EMBEDDED: &str = "{embedded: {path: data/koukan.db}}";

#[allow(dead_code)]
fn send(smtp: SocketAddr, from: &str) -> String {
    smtplib_send(smtp, from, &["bob@example.net"], MSG, &[], "")
}

fn queue_json(k: &Koukan) -> String {
    http_get(k.admin, "/queue").map(|r| r.1).unwrap_or_default()
}

#[test]
fn stored_message_is_delivered_after_250() {
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&dirs.path().join("sink"), &[]).unwrap();
    let smtp = loopback(free_port());
    let k = Koukan::start(&config(smtp, sink.addr, EMBEDDED, 3)).unwrap();
    let (_, reply) = smtplib_status(smtp, "alice@example.com");
    assert!(reply.contains("queued as"), "{reply}");
    let msgs = sink.wait_messages(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1, "{}", k.log());
    assert!(msgs[0].contains("kept safe"));
    assert!(msgs[0].contains("by koukan.test"), "{}", msgs[0]);
    let q = wait_for(Duration::from_secs(5), || {
        let q = queue_json(&k);
        q.contains("\"final_\":1").then_some(q)
    });
    assert!(q.is_some(), "queue: {}", queue_json(&k));
}

/// The final reply text of an smtplib transaction (DATA's reply).
fn smtplib_status(smtp: SocketAddr, from: &str) -> (u16, String) {
    let script = r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)
s.ehlo()
s.mail(sys.argv[3])
s.rcpt('bob@example.net')
code, text = s.data(sys.argv[4].encode())
print(code, text.decode())
s.quit()
"#;
    let out = python(
        script,
        &[&smtp.ip().to_string(), &smtp.port().to_string(), from, MSG],
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let code = text
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[test]
fn temporary_failures_are_retried_then_bounced() {
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(
        &dirs.path().join("sink"),
        &["-r", "RCPT", "-b", "451 4.7.1 greylisted forever"],
    )
    .unwrap();
    let smtp = loopback(free_port());
    let k = Koukan::start(&config(smtp, sink.addr, EMBEDDED, 3)).unwrap();
    let (code, reply) = smtplib_status(smtp, "alice@example.com");
    assert_eq!(code, 250, "{reply}");
    let id = reply.rsplit(' ').next().unwrap().to_owned();

    let bounce = wait_for(Duration::from_secs(20), || {
        maildir_files(&k, "bounces/new").pop()
    });
    let bounce = bounce.unwrap_or_else(|| panic!("no bounce; log:\n{}", k.log()));
    for needle in [
        "From: Mail Delivery System <mailer-daemon@koukan.test>",
        "To: <alice@example.com>",
        "report-type=delivery-status",
        "Final-Recipient: rfc822; bob@example.net",
        "Action: failed",
        "Status: 4.7.1",
        "Diagnostic-Code: smtp; 451 4.7.1 greylisted forever",
        "Subject: stored",
    ] {
        assert!(
            bounce.contains(needle),
            "missing {needle:?} in bounce:\n{bounce}"
        );
    }
    let (_, tx) = http_get(k.admin, &format!("/transactions/{id}")).unwrap();
    assert!(tx.contains("\"attempt_count\":3"), "{tx}");
    assert!(tx.contains("retry policy max attempts"), "{tx}");
    assert!(sink.messages().is_empty());
}

#[test]
fn permanent_failure_bounces_at_once_but_never_for_a_bounce() {
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(
        &dirs.path().join("sink"),
        &["-f", "RCPT", "-B", "550 5.1.1 no such user here"],
    )
    .unwrap();
    let smtp = loopback(free_port());
    let k = Koukan::start(&config(smtp, sink.addr, EMBEDDED, 5)).unwrap();
    assert_eq!(smtplib_status(smtp, "alice@example.com").0, 250);
    let bounce = wait_for(Duration::from_secs(10), || {
        maildir_files(&k, "bounces/new").pop()
    })
    .unwrap_or_else(|| panic!("no bounce; log:\n{}", k.log()));
    assert!(bounce.contains("Status: 5.1.1"), "{bounce}");
    assert!(
        bounce.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user here"),
        "{bounce}"
    );

    // A message with a null reverse-path fails the same way: no bounce.
    assert_eq!(smtplib_status(smtp, "").0, 250);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        maildir_files(&k, "bounces/new").len(),
        1,
        "no bounce for a bounce"
    );
}

#[test]
fn acknowledged_mail_survives_kill_9_and_is_delivered_after_restart() {
    let dirs = tempfile::tempdir().unwrap();
    // No upstream yet: delivery keeps failing with connection refused.
    let upstream = loopback(free_port());
    let smtp = loopback(free_port());
    let mut k = Koukan::start(&config(smtp, upstream, EMBEDDED, 30)).unwrap();
    for i in 0..5 {
        let (code, reply) = smtplib_status(smtp, &format!("sender{i}@example.com"));
        assert_eq!(code, 250, "{reply}");
    }
    k.proc.signal("KILL");
    k.proc.wait_exit(Duration::from_secs(5));
    let sink = SmtpSink::start_at(upstream, &dirs.path().join("sink"), &[]).unwrap();
    // Same directory, same config: a new process on the same store.
    let config_text = std::fs::read_to_string(&k.config_path).unwrap();
    let mut cmd = Command::new(koukan_bin());
    cmd.arg("--config")
        .arg(&k.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _restarted = Proc::spawn("koukan", &mut cmd).unwrap();
    assert!(config_text.contains("data/koukan.db"));
    // Leases of the killed process expire (60 s by default) unless never
    // taken: transactions waiting for a retry are due again after 1 s.
    let msgs = sink.wait_messages(5, Duration::from_secs(20));
    assert_eq!(msgs.len(), 5, "delivered after restart: {}", msgs.len());
}

#[test]
fn redis_store_delivers_and_refuses_a_volatile_server() {
    let redis = RedisServer::start().unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&dirs.path().join("sink"), &[]).unwrap();
    let smtp = loopback(free_port());
    let storage = format!("{{redis: {{url: \"{}\"}}}}", redis.url());
    let k = Koukan::start(&config(smtp, sink.addr, &storage, 3)).unwrap();
    assert_eq!(smtplib_status(smtp, "alice@example.com").0, 250);
    assert_eq!(
        sink.wait_messages(1, Duration::from_secs(10)).len(),
        1,
        "{}",
        k.log()
    );

    // A Redis without an append-only file is refused at start-up.
    let volatile = RedisServer::start_volatile().unwrap();
    let storage = format!("{{redis: {{url: \"{}\"}}}}", volatile.url());
    let err = Koukan::start(&config(loopback(free_port()), sink.addr, &storage, 3))
        .err()
        .expect("a volatile redis must be refused");
    assert!(err.to_string().contains("volatile"), "{err}");
}

#[test]
fn cancelled_transaction_is_never_attempted_again() {
    // Upstream down: the transaction waits for its retry.
    let upstream = loopback(free_port());
    let smtp = loopback(free_port());
    let k = Koukan::start(&config(smtp, upstream, EMBEDDED, 30)).unwrap();
    let (code, reply) = smtplib_status(smtp, "alice@example.com");
    assert_eq!(code, 250, "{reply}");
    let id = reply.rsplit(' ').next().unwrap().to_owned();
    let (status, body) = http_post(k.admin, &format!("/transactions/{id}/cancel")).unwrap();
    assert_eq!(status, 200, "{body}");
    // Bring the upstream up: nothing may arrive.
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start_at(upstream, &dirs.path().join("sink"), &[]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(sink.messages().is_empty());
    let (_, tx) = http_get(k.admin, &format!("/transactions/{id}")).unwrap();
    assert!(tx.contains("\"cancelled\":true"), "{tx}");
    assert_eq!(
        http_post(k.admin, "/transactions/nope/cancel").unwrap().0,
        404
    );
}
