//! Objectives for core's training loop: what iterative methods minimise on a batch.

use tch::{Kind, Tensor};

use crate::model::Model;
use crate::train::{Batch, Objective, cross_entropy};

/// The weight of an L1 penalty over epochs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum L1Schedule {
    None,
    /// `a` in every epoch (`GA_l1`).
    Constant(f64),
    /// `l1-sparse` (the paper's sparsity-aware unlearning): for 0-based epoch t of E, a_t = a * (1 - t / (E - E0)) while
    /// t < E - E0, else 0; a_t = a when E - E0 = 0. E0 = `no_l1_epochs`.
    Decay {
        a: f64,
        no_l1_epochs: usize,
    },
}

impl L1Schedule {
    pub fn weight(&self, epoch: usize, epochs: usize) -> f64 {
        match *self {
            L1Schedule::None => 0.0,
            L1Schedule::Constant(a) => a,
            L1Schedule::Decay { a, no_l1_epochs } => {
                let decaying = epochs.saturating_sub(no_l1_epochs);
                if decaying == 0 {
                    a
                } else if epoch < decaying {
                    a * (1.0 - epoch as f64 / decaying as f64)
                } else {
                    0.0
                }
            }
        }
    }
}

/// `||w||_1` over every trainable parameter.
pub fn l1_norm(model: &Model) -> Result<Tensor, tch::TchError> {
    let mut total = Tensor::zeros([], (Kind::Float, model.device()));
    for p in model.parameters().values() {
        total = total.f_add(&p.f_abs()?.f_sum(Kind::Float)?)?;
    }
    Ok(total)
}

/// `sign * CE(model(x), y) + a_t * ||w||_1`: fine-tuning (sign +1) or gradient ascent (sign -1),
/// with an optional L1 penalty. Covers FT, GA, FT_l1, GA_l1 and l1-sparse.
pub struct CeL1 {
    ascent: bool,
    l1: L1Schedule,
    a_t: f64,
}

impl CeL1 {
    pub fn descent(l1: L1Schedule) -> CeL1 {
        CeL1 {
            ascent: false,
            l1,
            a_t: 0.0,
        }
    }

    pub fn ascent(l1: L1Schedule) -> CeL1 {
        CeL1 {
            ascent: true,
            l1,
            a_t: 0.0,
        }
    }

    /// The L1 weight of the current epoch.
    pub fn l1_weight(&self) -> f64 {
        self.a_t
    }
}

impl Objective for CeL1 {
    fn start_epoch(&mut self, epoch: usize, epochs: usize) {
        self.a_t = self.l1.weight(epoch, epochs);
    }

    fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, tch::TchError> {
        let logits = model.forward_t(&batch.x, true);
        batch.record_logits(&logits);
        let ce = cross_entropy(&logits, &batch.y)?;
        let ce = if self.ascent { ce.f_neg()? } else { ce };
        if self.a_t == 0.0 {
            Ok(ce)
        } else {
            ce.f_add(&l1_norm(model)?.f_mul_scalar(self.a_t)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny_spec;
    use tch::Device;

    #[test]
    fn l1_sparse_schedule_decays_linearly_then_stops() {
        let s = L1Schedule::Decay {
            a: 0.5,
            no_l1_epochs: 2,
        };
        // E = 6, E0 = 2: decays over 4 epochs: 0.5, 0.375, 0.25, 0.125, then 0, 0.
        let w: Vec<f64> = (0..6).map(|t| s.weight(t, 6)).collect();
        assert_eq!(w, vec![0.5, 0.375, 0.25, 0.125, 0.0, 0.0]);
        let s0 = L1Schedule::Decay {
            a: 0.5,
            no_l1_epochs: 0,
        };
        assert_eq!(
            (0..4).map(|t| s0.weight(t, 4)).collect::<Vec<_>>(),
            vec![0.5, 0.375, 0.25, 0.125]
        );
        // E - E0 = 0: the constant a.
        assert_eq!(
            L1Schedule::Decay {
                a: 0.5,
                no_l1_epochs: 3
            }
            .weight(1, 3),
            0.5
        );
        assert_eq!(L1Schedule::Constant(0.2).weight(7, 8), 0.2);
        assert_eq!(L1Schedule::None.weight(0, 1), 0.0);
    }

    /// d/dw (sign * CE + a ||w||_1) - d/dw (sign * CE) = a * sign(w), for every parameter.
    #[test]
    fn l1_gradient_is_a_times_sign_and_ascent_negates_ce() {
        let model = Model::new(tiny_spec(3), Device::Cpu, 0).unwrap();
        let batch = Batch::new(
            Tensor::rand([4, 1, 8, 8], (Kind::Float, Device::Cpu)),
            Tensor::from_slice(&[0i64, 1, 2, 1]),
            0,
            1,
        );
        let grads = |obj: &mut CeL1| {
            model.zero_grad();
            obj.start_epoch(0, 1);
            // eval-mode batch statistics would differ per call in train mode only through
            // running stats, which do not enter the loss; the loss is the same function.
            let loss = obj.loss(&model, &batch).unwrap();
            loss.backward();
            model
                .parameters()
                .into_iter()
                .map(|(k, p)| (k, p.grad().copy()))
                .collect::<Vec<_>>()
        };
        let a = 0.3;
        for ascent in [false, true] {
            let make = |l1| {
                if ascent {
                    CeL1::ascent(l1)
                } else {
                    CeL1::descent(l1)
                }
            };
            let plain = grads(&mut make(L1Schedule::None));
            let with = grads(&mut make(L1Schedule::Constant(a)));
            for ((name, g0), (_, g1)) in plain.iter().zip(&with) {
                let w = &model.parameters()[name];
                let diff = (g1 - g0 - w.sign() * a).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{name}: {diff}");
            }
            if ascent {
                let descent = grads(&mut CeL1::descent(L1Schedule::None));
                for ((name, ga), (_, gd)) in plain.iter().zip(&descent) {
                    assert!((ga + gd).abs().max().double_value(&[]) < 1e-6, "{name}");
                }
            }
        }
        let l1 = l1_norm(&model).unwrap().double_value(&[]);
        let by_hand: f64 = model
            .parameters()
            .values()
            .map(|p| p.abs().sum(Kind::Double).double_value(&[]))
            .sum();
        assert!((l1 - by_hand).abs() / by_hand < 1e-5);
    }
}
