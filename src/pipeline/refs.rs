//! Reference keys (`from`, `labels`, `teacher`, `models`, `data`): each names a dataset or a node
//! of the kinds its [`RefSpec`] allows.

use semiflow_stages::api::{RefSpec, RefTarget};

use super::error::{suggest, Problem, Problems, Span};
use super::nodes::Known;
use super::schema::{type_problem, RefUse, Target};
use super::spanned::{join, Kind, Value};

/// What one reference of `r` names: "a dataset", "a node of kind finetune or distill".
fn describe_one(r: &RefSpec) -> String {
    match r.target {
        RefTarget::Dataset => "a dataset".to_string(),
        RefTarget::Node(kinds) => format!("a node of kind {}", kinds.join(" or ")),
    }
}

/// What the key `r` holds: [`describe_one`], or "a list of nodes of kind ..." for lists.
pub(super) fn describe_target(r: &RefSpec) -> String {
    match (r.many, r.target) {
        (false, _) => describe_one(r),
        (true, RefTarget::Dataset) => "a list of datasets".to_string(),
        (true, RefTarget::Node(kinds)) => format!("a list of nodes of kind {}", kinds.join(" or ")),
    }
}

pub(super) fn read_ref(
    node: &str,
    path: &str,
    r: &RefSpec,
    v: &Value,
    known: &Known<'_, '_>,
    problems: &mut Problems,
) -> RefUse {
    let path = join(path, r.key);
    let items: Vec<&Value> = match (&v.kind, r.many) {
        (Kind::String(_), _) => vec![v],
        (Kind::Array(items), true) => items.iter().collect(),
        _ => {
            let want = if r.many {
                "a list of names"
            } else {
                "a name (string)"
            };
            problems.push(type_problem(v, &path, want).help(format!(
                "`{}` names {}",
                r.key,
                describe_target(r)
            )));
            return RefUse {
                key: r.key,
                role: r.role,
                targets: Vec::new(),
            };
        }
    };
    if items.is_empty() && r.required {
        problems.push(
            Problem::at(&v.span, path.clone(), "the list is empty")
                .help(format!("name {}", describe_target(r))),
        );
    }
    let mut targets = Vec::new();
    for item in items {
        let Some(name) = item.as_str() else {
            problems.push(type_problem(item, &path, "a name (string)"));
            continue;
        };
        if name.contains("${") {
            problems.push(
                Problem::at(
                    &item.span,
                    path.clone(),
                    "references cannot use placeholders",
                )
                .help(
                    "name the node; a node that depends on a swept node is expanded automatically",
                ),
            );
            continue;
        }
        if let Some(t) = resolve_target(node, &path, r, name, &item.span, known, problems) {
            targets.push((t, item.span.clone()));
        }
    }
    RefUse {
        key: r.key,
        role: r.role,
        targets,
    }
}

fn resolve_target(
    node: &str,
    path: &str,
    r: &RefSpec,
    name: &str,
    span: &Span,
    known: &Known<'_, '_>,
    problems: &mut Problems,
) -> Option<Target> {
    let dataset_names = known.declared_datasets;
    match r.target {
        RefTarget::Dataset => {
            if let Some(i) = known.datasets.iter().position(|d| d.name == name) {
                return Some(Target::Dataset(i));
            }
            if dataset_names.contains(&name) {
                // Declared but invalid: reported where it is declared.
                return None;
            }
            let msg = if known.kinds.contains_key(name) {
                format!("`{name}` is a node, but `{}` must name a dataset", r.key)
            } else {
                format!(
                    "node `{node}` references undefined dataset `{name}` in key `{}`",
                    r.key
                )
            };
            problems.push(Problem::at(span, path, msg).help(suggest(
                name,
                "declared datasets",
                dataset_names,
            )));
            None
        }
        RefTarget::Node(allowed) => {
            let Some(kind) = known.kinds.get(name) else {
                let msg = if dataset_names.contains(&name) {
                    format!(
                        "`{name}` is a dataset, but `{}` must name {}",
                        r.key,
                        describe_one(r)
                    )
                } else {
                    format!(
                        "node `{node}` references undefined node `{name}` in key `{}`",
                        r.key
                    )
                };
                let candidates: Vec<&str> = known
                    .node_names
                    .iter()
                    .copied()
                    .filter(|n| known.kinds[n].is_some_and(|k| allowed.contains(&k.name)))
                    .collect();
                problems.push(Problem::at(span, path, msg).help(suggest(
                    name,
                    &format!("nodes of kind {}", allowed.join(" or ")),
                    &candidates,
                )));
                return None;
            };
            // A target whose own kind is unknown has been reported already.
            let kind = (*kind)?;
            if !allowed.contains(&kind.name) {
                problems.push(
                    Problem::at(
                        span,
                        path,
                        format!(
                            "`{name}` is a {} node, but `{}` must name a node of kind {}",
                            kind.name,
                            r.key,
                            allowed.join(" or ")
                        ),
                    )
                    .help(format!(
                        "point `{}` at a {} node",
                        r.key,
                        allowed.join(" or ")
                    )),
                );
                return None;
            }
            Some(Target::Node(name.to_string()))
        }
    }
}
