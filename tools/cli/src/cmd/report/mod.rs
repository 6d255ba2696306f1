//! `cleaner report RUN_DIR`: one self-contained HTML page (inline SVG, no
//! scripts, no external files) with the run's curves and a few purified
//! trajectories shown before/after.

mod ticks;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cleaner::agent::trajectory::{read_jsonl, PurifyResult, SegmentKind};
use cleaner::agent::Trajectory;
use cleaner::rl::metrics::MetricsLog;
use cleaner::rl::StepMetrics;

use crate::render;

#[derive(clap::Args)]
pub struct Args {
    /// A run directory written by `cleaner train`.
    run: PathBuf,
    /// Output file (default RUN/report.html).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Purified trajectories to show.
    #[arg(long, default_value_t = 3)]
    trajectories: usize,
}

type Series<'a> = (&'a str, fn(&StepMetrics) -> Option<f64>);

pub fn run(a: Args) -> Result<()> {
    let metrics_path = a.run.join("metrics.jsonl");
    let metrics = MetricsLog::read(&metrics_path).with_context(|| {
        format!(
            "{} is not a training run (no readable metrics.jsonl; `cleaner train --run DIR` makes one)",
            a.run.display()
        )
    })?;
    if metrics.is_empty() {
        bail!("{}: no steps recorded yet", metrics_path.display());
    }
    let config = std::fs::read_to_string(a.run.join("config.toml")).unwrap_or_default();
    let mut html = String::new();
    let title = format!("cleaner run {}", a.run.display());
    write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body><h1>{}</h1>",
        esc(&title),
        esc(&title)
    )?;
    let last = metrics.last().expect("non-empty");
    write!(
        html,
        "<p>{}; last step: reward {:+.3}, accuracy {:.3}, failed calls per trajectory {:.2} raw / {:.2} kept, {:.0} s.</p><div class=\"grid\">",
        match metrics.len() {
            1 => "1 step".to_string(),
            n => format!("{n} steps"),
        },
        last.reward_mean,
        last.accuracy,
        last.failures_raw,
        last.failures_kept,
        last.time_step_s
    )?;
    let charts: [(&str, Vec<Series>); 9] = [
        (
            "Reward and accuracy",
            vec![
                ("reward", |m| Some(m.reward_mean)),
                ("accuracy", |m| Some(m.accuracy)),
            ],
        ),
        (
            "Failed tool calls per trajectory",
            vec![
                ("raw", |m| Some(m.failures_raw)),
                ("kept after purification", |m| Some(m.failures_kept)),
            ],
        ),
        (
            "SyntaxErrors and boxed answers in code (calls per step)",
            vec![
                ("SyntaxError raw", |m| {
                    Some(*m.failures_by_class_raw.get("SyntaxError").unwrap_or(&0) as f64)
                }),
                ("SyntaxError kept", |m| {
                    Some(*m.failures_by_class_kept.get("SyntaxError").unwrap_or(&0) as f64)
                }),
                ("\\boxed in code raw", |m| Some(m.boxed_in_code_raw as f64)),
                ("\\boxed in code kept", |m| {
                    Some(m.boxed_in_code_kept as f64)
                }),
            ],
        ),
        (
            "Rollbacks",
            vec![
                ("shallow", |m| Some(m.rollbacks_shallow as f64)),
                ("deep", |m| Some(m.rollbacks_deep as f64)),
                ("retries exhausted", |m| Some(m.retries_exhausted as f64)),
            ],
        ),
        (
            "Policy change",
            vec![
                ("clip fraction", |m| Some(m.clip_fraction)),
                ("approx. KL to sampler", |m| Some(m.approx_kl)),
                ("KL to start", |m| m.kl_to_start),
            ],
        ),
        (
            "Entropy and gradient",
            vec![
                ("entropy (nats/token)", |m| m.entropy),
                ("grad norm", |m| Some(m.grad_norm)),
            ],
        ),
        (
            "Throughput (tokens/s)",
            vec![
                ("rollout", |m| Some(m.rollout_tokens_per_s)),
                ("training", |m| Some(m.train_tokens_per_s)),
            ],
        ),
        (
            "Time per step (s)",
            vec![
                ("rollout", |m| Some(m.time_rollout_s)),
                ("sandbox (summed)", |m| Some(m.time_sandbox_s)),
                ("training", |m| Some(m.time_train_s)),
                ("training: log-prob passes", |m| Some(m.time_logprobs_s)),
                ("training: forward + backward + update", |m| {
                    Some(m.time_update_s)
                }),
                ("swap", |m| Some(m.time_swap_s)),
            ],
        ),
        (
            "Tokens",
            vec![
                ("response tokens (mean)", |m| Some(m.response_tokens_mean)),
                ("purification overhead x 1000", |m| {
                    Some(m.purification_overhead * 1000.0)
                }),
            ],
        ),
    ];
    for (name, series) in &charts {
        html.push_str(&chart(name, &metrics, series));
    }
    html.push_str("</div><h2>Purified trajectories, before and after</h2>");
    let shown = purified_examples(&a.run, a.trajectories);
    if shown.is_empty() {
        html.push_str("<p>No purified trajectory was saved (purification off, no failed call, or grpo.save_trajectories = false).</p>");
    }
    for (file, t) in &shown {
        html.push_str(&trajectory_html(file, t));
    }
    write!(
        html,
        "<h2>Config</h2><pre>{}</pre></body></html>",
        esc(&config)
    )?;
    let out = a.out.unwrap_or_else(|| a.run.join("report.html"));
    std::fs::write(&out, html).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}

