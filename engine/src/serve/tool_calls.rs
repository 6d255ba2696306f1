//! The model's tool calls, read out of its reply as it streams: Hermes
//! `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (the
//! format Qwen2.5's template teaches), any number per reply, become OpenAI
//! `tool_calls`; the text around them stays `content`.
//!
//! One reader serves whole and streamed answers alike (a whole answer is the
//! stream read to its end), so a stream's deltas always add up to the whole
//! answer. It releases text only once it cannot belong to a call: from
//! `<tool_call>` on, text waits until `</tool_call>` decides it.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value as Json};

use crate::agent::format::{read_hermes_call, HERMES_CLOSE, HERMES_OPEN};

/// One call the model made.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// `call_...`, unique in this server's lifetime.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments object as a JSON string (OpenAI's shape).
    pub arguments: String,
}

impl ToolCall {
    /// An entry of `message.tool_calls`.
    pub fn to_json(&self) -> Json {
        json!({"id": self.id, "type": "function",
               "function": {"name": self.name, "arguments": self.arguments}})
    }

    /// The entry of a stream's `delta.tool_calls` that carries the whole call
    /// at once: `index` is its place among the choice's calls.
    pub fn to_delta_json(&self, index: usize) -> Json {
        let mut v = self.to_json();
        v["index"] = json!(index);
        v
    }
}

/// What the reader releases.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    /// Content text.
    Text(String),
    /// A call, closed and parsed.
    Call(ToolCall),
}

/// Reads one reply's text, piece by piece, into content and calls.
///
/// Two forms are calls. A Hermes block `<tool_call>...</tool_call>` whose
/// body is a call (a JSON object with a non-empty `name` and `arguments` an
/// object, absent for `{}`), anywhere in the reply; a block the reply ends
/// inside (no `</tool_call>` before end-of-generation) counts when its body
/// is a whole call. And, as llama.cpp's Hermes parser also accepts, a bare
/// call object `{"name": ..., "arguments": {...}}`, optionally fenced as
/// ```` ```json ````, at the start of the reply or right after another call,
/// if it names one of the request's tools: small Qwen2.5 models often
/// leave the tags out.
///
/// Whitespace between text and a call is the call's layout (Qwen writes a
/// newline before `<tool_call>` and between calls), not content: it is
/// dropped, so "Checking.\n<tool_call>...</tool_call>" has the content
/// "Checking." and a reply of calls only has none. Anything that is not a
/// call stays in the content exactly as the model wrote it.
#[derive(Clone, Debug)]
pub struct ToolCallReader {
    /// The request's tool names (a bare object must name one).
    names: Vec<String>,
    /// Text not released yet: outside a call, a tail that may still turn
    /// out to start a call (trailing whitespace, a prefix of `<tool_call>`,
    /// a bare object not yet closed); inside one, the call's body so far.
    held: String,
    in_call: bool,
    /// Whitespace between the text before the current call and the call,
    /// kept in case the call does not parse.
    gap: String,
    /// The last thing read was a call: whitespace after it is dropped.
    after_call: bool,
    /// At the reply's start or right after a call: a bare object may be a call.
    at_boundary: bool,
}

impl ToolCallReader {
    /// A reader for a reply to a request with tools named `names`.
    pub fn new(names: Vec<String>) -> Self {
        ToolCallReader {
            names,
            held: String::new(),
            in_call: false,
            gap: String::new(),
            after_call: false,
            at_boundary: true,
        }
    }

    /// A reader whose reply was made to start inside a call, `head` being
    /// what was written after `<tool_call>` (`tool_choice` required or named).
    pub fn inside_call(names: Vec<String>, head: &str) -> Self {
        ToolCallReader {
            held: head.to_string(),
            in_call: true,
            at_boundary: false,
            ..Self::new(names)
        }
    }

