//! What a method is: a pruner or an unlearner with a typed, schema-described config. A method
//! sees a narrow context (model, mask, data, forget set, the training loop); it never parses
//! flags or files. Built-ins register with [`register_unlearner!`] / [`register_pruner!`].

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::data::Dataset;
use crate::forget::ForgetSet;
use crate::mask::{Mask, MaskError};
use crate::model::{Model, ModelError, Snapshot};
use crate::train::{
    Objective, Phase, Run, Schedule, Stream, Tag, TrainError, TrainReport, Trainer,
};
use tch::Tensor;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Pruner,
    Unlearner,
    Attack,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Pruner, Kind::Unlearner, Kind::Attack];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Pruner => "pruner",
            Kind::Unlearner => "unlearner",
            Kind::Attack => "attack",
        }
    }

    pub fn with_article(self) -> &'static str {
        match self {
            Kind::Pruner => "a pruner",
            Kind::Unlearner => "an unlearner",
            Kind::Attack => "an attack",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown kind `{s}`: expected pruner, unlearner or attack"))
    }
}

pub use crate::issue::ConfigIssue;

#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Mask(#[from] MaskError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Failed(String),
}

/// A method's configuration: serde + JSON Schema (doc comments become descriptions), defaults
/// from the paper, and the rules a schema cannot express.
pub trait MethodConfig: DeserializeOwned + Serialize + JsonSchema + Default {
    /// Semantic rules: `(field, message)` for each violation.
    fn check(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The data a run works on, resident on the run's device. Forget and retain sets are positions
/// in `train`.
pub struct TaskData {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
}

/// What an unlearner may use.
pub struct UnlearnCtx<'a> {
    /// The model to unlearn, changed in place (a copy of the original).
    pub model: &'a mut Model,
    /// The active mask of a sparse model; core enforces it during training, and a one-shot
    /// method must re-apply it after changing weights ([`UnlearnCtx::enforce_mask`]).
    pub mask: Option<&'a Mask>,
    pub data: &'a TaskData,
    pub forget: &'a ForgetSet,
    pub trainer: &'a Trainer,
    pub seed: u64,
    /// Names this run in errors and progress (`FT on class-3 (sparse)`).
    pub label: String,
}

impl<'a> UnlearnCtx<'a> {
    /// `D_r`, with the training set's augmentation (seeded by the context's seed for the
    /// gradient tools).
    pub fn retain_stream(&self) -> Stream<'a> {
        Stream {
            augment_seed: self.seed,
            ..Stream::new(&self.data.train, &self.forget.retain)
        }
    }

    /// `D_f`, likewise, every sample tagged forget.
    pub fn forget_stream(&self) -> Stream<'a> {
        Stream {
            augment_seed: self.seed,
            ..Stream::tagged(&self.data.train, &self.forget.forget, Tag::Forget)
        }
    }

    /// `D_r` and `D_f` in one stream, each sample tagged: batches mix both
    /// ([`crate::train::Batch::forget`] says which is which).
    pub fn mixed_stream(&self) -> Stream<'a> {
        Stream {
            augment_seed: self.seed,
            ..Stream::mixed(&self.data.train, &self.forget.retain, &self.forget.forget)
        }
    }

    /// Runs core's loop on the context's model, mask and seed.
    pub fn train(
        &mut self,
        schedule: &Schedule,
        stream: &Stream<'_>,
        objective: &mut dyn Objective,
    ) -> Result<TrainReport, TrainError> {
        let run = Run::new(self.label.clone(), schedule, stream, self.mask, self.seed);
        self.trainer.run(self.model, run, objective)
    }

    /// Runs core's loop with several phases per epoch (e.g. SCRUB's max-steps on `D_f`, then
    /// min-steps on `D_r`), one optimizer throughout; `objective` sees [`Batch::phase`].
    ///
    /// [`Batch::phase`]: crate::train::Batch::phase
    pub fn train_phases(
        &mut self,
        schedule: &Schedule,
        phases: Vec<Phase<'_>>,
        objective: &mut dyn Objective,
    ) -> Result<TrainReport, TrainError> {
        let run = Run::phased(self.label.clone(), schedule, phases, self.mask, self.seed);
        self.trainer.run(self.model, run, objective)
    }

    /// Replaces the model by a fresh initialisation of the same architecture (with the mask
    /// applied when sparse): the starting point of retraining.
    pub fn reinitialise(&mut self) -> Result<(), ModelError> {
        let fresh = Model::new(self.model.spec().clone(), self.model.device(), self.seed)?;
        // Values are copied into the context's own tensors (not the model replaced): in a plugin
        // library those tensors are the host's.
        self.model.load_snapshot(&fresh.snapshot())?;
        self.enforce_mask();
        Ok(())
    }

    pub fn enforce_mask(&self) {
        if let Some(m) = self.mask {
            m.apply(self.model);
        }
    }
}

