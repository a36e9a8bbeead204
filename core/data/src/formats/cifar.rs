//! CIFAR-10 and CIFAR-100 in their official binary layouts, and a writer for CIFAR-10's.
//!
//! A CIFAR-10 record is 1 label byte and 3,072 pixel bytes (the R, G and B planes of a 32x32
//! image, each row-major), which is exactly the `[C, H, W]` order of a [`Dataset`]. A CIFAR-100
//! record has a coarse and a fine label byte before the pixels; the fine labels (100 classes) are
//! used.

use std::path::Path;

use tch::{Device, Kind};

use super::{Parts, Source, bad, read_file, read_text, require_files, resolve_dir, stats};
use crate::data::{Augment, DataError, Dataset};

/// CIFAR-10's class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const PIXELS: usize = 3 * 32 * 32;
const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const TEST_BATCH: &str = "test_batch.bin";
const META10: &str = "batches.meta.txt";

/// Loads `cifar-10-batches-bin/` (`path` may be that folder or its parent): train = the five
/// `data_batch_*.bin` in order, test = `test_batch.bin`, class names from `batches.meta.txt`.
pub fn cifar10(path: &Path) -> Result<Source, DataError> {
    let dir = resolve_dir(path, "cifar-10-batches-bin", TRAIN_BATCHES[0]);
    let mut expected = TRAIN_BATCHES.to_vec();
    expected.extend([TEST_BATCH, META10]);
    require_files(&dir, &expected)?;
    let names = read_names(&dir.join(META10), 10)?;
    let mut train = Records::default();
    for b in TRAIN_BATCHES {
        train.read(&dir.join(b), &[], 10)?;
    }
    let mut test = Records::default();
    test.read(&dir.join(TEST_BATCH), &[], 10)?;
    let (mean, std) = stats::CIFAR10;
    Ok(Source {
        train: train.into_dataset("cifar10", &names, &mean, &std),
        test: test.into_dataset("cifar10", &names, &mean, &std),
    })
}

/// Loads `cifar-100-binary/` (`path` may be that folder or its parent): `train.bin`, `test.bin`,
/// fine labels (100 classes) named by `fine_label_names.txt`. Coarse labels are checked
/// (0..19) and dropped.
pub fn cifar100(path: &Path) -> Result<Source, DataError> {
    let dir = resolve_dir(path, "cifar-100-binary", "train.bin");
    require_files(&dir, &["train.bin", "test.bin", "fine_label_names.txt"])?;
    let names = read_names(&dir.join("fine_label_names.txt"), 100)?;
    let mut train = Records::default();
    train.read(&dir.join("train.bin"), &[("coarse", 20)], 100)?;
    let mut test = Records::default();
    test.read(&dir.join("test.bin"), &[("coarse", 20)], 100)?;
    let (mean, std) = stats::CIFAR100;
    Ok(Source {
        train: train.into_dataset("cifar100", &names, &mean, &std),
        test: test.into_dataset("cifar100", &names, &mean, &std),
    })
}

/// Class names, one per non-empty line; exactly `classes` of them.
fn read_names(path: &Path, classes: usize) -> Result<Vec<String>, DataError> {
    let text = read_text(path)?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != classes {
        return Err(bad(
            path,
            format!("has {} class names, expected {classes}", names.len()),
        ));
    }
    Ok(names)
}

#[derive(Default)]
struct Records {
    pixels: Vec<u8>,
    labels: Vec<i64>,
}

