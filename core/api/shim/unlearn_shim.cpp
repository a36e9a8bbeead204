// libtorch operations and settings that tch 0.24 does not expose, called from
// `core/api/src/ops.rs` (tensor operations) and `core/api/src/exec.rs` (execution settings).
//
// tch's generated API drops defaulted scalar arguments (`alpha` of `add`, `value` of `addcmul` and
// `addcdiv`), and `a.add(b, alpha)` is not `a + b * alpha`: the vectorised CPU kernel fuses the multiply-add
// (one rounding), so an optimizer written with two tch ops drifts from libtorch's own. With these,
// core's optimizers do exactly what libtorch's do, bit for bit.
//
// Errors: every function returns NULL on success, else a message valid until the next call on
// this thread.
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/Version.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <cstdio>
#include <exception>
#include <string>

namespace {
thread_local std::string last_error;

template <typename F>
const char *guard(F f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception &e) {
    last_error = e.what();
    return last_error.c_str();
  }
}
}  // namespace

extern "C" {

// self += alpha * other, in place.
const char *unlearn_add_scaled_(at::Tensor *self, const at::Tensor *other, double alpha) {
  return guard([&] { self->add_(*other, alpha); });
}

// Drops the gradient of `self` (sets it to undefined), as libtorch's `Optimizer::zero_grad()`
// does: a parameter that gets no gradient in the next backward pass is then skipped by the step.
const char *unlearn_clear_grad(at::Tensor *self) {
  return guard([&] { self->mutable_grad().reset(); });
}

// *out = self + alpha * other (a new tensor; the caller owns it, as tch owns its handles).
const char *unlearn_add_scaled(const at::Tensor *self, const at::Tensor *other, double alpha,
                               at::Tensor **out) {
  return guard([&] { *out = new at::Tensor(self->add(*other, alpha)); });
}

// self += value * t1 * t2, in place (Adam's second-moment update).
const char *unlearn_addcmul_(at::Tensor *self, const at::Tensor *t1, const at::Tensor *t2,
                             double value) {
  return guard([&] { self->addcmul_(*t1, *t2, value); });
}

// self += value * t1 / t2, in place (Adam's parameter update).
const char *unlearn_addcdiv_(at::Tensor *self, const at::Tensor *t1, const at::Tensor *t2,
                             double value) {
  return guard([&] { self->addcdiv_(*t1, *t2, value); });
}

// --- Execution settings (core/api/src/exec.rs) ---

// Autocast for `device_type` (0: CPU, 1: CUDA, as c10::DeviceType) to `dtype` (a c10::ScalarType
// code), entered as `torch.autocast.__enter__` does; the previous state goes to *prev_enabled and
// *prev_dtype for unlearn_autocast_exit.
const char *unlearn_autocast_enter(int device_type, int dtype, int *prev_enabled, int *prev_dtype) {
  return guard([&] {
    auto dev = static_cast<c10::DeviceType>(device_type);
    *prev_enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::set_autocast_dtype(dev, static_cast<c10::ScalarType>(dtype));
    at::autocast::increment_nesting();
  });
}

// Leaves an autocast region: restores the state unlearn_autocast_enter saved, and on leaving the
// outermost region drops the cache of cast weights, as `torch.autocast.__exit__` does (the cache
// would otherwise hand the next forward the weights from before the optimizer step).
const char *unlearn_autocast_exit(int device_type, int prev_enabled, int prev_dtype) {
  return guard([&] {
    auto dev = static_cast<c10::DeviceType>(device_type);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(dev, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dev, static_cast<c10::ScalarType>(prev_dtype));
  });
}

// Whether autocast is on for `device_type`, and to which dtype (for tests).
const char *unlearn_autocast_state(int device_type, int *enabled, int *dtype) {
  return guard([&] {
    auto dev = static_cast<c10::DeviceType>(device_type);
    *enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
  });
}

// TF32 for float32 matrix products (cuBLAS) and convolutions (cuDNN), process-wide, as
// `torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32` set it.
const char *unlearn_set_tf32(int cublas, int cudnn) {
  return guard([&] {
    at::globalContext().setAllowTF32CuBLAS(cublas != 0);
    at::globalContext().setAllowTF32CuDNN(cudnn != 0);
  });
}

const char *unlearn_get_tf32(int *cublas, int *cudnn) {
  return guard([&] {
    *cublas = at::globalContext().allowTF32CuBLAS() ? 1 : 0;
    *cudnn = at::globalContext().allowTF32CuDNN() ? 1 : 0;
  });
}

// *out = self in the channels-last (NHWC) memory format: the same values, strides
// [H*W*C, 1, W*C, C]; self itself when it is so already.
const char *unlearn_channels_last(const at::Tensor *self, at::Tensor **out) {
  return guard([&] { *out = new at::Tensor(self->contiguous(at::MemoryFormat::ChannelsLast)); });
}

// Replaces the storage of `self` (a parameter or buffer) with a copy in the channels-last format
// (or, with channels_last 0, the standard contiguous one), keeping the tensor object and so every
// handle to it, the optimizer's and the var store's, as `module.to(memory_format=...)` does.
const char *unlearn_set_memory_format_(at::Tensor *self, int channels_last) {
  return guard([&] {
    auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    self->set_data(self->detach().contiguous(format));
  });
}

// The CUDA runtime and cuDNN versions libtorch was built with (e.g. 13000 for 13.0), 0 when it has
// no CUDA.
const char *unlearn_cuda_versions(long *cudart, long *cudnn) {
  return guard([&] {
    const auto &hooks = at::detail::getCUDAHooks();
    *cudart = hooks.hasCUDART() ? hooks.versionCUDART() : 0;
    *cudnn = hooks.hasCuDNN() ? hooks.versionCuDNN() : 0;
  });
}

// The CPU's vector instruction set that libtorch's kernels use ("AVX2", "AVX512", ...).
const char *unlearn_cpu_capability(char *buf, int len) {
  return guard([&] {
    auto s = at::get_cpu_capability();
    std::snprintf(buf, len, "%s", s.c_str());
  });
}
}
