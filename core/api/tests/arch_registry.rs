//! An architecture registered from outside core (here, this test crate) is a first-class one: it
//! builds, trains through core's loop, round-trips a checkpoint, appears in the config schema,
//! and an unknown name lists it among the known ones.

use unlearn_api::checkpoint::{self, Provenance};
use unlearn_api::data::{SyntheticConfig, synthetic};
use unlearn_api::mask::{Mask, Prunable, magnitude_scores_of};
use unlearn_api::model::{Arch, ArchDef, Model, ModelError, ModelSpec};
use unlearn_api::tch::nn::{self, ModuleT};
use unlearn_api::tch::{Device, Tensor};
use unlearn_api::train::{CrossEntropy, Run, Schedule, Stream, Trainer};

/// A two-layer perceptron on flattened images: `hidden` (64 units), ReLU, `out`.
#[derive(Debug)]
struct Mlp {
    hidden: nn::Linear,
    out: nn::Linear,
}

impl ModuleT for Mlp {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        x.flatten(1, -1).apply(&self.hidden).relu().apply(&self.out)
    }
}

fn build_mlp(root: &nn::Path, spec: &ModelSpec) -> Box<dyn ModuleT> {
    let [c, h, w] = spec.input;
    Box::new(Mlp {
        hidden: nn::linear(root / "hidden", c * h * w, 64, Default::default()),
        out: nn::linear(root / "out", 64, spec.classes as i64, Default::default()),
    })
}

/// Only 8x8 images (the first layer's width depends on the size).
fn eight_by_eight(input: [i64; 3]) -> Result<(), String> {
    if input[1..] == [8, 8] {
        Ok(())
    } else {
        Err("8x8 images".into())
    }
}

unlearn_api::register_arch!(
    ArchDef::new(
        "test-mlp",
        "a two-layer perceptron for 8x8 images (a test fixture)",
        build_mlp
    )
    .accepts(eight_by_eight)
    .classifier("out")
);

const TEST_MLP: Arch = Arch::named("test-mlp");

fn spec(arch: Arch, side: i64) -> ModelSpec {
    ModelSpec {
        arch,
        input: [1, side, side],
        classes: 4,
        mean: vec![0.3],
        std: vec![0.4],
    }
}

#[test]
fn a_registered_arch_builds_trains_and_round_trips() {
    unlearn_api::tch::set_num_threads(1);
    let arch: Arch = "test-mlp".parse().unwrap();
    assert_eq!(arch, TEST_MLP);
    let def = arch.def().unwrap();
    assert_eq!(def.krate, "unlearn-api");
    assert!(Arch::known().contains(&"test-mlp"));

    let mut model = Model::new(spec(arch, 8), Device::Cpu, 3).unwrap();
    let names: Vec<String> = model.parameters().into_keys().collect();
    assert_eq!(
        names,
        ["hidden.bias", "hidden.weight", "out.bias", "out.weight"]
    );
    assert_eq!(model.classifier(), "out");
    assert!(model.var_store().variables().contains_key("normalize.mean"));
    // PyTorch's default init: U(+-1/sqrt(fan_in)), seeded.
    let w = &model.parameters()["hidden.weight"];
    assert!(w.abs().max().double_value(&[]) <= 1.0 / 8.0);
    let again = Model::new(spec(arch, 8), Device::Cpu, 3).unwrap();
    assert!(again.parameters()["hidden.weight"].equal(w));

    // Linear-only pruning and a step of core's loop under the mask.
    let mask =
        Mask::from_scores(&magnitude_scores_of(&model, Prunable::Linear), None, 0.5).unwrap();
    assert_eq!(
        mask.names().collect::<Vec<_>>(),
        ["hidden.weight", "out.weight"]
    );
    mask.apply(&model);
    let d = synthetic(&SyntheticConfig {
        samples: 32,
        classes: 4,
        ..Default::default()
    })
    .unwrap();
    let rows: Vec<usize> = (0..d.len()).collect();
    let stream = Stream::new(&d, &rows);
    let schedule = Schedule {
        epochs: 1,
        lr: 0.05,
        batch_size: 32,
        milestones: vec![],
        ..Default::default()
    };
    let before = model.parameters()["out.weight"].copy();
    Trainer::new(Device::Cpu, false)
        .run(
            &mut model,
            Run::new("test-mlp".into(), &schedule, &stream, Some(&mask), 0),
            &mut CrossEntropy,
        )
        .unwrap();
    assert!(!model.parameters()["out.weight"].equal(&before), "trained");
    assert_eq!(mask.violations(&model), 0);

    // The checkpoint names the architecture and loads back into it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.safetensors");
    let meta = checkpoint::save(&path, &model, Some(&mask), &Provenance::default()).unwrap();
    assert_eq!(meta.arch, TEST_MLP);
    let (back, back_mask, meta) = checkpoint::load(&path, Device::Cpu).unwrap();
    assert_eq!(meta.arch.name(), "test-mlp");
    assert_eq!(back.spec(), model.spec());
    for (k, t) in model.var_store().variables() {
        assert!(back.var_store().variables()[&k].equal(&t), "{k}");
    }
    let back_mask = back_mask.unwrap();
    for (k, t) in mask.tensors() {
        assert!(back_mask.get(k).unwrap().equal(t), "{k}");
    }
}

#[test]
fn an_arch_says_which_inputs_it_accepts() {
    let e = Model::new(spec(TEST_MLP, 16), Device::Cpu, 0).unwrap_err();
    assert!(matches!(e, ModelError::Input { .. }), "{e}");
    assert!(e.to_string().contains("expects 8x8 images"), "{e}");
}

#[test]
fn the_schema_and_unknown_names_list_the_registered_arch() {
    let schema = unlearn_api::method::schema_of::<Arch>();
    let names: Vec<&str> = schema["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(names.contains(&"test-mlp") && names.contains(&"resnet18"));
    let e = "mlp".parse::<Arch>().unwrap_err();
    assert!(e.starts_with("unknown architecture `mlp` (known: "), "{e}");
    assert!(e.contains("test-mlp") && e.contains("vgg16-bn"), "{e}");
    let e = Model::new(spec(Arch::named("mlp"), 8), Device::Cpu, 0).unwrap_err();
    assert!(e.to_string().contains("test-mlp"), "{e}");
}
