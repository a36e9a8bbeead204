//! The host side of the ABI: finding and loading plugin libraries, checking them, and making
//! their methods behave like built-ins (they implement the same traits by calling through the
//! method table; the host's loop runs their training through [`HostApi::run_loop`]).

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use tch::Tensor;

use super::abi::{
    AttackCall, C_tensor, EntryFn, FreeString, HostApi, LoopRequest, MethodEntry, ObjectiveRef,
    PluginDescriptor, PruneCall, Status, UnlearnCall, ABI_VERSION, ENTRY_SYMBOL, KIND_ATTACK,
    KIND_PRUNER, KIND_UNLEARNER,
};
use super::wire::{
    self, alloc_string, borrow_tensor, free_string, guard, json_cstring, put_all, read_dataset,
    read_json, read_list, read_model, read_str, status_result, CallContext, Collected, OwnedList,
    OwnedModel, OwnedTask, ReportMeta, RunMeta,
};
use crate::mask::Mask;
use crate::method::ConfigIssue;
use crate::method::{
    Attack, AttackCtx, Built, Kind, MethodError, Poisoning, PruneCtx, Pruner, RewindPoint,
    UnlearnCtx, Unlearner,
};
use crate::model::Model;
use crate::registry::{Method, Registry, Source};
use crate::train::{Batch, Objective, Phase, Run, Stream, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{}: not a loadable library: {reason}", path.display())]
    NotALibrary { path: PathBuf, reason: String },
    #[error("{}: no `{ENTRY_SYMBOL}` symbol, so not an unlearn plugin (a plugin crate ends with `export_plugin!` and builds as a cdylib)", path.display())]
    NoEntry { path: PathBuf },
    #[error("{}: the plugin's `{ENTRY_SYMBOL}` returned no descriptor", path.display())]
    NoDescriptor { path: PathBuf },
    #[error("{}: built for plugin ABI version {plugin}, but this unlearn speaks version {host}: rebuild the plugin against this unlearn's core", path.display())]
    AbiMismatch {
        path: PathBuf,
        plugin: u32,
        host: u32,
    },
    #[error("{}: built against libtorch {plugin}, but this unlearn runs libtorch {host}: rebuild the plugin with LIBTORCH pointing at libtorch {host}", path.display())]
    LibtorchMismatch {
        path: PathBuf,
        plugin: String,
        host: String,
    },
    #[error("{}: {reason}", path.display())]
    BadDescriptor { path: PathBuf, reason: String },
    #[error("{}: method `{name}`: {reason}", path.display())]
    BadMethod {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error(transparent)]
    Duplicate(#[from] crate::registry::RegistryError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The libraries a plugin path names: a library file itself, or the libraries
/// (`*`[`std::env::consts::DLL_SUFFIX`]) directly in a folder, sorted by name.
pub fn libraries_in(path: &Path) -> Result<Vec<PathBuf>, PluginError> {
    let io = |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let is_lib = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(std::env::consts::DLL_SUFFIX));
        if is_lib && p.is_file() {
            found.push(p);
        }
    }
    found.sort();
    Ok(found)
}

/// A checked library: its name and version, and its methods ready for the registry.
pub struct Library {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub methods: Vec<Method>,
    /// Methods the library offers but the host refused (e.g. an invalid schema).
    pub rejected: Vec<PluginError>,
}

/// Libraries already loaded in this process, by canonical path: loading twice gives the same
/// descriptor (libraries are never unloaded).
fn loaded() -> &'static Mutex<BTreeMap<PathBuf, usize>> {
    static LOADED: OnceLock<Mutex<BTreeMap<PathBuf, usize>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// Loads a library and checks its descriptor: ABI version and libtorch version first, then each
