//! End-to-end tests of the `unlearn` binary: what a user types, what they get back.

use std::path::{Path, PathBuf};

use serde_json::Value;
use unlearn_pipeline::checkpoint;
use unlearn_pipeline::config::{PipelineConfig, load_split};
use unlearn_pipeline::tch::{Device, Kind};
// Linked for the in-process comparison with BadNets itself.
use unlearn_attack_badnets as _;

mod common;

use common::{run_ok, stderr, stdout, unlearn};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// Writes `text` as a config file in `dir`.
fn config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tiny_with(replace: &[(&str, &str)]) -> String {
    let mut t = std::fs::read_to_string(fixture("tiny.toml")).unwrap();
    for (a, b) in replace {
        assert!(t.contains(a), "fixture has `{a}`");
        t = t.replacen(a, b, 1);
    }
    t
}

/// The names `unlearn list --kind <kind> --json` reports, in its order (sorted), checking that
/// every entry is of that kind.
fn listed_names(kind: &str) -> Vec<String> {
    let o = unlearn(&["list", "--kind", kind, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["kind"], kind, "{m}");
            m["name"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Registered unlearners, sorted, as `unlearn list` reports them.
fn unlearner_names() -> Vec<String> {
    listed_names("unlearner")
}

#[test]
fn list_shows_every_builtin_with_kind_and_source() {
    let o = unlearn(&["list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for (kind, name, source) in [
        ("pruner", "OMP", "unlearn-prune-imp"),
        ("pruner", "SynFlow", "unlearn-prune-synflow"),
        ("unlearner", "GA", "unlearn-ga"),
        ("unlearner", "FF", "unlearn-fisher"),
        ("unlearner", "IU", "unlearn-fisher"),
        ("unlearner", "l1-sparse", "unlearn-ft"),
        ("unlearner", "FT", "unlearn-ft"),
        ("unlearner", "retrain", "unlearn-ft"),
        ("unlearner", "SCRUB", "unlearn-scrub"),
        ("attack", "BadNets", "unlearn-attack-badnets"),
        ("attack", "Blended", "unlearn-attack-blended"),
        ("scenario", "subclass", "unlearn-api"),
        ("scenario", "class", "unlearn-api"),
        ("metric", "forget_kl", "unlearn-api"),
        ("arch", "resnet18", "unlearn-api"),
    ] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} in {out}"));
        assert!(line.starts_with(kind) && line.contains(source), "{line}");
    }
    assert_eq!(listed_names("pruner"), ["IMP", "OMP", "SynFlow", "random"]);
    assert_eq!(unlearn(&["list", "--kind", "nope"]).status.code(), Some(2));
    // Architectures, forgetting scenarios and metrics: sections of the table, and `--kind`.
    assert_eq!(
        listed_names("arch"),
        [
            "conv6",
            "resnet18",
            "resnet20",
            "resnet56",
            "small-cnn",
            "vgg16-bn"
        ]
    );
    assert_eq!(
        listed_names("scenario"),
        ["class", "file", "random", "subclass"]
    );
    assert_eq!(listed_names("metric"), ["forget_kl"]);
    let o = unlearn(&["schema", "--scenario", "subclass"]);
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s["properties"]["fraction"].is_object(), "{s}");
}

#[test]
fn schema_prints_defaults_and_unknown_method_lists_known_ones() {
    let o = unlearn(&["schema", "FT"]);
    assert!(o.status.success());
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["properties"]["epochs"]["default"], 10);
    assert_eq!(s["properties"]["lr"]["default"], 0.01);
    assert_eq!(s["additionalProperties"], false);
    let o = unlearn(&["schema", "NoSuchMethod"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("NoSuchMethod")
            && e.contains("FT")
            && e.contains("OMP")
            && e.contains("retrain"),
        "{e}"
    );
    let o = unlearn(&["schema", "--config"]);
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s["properties"]["forget"].is_object());
}

