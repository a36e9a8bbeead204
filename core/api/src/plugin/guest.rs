//! The plugin side of the ABI, compiled into every plugin library by
//! [`export_plugin!`](crate::export_plugin): it describes the library's methods and turns the
//! host's calls back into the contexts a built-in method gets. The model, mask and data in those
//! contexts are the host's tensors (shared, not copied); the model's forward pass and every
//! training loop run in the host.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, OnceLock};

use tch::{Device, Tensor};

use super::abi::{
    ABI_MAJOR, ABI_MINOR, AttackCall, BatchRef, C_tensor, HOST_API_SIZE_2_0, Handle, HostApi,
    KIND_ATTACK, KIND_PRUNER, KIND_UNLEARNER, LoopRequest, MethodEntry, ObjectiveRef, PANIC_ABORT,
    PANIC_UNWIND, PhaseRef, PhasedLoopRequest, PluginDescriptor, PruneCall, Status, TensorSink,
    UnlearnCall,
};
use super::wire::{
    self, CallContext, Collected, OwnedDataset, OwnedList, OwnedModel, PhaseMeta, ReportMeta,
    RunMeta, borrow_tensor, free_string, guard, into_handle, put_all, read_json, read_list,
    read_model, read_task, status_result,
};
use crate::data::Augment;
use crate::forget::ForgetSet;
use crate::mask::Mask;
use crate::method::{
    Attack, AttackCtx, BuiltinMethod, Factory, Kind, PruneCtx, Pruner, UnlearnCtx, Unlearner,
};
use crate::model::{Model, Snapshot};
use crate::train::{
    Batch, LoopBackend, Objective, Run, Schedule, TrainError, TrainReport, Trainer,
};

/// A descriptor made once and kept for the life of the process.
pub struct Exported(PluginDescriptor);

// SAFETY: the descriptor and everything it points at are immutable after creation.
unsafe impl Send for Exported {}
// SAFETY: as for `Send` just above.
unsafe impl Sync for Exported {}

/// The descriptor of a library exporting `methods` (what `export_plugin!`'s entry returns).
/// `panic_unwind` is `cfg!(panic = "unwind")` as the plugin crate was compiled (the macro
/// writes it there). Returns null when it cannot be made (a method's schema does not serialise).
pub fn descriptor(
    methods: &'static [BuiltinMethod],
    plugin_name: &str,
    plugin_version: &str,
    panic_unwind: bool,
    cell: &'static OnceLock<Exported>,
) -> *const PluginDescriptor {
    let made = std::panic::catch_unwind(|| {
        &cell
            .get_or_init(|| {
                Exported(make_descriptor(
                    methods,
                    plugin_name,
                    plugin_version,
                    panic_unwind,
                ))
            })
            .0 as *const PluginDescriptor
    });
    made.unwrap_or(std::ptr::null())
}

/// Builds a descriptor (not cached). Test fixtures use it to make broken ones.
pub fn make_descriptor(
    methods: &'static [BuiltinMethod],
    plugin_name: &str,
    plugin_version: &str,
    panic_unwind: bool,
) -> PluginDescriptor {
    let entries: Vec<*const MethodEntry> = methods
        .iter()
        .map(|m| Box::leak(Box::new(method_entry(m))) as *const MethodEntry)
        .collect();
    let entries = Box::leak(entries.into_boxed_slice());
    let wire = wire::wire_digest();
    PluginDescriptor {
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        size: std::mem::size_of::<PluginDescriptor>(),
        libtorch_version: wire::leak_string(super::LIBTORCH_VERSION),
        panic_strategy: if panic_unwind {
            PANIC_UNWIND
        } else {
            PANIC_ABORT
        },
        wire_hash: wire::leak_string(&wire.hash),
        wire_types: wire::leak_string(
            &serde_json::to_string(&wire.types).expect("a map of strings is JSON"),
        ),
        plugin_name: wire::leak_string(plugin_name),
        plugin_version: wire::leak_string(plugin_version),
        methods: entries.as_ptr(),
        n_methods: entries.len(),
        free_string,
    }
}

fn method_entry(m: &'static BuiltinMethod) -> MethodEntry {
    let json = |v: serde_json::Value| wire::leak_string(&v.to_string());
    MethodEntry {
        size: std::mem::size_of::<MethodEntry>(),
        kind: match m.kind {
            Kind::Pruner => KIND_PRUNER,
            Kind::Unlearner => KIND_UNLEARNER,
            Kind::Attack => KIND_ATTACK,
        },
        name: wire::leak_string(m.name),
        summary: wire::leak_string(m.summary),
        schema_json: json((m.schema)()),
        default_config_json: json((m.default_config)()),
        state: m as *const BuiltinMethod as *const c_void,
        create,
        destroy,
        unlearn,
        pruner_info,
        prune,
        attack_target,
        poison,
        trigger,
        describe_json: json(serde_json::json!({ "crate": m.krate })),
    }
}

