//! Base weights and LoRA factors on a backend.
//!
//! [`DeviceModel`] copies a [`Transformer`]'s matrices from the memory-mapped
//! GGUF into one backend buffer in their stored (quantized) types, byte for
//! byte, with no dequantized copy; the small vectors (norm weights, biases)
//! go as the f32 values the CPU trainer decoded at load. [`DeviceLora`] holds
//! an adapter's A and B factors as f32 tensors on the backend.
//!
//! Tensor names are the GGUF's (`blk.3.attn_q.weight`); LoRA factors are
//! `blk.3.attn_q.lora_a` / `.lora_b`, the names of llama.cpp's adapter files.

use crate::error::GgmlError;
use crate::ffi::{row_size, type_name, types, Backend, Context, Tensor};
use crate::shapes::ModelShape;
use cleaner_models::lora::proj_matrix;
use cleaner_models::{Config, Lora, MatrixRef, Proj, Transformer};

/// A model's weights on a backend.
pub struct DeviceModel {
    config: Config,
    ctx: Context,
    /// Name of the output matrix (the embedding's when tied).
    output: String,
    n_tensors: usize,
}

impl std::fmt::Debug for DeviceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceModel")
            .field("config", &self.config)
            .field("bytes", &self.ctx.allocated_bytes())
            .finish()
    }
}

impl DeviceModel {
    /// Copies `model`'s weights onto `backend`.
    pub fn upload(model: &Transformer, backend: &Backend) -> Result<DeviceModel, GgmlError> {
        let c = model.config().clone();
        let mut matrices: Vec<&MatrixRef> = vec![&model.token_embd];
        let tied = model.output.name == model.token_embd.name;
        if !tied {
            matrices.push(&model.output);
        }
        let mut vectors: Vec<(String, &[f32])> =
            vec![("output_norm.weight".into(), &model.output_norm)];
        for (l, layer) in model.layers.iter().enumerate() {
            matrices.extend(Proj::ALL.iter().map(|&p| proj_matrix(model, l, p)));
            let n = |s: &str| format!("blk.{l}.{s}");
            vectors.push((n("attn_norm.weight"), &layer.attn_norm));
            vectors.push((n("ffn_norm.weight"), &layer.ffn_norm));
            for (name, v) in [
                ("attn_q.bias", &layer.bq),
                ("attn_k.bias", &layer.bk),
                ("attn_v.bias", &layer.bv),
                ("attn_q_norm.weight", &layer.q_norm),
                ("attn_k_norm.weight", &layer.k_norm),
            ] {
                if let Some(v) = v {
                    vectors.push((n(name), v));
                }
            }
        }
        let n_tensors = matrices.len() + vectors.len();
        let ctx = Context::new(n_tensors, 0)?;
        let file = model.file();
        let mut uploads: Vec<(&str, &[u8])> = Vec::with_capacity(matrices.len());
        for m in &matrices {
            let info = file.tensor(&m.name).ok_or_else(|| GgmlError::Data {
                name: m.name.clone(),
                detail: "missing from the file".into(),
            })?;
            let ty = info.ty.ggml_id();
            let bytes = file.tensor_data(info);
            let fits = row_size(ty, m.n_cols).map(|r| r * m.n_rows) == Some(bytes.len());
            if !fits {
                return Err(GgmlError::TensorType {
                    name: m.name.clone(),
                    ty: type_name(ty),
                    why: format!(
                        "ggml cannot hold {} x {} of it in {} bytes",
                        m.n_rows,
                        m.n_cols,
                        bytes.len()
                    ),
                });
            }
            ctx.new_tensor(ty, &[m.n_cols, m.n_rows], &m.name)?;
            uploads.push((&m.name, bytes));
        }
        for (name, v) in &vectors {
            ctx.new_tensor(types::F32, &[v.len()], name)?;
        }
        ctx.allocate(backend)?;
        for (name, bytes) in uploads {
            named(&ctx, name)?.set_bytes(bytes)?;
        }
        for (name, v) in &vectors {
            named(&ctx, name)?.set_f32(v)?;
        }
        Ok(DeviceModel {
            config: c,
            ctx,
            output: model.output.name.clone(),
            n_tensors,
        })
    }

