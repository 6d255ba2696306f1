//! Any byte string: parsing must return Ok or a typed error, never panic or
//! read out of bounds; a parsed file's tensors must all be readable, and
//! loading it as a model must also end in Ok or a typed error.
#![no_main]

use cleaner_models::{GgufFile, Transformer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::from_bytes(data.to_vec()) {
        for t in file.tensors() {
            let bytes = file.tensor_data(t);
            assert_eq!(bytes.len() as u64, t.size);
        }
        let _ = Transformer::from_gguf(file);
    }
});
