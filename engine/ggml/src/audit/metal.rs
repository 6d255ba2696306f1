//! Metal: a transcription of `ggml/src/ggml-metal/ggml-metal-device.m,
//! ggml_metal_device_supports_op` (with `ggml_metal_supports_mul_mat_op`
//! there and `ggml/src/ggml-metal/ggml-metal-common.cpp,
//! ggml_metal_op_mul_mat_use_mm / ggml_metal_op_mul_mat_use_fwht`) of the
//! pinned llama.cpp, for the ops a training graph could use.
//!
//! The Metal switch has no case for `OUT_PROD`, `RMS_NORM_BACK`,
//! `SOFT_MAX_BACK`, `GET_ROWS_BACK`, `REPEAT_BACK`, `CROSS_ENTROPY_LOSS(_BACK)`,
//! `DIAG_MASK_INF` or `ADD1`: its `default: return false` refuses them, and
//! so does this transcription. It does run `SILU_BACK` and `ROPE_BACK`.

use super::{rule, Node, Operand};
use crate::ffi::{op_name, type_name};
use llama_cpp_sys_2 as sys;

const SRC: &str = "ggml-metal-device.m, ggml_metal_device_supports_op";

/// The device properties the rules read (`ggml_metal_device_props`).
pub(super) struct Props {
    has_simdgroup_reduction: bool,
    has_simdgroup_mm: bool,
    has_bfloat: bool,
    max_threadgroup_memory: usize,
}

/// An Apple7-family GPU (M1 and later): `ggml_metal_device_init` sets SIMD
/// group reduction and matrix ops from `MTLGPUFamilyApple7`, bfloat from
/// `MTLGPUFamilyApple6` (unless `GGML_METAL_BF16_DISABLE`); Apple GPUs have
/// 32 KiB of threadgroup memory.
pub(super) const APPLE7: Props = Props {
    has_simdgroup_reduction: true,
    has_simdgroup_mm: true,
    has_bfloat: true,
    max_threadgroup_memory: 32 * 1024,
};

/// ggml-metal-common.cpp, `ggml_metal_fwht_supported_size`.
fn fwht_size(n: i64, max_tg: usize) -> bool {
    match n {
        64 | 128 | 256 | 512 => true,
        1024 | 2048 | 4096 | 8192 => n as usize * 4 <= max_tg,
        _ => false,
    }
}

/// ggml-metal-common.cpp, `ggml_metal_op_mul_mat_use_fwht`.
fn use_fwht(n: &Node, b: &Operand, max_tg: usize) -> bool {
    n.params[1] == sys::GGML_HINT_SRC0_IS_HADAMARD as i32
        && n.out.ty == sys::GGML_TYPE_F32
        && (b.ty == sys::GGML_TYPE_F32 || b.ty == sys::GGML_TYPE_F16)
        && b.is_contiguous()
        && n.out.is_contiguous()
        && b.same_shape(&n.out)
        && fwht_size(b.ne[0], max_tg)
}

/// ggml-metal-common.cpp, `ggml_metal_op_mul_mat_use_mm`.
fn use_mm(a: &Operand, b: &Operand, p: &Props) -> bool {
    !a.is_transposed() && !b.is_transposed() && p.has_simdgroup_mm && a.ne[0] >= 64 && b.ne[1] > 8
}

/// ggml-metal-device.m, `ggml_metal_supports_mul_mat_op` for `MUL_MAT`
/// (`src0_f16_has_mv` true).
fn mul_mat(a: &Operand, b: &Operand, p: &Props) -> Result<(), String> {
    let why = |s: String| format!("{s} ({SRC}, ggml_metal_supports_mul_mat_op)");
    if !p.has_simdgroup_reduction || a.ty == sys::GGML_TYPE_NVFP4 || a.ty == sys::GGML_TYPE_TQ1_0 {
        return Err(why(format!(
            "MUL_MAT needs SIMD group reduction and runs no {} src0",
            type_name(a.ty)
        )));
    }
    if b.ty != sys::GGML_TYPE_F16 || a.ty == sys::GGML_TYPE_F16 {
        return Ok(());
    }
    rule(a.ty != sys::GGML_TYPE_BF16 && use_mm(a, b, p), || {
        why(format!(
            "MUL_MAT of f16 src1 with {} src0 runs only on the matrix-matrix path \
             (src0 not transposed, ne00 >= 64, ne11 > 8, not bf16)",
            type_name(a.ty)
        ))
    })
}

