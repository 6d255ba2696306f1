//! Warm interpreters. CPython's start-up (about 50 ms here) is paid by a
//! worker thread before any code is known: the worker instantiates a fresh
//! interpreter and starts it, CPython initializes and blocks reading its code
//! from stdin, and the interpreter waits in the ready queue. A call takes a
//! ready interpreter, writes the code, and waits. Every call still gets a
//! fresh interpreter (nothing carries over); only the wait moves off the
//! caller's path, into the time the agent spends generating.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::events::Event;
use super::instance::{Handles, Interpreter, Shared};
use super::memory_cap::set_thread_memory_cap;
use super::SandboxError;

/// An interpreter that is starting or blocked on stdin, with the channel its
/// result will come back on.
pub(super) struct Ready {
    pub handles: Handles,
    pub reply: Sender<Event>,
    pub events: Receiver<Event>,
}

pub(super) struct Pool {
    ready: Mutex<VecDeque<Ready>>,
    available: Condvar,
    shutdown: AtomicBool,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// Settings an interpreter is booted with.
#[derive(Clone, Copy, Debug)]
pub(super) struct BootParams {
    pub memory_bytes: u64,
    pub scratch_bytes: u64,
    pub output_cap: usize,
}

/// The longest a caller waits for a one-off interpreter to boot.
const BOOT_WAIT: Duration = Duration::from_secs(60);

/// Boots an interpreter on a new thread and runs it there; returns its
/// handles once instantiated. Used for one-off calls and by the workers.
pub(super) fn spawn_one(shared: Arc<Shared>, params: BootParams) -> Result<Ready, SandboxError> {
    let (tx, rx) = mpsc::channel();
    let (handles_tx, handles_rx) = mpsc::channel();
    let reply = tx.clone();
    std::thread::Builder::new()
        .name("cleaner-sandbox".into())
        .spawn(move || {
            let _rt = shared.tokio.enter();
            set_thread_memory_cap(params.memory_bytes);
            match Interpreter::boot(&shared, params.scratch_bytes, params.output_cap) {
                Ok((interp, handles)) => {
                    let _ = handles_tx.send(Ok(handles));
                    interp.run(|exit| {
                        let _ = reply.send(Event::Finished(exit.clone()));
                    });
                }
                Err(e) => {
                    let _ = handles_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| SandboxError::Instantiate(format!("cannot start a thread: {e}")))?;
    // Booting takes about 50 ms; a boot that never ends must not hang the caller.
    let handles = match handles_rx.recv_timeout(BOOT_WAIT) {
        Ok(h) => h?,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            return Err(SandboxError::Instantiate(format!(
                "no interpreter booted within {BOOT_WAIT:?}"
            )))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err(SandboxError::Instantiate(
                "interpreter thread died while booting".into(),
            ))
        }
    };
    Ok(Ready {
        handles,
        reply: tx,
        events: rx,
    })
}

impl Pool {
    /// Starts `size` workers, each keeping one interpreter warm.
    pub fn start(shared: Arc<Shared>, params: BootParams, size: usize) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            ready: Mutex::new(VecDeque::new()),
            available: Condvar::new(),
            shutdown: AtomicBool::new(false),
            workers: Mutex::new(Vec::new()),
        });
        for i in 0..size {
            let (pool2, shared2) = (pool.clone(), shared.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("cleaner-sandbox-{i}"))
                .spawn(move || pool2.worker(shared2, params));
            match spawned {
                Ok(h) => pool
                    .workers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(h),
                Err(e) => log::warn!("sandbox worker {i} could not start: {e}"),
            }
        }
        pool
    }

    fn worker(&self, shared: Arc<Shared>, params: BootParams) {
        let _rt = shared.tokio.enter();
        set_thread_memory_cap(params.memory_bytes);
        while !self.shutdown.load(Ordering::SeqCst) {
            let (interp, handles) =
                match Interpreter::boot(&shared, params.scratch_bytes, params.output_cap) {
                    Ok(x) => x,
                    Err(e) => {
                        log::error!("sandbox worker could not boot an interpreter: {e}");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
            let (tx, rx) = mpsc::channel();
            let reply = tx.clone();
            {
                // The shutdown flag is read and set under this lock, so no
                // interpreter is queued after `shutdown` drained the queue.
                let mut q = self.ready.lock().unwrap_or_else(|p| p.into_inner());
                if self.shutdown.load(Ordering::SeqCst) {
                    drop(q);
                    let mut handles = handles;
                    handles.stdin.close();
                    interp.run(|_| {});
                    break;
                }
                q.push_back(Ready {
                    handles,
                    reply: tx,
                    events: rx,
                });
            }
            self.available.notify_one();
            // Runs CPython's start-up now, then blocks until code arrives.
            interp.run(|exit| {
                let _ = reply.send(Event::Finished(exit.clone()));
            });
        }
    }

    /// Takes a warm interpreter, waiting for one if all are busy.
    pub fn take(&self, wait: Duration) -> Option<Ready> {
        let q = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        let (mut q, _) = self
            .available
            .wait_timeout_while(q, wait, |q| {
                q.is_empty() && !self.shutdown.load(Ordering::SeqCst)
            })
            .unwrap_or_else(|p| p.into_inner());
        q.pop_front()
    }

    /// Stops the workers: waiting interpreters get an empty program (EOF) and
    /// exit; their threads finish.
    pub fn shutdown(&self) {
        let drained: Vec<Ready> = {
            let mut q = self.ready.lock().unwrap_or_else(|p| p.into_inner());
            self.shutdown.store(true, Ordering::SeqCst);
            q.drain(..).collect()
        };
        self.available.notify_all();
        for mut r in drained {
            r.handles.stdin.close();
        }
        let workers: Vec<JoinHandle<()>> = self
            .workers
            .lock()
            .map(|mut w| w.drain(..).collect())
            .unwrap_or_default();
        for w in workers {
            // A worker blocked on stdin exits on the EOF sent above; one that
            // was booting sees the flag before queueing and exits too.
            let _ = w.join();
        }
    }
}
