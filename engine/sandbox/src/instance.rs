//! One interpreter: a fresh wasmer store, a WASIX environment whose only
//! filesystem is an in-memory scratch directory with a quota, captured stdio,
//! and import overrides (see [`ImportFixes`]). `boot` prepares it; `run`
//! executes `_start` on the calling thread, where CPython initializes and then
//! blocks reading its code from stdin.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use virtual_fs::{MountFileSystem, Pipe, TmpFileSystem};
use wasmer::{
    Function, FunctionEnv, FunctionEnvMut, Imports, Instance, Memory, Module, RuntimeError, Store,
};
use wasmer_wasix::runtime::InstantiationHook;
use wasmer_wasix::runtime::InstantiationState;
use wasmer_wasix::{
    PluggableRuntime, Runtime, WasiEnvBuilder, WasiError, WasiFunctionEnv, WasiProcess,
};

use super::capture::{Capture, CaptureFile};
use super::events::Exit;
use super::quota::{self, Quota};
use super::SandboxError;
use cleaner_kernels::rng::Rng;

/// The command line: `-S` skips `site` (nothing to find, 5-10 ms saved), `-B`
/// writes no bytecode. The bootstrap (one line, so its traceback frame is
/// always `line 1` and can be removed) moves to the scratch dir, reads the
/// code from stdin and runs it as `__main__` under the file name `<code>`.
/// It then leaves through `os._exit` after flushing, skipping interpreter
/// finalization (about 10 ms that nobody needs: the instance is discarded).
/// Uncaught exceptions go through `sys.excepthook`, which prints exactly
/// what an uncaught exception prints; `SystemExit` keeps its meaning.
pub(super) const BOOTSTRAP: &str = r#"import sys, os
def __run():
    os.chdir('/tmp'); src = sys.stdin.buffer.read(); code = 0
    try:
        exec(compile(src, '<code>', 'exec'), {'__name__': '__main__', '__builtins__': __builtins__})
    except SystemExit as e:
        c = e.code
        if c is None: code = 0
        elif isinstance(c, int): code = c & 0xff
        else: print(c, file=sys.stderr); code = 1
    except BaseException:
        sys.excepthook(*sys.exc_info()); code = 1
    for f in (sys.stdout, sys.stderr):
        try: f.flush()
        except BaseException: pass
    os._exit(code)
__run()
"#;

/// Randomness the guest sees: a seeded generator unless host entropy is asked.
#[derive(Debug)]
pub(super) struct Entropy {
    rng: Rng,
    host: bool,
}

impl Entropy {
    fn seeded(seed: u64, host: bool) -> Entropy {
        Entropy {
            rng: Rng::new(seed),
            host,
        }
    }

    pub fn set(&mut self, seed: u64, host: bool) {
        *self = Entropy::seeded(seed, host);
    }
}

/// Per-interpreter state shared by the host functions and the pool.
#[derive(Debug)]
pub(super) struct HookState {
    memory: Mutex<Option<Memory>>,
    pub entropy: Mutex<Entropy>,
    /// Set to stop the interpreter at its next stop check (see `stop.rs`).
    pub stop: AtomicBool,
    /// The scratch directory's quota (see `quota.rs`).
    pub quota: Arc<Quota>,
}

/// Import overrides, installed on every instance:
/// - `sched_yield`: the stop check (inserted by `stop.rs`; served below).
/// - `poll_oneoff`: wasix 0.704 blocks forever on a poll whose only
///   subscriptions are zero-timeout clocks, which `import selectors` (and so
///   socket, asyncio, subprocess) performs; such timeouts become 1 ns.
/// - `random_get`: served from a seeded generator so rollouts are
///   reproducible and the guest gets no host entropy unless asked.
/// - the calls that grow files: a write past the scratch quota fails with
///   `ENOSPC`, not `EIO` (see `quota.rs`).
#[derive(Debug)]
pub(super) struct ImportFixes {
    pub state: Arc<HookState>,
}

pub(super) struct FixEnv {
    pub state: Arc<HookState>,
    poll: Option<Function>,
    random: Option<Function>,
}

const WASI: &str = "wasi_snapshot_preview1";

