//! The plan as a DAG: construction, dependency order, target selection and rendering.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fmt::Write as _;

use anyhow::{bail, Result};
use petgraph::dot::{Config, Dot};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};
use petgraph::{Direction, Graph};

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

/// The "needs" graph of `deps.len()` items: an edge d → i for every item d that `deps[i]` lists
/// (duplicates once).
fn deps_graph(deps: &[Vec<usize>]) -> DiGraph<(), ()> {
    let mut g = DiGraph::with_capacity(deps.len(), deps.len());
    for _ in deps {
        g.add_node(());
    }
    for (i, ds) in deps.iter().enumerate() {
        for d in ds.iter().copied().collect::<BTreeSet<usize>>() {
            g.add_edge(NodeIndex::new(d), NodeIndex::new(i), ());
        }
    }
    g
}

/// A dependency order of `deps.len()` items where `deps[i]` lists what `i` needs first. Among
/// ready items the smallest index goes first, so the order follows declaration order wherever
/// the dependencies allow (petgraph's own `toposort` gives a valid order, but not that one). On a
/// cycle, returns one cycle `[a, b, ..., a]` where each item needs the next.
pub fn topo_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let g = deps_graph(deps);
    if let Err(cycle) = petgraph::algo::toposort(&g, None) {
        return Err(name_cycle(&g, cycle.node_id().index()));
    }
    let mut missing: Vec<usize> = g
        .node_indices()
        .map(|n| g.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..missing.len())
        .filter(|&i| missing[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(missing.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for u in g.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
            missing[u.index()] -= 1;
            if missing[u.index()] == 0 {
                ready.push(Reverse(u.index()));
            }
        }
    }
    Ok(order)
}

/// The cycle through `start`'s strongly connected component, read in "needs" order from its
/// smallest item: `[a, b, ..., a]`, each needing the next (the smallest needed item at each step,
/// so the cycle named is always the same).
fn name_cycle(g: &DiGraph<(), ()>, start: usize) -> Vec<usize> {
    let component: BTreeSet<usize> = petgraph::algo::tarjan_scc(g)
        .into_iter()
        .map(|c| c.into_iter().map(|n| n.index()).collect::<BTreeSet<_>>())
        .find(|c| c.contains(&start))
        .expect("every node is in a component");
    let first = *component.first().expect("non-empty component");
    let mut path = vec![first];
    loop {
        let here = NodeIndex::new(*path.last().expect("non-empty"));
        let next = g
            .neighbors_directed(here, Direction::Incoming)
            .map(|n| n.index())
            .filter(|n| component.contains(n))
            .min()
            .expect("a node of a cycle needs a node of its cycle");
        if let Some(at) = path.iter().position(|&p| p == next) {
            let mut cycle = path.split_off(at);
            cycle.push(next);
            return cycle;
        }
        path.push(next);
    }
}

/// The nodes reachable from `idx` along `dir` in the plan's graph, excluding `idx`.
fn reachable(plan: &Plan, idx: usize, dir: Direction) -> BTreeSet<usize> {
    let g = build(plan);
    let start = NodeIndex::new(idx);
    let mut seen = BTreeSet::new();
    match dir {
        Direction::Outgoing => {
            let mut walk = Dfs::new(&g, start);
            while let Some(n) = walk.next(&g) {
                seen.insert(n.index());
            }
        }
        Direction::Incoming => {
            let rev = Reversed(&g);
            let mut walk = Dfs::new(rev, start);
            while let Some(n) = walk.next(rev) {
                seen.insert(n.index());
            }
        }
    }
    seen.remove(&idx);
    seen
}

/// Every node `idx` reads from, directly or not (excluding `idx`).
pub fn ancestors(plan: &Plan, idx: usize) -> BTreeSet<usize> {
    reachable(plan, idx, Direction::Incoming)
}

/// Every node that reads from `idx`, directly or not (excluding `idx`).
pub fn descendants(plan: &Plan, idx: usize) -> BTreeSet<usize> {
    reachable(plan, idx, Direction::Outgoing)
}

/// Every node the selection needs: the selection and all its ancestors, as a mask over
/// `plan.nodes`.
pub fn needed(plan: &Plan, selection: &[usize]) -> Vec<bool> {
    let g = build(plan);
    let rev = Reversed(&g);
    let mut mask = vec![false; plan.nodes.len()];
    for &i in selection {
        let mut walk = Dfs::new(rev, NodeIndex::new(i));
        while let Some(n) = walk.next(rev) {
            mask[n.index()] = true;
        }
    }
    mask
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

/// Graphviz, written by `petgraph::dot` (node ids are plan indices) inside a named digraph.
fn render_dot(plan: &Plan) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut g: Graph<String, String> = Graph::with_capacity(plan.nodes.len(), plan.nodes.len());
    let ids: Vec<_> = plan
        .nodes
        .iter()
        .map(|n| g.add_node(format!("{}\n({})", n.name, n.kind)))
        .collect();
    for (i, node) in plan.nodes.iter().enumerate() {
        for (role, inputs) in &node.inputs {
            for &j in inputs {
                g.add_edge(ids[j], ids[i], role.clone());
            }
        }
    }
    let node_attrs = |_: &Graph<String, String>, (n, _): (NodeIndex, &String)| {
        if plan.nodes[n.index()].dataset_root.is_some() {
            "shape=cylinder ".to_string()
        } else {
            String::new()
        }
    };
    let edge_attrs = |_: &Graph<String, String>, _| String::new();
    let body = Dot::with_attr_getters(&g, &[Config::GraphContentOnly], &edge_attrs, &node_attrs);
    format!(
        "digraph {} {{\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n{body}}}\n",
        q(&plan.name)
    )
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
