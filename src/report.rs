//! `semiflow report`: a Markdown table of the pipeline's eval metrics and SVG plots.
//!
//! Reads only the index (latest record per node name), so it reflects what has been built.
//! Plots: one training-loss curve per training node (`series.loss`), and — when eval nodes carry a
//! `label_fraction` sweep point — top-1 vs label fraction, one line per method (the base names of the
//! evaluated models).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::plan::Plan;
use crate::store::{Record, Store};

/// Write `report.md` and the SVGs into `out`; returns the files written.
pub fn report(store: &Store, plan: &Plan, out: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut latest: Vec<(usize, Record)> = Vec::new();
    for (i, n) in plan.nodes.iter().enumerate() {
        if let Some(r) = store.index.latest_record(&n.name)? {
            latest.push((i, r));
        }
    }
    let mut written = Vec::new();
    let mut md = format!("# {}\n\n", plan.name);

    // Metrics table.
    let evals: Vec<&(usize, Record)> = latest
        .iter()
        .filter(|(_, r)| r.kind == "eval" || r.kind.ends_with("-eval"))
        .collect();
    let point_cols: Vec<String> = plan.sweep.iter().map(|(k, _)| k.clone()).collect();
    let mut metric_cols: Vec<&String> = evals.iter().flat_map(|(_, r)| r.metrics.keys()).collect();
    metric_cols.sort();
    metric_cols.dedup();
    md.push_str("## Evaluation\n\n");
    if evals.is_empty() {
        md.push_str("No eval node has run yet.\n\n");
    } else {
        let mut header = vec!["node".to_string()];
        header.extend(point_cols.iter().cloned());
        header.extend(metric_cols.iter().map(|s| s.to_string()));
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
        for (i, r) in &evals {
            let node = &plan.nodes[*i];
            let mut cells = vec![r.node.clone()];
            for c in &point_cols {
                cells.push(
                    node.point
                        .get(c)
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into()),
                );
            }
            for c in &metric_cols {
                cells.push(
                    r.metrics
                        .get(*c)
                        .map(|v| format!("{v:.4}"))
                        .unwrap_or_else(|| "-".into()),
                );
            }
            let _ = writeln!(md, "| {} |", cells.join(" | "));
        }
        md.push('\n');
    }

    // Loss curves.
    md.push_str("## Training loss\n\n");
    for (_, r) in &latest {
        let Some(loss) = r.series.get("loss").filter(|s| !s.is_empty()) else {
            continue;
        };
        let file = format!("loss-{}.svg", sanitize(&r.node));
        let pts: Vec<(f64, f64)> = loss
            .iter()
            .enumerate()
            .map(|(e, v)| ((e + 1) as f64, *v))
            .collect();
        plot(
            &out.join(&file),
            &format!("{}: training loss", r.node),
            "epoch",
            "loss",
            &[(r.node.clone(), pts)],
        )?;
        let _ = writeln!(md, "![{}]({file})\n", r.node);
        written.push(file);
    }

    // Accuracy vs label fraction, one line per method.
    let mut methods: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (i, r) in &evals {
        let node = &plan.nodes[*i];
        let (Some(frac), Some(top1)) = (
            node.point.get("label_fraction").and_then(|v| v.as_f64()),
            r.metrics.get("top1"),
        ) else {
            continue;
        };
        let mut bases: Vec<&str> = node
            .inputs
            .values()
            .flatten()
            .map(|&j| plan.nodes[j].base.as_str())
            .collect();
        bases.dedup();
        methods
            .entry(bases.join("+"))
            .or_default()
            .push((frac, *top1));
    }
    if !methods.is_empty() {
        let series: Vec<(String, Vec<(f64, f64)>)> = methods
            .into_iter()
            .map(|(m, mut pts)| {
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                (m, pts)
            })
            .collect();
        let file = "top1-vs-label-fraction.svg".to_string();
        plot(
            &out.join(&file),
            "top-1 vs label fraction",
            "label fraction",
            "top-1",
            &series,
        )?;
        let _ = writeln!(
            md,
            "## Accuracy vs label fraction\n\n![top-1 vs label fraction]({file})\n"
        );
        written.push(file);
    }
    std::fs::write(out.join("report.md"), md)?;
    written.insert(0, "report.md".into());
    Ok(written)
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

/// A line chart with markers, one series per entry.
fn plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let pad = |a: f64, b: f64| {
        if (b - a).abs() < 1e-12 {
            (a - 0.5, b + 0.5)
        } else {
            (a - 0.05 * (b - a), b + 0.05 * (b - a))
        }
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
    let root = SVGBackend::new(path, (720, 432)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        for (k, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}
