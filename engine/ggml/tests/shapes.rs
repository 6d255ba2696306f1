//! The Qwen2.5-0.5B preset against the file its types were read from:
//! every tensor of `Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf` with the
//! preset's name, type and dims, none missing or extra, and the
//! configuration the CPU trainer reads from it. Needs the model asset
//! (`cleaner` fetches it into `~/.cache/cleaner/assets`; `CLEANER_HOME`
//! and `XDG_CACHE_HOME` move it as for the engine).

mod common;

use cleaner_ggml::shapes::qwen2_5_coder_0_5b_q4_k_m;
use cleaner_models::{Config, GgufFile};
use common::asset;

#[test]
fn qwen2_5_preset_is_the_asset_file() {
    let file = GgufFile::open(asset("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf")).unwrap();
    let shape = qwen2_5_coder_0_5b_q4_k_m();
    assert_eq!(Config::from_gguf(&file).unwrap(), shape.config);
    let mut in_file: Vec<(String, u32, Vec<usize>)> = file
        .tensors()
        .iter()
        .map(|t| {
            let ne = t.dims.iter().map(|&d| d as usize).collect();
            (t.name.clone(), t.ty.ggml_id(), ne)
        })
        .collect();
    let mut preset: Vec<(String, u32, Vec<usize>)> = shape
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.ty, t.ne.clone()))
        .collect();
    in_file.sort();
    preset.sort();
    assert_eq!(in_file.len(), preset.len());
    for (f, p) in in_file.iter().zip(&preset) {
        assert_eq!(f, p);
    }
    assert!(file.tensor(&shape.output).is_some());
}
