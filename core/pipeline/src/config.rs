//! The pipeline config (`unlearn run <config>`), and its validation in two layers: the JSON
//! Schema generated from these types (and each method's own schema) gives path-precise messages;
//! then the rules a schema cannot express. Every problem is collected and reported at once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::data::{
    self, Augment, DataError, Dataset, DatasetName, Split, SplitConfig, SyntheticConfig,
};
use crate::eval::EvalConfig;
use crate::exec::{Execution, Precision};
use crate::forget::ForgetSet;
use crate::method::{Kind, Pruner, Unlearner};
use crate::model::Arch;
use crate::registry::{Method, Registry};
use crate::train::Schedule;

/// One pipeline: data set and split, model, dense training, an optional pruner, forgetting
/// scenarios, the unlearners to compare, and evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Seed of model initialisation and batch order.
    #[serde(default)]
    #[schemars(range(max = u64::MAX))]
    pub seed: u64,
    /// Several seeds: the whole run (dense model, sparse models, rows) once per seed, reported
    /// per seed and as mean +- std over seeds (the paper averages trials). Replaces `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), inner(range(max = u64::MAX)), extend("uniqueItems" = true))]
    pub seeds: Option<Vec<u64>>,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    /// Dense training (the paper's defaults; scale them to the data set).
    #[serde(default)]
    pub train: Schedule,
    /// Pruners: one table (`[prune]`) or several (`[[prune]]`); each sparse model is unlearned
    /// and evaluated beside the dense one. `sparsity = [0.5, 0.9, 0.95]` in an entry sweeps it:
    /// one sparse model per value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<OneOrMany<MethodSpec>>,
    /// Forgetting scenarios; every unlearner runs on each. With an `[attack]`, leave it out (or
    /// give one `kind = "poisoned"`): the forget set is then the poisoned rows.
    #[serde(default)]
    pub forget: Vec<ForgetEntry>,
    /// A poisoning attack (`method` names a registered attack, e.g. `BadNets`; the other keys
    /// are its settings, plus `seed`, which draws the poisoned rows, 0 by default): the training
    /// set is poisoned before dense training, the poisoned rows are the forget set, and every
    /// row reports the attack success rate (the Trojan cleanse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<MethodSpec>,
    /// Unlearning methods to run and compare (include `retrain` to get the gap to retrain).
    #[serde(default)]
    pub unlearn: Vec<MethodSpec>,
    #[serde(default)]
    pub eval: EvalConfig,
    /// Plugin libraries to load before the methods are looked up: folders (every library in
    /// them) or library files, relative to the config file. Adds to `--plugin-dir` and
    /// `UNLEARN_PLUGIN_PATH`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default = "default_dataset")]
    pub dataset: DatasetName,
    /// Folder of a data set read from disk (relative to the config file), e.g. the one
    /// `unlearn data fetch cifar10 --dir data/cifar10` filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Sets with an official test set (all but digits and synthetic) keep it as `test` and
    /// ignore `test_fraction`; `val_fraction` of each class of the official train set becomes
    /// `val` (the paper: CIFAR 45,000 / 5,000).
    #[serde(default)]
    pub split: SplitConfig,
    /// Settings of the `synthetic` data set.
    #[serde(default)]
    pub synthetic: SyntheticConfig,
    /// Train on a seeded subset of the training split (e.g. `{ per_class = 450 }`); val and
    /// test stay whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<data::SubsetConfig>,
    /// Training-time augmentation; default: the data set's (random crop with 4-pixel padding
    /// and horizontal flip for CIFAR and TinyImageNet; none otherwise, SVHN included, as in the
    /// paper's code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
}

fn default_dataset() -> DatasetName {
    DatasetName::Digits
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: default_dataset(),
            dir: None,
            split: SplitConfig::default(),
            synthetic: SyntheticConfig::default(),
            subset: None,
            augment: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default = "default_arch")]
    pub arch: Arch,
    /// Start from this trained model instead of training one (relative to the config file): an
    /// unlearn checkpoint (`<out>/models/*.safetensors` of an earlier run), or PyTorch weights
    /// saved as safetensors with the same parameter names (the reference code's pruned
    /// `weight_orig` + `weight_mask` naming included). With a mask it is unlearned as the sparse
    /// model, otherwise as the dense one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    /// Float arithmetic of every forward pass (training, pruning, unlearning, evaluation): `fp32`,
    /// `tf32` (float32 with TF32 tensor-core products on a GPU) or `bf16` (autocast mixed
    /// precision; weights stay float32). `--precision` overrides it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    /// Images and convolution weights in the channels-last memory format (faster convolutions on
    /// GPUs with tensor cores). `--channels-last` sets it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub channels_last: bool,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl ModelConfig {
    /// How the run's models compute.
    pub fn execution(&self) -> Execution {
        Execution {
            precision: self.precision,
            channels_last: self.channels_last,
        }
    }
}

fn default_arch() -> Arch {
    Arch::SmallCnn
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: default_arch(),
            checkpoint: None,
            precision: Precision::default(),
            channels_last: false,
        }
    }
}

/// A table or a list of tables.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// A method and its settings: `method` names it (see `unlearn list`), the other keys are its
/// config (see `unlearn schema <method>`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MethodSpec {
    pub method: String,
    /// Row name in reports (default: the method name); unique within `unlearn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(flatten)]
    pub params: Map<String, Value>,
}

/// A forgetting scenario: `kind` names a registered one (`unlearn list --kind scenario`), the
/// other keys are its settings (`unlearn schema --scenario <kind>`), e.g. `kind = "class"`,
/// `class = 3`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ForgetEntry {
    pub kind: String,
    /// Name shown in reports (default: the scenario's, e.g. `class-<c>`, `random-<n>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

pub use unlearn_api::method::ConfigIssue;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid {format}: {message}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("config {} has {} error(s):\n{}", .path.display(), .issues.len(), .issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

/// Reads a TOML or JSON config (by extension; otherwise TOML, then JSON).
pub fn read_config_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    parse_config_text(&text, is_json).map_err(|(format, message)| ConfigError::Parse {
        path: path.to_path_buf(),
        format,
        message,
    })
}

pub fn parse_config_text(text: &str, json: bool) -> Result<Value, (&'static str, String)> {
    if json {
        serde_json::from_str(text).map_err(|e| ("JSON", e.to_string()))
    } else {
        let table: toml::Table = toml::from_str(text).map_err(|e| ("TOML", toml_message(&e)))?;
        Ok(toml_to_json(toml::Value::Table(table)))
    }
}

