//! Pipeline files: TOML → validated, sweep-expanded [`Plan`].
//!
//! - [`spanned`]: the parsed TOML tree with source positions.
//! - [`overrides`]: `--set node.key=value`.
//! - [`schema`]: structural validation of `[pipeline]`, `[datasets.*]`, `[sweep]`, `[nodes.*]`.
//! - [`subst`]: `${sweep.VAR}` and `${ENV}` placeholders.
//! - [`params`]: mapping a stage kind's parameter errors back to source positions.
//! - [`expand`]: dependency order, sweep expansion, resolved parameters.
//! - [`error`]: diagnostics (`file:line:col: key: message` + `help:`).

mod error;
mod expand;
mod load;
mod overrides;
mod params;
mod schema;
mod spanned;
mod subst;

use semiflow_stages::api::KindSpec;

pub use error::{Diagnostic, Location, PipelineError};
pub use load::{load, load_with};

/// Where the loader finds stage kinds. The engine uses [`Registry`]; tests supply their own kinds.
pub trait KindLookup {
    fn kind(&self, name: &str) -> Option<&KindSpec>;
    /// Every kind name, for "known kinds: ..." help.
    fn names(&self) -> Vec<&str>;
}

/// The stage kinds compiled into `semiflow-stages`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Registry;

impl KindLookup for Registry {
    fn kind(&self, name: &str) -> Option<&KindSpec> {
        semiflow_stages::api::kind(name)
    }
    fn names(&self) -> Vec<&str> {
        semiflow_stages::api::registry()
            .iter()
            .map(|k| k.name)
            .collect()
    }
}

/// A fixed list of kinds (tests, tools): `load_with(path, &[], &KINDS)` with `KINDS: &[KindSpec]`.
impl KindLookup for &[KindSpec] {
    fn kind(&self, name: &str) -> Option<&KindSpec> {
        self.iter().find(|k| k.name == name)
    }
    fn names(&self) -> Vec<&str> {
        self.iter().map(|k| k.name).collect()
    }
}

/// The stage kind that every `[datasets.X]` entry becomes.
pub const DATASET_KIND: &str = "dataset";

/// Plan-node name of a `[datasets.X]` entry.
pub fn dataset_node_name(dataset: &str) -> String {
    format!("dataset.{dataset}")
}
