//! The stages of a study and their cache keys: each seed's dense model, its sparse models, and a
//! row per scenario x model x method, each keyed by exactly what it depends on.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cache::{StageKey, StageKind, file_sha256, hex};
use crate::config::Plan;
use crate::error::PipelineError;

/// Changes whenever the same config computes other numbers than before (initialisation,
/// evaluation), so that a state written by an older build is not resumed into a newer one.
pub const COMPUTATION_REVISION: &str = "2: reference-code initialisation and evaluation";

/// The keys of every stage of one seed of a plan, computed before anything runs.
pub struct StageKeys {
    pub dense: StageKey,
    /// One per pruner, in config order.
    pub sparse: Vec<StageKey>,
    /// Per forget set, per model (dense, then each sparse one): the `original` row, then one
    /// per unlearner in config order.
    pub rows: Vec<Vec<Vec<StageKey>>>,
}

impl StageKeys {
    /// `data` is [`data_identity`] of the plan (computed once for all seeds).
    pub fn new(plan: &Plan, seed: u64, data: &Value) -> Result<StageKeys, PipelineError> {
        let cfg = &plan.config;
        let spec = crate::config::model_spec(cfg.model.arch, &plan.dataset);
        let mut common = json!({
            "unlearn": env!("CARGO_PKG_VERSION"),
            "revision": COMPUTATION_REVISION,
            "data": data,
            "model": spec,
        });
        // Other arithmetic gives other weights; fp32 keys stay as they were before the option.
        let exec = cfg.model.execution();
        if !exec.is_default() {
            common["execution"] = json!(exec);
        }
        // Keeping rewind weights does not change training: the point is not part of the key
        // (the entry records which one it holds).
        let dense = match &plan.checkpoint {
            Some(path) => {
                let sha = file_sha256(path).map_err(|e| PipelineError::Input {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                StageKey::of(
                    StageKind::Dense,
                    &json!({"common": common, "checkpoint": sha}),
                )
            }
            None => StageKey::of(
                StageKind::Dense,
                &json!({"common": common, "train": cfg.train, "seed": seed}),
            ),
        };
        let sparse: Vec<StageKey> = plan
            .pruners
            .iter()
            .map(|p| {
                StageKey::of(
                    StageKind::Sparse,
                    &json!({
                        "dense": dense,
                        "method": p.method,
                        "config": p.full_config,
                        "build": p.build,
                        "seed": seed,
                    }),
                )
            })
            .collect();
        let models: Vec<&StageKey> = std::iter::once(&dense).chain(&sparse).collect();
        let rows = plan
            .forget
            .iter()
            .map(|f| {
                let forget = json!({"indices": f.hash(), "kind": f.kind, "class": f.class});
                models
                    .iter()
                    .map(|model| {
                        let base =
                            json!({"model": model, "forget": forget, "eval": eval_key(&cfg.eval)});
                        let original = StageKey::of(StageKind::Row, &base);
                        std::iter::once(original)
                            .chain(plan.unlearners.iter().map(|u| {
                                StageKey::of(
                                    StageKind::Row,
                                    &json!({
                                        "base": base,
                                        "method": u.method,
                                        "config": u.full_config,
                                        "build": u.build,
                                        "seed": seed,
                                    }),
                                )
                            }))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Ok(StageKeys {
            dense,
            sparse,
            rows,
        })
    }
}

/// What of the evaluation settings a row depends on: all of them but the names of registered
/// metrics (computed from the rows' outputs after the rows); asking for any keeps each row's
/// outputs in its cache entry, which is another entry. Without metrics, the key is as before.
fn eval_key(e: &crate::eval::EvalConfig) -> Value {
    let mut v = serde_json::to_value(crate::eval::EvalConfig {
        metrics: Vec::new(),
        ..e.clone()
    })
    .expect("configs serialise");
    if !e.metrics.is_empty() {
        v["outputs"] = Value::Bool(true);
    }
    v
}

/// What identifies the data a run sees: the set's name, a hash of its pixels and labels, the
/// split, and the augmentation.
pub(crate) fn data_identity(plan: &Plan) -> Value {
    let d = &plan.dataset;
    let mut h = Sha256::new();
    let pixels = d
        .images
        .contiguous()
        .to_kind(tch::Kind::Uint8)
        .flatten(0, -1);
    h.update(Vec::<u8>::try_from(&pixels).unwrap_or_default());
    for l in d.labels_vec() {
        h.update(l.to_le_bytes());
    }
    let split = serde_json::to_vec(&plan.split).expect("splits serialise");
    let mut id = json!({
        "name": d.name,
        "content": hex(&h.finalize()),
        "split": hex(&Sha256::digest(&split)),
        "augment": d.augment,
    });
    // A poisoned training set is other data: every stage's key changes with the attack.
    if let Some(a) = &plan.attack {
        id["attack"] = json!({
            "method": a.planned.method,
            "config": a.planned.full_config,
            "build": a.planned.build,
            "seed": a.seed,
        });
    }
    id
}

/// One stage of a study: what it computes, under which key, after which others.
#[derive(Debug, Clone)]
pub struct StudyStage {
    pub seed: u64,
    pub kind: StageKind,
    pub key: StageKey,
    /// What it is, without the seed (`FT on class-3 (sparse)`).
    pub base_label: String,
    /// What it is, with the seed when the study has several.
    pub label: String,
    /// The stages (positions in the study's list) whose results it starts from: a sparse model
    /// needs its dense model, a row its model.
    pub needs: Vec<usize>,
}

/// Every stage of `plan`, in the order a run computes them: per seed, the dense model, each
/// sparse model, then per scenario and model the `original` row and one row per unlearner.
/// `data` is [`data_identity`] of the plan. Running, `--dry-run`, progress and the workers of
/// `run --jobs` all read this one list.
pub fn study_stages(plan: &Plan, data: &Value) -> Result<Vec<StudyStage>, PipelineError> {
    let mut out: Vec<StudyStage> = Vec::new();
    for &seed in &plan.seeds {
        let keys = StageKeys::new(plan, seed, data)?;
        let suffix = if plan.seeds.len() > 1 {
            format!(", seed {seed}")
        } else {
            String::new()
        };
        let mut add = |kind, key: &StageKey, base_label: String, needs: Vec<usize>| {
            out.push(StudyStage {
                seed,
                kind,
                key: key.clone(),
                label: format!("{base_label}{suffix}"),
                base_label,
                needs,
            });
            out.len() - 1
        };
        let dense = add(StageKind::Dense, &keys.dense, "dense model".into(), vec![]);
        let mut models = vec![(dense, "dense".to_string())];
        for (p, k) in plan.pruners.iter().zip(&keys.sparse) {
            let at = add(
                StageKind::Sparse,
                k,
                format!("{} pruning", p.label),
                vec![dense],
            );
            let name = if plan.pruners.len() > 1 {
                p.label.clone()
            } else {
                "sparse".into()
            };
            models.push((at, name));
        }
        for (f, forget) in plan.forget.iter().enumerate() {
            for (m, (model, name)) in models.iter().enumerate() {
                let labels = std::iter::once("original".to_string())
                    .chain(plan.unlearners.iter().map(|u| u.label.clone()));
                for (label, key) in labels.zip(&keys.rows[f][m]) {
                    add(
                        StageKind::Row,
                        key,
                        format!("{label} on {} ({name})", forget.name),
                        vec![*model],
                    );
                }
            }
        }
    }
    Ok(out)
}

/// The stages a worker computes (`unlearn stage`, or one worker of `run --jobs`): the wanted
/// ones, each claimed through its cache lock (one another process is computing is left to it),
/// and the models they start from, taken from the cache or computed first.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    wanted: BTreeSet<String>,
}

impl Selection {
    pub fn new(keys: impl IntoIterator<Item = StageKey>) -> Selection {
        Selection {
            wanted: keys.into_iter().map(|k| k.0).collect(),
        }
    }

    pub fn wants(&self, key: &StageKey) -> bool {
        self.wanted.contains(&key.0)
    }

    /// Whether the model `m` of one seed's `keys` (0: dense, then each sparse one) is needed:
    /// wanted itself, or a wanted row is on it, or (the dense one) a needed sparse model is
    /// pruned from it.
    pub fn needs_model(&self, keys: &StageKeys, m: usize) -> bool {
        let own = |m: usize| {
            let key = if m == 0 {
                &keys.dense
            } else {
                &keys.sparse[m - 1]
            };
            self.wants(key) || keys.rows.iter().any(|f| f[m].iter().any(|k| self.wants(k)))
        };
        own(m) || (m == 0 && (1..=keys.sparse.len()).any(own))
    }
}

/// The stage keys (full) that `ids` name: each a key or a unique prefix of one (at least 6
/// characters; `run --dry-run` prints the first 12), in `stages`.
pub fn resolve_ids(stages: &[StudyStage], ids: &[String]) -> Result<Vec<StageKey>, String> {
    let mut out = Vec::new();
    for id in ids {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 6 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "`{id}` is not a stage id: give a stage's key, or at least its first 6 hex digits (`unlearn run <config> --dry-run` lists them)"
            ));
        }
        let mut found: Vec<&StudyStage> =
            stages.iter().filter(|s| s.key.0.starts_with(&id)).collect();
        found.dedup_by(|a, b| a.key == b.key);
        match found.as_slice() {
            [one] => out.push(one.key.clone()),
            [] => {
                return Err(format!(
                    "no stage of this study has the id {id} (`unlearn run <config> --dry-run` lists them)"
                ));
            }
            many => {
                return Err(format!(
                    "{id} names {} stages ({}): give more of its key",
                    many.len(),
                    many.iter()
                        .map(|s| s.label.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    Ok(out)
}

/// The worker processes of `run --jobs N`.
pub struct Workers<'a> {
    pub count: usize,
    /// The command that makes worker `i` (from 0) compute the stages with these keys of this
    /// run's plan into its cache: `unlearn stage` with the run's config and settings.
    pub command: &'a dyn Fn(usize, &[String]) -> std::process::Command,
}

/// Computes the stages of `stages` missing from `cache` in worker processes: the dense models,
/// then the sparse ones, then the rows, each kind once every stage of the kind before is done
/// (what a stage needs is then in the cache). Every worker of a kind is given all its stages
/// and takes them in order, each claimed through its cache lock: one another worker holds is
/// left to it, so the work spreads by itself. Returns the keys computed. A worker that fails stops the run once the others have
/// finished (what they computed stays cached).
pub fn run_workers(
    stages: &[StudyStage],
    cache: &crate::cache::Cache,
    workers: &Workers<'_>,
    cancel: &std::sync::atomic::AtomicBool,
    notify: &dyn Fn(&str),
) -> Result<BTreeSet<String>, PipelineError> {
    let mut computed = BTreeSet::new();
    for kind in [StageKind::Dense, StageKind::Sparse, StageKind::Row] {
        let todo: Vec<&StudyStage> = stages
            .iter()
            .filter(|s| s.kind == kind && !cache.contains(kind, &s.key))
            .collect();
        if todo.is_empty() {
            continue;
        }
        let n = workers.count.min(todo.len());
        notify(&format!(
            "{} {kind} stage(s) to compute on {n} worker(s)",
            todo.len()
        ));
        let keys: Vec<String> = todo.iter().map(|s| s.key.0.clone()).collect();
        let mut children = Vec::new();
        for i in 0..n {
            let child = (workers.command)(i, &keys)
                .spawn()
                .map_err(|e| PipelineError::Worker {
                    worker: i + 1,
                    message: format!("could not be started: {e}"),
                })?;
            children.push((i, child));
        }
        let mut failed = None;
        for (i, mut child) in children {
            let status = child.wait().map_err(|e| PipelineError::Worker {
                worker: i + 1,
                message: format!("could not be waited for: {e}"),
            })?;
            if !status.success() && failed.is_none() {
                failed = Some((i, child.id(), status));
            }
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(PipelineError::Cancelled {
                next: format!("the remaining {kind} stages"),
            });
        }
        computed.extend(
            todo.iter()
                .filter(|s| cache.contains(kind, &s.key))
                .map(|s| s.key.0.clone()),
        );
        if let Some((i, pid, status)) = failed {
            use std::os::unix::process::ExitStatusExt;
            let how = match (status.code(), status.signal()) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(s)) => format!("was killed by signal {s}"),
                _ => status.to_string(),
            };
            return Err(PipelineError::Worker {
                worker: i + 1,
                message: format!(
                    "(pid {pid}) {how} while computing {kind} stages; the stages finished so far are cached: re-run to resume"
                ),
            });
        }
    }
    Ok(computed)
}
