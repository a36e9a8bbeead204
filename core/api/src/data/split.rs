//! The seeded, stratified train/val/test split (docs/reference.md, "Data and scenarios").

use serde::{Deserialize, Serialize};

use super::DataError;
use crate::rng::permutation;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Share of each class held out as the test set (data sets without an official test set).
    #[schemars(range(min = 0.0, max = 0.9))]
    pub test_fraction: f64,
    /// Share of each class of the remaining training pool held out for validation.
    #[schemars(range(min = 0.0, max = 0.9))]
    pub val_fraction: f64,
    /// Seed of the split; fixed so every run sees the same train set.
    #[schemars(range(max = u64::MAX))]
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            test_fraction: 0.2,
            val_fraction: 0.1,
            seed: 0,
        }
    }
}

/// Indices into the source data set. Each list is sorted, so "the first n of train" is stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// Splits `labels` class by class: `round(test_fraction * n_c)` samples of class c go to test,
/// then `round(val_fraction * rest)` to val, the others to train.
pub fn stratified_split(
    labels: &[i64],
    classes: usize,
    cfg: &SplitConfig,
) -> Result<Split, DataError> {
    for (name, f) in [
        ("test_fraction", cfg.test_fraction),
        ("val_fraction", cfg.val_fraction),
    ] {
        if !(0.0..1.0).contains(&f) {
            return Err(DataError::Split(format!("{name} = {f} must be in [0, 1)")));
        }
    }
    let mut by_class = vec![Vec::new(); classes];
    for (i, &y) in labels.iter().enumerate() {
        let c = usize::try_from(y)
            .ok()
            .filter(|&c| c < classes)
            .ok_or_else(|| {
                DataError::Split(format!("sample {i} has label {y}, outside 0..{classes}"))
            })?;
        by_class[c].push(i);
    }
    let mut split = Split {
        train: vec![],
        val: vec![],
        test: vec![],
    };
    for (c, members) in by_class.iter().enumerate() {
        let order = permutation(members.len(), cfg.seed ^ c as u64, "split");
        let n = members.len();
        let n_test = (cfg.test_fraction * n as f64).round() as usize;
        let n_val = (cfg.val_fraction * (n - n_test) as f64).round() as usize;
        for (k, &o) in order.iter().enumerate() {
            let target = if k < n_test {
                &mut split.test
            } else if k < n_test + n_val {
                &mut split.val
            } else {
                &mut split.train
            };
            target.push(members[o]);
        }
    }
    for v in [&mut split.train, &mut split.val, &mut split.test] {
        v.sort_unstable();
    }
    if split.train.is_empty() {
        return Err(DataError::Split("the training split is empty".into()));
    }
    Ok(split)
}

/// A seeded subset of the training split, for runs that must be small (a study on a CPU):
/// `per_class` samples of every class, or `fraction` of each class (rounded, at least one).
/// Validation and test sets are kept whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubsetConfig {
    /// Training samples kept per class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub per_class: Option<usize>,
    /// Share of each class's training samples kept (instead of `per_class`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub fraction: Option<f64>,
    /// Seed of the draw.
    #[serde(default)]
    #[schemars(range(max = u64::MAX))]
    pub seed: u64,
}

