//! Vulkan: a transcription of `ggml/src/ggml-vulkan/ggml-vulkan.cpp,
//! ggml_backend_vk_device_supports_op` (with `ggml_vk_dim01_contiguous`
//! and `ggml_vk_concat_supported` there) of the pinned llama.cpp, for the
//! ops a training graph could use. Unlike CUDA's and Metal's, its answer
//! depends on the device's limits (largest buffer, storage buffer range,
//! 64-bit shader indexing, subgroup operations for flash attention), so the
//! target carries them: [`VulkanDevice`]. Left out, and so refused: ops
//! whose answer depends on further device features (`CUMSUM`, `ARGSORT`,
//! `TOP_K`, `SOLVE_TRI`) or that no training graph uses.

use super::{rule, Node, Operand};
use crate::ffi::{op_name, type_name};
use llama_cpp_sys_2 as sys;

const SRC: &str = "ggml-vulkan.cpp, ggml_backend_vk_device_supports_op";

/// The limits of one Vulkan device that its `supports_op` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VulkanDevice {
    /// `max_buffer_size`: `maxBufferSize` (Vulkan 1.3), else
    /// `maxMemoryAllocationSize`, or `GGML_VK_FORCE_MAX_BUFFER_SIZE`.
    pub max_buffer_size: u64,
    /// `VkPhysicalDeviceLimits::maxStorageBufferRange`.
    pub max_storage_buffer_range: u64,
    /// `VK_EXT_shader_64bit_indexing` present (lifts the range limit).
    pub shader_64b_indexing: bool,
    /// Cooperative matrix 2, or subgroup shuffle and vote: what flash
    /// attention needs.
    pub flash_attention: bool,
}

impl VulkanDevice {
    /// The most a device without 64-bit shader indexing can address in one
    /// tensor (buffer size and storage range at the 32-bit maximum,
    /// 4 GiB - 1), no flash attention. A node refused here is refused by
    /// every such device; a device with smaller limits refuses more (audit
    /// with its own).
    pub const LIMIT_32BIT: VulkanDevice = VulkanDevice {
        max_buffer_size: u32::MAX as u64,
        max_storage_buffer_range: u32::MAX as u64,
        shader_64b_indexing: false,
        flash_attention: false,
    };

    /// The size check every node passes first (`tensor_size_supported`).
    fn fits(&self, bytes: u64) -> bool {
        bytes <= self.max_buffer_size
            && (self.shader_64b_indexing || bytes <= self.max_storage_buffer_range)
    }
}

/// ggml-vulkan.cpp, `ggml_vk_dim01_contiguous`.
fn dim01_contiguous(t: &Operand) -> bool {
    t.nb[0] == t.type_size()
        && t.nb[1] == t.nb[0] * t.ne[0] as usize / t.blck_size().max(1) as usize
        && (t.ne[3] == 1 || t.nb[3] == t.nb[2] * t.ne[2] as usize)
}

/// ggml-vulkan.cpp, `ggml_vk_concat_supported`.
fn concat(a: &Operand, b: &Operand, out: &Operand) -> bool {
    if a.ty != b.ty || a.ty != out.ty {
        return false;
    }
    if !a.quantized() {
        return [1, 2, 4, 8].contains(&a.type_size());
    }
    a.is_contiguous_rows() && b.is_contiguous_rows() && out.is_contiguous_rows()
}

