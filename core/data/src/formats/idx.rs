//! MNIST and Fashion-MNIST in their IDX files (`train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each plain or
//! gzipped with a `.gz` suffix). Images: magic 2051, then big-endian u32 count, rows, columns,
//! then the pixels row-major; labels: magic 2049, a u32 count, then one byte per label.

use std::path::{Path, PathBuf};

use super::{Parts, Source, bad, check_labels, inflate, read_file, stats};
use crate::data::{Augment, DataError};

/// Fashion-MNIST's class names in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Loads MNIST from the folder `path` (28x28 greyscale, class names "0".."9").
pub fn mnist(path: &Path) -> Result<Source, DataError> {
    let names: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    load(path, "mnist", names, stats::MNIST)
}

/// Loads Fashion-MNIST from the folder `path` (28x28 greyscale, the official class names).
pub fn fashion_mnist(path: &Path) -> Result<Source, DataError> {
    let names = FASHION_MNIST_CLASSES.map(String::from).to_vec();
    load(path, "fashion_mnist", names, stats::FASHION_MNIST)
}

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;
const SIDE: usize = 28;

fn load(
    dir: &Path,
    name: &str,
    class_names: Vec<String>,
    (mean, std): ([f64; 1], [f64; 1]),
) -> Result<Source, DataError> {
    let stems = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];
    let found: Vec<Option<PathBuf>> = stems.iter().map(|s| find(dir, s)).collect();
    if found.iter().any(Option::is_none) {
        return Err(DataError::MissingFiles {
            dir: dir.to_path_buf(),
            missing: stems
                .iter()
                .zip(&found)
                .filter(|(_, f)| f.is_none())
                .map(|(s, _)| format!("{s}[.gz]"))
                .collect(),
            expected: stems.iter().map(|s| format!("{s}[.gz]")).collect(),
        });
    }
    let paths: Vec<PathBuf> = found.into_iter().flatten().collect();
    let split = |images: &Path, labels: &Path| -> Result<_, DataError> {
        let pixels = read_images(images)?;
        let y = read_labels(labels)?;
        if pixels.len() / (SIDE * SIDE) != y.len() {
            return Err(bad(
                labels,
                format!(
                    "holds {} labels but {} holds {} images",
                    y.len(),
                    images.display(),
                    pixels.len() / (SIDE * SIDE)
                ),
            ));
        }
        check_labels(labels, &y, class_names.len())?;
        Ok(Parts {
            name: name.into(),
            pixels,
            shape: [1, SIDE, SIDE],
            labels: y,
            class_names: class_names.clone(),
            mean: mean.to_vec(),
            std: std.to_vec(),
            augment: Augment::NONE,
        }
        .into_dataset())
    };
    Ok(Source {
        train: split(&paths[0], &paths[1])?,
        test: split(&paths[2], &paths[3])?,
    })
}

/// `dir/stem`, `dir/stem.gz`, or the same with the last `-` as a `.` (`train-images.idx3-ubyte`,
/// as some mirrors name them).
fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    let dotted = match stem.rfind('-') {
        Some(i) if stem[..i].contains('-') => {
            let j = stem[..i].rfind('-').unwrap();
            format!("{}.{}", &stem[..j], &stem[j + 1..])
        }
        _ => stem.to_string(),
    };
    [stem.to_string(), dotted]
        .iter()
        .flat_map(|s| [s.clone(), format!("{s}.gz")])
        .map(|s| dir.join(s))
        .find(|p| p.is_file())
}

/// The file's bytes, gunzipped when its name ends in `.gz`.
fn contents(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_file(path)?;
    if path.extension().is_some_and(|e| e == "gz") {
        inflate(path, &bytes, true, "cannot decompress")
    } else {
        Ok(bytes)
    }
}

fn be32(b: &[u8], i: usize) -> usize {
    u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]) as usize
}

