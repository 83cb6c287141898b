//! Command handling: capabilities, envelope, sequence and syntax errors,
//! limits, pipelining, upstream passthrough.

use std::time::Duration;

use koukan_chain::Response;

use crate::common::*;

#[tokio::test]
async fn ehlo_helo_and_simple_commands() {
    let srv = start(config(), TestFactory::new()).await;
    let mut c = srv.session().await;
    assert_eq!(c.ehlo().await, ehlo_plain(32 * 1024 * 1024));
    assert_eq!(c.cmd("HELO client.example").await, "250 mx.test.example");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert_eq!(
        c.cmd("VRFY alice").await,
        "252 2.5.0 cannot VRFY user, but will accept message and attempt delivery"
    );
    assert!(c.cmd("HELP").await.starts_with("214 2.0.0 "));
    assert_eq!(
        c.cmd("EXPN list").await,
        "502 5.5.1 command not implemented"
    );
    assert_eq!(c.cmd("STARTTLS").await, "502 5.5.1 command not implemented");
    assert_eq!(
        c.cmd("AUTH PLAIN").await,
        "502 5.5.1 command not implemented"
    );
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 bye");
    c.expect_eof().await;
}

#[tokio::test]
async fn full_transaction_reaches_the_chain() {
    let srv = start(config(), TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    assert_eq!(
        c.cmd("MAIL FROM:<sender@example.org> SIZE=100 body=8bitmime SMTPUTF8")
            .await,
        "250 2.1.0 sender ok"
    );
    assert_eq!(
        c.cmd("RCPT TO:<rcpt@example.net>").await,
        "250 2.1.5 recipient ok"
    );
    assert_eq!(
        c.cmd("DATA").await,
        "354 start mail input; end with <CRLF>.<CRLF>"
    );
    c.send("Subject: hi\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    // The next MAIL starts a new transaction.
    assert_eq!(c.cmd("MAIL FROM:<>").await, "250 2.1.0 sender ok");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 bye");
    c.expect_eof().await;

    let seen = srv.record.seen();
    let mail = seen[0].mail_from.as_ref().unwrap();
    assert_eq!(mail.address, "sender@example.org");
    let params: Vec<(&str, Option<&str>)> = mail
        .params
        .iter()
        .map(|p| (p.keyword.as_str(), p.value.as_deref()))
        .collect();
    assert_eq!(
        params,
        [
            ("SIZE", Some("100")),
            ("BODY", Some("8BITMIME")),
            ("SMTPUTF8", None)
        ]
    );
    assert_eq!(seen[1].rcpts, ["rcpt@example.net"]);
    assert_eq!(srv.record.body(0), b"Subject: hi\r\n\r\nbody\r\n");
    assert!(seen[2].body.as_ref().unwrap().2, "final chunk is last");
    assert_eq!(seen[3].tx, 1);
    assert_eq!(seen[3].mail_from.as_ref().unwrap().address, "");

    let info = &srv.record.sessions.lock().unwrap()[0];
    assert_eq!(info.listener, "test");
    assert_eq!(info.ehlo_host.as_deref(), Some("client.example"));
    assert!(info.esmtp);
    assert!(info.tls.is_none());
    assert!(info.auth_user.is_none());

    // QUIT dropped the second transaction's chain.
    assert_eq!(srv.record.dropped(), 2);
    let m = srv.metrics_text();
    assert!(
        m.contains(r#"smtp_transactions_total{listener="test",outcome="delivered"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"smtp_transactions_total{listener="test",outcome="aborted"} 1"#));
    assert!(
        m.contains(r#"smtp_messages_bytes_total{listener="test"} 21"#),
        "{m}"
    );
}

#[tokio::test]
async fn pipelined_rcpts_travel_in_one_update_and_replies_keep_order() {
    let factory = TestFactory::with(|u| {
        let mut r = accept_all(u);
        for (i, rcpt) in u.rcpt_to.iter().enumerate() {
            if rcpt.mailbox.address.starts_with("nobody") {
                r.rcpts[i] = Response::new(550, "5.1.1 no such user");
            }
        }
        r
    });
    let srv = start(config(), factory).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    c.send(
        "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<nobody@example.net>\r\n\
         RCPT TO:<c@example.net>\r\nDATA\r\n",
    )
    .await;
    assert_eq!(c.reply().await, "250 2.1.0 sender ok");
    assert_eq!(c.reply().await, "250 2.1.5 recipient ok");
    assert_eq!(c.reply().await, "550 5.1.1 no such user");
    assert_eq!(c.reply().await, "250 2.1.5 recipient ok");
    assert!(c.reply().await.starts_with("354 "));
    let seen = srv.record.seen();
    assert_eq!(seen.len(), 1, "MAIL and RCPTs in one update: {seen:?}");
    assert_eq!(seen[0].mail_from.as_ref().unwrap().address, "a@example.org");
    assert_eq!(
        seen[0].rcpts,
        ["b@example.net", "nobody@example.net", "c@example.net"]
    );
    c.send("x\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");

    // Later RCPTs of an open transaction batch too, DATA ends the batch.
    c.send("MAIL FROM:<a@example.org>\r\n").await;
    c.reply().await;
    c.send(
        "RCPT TO:<d@example.net>\r\nRCPT TO:<e@example.net>\r\nNOOP\r\nRCPT TO:<f@example.net>\r\n",
    )
    .await;
    assert_eq!(c.reply().await, "250 2.1.5 recipient ok");
    assert_eq!(c.reply().await, "250 2.1.5 recipient ok");
    assert_eq!(c.reply().await, "250 2.0.0 OK");
    assert_eq!(c.reply().await, "250 2.1.5 recipient ok");
    let seen = srv.record.seen();
    let rcpt_updates: Vec<Vec<String>> = seen[3..].iter().map(|s| s.rcpts.clone()).collect();
    assert_eq!(
        rcpt_updates,
        [
            vec!["d@example.net".to_owned(), "e@example.net".to_owned()],
            vec!["f@example.net".to_owned()]
        ]
    );
}

#[tokio::test]
async fn rejected_mail_in_a_batch_voids_its_rcpts() {
    let factory = TestFactory::with(|u| {
        let mut r = accept_all(u);
        r.mail = Some(Response::new(550, "5.7.1 sender blocked"));
        r
    });
    let srv = start(config(), factory).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    c.send("MAIL FROM:<spam@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await, "550 5.7.1 sender blocked");
    assert_eq!(c.reply().await, "503 5.5.1 sender was not accepted");
    assert_eq!(c.reply().await, "503 5.5.1 need MAIL command first");
    assert_eq!(
        srv.record.dropped(),
        1,
        "the rejected transaction is dropped"
    );
}

#[tokio::test]
async fn upstream_replies_pass_through_verbatim() {
    let factory = TestFactory::with(|u| {
        let mut r = accept_all(u);
        if u.rcpt_to
            .iter()
            .any(|r| r.mailbox.address == "bob@example.net")
        {
            r.rcpts = vec![Response::new(550, "5.1.1 no such user")];
        }
        if u.body.as_ref().is_some_and(|b| b.last) {
            r.data = Some(Response::new(
                451,
                "4.7.1 greylisted\n4.7.1 try again later",
            ));
        }
        if u.mail_from.is_some() {
            r.mail = Some(Response::new(250, "sender <a@b> looks fine"));
        }
        r
    });
    let srv = start(config(), factory).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@b>").await,
        "250 sender <a@b> looks fine"
    );
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.net>").await,
        "550 5.1.1 no such user"
    );
    assert_eq!(c.cmd("DATA").await, "554 5.5.1 no valid recipients");
    assert_eq!(
        c.cmd("RCPT TO:<carol@example.net>").await,
        "250 2.1.5 recipient ok"
    );
    c.cmd("DATA").await;
    c.send("hello\r\n.\r\n").await;
    // Multi-line reply, both lines, verbatim.
    assert_eq!(
        c.reply().await,
        "451-4.7.1 greylisted\n451 4.7.1 try again later"
    );
    let m = srv.metrics_text();
    assert!(m.contains(r#"outcome="tempfail"} 1"#), "{m}");
}

#[tokio::test]
async fn out_of_sequence_commands() {
    let factory = TestFactory::with(|u| {
        let mut r = accept_all(u);
        r.rcpts = u
            .rcpt_to
            .iter()
            .map(|_| Response::new(550, "5.1.1 nope"))
            .collect();
        r
    });
    let srv = start(config(), factory).await;
    let mut c = srv.session().await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@b>").await,
        "503 5.5.1 send EHLO or HELO first"
    );
    c.ehlo().await;
    assert_eq!(
        c.cmd("RCPT TO:<a@b>").await,
        "503 5.5.1 need MAIL command first"
    );
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 need MAIL command first");
    c.send("BDAT 3 LAST\r\nabc").await;
    assert_eq!(c.reply().await, "503 5.5.1 need MAIL command first");
    // BDAT's octets were skipped, not taken for the start of a command.
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await, "250 2.1.0 sender ok");
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 need RCPT command first");
    assert_eq!(
        c.cmd("MAIL FROM:<a@b>").await,
        "503 5.5.1 sender already specified"
    );
    assert_eq!(c.cmd("RCPT TO:<x@y>").await, "550 5.1.1 nope");
    assert_eq!(c.cmd("DATA").await, "554 5.5.1 no valid recipients");
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    assert_eq!(srv.record.dropped(), 1, "RSET drops the chain");
    assert_eq!(
        c.cmd("RCPT TO:<a@b>").await,
        "503 5.5.1 need MAIL command first"
    );
    let m = srv.metrics_text();
    assert!(
        m.contains(r#"smtp_commands_rejected_total{listener="test",reason="sequence"} 8"#),
        "{m}"
    );
}

#[tokio::test]
async fn syntax_errors_unknown_commands_and_parameters() {
    let srv = start(config(), TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    assert_eq!(c.cmd("FOO bar").await, "500 5.5.2 command not recognized");
    assert_eq!(c.cmd("").await, "500 5.5.2 command not recognized");
    assert_eq!(
        c.cmd("MAIL FROM:sender@example.org").await,
        "501 5.5.4 syntax: MAIL FROM:<reverse-path> [parameters]"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@b> FOO=bar").await,
        "555 5.5.4 unsupported parameter FOO=BAR"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@b> RET=HDRS").await,
        "555 5.5.4 unsupported parameter MAIL"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@b> BODY=BINARYMIME").await,
        "555 5.5.4 unsupported parameter BODY=BINARYMIME"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@b> SIZE=abc").await,
        "501 5.5.4 invalid SIZE parameter"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<j\u{f6}rg@b>").await,
        "553 5.6.7 non-ASCII address requires SMTPUTF8"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await, "250 2.1.0 sender ok");
    assert_eq!(
        c.cmd("RCPT TO:<j\u{f6}rg@b>").await,
        "553 5.6.7 non-ASCII address requires SMTPUTF8"
    );
    assert_eq!(
        c.cmd("RCPT TO:<c@d> NOTIFY=NEVER").await,
        "555 5.5.4 unsupported parameter RCPT"
    );
    assert_eq!(
        c.cmd("RCPT TO:<c@d> XFOO").await,
        "555 5.5.4 unsupported parameter XFOO"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    // A BDAT whose size cannot be read is answered, then the session
    // closes: its chunk follows and nothing says where it ends, so the
    // octets after it must not be run as commands.
    c.send("BDAT x\r\nRSET\r\n").await;
    assert_eq!(c.reply().await, "501 5.5.4 syntax: BDAT chunk-size [LAST]");
    c.expect_eof().await;
}

#[tokio::test]
async fn long_lines_and_nul_bytes_are_refused_and_the_session_goes_on() {
    let srv = start(config(), TestFactory::new()).await;
    let mut c = srv.session().await;
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 100 * 1024));
    long.extend_from_slice(b"\r\n");
    c.send(&long).await;
    assert_eq!(c.reply().await, "500 5.5.2 line too long");
    assert_eq!(
        c.cmd("NO\0OP").await,
        "500 5.5.2 invalid characters in command"
    );
    c.send(b"EHLO \xff\xfe\r\n").await;
    assert_eq!(c.reply().await, "500 5.5.2 invalid characters in command");
    // A line at the limit (4096) is fine.
    let max = format!("NOOP {}", "y".repeat(4096 - 5));
    assert_eq!(c.cmd(&max).await, "250 2.0.0 OK");
    assert_eq!(c.cmd(&format!("{max}z")).await, "500 5.5.2 line too long");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
}

#[tokio::test]
async fn too_many_bad_commands_close_the_connection() {
    let mut cfg = config();
    cfg.limits.max_bad_commands = 3;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = srv.session().await;
    for _ in 0..3 {
        assert_eq!(c.cmd("JUNK").await, "500 5.5.2 command not recognized");
    }
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert_eq!(
        c.cmd("JUNK").await,
        "421 4.7.0 too many errors, closing connection"
    );
    c.expect_eof().await;
}

#[tokio::test]
async fn idle_client_times_out() {
    let mut cfg = config();
    cfg.limits.command_timeout = Duration::from_millis(300);
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    // A partial command does not reset the clock.
    c.send("NO").await;
    assert_eq!(c.reply().await, "421 4.4.2 timeout, closing connection");
    c.expect_eof().await;
}

#[tokio::test]
async fn declared_size_over_the_limit() {
    let mut cfg = config();
    cfg.limits.max_message_size = 1000;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = srv.session().await;
    assert!(c.ehlo().await.contains("250-SIZE 1000\n"));
    assert_eq!(
        c.cmd("MAIL FROM:<a@b> SIZE=1001").await,
        "552 5.3.4 message size exceeds fixed maximum message size"
    );
    assert!(srv.record.seen().is_empty(), "never reached the chain");
    assert_eq!(
        c.cmd("MAIL FROM:<a@b> SIZE=1000").await,
        "250 2.1.0 sender ok"
    );
}

#[tokio::test]
async fn recipients_over_the_limit_get_452_locally() {
    let mut cfg = config();
    cfg.limits.max_recipients = 100;
    let srv = start(cfg, TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    let mut batch = String::from("MAIL FROM:<a@example.org>\r\n");
    for i in 0..1000 {
        batch.push_str(&format!("RCPT TO:<r{i}@example.net>\r\n"));
    }
    // Write and read concurrently: 1000 replies need not fit in the socket
    // buffers while we are still writing.
    let (rd, mut wr) = c.into_inner().into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        wr.write_all(batch.as_bytes()).await.unwrap();
        wr
    });
    let mut c = Client::new(tokio::io::join(rd, tokio::io::sink()));
    assert_eq!(c.reply().await, "250 2.1.0 sender ok");
    for i in 0..1000 {
        let r = c.reply().await;
        if i < 100 {
            assert_eq!(r, "250 2.1.5 recipient ok", "rcpt {i}");
        } else {
            assert_eq!(r, "452 4.5.3 too many recipients", "rcpt {i}");
        }
    }
    let _wr = writer.await.unwrap();
    let forwarded: usize = srv.record.seen().iter().map(|s| s.rcpts.len()).sum();
    assert_eq!(forwarded, 100);
    // 452 is a limit, not a client error: the session is still usable.
    let m = srv.metrics_text();
    assert!(m.contains(r#"reason="too_many_recipients"} 900"#), "{m}");
}

#[tokio::test]
async fn upstream_failure_before_the_end_of_data_is_reported_after_it() {
    let factory = TestFactory::with(|u| {
        let mut r = accept_all(u);
        if u.body.is_some() {
            r.data = Some(Response::new(554, "5.7.1 message refused by policy"));
        }
        r
    })
    .without_bodies();
    let srv = start(config(), factory).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<a@b>").await;
    c.cmd("RCPT TO:<c@d>").await;
    c.cmd("DATA").await;
    let line = format!("{}\r\n", "z".repeat(998));
    for _ in 0..300 {
        c.send(&line).await;
    }
    c.send(".\r\n").await;
    assert_eq!(c.reply().await, "554 5.7.1 message refused by policy");
    let bodies = srv
        .record
        .seen()
        .iter()
        .filter(|s| s.body.is_some())
        .count();
    assert_eq!(bodies, 1, "nothing more is sent after the early answer");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
}

#[tokio::test]
async fn one_summary_line_per_transaction() {
    let logs = captured_logs();
    let factory = TestFactory::with(|u| {
        let mut r = accept_all(u);
        for (i, rcpt) in u.rcpt_to.iter().enumerate() {
            if rcpt.mailbox.address.starts_with('x') {
                r.rcpts[i] = Response::new(550, "5.1.1 unknown");
            }
        }
        r
    });
    let srv = start(config(), factory).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    c.send("MAIL FROM:<summary-a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<x@example.net>\r\nDATA\r\n")
        .await;
    for _ in 0..4 {
        c.reply().await;
    }
    c.send("hello\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    c.cmd("MAIL FROM:<summary-b@example.org>").await;
    c.cmd("RSET").await;
    c.cmd("QUIT").await;
    c.expect_eof().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("summary-")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for field in [
        "koukan::tx",
        "tx=tx0",
        "listener=\"test\"",
        "peer=127.0.0.1:",
        "mail_from=summary-a@example.org",
        "rcpts=1/2",
        "size=7",
        "outcome=\"delivered\"",
        "reply=250 2.0.0 queued",
        "duration_ms=",
    ] {
        assert!(lines[0].contains(field), "{field} missing: {}", lines[0]);
    }
    assert!(lines[1].contains("tx=tx1"), "{}", lines[1]);
    assert!(lines[1].contains("outcome=\"aborted\""), "{}", lines[1]);
}

#[tokio::test]
async fn bdat_size_beyond_64_bits_is_refused_and_closes() {
    let srv = start(config(), TestFactory::new()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org>").await,
        "250 2.1.0 sender ok"
    );
    assert_eq!(
        c.cmd("RCPT TO:<b@example.net>").await,
        "250 2.1.5 recipient ok"
    );
    // smtp-proto would read this size as 5 and run "RSET" and the MAIL
    // that follow the first 5 octets as commands.
    c.send("BDAT 184467440737095516165\r\nhelloRSET\r\nMAIL FROM:<x@example.org>\r\n")
        .await;
    assert_eq!(c.reply().await, "501 5.5.4 BDAT chunk size out of range");
    // No reply to anything after it: the connection is closed.
    c.expect_eof().await;
    assert_eq!(srv.record.dropped(), 1, "the open transaction is dropped");
    assert!(
        srv.record.seen().iter().all(|s| s.body.is_none()),
        "no message data reached the chain"
    );
    let m = srv.metrics_text();
    assert!(m.contains(r#"reason="bdat_size_out_of_range"} 1"#), "{m}");

    // Other sessions are unaffected.
    let mut c = srv.session().await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.net>").await;
    c.send("BDAT 5 LAST\r\nhello").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
}
