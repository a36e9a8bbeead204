//! Models: an architecture built into a `VarStore`, with PyTorch's parameter names, and per-data-set
//! input normalisation as its first layer (so checkpoints take [0, 1] inputs).
//!
//! One file per family: `small_cnn.rs`, `resnet.rs` (ResNet-18, ResNet-20/56), `vgg.rs`
//! (VGG-16-BN). Every architecture starts with `normalize` (buffers `normalize.mean` and
//! `normalize.std`, shape `[C]` as the reference code's `NormalizeByChannelMeanStd`), so a
//! checkpoint's state dict loads into the reference's PyTorch modules and back.

use std::collections::BTreeMap;

mod arch;
mod flops;
mod prunable;
mod resnet;
mod small_cnn;
mod vgg;

pub use arch::{Arch, ArchDef, BuildFn, FlopsFn, InitFn, Inputs, forward_flops, pytorch_init};
pub use prunable::Prunable;

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::exec::{Execution, Precision};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("architecture {arch} expects {expected} input, the data set has {found}")]
    Input {
        arch: Arch,
        expected: String,
        found: String,
    },
    /// An unknown architecture (the message lists the known ones), or one registered twice.
    #[error("{0}")]
    Arch(String),
    #[error("model state: {0}")]
    State(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Everything needed to build a fresh model of the same shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelSpec {
    pub arch: Arch,
    /// `[C, H, W]` of the inputs.
    pub input: [i64; 3],
    pub classes: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl ModelSpec {
    /// Whether the architecture is known and takes these inputs: what building the model checks
    /// first, without building it (for validation).
    pub fn check(&self) -> Result<(), ModelError> {
        check_input(self, Some(self.arch.def()?))
    }
}

/// A set of named tensors copied out of a model (a rewind point, an original to compare with).
#[derive(Debug)]
pub struct Snapshot(pub BTreeMap<String, Tensor>);

impl Snapshot {
    /// Writes the tensors as safetensors, atomically.
    pub fn save(&self, path: &std::path::Path) -> Result<(), ModelError> {
        let cpu: Vec<(String, Tensor)> = self
            .0
            .iter()
            .map(|(k, t)| (k.clone(), t.to_device(Device::Cpu).contiguous()))
            .collect();
        crate::io::write_atomic_with(path, |tmp| {
            Tensor::write_safetensors(&cpu, tmp).map_err(ModelError::from)
        })
    }

    pub fn load(path: &std::path::Path, device: Device) -> Result<Snapshot, ModelError> {
        let tensors = Tensor::read_safetensors(path)?;
        Ok(Snapshot(
            tensors
                .into_iter()
                .map(|(k, t)| (k, t.to_device(device)))
                .collect(),
        ))
    }
}

pub struct Model {
    spec: ModelSpec,
    vs: nn::VarStore,
    net: Box<dyn ModuleT>,
    exec: Execution,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("spec", &self.spec)
            .field("device", &self.vs.device())
            .finish()
    }
}

impl Model {
    /// A freshly initialised model; `seed` fixes the initial weights.
    pub fn new(spec: ModelSpec, device: Device, seed: u64) -> Result<Model, ModelError> {
        let m = Model::build(spec, device)?;
        init_parameters(&m.vs, m.spec.arch, seed)?;
        Ok(m)
    }

    /// The architecture with tch's initial values (for callers that overwrite every variable).
    pub fn build(spec: ModelSpec, device: Device) -> Result<Model, ModelError> {
        let def = spec.arch.def()?;
        check_input(&spec, Some(def))?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let norm = Normalize::new(&root / "normalize", &spec.mean, &spec.std);
        let body = (def.build)(&root, &spec);
        let net = Box::new(Normalized { norm, body });
        let mut m = Model {
            spec,
            vs,
            net,
            exec: Execution::default(),
        };
        m.set_execution(crate::exec::default())?;
        Ok(m)
    }

    /// A model made of existing tensors and a forward function: how a model crosses the plugin
    /// boundary. `variables` (parameters, which require grad, and buffers) are kept as they are,
    /// not copied, so training this model trains their owner's; `net` computes the logits.
    pub fn from_parts(
        spec: ModelSpec,
        variables: Vec<(String, Tensor)>,
        net: Box<dyn ModuleT>,
    ) -> Result<Model, ModelError> {
        // The owner built the model; its architecture may be registered on its side only.
        check_input(&spec, spec.arch.def().ok())?;
        let device = variables
            .first()
            .map(|(_, t)| t.device())
            .ok_or_else(|| ModelError::State("a model needs at least one variable".into()))?;
        let vs = nn::VarStore::new(device);
        for (name, t) in variables {
            let mut parts: Vec<&str> = name.split('.').collect();
            let leaf = parts.pop().unwrap_or_default();
            if leaf.is_empty() || parts.iter().any(|p| p.is_empty()) || t.device() != device {
                return Err(ModelError::State(format!(
                    "variable `{name}`: an invalid name or another device than {device:?}"
                )));
            }
            let path = parts.iter().fold(vs.root(), |p, part| p.sub(*part));
            if path.get(leaf).is_some() {
                return Err(ModelError::State(format!("variable `{name}` given twice")));
            }
            let trainable = t.requires_grad();
            let _ = path.add(leaf, t, trainable);
        }
        // The owner's forward applies the owner's execution settings.
        Ok(Model {
            spec,
            vs,
            net,
            exec: Execution::default(),
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Logits (float32) for inputs in [0, 1]; `train` selects BatchNorm's batch statistics (and
    /// updates its running averages). Computed as [`Model::execution`] says.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = if self.exec.channels_last && x.dim() == 4 {
            crate::exec::channels_last(x).expect("a 4-D tensor converts to channels-last")
        } else {
            x.shallow_clone()
        };
        if self.exec.precision == Precision::Bf16 {
            let _autocast = crate::exec::Autocast::enter(self.device(), Kind::BFloat16)
                .expect("set_execution checked autocast on this device");
            self.net.forward_t(&x, train).to_kind(Kind::Float)
        } else {
            self.net.forward_t(&x, train)
        }
    }

    /// How this model computes.
    pub fn execution(&self) -> Execution {
        self.exec
    }

    /// Changes how this model computes: its 4-D weights move to (or from) channels-last in place,
    /// and `Tf32` turns on libtorch's process-wide TF32 switch (which only
    /// [`crate::exec::set_default`] and [`crate::exec::set_tf32`] turn off). Values are unchanged.
    pub fn set_execution(&mut self, e: Execution) -> Result<(), ModelError> {
        if e.precision == Precision::Bf16 {
            // Checked here so that `forward_t` cannot fail on it.
            drop(crate::exec::Autocast::enter(self.device(), Kind::BFloat16)?);
        }
        if e.channels_last != self.exec.channels_last {
            let _g = tch::no_grad_guard();
            for (_, mut t) in self.vs.variables() {
                if t.dim() == 4 {
                    crate::exec::set_memory_format_(&mut t, e.channels_last)?;
                }
            }
        }
        if e.precision == Precision::Tf32 {
            crate::exec::set_tf32(true)?;
        }
        self.exec = e;
        Ok(())
    }

    /// Records `e` without changing any variable: for a model whose variables are laid out as
    /// `e` says already (a model lent across the plugin boundary), so that its copies compute
    /// that way.
    pub(crate) fn assume_execution(&mut self, e: Execution) {
        self.exec = e;
    }

    /// A deep copy (same spec, same device, same values, same execution).
    pub fn try_clone(&self) -> Result<Model, ModelError> {
        let mut m = Model::build(self.spec.clone(), self.device())?;
        m.set_execution(self.exec)?;
        m.vs.copy(&self.vs)?;
        Ok(m)
    }

    /// Trainable parameters by name, sorted.
    pub fn parameters(&self) -> BTreeMap<String, Tensor> {
        self.vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }

    /// The parameters that pruning applies by default: convolution weights (the paper's setting). A pruner
    /// may select others ([`Prunable`]).
    pub fn prunable(&self) -> BTreeMap<String, Tensor> {
        Prunable::Conv.select(self)
    }

    /// The name prefix of the final classifier layer (its weight has one row per class), as its
    /// architecture registered it (`fc` for an architecture not registered in this process).
    pub fn classifier(&self) -> &'static str {
        self.spec.arch.def().map_or("fc", |d| d.classifier)
    }

    pub fn num_parameters(&self) -> i64 {
        self.parameters().values().map(|t| t.numel() as i64).sum()
    }

    /// A deep copy of every variable, buffers included.
    pub fn snapshot(&self) -> Snapshot {
        let _g = tch::no_grad_guard();
        Snapshot(
            self.vs
                .variables()
                .into_iter()
                .map(|(k, t)| (k, t.detach().copy()))
                .collect(),
        )
    }

    /// Restores values from a snapshot of a model with the same spec.
    pub fn load_snapshot(&mut self, s: &Snapshot) -> Result<(), ModelError> {
        let _g = tch::no_grad_guard();
        let vars = self.vs.variables();
        for (name, mut t) in vars {
            let src =
                s.0.get(&name)
                    .ok_or_else(|| ModelError::State(format!("snapshot has no `{name}`")))?;
            // Snapshots written before the normalisation buffers became `[C]` hold `[1, C, 1, 1]`.
            let legacy_norm = name.starts_with("normalize.") && src.numel() == t.numel();
            if src.size() != t.size() && !legacy_norm {
                return Err(ModelError::State(format!(
                    "`{name}` has shape {:?} in the snapshot, {:?} in the model",
                    src.size(),
                    t.size()
                )));
            }
            t.f_copy_(&src.f_reshape(t.size().as_slice())?)?;
        }
        Ok(())
    }

    /// True when every parameter and buffer is finite.
    pub fn all_finite(&self) -> bool {
        self.vs
            .variables()
            .values()
            .all(|t| t.isfinite().all().int64_value(&[]) != 0)
    }

    /// Zero gradients without the optimizer (for one-shot methods that call backward themselves).
    pub fn zero_grad(&self) {
        for t in self.parameters().values() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }
}

/// How one parameter tensor starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// U(-b, b) with b = 1 / sqrt(fan_in of the layer's weight): PyTorch's default for conv and
    /// linear weights and biases.
    PytorchUniform,
    /// N(0, std^2).
    Normal {
        std: f64,
    },
    Constant(f64),
}

