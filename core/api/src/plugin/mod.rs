//! Dynamic plugins: methods in shared libraries (cdylibs) that join the same registry as the
//! built-ins, through a versioned C ABI ([`abi`]). The host side loads and checks libraries
//! ([`host`]); the plugin side ([`guest`]) turns the C calls back into the same `UnlearnCtx` /
//! `PruneCtx` / `AttackCtx` a built-in method gets, so a method's code does not change: a plugin
//! crate implements the method traits and adds one [`export_plugin!`](crate::export_plugin) line.

/// Exports methods from a plugin crate: `export_plugin! { unlearner: Rl, unlearner: SalUn }`
/// (kinds: `unlearner`, `pruner`, `attack`).
///
/// The same crate then works both ways:
/// - linked into a binary (as an rlib), the methods register as built-ins (`inventory`);
/// - built as a cdylib, it exports the one entry symbol the host loads. A crate with a `builtin`
///   feature leaves the symbol out when that feature is on, so several plugin crates can be
///   linked into one binary.
///
/// The entry records `cfg!(panic = "unwind")` as the plugin crate is compiled (this expansion is
/// compiled there, not in core): the host refuses a library built with `panic = "abort"`, whose
/// panics it could not catch.
#[macro_export]
macro_rules! export_plugin {
    ($($kind:ident : $t:ty),+ $(,)?) => {
        $(
            $crate::inventory::submit! {
                $crate::method::BuiltinMethod::$kind::<$t>(env!("CARGO_PKG_NAME"))
            }
        )+

        /// The plugin library's entry (see `unlearn_api::plugin::abi`).
        #[cfg(not(feature = "builtin"))]
        #[unsafe(no_mangle)]
        pub extern "C" fn unlearn_plugin_entry() -> *const $crate::plugin::abi::PluginDescriptor {
            static METHODS: &[$crate::method::BuiltinMethod] = &[
                $( $crate::method::BuiltinMethod::$kind::<$t>(env!("CARGO_PKG_NAME")), )+
            ];
            static DESCRIPTOR: ::std::sync::OnceLock<$crate::plugin::guest::Exported> =
                ::std::sync::OnceLock::new();
            $crate::plugin::guest::descriptor(
                METHODS,
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                cfg!(panic = "unwind"),
                &DESCRIPTOR,
            )
        }
    };
}

pub mod abi;
pub mod guest;
/// The host side: loading libraries and serving them (feature `host`, which the pipeline turns
/// on; a plugin does not need it).
#[cfg(feature = "host")]
pub mod host;
mod wire;

/// The libtorch version (`MAJOR.MINOR.PATCH`) this copy of core was built against, as the build
/// script (`build/link_libtorch.rs`) read it from libtorch's `torch/headeronly/version.h`, or
/// `unknown` when it could not. A plugin library carries its own copy; the host refuses a
/// library whose version differs from its own, or when either is unknown.
pub const LIBTORCH_VERSION: &str = match option_env!("UNLEARN_LIBTORCH_VERSION") {
    Some(v) => v,
    None => "unknown",
};

/// SHA-256 (hex) of the JSON Schemas of the documents that cross the plugin ABI, as this copy of
/// core defines them (what a library's descriptor carries and the host compares).
pub fn wire_schema_hash() -> &'static str {
    &wire::wire_digest().hash
}

/// The same per document, as the JSON object a descriptor's `wire_types` carries.
pub fn wire_schema_types_json() -> String {
    serde_json::to_string(&wire::wire_digest().types).expect("a map of strings is JSON")
}

#[cfg(all(test, feature = "host"))]
mod tests {
    use tch::{Device, Kind, TchError, Tensor};

    use super::{guest, host, wire};
    use crate::model::Model;
    use crate::objective::{CeL1, L1Schedule};
    use crate::testing::TinyTask;
    use crate::train::{
        Batch, CrossEntropy, Objective, Phase, Run, Schedule, Stream, Tag, TrainError, Trainer,
    };

