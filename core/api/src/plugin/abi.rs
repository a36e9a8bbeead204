//! The C ABI between the host and plugin libraries, version [`ABI_MAJOR`].[`ABI_MINOR`].
//!
//! A plugin library exports one symbol, [`ENTRY_SYMBOL`], an [`EntryFn`] returning a
//! [`PluginDescriptor`]. Nothing Rust-specific crosses: only `#[repr(C)]` structs, C function
//! pointers, integers, NUL-terminated UTF-8 strings (JSON for configs, specs, metadata, reports
//! and issue lists) and libtorch tensor handles. Host and plugin link the same libtorch shared
//! library, so a tensor handle means the same tensor on both sides.
//!
//! # What the host checks, failing closed
//!
//! The host refuses a library, with a message naming both sides' values, unless all of these
//! hold (in this order):
//!
//! 1. **ABI version**: the descriptor's [stable header](PluginDescriptor) says the same major
//!    version as the host's and a minor version no newer than the host's. Version 1 libraries
//!    (whose descriptor started with a lone `u32` version) read as major 1 and are refused.
//! 2. **Sizes**: the descriptor, and later each method entry, is at least as large as the
//!    version's first minor (2.0) made it.
//! 3. **libtorch**: both sides know the `MAJOR.MINOR.PATCH` of the libtorch they were built
//!    against (the build script reads it from libtorch's version header), and they are equal
//!    (a local suffix such as `+cu130` aside). An unknown or unparsable version, on either side,
//!    is a refusal, not a pass.
//! 4. **Panics**: the library was built with `panic = "unwind"` ([`PANIC_UNWIND`]; recorded by
//!    `export_plugin!` in the plugin crate). With `panic = "abort"` no panic in it could be caught
//!    and turned into an error: it would abort the host.
//! 5. **Wire types**: the SHA-256 of the JSON Schemas of the JSON documents that cross (config
//!    issue lists, `ModelSpec`, data set metadata, `ForgetSet`, call context, `Schedule`, the
//!    loop's run and report) is the host's. On a mismatch the host names the documents whose
//!    schemas differ (from [`PluginDescriptor::wire_types`]).
//!
//! # Evolution
//!
//! The version is `MAJOR.MINOR`. Within a major version the structs the two sides exchange as
//! tables ([`PluginDescriptor`], [`MethodEntry`], [`HostApi`]) only grow at their end, each new
//! minor version appending fields; every table carries its `size` in bytes (the side that made
//! it wrote `size_of` of its own definition). The reader copies the bytes the writer has, at
//! most its own struct's, and leaves the rest zero; so every field appended after `.0` must be
//! one whose all-zero value means "absent" (a nullable pointer, an `Option` of a function
//! pointer, a 0 count), and the reader defaults it. A host therefore loads a library of the same
//! major and any minor up to its own (reading only the fields that library's tables have), and
//! a library reads a newer host's table the same way. A library newer than the host (a higher
//! minor) or of another major is refused with a message naming both versions. Changing,
//! removing or reordering a field, or changing what a function means, is a new major version.
//!
//! The first three fields of the descriptor and of the host table (`abi_major: u32`,
//! `abi_minor: u32`, `size: usize`, at offsets 0, 4 and 8) are the **stable header**: they keep
//! their place in every version from 2.0 on, and the host reads them before anything else.
//! `abi_major` at offset 0 is also where version 1 kept its only version number.
//!
//! | version | adds |
//! |---|---|
//! | 1 | a single `u32` version, pointer-identified trainer and model handles |
//! | 2.0 | the stable header and sizes; checked handles ([`Handle`]); the panic strategy; the wire-schema hash |
//! | 2.1 | [`MethodEntry::describe_json`]: facts about a method (the crate that defines it), defaulted for 2.0 libraries |
//! | 2.2 | [`HostApi::run_phases`]: the loop with several phases over tagged streams ([`PhasedLoopRequest`], [`PhaseRef`]); objectives get a [`BatchRef`] (rows, forget tags, phase, step) and the report carries the epoch log. A 2.2 plugin in an older host runs a one-phase untagged run through `run_loop` and refuses the rest |
//!
//! # Handles
//!
//! What one side lends the other for the length of a call (the host's trainer, a model's
//! forward function, a tensor sink) crosses as a [`Handle`]: a token, not a pointer. The
//! lending side keeps a registry of the handles of calls in progress; a handle is entered when
//! the call that passes it starts and removed when that call returns (after any use of it still
//! running has finished). Every function taking a handle looks it up first and answers one it
//! does not know, or one of another kind, with `ERR` and a message (`stale trainer handle 7:
//! used after the call that gave it returned ...`) instead of following a dangling pointer.
//! Tokens are never reused in a process. The plugin's own objective state and method instances
//! (lent to the host, which does not keep them) stay plain pointers.
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
//! - Descriptor data (names, schemas, the method tables) is static: libraries are never unloaded.
//! - An instance made by [`MethodEntry::create`] is freed by the host with
//!   [`MethodEntry::destroy`].
//!
//! # Errors
//!
//! Every fallible function returns a [`Status`]: [`OK`], or [`ERR`] with a message in `*err`.
//! Each side catches panics (and the libtorch errors tch raises as panics) at every function it
//! exposes and turns them into `ERR`; nothing unwinds across the boundary. That needs
//! `panic = "unwind"` in the library, which the host checks (above).

