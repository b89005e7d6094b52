//! Gzip compression on every core: a byte stream cut into pieces of `PIECE` bytes, each
//! compressed on a worker thread as an independent gzip member and written in order.
//! Any gzip reader (GNU tar, `gzip -d`, flate2's `MultiGzDecoder`) reads the result as
//! one stream. Used for backups (`backup::archive`) and for directories packed for an
//! upload (`transport::transfer`). What is in flight is bounded: a few pieces per thread.
//!
//! Each member's header carries its own compressed length in an extra subfield (`RB`,
//! RFC 1952 section 2.3.1.1; readers that do not know it skip it), so a reader can cut
//! the stream into members without inflating it and inflate them on every core too
//! (`backup::archive::inflate`). [`indexed_len`] reads that length back.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// The uncompressed size of one member.
pub(crate) const PIECE: usize = 1 << 20;

/// The fixed part of a gzip header (RFC 1952 2.3): magic, method, flags, mtime, xfl, os.
pub(crate) const FIXED: usize = 10;
/// The header of a member this module writes: the fixed part, XLEN, and one subfield
/// (`R`, `B`, LEN = 4, the member's whole length in bytes, little-endian).
pub(crate) const HEADER: usize = FIXED + 2 + 8;
const FEXTRA: u8 = 0x04;
const SUBFIELD: [u8; 4] = [b'R', b'B', 4, 0];

/// The length of the whole member (header, deflate data and trailer) that `header`, its
/// first [`HEADER`] bytes, starts, when this module wrote it; `None` for any other gzip
/// member (another tool's, or an older runbook's), which a reader then inflates in order.
pub(crate) fn indexed_len(header: &[u8]) -> Option<usize> {
    let ours = header.len() >= HEADER
        && header[..3] == [0x1f, 0x8b, 8]
        && header[3] == FEXTRA
        && header[FIXED..FIXED + 2] == [8, 0]
        && header[FIXED + 2..FIXED + 6] == SUBFIELD;
    if !ours {
        return None;
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[FIXED + 6..HEADER]);
    usize::try_from(u32::from_le_bytes(len)).ok()
}

/// `data` as one gzip member whose header records the member's length. With `store`, each
/// [`BLOCK`] of it that looks incompressible (compressed or random bytes: images, archives,
/// keys) is stored rather than deflated, which costs nothing to undo and saves the time
/// deflate spends failing to shrink it — at the price of a little size (each switch ends a
/// deflate block: about 1% on the benchmark tree), so uploads use it and backups do not.
fn member(data: &[u8], level: u32, store: bool) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 3 + HEADER + 8 + SPARE);
    out.extend_from_slice(&[0x1f, 0x8b, 8, FEXTRA, 0, 0, 0, 0, 0, 3, 8, 0]);
    out.extend_from_slice(&SUBFIELD);
    out.extend_from_slice(&[0; 4]); // the length, set below
    let mut deflate = Compress::new(Compression::new(level), false);
    let mut stored = false;
    let mut crc = Crc::new();
    for block in data.chunks(BLOCK) {
        crc.update(block);
        let store = store && looks_incompressible(block);
        if store != stored {
            reserve(&mut out);
            let to = if store {
                Compression::none()
            } else {
                Compression::new(level)
            };
            // Can only fail for want of output space (reserved above); the block is then
            // compressed at the level in force, which is still correct.
            if deflate.set_level(to).is_ok() {
                stored = store;
            }
        }
        deflate_all(&mut deflate, block, &mut out, FlushCompress::None)?;
    }
    deflate_all(&mut deflate, &[], &mut out, FlushCompress::Finish)?;
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&crc.amount().to_le_bytes());
    let len = u32::try_from(out.len())
        .map_err(|_| io::Error::other("a gzip member over 4 GiB"))?
        .to_le_bytes();
    out[FIXED + 6..HEADER].copy_from_slice(&len);
    Ok(out)
}

/// How much of a piece is judged at a time, stored or deflated.
const BLOCK: usize = 16 * 1024;
/// Free output space kept for deflate (a level change flushes what is pending).
const SPARE: usize = 2 * BLOCK + 1024;

fn reserve(out: &mut Vec<u8>) {
    if out.capacity() - out.len() < SPARE {
        out.reserve(SPARE);
    }
}

/// Feeds all of `input` (and with `Finish`, ends the stream) into `out`.
fn deflate_all(
    deflate: &mut Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    flush: FlushCompress,
) -> io::Result<()> {
    loop {
        reserve(out);
        let (before, wrote) = (deflate.total_in(), out.len());
        let status = deflate
            .compress_vec(input, out, flush)
            .map_err(io::Error::other)?;
        let used = usize::try_from(deflate.total_in() - before).unwrap_or(input.len());
        if used == 0 && out.len() == wrote && status != Status::StreamEnd {
            return Err(io::Error::other("deflate made no progress"));
        }
        input = input.get(used..).unwrap_or_default();
        let finishing = matches!(flush, FlushCompress::Finish);
        match status {
            Status::StreamEnd => return Ok(()),
            Status::Ok | Status::BufError if input.is_empty() && !finishing => return Ok(()),
            Status::Ok | Status::BufError => {}
        }
    }
}

