//! An example plugin crate with two unlearners from SalUn (Fan et al., ICLR 2024), the
//! follow-up of the paper this tool reproduces:
//!
//! - [`Rl`] (`RL`, random labelling): fine-tune on `D_f ∪ D_r` with cross-entropy, where every
//!   forget sample's label is replaced once, before training, by a uniformly random class other
//!   than its true one ([`random_other_labels`]); retain labels are unchanged.
//! - [`SalUn`] (`SalUn`, saliency unlearning): the same training, but only the weights most
//!   salient to the forget loss move. The saliency of a weight is `|d/dw sum_{D_f} CE|` at the
//!   original weights ([`saliency_mask`]); the top `share` of all trainable weights (globally)
//!   form a second 0/1 mask that multiplies every gradient before each step ([`SalientCe`]).
//!
//! Both are written exactly as a built-in method is (a typed config from [`sgd_config!`],
//! [`UnlearnMethod`], [`Unlearner`], core's training loop through `ctx.train`), and the same
//! code is linked as a built-in (rlib) or loaded by the host as a dynamic plugin (cdylib) through
//! the one [`export_plugin!`] line at the end of this file.
//!
//! [`sgd_config!`]: unlearn_api::sgd_config
//! [`export_plugin!`]: unlearn_api::export_plugin
//! [`UnlearnMethod`]: unlearn_api::method::UnlearnMethod
//! [`Unlearner`]: unlearn_api::method::Unlearner

mod rl;
mod salun;

pub use rl::{LABEL_PURPOSE, Rl, RlConfig, random_label_stream, random_other_labels};
pub use salun::{SalUn, SalUnConfig, SaliencyMask, SalientCe, saliency_mask};

unlearn_api::export_plugin! { unlearner: Rl, unlearner: SalUn }
