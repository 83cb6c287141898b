//! Cut-through relay end to end: python3 smtplib (and raw sockets) ->
//! koukan -> Postfix's smtp-sink.

use std::time::Duration;

use koukan_integration::*;

const MSG: &str =
    "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nHello there.\r\n";

struct Setup {
    koukan: Koukan,
    sink: SmtpSink,
    smtp: std::net::SocketAddr,
    _sink_dir: tempfile::TempDir,
}

fn setup(sink_opts: &[&str], limits: &str) -> Setup {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&sink_dir.path().join("sink"), sink_opts).unwrap();
    let smtp = loopback(free_port());
    let koukan = Koukan::start(&relay_config(smtp, sink.addr, limits)).unwrap();
    Setup {
        koukan,
        sink,
        smtp,
        _sink_dir: sink_dir,
    }
}

#[test]
fn smtplib_message_reaches_smtp_sink_with_received_header() {
    let s = setup(&[], "{}");
    let out = smtplib_send(
        s.smtp,
        "alice@example.com",
        &["bob@example.net"],
        MSG,
        &[],
        "",
    );
    assert_eq!(out, "OK {}");
    let msgs = s.sink.wait_messages(1, Duration::from_secs(5));
    assert_eq!(msgs.len(), 1, "sink got: {msgs:?}");
    let m = &msgs[0];
    assert!(m.contains("X-Mail-Args: <alice@example.com>"), "{m}");
    assert!(m.contains("X-Rcpt-Args: <bob@example.net"), "{m}");
    assert!(m.contains("Received: from "), "{m}");
    assert!(m.contains("by koukan.test"), "{m}");
    assert!(m.contains("for <bob@example.net>"), "{m}");
    assert!(m.contains("Subject: hello"), "{m}");
    assert!(m.contains("Hello there."), "{m}");
    // One summary line per transaction.
    let log = s.koukan.log();
    assert!(
        log.lines()
            .any(|l| l.contains("alice@example.com") && l.contains("250")),
        "no transaction summary in log:\n{log}"
    );
}

#[test]
fn hundred_recipients_one_upstream_transaction() {
    let s = setup(&[], "{}");
    let rcpts: Vec<String> = (0..100).map(|i| format!("user{i}@example.net")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let out = smtplib_send(s.smtp, "alice@example.com", &refs, MSG, &[], "");
    assert_eq!(out, "OK {}");
    let msgs = s.sink.wait_messages(1, Duration::from_secs(5));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].matches("X-Rcpt-Args: <").count(), 100);
}

#[test]
fn upstream_rcpt_4xx_passes_through_verbatim() {
    let s = setup(
        &["-r", "RCPT", "-b", "451 4.7.1 custom greylist text"],
        "{}",
    );
    let out = smtplib_send(
        s.smtp,
        "alice@example.com",
        &["bob@example.net"],
        MSG,
        &[],
        "",
    );
    assert_eq!(
        out,
        r#"ERR RCPT {"bob@example.net": [451, "4.7.1 custom greylist text"]}"#
    );
    assert!(s.sink.messages().is_empty());
}

#[test]
fn upstream_mail_5xx_passes_through_verbatim() {
    let s = setup(
        &["-f", "MAIL", "-B", "553 5.7.1 sender policy says no"],
        "{}",
    );
    let out = smtplib_send(
        s.smtp,
        "alice@example.com",
        &["bob@example.net"],
        MSG,
        &[],
        "",
    );
    assert_eq!(out, "ERR 553 5.7.1 sender policy says no");
}

#[test]
fn upstream_data_5xx_passes_through_verbatim() {
    let s = setup(
        &["-f", ".", "-B", "554 5.6.0 content rejected upstream"],
        "{}",
    );
    let out = smtplib_send(
        s.smtp,
        "alice@example.com",
        &["bob@example.net"],
        MSG,
        &[],
        "",
    );
    assert_eq!(out, "ERR 554 5.6.0 content rejected upstream");
}

#[test]
fn upstream_data_4xx_passes_through_verbatim() {
    let s = setup(&["-r", ".", "-b", "452 4.3.1 upstream disk full"], "{}");
    let out = smtplib_send(
        s.smtp,
        "alice@example.com",
        &["bob@example.net"],
        MSG,
        &[],
        "",
    );
    assert_eq!(out, "ERR 452 4.3.1 upstream disk full");
}

