//! Architectures as a registry: each one is an [`ArchDef`] submitted with [`register_arch!`]
//! (through `inventory`, as methods are), the built-ins included. [`Arch`] is a model's
//! architecture as a name; configs, `--arch` and checkpoint metadata accept any registered one.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};

use super::resnet::ResNet;
use super::small_cnn::PlainCnn;
use super::vgg::Vgg;
use super::{Init, LayerKind, ModelError, ModelSpec, fans};

/// Which inputs `[C, H, W]` an architecture accepts (on top of core's rule: at least one channel,
/// with one mean and one std per channel).
#[derive(Clone, Copy)]
pub enum Inputs {
    /// Any channel count, and images of at least `n` x `n` pixels (its total downsampling).
    MinSide(i64),
    /// A rule of its own: `Ok`, or what it expects (e.g. `"32x32 RGB images"`).
    Rule(fn([i64; 3]) -> Result<(), String>),
}

impl Inputs {
    /// `Ok`, or what the architecture expects.
    pub fn check(&self, input: [i64; 3]) -> Result<(), String> {
        match *self {
            Inputs::MinSide(min) => {
                let [_, h, w] = input;
                if h >= min && w >= min {
                    Ok(())
                } else {
                    Err(format!("images of at least {min}x{min} pixels"))
                }
            }
            Inputs::Rule(rule) => rule(input),
        }
    }
}

/// Builds an architecture's layers under `root` for `spec` (classes, input channels). The model
/// feeds them normalised inputs: core puts `normalize` (buffers `normalize.mean`/`.std`) first.
pub type BuildFn = fn(root: &nn::Path, spec: &ModelSpec) -> Box<dyn ModuleT>;

/// How a parameter starts: its layer's kind, the layer's weight shape, and whether it is the bias.
pub type InitFn = fn(layer: LayerKind, weight_shape: &[i64], is_bias: bool) -> Init;

/// Floating-point operations of one forward pass of ONE image of `spec.input` (`[C, H, W]`) into
/// `spec.classes` classes, counted as PyTorch's `torch.utils.flop_counter.FlopCounterMode`
/// counts them: only convolutions and matrix products (conv, mm, addmm, bmm), 2 FLOPs per
/// multiply-add; bias adds, BatchNorm, activations, pooling, padding and the input
/// normalisation are not counted. A training step on one image is counted as 3 times this
/// (forward, then backward to the inputs and to the weights, each about one forward), the usual
/// convention (Kaplan et al. 2020, *Scaling Laws for Neural Language Models*, section 2.1).
pub type FlopsFn = fn(&ModelSpec) -> f64;

/// A registered architecture (collected with `inventory`; see [`register_arch!`]).
pub struct ArchDef {
    /// What configs (`model.arch`), `--arch` and checkpoints call it.
    pub name: &'static str,
    /// One line for `unlearn list`.
    pub summary: &'static str,
    /// The crate that registered it (set by [`register_arch!`]).
    pub krate: &'static str,
    pub inputs: Inputs,
    pub build: BuildFn,
    pub init: InitFn,
    /// Name prefix of the final classifier layer (its weight has one row per class).
    pub classifier: &'static str,
    /// Its forward-pass FLOPs per image ([`FlopsFn`]), if known; see [`forward_flops`].
    pub flops: Option<FlopsFn>,
}

impl ArchDef {
    /// An architecture with PyTorch's initialisation ([`pytorch_init`]), any image of at least
    /// 1x1, `fc` as its classifier and no FLOP count; the `const` setters below change those.
    pub const fn new(name: &'static str, summary: &'static str, build: BuildFn) -> ArchDef {
        ArchDef {
            name,
            summary,
            krate: "",
            inputs: Inputs::MinSide(1),
            build,
            init: pytorch_init,
            classifier: "fc",
            flops: None,
        }
    }

    pub const fn min_side(mut self, n: i64) -> ArchDef {
        self.inputs = Inputs::MinSide(n);
        self
    }

    pub const fn accepts(mut self, rule: fn([i64; 3]) -> Result<(), String>) -> ArchDef {
        self.inputs = Inputs::Rule(rule);
        self
    }

    pub const fn with_init(mut self, init: InitFn) -> ArchDef {
        self.init = init;
        self
    }

