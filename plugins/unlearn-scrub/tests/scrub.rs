use unlearn_api::method::{Kind as MethodKind, UnlearnMethod};
use unlearn_api::model::Model;
use unlearn_api::registry::Registry;
use unlearn_api::rng::{permutation, rng};
use unlearn_api::tch::{self, Kind, Tensor};
use unlearn_api::testing::TinyTask;
use unlearn_api::train::Stream;
use unlearn_eval::Outputs;
use unlearn_scrub::{Scrub, ScrubConfig, distill_kl};

/// KL(softmax(t / T) || softmax(s / T)) of one row, by hand in f64.
fn kl_row(s: &[f64], t: &[f64], temp: f64) -> f64 {
    let softmax = |z: &[f64]| {
        let e: Vec<f64> = z.iter().map(|v| (v / temp).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.into_iter().map(|v| v / sum).collect::<Vec<f64>>()
    };
    let (ps, pt) = (softmax(s), softmax(t));
    pt.iter().zip(&ps).map(|(a, b)| a * (a.ln() - b.ln())).sum()
}

#[test]
fn distillation_kl_and_losses_match_a_hand_computation() {
    let s = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]];
    let t = [[3.0, 2.0, 1.0], [2.0, 0.0, -0.5]];
    let temp = 2.0;
    // SCRUB: summed over the batch, times T^2, over the batch size.
    let expected = (kl_row(&s[0], &t[0], temp) + kl_row(&s[1], &t[1], temp)) * temp * temp / 2.0;
    let tensor = |rows: &[[f64; 3]; 2]| {
        Tensor::from_slice(&rows.concat())
            .reshape([2, 3])
            .to_kind(Kind::Double)
    };
    let (ts, tt) = (tensor(&s), tensor(&t));
    let kl = distill_kl(&ts, &tt, temp).unwrap().double_value(&[]);
    assert!((kl - expected).abs() < 1e-12, "{kl} vs {expected}");
    assert!(expected > 0.1, "the crafted pair should differ: {expected}");
    // The KL of a model with itself is 0.
    let same = distill_kl(&ts, &ts, temp).unwrap().double_value(&[]);
    assert!(same.abs() < 1e-12, "{same}");

    let c = ScrubConfig {
        temperature: temp,
        alpha: 0.3,
        gamma: 0.7,
        ..Default::default()
    };
    let y = Tensor::from_slice(&[2i64, 0]);
    let max = c.loss(0, &ts, &tt, &y).unwrap().double_value(&[]);
    assert!((max + expected).abs() < 1e-12, "max-step loss {max}");
    // Mean cross-entropy by hand: row 0 has label 2, row 1 label 0.
    let ce_row = |z: &[f64], k: usize| {
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        lse - z[k]
    };
    let ce = (ce_row(&s[0], 2) + ce_row(&s[1], 0)) / 2.0;
    let min = c.loss(1, &ts, &tt, &y).unwrap().double_value(&[]);
    let want = 0.3 * expected + 0.7 * ce;
    // core's cross-entropy works in f32.
    assert!((min - want).abs() < 1e-6, "min-step loss {min} vs {want}");
}

/// SCRUB's loss written out again with other tch ops (softmax then log; mean CE by gathering).
fn reference_loss(phase: usize, s: &Tensor, t: &Tensor, y: &Tensor, c: &ScrubConfig) -> Tensor {
    let temp = c.temperature;
    let pt = (t / temp).softmax(-1, Kind::Float);
    let ps = (s / temp).softmax(-1, Kind::Float);
    let n = s.size()[0] as f64;
    let kl = (&pt * (pt.log() - ps.log())).sum(Kind::Float) * (temp * temp) / n;
    if phase == 0 {
        -kl
    } else {
        let ce = -s
            .log_softmax(-1, Kind::Float)
            .gather(1, &y.unsqueeze(1), false)
            .mean(Kind::Float);
        kl * c.alpha + ce * c.gamma
    }
}

