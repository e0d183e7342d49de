//! `[nodes.NAME]` tables: kind, engine keys (`seed`, `checkpoint_every`), references (see
//! [`super::refs`]) and the kind's parameters with their `${sweep.VAR}` placeholders.

use std::collections::{BTreeSet, HashMap};

use semiflow_stages::api::KindSpec;

use super::error::{closest, list, suggest, Problem, Problems, Span};
use super::refs::{describe_target, read_ref};
use super::schema::{
    expect_table, read_u64, type_problem, Context, DatasetDecl, NodeDecl, Seed, SweepVar,
};
use super::spanned::{join, Key, Table, Value};
use super::subst::{placeholders, sweep_var};
use super::{KindLookup, DATASET_KIND};

pub(super) fn read_nodes<'k>(
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
        registry: cx.kinds,
        base_dir: cx.base_dir,
        env: cx.env,
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
    if name == DATASET_KIND {
        problems.push(
            Problem::at(
                &v.span,
                join(path, "kind"),
                "datasets are declared as [datasets.NAME], not as nodes",
            )
            .help("move this table to [datasets.NAME] and reference it with `data = \"NAME\"`"),
        );
        return None;
    }
    if name == semiflow_stages::kinds::import::KIND {
        problems.push(
            Problem::at(
                &v.span,
                join(path, "kind"),
                "import nodes are made from `init = { file = \"…\", format = \"…\" }`, not declared",
            )
            .help("give the model file as `init = { file = \"model.safetensors\", format = \"torchvision\" }` of the pretrain, finetune or distill node that starts from it"),
        );
        return None;
    }
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
pub(super) struct Known<'a, 'k> {
    /// The datasets that passed validation.
    pub datasets: &'a [DatasetDecl],
    /// Every `[datasets.X]` name, valid or not.
    pub declared_datasets: &'a [&'a str],
    pub sweep: &'a [SweepVar],
    /// Node name → its kind (`None` when the kind is unknown: already reported).
    pub kinds: &'a HashMap<&'a str, Option<&'k KindSpec>>,
    /// Node names in file order.
    pub node_names: &'a [&'a str],
    /// The stage kinds (model files are checked by the `import` kind).
    pub registry: &'k dyn KindLookup,
    /// Directory relative model files are resolved against.
    pub base_dir: &'a std::path::Path,
    pub env: &'a dyn Fn(&str) -> Option<String>,
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

    let resources = match params.remove("resources") {
        None => Default::default(),
        Some((_, v)) => super::resources::read_resources(&v, &join(&path, "resources"), problems),
    };

    let mut refs = Vec::new();
    for r in spec.refs {
        // Another key of the same role (finetune's `init` for `from`) stands in for this one.
        let alternatives: Vec<&str> = spec
            .refs
            .iter()
            .filter(|o| o.role == r.role && o.key != r.key && !o.many)
            .map(|o| o.key)
            .collect();
        let given_alternative = alternatives.iter().find(|k| t.get(k).is_some());
        match params.remove(r.key) {
            Some((k, v)) => {
                if let Some(other) = given_alternative.filter(|_| !r.many && r.required) {
                    problems.push(
                        Problem::at(
                            &k.span,
                            join(&path, r.key),
                            format!("`{}` and `{other}` both give the starting network", r.key),
                        )
                        .help(format!("keep one of `{}` and `{other}`", r.key)),
                    );
                }
                refs.push(read_ref(&key.name, &path, r, &v, known, problems))
            }
            None if r.required && given_alternative.is_some() => {}
            None if r.required => problems.push(
                Problem::at(
                    span,
                    join(&path, r.key),
                    format!("missing required key `{}`", r.key),
                )
                .help(format!(
                    "add `{} = ...` naming {}{}",
                    r.key,
                    describe_target(r),
                    alternatives
                        .iter()
                        .map(|a| format!(", or `{a} = ...`"))
                        .collect::<String>()
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
        resources,
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
                    match closest(var, defined.iter().copied()) {
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
