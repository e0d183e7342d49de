//! The plan as a DAG: construction, dependency order, target selection and rendering.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fmt::Write as _;

use anyhow::{bail, Result};
use petgraph::Graph;

use crate::plan::Plan;

/// One petgraph node per plan node (weight = index into `plan.nodes`, and the petgraph index
/// equals it), one edge input → user per reference (weight = role).
pub fn build(plan: &Plan) -> Graph<usize, String> {
    let mut g = Graph::with_capacity(plan.nodes.len(), plan.nodes.len());
    let ids: Vec<_> = (0..plan.nodes.len()).map(|i| g.add_node(i)).collect();
    for (i, node) in plan.nodes.iter().enumerate() {
        for (role, inputs) in &node.inputs {
            for &j in inputs {
                g.add_edge(ids[j], ids[i], role.clone());
            }
        }
    }
    g
}

/// A dependency order of `deps.len()` items where `deps[i]` lists what `i` needs first. Among
/// ready items the smallest index goes first, so the order follows declaration order wherever
/// the dependencies allow. On a cycle, returns one cycle `[a, b, ..., a]` where each item needs
/// the next.
pub fn topo_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut users = vec![Vec::new(); n];
    let mut missing = vec![0usize; n];
    for (i, ds) in deps.iter().enumerate() {
        let unique: BTreeSet<usize> = ds.iter().copied().collect();
        missing[i] = unique.len();
        for d in unique {
            users[d].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| missing[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            missing[u] -= 1;
            if missing[u] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every item left waits on another item left: walking "needs" edges must revisit one.
    let left: Vec<bool> = missing.iter().map(|&m| m > 0).collect();
    let mut path = vec![left.iter().position(|&l| l).expect("some item is left")];
    loop {
        let here = *path.last().expect("non-empty");
        let next = *deps[here]
            .iter()
            .filter(|&&d| left[d])
            .min()
            .expect("a left item waits on a left item");
        if let Some(start) = path.iter().position(|&p| p == next) {
            let mut cycle = path.split_off(start);
            cycle.push(next);
            return Err(cycle);
        }
        path.push(next);
    }
}

/// Every node `idx` reads from, directly or not (excluding `idx`).
pub fn ancestors(plan: &Plan, idx: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![idx];
    while let Some(i) = stack.pop() {
        for &j in plan.nodes[i].inputs.values().flatten() {
            if seen.insert(j) {
                stack.push(j);
            }
        }
    }
    seen
}

/// Every node that reads from `idx`, directly or not (excluding `idx`).
pub fn descendants(plan: &Plan, idx: usize) -> BTreeSet<usize> {
    // Plan nodes are in topological order: a single forward sweep suffices.
    let mut reached = BTreeSet::from([idx]);
    for (i, node) in plan.nodes.iter().enumerate().skip(idx + 1) {
        if node.inputs.values().flatten().any(|j| reached.contains(j)) {
            reached.insert(i);
        }
    }
    reached.remove(&idx);
    reached
}

/// Indices of the nodes matching `name`: the exact node name, or a base name (all its sweep points).
pub fn matching(plan: &Plan, name: &str) -> Result<Vec<usize>> {
    let found: Vec<usize> = plan
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.name == name || n.base == name)
        .map(|(i, _)| i)
        .collect();
    if found.is_empty() {
        let bases: BTreeSet<&str> = plan.nodes.iter().map(|n| n.base.as_str()).collect();
        bail!(
            "no node named `{name}` in pipeline {}; nodes: {}",
            plan.name,
            bases.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(found)
}

/// The nodes a run should execute, ascending (hence in dependency order).
///
/// - neither: every node;
/// - `only`: exactly the named nodes (a base name selects all its sweep points); their inputs
///   must come from the cache, which the executor checks;
/// - `until`: that node (all its sweep points, for a base name) and everything it reads from.
pub fn select(plan: &Plan, only: &[String], until: Option<&str>) -> Result<Vec<usize>> {
    match (only.is_empty(), until) {
        (true, None) => Ok((0..plan.nodes.len()).collect()),
        (false, Some(_)) => bail!("--only and --until cannot be combined; use one of them"),
        (false, None) => {
            let mut set = BTreeSet::new();
            for name in only {
                set.extend(matching(plan, name)?);
            }
            Ok(set.into_iter().collect())
        }
        (true, Some(name)) => {
            let mut set = BTreeSet::new();
            for i in matching(plan, name)? {
                set.insert(i);
                set.extend(ancestors(plan, i));
            }
            Ok(set.into_iter().collect())
        }
    }
}

/// Output formats of `semiflow dag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per node with its kind and inputs.
    Text,
    /// Graphviz.
    Dot,
    /// A Mermaid flowchart (renders on GitHub).
    Mermaid,
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "text" => Ok(Format::Text),
            "dot" => Ok(Format::Dot),
            "mermaid" => Ok(Format::Mermaid),
            other => bail!("unknown DAG format `{other}`; use text, dot or mermaid"),
        }
    }
}

