//! What a run produces, as `results.json` holds it: the rows (one per seed x scenario x model x
//! method), the models, the scenarios, the stages; and the checks `report` makes before it draws
//! from a results file (consistency, gaps recomputed by today's rules).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::{StageKey, StageKind};
use crate::eval::Metrics;
use crate::eval::gap::{Gap, gap};
use crate::train::RunLog;

/// One row of the results table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The run's seed (model initialisation, batch order, the methods' own draws).
    pub seed: u64,
    pub scenario: String,
    /// `dense` or `sparse`.
    pub model: String,
    /// The pruner (its label) that made the sparse model; None for the dense one.
    pub pruner: Option<String>,
    pub sparsity: f64,
    /// `original` for the model before unlearning, else the registered method name.
    pub method: String,
    pub label: String,
    pub metrics: Metrics,
    /// Run-time efficiency: seconds of the unlearning step alone.
    pub rte: Option<f64>,
    /// Gap to the `retrain` row of the same scenario and model.
    pub gap: Option<Gap>,
    /// The registered metrics the config asked for (`[eval] metrics`): column -> value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSummary {
    pub seed: u64,
    pub name: String,
    /// The pruner (its label) that made it; None for the dense model.
    pub pruner: Option<String>,
    /// Its checkpoint, relative to the output folder.
    pub file: String,
    pub sparsity: f64,
    pub pruned_weights: i64,
    pub prunable_weights: i64,
    pub parameters: i64,
    /// Seconds of training (dense: the dense schedule; sparse: pruning and retraining).
    pub train_seconds: f64,
    #[serde(with = "crate::io::nan_as_null")]
    pub train_accuracy: f64,
    /// NaN (`null` in results.json) without a validation split.
    #[serde(with = "crate::io::nan_as_null")]
    pub val_accuracy: f64,
    #[serde(with = "crate::io::nan_as_null")]
    pub test_accuracy: f64,
}

/// The attack a run poisoned its training set with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackSummary {
    pub method: String,
    pub label: String,
    /// Its settings, every default filled in.
    pub config: serde_json::Value,
    /// The seed that drew the poisoned rows.
    pub seed: u64,
    /// The class triggered images should be classified as.
    pub target: usize,
    /// The poisoned rows: positions in the train split (the `poisoned` forget set).
    pub poisoned: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioSummary {
    pub name: String,
    /// The registered scenario (`class`, `random`, `file`, `subclass`, a plugin's).
    pub kind: String,
    pub class: Option<usize>,
    pub forget_size: usize,
    pub retain_size: usize,
    pub forget_sha256: String,
    /// Positions in the train split.
    pub forget_indices: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub unlearn_version: String,
    pub device: String,
    pub libtorch: String,
    pub dataset: String,
    pub config: serde_json::Value,
    /// Indices into the data set for each split.
    pub split: crate::data::Split,
    /// The seeds run; every model and row names its own.
    pub seeds: Vec<u64>,
    /// The `[attack]` of a Trojan cleanse, with the rows it poisoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<AttackSummary>,
    pub models: Vec<ModelSummary>,
    pub scenarios: Vec<ScenarioSummary>,
    pub rows: Vec<Row>,
    /// Every stage, computed or taken from the cache.
    pub stages: Vec<StageReport>,
    /// The stage cache this run used.
    pub cache: PathBuf,
    pub seconds: f64,
}

/// One stage of a run as it happened: computed here, or taken from the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReport {
    pub kind: String,
    /// What it is, e.g. `FT on class-3 (sparse)`.
    pub label: String,
    /// Its cache key (SHA-256 of its inputs).
    pub key: String,
    pub cached: bool,
    /// Seconds it took when computed (as recorded in the cache for cached stages).
    pub seconds: f64,
    /// The seed whose run it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The epoch log of every training loop the stage ran, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub training: Vec<RunLog>,
}

