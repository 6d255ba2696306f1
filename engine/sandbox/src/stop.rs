//! Stopping a running interpreter without signals.
//!
//! wasmer's host interrupt (`experimental-host-interrupt`) sends SIGUSR1 to
//! the guest's thread and unwinds it from wherever it is, provided its stack
//! pointer is on the wasm stack, which includes wasmer's own libcalls and
//! glibc code they call. Measured here (gdb on a hung test binary, 4 hangs in
//! about 420 runs of `tests/sandbox.rs`): a pool worker was unwound while it
//! held glibc's `dl_load_lock`; the lock stayed held, and every thread
//! started afterwards blocked forever in `__cxa_thread_atexit_impl`. The CI
//! run hung that way.
//!
//! Instead the compiled interpreter checks for a stop request at points the
//! compiler chose: [`StopChecks`] puts a countdown at the head of every wasm
//! loop (and before every tail call), the only ways wasm code runs without
//! end (plain recursion ends at the stack limit). Every [`CHECK_EVERY`]
//! iterations the countdown calls the module's own `sched_yield` import,
//! which `instance.rs`'s `sched_yield` serves: it traps the guest, from a host function
//! and so through wasmer's ordinary error path, once the interpreter's stop
//! flag is set. A guest blocked in a host call (sleep, poll, read) is woken
//! by the WASIX SIGKILL instead (see `kill` in `lib.rs`).

use std::sync::Mutex;

use wasmer::sys::wasmparser::{BlockType, Operator};
use wasmer::sys::{FunctionMiddleware, MiddlewareError, MiddlewareReaderState, ModuleMiddleware};
use wasmer::{GlobalInit, GlobalType, LocalFunctionIndex, ModuleInfo, Mutability, Type};
use wasmer_types::entity::EntityRef;
use wasmer_types::ImportIndex;

/// Loop iterations between two looks at the stop flag. A host call costs
/// about 0.1 µs and a loop iteration of CPython's interpreter some 10 ns, so
/// checks cost under 0.1 % while a stop lands within about 0.1 ms.
pub(super) const CHECK_EVERY: i32 = 10_000;

/// The import the inserted checks call: WASI's `sched_yield`, `() -> errno`.
const HOOK_MODULE: &str = "wasi_snapshot_preview1";
const HOOK_FIELD: &str = "sched_yield";

/// Indices the inserted code refers to, found or made in `transform_module_info`.
#[derive(Clone, Copy, Debug)]
struct Targets {
    countdown_global: u32,
    hook_function: u32,
}

/// Module middleware inserting the stop checks; see the module docs.
#[derive(Debug, Default)]
pub(super) struct StopChecks {
    targets: Mutex<Option<Targets>>,
}

impl ModuleMiddleware for StopChecks {
    fn transform_module_info(&self, info: &mut ModuleInfo) -> Result<(), MiddlewareError> {
        let err = |msg: String| MiddlewareError::new("StopChecks", msg);
        let hook = info
            .imports
            .iter()
            .find(|(k, _)| k.module == HOOK_MODULE && k.field == HOOK_FIELD)
            .map(|(_, index)| index.clone());
        let hook_function = match hook {
            Some(ImportIndex::Function(f)) => f,
            _ => {
                return Err(err(format!(
                    "the interpreter does not import the function {HOOK_MODULE}.{HOOK_FIELD}, \
                     which the stop checks call"
                )))
            }
        };
        let signature = &info.signatures[info.functions[hook_function]];
        if !signature.params().is_empty() || signature.results() != [Type::I32] {
            return Err(err(format!(
                "{HOOK_MODULE}.{HOOK_FIELD} has type {signature}, expected [] -> [i32]"
            )));
        }
        let countdown = info
            .globals
            .push(GlobalType::new(Type::I32, Mutability::Var));
        info.global_initializers
            .push(GlobalInit::I32Const(CHECK_EVERY));
        *self.targets.lock().unwrap_or_else(|p| p.into_inner()) = Some(Targets {
            countdown_global: countdown.index() as u32,
            hook_function: hook_function.index() as u32,
        });
        Ok(())
    }

    fn generate_function_middleware<'a>(
        &self,
        _: LocalFunctionIndex,
    ) -> Box<dyn FunctionMiddleware<'a> + 'a> {
        let targets = *self.targets.lock().unwrap_or_else(|p| p.into_inner());
        Box::new(FunctionStopChecks { targets })
    }
}

#[derive(Debug)]
struct FunctionStopChecks {
    targets: Option<Targets>,
}

impl FunctionStopChecks {
    /// `countdown -= 1; if countdown == 0 { countdown = CHECK_EVERY; drop(hook()) }`
    fn check(t: Targets) -> [Operator<'static>; 12] {
        let g = t.countdown_global;
        [
            Operator::GlobalGet { global_index: g },
            Operator::I32Const { value: 1 },
            Operator::I32Sub,
            Operator::GlobalSet { global_index: g },
            Operator::GlobalGet { global_index: g },
            Operator::I32Eqz,
            Operator::If {
                blockty: BlockType::Empty,
            },
            Operator::I32Const { value: CHECK_EVERY },
            Operator::GlobalSet { global_index: g },
            Operator::Call {
                function_index: t.hook_function,
            },
            Operator::Drop,
            Operator::End,
        ]
    }
}

impl<'a> FunctionMiddleware<'a> for FunctionStopChecks {
    fn feed(
        &mut self,
        operator: Operator<'a>,
        state: &mut MiddlewareReaderState<'a>,
    ) -> Result<(), MiddlewareError> {
        let Some(t) = self.targets else {
            return Err(MiddlewareError::new(
                "StopChecks",
                "function compiled before the module was transformed",
            ));
        };
        match operator {
            // The check runs first in the loop's body, so on every iteration.
            Operator::Loop { .. } => {
                state.push_operator(operator);
                state.extend(Self::check(t));
            }
            Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => {
                state.extend(Self::check(t));
                state.push_operator(operator);
            }
            _ => state.push_operator(operator),
        }
        Ok(())
    }
}
