//! Magnitude and random pruning (docs/reference.md, "Training and pruning"): `OMP` (one-shot magnitude pruning, the paper's
//! default), `IMP` (iterative magnitude pruning) and `random` (OMP with a random global mask).
//!
//! All three share one step, [`rewind_and_retrain`]: the survivors of a mask are rewound to a
//! snapshot and the model is retrained under the mask with the pipeline's schedule.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unlearn_api::mask::{Mask, Prunable, magnitude_scores_of};
use unlearn_api::method::{MethodConfig, MethodError, PruneCtx, PruneMethod, Pruner, RewindPoint};
use unlearn_api::model::{Model, Snapshot};
use unlearn_api::register_pruner;
use unlearn_api::rng::permutation;
use unlearn_api::tch::Tensor;

/// The step shared by OMP, IMP and random: load `target` (every variable, BatchNorm statistics
/// included), zero what `mask` prunes, and retrain on all of train under `mask` with the
/// pipeline's schedule advanced by `schedule_offset` epochs.
pub fn rewind_and_retrain(
    ctx: &mut PruneCtx<'_>,
    mask: &Mask,
    target: &Snapshot,
    schedule_offset: usize,
) -> Result<(), MethodError> {
    ctx.model.load_snapshot(target)?;
    mask.apply(ctx.model);
    ctx.train(mask, schedule_offset)?;
    Ok(())
}

/// The dense weights the pipeline kept because the pruner's [`Pruner::rewind_point`] asked for
/// them (`what` names them in the error).
fn kept_snapshot<'a>(
    ctx: &PruneCtx<'a>,
    method: &str,
    what: &str,
) -> Result<&'a Snapshot, MethodError> {
    ctx.rewind
        .ok_or_else(|| MethodError::Failed(format!("{method} needs {what}, but none were kept")))
}

fn after_epoch(epoch: usize) -> String {
    format!("the dense weights after epoch {epoch}")
}

/// One-shot pruning (OMP, random): keep the highest `scores` globally so that exactly
/// `round(sparsity * total)` weights are pruned, rewind the survivors to the dense weights after
/// `rewind_epoch` epochs, and retrain with the schedule advanced by `rewind_epoch` epochs.
pub fn one_shot(
    ctx: &mut PruneCtx<'_>,
    method: &str,
    scores: &BTreeMap<String, Tensor>,
    sparsity: f64,
    rewind_epoch: usize,
) -> Result<Mask, MethodError> {
    let mask = Mask::from_scores(scores, None, sparsity)?;
    let target = kept_snapshot(ctx, method, &after_epoch(rewind_epoch))?;
    rewind_and_retrain(ctx, &mask, target, rewind_epoch)?;
    Ok(mask)
}

/// Random scores for the model's prunable weights (its conv weights): [`random_scores_of`] with
/// [`Prunable::Conv`].
pub fn random_scores(model: &Model, seed: u64) -> BTreeMap<String, Tensor> {
    random_scores_of(model, Prunable::Conv, seed)
}

/// Random scores for the weights `prunable` selects: a seeded random permutation of the ranks
/// `0..total` over all of them at once (in parameter-name order), so that global pruning by these
/// scores prunes a uniformly random set of exactly the asked size. The draw is made on the host
/// (`unlearn_api::rng`), so a seed gives the same mask on every device.
pub fn random_scores_of(model: &Model, prunable: Prunable, seed: u64) -> BTreeMap<String, Tensor> {
    let params = prunable.select(model);
    let total: usize = params.values().map(|t| t.numel()).sum();
    let ranks: Vec<f64> = permutation(total, seed, "random pruning")
        .into_iter()
        .map(|r| r as f64)
        .collect();
    let all = Tensor::from_slice(&ranks);
    let mut offset = 0i64;
    params
        .into_iter()
        .map(|(name, p)| {
            let n = p.numel() as i64;
            let s = all.narrow(0, offset, n).view_as(&p).to_device(p.device());
            offset += n;
            (name, s)
        })
        .collect()
}

