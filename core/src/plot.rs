//! Figures of a run, PNG and SVG: the paper's "unlearning vs sparsity" figure, one per forget
//! scenario: UA, MIA-Efficacy, RA, TA and the Avg. Gap to retrain against sparsity, one line per
//! method (and pruner, when there are several), mean over seeds with a ± std band when there are
//! several seeds. The legend has a panel of its own, so it never covers data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::io::write_atomic_with;
use crate::pipeline::{Row, RunResults};

/// One line: `(sparsity %, mean, std)` per point, by ascending sparsity.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// One panel: a metric against sparsity.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: &'static str,
    pub series: Vec<Series>,
}

/// The metrics of a figure: title and how to read a row (None: not measured, e.g. an
/// uninformative MIA, which is left out).
type Metric = (&'static str, fn(&Row) -> Option<f64>);

const METRICS: [Metric; 5] = [
    ("UA (%)", |r| Some(r.metrics.ua)),
    ("MIA-Efficacy (%)", |r| {
        r.metrics.mia().filter(|s| s.informative).map(|s| s.value)
    }),
    ("RA (%)", |r| Some(r.metrics.ra)),
    ("TA (%)", |r| Some(r.metrics.ta)),
    ("Avg. Gap to retrain (%)", |r| r.gap.as_ref().map(|g| g.avg)),
];

/// A pruner's label without a sweep's ` 95%` suffix: the family its sparse models belong to.
fn family(pruner: &str) -> &str {
    match pruner.rsplit_once(' ') {
        Some((base, pct)) if pct.ends_with('%') && pct[..pct.len() - 1].parse::<f64>().is_ok() => {
            base
        }
        _ => pruner,
    }
}

/// The panels of one scenario's figure.
pub fn panels(results: &RunResults, scenario: &str) -> Vec<Panel> {
    let rows: Vec<&Row> = results
        .rows
        .iter()
        .filter(|r| r.scenario == scenario)
        .collect();
    let mut families: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.pruner.as_deref().map(family))
        .collect();
    families.sort();
    families.dedup();
    // The dense model is the 0% point of every pruner's line.
    let lines_of = |r: &Row| -> Vec<String> {
        let fams: Vec<&str> = match r.pruner.as_deref() {
            Some(p) => vec![family(p)],
            None if families.is_empty() => vec![""],
            None => families.clone(),
        };
        fams.into_iter()
            .map(|f| {
                if families.len() > 1 {
                    format!("{} · {f}", r.label)
                } else {
                    r.label.clone()
                }
            })
            .collect()
    };
    let mut order: Vec<String> = Vec::new();
    for r in &rows {
        for l in lines_of(r) {
            if !order.contains(&l) {
                order.push(l);
            }
        }
    }
    METRICS
        .iter()
        .map(|(title, value)| {
            let series = order
                .iter()
                .filter_map(|name| {
                    // sparsity in 0.1% steps -> values over seeds
                    let mut by_x: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
                    for r in &rows {
                        if lines_of(r).contains(name) {
                            if let Some(v) = value(r) {
                                let x = (r.sparsity * 1000.0).round() as i64;
                                by_x.entry(x).or_default().push(v);
                            }
                        }
                    }
                    let points: Vec<(f64, f64, f64)> = by_x
                        .into_iter()
                        .map(|(x, v)| {
                            let (mean, std) = mean_std(&v);
                            (x as f64 / 10.0, mean, std)
                        })
                        .collect();
                    (!points.is_empty()).then(|| Series {
                        name: name.clone(),
                        points,
                    })
                })
                .collect();
            Panel { title, series }
        })
        .collect()
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {message}")]
pub struct PlotError {
    pub path: PathBuf,
    pub message: String,
}

/// Writes every figure of a run into `dir` (PNG and SVG), returning their paths.
pub fn write_all(results: &RunResults, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let err = |path: &Path, message: String| PlotError {
        path: path.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e.to_string()))?;
    let mut written = Vec::new();
    for (i, s) in results.scenarios.iter().enumerate() {
        let panels = panels(results, &s.name);
        let seeds = results.seeds.len();
        let title = format!(
            "Unlearning vs sparsity: {} ({}, {} seed{}{})",
            s.name,
            results.dataset,
            seeds,
            if seeds == 1 { "" } else { "s" },
            if seeds > 1 { ", mean ± std" } else { "" }
        );
        let stem = format!("unlearning-vs-sparsity-{}", i + 1);
        let png = dir.join(format!("{stem}.png"));
        write_atomic_with(&png, |tmp: &Path| -> std::io::Result<()> {
            // The encoder picks the format by extension: draw to `<tmp>.png`, then move it to
            // the temporary name that is renamed into place.
            let drawn = tmp.with_extension("png");
            let root = BitMapBackend::new(&drawn, SIZE).into_drawing_area();
            draw(&root, &title, &panels).map_err(std::io::Error::other)?;
            root.present().map_err(std::io::Error::other)?;
            drop(root);
            std::fs::rename(&drawn, tmp)
        })
        .map_err(|e| err(&png, e.to_string()))?;
        let svg = dir.join(format!("{stem}.svg"));
        write_atomic_with(&svg, |tmp: &Path| -> std::io::Result<()> {
            let root = SVGBackend::new(tmp, SIZE).into_drawing_area();
            draw(&root, &title, &panels).map_err(std::io::Error::other)?;
            root.present().map_err(std::io::Error::other)
        })
        .map_err(|e| err(&svg, e.to_string()))?;
        written.extend([png, svg]);
    }
    Ok(written)
}

