//! A detached minisign signature (`<key>.minisig`) from the repository,
//! checked by `repository::signing::check` against the fuzz public key
//! before the marker or a manifest is parsed. The input is a flags byte
//! (bit 0: `allow_unsigned`, an unsigned document accepted; bit 1: the document is the seed manifest, else
//! the marker), a two-byte little-endian length, that many bytes of
//! signature, then the document.
#![no_main]

use kompose_dr::model::config::Trust;
use kompose_dr::repository::signing::{Signed, UnsignedRule, check};
use kompose_dr::storage::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [flags, n0, n1, rest @ ..] = data else {
        return;
    };
    let n = u16::from_le_bytes([*n0, *n1]) as usize;
    let (sig, body) = rest.split_at(n.min(rest.len()));
    let trust = Trust {
        public_key: Some(kompose_dr_fuzz::SIGNING_PUBLIC_KEY.to_owned()),
        signing_key: None,
        allow_unsigned: flags & 1 == 1,
        seen_dir: None,
    };
    let rule = if flags & 1 == 1 {
        UnsignedRule::Accept
    } else {
        UnsignedRule::RefuseSigned
    };
    let what = if flags & 2 == 0 {
        keys::MARKER.to_owned()
    } else {
        keys::manifest_key(kompose_dr_fuzz::SEED_SNAPSHOT)
    };
    // A signature that is there is checked whatever allow_unsigned says.
    match check(&trust, &what, body, Some(sig), rule) {
        Ok(Signed::Yes) | Err(_) => {}
        Ok(Signed::AllowedUnsigned) => panic!("a present signature was waved through"),
    }
});
