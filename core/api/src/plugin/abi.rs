//! The C ABI between the host and plugin libraries, version [`ABI_VERSION`].
//!
//! A plugin library exports one symbol, [`ENTRY_SYMBOL`], an [`EntryFn`] returning a
//! [`PluginDescriptor`]. The descriptor starts with the ABI version and the libtorch version the
//! library was built against; the host reads those two fields first, whatever the version, and
//! refuses the library when either differs from its own. Then it reads the method table.
//!
//! Nothing Rust-specific crosses: only `#[repr(C)]` structs, C function pointers, NUL-terminated
//! UTF-8 strings (JSON for configs, specs, metadata, reports and issue lists) and libtorch tensor
//! handles. Host and plugin link the same libtorch shared library, so a handle means the same
//! tensor on both sides.
//!
//! # Ownership
//!
//! - **Tensors** cross as `*mut C_tensor` (a heap `at::Tensor`, as tch uses them).
//!   - A handle passed as an argument, or inside a struct passed as an argument, is *borrowed*
//!     for the duration of the call: the callee must not free it, and takes its own reference
//!     with `Tensor::clone_from_ptr` when it needs the tensor. That reference is the same tensor
//!     (same storage, same autograd identity): a plugin that trains the host's model trains it in
//!     place.
//!   - A handle written to an out-pointer is *owned* by the caller, who frees it
//!     (`Tensor::from_ptr`, then drop).
//!   - A handle given to a [`TensorSink`] is borrowed for the duration of `put`.
//! - **Strings** passed as arguments are borrowed. A string written to an out-pointer (an error
//!   message, a JSON result) is freed by the caller through the `free_string` of the side that
//!   allocated it: the descriptor's (or the callback bundle's) for plugin strings,
//!   [`HostApi::free_string`] for host strings.
//! - Descriptor data (names, schemas, the method table) is static: libraries are never unloaded.
//! - An instance made by [`MethodEntry::create`] is freed by the host with
//!   [`MethodEntry::destroy`].
//!
//! # Errors
//!
//! Every fallible function returns a [`Status`]: [`OK`], or [`ERR`] with a message in `*err`.
//! Each side catches panics (and the libtorch errors tch raises as panics) at every function it
//! exposes and turns them into `ERR`; nothing unwinds across the boundary.
//!
//! # Evolution
//!
//! Structs are append-only: new fields and functions go at the end, and [`ABI_VERSION`] says which
//! exist ([`HostApi::size`] too, for the host table). Changing or removing a field bumps the
//! version, and older libraries are then refused with a message naming both versions.

use std::ffi::{c_char, c_void};

pub use torch_sys::C_tensor;

/// The version of this ABI (the structs and functions in this module).
pub const ABI_VERSION: u32 = 1;

/// The one symbol a plugin library exports (an [`EntryFn`]).
pub const ENTRY_SYMBOL: &str = "unlearn_plugin_entry";

/// `unlearn_plugin_entry`: the library's descriptor (static), or null when it could not be made.
pub type EntryFn = unsafe extern "C" fn() -> *const PluginDescriptor;

pub type Status = i32;
pub const OK: Status = 0;
pub const ERR: Status = 1;

/// Frees a string the same side allocated.
pub type FreeString = unsafe extern "C" fn(s: *mut c_char);

/// `MethodEntry::kind` values.
pub const KIND_PRUNER: u32 = 0;
pub const KIND_UNLEARNER: u32 = 1;
pub const KIND_ATTACK: u32 = 2;

/// What a library offers. The first two fields keep their place in every version.
#[repr(C)]
pub struct PluginDescriptor {
    pub abi_version: u32,
    /// `MAJOR.MINOR.PATCH` of the libtorch the library was built against.
    pub libtorch_version: *const c_char,
    /// The crate that built the library, and its version (shown to users).
    pub plugin_name: *const c_char,
    pub plugin_version: *const c_char,
    pub methods: *const MethodEntry,
    pub n_methods: usize,
    /// Frees strings this library returns through out-pointers.
    pub free_string: FreeString,
}

