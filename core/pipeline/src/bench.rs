//! `unlearn bench`: how fast core's training loop and evaluation run on this machine, beside the
//! same training step written in PyTorch (the paper's reference code's way, and a tuned way), and
//! how long each of the paper's unlearning methods takes at its paper scale (RTE).
//!
//! Throughput is measured on random CIFAR-shaped images (u8 on the device, crop + flip on the
//! device, as every run of unlearn trains), one untimed warm-up epoch first. FLOP/s count
//! convolutions and linear layers (2 per multiply-add), training as 3x the forward pass; the
//! share of peak is of the GPU's data-sheet dense peak for that precision when the GPU is known,
//! else of the fastest large matrix product measured here (labelled `measured`). See
//! `docs/benchmarks.md`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::data::{Augment, Dataset, SplitConfig, SyntheticConfig, stratified_split, synthetic};
use crate::device::{self, DeviceReport, device_name, synchronize};
use crate::exec::{self, Execution, Precision};
use crate::method::{TaskData, UnlearnCtx};
use crate::model::{Arch, Model, ModelSpec};
use crate::registry::Registry;
use crate::train::{CrossEntropy, Run, Schedule, Stream, Trainer};

/// Images in one CIFAR-10 training epoch (the paper's 45,000 train + 5,000 validation split
/// trains on 45,000; the seed's timings use the full 50,000).
pub const CIFAR10_TRAIN: f64 = 50_000.0;

/// The unlearning methods of the paper's code, for RTE.
pub const SEED_METHODS: [&str; 6] = ["retrain", "FT", "GA", "FF", "IU", "l1-sparse"];

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Torch { what: String, source: tch::TchError },
    #[error("{0}")]
    Setup(String),
    #[error("reference {script}: {message}")]
    Reference { script: String, message: String },
}

fn torch(what: impl Into<String>) -> impl FnOnce(tch::TchError) -> BenchError {
    let what = what.into();
    move |source| BenchError::Torch { what, source }
}

/// The PyTorch references to run beside core's loop.
#[derive(Debug, Clone)]
pub struct References {
    /// A Python with torch (the GPU machine's own).
    pub python: PathBuf,
    /// The folder holding `reference_seed.py` and `bench_train.py`.
    pub dir: PathBuf,
    /// Data-loader workers of the seed-style reference.
    pub workers: usize,
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub device: Device,
    pub archs: Vec<Arch>,
    /// The batch size of the main grid.
    pub batch: usize,
    /// Batch sizes of the sweep (first architecture, fastest setting of the grid).
    pub sweep: Vec<usize>,
    pub precisions: Vec<Precision>,
    /// Memory formats to measure: false = contiguous, true = channels-last.
    pub formats: Vec<bool>,
    /// Random images per timed epoch.
    pub samples: usize,
    /// Timed epochs (after one warm-up epoch).
    pub epochs: usize,
    /// Image side (32: CIFAR) and classes.
    pub size: i64,
    pub classes: usize,
    pub references: Option<References>,
    /// RTE of the seed methods: train-set size (45,000 at paper scale), and at most this many
    /// epochs actually run per method (the time is scaled to the method's paper epochs).
    pub rte: Option<RteOptions>,
}

#[derive(Debug, Clone)]
pub struct RteOptions {
    pub arch: Arch,
    pub train_samples: usize,
    pub max_epochs: usize,
    /// None: the fastest setting the grid measured for its first architecture.
    pub execution: Option<Execution>,
}

/// One measured line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// `train`, `eval`, `sweep` or `reference`.
    pub kind: String,
    /// `unlearn`, `pytorch-seed` or `pytorch-tuned`.
    pub implementation: String,
    pub arch: String,
    pub batch: usize,
    pub precision: Precision,
    pub channels_last: bool,
    pub images: f64,
    pub seconds: f64,
    pub images_per_s: f64,
    /// Seconds per CIFAR-10 training epoch (50,000 images) at this rate.
    pub cifar10_epoch_s: f64,
    /// Achieved TFLOP/s (None for an architecture without a FLOP count).
    pub tflops: Option<f64>,
    /// Percent of the device's peak for this precision.
    pub peak_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The device's peak for one precision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peak {
    pub precision: Precision,
    /// Dense data-sheet peak, TFLOP/s, when the GPU is in [`datasheet_peak`].
    pub datasheet_tflops: Option<f64>,
    /// The fastest square matrix product measured here, TFLOP/s.
    pub matmul_tflops: f64,
}

