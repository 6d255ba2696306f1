//! The op audit: which nodes of a graph a GPU backend of the pinned ggml
//! would refuse, decided here on any machine (the CPU build included) by a
//! transcription of the backends' `supports_op` into pure Rust over a
//! description of each node ([`Node`]: op, op params, result and source
//! types, shapes and strides). [`crate::Backend::compute`] asks the real
//! `ggml_backend_supports_op` of the backend it runs on; this module asks
//! the backends this machine may not have, so a graph the trainer builds is
//! known to run on CUDA and Metal before anyone owns such a GPU.
//!
//! Transcribed (one file each, every rule citing its source):
//! - [`GpuTarget::Cuda`], from `ggml/src/ggml-cuda/ggml-cuda.cu,
//!   ggml_backend_cuda_device_supports_op` (`audit/cuda.rs`).
//! - [`GpuTarget::Metal`], from `ggml/src/ggml-metal/ggml-metal-device.m,
//!   ggml_metal_device_supports_op` for an Apple7-family GPU (M1 and later,
//!   `audit/metal.rs`).
//!
//! - [`GpuTarget::Vulkan`], from `ggml/src/ggml-vulkan/ggml-vulkan.cpp,
//!   ggml_backend_vk_device_supports_op` for a device of given limits
//!   ([`VulkanDevice`]; `audit/vulkan.rs`).
//!
//! Only the ops a training graph could use are transcribed; any other op
//! is reported as a violation ("not transcribed"), never assumed to run.

mod cuda;
mod metal;
mod vulkan;

pub use vulkan::VulkanDevice;

use crate::ffi::{op_name, type_name, type_traits, Graph, Tensor};
use llama_cpp_sys_2 as sys;

/// A GPU backend whose `supports_op` the audit knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GpuTarget {
    /// ggml's CUDA backend.
    Cuda,
    /// ggml's Metal backend on an Apple7-family GPU (M1 and later): SIMD
    /// group reduction and matrix ops and bfloat present, 32 KiB of
    /// threadgroup memory.
    Metal,
    /// ggml's Vulkan backend on a device with these limits.
    Vulkan(VulkanDevice),
}

impl GpuTarget {
    /// CUDA, Metal, and Vulkan at [`VulkanDevice::LIMIT_32BIT`].
    pub const ALL: [GpuTarget; 3] = [
        GpuTarget::Cuda,
        GpuTarget::Metal,
        GpuTarget::Vulkan(VulkanDevice::LIMIT_32BIT),
    ];

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            GpuTarget::Cuda => "CUDA",
            GpuTarget::Metal => "Metal",
            GpuTarget::Vulkan(_) => "Vulkan",
        }
    }
}

impl std::fmt::Display for GpuTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor as the rules see it: ggml type id, dims and byte strides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    /// ggml type id (`GGML_TYPE_*`).
    pub ty: u32,
    /// Dims, innermost first.
    pub ne: [i64; 4],
    /// Strides in bytes.
    pub nb: [usize; 4],
}

impl Operand {
    /// A contiguous tensor of type `ty` and dims `ne` (strides as ggml lays
    /// a new tensor out), or `None` for a type ggml does not know.
    pub fn contiguous(ty: u32, ne: [i64; 4]) -> Option<Operand> {
        let t = type_traits(ty)?;
        let mut nb = [0usize; 4];
        nb[0] = t.type_size;
        nb[1] = t.type_size * (ne[0] / t.blck_size) as usize;
        nb[2] = nb[1] * ne[1] as usize;
        nb[3] = nb[2] * ne[2] as usize;
        Some(Operand { ty, ne, nb })
    }

    /// This operand with dims `a` and `b` swapped (a view, as
    /// `ggml_transpose` / `ggml_permute` make).
    pub fn swapped(mut self, a: usize, b: usize) -> Operand {
        self.ne.swap(a, b);
        self.nb.swap(a, b);
        self
    }

    fn type_size(&self) -> usize {
        type_traits(self.ty).map_or(0, |t| t.type_size)
    }

    fn blck_size(&self) -> i64 {
        type_traits(self.ty).map_or(0, |t| t.blck_size)
    }

