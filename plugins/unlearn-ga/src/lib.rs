//! Gradient-ascent unlearners (the paper's baselines): `GA` maximises the loss on the forget set; `GA_l1` adds a
//! constant L1 penalty. GA can diverge: core's loop stops with an error naming the method and the
//! epoch when the loss or the weights become non-finite, and no result is recorded.

use unlearn_api::method::{MethodError, UnlearnCtx, UnlearnMethod, Unlearner};
use unlearn_api::objective::{CeL1, L1Schedule};
use unlearn_api::{register_unlearner, sgd_config};

sgd_config!(
    /// Gradient ascent: minimise -CE on the forget set.
    GaConfig { epochs: 5, lr: 1e-4, milestones: vec![] }
);

sgd_config!(
    /// Gradient ascent with an L1 penalty: minimise -CE + alpha * ||w||_1 on the forget set.
    GaL1Config { epochs: 5, lr: 1e-4, milestones: vec![] }
    extra {
        /// The L1 weight a.
        #[schemars(range(min = 0.0, max = 10.0))]
        alpha: f64 = 5e-4,
    }
);

pub struct Ga {
    config: GaConfig,
}

impl UnlearnMethod for Ga {
    type Config = GaConfig;
    const NAME: &'static str = "GA";
    const SUMMARY: &'static str = "gradient ascent on the forget set";
    fn new(config: GaConfig) -> Self {
        Ga { config }
    }
}

impl Unlearner for Ga {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        let stream = ctx.forget_stream();
        ctx.train(
            &self.config.schedule(),
            &stream,
            &mut CeL1::ascent(L1Schedule::None),
        )?;
        Ok(())
    }
}

pub struct GaL1 {
    config: GaL1Config,
}

impl UnlearnMethod for GaL1 {
    type Config = GaL1Config;
    const NAME: &'static str = "GA_l1";
    const SUMMARY: &'static str = "gradient ascent on the forget set with a constant L1 penalty";
    fn new(config: GaL1Config) -> Self {
        GaL1 { config }
    }
}

impl Unlearner for GaL1 {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        let stream = ctx.forget_stream();
        ctx.train(
            &self.config.schedule(),
            &stream,
            &mut CeL1::ascent(L1Schedule::Constant(self.config.alpha)),
        )?;
        Ok(())
    }
}

register_unlearner!(Ga);
register_unlearner!(GaL1);