/// Fan-in and fan-out of a conv or linear weight (`[out, in, k...]`), as PyTorch computes them.
pub fn fans(weight_shape: &[i64]) -> (f64, f64) {
    let receptive: i64 = weight_shape.iter().skip(2).product();
    let fan_in = weight_shape.get(1).copied().unwrap_or(1) * receptive;
    let fan_out = weight_shape[0] * receptive;
    (fan_in as f64, fan_out as f64)
}

/// The kinds of layer with parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Conv,
    Linear,
    BatchNorm,
}

/// Initialises every parameter as [`Arch::init`] says. The random values are drawn from host
/// generators seeded by `seed` and the parameter's name: the same seed gives the same weights on
/// every device and whatever other threads do with libtorch's global generator.
fn init_parameters(vs: &nn::VarStore, arch: Arch, seed: u64) -> Result<(), ModelError> {
    use rand::RngExt;
    let _g = tch::no_grad_guard();
    let vars = vs.variables();
    for (name, w) in &vars {
        let Some(prefix) = name.strip_suffix(".weight") else {
            continue;
        };
        if !w.requires_grad() {
            continue;
        }
        let layer = if vars.contains_key(&format!("{prefix}.running_mean")) {
            LayerKind::BatchNorm
        } else if w.dim() > 2 {
            LayerKind::Conv
        } else if w.dim() == 2 {
            LayerKind::Linear
        } else {
            continue;
        };
        let shape = w.size();
        let bias = vars.get(&format!("{prefix}.bias"));
        for (t, is_bias) in std::iter::once((w, false)).chain(bias.map(|b| (b, true))) {
            let values = match arch.init(layer, &shape, is_bias) {
                Init::Constant(c) => {
                    let _ = t.shallow_clone().f_fill_(c)?;
                    continue;
                }
                Init::PytorchUniform => {
                    let bound = 1.0 / fans(&shape).0.sqrt();
                    let mut r = crate::rng::rng(seed, &format!("init {name} {:?}", t.size()));
                    let v: Vec<f32> = (0..t.numel())
                        .map(|_| r.random_range(-bound..bound) as f32)
                        .collect();
                    Tensor::from_slice(&v).view(t.size().as_slice())
                }
                Init::Normal { std } => {
                    let purpose = format!("init normal {name} {:?}", t.size());
                    crate::rng::normal_like(std::slice::from_ref(t), seed, &purpose)?
                        .remove(0)
                        .f_mul_scalar(std)?
                }
            };
            t.shallow_clone().f_copy_(&values.to_device(t.device()))?;
        }
    }
    Ok(())
}

