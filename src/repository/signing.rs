//! Signed manifests and markers: a detached minisign signature beside each
//! (`<key>.minisig`), over the object's exact bytes, made with the backup
//! host's key and checked by every reader against `[signing] public_key`.
//!
//! The format is minisign's own (prehashed Ed25519, BLAKE2b-512), so the
//! stock tool checks it by hand: `minisign -V -P PUBLIC_KEY -m
//! snapshots/ID.json` (docs/RUNBOOK.md). The trusted comment names the
//! object, so a signature cannot be passed off for another snapshot's
//! manifest either.

use crate::model::config::{Trust, parse_secret_key};

/// The most a signature file may hold: minisign's are about 300 bytes.
pub const MAX_SIGNATURE: usize = 4096;

/// How a document checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// Signed with the configured key.
    Yes,
    /// Not signed (or not checkable), accepted because of
    /// `--allow-unsigned`.
    AllowedUnsigned,
}

/// The trusted comment of the signature of `what`.
fn comment(what: &str) -> String {
    format!("kompose-dr {what}")
}

/// Signs `body` (the document at key `what`) with the trust's key; `None`
/// when it holds none.
pub fn sign(trust: &Trust, what: &str, body: &[u8]) -> Result<Option<Vec<u8>>, SignatureError> {
    let Some(key) = &trust.signing_key else {
        return Ok(None);
    };
    let cannot = |why: String| SignatureError::CannotSign {
        what: what.to_owned(),
        why,
    };
    let sk = parse_secret_key(key.expose()).map_err(|e| cannot(e.to_string()))?;
    let sig = minisign::sign(
        None,
        &sk,
        std::io::Cursor::new(body),
        Some(&comment(what)),
        Some("signature from kompose-dr secret key"),
    )
    .map_err(|e| cannot(e.to_string()))?;
    Ok(Some(sig.into_string().into_bytes()))
}

/// What an unsigned document gets: the repository decides, from its
/// marker and `--allow-unsigned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsignedRule {
    /// Accepted: `--allow-unsigned`, on a repository written before signing
    /// (its marker unsigned, with no stack id).
    Accept,
    /// Refused; the repository may predate signing, so `--allow-unsigned`
    /// would read it (the message says so).
    RefuseOld,
    /// Refused: the repository is signed, so nothing unsigned in it is ever
    /// accepted, whatever the flags.
    RefuseSigned,
}

/// Why a document's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Nothing can be checked: no public key is configured.
    #[error(
        "{what}: its signature cannot be checked: no [signing] public_key is configured \
         (paste the one `kompose-dr init --generate-key` printed){}",
        if *.signed_repository { "" } else { ", or pass --allow-unsigned for a repository written before signing existed" }
    )]
    NoPublicKey {
        /// The document's key.
        what: String,
        /// Whether the repository is signed (so that `--allow-unsigned`
        /// would not help).
        signed_repository: bool,
    },
    /// The document has no signature, and the repository requires one.
    #[error(
        "{what} is not signed: refusing it. Anyone who can write to the repository can forge an unsigned document{}",
        if *.signed_repository {
            "; this repository is signed (its marker is), so nothing unsigned in it is ever accepted, --allow-unsigned or not"
        } else {
            "; if this repository was written before signing existed, check it by hand (docs/RUNBOOK.md) and pass --allow-unsigned"
        }
    )]
    Unsigned {
        /// The document's key.
        what: String,
        /// Whether the repository is signed.
        signed_repository: bool,
    },
    /// The signature is there and wrong.
    #[error(
        "{what} is wrongly signed ({why}): refusing it — it was not written by the backup host's key, or it was changed since"
    )]
    Wrong {
        /// The document's key.
        what: String,
        /// What did not fit.
        why: String,
    },
    /// A signature could not be made.
    #[error("cannot sign {what}: {why}")]
    CannotSign {
        /// The document's key.
        what: String,
        /// Why.
        why: String,
    },
}

/// Checks `body` (the document at key `what`) against its signature, if
/// any. An unsigned document passes only under [`UnsignedRule::Accept`];
/// a wrongly signed one never does.
pub fn check(
    trust: &Trust,
    what: &str,
    body: &[u8],
    sig: Option<&[u8]>,
    rule: UnsignedRule,
) -> Result<Signed, SignatureError> {
    let signed_repository = rule == UnsignedRule::RefuseSigned;
    let Some(pk_text) = &trust.public_key else {
        if rule == UnsignedRule::Accept {
            return Ok(Signed::AllowedUnsigned);
        }
        return Err(SignatureError::NoPublicKey {
            what: what.to_owned(),
            signed_repository,
        });
    };
    let Some(sig) = sig else {
        if rule == UnsignedRule::Accept {
            return Ok(Signed::AllowedUnsigned);
        }
        return Err(SignatureError::Unsigned {
            what: what.to_owned(),
            signed_repository,
        });
    };
    let wrong = |why: String| SignatureError::Wrong {
        what: what.to_owned(),
        why,
    };
    if sig.len() > MAX_SIGNATURE {
        return Err(wrong(format!("{} bytes of signature", sig.len())));
    }
    let text = std::str::from_utf8(sig).map_err(|_| wrong("not text".into()))?;
    well_formed(text).map_err(wrong)?;
    let sig_box = minisign::SignatureBox::from_string(text)
        .map_err(|e| wrong(format!("not a minisign signature: {e}")))?;
    let pk = minisign::PublicKey::from_base64(pk_text)
        .map_err(|e| wrong(format!("the configured public key: {e}")))?;
    minisign::verify(
        &pk,
        &sig_box,
        std::io::Cursor::new(body),
        true,
        false,
        false,
    )
    .map_err(|e| wrong(e.to_string()))?;
    match sig_box.trusted_comment() {
        Ok(c) if c == comment(what) => Ok(Signed::Yes),
        Ok(c) => Err(wrong(format!("it was made for `{c}`"))),
        Err(e) => Err(wrong(e.to_string())),
    }
}

