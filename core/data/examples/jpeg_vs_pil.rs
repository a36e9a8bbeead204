//! Compares JPEG decoding with PIL: the `image` crate's decoder (zune-jpeg, which the loader used
//! before), the pure-Rust `jpeg-decoder` crate, and the loader's own
//! (`unlearn_data::formats::decode_rgb_bytes`: libjpeg-turbo's decoder through mozjpeg), on the JPEGs of `DIR/test/<class>/` (or of `DIR` itself when it has
//! no test/), and their decode rates on one thread from bytes in memory (the best of five
//! passes, as other processes share the machine). The method and results are in
//! docs/results/jpeg-decoding.md.
//!
//! Usage: cargo run --release -p unlearn-data --example jpeg_vs_pil -- DIR [N]
//! N: how many files, evenly spaced over the sorted list (default: all). Python: UNLEARN_PYTHON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The JPEGs of `dir`, sorted, and those of its sub-folders when `recurse`.
fn jpegs(dir: &Path, recurse: bool, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recurse {
                jpegs(&p, recurse, out);
            }
        } else if p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        {
            out.push(p);
        }
    }
}

/// Differing values, their largest absolute difference and the sum of absolute differences.
#[derive(Default)]
struct Diff {
    values: u64,
    differing: u64,
    max: u8,
    sum: u64,
    files_differing: usize,
}

impl Diff {
    fn add(&mut self, a: &[u8], b: &[u8]) {
        assert_eq!(a.len(), b.len(), "sizes differ");
        let before = self.differing;
        for (&x, &y) in a.iter().zip(b) {
            let d = x.abs_diff(y);
            self.values += 1;
            self.differing += u64::from(d != 0);
            self.max = self.max.max(d);
            self.sum += u64::from(d);
        }
        self.files_differing += usize::from(self.differing > before);
    }

    fn report(&self, name: &str, files: usize, seconds: f64) {
        println!(
            "{name}: {:.2}% of {} values differ from PIL (max {}, mean |diff| {:.3}), in {} of \
             {files} files; {:.0} images/s ({seconds:.3} s)",
            100.0 * self.differing as f64 / self.values as f64,
            self.values,
            self.max,
            self.sum as f64 / self.values as f64,
            self.files_differing,
            files as f64 / seconds,
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().expect("usage: jpeg_vs_pil DIR [N]"));
    let mut files = Vec::new();
    if dir.join("test").is_dir() {
        jpegs(&dir.join("test"), true, &mut files);
    } else {
        jpegs(&dir, false, &mut files);
    }
    if let Some(n) = args
        .get(1)
        .map(|n| n.parse::<usize>().expect("N: a number"))
    {
        let step = files.len() as f64 / n.min(files.len()) as f64;
        files = (0..n.min(files.len()))
            .map(|i| files[(i as f64 * step) as usize].clone())
            .collect();
    }
    assert!(!files.is_empty(), "no JPEGs under {}", dir.display());
    let blobs: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();

    let python = std::env::var("UNLEARN_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pil_decode.py");
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(out.path())
        .arg("--time")
        .stdin(Stdio::piped())
        .env("OMP_NUM_THREADS", "1")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let list: String = files.iter().map(|p| format!("{}\n", p.display())).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "{} failed",
        script.display()
    );
    let raw = std::fs::read(out.path()).unwrap();
    let mut pil = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let w = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap()) as usize;
        let h = u32::from_le_bytes(raw[at + 4..at + 8].try_into().unwrap()) as usize;
        pil.push(&raw[at + 8..at + 8 + 3 * w * h]);
        at += 8 + 3 * w * h;
    }
    assert_eq!(pil.len(), files.len());

    // The fastest of five passes: the slower ones measure the other processes on the machine.
    let time = |decode: &dyn Fn(&Path, &[u8]) -> Vec<u8>| {
        let mut best = f64::INFINITY;
        let mut out = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            out = files
                .iter()
                .zip(&blobs)
                .map(|(p, b)| decode(p, b))
                .collect();
            best = best.min(t.elapsed().as_secs_f64());
        }
        (out, best)
    };
    let (zune, zune_s) = time(&|_, b| image::load_from_memory(b).unwrap().to_rgb8().into_raw());
    let (jd, jd_s) = time(&|_, b| {
        let mut d = jpeg_decoder::Decoder::new(b);
        let px = d.decode().unwrap();
        match d.info().unwrap().pixel_format {
            jpeg_decoder::PixelFormat::RGB24 => px,
            jpeg_decoder::PixelFormat::L8 => px.iter().flat_map(|&v| [v, v, v]).collect(),
            other => panic!("{other:?}"),
        }
    });
    let (ours, ours_s) = time(&|p, b| unlearn_data::formats::decode_rgb_bytes(p, b).unwrap().2);

    let (mut before, mut other, mut after) = (Diff::default(), Diff::default(), Diff::default());
    for i in 0..files.len() {
        before.add(&zune[i], pil[i]);
        other.add(&jd[i], pil[i]);
        after.add(&ours[i], pil[i]);
    }
    before.report("image crate (zune-jpeg)", files.len(), zune_s);
    other.report("jpeg-decoder", files.len(), jd_s);
    after.report("loader (mozjpeg)", files.len(), ours_s);
}
