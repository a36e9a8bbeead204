//! `RL`: random labelling.

use unlearn_api::method::{MethodError, UnlearnCtx, UnlearnMethod, Unlearner};
use unlearn_api::rng::permutation;
use unlearn_api::sgd_config;
use unlearn_api::tch::Tensor;
use unlearn_api::train::{CrossEntropy, Stream};

sgd_config!(
    /// Random labelling (RL): fine-tune the original model with cross-entropy on the forget set,
    /// each forget sample relabelled once (seeded by the run's seed) with a uniformly random class
    /// other than its true one, together with the retain set under its true labels. Batches mix
    /// forget and retain samples. Defaults as FT: 10 epochs, lr 0.01, no lr decay.
    RlConfig { epochs: 10, lr: 0.01, milestones: vec![] }
);

/// The purpose string (prefix) under which [`random_other_labels`] draws from
/// [`unlearn_api::rng`]; the label of the forget set's `i`-th sample uses `"{LABEL_PURPOSE} {i}"`.
pub const LABEL_PURPOSE: &str = "RL label";

/// For every true label `y` in `0..classes`, a label drawn uniformly from the `classes - 1`
/// classes other than `y`, deterministically from `seed`: the `i`-th draw is the first entry of
/// a seeded permutation of `0..classes - 1` (core's [`permutation`] with purpose
/// `"{LABEL_PURPOSE} {i}"`), mapped past `y`. The draws are independent of each other and of
/// the training loop's batch order.
///
/// # Panics
/// When `classes < 2` (no other class exists) or a label is outside `0..classes`.
pub fn random_other_labels(true_labels: &[i64], classes: usize, seed: u64) -> Vec<i64> {
    assert!(
        classes >= 2,
        "random labels need at least 2 classes, got {classes}"
    );
    true_labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            assert!(
                (0..classes as i64).contains(&y),
                "label {y} is outside 0..{classes}"
            );
            let r = permutation(classes - 1, seed, &format!("{LABEL_PURPOSE} {i}"))[0] as i64;
            if r >= y { r + 1 } else { r }
        })
        .collect()
}

/// RL's training stream: the forget rows (in `ctx.forget.forget` order) with random other
/// labels ([`random_other_labels`] with `ctx.seed`), then the retain rows with their own labels.
pub fn random_label_stream<'a>(ctx: &UnlearnCtx<'a>) -> Result<Stream<'a>, MethodError> {
    let train = &ctx.data.train;
    let classes = ctx.model.spec().classes;
    if classes < 2 {
        return Err(MethodError::Failed(format!(
            "{}: random labelling needs at least 2 classes, the model has {classes}",
            ctx.label
        )));
    }
    let all = train.labels_vec();
    let true_forget: Vec<i64> = ctx.forget.forget.iter().map(|&i| all[i]).collect();
    if let Some(y) = true_forget
        .iter()
        .find(|&&y| !(0..classes as i64).contains(&y))
    {
        return Err(MethodError::Failed(format!(
            "{}: forget label {y} is outside the model's {classes} classes",
            ctx.label
        )));
    }
    let mut labels = random_other_labels(&true_forget, classes, ctx.seed);
    labels.extend(ctx.forget.retain.iter().map(|&i| all[i]));
    let rows: Vec<usize> = ctx
        .forget
        .forget
        .iter()
        .chain(&ctx.forget.retain)
        .copied()
        .collect();
    Ok(Stream::new(train, &rows).with_labels(Tensor::from_slice(&labels)))
}

/// Random labelling (as in Fan et al., *SalUn*, ICLR 2024).
pub struct Rl {
    config: RlConfig,
}

impl UnlearnMethod for Rl {
    type Config = RlConfig;
    const NAME: &'static str = "RL";
    const SUMMARY: &'static str = "random labelling: fine-tune on the forget set relabelled with random wrong classes, together with the retain set";
    fn new(config: RlConfig) -> Self {
        Rl { config }
    }
}

impl Unlearner for Rl {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        let stream = random_label_stream(ctx)?;
        ctx.train(&self.config.schedule(), &stream, &mut CrossEntropy)?;
        Ok(())
    }
}
