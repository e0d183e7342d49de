//! Checking a pipeline's `[claims.*]` against its eval results: the difference, its uncertainty
//! and a verdict per sweep point.
//!
//! Uncertainty of `d = better − than` (percentage points), by what each side has:
//! - one model (one seed): the binomial standard error of an accuracy `p` measured on `n` images,
//!   `sqrt(p(1−p)/n)`;
//! - several models (a seed sweep): the standard error of their mean, `s/sqrt(k)` with the sample
//!   standard deviation `s` over the `k` seeds;
//!
//! and `σ(d) = sqrt(σ_better² + σ_than²)` (independent). Verdicts, with `m` the margin:
//! - `better`: holds if `d − m > 2σ`, fails if `d − m < −2σ`, else within noise;
//! - `at_least`: holds if `d ≥ m`, fails if `d − m < −2σ`, else within noise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::{Claim, ClaimKind};
use crate::report::{MethodRow, LABEL_FRACTION};

/// Standard errors on either side of a verdict's threshold.
pub const Z: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Holds,
    Fails,
    WithinNoise,
    /// One side has no result at this point (not run yet, or not evaluated).
    NoData,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Holds => "holds",
            Verdict::Fails => "FAILS",
            Verdict::WithinNoise => "within noise",
            Verdict::NoData => "no data",
        })
    }
}

/// One side of a comparison at one point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// Mean of the metric, in percent.
    pub mean: f64,
    /// Its standard error, in percentage points.
    pub se: f64,
    /// Models (seeds) averaged.
    pub models: usize,
    /// Images each was scored on (binomial basis), when one model.
    pub images: Option<f64>,
}

/// A claim checked at one sweep point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub claim: String,
    pub description: String,
    pub statement: String,
    /// `var=value` pairs of the point.
    pub point: BTreeMap<String, serde_json::Value>,
    pub better: Option<Side>,
    pub than: Option<Side>,
    /// better − than, percentage points.
    pub diff: Option<f64>,
    /// σ(diff), percentage points.
    pub se: Option<f64>,
    pub verdict: Verdict,
}

/// The verdict for a difference `d` with uncertainty `se`, margin `m` (all in points).
pub fn verdict(kind: ClaimKind, d: f64, se: f64, m: f64) -> Verdict {
    let x = d - m;
    match kind {
        ClaimKind::Better if x > Z * se => Verdict::Holds,
        ClaimKind::AtLeast if x >= 0.0 => Verdict::Holds,
        _ if x < -Z * se => Verdict::Fails,
        _ => Verdict::WithinNoise,
    }
}

/// The binomial standard error (points) of an accuracy `p` (a fraction) over `n` images.
pub fn binomial_se(p: f64, n: f64) -> f64 {
    100.0 * (p * (1.0 - p) / n).sqrt()
}

/// Mean (percent) and standard error (points) of one side's per-model values (fractions).
fn side(values: &[(f64, Option<f64>)]) -> Option<Side> {
    match values {
        [] => None,
        [(p, n)] => Some(Side {
            mean: 100.0 * p,
            se: n.map_or(f64::NAN, |n| binomial_se(*p, n)),
            models: 1,
            images: *n,
        }),
        many => {
            let k = many.len() as f64;
            let mean = many.iter().map(|(p, _)| p).sum::<f64>() / k;
            let var = many.iter().map(|(p, _)| (p - mean).powi(2)).sum::<f64>() / (k - 1.0);
            Some(Side {
                mean: 100.0 * mean,
                se: 100.0 * (var / k).sqrt(),
                models: many.len(),
                images: None,
            })
        }
    }
}

fn statement(c: &Claim) -> String {
    let op = match c.kind {
        ClaimKind::Better => ">",
        ClaimKind::AtLeast => "≥",
    };
    let margin = if c.margin != 0.0 {
        format!(" + {} pt", c.margin)
    } else {
        String::new()
    };
    match &c.gain_over {
        Some((x, y)) => format!(
            "{} − {} {op} {x} − {y}{margin} ({} {})",
            c.better, c.than, c.split, c.metric
        ),
        None => format!(
            "{} {op} {}{margin} ({} {})",
            c.better, c.than, c.split, c.metric
        ),
    }
}

