//! `cleaner bench kernels`: GFLOP/s of our `y = x W^T` on Qwen2.5-0.5B's real
//! shapes for each quantized format, next to numpy's f32 `x @ W.T` (OpenBLAS
//! sgemm, the practical peak of the machine) on the same shapes with the same
//! thread count, measured in the same run; then the trainer's forward pass on
//! a 512-token sequence next to llama.cpp's prefill of the same tokens.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use cleaner::assets::AssetStore;
use cleaner::kernels::matmul::{matmul_wt, Weights};
use cleaner::kernels::quant::{synthetic::random_tensor, QuantType};
use cleaner::models::Transformer;
use cleaner::{Decoder, DecoderConfig, Model, ModelParams};

use super::python_env;

#[derive(clap::Args)]
pub struct Args {
    /// Weight formats to measure (comma-separated ggml names, or "all").
    #[arg(long, default_value = "Q4_1,Q5_0,Q8_0,Q4_K,Q6_K")]
    types: String,
    /// Token counts (rows of x).
    #[arg(long, default_value = "1,64,512")]
    tokens: String,
    /// Timed repetitions per cell at least (the median is reported). A 896
    /// x 896 product at T = 512 takes 5 ms: with 3 its ratio to sgemm moved
    /// 0.46-0.81 between runs on a quiet 2-core Zen 4, with 15 0.86-0.93
    /// (three runs).
    #[arg(long, default_value_t = 15)]
    reps: usize,
    /// Seconds of timed repetitions per cell at least, on each side, after
    /// as long again of warm-up runs. At T = 64 a product takes under a
    /// millisecond: 15 of them are 10 ms, and the 896 x 896 cell read 0.40-0.82
    /// of sgemm between runs of one binary, against 0.92-0.98 timed over 200
    /// runs.
    #[arg(long, default_value_t = 0.5)]
    min_seconds: f64,
    /// Passes over each shape's cells, numpy's and ours in turn; each cell
    /// reports the median over passes (the ratio: of each pass's ratio), so
    /// that a slow spell of a shared machine, which lasts seconds, lands on
    /// one pass rather than on one side.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the 896 -> 151936 output projection (the slowest shape).
    #[arg(long)]
    skip_vocab: bool,
    /// Models for the forward-pass comparison (comma-separated; "none" to skip).
    #[arg(long, default_value = "smollm2-135m,qwen2.5-coder-0.5b")]
    forward_models: String,
    /// Python for the numpy baseline: "venv" (made in the cache on first
    /// use), an interpreter with numpy, or "none" to leave the baseline out.
    #[arg(long, default_value = "venv")]
    python: String,
}

/// (n_in, n_out) of Qwen2.5-0.5B's projections: attention, ffn up/gate, ffn down, output.
const SHAPES: [(usize, usize); 4] = [(896, 896), (896, 4864), (4864, 896), (896, 151936)];

const NUMPY_SGEMM: &str = r#"
import sys, time, json
import numpy as np
t, n_in, n_out, reps = map(int, sys.argv[1:5])
min_seconds = float(sys.argv[5])
rng = np.random.default_rng(0)
x = rng.standard_normal((t, n_in), dtype=np.float32)
w = rng.standard_normal((n_out, n_in), dtype=np.float32)
start = time.perf_counter()
x @ w.T
while time.perf_counter() - start < min_seconds:
    x @ w.T
times = []
while len(times) < reps or sum(times) < min_seconds:
    s = time.perf_counter(); x @ w.T; times.append(time.perf_counter() - s)