#[test]
fn upstream_drop_mid_data_gives_client_4xx_not_250() {
    // smtp-sink hangs up when it sees the end of data, without replying.
    let s = setup(&["-q", "."], "{}");
    let out = smtplib_send(
        s.smtp,
        "alice@example.com",
        &["bob@example.net"],
        MSG,
        &[],
        "",
    );
    let code: u16 = out
        .strip_prefix("ERR ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("expected an error reply, got {out}"));
    assert!((400..500).contains(&code), "{out}");
    // And the relay keeps serving.
    let mut c = RawSmtp::connect(s.smtp).unwrap();
    assert!(c.reply().unwrap().starts_with("220 "));
}

#[test]
fn pipelined_batch_gets_replies_in_order() {
    let s = setup(&[], "{max_recipients: 2}");
    let mut c = RawSmtp::connect(s.smtp).unwrap();
    assert!(c.reply().unwrap().starts_with("220 "));
    let ehlo = c.cmd("EHLO client.test").unwrap();
    assert!(ehlo.contains("PIPELINING"), "{ehlo}");
    c.send(
        b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n",
    )
    .unwrap();
    assert!(c.reply().unwrap().starts_with("250"), "MAIL");
    assert!(c.reply().unwrap().starts_with("250"), "RCPT a");
    assert!(c.reply().unwrap().starts_with("250"), "RCPT b");
    assert!(
        c.reply().unwrap().starts_with("452 4.5.3"),
        "RCPT c over the limit"
    );
    assert!(c.reply().unwrap().starts_with("354"), "DATA");
    c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\n").unwrap();
    let data = c.reply().unwrap();
    assert!(data.starts_with("250"), "{data}");
    let msgs = s.sink.wait_messages(1, Duration::from_secs(5));
    assert_eq!(msgs[0].matches("X-Rcpt-Args: <").count(), 2);
    assert!(c.cmd("QUIT").unwrap().starts_with("221"));
}

#[test]
fn bdat_chunks_are_relayed() {
    let s = setup(&[], "{}");
    let mut c = RawSmtp::connect(s.smtp).unwrap();
    c.reply().unwrap();
    let ehlo = c.cmd("EHLO client.test").unwrap();
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    assert!(
        c.cmd("MAIL FROM:<alice@example.com>")
            .unwrap()
            .starts_with("250")
    );
    assert!(
        c.cmd("RCPT TO:<bob@example.net>")
            .unwrap()
            .starts_with("250")
    );
    let part1 = "Subject: chunked\r\n\r\n";
    let part2 = ".leading dot stays\r\nend\r\n";
    c.send(format!("BDAT {}\r\n{part1}", part1.len()).as_bytes())
        .unwrap();
    assert!(c.reply().unwrap().starts_with("250"));
    c.send(format!("BDAT {} LAST\r\n{part2}", part2.len()).as_bytes())
        .unwrap();
    let last = c.reply().unwrap();
    assert!(last.starts_with("250"), "{last}");
    let msgs = s.sink.wait_messages(1, Duration::from_secs(5));
    assert!(msgs[0].contains("Subject: chunked"), "{}", msgs[0]);
    assert!(msgs[0].contains("\n.leading dot stays"), "{}", msgs[0]);
}

#[test]
fn eight_bit_body_is_relayed_intact() {
    let s = setup(&[], "{}");
    let msg = "From: alice@example.com\r\nSubject: caf\u{e9}\r\n\r\nna\u{ef}ve \u{2603}\r\n";
    let out = smtplib_send(
        s.smtp,
        "alice@example.com",
        &["bob@example.net"],
        msg,
        &["BODY=8BITMIME"],
        "",
    );
    assert_eq!(out, "OK {}");
    let msgs = s.sink.wait_messages(1, Duration::from_secs(5));
    assert!(msgs[0].contains("na\u{ef}ve \u{2603}"), "{msgs:?}");
}

/// smtp-sink does not offer SMTPUTF8: the message is refused, never
/// downgraded. Relayed to a second koukan (which offers it, delivering
/// into a Maildir), the UTF-8 address arrives intact.
#[test]
fn smtputf8_address_needs_an_upstream_that_offers_it() {
    let s = setup(&[], "{}");
    let msg = "From: alice@example.com\r\nSubject: utf8\r\n\r\nna\u{ef}ve\r\n";
    let rcpt = "\u{7528}\u{6237}@example.net";
    let out = smtplib_send(s.smtp, "alice@example.com", &[rcpt], msg, &["SMTPUTF8"], "");
    assert!(
        out.starts_with("ERR 550 5.6.7") || out.contains("5.6.7"),
        "{out}"
    );
    assert!(s.sink.messages().is_empty());

    let final_hop = loopback(free_port());
    let maildir_yaml = format!(
        r#"
node: {{id: final-hop}}
admin: {{address: "{{admin}}"}}
static_resources:
  listeners:
  - name: in
    address: "{final_hop}"
    smtp: {{hostname: final.test, sender: in}}
  senders: [{{name: in, chain: deliver}}]
  chains:
  - name: deliver
    filters:
    - received_header: {{received_hostname: final.test}}
    - router: {{destination: {{endpoint: box}}}}
  endpoints:
  - name: box
    maildir: {{path: maildir}}
"#
    );
    let last = Koukan::start(&maildir_yaml).unwrap();
    let relay_port = loopback(free_port());
    let _relay = Koukan::start(&relay_config(relay_port, final_hop, "{}")).unwrap();
    let out = smtplib_send(
        relay_port,
        "alice@example.com",
        &[rcpt],
        msg,
        &["SMTPUTF8"],
        "",
    );
    assert_eq!(out, "OK {}");
    let files: Vec<_> = std::fs::read_dir(last.path("maildir/new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let body = std::fs::read_to_string(&files[0]).unwrap();
    assert!(body.contains(&format!("for <{rcpt}>")), "{body}");
    assert!(body.contains("with UTF8SMTP"), "{body}");
    assert!(body.contains("na\u{ef}ve"), "{body}");
}

#[test]
fn declared_size_over_limit_is_refused() {
    let s = setup(&[], "{max_message_size: 10000}");
    let mut c = RawSmtp::connect(s.smtp).unwrap();
    c.reply().unwrap();
    let ehlo = c.cmd("EHLO client.test").unwrap();
    assert!(ehlo.contains("SIZE 10000"), "{ehlo}");
    let r = c.cmd("MAIL FROM:<alice@example.com> SIZE=20000").unwrap();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(
        c.cmd("MAIL FROM:<alice@example.com> SIZE=2000")
            .unwrap()
            .starts_with("250")
    );
}

#[test]
fn metrics_health_and_ready() {
    let s = setup(&[], "{}");
    smtplib_send(
        s.smtp,
        "alice@example.com",
        &["bob@example.net"],
        MSG,
        &[],
        "",
    );
    assert_eq!(http_get(s.koukan.admin, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(s.koukan.admin, "/ready").unwrap().0, 200);
    let (code, body) = http_get(s.koukan.admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("koukan_smtp_"), "{body}");
    assert!(body.contains("koukan_config_generation"), "{body}");
}

/// One inbound transaction maps to one upstream transaction: a recipient
/// routed elsewhere gets 451 4.5.3 and reaches its own destination when
/// the client retries it in a separate transaction.
#[test]
fn second_destination_in_one_transaction_gets_451_and_retries_cleanly() {
    let dirs = tempfile::tempdir().unwrap();
    let sink_a = SmtpSink::start(&dirs.path().join("a"), &[]).unwrap();
    let sink_b = SmtpSink::start(&dirs.path().join("b"), &[]).unwrap();
    let smtp = loopback(free_port());
    let yaml = format!(
        r#"
node: {{id: two-destinations}}
admin: {{address: "{{admin}}"}}
static_resources:
  listeners:
  - name: mx
    address: "{smtp}"
    smtp: {{hostname: koukan.test, sender: inbound}}
  senders: [{{name: inbound, chain: split}}]
  chains:
  - name: split
    filters:
    - router:
        policy:
          address_list:
            domains: [a.test]
            destination: {{endpoint: upstream, host_list: [{{host: 127.0.0.1, port: {pa}}}]}}
    - router:
        policy:
          address_list:
            domains: [b.test]
            destination: {{endpoint: upstream, host_list: [{{host: 127.0.0.1, port: {pb}}}]}}
    - router: {{}}
  endpoints:
  - name: upstream
    smtp: {{ehlo_hostname: koukan.test}}
"#,
        pa = sink_a.addr.port(),
        pb = sink_b.addr.port()
    );
    let _k = Koukan::start(&yaml).unwrap();
    let out = smtplib_send(
        smtp,
        "alice@example.com",
        &["x@a.test", "y@b.test", "z@a.test", "nobody@c.test"],
        MSG,
        &[],
        "",
    );
    assert!(out.starts_with("OK "), "{out}");
    assert!(out.contains(r#""y@b.test": [451, "4.5.3"#), "{out}");
    assert!(out.contains(r#""nobody@c.test": [550, "5.1.1"#), "{out}");
    let a = sink_a.wait_messages(1, Duration::from_secs(5));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].matches("X-Rcpt-Args: <").count(), 2, "{}", a[0]);
    assert!(sink_b.messages().is_empty());
    // The client's retry of the deferred recipient.
    assert_eq!(
        smtplib_send(smtp, "alice@example.com", &["y@b.test"], MSG, &[], ""),
        "OK {}"
    );
    assert_eq!(sink_b.wait_messages(1, Duration::from_secs(5)).len(), 1);
}
