//! LoRA gradients of the ggml trainer (CPU backend) against the CPU
//! trainer's hand-written backward (`Transformer::backward`, itself checked
//! against finite differences in `models/tests/grad.rs`), for the same loss
//! `sum_t w[t] * logprob[t]` with weights of mixed sign, on tiny llama,
//! qwen2 and qwen3 models in Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K: the
//! block-checkpointed backward built from forward ops, with one block and
//! chunk covering the sequence and with [`SMALL`] chunks, and ggml's
//! automatic backward of the whole-sequence graph ([`reference`]).

mod common;

use cleaner_ggml::{backward_chunked, reference, Chunks, DeviceLora, DeviceModel};
use common::*;

/// Per gradient tensor: cosine with the CPU trainer's >= COS_MIN and
/// `|g_ggml - g_cpu| / |g_cpu|` (L2) <= REL_MAX (the bounds).
const COS_MIN: f64 = 0.999;
const REL_MAX: f64 = 1e-3;
const N_TOK: usize = 24;

/// Which ggml backward a check runs.
#[derive(Clone, Copy, Debug)]
enum Path {
    Chunked(Chunks),
    Autograd,
}

#[test]
fn lora_gradients_match_the_cpu_trainer() {
    check_against_cpu(Path::Chunked(Chunks::default()));
}

#[test]
fn chunked_lora_gradients_match_the_cpu_trainer() {
    check_against_cpu(Path::Chunked(SMALL));
}

#[test]
fn autograd_reference_gradients_match_the_cpu_trainer() {
    check_against_cpu(Path::Autograd);
}

fn check_against_cpu(path: Path) {
    let (_serial, backend) = cpu();
    let (mut worst_cos, mut worst_rel) = (1f64, 0f64);
    for arch in ARCHS {
        for ty in TYPES {
            let model = tiny(arch, ty, 13);
            let lora = adapter(&model, 5);
            let toks = tokens(N_TOK, model.config().n_vocab);
            let w: Vec<f32> = (0..N_TOK - 1)
                .map(|t| ((t * 37 % 11) as f32 - 5.0) / 5.0)
                .collect();
            let (lp_cpu, tape) = model.forward_train(&toks, &lora).unwrap();
            let mut g_cpu = lora.zeros_like();
            model.backward(&tape, &lora, &w, &mut g_cpu).unwrap();

            let dev = DeviceModel::upload(&model, &backend).unwrap();
            let dev_lora = DeviceLora::upload(&lora, &dev, &backend).unwrap();
            let mut g = lora.zeros_like();
            let lp = match path {
                Path::Chunked(chunks) => {
                    backward_chunked(&backend, &dev, &dev_lora, &toks, &w, &mut g, chunks)
                }
                Path::Autograd => reference::backward(&backend, &dev, &dev_lora, &toks, &w, &mut g),
            }
            .unwrap();
            assert!(worst_rel_lp(&lp, &lp_cpu) <= 1e-3);

            let (mut cos_min, mut rel_max) = (1f64, 0f64);
            for (i, (a, b)) in g.tensors().zip(g_cpu.tensors()).enumerate() {
                let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
                let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                let nb: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
                let diff: f64 = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| ((x - y) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(
                    nb > 0.0,
                    "{arch:?} {}: tensor {i} has a zero gradient",
                    ty.name()
                );
                let (cos, rel) = (dot / (na * nb), diff / nb);
                assert!(
                    cos >= COS_MIN && rel <= REL_MAX,
                    "{arch:?} {} tensor {i}: cosine {cos}, relative error {rel:e}",
                    ty.name()
                );
                cos_min = cos_min.min(cos);
                rel_max = rel_max.max(rel);
            }
            eprintln!(
                "{arch:?} {}: {} gradient tensors, min cosine {cos_min:.7}, max relative L2 error {rel_max:.2e}",
                ty.name(),
                g.tensors().count()
            );
            worst_cos = worst_cos.min(cos_min);
            worst_rel = worst_rel.max(rel_max);
        }
    }
    eprintln!(
        "{path:?}: worst over 3 families x 6 types: cosine {worst_cos:.7}, relative error {worst_rel:.2e}"
    );
}

fn worst_rel_lp(a: &[f32], b: &[f32]) -> f64 {
    worst_rel(a, b)
}

/// Central finite differences of the loss through ggml's own chunked
/// forward (the adapter re-uploaded per step) against its chunked backward, one parameter of
/// every tensor of a tiny qwen3 model: the backward is the derivative of the
/// function the device computes, not only close to the CPU trainer's.
/// Bound as in `models/tests/grad.rs`: |analytic - numeric| <= FD_TOL *
/// max(|numeric|, 0.05 * largest |numeric| of the tensor).
#[test]
fn lora_gradients_match_finite_differences_through_ggml() {
    const FD_TOL: f64 = 1e-2;
    const STEP: f32 = 1e-2;
    let (_serial, backend) = cpu();
    // The model models/tests/grad.rs checks the CPU trainer on (Q8_0 and
    // f32 matrices, log-probs of a few nats, so f32 rounding of the loss
    // stays far below the differences).
    let spec = cleaner_models::tiny::TinySpec::new(cleaner_models::Architecture::Qwen3);
    let bytes = cleaner_models::tiny::tiny_model(spec, 11);
    let model = cleaner_models::Transformer::from_gguf(
        cleaner_models::GgufFile::from_bytes(bytes).unwrap(),
    )
    .unwrap();
    let lora = adapter(&model, 9);
    let toks = tokens(16, model.config().n_vocab);
    let w: Vec<f32> = (0..15).map(|t| (t % 3) as f32 - 1.0).collect();
    let dev = DeviceModel::upload(&model, &backend).unwrap();
    let dev_lora = DeviceLora::upload(&lora, &dev, &backend).unwrap();
    let mut g = lora.zeros_like();
    backward_chunked(&backend, &dev, &dev_lora, &toks, &w, &mut g, SMALL).unwrap();
    let loss = |l: &cleaner_models::Lora| -> f64 {
        dev_lora.set(l).unwrap();
        let lp =
            cleaner_ggml::logprobs_chunked(&backend, &dev, Some(&dev_lora), &toks, SMALL).unwrap();
        lp.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let mut worst = 0f64;
    for ti in 0..lora.tensors().count() {
        let len = lora.tensors().nth(ti).unwrap().len();
        // One parameter per tensor: every factor of every projection.
        let idx: Vec<usize> = vec![(7919 + ti * 31) % len];
        let mut numeric = Vec::new();
        for &i in &idx {
            numeric.push(lora.central_difference(ti, i, STEP, loss).unwrap());
        }
        let scale = numeric.iter().fold(0f64, |m, v| m.max(v.abs()));
        let analytic = g.tensors().nth(ti).unwrap();
        for (k, &i) in idx.iter().enumerate() {
            let (a, n) = (analytic[i] as f64, numeric[k]);
            let err = (a - n).abs() / n.abs().max(0.05 * scale).max(1e-6);
            assert!(
                err <= FD_TOL,
                "tensor {ti} index {i}: analytic {a:e}, numeric {n:e}"
            );
            worst = worst.max(err);
        }
    }
    eprintln!("finite differences through ggml: worst relative error {worst:.2e}");
}
