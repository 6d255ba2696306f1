//! Adapter files: llama.cpp's GGUF LoRA format (what the rollout engine
//! loads) and PEFT's `adapter_model.safetensors` + `adapter_config.json` (what
//! the Python ecosystem loads). Both are written atomically (temporary file,
//! fsync, rename) and read back with every name and shape checked.
//!
//! GGUF (llama.cpp `llama-adapter.cpp`): `general.type = "adapter"`,
//! `adapter.type = "lora"`, `adapter.lora.alpha`; tensors
//! `<base tensor>.lora_a` with ggml dims `[n_in, rank]` and `.lora_b` with
//! `[rank, n_out]`, f32. llama.cpp scales by `alpha / rank` as we do.
//!
//! PEFT: tensors `base_model.model.model.layers.{l}.{module}.lora_A.weight`
//! `[rank, n_in]` and `lora_B.weight` `[n_out, rank]`. For the `llama` family
//! llama.cpp's converter permuted the rows of q and k so rotary pairs are
//! adjacent; B's rows are permuted back (and forth on reading) so a PEFT file
//! applies to the Hugging Face weights.

use crate::arch::Architecture;
use crate::error::{ModelError, ModelErrorKind};
use crate::gguf::{GgufFile, GgufWriter, Value};
use crate::lora::{proj_shape, Lora, LoraConfig, LoraPair, Proj};
use crate::model::Transformer;
use cleaner_kernels::quant::{dequantize, QuantType};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that a crash leaves either the old file or the
/// new one: temporary file in the same directory, fsync, rename, fsync dir.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn bad(path: &Path, why: String) -> ModelError {
    ModelError::at(Some(path), ModelErrorKind::BadRequest(why))
}

fn io_err(path: &Path, e: std::io::Error) -> ModelError {
    bad(path, format!("cannot write or read: {e}"))
}

impl Lora {
    /// The adapter as llama.cpp GGUF bytes, for a model of architecture `arch`.
    pub fn to_gguf_bytes(&self, arch: Architecture) -> Vec<u8> {
        let mut w = GgufWriter::new();
        let targets: Vec<Value> = self
            .config
            .targets
            .iter()
            .map(|p| Value::String(p.gguf_name().into()))
            .collect();
        w.set("general.architecture", Value::String(arch.name().into()))
            .set("general.type", Value::String("adapter".into()))
            .set("general.name", Value::String("cleaner LoRA".into()))
            .set("adapter.type", Value::String("lora".into()))
            .set("adapter.lora.alpha", Value::F32(self.config.alpha))
            .set("cleaner.lora.targets", Value::Array(targets));
        let r = self.config.rank as u64;
        for (l, pairs) in self.layers.iter().enumerate() {
            for (p, pair) in pairs {
                let base = format!("blk.{l}.{}.weight", p.gguf_name());
                w.add_f32(&format!("{base}.lora_a"), &[pair.n_in as u64, r], &pair.a);
                w.add_f32(&format!("{base}.lora_b"), &[r, pair.n_out as u64], &pair.b);
            }
        }
        w.to_bytes()
    }

    /// Writes the llama.cpp GGUF adapter atomically.
    pub fn write_gguf(&self, model: &Transformer, path: &Path) -> Result<(), ModelError> {
        atomic_write(path, &self.to_gguf_bytes(model.config().arch)).map_err(|e| io_err(path, e))
    }

    /// Reads a llama.cpp GGUF LoRA adapter for `model`.
    pub fn read_gguf(model: &Transformer, path: &Path) -> Result<Lora, ModelError> {
        let file = GgufFile::open(path)?;
        Lora::from_gguf(model, &file).map_err(|e| ModelError {
            path: Some(path.to_path_buf()),
            ..e
        })
    }

