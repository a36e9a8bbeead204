//! Checkpoints: one safetensors file with a model's state dict under PyTorch's names, optionally
//! its sparsity mask, and metadata that says how to rebuild the model.
//!
//! # Format (version 1)
//!
//! Tensors:
//! - every variable of the model (parameters and buffers, `normalize.mean`/`normalize.std` of
//!   shape `[C]` included), `F32`, under its PyTorch name (`conv1.weight`,
//!   `layer1.0.bn1.running_mean`, `fc.bias`, ...);
//! - `<bn>.num_batches_tracked`, `I64` of shape `[]`, for every BatchNorm, written as 0 so that
//!   PyTorch's strict `load_state_dict` accepts the file; optional on reading and ignored (unlearn
//!   uses a fixed momentum, so PyTorch does not read it either);
//! - with a mask: `mask/<name>`, `BOOL`, one per masked parameter, with the parameter's shape
//!   ([`MASK_PREFIX`]; no PyTorch name contains `/`). A masked weight is exactly 0 in the file.
//!   Reading also accepts `U8` and float masks of 0s and 1s.
//!
//! `__metadata__` (safetensors allows only string values): string fields are stored as they are,
//! every other field as JSON text.
//!
//! | key | value |
//! |---|---|
//! | `format_version` | `1` ([`FORMAT_VERSION`]; newer versions are refused) |
//! | `unlearn_version` | the writer's unlearn version, e.g. `0.1.0` |
//! | `arch` | `small-cnn`, `resnet18`, `resnet20`, `resnet56` or `vgg16-bn` |
//! | `classes` | e.g. `10` |
//! | `input` | `[C, H, W]`, e.g. `[3,32,32]` |
//! | `mean`, `std` | per-channel normalisation, e.g. `[0.4914,0.4822,0.4465]` |
//! | `dataset` | optional: the data set's name, e.g. `cifar10` |
//! | `sparsity` | only with a mask: its share of zeros over the masked weights |
//! | `train_config` | optional: the training configuration, a JSON object |
//! | `content_sha256` | SHA-256 of every tensor and every other metadata entry ([`CONTENT_DIGEST`]) |
//!
//! `content_sha256` makes damage visible: every reader of this module recomputes it and refuses
//! a file whose tensors or metadata changed after writing (a flipped bit on disk, a partial copy
//! over the same length). The digest is taken over, in order: each metadata entry but itself,
//! sorted by key (`key \0 value \0`), then each tensor sorted by name (`name \0 dtype \0 shape
//! as JSON \0`, its bytes). Files without it (PyTorch's, older unlearn's) are read unchecked.
//!
//! From Python: `safetensors.torch.load_file(path)`, drop the `mask/` keys, and
//! `model.load_state_dict(sd)` on the same module tree (`tests/python/unlearn_models.py`);
//! `safe_open(path, "pt").metadata()` gives the table above.
//!
//! [`import_pytorch`] reads a plain PyTorch state dict saved as safetensors instead (no metadata;
//! the caller names the architecture), including the reference code's pruned naming.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::mask::{Mask, MaskError};
use crate::model::{Arch, Model, ModelError, ModelSpec};

/// The version this code writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the mask's tensors, beside the weights: `mask/conv1.weight`.
pub const MASK_PREFIX: &str = "mask/";
const NUM_BATCHES_TRACKED: &str = ".num_batches_tracked";
/// The metadata key holding the file's content digest (see the module docs).
pub const CONTENT_DIGEST: &str = "content_sha256";
const MAX_CLASSES: usize = 100_000;
const MAX_CHANNELS: i64 = 64;
const MAX_SIDE: i64 = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the checkpoint: {0}")]
    Write(#[from] std::io::Error),
    #[error("{path} is not a readable safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error(
        "{path} is damaged: its content no longer matches the digest written with it (content_sha256 {expected:.12}, now {found:.12}); it cannot be trusted (a cache entry is recomputed; otherwise restore or recreate the file)"
    )]
    Corrupt {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{path} has no metadata `{key}`{}", missing_hint(.key))]
    MissingMetadata { path: PathBuf, key: &'static str },
    #[error("metadata `{key}` = {value:?} is invalid: {reason}")]
    BadMetadata {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("checkpoint format version {found} is newer than this unlearn reads ({supported})")]
    Version { found: u32, supported: u32 },
    #[error("the checkpoint holds a {found} model, not {expected}")]
    Arch { expected: Arch, found: Arch },
    #[error("the checkpoint has {field} {found}, the model {expected}")]
    Spec {
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error("the checkpoint lacks {}", list(.0))]
    Missing(Vec<String>),
    #[error("the checkpoint has tensors the model does not: {}", list(.0))]
    Unexpected(Vec<String>),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("tensor `{name}` has dtype {found}, expected {expected}")]
    Dtype {
        name: String,
        expected: String,
        found: String,
    },
    #[error(
        "tensor `{0}` appears twice (once with a `module.` prefix, or as both weight and weight_orig)"
    )]
    Duplicate(String),
    #[error("mask in the checkpoint: {0}")]
    Mask(#[from] MaskError),
    #[error("the mask prunes {count} weights of `{name}` that are not 0")]
    MaskMismatch { name: String, count: i64 },
    #[error("the checkpoint is inconsistent: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

fn missing_hint(key: &str) -> &'static str {
    if key == "arch" {
        ": not an unlearn checkpoint (a plain PyTorch state dict loads with \
         checkpoint::import_pytorch)"
    } else {
        ""
    }
}

/// At most five items, then how many there are.
fn list(items: &[String]) -> String {
    let shown: Vec<String> = items.iter().take(5).map(|s| format!("`{s}`")).collect();
    if items.len() > 5 {
        format!("{} ({} in all)", shown.join(", "), items.len())
    } else {
        shown.join(", ")
    }
}

/// What the caller knows about a model beyond its shape, written into the metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Provenance {
    /// The data set's name, e.g. `cifar10`.
    pub dataset: Option<String>,
    /// The training configuration (a JSON object).
    pub train_config: Option<serde_json::Value>,
}

