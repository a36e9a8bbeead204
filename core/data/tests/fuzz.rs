//! Property-based fuzzing of every file-format loader, on the stable toolchain (proptest).
//!
//! Each target writes a data set whose files are valid seeds mutated (truncations, bit flips,
//! overwritten or inserted bytes, size fields set to huge or boundary values), or pure random
//! bytes, and calls the public loader: it must return `Ok` or `Err`, never panic or abort.
//! The budget: see `api/tests/support/fuzz.rs` and docs/fuzzing.md.

use std::io::Write;
use std::path::Path;

use proptest::prelude::*;

use unlearn_data::formats;

#[path = "../../api/tests/support/fuzz.rs"]
mod harness;
use harness::{Bytes, Op, apply, bytes_input, fuzz, op};

// ---------------------------------------------------------------------------------------------
// Seeds and helpers.

fn write(path: &Path, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A fresh, empty folder for one case (the same path each time, to keep the cases cheap).
fn fresh(dir: &Path) -> &Path {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    dir
}

/// `n` CIFAR records of `head` label bytes (each below `classes`) and 3,072 pixels.
fn cifar_records(n: usize, head: usize, classes: u8) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        v.extend((0..head).map(|k| (i + k) as u8 % classes));
        v.extend((0..3072).map(|p| (p * 7 + i) as u8));
    }
    v
}

const CIFAR10_FILES: [&str; 7] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
    "batches.meta.txt",
];

fn cifar10_seed(file: usize) -> Vec<u8> {
    if file == 6 {
        formats::CIFAR10_CLASSES.join("\n").into_bytes()
    } else {
        cifar_records(2, 1, 10)
    }
}

#[test]
fn fuzz_cifar10() {
    let tmp = tempfile::tempdir().unwrap();
    fuzz(
        "cifar10",
        (0usize..7, bytes_input(), any::<bool>()),
        |(file, input, nested)| {
            let root = fresh(tmp.path());
            let dir = if *nested {
                root.join("cifar-10-batches-bin")
            } else {
                root.to_path_buf()
            };
            for (k, name) in CIFAR10_FILES.iter().enumerate() {
                let seed = cifar10_seed(k);
                let bytes = if k == *file { input.of(&seed) } else { seed };
                write(&dir.join(name), &bytes);
            }
            let _ = formats::cifar10(root);
        },
    );
}

#[test]
fn fuzz_cifar100() {
    let tmp = tempfile::tempdir().unwrap();
    let names: String = (0..100).map(|i| format!("class{i}\n")).collect();
    fuzz("cifar100", (0usize..3, bytes_input()), |(file, input)| {
        let dir = fresh(tmp.path());
        let seeds = [
            cifar_records(2, 2, 20),
            cifar_records(1, 2, 20),
            names.clone().into_bytes(),
        ];
        for (k, (name, seed)) in ["train.bin", "test.bin", "fine_label_names.txt"]
            .iter()
            .zip(seeds)
            .enumerate()
        {
            let bytes = if k == *file { input.of(&seed) } else { seed };
            write(&dir.join(name), &bytes);
        }
        let _ = formats::cifar100(dir);
    });
}

fn idx_images(n: u32, side: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [2051, n, side, side] {
        v.extend(x.to_be_bytes());
    }
    v.extend((0..n * side * side).map(|p| (p * 5) as u8));
    v
}

fn idx_labels(y: &[u8]) -> Vec<u8> {
    let mut v = 2049u32.to_be_bytes().to_vec();
    v.extend((y.len() as u32).to_be_bytes());
    v.extend(y);
    v
}

#[test]
fn fuzz_idx() {
    let tmp = tempfile::tempdir().unwrap();
    let stems = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];
    fuzz(
        "idx",
        // Which file to mutate, its bytes, whether it is gzipped (mutated before or after).
        (0usize..4, bytes_input(), 0u8..3, any::<bool>()),
        |(file, input, gz, fashion)| {
            let dir = fresh(tmp.path());
            for (k, stem) in stems.iter().enumerate() {
                let seed = if k % 2 == 0 {
                    idx_images(2, 28)
                } else {
                    idx_labels(&[3, 9])
                };
                if k != *file {
                    write(&dir.join(stem), &seed);
                    continue;
                }
                match gz {
                    0 => write(&dir.join(stem), &input.of(&seed)),
                    1 => write(&dir.join(format!("{stem}.gz")), &gzip(&input.of(&seed))),
                    _ => write(&dir.join(format!("{stem}.gz")), &input.of(&gzip(&seed))),
                }
            }
            let _ = if *fashion {
                formats::fashion_mnist(dir)
            } else {
                formats::mnist(dir)
            };
        },
    );
}

