//! Listeners: what each one serves, and the SMTP session config built
//! from an `smtp` listener (reading its certificate and secrets files).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use koukan_proto::config::v1 as pb;
use koukan_proto::load::{ConfigError, Problem};
use koukan_smtp_server::{
    AuthFailureLimits, AuthFailurePolicy, AuthFailureTracker, Limits, Secrets, SessionConfig,
};

use super::{duration, nonzero, resolve};

/// One configured listener.
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub kind: ListenerKind,
}

/// What a listener serves. Every kind the schema has is either here or
/// refused at validation ("not implemented yet"), never skipped.
pub enum ListenerKind {
    Smtp(SmtpListenerSpec),
    Http(Arc<HttpListenerSpec>),
}

/// An `http` listener: the REST API's settings (see `crate::rest`).
pub struct HttpListenerSpec {
    pub name: String,
    /// Without a trailing slash; empty for bare paths.
    pub session_uri: String,
    /// `session_uri` when not configured.
    pub service_uri: String,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Empty: every sender.
    pub senders: Vec<String>,
    pub api_keys: Option<Arc<ApiKeys>>,
    pub idempotency_window: std::time::Duration,
    pub limits: HttpLimits,
}

impl HttpListenerSpec {
    pub fn serves(&self, sender: &str) -> bool {
        self.senders.is_empty() || self.senders.iter().any(|s| s == sender)
    }
}

/// See `HttpLimits` in the schema.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpLimits {
    pub max_message_size: u64,
    pub max_json_bytes: usize,
    pub max_json_depth: usize,
    pub max_header_bytes: usize,
    pub max_concurrent_requests: usize,
    pub max_hanging_gets: usize,
    pub max_request_timeout: std::time::Duration,
    pub max_pending: usize,
    pub pending_timeout: std::time::Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_message_size: 64 << 20,
            max_json_bytes: 1 << 20,
            max_json_depth: koukan_rest::MAX_JSON_DEPTH,
            max_header_bytes: 16 << 10,
            max_concurrent_requests: 512,
            max_hanging_gets: 256,
            max_request_timeout: std::time::Duration::from_secs(30),
            max_pending: 10_000,
            pending_timeout: std::time::Duration::from_secs(3600),
        }
    }
}

impl HttpLimits {
    fn from_pb(l: Option<&pb::HttpLimits>) -> Self {
        let d = Self::default();
        let Some(l) = l else { return d };
        Self {
            max_message_size: nonzero(l.max_message_size, d.max_message_size),
            max_json_bytes: nonzero(l.max_json_bytes as usize, d.max_json_bytes),
            max_json_depth: nonzero(l.max_json_depth as usize, d.max_json_depth),
            max_header_bytes: nonzero(l.max_header_bytes as usize, d.max_header_bytes),
            max_concurrent_requests: nonzero(
                l.max_concurrent_requests as usize,
                d.max_concurrent_requests,
            ),
            max_hanging_gets: nonzero(l.max_hanging_gets as usize, d.max_hanging_gets),
            max_request_timeout: duration(&l.max_request_timeout, d.max_request_timeout),
            max_pending: nonzero(l.max_pending as usize, d.max_pending),
            pending_timeout: duration(&l.pending_timeout, d.pending_timeout),
        }
    }
}

/// Per-sender API keys, as SHA-256 digests (the keys are random tokens,
/// so a fast hash is enough, unlike passwords; and it keeps every request
/// cheap).
pub struct ApiKeys {
    digests: std::collections::HashMap<String, Vec<u8>>,
}

