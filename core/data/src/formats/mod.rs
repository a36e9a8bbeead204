//! Loaders for the file layouts that users download (the official releases of CIFAR-10/100, SVHN,
//! MNIST, Fashion-MNIST and TinyImageNet-200, and generic image folders), and a writer for the
//! CIFAR-10 binary layout. Each loader returns the official train/test splits with class names,
//! `max_value` 255, the paper's normalisation constants where it gives them, and the
//! augmentation the reference code uses.
//!
//! Every loader checks headers and sizes and never panics on bad input: each problem is a
//! [`DataError`] naming the file (wrong magic, truncated file, label out of range, image of the
//! wrong size, mismatched counts, corrupt compressed data, missing files with the list expected).

mod cifar;
mod folder;
mod idx;
mod jpeg;
mod mat;
mod svhn;
mod tiny;

pub use cifar::{CIFAR10_CLASSES, cifar10, cifar100, write_cifar10};
pub use folder::image_folder;
pub use idx::{FASHION_MNIST_CLASSES, fashion_mnist, mnist};
pub use mat::{MatArray, MatData, read_mat};
pub use svhn::svhn;
pub use tiny::tiny_imagenet;

use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{Augment, DataError, Dataset};

/// The official splits of a data set.
#[derive(Debug)]
pub struct Source {
    pub train: Dataset,
    pub test: Dataset,
}

/// The file layouts this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `cifar-10-batches-bin/` (or its parent).
    Cifar10,
    /// `cifar-100-binary/` (or its parent); fine labels.
    Cifar100,
    /// A folder with `train_32x32.mat` and `test_32x32.mat`.
    Svhn,
    /// A folder with the four IDX files (optionally `.gz`).
    Mnist,
    /// A folder with the four IDX files (optionally `.gz`).
    FashionMnist,
    /// `tiny-imagenet-200/` (or its parent).
    TinyImagenet,
    /// `<root>/{train,test}/<class>/*.{jpg,jpeg,png}`.
    ImageFolder,
}

impl Format {
    pub const ALL: [Format; 7] = [
        Format::Cifar10,
        Format::Cifar100,
        Format::Svhn,
        Format::Mnist,
        Format::FashionMnist,
        Format::TinyImagenet,
        Format::ImageFolder,
    ];

    /// The name used in configs (`cifar10`, `fashion_mnist`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Format::Cifar10 => "cifar10",
            Format::Cifar100 => "cifar100",
            Format::Svhn => "svhn",
            Format::Mnist => "mnist",
            Format::FashionMnist => "fashion_mnist",
            Format::TinyImagenet => "tiny_imagenet",
            Format::ImageFolder => "image_folder",
        }
    }

    /// Loads the data set at `path` in this layout.
    pub fn load(self, path: &Path) -> Result<Source, DataError> {
        match self {
            Format::Cifar10 => cifar10(path),
            Format::Cifar100 => cifar100(path),
            Format::Svhn => svhn(path),
            Format::Mnist => mnist(path),
            Format::FashionMnist => fashion_mnist(path),
            Format::TinyImagenet => tiny_imagenet(path),
            Format::ImageFolder => image_folder(path),
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown data format `{s}`; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// The paper's and the customary constants, as (mean, std) per channel.
pub mod stats {
    pub const CIFAR10: ([f64; 3], [f64; 3]) = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]);
    pub const CIFAR100: ([f64; 3], [f64; 3]) = ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]);
    pub const SVHN: ([f64; 3], [f64; 3]) = ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]);
    pub const IMAGENET: ([f64; 3], [f64; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    pub const MNIST: ([f64; 1], [f64; 1]) = ([0.1307], [0.3081]);
    pub const FASHION_MNIST: ([f64; 1], [f64; 1]) = ([0.2860], [0.3530]);
}

/// The pieces of a [`Dataset`] as the loaders produce them.
pub(crate) struct Parts {
    pub name: String,
    /// `n * C * H * W` pixels, row-major `[N, C, H, W]`.
    pub pixels: Vec<u8>,
    pub shape: [usize; 3],
    pub labels: Vec<i64>,
    pub class_names: Vec<String>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub augment: Augment,
}

impl Parts {
    pub fn into_dataset(self) -> Dataset {
        let n = self.labels.len() as i64;
        debug_assert_eq!(
            self.pixels.len(),
            self.labels.len() * self.shape.iter().product::<usize>()
        );
        let [c, h, w] = self.shape.map(|v| v as i64);
        Dataset {
            name: self.name,
            images: Tensor::from_slice(&self.pixels).reshape([n, c, h, w]),
            labels: Tensor::from_slice(&self.labels),
            classes: self.class_names.len(),
            max_value: 255.0,
            mean: self.mean,
            std: self.std,
            class_names: self.class_names,
            augment: self.augment,
        }
    }
}

/// Per-channel mean and (population) std of `[N, C, H, W]` u8 pixels scaled by `max_value`:
/// the same numbers as [`super::channel_stats`] (exact integer sums, so equal on every machine),
/// from histograms built in parallel over the raw bytes, without a tensor copy of the images.
pub fn pixel_channel_stats(
    pixels: &[u8],
    shape: [usize; 3],
    max_value: f64,
) -> (Vec<f64>, Vec<f64>) {
    let [c, h, w] = shape;
    let plane = h * w;
    if c == 0 || plane == 0 || pixels.is_empty() {
        return (vec![f64::NAN; c], vec![f64::NAN; c]);
    }
    let hist = pixels
        .par_chunks(c * plane)
        .fold(
            || vec![[0u64; 256]; c],
            |mut acc, img| {
                for (ch, values) in img.chunks(plane).enumerate() {
                    for &v in values {
                        acc[ch][v as usize] += 1;
                    }
                }
                acc
            },
        )
        .reduce(
            || vec![[0u64; 256]; c],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    for (p, q) in x.iter_mut().zip(y) {
                        *p += q;
                    }
                }
                a
            },
        );
    crate::data::stats_from_histograms(&hist, max_value)
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a text file, naming it in the error.
pub(crate) fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = read_file(path)?;
    String::from_utf8(bytes).map_err(|_| bad(path, "is not UTF-8 text"))
}

