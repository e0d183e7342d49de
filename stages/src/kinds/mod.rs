//! One module per stage kind, and the registry the engine reads.

use crate::api::KindSpec;

pub mod toy;

pub static REGISTRY: &[KindSpec] = &[];
