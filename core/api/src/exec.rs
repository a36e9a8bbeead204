//! How a model computes: the float precision of its forward pass (fp32, TF32 or bf16 autocast)
//! and the memory format of its images and weights (channels-last). tch 0.24 exposes none of these;
//! core's C++ shim (`core/api/shim/unlearn_shim.cpp`) reaches libtorch's own switches, so the
//! computation is exactly what PyTorch's `torch.autocast`, `allow_tf32` and
//! `memory_format=torch.channels_last` give.
//!
//! A [`Model`](crate::model::Model) carries an [`Execution`] and applies it in `forward_t`, so
//! training, pruning, every unlearner and evaluation run with it alike. Models take the
//! process-wide default ([`set_default`]) when built; the pipeline sets it from the config.

use std::ffi::{c_char, c_int, c_long};
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, TchError, Tensor};
use torch_sys::C_tensor;

unsafe extern "C" {
    fn unlearn_autocast_enter(
        device_type: c_int,
        dtype: c_int,
        prev_enabled: *mut c_int,
        prev_dtype: *mut c_int,
    ) -> *const c_char;
    fn unlearn_autocast_exit(
        device_type: c_int,
        prev_enabled: c_int,
        prev_dtype: c_int,
    ) -> *const c_char;
    fn unlearn_autocast_state(
        device_type: c_int,
        enabled: *mut c_int,
        dtype: *mut c_int,
    ) -> *const c_char;
    fn unlearn_set_tf32(cublas: c_int, cudnn: c_int) -> *const c_char;
    fn unlearn_get_tf32(cublas: *mut c_int, cudnn: *mut c_int) -> *const c_char;
    fn unlearn_channels_last(t: *const C_tensor, out: *mut *mut C_tensor) -> *const c_char;
    fn unlearn_set_memory_format_(t: *mut C_tensor, channels_last: c_int) -> *const c_char;
    fn unlearn_cuda_versions(cudart: *mut c_long, cudnn: *mut c_long) -> *const c_char;
    fn unlearn_cpu_capability(buf: *mut c_char, len: c_int) -> *const c_char;
}

use crate::ops::check;

/// The float arithmetic of a forward pass.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// IEEE float32 everywhere: TF32 is switched off for matrix products and convolutions
    /// (PyTorch leaves it on for cuDNN convolutions by default).
    #[default]
    Fp32,
    /// float32 tensors, with matrix products and convolutions on the GPU's TF32 tensor cores (10
    /// bits of mantissa); process-wide, as libtorch's switch is. No effect on the CPU.
    Tf32,
    /// bf16 mixed precision: the forward pass under autocast (convolutions and matrix products in
    /// bfloat16, reductions and the loss in float32), weights and optimizer in float32; logits
    /// come out as float32.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Tf32, Precision::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown precision `{s}`: expected fp32, tf32 or bf16"))
    }
}

/// How a model computes (see the module's documentation).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Execution {
    pub precision: Precision,
    /// Images and 4-D weights in the channels-last (NHWC) memory format, which cuDNN's tensor-core
    /// convolutions read without transposing.
    pub channels_last: bool,
}

impl Execution {
    pub fn is_default(&self) -> bool {
        *self == Execution::default()
    }
}

impl fmt::Display for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.precision)?;
        if self.channels_last {
            write!(f, ", channels-last")?;
        }
        Ok(())
    }
}

static DEFAULT: Mutex<Execution> = Mutex::new(Execution {
    precision: Precision::Fp32,
    channels_last: false,
});

/// The execution models built from now on take (and TF32's process-wide switch).
pub fn set_default(e: Execution) -> Result<(), TchError> {
    set_tf32(e.precision == Precision::Tf32)?;
    *DEFAULT.lock().unwrap_or_else(|p| p.into_inner()) = e;
    Ok(())
}

/// What [`set_default`] last set (fp32, contiguous, when never called).
pub fn default() -> Execution {
    *DEFAULT.lock().unwrap_or_else(|p| p.into_inner())
}

/// libtorch's `c10::DeviceType` code of a device, for autocast (which is per device type).
fn device_type(d: Device) -> Result<c_int, TchError> {
    match d {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        other => Err(TchError::Torch(format!(
            "bf16 autocast is not available on {other:?}"
        ))),
    }
}

/// libtorch's `c10::ScalarType` codes of the kinds autocast takes.
fn scalar_type(k: Kind) -> Result<c_int, TchError> {
    match k {
        Kind::Half => Ok(5),
        Kind::Float => Ok(6),
        Kind::BFloat16 => Ok(15),
        other => Err(TchError::Torch(format!(
            "autocast to {other:?}: only Half and BFloat16"
        ))),
    }
}

fn kind_of(code: c_int) -> Option<Kind> {
    match code {
        5 => Some(Kind::Half),
        6 => Some(Kind::Float),
        15 => Some(Kind::BFloat16),
        _ => None,
    }
}