/// The parser's message (with its line and caret), except that an integer beyond 64 bits, which
/// it reports as a type error ("invalid type: integer `...` as i128"), is called what it is.
fn toml_message(e: &toml::de::Error) -> String {
    let full = e.to_string().trim_end().to_string();
    if !e.message().contains("as i128") {
        return full;
    }
    let snippet = full.strip_suffix(e.message().trim_end()).unwrap_or(&full);
    format!(
        "{snippet}integer out of range: TOML integers are 64-bit (at most {}); use a smaller value",
        i64::MAX
    )
}

/// A TOML value as JSON. TOML's `nan` and `inf` have no JSON form: they become the strings
/// `"nan"`, `"inf"` and `"-inf"`, so the schema reports them at their path as what they are
/// rather than as `null`. Datetimes become their TOML text.
fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string().replace("NaN", "nan"))),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// The JSON Schema of [`PipelineConfig`].
pub fn pipeline_schema() -> Value {
    crate::method::schema_of::<PipelineConfig>()
}

/// A method resolved from the config, ready to run.
pub struct Planned<T> {
    pub method: String,
    pub label: String,
    /// The config as given (defaults not filled in).
    pub params: Value,
    /// The config with every default filled in: what the method computes with (cache keys use
    /// it, so writing a default out or leaving it implicit is the same stage).
    pub full_config: Value,
    /// Which build of the method ran: its crate and version, or a hash of its plugin library.
    pub build: String,
    pub instance: T,
}

/// A validated config with everything resolved: data loaded and split, forget sets drawn,
/// methods built. Nothing has been trained yet.
pub struct Plan {
    pub config: PipelineConfig,
    /// The `[attack]`, with the poisoning it made of the training split.
    pub attack: Option<PlannedAttack>,
    /// `model.checkpoint`, resolved against the config's folder.
    pub checkpoint: Option<PathBuf>,
    /// The data set the split indexes (on the CPU).
    pub dataset: Dataset,
    pub split: Split,
    pub forget: Vec<ForgetSet>,
    /// One sparse model each, in config order (sweeps expanded).
    pub pruners: Vec<Planned<Box<dyn Pruner>>>,
    pub unlearners: Vec<Planned<Box<dyn Unlearner>>>,
    /// The seeds to run (`seeds`, or `[seed]`).
    pub seeds: Vec<u64>,
}

/// An `[attack]` resolved: the attack, the seed that drew its rows, and its poisoning of the
/// training split (on the CPU; its rows are the `poisoned` forget set).
pub struct PlannedAttack {
    pub planned: Planned<Box<dyn crate::method::Attack>>,
    pub seed: u64,
    pub poisoning: crate::method::Poisoning,
}

impl Plan {
    /// The weights dense training must keep for the pruners (validation makes them agree).
    pub fn rewind_point(&self) -> Option<crate::method::RewindPoint> {
        self.pruners.iter().find_map(|p| p.instance.rewind_point())
    }
}

/// `0.95` as `95%`, `0.995` as `99.5%`; with `decimals` > 1, to that many decimals of a percent
/// (trailing zeros dropped).
fn percent(share: f64, decimals: usize) -> String {
    let scale = 10f64.powi(decimals as i32);
    format!("{}%", (share * 100.0 * scale).round() / scale)
}

/// The fewest decimals (at least 1, at most 6) of a percent that tell every value of a sweep
/// apart, so that each sparse model of a sweep gets a label of its own; None when even 6 do not.
fn sweep_decimals(values: &[f64]) -> Option<usize> {
    (1..=6).find(|&d| {
        let labels: std::collections::BTreeSet<String> =
            values.iter().map(|&v| percent(v, d)).collect();
        labels.len() == values.len()
    })
}

/// One swept setting of an entry: its name, its values (with their positions in the list) and
/// the decimals its labels need.
type Axis<'v> = (&'v String, Vec<(usize, &'v Value)>, usize);

/// One method entry of a config with its sweeps expanded: one per combination of swept values.
struct SweptEntry {
    /// Where the entry is (`/unlearn/2`, or `/prune` for a single table).
    path: String,
    /// Where this combination's first swept value is (for issues that name one model or row).
    item: String,
    entry: Value,
    /// What tells this combination apart in its label (`95%`, `lr=0.01`), when it is swept.
    suffix: Option<String>,
    /// Each swept setting's path and the path of the value this combination took
    /// (`/unlearn/0/lr` -> `/unlearn/0/lr/1`): the method's own checks name the value.
    values_at: Vec<(String, String)>,
}

impl SweptEntry {
    /// Points `issues` (the method's own, about this combination) at the swept values.
    fn locate(&self, issues: &mut [ConfigIssue]) {
        for issue in issues {
            if let Some((_, at)) = self.values_at.iter().find(|(p, _)| *p == issue.path) {
                issue.path = at.clone();
            }
        }
    }
}

/// Whether the setting `key` of `method` takes one number, so that a list of numbers in its place
/// is a sweep (a setting that takes a list, such as `milestones`, is never swept).
fn takes_a_number(method: &Method, key: &str) -> bool {
    if method.default_config.get(key).is_some_and(Value::is_number) {
        return true;
    }
    let types = |t: &Value| match t {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => vec![],
    };
    match method.schema.pointer(&format!("/properties/{key}/type")) {
        Some(t) => {
            let t = types(t);
            t.iter().any(|x| x == "number" || x == "integer") && !t.iter().any(|x| x == "array")
        }
        None => false,
    }
}

/// The label suffix of one swept value: a sparsity as a percent with `decimals` (enough to tell
/// the sweep's values apart), any other setting as `key=value`.
fn sweep_suffix(key: &str, value: &Value, decimals: usize) -> String {
    match (key, value.as_f64()) {
        ("sparsity", Some(v)) => percent(v, decimals),
        _ => format!("{key}={value}"),
    }
}

/// The entries of the method section `section` (`prune` or `unlearn`; a table or a list of
/// tables), each with its sweeps expanded: a list of numbers in a setting that takes one number
/// (`sparsity = [0.5, 0.9]`, `lr = [0.01, 0.02]`) gives one entry per value, several such lists
/// their combinations, in the order the values are written. Empty sweeps and repeated values are
/// issues.
fn method_entries(
    raw: &Value,
    section: &str,
    registry: &Registry,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<SweptEntry> {
    let list: Vec<(String, &Value)> = match raw.get(section) {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("/{section}/{i}"), v))
            .collect(),
        Some(v @ Value::Object(_)) => vec![(format!("/{section}"), v)],
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (path, entry) in list {
        let method = entry
            .get("method")
            .and_then(Value::as_str)
            .and_then(|m| registry.get(m).ok());
        let swept: Vec<(&String, &Vec<Value>)> = match (method, entry.as_object()) {
            (Some(m), Some(o)) => o
                .iter()
                .filter(|(k, _)| k.as_str() != "method" && k.as_str() != "label")
                .filter_map(|(k, v)| Some((k, v.as_array()?)))
                .filter(|(k, a)| a.iter().all(Value::is_number) && takes_a_number(m, k))
                .collect(),
            _ => Vec::new(),
        };
        // Each swept setting: its values (repeats left out) and the decimals its labels need.
        let mut axes: Vec<Axis<'_>> = Vec::new();
        for (key, values) in swept {
            let what = if key == "sparsity" {
                "sparsity".to_string()
            } else {
                format!("`{key}`")
            };
            if values.is_empty() {
                issues.push(ConfigIssue::new(
                    &format!("{path}/{key}"),
                    Some(Value::Array(vec![])),
                    format!("an empty {what} sweep: give at least one value"),
                ));
                continue;
            }
            let mut kept = Vec::new();
            for (j, v) in values.iter().enumerate() {
                if values[..j].contains(v) {
                    issues.push(ConfigIssue::new(
                        &format!("{path}/{key}/{j}"),
                        Some(v.clone()),
                        format!("this {} is listed twice", what.trim_matches('`')),
                    ));
                } else {
                    kept.push((j, v));
                }
            }
            let decimals = if key == "sparsity" {
                let distinct: Vec<f64> = kept.iter().filter_map(|(_, v)| v.as_f64()).collect();
                sweep_decimals(&distinct).unwrap_or_else(|| {
                    issues.push(ConfigIssue::new(
                        &format!("{path}/{key}"),
                        Some(Value::Array(values.clone())),
                        "two sparsities of this sweep differ by less than 0.000001%, too little to tell their models apart: keep one of them",
                    ));
                    1
                })
            } else {
                1
            };
            axes.push((key, kept, decimals));
        }
        if axes.is_empty() {
            out.push(SweptEntry {
                item: path.clone(),
                path,
                entry: entry.clone(),
                suffix: None,
                values_at: Vec::new(),
            });
            continue;
        }
        // Every combination, the first setting's values varying slowest.
        let mut combos: Vec<Vec<(usize, usize)>> = vec![vec![]];
        for (a, (_, values, _)) in axes.iter().enumerate() {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    (0..values.len()).map(move |v| {
                        let mut c = c.clone();
                        c.push((a, v));
                        c
                    })
                })
                .collect();
        }
        for combo in combos {
            let mut e = entry.clone();
            let mut suffix = Vec::new();
            let mut values_at = Vec::new();
            for &(a, v) in &combo {
                let (key, values, decimals) = &axes[a];
                let (j, value) = values[v];
                e[key.as_str()] = value.clone();
                suffix.push(sweep_suffix(key, value, *decimals));
                values_at.push((format!("{path}/{key}"), format!("{path}/{key}/{j}")));
            }
            let (key, values, _) = &axes[combo[0].0];
            out.push(SweptEntry {
                item: format!("{path}/{key}/{}", values[combo[0].1].0),
                path: path.clone(),
                entry: e,
                suffix: Some(suffix.join(" ")),
                values_at,
            });
        }
    }
    out
}

