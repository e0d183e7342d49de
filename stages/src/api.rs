//! The narrow interface between the engine and the stages.
//!
//! Invariants the engine relies on:
//! - `resolve_params` fills every default and rejects unknown keys, so two spellings of the same
//!   configuration resolve to the same JSON value (and hence the same cache key).
//! - `run` writes its outputs only under `out_dir`, checkpoints only under `resume_dir`, and is a pure
//!   function of (resolved params, input artifact contents, dataset contents, seed): the same inputs
//!   give bit-identical output files, whatever the thread count and whether it resumed.
//! - `version` is bumped whenever a change to a kind's own code can change its outputs, and
//!   `numerics::NUMERICS_VERSION` whenever shared arithmetic does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{de::DeserializeOwned, Serialize};

/// What a reference key of a node points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefTarget {
    /// A `[datasets.NAME]` entry; the engine hands the stage the decoded dataset artifact.
    Dataset,
    /// Another node whose kind is one of these.
    Node(&'static [&'static str]),
}

/// A key of a node's table that names an input (a dataset or another node) rather than a parameter.
/// References never enter the params; their content hashes enter the cache key by `role`.
#[derive(Debug, Clone, Copy)]
pub struct RefSpec {
    /// The TOML key, e.g. `from`, `labels`, `teacher`, `models`, `data`.
    pub key: &'static str,
    /// The role under which the input artifact dirs are passed in `RunCtx::inputs` (usually = key).
    pub role: &'static str,
    pub target: RefTarget,
    /// A list of references (`models = ["a", "b"]`) rather than one.
    pub many: bool,
    pub required: bool,
}

/// A parameter that failed validation: the dotted path of the key inside the node's table and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ParamError {
    /// e.g. `model.depth` (empty when the error concerns the table as a whole).
    pub path: String,
    pub message: String,
}

impl ParamError {
    /// The error of key `path` (dotted, empty for the whole table).
    pub fn new(path: &str, message: impl Into<String>) -> ParamError {
        ParamError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Receives progress of a running stage. All methods have no-op defaults.
pub trait Progress: Send + Sync {
    /// Called once when training starts (or resumes at `start_epoch`).
    fn begin(&self, _epochs: usize, _steps_per_epoch: usize, _start_epoch: usize) {}
    /// After each optimizer step.
    fn step(&self, _epoch: usize, _step: usize, _loss: f64, _images_per_sec: f64) {}
    /// After each epoch, with that epoch's metrics (loss, accuracy, ...).
    fn epoch(&self, _epoch: usize, _metrics: &BTreeMap<String, f64>) {}
    /// A free-form line (shown in logs).
    fn message(&self, _msg: &str) {}
}

/// A progress sink that ignores everything (tests, benches).
pub struct NoProgress;
impl Progress for NoProgress {}

/// Everything a stage kind's `run` gets.
pub struct RunCtx<'a> {
    /// The value `resolve_params` returned (defaults filled).
    pub params: &'a serde_json::Value,
    /// role → artifact directories of the referenced inputs (one for single refs, in order for `many`).
    pub inputs: &'a BTreeMap<String, Vec<PathBuf>>,
    /// Only for the `dataset` kind: the resolved dataset root directory.
    pub dataset_root: Option<&'a Path>,
    /// Empty directory the stage writes its output files into.
    pub out_dir: &'a Path,
    /// Directory that survives interruptions: epoch checkpoints live here. May hold a checkpoint
    /// from an earlier interrupted run with the same key; the stage resumes from it.
    pub resume_dir: &'a Path,
    pub seed: u64,
    /// Save an epoch checkpoint every this many epochs (0 = never). Does not affect results.
    pub checkpoint_every: usize,
    pub progress: &'a dyn Progress,
    /// Set on Ctrl-C; training loops check it between steps and return an error.
    pub cancel: &'a AtomicBool,
}

impl RunCtx<'_> {
    /// Parse the resolved params into the kind's typed struct.
    pub fn params<P: DeserializeOwned>(&self) -> anyhow::Result<P> {
        Ok(serde_json::from_value(self.params.clone())?)
    }
    /// The single input directory of `role`.
    pub fn input(&self, role: &str) -> anyhow::Result<&Path> {
        match self.inputs.get(role).map(|v| v.as_slice()) {
            Some([one]) => Ok(one.as_path()),
            _ => anyhow::bail!("stage expects exactly one `{role}` input"),
        }
    }
    pub fn check_cancel(&self) -> anyhow::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            anyhow::bail!(Cancelled);
        }
        Ok(())
    }
}

