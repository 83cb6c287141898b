//! An authoritative DNS server on loopback (hickory-server, in-memory zone).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::ServerFuture;
use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, AAAA, MX, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryAuthority;
use tokio::net::{TcpListener, UdpSocket};

pub enum Rr {
    /// Owner, preference, exchange (`"."` with preference 0 is a null MX).
    Mx(&'static str, u16, &'static str),
    A(&'static str, Ipv4Addr),
    Aaaa(&'static str, Ipv6Addr),
    Txt(&'static str, &'static str),
    /// One TXT record made of several character-strings (how a record
    /// over 255 octets, a long SPF or DKIM key, is published).
    TxtParts(&'static str, &'static [&'static str]),
}

pub struct DnsServer {
    pub addr: SocketAddr,
    _server: ServerFuture<Catalog>,
}

fn name(n: &str) -> Name {
    Name::from_str(n).unwrap()
}

impl DnsServer {
    /// Serves `zone` (e.g. `"mx.test."`) with `records` over UDP and TCP on
    /// the same 127.0.0.1 port.
    pub async fn start(zone: &str, records: Vec<Rr>) -> Self {
        let origin = name(zone);
        let mut auth = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
        let serial = 1;
        let soa = SOA::new(
            name(&format!("ns.{zone}")),
            name(&format!("hostmaster.{zone}")),
            serial,
            3600,
            600,
            86400,
            // Short negative TTL; each test uses its own resolver anyway.
            1,
        );
        auth.upsert_mut(
            Record::from_rdata(origin.clone(), 60, RData::SOA(soa)),
            serial,
        );
        for rr in records {
            let rec = match rr {
                Rr::Mx(owner, pref, exchange) => {
                    Record::from_rdata(name(owner), 60, RData::MX(MX::new(pref, name(exchange))))
                }
                Rr::A(owner, ip) => Record::from_rdata(name(owner), 60, RData::A(A(ip))),
                Rr::Aaaa(owner, ip) => Record::from_rdata(name(owner), 60, RData::AAAA(AAAA(ip))),
                Rr::Txt(owner, text) => {
                    Record::from_rdata(name(owner), 60, RData::TXT(TXT::new(vec![text.to_owned()])))
                }
                Rr::TxtParts(owner, parts) => Record::from_rdata(
                    name(owner),
                    60,
                    RData::TXT(TXT::new(parts.iter().map(|p| (*p).to_owned()).collect())),
                ),
            };
            assert!(auth.upsert_mut(rec, serial), "record rejected");
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(auth)]);

        let mut server = ServerFuture::new(catalog);
        // Same port for UDP and TCP, so one SocketAddr describes both.
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            let Ok(tcp) = TcpListener::bind(addr).await else {
                continue;
            };
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5));
            return Self {
                addr,
                _server: server,
            };
        }
        panic!("no free port for the test DNS server");
    }
}
