//! FF against an independent reference: the Fisher accumulated one sample at a time through
//! `.grad`, and FF's variance and mean rules written out in f64 loops.

mod common;

use common::*;
use unlearn_api::data::Augment;
use unlearn_api::grad::GradInputs;
use unlearn_api::grad::normal_like;
use unlearn_api::method::{UnlearnMethod, Unlearner};
use unlearn_api::model::Model;
use unlearn_api::tch::{Kind, Tensor};
use unlearn_fisher::{Ff, FfConfig};

const ALPHA: f64 = 1e-4;
const BATCH: usize = 8;

/// FF step 1 over the retain rows in batches of `batch`: for every class y, the
/// gradient of the batch's mean CE against all-y targets is the mean of the per-sample
/// gradients; accumulate mean_batch(p_y) * grad^2 and divide by the number of batches.
/// With `masked`, the gradients of pruned weights are 0 (they are constants).
fn reference_fisher(f: &Fixture, model: &Model, batch: usize, masked: bool) -> Vec<Vec<f64>> {
    reference_fisher_on(f, model, batch, masked, None)
}

/// [`reference_fisher`] on the inputs [`Fixture::inputs`] gives for `augment_seed`.
fn reference_fisher_on(
    f: &Fixture,
    model: &Model,
    batch: usize,
    masked: bool,
    augment_seed: Option<u64>,
) -> Vec<Vec<f64>> {
    let rows = &f.forget.retain;
    let images = f.inputs(rows, batch, augment_seed);
    let pruned = if masked {
        pruned(model, &f.mask)
    } else {
        vec![]
    };
    let mut acc: Vec<Vec<f64>> = weights(model).iter().map(|w| vec![0.0; w.len()]).collect();
    let chunks: Vec<&[usize]> = rows.chunks(batch).collect();
    for (c, chunk) in chunks.iter().enumerate() {
        let n = chunk.len() as f64;
        let xs = &images[c * batch..c * batch + chunk.len()];
        let ps: Vec<Vec<f64>> = xs.iter().map(|x| probs(model, x)).collect();
        for y in 0..CLASSES {
            let p_y = ps.iter().map(|p| p[y]).sum::<f64>() / n;
            let mut g: Vec<Vec<f64>> = acc.iter().map(|a| vec![0.0; a.len()]).collect();
            for x in xs {
                let mut sg = sample_grad(model, x, y);
                mask_grads(&mut sg, &pruned);
                for (gp, sp) in g.iter_mut().zip(sg) {
                    for (a, b) in gp.iter_mut().zip(sp) {
                        *a += b / n;
                    }
                }
            }
            for (ap, gp) in acc.iter_mut().zip(&g) {
                for (a, b) in ap.iter_mut().zip(gp) {
                    *a += p_y * b * b;
                }
            }
        }
    }
    for ap in &mut acc {
        for a in ap {
            *a /= chunks.len() as f64;
        }
    }
    acc
}

/// How many entries each clamp regime holds (so the test knows it exercised them all).
#[derive(Debug, Default)]
struct Regimes {
    /// 1 / (F + 1e-8) above 1e3: clamped to 1e3.
    clamp_1e3: usize,
    /// In a parameter with one row per class, 1 / (F + 1e-8) in (1e2, 1e3]: clamped to 1e2.
    clamp_1e2: usize,
    /// Below both clamps.
    unclamped: usize,
}

