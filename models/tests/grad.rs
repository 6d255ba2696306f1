//! Every LoRA gradient of the backward pass against central finite
//! differences of the forward pass, on tiny random models of each family
//! (llama, qwen2, qwen3) built in real GGUF form (Q8_0 and f32 weights), so
//! the gradients flow through every op: log-softmax, final norm, SwiGLU,
//! attention with GQA, RoPE in both layouts, q/k norms, biases, residuals.
//!
//! The forward pass is f32 and the loss is accumulated in f64. The f32
//! rounding of the forward still reaches the finite differences: about 1e-5
//! on the loss, over a step of 2e-2, moves a numeric gradient of 3e-2 by up
//! to 2 %, and which elements it hits depends on the micro-kernel's
//! summation order (`CLEANER_GEMM_F32`), so the bound leaves room for it. A
//! wrong backward term is off by far more.

use cleaner_kernels::logits::kept_logits_bytes;
use cleaner_models::tiny::{tiny_model, TinySpec};
use cleaner_models::{Architecture, GgufFile, Lora, LoraConfig, Transformer};

/// |analytic - numeric| <= GRAD_TOL * max(|numeric|, 0.05 * largest |numeric| of the tensor)
/// (measured worst over the three families: 6.6e-3 with the AVX2 micro-kernel,
/// 1.1e-2 with AVX-512, 1.2e-2 with the portable one).
const GRAD_TOL: f64 = 3e-2;
const STEP: f32 = 1e-2;
/// Parameters checked per tensor (spread over the tensor).
const SAMPLES_PER_TENSOR: usize = 6;

fn check(arch: Architecture) {
    let model =
        Transformer::from_gguf(GgufFile::from_bytes(tiny_model(TinySpec::new(arch), 11)).unwrap())
            .unwrap();
    let mut lora = Lora::new(
        &model,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..Default::default()
        },
        3,
    );
    // A fresh adapter has B = 0, which makes every dA zero; give B values so
    // both factors' gradients are exercised.
    let mut s = 5u64;
    for (_, pair) in lora.layers.iter_mut().flatten() {
        for b in pair.b.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4;
        }
    }
    let tokens: Vec<u32> = (0..19).map(|i| (i * 7 + 3) % 48).collect();
    let weights: Vec<f32> = (0..tokens.len() - 1)
        .map(|t| ((t * 37 % 11) as f32 - 5.0) / 5.0)
        .collect();
    let loss = |l: &Lora| -> f64 {
        let (lp, _) = model.forward_train(&tokens, l).unwrap();
        lp.iter()
            .zip(&weights)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum()
    };
    let (_, tape) = model.forward_train(&tokens, &lora).unwrap();
    let mut grads = lora.zeros_like();
    model.backward(&tape, &lora, &weights, &mut grads).unwrap();

    let n_tensors = lora.tensors().count();
    let mut worst = 0f64;
    for ti in 0..n_tensors {
        let len = lora.tensors().nth(ti).unwrap().len();
        let analytic = grads.tensors().nth(ti).unwrap().to_vec();
        let mut numeric = Vec::new();
        let idx: Vec<usize> = (0..SAMPLES_PER_TENSOR)
            .map(|k| (k * 7919 + ti * 31) % len)
            .collect();
        for &i in &idx {
            numeric.push(lora.central_difference(ti, i, STEP, loss).unwrap());
        }
        let scale = numeric.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (k, &i) in idx.iter().enumerate() {
            let (a, n) = (analytic[i] as f64, numeric[k]);
            let err = (a - n).abs() / n.abs().max(0.05 * scale).max(1e-6);
            worst = worst.max(err);
            assert!(
                err <= GRAD_TOL,
                "{arch:?} tensor {ti} index {i}: analytic {a:.6e}, numeric {n:.6e}"
            );
        }
    }
    eprintln!("{arch:?}: {n_tensors} tensors, worst relative error {worst:.2e}");
}

#[test]
fn lora_gradients_match_finite_differences_llama() {
    check(Architecture::Llama);
}

#[test]
fn lora_gradients_match_finite_differences_qwen2() {
    check(Architecture::Qwen2);
}

#[test]
fn lora_gradients_match_finite_differences_qwen3() {
    check(Architecture::Qwen3);
}

/// A tiny model of `arch`, an adapter with non-zero B (so every gradient is
/// exercised), `n_tok` tokens and per-position loss weights of mixed sign.
fn tiny_case(arch: Architecture, n_tok: u32) -> (Transformer, Lora, Vec<u32>, Vec<f32>) {
    let model =
        Transformer::from_gguf(GgufFile::from_bytes(tiny_model(TinySpec::new(arch), 5)).unwrap())
            .unwrap();
    let mut lora = Lora::new(&model, LoraConfig::default(), 9);
    for (k, b) in lora.tensors_mut().enumerate() {
        b.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += ((i * 13 + k) % 7) as f32 * 0.01);
    }
    let tokens: Vec<u32> = (0..n_tok).map(|i| (i * 5 + 1) % 48).collect();
    let weights: Vec<f32> = (0..tokens.len() - 1)
        .map(|t| (t % 3) as f32 - 1.0)
        .collect();
    (model, lora, tokens, weights)
}

