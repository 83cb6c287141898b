//! The accept loop: connection limit, reload, stop and shutdown drain.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn connections_over_the_limit_get_421_and_the_listener_keeps_serving() {
    let mut cfg = config();
    cfg.limits.max_connections = 5;
    let srv = start(cfg, TestFactory::new()).await;
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(srv.session().await);
    }
    for _ in 0..15 {
        let mut c = srv.connect().await;
        assert_eq!(c.reply().await, "421 4.3.2 too many connections");
        c.expect_eof().await;
    }
    // Every admitted session still works.
    for c in &mut open {
        assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    }
    for mut c in open.drain(..) {
        assert_eq!(c.cmd("QUIT").await, "221 2.0.0 bye");
        c.expect_eof().await;
    }
    // Slots free up once the sessions have ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = srv.connect().await;
        let r = c.reply().await;
        if r.starts_with("220 ") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot freed: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = srv.metrics_text();
    assert!(
        m.contains(r#"smtp_connections_refused_total{listener="test"} 15"#),
        "{m}"
    );
}

#[tokio::test]
async fn reload_applies_to_new_connections_only() {
    let srv = start(config(), TestFactory::new()).await;
    let mut old = srv.session().await;
    let mut cfg = config();
    cfg.hostname = "new.test.example".to_owned();
    srv.cfg.send_replace(Arc::new(cfg));
    let mut new = srv.connect().await;
    assert_eq!(new.reply().await, "220 new.test.example ESMTP koukan");
    assert_eq!(old.ehlo().await.lines().next(), Some("250-mx.test.example"));
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_and_the_listener() {
    let srv = start(config(), TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    srv.shutdown.send_replace(true);
    assert_eq!(c.reply().await, "421 4.3.2 shutting down");
    c.expect_eof().await;
    tokio::time::timeout(Duration::from_secs(5), srv.task)
        .await
        .expect("listener returned")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(srv.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_lets_a_transaction_in_flight_finish() {
    let srv = start(config(), TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<a@b>").await;
    c.cmd("RCPT TO:<c@d>").await;
    srv.shutdown.send_replace(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send("still delivered\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    assert_eq!(c.reply().await, "421 4.3.2 shutting down");
    c.expect_eof().await;
    assert_eq!(srv.record.body(0), b"still delivered\r\n");
    tokio::time::timeout(Duration::from_secs(5), srv.task)
        .await
        .expect("listener returned")
        .unwrap();
}

#[tokio::test]
async fn drain_timeout_ends_a_stalled_transaction() {
    let mut cfg = config();
    cfg.limits.drain_timeout = Duration::from_millis(300);
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<a@b>").await;
    let started = tokio::time::Instant::now();
    srv.shutdown.send_replace(true);
    assert_eq!(c.reply().await, "421 4.3.2 shutting down");
    c.expect_eof().await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    tokio::time::timeout(Duration::from_secs(5), srv.task)
        .await
        .expect("listener returned")
        .unwrap();
    assert_eq!(srv.record.dropped(), 1);
}

#[tokio::test]
async fn a_listener_can_be_stopped_alone() {
    let srv = start(config(), TestFactory::new()).await;
    let other = start(config(), TestFactory::new()).await;
    let mut c = srv.session().await;
    srv.handle.stop();
    assert_eq!(c.reply().await, "421 4.3.2 shutting down");
    tokio::time::timeout(Duration::from_secs(5), srv.task)
        .await
        .expect("listener returned")
        .unwrap();
    // The other listener is unaffected.
    let mut c = other.session().await;
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
}
