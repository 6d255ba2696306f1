//! The `cleaner` command-line tool.

mod bench;
mod cmd;
mod error_text;
mod render;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cleaner",
    version,
    about = "Agentic RL for small language models with CLEANER trajectory purification"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download, assemble and verify assets (models, interpreter) into the cache.
    Fetch(cmd::fetch::Args),
    /// Generate completions for a prompt with a model.
    Generate(cmd::generate::Args),
    /// Solve problems with the tool-using agent (purified or plain) and report accuracy.
    #[command(args_override_self = true)]
    Solve(cmd::solve::Args),
    /// Train with GRPO on purified trajectories (CLEANER); resumable.
    #[command(args_override_self = true)]
    Train(cmd::train::Args),
    /// Evaluate a model (and adapter): pass@1 over K samples with a 95% interval.
    Eval(cmd::eval::Args),
    /// Measure how often the model solves each training problem and write the set filtered to learnable ones; resumable.
    Passrate(cmd::passrate::Args),
    /// Write a self-contained HTML report of a training run.
    Report(cmd::report::Args),
    /// Serve the model over an OpenAI-compatible HTTP API (docs/serve.md).
    Serve(cmd::serve::Args),
    /// Render a trajectory file readably, purifications shown before/after.
    Show(cmd::show::Args),
    /// Run Python code in the sandbox.
    Sandbox {
        #[command(subcommand)]
        which: cmd::sandbox::Which,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Sandbox { which } => cmd::sandbox::run(which),
        Command::Solve(a) => cmd::solve::run(a),
        Command::Show(a) => cmd::show::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Passrate(a) => cmd::passrate::run(a),
        Command::Bench { which } => bench::run(which),
    };
    if let Err(e) = result {
        eprintln!("{}", error_text::render(&e));
        std::process::exit(1);
    }
}
