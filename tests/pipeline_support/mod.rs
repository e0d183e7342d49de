//! Stand-in stage kinds for pipeline tests: the same shapes (references, typed parameters with
//! defaults, `deny_unknown_fields`) as the real kinds in `semiflow-stages`, without any training.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use semiflow_stages::api::{
    resolve_typed, KindSpec, ParamError, RefSpec, RefTarget, Role, RunCtx, StageOutput,
};
use serde::{Deserialize, Serialize};

fn no_run(_: &RunCtx) -> anyhow::Result<StageOutput> {
    Ok(StageOutput::default())
}

fn train() -> String {
    "train".into()
}
fn test() -> String {
    "test".into()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetParams {
    format: String,
    #[serde(default = "train")]
    train: String,
    #[serde(default = "test")]
    test: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ModelParams {
    depth: u32,
    width: f64,
}
impl Default for ModelParams {
    fn default() -> Self {
        ModelParams {
            depth: 18,
            width: 1.0,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PretrainParams {
    epochs: usize,
    model: ModelParams,
    lr: f64,
}
impl Default for PretrainParams {
    fn default() -> Self {
        PretrainParams {
            epochs: 10,
            model: ModelParams::default(),
            lr: 0.3,
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct SplitParams {
    fraction: Option<f64>,
    per_class: Option<usize>,
}

fn resolve_split(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    let v = resolve_typed::<SplitParams>(raw)?;
    if v["fraction"].is_null() == v["per_class"].is_null() {
        return Err(ParamError {
            path: String::new(),
            message: "set exactly one of `fraction` and `per_class`".into(),
        });
    }
    Ok(v)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FinetuneParams {
    head_layer: usize,
    epochs: usize,
}
impl Default for FinetuneParams {
    fn default() -> Self {
        FinetuneParams {
            head_layer: 1,
            epochs: 10,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DistillParams {
    epochs: usize,
    temperature: f64,
}
impl Default for DistillParams {
    fn default() -> Self {
        DistillParams {
            epochs: 10,
            temperature: 1.0,
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EvalParams {}

const fn node(
    key: &'static str,
    kinds: &'static [&'static str],
    many: bool,
    required: bool,
) -> RefSpec {
    RefSpec {
        key,
        role: key,
        target: RefTarget::Node(kinds),
        many,
        required,
    }
}
const fn data(required: bool) -> RefSpec {
    RefSpec {
        key: "data",
        role: "data",
        target: RefTarget::Dataset,
        many: false,
        required,
    }
}

const fn kind(
    name: &'static str,
    refs: &'static [RefSpec],
    trains: bool,
    resolve_params: fn(&serde_json::Value) -> Result<serde_json::Value, ParamError>,
) -> KindSpec {
    KindSpec {
        name,
        version: 1,
        summary: "test kind",
        refs,
        role: if trains {
            Role::Train { labels_from: &[] }
        } else {
            Role::Data
        },
        numerics: trains,
        resolve_params,
        run: no_run,
    }
}

pub static KINDS: &[KindSpec] = &[
    kind("dataset", &[], false, resolve_typed::<DatasetParams>),
    kind(
        "pretrain",
        &[data(true)],
        true,
        resolve_typed::<PretrainParams>,
    ),
    kind("split", &[data(true)], false, resolve_split),
    kind(
        "finetune",
        &[
            node("from", &["pretrain"], false, true),
            node("labels", &["split"], false, true),
            // Required by the real kind; optional here so the plan tests' small fixtures stay short.
            data(false),
        ],
        true,
        resolve_typed::<FinetuneParams>,
    ),
    kind(
        "distill",
        &[
            node("teacher", &["finetune", "distill"], false, true),
            data(true),
            node("labels", &["split"], false, false),
            node("init", &["pretrain"], false, false),
        ],
        true,
        resolve_typed::<DistillParams>,
    ),
    kind(
        "supervised",
        &[data(true), node("labels", &["split"], false, true)],
        true,
        resolve_typed::<FinetuneParams>,
    ),
    kind(
        "eval",
        &[
            node(
                "models",
                &["finetune", "supervised", "distill", "pretrain"],
                true,
                true,
            ),
            data(false),
            node("holdout", &["split"], false, false),
        ],
        false,
        resolve_typed::<EvalParams>,
    ),
];

/// A scratch directory holding `pipeline.toml` (with `text`) and an existing `data/` directory.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(text: &str) -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("data")).expect("data dir");
        std::fs::write(dir.path().join("pipeline.toml"), text).expect("write pipeline");
        Scratch { dir }
    }

    pub fn file(&self) -> PathBuf {
        self.dir.path().join("pipeline.toml")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn load(
        &self,
        overrides: &[&str],
    ) -> Result<semiflow::plan::Plan, semiflow::pipeline::PipelineError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        semiflow::pipeline::load_with(&self.file(), &overrides, &KINDS)
    }
}

/// The pipeline from the issue, on a dataset under `data/`.
pub const SIMCLR: &str = r#"
[pipeline]
name = "cifar10-simclrv2"
seed = 7

[datasets.cifar10]
format = "image-folder"
root = "data"

[sweep]
label_fraction = [0.01, 0.1]
seed = [0, 1]

[nodes.pretrain]
kind = "pretrain"
data = "cifar10"
model = { depth = 18, width = 0.25 }
epochs = 20

[nodes.split]
kind = "split"
data = "cifar10"
fraction = "${sweep.label_fraction}"

[nodes.finetune]
kind = "finetune"
from = "pretrain"
labels = "split"
seed = "${sweep.seed}"

[nodes.eval]
kind = "eval"
models = ["finetune"]
data = "cifar10"
"#;
