//! Tiny random models in real GGUF form, for gradient checks and fast tests of
//! the code paths that real models take (the same loader, the same kernels).
//! Weights are random; the shapes are those of a real family, scaled down.

use crate::arch::Architecture;
use crate::gguf::{GgufWriter, Value};
use cleaner_kernels::f16::f32_to_f16;
use cleaner_kernels::quant::QuantType;

/// Dimensions of a tiny model.
#[derive(Clone, Copy, Debug)]
pub struct TinySpec {
    /// Family.
    pub arch: Architecture,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Residual width.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Feed-forward width.
    pub n_ff: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Store projections as Q8_0 (needs inputs in multiples of 32) instead of f32.
    pub quantized: bool,
}

impl TinySpec {
    /// Small defaults for `arch`.
    pub fn new(arch: Architecture) -> TinySpec {
        TinySpec {
            arch,
            n_vocab: 48,
            n_embd: 32,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 64,
            n_layer: 2,
            quantized: true,
        }
    }
}

/// Q8_0 encoding of `x` (whole blocks of 32): `d = amax / 127`, `q = round(x / d)`.
fn q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        for &v in block {
            let q = if d == 0.0 { 0.0 } else { (v / d).round() };
            out.push(q.clamp(-127.0, 127.0) as i8 as u8);
        }
    }
    out
}

/// The GGUF bytes of a tiny random model of `spec`, deterministic in `seed`.
pub fn tiny_model(spec: TinySpec, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let a = spec.arch.name();
    let head_dim = spec.n_embd / spec.n_head;
    let (q_dim, kv_dim) = (spec.n_head * head_dim, spec.n_head_kv * head_dim);
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String(a.into()))
        .set(
            &format!("{a}.embedding_length"),
            Value::U32(spec.n_embd as u32),
        )
        .set(&format!("{a}.block_count"), Value::U32(spec.n_layer as u32))
        .set(
            &format!("{a}.feed_forward_length"),
            Value::U32(spec.n_ff as u32),
        )
        .set(
            &format!("{a}.attention.head_count"),
            Value::U32(spec.n_head as u32),
        )
        .set(
            &format!("{a}.attention.head_count_kv"),
            Value::U32(spec.n_head_kv as u32),
        )
        .set(
            &format!("{a}.attention.key_length"),
            Value::U32(head_dim as u32),
        )
        .set(&format!("{a}.context_length"), Value::U32(512))
        .set(&format!("{a}.rope.freq_base"), Value::F32(10000.0))
        .set(
            &format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        );
    let mut matrix =
        |w: &mut GgufWriter, name: &str, n_out: usize, n_in: usize, scale: f32, quantize: bool| {
            let vals: Vec<f32> = (0..n_out * n_in).map(|_| uniform() * scale).collect();
            if quantize && n_in.is_multiple_of(32) {
                w.add_tensor(
                    name,
                    &[n_in as u64, n_out as u64],
                    QuantType::Q8_0,
                    q8_0(&vals),
                );
            } else {
                w.add_f32(name, &[n_in as u64, n_out as u64], &vals);
            }
        };
    let ones = |n: usize, jitter: f32, u: &mut dyn FnMut() -> f32| -> Vec<f32> {
        (0..n).map(|_| 1.0 + jitter * u()).collect()
    };
    let mut u2 = {
        let mut s = seed.wrapping_mul(31) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    };
    matrix(
        &mut w,
        "token_embd.weight",
        spec.n_vocab,
        spec.n_embd,
        1.0,
        spec.quantized,
    );
    w.add_f32(
        "output_norm.weight",
        &[spec.n_embd as u64],
        &ones(spec.n_embd, 0.2, &mut u2),
    );
    let s_embd = 1.0 / (spec.n_embd as f32).sqrt();
    let s_ff = 1.0 / (spec.n_ff as f32).sqrt();
    for l in 0..spec.n_layer {
        let n = |s: &str| format!("blk.{l}.{s}");
        let qz = spec.quantized;
        w.add_f32(
            &n("attn_norm.weight"),
            &[spec.n_embd as u64],
            &ones(spec.n_embd, 0.2, &mut u2),
        );
        matrix(
            &mut w,
            &n("attn_q.weight"),
            q_dim,
            spec.n_embd,
            2.0 * s_embd,
            qz,
        );
        matrix(
            &mut w,
            &n("attn_k.weight"),
            kv_dim,
            spec.n_embd,
            2.0 * s_embd,
            false,
        );
        matrix(
            &mut w,
            &n("attn_v.weight"),
            kv_dim,
            spec.n_embd,
            2.0 * s_embd,
            qz,
        );
        matrix(
            &mut w,
            &n("attn_output.weight"),
            spec.n_embd,
            q_dim,
            s_embd,
            false,
        );
        if spec.arch == Architecture::Qwen2 {
            for (t, len) in [
                ("attn_q.bias", q_dim),
                ("attn_k.bias", kv_dim),
                ("attn_v.bias", kv_dim),
            ] {
                let b: Vec<f32> = (0..len).map(|_| 0.1 * u2()).collect();
                w.add_f32(&n(t), &[len as u64], &b);
            }
        }
        if spec.arch == Architecture::Qwen3 {
            w.add_f32(
                &n("attn_q_norm.weight"),
                &[head_dim as u64],
                &ones(head_dim, 0.2, &mut u2),
            );
            w.add_f32(
                &n("attn_k_norm.weight"),
                &[head_dim as u64],
                &ones(head_dim, 0.2, &mut u2),
            );
        }
        w.add_f32(
            &n("ffn_norm.weight"),
            &[spec.n_embd as u64],
            &ones(spec.n_embd, 0.2, &mut u2),
        );
        matrix(
            &mut w,
            &n("ffn_gate.weight"),
            spec.n_ff,
            spec.n_embd,
            2.0 * s_embd,
            qz,
        );
        matrix(
            &mut w,
            &n("ffn_up.weight"),
            spec.n_ff,
            spec.n_embd,
            2.0 * s_embd,
            false,
        );
        matrix(
            &mut w,
            &n("ffn_down.weight"),
            spec.n_embd,
            spec.n_ff,
            s_ff,
            qz,
        );
    }
    if spec.arch != Architecture::Llama {
        // Untied output for the Qwen families (Qwen2.5-0.5B ties; larger ones do not).
        matrix(
            &mut w,
            "output.weight",
            spec.n_vocab,
            spec.n_embd,
            2.0,
            spec.quantized,
        );
    }
    w.to_bytes()
}
