//! LoRA training with the real SmolLM2-135M: what we train is what llama.cpp
//! samples from (round trip through our GGUF adapter file), training learns,
//! the base file is never written, and checkpoints resume bit for bit; each
//! on both trainer backends (our CPU kernels, and ggml on its CPU backend,
//! whose graphs are the ones CUDA, Metal and Vulkan run), and the two
//! backends' gradients and first update agree on the same batch.

mod common;

use cleaner::models::{Lora, LoraConfig, Transformer};
use cleaner::train::{nll_loss, AdamWConfig, DeviceKind, Trainer, TrainerBackend};
use cleaner::{Decoder, DecoderConfig, GenerateParams, LoraAdapter, SamplingParams};

fn transformer() -> Transformer {
    Transformer::open(common::test_model_path()).expect("open test model")
}

/// The two backends the tests run on.
const CPU: TrainerBackend = TrainerBackend::CPU;
fn ggml() -> TrainerBackend {
    TrainerBackend::ggml(DeviceKind::Cpu)
}

/// `trainer` moved to `backend` (a new trainer is on the CPU kernels).
fn on(backend: TrainerBackend, mut trainer: Trainer) -> Trainer {
    trainer.set_backend(backend, 2).expect("start backend");
    trainer
}

fn ids(tokens: &[cleaner::Token]) -> Vec<u32> {
    tokens.iter().map(|&t| t as u32).collect()
}

fn llama_decoder() -> Decoder {
    let config = DecoderConfig {
        n_ctx: 512,
        n_seq_max: 1,
        n_batch: 512,
        n_threads: 2,
        flash_attention: Some(false),
    };
    Decoder::new(common::model(), &config).expect("decoder")
}

/// Same bounds as the base-model comparison in tests/forward.rs: llama.cpp's
/// own kernels disagree with each other by about this much.
const MEAN_CEILING: f32 = 0.08;

#[test]
fn adapter_round_trip_llama_cpp_matches_trainer() {
    adapter_round_trip(CPU);
}

#[test]
fn adapter_round_trip_llama_cpp_matches_ggml_trainer() {
    adapter_round_trip(ggml());
}

/// A random adapter written to GGUF and loaded by llama.cpp moves llama.cpp's
/// log-probs as it moves the trainer's on `backend`, with the same tolerance
/// for both backends.
fn adapter_round_trip(backend: TrainerBackend) {
    let tokens = common::tokens("The committee met on Tuesday to discuss the budget. After a long debate, \
        they agreed to fund the new library, the park renovation and two more buses for the northern routes.");
    let model = transformer();
    let mut lora = Lora::new(
        &model,
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            ..Default::default()
        },
        1,
    );
    let mut s = 9u64;
    for (_, pair) in lora.layers.iter_mut().flatten() {
        for b in pair.b.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.gguf");
    lora.write_gguf(&model, &path).unwrap();
    // Our reader gives back exactly what was written.
    assert_eq!(Lora::read_gguf(&model, &path).unwrap(), lora);

    let trainer = on(
        backend,
        Trainer::with_adapter(model, lora, AdamWConfig::default()),
    );
    let ours_base = trainer.logprobs(&ids(&tokens), false).unwrap();
    let ours = trainer.logprobs(&ids(&tokens), true).unwrap();
    let (theirs, theirs_base) = {
        let _g = common::serial();
        let mut decoder = llama_decoder();
        let base = decoder.score(&tokens, false).unwrap().0;
        let adapter =
            LoraAdapter::load(decoder.model(), &path).expect("llama.cpp loads our adapter");
        decoder.set_adapter(Some(adapter)).unwrap();
        (decoder.score(&tokens, false).unwrap().0, base)
    };
    let mean = |a: &[f32], b: &[f32]| {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    };
    let effect = mean(&ours, &ours_base);
    let agreement = mean(&ours, &theirs);
    let base_agreement = mean(&ours_base, &theirs_base);
    eprintln!("{}: adapter moves log-probs by {effect:.3} (mean); ours vs llama.cpp with it {agreement:.3}, without {base_agreement:.3}", trainer.backend_name());
    // Were the adapter lost on either side, the disagreement would be about
    // the adapter's effect; instead it stays at the base model's level.
    if common::GPU {
        // llama.cpp's CUDA kernels sit ~0.15 nats from an f32 forward (H100):
        // the adapter must still bring llama.cpp closer to the trainer.
        assert!(
            agreement < base_agreement && effect > agreement,
            "with adapter: {agreement}, base: {base_agreement}, effect {effect}"
        );
        return;
    }
    assert!(
        effect > 3.0 * agreement,
        "the adapter's effect ({effect}) must dwarf the disagreement ({agreement})"
    );
    assert!(
        agreement <= MEAN_CEILING && agreement <= 1.5 * base_agreement + 0.01,
        "with adapter: {agreement}, base: {base_agreement}"
    );
}