pub fn render(plan: &Plan, format: Format) -> String {
    match format {
        Format::Text => render_text(plan),
        Format::Dot => render_dot(plan),
        Format::Mermaid => render_mermaid(plan),
    }
}

fn render_text(plan: &Plan) -> String {
    let name_w = plan
        .nodes
        .iter()
        .map(|n| n.name.chars().count())
        .max()
        .unwrap_or(0);
    let kind_w = plan.nodes.iter().map(|n| n.kind.len()).max().unwrap_or(0);
    let mut out = format!("{}: {} nodes\n", plan.name, plan.nodes.len());
    for node in &plan.nodes {
        let inputs: Vec<String> = node
            .inputs
            .iter()
            .map(|(role, ids)| {
                let names: Vec<&str> = ids.iter().map(|&j| plan.nodes[j].name.as_str()).collect();
                format!("{role}: {}", names.join(", "))
            })
            .collect();
        let line = if inputs.is_empty() {
            format!("{:name_w$}  {}", node.name, node.kind)
        } else {
            format!(
                "{:name_w$}  {:kind_w$}  <- {}",
                node.name,
                node.kind,
                inputs.join("; ")
            )
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn render_dot(plan: &Plan) -> String {
    let q = |s: &str| {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        format!("\"{escaped}\"")
    };
    let mut out = format!(
        "digraph {} {{\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        q(&plan.name)
    );
    for (i, node) in plan.nodes.iter().enumerate() {
        let shape = if node.dataset_root.is_some() {
            ", shape=cylinder"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  n{i} [label={}{shape}];",
            q(&format!("{}\n({})", node.name, node.kind))
        );
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        for (role, ids) in &node.inputs {
            for j in ids {
                let _ = writeln!(out, "  n{j} -> n{i} [label={}];", q(role));
            }
        }
    }
    out.push_str("}\n");
    out
}

fn render_mermaid(plan: &Plan) -> String {
    // Mermaid labels are quoted; a literal quote is written as an entity.
    let q = |s: &str| s.replace('"', "#quot;");
    let mut out = String::from("flowchart LR\n");
    for (i, node) in plan.nodes.iter().enumerate() {
        let label = format!("{}<br/>({})", q(&node.name), node.kind);
        let _ = if node.dataset_root.is_some() {
            writeln!(out, "  n{i}[(\"{label}\")]")
        } else {
            writeln!(out, "  n{i}[\"{label}\"]")
        };
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        for (role, ids) in &node.inputs {
            for j in ids {
                let _ = writeln!(out, "  n{j} -->|{}| n{i}", q(role));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_order_prefers_declaration_order() {
        // 0 needs 2, 1 needs nothing, 2 needs 1.
        assert_eq!(topo_order(&[vec![2], vec![], vec![1]]), Ok(vec![1, 2, 0]));
        assert_eq!(
            topo_order(&[vec![], vec![0], vec![0, 0]]),
            Ok(vec![0, 1, 2])
        );
    }

    #[test]
    fn topo_order_reports_a_cycle() {
        assert_eq!(
            topo_order(&[vec![], vec![2, 0], vec![1]]),
            Err(vec![1, 2, 1])
        );
        assert_eq!(topo_order(&[vec![0]]), Err(vec![0, 0]));
    }
}
