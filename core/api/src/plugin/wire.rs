//! What both sides of the ABI need: strings, statuses and panics, size-prefixed tables, the
//! registry of lent handles, tensor lists, the conversions of models and data sets to and from
//! their `#[repr(C)]` references, and the JSON documents that cross (the wire types) with the
//! digest of their schemas.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tch::Tensor;
use tch::nn::ModuleT;

use super::abi::{
    C_tensor, DatasetRef, ERR, ForwardFn, FreeString, Handle, ModelRef, NamedTensor, OK, Status,
    TaskRef, TensorList, TensorSink,
};
use crate::data::{Augment, Dataset};
use crate::forget::ForgetSet;
use crate::method::ConfigIssue;
use crate::method::{RewindPoint, TaskData};
use crate::model::{Model, ModelSpec};
use crate::train::{EpochLog, Schedule};

/// Reads a size-prefixed table the other side wrote: the `size` bytes it has (at most this
/// side's `size_of::<T>()`), the rest left zero, i.e. absent.
///
/// # Safety
/// `p` points at `size` readable bytes of a `T` as the writer defined it, `size` covers every
/// field of `T` whose all-zero value is not valid (the fields of the table's `.0` version), and
/// the fields beyond it are valid as zero (nullable pointers, `Option`s of function pointers,
/// counts).
pub unsafe fn read_sized<T>(p: *const T, size: usize) -> T {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let mut out = std::mem::MaybeUninit::<T>::zeroed();
        let n = size.min(std::mem::size_of::<T>());
        std::ptr::copy_nonoverlapping(p as *const u8, out.as_mut_ptr() as *mut u8, n);
        out.assume_init()
    }
}

/// Reads a field of the stable header (see `abi`'s "Evolution") without assuming anything
/// else about the table.
///
/// # Safety
/// `p` points at a table with at least `offset + size_of::<F>()` readable bytes.
pub unsafe fn read_header_field<F: Copy>(p: *const u8, offset: usize) -> F {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe { std::ptr::read_unaligned(p.add(offset) as *const F) }
}

/// One lent thing: where it is, of which type, and whether it is in use.
struct Loan {
    ptr: usize,
    type_id: TypeId,
    kind: &'static str,
    /// Uses in progress (a lookup that has not finished).
    users: usize,
    /// The call that lent it is returning: no new uses.
    closing: bool,
}

struct Loans {
    live: BTreeMap<Handle, Loan>,
    /// The next handle to give out: handles below it were given out once.
    next: Handle,
}

static LOANS: Mutex<Loans> = Mutex::new(Loans {
    live: BTreeMap::new(),
    next: 1,
});
/// Signalled when a use ends, for the lender waiting to close it.
static RETURNED: Condvar = Condvar::new();

fn loans() -> MutexGuard<'static, Loans> {
    LOANS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Something this side lends the other for the length of a call, as a [`Handle`]; dropping it
/// (when the call has returned) withdraws the handle, after any use of it still running.
pub struct Lent<'a> {
    handle: Handle,
    _borrow: PhantomData<&'a ()>,
}

impl Lent<'_> {
    pub fn handle(&self) -> Handle {
        self.handle
    }
}

/// Lends `thing` under a new handle (never given out before in this process). `kind` names it
/// in messages (`trainer`, `model`, `tensor sink`).
pub fn lend<'a, T: 'static>(thing: &'a T, kind: &'static str) -> Lent<'a> {
    let mut l = loans();
    let handle = l.next;
    l.next += 1;
    l.live.insert(
        handle,
        Loan {
            ptr: thing as *const T as usize,
            type_id: TypeId::of::<T>(),
            kind,
            users: 0,
            closing: false,
        },
    );
    Lent {
        handle,
        _borrow: PhantomData,
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut l = loans();
        if let Some(loan) = l.live.get_mut(&self.handle) {
            loan.closing = true;
        }
        while l.live.get(&self.handle).is_some_and(|loan| loan.users > 0) {
            l = RETURNED.wait(l).unwrap_or_else(|p| p.into_inner());
        }
        l.live.remove(&self.handle);
    }
}

/// A lent thing in use, found by its handle; the lender's call cannot return while it lives.
pub struct InUse<T> {
    handle: Handle,
    ptr: *const T,
}

