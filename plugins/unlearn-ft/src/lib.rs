//! Unlearning by training on the retain set (SPEC §5): `retrain` from scratch (the gold
//! standard), `FT` (fine-tune the original model), the paper's `l1-sparse` (FT with a decaying L1
//! penalty), `FT_l1` (FT with a constant one), and `raw` (no change: the original model).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unlearn_core::method::{MethodConfig, MethodError, UnlearnCtx, UnlearnMethod, Unlearner};
use unlearn_core::objective::{CeL1, L1Schedule};
use unlearn_core::train::CrossEntropy;
use unlearn_core::{register_unlearner, sgd_config};

sgd_config!(
    /// Retrain from a fresh initialisation (same mask when sparse) on the retain set.
    RetrainConfig { epochs: 160, lr: 0.1, milestones: vec![91, 136] }
);

sgd_config!(
    /// Fine-tune the original model on the retain set.
    FtConfig { epochs: 10, lr: 0.01, milestones: vec![] }
);

sgd_config!(
    /// Fine-tune on the retain set with loss CE + a_t * ||w||_1 over all parameters, a_t
    /// decaying linearly from `alpha` to 0 over the first `epochs - no_l1_epochs` epochs.
    L1SparseConfig { epochs: 10, lr: 0.01, milestones: vec![] }
    extra {
        /// The initial L1 weight a (the paper: 5e-5 to 5e-4 on CIFAR; scale it to the data).
        #[schemars(range(min = 0.0))]
        alpha: f64 = 5e-4,
        /// Final epochs trained without the L1 term (E0).
        no_l1_epochs: usize = 0,
    }
    rules(c) {
        (c.no_l1_epochs > c.epochs).then(|| {
            ("no_l1_epochs".to_string(), format!("no_l1_epochs ({}) must not exceed epochs ({})", c.no_l1_epochs, c.epochs))
        })
    }
);

sgd_config!(
    /// Fine-tune on the retain set with loss CE + alpha * ||w||_1 (constant weight).
    FtL1Config { epochs: 10, lr: 0.01, milestones: vec![] }
    extra {
        /// The L1 weight a.
        #[schemars(range(min = 0.0))]
        alpha: f64 = 5e-4,
    }
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

pub struct L1Sparse {
    config: L1SparseConfig,
}

impl UnlearnMethod for L1Sparse {
    type Config = L1SparseConfig;
    const NAME: &'static str = "l1-sparse";
    const SUMMARY: &'static str =
        "the paper's sparsity-aware unlearning: FT with a linearly decaying L1 penalty";
    fn new(config: L1SparseConfig) -> Self {
        L1Sparse { config }
    }
}

impl Unlearner for L1Sparse {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        let stream = ctx.retain_stream();
        let l1 = L1Schedule::Decay {
            a: self.config.alpha,
            no_l1_epochs: self.config.no_l1_epochs,
        };
        ctx.train(&self.config.schedule(), &stream, &mut CeL1::descent(l1))?;
        Ok(())
    }
}

pub struct FtL1 {
    config: FtL1Config,
}

impl UnlearnMethod for FtL1 {
    type Config = FtL1Config;
    const NAME: &'static str = "FT_l1";
    const SUMMARY: &'static str = "fine-tune on the retain set with a constant L1 penalty";
    fn new(config: FtL1Config) -> Self {
        FtL1 { config }
    }
}

impl Unlearner for FtL1 {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        let stream = ctx.retain_stream();
        ctx.train(
            &self.config.schedule(),
            &stream,
            &mut CeL1::descent(L1Schedule::Constant(self.config.alpha)),
        )?;
        Ok(())
    }
}

/// `raw` takes no settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {}

impl MethodConfig for RawConfig {}

pub struct Raw;

impl UnlearnMethod for Raw {
    type Config = RawConfig;
    const NAME: &'static str = "raw";
    const SUMMARY: &'static str = "no change: evaluates the original model (a baseline)";
    fn new(_: RawConfig) -> Self {
        Raw
    }
}

impl Unlearner for Raw {
    fn unlearn(&self, _: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        Ok(())
    }
}

register_unlearner!(Retrain);
register_unlearner!(Ft);
register_unlearner!(L1Sparse);
register_unlearner!(FtL1);
register_unlearner!(Raw);
