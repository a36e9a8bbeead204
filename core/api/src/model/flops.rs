//! FLOP counting: the shape of one image's activations as it flows through an architecture's
//! layers, and what each layer costs (what an architecture's `FlopsFn` walks through).

use super::ModelSpec;

/// The activations of one image as they flow through the layers, `[C, H, W]`, for counting
/// FLOPs as [`FlopsFn`] does: each layer changes the shape as PyTorch's does and returns the
/// FLOPs it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Activation {
    pub c: i64,
    pub h: i64,
    pub w: i64,
}

/// The output side of a convolution or pooling window: floor((n + 2p - k) / s) + 1.
const fn out_side(n: i64, k: i64, stride: i64, padding: i64) -> i64 {
    (n + 2 * padding - k).div_euclid(stride) + 1
}

impl Activation {
    pub(super) fn input(spec: &ModelSpec) -> Activation {
        let [c, h, w] = spec.input;
        Activation { c, h, w }
    }

    /// A `k` x `k` convolution to `cout` channels: 2 FLOPs per multiply-add, `Cin * k * k` of
    /// them for each output element (the bias is not counted).
    pub(super) fn conv(&mut self, cout: i64, k: i64, stride: i64, padding: i64) -> f64 {
        self.h = out_side(self.h, k, stride, padding);
        self.w = out_side(self.w, k, stride, padding);
        let flops = 2 * self.c * k * k * cout * self.h * self.w;
        self.c = cout;
        flops as f64
    }

    /// A `k` x `k` max-pool with stride `k` (PyTorch's default), no FLOPs.
    pub(super) fn max_pool(&mut self, k: i64) -> f64 {
        self.h = out_side(self.h, k, k, 0);
        self.w = out_side(self.w, k, k, 0);
        0.0
    }

    /// An adaptive average pool to `side` x `side`, no FLOPs.
    pub(super) fn adaptive_pool(&mut self, side: i64) -> f64 {
        self.h = side;
        self.w = side;
        0.0
    }

    /// A linear layer on the flattened activations, to `out` features: 2 FLOPs per multiply-add
    /// (the bias is not counted).
    pub(super) fn linear(&mut self, out: i64) -> f64 {
        let flops = 2 * self.c * self.h * self.w * out;
        *self = Activation { c: out, h: 1, w: 1 };
        flops as f64
    }
}