    /// `ggml_is_quantized` of its type.
    pub fn quantized(&self) -> bool {
        type_traits(self.ty).is_some_and(|t| t.quantized)
    }

    /// ggml/src/ggml.c, `ggml_is_contiguous_m_n`: dims `1..=m` may have any
    /// stride; dims above `m` (and below `n`) are packed.
    fn contiguous_m_n(&self, m: usize, n: usize) -> bool {
        let mut next_nb = self.type_size();
        if self.ne[0] != self.blck_size() && self.nb[0] != next_nb {
            return false;
        }
        next_nb *= (self.ne[0] / self.blck_size().max(1)) as usize;
        for i in 1..n {
            if i > m {
                if self.ne[i] != 1 && self.nb[i] != next_nb {
                    return false;
                }
                next_nb *= self.ne[i] as usize;
            } else {
                next_nb = self.ne[i] as usize * self.nb[i];
            }
        }
        true
    }

    /// `ggml_is_contiguous` (= `_0`).
    pub fn is_contiguous(&self) -> bool {
        self.contiguous_m_n(0, 4)
    }

    /// `ggml_is_contiguous_1`: contiguous above dim 1.
    pub fn is_contiguous_1(&self) -> bool {
        self.contiguous_m_n(1, 4)
    }

    /// `ggml_is_contiguous_2`: contiguous above dim 2.
    pub fn is_contiguous_2(&self) -> bool {
        self.contiguous_m_n(2, 4)
    }

    /// `ggml_is_contiguous_to_3`: dims 0..3 packed.
    pub fn is_contiguous_to_3(&self) -> bool {
        self.contiguous_m_n(0, 3)
    }

    /// `ggml_is_contiguous_rows`: each row packed.
    pub fn is_contiguous_rows(&self) -> bool {
        self.ne[0] == self.blck_size() || self.nb[0] == self.type_size()
    }

    /// `ggml_is_transposed`.
    pub fn is_transposed(&self) -> bool {
        self.nb[0] > self.nb[1]
    }

    /// `ggml_nbytes`: bytes from its first to its last element.
    pub fn n_bytes(&self) -> u64 {
        if self.ne.iter().any(|&n| n <= 0) {
            return 0;
        }
        let blck = self.blck_size().max(1);
        let first = if blck == 1 {
            self.type_size() as u64
        } else {
            self.ne[0] as u64 * self.nb[0] as u64 / blck as u64
        };
        let from = if blck == 1 { 0 } else { 1 };
        first
            + (from..4)
                .map(|i| (self.ne[i] - 1) as u64 * self.nb[i] as u64)
                .sum::<u64>()
    }

    /// `ggml_is_scalar`: one element.
    pub fn is_scalar(&self) -> bool {
        self.ne == [1, 1, 1, 1]
    }

    /// `ggml_are_same_shape`.
    pub fn same_shape(&self, other: &Operand) -> bool {
        self.ne == other.ne
    }

    fn of(t: Tensor<'_>) -> Operand {
        Operand {
            ty: t.ty(),
            ne: t.ne(),
            nb: t.nb(),
        }
    }
}

/// One graph node as the rules see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Its name in the graph.
    pub name: String,
    /// ggml op id (`GGML_OP_*`).
    pub op: u32,
    /// The op's 16 parameter words (`op_params`).
    pub params: [i32; 16],
    /// The result.
    pub out: Operand,
    /// Its sources, `src[0]` first (ggml has up to 10).
    pub src: Vec<Option<Operand>>,
}

impl Node {
    /// The description of graph node `t`.
    pub fn of(t: Tensor<'_>) -> Node {
        Node {
            name: t.name(),
            op: t.op(),
            params: t.op_params(),
            out: Operand::of(t),
            src: (0..10).map(|i| t.src(i).map(Operand::of)).collect(),
        }
    }

    /// A node of op `op` with result `out` and sources `src`, parameters 0.
    pub fn new(op: u32, out: Operand, src: &[Operand]) -> Node {
        Node {
            name: String::new(),
            op,
            params: [0; 16],
            out,
            src: src.iter().copied().map(Some).collect(),
        }
    }