/// method (kind, strings, a schema that compiles and accepts the default config).
pub fn load(path: &Path) -> Result<Library, PluginError> {
    let canonical = path.canonicalize().map_err(|source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let descriptor = {
        let mut cache = loaded().lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(&canonical) {
            Some(&d) => d as *const PluginDescriptor,
            None => {
                let d = open(&canonical)?;
                cache.insert(canonical.clone(), d as usize);
                d
            }
        }
    };
    // SAFETY: a descriptor from the library's entry, static for the life of the process.
    unsafe { check(&canonical, &*descriptor) }
}

fn open(path: &Path) -> Result<*const PluginDescriptor, PluginError> {
    // SAFETY: loading runs the library's initialisers; that is what loading a plugin means.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        // libloading's own text is only "dlopen failed"; the loader's reason is its source.
        let reason = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        PluginError::NotALibrary {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    // SAFETY: the symbol's type is the ABI's entry type.
    let entry: EntryFn = match unsafe { lib.get::<EntryFn>(ENTRY_SYMBOL.as_bytes()) } {
        Ok(sym) => *sym,
        Err(_) => {
            return Err(PluginError::NoEntry {
                path: path.to_path_buf(),
            })
        }
    };
    // Never unloaded: code and static data of the library stay valid for the process.
    std::mem::forget(lib);
    // SAFETY: the entry takes nothing and returns a static descriptor or null.
    let d = unsafe { entry() };
    if d.is_null() {
        return Err(PluginError::NoDescriptor {
            path: path.to_path_buf(),
        });
    }
    Ok(d)
}

/// `MAJOR.MINOR.PATCH` without a local suffix (`2.11.0+cu130` -> `2.11.0`).
fn base_version(v: &str) -> &str {
    v.split('+').next().unwrap_or(v)
}

unsafe fn check(path: &Path, d: &PluginDescriptor) -> Result<Library, PluginError> {
    if d.abi_version != ABI_VERSION {
        return Err(PluginError::AbiMismatch {
            path: path.to_path_buf(),
            plugin: d.abi_version,
            host: ABI_VERSION,
        });
    }
    let bad = |reason: String| PluginError::BadDescriptor {
        path: path.to_path_buf(),
        reason,
    };
    let torch = read_str(d.libtorch_version, "libtorch version").map_err(bad)?;
    if base_version(torch) != base_version(super::LIBTORCH_VERSION) {
        return Err(PluginError::LibtorchMismatch {
            path: path.to_path_buf(),
            plugin: torch.to_string(),
            host: super::LIBTORCH_VERSION.to_string(),
        });
    }
    let name = read_str(d.plugin_name, "plugin name")
        .map_err(bad)?
        .to_string();
    let version = read_str(d.plugin_version, "plugin version")
        .map_err(bad)?
        .to_string();
    if d.methods.is_null() && d.n_methods > 0 {
        return Err(bad("a null method table".into()));
    }
    let entries = if d.n_methods == 0 {
        &[][..]
    } else {
        std::slice::from_raw_parts(d.methods, d.n_methods)
    };
    let mut methods = Vec::new();
    let mut rejected = Vec::new();
    for e in entries {
        match method(path, e, d.free_string) {
            Ok(m) => methods.push(m),
            Err(err) => rejected.push(err),
        }
    }
    Ok(Library {
        path: path.to_path_buf(),
        name,
        version,
        methods,
        rejected,
    })
}

unsafe fn method(
    path: &Path,
    e: &'static MethodEntry,
    free: FreeString,
) -> Result<Method, PluginError> {
    let name = read_str(e.name, "method name")
        .map_err(|reason| PluginError::BadDescriptor {
            path: path.to_path_buf(),
            reason,
        })?
        .to_string();
    let bad = |reason: String| PluginError::BadMethod {
        path: path.to_path_buf(),
        name: name.clone(),
        reason,
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("a method name must be non-empty, without spaces".into()));
    }
    let kind = match e.kind {
        KIND_PRUNER => Kind::Pruner,
        KIND_UNLEARNER => Kind::Unlearner,
        KIND_ATTACK => Kind::Attack,
        k => return Err(bad(format!("unknown kind {k}"))),
    };
    let summary = read_str(e.summary, "summary").map_err(bad)?.to_string();
    let schema: Value = read_json(e.schema_json, "its config schema").map_err(bad)?;
    let default_config: Value =
        read_json(e.default_config_json, "its default config").map_err(bad)?;
    let validator = jsonschema::validator_for(&schema).map_err(|err| {
        bad(format!(
            "its config schema is not a valid JSON Schema: {err}"
        ))
    })?;
    if let Some(err) = validator.iter_errors(&default_config).next() {
        return Err(bad(format!(
            "its default config does not satisfy its own schema: {}: {err}",
            err.instance_path()
        )));
    }
    Ok(Method::from_library(
        kind,
        name.clone(),
        summary,
        Source::Library(path.to_path_buf()),
        schema,
        default_config,
        Arc::new(LibraryMethod {
            path: path.to_path_buf(),
            name,
            entry: e,
            free,
        }),
    ))
}

/// Loads every library that `paths` (folders or files) name into `registry`. A library or
/// method that fails is left out, and its problem (naming the library) returned; the others
/// are added.
pub fn extend(registry: &mut Registry, paths: &[PathBuf]) -> Vec<PluginError> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in paths {
        let libs = match libraries_in(p) {
            Ok(l) => l,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for lib in libs {
            // The same file named twice (e.g. a folder and a file in it) loads once.
            if !seen.insert(lib.canonicalize().unwrap_or_else(|_| lib.clone())) {
                continue;
            }
            match load(&lib) {
                Ok(l) => {
                    problems.extend(l.rejected);
                    for m in l.methods {
                        if let Err(e) = registry.add(m) {
                            problems.push(e.into());
                        }
                    }
                }
                Err(e) => problems.push(e),
            }
        }
    }
    problems
}

/// One method of a loaded library.
pub struct LibraryMethod {
    path: PathBuf,
    name: String,
    entry: &'static MethodEntry,
    free: FreeString,
}

// SAFETY: `entry` is static, immutable descriptor data of a library that is never unloaded;
// the instances it makes are of `Send + Sync` method types.
unsafe impl Send for LibraryMethod {}
unsafe impl Sync for LibraryMethod {}

impl LibraryMethod {
    /// `"<name> (<library>)"`, for errors.
    fn who(&self) -> String {
        format!("{} (plugin {})", self.name, self.path.display())
    }

    fn create(self: &Arc<Self>, config: &Value) -> Result<Instance, Vec<ConfigIssue>> {
        let json = CString::new(config.to_string()).expect("JSON has no NUL");
        let mut instance = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: the entry's own state and function; out-pointers valid.
        let result = unsafe {
            let status =
                (self.entry.create)(self.entry.state, json.as_ptr(), &mut instance, &mut err);
            status_result(status, err, self.free)
        };
        match result {
            Ok(()) if !instance.is_null() => Ok(Instance {
                method: self.clone(),
                ptr: instance,
            }),
            Ok(()) => Err(vec![ConfigIssue::new(
                "",
                None,
                format!("{}: create returned nothing", self.who()),
            )]),
            Err(m) => Err(
                serde_json::from_str::<Vec<ConfigIssue>>(&m).unwrap_or_else(|_| {
                    vec![ConfigIssue::new("", None, format!("{}: {m}", self.who()))]
                }),
            ),
        }
    }

    pub fn build_unlearner(self: &Arc<Self>, config: &Value) -> Built<dyn Unlearner> {
        Ok(Box::new(LibraryUnlearner(self.create(config)?)))
    }

    pub fn build_pruner(self: &Arc<Self>, config: &Value) -> Built<dyn Pruner> {
        let instance = self.create(config)?;
        let (mut sparsity, mut rewind) = (0.0, -1i64);
        // SAFETY: a live instance of this entry; out-pointers valid.
        unsafe { instance.call(|e, i, err| (e.pruner_info)(i, &mut sparsity, &mut rewind, err)) }
            .map_err(|e| vec![ConfigIssue::new("", None, e.to_string())])?;
        Ok(Box::new(LibraryPruner {
            instance,
            sparsity,
            rewind: wire::rewind_point_from_i64(rewind),
        }))
    }

    pub fn build_attack(self: &Arc<Self>, config: &Value) -> Built<dyn Attack> {
        let instance = self.create(config)?;
        let mut target = 0u64;
        // SAFETY: a live instance of this entry; out-pointer valid.
        unsafe { instance.call(|e, i, err| (e.attack_target)(i, &mut target, err)) }
            .map_err(|e| vec![ConfigIssue::new("", None, e.to_string())])?;
        Ok(Box::new(LibraryAttack {
            instance,
            target: target as usize,
        }))
    }
}

/// A method instance inside a library; destroyed there.
struct Instance {
    method: Arc<LibraryMethod>,
    ptr: *mut c_void,
}

// SAFETY: instances are of `Send + Sync` method types (the traits require it).
unsafe impl Send for Instance {}
unsafe impl Sync for Instance {}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: made by this entry's `create`, destroyed once.
        unsafe { (self.method.entry.destroy)(self.ptr) }
    }
}