// SAFETY: a use is a shared borrow of the lent thing.
unsafe impl<T: Sync> Send for InUse<T> {}

impl<T> std::ops::Deref for InUse<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the loan is live (its lender waits for this use to end) and of type `T`.
        unsafe { &*self.ptr }
    }
}

impl<T> Drop for InUse<T> {
    fn drop(&mut self) {
        let mut l = loans();
        if let Some(loan) = l.live.get_mut(&self.handle) {
            loan.users -= 1;
        }
        drop(l);
        RETURNED.notify_all();
    }
}

/// The thing this side lent under `handle`, if that handle is live and of `kind`; otherwise a
/// message saying what is wrong with it (stale, unknown, of another kind).
pub fn use_lent<T: 'static>(handle: Handle, kind: &'static str) -> Result<InUse<T>, String> {
    let mut l = loans();
    let issued = handle != 0 && handle < l.next;
    match l.live.get_mut(&handle) {
        Some(loan) if !loan.closing => {
            if loan.type_id != TypeId::of::<T>() {
                return Err(format!(
                    "handle {handle} is a {} handle, not a {kind} handle",
                    loan.kind
                ));
            }
            loan.users += 1;
            Ok(InUse {
                handle,
                ptr: loan.ptr as *const T,
            })
        }
        _ if handle == 0 => Err(format!("no {kind} handle (0)")),
        _ if issued => Err(format!(
            "stale {kind} handle {handle}: used after the call that gave it returned (what a \
             call passes, a plugin may use only during that call)"
        )),
        _ => Err(format!(
            "unknown {kind} handle {handle}: this side never gave it out"
        )),
    }
}

/// A string for the other side; it frees it with [`free_string`] (through this side's table).
pub fn alloc_string(s: &str) -> *mut c_char {
    CString::new(s.replace('\0', " "))
        .expect("NUL bytes replaced")
        .into_raw()
}

/// Frees a string made by [`alloc_string`] in this copy of core.
///
/// # Safety
/// `s` is null or came from [`alloc_string`] of this copy of core, and is freed once.
pub unsafe extern "C" fn free_string(s: *mut c_char) {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        if !s.is_null() {
            drop(CString::from_raw(s));
        }
    }
}

/// A NUL-terminated string for a static descriptor (never freed: libraries stay loaded).
pub fn leak_string(s: &str) -> *const c_char {
    alloc_string(s)
}

/// A value as a JSON C string (borrowed by the other side for the duration of a call).
pub fn json_cstring(v: &impl Serialize) -> CString {
    CString::new(serde_json::to_string(v).expect("serialises")).expect("JSON has no NUL")
}

/// Reads a borrowed string argument.
///
/// # Safety
/// `p` is null or a valid NUL-terminated string for the duration of the borrow.
pub unsafe fn read_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, String> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        if p.is_null() {
            return Err(format!("{what} is missing (a null pointer)"));
        }
        CStr::from_ptr(p)
            .to_str()
            .map_err(|_| format!("{what} is not valid UTF-8"))
    }
}

/// Reads a borrowed JSON string argument into `T`.
///
/// # Safety
/// As [`read_str`].
pub unsafe fn read_json<T: serde::de::DeserializeOwned>(
    p: *const c_char,
    what: &str,
) -> Result<T, String> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        serde_json::from_str(read_str(p, what)?).map_err(|e| format!("{what}: invalid JSON: {e}"))
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-text panic payload)".into())
}

/// Runs `f` at an exported function: its error, or a panic, becomes `ERR` with the message in
/// `*err` (allocated here; the caller frees it with this side's `free_string`).
pub fn guard(err: *mut *mut c_char, f: impl FnOnce() -> Result<(), String>) -> Status {
    let message = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return OK,
        Ok(Err(m)) => m,
        Err(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
    };
    if !err.is_null() {
        // SAFETY: the caller passes a valid out-pointer (or null, checked above).
        unsafe { *err = alloc_string(&message) };
    }
    ERR
}

/// Turns a status and its error string (freed here with the allocator's `free`) into a result.
///
/// # Safety
/// `err` is null or a string the callee allocated, to be freed with `free`.
pub unsafe fn status_result(
    status: Status,
    err: *mut c_char,
    free: FreeString,
) -> Result<(), String> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let message = if err.is_null() {
            None
        } else {
            let m = CStr::from_ptr(err).to_string_lossy().into_owned();
            free(err);
            Some(m)
        };
        match (status, message) {
            (OK, _) => Ok(()),
            (_, Some(m)) => Err(m),
            (s, None) => Err(format!("failed with status {s} and no message")),
        }
    }
}

