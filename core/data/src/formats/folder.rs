//! Generic image folders: `<root>/train/<class>/*.{jpg,jpeg,png}` and
//! `<root>/test/<class>/*.{jpg,jpeg,png}` (extensions in any case).

use std::path::{Path, PathBuf};

use super::{Parts, Source, bad, decode_rgb, decode_rgb_file, pixel_channel_stats};
use crate::data::{Augment, DataError};

/// Loads an image folder. Classes are the sub-folders of `train/`, sorted by name (label 0 is
/// the first); `test/` may lack a class folder but may not add one. Samples are ordered by class,
/// then file name. All images must have the size of the first train image and are converted to
/// RGB (`[N, 3, H, W]`). Decoding runs in parallel (rayon). Mean and std are computed from the
/// train split; no augmentation is set. Other files (and sub-folders of class folders) are
/// ignored.
pub fn image_folder(root: &Path) -> Result<Source, DataError> {
    let missing: Vec<String> = ["train", "test"]
        .iter()
        .filter(|s| !root.join(s).is_dir())
        .map(|s| format!("{s}/"))
        .collect();
    if !missing.is_empty() {
        return Err(DataError::MissingFiles {
            dir: root.to_path_buf(),
            missing,
            expected: vec![
                "train/<class>/*.{jpg,jpeg,png}".into(),
                "test/<class>/*.{jpg,jpeg,png}".into(),
            ],
        });
    }
    let classes = sub_dirs(&root.join("train"))?;
    if classes.is_empty() {
        return Err(bad(&root.join("train"), "has no class folders"));
    }
    if let Some(extra) = sub_dirs(&root.join("test"))?
        .into_iter()
        .find(|c| !classes.contains(c))
    {
        return Err(bad(
            &root.join("test").join(&extra),
            "is a class folder that train/ does not have",
        ));
    }
    let (train_files, train_labels) = list(&root.join("train"), &classes)?;
    let (test_files, test_labels) = list(&root.join("test"), &classes)?;
    if train_files.is_empty() {
        return Err(bad(
            &root.join("train"),
            "has no images (*.jpg, *.jpeg, *.png in its class folders)",
        ));
    }
    let why = format!(" (the size of {})", train_files[0].display());
    // Every bad file of both splits is reported at once: the size comes from the first train
    // image, or, when that one is broken, from each split's own first image.
    let size = decode_rgb_file(&train_files[0])
        .ok()
        .map(|(w, h, _)| (w, h));
    let (train_pixels, size, test_pixels) = match (
        decode_rgb(&train_files, size, &why),
        decode_rgb(&test_files, size, &why),
    ) {
        (Ok((train, size)), Ok((test, _))) => (train, size, test),
        (a, b) => {
            let errors = [a.err(), b.err()].into_iter().flatten();
            return Err(
                DataError::all(errors.flat_map(DataError::into_list).collect())
                    .expect_err("one of them failed"),
            );
        }
    };
    let shape = [3, size.1 as usize, size.0 as usize];
    let (mean, std) = pixel_channel_stats(&train_pixels, shape, 255.0);
    let name = root
        .file_name()
        .map_or("image_folder".into(), |n| n.to_string_lossy().into_owned());
    let parts = |pixels, labels| Parts {
        name: name.clone(),
        pixels,
        shape,
        labels,
        class_names: classes.clone(),
        mean: mean.clone(),
        std: std.clone(),
        augment: Augment::NONE,
    };
    Ok(Source {
        train: parts(train_pixels, train_labels).into_dataset(),
        test: parts(test_pixels, test_labels).into_dataset(),
    })
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The names of the folders in `dir`, sorted.
fn sub_dirs(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if entry.path().is_dir() {
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| bad(dir, format!("folder name {n:?} is not UTF-8")))?;
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `path` names a JPEG or PNG file (by extension, any case).
pub(crate) fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
        && path.is_file()
}

/// The image files of `dir`, sorted by file name.
pub(crate) fn images_in(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if is_image(&path) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The image files of `split/<class>` for each class in order, with their labels.
fn list(split: &Path, classes: &[String]) -> Result<(Vec<PathBuf>, Vec<i64>), DataError> {
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (y, class) in classes.iter().enumerate() {
        let dir = split.join(class);
        if !dir.is_dir() {
            continue;
        }
        let found = images_in(&dir)?;
        labels.extend(std::iter::repeat_n(y as i64, found.len()));
        files.extend(found);
    }
    Ok((files, labels))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{err, pixels};
    use super::*;
    use crate::data::channel_stats;

    /// A `w x h` RGB image whose pixel (x, y) is (x + 10 y + s, 2 x + s, 255 - y - s).
    fn rgb(w: u32, h: u32, s: u8) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            let (x, y) = (x as u8, y as u8);
            image::Rgb([
                x.wrapping_add(10 * y).wrapping_add(s),
                (2 * x).wrapping_add(s),
                255 - y - s,
            ])
        })
    }

    /// The image's pixels as `[3, H, W]`.
    fn chw(img: &image::RgbImage) -> Vec<u8> {
        (0..3)
            .flat_map(|c| img.pixels().map(move |p| p.0[c]))
            .collect()
    }

    fn save(img: &image::DynamicImage, path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(path).unwrap();
    }

    #[test]
    fn image_folders_load_in_class_then_name_order_as_rgb() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pets");
        let img = |s| image::DynamicImage::ImageRgb8(rgb(5, 3, s));
        save(&img(1), &root.join("train/dog/b.png"));
        save(&img(2), &root.join("train/dog/a.PNG"));
        save(&img(3), &root.join("train/cat/z.png"));
        save(&img(4), &root.join("test/dog/x.png"));
        // Greyscale becomes three equal channels, in PNG and in JPEG.
        let grey = image::GrayImage::from_fn(5, 3, |x, y| image::Luma([(x * 40 + y) as u8]));
        save(
            &image::DynamicImage::ImageLuma8(grey.clone()),
            &root.join("train/cat/g.png"),
        );
        let grey_jpeg = root.join("g.jpg");
        save(&image::DynamicImage::ImageLuma8(grey.clone()), &grey_jpeg);
        let (w, h, data) = super::super::decode_rgb_file(&grey_jpeg).unwrap();
        assert_eq!((w, h), (5, 3));
        assert!(
            data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]),
            "{data:?}"
        );
        // A JPEG decodes as decode_rgb_file decodes it (PIL's pixels: tests/pil_jpeg.rs).
        let jpeg_path = root.join("test/cat/j.jpg");
        save(&img(5), &jpeg_path);
        std::fs::write(root.join("train/cat/notes.txt"), "not an image").unwrap();
        let s = image_folder(&root).unwrap();
        assert_eq!(s.train.class_names, vec!["cat", "dog"]);
        assert_eq!(s.train.labels_vec(), vec![0, 0, 1, 1]);
        assert_eq!(s.test.labels_vec(), vec![0, 1]);
        assert_eq!(s.train.images.size(), vec![4, 3, 3, 5]);
        let grey_chw: Vec<u8> = (0..3).flat_map(|_| grey.pixels().map(|p| p.0[0])).collect();
        let expect: Vec<u8> = [
            grey_chw,
            chw(&rgb(5, 3, 3)),
            chw(&rgb(5, 3, 2)),
            chw(&rgb(5, 3, 1)),
        ]
        .concat();
        assert_eq!(pixels(&s.train), expect);
        let (w, h, data) = super::super::decode_rgb_file(&jpeg_path).unwrap();
        let jpeg = image::RgbImage::from_raw(w, h, data).unwrap();
        assert_eq!(pixels(&s.test), [chw(&jpeg), chw(&rgb(5, 3, 4))].concat());
        assert_eq!(s.train.name, "pets");
        assert_eq!(s.train.max_value, 255.0);
        assert_eq!(s.train.augment, Augment::NONE);
        let (mean, std) = channel_stats(&s.train.images, 255.0);
        for c in 0..3 {
            assert!((s.train.mean[c] - mean[c]).abs() < 1e-12, "{c}");
            assert!((s.train.std[c] - std[c]).abs() < 1e-12, "{c}");
            assert_eq!(s.test.mean[c], s.train.mean[c]);
        }
    }

    #[test]
    fn bad_image_folders_say_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let e = err(image_folder(root));
        assert!(e.contains("missing train/, test/"), "{e}");
        let img = |w, h| image::DynamicImage::ImageRgb8(rgb(w, h, 0));
        save(&img(4, 4), &root.join("train/a/1.png"));
        save(&img(4, 4), &root.join("train/b/1.png"));
        save(&img(4, 4), &root.join("test/c/1.png"));
        let e = err(image_folder(root));
        assert!(
            e.contains("test/c: is a class folder that train/ does not have"),
            "{e}"
        );
        std::fs::remove_dir_all(root.join("test/c")).unwrap();
        save(&img(4, 5), &root.join("test/b/2.png"));
        let e = err(image_folder(root));
        assert!(
            e.contains("test/b/2.png: image of the wrong size: 4x5 (width x height), expected 4x4 (the size of")
                && e.contains("train/a/1.png)"),
            "{e}"
        );
        save(&img(3, 4), &root.join("train/b/0.png"));
        let e = err(image_folder(root));
        assert!(
            e.contains("train/b/0.png: image of the wrong size: 3x4"),
            "{e}"
        );
        std::fs::write(root.join("train/b/0.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
        let e = err(image_folder(root));
        assert!(e.contains("train/b/0.png: cannot decode image"), "{e}");
        // Every bad file of both splits in one message, not only the first.
        std::fs::write(root.join("test/b/3.png"), b"not an image").unwrap();
        let e = err(image_folder(root));
        assert!(
            e.starts_with("3 bad files")
                && e.contains("train/b/0.png: cannot decode image")
                && e.contains("test/b/2.png: image of the wrong size")
                && e.contains("test/b/3.png"),
            "{e}"
        );
        std::fs::remove_file(root.join("test/b/3.png")).unwrap();
        save(&img(4, 4), &root.join("test/b/2.png"));
        // A truncated JPEG is an error, not grey padding (libjpeg's way) nor a panic.
        std::fs::remove_file(root.join("train/b/0.png")).unwrap();
        save(&img(4, 4), &root.join("train/b/0.jpg"));
        let jpeg = std::fs::read(root.join("train/b/0.jpg")).unwrap();
        std::fs::write(root.join("train/b/0.jpg"), &jpeg[..jpeg.len() - 40]).unwrap();
        let e = err(image_folder(root));
        assert!(
            e.contains("train/b/0.jpg: cannot decode JPEG: the file is truncated"),
            "{e}"
        );
    }

    #[test]
    fn all_of_cifar10_as_jpeg_loads_and_converts_to_the_binary_layout() {
        // ../shared/data/cifar10-jpeg beside the checkout, or the folder in UNLEARN_CIFAR10_JPEG:
        // one holding the archive (unpacked here into a temporary folder), or the unpacked
        // train/ and test/ folders themselves.
        let dir = std::env::var_os("UNLEARN_CIFAR10_JPEG").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10-jpeg"),
            PathBuf::from,
        );
        let archive = dir.join("cifar10-jpeg.tar.gz");
        if !archive.exists() && !dir.join("train").is_dir() {
            println!(
                "SKIPPED: {} is absent (the CIFAR-10 JPEG archive, unpacked or not)",
                archive.display()
            );
            return;
        }
        // 60,000 small files: in RAM (/dev/shm) where there is one, as disk is slow at this.
        let shm = Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let t = std::time::Instant::now();
        let root = if dir.join("train").is_dir() {
            dir.clone()
        } else {
            let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap());
            tar::Archive::new(gz)
                .unpack(tmp.path().join("jpeg"))
                .unwrap();
            tmp.path().join("jpeg")
        };
        let unpack_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let s = image_folder(&root).unwrap();
        let jpeg_s = t.elapsed().as_secs_f64();
        assert_eq!((s.train.len(), s.test.len()), (50_000, 10_000));
        assert_eq!(s.train.class_counts(), vec![5_000; 10]);
        assert_eq!(s.test.class_counts(), vec![1_000; 10]);
        assert_eq!(
            s.train.class_names,
            super::super::CIFAR10_CLASSES.map(String::from)
        );
        assert_eq!(s.train.image_shape(), [3, 32, 32]);
        let out = tmp.path().join("cifar-10-batches-bin");
        super::super::write_cifar10(&s, &out).unwrap();
        let t = std::time::Instant::now();
        let b = super::super::cifar10(tmp.path()).unwrap();
        let bin_s = t.elapsed().as_secs_f64();
        assert!(b.train.images.equal(&s.train.images));
        assert!(b.train.labels.equal(&s.train.labels));
        assert!(b.test.images.equal(&s.test.images));
        assert!(b.test.labels.equal(&s.test.labels));
        assert_eq!(b.train.class_names, s.train.class_names);
        // The JPEG copy's statistics lie close to the published CIFAR-10 constants.
        for c in 0..3 {
            assert!(
                (s.train.mean[c] - b.train.mean[c]).abs() < 0.01,
                "{:?}",
                s.train.mean
            );
            assert!(
                (s.train.std[c] - b.train.std[c]).abs() < 0.01,
                "{:?}",
                s.train.std
            );
        }
        println!(
            "cifar10-jpeg: unpack {unpack_s:.2} s, 60,000 JPEGs {jpeg_s:.2} s, binary {bin_s:.2} s"
        );
    }
}
