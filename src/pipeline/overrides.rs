//! `--set PATH=VALUE`: edit the parsed file before validation, so an overridden value is checked
//! exactly like a written one and its errors point at the argument.
//!
//! `PATH` is `node.key[.sub...]` (a `[nodes.*]` entry), or starts with `pipeline.`, `datasets.`,
//! `sweep.`, `defaults.` or `nodes.` to address those tables. `VALUE` is a TOML value (`0.1`, `[1, 2]`,
//! `{ depth = 50 }`, `"text"`); a bare word such as `sgd` is taken as a string.

use super::error::{suggest, Origin, Problem, Span};
use super::spanned::{parse_value, Key, Kind, Table, Value};

const ROOT_TABLES: &[&str] = &[
    "pipeline", "datasets", "sweep", "defaults", "nodes", "executor",
];

/// Apply every override in order (a later one wins). Stops at the first bad argument.
pub fn apply(root: &mut Table, overrides: &[String]) -> Result<(), Problem> {
    for (i, arg) in overrides.iter().enumerate() {
        apply_one(root, arg, Origin::Set(i))?;
    }
    Ok(())
}

fn apply_one(root: &mut Table, arg: &str, origin: Origin) -> Result<(), Problem> {
    let span = |range: std::ops::Range<usize>| Span { origin, range };
    let Some(eq) = arg.find('=') else {
        return Err(
            Problem::at(&span(0..arg.len()), "", format!("`--set {arg}` has no `=`"))
                .help("write `--set node.key=value`, e.g. `--set pretrain.epochs=30`"),
        );
    };
    let path_text = arg[..eq].trim_end();
    let mut keys = Vec::new();
    let mut offset = 0;
    for part in path_text.split('.') {
        let start = offset + (part.len() - part.trim_start().len());
        let name = part.trim();
        if name.is_empty() {
            return Err(
                Problem::at(&span(0..eq), "", format!("`{path_text}` has an empty key"))
                    .help("write `--set node.key=value` with dot-separated keys"),
            );
        }
        keys.push(Key {
            name: name.to_string(),
            span: span(start..start + name.len()),
        });
        offset += part.len() + 1;
    }
    if !ROOT_TABLES.contains(&keys[0].name.as_str()) {
        keys.insert(
            0,
            Key {
                name: "nodes".to_string(),
                span: keys[0].span.clone(),
            },
        );
    }
    let top_level_key =
        keys[0].name == "pipeline" || keys[0].name == "sweep" || keys[0].name == "executor";
    if keys.len() < 2 || (keys.len() < 3 && !top_level_key) {
        return Err(Problem::at(
            &span(0..eq),
            "",
            format!("`{path_text}` does not name a setting"),
        )
        .help("write `--set node.key=value`, e.g. `--set pretrain.epochs=30`"));
    }
    let value = parse_override_value(&arg[eq + 1..], eq + 1, origin)?;

    // `nodes.X` and `datasets.X` must already exist: an override cannot invent a node.
    if keys[0].name == "nodes" || keys[0].name == "datasets" {
        let names: Vec<&str> = root
            .get(&keys[0].name)
            .and_then(Value::as_table)
            .map_or_else(Vec::new, |t| t.keys().collect());
        let wanted = &keys[1];
        if !names.contains(&wanted.name.as_str()) {
            let what = if keys[0].name == "nodes" {
                "node"
            } else {
                "dataset"
            };
            return Err(Problem::at(
                &wanted.span,
                "",
                format!("`--set {arg}` names unknown {what} `{}`", wanted.name),
            )
            .help(suggest(
                &wanted.name,
                &format!("{what}s in the pipeline"),
                &names,
            )));
        }
    }

    let (last, parents) = keys.split_last().expect("at least two keys");
    let mut table = root;
    let mut walked = String::new();
    for key in parents {
        walked = if walked.is_empty() {
            key.name.clone()
        } else {
            format!("{walked}.{}", key.name)
        };
        if table.get(&key.name).is_none() {
            table.set(
                key.clone(),
                Value {
                    span: key.span.clone(),
                    kind: Kind::Table(Table::default()),
                },
            );
        }
        let slot = table.get_mut(&key.name).expect("just ensured");
        let found = match slot.type_name() {
            t @ ("integer" | "array") => format!("an {t}"),
            t => format!("a {t}"),
        };
        match &mut slot.kind {
            Kind::Table(t) => table = t,
            _ => {
                return Err(Problem::at(
                    &key.span,
                    walked.clone(),
                    format!("`{walked}` is {found}, so it has no key `{}`", last.name),
                )
                .help(format!("set the whole value instead: `--set {walked}=...`")));
            }
        }
    }
    table.set(last.clone(), value);
    Ok(())
}

