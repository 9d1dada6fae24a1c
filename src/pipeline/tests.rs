//! Unit tests of the byte pipeline: any input round-trips through zstd and
//! age and damage is detected (proptest), the archive is plain age of zstd
//! with frame checksums, a failing sink does not stop the others, and a
//! source error aborts everything.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use proptest::prelude::*;

use super::*;

/// A sink that keeps what it is given in memory, visible on finish.
#[derive(Clone, Default)]
struct MemSink {
    written: Arc<Mutex<Vec<u8>>>,
    committed: Arc<Mutex<Option<Vec<u8>>>>,
    fail_after: Option<usize>,
}

#[async_trait]
impl ObjectWriter for MemSink {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let mut w = self.written.lock().unwrap();
        if self.fail_after.is_some_and(|n| w.len() + chunk.len() > n) {
            return Err(StorageError::Io {
                op: "write",
                location: "mem".into(),
                source: io::Error::other("disk full"),
            });
        }
        w.extend_from_slice(&chunk);
        Ok(())
    }
    async fn finish(self: Box<Self>) -> Result<(), StorageError> {
        *self.committed.lock().unwrap() = Some(self.written.lock().unwrap().clone());
        Ok(())
    }
    async fn abort(self: Box<Self>) {}
}

fn key() -> (age::x25519::Identity, EncodeSettings) {
    let id = age::x25519::Identity::generate();
    let s = EncodeSettings {
        level: 3,
        recipients: vec![id.to_public()],
    };
    (id, s)
}

fn ids(id: &age::x25519::Identity) -> Vec<Box<dyn age::Identity + Send + Sync>> {
    vec![Box::new(id.clone())]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn store(
    data: Vec<u8>,
    settings: &EncodeSettings,
    sinks: Vec<MemSink>,
) -> Result<Encoded, PipelineError> {
    let boxed = sinks
        .into_iter()
        .map(|s| SinkState::Open(Box::new(s)))
        .collect();
    encode(input_from_bytes(Bytes::from(data)), settings, boxed, false).await
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_bytes_round_trip_and_damage_is_detected(
        data in prop::collection::vec(any::<u8>(), 0..(3 * CHUNK)),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        let (id, settings) = key();
        let sink = MemSink::default();
        let enc = rt().block_on(async {
            let e = store(data.clone(), &settings, vec![sink.clone()]).await.unwrap();
            let info = (e.plaintext_bytes, e.stored_bytes, e.sha256.clone());
            assert!(e.commit().await.iter().all(|r| r.is_ok()));
            info
        });
        let stored = sink.committed.lock().unwrap().clone().unwrap();
        prop_assert_eq!(enc.0, data.len() as u64);
        prop_assert_eq!(enc.1, stored.len() as u64);
        prop_assert_eq!(&enc.2, &hex::encode(Sha256::digest(&stored)));
        prop_assert_eq!(decode_all(&stored, &ids(&id)).unwrap(), data.clone());

        // A flipped bit anywhere is caught by age (and changes the sha256).
        let mut bad = stored.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(decode_all(&bad, &ids(&id)).is_err());
        prop_assert_ne!(hex::encode(Sha256::digest(&bad)), enc.2.clone());

        // So is any truncation.
        let n = cut.index(stored.len());
        prop_assert!(decode_all(&stored[..n], &ids(&id)).is_err());
    }
}

#[test]
fn the_archive_is_age_of_zstd_with_checksums() {
    let (id, settings) = key();
    let sink = MemSink::default();
    rt().block_on(async {
        let e = store(b"hello".repeat(1000), &settings, vec![sink.clone()])
            .await
            .unwrap();
        e.commit().await;
    });
    let stored = sink.committed.lock().unwrap().clone().unwrap();
    assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    let mut zst = Vec::new();
    age::Decryptor::new(&stored[..])
        .unwrap()
        .decrypt(ids(&id).iter().map(|i| i.as_ref() as &dyn age::Identity))
        .unwrap()
        .read_to_end(&mut zst)
        .unwrap();
    assert_eq!(&zst[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    // Frame header descriptor: bit 2 = content checksum flag.
    assert_ne!(zst[4] & 0b100, 0, "zstd frame checksum on");
}

#[test]
fn a_failing_sink_does_not_stop_the_others() {
    let (id, settings) = key();
    let good = MemSink::default();
    let bad = MemSink {
        fail_after: Some(1000),
        ..Default::default()
    };
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let results = rt().block_on(async {
        let e = store(data.clone(), &settings, vec![bad.clone(), good.clone()])
            .await
            .unwrap();
        e.commit().await
    });
    assert!(results[0].is_err());
    assert!(results[1].is_ok());
    let stored = good.committed.lock().unwrap().clone().unwrap();
    assert_eq!(decode_all(&stored, &ids(&id)).unwrap(), data);
    assert!(bad.committed.lock().unwrap().is_none());
}

#[test]
fn a_source_error_aborts_everything() {
    let (_id, settings) = key();
    let sink = MemSink::default();
    let err = rt().block_on(async {
        let (tx, rx) = mpsc::channel(DEPTH);
        tx.send(Ok(Bytes::from_static(b"partial"))).await.unwrap();
        tx.send(Err(io::Error::other("pg_dump died")))
            .await
            .unwrap();
        drop(tx);
        let sinks = vec![SinkState::Open(Box::new(sink.clone()))];
        encode(rx, &settings, sinks, false).await.err().unwrap()
    });
    assert!(matches!(err, PipelineError::Source(_)), "{err}");
    assert!(sink.committed.lock().unwrap().is_none());
}

#[test]
fn a_small_archive_that_decompresses_past_the_limit_is_refused() {
    let (id, settings) = key();
    let sink = MemSink::default();
    let zeros = vec![0u8; (crate::storage::MAX_SMALL_OBJECT + 1) as usize];
    rt().block_on(async {
        let e = store(zeros, &settings, vec![sink.clone()]).await.unwrap();
        e.commit().await
    });
    let stored = sink.committed.lock().unwrap().clone().unwrap();
    assert!(stored.len() < 1 << 20, "zeros compress: {}", stored.len());
    let e = decode_all(&stored, &ids(&id)).unwrap_err();
    assert!(e.to_string().contains("decompresses to more than"), "{e}");
}

#[test]
fn the_pieces_digests_do_not_depend_on_how_the_bytes_arrive() {
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let want: Vec<String> = data
        .chunks(4096)
        .map(|c| hex::encode(Sha256::digest(c)))
        .collect();
    for step in [1, 7, 4096, 4097, 50_000] {
        let mut h = PieceHasher::new(4096);
        for c in data.chunks(step) {
            h.update(c);
        }
        let p = h.finish().unwrap();
        assert_eq!(p.bytes, 4096);
        assert_eq!(p.sha256, want, "arriving {step} at a time");
    }
    // An exact multiple has no empty last piece.
    let mut h = PieceHasher::new(4096);
    h.update(&data[..8192]);
    assert_eq!(h.finish().unwrap().sha256.len(), 2);
    // Past the most a manifest records: none.
    let mut h = PieceHasher::new(4096);
    h.update(&vec![0u8; 4096 * (Pieces::MAX + 1)]);
    assert!(h.finish().is_none());
}