/// A checkpoint's metadata (the `__metadata__` table of the module docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    pub format_version: u32,
    pub unlearn_version: String,
    pub arch: Arch,
    pub classes: usize,
    pub input: [i64; 3],
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub dataset: Option<String>,
    /// The mask's sparsity; `None` without a mask.
    pub sparsity: Option<f64>,
    pub train_config: Option<serde_json::Value>,
}

impl Metadata {
    /// The spec the checkpoint's model was built with.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            arch: self.arch,
            input: self.input,
            classes: self.classes,
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }

    fn to_header(&self) -> HashMap<String, String> {
        let mut h = HashMap::new();
        h.insert("format_version".into(), self.format_version.to_string());
        h.insert("unlearn_version".into(), self.unlearn_version.clone());
        h.insert("arch".into(), self.arch.name().into());
        h.insert("classes".into(), self.classes.to_string());
        h.insert("input".into(), json(&self.input));
        h.insert("mean".into(), json(&self.mean));
        h.insert("std".into(), json(&self.std));
        if let Some(d) = &self.dataset {
            h.insert("dataset".into(), d.clone());
        }
        if let Some(s) = self.sparsity {
            h.insert("sparsity".into(), json(&s));
        }
        if let Some(t) = &self.train_config {
            h.insert("train_config".into(), json(t));
        }
        h
    }

    fn from_header(
        path: &Path,
        h: Option<&HashMap<String, String>>,
    ) -> Result<Metadata, CheckpointError> {
        let empty = HashMap::new();
        let h = h.unwrap_or(&empty);
        let get = |key: &'static str| {
            h.get(key).ok_or_else(|| CheckpointError::MissingMetadata {
                path: path.to_path_buf(),
                key,
            })
        };
        fn parse<T: serde::de::DeserializeOwned>(
            key: &'static str,
            value: &str,
        ) -> Result<T, CheckpointError> {
            serde_json::from_str(value).map_err(|e| CheckpointError::BadMetadata {
                key,
                value: value.into(),
                reason: e.to_string(),
            })
        }
        // The architecture first: a file without it is not an unlearn checkpoint at all.
        let arch_name = get("arch")?;
        let arch: Arch = arch_name
            .parse()
            .map_err(|reason| CheckpointError::BadMetadata {
                key: "arch",
                value: arch_name.clone(),
                reason,
            })?;
        let format_version: u32 = parse("format_version", get("format_version")?)?;
        if format_version > FORMAT_VERSION {
            return Err(CheckpointError::Version {
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        let meta = Metadata {
            format_version,
            unlearn_version: get("unlearn_version")?.clone(),
            arch,
            classes: parse("classes", get("classes")?)?,
            input: parse("input", get("input")?)?,
            mean: parse("mean", get("mean")?)?,
            std: parse("std", get("std")?)?,
            dataset: h.get("dataset").cloned(),
            sparsity: h
                .get("sparsity")
                .map(|s| parse("sparsity", s))
                .transpose()?,
            train_config: h
                .get("train_config")
                .map(|s| parse("train_config", s))
                .transpose()?,
        };
        // Bounds that keep a corrupt header from asking for absurd allocations.
        let out_of_range = |key: &'static str, value: String| CheckpointError::BadMetadata {
            key,
            value,
            reason: "out of range".into(),
        };
        if meta.classes == 0 || meta.classes > MAX_CLASSES {
            return Err(out_of_range("classes", meta.classes.to_string()));
        }
        let [c, h, w] = meta.input;
        if !(1..=MAX_CHANNELS).contains(&c) || !(1..=MAX_SIDE).contains(&h.max(w)) {
            return Err(out_of_range("input", format!("{:?}", meta.input)));
        }
        if let Some(s) = meta.sparsity
            && !(0.0..=1.0).contains(&s)
        {
            return Err(CheckpointError::BadMetadata {
                key: "sparsity",
                value: s.to_string(),
                reason: "not in [0, 1]".into(),
            });
        }
        Ok(meta)
    }
}

/// A header value as JSON text (infallible for the types used).
fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A tensor's bytes in host memory, for the safetensors writer.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Bytes {
    fn of(t: &Tensor) -> Result<Bytes, CheckpointError> {
        let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
        let (dtype, size) = match t.kind() {
            Kind::Float => (Dtype::F32, 4),
            Kind::Bool => (Dtype::BOOL, 1),
            Kind::Int64 => (Dtype::I64, 8),
            k => {
                return Err(CheckpointError::Inconsistent(format!(
                    "cannot store a {k:?} tensor"
                )));
            }
        };
        let mut data = vec![0u8; t.numel() * size];
        t.f_copy_data_u8(&mut data, t.numel())?;
        Ok(Bytes {
            dtype,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            data,
        })
    }
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn write_file(
    path: &Path,
    tensors: &BTreeMap<String, Bytes>,
    mut header: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    header.remove(CONTENT_DIGEST);
    let digest = content_digest(
        &header,
        tensors
            .iter()
            .map(|(k, b)| (k.as_str(), b.dtype, b.shape.as_slice(), b.data.as_slice())),
    );
    header.insert(CONTENT_DIGEST.into(), digest);
    crate::io::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(tensors.iter(), Some(header), tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(e) => CheckpointError::Write(e),
            e => CheckpointError::Inconsistent(format!("cannot serialise: {e}")),
        })?;
        std::fs::File::open(tmp)?.sync_all()?;
        Ok(())
    })
}

/// Named tensors (f32, bool or i64) and string metadata as one safetensors file, written
/// atomically: the training loop's mid-training state.
pub(crate) fn write_tensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    header: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let bytes = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), Bytes::of(t)?)))
        .collect::<Result<BTreeMap<_, _>, CheckpointError>>()?;
    write_file(path, &bytes, header)
}

/// Named tensors and a file's string metadata, as safetensors holds them.
type TensorsAndMetadata = (BTreeMap<String, Tensor>, HashMap<String, String>);