fn check_sparsity(field: &str, sparsity: f64) -> Vec<(String, String)> {
    if (0.0..1.0).contains(&sparsity) {
        Vec::new()
    } else {
        vec![(field.into(), format!("{sparsity} is outside [0, 1)"))]
    }
}

// ----------------------------------------------------------------------------------------------
// OMP

/// One-shot pruning (OMP, random): prune the lowest-scoring weights (by default the convolution
/// weights; `prunable`) of the trained dense model globally (OMP: smallest magnitude; random: a seeded random set), rewind the
/// survivors to the dense weights after `rewind_epoch` epochs, and retrain with the pipeline's
/// schedule advanced by `rewind_epoch` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OneShotConfig {
    /// Share of the prunable weights to prune (the paper: 0.5 and 0.95 of the conv weights).
    #[schemars(range(min = 0.0, max = 0.999))]
    pub sparsity: f64,
    /// Epoch of dense training whose weights the survivors are rewound to (the paper: 8).
    #[schemars(range(max = 100_000))]
    pub rewind_epoch: usize,
    /// Which weights are pruned (globally, together): `conv` (every convolution weight, the
    /// paper's), `linear` or `conv+linear`. Biases and BatchNorm stay dense. (Left out of
    /// the serialised config at its default, so the paper's configs keep their cache keys.)
    #[serde(skip_serializing_if = "unlearn_api::train::is_default")]
    pub prunable: Prunable,
}

impl Default for OneShotConfig {
    fn default() -> Self {
        OneShotConfig {
            sparsity: 0.95,
            rewind_epoch: 8,
            prunable: Prunable::Conv,
        }
    }
}

impl MethodConfig for OneShotConfig {
    fn check(&self) -> Vec<(String, String)> {
        check_sparsity("sparsity", self.sparsity)
    }
}

/// OMP's settings.
pub type OmpConfig = OneShotConfig;
/// Random pruning's settings.
pub type RandomConfig = OneShotConfig;

pub struct Omp {
    config: OmpConfig,
}

impl PruneMethod for Omp {
    type Config = OmpConfig;
    const NAME: &'static str = "OMP";
    const SUMMARY: &'static str = "one-shot global magnitude pruning of conv weights (or `prunable`), rewind to epoch r, retrain";
    fn new(config: OmpConfig) -> Self {
        Omp { config }
    }
}

impl Pruner for Omp {
    fn sparsity(&self) -> f64 {
        self.config.sparsity
    }

    fn rewind_point(&self) -> Option<RewindPoint> {
        Some(RewindPoint::Epoch(self.config.rewind_epoch))
    }

    fn prune(&self, ctx: &mut PruneCtx<'_>) -> Result<Mask, MethodError> {
        let scores = magnitude_scores_of(ctx.model, self.config.prunable);
        one_shot(
            ctx,
            Self::NAME,
            &scores,
            self.config.sparsity,
            self.config.rewind_epoch,
        )
    }
}

register_pruner!(Omp);

// ----------------------------------------------------------------------------------------------
// random

pub struct RandomPrune {
    config: RandomConfig,
}

impl PruneMethod for RandomPrune {
    type Config = RandomConfig;
    const NAME: &'static str = "random";
    const SUMMARY: &'static str = "one-shot global random pruning of conv weights (or `prunable`; seeded), rewind to epoch r, retrain";
    fn new(config: RandomConfig) -> Self {
        RandomPrune { config }
    }
}

impl Pruner for RandomPrune {
    fn sparsity(&self) -> f64 {
        self.config.sparsity
    }

    fn rewind_point(&self) -> Option<RewindPoint> {
        Some(RewindPoint::Epoch(self.config.rewind_epoch))
    }

    fn prune(&self, ctx: &mut PruneCtx<'_>) -> Result<Mask, MethodError> {
        let scores = random_scores_of(ctx.model, self.config.prunable, ctx.seed);
        one_shot(
            ctx,
            Self::NAME,
            &scores,
            self.config.sparsity,
            self.config.rewind_epoch,
        )
    }
}

register_pruner!(RandomPrune);

// ----------------------------------------------------------------------------------------------
// IMP