/// Named tensors kept alive while a [`TensorList`] pointing at them is in use.
pub struct OwnedList {
    present: bool,
    _names: Vec<CString>,
    _tensors: Vec<Tensor>,
    items: Vec<NamedTensor>,
}

impl OwnedList {
    pub fn new<'a>(tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> OwnedList {
        let (names, tensors): (Vec<CString>, Vec<Tensor>) = tensors
            .into_iter()
            .map(|(k, t)| {
                (
                    CString::new(k.as_str()).expect("names have no NUL"),
                    t.shallow_clone(),
                )
            })
            .unzip();
        let items = names
            .iter()
            .zip(&tensors)
            .map(|(n, t)| NamedTensor {
                name: n.as_ptr(),
                tensor: t.as_ptr() as *mut _,
            })
            .collect();
        OwnedList {
            present: true,
            _names: names,
            _tensors: tensors,
            items,
        }
    }

    pub fn absent() -> OwnedList {
        OwnedList {
            present: false,
            _names: Vec::new(),
            _tensors: Vec::new(),
            items: Vec::new(),
        }
    }

    pub fn optional<'a>(
        tensors: Option<impl IntoIterator<Item = (&'a String, &'a Tensor)>>,
    ) -> OwnedList {
        tensors.map_or_else(OwnedList::absent, OwnedList::new)
    }

    pub fn as_ref(&self) -> TensorList {
        TensorList {
            present: self.present as u8,
            items: self.items.as_ptr(),
            len: self.items.len(),
        }
    }
}

/// Takes references to the tensors of a borrowed list (`None` when absent).
///
/// # Safety
/// `list` points at `len` valid items whose names and handles are valid for the borrow.
pub unsafe fn read_list(
    list: &TensorList,
    what: &str,
) -> Result<Option<Vec<(String, Tensor)>>, String> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        if list.present == 0 {
            return Ok(None);
        }
        if list.items.is_null() && list.len > 0 {
            return Err(format!("{what}: a null list"));
        }
        let items = if list.len == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(list.items, list.len)
        };
        items
            .iter()
            .map(|it| {
                let name = read_str(it.name, what)?.to_string();
                Ok((name, borrow_tensor(it.tensor, what)?))
            })
            .collect::<Result<Vec<_>, String>>()
            .map(Some)
    }
}

/// A new reference to a borrowed tensor handle (the same tensor).
///
/// # Safety
/// `t` is null or a valid tensor handle for the duration of the call.
pub unsafe fn borrow_tensor(t: *mut C_tensor, what: &str) -> Result<Tensor, String> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        if t.is_null() {
            return Err(format!("{what}: a null tensor"));
        }
        Ok(Tensor::clone_from_ptr(t))
    }
}

/// Collects the tensors given to a [`TensorSink`].
#[derive(Default)]
pub struct Collected(Mutex<Vec<(String, Tensor)>>);

/// A [`Collected`] lent as a sink for one call; drop it when the call has returned.
pub struct LentSink<'a>(Lent<'a>);

impl LentSink<'_> {
    pub fn sink(&self) -> TensorSink {
        TensorSink {
            state: self.0.handle(),
            put: collect_put,
        }
    }
}

impl Collected {
    /// Lends `self` as a sink.
    pub fn lend(&self) -> LentSink<'_> {
        LentSink(lend(self, "tensor sink"))
    }

    pub fn into_map(self) -> BTreeMap<String, Tensor> {
        self.0
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .collect()
    }
}

unsafe extern "C" fn collect_put(state: Handle, name: *const c_char, tensor: *mut C_tensor) {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        // A put that cannot be read (or on a stale sink) is dropped; the receiver checks what it got.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let Ok(c) = use_lent::<Collected>(state, "tensor sink") else {
                return;
            };
            if let (Ok(n), Ok(t)) = (
                read_str(name, "tensor name"),
                borrow_tensor(tensor, "tensor"),
            ) {
                c.0.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((n.to_string(), t));
            }
        }));
    }
}

