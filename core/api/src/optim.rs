//! SGD, Adam and AdamW as libtorch's `torch::optim::SGD`, `torch::optim::Adam` and
//! `torch::optim::AdamW` compute them (the same kernels in the same order, so the same bits),
//! with their state in the open: momentum buffers and moment estimates can be saved with a
//! mid-training checkpoint and loaded to resume exactly. [`Optimizer`] holds whichever a config
//! chose ([`OptimizerKind`]); `docs/optimizers.md` states the update rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, TchError, Tensor};

use crate::model::Model;
use crate::ops::{add_scaled, add_scaled_, addcdiv_, addcmul_, clear_grad};

/// Stochastic gradient descent with momentum, dampening, weight decay and Nesterov momentum.
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    params: Vec<(String, Tensor)>,
    /// Momentum buffer per parameter name, created by the first step that parameter has a
    /// gradient in (libtorch's `momentum_buffer`).
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    /// SGD over `model`'s trainable parameters.
    pub fn new(model: &Model, lr: f64, momentum: f64, weight_decay: f64) -> Sgd {
        Sgd {
            lr,
            momentum,
            dampening: 0.0,
            weight_decay,
            nesterov: false,
            params: model.parameters().into_iter().collect(),
            buffers: BTreeMap::new(),
        }
    }

    /// Drops every gradient (undefined, not zero; libtorch's default).
    pub fn zero_grad(&mut self) -> Result<(), TchError> {
        clear_grads(&mut self.params)
    }

    /// One step on the current gradients; parameters without a gradient are left alone.
    pub fn step(&mut self) -> Result<(), TchError> {
        let _g = tch::no_grad_guard();
        for (name, p) in &mut self.params {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let mut d_p = grad;
            if self.weight_decay != 0.0 {
                d_p = add_scaled(&d_p, p, self.weight_decay)?;
            }
            if self.momentum != 0.0 {
                let buf = match self.buffers.get_mut(name) {
                    Some(buf) => {
                        let _ = buf.f_mul_scalar_(self.momentum)?;
                        add_scaled_(buf, &d_p, 1.0 - self.dampening)?;
                        buf
                    }
                    None => self
                        .buffers
                        .entry(name.clone())
                        .or_insert(d_p.detach().copy()),
                };
                d_p = if self.nesterov {
                    add_scaled(&d_p, buf, self.momentum)?
                } else {
                    buf.shallow_clone()
                };
            }
            add_scaled_(p, &d_p, -self.lr)?;
        }
        Ok(())
    }

    /// Copies of the momentum buffers, by parameter name.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        self.buffers
            .iter()
            .map(|(k, t)| (k.clone(), t.detach().copy()))
            .collect()
    }

    /// Restores buffers [`Sgd::state`] returned (moved to each parameter's device); a name
    /// that is not a parameter, or a shape that differs, is an error.
    pub fn load_state(&mut self, state: BTreeMap<String, Tensor>) -> Result<(), String> {
        let mut buffers = BTreeMap::new();
        for (name, t) in state {
            let Some((_, p)) = self.params.iter().find(|(n, _)| *n == name) else {
                return Err(format!("momentum buffer `{name}` names no parameter"));
            };
            if t.size() != p.size() {
                return Err(format!(
                    "momentum buffer `{name}` has shape {:?}, the parameter {:?}",
                    t.size(),
                    p.size()
                ));
            }
            buffers.insert(name, t.to_device(p.device()).to_kind(p.kind()));
        }
        self.buffers = buffers;
        Ok(())
    }
}

/// Drops the gradient of every parameter in `params`.
fn clear_grads(params: &mut [(String, Tensor)]) -> Result<(), TchError> {
    for (_, p) in params {
        clear_grad(p)?;
    }
    Ok(())
}

/// One parameter's Adam state (libtorch's `AdamParamState` / `AdamWParamState`, without the
/// AMSGrad maximum).
struct AdamState {
    /// Steps this parameter has taken (it has a gradient in each).
    step: i64,
    /// Exponential moving average of the gradient (the first moment estimate).
    exp_avg: Tensor,
    /// Exponential moving average of the squared gradient (the second moment estimate).
    exp_avg_sq: Tensor,
}

