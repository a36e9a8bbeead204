//! Which parameters of a model a pruner prunes: a selection by shape (conv weights, linear
//! weights or both), never biases or BatchNorm.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::Model;

/// Which parameters a pruner prunes (a pruner config's `prunable`). Biases and BatchNorm
/// parameters (1-D) are never selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Prunable {
    /// Every convolution weight (the paper's default).
    #[default]
    #[serde(rename = "conv")]
    Conv,
    /// Every linear weight (2-D), the classifier included.
    #[serde(rename = "linear")]
    Linear,
    /// Every convolution and linear weight.
    #[serde(rename = "conv+linear")]
    ConvLinear,
}

impl Prunable {
    /// Whether a parameter of this shape is selected: a conv weight has 3 or more dimensions
    /// (`[out, in, k...]`), a linear weight 2.
    pub fn selects(self, shape: &[i64]) -> bool {
        let d = shape.len();
        match self {
            Prunable::Conv => d >= 3,
            Prunable::Linear => d == 2,
            Prunable::ConvLinear => d >= 2,
        }
    }

    /// The model's trainable parameters this selection prunes, by name.
    pub fn select(self, model: &Model) -> BTreeMap<String, Tensor> {
        model
            .parameters()
            .into_iter()
            .filter(|(_, t)| self.selects(&t.size()))
            .collect()
    }

    /// The name configs use (`conv`, `linear`, `conv+linear`).
    pub fn name(self) -> &'static str {
        match self {
            Prunable::Conv => "conv",
            Prunable::Linear => "linear",
            Prunable::ConvLinear => "conv+linear",
        }
    }
}

impl std::fmt::Display for Prunable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
