//! LoRA adapters hot-swapped on a live context of the real test model.

mod common;

use cleaner::LoraAdapter;
use common::{decoder, max_abs_diff, model, serial, tokens, write_adapter};

#[test]
fn adapter_changes_logits_clear_restores_them_swap_works() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (px, py) = (dir.path().join("x.gguf"), dir.path().join("y.gguf"));
    write_adapter(&px, "llama", 2, 4, 1);
    write_adapter(&py, "llama", 4, 2, 2);
    let text = tokens("The adapter should change what comes next in this sentence");

    let mut p = decoder(2, 512);
    let last = |p: &mut cleaner::Decoder| p.score(&text, true).unwrap().1.pop().unwrap();
    let base = last(&mut p);

    let x = LoraAdapter::load(&model(), &px).unwrap();
    let y = LoraAdapter::load(&model(), &py).unwrap();
    // Loaded while the context is alive, without touching it:
    assert_eq!(
        last(&mut p),
        base,
        "loading an adapter must not change the live context"
    );

    p.set_adapter(Some(x.clone())).unwrap();
    let with_x = last(&mut p);
    assert!(
        max_abs_diff(&with_x, &base) > 1e-2,
        "adapter X did not change the logits"
    );

    p.set_adapter(None).unwrap();
    assert_eq!(
        last(&mut p),
        base,
        "clearing the adapter must restore the base logits exactly"
    );

    p.set_adapter(Some(y.clone())).unwrap();
    let with_y = last(&mut p);
    assert!(
        max_abs_diff(&with_y, &with_x) > 1e-2,
        "adapters X and Y should differ"
    );
    p.set_adapter(Some(x)).unwrap();
    assert_eq!(
        last(&mut p),
        with_x,
        "swapping back to X must give X's logits"
    );
    p.set_adapter(Some(y)).unwrap();
    assert_eq!(last(&mut p), with_y);
    drop(p); // the context releases its adapter; the adapter is freed last
}

#[test]
fn adapter_for_another_model_is_a_clear_error() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let wrong_arch = dir.path().join("qwen.gguf");
    write_adapter(&wrong_arch, "qwen2", 2, 1, 3);
    let e = LoraAdapter::load(&model(), &wrong_arch)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("qwen2") && e.contains("qwen.gguf"), "{e}");

    // Right architecture, wrong shapes (as an adapter for a bigger llama would be).
    use cleaner::models::{GgufWriter, Value};
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("general.type", Value::String("adapter".into()))
        .set("adapter.type", Value::String("lora".into()));
    w.add_f32("blk.0.attn_q.weight.lora_a", &[2048, 2], &vec![0.0; 4096]);
    w.add_f32("blk.0.attn_q.weight.lora_b", &[2, 2048], &vec![0.0; 4096]);
    let wrong_shape = dir.path().join("big.gguf");
    std::fs::write(&wrong_shape, w.to_bytes()).unwrap();
    let e = LoraAdapter::load(&model(), &wrong_shape)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight.lora_a") && e.contains("another model"),
        "{e}"
    );

    // A model file is not an adapter.
    let e = LoraAdapter::load(&model(), common::test_model_path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("general.type"), "{e}");
}
