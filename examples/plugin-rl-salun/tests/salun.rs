//! `SalUn`: the saliency mask against an independent f64 computation, and training that moves
//! only the salient weights.

mod common;

use common::{accuracy, all_finite, flat_params, same_weights};
use unlearn_api::mask::Mask;
use unlearn_api::method::{BuiltinMethod, Kind, UnlearnMethod, parse_config};
use unlearn_api::model::Model;
use unlearn_api::tch::{Kind as TKind, Tensor};
use unlearn_api::testing::TinyTask;
use unlearn_api::train::Stream;
use unlearn_rl_salun::{Rl, RlConfig, SalUn, SalUnConfig, SaliencyMask, saliency_mask};

/// `|sum over the forget set of d CE_i / dw|` for every trainable weight, flat in name order,
/// accumulated in f64 one sample at a time through the ordinary `.grad` path (eval mode), with
/// the gradients of pruned weights set to 0.
fn saliency_f64(t: &TinyTask, model: &Model, mask: Option<&Mask>) -> Vec<f64> {
    let params = model.parameters();
    let mut sums: Vec<Vec<f64>> = params.values().map(|p| vec![0.0; p.numel()]).collect();
    let labels = t.data.train.labels_vec();
    for &row in &t.forget.forget {
        model.zero_grad();
        let idx = Tensor::from_slice(&[row as i64]);
        let logits = model.forward_t(&t.data.train.batch_images(&idx), false);
        let loss = logits.cross_entropy_for_logits(&Tensor::from_slice(&[labels[row]]));
        loss.backward();
        for ((name, p), sum) in params.iter().zip(&mut sums) {
            let g = Vec::<f64>::try_from(p.grad().to_kind(TKind::Double).flatten(0, -1)).unwrap();
            let keep: Vec<bool> = match mask.and_then(|m| m.get(name)) {
                Some(m) => Vec::<f32>::try_from(m.flatten(0, -1))
                    .unwrap()
                    .into_iter()
                    .map(|v| v != 0.0)
                    .collect(),
                None => vec![true; g.len()],
            };
            for ((s, v), k) in sum.iter_mut().zip(g).zip(keep) {
                if k {
                    *s += v;
                }
            }
        }
    }
    model.zero_grad();
    sums.into_iter().flatten().map(f64::abs).collect()
}

/// Top `round(share * free)` of the free entries of `s` (ties: the earlier position) as 0/1.
fn top_share(s: &[f64], pruned: &[bool], share: f64) -> (Vec<bool>, f64) {
    let free = pruned.iter().filter(|&&p| !p).count();
    let k = (share * free as f64).round() as usize;
    let mut order: Vec<usize> = (0..s.len()).filter(|&i| !pruned[i]).collect();
    order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
    let mut keep = vec![false; s.len()];
    for &i in &order[..k] {
        keep[i] = true;
    }
    let threshold = if k == 0 {
        f64::INFINITY
    } else {
        s[order[k - 1]]
    };
    (keep, threshold)
}

fn flat_mask(m: &SaliencyMask) -> Vec<bool> {
    m.tensors()
        .values()
        .flat_map(|t| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
        .map(|v| {
            assert!(v == 0.0 || v == 1.0, "saliency mask value {v}");
            v == 1.0
        })
        .collect()
}

fn forget_stream(t: &TinyTask) -> Stream<'_> {
    Stream::new(&t.data.train, &t.forget.forget)
}

/// Compares the plugin's mask with the f64 reference: the exact count, and agreement except
/// where the f64 saliency lies within rounding of the cut-off.
fn check_against_reference(t: &TinyTask, model: &Model, mask: Option<&Mask>, share: f64) {
    let s = saliency_f64(t, model, mask);
    let pruned = flat_pruned(model, mask);
    let free = pruned.iter().filter(|&&p| !p).count();
    let got = saliency_mask(model, mask, &forget_stream(t), share, 7).unwrap();
    assert_eq!(got.total(), s.len() as i64);
    assert_eq!(
        got.kept(),
        (share * free as f64).round() as i64,
        "share {share}"
    );
    let (want, threshold) = top_share(&s, &pruned, share);
    let got = flat_mask(&got);
    let max = s.iter().cloned().fold(0.0, f64::max);
    let mut differ = 0;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if g != w {
            differ += 1;
            assert!(
                (s[i] - threshold).abs() <= 1e-5 * max,
                "entry {i}: saliency {} vs cut-off {threshold} (max {max})",
                s[i]
            );
        }
    }
    assert!(differ <= 10, "{differ} entries differ at the cut-off");
    eprintln!(
        "share {share}, sparse {}: {} of {free} free (of {}) kept, cut-off {threshold:.3e} (max {max:.3e}), {differ} differ",
        mask.is_some(),
        (share * free as f64).round(),
        s.len()
    );
    // A pruned weight is never salient.
    assert!(got.iter().zip(&pruned).all(|(&g, &p)| !(g && p)));
}

