//! The step's profile (`cleaner bench train --profile`) accounts for every
//! part of a training step: each projection, attention, norm and the
//! vocabulary is timed once per call the model makes, and the parts add up
//! to the step. Its own test binary: the profile's switch is process-wide.

use cleaner_kernels::profile;
use cleaner_models::tiny::{tiny_model, TinySpec};
use cleaner_models::{Architecture, GgufFile, Lora, LoraConfig, Transformer};

#[test]
fn a_profiled_step_times_every_part_once_per_call() {
    // Qwen3: q/k norms and biases-free projections; 3 layers, kept whole
    // or recomputed depending on the activation memory.
    let spec = TinySpec {
        n_layer: 3,
        ..TinySpec::new(Architecture::Qwen3)
    };
    let model = Transformer::from_gguf(GgufFile::from_bytes(tiny_model(spec, 5)).unwrap()).unwrap();
    let lora = Lora::new(
        &model,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..Default::default()
        },
        1,
    );
    let tokens: Vec<u32> = (0..24).map(|i| (i * 5 + 1) % 48).collect();
    let dlogprob = vec![1f32; tokens.len() - 1];
    // Keep no block (every block recomputed in the backward), then all.
    for (keep, recomputed) in [(0, 3), (usize::MAX, 0)] {
        let _ = profile::take();
        profile::set_enabled(true);
        let wall = std::time::Instant::now();
        {
            let _step = profile::span("step");
            let (_, tape) = model.forward_train_keeping(&tokens, &lora, keep).unwrap();
            let mut grads = lora.zeros_like();
            model.backward(&tape, &lora, &dlogprob, &mut grads).unwrap();
        }
        let wall = wall.elapsed().as_secs_f64();
        profile::set_enabled(false);
        let parts = profile::take();
        let calls = |name: &str| parts.get(name).map_or(0, |p| p.calls);
        let (layers, forwards) = (3, 3 + recomputed);
        // Seven projections per block and pass, each with its LoRA pair.
        let proj = "x W^T, frozen weights (+ LoRA u B^T)";
        assert_eq!(calls(proj), 7 * forwards, "keep {keep}: {parts:?}");
        assert_eq!(calls("LoRA x A^T"), 7 * forwards);
        assert_eq!(calls("dy W, frozen weights (+ LoRA g A)"), 7 * layers);
        assert_eq!(calls("LoRA dy B, dB"), 7 * layers);
        assert_eq!(calls("LoRA dA"), 7 * layers);
        // A recomputed block reuses the attention the forward saved.
        assert_eq!(calls("attention forward"), layers);
        assert_eq!(calls("attention backward"), layers);
        // Two norms and the q/k norms per block, plus the final one.
        assert_eq!(calls("RMSNorm"), 4 * forwards + 1);
        assert_eq!(calls("RMSNorm backward"), 4 * layers + 1);
        assert_eq!(calls("vocabulary: log-probs"), 1);
        assert_eq!(calls("vocabulary: log-probs backward"), 1);
        assert_eq!(calls("rope"), forwards);
        assert_eq!(calls("rope backward"), layers);
        assert_eq!(calls("SwiGLU backward"), layers);
        assert_eq!(calls("step"), 1);
        // Parts are each span's own time: together they are the step's.
        let sum: f64 = parts.values().map(|p| p.seconds).sum();
        assert!(sum <= wall, "parts {sum} s > the step's wall time {wall} s");
    }
}