fn sha256_file(path: &std::path::Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(std::fs::read(path).unwrap());
    format!("{:x}", h.finalize())
}

#[test]
fn sft_learns_one_sequence_and_llama_cpp_reproduces_it() {
    sft_learns_one_sequence(CPU);
}

#[test]
fn sft_on_ggml_learns_one_sequence_and_llama_cpp_reproduces_it() {
    sft_learns_one_sequence(ggml());
}

/// SFT on one sequence on `backend`: the NLL falls 90% within
/// MAX_STEPS_TO_90 steps, and llama.cpp with the exported adapter greedily
/// reproduces the sequence.
fn sft_learns_one_sequence(backend: TrainerBackend) {
    let text = "Zebra quartz violin: the seventh lighthouse hums in cobalt while ninety lanterns \
        drift over marmalade hills, and a patient heron counts prime numbers aloud. Beneath the \
        copper bridge, seventeen tortoises debate the grammar of thunder with a retired accordion \
        whose favourite colour is the sound of rain on a Thursday afternoon in late October.";
    let mut tokens = common::tokens(text);
    tokens.truncate(64);
    assert_eq!(tokens.len(), 64);
    let seq = ids(&tokens);
    let base_hash = sha256_file(&common::test_model_path());
    let optim = AdamWConfig {
        lr: 2e-3,
        ..Default::default()
    };
    let mut trainer = on(
        backend,
        Trainer::new(
            transformer(),
            LoraConfig {
                rank: 16,
                alpha: 32.0,
                ..Default::default()
            },
            optim,
            7,
        )
        .unwrap(),
    );
    let weights = vec![1f32; seq.len() - 1];
    let nll = |lp: &[f32]| nll_loss(lp, &weights).0;
    let first = nll(&trainer.logprobs(&seq, true).unwrap());
    let mut last = first;
    let mut steps = 0;
    let mut steps_to_90 = None;
    // Train past the 90% mark until greedy decoding is unambiguous.
    while steps < MAX_SFT_STEPS && last > MEMORIZED_NLL {
        let _g = common::serial();
        trainer
            .accumulate(&seq, |lp| nll_loss(lp, &weights).1)
            .unwrap();
        trainer.update().unwrap();
        last = nll(&trainer.logprobs(&seq, true).unwrap());
        steps += 1;
        if last <= 0.1 * first && steps_to_90.is_none() {
            steps_to_90 = Some(steps);
        }
    }
    eprintln!("{}: SFT on {} tokens: NLL {first:.3} -> {last:.4} in {steps} steps (-90% after {steps_to_90:?})", trainer.backend_name(), seq.len());
    assert!(
        steps_to_90.is_some_and(|s| s <= MAX_STEPS_TO_90),
        "NLL fell only from {first} to {last} in {steps} steps"
    );

    // llama.cpp, with the exported adapter, greedily continues the first
    // token into the whole sequence.
    let dir = tempfile::tempdir().unwrap();
    let _g = common::serial();
    let mut decoder = llama_decoder();
    trainer.hot_swap(&mut decoder, dir.path()).unwrap();
    let (llama_lp, _) = decoder.score(&tokens, false).unwrap();
    let ours_lp = trainer.logprobs(&seq, true).unwrap();
    eprintln!(
        "after hot swap: llama.cpp NLL {:.4}, trainer NLL {:.4}",
        nll(&llama_lp),
        nll(&ours_lp)
    );
    let params = GenerateParams {
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        max_new_tokens: tokens.len() - 1,
        stop_at_eog: false,
        ..Default::default()
    };
    let out = decoder
        .generate(&[(tokens[..1].to_vec(), params)])
        .unwrap()
        .remove(0);
    assert_eq!(
        out.tokens,
        tokens[1..].to_vec(),
        "greedy continuation: {:?}",
        out.text
    );
    assert_eq!(
        sha256_file(&common::test_model_path()),
        base_hash,
        "the base model file changed"
    );
}