/// The state slots [`Adam::state`] writes, each as `"<slot>/<parameter name>"`.
const ADAM_SLOTS: [&str; 3] = ["exp_avg", "exp_avg_sq", "step"];

/// Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient, or, with `decoupled`,
/// AdamW (Loshchilov & Hutter 2019) with the weight decay applied to the weights directly.
/// AMSGrad is not implemented.
pub struct Adam {
    pub lr: f64,
    /// Decay rate of the first moment estimate.
    pub beta1: f64,
    /// Decay rate of the second moment estimate.
    pub beta2: f64,
    /// Added to the bias-corrected root of the second moment before dividing by it.
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW: the weights are multiplied by `1 - lr * weight_decay` before the step, and the
    /// decay never enters the moments. Otherwise (Adam) `weight_decay * w` is added to the
    /// gradient the moments average.
    pub decoupled: bool,
    params: Vec<(String, Tensor)>,
    /// State per parameter name, created by the first step that parameter has a gradient in.
    state: BTreeMap<String, AdamState>,
}

impl Adam {
    /// Adam (or with `decoupled`, AdamW) over `model`'s trainable parameters.
    pub fn new(
        model: &Model,
        lr: f64,
        (beta1, beta2): (f64, f64),
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    ) -> Adam {
        Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            params: model.parameters().into_iter().collect(),
            state: BTreeMap::new(),
        }
    }

    /// Drops every gradient (undefined, not zero; libtorch's default).
    pub fn zero_grad(&mut self) -> Result<(), TchError> {
        clear_grads(&mut self.params)
    }

    /// One step on the current gradients; parameters without a gradient are left alone (their
    /// step count does not advance).
    pub fn step(&mut self) -> Result<(), TchError> {
        let _g = tch::no_grad_guard();
        for (name, p) in &mut self.params {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            if self.decoupled && self.weight_decay != 0.0 {
                let _ = p.f_mul_scalar_(1.0 - self.lr * self.weight_decay)?;
            }
            let s = match self.state.get_mut(name) {
                Some(s) => s,
                None => self.state.entry(name.clone()).or_insert(AdamState {
                    step: 0,
                    exp_avg: p.f_zeros_like()?,
                    exp_avg_sq: p.f_zeros_like()?,
                }),
            };
            s.step += 1;
            // libtorch takes `std::pow(double, int64_t)`, i.e. pow on doubles (not `powi`).
            let bias_correction1 = 1.0 - self.beta1.powf(s.step as f64);
            let bias_correction2 = 1.0 - self.beta2.powf(s.step as f64);
            let grad = if !self.decoupled && self.weight_decay != 0.0 {
                add_scaled(&grad, p, self.weight_decay)?
            } else {
                grad
            };
            let _ = s.exp_avg.f_mul_scalar_(self.beta1)?;
            add_scaled_(&mut s.exp_avg, &grad, 1.0 - self.beta1)?;
            let _ = s.exp_avg_sq.f_mul_scalar_(self.beta2)?;
            addcmul_(&mut s.exp_avg_sq, &grad, &grad, 1.0 - self.beta2)?;
            let mut denom = s
                .exp_avg_sq
                .f_sqrt()?
                .f_div_scalar(bias_correction2.sqrt())?;
            let _ = denom.f_add_scalar_(self.eps)?;
            addcdiv_(p, &s.exp_avg, &denom, -(self.lr / bias_correction1))?;
        }
        Ok(())
    }

    /// Copies of the state, as `exp_avg/<name>`, `exp_avg_sq/<name>` (the parameter's shape)
    /// and `step/<name>` (a 0-d int64 tensor), for every parameter that has taken a step.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (name, s) in &self.state {
            out.insert(format!("exp_avg/{name}"), s.exp_avg.detach().copy());
            out.insert(format!("exp_avg_sq/{name}"), s.exp_avg_sq.detach().copy());
            out.insert(format!("step/{name}"), Tensor::from(s.step));
        }
        out
    }

    /// Restores state [`Adam::state`] returned, replacing the current state. The moments are
    /// copied to each parameter's device, kind and layout; `step` may be an integer or a
    /// floating 0-d tensor holding a whole number. An unknown slot, a name that is no
    /// parameter, a moment whose shape differs from its parameter's, a bad step or a
    /// parameter with only some of the three slots is an error, and then nothing changes.
    pub fn load_state(&mut self, state: BTreeMap<String, Tensor>) -> Result<(), String> {
        type Slots = (Option<Tensor>, Option<Tensor>, Option<i64>);
        let mut by_name: BTreeMap<String, Slots> = BTreeMap::new();
        for (key, t) in state {
            let (slot, name) = split_key(&key)?;
            let Some((_, p)) = self.params.iter().find(|(n, _)| n == name) else {
                return Err(format!("Adam state `{key}` names no parameter (`{name}`)"));
            };
            let entry = by_name.entry(name.to_string()).or_default();
            match slot {
                "exp_avg" | "exp_avg_sq" => {
                    if t.size() != p.size() {
                        return Err(format!(
                            "Adam state `{key}` has shape {:?}, the parameter {:?}",
                            t.size(),
                            p.size()
                        ));
                    }
                    let mut moment = p.f_zeros_like().map_err(|e| e.to_string())?;
                    moment
                        .f_copy_(&t.detach())
                        .map_err(|e| format!("Adam state `{key}`: {e}"))?;
                    if slot == "exp_avg" {
                        entry.0 = Some(moment);
                    } else {
                        entry.1 = Some(moment);
                    }
                }
                "step" => entry.2 = Some(step_count(&key, &t)?),
                _ => {
                    return Err(format!(
                        "Adam state `{key}`: Adam keeps no `{slot}` (its slots are {})",
                        ADAM_SLOTS.join(", ")
                    ));
                }
            }
        }
        let mut loaded = BTreeMap::new();
        for (name, slots) in by_name {
            let (Some(exp_avg), Some(exp_avg_sq), Some(step)) = slots else {
                return Err(format!(
                    "Adam state for `{name}` is incomplete: it needs all of {}",
                    ADAM_SLOTS
                        .iter()
                        .map(|s| format!("`{s}/{name}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            loaded.insert(
                name,
                AdamState {
                    step,
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        self.state = loaded;
        Ok(())
    }
}

/// `"<slot>/<parameter name>"` split at its first `/`.
fn split_key(key: &str) -> Result<(&str, &str), String> {
    key.split_once('/')
        .filter(|(slot, name)| !slot.is_empty() && !name.is_empty())
        .ok_or_else(|| format!("optimizer state `{key}` is not `<slot>/<parameter name>`"))
}

/// The step count a `step/<name>` tensor holds: 0-d, a whole number, not negative.
fn step_count(key: &str, t: &Tensor) -> Result<i64, String> {
    if !t.size().is_empty() {
        return Err(format!(
            "Adam state `{key}` has shape {:?}; a step count is 0-d",
            t.size()
        ));
    }
    let step = match t.kind() {
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => t.int64_value(&[]),
        Kind::Double | Kind::Float => {
            let v = t.double_value(&[]);
            if v.fract() != 0.0 || !v.is_finite() || v.abs() > 2f64.powi(53) {
                return Err(format!("Adam state `{key}` is {v}, not a whole step count"));
            }
            v as i64
        }
        k => {
            return Err(format!(
                "Adam state `{key}` is of kind {k:?}, not a step count"
            ));
        }
    };
    if step < 0 {
        return Err(format!(
            "Adam state `{key}` is {step}, a negative step count"
        ));
    }
    Ok(step)
}

/// Which optimizer a config chose. Hyper-parameters it does not use are ignored: `momentum` and
/// `nesterov` by Adam and AdamW, `betas` and `eps` by SGD.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum, L2 weight decay added to the gradient, optional Nesterov momentum.
    #[default]
    Sgd,
    /// Adam (Kingma & Ba 2015), L2 weight decay added to the gradient.
    Adam,
    /// AdamW (Loshchilov & Hutter 2019), weight decay decoupled from the gradient.
    Adamw,
}

/// Whichever optimizer a run uses, behind one interface. Its state keys are
/// `"<slot>/<parameter name>"`: slot `momentum` for SGD; `exp_avg`, `exp_avg_sq` and `step` for
/// Adam and AdamW.
pub enum Optimizer {
    Sgd(Sgd),
    Adam(Adam),
}

impl From<Sgd> for Optimizer {
    fn from(o: Sgd) -> Optimizer {
        Optimizer::Sgd(o)
    }
}

impl From<Adam> for Optimizer {
    fn from(o: Adam) -> Optimizer {
        Optimizer::Adam(o)
    }
}

impl Optimizer {
    /// The `kind` of optimizer over `model`'s trainable parameters; the arguments `kind` does
    /// not use are ignored (see [`OptimizerKind`]). SGD's dampening is 0.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: OptimizerKind,
        model: &Model,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
        betas: (f64, f64),
        eps: f64,
    ) -> Optimizer {
        match kind {
            OptimizerKind::Sgd => {
                let mut o = Sgd::new(model, lr, momentum, weight_decay);
                o.nesterov = nesterov;
                Optimizer::Sgd(o)
            }
            OptimizerKind::Adam => {
                Optimizer::Adam(Adam::new(model, lr, betas, eps, weight_decay, false))
            }
            OptimizerKind::Adamw => {
                Optimizer::Adam(Adam::new(model, lr, betas, eps, weight_decay, true))
            }
        }
    }

    pub fn kind(&self) -> OptimizerKind {
        match self {
            Optimizer::Sgd(_) => OptimizerKind::Sgd,
            Optimizer::Adam(o) if o.decoupled => OptimizerKind::Adamw,
            Optimizer::Adam(_) => OptimizerKind::Adam,
        }
    }

    pub fn lr(&self) -> f64 {
        match self {
            Optimizer::Sgd(o) => o.lr,
            Optimizer::Adam(o) => o.lr,
        }
    }

    pub fn set_lr(&mut self, lr: f64) {
        match self {
            Optimizer::Sgd(o) => o.lr = lr,
            Optimizer::Adam(o) => o.lr = lr,
        }
    }

    /// Drops every gradient (undefined, not zero; libtorch's default).
    pub fn zero_grad(&mut self) -> Result<(), TchError> {
        match self {
            Optimizer::Sgd(o) => o.zero_grad(),
            Optimizer::Adam(o) => o.zero_grad(),
        }
    }

    /// One step on the current gradients; parameters without a gradient are left alone.
    pub fn step(&mut self) -> Result<(), TchError> {
        match self {
            Optimizer::Sgd(o) => o.step(),
            Optimizer::Adam(o) => o.step(),
        }
    }

    /// Copies of the state, keyed `"<slot>/<parameter name>"`.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        match self {
            Optimizer::Sgd(o) => o
                .state()
                .into_iter()
                .map(|(name, t)| (format!("momentum/{name}"), t))
                .collect(),
            Optimizer::Adam(o) => o.state(),
        }
    }

    /// Restores state [`Optimizer::state`] returned (by an optimizer of the same kind); an
    /// unknown slot, a name that is no parameter or a wrong shape is an error, and then nothing
    /// changes.
    pub fn load_state(&mut self, state: BTreeMap<String, Tensor>) -> Result<(), String> {
        match self {
            Optimizer::Sgd(o) => {
                let mut buffers = BTreeMap::new();
                for (key, t) in state {
                    match split_key(&key)? {
                        ("momentum", name) => {
                            buffers.insert(name.to_string(), t);
                        }
                        (slot, _) => {
                            return Err(format!(
                                "SGD state `{key}`: SGD keeps no `{slot}` (its slot is momentum)"
                            ));
                        }
                    }
                }
                o.load_state(buffers)
            }
            Optimizer::Adam(o) => o.load_state(state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TinyTask;
    use tch::nn::OptimizerConfig;
    use tch::{Device, Kind};

    /// The tiny task's training split and a fresh small CNN for it.
    fn model(seed: u64) -> (crate::data::Dataset, Model) {
        let t = TinyTask::new();
        (t.data.train, Model::new(t.spec, Device::Cpu, seed).unwrap())
    }

    fn loss(m: &Model, d: &crate::data::Dataset, step: i64) -> Tensor {
        let idx = Tensor::arange_start(
            step % 4 * 16,
            step % 4 * 16 + 16,
            (Kind::Int64, Device::Cpu),
        );
        m.forward_t(&d.batch_images(&idx), true)
            .cross_entropy_for_logits(&d.labels.index_select(0, &idx))
    }

    /// Against libtorch's own `torch::optim::SGD` (through tch), bit for bit, with momentum,
    /// weight decay, Nesterov and an lr change between steps.
    #[test]
    fn steps_equal_libtorch_sgd_bit_for_bit() {
        for nesterov in [false, true] {
            let (d, a) = model(3);
            let b = a.try_clone().unwrap();
            let mut theirs = tch::nn::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                wd: 5e-4,
                nesterov,
            }
            .build(a.var_store(), 0.1)
            .unwrap();
            let mut ours = Sgd::new(&b, 0.1, 0.9, 5e-4);
            ours.nesterov = nesterov;
            for step in 0..12 {
                let lr = if step < 6 { 0.1 } else { 0.01 };
                theirs.set_lr(lr);
                ours.lr = lr;
                theirs.zero_grad();
                loss(&a, &d, step).backward();
                theirs.step();
                ours.zero_grad().unwrap();
                loss(&b, &d, step).backward();
                ours.step().unwrap();
            }
            for (name, t) in a.var_store().variables() {
                let u = &b.var_store().variables()[&name];
                assert!(t.equal(u), "nesterov {nesterov}: {name} differs");
            }
        }
    }

    #[test]
    fn saved_state_resumes_to_the_same_bits() {
        let (d, a) = model(5);
        let b = a.try_clone().unwrap();
        let mut straight = Sgd::new(&a, 0.05, 0.9, 5e-4);
        for step in 0..8 {
            straight.zero_grad().unwrap();
            loss(&a, &d, step).backward();
            straight.step().unwrap();
        }
        let mut first = Sgd::new(&b, 0.05, 0.9, 5e-4);
        for step in 0..4 {
            first.zero_grad().unwrap();
            loss(&b, &d, step).backward();
            first.step().unwrap();
        }
        let state = first.state();
        drop(first);
        let mut resumed = Sgd::new(&b, 0.05, 0.9, 5e-4);
        resumed.load_state(state).unwrap();
        for step in 4..8 {
            resumed.zero_grad().unwrap();
            loss(&b, &d, step).backward();
            resumed.step().unwrap();
        }
        for (name, t) in a.parameters() {
            assert!(t.equal(&b.parameters()[&name]), "{name}");
        }
        let bad = BTreeMap::from([(
            "nope".to_string(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        )]);
        assert!(resumed.load_state(bad).unwrap_err().contains("nope"));
    }

    /// Runs `steps` steps of `ours` on `b` and of libtorch's `theirs` on `a` (the same initial
    /// weights), with the lr at `lr(step)` in each.
    fn run_both(
        d: &crate::data::Dataset,
        (a, theirs): (&Model, &mut tch::nn::Optimizer),
        (b, ours): (&Model, &mut Optimizer),
        steps: std::ops::Range<i64>,
        lr: impl Fn(i64) -> f64,
    ) {
        for step in steps {
            theirs.set_lr(lr(step));
            ours.set_lr(lr(step));
            theirs.zero_grad();
            loss(a, d, step).backward();
            theirs.step();
            ours.zero_grad().unwrap();
            loss(b, d, step).backward();
            ours.step().unwrap();
        }
    }

    /// Against libtorch's own `torch::optim::Adam` and `torch::optim::AdamW` (through tch), bit
    /// for bit: with and without weight decay, non-default betas and eps, lr changes between
    /// steps.
    #[test]
    fn adam_and_adamw_steps_equal_libtorch_bit_for_bit() {
        let (beta1, beta2, eps) = (0.8, 0.99, 1e-6);
        for kind in [OptimizerKind::Adam, OptimizerKind::Adamw] {
            for wd in [0.0, 0.05] {
                let (d, a) = model(7);
                let b = a.try_clone().unwrap();
                let before: BTreeMap<String, Tensor> = b
                    .parameters()
                    .into_iter()
                    .map(|(k, t)| (k, t.copy()))
                    .collect();
                let mut theirs = match kind {
                    OptimizerKind::Adam => tch::nn::Adam {
                        beta1,
                        beta2,
                        wd,
                        eps,
                        amsgrad: false,
                    }
                    .build(a.var_store(), 1.0),
                    _ => tch::nn::AdamW {
                        beta1,
                        beta2,
                        wd,
                        eps,
                        amsgrad: false,
                    }
                    .build(a.var_store(), 1.0),
                }
                .unwrap();
                let mut ours = Optimizer::new(kind, &b, 1.0, 0.0, wd, false, (beta1, beta2), eps);
                assert_eq!(ours.kind(), kind);
                let lr = |step| [0.01, 0.003, 0.02][step as usize / 3];
                run_both(&d, (&a, &mut theirs), (&b, &mut ours), 0..9, lr);
                for (name, t) in a.var_store().variables() {
                    let u = &b.var_store().variables()[&name];
                    assert!(t.equal(u), "{kind:?}, wd {wd}: {name} differs");
                }
                // The steps did move every parameter (the comparison is not of untouched weights).
                for (name, t) in b.parameters() {
                    assert!(
                        !t.equal(&before[&name]),
                        "{kind:?}, wd {wd}: {name} did not move"
                    );
                }
                assert_eq!(ours.lr(), 0.02);
            }
        }
    }

    /// Adam and AdamW differ once there is weight decay (the decay is decoupled or not), and the
    /// state names every parameter in each slot, with the step count.
    #[test]
    fn adamw_decouples_and_state_has_every_slot() {
        let (d, a) = model(2);
        let b = a.try_clone().unwrap();
        let mut adam = Optimizer::new(
            OptimizerKind::Adam,
            &a,
            0.01,
            0.0,
            0.1,
            false,
            (0.9, 0.999),
            1e-8,
        );
        let mut adamw = Optimizer::new(
            OptimizerKind::Adamw,
            &b,
            0.01,
            0.0,
            0.1,
            false,
            (0.9, 0.999),
            1e-8,
        );
        for step in 0..3 {
            for (m, o) in [(&a, &mut adam), (&b, &mut adamw)] {
                o.zero_grad().unwrap();
                loss(m, &d, step).backward();
                o.step().unwrap();
            }
        }
        let w = "fc.weight";
        assert!(!a.parameters()[w].equal(&b.parameters()[w]));
        let state = adamw.state();
        let params = b.parameters();
        assert_eq!(state.len(), 3 * params.len());
        for (name, p) in &params {
            assert_eq!(state[&format!("exp_avg/{name}")].size(), p.size());
            assert_eq!(state[&format!("exp_avg_sq/{name}")].size(), p.size());
            let step = &state[&format!("step/{name}")];
            assert!(step.size().is_empty());
            assert_eq!((step.kind(), step.int64_value(&[])), (Kind::Int64, 3));
        }
        // The second moment is an average of squares.
        assert!(state[&format!("exp_avg_sq/{w}")].min().double_value(&[]) >= 0.0);
    }

    /// State saved after some steps and loaded into a fresh optimizer continues exactly as the
    /// uninterrupted optimizer does, for each kind (an lr change straddles the save).
    #[test]
    fn saved_optimizer_state_resumes_to_the_same_bits() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
        ] {
            let (d, a) = model(5);
            let b = a.try_clone().unwrap();
            let build =
                |m: &Model| Optimizer::new(kind, m, 0.01, 0.9, 5e-3, true, (0.85, 0.995), 1e-7);
            let lr = |step: i64| if step < 3 { 0.01 } else { 0.004 };
            let mut straight = build(&a);
            let mut first = build(&b);
            for step in 0..6 {
                straight.set_lr(lr(step));
                straight.zero_grad().unwrap();
                loss(&a, &d, step).backward();
                straight.step().unwrap();
                if step < 2 {
                    first.set_lr(lr(step));
                    first.zero_grad().unwrap();
                    loss(&b, &d, step).backward();
                    first.step().unwrap();
                }
            }
            let state = first.state();
            assert!(!state.is_empty());
            let slot = if kind == OptimizerKind::Sgd {
                "momentum/"
            } else {
                "exp_avg/"
            };
            assert!(
                state.keys().all(|k| k.contains('/')) && state.keys().any(|k| k.starts_with(slot))
            );
            drop(first);
            let mut resumed = build(&b);
            resumed.load_state(state).unwrap();
            for step in 2..6 {
                resumed.set_lr(lr(step));
                resumed.zero_grad().unwrap();
                loss(&b, &d, step).backward();
                resumed.step().unwrap();
            }
            for (name, t) in a.parameters() {
                assert!(t.equal(&b.parameters()[&name]), "{kind:?}: {name}");
            }
            // And the resumed optimizer's state is the uninterrupted one's.
            let (s1, s2) = (straight.state(), resumed.state());
            assert_eq!(s1.keys().collect::<Vec<_>>(), s2.keys().collect::<Vec<_>>());
            for (k, t) in &s1 {
                assert!(t.equal(&s2[k]), "{kind:?}: {k}");
            }
        }
    }

    #[test]
    fn load_state_rejects_what_does_not_fit() {
        let (d, m) = model(4);
        let mut adam = Optimizer::new(
            OptimizerKind::Adam,
            &m,
            0.01,
            0.0,
            0.0,
            false,
            (0.9, 0.999),
            1e-8,
        );
        adam.zero_grad().unwrap();
        loss(&m, &d, 0).backward();
        adam.step().unwrap();
        let good = adam.state();
        let w = "fc.weight";
        let with = |key: &str, t: Tensor| {
            let mut s: BTreeMap<String, Tensor> = good
                .iter()
                .map(|(k, t)| (k.clone(), t.shallow_clone()))
                .collect();
            s.insert(key.to_string(), t);
            s
        };
        let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        let shape = m.parameters()[w].size();
        let cases = [
            (
                with(&format!("momentum/{w}"), zeros(&shape)),
                "keeps no `momentum`",
            ),
            (with("exp_avg/nope", zeros(&[1])), "names no parameter"),
            (
                with(&format!("exp_avg/{w}"), zeros(&[2, 3])),
                "has shape [2, 3]",
            ),
            (
                with(&format!("step/{w}"), Tensor::from_slice(&[1i64])),
                "is 0-d",
            ),
            (with(&format!("step/{w}"), Tensor::from(-2i64)), "negative"),
            (
                with(&format!("step/{w}"), Tensor::from(2.5f64)),
                "not a whole step count",
            ),
            (
                with("fc.weight", zeros(&shape)),
                "is not `<slot>/<parameter name>`",
            ),
        ];
        for (state, expected) in cases {
            let e = adam.load_state(state).unwrap_err();
            assert!(e.contains(expected), "{e}");
        }
        let mut partial: BTreeMap<String, Tensor> = good
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        partial.remove(&format!("exp_avg_sq/{w}"));
        let e = adam.load_state(partial).unwrap_err();
        assert!(
            e.contains("incomplete") && e.contains(&format!("exp_avg_sq/{w}")),
            "{e}"
        );
        // A failed load changed nothing.
        let after = adam.state();
        assert_eq!(after.len(), good.len());
        assert!(after.iter().all(|(k, t)| t.equal(&good[k])));
        // A float step holding a whole number is accepted.
        adam.load_state(with(&format!("step/{w}"), Tensor::from(1.0f64)))
            .unwrap();
        // SGD takes only momentum.
        let mut sgd = Optimizer::new(
            OptimizerKind::Sgd,
            &m,
            0.01,
            0.9,
            0.0,
            false,
            (0.9, 0.999),
            1e-8,
        );
        let e = sgd.load_state(good).unwrap_err();
        assert!(e.contains("keeps no `exp_avg`"), "{e}");
        let e = sgd
            .load_state(BTreeMap::from([(format!("momentum/{w}"), zeros(&[7]))]))
            .unwrap_err();
        assert!(e.contains("shape"), "{e}");
    }

    #[test]
    fn optimizer_kind_reads_lowercase_and_defaults_to_sgd() {
        assert_eq!(OptimizerKind::default(), OptimizerKind::Sgd);
        let k: OptimizerKind = serde_json::from_str("\"adamw\"").unwrap();
        assert_eq!(k, OptimizerKind::Adamw);
        assert_eq!(
            serde_json::to_string(&OptimizerKind::Adam).unwrap(),
            "\"adam\""
        );
        assert!(serde_json::from_str::<OptimizerKind>("\"rmsprop\"").is_err());
    }
}
