//! The datasets the repository ships load by name with the sizes
//! data/SOURCES.md states, and `gsm8k-train-filtered` is what
//! `tools/scripts/filter-gsm8k.sh` says it is: GSM8K train problems, word for
//! word, each solved 1 to 7 times in 8 rollouts by the default model.

use cleaner::tasks::dataset::default_data_dir;
use cleaner::tasks::{Dataset, Fields};

fn load(name: &str) -> Dataset {
    Dataset::load(name, &default_data_dir(), &Fields::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_named_datasets_load_with_their_stated_sizes() {
    for (name, problems) in [
        ("gsm8k", 1319),
        ("gsm8k-train", 7473),
        ("aime24", 30),
        ("amc23", 40),
    ] {
        assert_eq!(load(name).items.len(), problems, "{name}");
    }
}

#[test]
fn the_filtered_set_is_train_problems_solved_sometimes() {
    let train = load("gsm8k-train").items;
    let filtered = load("gsm8k-train-filtered").items;
    assert!(filtered.len() >= 10, "{} problems", filtered.len());
    let path = default_data_dir().join("gsm8k/train-filtered.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut last_line = 0;
    for (item, line) in filtered.iter().zip(text.lines()) {
        // GSM8K train ids are 1-based line numbers.
        let line_no: usize = item.id.parse().expect("a line-number id");
        assert!(line_no > last_line, "in dataset order: {}", item.id);
        last_line = line_no;
        assert_eq!(item, &train[line_no - 1], "problem {} as in train", item.id);
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let (solved, samples) = (record["solved"].as_u64(), record["samples"].as_u64());
        assert_eq!(samples, Some(8), "problem {}", item.id);
        assert!(
            matches!(solved, Some(1..=7)),
            "problem {} solved {solved:?} of 8",
            item.id
        );
    }
}

#[test]
fn the_filtered_set_is_what_the_committed_records_keep() {
    use cleaner::rl::pass_rate::{filtered_jsonl, measured_order, PassRecord};
    let dir = default_data_dir().join("gsm8k/passrate-qwen0.5b");
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("passrate.json")).unwrap()).unwrap();
    // tools/scripts/filter-gsm8k.sh's measurement.
    assert_eq!(settings["dataset"], "gsm8k-train");
    assert_eq!(settings["dataset_len"], 7473);
    assert_eq!(settings["samples"], 8);
    assert_eq!(settings["chunk"], 2);
    assert_eq!(settings["seed"], 0);
    let text = std::fs::read_to_string(dir.join("passrates.jsonl")).unwrap();
    let records: Vec<PassRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Whole chunks, in the order the measurement takes problems.
    let order = measured_order(7473, 0);
    assert_eq!(records.len() % 2, 0, "{} records", records.len());
    let train = load("gsm8k-train").items;
    for (k, r) in records.iter().enumerate() {
        assert_eq!((r.chunk, r.index), (k / 2, order[k]), "record {k}");
        assert_eq!(r.id, train[r.index].id, "record {k}");
        assert!(r.solved <= r.samples && r.samples == 8, "record {k}: {r:?}");
    }
    let kept = filtered_jsonl(&train, &records, 1..=7, &Fields::default());
    let shipped =
        std::fs::read_to_string(default_data_dir().join("gsm8k/train-filtered.jsonl")).unwrap();
    assert_eq!(
        kept, shipped,
        "train-filtered.jsonl against the records' 1..=7"
    );
}