#[test]
fn one_alternation_equals_a_hand_written_max_then_min_step() {
    let t = TinyTask::new();
    let m = t.trained();
    let (nf, nr) = (t.forget.forget.len(), t.forget.retain.len());
    let c = ScrubConfig {
        epochs: 1,
        msteps: 1,
        lr: 0.05,
        batch_size: nr,
        forget_batch_size: nf,
        temperature: 2.0,
        alpha: 0.5,
        gamma: 0.9,
        ..Default::default()
    };
    let seed = 7;
    let scrubbed = t.unlearn(&Scrub::new(c.clone()), &m, None, seed).unwrap();

    // The reference: a frozen teacher, one optimizer, a max-step on all of D_f then a min-step
    // on all of D_r, each batch in the order the loop draws it.
    let student = m.try_clone().unwrap();
    let teacher = m.try_clone().unwrap();
    let schedule = c.schedule();
    let mut opt = schedule.optimizer(&student);
    let mut augment = rng(seed, "augment");
    let streams = [
        Stream::new(&t.data.train, &t.forget.forget),
        Stream::new(&t.data.train, &t.forget.retain),
    ];
    for (phase, (stream, purpose)) in streams
        .iter()
        .zip(["batches", "batches of phase 1"])
        .enumerate()
    {
        let order: Vec<i64> = permutation(stream.len(), seed, purpose)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let pick = Tensor::from_slice(&order);
        let rows = stream.rows.index_select(0, &pick);
        let x = stream
            .augment
            .apply(&t.data.train.batch_images(&rows), &mut augment);
        let y = stream.labels.index_select(0, &pick);
        let s = student.forward_t(&x, true);
        let tl = tch::no_grad(|| teacher.forward_t(&x, false));
        let loss = reference_loss(phase, &s, &tl, &y, &c);
        opt.zero_grad().unwrap();
        loss.backward();
        opt.step().unwrap();
    }

    let (a, b) = (scrubbed.parameters(), student.parameters());
    assert_eq!(a.len(), b.len());
    let mut moved = 0.0;
    for (name, w) in &a {
        let diff = (w - &b[name]).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{name} differs from the reference by {diff}");
        moved += (w - &m.parameters()[name])
            .abs()
            .sum(Kind::Double)
            .double_value(&[]);
    }
    assert!(moved > 1e-3, "the weights did not move ({moved})");
    let (a, b) = (
        scrubbed.var_store().variables(),
        student.var_store().variables(),
    );
    for (name, v) in &a {
        let diff = (v - &b[name]).abs().max().double_value(&[]);
        assert!(
            diff < 1e-6,
            "buffer {name} differs from the reference by {diff}"
        );
    }
}

/// Mean cross-entropy of `model` on the forget set, in eval mode.
fn forget_loss(t: &TinyTask, model: &Model) -> f64 {
    let out = Outputs::compute(model, &t.data.train, 256).select(&t.forget.forget);
    unlearn_api::train::cross_entropy(&out.logits, &out.labels)
        .unwrap()
        .double_value(&[])
}

#[test]
fn a_sparse_model_keeps_its_mask_and_forgets() {
    let t = TinyTask::new();
    let (m, mask) = t.trained_sparse();
    let c = ScrubConfig {
        epochs: 4,
        msteps: 3,
        lr: 0.02,
        batch_size: 16,
        forget_batch_size: 8,
        ..Default::default()
    };
    let before = forget_loss(&t, &m);
    let out = t.unlearn(&Scrub::new(c), &m, Some(&mask), 0).unwrap();
    assert_eq!(mask.violations(&out), 0, "a pruned weight became non-zero");
    let after = forget_loss(&t, &out);
    assert!(after > before, "forget loss {before} -> {after}");
}

#[test]
fn rules_defaults_and_conformance() {
    let r = Registry::builtin().unwrap();
    let m = r.get_kind(Scrub::NAME, MethodKind::Unlearner).unwrap();
    let d = &m.default_config;
    assert!(
        d["epochs"] == 3
            && d["msteps"] == 2
            && d["lr"] == 5e-4
            && d["batch_size"] == 128
            && d["forget_batch_size"] == 32
            && d["temperature"] == 4.0
            && d["alpha"] == 0.001
            && d["gamma"] == 0.99,
        "{d}"
    );
    let mut bad = d.clone();
    bad["msteps"] = 5.into();
    bad["temperature"] = 0.0.into();
    let issues = m.build_unlearner(&bad).err().unwrap();
    let mut paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/msteps", "/temperature"], "{issues:?}");
    let mut adam = d.clone();
    adam["optimizer"] = "adam".into();
    assert!(m.build_unlearner(&adam).is_ok());
    unlearn_api::conformance::assert_conforms(m);
}
