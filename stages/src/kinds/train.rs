//! The training loop every training kind shares: learning-rate schedule, batch prefetching,
//! non-finite-loss check, cancellation, progress, per-epoch metrics, and epoch checkpoints that
//! make an interrupted run resume bit-identically.
//!
//! Determinism contract: a kind's batches are a pure function of (seed, epoch, step) and its
//! trainer's whole mutable state is in [`Trainer::state`], so training epochs `0..E` in one go and
//! training `0..k`, checkpointing, and resuming `k..E` in a fresh process run the same arithmetic.

mod checkpoint;
mod classifier;
mod params;
mod setup;
#[cfg(test)]
pub(crate) mod testutil;

pub use checkpoint::*;
pub use classifier::{train_classifier, ClassifierInit};
pub(crate) use params::training_params;
pub use params::Training;
pub use setup::*;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::Tensor;

use crate::api::RunCtx;
use crate::data::loader::Prefetcher;
use crate::optim::lr_at;

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
    /// Metrics measured once an epoch's steps are done (e.g. a kNN monitor), added to the
    /// epoch's series. Must not change the training state. Its time is not in the epoch's img/s.
    fn epoch_end(&mut self, _epoch: usize) -> anyhow::Result<Vec<(&'static str, f64)>> {
        Ok(Vec::new())
    }
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
    if let Some(Checkpoint {
        state: saved,
        tensors,
    }) = load_checkpoint(ctx.resume_dir)?
    {
        check_same_run(&saved, &state)?;
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
        let mut means: BTreeMap<String, f64> = sums
            .into_iter()
            .map(|(k, s)| (k.to_string(), s / spec.steps_per_epoch as f64))
            .collect();
        for (k, v) in trainer.epoch_end(epoch)? {
            means.insert(k.to_string(), v);
        }
        for (k, v) in &means {
            state.series.entry(k.clone()).or_default().push(*v);
        }
        state.epoch = epoch + 1;
        let shown: Vec<String> = means.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
        tracing::info!(
            "{} epoch {}/{}: {} ({secs:.1} s, {:.0} img/s)",
            spec.kind,
            epoch + 1,
            spec.epochs,
            shown.join(" "),
            images as f64 / secs.max(1e-9)
        );
        ctx.progress.epoch(epoch, &means);
        let due = ctx.checkpoint_every > 0 && state.epoch.is_multiple_of(ctx.checkpoint_every);
        if due && state.epoch < spec.epochs {
            save_checkpoint(ctx.resume_dir, &state, &trainer.state()?)?;
        }
    }

    Ok(LoopResult {
        series: state.series,
        start_epoch,
    })
}

fn check_same_run(saved: &LoopState, now: &LoopState) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::AtomicBool;

    use candle_core::{DType, Device, Var};

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
        /// Every state value's bits, for exact comparison.
        fn weights(&self) -> Vec<(String, Vec<u32>)> {
            self.state()
                .unwrap()
                .into_iter()
                .map(|(n, t)| {
                    let bits = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    (n, bits.into_iter().map(f32::to_bits).collect())
                })
                .collect()
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
        let saved = load_checkpoint(d2.path()).unwrap().unwrap().state;
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
        let Checkpoint {
            state: st2,
            tensors: t2,
        } = load_checkpoint(d.path()).unwrap().unwrap();
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