/// Checks the shape of a minisign signature file before the minisign crate
/// parses it: four lines, the signature 74 bytes and the global signature 64
/// bytes once decoded. minisign 0.10.0 panics on a shorter global signature
/// (found by the `signature` fuzz target, fuzz/regressions/signature).
fn well_formed(text: &str) -> Result<(), String> {
    use base64::Engine;
    let lines: Vec<&str> = text.lines().collect();
    let decoded = |line: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(line.trim())
            .map(|b| b.len())
            .unwrap_or(0)
    };
    match lines.as_slice() {
        [untrusted, sig, trusted, global, ..]
            if untrusted.starts_with("untrusted comment: ")
                && trusted.starts_with("trusted comment: ") =>
        {
            match (decoded(sig), decoded(global)) {
                (74, 64) => Ok(()),
                (s, g) => Err(format!(
                    "a {s}-byte signature and a {g}-byte global signature, not 74 and 64"
                )),
            }
        }
        _ => Err("not the four lines of a minisign signature".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::secret::Secret;

    fn trust() -> Trust {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        Trust {
            public_key: Some(kp.pk.to_base64()),
            signing_key: Some(Secret::new(kp.sk.to_box(None).unwrap().into_string())),
            allow_unsigned: false,
            seen_dir: None,
        }
    }

    #[test]
    fn a_signed_document_checks_out_and_any_change_is_refused() {
        let t = trust();
        let body = br#"{"id":"20261127T030000Z-abcdef"}"#;
        let what = "snapshots/20261127T030000Z-abcdef.json";
        let sig = sign(&t, what, body).unwrap().unwrap();
        let strict = UnsignedRule::RefuseSigned;
        assert_eq!(check(&t, what, body, Some(&sig), strict), Ok(Signed::Yes));
        let e = check(
            &t,
            what,
            br#"{"id":"20261127T030000Z-abcdeF"}"#,
            Some(&sig),
            strict,
        )
        .unwrap_err();
        assert!(matches!(e, SignatureError::Wrong { .. }), "{e}");
        // The same bytes under another name: the trusted comment differs.
        let e = check(
            &t,
            "snapshots/20261128T030000Z-abcdef.json",
            body,
            Some(&sig),
            strict,
        )
        .unwrap_err();
        assert!(e.to_string().contains("made for"), "{e}");
    }

    #[test]
    fn a_short_global_signature_is_refused_not_a_panic() {
        use base64::Engine;
        let t = trust();
        let sig = String::from_utf8(sign(&t, "x", b"{}").unwrap().unwrap()).unwrap();
        let mut lines: Vec<String> = sig.lines().map(str::to_owned).collect();
        let global = base64::engine::general_purpose::STANDARD
            .decode(&lines[3])
            .unwrap();
        lines[3] = base64::engine::general_purpose::STANDARD.encode(&global[..62]);
        let cut = lines.join("\n") + "\n";
        let e = check(&t, "x", b"{}", Some(cut.as_bytes()), UnsignedRule::Accept).unwrap_err();
        assert!(e.to_string().contains("62-byte global signature"), "{e}");
    }

    #[test]
    fn unsigned_is_refused_unless_allowed_and_another_key_is_refused_always() {
        let t = trust();
        let e = check(&t, "x", b"{}", None, UnsignedRule::RefuseOld).unwrap_err();
        assert!(e.to_string().contains("--allow-unsigned"), "{e}");
        let e = check(&t, "x", b"{}", None, UnsignedRule::RefuseSigned).unwrap_err();
        assert!(
            matches!(
                e,
                SignatureError::Unsigned {
                    signed_repository: true,
                    ..
                }
            ) && e.to_string().contains("is ever accepted"),
            "{e}"
        );
        assert_eq!(
            check(&t, "x", b"{}", None, UnsignedRule::Accept),
            Ok(Signed::AllowedUnsigned)
        );
        let other = sign(&trust(), "x", b"{}").unwrap().unwrap();
        assert!(check(&t, "x", b"{}", Some(&other), UnsignedRule::Accept).is_err());
        let none = Trust::default();
        assert!(matches!(
            check(&none, "x", b"{}", None, UnsignedRule::RefuseOld),
            Err(SignatureError::NoPublicKey { .. })
        ));
    }
}
