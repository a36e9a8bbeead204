//! Forgetting scenarios through the registry: the built-ins select exactly the rows (and give
//! exactly the row cache keys) they did before scenarios became a registry, on the digits.

use std::path::Path;

use serde_json::{Value, json};
use unlearn_pipeline::config::plan;
use unlearn_pipeline::pipeline::StageKeys;
use unlearn_pipeline::registry::Registry;

fn digits_config(forget: Value) -> Value {
    json!({
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "milestones": []},
        "forget": forget,
    })
}

/// Recorded with the code before the scenario registry (commit b46b137): per scenario, the
/// SHA-256 of its forget indices, its size, and the row key of its `original` row. (The row keys
/// were re-recorded when milestones past the last epoch became an error and this config had to
/// give `milestones = []`, and when the data's normalisation became an exact integer computation,
/// the same on every machine, which changed its last bits and so every key; the indices are the
/// originals.)
const GOLDEN: &[(&str, &str, usize, &str)] = &[
    (
        "class-3",
        "34d32ada729a8bd1eceaef352124e641fe19cbdbfa9e6143fb84a4dc9ddfc31a",
        131,
        "f993f260aaaedd00571056223ee24189a6699d3422de88def383edea77f28d37",
    ),
    (
        "random-100",
        "5899b30eae1e9ce567d8a80f2acf30a3f4ddde39a6de9be19eea2b9121b97c81",
        100,
        "ab2332bf7d959988bded618a5c27881437cbc307bb49b702a5fa92ed27f99e5d",
    ),
    (
        "random-129",
        "a844ff6910767e4c7a1535bbb6edf14ad177934af8c6c3848244e4097307f1f0",
        129,
        "7f7cb2fc4efff807aae1536a7e38274617b54ffa1c2c1b24e1b6dfa78e5cc89a",
    ),
    (
        "listed",
        "82744994d3f1518029a228531be42b45407b72737623a2de434278c1dfe478e0",
        4,
        "b9ab79b8852ee017ef9ac8ba8b6caf9401fe12938adc948fe1a63d0350578bf1",
    ),
];

#[test]
fn builtin_scenarios_select_the_same_rows_as_before() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idx.txt"), "3\n1\n40\n# c\n7\n").unwrap();
    let cfg = digits_config(json!([
        {"kind": "class", "class": 3},
        {"kind": "random", "n": 100, "seed": 7},
        {"kind": "random", "fraction": 0.1},
        {"kind": "file", "path": "idx.txt", "name": "listed"},
    ]));
    let registry = Registry::from_methods([]).unwrap();
    let p = plan(&cfg, &registry, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let keys = StageKeys::new(&p, 0, &json!("fixed data identity")).unwrap();
    let got: Vec<(String, String, usize, String)> = p
        .forget
        .iter()
        .zip(&keys.rows)
        .map(|(f, k)| (f.name.clone(), f.hash(), f.forget.len(), k[0][0].0.clone()))
        .collect();
    let want: Vec<(String, String, usize, String)> = GOLDEN
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), *c, d.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// A stand-in `retrain` for this test: a fresh initialisation, no training (cheap, and a model
/// whose predictions differ from the original's).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}
impl unlearn_pipeline::method::MethodConfig for NoConfig {}

pub struct FreshInit;
impl unlearn_pipeline::method::Unlearner for FreshInit {
    fn unlearn(
        &self,
        ctx: &mut unlearn_pipeline::method::UnlearnCtx<'_>,
    ) -> Result<(), unlearn_pipeline::method::MethodError> {
        ctx.reinitialise()?;
        Ok(())
    }
}
impl unlearn_pipeline::method::UnlearnMethod for FreshInit {
    type Config = NoConfig;
    const NAME: &'static str = "retrain";
    const SUMMARY: &'static str = "test stand-in: fresh initialisation";
    fn new(_: NoConfig) -> Self {
        FreshInit
    }
}
unlearn_pipeline::register_unlearner!(FreshInit);

fn run_config(forget: Value, eval: Value, out: &Path) -> unlearn_pipeline::pipeline::RunResults {
    let cfg = json!({
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "milestones": []},
        "forget": forget,
        "unlearn": [{"method": "retrain"}],
        "eval": eval,
    });
    let registry = Registry::builtin().unwrap();
    let p = plan(&cfg, &registry, out).unwrap_or_else(|e| panic!("{e:?}"));
    let notify = |_: &str| {};
    unlearn_pipeline::pipeline::run(
        &p,
        &unlearn_pipeline::pipeline::RunOptions {
            device: tch::Device::Cpu,
            out_dir: out.join("run"),
            what: "test".into(),
            cache_dir: Some(out.join("cache")),
            trainer: unlearn_pipeline::train::Trainer::new(tch::Device::Cpu, false),
            notify: &notify,
            workers: None,
        },
    )
    .unwrap()
}