/// What a pruner may use.
pub struct PruneCtx<'a> {
    /// The trained dense model; the pruner turns it into the trained sparse model.
    pub model: &'a mut Model,
    /// The dense weights [`Pruner::rewind_point`] asked for, when it asked.
    pub rewind: Option<&'a Snapshot>,
    pub data: &'a TaskData,
    /// The pipeline's training schedule (used to retrain after pruning).
    pub schedule: &'a Schedule,
    pub trainer: &'a Trainer,
    pub seed: u64,
    pub label: String,
}

impl<'a> PruneCtx<'a> {
    /// Every training sample.
    pub fn train_stream(&self) -> Stream<'a> {
        let all: Vec<usize> = (0..self.data.train.len()).collect();
        Stream::new(&self.data.train, &all)
    }

    /// Trains the context's model on all of train with the pipeline's schedule, under `mask`,
    /// with the lr schedule advanced by `schedule_offset` epochs.
    pub fn train(
        &mut self,
        mask: &Mask,
        schedule_offset: usize,
    ) -> Result<TrainReport, TrainError> {
        let stream = self.train_stream();
        let run = Run {
            schedule_offset,
            ..Run::new(
                self.label.clone(),
                self.schedule,
                &stream,
                Some(mask),
                self.seed,
            )
        };
        self.trainer
            .run(self.model, run, &mut crate::train::CrossEntropy)
    }
}

/// What an attack may use: the clean data (resident on the run's device) and a seed.
pub struct AttackCtx<'a> {
    pub data: &'a TaskData,
    pub seed: u64,
    pub label: String,
}

/// A poisoning of the training set: which rows of `train` change, and into what.
#[derive(Debug)]
pub struct Poisoning {
    /// Positions in `train`, strictly increasing; they become the forget set of a cleanse.
    pub rows: Vec<usize>,
    /// The poisoned images, `[rows.len(), C, H, W]`, same dtype and device as `train.images`.
    pub images: Tensor,
    /// Their (new) labels, `[rows.len()]`, i64.
    pub labels: Tensor,
}

/// What is wrong with `p` as a poisoning of `train`, one message per problem (empty: usable).
/// Rows must be strictly increasing and inside train; images `[rows, C, H, W]` with train's
/// dtype and device; labels `[rows]`, i64, on train's device, each a class of train.
pub fn poisoning_issues(train: &Dataset, p: &Poisoning) -> Vec<String> {
    let mut issues = Vec::new();
    let k = p.rows.len() as i64;
    if let Some(w) = p.rows.windows(2).find(|w| w[0] >= w[1]) {
        issues.push(format!(
            "rows are not strictly increasing ({} then {})",
            w[0], w[1]
        ));
    }
    if let Some(&r) = p.rows.iter().find(|&&r| r >= train.len()) {
        issues.push(format!(
            "row {r} is outside the training set of {} samples",
            train.len()
        ));
    }
    let [c, h, w] = train.image_shape();
    if p.images.size() != [k, c, h, w] {
        issues.push(format!(
            "images have shape {:?}, expected {:?} ({} rows of train's images)",
            p.images.size(),
            [k, c, h, w],
            k
        ));
    }
    if p.images.kind() != train.images.kind() {
        issues.push(format!(
            "images are {:?}, train's images are {:?}",
            p.images.kind(),
            train.images.kind()
        ));
    }
    if p.images.device() != train.images.device() {
        issues.push(format!(
            "images are on {:?}, train's images on {:?}",
            p.images.device(),
            train.images.device()
        ));
    }
    if p.labels.size() != [k] {
        issues.push(format!(
            "labels have shape {:?}, expected [{k}]",
            p.labels.size()
        ));
    }
    if p.labels.device() != train.labels.device() {
        issues.push(format!(
            "labels are on {:?}, train's labels on {:?}",
            p.labels.device(),
            train.labels.device()
        ));
    }
    if p.labels.kind() != tch::Kind::Int64 {
        issues.push(format!("labels are {:?}, expected Int64", p.labels.kind()));
    } else if p.labels.numel() > 0 {
        let flat = p.labels.flatten(0, -1).to_device(tch::Device::Cpu);
        let labels = Vec::<i64>::try_from(&flat).unwrap_or_default();
        if let Some(&y) = labels
            .iter()
            .find(|&&y| y < 0 || y as usize >= train.classes)
        {
            issues.push(format!(
                "label {y} is not a class of train (0..{})",
                train.classes
            ));
        }
    }
    issues
}