/// Per flat entry (name order, row-major): true where the pruning mask holds the weight at 0.
fn flat_pruned(model: &Model, mask: Option<&Mask>) -> Vec<bool> {
    model
        .parameters()
        .iter()
        .flat_map(|(n, p)| match mask.and_then(|m| m.get(n)) {
            Some(m) => Vec::<f32>::try_from(m.flatten(0, -1))
                .unwrap()
                .into_iter()
                .map(|v| v == 0.0)
                .collect::<Vec<_>>(),
            None => vec![false; p.numel()],
        })
        .collect()
}

#[test]
fn saliency_mask_matches_an_f64_top_k_dense_and_sparse() {
    let t = TinyTask::new();
    let m = t.trained();
    for share in [0.5, 0.1, 0.93] {
        check_against_reference(&t, &m, None, share);
    }
    let (sparse, mask) = t.trained_sparse();
    for share in [0.5, 0.1] {
        check_against_reference(&t, &sparse, Some(&mask), share);
    }
}

#[test]
fn share_zero_and_one_keep_nothing_and_everything() {
    let t = TinyTask::new();
    let m = t.trained();
    let n = m.num_parameters();
    let none = saliency_mask(&m, None, &forget_stream(&t), 0.0, 16).unwrap();
    assert_eq!((none.kept(), none.total()), (0, n));
    let all = saliency_mask(&m, None, &forget_stream(&t), 1.0, 16).unwrap();
    assert_eq!((all.kept(), all.total()), (n, n));
    assert!(saliency_mask(&m, None, &forget_stream(&t), 1.5, 16).is_err());

    // share 1 masks nothing: SalUn is RL, bit for bit
    let rl = RlConfig {
        epochs: 3,
        lr: 0.05,
        batch_size: 16,
        ..Default::default()
    };
    let salun = |share| SalUnConfig {
        epochs: rl.epochs,
        lr: rl.lr,
        batch_size: rl.batch_size,
        share,
        ..Default::default()
    };
    let by_rl = t.unlearn(&Rl::new(rl.clone()), &m, None, 4).unwrap();
    let by_salun = t.unlearn(&SalUn::new(salun(1.0)), &m, None, 4).unwrap();
    assert!(same_weights(&by_rl, &by_salun));
    // share 0 without weight decay freezes every trainable weight
    let frozen = t
        .unlearn(
            &SalUn::new(SalUnConfig {
                weight_decay: 0.0,
                ..salun(0.0)
            }),
            &m,
            None,
            4,
        )
        .unwrap();
    for ((name, a), (_, b)) in flat_params(&m).iter().zip(flat_params(&frozen)) {
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} moved"
        );
    }
}

/// Runs SalUn without weight decay and momentum and checks which weights moved against the
/// saliency mask computed beforehand; returns the share of salient weights that moved.
fn salient_weights_move_and_only_they(
    t: &TinyTask,
    m: &Model,
    mask: Option<&Mask>,
) -> (Model, f64) {
    let config = SalUnConfig {
        epochs: 10,
        lr: 0.05,
        batch_size: 16,
        momentum: 0.0,
        weight_decay: 0.0,
        ..Default::default()
    };
    assert_eq!(config.share, 0.5);
    let saliency = saliency_mask(m, mask, &forget_stream(t), 0.5, config.batch_size).unwrap();
    let salient = flat_mask(&saliency);
    let u = t.unlearn(&SalUn::new(config), m, mask, 0).unwrap();
    let before: Vec<f64> = flat_params(m).into_iter().flat_map(|(_, v)| v).collect();
    let after: Vec<f64> = flat_params(&u).into_iter().flat_map(|(_, v)| v).collect();
    let (mut moved, mut salient_n) = (0, 0);
    for ((a, b), &s) in before.iter().zip(&after).zip(&salient) {
        if s {
            salient_n += 1;
            moved += usize::from(a.to_bits() != b.to_bits());
        } else {
            // Bit for bit; only a pruned weight's zero may change sign (-0 - lr * -0 = +0).
            assert!(
                a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0),
                "a non-salient weight moved: {a} -> {b}"
            );
        }
    }
    (u, moved as f64 / salient_n as f64)
}

#[test]
fn salun_moves_only_salient_weights_and_forgets_dense() {
    let t = TinyTask::new();
    let m = t.trained();
    let f0 = accuracy(&m, &t.data.train, &t.forget.forget);
    let (u, moved) = salient_weights_move_and_only_they(&t, &m, None);
    let f1 = accuracy(&u, &t.data.train, &t.forget.forget);
    let r1 = accuracy(&u, &t.data.train, &t.forget.retain);
    eprintln!("dense SalUn: forget {f0:.3} -> {f1:.3}, retain {r1:.3}, salient moved {moved:.4}");
    assert!(moved > 0.95, "only {moved} of the salient weights moved");
    assert!(f0 >= 0.9 && f1 <= 0.2, "forget accuracy {f0} -> {f1}");
    assert!(r1 >= 0.9, "retain accuracy {r1}");
    assert!(all_finite(&u));
}

