//! Interop with PyTorch: the same architectures defined in `tests/python/unlearn_models.py`, run
//! through `tests/python/interop.py` with the project's Python (`UNLEARN_PYTHON`, which
//! `.cargo/config.toml` sets). A missing Python, or one without torch, fails the tests; they
//! skip, saying so, only when `UNLEARN_SKIP_PYTHON=1`.
//!
//! BatchNorm running statistics are set to non-trivial values on both sides (the statistics of
//! real activations, perturbed), so the comparisons test eval mode, not the identity.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use unlearn_api::checkpoint::{self, Provenance};
use unlearn_api::mask::{Mask, magnitude_scores};
use unlearn_api::model::{Arch, Model, ModelSpec};
use unlearn_api::tch::{self, Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;
const RESNET18_PARAMETERS: i64 = 11_173_962;
const CIFAR10_MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
const CIFAR10_STD: [f64; 3] = [0.2470, 0.2435, 0.2616];

const SKIP_VAR: &str = "UNLEARN_SKIP_PYTHON";

/// The project's Python (`UNLEARN_PYTHON`), checked once to import what `interop.py` imports.
/// A missing or broken Python fails the test, saying what to do; only `UNLEARN_SKIP_PYTHON=1`
/// skips it (None), announced on the terminal even when cargo captures the test's output.
fn python() -> Option<PathBuf> {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        // Straight to the terminal: libtest captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: a PyTorch interop test; {SKIP_VAR}=1 is set, so nothing was compared \
             with PyTorch ***\n"
        );
        return None;
    }
    match CHECKED.get_or_init(check_python) {
        Ok(p) => Some(p.clone()),
        Err(e) => panic!("{e}\n(set {SKIP_VAR}=1 to skip the PyTorch interop tests instead)"),
    }
}

