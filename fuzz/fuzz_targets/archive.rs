//! The archive reader of restore, verify and check:
//! `restore::stream::copy_archive` over a `VerifyingReader` (size and
//! sha256 against the manifest, age authentication, zstd checksums,
//! nothing after the frame). The first byte picks the layer the rest starts
//! at (see the crate's docs), in its bit 7 whether the manifest's size and
//! digests match the stored bytes, and in its bit 6 whether the archive is
//! read by pieces (`VerifyingReader::by_pieces`, 4 KiB pieces, each
//! checked before a byte of it goes on; a dishonest manifest then has the
//! right size and one wrong piece digest, which one chosen by the input's
//! length). The output is bounded by the harness
//! (64 MiB), as a restore target's disk would be.
#![no_main]

use kompose_dr::model::manifest::{Artifact, ArtifactKind, ArtifactStatus, Pieces};
use kompose_dr::pipeline::Expected;
use kompose_dr::restore::stream::{ReadError, VerifyingReader, copy_archive};
use kompose_dr_fuzz::{Bounded, Layer, identities, layer, stored};
use libfuzzer_sys::fuzz_target;
use sha2::Digest;

const OUTPUT_LIMIT: usize = 64 << 20;

/// The piece size read by pieces: the smallest a manifest may record, so
/// that small inputs span several.
const PIECE: usize = 4096;

fn artifact(stored: &[u8], honest: bool, by_pieces: bool, wrong: usize) -> Artifact {
    let sha = hex::encode(sha2::Sha256::digest(stored));
    let count = stored.len().div_ceil(PIECE).max(1);
    let digest = |(i, c): (usize, &[u8])| match honest || i != wrong % count {
        true => hex::encode(sha2::Sha256::digest(c)),
        false => "0".repeat(64),
    };
    let pieces = by_pieces.then(|| Pieces {
        bytes: PIECE as u64,
        sha256: stored.chunks(PIECE).enumerate().map(digest).collect(),
    });
    Artifact {
        source: "files/plain".into(),
        kind: ArtifactKind::File,
        path: Some("data/20261128T220215Z-8f2f2b/files/plain.zst.age".into()),
        captured_at: None,
        // Replaced by the reader's own bound (`with_plaintext` below).
        plaintext_bytes: OUTPUT_LIMIT as u64,
        stored_bytes: if honest || by_pieces {
            stored.len() as u64
        } else {
            7
        },
        sha256: Some(if honest { sha } else { "0".repeat(64) }),
        status: ArtifactStatus::Ok,
        error: None,
        tool_version: None,
        server_version: None,
        duration_seconds: 0.0,
        file: None,
        wal: None,
        downtime: None,
        pieces,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((layer, first, rest)) = layer(data) else {
        return;
    };
    let honest = first & 0x80 == 0;
    let by_pieces = first & 0x40 != 0;
    let archive = stored(layer, rest);
    let a = artifact(&archive, honest, by_pieces, rest.len());
    let reader = match by_pieces {
        true => VerifyingReader::by_pieces(&archive[..], &a, Box::new(|_| {}))
            .expect("the manifest records pieces"),
        false => VerifyingReader::new(&archive[..], &a, Box::new(|_| {})),
    };
    // The plaintext of an archive the harness made is known exactly, as a
    // manifest records it; of any other, only bounded.
    let reader = match (layer, honest) {
        (Layer::Plain, true) => reader.with_plaintext(Expected::Exactly(rest.len() as u64)),
        _ => reader.with_plaintext(Expected::AtMost(OUTPUT_LIMIT as u64)),
    };
    let keep = layer == Layer::Plain && rest.len() <= OUTPUT_LIMIT;
    let mut out = Bounded::new(OUTPUT_LIMIT, keep);
    let result = copy_archive(reader, identities(), &mut out);
    match (&result, layer, honest) {
        (Ok(n), _, true) => assert_eq!(*n, out.written, "bytes written miscounted"),
        (Ok(_), _, false) => panic!("an archive whose digest differs from the manifest's was read"),
        (Err(ReadError::Output(..)), _, _) => {}
        (Err(e), Layer::Plain, true) => panic!("an archive the harness made was refused: {e}"),
        (Err(_), _, _) => {}
    }
    if layer == Layer::Plain && honest {
        assert_eq!(out.data, rest, "the archive decodes to other bytes");
    }
});