/// What [`write_tensors`] wrote: the tensors on `device`, and the metadata.
pub(crate) fn read_tensors(
    path: &Path,
    device: Device,
) -> Result<TensorsAndMetadata, CheckpointError> {
    let bytes = read(path)?;
    let st = parse(path, &bytes)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = FileTensor::of(&name, &view)?.tensor.f_to_device(device)?;
        tensors.insert(name, t);
    }
    Ok((tensors, header(&bytes).unwrap_or_default()))
}

/// BatchNorm layers of a model: the prefixes of its `running_mean` buffers.
fn batch_norms(vars: &HashMap<String, Tensor>) -> BTreeSet<String> {
    vars.keys()
        .filter_map(|k| k.strip_suffix(".running_mean"))
        .map(str::to_string)
        .collect()
}

/// Writes `model` (every parameter and buffer), `mask` under [`MASK_PREFIX`] and the metadata,
/// atomically. The mask must belong to the model and hold (masked weights exactly 0), as `load`
/// checks. Returns the metadata written.
pub fn save(
    path: &Path,
    model: &Model,
    mask: Option<&Mask>,
    provenance: &Provenance,
) -> Result<Metadata, CheckpointError> {
    let _g = tch::no_grad_guard();
    let vars = model.var_store().variables();
    let mut tensors = BTreeMap::new();
    for (name, t) in &vars {
        tensors.insert(name.clone(), Bytes::of(&t.detach())?);
    }
    for bn in batch_norms(&vars) {
        tensors.insert(
            format!("{bn}{NUM_BATCHES_TRACKED}"),
            Bytes::of(&Tensor::from(0i64))?,
        );
    }
    if let Some(mask) = mask {
        let own = mask
            .tensors()
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        let checked = Mask::from_tensors(model, own)?;
        check_mask_holds(&checked, &model.parameters())?;
        for (name, m) in mask.tensors() {
            tensors.insert(format!("{MASK_PREFIX}{name}"), Bytes::of(&m.ne(0.0))?);
        }
    }
    let spec = model.spec();
    let meta = Metadata {
        format_version: FORMAT_VERSION,
        unlearn_version: env!("CARGO_PKG_VERSION").into(),
        arch: spec.arch,
        classes: spec.classes,
        input: spec.input,
        mean: spec.mean.clone(),
        std: spec.std.clone(),
        dataset: provenance.dataset.clone(),
        sparsity: mask.map(Mask::sparsity),
        train_config: provenance.train_config.clone(),
    };
    write_file(path, &tensors, meta.to_header())?;
    Ok(meta)
}

/// Builds the model a checkpoint describes and loads it: the file must be readable safetensors
/// with unlearn metadata, hold exactly the architecture's tensors (each with its shape and dtype;
/// `num_batches_tracked` may be present), and its mask, if any, must fit the weights.
pub fn load(
    path: &Path,
    device: Device,
) -> Result<(Model, Option<Mask>, Metadata), CheckpointError> {
    let bytes = read(path)?;
    let st = parse(path, &bytes)?;
    let mut meta = Metadata::from_header(path, header(&bytes).as_ref())?;
    let mut model = Model::build(meta.spec(), device)?;
    let mask = fill(&mut model, &st, &mut meta)?;
    Ok((model, mask, meta))
}

/// Loads a checkpoint into an existing model of the same architecture, classes, input shape and
/// normalisation. Nothing in the model changes unless every check passes.
pub fn load_into(
    path: &Path,
    model: &mut Model,
) -> Result<(Option<Mask>, Metadata), CheckpointError> {
    let bytes = read(path)?;
    let st = parse(path, &bytes)?;
    let mut meta = Metadata::from_header(path, header(&bytes).as_ref())?;
    let spec = model.spec();
    if meta.arch != spec.arch {
        return Err(CheckpointError::Arch {
            expected: spec.arch,
            found: meta.arch,
        });
    }
    let close = |a: &[f64], b: &[f64]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6)
    };
    let mismatch = if meta.classes != spec.classes {
        Some((
            "classes",
            spec.classes.to_string(),
            meta.classes.to_string(),
        ))
    } else if meta.input != spec.input {
        Some((
            "input shape",
            format!("{:?}", spec.input),
            format!("{:?}", meta.input),
        ))
    } else if !close(&meta.mean, &spec.mean) || !close(&meta.std, &spec.std) {
        Some((
            "normalisation (mean, std)",
            format!("{:?}, {:?}", spec.mean, spec.std),
            format!("{:?}, {:?}", meta.mean, meta.std),
        ))
    } else {
        None
    };
    if let Some((field, expected, found)) = mismatch {
        return Err(CheckpointError::Spec {
            field,
            expected,
            found,
        });
    }
    let mask = fill(model, &st, &mut meta)?;
    Ok((mask, meta))
}

/// A checkpoint's metadata alone.
pub fn metadata(path: &Path) -> Result<Metadata, CheckpointError> {
    let bytes = read(path)?;
    parse(path, &bytes)?;
    Metadata::from_header(path, header(&bytes).as_ref())
}

