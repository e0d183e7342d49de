//! `pretrain`: SimCLR contrastive pretraining of encoder + projection head (NT-Xent over two
//! augmented views, LARS, warmup + cosine), optionally with SimCLRv2's MoCo-style memory.
//!
//! Input: `data` (dataset). Output: the network checkpoint (`Network::save`: encoder + full head).
//! Metrics: final `loss`, `contrastive_acc`; series: both per epoch, and with `knn_monitor`
//! `knn_top1` per epoch: the encoder's kNN accuracy on a fixed random subset of train images
//! against a disjoint subset as the bank (train labels, read only for this report; test is
//! never touched), like solo-learn's online kNN.
//!
//! Defaults follow SimCLR's CIFAR-10 setting (paper appendix B.9): LARS, lr 1.0 × B/256,
//! weight decay 1e-6, temperature 0.5, colour-jitter strength 0.5, no blur. The reference README's
//! CIFAR command uses weight decay 1e-4; the paper's value is used here.

use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::train::{self, LoopSpec, StepLoss, Trainer, Training};
use crate::api::{KindSpec, ParamError, RefSpec, RefTarget, Role, RunCtx, StageOutput};
use crate::augment::AugmentCfg;
use crate::data::loader::{augment_batch, epoch_order, step_batch};
use crate::data::Images;
use crate::device::DeviceChoice;
use crate::evaluate::{ClassScores, EncoderKnn};
use crate::loss::nt_xent_with_memory;
use crate::memory::Memory;
use crate::model::{ModelCfg, Network};
use crate::optim::{Optimizer, OptimizerKind, Param, Scaling};

pub const SPEC: KindSpec = KindSpec {
    name: "pretrain",
    // v2: fused residual BatchNorm (a numerics change from before `NUMERICS_VERSION`; such changes
    // now bump that one shared version, never this one).
    version: 2,
    summary: "SimCLR contrastive pretraining (NT-Xent, LARS, optional MoCo-style memory)",
    refs: &[
        RefSpec {
            key: "data",
            role: "data",
            target: RefTarget::Dataset,
            many: false,
            required: true,
        },
        // `init = { file = "…", format = "torchvision" }`: start from a model file (kinds/import.rs).
        RefSpec {
            key: "init",
            role: "init",
            target: RefTarget::Node(&[super::import::KIND]),
            many: false,
            required: false,
        },
    ],
    role: Role::Train { labels_from: &[] },
    numerics: true,
    resolve_params: resolve,
    run,
};

