//! Gradient tools for one-shot methods (FF, IU, saliency maps, pruning scores): what they use
//! instead of the training loop.
//!
//! Everything works on a [`Net`]: a forward pass plus the trainable parameters it reads, in a fixed
//! order ([`Net::eval`] takes a [`Model`] in eval mode with its parameters in
//! [`Model::parameters`] order, sorted by name). Gradients come from `torch.autograd.grad`-style
//! calls ([`Tensor::f_run_backward`]), so they never touch the parameters' `.grad` fields and
//! never interfere with an optimizer. Rows are read from a [`Stream`] in its order, in batches,
//! without shuffling, with the stream's augmentation (drawn from a generator seeded by the
//! stream's `augment_seed`): the reference code computes FF's and IU's gradients on its retain
//! and forget loaders, which keep the training transform. [`GradInputs`] lets a method choose.
//!
//! A net built [`Net::with_mask`] treats pruned weights as constants, as the training loop does
//! (it masks gradients before each step): their gradients are 0 in every tool here.

use tch::{Kind, TchError, Tensor};

use crate::mask::Mask;
use crate::model::Model;
use crate::train::{Stream, cross_entropy};

/// A differentiable function of named parameters.
pub struct Net<'a> {
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Per parameter, the 0/1 mask its gradients are multiplied by.
    masks: Vec<Option<Tensor>>,
    forward: Box<dyn Fn(&Tensor) -> Tensor + 'a>,
}

impl std::fmt::Debug for Net<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("names", &self.names).finish()
    }
}

impl<'a> Net<'a> {
    /// `model` in eval mode (BatchNorm reads its running statistics and does not update them),
    /// differentiated w.r.t. its trainable parameters in [`Model::parameters`] order.
    pub fn eval(model: &'a Model) -> Net<'a> {
        Net::new(model.parameters().into_iter().collect(), move |x| {
            model.forward_t(x, false)
        })
    }

    /// Any function of `params` (tensors that require grad; shallow clones share storage, so
    /// updates through the net change the owner's values).
    pub fn new(params: Vec<(String, Tensor)>, forward: impl Fn(&Tensor) -> Tensor + 'a) -> Net<'a> {
        let (names, params): (Vec<String>, Vec<Tensor>) = params.into_iter().unzip();
        Net {
            masks: params.iter().map(|_| None).collect(),
            names,
            params,
            forward: Box::new(forward),
        }
    }

    /// The same net with pruned weights held constant: gradients of the parameters `mask`
    /// covers are multiplied by it (so they are exactly 0 at pruned positions).
    pub fn with_mask(mut self, mask: Option<&Mask>) -> Net<'a> {
        self.masks = self
            .names
            .iter()
            .map(|n| mask.and_then(|m| m.get(n)).map(|t| t.shallow_clone()))
            .collect();
        self
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Number of scalar parameters (the length of a flat gradient).
    pub fn numel(&self) -> i64 {
        self.params.iter().map(|p| p.numel() as i64).sum()
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        (self.forward)(x)
    }

    /// Gradients of the scalar `loss` w.r.t. every parameter, in order (zeros for a parameter
    /// the loss does not depend on; masked by [`Net::with_mask`]'s mask). `keep_graph` keeps the
    /// graph for another call.
    pub fn grads(&self, loss: &Tensor, keep_graph: bool) -> Result<Vec<Tensor>, TchError> {
        let grads = Tensor::f_run_backward(&[loss], &self.params, keep_graph, false)?;
        grads
            .into_iter()
            .zip(&self.params)
            .zip(&self.masks)
            .map(|((g, p), m)| match (g.defined(), m) {
                (false, _) => p.f_zeros_like(),
                (true, Some(m)) => g.f_mul(m),
                (true, None) => Ok(g),
            })
            .collect()
    }

    /// [`Net::grads`] as one flat vector (parameters concatenated in order, each row-major).
    pub fn flat_grad(&self, loss: &Tensor, keep_graph: bool) -> Result<Tensor, TchError> {
        self.flatten(&self.grads(loss, keep_graph)?)
    }

    /// Concatenates per-parameter tensors (shaped like the parameters) into one flat vector.
    pub fn flatten(&self, per_param: &[Tensor]) -> Result<Tensor, TchError> {
        if per_param.len() != self.params.len() {
            return Err(TchError::Shape(format!(
                "flatten: {} tensors for {} parameters",
                per_param.len(),
                self.params.len()
            )));
        }
        let mut flat = Vec::with_capacity(per_param.len());
        for ((t, p), name) in per_param.iter().zip(&self.params).zip(&self.names) {
            if t.size() != p.size() {
                return Err(TchError::Shape(format!(
                    "flatten: `{name}` has shape {:?}, the tensor {:?}",
                    p.size(),
                    t.size()
                )));
            }
            flat.push(t.f_reshape([-1])?);
        }
        Tensor::f_cat(&flat, 0)
    }

    /// Splits a flat vector back into tensors shaped like the parameters, in order.
    pub fn unflatten(&self, flat: &Tensor) -> Result<Vec<Tensor>, TchError> {
        let n = self.numel();
        if flat.size() != [n] {
            return Err(TchError::Shape(format!(
                "unflatten: a vector of {n} values expected, got shape {:?}",
                flat.size()
            )));
        }
        let mut offset = 0;
        let mut out = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let len = p.numel() as i64;
            out.push(flat.f_narrow(0, offset, len)?.f_view(p.size().as_slice())?);
            offset += len;
        }
        Ok(out)
    }
}

/// Which inputs a one-shot method computes its gradients on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GradInputs {
    /// With the data set's training-time augmentation (random crop and flip where the data set
    /// has them), as the reference code does: its retain and forget loaders keep the training
    /// transform during unlearning.
    #[default]
    Augmented,
    /// The clean images, as evaluation sees them.
    Clean,
}

