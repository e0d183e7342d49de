//! One module per stage kind, and the registry the engine reads.

pub mod dataset;
pub mod eval;
pub mod split;
pub mod toy;

use crate::api::KindSpec;

/// Every shipped stage kind, in pipeline order.
pub static REGISTRY: &[KindSpec] = &[dataset::SPEC, split::SPEC, eval::SPEC];