/// One method of a library. Functions that do not apply to the method's kind return `ERR`.
#[repr(C)]
pub struct MethodEntry {
    pub kind: u32,
    pub name: *const c_char,
    pub summary: *const c_char,
    /// JSON Schema of the method's config.
    pub schema_json: *const c_char,
    /// The config with every default filled in (JSON).
    pub default_config_json: *const c_char,
    /// Passed back as the first argument of `create`.
    pub state: *const c_void,
    /// Builds an instance from a config (JSON). On `ERR`, `*err` is a JSON array of
    /// `{"path": "/field", "message": "..."}` issues, or a plain message.
    pub create: unsafe extern "C" fn(
        state: *const c_void,
        config_json: *const c_char,
        instance: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> Status,
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
    /// Unlearners: changes `call.model` in place.
    pub unlearn: unsafe extern "C" fn(
        instance: *mut c_void,
        host: *const HostApi,
        call: *const UnlearnCall,
        err: *mut *mut c_char,
    ) -> Status,
    /// Pruners: the sparsity and the rewind point the pruner asks for: an epoch n >= 0 (the
    /// weights after n epochs), -1 none, -2 the dense weights of the best validation epoch.
    pub pruner_info: unsafe extern "C" fn(
        instance: *mut c_void,
        sparsity: *mut f64,
        rewind_epoch: *mut i64,
        err: *mut *mut c_char,
    ) -> Status,
    /// Pruners: prunes `call.model` in place and gives the mask (one 0/1 tensor per pruned
    /// parameter, by name) to `mask`.
    pub prune: unsafe extern "C" fn(
        instance: *mut c_void,
        host: *const HostApi,
        call: *const PruneCall,
        mask: TensorSink,
        err: *mut *mut c_char,
    ) -> Status,
    /// Attacks: the target class.
    pub attack_target: unsafe extern "C" fn(
        instance: *mut c_void,
        target: *mut u64,
        err: *mut *mut c_char,
    ) -> Status,
    /// Attacks: gives `rows` (i64), `images` and `labels` to `out`.
    pub poison: unsafe extern "C" fn(
        instance: *mut c_void,
        host: *const HostApi,
        call: *const AttackCall,
        out: TensorSink,
        err: *mut *mut c_char,
    ) -> Status,
    /// Attacks: triggered copies of `images`, as an owned handle in `*out`.
    pub trigger: unsafe extern "C" fn(
        instance: *mut c_void,
        images: *mut C_tensor,
        out: *mut *mut C_tensor,
        err: *mut *mut c_char,
    ) -> Status,
}

/// What the host offers a plugin during a call. Append-only; `size` is the host's
/// `size_of::<HostApi>()`, so a plugin can tell which entries exist.
#[repr(C)]
pub struct HostApi {
    pub abi_version: u32,
    pub size: usize,
    /// Frees strings the host returns through out-pointers.
    pub free_string: FreeString,
    /// Runs core's training loop on `request.model` (the plugin's model: its variables and its
    /// forward), calling the plugin's objective on every batch. `trainer` is the call's
    /// `trainer` field. On success `*report_json` is `{"seconds", "last_loss", "steps"}`.
    pub run_loop: unsafe extern "C" fn(
        trainer: *const c_void,
        request: *const LoopRequest,
        report_json: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> Status,
}

/// A named, borrowed tensor.
#[repr(C)]
pub struct NamedTensor {
    pub name: *const c_char,
    pub tensor: *mut C_tensor,
}

/// A borrowed list of named tensors; `present` = 0 means "none" (e.g. a dense model's mask), as
/// opposed to an empty list.
#[repr(C)]
pub struct TensorList {
    pub present: u8,
    pub items: *const NamedTensor,
    pub len: usize,
}

/// Receives named tensors (borrowed during `put`) from the other side.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TensorSink {
    pub state: *mut c_void,
    pub put: unsafe extern "C" fn(state: *mut c_void, name: *const c_char, tensor: *mut C_tensor),
}

/// Logits of `x` (inputs in [0, 1]) in train (`train` = 1) or eval mode, owned by the caller.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForwardFn {
    pub state: *const c_void,
    pub call: unsafe extern "C" fn(
        state: *const c_void,
        x: *mut C_tensor,
        train: u8,
        out: *mut *mut C_tensor,
        err: *mut *mut c_char,
    ) -> Status,
    /// Frees the error strings of `call`.
    pub free_string: FreeString,
}

