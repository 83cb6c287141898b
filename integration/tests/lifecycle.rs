//! Process lifecycle: check-config, refusing bad configs, SIGHUP reload,
//! graceful shutdown, and the quickstart config delivering to a Maildir.

use std::process::Command;
use std::time::Duration;

use koukan_integration::*;

#[test]
fn check_config_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"
node: {id: x}
admin: {address: "127.0.0.1:9901"}
static_resources:
  listeners:
  - name: a
    address: "127.0.0.1:2525"
    smtp: {sender: inbound, tls: {cert: missing-cert.pem, key: missing-key.pem}}
  - name: b
    address: "not an address"
    smtp: {sender: nobody}
  senders:
  - name: inbound
    chain: relay
  chains:
  - name: relay
    filters:
    - router: {destination: {endpoint: nowhere}}
"#,
    )
    .unwrap();
    let out = Command::new(koukan_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "static_resources.listeners[0].smtp.tls.cert",
        "static_resources.listeners[1].address",
        "static_resources.listeners[1].smtp.sender",
        "static_resources.chains[0].filters[0].router.destination.endpoint",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
    assert!(err.contains("bad.yaml"), "errors name the file:\n{err}");

    // The proxy refuses to start on the same errors.
    let out = Command::new(koukan_bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("static_resources.listeners[0].smtp.tls.cert")
    );

    // And a good file passes.
    let good = workspace_root().join("configs/quickstart.yaml");
    let out = Command::new(koukan_bin())
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sighup_reload_applies_to_new_transactions_and_keeps_the_socket() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&sink_dir.path().join("sink"), &[]).unwrap();
    let smtp = loopback(free_port());
    let config = relay_config(smtp, sink.addr, "{}");
    let k = Koukan::start(&config).unwrap();

    // A session opened before the reload, mid-transaction.
    let mut early = RawSmtp::connect(smtp).unwrap();
    early.reply().unwrap();
    early.cmd("EHLO early.test").unwrap();
    assert!(
        early
            .cmd("MAIL FROM:<early@example.com>")
            .unwrap()
            .starts_with("250")
    );

    // Reload with a different Received hostname.
    let admin = k.admin.to_string();
    let reloaded = config
        .replace(
            "received_hostname: koukan.test",
            "received_hostname: reloaded.test",
        )
        .replace("hostname: koukan.test\n", "hostname: reloaded.test\n")
        .replace("{admin}", &admin);
    std::fs::write(&k.config_path, &reloaded).unwrap();
    k.proc.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !k.log().contains("config reloaded") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(k.log().contains("config reloaded"), "{}", k.log());

    // The transaction in flight finishes on the config it started with.
    assert!(
        early
            .cmd("RCPT TO:<bob@example.net>")
            .unwrap()
            .starts_with("250")
    );
    assert!(early.cmd("DATA").unwrap().starts_with("354"));
    early.send(b"Subject: early\r\n\r\nx\r\n.\r\n").unwrap();
    assert!(early.reply().unwrap().starts_with("250"));
    let msgs = sink.wait_messages(1, Duration::from_secs(5));
    assert!(msgs[0].contains("by koukan.test"), "{}", msgs[0]);

    // The socket was kept (same port, never closed) and new sessions get
    // the new session config.
    let mut fresh = RawSmtp::connect(smtp).unwrap();
    let greeting = fresh.reply().unwrap();
    assert!(greeting.starts_with("220 reloaded.test"), "{greeting}");

    // The same session's next transaction and new sessions use the new one.
    let out = smtplib_send(
        smtp,
        "late@example.com",
        &["bob@example.net"],
        "Subject: late\r\n\r\nx\r\n",
        &[],
        "",
    );
    assert_eq!(out, "OK {}");
    let msgs = sink.wait_messages(2, Duration::from_secs(5));
    let late = msgs.iter().find(|m| m.contains("Subject: late")).unwrap();
    assert!(late.contains("by reloaded.test"), "{late}");

    // A bad file is refused and the old config stays.
    std::fs::write(
        &k.config_path,
        "static_resources: {listeners: [{name: 7}]}\n",
    )
    .unwrap();
    k.proc.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !k.log().contains("config reload refused") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(k.log().contains("config reload refused"), "{}", k.log());
    let out = smtplib_send(
        smtp,
        "after@example.com",
        &["bob@example.net"],
        "Subject: after\r\n\r\nx\r\n",
        &[],
        "",
    );
    assert_eq!(out, "OK {}");
    let msgs = sink.wait_messages(3, Duration::from_secs(5));
    let after = msgs.iter().find(|m| m.contains("Subject: after")).unwrap();
    assert!(after.contains("by reloaded.test"), "{after}");
    let (_, metrics) = http_get(k.admin, "/metrics").unwrap();
    assert!(metrics.contains("result=\"rejected\""), "{metrics}");
}