impl InstantiationHook for ImportFixes {
    fn prepare_imports(
        &self,
        _module: &Module,
        store: &mut wasmer::StoreMut,
        imports: &mut Imports,
    ) -> anyhow::Result<InstantiationState> {
        let as_fn = |e: Option<wasmer::Extern>| match e {
            Some(wasmer::Extern::Function(f)) => Some(f),
            _ => None,
        };
        let poll = as_fn(imports.get_export(WASI, "poll_oneoff"));
        let random = as_fn(imports.get_export(WASI, "random_get"));
        let yields = imports.get_export(WASI, "sched_yield").is_some();
        let env = FunctionEnv::new(
            store,
            FixEnv {
                state: self.state.clone(),
                poll: poll.clone(),
                random: random.clone(),
            },
        );
        if poll.is_some() {
            imports.define(
                WASI,
                "poll_oneoff",
                Function::new_typed_with_env(store, &env, poll_oneoff),
            );
        }
        if yields {
            imports.define(
                WASI,
                "sched_yield",
                Function::new_typed_with_env(store, &env, sched_yield),
            );
        }
        if random.is_some() {
            imports.define(
                WASI,
                "random_get",
                Function::new_typed_with_env(store, &env, random_get),
            );
        }
        for name in quota::GROWING_CALLS {
            if let Some(original) = as_fn(imports.get_export(WASI, name)) {
                let wrapped = quota::reporting_full_as_nospc(store, &env, original);
                imports.define(WASI, name, wrapped);
            }
        }
        Ok(InstantiationState::empty())
    }

    fn configure_new_instance(
        &self,
        _module: &Module,
        _store: &mut wasmer::StoreMut,
        instance: &Instance,
        imported_memory: Option<&Memory>,
        _state: InstantiationState,
    ) -> anyhow::Result<()> {
        let memory = match imported_memory {
            Some(m) => m.clone(),
            None => instance.exports.get_memory("memory")?.clone(),
        };
        if let Ok(mut m) = self.state.memory.lock() {
            *m = Some(memory);
        }
        Ok(())
    }
}

/// Size of a WASI `subscription` and offsets of its clock fields.
const SUBSCRIPTION_SIZE: u64 = 48;
const TAG_OFFSET: u64 = 8;
const TIMEOUT_OFFSET: u64 = 24;
const FLAGS_OFFSET: u64 = 40;

fn poll_oneoff(
    mut env: FunctionEnvMut<FixEnv>,
    input: i32,
    out: i32,
    nsubs: i32,
    nevents: i32,
) -> Result<i32, RuntimeError> {
    let (state, poll) = {
        let d = env.data();
        (d.state.clone(), d.poll.clone())
    };
    let Some(poll) = poll else { return Ok(52) }; // ENOSYS
    let memory = state.memory.lock().ok().and_then(|m| m.clone());
    if let Some(memory) = memory {
        let view = memory.view(&env);
        for i in 0..nsubs.max(0) as u64 {
            let base = input as u32 as u64 + i * SUBSCRIPTION_SIZE;
            let mut tag = [0u8; 1];
            let mut timeout = [0u8; 8];
            let mut flags = [0u8; 2];
            if view.read(base + TAG_OFFSET, &mut tag).is_err()
                || view.read(base + TIMEOUT_OFFSET, &mut timeout).is_err()
                || view.read(base + FLAGS_OFFSET, &mut flags).is_err()
            {
                break;
            }
            // Clock subscription, relative (flags 0), timeout 0.
            if tag[0] == 0 && u64::from_le_bytes(timeout) == 0 && u16::from_le_bytes(flags) == 0 {
                let _ = view.write(base + TIMEOUT_OFFSET, &1u64.to_le_bytes());
            }
        }
    }
    let r = poll.call(
        &mut env,
        &[input.into(), out.into(), nsubs.into(), nevents.into()],
    )?;
    Ok(r.first().and_then(|v| v.i32()).unwrap_or(0))
}

