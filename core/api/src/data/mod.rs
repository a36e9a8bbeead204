//! Data sets as u8 image tensors plus labels, the split into train/val/test, and the device-side
//! view that training and evaluation read.

mod augment;
mod split;
mod synthetic;

pub use augment::Augment;

pub use split::{stratified_split, subset_train, Split, SplitConfig, SubsetConfig};
pub use synthetic::{synthetic, SyntheticConfig};

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

/// Per-channel mean and std of `images` scaled by `max_value` (used for data sets that do not
/// come with published constants).
pub fn channel_stats(images: &Tensor, max_value: f64) -> (Vec<f64>, Vec<f64>) {
    let x = images.to_kind(Kind::Double) / max_value;
    let c = x.size()[1];
    let per = x.transpose(0, 1).reshape([c, -1]);
    let mean = Vec::<f64>::try_from(per.mean_dim(1, false, Kind::Double)).unwrap();
    let std = Vec::<f64>::try_from(per.std_dim(1, false, false)).unwrap();
    (mean, std)
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
