//! `[signing]`: the Ed25519 key (minisign format) that signs every
//! manifest and the marker on the backup host, and the public key every
//! reader checks them against (docs/DESIGN.md §10).
//!
//! Both are validated here: the public key must be a minisign public key,
//! the secret key an unencrypted minisign secret key (`minisign -G -W`, or
//! `kompose-dr init --generate-key FILE`, which writes `FILE.sign`), and
//! when both are set they must be a pair. A `key_file` that group or
//! others can read is refused with the `chmod` to run (see [`super::keyfile`]);
//! a `key_credential` is systemd's to protect. What the repository layer
//! needs of them is copied into every repository's [`Trust`].

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Cx, keyfile};
use crate::model::secret::Secret;

/// `[signing]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSigning {
    key_file: Option<Spanned<String>>,
    key_credential: Option<Spanned<String>>,
    public_key: Option<Spanned<String>>,
}

/// What a repository trusts and how it signs.
#[derive(Clone, Default)]
pub struct Trust {
    /// The minisign public key (base64) manifests and the marker must be
    /// signed with; `None`: nothing can be checked, so readers accept
    /// snapshots only with `allow_unsigned`.
    pub public_key: Option<String>,
    /// The unencrypted minisign secret key (the key file's text), for the
    /// writers; `None` on hosts that only read.
    pub signing_key: Option<Secret>,
    /// `--allow-unsigned`: accept snapshots without a signature (written
    /// before signing existed). A wrong signature is refused all the same.
    pub allow_unsigned: bool,
    /// Where this host records what it committed to each repository (the
    /// newest snapshot, and that it signs there): `None` where nothing is
    /// recorded (tests over in-memory backends).
    pub seen_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("public_key", &self.public_key)
            .field("signing_key", &self.signing_key.as_ref().map(|_| "…"))
            .field("allow_unsigned", &self.allow_unsigned)
            .field("seen_dir", &self.seen_dir)
            .finish()
    }
}

impl Trust {
    /// A new signing key pair, trusted: for repositories built in tests
    /// over in-memory backends, which sign and check like any.
    pub fn ephemeral() -> Trust {
        let kp = minisign::KeyPair::generate_unencrypted_keypair()
            .expect("the system has randomness for a key pair");
        Trust {
            public_key: Some(kp.pk.to_base64()),
            signing_key: Some(Secret::new(
                kp.sk.to_box(None).expect("a new key encodes").into_string(),
            )),
            allow_unsigned: false,
            seen_dir: None,
        }
    }
}

impl Cx<'_> {
    /// Validates `[signing]`.
    pub(super) fn signing(&self, raw: Option<&RawSigning>) -> Result<Trust, ConfigError> {
        let Some(s) = raw else {
            return Ok(Trust::default());
        };
        let public_key = match &s.public_key {
            None => None,
            Some(p) => {
                let v = self.string(p, "signing.public_key")?;
                minisign::PublicKey::from_base64(v.trim()).map_err(|_| {
                    self.err(
                        p.span(),
                        "signing.public_key",
                        "not a minisign public key: paste the public_key line `kompose-dr init --generate-key` printed (or the second line of a minisign .pub file)",
                    )
                })?;
                Some(v.trim().to_owned())
            }
        };
        let signing_key = match (&s.key_file, &s.key_credential) {
            (Some(file), None) => Some(self.signing_key(file)?),
            // Neither, a credential, or both (which `secret` refuses).
            _ => self.secret("signing", &None, &s.key_file, &s.key_credential)?,
        };
        if let Some(sk) = &signing_key {
            let span = s
                .key_file
                .as_ref()
                .or(s.key_credential.as_ref())
                .map(|v| v.span())
                .unwrap_or(0..0);
            let key_name = if s.key_file.is_some() {
                "signing.key_file"
            } else {
                "signing.key_credential"
            };
            let secret = parse_secret_key(sk.expose())
                .map_err(|e| self.err(span.clone(), key_name, e.to_string()))?;
            if let Some(pk) = &public_key {
                let derived = minisign::PublicKey::from_secret_key(&secret)
                    .map(|p| p.to_base64())
                    .unwrap_or_default();
                if &derived != pk {
                    return Err(self.err(
                        span,
                        key_name,
                        "this signing key does not belong to signing.public_key: readers would refuse every snapshot it signs",
                    ));
                }
            }
        }
        Ok(Trust {
            public_key,
            signing_key,
            allow_unsigned: false,
            seen_dir: None,
        })
    }
}

