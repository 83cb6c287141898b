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

const LOCKED: &str = "454 4.7.0 too many authentication failures, try again later\r\n";
const WRONG: &str = "535 5.7.8 authentication credentials invalid\r\n";
const AUTH_OK: &str = "235 2.7.0 authentication successful\r\n";

/// A koukan whose plaintext loopback listener has small failure limits:
/// 3 per address, 4 per user, delay 0.4 s doubling up to 1.6 s (longer
/// than an Argon2 check of the debug build, so the delays show).
fn guarded() -> (Koukan, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secrets.json"),
        format!(
            r#"{{"app": "{}", "billing": "{}"}}"#,
            hash_secret("app-secret"),
            hash_secret("billing-secret")
        ),
    )
    .unwrap();
    let smtp = loopback(free_port());
    let yaml = format!(
        r#"
node: {{id: auth-limits}}
admin: {{address: "{{admin}}"}}
static_resources:
  listeners:
  - name: guarded
    address: "{smtp}"
    smtp:
      hostname: koukan.test
      sender: inbound
      auth:
        secrets: secrets.json
        allow_plaintext_on_loopback: true
        failure_limits:
          max_failures_per_address: 3
          max_failures_per_user: 4
          window: 60s
          lockout: 60s
          delay: 0.4s
          max_delay: 1.6s
  senders:
  - name: inbound
    chain: nowhere
  chains:
  - name: nowhere
    filters:
    - router: {{}}
    endpoint: sink
  endpoints:
  - name: sink
    maildir: {{path: maildir}}
"#
    );
    (Koukan::start_in(dir, &yaml).unwrap(), smtp)
}

/// One AUTH PLAIN on a fresh connection from `source`: the reply and the
/// time it took.
fn auth_from(
    smtp: std::net::SocketAddr,
    source: &str,
    user: &str,
    pass: &str,
) -> (String, Duration) {
    let mut c = RawSmtp::connect_from(smtp, source).unwrap();
    assert!(c.reply().unwrap().starts_with("220"));
    assert!(c.cmd("EHLO client.test").unwrap().contains("AUTH PLAIN"));
    let cred = base64_plain(user, pass);
    let start = std::time::Instant::now();
    let r = c.cmd(&format!("AUTH PLAIN {cred}")).unwrap();
    (r, start.elapsed())
}

