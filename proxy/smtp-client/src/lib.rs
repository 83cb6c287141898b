#![forbid(unsafe_code)]
//! Outbound SMTP for Koukan: a cut-through SMTP client that is the terminal
//! of a transaction chain. Names are resolved by the process's shared
//! [`Resolver`] (koukan-dns); this crate only decides what a DNS failure
//! means as an SMTP reply.
//!
//! An [`SmtpClient`] relays one transaction to one destination. It opens
//! the upstream connection when it sees MAIL (or reuses an idle one to the
//! same destination from its [`ConnectionPool`]), passes every upstream reply
//! back verbatim, streams the body without buffering it, and turns every
//! failure (DNS, connect, timeout, dropped connection) into an SMTP reply:
//! the chain's error type is uninhabited, so there is no `Err` to return.
//!
//! Modules:
//! - `dns_reply`: DNS failures as SMTP replies (RFC 3463, RFC 7505).
//! - `connection`: reply framing and timed I/O on one socket.
//! - `session`: greeting, EHLO/HELO, STARTTLS on one host.
//! - `envelope`: MAIL/RCPT command building against the peer's extensions.
//! - `client`: the [`SmtpClient`] state machine.
//! - `pool`: the [`ConnectionPool`] of idle upstream sessions for reuse.
//! - `metrics`: [`PoolMetrics`], what the pools did, per endpoint.
//! - [`dotstuff`]: streaming DATA encoding.
//! - [`tls`]: rustls client configurations.

mod client;
mod config;
mod connection;
mod dns_reply;
pub mod dotstuff;
mod envelope;
mod metrics;
mod pool;
mod session;
pub mod tls;

pub use client::SmtpClient;
pub use config::{ClientConfig, TlsMode};
pub use metrics::{DiscardLabels, DiscardReason, EndpointLabels, PoolMetrics};
pub use pool::ConnectionPool;
// The resolver is part of this crate's API (clients take one), so its
// types are re-exported: a caller needs no second dependency to build one.
pub use koukan_dns::{Host, ResolveError, Resolver, ResolverOptions};
pub use tls::{TlsConfigError, tls_client_config};
