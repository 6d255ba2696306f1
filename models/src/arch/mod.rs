//! Architecture families and their typed configuration, read once from GGUF
//! metadata. One file per family says how it differs from the common
//! llama-style decoder: [`llama`] (SmolLM2), [`qwen2`] (Qwen2.5: q/k/v biases),
//! [`qwen3`] (q/k RMSNorm per head).

pub mod llama;
pub mod qwen2;
pub mod qwen3;

use crate::error::{ModelError, ModelErrorKind};
use crate::gguf::GgufFile;
use cleaner_kernels::rope::RopeLayout;

/// A supported family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// llama (SmolLM2, Llama 2/3).
    Llama,
    /// qwen2 (q/k/v biases).
    Qwen2,
    /// qwen3 (q/k RMS norms).
    Qwen3,
}

impl Architecture {
    /// `general.architecture` values this crate runs.
    pub const SUPPORTED: [&'static str; 3] = ["llama", "qwen2", "qwen3"];

    /// The `general.architecture` value.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The family.
    pub arch: Architecture,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Residual width.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Per-head dimension of queries and keys (and values).
    pub head_dim: usize,
    /// Feed-forward width.
    pub n_ff: usize,
    /// Dimensions of each head that RoPE rotates.
    pub n_rot: usize,
    /// RoPE theta base.
    pub rope_freq_base: f32,
    /// RoPE pairing.
    pub rope_layout: RopeLayout,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Trained context length.
    pub context_length: usize,
    /// q, k, v projections carry biases (Qwen2).
    pub qkv_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
}

impl Config {
    /// Reads the configuration of whatever supported family `file` declares.
    pub fn from_gguf(file: &GgufFile) -> Result<Config, ModelError> {
        let arch = file.architecture()?;
        match arch {
            "llama" => llama::config(file),
            "qwen2" => qwen2::config(file),
            "qwen3" => qwen3::config(file),
            other => Err(ModelError::at(
                file.path(),
                ModelErrorKind::UnknownArchitecture {
                    found: other.to_string(),
                    supported: Architecture::SUPPORTED.to_vec(),
                },
            )),
        }
    }

    /// Rows of the q projection (`n_head * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Rows of the k and v projections.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// Reads the keys every llama-style family shares, under `{arch}.` prefixes;
/// the family files then set what differs.
pub(crate) fn common(file: &GgufFile, arch: Architecture) -> Result<Config, ModelError> {
    let a = arch.name();
    let req = |key: &str| -> Result<usize, ModelError> {
        Ok(file.get_u64(&format!("{a}.{key}"))? as usize)
    };
    let n_embd = req("embedding_length")?;
    let n_head = req("attention.head_count")?;
    let n_head_kv = match file.get(&format!("{a}.attention.head_count_kv")) {
        Some(_) => req("attention.head_count_kv")?,
        None => n_head,
    };
    let bad = |key: &str, value: String, why: &str| {
        ModelError::at(
            file.path(),
            ModelErrorKind::BadConfig {
                key: format!("{a}.{key}"),
                value,
                why: why.to_string(),
            },
        )
    };
    if n_head == 0 {
        return Err(bad(
            "attention.head_count",
            "0".into(),
            "a model needs at least one head",
        ));
    }
    if n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(bad(
            "attention.head_count_kv",
            n_head_kv.to_string(),
            &format!("must divide the head count {n_head}"),
        ));
    }
    let head_dim = match file.get(&format!("{a}.attention.key_length")) {
        Some(_) => req("attention.key_length")?,
        None => {
            if n_embd % n_head != 0 {
                return Err(bad(
                    "embedding_length",
                    n_embd.to_string(),
                    &format!("not divisible by {n_head} heads"),
                ));
            }
            n_embd / n_head
        }
    };
    if file.get(&format!("{a}.attention.value_length")).is_some() {
        let v = req("attention.value_length")?;
        if v != head_dim {
            return Err(bad(
                "attention.value_length",
                v.to_string(),
                &format!("must equal key_length {head_dim}"),
            ));
        }
    }
    let n_rot = match file.get(&format!("{a}.rope.dimension_count")) {
        Some(_) => req("rope.dimension_count")?,
        None => head_dim,
    };
    if n_rot % 2 != 0 || n_rot > head_dim {
        return Err(bad(
            "rope.dimension_count",
            n_rot.to_string(),
            &format!("must be even and at most the head size {head_dim}"),
        ));
    }
    let f = |key: &str, default: f64| -> Result<f64, ModelError> {
        let k = format!("{a}.{key}");
        Ok(if file.get(&k).is_some() {
            file.get_f64(&k)?
        } else {
            default
        })
    };
    let rope_freq_base = f("rope.freq_base", 10000.0)? as f32;
    if !(rope_freq_base > 1.0 && rope_freq_base.is_finite()) {
        return Err(bad(
            "rope.freq_base",
            rope_freq_base.to_string(),
            "must be a finite number above 1",
        ));
    }
    for key in ["rope.scaling.type", "rope.scaling.factor"] {
        let k = format!("{a}.{key}");
        if let Some(v) = file.get(&k) {
            let trivial =
                v.as_str() == Some("none") || v.as_f64() == Some(1.0) || v.as_f64() == Some(0.0);
            if !trivial {
                return Err(bad(
                    key,
                    format!("{v:?}"),
                    "RoPE scaling is not implemented by the trainer's forward pass",
                ));
            }
        }
    }
    let rms_eps = f("attention.layer_norm_rms_epsilon", 1e-5)? as f32;
    if !(rms_eps > 0.0 && rms_eps < 1.0) {
        return Err(bad(
            "attention.layer_norm_rms_epsilon",
            rms_eps.to_string(),
            "must be in (0, 1)",
        ));
    }
    let embd = file.tensor("token_embd.weight").ok_or_else(|| {
        ModelError::at(
            file.path(),
            ModelErrorKind::MissingTensor("token_embd.weight".into()),
        )
    })?;
    let n_vocab = embd.dims.get(1).copied().unwrap_or(0) as usize;
    // Every block has nine or more tensors; a larger count is corrupt and must
    // not size an allocation.
    let n_layer = req("block_count")?;
    if n_layer == 0 || n_layer > file.tensors().len() / 9 {
        return Err(bad(
            "block_count",
            n_layer.to_string(),
            &format!("the file has {} tensors", file.tensors().len()),
        ));
    }
    Ok(Config {
        arch,
        n_vocab,
        n_embd,
        n_layer,
        n_head,
        n_head_kv,
        head_dim,
        n_ff: req("feed_forward_length")?,
        n_rot,
        rope_freq_base,
        rope_layout: RopeLayout::Normal,
        rms_eps,
        context_length: req("context_length")?,
        qkv_bias: false,
        qk_norm: false,
    })
}
