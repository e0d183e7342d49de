//! Structural validation: the typed shape of a pipeline file, before sweep expansion.
//!
//! ```toml
//! [pipeline]            # name (required), seed (default 0), description
//! [datasets.NAME]       # root (required; ${ENV} expanded; relative to the file) + the `dataset` kind's params
//! [sweep]               # VAR = [values...]
//! [nodes.NAME]          # kind, seed, checkpoint_every, the kind's references, the kind's params
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use semiflow_stages::api::{KindSpec, RefSpec, RefTarget};

use super::error::{list, suggest, Problem, Problems, Span};
use super::spanned::{join, Key, Kind, Table, Value};
use super::subst::{expand_env, placeholders, sweep_var};
use super::{params, KindLookup, DATASET_KIND};

const TOP_KEYS: &[&str] = &["pipeline", "datasets", "sweep", "nodes"];
const PIPELINE_KEYS: &[&str] = &["name", "seed", "description"];
/// Node keys the engine consumes itself; they never reach a kind's `resolve_params`.
pub const ENGINE_KEYS: &[&str] = &["kind", "seed", "checkpoint_every"];

pub struct Document<'k> {
    pub name: String,
    pub seed: u64,
    pub datasets: Vec<DatasetDecl>,
    pub sweep: Vec<SweepVar>,
    pub nodes: Vec<NodeDecl<'k>>,
}

pub struct DatasetDecl {
    pub name: String,
    /// Resolved by the `dataset` kind (defaults filled), `root` removed.
    pub params: serde_json::Value,
    /// Absolute, environment variables expanded; exists.
    pub root: PathBuf,
}

pub struct SweepVar {
    pub name: String,
    pub values: Vec<serde_json::Value>,
}

/// The node's seed as written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seed {
    /// Not written: the pipeline seed.
    Pipeline,
    Fixed(u64),
    /// `seed = "${sweep.VAR}"`: index into `Document::sweep`.
    Sweep(usize),
}

pub enum Target {
    /// Index into `Document::datasets`.
    Dataset(usize),
    /// A node name (checked to exist and to have an allowed kind).
    Node(String),
}

pub struct RefUse {
    pub key: &'static str,
    pub role: &'static str,
    pub targets: Vec<(Target, Span)>,
}

pub struct NodeDecl<'k> {
    pub name: String,
    /// The `[nodes.NAME]` header (or inline table).
    pub span: Span,
    pub spec: &'k KindSpec,
    pub seed: Seed,
    pub checkpoint_every: usize,
    pub refs: Vec<RefUse>,
    /// Everything else: the kind's parameters, placeholders not yet substituted.
    pub params: Table,
    /// Sweep variables used directly (indices into `Document::sweep`).
    pub vars: BTreeSet<usize>,
}

/// Everything `read` needs from outside the file.
pub struct Context<'a, 'k> {
    pub kinds: &'k dyn KindLookup,
    /// Directory relative dataset roots are resolved against.
    pub base_dir: &'a Path,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Length of the file text (problems about something missing point at its end).
    pub file_len: usize,
}

/// Check the document's structure and every name in it. Problems are collected in `problems`;
/// the returned document is only meaningful if none were.
pub fn read<'k>(root: &Table, cx: &Context<'_, 'k>, problems: &mut Problems) -> Document<'k> {
    let file_start = Span::file(0..0);
    let file_end = Span::file(cx.file_len..cx.file_len);
    check_keys(root, TOP_KEYS, "", "top-level tables", problems);

    let (name, seed) = match table_at(root, "pipeline", problems) {
        Some((span, t)) => read_pipeline(t, span, problems),
        None => {
            if root.get("pipeline").is_none() {
                problems.push(
                    Problem::at(&file_start, "pipeline", "missing [pipeline] table")
                        .help("start the file with:\n[pipeline]\nname = \"my-pipeline\""),
                );
            }
            (String::new(), 0)
        }
    };

    let sweep =
        table_at(root, "sweep", problems).map_or_else(Vec::new, |(_, t)| read_sweep(t, problems));

    let mut datasets = Vec::new();
    let mut declared_datasets = Vec::new();
    if let Some((_, t)) = table_at(root, "datasets", problems) {
        for (key, value) in &t.entries {
            declared_datasets.push(key.name.as_str());
            let path = join("datasets", &key.name);
            if let Some(table) = expect_table(value, &path, problems) {
                if let Some(d) = read_dataset(&key.name, table, &value.span, cx, problems) {
                    datasets.push(d);
                }
            }
        }
    }

    let nodes = match table_at(root, "nodes", problems) {
        Some((span, t)) => read_nodes(t, span, &datasets, &declared_datasets, &sweep, cx, problems),
        None => {
            if root.get("nodes").is_none() {
                problems.push(
                    Problem::at(&file_end, "nodes", "the pipeline defines no nodes")
                        .help("add a node, e.g.:\n[nodes.pretrain]\nkind = \"pretrain\"\ndata = \"<dataset>\""),
                );
            }
            Vec::new()
        }
    };
    Document {
        name,
        seed,
        datasets,
        sweep,
        nodes,
    }
}