    /// The weights of `shape` as tensors of the right types and dims that
    /// hold no memory ([`Context::plan_only`]): enough to build, audit and
    /// plan the trainer's graphs for a model this machine does not hold.
    /// A graph over them cannot be computed (its weights have no data).
    pub fn planned(shape: &ModelShape) -> Result<DeviceModel, GgmlError> {
        let n_tensors = shape.tensors.len();
        let ctx = Context::new(n_tensors, 0)?;
        for t in &shape.tensors {
            ctx.new_tensor(t.ty, &t.ne, &t.name)?;
        }
        named(&ctx, &shape.output)?;
        ctx.plan_only()?;
        Ok(DeviceModel {
            config: shape.config.clone(),
            ctx,
            output: shape.output.clone(),
            n_tensors,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Bytes of backend memory the weights take.
    pub fn bytes(&self) -> usize {
        self.ctx.allocated_bytes()
    }

    /// Tensors on the backend.
    pub fn n_tensors(&self) -> usize {
        self.n_tensors
    }

    /// The weight named `name` (GGUF name).
    pub fn tensor(&self, name: &str) -> Result<Tensor<'_>, GgmlError> {
        named(&self.ctx, name)
    }

    /// The output (vocabulary) matrix, `[n_embd, n_vocab]` in ggml dims.
    pub fn output(&self) -> Result<Tensor<'_>, GgmlError> {
        named(&self.ctx, &self.output)
    }

    /// The block-`l` tensor `blk.{l}.{stem}` if the model has it.
    pub fn layer_tensor(&self, l: usize, stem: &str) -> Option<Tensor<'_>> {
        self.ctx.get(&format!("blk.{l}.{stem}"))
    }
}

fn named<'a>(ctx: &'a Context, name: &str) -> Result<Tensor<'a>, GgmlError> {
    ctx.get(name).ok_or_else(|| GgmlError::Data {
        name: name.into(),
        detail: "not on the device".into(),
    })
}

/// A LoRA adapter's factors on a backend: per adapted projection, A
/// `[n_in, rank]` and B `[rank, n_out]` in ggml dims (row-major `[rank,
/// n_in]` and `[n_out, rank]`, the layout of [`cleaner_models::LoraPair`]).
pub struct DeviceLora {
    ctx: Context,
    rank: usize,
    scale: f32,
    /// `(layer, projection)` of each adapted pair, in the adapter's order.
    pairs: Vec<(usize, Proj)>,
}

impl std::fmt::Debug for DeviceLora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLora")
            .field("rank", &self.rank)
            .field("pairs", &self.pairs.len())
            .finish()
    }
}

impl DeviceLora {
    /// Copies `lora` (which must fit `model`) onto `backend`.
    pub fn upload(
        lora: &Lora,
        model: &DeviceModel,
        backend: &Backend,
    ) -> Result<DeviceLora, GgmlError> {
        let c = model.config();
        let rank = lora.config.rank;
        let bad = |detail: String| GgmlError::Data {
            name: "adapter".into(),
            detail,
        };
        if lora.layers.len() != c.n_layer || rank == 0 {
            return Err(bad(format!(
                "{} layers of rank {rank}, the model has {} layers",
                lora.layers.len(),
                c.n_layer
            )));
        }
        let mut pairs = Vec::new();
        for (l, layer) in lora.layers.iter().enumerate() {
            for (p, pair) in layer {
                let (n_out, n_in) = proj_dims(c, *p);
                if (pair.n_out, pair.n_in) != (n_out, n_in)
                    || pair.a.len() != rank * n_in
                    || pair.b.len() != n_out * rank
                {
                    return Err(bad(format!(
                        "blk.{l}.{} is {}x{} rank {rank}, the model's is {n_out}x{n_in}",
                        p.gguf_name(),
                        pair.n_out,
                        pair.n_in
                    )));
                }
                pairs.push((l, *p));
            }
        }
        let ctx = Context::new(2 * pairs.len(), 0)?;
        for &(l, p) in &pairs {
            let (n_out, n_in) = proj_dims(c, p);
            ctx.new_tensor(types::F32, &[n_in, rank], &factor_name(l, p, 'a'))?;
            ctx.new_tensor(types::F32, &[rank, n_out], &factor_name(l, p, 'b'))?;
        }
        ctx.allocate(backend)?;
        let dl = DeviceLora {
            ctx,
            rank,
            scale: lora.scale(),
            pairs,
        };
        dl.set(lora)?;
        Ok(dl)
    }

