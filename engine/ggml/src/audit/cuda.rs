//! CUDA: a transcription of `ggml/src/ggml-cuda/ggml-cuda.cu,
//! ggml_backend_cuda_device_supports_op` (and `ggml/src/ggml-cuda/fwht.cu,
//! ggml_cuda_op_mul_mat_use_fwht`) of the pinned llama.cpp, case by case,
//! for the ops a training graph could use. Left out, and so refused:
//! the check that every source lives on this device (the audit plans one
//! device), the MUSA-only `MUL_MAT` exceptions (`GGML_USE_MUSA`), and ops
//! whose answer depends on the GPU at hand (`FLASH_ATTN_EXT`: compute
//! capability, `ARGSORT`: shared memory) or that no training graph uses.

use super::{rule, Node};
use crate::ffi::{op_name, type_name};
use llama_cpp_sys_2 as sys;

const SRC: &str = "ggml-cuda.cu, ggml_backend_cuda_device_supports_op";

/// Quantized and plain types the `MUL_MAT` kernels take as `src0`.
const MUL_MAT_SRC0: [u32; 27] = [
    sys::GGML_TYPE_F32,
    sys::GGML_TYPE_F16,
    sys::GGML_TYPE_Q1_0,
    sys::GGML_TYPE_Q2_0,
    sys::GGML_TYPE_Q4_0,
    sys::GGML_TYPE_Q4_1,
    sys::GGML_TYPE_Q5_0,
    sys::GGML_TYPE_Q5_1,
    sys::GGML_TYPE_Q8_0,
    sys::GGML_TYPE_MXFP4,
    sys::GGML_TYPE_NVFP4,
    sys::GGML_TYPE_Q2_K,
    sys::GGML_TYPE_Q3_K,
    sys::GGML_TYPE_Q4_K,
    sys::GGML_TYPE_Q5_K,
    sys::GGML_TYPE_Q6_K,
    sys::GGML_TYPE_Q8_K,
    sys::GGML_TYPE_IQ1_M,
    sys::GGML_TYPE_IQ1_S,
    sys::GGML_TYPE_IQ2_S,
    sys::GGML_TYPE_IQ2_XS,
    sys::GGML_TYPE_IQ2_XXS,
    sys::GGML_TYPE_IQ3_S,
    sys::GGML_TYPE_IQ3_XXS,
    sys::GGML_TYPE_IQ4_NL,
    sys::GGML_TYPE_IQ4_XS,
    sys::GGML_TYPE_BF16,
];

/// Types `GET_ROWS` reads as `src0` (IQ4_NL and MXFP4 apart: see below).
const GET_ROWS_SRC0: [u32; 24] = [
    sys::GGML_TYPE_F16,
    sys::GGML_TYPE_F32,
    sys::GGML_TYPE_BF16,
    sys::GGML_TYPE_I32,
    sys::GGML_TYPE_Q1_0,
    sys::GGML_TYPE_Q2_0,
    sys::GGML_TYPE_Q4_0,
    sys::GGML_TYPE_Q4_1,
    sys::GGML_TYPE_Q5_0,
    sys::GGML_TYPE_Q5_1,
    sys::GGML_TYPE_Q8_0,
    sys::GGML_TYPE_Q2_K,
    sys::GGML_TYPE_Q3_K,
    sys::GGML_TYPE_Q4_K,
    sys::GGML_TYPE_Q5_K,
    sys::GGML_TYPE_Q6_K,
    sys::GGML_TYPE_IQ2_XXS,
    sys::GGML_TYPE_IQ2_XS,
    sys::GGML_TYPE_IQ2_S,
    sys::GGML_TYPE_IQ3_XXS,
    sys::GGML_TYPE_IQ3_S,
    sys::GGML_TYPE_IQ1_S,
    sys::GGML_TYPE_IQ1_M,
    sys::GGML_TYPE_IQ4_XS,
];

/// `SET_ROWS` result types from an f32 `src0`.
const SET_ROWS_FROM_F32: [u32; 9] = [
    sys::GGML_TYPE_F32,
    sys::GGML_TYPE_F16,
    sys::GGML_TYPE_BF16,
    sys::GGML_TYPE_Q4_0,
    sys::GGML_TYPE_Q4_1,
    sys::GGML_TYPE_Q5_0,
    sys::GGML_TYPE_Q5_1,
    sys::GGML_TYPE_Q8_0,
    sys::GGML_TYPE_IQ4_NL,
];

