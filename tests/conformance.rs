//! The conformance suite: every registered method (found through the registry, so new ones are
//! picked up without editing this file) must satisfy these properties.

use serde_json::{json, Value};
use unlearn_core::data::{stratified_split, synthetic, SplitConfig, SyntheticConfig};
use unlearn_core::forget::{ForgetKind, ForgetSet, ForgetSpec};
use unlearn_core::mask::{magnitude_scores, Mask};
use unlearn_core::method::{Kind, PruneCtx, TaskData, UnlearnCtx};
use unlearn_core::model::{Arch, Model, ModelSpec};
use unlearn_core::registry::{Method, Registry};
use unlearn_core::tch::Device;
use unlearn_core::train::{CrossEntropy, Run, Schedule, Stream, Trainer};

// Link the built-in plugins (their registrations vanish otherwise).
use unlearn_ft as _;
use unlearn_prune_imp as _;

fn registry() -> Registry {
    Registry::builtin().expect("no duplicate names")
}

struct Task {
    data: TaskData,
    spec: ModelSpec,
    forget: ForgetSet,
}

fn task() -> Task {
    let d = synthetic(&SyntheticConfig {
        samples: 120,
        classes: 4,
        noise: 6.0,
        seed: 3,
    })
    .unwrap();
    let split = stratified_split(&d.labels_vec(), 4, &SplitConfig::default()).unwrap();
    let data = TaskData {
        train: d.subset(&split.train),
        val: d.subset(&split.val),
        test: d.subset(&split.test),
    };
    let train_labels = data.train.labels_vec();
    let spec_f = ForgetSpec {
        name: None,
        kind: ForgetKind::Class,
        class: Some(1),
        n: None,
        fraction: None,
        seed: 0,
        path: None,
    };
    let forget = spec_f
        .resolve(&train_labels, 4, std::path::Path::new("."))
        .unwrap();
    let spec = ModelSpec {
        arch: Arch::SmallCnn,
        input: [1, 8, 8],
        classes: 4,
        mean: d.mean.clone(),
        std: d.std.clone(),
    };
    Task { data, spec, forget }
}

fn quick_schedule() -> Schedule {
    Schedule {
        epochs: 10,
        lr: 0.05,
        batch_size: 16,
        milestones: vec![],
        ..Default::default()
    }
}

/// A trained model with a 50% magnitude mask.
fn trained_sparse(t: &Task) -> (Model, Mask) {
    let mut m = Model::new(t.spec.clone(), Device::Cpu, 0).unwrap();
    let all: Vec<usize> = (0..t.data.train.len()).collect();
    let stream = Stream::new(&t.data.train, &all);
    let s = quick_schedule();
    Trainer::new(Device::Cpu, false)
        .run(
            &mut m,
            Run {
                label: "setup".into(),
                schedule: &s,
                schedule_offset: 0,
                stream: &stream,
                mask: None,
                rewind_epoch: None,
                seed: 0,
            },
            &mut CrossEntropy,
        )
        .unwrap();
    let mask = Mask::from_scores(&magnitude_scores(&m), None, 0.5).unwrap();
    mask.apply(&m);
    (m, mask)
}

fn validates(schema: &Value, instance: &Value) -> Vec<String> {
    let v = unlearn_core::config::schema_validator(schema);
    v.iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_default_config_validates_against_its_schema_and_builds() {
    let r = registry();
    assert!(r.len() >= 3);
    for m in r.list(None) {
        assert!(!m.summary.is_empty(), "{} has a summary", m.name);
        let errs = validates(&m.schema, &m.default_config);
        assert!(
            errs.is_empty(),
            "{}: default config fails its schema: {errs:?}",
            m.name
        );
        // The schema's per-field defaults are the config's defaults.
        for (field, value) in m.default_config.as_object().unwrap() {
            assert_eq!(
                &m.schema["properties"][field]["default"], value,
                "{}.{field}",
                m.name
            );
        }
        // An unknown field is rejected by the schema.
        assert!(
            !validates(&m.schema, &json!({"no_such_field": 1})).is_empty(),
            "{}",
            m.name
        );
        let built = match m.kind {
            Kind::Unlearner => m.build_unlearner(&json!({})).map(|_| ()),
            Kind::Pruner => m.build_pruner(&json!({})).map(|_| ()),
            Kind::Attack => Ok(()),
        };
        assert!(
            built.is_ok(),
            "{}: empty config builds with defaults",
            m.name
        );
    }
}

/// Runs an unlearner with its defaults on the tiny sparse model; returns the weights.
fn unlearn_once(m: &Method, t: &Task, model: &Model, mask: &Mask, seed: u64) -> Model {
    let u = m
        .build_unlearner(&json!({}))
        .unwrap_or_else(|_| panic!("{} builds", m.name));
    let mut copy = model.try_clone().unwrap();
    let trainer = Trainer::new(Device::Cpu, false);
    let mut ctx = UnlearnCtx {
        model: &mut copy,
        mask: Some(mask),
        data: &t.data,
        forget: &t.forget,
        trainer: &trainer,
        seed,
        label: m.name.clone(),
    };
    u.unlearn(&mut ctx)
        .unwrap_or_else(|e| panic!("{} fails: {e}", m.name));
    copy
}

#[test]
fn every_unlearner_is_finite_keeps_the_mask_and_is_deterministic() {
    let t = task();
    let (model, mask) = trained_sparse(&t);
    for m in registry().list(Some(Kind::Unlearner)) {
        let a = unlearn_once(m, &t, &model, &mask, 1);
        assert!(a.all_finite(), "{}: non-finite weights", m.name);
        assert_eq!(
            mask.violations(&a),
            0,
            "{}: a pruned weight is non-zero",
            m.name
        );
        let b = unlearn_once(m, &t, &model, &mask, 1);
        for (name, w) in a.parameters() {
            assert!(
                w.equal(&b.parameters()[&name]),
                "{}: {name} differs between two runs with the same seed",
                m.name
            );
        }
    }
}

#[test]
fn every_pruner_returns_a_mask_it_applied() {
    let t = task();
    for m in registry().list(Some(Kind::Pruner)) {
        let p = m
            .build_pruner(&json!({}))
            .unwrap_or_else(|_| panic!("{} builds", m.name));
        let mut model = Model::new(t.spec.clone(), Device::Cpu, 0).unwrap();
        let all: Vec<usize> = (0..t.data.train.len()).collect();
        let stream = Stream::new(&t.data.train, &all);
        let s = quick_schedule();
        let trainer = Trainer::new(Device::Cpu, false);
        let report = trainer
            .run(
                &mut model,
                Run {
                    label: "dense".into(),
                    schedule: &s,
                    schedule_offset: 0,
                    stream: &stream,
                    mask: None,
                    rewind_epoch: p.rewind_epoch(),
                    seed: 0,
                },
                &mut CrossEntropy,
            )
            .unwrap();
        let mut ctx = PruneCtx {
            model: &mut model,
            rewind: report.rewind.as_ref(),
            data: &t.data,
            schedule: &s,
            trainer: &trainer,
            seed: 0,
            label: m.name.clone(),
        };
        let mask = p
            .prune(&mut ctx)
            .unwrap_or_else(|e| panic!("{} fails: {e}", m.name));
        let default_sparsity = m.default_config["sparsity"].as_f64().unwrap();
        assert_eq!(
            mask.zeros(),
            (default_sparsity * mask.total() as f64).round() as i64,
            "{}",
            m.name
        );
        assert_eq!(mask.violations(&model), 0, "{}", m.name);
        assert!(model.all_finite(), "{}", m.name);
    }
}
