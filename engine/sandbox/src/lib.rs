//! The Python sandbox: CPython 3.12 compiled to WASI, run in-process by
//! wasmer with hard limits. Each call is a fresh interpreter (stateless, as in
//! the paper); its only writable place is an in-memory scratch directory
//! (`/tmp`, the working directory) with a size quota, gone when the call ends.
//! No network (no networking backend is linked), no host filesystem, a clean
//! environment, and randomness from a seed unless host entropy is asked for.
//!
//! Limits and how they hold:
//! - wall clock: a deadline enforced from outside the guest: a stop flag
//!   that checks compiled into every loop of the interpreter read (tight
//!   loops; see `stop.rs`), and a SIGKILL to the WASIX process that wakes a
//!   guest blocked in a host call (`time.sleep`);
//! - memory: the engine's tunables cap every linear memory, so `memory.grow`
//!   fails and CPython raises `MemoryError`;
//! - output: captured up to a cap; the first byte past it stops the guest;
//! - scratch: the in-memory filesystem's limiter refuses writes past the
//!   quota, and the guest gets `ENOSPC` as from a full disk (`quota.rs`).
//!
//! See `docs/sandbox.md` for the measurements these choices rest on.

mod capture;
mod classify;
mod compile;
mod events;
mod instance;
mod memory_cap;
mod pool;
mod quota;
mod stop;

use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmer_wasix::types::wasi::Signal;

pub use classify::{exception_name, ErrorClass};
pub use compile::ModuleSource;
use events::{Event, Exit};
use pool::{BootParams, Pool, Ready};

