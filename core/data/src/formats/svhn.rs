//! SVHN's cropped digits (`train_32x32.mat`, `test_32x32.mat`): MATLAB v5 files with `X`
//! (32x32x3xN uint8, column-major: height, width, channel, sample) and `y` (Nx1, 1..10 where 10
//! stands for the digit 0). `extra_32x32.mat` is not read.

use std::path::Path;

use super::mat::{MatArray, MatData, read_mat};
use super::{Parts, Source, bad, require_files, stats};
use crate::data::{Augment, DataError, Dataset};

/// Loads `train_32x32.mat` and `test_32x32.mat` from the folder `path`. Labels are the digits
/// (SVHN's label 10 becomes 0), class names "0".."9".
pub fn svhn(path: &Path) -> Result<Source, DataError> {
    require_files(path, &["train_32x32.mat", "test_32x32.mat"])?;
    Ok(Source {
        train: load(&path.join("train_32x32.mat"))?,
        test: load(&path.join("test_32x32.mat"))?,
    })
}

fn load(path: &Path) -> Result<Dataset, DataError> {
    let mut vars = read_mat(path, &["X", "y"])?.into_iter();
    let (x, y) = (vars.next().unwrap(), vars.next().unwrap());
    let (pixels, n) = images(path, x)?;
    let labels = labels(path, y, n)?;
    // X is column-major: for sample n, channel c, column j, row i the offset is
    // i + 32 j + 1024 c + 3072 n, i.e. each 32x32 plane is stored transposed.
    let mut chw = vec![0u8; pixels.len()];
    for (dst, src) in chw.chunks_exact_mut(1024).zip(pixels.chunks_exact(1024)) {
        for (i, row) in dst.chunks_exact_mut(32).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = src[32 * j + i];
            }
        }
    }
    Ok(Parts {
        name: "svhn".into(),
        pixels: chw,
        shape: [3, 32, 32],
        labels,
        class_names: (0..10).map(|d| d.to_string()).collect(),
        mean: stats::SVHN.0.to_vec(),
        std: stats::SVHN.1.to_vec(),
        // Digits are not mirror-symmetric: the reference code trains SVHN without augmentation.
        augment: Augment::NONE,
    }
    .into_dataset())
}

/// X's pixels (MATLAB order) and the number of images.
fn images(path: &Path, x: MatArray) -> Result<(Vec<u8>, usize), DataError> {
    let n = match x.dims[..] {
        [32, 32, 3, n] => n,
        [32, 32, 3] => 1,
        _ => {
            return Err(bad(
                path,
                format!(
                    "image of the wrong size: X is {}, expected 32x32x3xN",
                    dims(&x.dims)
                ),
            ));
        }
    };
    let pixels = match x.data {
        MatData::U8(v) => v,
        MatData::F64(v) => v
            .iter()
            .map(|&p| {
                if p.fract() == 0.0 && (0.0..=255.0).contains(&p) {
                    Ok(p as u8)
                } else {
                    Err(bad(path, format!("X holds {p}, not a pixel value 0..255")))
                }
            })
            .collect::<Result<_, _>>()?,
    };
    Ok((pixels, n))
}

/// y's labels with 10 mapped to 0; exactly `n` of them.
fn labels(path: &Path, y: MatArray, n: usize) -> Result<Vec<i64>, DataError> {
    let count = y.data.len();
    if y.dims.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(bad(path, format!("y is {}, expected Nx1", dims(&y.dims))));
    }
    if count != n {
        return Err(bad(
            path,
            format!("X holds {n} images but y holds {count} labels"),
        ));
    }
    let values: Vec<f64> = match y.data {
        MatData::U8(v) => v.into_iter().map(f64::from).collect(),
        MatData::F64(v) => v,
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v.fract() == 0.0 && (1.0..=10.0).contains(&v) {
                Ok(v as i64 % 10)
            } else {
                Err(bad(
                    path,
                    format!("label {v} of sample {i} is out of range 1..10"),
                ))
            }
        })
        .collect()
}