/// Gives named tensors to a sink.
pub fn put_all<'a>(sink: &TensorSink, tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) {
    for (name, t) in tensors {
        let n = CString::new(name).expect("names have no NUL");
        // SAFETY: the sink was passed to us for this call; the handle is borrowed during put.
        unsafe { (sink.put)(sink.state, n.as_ptr(), t.as_ptr() as *mut _) };
    }
}

/// The parts of a [`Dataset`] that are not tensors.
#[derive(Serialize, Deserialize, JsonSchema)]
struct DatasetMeta {
    name: String,
    classes: usize,
    max_value: f64,
    mean: Vec<f64>,
    std: Vec<f64>,
    class_names: Vec<String>,
    augment: Augment,
}

/// A [`DatasetRef`] and what keeps it valid.
pub struct OwnedDataset {
    meta: CString,
    images: Tensor,
    labels: Tensor,
}

impl OwnedDataset {
    pub fn new(d: &Dataset) -> OwnedDataset {
        let meta = DatasetMeta {
            name: d.name.clone(),
            classes: d.classes,
            max_value: d.max_value,
            mean: d.mean.clone(),
            std: d.std.clone(),
            class_names: d.class_names.clone(),
            augment: d.augment,
        };
        OwnedDataset {
            meta: json_cstring(&meta),
            images: d.images.shallow_clone(),
            labels: d.labels.shallow_clone(),
        }
    }

    pub fn as_ref(&self) -> DatasetRef {
        DatasetRef {
            images: self.images.as_ptr() as *mut _,
            labels: self.labels.as_ptr() as *mut _,
            meta_json: self.meta.as_ptr(),
        }
    }
}

/// The data set a reference points at (its tensors shared, not copied).
///
/// # Safety
/// `r`'s handles and string are valid for the call.
pub unsafe fn read_dataset(r: &DatasetRef, what: &str) -> Result<Dataset, String> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let meta: DatasetMeta = read_json(r.meta_json, what)?;
        Ok(Dataset {
            name: meta.name,
            images: borrow_tensor(r.images, what)?,
            labels: borrow_tensor(r.labels, what)?,
            classes: meta.classes,
            max_value: meta.max_value,
            mean: meta.mean,
            std: meta.std,
            class_names: meta.class_names,
            augment: meta.augment,
        })
    }
}

/// Used by the host (feature `host`).
#[cfg(feature = "host")]
pub struct OwnedTask {
    train: OwnedDataset,
    val: OwnedDataset,
    test: OwnedDataset,
}

#[cfg(feature = "host")]
impl OwnedTask {
    pub fn new(d: &TaskData) -> OwnedTask {
        OwnedTask {
            train: OwnedDataset::new(&d.train),
            val: OwnedDataset::new(&d.val),
            test: OwnedDataset::new(&d.test),
        }
    }

    pub fn as_ref(&self) -> TaskRef {
        TaskRef {
            train: self.train.as_ref(),
            val: self.val.as_ref(),
            test: self.test.as_ref(),
        }
    }
}

/// # Safety
/// As [`read_dataset`].
pub unsafe fn read_task(r: &TaskRef) -> Result<TaskData, String> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        Ok(TaskData {
            train: read_dataset(&r.train, "train data")?,
            val: read_dataset(&r.val, "val data")?,
            test: read_dataset(&r.test, "test data")?,
        })
    }
}

/// A [`ModelRef`] and what keeps it valid: the model is lent (its forward's handle) until this
/// is dropped.
pub struct OwnedModel<'a> {
    spec: CString,
    variables: OwnedList,
    lent: Lent<'a>,
}

