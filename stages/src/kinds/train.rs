//! The training loop every training kind shares: learning-rate schedule, batch prefetching,
//! non-finite-loss check, cancellation, progress, per-epoch metrics, and epoch checkpoints that
//! make an interrupted run resume bit-identically.
//!
//! Determinism contract: a kind's batches are a pure function of (seed, epoch, step) and its
//! trainer's whole mutable state is in [`Trainer::state`], so training epochs `0..E` in one go and
//! training `0..k`, checkpointing, and resuming `k..E` in a fresh process run the same arithmetic.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::api::RunCtx;
use crate::augment::AugmentCfg;
use crate::data::loader::{augment_batch, epoch_order, labels_tensor, Prefetcher};
use crate::data::{derive_seed, Dataset, Images};
use crate::loss::{accuracy, cross_entropy};
use crate::model::{ModelCfg, Network};
use crate::optim::{lr_at, Optimizer, Param, Scaling};

/// File name of the epoch checkpoint inside `resume_dir`.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Bumped when the checkpoint layout changes; older checkpoints are ignored (training restarts).
pub const CHECKPOINT_FORMAT: u32 = 1;
/// safetensors metadata key holding the [`LoopState`] JSON. Keeping it inside the one file makes
/// the rename that publishes a checkpoint atomic for weights and loop state together.
const STATE_KEY: &str = "semiflow.loop_state";
/// Batches built ahead of the step that consumes them.
const PREFETCH_DEPTH: usize = 2;