/// The usual dirty-label poisoning: `n` rows of train drawn with the context's seed (under
/// `purpose`, e.g. the attack's name), sorted, stamped with `attack`'s trigger and relabelled to
/// its target. Errors name the setting: `n` larger than train, a `target` that is not a class.
pub fn poison_by_trigger(
    attack: &dyn Attack,
    ctx: &AttackCtx<'_>,
    n: usize,
    purpose: &str,
) -> Result<Poisoning, MethodError> {
    let train = &ctx.data.train;
    let target = attack.target();
    if n > train.len() {
        return Err(MethodError::Failed(format!(
            "{}: n = {n} poisoned samples, but the training set has only {}",
            ctx.label,
            train.len()
        )));
    }
    if target >= train.classes {
        return Err(MethodError::Failed(format!(
            "{}: target = {target} is not a class of `{}`, which has {} classes (0..{})",
            ctx.label, train.name, train.classes, train.classes
        )));
    }
    let mut rows = crate::rng::permutation(train.len(), ctx.seed, purpose);
    rows.truncate(n);
    rows.sort_unstable();
    let device = train.images.device();
    let idx = crate::data::index_tensor(&rows, device);
    let images = attack.trigger(&train.images.f_index_select(0, &idx)?)?;
    let labels = Tensor::f_full(
        [rows.len() as i64],
        target as i64,
        (tch::Kind::Int64, device),
    )?;
    Ok(Poisoning {
        rows,
        images,
        labels,
    })
}

/// A training-set attack (e.g. a BadNets backdoor, Gu et al., 2017): it poisons train, and at test time
/// its trigger turns clean images into attacked ones.
pub trait Attack: Send + Sync {
    fn poison(&self, ctx: &AttackCtx<'_>) -> Result<Poisoning, MethodError>;
    /// Applies the trigger to a batch of images `[N, C, H, W]` (the data set's dtype, u8 for
    /// every loader); the result has the same shape, dtype and device.
    fn trigger(&self, images: &Tensor) -> Result<Tensor, MethodError>;
    /// The class triggered images should be classified as.
    fn target(&self) -> usize;
}

pub trait Unlearner: Send + Sync {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError>;
}

pub use crate::train::RewindPoint;

pub trait Pruner: Send + Sync {
    /// The share of prunable weights the returned mask zeroes (exactly `round(s * total)`).
    fn sparsity(&self) -> f64;
    /// The dense weights this pruner rewinds to, which dense training keeps for it.
    fn rewind_point(&self) -> Option<RewindPoint> {
        None
    }
    fn prune(&self, ctx: &mut PruneCtx<'_>) -> Result<Mask, MethodError>;
}

/// An unlearning method with its typed config: what a plugin author implements.
pub trait UnlearnMethod: Unlearner + Sized + 'static {
    type Config: MethodConfig;
    const NAME: &'static str;
    const SUMMARY: &'static str;
    fn new(config: Self::Config) -> Self;
}

/// A pruning method with its typed config.
pub trait PruneMethod: Pruner + Sized + 'static {
    type Config: MethodConfig;
    const NAME: &'static str;
    const SUMMARY: &'static str;
    fn new(config: Self::Config) -> Self;
}

/// An attack with its typed config.
pub trait AttackMethod: Attack + Sized + 'static {
    type Config: MethodConfig;
    const NAME: &'static str;
    const SUMMARY: &'static str;
    fn new(config: Self::Config) -> Self;
}

/// The result of building a method from its config: the method, or every problem found (paths
/// relative to the config object, e.g. `/lr`).
pub type Built<T> = Result<Box<T>, Vec<ConfigIssue>>;

/// Makes a method from its JSON config.
#[derive(Clone, Copy)]
pub enum Factory {
    Unlearner(fn(&Value) -> Built<dyn Unlearner>),
    Pruner(fn(&Value) -> Built<dyn Pruner>),
    Attack(fn(&Value) -> Built<dyn Attack>),
}

impl Factory {
    pub fn kind(&self) -> Kind {
        match self {
            Factory::Unlearner(_) => Kind::Unlearner,
            Factory::Pruner(_) => Kind::Pruner,
            Factory::Attack(_) => Kind::Attack,
        }
    }
}

