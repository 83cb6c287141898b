//! The exploder's reply table, one test per cell: msa (submission) and
//! ingress (mx) semantics against real upstream behaviour from Postfix's
//! smtp-sink (and a silent TCP listener for timeouts).

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use koukan_integration::*;

fn config(listen: SocketAddr, a: SocketAddr, b: SocketAddr, msa: bool) -> String {
    format!(
        r#"
node: {{id: exploder-test}}
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
    exploder: {{output_chain: out, msa: {msa}, rcpt_timeout: 1s, data_timeout: 2s}}
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
    notification: {{chain: bounces, mailer_daemon: mailer-daemon@koukan.test}}
  - name: bounces
    filters:
    - router: {{destination: {{endpoint: box}}}}
  endpoints:
  - name: smtp
    smtp: {{ehlo_hostname: koukan.test, connect_timeout: 1s, connection_reuse: {{disabled: true}}}}
  - name: box
    maildir: {{path: bounces}}
"#,
        ah = a.ip(),
        ap = a.port(),
        bh = b.ip(),
        bp = b.port(),
    )
}

struct Cell {
    rcpts: Vec<String>,
    data: Option<String>,
    koukan: Koukan,
}

/// Sends one message to `rcpts`; returns each RCPT reply and the DATA
/// reply (None if no recipient was accepted).
fn run(upstream_a: SocketAddr, upstream_b: SocketAddr, msa: bool, rcpts: &[&str]) -> Cell {
    let listen = loopback(free_port());
    let koukan = Koukan::start(&config(listen, upstream_a, upstream_b, msa)).unwrap();
    let mut c = RawSmtp::connect(listen).unwrap();
    c.reply().unwrap();
    c.cmd("EHLO client.test").unwrap();
    assert!(
        c.cmd("MAIL FROM:<alice@example.com>")
            .unwrap()
            .starts_with("250")
    );
    let replies: Vec<String> = rcpts
        .iter()
        .map(|r| c.cmd(&format!("RCPT TO:<{r}>")).unwrap().trim().to_owned())
        .collect();
    let data = if replies.iter().any(|r| r.starts_with('2')) {
        assert!(c.cmd("DATA").unwrap().starts_with("354"));
        c.send(b"Subject: exploded\r\nMessage-ID: <x1@example.com>\r\n\r\nbody\r\n.\r\n")
            .unwrap();
        Some(c.reply().unwrap().trim().to_owned())
    } else {
        None
    };
    Cell {
        rcpts: replies,
        data,
        koukan,
    }
}

fn sink(dir: &tempfile::TempDir, name: &str, opts: &[&str]) -> SmtpSink {
    SmtpSink::start(&dir.path().join(name), opts).unwrap()
}

/// Accepts connections and never says anything.
fn silent() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn unused() -> SocketAddr {
    loopback(free_port())
}

/// The stored transactions a DATA reply names ("... queued as a,b").
fn queued_ids(reply: &str) -> Vec<String> {
    let (_, ids) = reply
        .split_once("queued as ")
        .unwrap_or_else(|| panic!("no queue ids in {reply:?}"));
    ids.split(',').map(|s| s.trim().to_owned()).collect()
}

/// A stored transaction as the admin endpoint shows it.
fn stored_tx(k: &Koukan, id: &str) -> serde_json::Value {
    let (status, body) = http_get(k.admin, &format!("/transactions/{id}")).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["transaction"].clone()
}

fn finished_ms(attempt: &serde_json::Value) -> u64 {
    let t = &attempt["finished"];
    t["secs_since_epoch"].as_u64().unwrap() * 1000
        + t["nanos_since_epoch"].as_u64().unwrap() / 1_000_000
}

#[test]
fn rcpt_timeout() {
    let (_l, addr) = silent();
    let msa = run(addr, unused(), true, &["x@a.test"]);
    assert!(
        msa.rcpts[0].starts_with("250 2.1.5 RCPT ok (exploder store&forward)"),
        "{:?}",
        msa.rcpts
    );
    assert!(
        msa.data
            .unwrap()
            .starts_with("250 2.0.0 DATA ok (exploder store&forward) queued as")
    );
    let mx = run(addr, unused(), false, &["x@a.test"]);
    assert_eq!(mx.rcpts[0], "451 4.4.7 upstream timeout (exploder)");
    assert!(mx.data.is_none());
}

#[test]
fn rcpt_4xx() {
    let d = tempfile::tempdir().unwrap();
    let s = sink(
        &d,
        "s",
        &["-r", "RCPT", "-b", "451 4.7.1 greylisted upstream"],
    );
    let msa = run(s.addr, unused(), true, &["x@a.test"]);
    assert!(msa.rcpts[0].starts_with("250 2.1.5 RCPT ok (exploder store&forward)"));
    assert!(msa.data.unwrap().contains("queued as"));
    let mx = run(s.addr, unused(), false, &["x@a.test"]);
    assert_eq!(mx.rcpts[0], "451 4.7.1 greylisted upstream");
}

#[test]
fn rcpt_5xx_is_verbatim_for_both() {
    let d = tempfile::tempdir().unwrap();
    let s = sink(
        &d,
        "s",
        &["-f", "RCPT", "-B", "550 5.1.1 no such user upstream"],
    );
    for msa in [true, false] {
        let cell = run(s.addr, unused(), msa, &["x@a.test"]);
        assert_eq!(
            cell.rcpts[0], "550 5.1.1 no such user upstream",
            "msa={msa}"
        );
        assert!(cell.data.is_none());
    }
}

