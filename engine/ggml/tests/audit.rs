//! The op audit on every graph of a training step, at the shapes and
//! weight types of Qwen2.5-0.5B and Qwen3-4B in Q4_K_M (no weights: planned
//! tensors without memory): the trainer's graphs must pass CUDA's, Metal's
//! and Vulkan's `supports_op` as transcribed in `cleaner_ggml::audit`;
//! ggml's automatic backward (the test reference) must fail Metal and
//! Vulkan with exactly the ops known to be missing there, which shows the
//! audit can fail.

use cleaner_ggml::audit::{audit, GpuTarget, Node, Violation, VulkanDevice};
use cleaner_ggml::plan::{audit_step, for_each_stage};
use cleaner_ggml::reference::with_autograd_graph;
use cleaner_ggml::shapes::{qwen2_5_coder_0_5b_q4_k_m, qwen3_4b_q4_k_m, ModelShape};
use cleaner_ggml::Chunks;
use cleaner_ggml::{DeviceLora, DeviceModel, Graph};
use cleaner_models::Proj;
use std::collections::BTreeSet;

/// LoRA as the issue sizes it: rank 16 on every projection.
const RANK: usize = 16;

/// Several query blocks, head chunks and vocabulary blocks at T = 300.
const SMALLISH: Chunks = Chunks {
    query_block: 128,
    head_tokens: 128,
    vocab_block: 65536,
};

fn shapes() -> [ModelShape; 2] {
    [qwen2_5_coder_0_5b_q4_k_m(), qwen3_4b_q4_k_m()]
}

fn list(v: &[Violation]) -> String {
    v.iter()
        .map(|v| format!("  {v}\n"))
        .collect::<Vec<_>>()
        .concat()
}

/// The step's graphs at T = 4096 with the default chunks, and at T = 1000
/// with chunks that leave short last blocks (other shapes of the same ops).
#[test]
fn training_step_runs_on_cuda_metal_and_vulkan_at_qwen_shapes() {
    let odd = Chunks {
        query_block: 384,
        head_tokens: 96,
        vocab_block: 20000,
    };
    for shape in shapes() {
        let model = DeviceModel::planned(&shape).unwrap();
        let lora = DeviceLora::planned(&model, RANK, 32.0, &Proj::ALL).unwrap();
        for (n_tok, chunks) in [(4096, Chunks::default()), (1000, odd)] {
            for target in GpuTarget::ALL {
                let (v, nodes) = audit_step(&model, &lora, n_tok, chunks, target).unwrap();
                assert!(
                    v.is_empty(),
                    "{} step, T = {n_tok}, on {target}: {} nodes refused:\n{}",
                    shape.name,
                    v.len(),
                    list(&v[..v.len().min(20)])
                );
                eprintln!(
                    "{} training step, T = {n_tok}, {chunks:?}: {nodes} nodes, all run on {target}",
                    shape.name
                );
            }
        }
    }
}

/// The ops of `v`, by ggml's description.
fn ops(v: &[Violation]) -> BTreeSet<String> {
    v.iter().map(|v| v.op.clone()).collect()
}

#[test]
fn autograd_backward_fails_on_metal_and_vulkan() {
    // ggml's backward of the forward: OUT_PROD for every product's
    // gradient, RMS_NORM_BACK, SOFT_MAX_BACK for the attention and the
    // log-softmax head, GET_ROWS_BACK for the gather of the target logits,
    // REPEAT_BACK for the head's row mean broadcast over the vocabulary.
    // Metal's supports_op has none of them; CUDA runs all five on the f32
    // operands this graph gives them (its OUT_PROD refuses only non-f32, and
    // the forward dequantizes every weight before its product).
    let metal_lacks: BTreeSet<String> = [
        "GET_ROWS_BACK",
        "OUT_PROD",
        "REPEAT_BACK",
        "RMS_NORM_BACK",
        "SOFT_MAX_BACK",
    ]
    .map(String::from)
    .into();
    for shape in shapes() {
        let model = DeviceModel::planned(&shape).unwrap();
        let lora = DeviceLora::planned(&model, RANK, 32.0, &Proj::ALL).unwrap();
        with_autograd_graph(&model, &lora, 32, |graph| {
            let cuda = audit(graph, GpuTarget::Cuda);
            assert!(
                cuda.is_empty(),
                "{} backward on CUDA:\n{}",
                shape.name,
                list(&cuda)
            );
            let metal = audit(graph, GpuTarget::Metal);
            assert_eq!(
                ops(&metal),
                metal_lacks,
                "{}:\n{}",
                shape.name,
                list(&metal)
            );
            for v in &metal {
                assert!(v.rule.contains("Metal has no"), "{v}");
            }
            // Vulkan has all five, but its OUT_PROD needs contiguous operands
            // and ggml's backward of a product feeds it a transposed gradient.
            let vulkan = audit(graph, GpuTarget::Vulkan(VulkanDevice::LIMIT_32BIT));
            assert_eq!(
                ops(&vulkan),
                ["OUT_PROD".to_string()].into(),
                "{}:\n{}",
                shape.name,
                list(&vulkan)
            );
            for v in &vulkan {
                assert!(v.rule.contains("contiguous"), "{v}");
            }
            eprintln!(
                "{} autograd backward: {} nodes, {} refused by Metal ({:?}), {} by Vulkan, e.g. {}",
                shape.name,
                graph.n_nodes(),
                metal.len(),
                ops(&metal),
                vulkan.len(),
                vulkan[0]
            );
        })
        .unwrap();
    }
}

/// Every node and source of `graph`: the audit's contiguity predicates
/// (pure Rust) against ggml's own.
fn contiguity_matches_ggml(graph: &Graph<'_>) -> usize {
    let mut n = 0;
    for t in graph.nodes() {
        for (i, u) in std::iter::once(Some(t))
            .chain((0..10).map(|i| t.src(i)))
            .enumerate()
        {
            let Some(u) = u else { continue };
            let d = Node::of(u).out;
            let ours = [
                d.is_contiguous(),
                d.is_contiguous_1(),
                d.is_contiguous_2(),
                d.is_contiguous_rows(),
                d.is_transposed(),
            ];
            assert_eq!(
                ours,
                u.ggml_contiguity(),
                "node `{}` operand {i} ({:?}, {:?})",
                t.name(),
                d.ne,
                d.nb
            );
            n += 1;
        }
    }
    n
}

#[test]
fn the_audits_contiguity_is_ggmls() {
    let shape = qwen3_4b_q4_k_m();
    let model = DeviceModel::planned(&shape).unwrap();
    let lora = DeviceLora::planned(&model, RANK, 32.0, &Proj::ALL).unwrap();
    let n = with_autograd_graph(&model, &lora, 32, contiguity_matches_ggml).unwrap();
    assert!(n > 10_000, "{n} operands");
    // The step's own graphs (views, transposes, pads and permutes of every
    // kind the trainer makes).
    let mut m = 0;
    for_each_stage(&model, &lora, 300, SMALLISH, |_, g| {
        m += contiguity_matches_ggml(g);
        Ok(())
    })
    .unwrap();
    assert!(m > 10_000, "{m} operands");
}