/// Where IMP rewinds the surviving weights after each pruning round. Whatever the target, the
/// retraining lr schedule is advanced by `rewind_epoch` epochs, as the reference code does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RewindTarget {
    /// The dense weights after `rewind_epoch` epochs (lottery tickets with early rewinding).
    RewindLt,
    /// The initialisation (the original lottery tickets).
    Lt,
    /// The dense weights of the epoch with the best validation accuracy (the reference code's
    /// best dense checkpoint); from `model.checkpoint`, that checkpoint.
    Pt,
}

/// IMP: `rounds` times, prune `rate` of the remaining weights (by default the convolution
/// weights; `prunable`) globally by magnitude,
/// rewind the survivors and retrain under the mask. The first round prunes the trained dense
/// model; each later round prunes the model the previous round retrained. Sparsity after round
/// `i` is exactly `round((1 - (1 - rate)^i) * total)` weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ImpConfig {
    /// Number of prune-rewind-retrain rounds `k` (each retrains the full schedule). The default,
    /// 14, is the fewest rounds of 20% that reach the paper's 95% (1 - 0.8^14 = 95.6%); the
    /// reference code's `--pruning_times` counts the dense training too (k + 1).
    #[schemars(range(min = 1, max = 1000))]
    pub rounds: usize,
    /// Share of the remaining weights pruned in each round (the reference: 0.2).
    #[schemars(range(min = 0.0, max = 0.999))]
    pub rate: f64,
    /// What the survivors are rewound to before each retraining: `rewind_lt` (the dense weights
    /// after `rewind_epoch` epochs), `lt` (the initialisation) or `pt` (the dense weights of the
    /// best validation epoch).
    pub rewind: RewindTarget,
    /// Epoch of dense training to rewind to with `rewind_lt` (the paper: 8). With every target,
    /// retraining starts the lr schedule this many epochs in, as the reference code does (0: the
    /// whole schedule).
    #[schemars(range(max = 100_000))]
    pub rewind_epoch: usize,
    /// Which weights are pruned (globally, together): `conv` (every convolution weight, the
    /// paper's), `linear` or `conv+linear`. Biases and BatchNorm stay dense. (Left out of
    /// the serialised config at its default, so the paper's configs keep their cache keys.)
    #[serde(skip_serializing_if = "unlearn_api::train::is_default")]
    pub prunable: Prunable,
}

impl Default for ImpConfig {
    fn default() -> Self {
        ImpConfig {
            rounds: 14,
            rate: 0.2,
            rewind: RewindTarget::RewindLt,
            rewind_epoch: 8,
            prunable: Prunable::Conv,
        }
    }
}

impl ImpConfig {
    /// The overall sparsity after `round` rounds: `1 - (1 - rate)^round`.
    pub fn sparsity_after(&self, round: usize) -> f64 {
        1.0 - (1.0 - self.rate).powi(round as i32)
    }
}

impl MethodConfig for ImpConfig {
    fn check(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if !(self.rate > 0.0 && self.rate < 1.0) {
            issues.push(("rate".into(), format!("{} is outside (0, 1)", self.rate)));
        } else if self.rounds > i32::MAX as usize || self.sparsity_after(self.rounds) >= 1.0 {
            issues.push((
                "rounds".into(),
                format!(
                    "{} rounds of {} leave no weight (the sparsity rounds to 1)",
                    self.rounds, self.rate
                ),
            ));
        }
        if self.rounds == 0 {
            issues.push(("rounds".into(), "IMP needs at least 1 round".into()));
        }
        issues
    }
}

pub struct Imp {
    config: ImpConfig,
}

impl PruneMethod for Imp {
    type Config = ImpConfig;
    const NAME: &'static str = "IMP";
    const SUMMARY: &'static str = "iterative global magnitude pruning of conv weights (or `prunable`; 20% of the rest per round), rewind, retrain";
    fn new(config: ImpConfig) -> Self {
        Imp { config }
    }
}

impl Imp {
    pub fn config(&self) -> &ImpConfig {
        &self.config
    }

