//! Fixtures for the FF and IU tests: a small trained and pruned model on a synthetic task, and
//! reference computations that use the ordinary `.grad` path one sample at a time (independent
//! of `unlearn_api::grad`, whose batched code the plugins use).

#![allow(dead_code)]

use std::path::Path;

use unlearn_api::data::{SplitConfig, SyntheticConfig, index_tensor, stratified_split, synthetic};
use unlearn_api::forget::ForgetSet;
use unlearn_api::mask::{Mask, magnitude_scores};
use unlearn_api::method::{TaskData, UnlearnCtx};
use unlearn_api::model::{Arch, Model, ModelSpec};
use unlearn_api::tch::{Device, Kind, Tensor};
use unlearn_api::train::{CrossEntropy, Run, Schedule, Stream, Trainer};

pub const CLASSES: usize = 4;
pub const FORGET_CLASS: usize = 1;

pub struct Fixture {
    pub data: TaskData,
    pub forget: ForgetSet,
    /// Trained, then half of its conv weights pruned (the mask applied).
    pub model: Model,
    pub mask: Mask,
    pub trainer: Trainer,
}

/// 120 synthetic 8x8 images of 4 classes; forget class 1; a small CNN trained 4 epochs.
pub fn fixture() -> Fixture {
    let d = synthetic(&SyntheticConfig {
        samples: 120,
        classes: CLASSES,
        noise: 6.0,
        seed: 5,
        ..Default::default()
    })
    .unwrap();
    let split = stratified_split(&d.labels_vec(), CLASSES, &SplitConfig::default()).unwrap();
    let data = TaskData {
        train: d.subset(&split.train),
        val: d.subset(&split.val),
        test: d.subset(&split.test),
    };
    let forget = unlearn_api::scenario::resolve_named(
        "class",
        &serde_json::json!({ "class": FORGET_CLASS }),
        &data.train.labels_vec(),
        CLASSES,
        Path::new("."),
    )
    .unwrap();
    let spec = ModelSpec {
        arch: Arch::SmallCnn,
        input: [1, 8, 8],
        classes: CLASSES,
        mean: d.mean.clone(),
        std: d.std.clone(),
    };
    let mut model = Model::new(spec, Device::Cpu, 0).unwrap();
    let all: Vec<usize> = (0..data.train.len()).collect();
    let stream = Stream::new(&data.train, &all);
    let schedule = Schedule {
        epochs: 4,
        lr: 0.05,
        batch_size: 16,
        milestones: vec![],
        ..Default::default()
    };
    let trainer = Trainer::new(Device::Cpu, false);
    trainer
        .run(
            &mut model,
            Run::new("setup".into(), &schedule, &stream, None, 0),
            &mut CrossEntropy,
        )
        .unwrap();
    let mask = Mask::from_scores(&magnitude_scores(&model), None, 0.5).unwrap();
    mask.apply(&model);
    Fixture {
        data,
        forget,
        model,
        mask,
        trainer,
    }
}

impl Fixture {
    pub fn ctx<'a>(
        &'a self,
        model: &'a mut Model,
        mask: Option<&'a Mask>,
        seed: u64,
    ) -> UnlearnCtx<'a> {
        UnlearnCtx {
            model,
            mask,
            data: &self.data,
            forget: &self.forget,
            trainer: &self.trainer,
            seed,
            label: "test".into(),
        }
    }

    /// The train row's image as a batch of one.
    pub fn image(&self, row: usize) -> Tensor {
        self.data
            .train
            .batch_images(&index_tensor(&[row], Device::Cpu))
    }

    /// The inputs FF and IU read for `rows` in batches of `batch`, one image (a batch of one)
    /// per row: clean with `seed` None; else augmented as the training set says, a batch at a
    /// time, by core's generator for the gradient tools seeded with `seed`.
    pub fn inputs(&self, rows: &[usize], batch: usize, seed: Option<u64>) -> Vec<Tensor> {
        let Some(seed) = seed else {
            return rows.iter().map(|&r| self.image(r)).collect();
        };
        let mut rng = unlearn_api::rng::rng(seed, unlearn_api::grad::AUGMENT_PURPOSE);
        let train = &self.data.train;
        rows.chunks(batch)
            .flat_map(|chunk| {
                let x = train.batch_images(&index_tensor(chunk, Device::Cpu));
                let a = train.augment.apply(&x, &mut rng);
                (0..chunk.len() as i64)
                    .map(|i| a.narrow(0, i, 1))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn label(&self, row: usize) -> usize {
        self.data.train.labels.int64_value(&[row as i64]) as usize
    }
}

/// Shapes of the model's parameters in name order.
pub fn shapes(model: &Model) -> Vec<(String, Vec<i64>)> {
    model
        .parameters()
        .into_iter()
        .map(|(k, t)| (k, t.size()))
        .collect()
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// The model's weights, one `Vec<f64>` per parameter in name order.
pub fn weights(model: &Model) -> Vec<Vec<f64>> {
    model.parameters().values().map(to_vec).collect()
}

/// d CE(model(x), target) / d w for one sample, through `backward()` and the `.grad` fields
/// (eval mode), one `Vec<f64>` per parameter in name order.
pub fn sample_grad(model: &Model, x: &Tensor, target: usize) -> Vec<Vec<f64>> {
    model.zero_grad();
    let logits = model.forward_t(x, false);
    let loss = logits.cross_entropy_for_logits(&Tensor::from_slice(&[target as i64]));
    loss.backward();
    model
        .parameters()
        .values()
        .map(|p| to_vec(&p.grad()))
        .collect()
}

/// Softmax probabilities of one sample (eval mode).
pub fn probs(model: &Model, x: &Tensor) -> Vec<f64> {
    let _g = unlearn_api::tch::no_grad_guard();
    to_vec(&model.forward_t(x, false).softmax(-1, Kind::Double))
}

pub fn flat(v: &[Vec<f64>]) -> Vec<f64> {
    v.concat()
}

/// Positions pruned by the mask, per parameter in name order (empty for unmasked ones).
pub fn pruned(model: &Model, mask: &Mask) -> Vec<Vec<bool>> {
    model
        .parameters()
        .keys()
        .map(|k| match mask.get(k) {
            Some(m) => to_vec(m).iter().map(|&v| v == 0.0).collect(),
            None => vec![],
        })
        .collect()
}

/// Sets the gradients of pruned weights to 0 (pruned weights are constants for FF and IU).
pub fn mask_grads(g: &mut [Vec<f64>], pruned: &[Vec<bool>]) {
    for (gp, pp) in g.iter_mut().zip(pruned) {
        for (v, &p) in gp.iter_mut().zip(pp) {
            if p {
                *v = 0.0;
            }
        }
    }
}
