//! Models: an architecture built into a `VarStore`, with PyTorch's parameter names, and per-data-set
//! input normalisation as its first layer (so checkpoints take [0, 1] inputs).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("architecture {arch} expects {expected} input, the data set has {found}")]
    Input {
        arch: Arch,
        expected: String,
        found: String,
    },
    #[error("model state: {0}")]
    State(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// A small CNN made for 8x8 digits (three 3x3 conv layers with BatchNorm, global average
    /// pooling; 92k conv weights for one channel), fast enough for CPU tests and the demo. It
    /// accepts any image size and channel count.
    SmallCnn,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arch::SmallCnn => write!(f, "small-cnn"),
        }
    }
}

/// Everything needed to build a fresh model of the same shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    pub arch: Arch,
    /// `[C, H, W]` of the inputs.
    pub input: [i64; 3],
    pub classes: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
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
        check_input(&spec)?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let norm = Normalize::new(&root / "normalize", &spec.mean, &spec.std);
        let net: Box<dyn ModuleT> = match spec.arch {
            Arch::SmallCnn => Box::new(SmallCnn::new(
                &root,
                norm,
                spec.input[0],
                spec.classes as i64,
            )),
        };
        init_parameters(&vs, seed)?;
        Ok(Model { spec, vs, net })
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

    /// Logits for inputs in [0, 1]; `train` selects BatchNorm's batch statistics (and updates
    /// its running averages).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(x, train)
    }

    /// A deep copy (same spec, same device, same values).
    pub fn try_clone(&self) -> Result<Model, ModelError> {
        let mut m = Model::new(self.spec.clone(), self.device(), 0)?;
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

    /// The parameters that pruning applies to: convolution weights (SPEC §4).
    pub fn prunable(&self) -> BTreeMap<String, Tensor> {
        self.parameters()
            .into_iter()
            .filter(|(_, t)| t.dim() == 4)
            .collect()
    }

    /// The name prefix of the final classifier layer (its weight has one row per class).
    pub fn classifier(&self) -> &'static str {
        "fc"
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
            if src.size() != t.size() {
                return Err(ModelError::State(format!(
                    "`{name}` has shape {:?} in the snapshot, {:?} in the model",
                    src.size(),
                    t.size()
                )));
            }
            t.f_copy_(src)?;
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

/// PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for conv and linear
/// weights and their biases, weight 1 and bias 0 for BatchNorm. The random values are drawn from host generators
/// seeded by `seed` and the parameter name: the same seed gives the same weights on every device
/// and whatever other threads do with libtorch's global generator.
fn init_parameters(vs: &nn::VarStore, seed: u64) -> Result<(), ModelError> {
    use rand::RngExt;
    let _g = tch::no_grad_guard();
    let vars = vs.variables();
    for (name, w) in &vars {
        let Some(prefix) = name.strip_suffix(".weight") else {
            continue;
        };
        if vars.contains_key(&format!("{prefix}.running_mean")) {
            // BatchNorm: PyTorch starts at weight 1 (tch would draw it from U(0, 1)).
            let _ = w.shallow_clone().f_fill_(1.0)?;
            continue;
        }
        if !w.requires_grad() || w.dim() < 2 {
            continue;
        }
        let fan_in = (w.numel() / w.size()[0] as usize) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let bias = vars.get(&format!("{prefix}.bias"));
        for t in std::iter::once(w).chain(bias) {
            let mut r = crate::rng::rng(seed, &format!("init {name} {:?}", t.size()));
            let values: Vec<f32> = (0..t.numel())
                .map(|_| r.random_range(-bound..bound) as f32)
                .collect();
            let src = Tensor::from_slice(&values)
                .view(t.size().as_slice())
                .to_device(t.device());
            t.shallow_clone().f_copy_(&src)?;
        }
    }
    Ok(())
}

fn check_input(spec: &ModelSpec) -> Result<(), ModelError> {
    let ok = match spec.arch {
        // Global average pooling makes it size-agnostic; one 2x2 max-pool needs at least 2x2.
        Arch::SmallCnn => spec.input[1] >= 2 && spec.input[2] >= 2,
    };
    if ok && spec.mean.len() == spec.input[0] as usize && spec.std.len() == spec.input[0] as usize {
        Ok(())
    } else {
        Err(ModelError::Input {
            arch: spec.arch,
            expected: "images of at least 2x2 pixels with per-channel mean/std".into(),
            found: format!("{:?} with {} mean values", spec.input, spec.mean.len()),
        })
    }
}

/// `(x - mean) / std` per channel; the statistics are buffers, saved with the weights.
#[derive(Debug)]
struct Normalize {
    mean: Tensor,
    std: Tensor,
}

impl Normalize {
    fn new(p: nn::Path, mean: &[f64], std: &[f64]) -> Self {
        let c = mean.len() as i64;
        let mut m = p.zeros_no_train("mean", &[1, c, 1, 1]);
        let mut s = p.ones_no_train("std", &[1, c, 1, 1]);
        tch::no_grad(|| {
            m.copy_(
                &Tensor::from_slice(mean)
                    .to_kind(Kind::Float)
                    .view([1, c, 1, 1]),
            );
            s.copy_(
                &Tensor::from_slice(std)
                    .to_kind(Kind::Float)
                    .view([1, c, 1, 1]),
            );
        });
        Normalize { mean: m, std: s }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        (x - &self.mean) / &self.std
    }
}

/// conv(3x3, 32) - BN - ReLU - conv(3x3, 64) - BN - ReLU - maxpool 2 - conv(3x3, 128) - BN - ReLU
/// - global average pool - fc. Convs have no bias (BatchNorm follows), as in ResNets.
#[derive(Debug)]
struct SmallCnn {
    norm: Normalize,
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    fc: nn::Linear,
}

impl SmallCnn {
    fn new(root: &nn::Path, norm: Normalize, in_channels: i64, classes: i64) -> Self {
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
        assert_eq!(
            vars["normalize.mean"].double_value(&[0, 0, 0, 0]),
            0.3f32 as f64
        );
        assert!(!vars["normalize.std"].requires_grad());
    }
}
