//! Real models on a real prompt: ggml's forward on its CPU backend against
//! the CPU trainer, 128 tokens of prose and code tokenized by llama.cpp, with
//! and without an adapter. SmolLM2-135M (llama; Q4_1 and Q8_0 matrices; tied
//! output; NORM RoPE) and Qwen2.5-Coder-0.5B (qwen2, Q4_K_M: Q4_K, Q5_0,
//! Q6_K and Q8_0 matrices in one file; tied output; q/k/v biases; NEOX
//! RoPE). Needs the model assets (`cleaner` fetches them into
//! `~/.cache/cleaner/assets`; `CLEANER_HOME` and `XDG_CACHE_HOME` move them
//! as for the engine).

mod common;

use cleaner_models::Transformer;
use common::*;

const TEXT: &str = "The harbour town woke slowly. Fishing boats returned with the tide, \
gulls argued over the nets, and the baker on Quay Street pulled the first loaves from an oven \
older than anyone could remember.\n\n\
def mean_and_spread(values):\n    \"\"\"Return the mean and the standard deviation of a list.\"\"\"\n\
    n = len(values)\n    mean = sum(values) / n\n    var = sum((v - mean) ** 2 for v in values) / n\n\
    return mean, var ** 0.5\n\n\
In 1905 Einstein published four papers that changed physics: on the photoelectric effect, \
on Brownian motion, on special relativity, and on the equivalence of mass and energy. \
Each of them would have been enough for a career; together they made a revolution.";
const N_TOK: usize = 128;
/// As in the tiny tests: `|ggml - cpu| <= 1e-3 * max(|cpu|, 1)`.
const LOGPROB_TOL: f64 = 1e-3;

#[test]
fn smollm2_log_probs_match_the_cpu_trainer() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn qwen2_5_coder_log_probs_match_the_cpu_trainer() {
    check("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf");
}

fn check(file: &str) {
    let path = asset(file);
    let llama = cleaner_rollout::Model::load(&path, &cleaner_rollout::ModelParams::default())
        .expect("llama.cpp loads the model");
    let mut toks: Vec<u32> = llama
        .tokenize(TEXT, true, false)
        .expect("tokenize")
        .iter()
        .map(|&t| t as u32)
        .collect();
    assert!(toks.len() >= N_TOK, "only {} tokens", toks.len());
    toks.truncate(N_TOK);
    drop(llama);

    let model = Transformer::open(&path).unwrap();
    let mut types: Vec<String> = model
        .file()
        .tensors()
        .iter()
        .filter(|t| t.dims.len() == 2)
        .map(|t| t.ty.name())
        .collect();
    types.sort();
    types.dedup();
    eprintln!("{file}: matrices in {}", types.join(", "));
    let lora = adapter(&model, 17);
    let (_serial, backend) = cpu();
    // Several query blocks, head chunks and vocabulary blocks.
    let chunks = cleaner_ggml::Chunks {
        query_block: 16,
        head_tokens: 24,
        vocab_block: 16384,
    };
    let runs = cpu_and_ggml_logprobs(&model, &lora, &backend, &toks, chunks);
    for (with_lora, (cpu, ours)) in [false, true].into_iter().zip(runs) {
        let rel = worst_rel(&ours, &cpu);
        let max_abs = ours
            .iter()
            .zip(&cpu)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{file} lora={with_lora}: {} positions, worst |dlogp|/max(|logp|,1) {rel:.2e}, max |dlogp| {max_abs:.2e}, mean log-prob {:.3}",
            cpu.len(),
            cpu.iter().sum::<f32>() / cpu.len() as f32
        );
        assert!(rel <= LOGPROB_TOL, "{file} lora={with_lora}: {rel:e}");
    }
}