/// A statically registered method (collected with `inventory`).
pub struct BuiltinMethod {
    pub kind: Kind,
    pub name: &'static str,
    pub summary: &'static str,
    /// The crate that registered it (shown as the source).
    pub krate: &'static str,
    pub schema: fn() -> Value,
    pub default_config: fn() -> Value,
    pub factory: Factory,
}

inventory::collect!(BuiltinMethod);

impl BuiltinMethod {
    pub const fn unlearner<M: UnlearnMethod>(krate: &'static str) -> BuiltinMethod {
        BuiltinMethod {
            kind: Kind::Unlearner,
            name: M::NAME,
            summary: M::SUMMARY,
            krate,
            schema: schema_of::<M::Config>,
            default_config: default_of::<M::Config>,
            factory: Factory::Unlearner(build_unlearner::<M>),
        }
    }

    pub const fn pruner<M: PruneMethod>(krate: &'static str) -> BuiltinMethod {
        BuiltinMethod {
            kind: Kind::Pruner,
            name: M::NAME,
            summary: M::SUMMARY,
            krate,
            schema: schema_of::<M::Config>,
            default_config: default_of::<M::Config>,
            factory: Factory::Pruner(build_pruner::<M>),
        }
    }

    pub const fn attack<M: AttackMethod>(krate: &'static str) -> BuiltinMethod {
        BuiltinMethod {
            kind: Kind::Attack,
            name: M::NAME,
            summary: M::SUMMARY,
            krate,
            schema: schema_of::<M::Config>,
            default_config: default_of::<M::Config>,
            factory: Factory::Attack(build_attack::<M>),
        }
    }
}

pub fn schema_of<C: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(C)).expect("schemas serialise")
}

fn default_of<C: MethodConfig>() -> Value {
    serde_json::to_value(C::default()).expect("configs serialise")
}

/// Deserialises and checks a method config.
pub fn parse_config<C: MethodConfig>(v: &Value) -> Result<C, Vec<ConfigIssue>> {
    // The schema's ranges hold however the method is built (the pipeline checks them too), and
    // the method's own rules are reported beside them, except on a field already out of range.
    let mut issues = crate::bounds::range_issues(&schema_of::<C>(), v);
    let c: C = match serde_json::from_value(v.clone()) {
        Ok(c) => c,
        Err(e) if issues.is_empty() => return Err(vec![ConfigIssue::new("", None, e.to_string())]),
        Err(_) => return Err(issues),
    };
    for (field, msg) in c.check() {
        let path = format!("/{field}");
        if issues.iter().any(|i| i.path == path) {
            continue;
        }
        issues.push(ConfigIssue::of_rule("", &field, v, msg));
    }
    if issues.is_empty() {
        Ok(c)
    } else {
        Err(issues)
    }
}

fn build_unlearner<M: UnlearnMethod>(v: &Value) -> Built<dyn Unlearner> {
    Ok(Box::new(M::new(parse_config::<M::Config>(v)?)))
}

fn build_pruner<M: PruneMethod>(v: &Value) -> Built<dyn Pruner> {
    Ok(Box::new(M::new(parse_config::<M::Config>(v)?)))
}

fn build_attack<M: AttackMethod>(v: &Value) -> Built<dyn Attack> {
    Ok(Box::new(M::new(parse_config::<M::Config>(v)?)))
}

/// Registers an [`UnlearnMethod`] as a built-in.
#[macro_export]
macro_rules! register_unlearner {
    ($t:ty) => {
        $crate::inventory::submit! {
            $crate::method::BuiltinMethod::unlearner::<$t>(env!("CARGO_PKG_NAME"))
        }
    };
}

/// Registers a [`PruneMethod`] as a built-in.
#[macro_export]
macro_rules! register_pruner {
    ($t:ty) => {
        $crate::inventory::submit! {
            $crate::method::BuiltinMethod::pruner::<$t>(env!("CARGO_PKG_NAME"))
        }
    };
}

/// Registers an [`AttackMethod`] as a built-in.
#[macro_export]
macro_rules! register_attack {
    ($t:ty) => {
        $crate::inventory::submit! {
            $crate::method::BuiltinMethod::attack::<$t>(env!("CARGO_PKG_NAME"))
        }
    };
}

