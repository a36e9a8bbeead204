//! The cost of the plugin boundary: `RL` (or `SalUn`) run on the same task, from the same start,
//! once as a built-in (this crate linked in) and once from the cdylib through the C ABI (its
//! forward passes and every batch's objective cross the boundary), runs alternated. Also checks
//! that both give bit-identical weights. For `scripts/bench-plugin.sh`.
//!
//!   bench_abi --library target/release/libunlearn_rl_salun.so [--method RL] [--arch resnet20]
//!             [--samples 1280] [--size 32] [--epochs 2] [--batch 128] [--repeats 3]
//!             [--threads N] [--device cpu]
//!
//! Prints one JSON line per run and a summary line.

use std::path::PathBuf;

use unlearn_api::data::{SplitConfig, SyntheticConfig, stratified_split, synthetic};
use unlearn_api::device::{DeviceChoice, device_name};
use unlearn_api::method::{TaskData, UnlearnCtx};
use unlearn_api::model::{Arch, Model, ModelSpec};
use unlearn_api::plugin;
use unlearn_api::registry::{Method, Registry};
use unlearn_api::train::Trainer;

// This crate's methods as built-ins.
use unlearn_rl_salun as _;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad value for {name}: {v}"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let library: PathBuf = arg(&args, "--library", PathBuf::new());
    assert!(
        library.is_file(),
        "--library <path of libunlearn_rl_salun.so> is required"
    );
    let method: String = arg(&args, "--method", "RL".to_string());
    let arch_name: String = arg(&args, "--arch", "resnet20".to_string());
    let arch: Arch = serde_json::from_value(serde_json::Value::String(arch_name.clone()))
        .unwrap_or_else(|_| panic!("unknown arch {arch_name}"));
    let samples: usize = arg(&args, "--samples", 1280);
    let size: usize = arg(&args, "--size", 32);
    let epochs: usize = arg(&args, "--epochs", 2);
    let batch: usize = arg(&args, "--batch", 128);
    let repeats: usize = arg(&args, "--repeats", 3);
    let threads: i32 = arg(&args, "--threads", 0);
    let device = arg(&args, "--device", DeviceChoice::Auto)
        .resolve()
        .expect("a usable device");
    if threads > 0 {
        unlearn_api::tch::set_num_threads(threads);
    }

    let d = synthetic(&SyntheticConfig {
        samples,
        classes: 10,
        channels: 3,
        size,
        ..Default::default()
    })
    .expect("valid synthetic config");
    let split = stratified_split(&d.labels_vec(), 10, &SplitConfig::default()).expect("split");
    let data = TaskData {
        train: d.subset(&split.train).to_device(device),
        val: d.subset(&split.val).to_device(device),
        test: d.subset(&split.test).to_device(device),
    };
    let forget = unlearn_api::scenario::resolve_named(
        "class",
        &serde_json::json!({"class": 1}),
        &data.train.labels_vec(),
        10,
        std::path::Path::new("."),
    )
    .expect("class 1 exists");
    let spec = ModelSpec {
        arch,
        input: [3, size as i64, size as i64],
        classes: 10,
        mean: d.mean.clone(),
        std: d.std.clone(),
    };
    let start = Model::new(spec, device, 0).expect("valid spec");

    let builtin = Registry::builtin().expect("registry");
    let mut dylib = Registry::from_methods([]).expect("empty registry");
    let loaded = plugin::host::extend(&mut dylib, std::slice::from_ref(&library));
    assert!(
        loaded.is_empty(),
        "{}",
        loaded
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let config = serde_json::json!({"epochs": epochs, "batch_size": batch, "lr": 0.01});
    let steps = epochs * (data.train.len()).div_ceil(batch);

    let run = |m: &Method| -> (f64, Model) {
        let u = m.build_unlearner(&config).expect("config builds");
        let mut model = start.try_clone().expect("copy");
        let trainer = Trainer::new(device, false);
        let mut ctx = UnlearnCtx {
            model: &mut model,
            mask: None,
            data: &data,
            forget: &forget,
            trainer: &trainer,
            seed: 0,
            label: format!("{method} bench"),
        };
        unlearn_api::device::synchronize(device);
        let t = std::time::Instant::now();
        u.unlearn(&mut ctx).expect("unlearning runs");
        unlearn_api::device::synchronize(device);
        (t.elapsed().as_secs_f64(), model)
    };

    let (mut best_builtin, mut best_dylib) = (f64::INFINITY, f64::INFINITY);
    let mut identical = true;
    for r in 0..repeats {
        let (tb, mb) = run(builtin.get(&method).expect("built-in method"));
        let (td, md) = run(dylib.get(&method).expect("method in the library"));
        identical &= mb
            .var_store()
            .variables()
            .iter()
            .all(|(k, v)| v.equal(&md.var_store().variables()[k]));
        for (how, t) in [("built-in", tb), ("dylib", td)] {
            println!(
                "{}",
                serde_json::json!({"repeat": r, "method": method, "how": how, "seconds": t,
                    "ms_per_step": 1e3 * t / steps as f64})
            );
        }
        best_builtin = best_builtin.min(tb);
        best_dylib = best_dylib.min(td);
    }
    println!(
        "{}",
        serde_json::json!({
            "summary": true, "method": method, "arch": arch_name, "device": device_name(device),
            "steps": steps, "batch": batch, "samples": data.train.len(),
            "best_builtin_s": best_builtin, "best_dylib_s": best_dylib,
            "overhead_ms_per_step": 1e3 * (best_dylib - best_builtin) / steps as f64,
            "ratio": best_dylib / best_builtin, "identical_weights": identical,
        })
    );
    assert!(
        identical,
        "built-in and dylib runs must give the same weights"
    );
}