/// An autocast region on one device type, left when dropped (as `with torch.autocast(...)`).
/// Autocast state is per thread: the region covers what this thread computes.
#[must_use = "autocast ends when the guard is dropped"]
pub struct Autocast {
    device_type: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl Autocast {
    pub fn enter(device: Device, kind: Kind) -> Result<Autocast, TchError> {
        let device_type = device_type(device)?;
        let dtype = scalar_type(kind)?;
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: plain values and two out-pointers to locals.
        check(unsafe {
            unlearn_autocast_enter(device_type, dtype, &mut prev_enabled, &mut prev_dtype)
        })?;
        Ok(Autocast {
            device_type,
            prev_enabled,
            prev_dtype,
        })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: plain values. Restoring state saved by `enter` cannot fail in practice; an error
        // here is reported rather than unwinding out of a destructor.
        let r = check(unsafe {
            unlearn_autocast_exit(self.device_type, self.prev_enabled, self.prev_dtype)
        });
        if let Err(e) = r {
            eprintln!("[unlearn] leaving autocast: {e}");
        }
    }
}

/// Whether autocast is on for `device`'s type on this thread, and its dtype.
pub fn autocast_state(device: Device) -> Result<(bool, Option<Kind>), TchError> {
    let (mut enabled, mut dtype) = (0, 0);
    // SAFETY: out-pointers to locals.
    check(unsafe { unlearn_autocast_state(device_type(device)?, &mut enabled, &mut dtype) })?;
    Ok((enabled != 0, kind_of(dtype)))
}

/// Switches TF32 for float32 matrix products (cuBLAS) and convolutions (cuDNN), process-wide.
pub fn set_tf32(allow: bool) -> Result<(), TchError> {
    set_tf32_each(allow, allow)
}

/// Switches TF32 for cuBLAS products and cuDNN convolutions separately, process-wide.
pub fn set_tf32_each(cublas: bool, cudnn: bool) -> Result<(), TchError> {
    // SAFETY: plain values.
    check(unsafe { unlearn_set_tf32(cublas as c_int, cudnn as c_int) })
}

/// TF32 switched on or off until dropped; then both switches are as they were.
#[must_use = "the switches are restored when the guard is dropped"]
pub struct Tf32Switch {
    before: (bool, bool),
}

impl Tf32Switch {
    pub fn set(allow: bool) -> Result<Tf32Switch, TchError> {
        let before = tf32()?;
        set_tf32(allow)?;
        Ok(Tf32Switch { before })
    }
}

impl Drop for Tf32Switch {
    fn drop(&mut self) {
        if let Err(e) = set_tf32_each(self.before.0, self.before.1) {
            eprintln!("[unlearn] restoring TF32: {e}");
        }
    }
}

/// Whether TF32 is allowed for (cuBLAS matrix products, cuDNN convolutions), as libtorch holds it.
pub fn tf32() -> Result<(bool, bool), TchError> {
    let (mut cublas, mut cudnn) = (0, 0);
    // SAFETY: out-pointers to locals.
    check(unsafe { unlearn_get_tf32(&mut cublas, &mut cudnn) })?;
    Ok((cublas != 0, cudnn != 0))
}

/// `t` in the channels-last memory format (`t` itself, shared, when it is so already); `t` must
/// be 4-D.
pub fn channels_last(t: &Tensor) -> Result<Tensor, TchError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: a live handle; on success `out` is a new heap tensor that `Tensor` then owns.
    check(unsafe { unlearn_channels_last(t.as_ptr(), &mut out) })?;
    // SAFETY: on success `out` holds the new tensor the call made; `Tensor` owns it from here.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Moves the storage of `t` (a parameter or buffer, 4-D) to channels-last, or back to the
/// standard contiguous format, keeping the tensor object itself: every handle to it (the var
/// store's, an optimizer's) sees the new layout.
pub fn set_memory_format_(t: &mut Tensor, channels_last: bool) -> Result<(), TchError> {
    // SAFETY: a live handle.
    check(unsafe { unlearn_set_memory_format_(t.as_mut_ptr(), channels_last as c_int) })
}

/// True when `t` is 4-D and laid out channels-last (NHWC strides; size-1 dimensions may have any
/// stride, as libtorch allows).
pub fn is_channels_last(t: &Tensor) -> bool {
    let (size, stride) = (t.size(), t.stride());
    if size.len() != 4 {
        return false;
    }
    // Innermost first: C, W, H, N.
    let mut expected = 1;
    for d in [1, 3, 2, 0] {
        if size[d] != 1 && stride[d] != expected {
            return false;
        }
        expected *= size[d];
    }
    true
}

/// The CUDA runtime and cuDNN versions libtorch was built with (e.g. 13000 for CUDA 13.0), or
/// None when this libtorch has no CUDA.
pub fn cuda_versions() -> (Option<i64>, Option<i64>) {
    let (mut cudart, mut cudnn): (c_long, c_long) = (0, 0);
    // SAFETY: out-pointers to locals.
    if check(unsafe { unlearn_cuda_versions(&mut cudart, &mut cudnn) }).is_err() {
        return (None, None);
    }
    // `c_long` is 64-bit here but not on every platform.
    #[allow(clippy::unnecessary_cast)]
    let some = |v: c_long| (v > 0).then_some(v as i64);
    (some(cudart), some(cudnn))
}

/// `13000` as `13.0`, `91900` (cuDNN) as `9.19.0`.
pub fn version_string(v: i64, cudnn: bool) -> String {
    if cudnn {
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    } else {
        format!("{}.{}", v / 1000, v % 1000 / 10)
    }
}

/// The CPU vector instruction set libtorch's kernels use on this machine (`AVX2`, `AVX512`...).
pub fn cpu_capability() -> String {
    let mut buf = [0 as c_char; 64];
    // SAFETY: the shim writes at most `len` bytes, NUL-terminated.
    match check(unsafe { unlearn_cpu_capability(buf.as_mut_ptr(), buf.len() as c_int) }) {
        // SAFETY: NUL-terminated by snprintf.
        Ok(()) => unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
        Err(_) => "unknown".into(),
    }
}