/// `(src0, src1)` type pairs `CPY` converts between, besides the
/// float-to-float ones and same-type contiguous copies.
const CPY_PAIRS: [(u32, u32); 14] = [
    (sys::GGML_TYPE_F32, sys::GGML_TYPE_Q8_0),
    (sys::GGML_TYPE_Q8_0, sys::GGML_TYPE_F32),
    (sys::GGML_TYPE_F32, sys::GGML_TYPE_Q4_0),
    (sys::GGML_TYPE_Q4_0, sys::GGML_TYPE_F32),
    (sys::GGML_TYPE_F32, sys::GGML_TYPE_Q4_1),
    (sys::GGML_TYPE_Q4_1, sys::GGML_TYPE_F32),
    (sys::GGML_TYPE_F32, sys::GGML_TYPE_Q5_0),
    (sys::GGML_TYPE_Q5_0, sys::GGML_TYPE_F32),
    (sys::GGML_TYPE_F32, sys::GGML_TYPE_Q5_1),
    (sys::GGML_TYPE_Q5_1, sys::GGML_TYPE_F32),
    (sys::GGML_TYPE_F32, sys::GGML_TYPE_IQ4_NL),
    (sys::GGML_TYPE_F32, sys::GGML_TYPE_I32),
    (sys::GGML_TYPE_I32, sys::GGML_TYPE_F32),
    (sys::GGML_TYPE_I32, sys::GGML_TYPE_I32),
];

/// ggml/src/ggml-cuda/fwht.cu, `ggml_cuda_op_mul_mat_use_fwht`: a
/// `MUL_MAT` hinted as a Hadamard transform (op param 1) runs as one.
fn use_fwht(n: &Node, a: &super::Operand, b: &super::Operand) -> bool {
    n.op == sys::GGML_OP_MUL_MAT
        && n.params[1] == sys::GGML_HINT_SRC0_IS_HADAMARD as i32
        && a.ty == sys::GGML_TYPE_F32
        && n.out.ty == sys::GGML_TYPE_F32
        && (b.ty == sys::GGML_TYPE_F32 || b.ty == sys::GGML_TYPE_F16)
        && b.is_contiguous()
        && n.out.is_contiguous()
        && b.same_shape(&n.out)
}

