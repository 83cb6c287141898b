//! End-to-end tests of the SMTP client against real sockets on loopback: a
//! scripted SMTP server and an authoritative DNS server.

mod mx;
mod pool;
mod smtp;
mod smtp_server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use koukan_chain::transaction::{
    HostPort, Hosts, Mailbox, Recipient, Response, TxUpdate, UpdateResponse,
};
use koukan_smtp_client::{ClientConfig, ConnectionPool, Resolver, SmtpClient, tls_client_config};
use tower::{Service, ServiceExt};

pub fn test_config() -> ClientConfig {
    let t = Duration::from_secs(3);
    ClientConfig {
        ehlo_hostname: "client.test".into(),
        connect_timeout: t,
        greeting_timeout: t,
        command_timeout: t,
        data_init_timeout: t,
        data_block_timeout: t,
        data_end_timeout: t,
        ..ClientConfig::default()
    }
}

pub fn hosts(addrs: &[SocketAddr]) -> Hosts {
    Hosts::Static(
        addrs
            .iter()
            .map(|a| HostPort {
                host: a.ip().to_string(),
                port: a.port(),
            })
            .collect(),
    )
}

/// A client with the non-verifying TLS configuration and no DNS (static
/// IP hosts need none).
pub fn client(cfg: ClientConfig, hosts: Hosts) -> SmtpClient {
    client_with(
        cfg,
        hosts,
        tls_client_config(false, None).unwrap(),
        Resolver::new(vec![]),
    )
}

pub fn client_with(
    cfg: ClientConfig,
    hosts: Hosts,
    tls: Arc<rustls::ClientConfig>,
    resolver: Resolver,
) -> SmtpClient {
    SmtpClient::new(Arc::new(cfg), resolver, tls, hosts)
}

/// A client of `pool` (built from the same `cfg` by the caller), with the
/// non-verifying TLS configuration and no DNS.
pub fn pooled_client(cfg: &Arc<ClientConfig>, hosts: Hosts, pool: &ConnectionPool) -> SmtpClient {
    SmtpClient::pooled(
        cfg.clone(),
        Resolver::new(vec![]),
        tls_client_config(false, None).unwrap(),
        hosts,
        pool.clone(),
    )
}

pub async fn send(c: &mut SmtpClient, u: TxUpdate) -> UpdateResponse {
    c.ready().await.unwrap().call(u).await.unwrap()
}

pub fn envelope(from: &str, rcpts: &[&str]) -> TxUpdate {
    let mut u = TxUpdate::mail(Mailbox::new(from));
    u.rcpt_to = rcpts
        .iter()
        .map(|r| Recipient::new(Mailbox::new(*r)))
        .collect();
    u
}

pub fn r(code: u16, text: &str) -> Response {
    Response::new(code, text)
}

/// An address on which nothing listens (connections are refused).
pub async fn refused_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
