//! Reading an ACME certificate store (Traefik's `acme.json`) for the facts:
//! each certificate's resolver, domains and expiry.
//!
//! The shape is `{ "<resolver>": { "Certificates": [ { "domain": { "main":
//! …, "sans": […] }, "certificate": "<base64 PEM chain>", … } ] } }`. Any
//! other JSON is simply not an ACME store.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::model::facts::Certificate;

#[derive(Deserialize)]
struct Resolver {
    #[serde(rename = "Certificates")]
    certificates: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
struct Entry {
    domain: Option<Domain>,
    certificate: Option<String>,
}

#[derive(Deserialize)]
struct Domain {
    main: Option<String>,
}

/// The certificates of an ACME store, or `None` when `json` is not one.
pub fn certificates(json: &[u8]) -> Option<Vec<Certificate>> {
    let store: BTreeMap<String, Resolver> = serde_json::from_slice(json).ok()?;
    if store.is_empty() || store.values().all(|r| r.certificates.is_none()) {
        return None;
    }
    let mut out = Vec::new();
    for (resolver, r) in store {
        for e in r.certificates.unwrap_or_default() {
            let main = e.domain.and_then(|d| d.main).unwrap_or_default();
            let decoded = match e.certificate.as_deref() {
                None => Err(CertificateError::Missing),
                Some(b64) => decode(b64),
            };
            out.push(match decoded {
                Ok((domains, not_after)) => Certificate {
                    resolver: resolver.clone(),
                    main,
                    domains,
                    not_after: Some(not_after),
                    error: None,
                },
                Err(error) => Certificate {
                    resolver: resolver.clone(),
                    main,
                    domains: Vec::new(),
                    not_after: None,
                    error: Some(error.to_string()),
                },
            });
        }
    }
    Some(out)
}

/// Why an entry's certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The entry has no `certificate`.
    #[error("the entry holds no certificate")]
    Missing,
    /// The text is not base64.
    #[error("certificate is not base64: {0}")]
    Base64(#[source] base64::DecodeError),
    /// The bytes are not PEM.
    #[error("certificate is not PEM: {0}")]
    Pem(String),
    /// The PEM does not hold an X.509 certificate.
    #[error("certificate does not decode: {0}")]
    X509(String),
    /// The expiry is not a time this program can hold.
    #[error("certificate expiry out of range")]
    Expiry,
}

/// Decodes a base64 PEM chain; returns the leaf's DNS names and expiry.
pub fn decode(b64: &str) -> Result<(Vec<String>, DateTime<Utc>), CertificateError> {
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(CertificateError::Base64)?;
    // The parser's errors borrow the input: kept as their text.
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&pem).map_err(|e| CertificateError::Pem(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CertificateError::X509(e.to_string()))?;
    let mut domains = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = name {
                domains.push((*d).to_owned());
            }
        }
    }
    if domains.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                domains.push(s.to_owned());
            }
        }
    }
    let not_after = DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .ok_or(CertificateError::Expiry)?;
    Ok((domains, not_after))
}