    pub const fn classifier(mut self, prefix: &'static str) -> ArchDef {
        self.classifier = prefix;
        self
    }

    /// Its forward-pass FLOP count per image ([`FlopsFn`]).
    pub const fn with_flops(mut self, f: FlopsFn) -> ArchDef {
        self.flops = Some(f);
        self
    }

    /// Used by [`register_arch!`].
    pub const fn from_crate(mut self, krate: &'static str) -> ArchDef {
        self.krate = krate;
        self
    }
}

inventory::collect!(ArchDef);

/// The forward-pass FLOPs of one image for `spec` ([`FlopsFn`]): None when its architecture is
/// not registered, has no FLOP count, or does not take `spec.input`.
pub fn forward_flops(spec: &ModelSpec) -> Option<f64> {
    let def = spec.arch.def().ok()?;
    let flops = def.flops?;
    (spec.input[0] >= 1 && def.inputs.check(spec.input).is_ok()).then(|| flops(spec))
}

/// Registers an [`ArchDef`] (a `const` expression) as an architecture:
///
/// ```ignore
/// unlearn_api::register_arch!(
///     ArchDef::new("mlp2", "a two-layer perceptron", build_mlp2).classifier("out")
/// );
/// ```
#[macro_export]
macro_rules! register_arch {
    ($def:expr) => {
        $crate::inventory::submit! {
            $crate::model::ArchDef::from_crate($def, env!("CARGO_PKG_NAME"))
        }
    };
}

/// PyTorch's defaults: BatchNorm weight 1 and bias 0, everything else U(+-1/sqrt(fan_in)).
pub fn pytorch_init(layer: LayerKind, _weight_shape: &[i64], is_bias: bool) -> Init {
    match (layer, is_bias) {
        (LayerKind::BatchNorm, false) => Init::Constant(1.0),
        (LayerKind::BatchNorm, true) => Init::Constant(0.0),
        _ => Init::PytorchUniform,
    }
}

fn he_fan_out(shape: &[i64]) -> Init {
    Init::Normal {
        std: (2.0 / fans(shape).1).sqrt(),
    }
}

fn he_fan_in(shape: &[i64]) -> Init {
    Init::Normal {
        std: (2.0 / fans(shape).0).sqrt(),
    }
}

/// The reference code's `ResNet.py`: convs `kaiming_normal_(mode="fan_out",
/// nonlinearity="relu")`, i.e. N(0, 2 / fan_out); the classifier keeps PyTorch's default.
fn resnet18_init(layer: LayerKind, shape: &[i64], is_bias: bool) -> Init {
    match (layer, is_bias) {
        (LayerKind::Conv, false) => he_fan_out(shape),
        _ => pytorch_init(layer, shape, is_bias),
    }
}

/// The reference code's `ResNets.py`: conv and linear weights `kaiming_normal_` with its
/// defaults (fan_in, gain sqrt 2), i.e. N(0, 2 / fan_in); the linear bias keeps PyTorch's.
fn cifar_resnet_init(layer: LayerKind, shape: &[i64], is_bias: bool) -> Init {
    match (layer, is_bias) {
        (LayerKind::Conv | LayerKind::Linear, false) => he_fan_in(shape),
        _ => pytorch_init(layer, shape, is_bias),
    }
}

/// The reference code's `VGG.py`: convs as ResNet-18's (bias 0); linear weights N(0, 0.01^2),
/// biases 0.
fn vgg_init(layer: LayerKind, shape: &[i64], is_bias: bool) -> Init {
    match (layer, is_bias) {
        (LayerKind::Conv, false) => he_fan_out(shape),
        (LayerKind::Conv | LayerKind::Linear, true) => Init::Constant(0.0),
        (LayerKind::Linear, false) => Init::Normal { std: 0.01 },
        _ => pytorch_init(layer, shape, is_bias),
    }
}

fn channels_classes(spec: &ModelSpec) -> (i64, i64) {
    (spec.input[0], spec.classes as i64)
}

crate::register_arch!(ArchDef::new(
    "small-cnn",
    "a small CNN for 8x8 digits (3 conv layers with BatchNorm, global average pooling); any image size and channel count",
    |root, spec| {
        let (c, k) = channels_classes(spec);
        Box::new(PlainCnn::small(root, c, k))
    },
)
.min_side(2)
.with_flops(PlainCnn::small_flops));

