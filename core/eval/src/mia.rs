//! Membership-inference attacks (the paper's evaluation; `docs/reference.md` lists where we differ from its code): an RBF SVC (C = 3, gamma = 1 / n_features) fit on
//! shadow members (the start of `D_r`) and non-members (the start of `test`), scored per feature.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use unlearn_svm::{Svc, SvcParams, SvmError};

use super::Outputs;

/// A shadow SVC whose majority prediction covers at least this share of the shadow set is
/// treated as constant: its scores say nothing about membership and are flagged, not reported.
pub const CONSTANT_ATTACK_SHARE: f64 = 99.0;

#[derive(Debug, thiserror::Error)]
pub enum MiaError {
    #[error("MIA ({feature}): {what} is empty")]
    Empty {
        feature: MiaFeature,
        what: &'static str,
    },
    #[error("MIA ({feature}): {source}")]
    Svm {
        feature: MiaFeature,
        source: SvmError,
    },
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MiaFeature {
    /// p_y, the softmax probability of the true label (the paper's reported feature).
    Confidence,
    /// -sum_i p_i log p_i.
    Entropy,
    /// Song & Mittal's modified entropy: -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i).
    MEntropy,
    /// 1 if the prediction is right, else 0.
    Correctness,
    /// The whole softmax vector.
    Prob,
}

impl MiaFeature {
    pub const ALL: [MiaFeature; 5] = [
        Self::Confidence,
        Self::Entropy,
        Self::MEntropy,
        Self::Correctness,
        Self::Prob,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Confidence => "confidence",
            Self::Entropy => "entropy",
            Self::MEntropy => "m_entropy",
            Self::Correctness => "correctness",
            Self::Prob => "prob",
        }
    }
}

impl std::fmt::Display for MiaFeature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Logs are clamped here (as in Song & Mittal's code) so that p = 0 or 1 gives finite features.
const LOG_FLOOR: f64 = 1e-30;

/// The feature matrix (row-major, `n x dim`) of a set of outputs, and `dim`.
pub fn features(out: &Outputs, feature: MiaFeature) -> (Vec<f32>, usize) {
    let _g = tch::no_grad_guard();
    let p = out.logits.to_kind(Kind::Double).softmax(1, Kind::Double);
    let y = out.labels.unsqueeze(1);
    let col: Tensor = match feature {
        MiaFeature::Confidence => p.gather(1, &y, false).squeeze_dim(1),
        MiaFeature::Entropy => {
            -(&p * p.clamp_min(LOG_FLOOR).log()).sum_dim_intlist(1, false, Kind::Double)
        }
        MiaFeature::MEntropy => {
            let onehot = p.zeros_like().scatter_value(1, &y, 1.0);
            let log_p = p.clamp_min(LOG_FLOOR).log();
            let log_not_p = (p.neg() + 1.0).clamp_min(LOG_FLOOR).log();
            // true class: (1 - p_y) log p_y; others: p_i log(1 - p_i)
            let terms = &onehot * (p.neg() + 1.0) * log_p + (onehot.neg() + 1.0) * &p * log_not_p;
            -terms.sum_dim_intlist(1, false, Kind::Double)
        }
        MiaFeature::Correctness => p
            .argmax(1, false)
            .eq_tensor(&out.labels)
            .to_kind(Kind::Double),
        MiaFeature::Prob => p.shallow_clone(),
    };
    let dim = if col.dim() == 1 {
        1
    } else {
        col.size()[1] as usize
    };
    let v = Vec::<f32>::try_from(col.to_kind(Kind::Float).flatten(0, -1)).expect("f32 features");
    (v, dim)
}

/// Confidence level of the shadow-accuracy interval by which an attack is judged.
pub const SHADOW_CONFIDENCE: f64 = 0.95;

/// Why an attack's score is not a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Uninformative {
    /// The SVC gives one prediction to at least [`CONSTANT_ATTACK_SHARE`]% of its shadow set:
    /// every method then scores 0 or 100.
    Constant,
    /// The SVC's shadow accuracy is not above chance: the exact 95% interval of its accuracy on
    /// the shadow set reaches the share of the larger shadow class (50%: the classes are equal).
    Chance,
}

