//! What a run would do and why: `semiflow status` and `semiflow run --dry-run`.
//!
//! A node is `cached` when its key has a usable record, `will-run` otherwise, and `blocked` when it
//! cannot run (an input cannot be built). When an input will be rebuilt, the node's key cannot be
//! known yet: it is `will-run` with key `pending input` and the reason `input <role>: will be rebuilt`.
//! Reasons compare the key components with those of the latest record under the same node name.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::exec::{kind_spec, matches_any, needed, node_key};
use crate::key::{components, short, KeyInput};
use crate::plan::Plan;
use crate::store::{Miss, Record, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Cached,
    WillRun,
    Blocked,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Cached => "cached",
            State::WillRun => "will-run",
            State::Blocked => "blocked",
        }
    }
}

/// One row of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub kind: String,
    /// The key, or `pending input` when an input will be rebuilt first.
    pub key: String,
    pub state: State,
    pub reasons: Vec<String>,
}

pub const PENDING: &str = "pending input";

/// The state of every selected node (in plan order), as `run` would find it.
pub fn status(
    store: &Store,
    plan: &Plan,
    selection: &[usize],
    force: &[String],
) -> Result<Vec<NodeStatus>> {
    let need = needed(plan, selection);
    let mut selected = vec![false; plan.nodes.len()];
    for &i in selection {
        selected[i] = true;
    }
    // Per node: its state and, when cached, its artifact hash.
    let mut artifact: Vec<Option<String>> = vec![None; plan.nodes.len()];
    let mut rows: Vec<Option<NodeStatus>> = vec![None; plan.nodes.len()];
    for (i, node) in plan.nodes.iter().enumerate() {
        if !need[i] {
            continue;
        }
        let mut reasons = Vec::new();
        let mut pending_roles = Vec::new();
        let mut blocked = false;
        let mut hashes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (role, idx) in &node.inputs {
            for &j in idx {
                let up = rows[j].as_ref().expect("inputs come first");
                match up.state {
                    State::Blocked => {
                        blocked = true;
                        reasons.push(format!("input {role}: {} is blocked", plan.nodes[j].name));
                    }
                    State::WillRun => {
                        if !pending_roles.contains(role) {
                            pending_roles.push(role.clone());
                            reasons.push(format!("input {role}: will be rebuilt"));
                        }
                    }
                    State::Cached => hashes
                        .entry(role.clone())
                        .or_default()
                        .push(artifact[j].clone().expect("cached has an artifact")),
                }
            }
        }
        let previous = store.latest_record(&node.name)?;
        let row = |state, key: String, reasons| NodeStatus {
            node: node.name.clone(),
            kind: node.kind.clone(),
            key,
            state,
            reasons,
        };
        if blocked {
            rows[i] = Some(row(State::Blocked, PENDING.to_string(), reasons));
            continue;
        }
        let spec = match kind_spec(&node.kind) {
            Ok(s) => s,
            Err(e) => {
                rows[i] = Some(row(
                    State::Blocked,
                    PENDING.to_string(),
                    vec![e.to_string()],
                ));
                continue;
            }
        };
        let forced = selected[i] && matches_any(node, force);
        if !pending_roles.is_empty() {
            // Key unknown: compare what is known (params, code, seed), not the inputs.
            let known = components(&KeyInput {
                kind: &node.kind,
                kind_version: spec.version,
                params: &node.params,
                inputs: &BTreeMap::new(),
                dataset: None,
                seed: node.seed,
                numerics: spec.numerics_version(),
            });
            if let Some(prev) = &previous {
                let old: Vec<(String, String)> = prev
                    .components
                    .iter()
                    .filter(|(n, _)| !n.starts_with("input ") && n != "dataset")
                    .cloned()
                    .collect();
                reasons.extend(diff_components(&old, &known));
            }
            if forced {
                reasons.push("forced (--force)".into());
            }
            let state = if selected[i] {
                State::WillRun
            } else {
                State::Blocked
            };
            if !selected[i] {
                reasons.push("not selected, and its inputs will change".into());
            }
            rows[i] = Some(row(state, PENDING.to_string(), reasons));
            continue;
        }
        let key = match node_key(store, node, &hashes) {
            Ok(k) => k,
            Err(e) => {
                rows[i] = Some(row(
                    State::Blocked,
                    PENDING.to_string(),
                    vec![format!("{e:#}")],
                ));
                continue;
            }
        };
        let lookup = store.lookup(&key.hex, false)?;
        let (state, reasons) = match lookup {
            Ok(rec) if !forced => {
                artifact[i] = Some(rec.artifact);
                (State::Cached, Vec::new())
            }
            Ok(_) => (State::WillRun, vec!["forced (--force)".to_string()]),
            Err(miss) => {
                let mut reasons = Vec::new();
                if let Miss::Blob { .. } = miss {
                    reasons.push(miss.to_string());
                } else {
                    match &previous {
                        Some(prev) if prev.key != key.hex => {
                            reasons.extend(diff_components(&prev.components, &key.components));
                            if reasons.is_empty() {
                                reasons.push(format!(
                                    "key changed: {} → {}",
                                    short(&prev.key),
                                    short(&key.hex)
                                ));
                            }
                        }
                        _ => reasons.push("never built".into()),
                    }
                }
                if forced {
                    reasons.push("forced (--force)".into());
                }
                if selected[i] {
                    (State::WillRun, reasons)
                } else {
                    reasons.push("not built and not selected".into());
                    (State::Blocked, reasons)
                }
            }
        };
        rows[i] = Some(row(state, key.hex, reasons));
    }
    Ok(selection
        .iter()
        .map(|&i| rows[i].clone().expect("selected nodes are needed"))
        .collect())
}

