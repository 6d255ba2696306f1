//! The pass-rate filter (`cleaner passrate`) on the real SmolLM2-135M, the
//! real sandbox and GSM8K train: a measurement is a function of its seed,
//! and one interrupted (a torn last line, a smaller budget first) resumes to
//! exactly the records of the uninterrupted one; a resumed measurement with
//! other settings is refused by name; a smaller budget leaves the later records
//! on file; a directory in use is refused; the filtered set loads as a dataset.
//!
//! SmolLM2 solves no GSM8K problem, so the reward here is one whose outcome
//! every sampled token moves: a reply of even length counts as solved.

mod common;

use cleaner::agent::Trajectory;
use cleaner::rl::grpo::open_session;
use cleaner::rl::pass_rate::{
    filtered_jsonl, measure, PassRateError, PassRateSettings, PassRecord,
};
use cleaner::rl::RunConfig;
use cleaner::session::Session;
use cleaner::tasks::{Dataset, Fields, Item};

fn config() -> RunConfig {
    let mut c = RunConfig::from_toml(
        r#"
model = "smollm2-135m"
[data]
dataset = "gsm8k-train"
[engine]
slots = 5
threads = 2
max_prompt_tokens = 512
[agent]
max_turns = 2
max_response_tokens = 32
max_turn_tokens = 32
"#,
        "test config",
    )
    .expect("test config");
    c.model = common::test_model_path().display().to_string();
    c
}

fn settings(samples: usize) -> PassRateSettings {
    let c = config();
    PassRateSettings {
        dataset: c.data.dataset.clone(),
        dataset_len: c.data.load().unwrap().len(),
        fields: serde_json::Value::Null,
        model: c.model.clone(),
        adapter: None,
        adapter_sha256: None,
        samples,
        seed: 5,
        chunk: 2,
        agent: serde_json::to_value(&c.agent).unwrap(),
        reward: serde_json::to_value(c.reward).unwrap(),
        max_prompt_tokens: c.engine.max_prompt_tokens,
    }
}

fn even_reply(_: &Item, t: &Trajectory) -> f32 {
    if t.text.chars().count().is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

fn run(
    session: &mut Session,
    dir: &std::path::Path,
    samples: usize,
    problems: usize,
) -> Result<Vec<PassRecord>, PassRateError> {
    let items = config().data.load().unwrap();
    measure(
        session,
        &items,
        &settings(samples),
        problems,
        &even_reply,
        dir,
        &mut |_, _| {},
    )
}

#[test]
fn pass_rates_are_seeded_and_resume_to_the_uninterrupted_records() {
    let _g = common::serial();
    let session = &mut open_session(&config()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let t = std::time::Instant::now();
    let whole = run(session, &a, 2, 4).unwrap();
    eprintln!(
        "4 problems x 2 rollouts: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(whole.len(), 4);
    assert!(whole.iter().all(|r| r.samples == 2));
    let counts: Vec<usize> = whole.iter().map(|r| r.solved).collect();
    assert!(
        counts.iter().any(|&k| k > 0) && counts.iter().any(|&k| k < 2),
        "the reward has spread: {counts:?}"
    );
    // Interrupted: a smaller budget (one problem, rounded up to chunk 0),
    // then a torn line, then the full budget.
    let first = run(session, &b, 2, 1).unwrap();
    assert_eq!(first, whole[..2], "chunk 0 is the same");
    let file = b.join("passrates.jsonl");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("{\"chunk\": 1, \"ind");
    std::fs::write(&file, text).unwrap();
    let resumed = run(session, &b, 2, 4).unwrap();
    assert_eq!(resumed, whole, "resumed vs uninterrupted");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        std::fs::read_to_string(a.join("passrates.jsonl")).unwrap()
    );
    // Done already: nothing changes.
    assert_eq!(run(session, &a, 2, 4).unwrap(), whole);
    // A smaller budget reads its part (whole chunks) and keeps the rest on
    // file; 3 problems round up to chunks 0 and 1.
    let on_file = std::fs::read_to_string(a.join("passrates.jsonl")).unwrap();
    assert_eq!(run(session, &a, 2, 2).unwrap(), whole[..2]);
    assert_eq!(run(session, &a, 2, 1).unwrap(), whole[..2]);
    assert_eq!(run(session, &a, 2, 3).unwrap(), whole);
    assert_eq!(
        std::fs::read_to_string(a.join("passrates.jsonl")).unwrap(),
        on_file
    );
    // A second measurement into a directory in use is refused.
    let held = std::fs::File::create(a.join(".lock")).unwrap();
    held.lock().unwrap();
    match run(session, &a, 2, 4) {
        Err(PassRateError::File { path, why }) => {
            assert!(path.ends_with(".lock") && why.contains("another"), "{why}")
        }
        other => panic!("expected the directory to be locked, got {other:?}"),
    }
    drop(held);
    assert_eq!(run(session, &a, 2, 4).unwrap(), whole);
    // Other settings are refused by name.
    match run(session, &a, 3, 4) {
        Err(PassRateError::Mismatch { field, .. }) => assert_eq!(field, "samples"),
        other => panic!("expected a samples mismatch, got {other:?}"),
    }
    // The filtered set is a dataset of the problems solved once of twice.
    let items = config().data.load().unwrap();
    let text = filtered_jsonl(&items, &whole, 1..=1, &Fields::default());
    let path = tmp.path().join("filtered.jsonl");
    std::fs::write(&path, &text).unwrap();
    let kept = Dataset::load(path.to_str().unwrap(), tmp.path(), &Fields::default()).unwrap();
    let mut want: Vec<&PassRecord> = whole.iter().filter(|r| r.solved == 1).collect();
    want.sort_by_key(|r| r.index);
    let ids: Vec<&str> = kept.items.iter().map(|i| i.id.as_str()).collect();
    let want_ids: Vec<&str> = want.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, want_ids);
    for (item, r) in kept.items.iter().zip(&want) {
        assert_eq!(item, &items[r.index], "a kept problem round-trips");
    }
}
