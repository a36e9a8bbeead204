//! `unlearn-api`: what a plugin (a pruner, an unlearner, an attack) builds against, and nothing
//! heavier. The model handle and architectures, masks, data sets with their split and
//! augmentation, streams and batches, core's one training loop with its optimizers and
//! mid-training checkpoints, objectives, the gradient tools, the method traits and their
//! registration, the plugin ABI (both sides), and the conformance suite (feature
//! `conformance`). Data formats, metrics and the pipeline live in `unlearn-data`,
//! `unlearn-eval` and `unlearn-pipeline`, which build on this crate.

pub mod bounds;
pub mod checkpoint;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod data;
pub mod device;
pub mod exec;
pub mod forget;
pub mod grad;
pub mod io;
pub mod issue;
pub mod mask;
pub mod method;
pub mod metric;
pub mod model;
pub mod objective;
pub mod ops;
pub mod optim;
pub mod plugin;
pub mod registry;
pub mod rng;
pub mod scenario;
pub mod testing;
pub mod train;

// Lets `sgd_config!`'s serde attributes name this crate's helpers by one path, inside this crate
// and in the crates that use it.
extern crate self as unlearn_api;

pub use inventory;
pub use tch;
