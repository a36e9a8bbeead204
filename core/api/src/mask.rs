//! Sparsity masks: a 0/1 tensor per pruned parameter. Which parameters a pruner prunes
//! is its [`Prunable`] selection: every convolution weight by default (the paper's), or linear
//! weights too; biases and BatchNorm (1-D) always stay dense. While a mask is active, core
//! re-applies it after every optimizer step, so masked weights stay exactly 0 whatever a method
//! does.

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use crate::model::Model;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MaskError {
    #[error(
        "mask has `{0}`, which is not a weight of the model that can be pruned (a conv or linear weight)"
    )]
    UnknownParameter(String),
    #[error("mask for `{name}` has shape {mask:?}, the parameter {param:?}")]
    Shape {
        name: String,
        mask: Vec<i64>,
        param: Vec<i64>,
    },
    #[error("mask for `{0}` has values other than 0 and 1")]
    NotBinary(String),
    #[error("sparsity {0} is outside [0, 1)")]
    Sparsity(f64),
    #[error("scores for `{0}` are missing or not finite")]
    Scores(String),
}

pub use crate::model::Prunable;

#[derive(Debug)]
pub struct Mask {
    masks: BTreeMap<String, Tensor>,
}

impl Clone for Mask {
    fn clone(&self) -> Self {
        Mask {
            masks: self
                .masks
                .iter()
                .map(|(k, t)| (k.clone(), t.copy()))
                .collect(),
        }
    }
}

impl Mask {
    /// A mask that keeps everything, over the model's prunable parameters (its conv weights).
    pub fn dense(model: &Model) -> Mask {
        Mask::dense_over(model, Prunable::Conv)
    }

    /// A mask that keeps everything, over the parameters `prunable` selects.
    pub fn dense_over(model: &Model, prunable: Prunable) -> Mask {
        Mask {
            masks: prunable
                .select(model)
                .into_iter()
                .map(|(k, t)| (k, t.ones_like().detach()))
                .collect(),
        }
    }

    /// Builds a mask from 0/1 tensors, checking names, shapes and values against the model. Any
    /// conv or linear weight may be masked ([`Prunable::ConvLinear`]); a bias or BatchNorm
    /// parameter may not.
    pub fn from_tensors(model: &Model, masks: BTreeMap<String, Tensor>) -> Result<Mask, MaskError> {
        let params = Prunable::ConvLinear.select(model);
        for (name, m) in &masks {
            let p = params
                .get(name)
                .ok_or_else(|| MaskError::UnknownParameter(name.clone()))?;
            if p.size() != m.size() {
                return Err(MaskError::Shape {
                    name: name.clone(),
                    mask: m.size(),
                    param: p.size(),
                });
            }
            let binary = m.eq(0.0).logical_or(&m.eq(1.0)).all().int64_value(&[]) != 0;
            if !binary {
                return Err(MaskError::NotBinary(name.clone()));
            }
        }
        let device = model.device();
        Ok(Mask {
            masks: masks
                .into_iter()
                .map(|(k, t)| (k, t.to_kind(Kind::Float).to_device(device)))
                .collect(),
        })
    }