/// NLL must fall 90% within this many full-batch steps (measured: 5).
const MAX_STEPS_TO_90: usize = 20;
/// Then training continues to this mean NLL (or MAX_SFT_STEPS) before the
/// greedy check.
const MEMORIZED_NLL: f64 = 0.01;
const MAX_SFT_STEPS: usize = 60;

#[test]
fn checkpoint_resume_is_bit_identical() {
    checkpoint_resume(CPU);
}

#[test]
fn checkpoint_resume_on_ggml_is_bit_identical() {
    checkpoint_resume(ggml());
}

/// Two steps, save, load (and move to `backend` again), a third step: the
/// same bits as the third step of the trainer that never stopped.
fn checkpoint_resume(backend: TrainerBackend) {
    let seq = ids(&common::tokens(
        "Checkpoints must restore the exact optimizer state, moments and step count.",
    ));
    let weights = vec![1f32; seq.len() - 1];
    let optim = AdamWConfig {
        lr: 1e-3,
        warmup_steps: 2,
        ..Default::default()
    };
    let mut a = on(
        backend,
        Trainer::new(
            transformer(),
            LoraConfig {
                rank: 4,
                alpha: 8.0,
                ..Default::default()
            },
            optim,
            3,
        )
        .unwrap(),
    );
    let step = |t: &mut Trainer| {
        let _g = common::serial();
        t.accumulate(&seq, |lp| nll_loss(lp, &weights).1).unwrap();
        t.update().unwrap()
    };
    step(&mut a);
    step(&mut a);
    let dir = tempfile::tempdir().unwrap();
    a.save(dir.path()).unwrap();
    let mut b = on(backend, Trainer::load(transformer(), dir.path()).unwrap());
    assert_eq!(b.step(), 2);
    assert_eq!(b.adapter(), a.adapter());
    let (sa, sb) = (step(&mut a), step(&mut b));
    assert_eq!(sa, sb);
    let bits = |t: &Trainer| {
        t.adapter()
            .tensors()
            .flat_map(|x| x.iter().map(|v| v.to_bits()))
            .collect::<Vec<u32>>()
    };
    assert_eq!(bits(&a), bits(&b), "step 3 after resume differs");
    // And the step did change the adapter.
    assert_ne!(
        bits(&a),
        bits(&Trainer::load(transformer(), dir.path()).unwrap())
    );
}