/// One attack score, with what is needed to judge whether it means anything.
///
/// Stored (results.json, row cache entries) with its judgement, but read back from the measured
/// fields alone: `shadow_accuracy_ci`, `informative` and `uninformative` are recomputed on
/// deserialisation, so results written before a rule changed are judged by the current rule and
/// a stored flag is never misread.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "MeasuredScore")]
pub struct MiaScore {
    /// The metric, in percent.
    pub value: f64,
    /// Accuracy of the SVC on its own shadow data, in percent.
    pub shadow_accuracy: f64,
    /// Share of the shadow set given the SVC's majority prediction, in percent.
    pub majority_share: f64,
    /// False when the value must not be read as a result (see `uninformative`).
    pub informative: bool,
    /// Shadow samples per class.
    pub shadow_members: usize,
    pub shadow_nonmembers: usize,
    /// Clopper-Pearson interval (two-sided, [`SHADOW_CONFIDENCE`]) of `shadow_accuracy`, in
    /// percent.
    pub shadow_accuracy_ci: [f64; 2],
    /// Why the score is not a result; None when it is informative.
    pub uninformative: Option<Uninformative>,
}

/// The fields of a [`MiaScore`] that were measured; the rest follows from them.
#[derive(Deserialize)]
struct MeasuredScore {
    value: f64,
    shadow_accuracy: f64,
    majority_share: f64,
    shadow_members: usize,
    shadow_nonmembers: usize,
}

impl From<MeasuredScore> for MiaScore {
    fn from(m: MeasuredScore) -> Self {
        MiaScore::new(
            m.value,
            m.shadow_accuracy,
            m.majority_share,
            m.shadow_members,
            m.shadow_nonmembers,
        )
    }
}

impl MiaScore {
    /// A score and its judgement. `shadow_accuracy` is `100 * correct / n` over the
    /// `n = members + nonmembers` shadow samples, so `correct` is recovered exactly by rounding.
    pub fn new(
        value: f64,
        shadow_accuracy: f64,
        majority_share: f64,
        shadow_members: usize,
        shadow_nonmembers: usize,
    ) -> MiaScore {
        let n = shadow_members + shadow_nonmembers;
        let correct = ((shadow_accuracy / 100.0 * n as f64).round().max(0.0) as usize).min(n);
        let (lo, hi) = clopper_pearson(correct, n, SHADOW_CONFIDENCE);
        // Chance is the larger class's share: what always answering that class scores.
        let chance = shadow_members.max(shadow_nonmembers) as f64 / n.max(1) as f64;
        let uninformative = if majority_share >= CONSTANT_ATTACK_SHARE {
            Some(Uninformative::Constant)
        } else if lo <= chance {
            Some(Uninformative::Chance)
        } else {
            None
        };
        MiaScore {
            value,
            shadow_accuracy,
            majority_share,
            informative: uninformative.is_none(),
            shadow_members,
            shadow_nonmembers,
            shadow_accuracy_ci: [100.0 * lo, 100.0 * hi],
            uninformative,
        }
    }
}