impl Records {
    /// Appends the records of `path`: the `skipped` label bytes (name, number of classes: checked,
    /// then dropped), the label byte (below `classes`), then 3,072 pixel bytes.
    fn read(
        &mut self,
        path: &Path,
        skipped: &[(&str, usize)],
        classes: usize,
    ) -> Result<(), DataError> {
        let bytes = read_file(path)?;
        let head = skipped.len() + 1;
        let record = head + PIXELS;
        if bytes.is_empty() {
            // A batch file holds at least one record; an empty one is a failed copy or download.
            return Err(bad(
                path,
                format!("is empty (0 bytes), expected {record}-byte records: fetch it again"),
            ));
        }
        if bytes.len() % record != 0 {
            return Err(bad(
                path,
                format!(
                    "truncated: {} bytes is not a whole number of {record}-byte records \
                     ({} whole records and {} bytes of a cut-off one)",
                    bytes.len(),
                    bytes.len() / record,
                    bytes.len() % record
                ),
            ));
        }
        let n = bytes.len() / record;
        self.pixels.reserve(n * PIXELS);
        self.labels.reserve(n);
        for (i, r) in bytes.chunks_exact(record).enumerate() {
            for (k, &(what, limit)) in skipped.iter().enumerate() {
                if r[k] as usize >= limit {
                    return Err(bad(
                        path,
                        format!(
                            "{what} label {} of record {i} is out of range 0..{}",
                            r[k],
                            limit - 1
                        ),
                    ));
                }
            }
            let y = r[head - 1];
            if y as usize >= classes {
                return Err(bad(
                    path,
                    format!("label {y} of record {i} is out of range 0..{}", classes - 1),
                ));
            }
            self.labels.push(y as i64);
            self.pixels.extend_from_slice(&r[head..]);
        }
        Ok(())
    }

    fn into_dataset(self, name: &str, names: &[String], mean: &[f64], std: &[f64]) -> Dataset {
        Parts {
            name: name.into(),
            pixels: self.pixels,
            shape: [3, 32, 32],
            labels: self.labels,
            class_names: names.to_vec(),
            mean: mean.to_vec(),
            std: std.to_vec(),
            augment: Augment::CROP_FLIP,
        }
        .into_dataset()
    }
}

