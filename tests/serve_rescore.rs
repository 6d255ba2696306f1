//! What an RL client relies on: the completion token ids and `logprobs` that
//! `cleaner serve` returns for a sampled answer (temperature 1, seeded,
//! `return_token_ids`) re-score in the trainer's forward pass (`models`'
//! `Transformer::forward`, what GRPO computes its ratios with) to the same
//! log-probabilities, within the tolerance tests/forward.rs holds the
//! trainer to against llama.cpp.

mod common;
#[path = "common/server.rs"]
mod server;

use cleaner::models::Transformer;
use cleaner::{Decoder, DecoderConfig, Token};
use serde_json::{json, Value as Json};

const MODEL_ID: &str = "smollm2-rescore";

/// tests/forward.rs (`MEAN_FACTOR`, `MAX_FACTOR`, `MEAN_CEILING`): the
/// trainer's distance to llama.cpp may exceed llama.cpp's distance to itself
/// (flash attention on vs off, the same function rounded differently) by at
/// most 1.5x in mean and 2x in max |d logp|, and the mean may not exceed
/// 0.08 on the CPU backend. llama.cpp's quantized matmuls round activations
/// to 8 bits, so no f32 forward can agree with it more closely.
const MEAN_FACTOR: f32 = 1.5;
const MAX_FACTOR: f32 = 2.0;
const MEAN_CEILING: f32 = 0.08;

fn ids(v: &Json) -> Vec<Token> {
    serde_json::from_value(v.clone()).expect("token ids")
}

/// (mean, max) of |a - b|.
fn distance(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    (
        d.iter().sum::<f32>() / d.len() as f32,
        d.iter().cloned().fold(0.0, f32::max),
    )
}

/// llama.cpp's log-probs of `tokens[from..]` given what precedes each, with
/// flash attention on or off (the noise floor, as tests/forward.rs takes it).
fn llama_logprobs(tokens: &[Token], from: usize, flash_attention: bool) -> Vec<f32> {
    let mut d = Decoder::new(
        common::model(),
        &DecoderConfig {
            n_ctx: 1024,
            n_seq_max: 1,
            n_batch: 512,
            n_threads: 2,
            flash_attention: Some(flash_attention),
        },
    )
    .expect("decoder");
    let (lp, _) = d.score(tokens, false).expect("llama.cpp scores");
    lp[from - 1..].to_vec()
}

#[test]
fn sampled_tokens_and_logprobs_rescore_in_the_trainer() {
    let _g = common::serial();
    let s = server::InProcessServer::start(MODEL_ID, 4, 512);
    // Three sampled answers at temperature 1, as an RL rollout asks for them.
    let (status, r) = s.post(
        "/v1/chat/completions",
        &json!({"model": MODEL_ID, "n": 3, "seed": 1234, "temperature": 1.0,
                "max_tokens": 96, "logprobs": true, "return_token_ids": true,
                "messages": [{"role": "user",
                              "content": "Write a short story about a lighthouse keeper."}]}),
    );
    assert_eq!(status, 200, "{r}");
    drop(s);
    let prompt = ids(&r["prompt_token_ids"]);
    let trainer =
        Transformer::open(common::test_model_path()).expect("the trainer opens the model");
    let (mut server_lp, mut trainer_lp, mut floor_a, mut floor_b) =
        (vec![], vec![], vec![], vec![]);
    for choice in r["choices"].as_array().expect("choices") {
        let completion = ids(&choice["token_ids"]);
        let served: Vec<f32> = choice["logprobs"]["content"]
            .as_array()
            .expect("logprobs.content")
            .iter()
            .map(|e| e["logprob"].as_f64().expect("logprob") as f32)
            .collect();
        assert!(!completion.is_empty(), "{choice}");
        assert_eq!(served.len(), completion.len(), "one logprob per token id");
        let seq: Vec<Token> = prompt.iter().chain(&completion).copied().collect();
        let seq_u32: Vec<u32> = seq.iter().map(|&t| t as u32).collect();
        // logprobs[t] = log p(seq[t + 1] | seq[..=t]): the completion's
        // tokens are positions prompt.len() - 1 onwards.
        let out = trainer.forward(&seq_u32, None, None).expect("forward");
        trainer_lp.extend_from_slice(&out.logprobs[prompt.len() - 1..]);
        server_lp.extend(served);
        floor_a.extend(llama_logprobs(&seq, prompt.len(), true));
        floor_b.extend(llama_logprobs(&seq, prompt.len(), false));
    }
    let (mean, max) = distance(&trainer_lp, &server_lp);
    let (floor_mean, floor_max) = distance(&floor_a, &floor_b);
    eprintln!(
        "{} completion tokens: trainer vs server mean |dlogp| {mean:.2e}, max {max:.2e}; \
         llama.cpp flash attention on vs off mean {floor_mean:.2e}, max {floor_max:.2e}",
        server_lp.len()
    );
    assert!(
        mean <= MEAN_FACTOR * floor_mean && (common::GPU || mean <= MEAN_CEILING),
        "mean |dlogp| {mean} vs floor {floor_mean}"
    );
    assert!(
        max <= MAX_FACTOR * floor_max,
        "max |dlogp| {max} vs floor {floor_max}"
    );
}