    /// Source `i`, if the op has one there.
    pub fn src(&self, i: usize) -> Option<&Operand> {
        self.src.get(i).and_then(|s| s.as_ref())
    }

    /// Source `i`, which the op always has (ggml sets it when it builds the
    /// node). A hand-made node without it is described as a missing
    /// operand by [`check`], not a panic.
    fn s(&self, i: usize) -> Result<&Operand, String> {
        self.src(i)
            .ok_or_else(|| format!("{} lacks source {i}", op_name(self.op)))
    }

    /// `ggml_get_unary_op` / `ggml_get_glu_op`: parameter word 0.
    fn sub_op(&self) -> u32 {
        self.params[0] as u32
    }

    /// Parameter word `i` read as the f32 ggml stored there.
    fn param_f32(&self, i: usize) -> f32 {
        f32::from_bits(self.params[i] as u32)
    }

    /// ggml's description of the op (`UNARY` ops by their kind, as
    /// `ggml_op_desc`).
    pub fn op_desc(&self) -> String {
        match self.op {
            sys::GGML_OP_UNARY => unary_name(self.sub_op()),
            sys::GGML_OP_GLU => glu_name(self.sub_op()),
            op => op_name(op),
        }
    }

    /// `src, src -> result` type names.
    pub fn types(&self) -> String {
        let srcs: Vec<String> = self.src.iter().flatten().map(|s| type_name(s.ty)).collect();
        format!("{} -> {}", srcs.join(", "), type_name(self.out.ty))
    }
}

fn unary_name(u: u32) -> String {
    const NAMES: [&str; 22] = [
        "ABS",
        "SGN",
        "NEG",
        "STEP",
        "TANH",
        "ELU",
        "RELU",
        "SIGMOID",
        "GELU",
        "GELU_QUICK",
        "SILU",
        "HARDSWISH",
        "HARDSIGMOID",
        "EXP",
        "EXPM1",
        "SOFTPLUS",
        "GELU_ERF",
        "XIELU",
        "FLOOR",
        "CEIL",
        "ROUND",
        "TRUNC",
    ];
    NAMES
        .get(u as usize)
        .map_or_else(|| format!("UNARY {u}"), |s| s.to_string())
}

fn glu_name(g: u32) -> String {
    const NAMES: [&str; 7] = [
        "REGLU",
        "GEGLU",
        "SWIGLU",
        "SWIGLU_OAI",
        "GEGLU_ERF",
        "GEGLU_QUICK",
        "SWIGLU_CLAMP",
    ];
    NAMES
        .get(g as usize)
        .map_or_else(|| format!("GLU {g}"), |s| s.to_string())
}

/// A node the target's `supports_op` refuses (or that the audit does not
/// know and so refuses).
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// The backend.
    pub target: GpuTarget,
    /// The node's name.
    pub node: String,
    /// ggml's description of its op (`OUT_PROD`, `SILU`, ...).
    pub op: String,
    /// Its source and result types (`q4_K, f32 -> f32`).
    pub types: String,
    /// The rule it breaks, with its source.
    pub rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: node `{}` {} ({}): {}",
            self.target, self.node, self.op, self.types, self.rule
        )
    }
}

/// Whether `target` runs `node`: `Err` names the rule it breaks.
pub fn check(node: &Node, target: GpuTarget) -> Result<(), String> {
    match target {
        GpuTarget::Cuda => cuda::supports(node),
        GpuTarget::Metal => metal::supports(node, &metal::APPLE7),
        GpuTarget::Vulkan(device) => vulkan::supports(node, &device),
    }
}

/// Every node of `graph` that `target` would refuse, in execution order.
pub fn audit(graph: &Graph<'_>, target: GpuTarget) -> Vec<Violation> {
    graph
        .nodes()
        .filter_map(|t| {
            let node = Node::of(t);
            check(&node, target).err().map(|rule| Violation {
                target,
                node: node.name.clone(),
                op: node.op_desc(),
                types: node.types(),
                rule,
            })
        })
        .collect()
}

/// `Ok` when `ok`, else the rule `why`.
fn rule(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}

#[cfg(test)]
mod tests;
