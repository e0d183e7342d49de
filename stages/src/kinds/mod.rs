//! One module per stage kind, and the registry the engine reads.

pub mod dataset;
pub mod distill;
pub mod eval;
pub mod finetune;
pub mod pretrain;
pub mod split;
pub mod supervised;
pub mod train;

use crate::api::KindSpec;

pub static REGISTRY: &[KindSpec] = &[];
