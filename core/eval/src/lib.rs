//! `unlearn-eval`: the metrics of an unlearning run. A model's outputs on each split are computed once ([`Outputs`]) and every
//! metric, accuracies and all MIA features, reads from them.

pub mod backdoor;
pub mod gap;
pub mod mia;

// Module paths shared with the rest of unlearn (`crate::model::Model`).
use unlearn_api::{data, forget, method, model};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{Dataset, index_tensor};
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

    /// The rows whose label is not `class`, in order (the test set of class-wise forgetting).
    pub fn without_class(&self, class: usize) -> Outputs {
        let keep = self.labels.ne(class as i64).nonzero().squeeze_dim(1);
        Outputs {
            logits: self.logits.index_select(0, &keep),
            labels: self.labels.index_select(0, &keep),
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
    #[schemars(range(min = 1, max = 1_048_576))]
    pub batch_size: usize,
    /// Registered metrics to compute for every row besides UA, RA, TA and MIA (`unlearn list
    /// --kind metric`), e.g. `["forget_kl"]`; each adds columns to the reports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("uniqueItems" = true))]
    pub metrics: Vec<String>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            mia: true,
            mia_features: MiaFeature::ALL.to_vec(),
            batch_size: 1024,
            metrics: Vec::new(),
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
    /// Testing accuracy, the headline TA. In class-wise forgetting it is measured, as in the
    /// reference code, on the test samples of the other classes only (the forgotten class has
    /// no right answer left); otherwise on the whole test set.
    pub ta: f64,
    /// Accuracy on the whole test set, forgotten class included (equals `ta` except in
    /// class-wise forgetting).
    pub ta_full: f64,
    /// Accuracy on the validation split: NaN (`null` in JSON) when there is none.
    #[serde(with = "unlearn_api::io::nan_as_null")]
    pub val: f64,
    /// MIA-Efficacy per feature: share of `D_f` predicted non-member.
    pub mia_efficacy: BTreeMap<MiaFeature, MiaScore>,
    /// MIA-Privacy per feature: mean of target-member and target-non-member accuracy.
    pub mia_privacy: BTreeMap<MiaFeature, MiaScore>,
    /// With an `[attack]`: the attack success rate over every triggered test image (as the
    /// reference code reports it), in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asr: Option<f64>,
    /// The same over the test images whose true class is not the attack's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asr_non_target: Option<f64>,
}

impl Metrics {
    /// The paper's headline MIA-Efficacy (confidence feature), if it was computed.
    pub fn mia(&self) -> Option<&MiaScore> {
        self.mia_efficacy.get(&MiaFeature::Confidence)
    }
}

impl Outputs {
    /// As the metric registry's type (`unlearn_api::metric`), sharing the tensors.
    pub fn to_set(&self) -> unlearn_api::metric::SetOutputs {
        unlearn_api::metric::SetOutputs {
            logits: self.logits.shallow_clone(),
            labels: self.labels.shallow_clone(),
        }
    }
}

/// A model's outputs on one forget set's rows, as the metric registry reads them: `D_f`, `D_r`,
/// the whole test set, the validation set.
pub fn metric_outputs(out: &SplitOutputs, forget: &ForgetSet) -> unlearn_api::metric::ModelOutputs {
    unlearn_api::metric::ModelOutputs {
        forget: out.train.select(&forget.forget).to_set(),
        retain: out.train.select(&forget.retain).to_set(),
        test: out.test.to_set(),
        val: out.val.to_set(),
    }
}

/// The class that class-wise forgetting removes from the test set, if any: the set's `class`,
/// which a scenario may give only when it forgets every training sample of that class (the
/// scenario registry checks it). Scenarios that forget part of a class (`subclass`), random
/// samples or listed rows keep the whole test set.
pub fn class_removed_from_test(forget: &ForgetSet) -> Option<usize> {
    forget.class
}

/// All metrics for one model's outputs and one forget set. The test set of class-wise
/// forgetting lacks the forgotten class: TA and both MIA attacks' shadow non-members use the
/// remaining test samples (the reference code's evaluation).
pub fn evaluate(
    out: &SplitOutputs,
    forget: &ForgetSet,
    cfg: &EvalConfig,
) -> Result<Metrics, MiaError> {
    let f = out.train.select(&forget.forget);
    let r = out.train.select(&forget.retain);
    let reduced;
    let test = match class_removed_from_test(forget) {
        Some(c) => {
            reduced = out.test.without_class(c);
            &reduced
        }
        None => &out.test,
    };
    let mut m = Metrics {
        ua: 100.0 - f.accuracy(),
        ra: r.accuracy(),
        ta: test.accuracy(),
        ta_full: out.test.accuracy(),
        val: out.val.accuracy(),
        mia_efficacy: BTreeMap::new(),
        mia_privacy: BTreeMap::new(),
        asr: None,
        asr_non_target: None,
    };
    if cfg.mia {
        for &feat in &cfg.mia_features {
            m.mia_efficacy
                .insert(feat, mia::efficacy(&r, test, &f, feat)?);
            m.mia_privacy.insert(feat, mia::privacy(&r, test, feat)?);
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
    /// Logits that predict `pred` with probability `conf` (the rest spread evenly), 3 classes.
    fn rows(spec: &[(i64, usize, f64)]) -> Outputs {
        let mut flat = Vec::new();
        let mut labels = Vec::new();
        for &(label, pred, conf) in spec {
            for k in 0..3 {
                let p = if k == pred { conf } else { (1.0 - conf) / 2.0 };
                flat.push(p.ln() as f32);
            }
            labels.push(label);
        }
        Outputs {
            logits: Tensor::from_slice(&flat).view([spec.len() as i64, 3]),
            labels: Tensor::from_slice(&labels),
        }
    }

    /// Class-wise forgetting of class 2: TA counts only the test samples of classes 0 and 1,
    /// `ta_full` all of them, and the MIA shadow non-members come from the reduced test set.
    #[test]
    fn class_wise_test_set_drops_the_forgotten_class() {
        // train: 0..6 retain (classes 0, 1, all right and confident), 6..9 the class to forget.
        let mut train = vec![(0, 0, 0.95); 3];
        train.extend([(1, 1, 0.95); 3]);
        train.extend([(2, 2, 0.95); 3]);
        // test: 4 of class 0 (3 right), 2 of class 1 (both wrong), 4 of class 2 (all right).
        let test_spec = [
            (0, 0, 0.4),
            (2, 2, 0.4),
            (0, 0, 0.4),
            (0, 1, 0.4),
            (2, 2, 0.4),
            (1, 0, 0.4),
            (0, 0, 0.4),
            (2, 2, 0.4),
            (1, 2, 0.4),
            (2, 2, 0.4),
        ];
        let out = SplitOutputs {
            train: rows(&train),
            val: rows(&[(0, 0, 0.9)]),
            test: rows(&test_spec),
        };
        let forget = ForgetSet {
            name: "class-2".into(),
            kind: "class".into(),
            class: Some(2),
            forget: vec![6, 7, 8],
            retain: (0..6).collect(),
        };
        let cfg = EvalConfig {
            mia_features: vec![MiaFeature::Confidence],
            ..EvalConfig::default()
        };
        let m = evaluate(&out, &forget, &cfg).unwrap();
        // classes 0 and 1: 6 samples, 3 right.
        assert_eq!(m.ta, 50.0);
        // all 10: 3 + 4 right.
        assert_eq!(m.ta_full, 70.0);
        assert_eq!((m.ua, m.ra, m.val), (0.0, 100.0, 100.0));
        // Efficacy: n = min(|D_r| = 6, |reduced test| = 6); privacy: n = 6 / 2 = 3.
        let e = &m.mia_efficacy[&MiaFeature::Confidence];
        assert_eq!((e.shadow_members, e.shadow_nonmembers), (6, 6));
        let p = &m.mia_privacy[&MiaFeature::Confidence];
        assert_eq!((p.shadow_members, p.shadow_nonmembers), (3, 3));
        // The forget set is as confident as the retain set: predicted member, efficacy 0.
        assert_eq!(e.value, 0.0);

        // The same outputs under random forgetting of the same rows keep the whole test set.
        let random = ForgetSet {
            kind: "random".into(),
            class: None,
            ..forget
        };
        let m = evaluate(&out, &random, &cfg).unwrap();
        assert_eq!((m.ta, m.ta_full), (70.0, 70.0));
        let e = &m.mia_efficacy[&MiaFeature::Confidence];
        assert_eq!((e.shadow_members, e.shadow_nonmembers), (6, 6));
        assert_eq!(m.mia_privacy[&MiaFeature::Confidence].shadow_nonmembers, 3);
    }

    #[test]
    fn without_class_keeps_order() {
        let o = rows(&[(0, 0, 0.5), (1, 1, 0.5), (0, 1, 0.5), (2, 2, 0.5)]);
        let r = o.without_class(0);
        assert_eq!(Vec::<i64>::try_from(&r.labels).unwrap(), vec![1, 2]);
        assert_eq!(r.accuracy(), 100.0);
        assert_eq!(o.without_class(5).len(), 4);
    }
}