times.sort()
print(json.dumps({"seconds": times[len(times) // 2]}))
"#;

fn parse_types(s: &str) -> Result<Vec<QuantType>> {
    if s == "all" {
        return Ok(cleaner::kernels::quant::SUPPORTED.to_vec());
    }
    s.split(',')
        .map(|name| {
            cleaner::kernels::quant::SUPPORTED
                .into_iter()
                .find(|t| t.name().eq_ignore_ascii_case(name.trim()))
                .with_context(|| format!("--types: unknown or unsupported format {name:?}"))
        })
        .collect()
}

/// numpy's median seconds for `x @ W.T`; the reason when it cannot run.
fn numpy_seconds(
    python: &Path,
    t: usize,
    n_in: usize,
    n_out: usize,
    reps: usize,
    min_seconds: f64,
    threads: usize,
) -> Result<f64, String> {
    let mut cmd = Command::new(python);
    cmd.args([
        "-c",
        NUMPY_SGEMM,
        &t.to_string(),
        &n_in.to_string(),
        &n_out.to_string(),
        &reps.to_string(),
        &min_seconds.to_string(),
    ])
    .env("OPENBLAS_NUM_THREADS", threads.to_string())
    .env("OMP_NUM_THREADS", threads.to_string());
    let v = super::python_env::run_baseline(python, &mut cmd)?;
    v["seconds"]
        .as_f64()
        .ok_or_else(|| format!("{} printed no time", python.display()))
}

/// Median seconds of runs of `f`, at least `reps` of them and at least
/// `min_seconds` in all, after warm-up runs (page in, fill caches, wake the
/// worker threads and the cores) for `min_seconds` and at least one run; the
/// first error `f` returns (a model that cannot run) ends the measurement.
fn time_median(reps: usize, min_seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let warm_up = Instant::now();
    f()?;
    while warm_up.elapsed().as_secs_f64() < min_seconds {
        f()?;
    }
    let mut times = Vec::with_capacity(reps);
    while times.len() < reps || times.iter().sum::<f64>() < min_seconds {
        let s = Instant::now();
        f()?;
        times.push(s.elapsed().as_secs_f64());
    }
    Ok(super::median(times))
}

pub fn run(a: Args) -> Result<()> {
    let types = parse_types(&a.types)?;
    let tokens: Vec<usize> = a
        .tokens
        .split(',')
        .map(|t| {
            t.trim()
                .parse()
                .with_context(|| format!("--tokens: {t:?} is not a count"))
        })
        .collect::<Result<_>>()?;
    let threads = rayon::current_num_threads();
    let mut python: Option<PathBuf> = python_env::interpreter(&a.python, &python_env::NUMPY);
    anyhow::ensure!(a.rounds >= 1, "--rounds: at least 1, got 0");
    println!(
        "x W^T, {threads} threads, median of at least {} runs and {} s of runs per cell after as long a warm-up, median over {} passes (GFLOP/s; ratio to numpy/OpenBLAS f32 sgemm in parentheses: the median of the passes' ratios)\n",
        a.reps, a.min_seconds, a.rounds
    );
    print!("| n_in -> n_out | T | numpy sgemm |");
    for ty in &types {
        print!(" {} |", ty.name());
    }
    println!();
    println!("|---|---|---|{}", "---|".repeat(types.len()));
    let mut min_ratio_512 = f64::INFINITY;
    let mut min_ratio = f64::INFINITY;
    // Our products at T >= 512 (lowest, highest), against the kernel's ceiling.
    let mut ours_512 = (f64::INFINITY, 0f64);
    for &(n_in, n_out) in SHAPES.iter().filter(|s| !(a.skip_vocab && s.1 > 100_000)) {
        // K-quants need rows of whole 256-value blocks: Qwen2.5-0.5B stores its
        // 896-wide rows as Q5_0/Q8_0 for that reason; such cells print n/a.
        let weights: Vec<Option<Vec<u8>>> = types
            .iter()
            .map(|&ty| {
                (n_in % ty.block_len() == 0)
                    .then(|| random_tensor(ty, n_in * n_out, 7).expect("whole blocks"))
            })
            .collect();
        // [token count][pass]: numpy's GFLOP/s; [token count][format][pass]: ours.
        let mut base: Vec<Vec<f64>> = vec![Vec::new(); tokens.len()];
        let mut ours: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); types.len()]; tokens.len()];
        for _ in 0..a.rounds {
            for (ti, &t) in tokens.iter().enumerate() {
                let flop = 2.0 * (t * n_in * n_out) as f64;
                if let Some(py) = python.as_deref() {
                    match numpy_seconds(py, t, n_in, n_out, a.reps, a.min_seconds, threads) {
                        Ok(s) => base[ti].push(flop / s / 1e9),
                        Err(why) => {
                            python_env::left_out(&python_env::NUMPY, &why);
                            python = None;
                            base.iter_mut().for_each(Vec::clear);
                        }
                    }
                }
                let x: Vec<f32> = (0..t * n_in)
                    .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                    .collect();
                let mut y = vec![0f32; t * n_out];
                for ((ty, bytes), out) in types.iter().zip(&weights).zip(&mut ours[ti]) {
                    let Some(bytes) = bytes else { continue };
                    let w = Weights::quantized(*ty, bytes, n_out, n_in)?;
                    let seconds = time_median(a.reps, a.min_seconds, || {
                        matmul_wt(&x, t, &w, &mut y);
                        Ok(())
                    })?;
                    out.push(flop / seconds / 1e9);
                }
            }
        }
        for (ti, &t) in tokens.iter().enumerate() {
            let b = &base[ti];
            match b.is_empty() {
                false => print!(
                    "| {n_in} -> {n_out} | {t} | {:.1} |",
                    super::median(b.clone())
                ),
                true => print!("| {n_in} -> {n_out} | {t} | n/a |"),
            }
            for runs in &ours[ti] {
                if runs.is_empty() {
                    print!(" n/a |");
                    continue;
                }
                let gflops = super::median(runs.clone());
                if t >= 512 {
                    ours_512 = (ours_512.0.min(gflops), ours_512.1.max(gflops));
                }
                if b.len() != runs.len() {
                    print!(" {gflops:.1} |");
                    continue;
                }
                let ratio = super::median(runs.iter().zip(b).map(|(o, b)| o / b).collect());
                min_ratio = min_ratio.min(ratio);
                if t >= 512 {
                    min_ratio_512 = min_ratio_512.min(ratio);
                }
                print!(" {gflops:.1} ({ratio:.2}) |");
            }
            println!();
        }
    }
    if min_ratio.is_finite() {
        print!("\nlowest ratio to sgemm: {min_ratio:.2} on any shape");
        if min_ratio_512.is_finite() {
            print!(", {min_ratio_512:.2} at T >= 512");
        }
        println!(" (goal >= 0.8)");
    }
    // Medians against medians: both sides see the same slow spells of a
    // shared machine; the best trial is the kernel without them.
    let (best, median) = cleaner::kernels::matmul::micro_kernel_ceiling_gflops();
    let full = median * threads as f64;
    print!(
        "\nf32 micro-kernel ({}) on operands in L1, one thread, {} trials: best {best:.1}, median {median:.1} GFLOP/s ({full:.1} on {threads} threads)",
        cleaner::kernels::cpu::kernels().gemm_f32,
        cleaner::kernels::matmul::MICRO_KERNEL_CEILING_TRIALS,
    );
    if ours_512.1 > 0.0 {
        print!(
            "; the products above at T >= 512 reach {:.2}-{:.2} of its median on {threads} threads (the rest: packing, decoding, memory traffic, threads)",
            ours_512.0 / full,
            ours_512.1 / full
        );
    }
    println!();
    if let Some((best, median)) = cleaner::kernels::matmul::bf16_micro_kernel_ceiling_gflops() {
        println!(
            "bf16 micro-kernel ({}) on operands in L1, one thread, {} trials: best {best:.1}, median {median:.1} GFLOP/s ({:.1} on {threads} threads; {:.2}x the f32 kernel's median): the ceiling of `--precision bf16`",
            if cleaner::kernels::cpu::kernels().bf16_amx {
                "amx-bf16 tiles, a 32 x 32 block".into()
            } else {
                cleaner::kernels::cpu::kernels().bf16.map_or("none".into(), |isa| isa.to_string())
            },
            cleaner::kernels::matmul::MICRO_KERNEL_CEILING_TRIALS,
            median * threads as f64,
            median / full * threads as f64,
        );
    }
    if a.forward_models != "none" {
        forward_vs_llama(&a.forward_models, threads)?;
    }
    Ok(())
}

/// Resets the kernel's peak-RSS counter (Linux `clear_refs` 5), so each
/// measurement reports its own peak.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

const TEXT: &str = "The harbour town woke slowly. Fishing boats returned with the tide, gulls argued \
over the nets, and the baker pulled the first loaves from an oven older than anyone could remember. \
def area(r):\n    return 3.14159 * r * r\nprint(area(2.5))\n";

fn forward_vs_llama(models: &str, threads: usize) -> Result<()> {
    const N: usize = 512;
    println!("\nForward pass over {N} tokens (all positions' next-token log-probs), {threads} threads:\n");
    println!("| model | ours tok/s | llama.cpp prefill tok/s | ratio | our peak RSS MiB | llama.cpp peak RSS MiB | file MiB |");
    println!("|---|---|---|---|---|---|---|");
    for name in models.split(',') {
        let path = AssetStore::default().resolve_model(name.trim(), &mut |l| eprintln!("{l}"))?;
        let file_mib = std::fs::metadata(&path)?.len() as f64 / 1048576.0;
        let toks = {
            // Tokenize, then let llama.cpp's copy of the model go so each
            // side's peak memory is its own.
            let llama = Model::load(&path, &ModelParams::default())?;
            let mut toks = Vec::new();
            while toks.len() < N {
                toks.extend(llama.tokenize(TEXT, toks.is_empty(), false)?);
            }
            toks.truncate(N);
            toks
        };
        let ids: Vec<u32> = toks.iter().map(|&t| t as u32).collect();

        reset_peak_rss();
        let ours = Transformer::open(&path)?;
        let ours_s = time_median(2, 0.0, || {
            ours.forward(&ids, None, None)?;
            Ok(())
        })?;
        let ours_rss = super::peak_rss_mib().unwrap_or(f64::NAN);
        drop(ours);

        reset_peak_rss();
        let llama = Arc::new(Model::load(&path, &ModelParams::default())?);
        let config = DecoderConfig {
            n_ctx: 1024,
            n_seq_max: 1,
            n_batch: 512,
            n_threads: threads as i32,
            flash_attention: None,
        };
        let mut decoder = Decoder::new(llama.clone(), &config)?;
        let llama_s = time_median(2, 0.0, || {
            decoder.score(&toks, false)?;
            Ok(())
        })?;
        let llama_rss = super::peak_rss_mib().unwrap_or(f64::NAN);
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} | {ours_rss:.0} | {llama_rss:.0} | {file_mib:.0} |",
            N as f64 / ours_s,
            N as f64 / llama_s,
            llama_s / ours_s
        );
    }
    Ok(())
}