/// What one training kind does per step; the loop does the rest.
pub trait Trainer {
    /// One step's input, built on the prefetch thread.
    type Batch: Send;
    /// Forward pass: the loss to minimize plus metrics to average per epoch.
    fn forward(&mut self, batch: Self::Batch) -> anyhow::Result<StepLoss>;
    /// Backward pass and optimizer step at learning rate `lr`, plus any post-step bookkeeping
    /// (EMA update, memory enqueue). Only called for a finite loss.
    fn update(&mut self, loss: &Tensor, lr: f64) -> anyhow::Result<()>;
    /// Every tensor that must survive a resume (weights, BN statistics, optimizer buffers,
    /// memory), with unique names.
    fn state(&self) -> anyhow::Result<Vec<(String, Tensor)>>;
    /// Restore from tensors saved by [`Trainer::state`].
    fn load_state(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()>;
}

/// The outcome of a forward pass.
pub struct StepLoss {
    pub loss: Tensor,
    /// e.g. `("contrastive_acc", 0.42)`; averaged over the epoch's steps into a series.
    pub metrics: Vec<(&'static str, f64)>,
    /// Images through the network this step (two views count twice), for images/s.
    pub images: usize,
}

/// The shape of a training run.
#[derive(Debug, Clone)]
pub struct LoopSpec {
    /// Stage kind name: logged and checked against a checkpoint's.
    pub kind: &'static str,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    /// Learning rate after warmup (already batch-size scaled).
    pub peak_lr: f64,
    pub warmup_steps: usize,
}

/// Loop bookkeeping saved with each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    pub format: u32,
    pub kind: String,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    /// Epochs completed: training resumes at this epoch.
    pub epoch: usize,
    /// Optimizer steps completed.
    pub step: usize,
    /// Per-epoch series so far. Stored as f64 tensors (`loop.series.NAME`), not in the JSON:
    /// a JSON decimal round-trip may change the last bit, and a resumed run must report exactly
    /// the numbers an uninterrupted one does.
    #[serde(skip)]
    pub series: BTreeMap<String, Vec<f64>>,
}

/// Name prefix of the series tensors inside a checkpoint.
const SERIES_PREFIX: &str = "loop.series.";

/// What a finished loop hands back to its kind.
#[derive(Debug, Clone, Default)]
pub struct LoopResult {
    /// Per-epoch means: `loss` and every metric the trainer reported.
    pub series: BTreeMap<String, Vec<f64>>,
    /// The epoch this process started at (0 unless it resumed).
    pub start_epoch: usize,
}

impl LoopResult {
    /// Last value of each series (the final epoch's metrics).
    pub fn final_metrics(&self) -> BTreeMap<String, f64> {
        self.series
            .iter()
            .filter_map(|(k, v)| v.last().map(|x| (k.clone(), *x)))
            .collect()
    }
}

/// Number of optimizer steps per epoch and the batch size each uses, for `n` samples.
/// Batches are full: the shuffled remainder is dropped (a different one each epoch), so BatchNorm
/// never sees a tiny last batch; a dataset smaller than one batch gives one batch of all of it.
pub fn batches_per_epoch(n: usize, batch_size: usize) -> anyhow::Result<(usize, usize)> {
    anyhow::ensure!(batch_size > 0, "batch_size must be positive");
    anyhow::ensure!(n > 0, "no training samples");
    if n < batch_size {
        Ok((1, n))
    } else {
        Ok((n / batch_size, batch_size))
    }
}

/// Run epochs `start..spec.epochs`, resuming from `ctx.resume_dir` if it holds a checkpoint.
///
/// `make_batch(epoch, step)` builds a step's batch; it runs on the data [`Prefetcher`]'s thread, up
/// to [`PREFETCH_DEPTH`] steps ahead (across epoch boundaries), and must depend only on its
/// arguments and immutable data.
pub fn run<T, F>(
    ctx: &RunCtx,
    spec: &LoopSpec,
    trainer: &mut T,
    make_batch: F,
) -> anyhow::Result<LoopResult>
where
    T: Trainer,
    T::Batch: 'static,
    F: Fn(usize, usize) -> anyhow::Result<T::Batch> + Send + 'static,
{
    anyhow::ensure!(
        spec.steps_per_epoch > 0,
        "{}: an epoch has no steps",
        spec.kind
    );
    let mut state = LoopState {
        format: CHECKPOINT_FORMAT,
        kind: spec.kind.to_string(),
        epochs: spec.epochs,
        steps_per_epoch: spec.steps_per_epoch,
        epoch: 0,
        step: 0,
        series: BTreeMap::new(),
    };
    if let Some((saved, tensors)) = load_checkpoint(ctx.resume_dir)? {
        check_compatible(&saved, &state)?;
        trainer
            .load_state(&tensors)
            .with_context(|| format!("restoring the checkpoint in {}", ctx.resume_dir.display()))?;
        tracing::info!(
            kind = spec.kind,
            epoch = saved.epoch,
            "resuming from checkpoint"
        );
        ctx.progress.message(&format!(
            "{}: resuming at epoch {}",
            spec.kind,
            saved.epoch + 1
        ));
        state = saved;
    }
    let start_epoch = state.epoch;
    ctx.progress
        .begin(spec.epochs, spec.steps_per_epoch, start_epoch);
    let total_steps = spec.epochs * spec.steps_per_epoch;

    // Batches for every remaining step, in order, built ahead on the prefetch thread.
    let (from, steps) = (state.epoch, spec.steps_per_epoch);
    let remaining = (spec.epochs - from) * steps;
    let mut batches = Prefetcher::new(remaining, PREFETCH_DEPTH, move |i| {
        let (epoch, step) = (from + i / steps, i % steps);
        make_batch(epoch, step)
            .with_context(|| format!("building batch {} of epoch {}", step + 1, epoch + 1))
    });

    for epoch in state.epoch..spec.epochs {
        let started = Instant::now();
        let mut images = 0usize;
        let mut sums: BTreeMap<&'static str, f64> = BTreeMap::new();
        for step in 0..spec.steps_per_epoch {
            ctx.check_cancel()?;
            let batch = batches
                .next()
                .context("the batch prefetcher ended early")??;
            let out = trainer.forward(batch)?;
            let loss = crate::loss::scalar(&out.loss)?;
            if !loss.is_finite() {
                anyhow::bail!(
                    "non-finite loss at epoch {} step {} ({loss}); lower the learning rate",
                    epoch + 1,
                    step + 1
                );
            }
            let lr = lr_at(state.step, total_steps, spec.warmup_steps, spec.peak_lr);
            trainer.update(&out.loss, lr)?;
            state.step += 1;
            images += out.images;
            *sums.entry("loss").or_default() += loss;
            for (k, v) in &out.metrics {
                *sums.entry(k).or_default() += v;
            }
            let rate = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
            ctx.progress.step(epoch, step, loss, rate);
        }
        let secs = started.elapsed().as_secs_f64();
        let means: BTreeMap<String, f64> = sums
            .into_iter()
            .map(|(k, s)| (k.to_string(), s / spec.steps_per_epoch as f64))
            .collect();
        for (k, v) in &means {
            state.series.entry(k.clone()).or_default().push(*v);
        }
        state.epoch = epoch + 1;
        tracing::info!(
            kind = spec.kind,
            epoch = epoch + 1,
            epochs = spec.epochs,
            metrics = ?means,
            images_per_sec = images as f64 / secs.max(1e-9),
            secs,
            "epoch done"
        );
        ctx.progress.epoch(epoch, &means);
        let due = ctx.checkpoint_every > 0 && state.epoch % ctx.checkpoint_every == 0;
        if due && state.epoch < spec.epochs {
            save_checkpoint(ctx.resume_dir, &state, &trainer.state()?)?;
        }
    }

    Ok(LoopResult {
        series: state.series,
        start_epoch,
    })
}

fn check_compatible(saved: &LoopState, now: &LoopState) -> anyhow::Result<()> {
    let same = saved.kind == now.kind
        && saved.epochs == now.epochs
        && saved.steps_per_epoch == now.steps_per_epoch
        && saved.epoch <= saved.epochs;
    anyhow::ensure!(
        same,
        "the checkpoint in the resume directory is for a different run ({} × {} epochs of {} \
         steps, at epoch {}; this run: {} × {} of {}); delete the resume directory to start over",
        saved.kind,
        saved.epochs,
        saved.steps_per_epoch,
        saved.epoch,
        now.kind,
        now.epochs,
        now.steps_per_epoch
    );
    Ok(())
}

/// Write `tensors` and `state` to `dir/checkpoint.safetensors`, atomically: the bytes go to a
/// temporary file that is synced and then renamed over the old checkpoint, so a crash at any
/// moment leaves either the previous checkpoint or the new one, never a torn file.
pub fn save_checkpoint(
    dir: &Path,
    state: &LoopState,
    tensors: &[(String, Tensor)],
) -> anyhow::Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating resume directory {}", dir.display()))?;
    let bytes = encode(state, tensors)?;
    let path = dir.join(CHECKPOINT_FILE);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    fs::rename(&tmp, &path).with_context(|| format!("publishing {}", path.display()))?;
    // Persist the rename itself (best effort: not every platform can open a directory).
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The checkpoint in `dir`, if any. A checkpoint of an older format is ignored with a warning;
/// an unreadable one is an error naming the file.
pub fn load_checkpoint(dir: &Path) -> anyhow::Result<Option<(LoopState, Vec<(String, Tensor)>)>> {
    let path: PathBuf = dir.join(CHECKPOINT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let decoded = decode(&bytes).with_context(|| {
        format!(
            "corrupt checkpoint {}; delete it to restart training",
            path.display()
        )
    })?;
    match decoded {
        Some(x) => Ok(Some(x)),
        None => {
            tracing::warn!(path = %path.display(), "ignoring a checkpoint of an older format");
            Ok(None)
        }
    }
}

fn encode(state: &LoopState, tensors: &[(String, Tensor)]) -> anyhow::Result<Vec<u8>> {
    let mut raw: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, values) in &state.series {
        let data = le_bytes(values.clone(), f64::to_le_bytes);
        raw.push((
            format!("{SERIES_PREFIX}{name}"),
            safetensors::Dtype::F64,
            vec![values.len()],
            data,
        ));
    }
    for (name, t) in tensors {
        anyhow::ensure!(
            !name.starts_with(SERIES_PREFIX),
            "checkpoint tensor name {name} is reserved"
        );
        let dims = t.dims().to_vec();
        let t = t.to_device(&Device::Cpu)?.flatten_all()?;
        let (dtype, data) = match t.dtype() {
            DType::F32 => (
                safetensors::Dtype::F32,
                le_bytes(t.to_vec1::<f32>()?, f32::to_le_bytes),
            ),
            DType::F64 => (
                safetensors::Dtype::F64,
                le_bytes(t.to_vec1::<f64>()?, f64::to_le_bytes),
            ),
            DType::I64 => (
                safetensors::Dtype::I64,
                le_bytes(t.to_vec1::<i64>()?, i64::to_le_bytes),
            ),
            DType::U32 => (
                safetensors::Dtype::U32,
                le_bytes(t.to_vec1::<u32>()?, u32::to_le_bytes),
            ),
            DType::U8 => (safetensors::Dtype::U8, t.to_vec1::<u8>()?),
            other => anyhow::bail!("checkpoint: tensor {name} has unsupported dtype {other:?}"),
        };
        raw.push((name.clone(), dtype, dims, data));
    }
    let mut views = Vec::with_capacity(raw.len());
    for (name, dtype, shape, data) in &raw {
        views.push((
            name.as_str(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)?,
        ));
    }
    let meta = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    Ok(safetensors::tensor::serialize(views, Some(meta))?)
}

fn le_bytes<T: Copy, const N: usize>(v: Vec<T>, f: fn(T) -> [u8; N]) -> Vec<u8> {
    v.into_iter().flat_map(f).collect()
}

/// `None` when the file is a checkpoint of another format version.
fn decode(bytes: &[u8]) -> anyhow::Result<Option<(LoopState, Vec<(String, Tensor)>)>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .context("no loop state in the checkpoint metadata")?;
    let value: serde_json::Value = serde_json::from_str(json)?;
    if value.get("format").and_then(|f| f.as_u64()) != Some(CHECKPOINT_FORMAT as u64) {
        return Ok(None);
    }
    let mut state: LoopState = serde_json::from_value(value)?;
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            safetensors::Dtype::F32 => {
                Tensor::from_vec(from_le(data, f32::from_le_bytes), shape, &Device::Cpu)?
            }
            safetensors::Dtype::F64 => {
                Tensor::from_vec(from_le(data, f64::from_le_bytes), shape, &Device::Cpu)?
            }
            safetensors::Dtype::I64 => {
                Tensor::from_vec(from_le(data, i64::from_le_bytes), shape, &Device::Cpu)?
            }
            safetensors::Dtype::U32 => {
                Tensor::from_vec(from_le(data, u32::from_le_bytes), shape, &Device::Cpu)?
            }
            safetensors::Dtype::U8 => Tensor::from_vec(data.to_vec(), shape, &Device::Cpu)?,
            other => anyhow::bail!("tensor {name} has unsupported dtype {other:?}"),
        };
        match name.strip_prefix(SERIES_PREFIX) {
            Some(series) => {
                state.series.insert(series.to_string(), t.to_vec1::<f64>()?);
            }
            None => tensors.push((name, t)),
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some((state, tensors)))
}

