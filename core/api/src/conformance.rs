//! The conformance suite: properties every method must have, checked through the registry's
//! [`Method`] API only (kind, name, summary, schema, default config and the builders), so that it
//! runs the same against built-ins and methods loaded from libraries.
//!
//! Config properties (every kind): a non-empty summary; a schema that compiles and bounds every
//! number from both sides; a default config that is an object, validates against the schema, and
//! whose every field is a schema property with that value as its `default` (and every schema
//! `default` is the config's value); an unknown field is rejected by the schema; `{}` builds.
//!
//! Behaviour, with the default config on [`TinyTask`]:
//! - unlearners (on the task's 50%-sparse model): run without error, leave finite weights, keep
//!   every pruned weight at zero, and give identical weights and buffers for the same seed;
//! - pruners (after dense training, with the rewind snapshot they ask for): a mask with exactly
//!   `round(sparsity * total)` zeros, applied to the model, which stays finite;
//! - attacks: a valid poisoning of train (rows strictly increasing and inside train, images
//!   `[rows, C, H, W]` of train's dtype and device, i64 labels that are classes), identical for
//!   the same seed, a target that is a class, and a trigger that keeps shape, dtype and device,
//!   leaves its input alone and is deterministic.
//!
//! A panic inside a method is caught and reported as a failure of that check.

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::{Value, json};
use tch::{Device, Tensor};

use crate::mask::Mask;
use crate::method::poisoning_issues;
use crate::method::{AttackCtx, Kind, PruneCtx};
use crate::model::Model;
use crate::registry::Method;
use crate::testing::TinyTask;
use crate::train::{CrossEntropy, Run, Stream, Trainer};

/// Every way `m` fails the suite, each message naming the method; empty when it conforms.
pub fn check(m: &Method) -> Vec<String> {
    let mut f = Failures {
        who: format!("{} `{}`", m.kind, m.name),
        list: Vec::new(),
    };
    check_config(m, &mut f);
    let behaviour = match m.kind {
        Kind::Unlearner => check_unlearner,
        Kind::Pruner => check_pruner,
        Kind::Attack => check_attack,
    };
    behaviour(m, &mut f);
    f.list
}

/// Panics with every failure of [`check`], if any.
pub fn assert_conforms(m: &Method) {
    let failures = check(m);
    assert!(
        failures.is_empty(),
        "{} `{}` does not conform ({} failure(s)):\n  {}",
        m.kind,
        m.name,
        failures.len(),
        failures.join("\n  ")
    );
}

struct Failures {
    who: String,
    list: Vec<String>,
}

impl Failures {
    fn fail(&mut self, msg: impl std::fmt::Display) {
        self.list.push(format!("{}: {msg}", self.who));
    }