fn check_python() -> Result<PathBuf, String> {
    let python = std::env::var_os("UNLEARN_PYTHON")
        .map(PathBuf::from)
        .ok_or(
            "the PyTorch interop tests need Python with torch and safetensors, but UNLEARN_PYTHON \
         is unset: run scripts/setup.sh, which creates .venv and writes UNLEARN_PYTHON into \
         .cargo/config.toml",
        )?;
    let out = Command::new(&python)
        .args(["-c", "import torch, safetensors.torch"])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .map_err(|e| {
            format!(
                "cannot run UNLEARN_PYTHON={} for the PyTorch interop tests: {e} \
                 (run scripts/setup.sh to create it)",
                python.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "UNLEARN_PYTHON={} cannot import torch and safetensors, which the PyTorch interop \
             tests need (scripts/setup.sh installs them into .venv): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(python)
}

/// Runs `interop.py` with `args`; panics with its output unless it succeeds. Returns stdout.
fn interop(python: &Path, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/interop.py");
    assert!(script.is_file(), "{} is missing", script.display());
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "interop.py {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn read(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// The shapes interop.py uses: the small CNN on 1x8x8 digits, the others on 3x32x32.
fn spec(arch: Arch) -> ModelSpec {
    let (input, mean, std) = match arch {
        Arch::SmallCnn => ([1, 8, 8], vec![0.3], vec![0.4]),
        _ => ([3, 32, 32], CIFAR10_MEAN.to_vec(), CIFAR10_STD.to_vec()),
    };
    ModelSpec {
        arch,
        input,
        classes: 10,
        mean,
        std,
    }
}

const ARCHS: [Arch; 6] = [
    Arch::Resnet18,
    Arch::Conv6,
    Arch::Vgg16Bn,
    Arch::Resnet20,
    Arch::Resnet56,
    Arch::SmallCnn,
];

fn names(archs: &[Arch]) -> String {
    archs.iter().map(|a| a.name()).collect::<Vec<_>>().join(",")
}

#[test]
fn pytorch_checkpoints_load_with_the_same_logits() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    interop(
        &py,
        &[
            "export",
            "--arch",
            &names(&ARCHS),
            "--out",
            d,
            "--seed",
            "3",
        ],
    );
    for arch in ARCHS {
        let weights = dir.path().join(format!("{arch}.weights.safetensors"));
        let (model, mask, meta) =
            checkpoint::load(&weights, Device::Cpu).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(mask.is_none());
        assert_eq!(model.spec(), &spec(arch), "{arch}");
        assert_eq!(meta.dataset.as_deref(), Some("random"));
        let io = read(&dir.path().join(format!("{arch}.io.safetensors")));
        let logits = tch::no_grad(|| model.forward_t(&io["input"], false));
        let diff = max_abs_diff(&logits, &io["logits"]);
        eprintln!("{arch}: PyTorch -> unlearn, max |logit difference| {diff:.2e}");
        assert!(diff <= TOLERANCE, "{arch}: logits differ by {diff}");
        // Eval mode really uses the running statistics: train mode gives other logits.
        let train = tch::no_grad(|| model.forward_t(&io["input"], true));
        assert!(max_abs_diff(&train, &io["logits"]) > 1e-3, "{arch}");
    }
}

/// A model with running statistics of real activations, non-trivial affine BatchNorm
/// parameters and classifier layers (VGG's start at N(0, 0.01^2) with zero biases, which gives
/// near-constant logits), pruned by magnitude to `sparsity`.
fn trained_looking_model(arch: Arch, seed: u64, sparsity: f64) -> (Model, Mask) {
    let s = spec(arch);
    let model = Model::new(s.clone(), Device::Cpu, seed).unwrap();
    let shape = [8, s.input[0], s.input[1], s.input[2]];
    tch::no_grad(|| {
        for _ in 0..5 {
            let _ = model.forward_t(&Tensor::rand(shape, (Kind::Float, Device::Cpu)), true);
        }
        let vars = model.var_store().variables();
        for (name, w) in &vars {
            if w.dim() == 2 {
                let fan_in = w.size()[1] as f64;
                w.shallow_clone().copy_(&(w.randn_like() / fan_in.sqrt()));
                let b = &vars[&name.replace(".weight", ".bias")];
                b.shallow_clone().copy_(&(b.randn_like() * 0.1));
            }
        }
        for name in vars.keys() {
            let Some(bn) = name.strip_suffix(".running_mean") else {
                continue;
            };
            let w = &vars[&format!("{bn}.weight")];
            let b = &vars[&format!("{bn}.bias")];
            w.shallow_clone().copy_(&(w.rand_like() * 0.5 + 0.75));
            b.shallow_clone().copy_(&(b.randn_like() * 0.1));
        }
    });
    let mask = Mask::from_scores(&magnitude_scores(&model), None, sparsity).unwrap();
    mask.apply(&model);
    (model, mask)
}

#[test]
fn unlearn_checkpoints_load_in_pytorch_with_the_same_logits() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    for arch in ARCHS {
        let (model, mask) = trained_looking_model(arch, 11, 0.5);
        let provenance = Provenance {
            dataset: Some("random".into()),
            train_config: Some(serde_json::json!({ "epochs": 0 })),
        };
        let path = dir.path().join(format!("{arch}.ckpt.safetensors"));
        checkpoint::save(&path, &model, Some(&mask), &provenance).unwrap();
        let s = model.spec();
        let x = Tensor::rand(
            [2, s.input[0], s.input[1], s.input[2]],
            (Kind::Float, Device::Cpu),
        );
        let logits = tch::no_grad(|| model.forward_t(&x, false));
        let io = dir.path().join(format!("{arch}.io.safetensors"));
        Tensor::write_safetensors(&[("input", &x)], &io).unwrap();
        expected.insert(arch, logits);
    }
    let d = dir.path().to_str().unwrap();
    interop(&py, &["run", "--arch", &names(&ARCHS), "--dir", d]);
    for (arch, logits) in expected {
        let out = read(&dir.path().join(format!("{arch}.out.safetensors")));
        let diff = max_abs_diff(&out["logits"], &logits);
        eprintln!("{arch}: unlearn -> PyTorch, max |logit difference| {diff:.2e}");
        assert!(diff <= TOLERANCE, "{arch}: logits differ by {diff}");
        let std = logits.std(true).double_value(&[]);
        assert!(std > 1e-3, "{arch}: degenerate logits (std {std})");
    }
}

#[test]
fn parameter_counts_match_pytorch() {
    let count = |arch: Arch| {
        Model::new(spec(arch), Device::Cpu, 0)
            .unwrap()
            .num_parameters()
    };
    assert_eq!(count(Arch::Resnet18), RESNET18_PARAMETERS);
    let Some(py) = python() else { return };
    let out = interop(&py, &["count", "--classes", "10"]);
    let torch: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for arch in ARCHS {
        assert_eq!(
            Some(count(arch)),
            torch[arch.name()].as_i64(),
            "{arch}: unlearn vs PyTorch"
        );
    }
    // Option B shortcuts (not used) would add 1x1 conv + BN to the two widening blocks.
    for arch in [Arch::Resnet20, Arch::Resnet56] {
        let b = torch[format!("{arch}-option-b")].as_i64().unwrap();
        assert_eq!(b - count(arch), 2_752, "{arch}");
    }
}

#[test]
fn pytorch_pruned_state_dicts_import() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let archs = [Arch::Resnet20, Arch::Resnet18];
    interop(
        &py,
        &[
            "export",
            "--arch",
            &names(&archs),
            "--out",
            d,
            "--prune",
            "0.7",
            "--module-prefix",
        ],
    );
    for arch in archs {
        let weights = dir.path().join(format!("{arch}.weights.safetensors"));
        // The spec's statistics are placeholders: the file's `normalize.*` replace them.
        let mut s = spec(arch);
        s.mean = vec![0.5; 3];
        let (model, mask) = checkpoint::import_pytorch(&weights, s, Device::Cpu)
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(model.spec(), &spec(arch));
        let mask = mask.expect("a pruned state dict has a mask");
        assert!(
            (mask.sparsity() - 0.7).abs() < 1e-4,
            "{arch}: {}",
            mask.sparsity()
        );
        assert_eq!(mask.violations(&model), 0);
        let io = read(&dir.path().join(format!("{arch}.io.safetensors")));
        let torch_masks: Vec<_> = io.iter().filter(|(k, _)| k.starts_with("mask/")).collect();
        assert_eq!(torch_masks.len(), model.prunable().len(), "{arch}");
        for (k, m) in torch_masks {
            assert!(
                mask.get(&k["mask/".len()..]).unwrap().equal(m),
                "{arch}: {k}"
            );
        }
        let logits = tch::no_grad(|| model.forward_t(&io["input"], false));
        let diff = max_abs_diff(&logits, &io["logits"]);
        eprintln!("{arch}: pruned PyTorch -> unlearn, max |logit difference| {diff:.2e}");
        assert!(diff <= TOLERANCE, "{arch}: logits differ by {diff}");

        // Imported, saved as an unlearn checkpoint, loaded again: the same model and mask.
        let ckpt = dir.path().join(format!("{arch}.ckpt.safetensors"));
        checkpoint::save(&ckpt, &model, Some(&mask), &Provenance::default()).unwrap();
        let (again, again_mask, meta) = checkpoint::load(&ckpt, Device::Cpu).unwrap();
        assert!((meta.sparsity.unwrap() - mask.sparsity()).abs() < 1e-12);
        assert_eq!(again_mask.unwrap().zeros(), mask.zeros());
        let y = tch::no_grad(|| again.forward_t(&io["input"], false));
        assert!(y.equal(&logits), "{arch}");
    }
}
