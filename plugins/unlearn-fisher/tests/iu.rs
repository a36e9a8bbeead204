//! IU against an independent reference: per-sample gradients through `.grad` (0 for pruned
//! weights), and IU's
//! g_f, g_r, v and WoodFisher recursion written out in f64 with plain `Vec<f64>` loops.

mod common;

use common::*;
use unlearn_api::data::Augment;
use unlearn_api::grad::GradInputs;
use unlearn_api::method::{UnlearnMethod, Unlearner};
use unlearn_api::model::Model;
use unlearn_fisher::{Iu, IuConfig};

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The IU steps 1-2 (the vector `k`, flat, parameters in name order) on the inputs
/// [`Fixture::inputs`] gives for `augment_seed`: `g_f` and `g_r`
/// read batches of `batch`, the recursion batches of one, each pass from a fresh generator.
fn reference_k_on(
    f: &Fixture,
    model: &Model,
    n: usize,
    batch: usize,
    augment_seed: Option<u64>,
) -> Vec<f64> {
    // pruned weights are constants: their gradients are 0
    let pruned = pruned(model, &f.mask);
    let grad = |x: &unlearn_api::tch::Tensor, row: usize| {
        let mut g = sample_grad(model, x, f.label(row));
        mask_grads(&mut g, &pruned);
        flat(&g)
    };
    let sum = |rows: &[usize]| {
        let mut s = vec![];
        for (x, &r) in f.inputs(rows, batch, augment_seed).iter().zip(rows) {
            let g = grad(x, r);
            if s.is_empty() {
                s = vec![0.0; g.len()];
            }
            for (a, b) in s.iter_mut().zip(g) {
                *a += b;
            }
        }
        s
    };
    let (n_f, n_r) = (f.forget.forget.len() as f64, f.forget.retain.len() as f64);
    let g_f = sum(&f.forget.forget);
    let g_r = sum(&f.forget.retain);
    let mut k: Vec<f64> = g_f
        .iter()
        .zip(&g_r)
        .map(|(gf, gr)| gf / (n_f + n_r) - gr * n_f / ((n_f + n_r) * n_r))
        .collect();
    let big_n = n as f64;
    let mut o: Vec<f64> = vec![];
    let first: Vec<usize> = f.forget.retain.iter().take(n).copied().collect();
    for (x, &r) in f.inputs(&first, 1, augment_seed).iter().zip(&first) {
        let g = grad(x, r);
        if o.is_empty() {
            o = g;
            continue;
        }
        let t = dot(&o, &g);
        let kg = dot(&k, &g);
        for (ki, oi) in k.iter_mut().zip(&o) {
            *ki -= kg / (big_n + t) * oi;
        }
        for oi in o.iter_mut() {
            *oi -= t / (big_n + t) * *oi;
        }
    }
    k
}

fn run_iu(f: &Fixture, config: IuConfig, mask: bool) -> (Model, unlearn_fisher::IuReport) {
    let mut m = f.model.try_clone().unwrap();
    let mut ctx = f.ctx(&mut m, mask.then_some(&f.mask), 0);
    let report = Iu::new(config).run(&mut ctx, true).unwrap();
    (m, report)
}

fn check_update(f: &Fixture, n: usize, alpha: f64) {
    check_update_on(f, n, alpha, GradInputs::Augmented, None);
}

/// IU with `inputs` against [`reference_k_on`] with `augment_seed` (the context's seed, 0, when
/// the inputs are augmented).
fn check_update_on(
    f: &Fixture,
    n: usize,
    alpha: f64,
    inputs: GradInputs,
    augment_seed: Option<u64>,
) -> Model {
    let k = reference_k_on(f, &f.model, n, 256, augment_seed);
    let (out, report) = run_iu(
        f,
        IuConfig {
            alpha,
            samples: n,
            inputs,
            ..Default::default()
        },
        true,
    );
    assert_eq!(report.samples, n.min(f.forget.retain.len()));
    let before = flat(&weights(&f.model));
    let after = flat(&weights(&out));
    let pruned: Vec<bool> = pruned(&f.model, &f.mask)
        .into_iter()
        .zip(weights(&f.model))
        .flat_map(|(p, w)| {
            if p.is_empty() {
                vec![false; w.len()]
            } else {
                p
            }
        })
        .collect();
    let scale = k.iter().fold(0.0f64, |m, v| m.max(v.abs())) * alpha;
    assert!(
        scale > 1e-3,
        "the update is visible over f32 rounding: {scale}"
    );
    let mut moved = 0;
    for j in 0..after.len() {
        if pruned[j] {
            assert_eq!(after[j], 0.0, "pruned entry {j}");
            continue;
        }
        let want = before[j] + alpha * k[j];
        assert!(
            (after[j] - want).abs() <= 1e-4 * scale + 1e-6,
            "entry {j}: {} vs {want} (before {}, scale {scale})",
            after[j],
            before[j]
        );
        moved += (after[j] != before[j]) as usize;
    }
    assert!(moved > after.len() / 3);
    out
}

/// On a training set with augmentation, IU's g_f, g_r and per-sample gradients are computed on
/// augmented inputs by default (the reference keeps the training transform on its loaders) and
/// on clean ones with `inputs = "clean"`.
#[test]
fn iu_gradients_are_on_augmented_inputs_unless_asked_for_clean() {
    let mut f = fixture();
    f.data.train.augment = Augment {
        crop_padding: 2,
        flip: true,
    };
    let a = check_update_on(&f, 20, 5.0, GradInputs::Augmented, Some(0));
    let c = check_update_on(&f, 20, 5.0, GradInputs::Clean, None);
    let w = |m: &Model| m.parameters()["conv2.weight"].shallow_clone();
    assert!(!w(&a).equal(&w(&c)), "the inputs matter");
}

#[test]
fn iu_update_equals_the_reference_recursion_with_few_samples() {
    let f = fixture();
    assert!(f.forget.retain.len() > 20);
    check_update(&f, 20, 5.0);
}

#[test]
fn iu_update_equals_the_reference_recursion_when_n_exceeds_the_retain_set() {
    // N = 1000 > |D_r|: every retain sample is used, and 1000 stays the constant.
    let f = fixture();
    check_update(&f, 1000, 5.0);
}

#[test]
fn iu_is_deterministic_and_keeps_the_mask() {
    let f = fixture();
    let (a, _) = run_iu(&f, IuConfig::default(), true);
    let (b, _) = run_iu(&f, IuConfig::default(), true);
    for (name, w) in a.parameters() {
        assert!(w.equal(&b.parameters()[&name]), "{name}");
    }
    assert_eq!(f.mask.violations(&a), 0);
    assert!(a.all_finite());
    assert!(!a.parameters()["fc.weight"].equal(&f.model.parameters()["fc.weight"]));
    // the batch size of the g_f / g_r passes changes rounding only
    let (c, _) = run_iu(
        &f,
        IuConfig {
            batch_size: 7,
            ..Default::default()
        },
        true,
    );
    for (name, w) in a.parameters() {
        let d = (&w - &c.parameters()[&name]).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{name}: {d}");
    }
    // dense: the update reaches every weight
    let mut m = f.model.try_clone().unwrap();
    let mut ctx = f.ctx(&mut m, None, 0);
    Iu::new(IuConfig::default()).unlearn(&mut ctx).unwrap();
    assert!(f.mask.violations(&m) > 0);
}
