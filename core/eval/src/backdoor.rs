//! Backdoor metrics and data (the paper's Trojan cleanse): the attack success rate of a triggered test set, and the
//! training set with an attack's poisoned rows in place.

use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::data::{Dataset, index_tensor};
use crate::method::{Attack, MethodError, Poisoning};
use crate::model::Model;

/// Attack success rate in percent: the share of triggered test images the model classifies as
/// the attack's target class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Asr {
    /// Over every test image (as the reference reports it; images of the target class count as
    /// successes when still classified as it). NaN for an empty test set.
    pub all: f64,
    /// Over the test images whose true class is not the target. NaN when there are none.
    pub non_target: f64,
}

/// Stamps `attack`'s trigger on every image of `test` and counts how many `model` classifies as
/// the target class (eval mode, no gradients, in batches of `batch_size`).
pub fn attack_success_rate(
    model: &Model,
    test: &Dataset,
    attack: &dyn Attack,
    batch_size: usize,
) -> Result<Asr, MethodError> {
    if batch_size == 0 {
        return Err(MethodError::Failed(
            "attack success rate: batch_size must be at least 1".into(),
        ));
    }
    let target = attack.target();
    let classes = model.spec().classes;
    if target >= classes {
        return Err(MethodError::Failed(format!(
            "attack success rate: the attack's target class {target} is not one of the model's \
             {classes} classes"
        )));
    }
    let _g = tch::no_grad_guard();
    let n = test.len() as i64;
    let device = model.device();
    let t = target as i64;
    let (mut hits, mut non_target, mut non_target_hits) = (0i64, 0i64, 0i64);
    let mut start = 0;
    while start < n {
        let len = (batch_size as i64).min(n - start);
        let clean = test.images.f_narrow(0, start, len)?;
        let triggered = attack.trigger(&clean)?;
        if triggered.size() != clean.size() || triggered.kind() != clean.kind() {
            return Err(MethodError::Failed(format!(
                "attack success rate: the trigger turned a {:?} batch of shape {:?} into a {:?} \
                 batch of shape {:?}",
                clean.kind(),
                clean.size(),
                triggered.kind(),
                triggered.size()
            )));
        }
        let x = triggered.f_to_kind(Kind::Float)?.f_to_device(device)? / test.max_value;
        let pred = model.forward_t(&x, false).f_argmax(1, false)?;
        let hit = pred.f_eq(t)?;
        let other = test
            .labels
            .f_narrow(0, start, len)?
            .f_to_device(device)?
            .f_ne(t)?;
        hits += hit.f_sum(Kind::Int64)?.int64_value(&[]);
        non_target += other.f_sum(Kind::Int64)?.int64_value(&[]);
        non_target_hits += hit
            .f_logical_and(&other)?
            .f_sum(Kind::Int64)?
            .int64_value(&[]);
        start += len;
    }
    let pct = |k: i64, of: i64| {
        if of == 0 {
            f64::NAN
        } else {
            100.0 * k as f64 / of as f64
        }
    };
    Ok(Asr {
        all: pct(hits, n),
        non_target: pct(non_target_hits, non_target),
    })
}

pub use unlearn_api::method::poisoning_issues;

impl Asr {
    /// Into `metrics` (percentages; an undefined rate, NaN, is left out).
    pub fn record(&self, metrics: &mut crate::Metrics) {
        let finite = |v: f64| v.is_finite().then_some(v);
        metrics.asr = finite(self.all);
        metrics.asr_non_target = finite(self.non_target);
    }
}

