//! OMP, IMP and random on a tiny synthetic task: exact sparsity, nested IMP masks, the rewind
//! targets, and random vs magnitude masks.

use std::collections::BTreeMap;

use unlearn_api::data::{SyntheticConfig, synthetic};
use unlearn_api::mask::{Mask, Prunable, magnitude_scores};
use unlearn_api::method::{PruneCtx, PruneMethod, Pruner, RewindPoint, TaskData};
use unlearn_api::model::{Arch, Model, ModelSpec, Snapshot};
use unlearn_api::tch::{Device, Kind, Tensor};
use unlearn_api::train::{BestEpoch, CrossEntropy, Run, Schedule, Stream, Trainer};
use unlearn_prune_imp::{
    Imp, ImpConfig, Omp, OmpConfig, RandomConfig, RandomPrune, RewindTarget, random_scores,
};

/// Conv weights of the small CNN on 1-channel images: 1*32*9 + 32*64*9 + 64*128*9.
const TOTAL: i64 = 288 + 18432 + 73728;
const SEED: u64 = 5;

/// The tensors here are tiny: one libtorch thread is faster, and it keeps the tests fast on a
/// busy machine, where intra-op threads wait on each other at every op.
fn one_thread() {
    unlearn_api::tch::set_num_threads(1);
}

struct Fixture {
    data: TaskData,
    spec: ModelSpec,
}

fn fixture() -> Fixture {
    let d = synthetic(&SyntheticConfig {
        samples: 64,
        classes: 4,
        seed: 1,
        ..Default::default()
    })
    .unwrap();
    let spec = ModelSpec {
        arch: Arch::SmallCnn,
        input: [1, 8, 8],
        classes: 4,
        mean: d.mean.clone(),
        std: d.std.clone(),
    };
    let all: Vec<usize> = (0..d.len()).collect();
    let data = TaskData {
        train: d.subset(&all),
        val: d.subset(&all[..8]),
        test: d.subset(&all[..8]),
    };
    Fixture { data, spec }
}

fn schedule(epochs: usize) -> Schedule {
    Schedule {
        epochs,
        lr: 0.05,
        batch_size: 16,
        milestones: vec![],
        ..Default::default()
    }
}

/// A dense model trained for `epochs` epochs from the seed-`SEED` initialisation, with the
/// snapshot after `rewind` epochs.
fn dense(f: &Fixture, epochs: usize, rewind: Option<usize>) -> (Model, Option<Snapshot>) {
    let mut m = Model::new(f.spec.clone(), Device::Cpu, SEED).unwrap();
    let all: Vec<usize> = (0..f.data.train.len()).collect();
    let stream = Stream::new(&f.data.train, &all);
    let s = schedule(epochs);
    let report = Trainer::new(Device::Cpu, false)
        .run(
            &mut m,
            Run {
                rewind_epoch: rewind,
                ..Run::new("dense".into(), &s, &stream, None, SEED)
            },
            &mut CrossEntropy,
        )
        .unwrap();
    (m, report.rewind)
}

/// Dense training as the pipeline runs it for IMP `pt`: the weights of the best validation epoch.
fn best_validation(f: &Fixture, epochs: usize) -> BestEpoch {
    let mut m = Model::new(f.spec.clone(), Device::Cpu, SEED).unwrap();
    let all: Vec<usize> = (0..f.data.train.len()).collect();
    let stream = Stream::new(&f.data.train, &all);
    let s = schedule(epochs);
    let run = Run::new("dense".into(), &s, &stream, None, SEED)
        .keeping(Some(RewindPoint::BestValidation), &f.data.val);
    let report = Trainer::new(Device::Cpu, false)
        .run(&mut m, run, &mut CrossEntropy)
        .unwrap();
    assert!(report.rewind.is_none());
    report.best.expect("asked for the best epoch")
}