    /// A plugin-side trainer wired to this process's own host table, through a handle of
    /// `host_trainer` (valid while `lent` lives): the whole round trip (model, mask, stream and
    /// objective across the C ABI, the rewind snapshot back) with no library involved.
    fn through_the_abi(lent: &wire::Lent<'_>) -> Trainer {
        // SAFETY: the table is static.
        let api = unsafe { std::ptr::read(host::host_api()) };
        guest::remote_trainer(api, lent.handle(), Device::Cpu, false)
    }

    fn schedule() -> Schedule {
        Schedule {
            epochs: 3,
            lr: 0.05,
            batch_size: 16,
            milestones: vec![2],
            ..Default::default()
        }
    }

    /// Records what each batch carried; ascent on forget samples, descent on the others.
    struct SignedByTag(Vec<(usize, usize, Vec<i64>, Vec<bool>)>);

    impl Objective for SignedByTag {
        fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, TchError> {
            self.0.push((
                batch.phase,
                batch.step,
                Vec::try_from(&batch.rows).unwrap(),
                Vec::try_from(&batch.forget).unwrap(),
            ));
            let per = model
                .forward_t(&batch.x, true)
                .f_log_softmax(-1, Kind::Float)?
                .f_nll_loss(&batch.y, None::<Tensor>, tch::Reduction::None, -100)?;
            let sign = batch.forget.to_kind(Kind::Float) * -2.0 + 1.0;
            (per * sign).f_mean(Kind::Float)
        }
    }

    #[test]
    fn phases_and_tags_cross_the_abi_unchanged() {
        let t = TinyTask::new();
        let (model, mask) = t.trained_sparse();
        let host_trainer = Trainer::new(Device::Cpu, false);
        let lent = wire::lend(&host_trainer, "trainer");
        let remote = through_the_abi(&lent);
        let train = &t.data.train;
        let forget_stream = Stream::tagged(train, &t.forget.forget, Tag::Forget);
        let mixed = Stream::mixed(train, &t.forget.retain, &t.forget.forget);
        let s = schedule();
        let run = |trainer: &Trainer, m: &mut Model| {
            let phases = vec![
                Phase {
                    batch_size: Some(4),
                    until_epoch: Some(1),
                    ..Phase::new("max", &forget_stream)
                },
                Phase {
                    max_steps: Some(3),
                    ..Phase::new("min", &mixed)
                },
            ];
            let mut objective = SignedByTag(Vec::new());
            let report = trainer
                .run(
                    m,
                    Run {
                        rewind_epoch: Some(1),
                        ..Run::phased("phases".into(), &s, phases, Some(&mask), 3)
                    },
                    &mut objective,
                )
                .unwrap();
            (report, objective.0)
        };
        let mut direct = model.try_clone().unwrap();
        let mut remote_model = model.try_clone().unwrap();
        let (a, seen_a) = run(&host_trainer, &mut direct);
        let (b, seen_b) = run(&remote, &mut remote_model);
        assert_eq!(seen_a, seen_b, "the batches' phase, step, rows and tags");
        assert!(seen_a.iter().any(|b| b.3.iter().any(|&t| t)));
        assert!(seen_a.iter().any(|b| b.0 == 1 && b.3.iter().any(|&t| !t)));
        assert_eq!(a.steps, b.steps);
        assert_eq!(a.log.len(), b.log.len(), "the epoch log crosses");
        for (x, y) in a.log.iter().zip(&b.log) {
            assert_eq!(x.phases, y.phases);
            assert_eq!(x.loss.to_bits(), y.loss.to_bits());
        }
        for (name, v) in direct.var_store().variables() {
            assert!(
                v.equal(&remote_model.var_store().variables()[&name]),
                "{name}"
            );
        }
        assert!(a.rewind.is_some() && b.rewind.is_some());
        assert_eq!(mask.violations(&remote_model), 0);
        assert!(!direct.parameters()["fc.weight"].equal(&model.parameters()["fc.weight"]));
    }

