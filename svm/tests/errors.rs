//! Degenerate and invalid input: a constant model for one class, errors (never panics) otherwise.
use unlearn_svm::{Gamma, Svc, SvcParams, SvmError};

#[test]
fn single_class_gives_constant_model() {
    let x = [0.1f32, 0.5, 0.9, 0.9];
    for class in [true, false] {
        let m = Svc::fit(&x, 1, &[class; 4], &SvcParams::default()).unwrap();
        assert!(m.is_constant());
        assert_eq!(m.n_support(), 0);
        assert_eq!(m.iterations(), 0);
        assert_eq!(m.predict(&[0.0, 0.3, 7.0]).unwrap(), vec![class; 3]);
        let want = if class { 1.0 } else { -1.0 };
        assert_eq!(m.decision_function(&[0.0, 2.0]).unwrap(), vec![want; 2]);
        // Shape checks still apply to a constant model.
        assert!(matches!(
            m.predict(&[f32::NAN]),
            Err(SvmError::NonFinite { .. })
        ));
    }
    // A single sample is a single class too.
    let m = Svc::fit(&[1.0, 2.0], 2, &[true], &SvcParams::default()).unwrap();
    assert!(m.is_constant());
    assert_eq!(m.predict(&[0.0, 0.0]).unwrap(), vec![true]);
}

#[test]
fn two_samples_fit() {
    let m = Svc::fit(&[0.0, 1.0], 1, &[false, true], &SvcParams::default()).unwrap();
    assert!(!m.is_constant());
    assert_eq!(m.predict(&[0.0, 1.0]).unwrap(), vec![false, true]);
    assert_eq!(m.n_support(), 2);
}

#[test]
fn bad_input_is_an_error() {
    let p = SvcParams::default();
    assert_eq!(Svc::fit(&[], 1, &[], &p).err(), Some(SvmError::EmptyInput));
    assert_eq!(
        Svc::fit(&[1.0], 0, &[true], &p).err(),
        Some(SvmError::EmptyInput)
    );
    assert_eq!(
        Svc::fit(&[1.0, 2.0, 3.0], 2, &[true], &p).err(),
        Some(SvmError::ShapeMismatch {
            len: 3,
            n_features: 2
        })
    );
    assert_eq!(
        Svc::fit(&[1.0, 2.0, 3.0], 1, &[true, false], &p).err(),
        Some(SvmError::LabelLengthMismatch {
            labels: 2,
            samples: 3
        })
    );
    match Svc::fit(&[1.0, 2.0, 3.0, f32::INFINITY], 2, &[true, false], &p) {
        Err(SvmError::NonFinite {
            sample, feature, ..
        }) => assert_eq!((sample, feature), (1, 1)),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(matches!(
        Svc::fit(&[f32::NAN, 2.0], 1, &[true, false], &p),
        Err(SvmError::NonFinite {
            sample: 0,
            feature: 0,
            ..
        })
    ));

    let x = [0.0f32, 1.0];
    let y = [false, true];
    let bad = [
        SvcParams {
            c: 0.0,
            ..p.clone()
        },
        SvcParams {
            c: -1.0,
            ..p.clone()
        },
        SvcParams {
            c: f64::NAN,
            ..p.clone()
        },
        SvcParams {
            tol: 0.0,
            ..p.clone()
        },
        SvcParams {
            tol: f64::INFINITY,
            ..p.clone()
        },
        SvcParams {
            gamma: Gamma::Value(0.0),
            ..p.clone()
        },
        SvcParams {
            gamma: Gamma::Value(-2.0),
            ..p.clone()
        },
        SvcParams {
            gamma: Gamma::Value(f64::NAN),
            ..p.clone()
        },
    ];
    let names = ["c", "c", "c", "tol", "tol", "gamma", "gamma", "gamma"];
    for (params, want) in bad.iter().zip(names) {
        match Svc::fit(&x, 1, &y, params) {
            Err(SvmError::InvalidParameter { name, .. }) => assert_eq!(name, want),
            other => panic!("{params:?}: {:?}", other.map(|_| ())),
        }
    }
    // Errors display without panicking.
    assert!(SvmError::EmptyInput.to_string().contains("empty"));
}

#[test]
fn bad_query_is_an_error() {
    let m = Svc::fit(
        &[0.0, 0.0, 1.0, 1.0],
        2,
        &[false, true],
        &SvcParams::default(),
    )
    .unwrap();
    assert_eq!(
        m.predict(&[1.0, 2.0, 3.0]).err(),
        Some(SvmError::ShapeMismatch {
            len: 3,
            n_features: 2
        })
    );
    assert!(matches!(
        m.decision_function(&[1.0, f32::NEG_INFINITY]),
        Err(SvmError::NonFinite {
            sample: 0,
            feature: 1,
            ..
        })
    ));
    assert_eq!(m.predict(&[]).unwrap(), Vec::<bool>::new());
    assert_eq!(m.decision_function(&[]).unwrap(), Vec::<f64>::new());
}

#[test]
fn huge_values_do_not_break_the_kernel() {
    // Squared distances of ~1e77: kernel values underflow to exactly 0, no NaN.
    let x = [-3.0e38f32, 3.0e38, -3.0e38, 3.0e38];
    let y = [false, true, false, true];
    let m = Svc::fit(&x, 1, &y, &SvcParams::default()).unwrap();
    let d = m.decision_function(&x).unwrap();
    assert!(d.iter().all(|v| v.is_finite()), "{d:?}");
    assert_eq!(m.predict(&x).unwrap(), y);
}

#[test]
fn identical_points_with_both_labels() {
    // A singular kernel matrix (all ones): the solver must terminate; every query gets the
    // majority label's sign.
    let x = [0.5f32; 10];
    let y = [
        true, true, true, false, true, false, true, true, false, true,
    ];
    let m = Svc::fit(&x, 1, &y, &SvcParams::default()).unwrap();
    assert!(!m.is_constant());
    assert!(m.iterations() < 100);
    assert_eq!(m.predict(&[0.5, 0.0, 3.0]).unwrap(), vec![true; 3]);
}

#[test]
fn exact_tie_predicts_true_like_sklearn() {
    // Two symmetric points: the decision value midway is exactly 0, where scikit-learn (libsvm's
    // vote) predicts classes_[1] = true.
    for y in [[false, true], [true, false]] {
        let m = Svc::fit(&[0.0, 1.0], 1, &y, &SvcParams::default()).unwrap();
        assert_eq!(m.intercept(), 0.0);
        assert_eq!(m.decision_function(&[0.5]).unwrap()[0], 0.0);
        assert_eq!(m.predict(&[0.5, 0.0, 1.0]).unwrap(), vec![true, y[0], y[1]]);
    }
}
