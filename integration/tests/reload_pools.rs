//! A reload keeps the upstream connection pool of every endpoint whose
//! config it leaves unchanged, and gives a changed endpoint a fresh pool,
//! closing the old pool's connections once their transactions finish.
//! Connections are counted at a TCP tap in front of the sink.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use koukan_integration::*;

/// Connections live long and carry every message of the test (at most
/// 200 of load plus a few: below `max_transactions_per_connection`), so a
/// second connection can only come from a pool that was not kept.
fn config(kept: &TcpTap, changed: &TcpTap, l1: u16, l2: u16, changed_ehlo: &str) -> String {
    format!(
        r#"
node: {{id: reload-pools}}
admin: {{address: "{{admin}}"}}
static_resources:
  listeners:
  - name: one
    address: "127.0.0.1:{l1}"
    smtp: {{hostname: koukan.test, sender: one}}
  - name: two
    address: "127.0.0.1:{l2}"
    smtp: {{hostname: koukan.test, sender: two}}
  senders:
  - {{name: one, chain: one}}
  - {{name: two, chain: two}}
  chains:
  - name: one
    relay: {{endpoint: kept}}
  - name: two
    relay: {{endpoint: changed}}
  endpoints:
  - name: kept
    smtp:
      ehlo_hostname: koukan.test
      hosts: [{{host: "127.0.0.1", port: {kp}}}]
      connection_reuse: {{idle_timeout: 60s, max_transactions_per_connection: 1000}}
  - name: changed
    smtp:
      ehlo_hostname: {changed_ehlo}
      hosts: [{{host: "127.0.0.1", port: {cp}}}]
      connection_reuse: {{idle_timeout: 60s, max_transactions_per_connection: 1000}}
"#,
        kp = kept.addr.port(),
        cp = changed.addr.port(),
    )
}

fn send(addr: std::net::SocketAddr, subject: &str) {
    let r = smtp_submit(
        addr,
        "a@example.org",
        &["b@example.com"],
        &format!("Subject: {subject}\r\n\r\nx\r\n"),
    );
    assert!(r.is_accepted(), "{subject}: {r:?}");
}

#[test]
fn a_reload_under_load_keeps_the_pool_of_an_unchanged_endpoint() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&sink_dir.path().join("sink"), &[]).unwrap();
    let kept = TcpTap::relay(sink.addr);
    let changed = TcpTap::relay(sink.addr);
    let (p1, p2) = (free_port(), free_port());
    let (l1, l2) = (loopback(p1), loopback(p2));
    let yaml = config(&kept, &changed, p1, p2, "before.test");
    let mut k = Koukan::start(&yaml).unwrap();
    k.wait_ready(Duration::from_secs(10)).unwrap();

    send(l1, "warm one");
    send(l2, "warm two");
    assert_eq!((kept.accepted(), changed.accepted()), (1, 1));

    // A transaction on the endpoint about to change, in flight across the
    // reload: its upstream connection is open (MAIL and RCPT relayed).
    let mut inflight = RawSmtp::connect(l2).unwrap();
    inflight.reply().unwrap();
    inflight.cmd("EHLO client.test").unwrap();
    assert!(
        inflight
            .cmd("MAIL FROM:<a@example.org>")
            .unwrap()
            .starts_with("250")
    );
    assert!(
        inflight
            .cmd("RCPT TO:<b@example.com>")
            .unwrap()
            .starts_with("250")
    );

    // Load on the unchanged endpoint while the reload happens: one
    // message after another (bounded in count and time).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::SeqCst)
                && Instant::now() < deadline
                && sent.load(Ordering::SeqCst) < 200
            {
                send(l1, "load");
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_for(Duration::from_secs(10), || {
        (sent.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .expect("load is flowing");

    let admin = k.admin.to_string();
    let next = config(&kept, &changed, p1, p2, "after.test").replace("{admin}", &admin);
    std::fs::write(&k.config_path, next).unwrap();
    k.proc.signal("HUP");
    wait_for(Duration::from_secs(10), || {
        k.log().contains("config reloaded").then_some(())
    })
    .unwrap_or_else(|| panic!("no reload: {}", k.log()));
    let at_reload = sent.load(Ordering::SeqCst);
    wait_for(Duration::from_secs(10), || {
        (sent.load(Ordering::SeqCst) >= at_reload + 3).then_some(())
    })
    .expect("load goes on after the reload");
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    send(l1, "after");
    assert_eq!(
        kept.accepted(),
        1,
        "every message to the unchanged endpoint, before, during and after the reload, went over the one pooled connection"
    );

    // The transaction in flight finishes on its old connection...
    assert!(inflight.cmd("DATA").unwrap().starts_with("354"));
    inflight
        .send(b"Subject: inflight\r\n\r\nx\r\n.\r\n")
        .unwrap();
    let reply = inflight.reply().unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    inflight.cmd("QUIT").unwrap();
    assert_eq!(
        changed.accepted(),
        1,
        "the in-flight transaction reused the warm-up connection"
    );
    // ...which then closes: the old pool is gone with the old snapshot.
    wait_for(Duration::from_secs(10), || {
        (changed.active() == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("old connections still open: {}", changed.active()));
    // The changed endpoint's new pool opens a connection of its own, and
    // keeps it.
    send(l2, "new pool");
    send(l2, "new pool again");
    assert_eq!(changed.accepted(), 2);
    assert_eq!(changed.active(), 1);
    assert_eq!(
        kept.active(),
        1,
        "the unchanged endpoint's connection stays open"
    );
}