/// A validator for a schema this program generated (which always compiles).
pub fn schema_validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema).expect("generated schemas compile")
}

fn issues_from_schema(schema: &Value, instance: &Value, prefix: &str) -> Vec<ConfigIssue> {
    let validator = schema_validator(schema);
    let mut out = Vec::new();
    for e in validator.iter_errors(instance) {
        schema_issues(&e, schema, prefix, &mut out);
    }
    out
}

/// The issues of one schema error, said so that a user can act on them. A value that matches
/// none of a choice's alternatives (`anyOf`/`oneOf`) is explained by them rather than by the
/// keyword's name: an optional value (`T` or nothing) by what is wrong with it as a `T`, a choice
/// of constants by the valid ones, other choices by each alternative's first problem. An unknown
/// key is listed with the keys that are allowed there.
fn schema_issues(
    e: &jsonschema::ValidationError<'_>,
    root: &Value,
    prefix: &str,
    out: &mut Vec<ConfigIssue>,
) {
    use jsonschema::error::{TypeKind, ValidationErrorKind as K};
    let path = format!("{prefix}{}", e.instance_path());
    let context = match e.kind() {
        K::AnyOf { context } | K::OneOfNotValid { context } => context,
        K::AdditionalProperties { .. } => {
            let allowed: Vec<String> = schema_at(root, &e.schema_path().to_string())
                .and_then(|additional| {
                    // `.../additionalProperties`: the object schema is its parent.
                    let parent = e.schema_path().to_string();
                    let parent = parent.strip_suffix("/additionalProperties")?;
                    let _ = additional;
                    schema_at(root, parent)?
                        .get("properties")?
                        .as_object()
                        .cloned()
                })
                .map(|p| p.keys().map(|k| format!("`{k}`")).collect())
                .unwrap_or_default();
            let mut m = e.to_string();
            if !allowed.is_empty() {
                m += &format!(" (allowed here: {})", allowed.join(", "));
            }
            out.push(ConfigIssue::new(&path, None, m));
            return;
        }
        _ => {
            out.push(ConfigIssue::new(&path, None, e.to_string()));
            return;
        }
    };
    // The null alternative of an optional value says nothing about what was given.
    let is_null_type = |x: &jsonschema::ValidationError<'_>| {
        matches!(
            x.kind(),
            K::Type {
                kind: TypeKind::Single(jsonschema::JsonType::Null)
            }
        )
    };
    let alternatives: Vec<&Vec<jsonschema::ValidationError<'static>>> = context
        .iter()
        .filter(|errs| !(errs.len() == 1 && is_null_type(&errs[0])))
        .collect();
    let constants: Option<Vec<String>> = alternatives
        .iter()
        .map(|errs| match errs.as_slice() {
            [x] => match x.kind() {
                K::Constant { expected_value } => Some(expected_value.to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    match (alternatives.as_slice(), constants) {
        (_, Some(valid)) if !valid.is_empty() => out.push(ConfigIssue::new(
            &path,
            None,
            format!(
                "{} is not one of the valid values: {}",
                e.instance(),
                valid.join(", ")
            ),
        )),
        ([only], _) => {
            for x in only.iter() {
                schema_issues(x, root, prefix, out);
            }
        }
        (alts, _) if !alts.is_empty() => {
            let each: Vec<String> = alts
                .iter()
                .enumerate()
                .filter_map(|(i, errs)| {
                    let x = errs.first()?;
                    let at = x.instance_path().to_string();
                    let at = at
                        .strip_prefix(&e.instance_path().to_string())
                        .unwrap_or(&at);
                    Some(format!(
                        "({}) {}{}",
                        i + 1,
                        if at.is_empty() {
                            String::new()
                        } else {
                            format!("at {at}: ")
                        },
                        x
                    ))
                })
                .collect();
            out.push(ConfigIssue::new(
                &path,
                None,
                format!(
                    "{} fits none of the {} forms this value can take: {}",
                    e.instance(),
                    alts.len(),
                    each.join("; ")
                ),
            ));
        }
        _ => out.push(ConfigIssue::new(&path, None, e.to_string())),
    }
}

/// The subschema at a JSON pointer into `root`, following `$ref`s the pointer passes through
/// (a segment `$ref` stands for the schema the reference names, as in a keyword location).
fn schema_at<'a>(root: &'a Value, pointer: &str) -> Option<&'a Value> {
    let mut cur = root;
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        cur = if seg == "$ref" {
            let target = cur.get("$ref")?.as_str()?.strip_prefix('#')?;
            root.pointer(target)?
        } else {
            match cur {
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => cur.get(&seg)?,
            }
        };
    }
    Some(cur)
}

