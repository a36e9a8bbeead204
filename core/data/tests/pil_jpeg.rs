//! JPEG pixels against PIL's (`Image.open(f).convert("RGB")`, what torchvision's `ImageFolder`
//! does) on real files: the fixtures in tests/fixtures/jpeg (CIFAR-10 test JPEGs and PIL
//! re-encodings of them with each chroma subsampling, progressive, greyscale, odd sizes; see
//! make.py there), and 300 files of the CIFAR-10 JPEG folder where a machine has it. Every value
//! must be equal. PIL runs in the project's Python (`UNLEARN_PYTHON`, which `.cargo/config.toml`
//! sets); a missing Python or one without Pillow fails the tests, which skip, saying so, only
//! when `UNLEARN_SKIP_PYTHON=1`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use unlearn_data::formats::decode_rgb_file;

const SKIP_VAR: &str = "UNLEARN_SKIP_PYTHON";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg")
}

/// The `*.jpg` files of `dir` (not of its sub-folders), sorted.
fn jpgs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files
}

/// The project's Python with Pillow, checked once; None (announced) when `UNLEARN_SKIP_PYTHON=1`.
fn python() -> Option<PathBuf> {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        // Straight to the terminal: libtest captures the output of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: a JPEG-versus-PIL test; {SKIP_VAR}=1 is set, so no pixel was \
             compared with PIL ***\n"
        );
        return None;
    }
    match CHECKED.get_or_init(check_python) {
        Ok(p) => Some(p.clone()),
        Err(e) => panic!("{e}\n(set {SKIP_VAR}=1 to skip the tests against PIL instead)"),
    }
}

fn check_python() -> Result<PathBuf, String> {
    let python = std::env::var_os("UNLEARN_PYTHON")
        .map(PathBuf::from)
        .ok_or(
            "the JPEG tests against PIL need Python with Pillow, but UNLEARN_PYTHON is unset: run \
         scripts/setup.sh, which creates .venv and writes UNLEARN_PYTHON into .cargo/config.toml",
        )?;
    let out = Command::new(&python)
        .args(["-c", "import PIL.Image"])
        .output()
        .map_err(|e| {
            format!(
                "cannot run UNLEARN_PYTHON={}: {e} (run scripts/setup.sh to create it)",
                python.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "UNLEARN_PYTHON={} cannot import PIL, which the JPEG tests compare with \
             (scripts/setup.sh installs Pillow into .venv): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(python)
}

/// PIL's RGB decoding of each file: (width, height, row-major interleaved RGB).
fn pil_decode(python: &Path, files: &[PathBuf]) -> Vec<(u32, u32, Vec<u8>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pil_decode.py");
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(python)
        .arg(&script)
        .arg(out.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let list: String = files.iter().map(|p| format!("{}\n", p.display())).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&done.stderr)
    );
    let raw = std::fs::read(out.path()).unwrap();
    let mut images = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let w = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap());
        let h = u32::from_le_bytes(raw[at + 4..at + 8].try_into().unwrap());
        let n = 3 * w as usize * h as usize;
        images.push((w, h, raw[at + 8..at + 8 + n].to_vec()));
        at += 8 + n;
    }
    assert_eq!(images.len(), files.len());
    images
}

