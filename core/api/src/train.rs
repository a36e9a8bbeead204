//! The one training loop. Methods supply an [`Objective`] (what to minimise on a batch) and one
//! or more [`Phase`]s, each a [`Stream`] (which samples, with which labels, tagged retain or
//! forget); core owns batching from device-resident data, one optimizer whose state persists
//! across phases, the lr schedule, mask enforcement, the rewind snapshot, divergence checks,
//! timing, progress, cancellation and mid-training checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{Augment, Dataset, index_tensor};
use crate::device::synchronize;
use crate::mask::Mask;
use crate::model::{Model, Snapshot};
use crate::optim::{Optimizer, OptimizerKind};
use crate::rng::permutation;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// `epoch` is 0-based; the message counts from 1.
    #[error("{label}: the loss or the weights became non-finite (NaN or inf) in epoch {} of {epochs}: training diverged; lower the learning rate (or the number of epochs), and check the method's settings that scale or divide its loss (a loss weight, a temperature, an optimizer's eps)", epoch + 1)]
    NonFinite {
        label: String,
        epoch: usize,
        epochs: usize,
    },
    #[error("{label}: the training stream is empty")]
    EmptyStream { label: String },
    #[error("{label}: invalid schedule: {message}")]
    Schedule { label: String, message: String },
    #[error("{label}: cancelled")]
    Cancelled { label: String },
    #[error("{label}: cannot save the training state to {}: {message}", path.display())]
    Checkpoint {
        label: String,
        path: std::path::PathBuf,
        message: String,
    },
    /// Reported by the other side of the plugin boundary (its message, verbatim).
    #[error("{0}")]
    Remote(String),
    #[error("{label}: {source}")]
    Torch {
        label: String,
        source: tch::TchError,
    },
}

/// The optimizer, its hyper-parameters and the lr schedule (multistep with optional linear
/// warm-up). The optimizer settings beyond SGD's are left out of the serialised form while they
/// hold their defaults, so a config that does not use them keeps its cache keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Schedule {
    /// Number of passes over the stream.
    #[schemars(range(min = 1, max = crate::bounds::MAX_EPOCHS))]
    pub epochs: usize,
    /// Initial learning rate.
    #[schemars(range(max = crate::bounds::MAX_LR), extend("exclusiveMinimum" = 0.0))]
    pub lr: f64,
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub momentum: f64,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub weight_decay: f64,
    #[schemars(range(min = 1, max = crate::bounds::MAX_BATCH_SIZE))]
    pub batch_size: usize,
    /// Epochs at which the lr is multiplied by `gamma`. Default: 91 and 136 of 182 epochs (one
    /// half and three quarters); with another `epochs` and no `milestones` in a config, those
    /// scaled to it: floor(m * epochs / 182), each from 1 to epochs - 1 (5 and 7 for 10 epochs).
    #[schemars(inner(range(min = 1, max = 100_000)))]
    pub milestones: Vec<usize>,
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    pub gamma: f64,
    /// Epochs of linear warm-up from lr/warmup_epochs to lr.
    #[schemars(range(min = 0, max = 100_000))]
    pub warmup_epochs: usize,
    /// sgd (momentum, optional Nesterov), adam or adamw; see docs/optimizers.md.
    #[serde(skip_serializing_if = "is_default")]
    pub optimizer: OptimizerKind,
    /// Nesterov momentum (SGD).
    #[serde(skip_serializing_if = "is_default")]
    pub nesterov: bool,
    /// Adam's and AdamW's (beta1, beta2).
    #[serde(skip_serializing_if = "is_default_betas")]
    #[schemars(length(equal = 2), inner(range(min = 0.0, max = 1.0)))]
    pub betas: Vec<f64>,
    /// Adam's and AdamW's epsilon, > 0 (it keeps the step's division away from 0 / 0).
    #[serde(skip_serializing_if = "is_default_eps")]
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    pub eps: f64,
}

/// Adam's default (beta1, beta2) and epsilon (Kingma & Ba, 2015).
pub const DEFAULT_BETAS: [f64; 2] = [0.9, 0.999];
pub const DEFAULT_EPS: f64 = 1e-8;

/// Whether `v` holds its type's default (for `skip_serializing_if`; public for `sgd_config!`).
pub fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[allow(clippy::ptr_arg)] // serde passes the field by reference
pub fn is_default_betas(b: &Vec<f64>) -> bool {
    b.as_slice() == DEFAULT_BETAS
}

pub fn is_default_eps(e: &f64) -> bool {
    *e == DEFAULT_EPS
}

impl Default for Schedule {
    /// The paper's dense training: 182 epochs, lr 0.1, x0.1 at 91 and 136, batch 256.
    fn default() -> Self {
        Schedule {
            epochs: 182,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            batch_size: 256,
            milestones: vec![91, 136],
            gamma: 0.1,
            warmup_epochs: 0,
            optimizer: OptimizerKind::Sgd,
            nesterov: false,
            betas: DEFAULT_BETAS.to_vec(),
            eps: DEFAULT_EPS,
        }
    }
}

impl Schedule {
    /// The lr of (0-based) `epoch`, the schedule advanced by `offset` epochs.
    pub fn lr_at(&self, epoch: usize, offset: usize) -> f64 {
        let e = epoch + offset;
        let warm = if e < self.warmup_epochs {
            (e + 1) as f64 / self.warmup_epochs as f64
        } else {
            1.0
        };
        let decays = self.milestones.iter().filter(|&&m| m <= e).count() as i32;
        self.lr * warm * self.gamma.powi(decays)
    }

    /// Rules the JSON Schema cannot express.
    pub fn check(&self) -> Result<(), String> {
        match self.issues().into_iter().next() {
            Some((_, message)) => Err(message),
            None => Ok(()),
        }
    }

    /// Every rule the JSON Schema cannot express that these settings, as a config gives them,
    /// break, as (field, message): what a run needs, and no setting the schedule would never
    /// reach.
    pub fn issues(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        // Settings a schedule would never reach are a mistake in the config: report them rather
        // than quietly run without them. (With 0 epochs only that is reported, by the schema's
        // minimum.) Code may build such schedules on purpose (a retraining whose lr schedule is
        // advanced past a rewind point), so a run itself checks only `run_issues`.
        if let Some(&m) = self
            .milestones
            .iter()
            .find(|&&m| m >= self.epochs && self.epochs > 0)
        {
            out.push((
                "milestones",
                format!(
                    "milestone {m} is never reached: training has {} epoch(s), so milestones must be below {}",
                    self.epochs, self.epochs
                ),
            ));
        }
        if self.warmup_epochs > self.epochs && self.epochs > 0 {
            out.push((
                "warmup_epochs",
                format!(
                    "a warm-up of {} epochs is longer than the {} epoch(s) of training",
                    self.warmup_epochs, self.epochs
                ),
            ));
        }
        out.extend(self.run_issues());
        out
    }

