//! What the training kinds share besides the loop: seeds, loading their inputs, the
//! schedule, optimizer parameter selection, state naming, labeled batches, the classifier trainer
//! (finetune, supervised) and parameter checks.

use std::sync::Arc;

use anyhow::Context as _;
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::{batches_per_epoch, prefixed, with_prefix, LoopSpec};
use crate::api::RunCtx;
use crate::augment::AugmentCfg;
use crate::data::loader::{augment_batch, labels_tensor, step_batch};
use crate::data::{derive_seed, Dataset, Images};
use crate::model::{ModelCfg, Network};
use crate::optim::{Optimizer, Param, Scaling};

/// Per-purpose seeds derived from the node's seed, so that e.g. weight init and batch order are
/// independent streams.
pub fn seed_for(ctx: &RunCtx, purpose: &str) -> u64 {
    derive_seed(purpose, &[ctx.seed])
}

/// The dataset artifact behind reference `role`; its train images must be square.
pub fn load_dataset(ctx: &RunCtx, role: &str) -> anyhow::Result<Dataset> {
    let dir = ctx.input(role)?;
    let ds = Dataset::load(dir)
        .with_context(|| format!("loading dataset `{role}` from {}", dir.display()))?;
    anyhow::ensure!(
        ds.train.h == ds.train.w,
        "dataset {}: images are {}×{}; the models take square images",
        dir.display(),
        ds.train.h,
        ds.train.w
    );
    anyhow::ensure!(
        ds.train.n > 0,
        "dataset {} has no train images",
        dir.display()
    );
    Ok(ds)
}

/// Refuse a checkpoint (`what`, e.g. "the pretrained network {dir}") whose input shape differs
/// from the dataset's images.
pub fn check_input_shape(net: &Network, ds: &Dataset, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        net.image_size() == ds.train.h && net.in_channels() == ds.train.c,
        "{what} takes {}×{} images with {} channels, the dataset has {}×{}×{}",
        net.image_size(),
        net.image_size(),
        net.in_channels(),
        ds.train.h,
        ds.train.w,
        ds.train.c
    );
    Ok(())
}

/// The labeled train-sample ids of the split artifact behind reference `role`, checked against
/// the train set size.
pub fn load_labeled(ctx: &RunCtx, role: &str, n_train: usize) -> anyhow::Result<Vec<usize>> {
    let dir = ctx.input(role)?;
    let ids = crate::data::split::load_ids(dir, crate::kinds::split::SPLIT_FILE)?;
    anyhow::ensure!(!ids.is_empty(), "split {} selects no images", dir.display());
    if let Some(bad) = ids.iter().find(|&&i| i >= n_train) {
        anyhow::bail!(
            "split {} names train sample {bad} but the dataset has {n_train}: the split was drawn \
             from another dataset",
            dir.display()
        );
    }
    Ok(ids)
}

/// Learning-rate settings shared by the training kinds' params.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub lr_scaling: Scaling,
    pub warmup_epochs: f64,
}

/// The loop shape for `n` training samples: full batches (see [`batches_per_epoch`]), the peak
/// learning rate scaled by the batch size actually used, warmup rounded to whole steps.
/// Returns the spec and that batch size.
pub fn loop_spec(kind: &'static str, s: Schedule, n: usize) -> anyhow::Result<(LoopSpec, usize)> {
    let (steps, batch) = batches_per_epoch(n, s.batch_size)?;
    let spec = LoopSpec {
        kind,
        epochs: s.epochs,
        steps_per_epoch: steps,
        peak_lr: s.lr_scaling.scale(s.lr, batch),
        warmup_steps: (s.warmup_epochs * steps as f64).round() as usize,
    };
    Ok((spec, batch))
}

/// The parameters an optimizer updates: all of the network's trainables (BatchNorm γ/β and
/// biases flagged `exclude_from_decay`; LARS also skips the classifier's trust ratio, see
/// [`crate::optim::Lars::no_adaptation`]).
pub fn optimizer_params(net: &Network) -> Vec<Param> {
    net.trainable()
}

