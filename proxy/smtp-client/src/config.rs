//! Configuration of the outbound SMTP client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use koukan_chain::transaction::HostPort;

use crate::tls::{TlsConfigError, tls_client_config};

/// When to use STARTTLS (RFC 3207) on an upstream connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Use STARTTLS when the peer offers it; stay in plaintext only when it
    /// is not offered. A peer that offers STARTTLS but then rejects it or
    /// fails the handshake is treated like an unreachable host (the next
    /// host is tried), never silently downgraded.
    #[default]
    Opportunistic,
    /// STARTTLS must be offered and the handshake must succeed; otherwise
    /// the host counts as unreachable (temporary failure, `4.7.4`/`4.7.5`).
    /// Whether the certificate is verified is decided by the rustls
    /// configuration passed to [`crate::SmtpClient::new`].
    Required,
    /// Never use STARTTLS.
    Disabled,
}

/// Settings shared by every [`crate::SmtpClient`] of an endpoint.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Name sent in EHLO/HELO.
    pub ehlo_hostname: String,
    pub tls: TlsMode,
    /// Input to [`ClientConfig::build_tls`]: verify upstream certificates
    /// (webpki roots plus `extra_ca_file`).
    pub verify_certificates: bool,
    /// PEM file with additional trusted CA certificates.
    pub extra_ca_file: Option<PathBuf>,
    /// Use BDAT (RFC 3030) when the peer offers CHUNKING.
    pub use_chunking: bool,
    pub connect_timeout: Duration,
    /// Wait for the 220 greeting (RFC 5321 4.5.3.2.1: 5 minutes).
    pub greeting_timeout: Duration,
    /// EHLO, STARTTLS, MAIL, RCPT replies (RFC 5321 4.5.3.2.2/3: 5 minutes).
    pub command_timeout: Duration,
    /// Reply to DATA (RFC 5321 4.5.3.2.4: 2 minutes).
    pub data_init_timeout: Duration,
    /// Each write of body data and each intermediate BDAT reply
    /// (RFC 5321 4.5.3.2.5: 3 minutes).
    pub data_block_timeout: Duration,
    /// Reply to the final `.` or `BDAT LAST` (RFC 5321 4.5.3.2.6: 10 minutes).
    pub data_end_timeout: Duration,
    /// How many upstream addresses (not names: an MX name with an A and an
    /// AAAA record counts twice) to try before giving up.
    pub max_hosts: usize,
    /// Hosts used for [`koukan_chain::transaction::Hosts::EndpointDefault`].
    pub default_hosts: Vec<HostPort>,
    /// Connection reuse (see [`crate::ConnectionPool`]): how many idle
    /// upstream sessions to keep per destination after a transaction ends
    /// cleanly; more are QUIT. `0` disables reuse (one connection per
    /// transaction, QUIT after it).
    pub max_idle_per_destination: usize,
    /// How long an idle upstream session may wait for the next transaction
    /// before it is QUIT. Keep it well below the peers' own idle timeout
    /// (RFC 5321 4.5.3.2.7: at least 5 minutes; Postfix's smtpd cuts idle
    /// clients much sooner under load). Zero disables reuse.
    pub idle_timeout: Duration,
    /// How many transactions one upstream connection carries before it is
    /// QUIT instead of being kept; `0` means no limit.
    pub max_transactions_per_connection: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            ehlo_hostname: "localhost".to_owned(),
            tls: TlsMode::Opportunistic,
            verify_certificates: false,
            extra_ca_file: None,
            use_chunking: true,
            connect_timeout: Duration::from_secs(30),
            greeting_timeout: Duration::from_secs(300),
            command_timeout: Duration::from_secs(300),
            data_init_timeout: Duration::from_secs(120),
            data_block_timeout: Duration::from_secs(180),
            data_end_timeout: Duration::from_secs(600),
            max_hosts: 5,
            default_hosts: Vec::new(),
            max_idle_per_destination: 64,
            idle_timeout: Duration::from_secs(5),
            max_transactions_per_connection: 100,
        }
    }
}

impl ClientConfig {
    /// The rustls configuration matching `verify_certificates` and
    /// `extra_ca_file`; pass it to [`crate::SmtpClient::new`].
    pub fn build_tls(&self) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
        tls_client_config(self.verify_certificates, self.extra_ca_file.as_deref())
    }
}
