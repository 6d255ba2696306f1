//! Memory planning without allocating: ggml's graph allocator sizes a
//! graph's working memory on the CPU buffer type, counting the graph's own
//! tensors and not the weights it reads. Today's forward at Qwen3-4B,
//! T = 4096, is planned and printed (the budget test belongs to the
//! block-checkpointed backward that replaces it).

mod common;

use cleaner_ggml::ffi::types;
use cleaner_ggml::plan::{forward_context, forward_graph};
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

#[test]
fn forward_at_qwen3_4b_t4096_is_planned() {
    let (_serial, backend) = cpu();
    let shape = qwen3_4b_q4_k_m();
    let c = shape.config.clone();
    let n_tok = 4096;
    let model = DeviceModel::planned(&shape).unwrap();
    let lora = DeviceLora::planned(&model, 16, 32.0, &Proj::ALL).unwrap();
    for lora in [None, Some(&lora)] {
        let ctx = forward_context(&model, lora).unwrap();
        let graph = forward_graph(&ctx, &model, lora, n_tok).unwrap();
        let bytes = plan_bytes(&graph, &backend).unwrap();
        // The logits [n_vocab, T - 1] f32 and their softmax are live at
        // once: a plan below that has lost tensors.
        let logits = c.n_vocab * (n_tok - 1) * 4;
        assert!(bytes >= 2 * logits, "{bytes} < 2 x {logits}");
        eprintln!(
            "{} forward, T = {n_tok}, adapter {}: planned {:.2} GiB of working memory \
             (weights {:.2} GiB not counted; logits alone {:.2} GiB)",
            shape.name,
            lora.is_some(),
            bytes as f64 / GIB,
            shape.weight_bytes() as f64 / GIB,
            logits as f64 / GIB
        );
    }
}
