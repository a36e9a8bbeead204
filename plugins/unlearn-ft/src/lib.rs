//! Unlearning by training on the retain set (SPEC §5): `retrain` from scratch (the gold
//! standard) and `FT` (fine-tune the original model).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unlearn_core::method::{MethodConfig, MethodError, UnlearnCtx, UnlearnMethod, Unlearner};
use unlearn_core::register_unlearner;
use unlearn_core::train::{CrossEntropy, Schedule};

/// SGD settings of a method that trains on the retain set.
macro_rules! sgd_config {
    ($(#[$doc:meta])* $name:ident { epochs: $epochs:expr, lr: $lr:expr, milestones: $ms:expr }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Passes over the retain set.
            #[schemars(range(min = 1))]
            pub epochs: usize,
            /// Initial learning rate.
            #[schemars(range(min = 0.0))]
            pub lr: f64,
            #[schemars(range(min = 1))]
            pub batch_size: usize,
            #[schemars(range(min = 0.0, max = 1.0))]
            pub momentum: f64,
            #[schemars(range(min = 0.0))]
            pub weight_decay: f64,
            /// Epochs at which the lr is multiplied by 0.1.
            pub milestones: Vec<usize>,
        }

        impl Default for $name {
            fn default() -> Self {
                $name { epochs: $epochs, lr: $lr, batch_size: 256, momentum: 0.9, weight_decay: 5e-4, milestones: $ms }
            }
        }

        impl MethodConfig for $name {
            fn check(&self) -> Vec<(String, String)> {
                let mut v = Vec::new();
                if self.milestones.windows(2).any(|w| w[0] >= w[1]) {
                    v.push(("milestones".into(), "milestones must be strictly increasing".into()));
                }
                v
            }
        }

        impl $name {
            pub fn schedule(&self) -> Schedule {
                Schedule {
                    epochs: self.epochs,
                    lr: self.lr,
                    momentum: self.momentum,
                    weight_decay: self.weight_decay,
                    batch_size: self.batch_size,
                    milestones: self.milestones.clone(),
                    gamma: 0.1,
                    warmup_epochs: 0,
                }
            }
        }
    };
}

sgd_config!(
    /// Retrain from a fresh initialisation (same mask when sparse) on the retain set.
    RetrainConfig { epochs: 160, lr: 0.1, milestones: vec![91, 136] }
);

sgd_config!(
    /// Fine-tune the original model on the retain set.
    FtConfig { epochs: 10, lr: 0.01, milestones: vec![] }
);

pub struct Retrain {
    config: RetrainConfig,
}

impl UnlearnMethod for Retrain {
    type Config = RetrainConfig;
    const NAME: &'static str = "retrain";
    const SUMMARY: &'static str =
        "exact unlearning: train from scratch on the retain set (the gold standard)";
    fn new(config: RetrainConfig) -> Self {
        Retrain { config }
    }
}

impl Unlearner for Retrain {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        ctx.reinitialise()?;
        let stream = ctx.retain_stream();
        ctx.train(&self.config.schedule(), &stream, &mut CrossEntropy)?;
        Ok(())
    }
}

pub struct Ft {
    config: FtConfig,
}

impl UnlearnMethod for Ft {
    type Config = FtConfig;
    const NAME: &'static str = "FT";
    const SUMMARY: &'static str = "fine-tune the original model on the retain set";
    fn new(config: FtConfig) -> Self {
        Ft { config }
    }
}

impl Unlearner for Ft {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        let stream = ctx.retain_stream();
        ctx.train(&self.config.schedule(), &stream, &mut CrossEntropy)?;
        Ok(())
    }
}

register_unlearner!(Retrain);
register_unlearner!(Ft);
