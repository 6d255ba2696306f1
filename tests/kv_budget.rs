//! The KV cache sized from a memory budget, through a session on the real
//! test model (SmolLM2-135M): the cell size read from the file, a budget too
//! small for one trajectory refused with the sizes, and a group of rollouts
//! that finishes in a cache with less room than it wants at once.

mod common;

use cleaner::rollout::kv_budget::KvShape;
use cleaner::session::{Session, SessionError, SessionOptions};
use cleaner::tasks::Item;

/// SmolLM2-135M: 30 layers, 3 KV heads of 64 (its config.json), f16 keys and
/// values: 30 x 3 x (64 + 64) x 2 bytes.
const SMOLLM2_CELL_BYTES: u64 = 23_040;

fn options(kv_cells: u64) -> SessionOptions {
    let mut o = SessionOptions {
        slots: 17,
        max_prompt_tokens: 128,
        kv_cache_bytes: Some(kv_cells * SMOLLM2_CELL_BYTES),
        threads: 2,
        ..Default::default()
    };
    o.agent.max_response_tokens = 96;
    o.agent.max_turns = 2;
    o
}

/// Cells one trajectory may need with `options`: prompt 128 + budget 96 +
/// two lookaheads of up to 96 + 256.
const PER_SEQUENCE: u64 = 128 + 96 + 2 * 96 + 256;

#[test]
fn a_session_sizes_its_cache_from_the_budget_and_rollouts_wait_for_cells() {
    let _serial = common::serial();
    let model = common::test_model_path().display().to_string();
    let shape = KvShape::of(common::model().gguf()).unwrap();
    assert_eq!(shape.bytes_per_cell(), SMOLLM2_CELL_BYTES);

    let e = Session::open(&model, options(PER_SEQUENCE - 1))
        .err()
        .expect("a budget below one trajectory is refused");
    assert!(
        matches!(
            e,
            SessionError::KvBudgetTooSmall { cells, per_sequence, bytes_per_cell, .. }
                if (cells, per_sequence, bytes_per_cell)
                    == (PER_SEQUENCE - 1, PER_SEQUENCE, SMOLLM2_CELL_BYTES)
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&PER_SEQUENCE.to_string()), "{e}");

    // Room for one trajectory (llama.cpp may round the cache up), where
    // slots x PER_SEQUENCE would be 17 x 672.
    let mut session = Session::open(&model, options(PER_SEQUENCE)).unwrap();
    let n_ctx = session.decoder().n_ctx() as u64;
    assert!(
        (PER_SEQUENCE..2 * PER_SEQUENCE).contains(&n_ctx),
        "{n_ctx} cells"
    );
    let item = Item {
        id: "1".into(),
        question: "What is 12 + 30?".into(),
        answer: String::new(),
    };
    // 16 rollouts of up to 96 tokens after a shared prompt of about 120:
    // twice what the cache holds while they run (SmolLM2 at temperature 1
    // takes about 75 tokens a rollout here).
    let (trajectories, stats) = session.run(&[item], 16).unwrap();
    assert_eq!(trajectories.len(), 16);
    for t in &trajectories {
        t.validate().unwrap();
        assert!(t.response_tokens <= 96);
    }
    let decoder = session.decoder().stats();
    eprintln!(
        "{n_ctx} cells, {} tokens sampled; {decoder:?}",
        stats.generated_tokens
    );
    // Seeded sampling: the same rollouts every run of a CPU build. A GPU
    // build samples other ones, which may stop early.
    if !common::GPU {
        assert!(decoder.preemptions > 0, "no sequence waited: {decoder:?}");
    }
}
