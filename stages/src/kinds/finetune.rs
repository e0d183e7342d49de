//! `finetune`: SimCLRv2 fine-tuning. Loads a pretrain checkpoint, keeps the projection head up to
//! `head_layer` (SimCLRv2: 1), adds a zero-initialized classifier there, and trains the whole
//! network with cross-entropy on the labeled split, crop+flip augmentation only.
//!
//! Inputs: `from` (a pretrain node), `labels` (a split node), `data` (the dataset the split was
//! drawn from). Output: the classifier checkpoint. Metrics: final train `loss`, `acc`; series.
//!
//! Defaults follow the SimCLRv2 paper's fine-tuning: LARS, momentum 0.9, lr 0.005 × √B (0.16 at
//! B = 1024), no weight decay, no warmup (cosine decay only).

use super::train::{self, ClassifierInit, Training};
use crate::api::{KindSpec, ParamError, RefSpec, RefTarget, Role, RunCtx, StageOutput};
use crate::device::DeviceChoice;
use crate::optim::{OptimizerKind, Scaling};

pub const SPEC: KindSpec = KindSpec {
    name: "finetune",
    // v2: fused residual BatchNorm (a numerics change from before `NUMERICS_VERSION`; such changes
    // now bump that one shared version, never this one).
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
    role: Role::Train {
        labels_from: &["labels"],
    },
    numerics: true,
    resolve_params: resolve,
    run,
};

train::training_params! {
    pub struct Params {
        /// Projection-head layer the classifier reads: 0 = encoder output, 1 = first head layer.
        pub head_layer: usize = 1,
    }
    training = Training {
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
    };
}

fn resolve(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    train::resolve_checked::<Params>(raw, |p| p.training().check())
}

fn run(ctx: &RunCtx) -> anyhow::Result<StageOutput> {
    let p: Params = ctx.params()?;
    let t = p.training();
    crate::device::run_on(ctx, t.device, t.batch_size, |device| {
        let init = ClassifierInit::Pretrained {
            head_layer: p.head_layer,
        };
        train::train_classifier(ctx, "finetune", init, t, device)
    })
}

#[cfg(test)]
mod tests {
    use super::super::train::testutil::{dataset_and_split, tiny_pretrain, Run};
    use super::*;
    use crate::model::Network;

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
