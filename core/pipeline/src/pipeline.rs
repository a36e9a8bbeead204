//! One run, end to end: data -> dense model -> optional pruner -> for every forget set and every
//! model: the original and each unlearner -> evaluation -> gaps to retrain -> report.
//!
//! Every stage (the dense model, the sparse model, each row) is kept in a content-addressed
//! [`Cache`] (default `<out>/cache/`) under a key computed from exactly what it depends on, so a
//! re-run resumes where it stopped and a changed config recomputes only the stages it touches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};
use tch::Device;

use crate::cache::{Cache, StageKey, StageKind, hex};
use crate::checkpoint::Provenance;
use crate::config::Plan;
use crate::device::{device_name, synchronize};
pub use crate::error::PipelineError;
use crate::eval::backdoor::{apply_poisoning, attack_success_rate};
use crate::eval::{Metrics, SplitOutputs, evaluate};
use crate::forget::ForgetSet;
use crate::io::write_atomic;
use crate::mask::Mask;
use crate::method::{PruneCtx, RewindPoint, TaskData, UnlearnCtx};
use crate::model::{Model, ModelError, ModelSpec, Snapshot};
use crate::output::{OutputDir, Producer};
use crate::results::add_gaps;
pub use crate::results::{
    AttackSummary, ModelSummary, Row, RunResults, ScenarioSummary, StageReport, check_results,
    recompute_gaps,
};
use crate::stages::data_identity;
pub use crate::stages::{COMPUTATION_REVISION, Selection, StageKeys, Workers};
use crate::stages::{StudyStage, run_workers, study_stages};
use crate::train::{CrossEntropy, Run, RunLog, Trainer};

pub struct RunOptions<'a> {
    pub device: Device,
    pub out_dir: PathBuf,
    /// What the run is, for others who find its output folder or a stage it computes locked
    /// (e.g. `unlearn run study.toml`).
    pub what: String,
    pub trainer: Trainer,
    /// The stage cache (default: `<out>/cache`); several runs can share one.
    pub cache_dir: Option<PathBuf>,
    /// Receives one line per stage (for the CLI to print).
    pub notify: &'a dyn Fn(&str),
    /// Worker processes to compute the stages in (`run --jobs N`); None: in this process.
    pub workers: Option<crate::stages::Workers<'a>>,
}

struct Variant {
    name: &'static str,
    pruner: Option<String>,
    model: Model,
    mask: Option<Mask>,
    summary: ModelSummary,
    /// Its outputs on every split, computed when first needed (a run whose rows all come from
    /// the cache needs none).
    outputs: std::cell::OnceCell<SplitOutputs>,
}

impl Variant {
    fn outputs(&self, data: &TaskData, batch: usize) -> &SplitOutputs {
        self.outputs.get_or_init(|| {
            SplitOutputs::compute(&self.model, &data.train, &data.val, &data.test, batch)
        })
    }
}

/// A model's accuracies on train, val and test, kept in its cache entry (`accuracy.json`) so
/// that a re-run does not evaluate it again.
#[derive(Debug, Serialize, Deserialize)]
struct Accuracies {
    #[serde(with = "crate::io::nan_as_null")]
    train: f64,
    #[serde(with = "crate::io::nan_as_null")]
    val: f64,
    #[serde(with = "crate::io::nan_as_null")]
    test: f64,
}

/// The file of a row's cache entry holding its model's logits (kept when metrics are asked for).
const OUTPUTS_FILE: &str = "outputs.safetensors";

fn save_outputs(o: &SplitOutputs, path: &Path) -> Result<(), tch::TchError> {
    tch::Tensor::write_safetensors(
        &[
            ("train", &o.train.logits),
            ("val", &o.val.logits),
            ("test", &o.test.logits),
        ],
        path,
    )
}

/// A row's outputs from its cache entry, with the labels of `data`.
fn load_outputs(path: &Path, data: &TaskData) -> Result<SplitOutputs, String> {
    let tensors = tch::Tensor::read_safetensors(path).map_err(|e| e.to_string())?;
    let get = |name: &str, d: &crate::data::Dataset| {
        let logits = tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .ok_or(format!("{} has no `{name}` logits", path.display()))?;
        if logits.size().first() != Some(&(d.len() as i64)) {
            return Err(format!(
                "{}: `{name}` logits do not fit the data",
                path.display()
            ));
        }
        Ok(crate::eval::Outputs {
            logits,
            labels: d.labels.to_device(Device::Cpu),
        })
    };
    Ok(SplitOutputs {
        train: get("train", &data.train)?,
        val: get("val", &data.val)?,
        test: get("test", &data.test)?,
    })
}

/// Adds the registered metrics' columns to a group's rows (the original row first, then one per
/// unlearner in config order, `outputs` likewise).
fn add_metrics(
    group: &mut [Row],
    outputs: &[&SplitOutputs],
    forget: &ForgetSet,
    names: &[String],
    label: &str,
) -> Result<(), PipelineError> {
    let outs: Vec<crate::metric::ModelOutputs> = outputs
        .iter()
        .map(|o| crate::eval::metric_outputs(o, forget))
        .collect();
    let retrained = group.iter().position(|r| r.method == "retrain");
    for (k, row) in group.iter_mut().enumerate() {
        for name in names {
            let failed = |message: String| PipelineError::Metric {
                label: format!("{} ({label})", row.label),
                message,
            };
            let metric = crate::metric::find(name).map_err(failed)?;
            let input = crate::metric::MetricInput {
                unlearned: &outs[k],
                original: Some(&outs[0]),
                retrained: retrained.map(|j| &outs[j]),
                forget,
            };
            let values = metric.columns(&input).map_err(failed)?;
            row.extra.extend(values);
        }
    }
    Ok(())
}

/// What the cache keeps beside a dense or sparse model.
#[derive(Debug, Serialize, Deserialize)]
struct ModelMeta {
    train_seconds: f64,
    /// Which weights `rewind.safetensors` holds (the pruners' rewind point), if any.
    rewind: Option<RewindPoint>,
    #[serde(default)]
    training: Vec<RunLog>,
}