crate::register_arch!(ArchDef::new(
    "conv6",
    "a plain 6-layer CNN (32-32-64-64-128-128, BatchNorm, 288,746 parameters for 10 RGB classes) for CPU-scale CIFAR; images of at least 4x4",
    |root, spec| {
        let (c, k) = channels_classes(spec);
        Box::new(PlainCnn::conv6(root, c, k))
    },
)
.min_side(4)
.with_flops(PlainCnn::conv6_flops));

crate::register_arch!(ArchDef::new(
    "resnet18",
    "ResNet-18, CIFAR form (3x3 stem, no max-pool, torchvision names; 11,173,962 parameters for 10 classes); images of at least 8x8",
    |root, spec| {
        let (c, k) = channels_classes(spec);
        Box::new(ResNet::resnet18(root, c, k))
    },
)
.min_side(8)
.with_init(resnet18_init)
.with_flops(ResNet::resnet18_flops));

crate::register_arch!(ArchDef::new(
    "resnet20",
    "He et al.'s CIFAR ResNet-20 (16/32/64 channels, option A shortcuts; 269,722 parameters for 10 classes); images of at least 4x4",
    |root, spec| {
        let (c, k) = channels_classes(spec);
        Box::new(ResNet::cifar(root, c, k, 3))
    },
)
.min_side(4)
.with_init(cifar_resnet_init)
.with_flops(|spec| ResNet::cifar_flops(spec, 3)));

crate::register_arch!(ArchDef::new(
    "resnet56",
    "He et al.'s CIFAR ResNet-56 (16/32/64 channels, option A shortcuts; 853,018 parameters for 10 classes); images of at least 4x4",
    |root, spec| {
        let (c, k) = channels_classes(spec);
        Box::new(ResNet::cifar(root, c, k, 9))
    },
)
.min_side(4)
.with_init(cifar_resnet_init)
.with_flops(|spec| ResNet::cifar_flops(spec, 9)));

crate::register_arch!(ArchDef::new(
    "vgg16-bn",
    "VGG-16 with BatchNorm, CIFAR form of the reference code (head 2048-256-256-classes; 15,311,818 parameters for 10 classes); images of at least 16x16",
    |root, spec| {
        let (c, k) = channels_classes(spec);
        Box::new(Vgg::vgg16_bn(root, c, k))
    },
)
.min_side(16)
.with_init(vgg_init)
.classifier("classifier.4")
.with_flops(Vgg::vgg16_bn_flops));

/// A model's architecture: the name of a registered [`ArchDef`]. Serialised as that name (the
/// names of configs, `--arch` and checkpoint metadata). The built-ins are constants
/// (`Arch::Resnet18`); another is `"name".parse()`, which checks that it is registered.
///
/// Deserialising accepts any name (a model's spec crosses the plugin boundary as JSON, and the
/// other side may not link the crate that registered it); what needs the definition (building,
/// initialising) reports an unregistered name with the list of known ones. Configs are checked
/// earlier, by their JSON Schema, which lists the registered names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Arch(&'static str);

#[allow(non_upper_case_globals)]
impl Arch {
    /// A small CNN made for 8x8 digits (three 3x3 conv layers with BatchNorm, global average
    /// pooling; 92k conv weights for one channel), fast enough for CPU tests and the demo. It
    /// accepts any image size and channel count.
    pub const SmallCnn: Arch = Arch("small-cnn");
    /// A plain CNN for CPU-scale CIFAR studies: six 3x3 conv layers (32-32-64-64-128-128, the
    /// third and fifth with stride 2) with BatchNorm and ReLU, global average pooling, fc
    /// (288,746 parameters for 10 classes on RGB). Images of at least 4x4.
    pub const Conv6: Arch = Arch("conv6");
    /// ResNet-18, CIFAR form (3x3 stride-1 stem, no max-pool, BasicBlocks 64/128/256/512 x2,
    /// torchvision names; 11,173,962 parameters for 10 classes). Any image of at least 8x8.
    pub const Resnet18: Arch = Arch("resnet18");
    /// He et al.'s CIFAR ResNet-20 (16/32/64 channels, 3 x 3 BasicBlocks, option A shortcuts;
    /// 269,722 parameters for 10 classes). Images of at least 4x4.
    pub const Resnet20: Arch = Arch("resnet20");
    /// He et al.'s CIFAR ResNet-56 (16/32/64 channels, 3 x 9 BasicBlocks, option A shortcuts;
    /// 853,018 parameters for 10 classes). Images of at least 4x4.
    pub const Resnet56: Arch = Arch("resnet56");
    /// VGG-16 with BatchNorm, CIFAR form of the reference code (13 conv layers, 2x2 average pool,
    /// head 2048-256-256-classes; 15,311,818 parameters for 10 classes). Images of at least 16x16.
    pub const Vgg16Bn: Arch = Arch("vgg16-bn");