/// Checks the magic number and the length implied by the header (`dims` u32 sizes).
fn check(path: &Path, b: &[u8], magic: u32, dims: usize, what: &str) -> Result<usize, DataError> {
    let header = 4 * (1 + dims);
    let truncated_header = || {
        bad(
            path,
            format!(
                "truncated: {} bytes, an IDX {what} header has {header}",
                b.len()
            ),
        )
    };
    if b.len() < 4 {
        return Err(truncated_header());
    }
    let m = be32(b, 0) as u32;
    if m != magic {
        let hint = match m {
            IMAGES_MAGIC => " (this is an image file)",
            LABELS_MAGIC => " (this is a label file)",
            _ if b.starts_with(&[0x1f, 0x8b]) => " (this is gzipped data: name it *.gz)",
            _ => "",
        };
        return Err(bad(
            path,
            format!("wrong magic {m}, expected {magic} for IDX {what}{hint}"),
        ));
    }
    if b.len() < header {
        return Err(truncated_header());
    }
    let n = (1..=dims).try_fold(1usize, |a, i| a.checked_mul(be32(b, i)));
    let expected = n.and_then(|n| n.checked_add(header));
    if expected != Some(b.len()) {
        let sizes: Vec<String> = (1..=dims).map(|i| be32(b, i).to_string()).collect();
        let expected = expected.map_or("more than fits in memory".into(), |e| format!("{e} bytes"));
        let truncated = n
            .and_then(|n| n.checked_add(header))
            .is_none_or(|e| b.len() < e);
        let kind = if truncated { "truncated: " } else { "" };
        return Err(bad(
            path,
            format!(
                "{kind}has {} bytes, its header (sizes {}) calls for {expected}",
                b.len(),
                sizes.join(" x ")
            ),
        ));
    }
    Ok(header)
}

fn read_images(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut b = contents(path)?;
    let header = check(path, &b, IMAGES_MAGIC, 3, "images")?;
    let (rows, cols) = (be32(&b, 2), be32(&b, 3));
    if (rows, cols) != (SIDE, SIDE) {
        return Err(bad(
            path,
            format!("image of the wrong size: {rows}x{cols}, expected {SIDE}x{SIDE}"),
        ));
    }
    b.drain(..header);
    Ok(b)
}