/// Runs a validated plan and writes `results.json` and `report.md` to the output directory.
pub fn run(plan: &Plan, opts: &RunOptions<'_>) -> Result<RunResults, PipelineError> {
    let started = Instant::now();
    let out = &opts.out_dir;
    let cache_dir = opts.cache_dir.clone().unwrap_or_else(|| out.join("cache"));
    // Paths that can never be folders are found before anything is written: the output folder
    // first, then the cache.
    if let Some(file) = not_a_folder(out) {
        return Err(PipelineError::Output {
            path: out.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} exists and is not a folder", file.display()),
            ),
        });
    }
    if let Some(name) = crate::output::cache_collision(out, &cache_dir) {
        return Err(PipelineError::Input {
            path: cache_dir,
            message: format!(
                "the stage cache cannot be where the run writes its own outputs ({name} in {}): choose a cache outside it, or its default {}",
                out.display(),
                out.join("cache").display()
            ),
        });
    }
    if let Some(file) = not_a_folder(&cache_dir) {
        return Err(PipelineError::Input {
            path: cache_dir.clone(),
            message: format!(
                "the stage cache cannot be created: {} exists and is not a folder",
                file.display()
            ),
        });
    }
    let outdir = OutputDir::claim(out, Producer::Run, &opts.what)?;
    outdir.check_layout(
        &["models", "plots"],
        &["results.json", "results.csv", "training.csv", "report.md"],
    )?;
    let config_digest = hex(&Sha256::digest(
        crate::cache::canonical_json(
            &serde_json::to_value(&plan.config).expect("configs serialise"),
        )
        .as_bytes(),
    ));
    if outdir.set_config(&config_digest) {
        (opts.notify)(&format!(
            "{} held the output of another config: its reports, figures and models are replaced (its stages stay in the cache)",
            out.display()
        ));
    }
    let Prepared {
        cache,
        data,
        data_id,
        stages,
    } = prepare(plan, opts.device, &cache_dir)?;
    let elsewhere = match &opts.workers {
        Some(w) if w.count > 1 => {
            run_workers(&stages, &cache, w, &opts.trainer.cancel, opts.notify)?
        }
        _ => BTreeSet::new(),
    };
    let mut all = SeedResults::default();
    let progress = Progress::new(stages.iter());
    let ctx = SeedContext {
        plan,
        opts,
        outdir: Some(&outdir),
        cache: &cache,
        progress: &progress,
        data: &data,
        selection: None,
    };
    for &seed in &plan.seeds {
        let keys = StageKeys::new(plan, seed, &data_id)?;
        run_seed(&ctx, seed, &keys, &mut all)?;
    }
    // Stages the workers computed were taken from the cache here, but computed by this run.
    for s in all.stages.iter_mut().filter(|s| elsewhere.contains(&s.key)) {
        s.cached = false;
    }
    let cached = progress.cached.get() - elsewhere.len();
    (opts.notify)(&format!(
        "{} stages: {cached} from the cache, {} computed{}",
        progress.total,
        progress.total - cached,
        match &opts.workers {
            Some(w) if w.count > 1 => format!(" ({} by {} workers)", elsewhere.len(), w.count),
            _ => String::new(),
        }
    ));
    let results = RunResults {
        unlearn_version: env!("CARGO_PKG_VERSION").into(),
        device: device_name(opts.device),
        libtorch: crate::device::libtorch_version(),
        dataset: plan.dataset.name.clone(),
        config: serde_json::to_value(&plan.config).expect("configs serialise"),
        split: plan.split.clone(),
        seeds: plan.seeds.clone(),
        attack: plan.attack.as_ref().map(|a| AttackSummary {
            method: a.planned.method.clone(),
            label: a.planned.label.clone(),
            config: a.planned.full_config.clone(),
            seed: a.seed,
            target: a.planned.instance.target(),
            poisoned: a.poisoning.rows.clone(),
        }),
        models: all.models,
        scenarios: plan.forget.iter().map(scenario_summary).collect(),
        rows: all.rows,
        stages: all.stages,
        cache: cache.dir().to_path_buf(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&results).expect("results serialise");
    outdir.write("results.json", &json)?;
    write_reports(&results, &outdir)?;
    outdir.finish()?;
    Ok(results)
}

/// What a run and a worker start from: the stage cache (created if needed), the data on the
/// device, the data's identity (part of every key) and the study's stages.
struct Prepared {
    cache: Cache,
    data: TaskData,
    data_id: serde_json::Value,
    stages: Vec<StudyStage>,
}

fn prepare(plan: &Plan, device: Device, cache_dir: &Path) -> Result<Prepared, PipelineError> {
    let cache = Cache::open(cache_dir).map_err(|e| PipelineError::Input {
        path: cache_dir.to_path_buf(),
        message: format!("the stage cache cannot be created: {e}"),
    })?;
    let data = task_data(plan, device)?;
    let data_id = data_identity(plan);
    let stages = study_stages(plan, &data_id)?;
    Ok(Prepared {
        cache,
        data,
        data_id,
        stages,
    })
}

/// The run's data on `device`: the training split (poisoned by the `[attack]`, if any),
/// validation and test; and every model computes as the config says from here on.
fn task_data(plan: &Plan, device: Device) -> Result<TaskData, PipelineError> {
    crate::exec::set_default(plan.config.model.execution()).map_err(ModelError::from)?;
    let clean_train = plan.dataset.subset(&plan.split.train);
    let train = match &plan.attack {
        // The Trojan model trains on clean + poisoned data.
        Some(a) => {
            apply_poisoning(&clean_train, &a.poisoning).map_err(|source| PipelineError::Method {
                label: a.planned.label.clone(),
                source,
            })?
        }
        None => clean_train,
    };
    Ok(TaskData {
        train: train.to_device(device),
        val: plan.dataset.subset(&plan.split.val).to_device(device),
        test: plan.dataset.subset(&plan.split.test).to_device(device),
    })
}

/// The stages of `plan` that `ids` name (keys, or unique prefixes of at least 6 hex digits, as
/// `run --dry-run` prints them), for [`run_stages`].
pub fn select(plan: &Plan, ids: &[String]) -> Result<Selection, String> {
    let stages = study_stages(plan, &data_identity(plan)).map_err(|e| e.to_string())?;
    crate::stages::resolve_ids(&stages, ids).map(Selection::new)
}

/// What a worker did with its stages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerReport {
    /// Wanted stages it computed.
    pub computed: usize,
    /// Wanted stages it found in the cache.
    pub cached: usize,
    /// Wanted stages another process was computing, left to it.
    pub left: usize,
}

