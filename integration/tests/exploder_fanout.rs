//! The exploder's fan-out against real upstreams behind a counting TCP
//! relay: its bound on concurrent upstream transactions, slots freed by
//! refused recipients, and upstream transactions that end with the inbound
//! one (an abandoned upstream is closed at once, not left to its own
//! timeouts).

use std::net::SocketAddr;
use std::time::Duration;

use koukan_integration::*;

/// `a.test` goes to `a`, `b.test` to `b`.
fn config(listen: SocketAddr, a: SocketAddr, b: SocketAddr, exploder: &str) -> String {
    format!(
        r#"
node: {{id: fanout-test}}
admin: {{address: "{{admin}}"}}
storage: {{embedded: {{path: data/koukan.db}}}}
scheduler: {{poll_interval: 0.2s}}
static_resources:
  listeners:
  - name: in
    address: "{listen}"
    smtp: {{hostname: koukan.test, sender: in}}
  senders: [{{name: in, chain: in}}]
  chains:
  - name: in
    exploder: {{output_chain: out, {exploder}}}
  - name: out
    filters:
    - router:
        policy:
          address_list:
            domains: [a.test]
            destination: {{endpoint: smtp, host_list: [{{host: "{ah}", port: {ap}}}]}}
    - router:
        policy:
          address_list:
            domains: [b.test]
            destination: {{endpoint: smtp, host_list: [{{host: "{bh}", port: {bp}}}]}}
    - router: {{}}
    retry: {{max_attempts: 2, min_attempt_time: 1s, max_attempt_time: 1s}}
  endpoints:
  - name: smtp
    smtp: {{ehlo_hostname: koukan.test, connect_timeout: 2s, connection_reuse: {{disabled: true}}}}
"#,
        ah = a.ip(),
        ap = a.port(),
        bh = b.ip(),
        bp = b.port(),
    )
}

/// Opens a session and sends MAIL plus every RCPT in one pipelined batch;
/// returns the session and the RCPT replies.
fn pipelined(listen: SocketAddr, rcpts: &[String]) -> (RawSmtp, Vec<String>) {
    let mut c = RawSmtp::connect(listen).unwrap();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    c.reply().unwrap();
    c.cmd("EHLO client.test").unwrap();
    let mut batch = "MAIL FROM:<alice@example.org>\r\n".to_owned();
    for r in rcpts {
        batch.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    c.send(batch.as_bytes()).unwrap();
    assert!(c.reply().unwrap().starts_with("250"), "MAIL");
    let replies = rcpts
        .iter()
        .map(|_| c.reply().unwrap().trim_end().to_owned())
        .collect();
    (c, replies)
}

fn data(c: &mut RawSmtp) -> String {
    assert!(c.cmd("DATA").unwrap().starts_with("354"));
    c.send(b"Subject: fan-out\r\n\r\nhello\r\n.\r\n").unwrap();
    c.reply().unwrap().trim_end().to_owned()
}

/// One smtp-sink behind a counting tap, for both domains, and a koukan
/// whose exploder has `exploder` settings.
struct Tapped {
    _dir: tempfile::TempDir,
    sink: SmtpSink,
    tap: TcpTap,
    listen: SocketAddr,
    koukan: Koukan,
}

fn tapped(exploder: &str) -> Tapped {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&dir.path().join("sink"), &[]).unwrap();
    let tap = TcpTap::relay(sink.addr);
    let listen = loopback(free_port());
    let koukan = Koukan::start(&config(listen, tap.addr, tap.addr, exploder)).unwrap();
    Tapped {
        _dir: dir,
        sink,
        tap,
        listen,
        koukan,
    }
}