fn parse_override_value(text: &str, offset: usize, origin: Origin) -> Result<Value, Problem> {
    let bare_word = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || "_-./:".contains(c));
    match parse_value(text, origin) {
        Ok(mut v) => {
            shift(&mut v, offset);
            Ok(v)
        }
        Err(_) if bare_word => Ok(Value {
            span: Span {
                origin,
                range: offset..offset + text.len(),
            },
            kind: Kind::String(text.to_string()),
        }),
        Err(mut p) => {
            if let Some(s) = &mut p.span {
                s.range = s.range.start + offset..s.range.end + offset;
            }
            Err(p.help("the value is TOML: numbers `0.1`, lists `[1, 2]`, tables `{ depth = 50 }`, strings `'\"text\"'`"))
        }
    }
}

fn shift(v: &mut Value, offset: usize) {
    v.span.range = v.span.range.start + offset..v.span.range.end + offset;
    match &mut v.kind {
        Kind::Array(items) => items.iter_mut().for_each(|i| shift(i, offset)),
        Kind::Table(t) => {
            for (k, v) in &mut t.entries {
                k.span.range = k.span.range.start + offset..k.span.range.end + offset;
                shift(v, offset);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::spanned::parse_document;

    fn doc() -> Table {
        parse_document(
            "[pipeline]\nname = \"p\"\n[nodes.pre]\nkind = \"pretrain\"\nmodel = { depth = 18 }\n",
        )
        .unwrap()
    }

    fn node(root: &Table) -> &Table {
        root.get("nodes")
            .unwrap()
            .as_table()
            .unwrap()
            .get("pre")
            .unwrap()
            .as_table()
            .unwrap()
    }

    #[test]
    fn sets_nested_and_new_keys() {
        let mut root = doc();
        apply(
            &mut root,
            &[
                "pre.model.depth=50".into(),
                "pre.optimizer=lars".into(),
                "pipeline.seed=3".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            node(&root).get("model").unwrap().to_json(),
            serde_json::json!({"depth": 50})
        );
        assert_eq!(
            node(&root).get("optimizer").unwrap().to_json(),
            serde_json::json!("lars")
        );
        let depth = node(&root)
            .get("model")
            .unwrap()
            .as_table()
            .unwrap()
            .get("depth")
            .unwrap();
        assert_eq!(
            depth.span,
            Span {
                origin: Origin::Set(0),
                range: 16..18
            }
        );
    }

    #[test]
    fn rejects_unknown_nodes_and_bad_syntax() {
        let err = apply(&mut doc(), &["pree.epochs=3".into()]).unwrap_err();
        assert!(
            err.message.contains("unknown node `pree`"),
            "{}",
            err.message
        );
        assert!(err.help.unwrap().contains("did you mean `pre`?"));
        let err = apply(&mut doc(), &["pre.epochs".into()]).unwrap_err();
        assert!(err.message.contains("has no `=`"));
        let err = apply(&mut doc(), &["pre.model.depth.x=1".into()]).unwrap_err();
        assert!(
            err.message
                .contains("`nodes.pre.model.depth` is an integer"),
            "{}",
            err.message
        );
    }
}
