//! Shared set-up for integration tests: the real test model, fetched into the
//! asset cache on first use (CI fetches it before the tests run).

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cleaner::assets::{self, AssetStore};
use cleaner::{Decoder, DecoderConfig, Model, ModelParams, Token};

/// A GPU build: llama.cpp runs the model on a GPU, whose kernels depend on
/// the batch's shape (exact batch invariance holds on the CPU backend only;
/// measured on an H100, see the README).
#[allow(dead_code)]
pub const GPU: bool = cfg!(any(feature = "cuda", feature = "metal", feature = "vulkan"));

pub fn test_model_path() -> PathBuf {
    let asset = assets::find(assets::TEST_MODEL).expect("test model in catalog");
    AssetStore::default()
        .fetch(asset, &mut |line| eprintln!("{line}"))
        .expect("the test model could not be fetched; run `cleaner fetch smollm2-135m`")
}

/// SmolLM2-135M, loaded once per test binary.
pub fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(
                Model::load(test_model_path(), &ModelParams::default()).expect("load test model"),
            )
        })
        .clone()
}

pub fn decoder(n_seq_max: u32, n_ctx: u32) -> Decoder {
    Decoder::new(
        model(),
        &DecoderConfig {
            n_ctx,
            n_seq_max,
            n_batch: 512,
            n_threads: 2,
            ..Default::default()
        },
    )
    .expect("decoder")
}

pub fn tokens(text: &str) -> Vec<Token> {
    model().tokenize(text, true, false).expect("tokenize")
}

/// Largest absolute difference between two logits rows.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// llama.cpp's CPU threads spin while waiting for work, so two tests decoding
/// at once on a 2-core machine slow each other down by 30x. Every test that
/// decodes holds this lock.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A rank-`rank` LoRA adapter for the test model on q and ffn_down of the
/// first `n_layers` layers, with deterministic pseudo-random weights.
pub fn write_adapter(path: &std::path::Path, arch: &str, rank: u64, n_layers: usize, seed: u64) {
    use cleaner::models::{GgufWriter, Value};
    let base = model();
    let g = base.gguf();
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String(arch.into()))
        .set("general.type", Value::String("adapter".into()))
        .set("adapter.type", Value::String("lora".into()))
        .set("adapter.lora.alpha", Value::F32(rank as f32));
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    };
    for layer in 0..n_layers {
        for t in ["attn_q", "ffn_down"] {
            let name = format!("blk.{layer}.{t}.weight");
            let dims = &g.tensor(&name).expect("base tensor").dims;
            let (n_in, n_out) = (dims[0], dims[1]);
            let a: Vec<f32> = (0..n_in * rank).map(|_| rand()).collect();
            let b: Vec<f32> = (0..rank * n_out).map(|_| rand()).collect();
            w.add_f32(&format!("{name}.lora_a"), &[n_in, rank], &a);
            w.add_f32(&format!("{name}.lora_b"), &[rank, n_out], &b);
        }
    }
    std::fs::write(path, w.to_bytes()).expect("write adapter");
}

/// The sandbox on the cached interpreter, created once per test binary.
pub fn sandbox() -> &'static cleaner::sandbox::Sandbox {
    static SANDBOX: OnceLock<cleaner::sandbox::Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let wasm = AssetStore::default()
            .fetch(
                assets::find("python-wasm").expect("python-wasm in catalog"),
                &mut |l| eprintln!("{l}"),
            )
            .expect("fetch python-wasm");
        cleaner::sandbox::Sandbox::new(cleaner::sandbox::SandboxConfig::new(
            wasm,
            cleaner::assets::sandbox_cache_dir(),
        ))
        .expect("sandbox")
    })
}
