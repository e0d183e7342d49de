//! Structural validation: the typed shape of a pipeline file, before sweep expansion.
//!
//! ```toml
//! [pipeline]            # name (required), seed (default 0), description
//! [datasets.NAME]       # root (required; ${ENV} expanded; relative to the file) + the `dataset` kind's params
//! [sweep]               # VAR = [values...]
//! [defaults.KIND]       # merged into the nodes before this (see `defaults`)
//! [nodes.NAME]          # kind, seed, checkpoint_every, the kind's references, the kind's params
//! [claims.NAME]         # better, than, metric, split, at, margin, kind (see `claims`)
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use semiflow_stages::api::KindSpec;

use super::error::{suggest, Problem, Problems, Span};
use super::nodes::read_nodes;
use super::spanned::{join, Kind, Table, Value};
use super::subst::expand_env;
use super::{params, KindLookup, DATASET_KIND};

// `defaults` is consumed (merged into the nodes) before this module reads the document.
const TOP_KEYS: &[&str] = &[
    "pipeline", "datasets", "sweep", "defaults", "nodes", "executor", "claims",
];
const PIPELINE_KEYS: &[&str] = &["name", "seed", "description"];
/// Node keys the engine consumes itself; they never reach a kind's `resolve_params`.
pub const ENGINE_KEYS: &[&str] = &["kind", "seed", "checkpoint_every", "resources"];

pub struct Document<'k> {
    pub name: String,
    pub seed: u64,
    pub datasets: Vec<DatasetDecl>,
    pub sweep: Vec<SweepVar>,
    pub nodes: Vec<NodeDecl<'k>>,
    pub executor: crate::plan::ExecutorSettings,
    pub claims: Vec<crate::plan::Claim>,
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
    /// `init = { file = "…", format = "…" }`: a model file, which becomes a node of kind
    /// `import` (made by the loader, fingerprinted by content like a dataset root).
    File(FileDecl),
}

/// A model file a node reads (see [`Target::File`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FileDecl {
    /// Absolute, environment variables expanded; an existing file.
    pub path: PathBuf,
    /// Resolved by the `import` kind (`file` removed).
    pub params: serde_json::Value,
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
    pub resources: crate::plan::Resources,
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
    let executor = table_at(root, "executor", problems).map_or_else(Default::default, |(_, t)| {
        super::resources::read_executor(t, problems)
    });
    let claims = match table_at(root, "claims", problems) {
        Some((_, t)) => {
            let names: Vec<&str> = match root.get("nodes").and_then(|v| v.as_table()) {
                Some(n) => n.keys().collect(),
                None => Vec::new(),
            };
            super::claims::read_claims(t, &names, &sweep, problems)
        }
        None => Vec::new(),
    };
    Document {
        name,
        seed,
        datasets,
        sweep,
        nodes,
        executor,
        claims,
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

/// A path setting with `${ENV_VAR}` / `${ENV_VAR:-default}` expanded, made absolute against the
/// pipeline file's directory (dataset roots, `init` files); an unset variable is a problem at `span`.
pub(super) fn expand_path(
    raw: &str,
    span: &Span,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<PathBuf> {
    let expanded = match expand_env(raw, env) {
        Ok(s) => s,
        Err(msg) => {
            problems.push(
                Problem::at(span, path, msg)
                    .help("export the variable, or give a default: `${VAR:-fallback/path}`"),
            );
            return None;
        }
    };
    let joined = base_dir.join(&expanded);
    Some(std::path::absolute(&joined).unwrap_or(joined))
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
    let resolved = expand_path(raw, &v.span, path, cx.env, cx.base_dir, problems)?;
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

/// `root[key]` as a table, reporting a non-table. `None` if absent.
pub(super) fn table_at<'t>(
    root: &'t Table,
    key: &str,
    problems: &mut Problems,
) -> Option<(&'t Span, &'t Table)> {
    let v = root.get(key)?;
    expect_table(v, key, problems).map(|t| (&v.span, t))
}

pub(super) fn expect_table<'t>(
    v: &'t Value,
    path: &str,
    problems: &mut Problems,
) -> Option<&'t Table> {
    let t = v.as_table();
    if t.is_none() {
        problems.push(
            type_problem(v, path, "a table").help(format!("write it as a section: [{path}]")),
        );
    }
    t
}

pub(super) fn check_keys(
    t: &Table,
    allowed: &[&str],
    path: &str,
    what: &str,
    problems: &mut Problems,
) {
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

pub(super) fn type_problem(v: &Value, path: &str, want: &str) -> Problem {
    Problem::at(
        &v.span,
        path,
        format!("expected {want}, found {}", v.type_name()),
    )
}

pub(super) fn read_u64(v: &Value, path: &str, problems: &mut Problems) -> Option<u64> {
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
