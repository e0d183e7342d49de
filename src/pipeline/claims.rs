//! `[claims.NAME]`: comparisons between methods that `semiflow report` and `audit --claims` check.
//!
//! ```toml
//! [claims.pretraining_helps]
//! better = "finetune"            # a node (its base name) whose models an eval node scores
//! than = "supervised"            # another such node
//! metric = "top1"                # top1 | top5 (default top1)
//! split = "test"                 # test | val (default test)
//! at = { label_fraction = [0.01, 0.1] }   # sweep points (default: every point with both)
//! margin = 0.0                   # percentage points `better` must lead by (default 0)
//! kind = "better"                # better (strictly, beyond noise) | at_least (default better)
//! description = "pretraining + fine-tuning beats supervised training on the same labels"
//! gain_over = ["finetune_small", "supervised_small"]  # optional: compare the gain better − than
//!                                                     # with this gain instead of with zero
//! ```

use super::error::{suggest, Problem, Problems};
use super::schema::{check_keys, type_problem, SweepVar};
use super::spanned::{join, Kind, Table};
use crate::plan::{Claim, ClaimKind};

const CLAIM_KEYS: &[&str] = &[
    "better",
    "than",
    "metric",
    "split",
    "at",
    "margin",
    "kind",
    "description",
    "gain_over",
];
pub const METRICS: &[&str] = &["top1", "top5"];
const SPLITS: &[&str] = &["test", "val"];
const KINDS: &[&str] = &["better", "at_least"];

/// Read and check every claim. `nodes` are the declared node names.
pub(super) fn read_claims(
    t: &Table,
    nodes: &[&str],
    sweep: &[SweepVar],
    problems: &mut Problems,
) -> Vec<Claim> {
    let mut out = Vec::new();
    for (key, value) in &t.entries {
        let path = join("claims", &key.name);
        let Some(c) = value.as_table() else {
            problems.push(
                type_problem(value, &path, "a table")
                    .help(format!("write it as a section: [{path}]")),
            );
            continue;
        };
        if let Some(claim) = read_claim(&key.name, c, &value.span, &path, nodes, sweep, problems) {
            out.push(claim);
        }
    }
    out
}