/// A method built from its config.
enum Instance {
    Unlearner(Box<dyn Unlearner>),
    Pruner(Box<dyn Pruner>),
    Attack(Box<dyn Attack>),
}

impl Instance {
    fn kind(&self) -> Kind {
        match self {
            Instance::Unlearner(_) => Kind::Unlearner,
            Instance::Pruner(_) => Kind::Pruner,
            Instance::Attack(_) => Kind::Attack,
        }
    }
}

impl Instance {
    /// The instance behind a handle the host got from `create`.
    ///
    /// # Safety
    /// `p` came from `create` and has not been destroyed.
    unsafe fn from_handle<'a>(p: *mut c_void) -> &'a Instance {
        // SAFETY: the caller upholds this function's `# Safety` contract.
        unsafe { &*(p as *const Instance) }
    }

    fn not_a(&self, expected: Kind) -> String {
        format!(
            "this method is {}, not {}",
            self.kind().with_article(),
            expected.with_article()
        )
    }

    fn unlearner(&self) -> Result<&dyn Unlearner, String> {
        match self {
            Instance::Unlearner(m) => Ok(m.as_ref()),
            _ => Err(self.not_a(Kind::Unlearner)),
        }
    }

    fn pruner(&self) -> Result<&dyn Pruner, String> {
        match self {
            Instance::Pruner(m) => Ok(m.as_ref()),
            _ => Err(self.not_a(Kind::Pruner)),
        }
    }

    fn attack(&self) -> Result<&dyn Attack, String> {
        match self {
            Instance::Attack(m) => Ok(m.as_ref()),
            _ => Err(self.not_a(Kind::Attack)),
        }
    }
}

unsafe extern "C" fn create(
    state: *const c_void,
    config_json: *const c_char,
    instance: *mut *mut c_void,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let m = &*(state as *const BuiltinMethod);
            let config: serde_json::Value = read_json(config_json, "config")?;
            let issues = |issues| serde_json::to_string(&issues).expect("issues serialise");
            let made = match m.factory {
                Factory::Unlearner(f) => Instance::Unlearner(f(&config).map_err(issues)?),
                Factory::Pruner(f) => Instance::Pruner(f(&config).map_err(issues)?),
                Factory::Attack(f) => Instance::Attack(f(&config).map_err(issues)?),
            };
            *instance = Box::into_raw(Box::new(made)) as *mut c_void;
            Ok(())
        })
    }
}

unsafe extern "C" fn destroy(instance: *mut c_void) {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        if !instance.is_null() {
            let _ = std::panic::catch_unwind(|| drop(Box::from_raw(instance as *mut Instance)));
        }
    }
}

/// The host's table, checked and read: the same major version, and at least the entries of
/// 2.0 (a newer host's table has more, which this copy leaves unread).
unsafe fn host(api: *const HostApi) -> Result<HostApi, String> {
    // SAFETY: the caller upholds what this `unsafe fn` requires (its doc comment).
    unsafe {
        if api.is_null() {
            return Err("no host API table".into());
        }
        let p = api as *const u8;
        let major: u32 = wire::read_header_field(p, std::mem::offset_of!(HostApi, abi_major));
        let minor: u32 = wire::read_header_field(p, std::mem::offset_of!(HostApi, abi_minor));
        let size: usize = wire::read_header_field(p, std::mem::offset_of!(HostApi, size));
        if major != ABI_MAJOR || size < HOST_API_SIZE_2_0 {
            return Err(format!(
                "the host speaks plugin ABI {major}.{minor} (a table of {size} bytes), this plugin \
             {ABI_MAJOR}.{ABI_MINOR} (which needs {ABI_MAJOR}.x and at least {HOST_API_SIZE_2_0} \
             bytes)"
            ));
        }
        Ok(wire::read_sized(api, size))
    }
}

/// A trainer whose loops run in the host, through `trainer`, the host's handle for the call.
pub(crate) fn remote_trainer(
    api: HostApi,
    trainer: Handle,
    device: Device,
    progress: bool,
) -> Trainer {
    let backend = HostLoop { api, trainer };
    Trainer::with_backend(device, progress, Arc::new(backend))
}

