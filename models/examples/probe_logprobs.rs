//! The mean log-prob per model token of fixed trajectories, under the base
//! model and under LoRA adapters: a deterministic probe of what training
//! changed (measurements/quickstart-learning, "A log-prob probe").
//!
//!   cargo run --release -p cleaner-models --example probe_logprobs -- \
//!       MODEL.gguf PROBE.tsv base NAME=ADAPTER.gguf ...
//!
//! PROBE.tsv has one trajectory per line: its label (1 right, 0 wrong), its
//! token ids (comma-separated) and one role digit per token (1 a model
//! token, 0 anything else), tab-separated (`probe_from_eval.py` writes it
//! from `cleaner eval`'s trajectories). For each model (`base`, or an
//! adapter file named NAME) it writes `PROBE.tsv.NAME`: per trajectory its label,
//! the mean log-prob of its model tokens given everything before them, and
//! their count.

use std::error::Error;
use std::path::Path;

use cleaner_models::{Lora, Transformer};

struct Trajectory {
    label: u8,
    tokens: Vec<u32>,
    model_token: Vec<bool>,
}

fn parse(path: &Path) -> Result<Vec<Trajectory>, Box<dyn Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{} line {}", path.display(), i + 1);
        let fields: Vec<&str> = line.split('\t').collect();
        let [label, tokens, roles] = fields[..] else {
            return Err(format!("{}: expected 3 tab-separated fields", at()).into());
        };
        let label = match label {
            "0" => 0,
            "1" => 1,
            other => return Err(format!("{}: label {other:?}, expected 0 or 1", at()).into()),
        };
        let tokens = tokens
            .split(',')
            .map(|t| t.parse::<u32>())
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|e| format!("{}: token ids: {e}", at()))?;
        let model_token: Vec<bool> = roles.bytes().map(|b| b == b'1').collect();
        if model_token.len() != tokens.len() || !roles.bytes().all(|b| b == b'0' || b == b'1') {
            return Err(format!("{}: expected one role digit 0/1 per token", at()).into());
        }
        out.push(Trajectory {
            label,
            tokens,
            model_token,
        });
    }
    Ok(out)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("probe_logprobs: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_path, probe_path, models @ ..] = &args[..] else {
        return Err("usage: probe_logprobs MODEL.gguf PROBE.tsv base|NAME=ADAPTER.gguf ...".into());
    };
    let model = Transformer::open(model_path)?;
    let probe = parse(probe_path.as_ref())?;
    for spec in models {
        let (name, lora) = match spec.split_once('=') {
            None if spec == "base" => (spec.as_str(), None),
            Some((name, path)) if !name.is_empty() && !name.contains('/') => {
                (name, Some(Lora::read_gguf(&model, path.as_ref())?))
            }
            _ => return Err(format!("{spec:?}: expected base or NAME=ADAPTER.gguf").into()),
        };
        let t0 = std::time::Instant::now();
        let mut out = String::new();
        for t in &probe {
            // logprobs[i] is the log-prob of token i + 1.
            let logprobs = model.forward(&t.tokens, lora.as_ref(), None)?.logprobs;
            let kept: Vec<f64> = (1..t.tokens.len())
                .filter(|&i| t.model_token[i])
                .map(|i| logprobs[i - 1] as f64)
                .collect();
            let mean = kept.iter().sum::<f64>() / kept.len().max(1) as f64;
            out.push_str(&format!("{} {mean:.5} {}\n", t.label, kept.len()));
        }
        let dest = format!("{probe_path}.{name}");
        std::fs::write(&dest, out).map_err(|e| format!("{dest}: {e}"))?;
        eprintln!("{name}: {:.1} s", t0.elapsed().as_secs_f64());
    }
    Ok(())
}