/// A [`DataError::BadFile`] for `path`.
pub(crate) fn bad(path: &Path, message: impl Into<String>) -> DataError {
    DataError::BadFile {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Fails with [`DataError::MissingFiles`] unless every one of `names` exists in `dir`.
pub(crate) fn require_files(dir: &Path, names: &[&str]) -> Result<(), DataError> {
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !dir.join(n).exists())
        .map(|n| n.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DataError::MissingFiles {
            dir: dir.to_path_buf(),
            missing,
            expected: names.iter().map(|n| n.to_string()).collect(),
        })
    }
}

/// `path` itself when it holds `marker`, else `path/folder` when that holds it (so users may name
/// either the data folder or its parent); otherwise `path` (whose missing files are then listed).
pub(crate) fn resolve_dir(path: &Path, folder: &str, marker: &str) -> PathBuf {
    if !path.join(marker).exists() && path.join(folder).join(marker).exists() {
        path.join(folder)
    } else {
        path.to_path_buf()
    }
}

/// The most one compressed file or element may inflate to (4 GiB).
const MAX_INFLATED: u64 = 4 << 30;

/// Decompresses a whole zlib stream (`gzip: false`) or gzip file (`gzip: true`), naming `path`
/// when the data are corrupt or cut short, or inflate past [`MAX_INFLATED`].
pub(crate) fn inflate(
    path: &Path,
    bytes: &[u8],
    gzip: bool,
    what: &str,
) -> Result<Vec<u8>, DataError> {
    // A few compressed bytes can claim gigabytes (a decompression bomb): stop at the largest
    // file a supported data set has (SVHN's extra set inflates to about 1.6 GB), and at the
    // machine's memory.
    let limit = crate::data::physical_memory().map_or(MAX_INFLATED, |m| m.min(MAX_INFLATED));
    inflate_at_most(path, bytes, gzip, what, limit)
}

fn inflate_at_most(
    path: &Path,
    bytes: &[u8],
    gzip: bool,
    what: &str,
    limit: u64,
) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    let result = if gzip {
        flate2::read::GzDecoder::new(bytes)
            .take(limit + 1)
            .read_to_end(&mut out)
    } else {
        flate2::read::ZlibDecoder::new(bytes)
            .take(limit + 1)
            .read_to_end(&mut out)
    };
    if out.len() as u64 > limit {
        return Err(bad(
            path,
            format!(
                "{what}: the data inflate to more than {limit} bytes, more than any data file this reader takes"
            ),
        ));
    }
    result.map_err(|e| {
        let kind = if gzip { "gzip" } else { "zlib" };
        let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "truncated".to_string()
        } else {
            format!("corrupt ({e})")
        };
        bad(path, format!("{what}: {kind} data {why}"))
    })?;
    Ok(out)
}

