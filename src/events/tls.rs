//! The one rustls client configuration the event clients share: ring as
//! the crypto provider, safe default protocol versions, and either the
//! system's root certificates or the certificates of a CA file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("cannot read {key} {}: {source}", path.display())]
    ReadCa {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds something that is not a PEM certificate.
    #[error("{key} {}: {source}", path.display())]
    Pem {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The PEM error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate of the CA file was refused as a root.
    #[error("{key} {}: {source}", path.display())]
    Root {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the protocol versions.
    #[error("TLS: {0}")]
    Protocol(#[source] rustls::Error),
}

/// A CA file and the configuration key that names it (for messages).
#[derive(Debug, Clone, Copy)]
pub struct CaFile<'a> {
    /// The configuration key (`mqtt.ca_file`).
    pub key: &'static str,
    /// The file.
    pub path: &'a Path,
}

/// A client configuration trusting the certificates in `ca` or, without
/// one, the system's root certificates.
pub fn client_config(ca: Option<CaFile<'_>>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = match ca {
        Some(ca) => ca_roots(ca)?,
        None => system_roots(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Protocol)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The system's root certificates; one that rustls refuses is skipped.
fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

/// Every certificate in the PEM file `ca`; any that cannot be read fails.
fn ca_roots(ca: CaFile<'_>) -> Result<rustls::RootCertStore, TlsError> {
    let (key, path) = (ca.key, ca.path.to_owned());
    let pem = std::fs::read(ca.path).map_err(|source| TlsError::ReadCa {
        key,
        path: path.clone(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|source| TlsError::Pem {
            key,
            path: path.clone(),
            source,
        })?;
        roots.add(cert).map_err(|source| TlsError::Root {
            key,
            path: path.clone(),
            source,
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_named_with_its_key() {
        let e = client_config(Some(CaFile {
            key: "mqtt.ca_file",
            path: Path::new("/nonexistent/ca.pem"),
        }))
        .unwrap_err();
        assert!(
            matches!(&e, TlsError::ReadCa { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        );
        assert!(e.to_string().contains("mqtt.ca_file /nonexistent/ca.pem"));
    }

    #[test]
    fn system_roots_build_a_config() {
        assert!(client_config(None).is_ok());
    }
}
