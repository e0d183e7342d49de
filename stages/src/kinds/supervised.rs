//! `supervised`: the baseline every claim is measured against. The same architecture as the
//! fine-tuned network, from random initialization, trained with cross-entropy on the same labeled
//! split with crop+flip augmentation and weight decay.
//!
//! Inputs: `labels` (a split node), `data`. Output: the classifier checkpoint. Metrics: final
//! train `loss`, `acc`; series.
//!
//! Defaults: SGD with Nesterov momentum 0.9 (the reference's `momentum` optimizer), lr 0.1 × B/256,
//! weight decay 5e-4, cosine decay without warmup, classifier on the encoder output
//! (`head_layer = 0`: a standard ResNet; set 1 to mirror a fine-tuned network's extra layer).

use super::train::{self, ClassifierInit, Training};
use crate::api::{KindSpec, ParamError, RefSpec, RefTarget, Role, RunCtx, StageOutput};
use crate::device::DeviceChoice;
use crate::model::ModelCfg;
use crate::optim::{OptimizerKind, Scaling};

pub const SPEC: KindSpec = KindSpec {
    name: "supervised",
    // v2: fused residual BatchNorm (a numerics change from before `NUMERICS_VERSION`; such changes
    // now bump that one shared version, never this one).
    version: 2,
    summary: "supervised baseline: the same architecture from random init on the labeled split",
    refs: &[
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
        pub model: ModelCfg = ModelCfg::default(),
        /// Projection-head layers kept below the classifier (0 = classifier on the encoder output).
        pub head_layer: usize = 0,
    }
    training = Training {
        epochs: 30,
        batch_size: 64,
        optimizer: OptimizerKind::Sgd,
        lr: 0.1,
        lr_scaling: Scaling::Linear,
        momentum: 0.9,
        weight_decay: 5e-4,
        warmup_epochs: 0.0,
        nesterov: true,
        device: DeviceChoice::Cpu,
    };
}

fn check(p: &Params) -> Result<(), ParamError> {
    train::check_model(&p.model)?;
    p.training().check()?;
    if p.head_layer > p.model.head_layers {
        return Err(ParamError {
            path: "head_layer".into(),
            message: format!(
                "must be at most model.head_layers = {}",
                p.model.head_layers
            ),
        });
    }
    Ok(())
}

fn resolve(raw: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    train::resolve_checked::<Params>(raw, check)
}

fn run(ctx: &RunCtx) -> anyhow::Result<StageOutput> {
    let p: Params = ctx.params()?;
    let t = p.training();
    crate::device::run_on(ctx, t.device, t.batch_size, |device| {
        let init = ClassifierInit::Random {
            model: &p.model,
            head_layer: p.head_layer,
        };
        train::train_classifier(ctx, "supervised", init, t, device)
    })
}

#[cfg(test)]
mod tests {
    use super::super::train::testutil::{dataset_and_split, files, tiny_model, Run};
    use super::*;
    use crate::model::Network;

    fn run_in(
        root: &std::path::Path,
        extra: serde_json::Value,
        seed: u64,
    ) -> (Run<'static>, anyhow::Result<StageOutput>) {
        let (data, split) = dataset_and_split(root, 16, &(0..32).collect::<Vec<_>>());
        let mut params = serde_json::json!({
            "model": tiny_model(), "epochs": 12, "batch_size": 16, "lr": 0.05, "lr_scaling": "sqrt",
        });
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        let r = Run {
            kind: &SPEC,
            params,
            inputs: vec![("data", data), ("labels", split)],
            out: root.join("out"),
            resume: root.join("resume"),
            seed,
            checkpoint_every: 0,
        };
        let out = r.run();
        (r, out)
    }

    /// A tiny network memorizes 32 easy images: loss near 0, every training image right.
    #[test]
    fn overfits_tiny_data() {
        let root = tempfile::tempdir().unwrap();
        let (_, out) = run_in(root.path(), serde_json::json!({}), 1);
        let out = out.unwrap();
        let loss = &out.series["loss"];
        assert_eq!(loss.len(), 12);
        assert!(out.metrics["loss"] < 0.05, "final loss {:?}", loss);
        assert_eq!(out.metrics["acc"], 1.0, "{:?}", out.series["acc"]);
        let net = Network::load(&root.path().join("out"), &candle_core::Device::Cpu).unwrap();
        assert_eq!(net.num_classes(), Some(2));
    }

    #[test]
    fn same_seed_same_bytes_other_seed_differs() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let short = serde_json::json!({ "epochs": 2 });
        let (ra, oa) = run_in(a.path(), short.clone(), 7);
        let (rb, ob) = run_in(b.path(), short.clone(), 7);
        let (rc, _) = run_in(c.path(), short, 8);
        assert_eq!(oa.unwrap(), ob.unwrap());
        assert_eq!(files(&ra.out), files(&rb.out));
        assert_ne!(files(&ra.out), files(&rc.out));
    }

    #[test]
    fn diverging_run_fails_and_writes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let (r, out) = run_in(
            root.path(),
            serde_json::json!({ "lr": 1e38, "epochs": 3 }),
            1,
        );
        let err = out.unwrap_err().to_string();
        assert!(err.starts_with("non-finite loss at epoch "), "{err}");
        assert!(files(&r.out).is_empty());
    }

    #[test]
    fn params_resolve_with_defaults_and_reject_bad_values() {
        let v = resolve(&serde_json::json!({})).unwrap();
        assert_eq!(v["optimizer"], "sgd");
        assert_eq!(v["weight_decay"], 5e-4);
        assert_eq!(v["head_layer"], 0);
        assert_eq!(
            resolve(&serde_json::json!({ "epochs": 0 }))
                .unwrap_err()
                .path,
            "epochs"
        );
        assert_eq!(
            resolve(&serde_json::json!({ "lr_scaling": "cubic" }))
                .unwrap_err()
                .path,
            "lr_scaling"
        );
        assert_eq!(
            resolve(&serde_json::json!({ "bogus": 1 }))
                .unwrap_err()
                .path,
            "bogus"
        );
        assert_eq!(
            resolve(&serde_json::json!({ "head_layer": 4 }))
                .unwrap_err()
                .path,
            "head_layer"
        );
    }
}
