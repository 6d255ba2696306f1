//! Our dequantizers against the reference `gguf` Python package (numpy), on the
//! committed vectors written by `tests/data/gen_dequant_vectors.py`: random blocks of
//! every supported format next to the reference's f32 output.

use cleaner_kernels::quant::{dequantize, SUPPORTED};
use cleaner_models::GgufFile;

/// Integer formats decode to `scale * q (+ min)`; numpy and we may associate
/// the scale products differently, so allow a few f32 ulps of the block's
/// largest magnitude. Float formats (F32, F16, BF16) must match exactly.
const QUANT_REL_TOL: f32 = 4.0 * f32::EPSILON;

fn vectors() -> GgufFile {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/dequant_vectors.gguf"
    );
    GgufFile::open(path).expect("committed dequant vectors open")
}

fn ref_values(file: &GgufFile, name: &str) -> Vec<f32> {
    file.tensor_bytes(name)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn every_format_matches_the_gguf_python_reference() {
    let file = vectors();
    for ty in SUPPORTED {
        let name = ty.name();
        let info = file
            .tensor(&format!("q.{name}"))
            .unwrap_or_else(|| panic!("vectors lack q.{name}"));
        assert_eq!(info.ty, ty);
        let expected = ref_values(&file, &format!("ref.{name}"));
        assert_eq!(expected.len() as u64, info.n_elements());
        let mut got = vec![0f32; expected.len()];
        dequantize(ty, file.tensor_data(info), &mut got).unwrap();

        let exact = ty.block_len() == 1;
        let block = ty.block_len().max(32);
        let mut worst = 0f32;
        for (b, (g, e)) in got.chunks(block).zip(expected.chunks(block)).enumerate() {
            let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (&gv, &ev)) in g.iter().zip(e).enumerate() {
                if exact {
                    assert_eq!(
                        gv.to_bits(),
                        ev.to_bits(),
                        "{name}: value {} differs: {gv} vs {ev}",
                        b * block + i
                    );
                } else {
                    let err = (gv - ev).abs() / scale.max(f32::MIN_POSITIVE);
                    worst = worst.max(err);
                    assert!(
                        err <= QUANT_REL_TOL,
                        "{name}: value {} is {gv}, reference {ev} (block max {scale})",
                        b * block + i
                    );
                }
            }
        }
        eprintln!(
            "{name}: {} values, worst relative error {worst:.2e}",
            got.len()
        );
    }
}
