//! Forgetting scenarios as a registry: which training samples form `D_f`. A scenario has a
//! name, a summary, a typed config described by a JSON Schema, and a function from the train
//! split's labels and that config to the forget positions. Built-ins (`class`, `random`,
//! `file`, `subclass`) and plugin crates register the same way, with [`register_scenario!`]:
//!
//! ```ignore
//! #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! pub struct EveryKthConfig { #[schemars(range(min = 2))] pub k: usize }
//! impl unlearn_api::scenario::ScenarioConfig for EveryKthConfig {}
//!
//! pub struct EveryKth;
//! impl unlearn_api::scenario::ForgetScenario for EveryKth {
//!     type Config = EveryKthConfig;
//!     const NAME: &'static str = "every-kth";
//!     const SUMMARY: &'static str = "every k-th training sample";
//!     fn select(c: &EveryKthConfig, ctx: &ScenarioCtx<'_>) -> Result<Selection, ScenarioError> {
//!         Ok(Selection::new(format!("every-{}", c.k), (0..ctx.labels.len()).step_by(c.k).collect()))
//!     }
//! }
//! unlearn_api::register_scenario!(EveryKth);
//! ```
//!
//! A config names it as `[[forget]] kind = "every-kth"`, its settings beside `kind` (and the
//! optional report `name`). The seed of a scenario's draw is one of its settings (`seed`), not
//! the run's seed: a run's seeds share its forget sets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::forget::{ForgetError, ForgetSet, Selected, select_class, select_file, select_random};
use crate::method::ConfigIssue;
use crate::rng::permutation;

/// A scenario's config: serde + JSON Schema (doc comments become descriptions), and the rules a
/// schema cannot express.
pub trait ScenarioConfig: DeserializeOwned + Serialize + JsonSchema {
    /// Semantic rules: `(field, message)` for each violation.
    fn check(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// What a scenario selects from.
pub struct ScenarioCtx<'a> {
    /// Labels of the training split, by position (the positions a forget set lists).
    pub labels: &'a [i64],
    pub classes: usize,
    /// The config file's folder: relative paths in settings are relative to it.
    pub base_dir: &'a Path,
}

/// What a scenario selected.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The report name when the config gives none (e.g. `class-3`).
    pub name: String,
    /// Positions in the training split: distinct, in range, not empty, not all of it.
    pub forget: Vec<usize>,
    /// Set only by class-wise forgetting: the class whose every training sample is in
    /// `forget` (checked). Class-wise metrics (TA without the class, MIA shadow non-members)
    /// then leave the class out of the test set; with `None` they use the whole test set.
    pub class: Option<usize>,
}

impl Selection {
    pub fn new(name: impl Into<String>, forget: Vec<usize>) -> Selection {
        Selection {
            name: name.into(),
            forget,
            class: None,
        }
    }
}

/// A scenario's failure, about one of its settings when `field` is given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ScenarioError {
    pub field: Option<String>,
    pub message: String,
}

