//! Turning SDK errors into [`StorageError`]s whose messages say what to
//! fix: an unknown key, a wrong secret, access denied, a missing bucket,
//! DNS, TLS, clock skew, timeouts. A 404 on an object becomes
//! [`StorageError::NotFound`] and a failed precondition (`If-None-Match`,
//! `If-Match`) [`StorageError::AlreadyExists`], so callers match on kinds,
//! not on text.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::Inner;
use crate::model::config::S3Config;
use crate::storage::StorageError;

impl Inner {
    /// Maps an SDK error to a message that says what to fix.
    pub(super) fn error<E>(
        &self,
        op: &'static str,
        location: &str,
        err: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().map(str::to_owned);
        let detail = aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
        let endpoint = self
            .cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS S3 ({})", self.cfg.region));
        let message = explain(
            &self.cfg,
            &endpoint,
            status,
            code.as_deref(),
            err.message(),
            &detail,
            matches!(err, SdkError::TimeoutError(_)),
        );
        if status == Some(404) && code.as_deref() != Some("NoSuchBucket") {
            return StorageError::NotFound(location.to_owned());
        }
        if status == Some(412) || code.as_deref() == Some("PreconditionFailed") {
            return StorageError::AlreadyExists(location.to_owned());
        }
        StorageError::Remote {
            op,
            location: location.to_owned(),
            message,
        }
    }
}

/// Removing something already gone is success.
pub(super) fn gone_is_fine(e: StorageError) -> Result<(), StorageError> {
    match e {
        StorageError::NotFound(_) => Ok(()),
        e => Err(e),
    }
}

/// The message for a failed request: what happened and what to do.
///
/// Longer than our usual limit on purpose: one `match` holds every case,
/// so the order in which they are tried (a code before a status, a status
/// before the transport's text) can be read top to bottom.
fn explain(
    cfg: &S3Config,
    endpoint: &str,
    status: Option<u16>,
    code: Option<&str>,
    server_message: Option<&str>,
    detail: &str,
    timeout: bool,
) -> String {
    let lower = detail.to_ascii_lowercase();
    let server = server_message.unwrap_or_default().to_ascii_lowercase();
    // Some stores (Garage) answer AccessDenied with the reason in the text.
    let code = match code {
        Some("AccessDenied") | Some("Forbidden") if server.contains("signature") => {
            Some("SignatureDoesNotMatch")
        }
        Some("AccessDenied") | Some("Forbidden")
            if server.contains("no such key") || server.contains("access key") =>
        {
            Some("InvalidAccessKeyId")
        }
        c => c,
    };
    let said = server_message
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    match (status, code) {
        (_, Some("InvalidAccessKeyId")) => format!(
            "the store does not know this access key id{said}: check access_key_id_file (or AWS_ACCESS_KEY_ID)"
        ),
        (_, Some("SignatureDoesNotMatch")) => format!(
            "the store rejected the request signature{said}: the secret access key is wrong; check secret_access_key_file (or AWS_SECRET_ACCESS_KEY)"
        ),
        (_, Some("RequestTimeTooSkewed")) => format!(
            "this host's clock differs too much from the store's{said}: synchronise the clock (timedatectl set-ntp true)"
        ),
        (_, Some("NoSuchBucket")) => format!(
            "bucket `{}` does not exist at {endpoint}: create it, or fix the bucket in the repository url",
            cfg.bucket
        ),
        (_, Some("AccessDenied")) | (Some(403), _) => format!(
            "access denied{said}: grant this key read, write and delete on bucket `{}` (Garage: garage bucket allow --read --write --owner {} --key KEY), and check the key and secret",
            cfg.bucket, cfg.bucket
        ),
        (Some(404), None) => format!(
            "not found at {endpoint}: check that bucket `{}` exists and path_style suits the store (self-hosted stores usually need path_style = true)",
            cfg.bucket
        ),
        (_, Some("InvalidRequest")) | (_, Some("NotImplemented")) if cfg.object_lock.is_some() => {
            format!(
                "the store refused the request{said}: if it does not support Object Lock, remove object_lock from this repository; on AWS the bucket must be created with Object Lock enabled"
            )
        }
        (Some(s), _) if s >= 500 => format!(
            "the store answered HTTP {s}{said} after {} attempts: it is failing or overloaded; try again later",
            cfg.attempts
        ),
        (Some(s), c) => format!("the store answered HTTP {s} {}{said}", c.unwrap_or("")),
        (None, _) if timeout => format!(
            "no answer from {endpoint} within {} ({} attempts): the store is unreachable or too slow; check the network or raise `timeout`",
            humantime::format_duration(cfg.timeout),
            cfg.attempts
        ),
        (None, _)
            if lower.contains("dns error")
                || lower.contains("failed to lookup")
                || lower.contains("name or service not known") =>
        {
            format!("cannot resolve the host of {endpoint}: check the endpoint's host name and DNS")
        }
        (None, _)
            if lower.contains("certificate")
                || lower.contains("tls")
                || lower.contains("handshake") =>
        {
            format!(
                "TLS with {endpoint} failed: check http:// against https:// in the endpoint and that the store's certificate is trusted ({detail})"
            )
        }
        (None, _) if lower.contains("connection refused") => format!(
            "connection to {endpoint} refused: is the store running and the endpoint's port right?"
        ),
        (None, _) => format!("request to {endpoint} failed: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::s3::test_config as cfg;

    /// (status, code, server message, transport detail, timed out) →
    /// expected text.
    type Case<'a> = (
        Option<u16>,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
        bool,
        &'a str,
    );

    /// One row per case of `explain`.
    const CASES: [Case<'static>; 11] = [
        (
            Some(403),
            Some("InvalidAccessKeyId"),
            None,
            "",
            false,
            "access_key_id_file",
        ),
        (
            Some(403),
            Some("SignatureDoesNotMatch"),
            None,
            "",
            false,
            "secret access key is wrong",
        ),
        (
            Some(403),
            Some("AccessDenied"),
            Some("Forbidden: Invalid signature"),
            "",
            false,
            "secret access key is wrong",
        ),
        (
            Some(403),
            Some("AccessDenied"),
            Some("No such key: GK00"),
            "",
            false,
            "access_key_id_file",
        ),
        (
            Some(404),
            Some("NoSuchBucket"),
            None,
            "",
            false,
            "bucket `backups` does not exist",
        ),
        (
            Some(403),
            Some("RequestTimeTooSkewed"),
            None,
            "",
            false,
            "clock",
        ),
        (
            Some(403),
            Some("AccessDenied"),
            None,
            "",
            false,
            "grant this key",
        ),
        (
            Some(503),
            Some("SlowDown"),
            None,
            "",
            false,
            "after 6 attempts",
        ),
        (
            None,
            None,
            None,
            "dns error: failed to lookup address",
            false,
            "cannot resolve",
        ),
        (
            None,
            None,
            None,
            "invalid peer certificate: UnknownIssuer",
            false,
            "TLS",
        ),
        (None, None, None, "", true, "raise `timeout`"),
    ];

    #[test]
    fn errors_say_what_to_fix() {
        let c = cfg();
        let e = "http://garage:3900";
        for (status, code, said, detail, timeout, want) in CASES {
            let m = explain(&c, e, status, code, said, detail, timeout);
            assert!(m.contains(want), "{code:?} {said:?} {detail}: {m}");
        }
    }
}
