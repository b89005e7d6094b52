//! Gzip compression on every core: a byte stream cut into pieces of `PIECE` bytes, each
//! compressed on a worker thread as an independent gzip member and written in order.
//! Any gzip reader (GNU tar, `gzip -d`, flate2's `MultiGzDecoder`) reads the result as
//! one stream. Used for backups (`backup::archive`) and for directories packed for an
//! upload (`transport::transfer`). What is in flight is bounded: a few pieces per thread.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use flate2::Compression;
use flate2::write::GzEncoder;

/// The uncompressed size of one member.
pub(crate) const PIECE: usize = 1 << 20;

/// A writer that compresses in parallel into `W`; [`Parallel::finish`] gives `W` back.
pub(crate) struct Parallel<W: Write + Send + 'static> {
    buf: Vec<u8>,
    next: u64,
    jobs: Option<mpsc::SyncSender<(u64, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> Parallel<W> {
    /// `level`: gzip 1–9; `threads`: compression workers (at least one).
    pub(crate) fn new(out: W, level: u32, threads: usize) -> Parallel<W> {
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
                        let mut enc = GzEncoder::new(
                            Vec::with_capacity(data.len() / 3),
                            Compression::new(level),
                        );
                        let out = enc.write_all(&data).and_then(|()| enc.finish());
                        if tx.send((seq, out)).is_err() {
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
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    #[test]
    fn any_gzip_reader_reads_the_members_back_as_one_stream_in_order() {
        let len = u32::try_from(3 * super::PIECE + 12_345).expect("a test size");
        let data: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        let mut gz = super::Parallel::new(Vec::new(), 1, 3);
        for piece in data.chunks(70_001) {
            gz.write_all(piece).unwrap();
        }
        let packed = gz.finish().unwrap();
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
