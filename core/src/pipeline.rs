//! One run, end to end: data -> dense model -> optional pruner -> for every forget set and every
//! model: the original and each unlearner -> evaluation -> gaps to retrain -> report.
//!
//! Progress is kept under `<out>/state/` (model checkpoints and finished rows, written
//! atomically), so re-running the same config into the same directory resumes where it stopped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Device;

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
    #[error("resume state in {path}: {message}")]
    State { path: PathBuf, message: String },
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
    pub seconds: f64,
}

struct Variant {
    name: &'static str,
    model: Model,
    mask: Option<Mask>,
    summary: ModelSummary,
    outputs: SplitOutputs,
}

/// Runs a validated plan and writes `results.json` and `report.md` to the output directory.
pub fn run(plan: &Plan, opts: &RunOptions<'_>) -> Result<RunResults, PipelineError> {
    let started = Instant::now();
    let out = &opts.out_dir;
    let state = State::open(out, plan)?;
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
    let mut variants = Vec::new();

    // The original model: from `model.checkpoint`, or trained here (keeping the weights the
    // pruner rewinds to).
    let rewind_point = plan.pruner.as_ref().and_then(|p| p.instance.rewind_point());
    let mut rewind = None;
    if let Some(path) = &plan.checkpoint {
        (opts.notify)(&format!("starting from {}", path.display()));
        let (model, mask) = load_original(path, &spec, opts.device)?;
        // The only dense weights there are: the best-validation rewind point of `pt`.
        if rewind_point == Some(RewindPoint::BestValidation) {
            rewind = Some(model.snapshot());
        }
        let name = if mask.is_some() { "sparse" } else { "dense" };
        variants.push(variant(name, model, mask, 0.0, &data, eval_batch));
    } else {
        let mut dense = Model::new(spec.clone(), opts.device, cfg.seed)?;
        let seconds = match state.load_model("dense", &mut dense)? {
            Some((seconds, _)) => {
                rewind = state.load_snapshot("rewind", opts.device)?;
                seconds
            }
            None => {
                (opts.notify)(&format!(
                    "training the dense model ({} epochs on {} samples)",
                    cfg.train.epochs,
                    data.train.len()
                ));
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
                if let Some(r) = report.kept() {
                    state.save_snapshot("rewind", r)?;
                }
                state.save_model("dense", &dense, None, report.seconds, &provenance)?;
                rewind = report.rewind.take().or(report.best.map(|b| b.snapshot));
                report.seconds
            }
        };
        variants.push(variant("dense", dense, None, seconds, &data, eval_batch));
    }

    // Sparse model.
    if let Some(p) = &plan.pruner {
        let label = format!("{} pruning", p.label);
        let mut sparse = variants[0].model.try_clone()?;
        let (mask, seconds) = match state.load_model("sparse", &mut sparse)? {
            Some((seconds, Some(mask))) => (mask, seconds),
            Some((_, None)) => {
                return Err(state.error("models/sparse.safetensors has no mask".into()))
            }
            None => {
                (opts.notify)(&format!("pruning with {}", p.label));
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
                    return Err(PipelineError::NonFinite { label });
                }
                state.save_model("sparse", &sparse, Some(&mask), seconds, &provenance)?;
                (mask, seconds)
            }
        };
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
    for forget in &plan.forget {
        for v in &variants {
            let group_start = rows.len();
            let key = format!("{}__{}__original", forget.name, v.name);
            let row = match state.load_row(&key)? {
                Some(r) => r,
                None => {
                    let label = format!("original on {} ({})", forget.name, v.name);
                    let metrics = evaluate(&v.outputs, forget, &cfg.eval)
                        .map_err(|source| PipelineError::Eval { label, source })?;
                    let r = Row {
                        scenario: forget.name.clone(),
                        model: v.name.into(),
                        sparsity: v.summary.sparsity,
                        method: "original".into(),
                        label: "original".into(),
                        metrics,
                        rte: None,
                        gap: None,
                    };
                    state.save_row(&key, &r)?;
                    r
                }
            };
            rows.push(row);
            for u in &plan.unlearners {
                let key = format!("{}__{}__{}", forget.name, v.name, u.label);
                if let Some(r) = state.load_row(&key)? {
                    rows.push(r);
                    continue;
                }
                let label = format!("{} on {} ({})", u.label, forget.name, v.name);
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
                let outputs =
                    SplitOutputs::compute(&model, &data.train, &data.val, &data.test, eval_batch);
                let metrics = evaluate(&outputs, forget, &cfg.eval).map_err(|source| {
                    PipelineError::Eval {
                        label: label.clone(),
                        source,
                    }
                })?;
                let r = Row {
                    scenario: forget.name.clone(),
                    model: v.name.into(),
                    sparsity: v.summary.sparsity,
                    method: u.method.clone(),
                    label: u.label.clone(),
                    metrics,
                    rte: Some(rte),
                    gap: None,
                };
                state.save_row(&key, &r)?;
                rows.push(r);
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

/// `<out>/state/`: checkpoints and finished rows of this config. A different config (other
/// fingerprint) starts from scratch.
struct State {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    train_seconds: f64,
}

impl State {
    fn open(out: &Path, plan: &Plan) -> Result<State, PipelineError> {
        let output = |source| PipelineError::Output {
            path: out.to_path_buf(),
            source,
        };
        ensure_writable_dir(out).map_err(output)?;
        let dir = out.join("state");
        let fingerprint = fingerprint(plan);
        let fp_path = dir.join("fingerprint");
        if std::fs::read_to_string(&fp_path).ok().as_deref() != Some(fingerprint.as_str()) {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(output)?;
            }
            std::fs::create_dir_all(dir.join("rows")).map_err(output)?;
            write_atomic(&fp_path, fingerprint.as_bytes()).map_err(output)?;
        }
        Ok(State { dir })
    }

    fn error(&self, message: String) -> PipelineError {
        PipelineError::State {
            path: self.dir.clone(),
            message,
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), PipelineError> {
        let path = self.dir.join(name);
        write_atomic(&path, bytes).map_err(|source| PipelineError::Output { path, source })
    }

    fn save_snapshot(&self, name: &str, s: &Snapshot) -> Result<(), PipelineError> {
        Ok(s.save(&self.dir.join(format!("{name}.safetensors")))?)
    }

    fn load_snapshot(&self, name: &str, device: Device) -> Result<Option<Snapshot>, PipelineError> {
        let p = self.dir.join(format!("{name}.safetensors"));
        if !p.exists() {
            return Ok(None);
        }
        Snapshot::load(&p, device)
            .map(Some)
            .map_err(|e| self.error(format!("{}: {e}", p.display())))
    }

    /// Writes `<out>/models/<name>.safetensors` (a checkpoint others can load) and its training
    /// time beside the state.
    fn save_model(
        &self,
        name: &str,
        model: &Model,
        mask: Option<&Mask>,
        train_seconds: f64,
        provenance: &Provenance,
    ) -> Result<(), PipelineError> {
        let path = self.model_path(name);
        let models = path.parent().expect("models/ has a parent");
        std::fs::create_dir_all(models).map_err(|source| PipelineError::Output {
            path: models.to_path_buf(),
            source,
        })?;
        crate::checkpoint::save(&path, model, mask, provenance)?;
        self.write(
            &format!("{name}.json"),
            &serde_json::to_vec(&Checkpoint { train_seconds }).expect("serialises"),
        )
    }

    fn model_path(&self, name: &str) -> PathBuf {
        let out = self
            .dir
            .parent()
            .expect("state/ is inside the output directory");
        out.join("models").join(format!("{name}.safetensors"))
    }

    /// Restores a model this run saved: its training seconds and mask, or None if not saved.
    fn load_model(
        &self,
        name: &str,
        model: &mut Model,
    ) -> Result<Option<(f64, Option<Mask>)>, PipelineError> {
        let Ok(meta) = std::fs::read(self.dir.join(format!("{name}.json"))) else {
            return Ok(None);
        };
        let meta: Checkpoint =
            serde_json::from_slice(&meta).map_err(|e| self.error(e.to_string()))?;
        let path = self.model_path(name);
        if !path.exists() {
            return Ok(None);
        }
        let (mask, _) = crate::checkpoint::load_into(&path, model)
            .map_err(|e| self.error(format!("{}: {e}", path.display())))?;
        Ok(Some((meta.train_seconds, mask)))
    }

    fn row_path(&self, key: &str) -> PathBuf {
        let safe: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join("rows").join(format!("{safe}.json"))
    }

    fn save_row(&self, key: &str, row: &Row) -> Result<(), PipelineError> {
        let path = self.row_path(key);
        write_atomic(&path, &serde_json::to_vec(row).expect("rows serialise"))
            .map_err(|source| PipelineError::Output { path, source })
    }

    fn load_row(&self, key: &str) -> Result<Option<Row>, PipelineError> {
        match std::fs::read(self.row_path(key)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.error(format!("row {key}: {e}"))),
            Err(_) => Ok(None),
        }
    }
}

/// Changes whenever the same config computes other numbers than before (initialisation,
/// evaluation), so that a state written by an older build is not resumed into a newer one.
const COMPUTATION_REVISION: &str = "2: reference-code initialisation and evaluation";

/// Identifies what a run computes: the config and the code version.
fn fingerprint(plan: &Plan) -> String {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(COMPUTATION_REVISION.as_bytes());
    h.update(serde_json::to_vec(&plan.config).expect("serialises"));
    for f in &plan.forget {
        h.update(f.hash().as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
