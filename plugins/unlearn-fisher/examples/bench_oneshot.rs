//! Times FF and IU (default configs unless given) on (a) the embedded digits and (b) a
//! CIFAR-sized synthetic set (3x32x32), class-wise forgetting, on the CPU or a GPU. Prints
//! seconds per method and per stage, FF's backward-pass count (one per (batch, class): batched),
//! and accuracies on the forget / retain / test sets before and after.
//!
//!   cargo run --release -p unlearn-fisher --example bench_oneshot -- \
//!       [--device cpu|cuda|auto] [--threads N] [--cifar-samples N] [--skip-digits] [--skip-cifar] \
//!       [--cifar-epochs E] [--ff-alpha A] [--ff-batch B] [--iu-alpha A] [--iu-batch B] \
//!       [--samples N]

use std::time::Instant;

use unlearn_api::device::{DeviceChoice, synchronize};
use unlearn_api::forget::ForgetSet;
use unlearn_api::mask::{Mask, magnitude_scores};
use unlearn_api::method::{TaskData, UnlearnCtx, UnlearnMethod};
use unlearn_api::model::{Arch, Model, ModelSpec};
use unlearn_api::tch::Device;
use unlearn_api::train::{CrossEntropy, Run, Schedule, Stream, Trainer};
use unlearn_data::{Dataset, SplitConfig, SyntheticConfig, digits, stratified_split, synthetic};
use unlearn_eval::Outputs;
use unlearn_fisher::{Ff, FfConfig, Iu, IuConfig};

struct Args {
    device: Device,
    threads: Option<i32>,
    cifar_samples: usize,
    cifar_epochs: usize,
    digits: bool,
    cifar: bool,
    ff: FfConfig,
    iu: IuConfig,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        device: Device::Cpu,
        threads: None,
        cifar_samples: 1000,
        cifar_epochs: 5,
        digits: true,
        cifar: true,
        ff: FfConfig::default(),
        iu: IuConfig::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--device" => {
                let choice: DeviceChoice = value()?.parse().map_err(|e| format!("{e}"))?;
                a.device = choice.resolve().map_err(|e| format!("{e}"))?;
            }
            "--threads" => a.threads = Some(num(value()?)? as i32),
            "--cifar-samples" => a.cifar_samples = num(value()?)? as usize,
            "--skip-digits" => a.digits = false,
            "--skip-cifar" => a.cifar = false,
            "--ff-alpha" => a.ff.alpha = num(value()?)?,
            "--iu-alpha" => a.iu.alpha = num(value()?)?,
            "--samples" => a.iu.samples = num(value()?)? as usize,
            "--iu-batch" => a.iu.batch_size = num(value()?)? as usize,
            "--ff-batch" => a.ff.batch_size = num(value()?)? as usize,
            "--cifar-epochs" => a.cifar_epochs = num(value()?)? as usize,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(a)
}

struct Task {
    name: String,
    data: TaskData,
    forget: ForgetSet,
    model: Model,
    mask: Mask,
}

fn task(name: &str, d: Dataset, device: Device, epochs: usize, forget_class: usize) -> Task {
    let split = stratified_split(&d.labels_vec(), d.classes, &SplitConfig::default()).unwrap();
    let data = TaskData {
        train: d.subset(&split.train).to_device(device),
        val: d.subset(&split.val).to_device(device),
        test: d.subset(&split.test).to_device(device),
    };
    let forget = unlearn_api::scenario::resolve_named(
        "class",
        &serde_json::json!({ "class": forget_class }),
        &data.train.labels_vec(),
        d.classes,
        std::path::Path::new("."),
    )
    .unwrap();
    let spec = ModelSpec {
        arch: Arch::SmallCnn,
        input: d.image_shape(),
        classes: d.classes,
        mean: d.mean.clone(),
        std: d.std.clone(),
    };
    let mut model = Model::new(spec, device, 0).unwrap();
    let all: Vec<usize> = (0..data.train.len()).collect();
    let stream = Stream::new(&data.train, &all);
    let schedule = Schedule {
        epochs,
        lr: 0.05,
        batch_size: 64,
        milestones: vec![],
        ..Default::default()
    };
    let t = Instant::now();
    let trainer = Trainer::new(device, false);
    let train = |model: &mut Model, mask: Option<&Mask>| {
        trainer
            .run(
                model,
                Run::new("setup".into(), &schedule, &stream, mask, 0),
                &mut CrossEntropy,
            )
            .unwrap();
    };
    train(&mut model, None);
    // 90% of the conv weights pruned by magnitude, then retrained under the mask
    let mask = Mask::from_scores(&magnitude_scores(&model), None, 0.9).unwrap();
    train(&mut model, Some(&mask));
    println!(
        "{name}: trained {epochs} epoch(s) dense + {epochs} at 90% sparsity in {:.1} s; train {} / forget {} / retain {} / test {}, {} parameters",
        t.elapsed().as_secs_f64(),
        data.train.len(),
        forget.forget.len(),
        forget.retain.len(),
        data.test.len(),
        model.num_parameters()
    );
    Task {
        name: name.into(),
        data,
        forget,
        model,
        mask,
    }
}

