//! `cleaner bench ...`: measurements next to a baseline run in the same
//! invocation, reported as ratios (the machine is shared and noisy).

pub mod group;
pub mod kernels;
pub mod python_env;
pub mod rollout;
pub mod sandbox;
pub mod serve;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where the scripts the benches run live, relative to the tools crate:
/// the one place to change when they move.
const SCRIPTS_DIR: &str = "../scripts";

/// A script a bench runs (`bench_train_torch.py`, `build-batched-bench.sh`).
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(SCRIPTS_DIR)
        .join(name)
}

/// Builds `what` with the build script `name` (once: the scripts keep
/// their product in the cache) and returns the path it prints on its last
/// line.
pub fn build_with_script(name: &str, what: &str) -> Result<PathBuf> {
    let script = script(name);
    eprintln!(
        "building {what} with {} (once; several minutes)",
        script.display()
    );
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(stdout.lines().last().unwrap_or("").trim()))
}

#[derive(clap::Subcommand)]
pub enum Which {
    /// Quantized x W^T GFLOP/s vs numpy/OpenBLAS sgemm; trainer forward vs llama.cpp prefill.
    Kernels(kernels::Args),
    /// Rollout throughput vs llama.cpp's llama-batched-bench; LoRA swap and rollback latency; peak RSS.
    Rollout(rollout::Args),
    /// LoRA training step tokens/s and peak RSS vs PyTorch + PEFT on the CPU.
    Train(train::Args),
    /// A GRPO group's training passes with its shared prompt computed once vs every sequence whole.
    Group(group::Args),
    /// Sandbox compile/load time, per-call latency and throughput vs the host's python3.
    Sandbox(sandbox::Args),
    /// `cleaner serve` throughput and time to first token vs llama.cpp's llama-server.
    Serve(serve::Args),
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Kernels(a) => kernels::run(a),
        Which::Rollout(a) => rollout::run(a),
        Which::Sandbox(a) => sandbox::run(a),
        Which::Serve(a) => serve::run(a),
        Which::Train(a) => train::run(a),
        Which::Group(a) => group::run(a),
    }
}

/// Peak resident set size of this process so far, in MiB (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    peak_rss_mib_of("self")
}

/// Peak resident set size of process `pid` ("self" for this one) so far,
/// in MiB (Linux).
pub fn peak_rss_mib_of(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Median of a non-empty sample.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}
