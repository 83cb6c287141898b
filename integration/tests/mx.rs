//! MX routing end to end: koukan's `dest_domain` router resolves MX records
//! from a real DNS server on loopback (hickory-server) and delivers to
//! Postfix's smtp-sink on 127.0.0.x addresses.

use std::net::SocketAddr;
use std::time::Duration;

use koukan_integration::dns::{DnsServer, Rr};
use koukan_integration::*;

fn mx_config(listen: SocketAddr, dns: SocketAddr, port: u16) -> String {
    format!(
        r#"
node: {{id: mx-test}}
admin: {{address: "{{admin}}"}}
dns: {{nameservers: ["{dns}"]}}
static_resources:
  listeners:
  - name: outbound
    address: "{listen}"
    smtp: {{hostname: koukan.test, sender: outbound}}
  senders: [{{name: outbound, chain: internet}}]
  chains:
  - name: internet
    filters:
    - router:
        policy: {{dest_domain: {{endpoint: mx, dest_port: {port}}}}}
  endpoints:
  - name: mx
    # No connection reuse: each delivery resolves and picks its host afresh
    # (a cached connection to mx2 would otherwise be reused once mx1 is up).
    smtp: {{ehlo_hostname: koukan.test, connect_timeout: 2s, connection_reuse: {{disabled: true}}}}
"#
    )
}

fn send(listen: SocketAddr, rcpt: &str) -> String {
    smtplib_send(
        listen,
        "alice@example.com",
        &[rcpt],
        &format!("Subject: to {rcpt}\r\n\r\nx\r\n"),
        &[],
        "",
    )
}

#[test]
fn mx_preference_order_fallback_implicit_and_null_mx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(DnsServer::start(
        "test.",
        vec![
            // Listed out of order: preference decides.
            Rr::Mx("mx.test.", 20, "mx2.mx.test."),
            Rr::Mx("mx.test.", 10, "mx1.mx.test."),
            Rr::A("mx1.mx.test.", "127.0.0.2".parse().unwrap()),
            Rr::A("mx2.mx.test.", "127.0.0.3".parse().unwrap()),
            // No MX: the domain's own address is the implicit MX.
            Rr::A("implicit.test.", "127.0.0.4".parse().unwrap()),
            Rr::Mx("nullmx.test.", 0, "."),
        ],
    ));
    let dirs = tempfile::tempdir().unwrap();
    // One port for every host, as on the internet; hosts differ by address.
    let port = free_port();
    let at = |ip: &str| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let mx2 = SmtpSink::start_at(at("127.0.0.3"), &dirs.path().join("mx2"), &[]).unwrap();
    let implicit = SmtpSink::start_at(at("127.0.0.4"), &dirs.path().join("implicit"), &[]).unwrap();
    let listen = loopback(free_port());
    let k = Koukan::start(&mx_config(listen, dns.addr, port)).unwrap();

    // mx1 (preference 10) refuses connections: delivered through mx2.
    assert_eq!(send(listen, "bob@mx.test"), "OK {}", "{}", k.log());
    let got = mx2.wait_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("X-Rcpt-Args: <bob@mx.test>"), "{}", got[0]);

    // With mx1 up, the preferred host gets the mail.
    let mx1 = SmtpSink::start_at(at("127.0.0.2"), &dirs.path().join("mx1"), &[]).unwrap();
    assert_eq!(send(listen, "carol@mx.test"), "OK {}");
    let got = mx1.wait_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("carol@mx.test"), "{}", got[0]);
    assert_eq!(mx2.messages().len(), 1, "mx2 got nothing more");

    // Implicit MX.
    assert_eq!(send(listen, "dave@implicit.test"), "OK {}");
    assert_eq!(implicit.wait_messages(1, Duration::from_secs(5)).len(), 1);

    // Null MX (RFC 7505): 556 5.1.10.
    let out = send(listen, "erin@nullmx.test");
    assert!(
        out.starts_with("ERR RCPT") && out.contains("[556, \"5.1.10"),
        "{out}"
    );

    // A name that does not exist: permanent failure.
    let out = send(listen, "frank@nonexistent.test");
    assert!(
        out.starts_with("ERR RCPT") && out.contains("[550, \"5.1.2"),
        "{out}"
    );
    drop(rt);
}