fn dims(d: &[usize]) -> String {
    d.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

#[cfg(test)]
mod tests {
    use super::super::mat::build::{compressed, file, matrix};
    use super::super::test_util::{err, pixels, write};
    use super::*;

    /// X(i, j, c, k) (MATLAB's 0-based indices) = (i + 3j + 50c + 7k) mod 256.
    fn x_value(i: usize, j: usize, c: usize, k: usize) -> u8 {
        ((i + 3 * j + 50 * c + 7 * k) % 256) as u8
    }

    fn x_bytes(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for k in 0..n {
            for c in 0..3 {
                for j in 0..32 {
                    for i in 0..32 {
                        v.push(x_value(i, j, c, k));
                    }
                }
            }
        }
        v
    }

    fn mat(n: usize, y: &[u8], y_double: bool, zip: bool) -> Vec<u8> {
        let x = matrix("X", 9, &[32, 32, 3, n as i32], 2, &x_bytes(n));
        let y = if y_double {
            let d: Vec<u8> = y.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect();
            matrix("y", 6, &[y.len() as i32, 1], 9, &d)
        } else {
            matrix("y", 9, &[y.len() as i32, 1], 2, y)
        };
        if zip {
            file(&[compressed(&x), compressed(&y)])
        } else {
            file(&[x, y])
        }
    }

    #[test]
    fn svhn_x_is_read_column_major_and_label_10_is_digit_0() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            &tmp.path().join("train_32x32.mat"),
            &mat(3, &[10, 1, 9], true, true),
        );
        write(
            &tmp.path().join("test_32x32.mat"),
            &mat(2, &[5, 10], false, false),
        );
        let s = svhn(tmp.path()).unwrap();
        assert_eq!(s.train.labels_vec(), vec![0, 1, 9]);
        assert_eq!(s.test.labels_vec(), vec![5, 0]);
        assert_eq!(s.train.images.size(), vec![3, 3, 32, 32]);
        let px = pixels(&s.train);
        for (k, c, row, col) in [(0, 0, 0, 1), (2, 1, 5, 30), (1, 2, 31, 0), (2, 2, 17, 4)] {
            // Row `row`, column `col` of the image is MATLAB's X(row, col, c, k).
            assert_eq!(
                px[k * 3072 + c * 1024 + row * 32 + col],
                x_value(row, col, c, k),
                "{k} {c} {row} {col}"
            );
        }
        assert_eq!(
            pixels(&s.test)[3072 + 1024 + 32 * 3 + 2],
            x_value(3, 2, 1, 1)
        );
        assert_eq!(s.train.class_names[0], "0");
        assert_eq!(s.train.mean, vec![0.4377, 0.4438, 0.4728]);
        assert_eq!(s.train.std, vec![0.1980, 0.2010, 0.1970]);
        // No augmentation by default (the reference's SVHN loaders); `[data] augment` overrides.
        assert_eq!(s.train.augment, Augment::NONE);
        assert_eq!(s.train.max_value, 255.0);
    }

    #[test]
    fn bad_svhn_files_say_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let e = err(svhn(tmp.path()));
        assert!(e.contains("missing train_32x32.mat, test_32x32.mat"), "{e}");
        write(
            &tmp.path().join("test_32x32.mat"),
            &mat(2, &[5, 10], false, true),
        );
        write(
            &tmp.path().join("train_32x32.mat"),
            &mat(2, &[5, 11], false, true),
        );
        let e = err(svhn(tmp.path()));
        assert!(
            e.contains("train_32x32.mat")
                && e.contains("label 11 of sample 1 is out of range 1..10"),
            "{e}"
        );
        write(
            &tmp.path().join("train_32x32.mat"),
            &mat(2, &[5, 0], true, true),
        );
        let e = err(svhn(tmp.path()));
        assert!(e.contains("label 0 of sample 1 is out of range"), "{e}");
        write(
            &tmp.path().join("train_32x32.mat"),
            &mat(2, &[5], false, true),
        );
        let e = err(svhn(tmp.path()));
        assert!(e.contains("X holds 2 images but y holds 1 labels"), "{e}");
        let small = file(&[
            matrix("X", 9, &[16, 16, 3, 1], 2, &[0; 768]),
            matrix("y", 9, &[1, 1], 2, &[1]),
        ]);
        write(&tmp.path().join("train_32x32.mat"), &small);
        let e = err(svhn(tmp.path()));
        assert!(e.contains("image of the wrong size: X is 16x16x3x1"), "{e}");
        let good = mat(2, &[5, 10], false, true);
        write(&tmp.path().join("train_32x32.mat"), &good[..good.len() / 2]);
        let e = err(svhn(tmp.path()));
        assert!(
            e.contains("train_32x32.mat") && e.contains("truncated"),
            "{e}"
        );
    }
}