impl ScenarioError {
    pub fn at(field: &str, message: impl Into<String>) -> ScenarioError {
        ScenarioError {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

impl From<ForgetError> for ScenarioError {
    fn from(e: ForgetError) -> ScenarioError {
        ScenarioError::at(e.field(), e.to_string())
    }
}

/// A forgetting scenario with its typed config: what a plugin author implements.
pub trait ForgetScenario: 'static {
    type Config: ScenarioConfig;
    const NAME: &'static str;
    const SUMMARY: &'static str;
    fn select(config: &Self::Config, ctx: &ScenarioCtx<'_>) -> Result<Selection, ScenarioError>;
}

/// A statically registered scenario (collected with `inventory`).
pub struct BuiltinScenario {
    pub name: &'static str,
    pub summary: &'static str,
    /// The crate that registered it.
    pub krate: &'static str,
    pub schema: fn() -> Value,
    select: fn(&Value, &ScenarioCtx<'_>) -> Result<Selection, Vec<ConfigIssue>>,
}

inventory::collect!(BuiltinScenario);

impl BuiltinScenario {
    pub const fn of<S: ForgetScenario>(krate: &'static str) -> BuiltinScenario {
        BuiltinScenario {
            name: S::NAME,
            summary: S::SUMMARY,
            krate,
            schema: crate::method::schema_of::<S::Config>,
            select: select_with::<S>,
        }
    }

    /// The forget set these settings (the entry without `kind` and `name`) select. Issues have
    /// paths relative to the entry (`/class`); the selection is checked whatever the scenario.
    pub fn resolve(
        &self,
        settings: &Value,
        name: Option<String>,
        ctx: &ScenarioCtx<'_>,
    ) -> Result<ForgetSet, Vec<ConfigIssue>> {
        let s = (self.select)(settings, ctx)?;
        check_selection(&s, ctx).map_err(|m| {
            vec![ConfigIssue::new(
                "",
                None,
                format!("scenario `{}`: {m}", self.name),
            )]
        })?;
        Ok(ForgetSet::from_forget(
            name.unwrap_or(s.name),
            self.name.to_string(),
            s.class,
            s.forget,
            ctx.labels.len(),
        ))
    }
}

fn select_with<S: ForgetScenario>(
    v: &Value,
    ctx: &ScenarioCtx<'_>,
) -> Result<Selection, Vec<ConfigIssue>> {
    let config: S::Config = serde_json::from_value(v.clone())
        .map_err(|e| vec![ConfigIssue::new("", None, e.to_string())])?;
    let issue = |field: &str, message: String| {
        ConfigIssue::new(&format!("/{field}"), v.get(field).cloned(), message)
    };
    let issues: Vec<ConfigIssue> = config
        .check()
        .into_iter()
        .map(|(f, m)| issue(&f, m))
        .collect();
    if !issues.is_empty() {
        return Err(issues);
    }
    S::select(&config, ctx).map_err(|e| match &e.field {
        Some(f) => vec![issue(f, e.message)],
        None => vec![ConfigIssue::new("", None, e.message)],
    })
}

/// The rules every forget set obeys, whichever scenario drew it.
fn check_selection(s: &Selection, ctx: &ScenarioCtx<'_>) -> Result<(), String> {
    let train = ctx.labels.len();
    let mut seen = vec![false; train];
    for &i in &s.forget {
        if i >= train {
            return Err(format!(
                "position {i} is outside the training split (0..{train})"
            ));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("position {i} is selected twice"));
        }
    }
    if s.forget.is_empty() || s.forget.len() >= train {
        return Err(ForgetError::Size {
            n: s.forget.len(),
            train,
            field: "n",
        }
        .to_string());
    }
    if let Some(c) = s.class {
        let whole = (0..train).all(|i| (ctx.labels[i] == c as i64) == seen[i]);
        if !whole {
            return Err(format!(
                "it names class {c} as removed, but its forget set is not exactly that class's training samples"
            ));
        }
    }
    Ok(())
}

/// Registers a [`ForgetScenario`].
#[macro_export]
macro_rules! register_scenario {
    ($t:ty) => {
        $crate::inventory::submit! {
            $crate::scenario::BuiltinScenario::of::<$t>(env!("CARGO_PKG_NAME"))
        }
    };
}

/// Every registered scenario, by name. Two registrations of one name are an error naming both
/// crates.
pub fn registered() -> Result<BTreeMap<&'static str, &'static BuiltinScenario>, String> {
    let mut map: BTreeMap<&'static str, &'static BuiltinScenario> = BTreeMap::new();
    for s in inventory::iter::<BuiltinScenario> {
        if let Some(first) = map.insert(s.name, s) {
            return Err(format!(
                "forgetting scenario `{}` is registered twice: by {} and by {}",
                s.name, first.krate, s.krate
            ));
        }
    }
    Ok(map)
}

/// The scenario `name`; an unknown name lists the known ones.
pub fn find(name: &str) -> Result<&'static BuiltinScenario, String> {
    let all = registered()?;
    all.get(name).copied().ok_or_else(|| {
        let known: Vec<&str> = all.keys().copied().collect();
        format!(
            "unknown forgetting scenario `{name}`; known: {}",
            known.join(", ")
        )
    })
}

/// The forget set the registered scenario `kind` selects with `settings` (its config, as a
/// `[[forget]]` entry gives it without `kind` and `name`) over a train split with these labels;
/// relative paths resolve against `base_dir`. For code that builds a forget set itself (tests,
/// benchmarks); a config names scenarios in `[[forget]]`.
pub fn resolve_named(
    kind: &str,
    settings: &Value,
    labels: &[i64],
    classes: usize,
    base_dir: &Path,
) -> Result<ForgetSet, String> {
    let ctx = ScenarioCtx {
        labels,
        classes,
        base_dir,
    };
    find(kind)?.resolve(settings, None, &ctx).map_err(|issues| {
        issues
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// A config's forget entry split into its scenario, report name and settings (the entry
/// without `kind` and `name`). None when `kind` is missing or not a string.
pub fn split_entry(entry: &Value) -> Option<(String, Option<String>, Value)> {
    let kind = entry.get("kind")?.as_str()?.to_string();
    let mut settings = entry.as_object()?.clone();
    settings.remove("kind");
    let name = match settings.remove("name") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Some((kind, name, Value::Object(settings)))
}

fn from_selected((name, class, forget): Selected) -> Selection {
    Selection {
        name,
        forget,
        class,
    }
}

/// `class`: class-wise forgetting.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// The class whose every training sample is forgotten.
    #[schemars(range(max = 1_000_000))]
    pub class: usize,
}
impl ScenarioConfig for ClassConfig {}

pub struct ClassWise;
impl ForgetScenario for ClassWise {
    type Config = ClassConfig;
    const NAME: &'static str = "class";
    const SUMMARY: &'static str = "class-wise forgetting: every training sample of one class";
    fn select(c: &ClassConfig, ctx: &ScenarioCtx<'_>) -> Result<Selection, ScenarioError> {
        Ok(from_selected(select_class(
            c.class,
            ctx.labels,
            ctx.classes,
        )?))
    }
}

/// `random`: random-data forgetting.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomConfig {
    /// How many samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub n: Option<usize>,
    /// Share of train instead of `n` (the paper: 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub fraction: Option<f64>,
    /// Seed of the draw.
    #[serde(default)]
    #[schemars(range(max = u64::MAX))]
    pub seed: u64,
}
impl ScenarioConfig for RandomConfig {}

pub struct RandomSamples;
impl ForgetScenario for RandomSamples {
    type Config = RandomConfig;
    const NAME: &'static str = "random";
    const SUMMARY: &'static str =
        "random-data forgetting: n (or a fraction of train) samples drawn uniformly with a seed";
    fn select(c: &RandomConfig, ctx: &ScenarioCtx<'_>) -> Result<Selection, ScenarioError> {
        Ok(from_selected(select_random(
            c.n,
            c.fraction,
            c.seed,
            ctx.labels.len(),
        )?))
    }
}

/// `file`: the positions listed in an index file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Path of the index file, relative to the config file: one position in the train split per
    /// line (`#` comments allowed) or a JSON array.
    pub path: PathBuf,
}
impl ScenarioConfig for FileConfig {}

pub struct IndexFile;
impl ForgetScenario for IndexFile {
    type Config = FileConfig;
    const NAME: &'static str = "file";
    const SUMMARY: &'static str = "the train positions listed in an index file";
    fn select(c: &FileConfig, ctx: &ScenarioCtx<'_>) -> Result<Selection, ScenarioError> {
        Ok(from_selected(select_file(
            &c.path,
            ctx.base_dir,
            ctx.labels.len(),
        )?))
    }
}

/// `subclass`: a seeded sub-population of one class.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubclassConfig {
    /// The class a part of which is forgotten.
    #[schemars(range(max = 1_000_000))]
    pub class: usize,
    /// The share of the class's training samples to forget: round(fraction * |class|), at
    /// least one and fewer than all (the rest of the class stays in `D_r`).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub fraction: f64,
    /// Seed of the draw.
    #[serde(default)]
    #[schemars(range(max = u64::MAX))]
    pub seed: u64,
}
impl ScenarioConfig for SubclassConfig {
    fn check(&self) -> Vec<(String, String)> {
        if self.fraction > 0.0 && self.fraction < 1.0 {
            Vec::new()
        } else {
            vec![(
                "fraction".into(),
                "must be strictly between 0 and 1: sub-class forgetting keeps part of the class"
                    .into(),
            )]
        }
    }
}

/// Sub-class forgetting on data without sub-class labels: the sub-population is a seeded
/// random share of one class. With the class's training positions in increasing order as
/// `p_0 < p_1 < ... < p_{m-1}` and `π = permutation(m, seed, "subclass")`, it forgets
/// `{ p_{π(j)} : j < round(fraction * m) }`. The class stays in `D_r` and in the test set, so
/// no class is removed (`class: None`): TA is on the whole test set (`TA = TA all`), and UA is
/// measured on the forgotten sub-population only.
pub struct SubClass;
impl ForgetScenario for SubClass {
    type Config = SubclassConfig;
    const NAME: &'static str = "subclass";
    const SUMMARY: &'static str = "sub-class forgetting: a seeded fraction of one class's training samples (the rest of the class stays)";
    fn select(c: &SubclassConfig, ctx: &ScenarioCtx<'_>) -> Result<Selection, ScenarioError> {
        let (_, _, members) = select_class(c.class, ctx.labels, ctx.classes)?;
        let m = members.len();
        let k = (c.fraction * m as f64).round() as usize;
        if k == 0 || k >= m {
            return Err(ScenarioError::at(
                "fraction",
                format!(
                    "selects {k} of the {m} training samples of class {}: give a fraction that keeps at least one and forgets at least one",
                    c.class
                ),
            ));
        }
        let mut order = permutation(m, c.seed, "subclass");
        order.truncate(k);
        let forget = order.into_iter().map(|j| members[j]).collect();
        Ok(Selection::new(format!("subclass-{}-{k}", c.class), forget))
    }
}

crate::register_scenario!(ClassWise);
crate::register_scenario!(RandomSamples);
crate::register_scenario!(IndexFile);
crate::register_scenario!(SubClass);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels() -> Vec<i64> {
        (0..100).map(|i| (i % 4) as i64).collect()
    }