/// Sub-class forgetting keeps the class in the test set (TA = TA all); class-wise drops it.
/// Registered metrics appear only when asked for, in results.json, results.csv and report.md,
/// and the same from the cache.
#[test]
fn subclass_and_registered_metrics_in_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let forget = json!([
        {"kind": "subclass", "class": 3, "fraction": 0.5, "seed": 1},
        {"kind": "class", "class": 3},
    ]);
    let plain = run_config(forget.clone(), json!({"mia": false}), &dir.path().join("a"));
    assert_eq!(plain.scenarios[0].kind, "subclass");
    assert_eq!(plain.scenarios[0].class, None);
    for r in &plain.rows {
        assert!(r.extra.is_empty());
        if r.scenario.starts_with("subclass") {
            assert_eq!(r.metrics.ta, r.metrics.ta_full, "{r:?}");
        }
    }
    let csv = std::fs::read_to_string(dir.path().join("a/run/results.csv")).unwrap();
    assert!(!csv.contains("forget_kl"));

    let asked = json!({"mia": false, "metrics": ["forget_kl"]});
    let out = dir.path().join("b");
    let with = run_config(forget.clone(), asked.clone(), &out);
    // The built-in numbers are the same as without metrics.
    for (a, b) in plain.rows.iter().zip(&with.rows) {
        assert_eq!((a.metrics.ua, a.metrics.ta), (b.metrics.ua, b.metrics.ta));
        assert_eq!(a.label, b.label);
    }
    for r in &with.rows {
        let kl = r.extra["forget_kl"];
        match r.method.as_str() {
            "retrain" => assert!(kl.abs() < 1e-9, "{r:?}"),
            _ => assert!(kl > 0.0, "{r:?}"),
        }
    }
    let csv = std::fs::read_to_string(out.join("run/results.csv")).unwrap();
    assert_eq!(csv.matches(",forget_kl,").count(), with.rows.len());
    let md = std::fs::read_to_string(out.join("run/report.md")).unwrap();
    assert!(
        md.contains("| forget_kl") && md.contains("`forget_kl`: mean KL"),
        "{md}"
    );
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join("run/results.json")).unwrap()).unwrap();
    assert!(json["rows"][0]["extra"]["forget_kl"].is_number());

    // Again, every row from the cache (their outputs kept there): the same values.
    let again = run_config(forget, asked, &out);
    assert!(again.stages.iter().all(|s| s.cached));
    for (a, b) in with.rows.iter().zip(&again.rows) {
        assert_eq!(a.extra, b.extra);
    }
}

#[test]
fn scenario_and_metric_errors_have_paths() {
    let registry = Registry::builtin().unwrap();
    let cfg = json!({
        "forget": [
            {"kind": "subclas", "class": 3},
            {"kind": "subclass", "class": 3, "fraction": 2.0},
            {"kind": "class", "class": 1, "n": 3},
        ],
        "eval": {"metrics": ["forget_kl", "nope"]},
    });
    let issues = plan(&cfg, &registry, Path::new(".")).err().unwrap();
    let text: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
    let text = text.join("\n");
    for needle in [
        "/forget/0/kind = \"subclas\": unknown forgetting scenario `subclas`; known: class, file, random, subclass",
        "/forget/1/fraction: 2.0 is greater than the maximum of 1.0",
        "/forget/2: Additional properties are not allowed ('n' was unexpected)",
        "/eval/metrics/0 = \"forget_kl\": this metric compares with the retrained model",
        "/eval/metrics/1 = \"nope\": unknown metric `nope`; known: forget_kl",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

/// A one-shot method (no training loop) during which the user presses Ctrl-C: it sets the run's
/// cancel flag, as the CLI's handler does, and finishes.
struct PressesCtrlC;
impl unlearn_pipeline::method::Unlearner for PressesCtrlC {
    fn unlearn(
        &self,
        ctx: &mut unlearn_pipeline::method::UnlearnCtx<'_>,
    ) -> Result<(), unlearn_pipeline::method::MethodError> {
        ctx.trainer
            .cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
impl unlearn_pipeline::method::UnlearnMethod for PressesCtrlC {
    type Config = NoConfig;
    const NAME: &'static str = "presses-ctrl-c";
    const SUMMARY: &'static str = "test stand-in: Ctrl-C during a one-shot method";
    fn new(_: NoConfig) -> Self {
        PressesCtrlC
    }
}
unlearn_pipeline::register_unlearner!(PressesCtrlC);

/// After Ctrl-C no further stage starts, even when the stage running at the time had no
/// training loop to notice it: the run ends with a cancellation naming the stage it skipped.
#[test]
fn ctrl_c_during_a_one_shot_method_starts_no_further_stage() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "milestones": []},
        "forget": [{"kind": "class", "class": 3}],
        "unlearn": [{"method": "presses-ctrl-c"}, {"method": "retrain"}],
        "eval": {"mia": false},
    });
    let registry = Registry::builtin().unwrap();
    let p = plan(&cfg, &registry, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let started = std::sync::Mutex::new(Vec::<String>::new());
    let notify = |m: &str| started.lock().unwrap().push(m.to_string());
    let e = unlearn_pipeline::pipeline::run(
        &p,
        &unlearn_pipeline::pipeline::RunOptions {
            device: tch::Device::Cpu,
            out_dir: dir.path().join("run"),
            what: "test".into(),
            cache_dir: Some(dir.path().join("cache")),
            trainer: unlearn_pipeline::train::Trainer::new(tch::Device::Cpu, false),
            notify: &notify,
            workers: None,
        },
    )
    .expect_err("the run stops");
    assert!(e.is_cancelled(), "{e}");
    assert!(e.to_string().contains("retrain"), "{e}");
    let started = started.into_inner().unwrap();
    assert!(
        started.iter().any(|m| m.contains("presses-ctrl-c")),
        "{started:?}"
    );
    assert!(
        !started.iter().any(|m| m.contains("retrain")),
        "{started:?}"
    );
    assert!(!dir.path().join("run/results.json").exists());
}