/// FF steps 2-3, element by element: (mu, var) per parameter in name order.
fn reference_moments(
    model: &Model,
    fisher: &[Vec<f64>],
    alpha: f64,
    forget: Option<usize>,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>, Regimes) {
    let mut regimes = Regimes::default();
    let mut mus = vec![];
    let mut vars = vec![];
    for (((name, shape), w), acc) in shapes(model).into_iter().zip(weights(model)).zip(fisher) {
        let class_rows = shape[0] == CLASSES as i64;
        let mut var: Vec<f64> = acc
            .iter()
            .map(|a| {
                let raw = 1.0 / (a + 1e-8);
                let mut v = raw.min(1e3);
                if raw > 1e3 {
                    regimes.clamp_1e3 += 1;
                } else if class_rows && raw > 1e2 {
                    regimes.clamp_1e2 += 1;
                } else {
                    regimes.unclamped += 1;
                }
                if class_rows {
                    v = v.min(1e2);
                }
                alpha * v
            })
            .collect();
        if shape.len() > 1 {
            // mean over dim 1, broadcast back
            let (d0, d1) = (shape[0] as usize, shape[1] as usize);
            let rest: usize = shape[2..].iter().product::<i64>() as usize;
            let at = |i0: usize, i1: usize, r: usize| (i0 * d1 + i1) * rest + r;
            for i0 in 0..d0 {
                for r in 0..rest {
                    let m = (0..d1).map(|i1| var[at(i0, i1, r)]).sum::<f64>() / d1 as f64;
                    for i1 in 0..d1 {
                        var[at(i0, i1, r)] = m;
                    }
                }
            }
        }
        let mut mu = w.clone();
        let classifier = name.starts_with("fc.");
        if let (true, Some(c)) = (classifier, forget) {
            let row = if shape.len() == 2 {
                shape[1] as usize
            } else {
                1
            };
            for j in c * row..(c + 1) * row {
                mu[j] = 0.0;
                var[j] = 1e-4;
            }
        }
        if classifier || shape.len() == 1 {
            for v in &mut var {
                *v *= 10.0;
            }
        }
        mus.push(mu);
        vars.push(var);
    }
    (mus, vars, regimes)
}

fn ff(alpha: f64) -> Ff {
    ff_on(alpha, GradInputs::Augmented)
}

fn ff_on(alpha: f64, inputs: GradInputs) -> Ff {
    Ff::new(FfConfig {
        alpha,
        batch_size: BATCH,
        inputs,
    })
}

fn run_ff(f: &Fixture, alpha: f64, mask: bool, seed: u64) -> Model {
    let mut m = f.model.try_clone().unwrap();
    let mut ctx = f.ctx(&mut m, mask.then_some(&f.mask), seed);
    ff(alpha).unlearn(&mut ctx).unwrap();
    m
}

fn close(a: f64, b: f64, rtol: f64, atol: f64) -> bool {
    (a - b).abs() <= atol + rtol * b.abs()
}

#[test]
fn fisher_and_moments_match_the_reference() {
    let f = fixture();
    let fisher = reference_fisher(&f, &f.model, BATCH, true);
    let (mu_ref, var_ref, regimes) =
        reference_moments(&f.model, &fisher, ALPHA, Some(FORGET_CLASS));
    eprintln!("{regimes:?}");
    assert!(
        regimes.clamp_1e3 > 0 && regimes.clamp_1e2 > 0 && regimes.unclamped > 0,
        "every clamp regime is exercised: {regimes:?}"
    );
    // The plugin's rules on the reference Fisher.
    let fisher_t: Vec<Tensor> = fisher
        .iter()
        .zip(f.model.parameters().values())
        .map(|(v, p)| Tensor::from_slice(v).to_kind(Kind::Float).view_as(p))
        .collect();
    let moments = ff(ALPHA)
        .moments(&f.model, &fisher_t, Some(FORGET_CLASS))
        .unwrap();
    let names: Vec<String> = f.model.parameters().into_keys().collect();
    for (i, m) in moments.iter().enumerate() {
        assert_eq!(m.name, names[i]);
        let (mu, var) = (to_vec(&m.mu), to_vec(&m.var));
        for j in 0..mu.len() {
            assert!(
                close(var[j], var_ref[i][j], 1e-4, 0.0),
                "{} var[{j}]: {} vs {}",
                m.name,
                var[j],
                var_ref[i][j]
            );
            assert!(
                close(mu[j], mu_ref[i][j], 0.0, 0.0),
                "{} mu[{j}]: {} vs {}",
                m.name,
                mu[j],
                mu_ref[i][j]
            );
        }
    }
    // Spot checks of the rules by hand: the forgotten row of the classifier.
    let fc_w = moments.iter().find(|m| m.name == "fc.weight").unwrap();
    let fc_b = moments.iter().find(|m| m.name == "fc.bias").unwrap();
    let c = FORGET_CLASS as i64;
    assert_eq!(fc_w.mu.get(c).abs().max().double_value(&[]), 0.0);
    assert!(close(
        fc_w.var.get(c).max().double_value(&[]),
        1e-3,
        1e-6,
        0.0
    ));
    assert!(close(
        fc_w.var.get(c).min().double_value(&[]),
        1e-3,
        1e-6,
        0.0
    ));
    assert!(close(fc_b.var.double_value(&[c]), 1e-3, 1e-6, 0.0));
    // the classifier's variance never exceeds 10 * a * 1e2 elsewhere
    assert!(fc_w.var.max().double_value(&[]) <= 10.0 * ALPHA * 1e2 * (1.0 + 1e-6) + 1e-3);
    // BatchNorm (1-D): x10 once; conv weights: no x10, at most a * 1e3
    let conv = moments.iter().find(|m| m.name == "conv2.weight").unwrap();
    assert!(conv.var.max().double_value(&[]) <= ALPHA * 1e3 * (1.0 + 1e-6));
    // rows of a conv weight share their variance along dim 1
    let v = &conv.var;
    assert!(v.get(3).get(0).equal(&v.get(3).get(17)));

    // Without class-wise forgetting, the classifier keeps its weights as the mean.
    let moments = ff(ALPHA).moments(&f.model, &fisher_t, None).unwrap();
    let (mu_ref, var_ref, _) = reference_moments(&f.model, &fisher, ALPHA, None);
    let i = names.iter().position(|n| n == "fc.weight").unwrap();
    assert_eq!(to_vec(&moments[i].mu), mu_ref[i]);
    for (a, b) in to_vec(&moments[i].var).iter().zip(&var_ref[i]) {
        assert!(close(*a, *b, 1e-4, 0.0));
    }
}

