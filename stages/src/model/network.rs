//! The whole model a stage trains: encoder + (possibly truncated) projection head + optional
//! classifier, and the state operations optimizers, checkpoints and EMA copies need.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor};

use super::checkpoint;
use super::config::ModelCfg;
use super::head::Head;
use super::layers::Linear;
use super::params::{Init, Param, Slot, Visit};
use super::resnet::Encoder;

/// Linear classifier (with bias, zero-initialized) on head output `head_layer`
/// (0 = encoder features, 1 = first head layer, ...).
struct Classifier {
    linear: Linear,
    head_layer: usize,
}

/// What a checkpoint's sidecar records about the network's shape beyond [`ModelCfg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetShape {
    pub image_size: usize,
    pub in_channels: usize,
    /// Projection-head layers kept (cfg.head_layers for pretraining networks).
    pub head_kept: usize,
    /// (num_classes, head_layer) of the classifier, if any.
    pub classifier: Option<(usize, usize)>,
}

pub struct Network {
    cfg: ModelCfg,
    shape: NetShape,
    device: Device,
    encoder: Encoder,
    head: Head,
    classifier: Option<Classifier>,
}

impl Network {
    /// Encoder + full projection head, no classifier (contrastive pretraining).
    /// The same seed gives bit-identical weights.
    pub fn new_pretrain(
        cfg: &ModelCfg,
        image_size: usize,
        in_channels: usize,
        device: &Device,
        seed: u64,
    ) -> anyhow::Result<Network> {
        let shape = NetShape {
            image_size,
            in_channels,
            head_kept: cfg.head_layers,
            classifier: None,
        };
        Self::build(cfg, shape, &Init::new(seed, device))
    }

    /// Randomly initialized encoder + head layers 1..=head_layer + zero-initialized classifier on
    /// head output `head_layer` (supervised baseline, distillation student).
    pub fn new_classifier(
        cfg: &ModelCfg,
        image_size: usize,
        in_channels: usize,
        num_classes: usize,
        head_layer: usize,
        device: &Device,
        seed: u64,
    ) -> anyhow::Result<Network> {
        let shape = NetShape {
            image_size,
            in_channels,
            head_kept: head_layer,
            classifier: Some((num_classes, head_layer)),
        };
        Self::build(cfg, shape, &Init::new(seed, device))
    }

    /// Load a pretraining checkpoint from `dir`, keep head layers 1..=head_layer and attach a
    /// zero-initialized classifier to head output `head_layer` (SimCLRv2 fine-tuning uses 1).
    pub fn from_pretrained(
        dir: &Path,
        head_layer: usize,
        num_classes: usize,
        device: &Device,
        seed: u64,
    ) -> anyhow::Result<Network> {
        let mut net = Self::load(dir, device)?;
        if net.classifier.is_some() {
            bail!(
                "{}: is a classifier checkpoint; fine-tuning starts from a pretrain checkpoint",
                dir.display()
            );
        }
        ensure!(
            head_layer <= net.head.len(),
            "head_layer = {head_layer} but the checkpoint in {} has only {} projection-head layers",
            dir.display(),
            net.head.len()
        );
        ensure!(num_classes >= 1, "num_classes must be at least 1");
        net.head.truncate(head_layer);
        net.shape.head_kept = head_layer;
        net.shape.classifier = Some((num_classes, head_layer));
        let init = Init::new(seed, device);
        net.classifier = Some(Classifier {
            linear: Linear::zeros_with_bias(&init, net.head_out_dim(head_layer), num_classes)?,
            head_layer,
        });
        Ok(net)
    }

