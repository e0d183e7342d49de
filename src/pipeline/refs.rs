//! Reference keys (`from`, `labels`, `teacher`, `models`, `data`): each names a dataset or a node
//! of the kinds its [`RefSpec`] allows.

use std::path::PathBuf;

use semiflow_stages::api::{RefSpec, RefTarget};
use semiflow_stages::kinds::import::KIND as IMPORT_KIND;

use super::error::{suggest, Problem, Problems, Span};
use super::nodes::Known;
use super::schema::{expand_path, type_problem, FileDecl, RefUse, Target};
use super::spanned::{join, Kind, Table, Value};

/// How a model file is given where a reference takes one.
const FILE_FORM: &str = "{ file = \"model.safetensors\", format = \"torchvision\" }";

/// Whether `r` may be given as a model file (its targets include the `import` kind).
fn takes_file(r: &RefSpec) -> bool {
    matches!(r.target, RefTarget::Node(kinds) if kinds.contains(&IMPORT_KIND)) && !r.many
}

/// What one reference of `r` names: "a dataset", "a node of kind finetune or distill",
/// "a model file { file = …, format = … }".
fn describe_one(r: &RefSpec) -> String {
    match r.target {
        RefTarget::Dataset => "a dataset".to_string(),
        RefTarget::Node(kinds) => {
            let nodes: Vec<&str> = kinds
                .iter()
                .copied()
                .filter(|k| *k != IMPORT_KIND)
                .collect();
            let file = format!("a model file {FILE_FORM}");
            match (nodes.is_empty(), takes_file(r)) {
                (true, _) => file,
                (false, true) => format!("a node of kind {} or {file}", nodes.join(" or ")),
                (false, false) => format!("a node of kind {}", nodes.join(" or ")),
            }
        }
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
        (Kind::String(_), _) if takes_file(r) && describe_one(r).starts_with("a model file") => {
            problems.push(type_problem(v, &path, "a table").help(format!(
                "`{}` takes a model file: `{} = {FILE_FORM}` (relative to the pipeline file)",
                r.key, r.key
            )));
            return RefUse {
                key: r.key,
                role: r.role,
                targets: Vec::new(),
            };
        }
        (Kind::String(_), _) => vec![v],
        (Kind::Array(items), true) => items.iter().collect(),
        (Kind::Table(t), false) if takes_file(r) => {
            let targets = read_file(&path, t, &v.span, known, problems)
                .map(|f| (Target::File(f), v.span.clone()))
                .into_iter()
                .collect();
            return RefUse {
                key: r.key,
                role: r.role,
                targets,
            };
        }
        _ => {
            let want = if r.many {
                "a list of names"
            } else if takes_file(r) {
                "a name (string) or a table"
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

/// `{ file = "…", format = "…" }`: the file resolved against the pipeline's directory (`${ENV}`
/// expanded), the other keys checked by the `import` kind.
fn read_file(
    path: &str,
    t: &Table,
    span: &Span,
    known: &Known<'_, '_>,
    problems: &mut Problems,
) -> Option<FileDecl> {
    let mut rest = t.clone();
    let file = match rest.remove("file") {
        None => {
            problems.push(
                Problem::at(span, join(path, "file"), "missing required key `file`").help(format!(
                    "name the model file: {FILE_FORM} (relative to the pipeline file)"
                )),
            );
            None
        }
        Some((_, v)) => resolve_file(&v, &join(path, "file"), known, problems),
    };
    let mut ok = true;
    for (key, value) in &rest.entries {
        value.visit_strings(&join(path, &key.name), &mut |p, s, span| {
            if s.contains("${") {
                ok = false;
                problems.push(
                    Problem::at(span, p, "placeholders are not allowed here")
                        .help("a model file's settings are fixed; `${ENV}` works in `file`"),
                );
            }
        });
    }
    let Some(kind) = known.registry.kind(IMPORT_KIND) else {
        problems.push(Problem::at(
            span,
            path,
            format!("this build has no `{IMPORT_KIND}` stage kind"),
        ));
        return None;
    };
    let params = match (kind.resolve_params)(&rest.to_json()) {
        Ok(p) => p,
        Err(e) => {
            problems.push(
                super::params::problem(&e, &rest, span, path, &["file"])
                    .help(format!("write {FILE_FORM}; format is `torchvision` (torchvision's ResNet key names) or `safetensors` (semiflow's own)")),
            );
            return None;
        }
    };
    Some(FileDecl {
        path: file.filter(|_| ok)?,
        params,
    })
}

fn resolve_file(
    v: &Value,
    path: &str,
    known: &Known<'_, '_>,
    problems: &mut Problems,
) -> Option<PathBuf> {
    let Some(raw) = v.as_str() else {
        problems.push(type_problem(v, path, "a string (a file path)"));
        return None;
    };
    if raw.contains("${sweep.") {
        problems.push(
            Problem::at(
                &v.span,
                path,
                "a model file cannot depend on a sweep variable",
            )
            .help("name one file; sweep over nodes that read different files instead"),
        );
        return None;
    }
    let resolved = expand_path(raw, &v.span, path, known.env, known.base_dir, problems)?;
    if !resolved.is_file() {
        let what = if resolved.is_dir() {
            "is a directory, not a file"
        } else {
            "does not exist"
        };
        problems.push(
            Problem::at(&v.span, path, format!("model file {} {what}", resolved.display()))
                .help("relative paths are resolved against the pipeline file's directory; `semiflow export NODE --out FILE` writes one"),
        );
        return None;
    }
    Some(resolved)
}