fn read_pipeline(t: &Table, span: &Span, problems: &mut Problems) -> (String, u64) {
    check_keys(t, PIPELINE_KEYS, "pipeline", "keys of [pipeline]", problems);
    let name = match t.get("name") {
        Some(v) => match v.as_str() {
            Some(s) if !s.trim().is_empty() => s.to_string(),
            Some(_) => {
                problems.push(Problem::at(
                    &v.span,
                    "pipeline.name",
                    "the pipeline name is empty",
                ));
                String::new()
            }
            None => {
                problems.push(type_problem(v, "pipeline.name", "a string"));
                String::new()
            }
        },
        None => {
            problems.push(
                Problem::at(span, "pipeline.name", "missing required key `name`")
                    .help("add `name = \"my-pipeline\"` under [pipeline]"),
            );
            String::new()
        }
    };
    if let Some(v) = t.get("description") {
        if v.as_str().is_none() {
            problems.push(type_problem(v, "pipeline.description", "a string"));
        }
    }
    let seed = t
        .get("seed")
        .map_or(0, |v| read_u64(v, "pipeline.seed", problems).unwrap_or(0));
    (name, seed)
}

fn read_sweep(t: &Table, problems: &mut Problems) -> Vec<SweepVar> {
    let mut vars = Vec::new();
    for (key, value) in &t.entries {
        let path = join("sweep", &key.name);
        let Kind::Array(items) = &value.kind else {
            problems.push(
                type_problem(value, &path, "an array of values")
                    .help(format!("write a list, e.g. `{} = [0.01, 0.1]`", key.name)),
            );
            continue;
        };
        if items.is_empty() {
            problems.push(
                Problem::at(
                    &value.span,
                    path,
                    format!("sweep variable `{}` has no values", key.name),
                )
                .help("list at least one value, or remove the variable"),
            );
            continue;
        }
        let mut values: Vec<serde_json::Value> = Vec::new();
        for item in items {
            if matches!(item.kind, Kind::Array(_) | Kind::Table(_)) {
                problems.push(type_problem(item, &path, "a string, number or boolean"));
                continue;
            }
            let v = item.to_json();
            if values.contains(&v) {
                problems.push(
                    Problem::at(&item.span, path.clone(), format!("value {v} appears twice"))
                        .help("each sweep value must be distinct (it names the sweep point)"),
                );
                continue;
            }
            values.push(v);
        }
        vars.push(SweepVar {
            name: key.name.clone(),
            values,
        });
    }
    vars
}

