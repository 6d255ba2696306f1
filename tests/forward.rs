//! The trainer's forward pass (our kernels over the memory-mapped quantized
//! weights) against llama.cpp's logits for the same 256 tokens, through the
//! rollout engine. The policy that samples and the policy that is trained must
//! be the same function, up to llama.cpp quantizing activations to 8 bits
//! inside its quantized matmuls.

mod common;

use std::sync::Arc;

use cleaner::assets::{self, AssetStore};
use cleaner::models::Transformer;
use cleaner::{Model, ModelParams, Policy, PolicyConfig};

/// 256 tokens of mixed prose and code (both tokenizers give more; we cut).
const TEXT: &str = "The harbour town woke slowly. Fishing boats returned with the tide, \
gulls argued over the nets, and the baker on Quay Street pulled the first loaves from an oven \
older than anyone could remember. Mara counted the crates twice before she wrote the total in \
her ledger: forty-two crates of mackerel, nineteen of cod, and a single crate of something \
nobody could name. She frowned, closed the book and walked to the end of the pier.\n\n\
def mean_and_spread(values):\n    \"\"\"Return the mean and the standard deviation of a list.\"\"\"\n\
    n = len(values)\n    if n == 0:\n        raise ValueError(\"empty input\")\n\
    mean = sum(values) / n\n    var = sum((v - mean) ** 2 for v in values) / n\n\
    return mean, var ** 0.5\n\nprint(mean_and_spread([3, 1, 4, 1, 5, 9, 2, 6]))\n\n\
In 1905 Einstein published four papers that changed physics: on the photoelectric effect, \
on Brownian motion, on special relativity, and on the equivalence of mass and energy. \
Each of them would have been enough for a career; together they made a revolution.";
const N_TOK: usize = 256;

/// Agreement bounds (nats), with what was measured on this machine in the
/// comments of each model's test.
struct Bounds {
    mean_abs: f32,
    max_abs: f32,
    argmax_agreement: f64,
}

struct Agreement {
    mean_abs: f32,
    max_abs: f32,
    argmax_agreement: f64,
}

fn asset_path(name: &str) -> std::path::PathBuf {
    AssetStore::default()
        .fetch(assets::find(name).expect("asset in catalog"), &mut |l| eprintln!("{l}"))
        .unwrap_or_else(|e| panic!("fetch {name}: {e}"))
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
}

fn compare(name: &str) -> Agreement {
    let path = asset_path(name);
    let llama = Arc::new(Model::load(&path, &ModelParams::default()).expect("llama.cpp loads the model"));
    let mut tokens = llama.tokenize(TEXT, true, false).expect("tokenize");
    assert!(tokens.len() >= N_TOK, "{name}: text gives only {} tokens", tokens.len());
    tokens.truncate(N_TOK);
    let (ref_lp, ref_rows) = {
        let _guard = common::serial();
        let config = PolicyConfig { n_ctx: 512, n_seq_max: 1, n_batch: 512, n_threads: 2, flash_attention: Some(false) };
        let mut policy = Policy::new(llama.clone(), &config).expect("policy");
        policy.score(&tokens, true).expect("llama.cpp scores")
    };
    let ours = Transformer::open(&path).expect("our loader opens the model");
    let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    let out = {
        let _guard = common::serial();
        ours.forward(&ids, Some(0..N_TOK - 1)).expect("forward")
    };
    assert_eq!(out.logprobs.len(), N_TOK - 1);
    assert_eq!(ref_lp.len(), N_TOK - 1);
    let diffs: Vec<f32> = out.logprobs.iter().zip(&ref_lp).map(|(a, b)| (a - b).abs()).collect();
    let logits = out.logits.expect("logits asked for");
    let n_vocab = ours.config().n_vocab;
    let agree = (0..N_TOK - 1)
        .filter(|&t| argmax(&logits[t * n_vocab..(t + 1) * n_vocab]) == argmax(&ref_rows[t]))
        .count();
    let a = Agreement {
        mean_abs: diffs.iter().sum::<f32>() / diffs.len() as f32,
        max_abs: diffs.iter().cloned().fold(0.0, f32::max),
        argmax_agreement: agree as f64 / (N_TOK - 1) as f64,
    };
    eprintln!(
        "{name}: mean |dlogp| {:.2e}, max {:.2e}, argmax agreement {:.3} over {} positions; mean logp ours {:.3} llama.cpp {:.3}",
        a.mean_abs,
        a.max_abs,
        a.argmax_agreement,
        N_TOK - 1,
        out.logprobs.iter().sum::<f32>() / (N_TOK - 1) as f32,
        ref_lp.iter().sum::<f32>() / (N_TOK - 1) as f32
    );
    a
}

fn check(a: Agreement, b: Bounds) {
    assert!(a.mean_abs <= b.mean_abs, "mean |dlogp| {} above {}", a.mean_abs, b.mean_abs);
    assert!(a.max_abs <= b.max_abs, "max |dlogp| {} above {}", a.max_abs, b.max_abs);
    assert!(a.argmax_agreement >= b.argmax_agreement, "argmax agreement {} below {}", a.argmax_agreement, b.argmax_agreement);
}

#[test]
fn smollm2_q4_1_matches_llama_cpp() {
    let a = compare("smollm2-135m");
    check(a, Bounds { mean_abs: 1e-1, max_abs: 1.0, argmax_agreement: 0.99 });
}

#[test]
fn qwen2_5_coder_q4_k_m_matches_llama_cpp() {
    let a = compare("qwen2.5-coder-0.5b");
    check(a, Bounds { mean_abs: 1e-1, max_abs: 1.0, argmax_agreement: 0.99 });
}