fn read_claim(
    name: &str,
    t: &Table,
    span: &super::error::Span,
    path: &str,
    nodes: &[&str],
    sweep: &[SweepVar],
    problems: &mut Problems,
) -> Option<Claim> {
    check_keys(t, CLAIM_KEYS, path, "keys of a claim", problems);
    let mut ok = true;
    let mut node_ref =
        |key: &str| -> Option<String> {
            let Some(v) = t.get(key) else {
                problems.push(
                    Problem::at(
                        span,
                        join(path, key),
                        format!("missing required key `{key}`"),
                    )
                    .help(format!(
                        "name a node whose models an eval node scores, e.g. `{key} = \"finetune\"`"
                    )),
                );
                return None;
            };
            let Some(s) = v.as_str() else {
                problems.push(type_problem(v, &join(path, key), "a node name (string)"));
                return None;
            };
            if !nodes.contains(&s) {
                problems.push(
                    Problem::at(&v.span, join(path, key), format!("unknown node `{s}`"))
                        .help(suggest(s, "nodes of this pipeline", nodes)),
                );
                return None;
            }
            Some(s.to_string())
        };
    let better = node_ref("better");
    let than = node_ref("than");
    let mut choice = |key: &str, allowed: &[&str], default: &str| -> String {
        match t.get(key) {
            None => default.to_string(),
            Some(v) => match v.as_str() {
                Some(s) if allowed.contains(&s) => s.to_string(),
                Some(s) => {
                    problems.push(
                        Problem::at(&v.span, join(path, key), format!("unknown {key} `{s}`"))
                            .help(suggest(s, &format!("valid values of `{key}`"), allowed)),
                    );
                    ok = false;
                    default.to_string()
                }
                None => {
                    problems.push(type_problem(v, &join(path, key), "a string"));
                    ok = false;
                    default.to_string()
                }
            },
        }
    };
    let metric = choice("metric", METRICS, "top1");
    let split = choice("split", SPLITS, "test");
    let kind = match choice("kind", KINDS, "better").as_str() {
        "at_least" => ClaimKind::AtLeast,
        _ => ClaimKind::Better,
    };
    let margin = match t.get("margin") {
        None => 0.0,
        Some(v) => match v.kind {
            Kind::Float(f) if f.is_finite() => f,
            Kind::Integer(i) => i as f64,
            _ => {
                problems.push(type_problem(
                    v,
                    &join(path, "margin"),
                    "a number of percentage points",
                ));
                ok = false;
                0.0
            }
        },
    };
    let description = match t.get("description") {
        None => String::new(),
        Some(v) => match v.as_str() {
            Some(s) => s.to_string(),
            None => {
                problems.push(type_problem(v, &join(path, "description"), "a string"));
                ok = false;
                String::new()
            }
        },
    };
    let mut at = Vec::new();
    if let Some(v) = t.get("at") {
        let at_path = join(path, "at");
        match v.as_table() {
            None => {
                problems.push(
                    type_problem(v, &at_path, "a table of sweep values")
                        .help("e.g. `at = { label_fraction = [0.01, 0.1] }`"),
                );
                ok = false;
            }
            Some(points) => {
                for (var, vals) in &points.entries {
                    let var_path = join(&at_path, &var.name);
                    let Some(decl) = sweep.iter().find(|s| s.name == var.name) else {
                        let names: Vec<&str> = sweep.iter().map(|s| s.name.as_str()).collect();
                        problems.push(
                            Problem::at(
                                &var.span,
                                var_path,
                                format!("`{}` is not a sweep variable", var.name),
                            )
                            .help(suggest(
                                &var.name,
                                "sweep variables",
                                &names,
                            )),
                        );
                        ok = false;
                        continue;
                    };
                    let items: Vec<&super::spanned::Value> = match &vals.kind {
                        Kind::Array(items) => items.iter().collect(),
                        _ => vec![vals],
                    };
                    let mut chosen = Vec::new();
                    for item in items {
                        let j = item.to_json();
                        if !decl.values.contains(&j) {
                            let listed: Vec<String> =
                                decl.values.iter().map(|v| v.to_string()).collect();
                            problems.push(
                                Problem::at(
                                    &item.span,
                                    var_path.clone(),
                                    format!("{j} is not a value of sweep variable `{}`", var.name),
                                )
                                .help(format!("its values: {}", listed.join(", "))),
                            );
                            ok = false;
                            continue;
                        }
                        chosen.push(j);
                    }
                    at.push((var.name.clone(), chosen));
                }
            }
        }
    }
    let mut gain_over = None;
    if let Some(v) = t.get("gain_over") {
        let gp = join(path, "gain_over");
        let pair: Option<Vec<&str>> = match &v.kind {
            Kind::Array(items) if items.len() == 2 => items.iter().map(|i| i.as_str()).collect(),
            _ => None,
        };
        match pair {
            None => {
                problems.push(
                    type_problem(v, &gp, "two node names")
                        .help("e.g. `gain_over = [\"finetune_small\", \"supervised_small\"]`"),
                );
                ok = false;
            }
            Some(p) => {
                for name in &p {
                    if !nodes.contains(name) {
                        problems.push(
                            Problem::at(&v.span, gp.clone(), format!("unknown node `{name}`"))
                                .help(suggest(name, "nodes of this pipeline", nodes)),
                        );
                        ok = false;
                    }
                }
                gain_over = Some((p[0].to_string(), p[1].to_string()));
            }
        }
    }
    if better.is_some() && better == than {
        problems.push(Problem::at(
            span,
            join(path, "than"),
            "`better` and `than` name the same node",
        ));
        ok = false;
    }
    Some(Claim {
        name: name.to_string(),
        better: better?,
        than: than?,
        metric,
        split,
        at,
        margin,
        kind,
        description,
        gain_over,
    })
    .filter(|_| ok)
}