fn mask_of(model: &Model, list: &super::abi::TensorList) -> Result<Option<Mask>, String> {
    // SAFETY: the list is part of the call, valid during it.
    let tensors = unsafe { read_list(list, "mask")? };
    tensors
        .map(|t| Mask::from_tensors(model, t.into_iter().collect()).map_err(|e| e.to_string()))
        .transpose()
}

unsafe extern "C" fn unlearn(
    instance: *mut c_void,
    api: *const HostApi,
    call: *const UnlearnCall,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let method = Instance::from_handle(instance).unlearner()?;
            let api = host(api)?;
            let call = &*call;
            let mut model = read_model(&call.model)?;
            let mask = mask_of(&model, &call.mask)?;
            let data = read_task(&call.data)?;
            let forget: ForgetSet = read_json(call.forget_json, "forget set")?;
            let cx: CallContext = read_json(call.context_json, "call context")?;
            let trainer = remote_trainer(api, call.trainer, model.device(), cx.progress);
            let mut ctx = UnlearnCtx {
                model: &mut model,
                mask: mask.as_ref(),
                data: &data,
                forget: &forget,
                trainer: &trainer,
                seed: cx.seed,
                label: cx.label,
            };
            method.unlearn(&mut ctx).map_err(|e| e.to_string())
        })
    }
}

unsafe extern "C" fn pruner_info(
    instance: *mut c_void,
    sparsity: *mut f64,
    rewind_epoch: *mut i64,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let method = Instance::from_handle(instance).pruner()?;
            *sparsity = method.sparsity();
            *rewind_epoch = wire::rewind_point_to_i64(method.rewind_point());
            Ok(())
        })
    }
}

unsafe extern "C" fn prune(
    instance: *mut c_void,
    api: *const HostApi,
    call: *const PruneCall,
    out: TensorSink,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let method = Instance::from_handle(instance).pruner()?;
            let api = host(api)?;
            let call = &*call;
            let mut model = read_model(&call.model)?;
            let rewind = read_list(&call.rewind, "rewind snapshot")?
                .map(|t| Snapshot(t.into_iter().collect()));
            let data = read_task(&call.data)?;
            let schedule: Schedule = read_json(call.schedule_json, "schedule")?;
            let cx: CallContext = read_json(call.context_json, "call context")?;
            let trainer = remote_trainer(api, call.trainer, model.device(), cx.progress);
            let mut ctx = PruneCtx {
                model: &mut model,
                rewind: rewind.as_ref(),
                data: &data,
                schedule: &schedule,
                trainer: &trainer,
                seed: cx.seed,
                label: cx.label,
            };
            let mask = method.prune(&mut ctx).map_err(|e| e.to_string())?;
            // The host's sink (its handle checked there).
            put_all(&out, mask.tensors().iter().map(|(k, t)| (k.as_str(), t)));
            Ok(())
        })
    }
}

unsafe extern "C" fn attack_target(
    instance: *mut c_void,
    target: *mut u64,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let method = Instance::from_handle(instance).attack()?;
            *target = method.target() as u64;
            Ok(())
        })
    }
}

unsafe extern "C" fn poison(
    instance: *mut c_void,
    _api: *const HostApi,
    call: *const AttackCall,
    out: TensorSink,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let method = Instance::from_handle(instance).attack()?;
            let call = &*call;
            let data = read_task(&call.data)?;
            let cx: CallContext = read_json(call.context_json, "call context")?;
            let ctx = AttackCtx {
                data: &data,
                seed: cx.seed,
                label: cx.label,
            };
            let p = method.poison(&ctx).map_err(|e| e.to_string())?;
            let rows: Vec<i64> = p.rows.iter().map(|&r| r as i64).collect();
            let rows = Tensor::from_slice(&rows);
            put_all(
                &out,
                [
                    ("rows", &rows),
                    ("images", &p.images),
                    ("labels", &p.labels),
                ],
            );
            Ok(())
        })
    }
}

unsafe extern "C" fn trigger(
    instance: *mut c_void,
    images: *mut C_tensor,
    out: *mut *mut C_tensor,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let method = Instance::from_handle(instance).attack()?;
            let images = borrow_tensor(images, "images")?;
            let triggered = method.trigger(&images).map_err(|e| e.to_string())?;
            *out = into_handle(triggered);
            Ok(())
        })
    }
}

/// Runs a plugin's training loops in the host (`HostApi::run_loop`). A copy that outlives the
/// call that made it (a plugin keeping `ctx.trainer`) holds a stale handle, which the host
/// refuses.
struct HostLoop {
    api: HostApi,
    trainer: Handle,
}