fn base64_plain(user: &str, pass: &str) -> String {
    // No base64 crate in this test crate: python's, via the harness.
    let out = python(
        "import base64, sys; print(base64.b64encode(('\\0%s\\0%s' % (sys.argv[1], sys.argv[2])).encode()).decode())",
        &[user, pass],
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn metrics(k: &Koukan) -> String {
    let (code, body) = http_get(k.admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    body
}

/// Lockout lines as the README's fail2ban filter sees them: the line
/// after its timestamp starts with the fixed text.
fn lockout_lines(k: &Koukan) -> Vec<String> {
    k.log()
        .lines()
        .filter(|l| {
            l.split_once(' ').is_some_and(|(_, rest)| {
                rest.trim_start()
                    .starts_with("WARN koukan::auth: authentication lockout ")
            })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn address_lockout_across_connections() {
    let (k, smtp) = guarded();
    // One wrong password per connection from 127.0.0.2, each answered
    // after a longer delay: at least 0.4 s, 0.8 s, 1.6 s.
    let mut took = Vec::new();
    for (i, min_ms) in [400, 800, 1600].into_iter().enumerate() {
        let (r, t) = auth_from(smtp, "127.0.0.2", "app", &format!("guess-{i}"));
        assert_eq!(r, WRONG, "guess {i}");
        assert!(t >= Duration::from_millis(min_ms), "guess {i} took {t:?}");
        took.push(t);
    }
    assert!(took[0] < took[2], "the delay grows: {took:?}");
    // Locked out: 454 for more guesses, for the right password too (its
    // answer does not depend on the password), and without an initial
    // response the secret is not even asked for.
    for pass in ["guess-3", "guess-4", "app-secret"] {
        assert_eq!(
            auth_from(smtp, "127.0.0.2", "app", pass).0,
            LOCKED,
            "{pass}"
        );
    }
    let mut c = RawSmtp::connect_from(smtp, "127.0.0.2").unwrap();
    c.reply().unwrap();
    c.cmd("EHLO client.test").unwrap();
    assert_eq!(c.cmd("AUTH PLAIN").unwrap(), LOCKED);
    assert!(
        c.cmd("NOOP").unwrap().starts_with("250"),
        "the session goes on"
    );
    // The right password from another address still authenticates, while
    // 127.0.0.2 stays locked.
    assert_eq!(auth_from(smtp, "127.0.0.3", "app", "app-secret").0, AUTH_OK);
    assert_eq!(
        auth_from(smtp, "127.0.0.2", "billing", "billing-secret").0,
        LOCKED
    );

    // A config reload keeps the counts: still locked.
    k.proc.signal("HUP");
    wait_for(Duration::from_secs(10), || {
        k.log().contains("config reloaded").then_some(())
    })
    .expect("reloaded");
    assert_eq!(auth_from(smtp, "127.0.0.2", "app", "app-secret").0, LOCKED);

    let m = metrics(&k);
    for line in [
        r#"koukan_smtp_auth_failures_total{listener="guarded"} 3"#,
        r#"koukan_smtp_auth_lockouts_total{listener="guarded",scope="address"} 1"#,
        r#"koukan_smtp_auth_lockout_refusals_total{listener="guarded",scope="address"} 6"#,
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }

    let lines = lockout_lines(&k);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    for field in [
        " WARN koukan::auth: authentication lockout scope=address peer=127.0.0.2 client=127.0.0.2 ",
        r#" failures=3 lockout_secs=60 listener=guarded user="app""#,
    ] {
        assert!(lines[0].contains(field), "{field} missing: {}", lines[0]);
    }
}

#[test]
fn user_lockout_spares_the_known_good_address() {
    let (k, smtp) = guarded();
    // The application authenticates from 127.0.0.4.
    assert_eq!(
        auth_from(smtp, "127.0.0.4", "billing", "billing-secret").0,
        AUTH_OK
    );
    // One guess each from four other addresses locks the user.
    for i in 5..=8 {
        let (r, _) = auth_from(smtp, &format!("127.0.0.{i}"), "billing", "guess");
        assert_eq!(r, WRONG);
    }
    // A user name forging a lockout line of another address (newline and
    // all) is logged escaped, inside its quotes.
    let forged = "x\n2026-01-01T00:00:00Z  WARN koukan::auth: authentication lockout \
                  scope=address peer=10.9.9.9 client=10.9.9.9";
    assert_eq!(auth_from(smtp, "127.0.0.10", forged, "guess").0, WRONG);
    // A new address gets 454 even with the right password...
    assert_eq!(
        auth_from(smtp, "127.0.0.9", "billing", "billing-secret").0,
        LOCKED
    );
    // ...while the known-good address keeps working, and other users are
    // not locked.
    assert_eq!(
        auth_from(smtp, "127.0.0.4", "billing", "billing-secret").0,
        AUTH_OK
    );
    assert_eq!(auth_from(smtp, "127.0.0.9", "app", "app-secret").0, AUTH_OK);

    let m = metrics(&k);
    for line in [
        r#"koukan_smtp_auth_failures_total{listener="guarded"} 5"#,
        r#"koukan_smtp_auth_lockouts_total{listener="guarded",scope="user"} 1"#,
        r#"koukan_smtp_auth_lockout_refusals_total{listener="guarded",scope="user"} 1"#,
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    let log = k.log();
    assert!(log.contains(r#"user="x\n2026-01-01T00:00:00Z"#), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "{log}"
    );
    let lines = lockout_lines(&k);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].ends_with(
            r#"scope=user peer=127.0.0.8 client=127.0.0.8 failures=4 lockout_secs=60 listener=guarded user="billing""#
        ),
        "{}",
        lines[0]
    );
}

/// A message submitted over STARTTLS with AUTH into store-and-forward is
/// delivered by the scheduler with those facts intact: the output chain's
/// received_header, which runs at delivery, writes TLS and AUTH (ESMTPSA,
/// version and cipher) from the stored ingress, and the stored record
/// keeps them typed.
#[test]
fn stored_and_forwarded_keeps_the_tls_and_auth_facts() {
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
    let yaml = format!(
        r#"
node: {{id: tls-stored}}
admin: {{address: "{{admin}}"}}
storage: {{embedded: {{path: data/koukan.db}}}}
scheduler: {{poll_interval: 0.2s}}
static_resources:
  listeners:
  - name: submission
    address: "{starttls}"
    smtp:
      hostname: koukan.test
      sender: inbound
      tls: {{cert: cert.pem, key: key.pem}}
      auth: {{secrets: secrets.json, require: true}}
  senders:
  - name: inbound
    chain: store
  chains:
  - name: store
    store_and_forward: {{output_chain: out}}
  - name: out
    filters:
    - received_header: {{received_hostname: out.koukan.test}}
    - router:
        destination:
          endpoint: upstream
          host_list: [{{host: "127.0.0.1", port: {sink_port}}}]
    retry: {{max_attempts: 3, min_attempt_time: 1s, max_attempt_time: 1s}}
  endpoints:
  - name: upstream
    smtp: {{ehlo_hostname: koukan.test}}
"#,
        sink_port = sink.addr.port()
    );
    let koukan = Koukan::start_in(dir, &yaml).unwrap();
    let cert = koukan.path("cert.pem");
    let extra = format!(
        "{}\ns.starttls(context=ctx)\ns.ehlo()\ns.login('app', 's3cret-token')",
        tls_ctx(&cert)
    );
    let out = smtplib_send(
        starttls,
        "app@example.com",
        &["bob@example.net"],
        "Subject: stored tls\r\n\r\nover tls, via the store\r\n",
        &[],
        &extra,
    );
    assert_eq!(out, "OK {}");
    let msgs = sink.wait_messages(1, Duration::from_secs(20));
    assert_eq!(msgs.len(), 1, "{}", koukan.log());
    let ours = msgs[0]
        .split("Received: ")
        .find(|h| h.contains("by out.koukan.test"))
        .unwrap_or_else(|| panic!("no Received of the output chain: {}", msgs[0]));
    assert!(ours.contains("([127.0.0.1])"), "{ours}");
    assert!(
        ours.contains("with ESMTPSA (using TLSv1."),
        "the TLS and AUTH facts reached the output chain: {ours}"
    );
    assert!(ours.contains(" with cipher "), "{ours}");
}
