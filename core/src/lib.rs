//! `unlearn` core: data, models, masks, the one training loop, metrics, the method registry,
//! configs, the pipeline and its reports. Methods (pruners, unlearners) are plugins that use these.

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod conformance;
pub mod data;
pub mod device;
pub mod eval;
pub mod forget;
pub mod grad;
pub mod io;
pub mod mask;
pub mod method;
pub mod model;
pub mod objective;
pub mod ops;
pub mod optim;
pub mod pipeline;
pub mod plot;
pub mod plugin;
pub mod registry;
pub mod report;
pub mod rng;
pub mod testing;
pub mod train;

pub use inventory;
pub use tch;
