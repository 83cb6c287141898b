#![forbid(unsafe_code)]
//! Outbound SMTP for Koukan: MX resolution and a cut-through SMTP client that
//! is the terminal of a transaction chain.
//!
//! An [`SmtpClient`] relays one transaction to one destination. It opens
//! the upstream connection when it sees MAIL (or reuses an idle one to the
//! same destination from its [`ConnectionPool`]), passes every upstream reply
//! back verbatim, streams the body without buffering it, and turns every
//! failure (DNS, connect, timeout, dropped connection) into an SMTP reply:
//! the chain's error type is uninhabited, so there is no `Err` to return.
//!
//! Modules:
//! - [`resolver`]: MX / address lookups (RFC 5321 5.1, RFC 7505 null MX).
//! - `connection`: reply framing and timed I/O on one socket.
//! - `session`: greeting, EHLO/HELO, STARTTLS on one host.
//! - `envelope`: MAIL/RCPT command building against the peer's extensions.
//! - `client`: the [`SmtpClient`] state machine.
//! - `pool`: the [`ConnectionPool`] of idle upstream sessions for reuse.
//! - [`dotstuff`]: streaming DATA encoding.
//! - [`tls`]: rustls client configurations.

mod client;
mod config;
mod connection;
pub mod dotstuff;
mod envelope;
mod pool;
pub mod resolver;
mod session;
pub mod tls;

pub use client::SmtpClient;
pub use config::{ClientConfig, TlsMode};
pub use pool::ConnectionPool;
pub use resolver::{Host, ResolveError, Resolver};
pub use tls::{TlsConfigError, tls_client_config};
