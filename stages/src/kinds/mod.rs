//! One module per stage kind, and the registry the engine reads.

pub mod dataset;
pub mod distill;
pub mod eval;
pub mod finetune;
pub mod import;
pub mod pretrain;
pub mod split;
pub mod supervised;
#[cfg(feature = "test-kinds")]
pub mod toy;
pub mod train;

use crate::api::KindSpec;

/// Every shipped stage kind, in pipeline order.
pub static REGISTRY: &[KindSpec] = &[
    dataset::SPEC,
    split::SPEC,
    pretrain::SPEC,
    finetune::SPEC,
    supervised::SPEC,
    distill::SPEC,
    eval::SPEC,
    import::SPEC,
];