impl StageReport {
    pub fn new(kind: StageKind, key: &StageKey, label: &str, cached: bool, seconds: f64) -> Self {
        StageReport {
            kind: kind.name().into(),
            label: label.into(),
            key: key.0.clone(),
            cached,
            seconds,
            seed: None,
            training: Vec::new(),
        }
    }

    pub(crate) fn with_training(self, training: Vec<RunLog>) -> Self {
        StageReport { training, ..self }
    }
}

/// Recomputes every row's gap from the stored metrics, group by group (a group: the rows of one
/// seed, scenario and model, wherever they stand in `rows`). `unlearn report` calls it because
/// which MIA scores count is judged when results are read (`MiaScore`'s deserialisation), so
/// gaps stored by an older rule would disagree with the flags shown beside them; and a gap
/// stored without a `retrain` row in its group is dropped.
pub fn recompute_gaps(results: &mut RunResults) {
    let mut groups: BTreeMap<(u64, String, String, Option<String>), Vec<usize>> = BTreeMap::new();
    for (i, r) in results.rows.iter().enumerate() {
        let k = (
            r.seed,
            r.scenario.clone(),
            r.model.clone(),
            r.pruner.clone(),
        );
        groups.entry(k).or_default().push(i);
    }
    for idx in groups.values() {
        let mut group: Vec<Row> = idx.iter().map(|&i| results.rows[i].clone()).collect();
        add_gaps(&mut group);
        for (&i, r) in idx.iter().zip(group) {
            results.rows[i] = r;
        }
    }
}

/// Fills in each row's gap to the group's `retrain` row; without one, no row has a gap.
pub(crate) fn add_gaps(group: &mut [Row]) {
    let reference = group
        .iter()
        .find(|r| r.method == "retrain")
        .map(|r| r.metrics.clone());
    for r in group {
        r.gap = reference
            .as_ref()
            .map(|reference| gap(&r.metrics, reference));
    }
}

