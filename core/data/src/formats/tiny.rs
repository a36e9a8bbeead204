//! TinyImageNet-200 (`tiny-imagenet-200/`): `wnids.txt`, `words.txt`,
//! `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` and `val/val_annotations.txt`
//! (`<file>\t<wnid>\t<box>` per line). The unlabelled `test/` folder is not read.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::folder::images_in;
use super::{Parts, Source, bad, decode_rgb, read_text, require_files, resolve_dir, stats};
use crate::data::{Augment, DataError};

const SIZE: (u32, u32) = (64, 64);

/// Loads TinyImageNet-200 (`path` may be `tiny-imagenet-200/` or its parent): train = the train
/// folder, test = the official val folder labelled by `val_annotations.txt`. Labels follow the
/// wnids of `wnids.txt` sorted by name (the order of torchvision's `ImageFolder` over `train/`,
/// so labels match PyTorch pipelines); class names are each wnid's first name in `words.txt`
/// (`"goldfish"`), with the wnid appended where two classes would share a name, or the wnid
/// itself when `words.txt` lacks it. Samples are ordered by class, then file name. Images must
/// be 64x64; greyscale ones are converted to RGB.
pub fn tiny_imagenet(path: &Path) -> Result<Source, DataError> {
    let dir = resolve_dir(path, "tiny-imagenet-200", "wnids.txt");
    require_files(
        &dir,
        &[
            "wnids.txt",
            "words.txt",
            "train",
            "val/images",
            "val/val_annotations.txt",
        ],
    )?;
    let wnids_path = dir.join("wnids.txt");
    let mut wnids: Vec<String> = read_text(&wnids_path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    wnids.sort();
    // Each wnid names a folder under train/: a path would read outside the data set.
    if let Some(w) = wnids
        .iter()
        .find(|w| w.contains(['/', '\\']) || *w == "." || *w == "..")
    {
        return Err(bad(
            &wnids_path,
            format!("wnid {w:?} is not a folder name (wnids look like n01443537)"),
        ));
    }
    if let Some(w) = wnids.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(&wnids_path, format!("lists {} twice", w[0])));
    }
    if wnids.is_empty() {
        return Err(bad(&wnids_path, "lists no wnids"));
    }
    let label: HashMap<&str, i64> = wnids
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i as i64))
        .collect();
    let class_names = names(&dir.join("words.txt"), &wnids)?;

    // Train: train/<wnid>/images/*.
    let train_dir = dir.join("train");
    let missing: Vec<String> = wnids
        .iter()
        .map(|w| format!("{w}/images"))
        .filter(|p| !train_dir.join(p).is_dir())
        .collect();
    if !missing.is_empty() {
        return Err(DataError::MissingFiles {
            dir: train_dir,
            missing,
            expected: vec!["<wnid>/images/ for every wnid in wnids.txt".into()],
        });
    }
    let mut train_files = Vec::new();
    let mut train_labels = Vec::new();
    for (y, w) in wnids.iter().enumerate() {
        let files = images_in(&train_dir.join(w).join("images"))?;
        train_labels.extend(std::iter::repeat_n(y as i64, files.len()));
        train_files.extend(files);
    }

    // Val: val/images/* labelled by val_annotations.txt.
    let ann_path = dir.join("val/val_annotations.txt");
    let val_dir = dir.join("val/images");
    let mut val: Vec<(i64, String)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in read_text(&ann_path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split('\t').map(str::trim);
        let (Some(file), Some(wnid)) = (fields.next(), fields.next()) else {
            return Err(bad(
                &ann_path,
                format!(
                    "line {}: expected `<file>\\t<wnid>\\t...`, found {line:?}",
                    i + 1
                ),
            ));
        };
        let Some(&y) = label.get(wnid) else {
            return Err(bad(
                &ann_path,
                format!(
                    "line {}: label out of range: wnid {wnid:?} is not in wnids.txt",
                    i + 1
                ),
            ));
        };
        if !seen.insert(file.to_string()) {
            return Err(bad(
                &ann_path,
                format!("line {}: {file} is annotated twice", i + 1),
            ));
        }
        val.push((y, file.to_string()));
    }
    let present: HashSet<String> = images_in(&val_dir)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let mut missing: Vec<String> = val
        .iter()
        .filter(|(_, f)| !present.contains(f))
        .map(|(_, f)| f.clone())
        .collect();
    if !missing.is_empty() {
        let total = missing.len();
        missing.truncate(10);
        if total > 10 {
            missing.push(format!("and {} more", total - 10));
        }
        return Err(DataError::MissingFiles {
            dir: val_dir,
            missing,
            expected: vec!["every image named in val/val_annotations.txt".into()],
        });
    }
    let mut unannotated: Vec<&String> = present.iter().filter(|f| !seen.contains(*f)).collect();
    if !unannotated.is_empty() {
        unannotated.sort();
        return Err(bad(
            &ann_path,
            format!(
                "has no line for {} image(s) of val/images, e.g. {}",
                unannotated.len(),
                unannotated[0]
            ),
        ));
    }
    val.sort();
    let val_files: Vec<PathBuf> = val.iter().map(|(_, f)| val_dir.join(f)).collect();
    let val_labels: Vec<i64> = val.iter().map(|(y, _)| *y).collect();

    let (train_pixels, _) = decode_rgb(&train_files, Some(SIZE), "")?;
    let (val_pixels, _) = decode_rgb(&val_files, Some(SIZE), "")?;
    let parts = |pixels, labels| {
        Parts {
            name: "tiny_imagenet".into(),
            pixels,
            shape: [3, 64, 64],
            labels,
            class_names: class_names.clone(),
            mean: stats::IMAGENET.0.to_vec(),
            std: stats::IMAGENET.1.to_vec(),
            augment: Augment::CROP_FLIP,
        }
        .into_dataset()
    };
    Ok(Source {
        train: parts(train_pixels, train_labels),
        test: parts(val_pixels, val_labels),
    })
}