impl Cx<'_> {
    /// The path of `[signing] key_file`, if set.
    pub(super) fn signing_key_file(
        &self,
        raw: Option<&RawSigning>,
    ) -> Result<Option<PathBuf>, ConfigError> {
        raw.and_then(|s| s.key_file.as_ref())
            .map(|f| self.path(f, "signing.key_file"))
            .transpose()
    }

    /// Reads `[signing] key_file`, refusing it while group or others can
    /// read it.
    fn signing_key(&self, file: &Spanned<String>) -> Result<Secret, ConfigError> {
        let key = "signing.key_file";
        let path = self.path(file, key)?;
        let body = keyfile::read(&path, "signing key file")
            .map_err(|e| self.err(file.span(), key, e.to_string()))?;
        self.note_file(key, &path, true);
        let text = String::from_utf8(body).map_err(|_| {
            self.err(
                file.span(),
                key,
                format!("{} is not text: {}", path.display(), BAD_KEY),
            )
        })?;
        Ok(Secret::new(text.trim_end_matches(['\r', '\n']).to_owned()))
    }
}

/// What is wrong with a file that holds no usable signing key, and the fix.
const BAD_KEY: &str = "not an unencrypted minisign secret key: make one with `kompose-dr init --generate-key FILE` (FILE.sign) or `minisign -G -W`";

/// A file that holds no usable signing key; the message says how to make
/// one.
#[derive(Debug, thiserror::Error)]
#[error("{}", BAD_KEY)]
pub struct BadSecretKey {
    /// minisign's reason, when it gave one (an encrypted key gives none).
    #[source]
    pub source: Option<minisign::PError>,
}

/// Parses the text of an unencrypted minisign secret key file.
pub fn parse_secret_key(text: &str) -> Result<minisign::SecretKey, BadSecretKey> {
    let bad = |e| BadSecretKey { source: Some(e) };
    let sk_box = minisign::SecretKeyBox::from_string(text).map_err(bad)?;
    let sk = sk_box.into_unencrypted_secret_key().map_err(bad)?;
    if sk.is_encrypted() {
        return Err(BadSecretKey { source: None });
    }
    Ok(sk)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::Config;

    /// A configuration whose `[signing] key_file` is a fresh key of `mode`.
    fn with_key(mode: u32) -> (tempfile::TempDir, std::path::PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let key = dir.path().join("key.sign");
        std::fs::write(&key, kp.sk.to_box(None).unwrap().into_string()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let text = format!(
            "[[repository]]\nname = \"local\"\nurl = \"/var/backups\"\n\n[signing]\nkey_file = \"{}\"\npublic_key = \"{}\"\n",
            key.display(),
            kp.pk.to_base64()
        );
        (dir, key, text)
    }

    #[test]
    fn a_key_file_only_its_owner_reads_is_loaded_and_its_path_kept() {
        let (dir, key, text) = with_key(0o600);
        let c = Config::from_toml(&text, &dir.path().join("c.toml")).unwrap();
        assert!(c.repositories[0].trust.signing_key.is_some());
        assert_eq!(c.signing_key_file, Some(key));
    }

    #[test]
    fn a_key_file_group_or_others_can_read_is_a_configuration_error_with_the_chmod() {
        let (dir, key, text) = with_key(0o644);
        let e = Config::from_toml(&text, &dir.path().join("c.toml")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("signing.key_file"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        assert!(
            e.message.contains("mode 0644")
                && e.message
                    .contains(&format!("`chmod 600 {}`", key.display())),
            "{e}"
        );
    }
}
