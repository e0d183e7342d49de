//! TEMPORARY minimal pipeline loader, used only until the `pipeline` branch (full validation with
//! line:column errors, sweeps, `${ENV}`) is merged; then `cli::frontend` switches to
//! `pipeline::load`, `graph::select` and `graph::render` and this file is deleted.
//!
//! Supports `[pipeline] name/seed`, `[datasets.X]` (→ node `dataset.X`), `[nodes.X]` with `kind`,
//! optional `seed` / `checkpoint_every`, references per the kind's `RefSpec`s, and
//! `--set node.key=value` overrides. No sweeps.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use semiflow_stages::api::{self, RefTarget};

use crate::plan::{Plan, PlanNode};

pub fn load(path: &Path, overrides: &[String]) -> Result<Plan> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    for o in overrides {
        let (lhs, rhs) = o
            .split_once('=')
            .ok_or_else(|| anyhow!("--set {o}: expected node.key=value"))?;
        let (node, key) = lhs
            .split_once('.')
            .ok_or_else(|| anyhow!("--set {o}: expected node.key=value"))?;
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {rhs}"))
            .map(|mut t| t.remove("v").expect("v"))
            .unwrap_or_else(|_| toml::Value::String(rhs.to_string()));
        let table = doc
            .get_mut("nodes")
            .and_then(|n| n.get_mut(node))
            .and_then(|n| n.as_table_mut())
            .ok_or_else(|| anyhow!("--set {o}: no node `{node}`"))?;
        table.insert(key.to_string(), value);
    }
    let header = doc.get("pipeline").and_then(|v| v.as_table());
    let name = header
        .and_then(|h| h.get("name"))
        .and_then(|v| v.as_str())
        .unwrap_or("pipeline")
        .to_string();
    let seed = header
        .and_then(|h| h.get("seed"))
        .and_then(|v| v.as_integer())
        .unwrap_or(0) as u64;
    let base_dir = path.parent().unwrap_or(Path::new("."));

    let mut raw: Vec<(String, String, toml::Table, bool)> = Vec::new();
    if let Some(ds) = doc.get("datasets").and_then(|v| v.as_table()) {
        for (n, t) in ds {
            let t = t
                .as_table()
                .ok_or_else(|| anyhow!("[datasets.{n}] must be a table"))?;
            raw.push((format!("dataset.{n}"), n.clone(), t.clone(), true));
        }
    }
    if let Some(ns) = doc.get("nodes").and_then(|v| v.as_table()) {
        for (n, t) in ns {
            let t = t
                .as_table()
                .ok_or_else(|| anyhow!("[nodes.{n}] must be a table"))?;
            raw.push((n.clone(), n.clone(), t.clone(), false));
        }
    }
    // Resolve each node's references to names, then order topologically.
    struct Pending {
        node: PlanNode,
        refs: BTreeMap<String, Vec<String>>,
    }
    let mut pending: Vec<Pending> = Vec::new();
    for (full, base, mut t, is_dataset) in raw {
        let kind = if is_dataset {
            "dataset".to_string()
        } else {
            t.remove("kind")
                .and_then(|v| v.as_str().map(str::to_string))
                .ok_or_else(|| anyhow!("[nodes.{base}]: missing `kind`"))?
        };
        let node_seed = t
            .remove("seed")
            .and_then(|v| v.as_integer())
            .map(|s| s as u64);
        let checkpoint_every = t
            .remove("checkpoint_every")
            .and_then(|v| v.as_integer())
            .unwrap_or(1) as usize;
        let mut dataset_root = None;
        if is_dataset {
            let root = t
                .remove("root")
                .and_then(|v| v.as_str().map(str::to_string))
                .ok_or_else(|| anyhow!("[datasets.{base}]: missing `root`"))?;
            dataset_root = Some(base_dir.join(root));
        }
        let spec = api::kind(&kind);
        let mut refs = BTreeMap::new();
        if let Some(spec) = spec {
            for r in spec.refs {
                let Some(v) = t.remove(r.key) else {
                    if r.required {
                        bail!("[nodes.{base}]: missing `{}`", r.key);
                    }
                    continue;
                };
                let names: Vec<String> = match v {
                    toml::Value::String(s) => vec![s],
                    toml::Value::Array(a) => a
                        .into_iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| anyhow!("[nodes.{base}].{}: expected names", r.key))
                        })
                        .collect::<Result<_>>()?,
                    _ => bail!("[nodes.{base}].{}: expected a name", r.key),
                };
                let names = names
                    .into_iter()
                    .map(|n| match r.target {
                        RefTarget::Dataset => format!("dataset.{n}"),
                        RefTarget::Node(_) => n,
                    })
                    .collect();
                refs.insert(r.role.to_string(), names);
            }
        }
        let raw_params = serde_json::to_value(&t)?;
        let params = match spec {
            Some(s) => {
                (s.resolve_params)(&raw_params).map_err(|e| anyhow!("[nodes.{base}] {e}"))?
            }
            None if is_dataset => raw_params,
            None => bail!("[nodes.{base}]: unknown kind `{kind}` (see `semiflow kinds`)"),
        };
        pending.push(Pending {
            node: PlanNode {
                name: full,
                base,
                point: BTreeMap::new(),
                kind,
                params,
                inputs: BTreeMap::new(),
                dataset_root,
                seed: node_seed.unwrap_or(seed),
                checkpoint_every,
            },
            refs,
        });
    }
    let mut nodes: Vec<PlanNode> = Vec::new();
    let mut refs_of: Vec<BTreeMap<String, Vec<String>>> = Vec::new();
    let mut placed = vec![false; pending.len()];
    while nodes.len() < pending.len() {
        let before = nodes.len();
        for (i, p) in pending.iter().enumerate() {
            if placed[i] {
                continue;
            }
            let ready = p
                .refs
                .values()
                .flatten()
                .all(|n| nodes.iter().any(|x| &x.name == n));
            let all_exist = p
                .refs
                .values()
                .flatten()
                .all(|n| pending.iter().any(|x| &x.node.name == n));
            if !all_exist {
                bail!(
                    "node `{}` refers to an undefined node or dataset",
                    p.node.name
                );
            }
            if ready {
                placed[i] = true;
                nodes.push(p.node.clone());
                refs_of.push(p.refs.clone());
            }
        }
        if nodes.len() == before {
            bail!("the pipeline has a cycle");
        }
    }
    let order: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    for (node, refs) in nodes.iter_mut().zip(&refs_of) {
        for (role, names) in refs {
            let idx = names
                .iter()
                .map(|n| order.iter().position(|x| x == n).expect("placed"))
                .collect();
            node.inputs.insert(role.clone(), idx);
        }
    }
    Ok(Plan {
        name,
        file: path.to_path_buf(),
        nodes,
        overrides: overrides.to_vec(),
        sweep: Vec::new(),
    })
}

