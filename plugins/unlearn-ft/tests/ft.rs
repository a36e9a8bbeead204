//! The retain-set unlearners against independent computations on [`TinyTask`]:
//! - `retrain` and `FT` against core's loop called directly (a fresh `Model::new` with the
//!   context's seed, or a copy of the original, trained with cross-entropy on `D_r` under a
//!   schedule written out here field by field): bit-identical parameters and buffers;
//! - `l1-sparse` and `FT_l1` against core's loop with this file's own objective, CE + a_t * the
//!   sum of |w| over every trainable variable, with a_t written out from the reference formula
//!   (not taken from the crate): bit-identical; and, on one batch, the method's objective's loss
//!   against that sum computed in f64;
//! - `raw` leaves every variable as it was;
//! - invalid configs are rejected with the offending field named.
//!
//! Each comparison is paired with one that must come out different (the wrong data, the wrong
//! L1 schedule), so a match cannot come from the comparison being blind.

use serde_json::{Value, json};
use unlearn_api::mask::Mask;
use unlearn_api::method::UnlearnMethod;
use unlearn_api::model::Model;
use unlearn_api::optim::OptimizerKind;
use unlearn_api::registry::Registry;
use unlearn_api::tch::{Device, Kind, Tensor};
use unlearn_api::testing::TinyTask;
use unlearn_api::train::{
    Batch, CrossEntropy, Objective, Run, Schedule, Stream, Trainer, cross_entropy,
};
use unlearn_ft::{
    Ft, FtConfig, FtL1, FtL1Config, L1Sparse, L1SparseConfig, Raw, RawConfig, Retrain,
    RetrainConfig,
};

const SEED: u64 = 7;
const EPOCHS: usize = 4;
const LR: f64 = 0.05;
const BATCH: usize = 16;

/// The SGD schedule an sgd_config with these settings must run: the paper's momentum 0.9,
/// weight decay 5e-4, gamma 0.1, no warm-up, plain (not Nesterov) SGD.
fn schedule(epochs: usize, lr: f64, batch_size: usize, milestones: Vec<usize>) -> Schedule {
    Schedule {
        epochs,
        lr,
        momentum: 0.9,
        weight_decay: 5e-4,
        batch_size,
        milestones,
        gamma: 0.1,
        warmup_epochs: 0,
        optimizer: OptimizerKind::Sgd,
        nesterov: false,
        betas: vec![0.9, 0.999],
        eps: 1e-8,
    }
}

/// Core's loop run directly on `model`: `objective` over `rows` of train.
fn reference_run(
    t: &TinyTask,
    model: &mut Model,
    rows: &[usize],
    s: &Schedule,
    mask: Option<&Mask>,
    objective: &mut dyn Objective,
) {
    let stream = Stream::new(&t.data.train, rows);
    Trainer::new(Device::Cpu, false)
        .run(
            model,
            Run::new("reference".into(), s, &stream, mask, SEED),
            objective,
        )
        .expect("the reference run trains");
}

/// Names of the variables (parameters and buffers) whose values differ; empty when the two
/// models are bit-identical.
fn differing(a: &Model, b: &Model) -> Vec<String> {
    let (a, b) = (a.snapshot().0, b.snapshot().0);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same variables"
    );
    a.iter()
        .filter(|(k, v)| !(v.size() == b[*k].size() && v.equal(&b[*k])))
        .map(|(k, _)| k.clone())
        .collect()
}

fn assert_identical(got: &Model, want: &Model, what: &str) {
    let d = differing(got, want);
    assert!(d.is_empty(), "{what}: these variables differ: {d:?}");
}