fn from_le<T, const N: usize>(data: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

/// Look a tensor up by name in restored state.
pub fn take<'a>(state: &'a [(String, Tensor)], name: &str) -> anyhow::Result<&'a Tensor> {
    state
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .with_context(|| format!("checkpoint lacks tensor `{name}`"))
}

/// The entries of `state` whose names start with `prefix`, with the prefix stripped.
pub fn with_prefix(state: &[(String, Tensor)], prefix: &str) -> Vec<(String, Tensor)> {
    state
        .iter()
        .filter_map(|(n, t)| n.strip_prefix(prefix).map(|s| (s.to_string(), t.clone())))
        .collect()
}

/// Prefix every name (to keep model, optimizer and memory tensors apart in one checkpoint).
pub fn prefixed(prefix: &str, state: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    state
        .into_iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Pieces the training kinds share.

/// The device training runs on: the first CUDA GPU when built with `cuda` and one is present,
/// else the CPU.
pub fn device() -> anyhow::Result<Device> {
    Ok(Device::cuda_if_available(0)?)
}

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

/// The parameters an optimizer updates. The classifier is excluded from weight decay and LARS
/// trust-ratio adaptation like BatchNorm and biases, as the reference excludes `head_supervised`
/// (tf2/model.py `build_optimizer`): a zero-initialized layer's trust ratio would otherwise pin
/// its updates to η·‖w‖ ≈ 0 after the first step.
pub fn optimizer_params(net: &Network) -> Vec<Param> {
    net.trainable()
        .into_iter()
        .map(|mut p| {
            if p.name.starts_with("classifier.") {
                p.exclude_from_decay = true;
            }
            p
        })
        .collect()
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
        let order = epoch_order(ids.len(), seed, epoch);
        let chosen: Vec<usize> = order[step * batch..(step + 1) * batch]
            .iter()
            .map(|&i| ids[i])
            .collect();
        let x = augment_batch(&images, &chosen, &aug, seed, epoch, 0, &device)?;
        let y = labels_tensor(&images, &chosen, &device)?;
        Ok((x, y))
    }
}

