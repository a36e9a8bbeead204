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

/// One attack score, with what is needed to judge whether it means anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MiaScore {
    /// The metric, in percent.
    pub value: f64,
    /// Accuracy of the SVC on its own shadow data, in percent.
    pub shadow_accuracy: f64,
    /// Share of the shadow set given the SVC's majority prediction, in percent.
    pub majority_share: f64,
    /// False when the SVC is (nearly) constant (majority share >= 99%): the value is then 0 or
    /// 100 for every method and must not be read as a result.
    pub informative: bool,
    /// Shadow samples per class.
    pub shadow_members: usize,
    pub shadow_nonmembers: usize,
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
        MiaScore {
            value,
            shadow_accuracy: self.shadow_accuracy,
            majority_share: self.majority_share,
            informative: self.majority_share < CONSTANT_ATTACK_SHARE,
            shadow_members: self.members,
            shadow_nonmembers: self.nonmembers,
        }
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
