//! Tool-call formats: where a call starts and ends in the model's text, how
//! its code is read, and how the tool's reply is written back.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::chat::{ChatError, ChatTemplate, Message};

/// The tool's name in the Hermes format (the paper's).
pub const TOOL_NAME: &str = "code_interpreter";

/// Which tool-call format the model writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatKind {
    /// `<tool_call>{"name": "code_interpreter", "arguments": {"code": ...}}</tool_call>`,
    /// answered by a `tool` message rendered by the model's chat template.
    Hermes,
    /// A ```` ```python ```` block, answered by an ```` ```output ```` block.
    Markdown,
}

impl std::str::FromStr for FormatKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hermes" => Ok(FormatKind::Hermes),
            "markdown" => Ok(FormatKind::Markdown),
            _ => Err(format!(
                "unknown tool format {s:?} (expected hermes or markdown)"
            )),
        }
    }
}

/// What a finished assistant turn holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// No tool call: the turn is an answer.
    None,
    /// A call with this code.
    Code(String),
    /// A call that cannot be parsed (bad JSON, unknown tool, no code): a
    /// failed call of class `format`.
    Malformed(String),
}

/// A format with its observation wrapping resolved for one model.
#[derive(Clone, Debug)]
pub struct ToolFormat {
    /// The format.
    pub kind: FormatKind,
    /// Text around a tool reply (Hermes: from the model's template).
    obs_prefix: String,
    obs_suffix: String,
}

/// JSON schema of the tool, as the chat template's `tools` expect.
pub fn tool_schema() -> Json {
    json!({
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Execute Python 3 code and return what it prints (or its error).",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "Python code to execute"}},
                "required": ["code"]
            }
        }
    })
}

const OBS_PLACEHOLDER: &str = "\u{1}OBSERVATION\u{1}";

impl ToolFormat {
    /// The Markdown format (no template needed).
    pub fn markdown() -> Self {
        ToolFormat {
            kind: FormatKind::Markdown,
            obs_prefix: "```output\n".into(),
            obs_suffix: "\n```\n".into(),
        }
    }

    /// The Hermes format, its tool replies rendered by `template` exactly as
    /// the model saw them in training.
    pub fn hermes(template: &ChatTemplate) -> Result<Self, ChatError> {
        let call = json!([{"type": "function", "function": {"name": TOOL_NAME, "arguments": {"code": "x"}}}]);
        let messages = vec![
            Message::user("q"),
            Message {
                role: "assistant".into(),
                content: String::new(),
                tool_calls: Some(call),
            },
            Message::new("tool", OBS_PLACEHOLDER),
        ];
        let text = template.render(&messages, Some(&[tool_schema()]), true)?;
        let end = text.rfind("</tool_call>").ok_or_else(|| {
            ChatError::Template("the chat template does not render tool calls as <tool_call>; use the markdown format".into())
        })? + "</tool_call>".len();
        let tail = &text[end..];
        let (prefix, suffix) = tail.split_once(OBS_PLACEHOLDER).ok_or_else(|| {
            ChatError::Template(
                "the chat template does not render tool replies; use the markdown format".into(),
            )
        })?;
        Ok(ToolFormat {
            kind: FormatKind::Hermes,
            obs_prefix: prefix.into(),
            obs_suffix: suffix.into(),
        })
    }

    /// Where a call starts in the text.
    pub fn marker(&self) -> &'static str {
        match self.kind {
            FormatKind::Hermes => "<tool_call>",
            FormatKind::Markdown => "```python",
        }
    }

    /// Stop strings for a turn and the marker that arms them.
    pub fn stops(&self) -> (Vec<String>, Option<String>) {
        match self.kind {
            FormatKind::Hermes => (vec!["</tool_call>".into()], None),
            FormatKind::Markdown => (vec!["\n```".into()], Some("```python".into())),
        }
    }

    /// Reads the tool call of a finished turn, from its first marker: as the
    /// reference reads it, where purification splits the turn, and where a
    /// Markdown turn's stop string is armed (a second marker does not move
    /// where the call starts).
    pub fn parse(&self, turn: &str) -> Call {
        match self.kind {
            FormatKind::Hermes => {
                let Some(start) = turn.find(HERMES_OPEN) else {
                    return Call::None;
                };
                let body = &turn[start + HERMES_OPEN.len()..];
                let Some(end) = body.find(HERMES_CLOSE) else {
                    return Call::Malformed("the tool call is not closed with </tool_call>".into());
                };
                parse_hermes_json(body[..end].trim())
            }
            FormatKind::Markdown => {
                let Some(start) = turn.find("```python") else {
                    return Call::None;
                };
                let body = &turn[start + "```python".len()..];
                let body = body.strip_prefix('\n').unwrap_or(body);
                match body.find("```") {
                    Some(end) => {
                        let code = body[..end].trim_end();
                        if code.trim().is_empty() {
                            Call::Malformed("the code block is empty".into())
                        } else {
                            Call::Code(code.to_string())
                        }
                    }
                    None => Call::None,
                }
            }
        }
    }

    /// The text appended after a turn that ended with a tool call: the
    /// tool's reply, wrapped as the format wants.
    pub fn observation(&self, turn: &str, content: &str) -> String {
        let lead = if self.kind == FormatKind::Markdown && !turn.ends_with('\n') {
            "\n"
        } else {
            ""
        };
        format!("{lead}{}{content}{}", self.obs_prefix, self.obs_suffix)
    }
}