    /// Keeps the highest-scoring weights over all parameters at once (global, unstructured) and
    /// zeroes exactly `round(sparsity * total)` of them. Entries already zero in `current` are
    /// pruned first (so iterative pruning never revives a weight). Ties break by position.
    pub fn from_scores(
        scores: &BTreeMap<String, Tensor>,
        current: Option<&Mask>,
        sparsity: f64,
    ) -> Result<Mask, MaskError> {
        if !(0.0..1.0).contains(&sparsity) {
            return Err(MaskError::Sparsity(sparsity));
        }
        let _g = tch::no_grad_guard();
        let mut flat = Vec::with_capacity(scores.len());
        for (name, s) in scores {
            let s = s.detach().to_kind(Kind::Double).flatten(0, -1);
            if s.isfinite().all().int64_value(&[]) == 0 {
                return Err(MaskError::Scores(name.clone()));
            }
            // Already-pruned entries sort before every real score.
            let s = match current.and_then(|c| c.masks.get(name)) {
                Some(m) => s.where_self(
                    &m.flatten(0, -1).to_kind(Kind::Double).ne(0.0),
                    &Tensor::from(-1.0f64),
                ),
                None => s,
            };
            flat.push(s);
        }
        let all = Tensor::cat(&flat, 0);
        let total = all.size()[0];
        let k = (sparsity * total as f64).round() as i64;
        let order = all.argsort_stable(true, 0, false);
        let keep = Tensor::ones([total], (Kind::Float, all.device()));
        let keep = keep.index_fill(0, &order.narrow(0, 0, k), 0.0);
        let mut masks = BTreeMap::new();
        let mut offset = 0;
        for (name, s) in scores {
            let n = s.numel() as i64;
            masks.insert(
                name.clone(),
                keep.narrow(0, offset, n).view_as(s).to_device(s.device()),
            );
            offset += n;
        }
        Ok(Mask { masks })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.masks.keys().map(|s| s.as_str())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.masks.get(name)
    }

    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.masks
    }

    /// Number of pruned (zero) entries.
    pub fn zeros(&self) -> i64 {
        self.masks
            .values()
            .map(|m| m.eq(0.0).sum(Kind::Int64).int64_value(&[]))
            .sum()
    }

    pub fn total(&self) -> i64 {
        self.masks.values().map(|m| m.numel() as i64).sum()
    }

    /// Share of pruned weights over all pruned parameters.
    pub fn sparsity(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            0.0
        } else {
            self.zeros() as f64 / total as f64
        }
    }

    /// `w *= m` for every masked parameter: the invariant core enforces after every step.
    pub fn apply(&self, model: &Model) {
        let _g = tch::no_grad_guard();
        let params = model.parameters();
        for (name, m) in &self.masks {
            if let Some(w) = params.get(name) {
                let mut w = w.shallow_clone();
                w *= m;
            }
        }
    }

    /// `grad *= m`, so momentum never accumulates for pruned weights.
    pub fn apply_to_grads(&self, model: &Model) {
        let _g = tch::no_grad_guard();
        let params = model.parameters();
        for (name, m) in &self.masks {
            if let Some(w) = params.get(name) {
                let mut g = w.grad();
                if g.defined() {
                    g *= m;
                }
            }
        }
    }

    /// Number of pruned positions whose weight is not exactly 0 (0 when the invariant holds).
    pub fn violations(&self, model: &Model) -> i64 {
        let params = model.parameters();
        self.masks
            .iter()
            .map(|(name, m)| {
                params[name]
                    .detach()
                    .ne(0.0)
                    .logical_and(&m.eq(0.0))
                    .sum(Kind::Int64)
                    .int64_value(&[])
            })
            .sum()
    }

    pub fn to_device(&self, device: Device) -> Mask {
        Mask {
            masks: self
                .masks
                .iter()
                .map(|(k, t)| (k.clone(), t.to_device(device)))
                .collect(),
        }
    }
}

/// Magnitude scores `|w|` of the model's prunable weights (its conv weights; OMP, IMP).
pub fn magnitude_scores(model: &Model) -> BTreeMap<String, Tensor> {
    magnitude_scores_of(model, Prunable::Conv)
}

