//! The small CNN for 8x8 digits (CPU tests and the demo).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::Normalize;

/// conv(3x3, 32) - BN - ReLU - conv(3x3, 64) - BN - ReLU - maxpool 2 - conv(3x3, 128) - BN - ReLU
/// - global average pool - fc. Convs have no bias (BatchNorm follows), as in ResNets.
#[derive(Debug)]
pub(super) struct SmallCnn {
    norm: Normalize,
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    fc: nn::Linear,
}

impl SmallCnn {
    pub(super) fn new(root: &nn::Path, norm: Normalize, in_channels: i64, classes: i64) -> Self {
        let conv_cfg = nn::ConvConfig {
            padding: 1,
            bias: false,
            ..Default::default()
        };
        let widths = [in_channels, 32, 64, 128];
        let convs = (0..3)
            .map(|i| {
                let conv = nn::conv2d(
                    root / format!("conv{}", i + 1),
                    widths[i],
                    widths[i + 1],
                    3,
                    conv_cfg,
                );
                let bn = nn::batch_norm2d(
                    root / format!("bn{}", i + 1),
                    widths[i + 1],
                    Default::default(),
                );
                (conv, bn)
            })
            .collect();
        let fc = nn::linear(root / "fc", 128, classes, Default::default());
        SmallCnn { norm, convs, fc }
    }
}

impl ModuleT for SmallCnn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = self.norm.forward(x);
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = h.apply(conv).apply_t(bn, train).relu();
            if i == 1 {
                h = h.max_pool2d_default(2);
            }
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}
