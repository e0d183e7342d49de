//! The concrete, validated, sweep-expanded pipeline the executor runs.
//!
//! `pipeline::load` produces it from a TOML file; everything downstream (keys, DAG, execution,
//! status, audit, report) consumes only this type, never the raw TOML.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A whole pipeline after parsing, validation, `--set` overrides and sweep expansion.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `[pipeline].name`.
    pub name: String,
    /// The pipeline file as given (for messages only; never part of a cache key).
    pub file: PathBuf,
    /// Nodes in a topological order (inputs before users). Datasets appear as nodes of kind
    /// `dataset` named `dataset.<name>`.
    pub nodes: Vec<PlanNode>,
    /// The `--set` overrides as typed by the user, for provenance.
    pub overrides: Vec<String>,
    /// Sweep variables and their values, in declaration order, for reports.
    pub sweep: Vec<(String, Vec<serde_json::Value>)>,
    /// `[executor]`: where nodes run (command-line flags win over it).
    pub executor: ExecutorSettings,
    /// `[claims.NAME]`, in declaration order (checked by `semiflow report` and `audit --claims`).
    pub claims: Vec<Claim>,
}

/// `[executor]` of a pipeline file; every key optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutorSettings {
    /// `"local"` (default) or `"slurm"`.
    pub kind: Option<String>,
    /// Default Slurm partition of every job (a node's `resources.partition` wins).
    pub partition: Option<String>,
    /// Jobs queued or running at once (Slurm).
    pub max_jobs: Option<usize>,
    /// Seconds between two `squeue` polls (Slurm).
    pub poll_interval: Option<f64>,
    /// Resubmissions of a failed job (Slurm).
    pub retries: Option<u32>,
    /// How job states are learned: `"auto"`, `"sacct"` or `"squeue"` (Slurm).
    pub state_query: Option<String>,
    /// Seconds a job's state may stay unknown before it is reported (Slurm).
    pub unknown_state_timeout: Option<f64>,
}

/// What a node asks of a cluster (`resources = { ... }`): never part of the cache key.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Slurm's `--mem` syntax: `"4G"`, `"500M"`, or a number of megabytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Slurm's `--time` syntax (`"90"` minutes, `"1:30:00"`, `"2-00:00:00"`) or `"30m"`, `"2h"`, `"1d"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Further `sbatch` arguments, verbatim (`["--qos=long"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
}

/// A stated comparison between two methods' metrics (see `pipeline/claims.rs`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Claim {
    pub name: String,
    /// Base node names whose evaluated models are compared.
    pub better: String,
    pub than: String,
    /// `top1` or `top5`.
    pub metric: String,
    /// `test` or `val`.
    pub split: String,
    /// Sweep variable → the values to check at (empty: every point where both have results).
    pub at: Vec<(String, Vec<serde_json::Value>)>,
    /// Percentage points `better` must lead by.
    pub margin: f64,
    pub kind: ClaimKind,
    pub description: String,
    /// `[x, y]`: compare the gain `better − than` with the gain `x − y` instead of with zero
    /// ("the bigger model gains more from pretraining").
    pub gain_over: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// `better` leads by more than `margin`, beyond noise.
    Better,
    /// `better` is not behind `margin` beyond noise.
    AtLeast,
}

/// One concrete node.
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// Unique display name; expanded nodes show their sweep point: `finetune[label_fraction=0.01]`.
    pub name: String,
    /// The `[nodes.X]` table name it came from (`finetune`).
    pub base: String,
    /// The sweep point of this node (only the variables it depends on, directly or via inputs).
    pub point: BTreeMap<String, serde_json::Value>,
    /// Stage kind name (a `semiflow_stages::api::KindSpec::name`).
    pub kind: String,
    /// Parameters resolved by the kind's typed struct: defaults filled, references removed.
    pub params: serde_json::Value,
    /// role → indices (into `Plan::nodes`) of the nodes whose outputs this node reads.
    pub inputs: BTreeMap<String, Vec<usize>>,
    /// Only for `dataset` nodes: the resolved dataset root directory; for `import` nodes the model
    /// file (fingerprinted by content, not hashed as a path).
    pub dataset_root: Option<PathBuf>,
    /// The node's seed (pipeline seed, or the node's own `seed`, possibly a sweep variable).
    pub seed: u64,
    /// Epoch-checkpoint period for training kinds (not part of the cache key).
    pub checkpoint_every: usize,
    /// Cluster resources of the node's job (not part of the cache key).
    pub resources: Resources,
}

impl Plan {
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}
