//! JSON written the way Python's `json.dumps` writes it, for chat templates'
//! `tojson` filter.
//!
//! Chat templates are written for Hugging Face `transformers`, whose
//! `tojson` is `json.dumps(x, ensure_ascii=False, indent=None,
//! separators=None, sort_keys=False)`: `{"city": "Paris"}`, with a space
//! after `:` and `,`, and non-ASCII kept. minijinja's own `tojson` writes
//! compact, HTML-escaped JSON (`{"city":"Paris"}`, `'` as `\u0027`), so the
//! tool definitions and calls in a prompt would differ from the text the
//! model was trained on (and that vLLM and llama.cpp's server render).

use minijinja::value::{Kwargs, Value};
use minijinja::{Error, ErrorKind};
use serde_json::Value as Json;

/// The `tojson` filter with `transformers`' arguments: `ensure_ascii`
/// (default false), `indent` (also positional), `separators` (a pair of
/// strings) and `sort_keys`.
pub fn tojson_filter(
    value: &Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    let options = Options {
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        indent,
        separators: match kwargs.get::<Option<Vec<String>>>("separators")? {
            None => None,
            Some(pair) => match <[String; 2]>::try_from(pair) {
                Ok([item, key]) => Some((item, key)),
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings (item, key)",
                    ))
                }
            },
        },
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value).map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(e)
    })?;
    Ok(dumps(&json, &options))
}

/// `json.dumps`'s options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Escape every non-ASCII character as `\uXXXX`.
    pub ensure_ascii: bool,
    /// Pretty-print with this many spaces per level.
    pub indent: Option<usize>,
    /// Item and key separators; Python's default is `(", ", ": ")`, or
    /// `(",", ": ")` when indenting.
    pub separators: Option<(String, String)>,
    /// Write object keys sorted.
    pub sort_keys: bool,
}

/// `value` as `json.dumps(value, **options)` writes it.
pub fn dumps(value: &Json, options: &Options) -> String {
    let (item, key) = match &options.separators {
        Some((i, k)) => (i.as_str(), k.as_str()),
        None if options.indent.is_some() => (",", ": "),
        None => (", ", ": "),
    };
    let mut out = String::new();
    write(value, options, item, key, 0, &mut out);
    out
}

fn write(v: &Json, o: &Options, item: &str, key: &str, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = o.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(&n.to_string()),
        Json::String(s) => write_str(s, o.ensure_ascii, out),
        Json::Array(a) if a.is_empty() => out.push_str("[]"),
        Json::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item);
                }
                newline(out, level + 1);
                write(x, o, item, key, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Json::Object(m) if m.is_empty() => out.push_str("{}"),
        Json::Object(m) => {
            let mut entries: Vec<(&String, &Json)> = m.iter().collect();
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item);
                }
                newline(out, level + 1);
                write_str(k, o.ensure_ascii, out);
                out.push_str(key);
                write(x, o, item, key, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

/// A string literal escaped as Python's `json` module escapes it.
fn write_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_filter_takes_transformers_arguments() {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson_filter);
        let render = |src: &str| {
            env.render_str(src, minijinja::context! {x => json!({"b": "é", "a": [1]})})
                .unwrap()
        };
        assert_eq!(render("{{ x | tojson }}"), r#"{"b": "é", "a": [1]}"#);
        assert_eq!(
            render("{{ x | tojson(ensure_ascii=true, sort_keys=true) }}"),
            r#"{"a": [1], "b": "\u00e9"}"#
        );
        assert_eq!(
            render("{{ x | tojson(1) }}"),
            "{\n \"b\": \"é\",\n \"a\": [\n  1\n ]\n}"
        );
        assert_eq!(
            render("{{ x | tojson(separators=[',', ':']) }}"),
            r#"{"b":"é","a":[1]}"#
        );
        assert!(env.render_str("{{ 1 | tojson(colour=1) }}", ()).is_err());
    }

    // Expected strings are what Python 3.12's json.dumps prints for the
    // same values and arguments.
    #[test]
    fn writes_what_python_writes() {
        let v = json!({"name": "get_weather", "arguments": {"city": "Zürich", "n": [1, 2.5, true, null]},
                       "quote": "it's \"x\"\n\u{1}", "empty": {}, "none": []});
        assert_eq!(
            dumps(&v, &Options::default()),
            r#"{"name": "get_weather", "arguments": {"city": "Zürich", "n": [1, 2.5, true, null]}, "quote": "it's \"x\"\n\u0001", "empty": {}, "none": []}"#
        );
        let ascii = Options {
            ensure_ascii: true,
            ..Default::default()
        };
        assert_eq!(
            dumps(&json!("Zürich 🌧"), &ascii),
            r#""Z\u00fcrich \ud83c\udf27""#
        );
        let pretty = Options {
            indent: Some(2),
            sort_keys: true,
            ..Default::default()
        };
        assert_eq!(
            dumps(&json!({"b": [1, {}], "a": "x"}), &pretty),
            "{\n  \"a\": \"x\",\n  \"b\": [\n    1,\n    {}\n  ]\n}"
        );
    }
}