/// Whether `row` is at `point` (label fractions compare by the row's effective fraction).
fn at_point(row: &MethodRow, point: &BTreeMap<String, serde_json::Value>) -> bool {
    point.iter().all(|(var, want)| {
        let have = if var == LABEL_FRACTION {
            row.fraction.as_ref()
        } else {
            row.point.get(var)
        };
        match (have, want) {
            (Some(a), b) if a == b => true,
            (Some(a), b) => a.as_f64().is_some() && a.as_f64() == b.as_f64(),
            (None, _) => false,
        }
    })
}

/// The points a claim is checked at: the cartesian product of its `at` values, or every label
/// fraction where `better` has a result.
fn points(c: &Claim, rows: &[MethodRow]) -> Vec<BTreeMap<String, serde_json::Value>> {
    if c.at.is_empty() {
        let mut fr: Vec<serde_json::Value> = rows
            .iter()
            .filter(|r| r.method == c.better && r.split == c.split)
            .filter_map(|r| r.fraction.clone())
            .collect();
        fr.sort_by(|a, b| {
            a.as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b.as_f64().unwrap_or(0.0))
        });
        fr.dedup();
        if fr.is_empty() {
            return vec![BTreeMap::new()];
        }
        return fr
            .into_iter()
            .map(|v| [(LABEL_FRACTION.to_string(), v)].into_iter().collect())
            .collect();
    }
    let mut out = vec![BTreeMap::new()];
    for (var, vals) in &c.at {
        out = out
            .into_iter()
            .flat_map(|p: BTreeMap<String, serde_json::Value>| {
                vals.iter().map(move |v| {
                    let mut q = p.clone();
                    q.insert(var.clone(), v.clone());
                    q
                })
            })
            .collect();
    }
    out
}

/// Check every claim at every point.
pub fn check(claims: &[Claim], rows: &[MethodRow]) -> Vec<Check> {
    let mut out = Vec::new();
    for c in claims {
        for point in points(c, rows) {
            let values = |method: &str| -> Vec<(f64, Option<f64>)> {
                // One value per evaluated model (several evals may score the same model).
                let mut by_model: BTreeMap<&str, (f64, Option<f64>)> = BTreeMap::new();
                for r in rows {
                    if r.method == method && r.split == c.split && at_point(r, &point) {
                        if let Some(v) = r.metrics.get(&c.metric) {
                            by_model.insert(r.model.as_str(), (*v, r.n));
                        }
                    }
                }
                by_model.into_values().collect()
            };
            let better = side(&values(&c.better));
            let than = side(&values(&c.than));
            // With `gain_over`, the other gain and its variance are subtracted as well.
            let other = match &c.gain_over {
                None => Some((0.0, 0.0)),
                Some((x, y)) => match (side(&values(x)), side(&values(y))) {
                    (Some(x), Some(y)) => Some((x.mean - y.mean, x.se.powi(2) + y.se.powi(2))),
                    _ => None,
                },
            };
            let (diff, se, v) = match (&better, &than, other) {
                (Some(a), Some(b), Some((g, g_var))) => {
                    let d = a.mean - b.mean - g;
                    let se = (a.se.powi(2) + b.se.powi(2) + g_var).sqrt();
                    let v = if se.is_finite() {
                        verdict(c.kind, d, se, c.margin)
                    } else {
                        Verdict::NoData
                    };
                    (Some(d), Some(se), v)
                }
                _ => (None, None, Verdict::NoData),
            };
            out.push(Check {
                claim: c.name.clone(),
                description: c.description.clone(),
                statement: statement(c),
                point,
                better,
                than,
                diff,
                se,
                verdict: v,
            });
        }
    }
    out
}

