//! Message data: DATA unstuffing and chunking, BDAT, size limits, timeouts.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::common::*;

const CHUNK: usize = 64 * 1024;

async fn open_tx(srv: &Server) -> Client<tokio::net::TcpStream> {
    let mut c = srv.session().await;
    c.ehlo().await;
    next_tx(&mut c).await;
    c
}

#[tokio::test]
async fn data_is_unstuffed_and_sent_in_64k_chunks() {
    let srv = start(config(), TestFactory::new()).await;
    let mut c = open_tx(&srv).await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    // Wire form: leading dots doubled (also on the first line), plus lines
    // long enough to need several chunks.
    let mut wire = b"..first line starts with a dot\r\n".to_vec();
    let mut expected = b".first line starts with a dot\r\n".to_vec();
    for i in 0..200 {
        let line = format!("line {i} {}\r\n", "x".repeat(1500));
        wire.extend_from_slice(line.as_bytes());
        expected.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(b"..\r\n...dots\r\n");
        expected.extend_from_slice(b".\r\n..dots\r\n");
    }
    // A bare "\n.\n" is not the end (SMTP smuggling defence).
    wire.extend_from_slice(b"tail\n.\nmore\r\n.\r\n");
    expected.extend_from_slice(b"tail\n.\nmore\r\n");
    c.send(&wire).await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");

    assert_eq!(srv.record.body(0), expected);
    let chunks: Vec<(usize, bool)> = srv
        .record
        .seen()
        .iter()
        .filter_map(|s| s.body.as_ref().map(|(_, n, last)| (*n, *last)))
        .collect();
    assert!(chunks.len() >= 5, "{chunks:?}");
    assert!(chunks.iter().all(|(n, _)| *n <= CHUNK), "{chunks:?}");
    let (last, rest) = chunks.split_last().unwrap();
    assert!(last.1 && rest.iter().all(|(_, l)| !l), "{chunks:?}");
    assert!(rest.iter().any(|(n, _)| *n >= CHUNK - 1), "{chunks:?}");
}

