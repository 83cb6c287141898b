//! MX resolution against a real DNS server, and delivery through it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use koukan_chain::transaction::Hosts;
use koukan_smtp_client::{Host, ResolveError, Resolver, tls_client_config};

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

fn host(name: &str, last: u8) -> Host {
    Host {
        name: name.into(),
        addrs: vec![ip(last).into()],
    }
}

#[tokio::test]
async fn resolution_cases() {
    let dns = dns().await;
    let res = Resolver::new(vec![dns.addr]);

    assert_eq!(
        res.resolve_mx("pref.mx.test").await.unwrap(),
        vec![host("a.mx.test", 2), host("b.mx.test", 3)]
    );
    // Trailing dot and case do not matter.
    assert_eq!(
        res.resolve_mx("PREF.mx.test.").await.unwrap(),
        vec![host("a.mx.test", 2), host("b.mx.test", 3)]
    );
    assert_eq!(
        res.resolve_mx("implicit.mx.test").await.unwrap(),
        vec![host("implicit.mx.test", 4)]
    );
    assert_eq!(
        res.resolve_mx("null.mx.test").await,
        Err(ResolveError::NullMx {
            domain: "null.mx.test".into()
        })
    );
    assert_eq!(
        res.resolve_mx("nope.mx.test").await,
        Err(ResolveError::NxDomain {
            name: "nope.mx.test".into()
        })
    );
    assert_eq!(
        res.resolve_mx("dup.mx.test").await.unwrap(),
        vec![host("a.mx.test", 2)]
    );
    assert_eq!(
        res.resolve_mx("partial.mx.test").await.unwrap(),
        vec![host("b.mx.test", 3)]
    );
    assert_eq!(
        res.resolve_mx("dangling.mx.test").await,
        Err(ResolveError::NoAddresses {
            name: "dangling.mx.test".into()
        })
    );
    assert_eq!(
        res.resolve_mx("textonly.mx.test").await,
        Err(ResolveError::NoAddresses {
            name: "textonly.mx.test".into()
        })
    );
    // Outside the server's zone: it answers REFUSED, which may change.
    let err = res.resolve_mx("example.org").await.unwrap_err();
    assert!(
        matches!(&err, ResolveError::Temporary { name, .. } if name == "example.org"),
        "{err:?}"
    );
    assert_eq!(err.response().code, 451);
}

#[tokio::test]
async fn unreachable_nameserver_is_temporary() {
    // A bound UDP socket that never answers (and no TCP listener).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let res = Resolver::with_timeout(vec![addr], Duration::from_millis(200), 1);
    let err = res.resolve_mx("pref.mx.test").await.unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
    let resp = err.response();
    assert_eq!(resp.code, 451);
    assert!(
        resp.text
            .starts_with("4.4.3 pref.mx.test: temporary DNS failure: "),
        "{resp}"
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
