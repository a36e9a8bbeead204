//! Small fixtures for tests of methods (here, in plugins and in the conformance suite): a tiny
//! synthetic task, a model trained on it, and a context to run an unlearner in.

use std::path::Path;

use tch::Device;

use crate::data::{SplitConfig, SyntheticConfig, stratified_split, synthetic};
use crate::forget::ForgetSet;
use crate::mask::{Mask, magnitude_scores};
use crate::method::{MethodError, TaskData, UnlearnCtx, Unlearner};
use crate::model::{Arch, Model, ModelSpec};
use crate::train::{CrossEntropy, Run, Schedule, Stream, Trainer};

/// A model spec for tests: normalisation with mean 0.5 and std 0.25 in every channel.
pub fn spec(arch: Arch, input: [i64; 3], classes: usize) -> ModelSpec {
    let c = input[0] as usize;
    ModelSpec {
        arch,
        input,
        classes,
        mean: vec![0.5; c],
        std: vec![0.25; c],
    }
}

/// 120 synthetic 8x8 images of 4 classes, split 20%/10%, forgetting class 1.
pub struct TinyTask {
    pub data: TaskData,
    pub spec: ModelSpec,
    pub forget: ForgetSet,
}

impl TinyTask {
    pub fn new() -> TinyTask {
        let d = synthetic(&SyntheticConfig {
            samples: 120,
            classes: 4,
            noise: 6.0,
            seed: 3,
            ..Default::default()
        })
        .expect("valid synthetic config");
        let split =
            stratified_split(&d.labels_vec(), 4, &SplitConfig::default()).expect("valid split");
        let data = TaskData {
            train: d.subset(&split.train),
            val: d.subset(&split.val),
            test: d.subset(&split.test),
        };
        let forget = crate::scenario::resolve_named(
            "class",
            &serde_json::json!({"class": 1}),
            &data.train.labels_vec(),
            4,
            Path::new("."),
        )
        .expect("class 1 exists");
        let spec = ModelSpec {
            arch: Arch::SmallCnn,
            input: [1, 8, 8],
            classes: 4,
            mean: d.mean.clone(),
            std: d.std.clone(),
        };
        TinyTask { data, spec, forget }
    }

    /// A short schedule for tiny data: 10 epochs, lr 0.05, batch 16.
    pub fn schedule() -> Schedule {
        Schedule {
            epochs: 10,
            lr: 0.05,
            batch_size: 16,
            milestones: vec![],
            ..Default::default()
        }
    }

    /// A model trained on all of train with [`TinyTask::schedule`].
    pub fn trained(&self) -> Model {
        let mut m = Model::new(self.spec.clone(), Device::Cpu, 0).expect("valid spec");
        let all: Vec<usize> = (0..self.data.train.len()).collect();
        let stream = Stream::new(&self.data.train, &all);
        let s = TinyTask::schedule();
        Trainer::new(Device::Cpu, false)
            .run(
                &mut m,
                Run::new("tiny".into(), &s, &stream, None, 0),
                &mut CrossEntropy,
            )
            .expect("tiny training runs");
        m
    }

    /// A trained model with half of its conv weights pruned by magnitude.
    pub fn trained_sparse(&self) -> (Model, Mask) {
        let m = self.trained();
        let mask = Mask::from_scores(&magnitude_scores(&m), None, 0.5).expect("valid sparsity");
        mask.apply(&m);
        (m, mask)
    }

    /// Runs `unlearner` on a copy of `model` and returns the copy.
    pub fn unlearn(
        &self,
        unlearner: &dyn Unlearner,
        model: &Model,
        mask: Option<&Mask>,
        seed: u64,
    ) -> Result<Model, MethodError> {
        let mut copy = model.try_clone()?;
        let trainer = Trainer::new(Device::Cpu, false);
        let mut ctx = UnlearnCtx {
            model: &mut copy,
            mask,
            data: &self.data,
            forget: &self.forget,
            trainer: &trainer,
            seed,
            label: "test".into(),
        };
        unlearner.unlearn(&mut ctx)?;
        Ok(copy)
    }
}

impl Default for TinyTask {
    fn default() -> Self {
        TinyTask::new()
    }
}

/// A synthetic task of `samples` images, `channels` x `size` x `size`, 5 classes, split in order:
/// the first half train, then a quarter each for val and test (for attacks' tests, which need
/// images of a chosen shape rather than a trained model).
pub fn synthetic_task(samples: usize, channels: usize, size: usize) -> TaskData {
    let d = synthetic(&SyntheticConfig {
        samples,
        classes: 5,
        channels,
        size,
        seed: 1,
        ..Default::default()
    })
    .expect("valid synthetic config");
    let sub = |r: std::ops::Range<usize>| d.subset(&r.collect::<Vec<_>>());
    TaskData {
        train: sub(0..samples / 2),
        val: sub(samples / 2..samples * 3 / 4),
        test: sub(samples * 3 / 4..samples),
    }
}
