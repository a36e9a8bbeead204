//! The conformance suite ([`unlearn_pipeline::conformance`]) over every built-in method (found through
//! the registry, so new ones are picked up without editing this file), and proof that the suite
//! can fail: deliberately broken methods are reported.

use unlearn_pipeline::conformance::{assert_conforms, check};
use unlearn_pipeline::method::{
    Attack, AttackCtx, AttackMethod, BuiltinMethod, Kind, MethodError, Poisoning, UnlearnCtx,
    UnlearnMethod, Unlearner,
};
use unlearn_pipeline::registry::{Method, Registry};
use unlearn_pipeline::tch::{Kind as DType, Tensor};

// Link the built-in plugins (their registrations vanish otherwise).
use unlearn_attack_badnets as _;
use unlearn_attack_blended as _;
use unlearn_fisher as _;
use unlearn_ft as _;
use unlearn_ga as _;
use unlearn_prune_imp as _;
use unlearn_prune_synflow as _;
use unlearn_scrub as _;

#[test]
fn every_builtin_method_conforms() {
    let r = Registry::builtin().expect("no duplicate names");
    for kind in Kind::ALL {
        assert!(
            r.list(Some(kind)).next().is_some(),
            "no built-in {kind} is linked"
        );
    }
    let started = std::time::Instant::now();
    // One thread per method: the checks are independent. (A `Method` need not be `Sync`, so each
    // thread looks its method up in a registry of its own.)
    let names: Vec<String> = r.list(None).map(|m| m.name.clone()).collect();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                s.spawn(move || {
                    let r = Registry::builtin().expect("no duplicate names");
                    let t = std::time::Instant::now();
                    let failures = check(r.get(name).expect("listed above"));
                    eprintln!("{name}: {:.1}s", t.elapsed().as_secs_f64());
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("check catches the methods' panics"))
            .collect()
    });
    eprintln!(
        "checked {} methods in {:.1}s",
        r.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// A config with no fields (shared by the broken methods; this test crate has no serde or
/// schemars of its own to derive one).
type NoConfig = unlearn_ft::RawConfig;

/// Writes into pruned weights: breaks the mask.
struct WritesPruned;

impl UnlearnMethod for WritesPruned {
    type Config = NoConfig;
    const NAME: &'static str = "WritesPruned";
    const SUMMARY: &'static str = "sets every prunable weight to 1";
    fn new(_: NoConfig) -> Self {
        WritesPruned
    }
}

impl Unlearner for WritesPruned {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        let _g = unlearn_pipeline::tch::no_grad_guard();
        for (_, mut w) in ctx.model.prunable() {
            let _ = w.fill_(1.0);
        }
        Ok(())
    }
}

/// Panics, and is random across runs.
struct Panics;

impl UnlearnMethod for Panics {
    type Config = NoConfig;
    const NAME: &'static str = "Panics";
    const SUMMARY: &'static str = "panics on the second run";
    fn new(_: NoConfig) -> Self {
        Panics
    }
}

static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Unlearner for Panics {
    fn unlearn(&self, _: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        if CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            panic!("deliberate panic");
        }
        Ok(())
    }
}

/// Unsorted rows out of range, float labels of no class, a trigger that changes shape, and a
/// target that is no class.
struct BadAttack;

impl AttackMethod for BadAttack {
    type Config = NoConfig;
    const NAME: &'static str = "BadAttack";
    const SUMMARY: &'static str = "every output is wrong";
    fn new(_: NoConfig) -> Self {
        BadAttack
    }
}

impl Attack for BadAttack {
    fn poison(&self, ctx: &AttackCtx<'_>) -> Result<Poisoning, MethodError> {
        let n = ctx.data.train.len();
        Ok(Poisoning {
            rows: vec![3, 1, n],
            images: ctx.data.train.images.narrow(0, 0, 2).to_kind(DType::Float),
            labels: Tensor::from_slice(&[0i64, 1, 99]),
        })
    }
    fn trigger(&self, images: &Tensor) -> Result<Tensor, MethodError> {
        Ok(images.narrow(0, 0, 1))
    }
    fn target(&self) -> usize {
        1000
    }
}

fn has(failures: &[String], needle: &str) -> bool {
    failures.iter().any(|f| f.contains(needle))
}

#[test]
fn an_unlearner_that_writes_into_pruned_weights_is_reported() {
    let m = Method::from_builtin(&BuiltinMethod::unlearner::<WritesPruned>("test"));
    let failures = check(&m);
    assert!(
        has(&failures, "unlearner `WritesPruned`: ")
            && has(&failures, "pruned weight(s) are non-zero"),
        "{failures:#?}"
    );
    // The config checks pass: only the mask property fails.
    assert_eq!(failures.len(), 1, "{failures:#?}");
    let e = std::panic::catch_unwind(|| assert_conforms(&m)).unwrap_err();
    let msg = e.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("`WritesPruned` does not conform (1 failure(s))"),
        "{msg}"
    );
}

#[test]
fn a_panicking_unlearner_is_reported_not_fatal() {
    let m = Method::from_builtin(&BuiltinMethod::unlearner::<Panics>("test"));
    let failures = check(&m);
    assert!(
        has(
            &failures,
            "panicked while unlearning the tiny sparse model (second run): deliberate panic"
        ),
        "{failures:#?}"
    );
}

#[test]
fn a_broken_attack_is_reported_on_every_count() {
    let m = Method::from_builtin(&BuiltinMethod::attack::<BadAttack>("test"));
    let failures = check(&m);
    for needle in [
        "target() = 1000",
        "not strictly increasing",
        "outside the training set",
        "images have shape",
        "images are Float",
        "label 99",
        "trigger changed the shape",
    ] {
        assert!(has(&failures, needle), "{needle}: {failures:#?}");
    }
    assert!(
        failures
            .iter()
            .all(|f| f.starts_with("attack `BadAttack`: "))
    );
}
