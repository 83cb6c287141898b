//! Koukan's inbound SMTP side: the listener, the session state machine,
//! STARTTLS / implicit TLS and AUTH.
//!
//! A session turns client commands into [`koukan_chain::TxUpdate`]s for a
//! per-transaction chain built by a [`TransactionFactory`] at MAIL time, and
//! writes the chain's responses back verbatim. Message data streams through
//! in chunks of at most 64 KiB; nothing a client sends is buffered without
//! bound.
//!
//! Layout: `config` ([`SessionConfig`], [`Limits`]), `session` (state
//! machine; `session/envelope` for MAIL/RCPT batches, `session/sasl` for
//! AUTH), `conn` (bounded reader, reply buffer, TLS upgrade), `data`
//! (DATA/BDAT streaming), `tx` (per-transaction chain and summary log),
//! `line_limit` (message line length count), `auth` (secrets file),
//! `auth_limit` (failed AUTH delays and lockouts across connections),
//! `tls`, `reply` (local replies), `listener` (accept
//! loop, connection limit, drain), `metrics`, and [`fuzzing`] (socket-free
//! harness for the fuzz target in `fuzz/`).
#![forbid(unsafe_code)]

mod auth;
mod auth_limit;
mod config;
mod conn;
mod data;
pub mod fuzzing;
mod line_limit;
mod listener;
mod metrics;
mod reply;
mod session;
mod tls;
mod tx;

pub use argon2::Params as Argon2Params;
pub use auth::{Secrets, SecretsError, generate_secret, hash_secret, hash_secret_with_params};
pub use auth_limit::{
    AuthFailureLimits, AuthFailurePolicy, AuthFailureTracker, ClientKey, MAX_KNOWN_GOOD,
    MAX_TRACKED, Scope as AuthScope,
};
pub use config::{Limits, SessionConfig};
pub use koukan_chain::TransactionFactory;
pub use listener::{Listener, ListenerHandle, run_listener};
pub use metrics::{
    AuthScopeLabels, ComponentLabels, InternalErrors, ListenerLabels, OutcomeLabels, RejectLabels,
    SmtpMetrics,
};
pub use session::serve_connection;
pub use tls::{TlsConfigError, load_tls_config, tls_config_from_pem};
