//! GRPO end to end with the real test model (SmolLM2-135M), the real
//! sandbox and llama.cpp: two steps train and change the adapter, the
//! rollout engine samples from the new adapter, metrics and checkpoints are
//! written, and a run resumed from step 1 reproduces step 2 bit for bit.
//! The same two steps train with the ggml trainer backend (on ggml's CPU
//! backend). Also: a kill -9 while checkpoints are written leaves one that
//! loads.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cleaner::agent::Trajectory;
use cleaner::models::tiny::{tiny_model, TinySpec};
use cleaner::models::{Architecture, GgufFile, Lora, LoraConfig, Transformer};
use cleaner::rl::checkpoint::{self, TrainState, STATE_VERSION};
use cleaner::rl::metrics::MetricsLog;
use cleaner::rl::{Grpo, MatmulPrecision, RunConfig, StepMetrics};
use cleaner::tasks::Item;
use cleaner::train::{AdamWConfig, BackendKind, DeviceKind, Trainer, TrainerBackend};

fn config() -> RunConfig {
    let mut c = RunConfig::from_toml(
        r#"
model = "smollm2-135m"
[engine]
slots = 5
threads = 2
max_prompt_tokens = 256
[grpo]
steps = 2
prompts_per_step = 1
group_size = 4
mini_batches = 2
seed = 3
checkpoint_every = 1
keep_checkpoints = 3
kl_to_start = true
[agent]
max_turns = 2
max_response_tokens = 48
max_turn_tokens = 48
[optim]
lr = 5e-3
# The reference backend, whatever the build: a GPU build's "auto" would
# train on ggml (tested on its own below).
[trainer]
backend = "cpu"
"#,
        "test config",
    )
    .expect("test config");
    c.model = common::test_model_path().display().to_string();
    c
}

fn tasks() -> Vec<Item> {
    ["What is 12 + 30?", "How many legs do 3 cats have?"]
        .iter()
        .enumerate()
        .map(|(i, q)| Item {
            id: format!("{}", i + 1),
            question: q.to_string(),
            answer: String::new(),
        })
        .collect()
}

/// A user reward with spread (SmolLM2 solves nothing, so the math reward
/// would leave every group degenerate): the share of digits in the reply.
fn digit_share(_: &Item, t: &Trajectory) -> f32 {
    let reply = &t.text;
    let digits = reply.chars().filter(char::is_ascii_digit).count();
    digits as f32 / reply.chars().count().max(1) as f32
}

