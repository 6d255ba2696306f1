//! Facts of the pinned sources, each checked there before it was written
//! down here (file and function in each test's comment), so that a change
//! of the transcription that contradicts them fails.

use super::*;
use sys::*;

fn op(ty: u32, ne: [i64; 4]) -> Operand {
    Operand::contiguous(ty, ne).expect("a type ggml knows")
}

fn cuda(n: &Node) -> Result<(), String> {
    check(n, GpuTarget::Cuda)
}

fn metal(n: &Node) -> Result<(), String> {
    check(n, GpuTarget::Metal)
}

#[test]
fn cuda_out_prod_refuses_a_quantized_src0() {
    // ggml-cuda.cu, supports_op, case GGML_OP_OUT_PROD: f32 x f32 -> f32 only.
    let out = op(GGML_TYPE_F32, [256, 64, 1, 1]);
    let b = op(GGML_TYPE_F32, [32, 64, 1, 1]);
    let q = Node::new(
        GGML_OP_OUT_PROD,
        out,
        &[op(GGML_TYPE_Q4_K, [256, 32, 1, 1]), b],
    );
    let err = cuda(&q).unwrap_err();
    assert!(err.contains("OUT_PROD needs f32"), "{err}");
    let f = Node::new(
        GGML_OP_OUT_PROD,
        out,
        &[op(GGML_TYPE_F32, [256, 32, 1, 1]), b],
    );
    assert_eq!(cuda(&f), Ok(()));
}

#[test]
fn metal_lacks_the_backward_ops_of_ggml_autograd() {
    // ggml-metal-device.m, ggml_metal_device_supports_op: no case for these
    // ops (default: false), whatever the types.
    let x = op(GGML_TYPE_F32, [64, 8, 1, 1]);
    for o in [
        GGML_OP_OUT_PROD,
        GGML_OP_RMS_NORM_BACK,
        GGML_OP_SOFT_MAX_BACK,
        GGML_OP_GET_ROWS_BACK,
        GGML_OP_REPEAT_BACK,
        GGML_OP_CROSS_ENTROPY_LOSS_BACK,
    ] {
        let n = Node::new(o, x, &[x, x]);
        let err = metal(&n).unwrap_err();
        assert!(err.contains("Metal has no"), "{}: {err}", op_name(o));
        // CUDA runs each of them on these f32 operands.
        assert_eq!(cuda(&n), Ok(()), "{}", op_name(o));
    }
    // It does have SILU_BACK (contiguous f32 of one shape) and ROPE_BACK.
    assert_eq!(metal(&Node::new(GGML_OP_SILU_BACK, x, &[x, x])), Ok(()));
    assert_eq!(metal(&Node::new(GGML_OP_ROPE_BACK, x, &[x])), Ok(()));
}

#[test]
fn get_rows_dequantizes_k_quants_on_both() {
    // The forward's dequantization: GET_ROWS of every stored weight type.
    let idx = op(GGML_TYPE_I32, [32, 1, 1, 1]);
    let out = op(GGML_TYPE_F32, [256, 32, 1, 1]);
    for ty in [
        GGML_TYPE_Q4_0,
        GGML_TYPE_Q4_1,
        GGML_TYPE_Q5_0,
        GGML_TYPE_Q8_0,
        GGML_TYPE_Q4_K,
        GGML_TYPE_Q6_K,
    ] {
        let n = Node::new(GGML_OP_GET_ROWS, out, &[op(ty, [256, 64, 1, 1]), idx]);
        assert_eq!(cuda(&n), Ok(()), "{}", type_name(ty));
        assert_eq!(metal(&n), Ok(()), "{}", type_name(ty));
    }
    // ggml-cuda.cu: IQ4_NL rows must be whole 256-value super-blocks.
    let iq = |n0: i64| {
        Node::new(
            GGML_OP_GET_ROWS,
            op(GGML_TYPE_F32, [n0, 32, 1, 1]),
            &[op(GGML_TYPE_IQ4_NL, [n0, 64, 1, 1]), idx],
        )
    };
    assert!(cuda(&iq(96)).is_err());
    assert_eq!(cuda(&iq(512)), Ok(()));
    // ggml-metal-device.m: everything but NVFP4 and TQ1_0.
    assert_eq!(metal(&iq(96)), Ok(()));
}