/// What every architecture needs: a positive channel count with one mean and one std per channel,
/// and what the architecture itself accepts ([`ArchDef::inputs`]; for the built-ins, images of at
/// least 2 pixels on each side for the small CNN's max-pool, 4 and 8 for the CIFAR ResNets' two
/// and ResNet-18's three stride-2 stages, 16 for VGG's four max-pools; global, or for VGG 2x2
/// adaptive, average pooling makes them accept any larger size, square or not).
fn check_input(spec: &ModelSpec, def: Option<&ArchDef>) -> Result<(), ModelError> {
    let [c, ..] = spec.input;
    let stats = c >= 1 && spec.mean.len() == c as usize && spec.std.len() == c as usize;
    let own = def.map_or(Ok(()), |d| d.inputs.check(spec.input));
    if stats && own.is_ok() {
        Ok(())
    } else {
        let own = own.err().unwrap_or_else(|| "images".into());
        Err(ModelError::Input {
            arch: spec.arch,
            expected: format!("{own} with one mean and std per channel"),
            found: format!(
                "{:?} with {} mean and {} std values",
                spec.input,
                spec.mean.len(),
                spec.std.len()
            ),
        })
    }
}

/// `(x - mean) / std` per channel; the statistics are buffers of shape `[C]` (as the reference
/// code's `NormalizeByChannelMeanStd`), saved with the weights.
#[derive(Debug)]
struct Normalize {
    mean: Tensor,
    std: Tensor,
}