    /// Reads more of the reply; returns what became final.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        self.read(&mut out, false);
        out
    }

    /// Ends the reply: decides and releases what was held.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        self.read(&mut out, true);
        out
    }

    fn read(&mut self, out: &mut Vec<Piece>, ended: bool) {
        loop {
            if self.in_call {
                let (body, closed) = match self.held.find(HERMES_CLOSE) {
                    Some(end) => {
                        let body = self.held[..end].to_string();
                        self.held.drain(..end + HERMES_CLOSE.len());
                        (body, true)
                    }
                    None if ended => (std::mem::take(&mut self.held), false),
                    None => return,
                };
                self.in_call = false;
                let gap = std::mem::take(&mut self.gap);
                match parse_call(&body) {
                    Some(call) => {
                        out.push(Piece::Call(call));
                        self.after_call = true;
                        self.at_boundary = true;
                    }
                    None => {
                        let close = if closed { HERMES_CLOSE } else { "" };
                        push_text(out, format!("{gap}{HERMES_OPEN}{body}{close}"));
                        self.after_call = false;
                        self.at_boundary = false;
                    }
                }
                continue;
            }
            if self.after_call {
                let kept = self.held.trim_start().len();
                self.held.drain(..self.held.len() - kept);
                if self.held.is_empty() {
                    return;
                }
                self.after_call = false;
            }
            if self.at_boundary {
                let ws = self.held.len() - self.held.trim_start().len();
                match bare_call(&self.held[ws..], &self.names, ended) {
                    Bare::Call(call, len) => {
                        out.push(Piece::Call(call));
                        self.held.drain(..ws + len);
                        self.after_call = true;
                        continue;
                    }
                    Bare::Undecided if !ended => return,
                    Bare::Undecided | Bare::No => self.at_boundary = false,
                }
            }
            if let Some(start) = self.held.find(HERMES_OPEN) {
                let before = self.held[..start].trim_end().len();
                push_text(out, self.held[..before].to_string());
                self.gap = self.held[before..start].to_string();
                self.held.drain(..start + HERMES_OPEN.len());
                self.in_call = true;
                continue;
            }
            if ended {
                push_text(out, std::mem::take(&mut self.held));
                return;
            }
            // Hold back what could still be the start of a call: a prefix of
            // `<tool_call>` at the end, and the whitespace before it.
            let open = HERMES_OPEN.as_bytes();
            let partial = (1..open.len().min(self.held.len() + 1))
                .rev()
                .find(|&k| self.held.as_bytes().ends_with(&open[..k]))
                .unwrap_or(0);
            let release = self.held[..self.held.len() - partial].trim_end().len();
            push_text(out, self.held.drain(..release).collect());
            return;
        }
    }
}

/// What a bare object at a call boundary turned out to be.
enum Bare {
    /// Not known yet: more text decides.
    Undecided,
    /// Not a call.
    No,
    /// A call, and how many bytes of the text it took (fences included).
    Call(ToolCall, usize),
}

/// Reads `s` as a bare call: `{"name": ...}` (the key first, as llama.cpp
/// requires), optionally inside a ```` ```json ```` fence, naming one of
/// `names`. `ended`: no more text comes (an unclosed fence then closes).
fn bare_call(s: &str, names: &[String], ended: bool) -> Bare {
    let undecided_or_no = |rest: &str, want: &str| {
        if want.starts_with(rest) {
            Bare::Undecided
        } else {
            Bare::No
        }
    };
    let mut i = 0;
    let fenced = s.starts_with('`');
    if fenced {
        let Some(after) = s.strip_prefix("```") else {
            return undecided_or_no(s, "```");
        };
        let lang = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        if lang == after.len() {
            return if "json".starts_with(after) {
                Bare::Undecided
            } else {
                Bare::No
            };
        }
        if !(lang == 0 || &after[..lang] == "json") {
            return Bare::No;
        }
        i = 3 + lang;
        i += s[i..].len() - s[i..].trim_start().len();
    }
    let object = &s[i..];
    if object.is_empty() {
        return Bare::Undecided;
    }
    // `{`, whitespace, `"name"`, whitespace, `:`.
    let Some(inner) = object.strip_prefix('{') else {
        return Bare::No;
    };
    let inner = inner.trim_start();
    let Some(after_key) = inner.strip_prefix("\"name\"") else {
        return undecided_or_no(inner, "\"name\"");
    };
    let after_key = after_key.trim_start();
    if after_key.is_empty() {
        return Bare::Undecided;
    }
    if !after_key.starts_with(':') {
        return Bare::No;
    }
    let Some(len) = object_len(object) else {
        return Bare::Undecided;
    };
    // Bare objects are ordinary JSON too: only one naming a declared tool
    // and giving arguments is taken for a call.
    let arguments_given =
        serde_json::from_str::<Json>(&object[..len]).is_ok_and(|v| v.get("arguments").is_some());
    let call = match parse_call(&object[..len]) {
        Some(c) if arguments_given && names.contains(&c.name) => c,
        _ => return Bare::No,
    };
    let mut end = i + len;
    if fenced {
        let rest = &s[end..];
        let trimmed = rest.trim_start();
        end += rest.len() - trimmed.len();
        if trimmed.starts_with("```") {
            end += 3;
        } else if ended && trimmed.is_empty() {
            // The reply ended before closing its fence.
        } else {
            return undecided_or_no(trimmed, "```");
        }
    }
    Bare::Call(call, end)
}

