//! Inflating beside the reader: a thread decompresses the archive while the caller parses
//! tar entries, hashes and writes them, so the two halves of a verify or a restore run on
//! two cores instead of one after the other. What is in flight is bounded (`DEPTH` pieces
//! of `PIECE` bytes); the caller's pieces go back to the thread to be filled again.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::Scope;

use flate2::read::MultiGzDecoder;

const PIECE: usize = 256 * 1024;
const DEPTH: usize = 4;

/// The plain bytes of a gzip stream that a thread inflates ahead of the reader.
pub(super) struct Inflated {
    full: Receiver<io::Result<Vec<u8>>>,
    empty: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
    done: bool,
}

/// Starts inflating `reader` on a thread of `scope`. The thread stops at the end of the
/// stream, at its first error (handed to the reader in order), or when the reader is
/// dropped.
pub(super) fn beside<'scope, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    reader: R,
) -> Inflated {
    let (filled, full) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    let (empty, emptied) = sync_channel::<Vec<u8>>(DEPTH + 2);
    scope.spawn(move || {
        let mut gz = MultiGzDecoder::new(reader);
        loop {
            let mut piece = emptied.try_recv().unwrap_or_default();
            piece.resize(PIECE, 0);
            let sent = match fill(&mut gz, &mut piece) {
                Ok(0) => return,
                Ok(n) => {
                    piece.truncate(n);
                    filled.send(Ok(piece))
                }
                Err(e) => {
                    let _ = filled.send(Err(e));
                    return;
                }
            };
            if sent.is_err() {
                return; // the reader is gone
            }
        }
    });
    Inflated {
        full,
        empty,
        current: Vec::new(),
        at: 0,
        done: false,
    }
}

/// Reads until `buf` is full or the stream ends; the number of bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Read for Inflated {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.full.recv() {
                Ok(Ok(piece)) => {
                    let used = std::mem::replace(&mut self.current, piece);
                    let _ = self.empty.try_send(used);
                    self.at = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The thread ended: the stream is over.
                Err(_) => self.done = true,
            }
        }
        let n = out.len().min(self.current.len() - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gives_back_every_byte_of_several_members_in_order() {
        let a: Vec<u8> = (0..700_000u32)
            .map(|i| (i * 7 % 251).to_le_bytes()[0])
            .collect();
        let b: Vec<u8> = (0..300_001u32).map(|i| (i % 13).to_le_bytes()[0]).collect();
        let mut stream = gz(&a);
        stream.extend(gz(&b));
        let mut got = Vec::new();
        std::thread::scope(|s| {
            let mut r = super::beside(s, stream.as_slice());
            let mut small = [0u8; 1000];
            loop {
                let n = r.read(&mut small).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&small[..n]);
            }
        });
        assert_eq!(got.len(), a.len() + b.len());
        assert!(got[..a.len()] == a[..] && got[a.len()..] == b[..]);
    }

    #[test]
    fn a_corrupt_stream_is_an_error_not_a_short_read() {
        let data: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i * 31 % 256).to_le_bytes()[0])
            .collect();
        let mut stream = gz(&data);
        let mid = stream.len() / 2;
        stream[mid] ^= 0xff;
        stream[mid + 1] ^= 0xff;
        let r = std::thread::scope(|s| {
            let mut out = Vec::new();
            super::beside(s, stream.as_slice()).read_to_end(&mut out)
        });
        assert!(
            r.is_err(),
            "read {r:?} bytes of a corrupt stream without an error"
        );
    }

    #[test]
    fn the_thread_stops_when_the_reader_is_dropped_early() {
        let data = vec![0u8; 20 << 20];
        let stream = gz(&data);
        std::thread::scope(|s| {
            let mut r = super::beside(s, stream.as_slice());
            let mut first = [0u8; 10];
            r.read_exact(&mut first).unwrap();
        }); // the scope returns only once the thread has ended
    }
}
