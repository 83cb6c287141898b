//! Bad input against the real binary: each case gets its precise reply
//! and the process keeps serving afterwards.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use koukan_integration::*;

const LIMITS: &str = "{max_message_size: 100000, max_recipients: 100, max_connections: 50, command_timeout: 2s, data_timeout: 2s, max_bad_commands: 10}";

struct Setup {
    koukan: Koukan,
    sink: SmtpSink,
    smtp: std::net::SocketAddr,
    _sink_dir: tempfile::TempDir,
}

fn setup() -> Setup {
    setup_with(LIMITS)
}

fn setup_with(limits: &str) -> Setup {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&sink_dir.path().join("sink"), &[]).unwrap();
    let smtp = loopback(free_port());
    let koukan = Koukan::start(&relay_config(smtp, sink.addr, limits)).unwrap();
    Setup {
        koukan,
        sink,
        smtp,
        _sink_dir: sink_dir,
    }
}

/// A full good transaction: the proof that the process still serves.
fn still_serving(s: &mut Setup) {
    assert!(
        s.koukan.proc.is_running(),
        "koukan died:\n{}",
        s.koukan.log()
    );
    let before = s.sink.messages().len();
    let out = smtplib_send(
        s.smtp,
        "alice@example.com",
        &["bob@example.net"],
        "Subject: still here\r\n\r\nyes\r\n",
        &[],
        "",
    );
    assert_eq!(out, "OK {}");
    assert_eq!(
        s.sink
            .wait_messages(before + 1, Duration::from_secs(5))
            .len(),
        before + 1
    );
}

fn greeted(s: &Setup) -> RawSmtp {
    let mut c = RawSmtp::connect(s.smtp).unwrap();
    assert!(c.reply().unwrap().starts_with("220 "));
    c
}

#[test]
fn garbage_and_nul_bytes() {
    let mut s = setup();
    let mut c = greeted(&s);
    let r = c.cmd("\u{1}\u{2}garbage \u{7f}").unwrap();
    assert!(r.starts_with("500 5.5.2"), "{r}");
    c.send(b"EH\0LO x\r\n").unwrap();
    let r = c.reply().unwrap();
    assert!(r.starts_with("500 5.5.2"), "{r}");
    c.send(b"\xff\xfe\xfd\r\n").unwrap();
    assert!(c.reply().unwrap().starts_with("500 5.5.2"));
    still_serving(&mut s);
}

#[test]
fn too_many_bad_commands_disconnects_with_421() {
    let mut s = setup();
    let mut c = greeted(&s);
    let mut last = String::new();
    for _ in 0..20 {
        match c.cmd("FOO") {
            Ok(r) => last = r,
            Err(_) => break,
        }
        if last.starts_with("421") {
            break;
        }
    }
    assert!(last.starts_with("421 4.7.0"), "{last}");
    assert!(c.closed());
    still_serving(&mut s);
}

#[test]
fn hundred_kilobyte_command_line() {
    let mut s = setup();
    let mut c = greeted(&s);
    let long = format!("EHLO {}", "a".repeat(100 * 1024));
    let r = c.cmd(&long).unwrap();
    assert!(r.starts_with("500 5.5.2"), "{r}");
    // The session continues after the long line.
    assert!(c.cmd("EHLO ok.test").unwrap().starts_with("250"));
    still_serving(&mut s);
}

#[test]
fn commands_out_of_sequence() {
    let mut s = setup();
    let mut c = greeted(&s);
    assert!(
        c.cmd("MAIL FROM:<a@example.com>")
            .unwrap()
            .starts_with("503 5.5.1")
    );
    assert!(c.cmd("EHLO x.test").unwrap().starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<b@example.net>")
            .unwrap()
            .starts_with("503 5.5.1")
    );
    assert!(c.cmd("DATA").unwrap().starts_with("503 5.5.1"));
    assert!(
        c.cmd("MAIL FROM:<a@example.com>")
            .unwrap()
            .starts_with("250")
    );
    assert!(
        c.cmd("MAIL FROM:<a@example.com>")
            .unwrap()
            .starts_with("503 5.5.1")
    );
    assert!(c.cmd("DATA").unwrap().starts_with("503 5.5.1"));
    assert!(c.cmd("XYZZY").unwrap().starts_with("500 5.5.2"));
    assert!(c.cmd("VRFY bob").unwrap().starts_with("252"));
    assert!(c.cmd("NOOP").unwrap().starts_with("250"));
    assert!(c.cmd("RSET").unwrap().starts_with("250"));
    assert!(c.cmd("QUIT").unwrap().starts_with("221"));
    still_serving(&mut s);
}

