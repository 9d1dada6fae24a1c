//! This host's name, as kompose-dr records it (lock leases, scratch
//! markers, manifests).

/// The host name, or `unknown` when the system will not say.
pub fn name() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}
