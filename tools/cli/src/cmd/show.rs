use std::path::PathBuf;

use anyhow::Result;
use cleaner::agent::trajectory::{read_jsonl, PurifyResult, SegmentKind};

use crate::render;

#[derive(clap::Args)]
pub struct Args {
    /// Trajectory file (JSONL written by `cleaner solve`).
    file: PathBuf,
    /// Only this trajectory (0-based index).
    #[arg(long)]
    index: Option<usize>,
    /// No ANSI colours.
    #[arg(long)]
    plain: bool,
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const CYAN: &str = "\x1b[36m";
const GREEN: &str = "\x1b[32m";
const RED_STRIKE: &str = "\x1b[31;9m";
const BOLD: &str = "\x1b[1m";

pub fn run(a: Args) -> Result<()> {
    let ts = read_jsonl(&a.file)?;
    let c = |code: &'static str| if a.plain { "" } else { code };
    for (i, t) in ts.iter().enumerate() {
        if a.index.is_some_and(|k| k != i) {
            continue;
        }
        println!(
            "{}=== trajectory {i}: problem {} rollout {} | {} | {} | turns {} | tool calls {} (failed: {} raw, {} kept) | {}{}",
            c(BOLD),
            t.problem_id,
            t.rollout,
            render::reward(t.reward),
            render::answer(t.answer.as_deref()),
            t.turns,
            t.tool_calls.len(),
            t.failures_raw(),
            t.failures_kept(),
            if t.purified { "purified" } else { "plain" },
            c(RESET)
        );
        // The final trajectory by segment; the prompt is omitted.
        for seg in &t.segments {
            let colour = match seg.kind {
                SegmentKind::Prompt => continue,
                SegmentKind::Reasoning => c(CYAN),
                SegmentKind::Call => c(BOLD),
                SegmentKind::Observation => c(DIM),
                SegmentKind::Answer => c(GREEN),
            };
            print!("{colour}{}{}", seg.text, c(RESET));
        }
        println!();
        for (n, e) in t.purification.iter().enumerate() {
            println!(
                "{}--- purification {n} at token {} (turn {}): {}, retry {}{}",
                c(BOLD),
                e.position,
                e.turn,
                render::purification(e.result, e.repair, e.similarity),
                e.retries,
                c(RESET)
            );
            println!(
                "{}before: {}{}",
                c(RED_STRIKE),
                e.failed_code.replace('\n', "\n        "),
                c(RESET)
            );
            println!(
                "{}error:  {}{}",
                c(RED_STRIKE),
                e.error.replace('\n', "\n        "),
                c(RESET)
            );
            let label = if e.result == PurifyResult::NoToolCall {
                "kept answer"
            } else {
                "graft"
            };
            println!(
                "{}{label}: {}{}",
                c(GREEN),
                e.correction.replace('\n', "\n        "),
                c(RESET)
            );
        }
        println!();
    }
    Ok(())
}
