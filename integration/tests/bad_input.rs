//! Bad input against the real binary: each case gets its precise reply
//! and the process keeps serving afterwards.

use std::io::{Read, Write};
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

/// A connection in a transaction: greeted, EHLO, MAIL and RCPT accepted.
fn in_transaction(s: &Setup) -> RawSmtp {
    let mut c = greeted(s);
    assert!(c.cmd("EHLO x.test").unwrap().starts_with("250"));
    let r = c.cmd("MAIL FROM:<a@example.com>").unwrap();
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<b@example.net>").unwrap();
    assert!(r.starts_with("250"), "{r}");
    c
}

/// A message whose header line `X-Long:` is `len` octets with its CRLF.
fn long_header_message(marker: &str, len: usize) -> Vec<u8> {
    let head = "X-Long: ";
    let mut m = format!("Subject: {marker}\r\n{head}").into_bytes();
    m.extend(std::iter::repeat_n(b'h', len - head.len() - 2));
    m.extend_from_slice(b"\r\n\r\nbody of ");
    m.extend_from_slice(marker.as_bytes());
    m.extend_from_slice(b"\r\n");
    m
}

/// The sink's dump of the message with `marker`, if it got one.
fn sunk(s: &Setup, marker: &str) -> Option<String> {
    s.sink
        .messages()
        .into_iter()
        .find(|m| m.contains(&format!("body of {marker}")))
}

/// Everything the server sends until it closes the connection.
fn rest_until_closed(c: &mut RawSmtp) -> String {
    let mut rest = Vec::new();
    let _ = c.reader.read_to_end(&mut rest);
    String::from_utf8_lossy(&rest).into_owned()
}

#[test]
fn data_line_limit_boundaries_with_data_and_bdat() {
    let mut s = setup_with("{max_data_line_length: 1000, command_timeout: 5s, data_timeout: 5s}");
    let refused = "554 5.6.0 message has a line longer than 1000 octets\r\n";
    for (len, ok) in [(999, true), (1000, true), (1001, false)] {
        // DATA.
        let marker = format!("data-{len}");
        let msg = long_header_message(&marker, len);
        let mut c = in_transaction(&s);
        assert!(c.cmd("DATA").unwrap().starts_with("354"));
        c.send(&msg).unwrap();
        c.send(b".\r\n").unwrap();
        let r = c.reply().unwrap();
        assert!(
            c.cmd("MAIL FROM:<a@example.com>")
                .unwrap()
                .starts_with("250")
        );
        assert!(c.cmd("RCPT TO:<b@example.net>").unwrap().starts_with("250"));
        // BDAT, the same message split in two chunks inside the line.
        let bmarker = format!("bdat-{len}");
        let bmsg = long_header_message(&bmarker, len);
        let (a, b) = bmsg.split_at(500);
        c.send(format!("BDAT {}\r\n", a.len()).as_bytes()).unwrap();
        c.send(a).unwrap();
        let r1 = c.reply().unwrap();
        assert!(r1.starts_with("250"), "{r1}");
        c.send(format!("BDAT {} LAST\r\n", b.len()).as_bytes())
            .unwrap();
        c.send(b).unwrap();
        let r2 = c.reply().unwrap();
        assert!(c.cmd("NOOP").unwrap().starts_with("250"));
        if ok {
            assert!(r.starts_with("250"), "DATA, line of {len}: {r}");
            assert!(r2.starts_with("250"), "BDAT, line of {len}: {r2}");
            for (m, msg) in [(&marker, &msg), (&bmarker, &bmsg)] {
                let got = wait_for(Duration::from_secs(5), || sunk(&s, m))
                    .unwrap_or_else(|| panic!("{m} not delivered"));
                // The message, byte for byte, after our Received header
                // (smtp-sink writes its dump with LF line ends).
                let text = String::from_utf8(msg.clone()).unwrap();
                let text = text.replace("\r\n", "\n");
                assert!(got.contains(&text), "{m}: {got}");
            }
        } else {
            assert_eq!(r, refused, "DATA, line of {len}");
            assert_eq!(r2, refused, "BDAT, line of {len}");
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(sunk(&s, &marker), None, "refused DATA delivered");
            assert_eq!(sunk(&s, &bmarker), None, "refused BDAT delivered");
        }
    }
    still_serving(&mut s);
}

#[test]
fn ten_megabyte_header_line_is_refused_by_default() {
    // Default limits: the message size limit (32 MiB) allows it, the data
    // line limit (1 MiB) does not.
    let mut s = setup_with("{}");
    let refused = "554 5.6.0 message has a line longer than 1048576 octets\r\n";
    let msg = long_header_message("ten-mib", 10 * 1024 * 1024);
    let mut c = in_transaction(&s);
    assert!(c.cmd("DATA").unwrap().starts_with("354"));
    c.send(&msg).unwrap();
    c.send(b".\r\n").unwrap();
    assert_eq!(c.reply().unwrap(), refused);
    let r = c.cmd("MAIL FROM:<a@example.com>").unwrap();
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("RCPT TO:<b@example.net>").unwrap().starts_with("250"));
    let bmsg = long_header_message("ten-mib-bdat", 10 * 1024 * 1024);
    c.send(format!("BDAT {} LAST\r\n", bmsg.len()).as_bytes())
        .unwrap();
    c.send(&bmsg).unwrap();
    assert_eq!(c.reply().unwrap(), refused);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sunk(&s, "ten-mib"), None);
    assert_eq!(sunk(&s, "ten-mib-bdat"), None);
    assert!(c.cmd("NOOP").unwrap().starts_with("250"));
    still_serving(&mut s);
}

#[test]
fn bdat_chunk_size_beyond_64_bits_closes_the_connection() {
    let mut s = setup();
    let mut c = in_transaction(&s);
    // smtp-proto alone reads this size as 5: "hello" would be the chunk
    // and RSET and MAIL would run as commands.
    c.send(b"BDAT 184467440737095516165\r\nhelloRSET\r\nMAIL FROM:<x@example.com>\r\n")
        .unwrap();
    assert_eq!(
        c.reply().unwrap(),
        "501 5.5.4 BDAT chunk size out of range\r\n"
    );
    assert_eq!(rest_until_closed(&mut c), "", "nothing after the 501");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.sink.messages().iter().all(|m| !m.contains("hello")),
        "no data of it is delivered"
    );
    still_serving(&mut s);
}
