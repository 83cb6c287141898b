//! rustls client configurations for STARTTLS.
//!
//! Two flavours:
//! - verifying: webpki's compiled-in public roots plus an optional extra CA
//!   file, certificates checked against the upstream host name;
//! - opportunistic: any certificate is accepted. This is deliberate and
//!   matches RFC 3207 practice for MX delivery (RFC 7435 "opportunistic
//!   security"): MX host names are not authenticated by plain DNS, so a
//!   certificate check would only turn encryption into plaintext fallback
//!   for the many servers with self-signed or mismatched certificates, and
//!   an active attacker could strip STARTTLS anyway. Authenticated
//!   delivery belongs to MTA-STS (RFC 8461) or DANE (RFC 7672), which can
//!   be layered on later by choosing the verifying configuration per
//!   destination.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("reading CA file {path}: {source}")]
    CaFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing CA file {path}: {source}")]
    CaFileParse {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("CA file {path} contains no certificates")]
    CaFileEmpty { path: PathBuf },
    #[error("CA file {path}: {source}")]
    CaCert {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client configuration for STARTTLS.
///
/// With `verify`, the peer's certificate must chain to a webpki root or to
/// a certificate in `extra_ca_pem` and match the host name connected to.
/// Without it, any certificate is accepted (see the module docs for why);
/// the handshake signatures are still checked, so the session is at least
/// bound to the key in the presented certificate. `extra_ca_pem` is read
/// (and must be valid) in both cases, so a bad path fails at startup.
pub fn tls_client_config(
    verify: bool,
    extra_ca_pem: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let extra = match extra_ca_pem {
        Some(path) => read_ca_file(path)?,
        None => Vec::new(),
    };
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if verify {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for (path, cert) in extra {
            roots
                .add(cert)
                .map_err(|source| TlsConfigError::CaCert { path, source })?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn read_ca_file(path: &Path) -> Result<Vec<(PathBuf, CertificateDer<'static>)>, TlsConfigError> {
    let pem = fs::read(path).map_err(|source| TlsConfigError::CaFileRead {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| (path.to_owned(), c)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::CaFileParse {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::CaFileEmpty {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Accepts every server certificate (opportunistic TLS, see module docs)
/// while still verifying the handshake signatures with the provider's
/// algorithms.
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_is_an_error() {
        let err = tls_client_config(true, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(matches!(err, TlsConfigError::CaFileRead { .. }), "{err}");
    }

    #[test]
    fn builds_both_flavours() {
        tls_client_config(true, None).unwrap();
        tls_client_config(false, None).unwrap();
    }
}
