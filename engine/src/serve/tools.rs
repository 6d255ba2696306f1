//! The request side of tool calling: `tools` and `tool_choice` checked (a
//! bad entry is a 400 naming `tools[i]...`), the tool calls of earlier
//! assistant messages put into the shape chat templates read, and whether
//! the served model's template can show tools at all.
//!
//! Reading the model's calls back out of its reply is `tool_calls`.

use serde_json::{json, Map, Value as Json};

use crate::agent::format::{tool_schema, ToolFormat, HERMES_OPEN, TOOL_NAME};
use crate::chat::{ChatTemplate, Message};
use crate::serve::error::ApiError;
use crate::serve::tool_calls::ToolCallReader;

/// What `tool_choice` asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// The tools are shown to the model but its reply is not read for calls
    /// (vLLM's default for `none`): any call it writes stays in `content`.
    None,
    /// The model decides; calls in its reply are returned as `tool_calls`.
    Auto,
    /// The reply is made to open with a call (`<tool_call>\n{"name":` is forced).
    Required,
    /// The reply is made to open with a call of this function (its name is
    /// forced).
    Named(String),
}

/// A request's checked tools.
#[derive(Clone, Debug, PartialEq)]
pub struct Tools {
    /// The `tools` entries, as given: the chat template renders them.
    pub schemas: Vec<Json>,
    /// Their functions' names.
    pub names: Vec<String>,
    /// What `tool_choice` asks for.
    pub choice: ToolChoice,
}

impl Tools {
    /// Text the assistant's reply is made to begin with (written into the
    /// prompt after the assistant header). Without a grammar sampler this is
    /// how `required` and a named choice are enforced: the model continues
    /// from inside an opened call. It ends before the characters the model
    /// would put in one token with what follows (the space after
    /// `"arguments":`, the newline after `<tool_call>`), so the tokens it
    /// continues with are ones it would have written.
    pub fn reply_start(&self) -> String {
        match &self.choice {
            ToolChoice::None | ToolChoice::Auto => String::new(),
            // `<tool_call>` alone is not enough: Qwen2.5-Coder-0.5B ends its
            // reply right after it. Opening the object makes it name a tool.
            ToolChoice::Required => format!("{HERMES_OPEN}\n{{\"name\":"),
            ToolChoice::Named(name) => format!(
                "{HERMES_OPEN}\n{{\"name\": {}, \"arguments\":",
                Json::String(name.clone())
            ),
        }
    }

    /// The reader of the reply's calls (none for `tool_choice: none`),
    /// already past [`reply_start`](Self::reply_start).
    pub fn reader(&self) -> Option<ToolCallReader> {
        match self.choice {
            ToolChoice::None => None,
            ToolChoice::Auto => Some(ToolCallReader::new(self.names.clone())),
            ToolChoice::Required | ToolChoice::Named(_) => Some(ToolCallReader::inside_call(
                self.names.clone(),
                &self.reply_start()[HERMES_OPEN.len()..],
            )),
        }
    }
}

/// Most characters of a function name, as OpenAI allows.
const MAX_NAME: usize = 64;