/// Validates `raw` (a parsed config) against the schemas and the rules, resolving everything.
/// `base_dir` anchors relative paths (index files).
pub fn plan(raw: &Value, registry: &Registry, base_dir: &Path) -> Result<Plan, Vec<ConfigIssue>> {
    // `[train]` milestones left out scale with its `epochs`, as every method's do.
    let mut raw = raw.clone();
    if let Some(train) = raw.get_mut("train").and_then(Value::as_object_mut) {
        let defaults = serde_json::to_value(Schedule::default()).expect("schedules serialise");
        scale_default_milestones(&defaults, train);
    }
    let raw = &raw;
    let mut issues = issues_from_schema(&pipeline_schema(), raw, "");
    name_the_methods(&mut issues, registry);
    issues.extend(missing_plugins(raw, base_dir));
    let (pruners, pruner_paths) = plan_pruners(raw, registry, &mut issues);
    let unlearners = plan_unlearners(raw, registry, &mut issues);
    issues.extend(metric_issues(raw, &unlearners));
    let loaded = check_sections(raw, base_dir, &pruners, &pruner_paths, &mut issues);
    let mut forget = plan_forget(raw, loaded.as_ref(), base_dir, &mut issues);
    let attack = plan_attack(raw, registry, loaded.as_ref(), &mut forget, &mut issues);
    let listed = raw
        .get("forget")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty());
    if !listed && raw.get("attack").is_none() {
        issues.push(ConfigIssue::new(
            "/forget",
            None,
            "no forgetting scenario: add a [[forget]] entry (or an [attack], whose poisoned rows are then forgotten)",
        ));
    }

    if !issues.is_empty() {
        return Err(issues);
    }
    let config: PipelineConfig = serde_json::from_value(raw.clone())
        .map_err(|e| vec![ConfigIssue::new("", None, e.to_string())])?;
    let (dataset, split) = loaded.expect("no issues, so the data loaded");
    let checkpoint = config.model.checkpoint.as_ref().map(|p| base_dir.join(p));
    if let Some(path) = &checkpoint {
        check_checkpoint(path, &model_spec(config.model.arch, &dataset), &pruners)?;
    }
    let seeds = config.seeds.clone().unwrap_or(vec![config.seed]);
    Ok(Plan {
        config,
        attack,
        checkpoint,
        dataset,
        split,
        forget,
        pruners,
        unlearners,
        seeds,
    })
}

/// Issues of a method entry without `method` name the methods there are.
fn name_the_methods(issues: &mut [ConfigIssue], registry: &Registry) {
    // A method entry without `method`: name the ones there are.
    for issue in issues.iter_mut() {
        if !issue.message.contains("\"method\" is a required property") {
            continue;
        }
        let kind = [
            ("/attack", Kind::Attack),
            ("/prune", Kind::Pruner),
            ("/unlearn", Kind::Unlearner),
        ]
        .into_iter()
        .find(|(p, _)| issue.path.starts_with(p))
        .map(|(_, k)| k);
        if let Some(kind) = kind {
            let names: Vec<&str> = registry.list(Some(kind)).map(|m| m.name.as_str()).collect();
            issue.message += &format!(
                " (`method` names the {}: one of {}; `unlearn list --kind {}`)",
                kind.name(),
                names.join(", "),
                kind.name()
            );
        }
    }
}

/// Listed plugins that are not there: a typo in the config, not a broken library (those are
/// skipped with a warning), whose methods would only show up as unknown ones.
fn missing_plugins(raw: &Value, base_dir: &Path) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    if let Some(list) = raw.get("plugins").and_then(Value::as_array) {
        for (i, p) in list.iter().enumerate() {
            if let Some(p) = p.as_str().filter(|p| !base_dir.join(p).exists()) {
                issues.push(ConfigIssue::new(
                    &format!("/plugins/{i}"),
                    Some(Value::from(p)),
                    format!("no such file or folder: {}", base_dir.join(p).display()),
                ));
            }
        }
    }

    issues
}

/// The pruners (sweeps expanded), known, of the right kind, with valid settings, and where each
/// one's entry is (for the checks that need the data).
fn plan_pruners(
    raw: &Value,
    registry: &Registry,
    issues: &mut Vec<ConfigIssue>,
) -> (Vec<Planned<Box<dyn Pruner>>>, Vec<String>) {
    let mut pruners: Vec<Planned<Box<dyn Pruner>>> = Vec::new();
    // Where each pruner's entry is (for the checks that need the data).
    let mut pruner_paths: Vec<String> = Vec::new();
    for swept in method_entries(raw, "prune", registry, issues) {
        let before = issues.len();
        let planned = plan_method(
            &swept.entry,
            &swept.path,
            Kind::Pruner,
            registry,
            issues,
            |m, p| m.build_pruner(p),
        );
        swept.locate(&mut issues[before..]);
        let Some(mut p) = planned else { continue };
        if let Some(suffix) = &swept.suffix {
            p.label = format!("{} {suffix}", p.label);
        }
        if let Some(other) = pruners
            .iter()
            .find(|q| q.method == p.method && q.full_config == p.full_config)
        {
            issues.push(ConfigIssue::new(
                &swept.item,
                None,
                format!(
                    "the same pruner and settings as `{}`: remove one",
                    other.label
                ),
            ));
        } else if pruners.iter().any(|q| q.label == p.label) {
            issues.push(ConfigIssue::new(
                &format!("{}/label", swept.path),
                Some(Value::from(p.label.clone())),
                "two pruners have this label; give one a distinct `label`",
            ));
        }
        if let (Some(a), Some(b)) = (
            pruners.iter().find_map(|q| q.instance.rewind_point()),
            p.instance.rewind_point(),
        ) && a != b
        {
            issues.push(ConfigIssue::new(
                    &swept.path,
                    None,
                    format!("rewinds to {b:?}, another pruner to {a:?}: one dense training keeps one rewind point, so put this pruner in a config of its own (it can share the stage cache)"),
                ));
        }
        pruners.push(p);
        pruner_paths.push(swept.path);
    }
    (pruners, pruner_paths)
}

