//! Whole-message filters in a real process: `message_parse` records the
//! defects of a message's header as a signal that the stored transaction
//! keeps and the admin API shows, refuses defective messages when told to,
//! and holds a 100 MB message back (spooled to a file) without holding it
//! in memory.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use koukan_integration::*;

fn submit_id(smtp: SocketAddr, data: &str) -> String {
    match smtp_submit(smtp, "alice@example.org", &["bob@example.com"], data) {
        Submit::Accepted(r) => r.trim_end().rsplit(' ').next().unwrap().to_owned(),
        other => panic!("{other:?}"),
    }
}

/// A filter's signal goes into the stored transaction, and
/// `GET /transactions/{id}` shows it, with the typed ingress.
#[test]
fn a_signal_is_stored_and_shown_by_the_admin_api() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&sink_dir.path().join("sink"), &[]).unwrap();
    let smtp = loopback(free_port());
    let yaml = format!(
        r#"
node: {{id: signals-test}}
admin: {{address: "{{admin}}"}}
storage: {{embedded: {{path: data/koukan.db}}}}
scheduler: {{poll_interval: 0.2s}}
static_resources:
  listeners:
  - name: in
    address: "{smtp}"
    smtp: {{hostname: koukan.test, sender: in}}
  senders: [{{name: in, chain: in}}]
  chains:
  - name: in
    filters:
    - message_parse: {{}}
    store_and_forward: {{output_chain: out}}
  - name: out
    filters:
    - router: {{destination: {{endpoint: sink, host_list: [{{host: "{sh}", port: {sp}}}]}}}}
    retry: {{max_attempts: 3, min_attempt_time: 1s, max_attempt_time: 1s}}
  endpoints:
  - name: sink
    smtp: {{ehlo_hostname: koukan.test}}
"#,
        sh = sink.addr.ip(),
        sp = sink.addr.port(),
    );
    let k = Koukan::start(&yaml).unwrap();
    // No Date, no Message-ID, two Subjects.
    let id = submit_id(
        smtp,
        "From: alice@example.org\r\nSubject: one\r\nSubject: two\r\n\r\nhello\r\n",
    );
    let (status, body) = http_get(k.admin, &format!("/transactions/{id}")).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tx = &v["transaction"]["tx"];
    let parse = &tx["signals"]["message_parse"];
    assert_eq!(parse["count"], 3, "{body}");
    assert_eq!(
        parse["defects"],
        serde_json::json!([
            {"kind": "missing_header", "header": "Date"},
            {"kind": "missing_header", "header": "Message-ID"},
            {"kind": "duplicate_header", "header": "Subject", "count": 2},
        ]),
        "{body}"
    );
    assert_eq!(parse["header_fields"], 3, "{body}");
    let ingress = &tx["ingress"]["smtp"];
    assert_eq!(ingress["listener"], "in", "{body}");
    assert!(
        ingress["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{body}"
    );
    assert_eq!(ingress["local"], smtp.to_string(), "{body}");
    assert_eq!(ingress["tls"], serde_json::Value::Null, "{body}");
    // And the message still goes out.
    let msgs = sink.wait_messages(1, Duration::from_secs(20));
    assert!(msgs[0].contains("Subject: two"), "{}", msgs[0]);
}

/// With `reject`, a defective message gets the configured reply and
/// nothing of it goes upstream; a clean one goes through whole.
#[test]
fn a_configured_reply_refuses_a_defective_message() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&sink_dir.path().join("sink"), &[]).unwrap();
    let smtp = loopback(free_port());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("spool")).unwrap();
    let yaml = format!(
        r#"
node: {{id: reject-test}}
admin: {{address: "{{admin}}"}}
static_resources:
  listeners:
  - name: in
    address: "{smtp}"
    smtp: {{hostname: koukan.test, sender: in}}
  senders: [{{name: in, chain: relay}}]
  chains:
  - name: relay
    filters:
    - message_parse:
        reject: {{code: 550, text: "5.6.0 message header malformed"}}
        spool_dir: spool
    - router: {{destination: {{endpoint: sink, host_list: [{{host: "{sh}", port: {sp}}}]}}}}
  endpoints:
  - name: sink
    smtp: {{ehlo_hostname: koukan.test}}
"#,
        sh = sink.addr.ip(),
        sp = sink.addr.port(),
    );
    let _k = Koukan::start_in(dir, &yaml).unwrap();
    let bad = "Subject: no from\r\n\r\nbad\r\n";
    match smtp_submit(smtp, "a@example.org", &["b@example.com"], bad) {
        Submit::Refused { stage, reply } => {
            assert_eq!(stage, "dot");
            assert_eq!(reply, "550 5.6.0 message header malformed");
        }
        other => panic!("{other:?}"),
    }
    let good = "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: a@example.org\r\n\
                Message-ID: <1@example.org>\r\nSubject: fine\r\n\r\ngood\r\n";
    assert!(smtp_submit(smtp, "a@example.org", &["b@example.com"], good).is_accepted());
    sink.wait_messages(1, Duration::from_secs(10));
    // Time for a stray second message to show.
    std::thread::sleep(Duration::from_millis(300));
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].contains("Subject: fine") && msgs[0].contains("good"));
}

