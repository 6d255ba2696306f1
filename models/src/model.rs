//! A transformer: a validated GGUF file plus its typed [`Config`] and the location,
//! format and shape of every tensor the forward pass uses. Matrices stay in
//! the memory map, quantized as stored; only the small per-layer vectors
//! (norm weights, biases: a few KiB per layer) are decoded into f32 at load.

use crate::arch::Config;
use crate::error::{ModelError, ModelErrorKind};
use crate::gguf::{GgufFile, TensorInfo};
use cleaner_kernels::matmul::{Precision, WeightError, Weights};
use cleaner_kernels::quant::dequantize;
use std::path::Path;

/// A weight matrix in the file: `[n_rows, n_cols]` = `[n_out, n_in]`
/// (ggml dims `[n_in, n_out]`).
#[derive(Clone, Debug)]
pub struct MatrixRef {
    /// Tensor name.
    pub name: String,
    index: usize,
    /// Rows (output features).
    pub n_rows: usize,
    /// Columns (input features).
    pub n_cols: usize,
}

/// One transformer block's tensors.
#[derive(Debug)]
pub struct Layer {
    /// `[n_embd]`
    pub attn_norm: Vec<f32>,
    /// `[q_dim, n_embd]`, `[kv_dim, n_embd]`, `[kv_dim, n_embd]`, `[n_embd, q_dim]`
    pub wq: MatrixRef,
    /// Key projection.
    pub wk: MatrixRef,
    /// Value projection.
    pub wv: MatrixRef,
    /// Output projection.
    pub wo: MatrixRef,
    /// `[q_dim]`, `[kv_dim]`, `[kv_dim]` (Qwen2)
    pub bq: Option<Vec<f32>>,
    /// Key bias (qwen2).
    pub bk: Option<Vec<f32>>,
    /// Value bias (qwen2).
    pub bv: Option<Vec<f32>>,
    /// `[head_dim]` each (Qwen3)
    pub q_norm: Option<Vec<f32>>,
    /// Key RMSNorm weight (qwen3).
    pub k_norm: Option<Vec<f32>>,
    /// `[n_embd]`
    pub ffn_norm: Vec<f32>,
    /// `[n_ff, n_embd]`, `[n_ff, n_embd]`, `[n_embd, n_ff]`
    pub w_gate: MatrixRef,
    /// Feed-forward up.
    pub w_up: MatrixRef,
    /// Feed-forward down.
    pub w_down: MatrixRef,
}

/// A loaded model. Cheap to open: the file is mapped, headers validated, and
/// nothing else is read until a forward pass touches the weights.
pub struct Transformer {
    file: GgufFile,
    config: Config,
    /// `[n_vocab, n_embd]`
    pub token_embd: MatrixRef,
    /// `[n_embd]`
    pub output_norm: Vec<f32>,
    /// `[n_vocab, n_embd]`; the embedding itself when the model ties them.
    pub output: MatrixRef,
    /// The blocks.
    pub layers: Vec<Layer>,
    /// The arithmetic of every product with a base weight matrix (the
    /// projections and the vocabulary); LoRA's small products stay f32.
    precision: Precision,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("path", &self.file.path())
            .field("config", &self.config)
            .finish()
    }
}

