//! The compiled interpreter: a wasmer engine whose memories are capped, and
//! `python.wasm` compiled once with Cranelift and the stop checks
//! (`stop.rs`; about 5 s here) and cached on disk. The cache entry is keyed
//! by the wasm's hash, the wasmer version, the version of the inserted
//! checks, the engine's compiler/target identity and the CPU's features, and
//! carries a checksum of its payload: `Module::deserialize` trusts its input,
//! so a stale or corrupt entry is detected first and rebuilt, never loaded.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmer::sys::{BaseTunables, CompilerConfig, Cranelift, NativeEngineExt};
use wasmer::{Engine, Module};

use super::memory_cap::CappedMemory;
use super::stop::StopChecks;
use super::SandboxError;

const WASMER_VERSION: &str = "7.4.2";
/// Changes whenever the code inserted into the module changes, so that no
/// cache entry compiled without (or with other) checks is ever loaded.
const INSTRUMENTATION: &str = "stop-checks v1";
const CACHE_MAGIC: &[u8] = b"CLEANER-WASMER-MODULE v1\n";

/// A Cranelift engine with capped memories that inserts the stop checks.
pub(super) fn engine() -> Engine {
    let mut compiler = Cranelift::default();
    compiler.push_middleware(Arc::new(StopChecks::default()));
    let mut engine: Engine = compiler.into();
    engine.set_tunables(CappedMemory::new(BaseTunables::new()));
    engine
}

/// How the module was obtained, for the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleSource {
    /// Compiled now.
    Compiled,
    /// Loaded from the on-disk cache.
    Cache,
}

fn cpu_features() -> String {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($name) { f.push($name); }
            )*};
        }
        probe!(
            "sse2", "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "bmi1", "bmi2",
            "fma", "lzcnt", "avx512f"
        );
    }
    format!("{}-{}", std::env::consts::ARCH, f.join(","))
}

/// The cache key of `wasm` compiled by `engine` on this CPU.
fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(wasm);
    h.update(WASMER_VERSION.as_bytes());
    h.update(INSTRUMENTATION.as_bytes());
    h.update(engine.deterministic_id().as_bytes());
    h.update(cpu_features().as_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads the compiled module from `cache_dir`, or compiles and caches it.
pub(super) fn load_module(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: &Path,
) -> Result<(Module, ModuleSource), SandboxError> {
    let key = cache_key(engine, wasm);
    let path = cache_dir.join(format!("python-{key}.wasmer"));
    if let Some(module) = read_cached(engine, &path) {
        return Ok((module, ModuleSource::Cache));
    }
    let module = Module::new(engine, wasm).map_err(|e| SandboxError::Compile(e.to_string()))?;
    // A failure to write the cache costs only the next start's compile time.
    if let Err(e) = write_cached(&module, &path) {
        log::warn!(
            "could not cache the compiled interpreter at {}: {e}",
            path.display()
        );
    }
    Ok((module, ModuleSource::Compiled))
}

fn read_cached(engine: &Engine, path: &Path) -> Option<Module> {
    let bytes = fs::read(path).ok()?;
    let rest = bytes.strip_prefix(CACHE_MAGIC)?;
    if rest.len() < 32 {
        log::warn!("{}: truncated cache entry; recompiling", path.display());
        return None;
    }
    let (sum, payload) = rest.split_at(32);
    if Sha256::digest(payload).as_slice() != sum {
        log::warn!(
            "{}: cache entry fails its checksum; recompiling",
            path.display()
        );
        return None;
    }
    // SAFETY: the payload is byte-for-byte what `Module::serialize` wrote for
    // this wasm, wasmer version, compiler and CPU (all in the file name's key),
    // as the checksum above proves; wasmer's own header checks run as well.
    match unsafe { Module::deserialize(engine, payload.to_vec()) } {
        Ok(m) => Some(m),
        Err(e) => {
            log::warn!(
                "{}: cache entry rejected by wasmer ({e}); recompiling",
                path.display()
            );
            None
        }
    }
}

fn write_cached(module: &Module, path: &Path) -> Result<(), String> {
    let payload = module.serialize().map_err(|e| e.to_string())?;
    let dir = path.parent().ok_or("cache path has no parent")?;
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp: PathBuf = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module")
    ));
    let mut data = Vec::with_capacity(CACHE_MAGIC.len() + 32 + payload.len());
    data.extend_from_slice(CACHE_MAGIC);
    data.extend_from_slice(&Sha256::digest(&payload));
    data.extend_from_slice(&payload);
    fs::write(&tmp, &data).map_err(|e| e.to_string())?;
    fs::rename(&tmp, path).map_err(|e| e.to_string())
}
