//! Readers stop where the signed manifest says: zstd bombs, oversized signatures and manifests, too many manifests.