impl Peak {
    /// The denominator of "% of peak" and where it comes from.
    pub fn reference(&self) -> (f64, &'static str) {
        match self.datasheet_tflops {
            Some(t) => (t, "data sheet"),
            None => (self.matmul_tflops, "measured matmul"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RteRow {
    pub method: String,
    /// Epochs the method's paper configuration runs (None: one-shot).
    pub paper_epochs: Option<usize>,
    pub epochs_run: Option<usize>,
    pub seconds_measured: f64,
    /// Seconds at paper scale: measured x paper_epochs / epochs_run.
    pub seconds_paper: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub unlearn: String,
    pub device: String,
    /// The GPU's name, or `cpu (<threads> threads, <kernels>)`.
    pub device_name: String,
    pub machine: Value,
    pub peaks: Vec<Peak>,
    pub rows: Vec<Row>,
    pub rte: Vec<RteRow>,
    pub rte_setup: Option<String>,
    pub seconds: f64,
}

/// Dense (no sparsity) data-sheet peaks in TFLOP/s (fp32 CUDA cores, TF32 and bf16 tensor
/// cores) of GPUs by name: NVIDIA's data sheets for the SXM/PCIe boards.
pub fn datasheet_peak(gpu_name: &str, p: Precision) -> Option<f64> {
    let n = gpu_name.to_ascii_uppercase();
    let table: [(&[&str], [f64; 3]); 7] = [
        (&["H200", "GH200"], [66.9, 494.7, 989.4]),
        (&["H100 PCIE"], [51.2, 378.0, 756.0]),
        (&["H100"], [66.9, 494.7, 989.4]),
        (&["A100"], [19.5, 156.0, 312.0]),
        (&["L40S"], [91.6, 183.0, 362.0]),
        (&["L4"], [30.3, 60.0, 121.0]),
        (&["RTX 4090"], [82.6, 82.6, 165.2]),
    ];
    let (_, peaks) = table
        .iter()
        .find(|(names, _)| names.iter().any(|k| n.contains(k)))?;
    Some(match p {
        Precision::Fp32 => peaks[0],
        Precision::Tf32 => peaks[1],
        Precision::Bf16 => peaks[2],
    })
}

/// Random CIFAR-shaped data on `device`, with the crop + flip augmentation of CIFAR training.
pub fn random_images(samples: usize, size: i64, classes: usize, device: Device) -> Dataset {
    let mut r = crate::rng::rng(0, "bench pixels");
    let pixels: Vec<u8> = (0..samples * 3 * (size * size) as usize)
        .map(|_| r.random::<u8>())
        .collect();
    let labels: Vec<i64> = (0..samples).map(|i| (i % classes) as i64).collect();
    let mut data = Dataset::from_pixels("bench", &pixels, [3, size, size], &labels, classes, 255.0)
        .to_device(device);
    data.augment = Augment::CROP_FLIP;
    data
}

fn spec_for(arch: Arch, data: &Dataset, classes: usize) -> ModelSpec {
    ModelSpec {
        arch,
        input: data.image_shape(),
        classes,
        mean: data.mean.clone(),
        std: data.std.clone(),
    }
}

/// What one timing gave.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub images: f64,
    pub seconds: f64,
}

impl Timing {
    pub fn per_second(&self) -> f64 {
        self.images / self.seconds.max(1e-12)
    }
}

/// Training images/s of core's loop (SGD, momentum 0.9, cross-entropy): one warm-up epoch, then
/// `epochs` timed ones.
pub fn train_throughput(
    data: &Dataset,
    arch: Arch,
    exec: Execution,
    batch: usize,
    epochs: usize,
) -> Result<Timing, BenchError> {
    let device = data.images.device();
    let mut model = Model::new(spec_for(arch, data, data.classes), device, 0)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    model
        .set_execution(exec)
        .map_err(|e| BenchError::Setup(format!("{exec} on {device:?}: {e}")))?;
    let rows: Vec<usize> = (0..data.len()).collect();
    let stream = Stream::new(data, &rows);
    let trainer = Trainer::new(device, false);
    let schedule = |epochs| Schedule {
        epochs,
        lr: 0.1,
        batch_size: batch,
        milestones: vec![],
        ..Default::default()
    };
    let mut run = |label: &str, epochs: usize, seed: u64| {
        let s = schedule(epochs);
        trainer
            .run(
                &mut model,
                Run::new(label.into(), &s, &stream, None, seed),
                &mut CrossEntropy,
            )
            .map(|_| ())
            .map_err(|e| BenchError::Setup(format!("training {arch:?}: {e}")))
    };
    run("warm-up", 1, 0)?;
    synchronize(device);
    let t0 = Instant::now();
    run("timed", epochs, 1)?;
    synchronize(device);
    Ok(Timing {
        images: (data.len() * epochs) as f64,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Evaluation images/s (eval mode, no gradients, batches of `batch`): one warm-up pass, then
/// `passes` timed ones.
pub fn eval_throughput(
    data: &Dataset,
    arch: Arch,
    exec: Execution,
    batch: usize,
    passes: usize,
) -> Result<Timing, BenchError> {
    let device = data.images.device();
    let mut model = Model::new(spec_for(arch, data, data.classes), device, 0)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    model
        .set_execution(exec)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let _g = tch::no_grad_guard();
    let n = data.len() as i64;
    let pass = || {
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        for start in (0..n).step_by(batch) {
            let idx =
                Tensor::arange_start(start, n.min(start + batch as i64), (Kind::Int64, device));
            let pred = model
                .forward_t(&data.batch_images(&idx), false)
                .argmax(1, false);
            correct += pred
                .eq_tensor(&data.labels.index_select(0, &idx))
                .sum(Kind::Int64);
        }
        correct
    };
    let _ = pass();
    synchronize(device);
    let t0 = Instant::now();
    for _ in 0..passes {
        let _ = pass();
    }
    synchronize(device);
    Ok(Timing {
        images: (data.len() * passes) as f64,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// TFLOP/s of the fastest square matrix product of side `n` in `precision` (bf16 operands for
/// bf16; float32 with TF32 on or off otherwise).
pub fn matmul_tflops(device: Device, precision: Precision, n: i64) -> Result<f64, BenchError> {
    let kind = if precision == Precision::Bf16 {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let _tf32 =
        exec::Tf32Switch::set(precision == Precision::Tf32).map_err(torch("setting TF32"))?;
    tch::manual_seed(0);
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let mut best = 0.0f64;
    let _ = a.matmul(&b);
    for _ in 0..3 {
        let reps = 4;
        synchronize(device);
        let t0 = Instant::now();
        for _ in 0..reps {
            let _ = a.matmul(&b);
        }
        synchronize(device);
        let s = t0.elapsed().as_secs_f64();
        best = best.max(2.0 * (n as f64).powi(3) * reps as f64 / s / 1e12);
    }
    Ok(best)
}

fn tflops_and_peak(
    arch: Arch,
    data: &Dataset,
    ips: f64,
    passes: f64,
    peak: Option<&Peak>,
) -> (Option<f64>, Option<f64>) {
    let flops = crate::model::forward_flops(&spec_for(arch, data, data.classes));
    let tflops = flops.map(|f| f * passes * ips / 1e12);
    let pct = tflops.zip(peak).map(|(t, p)| 100.0 * t / p.reference().0);
    (tflops, pct)
}

fn row(
    kind: &str,
    implementation: &str,
    arch: Arch,
    batch: usize,
    exec: Execution,
    t: Timing,
    flops: (Option<f64>, Option<f64>),
) -> Row {
    let ips = t.per_second();
    Row {
        kind: kind.into(),
        implementation: implementation.into(),
        arch: arch.name().to_string(),
        batch,
        precision: exec.precision,
        channels_last: exec.channels_last,
        images: t.images,
        seconds: t.seconds,
        images_per_s: ips,
        cifar10_epoch_s: CIFAR10_TRAIN / ips.max(1e-12),
        tflops: flops.0,
        peak_percent: flops.1,
        note: String::new(),
    }
}

/// Runs one PyTorch reference script and reads its JSON line.
fn reference(
    refs: &References,
    script: &str,
    args: &[String],
) -> Result<(Timing, Value), BenchError> {
    let path = refs.dir.join(script);
    let err = |message: String| BenchError::Reference {
        script: path.display().to_string(),
        message,
    };
    if !path.is_file() {
        return Err(err("not found (give the folder with --references)".into()));
    }
    let out = Command::new(&refs.python)
        .arg(&path)
        .args(args)
        .output()
        .map_err(|e| err(format!("cannot start {}: {e}", refs.python.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(err(format!(
            "exited with {}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| err(format!("printed no JSON line: {stdout}")))?;
    let v: Value =
        serde_json::from_str(line).map_err(|e| err(format!("bad JSON ({e}): {line}")))?;
    let num = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| err(format!("no number `{k}` in {line}")))
    };
    Ok((
        Timing {
            images: num("images")?,
            seconds: num("seconds")?,
        },
        v,
    ))
}

/// The arguments both references take: the same run as the grid's (timed epochs after an
/// untimed warm-up, as here).
fn reference_args(opts: &BenchOptions, arch: Arch, device: &str) -> Vec<String> {
    [
        ("--arch", arch.name().to_string()),
        ("--batch", opts.batch.to_string()),
        ("--samples", opts.samples.to_string()),
        ("--epochs", opts.epochs.to_string()),
        ("--size", opts.size.to_string()),
        ("--classes", opts.classes.to_string()),
        ("--device", device.to_string()),
        ("--threads", tch::get_num_threads().to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect()
}

/// Measures everything `opts` asks for; `notify` gets a line per measurement.
pub fn run(opts: &BenchOptions, notify: &dyn Fn(&str)) -> Result<BenchReport, BenchError> {
    let started = Instant::now();
    let device = opts.device;
    let machine: DeviceReport = device::report();
    let gpu = match device {
        Device::Cuda(i) => machine.gpus.iter().find(|g| g.index == i).cloned(),
        _ => None,
    };
    let device_label = match &gpu {
        Some(g) => g.name.clone(),
        None => format!(
            "cpu ({} threads, {})",
            machine.cpu_threads, machine.cpu_capability
        ),
    };
    // Matrix products large enough to reach the device's peak (small on a CPU: seconds each).
    let n = if device.is_cuda() { 8192 } else { 1024 };
    let mut peaks = Vec::new();
    for &p in &opts.precisions {
        let matmul = matmul_tflops(device, p, n)?;
        let datasheet = gpu.as_ref().and_then(|g| datasheet_peak(&g.name, p));
        notify(&format!("matmul {p}: {matmul:.2} TFLOP/s"));
        peaks.push(Peak {
            precision: p,
            datasheet_tflops: datasheet,
            matmul_tflops: matmul,
        });
    }
    let peak = |p: Precision| peaks.iter().find(|k| k.precision == p);
    let data = random_images(opts.samples, opts.size, opts.classes, device);
    let dev = device_name(device);
    let mut rows = Vec::new();
    let mut fastest: Option<(f64, Execution)> = None;
    for &arch in &opts.archs {
        for &precision in &opts.precisions {
            for &channels_last in &opts.formats {
                let e = Execution {
                    precision,
                    channels_last,
                };
                let t = train_throughput(&data, arch, e, opts.batch, opts.epochs)?;
                let r = row(
                    "train",
                    "unlearn",
                    arch,
                    opts.batch,
                    e,
                    t,
                    tflops_and_peak(arch, &data, t.per_second(), 3.0, peak(precision)),
                );
                notify(&format!(
                    "train {} {e} batch {}: {:.0} images/s",
                    arch.name(),
                    opts.batch,
                    r.images_per_s
                ));
                if arch == opts.archs[0] && fastest.is_none_or(|(ips, _)| r.images_per_s > ips) {
                    fastest = Some((r.images_per_s, e));
                }
                rows.push(r);
                // Evaluation batches are larger (at least 256), never larger than the images.
                let eval_batch = opts.batch.max(256).min(opts.samples);
                let t = eval_throughput(&data, arch, e, eval_batch, opts.epochs)?;
                rows.push(row(
                    "eval",
                    "unlearn",
                    arch,
                    eval_batch,
                    e,
                    t,
                    tflops_and_peak(arch, &data, t.per_second(), 1.0, peak(precision)),
                ));
                if let Some(refs) = &opts.references {
                    let mut args = reference_args(opts, arch, &dev);
                    args.extend(["--precision".into(), precision.name().into()]);
                    if channels_last {
                        args.push("--channels-last".into());
                    }
                    let (t, _) = reference(refs, "bench_train.py", &args)?;
                    notify(&format!(
                        "pytorch-tuned {} {e}: {:.0} images/s",
                        arch.name(),
                        t.per_second()
                    ));
                    rows.push(row(
                        "reference",
                        "pytorch-tuned",
                        arch,
                        opts.batch,
                        e,
                        t,
                        tflops_and_peak(arch, &data, t.per_second(), 3.0, peak(precision)),
                    ));
                }
            }
        }
        // The seed's way: fp32 (PyTorch's defaults), contiguous, a CPU data loader.
        if let Some(refs) = &opts.references {
            let mut args = reference_args(opts, arch, &dev);
            args.extend(["--workers".into(), refs.workers.to_string()]);
            let (t, v) = reference(refs, "reference_seed.py", &args)?;
            notify(&format!(
                "pytorch-seed {}: {:.0} images/s",
                arch.name(),
                t.per_second()
            ));
            let mut r = row(
                "reference",
                "pytorch-seed",
                arch,
                opts.batch,
                Execution::default(),
                t,
                tflops_and_peak(arch, &data, t.per_second(), 3.0, peak(Precision::Fp32)),
            );
            r.note = format!(
                "{} workers, {} transforms",
                refs.workers,
                v["transforms"].as_str().unwrap_or("?")
            );
            rows.push(r);
        }
    }
    if let (Some((_, e)), Some(&arch)) = (fastest, opts.archs.first()) {
        for &b in &opts.sweep {
            let t = train_throughput(&data, arch, e, b, opts.epochs)?;
            notify(&format!(
                "sweep {} {e} batch {b}: {:.0} images/s",
                arch.name(),
                t.per_second()
            ));
            rows.push(row(
                "sweep",
                "unlearn",
                arch,
                b,
                e,
                t,
                tflops_and_peak(arch, &data, t.per_second(), 3.0, peak(e.precision)),
            ));
        }
    }
    drop(data);
    let (rte, rte_setup) = match &opts.rte {
        Some(r) => {
            let execution = r.execution.or(fastest.map(|(_, e)| e)).unwrap_or_default();
            let (rows, setup) = rte(device, r, execution, notify)?;
            (rows, Some(setup))
        }
        None => (Vec::new(), None),
    };
    Ok(BenchReport {
        unlearn: env!("CARGO_PKG_VERSION").into(),
        device: dev,
        device_name: device_label,
        machine: serde_json::to_value(&machine).unwrap_or(Value::Null),
        peaks,
        rows,
        rte,
        rte_setup,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Run-time of each seed method at paper scale: CIFAR-10-shaped synthetic data (train
/// `train_samples`, the paper's 10% random forget set), each method's own defaults (the paper's
/// settings), at most `max_epochs` epochs run and the time scaled to its epochs.
fn rte(
    device: Device,
    o: &RteOptions,
    execution: Execution,
    notify: &dyn Fn(&str),
) -> Result<(Vec<RteRow>, String), BenchError> {
    // 45,000 train + 5,000 val + 10,000 test at paper scale: build train/val/test in proportion.
    let total = o.train_samples * 60 / 45;
    let d = synthetic(&SyntheticConfig {
        samples: total,
        classes: 10,
        noise: 8.0,
        seed: 0,
        channels: 3,
        size: 32,
    })
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    let split = stratified_split(
        &d.labels_vec(),
        10,
        &SplitConfig {
            test_fraction: 1.0 / 6.0,
            val_fraction: 0.1,
            seed: 0,
        },
    )
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut train = d.subset(&split.train);
    train.augment = Augment::CROP_FLIP;
    let data = TaskData {
        train: train.to_device(device),
        val: d.subset(&split.val).to_device(device),
        test: d.subset(&split.test).to_device(device),
    };
    let forget = crate::scenario::resolve_named(
        "random",
        &serde_json::json!({"fraction": 0.1, "seed": 0}),
        &data.train.labels_vec(),
        10,
        Path::new("."),
    )
    .map_err(BenchError::Setup)?;
    let setup = format!(
        "{} on {} synthetic 32x32 train images ({} forgotten), {}; methods' default (paper) settings, at most {} epoch(s) run, time scaled to their epochs",
        o.arch.name(),
        data.train.len(),
        forget.forget.len(),
        execution,
        o.max_epochs
    );
    let registry = Registry::builtin().map_err(|e| BenchError::Setup(e.to_string()))?;
    let spec = spec_for(o.arch, &data.train, 10);
    let mut original = Model::new(spec, device, 0).map_err(|e| BenchError::Setup(e.to_string()))?;
    original
        .set_execution(execution)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let trainer = Trainer::new(device, false);
    let mut out = Vec::new();
    for name in SEED_METHODS {
        let method = registry
            .get(name)
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let mut config = method.default_config.clone();
        let paper_epochs = config
            .get("epochs")
            .and_then(Value::as_u64)
            .map(|e| e as usize);
        let run_epochs = paper_epochs.map(|e| e.min(o.max_epochs));
        if let Some(e) = run_epochs {
            // Fewer epochs than the paper: its milestones would never be reached (and only move
            // the lr, not the time).
            config["epochs"] = json!(e);
            config["milestones"] = json!([]);
        }
        let unlearner = method.build_unlearner(&config).map_err(|issues| {
            BenchError::Setup(format!(
                "{name}: {}",
                issues
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        let mut model = original
            .try_clone()
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        synchronize(device);
        let t0 = Instant::now();
        let mut ctx = UnlearnCtx {
            model: &mut model,
            mask: None,
            data: &data,
            forget: &forget,
            trainer: &trainer,
            seed: 0,
            label: format!("RTE {name}"),
        };
        unlearner
            .unlearn(&mut ctx)
            .map_err(|e| BenchError::Setup(format!("{name}: {e}")))?;
        synchronize(device);
        let measured = t0.elapsed().as_secs_f64();
        let paper = match (paper_epochs, run_epochs) {
            (Some(p), Some(r)) if r > 0 => measured * p as f64 / r as f64,
            _ => measured,
        };
        notify(&format!(
            "RTE {name}: {measured:.1} s measured, {paper:.1} s at paper scale"
        ));
        out.push(RteRow {
            method: name.into(),
            paper_epochs,
            epochs_run: run_epochs,
            seconds_measured: measured,
            seconds_paper: paper,
        });
    }
    Ok((out, setup))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The report as Markdown tables.
pub fn markdown(r: &BenchReport) -> String {
    let mut s = format!(
        "# unlearn bench\n\nDevice: {} ({}), unlearn {}, {:.0} s in all.\n\n",
        r.device_name, r.device, r.unlearn, r.seconds
    );
    s += "| precision | peak TFLOP/s (source) | largest matmul TFLOP/s |\n|---|---|---|\n";
    for p in &r.peaks {
        let (v, src) = p.reference();
        s += &format!(
            "| {} | {v:.1} ({src}) | {:.1} |\n",
            p.precision, p.matmul_tflops
        );
    }
    s += "\n| kind | implementation | arch | batch | precision | channels-last | images/s | s per CIFAR-10 epoch | TFLOP/s | % of peak | vs pytorch-seed | vs pytorch-tuned | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    let find = |imp: &str, row: &Row| {
        r.rows.iter().find(|o| {
            o.kind == "reference"
                && o.implementation == imp
                && o.arch == row.arch
                && (imp == "pytorch-seed"
                    || (o.precision == row.precision && o.channels_last == row.channels_last))
        })
    };
    for row in &r.rows {
        let ratio = |imp: &str| {
            if row.kind == "train" {
                find(imp, row).map_or("-".into(), |o| {
                    format!("{:.2}x", row.images_per_s / o.images_per_s.max(1e-12))
                })
            } else {
                "-".into()
            }
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            row.kind,
            row.implementation,
            row.arch,
            row.batch,
            row.precision,
            if row.channels_last { "yes" } else { "no" },
            row.images_per_s,
            if row.kind == "eval" {
                "-".into()
            } else {
                format!("{:.1}", row.cifar10_epoch_s)
            },
            opt(row.tflops, 2),
            opt(row.peak_percent, 1),
            ratio("pytorch-seed"),
            ratio("pytorch-tuned"),
            row.note
        );
    }
    if !r.rte.is_empty() {
        s += &format!(
            "\nRTE: {}.\n\n| method | paper epochs | epochs run | seconds run | seconds at paper scale |\n|---|---|---|---|---|\n",
            r.rte_setup.as_deref().unwrap_or("")
        );
        for t in &r.rte {
            s += &format!(
                "| {} | {} | {} | {:.1} | {:.1} |\n",
                t.method,
                t.paper_epochs.map_or("one-shot".into(), |e| e.to_string()),
                t.epochs_run.map_or("-".into(), |e| e.to_string()),
                t.seconds_measured,
                t.seconds_paper
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasheet_knows_hopper_and_ampere_and_not_the_rest() {
        assert_eq!(datasheet_peak("NVIDIA H200", Precision::Bf16), Some(989.4));
        assert_eq!(
            datasheet_peak("NVIDIA H100 80GB HBM3", Precision::Tf32),
            Some(494.7)
        );
        assert_eq!(
            datasheet_peak("NVIDIA H100 PCIe", Precision::Fp32),
            Some(51.2)
        );
        assert_eq!(
            datasheet_peak("NVIDIA A100-SXM4-80GB", Precision::Bf16),
            Some(312.0)
        );
        assert_eq!(datasheet_peak("Tesla V100", Precision::Fp32), None);
    }

    #[test]
    fn train_and_eval_throughput_count_every_image() {
        let data = random_images(40, 8, 3, Device::Cpu);
        let t = train_throughput(&data, Arch::SmallCnn, Execution::default(), 16, 2).unwrap();
        assert_eq!(t.images, 80.0);
        assert!(t.seconds > 0.0 && t.per_second().is_finite());
        let e = eval_throughput(&data, Arch::SmallCnn, Execution::default(), 16, 3).unwrap();
        assert_eq!(e.images, 120.0);
    }

    #[test]
    fn matmul_rate_is_positive() {
        // (That it restores TF32 is the Tf32Switch test's, in core/api/tests/exec.rs: pipelines
        // running beside this test set the switches too.)
        for p in Precision::ALL {
            let t = matmul_tflops(Device::Cpu, p, 64).unwrap();
            assert!(t > 0.0 && t.is_finite(), "{p}: {t}");
        }
    }
}