    /// Build any network shape; used by the constructors and by checkpoint loading.
    pub(crate) fn build(cfg: &ModelCfg, shape: NetShape, init: &Init) -> anyhow::Result<Network> {
        cfg.validate()?;
        ensure!(shape.image_size >= 1, "image_size must be at least 1");
        ensure!(shape.in_channels >= 1, "in_channels must be at least 1");
        ensure!(
            shape.head_kept <= cfg.head_layers,
            "cannot keep {} projection-head layers of a {}-layer head (model.head_layers)",
            shape.head_kept,
            cfg.head_layers
        );
        let encoder = Encoder::new(
            init,
            cfg,
            shape.in_channels,
            cfg.cifar_stem(shape.image_size),
        )?;
        let head = Head::new(init, cfg, shape.head_kept)?;
        let mut net = Network {
            cfg: cfg.clone(),
            shape,
            device: init.device.clone(),
            encoder,
            head,
            classifier: None,
        };
        if let Some((num_classes, head_layer)) = shape.classifier {
            ensure!(num_classes >= 1, "num_classes must be at least 1");
            ensure!(
                head_layer <= cfg.head_layers,
                "head_layer = {head_layer} exceeds model.head_layers = {}",
                cfg.head_layers
            );
            ensure!(
                head_layer == shape.head_kept,
                "classifier must sit on the last kept head layer"
            );
            net.classifier = Some(Classifier {
                linear: Linear::zeros_with_bias(init, net.head_out_dim(head_layer), num_classes)?,
                head_layer,
            });
        }
        Ok(net)
    }

    fn head_out_dim(&self, layer: usize) -> usize {
        match layer {
            0 => self.encoder.num_features(),
            i => self.head.layer_out_dim(i).expect("layer is kept"),
        }
    }

    /// Load a network saved by [`Network::save`] (model.safetensors + model.json) from `dir`.
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Network> {
        checkpoint::load(dir, device)
    }