/// What the objective callbacks reach.
struct ObjectiveState<'a> {
    objective: &'a mut dyn Objective,
    model: *const Model,
}

impl LoopBackend for HostLoop {
    fn run(
        &self,
        model: &mut Model,
        run: Run<'_>,
        objective: &mut dyn Objective,
    ) -> Result<TrainReport, TrainError> {
        if run.keep_best.is_some() {
            return Err(TrainError::Remote(format!(
                "{}: keeping the best epoch's weights (Run::keep_best) is not available to plugins",
                run.label
            )));
        }
        if self.api.abi_minor < 2 || self.api.run_phases.is_none() {
            return self.run_single(model, run, objective);
        }
        let model: &Model = model;
        let owned_model = OwnedModel::new(model);
        let mask = OwnedList::optional(run.mask.map(|m| m.tensors().iter()));
        let datasets: Vec<OwnedDataset> = run
            .phases
            .iter()
            .map(|p| OwnedDataset::new(p.stream.data))
            .collect();
        let metas: Vec<std::ffi::CString> = run
            .phases
            .iter()
            .map(|p| {
                wire::json_cstring(&PhaseMeta {
                    name: p.name.clone(),
                    augment: p.stream.augment,
                    batch_size: p.batch_size,
                    until_epoch: p.until_epoch,
                    max_steps: p.max_steps,
                })
            })
            .collect();
        let phases: Vec<PhaseRef> = run
            .phases
            .iter()
            .zip(&datasets)
            .zip(&metas)
            .map(|((p, d), m)| PhaseRef {
                data: d.as_ref(),
                rows: p.stream.rows.as_ptr() as *mut C_tensor,
                labels: p.stream.labels.as_ptr() as *mut C_tensor,
                forget: p.stream.forget.as_ptr() as *mut C_tensor,
                phase_json: m.as_ptr(),
            })
            .collect();
        let run_json = wire::json_cstring(&run_meta(&run, Augment::NONE));
        let mut state = ObjectiveState {
            objective,
            model: model as *const Model,
        };
        let rewind = Collected::default();
        let rewind_sink = rewind.lend();
        let request = PhasedLoopRequest {
            size: std::mem::size_of::<PhasedLoopRequest>(),
            model: owned_model.as_ref(),
            mask: mask.as_ref(),
            phases: phases.as_ptr(),
            n_phases: phases.len(),
            run_json: run_json.as_ptr(),
            objective: objective_ref(&mut state),
            batch_loss: objective_batch_loss,
            rewind: rewind_sink.sink(),
        };
        let mut report = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: the host's function (present: checked above); everything the request points
        // at lives until this returns. The host checks the trainer handle.
        let report: ReportMeta = unsafe {
            let api = &self.api;
            let run_phases = api.run_phases.expect("checked above");
            let status = run_phases(self.trainer, &request, &mut report, &mut err);
            status_result(status, err, api.free_string).map_err(TrainError::Remote)?;
            let parsed = read_json(report, "loop report");
            (api.free_string)(report);
            parsed.map_err(TrainError::Remote)?
        };
        drop(rewind_sink);
        Ok(train_report(&run, report, rewind))
    }
}

/// `run_json` of a request for `run` (`augment`: the one stream's, for `run_loop`).
fn run_meta(run: &Run<'_>, augment: Augment) -> RunMeta {
    RunMeta {
        label: run.label.clone(),
        schedule: run.schedule.clone(),
        schedule_offset: run.schedule_offset,
        rewind_epoch: run.rewind_epoch,
        seed: run.seed,
        augment,
    }
}

fn objective_ref(state: &mut ObjectiveState<'_>) -> ObjectiveRef {
    ObjectiveRef {
        state: state as *mut ObjectiveState as *mut c_void,
        start_epoch: objective_start_epoch,
        loss: objective_loss,
        before_step: objective_before_step,
        free_string,
    }
}

fn train_report(run: &Run<'_>, report: ReportMeta, rewind: Collected) -> TrainReport {
    TrainReport {
        seconds: report.seconds,
        rewind: run.rewind_epoch.map(|_| Snapshot(rewind.into_map())),
        best: None,
        last_loss: report.last_loss.unwrap_or(f64::NAN),
        steps: report.steps,
        log: report.log,
    }
}

