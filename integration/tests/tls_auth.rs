//! STARTTLS, implicit TLS and AUTH with real TLS (rcgen test certificates)
//! and python3's smtplib as the client.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use koukan_integration::*;

struct Setup {
    koukan: Koukan,
    sink: SmtpSink,
    starttls: std::net::SocketAddr,
    implicit: std::net::SocketAddr,
    plain_loopback: std::net::SocketAddr,
    cert: std::path::PathBuf,
    _sink_dir: tempfile::TempDir,
}

fn hash_secret(secret: &str) -> String {
    let mut child = Command::new(koukan_bin())
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2"), "{hash}");
    assert!(
        !hash.contains(secret),
        "the hash must not contain the secret"
    );
    hash
}

fn setup() -> Setup {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&sink_dir.path().join("sink"), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_cert, _key) = write_test_cert(dir.path());
    std::fs::write(
        dir.path().join("secrets.json"),
        format!(r#"{{"app": "{}"}}"#, hash_secret("s3cret-token")),
    )
    .unwrap();
    let starttls = loopback(free_port());
    let implicit = loopback(free_port());
    let plain_loopback = loopback(free_port());
    let yaml = format!(
        r#"
node: {{id: tls-test}}
admin: {{address: "{{admin}}"}}
static_resources:
  listeners:
  - name: submission
    address: "{starttls}"
    smtp:
      hostname: koukan.test
      sender: inbound
      tls: {{cert: cert.pem, key: key.pem}}
      auth: {{secrets: secrets.json, require: true}}
  - name: smtps
    address: "{implicit}"
    smtp:
      hostname: koukan.test
      sender: inbound
      tls: {{cert: cert.pem, key: key.pem}}
      implicit_tls: true
      auth: {{secrets: secrets.json}}
  - name: loopback-submission
    address: "{plain_loopback}"
    smtp:
      hostname: koukan.test
      sender: inbound
      auth: {{secrets: secrets.json, allow_plaintext_on_loopback: true}}
  senders:
  - name: inbound
    chain: relay
  chains:
  - name: relay
    filters:
    - received_header: {{received_hostname: koukan.test}}
    - router:
        destination:
          endpoint: upstream
          host_list: [{{host: "127.0.0.1", port: {sink_port}}}]
  endpoints:
  - name: upstream
    smtp: {{ehlo_hostname: koukan.test}}
"#,
        sink_port = sink.addr.port()
    );
    let koukan = Koukan::start_in(dir, &yaml).unwrap();
    let cert = koukan.path("cert.pem");
    Setup {
        koukan,
        sink,
        starttls,
        implicit,
        plain_loopback,
        cert,
        _sink_dir: sink_dir,
    }
}

fn tls_ctx(cert: &std::path::Path) -> String {
    format!(
        "ctx = ssl.create_default_context(cafile={:?})\nctx.check_hostname = False",
        cert.display().to_string()
    )
}

#[test]
fn starttls_then_auth_plain_then_relay() {
    let s = setup();
    let extra = format!(
        "{}\nassert s.has_extn('starttls')\nassert not s.has_extn('auth'), 'AUTH offered before TLS'\ns.starttls(context=ctx)\ns.ehlo()\nassert 'PLAIN' in s.esmtp_features['auth']\ns.login('app', 's3cret-token')",
        tls_ctx(&s.cert)
    );
    let out = smtplib_send(
        s.starttls,
        "app@example.com",
        &["bob@example.net"],
        "Subject: tls\r\n\r\nover tls\r\n",
        &[],
        &extra,
    );
    assert_eq!(out, "OK {}");
    let msgs = s.sink.wait_messages(1, Duration::from_secs(5));
    assert!(
        msgs[0].contains("with ESMTPSA (using TLSv1."),
        "{}",
        msgs[0]
    );
}

