//! Guest stdout/stderr captured into memory up to a cap. Writes past the cap
//! are counted and dropped, and the first overflow is reported to whoever
//! waits on the execution, which then stops the interpreter: output is never
//! allowed to grow without bound.

use std::io::{self, IoSlice, SeekFrom};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use virtual_fs::{AsyncRead, AsyncSeek, AsyncWrite, VirtualFile};

use super::events::Event;

/// One captured stream.
#[derive(Debug, Default)]
pub(super) struct Capture {
    bytes: Mutex<Vec<u8>>,
    cap: AtomicUsize,
    total: AtomicU64,
    overflowed: AtomicBool,
    notify: Mutex<Option<Sender<Event>>>,
}

impl Capture {
    pub fn new(cap: usize) -> Arc<Self> {
        let c = Capture::default();
        c.cap.store(cap, Ordering::Relaxed);
        Arc::new(c)
    }

    /// Sets the cap and who is told about an overflow (at job delivery).
    pub fn arm(&self, cap: usize, notify: Sender<Event>) {
        self.cap.store(cap, Ordering::Relaxed);
        if let Ok(mut n) = self.notify.lock() {
            *n = Some(notify);
        }
    }

    fn append(&self, buf: &[u8]) {
        let cap = self.cap.load(Ordering::Relaxed);
        self.total.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if let Ok(mut bytes) = self.bytes.lock() {
            let room = cap.saturating_sub(bytes.len());
            bytes.extend_from_slice(&buf[..buf.len().min(room)]);
            if buf.len() > room && !self.overflowed.swap(true, Ordering::Relaxed) {
                if let Some(tx) = self.notify.lock().ok().and_then(|n| n.clone()) {
                    let _ = tx.send(Event::OutputOverflow);
                }
            }
        }
    }

    /// The captured bytes, whether anything was dropped, and the total size.
    pub fn take(&self) -> (Vec<u8>, bool, u64) {
        let bytes = self
            .bytes
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        (
            bytes,
            self.overflowed.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// The `VirtualFile` handed to the guest as fd 1 or 2.
#[derive(Debug)]
pub(super) struct CaptureFile(pub Arc<Capture>);

impl AsyncSeek for CaptureFile {
    fn start_seek(self: Pin<&mut Self>, _position: SeekFrom) -> io::Result<()> {
        Ok(())
    }
    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(0))
    }
}

impl AsyncWrite for CaptureFile {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.append(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut n = 0;
        for b in bufs {
            self.0.append(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
}

impl AsyncRead for CaptureFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl VirtualFile for CaptureFile {
    fn last_accessed(&self) -> u64 {
        0
    }
    fn last_modified(&self) -> u64 {
        0
    }
    fn created_time(&self) -> u64 {
        0
    }
    fn size(&self) -> u64 {
        0
    }
    fn set_len(&mut self, _new_size: u64) -> virtual_fs::Result<()> {
        Ok(())
    }
    fn unlink(&mut self) -> virtual_fs::Result<()> {
        Ok(())
    }
    fn poll_read_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(0))
    }
    fn poll_write_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(8192))
    }
}