    /// Records a failure unless `ok`.
    fn ensure(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(msg());
        }
    }

    /// Runs `step` (which calls into the method), turning a panic into a failure of `what`.
    fn guard<T>(&mut self, what: &str, step: impl FnOnce(&mut Failures) -> T) -> Option<T> {
        let who = self.who.clone();
        let mut inner = Failures {
            who,
            list: Vec::new(),
        };
        let r = catch_unwind(AssertUnwindSafe(|| step(&mut inner)));
        self.list.append(&mut inner.list);
        match r {
            Ok(v) => Some(v),
            Err(payload) => {
                self.fail(format_args!(
                    "panicked while {what}: {}",
                    panic_message(&*payload)
                ));
                None
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_string()
    }
}

fn check_config(m: &Method, f: &mut Failures) {
    f.ensure(!m.summary.trim().is_empty(), || {
        "the summary is empty".into()
    });
    let validator = match jsonschema::validator_for(&m.schema) {
        Ok(v) => Some(v),
        Err(e) => {
            f.fail(format_args!("the config schema does not compile: {e}"));
            None
        }
    };
    if let Some(v) = &validator {
        let errs: Vec<String> = v
            .iter_errors(&m.default_config)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        f.ensure(errs.is_empty(), || {
            format!("the default config fails its schema: {}", errs.join("; "))
        });
        f.ensure(!v.is_valid(&json!({"no_such_field": 1})), || {
            "the schema accepts an unknown field (`no_such_field`)".into()
        });
    }
    for path in crate::bounds::unbounded_numbers(&m.schema) {
        f.fail(format_args!(
            "schema number {path} has no lower or no upper bound: give it a range (an \
             unbounded value can overflow on its way to libtorch)"
        ));
    }
    let props = m.schema.get("properties").and_then(Value::as_object);
    match m.default_config.as_object() {
        None => f.fail(format_args!(
            "the default config is not an object: {}",
            m.default_config
        )),
        Some(defaults) => {
            for (field, value) in defaults {
                match props.and_then(|p| p.get(field)) {
                    None => f.fail(format_args!(
                        "default config field `{field}` is not a property of the schema"
                    )),
                    Some(p) => f.ensure(p.get("default") == Some(value), || {
                        format!(
                            "schema default of `{field}` is {}, the config's default is {value}",
                            p.get("default")
                                .map_or_else(|| "missing".to_string(), Value::to_string)
                        )
                    }),
                }
            }
            for (field, p) in props.into_iter().flatten() {
                if let (Some(d), None) = (p.get("default"), defaults.get(field)) {
                    f.fail(format_args!(
                        "schema property `{field}` has default {d}, but the default config \
                         has no `{field}`"
                    ));
                }
            }
        }
    }
}

/// Builds the method with `{}` via `build`, reporting an error or a panic.
fn build_empty<T: ?Sized>(
    f: &mut Failures,
    build: impl FnOnce(&Value) -> crate::method::Built<T>,
) -> Option<Box<T>> {
    match f.guard("building from `{}`", |_| build(&json!({})))? {
        Ok(b) => Some(b),
        Err(issues) => {
            let list: Vec<String> = issues.iter().map(ToString::to_string).collect();
            f.fail(format_args!(
                "`{{}}` does not build with the defaults: {}",
                list.join("; ")
            ));
            None
        }
    }
}

/// Values of every variable (parameters and buffers) that differ between `a` and `b`.
fn differing(a: &Model, b: &Model) -> Vec<String> {
    let (a, b) = (a.snapshot().0, b.snapshot().0);
    let mut out: Vec<String> = a
        .iter()
        .filter(|(k, t)| !b.get(*k).is_some_and(|u| same(t, u)))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.kind() == b.kind() && a.device() == b.device() && a.equal(b)
}

fn check_unlearner(m: &Method, f: &mut Failures) {
    let Some(u) = build_empty(f, |v| m.build_unlearner(v)) else {
        return;
    };
    let Some((t, model, mask)) =
        f.guard("setting up the tiny task (not the method's code)", |_| {
            let t = TinyTask::new();
            let (model, mask) = t.trained_sparse();
            (t, model, mask)
        })
    else {
        return;
    };
    let run = |f: &mut Failures, which: &str| -> Option<Model> {
        let r = f.guard(
            &format!("unlearning the tiny sparse model ({which} run)"),
            |_| t.unlearn(u.as_ref(), &model, Some(&mask), 1),
        )?;
        match r {
            Ok(m) => Some(m),
            Err(e) => {
                f.fail(format_args!(
                    "unlearning the tiny sparse model failed ({which} run): {e}"
                ));
                None
            }
        }
    };
    let Some(a) = run(f, "first") else { return };
    f.guard("checking the unlearned model", |f| {
        f.ensure(a.all_finite(), || {
            "non-finite weights after unlearning".into()
        });
        let v = mask.violations(&a);
        f.ensure(v == 0, || {
            format!("{v} pruned weight(s) are non-zero after unlearning (the mask is not kept)")
        });
    });
    let Some(b) = run(f, "second") else { return };
    f.guard("comparing two runs", |f| {
        let diff = differing(&a, &b);
        f.ensure(diff.is_empty(), || {
            format!(
                "two runs with the same seed give different values of {}",
                diff.join(", ")
            )
        });
    });
}

fn check_pruner(m: &Method, f: &mut Failures) {
    let Some(p) = build_empty(f, |v| m.build_pruner(v)) else {
        return;
    };
    f.guard("pruning the tiny model", |f| {
        let t = TinyTask::new();
        let sparsity = p.sparsity();
        f.ensure((0.0..=1.0).contains(&sparsity), || {
            format!("sparsity() = {sparsity} is not in [0, 1]")
        });
        let mut model = Model::new(t.spec.clone(), Device::Cpu, 0).expect("valid tiny spec");
        let all: Vec<usize> = (0..t.data.train.len()).collect();
        let stream = Stream::new(&t.data.train, &all);
        let s = TinyTask::schedule();
        let trainer = Trainer::new(Device::Cpu, false);
        let report = trainer
            .run(
                &mut model,
                Run::new("dense".into(), &s, &stream, None, 0)
                    .keeping(p.rewind_point(), &t.data.val),
                &mut CrossEntropy,
            )
            .expect("dense training of the tiny model");
        let mut ctx = PruneCtx {
            model: &mut model,
            rewind: report.kept(),
            data: &t.data,
            schedule: &s,
            trainer: &trainer,
            seed: 0,
            label: m.name.clone(),
        };
        let mask: Mask = match p.prune(&mut ctx) {
            Ok(mask) => mask,
            Err(e) => return f.fail(format_args!("pruning the tiny model failed: {e}")),
        };
        let want = (sparsity * mask.total() as f64).round() as i64;
        f.ensure(mask.zeros() == want, || {
            format!(
                "the mask has {} zeros of {}, sparsity() = {sparsity} asks for {want}",
                mask.zeros(),
                mask.total()
            )
        });
        let v = mask.violations(&model);
        f.ensure(v == 0, || {
            format!("the mask is not applied: {v} masked weight(s) are non-zero")
        });
        f.ensure(model.all_finite(), || {
            "non-finite weights after pruning".into()
        });
    });
}

fn check_attack(m: &Method, f: &mut Failures) {
    let Some(a) = build_empty(f, |v| m.build_attack(v)) else {
        return;
    };
    let Some(t) = f.guard("setting up the tiny task (not the method's code)", |_| {
        TinyTask::new()
    }) else {
        return;
    };
    let train = &t.data.train;
    let classes = train.classes;
    if let Some(target) = f.guard("calling target()", |_| a.target()) {
        f.ensure(target < classes, || {
            format!("target() = {target} is not one of the {classes} classes")
        });
    }
    let poison = |f: &mut Failures, which: &str| {
        let ctx = AttackCtx {
            data: &t.data,
            seed: 1,
            label: m.name.clone(),
        };
        match f.guard(&format!("poisoning the tiny task ({which} run)"), |_| {
            a.poison(&ctx)
        })? {
            Ok(p) => Some(p),
            Err(e) => {
                f.fail(format_args!(
                    "poisoning the tiny task failed ({which} run): {e}"
                ));
                None
            }
        }
    };
    if let Some(p) = poison(f, "first") {
        f.guard("checking the poisoning", |f| {
            for issue in poisoning_issues(train, &p) {
                f.fail(format_args!("poisoning: {issue}"));
            }
        });
        if let Some(q) = poison(f, "second") {
            f.guard("comparing two poisonings", |f| {
                f.ensure(
                    p.rows == q.rows && same(&p.images, &q.images) && same(&p.labels, &q.labels),
                    || "two poisonings with the same seed differ".into(),
                );
            });
        }
    }
    let images = &t.data.test.images;
    let original = images.copy();
    let trigger = |f: &mut Failures, which: &str| match f
        .guard(&format!("triggering test images ({which} run)"), |_| {
            a.trigger(images)
        })? {
        Ok(x) => Some(x),
        Err(e) => {
            f.fail(format_args!(
                "triggering test images failed ({which} run): {e}"
            ));
            None
        }
    };
    let Some(x) = trigger(f, "first") else { return };
    f.guard("checking triggered images", |f| {
        f.ensure(x.size() == images.size(), || {
            format!(
                "trigger changed the shape {:?} into {:?}",
                images.size(),
                x.size()
            )
        });
        f.ensure(x.kind() == images.kind(), || {
            format!(
                "trigger changed the dtype {:?} into {:?}",
                images.kind(),
                x.kind()
            )
        });
        f.ensure(x.device() == images.device(), || {
            format!(
                "trigger moved the images from {:?} to {:?}",
                images.device(),
                x.device()
            )
        });
        f.ensure(same(images, &original), || {
            "trigger modified its input in place".into()
        });
    });
    if let Some(y) = trigger(f, "second") {
        f.guard("comparing two triggers", |f| {
            f.ensure(same(&x, &y), || {
                "trigger is not deterministic: two calls differ".into()
            });
        });
    }
}