    #[test]
    fn a_host_older_than_2_2_refuses_tags_instead_of_dropping_them() {
        let t = TinyTask::new();
        let (model, _) = t.trained_sparse();
        let host_trainer = Trainer::new(Device::Cpu, false);
        let lent = wire::lend(&host_trainer, "trainer");
        // SAFETY: the table is static; this copy plays a 2.1 host.
        let mut api = unsafe { std::ptr::read(host::host_api()) };
        api.abi_minor = 1;
        api.run_phases = None;
        let old = guest::remote_trainer(api, lent.handle(), Device::Cpu, false);
        let tagged = Stream::tagged(&t.data.train, &t.forget.forget, Tag::Forget);
        let mut m = model.try_clone().unwrap();
        let e = old
            .run(
                &mut m,
                Run::new("tags".into(), &schedule(), &tagged, None, 0),
                &mut CrossEntropy,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("ABI 2.2") && e.contains("2.1"), "{e}");
        // An untagged one-phase run still goes through `run_loop`.
        let plain = Stream::new(&t.data.train, &t.forget.retain);
        old.run(
            &mut m,
            Run::new("plain".into(), &schedule(), &plain, None, 0),
            &mut CrossEntropy,
        )
        .unwrap();
    }

    #[test]
    fn a_loop_through_the_abi_equals_the_direct_loop() {
        let t = TinyTask::new();
        let (model, mask) = t.trained_sparse();
        let host_trainer = Trainer::new(Device::Cpu, false);
        let lent = wire::lend(&host_trainer, "trainer");
        let remote = through_the_abi(&lent);
        // Other labels than the data set's, so the stream's own labels must cross.
        let rows: Vec<usize> = (0..t.data.train.len()).collect();
        let labels = (t.data.train.labels.shallow_clone() + 1).remainder(4);
        let stream = Stream::new(&t.data.train, &rows).with_labels(labels);
        let s = schedule();
        let train = |trainer: &Trainer, m: &mut Model| {
            let mut objective = CeL1::descent(L1Schedule::Decay {
                a: 1e-3,
                no_l1_epochs: 1,
            });
            trainer
                .run(
                    m,
                    Run {
                        rewind_epoch: Some(1),
                        ..Run::new("abi".into(), &s, &stream, Some(&mask), 7)
                    },
                    &mut objective,
                )
                .unwrap()
        };
        let mut direct = model.try_clone().unwrap();
        let mut remote_model = model.try_clone().unwrap();
        let a = train(&host_trainer, &mut direct);
        let b = train(&remote, &mut remote_model);
        assert_eq!(a.steps, b.steps);
        assert_eq!(a.last_loss, b.last_loss);
        for (name, v) in direct.var_store().variables() {
            assert!(
                v.equal(&remote_model.var_store().variables()[&name]),
                "{name}"
            );
        }
        let (ra, rb) = (a.rewind.unwrap(), b.rewind.unwrap());
        assert_eq!(ra.0.len(), rb.0.len());
        for (name, v) in &ra.0 {
            assert!(v.equal(&rb.0[name]), "rewind {name}");
        }
        assert_eq!(mask.violations(&remote_model), 0);
        // The model moved (the comparison would pass vacuously otherwise).
        assert!(!direct.parameters()["fc.weight"].equal(&model.parameters()["fc.weight"]));
    }

    struct Faulty {
        batches: usize,
        panic: bool,
    }

    impl Objective for Faulty {
        fn loss(&mut self, model: &Model, batch: &Batch) -> Result<Tensor, TchError> {
            self.batches += 1;
            if self.batches == 3 {
                if self.panic {
                    panic!("objective panic at batch 3");
                }
                return Err(TchError::Torch("objective error at batch 3".into()));
            }
            Ok(model
                .forward_t(&batch.x, true)
                .log_softmax(-1, Kind::Float)
                .nll_loss(&batch.y))
        }
    }

    #[test]
    fn a_failing_or_panicking_objective_comes_back_as_an_error() {
        let t = TinyTask::new();
        let mut model = t.trained();
        let host_trainer = Trainer::new(Device::Cpu, false);
        let lent = wire::lend(&host_trainer, "trainer");
        let remote = through_the_abi(&lent);
        let rows: Vec<usize> = (0..t.data.train.len()).collect();
        let stream = Stream::new(&t.data.train, &rows);
        let s = schedule();
        for (panic, expected) in [
            (true, "panicked: objective panic at batch 3"),
            (false, "objective error at batch 3"),
        ] {
            let e = remote
                .run(
                    &mut model,
                    Run::new("faulty".into(), &s, &stream, None, 0),
                    &mut Faulty { batches: 0, panic },
                )
                .unwrap_err();
            assert!(matches!(e, TrainError::Remote(_)), "{e:?}");
            let m = e.to_string();
            assert!(m.starts_with("faulty: ") && m.contains(expected), "{m}");
        }
        // The host's loop still works afterwards.
        remote
            .run(
                &mut model,
                Run::new("after".into(), &s, &stream, None, 0),
                &mut Faulty {
                    batches: 10,
                    panic: true,
                },
            )
            .unwrap();
    }