impl Instance {
    fn failed(&self, m: String) -> MethodError {
        MethodError::Failed(format!("{}: {m}", self.method.who()))
    }

    /// Calls one of the entry's functions on this instance; its error (freed with the library's
    /// allocator) names the method and library.
    ///
    /// # Safety
    /// `f` calls an entry function with arguments valid for the call.
    unsafe fn call(
        &self,
        f: impl FnOnce(&MethodEntry, *mut c_void, *mut *mut c_char) -> Status,
    ) -> Result<(), MethodError> {
        let mut err = std::ptr::null_mut();
        let status = f(self.method.entry, self.ptr, &mut err);
        status_result(status, err, self.method.free).map_err(|m| self.failed(m))
    }
}

fn context_json(seed: u64, label: &str, progress: bool) -> CString {
    json_cstring(&CallContext {
        seed,
        label: label.to_string(),
        progress,
    })
}

struct LibraryUnlearner(Instance);

impl Unlearner for LibraryUnlearner {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        let model: &Model = ctx.model;
        let owned_model = OwnedModel::new(model, wire::forward_of(model));
        let mask = OwnedList::optional(ctx.mask.map(|m| m.tensors().iter()));
        let data = OwnedTask::new(ctx.data);
        let forget = json_cstring(ctx.forget);
        let cx = context_json(ctx.seed, &ctx.label, ctx.trainer.progress);
        let call = UnlearnCall {
            model: owned_model.as_ref(),
            mask: mask.as_ref(),
            data: data.as_ref(),
            forget_json: forget.as_ptr(),
            context_json: cx.as_ptr(),
            trainer: ctx.trainer as *const Trainer as *const c_void,
        };
        // SAFETY: everything the call points at lives until this returns.
        unsafe {
            self.0
                .call(|e, i, err| (e.unlearn)(i, host_api(), &call, err))?
        };
        // The model changed in place; a plugin cannot be trusted to keep the mask.
        ctx.enforce_mask();
        Ok(())
    }
}