#[test]
fn peft_files_round_trip_with_llama_row_permutation() {
    let model = transformer();
    let mut lora = Lora::new(
        &model,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..Default::default()
        },
        5,
    );
    for (i, (_, pair)) in lora.layers.iter_mut().flatten().enumerate() {
        for (j, b) in pair.b.iter_mut().enumerate() {
            *b = ((i * 131 + j) % 97) as f32 / 97.0 - 0.5;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    lora.write_peft(&model, dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);
    let back = Lora::read_peft(&model, dir.path()).unwrap();
    assert_eq!(
        back, lora,
        "PEFT write + read must give the adapter back exactly"
    );
    // SmolLM2 is a llama model: q's B rows are stored in Hugging Face order,
    // which differs from GGUF order (a plain copy would not round-trip this
    // check against the GGUF-order values).
    let st = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    let q_b = &header["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
    assert_eq!(q_b["shape"], serde_json::json!([576, 4]));
    let start = q_b["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    let hf_row1: Vec<f32> = st[start + 16..start + 32]
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let gguf = &lora.pair(0, cleaner::models::Proj::Q).unwrap().b;
    // HF row 1 is GGUF row 2 (pair i = 1, j = 0 of head 0).
    assert_eq!(hf_row1, gguf[2 * 4..3 * 4].to_vec());
    // Malformed files are clear errors naming the file.
    std::fs::write(
        dir.path().join("adapter_model.safetensors"),
        b"\x10\0\0\0\0\0\0\0{not json}      ",
    )
    .unwrap();
    let err = Lora::read_peft(&model, dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("JSON"),
        "{err}"
    );
}

/// Relative L2 error of `b` against `a` and their cosine.
fn agreement(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut d2, mut a2, mut b2, mut ab) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        d2 += (x - y) * (x - y);
        a2 += x * x;
        b2 += y * y;
        ab += x * y;
    }
    (
        (d2 / a2.max(f64::MIN_POSITIVE)).sqrt(),
        ab / (a2 * b2).sqrt().max(f64::MIN_POSITIVE),
    )
}

/// The same batch (two sequences, a non-zero adapter so that A's gradients
/// are not zero) on both backends. All gradients together within relative
/// L2 error 1e-3 of the CPU trainer's (measured 4.9e-4; the tolerance of the tiny-model checks
/// in cleaner-ggml); each of the 420 tensors within cosine >= 0.999 and
/// relative error 5e-3 (measured worst: 1.8e-3 on a tensor with a small
/// gradient; the two sum 30 blocks of a quantized model in different
/// orders). The first AdamW update's change of the adapter within relative
/// L2 error 5e-2 (measured 1.6e-2: Adam divides by the gradient's own
/// scale, so entries with near-zero gradients amplify rounding
/// differences). A wrong gradient is off by order 1 in each measure.
#[test]
fn ggml_and_cpu_trainers_agree_on_gradients_and_first_update() {
    let model = transformer();
    let mut lora = Lora::new(
        &model,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..Default::default()
        },
        11,
    );
    for (i, (_, pair)) in lora.layers.iter_mut().flatten().enumerate() {
        for (j, b) in pair.b.iter_mut().enumerate() {
            *b = (((i * 7919 + j * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.05;
        }
    }
    let batch: Vec<Vec<u32>> = [
        "The quick brown fox jumps over the lazy dog while the farmer counts sheep.",
        "In 1969 the first people walked on the Moon; the mission was Apollo 11.",
    ]
    .iter()
    .map(|t| ids(&common::tokens(t)))
    .collect();
    let optim = AdamWConfig {
        lr: 1e-3,
        ..Default::default()
    };
    let run = |backend: TrainerBackend| {
        let mut t = on(
            backend,
            Trainer::with_adapter(transformer(), lora.clone(), optim.clone()),
        );
        let _g = common::serial();
        for seq in &batch {
            let weights = vec![1f32; seq.len() - 1];
            t.accumulate(seq, |lp| nll_loss(lp, &weights).1).unwrap();
        }
        let grads = t.gradients().clone();
        t.update().unwrap();
        (grads, t.adapter().clone())
    };
    let (cpu_grads, cpu_after) = run(CPU);
    let (ggml_grads, ggml_after) = run(ggml());
    let (mut worst_err, mut worst_cos) = (0f64, 1f64);
    for (c, g) in cpu_grads.tensors().zip(ggml_grads.tensors()) {
        let (err, cos) = agreement(c, g);
        worst_err = worst_err.max(err);
        worst_cos = worst_cos.min(cos);
    }
    let flat = |l: &Lora| l.tensors().flatten().copied().collect::<Vec<f32>>();
    let (global_err, _) = agreement(&flat(&cpu_grads), &flat(&ggml_grads));
    assert_eq!(
        cpu_grads.tensors().count(),
        420,
        "30 blocks x 7 projections x (A, B)"
    );
    let delta = |after: &Lora| -> Vec<f32> {
        after
            .tensors()
            .zip(lora.tensors())
            .flat_map(|(x, x0)| x.iter().zip(x0).map(|(a, b)| a - b).collect::<Vec<_>>())
            .collect()
    };
    let (update_err, _) = agreement(&delta(&cpu_after), &delta(&ggml_after));
    eprintln!("ggml vs cpu gradients: all together relative error {global_err:.2e}; per tensor worst relative error {worst_err:.2e}, worst cosine {worst_cos:.7}; first update's change: relative error {update_err:.2e}");
    assert!(global_err <= 1e-3, "gradients: relative error {global_err}");
    assert!(
        worst_cos >= 0.999 && worst_err <= 5e-3,
        "a gradient tensor: relative error {worst_err}, cosine {worst_cos}"
    );
    assert!(update_err <= 5e-2, "first update differs by {update_err}");
}

/// A GRPO group on the real model: four answers after one prompt, trained
/// with the prompt computed once (`accumulate_group`) and each sequence
/// whole (sharing off). In f32: log-probs within 1e-4 (measured: equal),
/// all gradients together within relative L2 error 1e-4 (measured 1.4e-6)
/// and each tensor's within 1e-3 (measured 4.7e-6): the same terms summed
/// in other orders. In bf16 the products round their operands, and the
/// prefix's gradient is rounded once summed over the group instead of once
/// per sequence: both bf16 runs are compared with the f32 gradient, and
/// sharing may not move bf16 further from it than 1.25x what whole
/// sequences do (measured 2.52e-2 vs 2.59e-2). `logprobs_group` returns the log-probs
/// `accumulate_group` saw.
#[test]
fn a_group_with_its_prompt_computed_once_equals_its_sequences_whole() {
    use cleaner::kernels::matmul::Precision;
    let prompt = ids(&common::tokens(
        "Question: Tom has 3 boxes of 12 pencils and gives away 7 pencils. How many pencils does he keep? Answer:",
    ));
    let answers = [
        " He keeps 29.",
        " 36 - 7 = 29 pencils.",
        " 29",
        " Tom keeps twenty-nine pencils in all.",
    ];
    let group: Vec<Vec<u32>> = answers
        .iter()
        .map(|a| [prompt.clone(), ids(&common::tokens(a))].concat())
        .collect();
    let seqs: Vec<&[u32]> = group.iter().map(Vec::as_slice).collect();
    assert!(cleaner::train::shared_prefix_len(&seqs) + 1 >= prompt.len());
    let mut lora = Lora::new(&transformer(), LoraConfig::default(), 5);
    for (i, (_, pair)) in lora.layers.iter_mut().flatten().enumerate() {
        for (j, b) in pair.b.iter_mut().enumerate() {
            *b = (((i * 31 + j * 7) % 100) as f32 / 100.0 - 0.5) * 0.02;
        }
    }
    let run = |precision: Precision, shared: bool| {
        let mut t = Trainer::with_adapter(transformer(), lora.clone(), AdamWConfig::default());
        t.set_precision(precision).unwrap();
        t.set_shared_prefix(shared);
        let _g = common::serial();
        let lps = t
            .accumulate_group(&seqs, |k, lp| {
                // A different sign and scale per sequence, and weight on
                // the prompt's positions too (all of them are shared).
                let w: Vec<f32> = (0..lp.len()).map(|p| ((p + k) % 3) as f32 - 1.0).collect();
                nll_loss(lp, &w).1
            })
            .unwrap();
        let again = t.logprobs_group(&seqs, true).unwrap();
        assert_eq!(
            lps, again,
            "{precision:?}: logprobs_group vs accumulate_group"
        );
        (lps, t.gradients().clone())
    };
    let flat = |l: &Lora| l.tensors().flatten().copied().collect::<Vec<f32>>();
    let (lp_shared, g_shared) = run(Precision::F32, true);
    let (lp_whole, g_whole) = run(Precision::F32, false);
    let worst_lp = lp_shared
        .iter()
        .flatten()
        .zip(lp_whole.iter().flatten())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let (global_err, _) = agreement(&flat(&g_shared), &flat(&g_whole));
    let worst_err = g_shared
        .tensors()
        .zip(g_whole.tensors())
        .map(|(a, b)| agreement(a, b).0)
        .fold(0f64, f64::max);
    eprintln!("f32: shared prefix vs whole sequences: log-probs worst {worst_lp:.2e}; gradients relative error {global_err:.2e} all together, {worst_err:.2e} worst tensor");
    assert!(worst_lp <= 1e-4, "f32: log-probs differ by {worst_lp}");
    assert!(global_err <= 1e-4, "f32: gradients differ by {global_err}");
    assert!(
        worst_err <= 1e-3,
        "f32: a gradient tensor differs by {worst_err}"
    );

    let (_, bf16_shared) = run(Precision::Bf16, true);
    let (_, bf16_whole) = run(Precision::Bf16, false);
    let (shared_err, _) = agreement(&flat(&bf16_shared), &flat(&g_whole));
    let (whole_err, _) = agreement(&flat(&bf16_whole), &flat(&g_whole));
    eprintln!(
        "bf16 gradients vs f32: shared prefix {shared_err:.2e}, whole sequences {whole_err:.2e}"
    );
    assert!(
        shared_err <= 1.25 * whole_err,
        "bf16 with a shared prefix is {shared_err} from f32, whole sequences {whole_err}"
    );
}