/// Checks `tools` and `tool_choice`; `None` when the request has no tools.
pub fn check(tools: Option<Json>, tool_choice: Option<Json>) -> Result<Option<Tools>, ApiError> {
    let schemas = match tools {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(list)) => list,
        Some(other) => {
            return Err(ApiError::invalid(
                "tools",
                format!(
                    "tools must be a list of {{\"type\": \"function\", \"function\": {{...}}}} objects, got {}",
                    kind(&other)
                ),
            ))
        }
    };
    let mut names: Vec<String> = Vec::with_capacity(schemas.len());
    for (i, t) in schemas.iter().enumerate() {
        let name = check_tool(i, t)?;
        if names.contains(&name) {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                format!("tools[{i}].function.name `{name}` is declared twice; tool names must be unique"),
            ));
        }
        names.push(name);
    }
    let choice = match tool_choice {
        None | Some(Json::Null) => ToolChoice::Auto,
        Some(Json::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!(
                        "tool_choice must be none, auto, required or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got `{other}`"
                    ),
                ))
            }
        },
        Some(Json::Object(o)) => ToolChoice::Named(named_choice(&o)?),
        Some(other) => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!(
                    "tool_choice must be a string or a {{\"type\": \"function\", ...}} object, got {}",
                    kind(&other)
                ),
            ))
        }
    };
    if schemas.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            _ => Err(ApiError::invalid(
                "tool_choice",
                "tool_choice required or a named function needs tools, and the request has none",
            )),
        };
    }
    if let ToolChoice::Named(name) = &choice {
        if !names.contains(name) {
            return Err(ApiError::invalid(
                "tool_choice.function.name",
                format!(
                    "tool_choice names the function `{name}`, which is not among the tools ({})",
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(Some(Tools {
        schemas,
        names,
        choice,
    }))
}

/// Checks `tools[i]`; its function's name.
fn check_tool(i: usize, t: &Json) -> Result<String, ApiError> {
    let at = format!("tools[{i}]");
    let Some(o) = t.as_object() else {
        return Err(ApiError::invalid(
            &at,
            format!(
                "{at} must be an object {{\"type\": \"function\", \"function\": {{...}}}}, got {}",
                kind(t)
            ),
        ));
    };
    only_keys(o, &at, &["type", "function"])?;
    match o.get("type") {
        Some(Json::String(s)) if s == "function" => {}
        other => {
            return Err(ApiError::invalid(
                format!("{at}.type"),
                format!(
                    "{at}.type must be \"function\" (the only kind of tool), got {}",
                    other.map_or("nothing".into(), shown)
                ),
            ))
        }
    }
    let at = format!("{at}.function");
    let Some(f) = o.get("function").and_then(Json::as_object) else {
        return Err(ApiError::invalid(
            &at,
            format!("{at} must be an object with a `name` (and optionally `description`, `parameters`, `strict`)"),
        ));
    };
    only_keys(f, &at, &["name", "description", "parameters", "strict"])?;
    let name = function_name(f.get("name"), &format!("{at}.name"))?;
    if let Some(d) = f
        .get("description")
        .filter(|d| !d.is_null() && !d.is_string())
    {
        return Err(ApiError::invalid(
            format!("{at}.description"),
            format!("{at}.description must be a string, got {}", kind(d)),
        ));
    }
    if let Some(p) = f
        .get("parameters")
        .filter(|p| !p.is_null() && !p.is_object())
    {
        return Err(ApiError::invalid(
            format!("{at}.parameters"),
            format!(
                "{at}.parameters must be a JSON schema object, got {}",
                kind(p)
            ),
        ));
    }
    if let Some(s) = f.get("strict").filter(|s| !s.is_null() && !s.is_boolean()) {
        return Err(ApiError::invalid(
            format!("{at}.strict"),
            format!("{at}.strict must be true or false, got {}", kind(s)),
        ));
    }
    Ok(name)
}

/// `{"type": "function", "function": {"name": ...}}` of `tool_choice`.
fn named_choice(o: &Map<String, Json>) -> Result<String, ApiError> {
    only_keys(o, "tool_choice", &["type", "function"])?;
    if o.get("type").and_then(Json::as_str) != Some("function") {
        return Err(ApiError::invalid(
            "tool_choice.type",
            "tool_choice.type must be \"function\"",
        ));
    }
    let Some(f) = o.get("function").and_then(Json::as_object) else {
        return Err(ApiError::invalid(
            "tool_choice.function",
            "tool_choice.function must be an object {\"name\": ...}",
        ));
    };
    only_keys(f, "tool_choice.function", &["name"])?;
    function_name(f.get("name"), "tool_choice.function.name")
}

/// A function name as OpenAI allows them: 1 to 64 of a-z, A-Z, 0-9, `_`, `-`.
fn function_name(v: Option<&Json>, at: &str) -> Result<String, ApiError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_NAME
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match v {
        Some(Json::String(s)) if ok(s) => Ok(s.clone()),
        other => Err(ApiError::invalid(
            at,
            format!(
                "{at} must be 1 to {MAX_NAME} letters, digits, `_` or `-`, got {}",
                other.map_or("nothing".into(), shown)
            ),
        )),
    }
}

/// A 400 naming the first key of `o` not in `allowed`.
fn only_keys(o: &Map<String, Json>, at: &str, allowed: &[&str]) -> Result<(), ApiError> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ApiError::invalid(
            format!("{at}.{k}"),
            format!(
                "{at}.{k} is not a known field (expected {})",
                allowed.join(", ")
            ),
        )),
    }
}