struct LibraryPruner {
    instance: Instance,
    sparsity: f64,
    rewind: Option<RewindPoint>,
}

impl Pruner for LibraryPruner {
    fn sparsity(&self) -> f64 {
        self.sparsity
    }

    fn rewind_point(&self) -> Option<RewindPoint> {
        self.rewind
    }

    fn prune(&self, ctx: &mut PruneCtx<'_>) -> Result<Mask, MethodError> {
        let model: &Model = ctx.model;
        let owned_model = OwnedModel::new(model, wire::forward_of(model));
        let rewind = OwnedList::optional(ctx.rewind.map(|s| s.0.iter()));
        let data = OwnedTask::new(ctx.data);
        let schedule = json_cstring(ctx.schedule);
        let cx = context_json(ctx.seed, &ctx.label, ctx.trainer.progress);
        let call = PruneCall {
            model: owned_model.as_ref(),
            rewind: rewind.as_ref(),
            data: data.as_ref(),
            schedule_json: schedule.as_ptr(),
            context_json: cx.as_ptr(),
            trainer: ctx.trainer as *const Trainer as *const c_void,
        };
        let mut got = Collected::default();
        // SAFETY: as for unlearn; the sink outlives the call.
        unsafe {
            self.instance
                .call(|e, i, err| (e.prune)(i, host_api(), &call, got.sink(), err))?
        };
        let mask = Mask::from_tensors(ctx.model, got.into_map())
            .map_err(|e| self.instance.failed(format!("the mask it returned: {e}")))?;
        mask.apply(ctx.model);
        Ok(mask)
    }
}

