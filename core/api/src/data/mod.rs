//! Data sets as u8 image tensors plus labels, the split into train/val/test, and the device-side
//! view that training and evaluation read.

mod augment;
mod split;
mod synthetic;

pub use augment::Augment;

pub use split::{Split, SplitConfig, SubsetConfig, stratified_split, subset_train};
pub use synthetic::{SyntheticConfig, synthetic};

use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{name}: {message}")]
    Malformed { name: String, message: String },
    #[error("split: {0}")]
    Split(String),
    #[error("subset: {0}")]
    Subset(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A file that cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A data file whose content is wrong (bad magic, truncated, label out of range, ...).
    #[error("{}: {message}", path.display())]
    BadFile {
        path: std::path::PathBuf,
        message: String,
    },
    /// Several bad files, every one reported (a loader that checks files independently lists
    /// them all, so one pass over a folder finds every problem).
    #[error("{} bad files: {}", .0.len(), list_errors(.0))]
    BadFiles(Vec<DataError>),
    /// A data set that would not fit in this machine's memory.
    #[error("{name}: about {} of pixels, more than this machine's {} of memory", gib(*.bytes), gib(*.memory))]
    TooLarge {
        name: String,
        bytes: u64,
        memory: u64,
    },
    /// Files of a layout that are absent from its folder.
    #[error("{}: missing {}; expected {}", dir.display(), missing.join(", "), expected.join(", "))]
    MissingFiles {
        dir: std::path::PathBuf,
        missing: Vec<String>,
        expected: Vec<String>,
    },
}

/// A labelled image set held as u8 pixels (`[N, C, H, W]`) and i64 labels (`[N]`).
/// Pixels are scaled to [0, 1] by `max_value` when batched; per-channel `mean`/`std`
/// normalisation is the model's first layer (as in the reference code), so checkpoints take [0, 1] inputs.
#[derive(Debug)]
pub struct Dataset {
    pub name: String,
    pub images: Tensor,
    pub labels: Tensor,
    pub classes: usize,
    /// The pixel value that maps to 1.0 (255 for photos, 16 for the digits).
    pub max_value: f64,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Class names by label (folder names, the official label names, or "0".."k-1").
    pub class_names: Vec<String>,
    /// Training-time augmentation this data set calls for (crop + flip for CIFAR, as the reference code).
    pub augment: Augment,
}

impl Dataset {
    /// A data set from row-major u8 pixels (`n * C * H * W` values); mean and std are computed
    /// from the pixels (for sets without published constants).
    pub fn from_pixels(
        name: &str,
        pixels: &[u8],
        shape: [i64; 3],
        labels: &[i64],
        classes: usize,
        max_value: f64,
    ) -> Dataset {
        let n = labels.len() as i64;
        let images = Tensor::from_slice(pixels).reshape([n, shape[0], shape[1], shape[2]]);
        let (mean, std) = channel_stats(&images, max_value);
        Dataset {
            name: name.into(),
            images,
            labels: Tensor::from_slice(labels),
            classes,
            max_value,
            mean,
            std,
            class_names: (0..classes).map(|c| c.to_string()).collect(),
            augment: Augment::NONE,
        }
    }

