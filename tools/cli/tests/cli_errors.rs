//! The `cleaner` binary's errors as a user meets them: each cause said once,
//! the file named once, the first bytes of a non-model shown as text, and a
//! hint where a file is missing. None of these runs needs a model or the
//! network: every command fails on its input before it would fetch one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-errors-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cleaner ARGS` (with `CLEANER_DATA` set when given), expects it to
/// fail with exit status 1, and returns what it wrote to stderr.
fn fails(args: &[&str], data_dir: Option<&Path>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cleaner"));
    cmd.args(args).env("RUST_LOG", "error");
    match data_dir {
        Some(d) => cmd.env("CLEANER_DATA", d),
        None => cmd.env_remove("CLEANER_DATA"),
    };
    let out = cmd.output().expect("run cleaner");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "cleaner {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "cleaner {args:?}: {stderr}");
    stderr
}

/// The `error: ...` line.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"))
}

/// No part of the error line (its `: `-separated causes) appears twice, and
/// `file` is named exactly once.
fn each_cause_once(line: &str, file: &Path) {
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p),
            "{p:?} appears twice in {line:?}"
        );
    }
    let file = file.display().to_string();
    assert_eq!(
        line.matches(file.as_str()).count(),
        1,
        "{file} should be named once in {line:?}"
    );
}

#[test]
fn a_text_file_as_model_is_named_once_with_its_bytes_as_text() {
    let dir = scratch("hosts");
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let model = hosts.to_str().unwrap();
    for args in [
        vec!["generate", "--model", model, "--prompt", "hi"],
        vec!["bench", "train", "--models", model, "--python", "none"],
    ] {
        let stderr = fails(&args, None);
        let line = error_line(&stderr);
        each_cause_once(line, &hosts);
        assert_eq!(line.matches("not a GGUF file").count(), 1, "{line}");
        assert!(line.contains(r#"found "127.""#), "{line}");
    }
}

#[test]
fn the_system_hosts_file_as_model_says_each_cause_once() {
    let hosts = Path::new("/etc/hosts");
    if !hosts.is_file() {
        return;
    }
    let stderr = fails(
        &["generate", "--model", "/etc/hosts", "--prompt", "hi"],
        None,
    );
    let line = error_line(&stderr);
    each_cause_once(line, hosts);
    assert_eq!(line.matches("not a GGUF file").count(), 1, "{line}");
}

#[test]
fn a_missing_dataset_file_is_named_once_and_says_what_to_do() {
    let dir = scratch("dataset-file");
    let missing = dir.join("nowhere").join("train.jsonl");
    let stderr = fails(
        &[
            "eval",
            "--dataset",
            missing.to_str().unwrap(),
            "--limit",
            "1",
        ],
        None,
    );
    let line = error_line(&stderr);
    each_cause_once(line, &missing);
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "{line}"
    );
    assert!(stderr.contains("\nhint: "), "{stderr}");
}

#[test]
fn a_missing_named_dataset_points_at_the_data_directory() {
    let dir = scratch("dataset-named");
    let data = dir.join("data");
    let data_arg = data.to_str().unwrap();
    for (args, env, file) in [
        (
            vec!["solve", "--dataset", "gsm8k-train", "--data-dir", data_arg],
            None,
            "train.jsonl",
        ),
        (
            vec![
                "train",
                "--config",
                "quickstart",
                "--run",
                dir.join("run").to_str().unwrap(),
            ],
            Some(data.as_path()),
            // The quickstart trains on the filtered set.
            "train-filtered.jsonl",
        ),
    ] {
        let expected = data.join("gsm8k").join(file);
        let stderr = fails(&args, env);
        let line = error_line(&stderr);
        each_cause_once(line, &expected);
        assert_eq!(
            line.matches("No such file or directory").count(),
            1,
            "{line}"
        );
        let hint = stderr
            .lines()
            .find(|l| l.starts_with("hint: "))
            .unwrap_or_else(|| panic!("no hint in {stderr}"));
        assert!(
            hint.contains("CLEANER_DATA") && hint.contains(".jsonl"),
            "{hint}"
        );
    }
}

#[test]
fn other_missing_inputs_say_each_cause_once() {
    let dir = scratch("others");
    let trajectories = dir.join("none.jsonl");
    let stderr = fails(&["show", trajectories.to_str().unwrap()], None);
    each_cause_once(error_line(&stderr), &trajectories);

    let code = dir.join("none.py");
    let stderr = fails(&["sandbox", "run", code.to_str().unwrap()], None);
    each_cause_once(error_line(&stderr), &code);

    let run = dir.join("no-run");
    let stderr = fails(&["report", run.to_str().unwrap()], None);
    let line = error_line(&stderr);
    assert!(line.contains("cleaner train"), "{line}");
    each_cause_once(line, &run);

    let stderr = fails(&["train", "--resume", run.to_str().unwrap()], None);
    let line = error_line(&stderr);
    assert!(line.contains("no complete checkpoint"), "{line}");
}

/// A trainer backend the build lacks fails before any model is loaded, with
/// the flags and the cause (the missing cargo feature) in one line; an
/// unknown backend name is a usage error listing the accepted ones.
#[test]
fn a_trainer_device_the_build_lacks_names_the_flag_and_the_feature() {
    let compiled = [
        ("cuda", cfg!(feature = "cuda")),
        ("metal", cfg!(feature = "metal")),
        ("vulkan", cfg!(feature = "vulkan")),
    ];
    let Some(device) = compiled.iter().find(|(_, on)| !on).map(|(d, _)| *d) else {
        return; // a build with every GPU backend
    };
    for args in [
        vec!["train", "--backend", "ggml", "--device", device],
        vec!["train", "--device", device],
        vec![
            "bench",
            "train",
            "--backend",
            "cpu,ggml",
            "--device",
            device,
            "--python",
            "none",
        ],
    ] {
        let stderr = fails(&args, None);
        let line = error_line(&stderr);
        assert!(
            line.contains(&format!("--device {device}"))
                && line.contains("not compiled")
                && line.contains(&format!("`{device}` feature")),
            "cleaner {args:?}: {line}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cleaner"))
        .args(["train", "--backend", "gpu"])
        .output()
        .expect("run cleaner");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--backend") && stderr.contains("\"gpu\" is not one of auto, cpu, ggml"),
        "{stderr}"
    );
}
