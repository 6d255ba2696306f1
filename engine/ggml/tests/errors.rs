//! Bad input gives typed errors naming the cause, never an abort: a backend
//! the build lacks, tokens the model cannot take, an adapter of the wrong
//! shape, host data that does not fit a tensor, shapes an op refuses.

mod common;

use cleaner_ggml::ffi::types;
use cleaner_ggml::{logprobs, Backend, Context, Device, DeviceLora, DeviceModel, GgmlError};
use cleaner_kernels::quant::QuantType;
use cleaner_models::{Architecture, Lora, LoraConfig};
use common::*;

#[test]
fn a_backend_the_build_lacks_is_named() {
    for d in [Device::Cuda, Device::Metal, Device::Vulkan] {
        match Backend::new(d, 1) {
            Err(GgmlError::NotCompiled { device, feature }) => {
                assert!(!d.compiled());
                assert_eq!((device, feature), (d, d.name()));
            }
            // Built with the feature: either it runs or the device is absent.
            Err(GgmlError::DeviceAbsent { .. }) | Ok(_) => assert!(d.compiled()),
            Err(e) => panic!("{d}: {e}"),
        }
    }
    assert_eq!(Device::parse("CUDA"), Some(Device::Cuda));
    assert_eq!(Device::parse("tpu"), None);
}

#[test]
fn bad_requests_are_typed_errors() {
    let (_serial, backend) = cpu();
    let model = tiny(Architecture::Llama, QuantType::Q8_0, 1);
    let dev = DeviceModel::upload(&model, &backend).unwrap();
    let n_vocab = model.config().n_vocab as u32;
    for toks in [vec![1u32], vec![1, n_vocab]] {
        let e = logprobs(&backend, &dev, None, &toks).unwrap_err();
        assert!(matches!(e, GgmlError::BadRequest(_)), "{e}");
    }
    // An adapter for another model shape.
    let other = tiny(Architecture::Qwen3, QuantType::Q8_0, 1);
    let mut lora = Lora::new(&other, LoraConfig::default(), 1);
    lora.layers.truncate(1);
    let e = DeviceLora::upload(&lora, &dev, &backend).unwrap_err();
    assert!(e.to_string().contains("layers"), "{e}");
}

#[test]
fn data_and_shape_errors_do_not_abort() {
    let (_serial, backend) = cpu();
    let ctx = Context::new(8, 0).unwrap();
    let a = ctx.new_tensor(types::F32, &[4, 3], "a").unwrap();
    let b = ctx.new_tensor(types::F32, &[5, 3], "b").unwrap();
    // No memory yet.
    assert!(matches!(a.set_f32(&[0.0; 12]), Err(GgmlError::Data { .. })));
    // ggml would abort on this product (inner dims 4 vs 5).
    let e = ctx.mul_mat(a, b).unwrap_err();
    assert!(e.to_string().contains("mul_mat"), "{e}");
    // A quantized tensor whose rows are not whole blocks.
    let e = ctx
        .new_tensor(QuantType::Q4_K.ggml_id(), &[100, 2], "q")
        .unwrap_err();
    assert!(matches!(e, GgmlError::TensorType { .. }), "{e}");
    ctx.allocate(&backend).unwrap();
    assert!(a.set_f32(&[0.0; 12]).is_ok());
    let e = a.set_f32(&[0.0; 11]).unwrap_err();
    assert!(e.to_string().contains("48 bytes"), "{e}");
    assert!(matches!(a.set_i32(&[0; 12]), Err(GgmlError::Data { .. })));
    // Context capacity.
    let small = Context::new(1, 0).unwrap();
    small.new_tensor(types::F32, &[2], "x").unwrap();
    let e = small.new_tensor(types::F32, &[2], "y").unwrap_err();
    assert!(matches!(e, GgmlError::ContextFull { .. }), "{e}");
}

/// Every node of the forward graph passes the CPU backend's supports_op
/// (the check `Backend::compute` makes before running).
#[test]
fn forward_graph_runs_only_supported_ops() {
    let (_serial, backend) = cpu();
    let model = tiny(Architecture::Qwen3, QuantType::Q4_K, 1);
    let dev = DeviceModel::upload(&model, &backend).unwrap();
    let toks = tokens(8, model.config().n_vocab);
    assert_eq!(logprobs(&backend, &dev, None, &toks).unwrap().len(), 7);
}