const CSS: &str = "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:1em}\
figure{margin:0;border:1px solid #ddd;padding:.5em}figcaption{font-weight:bold}\
pre{white-space:pre-wrap;background:#f7f7f7;padding:.5em}del{background:#fdd;color:#900}\
ins{background:#dfd;text-decoration:none}.obs{color:#777}.call{font-weight:bold}.legend span{margin-right:1em}";

const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line chart as inline SVG.
fn chart(name: &str, metrics: &[StepMetrics], series: &[Series]) -> String {
    let (w, h, pad) = (360.0, 200.0, 36.0);
    let values: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, f)| {
            metrics
                .iter()
                .filter_map(|m| f(m).filter(|v| v.is_finite()).map(|v| (m.step as f64, v)))
                .collect()
        })
        .collect();
    let all: Vec<(f64, f64)> = values.iter().flatten().copied().collect();
    let (x0, x1) = bounds(all.iter().map(|p| p.0));
    // The steps drawn (a single step is drawn in the middle of a wider axis).
    let first_step = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let last_step = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = bounds(all.iter().map(|p| p.1));
    // The value axis runs from tick to tick, so its ends are labelled.
    let y_ticks = ticks::ticks(lo, hi, 4);
    // (min and max: a tick computed as k * step can miss a round end by an ulp.)
    let y0 = y_ticks[0].0.min(lo);
    let y1 = y_ticks[y_ticks.len() - 1].0.max(hi);
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 1.5 * pad);
    let sy = |y: f64| h - pad + -(y - y0) / (y1 - y0) * (h - 1.5 * pad);
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg viewBox=\"0 0 {w} {h}\" width=\"100%\">",
        esc(name)
    );
    for (y, label) in &y_ticks {
        let _ = write!(
            s,
            "<line x1=\"{pad}\" y1=\"{py:.1}\" x2=\"{}\" y2=\"{py:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            w - pad / 2.0,
            pad - 3.0,
            sy(*y) + 3.0,
            esc(label),
            py = sy(*y)
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/><line x1=\"{pad}\" y1=\"{}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#999\"/>",
        h - pad, w - pad / 2.0, h - pad, pad / 2.0, h - pad
    );
    // The first and last step drawn label the step axis (one label when
    // there is one step, none when nothing was recorded).
    let mut step_labels = vec![(first_step, "middle")];
    if last_step > first_step {
        step_labels = vec![(first_step, "start"), (last_step, "end")];
    }
    for (step, anchor) in step_labels.into_iter().filter(|(x, _)| x.is_finite()) {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"{anchor}\">step {step}</text>",
            sx(step),
            h - 8.0
        );
    }
    for (k, pts) in values.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{colour}\"><title>step {x}: {}</title></circle>",
                sx(x),
                sy(y),
                ticks::value(y)
            );
        }
    }
    s.push_str("</svg><div class=\"legend\">");
    for (k, (label, _)) in series.iter().enumerate() {
        let _ = write!(
            s,
            "<span style=\"color:{}\">&#9632; {}</span>",
            COLOURS[k % COLOURS.len()],
            esc(label)
        );
    }
    s.push_str("</div></figure>");
    s
}

fn bounds(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in v {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

/// Up to `n` trajectories with purification events, newest steps first.
fn purified_examples(run: &Path, n: usize) -> Vec<(String, Trajectory)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run.join("trajectories"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files.iter().rev() {
        let Ok(ts) = read_jsonl(f) else { continue };
        let name = f
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        for t in ts.into_iter().filter(|t| !t.purification.is_empty()) {
            if out.len() >= n {
                return out;
            }
            out.push((name.clone(), t));
        }
    }
    out
}

fn trajectory_html(file: &str, t: &Trajectory) -> String {
    let mut s = format!(
        "<h3>{} problem {} rollout {}: {}, {}, {} tool calls ({} failed raw, {} kept)</h3>",
        esc(file),
        esc(&t.problem_id),
        t.rollout,
        render::reward(t.reward),
        esc(&render::answer(t.answer.as_deref())),
        t.tool_calls.len(),
        t.failures_raw(),
        t.failures_kept()
    );
    for (k, e) in t.purification.iter().enumerate() {
        let label = if e.result == PurifyResult::NoToolCall {
            "kept answer"
        } else {
            "graft"
        };
        let _ = write!(
            s,
            "<p>Purification {k} at token {} (turn {}): {}</p><pre><del>{}</del>\n<del>{}</del>\n<ins>{label}: {}</ins></pre>",
            e.position,
            e.turn,
            render::purification(e.result, e.repair, e.similarity),
            esc(&e.failed_code),
            esc(&e.error),
            esc(&e.correction)
        );
    }
    s.push_str("<p>Final (purified) trajectory:</p><pre>");
    for seg in &t.segments {
        let class = match seg.kind {
            SegmentKind::Prompt => continue,
            SegmentKind::Observation => "obs",
            SegmentKind::Call => "call",
            _ => "",
        };
        let _ = write!(s, "<span class=\"{class}\">{}</span>", esc(&seg.text));
    }
    s.push_str("</pre>");
    s
}