fn render_point(p: &BTreeMap<String, serde_json::Value>) -> String {
    if p.is_empty() {
        return "-".into();
    }
    p.iter()
        .map(|(k, v)| match (k.as_str(), v.as_f64()) {
            (LABEL_FRACTION, Some(f)) => format!("{}% labels", f * 100.0),
            _ => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_side(s: &Option<Side>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.models > 1 => format!("{:.1}% (mean of {})", s.mean, s.models),
        Some(s) => format!("{:.1}%", s.mean),
    }
}

/// The report's claims table (Markdown).
pub fn markdown(checks: &[Check]) -> String {
    let mut md = String::from(
        "| claim | at | better | than | difference | ±2σ | basis | verdict |\n|---|---|---|---|---|---|---|---|\n",
    );
    for c in checks {
        let basis = match (&c.better, &c.than) {
            (Some(a), Some(b)) if a.models > 1 || b.models > 1 => {
                format!("seeds (n={}/{})", a.models, b.models)
            }
            (Some(a), Some(_)) => match a.images {
                Some(n) => format!("binomial, {n} images"),
                None => "binomial".into(),
            },
            _ => "-".into(),
        };
        let (diff, se) = match (c.diff, c.se) {
            (Some(d), Some(s)) => (format!("{d:+.1} pt"), format!("{:.1} pt", Z * s)),
            _ => ("-".into(), "-".into()),
        };
        md.push_str(&format!(
            "| {}: {} | {} | {} | {} | {} | {} | {} | **{}** |\n",
            c.claim,
            c.statement,
            render_point(&c.point),
            render_side(&c.better),
            render_side(&c.than),
            diff,
            se,
            basis,
            c.verdict
        ));
    }
    md
}

/// Points that held in `before` and do not hold in `now` (by claim name and point).
pub fn regressions<'a>(
    before: &'a [Check],
    now: &'a [Check],
) -> Vec<(&'a Check, Option<&'a Check>)> {
    before
        .iter()
        .filter(|b| b.verdict == Verdict::Holds)
        .filter_map(|b| {
            let n = now
                .iter()
                .find(|n| n.claim == b.claim && n.point == b.point);
            match n {
                Some(n) if n.verdict == Verdict::Holds => None,
                other => Some((b, other)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_standard_error_by_hand() {
        // p = 0.25 on 1,000 images: sqrt(0.25·0.75/1000) = 0.013693 → 1.37 points.
        assert!((binomial_se(0.25, 1000.0) - 1.369_306_393_762_915_3).abs() < 1e-12);
        // Two single-seed sides on 10,000 images: 43.2% vs 31.6%.
        let a = side(&[(0.432, Some(10_000.0))]).unwrap();
        let b = side(&[(0.316, Some(10_000.0))]).unwrap();
        let se = (a.se.powi(2) + b.se.powi(2)).sqrt();
        let want = 100.0 * (0.432 * 0.568 / 1e4 + 0.316 * 0.684 / 1e4f64).sqrt();
        assert!((se - want).abs() < 1e-12, "{se} vs {want}");
        // Three seeds: mean 42.2, s = sqrt(((−1)² + 0² + 1²)/2) = 1 point, se = 1/sqrt(3).
        let s = side(&[(0.412, None), (0.422, None), (0.432, None)]).unwrap();
        assert!((s.mean - 42.2).abs() < 1e-9);
        assert!((s.se - 1.0 / 3f64.sqrt()).abs() < 1e-9, "{}", s.se);
    }

    #[test]
    fn verdicts_at_their_thresholds() {
        use ClaimKind::*;
        assert_eq!(verdict(Better, 5.0, 1.0, 0.0), Verdict::Holds);
        assert_eq!(verdict(Better, 2.0, 1.0, 0.0), Verdict::WithinNoise);
        assert_eq!(verdict(Better, 1.5, 1.0, 0.0), Verdict::WithinNoise);
        assert_eq!(verdict(Better, -2.5, 1.0, 0.0), Verdict::Fails);
        assert_eq!(verdict(Better, 5.0, 1.0, 3.5), Verdict::WithinNoise);
        assert_eq!(verdict(AtLeast, 0.0, 1.0, 0.0), Verdict::Holds);
        assert_eq!(verdict(AtLeast, -1.0, 1.0, 0.0), Verdict::WithinNoise);
        assert_eq!(verdict(AtLeast, -2.1, 1.0, 0.0), Verdict::Fails);
    }
}
