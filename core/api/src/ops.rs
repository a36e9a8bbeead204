//! Tensor operations libtorch has and tch does not expose, through core's C++ shim
//! (`core/api/shim/unlearn_shim.cpp`): the scaled add (`a.add(b, alpha)`, one rounding on the
//! vectorised CPU path, unlike `a + b * alpha`), `addcmul_`/`addcdiv_` with their scalar `value`,
//! and dropping a gradient.

use std::ffi::{CStr, c_char};

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

unsafe extern "C" {
    fn unlearn_add_scaled_(t: *mut C_tensor, other: *const C_tensor, alpha: f64) -> *const c_char;
    fn unlearn_add_scaled(
        t: *const C_tensor,
        other: *const C_tensor,
        alpha: f64,
        out: *mut *mut C_tensor,
    ) -> *const c_char;
    fn unlearn_clear_grad(t: *mut C_tensor) -> *const c_char;
    fn unlearn_addcmul_(
        t: *mut C_tensor,
        t1: *const C_tensor,
        t2: *const C_tensor,
        value: f64,
    ) -> *const c_char;
    fn unlearn_addcdiv_(
        t: *mut C_tensor,
        t1: *const C_tensor,
        t2: *const C_tensor,
        value: f64,
    ) -> *const c_char;
}

pub(crate) fn check(err: *const c_char) -> Result<(), TchError> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: the shim returns NULL or a NUL-terminated message that stays valid until its next
    // call on this thread.
    let message = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    Err(TchError::Torch(message))
}

/// `t += alpha * other`, in place (libtorch's `t.add_(other, alpha)`).
pub fn add_scaled_(t: &mut Tensor, other: &Tensor, alpha: f64) -> Result<(), TchError> {
    // SAFETY: both handles are live tensors owned by their `Tensor`s for the whole call.
    check(unsafe { unlearn_add_scaled_(t.as_mut_ptr(), other.as_ptr(), alpha) })
}

/// `t + alpha * other`, a new tensor (libtorch's `t.add(other, alpha)`).
pub fn add_scaled(t: &Tensor, other: &Tensor, alpha: f64) -> Result<Tensor, TchError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: live handles; on success the shim stores a new heap tensor in `out`, which
    // `Tensor::from_ptr` then owns (and frees, as every tch tensor).
    check(unsafe { unlearn_add_scaled(t.as_ptr(), other.as_ptr(), alpha, &mut out) })?;
    // SAFETY: on success `out` holds the new tensor the call made; `Tensor` owns it from here.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// `t += value * t1 * t2`, in place (libtorch's `t.addcmul_(t1, t2, value)`).
pub fn addcmul_(t: &mut Tensor, t1: &Tensor, t2: &Tensor, value: f64) -> Result<(), TchError> {
    // SAFETY: all three handles are live tensors owned by their `Tensor`s for the whole call.
    check(unsafe { unlearn_addcmul_(t.as_mut_ptr(), t1.as_ptr(), t2.as_ptr(), value) })
}

/// `t += value * t1 / t2`, in place (libtorch's `t.addcdiv_(t1, t2, value)`).
pub fn addcdiv_(t: &mut Tensor, t1: &Tensor, t2: &Tensor, value: f64) -> Result<(), TchError> {
    // SAFETY: all three handles are live tensors owned by their `Tensor`s for the whole call.
    check(unsafe { unlearn_addcdiv_(t.as_mut_ptr(), t1.as_ptr(), t2.as_ptr(), value) })
}

/// Drops `t`'s gradient (undefined, not zero), as libtorch's optimizers' `zero_grad()` does.
pub fn clear_grad(t: &mut Tensor) -> Result<(), TchError> {
    // SAFETY: a live handle.
    check(unsafe { unlearn_clear_grad(t.as_mut_ptr()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn scaled_add_is_the_fused_kernel_not_two_ops() {
        tch::manual_seed(0);
        let a = Tensor::randn([100_003], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([100_003], (Kind::Float, Device::Cpu));
        let fused = add_scaled(&a, &b, -0.1).unwrap();
        // The same values within one rounding of the unfused result...
        let unfused = &a + &b * -0.1;
        let diff = (&fused - &unfused).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        // ...and not all equal to it: the kernel rounds once, two ops round twice.
        let differ = fused.ne_tensor(&unfused).sum(Kind::Int64).int64_value(&[]);
        assert!(differ > 0);
        let mut c = a.copy();
        add_scaled_(&mut c, &b, -0.1).unwrap();
        assert!(c.equal(&fused));
        // Shape errors come back as errors, not aborts.
        let e = add_scaled(&a, &Tensor::ones([3], (Kind::Float, Device::Cpu)), 1.0).unwrap_err();
        assert!(e.to_string().contains("size"), "{e}");
    }

    /// The shim's `addcmul_`/`addcdiv_` compute `t + value * t1 * t2` and `t + value * t1 / t2`
    /// (within rounding of the unfused ops: these check the arguments reach the right places,
    /// the bit-level claim is the optimizer tests' against libtorch's own Adam).
    #[test]
    fn addcmul_and_addcdiv_take_their_value() {
        tch::manual_seed(1);
        let opts = (Kind::Float, Device::Cpu);
        let t = Tensor::randn([1000], opts);
        let a = Tensor::randn([1000], opts);
        let b = Tensor::rand([1000], opts) + 0.5;
        let close = |x: &Tensor, y: &Tensor| {
            let d = (x - y).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{d}");
        };
        let mut m = t.copy();
        addcmul_(&mut m, &a, &b, -0.3).unwrap();
        close(&m, &(&t + &a * &b * -0.3));
        let mut q = t.copy();
        addcdiv_(&mut q, &a, &b, 0.7).unwrap();
        close(&q, &(&t + &a / &b * 0.7));
        // A value of 0 leaves `t` as it was; a shape error is an error, not an abort.
        let mut z = t.copy();
        addcmul_(&mut z, &a, &b, 0.0).unwrap();
        assert!(z.equal(&t));
        let short = Tensor::ones([3], opts);
        assert!(addcdiv_(&mut z, &a, &short, 1.0).is_err());
    }

    #[test]
    fn cleared_gradients_are_undefined() {
        let mut w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&w * 2.0).sum(Kind::Float).backward();
        assert!(w.grad().defined());
        clear_grad(&mut w).unwrap();
        assert!(!w.grad().defined());
    }
}
