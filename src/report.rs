//! `semiflow report`: a Markdown table of the pipeline's eval metrics and SVG plots.
//!
//! Reads only the index: for each node, the record of the key the pipeline file gives it now
//! (not the latest record under its name, which another pipeline in the same store may share).
//! Plots: one training-loss curve per training node (`series.loss`), and — when eval nodes carry a
//! `label_fraction` sweep point — top-1 vs label fraction, one line per method (the base names of the
//! evaluated models).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use semiflow_stages::api::{EvalSpec, Role};

use crate::plan::Plan;
use crate::store::{Record, Store};

/// What `report` wrote, and the claims it checked.
pub struct Written {
    pub files: Vec<String>,
    pub claims: Vec<crate::claims::Check>,
}

/// Write `report.md` and the SVGs into `out`.
pub fn report(store: &Store, plan: &Plan, out: &Path) -> Result<Written> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let latest = current(store, plan)?;
    let mut written = Vec::new();
    let mut md = format!("# {}\n\n", plan.name);

    // Metrics: one row per (eval node, evaluated model), named by the model's node base name.
    let rows = rows_of(plan, &latest);
    let point_cols: Vec<String> = plan.sweep.iter().map(|(k, _)| k.clone()).collect();
    // One colour per method (node base name) across every chart of this report.
    let palette = crate::plots::colors(
        rows.iter().map(|r| r.method.as_str()).chain(
            latest
                .iter()
                .filter(|(_, r)| !r.series.is_empty())
                .map(|(i, _)| plan.nodes[*i].base.as_str()),
        ),
    );
    let mut metric_cols: Vec<&String> = rows.iter().flat_map(|r| r.metrics.keys()).collect();
    metric_cols.sort();
    metric_cols.dedup();
    md.push_str("## Evaluation\n\n");
    if rows.is_empty() {
        md.push_str("No eval node has run yet.\n\n");
    } else {
        let pivots = [
            ("test", "Top-1 accuracy (test) by method and label fraction"),
            (
                "val",
                "Top-1 accuracy on the validation holdout (train images never labeled; for choosing hyperparameters)",
            ),
        ];
        for (split, title) in pivots {
            if let Some(pivot) = top1_pivot(plan, &rows, split, title) {
                md.push_str(&pivot);
            }
        }
        let mut header = vec![
            "method".to_string(),
            "model node".to_string(),
            "split".to_string(),
        ];
        header.extend(point_cols.iter().cloned());
        header.extend(metric_cols.iter().map(|s| s.to_string()));
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
        for row in &rows {
            let mut cells = vec![row.method.clone(), row.model.clone(), row.split.clone()];
            for c in &point_cols {
                cells.push(
                    row.point
                        .get(c)
                        .map(render_value)
                        .unwrap_or_else(|| "-".into()),
                );
            }
            for c in &metric_cols {
                cells.push(
                    row.metrics
                        .get(*c)
                        .map(|v| format!("{v:.4}"))
                        .unwrap_or_else(|| "-".into()),
                );
            }
            let _ = writeln!(md, "| {} |", cells.join(" | "));
        }
        md.push('\n');
    }

    // The pipeline's claims, checked with their uncertainty.
    let checks = crate::claims::check(&plan.claims, &rows);
    if !checks.is_empty() {
        md.push_str("## Claims\n\n");
        md.push_str(&format!(
            "Each `[claims.*]` of the pipeline file at each point: difference in percentage points, ±2σ \
             (binomial standard error on the scored images for one seed; standard error of the mean \
             over seeds where swept), verdict: holds beyond 2σ, fails beyond 2σ, else within noise \
             (`at_least`: holds at ≥ the margin). Checked again by `semiflow audit FILE --claims`.\n\n{}\n",
            crate::claims::markdown(&checks)
        ));
        let file = "claims.json".to_string();
        std::fs::write(
            out.join(&file),
            serde_json::to_string_pretty(&checks)? + "\n",
        )?;
        written.push(file);
    }

    // Per-epoch curves: training loss of every training node, and the pretrain kNN monitor.
    let curves = [
        ("loss", "Training loss", "training loss", "loss", false),
        (
            "knn_top1",
            "kNN accuracy of the encoder per epoch (pretrain `knn_monitor`)",
            "kNN top-1 per epoch",
            "kNN top-1",
            true,
        ),
    ];
    for (series, heading, title, y, percent) in curves {
        let mut section = String::new();
        for (i, r) in &latest {
            let Some(vals) = r.series.get(series).filter(|s| !s.is_empty()) else {
                continue;
            };
            // This pipeline's node name, not the record's: a record built by another pipeline
            // sharing the same key (cifar10-seeds.toml's seed-0 nodes) was stored under its name.
            let name = &plan.nodes[*i].name;
            let file = format!("{}-{}.svg", sanitize(series), sanitize(name));
            let points = vals
                .iter()
                .enumerate()
                .map(|(e, v)| crate::plots::Point {
                    x: (e + 1) as f64,
                    y: *v,
                    err: None,
                })
                .collect();
            let line = crate::plots::Series {
                name: name.clone(),
                color: palette[&plan.nodes[*i].base],
                points,
            };
            crate::plots::line_chart(
                &out.join(&file),
                &format!("{name}: {title}"),
                &crate::plots::XAxis::Epochs,
                y,
                percent,
                &[line],
            )?;
            let _ = writeln!(section, "![{name}]({file})\n");
            written.push(file);
        }
        if !section.is_empty() || series == "loss" {
            let _ = writeln!(md, "## {heading}\n");
            md.push_str(&section);
        }
    }

    // Accuracy vs label fraction, one line per method: mean ± std where a cell holds several
    // models (seeds), each model counted once.
    let mut cells: BTreeMap<String, BTreeMap<String, BTreeMap<&str, f64>>> = BTreeMap::new();
    let mut fractions: Vec<f64> = Vec::new();
    for row in rows.iter().filter(|r| r.split == "test") {
        let (Some(frac), Some(top1)) = (
            row.fraction.as_ref().and_then(|v| v.as_f64()),
            row.metrics.get("top1"),
        ) else {
            continue;
        };
        fractions.push(frac);
        cells
            .entry(row.method.clone())
            .or_default()
            .entry(format!("{frac}"))
            .or_default()
            .insert(row.model.as_str(), *top1);
    }
    if !cells.is_empty() {
        let swept: Vec<f64> = plan
            .sweep
            .iter()
            .find(|(k, _)| k == LABEL_FRACTION)
            .map(|(_, v)| v.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        fractions.extend(swept);
        fractions.sort_by(f64::total_cmp);
        fractions.dedup();
        let series: Vec<crate::plots::Series> = cells
            .into_iter()
            .map(|(method, by_frac)| {
                let mut points: Vec<crate::plots::Point> = by_frac
                    .into_iter()
                    .map(|(frac, models)| {
                        let vals: Vec<f64> = models.into_values().collect();
                        let (mean, std) = mean_std(&vals);
                        crate::plots::Point {
                            x: frac.parse().unwrap_or(f64::NAN),
                            y: mean,
                            err: std,
                        }
                    })
                    .collect();
                points.sort_by(|a, b| a.x.total_cmp(&b.x));
                crate::plots::Series {
                    color: palette[&method],
                    name: method,
                    points,
                }
            })
            .collect();
        let file = "top1-vs-label-fraction.svg".to_string();
        crate::plots::line_chart(
            &out.join(&file),
            "test top-1 vs labeled fraction (mean ± std over seeds where swept)",
            &crate::plots::XAxis::Fractions(fractions),
            "top-1 (test)",
            true,
            &series,
        )?;
        let _ = writeln!(
            md,
            "## Accuracy vs label fraction\n\n![top-1 vs label fraction]({file})\n"
        );
        written.push(file);
    }
    md.push_str(&stage_times(plan, &latest));
    std::fs::write(out.join("report.md"), md)?;
    written.insert(0, "report.md".into());
    Ok(Written {
        files: written,
        claims: checks,
    })
}