/// Computes the stages `selection` wants of `plan` into the cache (`opts.cache_dir`, default
/// `<out>/cache`), with the models they start from: what `unlearn stage` and each worker of
/// `run --jobs` do. Writes nothing into the output folder (a run assembles its reports from the
/// cache).
pub fn run_stages(
    plan: &Plan,
    opts: &RunOptions<'_>,
    selection: &Selection,
) -> Result<WorkerReport, PipelineError> {
    let cache_dir = match &opts.cache_dir {
        Some(dir) => dir.clone(),
        None => {
            OutputDir::mark(&opts.out_dir, Producer::Run, &opts.what)?;
            opts.out_dir.join("cache")
        }
    };
    let Prepared {
        cache,
        data,
        data_id,
        stages,
    } = prepare(plan, opts.device, &cache_dir)?;
    let wanted: Vec<&StudyStage> = stages.iter().filter(|s| selection.wants(&s.key)).collect();
    let progress = Progress::new(wanted.iter().copied());
    let ctx = SeedContext {
        plan,
        opts,
        outdir: None,
        cache: &cache,
        progress: &progress,
        data: &data,
        selection: Some(selection),
    };
    let mut all = SeedResults::default();
    for &seed in &plan.seeds {
        let keys = StageKeys::new(plan, seed, &data_id)?;
        if selection.needs_model(&keys, 0) {
            run_seed(&ctx, seed, &keys, &mut all)?;
        }
    }
    let cached = progress.cached.get();
    let done = progress.done.get();
    Ok(WorkerReport {
        computed: done - cached,
        cached,
        left: wanted.len().saturating_sub(done),
    })
}

/// The path itself or the first of its ancestors that exists but is not a folder: what makes
/// `path` impossible to create as a folder.
fn not_a_folder(path: &Path) -> Option<&Path> {
    path.ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists() && !a.is_dir())
}

/// `results.csv`, `training.csv`, `report.md` and the figures under `plots/`, from a run's
/// results alone (what `unlearn report <out>` regenerates), into the output folder `out` holds.
pub fn write_reports(results: &RunResults, out: &OutputDir) -> Result<(), PipelineError> {
    out.write("results.csv", crate::report::csv(results).as_bytes())?;
    out.write(
        "training.csv",
        crate::report::training_csv(results).as_bytes(),
    )?;
    out.write("report.md", crate::report::markdown(results).as_bytes())?;
    for path in crate::plot::write_all(results, &out.folder("plots")?)? {
        if let Some(name) = path.file_name() {
            out.record(&format!("plots/{}", name.to_string_lossy()))?;
        }
    }
    Ok(())
}

/// What the seeds of a run add up to.
#[derive(Default)]
struct SeedResults {
    models: Vec<ModelSummary>,
    rows: Vec<Row>,
    stages: Vec<StageReport>,
}

/// One seed of a run: its dense model, each sparse model, and every row.
#[allow(clippy::too_many_arguments)]
/// What every seed of a run shares.
struct SeedContext<'a> {
    plan: &'a Plan,
    opts: &'a RunOptions<'a>,
    /// Where models are exported; None for a worker (it only fills the cache).
    outdir: Option<&'a OutputDir>,
    cache: &'a Cache,
    progress: &'a Progress,
    data: &'a TaskData,
    /// A worker's stages; None: all of them.
    selection: Option<&'a Selection>,
}

/// [`SeedRun::parts`].
struct ModelStageParts<'a> {
    plan: &'a Plan,
    opts: &'a RunOptions<'a>,
    outdir: Option<&'a OutputDir>,
    cache: &'a Cache,
    data: &'a TaskData,
    seed: u64,
    keys: &'a StageKeys,
    stage: &'a StageRunner<'a>,
    spec: &'a ModelSpec,
    provenance: &'a Provenance,
}

/// One seed of a run as it goes: what its stages share.
struct SeedRun<'a> {
    ctx: &'a SeedContext<'a>,
    seed: u64,
    keys: &'a StageKeys,
    stage: StageRunner<'a>,
    spec: ModelSpec,
    provenance: Provenance,
}

fn run_seed(
    ctx: &SeedContext<'_>,
    seed: u64,
    keys: &StageKeys,
    all: &mut SeedResults,
) -> Result<(), PipelineError> {
    let plan = ctx.plan;
    let cfg = &plan.config;
    let run = SeedRun {
        ctx,
        seed,
        keys,
        stage: StageRunner {
            cache: ctx.cache,
            trainer: &ctx.opts.trainer,
            notify: ctx.opts.notify,
            what: &ctx.opts.what,
            device: ctx.opts.device,
            progress: ctx.progress,
            selection: ctx.selection,
        },
        spec: crate::config::model_spec(cfg.model.arch, &plan.dataset),
        provenance: Provenance {
            dataset: Some(plan.dataset.name.clone()),
            train_config: Some(serde_json::to_value(&cfg.train).expect("schedules serialise")),
        },
    };
    let first_stage = all.stages.len();
    let Some((dense, rewind)) = run.dense(all)? else {
        return Ok(());
    };
    // Each model with its position among the seed's models (0: dense).
    let mut variants = run.sparse(&dense, rewind.as_ref(), all)?;
    variants.insert(0, (0, dense));
    for (_, v) in &variants {
        (ctx.opts.notify)(&format!(
            "{} model: sparsity {:.1}%, train {:.1}%, test {:.1}%",
            v.pruner.as_deref().unwrap_or(v.name),
            100.0 * v.summary.sparsity,
            v.summary.train_accuracy,
            v.summary.test_accuracy
        ));
    }

    // Unlearning.
    for (f, forget) in plan.forget.iter().enumerate() {
        for (m, v) in &variants {
            run.rows(f, forget, *m, v, all)?;
        }
    }
    all.models
        .extend(variants.into_iter().map(|(_, v)| v.summary));
    for s in &mut all.stages[first_stage..] {
        s.seed = Some(seed);
    }
    Ok(())
}

