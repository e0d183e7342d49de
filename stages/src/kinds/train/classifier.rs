//! Training a classifier with cross-entropy on the labeled split: the one path behind `finetune`
//! (the network starts from a pretrain checkpoint) and `supervised` (from random init).

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::{
    labeled_batches, load_dataset, load_labeled, load_net_and_opt, loop_spec, net_and_opt_state,
    optimizer_params, seed_for, StepLoss, Trainer, Training,
};
use crate::api::{RunCtx, StageOutput};
use crate::augment::AugmentCfg;
use crate::loss::{accuracy, cross_entropy};
use crate::model::{ModelCfg, Network};
use crate::optim::{Optimizer, Param};

/// Where the classifier's network comes from.
pub enum ClassifierInit<'a> {
    /// A pretrain checkpoint or an imported model file (role `from`), cut at projection-head layer
    /// `head_layer`, with a new zero-initialized classifier.
    Pretrained { head_layer: usize },
    /// A fresh network of this architecture with the classifier after `head_layer` head layers.
    Random {
        model: &'a ModelCfg,
        head_layer: usize,
    },
}

/// Train a classifier on the `labels` split of the `data` dataset with crop+flip augmentation,
/// and save it to the output dir. `kind` names the seeds' streams (`{kind}.init`, `{kind}.data`)
/// and the checkpoints.
pub fn train_classifier(
    ctx: &RunCtx,
    kind: &'static str,
    init: ClassifierInit,
    training: Training,
    device: Device,
) -> anyhow::Result<StageOutput> {
    let ds = load_dataset(ctx, "data")?;
    let labeled = Arc::new(load_labeled(ctx, "labels", ds.train.n)?);
    let num_classes = ds.classes.len();
    let init_seed = seed_for(ctx, &format!("{kind}.init"));
    let net = match init {
        ClassifierInit::Pretrained { head_layer } => {
            // A pretrain checkpoint, or the import of an `init` file (same role).
            let from: &Path = ctx.input("from")?;
            let net = crate::kinds::import::finetune_start(
                from,
                head_layer,
                num_classes,
                &ds,
                &device,
                init_seed,
            )?;
            super::check_input_shape(&net, &ds, "the pretrained network")?;
            net
        }
        ClassifierInit::Random { model, head_layer } => Network::new_classifier(
            model,
            ds.train.h,
            ds.train.c,
            num_classes,
            head_layer,
            &device,
            init_seed,
        )?,
    };
    let (spec, batch) = loop_spec(kind, training.schedule(), labeled.len())?;
    let mut trainer = ClassifierTrainer::new(net, training.optimizer());
    let make_batch = labeled_batches(
        Arc::new(ds.train),
        labeled.clone(),
        batch,
        AugmentCfg::crop_flip(),
        seed_for(ctx, &format!("{kind}.data")),
        device,
    );
    let result = super::run(ctx, &spec, &mut trainer, make_batch)?;
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
