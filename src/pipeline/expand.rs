//! From validated declarations to concrete plan nodes: dependency order, sweep expansion, and
//! parameters resolved by each stage kind.
//!
//! A node is expanded over the sweep variables it uses directly plus those of its inputs
//! (transitively); it gets one instance per combination of exactly those variables, so a node
//! that uses none stays a single node shared by every sweep point.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::error::{Problem, Problems};
use super::schema::{Document, FileDecl, NodeDecl, Seed, Target, ENGINE_KEYS};
use super::subst::{render, substitute_table};
use super::{dataset_node_name, params, DATASET_KIND};
use crate::graph::topo_order;
use crate::plan::PlanNode;
use semiflow_stages::kinds::import::KIND as IMPORT_KIND;

/// The concrete nodes of `doc`, inputs before users. Problems (a cycle, parameters a kind
/// rejects) are collected; the result is only meaningful if none were.
pub fn expand(doc: &Document<'_>, problems: &mut Problems) -> Vec<PlanNode> {
    let index: HashMap<&str, usize> = doc
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let node_deps = |n: &NodeDecl| -> Vec<usize> {
        n.refs
            .iter()
            .flat_map(|r| &r.targets)
            .filter_map(|(t, _)| match t {
                Target::Node(name) => Some(index[name.as_str()]),
                Target::Dataset(_) | Target::File(_) => None,
            })
            .collect()
    };
    let deps: Vec<Vec<usize>> = doc.nodes.iter().map(node_deps).collect();
    let order = match topo_order(&deps) {
        Ok(order) => order,
        Err(cycle) => {
            problems.push(cycle_problem(doc, &cycle));
            return Vec::new();
        }
    };

    // Sweep variables each node depends on, directly or through its inputs.
    let mut vars: Vec<BTreeSet<usize>> = doc.nodes.iter().map(|n| n.vars.clone()).collect();
    for &i in &order {
        let inherited: BTreeSet<usize> = deps[i].iter().flat_map(|&d| vars[d].clone()).collect();
        vars[i].extend(inherited);
    }
    if let Some(p) = too_many_instances(doc, &vars) {
        problems.push(p);
        return Vec::new();
    }
    for (v, var) in doc.sweep.iter().enumerate() {
        if !vars.iter().any(|vs| vs.contains(&v)) {
            tracing::warn!(
                "sweep variable `{}` is declared but no node uses it",
                var.name
            );
        }
    }

    let mut plan = Vec::new();
    let dataset_nodes = dataset_nodes(doc, &mut plan);
    // Model files, one `import` node per distinct (file, parameters): plan index.
    let mut file_nodes: Vec<(&FileDecl, usize)> = Vec::new();
    // Per declared node: value indices of its variables (in `vars` order) → plan index.
    let mut instances: Vec<HashMap<Vec<usize>, usize>> = vec![HashMap::new(); doc.nodes.len()];
    for &i in &order {
        let decl = &doc.nodes[i];
        let node_vars: Vec<usize> = vars[i].iter().copied().collect();
        let mut reported = false;
        for choice in combinations(
            &node_vars
                .iter()
                .map(|&v| doc.sweep[v].values.len())
                .collect::<Vec<_>>(),
        ) {
            let at: HashMap<usize, usize> = node_vars
                .iter()
                .copied()
                .zip(choice.iter().copied())
                .collect();
            let point: BTreeMap<String, serde_json::Value> = at
                .iter()
                .map(|(&v, &k)| (doc.sweep[v].name.clone(), doc.sweep[v].values[k].clone()))
                .collect();
            let name = point_name(
                &decl.name,
                node_vars
                    .iter()
                    .map(|&v| (&doc.sweep[v].name, &doc.sweep[v].values[at[&v]])),
            );

            let mut inputs: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for r in &decl.refs {
                let mut ids = Vec::new();
                for (t, _) in &r.targets {
                    ids.push(match t {
                        Target::Dataset(d) => {
                            dataset_nodes[*d].expect("referenced datasets have plan nodes")
                        }
                        Target::Node(n) => {
                            let j = index[n.as_str()];
                            let key: Vec<usize> = vars[j].iter().map(|v| at[v]).collect();
                            instances[j][&key]
                        }
                        Target::File(f) => file_node(f, &decl.name, &mut file_nodes, &mut plan),
                    });
                }
                inputs.entry(r.role.to_string()).or_default().extend(ids);
            }

            let raw = substitute_table(&decl.params, &point);
            let params = match (decl.spec.resolve_params)(&raw) {
                Ok(p) => p,
                Err(e) => {
                    if !reported {
                        problems.push(param_problem(decl, &e, &name, !point.is_empty()));
                        reported = true;
                    }
                    serde_json::Value::Null
                }
            };
            let seed = match decl.seed {
                Seed::Pipeline => doc.seed,
                Seed::Fixed(s) => s,
                Seed::Sweep(v) => doc.sweep[v].values[at[&v]].as_u64().unwrap_or(doc.seed),
            };
            instances[i].insert(choice, plan.len());
            plan.push(PlanNode {
                name,
                base: decl.name.clone(),
                point,
                kind: decl.spec.name.to_string(),
                params,
                inputs,
                dataset_root: None,
                seed,
                checkpoint_every: decl.checkpoint_every,
                resources: decl.resources.clone(),
            });
        }
    }
    plan
}