/// The exact (Clopper & Pearson, Biometrika 1934) two-sided interval, at confidence `level`, of a
/// binomial proportion with `k` successes in `n` trials: the `p` whose one-sided tail
/// probabilities of the observed `k` are both above `(1 - level) / 2`. The lower end solves
/// P(X >= k | p) = (1 - level) / 2 (0 when k = 0), the upper P(X <= k | p) = (1 - level) / 2
/// (1 when k = n). `(0, 1)` for n = 0.
pub fn clopper_pearson(k: usize, n: usize, level: f64) -> (f64, f64) {
    assert!(k <= n, "{k} successes in {n} trials");
    if n == 0 {
        return (0.0, 1.0);
    }
    let tail = (1.0 - level) / 2.0;
    let ln_c = ln_choose(n, k);
    let phat = k as f64 / n as f64;
    // The tail grows with p (lower end) or falls with it (upper end); bisect on the side of
    // p-hat where the walk in `binomial_tail` starts at the mode's far side and stays short.
    let lo = if k == 0 {
        0.0
    } else {
        bisect(0.0, phat, |p| binomial_tail(n, k, p, ln_c, true) >= tail)
    };
    let hi = if k == n {
        1.0
    } else {
        bisect(phat, 1.0, |p| binomial_tail(n, k, p, ln_c, false) <= tail)
    };
    (lo, hi)
}

