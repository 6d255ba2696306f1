//! Stable-Rust fuzzing of the GGUF parser and model loader (the cargo-fuzz
//! target in fuzz/ does the same under libFuzzer): thousands of seeded
//! mutations of valid files (bit flips, interesting integers, truncations,
//! insertions, deletions) must each parse to Ok or a typed error, with every
//! tensor of an accepted file readable and the model loader equally safe.

use cleaner_models::{GgufFile, Transformer};
use std::path::PathBuf;

const MUTATIONS_PER_SEED: usize = 3000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len());
        match rng.below(6) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next() as u8,
            2 => {
                // An interesting little-endian integer where counts, lengths,
                // types, dims and offsets live.
                let v: u64 = [
                    0,
                    1,
                    0xff,
                    0xffff_ffff,
                    u64::MAX,
                    1 << 63,
                    1 << 32,
                    31,
                    32,
                    33,
                ][rng.below(10)];
                let end = (at + 8).min(b.len());
                b[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            3 => b.truncate(at),
            4 => {
                let n = 1 + rng.below(16);
                b.splice(at..at, std::iter::repeat_n(rng.next() as u8, n));
            }
            _ => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

#[test]
fn mutated_files_never_panic() {
    let data = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data"));
    let seeds = [
        data.join("corrupt/valid_tiny_llama.gguf"),
        data.join("dequant_vectors.gguf"),
    ];
    let (mut accepted, mut total) = (0, 0);
    for (i, seed) in seeds.iter().enumerate() {
        let base = std::fs::read(seed).unwrap();
        let mut rng = Rng(0x5eed + i as u64);
        for _ in 0..MUTATIONS_PER_SEED {
            let bytes = mutate(&base, &mut rng);
            total += 1;
            if let Ok(file) = GgufFile::from_bytes(bytes) {
                accepted += 1;
                for t in file.tensors() {
                    assert_eq!(file.tensor_data(t).len() as u64, t.size);
                }
                if let Ok(model) = Transformer::from_gguf(file) {
                    // Whatever the loader accepted must also run.
                    let _ = model.next_token_logprobs(&[0, 1, 2]);
                }
            }
        }
    }
    eprintln!("{total} mutations, {accepted} still parsed");
    assert!(
        accepted > 0 && accepted < total,
        "mutations should sometimes survive and sometimes not"
    );
}
