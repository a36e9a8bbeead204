//! Data-free pruning for unlearn: SynFlow (Tanaka et al., *Pruning neural networks without any
//! data by iteratively conserving synaptic flow*, NeurIPS 2020).
//!
//! At initialisation, `rounds` times: replace every variable by its absolute value, feed an
//! all-ones input (batch 1) in evaluation mode, take R = the sum of the outputs, score every
//! prunable weight by |w * dR/dw| and prune the lowest scores globally, so that each round keeps
//! `(1 - p)^(1/rounds)` of what remains (the last round's target is exactly `p`). The values (and
//! signs) are then restored, and the masked initialisation is trained.
//!
//! The scoring is written over a [`Network`] (a forward closure and named tensors), so it works
//! on any network, not only [`Model`]s.
//!
//! Choices, with the reference implementation (OPTML-Group/Unlearn-Sparse, `pruner`'s
//! `synflow_importance_score`) as the guide:
//! - *Every* floating-point variable is replaced by its absolute value, buffers included (the
//!   reference takes `abs_` of the whole `state_dict`, so BatchNorm running statistics and the
//!   input normalisation's mean/std too). At initialisation this changes nothing for BatchNorm
//!   (running mean 0, running variance 1), and in evaluation mode BatchNorm is then an affine map
//!   with |gamma|, |beta|, as the method needs. Integer buffers are left alone.
//! - R and the scores are computed in f64: on deep networks the all-ones signal through |w|
//!   grows geometrically with depth, and R overflows f32 (and small scores underflow).
//! - Pruned weights enter later rounds as 0 (the reference multiplies by its mask too) and stay
//!   pruned ([`Mask::from_scores`] sorts them first).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unlearn_api::mask::{Mask, Prunable};
use unlearn_api::method::{MethodConfig, MethodError, PruneCtx, PruneMethod, Pruner};
use unlearn_api::model::Model;
use unlearn_api::register_pruner;
use unlearn_api::tch::{self, Device, Kind, Tensor};

/// A network as SynFlow sees it.
pub struct Network<'a> {
    /// Outputs for a batch of inputs, in evaluation mode, reading the tensors in `variables`.
    pub forward: &'a dyn Fn(&Tensor) -> Tensor,
    /// Every variable the forward pass reads (parameters and buffers), by name. SynFlow replaces
    /// each floating-point one by its absolute value (in f64) while scoring, and restores its
    /// values and kind afterwards.
    pub variables: BTreeMap<String, Tensor>,
    /// The prunable parameters: names in `variables`, each requiring grad.
    pub prunable: Vec<String>,
    /// Shape of the all-ones input, batch dimension included (`[1, C, H, W]` for images).
    pub input: Vec<i64>,
}

impl<'a> Network<'a> {
    /// A [`Model`] in evaluation mode, its convolution weights ([`Model::prunable`]) prunable.
    pub fn of_model(model: &'a Model, forward: &'a dyn Fn(&Tensor) -> Tensor) -> Network<'a> {
        Network::of_model_selecting(model, forward, Prunable::Conv)
    }

    /// A [`Model`] in evaluation mode, the weights `prunable` selects prunable.
    pub fn of_model_selecting(
        model: &'a Model,
        forward: &'a dyn Fn(&Tensor) -> Tensor,
        prunable: Prunable,
    ) -> Network<'a> {
        let [c, h, w] = model.spec().input;
        Network {
            forward,
            variables: model.var_store().variables().into_iter().collect(),
            prunable: prunable.select(model).into_keys().collect(),
            input: vec![1, c, h, w],
        }
    }

    fn device(&self) -> Device {
        self.variables
            .values()
            .next()
            .map(|t| t.device())
            .unwrap_or(Device::Cpu)
    }

    fn prunable_tensors(&self) -> Result<Vec<(&str, &Tensor)>, MethodError> {
        if self.prunable.is_empty() {
            return Err(MethodError::Failed(
                "SynFlow: the network has no prunable parameter".into(),
            ));
        }
        self.prunable
            .iter()
            .map(|name| {
                let t = self.variables.get(name).ok_or_else(|| {
                    MethodError::Failed(format!("SynFlow: `{name}` is not a variable"))
                })?;
                if !t.requires_grad() {
                    return Err(MethodError::Failed(format!(
                        "SynFlow: `{name}` does not require grad"
                    )));
                }
                Ok((name.as_str(), t))
            })
            .collect()
    }
}

