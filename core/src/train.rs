//! The one training loop. Methods supply an [`Objective`] (what to minimise on a batch) and a
//! [`Stream`] (which samples, with which labels); core owns batching from device-resident data,
//! the SGD optimizer and lr schedule, mask enforcement, the rewind snapshot, divergence checks,
//! timing, progress and cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::data::{index_tensor, Augment, Dataset};
use crate::device::synchronize;
use crate::mask::Mask;
use crate::model::{Model, Snapshot};
use crate::rng::permutation;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// `epoch` is 0-based; the message counts from 1.
    #[error("{label}: the loss or the weights became non-finite (NaN or inf) in epoch {} of {epochs}; lower the learning rate or the number of epochs", epoch + 1)]
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
    /// Reported by the other side of the plugin boundary (its message, verbatim).
    #[error("{0}")]
    Remote(String),
    #[error("{label}: {source}")]
    Torch {
        label: String,
        source: tch::TchError,
    },
}

/// SGD hyper-parameters and the lr schedule (SPEC §3: multistep with optional linear warm-up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Schedule {
    /// Number of passes over the stream.
    #[schemars(range(min = 0))]
    pub epochs: usize,
    /// Initial learning rate.
    #[schemars(range(min = 0.0))]
    pub lr: f64,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub momentum: f64,
    #[schemars(range(min = 0.0))]
    pub weight_decay: f64,
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Epochs at which the lr is multiplied by `gamma`.
    pub milestones: Vec<usize>,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub gamma: f64,
    /// Epochs of linear warm-up from lr/warmup_epochs to lr.
    pub warmup_epochs: usize,
}

impl Default for Schedule {
    /// SPEC §3's dense training: 182 epochs, lr 0.1, x0.1 at 91 and 136, batch 256.
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
        if self.milestones.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "milestones {:?} must be strictly increasing",
                self.milestones
            ));
        }
        Ok(())
    }

    /// Everything a run needs, for schedules built in code rather than read from a config.
    fn check_all(&self) -> Result<(), String> {
        self.check()?;
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(format!(
                "lr {} must be a finite non-negative number",
                self.lr
            ));
        }
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        Ok(())
    }
}

/// The samples a run trains on: rows of a device-resident data set and their labels (the data
/// set's own labels, or replacements, e.g. random labels).
pub struct Stream<'a> {
    pub data: &'a Dataset,
    pub rows: Tensor,
    pub labels: Tensor,
    /// Applied to every training batch; the data set's own policy by default.
    pub augment: Augment,
    /// Seeds the augmentation of the gradient tools in [`crate::grad`], which read a stream
    /// outside the loop (the loop draws its augmentation from its run's seed).
    pub augment_seed: u64,
}

impl<'a> Stream<'a> {
    pub fn new(data: &'a Dataset, rows: &[usize]) -> Stream<'a> {
        let rows = index_tensor(rows, data.images.device());
        let labels = data.labels.index_select(0, &rows);
        Stream {
            data,
            rows,
            labels,
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

/// One mini-batch: inputs in [0, 1] and labels, on the model's device.
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    pub epoch: usize,
    pub epochs: usize,
}

/// What an iterative method minimises. `loss` returns a scalar; core does backward and the step.
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
        cross_entropy(&model.forward_t(&batch.x, true), &batch.y)
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

/// One call of the loop.
pub struct Run<'a> {
    /// Names the run in progress output and errors (e.g. `FT on class-3, sparse`).
    pub label: String,
    pub schedule: &'a Schedule,
    /// Start the lr schedule this many epochs in (OMP's rewind).
    pub schedule_offset: usize,
    pub stream: &'a Stream<'a>,
    pub mask: Option<&'a Mask>,
    /// Keep a copy of the weights after this many epochs (0: before the first step).
    pub rewind_epoch: Option<usize>,
    /// Evaluate the accuracy on this set after every epoch and keep a copy of the weights of
    /// the best epoch (the first of equals): the reference code's best-validation checkpoint.
    /// Only core's own loop does this (plugin ABI v1 does not carry it).
    pub keep_best: Option<&'a Dataset>,
    /// Seeds the batch order.
    pub seed: u64,
}

impl<'a> Run<'a> {
    /// A run from the start of the schedule, without a rewind snapshot.
    pub fn new(
        label: String,
        schedule: &'a Schedule,
        stream: &'a Stream<'a>,
        mask: Option<&'a Mask>,
        seed: u64,
    ) -> Run<'a> {
        Run {
            label,
            schedule,
            schedule_offset: 0,
            stream,
            mask,
            rewind_epoch: None,
            keep_best: None,
            seed,
        }
    }
}

#[derive(Debug)]
pub struct TrainReport {
    /// Wall-clock seconds of the loop, device synchronised.
    pub seconds: f64,
    pub rewind: Option<Snapshot>,
    /// The best epoch on [`Run::keep_best`]'s set, when asked.
    pub best: Option<BestEpoch>,
    /// Mean loss of the last epoch.
    pub last_loss: f64,
    pub steps: usize,
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
}

impl Trainer {
    pub fn new(device: Device, progress: bool) -> Trainer {
        Trainer {
            device,
            progress,
            cancel: Arc::new(AtomicBool::new(false)),
            backend: None,
        }
    }