    /// The rules a run of these settings needs, as (field, message).
    fn run_issues(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.milestones.windows(2).any(|w| w[0] >= w[1]) {
            out.push((
                "milestones",
                format!(
                    "milestones {:?} must be strictly increasing",
                    self.milestones
                ),
            ));
        }
        if self.betas.len() != 2 || self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            out.push((
                "betas",
                format!("betas {:?} must be two numbers in [0, 1)", self.betas),
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            out.push((
                "eps",
                format!(
                    "eps {} must be a finite number > 0 (Adam divides by sqrt(v) + eps, which is 0 for a weight whose gradient is 0)",
                    self.eps
                ),
            ));
        }
        if self.nesterov && (self.optimizer != OptimizerKind::Sgd || self.momentum == 0.0) {
            out.push((
                "nesterov",
                "nesterov needs the sgd optimizer with a non-zero momentum".into(),
            ));
        }
        out
    }

    /// The optimizer these settings describe, over `model`'s trainable parameters.
    pub fn optimizer(&self, model: &Model) -> Optimizer {
        Optimizer::new(
            self.optimizer,
            model,
            self.lr,
            self.momentum,
            self.weight_decay,
            self.nesterov,
            (self.betas[0], self.betas[1]),
            self.eps,
        )
    }

    /// Everything a run needs, for schedules built in code rather than read from a config.
    fn check_all(&self) -> Result<(), String> {
        // The lr reaches libtorch as an f32: it must be a finite one.
        if !(self.lr.is_finite() && self.lr >= 0.0 && self.lr <= f32::MAX as f64) {
            return Err(format!(
                "lr {} must be a finite non-negative number",
                self.lr
            ));
        }
        if let Some((_, m)) = self.run_issues().into_iter().next() {
            return Err(m);
        }
        // Batch sizes become i64 sizes and offsets.
        if self.batch_size == 0 || i64::try_from(self.batch_size).is_err() {
            return Err(format!(
                "batch_size {} must be at least 1 and fit a 64-bit index",
                self.batch_size
            ));
        }
        Ok(())
    }
}

/// Which part of the training set a sample belongs to, as the loop tags it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    Retain,
    Forget,
}

/// The samples a run trains on: rows of a device-resident data set, their labels (the data
/// set's own labels, or replacements, e.g. random labels) and their tags.
pub struct Stream<'a> {
    pub data: &'a Dataset,
    /// Positions in `data` (i64).
    pub rows: Tensor,
    pub labels: Tensor,
    /// Per row, whether it is a forget sample (bool); batches carry it as [`Batch::forget`].
    pub forget: Tensor,
    /// Applied to every training batch; the data set's own policy by default.
    pub augment: Augment,
    /// Seeds the augmentation of the gradient tools in [`crate::grad`], which read a stream
    /// outside the loop (the loop draws its augmentation from its run's seed).
    pub augment_seed: u64,
}

impl<'a> Stream<'a> {
    /// `rows` of `data` with their own labels, every one tagged retain.
    pub fn new(data: &'a Dataset, rows: &[usize]) -> Stream<'a> {
        Stream::tagged(data, rows, Tag::Retain)
    }

    /// `rows` of `data` with their own labels, every one tagged `tag`.
    pub fn tagged(data: &'a Dataset, rows: &[usize], tag: Tag) -> Stream<'a> {
        let device = data.images.device();
        let forget = Tensor::full(
            [rows.len() as i64],
            (tag == Tag::Forget) as i64,
            (Kind::Bool, device),
        );
        Stream::with_tags(data, index_tensor(rows, device), forget)
    }

    /// The retain rows then the forget rows of `data`, each tagged as such: one stream whose
    /// batches mix both (Bad Teacher, for example, treats the two differently within a batch).
    pub fn mixed(data: &'a Dataset, retain: &[usize], forget: &[usize]) -> Stream<'a> {
        let device = data.images.device();
        let rows: Vec<usize> = retain.iter().chain(forget).copied().collect();
        let tags = Tensor::cat(
            &[
                Tensor::zeros([retain.len() as i64], (Kind::Bool, device)),
                Tensor::ones([forget.len() as i64], (Kind::Bool, device)),
            ],
            0,
        );
        Stream::with_tags(data, index_tensor(&rows, device), tags)
    }

    fn with_tags(data: &'a Dataset, rows: Tensor, forget: Tensor) -> Stream<'a> {
        let labels = data.labels.index_select(0, &rows);
        Stream {
            data,
            rows,
            labels,
            forget,
            augment: data.augment,
            augment_seed: 0,
        }
    }

    /// The same rows with other labels (one per row).
    pub fn with_labels(mut self, labels: Tensor) -> Stream<'a> {
        assert_eq!(labels.size(), self.rows.size(), "one label per row");
        self.labels = labels.to_device(self.rows.device());
        self
    }

    pub fn len(&self) -> usize {
        self.rows.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One mini-batch: inputs in [0, 1] and labels, on the model's device, with where they came
/// from.
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    /// Each sample's position in its stream's data set (i64; -1 when unknown).
    pub rows: Tensor,
    /// Each sample's tag: true for a forget sample (bool).
    pub forget: Tensor,
    /// The index of the run's phase this batch belongs to (0 in a one-phase run).
    pub phase: usize,
    /// Optimizer steps taken before this batch's, counted over the whole run.
    pub step: usize,
    pub epoch: usize,
    pub epochs: usize,
    /// The logits an objective computed for `y`, when it reports them (for the epoch log's
    /// training accuracy); see [`Batch::record_logits`].
    pub logits: std::cell::RefCell<Option<Tensor>>,
}

impl Batch {
    /// A batch that comes from no stream (tests, one-off losses): rows unknown (-1), every
    /// sample tagged retain, phase 0, step 0.
    pub fn new(x: Tensor, y: Tensor, epoch: usize, epochs: usize) -> Batch {
        let n = y.size().first().copied().unwrap_or(0);
        let device = y.device();
        Batch {
            rows: Tensor::full([n], -1, (Kind::Int64, device)),
            forget: Tensor::zeros([n], (Kind::Bool, device)),
            x,
            y,
            phase: 0,
            step: 0,
            epoch,
            epochs,
            logits: Default::default(),
        }
    }

    /// This batch with its samples' rows and tags.
    pub fn with_origin(self, rows: Tensor, forget: Tensor, phase: usize, step: usize) -> Batch {
        Batch {
            rows,
            forget,
            phase,
            step,
            ..self
        }
    }

    /// Lets the loop log the running training accuracy from these logits (one row per label).
    pub fn record_logits(&self, logits: &Tensor) {
        *self.logits.borrow_mut() = Some(logits.detach());
    }
}

/// What an iterative method minimises. `loss` returns a scalar; core does backward and the step.
/// A multi-phase method tells its phases apart by [`Batch::phase`] (a max-step is the negated
/// loss of its phase).
pub trait Objective {
    /// Called before each epoch (e.g. for a decaying regulariser weight).
    fn start_epoch(&mut self, _epoch: usize, _epochs: usize) {}
    fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, tch::TchError>;
    /// Called after backward and before the step (e.g. to mask gradients).
    fn before_step(&mut self, _model: &Model) {}
}

/// Cross-entropy on the stream's labels: plain training, retraining and fine-tuning.
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, tch::TchError> {
        let logits = model.forward_t(&batch.x, true);
        batch.record_logits(&logits);
        cross_entropy(&logits, &batch.y)
    }
}

/// Mean cross-entropy of logits against class labels (fallible, for use at boundaries).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor, tch::TchError> {
    logits.f_log_softmax(-1, Kind::Float)?.f_nll_loss(
        labels,
        None::<Tensor>,
        tch::Reduction::Mean,
        -100,
    )
}

/// One pass of each epoch: a stream and how much of it the epoch takes. The phases of a run
/// share its one optimizer (its state persists from phase to phase) and its lr schedule.
pub struct Phase<'a> {
    /// Names the phase in the epoch log (e.g. `max`, `min`).
    pub name: String,
    pub stream: &'a Stream<'a>,
    /// Samples per step in this phase (default: the schedule's batch size).
    pub batch_size: Option<usize>,
    /// Run this phase in the first `n` epochs only (default: every epoch).
    pub until_epoch: Option<usize>,
    /// At most this many steps per epoch (default: one pass over the stream).
    pub max_steps: Option<usize>,
}

impl<'a> Phase<'a> {
    /// One pass over `stream` per epoch with the schedule's batch size.
    pub fn new(name: impl Into<String>, stream: &'a Stream<'a>) -> Phase<'a> {
        Phase {
            name: name.into(),
            stream,
            batch_size: None,
            until_epoch: None,
            max_steps: None,
        }
    }