impl<'a> OwnedModel<'a> {
    /// `model`'s spec and variables, and its forward under a handle of this side.
    pub fn new(model: &'a Model) -> OwnedModel<'a> {
        let vars: BTreeMap<String, Tensor> = model.var_store().variables().into_iter().collect();
        // The spec, plus how the model computes when not fp32 (a field older libraries ignore),
        // so that copies the other side makes compute the same way.
        let mut spec = serde_json::to_value(model.spec()).expect("specs serialise");
        if !model.execution().is_default() {
            spec["execution"] = serde_json::json!(model.execution());
        }
        OwnedModel {
            spec: json_cstring(&spec),
            variables: OwnedList::new(&vars),
            lent: lend(model, "model"),
        }
    }

    pub fn as_ref(&self) -> ModelRef {
        ModelRef {
            spec_json: self.spec.as_ptr(),
            variables: self.variables.as_ref(),
            forward: ForwardFn {
                state: self.lent.handle(),
                call: model_forward,
                free_string,
            },
        }
    }
}

/// The model a reference points at: the same variables, and a forward that calls the owner's.
///
/// # Safety
/// `r`'s handles, strings and forward function are valid for the call, and the model made here
/// is dropped before the call returns.
pub unsafe fn read_model(r: &ModelRef) -> Result<Model, String> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let spec: ModelSpec = read_json(r.spec_json, "model spec")?;
        let exec: Option<crate::exec::Execution> =
            read_json::<serde_json::Value>(r.spec_json, "model spec")?
                .get("execution")
                .map(|e| serde_json::from_value(e.clone()))
                .transpose()
                .map_err(|e| format!("model spec: execution: {e}"))?;
        let vars =
            read_list(&r.variables, "model variables")?.ok_or("the model has no variables")?;
        let net = ForeignNet { forward: r.forward };
        let mut model = Model::from_parts(spec, vars, Box::new(net)).map_err(|e| e.to_string())?;
        if let Some(e) = exec {
            // The owner's variables are laid out already, and its forward applies the rest.
            model.assume_execution(e);
        }
        Ok(model)
    }
}

/// A forward pass that runs on the other side of the boundary.
struct ForeignNet {
    forward: ForwardFn,
}

// SAFETY: the state pointer is only used during the call that created the net, on the thread
// that runs the method.
unsafe impl Send for ForeignNet {}

impl std::fmt::Debug for ForeignNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForeignNet")
    }
}

impl ModuleT for ForeignNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut out = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: the owner's forward function, with a borrowed input and out-pointers.
        let result = unsafe {
            let status = (self.forward.call)(
                self.forward.state,
                x.as_ptr() as *mut _,
                train as u8,
                &mut out,
                &mut err,
            );
            status_result(status, err, self.forward.free_string)
        };
        match result {
            // SAFETY: an owned handle from the callee.
            Ok(()) if !out.is_null() => unsafe { Tensor::from_ptr(out) },
            Ok(()) => panic!("the model's forward returned no tensor"),
            // `forward_t` cannot fail: the panic is caught at this side's boundary.
            Err(m) => panic!("forward: {m}"),
        }
    }
}

/// Gives up a tensor as an owned handle (for an out-pointer: the receiver frees it).
pub fn into_handle(t: Tensor) -> *mut C_tensor {
    std::mem::ManuallyDrop::new(t).as_ptr() as *mut C_tensor
}

unsafe extern "C" fn model_forward(
    state: Handle,
    x: *mut C_tensor,
    train: u8,
    out: *mut *mut C_tensor,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let model = use_lent::<Model>(state, "model")?;
            let x = borrow_tensor(x, "forward input")?;
            *out = into_handle(model.forward_t(&x, train != 0));
            Ok(())
        })
    }
}

/// `context_json` of a method call.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct CallContext {
    pub seed: u64,
    pub label: String,
    pub progress: bool,
}

/// A pruner's rewind point as `pruner_info` writes it: -1 none, -2 the best-validation weights,
/// n >= 0 the weights after epoch n.
pub fn rewind_point_to_i64(p: Option<RewindPoint>) -> i64 {
    match p {
        None => -1,
        Some(RewindPoint::BestValidation) => -2,
        Some(RewindPoint::Epoch(e)) => e as i64,
    }
}

/// The inverse of [`rewind_point_to_i64`]; any other negative value reads as none.
#[cfg(feature = "host")]
pub fn rewind_point_from_i64(v: i64) -> Option<RewindPoint> {
    match v {
        -2 => Some(RewindPoint::BestValidation),
        v => usize::try_from(v).ok().map(RewindPoint::Epoch),
    }
}

/// `run_json` of a loop request: a `Run` without its tensors.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct RunMeta {
    pub label: String,
    pub schedule: Schedule,
    pub schedule_offset: usize,
    pub rewind_epoch: Option<usize>,
    pub seed: u64,
    pub augment: Augment,
}

