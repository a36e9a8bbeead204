//! VGG-16 with BatchNorm in the CIFAR form of the reference code (`models/VGG.py`, `vgg16_bn`).
//!
//! `features`: the 13 3x3 conv layers of VGG-16 (configuration D: 64, 64, M, 128, 128, M, 256 x3,
//! M, 512 x3, M, 512 x3), each conv (no bias) - BatchNorm - ReLU, with 2x2 max-pools at the `M`s.
//! The reference drops VGG-16's fifth pool, so a 32x32 input leaves the features as 512 x 2 x 2.
//! Then `AdaptiveAvgPool2d((2, 2))` and the reference's head, `classifier`: Linear(2048, 256) -
//! ReLU - Linear(256, 256) - ReLU - Linear(256, classes).
//!
//! Names follow `nn.Sequential` indices: `features.0` (conv), `features.1` (BatchNorm), ReLU at
//! 2, ..., `features.40`/`features.41` for the last conv/BN; `classifier.0`, `classifier.2`,
//! `classifier.4`. 15,311,818 parameters for 10 classes. Any image of at least 16x16 (four
//! max-pools); larger images are averaged down to 2x2 before the head.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::ModelSpec;
use super::flops::Activation;

/// Configuration D without its last max-pool; 0 marks a 2x2 max-pool.
const CFG: [i64; 17] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512,
];

/// The features' conv layers: 3x3, stride 1, padding 1 (the side is kept).
const CONV_K: i64 = 3;
const CONV_PADDING: i64 = 1;
/// The max-pools' window and stride.
const POOL: i64 = 2;
/// The side the features are averaged down to before the head.
const POOLED_SIDE: i64 = 2;
/// The width of the head's two hidden layers.
const HEAD_WIDTH: i64 = 256;

#[derive(Debug)]
enum Layer {
    Conv(Box<(nn::Conv2D, nn::BatchNorm)>),
    MaxPool,
}

#[derive(Debug)]
pub(super) struct Vgg {
    features: Vec<Layer>,
    classifier: [nn::Linear; 3],
}

impl Vgg {
    pub(super) fn vgg16_bn(root: &nn::Path, in_channels: i64, classes: i64) -> Self {
        let f = root / "features";
        let conv_cfg = nn::ConvConfig {
            padding: CONV_PADDING,
            bias: false,
            ..Default::default()
        };
        let mut features = Vec::new();
        let mut cin = in_channels;
        let mut index = 0;
        for &width in &CFG {
            if width == 0 {
                features.push(Layer::MaxPool);
                index += 1;
            } else {
                let conv = nn::conv2d(&f / index, cin, width, CONV_K, conv_cfg);
                let bn = nn::batch_norm2d(&f / (index + 1), width, Default::default());
                features.push(Layer::Conv(Box::new((conv, bn))));
                index += 3; // conv, BatchNorm, ReLU
                cin = width;
            }
        }
        let c = root / "classifier";
        let pooled = cin * POOLED_SIDE * POOLED_SIDE;
        let classifier = [
            nn::linear(&c / 0, pooled, HEAD_WIDTH, Default::default()),
            nn::linear(&c / 2, HEAD_WIDTH, HEAD_WIDTH, Default::default()),
            nn::linear(&c / 4, HEAD_WIDTH, classes, Default::default()),
        ];
        Vgg {
            features,
            classifier,
        }
    }

    /// [`Vgg::vgg16_bn`]'s forward FLOPs per image ([`super::FlopsFn`]): the 13 convs of
    /// [`CFG`] at the sides the max-pools leave, and the head's three linear layers.
    pub(super) fn vgg16_bn_flops(spec: &ModelSpec) -> f64 {
        let mut x = Activation::input(spec);
        let mut flops = 0.0;
        for &width in &CFG {
            flops += if width == 0 {
                x.max_pool(POOL)
            } else {
                x.conv(width, CONV_K, 1, CONV_PADDING)
            };
        }
        x.adaptive_pool(POOLED_SIDE);
        flops + x.linear(HEAD_WIDTH) + x.linear(HEAD_WIDTH) + x.linear(spec.classes as i64)
    }
}

impl ModuleT for Vgg {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for layer in &self.features {
            h = match layer {
                Layer::Conv(cb) => h.apply(&cb.0).apply_t(&cb.1, train).relu(),
                Layer::MaxPool => h.max_pool2d_default(POOL),
            };
        }
        let [l0, l2, l4] = &self.classifier;
        h.adaptive_avg_pool2d([POOLED_SIDE, POOLED_SIDE])
            .flatten(1, -1)
            .apply(l0)
            .relu()
            .apply(l2)
            .relu()
            .apply(l4)
    }
}