impl HostLoop {
    /// A one-phase run through a host older than 2.2 (`run_loop`): it carries no tags, so a
    /// stream with forget samples, or several phases, is refused rather than mislabelled.
    fn run_single(
        &self,
        model: &mut Model,
        run: Run<'_>,
        objective: &mut dyn Objective,
    ) -> Result<TrainReport, TrainError> {
        let old_host = || {
            TrainError::Remote(format!(
                "{}: phases and forget-tagged streams need a host of plugin ABI 2.2 or later \
                 (this host speaks {}.{})",
                run.label, self.api.abi_major, self.api.abi_minor
            ))
        };
        let [phase] = run.phases.as_slice() else {
            return Err(old_host());
        };
        let stream = phase.stream;
        if phase.batch_size.is_some()
            || phase.until_epoch.is_some()
            || phase.max_steps.is_some()
            || stream.forget.any().int64_value(&[]) != 0
        {
            return Err(old_host());
        }
        let model: &Model = model;
        let owned_model = OwnedModel::new(model);
        let mask = OwnedList::optional(run.mask.map(|m| m.tensors().iter()));
        let data = OwnedDataset::new(stream.data);
        let run_json = wire::json_cstring(&run_meta(&run, stream.augment));
        let mut state = ObjectiveState {
            objective,
            model: model as *const Model,
        };
        let rewind = Collected::default();
        let rewind_sink = rewind.lend();
        let request = LoopRequest {
            model: owned_model.as_ref(),
            mask: mask.as_ref(),
            data: data.as_ref(),
            rows: stream.rows.as_ptr() as *mut C_tensor,
            labels: stream.labels.as_ptr() as *mut C_tensor,
            run_json: run_json.as_ptr(),
            objective: objective_ref(&mut state),
            rewind: rewind_sink.sink(),
        };
        let mut report = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: the host's functions; everything the request points at lives until this
        // returns. The host checks the trainer handle.
        let report: ReportMeta = unsafe {
            let api = &self.api;
            let status = (api.run_loop)(self.trainer, &request, &mut report, &mut err);
            status_result(status, err, api.free_string).map_err(TrainError::Remote)?;
            let parsed = read_json(report, "loop report");
            (api.free_string)(report);
            parsed.map_err(TrainError::Remote)?
        };
        drop(rewind_sink);
        Ok(train_report(&run, report, rewind))
    }
}

unsafe fn objective_state<'a>(state: *mut c_void) -> &'a mut ObjectiveState<'a> {
    // SAFETY: the caller upholds what this `unsafe fn` requires (its doc comment).
    unsafe { &mut *(state as *mut ObjectiveState<'a>) }
}

unsafe extern "C" fn objective_start_epoch(
    state: *mut c_void,
    epoch: u64,
    epochs: u64,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            objective_state(state)
                .objective
                .start_epoch(epoch as usize, epochs as usize);
            Ok(())
        })
    }
}

unsafe extern "C" fn objective_batch_loss(
    state: *mut c_void,
    batch: *const BatchRef,
    out: *mut *mut C_tensor,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let s = objective_state(state);
            let b = batch.as_ref().ok_or("no batch")?;
            if b.size < std::mem::size_of::<BatchRef>() {
                return Err(format!(
                    "a batch of {} bytes, {} expected",
                    b.size,
                    std::mem::size_of::<BatchRef>()
                ));
            }
            let batch = Batch::new(
                borrow_tensor(b.x, "batch inputs")?,
                borrow_tensor(b.y, "batch labels")?,
                b.epoch as usize,
                b.epochs as usize,
            )
            .with_origin(
                borrow_tensor(b.rows, "batch rows")?,
                borrow_tensor(b.forget, "batch tags")?,
                b.phase as usize,
                b.step as usize,
            );
            let loss = s
                .objective
                .loss(&*s.model, &batch)
                .map_err(|e| e.to_string())?;
            *out = into_handle(loss);
            Ok(())
        })
    }
}

unsafe extern "C" fn objective_loss(
    state: *mut c_void,
    x: *mut C_tensor,
    y: *mut C_tensor,
    epoch: u64,
    epochs: u64,
    out: *mut *mut C_tensor,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let s = objective_state(state);
            let batch = Batch::new(
                borrow_tensor(x, "batch inputs")?,
                borrow_tensor(y, "batch labels")?,
                epoch as usize,
                epochs as usize,
            );
            let loss = s
                .objective
                .loss(&*s.model, &batch)
                .map_err(|e| e.to_string())?;
            *out = into_handle(loss);
            Ok(())
        })
    }
}

unsafe extern "C" fn objective_before_step(state: *mut c_void, err: *mut *mut c_char) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let s = objective_state(state);
            s.objective.before_step(&*s.model);
            Ok(())
        })
    }
}
