//! What both sides of the ABI need: strings, statuses and panics, tensor lists, and the
//! conversions of models and data sets to and from their `#[repr(C)]` references.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};
use tch::nn::ModuleT;
use tch::Tensor;

use super::abi::{
    C_tensor, DatasetRef, ForwardFn, FreeString, ModelRef, NamedTensor, Status, TaskRef,
    TensorList, TensorSink, ERR, OK,
};
use crate::data::{Augment, Dataset};
use crate::method::{RewindPoint, TaskData};
use crate::model::{Model, ModelSpec};
use crate::train::Schedule;

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
    if !s.is_null() {
        drop(CString::from_raw(s));
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
    if p.is_null() {
        return Err(format!("{what} is missing (a null pointer)"));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| format!("{what} is not valid UTF-8"))
}

/// Reads a borrowed JSON string argument into `T`.
///
/// # Safety
/// As [`read_str`].
pub unsafe fn read_json<T: serde::de::DeserializeOwned>(
    p: *const c_char,
    what: &str,
) -> Result<T, String> {
    serde_json::from_str(read_str(p, what)?).map_err(|e| format!("{what}: invalid JSON: {e}"))
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

/// A new reference to a borrowed tensor handle (the same tensor).
///
/// # Safety
/// `t` is null or a valid tensor handle for the duration of the call.
pub unsafe fn borrow_tensor(t: *mut C_tensor, what: &str) -> Result<Tensor, String> {
    if t.is_null() {
        return Err(format!("{what}: a null tensor"));
    }
    Ok(Tensor::clone_from_ptr(t))
}

/// Collects the tensors given to a [`TensorSink`].
#[derive(Default)]
pub struct Collected(pub Vec<(String, Tensor)>);

impl Collected {
    /// A sink writing into `self` (which must outlive every `put`).
    pub fn sink(&mut self) -> TensorSink {
        TensorSink {
            state: self as *mut Collected as *mut c_void,
            put: collect_put,
        }
    }

    pub fn into_map(self) -> BTreeMap<String, Tensor> {
        self.0.into_iter().collect()
    }
}

unsafe extern "C" fn collect_put(state: *mut c_void, name: *const c_char, tensor: *mut C_tensor) {
    // A put that cannot be read is dropped; the receiver checks what it got.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let c = &mut *(state as *mut Collected);
        if let (Ok(n), Ok(t)) = (
            read_str(name, "tensor name"),
            borrow_tensor(tensor, "tensor"),
        ) {
            c.0.push((n.to_string(), t));
        }
    }));
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
#[derive(Serialize, Deserialize)]
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
    Ok(TaskData {
        train: read_dataset(&r.train, "train data")?,
        val: read_dataset(&r.val, "val data")?,
        test: read_dataset(&r.test, "test data")?,
    })
}

/// A [`ModelRef`] and what keeps it valid.
pub struct OwnedModel {
    spec: CString,
    variables: OwnedList,
    forward: ForwardFn,
}

impl OwnedModel {
    /// `model`'s spec and variables, with `forward` as its forward function.
    pub fn new(model: &Model, forward: ForwardFn) -> OwnedModel {
        let vars: BTreeMap<String, Tensor> = model.var_store().variables().into_iter().collect();
        OwnedModel {
            spec: json_cstring(model.spec()),
            variables: OwnedList::new(&vars),
            forward,
        }
    }

    pub fn as_ref(&self) -> ModelRef {
        ModelRef {
            spec_json: self.spec.as_ptr(),
            variables: self.variables.as_ref(),
            forward: self.forward,
        }
    }
}

/// The model a reference points at: the same variables, and a forward that calls the owner's.
///
/// # Safety
/// `r`'s handles, strings and forward function are valid for the call, and the model made here
/// is dropped before the call returns.
pub unsafe fn read_model(r: &ModelRef) -> Result<Model, String> {
    let spec: ModelSpec = read_json(r.spec_json, "model spec")?;
    let vars = read_list(&r.variables, "model variables")?.ok_or("the model has no variables")?;
    let net = ForeignNet { forward: r.forward };
    Model::from_parts(spec, vars, Box::new(net)).map_err(|e| e.to_string())
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

/// A [`ForwardFn`] calling `model.forward_t` (the model must outlive its use).
pub fn forward_of(model: &Model) -> ForwardFn {
    ForwardFn {
        state: model as *const Model as *const c_void,
        call: model_forward,
        free_string,
    }
}

unsafe extern "C" fn model_forward(
    state: *const c_void,
    x: *mut C_tensor,
    train: u8,
    out: *mut *mut C_tensor,
    err: *mut *mut c_char,
) -> Status {
    guard(err, || {
        let model = &*(state as *const Model);
        let x = borrow_tensor(x, "forward input")?;
        *out = into_handle(model.forward_t(&x, train != 0));
        Ok(())
    })
}

/// `context_json` of a method call.
#[derive(Serialize, Deserialize)]
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
#[derive(Serialize, Deserialize)]
pub struct RunMeta {
    pub label: String,
    pub schedule: Schedule,
    pub schedule_offset: usize,
    pub rewind_epoch: Option<usize>,
    pub seed: u64,
    pub augment: Augment,
}

/// `report_json` of a loop: a `TrainReport` without its snapshot.
#[derive(Serialize, Deserialize)]
pub struct ReportMeta {
    pub seconds: f64,
    /// `None` for NaN (JSON has no NaN).
    pub last_loss: Option<f64>,
    pub steps: usize,
}