impl GradInputs {
    /// `stream` with its augmentation kept or removed.
    pub fn apply<'a>(self, mut stream: Stream<'a>) -> Stream<'a> {
        if self == GradInputs::Clean {
            stream.augment = crate::data::Augment::NONE;
        }
        stream
    }
}

/// The `purpose` (see [`crate::rng::rng`]) of the generator that augments the gradient tools'
/// inputs, seeded by the stream's `augment_seed`; each call of [`batches`] starts it afresh.
pub const AUGMENT_PURPOSE: &str = "gradient inputs";

/// The rows of `stream` in order, `batch_size` at a time: `(inputs in [0, 1], labels)`, the
/// inputs augmented as `stream.augment` says.
pub fn batches<'s>(
    stream: &'s Stream<'_>,
    batch_size: usize,
) -> impl Iterator<Item = Result<(Tensor, Tensor), TchError>> + 's {
    let n = stream.len() as i64;
    let bs = batch_size.max(1) as i64;
    let mut rng = crate::rng::rng(stream.augment_seed, AUGMENT_PURPOSE);
    (0..n).step_by(bs as usize).map(move |start| {
        let len = bs.min(n - start);
        let rows = stream.rows.f_narrow(0, start, len)?;
        let x = stream
            .augment
            .apply(&stream.data.batch_images(&rows), &mut rng);
        let y = stream.labels.f_narrow(0, start, len)?;
        Ok((x, y))
    })
}

/// The per-class Fisher accumulation of Fisher forgetting (step 1 of FF in docs/reference.md).
#[derive(Debug)]
pub struct ClassFisher {
    /// `sum over batches and classes y of mean_batch(p_y) * grad_y^2`, divided by the number of
    /// batches; one tensor per parameter, in the net's order.
    pub per_param: Vec<Tensor>,
    pub batches: usize,
    /// Backward passes run: one per (batch, class).
    pub backward_passes: usize,
}