    /// Write `model.safetensors` and `model.json` into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        checkpoint::save(self, dir)
    }

    /// Encoder output (N, num_features). `train = false` uses running BN statistics and records
    /// no autograd graph.
    pub fn features(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.encoder.forward(x, train)
    }

    /// Projection-head output (N, proj_dim), not normalized. Errors if the head was truncated.
    pub fn project(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self.forward_all(x, train)?.1 {
            Some(p) => Ok(p),
            None => candle_core::bail!(
                "network keeps {} of {} projection-head layers: it has no projection output",
                self.head.len(),
                self.cfg.head_layers
            ),
        }
    }

    /// Classifier logits (N, num_classes). Errors if the network has no classifier.
    pub fn logits(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self.forward_all(x, train)?.2 {
            Some(l) => Ok(l),
            None => candle_core::bail!("network has no classifier (a pretraining network)"),
        }
    }

    /// One pass computing (features, projection if the full head is kept, logits if there is a
    /// classifier). BN running statistics are updated once per call in training mode.
    #[allow(clippy::type_complexity)]
    pub fn forward_all(
        &self,
        x: &Tensor,
        train: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let features = self.encoder.forward(x, train)?;
        let hiddens = self.head.forward(&features, train, self.head.len())?;
        let proj = if self.has_projection() {
            hiddens.last().cloned()
        } else {
            None
        };
        let logits = match &self.classifier {
            Some(c) => Some(c.linear.forward(&hiddens[c.head_layer], train)?),
            None => None,
        };
        Ok((features, proj, logits))
    }

    /// Whether the full projection head is kept (`project` works).
    pub fn has_projection(&self) -> bool {
        self.head.len() == self.cfg.head_layers
    }

    pub fn num_features(&self) -> usize {
        self.encoder.num_features()
    }

    pub fn arch(&self) -> &ModelCfg {
        &self.cfg
    }

    pub fn net_shape(&self) -> NetShape {
        self.shape
    }

    pub fn image_size(&self) -> usize {
        self.shape.image_size
    }

    pub fn in_channels(&self) -> usize {
        self.shape.in_channels
    }

    /// Number of classes of the classifier, `None` for pretraining networks.
    pub fn num_classes(&self) -> Option<usize> {
        self.shape.classifier.map(|c| c.0)
    }

    /// Head output the classifier reads, `None` without a classifier.
    pub fn head_layer(&self) -> Option<usize> {
        self.shape.classifier.map(|c| c.1)
    }

    /// Projection-head layers kept.
    pub fn head_kept(&self) -> usize {
        self.head.len()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn slots(&self) -> Vec<(String, Slot<'_>)> {
        let mut out = Vec::new();
        let mut push = |name: String, slot| out.push((name, slot));
        self.encoder.visit("encoder", &mut push);
        self.head.visit("head", &mut push);
        if let Some(c) = &self.classifier {
            c.linear.visit("classifier", &mut push);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Trainable parameters, sorted by name. The Vars share storage with the network.
    pub fn trainable(&self) -> Vec<Param> {
        self.slots()
            .into_iter()
            .filter_map(|(name, slot)| match slot {
                Slot::Param(v, exclude) => Some(Param {
                    name,
                    var: v.clone(),
                    exclude_from_decay: exclude,
                }),
                Slot::Stat(_) => None,
            })
            .collect()
    }

    /// Every tensor of the state (trainables and BN running statistics), detached, sorted by name.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots()
            .into_iter()
            .map(|(name, slot)| (name, slot.value()))
            .collect()
    }

    /// Names and shapes of the state, sorted by name.
    pub fn state_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect()
    }

    /// Overwrite the whole state in place (Vars keep their identity, so optimizers holding them
    /// stay valid). `state` must name exactly this network's tensors with matching shapes.
    pub fn load_state(&self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        let given: BTreeMap<&str, &Tensor> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let slots = self.slots();
        let missing: Vec<&str> = slots
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !given.contains_key(n))
            .collect();
        let known: std::collections::BTreeSet<&str> =
            slots.iter().map(|(n, _)| n.as_str()).collect();
        let unknown: Vec<&str> = given
            .keys()
            .copied()
            .filter(|n| !known.contains(n))
            .collect();
        if !missing.is_empty() || !unknown.is_empty() {
            bail!(
                "state does not match the network: missing {} tensor(s) {:?}, unexpected {} {:?}",
                missing.len(),
                &missing[..missing.len().min(5)],
                unknown.len(),
                &unknown[..unknown.len().min(5)]
            );
        }
        for (name, slot) in &slots {
            let t = given[name.as_str()];
            let want = slot.value();
            ensure!(
                t.dims() == want.dims(),
                "tensor {name}: shape {:?} does not match the network's {:?}",
                t.dims(),
                want.dims()
            );
            let t = t.to_dtype(DType::F32)?.to_device(&self.device)?;
            slot.set(&t).with_context(|| format!("setting {name}"))?;
        }
        Ok(())
    }

    fn paired_slots<'a>(&'a self, other: &'a Network) -> anyhow::Result<Vec<(Slot<'a>, Slot<'a>)>> {
        let (mine, theirs) = (self.slots(), other.slots());
        ensure!(
            mine.len() == theirs.len()
                && mine.iter().zip(&theirs).all(|(a, b)| a.0 == b.0)
                && mine
                    .iter()
                    .zip(&theirs)
                    .all(|(a, b)| a.1.value().dims() == b.1.value().dims()),
            "networks differ in architecture"
        );
        Ok(mine
            .into_iter()
            .zip(theirs)
            .map(|(a, b)| (a.1, b.1))
            .collect())
    }

    /// Copy every tensor (trainables and running statistics) of `other` into this network.
    pub fn copy_from(&self, other: &Network) -> anyhow::Result<()> {
        for (mine, theirs) in self.paired_slots(other)? {
            mine.set(&theirs.value())?;
        }
        Ok(())
    }

    /// θ ← m·θ + (1−m)·θ_other for the trainables (MoCo's key encoder). BN running statistics
    /// are left alone: the EMA network accumulates its own from its own forward passes.
    pub fn ema_update(&self, other: &Network, momentum: f64) -> anyhow::Result<()> {
        ensure!(
            (0.0..=1.0).contains(&momentum),
            "EMA momentum {momentum} outside [0, 1]"
        );
        for (mine, theirs) in self.paired_slots(other)? {
            if let (Slot::Param(a, _), Slot::Param(b, _)) = (&mine, &theirs) {
                let next = ((a.as_detached_tensor() * momentum)?
                    + (b.as_detached_tensor() * (1.0 - momentum))?)?;
                a.set(&next)?;
            }
        }
        Ok(())
    }

    /// An independent copy (fresh Vars and statistics, same values).
    pub fn deep_clone(&self) -> anyhow::Result<Network> {
        let copy = Self::build(&self.cfg, self.shape, &Init::skeleton(&self.device))?;
        copy.copy_from(self)?;
        Ok(copy)
    }
}