#[test]
fn mx_fan_out_stays_within_its_bound_and_recipients_over_it_are_deferred() {
    let t = tapped("msa: false, rcpt_timeout: 20s, data_timeout: 10s, max_concurrent_upstreams: 3");
    let rcpts: Vec<String> = (0..8).map(|i| format!("u{i}@a.test")).collect();
    let started = std::time::Instant::now();
    let (mut c, replies) = pipelined(t.listen, &rcpts);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "recipients over the bound did not wait for the RCPT timeout"
    );
    // The first three hold their slots until the end of data, so the
    // others are over the bound at once: 452, to be sent again in another
    // transaction (no wait for the RCPT timeout).
    let ok = replies.iter().filter(|r| r.starts_with("250")).count();
    let over = replies
        .iter()
        .filter(|r| {
            *r == "452 4.5.3 too many recipients at once, send the rest in another transaction (exploder)"
        })
        .count();
    assert_eq!((ok, over), (3, 5), "{replies:?}");
    // One more, not pipelined: over the bound at once too.
    let late = c.cmd("RCPT TO:<late@a.test>").unwrap();
    assert!(late.starts_with("452 4.5.3"), "{late}");
    assert_eq!(t.tap.max_active(), 3, "upstream connections at once");
    assert_eq!(
        t.tap.accepted(),
        3,
        "no upstream opened for a recipient over the bound"
    );
    let reply = data(&mut c);
    assert_eq!(reply, "250 2.0.0 Ok (exploder same response)");
    assert_eq!(t.sink.wait_messages(3, Duration::from_secs(5)).len(), 3);
}

#[test]
fn msa_fan_out_stores_recipients_over_its_bound_and_delivers_them_later() {
    let t = tapped("msa: true, rcpt_timeout: 20s, data_timeout: 10s, max_concurrent_upstreams: 2");
    let rcpts: Vec<String> = (0..6).map(|i| format!("u{i}@a.test")).collect();
    let (mut c, replies) = pipelined(t.listen, &rcpts);
    let stored = replies
        .iter()
        .filter(|r| *r == "250 2.1.5 RCPT ok (exploder store&forward)")
        .count();
    assert_eq!(stored, 4, "{replies:?}");
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    assert_eq!(t.tap.max_active(), 2, "upstream connections at once");
    let reply = data(&mut c);
    let (_, ids) = reply
        .split_once("queued as ")
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(ids.split(',').count(), 4, "{reply}");
    // Two cut through, four delivered by the scheduler.
    let msgs = t.sink.wait_messages(6, Duration::from_secs(15));
    assert_eq!(msgs.len(), 6, "log:\n{}", t.koukan.log());
    for r in &rcpts {
        assert_eq!(
            msgs.iter()
                .filter(|m| m.contains(&format!("X-Rcpt-Args: <{r}>")))
                .count(),
            1,
            "{r}"
        );
    }
}

#[test]
fn slots_freed_by_refused_recipients_serve_the_waiting_ones() {
    let d = tempfile::tempdir().unwrap();
    let good = SmtpSink::start(&d.path().join("good"), &[]).unwrap();
    let refusing = SmtpSink::start(
        &d.path().join("refusing"),
        &["-f", "RCPT", "-B", "550 5.1.1 no such user upstream"],
    )
    .unwrap();
    let listen = loopback(free_port());
    let _k = Koukan::start(&config(
        listen,
        good.addr,
        refusing.addr,
        "msa: false, rcpt_timeout: 10s, data_timeout: 10s, max_concurrent_upstreams: 2",
    ))
    .unwrap();
    // The refused ones come first and hold the slots until refused.
    let rcpts: Vec<String> = [
        "x1@b.test",
        "x2@b.test",
        "x3@b.test",
        "y1@a.test",
        "y2@a.test",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (mut c, replies) = pipelined(listen, &rcpts);
    assert_eq!(
        replies,
        [
            "550 5.1.1 no such user upstream",
            "550 5.1.1 no such user upstream",
            "550 5.1.1 no such user upstream",
            "250 2.1.5 Ok",
            "250 2.1.5 Ok"
        ]
    );
    assert_eq!(data(&mut c), "250 2.0.0 Ok (exploder same response)");
    assert_eq!(good.wait_messages(2, Duration::from_secs(5)).len(), 2);
}

#[test]
fn a_recipient_waiting_for_a_slot_gets_the_rcpt_timeout() {
    // One slot, held by a recipient whose upstream never answers: the next
    // recipient waits for it (its answer could free the slot) until the
    // RCPT timeout, and no upstream is ever opened for it.
    let silent = TcpTap::silent();
    let d = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&d.path().join("sink"), &[]).unwrap();
    let tap = TcpTap::relay(sink.addr);
    let listen = loopback(free_port());
    let _k = Koukan::start(&config(
        listen,
        silent.addr,
        tap.addr,
        "msa: false, rcpt_timeout: 1s, data_timeout: 1s, max_concurrent_upstreams: 1",
    ))
    .unwrap();
    let (_c, replies) = pipelined(listen, &["x@a.test".to_owned(), "y@b.test".to_owned()]);
    assert_eq!(
        replies,
        [
            "451 4.4.7 upstream timeout (exploder)",
            "451 4.4.7 upstream timeout (exploder)"
        ]
    );
    assert_eq!(tap.accepted(), 0);
}

