//! Run the tool-using agent on one question, with CLEANER purification on.
//!
//!     cargo run --release --example solve -- "What is 17 * 23 + 4?"
//!
//! The model (Qwen2.5-Coder-0.5B-Instruct by default, or `CLEANER_MODEL`)
//! and the Python interpreter are fetched into the asset cache on first use.

use cleaner::session::{Session, SessionOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let question = std::env::args().nth(1).unwrap_or_else(|| {
        "A shop sells 17 boxes of 23 pencils and 4 loose pencils. How many pencils?".into()
    });
    let model =
        std::env::var("CLEANER_MODEL").unwrap_or_else(|_| cleaner::assets::DEFAULT_MODEL.into());
    let mut session = Session::open(&model, SessionOptions::default())?;
    let t = session.solve(&question)?;
    println!("{}", t.text);
    println!(
        "answer: {:?} | tool calls: {} ({} failed while solving, {} left after purification)",
        t.answer,
        t.tool_calls.len(),
        t.failures_raw(),
        t.failures_kept()
    );
    Ok(())
}