/// Over the rows of `stream` in batches of `batch_size`: for every class `y`, the gradient of
/// `CE(outputs, all-y targets)` (mean over the batch), squared and weighted by the batch mean of
/// the softmax probability of `y`; summed over classes and averaged over batches. One forward
/// pass per batch and one backward pass per (batch, class).
pub fn class_fisher(
    net: &Net<'_>,
    stream: &Stream<'_>,
    batch_size: usize,
) -> Result<ClassFisher, TchError> {
    let mut acc: Vec<Tensor> = net
        .params()
        .iter()
        .map(|p| p.f_zeros_like())
        .collect::<Result<_, _>>()?;
    let mut n_batches = 0;
    let mut backward_passes = 0;
    for batch in batches(stream, batch_size) {
        let (x, _) = batch?;
        let logits = net.forward(&x);
        let (b, classes) = match logits.size().as_slice() {
            &[b, c] => (b, c),
            s => {
                return Err(TchError::Shape(format!(
                    "class_fisher: logits of shape {s:?}, expected [batch, classes]"
                )));
            }
        };
        let weight =
            logits
                .f_softmax(-1, Kind::Float)?
                .detach()
                .f_mean_dim(0, false, Kind::Float)?;
        for y in 0..classes {
            let target = Tensor::f_full([b], y, (Kind::Int64, logits.device()))?;
            let loss = cross_entropy(&logits, &target)?;
            let grads = net.grads(&loss, y + 1 < classes)?;
            backward_passes += 1;
            let w = weight.f_get(y)?;
            let _g = tch::no_grad_guard();
            for (a, g) in acc.iter_mut().zip(&grads) {
                let _ = a.f_add_(&g.f_square()?.f_mul(&w)?)?;
            }
        }
        n_batches += 1;
    }
    if n_batches > 0 {
        let _g = tch::no_grad_guard();
        for a in &mut acc {
            let _ = a.f_div_scalar_(n_batches as f64)?;
        }
    }
    Ok(ClassFisher {
        per_param: acc,
        batches: n_batches,
        backward_passes,
    })
}

/// `sum over batches of grad(mean CE of the batch) * batch length` over the rows of `stream`
/// (the sum of the per-sample gradients, computed a batch at a time), as a flat vector.
/// An empty stream gives zeros.
pub fn summed_grad(
    net: &Net<'_>,
    stream: &Stream<'_>,
    batch_size: usize,
) -> Result<Tensor, TchError> {
    let device = net
        .params()
        .first()
        .map(|p| p.device())
        .unwrap_or(tch::Device::Cpu);
    let mut sum = Tensor::f_zeros([net.numel()], (Kind::Float, device))?;
    for batch in batches(stream, batch_size) {
        let (x, y) = batch?;
        let len = y.size()[0] as f64;
        let loss = cross_entropy(&net.forward(&x), &y)?;
        let g = net.flat_grad(&loss, false)?;
        let _g = tch::no_grad_guard();
        let _ = sum.f_add_(&g.f_mul_scalar(len)?)?;
    }
    Ok(sum)
}

/// Calls `f(i, g_i)` with the flat gradient of the CE of each of the first `cap` rows of
/// `stream`, one row (one backward pass) at a time, so that only one gradient is held at once.
/// Returns the number of rows visited.
pub fn for_each_sample_grad<E: From<TchError>>(
    net: &Net<'_>,
    stream: &Stream<'_>,
    cap: usize,
    mut f: impl FnMut(usize, &Tensor) -> Result<(), E>,
) -> Result<usize, E> {
    let n = stream.len().min(cap);
    for (i, batch) in batches(stream, 1).take(n).enumerate() {
        let (x, y) = batch?;
        let loss = cross_entropy(&net.forward(&x), &y)?;
        let g = net.flat_grad(&loss, false)?;
        f(i, &g)?;
    }
    Ok(n)
}

pub use crate::rng::normal_like;

/// `w += delta` for every parameter (deltas shaped like the parameters, in order), then
/// `w *= mask` for the masked ones, so pruned weights are exactly 0 afterwards.
pub fn add_masked_(net: &Net<'_>, delta: &[Tensor], mask: Option<&Mask>) -> Result<(), TchError> {
    update_masked_(net, delta, mask, |w, d| w.f_add_(d).map(|_| ()))
}

/// [`add_masked_`] with the deltas as one flat vector.
pub fn add_flat_masked_(
    net: &Net<'_>,
    delta: &Tensor,
    mask: Option<&Mask>,
) -> Result<(), TchError> {
    add_masked_(net, &net.unflatten(delta)?, mask)
}