/// Returned (inside anyhow) when a stage stopped because `cancel` was set.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// What a finished stage reports besides its output files.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct StageOutput {
    /// Final scalar metrics, e.g. `top1`, `loss`, `knn_top1`.
    pub metrics: BTreeMap<String, f64>,
    /// Per-epoch curves, e.g. `loss`, `contrastive_acc`, `knn_top1`.
    pub series: BTreeMap<String, Vec<f64>>,
    /// Anything structured: per-class accuracy, confusion matrix, split class counts.
    pub details: serde_json::Value,
}

/// A stage kind as the engine sees it.
pub struct KindSpec {
    pub name: &'static str,
    /// Version of the kind's own logic: bump when a change to this kind (its data flow, its loss,
    /// its outputs' format) can change its outputs. A change to shared arithmetic (kernels, the
    /// network's layers, the optimizers) bumps [`crate::numerics::NUMERICS_VERSION`] instead, which
    /// is in the key of every kind with `numerics` set: one edit, however many kinds it touches.
    pub version: u32,
    /// One line for `semiflow kinds` and error messages.
    pub summary: &'static str,
    pub refs: &'static [RefSpec],
    /// What the kind is for: all the engine and the report know of its conventions.
    pub role: Role,
    /// Whether its outputs depend on floating-point arithmetic (network forward/backward passes):
    /// then `numerics::NUMERICS_VERSION` is part of its cache key.
    pub numerics: bool,
    /// Validate the node's parameter table (references removed) and fill defaults.
    pub resolve_params: fn(&serde_json::Value) -> Result<serde_json::Value, ParamError>,
    pub run: fn(&RunCtx) -> anyhow::Result<StageOutput>,
}

/// A kind's place in a pipeline, as the engine and the report see it. The engine reads stage
/// conventions (which parameter is a label fraction, which node scores which models) only here, so
/// a new kind of each role works in reports and claims without engine edits.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Decodes a dataset.
    Data,
    /// Draws a labeled subset of a dataset; `fraction` names the parameter holding the labeled
    /// fraction (the report's x-axis).
    Split { fraction: &'static str },
    /// Trains a model. Its label fraction is that of the first of the `labels_from` references
    /// that has one (its labeled split, or the teacher it learned from).
    Train {
        labels_from: &'static [&'static str],
    },
    /// Scores models: see [`EvalSpec`].
    Eval(EvalSpec),
}

/// Scalar metrics by name, as records hold them.
pub type Metrics = BTreeMap<String, f64>;

/// How an evaluating kind's records read as per-model results.
#[derive(Debug, Clone, Copy)]
pub struct EvalSpec {
    /// The reference key listing the scored models, in order.
    pub models: &'static str,
    /// The parameter naming the scored split ("test", "val", ...), and its default.
    pub split_param: &'static str,
    pub default_split: &'static str,
    /// The metrics of each scored model (in `models` order) from the record's metrics, given the
    /// number of models; `None` when the metrics are about the node as a whole.
    pub per_model: fn(&Metrics, usize) -> Option<Vec<Metrics>>,
}

impl KindSpec {
    /// The eval conventions of an evaluating kind.
    pub fn eval(&self) -> Option<&EvalSpec> {
        match &self.role {
            Role::Eval(e) => Some(e),
            _ => None,
        }
    }

    /// The shared numerics version for kinds whose outputs depend on floating-point arithmetic
    /// (part of their cache key), `None` for the others.
    pub fn numerics_version(&self) -> Option<u32> {
        self.numerics.then_some(crate::numerics::NUMERICS_VERSION)
    }
}

/// Deserialize `raw` into `P` (which should use `#[serde(deny_unknown_fields, default)]`), then
/// serialize back: the canonical, defaults-filled form. Errors carry the dotted key path.
pub fn resolve_typed<P: DeserializeOwned + Serialize>(
    raw: &serde_json::Value,
) -> Result<serde_json::Value, ParamError> {
    let p: P = serde_path_to_error::deserialize(raw.clone()).map_err(|e| {
        let path = e.path().to_string();
        ParamError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    serde_json::to_value(&p).map_err(|e| ParamError {
        path: String::new(),
        message: e.to_string(),
    })
}

/// Every stage kind, in a stable order (with the test kinds after them in builds with the
/// `test-kinds` feature, which only the engine's own tests enable).
pub fn registry() -> &'static [KindSpec] {
    #[cfg(feature = "test-kinds")]
    return crate::kinds::toy::with_test_kinds(crate::kinds::REGISTRY);
    #[cfg(not(feature = "test-kinds"))]
    crate::kinds::REGISTRY
}

/// Look a kind up by name.
pub fn kind(name: &str) -> Option<&'static KindSpec> {
    registry().iter().find(|k| k.name == name)
}
