//! Shared-prefix passes against per-sequence passes: a group's log-probs and
//! summed LoRA gradients, computed with the prefix once, must equal those of
//! each sequence on its own, on tiny models of each family, with prefixes on
//! both sides of an attention tile (64 positions) and groups of 1 to 8.

use cleaner_models::tiny::{tiny_model, TinySpec};
use cleaner_models::{Architecture, GgufFile, Lora, LoraConfig, PrefixGrad, Transformer};

/// |shared - per-sequence| <= LOGPROB_TOL for every log-prob. The two
/// compute the same sums in other orders (a prefix row's products run in
/// another batch of rows; attention tiles start elsewhere); measured worst
/// 1.5e-5 (on log-probs near -4).
const LOGPROB_TOL: f32 = 5e-5;
/// |shared - per-sequence| <= GRAD_TOL * largest |gradient| of the tensor
/// (measured worst 2.0e-6 of it).
const GRAD_TOL: f32 = 2e-5;

fn model_and_adapter(arch: Architecture) -> (Transformer, Lora) {
    let model =
        Transformer::from_gguf(GgufFile::from_bytes(tiny_model(TinySpec::new(arch), 7)).unwrap())
            .unwrap();
    let mut lora = Lora::new(&model, LoraConfig::default(), 4);
    // B != 0, so both factors' gradients flow.
    for (k, b) in lora.tensors_mut().enumerate() {
        b.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += ((i * 11 + k) % 9) as f32 * 0.01 - 0.04);
    }
    (model, lora)
}

/// `g` sequences sharing `p + 1` tokens (the prefix and its next token),
/// then continuations of different lengths (sequence 1 ends right after
/// the next token: a continuation of one token), with loss weights of
/// mixed sign on every position (the prefix's included).
fn group(p: usize, g: usize) -> Vec<(Vec<u32>, Vec<f32>)> {
    (0..g)
        .map(|s| {
            let rest = if s == 1 { 0 } else { 1 + (s * 17 + p) % 40 };
            let tokens: Vec<u32> = (0..p + 1)
                .map(|i| ((i * 7 + 3) % 48) as u32)
                .chain((0..rest).map(|i| ((i * 5 + s * 13 + 1) % 48) as u32))
                .collect();
            let weights = (0..tokens.len() - 1)
                .map(|t| ((t * 3 + s) % 5) as f32 * 0.5 - 1.0)
                .collect();
            (tokens, weights)
        })
        .collect()
}

fn per_sequence(
    model: &Transformer,
    lora: &Lora,
    seqs: &[(Vec<u32>, Vec<f32>)],
) -> (Vec<Vec<f32>>, Lora) {
    let mut grads = lora.zeros_like();
    let lps = seqs
        .iter()
        .map(|(tokens, w)| {
            let (lp, tape) = model.forward_train(tokens, lora).unwrap();
            model.backward(&tape, lora, w, &mut grads).unwrap();
            lp
        })
        .collect();
    (lps, grads)
}

fn shared(
    model: &Transformer,
    lora: &Lora,
    seqs: &[(Vec<u32>, Vec<f32>)],
    p: usize,
    keep: usize,
) -> (Vec<Vec<f32>>, Lora) {
    let tokens = &seqs[0].0;
    let (prefix_lp, prefix) = model
        .forward_prefix(&tokens[..p], tokens[p], Some(lora), Some(keep))
        .unwrap();
    assert_eq!(prefix_lp.len(), p);
    let mut acc = PrefixGrad::new(&prefix);
    let mut grads = lora.zeros_like();
    let mut lps = Vec::new();
    for (tokens, w) in seqs {
        let (lp, tape) = model
            .forward_continuation(&prefix, &tokens[p..], Some(lora), Some(keep))
            .unwrap();
        // A one-token continuation goes backward too (its gradient is 0).
        model
            .backward_continuation(&prefix, &tape, lora, &w[p..], &mut grads, &mut acc)
            .unwrap();
        acc.add_logprob_grad(&w[..p]);
        lps.push([&prefix_lp[..], &lp].concat());
    }
    model
        .backward_prefix(&prefix, lora, &acc, &mut grads)
        .unwrap();
    (lps, grads)
}