/// Decodes `files` in parallel into RGB `[N, 3, H, W]` pixels (file order kept). Every image must
/// be `width x height` = `size`; greyscale and RGBA images are converted to RGB. With
/// `size: None` the first file fixes the size. `why` follows the expected size in the error
/// (where it comes from). Errors name the first failing file in order.
pub(crate) fn decode_rgb(
    files: &[PathBuf],
    size: Option<(u32, u32)>,
    why: &str,
) -> Result<(Vec<u8>, (u32, u32)), DataError> {
    let (w, h) = match size {
        Some(s) => s,
        None => match files.first() {
            Some(first) => decode_one(first)?.dimensions(),
            None => return Ok((Vec::new(), (0, 0))),
        },
    };
    let per = 3 * (w as usize) * (h as usize);
    crate::data::check_fits("image folder", files.len(), per)?;
    let mut pixels = vec![0u8; per * files.len()];
    let results: Vec<Result<(), DataError>> = pixels
        .par_chunks_mut(per.max(1))
        .zip(files.par_iter())
        .map(|(slot, path)| {
            let img = decode_one(path)?;
            if img.dimensions() != (w, h) {
                return Err(bad(
                    path,
                    format!(
                        "image of the wrong size: {}x{} (width x height), expected {w}x{h}{why}",
                        img.width(),
                        img.height()
                    ),
                ));
            }
            let plane = (w * h) as usize;
            for (i, px) in img.pixels().enumerate() {
                slot[i] = px.0[0];
                slot[plane + i] = px.0[1];
                slot[2 * plane + i] = px.0[2];
            }
            Ok(())
        })
        .collect();
    DataError::all(results.into_iter().filter_map(Result::err).collect())?;
    Ok((pixels, (w, h)))
}

fn decode_one(path: &Path) -> Result<image::RgbImage, DataError> {
    let (width, height, data) = decode_rgb_file(path)?;
    image::RgbImage::from_raw(width, height, data)
        .ok_or_else(|| bad(path, "decoded to the wrong number of bytes"))
}

/// Decodes the image file `path` to RGB: width, height and the pixels row-major with R, G, B
/// interleaved. JPEGs decode to the values that `PIL.Image.open(path).convert("RGB")` gives (and
/// so torchvision's `ImageFolder`): libjpeg-turbo's decoder at libjpeg's defaults, see `jpeg.rs`.
/// PNGs decode with the `image` crate; greyscale becomes three equal channels and alpha is
/// dropped.
pub fn decode_rgb_file(path: &Path) -> Result<(u32, u32, Vec<u8>), DataError> {
    decode_rgb_bytes(path, &read_file(path)?)
}

/// [`decode_rgb_file`] of the bytes `bytes` read from `path` (which errors name).
pub fn decode_rgb_bytes(path: &Path, bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), DataError> {
    // By content, not extension, as PIL does: a PNG named .jpg still loads.
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let rgb = jpeg::decode(path, bytes)?;
        return Ok((rgb.width, rgb.height, rgb.data));
    }
    let img = image::load_from_memory(bytes)
        .map_err(|e| bad(path, format!("cannot decode image: {e}")))?
        .to_rgb8();
    Ok((img.width(), img.height(), img.into_raw()))
}

/// Checks that every label is below `classes`, naming the first offender.
pub(crate) fn check_labels(path: &Path, labels: &[i64], classes: usize) -> Result<(), DataError> {
    match labels.iter().position(|&y| y < 0 || y as usize >= classes) {
        None => Ok(()),
        Some(i) => Err(bad(
            path,
            format!(
                "label {} of record {i} is out of range 0..{}",
                labels[i],
                classes - 1
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{gzip, zlib};
    use super::*;

    #[test]
    fn inflating_stops_at_the_limit_instead_of_filling_memory() {
        let path = Path::new("bomb.gz");
        let zeros = vec![0u8; 1 << 20];
        for (gz, packed) in [(true, gzip(&zeros)), (false, zlib(&zeros))] {
            assert!(packed.len() < 20_000, "a bomb: {} bytes", packed.len());
            let e = inflate_at_most(path, &packed, gz, "x", 1000).unwrap_err();
            assert!(
                e.to_string().contains("bomb.gz") && e.to_string().contains("inflate to more"),
                "{e}"
            );
            assert_eq!(
                inflate_at_most(path, &packed, gz, "x", 1 << 20).unwrap(),
                zeros
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Pixels of a data set as a flat vector.
    pub fn pixels(d: &Dataset) -> Vec<u8> {
        Vec::<u8>::try_from(&d.images.flatten(0, -1)).unwrap()
    }

    pub fn write(path: &Path, bytes: &[u8]) {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }

    pub fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    pub fn zlib(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    pub fn err<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
        r.unwrap_err().to_string()
    }
}
