//! Per-listener session configuration.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Secrets;
use crate::auth_limit::AuthFailureLimits;

/// Everything a session needs to know about its listener. Immutable for the
/// life of a connection: the proxy builds a new one on config reload and
/// only connections accepted afterwards see it.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Name of the listener (logs, metrics labels, `SessionInfo::listener`).
    pub listener_name: String,
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Enables STARTTLS, or implicit TLS when `implicit_tls` is set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Port-465 style (RFC 8314): the TLS handshake comes before the
    /// greeting. Requires `tls`; a session without it is closed at once.
    pub implicit_tls: bool,
    /// Enables AUTH PLAIN and LOGIN. Offered only once TLS is active, so
    /// passwords never cross the network in clear...
    pub auth: Option<Arc<Secrets>>,
    /// ...unless this is set and the peer is a loopback address (a local
    /// submission client on the same host cannot be sniffed).
    pub auth_allow_plaintext_loopback: bool,
    /// MAIL before a successful AUTH gets `530 5.7.0`.
    pub require_auth: bool,
    /// Delays and lockouts after failed AUTH, counted across connections
    /// (see `auth_limit`). `None`: only `max_bad_commands` bounds guessing,
    /// per connection.
    pub auth_failures: Option<AuthFailureLimits>,
    pub limits: Limits,
}

impl SessionConfig {
    /// A plain listener with default limits, no TLS and no AUTH.
    pub fn new(listener_name: impl Into<String>, hostname: impl Into<String>) -> Self {
        Self {
            listener_name: listener_name.into(),
            hostname: hostname.into(),
            tls: None,
            implicit_tls: false,
            auth: None,
            auth_allow_plaintext_loopback: false,
            require_auth: false,
            auth_failures: None,
            limits: Limits::default(),
        }
    }
}

/// Resource limits of a session and of a listener.
///
/// Defaults:
///
/// | limit | default | why |
/// | --- | --- | --- |
/// | `max_message_size` | 32 MiB | common provider limit; advertised as `SIZE` |
/// | `max_recipients` | 1000 | well above RFC 5321's minimum of 100 |
/// | `max_line_length` | 4096 octets | command and AUTH lines, CRLF not counted; RFC 5321 allows 512 plus extension parameters; leaves room for AUTH PLAIN initial responses |
/// | `max_data_line_length` | 1 MiB | message lines, CRLF counted; RFC 5321 §4.5.3.1.6 requires at least 1000 octets, and real mail (long base64 or HTML lines) needs more |
/// | `max_bad_commands` | 20 | enough for a confused client, too few for a scanner |
/// | `max_connections` | 1000 | per listener |
/// | `command_timeout` | 5 min | RFC 5321 §4.5.3.2.7 (server timeout) |
/// | `data_block_timeout` | 3 min | RFC 5321 §4.5.3.2.5 (per DATA/BDAT read) |
/// | `data_end_timeout` | 10 min | RFC 5321 §4.5.3.2.6: the longest a client waits for any answer, so also our bound on the chain |
/// | `drain_timeout` | 30 s | how long shutdown waits for transactions in flight |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted (octets after dot-unstuffing):
    /// a larger `SIZE=` or actual message gets `552 5.3.4`.
    pub max_message_size: u64,
    /// RCPT commands forwarded per transaction; further ones get
    /// `452 4.5.3` locally. Counted at forwarding time (not acceptance) so
    /// a pipelined batch can be judged before the chain answers, and so the
    /// chain's work per transaction is bounded too.
    pub max_recipients: usize,
    /// Longest command line, and AUTH exchange line, in octets without
    /// its CRLF. Longer ones get `500 5.5.2 line too long` and are
    /// discarded without being stored. Message data is not affected (see
    /// `max_data_line_length`).
    pub max_line_length: usize,
    /// Longest line of message content, in octets including its CRLF
    /// after dot-unstuffing (so DATA and BDAT count alike; the last line
    /// of a BDAT message counts even without a CRLF). A message with a
    /// longer line is read to its end and discarded, its upstream
    /// transaction dropped, and the final reply is
    /// `554 5.6.0 message has a line longer than N octets`. Counted as
    /// the data streams, so a long line is never buffered.
    pub max_data_line_length: usize,
    /// Bad commands tolerated; the next one gets `421 4.7.0` and the
    /// connection is closed.
    pub max_bad_commands: u32,
    /// Concurrent connections per listener; extra ones get `421 4.3.2`.
    pub max_connections: usize,
    /// Wait for a command (and for the client to take our replies).
    pub command_timeout: Duration,
    /// Wait for each read of message data.
    pub data_block_timeout: Duration,
    /// Wait for the chain to answer one update; on expiry the client gets
    /// `451 4.4.1` and the transaction is dropped.
    pub data_end_timeout: Duration,
    /// On shutdown, how long a transaction in flight may still run.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 32 * 1024 * 1024,
            max_recipients: 1000,
            max_line_length: 4096,
            // Far above what real mail uses (RFC 5322 asks for at most
            // 998 octets; long base64 or HTML lines reach a few KiB), far
            // below a single 10 MiB line.
            max_data_line_length: 1024 * 1024,
            max_bad_commands: 20,
            max_connections: 1000,
            command_timeout: Duration::from_secs(5 * 60),
            data_block_timeout: Duration::from_secs(3 * 60),
            data_end_timeout: Duration::from_secs(10 * 60),
            drain_timeout: Duration::from_secs(30),
        }
    }
}
