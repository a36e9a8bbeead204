//! A deterministic synthetic 8x8 data set for tests: each class is a fixed random pattern,
//! and each sample is its pattern with seeded noise, quantised to 0..16 like the digits.

use super::{DataError, Dataset};
use crate::rng::rng;
use rand::RngExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Number of samples.
    #[schemars(range(min = 10, max = 10_000_000))]
    pub samples: usize,
    /// Number of classes.
    #[schemars(range(min = 2, max = 100))]
    pub classes: usize,
    /// Noise amplitude in pixel units (0..16 scale); larger is harder.
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub noise: f64,
    #[schemars(range(max = u64::MAX))]
    pub seed: u64,
    /// Image channels (1 like the digits, 3 for CIFAR-sized batches).
    #[schemars(range(min = 1, max = 4))]
    pub channels: usize,
    /// Image side in pixels (8 like the digits, 32 like CIFAR).
    #[schemars(range(min = 2, max = 256))]
    pub size: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            samples: 600,
            classes: 10,
            noise: 6.0,
            seed: 0,
            channels: 1,
            size: 8,
        }
    }
}

/// The most pixels a synthetic data set may have (256 Mi: 5x CIFAR-10's train set).
const MAX_PIXELS: usize = 1 << 28;

pub fn synthetic(cfg: &SyntheticConfig) -> Result<Dataset, DataError> {
    if cfg.classes < 2 || cfg.samples < cfg.classes {
        return Err(DataError::Malformed {
            name: "synthetic".into(),
            message: format!(
                "needs at least 2 classes and a sample per class (got {} samples, {} classes)",
                cfg.samples, cfg.classes
            ),
        });
    }
    // The sizes come from a config: bound them before allocating, so that `samples = 1e12` is
    // an error rather than an allocation that aborts the process (or a product that wraps).
    let dims = cfg
        .channels
        .checked_mul(cfg.size)
        .and_then(|d| d.checked_mul(cfg.size));
    let total = dims.and_then(|d| d.checked_mul(cfg.samples));
    let Some((dims, _)) = dims.zip(total).filter(|&(d, t)| d > 0 && t <= MAX_PIXELS) else {
        return Err(DataError::Malformed {
            name: "synthetic".into(),
            message: format!(
                "{} samples of {}x{}x{} pixels: the images need 1 to {MAX_PIXELS} pixels in all",
                cfg.samples, cfg.channels, cfg.size, cfg.size
            ),
        });
    };
    let mut r = rng(cfg.seed, "synthetic");
    let patterns: Vec<Vec<f64>> = (0..cfg.classes)
        .map(|_| {
            (0..dims)
                .map(|_| if r.random_bool(0.35) { 14.0 } else { 1.0 })
                .collect()
        })
        .collect();
    let mut pixels = Vec::with_capacity(cfg.samples * dims);
    let mut labels = Vec::with_capacity(cfg.samples);
    for i in 0..cfg.samples {
        let y = i % cfg.classes; // balanced classes
        for &p in &patterns[y] {
            let v = p + cfg.noise * (r.random::<f64>() * 2.0 - 1.0);
            pixels.push(v.round().clamp(0.0, 16.0) as u8);
        }
        labels.push(y as i64);
    }
    let shape = [cfg.channels as i64, cfg.size as i64, cfg.size as i64];
    Ok(Dataset::from_pixels(
        "synthetic",
        &pixels,
        shape,
        &labels,
        cfg.classes,
        16.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let cfg = SyntheticConfig::default();
        let a = synthetic(&cfg).unwrap();
        let b = synthetic(&cfg).unwrap();
        assert!(a.images.equal(&b.images) && a.labels.equal(&b.labels));
        let c = synthetic(&SyntheticConfig {
            seed: 1,
            ..cfg.clone()
        })
        .unwrap();
        assert!(!a.images.equal(&c.images));
        assert_eq!(a.class_counts(), vec![60; 10]);
        let cifar = synthetic(&SyntheticConfig {
            samples: 20,
            channels: 3,
            size: 32,
            ..cfg
        })
        .unwrap();
        assert_eq!(cifar.image_shape(), [3, 32, 32]);
        assert_eq!(cifar.mean.len(), 3);
    }
}