    fn batch_size(&self, s: &Schedule) -> usize {
        self.batch_size.unwrap_or(s.batch_size)
    }

    fn active(&self, epoch: usize) -> bool {
        self.until_epoch.is_none_or(|n| epoch < n)
    }

    /// Steps this phase takes in an epoch it is active in.
    fn steps(&self, s: &Schedule) -> usize {
        let full = self.stream.len().div_ceil(self.batch_size(s).max(1));
        self.max_steps.map_or(full, |m| m.min(full))
    }

    /// Its steps in (0-based) `epoch`.
    fn steps_in(&self, epoch: usize, s: &Schedule) -> usize {
        if self.active(epoch) { self.steps(s) } else { 0 }
    }
}

/// One call of the loop.
pub struct Run<'a> {
    /// Names the run in progress output and errors (e.g. `FT on class-3, sparse`).
    pub label: String,
    pub schedule: &'a Schedule,
    /// Start the lr schedule this many epochs in (OMP's rewind).
    pub schedule_offset: usize,
    /// What each epoch runs, in order (one phase for most methods).
    pub phases: Vec<Phase<'a>>,
    pub mask: Option<&'a Mask>,
    /// Keep a copy of the weights after this many epochs (0: before the first step).
    pub rewind_epoch: Option<usize>,
    /// Evaluate the accuracy on this set after every epoch and keep a copy of the weights of
    /// the best epoch (the first of equals): the reference code's best-validation checkpoint.
    /// Only core's own loop does this (plugin ABI v1 does not carry it).
    pub keep_best: Option<&'a Dataset>,
    /// Log the accuracy on this set after every epoch (`keep_best`'s set when that is given).
    pub validate: Option<&'a Dataset>,
    /// Seeds the batch order.
    pub seed: u64,
}

impl<'a> Run<'a> {
    /// A one-phase run over `stream` from the start of the schedule, without a rewind snapshot.
    pub fn new(
        label: String,
        schedule: &'a Schedule,
        stream: &'a Stream<'a>,
        mask: Option<&'a Mask>,
        seed: u64,
    ) -> Run<'a> {
        Run::phased(
            label,
            schedule,
            vec![Phase::new("train", stream)],
            mask,
            seed,
        )
    }

    /// A run whose epochs run `phases` in order (see [`Phase`]).
    pub fn phased(
        label: String,
        schedule: &'a Schedule,
        phases: Vec<Phase<'a>>,
        mask: Option<&'a Mask>,
        seed: u64,
    ) -> Run<'a> {
        Run {
            label,
            schedule,
            schedule_offset: 0,
            phases,
            mask,
            rewind_epoch: None,
            keep_best: None,
            validate: None,
            seed,
        }
    }

    /// This run, logging the accuracy on `val` after every epoch.
    pub fn validating(self, val: &'a Dataset) -> Run<'a> {
        Run {
            validate: Some(val),
            ..self
        }
    }
}

#[derive(Debug)]
pub struct TrainReport {
    /// Wall-clock seconds of this call, device synchronised (a resumed run: since it resumed;
    /// its [`StageScope`] knows what the epochs before took).
    pub seconds: f64,
    pub rewind: Option<Snapshot>,
    /// The best epoch on [`Run::keep_best`]'s set, when asked.
    pub best: Option<BestEpoch>,
    /// Mean loss of the last epoch.
    pub last_loss: f64,
    pub steps: usize,
    /// One entry per epoch.
    pub log: Vec<EpochLog>,
}

/// One epoch of a training run, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EpochLog {
    /// 1 for the first epoch.
    pub epoch: usize,
    pub lr: f64,
    /// Mean loss over the epoch's batches.
    pub loss: f64,
    /// Accuracy (percent) on the epoch's training batches as they were trained on (train mode,
    /// weights changing), when the objective reports its logits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    /// Accuracy (percent) on the run's validation set after the epoch, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
    /// Each phase's steps and mean loss, in a run of several phases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseLog>,
}

/// One phase of one epoch, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PhaseLog {
    pub name: String,
    pub steps: usize,
    /// Mean loss over the phase's batches (none when it took no step).
    pub loss: Option<f64>,
}

/// The epoch log of one loop run, named by its run label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunLog {
    pub run: String,
    pub epochs: Vec<EpochLog>,
}

/// Dense weights a pruner asks dense training to keep for it (`PruneCtx::rewind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewindPoint {
    /// The weights after this many epochs (0: the initialisation).
    Epoch(usize),
    /// The weights after the epoch with the best validation accuracy (the first of equals), as
    /// the reference code's `pt` keeps them. A run from `model.checkpoint` gives the checkpoint.
    BestValidation,
}

impl<'a> Run<'a> {
    /// This run, keeping the weights `point` names (`val`: the validation set).
    pub fn keeping(self, point: Option<RewindPoint>, val: &'a Dataset) -> Run<'a> {
        Run {
            rewind_epoch: match point {
                Some(RewindPoint::Epoch(e)) => Some(e),
                _ => None,
            },
            keep_best: (point == Some(RewindPoint::BestValidation)).then_some(val),
            ..self
        }
    }
}

impl TrainReport {
    /// The weights [`Run::keeping`] kept, if any.
    pub fn kept(&self) -> Option<&Snapshot> {
        self.rewind
            .as_ref()
            .or(self.best.as_ref().map(|b| &b.snapshot))
    }
}

/// The weights after the epoch with the best accuracy on a held-out set.
#[derive(Debug)]
pub struct BestEpoch {
    /// Epochs trained when the weights were kept (1 = after the first epoch).
    pub epoch: usize,
    /// Accuracy in percent.
    pub accuracy: f64,
    pub snapshot: Snapshot,
}

/// Top-1 accuracy (percent) of `model` on all of `data`, in eval mode, without gradients.
fn accuracy(model: &Model, data: &Dataset) -> f64 {
    let _g = tch::no_grad_guard();
    let n = data.len() as i64;
    let device = data.images.device();
    let mut correct = 0i64;
    for start in (0..n).step_by(1024) {
        let idx = Tensor::arange_start(start, n.min(start + 1024), (Kind::Int64, device));
        let pred = model
            .forward_t(&data.batch_images(&idx), false)
            .argmax(1, false);
        correct += pred
            .eq_tensor(&data.labels.index_select(0, &idx))
            .sum(Kind::Int64)
            .int64_value(&[]);
    }
    100.0 * correct as f64 / n.max(1) as f64
}

/// Where a [`Trainer`]'s loops run when not in this copy of core: inside a plugin library, the
/// host's loop (reached through the plugin ABI), so a plugin method trains exactly as a built-in.
pub trait LoopBackend: Send + Sync {
    fn run(
        &self,
        model: &mut Model,
        run: Run<'_>,
        objective: &mut dyn Objective,
    ) -> Result<TrainReport, TrainError>;
}

/// Runs training loops on one device. Cheap to clone; shares the cancel flag.
#[derive(Clone)]
pub struct Trainer {
    pub device: Device,
    /// Draw a progress bar (only when stderr is a terminal).
    pub progress: bool,
    pub cancel: Arc<AtomicBool>,
    backend: Option<Arc<dyn LoopBackend>>,
    stage: Option<Arc<StageScope>>,
}

/// What the loops of one pipeline stage share: a folder for their mid-training checkpoints and
/// the epoch logs of the runs so far.
///
/// The k-th run of the stage (counted from 0 in call order) saves its whole state to
/// `run-k.safetensors` at the end of every epoch, atomically: weights and buffers, the optimizer's
/// buffers, the epoch reached, the rewind and best-epoch weights kept so far, and its log. Batch
/// order and augmentation are drawn per epoch from the run's seed, and the lr from the
/// schedule, so a run that finds its own state (checked by a fingerprint of the run) continues
/// from it and ends with the same bits as an uninterrupted run; a killed stage loses at most one
/// epoch. A method's objective must draw any state it keeps from `Objective::start_epoch` (as
/// core's do) for this to hold.
#[derive(Debug)]
pub struct StageScope {
    dir: std::path::PathBuf,
    next: std::sync::atomic::AtomicUsize,
    logs: std::sync::Mutex<Vec<RunLog>>,
    /// Seconds of the epochs resumed runs took before they were interrupted.
    restored: std::sync::Mutex<f64>,
}

impl StageScope {
    /// The logs of the runs finished so far, in call order.
    pub fn logs(&self) -> Vec<RunLog> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Seconds the epochs restored from checkpoints took when they ran (add them to a time
    /// measured around the stage to get what the stage cost in all).
    pub fn restored_seconds(&self) -> f64 {
        self.restored.lock().map(|s| *s).unwrap_or(0.0)
    }
}

impl Trainer {
    pub fn new(device: Device, progress: bool) -> Trainer {
        Trainer {
            device,
            progress,
            cancel: Arc::new(AtomicBool::new(false)),
            backend: None,
            stage: None,
        }
    }

