//! The seeded, stratified train/val/test split (SPEC §1).

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
}
