//! `import`: a model file brought into the store. Never declared as a node: the pipeline loader
//! makes one for every `init = { file = "…", format = "torchvision" | "safetensors" }` of a
//! `pretrain`, `finetune` or `distill` node. The file is fingerprinted by content like a dataset
//! root (its name, size and bytes; not its directory), so the consuming node's cache key holds the
//! file's content through this node's artifact, and moving the file keeps every key.
//!
//! Output: the file's tensors under semiflow's names plus what architecture they are
//! ([`crate::model::import`]). The helpers below are what the consuming kinds call.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::train;
use crate::api::{resolve_typed, KindSpec, ParamError, Role, RunCtx, StageOutput};
use crate::data::Dataset;
use crate::model::import::{self, ImportInfo};
use crate::model::torchvision::Naming;
use crate::model::{ModelCfg, Network};

/// The kind's name; the pipeline loader creates its nodes.
pub const KIND: &str = "import";

pub const SPEC: KindSpec = KindSpec {
    name: KIND,
    version: 1,
    summary: "a model file given as `init = { file, format }` (made by the loader, not declared)",
    refs: &[],
    role: Role::Data,
    numerics: false,
    resolve_params: resolve,
    run,
};

/// The parameters of an `init = { ... }` table besides `file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// Key names in the file: `torchvision` or `safetensors` (semiflow's own).
    pub format: Naming,
}

fn resolve(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    resolve_typed::<ImportParams>(raw)
}

fn run(ctx: &RunCtx) -> Result<StageOutput> {
    let p: ImportParams = ctx.params()?;
    let file = ctx
        .dataset_root
        .context("the import stage was given no file")?;
    let info = import::convert(file, p.format, ctx.out_dir)?;
    ctx.progress.message(&format!(
        "{}: a {} ({} tensors, architecture from its {})",
        file.display(),
        info.describe(),
        info.tensors,
        info.arch_from
    ));
    Ok(StageOutput {
        metrics: [("tensors".to_string(), info.tensors as f64)].into(),
        series: Default::default(),
        details: serde_json::to_value(&info)?,
    })
}

/// Whether the node was given an `init` file.
fn init_dir<'a>(ctx: &'a RunCtx) -> Option<&'a Path> {
    ctx.inputs
        .get("init")
        .and_then(|v| v.first())
        .map(|p| p.as_path())
}

/// `pretrain`: load the `init` file's encoder (and the head layers it has) into the freshly
/// built network; nothing without one.
pub fn init_pretrain(ctx: &RunCtx, net: &Network) -> Result<Option<ImportInfo>> {
    match init_dir(ctx) {
        Some(dir) => {
            let info = import::load_into(net, dir, "this pretrain node's network")?;
            ctx.progress.message(&format!(
                "init: encoder{} from {}",
                match net.head_kept().min(info.head_kept) {
                    0 => String::new(),
                    n => format!(" and {n} head layer(s)"),
                },
                info.file
            ));
            Ok(Some(info))
        }
        None => Ok(None),
    }
}

/// `finetune`: the network to fine-tune from `from` (a pretrain checkpoint, or the import of an
/// `init` file), with a zero classifier on head output `head_layer`.
pub fn finetune_start(
    dir: &Path,
    head_layer: usize,
    num_classes: usize,
    ds: &Dataset,
    device: &Device,
    seed: u64,
) -> Result<Network> {
    if !import::is_import(dir) {
        return Network::from_pretrained(dir, head_layer, num_classes, device, seed);
    }
    import::classifier_from_import(
        dir,
        head_layer,
        num_classes,
        ds.train.h,
        ds.train.c,
        device,
        seed,
    )
}

/// `distill`'s `init`: a pretrain checkpoint (the student takes its architecture, checked
/// against `cfg` by the caller), a classifier checkpoint (the student is that network), or an
/// import (loaded into a student built from `cfg`). Also says which: "pretrain", "classifier",
/// "file".
pub fn student_init(
    dir: &Path,
    cfg: &ModelCfg,
    ds: &Dataset,
    head_layer: usize,
    num_classes: usize,
    device: &Device,
    seed: u64,
) -> Result<(Network, &'static str)> {
    if !import::is_import(dir) {
        // The sidecar says what the checkpoint is, so the weights are read once.
        let Some(c) = crate::model::read_sidecar(dir)?.classifier else {
            let net = Network::from_pretrained(dir, head_layer, num_classes, device, seed)?;
            return Ok((net, "pretrain"));
        };
        // A classifier checkpoint (a fine-tuned, distilled or supervised network): the student
        // starts as that network, head and classifier included, so both must sit where the
        // student's do.
        anyhow::ensure!(
            c.num_classes == num_classes && c.head_layer == head_layer,
            "init {} is a classifier with {} classes on head layer {}, but the student has {} \
             classes on head layer {} (give the student the init's `head_layer`, or init from a \
             pretrain node)",
            dir.display(),
            c.num_classes,
            c.head_layer,
            num_classes,
            head_layer
        );
        return Ok((Network::load(dir, device)?, "classifier"));
    }
    let net = Network::new_classifier(
        cfg,
        ds.train.h,
        ds.train.c,
        num_classes,
        head_layer,
        device,
        seed,
    )?;
    import::load_into(&net, dir, "the student")?;
    train::check_input_shape(&net, ds, "the student")?;
    Ok((net, "file"))
}
