//! Magnitude pruning (SPEC §4).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unlearn_core::mask::{magnitude_scores, Mask};
use unlearn_core::method::{MethodConfig, MethodError, PruneCtx, PruneMethod, Pruner};
use unlearn_core::register_pruner;

/// OMP: prune the smallest-magnitude convolution weights of the trained dense model globally,
/// rewind the survivors to the dense weights after `rewind_epoch` epochs, and retrain with the
/// pipeline's schedule advanced by `rewind_epoch` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OmpConfig {
    /// Share of convolution weights to prune (the paper: 0.5 and 0.95).
    #[schemars(range(min = 0.0, max = 0.999))]
    pub sparsity: f64,
    /// Epoch of dense training whose weights the survivors are rewound to (SPEC: 8).
    pub rewind_epoch: usize,
}

impl Default for OmpConfig {
    fn default() -> Self {
        OmpConfig {
            sparsity: 0.95,
            rewind_epoch: 8,
        }
    }
}

impl MethodConfig for OmpConfig {}

pub struct Omp {
    config: OmpConfig,
}

impl PruneMethod for Omp {
    type Config = OmpConfig;
    const NAME: &'static str = "OMP";
    const SUMMARY: &'static str =
        "one-shot global magnitude pruning of conv weights, rewind to epoch r, retrain";
    fn new(config: OmpConfig) -> Self {
        Omp { config }
    }
}

impl Pruner for Omp {
    fn sparsity(&self) -> f64 {
        self.config.sparsity
    }

    fn rewind_epoch(&self) -> Option<usize> {
        Some(self.config.rewind_epoch)
    }

    fn prune(&self, ctx: &mut PruneCtx<'_>) -> Result<Mask, MethodError> {
        let mask = Mask::from_scores(&magnitude_scores(ctx.model), None, self.config.sparsity)?;
        let rewind = ctx.rewind.ok_or_else(|| {
            MethodError::Failed(format!(
                "OMP needs the dense weights after epoch {}, but none were kept",
                self.config.rewind_epoch
            ))
        })?;
        ctx.model.load_snapshot(rewind)?;
        ctx.train(&mask, self.config.rewind_epoch)?;
        Ok(mask)
    }
}

register_pruner!(Omp);
