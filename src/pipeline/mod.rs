//! Pipeline files: TOML → validated, sweep-expanded [`Plan`](crate::plan::Plan).
//!
//! ```toml
//! [pipeline]
//! name = "cifar10-simclrv2"   # required
//! seed = 0                    # default 0; a node's own `seed` wins
//!
//! [datasets.cifar10]          # becomes plan node `dataset.cifar10` (kind `dataset`) if referenced
//! format = "image-folder"     # checked by the `dataset` kind, like train/test
//! root = "data/cifar10"       # relative to this file; ${VAR} and ${VAR:-default} expanded
//!
//! [sweep]                     # optional; every combination a node depends on becomes a node
//! label_fraction = [0.01, 0.1]
//!
//! [defaults.finetune]        # optional: keys every node of that kind gets unless it sets them
//! optimizer = "sgd"
//!
//! [nodes.finetune]
//! kind = "finetune"           # required: a stage kind
//! from = "pretrain"           # references, as the kind's RefSpecs declare them
//! labels = "split"
//! seed = "${sweep.seed}"      # engine keys: seed, checkpoint_every (default 1), resources (never hashed)
//! resources = { cpus = 2, mem = "4G", time = "1h" }   # Slurm executor only
//!
//! [executor]                  # optional: kind = "slurm", partition, max_jobs, poll_interval, retries,
//!                             #   state_query, unknown_state_timeout
//! head_layer = 1              # everything else: the kind's parameters
//! ```
//!
//! A string that is exactly `"${sweep.VAR}"` takes the sweep value with its type; inside a longer
//! string the value is interpolated. Expanded nodes are named `base[var=value,...]`.
//!
//! - `spanned`: the parsed TOML tree with source positions.
//! - `overrides`: `--set node.key=value`.
//! - `defaults`: `[defaults.KIND]`, copied into every node of that kind.
//! - `schema`: the declared document; `[pipeline]`, `[datasets.*]`, `[sweep]`.
//! - `nodes`, `refs`: `[nodes.*]` tables and their references.
//! - `subst`: `${sweep.VAR}` and `${ENV}` placeholders.
//! - `params`: mapping a stage kind's parameter errors back to source positions.
//! - `expand`: dependency order, sweep expansion, resolved parameters.
//! - `error`: diagnostics (`file:line:col: key: message` + `help:`).

mod claims;
mod defaults;
mod error;
mod expand;
mod load;
mod nodes;
mod overrides;
mod params;
mod refs;
mod resources;
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
