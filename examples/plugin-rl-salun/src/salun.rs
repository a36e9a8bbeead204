//! `SalUn`: random labelling restricted to the weights salient to the forget loss.

use std::collections::BTreeMap;

use unlearn_api::grad::{Net, summed_grad};
use unlearn_api::mask::Mask;
use unlearn_api::method::{MethodError, UnlearnCtx, UnlearnMethod, Unlearner};
use unlearn_api::model::Model;
use unlearn_api::sgd_config;
use unlearn_api::tch::{Kind, Tensor};
use unlearn_api::train::{Batch, Objective, Stream, cross_entropy};

use crate::rl::random_label_stream;

sgd_config!(
    /// Saliency unlearning (SalUn): random labelling (as `RL`) where only the salient weights
    /// move. Before training, the saliency of every trainable weight is |gradient of the
    /// cross-entropy summed over the forget set, under its true labels| at the original weights
    /// (eval mode; computed `batch_size` samples at a time). The `share` of the weights free to
    /// move (every trainable weight of a dense model, the unpruned ones of a sparse model) with
    /// the largest saliency, chosen globally over every parameter (ties go to the earlier
    /// position in name order), form a 0/1 saliency mask, and every gradient is multiplied by it
    /// before each step. As in the SalUn reference code, the
    /// gradients are masked, not the updates: with weight decay or momentum (the defaults 5e-4,
    /// 0.9) the non-salient weights still shrink by weight decay (and momentum carries that
    /// along); with both 0 they do not change at all. A sparse model's pruning mask is enforced
    /// as usual on top.
    SalUnConfig { epochs: 10, lr: 0.01, milestones: vec![] }
    extra {
        /// Share of the weights free to move (counted globally over every trainable parameter,
        /// BatchNorm and biases included; pruned weights are not free, so on a sparse model it is
        /// a share of the unpruned ones) that may move: exactly round(share * free) weights with
        /// the largest saliency. 0 freezes every gradient, 1 is plain RL. The SalUn paper uses
        /// 0.5.
        #[schemars(range(min = 0.0, max = 1.0))]
        share: f64 = 0.5,
    }
    rules(c) {
        (!(0.0..=1.0).contains(&c.share)).then(|| {
            ("share".to_string(), format!("share ({}) must lie in [0, 1]", c.share))
        })
    }
);

/// SalUn's second mask: a 0/1 tensor per trainable parameter (by name, shaped like it, on its
/// device), 1 where the weight may move. Unlike core's pruning [`Mask`] (convolution weights
/// only, zeros forced into the weights), it covers every trainable parameter and only ever
/// multiplies gradients.
#[derive(Debug)]
pub struct SaliencyMask {
    masks: BTreeMap<String, Tensor>,
}

impl SaliencyMask {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.masks.get(name)
    }

    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.masks
    }

    /// Number of salient (1) entries.
    pub fn kept(&self) -> i64 {
        self.masks
            .values()
            .map(|m| m.sum(Kind::Int64).int64_value(&[]))
            .sum()
    }

    /// Number of entries: every trainable weight.
    pub fn total(&self) -> i64 {
        self.masks.values().map(|m| m.numel() as i64).sum()
    }

    /// `grad *= m` for every parameter of `model` this mask covers (undefined gradients are
    /// left alone).
    pub fn apply_to_grads(&self, model: &Model) {
        let _g = unlearn_api::tch::no_grad_guard();
        for (name, w) in model.parameters() {
            if let Some(m) = self.masks.get(&name) {
                let mut g = w.grad();
                if g.defined() {
                    g *= m;
                }
            }
        }
    }
}