/// True when the bytes' order-0 entropy is so near 8 bits per byte that deflate would
/// not shrink them: compressed, encrypted or random data. Text and code are far below.
/// A block with more zero bytes than random data has (1 in 256) holds something deflate
/// does shrink — in a tar stream, the headers and padding between files — and is deflated.
fn looks_incompressible(block: &[u8]) -> bool {
    if block.len() < 4096 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in block {
        counts[usize::from(b)] += 1;
    }
    if usize::try_from(counts[0]).unwrap_or(usize::MAX) > block.len() / 100 {
        return false;
    }
    let n = f64::from(u32::try_from(block.len()).unwrap_or(u32::MAX));
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits > 7.8
}

/// A writer that compresses in parallel into `W`; [`Parallel::finish`] gives `W` back.
pub(crate) struct Parallel<W: Write + Send + 'static> {
    buf: Vec<u8>,
    next: u64,
    jobs: Option<mpsc::SyncSender<(u64, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> Parallel<W> {
    /// `level`: gzip 1–9; `threads`: compression workers (at least one); `store`: store
    /// the blocks that look incompressible (see [`member`]).
    pub(crate) fn new(out: W, level: u32, threads: usize, store: bool) -> Parallel<W> {
        let threads = threads.max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::sync_channel::<(u64, io::Result<Vec<u8>>)>(threads * 4);
        let workers = (0..threads)
            .map(|_| {
                let rx = job_rx.clone();
                let tx = done_tx.clone();
                std::thread::spawn(move || {
                    loop {
                        let job = rx.lock().map(|r| r.recv());
                        let Ok(Ok((seq, data))) = job else { break };
                        if tx.send((seq, member(&data, level, store))).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        drop(done_tx);
        let writer = std::thread::spawn(move || -> io::Result<W> {
            let mut out = BufWriter::with_capacity(PIECE, out);
            let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut want = 0;
            for (seq, data) in done_rx {
                pending.insert(seq, data?);
                while let Some(d) = pending.remove(&want) {
                    out.write_all(&d)?;
                    want += 1;
                }
            }
            out.into_inner().map_err(io::IntoInnerError::into_error)
        });
        Parallel {
            buf: Vec::with_capacity(PIECE),
            next: 0,
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        let seq = self.next;
        self.next += 1;
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("compressor closed"))?
            .send((seq, data))
            .map_err(|_| io::Error::other("a compression thread stopped (disk full?)"))
    }

    /// Compresses what is left, waits for every worker and returns the writer, or the
    /// first error writing to it.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.send()?;
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.writer
            .take()
            .ok_or_else(|| io::Error::other("writer gone"))?
            .join()
            .map_err(|_| io::Error::other("the compressed stream's writer panicked"))?
    }
}

impl<W: Write + Send + 'static> Write for Parallel<W> {
    /// Takes at most what fills the current piece, so that every member holds exactly
    /// `PIECE` bytes (the last fewer) and a reader can bound what one member inflates to.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    fn inflate(member: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(member)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    #[test]
    fn random_blocks_are_stored_and_text_is_deflated_in_one_member() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut noise = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        };
        let random: Vec<u8> = (0..super::PIECE / 8).flat_map(|_| noise()).collect();
        let text: Vec<u8> = (0..super::PIECE / 40)
            .flat_map(|i| format!("    return $this->user->order(${});\n", i % 977).into_bytes())
            .take(super::PIECE)
            .collect();
        let r = super::member(&random, 6, true).unwrap();
        let t = super::member(&text, 6, true).unwrap();
        // Stored: the input plus a few bytes per block; deflated: a fraction.
        assert!(
            r.len() < random.len() + 1024,
            "random: {} of {}",
            r.len(),
            random.len()
        );
        assert!(
            t.len() < text.len() / 4,
            "text: {} of {}",
            t.len(),
            text.len()
        );
        assert_eq!(super::indexed_len(&r), Some(r.len()));
        assert!(inflate(&r) == random && inflate(&t) == text);
        // Both kinds in one member, switching more than once.
        let mut mixed = text[..200_000].to_vec();
        mixed.extend_from_slice(&random[..300_000]);
        mixed.extend_from_slice(&text[..300_000]);
        mixed.extend_from_slice(&random[..5_000]);
        let m = super::member(&mixed, 1, true).unwrap();
        assert!(m.len() < 300_000 + 100_000 + 10_000, "mixed: {}", m.len());
        assert!(inflate(&m) == mixed);
    }

    #[test]
    fn any_gzip_reader_reads_the_members_back_as_one_stream_in_order() {
        let len = u32::try_from(3 * super::PIECE + 12_345).expect("a test size");
        let data: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        let mut gz = super::Parallel::new(Vec::new(), 1, 3, true);
        for piece in data.chunks(70_001) {
            gz.write_all(piece).unwrap();
        }
        let packed = gz.finish().unwrap();
        // Every member records its own length, and the lengths tile the stream exactly.
        let mut at = 0;
        let mut members = 0;
        while at < packed.len() {
            let len = super::indexed_len(&packed[at..]).expect("a member without its length");
            at += len;
            members += 1;
        }
        assert_eq!((at, members), (packed.len(), 4));
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(packed.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data, "{} bytes back of {}", back.len(), data.len());
        let mut gzip = std::process::Command::new("gzip")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = gzip.stdin.take().unwrap();
        let feed = std::thread::spawn(move || stdin.write_all(&packed));
        let out = gzip.wait_with_output().unwrap();
        feed.join().unwrap().unwrap();
        assert!(
            out.status.success() && out.stdout == data,
            "gzip -d read it differently"
        );
    }
}
