//! How many KV cache cells a memory budget holds for a model. A cell keeps
//! one token's keys and values in every layer; llama.cpp stores them as f16
//! (its default cache type, which the decoder keeps), so a cell takes
//! `layers x kv_heads x (key_length + value_length) x 2` bytes. Qwen3-4B:
//! 36 x 8 x (128 + 128) x 2 = 147,456 bytes (144 KiB).

use cleaner_models::{GgufError, GgufFile};

/// Bytes of one f16 value.
const F16_BYTES: u64 = 2;

/// The attention shape that sets a cell's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// Transformer blocks (each caches its own keys and values).
    pub layers: u64,
    /// Key/value heads (fewer than query heads under grouped-query attention).
    pub kv_heads: u64,
    /// Width of one key head.
    pub key_length: u64,
    /// Width of one value head.
    pub value_length: u64,
}

impl KvShape {
    /// The shape from a model file's `{arch}.*` metadata: `block_count`,
    /// `attention.head_count_kv` (default: `attention.head_count`),
    /// `attention.key_length` and `attention.value_length` (default:
    /// `embedding_length / attention.head_count`).
    pub fn of(gguf: &GgufFile) -> Result<KvShape, GgufError> {
        let a = gguf.architecture()?.to_string();
        let key = |k: &str| format!("{a}.{k}");
        let or = |k: &str, default: u64| -> Result<u64, GgufError> {
            match gguf.get(&key(k)) {
                Some(_) => gguf.get_u64(&key(k)),
                None => Ok(default),
            }
        };
        let heads = gguf.get_u64(&key("attention.head_count"))?.max(1);
        let head_dim = gguf.get_u64(&key("embedding_length"))? / heads;
        Ok(KvShape {
            layers: gguf.get_u64(&key("block_count"))?,
            kv_heads: or("attention.head_count_kv", heads)?,
            key_length: or("attention.key_length", head_dim)?,
            value_length: or("attention.value_length", head_dim)?,
        })
    }

    /// Bytes of one cell (f16 keys and values in every layer).
    pub fn bytes_per_cell(&self) -> u64 {
        self.layers * self.kv_heads * (self.key_length + self.value_length) * F16_BYTES
    }

    /// Whole cells in `bytes`.
    pub fn cells_in(&self, bytes: u64) -> u64 {
        bytes / self.bytes_per_cell().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// Qwen3-4B: 36 layers, 8 KV heads of 128 (its config.json).
    const QWEN3_4B: KvShape = KvShape {
        layers: 36,
        kv_heads: 8,
        key_length: 128,
        value_length: 128,
    };

    #[test]
    fn qwen3_4b_cells_and_the_paper_setting() {
        assert_eq!(QWEN3_4B.bytes_per_cell(), 147_456);
        // The paper config as issue 18 found it: 33 slots x (prompt 2560 +
        // response 20480 + 2 x turn cap 4096 + 256) = 1.04 M cells, 142.7 GiB.
        let old: u64 = 33 * (2560 + 20480 + 2 * 4096 + 256);
        assert_eq!(old, 1_039_104);
        assert_eq!(old * QWEN3_4B.bytes_per_cell() / GIB, 142);
        // One full-length trajectory (prompt 2560 + response 20480): 3.16 GiB.
        let full: u64 = 2560 + 20480;
        assert_eq!(full * QWEN3_4B.bytes_per_cell() * 100 / GIB, 316);
        // The budgets configs/paper-qwen3-4b.toml names: 16 GiB (24 GB card)
        // holds 5 full-length trajectories at once, 64 GiB (80 GB card) 20.
        assert_eq!(QWEN3_4B.cells_in(16 * GIB), 116_508);
        assert_eq!(QWEN3_4B.cells_in(64 * GIB), 466_033);
        assert_eq!(QWEN3_4B.cells_in(16 * GIB) / full, 5);
        assert_eq!(QWEN3_4B.cells_in(64 * GIB) / full, 20);
    }

    #[test]
    fn reads_the_shape_from_gguf_metadata() {
        use cleaner_models::{GgufWriter, Value};
        let file = |keys: &[(&str, u32)]| {
            let mut w = GgufWriter::new();
            w.set("general.architecture", Value::String("qwen3".into()));
            for (k, v) in keys {
                w.set(&format!("qwen3.{k}"), Value::U32(*v));
            }
            GgufFile::from_bytes(w.to_bytes()).unwrap()
        };
        let qwen3 = file(&[
            ("block_count", 36),
            ("embedding_length", 2560),
            ("attention.head_count", 32),
            ("attention.head_count_kv", 8),
            ("attention.key_length", 128),
            ("attention.value_length", 128),
        ]);
        assert_eq!(KvShape::of(&qwen3).unwrap(), QWEN3_4B);
        // Without head_count_kv and key/value lengths: every head caches,
        // each embedding_length / head_count wide.
        let plain = file(&[
            ("block_count", 2),
            ("embedding_length", 64),
            ("attention.head_count", 4),
        ]);
        assert_eq!(
            KvShape::of(&plain).unwrap(),
            KvShape {
                layers: 2,
                kv_heads: 4,
                key_length: 16,
                value_length: 16
            }
        );
        let e = KvShape::of(&file(&[("embedding_length", 64)])).unwrap_err();
        assert!(e.to_string().contains("qwen3.attention.head_count"), "{e}");
    }
}