/// Every evaluated model of the pipeline's current eval records (what claims are checked on).
pub fn eval_rows(store: &Store, plan: &Plan) -> Result<Vec<MethodRow>> {
    Ok(rows_of(plan, &current(store, plan)?))
}

/// The records of the keys the pipeline file gives its nodes now, by plan index.
fn current(store: &Store, plan: &Plan) -> Result<Vec<(usize, Record)>> {
    Ok(crate::explain::current_records(store, plan)?
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .collect())
}

/// The evaluated models of the eval records among `latest`.
fn rows_of(plan: &Plan, latest: &[(usize, Record)]) -> Vec<MethodRow> {
    latest
        .iter()
        .filter(|(_, r)| eval_spec(&r.kind).is_some())
        .flat_map(|(i, r)| method_rows(plan, *i, r))
        .collect()
}

/// One evaluated model inside an eval node's record.
pub struct MethodRow {
    /// Base name of the evaluated node (`finetune`), i.e. the method.
    pub method: String,
    /// Full name of the evaluated node (`finetune[label_fraction=0.01]`).
    pub model: String,
    /// Sweep point of the evaluated node.
    pub point: BTreeMap<String, serde_json::Value>,
    /// Its metrics with the eval kind's `model<i>.` prefix removed.
    pub metrics: BTreeMap<String, f64>,
    /// The label fraction it was trained with: its sweep point's, or that of the split its labels
    /// (or its teacher's labels) came from, so unswept 1%-only variants land in the 1% column.
    pub fraction: Option<serde_json::Value>,
    /// The eval's `split` parameter: "test" (the default), "val" or "train".
    pub split: String,
    /// How many images the eval scored (its `details.n`), for binomial standard errors.
    pub n: Option<f64>,
}

