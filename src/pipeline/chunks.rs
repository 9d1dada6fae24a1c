//! A blocking [`Write`] that hands fixed-size pieces to a bounded channel.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::CHUNK;

/// Collects written bytes into pieces of [`CHUNK`] bytes and sends each
/// piece, blocking while the channel is full (backpressure). Use only from
/// blocking threads.
pub struct ChunkWriter<T> {
    tx: mpsc::Sender<T>,
    wrap: fn(Bytes) -> T,
    buf: BytesMut,
}

impl<T> ChunkWriter<T> {
    /// A writer sending `wrap(piece)` into `tx`.
    pub fn new(tx: mpsc::Sender<T>, wrap: fn(Bytes) -> T) -> Self {
        ChunkWriter {
            tx,
            wrap,
            buf: BytesMut::with_capacity(CHUNK),
        }
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, BytesMut::with_capacity(CHUNK)).freeze();
        self.tx.blocking_send((self.wrap)(piece)).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the next pipeline stage stopped")
        })
    }

    /// Sends what is buffered and ends the stream.
    pub fn close(mut self) -> io::Result<()> {
        self.send_buf()
    }
}

impl ChunkWriter<io::Result<Bytes>> {
    /// Ends the stream with an error, so the pipeline does not mistake a
    /// failed source for a complete one.
    pub fn fail(self, error: io::Error) {
        let _ = self.tx.blocking_send(Err(error));
    }
}

impl<T> Write for ChunkWriter<T> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