#[test]
fn sigterm_drains_in_flight_transaction_and_refuses_new_sessions() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&sink_dir.path().join("sink"), &[]).unwrap();
    let smtp = loopback(free_port());
    let mut k = Koukan::start(&relay_config(smtp, sink.addr, "{drain_timeout: 10s}")).unwrap();

    let mut busy = RawSmtp::connect(smtp).unwrap();
    busy.reply().unwrap();
    busy.cmd("EHLO busy.test").unwrap();
    assert!(
        busy.cmd("MAIL FROM:<busy@example.com>")
            .unwrap()
            .starts_with("250")
    );
    assert!(
        busy.cmd("RCPT TO:<bob@example.net>")
            .unwrap()
            .starts_with("250")
    );

    k.proc.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(http_get(k.admin, "/ready").map(|r| r.0).unwrap_or(503), 503);

    // New sessions are told to go elsewhere.
    let mut late = RawSmtp::connect(smtp).unwrap();
    let r = late.reply().unwrap();
    assert!(r.starts_with("421 4.3.2"), "{r}");

    // The transaction in flight completes.
    assert!(busy.cmd("DATA").unwrap().starts_with("354"));
    busy.send(b"Subject: drained\r\n\r\nx\r\n.\r\n").unwrap();
    let r = busy.reply().unwrap();
    assert!(r.starts_with("250"), "{r}");
    // Then the session is told to go away.
    let r = busy.cmd("MAIL FROM:<again@example.com>").unwrap();
    assert!(r.starts_with("421"), "{r}");
    assert_eq!(sink.wait_messages(1, Duration::from_secs(5)).len(), 1);
    let status = k.proc.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        k.log()
    );
}

#[test]
fn quickstart_config_delivers_to_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let quickstart =
        std::fs::read_to_string(workspace_root().join("configs/quickstart.yaml")).unwrap();
    let smtp = loopback(free_port());
    let yaml = quickstart
        .replace("127.0.0.1:2525", &smtp.to_string())
        .replace("127.0.0.1:9901", "{admin}");
    let k = Koukan::start_in(dir, &yaml).unwrap();
    let out = smtplib_send(
        smtp,
        "alice@example.org",
        &["bob@example.com"],
        "Subject: quickstart\r\n\r\nit works\r\n",
        &[],
        "",
    );
    assert_eq!(out, "OK {}");
    let new = k.path("data/maildir/new");
    let files: Vec<_> = std::fs::read_dir(&new)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", new.display(), k.log()))
        .collect();
    assert_eq!(files.len(), 1);
    let body = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(body.starts_with("Received: "), "{body}");
    assert!(body.contains("it works"));
    // A recipient outside the configured domain is rejected.
    let out = smtplib_send(
        smtp,
        "alice@example.org",
        &["eve@elsewhere.org"],
        "x",
        &[],
        "",
    );
    assert!(out.starts_with("ERR RCPT") && out.contains("550"), "{out}");
}