    /// A trainer whose loops run in `backend` (the plugin side of the ABI uses this).
    pub fn with_backend(device: Device, progress: bool, backend: Arc<dyn LoopBackend>) -> Trainer {
        Trainer {
            backend: Some(backend),
            ..Trainer::new(device, progress)
        }
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
        let n = run.stream.len();
        if n == 0 {
            return Err(TrainError::EmptyStream { label });
        }
        synchronize(self.device);
        let start = Instant::now();
        let s = run.schedule;
        let mut opt = nn::Sgd {
            momentum: s.momentum,
            dampening: 0.0,
            wd: s.weight_decay,
            nesterov: false,
        }
        .build(model.var_store(), s.lr)
        .map_err(torch)?;
        if let Some(m) = run.mask {
            m.apply(model);
        }
        let mut rewind = (run.rewind_epoch == Some(0)).then(|| model.snapshot());
        let mut best = None;
        let steps_per_epoch = n.div_ceil(s.batch_size);
        let bar = progress_bar(self.progress, (s.epochs * steps_per_epoch) as u64, &label);
        let mut last_loss = f64::NAN;
        let mut steps = 0;
        for epoch in 0..s.epochs {
            opt.set_lr(s.lr_at(epoch, run.schedule_offset));
            objective.start_epoch(epoch, s.epochs);
            let order = index_tensor(
                &permutation(n, run.seed.wrapping_add(epoch as u64), "batches"),
                self.device,
            );
            let mut loss_sum = Tensor::zeros([], (Kind::Double, self.device));
            let mut augment_rng = crate::rng::rng(run.seed.wrapping_add(epoch as u64), "augment");
            for chunk in 0..steps_per_epoch {
                if self.cancel.load(Ordering::Relaxed) {
                    return Err(TrainError::Cancelled { label });
                }
                let start = (chunk * s.batch_size) as i64;
                let len = (s.batch_size as i64).min(n as i64 - start);
                let pick = order.narrow(0, start, len);
                let x = run
                    .stream
                    .data
                    .batch_images(&run.stream.rows.index_select(0, &pick));
                let batch = Batch {
                    x: run.stream.augment.apply(&x, &mut augment_rng),
                    y: run.stream.labels.index_select(0, &pick),
                    epoch,
                    epochs: s.epochs,
                };
                let loss = objective.loss(model, &batch).map_err(torch)?;
                opt.zero_grad();
                loss.f_backward().map_err(torch)?;
                if let Some(m) = run.mask {
                    m.apply_to_grads(model);
                }
                objective.before_step(model);
                opt.step();
                if let Some(m) = run.mask {
                    m.apply(model);
                }
                loss_sum += loss.detach().to_kind(Kind::Double);
                steps += 1;
                bar.inc(1);
            }
            // One host sync per epoch: the divergence check.
            last_loss = loss_sum.double_value(&[]) / steps_per_epoch as f64;
            if !last_loss.is_finite() || !model.all_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    label,
                    epoch,
                    epochs: s.epochs,
                });
            }
            bar.set_message(format!("loss {last_loss:.4}"));
            if run.rewind_epoch == Some(epoch + 1) {
                rewind = Some(model.snapshot());
            }
            if let Some(val) = run.keep_best {
                let acc = accuracy(model, val);
                if best.as_ref().is_none_or(|b: &BestEpoch| acc > b.accuracy) {
                    best = Some(BestEpoch {
                        epoch: epoch + 1,
                        accuracy: acc,
                        snapshot: model.snapshot(),
                    });
                }
            }
        }
        synchronize(self.device);
        bar.finish_and_clear();
        Ok(TrainReport {
            seconds: start.elapsed().as_secs_f64(),
            rewind,
            best,
            last_loss,
            steps,
        })
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
    use crate::data::{synthetic, SyntheticConfig};
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
        assert!(Schedule {
            milestones: vec![5, 5],
            ..s
        }
        .check()
        .is_err());
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
                        stream: &stream,
                        mask: None,
                        rewind_epoch: Some(1),
                        keep_best: None,
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
                    stream: &stream,
                    mask: Some(&mask),
                    rewind_epoch: None,
                    keep_best: None,
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
                    stream: &stream,
                    mask: None,
                    rewind_epoch: None,
                    keep_best: None,
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