/// `(src0, result)` type pairs `SET`, `CPY`, `DUP` and `CONT` convert.
fn copies(from: u32, to: u32) -> bool {
    use sys::*;
    match from {
        GGML_TYPE_F32 => [
            GGML_TYPE_F32,
            GGML_TYPE_F16,
            GGML_TYPE_BF16,
            GGML_TYPE_Q8_0,
            GGML_TYPE_Q1_0,
            GGML_TYPE_Q2_0,
            GGML_TYPE_Q4_0,
            GGML_TYPE_Q4_1,
            GGML_TYPE_Q5_0,
            GGML_TYPE_Q5_1,
            GGML_TYPE_IQ4_NL,
            GGML_TYPE_TQ2_0,
            GGML_TYPE_I32,
        ]
        .contains(&to),
        GGML_TYPE_F16 => to == GGML_TYPE_F32 || to == GGML_TYPE_F16,
        GGML_TYPE_BF16 => to == GGML_TYPE_F32 || to == GGML_TYPE_BF16,
        GGML_TYPE_Q1_0 | GGML_TYPE_Q2_0 | GGML_TYPE_Q4_0 | GGML_TYPE_Q4_1 | GGML_TYPE_Q5_0
        | GGML_TYPE_Q5_1 | GGML_TYPE_Q8_0 | GGML_TYPE_TQ2_0 => {
            to == GGML_TYPE_F32 || to == GGML_TYPE_F16
        }
        GGML_TYPE_I32 => to == GGML_TYPE_F32 || to == GGML_TYPE_I32,
        _ => false,
    }
}