train::training_params! {
    /// `batch_size` counts images per step; each gives two views, so the network sees 2× as many.
    pub struct Params {
        pub model: ModelCfg = ModelCfg::default(),
        /// NT-Xent temperature τ (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet).
        pub temperature: f64 = 0.5,
        /// Colour-jitter strength s (SimCLR: 0.5 on CIFAR-10, 1.0 on ImageNet).
        pub color_jitter: f32 = 0.5,
        /// Gaussian blur (SimCLR uses it on ImageNet, not on CIFAR).
        pub blur: bool = false,
        pub memory: MemoryParams = MemoryParams::default(),
        /// Per-epoch kNN accuracy monitor; off unless `queries` > 0 (and then absent from the key
        /// when off, so enabling it is the only change to existing keys).
        #[serde(skip_serializing_if = "KnnMonitor::is_off")]
        pub knn_monitor: KnnMonitor = KnnMonitor::default(),
    }
    training = Training {
        epochs: 10,
        batch_size: 256,
        optimizer: OptimizerKind::Lars,
        lr: 1.0,
        lr_scaling: Scaling::Linear,
        momentum: 0.9,
        weight_decay: 1e-6,
        warmup_epochs: 1.0,
        nesterov: false,
        device: DeviceChoice::Cpu,
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnnMonitor {
    /// Train images scored after each epoch (0 = no monitor).
    pub queries: usize,
    /// Other train images whose features and labels form the kNN bank.
    pub bank: usize,
    /// Neighbours that vote (weighted by exp(similarity / 0.1)).
    pub k: usize,
}

impl KnnMonitor {
    fn is_off(&self) -> bool {
        self.queries == 0
    }
}

impl Default for KnnMonitor {
    fn default() -> Self {
        KnnMonitor {
            queries: 0,
            bank: 10_000,
            k: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryParams {
    /// Queue length K (0 = no memory).
    pub size: usize,
    /// EMA momentum of the network producing the queued keys.
    pub momentum: f64,
}

impl Default for MemoryParams {
    fn default() -> Self {
        MemoryParams {
            size: 0,
            momentum: 0.999,
        }
    }
}

fn check(p: &Params) -> Result<(), ParamError> {
    train::check_model(&p.model)?;
    p.training().check()?;
    if p.batch_size < 2 {
        return Err(ParamError::new(
            "batch_size",
            "contrastive training needs at least 2 images per batch",
        ));
    }
    if !(p.temperature > 0.0 && p.temperature.is_finite()) {
        return Err(ParamError::new(
            "temperature",
            format!("must be positive, got {}", p.temperature),
        ));
    }
    if !(0.0..=1.0).contains(&p.color_jitter) {
        return Err(ParamError::new(
            "color_jitter",
            format!("must be in [0, 1], got {}", p.color_jitter),
        ));
    }
    let mon = &p.knn_monitor;
    if !mon.is_off() && (mon.bank == 0 || mon.k == 0) {
        return Err(ParamError::new(
            "knn_monitor",
            format!(
                "bank and k must be at least 1, got {} and {}",
                mon.bank, mon.k
            ),
        ));
    }
    if !(0.0..=1.0).contains(&p.memory.momentum) {
        return Err(ParamError::new(
            "memory.momentum",
            format!("must be in [0, 1], got {}", p.memory.momentum),
        ));
    }
    Ok(())
}

fn resolve(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    train::resolve_checked::<Params>(raw, check)
}

/// Contrastive training state: the network, its optimizer, and the optional memory.
struct Pretrainer {
    net: Network,
    params: Vec<Param>,
    opt: Box<dyn Optimizer + Send>,
    memory: Option<Memory>,
    temperature: f64,
    /// This step's stacked views, kept for the memory's enqueue after the update.
    views: Option<Tensor>,
    monitor: Option<Monitor>,
}

/// The kNN monitor's fixed query and bank images.
struct Monitor {
    queries: Images,
    bank: Images,
    k: usize,
    num_classes: usize,
}

impl Monitor {
    fn new(
        cfg: &KnnMonitor,
        train: &Images,
        num_classes: usize,
        seed: u64,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            train.n > cfg.queries,
            "knn_monitor.queries = {} needs more train images than that (the dataset has {}); lower it",
            cfg.queries,
            train.n
        );
        let order = epoch_order(train.n, seed, 0);
        let (q, rest) = order.split_at(cfg.queries);
        let bank = &rest[..cfg.bank.min(rest.len())];
        Ok(Monitor {
            queries: train.select(q),
            bank: train.select(bank),
            k: cfg.k,
            num_classes,
        })
    }

    /// kNN top-1 of the encoder (eval mode: running BatchNorm statistics, no graph).
    fn top1(&self, net: &Network) -> anyhow::Result<f64> {
        let knn = EncoderKnn {
            k: self.k,
            temperature: 0.1,
            batch_size: 512,
        };
        let (_, _, scores) = knn.run(net, &self.bank, &self.queries, self.num_classes, None)?;
        Ok(ClassScores::new(&scores, &self.queries.labels, self.num_classes)?.topk_accuracy(1))
    }
}

impl Trainer for Pretrainer {
    /// Both views stacked: rows `0..N` view 1, `N..2N` view 2.
    type Batch = Tensor;

    fn forward(&mut self, x: Tensor) -> anyhow::Result<StepLoss> {
        let images = x.dim(0)?;
        let n = images / 2;
        // One pass over both views, so BatchNorm normalizes over all 2N (as the reference does).
        let z = self.net.project(&x, true)?;
        let negatives = match &self.memory {
            Some(m) => m.negatives()?,
            None => None,
        };
        let (loss, acc) = nt_xent_with_memory(
            &z.narrow(0, 0, n)?,
            &z.narrow(0, n, n)?,
            negatives.as_ref(),
            self.temperature,
        )?;
        if self.memory.is_some() {
            self.views = Some(x);
        }
        Ok(StepLoss {
            loss,
            metrics: vec![("contrastive_acc", acc)],
            images,
        })
    }

    fn update(&mut self, loss: &Tensor, lr: f64) -> anyhow::Result<()> {
        let grads = loss.backward()?;
        self.opt.step(&self.params, &grads, lr)?;
        if let (Some(m), Some(x)) = (&mut self.memory, self.views.take()) {
            m.after_step(&self.net, &x)?;
        }
        Ok(())
    }

    fn epoch_end(&mut self, _epoch: usize) -> anyhow::Result<Vec<(&'static str, f64)>> {
        match &self.monitor {
            Some(m) => Ok(vec![("knn_top1", m.top1(&self.net)?)]),
            None => Ok(Vec::new()),
        }
    }

    fn state(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        let mut out = train::net_and_opt_state(&self.net, self.opt.as_ref());
        if let Some(m) = &self.memory {
            out.extend(train::prefixed("mem.", m.state()?));
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        train::load_net_and_opt(&self.net, self.opt.as_mut(), state)?;
        if let Some(m) = &mut self.memory {
            m.load_state(&train::with_prefix(state, "mem."))?;
        }
        Ok(())
    }
}

fn run(ctx: &RunCtx) -> anyhow::Result<StageOutput> {
    let p: Params = ctx.params()?;
    let (choice, batch_size) = (p.device, p.batch_size);
    crate::device::run_on(ctx, choice, batch_size, |device| run_on(ctx, p, device))
}

fn run_on(ctx: &RunCtx, p: Params, device: candle_core::Device) -> anyhow::Result<StageOutput> {
    let ds = train::load_dataset(ctx, "data")?;
    let monitor = (!p.knn_monitor.is_off())
        .then(|| {
            Monitor::new(
                &p.knn_monitor,
                &ds.train,
                ds.classes.len(),
                train::seed_for(ctx, "pretrain.monitor"),
            )
        })
        .transpose()?;
    let images = Arc::new(ds.train);
    let (spec, batch): (LoopSpec, usize) =
        train::loop_spec("pretrain", p.training().schedule(), images.n)?;
    anyhow::ensure!(
        batch >= 2,
        "pretrain needs at least 2 train images, the dataset has {}",
        images.n
    );

    let net = Network::new_pretrain(
        &p.model,
        images.h,
        images.c,
        &device,
        train::seed_for(ctx, "pretrain.init"),
    )?;
    super::import::init_pretrain(ctx, &net)?;
    let memory = match p.memory.size {
        0 => None,
        k => Some(Memory::new(&net, k, p.memory.momentum)?),
    };
    let mut trainer = Pretrainer {
        params: train::optimizer_params(&net),
        opt: p.training().optimizer(),
        net,
        memory,
        temperature: p.temperature,
        views: None,
        monitor,
    };

    let aug = AugmentCfg::simclr(p.color_jitter, p.blur);
    let seed = train::seed_for(ctx, "pretrain.data");
    let data = images.clone();
    let make_batch = move |epoch: usize, step: usize| -> anyhow::Result<Tensor> {
        let ids = &step_batch(data.n, seed, epoch, step, batch);
        let v1 = augment_batch(&data, ids, &aug, seed, epoch, 0, &device)?;
        let v2 = augment_batch(&data, ids, &aug, seed, epoch, 1, &device)?;
        Ok(Tensor::cat(&[&v1, &v2], 0)?)
    };
    let result = train::run(ctx, &spec, &mut trainer, make_batch)?;

    trainer.net.save(ctx.out_dir)?;
    Ok(StageOutput {
        metrics: result.final_metrics(),
        series: result.series,
        details: serde_json::json!({
            "steps_per_epoch": spec.steps_per_epoch,
            "batch_size": batch,
            "peak_lr": spec.peak_lr,
            "train_images": images.n,
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::super::train::testutil::{dataset_and_split, files, tiny_model, Run, StopAfter};
    use super::super::train::{load_checkpoint, CHECKPOINT_FILE};
    use super::*;

    fn pretrain_run(root: &std::path::Path, memory: usize) -> Run<'static> {
        let (data, _) = dataset_and_split(root, 12, &[0, 1]);
        Run {
            kind: &SPEC,
            params: serde_json::json!({
                "model": tiny_model(), "epochs": 4, "batch_size": 8, "lr": 0.5,
                "memory": { "size": memory, "momentum": 0.9 },
                "knn_monitor": { "queries": 4, "bank": 6, "k": 3 },
            }),
            inputs: vec![("data", data)],
            out: root.join("out"),
            resume: root.join("resume"),
            seed: 3,
            checkpoint_every: 1,
        }
    }

    /// 4 epochs in one go == 2 epochs, interruption, 2 resumed epochs: same metrics, same bytes.
    /// With the memory on, so the queue and EMA network must round-trip too.
    #[test]
    fn resume_is_bit_identical_with_memory() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let straight = pretrain_run(a.path(), 20);
        let full = straight.run().unwrap();
        assert_eq!(full.series["loss"].len(), 4);
        assert_eq!(full.series["knn_top1"].len(), 4);
        assert!(full.series["knn_top1"]
            .iter()
            .all(|v| (0.0..=1.0).contains(v) && (v * 4.0).fract() == 0.0));
        assert!(full.metrics["loss"].is_finite());
        assert!((0.0..=1.0).contains(&full.metrics["contrastive_acc"]));

        let split = pretrain_run(b.path(), 20);
        let cancel = AtomicBool::new(false);
        let err = split
            .go(
                &StopAfter {
                    stop_after: 2,
                    flag: &cancel,
                },
                &cancel,
            )
            .unwrap_err();
        assert!(
            err.downcast_ref::<crate::api::Cancelled>().is_some(),
            "{err:#}"
        );
        assert!(
            files(&split.out).is_empty(),
            "an interrupted run writes no output"
        );
        let super::super::train::Checkpoint { state, tensors } =
            load_checkpoint(&split.resume).unwrap().unwrap();
        assert_eq!(state.epoch, 2);
        assert!(tensors.iter().any(|(n, _)| n == "mem.queue"));
        assert!(tensors.iter().any(|(n, _)| n.starts_with("mem.ema.")));
        assert!(tensors.iter().any(|(n, _)| n.starts_with("opt.")));
        assert!(split.resume.join(CHECKPOINT_FILE).exists());

        let resumed = split.run().unwrap();
        assert_eq!(resumed, full);
        assert_eq!(files(&split.out), files(&straight.out));
    }

    #[test]
    fn saves_a_pretrain_network_and_rejects_bad_params() {
        let root = tempfile::tempdir().unwrap();
        let mut r = pretrain_run(root.path(), 0);
        r.params["epochs"] = 1.into();
        r.run().unwrap();
        let net = Network::load(&r.out, &candle_core::Device::Cpu).unwrap();
        assert!(net.has_projection());
        assert_eq!(net.num_classes(), None);

        let v = resolve(&serde_json::json!({})).unwrap();
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["memory"]["size"], 0);
        // Off by default and then absent, so existing cache keys stay as they were.
        assert!(v.get("knn_monitor").is_none(), "{v}");
        let on = resolve(&serde_json::json!({ "knn_monitor": { "queries": 100 } })).unwrap();
        assert_eq!(on["knn_monitor"]["bank"], 10_000);
        assert_eq!(
            resolve(&serde_json::json!({ "knn_monitor": { "queries": 5, "k": 0 } }))
                .unwrap_err()
                .path,
            "knn_monitor"
        );
        assert_eq!(
            resolve(&serde_json::json!({ "temperature": 0.0 }))
                .unwrap_err()
                .path,
            "temperature"
        );
        assert_eq!(
            resolve(&serde_json::json!({ "batch_size": 1 }))
                .unwrap_err()
                .path,
            "batch_size"
        );
        let e = resolve(&serde_json::json!({ "memory": { "size": 4, "m": 1 } })).unwrap_err();
        assert!(e.path.starts_with("memory"), "{e}");
        assert_eq!(
            resolve(&serde_json::json!({ "model": { "depth": 11 } }))
                .unwrap_err()
                .path,
            "model"
        );
    }
}