impl SeedRun<'_> {
    /// A stage label naming the seed when the run has several.
    fn seeded(&self, label: String) -> String {
        if self.ctx.plan.seeds.len() > 1 {
            format!("{label}, seed {}", self.seed)
        } else {
            label
        }
    }

    /// Whether model `m` (0: dense) is needed: always, but a worker skips the models (and
    /// their rows) none of its stages needs.
    fn needed(&self, m: usize) -> bool {
        self.ctx
            .selection
            .is_none_or(|s| s.needs_model(self.keys, m))
    }

    fn wanted(&self, key: &StageKey) -> bool {
        self.ctx.selection.is_none_or(|s| s.wants(key))
    }

    /// What the model stages of the seed work with, by name.
    fn parts(&self) -> ModelStageParts<'_> {
        ModelStageParts {
            plan: self.ctx.plan,
            opts: self.ctx.opts,
            outdir: self.ctx.outdir,
            cache: self.ctx.cache,
            data: self.ctx.data,
            seed: self.seed,
            keys: self.keys,
            stage: &self.stage,
            spec: &self.spec,
            provenance: &self.provenance,
        }
    }

    /// The original model: from `model.checkpoint`, or trained here (keeping the weights the
    /// pruners rewind to). None when a worker left it to another process.
    fn dense(
        &self,
        all: &mut SeedResults,
    ) -> Result<Option<(Variant, Option<Snapshot>)>, PipelineError> {
        let ModelStageParts {
            plan,
            opts,
            outdir,
            cache,
            data,
            seed,
            keys,
            stage,
            spec,
            provenance,
        } = self.parts();
        let cfg = &plan.config;
        let eval_batch = cfg.eval.batch_size;
        let seeded = |label: String| self.seeded(label);
        let rewind_point = plan.rewind_point();
        let dense_label = seeded(match &plan.checkpoint {
            Some(path) => format!("the model of {}", path.display()),
            None => "dense training".to_string(),
        });
        let Some((dense, dense_mask, rewind, seconds, report)) = stage.model(
            StageKind::Dense,
            &keys.dense,
            &dense_label,
            spec,
            rewind_point,
            |trainer| match &plan.checkpoint {
                Some(path) => {
                    (opts.notify)(&format!("starting from {}", path.display()));
                    let (model, mask) = load_original(path, spec, opts.device)?;
                    // The only dense weights there are: the best-validation rewind point of `pt`.
                    let rewind = (rewind_point == Some(RewindPoint::BestValidation))
                        .then(|| model.snapshot());
                    Ok((model, mask, rewind, 0.0))
                }
                None => {
                    (opts.notify)(&format!(
                        "training the dense model ({} epochs on {} samples{})",
                        cfg.train.epochs,
                        data.train.len(),
                        if plan.seeds.len() > 1 {
                            format!(", seed {seed}")
                        } else {
                            String::new()
                        }
                    ));
                    let mut dense = Model::new(spec.clone(), opts.device, seed)?;
                    let all: Vec<usize> = (0..data.train.len()).collect();
                    let stream = crate::train::Stream::new(&data.train, &all);
                    let run = Run::new(dense_label.clone(), &cfg.train, &stream, None, seed)
                        .keeping(rewind_point, &data.val)
                        .validating(&data.val);
                    let mut report =
                        trainer
                            .run(&mut dense, run, &mut CrossEntropy)
                            .map_err(|e| PipelineError::Method {
                                label: dense_label.clone(),
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
            provenance,
        )?
        else {
            return Ok(None);
        };
        all.stages.push(report);
        // A checkpoint with a mask is the sparse model itself.
        let name = if dense_mask.is_some() {
            "sparse"
        } else {
            "dense"
        };
        let file = model_file(plan, seed, name, None);
        if let Some(outdir) = outdir {
            export_model(cache, StageKind::Dense, &keys.dense, outdir, &file)?;
        }
        let dense = variant(
            name,
            None,
            seed,
            file,
            dense,
            dense_mask,
            seconds,
            data,
            eval_batch,
            (cache, StageKind::Dense, &keys.dense),
        );
        Ok(Some((dense, rewind)))
    }

    /// The sparse models this process needs, each with its position among the seed's models.
    fn sparse(
        &self,
        dense: &Variant,
        rewind: Option<&Snapshot>,
        all: &mut SeedResults,
    ) -> Result<Vec<(usize, Variant)>, PipelineError> {
        let ModelStageParts {
            plan,
            opts,
            outdir,
            cache,
            data,
            seed,
            keys,
            stage,
            spec,
            provenance,
        } = self.parts();
        let cfg = &plan.config;
        let eval_batch = cfg.eval.batch_size;
        let seeded = |label: String| self.seeded(label);
        let mut variants = Vec::new();
        for (i, (p, key)) in plan.pruners.iter().zip(&keys.sparse).enumerate() {
            if !self.needed(i + 1) {
                continue;
            }
            let label = seeded(format!("{} pruning", p.label));
            let original = &dense.model;
            let Some((sparse, mask, _, seconds, report)) = stage.model(
                StageKind::Sparse,
                key,
                &label,
                spec,
                None,
                |trainer| {
                    (opts.notify)(&format!("pruning with {}", p.label));
                    let mut sparse = original.try_clone()?;
                    synchronize(opts.device);
                    let t0 = Instant::now();
                    let mut ctx = PruneCtx {
                        model: &mut sparse,
                        rewind,
                        data,
                        schedule: &cfg.train,
                        trainer,
                        seed,
                        label: label.clone(),
                    };
                    let mask =
                        p.instance
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
                provenance,
            )?
            else {
                continue;
            };
            all.stages.push(report);
            let Some(mask) = mask else {
                return Err(PipelineError::State {
                    path: cache.entry(StageKind::Sparse, key),
                    message: "the sparse model has no mask".into(),
                });
            };
            let file = model_file(plan, seed, "sparse", Some(i));
            if let Some(outdir) = outdir {
                export_model(cache, StageKind::Sparse, key, outdir, &file)?;
            }
            variants.push((
                i + 1,
                variant(
                    "sparse",
                    Some(p.label.clone()),
                    seed,
                    file,
                    sparse,
                    Some(mask),
                    seconds,
                    data,
                    eval_batch,
                    (cache, StageKind::Sparse, key),
                ),
            ));
        }
        Ok(variants)
    }

    /// The rows of scenario `f` on model `m` (`v`): the original, each unlearner, then their
    /// gaps to retrain and registered metrics.
    fn rows(
        &self,
        f: usize,
        forget: &ForgetSet,
        m: usize,
        v: &Variant,
        all: &mut SeedResults,
    ) -> Result<(), PipelineError> {
        let SeedContext {
            plan,
            opts,
            data,
            selection,
            ..
        } = *self.ctx;
        let (seed, keys, stage) = (self.seed, self.keys, &self.stage);
        let cfg = &plan.config;
        let eval_batch = cfg.eval.batch_size;
        let seeded = |label: String| self.seeded(label);
        let group_start = all.rows.len();
        let group_keys = &keys.rows[f][m];
        // With one pruner its model is `sparse`; with several, each is named by its pruner.
        let model_label = match &v.pruner {
            Some(p) if plan.pruners.len() > 1 => p.as_str(),
            _ => v.name,
        };
        let row = |method: &str, label: &str, metrics, rte| Row {
            seed,
            scenario: forget.name.clone(),
            model: v.name.into(),
            pruner: v.pruner.clone(),
            sparsity: v.summary.sparsity,
            method: method.into(),
            label: label.into(),
            metrics,
            rte,
            gap: None,
            extra: BTreeMap::new(),
        };
        let label = seeded(format!("original on {} ({model_label})", forget.name));
        // The original's outputs are its model's; no need to keep them in the row.
        let computed = if !self.wanted(&group_keys[0]) {
            None
        } else {
            stage.row(&group_keys[0], &label, None, |_| {
                let outputs = v.outputs(data, eval_batch);
                let mut metrics =
                    evaluate(outputs, forget, &cfg.eval).map_err(|source| PipelineError::Eval {
                        label: label.clone(),
                        source,
                    })?;
                backdoor(plan, &v.model, data, eval_batch, &label, &mut metrics)?;
                Ok((metrics, None, None))
            })?
        };
        if let Some((metrics, _, report, _)) = computed {
            all.stages.push(report);
            all.rows.push(row("original", "original", metrics, None));
        }
        let keep = (!cfg.eval.metrics.is_empty()).then_some(data);
        let mut kept: Vec<SplitOutputs> = Vec::new();
        for (u, key) in plan.unlearners.iter().zip(&group_keys[1..]) {
            let label = seeded(format!("{} on {} ({model_label})", u.label, forget.name));
            if !self.wanted(key) {
                continue;
            }
            let computed = stage.row(key, &label, keep, |trainer| {
                (opts.notify)(&format!("unlearning: {label}"));
                let (model, rte) = unlearn_one(
                    v,
                    data,
                    forget,
                    trainer,
                    seed,
                    &label,
                    u.instance.as_ref(),
                    opts.device,
                )?;
                let outputs =
                    SplitOutputs::compute(&model, &data.train, &data.val, &data.test, eval_batch);
                let mut metrics = evaluate(&outputs, forget, &cfg.eval).map_err(|source| {
                    PipelineError::Eval {
                        label: label.clone(),
                        source,
                    }
                })?;
                backdoor(plan, &model, data, eval_batch, &label, &mut metrics)?;
                Ok((metrics, Some(rte), Some(outputs)))
            })?;
            let Some((metrics, rte, report, outputs)) = computed else {
                continue;
            };
            all.stages.push(report);
            all.rows.push(row(&u.method, &u.label, metrics, rte));
            kept.extend(outputs);
        }
        // A worker's rows are in the cache; the run that assembles them adds the rest.
        if selection.is_some() {
            return Ok(());
        }
        add_gaps(&mut all.rows[group_start..]);
        if keep.is_some() {
            let outputs: Vec<&SplitOutputs> = std::iter::once(v.outputs(data, eval_batch))
                .chain(&kept)
                .collect();
            add_metrics(
                &mut all.rows[group_start..],
                &outputs,
                forget,
                &cfg.eval.metrics,
                &seeded(format!("{} ({model_label})", forget.name)),
            )?;
        }
        Ok(())
    }
}

/// With an `[attack]`: `model`'s attack success rate on the triggered test set, into `metrics`.
fn backdoor(
    plan: &Plan,
    model: &Model,
    data: &TaskData,
    batch: usize,
    label: &str,
    metrics: &mut Metrics,
) -> Result<(), PipelineError> {
    let Some(a) = &plan.attack else {
        return Ok(());
    };
    let asr = attack_success_rate(model, &data.test, a.planned.instance.as_ref(), batch).map_err(
        |source| PipelineError::Method {
            label: format!("{label}: attack success rate"),
            source,
        },
    )?;
    asr.record(metrics);
    Ok(())
}

/// The stages of a plan and whether the cache already holds each (for `run --dry-run`).
/// Reads the cache only: it creates and writes nothing (a cache folder that does not exist is an
/// empty cache).
pub fn dry_run(plan: &Plan, cache_dir: &Path) -> Result<Vec<PlannedStage>, PipelineError> {
    // A cache the run could never create is said now, as the run would say it.
    if let Some(file) = not_a_folder(cache_dir) {
        return Err(PipelineError::Input {
            path: cache_dir.to_path_buf(),
            message: format!(
                "the stage cache cannot be created: {} exists and is not a folder",
                file.display()
            ),
        });
    }
    let cache = Cache::peek(cache_dir);
    let data_id = data_identity(plan);
    let seconds = |kind, key: &StageKey| -> f64 {
        match kind {
            StageKind::Row => cache
                .peek_meta::<CachedRow>(kind, key)
                .map_or(0.0, |r| r.seconds),
            _ => cache
                .peek_meta::<ModelMeta>(kind, key)
                .map_or(0.0, |m| m.train_seconds),
        }
    };
    let mut out: Vec<PlannedStage> = study_stages(plan, &data_id)?
        .into_iter()
        .map(|s| PlannedStage {
            stage: StageReport::new(
                s.kind,
                &s.key,
                &s.label,
                cache.contains(s.kind, &s.key),
                seconds(s.kind, &s.key),
            ),
            saved_loops: std::fs::read_dir(cache.partial(s.kind, &s.key))
                .map(|d| d.flatten().count())
                .unwrap_or(0),
            base_label: s.base_label,
            estimate: None,
        })
        .collect();
    // A stage to run costs about what the same stage of another seed cost.
    let mut known: HashMap<(String, String), Vec<f64>> = HashMap::new();
    for p in out.iter().filter(|p| p.stage.cached) {
        let id = (p.stage.kind.clone(), p.base_label.clone());
        known.entry(id).or_default().push(p.stage.seconds);
    }
    for p in out.iter_mut().filter(|p| !p.stage.cached) {
        let id = (p.stage.kind.clone(), p.base_label.clone());
        p.estimate = known
            .get(&id)
            .map(|v| v.iter().sum::<f64>() / v.len() as f64);
    }
    Ok(out)
}

/// A stage of `run --dry-run`'s plan.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    /// Cached (with the seconds it took) or not.
    pub stage: StageReport,
    /// Its label without the seed.
    pub base_label: String,
    /// For a stage to run: seconds, from the same stage of other seeds in the cache.
    pub estimate: Option<f64>,
    /// Training loops of an interrupted computation of it whose state is saved (it resumes).
    pub saved_loops: usize,
}

/// A row as the cache keeps it: what it measured, not what the config calls it.
#[derive(Debug, Serialize, Deserialize)]
struct CachedRow {
    metrics: Metrics,
    rte: Option<f64>,
    seconds: f64,
    #[serde(default)]
    training: Vec<RunLog>,
}

/// A model stage's result: model, mask, rewind snapshot, training seconds.
type ModelParts = (Model, Option<Mask>, Option<Snapshot>, f64);
/// A model stage as the run gets it: its [`ModelParts`] and its report.
type ModelStage = (Model, Option<Mask>, Option<Snapshot>, f64, StageReport);
/// A row stage as the run gets it: metrics, RTE, report, and the model's outputs when kept.
type RowStage = (Metrics, Option<f64>, StageReport, Option<SplitOutputs>);

/// Looks stages up in the cache, computes the missing ones under their lock, and reports each.
struct StageRunner<'a> {
    cache: &'a Cache,
    /// Each computed stage runs its loops on a copy scoped to it (checkpoints and logs).
    trainer: &'a Trainer,
    notify: &'a dyn Fn(&str),
    /// This run, as others waiting for a stage it computes see it.
    what: &'a str,
    device: Device,
    progress: &'a Progress,
    /// A worker's stages (`unlearn stage`); None: every stage of the run.
    selection: Option<&'a Selection>,
}

/// Where the whole run stands: stages done of all, how many came from the cache, and the pace
/// of those computed so far per kind of stage (dense, sparse, row), for an estimate of the time
/// left: the stages of each kind still to come at that kind's pace (the overall pace for a kind
/// not computed yet).
struct Progress {
    total: usize,
    done: std::cell::Cell<usize>,
    cached: std::cell::Cell<usize>,
    /// Per kind: stages still to come, stages computed, their seconds.
    kinds: std::cell::RefCell<HashMap<StageKind, (usize, usize, f64)>>,
}

impl Progress {
    /// Over `stages` (a run's, or the ones a worker wants).
    fn new<'s>(stages: impl Iterator<Item = &'s StudyStage>) -> Progress {
        let mut kinds: HashMap<StageKind, (usize, usize, f64)> = HashMap::new();
        let mut total = 0;
        for s in stages {
            kinds.entry(s.kind).or_default().0 += 1;
            total += 1;
        }
        Progress {
            total,
            done: Default::default(),
            cached: Default::default(),
            kinds: std::cell::RefCell::new(kinds),
        }
    }

    fn cached(&self, kind: StageKind) {
        self.done.set(self.done.get() + 1);
        self.cached.set(self.cached.get() + 1);
        if let Some(k) = self.kinds.borrow_mut().get_mut(&kind) {
            k.0 = k.0.saturating_sub(1);
        }
    }

    /// Seconds left at the pace so far, once anything was computed.
    fn eta(&self) -> Option<f64> {
        let kinds = self.kinds.borrow();
        let (n, secs) = kinds
            .values()
            .fold((0, 0.0), |(n, s), k| (n + k.1, s + k.2));
        (n > 0).then(|| {
            let overall = secs / n as f64;
            kinds
                .values()
                .map(|&(left, done, s)| {
                    let pace = if done > 0 { s / done as f64 } else { overall };
                    left as f64 * pace
                })
                .sum()
        })
    }

    /// The line announcing a stage about to be computed.
    fn starting(&self, label: &str) -> String {
        let eta = match self.eta() {
            Some(s) => format!("; about {} left at the pace so far", duration(s)),
            None => String::new(),
        };
        format!(
            "stage {}/{}: {label} ({} cached{eta})",
            self.done.get() + 1,
            self.total,
            self.cached.get()
        )
    }

    fn finished(&self, kind: StageKind, seconds: f64) {
        self.done.set(self.done.get() + 1);
        if let Some(k) = self.kinds.borrow_mut().get_mut(&kind) {
            k.0 = k.0.saturating_sub(1);
            k.1 += 1;
            k.2 += seconds;
        }
    }
}

/// `42 s`, `12 min`, `3.4 h`.
fn duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 5400.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

impl StageRunner<'_> {
    fn corrupt(&self, kind: StageKind, key: &StageKey, why: &str) -> Result<(), PipelineError> {
        (self.notify)(&format!(
            "cache entry {kind}/{} is unreadable ({why}): discarded, recomputing",
            key.short()
        ));
        Ok(self.cache.discard(kind, key)?)
    }

    /// A cached model holding the rewind weights `rewind` names, or None (a corrupt entry is
    /// discarded; one without those weights is recomputed and replaced).
    fn load_model(
        &self,
        kind: StageKind,
        key: &StageKey,
        spec: &ModelSpec,
        rewind: Option<RewindPoint>,
    ) -> Result<Option<(ModelParts, Vec<RunLog>)>, PipelineError> {
        let meta: ModelMeta = match self.cache.meta(kind, key) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(why) => {
                self.corrupt(kind, key, &why)?;
                return Ok(None);
            }
        };
        if rewind.is_some() && meta.rewind != rewind {
            (self.notify)(&format!(
                "cache entry {kind}/{} does not hold the weights to rewind to ({rewind:?}): recomputing it",
                key.short()
            ));
            return Ok(None);
        }
        let dir = self.cache.entry(kind, key);
        let loaded = (|| -> Result<ModelParts, String> {
            let mut model = Model::build(spec.clone(), self.device).map_err(|e| e.to_string())?;
            let path = dir.join("model.safetensors");
            let (mask, _) = crate::checkpoint::load_into(&path, &mut model)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let rewind = if meta.rewind.is_some() {
                let p = dir.join("rewind.safetensors");
                Some(Snapshot::load(&p, self.device).map_err(|e| format!("{}: {e}", p.display()))?)
            } else {
                None
            };
            Ok((model, mask, rewind, meta.train_seconds))
        })();
        match loaded {
            Ok(parts) => Ok(Some((parts, meta.training))),
            Err(why) => {
                self.corrupt(kind, key, &why)?;
                Ok(None)
            }
        }
    }

    /// Whether the stage counts in this process's progress: every stage of a run; of a worker,
    /// the ones it wants (not the models it loads to start from).
    fn counts(&self, key: &StageKey) -> bool {
        self.selection.is_none_or(|s| s.wants(key))
    }

    fn count_cached(&self, kind: StageKind, key: &StageKey) {
        if self.counts(key) {
            self.progress.cached(kind);
        }
    }

    /// Announces a stage about to be computed: with its place in the run, or for a model a
    /// worker needs but was not asked for, as that.
    fn starting(&self, key: &StageKey, label: &str) {
        if self.counts(key) {
            (self.notify)(&self.progress.starting(label));
        } else {
            (self.notify)(&format!(
                "{label}: computing it first (the stages asked for start from it)"
            ));
        }
    }

    fn finished(&self, kind: StageKind, key: &StageKey, seconds: f64) {
        if self.counts(key) {
            self.progress.finished(kind, seconds);
        }
    }

    /// The stage's lock: waited for, or for a stage a worker wants, taken only when free (None:
    /// another process is computing it and the worker leaves it to that one).
    fn claim(
        &self,
        kind: StageKind,
        key: &StageKey,
        label: &str,
    ) -> Result<Option<crate::cache::StageLock>, PipelineError> {
        match self.selection {
            Some(s) if s.wants(key) => {
                let held = self.cache.try_lock(kind, key, self.what)?;
                if held.is_none() {
                    (self.notify)(&format!(
                        "{label}: another process is computing it; left to that one"
                    ));
                }
                Ok(held)
            }
            _ => Ok(Some(self.cache.lock(
                kind,
                key,
                label,
                self.what,
                self.notify,
            )?)),
        }
    }

    /// After Ctrl-C no new stage starts (a stage without a training loop would not notice).
    fn stop_if_cancelled(&self, next: &str) -> Result<(), PipelineError> {
        if self
            .trainer
            .cancel
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(PipelineError::Cancelled { next: next.into() });
        }
        Ok(())
    }

    /// The model stage `key`: from the cache, or computed by `compute` and stored.
    #[allow(clippy::too_many_arguments)]
    fn model(
        &self,
        kind: StageKind,
        key: &StageKey,
        label: &str,
        spec: &ModelSpec,
        rewind_point: Option<RewindPoint>,
        compute: impl FnOnce(&Trainer) -> Result<ModelParts, PipelineError>,
        provenance: &Provenance,
    ) -> Result<Option<ModelStage>, PipelineError> {
        let report = |cached, seconds, training| {
            StageReport::new(kind, key, label, cached, seconds).with_training(training)
        };
        if let Some(((m, mask, r, s), log)) = self.load_model(kind, key, spec, rewind_point)? {
            self.count_cached(kind, key);
            return Ok(Some((m, mask, r, s, report(true, s, log))));
        }
        let Some(_lock) = self.claim(kind, key, label)? else {
            return Ok(None);
        };
        // Another process may have computed it while this one waited.
        if let Some(((m, mask, r, s), log)) = self.load_model(kind, key, spec, rewind_point)? {
            self.count_cached(kind, key);
            return Ok(Some((m, mask, r, s, report(true, s, log))));
        }
        self.stop_if_cancelled(label)?;
        self.starting(key, label);
        let t0 = Instant::now();
        let (trainer, scope) = self.trainer.for_stage(self.cache.partial(kind, key));
        let (model, mask, rewind, seconds) = compute(&trainer)?;
        // Epochs restored from an interrupted run count as they did when they ran.
        let seconds = seconds + scope.restored_seconds();
        self.finished(kind, key, t0.elapsed().as_secs_f64());
        let training = scope.logs();
        let meta = ModelMeta {
            train_seconds: seconds,
            rewind: rewind.as_ref().and(rewind_point),
            training: training.clone(),
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
        self.cache.drop_partial(kind, key);
        Ok(Some((
            model,
            mask,
            rewind,
            seconds,
            report(false, seconds, training),
        )))
    }

    /// The row stage `key`: its metrics and RTE from the cache, or computed and stored. With
    /// `keep` (the run's data), the row's model outputs `compute` returns are kept in the entry
    /// and returned, from the cache too.
    fn row(
        &self,
        key: &StageKey,
        label: &str,
        keep: Option<&TaskData>,
        compute: impl FnOnce(
            &Trainer,
        )
            -> Result<(Metrics, Option<f64>, Option<SplitOutputs>), PipelineError>,
    ) -> Result<Option<RowStage>, PipelineError> {
        let kind = StageKind::Row;
        let cached = || -> Result<Option<(CachedRow, Option<SplitOutputs>)>, PipelineError> {
            let loaded = self
                .cache
                .meta::<CachedRow>(kind, key)
                .and_then(|r| match (r, keep) {
                    (Some(r), Some(data)) => {
                        let path = self.cache.entry(kind, key).join(OUTPUTS_FILE);
                        load_outputs(&path, data).map(|o| Some((r, Some(o))))
                    }
                    (r, _) => Ok(r.map(|r| (r, None))),
                });
            match loaded {
                Ok(r) => Ok(r),
                Err(why) => {
                    self.corrupt(kind, key, &why)?;
                    Ok(None)
                }
            }
        };
        let report = |(r, o): (CachedRow, Option<SplitOutputs>), cached| {
            let stage = StageReport::new(kind, key, label, cached, r.seconds);
            (r.metrics, r.rte, stage.with_training(r.training), o)
        };
        if let Some(r) = cached()? {
            self.count_cached(kind, key);
            return Ok(Some(report(r, true)));
        }
        let Some(_lock) = self.claim(kind, key, label)? else {
            return Ok(None);
        };
        if let Some(r) = cached()? {
            self.count_cached(kind, key);
            return Ok(Some(report(r, true)));
        }
        self.stop_if_cancelled(label)?;
        self.starting(key, label);
        let t0 = Instant::now();
        let (trainer, scope) = self.trainer.for_stage(self.cache.partial(kind, key));
        let (metrics, rte, outputs) = compute(&trainer)?;
        let outputs = outputs.filter(|_| keep.is_some());
        // Epochs restored from an interrupted run count as they did when they ran.
        let restored = scope.restored_seconds();
        let row = CachedRow {
            metrics,
            rte: rte.map(|r| r + restored),
            seconds: t0.elapsed().as_secs_f64() + restored,
            training: scope.logs(),
        };
        self.finished(kind, key, row.seconds);
        self.cache.put::<PipelineError>(kind, key, &row, |dir| {
            if let Some(o) = &outputs {
                let path = dir.join(OUTPUTS_FILE);
                save_outputs(o, &path).map_err(|e| PipelineError::State {
                    path,
                    message: e.to_string(),
                })?;
            }
            Ok(())
        })?;
        self.cache.drop_partial(kind, key);
        Ok(Some(report((row, outputs), false)))
    }
}