/// Magnitude scores `|w|` of the weights `prunable` selects.
pub fn magnitude_scores_of(model: &Model, prunable: Prunable) -> BTreeMap<String, Tensor> {
    prunable
        .select(model)
        .into_iter()
        .map(|(k, t)| (k, t.detach().abs()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny_spec;

    #[test]
    fn global_magnitude_prunes_exactly_the_smallest() {
        let mut scores = BTreeMap::new();
        scores.insert(
            "a".to_string(),
            Tensor::from_slice(&[0.5f32, 0.1, 0.9, 0.3]),
        );
        scores.insert(
            "b".to_string(),
            Tensor::from_slice(&[0.2f32, 0.8]).view([1, 2]),
        );
        let m = Mask::from_scores(&scores, None, 0.5).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(m.get("a").unwrap()).unwrap(),
            vec![1.0, 0.0, 1.0, 0.0]
        );
        assert_eq!(
            Vec::<f32>::try_from(m.get("b").unwrap().flatten(0, -1)).unwrap(),
            vec![0.0, 1.0]
        );
        assert_eq!(m.get("b").unwrap().size(), vec![1, 2]);
        assert_eq!((m.zeros(), m.total()), (3, 6));
        // Iterative: pruned entries stay pruned even when their score is now large.
        let mut rescored: BTreeMap<String, Tensor> =
            scores.iter().map(|(k, v)| (k.clone(), v.copy())).collect();
        rescored.insert(
            "a".to_string(),
            Tensor::from_slice(&[0.5f32, 5.0, 0.9, 5.0]),
        );
        let m2 = Mask::from_scores(&rescored, Some(&m), 4.0 / 6.0).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(m2.get("a").unwrap()).unwrap(),
            vec![0.0, 0.0, 1.0, 0.0]
        );
        assert!(Mask::from_scores(&scores, None, 1.0).is_err());
    }

    #[test]
    fn sparsity_is_exact_to_the_weight_count_on_a_model() {
        let model = Model::new(tiny_spec(10), Device::Cpu, 0).unwrap();
        let total: i64 = model.prunable().values().map(|t| t.numel() as i64).sum();
        for p in [0.0, 0.5, 0.95, 0.999] {
            let m = Mask::from_scores(&magnitude_scores(&model), None, p).unwrap();
            assert_eq!(m.zeros(), (p * total as f64).round() as i64);
            assert_eq!(m.total(), total);
        }
    }

    #[test]
    fn apply_zeroes_and_violations_count() {
        let model = Model::new(tiny_spec(3), Device::Cpu, 0).unwrap();
        let m = Mask::from_scores(&magnitude_scores(&model), None, 0.7).unwrap();
        assert!(m.violations(&model) > 0);
        m.apply(&model);
        assert_eq!(m.violations(&model), 0);
        let zeros: i64 = model
            .prunable()
            .values()
            .map(|t| t.eq(0.0).sum(Kind::Int64).int64_value(&[]))
            .sum();
        assert_eq!(zeros, m.zeros());
    }

    /// The default selection (`conv`) is the old one, 4-D parameters only, on every built-in
    /// architecture, so masks and results do not change.
    #[test]
    fn the_default_selection_is_the_old_conv_selection() {
        assert_eq!(Prunable::default(), Prunable::Conv);
        for arch in crate::model::Arch::BUILTIN {
            let input = if arch == crate::model::Arch::SmallCnn {
                [1, 8, 8]
            } else {
                [3, 32, 32]
            };
            let spec = crate::testing::spec(arch, input, 10);
            let model = Model::new(spec, Device::Cpu, 0).unwrap();
            let old: Vec<String> = model
                .parameters()
                .into_iter()
                .filter(|(_, t)| t.dim() == 4)
                .map(|(k, _)| k)
                .collect();
            let new: Vec<String> = Prunable::Conv.select(&model).into_keys().collect();
            assert_eq!(new, old, "{arch}");
            assert_eq!(model.prunable().into_keys().collect::<Vec<_>>(), old);
            let dense = Mask::dense(&model);
            assert_eq!(dense.names().collect::<Vec<_>>(), old, "{arch}");
            // conv+linear adds exactly the 2-D weights; nothing 1-D is ever selected.
            let both = Prunable::ConvLinear.select(&model);
            let linear = Prunable::Linear.select(&model);
            assert_eq!(both.len(), old.len() + linear.len(), "{arch}");
            assert!(
                linear
                    .keys()
                    .any(|k| k == &format!("{}.weight", model.classifier()))
            );
            assert!(both.values().all(|t| t.dim() >= 2), "{arch}");
        }
    }

    #[test]
    fn prunable_names_are_the_configs() {
        for (p, name) in [
            (Prunable::Conv, "conv"),
            (Prunable::Linear, "linear"),
            (Prunable::ConvLinear, "conv+linear"),
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), name);
            assert_eq!(serde_json::from_value::<Prunable>(name.into()).unwrap(), p);
            assert_eq!(p.to_string(), name);
        }
        assert!(serde_json::from_value::<Prunable>("bias".into()).is_err());
    }

    #[test]
    fn from_tensors_checks_names_shapes_values() {
        let model = Model::new(tiny_spec(3), Device::Cpu, 0).unwrap();
        let mut t = BTreeMap::new();
        t.insert(
            "bn1.weight".to_string(),
            Tensor::ones([32], (Kind::Float, Device::Cpu)),
        );
        assert_eq!(
            Mask::from_tensors(&model, t).unwrap_err(),
            MaskError::UnknownParameter("bn1.weight".into())
        );
        let mut t = BTreeMap::new();
        t.insert(
            "fc.weight".to_string(),
            Tensor::ones([3, 128], (Kind::Float, Device::Cpu)),
        );
        assert!(Mask::from_tensors(&model, t).is_ok());
        let mut t = BTreeMap::new();
        t.insert(
            "conv1.weight".to_string(),
            Tensor::ones([2, 2], (Kind::Float, Device::Cpu)),
        );
        assert!(matches!(
            Mask::from_tensors(&model, t),
            Err(MaskError::Shape { .. })
        ));
        let mut t = BTreeMap::new();
        t.insert(
            "conv1.weight".to_string(),
            Tensor::full([32, 1, 3, 3], 0.5, (Kind::Float, Device::Cpu)),
        );
        assert_eq!(
            Mask::from_tensors(&model, t).unwrap_err(),
            MaskError::NotBinary("conv1.weight".into())
        );
    }
}
