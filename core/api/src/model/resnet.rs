//! Residual networks with PyTorch's module tree and parameter names.
//!
//! - ResNet-18 in its CIFAR form: torchvision's `ResNet(BasicBlock, [2, 2, 2, 2])` with a 3x3
//!   stride-1 stem conv and no max-pool (the reference code's `resnet18` with `imagenet=False`).
//!   Names: `conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.bn1`, `layer1.0.conv2`, `layer1.0.bn2`,
//!   `layer2.0.downsample.0` (1x1 conv), `layer2.0.downsample.1` (BatchNorm), ..., `fc`.
//!   11,173,962 parameters for 10 classes.
//! - ResNet-20 / ResNet-56: He et al.'s CIFAR ResNets (16/32/64 channels, three stages of n = 3 / 9
//!   BasicBlocks), the reference code's `resnet20s` / `resnet56s`. Shortcuts that change the shape
//!   use **option A** as the paper and the reference code do: the input subsampled by 2 in both
//!   spatial dimensions and zero-padded with `planes / 4` channels on each side, no parameters.
//!   So the names are those of the blocks only (`layer2.0.conv1`, ..., no `shortcut.*`), and the
//!   counts for 10 classes are 269,722 (ResNet-20) and 853,018 (ResNet-56); option B (1x1 conv +
//!   BatchNorm, `shortcut.0`/`shortcut.1`) would add 2,752 (ResNet-20 and -56 alike).
//!
//! Both end with global average pooling, so they accept any image size of at least 8x8 (ResNet-18)
//! or 4x4 (ResNet-20/56); the reference's `avg_pool2d(out, out.size(3))` is the same on square
//! inputs.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::ModelSpec;
use super::flops::Activation;

/// A stage: output width (planes), stride of its first block, number of BasicBlocks.
type Stage = (i64, i64, usize);

/// ResNet-18's stages (torchvision's widths; the CIFAR stem keeps stage 1 at stride 1).
const RESNET18_STAGES: [Stage; 4] = [(64, 1, 2), (128, 2, 2), (256, 2, 2), (512, 2, 2)];

/// He et al.'s CIFAR ResNet-(6n+2) stages: widths 16/32/64 of `n` blocks.
const fn cifar_stages(n: usize) -> [Stage; 3] {
    [(16, 1, n), (32, 2, n), (64, 2, n)]
}

/// A conv's padding: "same" for odd `k` at stride 1.
const fn padding(k: i64) -> i64 {
    k / 2
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: padding(k),
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
}

#[derive(Debug)]
enum Shortcut {
    Identity,
    /// torchvision's `downsample`: 1x1 conv (with the block's stride) + BatchNorm.
    Conv(Box<(nn::Conv2D, nn::BatchNorm)>),
    /// Option A: `x[:, :, ::2, ::2]` padded with `pad` zero channels before and after.
    PadA {
        pad: i64,
    },
}

#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    shortcut: Shortcut,
}

/// Which shortcut a block that changes the shape gets.
#[derive(Debug, Clone, Copy)]
enum Downsample {
    /// torchvision's 1x1 conv + BN, named `downsample.0` / `downsample.1`.
    Conv,
    /// Option A zero padding.
    PadA,
}

impl BasicBlock {
    fn new(p: nn::Path, cin: i64, planes: i64, stride: i64, down: Downsample) -> Self {
        let shortcut = if stride != 1 || cin != planes {
            match down {
                Downsample::Conv => {
                    let d = &p / "downsample";
                    Shortcut::Conv(Box::new((
                        conv(&d / "0", cin, planes, 1, stride),
                        bn(&d / "1", planes),
                    )))
                }
                Downsample::PadA => {
                    // The reference pads planes/4 on each side; that fits exactly when the width
                    // doubles, as it does in every CIFAR ResNet.
                    assert_eq!(
                        cin + 2 * (planes / 4),
                        planes,
                        "option A needs planes = 2 * cin"
                    );
                    Shortcut::PadA { pad: planes / 4 }
                }
            }
        } else {
            Shortcut::Identity
        };
        BasicBlock {
            conv1: conv(&p / "conv1", cin, planes, 3, stride),
            bn1: bn(&p / "bn1", planes),
            conv2: conv(&p / "conv2", planes, planes, 3, 1),
            bn2: bn(&p / "bn2", planes),
            shortcut,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        let identity = match &self.shortcut {
            Shortcut::Identity => x.shallow_clone(),
            Shortcut::Conv(cb) => x.apply(&cb.0).apply_t(&cb.1, train),
            Shortcut::PadA { pad } => x
                .slice(2, 0, None, 2)
                .slice(3, 0, None, 2)
                .constant_pad_nd([0, 0, 0, 0, *pad, *pad]),
        };
        (out + identity).relu()
    }
}

/// Stem conv (3x3, stride 1) - BN - ReLU - stages of BasicBlocks - global average pool - fc.
#[derive(Debug)]
pub(super) struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    fc: nn::Linear,
}