fn random_get(mut env: FunctionEnvMut<FixEnv>, buf: i32, len: i32) -> Result<i32, RuntimeError> {
    let (state, random) = {
        let d = env.data();
        (d.state.clone(), d.random.clone())
    };
    let host = state.entropy.lock().map(|e| e.host).unwrap_or(false);
    if host {
        if let Some(f) = random {
            let r = f.call(&mut env, &[buf.into(), len.into()])?;
            return Ok(r.first().and_then(|v| v.i32()).unwrap_or(0));
        }
    }
    let mut bytes = vec![0u8; len.max(0) as usize];
    if let Ok(mut e) = state.entropy.lock() {
        for chunk in bytes.chunks_mut(8) {
            let v = e.rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    let memory = state.memory.lock().ok().and_then(|m| m.clone());
    match memory {
        Some(m) if m.view(&env).write(buf as u32 as u64, &bytes).is_ok() => Ok(0),
        _ => Ok(21), // EFAULT
    }
}

/// What the waiting side needs to feed and stop an interpreter.
pub(super) struct Handles {
    pub stdin: Pipe,
    pub process: WasiProcess,
    pub stdout: Arc<Capture>,
    pub stderr: Arc<Capture>,
    pub hooks: Arc<HookState>,
}

/// A prepared interpreter, ready to run on this thread.
pub(super) struct Interpreter {
    store: Store,
    instance: Instance,
    env: WasiFunctionEnv,
}

pub(super) struct Shared {
    pub engine: wasmer::Engine,
    pub module: Module,
    pub tokio: tokio::runtime::Runtime,
}

impl Interpreter {
    /// Instantiates a fresh interpreter (nothing runs yet).
    pub fn boot(
        shared: &Shared,
        scratch_bytes: u64,
        output_cap: usize,
    ) -> Result<(Interpreter, Handles), SandboxError> {
        let hooks = Arc::new(HookState {
            memory: Mutex::new(None),
            entropy: Mutex::new(Entropy::seeded(0, false)),
            stop: AtomicBool::new(false),
            quota: Quota::new(scratch_bytes),
        });
        let mut rt = PluggableRuntime::new(Arc::new(
            wasmer_wasix::runtime::task_manager::tokio::TokioTaskManager::new(
                shared.tokio.handle().clone(),
            ),
        ));
        rt.set_engine(shared.engine.clone());
        rt.with_instantiation_hook(ImportFixes {
            state: hooks.clone(),
        });
        let runtime: Arc<dyn Runtime + Send + Sync> = Arc::new(rt);

        let scratch = TmpFileSystem::new();
        scratch.set_memory_limiter(hooks.quota.clone());
        let root = MountFileSystem::new();
        root.mount("/tmp", Arc::new(scratch))
            .map_err(|e| SandboxError::Instantiate(format!("mounting /tmp: {e}")))?;

        let (stdin_tx, stdin_rx) = Pipe::channel();
        let stdout = Capture::new(output_cap);
        let stderr = Capture::new(output_cap);
        let builder = WasiEnvBuilder::new("python")
            .args(["-S", "-B", "-c", BOOTSTRAP])
            .envs([
                ("PYTHONHASHSEED", "0"),
                ("PYTHONDONTWRITEBYTECODE", "1"),
                ("PYTHONIOENCODING", "utf-8"),
                ("HOME", "/tmp"),
            ])
            .stdin(Box::new(stdin_rx))
            .stdout(Box::new(CaptureFile(stdout.clone())))
            .stderr(Box::new(CaptureFile(stderr.clone())))
            .runtime(runtime)
            .sandbox_fs(root)
            .preopen_build(|p| {
                p.directory("/")
                    .alias("/")
                    .read(true)
                    .write(true)
                    .create(true)
            })
            .map_err(|e| SandboxError::Instantiate(format!("preopening /: {e}")))?;
        let mut store = Store::new(shared.engine.clone());
        let (instance, env) = builder
            .instantiate(shared.module.clone(), &mut store)
            .map_err(|e| SandboxError::Instantiate(e.to_string()))?;
        let process = env.data(&store).process.clone();
        Ok((
            Interpreter {
                store,
                instance,
                env,
            },
            Handles {
                stdin: stdin_tx,
                process,
                stdout,
                stderr,
                hooks,
            },
        ))
    }

    /// Runs `_start` to the end on this thread, reports how it ended through
    /// `done`, and only then tears the instance down (off the caller's path).
    pub fn run(mut self, done: impl FnOnce(&Exit)) -> Exit {
        let exit = match self.instance.exports.get_function("_start") {
            Err(e) => Exit::Trap(format!("no _start: {e}")),
            Ok(start) => match start.call(&mut self.store, &[]) {
                Ok(_) => Exit::Code(0),
                Err(e) => match e.downcast::<WasiError>() {
                    Ok(WasiError::Exit(code)) => Exit::Code(code.raw()),
                    Ok(other) => Exit::Trap(other.to_string()),
                    Err(e) => Exit::Trap(e.message()),
                },
            },
        };
        done(&exit);
        let code = match &exit {
            Exit::Code(c) => wasmer_wasix::types::wasi::ExitCode::from(*c as u16),
            Exit::Trap(_) => wasmer_wasix::types::wasi::ExitCode::from(1u16),
        };
        self.env.on_exit(&mut self.store, Some(code));
        exit
    }
}

/// Serves `sched_yield`: for the stop checks, and for the guest's own calls,
/// where yielding in a one-thread guest is a no-op. Traps once the
/// interpreter was told to stop.
fn sched_yield(env: FunctionEnvMut<FixEnv>) -> Result<i32, RuntimeError> {
    if env.data().state.stop.load(Ordering::Acquire) {
        return Err(RuntimeError::new("stopped by the sandbox"));
    }
    Ok(0)
}