#[test]
fn data_over_size_limit() {
    let mut s = setup();
    let mut c = greeted(&s);
    c.cmd("EHLO x.test").unwrap();
    assert!(
        c.cmd("MAIL FROM:<a@example.com>")
            .unwrap()
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<b@example.net>").unwrap().starts_with("250"));
    assert!(c.cmd("DATA").unwrap().starts_with("354"));
    let line = format!("{}\r\n", "x".repeat(998));
    for _ in 0..200 {
        c.send(line.as_bytes()).unwrap();
    }
    c.send(b"END-OF-MESSAGE\r\n.\r\n").unwrap();
    let r = c.reply().unwrap();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The head of the message may have streamed upstream before the limit
    // was hit (smtp-sink then dumps what it got of the aborted DATA), but
    // the upstream transaction is dropped: nothing complete arrives.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.sink
            .messages()
            .iter()
            .all(|m| !m.contains("END-OF-MESSAGE")),
        "nothing over the limit is delivered"
    );
    assert!(c.cmd("NOOP").unwrap().starts_with("250"));
    still_serving(&mut s);
}

#[test]
fn thousand_recipients_over_limit() {
    let mut s = setup();
    let mut c = greeted(&s);
    c.cmd("EHLO x.test").unwrap();
    assert!(
        c.cmd("MAIL FROM:<a@example.com>")
            .unwrap()
            .starts_with("250")
    );
    let mut batch = String::new();
    for i in 0..1000 {
        batch.push_str(&format!("RCPT TO:<u{i}@example.net>\r\n"));
    }
    c.send(batch.as_bytes()).unwrap();
    let mut ok = 0;
    let mut over = 0;
    for _ in 0..1000 {
        let r = c.reply().unwrap();
        if r.starts_with("250") {
            ok += 1;
        } else if r.starts_with("452 4.5.3") {
            over += 1;
        } else {
            panic!("unexpected reply {r}");
        }
    }
    assert_eq!((ok, over), (100, 900));
    assert!(c.cmd("DATA").unwrap().starts_with("354"));
    c.send(b"Subject: many\r\n\r\nx\r\n.\r\n").unwrap();
    assert!(c.reply().unwrap().starts_with("250"));
    let msgs = s.sink.wait_messages(1, Duration::from_secs(5));
    assert_eq!(msgs[0].matches("X-Rcpt-Args: <").count(), 100);
    still_serving(&mut s);
}

#[test]
fn client_that_stops_mid_data_delivers_nothing() {
    let mut s = setup();
    {
        let mut c = greeted(&s);
        c.cmd("EHLO x.test").unwrap();
        c.cmd("MAIL FROM:<a@example.com>").unwrap();
        c.cmd("RCPT TO:<b@example.net>").unwrap();
        assert!(c.cmd("DATA").unwrap().starts_with("354"));
        c.send(b"Subject: cut off\r\n\r\npartial").unwrap();
        // Dropped here: the connection closes mid-DATA.
    }
    let mut c = greeted(&s);
    c.cmd("EHLO x.test").unwrap();
    c.cmd("MAIL FROM:<a@example.com>").unwrap();
    c.cmd("RCPT TO:<b@example.net>").unwrap();
    assert!(c.cmd("DATA").unwrap().starts_with("354"));
    c.send(b"Subject: stalled\r\n\r\npartial").unwrap();
    // The data timeout (2s) ends the stalled session with a 4xx.
    let r = c.reply().unwrap();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.sink.messages().iter().all(|m| !m.contains("partial")),
        "no partial message may be delivered"
    );
    still_serving(&mut s);
}

#[test]
fn silent_client_times_out() {
    let mut s = setup();
    let mut c = greeted(&s);
    let start = Instant::now();
    let r = c.reply().unwrap();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert!(c.closed());
    still_serving(&mut s);
}

#[test]
fn starttls_without_tls_configured_is_refused() {
    let mut s = setup();
    let mut c = greeted(&s);
    c.cmd("EHLO x.test").unwrap();
    // No TLS configured on this listener: STARTTLS is refused cleanly.
    let r = c.cmd("STARTTLS").unwrap();
    assert!(r.starts_with("502") || r.starts_with("454"), "{r}");
    still_serving(&mut s);
}

#[test]
fn thousand_connections_over_the_limit() {
    // Long timeouts: no session may end (and free a slot) during the test.
    let mut s = setup_with("{max_connections: 50, command_timeout: 60s}");
    let mut conns = Vec::new();
    let mut refused = 0;
    let mut greeted_ok = 0;
    for _ in 0..1000 {
        match TcpStream::connect(s.smtp) {
            Ok(c) => conns.push(c),
            Err(_) => refused += 1,
        }
    }
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    for c in conns.iter_mut() {
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(c, &mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.starts_with("220") {
            greeted_ok += 1;
        } else if text.starts_with("421") || n == 0 {
            refused += 1;
        } else {
            panic!("unexpected greeting {text:?}");
        }
    }
    assert!(greeted_ok <= 50, "limit is 50, {greeted_ok} greeted");
    assert!(greeted_ok >= 1);
    assert_eq!(greeted_ok + refused, 1000);
    for c in &mut conns {
        let _ = c.write_all(b"QUIT\r\n");
    }
    drop(conns);
    std::thread::sleep(Duration::from_millis(500));
    still_serving(&mut s);
}
