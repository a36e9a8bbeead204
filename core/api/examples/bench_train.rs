//! Training throughput of core's loop: images/s of SGD on random CIFAR-sized data (u8 on the
//! device, crop + flip augmentation on the device), for `scripts/bench-train.sh`, which runs the
//! same loop written in PyTorch eager beside it.
//!
//!   bench_train [--arch resnet20] [--batch 256] [--samples 2560] [--epochs 3] [--device cpu]
//!               [--threads N] [--size 32] [--classes 10]
//!
//! Prints one JSON line: {"arch", "batch", "images_per_s", "seconds", "images", ...}. The first
//! epoch is a warm-up and is not timed.

use std::time::Instant;

use unlearn_api::data::{Augment, Dataset};
use unlearn_api::device::{device_name, synchronize, DeviceChoice};
use unlearn_api::model::{Arch, Model, ModelSpec};
use unlearn_api::train::{CrossEntropy, Run, Schedule, Stream, Trainer};

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
    let arch_name: String = arg(&args, "--arch", "resnet20".to_string());
    let arch: Arch = serde_json::from_value(serde_json::Value::String(arch_name.clone()))
        .unwrap_or_else(|_| panic!("unknown arch {arch_name}"));
    let batch: usize = arg(&args, "--batch", 256);
    let samples: usize = arg(&args, "--samples", 2560);
    let epochs: usize = arg(&args, "--epochs", 3);
    let size: i64 = arg(&args, "--size", 32);
    let classes: usize = arg(&args, "--classes", 10);
    let threads: i32 = arg(&args, "--threads", 0);
    let device = arg(&args, "--device", DeviceChoice::Auto)
        .resolve()
        .expect("device");
    if threads > 0 {
        unlearn_api::tch::set_num_threads(threads);
    }

    // Random pixels and labels, the shape of CIFAR.
    let pixels: Vec<u8> = {
        let mut r = unlearn_api::rng::rng(0, "bench pixels");
        use rand::RngExt;
        (0..samples * 3 * (size * size) as usize)
            .map(|_| r.random::<u8>())
            .collect()
    };
    let labels: Vec<i64> = (0..samples).map(|i| (i % classes) as i64).collect();
    let mut data = Dataset::from_pixels("bench", &pixels, [3, size, size], &labels, classes, 255.0)
        .to_device(device);
    data.augment = Augment::CROP_FLIP;
    let spec = ModelSpec {
        arch,
        input: [3, size, size],
        classes,
        mean: data.mean.clone(),
        std: data.std.clone(),
    };
    let mut model = Model::new(spec, device, 0).expect("model");
    let rows: Vec<usize> = (0..samples).collect();
    let stream = Stream::new(&data, &rows);
    let trainer = Trainer::new(device, false);
    let schedule = |epochs| Schedule {
        epochs,
        lr: 0.1,
        batch_size: batch,
        milestones: vec![],
        ..Default::default()
    };

    let warm = schedule(1);
    trainer
        .run(
            &mut model,
            Run::new("warm-up".into(), &warm, &stream, None, 0),
            &mut CrossEntropy,
        )
        .expect("warm-up");
    synchronize(device);
    let timed = schedule(epochs);
    let t0 = Instant::now();
    trainer
        .run(
            &mut model,
            Run::new("timed".into(), &timed, &stream, None, 1),
            &mut CrossEntropy,
        )
        .expect("training");
    synchronize(device);
    let seconds = t0.elapsed().as_secs_f64();
    let images = (samples * epochs) as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "unlearn", "arch": arch_name, "batch": batch, "device": device_name(device),
            "threads": unlearn_api::tch::get_num_threads(), "images": images, "seconds": seconds,
            "images_per_s": images / seconds, "parameters": model.num_parameters(),
        })
    );
}
