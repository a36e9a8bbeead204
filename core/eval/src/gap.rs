//! Gap to retrain (the paper's Avg. Gap): |metric - metric(retrain)| for UA, MIA-Efficacy, RA and TA, and their
//! mean, the "Avg. Gap" by which approximate methods are ranked.

use serde::{Deserialize, Serialize};

use super::Metrics;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub ua: f64,
    /// On the headline (confidence) MIA-Efficacy; None when either side lacks it or its attack
    /// is uninformative (constant, or its shadow accuracy not above chance).
    pub mia: Option<f64>,
    pub ra: f64,
    pub ta: f64,
    /// Mean of the four (of three without an informative MIA).
    pub avg: f64,
}

pub fn gap(m: &Metrics, retrain: &Metrics) -> Gap {
    let ua = (m.ua - retrain.ua).abs();
    let ra = (m.ra - retrain.ra).abs();
    let ta = (m.ta - retrain.ta).abs();
    let informative = |x: &Metrics| x.mia().filter(|s| s.informative).map(|s| s.value);
    let mia = match (informative(m), informative(retrain)) {
        (Some(a), Some(b)) => Some((a - b).abs()),
        _ => None,
    };
    let parts: Vec<f64> = [Some(ua), mia, Some(ra), Some(ta)]
        .into_iter()
        .flatten()
        .collect();
    Gap {
        ua,
        mia,
        ra,
        ta,
        avg: parts.iter().sum::<f64>() / parts.len() as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MiaFeature, MiaScore};
    use std::collections::BTreeMap;

    fn metrics(ua: f64, mia: Option<f64>, ra: f64, ta: f64) -> Metrics {
        metrics_flagged(ua, mia, ra, ta, true)
    }

    fn metrics_flagged(ua: f64, mia: Option<f64>, ra: f64, ta: f64, informative: bool) -> Metrics {
        let mut e = BTreeMap::new();
        if let Some(v) = mia {
            e.insert(
                MiaFeature::Confidence,
                // 100% of 200 shadow samples is far above chance, 50% is chance.
                MiaScore::new(v, if informative { 100.0 } else { 50.0 }, 55.0, 100, 100),
            );
        }
        Metrics {
            ua,
            ra,
            ta,
            ta_full: ta,
            val: 0.0,
            mia_efficacy: e,
            mia_privacy: BTreeMap::new(),
            asr: None,
            asr_non_target: None,
        }
    }

    #[test]
    fn avg_gap_is_the_mean_absolute_difference() {
        let g = gap(
            &metrics(10.0, Some(20.0), 99.0, 90.0),
            &metrics(14.0, Some(12.0), 100.0, 91.0),
        );
        assert_eq!((g.ua, g.mia, g.ra, g.ta), (4.0, Some(8.0), 1.0, 1.0));
        assert_eq!(g.avg, 3.5);
        let g = gap(
            &metrics(10.0, None, 99.0, 90.0),
            &metrics(13.0, Some(12.0), 100.0, 92.0),
        );
        assert_eq!(g.avg, 2.0);
        // An uninformative attack's number is not a result: left out.
        let g = gap(
            &metrics_flagged(10.0, Some(100.0), 99.0, 90.0, false),
            &metrics(13.0, Some(0.0), 100.0, 92.0),
        );
        assert_eq!((g.mia, g.avg), (None, 2.0));
    }
}