// MAT v5 files, built byte by byte (little endian).
fn mat_element(typ: u32, data: &[u8]) -> Vec<u8> {
    let mut v = typ.to_le_bytes().to_vec();
    v.extend((data.len() as u32).to_le_bytes());
    v.extend(data);
    v.resize(v.len().div_ceil(8) * 8, 0);
    v
}

fn mat_matrix(name: &str, class: u32, dims: &[i32], typ: u32, data: &[u8]) -> Vec<u8> {
    let mut flags = class.to_le_bytes().to_vec();
    flags.extend([0; 4]);
    let dims: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
    let mut body = mat_element(6, &flags);
    body.extend(mat_element(5, &dims));
    body.extend(mat_element(1, name.as_bytes()));
    body.extend(mat_element(typ, data));
    mat_element(14, &body)
}

fn mat_file(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut h = format!("{:<116}", "MATLAB 5.0 MAT-file, fuzz seed").into_bytes();
    h.extend([0; 8]);
    h.extend(0x0100u16.to_le_bytes());
    h.extend(b"IM");
    for e in elements {
        h.extend(e);
    }
    h
}

/// An SVHN-like MAT file: X (32x32x3xN uint8) and y (Nx1 double), `compressed` or plain.
fn svhn_mat(n: usize, compressed: bool) -> Vec<u8> {
    let pixels: Vec<u8> = (0..n * 3072).map(|p| (p * 3) as u8).collect();
    let y: Vec<u8> = (0..n)
        .flat_map(|i| (1.0 + (i % 10) as f64).to_le_bytes())
        .collect();
    let x = mat_matrix("X", 9, &[32, 32, 3, n as i32], 2, &pixels);
    let y = mat_matrix("y", 6, &[n as i32, 1], 9, &y);
    let skipped = mat_matrix("other", 4, &[1, 3], 4, &[97, 0, 98, 0, 99, 0]);
    if compressed {
        mat_file(&[
            mat_element(15, &zlib(&x)),
            skipped,
            mat_element(15, &zlib(&y)),
        ])
    } else {
        mat_file(&[x, skipped, y])
    }
}

#[test]
fn fuzz_mat() {
    let tmp = tempfile::tempdir().unwrap();
    let seeds = [svhn_mat(2, false), svhn_mat(1, true)];
    let path = tmp.path().join("f.mat");
    fuzz("mat", (0usize..2, bytes_input()), |(seed, input)| {
        write(&path, &input.of(&seeds[*seed]));
        let _ = formats::read_mat(&path, &["X", "y"]);
    });
}

#[test]
fn fuzz_svhn() {
    let tmp = tempfile::tempdir().unwrap();
    fuzz(
        "svhn",
        (any::<bool>(), any::<bool>(), bytes_input()),
        |(test, compressed, input)| {
            let dir = fresh(tmp.path());
            let seed = svhn_mat(2, *compressed);
            let (a, b) = if *test {
                (seed.clone(), input.of(&seed))
            } else {
                (input.of(&seed), seed.clone())
            };
            write(&dir.join("train_32x32.mat"), &a);
            write(&dir.join("test_32x32.mat"), &b);
            let _ = formats::svhn(dir);
        },
    );
}

/// A valid PNG of `w` x `h` RGB pixels.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A valid JPEG of `w` x `h` RGB pixels.
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// A PNG whose header declares `w` x `h` pixels (CRC fixed, so decoders read past the header)
/// but whose data are a few bytes: the declared size must not be trusted.
fn png_declaring(w: u32, h: u32, color: u8) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, color, 0, 0, 0]);
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [
        ihdr,
        b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01".to_vec(),
        b"IEND".to_vec(),
    ] {
        v.extend((chunk.len() as u32 - 4).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&chunk);
        v.extend(&chunk);
        v.extend(crc.sum().to_be_bytes());
    }
    v
}

/// An image file's bytes for the folder targets.
#[derive(Debug, Clone)]
enum Blob {
    Png(u32, u32),
    Jpeg(u32, u32),
    Declaring(u32, u32, u8),
    MutatedPng(Vec<Op>),
    MutatedJpeg(Vec<Op>),
    Random(Vec<u8>),
    /// A folder where a file is expected.
    Folder,
}