struct LibraryAttack {
    instance: Instance,
    target: usize,
}

impl Attack for LibraryAttack {
    fn poison(&self, ctx: &AttackCtx<'_>) -> Result<Poisoning, MethodError> {
        let data = OwnedTask::new(ctx.data);
        let cx = context_json(ctx.seed, &ctx.label, false);
        let call = AttackCall {
            data: data.as_ref(),
            context_json: cx.as_ptr(),
        };
        let mut got = Collected::default();
        // SAFETY: as for unlearn; the sink outlives the call.
        unsafe {
            self.instance
                .call(|e, i, err| (e.poison)(i, host_api(), &call, got.sink(), err))?
        };
        let mut got = got.into_map();
        let mut take = |name: &str| {
            got.remove(name).ok_or_else(|| {
                self.instance
                    .failed(format!("its poisoning has no `{name}`"))
            })
        };
        let rows = take("rows")?;
        let rows: Vec<i64> =
            Vec::<i64>::try_from(&rows.to_device(tch::Device::Cpu).to_kind(tch::Kind::Int64))
                .map_err(|e| self.instance.failed(format!("rows: {e}")))?;
        if rows.iter().any(|&r| r < 0) {
            return Err(self.instance.failed("a negative row".into()));
        }
        Ok(Poisoning {
            rows: rows.into_iter().map(|r| r as usize).collect(),
            images: take("images")?,
            labels: take("labels")?,
        })
    }

    fn trigger(&self, images: &Tensor) -> Result<Tensor, MethodError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: a borrowed input, an owned output.
        unsafe {
            self.instance
                .call(|e, i, err| (e.trigger)(i, images.as_ptr() as *mut C_tensor, &mut out, err))?
        };
        if out.is_null() {
            return Err(self.instance.failed("trigger returned no tensor".into()));
        }
        // SAFETY: an owned handle from the plugin.
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    fn target(&self) -> usize {
        self.target
    }
}

/// The table handed to plugins.
pub(crate) fn host_api() -> *const HostApi {
    static API: HostApi = HostApi {
        abi_version: ABI_VERSION,
        size: std::mem::size_of::<HostApi>(),
        free_string,
        run_loop,
    };
    &API
}