    /// A rank-`rank` adapter on projections `projs` of every block of
    /// `model`, as tensors without memory ([`Context::plan_only`]), for
    /// building and planning graphs (see [`DeviceModel::planned`]).
    pub fn planned(
        model: &DeviceModel,
        rank: usize,
        alpha: f32,
        projs: &[Proj],
    ) -> Result<DeviceLora, GgmlError> {
        let c = model.config();
        if rank == 0 {
            return Err(GgmlError::BadRequest("an adapter of rank 0".into()));
        }
        let pairs: Vec<(usize, Proj)> = (0..c.n_layer)
            .flat_map(|l| {
                Proj::ALL
                    .into_iter()
                    .filter(|p| projs.contains(p))
                    .map(move |p| (l, p))
            })
            .collect();
        let ctx = Context::new(2 * pairs.len(), 0)?;
        for &(l, p) in &pairs {
            let (n_out, n_in) = proj_dims(c, p);
            ctx.new_tensor(types::F32, &[n_in, rank], &factor_name(l, p, 'a'))?;
            ctx.new_tensor(types::F32, &[rank, n_out], &factor_name(l, p, 'b'))?;
        }
        ctx.plan_only()?;
        Ok(DeviceLora {
            ctx,
            rank,
            scale: alpha / rank as f32,
            pairs,
        })
    }

    /// Copies new values of the same adapter (after an optimizer step).
    pub fn set(&self, lora: &Lora) -> Result<(), GgmlError> {
        for &(l, p) in &self.pairs {
            let pair = lora.pair(l, p).ok_or_else(|| GgmlError::Data {
                name: factor_name(l, p, 'a'),
                detail: "the adapter lacks this pair".into(),
            })?;
            named(&self.ctx, &factor_name(l, p, 'a'))?.set_f32(&pair.a)?;
            named(&self.ctx, &factor_name(l, p, 'b'))?.set_f32(&pair.b)?;
        }
        Ok(())
    }

    /// Bytes of backend memory the factors take (0 when planned).
    pub fn bytes(&self) -> usize {
        self.ctx.allocated_bytes()
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Adapted `(layer, projection)` pairs, in the adapter's order (layer,
    /// then projection: the order of [`Lora::tensors`]).
    pub fn pairs(&self) -> &[(usize, Proj)] {
        &self.pairs
    }

    /// (A, B) of projection `p` in block `l`, if adapted.
    pub fn factors(&self, l: usize, p: Proj) -> Option<(Tensor<'_>, Tensor<'_>)> {
        Some((
            self.ctx.get(&factor_name(l, p, 'a'))?,
            self.ctx.get(&factor_name(l, p, 'b'))?,
        ))
    }
}

/// `blk.{l}.{proj}.lora_{a|b}`.
fn factor_name(l: usize, p: Proj, which: char) -> String {
    format!("blk.{l}.{}.lora_{which}", p.gguf_name())
}

/// (n_out, n_in) of projection `p`.
pub(crate) fn proj_dims(c: &Config, p: Proj) -> (usize, usize) {
    match p {
        Proj::Q => (c.q_dim(), c.n_embd),
        Proj::K | Proj::V => (c.kv_dim(), c.n_embd),
        Proj::O => (c.n_embd, c.q_dim()),
        Proj::Gate | Proj::Up => (c.n_ff, c.n_embd),
        Proj::Down => (c.n_embd, c.n_ff),
    }
}