/// Keeps the subset `cfg` describes of `split.train` (`labels` indexes the whole data set), in
/// ascending order. A class with fewer samples than `per_class` is an error naming it.
pub fn subset_train(
    split: &mut Split,
    labels: &[i64],
    classes: usize,
    cfg: &SubsetConfig,
) -> Result<(), DataError> {
    let err = |m: String| Err(DataError::Subset(m));
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for &i in &split.train {
        by_class[labels[i] as usize].push(i);
    }
    let mut kept = Vec::new();
    for (c, rows) in by_class.iter().enumerate() {
        let k = match (cfg.per_class, cfg.fraction) {
            (Some(_), Some(_)) => {
                return err("give either `per_class` or `fraction`, not both".into());
            }
            (None, None) => return err("give `per_class` or `fraction`".into()),
            (Some(k), None) => k,
            (None, Some(f)) if f > 0.0 && f <= 1.0 => {
                ((f * rows.len() as f64).round() as usize).max(1)
            }
            (None, Some(f)) => return err(format!("fraction {f} is outside (0, 1]")),
        };
        if rows.is_empty() {
            continue;
        }
        if k > rows.len() {
            return err(format!(
                "{k} per class is more than class {c}'s {} training samples",
                rows.len()
            ));
        }
        let order = permutation(rows.len(), cfg.seed.wrapping_add(c as u64), "subset");
        kept.extend(order[..k].iter().map(|&j| rows[j]));
    }
    kept.sort_unstable();
    split.train = kept;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_a_stratified_partition_and_seeded() {
        // 3 classes of 100, 50 and 20 samples, interleaved.
        let mut labels = vec![];
        for i in 0..170 {
            labels.push(if i < 100 {
                0
            } else if i < 150 {
                1
            } else {
                2
            });
        }
        let cfg = SplitConfig::default();
        let s = stratified_split(&labels, 3, &cfg).unwrap();
        let mut all: Vec<usize> = [s.train.clone(), s.val.clone(), s.test.clone()].concat();
        all.sort();
        assert_eq!(all, (0..170).collect::<Vec<_>>());
        let count = |v: &[usize], c: i64| v.iter().filter(|&&i| labels[i] == c).count();
        // class 0: 20 test, 8 val (10% of 80), 72 train; class 2: 4 test, 2 val (round 1.6), 14 train
        assert_eq!(
            (count(&s.test, 0), count(&s.val, 0), count(&s.train, 0)),
            (20, 8, 72)
        );
        assert_eq!(
            (count(&s.test, 2), count(&s.val, 2), count(&s.train, 2)),
            (4, 2, 14)
        );
        assert_eq!(s, stratified_split(&labels, 3, &cfg).unwrap());
        let other = stratified_split(&labels, 3, &SplitConfig { seed: 9, ..cfg }).unwrap();
        assert_ne!(s.test, other.test);
    }

    #[test]
    fn bad_labels_and_fractions_are_errors() {
        assert!(stratified_split(&[0, 5], 3, &SplitConfig::default()).is_err());
        let cfg = SplitConfig {
            test_fraction: 1.5,
            ..Default::default()
        };
        assert!(stratified_split(&[0, 1], 2, &cfg).is_err());
    }

    #[test]
    fn subsets_keep_k_per_class_seeded_and_refuse_too_many() {
        // 30 samples, 3 classes (i % 3); train = the first 24.
        let labels: Vec<i64> = (0..30).map(|i| (i % 3) as i64).collect();
        let base = Split {
            train: (0..24).collect(),
            val: (24..27).collect(),
            test: (27..30).collect(),
        };
        let take = |per_class, fraction, seed| {
            let mut s = base.clone();
            subset_train(
                &mut s,
                &labels,
                3,
                &SubsetConfig {
                    per_class,
                    fraction,
                    seed,
                },
            )
            .map(|()| s)
        };
        let s = take(Some(3), None, 1).unwrap();
        assert_eq!(s.train.len(), 9);
        for c in 0..3 {
            assert_eq!(s.train.iter().filter(|&&i| labels[i] == c).count(), 3);
        }
        assert!(s.train.windows(2).all(|w| w[0] < w[1]) && s.train.iter().all(|&i| i < 24));
        assert_eq!((s.val, s.test), (base.val.clone(), base.test.clone()));
        assert_eq!(
            take(Some(3), None, 1).unwrap(),
            take(Some(3), None, 1).unwrap()
        );
        assert_ne!(
            take(Some(3), None, 1).unwrap(),
            take(Some(3), None, 2).unwrap()
        );
        // Each class has 8 training samples: a quarter is 2 each.
        assert_eq!(take(None, Some(0.25), 0).unwrap().train.len(), 6);
        let e = take(Some(9), None, 0).unwrap_err().to_string();
        assert!(
            e.contains("9 per class is more than class 0's 8 training samples"),
            "{e}"
        );
        assert!(take(Some(2), Some(0.5), 0).is_err());
        assert!(take(None, None, 0).is_err());
    }
}
