//! Plain CNNs (conv - BN - ReLU stacks, global average pooling, one linear layer): the small CNN
//! for 8x8 digits (CPU tests and the demo) and `conv6`, a CPU-sized CIFAR model that memorises
//! its training set.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::ModelSpec;
use super::flops::Activation;

/// Output width and stride of each conv layer (3x3, padding 1), and the layer (0-based) after
/// which a 2x2 max-pool comes, if any.
type Config = (&'static [(i64, i64)], Option<usize>);

/// conv(3x3, 32) - conv(3x3, 64) - maxpool 2 - conv(3x3, 128).
const SMALL: Config = (&[(32, 1), (64, 1), (128, 1)], Some(1));

/// Six conv layers of widths 32-32-64-64-128-128, the third and fifth with stride 2.
const CONV6: Config = (
    &[(32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)],
    None,
);

const K: i64 = 3;
const PADDING: i64 = 1;
const POOL: i64 = 2;

/// A stack of 3x3 conv - BN - ReLU layers, then global average pooling and `fc`. Convs have no
/// bias (BatchNorm follows), as in ResNets; names are `conv{i}`, `bn{i}` from 1.
#[derive(Debug)]
pub(super) struct PlainCnn {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    /// A 2x2 max-pool after this layer (0-based).
    pool_after: Option<usize>,
    fc: nn::Linear,
}

impl PlainCnn {
    fn new(root: &nn::Path, in_channels: i64, classes: i64, (layers, pool_after): Config) -> Self {
        let mut width = in_channels;
        let convs = layers
            .iter()
            .enumerate()
            .map(|(i, &(out, stride))| {
                let cfg = nn::ConvConfig {
                    padding: PADDING,
                    stride,
                    bias: false,
                    ..Default::default()
                };
                let conv = nn::conv2d(root / format!("conv{}", i + 1), width, out, K, cfg);
                let bn = nn::batch_norm2d(root / format!("bn{}", i + 1), out, Default::default());
                width = out;
                (conv, bn)
            })
            .collect();
        let fc = nn::linear(root / "fc", width, classes, Default::default());
        PlainCnn {
            convs,
            pool_after,
            fc,
        }
    }

    /// conv(3x3, 32) - BN - ReLU - conv(3x3, 64) - BN - ReLU - maxpool 2 - conv(3x3, 128) - BN -
    /// ReLU - global average pool - fc.
    pub(super) fn small(root: &nn::Path, in_channels: i64, classes: i64) -> Self {
        PlainCnn::new(root, in_channels, classes, SMALL)
    }

    /// Six conv layers of widths 32-32-64-64-128-128, the third and fifth with stride 2.
    pub(super) fn conv6(root: &nn::Path, in_channels: i64, classes: i64) -> Self {
        PlainCnn::new(root, in_channels, classes, CONV6)
    }

    /// Forward FLOPs of one image ([`super::FlopsFn`]) through [`PlainCnn::new`]'s layers: the
    /// convs at the sides their strides and the max-pool leave, and `fc`.
    fn flops(spec: &ModelSpec, (layers, pool_after): Config) -> f64 {
        let mut x = Activation::input(spec);
        let mut flops = 0.0;
        for (i, &(out, stride)) in layers.iter().enumerate() {
            flops += x.conv(out, K, stride, PADDING);
            if pool_after == Some(i) {
                flops += x.max_pool(POOL);
            }
        }
        x.adaptive_pool(1);
        flops + x.linear(spec.classes as i64)
    }

    /// [`PlainCnn::small`]'s forward FLOPs per image.
    pub(super) fn small_flops(spec: &ModelSpec) -> f64 {
        PlainCnn::flops(spec, SMALL)
    }

    /// [`PlainCnn::conv6`]'s forward FLOPs per image.
    pub(super) fn conv6_flops(spec: &ModelSpec) -> f64 {
        PlainCnn::flops(spec, CONV6)
    }
}

impl ModuleT for PlainCnn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = h.apply(conv).apply_t(bn, train).relu();
            if self.pool_after == Some(i) {
                h = h.max_pool2d_default(POOL);
            }
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}
