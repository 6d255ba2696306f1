//! `cleaner eval --out` on the test model: the report and the trajectories
//! are both written, whole, and no temporary file is left behind (scripts
//! that resume evaluations part by part take a report on disk to mean the
//! part and its trajectories are complete). Needs the test assets
//! (`tools/test.sh` fetches them).

use std::path::Path;
use std::process::Command;

#[test]
fn eval_writes_its_trajectories_and_then_its_report_whole() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval-output");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("two.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"What is 2 + 3?\", \"answer\": \"5\"}\n\
         {\"question\": \"What is 4 * 6?\", \"answer\": \"24\"}\n",
    )
    .unwrap();
    let report = dir.join("parts").join("eval.from-0.json");
    let out = Command::new(env!("CARGO_BIN_EXE_cleaner"))
        .args(["eval", "--model", "smollm2-135m", "--dataset"])
        .arg(&data)
        .args([
            "--samples",
            "2",
            "--max-response-tokens",
            "48",
            "--max-turns",
            "2",
            "--out",
        ])
        .arg(&report)
        .env("RUST_LOG", "error")
        .output()
        .expect("run cleaner");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cleaner eval failed: {stderr}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["problems"], 2);
    assert_eq!(json["samples"], 2);
    let per_problem = json["per_problem"].as_array().unwrap();
    assert_eq!(per_problem.len(), 2);
    let lines = std::fs::read_to_string(report.with_extension("jsonl")).unwrap();
    assert_eq!(
        lines.lines().count(),
        4,
        "one trajectory per problem and sample"
    );
    for line in lines.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("a whole JSON line");
    }
    let left: Vec<_> = std::fs::read_dir(report.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
