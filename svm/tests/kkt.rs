//! Optimality of the solution, checked independently of the solver: the dual constraints and
//! the KKT conditions with the gradient recomputed from scratch (f64 kernel, no cache).
mod common;

use common::{Rng, rbf};
use unlearn_svm::{Gamma, Svc, SvcParams};

/// Overlapping 3-D Gaussian classes plus a block of exact duplicates.
fn problem(n: usize, seed: u64) -> (Vec<f32>, Vec<bool>) {
    let d = 3;
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(n * d);
    let mut y: Vec<bool> = Vec::with_capacity(n);
    for k in 0..n {
        if k >= 10 && k % 10 == 0 {
            // Duplicate an earlier point, sometimes with the other label.
            let src = (rng.next_u64() % k as u64) as usize;
            let row: Vec<f32> = x[src * d..(src + 1) * d].to_vec();
            x.extend(row);
            y.push(if rng.uniform() < 0.5 { y[src] } else { !y[src] });
            continue;
        }
        let member = rng.uniform() < 0.45;
        let shift = if member { 0.8 } else { 0.0 };
        for f in 0..d {
            x.push((rng.normal() + if f == 0 { shift } else { 0.0 }) as f32);
        }
        y.push(member);
    }
    (x, y)
}

struct Check {
    max_violation: f64,
    worst_free_margin: f64,
    n_free: usize,
}

/// alpha from the dual coefficients, then the constraints and the KKT gap
/// `max_{I_up} -y G - min_{I_low} -y G` with `G = Q alpha - e` computed exactly.
fn check(model: &Svc, x: &[f32], d: usize, y: &[bool], c: f64) -> Check {
    let n = y.len();
    let mut alpha = vec![0.0; n];
    for (&s, &coef) in model.support().iter().zip(model.dual_coef()) {
        let ys = if y[s] { 1.0 } else { -1.0 };
        assert!(coef * ys > 0.0, "dual coefficient sign must be the label's");
        alpha[s] = coef * ys;
    }
    let ysign: Vec<f64> = y.iter().map(|&t| if t { 1.0 } else { -1.0 }).collect();
    // Box constraints and the equality constraint.
    for &a in &alpha {
        assert!((0.0..=c).contains(&a), "alpha {a} outside [0, {c}]");
    }
    let balance: f64 = alpha.iter().zip(&ysign).map(|(a, s)| a * s).sum();
    assert!(
        balance.abs() <= 1e-6 * c.max(1.0),
        "sum y alpha = {balance}"
    );

    let gamma = model.gamma();
    let row = |i: usize| &x[i * d..(i + 1) * d];
    // -y_i G_i = y_i - sum_j y_j alpha_j K_ij
    let f: Vec<f64> = (0..n)
        .map(|i| {
            let s: f64 = (0..n)
                .filter(|&j| alpha[j] > 0.0)
                .map(|j| ysign[j] * alpha[j] * rbf(row(i), row(j), gamma))
                .sum();
            ysign[i] - s
        })
        .collect();
    let (mut m_up, mut m_low) = (f64::NEG_INFINITY, f64::INFINITY);
    for i in 0..n {
        let (pos, a) = (ysign[i] > 0.0, alpha[i]);
        let in_up = (pos && a < c) || (!pos && a > 0.0);
        let in_low = (pos && a > 0.0) || (!pos && a < c);
        if in_up {
            m_up = m_up.max(f[i]);
        }
        if in_low {
            m_low = m_low.min(f[i]);
        }
    }
    // Free support vectors lie on the margin: y f(x) = 1 (checks the intercept too).
    let dec = model.decision_function(x).unwrap();
    let mut worst = 0.0f64;
    let mut n_free = 0;
    for i in 0..n {
        if alpha[i] > 0.0 && alpha[i] < c {
            n_free += 1;
            worst = worst.max((ysign[i] * dec[i] - 1.0).abs());
        }
    }
    Check {
        max_violation: m_up - m_low,
        worst_free_margin: worst,
        n_free,
    }
}

#[test]
fn kkt_conditions_hold() {
    let d = 3;
    let (x, y) = problem(700, 3);
    for params in [
        SvcParams::default(),
        SvcParams {
            c: 0.7,
            gamma: Gamma::Value(2.0),
            tol: 1e-4,
            ..SvcParams::default()
        },
        SvcParams {
            c: 10.0,
            shrinking: false,
            ..SvcParams::default()
        },
    ] {
        let model = Svc::fit(&x, d, &y, &params).unwrap();
        let ck = check(&model, &x, d, &y, params.c);
        // The solver stops at a gap < tol on its f32-cached kernel; the exact gradient differs
        // by at most ~ C * n * 1e-7.
        let slack = params.c * y.len() as f64 * 1e-7;
        assert!(
            ck.max_violation < params.tol + slack,
            "{params:?}: KKT gap {} (tol {})",
            ck.max_violation,
            params.tol
        );
        assert!(ck.n_free > 0);
        assert!(
            ck.worst_free_margin < params.tol + slack,
            "{params:?}: free SV off the margin by {}",
            ck.worst_free_margin
        );
    }
}

#[test]
fn early_stop_respects_max_iter() {
    let d = 3;
    let (x, y) = problem(300, 5);
    let full = Svc::fit(&x, d, &y, &SvcParams::default()).unwrap();
    assert!(full.iterations() > 20);
    let params = SvcParams {
        max_iter: Some(20),
        ..SvcParams::default()
    };
    let m = Svc::fit(&x, d, &y, &params).unwrap();
    assert_eq!(m.iterations(), 20);
    let ck = check(&m, &x, d, &y, params.c);
    assert!(
        ck.max_violation > params.tol,
        "20 iterations should not be optimal"
    );
    let none = Svc::fit(
        &x,
        d,
        &y,
        &SvcParams {
            max_iter: Some(0),
            ..SvcParams::default()
        },
    )
    .unwrap();
    assert_eq!((none.iterations(), none.n_support()), (0, 0));
}

#[test]
fn cache_size_does_not_change_the_result() {
    // 800 overlapping 1-D samples: ~3000 iterations, so shrinking runs several times and swaps
    // rows and columns of whatever is cached. The kernel matrix needs 2.4 MB: 1 MB forces
    // evictions, and a 0 MB cache (two rows) thrashes. The numbers must be bit-identical.
    let mut rng = Rng::new(99);
    let n = 800;
    let y: Vec<bool> = (0..n).map(|_| rng.uniform() < 0.5).collect();
    let x: Vec<f32> = y
        .iter()
        .map(|&m| (rng.normal() + if m { 1.0 } else { 0.0 }) as f32)
        .collect();
    let fit = |cache_mb| {
        Svc::fit(
            &x,
            1,
            &y,
            &SvcParams {
                cache_mb,
                ..SvcParams::default()
            },
        )
        .unwrap()
    };
    let big = fit(200);
    assert!(big.iterations() > 2 * n, "{} iterations", big.iterations());
    let q: Vec<f32> = (0..=60).map(|k| k as f32 / 10.0 - 3.0).collect();
    let want = big.decision_function(&q).unwrap();
    for mb in [0, 1] {
        let m = fit(mb);
        assert_eq!(m.iterations(), big.iterations(), "cache {mb} MB");
        assert_eq!(m.support(), big.support());
        assert_eq!(m.dual_coef(), big.dual_coef());
        assert_eq!(m.intercept(), big.intercept());
        assert_eq!(m.decision_function(&q).unwrap(), want);
    }
    let ck = check(&big, &x, 1, &y, 3.0);
    assert!(ck.max_violation < 2e-3, "KKT gap {}", ck.max_violation);
}