/// Selected node indices in plan order: `--only` nodes exactly (by name or base name), else
/// everything; `--until` adds the named node and all its ancestors.
pub fn select(plan: &Plan, only: &[String], until: Option<&str>) -> Result<Vec<usize>> {
    let matches = |pat: &str| -> Result<Vec<usize>> {
        let v: Vec<usize> = (0..plan.nodes.len())
            .filter(|&i| plan.nodes[i].name == pat || plan.nodes[i].base == pat)
            .collect();
        if v.is_empty() {
            bail!("no node named `{pat}` in {}", plan.file.display());
        }
        Ok(v)
    };
    let mut chosen = vec![only.is_empty() && until.is_none(); plan.nodes.len()];
    for o in only {
        for i in matches(o)? {
            chosen[i] = true;
        }
    }
    if let Some(u) = until {
        let mut stack = matches(u)?;
        while let Some(i) = stack.pop() {
            if !chosen[i] {
                chosen[i] = true;
            }
            stack.extend(plan.nodes[i].inputs.values().flatten().copied());
        }
    }
    Ok((0..plan.nodes.len()).filter(|&i| chosen[i]).collect())
}

/// Output formats for `semiflow dag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

/// A plain rendering of the DAG (the pipeline branch provides the real one).
pub fn render(plan: &Plan, format: DagFormat) -> String {
    let mut s = String::new();
    match format {
        DagFormat::Text => {
            for n in &plan.nodes {
                let ins: Vec<String> = n
                    .inputs
                    .iter()
                    .flat_map(|(r, v)| {
                        v.iter()
                            .map(move |&i| format!("{r}={}", plan.nodes[i].name))
                    })
                    .collect();
                s.push_str(&format!("{} ({}) <- {}\n", n.name, n.kind, ins.join(", ")));
            }
        }
        DagFormat::Dot | DagFormat::Mermaid => {
            let dot = format == DagFormat::Dot;
            s.push_str(if dot {
                "digraph pipeline {\n"
            } else {
                "graph TD\n"
            });
            for (j, n) in plan.nodes.iter().enumerate() {
                for (role, v) in &n.inputs {
                    for &i in v {
                        if dot {
                            s.push_str(&format!(
                                "  \"{}\" -> \"{}\" [label=\"{role}\"];\n",
                                plan.nodes[i].name, n.name
                            ));
                        } else {
                            s.push_str(&format!("  n{i} -->|{role}| n{j}\n"));
                        }
                    }
                }
            }
            if dot {
                s.push_str("}\n");
            }
        }
    }
    s
}
