//! Map a stage kind's [`ParamError`] (a dotted path inside the table it was given, and serde's
//! message) back to the key or value in the source that caused it.

use semiflow_stages::api::ParamError;

use super::error::{closest, list, Problem, Span};
use super::spanned::{join, Kind, Table, Value};

/// One step of a serde path: `model`, `[2]`.
#[derive(Debug, PartialEq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(close) = rest.find(']') {
            if let Ok(i) = rest[1..close].parse() {
                out.push(Segment::Index(i));
            }
            rest = &rest[close + 1..];
        }
    }
    out
}

/// The names between backticks in serde's message (`unknown field `x`, expected one of `a`, `b``).
fn backticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// Where in `table` (the node's settings minus engine keys and references) the error points.
/// `table_path` is how the table is written in messages (`nodes.pretrain`); `table_span` is its
/// header. `other_keys` are keys valid at the top level that the kind does not see (engine keys,
/// references), offered as suggestions too.
pub fn problem(
    err: &ParamError,
    table: &Table,
    table_span: &Span,
    table_path: &str,
    other_keys: &[&str],
) -> Problem {
    // Walk as far down the path as the source goes.
    let mut here: Option<&Value> = None;
    let mut key_path = table_path.to_string();
    let mut reached = 0;
    let mut segs = segments(&err.path);
    let names = backticked(&err.message);
    // serde_path_to_error puts an unknown field itself at the end of the path.
    let unknown_field = err.message.starts_with("unknown field");
    if unknown_field
        && names
            .first()
            .is_some_and(|n| segs.last() == Some(&Segment::Key(n)))
    {
        segs.pop();
    }
    for seg in &segs {
        let next = match (seg, here.map(|v| &v.kind)) {
            (Segment::Key(k), None) => table.get(k),
            (Segment::Key(k), Some(Kind::Table(t))) => t.get(k),
            (Segment::Index(i), Some(Kind::Array(items))) => items.get(*i),
            _ => None,
        };
        let Some(next) = next else { break };
        key_path = match seg {
            Segment::Key(k) => join(&key_path, k),
            Segment::Index(i) => format!("{key_path}[{i}]"),
        };
        here = Some(next);
        reached += 1;
    }
    let inner_table = match here.map(|v| &v.kind) {
        None => Some(table),
        Some(Kind::Table(t)) => Some(t),
        _ => None,
    };
    let span = here.map_or(table_span, |v| &v.span);

    if unknown_field {
        if let (Some(unknown), Some(t)) = (names.first(), inner_table) {
            let mut expected: Vec<&str> = names[1..].to_vec();
            if here.is_none() {
                expected.extend_from_slice(other_keys);
            }
            let key_span = t.entry(unknown).map_or(span, |(k, _)| &k.span);
            let help = match closest(unknown, expected.iter().copied()) {
                Some(c) => format!("did you mean `{c}`? (valid keys: {})", list(&expected)),
                None => format!("valid keys: {}", list(&expected)),
            };
            return Problem::at(
                key_span,
                join(&key_path, unknown),
                format!("unknown key `{unknown}` in [{key_path}]"),
            )
            .help(help);
        }
    }
    if err.message.starts_with("missing field") {
        if let Some(missing) = names.first() {
            return Problem::at(
                span,
                key_path.clone(),
                format!("missing required key `{missing}`"),
            )
            .help(format!("add `{missing} = ...` to [{key_path}]"));
        }
    }
    // A path the source does not contain (a default the kind filled in was wrong?) still names it.
    let full = if reached < segs.len() {
        join(table_path, &err.path)
    } else {
        key_path
    };
    Problem::at(span, full, err.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::spanned::parse_document;

    #[test]
    fn splits_serde_paths() {
        assert_eq!(
            segments("model.layers[2].width"),
            [
                Segment::Key("model"),
                Segment::Key("layers"),
                Segment::Index(2),
                Segment::Key("width")
            ]
        );
        assert!(segments("").is_empty());
    }

    fn table(text: &str) -> (String, Table) {
        (text.to_string(), parse_document(text).unwrap())
    }

    #[test]
    fn unknown_field_points_at_the_key_with_a_suggestion() {
        let (text, t) = table("epochs = 2\nmodel = { depht = 3 }\n");
        let err = ParamError {
            path: "model".into(),
            message: "unknown field `depht`, expected `depth` or `width`".into(),
        };
        let p = problem(&err, &t, &Span::file(0..0), "nodes.pre", &["kind"]);
        assert_eq!(&text[p.span.unwrap().range], "depht");
        assert_eq!(p.key, "nodes.pre.model.depht");
        assert!(p.help.unwrap().starts_with("did you mean `depth`?"));
    }

    #[test]
    fn type_error_points_at_the_value() {
        let (text, t) = table("epochs = \"ten\"\n");
        let err = ParamError {
            path: "epochs".into(),
            message: "invalid type: string \"ten\", expected usize".into(),
        };
        let p = problem(&err, &t, &Span::file(0..0), "nodes.pre", &[]);
        assert_eq!(&text[p.span.unwrap().range], "\"ten\"");
        assert_eq!(p.key, "nodes.pre.epochs");
    }
}