/// The tool calls of `messages[i]` (an assistant message) in the shape chat
/// templates read: OpenAI sends `arguments` as a JSON string, while
/// templates such as Qwen2.5's write `arguments | tojson` and expect the
/// object (which is also how the model itself wrote the call). vLLM and
/// llama.cpp's server decode them the same way.
pub fn for_template(i: usize, calls: Json) -> Result<Json, ApiError> {
    let at = format!("messages[{i}].tool_calls");
    let Json::Array(list) = calls else {
        return Err(ApiError::invalid(
            &at,
            format!("{at} must be a list of {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}} objects, got {}", kind(&calls)),
        ));
    };
    let mut out = Vec::with_capacity(list.len());
    for (j, call) in list.into_iter().enumerate() {
        let at = format!("{at}[{j}]");
        let Json::Object(mut o) = call else {
            return Err(ApiError::invalid(
                &at,
                format!("{at} must be an object {{\"id\", \"type\": \"function\", \"function\": {{...}}}}"),
            ));
        };
        if let Some(t) = o.get("type").filter(|t| t.as_str() != Some("function")) {
            return Err(ApiError::invalid(
                format!("{at}.type"),
                format!("{at}.type must be \"function\", got {}", shown(t)),
            ));
        }
        let Some(Json::Object(mut f)) = o.remove("function") else {
            return Err(ApiError::invalid(
                format!("{at}.function"),
                format!("{at}.function must be an object {{\"name\", \"arguments\"}}"),
            ));
        };
        let name = match f.remove("name") {
            Some(Json::String(s)) if !s.is_empty() => s,
            other => {
                return Err(ApiError::invalid(
                    format!("{at}.function.name"),
                    format!(
                        "{at}.function.name must be the function's name, got {}",
                        other.as_ref().map_or("nothing".into(), shown)
                    ),
                ))
            }
        };
        let arguments = match f.remove("arguments") {
            Some(Json::String(s)) => serde_json::from_str::<Json>(&s).map_err(|e| {
                ApiError::invalid(
                    format!("{at}.function.arguments"),
                    format!("{at}.function.arguments must be a JSON string (as the response gave it), but it does not parse: {e}"),
                )
            })?,
            // Some clients send the object itself.
            Some(a @ Json::Object(_)) => a,
            None | Some(Json::Null) => json!({}),
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("{at}.function.arguments"),
                    format!(
                        "{at}.function.arguments must be a JSON string, got {}",
                        kind(&other)
                    ),
                ))
            }
        };
        let mut entry =
            json!({"type": "function", "function": {"name": name, "arguments": arguments}});
        if let Some(id) = o.remove("id") {
            entry["id"] = id;
        }
        out.push(entry);
    }
    Ok(Json::Array(out))
}

/// Whether `template` can take tools in the one format this server reads
/// back (Hermes `<tool_call>` JSON): it must show tool definitions, render
/// an assistant's calls as `<tool_call>` and render tool replies. The reason
/// when not (SmolLM2's template, for one, ignores tools).
pub fn template_support(template: &ChatTemplate) -> Result<(), String> {
    let question = [Message::user("q")];
    let with = template
        .render(&question, Some(&[tool_schema()]), true)
        .map_err(|e| e.to_string())?;
    if !with.contains(TOOL_NAME) {
        return Err("its chat template does not show the tools' definitions to the model".into());
    }
    ToolFormat::hermes(template).map_err(|e| e.to_string())?;
    Ok(())
}