/// Writes `source` in the CIFAR-10 binary layout into `dir` (created if needed), each file
/// atomically: `data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin` and
/// `batches.meta.txt` (the class names, one per line). Both splits need 10 classes of
/// `[3, 32, 32]` u8 images.
///
/// Batch rule: there are always five train batches; with `n` train images, batch `k` (0-based)
/// holds images `k * n / 5 .. (k + 1) * n / 5` in order. So 50,000 images give the official
/// 10,000 per batch, and a smaller (or larger) train set gives five batches whose sizes differ by
/// at most one (at least 5 train images and 1 test image: no file may be empty). The test split goes whole into `test_batch.bin`.
/// Loading the folder with [`cifar10`] gives back the same tensors, labels and class names.
pub fn write_cifar10(source: &Source, dir: &Path) -> Result<(), DataError> {
    let names = &source.train.class_names;
    let train = records(&source.train, "train", names)?;
    let test = records(&source.test, "test", names)?;
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let n = train.len() / (1 + PIXELS);
    // The loader refuses empty batch files (a failed copy looks like one), so every file gets a
    // record: at least five train images and one test image.
    if n < 5 || test.is_empty() {
        return Err(DataError::Malformed {
            name: format!("{} as CIFAR-10 binary", source.train.name),
            message: format!(
                "has {n} train and {} test images; the layout needs at least 5 train images (one per batch file) and 1 test image",
                test.len() / (1 + PIXELS)
            ),
        });
    }
    let bounds: Vec<usize> = (0..=5).map(|k| k * n / 5 * (1 + PIXELS)).collect();
    for (k, b) in TRAIN_BATCHES.iter().enumerate() {
        write(&dir.join(b), &train[bounds[k]..bounds[k + 1]])?;
    }
    write(&dir.join(TEST_BATCH), &test)?;
    let mut meta = names.join("\n");
    meta.push('\n');
    write(&dir.join(META10), meta.as_bytes())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    crate::io::write_atomic(path, bytes).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The CIFAR-10 records of one split, after checking that it fits the layout.
fn records(d: &Dataset, split: &str, names: &[String]) -> Result<Vec<u8>, DataError> {
    let fail = |message: String| DataError::Malformed {
        name: format!("{} ({split} split) as CIFAR-10 binary", d.name),
        message,
    };
    if d.classes != 10 || d.class_names.len() != 10 {
        return Err(fail(format!(
            "has {} classes ({} names), the layout holds 10",
            d.classes,
            d.class_names.len()
        )));
    }
    if d.class_names != names {
        return Err(fail("class names differ between train and test".into()));
    }
    if let Some(bad) = names
        .iter()
        .find(|s| s.trim().is_empty() || s.trim() != s.as_str() || s.contains('\n'))
    {
        return Err(fail(format!(
            "class name {bad:?} cannot be a line of batches.meta.txt"
        )));
    }
    let size = d.images.size();
    if size.len() != 4 || size[1..] != [3, 32, 32] {
        return Err(fail(format!(
            "images have shape {size:?}, the layout holds [N, 3, 32, 32]"
        )));
    }
    if d.images.kind() != Kind::Uint8 {
        return Err(fail(format!(
            "images are {:?}, the layout holds u8",
            d.images.kind()
        )));
    }
    let labels = d.labels_vec();
    if let Some(i) = labels.iter().position(|y| !(0..10).contains(y)) {
        return Err(fail(format!(
            "label {} of sample {i} is out of range 0..9",
            labels[i]
        )));
    }
    let images = d.images.to_device(Device::Cpu).contiguous().flatten(0, -1);
    let pixels = Vec::<u8>::try_from(&images)?;
    let mut out = Vec::with_capacity(labels.len() * (1 + PIXELS));
    for (y, img) in labels.iter().zip(pixels.chunks_exact(PIXELS)) {
        out.push(*y as u8);
        out.extend_from_slice(img);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{err, pixels, write as put};
    use super::*;

    /// A record with label `y` whose pixel `p` is `(seed + 7p) mod 256`.
    fn record(head: &[u8], seed: usize) -> Vec<u8> {
        let mut r = head.to_vec();
        r.extend((0..PIXELS).map(|p| ((seed + 7 * p) % 256) as u8));
        r
    }

    fn write_cifar10_dir(dir: &Path) {
        // Batch k holds two records: labels (2k, 2k+1) mod 10; test holds labels 9 and 0.
        for (k, b) in TRAIN_BATCHES.iter().enumerate() {
            let mut bytes = record(&[(2 * k % 10) as u8], 10 * k);
            bytes.extend(record(&[((2 * k + 1) % 10) as u8], 10 * k + 1));
            put(&dir.join(b), &bytes);
        }
        let mut test = record(&[9], 100);
        test.extend(record(&[0], 101));
        put(&dir.join(TEST_BATCH), &test);
        put(
            &dir.join(META10),
            (CIFAR10_CLASSES.join("\n") + "\n\n").as_bytes(),
        );
    }

    #[test]
    fn cifar10_records_load_exactly_from_the_folder_or_its_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cifar-10-batches-bin");
        write_cifar10_dir(&dir);
        for path in [dir.as_path(), tmp.path()] {
            let s = cifar10(path).unwrap();
            assert_eq!(s.train.len(), 10);
            assert_eq!(s.train.labels_vec(), vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
            assert_eq!(s.test.labels_vec(), vec![9, 0]);
            assert_eq!(s.train.image_shape(), [3, 32, 32]);
            let px = pixels(&s.train);
            // Image 3 is batch 1's second record (seed 11); pixel (c=1, y=2, x=5).
            let p = 1024 + 2 * 32 + 5;
            assert_eq!(px[3 * PIXELS + p], ((11 + 7 * p) % 256) as u8);
            assert_eq!(px[..PIXELS], record(&[], 0)[..]);
            assert_eq!(pixels(&s.test)[PIXELS..], record(&[], 101)[..]);
            assert_eq!(s.train.class_names, CIFAR10_CLASSES.map(String::from));
            assert_eq!(s.train.classes, 10);
            assert_eq!(s.train.max_value, 255.0);
            assert_eq!(s.train.mean, vec![0.4914, 0.4822, 0.4465]);
            assert_eq!(s.test.std, vec![0.2470, 0.2435, 0.2616]);
            assert_eq!(s.train.augment, Augment::CROP_FLIP);
        }
    }

    #[test]
    fn cifar100_uses_fine_labels_and_checks_coarse_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cifar-100-binary");
        let mut train = record(&[3, 42], 1);
        train.extend(record(&[19, 99], 2));
        train.extend(record(&[0, 0], 3));
        put(&dir.join("train.bin"), &train);
        put(&dir.join("test.bin"), &record(&[7, 57], 4));
        let names: Vec<String> = (0..100).map(|i| format!("class{i}")).collect();
        put(
            &dir.join("fine_label_names.txt"),
            names.join("\n").as_bytes(),
        );
        let s = cifar100(tmp.path()).unwrap();
        assert_eq!(s.train.labels_vec(), vec![42, 99, 0]);
        assert_eq!(s.test.labels_vec(), vec![57]);
        assert_eq!(s.train.classes, 100);
        assert_eq!(s.train.class_names[57], "class57");
        assert_eq!(pixels(&s.train)[PIXELS..2 * PIXELS], record(&[], 2)[..]);
        assert_eq!(s.train.mean, vec![0.5071, 0.4866, 0.4409]);
        assert_eq!(s.train.std, vec![0.2673, 0.2564, 0.2762]);
        assert_eq!(s.test.augment, Augment::CROP_FLIP);

        put(&dir.join("test.bin"), &record(&[20, 5], 4));
        let e = err(cifar100(&dir));
        assert!(
            e.contains("test.bin")
                && e.contains("coarse label 20 of record 0 is out of range 0..19"),
            "{e}"
        );
        put(&dir.join("test.bin"), &record(&[1, 100], 4));
        let e = err(cifar100(&dir));
        assert!(
            e.contains("label 100 of record 0 is out of range 0..99"),
            "{e}"
        );
    }

    #[test]
    fn bad_cifar_files_are_named_with_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cifar-10-batches-bin");
        write_cifar10_dir(&dir);
        // Truncated record.
        let mut b = record(&[1], 0);
        b.extend(record(&[2], 0)[..100].to_vec());
        put(&dir.join("data_batch_3.bin"), &b);
        let e = err(cifar10(&dir));
        assert!(
            e.contains("data_batch_3.bin")
                && e.contains("truncated: 3173 bytes")
                && e.contains("1 whole records and 100 bytes"),
            "{e}"
        );
        // Empty file (a failed copy): an error, not a batch of zero records.
        put(&dir.join("data_batch_3.bin"), &[]);
        let e = err(cifar10(&dir));
        assert!(
            e.contains("data_batch_3.bin") && e.contains("is empty (0 bytes)"),
            "{e}"
        );
        // Label out of range.
        put(&dir.join("data_batch_3.bin"), &record(&[10], 0));
        let e = err(cifar10(&dir));
        assert!(
            e.contains("data_batch_3.bin")
                && e.contains("label 10 of record 0 is out of range 0..9"),
            "{e}"
        );
        // Wrong number of class names.
        put(&dir.join("data_batch_3.bin"), &record(&[1], 0));
        put(&dir.join(META10), b"cat\ndog\n");
        let e = err(cifar10(&dir));
        assert!(
            e.contains("batches.meta.txt") && e.contains("has 2 class names, expected 10"),
            "{e}"
        );
        // Missing files, with the list of what was expected.
        std::fs::remove_file(dir.join("data_batch_5.bin")).unwrap();
        std::fs::remove_file(dir.join(TEST_BATCH)).unwrap();
        let e = err(cifar10(&dir));
        assert!(
            e.contains("missing data_batch_5.bin, test_batch.bin")
                && e.contains("expected data_batch_1.bin, data_batch_2.bin"),
            "{e}"
        );
        let e = err(cifar10(&tmp.path().join("nowhere")));
        assert!(
            e.contains("nowhere") && e.contains("missing data_batch_1.bin"),
            "{e}"
        );
    }

    #[test]
    fn written_cifar10_loads_back_identically() {
        for n in [23usize, 5] {
            let tmp = tempfile::tempdir().unwrap();
            let (px, labels) = (0..n)
                .map(|i| (record(&[], 13 * i), (i * 7 % 10) as i64))
                .fold((Vec::new(), Vec::new()), |(mut p, mut l), (r, y)| {
                    p.extend(r);
                    l.push(y);
                    (p, l)
                });
            let d = |px: &[u8], labels: &[i64]| {
                let mut d =
                    crate::data::Dataset::from_pixels("mine", px, [3, 32, 32], labels, 10, 255.0);
                d.class_names = CIFAR10_CLASSES.map(String::from).to_vec();
                d
            };
            let src = Source {
                train: d(&px, &labels),
                test: d(&px[..2 * PIXELS], &labels[..2]),
            };
            let out = tmp.path().join("out");
            write_cifar10(&src, &out).unwrap();
            let sizes: Vec<u64> = TRAIN_BATCHES
                .iter()
                .map(|b| std::fs::metadata(out.join(b)).unwrap().len() / (1 + PIXELS as u64))
                .collect();
            let expect: Vec<u64> = (0..5)
                .map(|k| ((k + 1) * n / 5 - k * n / 5) as u64)
                .collect();
            assert_eq!(sizes, expect);
            let back = cifar10(&out).unwrap();
            assert!(back.train.images.equal(&src.train.images));
            assert!(back.train.labels.equal(&src.train.labels));
            assert!(back.test.images.equal(&src.test.images));
            assert!(back.test.labels.equal(&src.test.labels));
            assert_eq!(back.train.class_names, src.train.class_names);
            // Only the five batches, the test batch and the names: no temporary files left.
            assert_eq!(std::fs::read_dir(&out).unwrap().count(), 7);
        }
    }

    #[test]
    fn the_writer_refuses_what_the_layout_cannot_hold() {
        let tmp = tempfile::tempdir().unwrap();
        let px = vec![0u8; 2 * 3 * 8 * 8];
        let small =
            || crate::data::Dataset::from_pixels("tiny", &px, [3, 8, 8], &[0, 1], 10, 255.0);
        let src = Source {
            train: small(),
            test: small(),
        };
        let e = err(write_cifar10(&src, tmp.path()));
        assert!(
            e.contains("tiny (train split)") && e.contains("[2, 3, 8, 8]"),
            "{e}"
        );
        let px = vec![0u8; 2 * PIXELS];
        let five =
            || crate::data::Dataset::from_pixels("five", &px, [3, 32, 32], &[0, 1], 5, 255.0);
        let e = err(write_cifar10(
            &Source {
                train: five(),
                test: five(),
            },
            tmp.path(),
        ));
        assert!(e.contains("has 5 classes"), "{e}");
        let mut three = crate::data::Dataset::from_pixels(
            "three",
            &vec![0u8; 3 * PIXELS],
            [3, 32, 32],
            &[0, 1, 2],
            10,
            255.0,
        );
        three.class_names = CIFAR10_CLASSES.map(String::from).to_vec();
        let test = three.subset(&[0]);
        let e = err(write_cifar10(&Source { train: three, test }, tmp.path()));
        assert!(e.contains("has 3 train and 1 test images"), "{e}");
        let mut twelve =
            crate::data::Dataset::from_pixels("l", &px, [3, 32, 32], &[0, 12], 10, 255.0);
        twelve.class_names = CIFAR10_CLASSES.map(String::from).to_vec();
        let e = err(write_cifar10(
            &Source {
                train: twelve,
                test: five(),
            },
            tmp.path(),
        ));
        assert!(
            e.contains("label 12 of sample 1 is out of range 0..9"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