/// Where a Hermes tool call opens and closes in the model's text.
pub const HERMES_OPEN: &str = "<tool_call>";
/// See [`HERMES_OPEN`].
pub const HERMES_CLOSE: &str = "</tool_call>";

/// The JSON object between a Hermes call's tags, read but not yet judged:
/// the agent wants `code_interpreter` with a `code` argument, the server any
/// tool the request declared.
#[derive(Clone, Debug, PartialEq)]
pub struct HermesCall {
    /// `name`, when it is a string.
    pub name: Option<String>,
    /// `arguments`, when present. Models also write them as a JSON string
    /// (OpenAI's own shape); such a string is decoded when it holds JSON and
    /// kept as the string otherwise.
    pub arguments: Option<Json>,
}

/// Reads the body of a Hermes call (the text between its tags).
pub fn read_hermes_call(body: &str) -> Result<HermesCall, serde_json::Error> {
    let v: Json = serde_json::from_str(body.trim())?;
    let arguments = match v.get("arguments") {
        Some(Json::String(s)) => {
            Some(serde_json::from_str::<Json>(s).unwrap_or(Json::String(s.clone())))
        }
        other => other.cloned(),
    };
    Ok(HermesCall {
        name: v.get("name").and_then(Json::as_str).map(str::to_string),
        arguments,
    })
}

fn parse_hermes_json(body: &str) -> Call {
    let call = match read_hermes_call(body) {
        Ok(c) => c,
        Err(e) => return Call::Malformed(format!("the tool call is not valid JSON: {e}")),
    };
    let name = call.name.as_deref().unwrap_or("");
    if name != TOOL_NAME {
        return Call::Malformed(format!(
            "unknown tool {name:?}; the only tool is {TOOL_NAME:?}"
        ));
    }
    match call
        .arguments
        .as_ref()
        .and_then(|a| a.get("code"))
        .and_then(Json::as_str)
    {
        Some(code) if !code.trim().is_empty() => Call::Code(code.to_string()),
        _ => Call::Malformed("the tool call has no \"code\" argument".into()),
    }
}

/// Cuts `text` to at most `max` characters by removing its middle (the
/// reference truncates tool output to 256 characters this way).
pub fn truncate_middle(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    const CUT: &str = "\n...\n";
    let keep = max.saturating_sub(CUT.len());
    let head: String = text.chars().take(keep / 2).collect();
    let tail: String = text.chars().skip(n - (keep - keep / 2)).collect();
    format!("{head}{CUT}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hermes_parsing() {
        let f = ToolFormat {
            kind: FormatKind::Hermes,
            obs_prefix: String::new(),
            obs_suffix: String::new(),
        };
        let ok = "Let me compute.\n<tool_call>\n{\"name\": \"code_interpreter\", \"arguments\": {\"code\": \"print(1)\"}}\n</tool_call>";
        assert_eq!(f.parse(ok), Call::Code("print(1)".into()));
        let as_string = "<tool_call>{\"name\": \"code_interpreter\", \"arguments\": \"{\\\"code\\\": \\\"print(2)\\\"}\"}</tool_call>";
        assert_eq!(f.parse(as_string), Call::Code("print(2)".into()));
        assert!(matches!(
            f.parse("<tool_call>{bad json}</tool_call>"),
            Call::Malformed(_)
        ));
        assert!(matches!(
            f.parse("<tool_call>{\"name\": \"shell\", \"arguments\": {}}</tool_call>"),
            Call::Malformed(_)
        ));
        assert_eq!(f.parse("The answer is \\boxed{3}."), Call::None);
        // The first marker opens the call: a second one inside it is not
        // skipped to.
        assert!(matches!(
            f.parse("<tool_call> x <tool_call>{\"name\": \"code_interpreter\", \"arguments\": {\"code\": \"print(1)\"}}</tool_call>"),
            Call::Malformed(_)
        ));
    }

    #[test]
    fn markdown_parsing_and_observation() {
        let f = ToolFormat::markdown();
        let turn = "First compute:\n```python\nx = 3\nprint(x * 2)\n```";
        assert_eq!(f.parse(turn), Call::Code("x = 3\nprint(x * 2)".into()));
        assert_eq!(f.observation(turn, "6"), "\n```output\n6\n```\n");
        assert_eq!(f.observation("```\n", "6"), "```output\n6\n```\n");
        assert_eq!(f.parse("no code here"), Call::None);
    }

    #[test]
    fn middle_truncation() {
        let long: String = (0..1000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let t = truncate_middle(&long, 256);
        assert_eq!(t.chars().count(), 256);
        assert!(t.starts_with("abc") && t.contains("\n...\n"));
        assert_eq!(truncate_middle("short", 256), "short");
    }
}