/// What kind of JSON value `v` is, for messages.
fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// `v` as JSON, cut short when long.
fn shown(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Json {
        json!({"type": "function", "function": {"name": "get_weather",
            "description": "Weather in a city", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    fn param(tools: Json, choice: Option<Json>) -> String {
        match check(Some(tools), choice) {
            Ok(t) => panic!("accepted: {t:?}"),
            Err(e) => {
                assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
                e.param.expect("a param")
            }
        }
    }

    #[test]
    fn bad_tools_are_refused_naming_the_entry_and_field() {
        let t = |v: Json| param(v, None);
        assert_eq!(t(json!({"a": 1})), "tools");
        assert_eq!(t(json!([weather(), 3])), "tools[1]");
        assert_eq!(
            t(json!([{"type": "retrieval", "function": {"name": "x"}}])),
            "tools[0].type"
        );
        assert_eq!(t(json!([{"type": "function"}])), "tools[0].function");
        assert_eq!(
            t(json!([{"type": "function", "function": {"description": "no name"}}])),
            "tools[0].function.name"
        );
        assert_eq!(
            t(json!([{"type": "function", "function": {"name": "has space"}}])),
            "tools[0].function.name"
        );
        assert_eq!(
            t(json!([{"type": "function", "function": {"name": "x", "parameters": "object"}}])),
            "tools[0].function.parameters"
        );
        assert_eq!(
            t(json!([{"type": "function", "function": {"name": "x", "returns": {}}}])),
            "tools[0].function.returns"
        );
        assert_eq!(t(json!([weather(), weather()])), "tools[1].function.name");
    }

    #[test]
    fn tool_choice_is_checked_against_the_tools() {
        assert_eq!(
            param(json!([weather()]), Some(json!("always"))),
            "tool_choice"
        );
        assert_eq!(
            param(
                json!([weather()]),
                Some(json!({"type": "function", "function": {"name": "get_time"}}))
            ),
            "tool_choice.function.name"
        );
        assert_eq!(param(json!([]), Some(json!("required"))), "tool_choice");
        // Without tools, none and auto mean nothing to do.
        assert_eq!(check(None, Some(json!("auto"))).unwrap(), None);
        assert_eq!(check(Some(json!([])), Some(json!("none"))).unwrap(), None);
        let t = check(
            Some(json!([weather()])),
            Some(json!({"type": "function", "function": {"name": "get_weather"}})),
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.choice, ToolChoice::Named("get_weather".into()));
        assert_eq!(t.schemas, vec![weather()]);
    }

    #[test]
    fn forced_choices_start_the_reply_inside_a_call() {
        let tools = |choice| Tools {
            schemas: vec![weather()],
            names: vec!["get_weather".into()],
            choice,
        };
        assert_eq!(tools(ToolChoice::Auto).reply_start(), "");
        assert_eq!(
            tools(ToolChoice::Required).reply_start(),
            "<tool_call>\n{\"name\":"
        );
        assert_eq!(
            tools(ToolChoice::Named("get_weather".into())).reply_start(),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\":"
        );
        assert!(tools(ToolChoice::None).reader().is_none());
    }

    #[test]
    fn earlier_calls_get_their_arguments_as_objects() {
        let calls = json!([{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]);
        assert_eq!(
            for_template(2, calls).unwrap(),
            json!([{"type": "function", "id": "call_1",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}])
        );
        let bad = json!([{"type": "function", "function": {"name": "f", "arguments": "{city"}}]);
        assert_eq!(
            for_template(2, bad).unwrap_err().param.as_deref(),
            Some("messages[2].tool_calls[0].function.arguments")
        );
        let bad = json!([{"type": "function", "function": {"arguments": "{}"}}]);
        assert_eq!(
            for_template(1, bad).unwrap_err().param.as_deref(),
            Some("messages[1].tool_calls[0].function.name")
        );
        assert_eq!(
            for_template(1, json!({"name": "f"}))
                .unwrap_err()
                .param
                .as_deref(),
            Some("messages[1].tool_calls")
        );
    }
}
