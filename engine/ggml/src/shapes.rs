//! Model shapes without weights: a configuration and every weight's GGUF
//! name, ggml type and dims, enough to build the trainer's graphs with
//! [`DeviceModel::planned`](crate::DeviceModel::planned) (tensors without
//! memory) for the op audit and memory planning of models this machine
//! does not hold. Presets: [`qwen2_5_coder_0_5b_q4_k_m`] and
//! [`qwen3_4b_q4_k_m`].

use crate::ffi::types;
use crate::weights::proj_dims;
use cleaner_kernels::rope::RopeLayout;
use cleaner_models::{Architecture, Config, Proj};
use llama_cpp_sys_2 as sys;

/// One weight tensor of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightShape {
    /// Its GGUF name (`blk.3.attn_q.weight`).
    pub name: String,
    /// ggml type id.
    pub ty: u32,
    /// ggml dims, innermost first (`[n_in, n_out]` for a matrix).
    pub ne: Vec<usize>,
}

/// A model as the graphs see it, without its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    /// What it is (`Qwen3-4B Q4_K_M`).
    pub name: &'static str,
    /// Its configuration.
    pub config: Config,
    /// Every weight, matrices and vectors.
    pub tensors: Vec<WeightShape>,
    /// The output matrix's name (the embedding's when tied).
    pub output: String,
}

/// The matrices a llama-style block reads, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matrix {
    /// `token_embd.weight`.
    Embedding,
    /// `output.weight` (untied models only).
    Output,
    /// Projection `p` of block `l`.
    Proj(usize, Proj),
}

impl ModelShape {
    /// The weights of a llama-style model (llama, qwen2, qwen3) of
    /// `config`, each matrix of the type `matrix_type` gives it; vectors
    /// (norms, biases) f32, as GGUF stores them. `tied`: the output reads
    /// the embedding matrix.
    pub fn llama_style(
        name: &'static str,
        config: Config,
        tied: bool,
        matrix_type: impl Fn(Matrix) -> u32,
    ) -> ModelShape {
        let c = &config;
        let mut tensors = Vec::new();
        let mut push = |name: String, ty: u32, ne: Vec<usize>| {
            tensors.push(WeightShape { name, ty, ne });
        };
        push(
            "token_embd.weight".into(),
            matrix_type(Matrix::Embedding),
            vec![c.n_embd, c.n_vocab],
        );
        if !tied {
            push(
                "output.weight".into(),
                matrix_type(Matrix::Output),
                vec![c.n_embd, c.n_vocab],
            );
        }
        push("output_norm.weight".into(), types::F32, vec![c.n_embd]);
        for l in 0..c.n_layer {
            for p in Proj::ALL {
                let (n_out, n_in) = proj_dims(c, p);
                let ty = matrix_type(Matrix::Proj(l, p));
                push(
                    format!("blk.{l}.{}.weight", p.gguf_name()),
                    ty,
                    vec![n_in, n_out],
                );
            }
            let mut vector = |stem: &str, n: usize| {
                push(format!("blk.{l}.{stem}"), types::F32, vec![n]);
            };
            vector("attn_norm.weight", c.n_embd);
            vector("ffn_norm.weight", c.n_embd);
            if c.qkv_bias {
                vector("attn_q.bias", c.q_dim());
                vector("attn_k.bias", c.kv_dim());
                vector("attn_v.bias", c.kv_dim());
            }
            if c.qk_norm {
                vector("attn_q_norm.weight", c.head_dim);
                vector("attn_k_norm.weight", c.head_dim);
            }
        }
        ModelShape {
            name,
            config,
            tensors,
            output: if tied {
                "token_embd.weight".into()
            } else {
                "output.weight".into()
            },
        }
    }

    /// Bytes of its weights in their types.
    pub fn weight_bytes(&self) -> usize {
        self.tensors
            .iter()
            .map(|t| {
                let rows: usize = t.ne[1..].iter().product();
                crate::ffi::row_size(t.ty, t.ne[0]).map_or(0, |r| r * rows)
            })
            .sum()
    }
}

/// Blocks of Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf whose `attn_v` is
/// q8_0 and `ffn_down` q6_K (the "more bits" layers of that file; the
/// others are q5_0 and q4_K).
const QWEN2_5_0_5B_MORE_BITS: [usize; 12] = [0, 1, 3, 6, 7, 8, 9, 10, 13, 16, 19, 21];