/// The sweep variable the report puts on its x-axis and claims' `at` tables name.
pub const LABEL_FRACTION: &str = "label_fraction";

/// The eval conventions of kind `kind`, if it evaluates models.
pub fn eval_spec(kind: &str) -> Option<&'static EvalSpec> {
    semiflow_stages::api::kind(kind).and_then(|k| k.eval())
}

/// See [`MethodRow::fraction`].
fn label_fraction(plan: &Plan, idx: usize) -> Option<serde_json::Value> {
    let node = &plan.nodes[idx];
    if let Some(v) = node.point.get(LABEL_FRACTION) {
        return Some(v.clone());
    }
    match semiflow_stages::api::kind(&node.kind).map(|k| k.role) {
        Some(Role::Split { fraction }) => node.params.get(fraction).cloned(),
        Some(Role::Train { labels_from }) => labels_from
            .iter()
            .filter_map(|role| node.inputs.get(*role).and_then(|v| v.first()))
            .find_map(|&j| label_fraction(plan, j)),
        _ => None,
    }
}

/// Split an eval record's metrics by evaluated model, as its kind's [`EvalSpec`] says.
pub fn method_rows(plan: &Plan, eval_idx: usize, record: &Record) -> Vec<MethodRow> {
    let Some(spec) = eval_spec(&record.kind) else {
        return Vec::new();
    };
    let n = record.details.get("n").and_then(|v| v.as_f64());
    let split = record
        .params
        .get(spec.split_param)
        .and_then(|v| v.as_str())
        .unwrap_or(spec.default_split)
        .to_string();
    let models: &[usize] = plan.nodes[eval_idx]
        .inputs
        .get(spec.models)
        .map(|v| v.as_slice())
        .unwrap_or(&[]);
    let Some(per_model) = (spec.per_model)(&record.metrics, models.len()) else {
        // Metrics about the eval node as a whole (not split by model).
        let node = &plan.nodes[eval_idx];
        return vec![MethodRow {
            method: node.base.clone(),
            model: node.name.clone(),
            point: node.point.clone(),
            metrics: record.metrics.clone(),
            fraction: label_fraction(plan, eval_idx),
            split,
            n,
        }];
    };
    models
        .iter()
        .zip(per_model)
        .map(|(&m, metrics)| {
            let node = &plan.nodes[m];
            MethodRow {
                method: node.base.clone(),
                model: node.name.clone(),
                point: node.point.clone(),
                metrics,
                fraction: label_fraction(plan, m),
                split: split.clone(),
                n,
            }
        })
        .collect()
}