/// `model.`/`opt.` names for the state of a network and its optimizer.
pub fn net_and_opt_state(net: &Network, opt: &dyn Optimizer) -> Vec<(String, Tensor)> {
    let mut out = prefixed("model.", net.state_tensors());
    out.extend(prefixed("opt.", opt.state()));
    out
}

/// Inverse of [`net_and_opt_state`].
pub fn load_net_and_opt(
    net: &Network,
    opt: &mut dyn Optimizer,
    state: &[(String, Tensor)],
) -> anyhow::Result<()> {
    net.load_state(&with_prefix(state, "model."))
        .context("restoring the network")?;
    opt.load_state(&with_prefix(state, "opt."))
        .context("restoring the optimizer")
}

/// Batches of `ids` (a subset of `images`, e.g. a labeled split) reshuffled every epoch and
/// augmented with `aug`: `(images (B,C,H,W), labels (B,))`.
pub fn labeled_batches(
    images: Arc<Images>,
    ids: Arc<Vec<usize>>,
    batch: usize,
    aug: AugmentCfg,
    seed: u64,
    device: Device,
) -> impl Fn(usize, usize) -> anyhow::Result<(Tensor, Tensor)> + Send + 'static {
    move |epoch, step| {
        let chosen: Vec<usize> = step_batch(ids.len(), seed, epoch, step, batch)
            .iter()
            .map(|&i| ids[i])
            .collect();
        let x = augment_batch(&images, &chosen, &aug, seed, epoch, 0, &device)?;
        let y = labels_tensor(&images, &chosen, &device)?;
        Ok((x, y))
    }
}

/// Checks shared by the training kinds' params; `Err` names the offending key.
pub fn check_schedule(s: &Schedule, momentum: f64) -> Result<(), crate::api::ParamError> {
    if s.epochs == 0 {
        return Err(crate::api::ParamError::new("epochs", "must be at least 1"));
    }
    if s.batch_size == 0 {
        return Err(crate::api::ParamError::new(
            "batch_size",
            "must be at least 1",
        ));
    }
    if !(s.lr.is_finite() && s.lr >= 0.0) {
        return Err(crate::api::ParamError::new(
            "lr",
            format!("must be a finite number ≥ 0, got {}", s.lr),
        ));
    }
    if !(s.warmup_epochs.is_finite()
        && s.warmup_epochs >= 0.0
        && s.warmup_epochs <= s.epochs as f64)
    {
        return Err(crate::api::ParamError::new(
            "warmup_epochs",
            format!("must be in [0, epochs], got {}", s.warmup_epochs),
        ));
    }
    if !(0.0..1.0).contains(&momentum) {
        return Err(crate::api::ParamError::new(
            "momentum",
            format!("must be in [0, 1), got {momentum}"),
        ));
    }
    Ok(())
}

/// Validate a `model` table, reporting errors under the key `model`.
pub fn check_model(cfg: &ModelCfg) -> Result<(), crate::api::ParamError> {
    cfg.validate().map_err(|e| crate::api::ParamError {
        path: "model".into(),
        message: format!("{e:#}"),
    })
}

/// [`crate::api::resolve_typed`] followed by the params' own checks.
pub fn resolve_checked<P>(
    raw: &serde_json::Value,
    check: fn(&P) -> Result<(), crate::api::ParamError>,
) -> Result<serde_json::Value, crate::api::ParamError>
where
    P: serde::de::DeserializeOwned + Serialize,
{
    let value = crate::api::resolve_typed::<P>(raw)?;
    let p: P = serde_json::from_value(value.clone()).map_err(|e| crate::api::ParamError {
        path: String::new(),
        message: e.to_string(),
    })?;
    check(&p)?;
    Ok(value)
}