/// Qwen2.5-0.5B-Instruct in Q4_K_M, as the asset
/// `Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf` stores it (the Coder model has
/// Qwen2.5-0.5B's shapes; the types were read from that file, and
/// `tests/shapes.rs` checks them against it): 24 qwen2 blocks of width 896,
/// 14 query and 2 key/value heads of 64, feed-forward 4864, vocabulary
/// 151936, q/k/v biases, a separate q8_0 output matrix and a q5_0
/// embedding. Rows of 896 values are not whole 256-value K-quant blocks,
/// so llama.cpp's Q4_K_M mix fell back to q5_0 (for q4_K) and q8_0 (for
/// q6_K) on every matrix read along 896, and kept q4_K / q6_K only on
/// `ffn_down` (rows of 4864 = 19 x 256).
pub fn qwen2_5_coder_0_5b_q4_k_m() -> ModelShape {
    let config = Config {
        arch: Architecture::Qwen2,
        n_vocab: 151_936,
        n_embd: 896,
        n_layer: 24,
        n_head: 14,
        n_head_kv: 2,
        head_dim: 64,
        n_ff: 4864,
        n_rot: 64,
        rope_freq_base: 1e6,
        rope_layout: RopeLayout::Neox,
        rms_eps: 1e-6,
        context_length: 32_768,
        qkv_bias: true,
        qk_norm: false,
    };
    ModelShape::llama_style(
        "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        config,
        false,
        |m| match m {
            Matrix::Embedding => sys::GGML_TYPE_Q5_0,
            Matrix::Output => sys::GGML_TYPE_Q8_0,
            Matrix::Proj(l, p) => {
                let more = QWEN2_5_0_5B_MORE_BITS.contains(&l);
                match (p, more) {
                    (Proj::V, true) => sys::GGML_TYPE_Q8_0,
                    (Proj::Down, true) => sys::GGML_TYPE_Q6_K,
                    (Proj::Down, false) => sys::GGML_TYPE_Q4_K,
                    _ => sys::GGML_TYPE_Q5_0,
                }
            }
        },
    )
}

/// llama.cpp's `use_more_bits` (src/llama-quant.cpp,
/// llama_tensor_get_type_impl): the first and last eighth of the blocks
/// and every third one between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

/// Qwen3-4B in Q4_K_M: 36 qwen3 blocks of width 2560, 32 query and 8
/// key/value heads of 128, feed-forward 9728, vocabulary 151936, RoPE base
/// 1e6, q/k RMSNorm, output tied to the embedding.
///
/// Types as the pinned `src/llama-quant.cpp, llama_tensor_get_type` gives
/// them for `LLAMA_FTYPE_MOSTLY_Q4_K_M` (default type q4_K):
/// - `token_embd` is also the output (tied): the OUTPUT rule applies, rows
///   of 2560 are whole q4_K blocks and q4_K is not q8_0, so q6_K.
/// - `attn_v`: q6_K where `use_more_bits(i, 36)` (blocks 0-3, 31-35 and
///   6, 9, ..., 30), else q4_K; `ffn_down` likewise by block.
/// - `attn_q`, `attn_k`, `attn_output`, `ffn_gate`, `ffn_up`: no Q4_K_M
///   rule for a dense model, so q4_K.
/// - Every matrix's rows (2560, 4096, 9728 values) are whole 256-value
///   blocks, so `tensor_type_fallback` changes nothing; 1-D tensors
///   (norms) stay f32.
pub fn qwen3_4b_q4_k_m() -> ModelShape {
    let config = Config {
        arch: Architecture::Qwen3,
        n_vocab: 151_936,
        n_embd: 2560,
        n_layer: 36,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 128,
        n_ff: 9728,
        n_rot: 128,
        rope_freq_base: 1e6,
        rope_layout: RopeLayout::Neox,
        rms_eps: 1e-6,
        context_length: 40_960,
        qkv_bias: false,
        qk_norm: true,
    };
    let n_layer = config.n_layer;
    ModelShape::llama_style("Qwen3-4B Q4_K_M", config, true, |m| match m {
        Matrix::Embedding | Matrix::Output => sys::GGML_TYPE_Q6_K,
        Matrix::Proj(l, Proj::V | Proj::Down) if use_more_bits(l, n_layer) => sys::GGML_TYPE_Q6_K,
        Matrix::Proj(..) => sys::GGML_TYPE_Q4_K,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_of_36_blocks() {
        let more: Vec<usize> = (0..36).filter(|&i| use_more_bits(i, 36)).collect();
        assert_eq!(
            more,
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31, 32, 33, 34, 35]
        );
    }

    #[test]
    fn qwen3_4b_weighs_what_its_file_does() {
        let s = qwen3_4b_q4_k_m();
        // 36 x (7 matrices + 4 vectors) + embedding + output norm.
        assert_eq!(s.tensors.len(), 36 * 11 + 2);
        // Qwen3-4B has ~4.02e9 parameters; Q4_K_M files of it are ~2.5 GB.
        let gb = s.weight_bytes() as f64 / 1e9;
        assert!((2.2..2.6).contains(&gb), "{gb} GB");
    }
}