/// Decodes `files` here and with PIL; fails listing each file whose pixels differ.
fn assert_same_as_pil(python: &Path, files: &[PathBuf]) {
    let pil = pil_decode(python, files);
    let mut values = 0;
    let mut wrong = Vec::new();
    for (path, (w, h, expect)) in files.iter().zip(pil) {
        let (ow, oh, ours) = decode_rgb_file(path).unwrap();
        assert_eq!((ow, oh), (w, h), "{}: size", path.display());
        values += ours.len();
        let differing = ours.iter().zip(&expect).filter(|(a, b)| a != b).count();
        if differing > 0 {
            let max = ours
                .iter()
                .zip(&expect)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            wrong.push(format!(
                "{}: {differing} values differ (by up to {max})",
                path.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} files decode unlike PIL:\n{}",
        wrong.len(),
        files.len(),
        wrong.join("\n")
    );
    println!("{} files, {values} values, all equal to PIL's", files.len());
}

#[test]
fn jpeg_fixtures_decode_exactly_as_pil() {
    let Some(python) = python() else { return };
    let files = jpgs(&fixtures());
    assert!(files.len() >= 40, "{} fixtures", files.len());
    assert_same_as_pil(&python, &files);
}

#[test]
fn cifar10_jpegs_decode_exactly_as_pil() {
    // The unpacked CIFAR-10 JPEG folder (train/, test/): UNLEARN_CIFAR10_JPEG, or
    // data/cifar10-jpeg in the checkout, or ../shared/data/cifar10-jpeg beside it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates: Vec<PathBuf> = match std::env::var_os("UNLEARN_CIFAR10_JPEG") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![
            root.join("data/cifar10-jpeg"),
            root.join("../shared/data/cifar10-jpeg"),
        ],
    };
    let Some(dir) = candidates.iter().find(|d| d.join("test").is_dir()) else {
        println!(
            "SKIPPED: no unpacked CIFAR-10 JPEG folder (test/<class>/*.jpg) at {}",
            candidates
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        );
        return;
    };
    let Some(python) = python() else { return };
    let mut all = Vec::new();
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir.join("test"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    classes.sort();
    for class in classes {
        all.extend(jpgs(&class));
    }
    // 300 files spread evenly over the classes and the file names.
    let n = 300.min(all.len());
    let files: Vec<PathBuf> = (0..n).map(|i| all[i * all.len() / n].clone()).collect();
    assert!(
        files.len() >= 200,
        "{} files under {}",
        files.len(),
        dir.display()
    );
    assert_same_as_pil(&python, &files);
}

#[test]
fn broken_and_cmyk_jpegs_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixtures().join("enc-420-45x37.jpg")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        // Cut in the entropy-coded data: libjpeg would pad with grey, PIL says truncated.
        ("half.jpg", good[..good.len() / 2].to_vec(), "truncated"),
        // Cut in the headers.
        ("header.jpg", good[..30].to_vec(), "truncated"),
        ("soi-only.jpg", vec![0xFF, 0xD8], "truncated"),
        (
            "garbage.jpg",
            [&[0xFF, 0xD8, 0xFF, 0xC0][..], &[0x5A; 64]].concat(),
            "cannot decode JPEG",
        ),
        ("not-an-image.jpg", b"hello".to_vec(), "cannot decode image"),
    ];
    for (name, bytes, expect) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = decode_rgb_file(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{name}: {e}");
        assert!(e.contains(expect), "{name}: {e}");
    }
    let cmyk = fixtures().join("bad/cmyk.jpg");
    let e = decode_rgb_file(&cmyk).unwrap_err().to_string();
    assert!(
        e.contains(&cmyk.display().to_string()) && e.contains("CMYK JPEGs are not supported"),
        "{e}"
    );
}

#[test]
fn damaged_jpegs_never_panic_or_abort() {
    // Every cut of one file, and single-byte damage all over a few: each decode returns (pixels
    // or an error naming the file); a libjpeg error that escaped would abort the test binary.
    let path = Path::new("damaged.jpg");
    let small = std::fs::read(fixtures().join("enc-420-progressive-32x32.jpg")).unwrap();
    for len in 0..small.len() {
        if let Err(e) = unlearn_data::formats::decode_rgb_bytes(path, &small[..len]) {
            assert!(e.to_string().contains("damaged.jpg"), "{e}");
        }
    }
    for name in [
        "cifar-cat-0000.jpg",
        "enc-422-45x37.jpg",
        "enc-444-progressive-45x37.jpg",
        "enc-420-restart-45x37.jpg",
        "enc-grey-45x37.jpg",
    ] {
        let good = std::fs::read(fixtures().join(name)).unwrap();
        for at in (0..good.len()).step_by(7) {
            for byte in [0x00, 0xFF, good[at] ^ 0x5A] {
                let mut bad = good.clone();
                bad[at] = byte;
                let _ = unlearn_data::formats::decode_rgb_bytes(path, &bad);
            }
        }
    }
}