    fn resolve(entry: Value) -> Result<ForgetSet, Vec<ConfigIssue>> {
        let (kind, name, settings) = split_entry(&entry).unwrap();
        let l = labels();
        let ctx = ScenarioCtx {
            labels: &l,
            classes: 4,
            base_dir: Path::new("."),
        };
        find(&kind).unwrap().resolve(&settings, name, &ctx)
    }

    #[test]
    fn builtins_are_registered_and_unknown_names_list_them() {
        let names: Vec<&str> = registered().unwrap().keys().copied().collect();
        assert_eq!(names, ["class", "file", "random", "subclass"]);
        let e = find("clas").err().unwrap();
        assert_eq!(
            e,
            "unknown forgetting scenario `clas`; known: class, file, random, subclass"
        );
        assert!(
            (find("class").unwrap().schema)()["required"]
                .as_array()
                .unwrap()
                .contains(&json!("class"))
        );
    }

    #[test]
    fn registry_agrees_with_the_selections() {
        let (_, _, mut forget) = crate::forget::select_random(Some(10), None, 3, 100).unwrap();
        forget.sort_unstable();
        let b = resolve(json!({"kind": "random", "n": 10, "seed": 3})).unwrap();
        assert_eq!(b.forget, forget);
        let named = resolve_named(
            "random",
            &json!({"n": 10, "seed": 3}),
            &labels(),
            4,
            Path::new("."),
        );
        assert_eq!(named.unwrap(), b);
        let c = resolve(json!({"kind": "class", "class": 2, "name": "two"})).unwrap();
        assert_eq!(
            (c.name.as_str(), c.kind.as_str(), c.class),
            ("two", "class", Some(2))
        );
        let e = resolve(json!({"kind": "class", "class": 9})).unwrap_err();
        assert_eq!(e[0].path, "/class");
        assert_eq!(e[0].value, Some(json!(9)));
        assert_eq!(e[0].message, "class 9 is outside 0..4");
    }

