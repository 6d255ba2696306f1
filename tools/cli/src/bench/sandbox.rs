//! `cleaner bench sandbox`: interpreter compile and cache-load time, per-call
//! latency (warm pool and plain path), and executions per second, next to the
//! host's `python3` run as a subprocess on the same scripts in the same run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cleaner::assets::{self, AssetStore};
use cleaner::sandbox::{Limits, ModuleSource, Outcome, Sandbox, SandboxConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Calls per latency measurement.
    #[arg(long, default_value_t = 40)]
    calls: usize,
    /// Calls per throughput measurement.
    #[arg(long, default_value_t = 60)]
    throughput_calls: usize,
    /// Skip the cold compile (it takes about 10 s).
    #[arg(long)]
    no_compile: bool,
}

/// A typical tool call of a math agent: about 20 lines, stdlib only.
pub const MATH_SCRIPT: &str = r#"from fractions import Fraction
import math
eggs_per_day = 16
eaten = 3
baked = 4
remaining = eggs_per_day - eaten - baked
price = Fraction(2)
revenue = remaining * price
print(f"remaining={remaining}, revenue={revenue}")
total = 0
for day in range(1, 31):
    total += remaining * 2
primes = [n for n in range(2, 200) if all(n % d for d in range(2, math.isqrt(n) + 1))]
print(len(primes), sum(primes))
def compound(p, r, n):
    return p * (1 + r / 100) ** n
print(round(compound(1000, 5, 10), 2))
ratios = [Fraction(a, b) for a, b in [(1, 2), (3, 4), (5, 6)]]
print(sum(ratios), math.gcd(84, 36), total)
"#;

struct Stats {
    median_ms: f64,
    p95_ms: f64,
}

fn stats(mut xs: Vec<f64>) -> Stats {
    xs.sort_by(f64::total_cmp);
    let p95 = xs[((xs.len() as f64 * 0.95).ceil() as usize)
        .saturating_sub(1)
        .min(xs.len() - 1)];
    Stats {
        median_ms: super::median(xs),
        p95_ms: p95,
    }
}

fn host_python(code: &str) -> Result<String> {
    let out = Command::new("python3")
        .args(["-S", "-c", code])
        .stdin(Stdio::null())
        .output()
        .context("running the host's python3")?;
    if !out.status.success() {
        bail!(
            "host python3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ours(sb: &Sandbox, code: &str) -> Result<String> {
    let e = sb.run(code, &Limits::default())?;
    if e.outcome != Outcome::Ok {
        bail!(
            "sandbox run failed ({})\n{}",
            crate::render::outcome(&e.outcome),
            e.stderr
        );
    }
    Ok(e.stdout)
}

/// Latency of `f` over `n` calls, each after `pause` (so a warm interpreter
/// is ready, as it is while the agent generates between tool calls).
fn latency(n: usize, pause: Duration, mut f: impl FnMut() -> Result<String>) -> Result<Stats> {
    let mut xs = Vec::with_capacity(n);
    for _ in 0..n {
        std::thread::sleep(pause);
        let t0 = Instant::now();
        f()?;
        xs.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(stats(xs))
}

/// Calls per second with `threads` callers running back to back.
fn throughput(
    threads: usize,
    total: usize,
    f: &(dyn Fn() -> Result<String> + Sync),
) -> Result<f64> {
    let per = total.div_ceil(threads);
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| (0..per).try_for_each(|_| f().map(|_| ()))))
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))??;
        }
        Ok(())
    })?;
    Ok((per * threads) as f64 / t0.elapsed().as_secs_f64())
}

pub fn run(a: Args) -> Result<()> {
    let wasm =
        AssetStore::default().fetch(assets::find("python-wasm")?, &mut |l| eprintln!("{l}"))?;
    if ours_expected() != host_python(MATH_SCRIPT)? {
        bail!("the host python3 prints something else for the math script");
    }
    let mut rows: Vec<(String, String)> = Vec::new();
    if !a.no_compile {
        let dir =
            std::env::temp_dir().join(format!("cleaner-bench-sandbox-{}", std::process::id()));
        let cfg = SandboxConfig {
            cache_dir: dir.clone(),
            warm: 0,
            ..SandboxConfig::new(&wasm, cleaner::assets::sandbox_cache_dir())
        };
        let sb = Sandbox::new(cfg)?;
        rows.push((
            "cold compile (Cranelift) + cache write".into(),
            format!("{:.2} s", sb.module_load().1.as_secs_f64()),
        ));
        drop(sb);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let plain = Sandbox::new(SandboxConfig {
        warm: 0,
        ..SandboxConfig::new(&wasm, cleaner::assets::sandbox_cache_dir())
    })?;
    rows.push((
        "cache load".into(),
        format!(
            "{:.1} ms ({})",
            plain.module_load().1.as_secs_f64() * 1e3,
            match plain.module_load().0 {
                ModuleSource::Compiled => "compiled now",
                ModuleSource::Cache => "from the cache",
            }
        ),
    ));
    let warm = Sandbox::new(SandboxConfig::new(
        &wasm,
        cleaner::assets::sandbox_cache_dir(),
    ))?;
    let pause = Duration::from_millis(150);
    eprintln!("measuring latency ({} calls each)...", a.calls);
    let mut lat = Vec::new();
    for (name, code) in [
        ("print(1)", "print(1)"),
        ("20-line math script", MATH_SCRIPT),
    ] {
        let w = latency(a.calls, pause, || ours(&warm, code))?;
        let p = latency(a.calls, pause, || ours(&plain, code))?;
        let h = latency(a.calls, pause, || host_python(code))?;
        lat.push((name, w, p, h));
    }
    eprintln!(
        "measuring throughput ({} calls each)...",
        a.throughput_calls
    );
    let mut thr = Vec::new();
    for threads in [1usize, 2] {
        let w = throughput(threads, a.throughput_calls, &|| ours(&warm, MATH_SCRIPT))?;
        let h = throughput(threads, a.throughput_calls, &|| host_python(MATH_SCRIPT))?;
        thr.push((threads, w, h));
    }

    println!("\n| interpreter | time |\n|---|---:|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    println!("\nPer-call latency in ms (median / p95), a call every {} ms so a warm interpreter is ready:", pause.as_millis());
    println!("| script | sandbox, warm pool | sandbox, plain (boot per call) | host python3 subprocess | warm / host |");
    println!("|---|---:|---:|---:|---:|");
    for (name, w, p, h) in &lat {
        println!(
            "| {name} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} |",
            w.median_ms,
            w.p95_ms,
            p.median_ms,
            p.p95_ms,
            h.median_ms,
            h.p95_ms,
            w.median_ms / h.median_ms
        );
    }
    println!("\nExecutions per second of the math script, callers back to back:");
    println!("| caller threads | sandbox (warm pool) | host python3 subprocess | ratio |\n|---:|---:|---:|---:|");
    for (t, w, h) in thr {
        println!("| {t} | {w:.1} | {h:.1} | {:.2} |", w / h);
    }
    Ok(())
}

fn ours_expected() -> String {
    "remaining=9, revenue=18\n46 4227\n1628.89\n25/12 12 540\n".to_string()
}