#[test]
fn ff_samples_mu_plus_sqrt_var_times_the_seeded_normal_draws() {
    let f = fixture();
    let seed = 11;
    let fisher = reference_fisher(&f, &f.model, BATCH, true);
    let (mu_ref, var_ref, _) = reference_moments(&f.model, &fisher, ALPHA, Some(FORGET_CLASS));
    let out = run_ff(&f, ALPHA, true, seed);
    assert_sampled(&f, &out, &mu_ref, &var_ref, seed);
}

/// `out` is `mu + sqrt(var) * z` with z the documented draw (core's seeded host generator with
/// FF's purpose, one standard normal tensor per parameter in name order), pruned weights 0.
fn assert_sampled(f: &Fixture, out: &Model, mu_ref: &[Vec<f64>], var_ref: &[Vec<f64>], seed: u64) {
    let params: Vec<Tensor> = f.model.parameters().into_values().collect();
    let noise: Vec<Vec<f64>> = normal_like(&params, seed, unlearn_fisher::ff::NOISE_PURPOSE)
        .unwrap()
        .iter()
        .map(to_vec)
        .collect();
    let pruned = pruned(&f.model, &f.mask);
    let got = weights(out);
    let names: Vec<String> = f.model.parameters().into_keys().collect();
    let mut checked = 0;
    for i in 0..got.len() {
        for j in 0..got[i].len() {
            if pruned[i].get(j) == Some(&true) {
                assert_eq!(got[i][j], 0.0, "{} [{j}] is pruned", names[i]);
                continue;
            }
            let want = mu_ref[i][j] + var_ref[i][j].sqrt() * noise[i][j];
            let tol = 1e-4 * var_ref[i][j].sqrt() * noise[i][j].abs() + 1e-6;
            assert!(
                (got[i][j] - want).abs() <= tol,
                "{} [{j}]: {} vs {want}",
                names[i],
                got[i][j]
            );
            checked += 1;
        }
    }
    assert!(checked > 40_000);
    assert_eq!(f.mask.violations(out), 0);
    assert!(out.all_finite());
}