    /// Reads an adapter from an opened GGUF file (on disk or in memory).
    pub fn from_gguf(model: &Transformer, file: &GgufFile) -> Result<Lora, ModelError> {
        let here = file.path().unwrap_or(Path::new("<memory>")).to_path_buf();
        let arch = file.architecture()?;
        if arch != model.config().arch.name() {
            return Err(bad(
                &here,
                format!(
                    "adapter is for architecture {arch:?}, the model is {:?}",
                    model.config().arch.name()
                ),
            ));
        }
        if file.get("general.type").and_then(|v| v.as_str()) != Some("adapter")
            || file.get("adapter.type").and_then(|v| v.as_str()) != Some("lora")
        {
            return Err(bad(
                &here,
                "not a LoRA adapter (general.type must be \"adapter\", adapter.type \"lora\")"
                    .into(),
            ));
        }
        let alpha = file.get_f64("adapter.lora.alpha")? as f32;
        let mut rank = None;
        let mut layers: Vec<Vec<(Proj, LoraPair)>> = vec![Vec::new(); model.layers.len()];
        let mut targets = Vec::new();
        for t in file.tensors() {
            let Some(base) = t.name.strip_suffix(".lora_a") else {
                if !t.name.ends_with(".lora_b") {
                    return Err(bad(
                        &here,
                        format!("unexpected tensor {:?} in a LoRA adapter", t.name),
                    ));
                }
                continue;
            };
            let (l, p) = parse_base(base).ok_or_else(|| {
                bad(
                    &here,
                    format!("tensor {:?} names no adaptable projection", t.name),
                )
            })?;
            if l >= model.layers.len() {
                return Err(bad(
                    &here,
                    format!(
                        "tensor {:?}: the model has {} layers",
                        t.name,
                        model.layers.len()
                    ),
                ));
            }
            let (n_out, n_in) = proj_shape(model, l, p);
            let r = *t.dims.get(1).unwrap_or(&0) as usize;
            if t.dims.len() != 2
                || t.dims[0] as usize != n_in
                || r == 0
                || *rank.get_or_insert(r) != r
            {
                return Err(bad(
                    &here,
                    format!(
                        "{} has dims {:?}; expected [{n_in}, rank] with one rank for all tensors",
                        t.name, t.dims
                    ),
                ));
            }
            let b_name = format!("{base}.lora_b");
            let tb = file
                .tensor(&b_name)
                .ok_or_else(|| bad(&here, format!("{} has no matching {b_name}", t.name)))?;
            if tb.dims != [r as u64, n_out as u64] {
                return Err(bad(
                    &here,
                    format!("{b_name} has dims {:?}; expected [{r}, {n_out}]", tb.dims),
                ));
            }
            let decode =
                |info: &crate::gguf::TensorInfo, n: usize| -> Result<Vec<f32>, ModelError> {
                    let mut v = vec![0f32; n];
                    dequantize(info.ty, file.tensor_data(info), &mut v)
                        .map_err(|e| bad(&here, format!("{}: {e}", info.name)))?;
                    Ok(v)
                };
            let pair = LoraPair {
                n_in,
                n_out,
                a: decode(t, r * n_in)?,
                b: decode(tb, n_out * r)?,
            };
            if !targets.contains(&p) {
                targets.push(p);
            }
            layers[l].push((p, pair));
        }
        let rank = rank.ok_or_else(|| bad(&here, "adapter holds no lora_a tensors".into()))?;
        assemble(layers, targets, rank, alpha).map_err(|why| bad(&here, why))
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir`.
    pub fn write_peft(&self, model: &Transformer, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        for (l, pairs) in self.layers.iter().enumerate() {
            for (p, pair) in pairs {
                let stem = format!("base_model.model.model.layers.{l}.{}", p.hf_name());
                let b = permute_rows_for_hf(model, *p, &pair.b, self.config.rank, false);
                tensors.push((
                    format!("{stem}.lora_A.weight"),
                    vec![self.config.rank, pair.n_in],
                    pair.a.clone(),
                ));
                tensors.push((
                    format!("{stem}.lora_B.weight"),
                    vec![pair.n_out, self.config.rank],
                    b,
                ));
            }
        }
        let st = safetensors_bytes(&tensors);
        let modules: Vec<&str> = self
            .config
            .targets
            .iter()
            .map(|p| p.hf_name().rsplit('.').next().unwrap_or(""))
            .collect();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "target_modules": modules,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "inference_mode": true,
            "base_model_name_or_path": model.file().get("general.name").and_then(|v| v.as_str()).unwrap_or(""),
        });
        atomic_write(&dir.join("adapter_model.safetensors"), &st).map_err(|e| io_err(dir, e))?;
        let json = serde_json::to_vec_pretty(&config).unwrap_or_default();
        atomic_write(&dir.join("adapter_config.json"), &json).map_err(|e| io_err(dir, e))
    }

    /// Reads a PEFT adapter directory written by us or by PEFT (f32, f16 or
    /// bf16 tensors) for `model`.
    pub fn read_peft(model: &Transformer, dir: &Path) -> Result<Lora, ModelError> {
        let cfg_path = dir.join("adapter_config.json");
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|e| io_err(&cfg_path, e))?)
                .map_err(|e| bad(&cfg_path, format!("invalid JSON: {e}")))?;
        let rank = cfg["r"]
            .as_u64()
            .filter(|&r| r > 0)
            .ok_or_else(|| bad(&cfg_path, "field \"r\" must be a positive integer".into()))?
            as usize;
        let alpha = cfg["lora_alpha"]
            .as_f64()
            .ok_or_else(|| bad(&cfg_path, "field \"lora_alpha\" must be a number".into()))?
            as f32;
        let st_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&st_path).map_err(|e| io_err(&st_path, e))?;
        let tensors = parse_safetensors(&bytes).map_err(|why| bad(&st_path, why))?;
        let mut layers: Vec<Vec<(Proj, LoraPair)>> = vec![Vec::new(); model.layers.len()];
        let mut targets: Vec<Proj> = Vec::new();
        for (name, (shape, values)) in &tensors {
            let Some(stem) = name.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let (l, p) = parse_hf(stem).ok_or_else(|| {
                bad(
                    &st_path,
                    format!("tensor {name:?} names no adaptable projection"),
                )
            })?;
            if l >= model.layers.len() {
                return Err(bad(
                    &st_path,
                    format!("{name}: the model has {} layers", model.layers.len()),
                ));
            }
            let (n_out, n_in) = proj_shape(model, l, p);
            let b_name = format!("{stem}.lora_B.weight");
            let (b_shape, b_values) = tensors
                .get(&b_name)
                .ok_or_else(|| bad(&st_path, format!("{name} has no matching {b_name}")))?;
            if shape != &[rank, n_in] || b_shape != &[n_out, rank] {
                return Err(bad(&st_path, format!("{name} {shape:?} / {b_name} {b_shape:?}: expected [{rank}, {n_in}] / [{n_out}, {rank}]")));
            }
            let b = permute_rows_for_hf(model, p, b_values, rank, true);
            layers[l].push((
                p,
                LoraPair {
                    n_in,
                    n_out,
                    a: values.clone(),
                    b,
                },
            ));
            if !targets.contains(&p) {
                targets.push(p);
            }
        }
        if targets.is_empty() {
            return Err(bad(&st_path, "no lora_A tensors found".into()));
        }
        assemble(layers, targets, rank, alpha).map_err(|why| bad(&st_path, why))
    }
}

/// The adapter read from either format: pairs in `Proj` order, and every
/// layer adapting the same projections (the trainer's shape).
fn assemble(
    mut layers: Vec<Vec<(Proj, LoraPair)>>,
    mut targets: Vec<Proj>,
    rank: usize,
    alpha: f32,
) -> Result<Lora, String> {
    targets.sort();
    for (l, pairs) in layers.iter_mut().enumerate() {
        pairs.sort_by_key(|(p, _)| *p);
        if pairs.iter().map(|(p, _)| *p).collect::<Vec<_>>() != targets {
            return Err(format!(
                "layer {l} adapts a different set of projections than the others"
            ));
        }
    }
    Ok(Lora {
        config: LoraConfig {
            rank,
            alpha,
            targets,
        },
        layers,
    })
}

/// `blk.{l}.{stem}.weight` -> (l, projection).
fn parse_base(base: &str) -> Option<(usize, Proj)> {
    let rest = base.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (l, stem) = rest.split_once('.')?;
    Some((
        l.parse().ok()?,
        Proj::ALL.into_iter().find(|p| p.gguf_name() == stem)?,
    ))
}

/// `base_model.model.model.layers.{l}.{module}` -> (l, projection).
fn parse_hf(stem: &str) -> Option<(usize, Proj)> {
    let rest = stem.split("layers.").nth(1)?;
    let (l, module) = rest.split_once('.')?;
    Some((
        l.parse().ok()?,
        Proj::ALL.into_iter().find(|p| p.hf_name() == module)?,
    ))
}

/// llama.cpp's converter stores llama-family q/k rows permuted: GGUF row
/// `h*hd + 2i + j` is HF row `h*hd + j*hd/2 + i`. Maps B's rows from GGUF
/// order to HF order (`to_gguf = false`) or back. Other projections and
/// families are unchanged.
fn permute_rows_for_hf(
    model: &Transformer,
    p: Proj,
    b: &[f32],
    rank: usize,
    to_gguf: bool,
) -> Vec<f32> {
    let c = model.config();
    let n_head = match (c.arch, p) {
        (Architecture::Llama, Proj::Q) => c.n_head,
        (Architecture::Llama, Proj::K) => c.n_head_kv,
        _ => return b.to_vec(),
    };
    let hd = c.head_dim;
    let mut out = vec![0f32; b.len()];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let gguf_row = h * hd + 2 * i + j;
                let hf_row = h * hd + j * hd / 2 + i;
                let (src, dst) = if to_gguf {
                    (hf_row, gguf_row)
                } else {
                    (gguf_row, hf_row)
                };
                out[dst * rank..(dst + 1) * rank].copy_from_slice(&b[src * rank..(src + 1) * rank]);
            }
        }
    }
    out
}

/// A safetensors file of f32 tensors: u64 header length, JSON header, data.
fn safetensors_bytes(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "producer": "cleaner"}),
    );
    let mut offset = 0usize;
    for (name, shape, values) in tensors {
        let end = offset + values.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap_or_default();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, values) in tensors {
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    out
}

type Tensors = std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Parses a safetensors file, converting F32/F16/BF16 tensors to f32.
fn parse_safetensors(bytes: &[u8]) -> Result<Tensors, String> {
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or("file shorter than its 8-byte header length")?
            .try_into()
            .unwrap_or([0; 8]),
    );
    let header_end = 8usize
        .checked_add(usize::try_from(n).map_err(|_| "header length overflows")?)
        .ok_or("header length overflows")?;
    let header = bytes
        .get(8..header_end)
        .ok_or(format!("header of {n} bytes runs past the end of the file"))?;
    let data = &bytes[header_end..];
    let json: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format!("header is not JSON: {e}"))?;
    let obj = json.as_object().ok_or("header is not a JSON object")?;
    let mut out = Tensors::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().ok_or(format!("{name}: no dtype"))?;
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .ok_or(format!("{name}: no shape"))?
            .iter()
            .map(|v| v.as_u64().unwrap_or(u64::MAX) as usize)
            .collect();
        let offs = info["data_offsets"]
            .as_array()
            .ok_or(format!("{name}: no data_offsets"))?;
        let (start, end) = (
            offs.first().and_then(|v| v.as_u64()).unwrap_or(u64::MAX) as usize,
            offs.get(1).and_then(|v| v.as_u64()).unwrap_or(u64::MAX) as usize,
        );
        let raw = data
            .get(start..end)
            .ok_or(format!("{name}: data [{start}, {end}) outside the file"))?;
        let ty = match dtype {
            "F32" => QuantType::F32,
            "F16" => QuantType::F16,
            "BF16" => QuantType::BF16,
            other => {
                return Err(format!(
                    "{name}: dtype {other} is not supported (F32, F16, BF16)"
                ))
            }
        };
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or(format!("{name}: shape {shape:?} overflows"))?;
        let mut values = vec![0f32; raw.len() / ty.block_bytes()];
        if values.len() != count {
            return Err(format!(
                "{name}: {} bytes do not hold shape {shape:?} of {dtype}",
                raw.len()
            ));
        }
        dequantize(ty, raw, &mut values).map_err(|e| format!("{name}: {e}"))?;
        out.insert(name.clone(), (shape, values));
    }
    Ok(out)
}

/// Where a PEFT adapter directory's files go.
pub fn peft_files(dir: &Path) -> [PathBuf; 2] {
    [
        dir.join("adapter_model.safetensors"),
        dir.join("adapter_config.json"),
    ]
}