use std::ffi::{c_char, c_void};

pub use torch_sys::C_tensor;

/// The major version of this ABI: a library of another major is refused.
pub const ABI_MAJOR: u32 = 2;
/// The minor version of this ABI: the host loads libraries of its major with a minor up to this.
pub const ABI_MINOR: u32 = 2;

/// The one symbol a plugin library exports (an [`EntryFn`]).
pub const ENTRY_SYMBOL: &str = "unlearn_plugin_entry";

/// `unlearn_plugin_entry`: the library's descriptor (static), or null when it could not be made.
pub type EntryFn = unsafe extern "C" fn() -> *const PluginDescriptor;

pub type Status = i32;
pub const OK: Status = 0;
pub const ERR: Status = 1;

/// Frees a string the same side allocated.
pub type FreeString = unsafe extern "C" fn(s: *mut c_char);

/// Something one side lends the other for the length of one call (see "Handles" above): a token
/// the lender looks up, never a pointer. 0 is no handle.
pub type Handle = u64;

/// `MethodEntry::kind` values.
pub const KIND_PRUNER: u32 = 0;
pub const KIND_UNLEARNER: u32 = 1;
pub const KIND_ATTACK: u32 = 2;

/// `PluginDescriptor::panic_strategy` values (`cfg!(panic = ...)` of the plugin crate). Anything
/// else, 0 included, reads as unknown and is refused.
pub const PANIC_UNWIND: u32 = 1;
pub const PANIC_ABORT: u32 = 2;

/// What a library offers.
///
/// The first three fields are the stable header (see "Evolution"): the host reads them, and only
/// them, before it knows the library's version.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PluginDescriptor {
    /// Stable header, offset 0.
    pub abi_major: u32,
    /// Stable header, offset 4.
    pub abi_minor: u32,
    /// Stable header, offset 8: `size_of::<PluginDescriptor>()` as the library was built.
    pub size: usize,
    /// `MAJOR.MINOR.PATCH` of the libtorch the library was built against (`unknown` when its
    /// build could not tell: refused).
    pub libtorch_version: *const c_char,
    /// [`PANIC_UNWIND`] or [`PANIC_ABORT`]: how the library was built to handle panics.
    pub panic_strategy: u32,
    /// SHA-256 (hex) of the JSON Schemas of the wire types, as the library's core computes it.
    pub wire_hash: *const c_char,
    /// The same per document, as a JSON object `{"ModelSpec": "<sha-256 hex>", ...}`: lets the
    /// host name the documents that differ.
    pub wire_types: *const c_char,
    /// The crate that built the library, and its version (shown to users).
    pub plugin_name: *const c_char,
    pub plugin_version: *const c_char,
    /// `n_methods` pointers to method entries, each with its own `size`.
    pub methods: *const *const MethodEntry,
    pub n_methods: usize,
    /// Frees strings this library returns through out-pointers.
    pub free_string: FreeString,
}

/// The size of the descriptor in ABI 2.0, the least a 2.x library may have.
pub const DESCRIPTOR_SIZE_2_0: usize =
    std::mem::offset_of!(PluginDescriptor, free_string) + std::mem::size_of::<FreeString>();

/// One method of a library. Functions that do not apply to the method's kind return `ERR`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MethodEntry {
    /// `size_of::<MethodEntry>()` as the library was built.
    pub size: usize,
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
    /// 2.1: facts about the method as a JSON object, or null. Known keys: `"crate"`, the crate
    /// that defines the method (shown by `unlearn plugin check`). Unknown keys are ignored, so
    /// later facts need no new version; absent (a 2.0 library, or null) it defaults to `{}`, and
    /// the crate to the library's.
    pub describe_json: *const c_char,
}

/// The size of a method entry in ABI 2.0 (without `describe_json`), the least a 2.x entry has.
pub const METHOD_ENTRY_SIZE_2_0: usize = std::mem::offset_of!(MethodEntry, describe_json);