/// Accuracy (percent) on `data` of the model holding `weights`, counted by hand.
fn accuracy_of(f: &Fixture, weights: &Snapshot, data: &unlearn_api::data::Dataset) -> f64 {
    let mut m = Model::new(f.spec.clone(), Device::Cpu, 0).unwrap();
    m.load_snapshot(weights).unwrap();
    let all: Vec<usize> = (0..data.len()).collect();
    let x = data.batch_images(&unlearn_api::data::index_tensor(&all, Device::Cpu));
    let pred = Vec::<i64>::try_from(m.forward_t(&x, false).argmax(1, false)).unwrap();
    let labels = data.labels_vec();
    let right = pred.iter().zip(&labels).filter(|(p, y)| p == y).count();
    100.0 * right as f64 / labels.len() as f64
}

/// IMP `pt` rewinds to the best validation epoch (the reference code's best dense checkpoint):
/// the loop keeps the first epoch whose validation accuracy is the highest, checked against the
/// weights after every epoch, kept one run at a time, and their accuracies counted by hand.
#[test]
fn pt_keeps_the_best_validation_epoch() {
    one_thread();
    let mut f = fixture();
    // A harder validation set than the training rows, so that accuracy moves between epochs.
    let val = synthetic(&SyntheticConfig {
        samples: 40,
        classes: 4,
        noise: 9.0,
        seed: 2,
        ..Default::default()
    })
    .unwrap();
    f.data.val = val;
    let epochs = 6;
    let best = best_validation(&f, epochs);
    let per_epoch: Vec<(f64, Snapshot)> = (1..=epochs)
        .map(|e| {
            let snap = dense(&f, epochs, Some(e)).1.unwrap();
            (accuracy_of(&f, &snap, &f.data.val), snap)
        })
        .collect();
    let accs: Vec<f64> = per_epoch.iter().map(|(a, _)| *a).collect();
    let top = accs.iter().cloned().fold(f64::MIN, f64::max);
    let first = accs.iter().position(|&a| a == top).unwrap();
    assert_eq!(best.epoch, first + 1, "accuracies per epoch {accs:?}");
    assert_eq!(best.accuracy, top);
    let w = |s: &Snapshot| s.0["conv3.weight"].shallow_clone();
    assert!(w(&best.snapshot).equal(&w(&per_epoch[first].1)));
    // Here the best epoch is not the last one, so keeping the final weights would fail.
    assert_ne!(best.epoch, epochs, "accuracies per epoch {accs:?}");
}

