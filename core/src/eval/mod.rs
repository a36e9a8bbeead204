//! Evaluation (SPEC §6). A model's outputs on each split are computed once ([`Outputs`]) and every
//! metric, accuracies and all MIA features, reads from them.

pub mod backdoor;
pub mod gap;
pub mod mia;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{index_tensor, Dataset};
use crate::forget::ForgetSet;
use crate::model::Model;

pub use mia::{MiaError, MiaFeature, MiaScore};

/// Logits and labels of a set of samples, on the CPU.
#[derive(Debug)]
pub struct Outputs {
    pub logits: Tensor,
    pub labels: Tensor,
}

impl Outputs {
    /// The model's logits on every sample of `data`, in eval mode, without gradients.
    pub fn compute(model: &Model, data: &Dataset, batch_size: usize) -> Outputs {
        let _g = tch::no_grad_guard();
        let n = data.len() as i64;
        let device = data.images.device();
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < n {
            let len = (batch_size as i64).min(n - start);
            let idx = Tensor::arange_start(start, start + len, (Kind::Int64, device));
            chunks.push(
                model
                    .forward_t(&data.batch_images(&idx), false)
                    .to_kind(Kind::Float),
            );
            start += len;
        }
        let logits = if chunks.is_empty() {
            Tensor::zeros([0, model.spec().classes as i64], (Kind::Float, device))
        } else {
            Tensor::cat(&chunks, 0)
        };
        Outputs {
            logits: logits.to_device(Device::Cpu),
            labels: data.labels.to_device(Device::Cpu),
        }
    }

    /// The rows at `positions`.
    pub fn select(&self, positions: &[usize]) -> Outputs {
        let idx = index_tensor(positions, Device::Cpu);
        Outputs {
            logits: self.logits.index_select(0, &idx),
            labels: self.labels.index_select(0, &idx),
        }
    }

    /// The first `n` rows.
    pub fn head(&self, n: usize) -> Outputs {
        Outputs {
            logits: self.logits.narrow(0, 0, n as i64),
            labels: self.labels.narrow(0, 0, n as i64),
        }
    }

    /// Rows from `start` to the end.
    pub fn tail_from(&self, start: usize) -> Outputs {
        let n = self.len() as i64 - start as i64;
        Outputs {
            logits: self.logits.narrow(0, start as i64, n),
            labels: self.labels.narrow(0, start as i64, n),
        }
    }

    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Top-1 accuracy in percent (NaN for an empty set).
    pub fn accuracy(&self) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        let correct = self
            .logits
            .argmax(1, false)
            .eq_tensor(&self.labels)
            .to_kind(Kind::Double);
        100.0 * correct.mean(Kind::Double).double_value(&[])
    }
}

/// A model's outputs on the three splits.
pub struct SplitOutputs {
    pub train: Outputs,
    pub val: Outputs,
    pub test: Outputs,
}

impl SplitOutputs {
    pub fn compute(
        model: &Model,
        train: &Dataset,
        val: &Dataset,
        test: &Dataset,
        batch_size: usize,
    ) -> Self {
        SplitOutputs {
            train: Outputs::compute(model, train, batch_size),
            val: Outputs::compute(model, val, batch_size),
            test: Outputs::compute(model, test, batch_size),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Run the membership-inference attacks (MIA-Efficacy and MIA-Privacy).
    pub mia: bool,
    /// Features to attack with; each gives its own score. The headline one is `confidence`.
    pub mia_features: Vec<MiaFeature>,
    /// Batch size of evaluation forward passes.
    #[schemars(range(min = 1))]
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            mia: true,
            mia_features: MiaFeature::ALL.to_vec(),
            batch_size: 1024,
        }
    }
}

/// Every number reported for one (model, forget set) pair. Accuracies in percent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    /// Unlearning accuracy: 100 - accuracy on `D_f`.
    pub ua: f64,
    /// Remaining accuracy: accuracy on `D_r`.
    pub ra: f64,
    /// Testing accuracy.
    pub ta: f64,
    pub val: f64,
    /// MIA-Efficacy per feature: share of `D_f` predicted non-member.
    pub mia_efficacy: BTreeMap<MiaFeature, MiaScore>,
    /// MIA-Privacy per feature: mean of target-member and target-non-member accuracy.
    pub mia_privacy: BTreeMap<MiaFeature, MiaScore>,
}

impl Metrics {
    /// The paper's headline MIA-Efficacy (confidence feature), if it was computed.
    pub fn mia(&self) -> Option<&MiaScore> {
        self.mia_efficacy.get(&MiaFeature::Confidence)
    }
}

/// All metrics for one model's outputs and one forget set.
pub fn evaluate(
    out: &SplitOutputs,
    forget: &ForgetSet,
    cfg: &EvalConfig,
) -> Result<Metrics, MiaError> {
    let f = out.train.select(&forget.forget);
    let r = out.train.select(&forget.retain);
    let mut m = Metrics {
        ua: 100.0 - f.accuracy(),
        ra: r.accuracy(),
        ta: out.test.accuracy(),
        val: out.val.accuracy(),
        mia_efficacy: BTreeMap::new(),
        mia_privacy: BTreeMap::new(),
    };
    if cfg.mia {
        for &feat in &cfg.mia_features {
            m.mia_efficacy
                .insert(feat, mia::efficacy(&r, &out.test, &f, feat)?);
            m.mia_privacy
                .insert(feat, mia::privacy(&r, &out.test, feat)?);
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_on_crafted_logits() {
        let logits = Tensor::from_slice(&[
            2.0f32, 1.0, 0.0, // argmax 0
            0.0, 3.0, 1.0, // 1
            0.0, 1.0, 5.0, // 2
            4.0, 0.0, 0.0, // 0
        ])
        .view([4, 3]);
        let o = Outputs {
            logits,
            labels: Tensor::from_slice(&[0i64, 1, 1, 2]),
        };
        assert_eq!(o.accuracy(), 50.0);
        assert_eq!(o.select(&[0, 1]).accuracy(), 100.0);
        assert_eq!(o.select(&[2, 3]).accuracy(), 0.0);
        assert!((o.head(3).accuracy() - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(o.tail_from(1).len(), 3);
        assert!(o.select(&[]).accuracy().is_nan());
    }
}