fn read_dataset(
    name: &str,
    t: &Table,
    span: &Span,
    cx: &Context<'_, '_>,
    problems: &mut Problems,
) -> Option<DatasetDecl> {
    let path = join("datasets", name);
    let mut rest = t.clone();
    let root = match rest.remove("root") {
        None => {
            problems.push(
                Problem::at(span, join(&path, "root"), "missing required key `root`").help(
                    format!(
                        "add `root = \"path/to/data\"` to [{path}] (relative to the pipeline file)"
                    ),
                ),
            );
            None
        }
        Some((_, v)) => resolve_root(&v, &join(&path, "root"), cx, problems),
    };
    let mut ok = root.is_some();
    for (key, value) in &rest.entries {
        value.visit_strings(&join(&path, &key.name), &mut |p, s, span| {
            if s.contains("${") {
                ok = false;
                problems.push(
                    Problem::at(span, p, "placeholders are not allowed here")
                        .help("`${sweep.VAR}` works in [nodes.*] settings; `${ENV}` in a dataset's `root`"),
                );
            }
        });
    }
    let Some(kind) = cx.kinds.kind(DATASET_KIND) else {
        problems.push(Problem::at(
            span,
            path,
            format!("this build has no `{DATASET_KIND}` stage kind"),
        ));
        return None;
    };
    let params = match (kind.resolve_params)(&rest.to_json()) {
        Ok(p) => p,
        Err(e) => {
            problems.push(params::problem(&e, &rest, span, &path, &["root"]));
            return None;
        }
    };
    let root = root.filter(|_| ok)?;
    Some(DatasetDecl {
        name: name.to_string(),
        params,
        root,
    })
}

fn resolve_root(
    v: &Value,
    path: &str,
    cx: &Context<'_, '_>,
    problems: &mut Problems,
) -> Option<PathBuf> {
    let Some(raw) = v.as_str() else {
        problems.push(type_problem(v, path, "a string (a directory path)"));
        return None;
    };
    let expanded = match expand_env(raw, cx.env) {
        Ok(s) => s,
        Err(msg) => {
            problems.push(
                Problem::at(&v.span, path, msg)
                    .help("export the variable, or give a default: `${VAR:-fallback/path}`"),
            );
            return None;
        }
    };
    let joined = cx.base_dir.join(&expanded);
    let resolved = std::path::absolute(&joined).unwrap_or(joined);
    if !resolved.is_dir() {
        let what = if resolved.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        problems.push(
            Problem::at(&v.span, path, format!("dataset root {} {what}", resolved.display()))
                .help("relative roots are resolved against the pipeline file's directory; fix the path or create it"),
        );
        return None;
    }
    Some(resolved)
}

fn read_nodes<'k>(
    t: &Table,
    span: &Span,
    datasets: &[DatasetDecl],
    declared_datasets: &[&str],
    sweep: &[SweepVar],
    cx: &Context<'_, 'k>,
    problems: &mut Problems,
) -> Vec<NodeDecl<'k>> {
    if t.entries.is_empty() {
        problems.push(Problem::at(span, "nodes", "the pipeline defines no nodes"));
    }
    // First pass: every node's kind, so references can be checked against it.
    let mut kinds: HashMap<&str, Option<&'k KindSpec>> = HashMap::new();
    let mut tables = Vec::new();
    for (key, value) in &t.entries {
        let path = join("nodes", &key.name);
        let Some(table) = expect_table(value, &path, problems) else {
            kinds.insert(&key.name, None);
            continue;
        };
        if !valid_node_name(&key.name) {
            problems.push(
                Problem::at(
                    &key.span,
                    path.clone(),
                    format!("invalid node name `{}`", key.name),
                )
                .help("node names may use letters, digits, `_` and `-`"),
            );
        }
        let spec = read_kind(table, &value.span, &path, cx.kinds, problems);
        kinds.insert(&key.name, spec);
        if let Some(spec) = spec {
            tables.push((key, value, table, spec));
        }
    }
    let names: Vec<&str> = t.keys().collect();
    let known = Known {
        datasets,
        declared_datasets,
        sweep,
        kinds: &kinds,
        node_names: &names,
    };
    tables
        .into_iter()
        .map(|(key, value, table, spec)| read_node(key, &value.span, table, spec, &known, problems))
        .collect()
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn read_kind<'k>(
    t: &Table,
    span: &Span,
    path: &str,
    kinds: &'k dyn KindLookup,
    problems: &mut Problems,
) -> Option<&'k KindSpec> {
    let names = kinds.names();
    let Some(v) = t.get("kind") else {
        problems.push(
            Problem::at(span, join(path, "kind"), "missing required key `kind`").help(format!(
                "add `kind = \"...\"`; known kinds: {}",
                list(&names)
            )),
        );
        return None;
    };
    let Some(name) = v.as_str() else {
        problems.push(type_problem(v, &join(path, "kind"), "a string"));
        return None;
    };
    let spec = kinds.kind(name);
    if spec.is_none() {
        problems.push(
            Problem::at(
                &v.span,
                join(path, "kind"),
                format!("unknown stage kind `{name}`"),
            )
            .help(suggest(name, "known kinds", &names)),
        );
    }
    spec
}

