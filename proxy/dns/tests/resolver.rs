//! The resolver against a real authoritative DNS server on loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use koukan_dns::{Host, ResolveError, Resolver, ResolverOptions};
use koukan_integration::dns::{DnsServer, Rr};

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn ip6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
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
            // Both families; A first whatever the zone's order.
            Rr::Aaaa("dual.mx.test.", ip6(1)),
            Rr::A("dual.mx.test.", ip(9)),
            Rr::Aaaa("v6only.mx.test.", ip6(2)),
            // TXT: two records, one of them split into two strings.
            Rr::Txt("policy.mx.test.", "v=spf1 -all"),
            Rr::TxtParts("policy.mx.test.", &["v=DKIM1; p=MIIB", "IjANBgkq"]),
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
async fn mx_resolution_cases() {
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
    assert!(err.is_temporary());
}

#[tokio::test]
async fn address_lookups() {
    let dns = dns().await;
    let res = Resolver::new(vec![dns.addr]);
    assert_eq!(
        res.resolve_host("dual.mx.test").await.unwrap(),
        vec![IpAddr::V4(ip(9)), IpAddr::V6(ip6(1))]
    );
    // One family is enough.
    assert_eq!(
        res.resolve_host("v6only.mx.test").await.unwrap(),
        vec![IpAddr::V6(ip6(2))]
    );
    assert_eq!(res.ipv4("dual.mx.test").await.unwrap(), vec![ip(9)]);
    assert_eq!(res.ipv6("dual.mx.test").await.unwrap(), vec![ip6(1)]);
    // A family the name lacks is no records, not an error...
    assert!(res.ipv4("v6only.mx.test").await.unwrap().is_empty());
    assert!(res.ipv6("a.mx.test").await.unwrap().is_empty());
    // ...but a missing name is.
    assert_eq!(
        res.ipv4("nope.mx.test").await,
        Err(ResolveError::NxDomain {
            name: "nope.mx.test".into()
        })
    );
    assert_eq!(
        res.resolve_host("textonly.mx.test").await,
        Err(ResolveError::NoAddresses {
            name: "textonly.mx.test".into()
        })
    );
}

#[tokio::test]
async fn txt_records() {
    let dns = dns().await;
    let res = Resolver::new(vec![dns.addr]);
    let mut records = res.txt("policy.mx.test").await.unwrap();
    records.sort();
    assert_eq!(
        records,
        vec![
            // The split record comes back whole.
            b"v=DKIM1; p=MIIBIjANBgkq".to_vec(),
            b"v=spf1 -all".to_vec(),
        ]
    );
    assert_eq!(
        res.txt("textonly.mx.test.").await.unwrap(),
        vec![b"hello".to_vec()]
    );
    // The name exists without TXT: no records, which SPF reads as "none".
    assert_eq!(res.txt("a.mx.test").await.unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(
        res.txt("nope.mx.test").await,
        Err(ResolveError::NxDomain {
            name: "nope.mx.test".into()
        })
    );
    let err = res.txt("example.org").await.unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
}

#[tokio::test]
async fn unreachable_nameserver_is_temporary() {
    // A bound UDP socket that never answers (and no TCP listener).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let opts = ResolverOptions {
        timeout: Duration::from_millis(200),
        attempts: 1,
        ..ResolverOptions::default()
    };
    let res = Resolver::with_options(vec![addr], &opts);
    let started = std::time::Instant::now();
    let err = res.resolve_mx("pref.mx.test").await.unwrap_err();
    assert!(
        matches!(&err, ResolveError::Temporary { name, .. } if name == "pref.mx.test"),
        "{err:?}"
    );
    // The configured timeout bounds it, not hickory's default of 5 s.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(res.txt("pref.mx.test").await.unwrap_err().is_temporary());
}

/// Every clone is the same resolver, cache included: what one part of
/// the process looked up, another gets without asking again, even once
/// the nameserver has gone away.
#[tokio::test]
async fn clones_share_the_cache() {
    let dns = dns().await;
    let opts = ResolverOptions {
        timeout: Duration::from_millis(200),
        attempts: 1,
        cache_size: 64,
    };
    let res = Resolver::with_options(vec![dns.addr], &opts);
    let other = res.clone();
    assert_eq!(
        res.resolve_mx("pref.mx.test").await.unwrap(),
        vec![host("a.mx.test", 2), host("b.mx.test", 3)]
    );
    drop(dns);
    assert_eq!(
        other.resolve_mx("pref.mx.test").await.unwrap(),
        vec![host("a.mx.test", 2), host("b.mx.test", 3)]
    );
    // Not cached: the server is really gone (or the test proves nothing).
    let err = other.txt("policy.mx.test").await.unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
}