/// Largest |difference| over all parameters.
fn max_param_diff(a: &Model, b: &Model) -> f64 {
    let (pa, pb) = (a.parameters(), b.parameters());
    pa.iter()
        .map(|(k, v)| (v - &pb[k]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

fn all_rows(t: &TinyTask) -> Vec<usize> {
    (0..t.data.train.len()).collect()
}

#[test]
fn retrain_is_cores_loop_on_d_r_from_the_seeds_initialisation_with_the_mask() {
    let t = TinyTask::new();
    let (original, mask) = t.trained_sparse();
    assert!(mask.zeros() > 0);
    let config = RetrainConfig {
        epochs: EPOCHS,
        lr: LR,
        batch_size: BATCH,
        milestones: vec![2],
        ..Default::default()
    };
    let got = t
        .unlearn(&Retrain::new(config), &original, Some(&mask), SEED)
        .unwrap();

    // Reference: the architecture initialised with the context's seed, masked, trained with
    // cross-entropy on D_r (lr x0.1 from epoch 2).
    let mut want = Model::new(t.spec.clone(), Device::Cpu, SEED).unwrap();
    mask.apply(&want);
    let s = schedule(EPOCHS, LR, BATCH, vec![2]);
    reference_run(
        &t,
        &mut want,
        &t.forget.retain,
        &s,
        Some(&mask),
        &mut CrossEntropy,
    );
    assert_identical(&got, &want, "retrain vs fresh init + core's loop on D_r");
    assert_eq!(mask.violations(&got), 0, "a pruned weight is non-zero");

    // What it started from does not matter: from a dense, differently initialised model the
    // result is the same.
    let other = Model::new(t.spec.clone(), Device::Cpu, SEED + 1).unwrap();
    let again = t
        .unlearn(&Retrain::new(config_of(&s)), &other, Some(&mask), SEED)
        .unwrap();
    assert_identical(&again, &want, "retrain from another starting model");

    // The comparison sees the data: the same run on all of train (D_f included) differs, and so
    // does the fine-tuned original (the initialisation matters).
    let mut on_train = Model::new(t.spec.clone(), Device::Cpu, SEED).unwrap();
    mask.apply(&on_train);
    reference_run(
        &t,
        &mut on_train,
        &all_rows(&t),
        &s,
        Some(&mask),
        &mut CrossEntropy,
    );
    assert!(max_param_diff(&on_train, &got) > 1e-3);
    let mut tuned = original.try_clone().unwrap();
    reference_run(
        &t,
        &mut tuned,
        &t.forget.retain,
        &s,
        Some(&mask),
        &mut CrossEntropy,
    );
    assert!(max_param_diff(&tuned, &got) > 1e-3);
}

fn config_of(s: &Schedule) -> RetrainConfig {
    RetrainConfig {
        epochs: s.epochs,
        lr: s.lr,
        batch_size: s.batch_size,
        milestones: s.milestones.clone(),
        ..Default::default()
    }
}

#[test]
fn ft_is_cores_loop_with_cross_entropy_on_d_r_from_the_original() {
    let t = TinyTask::new();
    let (original, mask) = t.trained_sparse();
    let config = FtConfig {
        epochs: EPOCHS,
        lr: LR,
        batch_size: BATCH,
        ..Default::default()
    };
    let got = t
        .unlearn(&Ft::new(config), &original, Some(&mask), SEED)
        .unwrap();

    let s = schedule(EPOCHS, LR, BATCH, vec![]);
    let mut want = original.try_clone().unwrap();
    reference_run(
        &t,
        &mut want,
        &t.forget.retain,
        &s,
        Some(&mask),
        &mut CrossEntropy,
    );
    assert_identical(&got, &want, "FT vs core's loop on D_r from the original");
    assert_eq!(mask.violations(&got), 0, "a pruned weight is non-zero");

    // Not blind: FT moved the weights, and fine-tuning on all of train gives others.
    assert!(max_param_diff(&original, &got) > 1e-3);
    let mut on_train = original.try_clone().unwrap();
    reference_run(
        &t,
        &mut on_train,
        &all_rows(&t),
        &s,
        Some(&mask),
        &mut CrossEntropy,
    );
    assert!(max_param_diff(&on_train, &got) > 1e-3);

    // Dense: no mask, the same comparison.
    let dense = t.trained();
    let got = t
        .unlearn(&Ft::new(config_of_ft(&s)), &dense, None, SEED)
        .unwrap();
    let mut want = dense.try_clone().unwrap();
    reference_run(&t, &mut want, &t.forget.retain, &s, None, &mut CrossEntropy);
    assert_identical(&got, &want, "dense FT vs core's loop");
}

fn config_of_ft(s: &Schedule) -> FtConfig {
    FtConfig {
        epochs: s.epochs,
        lr: s.lr,
        batch_size: s.batch_size,
        milestones: s.milestones.clone(),
        ..Default::default()
    }
}

/// CE + a_t * sum over every trainable variable of sum |w|, a_t = `weights[epoch]`: this file's
/// own L1 objective. CE is core's `cross_entropy` (not under test here).
struct RefCeL1 {
    weights: Vec<f64>,
    a_t: f64,
}

impl RefCeL1 {
    fn new(weights: Vec<f64>) -> RefCeL1 {
        RefCeL1 {
            weights,
            a_t: f64::NAN,
        }
    }
}

impl Objective for RefCeL1 {
    fn start_epoch(&mut self, epoch: usize, epochs: usize) {
        assert_eq!(epochs, self.weights.len());
        self.a_t = self.weights[epoch];
    }

    fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, unlearn_api::tch::TchError> {
        let logits = model.forward_t(&batch.x, true);
        let ce = cross_entropy(&logits, &batch.y)?;
        let l1 = model
            .var_store()
            .trainable_variables()
            .iter()
            .map(|w| w.abs().sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        Ok(ce + l1 * self.a_t)
    }
}

/// The reference's a_t for 0-based epoch t of E with E0 L1-free final epochs:
/// a * (1 - t / (E - E0)) while t < E - E0, then 0; a throughout when E = E0.
fn decaying(a: f64, epochs: usize, no_l1: usize) -> Vec<f64> {
    let n = epochs - no_l1;
    (0..epochs)
        .map(|t| {
            if n == 0 {
                a
            } else if t < n {
                a * (1.0 - t as f64 / n as f64)
            } else {
                0.0
            }
        })
        .collect()
}

fn l1_config(alpha: f64, no_l1_epochs: usize) -> L1SparseConfig {
    L1SparseConfig {
        epochs: EPOCHS,
        lr: LR,
        batch_size: BATCH,
        alpha,
        no_l1_epochs,
        ..Default::default()
    }
}

#[test]
fn l1_sparse_and_ft_l1_are_cores_loop_with_ce_plus_the_decaying_l1_term() {
    let t = TinyTask::new();
    let (original, mask) = t.trained_sparse();
    let (alpha, no_l1) = (0.02, 1);
    // E = 4, E0 = 1: a_t = a, 2a/3, a/3, 0.
    let a_t = decaying(alpha, EPOCHS, no_l1);
    assert_eq!(a_t[0], alpha);
    assert_eq!(a_t[3], 0.0);
    assert!((a_t[1] - alpha * 2.0 / 3.0).abs() < 1e-15);

    let s = schedule(EPOCHS, LR, BATCH, vec![]);
    let reference = |weights: Vec<f64>| {
        let mut m = original.try_clone().unwrap();
        reference_run(
            &t,
            &mut m,
            &t.forget.retain,
            &s,
            Some(&mask),
            &mut RefCeL1::new(weights),
        );
        m
    };
    let want = reference(a_t.clone());

    let l1_sparse = t
        .unlearn(
            &L1Sparse::new(l1_config(alpha, no_l1)),
            &original,
            Some(&mask),
            SEED,
        )
        .unwrap();
    assert_identical(&l1_sparse, &want, "l1-sparse vs CE + decaying a_t * |w|_1");
    assert_eq!(mask.violations(&l1_sparse), 0);
    let ft_l1: FtL1Config = l1_config(alpha, no_l1);
    let ft_l1 = t
        .unlearn(&FtL1::new(ft_l1), &original, Some(&mask), SEED)
        .unwrap();
    assert_identical(&ft_l1, &want, "FT_l1 vs CE + decaying a_t * |w|_1");

    // Not blind to the schedule: the constant weight (FT_l1 before this release), a decay
    // without the L1-free epoch, and no L1 at all each give other weights.
    for (what, weights) in [
        ("constant a", vec![alpha; EPOCHS]),
        ("decay with E0 = 0", decaying(alpha, EPOCHS, 0)),
        ("no L1", vec![0.0; EPOCHS]),
    ] {
        let other = reference(weights);
        let d = max_param_diff(&other, &l1_sparse);
        assert!(d > 1e-4, "{what}: max |difference| only {d:e}");
    }

    // E = E0: the constant a in every epoch.
    let all_l1 = L1SparseConfig {
        no_l1_epochs: EPOCHS,
        ..l1_config(alpha, 0)
    };
    let got = t
        .unlearn(&L1Sparse::new(all_l1), &original, Some(&mask), SEED)
        .unwrap();
    assert_identical(&got, &reference(vec![alpha; EPOCHS]), "E = E0: constant a");
}

#[test]
fn the_l1_objective_on_one_batch_is_ce_plus_a_t_times_the_l1_norm_in_f64() {
    let t = TinyTask::new();
    let model = t.trained();
    let rows = Tensor::from_slice(
        &t.forget.retain[..BATCH]
            .iter()
            .map(|&r| r as i64)
            .collect::<Vec<_>>(),
    );
    let x = t
        .data
        .train
        .images
        .index_select(0, &rows)
        .to_kind(Kind::Float)
        / t.data.train.max_value;
    let y = t.data.train.labels.index_select(0, &rows);
    let (alpha, no_l1) = (0.3, 2);
    let epochs = 6;
    let want_a = decaying(alpha, epochs, no_l1);
    // ||w||_1 in f64 over every trainable variable (BatchNorm and biases included).
    let l1: f64 = model
        .var_store()
        .trainable_variables()
        .iter()
        .map(|w| w.abs().sum(Kind::Double).double_value(&[]))
        .sum();
    assert!(l1 > 1.0);
    let ce = cross_entropy(&model.forward_t(&x, true), &y)
        .unwrap()
        .double_value(&[]);
    let config = L1SparseConfig {
        epochs,
        alpha,
        no_l1_epochs: no_l1,
        ..Default::default()
    };
    let mut objective = config.objective();
    for (epoch, a) in want_a.iter().enumerate() {
        objective.start_epoch(epoch, epochs);
        let batch = Batch::new(x.shallow_clone(), y.shallow_clone(), epoch, epochs);
        let got = objective.loss(&model, &batch).unwrap().double_value(&[]);
        let want = ce + a * l1;
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "epoch {epoch}: loss {got}, CE {ce} + {a} * {l1} = {want}"
        );
    }
    // The term is not negligible here: epoch 0's loss exceeds the CE by a * ||w||_1.
    assert!(alpha * l1 > 1.0);
}

#[test]
fn raw_leaves_every_variable_unchanged() {
    let t = TinyTask::new();
    let (original, mask) = t.trained_sparse();
    let got = t
        .unlearn(&Raw::new(RawConfig {}), &original, Some(&mask), SEED)
        .unwrap();
    assert_identical(&got, &original, "raw, sparse");
    let dense = t.trained();
    let got = t
        .unlearn(&Raw::new(RawConfig {}), &dense, None, SEED)
        .unwrap();
    assert_identical(&got, &dense, "raw, dense");
}

/// The issues building `name` from `config` reports, as `(path, message)`.
fn issues(r: &Registry, name: &str, config: Value) -> Vec<(String, String)> {
    match r.get(name).unwrap().build_unlearner(&config) {
        Ok(_) => vec![],
        Err(list) => list.into_iter().map(|i| (i.path, i.message)).collect(),
    }
}

#[test]
fn invalid_configs_are_rejected_naming_the_field() {
    let r = Registry::builtin().unwrap();
    for name in ["retrain", "FT", "l1-sparse", "FT_l1"] {
        // Valid: builds.
        assert_eq!(
            issues(&r, name, json!({"epochs": 2, "milestones": [1]})),
            vec![]
        );
        // Rules of the method (what the schema cannot say).
        let got = issues(&r, name, json!({"milestones": [5, 2]}));
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        assert_eq!(got[0].0, "/milestones", "{name}");
        assert!(got[0].1.contains("strictly increasing"), "{name}: {got:?}");
        // Unknown and mistyped fields: serde names the field.
        let got = issues(&r, name, json!({"epoch": 3}));
        assert!(
            got.len() == 1 && got[0].1.contains("`epoch`"),
            "{name}: {got:?}"
        );
        let got = issues(&r, name, json!({"lr": "fast"}));
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        // Ranges live in the schema and hold however the method is built (the pipeline's
        // validation and the method's own parse both apply them): epochs >= 1, lr > 0,
        // batch_size >= 1, and for the L1 methods alpha >= 0; every one bounded above.
        let got = issues(
            &r,
            name,
            json!({"epochs": 0, "lr": 0.0, "batch_size": 2_000_000, "milestones": [0]}),
        );
        let mut paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        paths.sort();
        assert_eq!(
            paths,
            ["/batch_size", "/epochs", "/lr", "/milestones/0"],
            "{name}: {got:?}"
        );
        let lr = got.iter().find(|(p, _)| p == "/lr").unwrap();
        assert!(lr.1.contains("greater than 0"), "{name}: {got:?}");
        let got = issues(&r, name, json!({"lr": 1e39}));
        assert!(
            got.len() == 1 && got[0].1.contains("maximum of 1000"),
            "{name}: {got:?}"
        );
        if name.contains("l1") {
            let got = issues(&r, name, json!({"alpha": -1.0}));
            assert_eq!(got.len(), 1, "{name}: {got:?}");
            assert_eq!(got[0].0, "/alpha", "{name}");
        }
        // Settings the schedule would never reach.
        let got = issues(&r, name, json!({"epochs": 3, "milestones": [3]}));
        assert!(
            got.len() == 1 && got[0].0 == "/milestones" && got[0].1.contains("never reached"),
            "{name}: {got:?}"
        );
    }
    for name in ["l1-sparse", "FT_l1"] {
        let got = issues(&r, name, json!({"epochs": 3, "no_l1_epochs": 4}));
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        assert_eq!(got[0].0, "/no_l1_epochs", "{name}");
        assert!(
            got[0].1.contains("must not exceed epochs (3)"),
            "{name}: {got:?}"
        );
        assert_eq!(
            issues(&r, name, json!({"epochs": 3, "no_l1_epochs": 3})),
            vec![]
        );
    }
    // raw takes no settings at all.
    assert_eq!(issues(&r, "raw", json!({})), vec![]);
    let got = issues(&r, "raw", json!({"epochs": 1}));
    assert!(got.len() == 1 && got[0].1.contains("`epochs`"), "{got:?}");
}