impl Normalize {
    fn new(p: nn::Path, mean: &[f64], std: &[f64]) -> Self {
        let c = mean.len() as i64;
        let mut m = p.zeros_no_train("mean", &[c]);
        let mut s = p.ones_no_train("std", &[c]);
        tch::no_grad(|| {
            m.copy_(&Tensor::from_slice(mean).to_kind(Kind::Float));
            s.copy_(&Tensor::from_slice(std).to_kind(Kind::Float));
        });
        Normalize { mean: m, std: s }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let shape = [1, -1, 1, 1];
        (x - self.mean.view(shape)) / self.std.view(shape)
    }
}

/// `normalize`, then the architecture's layers.
#[derive(Debug)]
struct Normalized {
    norm: Normalize,
    body: Box<dyn ModuleT>,
}

impl ModuleT for Normalized {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.body.forward_t(&self.norm.forward(x), train)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn tiny_spec(classes: usize) -> ModelSpec {
        ModelSpec {
            arch: Arch::SmallCnn,
            input: [1, 8, 8],
            classes,
            mean: vec![0.3],
            std: vec![0.4],
        }
    }

    #[test]
    fn names_shapes_and_counts_follow_pytorch() {
        let m = Model::new(tiny_spec(10), Device::Cpu, 0).unwrap();
        let p = m.parameters();
        let names: Vec<&str> = p.keys().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "bn1.bias",
                "bn1.weight",
                "bn2.bias",
                "bn2.weight",
                "bn3.bias",
                "bn3.weight",
                "conv1.weight",
                "conv2.weight",
                "conv3.weight",
                "fc.bias",
                "fc.weight"
            ]
        );
        // conv: 1*32*9 + 32*64*9 + 64*128*9; bn: 2*(32+64+128); fc: 128*10 + 10
        assert_eq!(m.num_parameters(), 288 + 18432 + 73728 + 448 + 1290);
        assert_eq!(m.prunable().len(), 3);
        let vars = m.var_store().variables();
        assert!(vars.contains_key("bn1.running_mean") && vars.contains_key("normalize.mean"));
        let y = m.forward_t(
            &Tensor::rand([5, 1, 8, 8], (Kind::Float, Device::Cpu)),
            false,
        );
        assert_eq!(y.size(), vec![5, 10]);
    }

    #[test]
    fn init_follows_pytorch_bounds() {
        let m = Model::new(tiny_spec(10), Device::Cpu, 3).unwrap();
        let p = m.parameters();
        // conv2: fan_in 32*3*3 = 288; fc: fan_in 128 (weight and bias).
        for (name, fan_in) in [
            ("conv2.weight", 288.0),
            ("fc.weight", 128.0),
            ("fc.bias", 128.0),
        ] {
            let t = &p[name];
            let max = t.abs().max().double_value(&[]);
            let bound = 1.0 / f64::sqrt(fan_in);
            assert!(
                max <= bound && max > 0.9 * bound,
                "{name}: {max} vs {bound}"
            );
            let mean = t.mean(Kind::Double).double_value(&[]);
            assert!(mean.abs() < 0.2 * bound, "{name}: mean {mean}");
        }
        assert!(p["bn1.weight"].eq(1.0).all().int64_value(&[]) == 1);
        assert!(p["bn1.bias"].eq(0.0).all().int64_value(&[]) == 1);
    }

    /// Every parameter of every architecture against the reference code's model files, with the
    /// expected distribution written out here from the weight's shape (not through `Arch::init`):
    /// N(0, 2 / fan_out) for ResNet-18's and VGG's convs, N(0, 2 / fan_in) for the CIFAR ResNets'
    /// convs and classifier weight, N(0, 0.01^2) for VGG's linear weights, PyTorch's U(+-1/sqrt
    /// (fan_in)) for what those files leave alone, and BatchNorm 1 / 0.
    #[test]
    fn init_follows_each_reference_model_file() {
        enum Want {
            Normal(f64),
            Uniform(f64),
            Value(f64),
        }
        for (arch, input) in [
            (Arch::Resnet18, [3, 32, 32]),
            (Arch::Resnet20, [3, 32, 32]),
            (Arch::Resnet56, [3, 32, 32]),
            (Arch::Vgg16Bn, [3, 32, 32]),
            (Arch::SmallCnn, [1, 8, 8]),
            (Arch::Conv6, [3, 32, 32]),
        ] {
            let m = Model::new(spec(arch, input, 10), Device::Cpu, 11).unwrap();
            let vars = m.var_store().variables();
            let mut checked = 0;
            for (name, t) in m.parameters() {
                let (prefix, is_bias) = match name.strip_suffix(".bias") {
                    Some(p) => (p.to_string(), true),
                    None => (name.strip_suffix(".weight").unwrap().to_string(), false),
                };
                let w = vars[&format!("{prefix}.weight")].size();
                let bn = vars.contains_key(&format!("{prefix}.running_mean"));
                let conv = w.len() == 4;
                let k = if conv { w[2] * w[3] } else { 1 };
                let (fan_in, fan_out) = ((w[1.min(w.len() - 1)] * k) as f64, (w[0] * k) as f64);
                let default = Want::Uniform(1.0 / fan_in.sqrt());
                let want = match (arch, bn, conv, is_bias) {
                    (_, true, _, false) => Want::Value(1.0),
                    (_, true, _, true) => Want::Value(0.0),
                    (Arch::SmallCnn | Arch::Conv6, ..) => default,
                    (Arch::Resnet18 | Arch::Vgg16Bn, _, true, false) => {
                        Want::Normal((2.0 / fan_out).sqrt())
                    }
                    (Arch::Resnet20 | Arch::Resnet56, _, _, false) => {
                        Want::Normal((2.0 / fan_in).sqrt())
                    }
                    (Arch::Vgg16Bn, _, false, false) => Want::Normal(0.01),
                    (Arch::Vgg16Bn, _, _, true) => Want::Value(0.0),
                    _ => default,
                };
                let n = t.numel() as f64;
                let mean = t.mean(Kind::Double).double_value(&[]);
                let std = t.std(false).double_value(&[]);
                let max = t.abs().max().double_value(&[]);
                match want {
                    Want::Value(v) => {
                        assert!(
                            t.eq(v).all().int64_value(&[]) == 1,
                            "{arch} {name}: not {v}"
                        )
                    }
                    Want::Normal(sd) => {
                        // The sample std of n normals is within 6 / sqrt(2n) relative error.
                        let tol = 6.0 / (2.0 * n).sqrt();
                        assert!(
                            (std / sd - 1.0).abs() < tol,
                            "{arch} {name}: std {std} vs {sd}"
                        );
                        assert!(
                            mean.abs() < 6.0 * sd / n.sqrt(),
                            "{arch} {name}: mean {mean}"
                        );
                    }
                    Want::Uniform(b) => {
                        assert!(max <= b, "{arch} {name}: {max} beyond {b}");
                        let sd = b / 3f64.sqrt();
                        if n >= 64.0 {
                            let tol = 8.0 / (2.0 * n).sqrt();
                            assert!((std / sd - 1.0).abs() < tol, "{arch} {name}: std {std}");
                        }
                    }
                }
                checked += 1;
            }
            assert!(checked >= 11, "{arch}: {checked} parameters checked");
        }
    }

    #[test]
    fn same_seed_same_init_and_clone_is_deep() {
        let a = Model::new(tiny_spec(3), Device::Cpu, 7).unwrap();
        let b = Model::new(tiny_spec(3), Device::Cpu, 7).unwrap();
        let c = Model::new(tiny_spec(3), Device::Cpu, 8).unwrap();
        let w = |m: &Model| m.parameters()["conv2.weight"].copy();
        assert!(w(&a).equal(&w(&b)));
        assert!(!w(&a).equal(&w(&c)));
        let d = a.try_clone().unwrap();
        tch::no_grad(|| {
            let _ = a.parameters()["conv2.weight"].shallow_clone().fill_(0.0);
        });
        assert!(w(&d).equal(&w(&b)));
    }

    #[test]
    fn normalisation_is_the_first_layer() {
        let m = Model::new(tiny_spec(2), Device::Cpu, 0).unwrap();
        let vars = m.var_store().variables();
        assert_eq!(vars["normalize.mean"].size(), [1]);
        assert_eq!(vars["normalize.mean"].double_value(&[0]), 0.3f32 as f64);
        assert!(!vars["normalize.std"].requires_grad());
    }

    use crate::testing::spec;

    #[test]
    fn arch_names_are_serdes() {
        for a in Arch::BUILTIN {
            assert_eq!(serde_json::to_value(a).unwrap(), a.name());
            assert_eq!(serde_json::from_value::<Arch>(a.name().into()).unwrap(), a);
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
            assert_eq!(a.to_string(), a.name());
            assert_eq!(format!("{a:?}"), a.name());
            assert_eq!(a.def().unwrap().krate, "unlearn-api");
        }
        assert_eq!(
            "resnet50".parse::<Arch>().unwrap_err(),
            "unknown architecture `resnet50` (known: conv6, resnet18, resnet20, resnet56, \
             small-cnn, vgg16-bn)"
        );
    }

    /// Core registers exactly the built-ins, each once; the config schema lists them.
    #[test]
    fn the_registry_holds_the_builtins() {
        let mut builtin: Vec<&str> = Arch::BUILTIN.iter().map(|a| a.name()).collect();
        builtin.sort();
        assert_eq!(Arch::known(), builtin);
        let schema = crate::method::schema_of::<Arch>();
        assert_eq!(schema["enum"], serde_json::json!(builtin));
    }

    /// An unregistered name deserialises (a spec from a plugin's host), but building it fails
    /// with the list of known architectures.
    #[test]
    fn an_unknown_arch_is_an_error_listing_the_known_ones() {
        let arch: Arch = serde_json::from_value("mystery-net".into()).unwrap();
        assert_eq!(arch.name(), "mystery-net");
        let again: Arch = serde_json::from_value("mystery-net".into()).unwrap();
        assert_eq!(arch, again);
        let e = Model::new(spec(arch, [3, 32, 32], 10), Device::Cpu, 0).unwrap_err();
        assert!(matches!(e, ModelError::Arch(_)), "{e}");
        assert!(
            e.to_string()
                .starts_with("unknown architecture `mystery-net` (known: conv6, resnet18"),
            "{e}"
        );
    }

    #[test]
    fn parameter_counts_names_and_classifier_per_arch() {
        // (arch, parameters for 10 classes, prunable conv tensors, a few names)
        let cases: [(Arch, i64, usize, &[&str]); 5] = [
            (
                // 3x3 convs 3-32-32-64-64-128-128, six BatchNorms, fc 128 -> 10
                Arch::Conv6,
                864 + 9216 + 18_432 + 36_864 + 73_728 + 147_456 + 2 * 448 + 1290,
                6,
                &["conv1.weight", "bn6.bias", "conv6.weight", "fc.weight"],
            ),
            (
                Arch::Resnet18,
                11_173_962,
                20,
                &[
                    "conv1.weight",
                    "layer1.0.bn2.bias",
                    "layer2.0.downsample.0.weight",
                    "layer4.1.conv2.weight",
                    "fc.weight",
                ],
            ),
            (
                Arch::Resnet20,
                269_722,
                19,
                &["conv1.weight", "layer3.2.conv2.weight", "fc.bias"],
            ),
            (
                Arch::Resnet56,
                853_018,
                55,
                &["layer3.8.bn2.weight", "fc.weight"],
            ),
            (
                Arch::Vgg16Bn,
                15_311_818,
                13,
                &[
                    "features.0.weight",
                    "features.1.bias",
                    "features.40.weight",
                    "features.41.weight",
                    "classifier.0.weight",
                    "classifier.4.bias",
                ],
            ),
        ];
        for (arch, count, convs, names) in cases {
            let m = Model::new(spec(arch, [3, 32, 32], 10), Device::Cpu, 0).unwrap();
            assert_eq!(m.num_parameters(), count, "{arch}");
            assert_eq!(m.prunable().len(), convs, "{arch}");
            let p = m.parameters();
            for n in names {
                assert!(p.contains_key(*n), "{arch}: no {n}");
            }
            assert!(!p.keys().any(|k| k.contains("shortcut")), "{arch}");
            let fc = &p[&format!("{}.weight", m.classifier())];
            assert_eq!(fc.size()[0], 10, "{arch}");
            let vars = m.var_store().variables();
            assert_eq!(vars["normalize.std"].size(), [3]);
            let y = m.forward_t(
                &Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)),
                false,
            );
            assert_eq!(y.size(), [2, 10], "{arch}");
        }
    }

    #[test]
    fn larger_and_non_square_inputs_work() {
        for (arch, input) in [
            (Arch::Resnet18, [3, 64, 64]),
            (Arch::Resnet20, [1, 28, 20]),
            (Arch::Vgg16Bn, [3, 64, 48]),
        ] {
            let m = Model::new(spec(arch, input, 200), Device::Cpu, 0).unwrap();
            let x = Tensor::rand(
                [2, input[0], input[1], input[2]],
                (Kind::Float, Device::Cpu),
            );
            assert_eq!(m.forward_t(&x, true).size(), [2, 200], "{arch}");
        }
    }

    #[test]
    fn check_input_enforces_the_minimum_size_and_statistics() {
        for (arch, side) in [
            (Arch::Resnet18, 8),
            (Arch::Resnet56, 4),
            (Arch::Vgg16Bn, 16),
        ] {
            assert!(Model::new(spec(arch, [3, side, side], 10), Device::Cpu, 0).is_ok());
            let e = Model::new(spec(arch, [3, side - 1, side], 10), Device::Cpu, 0).unwrap_err();
            assert!(e.to_string().contains(&format!("{side}x{side}")), "{e}");
        }
        let mut s = spec(Arch::Resnet18, [3, 32, 32], 10);
        s.std.pop();
        assert!(matches!(
            Model::new(s, Device::Cpu, 0),
            Err(ModelError::Input { .. })
        ));
    }

    #[test]
    fn legacy_normalisation_snapshots_still_load() {
        let mut m = Model::new(tiny_spec(2), Device::Cpu, 0).unwrap();
        let mut s = m.snapshot();
        let legacy = Tensor::from_slice(&[0.7f32]).view([1, 1, 1, 1]);
        s.0.insert("normalize.mean".into(), legacy);
        m.load_snapshot(&s).unwrap();
        let mean = m.var_store().variables()["normalize.mean"].double_value(&[0]);
        assert!((mean - 0.7).abs() < 1e-6);
    }
}