/// Trains a classifier network with cross-entropy on labeled batches (finetune, supervised).
pub struct ClassifierTrainer {
    pub net: Network,
    params: Vec<Param>,
    opt: Box<dyn Optimizer + Send>,
}

impl ClassifierTrainer {
    pub fn new(net: Network, opt: Box<dyn Optimizer + Send>) -> Self {
        let params = optimizer_params(&net);
        ClassifierTrainer { net, params, opt }
    }
}

impl Trainer for ClassifierTrainer {
    type Batch = (Tensor, Tensor);
    fn forward(&mut self, (x, y): (Tensor, Tensor)) -> anyhow::Result<StepLoss> {
        let images = x.dim(0)?;
        let logits = self.net.logits(&x, true)?;
        let loss = cross_entropy(&logits, &y)?;
        let acc = accuracy(&logits, &y)?;
        Ok(StepLoss {
            loss,
            metrics: vec![("acc", acc)],
            images,
        })
    }
    fn update(&mut self, loss: &Tensor, lr: f64) -> anyhow::Result<()> {
        let grads = loss.backward()?;
        self.opt.step(&self.params, &grads, lr)
    }
    fn state(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        Ok(net_and_opt_state(&self.net, self.opt.as_ref()))
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        load_net_and_opt(&self.net, self.opt.as_mut(), state)
    }
}

