use unlearn_api::method::{MethodError, UnlearnMethod};
use unlearn_api::model::Model;
use unlearn_api::objective::l1_norm;
use unlearn_api::testing::TinyTask;
use unlearn_api::train::{TrainError, cross_entropy};
use unlearn_eval::Outputs;
use unlearn_ga::{Ga, GaConfig, GaL1, GaL1Config};

/// Mean cross-entropy of `model` on the forget set, in eval mode.
fn forget_loss(t: &TinyTask, model: &Model) -> f64 {
    let out = Outputs::compute(model, &t.data.train, 256).select(&t.forget.forget);
    cross_entropy(&out.logits, &out.labels)
        .unwrap()
        .double_value(&[])
}

#[test]
fn ga_raises_the_forget_loss() {
    let t = TinyTask::new();
    let m = t.trained();
    let before = forget_loss(&t, &m);
    let ga = Ga::new(GaConfig {
        epochs: 3,
        lr: 1e-2,
        batch_size: 8,
        ..Default::default()
    });
    let after = forget_loss(&t, &t.unlearn(&ga, &m, None, 0).unwrap());
    assert!(after > before + 1.0, "forget loss {before} -> {after}");
}

#[test]
fn ga_l1_shrinks_the_weights_that_ga_leaves() {
    let t = TinyTask::new();
    let m = t.trained();
    let settings = GaConfig {
        epochs: 3,
        lr: 1e-3,
        batch_size: 8,
        ..Default::default()
    };
    let ga = t.unlearn(&Ga::new(settings.clone()), &m, None, 0).unwrap();
    let l1 = GaL1Config {
        epochs: settings.epochs,
        lr: settings.lr,
        batch_size: settings.batch_size,
        alpha: 1e-2,
        ..Default::default()
    };
    let ga_l1 = t.unlearn(&GaL1::new(l1), &m, None, 0).unwrap();
    let norm = |m: &Model| l1_norm(m).unwrap().double_value(&[]);
    assert!(
        norm(&ga_l1) < norm(&ga) - 1.0,
        "{} vs {}",
        norm(&ga_l1),
        norm(&ga)
    );
}

#[test]
fn diverging_ga_is_an_error_naming_the_epoch() {
    let t = TinyTask::new();
    let m = t.trained();
    let ga = Ga::new(GaConfig {
        epochs: 5,
        lr: 1e8,
        batch_size: 8,
        ..Default::default()
    });
    match t.unlearn(&ga, &m, None, 0) {
        Err(MethodError::Train(e @ TrainError::NonFinite { .. })) => {
            assert!(
                e.to_string().contains("non-finite (NaN or inf) in epoch"),
                "{e}"
            )
        }
        other => panic!("expected a non-finite error, got {:?}", other.map(|_| ())),
    }
}
