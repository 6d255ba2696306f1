//! The scratch directory's byte quota, and the errno a write past it gets.
//!
//! The in-memory filesystem reports a refused grow as `FsError::StorageFull`,
//! but wasix passes file writes through `std::io::Error`, whose conversion to
//! a WASI errno knows no "storage full" and answers `EIO`: the guest saw
//! `OSError: [Errno 29] I/O error`. Code that handles a full disk expects
//! `ENOSPC`, so the write calls are wrapped: an `EIO` that follows a refusal
//! of this quota becomes `ENOSPC` (`No space left on device`; WASI numbers it
//! 51, Linux 28: Python prints the guest's number).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use virtual_fs::limiter::FsMemoryLimiter;
use virtual_fs::FsError;
use wasmer::{Function, FunctionEnv, RuntimeError, StoreMut, Value};
use wasmer_wasix::types::wasi::Errno;

use super::instance::FixEnv;

/// The WASI calls through which a guest grows a scratch file.
pub(super) const GROWING_CALLS: [&str; 4] = [
    "fd_write",
    "fd_pwrite",
    "fd_filestat_set_size",
    "fd_allocate",
];

/// Byte quota of the scratch filesystem.
#[derive(Debug)]
pub(super) struct Quota {
    used: AtomicU64,
    limit: u64,
    /// Set when a grow was refused, taken by the call that reports it.
    refused: AtomicBool,
}

impl Quota {
    pub fn new(limit: u64) -> Arc<Quota> {
        Arc::new(Quota {
            used: AtomicU64::new(0),
            limit,
            refused: AtomicBool::new(false),
        })
    }

    /// Whether a grow was refused since the last look (and forgets it).
    fn take_refusal(&self) -> bool {
        self.refused.swap(false, Ordering::SeqCst)
    }
}

impl FsMemoryLimiter for Quota {
    fn on_grow(&self, grown: usize) -> Result<(), FsError> {
        // The buffer has already grown when this is called, and it keeps the
        // bytes after a refusal; counting them keeps `used` equal to what the
        // files hold, so the shrink when they are dropped does not wrap it.
        let new = self.used.fetch_add(grown as u64, Ordering::SeqCst) + grown as u64;
        if new > self.limit {
            self.refused.store(true, Ordering::SeqCst);
            return Err(FsError::StorageFull);
        }
        Ok(())
    }

    fn on_shrink(&self, shrunk: usize) {
        self.used.fetch_sub(shrunk as u64, Ordering::SeqCst);
    }
}

/// `original` wrapped so that an `EIO` caused by a refusal of the quota
/// reaches the guest as `ENOSPC`; every other result passes unchanged.
pub(super) fn reporting_full_as_nospc(
    store: &mut StoreMut,
    env: &FunctionEnv<FixEnv>,
    original: Function,
) -> Function {
    let ty = original.ty(store);
    Function::new_with_env(store, env, ty, move |mut env, args| {
        let quota = env.data().state.quota.clone();
        let mut results = original.call(&mut env, args)?.into_vec();
        let eio = Errno::Io as i32;
        if let [Value::I32(errno)] = results.as_mut_slice() {
            if *errno == eio && quota.take_refusal() {
                *errno = Errno::Nospc as i32;
            }
        }
        Ok::<_, RuntimeError>(results)
    })
}
