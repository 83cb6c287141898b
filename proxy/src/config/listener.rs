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
}

pub struct SmtpListenerSpec {
    pub session: Arc<SessionConfig>,
    pub sender: String,
    pub tag: String,
}

impl ListenerSpec {
    pub fn sender_and_tag(&self) -> (&str, &str) {
        match &self.kind {
            ListenerKind::Smtp(s) => (&s.sender, &s.tag),
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
        let kind = match &l.protocol {
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
            // Validation refuses them; never skipped silently.
            Some(pb::listener::Protocol::Http(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.http"),
                    Problem::NotImplemented {
                        resource: "listener",
                        kind: "http",
                    },
                ));
            }
            None => {
                return Err(ConfigError::new(
                    path.to_owned(),
                    Problem::OneofMissing("smtp"),
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