fn blob() -> impl Strategy<Value = Blob> {
    let side = prop_oneof![Just(4u32), Just(5), 1u32..9];
    let huge = prop_oneof![
        Just(0u32),
        Just(1),
        Just(1 << 14),
        Just(1 << 16),
        Just(0x7fff_ffff),
        Just(u32::MAX)
    ];
    let ops = prop::collection::vec(op(), 1..6);
    prop_oneof![
        3 => (side.clone(), side.clone()).prop_map(|(w, h)| Blob::Png(w, h)),
        2 => (side.clone(), side).prop_map(|(w, h)| Blob::Jpeg(w, h)),
        1 => (huge.clone(), huge, prop_oneof![Just(0u8), Just(2), Just(6)])
            .prop_map(|(w, h, c)| Blob::Declaring(w, h, c)),
        2 => ops.clone().prop_map(Blob::MutatedPng),
        2 => ops.prop_map(Blob::MutatedJpeg),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Blob::Random),
        1 => Just(Blob::Folder),
    ]
}

fn write_blob(path: &Path, b: &Blob) {
    let bytes = match b {
        Blob::Png(w, h) => png(*w, *h),
        Blob::Jpeg(w, h) => jpeg(*w, *h),
        Blob::Declaring(w, h, c) => png_declaring(*w, *h, *c),
        Blob::MutatedPng(ops) => apply(&png(4, 4), ops),
        Blob::MutatedJpeg(ops) => apply(&jpeg(4, 4), ops),
        Blob::Random(b) => b.clone(),
        Blob::Folder => {
            std::fs::create_dir_all(path).unwrap();
            return;
        }
    };
    write(path, &bytes);
}

/// A folder layout: (split, class, file name, blob) entries; names include odd ones.
fn layout() -> impl Strategy<Value = Vec<(u8, u8, u8, Blob)>> {
    prop::collection::vec((0u8..3, 0u8..4, 0u8..6, blob()), 0..8)
}

const SPLITS: [&str; 3] = ["train", "test", "val"];
const CLASSES: [&str; 4] = ["cat", "dog", "a b", ".hidden"];
const FILES: [&str; 6] = ["1.png", "2.jpg", "3.JPEG", "4.PNG", "5.txt", "png"];

#[test]
fn fuzz_image_folder() {
    let tmp = tempfile::tempdir().unwrap();
    fuzz("image_folder", layout(), |entries| {
        let root = fresh(tmp.path());
        for (s, c, f, b) in entries {
            let path = root
                .join(SPLITS[*s as usize])
                .join(CLASSES[*c as usize])
                .join(FILES[*f as usize]);
            // A layout may name one path twice, as a file and as a folder: the first wins.
            if !path.exists() && std::fs::create_dir_all(path.parent().unwrap()).is_ok() {
                write_blob(&path, b);
            }
        }
        let _ = formats::image_folder(root);
    });
}

/// TinyImageNet's text files (wnids, words, val annotations) mutated or random, with a few
/// train and val images (valid, or blobs of the folder target).
#[test]
fn fuzz_tiny_imagenet() {
    let tmp = tempfile::tempdir().unwrap();
    let wnids = "n01\nn02\n";
    let words = "n01\tgoldfish, Carassius auratus\nn02\tgoldfish\nn03\tother\n";
    let ann = "val_0.JPEG\tn01\t0\t0\t63\t63\nval_1.JPEG\tn02\t1\t2\t3\t4\n";
    let text = prop_oneof![
        4 => prop::collection::vec(op(), 0..5).prop_map(Bytes::Mutated),
        1 => prop::collection::vec(
            prop_oneof![Just(b'\t'), Just(b'\n'), Just(b'n'), Just(b'0'), Just(b','), any::<u8>()],
            0..60
        ).prop_map(Bytes::Random),
    ];
    fuzz(
        "tiny_imagenet",
        (0usize..3, text, prop::option::of(blob())),
        |(file, input, odd_image)| {
            let root = fresh(tmp.path());
            let dir = root.join("tiny-imagenet-200");
            let seeds = [wnids, words, ann];
            for (k, name) in ["wnids.txt", "words.txt", "val/val_annotations.txt"]
                .iter()
                .enumerate()
            {
                let seed = seeds[k].as_bytes();
                let bytes = if k == *file {
                    input.of(seed)
                } else {
                    seed.to_vec()
                };
                write(&dir.join(name), &bytes);
            }
            let img = png(64, 64);
            for w in ["n01", "n02"] {
                write(&dir.join(format!("train/{w}/images/{w}_0.JPEG")), &img);
            }
            write(&dir.join("val/images/val_0.JPEG"), &img);
            match odd_image {
                Some(b) => write_blob(&dir.join("val/images/val_1.JPEG"), b),
                None => write(&dir.join("val/images/val_1.JPEG"), &img),
            }
            let _ = formats::tiny_imagenet(root);
        },
    );
}