/// Names a node's references and placeholders are checked against.
struct Known<'a, 'k> {
    /// The datasets that passed validation.
    datasets: &'a [DatasetDecl],
    /// Every `[datasets.X]` name, valid or not.
    declared_datasets: &'a [&'a str],
    sweep: &'a [SweepVar],
    kinds: &'a HashMap<&'a str, Option<&'k KindSpec>>,
    node_names: &'a [&'a str],
}

fn read_node<'k>(
    key: &Key,
    span: &Span,
    t: &Table,
    spec: &'k KindSpec,
    known: &Known<'_, 'k>,
    problems: &mut Problems,
) -> NodeDecl<'k> {
    let path = join("nodes", &key.name);
    let mut params = t.clone();
    params.remove("kind");

    let seed = match params.remove("seed") {
        None => Seed::Pipeline,
        Some((_, v)) => read_seed(&v, &join(&path, "seed"), known.sweep, problems),
    };
    let checkpoint_every = match params.remove("checkpoint_every") {
        None => 1,
        Some((_, v)) => {
            read_u64(&v, &join(&path, "checkpoint_every"), problems).unwrap_or(1) as usize
        }
    };

    let mut refs = Vec::new();
    for r in spec.refs {
        match params.remove(r.key) {
            Some((_, v)) => refs.push(read_ref(&key.name, &path, r, &v, known, problems)),
            None if r.required => problems.push(
                Problem::at(
                    span,
                    join(&path, r.key),
                    format!("missing required key `{}`", r.key),
                )
                .help(format!(
                    "add `{} = ...` naming {}",
                    r.key,
                    describe_target(r)
                )),
            ),
            None => {}
        }
    }

    let mut vars = BTreeSet::new();
    for (k, v) in &params.entries {
        v.visit_strings(&join(&path, &k.name), &mut |p, s, span| {
            for var in sweep_placeholders(s, p, span, known.sweep, problems) {
                vars.insert(var);
            }
        });
    }
    if let Seed::Sweep(var) = seed {
        vars.insert(var);
    }
    NodeDecl {
        name: key.name.clone(),
        span: span.clone(),
        spec,
        seed,
        checkpoint_every,
        refs,
        params,
        vars,
    }
}

/// The sweep variables a string's placeholders name; undefined ones and non-sweep placeholders
/// are reported.
fn sweep_placeholders(
    s: &str,
    path: &str,
    span: &Span,
    sweep: &[SweepVar],
    problems: &mut Problems,
) -> Vec<usize> {
    let found = match placeholders(s) {
        Ok(found) => found,
        Err(msg) => {
            problems.push(Problem::at(span, path, msg).help("write `${sweep.VAR}`"));
            return Vec::new();
        }
    };
    let defined: Vec<&str> = sweep.iter().map(|v| v.name.as_str()).collect();
    let mut vars = Vec::new();
    for p in found {
        let Some(var) = sweep_var(&p) else {
            problems.push(
                Problem::at(span, path, format!("`${{{}}}` is not a sweep variable reference", p.body))
                    .help("node settings accept `${sweep.VAR}` placeholders; environment variables are expanded only in dataset roots"),
            );
            continue;
        };
        match defined.iter().position(|d| *d == var) {
            Some(i) => vars.push(i),
            None => {
                let msg = if defined.is_empty() {
                    format!("`${{sweep.{var}}}` is not a sweep variable; the pipeline has no [sweep] table")
                } else {
                    format!(
                        "`${{sweep.{var}}}` is not a sweep variable; defined: {}",
                        defined.join(", ")
                    )
                };
                problems.push(Problem::at(span, path, msg).help(
                    match super::error::closest(var, defined.iter().copied()) {
                        Some(c) => format!("did you mean `${{sweep.{c}}}`?"),
                        None => format!("declare it: [sweep]\n{var} = [...]"),
                    },
                ));
            }
        }
    }
    vars
}