/// Metrics without the wall-clock fields.
fn timeless(m: &StepMetrics) -> StepMetrics {
    StepMetrics {
        rollout_tokens_per_s: 0.0,
        train_tokens_per_s: 0.0,
        time_rollout_s: 0.0,
        time_sandbox_s: 0.0,
        time_train_s: 0.0,
        time_logprobs_s: 0.0,
        time_update_s: 0.0,
        time_swap_s: 0.0,
        time_step_s: 0.0,
        ..m.clone()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn two_steps_train_swap_checkpoint_and_resume_bit_for_bit() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let run_a = tmp.path().join("a");
    let mut grpo = Grpo::with_tasks(config(), &run_a, tasks())
        .expect("start run")
        .with_reward(digit_share);
    let steps = grpo.run().expect("two steps");
    assert_trained_and_swapped(&mut grpo, &steps);

    // Metrics and checkpoints on disk.
    let metrics = MetricsLog::read(&run_a.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.iter().map(|m| m.step).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(metrics, steps);
    let ckpt = checkpoint::latest(&run_a).unwrap();
    assert!(ckpt.ends_with("step-000002"), "{}", ckpt.display());
    assert_eq!(
        std::fs::read_dir(run_a.join("trajectories"))
            .unwrap()
            .count(),
        2
    );
    drop(grpo);

    // Resume a copy from step 1: step 2 comes out bit for bit.
    let run_b = tmp.path().join("b");
    copy_dir(&run_a, &run_b);
    std::fs::remove_dir_all(run_b.join("checkpoints/step-000002")).unwrap();
    std::fs::write(run_b.join("checkpoints/latest"), "step-000002").unwrap(); // dangling: falls back
    let mut resumed = Grpo::resume_with_tasks(&run_b, None, tasks())
        .expect("resume")
        .with_reward(digit_share);
    assert_eq!(resumed.step(), 1);
    let again = resumed.run().expect("step 2 again");
    assert_eq!(again.len(), 1);
    assert_eq!(timeless(&again[0]), timeless(&steps[1]));
    for f in ["adapter.gguf", "optimizer.gguf"] {
        assert!(
            read(run_a.join("checkpoints/step-000002").join(f))
                == read(run_b.join("checkpoints/step-000002").join(f)),
            "{f} differs after resume"
        );
    }
    assert_eq!(
        read(run_a.join("trajectories/step-000002.jsonl")),
        read(run_b.join("trajectories/step-000002.jsonl"))
    );
    let metrics_b = MetricsLog::read(&run_b.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics_b.len(), 2, "the resumed run replaced step 2's line");

    // A new run refuses a directory that holds a checkpoint.
    let err = Grpo::with_tasks(config(), &run_a, tasks())
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("already holds a checkpoint"),
        "{err}"
    );
}

/// Two GRPO steps trained (every step updates twice, with a gradient), the
/// adapter changed, and llama.cpp samples from the new adapter.
fn assert_trained_and_swapped(grpo: &mut Grpo, steps: &[StepMetrics]) {
    assert_eq!(steps.len(), 2);
    assert!(
        steps
            .iter()
            .all(|m| m.trained_sequences > 0 && m.updates == 2),
        "every step trains: {steps:?}"
    );
    assert!(steps
        .iter()
        .all(|m| m.grad_norm > 0.0 && m.kl_to_start.is_some()));
    // Step 1 starts from the base model: the policy equals the start.
    assert!(
        steps[0].kl_to_start.unwrap().abs() < 1e-6,
        "{:?}",
        steps[0].kl_to_start
    );
    assert!(steps[1].kl_to_start.unwrap() > 0.0);

    // The adapter changed (B starts at zero).
    let b_norm: f64 = grpo
        .trainer()
        .adapter()
        .layers
        .iter()
        .flatten()
        .map(|(_, p)| p.b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>())
        .sum();
    assert!(b_norm > 0.0, "adapter unchanged");

    // The rollout engine samples from it: llama.cpp's log-probs of a fixed
    // text moved from the base model's toward the trainer's.
    let text = "The answer is 42 because 12 plus 30 makes 42, and 3 cats have 12 legs.";
    let tokens = common::tokens(text);
    let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    let trainer_lp = grpo.trainer().logprobs(&ids, true).unwrap();
    let base_lp = grpo.trainer().logprobs(&ids, false).unwrap();
    let (llama_adapted, _) = grpo.session().decoder().score(&tokens, false).unwrap();
    let mean = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() as f64)
            .sum::<f64>()
            / a.len() as f64
    };
    let effect = mean(&trainer_lp, &base_lp);
    let gap = mean(&llama_adapted, &trainer_lp);
    let gap_base = mean(&llama_adapted, &base_lp);
    eprintln!("adapter effect {effect:.4}, llama vs trainer {gap:.4}, llama vs base {gap_base:.4}");
    assert!(
        effect > 0.1,
        "training moved the model too little to test the swap: {effect}"
    );
    assert!(
        gap < 0.5 * gap_base,
        "llama.cpp is not sampling from the new adapter: {gap} vs {gap_base}"
    );
}

#[test]
fn two_steps_train_and_swap_with_the_ggml_backend() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config();
    c.trainer.backend = BackendKind::Ggml;
    c.trainer.device = DeviceKind::Cpu;
    let mut grpo = Grpo::with_tasks(c, tmp.path(), tasks())
        .expect("start run")
        .with_reward(digit_share);
    assert!(
        grpo.trainer().backend_name().starts_with("ggml on CPU"),
        "{}",
        grpo.trainer().backend_name()
    );
    let steps = grpo.run().expect("two steps");
    assert_trained_and_swapped(&mut grpo, &steps);
    // The checkpoint's config says where it trained, and resumes there.
    drop(grpo);
    let resumed = Grpo::resume_with_tasks(tmp.path(), Some(3), tasks()).expect("resume");
    assert_eq!(resumed.config().trainer.backend, BackendKind::Ggml);
    assert!(resumed.trainer().backend_name().starts_with("ggml"));
}

