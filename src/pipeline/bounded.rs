//! A reader that stops where a size recorded elsewhere says the data ends.
//!
//! The sizes come from the signed manifest (`stored_bytes`,
//! `plaintext_bytes`): a repository is untrusted input, and an archive
//! replaced by a zstd bomb must not fill a disk before the sha256 at its end
//! is reached. [`Bounded`] refuses the first byte past the limit — it never
//! hands it on — and, for an exact size, a stream that ends short.

use std::io::{self, Read};

/// How many bytes a stream must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Exactly this many: more is refused as soon as it arrives, fewer at
    /// the end of the stream.
    Exactly(u64),
    /// At most this many (when nothing records the exact size).
    AtMost(u64),
}

impl Expected {
    /// The most bytes the stream may hold.
    pub fn limit(self) -> u64 {
        match self {
            Expected::Exactly(n) | Expected::AtMost(n) => n,
        }
    }
}

/// Why a stream does not hold what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// More bytes arrived than the limit; reading stopped at the limit.
    #[error("more than {limit} bytes")]
    TooLong {
        /// The limit.
        limit: u64,
    },
    /// The stream ended before the exact size.
    #[error("{got} bytes instead of {expected}")]
    TooShort {
        /// Bytes the stream held.
        got: u64,
        /// Bytes expected.
        expected: u64,
    },
}

impl SizeError {
    /// The size error an [`io::Error`] from a [`Bounded`] carries, if it is
    /// one.
    pub fn of(e: &io::Error) -> Option<SizeError> {
        e.get_ref()?.downcast_ref::<SizeError>().copied()
    }
}

impl From<SizeError> for io::Error {
    fn from(e: SizeError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Reads through `inner`, counting; an error (kind `InvalidData`, carrying
/// a [`SizeError`]) as soon as more than the limit arrives — the bytes up
/// to the limit are handed on, none past it — and at the end if an exact
/// size was not reached. The error is sticky: every later read returns it
/// again.
pub struct Bounded<R> {
    inner: R,
    expected: Expected,
    read: u64,
    failed: Option<SizeError>,
}

impl<R> Bounded<R> {
    /// Wraps `inner`, which must hold `expected` bytes.
    pub fn new(inner: R, expected: Expected) -> Bounded<R> {
        Bounded {
            inner,
            expected,
            read: 0,
            failed: None,
        }
    }

    /// Bytes handed on so far (never more than the limit).
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// What the stream must hold.
    pub fn expected(&self) -> Expected {
        self.expected
    }

    /// The size error that stopped the stream, if one did.
    pub fn failure(&self) -> Option<SizeError> {
        self.failed
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn fail(&mut self, e: SizeError) -> io::Error {
        self.failed = Some(e);
        e.into()
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.failed {
            return Err(e.into());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let limit = self.expected.limit();
        // One byte past the limit is enough to know there is more.
        let room = limit.saturating_sub(self.read).saturating_add(1);
        let want = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            if let Expected::Exactly(expected) = self.expected
                && self.read < expected
            {
                let got = self.read;
                return Err(self.fail(SizeError::TooShort { got, expected }));
            }
            return Ok(0);
        }
        if self.read + n as u64 > limit {
            // Hand on what fits; the next read (or this one, if nothing
            // fits) is the error.
            let fits = (limit - self.read) as usize;
            let e = self.fail(SizeError::TooLong { limit });
            if fits == 0 {
                return Err(e);
            }
            self.read = limit;
            return Ok(fits);
        }
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut impl Read) -> (Vec<u8>, io::Result<()>) {
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return (out, Ok(())),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Err(e)),
            }
        }
    }

    #[test]
    fn exactly_the_size_reads_through() {
        let mut r = Bounded::new(&b"hello world"[..], Expected::Exactly(11));
        let (out, end) = drain(&mut r);
        assert_eq!(out, b"hello world");
        end.unwrap();
        assert_eq!(r.bytes_read(), 11);
        assert!(r.failure().is_none());
    }

    #[test]
    fn a_longer_stream_stops_at_the_limit_and_never_hands_on_more() {
        let data = vec![0u8; 1 << 20];
        let mut r = Bounded::new(&data[..], Expected::Exactly(10));
        let (out, end) = drain(&mut r);
        assert_eq!(out.len(), 10, "nothing past the limit is handed on");
        let e = end.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(SizeError::of(&e), Some(SizeError::TooLong { limit: 10 }));
        // Sticky.
        let again = r.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(
            SizeError::of(&again),
            Some(SizeError::TooLong { limit: 10 })
        );
        assert_eq!(r.failure(), Some(SizeError::TooLong { limit: 10 }));
    }

    #[test]
    fn a_long_stream_is_read_no_further_than_one_byte_past_the_limit() {
        struct Counting<'a>(&'a [u8], usize);
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1 += n;
                Ok(n)
            }
        }
        let data = vec![1u8; 1 << 20];
        let mut inner = Counting(&data, 0);
        let mut r = Bounded::new(&mut inner, Expected::AtMost(100));
        let mut big = vec![0u8; 1 << 16];
        let mut total = 0;
        let err = loop {
            match r.read(&mut big) {
                Ok(n) => total += n,
                Err(e) => break e,
            }
        };
        assert_eq!(total, 100);
        assert!(SizeError::of(&err).is_some());
        assert_eq!(inner.1, 101);
    }

    #[test]
    fn a_short_stream_fails_at_its_end_only_for_an_exact_size() {
        let mut r = Bounded::new(&b"abc"[..], Expected::Exactly(5));
        let (out, end) = drain(&mut r);
        assert_eq!(out, b"abc");
        assert_eq!(
            SizeError::of(&end.unwrap_err()),
            Some(SizeError::TooShort {
                got: 3,
                expected: 5
            })
        );
        let mut r = Bounded::new(&b"abc"[..], Expected::AtMost(5));
        let (out, end) = drain(&mut r);
        assert_eq!(out, b"abc");
        end.unwrap();
    }

    #[test]
    fn other_errors_are_not_size_errors_and_empty_reads_are_not_the_end() {
        let mut r = Bounded::new(&b""[..], Expected::Exactly(1));
        assert_eq!(r.read(&mut []).unwrap(), 0);
        assert!(r.failure().is_none());
        assert!(SizeError::of(&io::Error::other("disk")).is_none());
    }
}
