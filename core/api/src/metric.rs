//! Metrics as a registry: a metric reads model outputs (logits and labels on the forget,
//! retain, test and validation sets) of a row's unlearned model, and optionally those of the
//! original and of the retrained model of the same scenario and model, and returns named
//! numbers. A config asks for metrics by name (`[eval] metrics = ["forget_kl"]`); each value
//! becomes a column of results.csv, results.json (`rows[].extra`) and report.md. The built-in
//! UA / RA / TA / MIA are computed by `unlearn-eval` as before and are not metrics of this
//! registry.
//!
//! ```ignore
//! pub struct ForgetLoss;
//! impl unlearn_api::metric::Metric for ForgetLoss {
//!     const NAME: &'static str = "forget_loss";
//!     const SUMMARY: &'static str = "mean cross-entropy on the forget set";
//!     const NEEDS: Needs = Needs::NOTHING;
//!     fn compute(input: &MetricInput<'_>) -> Result<Values, String> {
//!         let f = &input.unlearned.forget;
//!         let loss = f.logits.cross_entropy_for_logits(&f.labels).double_value(&[]);
//!         Ok(Values::from([(String::new(), loss)]))
//!     }
//! }
//! unlearn_api::register_metric!(ForgetLoss);
//! ```

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::forget::ForgetSet;

/// Logits `[N, classes]` (f32) and labels `[N]` (i64) of one set of samples, on the CPU.
#[derive(Debug)]
pub struct SetOutputs {
    pub logits: Tensor,
    pub labels: Tensor,
}

/// One model's outputs on the four sets of a row: `D_f`, `D_r` (positions of the train split,
/// in increasing order), the whole test set and the validation set.
#[derive(Debug)]
pub struct ModelOutputs {
    pub forget: SetOutputs,
    pub retain: SetOutputs,
    pub test: SetOutputs,
    pub val: SetOutputs,
}

/// Which outputs besides the unlearned model's a metric reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Needs {
    /// The original model's (before unlearning).
    pub original: bool,
    /// The `retrain` row's of the same scenario and model: a config asking for the metric must
    /// run `retrain` (validation says so).
    pub retrained: bool,
}

impl Needs {
    pub const NOTHING: Needs = Needs {
        original: false,
        retrained: false,
    };
}

/// What a metric sees for one row.
pub struct MetricInput<'a> {
    /// The row's model: the unlearned one (the original itself on the `original` row, the
    /// retrained one on the `retrain` row).
    pub unlearned: &'a ModelOutputs,
    /// Present when the metric needs it.
    pub original: Option<&'a ModelOutputs>,
    /// Present when the metric needs it.
    pub retrained: Option<&'a ModelOutputs>,
    pub forget: &'a ForgetSet,
}

/// Named numbers: the key `""` is the metric's own column (named after the metric); any other
/// key `k` becomes the column `<metric>.<k>`.
pub type Values = BTreeMap<String, f64>;

/// A metric: what a plugin author implements.
pub trait Metric: 'static {
    const NAME: &'static str;
    const SUMMARY: &'static str;
    const NEEDS: Needs;
    fn compute(input: &MetricInput<'_>) -> Result<Values, String>;
}

/// A statically registered metric (collected with `inventory`).
pub struct BuiltinMetric {
    pub name: &'static str,
    pub summary: &'static str,
    pub krate: &'static str,
    pub needs: Needs,
    compute: fn(&MetricInput<'_>) -> Result<Values, String>,
}

inventory::collect!(BuiltinMetric);

impl BuiltinMetric {
    pub const fn of<M: Metric>(krate: &'static str) -> BuiltinMetric {
        BuiltinMetric {
            name: M::NAME,
            summary: M::SUMMARY,
            krate,
            needs: M::NEEDS,
            compute: M::compute,
        }
    }

    /// The metric's columns for one row: `name` or `name.key`, each with its value.
    pub fn columns(&self, input: &MetricInput<'_>) -> Result<Values, String> {
        if self.needs.original && input.original.is_none() {
            return Err(format!(
                "metric `{}` needs the original model's outputs",
                self.name
            ));
        }
        if self.needs.retrained && input.retrained.is_none() {
            return Err(format!(
                "metric `{}` needs the retrained model's outputs: add a `retrain` unlearner",
                self.name
            ));
        }
        let values = (self.compute)(input).map_err(|e| format!("metric `{}`: {e}", self.name))?;
        Ok(values
            .into_iter()
            .map(|(k, v)| {
                let col = if k.is_empty() {
                    self.name.to_string()
                } else {
                    format!("{}.{k}", self.name)
                };
                (col, v)
            })
            .collect())
    }
}

/// Registers a [`Metric`].
#[macro_export]
macro_rules! register_metric {
    ($t:ty) => {
        $crate::inventory::submit! {
            $crate::metric::BuiltinMetric::of::<$t>(env!("CARGO_PKG_NAME"))
        }
    };
}

/// Every registered metric, by name; two registrations of one name are an error.
pub fn registered() -> Result<BTreeMap<&'static str, &'static BuiltinMetric>, String> {
    let mut map: BTreeMap<&'static str, &'static BuiltinMetric> = BTreeMap::new();
    for m in inventory::iter::<BuiltinMetric> {
        if let Some(first) = map.insert(m.name, m) {
            return Err(format!(
                "metric `{}` is registered twice: by {} and by {}",
                m.name, first.krate, m.krate
            ));
        }
    }
    Ok(map)
}

/// The metric `name`; an unknown name lists the known ones.
pub fn find(name: &str) -> Result<&'static BuiltinMetric, String> {
    let all = registered()?;
    all.get(name).copied().ok_or_else(|| {
        let known: Vec<&str> = all.keys().copied().collect();
        format!("unknown metric `{name}`; known: {}", known.join(", "))
    })
}