impl ResNet {
    fn new(
        root: &nn::Path,
        in_channels: i64,
        classes: i64,
        stages: &[Stage],
        down: Downsample,
    ) -> Self {
        let stem = stages[0].0;
        let conv1 = conv(root / "conv1", in_channels, stem, 3, 1);
        let bn1 = bn(root / "bn1", stem);
        let mut blocks = Vec::new();
        let mut cin = stem;
        for (s, &(planes, stride, n)) in stages.iter().enumerate() {
            let layer = root / format!("layer{}", s + 1);
            for b in 0..n {
                let stride = if b == 0 { stride } else { 1 };
                blocks.push(BasicBlock::new(&layer / b, cin, planes, stride, down));
                cin = planes;
            }
        }
        let fc = nn::linear(root / "fc", cin, classes, Default::default());
        ResNet {
            conv1,
            bn1,
            blocks,
            fc,
        }
    }

    /// ResNet-18, CIFAR form: stages 64/128/256/512 of 2 blocks, torchvision downsample.
    pub(super) fn resnet18(root: &nn::Path, in_channels: i64, classes: i64) -> Self {
        Self::new(
            root,
            in_channels,
            classes,
            &RESNET18_STAGES,
            Downsample::Conv,
        )
    }

    /// He et al.'s CIFAR ResNet-(6n+2): stages 16/32/64 of `n` blocks, option A shortcuts.
    pub(super) fn cifar(root: &nn::Path, in_channels: i64, classes: i64, n: usize) -> Self {
        Self::new(
            root,
            in_channels,
            classes,
            &cifar_stages(n),
            Downsample::PadA,
        )
    }

    /// Forward FLOPs of one image ([`super::FlopsFn`]) through [`ResNet::new`]'s layers: the
    /// stem conv, each block's two 3x3 convs and its 1x1 downsample conv if it has one (option A
    /// shortcuts only slice and pad), and `fc`.
    fn flops(spec: &ModelSpec, stages: &[Stage], down: Downsample) -> f64 {
        let mut x = Activation::input(spec);
        let mut flops = x.conv(stages[0].0, 3, 1, padding(3));
        for &(planes, stride, n) in stages {
            for b in 0..n {
                let stride = if b == 0 { stride } else { 1 };
                let mut skip = x;
                let changes_shape = stride != 1 || x.c != planes;
                flops += x.conv(planes, 3, stride, padding(3));
                flops += x.conv(planes, 3, 1, padding(3));
                if changes_shape && matches!(down, Downsample::Conv) {
                    flops += skip.conv(planes, 1, stride, padding(1));
                    debug_assert_eq!(skip, x, "the downsample conv must match the block");
                }
            }
        }
        x.adaptive_pool(1);
        flops + x.linear(spec.classes as i64)
    }

    /// [`ResNet::resnet18`]'s forward FLOPs per image.
    pub(super) fn resnet18_flops(spec: &ModelSpec) -> f64 {
        Self::flops(spec, &RESNET18_STAGES, Downsample::Conv)
    }

    /// [`ResNet::cifar`]'s forward FLOPs per image.
    pub(super) fn cifar_flops(spec: &ModelSpec, n: usize) -> f64 {
        Self::flops(spec, &cifar_stages(n), Downsample::PadA)
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        for b in &self.blocks {
            h = b.forward_t(&h, train);
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}
