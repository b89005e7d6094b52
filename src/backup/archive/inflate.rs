//! Inflating beside the reader: threads decompress the archive while the caller parses
//! tar entries, hashes and writes them, so a verify or a restore runs on every core
//! instead of one after the other.
//!
//! An archive runbook wrote is a series of gzip members that each record their own length
//! (`crate::gzip`): one thread cuts the stream into members without inflating it, workers
//! inflate them side by side, and the reader takes them back in order. Any other gzip
//! stream (another tool's, an older runbook's, or the rest of a stream from its first
//! member that carries no length) is inflated in order on that one thread. What is in
//! flight is bounded: a few members per worker, each at most [`MEMBER_MAX`] compressed
//! and [`PLAIN_MAX`] inflated (a larger one is an error, not an allocation).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use flate2::bufread::{GzDecoder, MultiGzDecoder};

use crate::gzip;

/// Plain bytes per piece handed over when a stream is inflated in order.
const PIECE: usize = 256 * 1024;
/// The largest member with a length that is accepted: runbook writes `gzip::PIECE` of
/// input per member, which deflate never grows by more than a little.
const MEMBER_MAX: usize = 2 * gzip::PIECE + 4096;
/// The most one such member may inflate to.
const PLAIN_MAX: usize = 4 * gzip::PIECE;

type Piece = (u64, io::Result<Vec<u8>>);

/// The plain bytes of a gzip stream that threads inflate ahead of the reader.
pub(super) struct Inflated {
    done_rx: Receiver<Piece>,
    ahead: BTreeMap<u64, io::Result<Vec<u8>>>,
    want: u64,
    current: Vec<u8>,
    at: usize,
    done: bool,
}

/// Starts inflating `reader` on threads of `scope` (one per core). They stop at the end
/// of the stream, at its first error (handed to the reader in order), or when the reader
/// is dropped.
pub(super) fn beside<'scope, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    reader: R,
) -> Inflated {
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let (job_tx, job_rx) = sync_channel::<(u64, Vec<u8>)>(workers);
    let (done_tx, done_rx) = sync_channel::<Piece>(workers * 2);
    let job_rx = Arc::new(Mutex::new(job_rx));
    for _ in 0..workers {
        let rx = job_rx.clone();
        let tx = done_tx.clone();
        scope.spawn(move || {
            loop {
                let job = rx.lock().map(|r| r.recv());
                let Ok(Ok((seq, member))) = job else { return };
                if tx.send((seq, inflate_member(&member))).is_err() {
                    return; // the reader is gone
                }
            }
        });
    }
    scope.spawn(move || split(reader, &job_tx, &done_tx));
    Inflated {
        done_rx,
        ahead: BTreeMap::new(),
        want: 0,
        current: Vec::new(),
        at: 0,
        done: false,
    }
}

/// Cuts `reader` into members for the workers while they carry their length; from the
/// first one that does not, inflates the rest itself. Every piece, member or error takes
/// the next sequence number, so the reader sees them in stream order.
fn split(mut reader: impl Read, jobs: &SyncSender<(u64, Vec<u8>)>, done: &SyncSender<Piece>) {
    let mut seq = 0u64;
    loop {
        let mut member = vec![0u8; gzip::HEADER];
        let n = match fill(&mut reader, &mut member) {
            Ok(n) => n,
            Err(e) => {
                let _ = done.send((seq, Err(e)));
                return;
            }
        };
        if n == 0 {
            return; // the end, between two members
        }
        member.truncate(n);
        let Some(len) = gzip::indexed_len(&member) else {
            in_order(io::Cursor::new(member).chain(reader), seq, done);
            return;
        };
        let read = if (gzip::HEADER + 8..=MEMBER_MAX).contains(&len) {
            member.resize(len, 0);
            fill(&mut reader, &mut member[gzip::HEADER..]).and_then(|k| {
                if k + gzip::HEADER == len {
                    Ok(())
                } else {
                    Err(corrupt("the archive ends inside a gzip member"))
                }
            })
        } else {
            Err(corrupt(&format!(
                "a gzip member claims {len} bytes (at most {MEMBER_MAX} are written)"
            )))
        };
        let sent = match read {
            Ok(()) => jobs.send((seq, member)).is_ok(),
            Err(e) => {
                let _ = done.send((seq, Err(e)));
                false
            }
        };
        if !sent {
            return;
        }
        seq += 1;
    }
}

/// Inflates the rest of a stream in order, in pieces numbered from `seq`.
fn in_order(reader: impl Read, mut seq: u64, done: &SyncSender<Piece>) {
    let mut gz = MultiGzDecoder::new(io::BufReader::with_capacity(PIECE, reader));
    loop {
        let mut piece = vec![0u8; PIECE];
        let sent = match fill(&mut gz, &mut piece) {
            Ok(0) => return,
            Ok(n) => {
                piece.truncate(n);
                done.send((seq, Ok(piece)))
            }
            Err(e) => {
                let _ = done.send((seq, Err(e)));
                return;
            }
        };
        if sent.is_err() {
            return; // the reader is gone
        }
        seq += 1;
    }
}

