//! The committed corpus of broken files (tests/data/gen_corrupt_gguf.py): every one
//! is rejected with the expected error kind, names its path, and never panics.

use cleaner_models::{GgufFile, ModelErrorKind, Transformer};
use std::path::PathBuf;

/// The variant name of an error kind (`BadMagic`, `TensorShape`, ...).
fn variant(debug: String) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_corrupt_file_is_rejected_with_its_kind() {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/corrupt"
    ));
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let cases = expected.as_object().unwrap();
    assert!(cases.len() >= 25, "corpus has only {} files", cases.len());
    for (file, want) in cases {
        let path = dir.join(file);
        let (layer, kind) = (
            want["layer"].as_str().unwrap(),
            want["kind"].as_str().unwrap(),
        );
        let got = match layer {
            "gguf" => {
                let e = GgufFile::open(&path).expect_err(file);
                assert_eq!(
                    e.path.as_deref(),
                    Some(path.as_path()),
                    "{file}: error names the file"
                );
                variant(format!("{:?}", e.kind))
            }
            "model" => {
                GgufFile::open(&path)
                    .unwrap_or_else(|e| panic!("{file} should be valid GGUF: {e}"));
                let e = Transformer::open(&path).expect_err(file);
                assert!(
                    e.to_string().contains(file.as_str()),
                    "{file}: message {e} names the file"
                );
                assert!(!matches!(e.kind, ModelErrorKind::Gguf(_)), "{file}: {e}");
                variant(format!("{:?}", e.kind))
            }
            "valid" => {
                let model = Transformer::open(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
                let lp = model.next_token_logprobs(&[1, 2, 3, 31]).unwrap();
                assert!(
                    lp.len() == 3 && lp.iter().all(|v| v.is_finite() && *v <= 0.0),
                    "{lp:?}"
                );
                "Ok".to_string()
            }
            other => panic!("unknown layer {other}"),
        };
        assert_eq!(got, kind, "{file}");
    }
}

#[test]
fn the_same_bytes_in_memory_give_the_same_errors() {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/corrupt"
    ));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("gguf") || {
            let n = path.to_string_lossy();
            n.contains("model_") || n.contains("valid_")
        } {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let from_file = GgufFile::open(&path).unwrap_err();
        let from_mem = GgufFile::from_bytes(bytes).unwrap_err();
        assert_eq!(
            variant(format!("{:?}", from_file.kind)),
            variant(format!("{:?}", from_mem.kind)),
            "{}",
            path.display()
        );
    }
}
