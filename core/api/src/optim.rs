//! SGD as libtorch's `torch::optim::SGD` computes it (the same kernels in the same order, so
//! the same bits), with its state in the open: the momentum buffers can be saved with a
//! mid-training checkpoint and loaded to resume exactly.

use std::collections::BTreeMap;

use tch::{TchError, Tensor};

use crate::model::Model;
use crate::ops::{add_scaled, add_scaled_, clear_grad};

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
        for (_, p) in &mut self.params {
            clear_grad(p)?;
        }
        Ok(())
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
}