impl ApiKeys {
    /// Reads `{"sender": "<hex SHA-256 of the key>"}`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| e.to_string())?;
        let map: std::collections::HashMap<String, String> = serde_json::from_slice(&text)
            .map_err(|e| format!("not a JSON object of strings: {e}"))?;
        let mut digests = std::collections::HashMap::new();
        for (sender, hex) in map {
            let bytes = decode_hex(&hex)
                .filter(|b| b.len() == 32)
                .ok_or_else(|| format!("sender {sender:?}: not a hex SHA-256 digest"))?;
            digests.insert(sender, bytes);
        }
        Ok(Self { digests })
    }

    /// Whether `key` is `sender`'s. Compares digests in constant time.
    pub fn check(&self, sender: &str, key: &str) -> bool {
        let Some(want) = self.digests.get(sender) else {
            return false;
        };
        let got = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut diff = 0u8;
        for (a, b) in want.iter().zip(got.as_ref()) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub struct SmtpListenerSpec {
    pub session: Arc<SessionConfig>,
    pub sender: String,
    pub tag: String,
}

impl ListenerSpec {
    /// The sender and tag of an SMTP listener's mail; an HTTP listener's
    /// requests name their own.
    pub fn sender_and_tag(&self) -> Option<(&str, &str)> {
        match &self.kind {
            ListenerKind::Smtp(s) => Some((&s.sender, &s.tag)),
            ListenerKind::Http(_) => None,
        }
    }

    /// Builds listener `l` at field path `path`; `config_file` anchors
    /// the relative paths of its files. What cannot be loaded (a
    /// certificate that does not parse, secrets with bad JSON) is reported
    /// with the field path of its file.
    pub fn from_pb(
        config_file: &Path,
        path: &str,
        l: &pb::Listener,
        auth_tracker: &Arc<AuthFailureTracker>,
    ) -> Result<Self, ConfigError> {
        let address = l.address.parse().map_err(|_| {
            ConfigError::new(
                format!("{path}.address"),
                Problem::BadSocketAddr {
                    value: l.address.clone(),
                },
            )
        })?;
        let kind =
            match &l.protocol {
                Some(pb::listener::Protocol::Smtp(s)) => ListenerKind::Smtp(SmtpListenerSpec {
                    session: session_config(
                        config_file,
                        &format!("{path}.smtp"),
                        &l.name,
                        s,
                        auth_tracker,
                    )?,
                    sender: s.sender.clone(),
                    tag: s.tag.clone(),
                }),
                Some(pb::listener::Protocol::Http(h)) => ListenerKind::Http(Arc::new(
                    http_listener(config_file, &format!("{path}.http"), &l.name, h)?,
                )),
                None => {
                    return Err(ConfigError::new(
                        path.to_owned(),
                        Problem::OneofMissing("smtp, http"),
                    ));
                }
            };
        Ok(Self {
            name: l.name.clone(),
            address,
            kind,
        })
    }
}

fn http_listener(
    config_file: &Path,
    path: &str,
    name: &str,
    h: &pb::HttpListener,
) -> Result<HttpListenerSpec, ConfigError> {
    let tls = match &h.tls {
        Some(t) if !t.cert.is_empty() && !t.key.is_empty() => Some(
            tls_server_config(
                &resolve(config_file, &t.cert),
                &resolve(config_file, &t.key),
            )
            .map_err(|reason| {
                ConfigError::new(
                    format!("{path}.tls"),
                    Problem::Load {
                        what: "TLS certificate and key",
                        value: t.cert.clone(),
                        reason,
                    },
                )
            })?,
        ),
        _ => None,
    };
    let api_keys = match h.api_keys.as_str() {
        "" => None,
        file => Some(Arc::new(
            ApiKeys::load(&resolve(config_file, file)).map_err(|reason| {
                ConfigError::new(
                    format!("{path}.api_keys"),
                    Problem::Load {
                        what: "API keys",
                        value: file.to_owned(),
                        reason,
                    },
                )
            })?,
        )),
    };
    let session_uri = h.session_uri.trim_end_matches('/').to_owned();
    let service_uri = match h.service_uri.trim_end_matches('/') {
        "" => session_uri.clone(),
        s => s.to_owned(),
    };
    Ok(HttpListenerSpec {
        name: name.to_owned(),
        session_uri,
        service_uri,
        tls,
        senders: h.senders.clone(),
        api_keys,
        idempotency_window: duration(
            &h.idempotency_window,
            std::time::Duration::from_secs(24 * 3600),
        ),
        limits: HttpLimits::from_pb(h.limits.as_ref()),
    })
}

/// A certificate chain and its key, or why they cannot be used.
fn tls_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("private key: {e}"))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(cfg))
}

/// A listener's failure limits, unless turned off.
fn auth_failures(
    f: Option<&pb::AuthFailureLimits>,
    tracker: &Arc<AuthFailureTracker>,
) -> Option<AuthFailureLimits> {
    let d = AuthFailurePolicy::default();
    let policy = match f {
        Some(f) if f.disabled => return None,
        None => d,
        Some(f) => AuthFailurePolicy {
            max_failures_per_address: nonzero(
                f.max_failures_per_address,
                d.max_failures_per_address,
            ),
            max_failures_per_user: nonzero(f.max_failures_per_user, d.max_failures_per_user),
            window: duration(&f.window, d.window),
            lockout: duration(&f.lockout, d.lockout),
            delay: duration(&f.delay, d.delay),
            max_delay: duration(&f.max_delay, d.max_delay),
        },
    };
    Some(AuthFailureLimits {
        policy,
        tracker: tracker.clone(),
    })
}