/// `forget_kl`: how far the unlearned model's predictions on the forget set are from the
/// retrained model's, as the mean over `D_f` of KL(p_retrain(x) ‖ p_unlearned(x)) =
/// Σ_k p_retrain,k(x) · (log p_retrain,k(x) − log p_unlearned,k(x)), in nats, with p the
/// softmax of the logits. 0 for the `retrain` row itself; lower is closer to exact unlearning.
pub struct ForgetKl;

impl Metric for ForgetKl {
    const NAME: &'static str = "forget_kl";
    const SUMMARY: &'static str = "mean KL(p_retrain || p_unlearned) over the forget set, in nats (0 = the retrained model's predictions)";
    const NEEDS: Needs = Needs {
        original: false,
        retrained: true,
    };

    fn compute(input: &MetricInput<'_>) -> Result<Values, String> {
        let retrained = input.retrained.ok_or("needs the retrained model")?;
        let p = &retrained.forget.logits;
        let q = &input.unlearned.forget.logits;
        if p.size() != q.size() {
            return Err(format!(
                "forget-set logits of shapes {:?} and {:?}",
                p.size(),
                q.size()
            ));
        }
        let log_p = p.to_kind(Kind::Double).log_softmax(1, Kind::Double);
        let log_q = q.to_kind(Kind::Double).log_softmax(1, Kind::Double);
        let kl = (log_p.exp() * (&log_p - &log_q)).sum_dim_intlist(1, false, Kind::Double);
        let value = if kl.numel() == 0 {
            f64::NAN
        } else {
            kl.mean(Kind::Double).double_value(&[])
        };
        Ok(Values::from([(String::new(), value)]))
    }
}

crate::register_metric!(ForgetKl);

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rows: &[[f32; 3]]) -> SetOutputs {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        SetOutputs {
            logits: Tensor::from_slice(&flat).view([rows.len() as i64, 3]),
            labels: Tensor::zeros([rows.len() as i64], (Kind::Int64, tch::Device::Cpu)),
        }
    }

    fn outputs(forget: &[[f32; 3]]) -> ModelOutputs {
        ModelOutputs {
            forget: set(forget),
            retain: set(&[[0.0, 0.0, 0.0]]),
            test: set(&[[0.0, 0.0, 0.0]]),
            val: set(&[[0.0, 0.0, 0.0]]),
        }
    }

    /// KL computed by hand in f64 from the softmax definition.
    fn kl_by_hand(p_logits: &[[f32; 3]], q_logits: &[[f32; 3]]) -> f64 {
        let softmax = |l: &[f32; 3]| {
            let e: Vec<f64> = l.iter().map(|&x| (x as f64).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|x| x / s).collect::<Vec<_>>()
        };
        let total: f64 = p_logits
            .iter()
            .zip(q_logits)
            .map(|(a, b)| {
                let (p, q) = (softmax(a), softmax(b));
                (0..3).map(|k| p[k] * (p[k] / q[k]).ln()).sum::<f64>()
            })
            .sum();
        total / p_logits.len() as f64
    }

    #[test]
    fn forget_kl_matches_an_independent_computation() {
        let retrained = [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]];
        let unlearned = [[-1.0, 1.0, 0.0], [0.0, 2.0, 1.0]];
        let (r, u) = (outputs(&retrained), outputs(&unlearned));
        let forget = ForgetSet {
            name: "x".into(),
            kind: "random".into(),
            class: None,
            forget: vec![0, 1],
            retain: vec![2],
        };
        let m = find("forget_kl").unwrap();
        assert!(m.needs.retrained);
        let input = MetricInput {
            unlearned: &u,
            original: None,
            retrained: Some(&r),
            forget: &forget,
        };
        let got = m.columns(&input).unwrap();
        let want = kl_by_hand(&retrained, &unlearned);
        assert!(want > 0.1);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["forget_kl"]);
        assert!((got["forget_kl"] - want).abs() < 1e-6, "{got:?} vs {want}");
        // The retrained model against itself: 0.
        let same = MetricInput {
            unlearned: &r,
            ..input
        };
        assert!(m.columns(&same).unwrap()["forget_kl"].abs() < 1e-12);
        let missing = MetricInput {
            retrained: None,
            ..same
        };
        assert!(m.columns(&missing).unwrap_err().contains("add a `retrain`"));
        assert!(find("nope").err().unwrap().contains("known: forget_kl"));
    }
}
