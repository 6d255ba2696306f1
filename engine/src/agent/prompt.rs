//! Problems as the agent sees them: the system and user messages of the
//! config, rendered by the model's own chat template (with the tool schema
//! for the Hermes format) and tokenized.

use super::config::AgentConfig;
use super::format::{tool_schema, FormatKind};
use super::runner::Problem;
use crate::chat::{ChatError, ChatTemplate, Message};
use crate::llama::Model;
use crate::tasks::Item;

/// What the agent needs of a task's problem to prompt for it (the dataset's
/// `tasks::Item` is one).
pub trait Question {
    /// Identifier, copied into the problem's trajectories.
    fn id(&self) -> &str;
    /// The problem statement, put in place of `{problem}` in the user prompt.
    fn question(&self) -> &str;
}

impl Question for Item {
    fn id(&self) -> &str {
        &self.id
    }
    fn question(&self) -> &str {
        &self.question
    }
}

/// The tokenized prompt of every item.
pub fn problems<Q: Question>(
    template: &ChatTemplate,
    model: &Model,
    config: &AgentConfig,
    items: &[Q],
) -> Result<Vec<Problem>, ChatError> {
    let tools = [tool_schema()];
    let tools = (config.format == FormatKind::Hermes).then_some(&tools[..]);
    items
        .iter()
        .map(|item| {
            let mut messages = Vec::new();
            if let Some(s) = &config.system_prompt {
                messages.push(Message::system(s.clone()));
            }
            messages.push(Message::user(
                config.user_prompt.replace("{problem}", item.question()),
            ));
            Ok(Problem {
                id: item.id().to_string(),
                prompt: template.tokenize(model, &messages, tools)?,
            })
        })
        .collect()
}