fn check(arch: Architecture, p: usize, g: usize, keep: usize) {
    let (model, lora) = model_and_adapter(arch);
    let seqs = group(p, g);
    let (lp_ref, g_ref) = per_sequence(&model, &lora, &seqs);
    let (lp, grads) = shared(&model, &lora, &seqs, p, keep);
    let (mut worst_lp, mut worst_g) = (0f32, 0f32);
    for (s, (a, b)) in lp.iter().zip(&lp_ref).enumerate() {
        assert_eq!(
            a.len(),
            b.len(),
            "{arch:?} p={p} g={g}: sequence {s} length"
        );
        for (t, (x, y)) in a.iter().zip(b).enumerate() {
            worst_lp = worst_lp.max((x - y).abs());
            assert!(
                (x - y).abs() <= LOGPROB_TOL,
                "{arch:?} p={p} g={g}: sequence {s} log-prob {t}: shared {x}, alone {y}"
            );
        }
    }
    for (ti, (a, b)) in grads.tensors().zip(g_ref.tensors()).enumerate() {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{arch:?}: tensor {ti} has no gradient");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            worst_g = worst_g.max((x - y).abs() / scale);
            assert!(
                (x - y).abs() <= GRAD_TOL * scale,
                "{arch:?} p={p} g={g} keep={keep}: tensor {ti} [{i}]: shared {x}, summed {y} (scale {scale})"
            );
        }
    }
    eprintln!("{arch:?} p={p} g={g}: worst log-prob {worst_lp:.1e}, worst gradient {worst_g:.1e} of scale");
}

#[test]
fn shared_prefix_equals_per_sequence_llama() {
    for (p, g) in [(1, 1), (5, 3), (63, 8), (64, 2), (70, 5)] {
        check(Architecture::Llama, p, g, 0);
    }
}

#[test]
fn shared_prefix_equals_per_sequence_qwen2() {
    for (p, g) in [(2, 8), (31, 4), (65, 1), (100, 6)] {
        check(Architecture::Qwen2, p, g, 0);
    }
}

#[test]
fn shared_prefix_equals_per_sequence_qwen3() {
    for (p, g) in [(3, 2), (40, 7), (64, 8), (90, 3)] {
        check(Architecture::Qwen3, p, g, 0);
    }
}

/// Blocks kept whole by the forward (no recomputation) change nothing.
#[test]
fn shared_prefix_with_kept_blocks() {
    for arch in [Architecture::Llama, Architecture::Qwen3] {
        check(arch, 20, 4, usize::MAX);
    }
}

/// A group of identical sequences: every continuation is the one shared
/// next token.
#[test]
fn identical_sequences_share_all_but_their_last_token() {
    let (model, lora) = model_and_adapter(Architecture::Qwen3);
    let one = group(30, 1).remove(0);
    let seqs = vec![one.clone(), one.clone(), one];
    let (lp_ref, g_ref) = per_sequence(&model, &lora, &seqs);
    let p = seqs[0].0.len() - 1;
    let (lp, grads) = shared(&model, &lora, &seqs, p, 0);
    for (a, b) in lp.iter().flatten().zip(lp_ref.iter().flatten()) {
        assert!((a - b).abs() <= LOGPROB_TOL, "{a} vs {b}");
    }
    for (a, b) in grads.tensors().zip(g_ref.tensors()) {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= GRAD_TOL * scale, "{x} vs {y}");
        }
    }
}

/// A continuation must start with the prefix's next token, and only a
/// prefix's tape can be continued.
#[test]
fn mismatched_continuations_are_refused() {
    let (model, lora) = model_and_adapter(Architecture::Qwen2);
    let (_, prefix) = model
        .forward_prefix(&[1, 2, 3], 4, Some(&lora), Some(0))
        .unwrap();
    let err = model
        .forward_continuation(&prefix, &[5, 6], Some(&lora), Some(0))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("next token is Some(4)"), "{err}");
    let (_, whole) = model.forward_train(&[1, 2, 3], &lora).unwrap();
    let err = model
        .forward_continuation(&whole, &[4, 6], Some(&lora), Some(0))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a shared prefix"), "{err}");
    let err = model
        .forward_continuation(&prefix, &[4, 99], Some(&lora), Some(0))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("99"), "{err}");
}
