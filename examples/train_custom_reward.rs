//! GRPO with CLEANER on your own tasks and your own reward, in a few lines.
//!
//!     cargo run --release --example train_custom_reward -- runs/example
//!
//! Two steps on three arithmetic questions with the test model (SmolLM2-135M,
//! fetched on first use); the reward prefers replies that state the right
//! number anywhere, with a small bonus for a `\boxed{}` answer.

use cleaner::agent::Trajectory;
use cleaner::rl::{Grpo, Progress, RunConfig};
use cleaner::tasks::Item;

fn reward(item: &Item, t: &Trajectory) -> f32 {
    let mentions = t.text.contains(item.answer.as_str()) as u8 as f32;
    let boxed = t.answer.is_some() as u8 as f32;
    mentions + 0.1 * boxed
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let run = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "runs/example".into());
    let mut config = RunConfig::load("quickstart")?; // or RunConfig::from_toml(text, "my.toml")
    config.model = "smollm2-135m".into();
    config.grpo.steps = 2;
    config.grpo.prompts_per_step = 2;
    config.agent.max_response_tokens = 96;
    config.engine.max_prompt_tokens = 256;
    let tasks: Vec<Item> = [
        ("What is 12 + 30?", "42"),
        ("What is 7 * 8?", "56"),
        ("What is 100 - 37?", "63"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (q, a))| Item {
        id: format!("{i}"),
        question: q.to_string(),
        answer: a.to_string(),
    })
    .collect();
    let mut grpo = Grpo::with_tasks(config, std::path::Path::new(&run), tasks)?
        .with_reward(reward)
        .with_progress(|p| {
            if let Progress::StepDone(m) = p {
                println!(
                    "step {}: reward {:.3}, trained {} sequences, {:.0} s",
                    m.step, m.reward_mean, m.trained_sequences, m.time_step_s
                );
            }
        });
    grpo.run()?;
    grpo.trainer()
        .export_peft(&std::path::Path::new(&run).join("peft"))?; // for the Python ecosystem
    println!("adapter and checkpoints in {run}; `cleaner report {run}` draws the curves");
    Ok(())
}
