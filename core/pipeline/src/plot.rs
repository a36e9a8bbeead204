//! Figures of a run, PNG and SVG: the paper's "unlearning vs sparsity" figure, one per forget
//! scenario: UA, MIA-Efficacy, RA, TA and the Avg. Gap to retrain against sparsity, one line per
//! method (and pruner, when there are several), mean over seeds with a ± std band when there are
//! several seeds. The legend has a panel of its own, so it never covers data. And the training
//! curves of the dense and sparse models: loss and train/validation accuracy per epoch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::io::write_atomic_with;
use crate::results::{Row, RunResults};

/// One line: `(sparsity %, mean, std)` per point, by ascending sparsity.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
    /// Per point: whether a value in it comes from an uninformative MIA (drawn hollow).
    pub uninformative: Vec<bool>,
}

/// One panel: a metric against sparsity.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: &'static str,
    pub series: Vec<Series>,
}

/// The metrics of a figure: title and how to read a row: its value (None: not measured) and
/// whether the value is not a result (an uninformative MIA), which the figure draws hollow
/// rather than leaving out, so that a reader sees it and sees that it is marked.
type Metric = (&'static str, fn(&Row) -> Option<(f64, bool)>);

/// A value that is a result.
fn sure(v: f64) -> Option<(f64, bool)> {
    Some((v, false))
}

const METRICS: [Metric; 5] = [
    ("UA (%)", |r| sure(r.metrics.ua)),
    ("MIA-Efficacy (%)", |r| {
        r.metrics.mia().map(|s| (s.value, !s.informative))
    }),
    ("RA (%)", |r| sure(r.metrics.ra)),
    ("TA (%)", |r| sure(r.metrics.ta)),
    ("Avg. Gap to retrain (%)", |r| {
        r.gap.as_ref().and_then(|g| sure(g.avg))
    }),
];

/// The Trojan cleanse's figure: attack success rate (over every test image, and over those
/// whose true class is not the target) and clean TA against sparsity.
const BACKDOOR_METRICS: [Metric; 3] = [
    ("ASR (%)", |r| r.metrics.asr.and_then(sure)),
    ("ASR, non-target classes (%)", |r| {
        r.metrics.asr_non_target.and_then(sure)
    }),
    ("Clean TA (%)", |r| sure(r.metrics.ta)),
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

/// Per model (its pruner; None for the dense one): its sparsities and its values over seeds.
type ByModel<'a> = BTreeMap<Option<&'a str>, (Vec<f64>, Vec<(f64, bool)>)>;

/// The panels of one scenario's figure.
pub fn panels(results: &RunResults, scenario: &str) -> Vec<Panel> {
    panels_of(results, scenario, &METRICS)
}

/// The panels of one scenario's backdoor figure (a run with an `[attack]`).
pub fn backdoor_panels(results: &RunResults, scenario: &str) -> Vec<Panel> {
    panels_of(results, scenario, &BACKDOOR_METRICS)
}

fn panels_of(results: &RunResults, scenario: &str, metrics: &[Metric]) -> Vec<Panel> {
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
    metrics
        .iter()
        .map(|(title, value)| {
            let series = order
                .iter()
                .filter_map(|name| {
                    // One point per model (the dense one, or one pruner's sparse one): its
                    // values over seeds, at its mean sparsity. Two models at the same sparsity
                    // (the dense model and a 0% pruner) stay two points, never one average.
                    let mut by_model: ByModel = BTreeMap::new();
                    for r in &rows {
                        if lines_of(r).contains(name)
                            && let Some(v) = value(r)
                        {
                            let p = by_model.entry(r.pruner.as_deref()).or_default();
                            p.0.push(r.sparsity);
                            p.1.push(v);
                        }
                    }
                    let mut points: Vec<((f64, f64, f64), bool)> = by_model
                        .into_values()
                        .map(|(xs, v)| {
                            // in 0.1% steps, as the tables show it
                            let x =
                                (1000.0 * xs.iter().sum::<f64>() / xs.len() as f64).round() / 10.0;
                            let values: Vec<f64> = v.iter().map(|p| p.0).collect();
                            let (mean, std) = mean_std(&values);
                            ((x, mean, std), v.iter().any(|p| p.1))
                        })
                        .collect();
                    points.sort_by(|a, b| a.0.0.total_cmp(&b.0.0));
                    let (points, uninformative): (Vec<(f64, f64, f64)>, Vec<bool>) =
                        points.into_iter().unzip();
                    (!points.is_empty()).then(|| Series {
                        name: name.clone(),
                        points,
                        uninformative,
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
    crate::io::ensure_dir(dir).map_err(|e| err(dir, e.to_string()))?;
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
        written.extend(write_figure(dir, &stem, SIZE, &Sparsity { title, panels })?);
        if let Some(a) = &results.attack {
            let title = format!(
                "Backdoor vs sparsity: {} rows poisoned by {} ({}, {} seed{}{})",
                a.poisoned.len(),
                a.label,
                results.dataset,
                seeds,
                if seeds == 1 { "" } else { "s" },
                if seeds > 1 { ", mean ± std" } else { "" }
            );
            let panels = backdoor_panels(results, &s.name);
            let stem = format!("backdoor-vs-sparsity-{}", i + 1);
            written.extend(write_figure(dir, &stem, SIZE, &Sparsity { title, panels })?);
        }
    }
    let curves = training_curves(results);
    if !curves.is_empty() {
        let size = (1500, 110 + 380 * curves.len() as u32);
        let title = format!("Training curves ({}, one line per seed)", results.dataset);
        written.extend(write_figure(
            dir,
            "training-curves",
            size,
            &Curves { title, curves },
        )?);
    }
    Ok(written)
}

/// A figure that can be drawn on any backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

struct Sparsity {
    title: String,
    panels: Vec<Panel>,
}

impl Figure for Sparsity {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        draw(root, &self.title, &self.panels).map_err(|e| e.to_string())
    }
}

struct Curves {
    title: String,
    curves: Vec<ModelCurves>,
}

impl Figure for Curves {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        draw_curves(root, &self.title, &self.curves).map_err(|e| e.to_string())
    }
}

/// Draws one figure as `<dir>/<stem>.png` and `.svg`, each written atomically.
fn write_figure(
    dir: &Path,
    stem: &str,
    size: (u32, u32),
    figure: &impl Figure,
) -> Result<Vec<PathBuf>, PlotError> {
    let err = |path: &Path, message: String| PlotError {
        path: path.to_path_buf(),
        message,
    };
    let png = dir.join(format!("{stem}.png"));
    write_atomic_with(&png, |tmp: &Path| -> std::io::Result<()> {
        // The encoder picks the format by extension: draw to `<tmp>.png`, then move it to the
        // temporary name that is renamed into place.
        let drawn = tmp.with_extension("png");
        let root = BitMapBackend::new(&drawn, size).into_drawing_area();
        figure.draw(&root).map_err(std::io::Error::other)?;
        root.present().map_err(std::io::Error::other)?;
        drop(root);
        std::fs::rename(&drawn, tmp)
    })
    .map_err(|e| err(&png, e.to_string()))?;
    let svg = dir.join(format!("{stem}.svg"));
    write_atomic_with(&svg, |tmp: &Path| -> std::io::Result<()> {
        let root = SVGBackend::new(tmp, size).into_drawing_area();
        figure.draw(&root).map_err(std::io::Error::other)?;
        root.present().map_err(std::io::Error::other)
    })
    .map_err(|e| err(&svg, e.to_string()))?;
    Ok(vec![png, svg])
}

const SIZE: (u32, u32) = (1500, 900);

/// The legend's note on hollow markers, a line at a time (the legend cell is narrow).
const HOLLOW_NOTE: [&str; 3] = [
    "hollow, faint line: an uninformative MIA, its",
    "shadow accuracy not above chance (report.md);",
    "not a result, left out of the Avg. Gap",
];

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
        if panel.series.is_empty() {
            // Empty axes would read as "all zero": say that nothing was measured.
            let (w, h) = cell.dim_in_pixel();
            cell.draw(&Text::new(
                "not computed in this run",
                (w as i32 / 2 - 95, h as i32 / 2),
                ("sans-serif", 18).into_font().color(&BLACK.mix(0.6)),
            ))?;
        }
        for s in &panel.series {
            let c = color(&s.name);
            if s.points.iter().any(|p| p.2 > 0.0) {
                let upper = s.points.iter().map(|p| (p.0, (p.1 + p.2).min(y_max)));
                let lower = s.points.iter().rev().map(|p| (p.0, (p.1 - p.2).max(0.0)));
                let band: Vec<(f64, f64)> = upper.chain(lower).collect();
                chart.draw_series(std::iter::once(Polygon::new(band, c.mix(0.15))))?;
            }
            let line: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1)).collect();
            // A segment that reaches an uninformative point is drawn faint: it joins no results.
            for (i, pair) in line.windows(2).enumerate() {
                let faint = s.uninformative[i] || s.uninformative[i + 1];
                let style = if faint { c.mix(0.3) } else { c };
                chart.draw_series(LineSeries::new(pair.to_vec(), style.stroke_width(2)))?;
            }
            let (hollow, solid): (Vec<_>, Vec<_>) = line
                .into_iter()
                .zip(&s.uninformative)
                .partition(|&(_, &u)| u);
            chart.draw_series(
                solid
                    .into_iter()
                    .map(|(p, _)| Circle::new(p, 4, c.filled())),
            )?;
            // White inside, so that the line does not fill it in.
            chart.draw_series(
                hollow
                    .iter()
                    .map(|&(p, _)| Circle::new(p, 5, WHITE.filled())),
            )?;
            chart.draw_series(
                hollow
                    .into_iter()
                    .map(|(p, _)| Circle::new(p, 5, c.stroke_width(2))),
            )?;
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
        if panels
            .iter()
            .any(|p| p.series.iter().any(|s| s.uninformative.contains(&true)))
        {
            let y = 65 + 26 * names.len() as i32 + 10;
            cell.draw(&Circle::new((40, y + 7), 5, BLACK.stroke_width(2)))?;
            for (i, line) in HOLLOW_NOTE.iter().enumerate() {
                let at = (60, y + 18 * i as i32);
                cell.draw(&Text::new(*line, at, ("sans-serif", 14)))?;
            }
        }
    }
    Ok(())
}

/// The training of one model (the dense model, or one pruner's sparse model): per seed, its
/// epochs in the order they ran (a stage with several loops, e.g. IMP's rounds, end to end).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCurves {
    pub name: String,
    /// `(seed, epochs)`.
    pub seeds: Vec<(u64, Vec<EpochPoint>)>,
}

/// One epoch of a curve: `(x, loss, train accuracy, val accuracy)`.
pub type EpochPoint = (f64, f64, Option<f64>, Option<f64>);

/// The curves of every model stage that trained (cached stages included: their logs are kept).
pub fn training_curves(results: &RunResults) -> Vec<ModelCurves> {
    let mut out: Vec<ModelCurves> = Vec::new();
    for st in &results.stages {
        if !(st.kind == "dense" || st.kind == "sparse") || st.training.is_empty() {
            continue;
        }
        let seed = st.seed.unwrap_or(0);
        let suffix = format!(", seed {seed}");
        let name = st
            .label
            .strip_suffix(&suffix)
            .unwrap_or(&st.label)
            .to_string();
        let points = st
            .training
            .iter()
            .flat_map(|run| &run.epochs)
            .enumerate()
            .map(|(i, e)| ((i + 1) as f64, e.loss, e.train_accuracy, e.val_accuracy))
            .collect();
        match out.iter_mut().find(|c| c.name == name) {
            Some(c) => c.seeds.push((seed, points)),
            None => out.push(ModelCurves {
                name,
                seeds: vec![(seed, points)],
            }),
        }
    }
    out
}

/// A chart with two linear axes.
type LinearChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A panel of a value against epochs 0..`x_max`, its mesh drawn.
fn epoch_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: String,
    x_max: f64,
    y_max: f64,
    y_desc: &str,
) -> Result<LinearChart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    Ok(chart)
}

