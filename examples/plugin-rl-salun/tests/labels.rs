//! `random_other_labels`: RL's relabelling of the forget set.

use unlearn_rl_salun::random_other_labels;

/// Pearson's chi-square statistic of observed counts against equal expected counts.
fn chi_square(counts: &[usize]) -> f64 {
    let n: usize = counts.iter().sum();
    let e = n as f64 / counts.len() as f64;
    counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum()
}

#[test]
fn random_labels_are_never_the_true_class_and_uniform_over_the_others() {
    let classes = 5;
    let n = 20_000;
    let truth: Vec<i64> = (0..n).map(|i| ((i * 7) % classes) as i64).collect();
    let labels = random_other_labels(&truth, classes, 11);
    assert_eq!(labels.len(), n);
    // counts[y][l]: true class y relabelled as l
    let mut counts = vec![vec![0usize; classes]; classes];
    for (&y, &l) in truth.iter().zip(&labels) {
        assert!((0..classes as i64).contains(&l), "label {l} out of range");
        assert_ne!(l, y, "a forget sample kept its true class");
        counts[y as usize][l as usize] += 1;
    }
    let mut chi = 0.0;
    for (y, row) in counts.iter().enumerate() {
        let others: Vec<usize> = (0..classes).filter(|&l| l != y).map(|l| row[l]).collect();
        // every other class is reached, and each about a quarter of the time
        let total: usize = others.iter().sum();
        assert_eq!(total, n / classes);
        for &c in &others {
            let p = c as f64 / total as f64;
            assert!((p - 0.25).abs() < 0.03, "class {y}: {row:?}");
        }
        chi += chi_square(&others);
    }
    // 5 true classes x 3 degrees of freedom: P(chi2_15 > 37.7) = 0.001
    assert!(chi < 37.7, "chi-square {chi} over {counts:?}");
}

#[test]
fn consecutive_draws_are_independent() {
    // With 3 classes and true label 0, each draw is 1 or 2 with probability 1/2; pairs of
    // consecutive draws must then be (1,1), (1,2), (2,1), (2,2) a quarter of the time each.
    let truth = vec![0i64; 8001];
    let labels = random_other_labels(&truth, 3, 5);
    let mut pairs = [0usize; 4];
    for w in labels.windows(2) {
        pairs[((w[0] - 1) * 2 + (w[1] - 1)) as usize] += 1;
    }
    // 3 degrees of freedom: P(chi2_3 > 16.27) = 0.001
    let chi = chi_square(&pairs);
    assert!(chi < 16.27, "{pairs:?}: chi-square {chi}");
}

#[test]
fn labels_depend_only_on_the_seed() {
    let classes = 5;
    let truth: Vec<i64> = (0..4000).map(|i| (i % classes) as i64).collect();
    let a = random_other_labels(&truth, classes, 42);
    assert_eq!(a, random_other_labels(&truth, classes, 42));
    // Another seed gives independent draws: they agree with probability 1/(classes - 1).
    let b = random_other_labels(&truth, classes, 43);
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
    // expected 0.25, standard error 0.007
    assert!((agree - 0.25).abs() < 0.03, "agreement {agree}");
    // A prefix of the forget set gets the same labels (draw i depends on i and the seed only).
    assert_eq!(random_other_labels(&truth[..100], classes, 42), a[..100]);
}

#[test]
fn two_classes_leave_exactly_one_choice() {
    let truth = [0i64, 1, 1, 0, 1];
    for seed in 0..5 {
        let want: Vec<i64> = truth.iter().map(|y| 1 - y).collect();
        assert_eq!(random_other_labels(&truth, 2, seed), want);
    }
}

#[test]
#[should_panic(expected = "at least 2 classes")]
fn one_class_has_no_other_label() {
    random_other_labels(&[0], 1, 0);
}