fn read_seed(v: &Value, path: &str, sweep: &[SweepVar], problems: &mut Problems) -> Seed {
    if let Some(s) = v.as_str() {
        let vars = sweep_placeholders(s, path, &v.span, sweep, problems);
        let whole = placeholders(s).is_ok_and(|p| p.len() == 1 && p[0].range == (0..s.len()));
        return match vars.as_slice() {
            [var] if whole => {
                let bad = sweep[*var].values.iter().find(|x| x.as_u64().is_none());
                if let Some(bad) = bad {
                    problems.push(Problem::at(
                        &v.span,
                        path,
                        format!("sweep variable `{}` has value {bad}, which is not a seed (a non-negative integer)", sweep[*var].name),
                    ));
                }
                Seed::Sweep(*var)
            }
            [] => {
                if placeholders(s).is_ok_and(|p| p.is_empty()) {
                    problems.push(type_problem(
                        v,
                        path,
                        "a non-negative integer or \"${sweep.VAR}\"",
                    ));
                }
                Seed::Pipeline
            }
            _ => {
                problems.push(Problem::at(
                    &v.span,
                    path,
                    "a seed must be exactly one placeholder: \"${sweep.VAR}\"",
                ));
                Seed::Pipeline
            }
        };
    }
    read_u64(v, path, problems).map_or(Seed::Pipeline, Seed::Fixed)
}

/// What one reference of `r` names: "a dataset", "a node of kind finetune or distill".
fn describe_one(r: &RefSpec) -> String {
    match r.target {
        RefTarget::Dataset => "a dataset".to_string(),
        RefTarget::Node(kinds) => format!("a node of kind {}", kinds.join(" or ")),
    }
}

/// What the key `r` holds: [`describe_one`], or "a list of nodes of kind ..." for lists.
fn describe_target(r: &RefSpec) -> String {
    match (r.many, r.target) {
        (false, _) => describe_one(r),
        (true, RefTarget::Dataset) => "a list of datasets".to_string(),
        (true, RefTarget::Node(kinds)) => format!("a list of nodes of kind {}", kinds.join(" or ")),
    }
}

fn read_ref(
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

/// `root[key]` as a table, reporting a non-table. `None` if absent.
fn table_at<'t>(
    root: &'t Table,
    key: &str,
    problems: &mut Problems,
) -> Option<(&'t Span, &'t Table)> {
    let v = root.get(key)?;
    expect_table(v, key, problems).map(|t| (&v.span, t))
}

fn expect_table<'t>(v: &'t Value, path: &str, problems: &mut Problems) -> Option<&'t Table> {
    let t = v.as_table();
    if t.is_none() {
        problems.push(
            type_problem(v, path, "a table").help(format!("write it as a section: [{path}]")),
        );
    }
    t
}

fn check_keys(t: &Table, allowed: &[&str], path: &str, what: &str, problems: &mut Problems) {
    for (key, _) in &t.entries {
        if !allowed.contains(&key.name.as_str()) {
            let where_ = if path.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in [{path}]")
            };
            problems.push(
                Problem::at(
                    &key.span,
                    join(path, &key.name),
                    format!("unknown key `{}` {where_}", key.name),
                )
                .help(suggest(&key.name, &format!("valid {what}"), allowed)),
            );
        }
    }
}

fn type_problem(v: &Value, path: &str, want: &str) -> Problem {
    Problem::at(
        &v.span,
        path,
        format!("expected {want}, found {}", v.type_name()),
    )
}

fn read_u64(v: &Value, path: &str, problems: &mut Problems) -> Option<u64> {
    match v.kind {
        Kind::Integer(i) if i >= 0 => Some(i as u64),
        Kind::Integer(i) => {
            problems.push(Problem::at(
                &v.span,
                path,
                format!("expected a non-negative integer, found {i}"),
            ));
            None
        }
        _ => {
            problems.push(type_problem(v, path, "a non-negative integer"));
            None
        }
    }
}