/// Imports a PyTorch state dict saved as safetensors (`safetensors.torch.save_file(
/// model.state_dict(), path)`) into a fresh model of `spec`:
/// - a `module.` prefix (DataParallel) is dropped from every name that has one;
/// - `<name>.weight_orig` + `<name>.weight_mask`, as `torch.nn.utils.prune` leaves them (the
///   reference code's pruned models), become the weight `orig * mask` and that parameter's mask;
///   with any mask present, the returned mask covers every prunable parameter (ones where the
///   file has none). Only convolution weights may be masked;
/// - `num_batches_tracked` buffers are ignored; `mask/` tensors are read as in [`load`];
/// - `normalize.mean`/`normalize.std` (shape `[C]`, or `[1, C, 1, 1]`) replace the spec's mean
///   and std when present (the normalisation belongs to the trained model), else the spec's stay.
///
/// Every other tensor of the architecture must be present with its shape and dtype (`F32`), and
/// nothing else may be.
pub fn import_pytorch(
    path: &Path,
    mut spec: ModelSpec,
    device: Device,
) -> Result<(Model, Option<Mask>), CheckpointError> {
    let bytes = read(path)?;
    let st = parse(path, &bytes)?;
    let _g = tch::no_grad_guard();
    // Names without `module.`, each once.
    let mut named: BTreeMap<String, FileTensor> = BTreeMap::new();
    for (name, view) in st.iter() {
        let plain = name.strip_prefix("module.").unwrap_or(name).to_string();
        let t = FileTensor::of(name, &view)?;
        if named.insert(plain.clone(), t).is_some() {
            return Err(CheckpointError::Duplicate(plain));
        }
    }
    // Pruned naming: weight = orig * mask.
    let mut masks = BTreeMap::new();
    let origs: Vec<String> = named
        .keys()
        .filter_map(|k| k.strip_suffix("_orig").filter(|b| b.ends_with(".weight")))
        .map(str::to_string)
        .collect();
    for weight in origs {
        let orig = named
            .remove(&format!("{weight}_orig"))
            .expect("listed above");
        let mask_name = format!("{weight}_mask");
        let m = named
            .remove(&mask_name)
            .ok_or_else(|| CheckpointError::Missing(vec![mask_name.clone()]))?;
        let m = m.mask(&mask_name)?;
        if m.size() != orig.tensor.size() {
            return Err(CheckpointError::Shape {
                name: mask_name,
                expected: orig.tensor.size(),
                found: m.size(),
            });
        }
        let product = FileTensor {
            dtype: orig.dtype,
            tensor: orig.tensor.f_mul(&m.f_to_kind(orig.tensor.kind())?)?,
        };
        if named.insert(weight.clone(), product).is_some() {
            return Err(CheckpointError::Duplicate(weight));
        }
        masks.insert(weight, m);
    }
    if let Some(stray) = named.keys().find(|k| k.ends_with(".weight_mask")) {
        return Err(CheckpointError::Missing(vec![
            stray.replace("_mask", "_orig"),
        ]));
    }
    // The file's normalisation, if any, replaces the spec's.
    for (key, stat) in [
        ("normalize.mean", &mut spec.mean),
        ("normalize.std", &mut spec.std),
    ] {
        if let Some(t) = named.get_mut(key) {
            let c = spec.input[0];
            if t.tensor.numel() != c as usize {
                return Err(CheckpointError::Shape {
                    name: key.into(),
                    expected: vec![c],
                    found: t.tensor.size(),
                });
            }
            t.tensor = t.tensor.f_reshape([c])?;
            if t.dtype == Dtype::F32 {
                // The shortest decimal that gives each f32 back: 0.4914f32 -> 0.4914.
                let values = Vec::<f32>::try_from(&t.tensor)?;
                *stat = values
                    .iter()
                    .map(|v| v.to_string().parse().unwrap_or(f64::from(*v)))
                    .collect();
            }
        }
    }
    let model = Model::build(spec, device)?;
    let vars = model.var_store().variables();
    if !named.contains_key("normalize.mean") && !named.contains_key("normalize.std") {
        for key in ["normalize.mean", "normalize.std"] {
            named.insert(
                key.into(),
                FileTensor {
                    dtype: Dtype::F32,
                    tensor: vars[key].f_detach_copy()?.f_to_device(Device::Cpu)?,
                },
            );
        }
    }
    for (name, m) in named.iter().filter(|(k, _)| k.starts_with(MASK_PREFIX)) {
        masks.insert(name[MASK_PREFIX.len()..].to_string(), m.mask(name)?);
    }
    named.retain(|k, _| !k.starts_with(MASK_PREFIX));
    let state = check_state(&vars, named)?;
    let mask = if masks.is_empty() {
        None
    } else {
        for (name, p) in model.prunable() {
            masks
                .entry(name)
                .or_insert_with(|| Tensor::ones(p.size(), (Kind::Float, Device::Cpu)));
        }
        let mask = Mask::from_tensors(&model, masks)?;
        check_mask_holds(&mask, &state)?;
        Some(mask)
    };
    copy_state(&vars, &state)?;
    Ok((model, mask))
}

fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    std::fs::read(path).map_err(|source| CheckpointError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a safetensors file and, when it carries a [`CONTENT_DIGEST`], checks it.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>, CheckpointError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut h = header(bytes).unwrap_or_default();
    if let Some(expected) = h.remove(CONTENT_DIGEST) {
        let mut names: Vec<&str> = st.names();
        names.sort();
        let views: Vec<_> = names
            .iter()
            .map(|&n| st.tensor(n).map(|v| (n, v)))
            .collect::<Result<_, _>>()
            .map_err(|e| CheckpointError::NotSafetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let found = content_digest(
            &h,
            views
                .iter()
                .map(|(n, v)| (*n, v.dtype(), v.shape(), v.data())),
        );
        if found != expected {
            return Err(CheckpointError::Corrupt {
                path: path.to_path_buf(),
                expected,
                found,
            });
        }
    }
    Ok(st)
}

/// The content digest of a file's metadata (without the digest itself) and tensors given in
/// name order (see the module docs).
fn content_digest<'a>(
    header: &HashMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut keys: Vec<&String> = header.keys().collect();
    keys.sort();
    for k in keys {
        for part in [k.as_bytes(), b"\0", header[k].as_bytes(), b"\0"] {
            h.update(part);
        }
    }
    for (name, dtype, shape, data) in tensors {
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(format!("{dtype:?}").as_bytes());
        h.update(b"\0");
        h.update(json(shape).as_bytes());
        h.update(b"\0");
        h.update(data);
    }
    crate::io::hex(&h.finalize())
}

/// The `__metadata__` of bytes that `parse` accepted.
fn header(bytes: &[u8]) -> Option<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).ok()?;
    meta.metadata().clone()
}

/// A tensor read from a file, with its dtype there.
struct FileTensor {
    dtype: Dtype,
    tensor: Tensor,
}