/// Whether the pinned Metal backend on a GPU with `p` runs `n`; `Err`
/// names the rule.
pub(super) fn supports(n: &Node, p: &Props) -> Result<(), String> {
    use sys::*;
    let t = |ty: u32| type_name(ty);
    let f32_or_f16 = |ty: u32| ty == GGML_TYPE_F32 || ty == GGML_TYPE_F16;
    let why = |s: String| format!("{s} ({SRC})");
    let reduction = p.has_simdgroup_reduction;
    if !p.has_bfloat {
        let bf16 = n.out.ty == GGML_TYPE_BF16
            || (0..3).any(|i| n.src(i).is_some_and(|s| s.ty == GGML_TYPE_BF16));
        rule(!bf16, || why("no bfloat on this GPU".into()))?;
    }
    match n.op {
        // `case GGML_OP_PAD: return op->src[0]->type == GGML_TYPE_F32;`
        GGML_OP_PAD => rule(n.s(0)?.ty == GGML_TYPE_F32, || {
            why("PAD runs f32 only".into())
        }),
        GGML_OP_SCALE | GGML_OP_FILL | GGML_OP_CLAMP | GGML_OP_SQR | GGML_OP_SQRT | GGML_OP_SIN
        | GGML_OP_COS | GGML_OP_LOG => {
            let a = n.s(0)?;
            rule(a.is_contiguous_rows() && f32_or_f16(a.ty), || {
                why(format!(
                    "{} needs f32 or f16 src0 with rows packed",
                    op_name(n.op)
                ))
            })
        }
        GGML_OP_UNARY => {
            let known = [
                GGML_UNARY_OP_TANH,
                GGML_UNARY_OP_RELU,
                GGML_UNARY_OP_SIGMOID,
                GGML_UNARY_OP_GELU,
                GGML_UNARY_OP_GELU_ERF,
                GGML_UNARY_OP_GELU_QUICK,
                GGML_UNARY_OP_SILU,
                GGML_UNARY_OP_ELU,
                GGML_UNARY_OP_NEG,
                GGML_UNARY_OP_ABS,
                GGML_UNARY_OP_SGN,
                GGML_UNARY_OP_STEP,
                GGML_UNARY_OP_HARDSWISH,
                GGML_UNARY_OP_HARDSIGMOID,
                GGML_UNARY_OP_EXP,
                GGML_UNARY_OP_SOFTPLUS,
                GGML_UNARY_OP_EXPM1,
                GGML_UNARY_OP_FLOOR,
                GGML_UNARY_OP_CEIL,
                GGML_UNARY_OP_ROUND,
                GGML_UNARY_OP_TRUNC,
                GGML_UNARY_OP_XIELU,
            ];
            rule(known.contains(&n.sub_op()), || {
                why(format!("unary op {} is not among Metal's", n.op_desc()))
            })?;
            let a = n.s(0)?;
            rule(a.is_contiguous_rows() && f32_or_f16(a.ty), || {
                why("unary ops need f32 or f16 src0 with rows packed".into())
            })
        }
        GGML_OP_SILU_BACK => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(
                a.ty == GGML_TYPE_F32
                    && b.ty == GGML_TYPE_F32
                    && n.out.ty == GGML_TYPE_F32
                    && a.is_contiguous()
                    && b.is_contiguous()
                    && n.out.is_contiguous()
                    && a.same_shape(b),
                || why("SILU_BACK needs contiguous f32 operands of one shape".into()),
            )
        }
        GGML_OP_GLU => {
            let known = [
                GGML_GLU_OP_REGLU,
                GGML_GLU_OP_GEGLU,
                GGML_GLU_OP_SWIGLU,
                GGML_GLU_OP_SWIGLU_OAI,
                GGML_GLU_OP_GEGLU_ERF,
                GGML_GLU_OP_GEGLU_QUICK,
                GGML_GLU_OP_SWIGLU_CLAMP,
            ];
            rule(known.contains(&n.sub_op()), || {
                why(format!("GLU op {} is not among Metal's", n.op_desc()))
            })?;
            let a = n.s(0)?;
            rule(a.is_contiguous_1() && f32_or_f16(a.ty), || {
                why("GLU needs f32 or f16 src0 contiguous above dim 1".into())
            })
        }
        GGML_OP_NONE | GGML_OP_RESHAPE | GGML_OP_VIEW | GGML_OP_TRANSPOSE | GGML_OP_PERMUTE => {
            Ok(())
        }
        GGML_OP_CONCAT => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            let ty_ok = match a.ty {
                GGML_TYPE_F32 | GGML_TYPE_F16 | GGML_TYPE_I8 | GGML_TYPE_I16 | GGML_TYPE_I32
                | GGML_TYPE_I64 | GGML_TYPE_Q4_0 | GGML_TYPE_Q4_1 | GGML_TYPE_Q5_0
                | GGML_TYPE_Q5_1 | GGML_TYPE_Q8_0 => true,
                GGML_TYPE_BF16 => p.has_bfloat,
                _ => false,
            };
            rule(a.ty == b.ty && a.ty == n.out.ty && ty_ok, || {
                why(format!("CONCAT: no kernel for {}", t(a.ty)))
            })
        }
        GGML_OP_ADD | GGML_OP_SUB | GGML_OP_MUL | GGML_OP_DIV | GGML_OP_ADD_ID => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(
                a.is_contiguous_rows()
                    && b.is_contiguous_rows()
                    && f32_or_f16(a.ty)
                    && a.ty == b.ty,
                || {
                    why(format!(
                        "{} needs src0 and src1 of one type (f32 or f16), rows packed",
                        op_name(n.op)
                    ))
                },
            )
        }
        GGML_OP_ACC => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(
                a.is_contiguous_rows() && b.is_contiguous_rows() && a.ty == GGML_TYPE_F32,
                || why("ACC needs f32 src0, rows packed".into()),
            )
        }
        GGML_OP_REPEAT => Ok(()),
        GGML_OP_SUM => rule(reduction && n.s(0)?.is_contiguous(), || {
            why("SUM needs SIMD group reduction and a contiguous src0".into())
        }),
        GGML_OP_TRI => rule(n.s(0)?.is_contiguous_rows(), || {
            why("TRI needs src0 rows packed".into())
        }),
        GGML_OP_SUM_ROWS | GGML_OP_CUMSUM | GGML_OP_MEAN | GGML_OP_SOFT_MAX
        | GGML_OP_GROUP_NORM | GGML_OP_L2_NORM | GGML_OP_NORM | GGML_OP_RMS_NORM => {
            rule(reduction && n.s(0)?.is_contiguous_rows(), || {
                why(format!(
                    "{} needs SIMD group reduction and src0 rows packed",
                    op_name(n.op)
                ))
            })
        }
        GGML_OP_COUNT_EQUAL => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(
                reduction
                    && a.ty == GGML_TYPE_I32
                    && b.ty == GGML_TYPE_I32
                    && n.out.ty == GGML_TYPE_I64,
                || why("COUNT_EQUAL needs i32 sources and an i64 result".into()),
            )
        }
        GGML_OP_ARGMAX => rule(
            reduction,
            || why("ARGMAX needs SIMD group reduction".into()),
        ),
        GGML_OP_ROPE | GGML_OP_ROPE_BACK | GGML_OP_ARGSORT | GGML_OP_TOP_K | GGML_OP_ARANGE
        | GGML_OP_DIAG => Ok(()),
        GGML_OP_FLASH_ATTN_EXT => {
            let (q, k, v) = (n.s(0)?, n.s(1)?, n.s(2)?);
            let head_sizes = [
                32, 40, 48, 64, 72, 80, 96, 112, 128, 192, 256, 320, 512, 576,
            ];
            rule(head_sizes.contains(&q.ne[0]), || {
                why(format!(
                    "FLASH_ATTN_EXT has no kernel for head size {}",
                    q.ne[0]
                ))
            })?;
            rule(!(k.ne[0] == 72 && k.ne[0] != v.ne[0]), || {
                why("FLASH_ATTN_EXT: K head 72 needs V head 72".into())
            })?;
            rule(k.ne[0] >= v.ne[0], || {
                why("FLASH_ATTN_EXT: V heads wider than K heads".into())
            })?;
            rule(k.ty == v.ty, || {
                why("FLASH_ATTN_EXT: K and V of different types".into())
            })?;
            let kv_ok = match k.ty {
                GGML_TYPE_F32 | GGML_TYPE_F16 | GGML_TYPE_Q8_0 | GGML_TYPE_Q4_0
                | GGML_TYPE_Q4_1 | GGML_TYPE_Q5_0 | GGML_TYPE_Q5_1 => true,
                GGML_TYPE_BF16 => p.has_bfloat,
                _ => false,
            };
            rule(kv_ok && p.has_simdgroup_mm, || {
                why(format!("FLASH_ATTN_EXT: no kernel for K/V {}", t(k.ty)))
            })
        }
        GGML_OP_MUL_MAT => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            if a.ty == GGML_TYPE_F32
                && b.ty == GGML_TYPE_F16
                && use_fwht(n, b, p.max_threadgroup_memory)
            {
                return rule(reduction, || {
                    why("Hadamard MUL_MAT needs SIMD group reduction".into())
                });
            }
            mul_mat(a, b, p)
        }
        GGML_OP_SET | GGML_OP_CPY | GGML_OP_DUP | GGML_OP_CONT => {
            let a = n.s(0)?;
            rule(copies(a.ty, n.out.ty), || {
                why(format!(
                    "{} has no {} -> {} kernel",
                    op_name(n.op),
                    t(a.ty),
                    t(n.out.ty)
                ))
            })
        }
        GGML_OP_GET_ROWS => {
            let a = n.s(0)?;
            rule(a.ty != GGML_TYPE_NVFP4 && a.ty != GGML_TYPE_TQ1_0, || {
                why(format!("GET_ROWS has no kernel for src0 {}", t(a.ty)))
            })
        }
        GGML_OP_SET_ROWS => {
            let a = n.s(0)?;
            let ok = if a.ty == GGML_TYPE_F16 {
                n.out.ty == GGML_TYPE_F16
            } else {
                a.ty == GGML_TYPE_F32
                    && [
                        GGML_TYPE_F32,
                        GGML_TYPE_F16,
                        GGML_TYPE_BF16,
                        GGML_TYPE_Q8_0,
                        GGML_TYPE_Q4_0,
                        GGML_TYPE_Q4_1,
                        GGML_TYPE_Q5_0,
                        GGML_TYPE_Q5_1,
                        GGML_TYPE_IQ4_NL,
                        GGML_TYPE_TQ2_0,
                    ]
                    .contains(&n.out.ty)
            };
            rule(ok, || {
                why(format!(
                    "SET_ROWS has no {} -> {} kernel",
                    t(a.ty),
                    t(n.out.ty)
                ))
            })
        }
        GGML_OP_OPT_STEP_ADAMW | GGML_OP_OPT_STEP_SGD => rule(reduction, || {
            why(format!("{} needs SIMD group reduction", op_name(n.op)))
        }),
        GGML_OP_OUT_PROD
        | GGML_OP_RMS_NORM_BACK
        | GGML_OP_SOFT_MAX_BACK
        | GGML_OP_GET_ROWS_BACK
        | GGML_OP_REPEAT_BACK
        | GGML_OP_CROSS_ENTROPY_LOSS
        | GGML_OP_CROSS_ENTROPY_LOSS_BACK
        | GGML_OP_DIAG_MASK_INF
        | GGML_OP_ADD1 => Err(why(format!(
            "Metal has no {} (no case in the switch: default false)",
            op_name(n.op)
        ))),
        op => Err(why(format!(
            "{} is not transcribed for the audit: refused",
            op_name(op)
        ))),
    }
}
