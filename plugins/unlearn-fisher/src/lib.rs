//! One-shot unlearners for unlearn (the paper's baselines): Fisher forgetting (`FF`) and influence unlearning
//! (`IU`). Neither runs the training loop: both use core's gradient tools
//! ([`unlearn_api::grad`]) and change the weights once, re-applying the mask afterwards so that
//! pruned weights stay exactly 0.

pub mod ff;
pub mod iu;

pub use ff::{Ff, FfConfig, FfReport};
pub use iu::{Iu, IuConfig, IuReport};

unlearn_api::register_unlearner!(Ff);
unlearn_api::register_unlearner!(Iu);