/// Defines the config of an iterative method: SGD settings (epochs, lr, batch size, momentum,
/// weight decay, milestones, with the given defaults and the paper's momentum 0.9 / wd 5e-4; the batch
/// size defaults to 256 unless given as `batch_size: n,` before `milestones`), plus
/// extra fields, with `MethodConfig` (milestones must increase) and `schedule()`.
///
/// ```ignore
/// sgd_config!(
///     /// Doc of the config.
///     FtL1Config { epochs: 10, lr: 0.01, milestones: vec![] }
///     extra {
///         /// The L1 weight a.
///         #[schemars(range(min = 0.0))]
///         alpha: f64 = 5e-4,
///     }
///     // optional: rules a schema cannot express, as (field, message) pairs
///     rules(c) { (c.alpha > 1.0).then(|| ("alpha".to_string(), "too large".to_string())) }
/// );
/// ```
#[macro_export]
macro_rules! sgd_config {
    (
        $(#[$doc:meta])* $name:ident {
            epochs: $epochs:expr, lr: $lr:expr, $(batch_size: $bs:expr,)? milestones: $ms:expr
        }
        $( extra { $( $(#[$fmeta:meta])* $field:ident : $fty:ty = $fdef:expr ),* $(,)? } )?
        $( rules($c:ident) $rules:block )?
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Passes over the method's data.
            #[schemars(range(min = 1, max = $crate::bounds::MAX_EPOCHS))]
            pub epochs: usize,
            /// Initial learning rate.
            #[schemars(range(max = $crate::bounds::MAX_LR), extend("exclusiveMinimum" = 0.0))]
            pub lr: f64,
            /// Samples per SGD step.
            #[schemars(range(min = 1, max = $crate::bounds::MAX_BATCH_SIZE))]
            pub batch_size: usize,
            /// SGD momentum (the paper's: 0.9).
            #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
            pub momentum: f64,
            /// L2 weight decay of SGD (the paper's: 5e-4).
            #[schemars(range(min = 0.0, max = 1.0))]
            pub weight_decay: f64,
            /// Epochs at which the lr is multiplied by 0.1. With another `epochs` than the
            /// default and no `milestones` in a config, the default milestones scaled to it:
            /// floor(m * epochs / default epochs), each from 1 to epochs - 1.
            #[schemars(inner(range(min = 1, max = 100_000)))]
            pub milestones: Vec<usize>,
            /// sgd (momentum, optional Nesterov), adam or adamw.
            #[serde(skip_serializing_if = "::unlearn_api::train::is_default")]
            pub optimizer: $crate::optim::OptimizerKind,
            /// Nesterov momentum (sgd).
            #[serde(skip_serializing_if = "::unlearn_api::train::is_default")]
            pub nesterov: bool,
            /// (beta1, beta2) of adam and adamw.
            #[serde(skip_serializing_if = "::unlearn_api::train::is_default_betas")]
            #[schemars(length(equal = 2), inner(range(min = 0.0, max = 1.0)))]
            pub betas: Vec<f64>,
            /// Epsilon of adam and adamw, > 0.
            #[serde(skip_serializing_if = "::unlearn_api::train::is_default_eps")]
            #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
            pub eps: f64,
            $($( $(#[$fmeta])* pub $field: $fty, )*)?
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    epochs: $epochs,
                    lr: $lr,
                    batch_size: $crate::__sgd_default!($($bs)?; 256),
                    momentum: 0.9,
                    weight_decay: 5e-4,
                    milestones: $ms,
                    optimizer: $crate::optim::OptimizerKind::Sgd,
                    nesterov: false,
                    betas: $crate::train::DEFAULT_BETAS.to_vec(),
                    eps: $crate::train::DEFAULT_EPS,
                    $($( $field: $fdef, )*)?
                }
            }
        }

        impl $crate::method::MethodConfig for $name {
            fn check(&self) -> Vec<(String, String)> {
                #[allow(unused_mut)]
                let mut issues: Vec<(String, String)> =
                    self.schedule().issues().into_iter().map(|(f, m)| (f.to_string(), m)).collect();
                $( let $c = self; issues.extend($rules); )?
                issues
            }
        }

        impl $name {
            /// The SGD schedule these settings describe.
            pub fn schedule(&self) -> $crate::train::Schedule {
                $crate::train::Schedule {
                    epochs: self.epochs,
                    lr: self.lr,
                    momentum: self.momentum,
                    weight_decay: self.weight_decay,
                    batch_size: self.batch_size,
                    milestones: self.milestones.clone(),
                    gamma: 0.1,
                    warmup_epochs: 0,
                    optimizer: self.optimizer,
                    nesterov: self.nesterov,
                    betas: self.betas.clone(),
                    eps: self.eps,
                }
            }
        }
    };
}

/// The given value, or the default when none is given (for [`sgd_config!`]'s optional fields).
#[doc(hidden)]
#[macro_export]
macro_rules! __sgd_default {
    (; $default:expr) => {
        $default
    };
    ($value:expr; $default:expr) => {
        $value
    };
}