fn session_config(
    config_file: &Path,
    path: &str,
    name: &str,
    s: &pb::SmtpListener,
    auth_tracker: &Arc<AuthFailureTracker>,
) -> Result<Arc<SessionConfig>, ConfigError> {
    let tls = match &s.tls {
        Some(t) if !t.cert.is_empty() => Some(
            tls_server_config(
                &resolve(config_file, &t.cert),
                &resolve(config_file, &t.key),
            )
            .map_err(|reason| {
                ConfigError::new(
                    format!("{path}.tls"),
                    Problem::Load {
                        what: "certificate and key",
                        value: format!("{} {}", t.cert, t.key),
                        reason,
                    },
                )
            })?,
        ),
        _ => None,
    };
    let (auth, require_auth, loopback, auth_failures) = match &s.auth {
        Some(a) if !a.secrets.is_empty() => {
            let secrets = Secrets::load(resolve(config_file, &a.secrets)).map_err(|e| {
                ConfigError::new(
                    format!("{path}.auth.secrets"),
                    Problem::Load {
                        what: "secrets file",
                        value: a.secrets.clone(),
                        reason: e.to_string(),
                    },
                )
            })?;
            (
                Some(Arc::new(secrets)),
                a.require,
                a.allow_plaintext_on_loopback,
                auth_failures(a.failure_limits.as_ref(), auth_tracker),
            )
        }
        _ => (None, false, false, None),
    };
    let d = Limits::default();
    let limits = match &s.limits {
        Some(l) => Limits {
            max_message_size: nonzero(l.max_message_size, d.max_message_size),
            max_recipients: nonzero(l.max_recipients as usize, d.max_recipients),
            max_line_length: nonzero(l.max_line_length as usize, d.max_line_length),
            max_data_line_length: nonzero(l.max_data_line_length as usize, d.max_data_line_length),
            max_connections: nonzero(l.max_connections as usize, d.max_connections),
            max_bad_commands: nonzero(l.max_bad_commands, d.max_bad_commands),
            command_timeout: duration(&l.command_timeout, d.command_timeout),
            data_block_timeout: duration(&l.data_timeout, d.data_block_timeout),
            drain_timeout: duration(&l.drain_timeout, d.drain_timeout),
            ..d
        },
        None => d,
    };
    let hostname = if s.hostname.is_empty() {
        gethostname::gethostname().to_string_lossy().into_owned()
    } else {
        s.hostname.clone()
    };
    Ok(Arc::new(SessionConfig {
        listener_name: name.to_owned(),
        hostname,
        tls,
        implicit_tls: s.implicit_tls,
        auth,
        auth_allow_plaintext_loopback: loopback,
        require_auth,
        auth_failures,
        limits,
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn auth_failure_limits_from_config() {
        let tracker = Arc::new(AuthFailureTracker::new());
        let d = AuthFailurePolicy::default();
        // Absent, or present with zero fields: on, with the defaults.
        assert_eq!(auth_failures(None, &tracker).unwrap().policy, d);
        let zero = pb::AuthFailureLimits::default();
        assert_eq!(auth_failures(Some(&zero), &tracker).unwrap().policy, d);
        // Every field maps.
        let secs = |s| {
            Some(pbjson_types::Duration {
                seconds: s,
                nanos: 0,
            })
        };
        let set = pb::AuthFailureLimits {
            disabled: false,
            max_failures_per_address: 3,
            max_failures_per_user: 4,
            window: secs(60),
            lockout: secs(120),
            delay: Some(pbjson_types::Duration {
                seconds: 0,
                nanos: 250_000_000,
            }),
            max_delay: secs(2),
        };
        let l = auth_failures(Some(&set), &tracker).unwrap();
        assert_eq!(
            l.policy,
            AuthFailurePolicy {
                max_failures_per_address: 3,
                max_failures_per_user: 4,
                window: Duration::from_secs(60),
                lockout: Duration::from_secs(120),
                delay: Duration::from_millis(250),
                max_delay: Duration::from_secs(2),
            }
        );
        // The process's tracker, not a copy.
        assert!(Arc::ptr_eq(&l.tracker, &tracker));
        let off = pb::AuthFailureLimits {
            disabled: true,
            ..set
        };
        assert!(auth_failures(Some(&off), &tracker).is_none());
    }
}
