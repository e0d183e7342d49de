//! `${...}` placeholders: `${sweep.VAR}` in node settings, `${ENV}` / `${ENV:-default}` in dataset roots.

use std::collections::BTreeMap;

use super::spanned::{Kind, Table, Value};

/// One `${...}` occurrence in a string: its byte range and the text between the braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder<'a> {
    pub range: std::ops::Range<usize>,
    pub body: &'a str,
}

/// All `${...}` placeholders in `s`, or a message if one is not closed.
pub fn placeholders(s: &str) -> Result<Vec<Placeholder<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(i) = s[rest..].find("${") {
        let start = rest + i;
        let Some(len) = s[start + 2..].find('}') else {
            return Err(format!("unclosed `${{` in \"{s}\""));
        };
        let end = start + 2 + len + 1;
        out.push(Placeholder {
            range: start..end,
            body: &s[start + 2..end - 1],
        });
        rest = end;
    }
    Ok(out)
}

/// The sweep variable a placeholder names (`${sweep.lr}` → `lr`).
pub fn sweep_var<'a>(p: &Placeholder<'a>) -> Option<&'a str> {
    p.body.strip_prefix("sweep.")
}

/// Render a sweep value the way it appears in names and interpolated strings: numbers and booleans
/// as JSON writes them, strings without quotes.
pub fn render(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replace sweep placeholders in a value. A string that is exactly one placeholder becomes the
/// typed sweep value (so `fraction = "${sweep.f}"` yields a float); otherwise the rendered value is
/// spliced into the string. Variables missing from `point` are left alone (validation has already
/// reported undefined ones).
pub fn substitute(value: &Value, point: &BTreeMap<String, serde_json::Value>) -> serde_json::Value {
    match &value.kind {
        Kind::String(s) => substitute_str(s, point),
        Kind::Array(items) => {
            serde_json::Value::Array(items.iter().map(|v| substitute(v, point)).collect())
        }
        Kind::Table(t) => substitute_table(t, point),
        _ => value.to_json(),
    }
}

pub fn substitute_table(
    t: &Table,
    point: &BTreeMap<String, serde_json::Value>,
) -> serde_json::Value {
    serde_json::Value::Object(
        t.entries
            .iter()
            .map(|(k, v)| (k.name.clone(), substitute(v, point)))
            .collect(),
    )
}

fn substitute_str(s: &str, point: &BTreeMap<String, serde_json::Value>) -> serde_json::Value {
    let Ok(found) = placeholders(s) else {
        return serde_json::Value::String(s.to_string());
    };
    let value_of = |p: &Placeholder| sweep_var(p).and_then(|var| point.get(var));
    if let [only] = found.as_slice() {
        if only.range == (0..s.len()) {
            if let Some(v) = value_of(only) {
                return v.clone();
            }
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for p in &found {
        out.push_str(&s[last..p.range.start]);
        match value_of(p) {
            Some(v) => out.push_str(&render(v)),
            None => out.push_str(&s[p.range.clone()]),
        }
        last = p.range.end;
    }
    out.push_str(&s[last..]);
    serde_json::Value::String(out)
}

/// Expand `${VAR}` and `${VAR:-default}` from the environment (through `lookup`, for tests).
/// Errors name the variable and say how to fix it.
pub fn expand_env(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for p in placeholders(s)? {
        out.push_str(&s[last..p.range.start]);
        let (name, default) = match p.body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (p.body, None),
        };
        if name.starts_with("sweep.") {
            return Err(format!(
                "`${{{}}}`: sweep variables cannot be used in a dataset root",
                p.body
            ));
        }
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "`${{{}}}` is not a valid environment variable reference",
                p.body
            ));
        }
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable `{name}` is not set")),
        }
        last = p.range.end;
    }
    out.push_str(&s[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::error::Origin;
    use crate::pipeline::spanned::parse_value;
    use serde_json::json;

    fn point() -> BTreeMap<String, serde_json::Value> {
        [
            ("f".to_string(), json!(0.01)),
            ("name".to_string(), json!("big")),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn whole_placeholder_keeps_type_partial_interpolates() {
        let v = parse_value(
            r#"{ a = "${sweep.f}", b = "run-${sweep.name}-${sweep.f}", c = ["${sweep.f}"] }"#,
            Origin::Set(0),
        )
        .unwrap();
        assert_eq!(
            substitute(&v, &point()),
            json!({"a": 0.01, "b": "run-big-0.01", "c": [0.01]})
        );
    }

    #[test]
    fn env_expansion_and_defaults() {
        let env = |k: &str| (k == "DATA").then(|| "/d".to_string());
        assert_eq!(expand_env("${DATA}/cifar", &env).unwrap(), "/d/cifar");
        assert_eq!(expand_env("${NOPE:-x}/y", &env).unwrap(), "x/y");
        assert!(expand_env("${NOPE}/y", &env)
            .unwrap_err()
            .contains("`NOPE` is not set"));
        assert!(expand_env("${DATA", &env).unwrap_err().contains("unclosed"));
    }
}