/// While alive, every floating-point variable of a network holds |its value| in f64; dropping it
/// restores the values and kinds.
struct Linearised {
    /// (variable, its original value) for every floating-point variable.
    saved: Vec<(Tensor, Tensor)>,
    /// |w| in f64 of the prunable parameters at the start, by name.
    magnitudes: BTreeMap<String, Tensor>,
}

impl Linearised {
    fn new(net: &Network<'_>) -> Result<Linearised, MethodError> {
        let _g = tch::no_grad_guard();
        let mut lin = Linearised {
            saved: Vec::new(),
            magnitudes: BTreeMap::new(),
        };
        for (name, t) in &net.variables {
            if !t.is_floating_point() {
                continue;
            }
            let original = t.detach().copy();
            let magnitude = original.f_to_kind(Kind::Double)?.f_abs()?;
            let mut var = t.shallow_clone();
            var.f_set_data(&magnitude.copy())?;
            lin.saved.push((var, original));
            if net.prunable.contains(name) {
                lin.magnitudes.insert(name.clone(), magnitude);
            }
        }
        Ok(lin)
    }
}

impl Drop for Linearised {
    fn drop(&mut self) {
        let _g = tch::no_grad_guard();
        for (var, original) in &mut self.saved {
            let _ = var.f_set_data(original);
        }
    }
}

/// One round of scoring on a linearised network: the prunable weights are set to |w0| * mask,
/// and each gets |w * dR/dw| with R the sum of the outputs for an all-ones input.
fn score_linearised(
    net: &Network<'_>,
    lin: &Linearised,
    mask: Option<&Mask>,
) -> Result<BTreeMap<String, Tensor>, MethodError> {
    let prunable = net.prunable_tensors()?;
    tch::no_grad(|| -> Result<(), MethodError> {
        for (name, t) in &prunable {
            let mut w = lin.magnitudes[*name].shallow_clone();
            if let Some(m) = mask.and_then(|m| m.get(name)) {
                w = w.f_mul(m)?;
            }
            let mut t = t.shallow_clone();
            t.f_copy_(&w)?;
        }
        Ok(())
    })?;
    let x = Tensor::f_ones(net.input.as_slice(), (Kind::Double, net.device()))?;
    let r = (net.forward)(&x).f_sum(Kind::Double)?;
    let value = r.f_double_value(&[])?;
    if !value.is_finite() {
        return Err(MethodError::Failed(format!(
            "SynFlow: the synaptic flow R = {value} is not finite in f64"
        )));
    }
    let inputs: Vec<&Tensor> = prunable.iter().map(|(_, t)| *t).collect();
    let grads = Tensor::f_run_backward(&[&r], &inputs, false, false)?;
    let _g = tch::no_grad_guard();
    prunable
        .iter()
        .zip(grads)
        .map(|((name, t), g)| Ok((name.to_string(), g.f_mul(t)?.f_abs()?)))
        .collect()
}

/// SynFlow scores |w * dR/dw| of the prunable parameters, in f64, for the network with every
/// variable replaced by its absolute value and the weights `mask` prunes set to 0. The network's
/// values and kinds are restored before this returns.
pub fn synflow_scores(
    net: &Network<'_>,
    mask: Option<&Mask>,
) -> Result<BTreeMap<String, Tensor>, MethodError> {
    let lin = Linearised::new(net)?;
    score_linearised(net, &lin, mask)
}

/// The overall sparsity after `round` of `rounds` rounds: `1 - (1 - sparsity)^(round/rounds)`,
/// exactly `sparsity` after the last.
pub fn round_sparsity(sparsity: f64, round: usize, rounds: usize) -> f64 {
    if round >= rounds {
        sparsity
    } else {
        1.0 - (1.0 - sparsity).powf(round as f64 / rounds as f64)
    }
}

