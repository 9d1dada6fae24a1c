//! Key files with loose modes, S3 keys and leases planted by whoever can write to the store, and an init that fails half way.
