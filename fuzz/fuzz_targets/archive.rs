//! The archive reader of restore, verify and check:
//! `restore::stream::copy_archive` over a `VerifyingReader` (size and
//! sha256 against the manifest, age authentication, zstd checksums,
//! nothing after the frame). The first byte picks the layer the rest starts
//! at (see the crate's docs) and, in its bit 7, whether the manifest's size
//! and digest match the stored bytes. The output is bounded by the harness
//! (64 MiB), as a restore target's disk would be.
#![no_main]

use kompose_dr::model::manifest::{Artifact, ArtifactKind, ArtifactStatus};
use kompose_dr::restore::stream::{ReadError, VerifyingReader, copy_archive};
use kompose_dr_fuzz::{Bounded, Layer, identities, layer, stored};
use libfuzzer_sys::fuzz_target;
use sha2::Digest;

const OUTPUT_LIMIT: usize = 64 << 20;

fn artifact(stored: &[u8], honest: bool) -> Artifact {
    let sha = hex::encode(sha2::Sha256::digest(stored));
    Artifact {
        source: "files/plain".into(),
        kind: ArtifactKind::File,
        path: Some("data/20261128T220215Z-8f2f2b/files/plain.zst.age".into()),
        captured_at: None,
        // The bound the readers stop at: the harness keeps no more.
        plaintext_bytes: OUTPUT_LIMIT as u64,
        stored_bytes: if honest { stored.len() as u64 } else { 7 },
        sha256: Some(if honest { sha } else { "0".repeat(64) }),
        status: ArtifactStatus::Ok,
        error: None,
        tool_version: None,
        server_version: None,
        duration_seconds: 0.0,
        file: None,
        wal: None,
        downtime: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((layer, first, rest)) = layer(data) else {
        return;
    };
    let honest = first & 0x80 == 0;
    let archive = stored(layer, rest);
    let a = artifact(&archive, honest);
    let reader = VerifyingReader::new(&archive[..], &a, Box::new(|_| {}));
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