impl FileTensor {
    fn of(
        name: &str,
        view: &safetensors::tensor::TensorView<'_>,
    ) -> Result<FileTensor, CheckpointError> {
        let dtype = view.dtype();
        let kind = match dtype {
            Dtype::BOOL => Kind::Bool,
            Dtype::U8 => Kind::Uint8,
            Dtype::I8 => Kind::Int8,
            Dtype::I16 => Kind::Int16,
            Dtype::I32 => Kind::Int,
            Dtype::I64 => Kind::Int64,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            other => {
                return Err(CheckpointError::Dtype {
                    name: name.into(),
                    expected: "F32".into(),
                    found: format!("{other:?}"),
                });
            }
        };
        if dtype == Dtype::BOOL && view.data().iter().any(|&b| b > 1) {
            return Err(MaskError::NotBinary(name.into()).into());
        }
        let size: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &size, kind)?;
        Ok(FileTensor { dtype, tensor })
    }

    /// A mask tensor as 0/1 floats (BOOL, U8 or a float dtype in the file).
    fn mask(&self, name: &str) -> Result<Tensor, CheckpointError> {
        match self.dtype {
            Dtype::BOOL | Dtype::U8 | Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64 => {
                Ok(self.tensor.f_to_kind(Kind::Float)?)
            }
            other => Err(CheckpointError::Dtype {
                name: name.into(),
                expected: "BOOL (or U8, F32)".into(),
                found: format!("{other:?}"),
            }),
        }
    }
}

/// Checks a file's tensors against the model's variables (names, shapes, dtypes; optional
/// `num_batches_tracked`), without changing the model. Returns the variables' new values.
fn check_state(
    vars: &HashMap<String, Tensor>,
    file: BTreeMap<String, FileTensor>,
) -> Result<BTreeMap<String, Tensor>, CheckpointError> {
    let bns = batch_norms(vars);
    let mut state = BTreeMap::new();
    let mut unexpected = Vec::new();
    for (name, t) in file {
        let tracked = name
            .strip_suffix(NUM_BATCHES_TRACKED)
            .is_some_and(|bn| bns.contains(bn));
        if tracked {
            if !matches!(t.dtype, Dtype::I64 | Dtype::I32) {
                return Err(CheckpointError::Dtype {
                    name,
                    expected: "I64".into(),
                    found: format!("{:?}", t.dtype),
                });
            }
            continue;
        }
        let Some(var) = vars.get(&name) else {
            unexpected.push(name);
            continue;
        };
        if t.tensor.size() != var.size() {
            return Err(CheckpointError::Shape {
                name,
                expected: var.size(),
                found: t.tensor.size(),
            });
        }
        if t.dtype != Dtype::F32 {
            return Err(CheckpointError::Dtype {
                name,
                expected: "F32".into(),
                found: format!("{:?}", t.dtype),
            });
        }
        state.insert(name, t.tensor);
    }
    if !unexpected.is_empty() {
        return Err(CheckpointError::Unexpected(unexpected));
    }
    let mut missing: Vec<String> = vars
        .iter()
        .filter(|(k, _)| !state.contains_key(*k))
        .map(|(k, v)| format!("{k} (F32 {:?})", v.size()))
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(CheckpointError::Missing(missing));
    }
    Ok(state)
}

fn copy_state(
    vars: &HashMap<String, Tensor>,
    state: &BTreeMap<String, Tensor>,
) -> Result<(), CheckpointError> {
    let _g = tch::no_grad_guard();
    for (name, value) in state {
        vars[name].shallow_clone().f_copy_(value)?;
    }
    Ok(())
}

/// Every masked weight is exactly 0 in `weights` (a map by parameter name).
fn check_mask_holds(
    mask: &Mask,
    weights: &BTreeMap<String, Tensor>,
) -> Result<(), CheckpointError> {
    let _g = tch::no_grad_guard();
    for (name, m) in mask.tensors() {
        let w = weights[name].detach().f_to_device(m.device())?;
        let count = w
            .f_ne(0.0)?
            .f_logical_and(&m.f_eq(0.0)?)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])?;
        if count != 0 {
            return Err(CheckpointError::MaskMismatch {
                name: name.clone(),
                count,
            });
        }
    }
    Ok(())
}