/// Keeping blocks whole (no recomputation in the backward pass) or the
/// logits must give exactly the gradients of the fully checkpointed pass:
/// none, one and all blocks kept, the logits alone, on each family. Blocks
/// come first; the logits take what they leave.
#[test]
fn kept_blocks_and_logits_give_bit_identical_gradients() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let (model, lora, tokens, weights) = tiny_case(arch, 23);
        let n_layer = model.layers.len();
        let grads_with = |keep: usize| {
            let (lp, tape) = model.forward_train_keeping(&tokens, &lora, keep).unwrap();
            let mut g = lora.zeros_like();
            model.backward(&tape, &lora, &weights, &mut g).unwrap();
            let kept = (tape.kept_blocks(), tape.kept_logits());
            (lp, g, kept, tape.kept_bytes())
        };
        let logits = kept_logits_bytes(tokens.len() - 1, model.config().n_vocab);
        let (lp0, g0, k0, _) = grads_with(0);
        let (lp_all, g_all, k_all, bytes_all) = grads_with(usize::MAX);
        let block = (bytes_all - logits) / n_layer;
        assert!(
            logits < block,
            "{arch:?}: the logits alone must fit where a block does not"
        );
        let (lp1, g1, k1, _) = grads_with(block);
        let (lp_l, g_l, k_l, bytes_l) = grads_with(logits);
        let (lp1l, g1l, k1l, _) = grads_with(block + logits);
        assert_eq!(
            (k0, k1, k_l, k1l, k_all),
            (
                (0, false),
                (1, false),
                (0, true),
                (1, true),
                (n_layer, true)
            ),
            "{arch:?}: blocks and logits kept"
        );
        assert_eq!(bytes_l, logits);
        assert!(n_layer > 1);
        for (name, lp, g) in [
            ("one block", &lp1, &g1),
            ("the logits", &lp_l, &g_l),
            ("one block and the logits", &lp1l, &g1l),
            ("all", &lp_all, &g_all),
        ] {
            assert_eq!(lp, &lp0, "{arch:?}: log-probs with {name} kept");
            for (a, b) in g.tensors().zip(g0.tensors()) {
                let (a, b): (Vec<u32>, Vec<u32>) = (
                    a.iter().map(|v| v.to_bits()).collect(),
                    b.iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(a, b, "{arch:?}: gradients with {name} kept");
            }
        }
        assert!(g0.tensors().flatten().any(|v| *v != 0.0));
    }
}

/// bf16 products (operands rounded to bf16, f32 sums) against the f32
/// reference on the same tiny models: log-probs within 5 % of (1 + |log-prob|)
/// and every LoRA gradient tensor within 5 % (relative L2), the rounding of
/// two operands (2^-9 each) grown through the layers of random models with
/// sharp attention (measured: 0.4-2.8 % and 2.8-3.2 %). A mispaired or
/// mispacked operand gives errors of order 1. Without AVX-512 BF16 the bf16
/// request runs f32, bit for bit.
#[test]
fn bf16_products_keep_log_probs_and_gradients_close_to_f32() {
    use cleaner_kernels::matmul::Precision;
    const LOGPROB_TOL: f32 = 5e-2;
    const GRAD_REL_TOL: f64 = 5e-2;
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let (mut model, lora, tokens, weights) = tiny_case(arch, 40);
        let mut run = |p: Precision| {
            model.set_precision(p);
            let (lp, tape) = model.forward_train(&tokens, &lora).unwrap();
            let mut g = lora.zeros_like();
            model.backward(&tape, &lora, &weights, &mut g).unwrap();
            (lp, g)
        };
        let (lp32, g32) = run(Precision::F32);
        let (lp16, g16) = run(Precision::Bf16);
        if Precision::Bf16.effective() == Precision::F32 {
            assert_eq!(lp16, lp32, "{arch:?}: bf16 fallback must be f32");
            continue;
        }
        // Relative: bf16 rounding scales with the logits (the tiny models'
        // are large: target log-probs of -9 to -15 nats).
        let worst = lp16
            .iter()
            .zip(&lp32)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0f32, f32::max);
        assert!(
            worst <= LOGPROB_TOL,
            "{arch:?}: log-probs differ by {worst} x (1 + |log-prob|)"
        );
        assert!(worst > 0.0, "{arch:?}: bf16 ran the f32 path");
        let mut worst_rel = 0f64;
        for (i, (a, b)) in g16.tensors().zip(g32.tensors()).enumerate() {
            let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
            let rel = (diff / norm.max(1e-30)).sqrt();
            worst_rel = worst_rel.max(rel);
            assert!(
                rel <= GRAD_REL_TOL,
                "{arch:?}: gradient tensor {i}: relative L2 error {rel}"
            );
        }
        eprintln!(
            "{arch:?}: bf16 log-probs within {worst:.2e} x (1 + |log-prob|), gradients within {worst_rel:.2e}"
        );
    }
}
