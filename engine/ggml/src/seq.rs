//! One token sequence on the device: its inputs (token ids, positions,
//! next-token targets, the causal masks of the attention's query blocks,
//! the row indices that dequantize whole matrices) and the tensors that
//! outlive a single graph (each block's input, kept for the backward; the
//! gradient flowing back through the residual stream). Every graph of a
//! forward or backward pass over the sequence reads these; they live in one
//! backend buffer allocated once per sequence.

use crate::error::GgmlError;
use crate::ffi::{types, Backend, Context, Tensor};
use crate::weights::DeviceModel;

/// The sizes that bound the trainer's working memory, independent of the
/// sequence length: attention runs over blocks of `query_block` queries (a
/// `[keys, query_block, n_head]` score tensor instead of `[T, T, n_head]`),
/// the log-prob head over `head_tokens` positions at a time and the output
/// matrix is dequantized `vocab_block` rows at a time (never a `T x vocab`
/// logit matrix or a whole f32 copy of the output matrix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunks {
    /// Queries per attention block.
    pub query_block: usize,
    /// Positions per log-prob head graph.
    pub head_tokens: usize,
    /// Output-matrix rows dequantized at once.
    pub vocab_block: usize,
}

impl Default for Chunks {
    /// Sizes whose transients stay near 100 MB each at Qwen3-4B's shapes
    /// (32 heads, a 151,936-token vocabulary, 2,560-wide) for T = 4096.
    fn default() -> Chunks {
        Chunks {
            query_block: 256,
            head_tokens: 128,
            vocab_block: 16384,
        }
    }
}

impl Chunks {
    /// Fails on a zero size.
    pub fn check(&self) -> Result<(), GgmlError> {
        if self.query_block == 0 || self.head_tokens == 0 || self.vocab_block == 0 {
            return Err(GgmlError::BadRequest(format!(
                "chunk sizes must be positive: {self:?}"
            )));
        }
        Ok(())
    }

    /// `[start, end)` ranges of `step` over `0..n`.
    pub(crate) fn ranges(n: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
        (0..n).step_by(step).map(move |s| (s, (s + step).min(n)))
    }
}

/// What the graphs of a pass keep between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Two residual-stream buffers used in turn (log-probs only).
    PingPong,
    /// Every block's input (the forward of a training step), plus the
    /// gradient buffers and `d loss / d logprob` of its backward.
    Checkpoints,
}

/// A sequence's device tensors (see the module documentation).
pub(crate) struct Seq {
    ctx: Context,
    n_tok: usize,
    chunks: Chunks,
    keep: Keep,
    n_tensors: usize,
    /// Bytes of its tensors (also when planned, without memory).
    bytes: usize,
}

/// Names of the tensors of [`Seq`].
const TOKENS: &str = "tokens";
const POS: &str = "positions";
const NEG_POS: &str = "negated_positions";
const TARGET_IDS: &str = "target_ids";
const TARGET_FLAT: &str = "target_flat_index";
const DLOGPROB: &str = "dlogprob";
const IOTA: &str = "row_indices";

fn tri_name(n: usize) -> String {
    format!("causal_{n}")
}
fn x_name(i: usize) -> String {
    format!("x_{i}")
}
fn dx_name(i: usize) -> String {
    format!("dx_{i}")
}

impl Seq {
    /// Makes and fills the tensors for `tokens` on `backend`.
    pub fn new(
        backend: &Backend,
        model: &DeviceModel,
        tokens: &[u32],
        chunks: Chunks,
        keep: Keep,
    ) -> Result<Seq, GgmlError> {
        let (seq, tri_sizes, iota) = Seq::make(model, tokens.len(), chunks, keep)?;
        seq.ctx.allocate(backend)?;
        seq.fill(tokens, &tri_sizes, iota, model.config().n_vocab)?;
        Ok(seq)
    }

    /// The tensors for `n_tok` tokens without memory, for planning and
    /// auditing graphs (see [`Context::plan_only`]).
    pub fn planned(
        model: &DeviceModel,
        n_tok: usize,
        chunks: Chunks,
        keep: Keep,
    ) -> Result<Seq, GgmlError> {
        let (seq, _, _) = Seq::make(model, n_tok, chunks, keep)?;
        seq.ctx.plan_only()?;
        Ok(seq)
    }

    /// The tensors, not yet placed; with the causal block sizes and the
    /// row-index length to fill.
    fn make(
        model: &DeviceModel,
        n_tok: usize,
        chunks: Chunks,
        keep: Keep,
    ) -> Result<(Seq, Vec<usize>, usize), GgmlError> {
        chunks.check()?;
        let c = model.config();
        let xs = match keep {
            Keep::PingPong => 2,
            Keep::Checkpoints => c.n_layer + 1,
        };
        let tri_sizes = tri_sizes(n_tok, chunks.query_block);
        let iota = largest_rows(model);
        let n_tensors = 5 + tri_sizes.len() + 1 + xs + 3;
        let ctx = Context::new(n_tensors, 0)?;
        let mut bytes = 0;
        let mut add = |ty: u32, ne: &[usize], name: &str| -> Result<(), GgmlError> {
            bytes += ctx.new_tensor(ty, ne, name)?.n_bytes();
            Ok(())
        };
        for name in [TOKENS, POS, NEG_POS, TARGET_IDS, TARGET_FLAT] {
            add(types::I32, &[n_tok], name)?;
        }
        for &n in &tri_sizes {
            add(types::F32, &[n, n], &tri_name(n))?;
        }
        add(types::I32, &[iota], IOTA)?;
        for i in 0..xs {
            add(types::F32, &[c.n_embd, n_tok], &x_name(i))?;
        }
        if keep == Keep::Checkpoints {
            for i in 0..2 {
                add(types::F32, &[c.n_embd, n_tok], &dx_name(i))?;
            }
            add(types::F32, &[1, n_tok], DLOGPROB)?;
        }
        let seq = Seq {
            ctx,
            n_tok,
            chunks,
            keep,
            n_tensors,
            bytes,
        };
        Ok((seq, tri_sizes, iota))
    }