#[test]
fn data_timeout() {
    let d = tempfile::tempdir().unwrap();
    // smtp-sink waits 4 s before answering DATA; the data timeout is 2 s.
    let s = sink(&d, "s", &["-w", "4"]);
    let msa = run(s.addr, unused(), true, &["x@a.test"]);
    assert!(msa.rcpts[0].starts_with("250"));
    assert!(
        msa.data
            .as_deref()
            .unwrap()
            .starts_with("250 2.0.0 DATA ok (exploder store&forward)"),
        "{:?}",
        msa.data
    );
    let mx = run(s.addr, unused(), false, &["x@a.test"]);
    assert_eq!(
        mx.data.as_deref(),
        Some("451 4.4.7 upstream timeout (exploder)")
    );
}

#[test]
fn data_4xx() {
    let d = tempfile::tempdir().unwrap();
    let s = sink(&d, "s", &["-r", ".", "-b", "452 4.3.1 upstream disk full"]);
    let msa = run(s.addr, unused(), true, &["x@a.test"]);
    assert!(
        msa.data
            .as_deref()
            .unwrap()
            .starts_with("250 2.0.0 DATA ok (exploder store&forward)")
    );
    // Stored with retries and bounce: after max_attempts the DSN arrives.
    let bounced = wait_for(Duration::from_secs(10), || {
        maildir_files(&msa.koukan, "bounces/new").pop()
    });
    let dsn = bounced.unwrap_or_else(|| panic!("no bounce:\n{}", msa.koukan.log()));
    assert!(
        dsn.contains("Diagnostic-Code: smtp; 452 4.3.1 upstream disk full"),
        "{dsn}"
    );
    // The cut-through attempt was attempt 1; the retry waited the
    // policy's backoff (1 s) after it instead of asking again at once.
    let ids = queued_ids(msa.data.as_deref().unwrap());
    assert_eq!(ids.len(), 1);
    let tx = stored_tx(&msa.koukan, &ids[0]);
    assert_eq!(tx["attempt_count"], 2, "{tx}");
    assert_eq!(
        tx["final_attempt_reason"], "retry policy max attempts",
        "{tx}"
    );
    let attempts = tx["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{tx}");
    for (n, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], n + 1, "{tx}");
        assert_eq!(a["responses"]["data"]["code"], 452, "{tx}");
    }
    let gap = finished_ms(&attempts[1]) - finished_ms(&attempts[0]);
    assert!(gap >= 850, "second attempt {gap} ms after the first: {tx}");
    let mx = run(s.addr, unused(), false, &["x@a.test"]);
    assert_eq!(mx.data.as_deref(), Some("452 4.3.1 upstream disk full"));
}

#[test]
fn data_5xx_is_verbatim_for_both() {
    let d = tempfile::tempdir().unwrap();
    let s = sink(
        &d,
        "s",
        &["-f", ".", "-B", "554 5.6.0 content rejected upstream"],
    );
    for msa in [true, false] {
        let cell = run(s.addr, unused(), msa, &["x@a.test"]);
        assert_eq!(
            cell.data.as_deref(),
            Some("554 5.6.0 content rejected upstream"),
            "msa={msa}"
        );
    }
}

#[test]
fn two_destinations_same_response_and_mixed() {
    let d = tempfile::tempdir().unwrap();
    let good_a = sink(&d, "a", &[]);
    let good_b = sink(&d, "b", &[]);
    // Both delivered: one transaction, two destinations, no 451 4.5.3.
    let both = run(good_a.addr, good_b.addr, false, &["x@a.test", "y@b.test"]);
    assert!(
        both.rcpts.iter().all(|r| r.starts_with("250")),
        "{:?}",
        both.rcpts
    );
    let data = both.data.unwrap();
    assert!(
        data.starts_with("250") && data.ends_with("(exploder same response)"),
        "{data}"
    );
    assert_eq!(good_a.wait_messages(1, Duration::from_secs(5)).len(), 1);
    assert_eq!(good_b.wait_messages(1, Duration::from_secs(5)).len(), 1);

    // Mixed: a delivers, b refuses the data -> 250, b stored and bounced.
    let bad_b = sink(&d, "bad", &["-f", ".", "-B", "554 5.6.0 no thanks"]);
    let mixed = run(good_a.addr, bad_b.addr, false, &["x@a.test", "y@b.test"]);
    let data = mixed.data.unwrap();
    assert!(
        data.starts_with("250 2.0.0 DATA ok (exploder store&forward)"),
        "{data}"
    );
    assert_eq!(good_a.wait_messages(2, Duration::from_secs(5)).len(), 2);
    let dsn = wait_for(Duration::from_secs(10), || {
        maildir_files(&mixed.koukan, "bounces/new").pop()
    });
    let dsn = dsn.unwrap_or_else(|| panic!("no bounce:\n{}", mixed.koukan.log()));
    assert!(dsn.contains("Final-Recipient: rfc822; y@b.test"), "{dsn}");
    assert!(
        dsn.contains("Diagnostic-Code: smtp; 554 5.6.0 no thanks"),
        "{dsn}"
    );
    assert!(
        !dsn.contains("x@a.test"),
        "only the failed recipient is bounced"
    );
    // The upstream's 5xx settled it: bounced without asking again.
    let ids = queued_ids(&data);
    assert_eq!(ids.len(), 1, "{data}");
    let tx = stored_tx(&mixed.koukan, &ids[0]);
    assert_eq!(tx["attempt_count"], 1, "{tx}");
    assert_eq!(
        tx["final_attempt_reason"], "upstream response permfail",
        "{tx}"
    );
    assert_eq!(tx["attempts"].as_array().unwrap().len(), 1, "{tx}");
    assert_eq!(tx["attempts"][0]["responses"]["data"]["code"], 554, "{tx}");
}
