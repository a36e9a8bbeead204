//! The paper-style results table (terminal and `report.md`).

use std::fmt::Write;

use crate::eval::{MiaFeature, MiaScore};
use crate::results::{Row, RunResults};

/// A number with two decimals, or `-` when absent (or NaN: an accuracy without a split).
fn num(v: Option<f64>) -> String {
    v.filter(|x| !x.is_nan())
        .map(|x| format!("{x:.2}"))
        .unwrap_or_else(|| "-".into())
}

/// An MIA score, or a flag when the attack is uninformative and the number means nothing.
fn mia(s: Option<&MiaScore>) -> String {
    match s {
        Some(s) if s.informative => format!("{:.2}", s.value),
        Some(s) => format!("({:.2})†", s.value),
        None => "-".into(),
    }
}

/// A shadow accuracy with its interval: `51.70 [48.80, 54.60]`.
fn shadow(s: Option<&MiaScore>) -> String {
    match s {
        Some(s) => format!(
            "{:.2} [{:.2}, {:.2}]",
            s.shadow_accuracy, s.shadow_accuracy_ci[0], s.shadow_accuracy_ci[1]
        ),
        None => "-".into(),
    }
}

/// What † means, said once under every table that shows it.
pub fn uninformative_note() -> String {
    format!(
        "† uninformative: the membership attack cannot be told from guessing, so its value (in brackets) is not a result, and the Avg. Gap leaves out such a headline value. Its shadow SVC, scored on its own shadow set (members and non-members, equal numbers), either has a shadow accuracy whose exact (Clopper-Pearson) {:.0}% interval reaches 50%, or gives one prediction to >= {}% of the set.\n",
        100.0 * crate::eval::mia::SHADOW_CONFIDENCE,
        crate::eval::mia::CONSTANT_ATTACK_SHARE
    )
}

/// Whether any score of any row, headline or not, is uninformative.
fn any_uninformative(results: &RunResults, headline_only: bool) -> bool {
    results.rows.iter().any(|r| {
        let m = &r.metrics;
        if headline_only {
            m.mia().is_some_and(|s| !s.informative)
        } else {
            m.mia_efficacy
                .values()
                .chain(m.mia_privacy.values())
                .any(|s| !s.informative)
        }
    })
}

/// `dense`, or `sparse 95.0%`; with several pruners the pruner's label instead of `sparse`.
fn model_name(r: &Row, several_pruners: bool) -> String {
    match (&r.pruner, several_pruners) {
        (Some(p), true) => format!("{p} ({:.1}%)", 100.0 * r.sparsity),
        _ if r.model == "dense" => "dense".into(),
        _ => format!("{} {:.1}%", r.model, 100.0 * r.sparsity),
    }
}