    /// [`Pruner::prune`], calling `after_round(round, mask, model)` after each round's
    /// retraining (rounds count from 1).
    pub fn prune_observed(
        &self,
        ctx: &mut PruneCtx<'_>,
        after_round: &mut dyn FnMut(usize, &Mask, &Model),
    ) -> Result<Mask, MethodError> {
        let c = &self.config;
        if c.rounds == 0 {
            return Err(MethodError::Failed("IMP needs at least 1 round".into()));
        }
        let what = match c.rewind {
            RewindTarget::RewindLt => after_epoch(c.rewind_epoch),
            RewindTarget::Lt => "the initial weights".into(),
            RewindTarget::Pt => "the dense weights of the best validation epoch".into(),
        };
        let (target, offset) = (kept_snapshot(ctx, Self::NAME, &what)?, c.rewind_epoch);
        let label = ctx.label.clone();
        let mut mask: Option<Mask> = None;
        for round in 1..=c.rounds {
            let sparsity = c.sparsity_after(round);
            let scores = magnitude_scores_of(ctx.model, c.prunable);
            let next = Mask::from_scores(&scores, mask.as_ref(), sparsity)?;
            ctx.label = format!(
                "{label} (round {round}/{}, {:.1}%)",
                c.rounds,
                100.0 * sparsity
            );
            let retrained = rewind_and_retrain(ctx, &next, target, offset);
            ctx.label = label.clone();
            retrained?;
            after_round(round, &next, ctx.model);
            mask = Some(next);
        }
        Ok(mask.expect("at least one round"))
    }
}

impl Pruner for Imp {
    fn sparsity(&self) -> f64 {
        self.config.sparsity_after(self.config.rounds)
    }

    fn rewind_point(&self) -> Option<RewindPoint> {
        Some(match self.config.rewind {
            RewindTarget::RewindLt => RewindPoint::Epoch(self.config.rewind_epoch),
            RewindTarget::Lt => RewindPoint::Epoch(0),
            RewindTarget::Pt => RewindPoint::BestValidation,
        })
    }

    fn prune(&self, ctx: &mut PruneCtx<'_>) -> Result<Mask, MethodError> {
        self.prune_observed(ctx, &mut |_, _, _| {})
    }
}

register_pruner!(Imp);

#[cfg(test)]
mod tests {
    use super::*;
    use unlearn_api::method::parse_config;

    #[test]
    fn imp_config_rules() {
        let ok = |v: serde_json::Value| parse_config::<ImpConfig>(&v).is_ok();
        assert!(ok(serde_json::json!({})));
        assert!(ok(serde_json::json!({"rewind": "pt", "rounds": 3})));
        assert!(!ok(serde_json::json!({"rate": 0.0})));
        assert!(!ok(serde_json::json!({"rounds": 0})));
        assert!(!ok(serde_json::json!({"rate": 0.99, "rounds": 1000})));
        assert!(!ok(serde_json::json!({"rewind": "init"})));
        assert!(!ok(serde_json::json!({"rate": 0.2, "spam": 1})));
        let d = ImpConfig::default();
        assert!((d.sparsity_after(14) - (1.0 - 0.8f64.powi(14))).abs() < 1e-15);
        assert!(d.sparsity_after(14) > 0.95 && d.sparsity_after(13) < 0.95);
    }

    #[test]
    fn rewind_epoch_follows_the_target() {
        let imp = |rewind| {
            Imp::new(ImpConfig {
                rewind,
                rewind_epoch: 5,
                ..Default::default()
            })
        };
        assert_eq!(
            imp(RewindTarget::RewindLt).rewind_point(),
            Some(RewindPoint::Epoch(5))
        );
        assert_eq!(
            imp(RewindTarget::Lt).rewind_point(),
            Some(RewindPoint::Epoch(0))
        );
        assert_eq!(
            imp(RewindTarget::Pt).rewind_point(),
            Some(RewindPoint::BestValidation)
        );
    }

    #[test]
    fn one_shot_configs_reject_sparsity_one() {
        assert!(parse_config::<OmpConfig>(&serde_json::json!({"sparsity": 1.0})).is_err());
        assert!(parse_config::<RandomConfig>(&serde_json::json!({"sparsity": 1.0})).is_err());
    }
}