/// `HostApi::run_loop`: core's loop on a plugin's model, with the plugin's objective.
unsafe extern "C" fn run_loop(
    trainer: *const c_void,
    request: *const LoopRequest,
    report_json: *mut *mut c_char,
    err: *mut *mut c_char,
) -> Status {
    guard(err, || {
        let trainer = (trainer as *const Trainer)
            .as_ref()
            .ok_or("no trainer in the request")?;
        let req = request.as_ref().ok_or("no loop request")?;
        let mut model = read_model(&req.model)?;
        let mask = read_list(&req.mask, "mask")?
            .map(|t| Mask::from_tensors(&model, t.into_iter().collect()))
            .transpose()
            .map_err(|e| e.to_string())?;
        let data = read_dataset(&req.data, "loop data")?;
        let meta: RunMeta = read_json(req.run_json, "run")?;
        let rows = borrow_tensor(req.rows, "stream rows")?;
        let stream = Stream {
            data: &data,
            forget: Tensor::zeros(rows.size(), (tch::Kind::Bool, rows.device())),
            rows,
            labels: borrow_tensor(req.labels, "stream labels")?,
            augment: meta.augment,
            augment_seed: 0,
        };
        if stream.rows.size() != stream.labels.size() {
            return Err(format!(
                "stream: {:?} rows but {:?} labels",
                stream.rows.size(),
                stream.labels.size()
            ));
        }
        let label = meta.label.clone();
        let run = Run {
            label: meta.label,
            schedule: &meta.schedule,
            schedule_offset: meta.schedule_offset,
            phases: vec![Phase::new("train", &stream)],
            mask: mask.as_ref(),
            rewind_epoch: meta.rewind_epoch,
            keep_best: None,
            validate: None,
            seed: meta.seed,
        };
        let mut objective = ForeignObjective {
            r: req.objective,
            error: None,
        };
        let result = trainer.run(&mut model, run, &mut objective);
        let report = match (result, objective.error) {
            (Ok(r), None) => r,
            (Err(e), _) => return Err(e.to_string()),
            (Ok(_), Some(e)) => return Err(format!("{label}: {e}")),
        };
        if let Some(snapshot) = &report.rewind {
            put_all(&req.rewind, snapshot.0.iter().map(|(k, t)| (k.as_str(), t)));
        }
        let meta = ReportMeta {
            seconds: report.seconds,
            last_loss: report.last_loss.is_finite().then_some(report.last_loss),
            steps: report.steps,
        };
        *report_json = alloc_string(&serde_json::to_string(&meta).expect("serialises"));
        Ok(())
    })
}

/// A plugin's objective as core's loop sees it. A failure in a callback that cannot return one
/// (`start_epoch`, `before_step`) is kept and ends the run at the next batch.
struct ForeignObjective {
    r: ObjectiveRef,
    error: Option<String>,
}

impl ForeignObjective {
    fn note(&mut self, status: Status, err: *mut c_char) {
        // SAFETY: the plugin's error string, freed with its free function.
        if let Err(m) = unsafe { status_result(status, err, self.r.free_string) } {
            self.error.get_or_insert(m);
        }
    }
}

impl Objective for ForeignObjective {
    fn start_epoch(&mut self, epoch: usize, epochs: usize) {
        let mut err = std::ptr::null_mut();
        // SAFETY: the plugin's callback with its own state.
        let s =
            unsafe { (self.r.start_epoch)(self.r.state, epoch as u64, epochs as u64, &mut err) };
        self.note(s, err);
    }

    fn loss(&mut self, _model: &Model, batch: &Batch) -> Result<Tensor, tch::TchError> {
        if let Some(e) = &self.error {
            return Err(tch::TchError::Torch(e.clone()));
        }
        let mut out = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: borrowed inputs, an owned output.
        let result = unsafe {
            let s = (self.r.loss)(
                self.r.state,
                batch.x.as_ptr() as *mut C_tensor,
                batch.y.as_ptr() as *mut C_tensor,
                batch.epoch as u64,
                batch.epochs as u64,
                &mut out,
                &mut err,
            );
            status_result(s, err, self.r.free_string)
        };
        match result {
            // SAFETY: an owned handle from the plugin.
            Ok(()) if !out.is_null() => Ok(unsafe { Tensor::from_ptr(out) }),
            Ok(()) => Err(tch::TchError::Torch(
                "the objective returned no loss".into(),
            )),
            Err(m) => {
                self.error.get_or_insert(m.clone());
                Err(tch::TchError::Torch(m))
            }
        }
    }

    fn before_step(&mut self, _model: &Model) {
        let mut err = std::ptr::null_mut();
        // SAFETY: the plugin's callback with its own state.
        let s = unsafe { (self.r.before_step)(self.r.state, &mut err) };
        self.note(s, err);
    }
}
