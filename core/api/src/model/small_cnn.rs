//! Plain CNNs (conv - BN - ReLU stacks, global average pooling, one linear layer): the small CNN
//! for 8x8 digits (CPU tests and the demo) and `conv6`, a CPU-sized CIFAR model that memorises
//! its training set.

use tch::nn::{self, ModuleT};
use tch::Tensor;

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
    /// `layers`: output width and stride of each conv layer.
    fn new(
        root: &nn::Path,
        in_channels: i64,
        classes: i64,
        layers: &[(i64, i64)],
        pool_after: Option<usize>,
    ) -> Self {
        let mut width = in_channels;
        let convs = layers
            .iter()
            .enumerate()
            .map(|(i, &(out, stride))| {
                let cfg = nn::ConvConfig {
                    padding: 1,
                    stride,
                    bias: false,
                    ..Default::default()
                };
                let conv = nn::conv2d(root / format!("conv{}", i + 1), width, out, 3, cfg);
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
        let layers = [(32, 1), (64, 1), (128, 1)];
        PlainCnn::new(root, in_channels, classes, &layers, Some(1))
    }

    /// Six conv layers of widths 32-32-64-64-128-128, the third and fifth with stride 2.
    pub(super) fn conv6(root: &nn::Path, in_channels: i64, classes: i64) -> Self {
        let layers = [(32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)];
        PlainCnn::new(root, in_channels, classes, &layers, None)
    }
}

impl ModuleT for PlainCnn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = h.apply(conv).apply_t(bn, train).relu();
            if self.pool_after == Some(i) {
                h = h.max_pool2d_default(2);
            }
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}