/// What the host offers a plugin during a call. It starts with the same stable header as the
/// descriptor, with the host's version and `size_of::<HostApi>()`, so a plugin reads only the
/// entries that exist.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HostApi {
    pub abi_major: u32,
    pub abi_minor: u32,
    pub size: usize,
    /// Frees strings the host returns through out-pointers.
    pub free_string: FreeString,
    /// Runs core's training loop on `request.model` (the plugin's model: its variables and its
    /// forward), calling the plugin's objective on every batch. `trainer` is the call's
    /// `trainer` handle, valid only while that call runs (else `ERR`, "stale trainer handle").
    /// On success `*report_json` is `{"seconds", "last_loss", "steps"}`.
    pub run_loop: unsafe extern "C" fn(
        trainer: Handle,
        request: *const LoopRequest,
        report_json: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> Status,
    /// Added in 2.2 (null in older hosts): core's loop with several phases over tagged streams
    /// (see [`PhasedLoopRequest`]); `report_json` as `run_loop`'s, plus the epoch `log`.
    pub run_phases: Option<
        unsafe extern "C" fn(
            trainer: Handle,
            request: *const PhasedLoopRequest,
            report_json: *mut *mut c_char,
            err: *mut *mut c_char,
        ) -> Status,
    >,
}

/// The size of the host table in ABI 2.0, the least a 2.x host gives.
pub const HOST_API_SIZE_2_0: usize =
    std::mem::offset_of!(HostApi, run_loop) + std::mem::size_of::<usize>();
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

/// Receives named tensors (borrowed during `put`) from the other side. `state` is a handle of
/// the receiving side, valid during the call that passed the sink; a `put` on a stale one is
/// dropped (and the receiver, who checks what it got, reports what is missing).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TensorSink {
    pub state: Handle,
    pub put: unsafe extern "C" fn(state: Handle, name: *const c_char, tensor: *mut C_tensor),
}

/// Logits of `x` (inputs in [0, 1]) in train (`train` = 1) or eval mode, owned by the caller.
/// `state` is the model's handle on its owner's side, valid during the call that passed it
/// (else `ERR`, "stale model handle").
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForwardFn {
    pub state: Handle,
    pub call: unsafe extern "C" fn(
        state: Handle,
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
    /// The host's trainer, for [`HostApi::run_loop`] during this call only.
    pub trainer: Handle,
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
    /// As [`UnlearnCall::trainer`].
    pub trainer: Handle,
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

/// One phase of a [`PhasedLoopRequest`] (2.2): a stream of `data` (`rows`, i64; their `labels`;
/// their `forget` tags, bool) and `phase_json`, `{"name", "augment", "batch_size",
/// "until_epoch", "max_steps"}`. Borrowed for the call.
#[repr(C)]
pub struct PhaseRef {
    pub data: DatasetRef,
    pub rows: *mut C_tensor,
    pub labels: *mut C_tensor,
    pub forget: *mut C_tensor,
    pub phase_json: *const c_char,
}

/// A batch as the host's loop gives it to a plugin's objective (2.2): inputs in [0, 1], labels,
/// each sample's row and forget tag, the phase, the step over the run, the epoch. Every handle
/// is borrowed for the call. `size` is the writer's `size_of::<BatchRef>()`.
#[repr(C)]
pub struct BatchRef {
    pub size: usize,
    pub x: *mut C_tensor,
    pub y: *mut C_tensor,
    pub rows: *mut C_tensor,
    pub forget: *mut C_tensor,
    pub phase: u64,
    pub step: u64,
    pub epoch: u64,
    pub epochs: u64,
}

/// The scalar loss of a batch, owned by the caller (2.2).
pub type BatchLossFn = unsafe extern "C" fn(
    state: *mut c_void,
    batch: *const BatchRef,
    out: *mut *mut C_tensor,
    err: *mut *mut c_char,
) -> Status;

/// One call of core's loop with phases, from a plugin (2.2). `size` is the plugin's
/// `size_of::<PhasedLoopRequest>()`. `run_json` as [`LoopRequest`]'s (its `augment` unused:
/// each phase has its own). The objective's `loss` is not called; `batch_loss` is.
#[repr(C)]
pub struct PhasedLoopRequest {
    pub size: usize,
    pub model: ModelRef,
    pub mask: TensorList,
    pub phases: *const PhaseRef,
    pub n_phases: usize,
    pub run_json: *const c_char,
    pub objective: ObjectiveRef,
    pub batch_loss: BatchLossFn,
    /// Receives the rewind snapshot, when `rewind_epoch` asked for one.
    pub rewind: TensorSink,
}