/// `auto` is saved as the arithmetic this CPU picked, so a resume on
/// another CPU keeps it; a bf16 run moved to ggml (`--resume --backend
/// ggml`) continues in f32 instead of failing.
#[test]
fn auto_precision_is_saved_resolved_and_a_bf16_run_moves_to_ggml_in_f32() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config();
    c.trainer.precision = MatmulPrecision::Auto;
    let grpo = Grpo::with_tasks(c.clone(), tmp.path(), tasks()).expect("start run");
    let picked = MatmulPrecision::Auto.resolve(BackendKind::Cpu);
    assert_ne!(picked, MatmulPrecision::Auto);
    assert_eq!(grpo.config().trainer.precision, picked);
    let saved = std::fs::read_to_string(tmp.path().join("config.toml")).unwrap();
    let saved = RunConfig::from_toml(&saved, "config.toml").unwrap();
    assert_eq!(saved.trainer.precision, picked);
    drop(grpo);

    let tmp = tempfile::tempdir().unwrap();
    c.trainer.precision = MatmulPrecision::Bf16;
    let mut grpo = Grpo::with_tasks(c, tmp.path(), tasks()).expect("start bf16 run");
    grpo.set_trainer_backend(TrainerBackend::ggml(DeviceKind::Cpu))
        .expect("a bf16 run moves to ggml");
    assert_eq!(grpo.config().trainer.precision, MatmulPrecision::F32);
    assert_eq!(
        grpo.trainer().model().precision(),
        cleaner::kernels::matmul::Precision::F32
    );
    assert!(grpo.trainer().backend_name().starts_with("ggml"));
}

const CHILD_ENV: &str = "CLEANER_TEST_CHECKPOINT_DIR";

fn tiny() -> Transformer {
    let spec = TinySpec::new(Architecture::Llama);
    Transformer::from_gguf(GgufFile::from_bytes(tiny_model(spec, 5)).unwrap()).unwrap()
}

fn state(step: u64) -> TrainState {
    TrainState {
        format_version: STATE_VERSION,
        step,
        seed: step,
        prompts_drawn: step,
        next_rollout_seed: step,
        elapsed_s: 0.0,
        config: RunConfig::default().to_toml(),
    }
}

/// Not a test: the child process of `kill_during_checkpoint_writes_keeps_one_loadable`,
/// writing checkpoints of step 1, 2, 3, ... (adapter initialised from the
/// step as seed) until it is killed.
#[test]
#[ignore = "child process of kill_during_checkpoint_writes_keeps_one_loadable"]
fn checkpoint_writer_child() {
    let dir = PathBuf::from(std::env::var(CHILD_ENV).expect("run by the parent test"));
    for step in 1.. {
        let model = tiny();
        let lora = Lora::new(&model, LoraConfig::default(), step);
        let trainer = Trainer::with_adapter(model, lora, AdamWConfig::default());
        checkpoint::write(&dir, &trainer, &state(step), 2).unwrap();
    }
}

#[test]
fn kill_during_checkpoint_writes_keeps_one_loadable() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = 0x1234_5678u64;
    for round in 0..8 {
        let dir = tmp.path().join(format!("run-{round}"));
        let mut child = std::process::Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "checkpoint_writer_child",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the first complete checkpoint, then kill at a random moment.
        let t0 = std::time::Instant::now();
        while checkpoint::latest(&dir).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "child wrote no checkpoint"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis((rng >> 33) % 300));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let ckpt = checkpoint::latest(&dir).expect("a complete checkpoint survives");
        let (trainer, st) = checkpoint::load(&ckpt, tiny()).expect("it loads");
        // It is the checkpoint of its step, whole: adapter from seed = step.
        let expected = Lora::new(&tiny(), LoraConfig::default(), st.step);
        assert_eq!(
            trainer.adapter(),
            &expected,
            "round {round}: adapter of step {}",
            st.step
        );
        assert_eq!(st, state(st.step));
    }
}

