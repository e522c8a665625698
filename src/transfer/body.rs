//! A request body as a blocking [`Read`]: the async side (the HTTP handler, which owns the
//! body's stream) sends its chunks into a bounded channel, and the reading thread of an import
//! reads them as it parses. The channel holds a few chunks, so a body is never held whole, and a
//! slow import slows the upload (the handler stops reading the socket) instead of buffering it.
//!
//! With a spool (`--on-error abort`), every chunk read is also written to a temporary file, the
//! second pass's input once the check pass has found no bad row.

use std::fs::File;
use std::io::{BufWriter, Read, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunks of a body in flight between the handler and the reading thread.
pub const QUEUED_CHUNKS: usize = 16;

/// The reading end: a failure the sender reports (the body broke off, grew past its limit) is
/// returned as an I/O error, so the import stops instead of taking a cut body for a whole one.
pub struct ChannelReader {
    chunks: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    spool: Option<BufWriter<File>>,
}

impl ChannelReader {
    pub fn new(chunks: mpsc::Receiver<std::io::Result<Bytes>>) -> Self {
        ChannelReader {
            chunks,
            current: Bytes::new(),
            spool: None,
        }
    }

    /// Also copies everything read to `spool`.
    pub fn spooled(chunks: mpsc::Receiver<std::io::Result<Bytes>>, spool: File) -> Self {
        ChannelReader {
            spool: Some(BufWriter::with_capacity(256 * 1024, spool)),
            ..Self::new(chunks)
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => {
                    if let Some(spool) = self.spool.as_mut() {
                        spool.write_all(&chunk)?;
                    }
                    self.current = chunk;
                }
                Some(Err(e)) => return Err(e),
                None => {
                    if let Some(spool) = self.spool.as_mut() {
                        spool.flush()?;
                    }
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    #[test]
    fn reads_chunks_spools_them_and_reports_a_broken_body() {
        let (tx, rx) = mpsc::channel(4);
        let spool = tempfile::tempfile().unwrap();
        let mut copy = spool.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            ChannelReader::spooled(rx, spool)
                .read_to_string(&mut text)
                .map(|_| text)
        });
        tx.blocking_send(Ok(Bytes::from_static(b"a,b\n"))).unwrap();
        tx.blocking_send(Ok(Bytes::from_static(b"1,2\n"))).unwrap();
        drop(tx);
        assert_eq!(reader.join().unwrap().unwrap(), "a,b\n1,2\n");
        let mut spooled = String::new();
        copy.seek(SeekFrom::Start(0)).unwrap();
        copy.read_to_string(&mut spooled).unwrap();
        assert_eq!(spooled, "a,b\n1,2\n");

        let (tx, rx) = mpsc::channel(4);
        let reader =
            std::thread::spawn(move || ChannelReader::new(rx).read_to_end(&mut Vec::new()));
        tx.blocking_send(Ok(Bytes::from_static(b"a,b\n"))).unwrap();
        tx.blocking_send(Err(std::io::Error::other("cut"))).unwrap();
        assert!(reader.join().unwrap().is_err());
    }
}