/// `report_json` of a loop: a `TrainReport` without its snapshots.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct ReportMeta {
    pub seconds: f64,
    /// `None` for NaN (JSON has no NaN).
    pub last_loss: Option<f64>,
    pub steps: usize,
    /// The epoch log (2.2's `run_phases`; absent from `run_loop`'s report).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<EpochLog>,
}

/// `phase_json` of a [`super::abi::PhaseRef`]: a `Phase` without its stream's tensors.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct PhaseMeta {
    pub name: String,
    pub augment: Augment,
    pub batch_size: Option<usize>,
    pub until_epoch: Option<usize>,
    pub max_steps: Option<usize>,
}

/// Leaves out the annotations of a schema and its subschemas (`title`, `description`,
/// `examples`, `$comment`): they document a document but do not change which documents are
/// valid, so editing a doc comment does not change the digest.
#[derive(Clone)]
struct WithoutAnnotations;

impl schemars::transform::Transform for WithoutAnnotations {
    fn transform(&mut self, schema: &mut schemars::Schema) {
        if let Some(o) = schema.as_object_mut() {
            // Numeric bounds are validation, not layout: tightening a range must not refuse
            // plugins whose documents have the same shape.
            for k in [
                "title",
                "description",
                "examples",
                "$comment",
                "minimum",
                "maximum",
                "exclusiveMinimum",
                "exclusiveMaximum",
            ] {
                o.remove(k);
            }
        }
        schemars::transform::transform_subschemas(self, schema);
    }
}

/// The JSON Schema of `T` as the wire digest sees it (draft 2020-12, annotations and numeric bounds left out).
pub fn wire_schema_of<T: JsonSchema>() -> Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .with_transform(WithoutAnnotations)
        .into_generator()
        .into_root_schema_for::<T>();
    serde_json::to_value(&schema).expect("a schema is JSON")
}

/// The JSON documents that cross the ABI (the wire types), by name, with their schemas:
/// `create`'s issue lists, the model spec, data set metadata, the forget set, a call's context,
/// the pipeline's schedule, and a loop's run and report. (`MethodEntry::describe_json` is read
/// leniently, unknown keys ignored, so it is not one of them.)
pub fn wire_schemas() -> Vec<(&'static str, Value)> {
    vec![
        ("ConfigIssues", wire_schema_of::<Vec<ConfigIssue>>()),
        ("ModelSpec", wire_schema_of::<ModelSpec>()),
        ("DatasetMeta", wire_schema_of::<DatasetMeta>()),
        ("ForgetSet", wire_schema_of::<ForgetSet>()),
        ("CallContext", wire_schema_of::<CallContext>()),
        ("Schedule", wire_schema_of::<Schedule>()),
        ("RunMeta", wire_schema_of::<RunMeta>()),
        ("ReportMeta", wire_schema_of::<ReportMeta>()),
        ("PhaseMeta", wire_schema_of::<PhaseMeta>()),
    ]
}

/// The digest of a set of schemas: the SHA-256 (hex) of each one's canonical JSON (keys sorted,
/// no spaces), and the SHA-256 of the canonical JSON of that name -> hash map.
#[derive(Debug, Clone, PartialEq)]
pub struct WireDigest {
    pub hash: String,
    pub types: BTreeMap<String, String>,
}

pub fn digest(schemas: &[(&str, Value)]) -> WireDigest {
    let types: BTreeMap<String, String> = schemas
        .iter()
        .map(|(name, schema)| (name.to_string(), sha256_hex(&canonical_json(schema))))
        .collect();
    let all = serde_json::to_value(&types).expect("a map of strings is JSON");
    WireDigest {
        hash: sha256_hex(&canonical_json(&all)),
        types,
    }
}

/// The digest of this copy of core's wire types (computed once).
pub fn wire_digest() -> &'static WireDigest {
    static DIGEST: OnceLock<WireDigest> = OnceLock::new();
    DIGEST.get_or_init(|| digest(&wire_schemas()))
}