#[test]
fn eval_reports_pass_at_1_as_the_mean_over_samples() {
    let _serial = common::serial();
    let mut options = cleaner::session::SessionOptions {
        slots: 4,
        threads: 2,
        max_prompt_tokens: 256,
        ..Default::default()
    };
    options.agent.max_response_tokens = 16;
    options.agent.max_turn_tokens = Some(16);
    let mut session =
        cleaner::session::Session::open(&common::test_model_path().display().to_string(), options)
            .expect("session");
    // Solved exactly when it is a problem's first sample: pass@1 = 1/3.
    let first_sample = |_: &Item, t: &Trajectory| if t.rollout == 0 { 1.0 } else { -1.0 };
    let (report, trajectories) =
        cleaner::rl::evaluate(&mut session, &tasks(), 3, &first_sample, &mut |_, _| {})
            .expect("eval");
    assert_eq!(trajectories.len(), 6);
    assert_eq!((report.problems, report.samples), (2, 3));
    assert!(
        (report.accuracy - 1.0 / 3.0).abs() < 1e-12,
        "{}",
        report.accuracy
    );
    assert!(report
        .per_problem
        .iter()
        .all(|p| p.solved == 1 && p.samples == 3));
    // Problem means do not vary: the interval is Wilson's over the 6 samples.
    assert_eq!(report.stderr, 0.0);
    assert_eq!(report.ci95, cleaner::rl::eval::wilson(1.0 / 3.0, 6.0));
    assert!(trajectories.iter().all(|t| t.reward.is_some()));
    assert_eq!(report.purify, 1.0);
}

/// The schedule counts training steps: with 3 mini-batch updates per step
/// and 4 warm-up steps, the three updates of step `s` all take
/// `lr * (s + 1) / 4`, and the peak is reached at step 3 (update 10), not
/// at update 4.
#[test]
fn warm_up_counts_training_steps_not_updates() {
    let model = tiny();
    let lora = Lora::new(&model, LoraConfig::default(), 1);
    let optim = AdamWConfig {
        lr: 1.0,
        warmup_steps: 4,
        ..Default::default()
    };
    let mut trainer = Trainer::with_adapter(model, lora, optim);
    let tokens = [1u32, 2, 3, 4];
    let mut lrs = Vec::new();
    for step in 0..6u64 {
        for _ in 0..3 {
            trainer
                .accumulate(&tokens, |lp| vec![-1.0; lp.len()])
                .unwrap();
            lrs.push(trainer.update_at(step).unwrap().lr);
        }
    }
    let want: Vec<f32> = [0.25f32, 0.5, 0.75, 1.0, 1.0, 1.0]
        .iter()
        .flat_map(|&lr| [lr; 3])
        .collect();
    assert_eq!(lrs, want);
    assert_eq!(trainer.step(), 18, "Adam counts updates");
}

/// A hand-made trajectory: a one-token prompt, then `model` model tokens.
fn made(rollout: usize, model: usize) -> Trajectory {
    use cleaner::agent::{Finish, Role};
    let tokens: Vec<_> = (0..=model)
        .map(|i| (i * (rollout + 2) % 7 + 1) as _)
        .collect();
    let mut roles = vec![Role::Model; model + 1];
    roles[0] = Role::Prompt;
    Trajectory {
        format_version: cleaner::agent::trajectory::FORMAT_VERSION,
        problem_id: "1".into(),
        problem_index: Some(0),
        rollout,
        sampler_logprobs: vec![0.0; tokens.len()],
        tokens,
        roles,
        segments: Vec::new(),
        tool_calls: Vec::new(),
        purification: Vec::new(),
        purified: false,
        turns: 1,
        response_tokens: model,
        correction_tokens: 0,
        text: String::new(),
        answer: None,
        reward: None,
        finish: Finish::Answer,
    }
}

/// One GRPO update (one mini-batch) of a fresh tiny adapter on
/// `trajectories`; the step's metrics.
fn one_update(trajectories: &[Trajectory], rewards: &[f32]) -> StepMetrics {
    let (m, passes) = grpo_step(trajectories, rewards, 1);
    assert_eq!(
        passes, m.trained_sequences,
        "no pass for zero-signal groups"
    );
    m
}

/// The training phases of one GRPO step (groups of 2, `mini_batches`
/// updates) of a fresh tiny adapter on `trajectories`: the step's metrics
/// and the training passes it announced.
fn grpo_step(
    trajectories: &[Trajectory],
    rewards: &[f32],
    mini_batches: usize,
) -> (StepMetrics, usize) {
    let (m, passes, _) = grpo_step_with(trajectories, rewards, mini_batches, true);
    (m, passes)
}

