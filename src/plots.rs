//! The report's line charts: label fractions on a log axis with the swept values as ticks, epochs
//! as integer ticks, accuracies in percent, mean ± std error bars, the legend beside the data (never
//! over it) and one colour per method, the same in every chart of a report.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

/// A linear f64 axis whose ticks are exactly the given values (plotters' `WithKeyPoints` cannot
/// take a label formatter over f64).
struct KeyedAxis {
    lo: f64,
    hi: f64,
    keys: Vec<f64>,
}

impl Ranged for KeyedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Light (minor) grid lines: none.
        if hint.weight().allow_light_points() && hint.max_num_points() < self.keys.len() {
            return Vec::new();
        }
        self.keys.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// One point; `err` draws a ± bar (a standard deviation over seeds).
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub err: Option<f64>,
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: usize,
    pub points: Vec<Point>,
}

/// What the x axis holds.
#[derive(Debug, Clone)]
pub enum XAxis {
    /// Training epochs 1..=n: integer ticks.
    Epochs,
    /// Label fractions, on a log scale with exactly these values as ticks (shown in percent).
    Fractions(Vec<f64>),
}

/// A fixed colour index per method name (sorted), so a method keeps its colour across charts.
pub fn colors<'a>(methods: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut names: Vec<&str> = methods.into_iter().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), i))
        .collect()
}

/// Tableau-like colours that stay distinguishable on white; beyond them plotters' palette.
fn rgb(i: usize) -> RGBColor {
    const C: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    match C.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b),
        None => {
            let c = Palette99::pick(i).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// Render a chart to an SVG file. `percent`: y values are fractions shown as percentages.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_axis: &XAxis,
    y_label: &str,
    percent: bool,
    series: &[Series],
) -> Result<()> {
    let scale = if percent { 100.0 } else { 1.0 };
    let tx = |x: f64| match x_axis {
        XAxis::Epochs => x,
        XAxis::Fractions(_) => x.log10(),
    };
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in pts() {
        let e = p.err.unwrap_or(0.0);
        x0 = x0.min(tx(p.x));
        x1 = x1.max(tx(p.x));
        y0 = y0.min((p.y - e) * scale);
        y1 = y1.max((p.y + e) * scale);
    }
    if let XAxis::Fractions(f) = x_axis {
        for &v in f {
            x0 = x0.min(v.log10());
            x1 = x1.max(v.log10());
        }
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64, frac: f64| {
        if (b - a).abs() < 1e-12 {
            (a - 0.5, b + 0.5)
        } else {
            (a - frac * (b - a), b + frac * (b - a))
        }
    };
    let (x0, x1) = pad(x0, x1, 0.08);
    let (y0, y1) = pad(y0, y1, 0.08);
    let key_points: Vec<f64> = match x_axis {
        XAxis::Epochs => {
            let last = x1.floor().max(1.0) as usize;
            let step = last.div_ceil(12).max(1);
            (1..=last).step_by(step).map(|e| e as f64).collect()
        }
        XAxis::Fractions(f) => f.iter().map(|v| v.log10()).collect(),
    };
    let x_label = match x_axis {
        XAxis::Epochs => "epoch",
        XAxis::Fractions(_) => "labeled fraction of the training images (log scale)",
    };
    let legend_w = 190u32;
    let root = SVGBackend::new(path, (760 + legend_w, 440)).into_drawing_area();
    let (plot_area, legend_area) = root.split_horizontally(760);
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(
                KeyedAxis {
                    lo: x0,
                    hi: x1,
                    keys: key_points.clone(),
                },
                y0..y1,
            )?;
        let fmt_x = |v: &f64| match x_axis {
            XAxis::Epochs => format!("{}", v.round() as i64),
            XAxis::Fractions(_) => {
                let pct = 10f64.powf(*v) * 100.0;
                if (pct - pct.round()).abs() < 1e-6 {
                    format!("{}%", pct.round())
                } else {
                    format!("{pct:.2}%")
                }
            }
        };
        let fmt_y = |v: &f64| {
            if percent {
                format!("{v:.0}%")
            } else {
                format!("{v:.2}")
            }
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .y_max_light_lines(2)
            .x_label_formatter(&fmt_x)
            .y_label_formatter(&fmt_y)
            .draw()?;
        for s in series {
            let color = rgb(s.color);
            let line: Vec<(f64, f64)> = s.points.iter().map(|p| (tx(p.x), p.y * scale)).collect();
            chart.draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))?;
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            chart.draw_series(s.points.iter().filter_map(|p| {
                let e = p.err? * scale;
                Some(ErrorBar::new_vertical(
                    tx(p.x),
                    p.y * scale - e,
                    p.y * scale,
                    p.y * scale + e,
                    color.stroke_width(2),
                    10,
                ))
            }))?;
        }
        // The legend, beside the plot.
        for (i, s) in series.iter().enumerate() {
            let color = rgb(s.color);
            let y = 50 + 22 * i as i32;
            legend_area.draw(&PathElement::new(
                vec![(8, y), (32, y)],
                color.stroke_width(2),
            ))?;
            legend_area.draw(&Circle::new((20, y), 3, color.filled()))?;
            legend_area.draw(&Text::new(
                s.name.clone(),
                (40, y - 7),
                ("sans-serif", 14).into_font(),
            ))?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}