const SIZE: (u32, u32) = (1500, 900);

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[Panel],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 26))?;
    let cells = root.split_evenly((2, 3));
    let names: Vec<&str> = panels
        .first()
        .map(|p| p.series.iter().map(|s| s.name.as_str()).collect())
        .unwrap_or_default();
    let color = |name: &str| {
        let i = names.iter().position(|n| *n == name).unwrap_or(0);
        Palette99::pick(i).to_rgba()
    };
    for (cell, panel) in cells.iter().zip(panels) {
        let all: Vec<&(f64, f64, f64)> = panel.series.iter().flat_map(|s| &s.points).collect();
        let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0);
        let y_hi = all.iter().map(|p| p.1 + p.2).fold(0.0, f64::max);
        let y_max = if panel.title.starts_with("Avg.") || panel.title.starts_with("RTE") {
            (y_hi * 1.1).max(1.0)
        } else {
            100.0
        };
        let mut chart = ChartBuilder::on(cell)
            .caption(panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max * 1.02)?;
        chart
            .configure_mesh()
            .x_desc("sparsity (%)")
            .y_desc(panel.title)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        for s in &panel.series {
            let c = color(&s.name);
            if s.points.iter().any(|p| p.2 > 0.0) {
                let upper = s.points.iter().map(|p| (p.0, (p.1 + p.2).min(y_max)));
                let lower = s.points.iter().rev().map(|p| (p.0, (p.1 - p.2).max(0.0)));
                let band: Vec<(f64, f64)> = upper.chain(lower).collect();
                chart.draw_series(std::iter::once(Polygon::new(band, c.mix(0.15))))?;
            }
            let line: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1)).collect();
            chart.draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))?;
            chart.draw_series(line.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
    }
    // The legend, in the last cell.
    if let Some(cell) = cells.get(panels.len()) {
        cell.draw(&Text::new("Methods", (20, 30), ("sans-serif", 20)))?;
        for (i, name) in names.iter().enumerate() {
            let y = 65 + 26 * i as i32;
            let c = color(name);
            cell.draw(&PathElement::new(vec![(20, y), (60, y)], c.stroke_width(3)))?;
            cell.draw(&Circle::new((40, y), 4, c.filled()))?;
            cell.draw(&Text::new(
                name.to_string(),
                (70, y - 8),
                ("sans-serif", 17),
            ))?;
        }
        let note = "MIA-Efficacy: uninformative attacks left out";
        let y = 65 + 26 * names.len() as i32 + 10;
        cell.draw(&Text::new(note, (20, y), ("sans-serif", 14)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_strip_a_sweeps_percentage_only() {
        assert_eq!(family("OMP 95%"), "OMP");
        assert_eq!(family("OMP 99.5%"), "OMP");
        assert_eq!(family("IMP"), "IMP");
        assert_eq!(family("my pruner"), "my pruner");
        assert_eq!(family("x 5 %"), "x 5 %");
    }

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[3.0]), (3.0, 0.0));
        let (m, s) = mean_std(&[1.0, 2.0, 6.0]);
        assert_eq!(m, 3.0);
        assert!((s - 7f64.sqrt()).abs() < 1e-12);
    }
}