/// The most plan nodes a pipeline may expand to. The largest shipped pipeline has 49; a sweep is
/// a product, so a few variables with a few dozen values each would otherwise expand to millions
/// of nodes (found by fuzzing: 4 variables × 14 values made `validate` run for minutes, 7 × 39
/// exhausted memory before anything was reported).
const MAX_PLAN_NODES: u128 = 10_000;

/// A problem if expanding the sweep would exceed [`MAX_PLAN_NODES`], naming the (first) node that
/// expands most; counted without expanding anything (`None`: more than `u128::MAX`).
fn too_many_instances(doc: &Document<'_>, vars: &[BTreeSet<usize>]) -> Option<Problem> {
    let count = |vs: &BTreeSet<usize>| -> Option<u128> {
        vs.iter().try_fold(1u128, |acc, &v| {
            acc.checked_mul(doc.sweep[v].values.len() as u128)
        })
    };
    let counts: Vec<Option<u128>> = vars.iter().map(count).collect();
    let total = counts
        .iter()
        .try_fold(doc.datasets.len() as u128, |acc, &c| acc.checked_add(c?));
    if total.is_some_and(|t| t <= MAX_PLAN_NODES) {
        return None;
    }
    let show = |n: Option<u128>| n.map_or_else(|| "more than 2^128".to_string(), |n| n.to_string());
    // `None` (overflow) is the most; among equals the first declared node.
    let rank = |c: &Option<u128>| c.map_or(u128::MAX, |n| n.min(u128::MAX - 1));
    let i = (0..counts.len()).rev().max_by_key(|&i| rank(&counts[i]))?;
    let decl = &doc.nodes[i];
    let over: Vec<String> = vars[i]
        .iter()
        .map(|&v| {
            format!(
                "`{}` ({} values)",
                doc.sweep[v].name,
                doc.sweep[v].values.len()
            )
        })
        .collect();
    Some(
        Problem::at(
            &decl.span,
            format!("nodes.{}", decl.name),
            format!(
                "the sweep expands the pipeline to {} nodes, more than the {MAX_PLAN_NODES} allowed; \
                 node `{}` alone becomes {} nodes, one per combination of {}",
                show(total),
                decl.name,
                show(counts[i]),
                over.join(" × ")
            ),
        )
        .help("sweep fewer values, or split the sweep over several pipeline files"),
    )
}

/// Plan nodes for the datasets some node reads, in declaration order; index per declared dataset.
fn dataset_nodes(doc: &Document<'_>, plan: &mut Vec<PlanNode>) -> Vec<Option<usize>> {
    let used: BTreeSet<usize> = doc
        .nodes
        .iter()
        .flat_map(|n| n.refs.iter().flat_map(|r| &r.targets))
        .filter_map(|(t, _)| match t {
            Target::Dataset(d) => Some(*d),
            Target::Node(_) | Target::File(_) => None,
        })
        .collect();
    let mut ids = vec![None; doc.datasets.len()];
    for (d, ds) in doc.datasets.iter().enumerate() {
        if !used.contains(&d) {
            tracing::warn!("dataset `{}` is declared but no node reads it", ds.name);
            continue;
        }
        ids[d] = Some(plan.len());
        plan.push(PlanNode {
            name: dataset_node_name(&ds.name),
            base: dataset_node_name(&ds.name),
            point: BTreeMap::new(),
            kind: DATASET_KIND.to_string(),
            params: ds.params.clone(),
            inputs: BTreeMap::new(),
            dataset_root: Some(ds.root.clone()),
            // Decoding a dataset does not depend on a seed; a fixed one keeps the pipeline seed
            // from invalidating it.
            seed: 0,
            checkpoint_every: 0,
            resources: Default::default(),
        });
    }
    ids
}