/// Whether the pinned CUDA backend runs `n`; `Err` names the rule.
pub(super) fn supports(n: &Node) -> Result<(), String> {
    use sys::*;
    let t = |ty: u32| type_name(ty);
    let f32_or_f16 = |ty: u32| ty == GGML_TYPE_F32 || ty == GGML_TYPE_F16;
    let why = |s: String| format!("{s} ({SRC})");
    match n.op {
        GGML_OP_UNARY => {
            let u = n.sub_op();
            let known = [
                GGML_UNARY_OP_ABS,
                GGML_UNARY_OP_SGN,
                GGML_UNARY_OP_NEG,
                GGML_UNARY_OP_STEP,
                GGML_UNARY_OP_GELU,
                GGML_UNARY_OP_SILU,
                GGML_UNARY_OP_RELU,
                GGML_UNARY_OP_SIGMOID,
                GGML_UNARY_OP_HARDSIGMOID,
                GGML_UNARY_OP_HARDSWISH,
                GGML_UNARY_OP_GELU_ERF,
                GGML_UNARY_OP_GELU_QUICK,
                GGML_UNARY_OP_TANH,
                GGML_UNARY_OP_EXP,
                GGML_UNARY_OP_EXPM1,
                GGML_UNARY_OP_SOFTPLUS,
                GGML_UNARY_OP_ELU,
                GGML_UNARY_OP_XIELU,
                GGML_UNARY_OP_FLOOR,
                GGML_UNARY_OP_CEIL,
                GGML_UNARY_OP_ROUND,
                GGML_UNARY_OP_TRUNC,
            ];
            rule(known.contains(&u), || {
                why(format!("unary op {} is not among CUDA's", n.op_desc()))
            })?;
            let a = n.s(0)?;
            rule(
                !(a.ty == GGML_TYPE_BF16 && u == GGML_UNARY_OP_XIELU),
                || why("XIELU does not take bf16".into()),
            )?;
            rule(a.is_contiguous(), || {
                why("unary ops need a contiguous src0".into())
            })
        }
        GGML_OP_GLU => {
            let g = n.sub_op();
            let known = [
                GGML_GLU_OP_REGLU,
                GGML_GLU_OP_GEGLU,
                GGML_GLU_OP_SWIGLU,
                GGML_GLU_OP_SWIGLU_OAI,
                GGML_GLU_OP_GEGLU_ERF,
                GGML_GLU_OP_GEGLU_QUICK,
                GGML_GLU_OP_SWIGLU_CLAMP,
            ];
            rule(known.contains(&g), || {
                why(format!("GLU op {} is not among CUDA's", n.op_desc()))
            })?;
            let a = n.s(0)?;
            let oai_or_clamp = g == GGML_GLU_OP_SWIGLU_OAI || g == GGML_GLU_OP_SWIGLU_CLAMP;
            rule(!(a.ty == GGML_TYPE_BF16 && oai_or_clamp), || {
                why("SWIGLU_OAI / SWIGLU_CLAMP do not take bf16".into())
            })?;
            rule(a.is_contiguous_1(), || {
                why("GLU needs src0 contiguous above dim 1".into())
            })
        }
        GGML_OP_MUL_MAT => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(a.nb[0] == a.type_size() && b.nb[0] == b.type_size(), || {
                why("MUL_MAT needs src0 and src1 packed in dim 0".into())
            })?;
            rule(
                !(b.ty == GGML_TYPE_F16 && a.ty != GGML_TYPE_F16 && !use_fwht(n, a, b)),
                || {
                    why(format!(
                        "MUL_MAT of f16 src1 needs an f16 src0, not {}",
                        t(a.ty)
                    ))
                },
            )?;
            rule(MUL_MAT_SRC0.contains(&a.ty), || {
                why(format!("MUL_MAT has no kernel for src0 {}", t(a.ty)))
            })
        }
        GGML_OP_OUT_PROD => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(
                n.out.ty == GGML_TYPE_F32 && a.ty == GGML_TYPE_F32 && b.ty == GGML_TYPE_F32,
                || why("OUT_PROD needs f32 src0, src1 and result".into()),
            )
        }
        GGML_OP_GET_ROWS => {
            let a = n.s(0)?;
            if a.ty == GGML_TYPE_IQ4_NL || a.ty == GGML_TYPE_MXFP4 {
                // 32-value sub-blocks; the kernel walks 256-value super-blocks.
                return rule(a.ne[0] % 256 == 0, || {
                    why(format!(
                        "GET_ROWS of {} needs rows of whole 256-value blocks",
                        t(a.ty)
                    ))
                });
            }
            rule(GET_ROWS_SRC0.contains(&a.ty), || {
                why(format!("GET_ROWS has no kernel for src0 {}", t(a.ty)))
            })
        }
        GGML_OP_GET_ROWS_BACK => {
            let a = n.s(0)?;
            rule(
                n.out.ty == GGML_TYPE_F32
                    && a.ty == GGML_TYPE_F32
                    && n.out.ne[2] == 1
                    && n.out.ne[3] == 1,
                || why("GET_ROWS_BACK needs f32 in and out, a 2-D result".into()),
            )
        }
        GGML_OP_SET_ROWS => {
            let (a, idx) = (n.s(0)?, n.s(1)?);
            let types_ok = (SET_ROWS_FROM_F32.contains(&n.out.ty) && a.ty == GGML_TYPE_F32)
                || (n.out.ty == GGML_TYPE_F16 && a.ty == GGML_TYPE_F16);
            rule(
                types_ok && (idx.ty == GGML_TYPE_I64 || idx.ty == GGML_TYPE_I32),
                || why("SET_ROWS: no kernel for these types".into()),
            )
        }
        GGML_OP_SET => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            let ty = n.out.ty;
            rule(
                (ty == GGML_TYPE_F32 || ty == GGML_TYPE_I32) && a.ty == ty && b.ty == ty,
                || why("SET needs f32 or i32 throughout".into()),
            )
        }
        GGML_OP_CPY => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            let float = |ty: u32| f32_or_f16(ty) || ty == GGML_TYPE_BF16;
            let ok = (float(a.ty) && float(b.ty))
                || CPY_PAIRS.contains(&(a.ty, b.ty))
                || (a.ty == b.ty && a.is_contiguous() && b.is_contiguous());
            rule(ok, || {
                why(format!("CPY has no {} -> {} kernel", t(a.ty), t(b.ty)))
            })
        }
        GGML_OP_DUP | GGML_OP_ARGMAX | GGML_OP_COUNT_EQUAL | GGML_OP_CONT => Ok(()),
        GGML_OP_REPEAT => {
            let a = n.s(0)?;
            rule(f32_or_f16(a.ty), || {
                why(format!("REPEAT runs f32 and f16 only, not {}", t(a.ty)))
            })
        }
        GGML_OP_REPEAT_BACK => {
            let a = n.s(0)?;
            rule(
                n.out.ty == GGML_TYPE_F32 && a.ne[2] * a.ne[3] <= 1 << 15,
                || why("REPEAT_BACK needs an f32 result and src0 ne2*ne3 <= 32768".into()),
            )
        }
        GGML_OP_CONCAT => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            let dim = n.params[0];
            let blck = a.blck_size().max(1);
            let quantized_ok = a.quantized()
                && if dim == 3 {
                    a.is_contiguous() && b.is_contiguous()
                } else {
                    a.is_contiguous_to_3() && b.is_contiguous_to_3()
                }
                && a.ne[0] % blck == 0
                && b.ne[0] % blck == 0;
            let plain_ok =
                !a.quantized() && a.blck_size() == 1 && [1, 2, 4, 8].contains(&a.type_size());
            rule(
                a.ty == b.ty && a.ty == n.out.ty && (quantized_ok || plain_ok),
                || why("CONCAT: no kernel for these types or layouts".into()),
            )
        }
        GGML_OP_SILU_BACK => {
            let a = n.s(0)?;
            rule(a.is_contiguous() && a.ty == GGML_TYPE_F32, || {
                why("SILU_BACK needs a contiguous f32 src0".into())
            })
        }
        GGML_OP_NORM | GGML_OP_RMS_NORM | GGML_OP_L2_NORM => {
            rule(n.s(0)?.is_contiguous_rows(), || {
                why(format!("{} needs src0 rows packed", op_name(n.op)))
            })
        }
        GGML_OP_RMS_NORM_BACK => rule(n.s(0)?.is_contiguous(), || {
            why("RMS_NORM_BACK needs a contiguous src0".into())
        }),
        GGML_OP_NONE | GGML_OP_RESHAPE | GGML_OP_VIEW | GGML_OP_PERMUTE | GGML_OP_TRANSPOSE
        | GGML_OP_ADD1 | GGML_OP_SQR | GGML_OP_SQRT | GGML_OP_SIN | GGML_OP_COS | GGML_OP_CLAMP
        | GGML_OP_LOG => Ok(()),
        GGML_OP_SCALE => {
            let a = n.s(0)?;
            rule(
                (a.ty == GGML_TYPE_F32 || a.ty == GGML_TYPE_BF16) && n.out.ty == a.ty,
                || why(format!("SCALE runs f32 and bf16 only, not {}", t(a.ty))),
            )
        }
        GGML_OP_ADD | GGML_OP_SUB | GGML_OP_MUL | GGML_OP_DIV => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            let bf16 = GGML_TYPE_BF16;
            if a.ty == bf16 || b.ty == bf16 || n.out.ty == bf16 {
                return rule(
                    a.ty == bf16 && n.out.ty == bf16 && (b.ty == bf16 || b.ty == GGML_TYPE_F32),
                    || {
                        why(format!(
                            "{}: bf16 only as bf16 (+ f32) -> bf16",
                            op_name(n.op)
                        ))
                    },
                );
            }
            rule(
                f32_or_f16(a.ty) && f32_or_f16(b.ty) && f32_or_f16(n.out.ty),
                || why(format!("{} runs f32 and f16 only", op_name(n.op))),
            )
        }
        GGML_OP_DIAG_MASK_INF | GGML_OP_SOFT_MAX => Ok(()),
        // `case GGML_OP_PAD: return true;` (left and right pads alike).
        GGML_OP_PAD => Ok(()),
        GGML_OP_SOFT_MAX_BACK => rule(n.param_f32(1) == 0.0, || {
            why("SOFT_MAX_BACK needs max_bias 0 (no ALiBi)".into())
        }),
        GGML_OP_ROPE | GGML_OP_ROPE_BACK => {
            let a = n.s(0)?;
            rule(a.nb[0] == a.type_size() && a.is_contiguous_2(), || {
                why(format!(
                    "{} needs src0 packed in dim 0 and contiguous above dim 2",
                    op_name(n.op)
                ))
            })
        }
        GGML_OP_ACC => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(a.is_contiguous() && b.is_contiguous(), || {
                why("ACC needs contiguous src0 and src1".into())
            })
        }
        GGML_OP_SUM => rule(n.s(0)?.is_contiguous_rows(), || {
            why("SUM needs src0 rows packed".into())
        }),
        GGML_OP_SUM_ROWS | GGML_OP_MEAN => {
            let a = n.s(0)?;
            rule(
                a.ty == GGML_TYPE_F32 && n.out.ty == GGML_TYPE_F32 && a.is_contiguous_rows(),
                || why(format!("{} needs f32 with rows packed", op_name(n.op))),
            )
        }
        GGML_OP_CROSS_ENTROPY_LOSS
        | GGML_OP_CROSS_ENTROPY_LOSS_BACK
        | GGML_OP_OPT_STEP_ADAMW
        | GGML_OP_OPT_STEP_SGD
        | GGML_OP_FILL
        | GGML_OP_CUMSUM
        | GGML_OP_TRI
        | GGML_OP_DIAG => Ok(()),
        GGML_OP_FLASH_ATTN_EXT => Err(why(
            "FLASH_ATTN_EXT depends on the GPU's compute capability \
             (ggml_cuda_flash_attn_ext_supported), not transcribed: refused"
                .into(),
        )),
        op => Err(why(format!(
            "{} is not transcribed for the audit: refused",
            op_name(op)
        ))),
    }
}
