// libtorch operations that tch 0.24 does not expose, called from `core/src/ops.rs`.
//
// tch's generated API drops defaulted scalar arguments (`alpha` of `add`, `value` of `addcmul` and
// `addcdiv`), and `a.add(b, alpha)` is not `a + b * alpha`: the vectorised CPU kernel fuses the multiply-add
// (one rounding), so an optimizer written with two tch ops drifts from libtorch's own. With these,
// core's optimizers do exactly what libtorch's do, bit for bit.
//
// Errors: every function returns NULL on success, else a message valid until the next call on
// this thread.
#include <ATen/core/Tensor.h>

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
}