/// The headline table: top-1 per method (rows) and label fraction (columns), when the pipeline
/// sweeps `label_fraction`. Several values in one cell (e.g. seeds) show as mean ± std.
fn top1_pivot(plan: &Plan, rows: &[MethodRow], split: &str, title: &str) -> Option<String> {
    let (_, fractions) = plan.sweep.iter().find(|(k, _)| k == LABEL_FRACTION)?;
    // method → fraction → model node → top-1: a model that several eval nodes score (an unswept
    // model inside a swept eval) counts once; distinct models in a cell (seeds) give mean ± std.
    let mut cells: BTreeMap<&str, BTreeMap<String, BTreeMap<&str, f64>>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.split == split) {
        let (Some(f), Some(top1)) = (&row.fraction, row.metrics.get("top1")) else {
            continue;
        };
        cells
            .entry(row.method.as_str())
            .or_default()
            .entry(render_value(f))
            .or_default()
            .insert(row.model.as_str(), *top1);
    }
    if cells.is_empty() {
        return None;
    }
    let cols: Vec<String> = fractions.iter().map(render_value).collect();
    let mut md = format!("{title}:\n\n| method |");
    for c in &cols {
        let _ = write!(md, " {c} |");
    }
    let _ = write!(md, "\n|---|{}\n", "---|".repeat(cols.len()));
    for (method, by_frac) in &cells {
        let _ = write!(md, "| {method} |");
        for c in &cols {
            let vals: Vec<f64> = by_frac
                .get(c)
                .map(|m| m.values().copied().collect())
                .unwrap_or_default();
            let cell = match vals.as_slice() {
                [] => "-".to_string(),
                [one] => format!("{:.1}%", one * 100.0),
                vs => {
                    let (mean, std) = mean_std(vs);
                    let std = std.unwrap_or(0.0);
                    format!("{:.1} ± {:.1}% (n={})", mean * 100.0, std * 100.0, vs.len())
                }
            };
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md.push('\n');
    Some(md)
}

/// When, where and how long each stored node took (a twin that reused another node's artifact
/// shows that node's build), and the sum: the wall time of a run that built them all one at a time.
fn stage_times(plan: &Plan, latest: &[(usize, Record)]) -> String {
    let mut md = String::from(
        "## Stage times\n\n| node | kind | built by node | started (UTC) | host | threads | seconds |\n|---|---|---|---|---|---|---|\n",
    );
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0.0;
    for (i, r) in latest {
        let p = &r.provenance;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.1} |",
            plan.nodes[*i].name, r.kind, r.node, p.started, p.host, p.threads, p.duration_s
        );
        if seen.insert(r.key.clone()) {
            total += p.duration_s;
        }
    }
    let _ = writeln!(
        md,
        "\nSum over distinct artifacts: {total:.0} s ({:.1} min).\n",
        total / 60.0
    );
    md
}

fn render_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Mean and, for two or more values, the sample standard deviation.
pub fn mean_std(vals: &[f64]) -> (f64, Option<f64>) {
    let n = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / n;
    if vals.len() < 2 {
        return (mean, None);
    }
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some(var.sqrt()))
}

/// Print the metrics of every node of an evaluating kind as an aligned table (after a run).
pub fn print_eval_table(records: &[Record]) {
    let evals: Vec<&Record> = records
        .iter()
        .filter(|r| eval_spec(&r.kind).is_some())
        .collect();
    if evals.is_empty() {
        return;
    }
    let mut cols: Vec<&String> = evals.iter().flat_map(|r| r.metrics.keys()).collect();
    cols.sort();
    cols.dedup();
    let w = evals.iter().map(|r| r.node.len()).max().unwrap_or(4).max(4);
    let mut header = format!("{:<w$}", "node");
    for c in &cols {
        header.push_str(&format!("  {c:>10}"));
    }
    println!("{header}");
    for r in evals {
        let mut line = format!("{:<w$}", r.node);
        for c in &cols {
            match r.metrics.get(*c) {
                Some(v) => line.push_str(&format!("  {v:>10.4}")),
                None => line.push_str(&format!("  {:>10}", "-")),
            }
        }
        println!("{line}");
    }
}
