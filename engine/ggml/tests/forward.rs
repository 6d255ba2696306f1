//! ggml's forward (on its CPU backend) against the CPU trainer
//! (`Transformer::forward`): per-token log-probs of tiny llama, qwen2 and
//! qwen3 models in Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K, with and without an
//! adapter. Both compute in f32 on the same dequantized weights (ggml's
//! `get_rows` and our `dequantize` decode each format identically), so they
//! differ only by summation order.

mod common;

use cleaner_ggml::{Chunks, DeviceModel};
use common::*;

/// `|ggml - cpu| <= LOGPROB_TOL * max(|cpu|, 1)` for every position
/// (the 1e-3 relative; measured worst in the test's output).
const LOGPROB_TOL: f64 = 1e-3;
const N_TOK: usize = 40;

/// Once with one query block, head chunk and vocabulary block covering
/// everything (the default sizes exceed the tiny models'), once with
/// [`SMALL`] chunks.
#[test]
fn tiny_models_log_probs_match_the_cpu_trainer() {
    let (_serial, backend) = cpu();
    let mut worst = 0f64;
    for (label, chunks) in [("whole", Chunks::default()), ("chunked", SMALL)] {
        for arch in ARCHS {
            for ty in TYPES {
                let model = tiny(arch, ty, 7);
                let lora = adapter(&model, 3);
                let toks = tokens(N_TOK, model.config().n_vocab);
                let runs = cpu_and_ggml_logprobs(&model, &lora, &backend, &toks, chunks);
                for (with_lora, (cpu, ours)) in [false, true].into_iter().zip(runs) {
                    let rel = worst_rel(&ours, &cpu);
                    eprintln!(
                    "{label} {arch:?} {} lora={with_lora}: worst |dlogp|/max(|logp|,1) {rel:.2e} (log-probs {:.2}..{:.2})",
                    ty.name(),
                    cpu.iter().cloned().fold(f32::INFINITY, f32::min),
                    cpu.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
                );
                    assert!(
                        rel <= LOGPROB_TOL,
                        "{arch:?} {} lora={with_lora}: {rel:e}",
                        ty.name()
                    );
                    worst = worst.max(rel);
                }
            }
        }
    }
    eprintln!("worst over (whole, chunked) x 3 families x 6 types x (base, adapter): {worst:.2e}");
}

/// Weights stay in their stored types on the device: the buffer holds the
/// file's bytes, not a dequantized copy.
#[test]
fn weights_are_uploaded_quantized() {
    let (_serial, backend) = cpu();
    for ty in [
        cleaner_kernels::quant::QuantType::Q4_K,
        cleaner_kernels::quant::QuantType::Q8_0,
    ] {
        let model = tiny(cleaner_models::Architecture::Qwen2, ty, 1);
        let dev = DeviceModel::upload(&model, &backend).unwrap();
        let file_bytes: usize = model.file().tensors().iter().map(|t| t.size as usize).sum();
        // Alignment padding only: far below the f32 size (4.5-8.5 bits per weight vs 32).
        assert!(dev.bytes() >= file_bytes, "{}", ty.name());
        assert!(
            dev.bytes() < file_bytes + 64 * dev.n_tensors() + 4096,
            "{}: {} vs {file_bytes}",
            ty.name(),
            dev.bytes()
        );
        let w = dev.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(w.type_name().to_lowercase(), ty.name().to_lowercase());
    }
}
