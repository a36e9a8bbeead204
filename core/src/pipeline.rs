//! One run, end to end: data -> dense model -> optional pruner -> for every forget set and every
//! model: the original and each unlearner -> evaluation -> gaps to retrain -> report.
//!
//! Every stage (the dense model, the sparse model, each row) is kept in a content-addressed
//! [`Cache`] (default `<out>/cache/`) under a key computed from exactly what it depends on, so a
//! re-run resumes where it stopped and a changed config recomputes only the stages it touches.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tch::Device;

use crate::cache::{file_sha256, hex, Cache, CacheError, StageKey, StageKind};
use crate::checkpoint::Provenance;
use crate::config::Plan;
use crate::device::{device_name, synchronize};
use crate::eval::gap::{gap, Gap};
use crate::eval::{evaluate, Metrics, MiaError, SplitOutputs};
use crate::forget::ForgetSet;
use crate::io::{ensure_writable_dir, write_atomic};
use crate::mask::Mask;
use crate::method::{MethodError, PruneCtx, RewindPoint, TaskData, UnlearnCtx};
use crate::model::{Model, ModelError, ModelSpec, Snapshot};
use crate::train::{CrossEntropy, Run, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("output directory {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", method_message(label, source))]
    Method { label: String, source: MethodError },
    #[error("{label} left non-finite weights; no result was recorded for it")]
    NonFinite { label: String },
    #[error("evaluating {label}: {source}")]
    Eval { label: String, source: MiaError },
    #[error("stage cache entry {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("refusing to write into {path}: it is not empty and was not made by unlearn (choose a new or empty folder with --out)")]
    ForeignOutput { path: PathBuf },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

/// Training errors already name their run; other method errors get the label in front.
fn method_message(label: &str, e: &MethodError) -> String {
    match e {
        MethodError::Train(t) => t.to_string(),
        other => format!("{label}: {other}"),
    }
}

pub struct RunOptions<'a> {
    pub device: Device,
    pub out_dir: PathBuf,
    pub trainer: Trainer,
    /// The stage cache (default: `<out>/cache`); several runs can share one.
    pub cache_dir: Option<PathBuf>,
    /// Receives one line per stage (for the CLI to print).
    pub notify: &'a dyn Fn(&str),
}

/// One row of the results table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub scenario: String,
    /// `dense` or `sparse`.
    pub model: String,
    pub sparsity: f64,
    /// `original` for the model before unlearning, else the registered method name.
    pub method: String,
    pub label: String,
    pub metrics: Metrics,
    /// Run-time efficiency: seconds of the unlearning step alone.
    pub rte: Option<f64>,
    /// Gap to the `retrain` row of the same scenario and model.
    pub gap: Option<Gap>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub sparsity: f64,
    pub pruned_weights: i64,
    pub prunable_weights: i64,
    pub parameters: i64,
    /// Seconds of training (dense: the dense schedule; sparse: pruning and retraining).
    pub train_seconds: f64,
    pub train_accuracy: f64,
    pub val_accuracy: f64,
    pub test_accuracy: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    pub name: String,
    pub kind: crate::forget::ForgetKind,
    pub class: Option<usize>,
    pub forget_size: usize,
    pub retain_size: usize,
    pub forget_sha256: String,
    /// Positions in the train split.
    pub forget_indices: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResults {
    pub unlearn_version: String,
    pub device: String,
    pub libtorch: String,
    pub dataset: String,
    pub config: serde_json::Value,
    /// Indices into the data set for each split.
    pub split: crate::data::Split,
    pub models: Vec<ModelSummary>,
    pub scenarios: Vec<ScenarioSummary>,
    pub rows: Vec<Row>,
    /// Every stage, computed or taken from the cache.
    pub stages: Vec<StageReport>,
    /// The stage cache this run used.
    pub cache: PathBuf,
    pub seconds: f64,
}

struct Variant {
    name: &'static str,
    model: Model,
    mask: Option<Mask>,
    summary: ModelSummary,
    outputs: SplitOutputs,
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
}