    /// The same metadata with other image and label tensors.
    fn with_tensors(&self, images: Tensor, labels: Tensor) -> Dataset {
        Dataset {
            name: self.name.clone(),
            images,
            labels,
            classes: self.classes,
            max_value: self.max_value,
            mean: self.mean.clone(),
            std: self.std.clone(),
            class_names: self.class_names.clone(),
            augment: self.augment,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[C, H, W]`.
    pub fn image_shape(&self) -> [i64; 3] {
        let s = self.images.size();
        [s[1], s[2], s[3]]
    }

    pub fn labels_vec(&self) -> Vec<i64> {
        Vec::<i64>::try_from(&self.labels.to_device(Device::Cpu)).expect("labels are i64")
    }

    /// Samples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for y in self.labels_vec() {
            counts[y as usize] += 1;
        }
        counts
    }

    /// The rows at `indices`, as a new data set with the same metadata.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let idx = index_tensor(indices, self.images.device());
        self.with_tensors(
            self.images.index_select(0, &idx),
            self.labels.index_select(0, &idx),
        )
    }

    pub fn to_device(&self, device: Device) -> Dataset {
        self.with_tensors(self.images.to_device(device), self.labels.to_device(device))
    }

    /// `self` followed by `other` (same metadata; `other`'s rows come after `self`'s).
    pub fn concat(&self, other: &Dataset) -> Dataset {
        self.with_tensors(
            Tensor::cat(&[&self.images, &other.images], 0),
            Tensor::cat(&[&self.labels, &other.labels], 0),
        )
    }

    /// Images at `idx` (an i64 tensor on the data's device) as floats in [0, 1].
    pub fn batch_images(&self, idx: &Tensor) -> Tensor {
        self.images.index_select(0, idx).to_kind(Kind::Float) / self.max_value
    }
}

/// Indices as an i64 tensor on `device`.
pub fn index_tensor(indices: &[usize], device: Device) -> Tensor {
    let v: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&v).to_device(device)
}

/// Per-channel mean and (population) std of u8 `images` (`[N, C, H, W]`) scaled by `max_value`
/// (for data sets that do not come with published constants). Exact integer sums, so the numbers
/// are the same bit for bit on every machine, device and thread count: they go into the model's
/// normalisation, its checkpoints and every stage's cache key.
pub fn channel_stats(images: &Tensor, max_value: f64) -> (Vec<f64>, Vec<f64>) {
    let size = images.size();
    let c = size.get(1).copied().unwrap_or(0).max(0) as usize;
    let plane: usize = size.iter().skip(2).map(|&d| d.max(0) as usize).product();
    let pixels = images
        .to_device(Device::Cpu)
        .to_kind(Kind::Uint8)
        .contiguous()
        .flatten(0, -1);
    let pixels = Vec::<u8>::try_from(&pixels).unwrap_or_default();
    let mut hist = vec![[0u64; 256]; c];
    if c > 0 && plane > 0 {
        for img in pixels.chunks(c * plane) {
            for (ch, values) in img.chunks(plane).enumerate() {
                for &v in values {
                    hist[ch][v as usize] += 1;
                }
            }
        }
    }
    stats_from_histograms(&hist, max_value)
}

/// Mean and population std per channel from per-channel histograms of u8 values, scaled by
/// `max_value`: with n values, s1 = sum v and s2 = sum v^2 as exact integers,
/// mean = s1 / (n m) and std = sqrt(n s2 - s1^2) / (n m), one rounding each. NaN for a channel
/// with no values.
pub fn stats_from_histograms(hist: &[[u64; 256]], max_value: f64) -> (Vec<f64>, Vec<f64>) {
    hist.iter()
        .map(|counts| {
            let (mut n, mut s1, mut s2) = (0u128, 0u128, 0u128);
            for (v, &k) in counts.iter().enumerate() {
                let (v, k) = (v as u128, k as u128);
                n += k;
                s1 += v * k;
                s2 += v * v * k;
            }
            if n == 0 {
                return (f64::NAN, f64::NAN);
            }
            let scale = n as f64 * max_value;
            let spread = n * s2 - s1 * s1; // n^2 var, never negative
            (s1 as f64 / scale, (spread as f64).sqrt() / scale)
        })
        .unzip()
}

/// The first 20 errors, one per line, and how many more there are.
fn list_errors(errors: &[DataError]) -> String {
    let mut out: Vec<String> = errors.iter().take(20).map(|e| format!("\n  {e}")).collect();
    if errors.len() > 20 {
        out.push(format!("\n  ... and {} more", errors.len() - 20));
    }
    out.concat()
}

impl DataError {
    /// The errors inside a [`DataError::BadFiles`], or this one alone.
    pub fn into_list(self) -> Vec<DataError> {
        match self {
            DataError::BadFiles(list) => list,
            e => vec![e],
        }
    }

    /// One error for a batch of independent checks: none, the only one, or all of them.
    pub fn all(mut errors: Vec<DataError>) -> Result<(), DataError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(DataError::BadFiles(errors)),
        }
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// This machine's physical memory in bytes (Linux `/proc/meminfo`; None elsewhere).
pub fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses, before anything is allocated, a data set of `count` images of `dims` values each
/// (u8) whose pixels (held twice while they become a tensor) would not fit in memory. An
/// overflowing size counts as too large.
pub fn check_fits(name: &str, count: usize, dims: usize) -> Result<(), DataError> {
    let bytes = (count as u64)
        .checked_mul(dims as u64)
        .and_then(|b| b.checked_mul(2))
        .unwrap_or(u64::MAX);
    match physical_memory() {
        Some(memory) if bytes > memory => Err(DataError::TooLarge {
            name: name.into(),
            bytes,
            memory,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a two-pass computation in f64 on a hand-checkable set, and bit-equal however
    /// many threads libtorch has (the old reduction in libtorch was not).
    #[test]
    fn channel_stats_are_exact_and_independent_of_threads() {
        // Channel 0 holds 0, 1, 2, 3; channel 1 holds 16 everywhere.
        let px: Vec<u8> = vec![0, 1, 16, 16, 2, 3, 16, 16];
        let images = Tensor::from_slice(&px).reshape([2, 2, 1, 2]);
        let (mean, std) = channel_stats(&images, 16.0);
        assert_eq!(mean, [1.5 / 16.0, 1.0]);
        assert_eq!(std[1], 0.0);
        assert!((std[0] - 1.25f64.sqrt() / 16.0).abs() < 1e-16, "{std:?}");
        // Digit-like data, large enough for libtorch to split a reduction across threads.
        let n = 4000 * 64;
        let px: Vec<u8> = (0..n).map(|i| ((i * 7919 + i / 13) % 17) as u8).collect();
        let images = Tensor::from_slice(&px).reshape([4000, 1, 8, 8]);
        let before = tch::get_num_threads();
        let mut seen = Vec::new();
        for threads in [1, 2, 4] {
            tch::set_num_threads(threads);
            seen.push(channel_stats(&images, 16.0));
        }
        tch::set_num_threads(before);
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        let x: Vec<f64> = px.iter().map(|&v| v as f64 / 16.0).collect();
        let m = x.iter().sum::<f64>() / x.len() as f64;
        let v = x.iter().map(|a| (a - m).powi(2)).sum::<f64>() / x.len() as f64;
        assert!((seen[0].0[0] - m).abs() < 1e-12 && (seen[0].1[0] - v.sqrt()).abs() < 1e-12);
        // No values: NaN, not a panic.
        let empty = Tensor::zeros([0, 3, 2, 2], (Kind::Uint8, Device::Cpu));
        assert!(channel_stats(&empty, 255.0).0.iter().all(|v| v.is_nan()));
    }
}