/// Why the sandbox could not start or run a call (the code's own errors are outcomes, not these).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The interpreter file could not be read.
    #[error("cannot read the interpreter {path}: {source}")]
    Wasm {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The interpreter could not be compiled.
    #[error("compiling the interpreter failed: {0}")]
    Compile(String),
    /// An interpreter instance could not be created.
    #[error("starting an interpreter failed: {0}")]
    Instantiate(String),
    /// Limits out of range, explained.
    #[error("invalid sandbox limits: {0}")]
    Limits(String),
    /// The async runtime could not start.
    #[error("could not start the sandbox's async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Limits of one execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock limit of the code's run (start-up excluded).
    pub timeout: Duration,
    /// Linear-memory cap of the interpreter.
    pub memory_bytes: u64,
    /// Cap on each of stdout and stderr; output past it stops the run.
    pub output_bytes: usize,
    /// Quota of the scratch directory.
    pub scratch_bytes: u64,
    /// Seed of the guest's randomness (`os.urandom`, `random`).
    pub seed: u64,
    /// Give the guest the host's entropy instead of the seeded stream.
    pub host_entropy: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(4),
            memory_bytes: 256 << 20,
            output_bytes: 64 << 10,
            scratch_bytes: 16 << 20,
            seed: 0,
            host_entropy: false,
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<(), SandboxError> {
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(3600) {
            return Err(SandboxError::Limits(format!(
                "timeout must be in (0, 1 h], got {:?}",
                self.timeout
            )));
        }
        if self.memory_bytes < (32 << 20) || self.memory_bytes > (4u64 << 30) {
            return Err(SandboxError::Limits(format!(
                "memory_bytes must be between 32 MiB (CPython needs ~20 MiB to start) and 4 GiB, got {}",
                self.memory_bytes
            )));
        }
        if self.output_bytes == 0 {
            return Err(SandboxError::Limits(
                "output_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// How an execution ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Exit status 0.
    Ok,
    /// An uncaught exception or a non-zero exit; `exception` is the Python
    /// class name, or `exit status N` for `sys.exit(N)` / `os._exit(N)`.
    Error {
        /// Which kind of failure (syntax, name, type, ...).
        class: ErrorClass,
        /// The exception class name, or `exit status N`.
        exception: String,
    },
    /// Ran past its time limit.
    Timeout,
    /// Hit its memory cap.
    MemoryLimit,
    /// Wrote past its output cap.
    OutputLimit,
    /// The interpreter itself failed (a wasm trap).
    Crashed {
        /// The trap or runtime error.
        reason: String,
    },
}

impl Outcome {
    /// Whether the code ran to a zero exit.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// The result of one execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// Standard output (capped).
    pub stdout: String,
    /// Standard error (capped; tracebacks).
    pub stderr: String,
    /// Whether stdout hit the cap.
    pub stdout_truncated: bool,
    /// Whether stderr hit the cap.
    pub stderr_truncated: bool,
    /// The guest's exit status, when it exited by itself.
    pub exit_code: Option<i32>,
    /// Time from handing over the code to the end of the run.
    pub wall: Duration,
    /// How the run ended.
    pub outcome: Outcome,
}

/// How the sandbox is set up.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// `python.wasm` (the `python-wasm` asset).
    pub wasm: PathBuf,
    /// Where the compiled interpreter is cached.
    pub cache_dir: PathBuf,
    /// Interpreters kept warm (0 disables the pool: every call boots its own).
    pub warm: usize,
    /// Limits the warm interpreters are booted with; calls whose memory
    /// limit differs boot their own interpreter.
    pub limits: Limits,
}

impl SandboxConfig {
    /// Defaults for the interpreter at `wasm`, compiled once into
    /// `cache_dir`: one warm interpreter per core, default limits.
    pub fn new(wasm: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        SandboxConfig {
            wasm: wasm.into(),
            cache_dir: cache_dir.into(),
            warm: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            limits: Limits::default(),
        }
    }
}

/// The sandbox. Cheap to share (`&self` everywhere; `Send + Sync`).
pub struct Sandbox {
    shared: Arc<instance::Shared>,
    pool: Option<Arc<Pool>>,
    config: SandboxConfig,
    module_source: ModuleSource,
    load_time: Duration,
}

impl Sandbox {
    /// Compiles (or loads from the cache) the interpreter and starts the warm pool.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        config.limits.validate()?;
        let t0 = Instant::now();
        let wasm = std::fs::read(&config.wasm).map_err(|source| SandboxError::Wasm {
            path: config.wasm.clone(),
            source,
        })?;
        let engine = compile::engine();
        let (module, module_source) = compile::load_module(&engine, &wasm, &config.cache_dir)?;
        let load_time = t0.elapsed();
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cleaner-sandbox-io")
            .enable_time()
            .build()
            .map_err(SandboxError::Runtime)?;
        let shared = Arc::new(instance::Shared {
            engine,
            module,
            tokio,
        });
        let pool = (config.warm > 0)
            .then(|| Pool::start(shared.clone(), boot_params(&config.limits), config.warm));
        Ok(Sandbox {
            shared,
            pool,
            config,
            module_source,
            load_time,
        })
    }

    /// Whether the interpreter was compiled now or loaded from the cache, and
    /// how long that took.
    pub fn module_load(&self) -> (ModuleSource, Duration) {
        (self.module_source, self.load_time)
    }

    /// The set-up.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Runs `code` in a fresh interpreter under `limits`. Whatever the code
    /// does, the host process and later calls are unaffected.
    pub fn run(&self, code: &str, limits: &Limits) -> Result<Execution, SandboxError> {
        limits.validate()?;
        let ready = self.interpreter(limits)?;
        Ok(execute(ready, code, limits))
    }

    fn interpreter(&self, limits: &Limits) -> Result<Ready, SandboxError> {
        if let Some(pool) = &self.pool {
            if limits.memory_bytes == self.config.limits.memory_bytes
                && limits.scratch_bytes == self.config.limits.scratch_bytes
            {
                if let Some(r) = pool.take(Duration::from_secs(30)) {
                    return Ok(r);
                }
                log::warn!("no warm interpreter within 30 s; booting one for this call");
            }
        }
        pool::spawn_one(self.shared.clone(), boot_params(limits))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.shutdown();
        }
    }
}

fn boot_params(l: &Limits) -> BootParams {
    BootParams {
        memory_bytes: l.memory_bytes,
        scratch_bytes: l.scratch_bytes,
        output_cap: l.output_bytes,
    }
}

/// How long to wait for an interpreter to wind down after it was killed.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Feeds `code` to a ready interpreter and waits for it under the limits.
fn execute(ready: Ready, code: &str, limits: &Limits) -> Execution {
    let Ready {
        mut handles,
        reply,
        events,
    } = ready;
    if let Ok(mut e) = handles.hooks.entropy.lock() {
        e.set(limits.seed, limits.host_entropy);
    }
    handles.stdout.arm(limits.output_bytes, reply.clone());
    handles.stderr.arm(limits.output_bytes, reply);
    let t0 = Instant::now();
    use std::io::Write;
    let _ = handles.stdin.write_all(code.as_bytes());
    handles.stdin.close();

    let deadline = t0 + limits.timeout;
    let mut killed: Option<Outcome> = None;
    let exit = loop {
        let wait = match &killed {
            None => deadline.saturating_duration_since(Instant::now()),
            Some(_) => KILL_GRACE,
        };
        match events.recv_timeout(wait) {
            Ok(Event::Finished(exit)) => break Some(exit),
            Ok(Event::OutputOverflow) => {
                if killed.is_none() {
                    kill(&handles);
                    killed = Some(Outcome::OutputLimit);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if killed.is_some() {
                    // The interpreter ignored the kill: leave its thread
                    // behind rather than hang the caller.
                    log::error!(
                        "a sandboxed interpreter did not stop {KILL_GRACE:?} after being killed"
                    );
                    break None;
                }
                kill(&handles);
                killed = Some(Outcome::Timeout);
            }
            Err(RecvTimeoutError::Disconnected) => break None,
        }
    };
    let wall = t0.elapsed();
    let (out, out_trunc, _) = handles.stdout.take();
    let (err, err_trunc, _) = handles.stderr.take();
    let stdout = String::from_utf8_lossy(&out).into_owned();
    let stderr = classify::clean_traceback(&String::from_utf8_lossy(&err));
    let exit_code = match (&killed, &exit) {
        (None, Some(Exit::Code(c))) => Some(*c),
        _ => None,
    };
    let outcome = match (killed, exit) {
        (Some(o), _) => o,
        (None, None) => Outcome::Crashed {
            reason: "the interpreter thread ended without a result".into(),
        },
        (None, Some(Exit::Trap(reason))) => {
            if stderr.contains("MemoryError") {
                Outcome::MemoryLimit
            } else {
                Outcome::Crashed { reason }
            }
        }
        (None, Some(Exit::Code(0))) => Outcome::Ok,
        (None, Some(Exit::Code(code))) => match exception_name(&stderr) {
            Some(name) if name.ends_with("MemoryError") => Outcome::MemoryLimit,
            Some(name) => Outcome::Error {
                class: ErrorClass::of_exception(&name),
                exception: name,
            },
            None if stderr.contains("Fatal Python error") && stderr.contains("memory") => {
                Outcome::MemoryLimit
            }
            None => Outcome::Error {
                class: ErrorClass::Other,
                exception: format!("exit status {code}"),
            },
        },
    };
    Execution {
        stdout,
        stderr,
        stdout_truncated: out_trunc,
        stderr_truncated: err_trunc,
        exit_code,
        wall,
        outcome,
    }
}

/// Stops an interpreter: the stop flag traps running wasm at its next stop
/// check, the SIGKILL wakes a guest blocked in a host call (sleep, poll).
fn kill(h: &instance::Handles) {
    h.hooks
        .stop
        .store(true, std::sync::atomic::Ordering::Release);
    h.process.signal_process(Signal::Sigkill);
}