/// SalUn's saliency mask for `model` (with the pruning `mask` of a sparse model): `s = |sum
/// over the rows of stream of grad CE|` w.r.t. every trainable parameter, in eval mode at the
/// current weights (core's [`summed_grad`], `batch_size` rows at a time); keeps exactly
/// `round(share * free)` entries with the largest `s` over all parameters at once, where `free`
/// counts the weights the pruning mask leaves (all of them when dense): pruned weights are never
/// salient, so the share means the same on a 99%-sparse model as on a dense one. Ties break by
/// position: parameters in name order, each row-major, the earlier entry first.
pub fn saliency_mask(
    model: &Model,
    mask: Option<&Mask>,
    stream: &Stream<'_>,
    share: f64,
    batch_size: usize,
) -> Result<SaliencyMask, MethodError> {
    if !(0.0..=1.0).contains(&share) {
        return Err(MethodError::Failed(format!(
            "saliency share {share} is outside [0, 1]"
        )));
    }
    let net = Net::eval(model).with_mask(mask);
    let saliency = summed_grad(&net, stream, batch_size)?.f_abs()?;
    let _g = unlearn_api::tch::no_grad_guard();
    if saliency.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
        return Err(MethodError::Failed(
            "the forget-set gradient is not finite: no saliency map".into(),
        ));
    }
    let total = saliency.size()[0];
    // 1 where a weight is free to move, 0 where the pruning mask holds it at 0.
    let free: Vec<Tensor> = net
        .names()
        .iter()
        .zip(net.params())
        .map(|(name, p)| match mask.and_then(|m| m.get(name)) {
            Some(m) => m.f_to_kind(Kind::Float),
            None => p.f_ones_like(),
        })
        .collect::<Result<_, _>>()?;
    let free = net.flatten(&free)?;
    let n_free = free.f_sum(Kind::Int64)?.int64_value(&[]);
    let k = (share * n_free as f64).round() as i64;
    // Pruned weights rank below every free one (-1 < any |gradient|).
    let ranked = saliency
        .f_mul(&free)?
        .f_sub(&free.f_neg()?.f_add_scalar(1.0)?)?;
    // Stable and descending: equal saliencies keep position order, the earlier one first.
    let order = ranked.f_argsort_stable(true, 0, true)?;
    let keep = Tensor::f_zeros([total], (Kind::Float, saliency.device()))?.f_index_fill(
        0,
        &order.f_narrow(0, 0, k)?,
        1.0,
    )?;
    let masks = net
        .names()
        .iter()
        .cloned()
        .zip(net.unflatten(&keep)?)
        .collect();
    Ok(SaliencyMask { masks })
}

/// Cross-entropy on the stream's labels, with every gradient multiplied by a saliency mask
/// before the step (core's loop has already zeroed the gradients of pruned weights, and
/// re-applies the pruning mask after the step).
pub struct SalientCe<'m> {
    pub mask: &'m SaliencyMask,
}

impl Objective for SalientCe<'_> {
    fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, unlearn_api::tch::TchError> {
        cross_entropy(&model.forward_t(&batch.x, true), &batch.y)
    }

    fn before_step(&mut self, model: &Model) {
        self.mask.apply_to_grads(model);
    }
}

/// Saliency unlearning (Fan et al., *SalUn*, ICLR 2024).
pub struct SalUn {
    config: SalUnConfig,
}

impl UnlearnMethod for SalUn {
    type Config = SalUnConfig;
    const NAME: &'static str = "SalUn";
    const SUMMARY: &'static str = "saliency unlearning: random labelling that moves only the weights most salient to the forget loss";
    fn new(config: SalUnConfig) -> Self {
        SalUn { config }
    }
}

impl SalUn {
    /// The saliency mask this configuration gives in `ctx` (over the forget set, true labels,
    /// at the context's current weights).
    pub fn saliency(&self, ctx: &UnlearnCtx<'_>) -> Result<SaliencyMask, MethodError> {
        saliency_mask(
            ctx.model,
            ctx.mask,
            &ctx.forget_stream(),
            self.config.share,
            self.config.batch_size,
        )
    }
}

impl Unlearner for SalUn {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        let saliency = self.saliency(ctx)?;
        let stream = random_label_stream(ctx)?;
        ctx.train(
            &self.config.schedule(),
            &stream,
            &mut SalientCe { mask: &saliency },
        )?;
        Ok(())
    }
}