    #[test]
    fn a_trainer_kept_past_its_call_is_refused_by_the_host() {
        let t = TinyTask::new();
        let mut model = t.trained();
        let before = model.parameters()["fc.weight"].copy();
        let host_trainer = Trainer::new(Device::Cpu, false);
        let lent = wire::lend(&host_trainer, "trainer");
        let handle = lent.handle();
        // A plugin keeps its copy of the call's trainer; the call returns.
        let kept = through_the_abi(&lent);
        drop(lent);
        let rows: Vec<usize> = (0..t.data.train.len()).collect();
        let stream = Stream::new(&t.data.train, &rows);
        let e = kept
            .run(
                &mut model,
                Run::new("late".into(), &schedule(), &stream, None, 0),
                &mut Faulty {
                    batches: 10,
                    panic: false,
                },
            )
            .unwrap_err();
        assert!(matches!(e, TrainError::Remote(_)), "{e:?}");
        assert!(
            e.to_string().contains(&format!(
                "stale trainer handle {handle}: used after the call that gave it returned"
            )),
            "{e}"
        );
        assert!(model.parameters()["fc.weight"].equal(&before), "untouched");
    }

    #[test]
    fn a_lent_model_and_its_copies_compute_as_the_owners() {
        let t = TinyTask::new();
        let mut model = t.trained();
        let e = crate::exec::Execution {
            precision: crate::exec::Precision::Bf16,
            channels_last: true,
        };
        model.set_execution(e).unwrap();
        let owned = wire::OwnedModel::new(&model);
        // SAFETY: `owned` outlives the model read from it.
        let lent = unsafe { wire::read_model(&owned.as_ref()) }.unwrap();
        assert_eq!(lent.execution(), e);
        let copy = lent.try_clone().unwrap();
        assert_eq!(copy.execution(), e);
        assert!(crate::exec::is_channels_last(
            &copy.var_store().variables()["conv1.weight"]
        ));
        let x = t.data.test.images.narrow(0, 0, 2).to_kind(Kind::Float) / 255.0;
        assert!(
            copy.forward_t(&x, false)
                .allclose(&model.forward_t(&x, false), 1e-6, 1e-6, false)
        );
        drop(lent);
        drop(copy);
    }

    #[test]
    fn a_model_forward_kept_past_its_call_is_an_error() {
        let t = TinyTask::new();
        let model = t.trained();
        let owned = wire::OwnedModel::new(&model);
        let r = owned.as_ref();
        let x = t.data.test.images.narrow(0, 0, 2).to_kind(Kind::Float) / 255.0;
        let forward = |r: &super::abi::ModelRef| {
            let mut out = std::ptr::null_mut();
            let mut err = std::ptr::null_mut();
            // SAFETY: the model's forward with a borrowed input and out-pointers.
            unsafe {
                let s =
                    (r.forward.call)(r.forward.state, x.as_ptr() as *mut _, 0, &mut out, &mut err);
                wire::status_result(s, err, r.forward.free_string).map(|()| Tensor::from_ptr(out))
            }
        };
        assert!(forward(&r).unwrap().equal(&model.forward_t(&x, false)));
        // A lent model reads as fp32 unless the owner's computes otherwise.
        // SAFETY: `owned` is alive.
        let lent = unsafe { wire::read_model(&r) }.unwrap();
        assert_eq!(lent.execution(), crate::exec::Execution::default());
        drop(lent);
        drop(owned);
        let e = forward(&r).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "stale model handle {}: used after the call that gave it returned",
                r.forward.state
            )),
            "{e}"
        );
    }
}