#[test]
fn validate_reports_every_error_with_its_path_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = tiny_with(&[
        (
            "lr = 0.05\nbatch_size = 32\nmilestones = []\n\n[prune]",
            "lr = -0.5\nbatch_size = 32\nmilestones = []\n\n[prune]",
        ),
        ("class = 1", "class = 9"),
        (
            "method = \"retrain\"\nepochs = 3\nlr = 0.05",
            "method = \"retrain\"\nepochs = 3\nlr = -1",
        ),
        ("method = \"FT\"", "method = \"GA-typo\""),
    ]) + "\n[[forget]]\nkind = \"random\"\nn = 5000\n\n[[unlearn]]\nmethod = \"FT\"\nlrr = 0.1\nlabel = \"FT2\"\n";
    let p = config(dir.path(), "bad.toml", &bad);
    let o = unlearn(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    let unlearners = unlearner_names().join(", ");
    let unknown = format!(
        "/unlearn/1/method = \"GA-typo\": unknown unlearner `GA-typo`; known: {unlearners}"
    );
    for needle in [
        "/train/lr: -0.5 is less than or equal to the minimum of 0.0",
        "/unlearn/0/lr: -1 is less than or equal to the minimum of 0.0",
        &unknown,
        "/forget/0/class = 9: class 9 is outside 0..4",
        "/forget/1/n = 5000: forget set of 5000 samples must be non-empty and smaller than the training split",
        "/unlearn/2: Additional properties are not allowed ('lrr' was unexpected)",
    ] {
        assert!(e.contains(needle), "missing `{needle}` in:\n{e}");
    }
    assert!(e.contains("has 6 error(s)"), "{e}");
    assert!(!e.contains("panicked"));
}