/// The unlearners (sweeps expanded), known, of the right kind, with valid settings and labels
/// of their own.
fn plan_unlearners(
    raw: &Value,
    registry: &Registry,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<Planned<Box<dyn Unlearner>>> {
    let mut unlearners: Vec<Planned<Box<dyn Unlearner>>> = Vec::new();
    for swept in method_entries(raw, "unlearn", registry, issues) {
        let before = issues.len();
        let planned = plan_method(
            &swept.entry,
            &swept.path,
            Kind::Unlearner,
            registry,
            issues,
            |m, p| m.build_unlearner(p),
        );
        swept.locate(&mut issues[before..]);
        let Some(mut p) = planned else { continue };
        if let Some(suffix) = &swept.suffix {
            p.label = format!("{} {suffix}", p.label);
        }
        if unlearners.iter().any(|u| u.label == p.label) {
            let at = match swept.suffix {
                Some(_) => swept.item,
                None => format!("{}/label", swept.path),
            };
            issues.push(ConfigIssue::new(
                &at,
                Some(Value::from(p.label.clone())),
                "two unlearners have this label; give one a distinct `label`",
            ));
        }
        unlearners.push(p);
    }

    unlearners
}

/// Registered metrics (`[eval] metrics`): known, and their needs met by the config.
fn metric_issues(raw: &Value, unlearners: &[Planned<Box<dyn Unlearner>>]) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    if let Some(list) = raw.pointer("/eval/metrics").and_then(Value::as_array) {
        let retrains = unlearners.iter().any(|u| u.method == "retrain");
        for (i, v) in list.iter().enumerate() {
            let Some(name) = v.as_str() else { continue };
            let path = format!("/eval/metrics/{i}");
            match crate::metric::find(name) {
                Err(e) => issues.push(ConfigIssue::new(&path, Some(Value::from(name)), e)),
                Ok(m) if m.needs.retrained && !retrains => issues.push(ConfigIssue::new(
                    &path,
                    Some(Value::from(name)),
                    "this metric compares with the retrained model: add an unlearner with `method = \"retrain\"`",
                )),
                Ok(_) => {}
            }
        }
    }

    issues
}

/// The `[train]`, `[data]` and `[model]` sections, each checked on its own so that a mistake in
/// one does not hide those in others; the data set and split when they load.
fn check_sections(
    raw: &Value,
    base_dir: &Path,
    pruners: &[Planned<Box<dyn Pruner>>],
    pruner_paths: &[String],
    issues: &mut Vec<ConfigIssue>,
) -> Option<(Dataset, Split)> {
    let section = |name: &str| raw.get(name).cloned().unwrap_or(Value::Object(Map::new()));
    if let Ok(train) = serde_json::from_value::<Schedule>(section("train")) {
        let given = section("train");
        for (field, m) in train.issues() {
            issues.push(ConfigIssue::of_rule("/train", field, &given, m));
        }
        for p in pruners {
            if let Some(crate::method::RewindPoint::Epoch(r)) = p.instance.rewind_point()
                && r > train.epochs
                && train.epochs > 0
            {
                issues.push(ConfigIssue::new(
                    "/prune/rewind_epoch",
                    Some(r.into()),
                    format!(
                        "{} rewinds to epoch {r}, but dense training has only {} epochs",
                        p.label, train.epochs
                    ),
                ));
                break;
            }
        }
    }
    let loaded = serde_json::from_value::<DataConfig>(section("data"))
        .ok()
        .and_then(|d| match load_split(&d, base_dir) {
            Ok(x) => Some(x),
            Err(e) => {
                let on_disk = d.dataset.format().is_some();
                let path = match e {
                    DataError::Subset(_) => "/data/subset",
                    _ if d.dataset == DatasetName::Synthetic => "/data/synthetic",
                    _ if on_disk => "/data/dir",
                    _ => "/data",
                };
                let value = d.dir.as_ref().map(|p| Value::from(p.display().to_string()));
                issues.push(ConfigIssue::new(path, value, e.to_string()));
                None
            }
        });
    if let Some((dataset, split)) = &loaded {
        // The model must be able to take these images, and every class must be tested.
        if let Ok(model) = serde_json::from_value::<ModelConfig>(section("model"))
            && let Err(e) = model_spec(model.arch, dataset).check()
        {
            issues.push(ConfigIssue::new(
                "/model/arch",
                Some(Value::from(model.arch.name())),
                e.to_string(),
            ));
        }
        issues.extend(class_coverage_issues(dataset, split));
        // `pt` rewinds to the epoch of best validation accuracy: without a validation split
        // there is none, and it would silently rewind to epoch 1.
        if split.val.is_empty() {
            for (p, path) in pruners.iter().zip(pruner_paths) {
                if p.instance.rewind_point() == Some(crate::method::RewindPoint::BestValidation) {
                    issues.push(ConfigIssue::new(
                        &format!("{path}/rewind"),
                        Some(Value::from("pt")),
                        format!("{} rewinds to the epoch of best validation accuracy, but the split has no validation set: give `[data.split] val_fraction` > 0, or another rewind point", p.label),
                    ));
                }
            }
        }
    }
    loaded
}