    /// The architectures core registers.
    pub const BUILTIN: [Arch; 6] = [
        Arch::SmallCnn,
        Arch::Conv6,
        Arch::Resnet18,
        Arch::Resnet20,
        Arch::Resnet56,
        Arch::Vgg16Bn,
    ];

    /// An architecture by name, unchecked (for a plugin's own constant, like the built-ins').
    pub const fn named(name: &'static str) -> Arch {
        Arch(name)
    }

    /// The name used in configs and checkpoints.
    pub fn name(self) -> &'static str {
        self.0
    }

    /// Every registered architecture, sorted by name.
    pub fn registered() -> Vec<&'static ArchDef> {
        let mut all: Vec<&'static ArchDef> = inventory::iter::<ArchDef>.into_iter().collect();
        all.sort_by_key(|d| d.name);
        all
    }

    /// The registered names, sorted.
    pub fn known() -> Vec<&'static str> {
        Arch::registered().iter().map(|d| d.name).collect()
    }

    /// Its definition; an unregistered name, or one registered twice, is an error.
    pub fn def(self) -> Result<&'static ArchDef, ModelError> {
        let mut found = inventory::iter::<ArchDef>
            .into_iter()
            .filter(|d| d.name == self.0);
        match (found.next(), found.next()) {
            (Some(d), None) => Ok(d),
            (Some(a), Some(b)) => Err(ModelError::Arch(format!(
                "architecture `{}` is registered twice: by {} and by {}",
                self.0, a.krate, b.krate
            ))),
            (None, _) => Err(ModelError::Arch(unknown(self.0))),
        }
    }

    /// How the architecture initialises a parameter ([`ArchDef::init`]); PyTorch's defaults for
    /// an unregistered name.
    pub fn init(self, layer: LayerKind, weight_shape: &[i64], is_bias: bool) -> Init {
        let init = self.def().map_or(pytorch_init as InitFn, |d| d.init);
        init(layer, weight_shape, is_bias)
    }

    /// The registered name equal to `name`, else `name` kept for the life of the program (each
    /// distinct unknown name once).
    fn intern(name: &str) -> Arch {
        if let Some(d) = inventory::iter::<ArchDef>
            .into_iter()
            .find(|d| d.name == name)
        {
            return Arch(d.name);
        }
        static OTHERS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
        let mut others = OTHERS.lock().unwrap_or_else(|e| e.into_inner());
        match others.get(name) {
            Some(s) => Arch(s),
            None => {
                let s: &'static str = Box::leak(name.to_string().into_boxed_str());
                others.insert(s);
                Arch(s)
            }
        }
    }
}

/// `unknown architecture `x` (known: a, b, ...)`.
fn unknown(name: &str) -> String {
    format!(
        "unknown architecture `{name}` (known: {})",
        Arch::known().join(", ")
    )
}

impl std::fmt::Debug for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::str::FromStr for Arch {
    type Err = String;

    /// A registered architecture, or an error listing the known ones.
    fn from_str(s: &str) -> Result<Arch, String> {
        let arch = Arch::intern(s);
        arch.def().map(|_| arch).map_err(|e| match e {
            ModelError::Arch(m) => m,
            e => e.to_string(),
        })
    }
}

impl Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Arch::intern(&name))
    }
}

impl schemars::JsonSchema for Arch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Arch".into()
    }

    /// A string, one of the architectures registered when the schema is made.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let known = Arch::known();
        schemars::json_schema!({
            "type": "string",
            "enum": known,
            "description": "An architecture: one of those registered (`unlearn list --kind arch`).",
        })
    }
}