    /// A trainer whose loops run in `backend` (the plugin side of the ABI uses this).
    pub fn with_backend(device: Device, progress: bool, backend: Arc<dyn LoopBackend>) -> Trainer {
        Trainer {
            backend: Some(backend),
            ..Trainer::new(device, progress)
        }
    }

    /// This trainer for one stage: its loops checkpoint every epoch under `dir` (and resume from
    /// what they find there) and log their epochs to the returned scope.
    pub fn for_stage(&self, dir: std::path::PathBuf) -> (Trainer, Arc<StageScope>) {
        let scope = Arc::new(StageScope {
            dir,
            next: Default::default(),
            logs: Default::default(),
            restored: Default::default(),
        });
        let trainer = Trainer {
            stage: Some(scope.clone()),
            ..self.clone()
        };
        (trainer, scope)
    }

    pub fn run(
        &self,
        model: &mut Model,
        run: Run<'_>,
        objective: &mut dyn Objective,
    ) -> Result<TrainReport, TrainError> {
        if let Some(backend) = &self.backend {
            return backend.run(model, run, objective);
        }
        let label = run.label.clone();
        let torch = |source| TrainError::Torch {
            label: label.clone(),
            source,
        };
        run.schedule
            .check_all()
            .map_err(|message| TrainError::Schedule {
                label: label.clone(),
                message,
            })?;
        if run.phases.is_empty() || run.phases.iter().any(|p| p.stream.is_empty()) {
            return Err(TrainError::EmptyStream { label });
        }
        synchronize(self.device);
        let start = Instant::now();
        let s = run.schedule;
        let mut opt = s.optimizer(model);
        if let Some(m) = run.mask {
            m.apply(model);
        }
        let mut state = TrainState {
            epochs_done: 0,
            steps: 0,
            last_loss: f64::NAN,
            log: Vec::new(),
            rewind: (run.rewind_epoch == Some(0)).then(|| model.snapshot()),
            best: None,
        };
        let saved = self.stage.as_ref().map(|scope| {
            let k = scope.next.fetch_add(1, Ordering::SeqCst);
            let path = scope.dir.join(format!("run-{k}.safetensors"));
            (path, fingerprint(&run, model))
        });
        if let Some((path, fp)) = &saved {
            match TrainState::load(path, fp, model, &mut opt) {
                Ok(Some(resumed)) => {
                    if self.progress && resumed.epochs_done < s.epochs {
                        eprintln!(
                            "[unlearn] {label}: resuming after epoch {} of {}",
                            resumed.epochs_done, s.epochs
                        );
                    }
                    state = resumed;
                }
                Ok(None) => {}
                Err(why) => {
                    if self.progress {
                        eprintln!(
                            "[unlearn] {label}: the saved training state {} is unusable ({why}): starting over",
                            path.display()
                        );
                    }
                }
            }
        }
        let earlier_seconds: f64 = state.log.iter().map(|e| e.seconds).sum();
        if let Some(scope) = &self.stage
            && let Ok(mut r) = scope.restored.lock()
        {
            *r += earlier_seconds;
        }
        let val = run.keep_best.or(run.validate);
        let steps_in =
            |epoch: usize| -> usize { run.phases.iter().map(|p| p.steps_in(epoch, s)).sum() };
        let total: usize = (0..s.epochs).map(steps_in).sum();
        let bar = progress_bar(self.progress, total as u64, &label);
        bar.inc((0..state.epochs_done).map(steps_in).sum::<usize>() as u64);
        for epoch in state.epochs_done..s.epochs {
            let epoch_start = Instant::now();
            opt.set_lr(s.lr_at(epoch, run.schedule_offset));
            objective.start_epoch(epoch, s.epochs);
            let epoch_seed = run.seed.wrapping_add(epoch as u64);
            let mut loss_sum = Tensor::zeros([], (Kind::Double, self.device));
            let mut correct = Tensor::zeros([], (Kind::Int64, self.device));
            let mut scored = 0i64;
            let mut augment_rng = crate::rng::rng(epoch_seed, "augment");
            let mut phase_losses = Vec::with_capacity(run.phases.len());
            for (k, phase) in run.phases.iter().enumerate() {
                let steps = phase.steps_in(epoch, s);
                let stream = phase.stream;
                let n = stream.len();
                let b = phase.batch_size(s);
                // Phase 0 draws its order as a one-phase run always has.
                let purpose = if k == 0 {
                    "batches".to_string()
                } else {
                    format!("batches of phase {k}")
                };
                let order = index_tensor(&permutation(n, epoch_seed, &purpose), self.device);
                let phase_start = loss_sum.shallow_clone().copy();
                for chunk in 0..steps {
                    if self.cancel.load(Ordering::Relaxed) {
                        return Err(TrainError::Cancelled { label });
                    }
                    let start = (chunk * b) as i64;
                    let len = (b as i64).min(n as i64 - start);
                    let pick = order.narrow(0, start, len);
                    let rows = stream.rows.index_select(0, &pick);
                    let x = stream.data.batch_images(&rows);
                    let batch = Batch::new(
                        stream.augment.apply(&x, &mut augment_rng),
                        stream.labels.index_select(0, &pick),
                        epoch,
                        s.epochs,
                    )
                    .with_origin(
                        rows,
                        stream.forget.index_select(0, &pick),
                        k,
                        state.steps,
                    );
                    let loss = objective.loss(model, &batch).map_err(torch)?;
                    opt.zero_grad().map_err(torch)?;
                    loss.f_backward().map_err(torch)?;
                    if let Some(m) = run.mask {
                        m.apply_to_grads(model);
                    }
                    objective.before_step(model);
                    opt.step().map_err(torch)?;
                    if let Some(m) = run.mask {
                        m.apply(model);
                    }
                    loss_sum += loss.detach().to_kind(Kind::Double);
                    if let Some(logits) = batch.logits.borrow().as_ref()
                        && logits.size().first() == Some(&len)
                    {
                        correct += logits
                            .argmax(-1, false)
                            .eq_tensor(&batch.y)
                            .sum(Kind::Int64);
                        scored += len;
                    }
                    state.steps += 1;
                    bar.inc(1);
                }
                if run.phases.len() > 1 {
                    phase_losses.push((phase.name.clone(), steps, &loss_sum - phase_start));
                }
            }
            // One host sync per epoch: the divergence check.
            state.last_loss = loss_sum.double_value(&[]) / steps_in(epoch).max(1) as f64;
            if !state.last_loss.is_finite() || !model.all_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    label,
                    epoch,
                    epochs: s.epochs,
                });
            }
            bar.set_message(format!("loss {:.4}", state.last_loss));
            if run.rewind_epoch == Some(epoch + 1) {
                state.rewind = Some(model.snapshot());
            }
            let val_accuracy = val.map(|v| accuracy(model, v));
            if let (Some(acc), Some(_)) = (val_accuracy, run.keep_best)
                && state.best.as_ref().is_none_or(|b| acc > b.accuracy)
            {
                state.best = Some(BestEpoch {
                    epoch: epoch + 1,
                    accuracy: acc,
                    snapshot: model.snapshot(),
                });
            }
            synchronize(self.device);
            state.log.push(EpochLog {
                epoch: epoch + 1,
                lr: opt.lr(),
                loss: state.last_loss,
                train_accuracy: (scored > 0)
                    .then(|| 100.0 * correct.int64_value(&[]) as f64 / scored as f64),
                val_accuracy,
                seconds: epoch_start.elapsed().as_secs_f64(),
                phases: phase_losses
                    .into_iter()
                    .map(|(name, steps, sum)| PhaseLog {
                        name,
                        steps,
                        loss: (steps > 0).then(|| sum.double_value(&[]) / steps as f64),
                    })
                    .collect(),
            });
            state.epochs_done = epoch + 1;
            if let Some((path, fp)) = &saved {
                state
                    .save(path, fp, model, &opt)
                    .map_err(|e| TrainError::Checkpoint {
                        label: label.clone(),
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
            }
        }
        synchronize(self.device);
        bar.finish_and_clear();
        if let Some(scope) = &self.stage
            && let Ok(mut logs) = scope.logs.lock()
        {
            logs.push(RunLog {
                run: label.clone(),
                epochs: state.log.clone(),
            });
        }
        Ok(TrainReport {
            seconds: start.elapsed().as_secs_f64(),
            rewind: state.rewind,
            best: state.best,
            last_loss: state.last_loss,
            steps: state.steps,
            log: state.log,
        })
    }
}

/// What identifies a run for resuming it: everything that decides its result, short of the
/// weights it starts from (which its state replaces).
fn fingerprint(run: &Run<'_>, model: &Model) -> String {
    let sum = |t: &Tensor| t.sum(Kind::Int64).int64_value(&[]);
    let shapes: BTreeMap<String, Vec<i64>> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.size()))
        .collect();
    serde_json::json!({
        "label": run.label,
        "schedule": run.schedule,
        "schedule_offset": run.schedule_offset,
        "seed": run.seed,
        "phases": run.phases.iter().map(|p| serde_json::json!({
            "name": p.name,
            "rows": [p.stream.len(), sum(&p.stream.rows), sum(&p.stream.labels), sum(&p.stream.forget)],
            "augment": p.stream.augment,
            "batch_size": p.batch_size,
            "until_epoch": p.until_epoch,
            "max_steps": p.max_steps,
        })).collect::<Vec<_>>(),
        "mask": run.mask.map(|m| [m.zeros(), m.total()]),
        "rewind_epoch": run.rewind_epoch,
        "keep_best": run.keep_best.map(|d| d.len()),
        "validate": run.validate.map(|d| d.len()),
        "variables": shapes,
    })
    .to_string()
}