impl Transformer {
    /// Maps and validates the model at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Transformer, ModelError> {
        Transformer::from_gguf(GgufFile::open(path)?)
    }

    /// Validates an opened file as a model of a supported family.
    pub fn from_gguf(file: GgufFile) -> Result<Transformer, ModelError> {
        let config = Config::from_gguf(&file)?;
        let loader = Loader {
            file: &file,
            config: &config,
        };
        let c = &config;
        let token_embd = loader.matrix("token_embd.weight", c.n_vocab, c.n_embd)?;
        let output_norm = loader.vector("output_norm.weight", c.n_embd)?;
        let output = match file.tensor("output.weight") {
            Some(_) => loader.matrix("output.weight", c.n_vocab, c.n_embd)?,
            None => token_embd.clone(),
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let opt_vec =
                |s: &str, len: usize, wanted: bool| -> Result<Option<Vec<f32>>, ModelError> {
                    if wanted {
                        loader.vector(&n(s), len).map(Some)
                    } else {
                        Ok(None)
                    }
                };
            layers.push(Layer {
                attn_norm: loader.vector(&n("attn_norm.weight"), c.n_embd)?,
                wq: loader.matrix(&n("attn_q.weight"), c.q_dim(), c.n_embd)?,
                wk: loader.matrix(&n("attn_k.weight"), c.kv_dim(), c.n_embd)?,
                wv: loader.matrix(&n("attn_v.weight"), c.kv_dim(), c.n_embd)?,
                wo: loader.matrix(&n("attn_output.weight"), c.n_embd, c.q_dim())?,
                bq: opt_vec("attn_q.bias", c.q_dim(), c.qkv_bias)?,
                bk: opt_vec("attn_k.bias", c.kv_dim(), c.qkv_bias)?,
                bv: opt_vec("attn_v.bias", c.kv_dim(), c.qkv_bias)?,
                q_norm: opt_vec("attn_q_norm.weight", c.head_dim, c.qk_norm)?,
                k_norm: opt_vec("attn_k_norm.weight", c.head_dim, c.qk_norm)?,
                ffn_norm: loader.vector(&n("ffn_norm.weight"), c.n_embd)?,
                w_gate: loader.matrix(&n("ffn_gate.weight"), c.n_ff, c.n_embd)?,
                w_up: loader.matrix(&n("ffn_up.weight"), c.n_ff, c.n_embd)?,
                w_down: loader.matrix(&n("ffn_down.weight"), c.n_embd, c.n_ff)?,
            });
        }
        Ok(Transformer {
            file,
            config,
            token_embd,
            output_norm,
            output,
            layers,
            precision: Precision::F32,
        })
    }

    /// Sets the arithmetic of the products with base weights and of
    /// attention's tile products (default [`Precision::F32`]).
    /// [`Precision::Bf16`] roughly doubles their speed on AMD Zen 4, runs
    /// the products with the weights 2-3x faster on AMX tiles on Intel
    /// Xeons that have them, and is slower than f32 on Intel without AMX
    /// ([`Precision::auto`] picks the faster; CPUs without AVX-512 BF16 run
    /// f32), at a rounding of at most 2^-9 per operand, sums in f32; see
    /// `cleaner_kernels::matmul::matmul_wt_bf16` and
    /// `cleaner_kernels::attention::attention_forward_in`. Attention's tiles
    /// take bf16 only where it is their faster arithmetic
    /// ([`Precision::for_attention`]: AMD, and Intel with AMX tiles). LoRA's own products, norms and
    /// softmaxes stay f32.
    pub fn set_precision(&mut self, p: Precision) {
        self.precision = p;
    }

    /// The precision set by [`Transformer::set_precision`].
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The typed config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The underlying file (metadata, path, raw tensors).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// A matrix as the kernels see it, borrowed from the map.
    pub fn weights(&self, m: &MatrixRef) -> Weights<'_> {
        let info = &self.file.tensors()[m.index];
        // Validated at load (type decodable, size matches): cannot fail here.
        Weights::quantized(info.ty, self.file.tensor_data(info), m.n_rows, m.n_cols)
            .unwrap_or_else(|e| unreachable!("{}: validated at load: {e}", m.name))
    }

    pub(crate) fn err(&self, kind: ModelErrorKind) -> ModelError {
        ModelError::at(self.file.path(), kind)
    }
}

struct Loader<'a> {
    file: &'a GgufFile,
    config: &'a Config,
}

impl Loader<'_> {
    fn err(&self, kind: ModelErrorKind) -> ModelError {
        ModelError::at(self.file.path(), kind)
    }

    fn info(&self, name: &str, expected: &[u64]) -> Result<(usize, &TensorInfo), ModelError> {
        let index = self
            .file
            .tensor_position(name)
            .ok_or_else(|| self.err(ModelErrorKind::MissingTensor(name.to_string())))?;
        let info = &self.file.tensors()[index];
        if info.dims != expected {
            return Err(self.err(ModelErrorKind::TensorShape {
                name: name.into(),
                expected: expected.to_vec(),
                found: info.dims.clone(),
            }));
        }
        Ok((index, info))
    }

    fn matrix(&self, name: &str, n_rows: usize, n_cols: usize) -> Result<MatrixRef, ModelError> {
        let (index, info) = self.info(name, &[n_cols as u64, n_rows as u64])?;
        Weights::quantized(info.ty, self.file.tensor_data(info), n_rows, n_cols).map_err(|e| {
            let why = match e {
                WeightError::Unsupported(_) => e.to_string(),
                other => format!("{other} (arch {})", self.config.arch.name()),
            };
            self.err(ModelErrorKind::TensorType {
                name: name.into(),
                ty: info.ty.name(),
                why,
            })
        })?;
        Ok(MatrixRef {
            name: name.to_string(),
            index,
            n_rows,
            n_cols,
        })
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let (_, info) = self.info(name, &[len as u64])?;
        let mut out = vec![0f32; len];
        dequantize(info.ty, self.file.tensor_data(info), &mut out).map_err(|e| {
            self.err(ModelErrorKind::TensorType {
                name: name.into(),
                ty: info.ty.name(),
                why: e.to_string(),
            })
        })?;
        Ok(out)
    }
}
