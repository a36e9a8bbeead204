//! The conformance suite: every registered method (found through the registry, so new ones are
//! picked up without editing this file) must satisfy these properties.

use serde_json::{json, Value};
use unlearn_core::mask::Mask;
use unlearn_core::method::{Kind, PruneCtx};
use unlearn_core::model::Model;
use unlearn_core::registry::{Method, Registry};
use unlearn_core::tch::Device;
use unlearn_core::testing::TinyTask;
use unlearn_core::train::{CrossEntropy, Run, Stream, Trainer};

// Link the built-in plugins (their registrations vanish otherwise).
use unlearn_fisher as _;
use unlearn_ft as _;
use unlearn_ga as _;
use unlearn_prune_imp as _;
use unlearn_prune_synflow as _;

fn registry() -> Registry {
    Registry::builtin().expect("no duplicate names")
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
fn unlearn_once(m: &Method, t: &TinyTask, model: &Model, mask: &Mask, seed: u64) -> Model {
    let u = m
        .build_unlearner(&json!({}))
        .unwrap_or_else(|_| panic!("{} builds", m.name));
    t.unlearn(u.as_ref(), model, Some(mask), seed)
        .unwrap_or_else(|e| panic!("{} fails: {e}", m.name))
}
#[test]
fn every_unlearner_is_finite_keeps_the_mask_and_is_deterministic() {
    let t = TinyTask::new();
    let (model, mask) = t.trained_sparse();
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
    let t = TinyTask::new();
    for m in registry().list(Some(Kind::Pruner)) {
        let p = m
            .build_pruner(&json!({}))
            .unwrap_or_else(|_| panic!("{} builds", m.name));
        let mut model = Model::new(t.spec.clone(), Device::Cpu, 0).unwrap();
        let all: Vec<usize> = (0..t.data.train.len()).collect();
        let stream = Stream::new(&t.data.train, &all);
        let s = TinyTask::schedule();
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
        assert_eq!(
            mask.zeros(),
            (p.sparsity() * mask.total() as f64).round() as i64,
            "{}",
            m.name
        );
        assert_eq!(mask.violations(&model), 0, "{}", m.name);
        assert!(model.all_finite(), "{}", m.name);
    }
}