/// A run's state at the end of an epoch (see [`StageScope`]).
struct TrainState {
    epochs_done: usize,
    steps: usize,
    last_loss: f64,
    log: Vec<EpochLog>,
    rewind: Option<Snapshot>,
    best: Option<BestEpoch>,
}

/// The header of a saved [`TrainState`] (its tensors are named `model/..`, `optim/<slot>/..`,
/// `rewind/..`, `best/..`).
#[derive(Serialize, Deserialize)]
struct StateHeader {
    fingerprint: String,
    epochs_done: usize,
    steps: usize,
    last_loss: Option<f64>,
    log: Vec<EpochLog>,
    rewind: bool,
    best: Option<(usize, f64)>,
}

const STATE_KEY: &str = "unlearn-train-state";

impl TrainState {
    fn save(
        &self,
        path: &std::path::Path,
        fingerprint: &str,
        model: &Model,
        opt: &Optimizer,
    ) -> Result<(), String> {
        let mut tensors = BTreeMap::new();
        let mut put = |prefix: &str, map: BTreeMap<String, Tensor>| {
            for (k, t) in map {
                tensors.insert(format!("{prefix}/{k}"), t);
            }
        };
        put("model", model.snapshot().0);
        put("optim", opt.state());
        if let Some(r) = &self.rewind {
            put(
                "rewind",
                r.0.iter()
                    .map(|(k, t)| (k.clone(), t.shallow_clone()))
                    .collect(),
            );
        }
        if let Some(b) = &self.best {
            let snap = &b.snapshot.0;
            put(
                "best",
                snap.iter()
                    .map(|(k, t)| (k.clone(), t.shallow_clone()))
                    .collect(),
            );
        }
        let header = StateHeader {
            fingerprint: fingerprint.to_string(),
            epochs_done: self.epochs_done,
            steps: self.steps,
            last_loss: self.last_loss.is_finite().then_some(self.last_loss),
            log: self.log.clone(),
            rewind: self.rewind.is_some(),
            best: self.best.as_ref().map(|b| (b.epoch, b.accuracy)),
        };
        let json = serde_json::to_string(&header).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        crate::checkpoint::write_tensors(path, &tensors, HashMap::from([(STATE_KEY.into(), json)]))
            .map_err(|e| e.to_string())
    }

    /// The state saved at `path` for the run `fingerprint` names, loaded into `model` and `opt`;
    /// None when there is none or it belongs to another run, an error when it cannot be used
    /// (either way the run starts over and overwrites it).
    fn load(
        path: &std::path::Path,
        fingerprint: &str,
        model: &mut Model,
        opt: &mut Optimizer,
    ) -> Result<Option<TrainState>, String> {
        if !path.exists() {
            return Ok(None);
        }
        let (tensors, header) =
            crate::checkpoint::read_tensors(path, model.device()).map_err(|e| e.to_string())?;
        let h: StateHeader = header
            .get(STATE_KEY)
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or("no training-state header")?;
        if h.fingerprint != fingerprint {
            return Ok(None);
        }
        let mut parts: BTreeMap<String, BTreeMap<String, Tensor>> = BTreeMap::new();
        for (k, t) in tensors {
            let (prefix, name) = k.split_once('/').ok_or(format!("tensor `{k}`"))?;
            parts
                .entry(prefix.to_string())
                .or_default()
                .insert(name.to_string(), t);
        }
        let mut take = |p: &str| parts.remove(p).unwrap_or_default();
        let weights = Snapshot(take("model"));
        let optim = take("optim");
        let rewind = h.rewind.then(|| Snapshot(take("rewind")));
        let best = h.best.map(|(epoch, accuracy)| BestEpoch {
            epoch,
            accuracy,
            snapshot: Snapshot(take("best")),
        });
        // Check everything before changing anything.
        let mut probe = model.try_clone().map_err(|e| e.to_string())?;
        probe.load_snapshot(&weights).map_err(|e| e.to_string())?;
        for s in rewind.iter().chain(best.as_ref().map(|b| &b.snapshot)) {
            probe.load_snapshot(s).map_err(|e| e.to_string())?;
        }
        opt.load_state(optim)?;
        model.load_snapshot(&weights).map_err(|e| e.to_string())?;
        Ok(Some(TrainState {
            epochs_done: h.epochs_done,
            steps: h.steps,
            last_loss: h.last_loss.unwrap_or(f64::NAN),
            log: h.log,
            rewind,
            best,
        }))
    }
}