/// One whole member: its plain bytes, checked against its CRC and size, and nothing may
/// follow inside the length its header gave.
fn inflate_member(member: &[u8]) -> io::Result<Vec<u8>> {
    let mut gz = GzDecoder::new(member);
    let mut plain = Vec::with_capacity(gzip::PIECE);
    (&mut gz)
        .take(PLAIN_MAX as u64 + 1)
        .read_to_end(&mut plain)?;
    if plain.len() > PLAIN_MAX {
        return Err(corrupt(&format!(
            "a gzip member inflates to more than {PLAIN_MAX} bytes"
        )));
    }
    if !gz.into_inner().is_empty() {
        return Err(corrupt("a gzip member is shorter than its header says"));
    }
    Ok(plain)
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
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

impl Inflated {
    /// The next piece in stream order, `None` at the end.
    fn next_piece(&mut self) -> Option<io::Result<Vec<u8>>> {
        loop {
            if let Some(p) = self.ahead.remove(&self.want) {
                self.want += 1;
                return Some(p);
            }
            match self.done_rx.recv() {
                Ok((seq, p)) => {
                    self.ahead.insert(seq, p);
                }
                // Every thread ended: the stream is over, unless a piece went missing.
                Err(_) if self.ahead.is_empty() => return None,
                Err(_) => return Some(Err(io::Error::other("an inflating thread stopped"))),
            }
        }
    }
}

impl Read for Inflated {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.next_piece() {
                Some(Ok(piece)) => {
                    self.current = piece;
                    self.at = 0;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => self.done = true,
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

    /// What `crate::gzip::Parallel` writes: members that carry their length.
    fn indexed(data: &[u8]) -> Vec<u8> {
        let mut gz = crate::gzip::Parallel::new(Vec::new(), 1, 2, false);
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn read_all(stream: &[u8]) -> std::io::Result<Vec<u8>> {
        std::thread::scope(|s| {
            let mut out = Vec::new();
            super::beside(s, stream).read_to_end(&mut out).map(|_| out)
        })
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11).to_le_bytes()[0] % 61)
            .collect()
    }

    #[test]
    fn members_that_carry_their_length_come_back_in_order_and_whole() {
        let data = sample(7 * crate::gzip::PIECE + 999);
        let stream = indexed(&data);
        let back = read_all(&stream).unwrap();
        assert!(back == data, "{} bytes back of {}", back.len(), data.len());
    }

    #[test]
    fn a_member_without_its_length_after_some_with_is_read_on_in_order() {
        let a = sample(3 * crate::gzip::PIECE + 5);
        let b: Vec<u8> = (0..300_001u32).map(|i| (i % 13) as u8).collect();
        let mut stream = indexed(&a);
        stream.extend(gz(&b));
        stream.extend(indexed(&a));
        let back = read_all(&stream).unwrap();
        assert_eq!(back.len(), 2 * a.len() + b.len());
        assert!(back[..a.len()] == a[..] && back[a.len()..a.len() + b.len()] == b[..]);
        assert!(back[a.len() + b.len()..] == a[..]);
    }

    #[test]
    fn a_wrong_length_a_cut_member_or_a_flipped_byte_is_an_error() {
        let data = sample(3 * crate::gzip::PIECE);
        let good = indexed(&data);
        let first = crate::gzip::indexed_len(&good).unwrap();
        let at = crate::gzip::HEADER - 4;
        let with_len = |len: u32| {
            let mut s = good.clone();
            s[at..at + 4].copy_from_slice(&len.to_le_bytes());
            s
        };
        let mut flipped = good.clone();
        flipped[first + first / 2] ^= 0x55;
        let cases = [
            (
                "length one short",
                with_len(u32::try_from(first - 1).unwrap()),
            ),
            (
                "length one long",
                with_len(u32::try_from(first + 1).unwrap()),
            ),
            ("length huge", with_len(u32::MAX)),
            ("length inside the header", with_len(3)),
            (
                "cut inside the last member",
                good[..good.len() - 3].to_vec(),
            ),
            ("a byte flipped in the second member", flipped),
        ];
        for (what, stream) in cases {
            let r = read_all(&stream);
            assert!(
                r.as_ref().is_err(),
                "{what}: read {} bytes without an error",
                r.map_or(0, |b| b.len())
            );
        }
    }

    #[test]
    fn a_bomb_behind_a_member_length_is_refused_not_inflated() {
        // A member that says it is small but inflates far beyond what runbook writes.
        let zeros = vec![0u8; 64 << 20];
        let mut bomb = Vec::new();
        {
            let mut e = flate2::GzBuilder::new()
                .extra([b'R', b'B', 4, 0, 0, 0, 0, 0])
                .write(&mut bomb, Compression::best());
            e.write_all(&zeros).unwrap();
            e.finish().unwrap();
        }
        let len = u32::try_from(bomb.len()).unwrap();
        let at = crate::gzip::HEADER - 4;
        bomb[at..at + 4].copy_from_slice(&len.to_le_bytes());
        let err = read_all(&bomb).unwrap_err();
        assert!(err.to_string().contains("inflates to more than"), "{err}");
    }

    #[test]
    fn the_threads_stop_when_the_reader_is_dropped_early_from_members_with_length() {
        let stream = indexed(&vec![0u8; 20 << 20]);
        std::thread::scope(|s| {
            let mut r = super::beside(s, stream.as_slice());
            let mut first = [0u8; 10];
            r.read_exact(&mut first).unwrap();
        });
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