    #[test]
    fn subclass_forgets_a_seeded_part_of_one_class() {
        let s =
            resolve(json!({"kind": "subclass", "class": 1, "fraction": 0.4, "seed": 5})).unwrap();
        // Class 1 has 25 training samples; 10 are forgotten, all of class 1.
        assert_eq!(s.forget.len(), 10);
        assert!(s.forget.iter().all(|&i| i % 4 == 1));
        assert_eq!((s.name.as_str(), s.class), ("subclass-1-10", None));
        // Independent computation of the documented rule.
        let members: Vec<usize> = (0..100).filter(|i| i % 4 == 1).collect();
        let mut want: Vec<usize> = permutation(25, 5, "subclass")[..10]
            .iter()
            .map(|&j| members[j])
            .collect();
        want.sort();
        assert_eq!(s.forget, want);
        let other =
            resolve(json!({"kind": "subclass", "class": 1, "fraction": 0.4, "seed": 6})).unwrap();
        assert_ne!(s.forget, other.forget);
        let e = resolve(json!({"kind": "subclass", "class": 1, "fraction": 1.0})).unwrap_err();
        assert_eq!(e[0].path, "/fraction");
        let e = resolve(json!({"kind": "subclass", "class": 1, "fraction": 0.01})).unwrap_err();
        assert!(e[0].message.contains("selects 0 of the 25"), "{e:?}");
    }

    struct Liar;
    impl ForgetScenario for Liar {
        type Config = RandomConfig;
        const NAME: &'static str = "liar";
        const SUMMARY: &'static str = "";
        fn select(_: &RandomConfig, _: &ScenarioCtx<'_>) -> Result<Selection, ScenarioError> {
            Ok(Selection {
                class: Some(1),
                ..Selection::new("x", vec![1, 5])
            })
        }
    }

    #[test]
    fn selections_are_checked_whatever_the_scenario() {
        let l = labels();
        let ctx = ScenarioCtx {
            labels: &l,
            classes: 4,
            base_dir: Path::new("."),
        };
        let liar = BuiltinScenario::of::<Liar>("test");
        let e = liar.resolve(&json!({}), None, &ctx).unwrap_err();
        assert!(e[0].message.contains("not exactly that class"), "{e:?}");
    }
}
