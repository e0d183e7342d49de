//! An owned TOML tree that remembers where every key and value came from.
//!
//! `toml::de::DeTable` borrows the source and sorts keys; this copy owns its strings, keeps keys in
//! the order they were written (sweep combinations follow declaration order) and tags spans with
//! their origin, so values spliced in by `--set` point at the argument that set them.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{Origin, Problem, Span};

#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub span: Span,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Kept as written; stages receive it as a string.
    Datetime(String),
    Array(Vec<Value>),
    Table(Table),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

/// Entries in the order they appear in the source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub entries: Vec<(Key, Value)>,
}

impl Table {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.entry(name).map(|(_, v)| v)
    }

    pub fn entry(&self, name: &str) -> Option<(&Key, &Value)> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, v)| (k, v))
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    pub fn remove(&mut self, name: &str) -> Option<(Key, Value)> {
        let i = self.entries.iter().position(|(k, _)| k.name == name)?;
        Some(self.entries.remove(i))
    }

    /// Replace the value under `key.name`, or append the entry.
    pub fn set(&mut self, key: Key, value: Value) {
        match self.entries.iter_mut().find(|(k, _)| k.name == key.name) {
            Some(slot) => *slot = (key, value),
            None => self.entries.push((key, value)),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.name.as_str())
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.entries
                .iter()
                .map(|(k, v)| (k.name.clone(), v.to_json()))
                .collect(),
        )
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&Table> {
        match &self.kind {
            Kind::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The TOML name of this value's type, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::String(_) => "string",
            Kind::Integer(_) => "integer",
            Kind::Float(_) => "float",
            Kind::Boolean(_) => "boolean",
            Kind::Datetime(_) => "datetime",
            Kind::Array(_) => "array",
            Kind::Table(_) => "table",
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.kind {
            Kind::String(s) | Kind::Datetime(s) => J::String(s.clone()),
            Kind::Integer(i) => J::from(*i),
            // Non-finite floats are rejected while parsing, so this never yields null.
            Kind::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Kind::Boolean(b) => J::Bool(*b),
            Kind::Array(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Kind::Table(t) => t.to_json(),
        }
    }

    /// Visit every string in this value (depth first), with its span and dotted path suffix.
    pub fn visit_strings<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, &'a str, &'a Span)) {
        match &self.kind {
            Kind::String(s) => f(path, s, &self.span),
            Kind::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    item.visit_strings(&format!("{path}[{i}]"), f);
                }
            }
            Kind::Table(t) => {
                for (k, v) in &t.entries {
                    v.visit_strings(&join(path, &k.name), f);
                }
            }
            _ => {}
        }
    }
}

/// `a.b` from `a` and `b`, or just `b` when `a` is empty.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Parse a whole document. The root table's span covers nothing in particular (0..0).
pub fn parse_document(text: &str) -> Result<Table, Problem> {
    let root = DeTable::parse(text).map_err(|e| syntax_problem(&e, Origin::File, text))?;
    let mut problems = None;
    let table = convert_table(root.into_inner(), Origin::File, &mut problems);
    match problems {
        Some(p) => Err(p),
        None => Ok(table),
    }
}

/// Parse one TOML value (the right-hand side of `--set`).
pub fn parse_value(text: &str, origin: Origin) -> Result<Value, Problem> {
    let value = DeValue::parse(text).map_err(|e| syntax_problem(&e, origin, text))?;
    let mut problems = None;
    let value = convert(value, origin, &mut problems);
    match problems {
        Some(p) => Err(p),
        None => Ok(value),
    }
}

fn syntax_problem(e: &toml::de::Error, origin: Origin, text: &str) -> Problem {
    let range = e.span().unwrap_or(text.len()..text.len());
    Problem::at(
        &Span { origin, range },
        "",
        format!("TOML syntax: {}", e.message().trim_end()),
    )
    .help("see https://toml.io for the syntax")
}

fn convert_table(table: DeTable<'_>, origin: Origin, problem: &mut Option<Problem>) -> Table {
    let mut entries: Vec<(Key, Value)> = table
        .into_iter()
        .map(|(k, v)| {
            let key = Key {
                name: k.get_ref().to_string(),
                span: Span {
                    origin,
                    range: k.span(),
                },
            };
            (key, convert(v, origin, problem))
        })
        .collect();
    entries.sort_by_key(|(k, _)| k.span.range.start);
    Table { entries }
}

fn convert(value: Spanned<DeValue<'_>>, origin: Origin, problem: &mut Option<Problem>) -> Value {
    let span = Span {
        origin,
        range: value.span(),
    };
    let mut fail = |message: String| {
        problem.get_or_insert_with(|| Problem::at(&span, "", message));
    };
    let kind = match value.into_inner() {
        DeValue::String(s) => Kind::String(s.into_owned()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Kind::Integer(n),
            Err(_) => {
                fail(format!("integer `{i}` does not fit in 64 bits"));
                Kind::Integer(0)
            }
        },
        DeValue::Float(f) => match f.as_str().parse::<f64>() {
            Ok(x) if x.is_finite() => Kind::Float(x),
            _ => {
                fail(format!(
                    "float `{f}` is not a finite number; parameters must be finite"
                ));
                Kind::Float(0.0)
            }
        },
        DeValue::Boolean(b) => Kind::Boolean(b),
        DeValue::Datetime(d) => Kind::Datetime(d.to_string()),
        DeValue::Array(items) => Kind::Array(
            items
                .iter()
                .cloned()
                .map(|v| convert(v, origin, problem))
                .collect(),
        ),
        DeValue::Table(t) => Kind::Table(convert_table(t, origin, problem)),
    };
    Value { span, kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_declaration_order_and_spans() {
        let text = "[sweep]\nz = [1, 2]\na = [0.5]\n";
        let root = parse_document(text).unwrap();
        let sweep = root.get("sweep").unwrap().as_table().unwrap();
        assert_eq!(sweep.keys().collect::<Vec<_>>(), ["z", "a"]);
        let (k, v) = sweep.entry("a").unwrap();
        assert_eq!(&text[k.span.range.clone()], "a");
        assert_eq!(&text[v.span.range.clone()], "[0.5]");
    }

    #[test]
    fn converts_to_json() {
        let v = parse_value(
            "{ depth = 18, width = 0.25, tags = [\"x\"] }",
            Origin::Set(0),
        )
        .unwrap();
        assert_eq!(
            v.to_json(),
            serde_json::json!({"depth": 18, "width": 0.25, "tags": ["x"]})
        );
    }

    #[test]
    fn syntax_errors_carry_a_span() {
        let p = parse_document("a = \n").unwrap_err();
        assert!(p.span.is_some());
        assert!(p.message.starts_with("TOML syntax"));
    }
}