/// A copy of `train` with the rows of `p` replaced by the poisoned images and labels (same
/// metadata, same device; `train` itself is unchanged).
pub fn apply_poisoning(train: &Dataset, p: &Poisoning) -> Result<Dataset, MethodError> {
    let issues = poisoning_issues(train, p);
    if !issues.is_empty() {
        return Err(MethodError::Failed(format!(
            "invalid poisoning of `{}`: {}",
            train.name,
            issues.join("; ")
        )));
    }
    let all: Vec<usize> = (0..train.len()).collect();
    // A copy with the same metadata; its tensors are fresh, so they can be written in place.
    let mut out = train.subset(&all);
    let idx = index_tensor(&p.rows, train.images.device());
    let _g = tch::no_grad_guard();
    out.images = out.images.f_index_copy(0, &idx, &p.images)?;
    out.labels = out.labels.f_index_copy(0, &idx, &p.labels)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{SyntheticConfig, synthetic};
    use crate::model::{Arch, ModelSpec};
    use tch::{Device, Tensor};

    /// Sets pixel (0, 0) of every channel to the maximum value; target class 2.
    struct Corner;

    impl Attack for Corner {
        fn poison(&self, _: &crate::method::AttackCtx<'_>) -> Result<Poisoning, MethodError> {
            unreachable!("not used here")
        }
        fn trigger(&self, images: &Tensor) -> Result<Tensor, MethodError> {
            let out = images.copy();
            let _ = out.narrow(2, 0, 1).narrow(3, 0, 1).fill_(16);
            Ok(out)
        }
        fn target(&self) -> usize {
            2
        }
    }

    fn data(samples: usize) -> Dataset {
        synthetic(&SyntheticConfig {
            samples,
            classes: 4,
            seed: 2,
            ..Default::default()
        })
        .unwrap()
    }

    fn model(d: &Dataset, seed: u64) -> Model {
        let spec = ModelSpec {
            arch: Arch::SmallCnn,
            input: d.image_shape(),
            classes: 4,
            mean: d.mean.clone(),
            std: d.std.clone(),
        };
        Model::new(spec, Device::Cpu, seed).unwrap()
    }

    /// Whether `a` and `b` hold the same values (same shape and dtype).
    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.size() == b.size() && a.kind() == b.kind() && a.equal(b)
    }

    /// ASR counted one image at a time, independently of the batched code.
    fn manual(model: &Model, d: &Dataset, attack: &dyn Attack) -> (f64, f64) {
        let t = attack.target() as i64;
        let labels = d.labels_vec();
        let (mut hits, mut nt, mut nt_hits) = (0, 0, 0);
        for (i, &y) in labels.iter().enumerate() {
            let img = d.images.narrow(0, i as i64, 1);
            let x = attack.trigger(&img).unwrap().to_kind(Kind::Float) / d.max_value;
            let logits = Vec::<f32>::try_from(model.forward_t(&x, false).flatten(0, -1)).unwrap();
            let best = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                .unwrap() as i64;
            hits += (best == t) as i32;
            if y != t {
                nt += 1;
                nt_hits += (best == t) as i32;
            }
        }
        (
            100.0 * hits as f64 / labels.len() as f64,
            100.0 * nt_hits as f64 / nt as f64,
        )
    }

    #[test]
    fn asr_matches_a_count_one_image_at_a_time() {
        let d = data(90);
        for seed in 0..4 {
            let m = model(&d, seed);
            let (all, non_target) = manual(&m, &d, &Corner);
            for batch in [1, 7, 90, 1000] {
                let a = attack_success_rate(&m, &d, &Corner, batch).unwrap();
                assert!((a.all - all).abs() < 1e-9, "{a:?} vs {all}");
                assert!(
                    (a.non_target - non_target).abs() < 1e-9,
                    "{a:?} vs {non_target}"
                );
            }
        }
    }

    #[test]
    fn asr_of_a_model_whose_predictions_are_fixed() {
        let d = data(60);
        let counts = d.class_counts();
        let m = model(&d, 0);
        let mut p = m.parameters();
        let _g = tch::no_grad_guard();
        let _ = p.get_mut("fc.weight").unwrap().zero_();
        for predicted in 0..4i64 {
            let bias = Tensor::zeros([4], (Kind::Float, Device::Cpu));
            let _ = bias.narrow(0, predicted, 1).fill_(10.0);
            p.get_mut("fc.bias").unwrap().copy_(&bias);
            let a = attack_success_rate(&m, &d, &Corner, 16).unwrap();
            if predicted == 2 {
                assert_eq!(a.all, 100.0);
                assert_eq!(a.non_target, 100.0);
            } else {
                assert_eq!(a.all, 0.0);
                assert_eq!(a.non_target, 0.0);
            }
        }
        assert!(
            counts[2] > 0 && counts[2] < d.len(),
            "both kinds of samples are counted"
        );
        let empty = d.subset(&[]);
        let a = attack_success_rate(&m, &empty, &Corner, 8).unwrap();
        assert!(a.all.is_nan() && a.non_target.is_nan());
        let only_target: Vec<usize> = d
            .labels_vec()
            .iter()
            .enumerate()
            .filter(|&(_, &y)| y == 2)
            .map(|(i, _)| i)
            .collect();
        let a = attack_success_rate(&m, &d.subset(&only_target), &Corner, 8).unwrap();
        assert!(a.non_target.is_nan(), "{a:?}");
        assert!(attack_success_rate(&m, &d, &Corner, 0).is_err());
    }

    #[test]
    fn apply_poisoning_replaces_exactly_those_rows() {
        let d = data(40);
        let rows = vec![1usize, 4, 7, 39];
        let images = Tensor::full([4, 1, 8, 8], 16, (Kind::Uint8, Device::Cpu));
        let _ = images.narrow(0, 2, 1).fill_(3);
        let p = Poisoning {
            rows: rows.clone(),
            images,
            labels: Tensor::from_slice(&[3i64, 3, 0, 3]),
        };
        let before_images = d.images.copy();
        let before_labels = d.labels_vec();
        let out = apply_poisoning(&d, &p).unwrap();
        assert!(d.images.equal(&before_images), "train is unchanged");
        assert_eq!(d.labels_vec(), before_labels);
        assert_eq!(out.len(), d.len());
        assert_eq!(out.classes, d.classes);
        assert_eq!(out.mean, d.mean);
        assert_eq!(out.max_value, d.max_value);
        let labels = out.labels_vec();
        for i in 0..d.len() {
            let got = out.images.narrow(0, i as i64, 1);
            match rows.iter().position(|&r| r == i) {
                Some(k) => {
                    assert!(same(&got, &p.images.narrow(0, k as i64, 1)), "row {i}");
                    assert_eq!(labels[i], [3, 3, 0, 3][k]);
                }
                None => {
                    assert!(same(&got, &d.images.narrow(0, i as i64, 1)), "row {i}");
                    assert_eq!(labels[i], before_labels[i]);
                }
            }
        }
    }

    #[test]
    fn apply_poisoning_rejects_malformed_poisonings() {
        let d = data(40);
        let ok = || Poisoning {
            rows: vec![2, 5],
            images: Tensor::zeros([2, 1, 8, 8], (Kind::Uint8, Device::Cpu)),
            labels: Tensor::from_slice(&[1i64, 1]),
        };
        assert!(apply_poisoning(&d, &ok()).is_ok());
        let err = |p: Poisoning| apply_poisoning(&d, &p).unwrap_err().to_string();
        let e = err(Poisoning {
            rows: vec![5, 2],
            ..ok()
        });
        assert!(e.contains("strictly increasing"), "{e}");
        let e = err(Poisoning {
            rows: vec![2, 40],
            ..ok()
        });
        assert!(e.contains("row 40"), "{e}");
        let e = err(Poisoning {
            images: Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu)),
            ..ok()
        });
        assert!(e.contains("Float"), "{e}");
        let e = err(Poisoning {
            images: Tensor::zeros([3, 1, 8, 8], (Kind::Uint8, Device::Cpu)),
            ..ok()
        });
        assert!(e.contains("shape"), "{e}");
        let e = err(Poisoning {
            labels: Tensor::from_slice(&[1i64, 4]),
            ..ok()
        });
        assert!(e.contains("label 4"), "{e}");
        let e = err(Poisoning {
            labels: Tensor::from_slice(&[1i32, 1]),
            ..ok()
        });
        assert!(e.contains("Int64"), "{e}");
    }
}