/// What differs between two per-document digests, for a message: `ModelSpec (changed)`, `X
/// (only in the plugin)`, `Y (only in this unlearn)`.
#[cfg(feature = "host")]
pub fn wire_differences(
    plugin: &BTreeMap<String, String>,
    host: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, h) in host {
        match plugin.get(name) {
            Some(p) if p == h => {}
            Some(_) => out.push(format!("{name} (changed)")),
            None => out.push(format!("{name} (only in this unlearn)")),
        }
    }
    for name in plugin.keys().filter(|n| !host.contains_key(*n)) {
        out.push(format!("{name} (only in the plugin)"));
    }
    out
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// JSON with object keys sorted and no spaces, whatever order the map kept them in.
fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            leaf => out.push_str(&leaf.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies of `CallContext`: the same document with another doc comment, and one with a field
    /// more.
    mod same {
        /// Documented differently: annotations do not count.
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub struct CallContext {
            /// The seed.
            pub seed: u64,
            pub label: String,
            pub progress: bool,
        }
    }

    mod grown {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub struct CallContext {
            pub seed: u64,
            pub label: String,
            pub progress: bool,
            pub device: String,
        }
    }

    #[cfg(feature = "host")]
    fn with_call_context(schema: Value) -> Vec<(&'static str, Value)> {
        let mut s = wire_schemas();
        s.iter_mut().find(|(n, _)| *n == "CallContext").unwrap().1 = schema;
        s
    }

    #[test]
    #[cfg(feature = "host")]
    fn the_wire_digest_is_computed_from_the_schemas() {
        let host = wire_digest();
        assert_eq!(host.hash.len(), 64);
        assert_eq!(host.types.len(), wire_schemas().len());
        assert_eq!(&digest(&wire_schemas()), host, "deterministic");
        // A copy of a wire type that only documents differently: the same digest.
        let same = digest(&with_call_context(wire_schema_of::<same::CallContext>()));
        assert_eq!(&same, host);
        // A field more: another hash, and the per-document digests say which document.
        let grown = digest(&with_call_context(wire_schema_of::<grown::CallContext>()));
        assert_ne!(grown.hash, host.hash);
        assert_eq!(
            wire_differences(&grown.types, &host.types),
            ["CallContext (changed)"]
        );
        let mut fewer = host.types.clone();
        fewer.remove("RunMeta");
        fewer.insert("Extra".into(), "0".repeat(64));
        assert_eq!(
            wire_differences(&fewer, &host.types),
            [
                "RunMeta (only in this unlearn)",
                "Extra (only in the plugin)"
            ]
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "s"}], "a": null}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":null,"b":[1,{"x":"s","y":2}]}"#);
    }

    #[test]
    fn a_lent_handle_works_only_while_lent() {
        let thing = 42u32;
        let lent = lend(&thing, "number");
        let h = lent.handle();
        assert_eq!(*use_lent::<u32>(h, "number").unwrap(), 42);
        let e = use_lent::<String>(h, "text").err().unwrap();
        assert_eq!(
            e,
            format!("handle {h} is a number handle, not a text handle")
        );
        drop(lent);
        let e = use_lent::<u32>(h, "number").err().unwrap();
        assert!(
            e.starts_with(&format!(
                "stale number handle {h}: used after the call that gave it returned"
            )),
            "{e}"
        );
        // Never reused.
        let again = lend(&thing, "number");
        assert!(again.handle() > h);
        let e = use_lent::<u32>(u64::MAX, "number").err().unwrap();
        assert!(e.starts_with("unknown number handle"), "{e}");
        assert_eq!(
            use_lent::<u32>(0, "number").err().unwrap(),
            "no number handle (0)"
        );
    }

    #[test]
    fn withdrawing_a_handle_waits_for_its_uses() {
        let thing = 7u64;
        let lent = lend(&thing, "number");
        let h = lent.handle();
        let used = use_lent::<u64>(h, "number").unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let user = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            d.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(used);
        });
        drop(lent);
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
        user.join().unwrap();
    }

    #[test]
    fn a_smaller_table_reads_with_its_missing_fields_absent() {
        #[repr(C)]
        struct Old {
            size: usize,
            a: u32,
        }
        #[repr(C)]
        struct New {
            size: usize,
            a: u32,
            b: Option<unsafe extern "C" fn()>,
            c: *const c_char,
        }
        let old = Old {
            size: std::mem::size_of::<Old>(),
            a: 5,
        };
        // SAFETY: `Old`'s bytes; `New`'s later fields are valid as zero.
        let new = unsafe { read_sized(&old as *const Old as *const New, old.size) };
        assert_eq!((new.size, new.a), (old.size, 5));
        assert!(new.b.is_none() && new.c.is_null());
    }
}