/// Reads the state (and mask) of an unlearn checkpoint into `model`, after checking all of it.
fn fill(
    model: &mut Model,
    st: &SafeTensors<'_>,
    meta: &mut Metadata,
) -> Result<Option<Mask>, CheckpointError> {
    let _g = tch::no_grad_guard();
    let mut file = BTreeMap::new();
    let mut masks = BTreeMap::new();
    for (name, view) in st.iter() {
        let t = FileTensor::of(name, &view)?;
        match name.strip_prefix(MASK_PREFIX) {
            Some(param) => {
                masks.insert(param.to_string(), t.mask(name)?);
            }
            None => {
                file.insert(name.to_string(), t);
            }
        }
    }
    let vars = model.var_store().variables();
    let state = check_state(&vars, file)?;
    for (key, stat) in [("normalize.mean", &meta.mean), ("normalize.std", &meta.std)] {
        let found = Vec::<f64>::try_from(state[key].f_to_kind(Kind::Double)?)?;
        if found.iter().zip(stat).any(|(a, b)| (a - b).abs() > 1e-6) {
            return Err(CheckpointError::Inconsistent(format!(
                "`{key}` is {found:?}, the metadata says {stat:?}"
            )));
        }
    }
    let mask = if masks.is_empty() {
        if let Some(s) = meta.sparsity {
            return Err(CheckpointError::Inconsistent(format!(
                "the metadata gives sparsity {s} but the file has no mask"
            )));
        }
        None
    } else {
        let mask = Mask::from_tensors(model, masks)?;
        check_mask_holds(&mask, &state)?;
        let sparsity = mask.sparsity();
        if let Some(s) = meta.sparsity
            && (s - sparsity).abs() > 1e-6
        {
            return Err(CheckpointError::Inconsistent(format!(
                "the metadata gives sparsity {s}, the mask has {sparsity}"
            )));
        }
        meta.sparsity = Some(sparsity);
        Some(mask)
    };
    copy_state(&vars, &state)?;
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::magnitude_scores;
    use crate::model::tests::tiny_spec;

    fn masked_model(seed: u64) -> (Model, Mask) {
        let m = Model::new(tiny_spec(3), Device::Cpu, seed).unwrap();
        // Running statistics away from their initial values.
        for _ in 0..3 {
            let _ = m.forward_t(
                &Tensor::rand([4, 1, 8, 8], (Kind::Float, Device::Cpu)),
                true,
            );
        }
        let mask = Mask::from_scores(&magnitude_scores(&m), None, 0.6).unwrap();
        mask.apply(&m);
        (m, mask)
    }

    fn provenance() -> Provenance {
        Provenance {
            dataset: Some("digits".into()),
            train_config: Some(serde_json::json!({"epochs": 30, "lr": 0.05})),
        }
    }

    fn same_values(a: &Model, b: &Model) {
        let (va, vb) = (a.var_store().variables(), b.var_store().variables());
        assert_eq!(va.len(), vb.len());
        for (k, t) in &va {
            assert!(t.equal(&vb[k]), "{k} differs");
        }
    }

    /// Rewrites a safetensors file through `f` (tensors by name, metadata).
    fn edit(
        path: &Path,
        f: impl FnOnce(&mut BTreeMap<String, Bytes>, &mut HashMap<String, String>),
    ) {
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: BTreeMap<String, Bytes> = st
            .iter()
            .map(|(k, v)| {
                let b = Bytes {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                };
                (k.to_string(), b)
            })
            .collect();
        let mut meta = header(&bytes).unwrap_or_default();
        f(&mut tensors, &mut meta);
        write_file(path, &tensors, meta).unwrap();
    }

    fn f64_bytes(t: &Tensor) -> Bytes {
        let t = t.to_kind(Kind::Double).contiguous();
        let mut data = vec![0u8; t.numel() * 8];
        t.copy_data_u8(&mut data, t.numel());
        Bytes {
            dtype: Dtype::F64,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            data,
        }
    }

    /// Any bit flipped after writing, in a weight, in the mask or in the metadata, is refused by
    /// every reader with the file named; the untouched file still loads.
    #[test]
    fn flipped_bits_anywhere_in_a_checkpoint_are_detected() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let (m, mask) = masked_model(2);
        save(&p, &m, Some(&mask), &provenance()).unwrap();
        let clean = std::fs::read(&p).unwrap();
        assert!(load(&p, Device::Cpu).is_ok());
        let header_len = u64::from_le_bytes(clean[..8].try_into().unwrap()) as usize;
        let text = String::from_utf8_lossy(&clean[8..8 + header_len]).to_string();
        // A digit of the stored std, so that the header stays valid JSON with another value.
        let std_at = 8 + text.find("\"std\":\"[0.").unwrap() + 10;
        let positions = [
            8 + header_len + 3, // the first tensor's bytes
            clean.len() - 1,    // the last tensor's last byte
            (8 + header_len + clean.len()) / 2,
            std_at,
        ];
        for at in positions {
            let mut bytes = clean.clone();
            bytes[at] ^= if at == std_at { 0x01 } else { 0x10 };
            std::fs::write(&p, &bytes).unwrap();
            for e in [
                load(&p, Device::Cpu).map(|_| ()).unwrap_err(),
                metadata(&p).map(|_| ()).unwrap_err(),
                read_tensors(&p, Device::Cpu).map(|_| ()).unwrap_err(),
            ] {
                assert!(
                    matches!(e, CheckpointError::Corrupt { .. }),
                    "byte {at}: {e}"
                );
                assert!(e.to_string().contains(&p.display().to_string()), "{e}");
            }
        }
        std::fs::write(&p, &clean).unwrap();
        let (back, _, _) = load(&p, Device::Cpu).unwrap();
        same_values(&m, &back);
    }

    #[test]
    fn round_trip_keeps_weights_buffers_mask_and_metadata() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let (m, mask) = masked_model(1);
        let written = save(&p, &m, Some(&mask), &provenance()).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);

        let (back, back_mask, meta) = load(&p, Device::Cpu).unwrap();
        same_values(&m, &back);
        assert_eq!(back.spec(), m.spec());
        let back_mask = back_mask.unwrap();
        for (k, t) in mask.tensors() {
            assert!(t.equal(back_mask.get(k).unwrap()), "{k}");
        }
        assert_eq!(meta, written);
        assert_eq!(meta.dataset.as_deref(), Some("digits"));
        assert_eq!(meta.train_config.as_ref().unwrap()["epochs"], 30);
        assert!((meta.sparsity.unwrap() - 0.6).abs() < 1e-3);
        assert_eq!(meta.format_version, FORMAT_VERSION);
        assert_eq!(metadata(&p).unwrap(), meta);

        let x = Tensor::rand([2, 1, 8, 8], (Kind::Float, Device::Cpu));
        assert!(m.forward_t(&x, false).equal(&back.forward_t(&x, false)));

        let mut other = Model::new(tiny_spec(3), Device::Cpu, 9).unwrap();
        let (mask2, _) = load_into(&p, &mut other).unwrap();
        same_values(&m, &other);
        assert!(mask2.is_some());

        // The layout the module docs promise.
        let bytes = std::fs::read(&p).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("mask/conv2.weight").unwrap();
        assert_eq!(
            (t.dtype(), t.shape()),
            (Dtype::BOOL, &[64usize, 32, 3, 3][..])
        );
        let t = st.tensor("bn1.num_batches_tracked").unwrap();
        assert_eq!((t.dtype(), t.shape()), (Dtype::I64, &[][..]));
        assert_eq!(st.tensor("normalize.mean").unwrap().shape(), [1]);
        let h = header(&bytes).unwrap();
        assert_eq!(h["arch"], "small-cnn");
        assert_eq!(h["input"], "[1,8,8]");
        assert_eq!(h["classes"], "3");
    }

    #[test]
    fn without_mask_there_is_no_sparsity() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let m = Model::new(tiny_spec(2), Device::Cpu, 0).unwrap();
        let meta = save(&p, &m, None, &Provenance::default()).unwrap();
        assert_eq!(meta.sparsity, None);
        let (_, mask, meta) = load(&p, Device::Cpu).unwrap();
        assert!(mask.is_none() && meta.sparsity.is_none() && meta.dataset.is_none());
    }

    #[test]
    fn save_refuses_a_mask_that_does_not_hold() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let (m, _) = masked_model(2);
        let mut zeros = BTreeMap::new();
        zeros.insert(
            "conv1.weight".to_string(),
            Tensor::zeros([32, 1, 3, 3], (Kind::Float, Device::Cpu)),
        );
        let bad = Mask::from_tensors(&m, zeros).unwrap();
        let e = save(&p, &m, Some(&bad), &Provenance::default()).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::MaskMismatch { name, count } if name == "conv1.weight" && *count > 0),
            "{e}"
        );
        assert!(!p.exists());
    }

    #[test]
    fn unreadable_files_are_typed_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(matches!(e, CheckpointError::Read { .. }), "{e}");

        let (m, mask) = masked_model(3);
        save(&p, &m, Some(&mask), &Provenance::default()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(matches!(e, CheckpointError::NotSafetensors { .. }), "{e}");
        std::fs::write(&p, &bytes[..5]).unwrap();
        assert!(matches!(
            load(&p, Device::Cpu),
            Err(CheckpointError::NotSafetensors { .. })
        ));
        std::fs::write(&p, b"\x10\0\0\0\0\0\0\0{not json at all}").unwrap();
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(
            e.to_string().contains("not a readable safetensors file"),
            "{e}"
        );

        // Plain safetensors without metadata.
        Tensor::write_safetensors(&[("w", Tensor::ones([2], (Kind::Float, Device::Cpu)))], &p)
            .unwrap();
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(
            matches!(e, CheckpointError::MissingMetadata { key: "arch", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("import_pytorch"));
    }

    #[test]
    fn bad_metadata_and_other_architectures_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let m = Model::new(tiny_spec(3), Device::Cpu, 0).unwrap();
        save(&p, &m, None, &Provenance::default()).unwrap();
        edit(&p, |_, h| {
            h.insert("arch".into(), "resnet50".into());
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(
            matches!(e, CheckpointError::BadMetadata { key: "arch", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("vgg16-bn"), "{e}");

        save(&p, &m, None, &Provenance::default()).unwrap();
        edit(&p, |_, h| {
            h.insert("format_version".into(), "2".into());
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(
            matches!(
                e,
                CheckpointError::Version {
                    found: 2,
                    supported: 1
                }
            ),
            "{e}"
        );

        for (key, value) in [("classes", "100000000000"), ("input", "[100000, 8, 8]")] {
            save(&p, &m, None, &Provenance::default()).unwrap();
            edit(&p, |_, h| {
                h.insert(key.into(), value.into());
            });
            let e = load(&p, Device::Cpu).unwrap_err();
            assert!(e.to_string().contains("out of range"), "{e}");
        }
        save(&p, &m, None, &Provenance::default()).unwrap();
        edit(&p, |_, h| {
            h.remove("classes");
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(
            matches!(e, CheckpointError::MissingMetadata { key: "classes", .. }),
            "{e}"
        );
        assert!(!e.to_string().contains("import_pytorch"), "{e}");
        save(&p, &m, None, &Provenance::default()).unwrap();
        edit(&p, |_, h| {
            h.insert("input".into(), "[1, 8]".into());
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(
            matches!(e, CheckpointError::BadMetadata { key: "input", .. }),
            "{e}"
        );

        // The metadata claims another architecture than the tensors hold.
        save(&p, &m, None, &Provenance::default()).unwrap();
        edit(&p, |_, h| {
            h.insert("arch".into(), "resnet20".into());
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(
            matches!(
                e,
                CheckpointError::Unexpected(_) | CheckpointError::Shape { .. }
            ),
            "{e}"
        );

        // A ResNet-20 checkpoint does not go into a small CNN.
        let spec = ModelSpec {
            arch: Arch::Resnet20,
            input: [1, 8, 8],
            classes: 3,
            mean: vec![0.3],
            std: vec![0.4],
        };
        let r = Model::new(spec, Device::Cpu, 0).unwrap();
        save(&p, &r, None, &Provenance::default()).unwrap();
        let mut small = Model::new(tiny_spec(3), Device::Cpu, 0).unwrap();
        let e = load_into(&p, &mut small).unwrap_err();
        assert!(
            matches!(
                e,
                CheckpointError::Arch {
                    expected: Arch::SmallCnn,
                    found: Arch::Resnet20
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "the checkpoint holds a resnet20 model, not small-cnn"
        );

        // Same architecture, other classes.
        save(&p, &m, None, &Provenance::default()).unwrap();
        let mut four = Model::new(tiny_spec(4), Device::Cpu, 0).unwrap();
        let e = load_into(&p, &mut four).unwrap_err();
        assert!(
            matches!(
                e,
                CheckpointError::Spec {
                    field: "classes",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn tensors_are_checked_by_name_shape_and_dtype() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let (m, mask) = masked_model(4);
        let fresh = || {
            save(&p, &m, Some(&mask), &Provenance::default()).unwrap();
        };

        fresh();
        edit(&p, |t, _| {
            t.remove("fc.bias");
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Missing(n) if n == &["fc.bias (F32 [3])"]),
            "{e}"
        );

        fresh();
        edit(&p, |t, _| {
            let b = Bytes::of(&Tensor::zeros([3], (Kind::Float, Device::Cpu))).unwrap();
            t.insert("fc.extra".into(), b);
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the checkpoint has tensors the model does not: `fc.extra`"
        );

        fresh();
        edit(&p, |t, _| {
            let b = Bytes::of(&Tensor::zeros([32, 1, 5, 5], (Kind::Float, Device::Cpu))).unwrap();
            t.insert("conv1.weight".into(), b);
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor `conv1.weight` has shape [32, 1, 5, 5], expected [32, 1, 3, 3]"
        );

        fresh();
        edit(&p, |t, _| {
            t.insert(
                "fc.weight".into(),
                f64_bytes(&Tensor::zeros([3, 128], (Kind::Float, Device::Cpu))),
            );
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor `fc.weight` has dtype F64, expected F32"
        );

        // A mask that prunes weights which are not 0, and one with a foreign name.
        fresh();
        edit(&p, |t, _| {
            let zeros = Tensor::zeros([32, 1, 3, 3], (Kind::Bool, Device::Cpu));
            t.insert("mask/conv1.weight".into(), Bytes::of(&zeros).unwrap());
        });
        let mut target = Model::new(tiny_spec(3), Device::Cpu, 5).unwrap();
        let before = target.snapshot();
        let e = load_into(&p, &mut target).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::MaskMismatch { name, .. } if name == "conv1.weight"),
            "{e}"
        );
        // Nothing changed in the model.
        for (k, t) in target.var_store().variables() {
            assert!(t.equal(&before.0[&k]), "{k} changed");
        }
        fresh();
        // A mask over a 1-D parameter (BatchNorm, biases stay dense) is refused.
        edit(&p, |t, _| {
            let ones = Tensor::ones([32], (Kind::Bool, Device::Cpu));
            t.insert("mask/bn1.weight".into(), Bytes::of(&ones).unwrap());
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(
            matches!(e, CheckpointError::Mask(MaskError::UnknownParameter(_))),
            "{e}"
        );
        fresh();
        edit(&p, |t, _| {
            let b = t.get_mut("mask/conv1.weight").unwrap();
            b.data[0] = 7;
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(
            matches!(e, CheckpointError::Mask(MaskError::NotBinary(_))),
            "{e}"
        );
        fresh();
        edit(&p, |_, h| {
            h.insert("sparsity".into(), "0.1".into());
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(matches!(e, CheckpointError::Inconsistent(_)), "{e}");
        fresh();
        edit(&p, |_, h| {
            h.insert("mean".into(), "[0.9]".into());
        });
        let e = load(&p, Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("normalize.mean"), "{e}");
    }

    /// A PyTorch-style state dict of the tiny CNN as torch.nn.utils.prune leaves it, under
    /// DataParallel's `module.` prefix.
    fn pruned_state_dict(m: &Model, masks: &Mask) -> BTreeMap<String, Bytes> {
        let mut out = BTreeMap::new();
        for (k, t) in m.var_store().variables() {
            let b = Bytes::of(&t.detach()).unwrap();
            match masks.get(&k) {
                Some(mask) => {
                    let stem = k.strip_suffix(".weight").unwrap();
                    out.insert(format!("module.{stem}.weight_orig"), b);
                    out.insert(
                        format!("module.{stem}.weight_mask"),
                        Bytes::of(mask).unwrap(),
                    );
                }
                None => {
                    out.insert(format!("module.{k}"), b);
                }
            }
        }
        for bn in ["bn1", "bn2", "bn3"] {
            let b = Bytes::of(&Tensor::from(7i64)).unwrap();
            out.insert(format!("module.{bn}.num_batches_tracked"), b);
        }
        out
    }

    #[test]
    fn pytorch_pruned_naming_imports_as_weight_times_mask() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sd.safetensors");
        // Dense weights (orig) and a mask over conv2 and conv3 only.
        let m = Model::new(tiny_spec(3), Device::Cpu, 6).unwrap();
        let full = Mask::from_scores(&magnitude_scores(&m), None, 0.5).unwrap();
        let partial: BTreeMap<String, Tensor> = ["conv2.weight", "conv3.weight"]
            .iter()
            .map(|k| (k.to_string(), full.get(k).unwrap().copy()))
            .collect();
        let partial = Mask::from_tensors(&m, partial).unwrap();
        write_file(&p, &pruned_state_dict(&m, &partial), HashMap::new()).unwrap();

        let mut spec = tiny_spec(3);
        spec.mean = vec![0.0];
        let (back, mask) = import_pytorch(&p, spec, Device::Cpu).unwrap();
        // The file's normalisation wins over the spec's.
        assert_eq!(back.spec().mean, vec![0.3]);
        let mask = mask.unwrap();
        assert_eq!(mask.names().count(), 3, "completed over every conv weight");
        assert!(
            mask.get("conv1.weight")
                .unwrap()
                .eq(1.0)
                .all()
                .int64_value(&[])
                == 1
        );
        let params = back.parameters();
        let orig = m.parameters();
        for k in ["conv2.weight", "conv3.weight"] {
            let expected = &orig[k] * partial.get(k).unwrap();
            assert!(params[k].equal(&expected), "{k}");
            assert!(mask.get(k).unwrap().equal(partial.get(k).unwrap()));
        }
        assert!(params["conv1.weight"].equal(&orig["conv1.weight"]));
        assert_eq!(mask.violations(&back), 0);

        // A mask without its weight_orig, and a pruned BatchNorm weight, are refused.
        let mut sd = pruned_state_dict(&m, &partial);
        sd.remove("module.conv2.weight_orig");
        write_file(&p, &sd, HashMap::new()).unwrap();
        let e = import_pytorch(&p, tiny_spec(3), Device::Cpu).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Missing(n) if n == &["conv2.weight_orig"]),
            "{e}"
        );
        let mut sd = pruned_state_dict(&m, &partial);
        let w = sd.remove("module.bn1.weight").unwrap();
        sd.insert("module.bn1.weight_orig".into(), w);
        let ones = Tensor::ones([32], (Kind::Float, Device::Cpu));
        sd.insert("module.bn1.weight_mask".into(), Bytes::of(&ones).unwrap());
        write_file(&p, &sd, HashMap::new()).unwrap();
        let e = import_pytorch(&p, tiny_spec(3), Device::Cpu).unwrap_err();
        assert!(
            matches!(e, CheckpointError::Mask(MaskError::UnknownParameter(_))),
            "{e}"
        );

        // An unpruned state dict imports without a mask; without normalisation buffers the
        // spec's are kept.
        let mut sd = BTreeMap::new();
        for (k, t) in m.var_store().variables() {
            if !k.starts_with("normalize.") {
                sd.insert(k, Bytes::of(&t.detach()).unwrap());
            }
        }
        write_file(&p, &sd, HashMap::new()).unwrap();
        let mut spec = tiny_spec(3);
        spec.std = vec![0.7];
        let (back, mask) = import_pytorch(&p, spec.clone(), Device::Cpu).unwrap();
        assert!(mask.is_none());
        assert_eq!(back.spec(), &spec);
        let e = import_pytorch(&p, tiny_spec(5), Device::Cpu).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Shape { name, .. } if name == "fc.bias"),
            "{e}"
        );
    }
}