/// Iterative SynFlow: `rounds` rounds of scoring and global pruning to
/// [`round_sparsity`]; exactly `round(sparsity * total)` prunable weights end up pruned. The
/// network's values and kinds are restored before this returns.
pub fn synflow_mask(net: &Network<'_>, sparsity: f64, rounds: usize) -> Result<Mask, MethodError> {
    if rounds == 0 {
        return Err(MethodError::Failed("SynFlow needs at least 1 round".into()));
    }
    let lin = Linearised::new(net)?;
    let mut mask: Option<Mask> = None;
    for round in 1..=rounds {
        let scores = score_linearised(net, &lin, mask.as_ref())?;
        let next = Mask::from_scores(
            &scores,
            mask.as_ref(),
            round_sparsity(sparsity, round, rounds),
        )?;
        mask = Some(next);
    }
    drop(lin);
    Ok(mask.expect("at least one round"))
}

/// [`synflow_mask`] for a [`Model`] (evaluation mode; its convolution weights are prunable).
pub fn synflow_mask_for_model(
    model: &Model,
    sparsity: f64,
    rounds: usize,
) -> Result<Mask, MethodError> {
    synflow_mask_selecting(model, Prunable::Conv, sparsity, rounds)
}

/// [`synflow_mask`] for a [`Model`] (evaluation mode), pruning the weights `prunable` selects.
pub fn synflow_mask_selecting(
    model: &Model,
    prunable: Prunable,
    sparsity: f64,
    rounds: usize,
) -> Result<Mask, MethodError> {
    let forward = |x: &Tensor| model.forward_t(x, false);
    synflow_mask(
        &Network::of_model_selecting(model, &forward, prunable),
        sparsity,
        rounds,
    )
}

/// SynFlow: prune a fresh initialisation of the architecture by iterative synaptic flow (no
/// data), then train the sparse network with the pipeline's schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SynFlowConfig {
    /// Share of the prunable weights to prune.
    #[schemars(range(min = 0.0, max = 0.999))]
    pub sparsity: f64,
    /// Rounds of scoring and pruning (the paper and the reference code: 100).
    #[schemars(range(min = 1, max = 100_000))]
    pub rounds: usize,
    /// Which weights are pruned (globally, together): `conv` (every convolution weight, the
    /// paper's), `linear` or `conv+linear`. Biases and BatchNorm stay dense. (Left out of
    /// the serialised config at its default, so the paper's configs keep their cache keys.)
    #[serde(skip_serializing_if = "unlearn_api::train::is_default")]
    pub prunable: Prunable,
}

impl Default for SynFlowConfig {
    fn default() -> Self {
        SynFlowConfig {
            sparsity: 0.95,
            rounds: 100,
            prunable: Prunable::Conv,
        }
    }
}

impl MethodConfig for SynFlowConfig {
    fn check(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if !(0.0..1.0).contains(&self.sparsity) {
            issues.push((
                "sparsity".into(),
                format!("{} is outside [0, 1)", self.sparsity),
            ));
        }
        if self.rounds == 0 {
            issues.push(("rounds".into(), "SynFlow needs at least 1 round".into()));
        }
        issues
    }
}

pub struct SynFlow {
    config: SynFlowConfig,
}

impl PruneMethod for SynFlow {
    type Config = SynFlowConfig;
    const NAME: &'static str = "SynFlow";
    const SUMMARY: &'static str = "data-free iterative synaptic-flow pruning of conv weights (or `prunable`) at initialisation, then training";
    fn new(config: SynFlowConfig) -> Self {
        SynFlow { config }
    }
}

impl Pruner for SynFlow {
    fn sparsity(&self) -> f64 {
        self.config.sparsity
    }

    fn prune(&self, ctx: &mut PruneCtx<'_>) -> Result<Mask, MethodError> {
        let spec = ctx.model.spec().clone();
        let device = ctx.model.device();
        // Scored on a copy of the initialisation; the model that is trained is made afterwards
        // with the same seed (so the same weights), leaving libtorch's generator as a fresh
        // initialisation leaves it.
        let mask = {
            let scratch = Model::new(spec.clone(), device, ctx.seed)?;
            synflow_mask_selecting(
                &scratch,
                self.config.prunable,
                self.config.sparsity,
                self.config.rounds,
            )?
        };
        *ctx.model = Model::new(spec, device, ctx.seed)?;
        mask.apply(ctx.model);
        ctx.train(&mask, 0)?;
        Ok(mask)
    }
}

register_pruner!(SynFlow);