    fn fill(
        &self,
        tokens: &[u32],
        tri_sizes: &[usize],
        iota: usize,
        n_vocab: usize,
    ) -> Result<(), GgmlError> {
        let n = self.n_tok;
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        self.get(TOKENS)?.set_i32(&ids)?;
        self.get(POS)?.set_i32(&(0..n as i32).collect::<Vec<_>>())?;
        self.get(NEG_POS)?
            .set_i32(&(0..n as i32).map(|p| -p).collect::<Vec<_>>())?;
        // The last position has no next token: target 0, and its log-prob
        // is dropped (and gets gradient 0).
        let next: Vec<i32> = (0..n)
            .map(|t| ids.get(t + 1).copied().unwrap_or(0))
            .collect();
        self.get(TARGET_IDS)?.set_i32(&next)?;
        // Index of the target in its head chunk's logits `[n_vocab, chunk]`.
        let h = self.chunks.head_tokens;
        let flat: Vec<i32> = (0..n)
            .map(|t| ((t % h) * n_vocab) as i32 + next[t])
            .collect();
        self.get(TARGET_FLAT)?.set_i32(&flat)?;
        for &m in tri_sizes {
            let mut mask = vec![0f32; m * m];
            for q in 0..m {
                mask[q * m + q + 1..(q + 1) * m].fill(f32::NEG_INFINITY);
            }
            self.get(&tri_name(m))?.set_f32(&mask)?;
        }
        self.get(IOTA)?
            .set_i32(&(0..iota as i32).collect::<Vec<_>>())?;
        if self.keep == Keep::Checkpoints {
            let c = self.get(&x_name(0))?.ne()[0] as usize;
            let zeros = vec![0f32; c * n];
            for i in 0..2 {
                self.get(&dx_name(i))?.set_f32(&zeros)?;
            }
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Tensor<'_>, GgmlError> {
        self.ctx.get(name).ok_or_else(|| GgmlError::Data {
            name: name.into(),
            detail: "missing from the sequence's tensors".into(),
        })
    }

    pub fn n_tok(&self) -> usize {
        self.n_tok
    }
    pub fn chunks(&self) -> Chunks {
        self.chunks
    }
    /// Tensors of other contexts a graph over this sequence may read.
    pub fn n_tensors(&self) -> usize {
        self.n_tensors
    }
    pub fn tokens(&self) -> Result<Tensor<'_>, GgmlError> {
        self.get(TOKENS)
    }
    pub fn pos(&self) -> Result<Tensor<'_>, GgmlError> {
        self.get(POS)
    }
    /// `-t` at position `t`: RoPE at negated positions is the inverse
    /// rotation, the backward of RoPE from the forward op.
    pub fn neg_pos(&self) -> Result<Tensor<'_>, GgmlError> {
        self.get(NEG_POS)
    }
    /// `tokens[t + 1]` (0 at the last position).
    pub fn target_ids(&self) -> Result<Tensor<'_>, GgmlError> {
        self.get(TARGET_IDS)
    }
    /// `(t mod head_tokens) * n_vocab + tokens[t + 1]`.
    pub fn target_flat(&self) -> Result<Tensor<'_>, GgmlError> {
        self.get(TARGET_FLAT)
    }
    /// `[n, n]`: 0 where key <= query, -inf above (the diagonal block of a
    /// query block of `n` queries).
    pub fn causal(&self, n: usize) -> Result<Tensor<'_>, GgmlError> {
        self.get(&tri_name(n))
    }
    /// The row indices `start..start + n` (a view of `0..largest`): with
    /// `get_rows`, they dequantize those rows of a matrix.
    pub fn rows<'a>(
        &'a self,
        ctx: &'a Context,
        start: usize,
        n: usize,
    ) -> Result<Tensor<'a>, GgmlError> {
        ctx.view(self.get(IOTA)?, [n, 1, 1, 1], start * 4)
    }
    /// Residual stream slot `i` (block `i`'s input when checkpointing).
    pub fn x(&self, i: usize) -> Result<Tensor<'_>, GgmlError> {
        self.get(&x_name(if self.keep == Keep::PingPong {
            i % 2
        } else {
            i
        }))
    }
    /// Gradient buffer `i % 2`.
    pub fn dx(&self, i: usize) -> Result<Tensor<'_>, GgmlError> {
        self.get(&dx_name(i % 2))
    }
    /// `d loss / d logprob`, `[1, n_tok]` (0 at the last position).
    pub fn dlogprob(&self) -> Result<Tensor<'_>, GgmlError> {
        self.get(DLOGPROB)
    }
    /// Bytes of its tensors (the backend memory it holds once allocated,
    /// alignment aside).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Sizes of the causal diagonal blocks: the full query block, and the last
/// one's when shorter.
fn tri_sizes(n_tok: usize, block: usize) -> Vec<usize> {
    let mut v = vec![block.min(n_tok)];
    let last = n_tok % block;
    if n_tok > block && last != 0 {
        v.push(last);
    }
    v
}

/// The most rows of any matrix the graphs dequantize.
fn largest_rows(model: &DeviceModel) -> usize {
    let c = model.config();
    [c.q_dim(), c.kv_dim(), c.n_embd, c.n_ff, c.n_vocab]
        .into_iter()
        .max()
        .unwrap_or(0)
}