/// `w = value` for every parameter (in order), then `w *= mask` for the masked ones.
pub fn assign_masked_(
    net: &Net<'_>,
    values: &[Tensor],
    mask: Option<&Mask>,
) -> Result<(), TchError> {
    update_masked_(net, values, mask, |w, v| w.f_copy_(v))
}

fn update_masked_(
    net: &Net<'_>,
    values: &[Tensor],
    mask: Option<&Mask>,
    op: impl Fn(&mut Tensor, &Tensor) -> Result<(), TchError>,
) -> Result<(), TchError> {
    if values.len() != net.params().len() {
        return Err(TchError::Shape(format!(
            "update: {} tensors for {} parameters",
            values.len(),
            net.params().len()
        )));
    }
    for ((name, p), v) in net.names().iter().zip(net.params()).zip(values) {
        if v.size() != p.size() {
            return Err(TchError::Shape(format!(
                "update: `{name}` has shape {:?}, the update {:?}",
                p.size(),
                v.size()
            )));
        }
    }
    let _g = tch::no_grad_guard();
    for ((name, p), v) in net.names().iter().zip(net.params()).zip(values) {
        let mut w = p.shallow_clone();
        let v = v.f_to_kind(w.kind())?.f_to_device(w.device())?;
        op(&mut w, &v)?;
        if let Some(m) = mask.and_then(|m| m.get(name)) {
            let _ = w.f_mul_(m)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tch::Device;
    use tch::nn::{self, Module};

    use super::*;
    use crate::data::{Dataset, SyntheticConfig, synthetic};
    use crate::mask::{Mask, magnitude_scores};
    use crate::model::{Arch, Model, ModelSpec};

    const FEATURES: usize = 4;
    const CLASSES: usize = 3;

    /// Seven 2x2 images (4 features in [0, 1] after /16) in 3 classes.
    fn tiny_data() -> Dataset {
        let pixels: Vec<u8> = (0..7 * FEATURES)
            .map(|i| ((i * 7 + 3) % 17) as u8)
            .collect();
        let labels = [0i64, 2, 1, 1, 0, 2, 2];
        Dataset::from_pixels("tiny", &pixels, [1, 2, 2], &labels, CLASSES, 16.0)
    }

    /// logits = W x + b on the flattened image, with fixed weights.
    struct Linear {
        _vs: nn::VarStore,
        lin: nn::Linear,
        params: Vec<(String, Tensor)>,
    }

    fn linear() -> Linear {
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(
            vs.root() / "fc",
            FEATURES as i64,
            CLASSES as i64,
            Default::default(),
        );
        tch::no_grad(|| {
            let w: Vec<f32> = (0..CLASSES * FEATURES)
                .map(|i| ((i as f32) * 0.37).sin())
                .collect();
            lin.ws
                .shallow_clone()
                .copy_(&Tensor::from_slice(&w).view([CLASSES as i64, FEATURES as i64]));
            lin.bs
                .as_ref()
                .unwrap()
                .shallow_clone()
                .copy_(&Tensor::from_slice(&[0.1f32, -0.2, 0.3]));
        });
        let params: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        Linear {
            params: params.into_iter().collect(),
            _vs: vs,
            lin,
        }
    }

    impl Linear {
        fn net(&self) -> Net<'_> {
            let params = self
                .params
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect();
            Net::new(params, move |x| self.lin.forward(&x.flatten(1, -1)))
        }

        fn w(&self) -> Vec<Vec<f64>> {
            let w = Vec::<f64>::try_from(self.lin.ws.to_kind(Kind::Double).flatten(0, -1)).unwrap();
            w.chunks(FEATURES).map(|r| r.to_vec()).collect()
        }

        fn b(&self) -> Vec<f64> {
            Vec::<f64>::try_from(self.lin.bs.as_ref().unwrap().to_kind(Kind::Double)).unwrap()
        }

        fn probs(&self, x: &[f64]) -> Vec<f64> {
            let (w, b) = (self.w(), self.b());
            let z: Vec<f64> = (0..CLASSES)
                .map(|c| b[c] + (0..FEATURES).map(|j| w[c][j] * x[j]).sum::<f64>())
                .collect();
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        }

        /// Closed form of d CE(Wx + b, t) / d(b, W), flat in name order (fc.bias, fc.weight):
        /// db = p - e_t, dW = (p - e_t) x^T.
        fn sample_grad(&self, x: &[f64], t: usize) -> Vec<f64> {
            let p = self.probs(x);
            let d: Vec<f64> = (0..CLASSES)
                .map(|c| p[c] - if c == t { 1.0 } else { 0.0 })
                .collect();
            let mut g = d.clone();
            for dc in &d {
                for xj in x {
                    g.push(dc * xj);
                }
            }
            g
        }
    }

    fn rows_f64(d: &Dataset) -> Vec<Vec<f64>> {
        let v = Vec::<f64>::try_from(d.images.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        v.chunks(FEATURES)
            .map(|r| r.iter().map(|p| p / 16.0).collect())
            .collect()
    }

    fn vec_of(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    fn assert_close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "entry {i}: {x} vs {y}\n{a:?}\n{b:?}"
            );
        }
    }

    #[test]
    fn flatten_and_unflatten_round_trip_in_parameter_order() {
        let l = linear();
        let net = l.net();
        assert_eq!(net.names(), ["fc.bias", "fc.weight"]);
        assert_eq!(net.numel(), (CLASSES + CLASSES * FEATURES) as i64);
        let flat = Tensor::arange(net.numel(), (Kind::Float, Device::Cpu));
        let parts = net.unflatten(&flat).unwrap();
        assert_eq!(parts[0].size(), [3]);
        assert_eq!(parts[1].size(), [3, 4]);
        assert_eq!(vec_of(&parts[0]), [0.0, 1.0, 2.0]);
        assert_eq!(parts[1].double_value(&[1, 0]), 7.0);
        assert!(net.flatten(&parts).unwrap().equal(&flat));
        assert!(net.unflatten(&flat.narrow(0, 0, 5)).is_err());
        assert!(net.flatten(&parts[..1]).is_err());
        assert!(
            net.flatten(&[parts[1].shallow_clone(), parts[0].shallow_clone()])
                .is_err()
        );
    }

    #[test]
    fn flat_grad_matches_the_closed_form() {
        let l = linear();
        let net = l.net();
        let d = tiny_data();
        let xs = rows_f64(&d);
        let labels = d.labels_vec();
        let x = d.batch_images(&Tensor::arange(7, (Kind::Int64, Device::Cpu)));
        let loss = cross_entropy(&net.forward(&x), &d.labels).unwrap();
        let g = vec_of(&net.flat_grad(&loss, false).unwrap());
        let mut want = vec![0.0; g.len()];
        for (x, &t) in xs.iter().zip(&labels) {
            for (w, s) in want.iter_mut().zip(l.sample_grad(x, t as usize)) {
                *w += s / 7.0;
            }
        }
        assert_close(&g, &want, 1e-5);
    }

    #[test]
    fn class_fisher_matches_the_closed_form_and_is_batched() {
        let l = linear();
        let net = l.net();
        let d = tiny_data();
        let xs = rows_f64(&d);
        let rows: Vec<usize> = (0..7).collect();
        let stream = Stream::new(&d, &rows);
        let f = class_fisher(&net, &stream, 3).unwrap();
        // batches [0, 3), [3, 6), [6, 7); one backward pass per (batch, class)
        assert_eq!(f.batches, 3);
        assert_eq!(f.backward_passes, 3 * CLASSES);
        let mut want = vec![0.0; net.numel() as usize];
        for batch in [0..3, 3..6, 6..7] {
            let n = batch.len() as f64;
            for y in 0..CLASSES {
                let mut g = vec![0.0; want.len()];
                let mut p_y = 0.0;
                for i in batch.clone() {
                    p_y += l.probs(&xs[i])[y] / n;
                    for (gk, s) in g.iter_mut().zip(l.sample_grad(&xs[i], y)) {
                        *gk += s / n;
                    }
                }
                for (w, gk) in want.iter_mut().zip(&g) {
                    *w += p_y * gk * gk;
                }
            }
        }
        for w in &mut want {
            *w /= 3.0;
        }
        assert_close(&vec_of(&net.flatten(&f.per_param).unwrap()), &want, 1e-5);
    }

    #[test]
    fn summed_grad_is_the_sum_of_per_sample_gradients_for_any_batch_size() {
        let l = linear();
        let net = l.net();
        let d = tiny_data();
        let xs = rows_f64(&d);
        let labels = d.labels_vec();
        let rows = [1usize, 2, 4, 5, 6];
        let stream = Stream::new(&d, &rows);
        let mut want = vec![0.0; net.numel() as usize];
        for &i in &rows {
            for (w, s) in want
                .iter_mut()
                .zip(l.sample_grad(&xs[i], labels[i] as usize))
            {
                *w += s;
            }
        }
        for bs in [1, 2, 5, 64] {
            let g = summed_grad(&net, &stream, bs).unwrap();
            assert_close(&vec_of(&g), &want, 1e-5);
        }
        let empty = Stream::new(&d, &[]);
        let z = summed_grad(&net, &empty, 4).unwrap();
        assert_eq!(z.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    /// With an augmenting data set, every tool reads the batches augmented by a generator seeded
    /// from the stream (batch by batch, in order); [`GradInputs::Clean`] reads the clean images.
    /// Expected values: the closed-form per-sample gradients of the augmented (or clean) pixels.
    #[test]
    fn gradients_follow_the_streams_augmentation() {
        let l = linear();
        let net = l.net();
        let mut d = tiny_data();
        d.augment = crate::data::Augment {
            crop_padding: 1,
            flip: true,
        };
        let labels = d.labels_vec();
        let rows = [0usize, 1, 3, 4, 6];
        let stream = Stream {
            augment_seed: 9,
            ..Stream::new(&d, &rows)
        };
        let sum_of = |xs: &[Vec<f64>]| {
            let mut want = vec![0.0; net.numel() as usize];
            for (x, &i) in xs.iter().zip(&rows) {
                for (w, s) in want.iter_mut().zip(l.sample_grad(x, labels[i] as usize)) {
                    *w += s;
                }
            }
            want
        };
        // The augmented inputs, batch by batch (2 rows, 2 rows, 1 row).
        let mut rng = crate::rng::rng(9, AUGMENT_PURPOSE);
        let mut augmented = Vec::new();
        for chunk in rows.chunks(2) {
            let x = d.batch_images(&crate::data::index_tensor(chunk, Device::Cpu));
            let a = d.augment.apply(&x, &mut rng);
            augmented.extend(vec_of(&a).chunks(FEATURES).map(|r| r.to_vec()));
        }
        let all = rows_f64(&d);
        let clean: Vec<Vec<f64>> = rows.iter().map(|&i| all[i].clone()).collect();
        assert_ne!(augmented, clean, "the draws change some inputs");
        let g = summed_grad(&net, &stream, 2).unwrap();
        assert_close(&vec_of(&g), &sum_of(&augmented), 1e-5);
        let clean_stream = GradInputs::Clean.apply(Stream {
            augment_seed: 9,
            ..Stream::new(&d, &rows)
        });
        let g = summed_grad(&net, &clean_stream, 2).unwrap();
        assert_close(&vec_of(&g), &sum_of(&clean), 1e-5);
        // Augmented is the default; another seed draws other inputs.
        assert_eq!(GradInputs::default(), GradInputs::Augmented);
        let other = Stream {
            augment_seed: 10,
            ..Stream::new(&d, &rows)
        };
        let g10 = summed_grad(&net, &other, 2).unwrap();
        assert!(!g10.allclose(&summed_grad(&net, &stream, 2).unwrap(), 1e-6, 1e-6, false));
        // Per-sample gradients: batches of one, from the same generator.
        let mut rng = crate::rng::rng(9, AUGMENT_PURPOSE);
        let mut seen = 0;
        for_each_sample_grad::<TchError>(&net, &stream, 10, |k, g| {
            let i = rows[k];
            let x = d.batch_images(&crate::data::index_tensor(&[i], Device::Cpu));
            let a = vec_of(&d.augment.apply(&x, &mut rng));
            assert_close(&vec_of(g), &l.sample_grad(&a, labels[i] as usize), 1e-5);
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, rows.len());
    }

    #[test]
    fn per_sample_grads_come_one_at_a_time_up_to_the_cap() {
        let l = linear();
        let net = l.net();
        let d = tiny_data();
        let xs = rows_f64(&d);
        let labels = d.labels_vec();
        let rows = [6usize, 0, 3, 2, 5];
        let stream = Stream::new(&d, &rows);
        let mut seen = vec![];
        let n = for_each_sample_grad::<TchError>(&net, &stream, 3, |i, g| {
            let r = rows[i];
            assert_close(&vec_of(g), &l.sample_grad(&xs[r], labels[r] as usize), 1e-5);
            seen.push(i);
            Ok(())
        })
        .unwrap();
        assert_eq!((n, seen), (3, vec![0, 1, 2]));
        let all = for_each_sample_grad::<TchError>(&net, &stream, 1000, |_, _| Ok(())).unwrap();
        assert_eq!(all, 5);
        // an error from the callback stops the walk
        let mut calls = 0;
        let e = for_each_sample_grad(&net, &stream, 10, |_, _| {
            calls += 1;
            Err(TchError::Kind("stop".into()))
        });
        assert!(e.is_err() && calls == 1);
    }

    #[test]
    fn masked_updates_keep_pruned_weights_exactly_zero() {
        let l = linear();
        let net = l.net();
        let w0 = vec_of(&l.lin.ws);
        let b0 = l.b();
        let mut scores = BTreeMap::new();
        scores.insert("fc.weight".to_string(), l.lin.ws.abs());
        let mask = Mask::from_scores(&scores, None, 0.5).unwrap();
        let keep = vec_of(mask.get("fc.weight").unwrap());
        assert_eq!(keep.iter().filter(|&&k| k == 0.0).count(), 6);
        let delta = Tensor::full([net.numel()], 0.25, (Kind::Float, Device::Cpu));
        add_flat_masked_(&net, &delta, Some(&mask)).unwrap();
        let w1 = vec_of(&l.lin.ws);
        for ((w0, w1), k) in w0.iter().zip(&w1).zip(&keep) {
            if *k == 0.0 {
                assert_eq!(*w1, 0.0);
            } else {
                assert!((w1 - (w0 + 0.25)).abs() < 1e-6);
            }
        }
        assert_close(
            &l.b(),
            &b0.iter().map(|b| b + 0.25).collect::<Vec<_>>(),
            1e-6,
        );
        // assignment: unmasked parameters take the values exactly
        let values = vec![
            Tensor::from_slice(&[1.0f32, 2.0, 3.0]),
            Tensor::full([3, 4], 7.0, (Kind::Float, Device::Cpu)),
        ];
        assign_masked_(&net, &values, Some(&mask)).unwrap();
        assert_eq!(l.b(), [1.0, 2.0, 3.0]);
        let w2 = vec_of(&l.lin.ws);
        for (w, k) in w2.iter().zip(&keep) {
            assert_eq!(*w, 7.0 * k);
        }
        // without a mask nothing is zeroed; shapes are checked
        assign_masked_(&net, &values, None).unwrap();
        assert!(vec_of(&l.lin.ws).iter().all(|&w| w == 7.0));
        assert!(add_masked_(&net, &values[..1], None).is_err());
        assert!(
            add_masked_(
                &net,
                &[values[1].shallow_clone(), values[0].shallow_clone()],
                None
            )
            .is_err()
        );
        // the parameters still require grad and are usable by autograd
        assert!(l.lin.ws.requires_grad());
    }

    #[test]
    fn normal_noise_is_seeded_shaped_and_standard() {
        let like = [
            Tensor::zeros([300, 7], (Kind::Float, Device::Cpu)),
            Tensor::zeros([5], (Kind::Double, Device::Cpu)),
        ];
        let a = normal_like(&like, 4, "FF noise").unwrap();
        assert_eq!(a[0].size(), [300, 7]);
        assert_eq!((a[1].size(), a[1].kind()), (vec![5], Kind::Double));
        let b = normal_like(&like, 4, "FF noise").unwrap();
        assert!(a[0].equal(&b[0]) && a[1].equal(&b[1]));
        assert!(!a[0].equal(&normal_like(&like, 5, "FF noise").unwrap()[0]));
        assert!(!a[0].equal(&normal_like(&like, 4, "other").unwrap()[0]));
        let v = vec_of(&a[0]);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        // 2100 draws: standard errors 0.022 (mean) and 0.015 (sd)
        assert!(mean.abs() < 0.1 && (sd - 1.0).abs() < 0.07, "{mean} {sd}");
        let tails = v.iter().filter(|x| x.abs() > 1.96).count() as f64 / n;
        assert!((tails - 0.05).abs() < 0.02, "{tails}");
    }

    fn small_cnn() -> (Dataset, Model) {
        let d = synthetic(&SyntheticConfig {
            samples: 24,
            classes: 4,
            ..Default::default()
        })
        .unwrap();
        let spec = ModelSpec {
            arch: Arch::SmallCnn,
            input: [1, 8, 8],
            classes: 4,
            mean: d.mean.clone(),
            std: d.std.clone(),
        };
        (d, Model::new(spec, Device::Cpu, 3).unwrap())
    }

    #[test]
    fn model_gradients_agree_with_backward_and_leave_batchnorm_alone() {
        let (d, model) = small_cnn();
        let net = Net::eval(&model);
        let names: Vec<String> = model.parameters().into_keys().collect();
        assert_eq!(net.names(), names.as_slice());
        let rows: Vec<usize> = (0..10).collect();
        let stream = Stream::new(&d, &rows);
        let before = model.var_store().variables()["bn2.running_mean"].copy();
        let g = summed_grad(&net, &stream, 4).unwrap();
        assert_eq!(g.size(), [model.num_parameters()]);
        // the same sum through the usual `.grad` path
        model.zero_grad();
        let x = d.batch_images(&stream.rows);
        let loss = model
            .forward_t(&x, false)
            .cross_entropy_for_logits(&stream.labels)
            * 10.0;
        loss.backward();
        let via_backward = net
            .flatten(
                &model
                    .parameters()
                    .values()
                    .map(|p| p.grad())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let err = (&g - &via_backward).abs().max().double_value(&[]);
        let scale = via_backward.abs().max().double_value(&[]);
        assert!(err <= 1e-4 * scale, "{err} vs {scale}");
        let f = class_fisher(&net, &stream, 4).unwrap();
        assert_eq!((f.batches, f.backward_passes), (3, 12));
        assert!(
            f.per_param
                .iter()
                .all(|t| t.isfinite().all().int64_value(&[]) == 1)
        );
        assert!(model.var_store().variables()["bn2.running_mean"].equal(&before));
        // a mask built for the model applies by name: to gradients ...
        let mask = Mask::from_scores(&magnitude_scores(&model), None, 0.5).unwrap();
        let masked = Net::eval(&model).with_mask(Some(&mask));
        let gm = masked
            .unflatten(&summed_grad(&masked, &stream, 4).unwrap())
            .unwrap();
        let g = net.unflatten(&g).unwrap();
        for ((name, gm), g) in net.names().iter().zip(&gm).zip(&g) {
            let want = match mask.get(name) {
                Some(m) => g * m,
                None => g.shallow_clone(),
            };
            assert!(gm.allclose(&want, 1e-5, 1e-7, false), "{name}");
            if let Some(m) = mask.get(name) {
                let pruned = m.eq(0.0);
                assert_eq!(gm.masked_select(&pruned).abs().max().double_value(&[]), 0.0);
                // while the gradient of the unmasked net is not 0 there
                assert!(g.masked_select(&pruned).abs().max().double_value(&[]) > 0.0);
            }
        }
        let fm = class_fisher(&masked, &stream, 4).unwrap();
        let i = net
            .names()
            .iter()
            .position(|n| n == "conv2.weight")
            .unwrap();
        let pruned = mask.get("conv2.weight").unwrap().eq(0.0);
        let at_pruned = fm.per_param[i].masked_select(&pruned).abs().max();
        assert_eq!(at_pruned.double_value(&[]), 0.0);
        // ... and to updates
        let ones: Vec<Tensor> = net.params().iter().map(|p| p.ones_like()).collect();
        add_masked_(&net, &ones, Some(&mask)).unwrap();
        assert_eq!(mask.violations(&model), 0);
    }
}