/// The point of `[lo, hi]` where `above` turns from false to true (it is monotone).
fn bisect(mut lo: f64, mut hi: f64, above: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if above(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    0.5 * (lo + hi)
}

/// ln C(n, k), as a sum of logs (exact to rounding; no gamma function needed).
fn ln_choose(n: usize, k: usize) -> f64 {
    let k = k.min(n - k);
    (1..=k).map(|i| ((n - k + i) as f64 / i as f64).ln()).sum()
}

/// P(X >= k) (`upper`) or P(X <= k) for X ~ Binomial(n, p); `ln_c` = ln C(n, k).
/// Sums the probability mass from k away from it, each term from the last by the ratio of
/// consecutive binomial terms, in logs so that a far-off first term does not underflow to a
/// zero that never grows; stops once past the mode and the terms no longer count.
fn binomial_tail(n: usize, k: usize, p: f64, ln_c: f64, upper: bool) -> f64 {
    if p <= 0.0 {
        return if upper && k > 0 { 0.0 } else { 1.0 };
    }
    if p >= 1.0 {
        return if !upper && k < n { 0.0 } else { 1.0 };
    }
    let (ln_p, ln_q) = (p.ln(), (-p).ln_1p());
    let mode = n as f64 * p;
    let mut ln_term = ln_c + k as f64 * ln_p + (n - k) as f64 * ln_q;
    let mut sum = 0.0;
    let mut i = k;
    loop {
        let term = ln_term.exp();
        sum += term;
        let past_mode = if upper {
            i as f64 >= mode
        } else {
            i as f64 <= mode
        };
        if past_mode && (term <= sum * 1e-17 || ln_term < -750.0) {
            break;
        }
        if upper {
            if i == n {
                break;
            }
            // C(n, i+1) / C(n, i) = (n - i) / (i + 1)
            ln_term += ((n - i) as f64 / (i + 1) as f64).ln() + ln_p - ln_q;
            i += 1;
        } else {
            if i == 0 {
                break;
            }
            ln_term += (i as f64 / (n - i + 1) as f64).ln() + ln_q - ln_p;
            i -= 1;
        }
    }
    sum.min(1.0)
}

struct Attack {
    svc: Svc,
    feature: MiaFeature,
    shadow_accuracy: f64,
    majority_share: f64,
    members: usize,
    nonmembers: usize,
}

impl Attack {
    fn fit(
        members: &Outputs,
        nonmembers: &Outputs,
        feature: MiaFeature,
    ) -> Result<Attack, MiaError> {
        if members.is_empty() {
            return Err(MiaError::Empty {
                feature,
                what: "the shadow member set",
            });
        }
        if nonmembers.is_empty() {
            return Err(MiaError::Empty {
                feature,
                what: "the shadow non-member set",
            });
        }
        let (xm, dim) = features(members, feature);
        let (xn, _) = features(nonmembers, feature);
        let x = [xm, xn].concat();
        let y: Vec<bool> = (0..members.len())
            .map(|_| true)
            .chain((0..nonmembers.len()).map(|_| false))
            .collect();
        let svm = |source| MiaError::Svm { feature, source };
        let svc = Svc::fit(&x, dim, &y, &SvcParams::default()).map_err(svm)?;
        let pred = svc.predict(&x).map_err(svm)?;
        let n = y.len() as f64;
        let correct = pred.iter().zip(&y).filter(|(p, t)| p == t).count() as f64;
        let member_share = pred.iter().filter(|&&p| p).count() as f64 / n;
        Ok(Attack {
            svc,
            feature,
            shadow_accuracy: 100.0 * correct / n,
            majority_share: 100.0 * member_share.max(1.0 - member_share),
            members: members.len(),
            nonmembers: nonmembers.len(),
        })
    }

    /// Share of `target` predicted member, in percent.
    fn member_share(&self, target: &Outputs) -> Result<f64, MiaError> {
        let (x, _) = features(target, self.feature);
        let pred = self.svc.predict(&x).map_err(|source| MiaError::Svm {
            feature: self.feature,
            source,
        })?;
        Ok(100.0 * pred.iter().filter(|&&p| p).count() as f64 / pred.len() as f64)
    }

    fn score(&self, value: f64) -> MiaScore {
        MiaScore::new(
            value,
            self.shadow_accuracy,
            self.majority_share,
            self.members,
            self.nonmembers,
        )
    }
}

/// MIA-Efficacy: shadow = first n of `D_r` vs first n of `test` (n = the smaller size); the score
/// is the share of `D_f` predicted non-member. Higher means `D_f` looks less like training data.
pub fn efficacy(
    retain: &Outputs,
    test: &Outputs,
    forget: &Outputs,
    feature: MiaFeature,
) -> Result<MiaScore, MiaError> {
    if forget.is_empty() {
        return Err(MiaError::Empty {
            feature,
            what: "the forget set",
        });
    }
    let n = retain.len().min(test.len());
    let attack = Attack::fit(&retain.head(n), &test.head(n), feature)?;
    Ok(attack.score(100.0 - attack.member_share(forget)?))
}

/// MIA-Privacy, as the reference code computes it: with n = |test| / 2 (5,000 on CIFAR-10),
/// shadow members = the first n of `D_r`, shadow non-members = the first n of `test`; targets =
/// the rest of each. The score is the mean of the share of the rest of `D_r` predicted member and
/// of the rest of `test` predicted non-member. Where `D_r` is smaller than `test` (tiny sets
/// only), n = |D_r| / 2, so that the shadow classes stay balanced and both keep targets.
pub fn privacy(
    retain: &Outputs,
    test: &Outputs,
    feature: MiaFeature,
) -> Result<MiaScore, MiaError> {
    let n = privacy_shadow_size(retain.len(), test.len());
    let attack = Attack::fit(&retain.head(n), &test.head(n), feature)?;
    let rest_r = retain.tail_from(n);
    let rest_t = test.tail_from(n);
    if rest_r.is_empty() || rest_t.is_empty() {
        return Err(MiaError::Empty {
            feature,
            what: "the privacy target set",
        });
    }
    let member_acc = attack.member_share(&rest_r)?;
    let nonmember_acc = 100.0 - attack.member_share(&rest_t)?;
    Ok(attack.score((member_acc + nonmember_acc) / 2.0))
}

/// Shadow samples per class of MIA-Privacy: `|test| / 2`, or `|D_r| / 2` when `D_r` is smaller.
pub fn privacy_shadow_size(retain: usize, test: usize) -> usize {
    (test / 2).min(retain / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(probs: &[[f64; 3]], labels: &[i64]) -> Outputs {
        // logits = log p reproduce p exactly under softmax
        let flat: Vec<f64> = probs.iter().flatten().map(|p| p.ln()).collect();
        Outputs {
            logits: Tensor::from_slice(&flat)
                .view([probs.len() as i64, 3])
                .to_kind(Kind::Float),
            labels: Tensor::from_slice(labels),
        }
    }

    #[test]
    fn features_match_hand_values() {
        let o = outputs(&[[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], &[0, 1]);
        let close = |a: f32, b: f64| assert!((a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        let (c, d) = features(&o, MiaFeature::Confidence);
        assert_eq!(d, 1);
        close(c[0], 0.7);
        close(c[1], 0.25);
        let (e, _) = features(&o, MiaFeature::Entropy);
        close(
            e[0],
            -(0.7f64 * 0.7f64.ln() + 0.2 * 0.2f64.ln() + 0.1 * 0.1f64.ln()),
        );
        close(e[1], -(2.0 * 0.25 * 0.25f64.ln() + 0.5 * 0.5f64.ln()));
        let (m, _) = features(&o, MiaFeature::MEntropy);
        // row 0, y = 0: -(0.3 ln 0.7) - 0.2 ln 0.8 - 0.1 ln 0.9
        close(
            m[0],
            -(0.3 * 0.7f64.ln()) - 0.2 * 0.8f64.ln() - 0.1 * 0.9f64.ln(),
        );
        // row 1, y = 1 (the reference code's defect would use column 0 or 1 for all rows;
        // per row: -(0.75 ln 0.25) - 0.25 ln 0.75 - 0.5 ln 0.5)
        close(
            m[1],
            -(0.75 * 0.25f64.ln()) - 0.25 * 0.75f64.ln() - 0.5 * 0.5f64.ln(),
        );
        let (k, _) = features(&o, MiaFeature::Correctness);
        assert_eq!(k, vec![1.0, 0.0]);
        let (p, d) = features(&o, MiaFeature::Prob);
        assert_eq!(d, 3);
        close(p[5], 0.5);
    }

    #[test]
    fn features_are_finite_at_certainty() {
        let o = Outputs {
            logits: Tensor::from_slice(&[200.0f32, 0.0, 0.0]).view([1, 3]),
            labels: Tensor::from_slice(&[1i64]),
        };
        for f in MiaFeature::ALL {
            assert!(features(&o, f).0.iter().all(|v| v.is_finite()), "{f}");
        }
    }

    /// Members are confident (p_y = 0.95), non-members not (p_y = 0.4): the attack separates them.
    #[test]
    fn efficacy_and_privacy_on_separable_confidences() {
        let member = [0.95, 0.03, 0.02];
        let nonmember = [0.4, 0.3, 0.3];
        let retain = outputs(&vec![member; 40], &[0; 40]);
        let test = outputs(&vec![nonmember; 30], &[0; 30]);
        // Forget set: 3 confident (look like members), 1 not.
        let forget = outputs(&[member, member, member, nonmember], &[0; 4]);
        let s = efficacy(&retain, &test, &forget, MiaFeature::Confidence).unwrap();
        assert_eq!(s.value, 25.0);
        assert_eq!(s.shadow_accuracy, 100.0);
        assert_eq!((s.shadow_members, s.shadow_nonmembers), (30, 30));
        assert!(s.informative && s.majority_share == 50.0);
        let p = privacy(&retain, &test, MiaFeature::Confidence).unwrap();
        assert_eq!(p.value, 100.0);
        // n = |test| / 2 = 15 of each; targets: the other 25 of D_r and 15 of test.
        assert_eq!((p.shadow_members, p.shadow_nonmembers), (15, 15));
    }

    /// Members and non-members identical: the SVC predicts one class and the score is flagged.
    #[test]
    fn constant_attack_is_flagged() {
        let same = [0.9, 0.05, 0.05];
        let retain = outputs(&vec![same; 20], &[0; 20]);
        let test = outputs(&vec![same; 20], &[0; 20]);
        let s = efficacy(&retain, &test, &retain.head(5), MiaFeature::Confidence).unwrap();
        assert!(!s.informative, "{s:?}");
        assert_eq!(s.majority_share, 100.0);
        assert!(s.value == 0.0 || s.value == 100.0);
    }
    /// Clopper-Pearson ends against values computed independently (mpmath, 40 digits) in two
    /// ways that agree to 1e-20: bisection on the exact binomial sum, and bisection on the
    /// regularised incomplete beta function (the ends are the beta quantiles
    /// B^-1(0.025; k, n - k + 1) and B^-1(0.975; k + 1, n - k)).
    #[test]
    // The values as mpmath printed them (17 digits).
    #[allow(clippy::excessive_precision)]
    fn clopper_pearson_matches_independent_values() {
        let cases = [
            (0, 10, 0.0, 0.30849710781876082),
            (10, 10, 0.69150289218123918, 1.0),
            (3, 10, 0.066739511177734467, 0.6524528500599973),
            (7, 20, 0.15390920478454116, 0.59218853453282812),
            (52, 100, 0.41778976540630668, 0.6209945198220414),
            (60, 100, 0.49720915042233482, 0.6967052312971226),
            (310, 600, 0.47585009106768908, 0.55731845070990529),
            (1034, 2000, 0.49483825376595794, 0.53911183823646396),
            (607, 1174, 0.48801301117481487, 0.54597299923082604),
        ];
        for (k, n, lo, hi) in cases {
            let (l, h) = clopper_pearson(k, n, 0.95);
            assert!(
                (l - lo).abs() < 1e-10 && (h - hi).abs() < 1e-10,
                "{k}/{n}: ({l}, {h})"
            );
        }
        // CIFAR-10's efficacy shadow set (2 x 10,000), against a float sum of lgamma terms
        // (Python's math.fsum; it agrees with mpmath to 1e-14 on 607 / 1174).
        let (l, h) = clopper_pearson(10340, 20000, 0.95);
        assert!((l - 0.5100474380128208).abs() < 1e-10, "{l}");
        assert!((h - 0.5239476184936829).abs() < 1e-10, "{h}");
        // Closed forms at the edges: k = 0 gives 1 - (0.025)^(1/n) above, k = n 0.025^(1/n).
        let (_, h) = clopper_pearson(0, 37, 0.95);
        assert!((h - (1.0 - 0.025f64.powf(1.0 / 37.0))).abs() < 1e-12);
        let (l, _) = clopper_pearson(37, 37, 0.95);
        assert!((l - 0.025f64.powf(1.0 / 37.0)).abs() < 1e-12);
        assert_eq!(clopper_pearson(0, 0, 0.95), (0.0, 1.0));
    }

    /// The tails against the exact sums (mpmath, 40 digits).
    #[test]
    // The values as mpmath printed them (17 digits).
    #[allow(clippy::excessive_precision)]
    fn binomial_tails_match_exact_sums() {
        let cases = [
            (3, 10, 0.2, 0.32220047360000003, 0.87912611839999998),
            (7, 20, 0.5, 0.94234085083007813, 0.13158798217773438),
            (60, 100, 0.55, 0.18305694421446569, 0.86574595894530788),
            (1034, 2000, 0.5, 0.067035034281564149, 0.93858165846995132),
        ];
        for (k, n, p, ge, le) in cases {
            let c = ln_choose(n, k);
            let (u, l) = (
                binomial_tail(n, k, p, c, true),
                binomial_tail(n, k, p, c, false),
            );
            // Relative 1e-10: ln C(n, k) and the term ratios add rounding over ~k logs.
            let close = |a: f64, b: f64| (a - b).abs() < 1e-10 * b;
            assert!(close(u, ge) && close(l, le), "{k}/{n} at {p}: {u} {l}");
        }
    }

    /// The judgement: constant before chance; chance when the interval reaches the larger class's
    /// share; the stored flags are recomputed from the measured fields when read back, so a file
    /// written under the old rule (constant attacks only) is judged by the current one.
    #[test]
    // The values as mpmath printed them (17 digits).
    #[allow(clippy::excessive_precision)]
    fn scores_are_judged_by_their_shadow_interval() {
        // 60 of 100 right: the interval (49.72%, 69.67%) reaches 50%.
        let s = MiaScore::new(30.0, 60.0, 70.0, 50, 50);
        assert_eq!(s.uninformative, Some(Uninformative::Chance));
        assert!(!s.informative);
        assert!((s.shadow_accuracy_ci[0] - 49.720915042233482).abs() < 1e-8);
        // 62 of 100: lower end above 50%.
        let s = MiaScore::new(30.0, 62.0, 70.0, 50, 50);
        assert!(s.informative && s.uninformative.is_none(), "{s:?}");
        assert!(s.shadow_accuracy_ci[0] > 50.0);
        // A constant attack says so, whatever its interval.
        let s = MiaScore::new(0.0, 50.0, 100.0, 50, 50);
        assert_eq!(s.uninformative, Some(Uninformative::Constant));
        // Unbalanced shadow classes (70 + 30): chance is 70%; 75 of 100 is not above it.
        let s = MiaScore::new(30.0, 75.0, 80.0, 70, 30);
        assert_eq!(s.uninformative, Some(Uninformative::Chance));

        // An attack like the demo's dense confidence one (about 2 x 360 shadow digits) as an
        // old results.json stored it, informative by the old rule: 372 of 720 right (51.67%),
        // interval (47.95%, 55.37%) by mpmath's incomplete beta and its binomial sum alike.
        let old = r#"{"value": 1.7, "shadow_accuracy": 51.666666666666664,
            "majority_share": 98.3, "informative": true,
            "shadow_members": 360, "shadow_nonmembers": 360}"#;
        let s: MiaScore = serde_json::from_str(old).unwrap();
        assert_eq!(s.uninformative, Some(Uninformative::Chance));
        assert!((s.shadow_accuracy_ci[0] - 47.94662556026765).abs() < 1e-8);
        assert!((s.shadow_accuracy_ci[1] - 55.373001070540526).abs() < 1e-8);
        assert!(!s.informative);
        // Round trip: what is written reads back the same.
        let back: MiaScore = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.shadow_accuracy_ci, s.shadow_accuracy_ci);
        assert_eq!(back.uninformative, s.uninformative);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["uninformative"], "chance");
        assert_eq!(json["informative"], false);
    }

    /// The privacy split by index: shadow = the first n = |test| / 2 of `D_r` and of `test`;
    /// targets = the rest of each. The confident (member-like) rows are placed so that any other
    /// split gives another score.
    #[test]
    fn privacy_shadow_and_target_sets_by_index() {
        let m = [0.95, 0.03, 0.02];
        let n = [0.4, 0.3, 0.3];
        // D_r (40): shadow part 0..15 all member-like; targets 15..40: 10 member-like, 15 not.
        let mut retain = vec![m; 15];
        retain.extend(vec![m; 10]);
        retain.extend(vec![n; 15]);
        // test (30): shadow part 0..15 all non-member-like; targets 15..30: 3 member-like.
        let mut test = vec![n; 15];
        test.extend(vec![m; 3]);
        test.extend(vec![n; 12]);
        let (retain, test) = (outputs(&retain, &[0; 40]), outputs(&test, &[0; 30]));
        assert_eq!(privacy_shadow_size(40, 30), 15);
        let p = privacy(&retain, &test, MiaFeature::Confidence).unwrap();
        assert_eq!((p.shadow_members, p.shadow_nonmembers), (15, 15));
        assert_eq!(p.shadow_accuracy, 100.0);
        // members among D_r's targets: 10 / 25 = 40%; non-members among test's: 12 / 15 = 80%.
        assert!((p.value - 60.0).abs() < 1e-9, "{}", p.value);
        // A small D_r caps n at |D_r| / 2 so that it keeps targets.
        assert_eq!(privacy_shadow_size(10, 30), 5);
        assert_eq!(privacy_shadow_size(10_000, 9_000), 4_500);
        assert_eq!(privacy_shadow_size(40_500, 10_000), 5_000);
    }
}