#[test]
fn salun_moves_only_salient_weights_and_forgets_sparse() {
    let t = TinyTask::new();
    let (m, mask) = t.trained_sparse();
    let f0 = accuracy(&m, &t.data.train, &t.forget.forget);
    let (u, moved) = salient_weights_move_and_only_they(&t, &m, Some(&mask));
    let f1 = accuracy(&u, &t.data.train, &t.forget.forget);
    let r1 = accuracy(&u, &t.data.train, &t.forget.retain);
    eprintln!("sparse SalUn: forget {f0:.3} -> {f1:.3}, retain {r1:.3}, salient moved {moved:.4}");
    assert!(moved > 0.95, "only {moved} of the salient weights moved");
    assert!(f0 >= 0.9 && f1 <= 0.2, "forget accuracy {f0} -> {f1}");
    assert!(r1 >= 0.9, "retain accuracy {r1}");
    assert_eq!(mask.violations(&u), 0);
}

#[test]
fn salun_with_default_regularisation_forgets_and_is_deterministic() {
    let t = TinyTask::new();
    let m = t.trained();
    let salun = SalUn::new(SalUnConfig {
        epochs: 10,
        lr: 0.05,
        batch_size: 16,
        ..Default::default()
    });
    let u = t.unlearn(&salun, &m, None, 2).unwrap();
    let f1 = accuracy(&u, &t.data.train, &t.forget.forget);
    let r1 = accuracy(&u, &t.data.train, &t.forget.retain);
    eprintln!("SalUn (momentum 0.9, wd 5e-4): forget {f1:.3}, retain {r1:.3}");
    assert!(f1 <= 0.2 && r1 >= 0.9, "forget {f1}, retain {r1}");
    assert!(same_weights(&u, &t.unlearn(&salun, &m, None, 2).unwrap()));
    // Grads are masked, not updates: a non-salient weight w only feels weight decay, through
    // momentum (PyTorch's SGD: buf = g on the first step, then 0.9 buf + g; w -= lr buf, with
    // g = wd w). That is linear, so every non-salient weight ends at c * w, with c from the
    // scalar recursion.
    let steps = 10 * t.data.train.len().div_ceil(16);
    let (mut w, mut buf) = (1.0f64, 0.0f64);
    for step in 0..steps {
        let g = 5e-4 * w;
        buf = if step == 0 { g } else { 0.9 * buf + g };
        w -= 0.05 * buf;
    }
    let saliency = saliency_mask(&m, None, &forget_stream(&t), 0.5, 16).unwrap();
    let salient = flat_mask(&saliency);
    let before: Vec<f64> = flat_params(&m).into_iter().flat_map(|(_, v)| v).collect();
    let after: Vec<f64> = flat_params(&u).into_iter().flat_map(|(_, v)| v).collect();
    let mut checked = 0;
    for ((a, b), s) in before.iter().zip(&after).zip(&salient) {
        if !s {
            assert!(
                (b - w * a).abs() <= 1e-5 * a.abs(),
                "{a} -> {b}, expected x{w}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, before.len() - saliency.kept() as usize);
    eprintln!("non-salient weights decayed by x{w:.6} over {steps} steps");
    assert!(w < 0.99);
}

#[test]
fn configs_parse_check_and_register() {
    let defaults = SalUnConfig::default();
    assert_eq!(
        (defaults.share, defaults.epochs, defaults.lr),
        (0.5, 10, 0.01)
    );
    let bad = parse_config::<SalUnConfig>(&serde_json::json!({ "share": 1.5 })).unwrap_err();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].path, "/share");
    let ok = parse_config::<SalUnConfig>(&serde_json::json!({ "share": 0.2, "lr": 0.1 })).unwrap();
    assert_eq!((ok.share, ok.lr, ok.momentum), (0.2, 0.1, 0.9));
    assert!(parse_config::<RlConfig>(&serde_json::json!({ "share": 0.2 })).is_err());
    let ours: Vec<(&str, Kind)> = unlearn_api::inventory::iter::<BuiltinMethod>
        .into_iter()
        .filter(|b| b.krate == "unlearn-rl-salun")
        .map(|b| (b.name, b.kind))
        .collect();
    assert_eq!(ours.len(), 2);
    assert!(ours.contains(&(Rl::NAME, Kind::Unlearner)));
    assert!(ours.contains(&(SalUn::NAME, Kind::Unlearner)));
    let schema = unlearn_api::method::schema_of::<SalUnConfig>();
    let share = &schema["properties"]["share"];
    assert_eq!(
        (share["minimum"].as_f64(), share["maximum"].as_f64()),
        (Some(0.0), Some(1.0))
    );
    assert!(
        share["description"]
            .as_str()
            .unwrap()
            .contains("round(share * free)")
    );
}