#[test]
fn malformed_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), "syntax.toml", "seed = [\n");
    let o = unlearn(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is not valid TOML"), "{}", stderr(&o));
    let o = unlearn(&[
        "validate",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read config") && stderr(&o).contains("missing.toml"));
    let p = config(dir.path(), "empty.json", "{}");
    let o = unlearn(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/forget: no forgetting scenario"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn index_files_out_of_range_or_duplicated_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let with_file = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap();
        let cfg = tiny_with(&[(
            "kind = \"class\"\nclass = 1",
            &format!("kind = \"file\"\npath = \"{name}\""),
        )]);
        let p = config(dir.path(), &format!("{name}.toml"), &cfg);
        unlearn(&["validate", p.to_str().unwrap()])
    };
    let o = with_file("ok.txt", "0\n5\n7\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = with_file("range.txt", "0\n5000\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/forget/0/path")
            && stderr(&o).contains("line 2: index 5000 is outside the training split"),
        "{}",
        stderr(&o)
    );
    let o = with_file("dup.json", "[3, 4, 3]");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("index 3 is listed twice (element 0 and element 2)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unwritable_output_directory_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = file.join("out");
    let o = unlearn(&[
        "run",
        fixture("tiny.toml").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("output folder")
            && e.contains("a-file/out")
            && e.contains("a-file exists and is not a folder"),
        "{e}"
    );
    assert!(
        !e.contains("training the dense model") && !e.contains("panicked"),
        "{e}"
    );
}

#[test]
fn demo_config_is_printed_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let o = unlearn(&["demo", "--print-config"]);
    assert!(o.status.success());
    let p = config(dir.path(), "demo.toml", &stdout(&o));
    let o = unlearn(&["validate", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("2 scenario(s), 7 unlearner(s), pruner OMP"),
        "{}",
        stdout(&o)
    );
}

/// The example studies are valid as written but for their data, which tests do not have: with
/// `[data]` replaced by a synthetic set of CIFAR's shape, `validate` accepts every other line
/// (models, schedules, pruner sweeps, scenarios, methods and their settings).
#[test]
fn example_studies_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("\n[data]\n").expect("a [data] table") + 1;
        let end = start + 1 + text[start + 1..].find("\n[").unwrap() + 1;
        let synthetic = "[data]\ndataset = \"synthetic\"\n\
            synthetic = { samples = 8000, classes = 10, channels = 3, size = 32 }\n\
            split = { test_fraction = 0.2, val_fraction = 0.1 }\n";
        let text = format!("{}{synthetic}{}", &text[..start], &text[end..]);
        let name = path.file_name().unwrap().to_str().unwrap();
        let p = config(dir.path(), name, &text);
        let o = unlearn(&["validate", p.to_str().unwrap()]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        // Studies run several seeds; the GPU check's short training is one run.
        if name != "gpu-cifar10-short.toml" {
            assert!(stdout(&o).contains(" seeds)"), "{name}: {}", stdout(&o));
        }
        checked.push(name.to_string());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "cifar10-cpu.toml",
            "gpu-cifar10-short.toml",
            "paper-cifar10.toml",
            "trojan-cifar10-cpu.toml",
            "trojan-digits.toml"
        ]
    );
}

#[test]
fn info_reports_the_device() {
    let o = unlearn(&["info"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("libtorch 2.11.0"), "{out}");
    let cuda = unlearn_pipeline::device::cuda_device_count() > 0;
    assert!(
        out.contains(if cuda {
            "device: cuda:0"
        } else {
            "device: cpu"
        }),
        "{out}"
    );
    // libtorch's own build facts, read through the shim.
    assert!(out.contains("libtorch cuda runtime: 13.0"), "{out}");
    assert!(out.contains("cpu kernels: "), "{out}");
    assert_eq!(out.contains("gpu 0: "), cuda, "{out}");
    let o = unlearn(&["--device", "tpu", "info"]);
    assert_eq!(o.status.code(), Some(2));
}

/// `unlearn bench` at a tiny size: every row of the grid, the references beside them, RTE, and
/// each reported rate recomputed from the measured images and seconds.
#[test]
fn bench_measures_the_grid_the_references_and_rte() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let python = std::env::var("UNLEARN_SKIP_PYTHON").map_or(true, |v| v != "1");
    let refs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/train");
    let mut args = vec![
        "--device",
        "cpu",
        "bench",
        "--archs",
        "small-cnn",
        "--precisions",
        "fp32,bf16",
        "--samples",
        "24",
        "--size",
        "8",
        "--classes",
        "3",
        "--batch",
        "8",
        "--epochs",
        "1",
        "--sweep",
        "4",
        "--rte",
        "--rte-samples",
        "120",
        "--rte-arch",
        "small-cnn",
        "--workers",
        "0",
        "--out",
    ];
    let out_s = out.to_str().unwrap().to_string();
    args.push(&out_s);
    let refs_s = refs.to_str().unwrap().to_string();
    if python {
        args.extend(["--references", &refs_s]);
    }
    let o = unlearn(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(out.join("bench.md")).unwrap();
    assert_eq!(stdout(&o).trim(), md.trim(), "bench.md is what was printed");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    let rows = r["rows"].as_array().unwrap();
    let of = |kind: &str, imp: &str| {
        rows.iter()
            .filter(|x| x["kind"] == kind && x["implementation"] == imp)
            .count()
    };
    // 2 precisions x 2 memory formats.
    assert_eq!(of("train", "unlearn"), 4);
    assert_eq!(of("eval", "unlearn"), 4);
    assert_eq!(of("sweep", "unlearn"), 1);
    assert_eq!(of("reference", "pytorch-tuned"), if python { 4 } else { 0 });
    assert_eq!(of("reference", "pytorch-seed"), if python { 1 } else { 0 });
    let peak = |p: &serde_json::Value| {
        r["peaks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| &k["precision"] == p)
            .map(|k| k["matmul_tflops"].as_f64().unwrap())
            .unwrap()
    };
    let spec =
        unlearn_pipeline::testing::spec(unlearn_pipeline::model::Arch::SmallCnn, [3, 8, 8], 3);
    let flops = unlearn_pipeline::model::forward_flops(&spec).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-12);
    for x in rows {
        let f = |k: &str| x[k].as_f64().unwrap();
        let ips = f("images") / f("seconds");
        assert!(close(f("images_per_s"), ips), "{x}");
        assert!(close(f("cifar10_epoch_s"), 50_000.0 / ips), "{x}");
        // Training counts 3 forward passes, evaluation one; the CPU's peak is the measured matmul.
        let passes = if x["kind"] == "eval" { 1.0 } else { 3.0 };
        let tflops = flops * passes * ips / 1e12;
        assert!(close(f("tflops"), tflops), "{x}");
        assert!(
            close(f("peak_percent"), 100.0 * tflops / peak(&x["precision"])),
            "{x}"
        );
        if x["kind"] == "reference" {
            // One warm-up epoch untimed, then --epochs timed, over --samples images.
            assert_eq!(f("images"), 24.0, "{x}");
        }
    }
    if python {
        assert!(
            md.contains("| pytorch-seed |") && md.contains("x |"),
            "{md}"
        );
    }
    let rte = r["rte"].as_array().unwrap();
    let names: Vec<&str> = rte.iter().map(|t| t["method"].as_str().unwrap()).collect();
    assert_eq!(names, ["retrain", "FT", "GA", "FF", "IU", "l1-sparse"]);
    for t in rte {
        let measured = t["seconds_measured"].as_f64().unwrap();
        let scale = match (t["paper_epochs"].as_f64(), t["epochs_run"].as_f64()) {
            (Some(p), Some(run)) => p / run,
            _ => 1.0,
        };
        assert!(
            close(t["seconds_paper"].as_f64().unwrap(), measured * scale),
            "{t}"
        );
    }
    assert_eq!(rte[0]["paper_epochs"], 160, "retrain's paper setting");

    // Bad input: a clear message and exit 2, nothing written.
    let bad = dir.path().join("bad");
    let bad_s = bad.to_str().unwrap();
    for (flags, says) in [
        (vec!["--batch", "0"], "--batch"),
        (vec!["--samples", "2"], "--samples"),
        (vec!["--sweep", "0"], "batch size"),
        (vec!["--precisions", "fp16"], "fp16"),
        (
            vec![
                "--references",
                "/nonexistent/refs",
                "--archs",
                "small-cnn",
                "--size",
                "8",
                "--samples",
                "8",
                "--batch",
                "4",
                "--classes",
                "2",
                "--precisions",
                "fp32",
                "--contiguous-only",
                "--sweep",
                "none",
            ],
            "not found",
        ),
    ] {
        let mut a = vec!["--device", "cpu", "bench", "--out", bad_s];
        a.extend(flags);
        let o = unlearn(&a);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{a:?}: {}", stderr(&o));
        assert!(!bad.join("bench.json").exists());
    }
}

/// Runs the tiny pipeline and checks results.json against independent computations, then
/// re-runs into the same directory and checks that it resumed.
#[test]
fn run_results_are_consistent_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = fixture("tiny.toml");
    let o = run_ok(&cfg, &out);
    assert!(stderr(&o).contains("training the dense model"));
    let r: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert!(
        std::fs::read_to_string(out.join("report.md"))
            .unwrap()
            .contains("| Scenario")
    );

    // The split partitions the 300 samples; the forget set is exactly class 1 of train
    // (synthetic labels are `index % classes`).
    let idx = |v: &Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    let (train, val, test) = (
        idx(&r["split"]["train"]),
        idx(&r["split"]["val"]),
        idx(&r["split"]["test"]),
    );
    let mut all = [train.clone(), val, test].concat();
    all.sort();
    assert_eq!(all, (0..300).collect::<Vec<_>>());
    let forget = idx(&r["scenarios"][0]["forget_indices"]);
    let expected: Vec<usize> = (0..train.len()).filter(|&p| train[p] % 4 == 1).collect();
    assert_eq!(forget, expected);
    assert_eq!(
        r["scenarios"][0]["retain_size"].as_u64().unwrap() as usize,
        train.len() - forget.len()
    );

    // 1 scenario x (dense, sparse) x (original, retrain, FT)
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    let sparsity = r["models"][1]["sparsity"].as_f64().unwrap();
    assert_eq!(
        r["models"][1]["pruned_weights"].as_i64().unwrap(),
        (0.8 * r["models"][1]["prunable_weights"].as_f64().unwrap()).round() as i64
    );
    assert!((sparsity - 0.8).abs() < 1e-4);

    // The original dense model's UA, RA and TA, recomputed sample by sample from its checkpoint.
    let pcfg: PipelineConfig = serde_json::from_value(r["config"].clone()).unwrap();
    let (data, _) = load_split(&pcfg.data, Path::new(".")).unwrap();
    let (model, mask, meta) =
        checkpoint::load(&out.join("models/dense.safetensors"), Device::Cpu).unwrap();
    assert!(
        mask.is_none()
            && meta.arch == pcfg.model.arch
            && meta.dataset.as_deref() == Some("synthetic")
    );
    let (_, sparse_mask, _) =
        checkpoint::load(&out.join("models/sparse.safetensors"), Device::Cpu).unwrap();
    assert!((sparse_mask.unwrap().sparsity() - sparsity).abs() < 1e-12);
    let labels = data.labels_vec();
    let correct = |i: usize| -> bool {
        let x = data.images.get(i as i64).unsqueeze(0).to_kind(Kind::Float) / 16.0;
        let y = unlearn_pipeline::tch::no_grad(|| model.forward_t(&x, false));
        y.argmax(1, false).int64_value(&[0]) == labels[i]
    };
    let acc =
        |ix: &[usize]| 100.0 * ix.iter().filter(|&&i| correct(i)).count() as f64 / ix.len() as f64;
    let retain: Vec<usize> = (0..train.len())
        .filter(|p| !forget.contains(p))
        .map(|p| train[p])
        .collect();
    let forget_ds: Vec<usize> = forget.iter().map(|&p| train[p]).collect();
    let original = &rows[0];
    assert_eq!(
        (original["model"].as_str(), original["method"].as_str()),
        (Some("dense"), Some("original"))
    );
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    close(
        original["metrics"]["ua"].as_f64().unwrap(),
        100.0 - acc(&forget_ds),
    );
    close(original["metrics"]["ra"].as_f64().unwrap(), acc(&retain));
    close(
        original["metrics"]["ta"].as_f64().unwrap(),
        acc(&idx(&r["split"]["test"])),
    );
    // A file scenario keeps the whole test set: the full-test TA is the headline one.
    close(
        original["metrics"]["ta_full"].as_f64().unwrap(),
        acc(&idx(&r["split"]["test"])),
    );

    // Each gap is the mean |difference| to its group's retrain row, recomputed here.
    for group in rows.chunks(3) {
        let retrain = group.iter().find(|r| r["method"] == "retrain").unwrap();
        for row in group {
            let m = |r: &Value, k: &str| r["metrics"][k].as_f64().unwrap();
            let mia = |r: &Value| r["metrics"]["mia_efficacy"]["confidence"].clone();
            let mut parts = vec![
                (m(row, "ua") - m(retrain, "ua")).abs(),
                (m(row, "ra") - m(retrain, "ra")).abs(),
                (m(row, "ta") - m(retrain, "ta")).abs(),
            ];
            if mia(row)["informative"] == true && mia(retrain)["informative"] == true {
                parts.push(
                    (mia(row)["value"].as_f64().unwrap() - mia(retrain)["value"].as_f64().unwrap())
                        .abs(),
                );
            }
            close(
                row["gap"]["avg"].as_f64().unwrap(),
                parts.iter().sum::<f64>() / parts.len() as f64,
            );
        }
        assert!(group[1..].iter().all(|r| r["rte"].as_f64().unwrap() > 0.0));
    }

    // Every MIA score carries its shadow accuracy's interval, and is uninformative exactly when
    // the interval reaches 50% (chance on the balanced shadow set) or the SVC is constant.
    let mut headline_flagged = 0;
    for row in rows {
        for kind in ["mia_efficacy", "mia_privacy"] {
            for (feature, s) in row["metrics"][kind].as_object().unwrap() {
                let f = |k: &str| s[k].as_f64().unwrap();
                let ci = [0, 1].map(|i| s["shadow_accuracy_ci"][i].as_f64().unwrap());
                assert!(
                    ci[0] <= f("shadow_accuracy") && f("shadow_accuracy") <= ci[1],
                    "{s}"
                );
                let why = if f("majority_share") >= 99.0 {
                    Value::from("constant")
                } else if ci[0] <= 50.0 {
                    Value::from("chance")
                } else {
                    Value::Null
                };
                assert_eq!(s["uninformative"], why, "{s}");
                assert_eq!(s["informative"], why.is_null(), "{s}");
                if kind == "mia_efficacy" && feature == "confidence" && !why.is_null() {
                    headline_flagged += 1;
                }
            }
        }
    }
    // report.md marks each uninformative headline value and says what the mark means.
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let headline = report
        .split("## Unlearning")
        .nth(1)
        .unwrap()
        .split("## Membership inference")
        .next()
        .unwrap();
    let marked = headline
        .lines()
        .filter(|l| l.starts_with('|') && l.contains(")†"))
        .count();
    assert_eq!(marked, headline_flagged, "{headline}");
    assert_eq!(
        headline.contains("† uninformative"),
        headline_flagged > 0,
        "{headline}"
    );

    // The same results as an older unlearn wrote them (no interval; every attack that was not
    // constant `informative`, gaps to match): `unlearn report` judges them by the current rule
    // and writes the same report.
    let mut old = r.clone();
    for row in old["rows"].as_array_mut().unwrap() {
        for kind in ["mia_efficacy", "mia_privacy"] {
            for s in row["metrics"][kind].as_object_mut().unwrap().values_mut() {
                let s = s.as_object_mut().unwrap();
                s.remove("shadow_accuracy_ci");
                s.remove("uninformative");
                let constant = s["majority_share"].as_f64().unwrap() >= 99.0;
                s.insert("informative".into(), Value::from(!constant));
            }
        }
        row["gap"]["avg"] = Value::from(-1.0);
    }
    let old_dir = dir.path().join("old");
    std::fs::create_dir_all(&old_dir).unwrap();
    // The marker an older unlearn left in its output folders (plain text).
    std::fs::write(old_dir.join(".unlearn-output"), b"").unwrap();
    std::fs::write(
        old_dir.join("results.json"),
        serde_json::to_vec(&old).unwrap(),
    )
    .unwrap();
    let o = unlearn(&["report", old_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(old_dir.join("report.md")).unwrap(),
        report
    );

    // Same config, same directory: everything comes from the saved state.
    let o2 = unlearn(&[
        "--device",
        "cpu",
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o2.status.success(), "{}", stderr(&o2));
    assert!(
        !stderr(&o2).contains("training the dense model") && !stderr(&o2).contains("unlearning:"),
        "{}",
        stderr(&o2)
    );
    let r2: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["rows"], r2["rows"]);
}

/// A diverging method stops the run with an error naming it and the epoch; nothing is written
/// as if it had succeeded.
#[test]
fn divergence_is_a_clear_error_and_writes_no_results() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_with(&[(
        "method = \"FT\"\nepochs = 1\nlr = 0.01",
        "method = \"GA\"\nepochs = 3\nlr = 1000.0",
    )]);
    let p = config(dir.path(), "ga.toml", &cfg);
    let out = dir.path().join("out");
    let o = unlearn(&[
        "--device",
        "cpu",
        "run",
        p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    // Which epoch diverges first depends on floating-point summation order (thread count).
    assert!(e.contains("error: GA on class-1 (dense): the loss or the weights became non-finite (NaN or inf) in epoch "), "{e}");
    assert!(
        e.contains(" of 3: training diverged; lower the learning rate")
            && e.matches("non-finite").count() == 1,
        "{e}"
    );
    assert!(!out.join("results.json").exists() && !out.join("report.md").exists());
    assert!(!e.contains("panicked"));
}

/// A run can start from a checkpoint an earlier run wrote: the pruned model alone is unlearned,
/// and its original row reproduces the earlier run's numbers for the same model.
#[test]
fn a_saved_checkpoint_starts_a_new_run() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let o = unlearn(&[
        "--device",
        "cpu",
        "-q",
        "run",
        fixture("tiny.toml").to_str().unwrap(),
        "--out",
        first.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sparse = first.join("models/sparse.safetensors");
    let cfg = tiny_with(&[
        (
            "[prune]\nmethod = \"OMP\"\nsparsity = 0.8\nrewind_epoch = 1\n",
            "",
        ),
        (
            "[train]",
            &format!(
                "[model]\ncheckpoint = {:?}\n\n[train]",
                sparse.to_str().unwrap()
            ),
        ),
    ]);
    let p = config(dir.path(), "from-ckpt.toml", &cfg);
    let second = dir.path().join("second");
    let o = unlearn(&[
        "--device",
        "cpu",
        "run",
        p.to_str().unwrap(),
        "--out",
        second.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("training the dense model"));
    let read = |d: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(d.join("results.json")).unwrap()).unwrap()
    };
    let (r1, r2) = (read(&first), read(&second));
    let rows2 = r2["rows"].as_array().unwrap();
    assert!(rows2.iter().all(|r| r["model"] == "sparse"));
    let original = |r: &Value| {
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["model"] == "sparse" && x["method"] == "original")
            .unwrap()["metrics"]
            .clone()
    };
    assert_eq!(original(&r1), original(&r2));

    // A pruner cannot follow a model that is already pruned.
    let cfg = tiny_with(&[(
        "[train]",
        &format!(
            "[model]\ncheckpoint = {:?}\n\n[train]",
            sparse.to_str().unwrap()
        ),
    )]);
    let p = config(dir.path(), "twice.toml", &cfg);
    let o = unlearn(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/prune: model.checkpoint is already pruned"),
        "{}",
        stderr(&o)
    );
    // Another architecture's checkpoint is refused with both named.
    let o = unlearn(&["--arch", "resnet20", "validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("holds a small-cnn model") && stderr(&o).contains("needs resnet20"),
        "{}",
        stderr(&o)
    );
}

/// A data set read from an image folder, end to end, and the errors of a missing folder.
#[test]
fn image_folder_data_runs_and_a_missing_dir_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    // 3 classes, 12 train and 4 test images each, 8x8 RGB with a class-specific colour.
    for (split, n) in [("train", 12), ("test", 4)] {
        for (c, name) in ["blue", "green", "red"].iter().enumerate() {
            let folder = root.join(split).join(name);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(8, 8, |x, y| {
                    let mut px = [((x * 7 + y * 3 + i) % 40) as u8; 3];
                    px[2 - c] = 200;
                    image::Rgb(px)
                });
                img.save(folder.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
    let cfg = tiny_with(&[(
        "dataset = \"synthetic\"\nsynthetic = { samples = 300, classes = 4, noise = 6.0 }",
        "dataset = \"image_folder\"\ndir = \"images\"",
    )])
    .replace("class = 1", "class = 2");
    let p = config(dir.path(), "folder.toml", &cfg);
    let out = dir.path().join("out");
    let o = unlearn(&[
        "--device",
        "cpu",
        "-q",
        "run",
        p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    // Official test set kept: 12 test images after the 36 train ones; 10% of each class to val.
    let split = &r["split"];
    assert_eq!(split["test"].as_array().unwrap().len(), 12);
    assert_eq!(split["test"][0], 36);
    assert_eq!(split["val"].as_array().unwrap().len(), 3);
    assert_eq!(split["train"].as_array().unwrap().len(), 33);
    assert_eq!(r["scenarios"][0]["forget_size"], 11);

    let cfg = cfg.replace("dir = \"images\"\n", "");
    let p = config(dir.path(), "nodir.toml", &cfg);
    let o = unlearn(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/data/dir: image_folder: `dir` is required"),
        "{}",
        stderr(&o)
    );
    let p = config(
        dir.path(),
        "baddir.toml",
        &cfg.replace(
            "dataset = \"image_folder\"",
            "dataset = \"image_folder\"\ndir = \"nowhere\"",
        ),
    );
    let o = unlearn(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/data/dir = ") && stderr(&o).contains("nowhere"),
        "{}",
        stderr(&o)
    );
}

/// The tiny pipeline as a Trojan cleanse: BadNets poisons 20 rows, no [[forget]] (the poisoned
/// rows are the forget set).
fn tiny_trojan(attack: &str) -> String {
    tiny_with(&[("[[forget]]\nkind = \"class\"\nclass = 1\n", attack)])
}

const BADNETS: &str = "[attack]\nmethod = \"BadNets\"\nn = 20\nsize = 2\ntarget = 0\nseed = 3\n";

#[test]
fn trojan_cleanse_forgets_exactly_the_poisoned_rows_and_reports_asr() {
    use unlearn_pipeline::method::{AttackCtx, TaskData};
    use unlearn_pipeline::registry::Registry;
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_trojan(BADNETS);
    let p = config(dir.path(), "trojan.toml", &text);
    let out = dir.path().join("out");
    let o = unlearn(&[
        "--quiet",
        "run",
        p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();

    // The forget set is the poisoned rows, recorded in results.json.
    let poisoned: Vec<u64> = r["attack"]["poisoned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(poisoned.len(), 20);
    assert_eq!(r["scenarios"].as_array().unwrap().len(), 1);
    assert_eq!(r["scenarios"][0]["kind"], "poisoned");
    let forget: Vec<u64> = r["scenarios"][0]["forget_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(forget, poisoned);
    // Independently: BadNets itself, on the same split, with the same seed.
    let raw = unlearn_pipeline::config::parse_config_text(&text, false).unwrap();
    let cfg: PipelineConfig = serde_json::from_value(raw).unwrap();
    let (data, split) = load_split(&cfg.data, dir.path()).unwrap();
    let task = TaskData {
        train: data.subset(&split.train),
        val: data.subset(&split.val),
        test: data.subset(&split.test),
    };
    let registry = Registry::builtin().unwrap();
    let attack = registry
        .get("BadNets")
        .unwrap()
        .build_attack(&serde_json::json!({"n": 20, "size": 2, "target": 0}))
        .unwrap_or_else(|_| panic!("BadNets builds"));
    let direct = attack
        .poison(&AttackCtx {
            data: &task,
            seed: 3,
            label: "direct".into(),
        })
        .unwrap();
    let direct: Vec<u64> = direct.rows.iter().map(|&i| i as u64).collect();
    assert_eq!(direct, poisoned);

    // Every row has its attack success rate; the report, the table and the figure show it.
    for row in r["rows"].as_array().unwrap() {
        for m in ["asr", "asr_non_target"] {
            let v = row["metrics"][m]
                .as_f64()
                .unwrap_or_else(|| panic!("{m} in {row}"));
            assert!((0.0..=100.0).contains(&v), "{m} = {v}");
        }
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Backdoor (Trojan cleanse)"), "{report}");
    assert!(report.contains("ASR before"), "{report}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.lines().any(|l| l.contains(",asr,")), "{csv}");
    assert!(out.join("plots/backdoor-vs-sparsity-1.png").exists());

    // The same config without the attack is other data: nothing of the Trojan run is reused.
    let clean = tiny_with(&[]);
    let p = config(dir.path(), "clean.toml", &clean);
    let o = unlearn(&[
        "run",
        p.to_str().unwrap(),
        "--dry-run",
        "--out",
        dir.path().join("clean").to_str().unwrap(),
        "--cache",
        out.join("cache").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("cached ("), "{}", stdout(&o));
}

#[test]
fn trojan_configs_that_cannot_work_are_refused_at_validate() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, String, &str); 6] = [
        (
            "a trigger larger than the 8x8 image",
            tiny_trojan(&BADNETS.replace("size = 2", "size = 7")),
            "/attack",
        ),
        (
            "a target class out of range",
            tiny_trojan(&BADNETS.replace("target = 0", "target = 4")),
            "/attack/target",
        ),
        (
            "more poisoned samples than the training set has",
            tiny_trojan(&BADNETS.replace("n = 20", "n = 5000")),
            "/attack",
        ),
        (
            "an attack with a class-wise scenario",
            tiny_with(&[("[[forget]]", &format!("{BADNETS}\n[[forget]]"))]),
            "/forget/0/kind",
        ),
        (
            "the poisoned scenario without an attack",
            tiny_with(&[("kind = \"class\"\nclass = 1", "kind = \"poisoned\"")]),
            "/forget/0/kind",
        ),
        (
            "a negative poisoning seed",
            tiny_trojan(&BADNETS.replace("seed = 3", "seed = -1")),
            "/attack/seed",
        ),
    ];
    for (what, text, path) in cases {
        let p = config(dir.path(), "bad.toml", &text);
        let o = unlearn(&["validate", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains(path), "{what}: {}", stderr(&o));
    }
}