/// Checks shared by the training kinds' params; `Err` names the offending key.
pub fn check_schedule(s: &Schedule, momentum: f64) -> Result<(), crate::api::ParamError> {
    let err = |path: &str, message: String| crate::api::ParamError {
        path: path.into(),
        message,
    };
    if s.epochs == 0 {
        return Err(err("epochs", "must be at least 1".into()));
    }
    if s.batch_size == 0 {
        return Err(err("batch_size", "must be at least 1".into()));
    }
    if !(s.lr.is_finite() && s.lr >= 0.0) {
        return Err(err(
            "lr",
            format!("must be a finite number ≥ 0, got {}", s.lr),
        ));
    }
    if !(s.warmup_epochs.is_finite()
        && s.warmup_epochs >= 0.0
        && s.warmup_epochs <= s.epochs as f64)
    {
        return Err(err(
            "warmup_epochs",
            format!("must be in [0, epochs], got {}", s.warmup_epochs),
        ));
    }
    if !(0.0..1.0).contains(&momentum) {
        return Err(err(
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use candle_core::Var;

    use super::testutil::StopAfter;
    use super::*;
    use crate::api::{NoProgress, Progress};
    use crate::optim::{Optimizer, Param, Sgd};

    /// Least squares on a fixed synthetic set: small enough to run many times, rich enough that
    /// optimizer momentum and batch order both matter.
    struct Toy {
        params: Vec<Param>,
        opt: Sgd,
        x: Tensor,
        y: Tensor,
    }

    impl Toy {
        fn new() -> Self {
            let n = 32;
            let xs: Vec<f32> = (0..n * 3)
                .map(|i| ((i * 7919 % 103) as f32 - 51.0) / 30.0)
                .collect();
            let x = Tensor::from_vec(xs, (n, 3), &Device::Cpu).unwrap();
            let w_true = Tensor::new(&[[1.5f32], [-2.0], [0.5]], &Device::Cpu).unwrap();
            let y = x.matmul(&w_true).unwrap();
            let params = vec![
                Param {
                    name: "w".into(),
                    var: Var::from_tensor(
                        &Tensor::new(&[[0.1f32], [0.1], [0.1]], &Device::Cpu).unwrap(),
                    )
                    .unwrap(),
                    exclude_from_decay: false,
                },
                Param {
                    name: "b".into(),
                    var: Var::zeros(1, DType::F32, &Device::Cpu).unwrap(),
                    exclude_from_decay: true,
                },
            ];
            Toy {
                params,
                opt: Sgd::new(0.9, 1e-4, false),
                x,
                y,
            }
        }
        fn weights(&self) -> Vec<u8> {
            encode(&LoopState::default_for_test(), &self.state().unwrap()).unwrap()
        }
    }

    impl LoopState {
        fn default_for_test() -> Self {
            LoopState {
                format: CHECKPOINT_FORMAT,
                kind: "toy".into(),
                epochs: 0,
                steps_per_epoch: 0,
                epoch: 0,
                step: 0,
                series: BTreeMap::new(),
            }
        }
    }

    impl Trainer for Toy {
        type Batch = Vec<u32>;
        fn forward(&mut self, ids: Vec<u32>) -> anyhow::Result<StepLoss> {
            let n = ids.len();
            let ids = Tensor::from_vec(ids, n, &Device::Cpu)?;
            let x = self.x.index_select(&ids, 0)?;
            let y = self.y.index_select(&ids, 0)?;
            let pred = x
                .matmul(self.params[0].var.as_tensor())?
                .broadcast_add(self.params[1].var.as_tensor())?;
            let loss = (pred - y)?.sqr()?.mean_all()?;
            Ok(StepLoss {
                loss,
                metrics: vec![("twice", 2.0)],
                images: n,
            })
        }
        fn update(&mut self, loss: &Tensor, lr: f64) -> anyhow::Result<()> {
            let grads = loss.backward()?;
            self.opt.step(&self.params, &grads, lr)
        }
        fn state(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
            let mut s: Vec<(String, Tensor)> = self
                .params
                .iter()
                .map(|p| (format!("model.{}", p.name), p.var.as_tensor().clone()))
                .collect();
            s.extend(prefixed("opt.", self.opt.state()));
            Ok(s)
        }
        fn load_state(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
            for p in &self.params {
                p.var.set(take(state, &format!("model.{}", p.name))?)?;
            }
            self.opt.load_state(&with_prefix(state, "opt."))
        }
    }

    /// A batch order that depends only on (epoch, step), as the real kinds' does.
    fn batch(epoch: usize, step: usize) -> anyhow::Result<Vec<u32>> {
        Ok((0..8u32)
            .map(|i| ((i as usize * 5 + step * 8 + epoch * 3) % 32) as u32)
            .collect())
    }

    fn spec(lr: f64) -> LoopSpec {
        LoopSpec {
            kind: "toy",
            epochs: 4,
            steps_per_epoch: 4,
            peak_lr: lr,
            warmup_steps: 3,
        }
    }

    fn ctx<'a>(
        resume: &'a Path,
        out: &'a Path,
        progress: &'a dyn Progress,
        cancel: &'a AtomicBool,
        inputs: &'a BTreeMap<String, Vec<PathBuf>>,
    ) -> RunCtx<'a> {
        RunCtx {
            params: &serde_json::Value::Null,
            inputs,
            dataset_root: None,
            out_dir: out,
            resume_dir: resume,
            seed: 0,
            checkpoint_every: 1,
            progress,
            cancel,
        }
    }

    #[test]
    fn resumed_run_is_bit_identical() {
        let inputs = BTreeMap::new();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let no = AtomicBool::new(false);

        let mut straight = Toy::new();
        let c = ctx(d1.path(), d1.path(), &NoProgress, &no, &inputs);
        let full = run(&c, &spec(0.05), &mut straight, batch).unwrap();
        assert_eq!(full.series["loss"].len(), 4);
        assert_eq!(full.series["twice"], vec![2.0; 4]);
        assert!(
            full.series["loss"][3] < full.series["loss"][0],
            "{:?}",
            full.series
        );

        let cancel = AtomicBool::new(false);
        let stop = StopAfter {
            stop_after: 2,
            flag: &cancel,
        };
        let mut first = Toy::new();
        let c = ctx(d2.path(), d2.path(), &stop, &cancel, &inputs);
        let err = run(&c, &spec(0.05), &mut first, batch).unwrap_err();
        assert!(
            err.downcast_ref::<crate::api::Cancelled>().is_some(),
            "{err:#}"
        );
        let (saved, _) = load_checkpoint(d2.path()).unwrap().unwrap();
        assert_eq!((saved.epoch, saved.step), (2, 8));

        // A fresh process: new trainer, same initial weights, resumes at epoch 3.
        let mut resumed = Toy::new();
        let c = ctx(d2.path(), d2.path(), &NoProgress, &no, &inputs);
        let rest = run(&c, &spec(0.05), &mut resumed, batch).unwrap();
        assert_eq!(rest.start_epoch, 2);
        assert_eq!(rest.series, full.series);
        assert_eq!(resumed.weights(), straight.weights());
    }

    #[test]
    fn non_finite_loss_names_epoch_and_step() {
        let inputs = BTreeMap::new();
        let d = tempfile::tempdir().unwrap();
        let no = AtomicBool::new(false);
        let mut t = Toy::new();
        // Warmup step 1 has lr 0; the huge lr of step 2 overflows the weights, and step 3's loss.
        let c = ctx(d.path(), d.path(), &NoProgress, &no, &inputs);
        let err = run(&c, &spec(1e38), &mut t, batch).unwrap_err().to_string();
        assert!(err.starts_with("non-finite loss at epoch 1 step "), "{err}");
    }

    #[test]
    fn checkpoint_of_another_run_is_refused_and_old_format_ignored() {
        let d = tempfile::tempdir().unwrap();
        let mut st = LoopState::default_for_test();
        st.kind = "other".into();
        st.epochs = 4;
        st.steps_per_epoch = 4;
        save_checkpoint(d.path(), &st, &Toy::new().state().unwrap()).unwrap();
        let inputs = BTreeMap::new();
        let no = AtomicBool::new(false);
        let c = ctx(d.path(), d.path(), &NoProgress, &no, &inputs);
        let err = run(&c, &spec(1.0), &mut Toy::new(), batch)
            .unwrap_err()
            .to_string();
        assert!(err.contains("different run"), "{err}");

        st.format = CHECKPOINT_FORMAT + 1;
        save_checkpoint(d.path(), &st, &Toy::new().state().unwrap()).unwrap();
        assert!(load_checkpoint(d.path()).unwrap().is_none());

        fs::write(d.path().join(CHECKPOINT_FILE), b"torn").unwrap();
        let err = format!("{:#}", load_checkpoint(d.path()).unwrap_err());
        assert!(err.contains("corrupt checkpoint"), "{err}");
    }

    #[test]
    fn checkpoint_round_trips_tensors_and_state() {
        let d = tempfile::tempdir().unwrap();
        let mut st = LoopState::default_for_test();
        st.series.insert("loss".into(), vec![1.0, 0.5]);
        let tensors = vec![
            (
                "a".to_string(),
                Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::new(&[7i64, -1], &Device::Cpu).unwrap(),
            ),
        ];
        save_checkpoint(d.path(), &st, &tensors).unwrap();
        let (st2, t2) = load_checkpoint(d.path()).unwrap().unwrap();
        assert_eq!(st2, st);
        assert_eq!(
            t2[0].1.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        assert_eq!(t2[1].1.to_vec1::<i64>().unwrap(), vec![7, -1]);
        assert!(!d.path().join(format!("{CHECKPOINT_FILE}.tmp")).exists());
    }

    #[test]
    fn batch_counts() {
        assert_eq!(batches_per_epoch(1000, 256).unwrap(), (3, 256));
        assert_eq!(batches_per_epoch(100, 256).unwrap(), (1, 100));
        assert!(batches_per_epoch(0, 256).is_err());
    }
}

/// Fixtures for the training kinds' tests: a tiny generated dataset, a split, and a `RunCtx`.
#[cfg(test)]
pub(crate) mod testutil {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::AtomicBool;

    use crate::api::{KindSpec, NoProgress, RunCtx, StageOutput};
    use crate::data::{Dataset, Images};

    /// `n` 8×8 RGB images per class, class 0 reddish and class 1 bluish with per-pixel noise, so
    /// crops and flips keep the class visible.
    pub fn images(n_per_class: usize, salt: u32) -> Images {
        let (h, w, c) = (8, 8, 3);
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for i in 0..2 * n_per_class {
            let class = (i % 2) as u32;
            for p in 0..h * w {
                let noise = ((i as u32 * 131 + p as u32 * 71 + salt * 17) % 61) as u8;
                let (r, g, b) = if class == 0 {
                    (170, 60, 40)
                } else {
                    (40, 60, 170)
                };
                pixels.extend([r + noise, g + noise / 2, b + noise]);
            }
            labels.push(class);
        }
        Images {
            n: 2 * n_per_class,
            h,
            w,
            c,
            pixels,
            labels,
        }
    }

    /// A dataset artifact directory and a split artifact directory labeling `labeled` images.
    pub fn dataset_and_split(
        root: &Path,
        n_per_class: usize,
        labeled: &[usize],
    ) -> (PathBuf, PathBuf) {
        let ds = Dataset {
            classes: vec!["red".into(), "blue".into()],
            train: images(n_per_class, 0),
            test: images(2, 1),
        };
        let data_dir = root.join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        ds.save(&data_dir).unwrap();
        let split_dir = root.join("split");
        std::fs::create_dir_all(&split_dir).unwrap();
        crate::data::split::write_ids(&split_dir.join(crate::kinds::split::SPLIT_FILE), labeled)
            .unwrap();
        (data_dir, split_dir)
    }

    /// The smallest ResNet the models build: depth 10, channel widths 4/8/16/32, 16-d head.
    pub fn tiny_model() -> serde_json::Value {
        serde_json::json!({ "depth": 10, "width": 0.0625, "proj_dim": 16, "proj_hidden": 16 })
    }

    /// Run `kind` with `params` (resolved first) and inputs `(role, dir)`.
    pub struct Run<'a> {
        pub kind: &'a KindSpec,
        pub params: serde_json::Value,
        pub inputs: Vec<(&'a str, PathBuf)>,
        pub out: PathBuf,
        pub resume: PathBuf,
        pub seed: u64,
        pub checkpoint_every: usize,
    }

    impl Run<'_> {
        pub fn go(
            &self,
            progress: &dyn crate::api::Progress,
            cancel: &AtomicBool,
        ) -> anyhow::Result<StageOutput> {
            let params =
                (self.kind.resolve_params)(&self.params).map_err(|e| anyhow::anyhow!("{e}"))?;
            let inputs: BTreeMap<String, Vec<PathBuf>> = self
                .inputs
                .iter()
                .map(|(r, d)| (r.to_string(), vec![d.clone()]))
                .collect();
            std::fs::create_dir_all(&self.out).unwrap();
            std::fs::create_dir_all(&self.resume).unwrap();
            let ctx = RunCtx {
                params: &params,
                inputs: &inputs,
                dataset_root: None,
                out_dir: &self.out,
                resume_dir: &self.resume,
                seed: self.seed,
                checkpoint_every: self.checkpoint_every,
                progress,
                cancel,
            };
            (self.kind.run)(&ctx)
        }

        pub fn run(&self) -> anyhow::Result<StageOutput> {
            self.go(&NoProgress, &AtomicBool::new(false))
        }
    }

    /// Sets the cancel flag once `stop_after` epochs have finished (simulates an interruption).
    pub struct StopAfter<'a> {
        pub stop_after: usize,
        pub flag: &'a AtomicBool,
    }
    impl crate::api::Progress for StopAfter<'_> {
        fn epoch(&self, epoch: usize, _m: &BTreeMap<String, f64>) {
            if epoch + 1 == self.stop_after {
                self.flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// The bytes of every file in `dir`, by name.
    pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }
}
