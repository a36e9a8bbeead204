//! `RL` on the tiny task: the forget class is forgotten, the rest kept.

mod common;

use common::{accuracy, all_finite, same_weights};
use unlearn_api::method::{UnlearnCtx, UnlearnMethod};
use unlearn_api::model::Model;
use unlearn_api::tch::Device;
use unlearn_api::testing::TinyTask;
use unlearn_api::train::Trainer;
use unlearn_rl_salun::{Rl, RlConfig, random_label_stream, random_other_labels};

/// Settings scaled to the tiny task (84 training images): batches of 16, a larger lr.
fn config() -> RlConfig {
    RlConfig {
        epochs: 10,
        lr: 0.05,
        batch_size: 16,
        ..Default::default()
    }
}

/// Accuracy on the forget set, the retain set, and the test images of the other classes.
fn accuracies(t: &TinyTask, m: &Model) -> (f64, f64, f64) {
    let other: Vec<usize> = (0..t.data.test.len())
        .filter(|&i| t.data.test.labels_vec()[i] != 1)
        .collect();
    (
        accuracy(m, &t.data.train, &t.forget.forget),
        accuracy(m, &t.data.train, &t.forget.retain),
        accuracy(m, &t.data.test, &other),
    )
}

#[test]
fn the_stream_is_forget_rows_with_random_other_labels_then_retain_rows() {
    let t = TinyTask::new();
    let mut m = t.trained();
    let trainer = Trainer::new(Device::Cpu, false);
    let ctx = UnlearnCtx {
        model: &mut m,
        mask: None,
        data: &t.data,
        forget: &t.forget,
        trainer: &trainer,
        seed: 9,
        label: "test".into(),
    };
    let stream = random_label_stream(&ctx).unwrap();
    let rows = Vec::<i64>::try_from(&stream.rows).unwrap();
    let labels = Vec::<i64>::try_from(&stream.labels).unwrap();
    let truth = t.data.train.labels_vec();
    let nf = t.forget.forget.len();
    let want_rows: Vec<i64> = t
        .forget
        .forget
        .iter()
        .chain(&t.forget.retain)
        .map(|&i| i as i64)
        .collect();
    assert_eq!(rows, want_rows);
    let true_forget: Vec<i64> = t.forget.forget.iter().map(|&i| truth[i]).collect();
    assert_eq!(labels[..nf], random_other_labels(&true_forget, 4, 9));
    assert!(labels[..nf].iter().all(|&l| l != 1), "class 1 is forgotten");
    let true_retain: Vec<i64> = t.forget.retain.iter().map(|&i| truth[i]).collect();
    assert_eq!(labels[nf..], true_retain);
}

#[test]
fn rl_forgets_the_class_and_keeps_the_rest_dense() {
    let t = TinyTask::new();
    let m = t.trained();
    let (f0, r0, o0) = accuracies(&t, &m);
    let rl = Rl::new(config());
    let u = t.unlearn(&rl, &m, None, 0).unwrap();
    let (f1, r1, o1) = accuracies(&t, &u);
    eprintln!(
        "dense RL: forget {f0:.3} -> {f1:.3}, retain {r0:.3} -> {r1:.3}, test (other classes) {o0:.3} -> {o1:.3}"
    );
    assert!(f0 >= 0.9, "the trained model knows the class: {f0}");
    assert!(f1 <= 0.2, "forget accuracy {f0} -> {f1}");
    assert!(r1 >= 0.9, "retain accuracy {r0} -> {r1}");
    assert!(
        o1 >= o0 - 0.1,
        "test accuracy on the other classes {o0} -> {o1}"
    );
    assert!(all_finite(&u));
    // same seed, same weights; another seed, other labels and batches
    assert!(same_weights(&u, &t.unlearn(&rl, &m, None, 0).unwrap()));
    assert!(!same_weights(&u, &t.unlearn(&rl, &m, None, 1).unwrap()));
}

#[test]
fn rl_forgets_the_class_and_keeps_the_mask_sparse() {
    let t = TinyTask::new();
    let (m, mask) = t.trained_sparse();
    let (f0, r0, o0) = accuracies(&t, &m);
    let rl = Rl::new(config());
    let u = t.unlearn(&rl, &m, Some(&mask), 0).unwrap();
    let (f1, r1, o1) = accuracies(&t, &u);
    eprintln!(
        "sparse RL: forget {f0:.3} -> {f1:.3}, retain {r0:.3} -> {r1:.3}, test (other classes) {o0:.3} -> {o1:.3}"
    );
    assert!(f0 >= 0.9, "the pruned model knows the class: {f0}");
    assert!(f1 <= 0.2, "forget accuracy {f0} -> {f1}");
    assert!(r1 >= 0.9, "retain accuracy {r0} -> {r1}");
    assert!(
        o1 >= o0 - 0.1,
        "test accuracy on the other classes {o0} -> {o1}"
    );
    assert_eq!(mask.violations(&u), 0);
    assert!(all_finite(&u));
    assert!(same_weights(
        &u,
        &t.unlearn(&rl, &m, Some(&mask), 0).unwrap()
    ));
}