/// Copies a cached model to `<out>/<file>`, the checkpoint users load.
fn export_model(
    cache: &Cache,
    kind: StageKind,
    key: &StageKey,
    out: &OutputDir,
    file: &str,
) -> Result<(), PipelineError> {
    let src = cache.entry(kind, key).join("model.safetensors");
    let bytes = std::fs::read(&src).map_err(|source| PipelineError::State {
        path: src.clone(),
        message: source.to_string(),
    })?;
    Ok(out.write(file, &bytes)?)
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
    use crate::checkpoint::{CheckpointError, import_pytorch, load, metadata};
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

/// Where a model's checkpoint goes, relative to the output folder: `models/dense.safetensors`
/// and `models/sparse.safetensors` for one seed and one pruner; with several, numbered by the
/// pruner's place in the config and put in a folder per seed (never named after labels).
fn model_file(plan: &Plan, seed: u64, name: &str, pruner_index: Option<usize>) -> String {
    let file = match pruner_index {
        Some(i) if plan.pruners.len() > 1 => format!("{name}-{i}.safetensors"),
        _ => format!("{name}.safetensors"),
    };
    if plan.seeds.len() > 1 {
        format!("models/seed-{seed}/{file}")
    } else {
        format!("models/{file}")
    }
}

#[allow(clippy::too_many_arguments)]
fn variant(
    name: &'static str,
    pruner: Option<String>,
    seed: u64,
    file: String,
    model: Model,
    mask: Option<Mask>,
    train_seconds: f64,
    data: &TaskData,
    batch: usize,
    (cache, kind, key): (&Cache, StageKind, &StageKey),
) -> Variant {
    let outputs = std::cell::OnceCell::new();
    // Added to the entry after it was stored, so sealed on its own (to the entry's key): a
    // damaged or foreign file is recomputed, never shown.
    let acc_file = cache.entry(kind, key).join("accuracy.json");
    let known = std::fs::read(&acc_file)
        .ok()
        .and_then(|b| crate::cache::open_sealed(key, &b))
        .and_then(|v| serde_json::from_value::<Accuracies>(v).ok());
    let acc = known.unwrap_or_else(|| {
        let o = SplitOutputs::compute(&model, &data.train, &data.val, &data.test, batch);
        let acc = Accuracies {
            train: o.train.accuracy(),
            val: o.val.accuracy(),
            test: o.test.accuracy(),
        };
        let _ = outputs.set(o);
        // Best effort: without it, the next run evaluates the model again.
        let value = serde_json::to_value(&acc).expect("numbers serialise");
        let _ = write_atomic(&acc_file, &crate::cache::seal_json(key, &value));
        acc
    });
    // What the mask covers (the pruner's `prunable` selection); without one, the conv weights.
    let prunable: i64 = match &mask {
        Some(m) => m.total(),
        None => model.prunable().values().map(|t| t.numel() as i64).sum(),
    };
    let pruned = mask.as_ref().map(|m| m.zeros()).unwrap_or(0);
    let summary = ModelSummary {
        seed,
        name: name.into(),
        pruner: pruner.clone(),
        file,
        sparsity: pruned as f64 / prunable as f64,
        pruned_weights: pruned,
        prunable_weights: prunable,
        parameters: model.num_parameters(),
        train_seconds,
        train_accuracy: acc.train,
        val_accuracy: acc.val,
        test_accuracy: acc.test,
    };
    Variant {
        name,
        pruner,
        model,
        mask,
        summary,
        outputs,
    }
}

fn scenario_summary(f: &ForgetSet) -> ScenarioSummary {
    ScenarioSummary {
        name: f.name.clone(),
        kind: f.kind.clone(),
        class: f.class,
        forget_size: f.forget.len(),
        retain_size: f.retain.len(),
        forget_sha256: f.hash(),
        forget_indices: f.forget.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(kinds: [(StageKind, (usize, usize, f64)); 3]) -> Progress {
        Progress {
            total: 20,
            done: Default::default(),
            cached: Default::default(),
            kinds: std::cell::RefCell::new(HashMap::from(kinds)),
        }
    }

    /// The time left: each kind's remaining stages at that kind's pace, the overall pace for a
    /// kind with none computed yet; nothing before the first computed stage.
    #[test]
    fn time_left_uses_each_kinds_pace() {
        let none = progress([
            (StageKind::Dense, (3, 0, 0.0)),
            (StageKind::Sparse, (6, 0, 0.0)),
            (StageKind::Row, (40, 0, 0.0)),
        ]);
        assert_eq!(none.eta(), None);
        assert!(!none.starting("x").contains("left"));
        // One dense stage took 100 s, two rows 10 s: overall pace 120 / 3 = 40 s.
        let p = progress([
            (StageKind::Dense, (2, 1, 100.0)),
            (StageKind::Sparse, (6, 0, 0.0)),
            (StageKind::Row, (38, 2, 20.0)),
        ]);
        let want = 2.0 * 100.0 + 6.0 * 40.0 + 38.0 * 10.0;
        assert!((p.eta().unwrap() - want).abs() < 1e-9);
        assert!(
            p.starting("FT")
                .ends_with("(0 cached; about 14 min left at the pace so far)")
        );
        p.finished(StageKind::Sparse, 70.0);
        p.cached(StageKind::Row);
        let want = 2.0 * 100.0 + 5.0 * 70.0 + 37.0 * 10.0;
        assert!((p.eta().unwrap() - want).abs() < 1e-9);
        assert!(p.starting("GA").starts_with("stage 3/20: GA (1 cached;"));
        assert_eq!(duration(42.4), "42 s");
        assert_eq!(duration(600.0), "10 min");
        assert_eq!(duration(3.0 * 3600.0), "3.0 h");
    }
}
