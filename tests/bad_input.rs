//! Bad input gets a clear error naming the file or value, never a panic or an
//! abort inside llama.cpp.

mod common;

use std::io::Write;

use cleaner::models::GgufErrorKind;
use cleaner::{GenerateParams, LlamaError, Model, ModelParams, RolloutError, SamplingParams};
use common::{decoder, serial, test_model_path, tokens};

fn load_err(path: &std::path::Path) -> LlamaError {
    Model::load(path, &ModelParams::default())
        .map(|_| ())
        .expect_err("load must fail")
}

#[test]
fn missing_file() {
    let e = load_err(std::path::Path::new("/nonexistent/model.gguf"));
    assert!(
        matches!(&e, LlamaError::ModelFile { source, .. } if matches!(source.kind, GgufErrorKind::Io(_))),
        "{e}"
    );
    assert!(e.to_string().contains("/nonexistent/model.gguf"), "{e}");
}

#[test]
fn truncated_gguf() {
    let bytes = std::fs::read(test_model_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [10usize, 1000, 2_000_000, bytes.len() - 100] {
        let path = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = load_err(&path);
        let LlamaError::ModelFile { source, .. } = &e else {
            panic!("cut {cut}: unexpected error {e}")
        };
        assert!(
            matches!(
                source.kind,
                GgufErrorKind::Truncated { .. }
                    | GgufErrorKind::CountTooLarge { .. }
                    | GgufErrorKind::TensorOutOfBounds { .. }
            ),
            "cut {cut}: {e}"
        );
        assert!(e.to_string().contains(&format!("cut{cut}.gguf")), "{e}");
    }
}

#[test]
fn not_a_gguf() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "this is a text file, not a model").unwrap();
    let e = load_err(f.path());
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
}

#[test]
fn prompt_longer_than_context() {
    let _serial = serial();
    let mut p = decoder(2, 64);
    let n_ctx = p.n_ctx();
    let long = tokens(&"many words ".repeat(n_ctx as usize));
    assert!(long.len() > n_ctx as usize);
    let e = p.open_with(&long).err().unwrap();
    assert!(
        matches!(e, RolloutError::TooLong { n_ctx: n, .. } if n == n_ctx),
        "{e}"
    );
    assert!(e.to_string().contains("prompt too long"), "{e}");
    assert_eq!(p.n_open(), 0, "a failed open must not leak its slot");
    // The decoder still works afterwards.
    let out = p
        .generate(&[(
            tokens("Hi"),
            GenerateParams {
                max_new_tokens: 4,
                ..Default::default()
            },
        )])
        .unwrap();
    assert_eq!(out.len(), 1);
}

#[test]
fn invalid_tokens_and_params() {
    let _serial = serial();
    let mut p = decoder(2, 256);
    let seq = p.open().unwrap();
    let e = p.append(seq, &[1, -5]).err().unwrap();
    assert!(e.to_string().contains("-5"), "{e}");
    let e = p.append(seq, &[10_000_000]).err().unwrap();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    p.append(seq, &tokens("Hello")).unwrap();
    let bad = GenerateParams {
        sampling: SamplingParams {
            top_p: 1.5,
            ..Default::default()
        },
        ..Default::default()
    };
    let e = p.start(seq, bad).err().unwrap();
    assert!(e.to_string().contains("top_p"), "{e}");
    let e = p.truncate(seq, 10_000).err().unwrap();
    assert!(matches!(e, RolloutError::BadTruncate { .. }), "{e}");
    let e = p.append(cleaner::SeqId(1), &[1]).err().unwrap();
    assert!(matches!(e, RolloutError::NotOpen(1)), "{e}");
}

#[test]
fn unknown_model_name() {
    let e = cleaner::assets::AssetStore::default()
        .resolve_model("no-such-model", &mut |_| {})
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("no-such-model") && e.to_string().contains("smollm2-135m"),
        "{e}"
    );
}