/// Whether the pinned Vulkan backend on device `d` runs `n`; `Err` names
/// the rule.
pub(super) fn supports(n: &Node, d: &VulkanDevice) -> Result<(), String> {
    use sys::*;
    let t = |ty: u32| type_name(ty);
    let f32_or_f16 = |ty: u32| ty == GGML_TYPE_F32 || ty == GGML_TYPE_F16;
    let why = |s: String| format!("{s} ({SRC})");
    for o in n.src.iter().flatten().chain(std::iter::once(&n.out)) {
        let bytes = o.n_bytes();
        rule(d.fits(bytes), || {
            why(format!(
                "a {bytes}-byte operand exceeds the device's buffer size {} or storage range {}",
                d.max_buffer_size, d.max_storage_buffer_range
            ))
        })?;
    }
    let same_float = |a: &Operand| f32_or_f16(a.ty) && n.out.ty == a.ty;
    match n.op {
        // `case GGML_OP_PAD: return op->src[0]->type == GGML_TYPE_F32;`
        GGML_OP_PAD => rule(n.s(0)?.ty == GGML_TYPE_F32, || {
            why("PAD runs f32 only".into())
        }),
        GGML_OP_UNARY => {
            let known = [
                GGML_UNARY_OP_EXP,
                GGML_UNARY_OP_EXPM1,
                GGML_UNARY_OP_ELU,
                GGML_UNARY_OP_GELU,
                GGML_UNARY_OP_GELU_ERF,
                GGML_UNARY_OP_GELU_QUICK,
                GGML_UNARY_OP_SILU,
                GGML_UNARY_OP_RELU,
                GGML_UNARY_OP_XIELU,
                GGML_UNARY_OP_NEG,
                GGML_UNARY_OP_TANH,
                GGML_UNARY_OP_SIGMOID,
                GGML_UNARY_OP_HARDSIGMOID,
                GGML_UNARY_OP_HARDSWISH,
                GGML_UNARY_OP_ABS,
                GGML_UNARY_OP_SOFTPLUS,
                GGML_UNARY_OP_STEP,
                GGML_UNARY_OP_ROUND,
                GGML_UNARY_OP_CEIL,
                GGML_UNARY_OP_FLOOR,
                GGML_UNARY_OP_TRUNC,
                GGML_UNARY_OP_SGN,
            ];
            rule(known.contains(&n.sub_op()), || {
                why(format!("unary op {} is not among Vulkan's", n.op_desc()))
            })?;
            rule(same_float(n.s(0)?), || {
                why("unary ops need f32 or f16 in and out, one type".into())
            })
        }
        GGML_OP_GLU => {
            let known = [
                GGML_GLU_OP_GEGLU,
                GGML_GLU_OP_REGLU,
                GGML_GLU_OP_SWIGLU,
                GGML_GLU_OP_SWIGLU_OAI,
                GGML_GLU_OP_GEGLU_ERF,
                GGML_GLU_OP_GEGLU_QUICK,
                GGML_GLU_OP_SWIGLU_CLAMP,
            ];
            rule(known.contains(&n.sub_op()), || {
                why(format!("GLU op {} is not among Vulkan's", n.op_desc()))
            })?;
            let a = n.s(0)?;
            rule(
                same_float(a) && n.src(1).is_none_or(|b| b.ty == a.ty),
                || why("GLU needs f32 or f16 operands of one type".into()),
            )
        }
        GGML_OP_MUL_MAT => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            let src0_types = [
                GGML_TYPE_F32,
                GGML_TYPE_F16,
                GGML_TYPE_BF16,
                GGML_TYPE_Q1_0,
                GGML_TYPE_Q2_0,
                GGML_TYPE_Q4_0,
                GGML_TYPE_Q4_1,
                GGML_TYPE_Q5_0,
                GGML_TYPE_Q5_1,
                GGML_TYPE_Q8_0,
                GGML_TYPE_Q2_K,
                GGML_TYPE_Q3_K,
                GGML_TYPE_Q4_K,
                GGML_TYPE_Q5_K,
                GGML_TYPE_Q6_K,
                GGML_TYPE_IQ1_S,
                GGML_TYPE_IQ1_M,
                GGML_TYPE_IQ2_XXS,
                GGML_TYPE_IQ2_XS,
                GGML_TYPE_IQ2_S,
                GGML_TYPE_IQ3_XXS,
                GGML_TYPE_IQ3_S,
                GGML_TYPE_IQ4_XS,
                GGML_TYPE_IQ4_NL,
                GGML_TYPE_MXFP4,
                GGML_TYPE_NVFP4,
                GGML_TYPE_TQ1_0,
                GGML_TYPE_TQ2_0,
            ];
            rule(src0_types.contains(&a.ty), || {
                why(format!("MUL_MAT has no kernel for src0 {}", t(a.ty)))
            })?;
            rule(a.ne[3] == b.ne[3], || {
                why("MUL_MAT does not broadcast dim 3".into())
            })?;
            let float0 = f32_or_f16(a.ty) || a.ty == GGML_TYPE_BF16;
            rule(
                (dim01_contiguous(a) || float0) && (dim01_contiguous(b) || f32_or_f16(b.ty)),
                || why("MUL_MAT needs quantized operands packed in dims 0 and 1".into()),
            )?;
            rule(!(a.ty == GGML_TYPE_BF16 && b.ty == GGML_TYPE_F16), || {
                why("MUL_MAT has no bf16 x f16 kernel".into())
            })?;
            rule(!(b.ty == GGML_TYPE_BF16 && a.ty != GGML_TYPE_BF16), || {
                why("MUL_MAT takes a bf16 src1 only with a bf16 src0".into())
            })
        }
        GGML_OP_FLASH_ATTN_EXT => {
            let (q, k, v) = (n.s(0)?, n.s(1)?, n.s(2)?);
            let kv_ok = |ty: u32| {
                [
                    GGML_TYPE_F32,
                    GGML_TYPE_F16,
                    GGML_TYPE_BF16,
                    GGML_TYPE_Q8_0,
                    GGML_TYPE_Q5_1,
                    GGML_TYPE_Q5_0,
                    GGML_TYPE_Q4_1,
                    GGML_TYPE_Q4_0,
                    GGML_TYPE_IQ4_NL,
                ]
                .contains(&ty)
            };
            let ok = k.ne[0] % 8 == 0
                && v.ne[0] % 8 == 0
                && n.src(4).is_none_or(|s| s.ty == GGML_TYPE_F32)
                && q.ty == GGML_TYPE_F32
                && n.out.ty == GGML_TYPE_F32
                && n.src(3).is_none_or(|m| m.ty == GGML_TYPE_F16)
                && kv_ok(k.ty)
                && kv_ok(v.ty)
                && (k.ty == GGML_TYPE_BF16) == (v.ty == GGML_TYPE_BF16)
                && d.flash_attention;
            rule(ok, || {
                why("FLASH_ATTN_EXT: head sizes, types or device features not supported".into())
            })
        }
        GGML_OP_GET_ROWS => {
            let a = n.s(0)?;
            let types = [
                GGML_TYPE_F32,
                GGML_TYPE_F16,
                GGML_TYPE_BF16,
                GGML_TYPE_Q1_0,
                GGML_TYPE_Q2_0,
                GGML_TYPE_Q4_0,
                GGML_TYPE_Q4_1,
                GGML_TYPE_Q5_0,
                GGML_TYPE_Q5_1,
                GGML_TYPE_Q8_0,
                GGML_TYPE_Q2_K,
                GGML_TYPE_Q3_K,
                GGML_TYPE_Q4_K,
                GGML_TYPE_Q5_K,
                GGML_TYPE_Q6_K,
                GGML_TYPE_IQ1_S,
                GGML_TYPE_IQ1_M,
                GGML_TYPE_IQ2_XXS,
                GGML_TYPE_IQ2_XS,
                GGML_TYPE_IQ2_S,
                GGML_TYPE_IQ3_XXS,
                GGML_TYPE_IQ3_S,
                GGML_TYPE_IQ4_XS,
                GGML_TYPE_IQ4_NL,
                GGML_TYPE_MXFP4,
                GGML_TYPE_NVFP4,
                GGML_TYPE_TQ1_0,
                GGML_TYPE_TQ2_0,
                GGML_TYPE_I32,
            ];
            rule(types.contains(&a.ty), || {
                why(format!("GET_ROWS has no kernel for src0 {}", t(a.ty)))
            })
        }
        GGML_OP_GET_ROWS_BACK | GGML_OP_REPEAT_BACK => {
            let a = n.s(0)?;
            rule(n.out.ty == GGML_TYPE_F32 && a.ty == GGML_TYPE_F32, || {
                why(format!("{} needs f32 in and out", op_name(n.op)))
            })
        }
        GGML_OP_SET_ROWS => {
            let (a, idx) = (n.s(0)?, n.s(1)?);
            let to = [
                GGML_TYPE_F32,
                GGML_TYPE_F16,
                GGML_TYPE_BF16,
                GGML_TYPE_Q1_0,
                GGML_TYPE_Q2_0,
                GGML_TYPE_Q4_0,
                GGML_TYPE_Q4_1,
                GGML_TYPE_Q5_0,
                GGML_TYPE_Q5_1,
                GGML_TYPE_Q8_0,
                GGML_TYPE_IQ4_NL,
            ];
            rule(
                f32_or_f16(a.ty)
                    && (idx.ty == GGML_TYPE_I32 || idx.ty == GGML_TYPE_I64)
                    && to.contains(&n.out.ty),
                || why("SET_ROWS: no kernel for these types".into()),
            )
        }
        GGML_OP_CONT | GGML_OP_CPY | GGML_OP_DUP => {
            let a = n.s(0)?;
            // The copy's target type: src1's (CPY), else src0's.
            let to = n.src(1).map_or(a.ty, |b| b.ty);
            let convertible = [
                GGML_TYPE_F16,
                GGML_TYPE_BF16,
                GGML_TYPE_Q1_0,
                GGML_TYPE_Q2_0,
                GGML_TYPE_Q4_0,
                GGML_TYPE_Q4_1,
                GGML_TYPE_Q5_0,
                GGML_TYPE_Q5_1,
                GGML_TYPE_Q8_0,
                GGML_TYPE_IQ4_NL,
            ];
            let ok = (a.ty == GGML_TYPE_F32 && (to == GGML_TYPE_F32 || convertible.contains(&to)))
                || (to == GGML_TYPE_F32 && convertible.contains(&a.ty))
                || (a.ty == GGML_TYPE_F16 && to == GGML_TYPE_F16)
                || (a.ty == GGML_TYPE_F32 && to == GGML_TYPE_I32)
                || (a.ty == GGML_TYPE_I32 && to == GGML_TYPE_F32)
                || (a.ty == to
                    && (!a.quantized() || (a.is_contiguous() && n.out.is_contiguous()))
                    && a.type_size() % 2 == 0);
            rule(ok, || {
                why(format!(
                    "{} has no {} -> {} kernel",
                    op_name(n.op),
                    t(a.ty),
                    t(to)
                ))
            })
        }
        GGML_OP_REPEAT => {
            let a = n.s(0)?;
            let size = n.out.type_size();
            rule(size == a.type_size() && (size == 4 || size == 2), || {
                why("REPEAT copies 2- or 4-byte elements of one size".into())
            })
        }
        GGML_OP_ROPE => rule(
            n.out.is_contiguous_rows() && n.s(0)?.is_contiguous_rows(),
            || why("ROPE needs packed rows in and out".into()),
        ),
        GGML_OP_ROPE_BACK | GGML_OP_NONE | GGML_OP_RESHAPE | GGML_OP_VIEW | GGML_OP_PERMUTE
        | GGML_OP_TRANSPOSE | GGML_OP_RMS_NORM => Ok(()),
        GGML_OP_NORM | GGML_OP_L2_NORM => rule(
            n.s(0)?.ty == GGML_TYPE_F32 && n.out.ty == GGML_TYPE_F32,
            || why(format!("{} needs f32 in and out", op_name(n.op))),
        ),
        GGML_OP_ADD | GGML_OP_SUB | GGML_OP_MUL | GGML_OP_DIV => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(
                f32_or_f16(a.ty) && f32_or_f16(b.ty) && f32_or_f16(n.out.ty),
                || why(format!("{} runs f32 and f16 only", op_name(n.op))),
            )
        }
        GGML_OP_SILU_BACK | GGML_OP_RMS_NORM_BACK => {
            let a = n.s(0)?;
            rule(a.is_contiguous() && a.ty == GGML_TYPE_F32, || {
                why(format!("{} needs a contiguous f32 src0", op_name(n.op)))
            })
        }
        GGML_OP_SQR | GGML_OP_SQRT | GGML_OP_SIN | GGML_OP_COS | GGML_OP_CLAMP
        | GGML_OP_LEAKY_RELU | GGML_OP_LOG | GGML_OP_TRI | GGML_OP_DIAG => {
            rule(same_float(n.s(0)?), || {
                why(format!(
                    "{} needs f32 or f16 in and out, one type",
                    op_name(n.op)
                ))
            })
        }
        GGML_OP_OPT_STEP_ADAMW
        | GGML_OP_OPT_STEP_SGD
        | GGML_OP_SCALE
        | GGML_OP_DIAG_MASK_INF
        | GGML_OP_ARGMAX => {
            let a = n.s(0)?;
            rule(a.is_contiguous() && a.ty == GGML_TYPE_F32, || {
                why(format!("{} needs a contiguous f32 src0", op_name(n.op)))
            })
        }
        GGML_OP_OUT_PROD => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(
                a.is_contiguous()
                    && a.ty == GGML_TYPE_F32
                    && b.is_contiguous()
                    && b.ty == GGML_TYPE_F32
                    && n.out.ty == GGML_TYPE_F32,
                || why("OUT_PROD needs contiguous f32 operands and result".into()),
            )
        }
        GGML_OP_ACC => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(
                a.ty == GGML_TYPE_F32 && b.ty == GGML_TYPE_F32 && n.out.ty == GGML_TYPE_F32,
                || why("ACC needs f32 throughout".into()),
            )
        }
        GGML_OP_SET => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(
                a.ty == b.ty
                    && a.ty == n.out.ty
                    && (a.ty == GGML_TYPE_F32 || a.ty == GGML_TYPE_I32),
                || why("SET needs f32 or i32 throughout".into()),
            )
        }
        GGML_OP_CONCAT => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(concat(a, b, &n.out), || {
                why(format!("CONCAT: no kernel for {}", t(a.ty)))
            })
        }
        GGML_OP_ADD1 => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            let pair = (a.ty, b.ty);
            rule(
                pair == (GGML_TYPE_F32, GGML_TYPE_F32)
                    || pair == (GGML_TYPE_F16, GGML_TYPE_F32)
                    || pair == (GGML_TYPE_F16, GGML_TYPE_F16),
                || why("ADD1: no kernel for these types".into()),
            )
        }
        GGML_OP_FILL => rule(f32_or_f16(n.out.ty), || {
            why("FILL makes f32 or f16 only".into())
        }),
        GGML_OP_SOFT_MAX => {
            let a = n.s(0)?;
            rule(
                a.is_contiguous()
                    && a.ty == GGML_TYPE_F32
                    && n.src(1).is_none_or(|m| f32_or_f16(m.ty)),
                || why("SOFT_MAX needs a contiguous f32 src0 and an f32 or f16 mask".into()),
            )
        }
        GGML_OP_SOFT_MAX_BACK => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            rule(
                a.is_contiguous()
                    && a.ty == GGML_TYPE_F32
                    && b.is_contiguous()
                    && b.ty == GGML_TYPE_F32,
                || why("SOFT_MAX_BACK needs contiguous f32 operands".into()),
            )
        }
        GGML_OP_SUM | GGML_OP_SUM_ROWS | GGML_OP_MEAN => {
            let a = n.s(0)?;
            rule(a.ty == GGML_TYPE_F32 && a.is_contiguous_rows(), || {
                why(format!("{} needs f32 src0 with rows packed", op_name(n.op)))
            })
        }
        GGML_OP_CROSS_ENTROPY_LOSS => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            let f32c = |o: &Operand| o.is_contiguous() && o.ty == GGML_TYPE_F32;
            rule(
                f32c(a) && f32c(b) && a.same_shape(b) && f32c(&n.out) && n.out.is_scalar(),
                || {
                    why("CROSS_ENTROPY_LOSS needs contiguous f32 logits and labels of one shape, a scalar result".into())
                },
            )
        }
        GGML_OP_CROSS_ENTROPY_LOSS_BACK => {
            let (g, a, b) = (n.s(0)?, n.s(1)?, n.s(2)?);
            let f32c = |o: &Operand| o.is_contiguous() && o.ty == GGML_TYPE_F32;
            rule(
                f32c(g)
                    && g.is_scalar()
                    && f32c(a)
                    && f32c(b)
                    && a.same_shape(b)
                    && a.same_shape(&n.out)
                    && f32c(&n.out),
                || why("CROSS_ENTROPY_LOSS_BACK needs contiguous f32 operands".into()),
            )
        }
        GGML_OP_COUNT_EQUAL => {
            let (a, b) = (n.s(0)?, n.s(1)?);
            let i32c = |o: &Operand| o.is_contiguous() && o.ty == GGML_TYPE_I32;
            rule(i32c(a) && i32c(b), || {
                why("COUNT_EQUAL needs contiguous i32 operands".into())
            })
        }
        op => Err(why(format!(
            "{} is not transcribed for the audit: refused",
            op_name(op)
        ))),
    }
}