/// `name: old → new` for every component that differs, appears or disappears.
pub fn diff_components(old: &[(String, String)], new: &[(String, String)]) -> Vec<String> {
    let old_map: BTreeMap<&str, &str> = old.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let new_map: BTreeMap<&str, &str> = new.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let mut out = Vec::new();
    for (name, v) in new {
        match old_map.get(name.as_str()) {
            Some(o) if *o != v => out.push(format!("{name}: {} → {}", short(o), short(v))),
            None => out.push(format!("{name}: (unset) → {}", short(v))),
            _ => {}
        }
    }
    for (name, o) in old {
        if !new_map.contains_key(name.as_str()) {
            out.push(format!("{name}: {} → (unset)", short(o)));
        }
    }
    out
}

/// Human-readable table: `state  node  key  (reasons)`; with `dry_run` the states read as verbs.
pub fn print_text(rows: &[NodeStatus], dry_run: bool) {
    let w = rows.iter().map(|r| r.node.len()).max().unwrap_or(4);
    for r in rows {
        let key = if r.key == PENDING {
            r.key.clone()
        } else {
            short(&r.key)
        };
        let reasons = if r.reasons.is_empty() {
            String::new()
        } else {
            format!("  ({})", r.reasons.join("; "))
        };
        let state = match (dry_run, r.state) {
            (false, s) => s.as_str(),
            (true, State::Cached) => "cached",
            (true, State::WillRun) => "would run",
            (true, State::Blocked) => "blocked",
        };
        println!("{state:<9}  {:<w$}  {:<13}{}", r.node, key, reasons);
    }
}

/// For each plan node, the stored record its current key names (None when it would have to run).
///
/// This is what `report` and `audit` read: node names are shared across pipeline files in one store
/// (every pipeline has a `pretrain`), so "the latest record under this name" could come from
/// another pipeline or an older version of this one; the key cannot.
pub fn current_records(store: &Store, plan: &Plan) -> Result<Vec<Option<Record>>> {
    let all: Vec<usize> = (0..plan.nodes.len()).collect();
    let rows = status(store, plan, &all, &[])?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(match row.state {
            State::Cached => store.record(&row.key)?,
            State::WillRun | State::Blocked => None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn diff_names_changed_added_and_removed_components() {
        let old = c(&[
            ("param epochs", "30"),
            ("code finetune", "v1"),
            ("param lr", "0.1"),
        ]);
        let new = c(&[
            ("param epochs", "60"),
            ("code finetune", "v2"),
            ("param wd", "0"),
        ]);
        assert_eq!(
            diff_components(&old, &new),
            [
                "param epochs: 30 → 60",
                "code finetune: v1 → v2",
                "param wd: (unset) → 0",
                "param lr: 0.1 → (unset)"
            ]
        );
    }
}