/// The keys of every stage of a plan, computed before anything runs.
pub struct StageKeys {
    pub dense: StageKey,
    pub sparse: Option<StageKey>,
    /// Per forget set, per model variant (dense, then sparse): the `original` row, then one per
    /// unlearner in config order.
    pub rows: Vec<Vec<Vec<StageKey>>>,
}

impl StageKeys {
    pub fn new(plan: &Plan) -> Result<StageKeys, PipelineError> {
        let cfg = &plan.config;
        let spec = crate::config::model_spec(cfg.model.arch, &plan.dataset);
        let rewind = plan.pruner.as_ref().and_then(|p| p.instance.rewind_point());
        let data = data_identity(plan);
        let common = json!({
            "unlearn": env!("CARGO_PKG_VERSION"),
            "revision": COMPUTATION_REVISION,
            "data": data,
            "model": spec,
        });
        let dense = match &plan.checkpoint {
            Some(path) => {
                let sha = file_sha256(path).map_err(|e| PipelineError::Input {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                StageKey::of(
                    StageKind::Dense,
                    &json!({"common": common, "checkpoint": sha, "rewind": rewind}),
                )
            }
            None => StageKey::of(
                StageKind::Dense,
                &json!({
                    "common": common,
                    "train": cfg.train,
                    "seed": cfg.seed,
                    "rewind": rewind,
                }),
            ),
        };
        let sparse = plan.pruner.as_ref().map(|p| {
            StageKey::of(
                StageKind::Sparse,
                &json!({
                    "dense": dense,
                    "method": p.method,
                    "config": p.full_config,
                    "build": p.build,
                }),
            )
        });
        let models: Vec<&StageKey> = std::iter::once(&dense).chain(sparse.as_ref()).collect();
        let rows = plan
            .forget
            .iter()
            .map(|f| {
                let forget = json!({"indices": f.hash(), "kind": f.kind, "class": f.class});
                models
                    .iter()
                    .map(|model| {
                        let base = json!({"model": model, "forget": forget, "eval": cfg.eval});
                        let original = StageKey::of(StageKind::Row, &base);
                        std::iter::once(original)
                            .chain(plan.unlearners.iter().map(|u| {
                                StageKey::of(
                                    StageKind::Row,
                                    &json!({
                                        "base": base,
                                        "method": u.method,
                                        "config": u.full_config,
                                        "build": u.build,
                                        "seed": cfg.seed,
                                    }),
                                )
                            }))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Ok(StageKeys {
            dense,
            sparse,
            rows,
        })
    }
}

/// What identifies the data a run sees: the set's name, a hash of its pixels and labels, the
/// split, and the augmentation.
fn data_identity(plan: &Plan) -> Value {
    let d = &plan.dataset;
    let mut h = Sha256::new();
    let pixels = d
        .images
        .contiguous()
        .to_kind(tch::Kind::Uint8)
        .flatten(0, -1);
    h.update(Vec::<u8>::try_from(&pixels).unwrap_or_default());
    for l in d.labels_vec() {
        h.update(l.to_le_bytes());
    }
    let split = serde_json::to_vec(&plan.split).expect("splits serialise");
    json!({
        "name": d.name,
        "content": hex(&h.finalize()),
        "split": hex(&Sha256::digest(&split)),
        "augment": d.augment,
    })
}

/// What the cache keeps beside a dense or sparse model.
#[derive(Debug, Serialize, Deserialize)]
struct ModelMeta {
    train_seconds: f64,
    /// Whether `rewind.safetensors` holds the weights the pruner rewinds to.
    rewind: bool,
}

/// Runs a validated plan and writes `results.json` and `report.md` to the output directory.
pub fn run(plan: &Plan, opts: &RunOptions<'_>) -> Result<RunResults, PipelineError> {
    let started = Instant::now();
    let out = &opts.out_dir;
    claim_output_dir(out)?;
    let cache_dir = opts.cache_dir.clone().unwrap_or_else(|| out.join("cache"));
    let cache = Cache::open(&cache_dir)?;
    let keys = StageKeys::new(plan)?;
    let mut stages = Vec::new();
    let cfg = &plan.config;
    let data = TaskData {
        train: plan
            .dataset
            .subset(&plan.split.train)
            .to_device(opts.device),
        val: plan.dataset.subset(&plan.split.val).to_device(opts.device),
        test: plan.dataset.subset(&plan.split.test).to_device(opts.device),
    };
    let spec = crate::config::model_spec(cfg.model.arch, &plan.dataset);
    let eval_batch = cfg.eval.batch_size;
    let provenance = Provenance {
        dataset: Some(plan.dataset.name.clone()),
        train_config: Some(serde_json::to_value(&cfg.train).expect("schedules serialise")),
    };
    let stage = StageRunner {
        cache: &cache,
        notify: opts.notify,
        device: opts.device,
    };

    // The original model: from `model.checkpoint`, or trained here (keeping the weights the
    // pruner rewinds to).
    let rewind_point = plan.pruner.as_ref().and_then(|p| p.instance.rewind_point());
    let mut variants = Vec::new();
    let dense_label = match &plan.checkpoint {
        Some(path) => format!("the model of {}", path.display()),
        None => "dense training".to_string(),
    };
    let (dense, dense_mask, rewind, seconds, report) = stage.model(
        StageKind::Dense,
        &keys.dense,
        &dense_label,
        &spec,
        || match &plan.checkpoint {
            Some(path) => {
                (opts.notify)(&format!("starting from {}", path.display()));
                let (model, mask) = load_original(path, &spec, opts.device)?;
                // The only dense weights there are: the best-validation rewind point of `pt`.
                let rewind =
                    (rewind_point == Some(RewindPoint::BestValidation)).then(|| model.snapshot());
                Ok((model, mask, rewind, 0.0))
            }
            None => {
                (opts.notify)(&format!(
                    "training the dense model ({} epochs on {} samples)",
                    cfg.train.epochs,
                    data.train.len()
                ));
                let mut dense = Model::new(spec.clone(), opts.device, cfg.seed)?;
                let all: Vec<usize> = (0..data.train.len()).collect();
                let stream = crate::train::Stream::new(&data.train, &all);
                let run = Run::new("dense training".into(), &cfg.train, &stream, None, cfg.seed)
                    .keeping(rewind_point, &data.val);
                let mut report = opts
                    .trainer
                    .run(&mut dense, run, &mut CrossEntropy)
                    .map_err(|e| PipelineError::Method {
                        label: "dense training".into(),
                        source: e.into(),
                    })?;
                if let Some(best) = &report.best {
                    (opts.notify)(&format!(
                        "best validation accuracy {:.2}% after epoch {} (the rewind point)",
                        best.accuracy, best.epoch
                    ));
                }
                let rewind = report.rewind.take().or(report.best.map(|b| b.snapshot));
                Ok((dense, None, rewind, report.seconds))
            }
        },
        &provenance,
    )?;
    stages.push(report);
    // A checkpoint with a mask is the sparse model itself.
    let name = if dense_mask.is_some() {
        "sparse"
    } else {
        "dense"
    };
    export_model(&cache, StageKind::Dense, &keys.dense, out, name)?;
    variants.push(variant(name, dense, dense_mask, seconds, &data, eval_batch));

    // Sparse model.
    if let (Some(p), Some(key)) = (&plan.pruner, &keys.sparse) {
        let label = format!("{} pruning", p.label);
        let original = &variants[0].model;
        let (sparse, mask, _, seconds, report) = stage.model(
            StageKind::Sparse,
            key,
            &label,
            &spec,
            || {
                (opts.notify)(&format!("pruning with {}", p.label));
                let mut sparse = original.try_clone()?;
                synchronize(opts.device);
                let t0 = Instant::now();
                let mut ctx = PruneCtx {
                    model: &mut sparse,
                    rewind: rewind.as_ref(),
                    data: &data,
                    schedule: &cfg.train,
                    trainer: &opts.trainer,
                    seed: cfg.seed,
                    label: label.clone(),
                };
                let mask = p
                    .instance
                    .prune(&mut ctx)
                    .map_err(|source| PipelineError::Method {
                        label: label.clone(),
                        source,
                    })?;
                mask.apply(&sparse);
                synchronize(opts.device);
                let seconds = t0.elapsed().as_secs_f64();
                if !sparse.all_finite() {
                    return Err(PipelineError::NonFinite {
                        label: label.clone(),
                    });
                }
                Ok((sparse, Some(mask), None, seconds))
            },
            &provenance,
        )?;
        stages.push(report);
        let Some(mask) = mask else {
            return Err(PipelineError::State {
                path: cache.entry(StageKind::Sparse, key),
                message: "the sparse model has no mask".into(),
            });
        };
        export_model(&cache, StageKind::Sparse, key, out, "sparse")?;
        variants.push(variant(
            "sparse",
            sparse,
            Some(mask),
            seconds,
            &data,
            eval_batch,
        ));
    }
    for v in &variants {
        (opts.notify)(&format!(
            "{} model: sparsity {:.1}%, train {:.1}%, test {:.1}%",
            v.name,
            100.0 * v.summary.sparsity,
            v.summary.train_accuracy,
            v.summary.test_accuracy
        ));
    }

    // Unlearning.
    let mut rows = Vec::new();
    for (f, forget) in plan.forget.iter().enumerate() {
        for (m, v) in variants.iter().enumerate() {
            let group_start = rows.len();
            let group_keys = &keys.rows[f][m];
            let label = format!("original on {} ({})", forget.name, v.name);
            let (metrics, _, report) = stage.row(&group_keys[0], &label, || {
                let metrics = evaluate(&v.outputs, forget, &cfg.eval).map_err(|source| {
                    PipelineError::Eval {
                        label: label.clone(),
                        source,
                    }
                })?;
                Ok((metrics, None))
            })?;
            stages.push(report);
            rows.push(Row {
                scenario: forget.name.clone(),
                model: v.name.into(),
                sparsity: v.summary.sparsity,
                method: "original".into(),
                label: "original".into(),
                metrics,
                rte: None,
                gap: None,
            });
            for (u, key) in plan.unlearners.iter().zip(&group_keys[1..]) {
                let label = format!("{} on {} ({})", u.label, forget.name, v.name);
                let (metrics, rte, report) = stage.row(key, &label, || {
                    (opts.notify)(&format!("unlearning: {label}"));
                    let (model, rte) = unlearn_one(
                        v,
                        &data,
                        forget,
                        &opts.trainer,
                        cfg.seed,
                        &label,
                        u.instance.as_ref(),
                        opts.device,
                    )?;
                    let outputs = SplitOutputs::compute(
                        &model,
                        &data.train,
                        &data.val,
                        &data.test,
                        eval_batch,
                    );
                    let metrics = evaluate(&outputs, forget, &cfg.eval).map_err(|source| {
                        PipelineError::Eval {
                            label: label.clone(),
                            source,
                        }
                    })?;
                    Ok((metrics, Some(rte)))
                })?;
                stages.push(report);
                rows.push(Row {
                    scenario: forget.name.clone(),
                    model: v.name.into(),
                    sparsity: v.summary.sparsity,
                    method: u.method.clone(),
                    label: u.label.clone(),
                    metrics,
                    rte,
                    gap: None,
                });
            }
            add_gaps(&mut rows[group_start..]);
        }
    }

    let results = RunResults {
        unlearn_version: env!("CARGO_PKG_VERSION").into(),
        device: device_name(opts.device),
        libtorch: crate::device::libtorch_version(),
        dataset: plan.dataset.name.clone(),
        config: serde_json::to_value(&plan.config).expect("configs serialise"),
        split: plan.split.clone(),
        models: variants.iter().map(|v| v.summary.clone()).collect(),
        scenarios: plan.forget.iter().map(scenario_summary).collect(),
        rows,
        stages,
        cache: cache.dir().to_path_buf(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&results).expect("results serialise");
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        write_atomic(&path, bytes).map_err(|source| PipelineError::Output { path, source })
    };
    write("results.json", &json)?;
    write("report.md", crate::report::markdown(&results).as_bytes())?;
    Ok(results)
}

/// The stages of a plan and whether the cache already holds each (for `run --dry-run`).
pub fn dry_run(plan: &Plan, cache_dir: &Path) -> Result<Vec<StageReport>, PipelineError> {
    let keys = StageKeys::new(plan)?;
    let cache = Cache::open(cache_dir)?;
    let seconds = |kind, key: &StageKey| -> f64 {
        match kind {
            StageKind::Row => cache
                .meta::<CachedRow>(kind, key)
                .ok()
                .flatten()
                .map_or(0.0, |r| r.seconds),
            _ => cache
                .meta::<ModelMeta>(kind, key)
                .ok()
                .flatten()
                .map_or(0.0, |m| m.train_seconds),
        }
    };
    let report = |kind: StageKind, key: &StageKey, label: String| StageReport {
        kind: kind.name().into(),
        label,
        key: key.0.clone(),
        cached: cache.contains(kind, key),
        seconds: seconds(kind, key),
    };
    let mut out = vec![report(StageKind::Dense, &keys.dense, "dense model".into())];
    let mut names = vec!["dense"];
    if let (Some(p), Some(k)) = (&plan.pruner, &keys.sparse) {
        out.push(report(StageKind::Sparse, k, format!("{} pruning", p.label)));
        names.push("sparse");
    }
    for (f, forget) in plan.forget.iter().enumerate() {
        for (m, name) in names.iter().enumerate() {
            let labels = std::iter::once("original".to_string())
                .chain(plan.unlearners.iter().map(|u| u.label.clone()));
            for (label, key) in labels.zip(&keys.rows[f][m]) {
                out.push(report(
                    StageKind::Row,
                    key,
                    format!("{label} on {} ({name})", forget.name),
                ));
            }
        }
    }
    Ok(out)
}

/// A row as the cache keeps it: what it measured, not what the config calls it.
#[derive(Debug, Serialize, Deserialize)]
struct CachedRow {
    metrics: Metrics,
    rte: Option<f64>,
    seconds: f64,
}

/// A model stage's result: model, mask, rewind snapshot, training seconds.
type ModelParts = (Model, Option<Mask>, Option<Snapshot>, f64);

/// Looks stages up in the cache, computes the missing ones under their lock, and reports each.
struct StageRunner<'a> {
    cache: &'a Cache,
    notify: &'a dyn Fn(&str),
    device: Device,
}

impl StageRunner<'_> {
    fn corrupt(&self, kind: StageKind, key: &StageKey, why: &str) -> Result<(), PipelineError> {
        (self.notify)(&format!(
            "cache entry {kind}/{} is unreadable ({why}): discarded, recomputing",
            key.short()
        ));
        Ok(self.cache.discard(kind, key)?)
    }

    /// A cached model, or None (a corrupt entry is discarded).
    fn load_model(
        &self,
        kind: StageKind,
        key: &StageKey,
        spec: &ModelSpec,
    ) -> Result<Option<ModelParts>, PipelineError> {
        let meta: ModelMeta = match self.cache.meta(kind, key) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(why) => {
                self.corrupt(kind, key, &why)?;
                return Ok(None);
            }
        };
        let dir = self.cache.entry(kind, key);
        let loaded = (|| -> Result<ModelParts, String> {
            let mut model = Model::build(spec.clone(), self.device).map_err(|e| e.to_string())?;
            let path = dir.join("model.safetensors");
            let (mask, _) = crate::checkpoint::load_into(&path, &mut model)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let rewind = if meta.rewind {
                let p = dir.join("rewind.safetensors");
                Some(Snapshot::load(&p, self.device).map_err(|e| format!("{}: {e}", p.display()))?)
            } else {
                None
            };
            Ok((model, mask, rewind, meta.train_seconds))
        })();
        match loaded {
            Ok(parts) => Ok(Some(parts)),
            Err(why) => {
                self.corrupt(kind, key, &why)?;
                Ok(None)
            }
        }
    }

    /// The model stage `key`: from the cache, or computed by `compute` and stored.
    fn model(
        &self,
        kind: StageKind,
        key: &StageKey,
        label: &str,
        spec: &ModelSpec,
        compute: impl FnOnce() -> Result<ModelParts, PipelineError>,
        provenance: &Provenance,
    ) -> Result<(Model, Option<Mask>, Option<Snapshot>, f64, StageReport), PipelineError> {
        let report = |cached, seconds| StageReport {
            kind: kind.name().into(),
            label: label.to_string(),
            key: key.0.clone(),
            cached,
            seconds,
        };
        if let Some((m, mask, r, s)) = self.load_model(kind, key, spec)? {
            return Ok((m, mask, r, s, report(true, s)));
        }
        let _lock = self.cache.lock(kind, key)?;
        // Another process may have computed it while this one waited.
        if let Some((m, mask, r, s)) = self.load_model(kind, key, spec)? {
            return Ok((m, mask, r, s, report(true, s)));
        }
        let (model, mask, rewind, seconds) = compute()?;
        let meta = ModelMeta {
            train_seconds: seconds,
            rewind: rewind.is_some(),
        };
        self.cache.put::<PipelineError>(kind, key, &meta, |dir| {
            crate::checkpoint::save(
                &dir.join("model.safetensors"),
                &model,
                mask.as_ref(),
                provenance,
            )?;
            if let Some(r) = &rewind {
                r.save(&dir.join("rewind.safetensors"))?;
            }
            Ok(())
        })?;
        Ok((model, mask, rewind, seconds, report(false, seconds)))
    }

    /// The row stage `key`: its metrics and RTE from the cache, or computed and stored.
    fn row(
        &self,
        key: &StageKey,
        label: &str,
        compute: impl FnOnce() -> Result<(Metrics, Option<f64>), PipelineError>,
    ) -> Result<(Metrics, Option<f64>, StageReport), PipelineError> {
        let kind = StageKind::Row;
        let cached = || -> Result<Option<CachedRow>, PipelineError> {
            match self.cache.meta::<CachedRow>(kind, key) {
                Ok(r) => Ok(r),
                Err(why) => {
                    self.corrupt(kind, key, &why)?;
                    Ok(None)
                }
            }
        };
        let report = |cached, seconds| StageReport {
            kind: kind.name().into(),
            label: label.to_string(),
            key: key.0.clone(),
            cached,
            seconds,
        };
        if let Some(r) = cached()? {
            return Ok((r.metrics, r.rte, report(true, r.seconds)));
        }
        let _lock = self.cache.lock(kind, key)?;
        if let Some(r) = cached()? {
            return Ok((r.metrics, r.rte, report(true, r.seconds)));
        }
        let t0 = Instant::now();
        let (metrics, rte) = compute()?;
        let row = CachedRow {
            metrics,
            rte,
            seconds: t0.elapsed().as_secs_f64(),
        };
        self.cache
            .put::<PipelineError>(kind, key, &row, |_| Ok(()))?;
        Ok((row.metrics, row.rte, report(false, row.seconds)))
    }
}

/// Copies a cached model to `<out>/models/<name>.safetensors`, the checkpoint users load.
fn export_model(
    cache: &Cache,
    kind: StageKind,
    key: &StageKey,
    out: &Path,
    name: &str,
) -> Result<(), PipelineError> {
    let dir = out.join("models");
    let output = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PipelineError::Output { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(output(&dir))?;
    let dest = dir.join(format!("{name}.safetensors"));
    let src = cache.entry(kind, key).join("model.safetensors");
    let bytes = std::fs::read(&src).map_err(output(&src))?;
    write_atomic(&dest, &bytes).map_err(output(&dest))
}

/// The file that marks a folder as an unlearn output folder.
pub const OUTPUT_MARKER: &str = ".unlearn-output";

/// Makes `out` this program's output folder: creates it, or accepts it when it is empty, marked
/// as unlearn's, or an output folder of an earlier version (it has `state/fingerprint`). Any
/// other non-empty folder is refused before anything is written into it.
pub fn claim_output_dir(out: &Path) -> Result<(), PipelineError> {
    let output = |source| PipelineError::Output {
        path: out.to_path_buf(),
        source,
    };
    let marker = out.join(OUTPUT_MARKER);
    if out.exists() && !marker.exists() {
        let mut entries = std::fs::read_dir(out).map_err(output)?;
        let legacy = out.join("state").join("fingerprint").is_file();
        if entries.next().is_some() && !legacy {
            return Err(PipelineError::ForeignOutput {
                path: out.to_path_buf(),
            });
        }
    }
    ensure_writable_dir(out).map_err(output)?;
    if !marker.exists() {
        write_atomic(
            &marker,
            b"This folder holds the output of `unlearn run`; unlearn writes into it.\n",
        )
        .map_err(output)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn unlearn_one(
    v: &Variant,
    data: &TaskData,
    forget: &ForgetSet,
    trainer: &Trainer,
    seed: u64,
    label: &str,
    unlearner: &dyn crate::method::Unlearner,
    device: Device,
) -> Result<(Model, f64), PipelineError> {
    let mut model = v.model.try_clone()?;
    synchronize(device);
    let t0 = Instant::now();
    let mut ctx = UnlearnCtx {
        model: &mut model,
        mask: v.mask.as_ref(),
        data,
        forget,
        trainer,
        seed,
        label: label.to_string(),
    };
    unlearner
        .unlearn(&mut ctx)
        .map_err(|source| PipelineError::Method {
            label: label.to_string(),
            source,
        })?;
    // The invariant holds whatever the method did (a one-shot update may have touched pruned weights).
    if let Some(m) = &v.mask {
        m.apply(&model);
    }
    synchronize(device);
    let rte = t0.elapsed().as_secs_f64();
    if !model.all_finite() {
        return Err(PipelineError::NonFinite {
            label: label.to_string(),
        });
    }
    Ok((model, rte))
}

/// The model of `model.checkpoint`: an unlearn checkpoint, or PyTorch weights (imported).
fn load_original(
    path: &Path,
    spec: &ModelSpec,
    device: Device,
) -> Result<(Model, Option<Mask>), PipelineError> {
    use crate::checkpoint::{import_pytorch, load, metadata, CheckpointError};
    match metadata(path) {
        Err(CheckpointError::MissingMetadata { .. }) => {
            Ok(import_pytorch(path, spec.clone(), device)?)
        }
        _ => {
            let (model, mask, _) = load(path, device)?;
            Ok((model, mask))
        }
    }
}

fn variant(
    name: &'static str,
    model: Model,
    mask: Option<Mask>,
    train_seconds: f64,
    data: &TaskData,
    batch: usize,
) -> Variant {
    let outputs = SplitOutputs::compute(&model, &data.train, &data.val, &data.test, batch);
    let prunable: i64 = model.prunable().values().map(|t| t.numel() as i64).sum();
    let pruned = mask.as_ref().map(|m| m.zeros()).unwrap_or(0);
    let summary = ModelSummary {
        name: name.into(),
        sparsity: pruned as f64 / prunable as f64,
        pruned_weights: pruned,
        prunable_weights: prunable,
        parameters: model.num_parameters(),
        train_seconds,
        train_accuracy: outputs.train.accuracy(),
        val_accuracy: outputs.val.accuracy(),
        test_accuracy: outputs.test.accuracy(),
    };
    Variant {
        name,
        model,
        mask,
        summary,
        outputs,
    }
}

/// Fills in each row's gap to the group's `retrain` row, if the group has one.
fn add_gaps(group: &mut [Row]) {
    let Some(reference) = group
        .iter()
        .find(|r| r.method == "retrain")
        .map(|r| r.metrics.clone())
    else {
        return;
    };
    for r in group {
        r.gap = Some(gap(&r.metrics, &reference));
    }
}

fn scenario_summary(f: &ForgetSet) -> ScenarioSummary {
    ScenarioSummary {
        name: f.name.clone(),
        kind: f.kind,
        class: f.class,
        forget_size: f.forget.len(),
        retain_size: f.retain.len(),
        forget_sha256: f.hash(),
        forget_indices: f.forget.clone(),
    }
}

/// Changes whenever the same config computes other numbers than before (initialisation,
/// evaluation), so that a state written by an older build is not resumed into a newer one.
pub const COMPUTATION_REVISION: &str = "2: reference-code initialisation and evaluation";
