//! Linearly separable clusters: the SVC must classify them perfectly.
mod common;

use common::Rng;
use unlearn_svm::{Svc, SvcParams};

/// `n` points around `center` with standard deviation `sd`.
fn cluster(rng: &mut Rng, center: &[f64], sd: f64, n: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|_| {
            center
                .iter()
                .map(|&c| (c + sd * rng.normal()) as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn separable_clusters_are_classified_perfectly() {
    let mut rng = Rng::new(7);
    let (pos, neg) = ([3.0, 3.0], [-1.0, 0.0]);
    // Interleave the classes so the solver's class grouping is exercised.
    let mut x = Vec::new();
    let mut y = Vec::new();
    for k in 0..120 {
        let member = k % 3 != 0;
        let c = if member { &pos } else { &neg };
        x.extend(cluster(&mut rng, c, 0.6, 1));
        y.push(member);
    }
    let model = Svc::fit(&x, 2, &y, &SvcParams::default()).unwrap();
    assert!(!model.is_constant());
    assert!(model.n_support() > 0 && model.n_support() < 120);
    assert!(model.iterations() > 0);
    assert_eq!(
        model.predict(&x).unwrap(),
        y,
        "training accuracy must be 100%"
    );
    let dec = model.decision_function(&x).unwrap();
    for (d, &t) in dec.iter().zip(&y) {
        assert_eq!(*d > 0.0, t);
    }

    // Fresh points from each cluster.
    let new_pos = cluster(&mut rng, &pos, 0.6, 50);
    let new_neg = cluster(&mut rng, &neg, 0.6, 50);
    assert!(model.predict(&new_pos).unwrap().iter().all(|&p| p));
    assert!(model.predict(&new_neg).unwrap().iter().all(|&p| !p));
    // Cluster centres are well inside their side of the margin.
    let dc = model.decision_function(&[3.0, 3.0, -1.0, 0.0]).unwrap();
    assert!(dc[0] > 1.0 && dc[1] < -1.0, "{dc:?}");
}

#[test]
fn one_dimensional_threshold() {
    // Members above 0.6, non-members below 0.4: the boundary must fall in between.
    let mut rng = Rng::new(11);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for _ in 0..200 {
        let member = rng.uniform() < 0.5;
        let v = if member {
            0.6 + 0.4 * rng.uniform()
        } else {
            0.4 * rng.uniform()
        };
        x.push(v as f32);
        y.push(member);
    }
    let model = Svc::fit(&x, 1, &y, &SvcParams::default()).unwrap();
    assert_eq!(model.predict(&x).unwrap(), y);
    let grid: Vec<f32> = vec![0.0, 0.1, 0.3, 0.38, 0.62, 0.7, 0.9, 1.0];
    let p = model.predict(&grid).unwrap();
    assert_eq!(p, vec![false, false, false, false, true, true, true, true]);
}
