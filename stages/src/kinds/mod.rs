//! One module per stage kind, and the registry the engine reads.

pub mod eval;

use crate::api::KindSpec;

pub static REGISTRY: &[KindSpec] = &[];