#[tokio::test]
async fn empty_message_and_message_split_around_the_terminator() {
    let srv = start(config(), TestFactory::new()).await;
    let mut c = open_tx(&srv).await;
    c.cmd("DATA").await;
    c.send(".\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    let seen = srv.record.seen();
    let body = seen.last().unwrap().body.clone().unwrap();
    assert_eq!((body.0.as_ref(), body.2), (&b""[..], true));

    // The terminator arriving in pieces.
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.net>").await;
    c.cmd("DATA").await;
    for piece in ["abc\r", "\n", ".", "\r", "\n"] {
        c.send(piece).await;
        c.io.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    assert_eq!(srv.record.body(1), b"abc\r\n");
}

#[tokio::test]
async fn bdat_chunks_last_and_zero_last() {
    let srv = start(config(), TestFactory::new()).await;
    let mut c = open_tx(&srv).await;
    // Pipelined: two chunks in one write.
    c.send("BDAT 5\r\nhelloBDAT 7\r\n, world").await;
    assert_eq!(c.reply().await, "250 2.0.0 5 octets received");
    assert_eq!(c.reply().await, "250 2.0.0 7 octets received");
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 DATA not allowed after BDAT");
    c.send("BDAT 3 LAST\r\n!\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    assert_eq!(srv.record.body(0), b"hello, world!\r\n");
    let lasts: Vec<bool> = srv
        .record
        .seen()
        .iter()
        .filter_map(|s| s.body.as_ref().map(|b| b.2))
        .collect();
    assert_eq!(lasts, [false, false, true]);

    // BDAT 0 LAST ends a transaction with an empty final chunk.
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.net>").await;
    assert_eq!(c.cmd("BDAT 0 LAST").await, "250 2.0.0 queued");
    let seen = srv.record.seen();
    let body = seen.last().unwrap().body.clone().unwrap();
    assert_eq!((body.1, body.2), (0, true));

    // A big chunk goes upstream in 64 KiB pieces.
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.net>").await;
    let big = vec![b'q'; 200_000];
    c.send(format!("BDAT {} LAST\r\n", big.len())).await;
    c.send(&big).await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    assert_eq!(srv.record.body(2), big);
    let sizes: Vec<usize> = srv
        .record
        .seen()
        .iter()
        .filter(|s| s.tx == 2)
        .filter_map(|s| s.body.as_ref().map(|b| b.1))
        .collect();
    assert_eq!(sizes, [CHUNK, CHUNK, CHUNK, 200_000 - 3 * CHUNK]);
}

#[tokio::test]
async fn message_over_the_size_limit_is_refused_after_its_end() {
    let mut cfg = config();
    cfg.limits.max_message_size = 1000;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = open_tx(&srv).await;
    c.cmd("DATA").await;
    c.send(format!("{}\r\n.\r\n", "a".repeat(5000))).await;
    assert_eq!(
        c.reply().await,
        "552 5.3.4 message size exceeds fixed maximum message size"
    );
    assert_eq!(srv.record.dropped(), 1, "upstream transaction dropped");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert_eq!(
        c.cmd("RCPT TO:<b@example.net>").await,
        "503 5.5.1 need MAIL command first"
    );

    // BDAT: the declared chunk already exceeds the limit; its octets are
    // skipped and the transaction stays failed until LAST.
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.net>").await;
    c.send(format!("BDAT 600\r\n{}", "b".repeat(600))).await;
    assert_eq!(c.reply().await, "250 2.0.0 600 octets received");
    c.send(format!("BDAT 600\r\n{}", "b".repeat(600))).await;
    assert_eq!(
        c.reply().await,
        "552 5.3.4 message size exceeds fixed maximum message size"
    );
    c.send("BDAT 1 LAST\r\nb").await;
    assert_eq!(
        c.reply().await,
        "552 5.3.4 message size exceeds fixed maximum message size"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    let m = srv.metrics_text();
    assert!(m.contains(r#"outcome="too_big"} 2"#), "{m}");
}

#[tokio::test]
async fn stalled_data_times_out() {
    let mut cfg = config();
    cfg.limits.data_block_timeout = Duration::from_millis(300);
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = open_tx(&srv).await;
    c.cmd("DATA").await;
    c.send("partial message\r\n").await;
    assert_eq!(c.reply().await, "421 4.4.2 timeout, closing connection");
    c.expect_eof().await;
    assert_eq!(srv.record.dropped(), 1);
}

#[tokio::test]
async fn hundred_megabyte_message_streams_in_bounded_chunks() {
    let mut cfg = config();
    cfg.limits.max_message_size = 200 * 1024 * 1024;
    let srv = start(cfg, TestFactory::new().without_bodies()).await;
    let mut c = open_tx(&srv).await;
    c.cmd("DATA").await;
    let line = format!("{}\r\n", "m".repeat(998));
    let block = line.repeat(1000); // 1 MB
    for _ in 0..100 {
        c.send(&block).await;
    }
    c.send(".\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    let seen = srv.record.seen();
    let total: usize = seen
        .iter()
        .filter_map(|s| s.body.as_ref().map(|b| b.1))
        .sum();
    assert_eq!(total, 100 * 1000 * 1000);
    assert!(
        seen.iter()
            .filter_map(|s| s.body.as_ref())
            .all(|b| b.1 <= CHUNK)
    );
    // Streaming is shown by the chunk bound above; the process's peak RSS
    // is not asserted here because tests running in parallel in this
    // process share it (the relay benchmark measures koukan's peak RSS
    // for a 100 MB message).
}

const LINE_TOO_LONG_1000: &str = "554 5.6.0 message has a line longer than 1000 octets";

/// A content line of exactly `len` octets including its CRLF.
fn line_of(len: usize, fill: u8) -> Vec<u8> {
    let mut l = vec![fill; len - 2];
    l.extend_from_slice(b"\r\n");
    l
}

/// Whether the chain saw the end (a last body chunk) of transaction `tx`.
fn completed(srv: &Server, tx: usize) -> bool {
    srv.record
        .seen()
        .iter()
        .any(|s| s.tx == tx && s.body.as_ref().is_some_and(|b| b.2))
}

async fn next_tx(c: &mut Client<tokio::net::TcpStream>) {
    envelope(c, "a@example.org").await;
}

#[tokio::test]
async fn data_line_limit_boundaries() {
    let mut cfg = config();
    cfg.limits.max_data_line_length = 1000;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = open_tx(&srv).await;
    let mut tx = 0;
    // limit - 1 and limit pass, byte for byte.
    for len in [999, 1000] {
        if tx > 0 {
            next_tx(&mut c).await;
        }
        assert!(c.cmd("DATA").await.starts_with("354 "));
        let mut msg = b"Subject: x\r\n\r\n".to_vec();
        msg.extend(line_of(len, b'a'));
        msg.extend_from_slice(b"after\r\n");
        c.send(&msg).await;
        c.send(".\r\n").await;
        assert_eq!(c.reply().await, "250 2.0.0 queued", "line of {len}");
        assert_eq!(srv.record.body(tx), msg);
        tx += 1;
    }
    // A dot-stuffed line is counted unstuffed: 1001 octets on the wire,
    // 1000 in the message.
    next_tx(&mut c).await;
    c.cmd("DATA").await;
    let mut wire = b".".to_vec();
    wire.extend(line_of(1000, b'.'));
    c.send(&wire).await;
    c.send(".\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    assert_eq!(srv.record.body(tx), line_of(1000, b'.'));
    tx += 1;

    // limit + 1: refused after the final dot, upstream dropped, nothing
    // completed upstream; the text after the long line is read, not run.
    let dropped = srv.record.dropped();
    next_tx(&mut c).await;
    c.cmd("DATA").await;
    let mut msg = line_of(1001, b'b');
    msg.extend_from_slice(b"RSET\r\nQUIT\r\n.\r\n");
    c.send(&msg).await;
    assert_eq!(c.reply().await, LINE_TOO_LONG_1000);
    assert!(!completed(&srv, tx), "nothing of it may be delivered");
    assert_eq!(srv.record.dropped(), dropped + 1, "upstream dropped");
    tx += 1;

    // The session goes on with a next transaction.
    next_tx(&mut c).await;
    c.cmd("DATA").await;
    c.send("fine\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    assert_eq!(srv.record.body(tx), b"fine\r\n");
    let m = srv.metrics_text();
    assert!(
        m.contains(
            r#"smtp_commands_rejected_total{listener="test",reason="data_line_too_long"} 1"#
        ),
        "{m}"
    );
    assert!(m.contains(r#"outcome="line_too_long"} 1"#), "{m}");
}

#[tokio::test]
async fn data_line_limit_across_chunks_and_reads() {
    // A limit above the 64 KiB chunk size: the line spans chunks sent
    // upstream and reads from the socket.
    let limit = 150_000;
    let mut cfg = config();
    cfg.limits.max_data_line_length = limit;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = open_tx(&srv).await;
    for (tx, len) in [limit - 1, limit, limit + 1].into_iter().enumerate() {
        if tx > 0 {
            next_tx(&mut c).await;
        }
        c.cmd("DATA").await;
        let mut msg = b"head\r\n".to_vec();
        msg.extend(line_of(len, b'z'));
        msg.extend_from_slice(b"tail\r\n");
        // In odd pieces, so reads end mid-line and between CR and LF.
        for piece in msg.chunks(7_777) {
            c.send(piece).await;
            c.io.flush().await.unwrap();
        }
        c.send(".\r\n").await;
        let reply = c.reply().await;
        if len <= limit {
            assert_eq!(reply, "250 2.0.0 queued", "line of {len}");
            assert_eq!(srv.record.body(tx), msg);
        } else {
            assert_eq!(
                reply,
                format!("554 5.6.0 message has a line longer than {limit} octets")
            );
            assert!(!completed(&srv, tx));
        }
    }
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
}

#[tokio::test]
async fn bdat_line_limit_boundaries_and_lines_across_chunks() {
    let mut cfg = config();
    cfg.limits.max_data_line_length = 1000;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = open_tx(&srv).await;
    let mut tx = 0;
    // A line of limit - 1 and of limit, split across two BDAT chunks
    // (the CR in one, the LF in the next for the second).
    for len in [999, 1000] {
        if tx > 0 {
            next_tx(&mut c).await;
        }
        let line = line_of(len, b'a');
        let (first, second) = line.split_at(len - 1);
        c.send(format!("BDAT {}\r\n", first.len())).await;
        c.send(first).await;
        assert_eq!(
            c.reply().await,
            format!("250 2.0.0 {} octets received", first.len())
        );
        c.send(format!("BDAT {} LAST\r\n", second.len() + 4)).await;
        c.send(second).await;
        c.send("end.").await;
        assert_eq!(c.reply().await, "250 2.0.0 queued", "line of {len}");
        let mut expected = line.clone();
        expected.extend_from_slice(b"end.");
        assert_eq!(srv.record.body(tx), expected);
        tx += 1;
    }
    // The last line without CRLF counts too: limit passes...
    next_tx(&mut c).await;
    c.send("BDAT 1000 LAST\r\n").await;
    c.send(vec![b'n'; 1000]).await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    assert_eq!(srv.record.body(tx), vec![b'n'; 1000]);
    tx += 1;
    // ...limit + 1 does not.
    next_tx(&mut c).await;
    c.send("BDAT 1001 LAST\r\n").await;
    c.send(vec![b'n'; 1001]).await;
    assert_eq!(c.reply().await, LINE_TOO_LONG_1000);
    assert!(!completed(&srv, tx));
    tx += 1;

    // limit + 1 across chunks: the chunk that crosses the limit gets the
    // 554 (RFC 3030: the client stops there), and so does LAST; the
    // chunks' octets are consumed, never run as commands.
    let dropped = srv.record.dropped();
    next_tx(&mut c).await;
    c.send("BDAT 600\r\n").await;
    c.send(vec![b'c'; 600]).await;
    assert_eq!(c.reply().await, "250 2.0.0 600 octets received");
    c.send("BDAT 401\r\n").await;
    c.send(vec![b'c'; 401]).await;
    assert_eq!(c.reply().await, LINE_TOO_LONG_1000);
    c.send("BDAT 12 LAST\r\nRSET\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await, LINE_TOO_LONG_1000);
    assert!(!completed(&srv, tx));
    assert_eq!(srv.record.dropped(), dropped + 1, "upstream dropped");
    tx += 1;

    // The next message counts from zero again and goes through.
    next_tx(&mut c).await;
    c.send("BDAT 6 LAST\r\nfine\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    assert_eq!(srv.record.body(tx), b"fine\r\n");
    let m = srv.metrics_text();
    assert!(
        m.contains(
            r#"smtp_commands_rejected_total{listener="test",reason="data_line_too_long"} 2"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn ten_megabyte_line_is_refused_by_default() {
    let srv = start(config(), TestFactory::new().without_bodies()).await;
    let line = vec![b'L'; 10 * 1024 * 1024];
    let refused = "554 5.6.0 message has a line longer than 1048576 octets";

    let mut c = open_tx(&srv).await;
    c.cmd("DATA").await;
    c.send(b"Subject: long\r\n\r\n").await;
    c.send(&line).await;
    c.send("\r\n.\r\n").await;
    assert_eq!(c.reply().await, refused);
    assert!(!completed(&srv, 0));
    // Refused as the line crossed the limit: what went upstream before is
    // at most the limit plus a chunk, never the whole line.
    let sent: usize = srv
        .record
        .seen()
        .iter()
        .filter(|s| s.tx == 0)
        .filter_map(|s| s.body.as_ref().map(|b| b.1))
        .sum();
    assert!(sent <= 1024 * 1024 + CHUNK, "{sent} octets went upstream");

    next_tx(&mut c).await;
    c.send(format!("BDAT {} LAST\r\n", line.len())).await;
    c.send(&line).await;
    assert_eq!(c.reply().await, refused);
    assert!(!completed(&srv, 1));

    // Still serving, in the same session.
    next_tx(&mut c).await;
    c.cmd("DATA").await;
    c.send("ok\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
}