/// The plan node of model file `f` (kind `import`), added on first use, named after the first
/// node reading it: `import.<node>`. Like a dataset it is fingerprinted by content and has a fixed
/// seed, so its key depends on the file's bytes and parameters alone.
fn file_node<'d>(
    f: &'d FileDecl,
    reader: &str,
    file_nodes: &mut Vec<(&'d FileDecl, usize)>,
    plan: &mut Vec<PlanNode>,
) -> usize {
    if let Some((_, i)) = file_nodes.iter().find(|(g, _)| *g == f) {
        return *i;
    }
    let name = format!("{IMPORT_KIND}.{reader}");
    plan.push(PlanNode {
        name: name.clone(),
        base: name,
        point: BTreeMap::new(),
        kind: IMPORT_KIND.to_string(),
        params: f.params.clone(),
        inputs: BTreeMap::new(),
        dataset_root: Some(f.path.clone()),
        seed: 0,
        checkpoint_every: 0,
        resources: Default::default(),
    });
    file_nodes.push((f, plan.len() - 1));
    plan.len() - 1
}

/// Every combination of choices, the last position varying fastest; one empty combination if
/// there are no positions.
fn combinations(sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    for &n in sizes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                (0..n).map(move |k| {
                    let mut c = prefix.clone();
                    c.push(k);
                    c
                })
            })
            .collect();
    }
    out
}

/// `base` or `base[var=value,var2=value]`.
pub fn point_name<'a>(
    base: &str,
    point: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
) -> String {
    let parts: Vec<String> = point.map(|(k, v)| format!("{k}={}", render(v))).collect();
    if parts.is_empty() {
        base.to_string()
    } else {
        format!("{base}[{}]", parts.join(","))
    }
}

fn param_problem(
    decl: &NodeDecl<'_>,
    e: &semiflow_stages::api::ParamError,
    name: &str,
    swept: bool,
) -> Problem {
    let mut other: Vec<&str> = ENGINE_KEYS.to_vec();
    other.extend(decl.spec.refs.iter().map(|r| r.key));
    let mut p = params::problem(
        e,
        &decl.params,
        &decl.span,
        &format!("nodes.{}", decl.name),
        &other,
    );
    if swept {
        p.message = format!("{} (in sweep point {name})", p.message);
    }
    p
}

fn cycle_problem(doc: &Document<'_>, cycle: &[usize]) -> Problem {
    let names: Vec<&str> = cycle.iter().map(|&i| doc.nodes[i].name.as_str()).collect();
    let mut reads = Vec::new();
    let mut first_span = None;
    for pair in cycle.windows(2) {
        let (a, b) = (&doc.nodes[pair[0]], &doc.nodes[pair[1]]);
        for r in &a.refs {
            if let Some((_, span)) = r
                .targets
                .iter()
                .find(|(t, _)| matches!(t, Target::Node(n) if *n == b.name))
            {
                first_span
                    .get_or_insert_with(|| (span.clone(), format!("nodes.{}.{}", a.name, r.key)));
                reads.push(format!("`{}` reads `{}` (key `{}`)", a.name, b.name, r.key));
                break;
            }
        }
    }
    let (span, key) = first_span.expect("a cycle has at least one reference");
    Problem::at(&span, key, format!("cycle: {}", names.join(" → "))).help(format!(
        "{}; a node cannot depend on its own output: remove one of these references",
        reads.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_are_a_cartesian_product() {
        assert_eq!(combinations(&[]), vec![Vec::<usize>::new()]);
        assert_eq!(
            combinations(&[2, 2]),
            vec![vec![0, 0], vec![0, 1], vec![1, 0], vec![1, 1]]
        );
        assert_eq!(combinations(&[3, 0]).len(), 0);
    }

    #[test]
    fn point_names_render_values_compactly() {
        let (lf, s, m) = (
            "label_fraction".to_string(),
            "seed".to_string(),
            "mode".to_string(),
        );
        let (a, b, c) = (
            serde_json::json!(0.01),
            serde_json::json!(1),
            serde_json::json!("x"),
        );
        assert_eq!(
            point_name("finetune", [(&lf, &a), (&s, &b), (&m, &c)].into_iter()),
            "finetune[label_fraction=0.01,seed=1,mode=x]"
        );
        assert_eq!(point_name("pretrain", std::iter::empty()), "pretrain");
    }
}