/// [`grpo_step`] with shared-prefix passes on or off; also the adapter after it.
fn grpo_step_with(
    trajectories: &[Trajectory],
    rewards: &[f32],
    mini_batches: usize,
    shared_prefix: bool,
) -> (StepMetrics, usize, Lora) {
    let mut c = config();
    c.grpo.group_size = 2;
    c.grpo.mini_batches = mini_batches;
    c.grpo.kl_to_start = false;
    let model = tiny();
    let lora = Lora::new(&model, LoraConfig::default(), 1);
    let mut trainer = Trainer::with_adapter(model, lora, c.optim.clone());
    trainer.set_shared_prefix(shared_prefix);
    let mut m = StepMetrics::default();
    let mut passes = 0;
    let mut progress = |p| {
        if let cleaner::rl::Progress::Training { total, .. } = p {
            passes = total;
        }
    };
    cleaner::rl::train_on(
        &mut trainer,
        &c,
        0,
        trajectories,
        rewards,
        &mut progress,
        &mut m,
    )
    .unwrap();
    // The training time's two parts lie within it.
    assert!(m.time_logprobs_s >= 0.0 && m.time_update_s > 0.0);
    assert!(m.time_logprobs_s + m.time_update_s <= m.time_train_s);
    (m, passes, trainer.adapter().clone())
}

/// Zero-signal groups (all rewards equal) stay in the token-mean's
/// denominator with advantage 0: next to an informative group of 2 x 3
/// model tokens, a zero-signal group of 2 x 9 scales the gradient by
/// 6 / 24, and alone it gives none.
#[test]
fn zero_signal_groups_count_in_the_denominator_without_gradient() {
    let informative = [made(0, 3), made(1, 3)];
    let silent = [made(2, 9), made(3, 9)];
    let alone = one_update(&informative, &[1.0, -1.0]);
    let both: Vec<Trajectory> = informative.iter().chain(&silent).cloned().collect();
    let mixed = one_update(&both, &[1.0, -1.0, 0.5, 0.5]);
    assert_eq!((mixed.degenerate_groups, mixed.trained_sequences), (1, 2));
    assert_eq!((mixed.trained_tokens, mixed.zero_signal_tokens), (6, 18));
    assert!(alone.grad_norm > 0.0);
    let ratio = mixed.grad_norm / alone.grad_norm;
    assert!(
        (ratio - 0.25).abs() < 1e-5,
        "gradient scaled by {ratio}, not 6/24"
    );
    let none = one_update(&silent, &[0.5, 0.5]);
    assert_eq!((none.degenerate_groups, none.zero_signal_tokens), (1, 18));
    assert_eq!(none.grad_norm, 0.0);
}

