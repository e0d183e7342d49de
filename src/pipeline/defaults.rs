//! `[defaults.KIND]`: settings shared by every node of one stage kind.
//!
//! ```toml
//! [defaults.finetune]
//! optimizer = "sgd"
//! lr = 0.2
//! data = "cifar10"
//!
//! [nodes.finetune_small]
//! kind = "finetune"
//! lr = 0.1            # a node's own key wins (whole values: a table is not merged key by key)
//! ```
//!
//! The defaults are copied into each node of that kind before validation, keeping the spans of
//! where they were written: a bad default is reported at its line in `[defaults.KIND]`, and the
//! node's resolved parameters (hence its cache key) are the same as if the key were written in
//! the node. Any node key may have a default (parameters, references, `seed`, placeholders)
//! except `kind`.

use super::error::{suggest, Problem, Problems};
use super::schema::expect_table;
use super::spanned::{join, Kind, Table, Value};
use super::{KindLookup, DATASET_KIND};

/// Take `[defaults]` out of `root` and copy each `[defaults.KIND]` entry into every `[nodes.*]`
/// table of that kind that does not set the key itself.
pub fn apply(root: &mut Table, kinds: &dyn KindLookup, problems: &mut Problems) {
    let Some((_, value)) = root.remove("defaults") else {
        return;
    };
    let Some(defaults) = expect_table(&value, "defaults", problems) else {
        return;
    };
    let names = kinds.names();
    let mut by_kind: Vec<(&str, &Table)> = Vec::new();
    for (key, value) in &defaults.entries {
        let path = join("defaults", &key.name);
        if key.name == DATASET_KIND || kinds.kind(&key.name).is_none() {
            problems.push(
                Problem::at(
                    &key.span,
                    path,
                    format!("[defaults.{}] names no stage kind", key.name),
                )
                .help(suggest(&key.name, "known kinds", &names)),
            );
            continue;
        }
        let Some(table) = expect_table(value, &path, problems) else {
            continue;
        };
        if let Some((k, _)) = table.entry("kind") {
            problems.push(
                Problem::at(
                    &k.span,
                    join(&path, "kind"),
                    "`kind` cannot have a default: it is what selects the defaults",
                )
                .help(format!(
                    "remove it; write `kind = \"{}\"` in each node",
                    key.name
                )),
            );
            continue;
        }
        by_kind.push((&key.name, table));
    }

    let Some(Value {
        kind: Kind::Table(nodes),
        ..
    }) = root.get_mut("nodes")
    else {
        // No `[nodes]` (or not a table): schema validation reports it.
        return;
    };
    for (kind, table) in by_kind {
        let mut used = false;
        for (_, node) in &mut nodes.entries {
            let Kind::Table(node) = &mut node.kind else {
                continue;
            };
            if node.get("kind").and_then(Value::as_str) != Some(kind) {
                continue;
            }
            used = true;
            for (key, value) in &table.entries {
                if node.get(&key.name).is_none() {
                    node.entries.push((key.clone(), value.clone()));
                }
            }
        }
        if !used {
            let (key, _) = defaults.entry(kind).expect("a kind taken from the table");
            problems.push(
                Problem::at(
                    &key.span,
                    join("defaults", kind),
                    format!("[defaults.{kind}] applies to no node: no node has kind = \"{kind}\""),
                )
                .help("remove the section, or add a node of that kind"),
            );
        }
    }
}