/// Runs `prune` on a copy of `model` with a retraining schedule of `retrain_epochs` epochs.
fn run_pruner<R>(
    f: &Fixture,
    model: &Model,
    rewind: Option<&Snapshot>,
    retrain_epochs: usize,
    prune: impl FnOnce(&mut PruneCtx<'_>) -> R,
) -> (Model, R) {
    run_pruner_with(f, model, rewind, &schedule(retrain_epochs), prune)
}

/// Runs `prune` on a copy of `model` with the retraining schedule `s`.
fn run_pruner_with<R>(
    f: &Fixture,
    model: &Model,
    rewind: Option<&Snapshot>,
    s: &Schedule,
    prune: impl FnOnce(&mut PruneCtx<'_>) -> R,
) -> (Model, R) {
    let mut m = model.try_clone().unwrap();
    let trainer = Trainer::new(Device::Cpu, false);
    let r = {
        let mut ctx = PruneCtx {
            model: &mut m,
            rewind,
            data: &f.data,
            schedule: s,
            trainer: &trainer,
            seed: SEED,
            label: "test".into(),
        };
        prune(&mut ctx)
    };
    (m, r)
}

fn zeros_of(m: &Tensor) -> Vec<bool> {
    Vec::<f32>::try_from(m.flatten(0, -1))
        .unwrap()
        .into_iter()
        .map(|v| v == 0.0)
        .collect()
}

/// Every variable of `model` equals `target * mask` (masked prunable weights are 0, the rest
/// are the target's values exactly).
fn assert_rewound_to(model: &Model, mask: &Mask, target: &BTreeMap<String, Tensor>, what: &str) {
    let vars = model.var_store().variables();
    let mut checked = 0;
    for (name, t) in &vars {
        let want = match mask.get(name) {
            Some(m) => &target[name] * m,
            None => target[name].shallow_clone(),
        };
        assert!(t.equal(&want), "{what}: `{name}` is not the rewind target");
        checked += 1;
    }
    assert!(checked > 10, "{checked}");
}

fn sparsity_of(round: i32) -> f64 {
    1.0 - 0.8f64.powi(round)
}

#[test]
fn imp_sparsity_is_one_minus_point_eight_to_the_k_to_the_weight() {
    one_thread();
    let f = fixture();
    let (model, snap) = dense(&f, 2, Some(1));
    // The counts, worked out by hand: round((1 - 0.8^k) * 92448).
    for (k, want) in [(1usize, 18490i64), (2, 33281), (3, 45115), (5, 62155)] {
        let imp = Imp::new(ImpConfig {
            rounds: k,
            rewind_epoch: 1,
            ..Default::default()
        });
        assert_eq!(
            (imp.sparsity() * TOTAL as f64).round() as i64,
            want,
            "k = {k}"
        );
        assert!((imp.sparsity() - sparsity_of(k as i32)).abs() < 1e-15);
        let mut rounds = Vec::new();
        let (m, mask) = run_pruner(&f, &model, snap.as_ref(), 0, |ctx| {
            imp.prune_observed(ctx, &mut |round, mask, _| {
                rounds.push((round, mask.clone()))
            })
            .unwrap()
        });
        assert_eq!(mask.zeros(), want, "k = {k}");
        assert_eq!(mask.total(), TOTAL);
        assert_eq!(mask.violations(&m), 0);
        // Every round is exact, and what one round pruned stays pruned in the next.
        assert_eq!(rounds.len(), k);
        for (i, (round, m)) in rounds.iter().enumerate() {
            assert_eq!(*round, i + 1);
            let exact = (sparsity_of(*round as i32) * TOTAL as f64).round() as i64;
            assert_eq!(m.zeros(), exact, "k = {k}, round {round}");
            if i > 0 {
                let prev = &rounds[i - 1].1;
                for name in m.names() {
                    let (before, after) = (
                        zeros_of(prev.get(name).unwrap()),
                        zeros_of(m.get(name).unwrap()),
                    );
                    assert!(
                        before.iter().zip(&after).all(|(b, a)| !b || *a),
                        "round {round} revived a weight of `{name}`"
                    );
                }
            }
        }
        assert!(
            rounds
                .last()
                .unwrap()
                .1
                .get("conv2.weight")
                .unwrap()
                .equal(mask.get("conv2.weight").unwrap())
        );
    }
}

#[test]
fn imp_prunes_by_magnitude_of_the_model_it_retrained() {
    one_thread();
    let f = fixture();
    let (model, snap) = dense(&f, 2, Some(1));
    // Round 1 is global magnitude pruning of the trained dense model at 20%.
    let one = Imp::new(ImpConfig {
        rounds: 1,
        rewind_epoch: 1,
        ..Default::default()
    });
    let (_, mask) = run_pruner(&f, &model, snap.as_ref(), 2, |ctx| one.prune(ctx).unwrap());
    let want = Mask::from_scores(&magnitude_scores(&model), None, 0.2).unwrap();
    for name in want.names() {
        assert!(
            mask.get(name).unwrap().equal(want.get(name).unwrap()),
            "{name}"
        );
    }
    // Round 2 prunes the retrained model's smallest remaining weights.
    let mut after_one = None;
    let two = Imp::new(ImpConfig {
        rounds: 2,
        rewind_epoch: 1,
        ..Default::default()
    });
    let (m, mask2) = run_pruner(&f, &model, snap.as_ref(), 2, |ctx| {
        two.prune_observed(ctx, &mut |round, _, m| {
            if round == 1 {
                after_one = Some(m.try_clone().unwrap());
            }
        })
        .unwrap()
    });
    let retrained = after_one.unwrap();
    let want2 =
        Mask::from_scores(&magnitude_scores(&retrained), Some(&mask), sparsity_of(2)).unwrap();
    for name in want2.names() {
        assert!(
            mask2.get(name).unwrap().equal(want2.get(name).unwrap()),
            "{name}"
        );
    }
    assert_eq!(mask2.violations(&m), 0);
    assert!(m.all_finite());
}

#[test]
fn imp_rewinds_to_each_target() {
    one_thread();
    let f = fixture();
    let init = Model::new(f.spec.clone(), Device::Cpu, SEED)
        .unwrap()
        .snapshot();
    let (model, snap3) = dense(&f, 4, Some(3));
    let (_, snap0) = dense(&f, 4, Some(0));
    let best = best_validation(&f, 4).snapshot;
    // The epoch-3 weights differ from the initialisation and from the trained ones.
    let w = |s: &Snapshot| s.0["conv2.weight"].shallow_clone();
    assert!(!w(snap3.as_ref().unwrap()).equal(&w(&init)));
    assert!(!w(snap3.as_ref().unwrap()).equal(&w(&model.snapshot())));
    assert!(w(snap0.as_ref().unwrap()).equal(&w(&init)));
    let cases: [(RewindTarget, Option<&Snapshot>, &Snapshot); 3] = [
        (
            RewindTarget::RewindLt,
            snap3.as_ref(),
            snap3.as_ref().unwrap(),
        ),
        (RewindTarget::Lt, snap0.as_ref(), &init),
        (RewindTarget::Pt, Some(&best), &best),
    ];
    for (rewind, kept, target) in cases {
        let imp = Imp::new(ImpConfig {
            rounds: 2,
            rewind,
            rewind_epoch: 3,
            ..Default::default()
        });
        assert_eq!(
            imp.rewind_point(),
            Some(match rewind {
                RewindTarget::RewindLt => RewindPoint::Epoch(3),
                RewindTarget::Lt => RewindPoint::Epoch(0),
                RewindTarget::Pt => RewindPoint::BestValidation,
            })
        );
        // No retraining: the model is the rewind target under the mask.
        let (m, mask) = run_pruner(&f, &model, kept, 0, |ctx| imp.prune(ctx).unwrap());
        assert_rewound_to(&m, &mask, &target.0, &format!("{rewind:?}"));
        assert_eq!(mask.zeros(), (sparsity_of(2) * TOTAL as f64).round() as i64);
    }
    // Without the snapshot it asked for, IMP says what is missing.
    let imp = Imp::new(ImpConfig::default());
    let (_, r) = run_pruner(&f, &model, None, 0, |ctx| imp.prune(ctx));
    let e = r.unwrap_err().to_string();
    assert!(e.contains("after epoch 8"), "{e}");
}

/// `model` rewound to `target` under `mask`, then trained for `s` with the schedule advanced by
/// `offset` epochs: what a pruner's retraining must reproduce.
fn retrained_by_hand(
    f: &Fixture,
    model: &Model,
    target: &Snapshot,
    mask: &Mask,
    s: &Schedule,
    offset: usize,
) -> Model {
    let mut m = model.try_clone().unwrap();
    m.load_snapshot(target).unwrap();
    let all: Vec<usize> = (0..f.data.train.len()).collect();
    let stream = Stream::new(&f.data.train, &all);
    Trainer::new(Device::Cpu, false)
        .run(
            &mut m,
            Run {
                schedule_offset: offset,
                ..Run::new("by hand".into(), s, &stream, Some(mask), SEED)
            },
            &mut CrossEntropy,
        )
        .unwrap();
    m
}

fn same_weights(a: &Model, b: &Model) -> bool {
    let pb = b.parameters();
    a.parameters().iter().all(|(k, v)| v.equal(&pb[k]))
}

#[test]
fn retraining_advances_the_schedule_by_the_rewound_epochs() {
    one_thread();
    let f = fixture();
    let (model, snap3) = dense(&f, 4, Some(3));
    let (_, snap0) = dense(&f, 4, Some(0));
    let best = best_validation(&f, 4).snapshot;
    // lr 0.05 before epoch 3 and 0.0005 from it: the offset decides which one retraining uses.
    let s = Schedule {
        epochs: 1,
        lr: 0.05,
        batch_size: 16,
        milestones: vec![3],
        gamma: 0.01,
        ..Default::default()
    };
    let snap3 = snap3.unwrap();
    let snap0 = snap0.unwrap();
    // As the reference code: every target advances the schedule by `rewind_epoch`.
    let cases: [(RewindTarget, Option<&Snapshot>, &Snapshot, usize); 3] = [
        (RewindTarget::RewindLt, Some(&snap3), &snap3, 3),
        (RewindTarget::Lt, Some(&snap0), &snap0, 3),
        (RewindTarget::Pt, Some(&best), &best, 3),
    ];
    for (rewind, kept, target, offset) in cases {
        let imp = Imp::new(ImpConfig {
            rounds: 1,
            rewind,
            rewind_epoch: 3,
            ..Default::default()
        });
        let (m, mask) = run_pruner_with(&f, &model, kept, &s, |ctx| imp.prune(ctx).unwrap());
        let want = retrained_by_hand(&f, &model, target, &mask, &s, offset);
        assert!(same_weights(&m, &want), "IMP {rewind:?}: offset {offset}");
        let other = retrained_by_hand(&f, &model, target, &mask, &s, 3 - offset);
        assert!(
            !same_weights(&m, &other),
            "IMP {rewind:?}: the offset matters"
        );
    }
    // OMP and random share the step: rewind to epoch 3, schedule advanced by 3.
    let omp = Omp::new(OmpConfig {
        sparsity: 0.7,
        rewind_epoch: 3,
        ..Default::default()
    });
    let random = RandomPrune::new(RandomConfig {
        sparsity: 0.7,
        rewind_epoch: 3,
        ..Default::default()
    });
    for (name, p) in [("OMP", &omp as &dyn Pruner), ("random", &random)] {
        let (m, mask) = run_pruner_with(&f, &model, Some(&snap3), &s, |ctx| p.prune(ctx).unwrap());
        let want = retrained_by_hand(&f, &model, &snap3, &mask, &s, 3);
        assert!(same_weights(&m, &want), "{name}");
    }
}

#[test]
fn omp_and_random_prune_exactly_differently_and_rewind() {
    one_thread();
    let f = fixture();
    let (model, snap) = dense(&f, 3, Some(2));
    let snap = snap.unwrap();
    let p = 0.9;
    let want = (p * TOTAL as f64).round() as i64;
    let omp = Omp::new(OmpConfig {
        sparsity: p,
        rewind_epoch: 2,
        ..Default::default()
    });
    let random = |sparsity| {
        RandomPrune::new(RandomConfig {
            sparsity,
            rewind_epoch: 2,
            ..Default::default()
        })
    };
    let (m_omp, mask_omp) = run_pruner(&f, &model, Some(&snap), 0, |ctx| omp.prune(ctx).unwrap());
    let (m_rand, mask_rand) = run_pruner(&f, &model, Some(&snap), 0, |ctx| {
        random(p).prune(ctx).unwrap()
    });
    assert_eq!(mask_omp.zeros(), want);
    assert_eq!(mask_rand.zeros(), want);
    assert_eq!(omp.sparsity(), p);
    assert_eq!(random(p).sparsity(), p);
    // Both rewind the survivors to the epoch-2 snapshot.
    assert_rewound_to(&m_omp, &mask_omp, &snap.0, "OMP");
    assert_rewound_to(&m_rand, &mask_rand, &snap.0, "random");
    // OMP is global magnitude pruning of the trained weights; random is not.
    let magnitude = Mask::from_scores(&magnitude_scores(&model), None, p).unwrap();
    let mut same = 0;
    for name in magnitude.names() {
        assert!(
            mask_omp
                .get(name)
                .unwrap()
                .equal(magnitude.get(name).unwrap())
        );
        same += mask_rand
            .get(name)
            .unwrap()
            .eq_tensor(magnitude.get(name).unwrap())
            .sum(Kind::Int64)
            .int64_value(&[]);
    }
    // Two independent masks at 90% agree on about 0.9^2 + 0.1^2 = 82% of the positions.
    let agree = same as f64 / TOTAL as f64;
    assert!((agree - 0.82).abs() < 0.02, "agreement {agree}");
    // Random pruning is uniform: every layer near 90%; magnitude pruning is not (conv1's few
    // large weights survive).
    let layer = |m: &Mask, name: &str| {
        let t = m.get(name).unwrap();
        t.eq(0.0).sum(Kind::Int64).int64_value(&[]) as f64 / t.numel() as f64
    };
    for name in ["conv1.weight", "conv2.weight", "conv3.weight"] {
        assert!((layer(&mask_rand, name) - p).abs() < 0.05, "{name}");
    }
    assert!(layer(&mask_omp, "conv1.weight") < 0.5);
    // Deterministic for a seed, different for another.
    let again = Mask::from_scores(&random_scores(&model, SEED), None, p).unwrap();
    let other = Mask::from_scores(&random_scores(&model, SEED + 1), None, p).unwrap();
    let mut differs = false;
    for name in mask_rand.names() {
        assert!(again.get(name).unwrap().equal(mask_rand.get(name).unwrap()));
        differs |= !other.get(name).unwrap().equal(mask_rand.get(name).unwrap());
    }
    assert!(differs);
    assert_eq!(other.zeros(), want);
    // ... and it does not depend on the weights, only on the shapes and the seed.
    let other_model = Model::new(f.spec.clone(), Device::Cpu, 99).unwrap();
    let from_other = Mask::from_scores(&random_scores(&other_model, SEED), None, p).unwrap();
    for name in mask_rand.names() {
        assert!(
            from_other
                .get(name)
                .unwrap()
                .equal(mask_rand.get(name).unwrap())
        );
    }
}

#[test]
fn pruners_retrain_under_the_mask() {
    one_thread();
    let f = fixture();
    let (model, snap) = dense(&f, 3, Some(2));
    let omp = Omp::new(OmpConfig {
        sparsity: 0.8,
        rewind_epoch: 2,
        ..Default::default()
    });
    let random = RandomPrune::new(RandomConfig {
        sparsity: 0.8,
        rewind_epoch: 2,
        ..Default::default()
    });
    let imp = Imp::new(ImpConfig {
        rounds: 2,
        rewind_epoch: 2,
        ..Default::default()
    });
    for (name, p) in [
        ("OMP", &omp as &dyn Pruner),
        ("random", &random),
        ("IMP", &imp),
    ] {
        let (m, mask) = run_pruner(&f, &model, snap.as_ref(), 3, |ctx| p.prune(ctx).unwrap());
        assert_eq!(
            mask.zeros(),
            (p.sparsity() * TOTAL as f64).round() as i64,
            "{name}"
        );
        assert_eq!(mask.violations(&m), 0, "{name}");
        assert!(m.all_finite(), "{name}");
        // Retraining moved the survivors away from the snapshot.
        let w = &m.parameters()["conv3.weight"];
        let rewound = &snap.as_ref().unwrap().0["conv3.weight"] * mask.get("conv3.weight").unwrap();
        assert!(!w.equal(&rewound), "{name}");
    }
}

#[test]
fn defaults_follow_spec_and_the_reference() {
    one_thread();
    let imp = ImpConfig::default();
    assert_eq!(
        (imp.rounds, imp.rate, imp.rewind, imp.rewind_epoch),
        (14, 0.2, RewindTarget::RewindLt, 8)
    );
    let r = RandomConfig::default();
    assert_eq!((r.sparsity, r.rewind_epoch), (0.95, 8));
    let o = OmpConfig::default();
    assert_eq!((o.sparsity, o.rewind_epoch), (0.95, 8));
    assert_eq!(Imp::NAME, "IMP");
    assert_eq!(RandomPrune::NAME, "random");
    let json = serde_json::to_value(ImpConfig::default()).unwrap();
    assert_eq!(json["rewind"], "rewind_lt");
}

/// `prunable = "conv+linear"`: OMP prunes the conv weights and `fc.weight` together by the global
/// magnitude rule, exactly (the threshold computed here independently, from the sorted
/// magnitudes), biases and BatchNorm stay dense, the mask holds after retraining, and the sparse
/// model's checkpoint round-trips with its linear mask entry.
#[test]
fn conv_plus_linear_prunes_the_classifier_by_global_magnitude() {
    one_thread();
    let f = fixture();
    let (model, snap) = dense(&f, 3, Some(2));
    let p = 0.8;
    let omp = Omp::new(OmpConfig {
        sparsity: p,
        rewind_epoch: 2,
        prunable: Prunable::ConvLinear,
    });
    let (m, mask) = run_pruner(&f, &model, snap.as_ref(), 2, |ctx| omp.prune(ctx).unwrap());

    // The threshold: the k-th smallest |w| over every conv weight and fc.weight of the trained
    // dense model (fc: 128 * 4 weights).
    let params = model.parameters();
    let names = ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"];
    let mut all: Vec<f32> = Vec::new();
    for n in names {
        all.extend(Vec::<f32>::try_from(params[n].abs().flatten(0, -1)).unwrap());
    }
    let total = TOTAL + 128 * 4;
    assert_eq!(all.len() as i64, total);
    let k = (p * total as f64).round() as usize;
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let threshold = sorted[k - 1];
    assert!(sorted[k] > threshold, "no tie at the threshold");
    let mask_names: Vec<&str> = mask.names().collect();
    assert_eq!(mask_names, names);
    assert_eq!((mask.zeros(), mask.total()), (k as i64, total));
    for n in names {
        let want: Vec<bool> = Vec::<f32>::try_from(params[n].abs().flatten(0, -1))
            .unwrap()
            .into_iter()
            .map(|w| w <= threshold)
            .collect();
        assert_eq!(zeros_of(mask.get(n).unwrap()), want, "{n}");
    }
    let fc_pruned = zeros_of(mask.get("fc.weight").unwrap())
        .into_iter()
        .filter(|&z| z)
        .count();
    assert!(
        fc_pruned > 0 && fc_pruned < 512,
        "{fc_pruned} of fc.weight pruned"
    );

    // After retraining: pruned weights are exactly 0, the rest moved, biases and BN are dense.
    assert_eq!(mask.violations(&m), 0);
    let fc = m.parameters()["fc.weight"].shallow_clone();
    let kept = mask.get("fc.weight").unwrap();
    assert_eq!(
        fc.eq(0.0)
            .logical_and(&kept.eq(1.0))
            .sum(Kind::Int64)
            .int64_value(&[]),
        0
    );
    let rewound = &snap.as_ref().unwrap().0["fc.weight"] * kept;
    assert!(!fc.equal(&rewound), "fc.weight was retrained");
    assert!(mask.get("fc.bias").is_none() && mask.get("bn1.weight").is_none());

    // The mask file (a checkpoint with its mask) round-trips with the linear entry.
    let dir = std::env::temp_dir().join(format!("unlearn-conv-linear-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sparse.safetensors");
    let provenance = unlearn_api::checkpoint::Provenance {
        dataset: None,
        train_config: None,
    };
    unlearn_api::checkpoint::save(&path, &m, Some(&mask), &provenance).unwrap();
    let (back, back_mask, meta) = unlearn_api::checkpoint::load(&path, Device::Cpu).unwrap();
    let back_mask = back_mask.expect("the mask was saved");
    assert_eq!(back_mask.names().collect::<Vec<_>>(), names);
    for n in names {
        assert!(back_mask.get(n).unwrap().equal(mask.get(n).unwrap()), "{n}");
        assert!(back.parameters()[n].equal(&m.parameters()[n]), "{n}");
    }
    assert_eq!(meta.sparsity, Some(mask.sparsity()));
    assert_eq!(back_mask.violations(&back), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The default selection is `conv`: `{}` and `{"prunable": "conv"}` are the same config, and
/// the default OMP mask is the old one (the conv magnitudes only).
#[test]
fn the_default_selection_is_conv() {
    use unlearn_api::method::parse_config;
    let d: OmpConfig = parse_config(&serde_json::json!({})).unwrap();
    assert_eq!(d.prunable, Prunable::Conv);
    let c: OmpConfig = parse_config(&serde_json::json!({"prunable": "conv"})).unwrap();
    assert_eq!(c, d);
    let l: ImpConfig = parse_config(&serde_json::json!({"prunable": "conv+linear"})).unwrap();
    assert_eq!(l.prunable, Prunable::ConvLinear);
    assert!(parse_config::<OmpConfig>(&serde_json::json!({"prunable": "bias"})).is_err());
    one_thread();
    let f = fixture();
    let (model, snap) = dense(&f, 3, Some(2));
    let omp = Omp::new(d);
    let (_, mask) = run_pruner(&f, &model, snap.as_ref(), 1, |ctx| omp.prune(ctx).unwrap());
    let old = Mask::from_scores(&magnitude_scores(&model), None, 0.95).unwrap();
    assert_eq!(
        mask.names().collect::<Vec<_>>(),
        old.names().collect::<Vec<_>>()
    );
    for (n, t) in old.tensors() {
        assert!(mask.get(n).unwrap().equal(t), "{n}");
    }
}
