//! Memory planning without allocating: ggml's graph allocator sizes a
//! graph's working memory on the CPU buffer type, counting the graph's own
//! tensors and not the weights it reads. A training step at Qwen3-4B,
//! T = 4096, stays within the trainer's documented budget.

mod common;

use cleaner_ggml::ffi::types;
use cleaner_ggml::plan::plan_step;
use cleaner_ggml::shapes::qwen3_4b_q4_k_m;
use cleaner_ggml::{plan_bytes, Context, DeviceLora, DeviceModel, GgmlError};
use cleaner_models::Proj;
use common::cpu;

const GIB: f64 = (1u64 << 30) as f64;

#[test]
fn plan_counts_the_graph_and_not_the_weights() {
    let (_serial, backend) = cpu();
    // A plan-only "weight" of 1024 f32 and one node reading it: the plan is
    // the node's 4096 bytes, not 8192.
    let weights = Context::new(1, 0).unwrap();
    let w = weights.new_tensor(types::F32, &[1024], "w").unwrap();
    weights.plan_only().unwrap();
    let ctx = Context::new(1, 1).unwrap();
    let y = ctx.scale(w, 2.0).unwrap().set_output();
    let graph = ctx.graph(&[y], false).unwrap();
    assert_eq!(plan_bytes(&graph, &backend).unwrap(), 4096);
    // A plan-only context holds no memory and takes none later.
    assert_eq!(weights.allocated_bytes(), 0);
    assert!(weights.allocate(&backend).is_err());
}

#[test]
fn a_weight_placed_nowhere_is_an_error() {
    let (_serial, backend) = cpu();
    let weights = Context::new(1, 0).unwrap();
    let w = weights.new_tensor(types::F32, &[1024], "w").unwrap();
    let ctx = Context::new(1, 1).unwrap();
    let graph = ctx.graph(&[ctx.scale(w, 2.0).unwrap()], false).unwrap();
    match plan_bytes(&graph, &backend) {
        Err(GgmlError::Data { name, detail }) => {
            assert_eq!(name, "w");
            assert!(detail.contains("placed nowhere"), "{detail}");
        }
        other => panic!("expected a data error, got {other:?}"),
    }
}

#[test]
fn a_planned_model_cannot_be_computed() {
    let (_serial, backend) = cpu();
    let model = DeviceModel::planned(&qwen3_4b_q4_k_m()).unwrap();
    match cleaner_ggml::logprobs(&backend, &model, None, &[1, 2, 3]) {
        Err(GgmlError::Data { name, detail }) => {
            assert_eq!(name, "token_embd.weight");
            assert!(detail.contains("no data"), "{detail}");
        }
        other => panic!("expected a data error, got {other:?}"),
    }
}

/// The budget `docs/gpu.md` documents for the trainer next to the rollout
/// engine on a 24 GB card, at Qwen3-4B Q4_K_M, LoRA r = 16 on every
/// projection, T = 4096: weights + adapter + the step's working memory.
const QWEN3_4B_T4096_BUDGET_GIB: f64 = 8.0;

#[test]
fn training_step_at_qwen3_4b_t4096_fits_the_budget() {
    let (_serial, backend) = cpu();
    let shape = qwen3_4b_q4_k_m();
    let c = shape.config.clone();
    let n_tok = 4096;
    let model = DeviceModel::planned(&shape).unwrap();
    let lora = DeviceLora::planned(&model, 16, 32.0, &Proj::ALL).unwrap();
    let plan = plan_step(
        &backend,
        &model,
        &lora,
        n_tok,
        cleaner_ggml::Chunks::default(),
    )
    .unwrap();
    // The saved block inputs alone: (n_layer + 1) x n_embd x T f32; a plan
    // below that has lost the checkpoints.
    let checkpoints = (c.n_layer + 1) * c.n_embd * n_tok * 4;
    assert!(plan.sequence >= checkpoints, "{plan:?}");
    // A block's backward holds at least its feed-forward activations
    // (gate, up and their gradients, n_ff x T f32 each).
    assert!(plan.peak_graph >= 4 * c.n_ff * n_tok * 4, "{plan:?}");
    // rank x (n_in + n_out) f32 per projection, summed over the seven.
    let adapter = c.n_layer * 16 * 4 * (7 * c.n_embd + 2 * c.q_dim() + 2 * c.kv_dim() + 3 * c.n_ff);
    let total = shape.weight_bytes() + adapter + plan.working_bytes();
    eprintln!(
        "{} training step, T = {n_tok}, {:?}: weights {:.2} GiB + adapter {:.3} GiB + sequence {:.2} GiB + peak stage graph {:.2} GiB ({:?}) = {:.2} GiB",
        shape.name,
        plan.chunks,
        shape.weight_bytes() as f64 / GIB,
        adapter as f64 / GIB,
        plan.sequence as f64 / GIB,
        plan.peak_graph as f64 / GIB,
        plan.peak_stage,
        total as f64 / GIB
    );
    assert!(
        (total as f64) / GIB <= QWEN3_4B_T4096_BUDGET_GIB,
        "{:.2} GiB > {QWEN3_4B_T4096_BUDGET_GIB} GiB",
        total as f64 / GIB
    );
}

/// A budget below what a step needs is a typed error naming the parts,
/// before anything is allocated; at or above it, no error.
#[test]
fn a_step_over_the_budget_is_a_typed_error() {
    let (_serial, backend) = cpu();
    let model = common::tiny(
        cleaner_models::Architecture::Qwen3,
        cleaner_kernels::quant::QuantType::Q8_0,
        3,
    );
    let lora = common::adapter(&model, 4);
    let dev = DeviceModel::upload(&model, &backend).unwrap();
    let dev_lora = DeviceLora::upload(&lora, &dev, &backend).unwrap();
    let plan = plan_step(
        &backend,
        &dev,
        &dev_lora,
        64,
        cleaner_ggml::Chunks::default(),
    )
    .unwrap();
    let needs = dev.bytes() + dev_lora.bytes() + plan.working_bytes();
    cleaner_ggml::check_budget(&backend, &dev, &dev_lora, &plan, needs).unwrap();
    match cleaner_ggml::check_budget(&backend, &dev, &dev_lora, &plan, needs - 1) {
        Err(GgmlError::OverBudget {
            n_tok, needs_mib, ..
        }) => {
            assert_eq!(n_tok, 64);
            assert_eq!(needs_mib, needs.div_ceil(1 << 20));
        }
        other => panic!("expected OverBudget, got {other:?}"),
    }
    // The plan is what the step allocates: the sequence buffer of a real
    // forward_train is the planned one.
    let toks = common::tokens(64, model.config().n_vocab);
    let (_, ckpt) = cleaner_ggml::forward_train(
        &backend,
        &dev,
        &dev_lora,
        &toks,
        cleaner_ggml::Chunks::default(),
    )
    .unwrap();
    assert_eq!(ckpt.bytes(), plan.sequence);
}
