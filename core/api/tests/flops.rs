//! The built-in architectures' FLOP counts ([`forward_flops`]) against PyTorch's own:
//! `torch.utils.flop_counter.FlopCounterMode` on one eval-mode forward pass of the same
//! architectures in `tests/python/unlearn_models.py`, run with the project's Python
//! (`UNLEARN_PYTHON`, which `.cargo/config.toml` sets). A missing Python, or one without torch,
//! fails the test; it skips, saying so, only when `UNLEARN_SKIP_PYTHON=1`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use unlearn_api::model::{Arch, ArchDef, ModelSpec, forward_flops};
use unlearn_api::tch::nn::{self, ModuleT};
use unlearn_api::testing::spec;

const SKIP_VAR: &str = "UNLEARN_SKIP_PYTHON";

/// The project's Python (`UNLEARN_PYTHON`); None (announced) when `UNLEARN_SKIP_PYTHON=1`.
fn python() -> Option<PathBuf> {
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        // Straight to the terminal: libtest captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the FLOP counts were not compared with PyTorch's; {SKIP_VAR}=1 is set \
             ***\n"
        );
        return None;
    }
    let python = std::env::var_os("UNLEARN_PYTHON").unwrap_or_else(|| {
        panic!(
            "comparing FLOP counts with PyTorch needs Python with torch, but UNLEARN_PYTHON is \
             unset: run scripts/setup.sh, which creates .venv and writes UNLEARN_PYTHON into \
             .cargo/config.toml (or set {SKIP_VAR}=1 to skip)"
        )
    });
    Some(PathBuf::from(python))
}

/// Counts with `FlopCounterMode` the FLOPs of one forward pass of one image, in eval mode, for
/// each case `[arch, C, H, W, classes]` given as JSON on stdin; prints `{"arch CxHxW classes":
/// flops}` as JSON.
const COUNT_FLOPS: &str = r#"
import json, sys
import torch
from torch.utils.flop_counter import FlopCounterMode
import unlearn_models

torch.set_num_threads(1)
out = {}
for arch, c, h, w, classes in json.load(sys.stdin):
    model = unlearn_models.build(arch, classes, c).eval()
    x = torch.rand(1, c, h, w)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    out[f"{arch} {c}x{h}x{w} {classes}"] = counter.get_total_flops()
print(json.dumps(out))
"#;

fn pytorch_flops(python: &Path, cases: &[(Arch, [i64; 3], usize)]) -> BTreeMap<String, f64> {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python");
    assert!(
        models.join("unlearn_models.py").is_file(),
        "{} has no unlearn_models.py",
        models.display()
    );
    let input: Vec<serde_json::Value> = cases
        .iter()
        .map(|(arch, [c, h, w], classes)| serde_json::json!([arch.name(), c, h, w, classes]))
        .collect();
    let mut child = Command::new(python)
        .args(["-c", COUNT_FLOPS])
        .env("PYTHONPATH", &models)
        .env("OMP_NUM_THREADS", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run UNLEARN_PYTHON={}: {e} (run scripts/setup.sh to create it, or set \
                 {SKIP_VAR}=1 to skip)",
                python.display()
            )
        });
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "counting FLOPs in PyTorch failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Every built-in architecture on each of CIFAR's, TinyImageNet's and the digits' input sizes
/// it accepts (10 classes; 200 too on 64x64), and on an odd, non-square size that exercises the
/// floor of strided convs and pools.
#[test]
fn builtin_flops_equal_pytorch_flop_counter() {
    let Some(py) = python() else { return };
    let mut cases = Vec::new();
    for arch in Arch::BUILTIN {
        let def = arch.def().unwrap();
        assert!(def.flops.is_some(), "{arch} has no FLOP count");
        for input in [[3, 32, 32], [3, 64, 64], [1, 8, 8], [3, 17, 23]] {
            if def.inputs.check(input).is_ok() {
                cases.push((arch, input, 10));
            } else {
                assert_eq!(
                    forward_flops(&spec(arch, input, 10)),
                    None,
                    "{arch} {input:?}"
                );
            }
        }
        cases.push((arch, [3, 64, 64], 200));
    }
    let expected = pytorch_flops(&py, &cases);
    assert_eq!(expected.len(), cases.len(), "{expected:?}");
    for (arch, input @ [c, h, w], classes) in cases {
        let key = format!("{arch} {c}x{h}x{w} {classes}");
        let ours = forward_flops(&spec(arch, input, classes)).unwrap();
        assert_eq!(ours, expected[&key], "{key}: ours, then PyTorch's");
    }
    // What the benchmark reports, for the record (`--nocapture`).
    for arch in [Arch::Resnet18, Arch::Resnet20, Arch::Vgg16Bn] {
        let flops = forward_flops(&spec(arch, [3, 32, 32], 10)).unwrap();
        println!("{arch} 3x32x32, 10 classes: {flops} FLOPs per image");
    }
}

fn build_flat(root: &nn::Path, spec: &ModelSpec) -> Box<dyn ModuleT> {
    let [c, h, w] = spec.input;
    Box::new(nn::linear(
        root / "fc",
        c * h * w,
        spec.classes as i64,
        Default::default(),
    ))
}

unlearn_api::register_arch!(ArchDef::new(
    "test-flat",
    "one linear layer on flattened images, with no FLOP count (a test fixture)",
    build_flat
));

#[test]
fn an_arch_without_a_count_or_unregistered_has_none() {
    assert_eq!(
        forward_flops(&spec(Arch::named("test-flat"), [1, 8, 8], 4)),
        None
    );
    assert_eq!(
        forward_flops(&spec(Arch::named("no-such-arch"), [1, 8, 8], 4)),
        None
    );
    assert!(forward_flops(&spec(Arch::SmallCnn, [1, 8, 8], 4)).is_some());
}