/// The length of the JSON object `s` starts with, once it is closed.
fn object_len(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (k, b) in s.bytes().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(k + 1);
                }
            }
            _ => {}
        }
    }
    None
}

fn push_text(out: &mut Vec<Piece>, text: String) {
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
}

/// A call's body read as OpenAI needs it: a name, and arguments that are an
/// object (absent arguments are `{}`). `None` leaves the block as content.
fn parse_call(body: &str) -> Option<ToolCall> {
    let call = read_hermes_call(body).ok()?;
    let name = call.name.filter(|n| !n.is_empty())?;
    let arguments = match call.arguments {
        None | Some(Json::Null) => "{}".to_string(),
        Some(a @ Json::Object(_)) => a.to_string(),
        Some(_) => return None,
    };
    Some(ToolCall {
        id: fresh_id(),
        name,
        arguments,
    })
}

/// `call_` and 24 hex digits, distinct for every call this process makes.
fn fresh_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The count keeps ids distinct; the time-mixed seed keeps them distinct
    // across restarts, so a client's history never holds two alike.
    format!(
        "call_{:016x}{:08x}",
        crate::serve::http::fresh_seed(),
        n as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Content and (name, arguments) of the calls, reading `pieces` one
    /// after the other; ids are checked for shape and dropped.
    fn read(mut reader: ToolCallReader, pieces: &[&str]) -> (String, Vec<(String, String)>) {
        let mut out: Vec<Piece> = pieces.iter().flat_map(|p| reader.push(p)).collect();
        out.extend(reader.finish());
        let mut content = String::new();
        let mut calls = Vec::new();
        for p in out {
            match p {
                Piece::Text(t) => content.push_str(&t),
                Piece::Call(c) => {
                    assert!(c.id.starts_with("call_") && c.id.len() == 29, "{}", c.id);
                    calls.push((c.name, c.arguments));
                }
            }
        }
        (content, calls)
    }

    fn names() -> Vec<String> {
        ["get_weather", "get_time", "f", "g"]
            .map(String::from)
            .to_vec()
    }

    fn reader() -> ToolCallReader {
        ToolCallReader::new(names())
    }

    /// `text` read whole, and read one character at a time: both the same.
    fn both(text: &str) -> (String, Vec<(String, String)>) {
        let whole = read(reader(), &[text]);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(read(reader(), &refs), whole, "{text:?}");
        whole
    }

    fn call(name: &str, args: &str) -> (String, String) {
        (name.to_string(), args.to_string())
    }

    #[test]
    fn a_reply_of_calls_has_no_content() {
        let qwen = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>";
        assert_eq!(
            both(qwen),
            (
                String::new(),
                vec![call("get_weather", r#"{"city":"Paris","unit":"celsius"}"#)]
            )
        );
        let two = format!(
            "{qwen}\n<tool_call>\n{{\"name\": \"get_time\", \"arguments\": {{}}}}\n</tool_call>"
        );
        let (content, calls) = both(&two);
        assert_eq!(content, "");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1], call("get_time", "{}"));
    }

    #[test]
    fn text_around_calls_is_content_without_the_layout_whitespace() {
        let text = "Let me check.\n<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}</tool_call>\n\nDone. ";
        assert_eq!(
            both(text),
            (
                "Let me check.Done. ".to_string(),
                vec![call("f", r#"{"x":1}"#)]
            )
        );
        // Arguments written as a JSON string (OpenAI's shape) are read too;
        // no arguments are {}.
        let text = "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": [1, 2]}\"}</tool_call><tool_call>{\"name\": \"g\"}</tool_call>";
        assert_eq!(
            both(text),
            (
                String::new(),
                vec![call("f", r#"{"x":[1,2]}"#), call("g", "{}")]
            )
        );
    }

    #[test]
    fn replies_without_calls_pass_through_unchanged() {
        for text in [
            "plain text ",
            "a < b and <tool> is not a call\n",
            "ends in a partial marker <tool_ca",
            "",
            "  \n",
        ] {
            assert_eq!(both(text), (text.to_string(), vec![]), "{text:?}");
        }
    }

    #[test]
    fn blocks_that_do_not_parse_stay_in_the_content_as_written() {
        for text in [
            "Try:\n<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": </tool_call> end",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
            "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>",
            "cut off:\n<tool_call>\n{\"name\": \"f\", \"argu",
        ] {
            assert_eq!(both(text), (text.to_string(), vec![]), "{text:?}");
        }
        // A good call next to a bad one: each read on its own.
        let text = "<tool_call>{\"name\": \"f\"}</tool_call>\n<tool_call>oops</tool_call>";
        assert_eq!(
            both(text),
            (
                "<tool_call>oops</tool_call>".to_string(),
                vec![call("f", "{}")]
            )
        );
    }

    #[test]
    fn text_is_held_from_a_possible_marker_until_it_is_decided() {
        let mut r = reader();
        assert_eq!(r.push("Hi <tool"), vec![Piece::Text("Hi".into())]);
        assert_eq!(r.push("_cal"), vec![]);
        assert_eq!(r.push("m!"), vec![Piece::Text(" <tool_calm!".into())]);
        assert_eq!(r.push(" <tool_call>{\"name\": \"f\"}"), vec![]);
        let out = r.push("</tool_call>");
        assert!(matches!(&out[..], [Piece::Call(c)] if c.name == "f" && c.arguments == "{}"));
        assert_eq!(r.finish(), vec![]);
    }

    #[test]
    fn a_forced_call_is_read_from_inside() {
        let r =
            ToolCallReader::inside_call(names(), "\n{\"name\": \"get_weather\", \"arguments\":");
        assert_eq!(
            read(r, &[" {\"city\": \"Oslo\"}}\n", "</tool_call>"]),
            (
                String::new(),
                vec![call("get_weather", r#"{"city":"Oslo"}"#)]
            )
        );
        // When the forced call goes wrong, the content shows all of it.
        let r = ToolCallReader::inside_call(names(), "\n{\"name\": \"f\", \"arguments\":");
        assert_eq!(
            read(r, &[" 42 and more"]),
            (
                "<tool_call>\n{\"name\": \"f\", \"arguments\": 42 and more".to_string(),
                vec![]
            )
        );
    }

    #[test]
    fn a_bare_call_object_at_the_start_or_after_a_call_is_a_call() {
        // What Qwen2.5-Coder-0.5B writes for a weather question.
        assert_eq!(
            both("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"),
            (
                String::new(),
                vec![call("get_weather", r#"{"city":"Paris"}"#)]
            )
        );
        assert_eq!(
            both("```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\n    \"city\": \"Paris\"\n  }\n}\n```"),
            (String::new(), vec![call("get_weather", r#"{"city":"Paris"}"#)])
        );
        // A fence the reply ends inside; braces and quotes inside strings.
        assert_eq!(
            both("```json\n{\"name\": \"f\", \"arguments\": {\"s\": \"}{\\\"\"}}\n"),
            (String::new(), vec![call("f", r#"{"s":"}{\""}"#)])
        );
        // After a call, another; then text that is no call.
        assert_eq!(
            both("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n{\"name\": \"get_time\", \"arguments\": {}}\n{\"temperature_c\": 21}"),
            (
                "{\"temperature_c\": 21}".to_string(),
                vec![call("get_weather", r#"{"city":"Paris"}"#), call("get_time", "{}")]
            )
        );
        // The reply ended inside a tagged call that is whole.
        assert_eq!(
            both("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}"),
            (String::new(), vec![call("f", r#"{"x":1}"#)])
        );
    }

    #[test]
    fn bare_objects_that_are_not_calls_stay_content() {
        for text in [
            "{\"name\": \"get_news\", \"arguments\": {}}",
            "{\"name\": \"f\"}",
            "{\"city\": \"Paris\", \"name\": \"f\", \"arguments\": {}}",
            "Here: {\"name\": \"f\", \"arguments\": {}}",
            "```python\nprint({\"name\": 1})\n```",
            "```json\n[1, 2]\n```",
            "{\"name\": \"f\", \"arguments\": {\"x\": ",
            "`code`",
        ] {
            assert_eq!(both(text), (text.to_string(), vec![]), "{text:?}");
        }
    }

    #[test]
    fn ids_differ() {
        let a = fresh_id();
        let b = fresh_id();
        assert_ne!(a, b);
    }
}