#[test]
fn an_abandoned_upstream_is_closed_at_once() {
    // An upstream that never greets: the RCPT times out (451) and its
    // upstream connection is closed then, while the client's session is
    // still open, not when the SMTP client's own timeouts give up.
    let silent = TcpTap::silent();
    let d = tempfile::tempdir().unwrap();
    let slow_sink = SmtpSink::start(&d.path().join("slow"), &["-w", "20"]).unwrap();
    let slow = TcpTap::relay(slow_sink.addr);
    let listen = loopback(free_port());
    let k = Koukan::start(&config(
        listen,
        silent.addr,
        slow.addr,
        "msa: false, rcpt_timeout: 1s, data_timeout: 1s",
    ))
    .unwrap();
    let (mut c, replies) = pipelined(listen, &["x@a.test".to_owned()]);
    assert_eq!(replies, ["451 4.4.7 upstream timeout (exploder)"]);
    let closed = wait_for(Duration::from_secs(3), || {
        (silent.active() == 0).then_some(())
    });
    assert!(
        closed.is_some() && silent.accepted() == 1,
        "the silent upstream's connection is still open ({} of {}); log:\n{}",
        silent.active(),
        silent.accepted(),
        k.log()
    );
    assert!(c.cmd("RSET").unwrap().starts_with("250"));

    // An upstream that takes 20 s to answer the end of data: the data
    // timeout (1 s) answers the client, and the upstream is let go.
    let mut batch = "MAIL FROM:<alice@example.org>\r\nRCPT TO:<y@b.test>\r\n".to_owned();
    batch.push_str("DATA\r\n");
    c.send(batch.as_bytes()).unwrap();
    assert!(c.reply().unwrap().starts_with("250"));
    assert!(c.reply().unwrap().starts_with("250"));
    assert!(c.reply().unwrap().starts_with("354"));
    c.send(b"Subject: slow\r\n\r\nhello\r\n.\r\n").unwrap();
    assert_eq!(
        c.reply().unwrap().trim_end(),
        "451 4.4.7 upstream timeout (exploder)"
    );
    let closed = wait_for(Duration::from_secs(3), || {
        (slow.active() == 0).then_some(())
    });
    assert!(
        closed.is_some(),
        "the slow upstream's connection is still open; log:\n{}",
        k.log()
    );

    // A client that goes away mid-transaction takes its upstream
    // transactions with it.
    let mut c2 = RawSmtp::connect(listen).unwrap();
    c2.reply().unwrap();
    c2.cmd("EHLO client.test").unwrap();
    c2.cmd("MAIL FROM:<alice@example.org>").unwrap();
    assert!(c2.cmd("RCPT TO:<z@b.test>").unwrap().starts_with("250"));
    assert!(c2.cmd("DATA").unwrap().starts_with("354"));
    c2.send(b"Subject: gone\r\n\r\npart of a body\r\n").unwrap();
    let before = slow.accepted();
    assert!(slow.active() >= 1);
    drop(c2);
    let closed = wait_for(Duration::from_secs(3), || {
        (slow.active() == 0).then_some(())
    });
    assert!(
        closed.is_some(),
        "upstream still open after the client left ({before} accepted); log:\n{}",
        k.log()
    );
    assert_eq!(
        slow_sink.messages().len(),
        0,
        "nothing half-sent was delivered"
    );
}