/// Every inconsistency of a results.json that the reports would show as if it were a result: a
/// number out of its range or not finite (accuracies and MIA scores are percentages), a row of
/// an unknown seed or scenario, the same row twice (it would count as another seed), a model
/// file outside the folder. What `unlearn report` refuses to draw.
pub fn check_results(r: &RunResults) -> Vec<String> {
    let mut c = Checker::default();
    if r.seeds.is_empty() {
        c.out.push("`seeds` is empty".into());
    }
    let mut seen_seeds = std::collections::BTreeSet::new();
    for s in &r.seeds {
        if !seen_seeds.insert(s) {
            c.out.push(format!("seed {s} is listed twice in `seeds`"));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for s in &r.scenarios {
        if !names.insert(s.name.as_str()) {
            c.out.push(format!("scenario `{}` is listed twice", s.name));
        }
    }
    check_models(r, &mut c);
    check_rows(r, &names, &mut c);
    check_stages(r, &mut c);
    c.out
}

/// What [`check_results`] found so far, and its rules for single numbers.
#[derive(Default)]
struct Checker {
    out: Vec<String>,
}

impl Checker {
    /// 1e200 as `1e200`, not as 201 digits.
    fn show(v: f64) -> String {
        if v != 0.0 && v.is_finite() && !(1e-4..1e6).contains(&v.abs()) {
            format!("{v:e}")
        } else {
            format!("{v}")
        }
    }

    fn pct(&mut self, what: String, v: f64) {
        if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
            self.out.push(format!(
                "{what} is {}, not a percentage in [0, 100]",
                Checker::show(v)
            ));
        }
    }

    fn pct_or_nan(&mut self, what: String, v: f64) {
        if !v.is_nan() {
            self.pct(what, v)
        }
    }

    fn finite(&mut self, what: String, v: f64, min: f64) {
        if !(v.is_finite() && v >= min) {
            self.out.push(format!(
                "{what} is {}, not a finite number >= {}",
                Checker::show(v),
                Checker::show(min)
            ));
        }
    }
}

fn check_models(r: &RunResults, c: &mut Checker) {
    for (i, m) in r.models.iter().enumerate() {
        let at = |f: &str| format!("models[{i}].{f}");
        if !r.seeds.contains(&m.seed) {
            c.out
                .push(format!("{} {} is not one of `seeds`", at("seed"), m.seed));
        }
        c.pct(at("train_accuracy"), m.train_accuracy);
        c.pct_or_nan(at("val_accuracy"), m.val_accuracy);
        c.pct(at("test_accuracy"), m.test_accuracy);
        if !(0.0..=1.0).contains(&m.sparsity) {
            c.out.push(format!(
                "{} is {}, not in [0, 1]",
                at("sparsity"),
                m.sparsity
            ));
        }
        c.finite(at("train_seconds"), m.train_seconds, 0.0);
        let inside = Path::new(&m.file)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside || m.file.is_empty() {
            c.out.push(format!(
                "{} `{}` is not a path inside the folder",
                at("file"),
                m.file
            ));
        }
    }
}

fn check_rows(r: &RunResults, names: &std::collections::BTreeSet<&str>, c: &mut Checker) {
    let mut rows = std::collections::BTreeSet::new();
    for (i, row) in r.rows.iter().enumerate() {
        let at = |f: &str| format!("rows[{i}].{f}");
        if !r.seeds.contains(&row.seed) {
            c.out
                .push(format!("{} {} is not one of `seeds`", at("seed"), row.seed));
        }
        if !names.contains(row.scenario.as_str()) {
            c.out.push(format!(
                "{} `{}` is not one of `scenarios`",
                at("scenario"),
                row.scenario
            ));
        }
        let key = (row.seed, &row.scenario, &row.model, &row.pruner, &row.label);
        if !rows.insert(key) {
            c.out.push(format!(
                "rows[{i}] repeats the row of seed {}, scenario `{}`, model `{}`, method `{}` (a repeated row would count as another seed)",
                row.seed, row.scenario, row.model, row.label
            ));
        }
        let m = &row.metrics;
        for (f, v) in [
            ("ua", m.ua),
            ("ra", m.ra),
            ("ta", m.ta),
            ("ta_full", m.ta_full),
        ] {
            c.pct(at(&format!("metrics.{f}")), v);
        }
        c.pct_or_nan(at("metrics.val"), m.val);
        for (set, scores) in [
            ("mia_efficacy", &m.mia_efficacy),
            ("mia_privacy", &m.mia_privacy),
        ] {
            for (feature, s) in scores {
                c.pct(at(&format!("metrics.{set}.{feature:?}")), s.value);
            }
        }
        for (f, v) in [("asr", m.asr), ("asr_non_target", m.asr_non_target)] {
            if let Some(v) = v {
                c.pct(at(&format!("metrics.{f}")), v);
            }
        }
        if let Some(t) = row.rte {
            c.finite(at("rte"), t, 0.0);
        }
        if !(0.0..=1.0).contains(&row.sparsity) {
            c.out.push(format!(
                "{} is {}, not in [0, 1]",
                at("sparsity"),
                row.sparsity
            ));
        }
        for (name, v) in &row.extra {
            c.finite(at(&format!("extra.{name}")), *v, f64::MIN);
        }
    }
}

fn check_stages(r: &RunResults, c: &mut Checker) {
    for (i, st) in r.stages.iter().enumerate() {
        for run in &st.training {
            for (e, ep) in run.epochs.iter().enumerate() {
                let at = |f: &str| format!("stages[{i}] `{}` epoch {}: {f}", st.label, e + 1);
                if !ep.loss.is_nan() {
                    c.finite(at("loss"), ep.loss.abs(), 0.0);
                }
                for (f, v) in [
                    ("train_accuracy", ep.train_accuracy),
                    ("val_accuracy", ep.val_accuracy),
                ] {
                    if let Some(v) = v {
                        c.pct(at(f), v);
                    }
                }
            }
        }
    }
}
