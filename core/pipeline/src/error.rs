//! What can stop a run, and how each failure reads to the user.

use std::path::PathBuf;

use crate::cache::CacheError;
use crate::eval::MiaError;
use crate::method::MethodError;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("output folder {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", method_message(label, source))]
    Method { label: String, source: MethodError },
    #[error("{label} left non-finite weights; no result was recorded for it")]
    NonFinite { label: String },
    #[error("evaluating {label}: {source}")]
    Eval { label: String, source: MiaError },
    #[error("evaluating {label}: {message}")]
    Metric { label: String, message: String },
    #[error("stage cache entry {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    /// A worker process of `run --jobs` failed (it said why on its own stderr).
    #[error("worker {worker} {message}")]
    Worker { worker: usize, message: String },
    /// Ctrl-C: the run stopped before starting `next` (finished stages are in the cache).
    #[error("interrupted before {next}; finished stages are cached: re-run to resume")]
    Cancelled { next: String },
    #[error(transparent)]
    OutputDir(#[from] crate::output::OutputError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

impl PipelineError {
    /// Whether the run stopped because the user asked it to (Ctrl-C), during a stage's training
    /// loop or between stages.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            PipelineError::Cancelled { .. }
                | PipelineError::Method {
                    source: MethodError::Train(crate::train::TrainError::Cancelled { .. }),
                    ..
                }
        )
    }
}

/// Training errors already name their run; other method errors get the label in front.
fn method_message(label: &str, e: &MethodError) -> String {
    match e {
        MethodError::Train(t) => t.to_string(),
        other => format!("{label}: {other}"),
    }
}
