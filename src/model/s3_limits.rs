//! S3's protocol limits on multipart uploads. Plain constants: the
//! configuration validates `part_size` against them and the S3 backend
//! (`storage::s3`, above this layer) enforces the part count.

/// S3 allows at most this many parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// The default part size: 16 MiB allows artifacts up to 156 GiB.
pub const DEFAULT_PART_SIZE: u64 = 16 * 1024 * 1024;

/// The largest object `part_size` allows: `part_size × MAX_PARTS`.
pub fn max_object_size(part_size: u64) -> u64 {
    part_size.saturating_mul(MAX_PARTS)
}
