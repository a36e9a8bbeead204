//! `unlearn-pipeline`: configs, runs and studies with their stage cache, reports and plots, on
//! top of `unlearn-api` (models, masks, the loop, methods, the registry and the plugin ABI),
//! `unlearn-data` (data sets) and `unlearn-eval` (metrics), which it re-exports under the module
//! names the binary uses.

pub mod bench;
pub mod cache;
pub mod config;
pub mod error;
pub mod lock;
pub mod output;
pub mod pipeline;
pub mod plot;
pub mod report;
pub mod results;
pub mod stages;

pub use unlearn_api::conformance;
pub use unlearn_api::{
    bounds, checkpoint, device, exec, forget, grad, io, mask, method, metric, model, objective,
    ops, optim, plugin, registry, rng, scenario, testing, train,
};
pub use unlearn_api::{
    export_plugin, register_arch, register_attack, register_metric, register_pruner,
    register_scenario, register_unlearner, sgd_config,
};
pub use unlearn_api::{inventory, tch};
pub use unlearn_data as data;
pub use unlearn_eval as eval;