#[test]
fn binary_ops_need_matching_types_on_metal_only() {
    // Metal: src0 and src1 of one type; CUDA: any mix of f32 and f16.
    let a = op(GGML_TYPE_F32, [64, 8, 1, 1]);
    let b = op(GGML_TYPE_F16, [64, 8, 1, 1]);
    let n = Node::new(GGML_OP_ADD, a, &[a, b]);
    assert!(metal(&n).unwrap_err().contains("one type"));
    assert_eq!(cuda(&n), Ok(()));
    assert_eq!(metal(&Node::new(GGML_OP_MUL, a, &[a, a])), Ok(()));
}

#[test]
fn mul_mat_of_an_f16_src1() {
    // CUDA: f16 src1 needs f16 src0 (no Hadamard hint here).
    let w = op(GGML_TYPE_F32, [128, 32, 1, 1]);
    let few = op(GGML_TYPE_F16, [128, 4, 1, 1]);
    let many = op(GGML_TYPE_F16, [128, 16, 1, 1]);
    let out = |n1| op(GGML_TYPE_F32, [32, n1, 1, 1]);
    assert!(cuda(&Node::new(GGML_OP_MUL_MAT, out(16), &[w, many])).is_err());
    // Metal: f32 x f16 only on the matrix-matrix path, ne11 > 8.
    assert!(metal(&Node::new(GGML_OP_MUL_MAT, out(4), &[w, few])).is_err());
    assert_eq!(
        metal(&Node::new(GGML_OP_MUL_MAT, out(16), &[w, many])),
        Ok(())
    );
    // Both: quantized weights times f32 activations.
    let q = op(GGML_TYPE_Q4_K, [256, 32, 1, 1]);
    let x = op(GGML_TYPE_F32, [256, 4, 1, 1]);
    let n = Node::new(GGML_OP_MUL_MAT, out(4), &[q, x]);
    assert_eq!(cuda(&n), Ok(()));
    assert_eq!(metal(&n), Ok(()));
}

#[test]
fn layouts_matter() {
    // CUDA unary ops need a contiguous src0; a transposed view is not.
    let x = op(GGML_TYPE_F32, [64, 8, 1, 1]);
    let xt = x.swapped(0, 1);
    let mut silu = Node::new(GGML_OP_UNARY, op(GGML_TYPE_F32, [8, 64, 1, 1]), &[xt]);
    silu.params[0] = GGML_UNARY_OP_SILU as i32;
    assert!(cuda(&silu).unwrap_err().contains("contiguous"));
    // Metal asks only for packed rows: a transposed view has none either.
    assert!(metal(&silu).is_err());
    silu.src[0] = Some(op(GGML_TYPE_F32, [8, 64, 1, 1]));
    assert_eq!(cuda(&silu), Ok(()));
    assert_eq!(metal(&silu), Ok(()));
    assert_eq!(silu.op_desc(), "SILU");
}

#[test]
fn soft_max_back_with_alibi_is_refused_by_cuda() {
    // ggml-cuda.cu: SOFT_MAX_BACK only with max_bias (param float 1) == 0.
    let x = op(GGML_TYPE_F32, [64, 8, 1, 1]);
    let mut n = Node::new(GGML_OP_SOFT_MAX_BACK, x, &[x, x]);
    assert_eq!(cuda(&n), Ok(()));
    n.params[1] = 8.0f32.to_bits() as i32;
    assert!(cuda(&n).unwrap_err().contains("max_bias"));
}

#[test]
fn ops_not_transcribed_are_refused() {
    let x = op(GGML_TYPE_F32, [64, 8, 1, 1]);
    for target in GpuTarget::ALL {
        let err = check(&Node::new(GGML_OP_IM2COL, x, &[x, x]), target).unwrap_err();
        assert!(err.contains("not transcribed"), "{target}: {err}");
    }
    // CUDA's flash attention depends on the GPU: refused, said so.
    let fa = Node::new(GGML_OP_FLASH_ATTN_EXT, x, &[x, x, x]);
    assert!(cuda(&fa).unwrap_err().contains("compute capability"));
}

#[test]
fn a_node_missing_a_source_is_an_error_not_a_panic() {
    let x = op(GGML_TYPE_F32, [64, 8, 1, 1]);
    for target in GpuTarget::ALL {
        let err = check(&Node::new(GGML_OP_MUL_MAT, x, &[x]), target).unwrap_err();
        assert!(err.contains("lacks source 1"), "{target}: {err}");
    }
}