fn read_labels(path: &Path) -> Result<Vec<i64>, DataError> {
    let b = contents(path)?;
    let header = check(path, &b, LABELS_MAGIC, 1, "labels")?;
    Ok(b[header..].iter().map(|&y| y as i64).collect())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{err, gzip, pixels, write};
    use super::*;

    fn images(n: usize, seed: usize, side: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [IMAGES_MAGIC as usize, n, side, side] {
            v.extend((x as u32).to_be_bytes());
        }
        v.extend((0..n * side * side).map(|p| ((seed + 5 * p) % 256) as u8));
        v
    }

    fn labels(y: &[u8]) -> Vec<u8> {
        let mut v = LABELS_MAGIC.to_be_bytes().to_vec();
        v.extend((y.len() as u32).to_be_bytes());
        v.extend(y);
        v
    }

    fn setup(dir: &Path) {
        write(
            &dir.join("train-images-idx3-ubyte.gz"),
            &gzip(&images(3, 1, 28)),
        );
        write(&dir.join("train-labels-idx1-ubyte"), &labels(&[7, 0, 9]));
        write(&dir.join("t10k-images-idx3-ubyte"), &images(2, 2, 28));
        write(
            &dir.join("t10k-labels-idx1-ubyte.gz"),
            &gzip(&labels(&[3, 4])),
        );
    }

    #[test]
    fn idx_files_load_exactly_plain_or_gzipped() {
        let tmp = tempfile::tempdir().unwrap();
        setup(tmp.path());
        let s = mnist(tmp.path()).unwrap();
        assert_eq!(s.train.labels_vec(), vec![7, 0, 9]);
        assert_eq!(s.test.labels_vec(), vec![3, 4]);
        assert_eq!(s.train.images.size(), vec![3, 1, 28, 28]);
        assert_eq!(pixels(&s.train), images(3, 1, 28)[16..]);
        assert_eq!(pixels(&s.test), images(2, 2, 28)[16..]);
        assert_eq!(s.train.mean, vec![0.1307]);
        assert_eq!(s.train.std, vec![0.3081]);
        assert_eq!(s.train.class_names[7], "7");
        assert_eq!(s.train.augment, Augment::NONE);
        let f = fashion_mnist(tmp.path()).unwrap();
        assert_eq!(f.test.class_names[9], "Ankle boot");
        assert_eq!(f.train.mean, vec![0.2860]);
        assert_eq!(f.train.std, vec![0.3530]);
        assert_eq!(f.train.name, "fashion_mnist");
        // The dotted names some mirrors use.
        std::fs::rename(
            tmp.path().join("t10k-images-idx3-ubyte"),
            tmp.path().join("t10k-images.idx3-ubyte"),
        )
        .unwrap();
        assert_eq!(
            pixels(&mnist(tmp.path()).unwrap().test),
            images(2, 2, 28)[16..]
        );
    }

    #[test]
    fn bad_idx_files_say_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        setup(d);
        std::fs::remove_file(d.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let e = err(mnist(d));
        assert!(
            e.contains("missing t10k-labels-idx1-ubyte[.gz]")
                && e.contains("expected train-images-idx3-ubyte[.gz]"),
            "{e}"
        );
        setup(d);
        // Wrong magic: a label file where the images should be.
        write(&d.join("t10k-images-idx3-ubyte"), &labels(&[1, 2]));
        let e = err(mnist(d));
        assert!(
            e.contains("t10k-images-idx3-ubyte")
                && e.contains(
                    "wrong magic 2049, expected 2051 for IDX images (this is a label file)"
                ),
            "{e}"
        );
        // Truncated.
        let img = images(2, 2, 28);
        write(&d.join("t10k-images-idx3-ubyte"), &img[..img.len() - 1]);
        let e = err(mnist(d));
        assert!(
            e.contains("truncated: has 1583 bytes")
                && e.contains("2 x 28 x 28")
                && e.contains("1584 bytes"),
            "{e}"
        );
        // Wrong size.
        write(&d.join("t10k-images-idx3-ubyte"), &images(2, 2, 32));
        let e = err(mnist(d));
        assert!(
            e.contains("image of the wrong size: 32x32, expected 28x28"),
            "{e}"
        );
        // Counts that disagree.
        write(&d.join("t10k-images-idx3-ubyte"), &images(3, 2, 28));
        let e = err(mnist(d));
        assert!(
            e.contains("t10k-labels-idx1-ubyte.gz: holds 2 labels but")
                && e.contains("t10k-images-idx3-ubyte holds 3 images"),
            "{e}"
        );
        // Label out of range.
        write(&d.join("t10k-images-idx3-ubyte"), &images(2, 2, 28));
        write(
            &d.join("t10k-labels-idx1-ubyte.gz"),
            &gzip(&labels(&[3, 10])),
        );
        let e = err(mnist(d));
        assert!(
            e.contains("label 10 of record 1 is out of range 0..9"),
            "{e}"
        );
        // Corrupt and truncated gzip.
        let mut z = gzip(&labels(&[3, 4]));
        let last = z.len() - 5;
        z[last] ^= 0x55; // inside the CRC-32 trailer
        write(&d.join("t10k-labels-idx1-ubyte.gz"), &z);
        let e = err(mnist(d));
        assert!(
            e.contains("t10k-labels-idx1-ubyte.gz") && e.contains("gzip data corrupt"),
            "{e}"
        );
        let z = gzip(&labels(&[3, 4]));
        write(&d.join("t10k-labels-idx1-ubyte.gz"), &z[..z.len() - 12]);
        let e = err(mnist(d));
        assert!(e.contains("gzip data truncated"), "{e}");
        // A gzipped file without the .gz suffix.
        std::fs::remove_file(d.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        write(&d.join("t10k-labels-idx1-ubyte"), &gzip(&labels(&[3, 4])));
        let e = err(mnist(d));
        assert!(e.contains("name it *.gz"), "{e}");
    }
}
