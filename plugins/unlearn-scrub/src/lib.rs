//! SCRUB (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023): the original
//! model, frozen, is a teacher; the model being unlearned is its student. Each epoch the student
//! first moves away from the teacher on the forget set (max-steps: minimise -KL, only in the first
//! `msteps` epochs), then back towards it on the retain set while fitting the labels (min-steps:
//! minimise alpha * KL + gamma * CE).
//!
//! Both kinds of step run in one run of core's loop, as two phases of each epoch, so that one
//! optimizer (and its momentum) carries across them as in SCRUB's code; the objective tells the
//! phases apart by [`Batch::phase`]. Core's loop enforces the mask of a sparse model.

use unlearn_api::method::{MethodError, UnlearnCtx, UnlearnMethod, Unlearner};
use unlearn_api::model::Model;
use unlearn_api::tch::{self, Tensor};
use unlearn_api::train::{Batch, Objective, Phase, cross_entropy};
use unlearn_api::{register_unlearner, sgd_config};

sgd_config!(
    /// SCRUB: max-steps on the forget set (minimise -KL(teacher || student)) in the first
    /// `msteps` epochs, then min-steps on the retain set (minimise alpha * KL + gamma * CE) in
    /// every epoch, with one optimizer throughout. `batch_size` is the retain (min-step) batch
    /// size. Defaults: SCRUB's small-scale settings (sgda_epochs 3, sgda_learning_rate 5e-4,
    /// momentum 0.9, weight decay 5e-4, sgda_batch_size 128). SCRUB's lr_decay_epochs [3, 5, 9]
    /// are never reached in its 3 epochs, so the default has no milestones (a milestone past the
    /// last epoch is refused): give them with more epochs.
    ScrubConfig { epochs: 3, lr: 5e-4, batch_size: 128, milestones: vec![] }
    extra {
        /// Epochs (the first ones) that start with max-steps on the forget set; at most `epochs`
        /// (SCRUB's msteps).
        #[schemars(range(min = 0, max = 100_000))]
        msteps: usize = 2,
        /// Forget-set samples per max-step (SCRUB's del_batch_size).
        #[schemars(range(min = 1, max = 1_048_576))]
        forget_batch_size: usize = 32,
        /// Distillation temperature T of the KL between teacher and student, from 0.01 to 1000
        /// (SCRUB's kd_T; below 0.01 the softened logits overflow float32 and the loss is NaN).
        #[schemars(range(min = 0.01, max = 1000.0))]
        temperature: f64 = 4.0,
        /// Weight of KL(teacher || student) in the min-steps on the retain set (SCRUB's alpha).
        #[schemars(range(min = 0.0, max = 1000.0))]
        alpha: f64 = 0.001,
        /// Weight of the cross-entropy in the min-steps on the retain set (SCRUB's gamma).
        #[schemars(range(min = 0.0, max = 1000.0))]
        gamma: f64 = 0.99,
    }
    rules(c) {
        let mut issues = Vec::new();
        if c.msteps > c.epochs {
            issues.push((
                "msteps".to_string(),
                format!("msteps {} must be at most epochs ({})", c.msteps, c.epochs),
            ));
        }
        if !(c.temperature.is_finite() && (0.01..=1000.0).contains(&c.temperature)) {
            issues.push((
                "temperature".to_string(),
                format!("temperature {} must be from 0.01 to 1000", c.temperature),
            ));
        }
        issues
    }
);

/// Distillation KL as SCRUB computes it: with `p = softmax(logits / T)`, the sum over the batch
/// and the classes of `p_t (log p_t - log p_s)`, times `T^2`, divided by the batch size.
pub fn distill_kl(student: &Tensor, teacher: &Tensor, t: f64) -> Result<Tensor, tch::TchError> {
    let n = student.size().first().copied().unwrap_or(0).max(1);
    let log_s = (student / t).f_log_softmax(-1, student.kind())?;
    let log_t = (teacher / t).f_log_softmax(-1, teacher.kind())?;
    let kl = (log_t.exp() * (log_t - log_s)).f_sum(student.kind())?;
    Ok(kl * (t * t / n as f64))
}

impl ScrubConfig {
    /// The loss of a batch of phase `phase` (0: max-step on the forget set, 1: min-step on the
    /// retain set), from the student's and the teacher's logits and the labels.
    pub fn loss(
        &self,
        phase: usize,
        student: &Tensor,
        teacher: &Tensor,
        labels: &Tensor,
    ) -> Result<Tensor, tch::TchError> {
        let kl = distill_kl(student, teacher, self.temperature)?;
        Ok(if phase == MAX {
            -kl
        } else {
            kl * self.alpha + cross_entropy(student, labels)? * self.gamma
        })
    }
}

/// The index of the max phase in the run (the min phase is 1).
const MAX: usize = 0;

/// SCRUB's objective: the student is the model the loop trains; the teacher a frozen copy.
struct ScrubObjective<'a> {
    config: &'a ScrubConfig,
    teacher: Model,
}

impl Objective for ScrubObjective<'_> {
    fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, tch::TchError> {
        let student = model.forward_t(&batch.x, true);
        let teacher = tch::no_grad(|| self.teacher.forward_t(&batch.x, false));
        if batch.phase != MAX {
            // The epoch log's training accuracy: on the retain set only.
            batch.record_logits(&student);
        }
        self.config.loss(batch.phase, &student, &teacher, &batch.y)
    }
}

pub struct Scrub {
    config: ScrubConfig,
}

impl UnlearnMethod for Scrub {
    type Config = ScrubConfig;
    const NAME: &'static str = "SCRUB";
    const SUMMARY: &'static str = "teacher-student unlearning: max-steps away from the original model on the forget set, \
         min-steps towards it (and the labels) on the retain set";
    fn new(config: ScrubConfig) -> Self {
        Scrub { config }
    }
}

impl Unlearner for Scrub {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        // The teacher: the original model, copied before any step.
        let teacher = ctx.model.try_clone()?;
        let forget = ctx.forget_stream();
        let retain = ctx.retain_stream();
        let phases = vec![
            Phase {
                until_epoch: Some(self.config.msteps),
                batch_size: Some(self.config.forget_batch_size),
                ..Phase::new("max", &forget)
            },
            Phase::new("min", &retain),
        ];
        let mut objective = ScrubObjective {
            config: &self.config,
            teacher,
        };
        ctx.train_phases(&self.config.schedule(), phases, &mut objective)?;
        Ok(())
    }
}

register_unlearner!(Scrub);