/// On a training set with augmentation, FF's Fisher is accumulated on augmented inputs by
/// default (as the reference code, whose retain loader keeps the training transform), and on
/// the clean images with `inputs = "clean"`: each equals the reference computed on those inputs.
#[test]
fn ff_fisher_inputs_are_augmented_unless_asked_for_clean() {
    let mut f = fixture();
    f.data.train.augment = Augment {
        crop_padding: 2,
        flip: true,
    };
    let seed = 4;
    let mut outs = Vec::new();
    for (inputs, augment_seed) in [
        (GradInputs::Augmented, Some(seed)),
        (GradInputs::Clean, None),
    ] {
        let fisher = reference_fisher_on(&f, &f.model, BATCH, true, augment_seed);
        let (mu_ref, var_ref, _) = reference_moments(&f.model, &fisher, ALPHA, Some(FORGET_CLASS));
        let mut out = f.model.try_clone().unwrap();
        let mut ctx = f.ctx(&mut out, Some(&f.mask), seed);
        ff_on(ALPHA, inputs).unlearn(&mut ctx).unwrap();
        assert_sampled(&f, &out, &mu_ref, &var_ref, seed);
        outs.push(out);
    }
    let w = |m: &Model| m.parameters()["conv2.weight"].shallow_clone();
    assert!(!w(&outs[0]).equal(&w(&outs[1])), "the inputs matter");
    // Clean inputs on an augmenting set equal the default on a set without augmentation.
    f.data.train.augment = Augment::NONE;
    let plain = run_ff(&f, ALPHA, true, seed);
    assert!(w(&plain).equal(&w(&outs[1])));
}

#[test]
fn ff_noise_is_standard_normal_around_mu() {
    let f = fixture();
    let alpha = 1e-3;
    let cfg = ff(alpha);
    let net = unlearn_api::grad::Net::eval(&f.model);
    let rows = f.forget.retain.clone();
    let stream = unlearn_api::train::Stream::new(&f.data.train, &rows);
    let fisher = unlearn_api::grad::class_fisher(&net, &stream, BATCH).unwrap();
    let moments = cfg
        .moments(&f.model, &fisher.per_param, Some(FORGET_CLASS))
        .unwrap();
    let out = run_ff(&f, alpha, false, 3);
    let mut z = vec![];
    for (m, w) in moments.iter().zip(weights(&out)) {
        let (mu, var) = (to_vec(&m.mu), to_vec(&m.var));
        z.extend((0..w.len()).map(|j| (w[j] - mu[j]) / var[j].sqrt()));
    }
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let sd = (z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    // n is about 94k: the standard error of the mean is 0.003, of the sd 0.002
    assert!(mean.abs() < 0.02, "mean {mean}");
    assert!((sd - 1.0).abs() < 0.02, "sd {sd}");
    // the forgotten class's classifier row is pure noise of variance 1e-3
    let row = to_vec(&out.parameters()["fc.weight"].get(FORGET_CLASS as i64));
    let sd_row = (row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64).sqrt();
    assert!(
        (sd_row - 1e-3f64.sqrt()).abs() < 0.3 * 1e-3f64.sqrt(),
        "{sd_row}"
    );
}

#[test]
fn ff_is_deterministic_per_seed_and_keeps_the_mask() {
    let f = fixture();
    let a = run_ff(&f, ALPHA, true, 7);
    let b = run_ff(&f, ALPHA, true, 7);
    let c = run_ff(&f, ALPHA, true, 8);
    for (name, w) in a.parameters() {
        assert!(w.equal(&b.parameters()[&name]), "{name}");
    }
    assert!(!a.parameters()["conv2.weight"].equal(&c.parameters()["conv2.weight"]));
    for m in [&a, &b, &c] {
        assert_eq!(f.mask.violations(m), 0);
        assert!(m.all_finite());
    }
    // the default config (alpha 1e-6) too
    let mut m = f.model.try_clone().unwrap();
    let mut ctx = f.ctx(&mut m, Some(&f.mask), 1);
    let report = Ff::new(FfConfig::default()).run(&mut ctx).unwrap();
    assert_eq!(f.mask.violations(&m), 0);
    // batched: one backward pass per (batch of 32, class)
    let batches = f.forget.retain.len().div_ceil(32);
    assert_eq!(
        (report.batches, report.backward_passes),
        (batches, batches * CLASSES)
    );
}