/// Peak resident memory of a process, from /proc.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

const MIB: u64 = 1024 * 1024;

/// A 100 MB message through SMTP in → message_parse → relay to
/// smtp-sink: the filter holds it back whole (spooled to a file) before
/// streaming it on, and koukan's peak RSS stays under 64 MB.
#[test]
fn a_100_mb_message_through_a_whole_message_filter_stays_under_64_mb() {
    const SIZE: usize = 100_000_000;
    let started = Instant::now();
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&sink_dir.path().join("sink"), &[]).unwrap();
    let smtp = loopback(free_port());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("spool")).unwrap();
    let yaml = format!(
        r#"
node: {{id: big-message}}
admin: {{address: "{{admin}}"}}
static_resources:
  listeners:
  - name: in
    address: "{smtp}"
    smtp:
      hostname: koukan.test
      sender: in
      limits: {{max_message_size: 200000000, data_timeout: 120s}}
  senders: [{{name: in, chain: relay}}]
  chains:
  - name: relay
    filters:
    - message_parse: {{spool_dir: spool}}
    - router: {{destination: {{endpoint: sink, host_list: [{{host: "{sh}", port: {sp}}}]}}}}
  endpoints:
  - name: sink
    smtp: {{ehlo_hostname: koukan.test}}
"#,
        sh = sink.addr.ip(),
        sp = sink.addr.port(),
    );
    let k = Koukan::start_in(dir, &yaml).unwrap();
    let pid = k.proc.pid();
    let before = vm_hwm_kib(pid);

    let mut c = RawSmtp::connect(smtp).unwrap();
    // The final reply comes once the whole message has been spooled,
    // checked and relayed: allow for a slow (debug, shared) machine.
    c.stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    assert!(c.reply().unwrap().starts_with("220"));
    assert!(c.cmd("EHLO client.test").unwrap().starts_with("250"));
    assert!(
        c.cmd(&format!("MAIL FROM:<a@example.org> SIZE={SIZE}"))
            .unwrap()
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<b@example.com>").unwrap().starts_with("250"));
    assert!(c.cmd("DATA").unwrap().starts_with("354"));
    // Written a MiB at a time, so the test holds little of it either.
    let header = "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: a@example.org\r\n\
                  Message-ID: <big@example.org>\r\nSubject: big\r\n\r\n";
    let line = format!("{}\r\n", "x".repeat(98));
    let mut sent = header.len();
    c.stream.write_all(header.as_bytes()).unwrap();
    let block = line.repeat(MIB as usize / line.len());
    while sent + block.len() <= SIZE {
        c.stream.write_all(block.as_bytes()).unwrap();
        sent += block.len();
    }
    while sent + line.len() <= SIZE {
        c.stream.write_all(line.as_bytes()).unwrap();
        sent += line.len();
    }
    c.stream.write_all(b".\r\n").unwrap();
    let reply = c.reply().unwrap();
    assert!(reply.starts_with("250"), "{reply}\nlog:\n{}", k.log());
    let _ = c.cmd("QUIT");
    let peak = vm_hwm_kib(pid);

    // The sink got all of it (its dump has LF line ends and its own
    // header lines in front).
    let lines = (sent - header.len()) / line.len();
    let want = (sent - lines - 5) as u64;
    let got = wait_for(Duration::from_secs(60), || {
        let size = std::fs::read_dir(&sink.dir)
            .ok()?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .max()?;
        (size >= want).then_some(size)
    });
    assert!(got.is_some(), "the sink did not get the whole message");
    assert!(
        sent >= SIZE - line.len() && sent <= SIZE,
        "sent {sent} octets"
    );
    eprintln!(
        "VmHWM before {before} KiB, after {peak} KiB; {:?}",
        started.elapsed()
    );
    assert!(
        peak < 64 * 1024,
        "koukan's peak RSS was {peak} KiB (before the message: {before} KiB)"
    );
}