#[test]
fn contiguity_follows_ggml() {
    // ggml.c, ggml_is_contiguous_m_n / _rows / ggml_is_transposed on a
    // permuted 3-D view: [hd, heads, tok] -> [hd, tok, heads].
    let x = op(GGML_TYPE_F32, [128, 8, 16, 1]);
    let p = x.swapped(1, 2);
    assert!(x.is_contiguous() && x.is_contiguous_1() && x.is_contiguous_2());
    assert!(!p.is_contiguous() && !p.is_contiguous_1());
    assert!(p.is_contiguous_rows() && !p.is_transposed());
    assert!(p.is_contiguous_2(), "dims 1 and 2 may have any stride");
    let t = x.swapped(0, 1);
    assert!(t.is_transposed() && !t.is_contiguous_rows());
    // A quantized row is packed when its stride is one block's bytes.
    let q = op(GGML_TYPE_Q4_K, [512, 4, 1, 1]);
    assert!(q.quantized() && q.is_contiguous() && q.is_contiguous_to_3());
}

const VK: GpuTarget = GpuTarget::Vulkan(VulkanDevice::LIMIT_32BIT);

#[test]
fn vulkan_mul_mat_does_not_broadcast_dim_3() {
    // ggml-vulkan.cpp: MUL_MAT needs src0->ne[3] == src1->ne[3]; CUDA
    // broadcasts.
    let a = op(GGML_TYPE_F32, [64, 32, 1, 1]);
    let b = op(GGML_TYPE_F32, [64, 8, 1, 2]);
    let n = Node::new(GGML_OP_MUL_MAT, op(GGML_TYPE_F32, [32, 8, 1, 2]), &[a, b]);
    assert!(check(&n, VK).unwrap_err().contains("dim 3"));
    assert_eq!(cuda(&n), Ok(()));
}

#[test]
fn vulkan_refuses_operands_past_the_devices_range() {
    // ggml-vulkan.cpp: every operand within max_buffer_size and, without
    // 64-bit shader indexing, maxStorageBufferRange. 5 GiB of f32:
    let big = op(GGML_TYPE_F32, [1 << 20, 1280, 1, 1]);
    assert_eq!(big.n_bytes(), 5 << 30);
    let n = Node::new(GGML_OP_SCALE, big, &[big]);
    assert!(check(&n, VK).unwrap_err().contains("exceeds"));
    let wide = VulkanDevice {
        max_buffer_size: 1 << 40,
        shader_64b_indexing: true,
        ..VulkanDevice::LIMIT_32BIT
    };
    assert_eq!(check(&n, GpuTarget::Vulkan(wide)), Ok(()));
    assert_eq!(cuda(&n), Ok(()));
}

#[test]
fn vulkan_out_prod_needs_contiguous_operands() {
    // ggml-vulkan.cpp: OUT_PROD of contiguous f32 only; CUDA takes any
    // layout of f32.
    let a = op(GGML_TYPE_F32, [256, 32, 1, 1]);
    let g = op(GGML_TYPE_F32, [64, 32, 1, 1]).swapped(0, 1);
    let n = Node::new(
        GGML_OP_OUT_PROD,
        op(GGML_TYPE_F32, [256, 64, 1, 1]),
        &[a, g],
    );
    assert!(check(&n, VK).unwrap_err().contains("contiguous"));
    assert_eq!(cuda(&n), Ok(()));
    let g = op(GGML_TYPE_F32, [32, 64, 1, 1]);
    let n = Node::new(
        GGML_OP_OUT_PROD,
        op(GGML_TYPE_F32, [256, 64, 1, 1]),
        &[a, g],
    );
    assert_eq!(check(&n, VK), Ok(()));
}

#[test]
fn n_bytes_follows_ggml() {
    // ggml.c, ggml_nbytes: a view spans first to last element.
    let x = op(GGML_TYPE_F32, [128, 8, 16, 1]);
    assert_eq!(x.n_bytes(), 128 * 8 * 16 * 4);
    assert_eq!(x.swapped(1, 2).n_bytes(), x.n_bytes());
    let q = op(GGML_TYPE_Q4_K, [512, 4, 1, 1]);
    assert_eq!(q.n_bytes(), 4 * 2 * 144);
}