/// One row per model: loss (left) and accuracy (right) against epochs, a colour per seed;
/// training accuracy solid, validation accuracy dashed.
fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    curves: &[ModelCurves],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 26))?;
    let (body, legend) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 260);
    let rows = body.split_evenly((curves.len(), 2));
    let mut seeds: Vec<u64> = curves
        .iter()
        .flat_map(|c| c.seeds.iter().map(|s| s.0))
        .collect();
    seeds.sort();
    seeds.dedup();
    let color = |seed: u64| {
        let i = seeds.iter().position(|s| *s == seed).unwrap_or(0);
        Palette99::pick(i).to_rgba()
    };
    for (i, c) in curves.iter().enumerate() {
        let x_max = c.seeds.iter().map(|s| s.1.len()).max().unwrap_or(1).max(1) as f64;
        let loss_max = c
            .seeds
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            .max(1e-3);
        let title = |what: &str| format!("{}: {what}", c.name);
        let mut loss = epoch_chart(
            &rows[2 * i],
            title("training loss"),
            x_max,
            loss_max * 1.05,
            "mean loss",
        )?;
        let mut acc = epoch_chart(
            &rows[2 * i + 1],
            title("accuracy"),
            x_max,
            102.0,
            "accuracy (%)",
        )?;
        for (seed, points) in &c.seeds {
            let col = color(*seed);
            let line = points.iter().map(|p| (p.0, p.1));
            loss.draw_series(LineSeries::new(line, col.stroke_width(2)))?;
            let train: Vec<(f64, f64)> = points.iter().filter_map(|p| Some((p.0, p.2?))).collect();
            acc.draw_series(LineSeries::new(train, col.stroke_width(2)))?;
            let val: Vec<(f64, f64)> = points.iter().filter_map(|p| Some((p.0, p.3?))).collect();
            acc.draw_series(DashedLineSeries::new(val, 6, 4, col.stroke_width(2)))?;
        }
    }
    legend.draw(&Text::new("Seeds", (10, 30), ("sans-serif", 20)))?;
    for (i, seed) in seeds.iter().enumerate() {
        let y = 65 + 26 * i as i32;
        let c = color(*seed);
        legend.draw(&PathElement::new(vec![(10, y), (50, y)], c.stroke_width(3)))?;
        legend.draw(&Text::new(
            format!("seed {seed}"),
            (60, y - 8),
            ("sans-serif", 17),
        ))?;
    }
    let y = 65 + 26 * seeds.len() as i32 + 20;
    let black = BLACK.to_rgba();
    legend.draw(&PathElement::new(
        vec![(10, y), (50, y)],
        black.stroke_width(2),
    ))?;
    legend.draw(&Text::new(
        "train (batches)",
        (60, y - 8),
        ("sans-serif", 15),
    ))?;
    let y = y + 26;
    legend.draw(&plotters::element::DashedPathElement::new(
        vec![(10, y), (50, y)],
        6,
        4,
        black.stroke_width(2),
    ))?;
    legend.draw(&Text::new("validation", (60, y - 8), ("sans-serif", 15)))?;
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
