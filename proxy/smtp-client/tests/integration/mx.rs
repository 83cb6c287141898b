//! MX resolution against a real DNS server, and delivery through it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use koukan_chain::transaction::Hosts;
use koukan_smtp_client::{Resolver, ResolverOptions, tls_client_config};

use crate::smtp_server::{Script, SmtpServer};
use crate::*;
use koukan_integration::dns::{DnsServer, Rr};

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

async fn dns() -> DnsServer {
    DnsServer::start(
        "mx.test.",
        vec![
            // Listed out of order on purpose.
            Rr::Mx("pref.mx.test.", 20, "b.mx.test."),
            Rr::Mx("pref.mx.test.", 10, "a.mx.test."),
            Rr::A("a.mx.test.", ip(2)),
            Rr::A("b.mx.test.", ip(3)),
            Rr::A("implicit.mx.test.", ip(4)),
            Rr::Mx("null.mx.test.", 0, "."),
            // Two exchanges with the same address: listed once.
            Rr::Mx("dup.mx.test.", 10, "a.mx.test."),
            Rr::Mx("dup.mx.test.", 20, "a2.mx.test."),
            Rr::A("a2.mx.test.", ip(2)),
            // An exchange without addresses is skipped.
            Rr::Mx("partial.mx.test.", 5, "missing.mx.test."),
            Rr::Mx("partial.mx.test.", 10, "b.mx.test."),
            Rr::Mx("dangling.mx.test.", 10, "missing.mx.test."),
            // Exists, but has neither MX nor A.
            Rr::Txt("textonly.mx.test.", "hello"),
            Rr::Mx("delivery.mx.test.", 10, "a.mx.test."),
            Rr::Mx("delivery.mx.test.", 20, "c.mx.test."),
            Rr::A("c.mx.test.", ip(5)),
            Rr::A("implicit2.mx.test.", ip(6)),
            Rr::Mx("preferred.mx.test.", 20, "e.mx.test."),
            Rr::Mx("preferred.mx.test.", 10, "d.mx.test."),
            Rr::A("d.mx.test.", ip(7)),
            Rr::A("e.mx.test.", ip(8)),
        ],
    )
    .await
}

/// The resolver itself is tested in koukan-dns; here, what its answers
/// become as replies.
#[tokio::test]
async fn unreachable_nameserver_is_a_temporary_failure() {
    // A bound UDP socket that never answers (and no TCP listener).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let opts = ResolverOptions {
        timeout: Duration::from_millis(200),
        attempts: 1,
        ..ResolverOptions::default()
    };
    let mut c = client_with(
        test_config(),
        Hosts::Mx {
            domain: "pref.mx.test".into(),
            port: 25,
        },
        tls_client_config(false, None).unwrap(),
        Resolver::with_options(vec![silent.local_addr().unwrap()], &opts),
    );
    let resp = send(&mut c, envelope("a@x", &["b@pref.mx.test"])).await;
    let mail = resp.mail.unwrap();
    assert_eq!(mail.code, 451, "{mail}");
    assert!(
        mail.text
            .starts_with("4.4.3 pref.mx.test: temporary DNS failure: "),
        "{mail}"
    );
    assert_eq!(resp.rcpts, vec![mail]);
}

#[tokio::test]
async fn a_domain_without_addresses_is_unroutable() {
    let dns = dns().await;
    let mut c = mx_client(&dns, "dangling.mx.test", 25);
    let resp = send(&mut c, envelope("a@x", &["b@dangling.mx.test"])).await;
    assert_eq!(
        resp.mail,
        Some(r(
            550,
            "5.4.4 unable to route: dangling.mx.test: no address records"
        ))
    );
}

/// Binds an SMTP server on 127.0.0.`last` (port 0: any free one). Each
/// test uses its own addresses, since a port picked on one loopback
/// address may well be in use on another.
async fn smtp_on(last: u8, port: u16) -> SmtpServer {
    SmtpServer::start_on(SocketAddr::new(ip(last).into(), port), Script::new()).await
}

fn mx_client(dns: &DnsServer, domain: &str, port: u16) -> koukan_smtp_client::SmtpClient {
    client_with(
        test_config(),
        Hosts::Mx {
            domain: domain.into(),
            port,
        },
        tls_client_config(false, None).unwrap(),
        Resolver::new(vec![dns.addr]),
    )
}

#[tokio::test]
async fn delivery_falls_back_to_the_next_mx() {
    let dns = dns().await;
    // c.mx.test (127.0.0.5) listens; a.mx.test (127.0.0.2, preferred)
    // refuses connections on that port.
    let srv = smtp_on(5, 0).await;
    let port = srv.addr.port();
    let mut c = mx_client(&dns, "delivery.mx.test", port);
    let resp = send(&mut c, envelope("a@x", &["b@delivery.mx.test"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(srv.conns()[0].verbs(), ["EHLO", "MAIL", "RCPT"]);
}

#[tokio::test]
async fn delivery_uses_the_preferred_mx() {
    let dns = dns().await;
    let first = smtp_on(7, 0).await;
    let port = first.addr.port();
    let second = smtp_on(8, port).await;
    let mut c = mx_client(&dns, "preferred.mx.test", port);
    let resp = send(&mut c, envelope("a@x", &["b@preferred.mx.test"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(first.conns().len(), 1);
    assert!(second.conns().is_empty());
}

#[tokio::test]
async fn delivery_to_an_implicit_mx() {
    let dns = dns().await;
    let srv = smtp_on(6, 0).await;
    let mut c = mx_client(&dns, "implicit2.mx.test", srv.addr.port());
    let resp = send(&mut c, envelope("a@x", &["b@implicit2.mx.test"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    assert_eq!(srv.conns().len(), 1);
}

#[tokio::test]
async fn null_mx_and_nxdomain_are_permanent() {
    let dns = dns().await;
    let mut c = mx_client(&dns, "null.mx.test", 25);
    let resp = send(&mut c, envelope("a@x", &["b@null.mx.test"])).await;
    let null = r(
        556,
        "5.1.10 recipient domain does not accept mail (null MX)",
    );
    assert_eq!(resp.mail, Some(null.clone()));
    assert_eq!(resp.rcpts, vec![null]);

    let mut c = mx_client(&dns, "nope.mx.test", 25);
    let resp = send(&mut c, envelope("a@x", &["b@nope.mx.test"])).await;
    assert_eq!(
        resp.mail,
        Some(r(
            550,
            "5.1.2 bad destination domain: nope.mx.test: no such domain"
        ))
    );
}