fn several_pruners(results: &RunResults) -> bool {
    let mut pruners: Vec<&str> = results
        .rows
        .iter()
        .filter_map(|r| r.pruner.as_deref())
        .collect();
    pruners.sort();
    pruners.dedup();
    pruners.len() > 1
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    out += &line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

/// The headline table: scenario, model, method, UA, MIA-Efficacy, RA, TA, RTE, Avg. Gap; with a
/// class-wise scenario also the accuracy on the whole test set ("TA all"), beside the headline TA
/// on the other classes.
pub fn results_table(results: &RunResults) -> String {
    let class_wise = results.scenarios.iter().any(|s| s.class.is_some());
    let attacked = results.attack.is_some();
    let several = several_pruners(results);
    let seeds = results.seeds.len() > 1;
    let rows: Vec<Vec<String>> = results
        .rows
        .iter()
        .map(|r| {
            let mut cells = seeds
                .then(|| r.seed.to_string())
                .into_iter()
                .collect::<Vec<_>>();
            cells.extend([
                r.scenario.clone(),
                model_name(r, several),
                r.label.clone(),
                num(Some(r.metrics.ua)),
                mia(r.metrics.mia()),
                num(Some(r.metrics.ra)),
                num(Some(r.metrics.ta)),
            ]);
            if class_wise {
                cells.push(num(Some(r.metrics.ta_full)));
            }
            if attacked {
                cells.push(num(r.metrics.asr));
            }
            cells.push(num(r.rte));
            cells.push(num(r.gap.as_ref().map(|g| g.avg)));
            cells
        })
        .collect();
    let mut header = if seeds { vec!["Seed"] } else { vec![] };
    header.extend([
        "Scenario",
        "Model",
        "Method",
        "UA",
        "MIA-Efficacy",
        "RA",
        "TA",
    ]);
    if class_wise {
        header.push("TA all");
    }
    if attacked {
        header.push("ASR");
    }
    header.extend(["RTE (s)", "Avg. Gap"]);
    let extra = extra_columns(results);
    header.extend(extra.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .zip(&results.rows)
        .map(|(mut cells, r)| {
            cells.extend(extra.iter().map(|c| extra_cell(r.extra.get(c).copied())));
            cells
        })
        .collect();
    let mut out = table(&header, &rows);
    if any_uninformative(results, true) {
        out += "\n";
        out += &uninformative_note();
    }
    out
}

/// `mean ± std` with four decimals (registered metrics).
fn mean_std_precise(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() == 1 {
        return format!("{mean:.4}");
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    format!("{mean:.4} ± {:.4}", var.sqrt())
}

/// The columns of registered metrics (`[eval] metrics`), in name order; none by default.
fn extra_columns(results: &RunResults) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> =
        results.rows.iter().flat_map(|r| r.extra.keys()).collect();
    names.into_iter().cloned().collect()
}

/// A registered metric's value: four significant decimals (they are not percentages).
fn extra_cell(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

/// `mean ± std` of the values (sample std, n - 1; `-` for none).
fn mean_std(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() == 1 {
        return format!("{mean:.2}");
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    format!("{mean:.2} ± {:.2}", var.sqrt())
}

/// The headline table over seeds: one line per (scenario, model, method) in first-seed order,
/// each column the mean ± std of its seeds. MIA-Efficacy averages the informative attacks only
/// and says how many seeds had one.
pub fn mean_std_table(results: &RunResults) -> String {
    let several = several_pruners(results);
    let attacked = results.attack.is_some();
    let extra = extra_columns(results);
    let key = |r: &Row| (r.scenario.clone(), model_name(r, several), r.label.clone());
    let mut order: Vec<(String, String, String)> = Vec::new();
    for r in &results.rows {
        let k = key(r);
        if !order.contains(&k) {
            order.push(k);
        }
    }
    let rows: Vec<Vec<String>> = order
        .iter()
        .map(|k| {
            let group: Vec<&Row> = results.rows.iter().filter(|r| key(r) == *k).collect();
            let col = |f: &dyn Fn(&Row) -> Option<f64>| {
                mean_std(&group.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            // Seeds whose attack ran (none with `[eval] mia = false`: then plainly `-`).
            let scored: Vec<&MiaScore> = group.iter().filter_map(|r| r.metrics.mia()).collect();
            let informative: Vec<f64> = scored
                .iter()
                .filter(|s| s.informative)
                .map(|s| s.value)
                .collect();
            let mia = if informative.len() == scored.len() {
                mean_std(&informative)
            } else {
                format!(
                    "{} ({}/{} informative)†",
                    mean_std(&informative),
                    informative.len(),
                    scored.len()
                )
            };
            vec![
                k.0.clone(),
                k.1.clone(),
                k.2.clone(),
                col(&|r| Some(r.metrics.ua)),
                mia,
                col(&|r| Some(r.metrics.ra)),
                col(&|r| Some(r.metrics.ta)),
            ]
            .into_iter()
            .chain(attacked.then(|| col(&|r| r.metrics.asr)))
            .chain([col(&|r| r.rte), col(&|r| r.gap.as_ref().map(|g| g.avg))])
            .chain(extra.iter().map(|c| {
                let v: Vec<f64> = group
                    .iter()
                    .filter_map(|r| r.extra.get(c).copied())
                    .collect();
                mean_std_precise(&v)
            }))
            .collect()
        })
        .collect();
    let mut header = vec![
        "Scenario",
        "Model",
        "Method",
        "UA",
        "MIA-Efficacy",
        "RA",
        "TA",
    ];
    if attacked {
        header.push("ASR");
    }
    header.extend(["RTE (s)", "Avg. Gap"]);
    header.extend(extra.iter().map(String::as_str));
    let mut out = table(&header, &rows);
    if any_uninformative(results, true) {
        out +=
            "\nMIA-Efficacy: mean ± std of the seeds whose attack is informative; † counts them.\n";
    }
    out
}

/// The Trojan cleanse's table: per model and method, clean TA and attack success rate before
/// (the Trojan model, the scenario's `original` row of the same seed and model) and after
/// unlearning the poisoned rows; mean ± std over seeds.
pub fn backdoor_table(results: &RunResults) -> String {
    let several = several_pruners(results);
    let key = |r: &Row| (r.scenario.clone(), model_name(r, several), r.label.clone());
    let before = |r: &Row| {
        results.rows.iter().find(|o| {
            o.method == "original"
                && o.seed == r.seed
                && o.scenario == r.scenario
                && o.model == r.model
                && o.pruner == r.pruner
        })
    };
    let mut order: Vec<(String, String, String)> = Vec::new();
    for r in results.rows.iter().filter(|r| r.method != "original") {
        let k = key(r);
        if !order.contains(&k) {
            order.push(k);
        }
    }
    let rows: Vec<Vec<String>> = order
        .iter()
        .map(|k| {
            let group: Vec<&Row> = results
                .rows
                .iter()
                .filter(|r| r.method != "original" && key(r) == *k)
                .collect();
            let col = |f: &dyn Fn(&Row) -> Option<f64>, of_original: bool| {
                let v: Vec<f64> = group
                    .iter()
                    .filter_map(|r| if of_original { before(r) } else { Some(*r) })
                    .filter_map(f)
                    .collect();
                mean_std(&v)
            };
            vec![
                k.1.clone(),
                k.2.clone(),
                col(&|r| Some(r.metrics.ta), true),
                col(&|r| Some(r.metrics.ta), false),
                col(&|r| r.metrics.asr, true),
                col(&|r| r.metrics.asr, false),
                col(&|r| r.metrics.asr_non_target, true),
                col(&|r| r.metrics.asr_non_target, false),
            ]
        })
        .collect();
    table(
        &[
            "Model",
            "Method",
            "TA before",
            "TA after",
            "ASR before",
            "ASR after",
            "ASR non-target before",
            "ASR non-target after",
        ],
        &rows,
    )
}

/// `results.csv`: one line per seed x model x scenario x method x metric (a tidy table).
pub fn csv(results: &RunResults) -> String {
    let field = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = String::from("seed,scenario,model,pruner,sparsity,method,label,metric,value\n");
    for r in &results.rows {
        let mut metrics: Vec<(String, f64)> = vec![
            ("ua".into(), r.metrics.ua),
            ("ra".into(), r.metrics.ra),
            ("ta".into(), r.metrics.ta),
            ("ta_full".into(), r.metrics.ta_full),
            ("val".into(), r.metrics.val),
        ];
        for (name, scores) in [
            ("mia_efficacy", &r.metrics.mia_efficacy),
            ("mia_privacy", &r.metrics.mia_privacy),
        ] {
            for (feature, score) in scores {
                metrics.push((format!("{name}_{feature}"), score.value));
                metrics.push((
                    format!("{name}_{feature}_informative"),
                    if score.informative { 1.0 } else { 0.0 },
                ));
                metrics.push((
                    format!("{name}_{feature}_shadow_accuracy"),
                    score.shadow_accuracy,
                ));
                metrics.push((
                    format!("{name}_{feature}_shadow_ci_low"),
                    score.shadow_accuracy_ci[0],
                ));
                metrics.push((
                    format!("{name}_{feature}_shadow_ci_high"),
                    score.shadow_accuracy_ci[1],
                ));
            }
        }
        if let Some(v) = r.metrics.asr {
            metrics.push(("asr".into(), v));
        }
        if let Some(v) = r.metrics.asr_non_target {
            metrics.push(("asr_non_target".into(), v));
        }
        if let Some(rte) = r.rte {
            metrics.push(("rte".into(), rte));
        }
        if let Some(g) = &r.gap {
            metrics.push(("gap_avg".into(), g.avg));
        }
        metrics.extend(r.extra.iter().map(|(k, v)| (k.clone(), *v)));
        for (metric, value) in metrics {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{}",
                r.seed,
                field(&r.scenario),
                r.model,
                field(r.pruner.as_deref().unwrap_or("")),
                r.sparsity,
                field(&r.method),
                field(&r.label),
                metric,
                value
            );
        }
    }
    out
}

/// `training.csv`: one line per epoch of every training loop of every stage (cached stages
/// included): which seed, stage and loop, then lr, mean loss, train and validation accuracy (%,
/// empty when not measured) and seconds.
pub fn training_csv(results: &RunResults) -> String {
    let field = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut out = String::from(
        "seed,stage_kind,stage,run,epoch,lr,loss,train_accuracy,val_accuracy,seconds\n",
    );
    for st in &results.stages {
        for run in &st.training {
            for e in &run.epochs {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{}",
                    st.seed.map(|s| s.to_string()).unwrap_or_default(),
                    st.kind,
                    field(&st.label),
                    field(&run.run),
                    e.epoch,
                    e.lr,
                    e.loss,
                    opt(e.train_accuracy),
                    opt(e.val_accuracy),
                    e.seconds
                );
            }
        }
    }
    out
}

/// The full report: models, the headline table, MIA per feature, forget sets.
pub fn markdown(results: &RunResults) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# unlearn report\n");
    let _ = writeln!(
        out,
        "Data set `{}` (train {}, val {}, test {}), device `{}`, libtorch {}, unlearn {}; {:.1} s in all.\n",
        results.dataset,
        results.split.train.len(),
        results.split.val.len(),
        results.split.test.len(),
        results.device,
        results.libtorch,
        results.unlearn_version,
        results.seconds
    );
    let _ = writeln!(out, "## Models\n");
    let models: Vec<Vec<String>> = results
        .models
        .iter()
        .map(|m| {
            vec![
                m.seed.to_string(),
                m.pruner.clone().unwrap_or_else(|| m.name.clone()),
                format!("{:.2}%", 100.0 * m.sparsity),
                format!("{} / {}", m.pruned_weights, m.prunable_weights),
                m.parameters.to_string(),
                num(Some(m.train_accuracy)),
                num(Some(m.val_accuracy)),
                num(Some(m.test_accuracy)),
                num(Some(m.train_seconds)),
            ]
        })
        .collect();
    out += &table(
        &[
            "Seed",
            "Model",
            "Sparsity",
            "Pruned / prunable",
            "Parameters",
            "Train acc",
            "Val acc",
            "Test acc",
            "Train s",
        ],
        &models,
    );
    let _ = writeln!(out, "\n## Unlearning\n");
    let _ = writeln!(
        out,
        "UA = 100 - accuracy on the forget set; RA, TA: accuracy on the retain and test sets (in class-wise forgetting TA counts the test samples of the other classes, as the paper's code does; \"TA all\" the whole test set); MIA-Efficacy: share of the forget set a confidence-based membership attack calls non-member; RTE: seconds of the unlearning step; Avg. Gap: mean |difference| to `retrain` on the same scenario and model (lower is better). All in percent except RTE.\n"
    );

    if results.rows.iter().all(|r| r.metrics.mia().is_none()) {
        let _ = writeln!(
            out,
            "MIA-Efficacy was not computed (`[eval] mia = false`): its columns show `-`.\n"
        );
    }
    // The registered metrics the config asked for, each with its summary.
    let asked: Vec<&str> = results
        .config
        .pointer("/eval/metrics")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    if !asked.is_empty() {
        let described: Vec<String> = asked
            .iter()
            .map(|m| match crate::metric::find(m) {
                Ok(metric) => format!("`{m}`: {}", metric.summary),
                Err(_) => format!("`{m}`"),
            })
            .collect();
        let _ = writeln!(
            out,
            "Registered metrics (`[eval] metrics`): {}.\n",
            described.join("; ")
        );
    }
    if results.seeds.len() > 1 {
        let _ = writeln!(
            out,
            "Mean ± standard deviation over {} seeds ({}); each seed's rows follow.\n",
            results.seeds.len(),
            results
                .seeds
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        out += &mean_std_table(results);
        out += "\n";
    }
    out += &results_table(results);
    let features: Vec<MiaFeature> = MiaFeature::ALL
        .into_iter()
        .filter(|f| {
            results
                .rows
                .iter()
                .any(|r| r.metrics.mia_efficacy.contains_key(f))
        })
        .collect();
    if !features.is_empty() {
        let _ = writeln!(out, "\n## Membership inference by feature\n");
        let _ = writeln!(
            out,
            "MIA-Efficacy per feature, and MIA-Privacy (confidence). † marks an uninformative attack. The last two columns: the shadow accuracy of the confidence attacks (efficacy, privacy) with its exact {:.0}% interval, in percent.\n",
            100.0 * crate::eval::mia::SHADOW_CONFIDENCE
        );
        let several = several_pruners(results);
        let mut header: Vec<String> = vec!["Scenario".into(), "Model".into(), "Method".into()];
        header.extend(features.iter().map(|f| format!("Eff. {f}")));
        header.push("Privacy".into());
        header.push("Shadow acc (eff.)".into());
        header.push("Shadow acc (priv.)".into());
        let rows: Vec<Vec<String>> = results
            .rows
            .iter()
            .map(|r| {
                let mut c = vec![r.scenario.clone(), model_name(r, several), r.label.clone()];
                c.extend(features.iter().map(|f| mia(r.metrics.mia_efficacy.get(f))));
                c.push(mia(r.metrics.mia_privacy.get(&MiaFeature::Confidence)));
                c.push(shadow(r.metrics.mia()));
                c.push(shadow(r.metrics.mia_privacy.get(&MiaFeature::Confidence)));
                c
            })
            .collect();
        let header: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
        out += &table(&header, &rows);
        if any_uninformative(results, false) {
            out += "\n";
            out += &uninformative_note();
        }
    }
    if let Some(a) = &results.attack {
        let _ = writeln!(out, "\n## Backdoor (Trojan cleanse)\n");
        let _ = writeln!(
            out,
            "`{}`{} poisoned {} training samples (drawn with seed {}; relabelled to class {}); the models trained on them are the Trojan models, and every unlearner forgets exactly those rows (scenario `poisoned`). TA: accuracy on the clean test set; ASR: the share of triggered test images classified as class {} (over every test image, as the reference code reports it, and over those whose true class is another). Before: the Trojan model; after: unlearned.{}\n",
            a.label,
            if a.label == a.method {
                String::new()
            } else {
                format!(" ({})", a.method)
            },
            a.poisoned.len(),
            a.seed,
            a.target,
            a.target,
            if results.seeds.len() > 1 {
                format!(" Mean ± std over {} seeds.", results.seeds.len())
            } else {
                String::new()
            }
        );
        out += &backdoor_table(results);
    }
    let _ = writeln!(out, "\n## Forget sets\n");
    let sets: Vec<Vec<String>> = results
        .scenarios
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.kind.to_lowercase(),
                s.forget_size.to_string(),
                s.retain_size.to_string(),
                s.forget_sha256[..16].to_string(),
            ]
        })
        .collect();
    out += &table(
        &["Scenario", "Kind", "Forget", "Retain", "SHA-256 (prefix)"],
        &sets,
    );
    if results.dataset == "digits" {
        let _ = writeln!(out, "\n{}.", crate::data::DIGITS_CREDIT);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// An MIA score as results.json stored it before scores carried their interval: every
    /// attack that was not constant was `informative`.
    fn old_score(value: f64, correct: usize, per_class: usize) -> Value {
        json!({
            "value": value,
            "shadow_accuracy": 100.0 * correct as f64 / (2 * per_class) as f64,
            "majority_share": 60.0,
            "informative": true,
            "shadow_members": per_class,
            "shadow_nonmembers": per_class,
        })
    }

    fn row(method: &str, ua: f64, eff: Value, gap: Option<f64>) -> Value {
        json!({
            "seed": 1, "scenario": "class-1", "model": "dense", "pruner": null,
            "sparsity": 0.0, "method": method, "label": method,
            "metrics": {
                "ua": ua, "ra": 100.0, "ta": 90.0, "ta_full": 90.0, "val": 90.0,
                "mia_efficacy": {"confidence": eff.clone(), "entropy": eff},
                "mia_privacy": {"confidence": old_score(50.0, 140, 100)},
            },
            "rte": 1.0,
            "gap": gap.map(|avg| json!({"ua": 0.0, "mia": 0.0, "ra": 0.0, "ta": 0.0, "avg": avg})),
        })
    }

    /// An old results.json: `retrain` has an attack well above chance (140 of 200 right, interval
    /// (63.14%, 76.26%)), `FT` one at chance (110 of 200, interval (47.82%, 62.02%); both by
    /// mpmath's incomplete beta), stored as informative, with the gap that included it.
    fn old_results() -> RunResults {
        serde_json::from_value(json!({
            "unlearn_version": "0.1.0", "device": "cpu", "libtorch": "2.11", "dataset": "digits",
            "config": {}, "split": {"train": [], "val": [], "test": []}, "seeds": [1],
            "models": [], "scenarios": [],
            "rows": [
                row("retrain", 100.0, old_score(90.0, 140, 100), Some(0.0)),
                row("FT", 60.0, old_score(10.0, 110, 100), Some(30.0)),
            ],
            "stages": [], "cache": "/nowhere", "seconds": 1.0,
        }))
        .unwrap()
    }

    #[test]
    fn old_results_are_judged_by_the_interval_and_marked() {
        let mut results = old_results();
        let ft = results.rows[1].metrics.mia().unwrap();
        assert!(!ft.informative);
        assert!(results.rows[0].metrics.mia().unwrap().informative);
        // The stored gap counted the MIA (mean of 40, 80, 0, 0 = 30); recomputed it does not.
        recompute(&mut results);
        assert_eq!(results.rows[1].gap.as_ref().unwrap().mia, None);
        assert!((results.rows[1].gap.as_ref().unwrap().avg - 40.0 / 3.0).abs() < 1e-12);

        let table = results_table(&results);
        let ft_line = table.lines().find(|l| l.contains("| FT ")).unwrap();
        assert!(ft_line.contains("(10.00)†"), "{ft_line}");
        let rt_line = table.lines().find(|l| l.contains("| retrain ")).unwrap();
        assert!(
            rt_line.contains("| 90.00 ") && !rt_line.contains('†'),
            "{rt_line}"
        );
        assert!(table.contains("† uninformative") && table.contains("reaches 50%"));

        // The feature table marks every feature's attack at chance (FT's confidence and entropy
        // ones; its privacy attack, 140 of 200, is informative).
        let md = markdown(&results);
        let features = md
            .split("## Membership inference by feature")
            .nth(1)
            .unwrap();
        let ft_line = features.lines().find(|l| l.contains("| FT ")).unwrap();
        assert_eq!(ft_line.matches('†').count(), 2, "{ft_line}");
        // Shadow accuracy with its exact interval.
        let (lo, hi) = crate::eval::mia::clopper_pearson(110, 200, 0.95);
        assert!((100.0 * lo - 47.824931).abs() < 1e-5 && (100.0 * hi - 62.024641).abs() < 1e-5);
        assert!(ft_line.contains("55.00 [47.82, 62.02]"), "{ft_line}");
        assert!(
            ft_line.contains(&format!("55.00 [{:.2}, {:.2}]", 100.0 * lo, 100.0 * hi)),
            "{ft_line}"
        );
        assert!(features.contains("† uninformative"));

        // results.csv: the flag, the shadow accuracy and its interval, per score.
        let csv = csv(&results);
        let ft = |metric: &str| {
            csv.lines()
                .find(|l| l.contains("\"FT\"") && l.contains(&format!(",{metric},")))
                .unwrap_or_else(|| panic!("{metric} in {csv}"))
                .rsplit(',')
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        assert_eq!(ft("mia_efficacy_confidence_informative"), 0.0);
        assert_eq!(ft("mia_efficacy_confidence_shadow_accuracy"), 55.0);
        assert!((ft("mia_efficacy_confidence_shadow_ci_low") - 100.0 * lo).abs() < 1e-9);
        assert!((ft("mia_efficacy_confidence_shadow_ci_high") - 100.0 * hi).abs() < 1e-9);
    }

    /// The figure draws the value of an uninformative attack hollow, and its legend says so.
    #[test]
    fn figures_draw_uninformative_attacks_hollow() {
        let mut results = old_results();
        results.scenarios = serde_json::from_value(json!([{
            "name": "class-1", "kind": "class", "class": 1, "forget_size": 1,
            "retain_size": 1, "forget_sha256": "0".repeat(64), "forget_indices": [0],
        }]))
        .unwrap();
        let panels = crate::plot::panels(&results, "class-1");
        let mia = panels.iter().find(|p| p.title.starts_with("MIA")).unwrap();
        let flags = |name: &str| {
            let s = mia.series.iter().find(|s| s.name == name).unwrap();
            (s.points[0].1, s.uninformative.clone())
        };
        assert_eq!(flags("FT"), (10.0, vec![true]));
        assert_eq!(flags("retrain"), (90.0, vec![false]));
        let ua = panels.iter().find(|p| p.title.starts_with("UA")).unwrap();
        assert!(ua.series.iter().all(|s| s.uninformative == [false]));

        let dir = tempfile::tempdir().unwrap();
        crate::plot::write_all(&results, dir.path()).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("unlearning-vs-sparsity-1.svg")).unwrap();
        assert!(
            svg.contains("hollow, faint line: an uninformative MIA"),
            "{svg}"
        );
        // Every point in this figure is informative but FT's MIA: no note on a clean figure.
        results.rows.remove(1);
        let clean = crate::plot::panels(&results, "class-1");
        assert!(
            clean
                .iter()
                .all(|p| p.series.iter().all(|s| !s.uninformative.contains(&true)))
        );
    }

    fn recompute(results: &mut RunResults) {
        crate::results::recompute_gaps(results);
    }
}
