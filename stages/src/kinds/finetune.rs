//! `finetune`: SimCLRv2 fine-tuning. Loads a pretrain checkpoint, keeps the projection head up to
//! `head_layer` (SimCLRv2: 1), adds a zero-initialized classifier there, and trains the whole
//! network with cross-entropy on the labeled split, crop+flip augmentation only.
//!
//! Inputs: `from` (a pretrain node), `labels` (a split node), `data` (the dataset the split was
//! drawn from). Output: the classifier checkpoint. Metrics: final train `loss`, `acc`; series.
//!
//! Defaults follow the SimCLRv2 paper's fine-tuning: LARS, momentum 0.9, lr 0.005 × √B (0.16 at
//! B = 1024), no weight decay, no warmup (cosine decay only).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::train::{self, ClassifierTrainer};
use crate::api::{KindSpec, ParamError, RefSpec, RefTarget, RunCtx, StageOutput};
use crate::augment::AugmentCfg;
use crate::device::DeviceChoice;
use crate::model::Network;
use crate::optim::{self, OptimizerKind, Scaling};

pub const SPEC: KindSpec = KindSpec {
    name: "finetune",
    // v2: fused residual BatchNorm and the stride-1 input gradient as a conv change the numerics.
    version: 2,
    summary: "fine-tune a pretrained network from a projection-head layer on the labeled split",
    refs: &[
        RefSpec {
            key: "from",
            role: "from",
            target: RefTarget::Node(&["pretrain"]),
            many: false,
            required: true,
        },
        // Or `init = { file = "…", format = "torchvision" }`: start from a model file
        // (kinds/import.rs). The same role: one of the two is required.
        RefSpec {
            key: "init",
            role: "from",
            target: RefTarget::Node(&[super::import::KIND]),
            many: false,
            required: false,
        },
        RefSpec {
            key: "labels",
            role: "labels",
            target: RefTarget::Node(&["split"]),
            many: false,
            required: true,
        },
        RefSpec {
            key: "data",
            role: "data",
            target: RefTarget::Dataset,
            many: false,
            required: true,
        },
    ],
    trains: true,
    numerics: true,
    resolve_params: resolve,
    run,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Projection-head layer the classifier reads: 0 = encoder output, 1 = first head layer.
    pub head_layer: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub lr_scaling: Scaling,
    pub momentum: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    pub nesterov: bool,
    /// Where to compute: "cpu" (default), "cuda" or "cuda:N" (`crate::device`). Absent from the
    /// resolved params (and so from the cache key) when "cpu".
    #[serde(skip_serializing_if = "DeviceChoice::is_cpu")]
    pub device: DeviceChoice,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            head_layer: 1,
            epochs: 30,
            batch_size: 64,
            optimizer: OptimizerKind::Lars,
            lr: 0.005,
            lr_scaling: Scaling::Sqrt,
            momentum: 0.9,
            weight_decay: 0.0,
            warmup_epochs: 0.0,
            nesterov: false,
            device: DeviceChoice::Cpu,
        }
    }
}

train::impl_schedule!(Params);

fn check(p: &Params) -> Result<(), ParamError> {
    train::check_schedule(&p.schedule(), p.momentum)?;
    if !(p.weight_decay >= 0.0 && p.weight_decay.is_finite()) {
        return Err(ParamError {
            path: "weight_decay".into(),
            message: format!("must be ≥ 0, got {}", p.weight_decay),
        });
    }
    Ok(())
}

fn resolve(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    train::resolve_checked::<Params>(raw, check)
}

fn run(ctx: &RunCtx) -> anyhow::Result<StageOutput> {
    let p: Params = ctx.params()?;
    let (choice, batch_size) = (p.device, p.batch_size);
    crate::device::run_on(ctx, choice, batch_size, |device| run_on(ctx, p, device))
}

fn run_on(ctx: &RunCtx, p: Params, device: candle_core::Device) -> anyhow::Result<StageOutput> {
    let ds = train::load_dataset(ctx, "data")?;
    let labeled = Arc::new(train::load_labeled(ctx, "labels", ds.train.n)?);
    let num_classes = ds.classes.len();
    let net: Network = super::import::finetune_start(
        ctx.input("from")?,
        p.head_layer,
        num_classes,
        &ds,
        &device,
        train::seed_for(ctx, "finetune.init"),
    )?;
    train::check_input_shape(&net, &ds, "the pretrained network")?;
    let (spec, batch) = train::loop_spec("finetune", p.schedule(), labeled.len())?;
    let mut trainer = ClassifierTrainer::new(
        net,
        optim::build(p.optimizer, p.momentum, p.weight_decay, p.nesterov),
    );
    let images = Arc::new(ds.train);
    let make_batch = train::labeled_batches(
        images,
        labeled.clone(),
        batch,
        AugmentCfg::crop_flip(),
        train::seed_for(ctx, "finetune.data"),
        device,
    );
    let result = train::run(ctx, &spec, &mut trainer, make_batch)?;
    trainer.net.save(ctx.out_dir)?;
    Ok(StageOutput {
        metrics: result.final_metrics(),
        series: result.series,
        details: serde_json::json!({
            "labeled_images": labeled.len(),
            "steps_per_epoch": spec.steps_per_epoch,
            "batch_size": batch,
            "peak_lr": spec.peak_lr,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::train::testutil::{dataset_and_split, tiny_pretrain, Run};
    use super::*;

    /// Pretrain briefly, then fine-tune from head layer 1 until the labeled images are memorized.
    #[test]
    fn finetunes_a_pretrained_network_to_fit_the_labels() {
        let root = tempfile::tempdir().unwrap();
        let labeled: Vec<usize> = (0..16).collect();
        let (data, split) = dataset_and_split(root.path(), 12, &labeled);
        let pre = tiny_pretrain(root.path(), &data);
        let ft = Run {
            kind: &SPEC,
            params: serde_json::json!({ "epochs": 20, "batch_size": 8, "lr": 0.05 }),
            inputs: vec![("from", pre.clone()), ("labels", split), ("data", data)],
            out: root.path().join("ft"),
            resume: root.path().join("ft-resume"),
            seed: 1,
            checkpoint_every: 0,
        };
        let out = ft.run().unwrap();
        assert_eq!(out.details["labeled_images"], 16);
        assert_eq!(out.series["loss"].len(), 20);
        assert!(out.metrics["loss"] < 0.1, "{:?}", out.series["loss"]);
        assert_eq!(out.metrics["acc"], 1.0, "{:?}", out.series["acc"]);
        let net = Network::load(&ft.out, &candle_core::Device::Cpu).unwrap();
        assert_eq!((net.num_classes(), net.head_layer()), (Some(2), Some(1)));
    }

    #[test]
    fn defaults_follow_simclr_v2_fine_tuning() {
        let v = resolve(&serde_json::json!({})).unwrap();
        assert_eq!(v["optimizer"], "lars");
        assert_eq!(v["lr_scaling"], "sqrt");
        assert_eq!(v["weight_decay"], 0.0);
        assert_eq!(v["warmup_epochs"], 0.0);
        assert_eq!(v["head_layer"], 1);
    }
}
