//! Shared by the agreement tests: tiny models of each family re-encoded in
//! each quantized type with ggml's own quantizer, an adapter with non-zero B
//! (so both factors matter), and agreement measures.

#![allow(dead_code)]

use cleaner_ggml::{quantize, Backend, Chunks, Device};
use cleaner_kernels::quant::QuantType;
use cleaner_models::tiny::{tiny_model, TinySpec};
use cleaner_models::{Architecture, GgufFile, GgufWriter, Lora, LoraConfig, Transformer};
use std::sync::{Mutex, MutexGuard};

/// Families the trainer runs.
pub const ARCHS: [Architecture; 3] = [
    Architecture::Llama,
    Architecture::Qwen2,
    Architecture::Qwen3,
];

/// Weight types of the test matrix.
pub const TYPES: [QuantType; 6] = [
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q8_0,
    QuantType::Q4_K,
    QuantType::Q6_K,
];

/// A tiny spec whose every matrix has rows of 256 values (whole K-quant
/// super-blocks): 4 query heads of 64, 2 key/value heads.
pub fn spec(arch: Architecture) -> TinySpec {
    TinySpec {
        n_vocab: 96,
        n_embd: 256,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 512,
        n_layer: 2,
        quantized: false,
        ..TinySpec::new(arch)
    }
}

/// The tiny f32 model of `arch` with every matrix (embedding, projections,
/// output) re-encoded in `ty` by ggml's quantizer; vectors stay f32.
pub fn tiny(arch: Architecture, ty: QuantType, seed: u64) -> Transformer {
    let f32_file = GgufFile::from_bytes(tiny_model(spec(arch), seed)).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f32_file.metadata() {
        w.set(k, v.clone());
    }
    for info in f32_file.tensors() {
        let bytes = f32_file.tensor_data(info);
        let vals: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if info.dims.len() == 2 {
            let q = quantize(ty.ggml_id(), &vals, info.dims[0] as usize).unwrap();
            w.add_tensor(&info.name, &info.dims, ty, q);
        } else {
            w.add_f32(&info.name, &info.dims, &vals);
        }
    }
    Transformer::from_gguf(GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap()
}

/// A rank-8 adapter on every projection with B filled (a fresh one has B = 0).
pub fn adapter(model: &Transformer, seed: u64) -> Lora {
    let mut lora = Lora::new(
        model,
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            ..Default::default()
        },
        seed,
    );
    let mut s = seed | 1;
    for (_, pair) in lora.layers.iter_mut().flatten() {
        for b in pair.b.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
        }
    }
    lora
}

/// Deterministic tokens below `n_vocab`.
pub fn tokens(n_tok: usize, n_vocab: usize) -> Vec<u32> {
    (0..n_tok)
        .map(|i| ((i * 37 + 11) % n_vocab) as u32)
        .collect()
}

/// The backend under test, with a lock held for the test's length: ggml's
/// CPU workers (and the CPU trainer's) spin while they wait, so two tests
/// computing at once on a 2-core machine slow each other many times over;
/// tests of one binary take turns. ggml's CPU backend on two threads,
/// unless `CLEANER_GGML_DEVICE` names another (`cuda`, `metal`, `vulkan`:
/// the GPU check script runs the same agreement tests on the GPU).
pub fn cpu() -> (MutexGuard<'static, ()>, Backend) {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let device = match std::env::var("CLEANER_GGML_DEVICE") {
        Ok(name) if !name.trim().is_empty() => Device::parse(&name)
            .unwrap_or_else(|| panic!("CLEANER_GGML_DEVICE={name}: not a device name")),
        _ => Device::Cpu,
    };
    let backend = Backend::new(device, 2).unwrap_or_else(|e| panic!("{device}: {e}"));
    (guard, backend)
}

/// Largest `|a - b| / max(|b|, 1)`: relative for log-probs beyond one nat,
/// absolute near zero, where a relative measure of `log p ~ 0` is noise.
pub fn worst_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs() / (y as f64).abs().max(1.0))
        .fold(0.0, f64::max)
}

/// Chunk sizes far below the tests' sequence lengths and vocabularies, so
/// that attention runs in several query blocks (a last, shorter one
/// included), the head in several position chunks and the output matrix in
/// several vocabulary blocks.
pub const SMALL: Chunks = Chunks {
    query_block: 7,
    head_tokens: 9,
    vocab_block: 40,
};

/// Per-token log-probs of `toks` from the CPU trainer and from ggml on
/// `backend` with `chunks`: `[(cpu, ggml) without the adapter, (cpu, ggml)
/// with it]`.
pub fn cpu_and_ggml_logprobs(
    model: &Transformer,
    lora: &Lora,
    backend: &Backend,
    toks: &[u32],
    chunks: Chunks,
) -> [(Vec<f32>, Vec<f32>); 2] {
    let dev = cleaner_ggml::DeviceModel::upload(model, backend).unwrap();
    let dev_lora = cleaner_ggml::DeviceLora::upload(lora, &dev, backend).unwrap();
    [false, true].map(|with_lora| {
        let cpu = model
            .forward(toks, with_lora.then_some(lora), None)
            .unwrap()
            .logprobs;
        let ours = cleaner_ggml::logprobs_chunked(
            backend,
            &dev,
            with_lora.then_some(&dev_lora),
            toks,
            chunks,
        )
        .unwrap();
        (cpu, ours)
    })
}

/// The path of model asset `name` in the asset cache (`CLEANER_HOME`, else
/// `XDG_CACHE_HOME/cleaner`, else `~/.cache/cleaner`), which must exist.
pub fn asset(name: &str) -> std::path::PathBuf {
    use std::path::PathBuf;
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("CLEANER_HOME")
        .or_else(|| env("XDG_CACHE_HOME").map(|x| x.join("cleaner")))
        .or_else(|| env("HOME").map(|h| h.join(".cache").join("cleaner")))
        .expect("a home directory");
    let path = home.join("assets").join(name);
    assert!(
        path.exists(),
        "{} is missing: fetch the model assets first (docs/assets.md)",
        path.display()
    );
    path
}
