//! The facts sidecar (`data/<ID>/facts.json.zst.age`), read as `verify`
//! reads it: `pipeline::decode_all` (age, zstd, bounded to
//! `storage::MAX_SMALL_OBJECT`), then JSON into `model::facts::Facts`. The
//! first byte picks the layer the rest starts at (see the crate's docs);
//! at the plaintext layer the JSON is also parsed directly.
#![no_main]

use kompose_dr::model::facts::{Facts, SourceFacts};
use kompose_dr_fuzz::{Layer, identities, layer, stored};
use libfuzzer_sys::fuzz_target;

fn use_facts(f: &Facts) {
    // What verify looks at: the facts of each source, by name.
    for (name, s) in &f.sources {
        let _ = f.sources.get(name.as_str());
        match s {
            SourceFacts::Postgres { tables, .. } => {
                let _ = tables.values().fold(0u64, |a, b| a.saturating_add(*b));
            }
            SourceFacts::Redis {
                keys,
                volatile,
                counted_at,
            } => {
                let _ = (
                    keys.len(),
                    volatile.len(),
                    counted_at.map(|t| t.timestamp_millis()),
                );
            }
            SourceFacts::File { certificates } => {
                for c in certificates.iter().flatten() {
                    let _ = (&c.main, &c.domains, c.not_after);
                }
            }
            SourceFacts::Directory {
                files,
                bytes,
                sqlite,
            } => {
                let _ = (files.saturating_add(*bytes), sqlite.len());
            }
            SourceFacts::Config { files } => {
                for f in files {
                    let _ = (&f.path, &f.named_by, f.secret, f.mode, f.bytes, &f.sha256);
                }
            }
        }
    }
    let _ = serde_json::to_vec(f).expect("facts serialise");
}

fuzz_target!(|data: &[u8]| {
    let Some((layer, _, rest)) = layer(data) else {
        return;
    };
    if layer == Layer::Plain
        && let Ok(f) = serde_json::from_slice::<Facts>(rest)
    {
        use_facts(&f);
    }
    let archive = stored(layer, rest);
    let Ok(plain) = kompose_dr::pipeline::decode_all(&archive, identities()) else {
        assert_ne!(
            layer,
            Layer::Plain,
            "a sidecar the harness made does not decode"
        );
        return;
    };
    assert!(plain.len() as u64 <= kompose_dr::storage::MAX_SMALL_OBJECT);
    if layer == Layer::Plain {
        assert_eq!(plain, rest, "the sidecar decodes to other bytes");
    }
    if let Ok(f) = serde_json::from_slice::<Facts>(&plain) {
        use_facts(&f);
    }
});
