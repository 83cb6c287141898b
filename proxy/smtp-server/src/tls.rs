//! TLS server configuration helpers and session TLS facts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use koukan_chain::TlsInfo;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no certificate found in PEM data")]
    NoCertificate,
    #[error("bad PEM data: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server config (ring provider, TLS 1.2 and 1.3, no client certificates)
/// from a PEM certificate chain and private key.
pub fn tls_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<ServerConfig, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    Ok(config)
}

/// [`tls_config_from_pem`] reading the two files.
pub fn load_tls_config(
    cert_path: impl AsRef<Path>,
    key_path: impl AsRef<Path>,
) -> Result<ServerConfig, TlsConfigError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsConfigError::Io {
            path: p.to_owned(),
            source,
        })
    };
    tls_config_from_pem(&read(cert_path.as_ref())?, &read(key_path.as_ref())?)
}

/// Version and cipher suite of an established session, with the IANA-ish
/// names logs and trace headers use (`TLSv1.3`, `TLS13_AES_256_GCM_SHA384`).
pub(crate) fn tls_info(conn: &rustls::ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(v) => format!("{v:?}"),
        None => "unknown".to_owned(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let suite = s.suite();
            suite
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{suite:?}"))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    TlsInfo { version, cipher }
}
