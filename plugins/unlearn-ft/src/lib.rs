//! Unlearning by training on the retain set (the paper's baselines): `retrain` from scratch (the gold
//! standard), `FT` (fine-tune the original model), the paper's `l1-sparse` (FT with a decaying L1
//! penalty; `FT_l1` is the same method under the reference code's name), and `raw` (no change:
//! the original model).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unlearn_api::method::{MethodConfig, MethodError, UnlearnCtx, UnlearnMethod, Unlearner};
use unlearn_api::objective::{CeL1, L1Schedule};
use unlearn_api::train::CrossEntropy;
use unlearn_api::{register_unlearner, sgd_config};

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
    /// decaying linearly from `alpha` to 0 over the first `epochs - no_l1_epochs` epochs: for
    /// 0-based epoch t, a_t = alpha * (1 - t / (epochs - no_l1_epochs)), then 0 (alpha in every
    /// epoch when epochs = no_l1_epochs). The paper's sparsity-aware unlearning. `l1-sparse` and
    /// `FT_l1` are the same method with the same settings: the reference code's `FT_prune` (the
    /// paper's l1-sparse) calls its `FT_l1`, which applies this decaying schedule.
    L1SparseConfig { epochs: 10, lr: 0.01, milestones: vec![] }
    extra {
        /// The initial L1 weight a (the paper: 5e-5 to 5e-4 on CIFAR; scale it to the data).
        #[schemars(range(min = 0.0, max = 10.0))]
        alpha: f64 = 5e-4,
        /// Final epochs trained without the L1 term (E0).
        #[schemars(range(min = 0, max = 100_000))]
        no_l1_epochs: usize = 0,
    }
    rules(c) {
        (c.no_l1_epochs > c.epochs).then(|| {
            ("no_l1_epochs".to_string(), format!("no_l1_epochs ({}) must not exceed epochs ({})", c.no_l1_epochs, c.epochs))
        })
    }
);

/// `FT_l1`'s settings: those of `l1-sparse` (the same method; see [`L1SparseConfig`]).
pub type FtL1Config = L1SparseConfig;

impl L1SparseConfig {
    /// CE + a_t ||w||_1 with the decaying a_t.
    pub fn objective(&self) -> CeL1 {
        CeL1::descent(L1Schedule::Decay {
            a: self.alpha,
            no_l1_epochs: self.no_l1_epochs,
        })
    }
}

/// FT with the decaying L1 penalty: what `l1-sparse` and `FT_l1` both run.
fn fine_tune_l1(config: &L1SparseConfig, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
    let stream = ctx.retain_stream();
    ctx.train(&config.schedule(), &stream, &mut config.objective())?;
    Ok(())
}

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
        fine_tune_l1(&self.config, ctx)
    }
}

pub struct FtL1 {
    config: FtL1Config,
}

impl UnlearnMethod for FtL1 {
    type Config = FtL1Config;
    const NAME: &'static str = "FT_l1";
    const SUMMARY: &'static str =
        "fine-tune with the decaying L1 penalty: l1-sparse under the reference code's name";
    fn new(config: FtL1Config) -> Self {
        FtL1 { config }
    }
}

impl Unlearner for FtL1 {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        fine_tune_l1(&self.config, ctx)
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

#[cfg(test)]
mod tests {
    use super::*;
    use unlearn_api::method::parse_config;
    use unlearn_api::train::Objective;

    /// The weights a_t of `FT_l1` over its epochs, as the objective sees them, against the
    /// reference's formula written out: a * (1 - t / (E - E0)) for t < E - E0, then 0.
    fn weights(config: &L1SparseConfig) -> Vec<f64> {
        let mut objective = config.objective();
        (0..config.epochs)
            .map(|t| {
                objective.start_epoch(t, config.epochs);
                objective.l1_weight()
            })
            .collect()
    }

    #[test]
    fn ft_l1_decays_like_l1_sparse() {
        let c: FtL1Config = parse_config(&serde_json::json!({
            "epochs": 5, "alpha": 0.01, "no_l1_epochs": 1
        }))
        .unwrap();
        let want = [0.01, 0.0075, 0.005, 0.0025, 0.0];
        for (got, want) in weights(&c).iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
        // Default: no L1-free epochs, 10 epochs from 5e-4 down to 5e-5.
        let d = FtL1Config::default();
        let w = weights(&d);
        assert_eq!(w.len(), 10);
        assert!((w[0] - 5e-4).abs() < 1e-18 && (w[9] - 5e-5).abs() < 1e-18);
        // E = E0: the constant a in every epoch.
        let c: FtL1Config =
            parse_config(&serde_json::json!({"epochs": 3, "alpha": 0.2, "no_l1_epochs": 3}))
                .unwrap();
        assert_eq!(weights(&c), vec![0.2; 3]);
    }

    #[test]
    fn ft_l1_and_l1_sparse_share_one_schema() {
        use unlearn_api::registry::Registry;
        let r = Registry::builtin().unwrap();
        let schema = |name: &str| r.get(name).unwrap().schema.clone();
        assert_eq!(schema("FT_l1"), schema("l1-sparse"));
        let text = schema("FT_l1").to_string();
        assert!(text.contains("FT_prune"), "{text}");
    }
}