#[test]
fn auth_login_good_and_bad_credentials() {
    let s = setup();
    let good = format!(
        "{}\ns.starttls(context=ctx)\ns.ehlo()\ns.user, s.password = 'app', 's3cret-token'\ncode, resp = s.auth('LOGIN', s.auth_login)\nassert code == 235, (code, resp)",
        tls_ctx(&s.cert)
    );
    let out = smtplib_send(
        s.starttls,
        "app@example.com",
        &["bob@example.net"],
        "Subject: login\r\n\r\nx\r\n",
        &[],
        &good,
    );
    assert_eq!(out, "OK {}");
    let bad = format!(
        "{}\ns.starttls(context=ctx)\ns.ehlo()\ns.login('app', 'wrong')",
        tls_ctx(&s.cert)
    );
    let out = smtplib_send(
        s.starttls,
        "a@example.com",
        &["b@example.net"],
        "x",
        &[],
        &bad,
    );
    assert!(out.starts_with("ERR 535 5.7.8"), "{out}");
    let unknown = format!(
        "{}\ns.starttls(context=ctx)\ns.ehlo()\ns.login('nobody', 's3cret-token')",
        tls_ctx(&s.cert)
    );
    let out = smtplib_send(
        s.starttls,
        "a@example.com",
        &["b@example.net"],
        "x",
        &[],
        &unknown,
    );
    assert!(out.starts_with("ERR 535 5.7.8"), "{out}");
}

#[test]
fn mail_without_auth_is_refused_where_required() {
    let s = setup();
    let extra = format!("{}\ns.starttls(context=ctx)\ns.ehlo()", tls_ctx(&s.cert));
    let out = smtplib_send(
        s.starttls,
        "a@example.com",
        &["b@example.net"],
        "x",
        &[],
        &extra,
    );
    assert!(out.starts_with("ERR 530 5.7.0"), "{out}");
}

#[test]
fn auth_refused_before_tls() {
    let s = setup();
    let mut c = RawSmtp::connect(s.starttls).unwrap();
    c.reply().unwrap();
    c.cmd("EHLO x.test").unwrap();
    let r = c.cmd("AUTH PLAIN AGFwcABzM2NyZXQtdG9rZW4=").unwrap();
    assert!(r.starts_with("538 5.7.11") || r.starts_with("530"), "{r}");
}

#[test]
fn implicit_tls_counts_as_tls_and_offers_auth() {
    let s = setup();
    let script = format!(
        r#"
import smtplib, ssl, sys
{}
s = smtplib.SMTP_SSL('127.0.0.1', {}, context=ctx, timeout=30)
s.ehlo()
assert not s.has_extn('starttls')
assert 'PLAIN' in s.esmtp_features['auth'], s.esmtp_features
s.login('app', 's3cret-token')
s.sendmail('app@example.com', ['bob@example.net'], b'Subject: smtps\r\n\r\nimplicit\r\n')
s.quit()
print('OK')
"#,
        tls_ctx(&s.cert),
        s.implicit.port()
    );
    let out = python(&script, &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "OK",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = s.sink.wait_messages(1, Duration::from_secs(5));
    assert!(msgs[0].contains("with ESMTPSA"), "{}", msgs[0]);
}

#[test]
fn junk_tls_handshake_then_listener_still_serves() {
    let s = setup();
    let mut c = RawSmtp::connect(s.implicit).unwrap();
    c.send(b"this is not a TLS ClientHello\r\n\r\n").unwrap();
    assert!(c.closed(), "junk handshake ends that connection");
    let mut c = RawSmtp::connect(s.starttls).unwrap();
    c.reply().unwrap();
    c.cmd("EHLO x.test").unwrap();
    assert!(c.cmd("STARTTLS").unwrap().starts_with("220"));
    c.send(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    assert!(c.closed());
    // Both listeners still serve.
    let script = format!(
        "import smtplib, ssl\n{}\ns = smtplib.SMTP_SSL('127.0.0.1', {}, context=ctx, timeout=30)\nprint(s.noop()[0])",
        tls_ctx(&s.cert),
        s.implicit.port()
    );
    let out = python(&script, &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "250");
    assert!(s.koukan.log().contains("koukan ready"));
}

#[test]
fn loopback_opt_out_allows_auth_without_tls() {
    let s = setup();
    let out = smtplib_send(
        s.plain_loopback,
        "app@example.com",
        &["bob@example.net"],
        "Subject: lo\r\n\r\nx\r\n",
        &[],
        "s.login('app', 's3cret-token')",
    );
    assert_eq!(out, "OK {}");
}