/// Each wnid's first name in `words.txt` (`n01443537\tgoldfish, Carassius auratus`).
fn names(path: &Path, wnids: &[String]) -> Result<Vec<String>, DataError> {
    let text = read_text(path)?;
    let mut words: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        if let Some((w, rest)) = line.split_once('\t') {
            let first = rest.split(',').next().unwrap_or("").trim();
            if !first.is_empty() {
                words.insert(w.trim(), first);
            }
        }
    }
    let first: Vec<String> = wnids
        .iter()
        .map(|w| words.get(w.as_str()).map_or(w.clone(), |s| s.to_string()))
        .collect();
    Ok(first
        .iter()
        .zip(wnids)
        .map(|(n, w)| {
            if n != w && first.iter().filter(|m| *m == n).count() > 1 {
                format!("{n} ({w})")
            } else {
                n.clone()
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{err, pixels, write};
    use super::*;

    fn png(img: image::DynamicImage) -> Vec<u8> {
        let mut v = std::io::Cursor::new(Vec::new());
        img.write_to(&mut v, image::ImageFormat::Png).unwrap();
        v.into_inner()
    }

    /// A 64x64 RGB image whose pixel (x, y) is (x + s, y + s, x + y).
    fn rgb(s: u8) -> image::DynamicImage {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([x as u8 + s, y as u8 + s, (x + y) as u8])
        }))
    }

    fn chw(img: &image::DynamicImage) -> Vec<u8> {
        let img = img.to_rgb8();
        (0..3)
            .flat_map(|c| img.pixels().map(move |p| p.0[c]))
            .collect()
    }

    /// Two classes listed out of order; n02 has a greyscale image; val has one of each.
    fn setup(root: &Path) -> image::DynamicImage {
        let d = root.join("tiny-imagenet-200");
        write(&d.join("wnids.txt"), b"n02\nn01\n");
        write(
            &d.join("words.txt"),
            b"n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\tcat, true cat\n",
        );
        write(&d.join("train/n01/images/n01_1.JPEG"), &png(rgb(1)));
        write(&d.join("train/n01/images/n01_0.JPEG"), &png(rgb(0)));
        write(
            &d.join("train/n01/n01_boxes.txt"),
            b"n01_0.JPEG\t0\t0\t10\t10\n",
        );
        let grey = image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(64, 64, |x, y| {
            image::Luma([(3 * x + y) as u8])
        }));
        write(&d.join("train/n02/images/n02_0.JPEG"), &png(grey.clone()));
        write(&d.join("val/images/val_0.JPEG"), &png(rgb(7)));
        write(&d.join("val/images/val_1.JPEG"), &png(rgb(9)));
        write(
            &d.join("val/val_annotations.txt"),
            b"val_0.JPEG\tn02\t0\t3\t40\t60\nval_1.JPEG\tn01\t1\t2\t3\t4\n",
        );
        grey
    }

    #[test]
    fn tiny_imagenet_loads_train_and_the_annotated_val_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let grey = setup(tmp.path());
        let s = tiny_imagenet(tmp.path()).unwrap();
        assert_eq!(s.train.class_names, vec!["goldfish", "cat"]);
        assert_eq!(s.train.labels_vec(), vec![0, 0, 1]);
        assert_eq!(s.train.images.size(), vec![3, 3, 64, 64]);
        let g = chw(&grey);
        assert_eq!(&g[..4096], &g[4096..8192]); // greyscale replicated into R, G, B
        assert_eq!(pixels(&s.train), [chw(&rgb(0)), chw(&rgb(1)), g].concat());
        // val_1 (n01, label 0) comes first: class, then file name.
        assert_eq!(s.test.labels_vec(), vec![0, 1]);
        assert_eq!(pixels(&s.test), [chw(&rgb(9)), chw(&rgb(7))].concat());
        assert_eq!(s.train.mean, vec![0.485, 0.456, 0.406]);
        assert_eq!(s.test.std, vec![0.229, 0.224, 0.225]);
        assert_eq!(s.train.augment, Augment::CROP_FLIP);
        assert_eq!(s.train.max_value, 255.0);
    }

    #[test]
    fn bad_tiny_imagenet_folders_say_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let e = err(tiny_imagenet(tmp.path()));
        assert!(
            e.contains("missing wnids.txt, words.txt, train, val/images"),
            "{e}"
        );
        setup(tmp.path());
        let d = tmp.path().join("tiny-imagenet-200");
        let wnids = std::fs::read(d.join("wnids.txt")).unwrap();
        for w in ["../n01", "a/b", ".."] {
            write(&d.join("wnids.txt"), format!("{w}\n").as_bytes());
            let e = err(tiny_imagenet(&d));
            assert!(
                e.contains("wnids.txt") && e.contains("is not a folder name"),
                "{w}: {e}"
            );
        }
        write(&d.join("wnids.txt"), &wnids);
        write(
            &d.join("val/val_annotations.txt"),
            b"val_0.JPEG\tn02\t0\t3\t40\t60\nval_1.JPEG\tn99\t1\t2\t3\t4\n",
        );
        let e = err(tiny_imagenet(&d));
        assert!(
            e.contains("val_annotations.txt: line 2: label out of range: wnid \"n99\""),
            "{e}"
        );
        write(
            &d.join("val/val_annotations.txt"),
            b"val_0.JPEG\tn02\nval_2.JPEG\tn01\n",
        );
        let e = err(tiny_imagenet(&d));
        assert!(e.contains("missing val_2.JPEG"), "{e}");
        write(&d.join("val/val_annotations.txt"), b"val_0.JPEG\tn02\n");
        let e = err(tiny_imagenet(&d));
        assert!(
            e.contains("has no line for 1 image(s) of val/images, e.g. val_1.JPEG"),
            "{e}"
        );
        write(
            &d.join("val/val_annotations.txt"),
            b"val_0.JPEG\tn02\nval_1.JPEG\tn01\n",
        );
        write(
            &d.join("train/n02/images/n02_1.JPEG"),
            &png(image::DynamicImage::ImageRgb8(image::RgbImage::new(32, 64))),
        );
        let e = err(tiny_imagenet(&d));
        assert!(
            e.contains(
                "n02_1.JPEG: image of the wrong size: 32x64 (width x height), expected 64x64"
            ),
            "{e}"
        );
        std::fs::remove_dir_all(d.join("train/n02")).unwrap();
        let e = err(tiny_imagenet(&d));
        assert!(e.contains("missing n02/images"), "{e}");
    }
}