/// A node the backend cannot run is refused before compute, with op, types
/// and backend named: ggml's CPU backend has no product of Q8_0 weights with
/// Q4_0 activations (it wants f32 or Q8_0 on the right).
#[test]
fn an_unsupported_node_is_named_not_run() {
    let (_serial, backend) = cpu();
    let weights = Context::new(2, 0).unwrap();
    let a = weights
        .new_tensor(QuantType::Q8_0.ggml_id(), &[32, 4], "w")
        .unwrap();
    let b = weights
        .new_tensor(QuantType::Q4_0.ggml_id(), &[32, 3], "x")
        .unwrap();
    weights.allocate(&backend).unwrap();
    let ctx = Context::new(4, 2).unwrap();
    let y = ctx.mul_mat(a, b).unwrap().set_name("y").set_output();
    let graph = ctx.graph(&[y], false).unwrap();
    ctx.allocate_graph(&graph, &backend).unwrap();
    match backend.compute(&graph) {
        Err(GgmlError::Unsupported {
            op,
            ty,
            backend: name,
            node,
        }) => {
            assert_eq!((op.as_str(), node.as_str()), ("MUL_MAT", "y"));
            assert_eq!(ty, "q8_0, q4_0 -> f32");
            assert_eq!(name, backend.name());
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

/// A graph reading weights that were never given memory is refused when it
/// is allocated (the graph allocator would hand them uninitialized memory).
#[test]
fn an_operand_without_memory_is_refused() {
    let (_serial, backend) = cpu();
    let weights = Context::new(1, 0).unwrap();
    let w = weights.new_tensor(types::F32, &[8, 4], "w").unwrap();
    let ctx = Context::new(4, 1).unwrap();
    let x = ctx
        .new_tensor(types::F32, &[8, 2], "x")
        .unwrap()
        .set_input();
    let y = ctx.mul_mat(w, x).unwrap().set_name("y").set_output();
    let graph = ctx.graph(&[y], false).unwrap();
    match ctx.allocate_graph(&graph, &backend) {
        Err(GgmlError::Data { name, detail }) => {
            assert_eq!(name, "w");
            assert!(detail.contains("read by `y` but has no data"), "{detail}");
        }
        other => panic!("expected a Data error, got {other:?}"),
    }
}

/// Reading more tensors of other contexts than a context was made for is an
/// error, not ggml's abort on a full graph; so is a graph over a tensor of
/// another context.
#[test]
fn outside_tensors_are_bounded() {
    let (_serial, backend) = cpu();
    let weights = Context::new(3, 0).unwrap();
    let ws: Vec<_> = (0..3)
        .map(|i| {
            weights
                .new_tensor(types::F32, &[4], &format!("w{i}"))
                .unwrap()
        })
        .collect();
    weights.allocate(&backend).unwrap();
    let ctx = Context::new(8, 2).unwrap();
    let x = ctx.new_tensor(types::F32, &[4], "x").unwrap();
    let y = ctx.add(x, ws[0]).unwrap();
    let y = ctx.add(y, ws[1]).unwrap();
    let e = ctx.add(y, ws[2]).unwrap_err();
    assert!(matches!(e, GgmlError::ContextFull { .. }), "{e}");
    let e = ctx.graph(&[ws[0]], false).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("another context"), "{e}");
}

/// A workspace's buffer serves graph after graph; a tensor of a graph whose
/// guard was dropped has no memory any more (a typed error, never a read of
/// a buffer the next graph reuses).
#[test]
fn workspace_tensors_detach_with_their_guard() {
    let (_serial, backend) = cpu();
    let mut ws = cleaner_ggml::Workspace::new(&backend).unwrap();
    let inputs = Context::new(1, 0).unwrap();
    let x = inputs
        .new_tensor(cleaner_ggml::ffi::types::F32, &[4], "x")
        .unwrap();
    inputs.allocate(&backend).unwrap();
    x.set_f32(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let ctx = Context::new(1, 1).unwrap();
    let y = ctx.scale(x, 2.0).unwrap().set_output();
    let graph = ctx.graph(&[y], false).unwrap();
    {
        let _attached = ctx.allocate_graph_in(&graph, &mut ws).unwrap();
        backend.compute(&graph).unwrap();
        assert_eq!(y.get_f32().unwrap(), vec![2.0, 4.0, 6.0, 8.0]);
    }
    assert!(ws.bytes() >= 16);
    match y.get_f32() {
        Err(GgmlError::Data { detail, .. }) => assert!(detail.contains("no memory"), "{detail}"),
        other => panic!("expected a data error, got {other:?}"),
    }
    // The context cannot be allocated twice.
    assert!(ctx.allocate_graph_in(&graph, &mut ws).is_err());
}