/// A model as it crosses: its spec (JSON `ModelSpec`), its variables (parameters require grad,
/// buffers do not) and its owner's forward function.
#[repr(C)]
pub struct ModelRef {
    pub spec_json: *const c_char,
    pub variables: TensorList,
    pub forward: ForwardFn,
}

/// A data set: u8 images `[N, C, H, W]`, i64 labels `[N]`, and the rest as JSON (name, classes,
/// max_value, mean, std, class_names, augment).
#[repr(C)]
pub struct DatasetRef {
    pub images: *mut C_tensor,
    pub labels: *mut C_tensor,
    pub meta_json: *const c_char,
}

#[repr(C)]
pub struct TaskRef {
    pub train: DatasetRef,
    pub val: DatasetRef,
    pub test: DatasetRef,
}

/// `Unlearner::unlearn`'s context. `context_json`: `{"seed", "label", "progress"}`;
/// `forget_json`: the `ForgetSet`.
#[repr(C)]
pub struct UnlearnCall {
    pub model: ModelRef,
    pub mask: TensorList,
    pub data: TaskRef,
    pub forget_json: *const c_char,
    pub context_json: *const c_char,
    /// The host's trainer, for [`HostApi::run_loop`].
    pub trainer: *const c_void,
}

/// `Pruner::prune`'s context. `schedule_json`: the pipeline's `Schedule`; `rewind`: the rewind
/// snapshot when the pruner asked for one.
#[repr(C)]
pub struct PruneCall {
    pub model: ModelRef,
    pub rewind: TensorList,
    pub data: TaskRef,
    pub schedule_json: *const c_char,
    pub context_json: *const c_char,
    pub trainer: *const c_void,
}

/// `Attack::poison`'s context.
#[repr(C)]
pub struct AttackCall {
    pub data: TaskRef,
    pub context_json: *const c_char,
}

/// One call of core's loop, from a plugin. `run_json`: `{"label", "schedule", "schedule_offset",
/// "rewind_epoch", "seed", "augment"}`; the stream is `rows` of `data` with `labels`.
#[repr(C)]
pub struct LoopRequest {
    pub model: ModelRef,
    pub mask: TensorList,
    pub data: DatasetRef,
    pub rows: *mut C_tensor,
    pub labels: *mut C_tensor,
    pub run_json: *const c_char,
    pub objective: ObjectiveRef,
    /// Receives the rewind snapshot, when `rewind_epoch` asked for one.
    pub rewind: TensorSink,
}

/// A plugin's objective, called by the host's loop.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ObjectiveRef {
    pub state: *mut c_void,
    pub start_epoch: unsafe extern "C" fn(
        state: *mut c_void,
        epoch: u64,
        epochs: u64,
        err: *mut *mut c_char,
    ) -> Status,
    /// The scalar loss of a batch (`x` in [0, 1], labels `y`), owned by the caller.
    pub loss: unsafe extern "C" fn(
        state: *mut c_void,
        x: *mut C_tensor,
        y: *mut C_tensor,
        epoch: u64,
        epochs: u64,
        out: *mut *mut C_tensor,
        err: *mut *mut c_char,
    ) -> Status,
    /// After backward, before the optimizer step (e.g. to mask gradients).
    pub before_step: unsafe extern "C" fn(state: *mut c_void, err: *mut *mut c_char) -> Status,
    pub free_string: FreeString,
}