/// DAPO overlong shaping with a 20-token response limit and a buffer of 8:
/// nothing up to 12 tokens, linear to -factor at 20, -factor beyond; off
/// with a buffer of 0; the config rejects a buffer longer than the limit.
#[test]
fn overlong_penalty_is_linear_inside_the_buffer() {
    use cleaner::rl::reward::overlong_penalty;
    let p = |response| overlong_penalty(response, 20, 8, 1.0);
    assert_eq!(
        [p(0), p(12), p(14), p(16), p(20), p(25)],
        [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    );
    assert_eq!(overlong_penalty(13, 20, 8, 0.5), -0.0625);
    assert_eq!(overlong_penalty(20, 20, 0, 1.0), 0.0);
    let mut c = config();
    c.reward.overlong_buffer = 49;
    let e = c.validate().unwrap_err();
    assert_eq!(e.0, "reward.overlong_buffer", "{e:?}");
    c.reward.overlong_buffer = 48;
    c.reward.overlong_penalty_factor = -1.0;
    assert_eq!(
        c.validate().unwrap_err().0,
        "reward.overlong_penalty_factor"
    );
}

/// The first mini-batch trains the policy its old log-probs come from, so its
/// importance ratio is exactly 1: in a step of one mini-batch nothing is
/// clipped, the approximate KL is exactly 0, and the loss is the token-mean
/// of -advantage (3 tokens at +A and 5 at -A: -(3 - 5) A / 8). With two
/// mini-batches the second is scored against log-probs taken before the
/// first update moved the adapter, and its ratio is no longer 1: the same
/// metric then reads non-zero.
#[test]
fn the_first_mini_batch_has_an_importance_ratio_of_exactly_one() {
    let trajectories = [made(0, 3), made(1, 5)];
    let (m, passes) = grpo_step(&trajectories, &[1.0, -1.0], 1);
    assert_eq!((m.updates, m.clip_fraction, m.approx_kl), (1, 0.0, 0.0));
    assert_eq!(
        passes, 2,
        "no separate old log-prob pass for the first mini-batch"
    );
    let a = cleaner::rl::advantage::group_advantages(&[1.0, -1.0], 2).values;
    let (plus, minus) = (a[0].unwrap() as f64, a[1].unwrap() as f64);
    let want = -(3.0 * plus + 5.0 * minus) / 8.0;
    assert!((m.loss - want).abs() < 1e-6, "loss {} vs {want}", m.loss);
    let four: Vec<Trajectory> = (0..4).map(|r| made(r, 3 + r)).collect();
    let (m, passes) = grpo_step(&four, &[1.0, -1.0, -1.0, 1.0], 2);
    assert_eq!(m.updates, 2);
    assert_eq!(
        passes,
        4 + 2,
        "old log-probs up front for the second mini-batch only"
    );
    assert!(m.approx_kl != 0.0, "the second mini-batch's ratio moved");
}

/// Groups whose rollouts share a 24-token prompt (two groups of two, two
/// mini-batches, so old log-probs are computed up front too): the step with
/// each group's prompt computed once has the loss and gradient norm of the
/// step with every sequence whole within 1e-5 relative (they sum the same
/// terms in other orders), and its KL after the first update and its updated
/// adapter within 1e-4 of each
/// tensor's scale (measured 1.8e-5: Adam's first update divides each
/// gradient by its own magnitude, which lifts rounding in entries near 0; a
/// wrong gradient is off by order 1).
#[test]
fn a_step_with_shared_prompts_equals_one_with_whole_sequences() {
    let prompted = |rollout: usize, problem: usize, model: usize| {
        let mut t = made(rollout, model);
        let prompt: Vec<_> = (0..24)
            .map(|i| ((i * 5 + problem * 3) % 40 + 1) as _)
            .collect();
        let n = prompt.len();
        t.tokens.splice(0..1, prompt);
        t.roles.splice(0..1, vec![cleaner::agent::Role::Prompt; n]);
        t.sampler_logprobs = vec![0.0; t.tokens.len()];
        t
    };
    let trajectories = [
        prompted(0, 0, 5),
        prompted(1, 0, 8),
        prompted(2, 1, 6),
        prompted(3, 1, 4),
    ];
    let rewards = [1.0, -1.0, -1.0, 1.0];
    let (shared, _, a) = grpo_step_with(&trajectories, &rewards, 2, true);
    let (whole, _, b) = grpo_step_with(&trajectories, &rewards, 2, false);
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 * y.abs().max(1e-6);
    assert!(
        close(shared.loss, whole.loss),
        "loss {} vs {}",
        shared.loss,
        whole.loss
    );
    assert!(
        close(shared.grad_norm, whole.grad_norm),
        "gradient norm {} vs {}",
        shared.grad_norm,
        whole.grad_norm
    );
    // The KL is measured after the first mini-batch's update, so it carries
    // the updated adapters' difference (below): 1e-4 relative (measured
    // 1.4e-5 with the AVX-512 micro-kernel).
    assert!(
        (shared.approx_kl - whole.approx_kl).abs() <= 1e-4 * whole.approx_kl.abs().max(1e-6),
        "approx_kl {} vs {}",
        shared.approx_kl,
        whole.approx_kl
    );
    let mut worst = 0f32;
    for (x, y) in a.tensors().zip(b.tensors()) {
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() / scale.max(1e-12));
        }
    }
    eprintln!("shared vs whole: adapter after the step differs by {worst:.2e} of its scale");
    assert!(worst <= 1e-4, "adapters differ by {worst} of their scale");
}