/// The forgetting scenarios, resolved on the loaded split (the `poisoned` one is the attack's:
/// see `plan_attack`).
fn plan_forget(
    raw: &Value,
    loaded: Option<&(Dataset, Split)>,
    base_dir: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<ForgetSet> {
    let mut forget = Vec::new();
    // The name of the `poisoned` scenario, when the config gives one.
    let mut poisoned_name: Option<String> = None;
    if let (Some((dataset, split)), Some(list)) =
        (loaded, raw.get("forget").and_then(Value::as_array))
    {
        let all_labels = dataset.labels_vec();
        let train_labels: Vec<i64> = split.train.iter().map(|&i| all_labels[i]).collect();
        let ctx = crate::scenario::ScenarioCtx {
            labels: &train_labels,
            classes: dataset.classes,
            base_dir,
        };
        for (i, v) in list.iter().enumerate() {
            let path = format!("/forget/{i}");
            let poisoned_name = &mut poisoned_name;
            // A missing or non-string `kind`: the schema said so.
            let Some((kind, name, settings)) = crate::scenario::split_entry(v) else {
                continue;
            };
            // An attack's poisoned rows (see `plan_attack`); every other scenario is ambiguous
            // beside an attack: which rows would "forget the poisoning" mean?
            let attacked = raw.get("attack").is_some();
            if kind == POISONED || attacked {
                if kind != POISONED {
                    issues.push(ConfigIssue::new(
                        &format!("{path}/kind"),
                        Some(Value::from(kind)),
                        "with an [attack], the forget set is its poisoned rows: remove this scenario (or use kind = \"poisoned\"), and run other scenarios in a config without the attack",
                    ));
                } else if !attacked {
                    issues.push(ConfigIssue::new(
                        &format!("{path}/kind"),
                        Some(Value::from(kind)),
                        "`poisoned` forgets the rows an attack poisoned: add an [attack] section",
                    ));
                } else if !settings.as_object().is_none_or(|o| o.is_empty()) {
                    issues.push(ConfigIssue::new(
                        &path,
                        Some(settings.clone()),
                        "`poisoned` takes no settings besides `name` (the [attack] decides the rows)",
                    ));
                } else if poisoned_name
                    .replace(name.unwrap_or_else(|| POISONED.into()))
                    .is_some()
                {
                    issues.push(ConfigIssue::new(
                        &path,
                        None,
                        "the poisoned rows are already a scenario: give them once",
                    ));
                }
                continue;
            }
            let scenario = match crate::scenario::find(&kind) {
                Ok(s) => s,
                Err(e) => {
                    issues.push(ConfigIssue::new(
                        &format!("{path}/kind"),
                        Some(Value::from(kind)),
                        e,
                    ));
                    continue;
                }
            };
            let schema_issues = issues_from_schema(&(scenario.schema)(), &settings, &path);
            if !schema_issues.is_empty() {
                issues.extend(schema_issues);
                continue;
            }
            match scenario.resolve(&settings, name, &ctx) {
                Ok(set) => {
                    if forget.iter().any(|f: &ForgetSet| f.name == set.name) {
                        issues.push(ConfigIssue::new(
                            &format!("/forget/{i}/name"),
                            Some(Value::from(set.name.clone())),
                            "two scenarios have this name; give one a distinct `name`",
                        ));
                    }
                    forget.push(set);
                }
                Err(errs) => issues.extend(errs.into_iter().map(|e| e.prefixed(&path))),
            }
        }
    }

    forget
}

/// Classes the model gets an output for but no data trains or tests (no samples at all, e.g. an
/// empty class folder), and classes with training samples but none in the test set, whose test
/// accuracy (and so TA and the class-wise scores) would be undefined: one issue each, naming
/// every such class.
fn class_coverage_issues(dataset: &Dataset, split: &Split) -> Vec<ConfigIssue> {
    let labels = dataset.labels_vec();
    let count = |rows: &mut dyn Iterator<Item = usize>| {
        let mut n = vec![0usize; dataset.classes];
        rows.for_each(|i| n[labels[i] as usize] += 1);
        n
    };
    let all = count(&mut (0..labels.len()));
    let train = count(&mut split.train.iter().copied());
    let test = count(&mut split.test.iter().copied());
    let named = |keep: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..dataset.classes)
            .filter(|&c| keep(c))
            .map(|c| match dataset.class_names.get(c) {
                Some(name) if name != &c.to_string() => format!("{c} ({name})"),
                _ => c.to_string(),
            })
            .collect()
    };
    let issue = |classes: Vec<String>, what: &str| {
        (!classes.is_empty()).then(|| {
            ConfigIssue::new(
                "/data",
                None,
                format!("class(es) {} {what}", classes.join(", ")),
            )
        })
    };
    [
        issue(
            named(&|c| all[c] == 0),
            "have no samples at all (an empty class folder?): add images of them or remove them",
        ),
        issue(
            named(&|c| train[c] > 0 && test[c] == 0),
            "have training samples but none in the test set, so their test accuracy is undefined: add test images of them (or raise split.test_fraction)",
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The forgetting scenario of a Trojan cleanse: the rows an `[attack]` poisoned.
pub const POISONED: &str = "poisoned";

/// Builds the `[attack]` and poisons the training split with it, then adds its poisoned rows as
/// the forget set. Every problem is an issue under `/attack` (or `/forget`): an unknown attack,
/// bad settings, a target that is not a class, a poisoning the data cannot take (a trigger
/// larger than the images, more rows than the training set has).
fn plan_attack(
    raw: &Value,
    registry: &Registry,
    loaded: Option<&(Dataset, Split)>,
    forget: &mut Vec<ForgetSet>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<PlannedAttack> {
    let entry = raw.get("attack")?;
    let mut entry = entry.as_object()?.clone(); // not a table: the schema said so
    let seed = match entry.remove("seed") {
        None => 0,
        Some(v) => match v.as_u64() {
            Some(s) => s,
            None => {
                issues.push(ConfigIssue::new(
                    "/attack/seed",
                    Some(v),
                    "the seed that draws the poisoned rows must be a non-negative integer",
                ));
                return None;
            }
        },
    };
    let planned = plan_method(
        &Value::Object(entry),
        "/attack",
        Kind::Attack,
        registry,
        issues,
        |m, p| m.build_attack(p),
    )?;
    let (dataset, split) = loaded?;
    let target = planned.instance.target();
    if target >= dataset.classes {
        issues.push(ConfigIssue::new(
            "/attack/target",
            Some(Value::from(target)),
            format!(
                "the target class must be one of the data set's {} classes (0 to {})",
                dataset.classes,
                dataset.classes - 1
            ),
        ));
        return None;
    }
    let data = crate::method::TaskData {
        train: dataset.subset(&split.train),
        val: dataset.subset(&split.val),
        test: dataset.subset(&split.test),
    };
    let ctx = crate::method::AttackCtx {
        data: &data,
        seed,
        label: planned.label.clone(),
    };
    let poisoning = match planned.instance.poison(&ctx) {
        Ok(p) => p,
        Err(e) => {
            issues.push(ConfigIssue::new(
                "/attack",
                None,
                format!("{} cannot poison this training set: {e}", planned.label),
            ));
            return None;
        }
    };
    let problems = crate::method::poisoning_issues(&data.train, &poisoning);
    if !problems.is_empty() {
        issues.push(ConfigIssue::new(
            "/attack",
            None,
            format!(
                "{} made an invalid poisoning: {}",
                planned.label,
                problems.join("; ")
            ),
        ));
        return None;
    }
    // A backdoor needs a trigger: an attack whose trigger changes no pixel of any poisoned image
    // (Blended with a vanishing alpha) only relabels, and there is no backdoor to cleanse.
    let originals = data.train.images.index_select(
        0,
        &crate::data::index_tensor(&poisoning.rows, tch::Device::Cpu),
    );
    if !poisoning.rows.is_empty() && poisoning.images.equal(&originals) {
        issues.push(ConfigIssue::new(
            "/attack",
            None,
            format!(
                "{}'s trigger changes no pixel of any of the {} poisoned images (pixel values 0 to {}), only their labels, so there is no backdoor to learn or cleanse: make the trigger stronger (for a blend, an alpha of at least 0.5 / {} = {:.3} can change a pixel)",
                planned.label,
                poisoning.rows.len(),
                data.train.max_value,
                data.train.max_value,
                0.5 / data.train.max_value
            ),
        ));
        return None;
    }
    if poisoning.rows.len() == data.train.len() {
        issues.push(ConfigIssue::new(
            "/attack",
            None,
            "every training sample is poisoned: nothing would be left to retain",
        ));
        return None;
    }
    let name = raw
        .get("forget")
        .and_then(Value::as_array)
        .and_then(|l| {
            l.iter()
                .find(|e| e.get("kind").and_then(Value::as_str) == Some(POISONED))
        })
        .and_then(|e| e.get("name"))
        .and_then(Value::as_str)
        .unwrap_or(POISONED)
        .to_string();
    forget.push(ForgetSet::from_forget(
        name,
        POISONED.into(),
        None,
        poisoning.rows.clone(),
        data.train.len(),
    ));
    Some(PlannedAttack {
        planned,
        seed,
        poisoning,
    })
}

/// Milestones left out beside a given `epochs` are the defaults' scaled to it: each default
/// milestone m of the default's E0 epochs becomes floor(m * epochs / E0), keeping those from 1
/// to epochs - 1, once each. So 91 and 136 of 182 epochs (one half and three quarters) become
/// 5 and 7 of 10, and a shorter schedule never inherits milestones past its end. Applies to any
/// settings whose defaults have both `epochs` and `milestones` (`[train]`, the SGD methods,
/// plugins' too).
pub fn scale_default_milestones(defaults: &Value, given: &mut Map<String, Value>) {
    if given.contains_key("milestones") {
        return;
    }
    let (Some(e0), Some(ms)) = (
        defaults.get("epochs").and_then(Value::as_u64),
        defaults.get("milestones").and_then(Value::as_array),
    ) else {
        return;
    };
    let Some(e) = given.get("epochs").and_then(Value::as_u64) else {
        return;
    };
    if e == e0 || e0 == 0 {
        return;
    }
    let mut scaled: Vec<u64> = Vec::new();
    for m in ms {
        let Some(m) = m.as_u64() else { return };
        let x = (m as u128 * e as u128 / e0 as u128) as u64;
        if (1..e).contains(&x) && scaled.last() != Some(&x) {
            scaled.push(x);
        }
    }
    given.insert("milestones".into(), Value::from(scaled));
}

fn plan_method<T>(
    entry: &Value,
    path: &str,
    kind: Kind,
    registry: &Registry,
    issues: &mut Vec<ConfigIssue>,
    build: impl Fn(&Method, &Value) -> Result<T, Vec<ConfigIssue>>,
) -> Option<Planned<T>> {
    let name = entry.get("method")?.as_str()?; // a missing or non-string name: the schema said so
    let method = match registry.get_kind(name, kind) {
        Ok(m) => m,
        Err(e) => {
            issues.push(ConfigIssue::new(
                &format!("{path}/method"),
                Some(Value::from(name)),
                e.to_string(),
            ));
            return None;
        }
    };
    let mut params = entry.as_object().cloned().unwrap_or_default();
    params.remove("method");
    let label = match params.remove("label") {
        Some(Value::String(s)) => s,
        _ => name.to_string(),
    };
    scale_default_milestones(&method.default_config, &mut params);
    let params = Value::Object(params);
    let schema_issues = issues_from_schema(&method.schema, &params, path);
    if !schema_issues.is_empty() {
        issues.extend(schema_issues);
        return None;
    }
    match build(method, &params) {
        Ok(instance) => {
            let mut full_config = method.default_config.clone();
            if let (Some(full), Some(given)) = (full_config.as_object_mut(), params.as_object()) {
                full.extend(given.clone());
            }
            Some(Planned {
                method: name.to_string(),
                label,
                params,
                full_config,
                build: method.build_identity(),
                instance,
            })
        }
        Err(errs) => {
            issues.extend(errs.into_iter().map(|e| e.prefixed(path)));
            None
        }
    }
}

/// `model.checkpoint` must hold this config's architecture for this data set, and a pruner can
/// only follow a dense model and must not need dense training's rewind point.
fn check_checkpoint(
    path: &Path,
    spec: &crate::model::ModelSpec,
    pruners: &[Planned<Box<dyn Pruner>>],
) -> Result<(), Vec<ConfigIssue>> {
    use crate::checkpoint::{CheckpointError, import_pytorch, load, metadata};
    let at = |p: &str, v: Option<Value>, m: String| vec![ConfigIssue::new(p, v, m)];
    let file = Some(Value::from(path.display().to_string()));
    // Loaded whole (on the CPU), as the run will: every tensor's name, shape and dtype, the mask,
    // and finite values are checked now rather than after dense evaluation.
    let loaded = match metadata(path) {
        Ok(meta)
            if meta.arch != spec.arch
                || meta.input != spec.input
                || meta.classes != spec.classes =>
        {
            return Err(at(
                "/model/checkpoint",
                file,
                format!(
                    "holds a {} model for {} classes of {:?} inputs; this config needs {} for {} classes of {:?}",
                    meta.arch, meta.classes, meta.input, spec.arch, spec.classes, spec.input
                ),
            ));
        }
        Ok(_) => load(path, tch::Device::Cpu).map(|(model, mask, _)| (model, mask)),
        // No unlearn metadata: PyTorch weights; they must load into this architecture.
        Err(CheckpointError::MissingMetadata { .. }) => {
            import_pytorch(path, spec.clone(), tch::Device::Cpu)
        }
        Err(e) => Err(e),
    };
    let (model, mask) = loaded.map_err(|e| at("/model/checkpoint", file.clone(), e.to_string()))?;
    if !model.all_finite() {
        return Err(at(
            "/model/checkpoint",
            file,
            "has non-finite weights or buffers (NaN or inf): it cannot be evaluated or unlearned"
                .into(),
        ));
    }
    let has_mask = mask.is_some();
    let rewinds = pruners.iter().find(|p| {
        matches!(
            p.instance.rewind_point(),
            Some(crate::method::RewindPoint::Epoch(_))
        )
    });
    match (pruners.first(), rewinds) {
        (Some(_), _) if has_mask => Err(at("/prune", None, "model.checkpoint is already pruned (it has a mask): remove `prune` to unlearn it as it is".into())),
        (_, Some(p)) => Err(at(
            "/prune/method",
            Some(Value::from(p.method.clone())),
            "this pruner rewinds to weights from dense training, which a run from model.checkpoint does not do: remove model.checkpoint, or use a pruner that does not rewind (SynFlow, or IMP with rewind = \"pt\")".into(),
        )),
        _ => Ok(()),
    }
}

/// The model a data set calls for: its shape, classes and normalisation.
pub fn model_spec(arch: crate::model::Arch, data: &Dataset) -> crate::model::ModelSpec {
    crate::model::ModelSpec {
        arch,
        input: data.image_shape(),
        classes: data.classes,
        mean: data.mean.clone(),
        std: data.std.clone(),
    }
}

/// Loads the configured data set and splits it. `base_dir` anchors a relative `dir`. For data
/// sets with an official test set, the returned data set is train followed by test, and the
/// split's test indices point at the test part.
pub fn load_split(cfg: &DataConfig, base_dir: &Path) -> Result<(Dataset, Split), DataError> {
    let (mut dataset, split) = match cfg.dataset.format() {
        None => {
            let d = match cfg.dataset {
                DatasetName::Synthetic => data::synthetic(&cfg.synthetic)?,
                _ => data::digits()?,
            };
            let split = data::stratified_split(&d.labels_vec(), d.classes, &cfg.split)?;
            (d, split)
        }
        Some(format) => {
            let dir = cfg.dir.as_ref().ok_or_else(|| DataError::Malformed {
                name: format.name().into(),
                message: format!(
                    "`dir` is required: the folder holding its files (e.g. what `unlearn data fetch {0} --dir data/{0}` wrote)",
                    format.name()
                ),
            })?;
            let source = format.load(&base_dir.join(dir))?;
            let n_train = source.train.len();
            let only_val = SplitConfig {
                test_fraction: 0.0,
                ..cfg.split.clone()
            };
            let mut split = data::stratified_split(
                &source.train.labels_vec(),
                source.train.classes,
                &only_val,
            )?;
            split.test = (n_train..n_train + source.test.len()).collect();
            (source.train.concat(&source.test), split)
        }
    };
    if let Some(a) = cfg.augment {
        dataset.augment = a;
    }
    let mut split = split;
    if let Some(sub) = &cfg.subset {
        data::subset_train(&mut split, &dataset.labels_vec(), dataset.classes, sub)?;
    }
    Ok((dataset, split))
}

/// The `plugins` entries of a parsed config, resolved against the config's folder (before the
/// config is planned: its methods may come from those libraries). A malformed `plugins` value is
/// left for [`plan`]'s schema check to report.
pub fn plugin_paths(raw: &Value, base_dir: &Path) -> Vec<PathBuf> {
    raw.get("plugins")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|p| base_dir.join(p))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_nan_and_inf_reach_the_schema_as_what_they_are() {
        let v =
            parse_config_text("[train]\nlr = nan\nmomentum = -inf\ngamma = inf\n", false).unwrap();
        assert_eq!(v["train"]["lr"], "nan");
        assert_eq!(v["train"]["momentum"], "-inf");
        assert_eq!(v["train"]["gamma"], "inf");
        let issues = issues_from_schema(&pipeline_schema(), &v, "");
        let lr = issues.iter().find(|i| i.path == "/train/lr").unwrap();
        assert!(lr.message.contains("\"nan\" is not of type"), "{lr}");
    }

    /// Left-out milestones scale with a given `epochs`: floor(m * epochs / default epochs), from
    /// 1 to epochs - 1, once each; given milestones, the default epochs or no epochs change
    /// nothing.
    #[test]
    fn default_milestones_scale_with_the_epochs_given() {
        let scaled = |defaults: Value, given: Value| {
            let mut g = given.as_object().unwrap().clone();
            scale_default_milestones(&defaults, &mut g);
            g.get("milestones").cloned()
        };
        let dense = serde_json::to_value(Schedule::default()).unwrap();
        assert_eq!(dense["milestones"], serde_json::json!([91, 136]));
        let retrain = serde_json::json!({"epochs": 160, "milestones": [91, 136]});
        let at = |d: &Value, e: u64| scaled(d.clone(), serde_json::json!({ "epochs": e }));
        // 91 and 136 of 182: one half and three quarters.
        assert_eq!(at(&dense, 10), Some(serde_json::json!([5, 7])));
        assert_eq!(at(&dense, 364), Some(serde_json::json!([182, 272])));
        assert_eq!(at(&retrain, 10), Some(serde_json::json!([5, 8])));
        assert_eq!(at(&dense, 2), Some(serde_json::json!([1])));
        assert_eq!(at(&dense, 1), Some(serde_json::json!([])));
        assert_eq!(at(&dense, 182), None);
        let given = serde_json::json!({"epochs": 10, "milestones": [3]});
        assert_eq!(scaled(dense.clone(), given), Some(serde_json::json!([3])));
        assert_eq!(scaled(dense.clone(), serde_json::json!({"lr": 0.1})), None);
        let ft = serde_json::json!({"epochs": 10, "milestones": []});
        assert_eq!(at(&ft, 30), Some(serde_json::json!([])));
        // What a run then computes with: a schedule the rules accept.
        for e in 1..400u64 {
            let ms: Vec<usize> =
                serde_json::from_value(at(&dense, e).unwrap_or(dense["milestones"].clone()))
                    .unwrap();
            let s = Schedule {
                epochs: e as usize,
                milestones: ms,
                ..Schedule::default()
            };
            assert!(s.issues().is_empty(), "{e}: {:?}", s.issues());
        }
    }

    /// The labels of a sweep tell its values apart with as few decimals as that takes.
    #[test]
    fn sweep_labels_are_distinct() {
        assert_eq!(sweep_decimals(&[0.5, 0.9, 0.95]), Some(1));
        assert_eq!(sweep_decimals(&[0.5, 0.5001]), Some(2));
        assert_eq!(percent(0.5001, 2), "50.01%");
        assert_eq!(percent(0.995, 1), "99.5%");
        assert_eq!(sweep_decimals(&[0.5, 0.5 + 1e-13]), None);
    }

    #[test]
    fn a_toml_integer_beyond_64_bits_is_called_out_of_range() {
        let (format, m) =
            parse_config_text("[train]\nepochs = 99999999999999999999\n", false).unwrap_err();
        assert_eq!(format, "TOML");
        assert!(
            m.contains("line 2") && m.contains("integer out of range"),
            "{m}"
        );
        assert!(!m.contains("JSON") && !m.contains("i128"), "{m}");
    }

    #[test]
    fn every_number_of_the_config_and_scenario_schemas_is_bounded() {
        assert_eq!(
            crate::bounds::unbounded_numbers(&pipeline_schema()),
            Vec::<String>::new()
        );
        for (name, s) in crate::scenario::registered().unwrap() {
            let unbounded = crate::bounds::unbounded_numbers(&(s.schema)());
            assert!(unbounded.is_empty(), "scenario {name}: {unbounded:?}");
        }
    }
}