fn progress_bar(enabled: bool, len: u64, label: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>32} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Augment, SyntheticConfig, synthetic};
    use crate::mask::magnitude_scores;
    use crate::model::{Arch, ModelSpec};

    fn setup() -> (Dataset, Model) {
        let d = synthetic(&SyntheticConfig {
            samples: 120,
            classes: 4,
            ..Default::default()
        })
        .unwrap();
        let spec = ModelSpec {
            arch: Arch::SmallCnn,
            input: [1, 8, 8],
            classes: 4,
            mean: d.mean.clone(),
            std: d.std.clone(),
        };
        let m = Model::new(spec, Device::Cpu, 1).unwrap();
        (d, m)
    }

    fn schedule(epochs: usize) -> Schedule {
        Schedule {
            epochs,
            lr: 0.05,
            batch_size: 16,
            milestones: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn lr_schedule_is_multistep_with_warmup_and_offset() {
        let s = Schedule {
            lr: 0.1,
            milestones: vec![3, 5],
            gamma: 0.1,
            warmup_epochs: 2,
            ..Default::default()
        };
        let lrs: Vec<f64> = (0..7).map(|e| s.lr_at(e, 0)).collect();
        let want = [0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        assert!((s.lr_at(0, 3) - 0.01).abs() < 1e-12);
        assert!(
            Schedule {
                milestones: vec![5, 5],
                ..s
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn schedules_that_would_train_nothing_or_skip_settings_are_refused() {
        let fields = |s: &Schedule| s.issues().into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        let s = |epochs, milestones: Vec<usize>, warmup_epochs| Schedule {
            milestones,
            warmup_epochs,
            ..schedule(epochs)
        };
        assert!(fields(&s(10, vec![3, 9], 10)).is_empty());
        assert_eq!(fields(&s(10, vec![3, 10], 0)), ["milestones"]);
        assert_eq!(fields(&s(10, vec![], 11)), ["warmup_epochs"]);
        // A run built in code may advance its lr schedule past its own epochs (retraining after
        // a rewind), but an lr that is not a finite f32 never reaches libtorch.
        assert!(s(1, vec![3], 0).check_all().is_ok());
        for lr in [-1.0, f64::NAN, f64::INFINITY, 1e39] {
            let e = Schedule { lr, ..schedule(1) }.check_all().unwrap_err();
            assert!(e.contains("finite non-negative"), "{lr}: {e}");
        }
    }

    #[test]
    fn training_lowers_the_loss_and_is_deterministic() {
        let (d, mut m) = setup();
        let rows: Vec<usize> = (0..d.len()).collect();
        let stream = Stream::new(&d, &rows);
        let sched = schedule(1);
        let trainer = Trainer::new(Device::Cpu, false);
        let run = |m: &mut Model, epochs| {
            let s = schedule(epochs);
            trainer
                .run(
                    m,
                    Run {
                        label: "t".into(),
                        schedule: &s,
                        schedule_offset: 0,
                        phases: vec![Phase::new("train", &stream)],
                        mask: None,
                        rewind_epoch: Some(1),
                        keep_best: None,
                        validate: None,
                        seed: 0,
                    },
                    &mut CrossEntropy,
                )
                .unwrap()
        };
        let mut m2 = m.try_clone().unwrap();
        let first = run(&mut m, 1).last_loss;
        let r = run(&mut m, 8);
        assert!(r.last_loss < first * 0.5, "{first} -> {}", r.last_loss);
        assert!(r.rewind.is_some());
        let _ = sched;
        // Same start, same seed: the same weights.
        let mut m3 = m2.try_clone().unwrap();
        run(&mut m2, 2);
        run(&mut m3, 2);
        for (k, v) in m2.parameters() {
            assert!(v.equal(&m3.parameters()[&k]), "{k}");
        }
    }

    #[test]
    fn mask_invariant_holds_after_many_steps() {
        let (d, mut m) = setup();
        let mask = Mask::from_scores(&magnitude_scores(&m), None, 0.9).unwrap();
        let rows: Vec<usize> = (0..d.len()).collect();
        let stream = Stream::new(&d, &rows);
        // A large lr, momentum and weight decay all push on pruned weights.
        let s = Schedule {
            epochs: 6,
            lr: 0.5,
            batch_size: 8,
            weight_decay: 1e-2,
            milestones: vec![],
            ..Default::default()
        };
        let r = Trainer::new(Device::Cpu, false)
            .run(
                &mut m,
                Run {
                    label: "t".into(),
                    schedule: &s,
                    schedule_offset: 0,
                    phases: vec![Phase::new("train", &stream)],
                    mask: Some(&mask),
                    rewind_epoch: None,
                    keep_best: None,
                    validate: None,
                    seed: 0,
                },
                &mut CrossEntropy,
            )
            .unwrap();
        assert_eq!(r.steps, 6 * 15);
        assert_eq!(mask.violations(&m), 0);
        // and the surviving weights did move
        let moved = m.prunable()["conv2.weight"]
            .ne(0.0)
            .sum(Kind::Int64)
            .int64_value(&[]);
        assert!(moved > 0);
    }

    /// Cross-entropy that raises the trainer's cancel flag in the middle of one epoch: a run
    /// killed there.
    struct StopsAt {
        epoch: usize,
        batches: usize,
        cancel: Arc<AtomicBool>,
    }

    impl Objective for StopsAt {
        fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, tch::TchError> {
            if batch.epoch == self.epoch {
                if self.batches == 0 {
                    self.cancel.store(true, Ordering::SeqCst);
                }
                self.batches = self.batches.saturating_sub(1);
            }
            CrossEntropy.loss(model, batch)
        }
    }

    /// A run stopped mid-epoch and started again on the same stage folder ends with the bits
    /// of an uninterrupted run: weights, BatchNorm buffers, the rewind and best-epoch weights,
    /// the step count and the epoch log (but for its timings).
    #[test]
    fn an_interrupted_run_resumes_to_the_same_bits() {
        resumes_to_the_same_bits(Schedule {
            epochs: 5,
            lr: 0.05,
            batch_size: 16,
            milestones: vec![3],
            ..Default::default()
        });
    }

    #[test]
    fn an_interrupted_adamw_run_resumes_to_the_same_bits() {
        // Adam's moments and per-parameter step counts (0-d tensors) travel in the checkpoint.
        resumes_to_the_same_bits(Schedule {
            epochs: 5,
            lr: 0.01,
            weight_decay: 0.01,
            batch_size: 16,
            milestones: vec![3],
            optimizer: OptimizerKind::Adamw,
            betas: vec![0.8, 0.99],
            ..Default::default()
        });
    }

    /// Kills a run of `s` mid-epoch, resumes it from its checkpoint, and compares everything
    /// with an uninterrupted run.
    fn resumes_to_the_same_bits(s: Schedule) {
        let (d, m0) = setup();
        let rows: Vec<usize> = (0..d.len()).collect();
        let stream = Stream::new(&d, &rows).with_labels(d.labels.shallow_clone());
        let run = || {
            Run::new("t".into(), &s, &stream, None, 4)
                .keeping(Some(RewindPoint::BestValidation), &d)
        };
        let tmp = tempfile::tempdir().unwrap();
        let base = Trainer::new(Device::Cpu, false);

        let mut straight = m0.try_clone().unwrap();
        let (t, _) = base.for_stage(tmp.path().join("straight"));
        let want = t.run(&mut straight, run(), &mut CrossEntropy).unwrap();

        let mut resumed = m0.try_clone().unwrap();
        let dir = tmp.path().join("killed");
        let (t, _) = Trainer::new(Device::Cpu, false).for_stage(dir.clone());
        let mut stop = StopsAt {
            epoch: 2,
            batches: 3,
            cancel: t.cancel.clone(),
        };
        let e = t.run(&mut resumed, run(), &mut stop).unwrap_err();
        assert!(matches!(e, TrainError::Cancelled { .. }), "{e}");
        // Garbage in the weights it would start from: the state replaces them.
        {
            let _g = tch::no_grad_guard();
            let _ = resumed.parameters()["conv1.weight"]
                .shallow_clone()
                .fill_(7.0);
        }
        let (t, scope) = base.for_stage(dir);
        let got = t.run(&mut resumed, run(), &mut CrossEntropy).unwrap();
        // Two epochs came from the checkpoint; their time is counted, not lost.
        assert!(scope.restored_seconds() > 0.0);
        for (k, v) in straight.var_store().variables() {
            assert!(v.equal(&resumed.var_store().variables()[&k]), "{k}");
        }
        let (wb, gb) = (want.best.unwrap(), got.best.unwrap());
        assert_eq!((wb.epoch, wb.accuracy), (gb.epoch, gb.accuracy));
        for (k, v) in &wb.snapshot.0 {
            assert!(v.equal(&gb.snapshot.0[k]), "best {k}");
        }
        assert_eq!(want.steps, got.steps);
        assert_eq!(want.last_loss.to_bits(), got.last_loss.to_bits());
        let strip = |log: &[EpochLog]| -> Vec<EpochLog> {
            log.iter()
                .map(|e| EpochLog {
                    seconds: 0.0,
                    ..e.clone()
                })
                .collect()
        };
        assert_eq!(strip(&want.log), strip(&got.log));
        assert_eq!(got.log.len(), 5);
        assert!(
            got.log
                .iter()
                .all(|e| e.train_accuracy.is_some() && e.val_accuracy.is_some())
        );
        assert_eq!(scope.logs().len(), 1);

        // A state saved by another run (another seed) is not taken for this one's.
        let mut other = m0.try_clone().unwrap();
        let (t, _) = base.for_stage(tmp.path().join("straight"));
        let r = Run::new("t".into(), &s, &stream, None, 5);
        let fresh = t.run(&mut other, r, &mut CrossEntropy).unwrap();
        assert_eq!(fresh.steps, want.steps);
        assert!(!other.parameters()["conv1.weight"].equal(&straight.parameters()["conv1.weight"]));
    }

    /// The epoch log: lr per the schedule, a finite mean loss, and the training accuracy that
    /// the batches' logits give (checked against the count kept here).
    #[test]
    fn the_epoch_log_follows_the_schedule() {
        let (d, mut m) = setup();
        let rows: Vec<usize> = (0..d.len()).collect();
        let stream = Stream::new(&d, &rows);
        let s = Schedule {
            epochs: 4,
            lr: 0.1,
            batch_size: 32,
            milestones: vec![2],
            gamma: 0.5,
            ..Default::default()
        };
        struct Counting(i64, i64);
        impl Objective for Counting {
            fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, tch::TchError> {
                let logits = model.forward_t(&batch.x, true);
                batch.record_logits(&logits);
                if batch.epoch == 3 {
                    let right = logits.argmax(-1, false).eq_tensor(&batch.y);
                    self.0 += right.sum(Kind::Int64).int64_value(&[]);
                    self.1 += batch.y.size()[0];
                }
                cross_entropy(&logits, &batch.y)
            }
        }
        let mut obj = Counting(0, 0);
        let r = Trainer::new(Device::Cpu, false)
            .run(&mut m, Run::new("t".into(), &s, &stream, None, 0), &mut obj)
            .unwrap();
        let lrs: Vec<f64> = r.log.iter().map(|e| e.lr).collect();
        assert_eq!(lrs, [0.1, 0.1, 0.05, 0.05]);
        assert_eq!(
            r.log.iter().map(|e| e.epoch).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert!(
            r.log
                .iter()
                .all(|e| e.loss.is_finite() && e.val_accuracy.is_none())
        );
        assert_eq!(r.log[3].loss.to_bits(), r.last_loss.to_bits());
        let want = 100.0 * obj.0 as f64 / obj.1 as f64;
        assert!((r.log[3].train_accuracy.unwrap() - want).abs() < 1e-9);
    }

    /// The loop with core's SGD against the same loop with libtorch's own optimizer (tch's
    /// `nn::Sgd`, what the loop used before it kept its momentum in the open): with a mask,
    /// weight decay, momentum, augmentation and an lr milestone, every variable ends bit-identical.
    #[test]
    fn the_loop_trains_as_with_libtorchs_optimizer() {
        let (d, m0) = setup();
        let mask = Mask::from_scores(&magnitude_scores(&m0), None, 0.7).unwrap();
        let rows: Vec<usize> = (0..d.len()).collect();
        let mut stream = Stream::new(&d, &rows);
        stream.augment = Augment::CROP_FLIP;
        let s = Schedule {
            epochs: 4,
            lr: 0.05,
            batch_size: 16,
            milestones: vec![2],
            weight_decay: 5e-3,
            ..Default::default()
        };
        let mut ours = m0.try_clone().unwrap();
        Trainer::new(Device::Cpu, false)
            .run(
                &mut ours,
                Run::new("t".into(), &s, &stream, Some(&mask), 9),
                &mut CrossEntropy,
            )
            .unwrap();

        let theirs = m0.try_clone().unwrap();
        let mut opt = libtorch_sgd(&theirs, &s);
        mask.apply(&theirs);
        let n = stream.len();
        for epoch in 0..s.epochs {
            opt.set_lr(s.lr_at(epoch, 0));
            let order = index_tensor(&permutation(n, 9 + epoch as u64, "batches"), Device::Cpu);
            let mut rng = crate::rng::rng(9 + epoch as u64, "augment");
            for start in (0..n).step_by(s.batch_size) {
                let len = s.batch_size.min(n - start) as i64;
                let pick = order.narrow(0, start as i64, len);
                let x = d.batch_images(&stream.rows.index_select(0, &pick));
                let x = stream.augment.apply(&x, &mut rng);
                let y = stream.labels.index_select(0, &pick);
                let loss = cross_entropy(&theirs.forward_t(&x, true), &y).unwrap();
                opt.zero_grad();
                loss.backward();
                mask.apply_to_grads(&theirs);
                opt.step();
                mask.apply(&theirs);
            }
        }
        for (k, v) in theirs.var_store().variables() {
            assert!(v.equal(&ours.var_store().variables()[&k]), "{k} differs");
        }
    }

    struct Exploding;
    impl Objective for Exploding {
        fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, tch::TchError> {
            // Gradient ascent with a huge lr: diverges.
            Ok(-model
                .forward_t(&batch.x, true)
                .cross_entropy_for_logits(&batch.y)
                * 1e30)
        }
    }

    /// libtorch's own SGD (through tch) with `s`'s settings: the independent reference.
    fn libtorch_sgd(model: &Model, s: &Schedule) -> tch::nn::Optimizer {
        use tch::nn::OptimizerConfig;
        tch::nn::Sgd {
            momentum: s.momentum,
            dampening: 0.0,
            wd: s.weight_decay,
            nesterov: false,
        }
        .build(model.var_store(), s.lr)
        .unwrap()
    }

    /// What a two-phase objective saw of each batch: (phase, step, epoch, rows, tags, labels).
    type Seen = (usize, usize, usize, Vec<i64>, Vec<bool>, Vec<i64>);

    /// Gradient ascent in phase 0, descent in phase 1; records every batch.
    struct AscentThenDescent(Vec<Seen>);

    impl Objective for AscentThenDescent {
        fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, tch::TchError> {
            self.0.push((
                batch.phase,
                batch.step,
                batch.epoch,
                Vec::try_from(&batch.rows).unwrap(),
                Vec::try_from(&batch.forget).unwrap(),
                Vec::try_from(&batch.y).unwrap(),
            ));
            let ce = cross_entropy(&model.forward_t(&batch.x, true), &batch.y)?;
            Ok(if batch.phase == 0 { -ce } else { ce })
        }
    }

    #[test]
    fn phases_share_one_optimizer_and_tag_their_batches() {
        let (d, m0) = setup();
        let forget: Vec<usize> = (0..30).collect();
        let retain: Vec<usize> = (30..d.len()).collect();
        let mut on_forget = Stream::tagged(&d, &forget, Tag::Forget);
        on_forget.augment = Augment::CROP_FLIP;
        let mut mixed = Stream::mixed(&d, &retain, &forget);
        mixed.augment = Augment::CROP_FLIP;
        let s = Schedule {
            epochs: 3,
            lr: 0.02,
            batch_size: 16,
            milestones: vec![2],
            ..Default::default()
        };
        let phases = vec![
            Phase {
                batch_size: Some(8),
                until_epoch: Some(2),
                ..Phase::new("max", &on_forget)
            },
            Phase {
                max_steps: Some(4),
                ..Phase::new("min", &mixed)
            },
        ];
        let mut ours = m0.try_clone().unwrap();
        let mut objective = AscentThenDescent(Vec::new());
        let report = Trainer::new(Device::Cpu, false)
            .run(
                &mut ours,
                Run::phased("scrub-like".into(), &s, phases, None, 5),
                &mut objective,
            )
            .unwrap();

        // Independently: libtorch's SGD, built once, over the same batches in the same order.
        let theirs = m0.try_clone().unwrap();
        let mut opt = libtorch_sgd(&theirs, &s);
        let mut expected_batches = 0;
        for epoch in 0..s.epochs {
            opt.set_lr(s.lr_at(epoch, 0));
            let seed = 5 + epoch as u64;
            let mut rng = crate::rng::rng(seed, "augment");
            let plan: [(&Stream, &str, usize, usize, f64); 2] = [
                (
                    &on_forget,
                    "batches",
                    8,
                    if epoch < 2 { 4 } else { 0 },
                    -1.0,
                ),
                (&mixed, "batches of phase 1", 16, 4, 1.0),
            ];
            for (stream, purpose, b, steps, sign) in plan {
                let order = index_tensor(&permutation(stream.len(), seed, purpose), Device::Cpu);
                for k in 0..steps {
                    let len = b.min(stream.len() - k * b) as i64;
                    let pick = order.narrow(0, (k * b) as i64, len);
                    let x = stream.augment.apply(
                        &d.batch_images(&stream.rows.index_select(0, &pick)),
                        &mut rng,
                    );
                    let y = stream.labels.index_select(0, &pick);
                    let ce = cross_entropy(&theirs.forward_t(&x, true), &y).unwrap();
                    opt.zero_grad();
                    (ce * sign).backward();
                    opt.step();
                    expected_batches += 1;
                }
            }
        }
        for (k, v) in theirs.var_store().variables() {
            assert!(v.equal(&ours.var_store().variables()[&k]), "{k} differs");
        }

        // What the objective saw: phases in order, steps counted over the run, rows and tags
        // from their streams, labels those of the rows.
        let seen = &objective.0;
        assert_eq!(seen.len(), expected_batches);
        assert_eq!(report.steps, expected_batches);
        let labels: Vec<i64> = Vec::try_from(&d.labels).unwrap();
        for (i, (phase, step, epoch, rows, tags, y)) in seen.iter().enumerate() {
            assert_eq!(*step, i);
            assert!(*phase == 1 || *epoch < 2, "phase 0 stops after epoch 2");
            for ((&r, &t), &l) in rows.iter().zip(tags).zip(y) {
                assert_eq!(t, r < 30, "row {r} tagged {t}");
                assert_eq!(l, labels[r as usize]);
                if *phase == 0 {
                    assert!(t);
                }
            }
        }
        let mut forget_rows: Vec<i64> = seen
            .iter()
            .filter(|b| b.0 == 0 && b.2 == 0)
            .flat_map(|b| b.3.clone())
            .collect();
        forget_rows.sort();
        assert_eq!(
            forget_rows,
            (0..30).collect::<Vec<i64>>(),
            "one pass over D_f"
        );
        let per_phase: Vec<Vec<(String, usize)>> = report
            .log
            .iter()
            .map(|e| e.phases.iter().map(|p| (p.name.clone(), p.steps)).collect())
            .collect();
        let both = |max| vec![("max".to_string(), max), ("min".to_string(), 4)];
        assert_eq!(per_phase, vec![both(4), both(4), both(0)]);
        let e0 = &report.log[0];
        let phase_loss = |k: usize| e0.phases[k].loss.unwrap();
        let mean = (phase_loss(0) * 4.0 + phase_loss(1) * 4.0) / 8.0;
        assert!((mean - e0.loss).abs() < 1e-9, "{mean} vs {}", e0.loss);
        assert!(phase_loss(0) < 0.0, "ascent: a negated loss");
        assert_eq!(report.log[2].phases[0].loss, None);
    }

    #[test]
    fn divergence_is_an_error_naming_the_run_and_epoch() {
        let (d, mut m) = setup();
        let rows: Vec<usize> = (0..d.len()).collect();
        let stream = Stream::new(&d, &rows);
        let s = Schedule {
            epochs: 3,
            lr: 10.0,
            batch_size: 16,
            milestones: vec![],
            ..Default::default()
        };
        let e = Trainer::new(Device::Cpu, false)
            .run(
                &mut m,
                Run {
                    label: "GA on class-1".into(),
                    schedule: &s,
                    schedule_offset: 0,
                    phases: vec![Phase::new("train", &stream)],
                    mask: None,
                    rewind_epoch: None,
                    keep_best: None,
                    validate: None,
                    seed: 0,
                },
                &mut Exploding,
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                TrainError::NonFinite {
                    epoch: 0,
                    epochs: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().starts_with("GA on class-1: the loss or the weights became non-finite (NaN or inf) in epoch 1 of 3"), "{e}");
    }
}