fn accuracies(t: &Task, m: &Model) -> String {
    let train = Outputs::compute(m, &t.data.train, 512);
    let test = Outputs::compute(m, &t.data.test, 512);
    format!(
        "forget {:5.1}%  retain {:5.1}%  test {:5.1}%",
        train.select(&t.forget.forget).accuracy(),
        train.select(&t.forget.retain).accuracy(),
        test.accuracy()
    )
}

fn bench(t: &Task, args: &Args) {
    let trainer = Trainer::new(args.device, false);
    println!("\n## {} (device {:?})", t.name, args.device);
    println!("original (90% sparse): {}", accuracies(t, &t.model));

    let mut m = t.model.try_clone().unwrap();
    let mut ctx = UnlearnCtx {
        model: &mut m,
        mask: Some(&t.mask),
        data: &t.data,
        forget: &t.forget,
        trainer: &trainer,
        seed: 0,
        label: "FF".into(),
    };
    synchronize(args.device);
    let start = Instant::now();
    let r = Ff::new(args.ff.clone()).run(&mut ctx).unwrap();
    let total = start.elapsed().as_secs_f64();
    println!(
        "FF  (alpha {:e}, batch {}): {total:7.3} s  = Fisher accumulation {:.3} s ({} batches x {} classes = {} backward passes, {:.1} ms each; a per-sample loop would run {}) + rules and sampling {:.3} s",
        args.ff.alpha,
        args.ff.batch_size,
        r.fisher_seconds,
        r.batches,
        t.model.spec().classes,
        r.backward_passes,
        1e3 * r.fisher_seconds / r.backward_passes as f64,
        t.forget.retain.len() * t.model.spec().classes,
        r.sample_seconds
    );
    println!("    after: {}", accuracies(t, &m));

    let mut m = t.model.try_clone().unwrap();
    let mut ctx = UnlearnCtx {
        model: &mut m,
        mask: Some(&t.mask),
        data: &t.data,
        forget: &t.forget,
        trainer: &trainer,
        seed: 0,
        label: "IU".into(),
    };
    synchronize(args.device);
    let start = Instant::now();
    let r = Iu::new(args.iu.clone()).run(&mut ctx, true).unwrap();
    let total = start.elapsed().as_secs_f64();
    println!(
        "IU  (alpha {}, N {}, batch {}): {total:7.3} s  = g_f + g_r {:.3} s + per-sample gradients {:.3} s ({} samples, {:.2} ms each) + recursion {:.3} s",
        args.iu.alpha,
        args.iu.samples,
        args.iu.batch_size,
        r.gradient_seconds,
        r.per_sample_seconds,
        r.samples,
        1e3 * r.per_sample_seconds / r.samples as f64,
        r.recursion_seconds
    );
    println!("    after: {}", accuracies(t, &m));
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_oneshot: {e}");
            std::process::exit(2);
        }
    };
    if let Some(n) = args.threads {
        unlearn_api::tch::set_num_threads(n);
    }
    println!(
        "libtorch intra-op threads: {}; model: the small CNN",
        unlearn_api::tch::get_num_threads()
    );
    if args.digits {
        let t = task(
            "digits (8x8, 10 classes)",
            digits().unwrap(),
            args.device,
            30,
            3,
        );
        bench(&t, &args);
    }
    if args.cifar {
        let d = synthetic(&SyntheticConfig {
            samples: args.cifar_samples,
            classes: 10,
            channels: 3,
            size: 32,
            ..Default::default()
        })
        .unwrap();
        let t = task(
            &format!(
                "synthetic CIFAR-sized (3x32x32, 10 classes, {} samples)",
                args.cifar_samples
            ),
            d,
            args.device,
            args.cifar_epochs,
            3,
        );
        bench(&t, &args);
    }
}
