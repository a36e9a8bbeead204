//! Execution settings seen from inside the computation: the dtype a convolution computes in under
//! bf16 autocast, the strides it receives with channels-last, libtorch's TF32 switches, and that a
//! short training with each setting reaches the fp32 accuracy.

use std::sync::{Arc, Mutex};

use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};
use unlearn_api::data::{SplitConfig, SyntheticConfig, stratified_split, synthetic};
use unlearn_api::exec::{self, Autocast, Execution, Precision};
use unlearn_api::model::{Arch, Model, ModelSpec};
use unlearn_api::train::{CrossEntropy, Run, Schedule, Stream, Trainer};

/// What one convolution saw: its input's strides, its output's dtype and strides, and whether
/// autocast was on.
#[derive(Debug, Clone)]
struct Seen {
    input_stride: Vec<i64>,
    output_kind: Kind,
    output_stride: Vec<i64>,
    autocast: bool,
}

/// One 3x3 convolution and a mean over pixels: logits per channel.
#[derive(Debug)]
struct Probe {
    weight: Tensor,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl ModuleT for Probe {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        let y = x.conv2d(&self.weight, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        self.seen.lock().unwrap().push(Seen {
            input_stride: x.stride(),
            output_kind: y.kind(),
            output_stride: y.stride(),
            autocast: exec::autocast_state(Device::Cpu).unwrap().0,
        });
        y.mean_dim([2i64, 3].as_slice(), false, y.kind())
    }
}

fn probe_model() -> (Model, Arc<Mutex<Vec<Seen>>>, Tensor) {
    tch::manual_seed(0);
    let weight = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let spec = ModelSpec {
        arch: Arch::SmallCnn,
        input: [3, 6, 5],
        classes: 4,
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
    };
    let net = Probe {
        weight: weight.shallow_clone(),
        seen: seen.clone(),
    };
    let model = Model::from_parts(
        spec,
        vec![("conv.weight".into(), weight.shallow_clone())],
        Box::new(net),
    )
    .unwrap();
    (model, seen, weight)
}

fn images() -> Tensor {
    tch::manual_seed(1);
    Tensor::rand([2, 3, 6, 5], (Kind::Float, Device::Cpu))
}

fn last(seen: &Arc<Mutex<Vec<Seen>>>) -> Seen {
    seen.lock().unwrap().last().cloned().unwrap()
}

const NCHW: [i64; 4] = [90, 30, 5, 1];
const NHWC: [i64; 4] = [90, 1, 15, 3];

#[test]
fn fp32_computes_in_float32_and_contiguous() {
    let (model, seen, _) = probe_model();
    assert_eq!(model.execution(), Execution::default());
    let logits = model.forward_t(&images(), true);
    let s = last(&seen);
    assert_eq!(s.output_kind, Kind::Float);
    assert!(!s.autocast);
    assert_eq!(s.input_stride, NCHW);
    assert_eq!(logits.kind(), Kind::Float);
}

#[test]
fn bf16_runs_the_convolution_in_bfloat16_and_returns_float32_logits() {
    let (mut model, seen, weight) = probe_model();
    let x = images();
    let fp32 = model.forward_t(&x, true);
    model
        .set_execution(Execution {
            precision: Precision::Bf16,
            channels_last: false,
        })
        .unwrap();
    let logits = model.forward_t(&x, true);
    let s = last(&seen);
    assert!(s.autocast, "autocast is on inside the forward pass");
    assert_eq!(s.output_kind, Kind::BFloat16);
    assert_eq!(logits.kind(), Kind::Float, "logits come out as float32");
    // ... and off again outside it.
    assert!(!exec::autocast_state(Device::Cpu).unwrap().0);
    // bf16 keeps 8 bits of mantissa: close to fp32, not equal.
    let diff = (&logits - &fp32).abs().max().double_value(&[]);
    assert!(
        diff > 0.0 && diff < 0.1,
        "bf16 vs fp32 logits differ by {diff}"
    );
    // Gradients reach the float32 weights as float32.
    logits.sum(Kind::Float).backward();
    assert_eq!(weight.grad().kind(), Kind::Float);
    assert!(weight.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn bf16_sees_weights_changed_between_forward_passes() {
    // Autocast caches bf16 copies of weights; leaving the region must drop them, or the pass
    // after an optimizer step would compute with the old weights.
    let (mut model, _, weight) = probe_model();
    model
        .set_execution(Execution {
            precision: Precision::Bf16,
            channels_last: false,
        })
        .unwrap();
    let x = images();
    let before = model.forward_t(&x, true);
    tch::no_grad(|| {
        let mut w = weight.shallow_clone();
        let _ = w.f_mul_scalar_(2.0).unwrap();
    });
    let after = model.forward_t(&x, true);
    let ratio = (&after / &before).mean(Kind::Float).double_value(&[]);
    assert!((ratio - 2.0).abs() < 0.05, "doubled weights gave {ratio}x");
}

#[test]
fn nested_autocast_regions_restore_the_outer_state() {
    let outer = Autocast::enter(Device::Cpu, Kind::BFloat16).unwrap();
    {
        let _inner = Autocast::enter(Device::Cpu, Kind::BFloat16).unwrap();
    }
    assert_eq!(
        exec::autocast_state(Device::Cpu).unwrap(),
        (true, Some(Kind::BFloat16))
    );
    drop(outer);
    assert!(!exec::autocast_state(Device::Cpu).unwrap().0);
}

#[test]
fn channels_last_reaches_the_convolution_and_keeps_values() {
    let (mut model, seen, weight) = probe_model();
    let x = images();
    let reference = model.forward_t(&x, true);
    let w_before = weight.copy();
    model
        .set_execution(Execution {
            precision: Precision::Fp32,
            channels_last: true,
        })
        .unwrap();
    // The parameter itself (the var store's and every other handle to it) moved.
    assert!(exec::is_channels_last(&weight), "{:?}", weight.stride());
    assert!(exec::is_channels_last(
        &model.var_store().variables()["conv.weight"]
    ));
    assert_eq!(weight, w_before, "values unchanged");
    let logits = model.forward_t(&x, true);
    let s = last(&seen);
    assert_eq!(s.input_stride, NHWC, "the convolution gets NHWC images");
    assert_eq!(s.output_stride, [120, 1, 20, 4], "and computes NHWC");
    assert!(logits.allclose(&reference, 1e-5, 1e-5, false));
    // And back.
    model.set_execution(Execution::default()).unwrap();
    assert!(!exec::is_channels_last(&weight));
    assert_eq!(weight.stride(), [27, 9, 3, 1]);
    assert_eq!(weight, w_before);
}

#[test]
fn tf32_sets_libtorchs_switches() {
    // Process-wide switches: only this test of the binary sets them.
    exec::set_tf32(true).unwrap();
    assert_eq!(exec::tf32().unwrap(), (true, true));
    exec::set_tf32(false).unwrap();
    assert_eq!(exec::tf32().unwrap(), (false, false));
    // PyTorch's defaults: off for products, on for convolutions. A switch restores each.
    exec::set_tf32_each(false, true).unwrap();
    assert_eq!(exec::tf32().unwrap(), (false, true));
    {
        let _on = exec::Tf32Switch::set(true).unwrap();
        assert_eq!(exec::tf32().unwrap(), (true, true));
    }
    assert_eq!(exec::tf32().unwrap(), (false, true));
}

#[test]
fn precision_parses_and_prints() {
    for p in Precision::ALL {
        assert_eq!(p.name().parse::<Precision>().unwrap(), p);
    }
    assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert!("fp16".parse::<Precision>().is_err());
    let e = Execution {
        precision: Precision::Bf16,
        channels_last: true,
    };
    assert_eq!(e.to_string(), "bf16, channels-last");
    assert_eq!(
        serde_json::to_value(e).unwrap(),
        serde_json::json!({"precision": "bf16", "channels_last": true})
    );
}

#[test]
fn every_builtin_arch_runs_in_bf16_channels_last() {
    let e = Execution {
        precision: Precision::Bf16,
        channels_last: true,
    };
    for (arch, input) in [
        (Arch::SmallCnn, [3, 8, 8]),
        (Arch::Conv6, [3, 8, 8]),
        (Arch::Resnet20, [3, 8, 8]),
        (Arch::Resnet18, [3, 8, 8]),
        (Arch::Vgg16Bn, [3, 32, 32]),
    ] {
        let mut m = Model::new(unlearn_api::testing::spec(arch, input, 5), Device::Cpu, 0).unwrap();
        let x = Tensor::rand([2, 3, input[1], input[2]], (Kind::Float, Device::Cpu));
        let fp32 = m.forward_t(&x, false);
        m.set_execution(e).unwrap();
        let y = m.forward_t(&x, false);
        assert_eq!(y.kind(), Kind::Float, "{arch:?}");
        assert_eq!(y.size(), [2, 5], "{arch:?}");
        let rel = ((&y - &fp32).abs().max() / fp32.abs().max()).double_value(&[]);
        assert!(rel < 0.1, "{arch:?}: bf16 logits off by {rel} (relative)");
        // A clone computes the same way.
        assert_eq!(m.try_clone().unwrap().execution(), e);
    }
}

/// Test accuracy after a short training of the small CNN on a synthetic 10-class task.
fn accuracy_after_training(e: Execution, seed: u64) -> f64 {
    let d = synthetic(&SyntheticConfig {
        samples: 600,
        classes: 10,
        noise: 10.0,
        seed: 5,
        ..Default::default()
    })
    .unwrap();
    let split = stratified_split(&d.labels_vec(), 10, &SplitConfig::default()).unwrap();
    let (train, test) = (d.subset(&split.train), d.subset(&split.test));
    let spec = ModelSpec {
        arch: Arch::SmallCnn,
        input: d.image_shape(),
        classes: 10,
        mean: d.mean.clone(),
        std: d.std.clone(),
    };
    let mut m = Model::new(spec, Device::Cpu, seed).unwrap();
    m.set_execution(e).unwrap();
    let all: Vec<usize> = (0..train.len()).collect();
    let stream = Stream::new(&train, &all);
    let s = Schedule {
        epochs: 8,
        lr: 0.05,
        batch_size: 32,
        milestones: vec![],
        ..Default::default()
    };
    Trainer::new(Device::Cpu, false)
        .run(
            &mut m,
            Run::new("exec".into(), &s, &stream, None, seed),
            &mut CrossEntropy,
        )
        .unwrap();
    let _g = tch::no_grad_guard();
    let idx = Tensor::arange(test.len() as i64, (Kind::Int64, Device::Cpu));
    let pred = m
        .forward_t(&test.batch_images(&idx), false)
        .argmax(1, false);
    100.0
        * pred
            .eq_tensor(&test.labels)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
}

#[test]
fn short_training_reaches_fp32_accuracy_in_every_setting() {
    let seeds = [0, 1];
    let mean = |e: Execution| {
        seeds
            .iter()
            .map(|&s| accuracy_after_training(e, s))
            .sum::<f64>()
            / seeds.len() as f64
    };
    let fp32 = mean(Execution::default());
    assert!(
        fp32 > 60.0,
        "the task is learnable: fp32 reaches {fp32:.1}%"
    );
    for e in [
        Execution {
            precision: Precision::Bf16,
            channels_last: false,
        },
        Execution {
            precision: Precision::Fp32,
            channels_last: true,
        },
        Execution {
            precision: Precision::Bf16,
            channels_last: true,
        },
    ] {
        let acc = mean(e);
        // Within noise: seeds alone move this task's accuracy by a few points.
        assert!(
            (acc - fp32).abs() <= 6.0,
            "{e}: {acc:.1}% after training, fp32 {fp32:.1}%"
        );
    }
}
