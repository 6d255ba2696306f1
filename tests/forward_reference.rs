//! The trainer's forward pass against an independent float64 implementation
//! (numpy over the `gguf` package's dequantization), on the committed vectors
//! of tests/data/gen_forward_reference.py. Unlike the llama.cpp comparison this is
//! exact up to f32 rounding, so it catches any real mistake in the forward.

mod common;

use cleaner::assets::{self, AssetStore};
use cleaner::models::Transformer;

/// Log-prob agreement in nats (measured: worst 1.8e-5 on both models).
const REFERENCE_TOL: f64 = 2e-4;

fn check(asset: &str) {
    let path = AssetStore::default()
        .fetch(assets::find(asset).expect("catalog"), &mut |l| {
            eprintln!("{l}")
        })
        .expect("fetch model");
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let all: serde_json::Value =
        serde_json::from_str(include_str!("data/forward_reference.json")).expect("reference json");
    let r = &all["models"][&file];
    assert!(r.is_object(), "no reference for {file}");
    let tokens: Vec<u32> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let model = Transformer::open(&path).expect("open");
    let n = tokens.len();
    let out = {
        let _g = common::serial();
        model.forward(&tokens, None, Some(0..n)).expect("forward")
    };
    let n_vocab = model.config().n_vocab;
    let logits = out.logits.unwrap();
    let mut worst = 0f64;
    for t in 0..n - 1 {
        let want = r["logprob_next"][t].as_f64().unwrap();
        let err = (out.logprobs[t] as f64 - want).abs();
        worst = worst.max(err);
        assert!(
            err <= REFERENCE_TOL,
            "{file} position {t}: logprob {} vs reference {want}",
            out.logprobs[t]
        );
    }
    for t in 0..n {
        let row = &logits[t * n_vocab..(t + 1) * n_vocab];
        let top = row
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0;
        assert_eq!(
            top as u64,
            r["top5"][t][0].as_u64().unwrap(),
            "{file} position {t}: argmax"
        );
    }
    eprintln!(
        "{file}: worst |dlogp| vs f64 reference {worst:.2e} over {} positions",
        n - 1
    );
}

#[test]
fn smollm2_forward_matches_float64_reference() {
    check("smollm2-135m");
}

#[test]
fn qwen2_5_forward_matches_float64_reference() {
    check("qwen2.5-coder-0.5b");
}
